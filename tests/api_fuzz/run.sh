#!/usr/bin/env bash
# API fuzzing: schemathesis generates requests from docs/openapi.yaml and sends them to a real
# `execbox serve` (temp config, real sandboxes, real audit log). Fails on any 5xx, any reply
# that disagrees with the spec, a request that takes over the timeout, or a daemon that is no
# longer alive and serving afterwards (a final real exec must succeed). docs/fuzzing.md.
#
# Transport: schemathesis speaks TCP, the daemon only Unix sockets, so a socat bridge per
# socket listens on 127.0.0.1 (a random free port) and connects to the socket. The daemon sees
# socat's SO_PEERCRED, i.e. the user running this script, which is in the allowlist; the
# bridge lives only as long as this script.
#
# Two modes (docs/fuzzing.md):
# - deterministic (the default, and CI's): the same cases on every machine and every run, so the
#   stage fails for a real reason every time or not at all: a fixed seed, schemathesis's
#   `--generation-deterministic`, no example database, PYTHONHASHSEED=0, a fixed number of
#   examples per operation and no time budget (a time budget makes the case count depend on the
#   machine's speed). The summary's case counts are the same from run to run.
# - explore (API_FUZZ_SECS set): a time budget per socket and a random seed, printed so that a
#   failure can be replayed with API_FUZZ_SEED.
#
# Env: EXECBOX_BIN (default target/debug/execbox), API_FUZZ_EXAMPLES (deterministic: examples
# per operation, default 25), API_FUZZ_SECS (explore: seconds per socket), API_FUZZ_SEED
# (default 8 when deterministic, random when exploring), API_FUZZ_VENV (default
# target/api-fuzz/venv, with schemathesis; .ci/run creates it).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
bin=${EXECBOX_BIN:-$root/target/debug/execbox}
venv=${API_FUZZ_VENV:-$root/target/api-fuzz/venv}
secs=${API_FUZZ_SECS:-}
examples=${API_FUZZ_EXAMPLES:-25}
# Python's str hashes (set and dict-of-set order inside the generators) are the same every run.
export PYTHONHASHSEED=0
if [ -z "$secs" ]; then
    seed=${API_FUZZ_SEED:-8}
    # (`--generation-deterministic` implies no example database.)
    mode_args=(--generation-deterministic --max-examples "$examples")
    echo "api-fuzz: deterministic: seed $seed, $examples examples per operation, no example database"
else
    seed=${API_FUZZ_SEED:-$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')}
    mode_args=(--max-time "$secs" --generation-database none)
    echo "api-fuzz: exploring for ${secs}s per socket with seed $seed (replay: API_FUZZ_SEED=$seed API_FUZZ_SECS=$secs)"
fi

if [ ! -x "$venv/bin/st" ]; then
    echo "api-fuzz: no schemathesis in $venv; create it with:" >&2
    echo "  python3 -m venv $venv && $venv/bin/pip install -r $root/tests/api_fuzz/requirements.txt" >&2
    exit 2
fi
command -v socat >/dev/null || { echo "api-fuzz: socat is missing (apt-get install socat)" >&2; exit 2; }
command -v curl >/dev/null || { echo "api-fuzz: curl is missing (apt-get install curl)" >&2; exit 2; }

dir=$(mktemp -d /tmp/execbox-api-fuzz-XXXXXX)
chmod 0711 "$dir"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$dir"
}
trap cleanup EXIT

# High request rates and bad-token limits: schemathesis sends many requests and, on purpose,
# requests without or with broken tokens; throttling would only make it test the 429 path.
# A short approval expiry: an exec whose verdict is `approve` ends (403 approval_expired in the
# stream) instead of holding the request for 10 minutes.
cat >"$dir/execbox.toml" <<TOML
[sockets]
agent = "$dir/agent.sock"
operator = "$dir/operator.sock"
[allow]
uids = [$(id -u)]
[paths]
state_dir = "$dir/state"
profiles_dir = "$root/policies"
default_profile = "default"
[limits]
peer_rate = 100000
session_rate = 100000
bad_token_limit = 1000000
# Longer than any pause in a run: the daemon closes an idle keep-alive connection after
# header_timeout, and schemathesis's client reuses pooled connections without a retry, so
# the close would race with the next request ("Remote end closed connection").
header_timeout = "600s"
# Every session request of this harness makes a child of one root: the per-lineage and per-uid
# quotas are raised to limits.max_sessions, the bound this run had before they existed.
[sessions]
max_per_uid = 1024
max_per_lineage = 1024
[approvals]
expiry = "200ms"
[audit]
path = "$dir/audit/audit.jsonl"
TOML
mkdir -m 0700 "$dir/audit"
"$bin" serve --config "$dir/execbox.toml" </dev/null >"$dir/daemon.log" 2>&1 &
daemon=$!
pids+=("$daemon")
# Generous: the start checks fork probes, slow on a loaded machine.
for _ in $(seq 1200); do [ -S "$dir/agent.sock" ] && break; sleep 0.05; done
[ -S "$dir/agent.sock" ] || { cat "$dir/daemon.log" >&2; echo "api-fuzz: the daemon did not start" >&2; exit 1; }

free_port() { "$venv/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
bridge() { # PORT SOCKET
    socat "TCP-LISTEN:$1,bind=127.0.0.1,reuseaddr,fork" "UNIX-CONNECT:$2" </dev/null >/dev/null 2>&1 &
    pids+=("$!")
    for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return; sleep 0.05; done
    echo "api-fuzz: the bridge on port $1 did not start" >&2
    exit 1
}
agent_port=$(free_port)
bridge "$agent_port" "$dir/agent.sock"
operator_port=$(free_port)
bridge "$operator_port" "$dir/operator.sock"

token=$(curl -sf --unix-socket "$dir/agent.sock" -X POST http://x/v1/sessions \
    | "$venv/bin/python" -c 'import json,sys; print(json.load(sys.stdin)["token"])')

"$venv/bin/python" "$root/tests/api_fuzz/split_spec.py" "$root/docs/openapi.yaml" "$dir"

status=0
# `Connection: close` on every request: a fresh connection each time. With pooled connections,
# a reply the daemon sends without reading the body (a 401 before a large body, a 413) ends that
# connection, and whether the client saw the close before reusing it was a race that failed
# runs at random ("Remote end closed connection without response").
run_st() { # SPEC PORT [extra args]
    local spec=$1 port=$2
    shift 2
    (cd "$dir" && "$venv/bin/st" run "$spec" --url "http://127.0.0.1:$port" \
        --checks all --request-timeout 10 --workers 1 \
        --seed "$seed" "${mode_args[@]}" \
        --no-color --suppress-health-check too_slow \
        -H "Connection: close" \
        "$@") || status=1
}
run_st "$dir/agent.yaml" "$agent_port" -H "Authorization: Bearer $token"
run_st "$dir/operator.yaml" "$operator_port"

# The daemon must still be alive and serving: a real job, end to end.
if ! kill -0 "$daemon" 2>/dev/null; then
    echo "api-fuzz: the daemon died" >&2; tail -50 "$dir/daemon.log" >&2; exit 1
fi
# In a new session: the operator half may have ended the first one (its stateful phase feeds
# the ids GET /v1/sessions lists to DELETE /v1/sessions/{session}, as it should).
token=$(curl -sf --unix-socket "$dir/agent.sock" -X POST http://x/v1/sessions \
    | "$venv/bin/python" -c 'import json,sys; print(json.load(sys.stdin)["token"])')
out=$(curl -sf --max-time 30 --unix-socket "$dir/agent.sock" -X POST http://x/v1/exec \
    -H "Authorization: Bearer $token" -H 'content-type: application/json' \
    -d '{"command": "echo alive"}')
if ! "$venv/bin/python" -c '
import base64, json, sys
events = [json.loads(l) for l in sys.stdin if l.strip()]
out = b"".join(base64.b64decode(e["data_b64"]) for e in events if e["event"] == "stdout")
ok = events and events[-1]["event"] == "exit" and events[-1]["code"] == 0 and out == b"alive\n"
sys.exit(0 if ok else 1)' <<<"$out"; then
    echo "api-fuzz: the final exec did not succeed:" >&2; echo "$out" >&2
    tail -50 "$dir/daemon.log" >&2; exit 1
fi
if grep -q 'panicked' "$dir/daemon.log"; then
    echo "api-fuzz: the daemon logged a panic:" >&2; grep -A5 panicked "$dir/daemon.log" >&2; status=1
fi
[ "$status" = 0 ] && echo "api-fuzz: ok (no 5xx, no spec mismatch, daemon alive and serving)"
exit "$status"
