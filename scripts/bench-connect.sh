#!/usr/bin/env bash
# Connect benchmark: a fresh release server in a temporary data dir, N simulated agents against
# it, then everything stopped (by process id) and removed.
#
#   bash scripts/bench-connect.sh 1000          # agents (default 1000)
#   HOLD=60s bash scripts/bench-connect.sh 10000
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-1000}
HOLD=${HOLD:-30s}
PING=${PING:-5s}
cargo build --release --locked -q
BIN=$PWD/target/release/corral
[ -n "${CARGO_TARGET_DIR:-}" ] && BIN=$CARGO_TARGET_DIR/release/corral
DIR=$(mktemp -d /tmp/corral-bench.XXXXXX)
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$BIN" server --listen 127.0.0.1:"$PORT" --data-dir "$DIR/data" >"$DIR/server.log" 2>&1 &
SERVER=$!
cleanup() { kill "$SERVER" 2>/dev/null || true; wait "$SERVER" 2>/dev/null || true; rm -rf "$DIR"; }
trap cleanup EXIT
# A signal ends the script through its EXIT trap (bash does not run it on a fatal signal).
trap 'exit 130' INT
trap 'exit 143' TERM
for _ in $(seq 100); do [ -f "$DIR/data/admin.env" ] && break; sleep 0.1; done
sleep 0.5
set -a; . "$DIR/data/admin.env"; set +a
ulimit -n "$(ulimit -Hn)"
"$BIN" bench connect --agents "$N" --hold "$HOLD" --ping-interval "$PING" --concurrency 64 -o json
