#!/usr/bin/env bash
# The control plane end to end: a fresh release server in a temporary data dir, N simulated
# agents that answer container_run like a Docker host (`corral bench deploy`), and R replicas
# deployed with `corral up` (stacks of at most 10,000 replicas, deployed at once), timed until
# the server has every replica running, then `down`. Everything it starts is stopped by
# process id and removed.
#
#   bash scripts/bench-scale.sh                 # 1,000 agents, 10,000 replicas
#   bash scripts/bench-scale.sh 1000 100000
#   bash scripts/bench-scale.sh 1000 100000 --run-delay 200ms
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-1000}
R=${2:-10000}
shift $(( $# > 2 ? 2 : $# ))
cargo build --release --locked -q
BIN=$PWD/target/release/corral
[ -n "${CARGO_TARGET_DIR:-}" ] && BIN=$CARGO_TARGET_DIR/release/corral
ulimit -n "$(ulimit -Hn)"
DIR=$(mktemp -d /tmp/corral-bench.XXXXXX)
SERVER=
cleanup() {
    [ -n "$SERVER" ] && { kill "$SERVER" 2>/dev/null || true; wait "$SERVER" 2>/dev/null || true; }
    rm -rf "$DIR"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$BIN" server --listen 127.0.0.1:"$PORT" --data-dir "$DIR/data" --max-stack-replicas 10000 \
    >"$DIR/server.log" 2>&1 &
SERVER=$!
for _ in $(seq 100); do [ -f "$DIR/data/admin.env" ] && break; sleep 0.1; done
set -a; . "$DIR/data/admin.env"; set +a
"$BIN" bench deploy --agents "$N" --replicas "$R" --stack-replicas 10000 \
    --server-pid "$SERVER" "$@" || { tail -20 "$DIR/server.log" >&2; exit 1; }
