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
