#!/usr/bin/env bash
# Unauthenticated-flood benchmark: a fresh release server with N simulated agents connected,
# then M connections that complete the TLS handshake and send nothing (each reopened as soon
# as the server closes it), while `corral host ls` is timed and the server's connected agents
# are watched. Everything it starts is stopped by process id and removed.
#
#   bash scripts/bench-idle.sh                 # 1000 agents, 10000 idle connections, 60 s
#   AGENTS=100 IDLE=2000 DURATION=20s bash scripts/bench-idle.sh
set -euo pipefail
cd "$(dirname "$0")/.."
AGENTS=${AGENTS:-1000}
IDLE=${IDLE:-10000}
DURATION=${DURATION:-60s}
cargo build --release --locked -q
BIN=$PWD/target/release/corral
[ -n "${CARGO_TARGET_DIR:-}" ] && BIN=$CARGO_TARGET_DIR/release/corral
DIR=$(mktemp -d /tmp/corral-bench.XXXXXX)
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
ulimit -n "$(ulimit -Hn)"
"$BIN" server --listen 127.0.0.1:"$PORT" --data-dir "$DIR/data" >"$DIR/server.log" 2>&1 &
SERVER=$!
AGENTS_PID=
FLOOD=
cleanup() {
    for pid in $FLOOD $AGENTS_PID; do kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
    kill "$SERVER" 2>/dev/null || true; wait "$SERVER" 2>/dev/null || true
    rm -rf "$DIR"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
for _ in $(seq 100); do [ -f "$DIR/data/admin.env" ] && break; sleep 0.1; done
set -a; . "$DIR/data/admin.env"; set +a
# The agents hold their tunnels longer than the flood lasts.
"$BIN" bench connect --agents "$AGENTS" --hold 600s --ping-interval 5s --concurrency 64 -o json >"$DIR/agents.json" 2>"$DIR/agents.log" &
AGENTS_PID=$!
for _ in $(seq 600); do
    n=$(curl -s --cacert "$DIR/data/pki/ca.pem" -H "Authorization: Bearer $CORRAL_API_KEY" "$CORRAL_SERVER/metrics" | awk '/^corral_agents_connected /{print $2}')
    [ "${n:-0}" -ge "$AGENTS" ] && break
    sleep 0.5
done
echo "$AGENTS agents connected; flooding with $IDLE idle connections for $DURATION" >&2
# The flood runs in a process of its own at the lowest CPU priority: its TLS work stands for
# the attacker's machines, which are not the server's. The measuring side (host ls, the
# server's metrics) runs at normal priority, as the server does.
nice -n 19 "$BIN" bench idle --connections "$IDLE" --duration "$DURATION" --no-measure -o json >"$DIR/flood.json" &
FLOOD=$!
"$BIN" bench idle --connections 0 --duration "$DURATION" -o json
wait "$FLOOD"
echo "flood:" >&2
cat "$DIR/flood.json" >&2
grep -c "too many connections that have not authenticated" "$DIR/server.log" | sed 's/^/server log lines about the cap: /' >&2 || true
