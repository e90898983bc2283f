#!/usr/bin/env bash
# How long a scrape of /metrics takes with N agents connected: a fresh release server in a
# temporary data dir, N simulated agents (`corral bench connect`, heartbeats every 15 s), and
# 20 scrapes with curl, half a second apart, while they are all connected. Reports the
# server's part (from the end of the TLS handshake to the first byte of the answer) and the
# whole request. Everything it starts is stopped by process id and removed.
#
#   bash scripts/bench-metrics.sh            # 10,000 agents
#   bash scripts/bench-metrics.sh 1000
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-10000}
cargo build --release --locked -q
BIN=$PWD/target/release/corral
[ -n "${CARGO_TARGET_DIR:-}" ] && BIN=$CARGO_TARGET_DIR/release/corral
ulimit -n "$(ulimit -Hn)"
DIR=$(mktemp -d /tmp/corral-bench.XXXXXX)
SERVER=
LOAD=
cleanup() {
    [ -n "$LOAD" ] && { kill "$LOAD" 2>/dev/null || true; wait "$LOAD" 2>/dev/null || true; }
    [ -n "$SERVER" ] && { kill "$SERVER" 2>/dev/null || true; wait "$SERVER" 2>/dev/null || true; }
    rm -rf "$DIR"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$BIN" server --listen 127.0.0.1:"$PORT" --data-dir "$DIR/data" >"$DIR/server.log" 2>&1 &
SERVER=$!
for _ in $(seq 100); do [ -f "$DIR/data/admin.env" ] && break; sleep 0.1; done
set -a; . "$DIR/data/admin.env"; set +a
"$BIN" bench connect --agents "$N" --hold 60s --ping-interval 15s --concurrency 64 \
    --server-pid "$SERVER" -o json >"$DIR/report.json" 2>"$DIR/load.log" &
LOAD=$!
# Until every agent is connected (the load generator says so), or it gave up.
until grep -qs "holding" "$DIR/load.log"; do
    kill -0 "$LOAD" 2>/dev/null || { cat "$DIR/load.log" >&2; exit 1; }
    sleep 0.5
done
for _ in $(seq 20); do
    curl -sS --fail -o "$DIR/metrics.txt" -w '%{time_total} %{time_starttransfer} %{time_appconnect}\n' \
        --cacert "$DIR/data/pki/ca.pem" -H "Authorization: Bearer $CORRAL_API_KEY" "$CORRAL_SERVER/metrics"
    sleep 0.5
done >"$DIR/times.txt"
python3 - "$DIR/times.txt" "$DIR/metrics.txt" <<'PY'
import statistics, sys
rows = [list(map(float, l.split())) for l in open(sys.argv[1])]
server = sorted((r[1] - r[2]) * 1000 for r in rows)
whole = sorted(r[0] * 1000 for r in rows)
text = open(sys.argv[2]).read()
agents = next(l.split()[1] for l in text.splitlines() if l.startswith("corral_agents_connected "))
print(f"agents connected {agents}; answer {len(text):,} bytes; {len(rows)} scrapes")
print(f"server part: p50 {statistics.median(server):.1f} ms, max {server[-1]:.1f} ms")
print(f"whole request (new TLS connection each): p50 {statistics.median(whole):.1f} ms, max {whole[-1]:.1f} ms")
PY
