#!/usr/bin/env bash
# Reconnect storm: N simulated agents connected (`corral bench connect --reconnect`: an agent
# that loses its tunnel comes back with its credential after the agents' own backoff), then
# the server is stopped — gracefully (SIGTERM: it tells every agent it is going away) or killed
# (SIGKILL) — and started again at once on the same address and data dir. Reports how long
# until every agent was back, whether any gave up, the reconnects in each second, and the new
# server's resident memory at its peak during the storm. Everything it starts is stopped by
# process id and removed.
#
#   bash scripts/bench-reconnect.sh 10000 TERM
#   bash scripts/bench-reconnect.sh 10000 KILL
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-10000}
SIGNAL=${2:-TERM}
HOLD=${HOLD:-90s}
cargo build --release --locked -q
BIN=$PWD/target/release/corral
[ -n "${CARGO_TARGET_DIR:-}" ] && BIN=$CARGO_TARGET_DIR/release/corral
ulimit -n "$(ulimit -Hn)"
DIR=$(mktemp -d /tmp/corral-bench.XXXXXX)
SERVER=
LOAD=
SAMPLER=
cleanup() {
    for p in $SAMPLER $LOAD $SERVER; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
    rm -rf "$DIR"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
serve() {
    "$BIN" server --listen 127.0.0.1:"$PORT" --data-dir "$DIR/data" >>"$DIR/server.log" 2>&1 &
    SERVER=$!
}
serve
for _ in $(seq 100); do [ -f "$DIR/data/admin.env" ] && break; sleep 0.1; done
set -a; . "$DIR/data/admin.env"; set +a
"$BIN" bench connect --agents "$N" --hold "$HOLD" --ping-interval 15s --concurrency 64 \
    --reconnect --keep -o json >"$DIR/report.json" 2>"$DIR/load.log" &
LOAD=$!
until grep -qs "holding" "$DIR/load.log"; do
    kill -0 "$LOAD" 2>/dev/null || { cat "$DIR/load.log" >&2; exit 1; }
    sleep 0.5
done
# The load scrapes the server's memory and CPU 2 s after it is holding: stop the server after
# that, not during it.
sleep 5
echo "stopping the server (SIG$SIGNAL) and starting it again" >&2
kill -"$SIGNAL" "$SERVER"; wait "$SERVER" 2>/dev/null || true
serve
# The new server's resident memory, every 100 ms, while the agents come back.
( while kill -0 "$SERVER" 2>/dev/null; do
      awk '/VmRSS/ {print $2}' "/proc/$SERVER/status" 2>/dev/null || true
      sleep 0.1
  done ) >"$DIR/rss.txt" &
SAMPLER=$!
wait "$LOAD" || true
LOAD=
[ -s "$DIR/report.json" ] || { echo "the load ended without a report:" >&2; tail -20 "$DIR/load.log" >&2; exit 1; }
# What the new server saw of the storm (its own metrics): connections closed by the cap on
# unauthenticated ones, and refusals by reason.
curl -sS --fail --cacert "$DIR/data/pki/ca.pem" -H "Authorization: Bearer $CORRAL_API_KEY" \
    "$CORRAL_SERVER/metrics" | grep -E '^corral_(connections_evicted|connections_shed|tunnel_refusals|tunnel_connects)' || true
python3 - "$DIR/report.json" "$DIR/rss.txt" "$SIGNAL" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
rss = [int(l) for l in open(sys.argv[2]) if l.strip().isdigit()]
c = r["reconnect"]
print(f"agents {r['connected']:,}; server stopped with SIG{sys.argv[3]} and started again")
print(f"tunnels lost {c['lost']:,}, won back {c['reconnected']:,}, agents that gave up {c['gave_up']}, failed dial attempts {c['failed_attempts']:,}")
back = c["all_back_seconds"]
print("all back " + (f"{back:.1f} s after the first loss" if back is not None else "never"))
if rss:
    print(f"new server RSS: peak {max(rss) / 1024:.1f} MiB, at the end {rss[-1] / 1024:.1f} MiB")
print("reconnects per second after the first loss:")
per = c["per_second"]
top = max(per) if per else 1
for second, n in enumerate(per):
    print(f"{second:4d} s {n:6,} {'#' * round(50 * n / top)}")
PY
