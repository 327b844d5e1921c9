"""Writes one OpenAPI document per socket (x-socket: agent | operator) from docs/openapi.yaml.

schemathesis talks to one base URL; the daemon serves two sockets, each with its own routes.
Usage: split_spec.py SPEC OUTDIR  ->  OUTDIR/agent.yaml, OUTDIR/operator.yaml
"""

import copy
import sys

import yaml

spec_path, out = sys.argv[1], sys.argv[2]
with open(spec_path) as f:
    spec = yaml.safe_load(f)

# Narrowings for this deployment, each a fact about the test daemon rather than a check
# switched off (docs/fuzzing.md):
# - `wait` on GET /v1/approvals is a long poll: a valid `wait=300s` holds the reply 300 s, as
#   specified, which no per-request timeout can tell from a hang. Here it is at most 4 s.
# - `profile` names one of the daemon's configured profiles, and a child session (every
#   session request carries the parent's token here) must name its parent's: `default`.
for item in spec["paths"].values():
    for op in item.values():
        for param in op.get("parameters", []) if isinstance(op, dict) else []:
            if param.get("name") == "wait":
                param["schema"] = {"type": "string", "pattern": "^[0-4](s)?$"}
# - Requested limits (memory at least 4MiB) may only tighten the profile's (default.toml: 1GiB, 512 pids, 2 cpus,
#   10m, 64MiB output); the spec cannot know a deployment's profile, this harness does.
exec_props = spec["components"]["schemas"]["ExecRequest"]["properties"]
exec_props["timeout"] = {"oneOf": [
    {"type": "number", "minimum": 0.001, "maximum": 600},
    {"type": "string", "pattern": "^[1-9][0-9]?s$"},
    {"type": "null"},
]}
size = {"oneOf": [
    {"type": "integer", "minimum": 1, "maximum": 64 << 20},
    {"type": "string", "pattern": "^([1-9]|[1-5][0-9]|6[0-4])MiB$"},
    {"type": "null"},
]}
exec_props["limits"]["properties"].update({
    "memory": {"oneOf": [
        {"type": "integer", "minimum": 4 << 20, "maximum": 1 << 30},
        {"type": "string", "pattern": "^([4-9]|[1-9][0-9])MiB$"},
        {"type": "null"},
    ]},
    "output": size,
    "pids": {"type": ["integer", "null"], "minimum": 1, "maximum": 512},
    "cpu": {"type": ["number", "null"], "exclusiveMinimum": 0, "maximum": 2},
})
# - A `cwd` must be an existing directory of the session's workspace, reached without a
#   symlink (resolved with openat2 beneath it), and the harness's workspace is empty: here
#   `cwd` is the workspace itself. Other values are covered by tests/suite/judge.rs and the
#   unit tests of server/exec/request.rs.
exec_props["cwd"] = {"type": ["string", "null"], "enum": [".", "", "./", None]}
spec["components"]["schemas"]["SessionRequest"]["properties"]["profile"] = {
    "type": ["string", "null"],
    "enum": ["default", None],
}
# - A pairing code is redeemed only without a token (it creates a root session), and every
#   request of this harness carries one: here the code is always null. Redemption is covered
#   by tests/suite/pairing.rs and the `http` cargo-fuzz target.
spec["components"]["schemas"]["SessionRequest"]["properties"]["pairing_code"] = {"type": "null"}
# - POST /v1/pairing (operator): the profile is one of the test daemon's, the workspace an
#   existing directory the harness cannot name (so the daemon's own, null), and the ttl within
#   [1s, pairing.max_ttl].
pairing = spec["components"]["schemas"]["PairingRequest"]["properties"]
pairing["profile"] = {"type": ["string", "null"], "enum": ["default", "dev", "strict", None]}
pairing["workspace"] = {"type": "null"}
pairing["ttl"] = {"type": ["string", "null"], "pattern": "^([1-9][0-9]?m|[1-9]h)$"}
for socket in ("agent", "operator"):
    part = copy.deepcopy(spec)
    part["paths"] = {}
    for path, item in spec["paths"].items():
        ops = {
            k: v
            for k, v in item.items()
            if not isinstance(v, dict) or v.get("x-socket", socket) == socket
        }
        if any(isinstance(v, dict) and "responses" in v for v in ops.values()):
            part["paths"][path] = ops
    if not part["paths"]:
        sys.exit(f"no path in {spec_path} is served on the {socket} socket")
    with open(f"{out}/{socket}.yaml", "w") as f:
        yaml.safe_dump(part, f, sort_keys=False)
