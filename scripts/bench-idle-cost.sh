#!/usr/bin/env bash
# Idle cost of the server, and the cost of one host joining, at several numbers of agents:
# for each size a fresh release server in a temporary data dir, its overlay range grown so that
# every simulated agent gets a lease (each announces an overlay key, so all are each other's
# peers), N simulated agents with heartbeats every 15 s, then the server's CPU over the first
# half of the hold (idle) and, halfway, one more agent joining (server CPU beyond the idle rate,
# and the overlay messages and bytes the others receive). Everything it starts is stopped by
# process id and removed.
#
#   bash scripts/bench-idle-cost.sh                      # 1000 2500 5000 10000 agents
#   SIZES="1000 20000" HOLD=40s bash scripts/bench-idle-cost.sh
#   OLD_BIN=/path/to/an/older/corral bash scripts/bench-idle-cost.sh
#
# With OLD_BIN, each size runs the older server and this tree's server one after the other
# (A then B), with the same load generator (this tree's `corral bench connect`), so the two
# are compared in one run.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZES=${SIZES:-"1000 2500 5000 10000"}
HOLD=${HOLD:-40s}
PING=${PING:-15s}
RANGE=${RANGE:-10.32.0.0/12}
cargo build --release --locked -q
BIN=$PWD/target/release/corral
[ -n "${CARGO_TARGET_DIR:-}" ] && BIN=$CARGO_TARGET_DIR/release/corral
ulimit -Hn 65536 2>/dev/null || true
ulimit -n "$(ulimit -Hn)"
OUT=$(mktemp /tmp/corral-idle-cost.XXXXXX)
SERVER=
DIR=
cleanup() {
    if [ -n "$SERVER" ]; then kill "$SERVER" 2>/dev/null || true; wait "$SERVER" 2>/dev/null || true; fi
    [ -n "$DIR" ] && rm -rf "$DIR"
    rm -f "$OUT"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

run() { # label server-binary agents
    local label=$1 server_bin=$2 n=$3 port
    DIR=$(mktemp -d /tmp/corral-bench.XXXXXX)
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    "$server_bin" server --listen 127.0.0.1:"$port" --data-dir "$DIR/data" >"$DIR/server.log" 2>&1 &
    SERVER=$!
    for _ in $(seq 100); do [ -f "$DIR/data/admin.env" ] && break; sleep 0.1; done
    # The range, written straight into the datastore so that a release without
    # `env set-overlay --range` is measured the same way.
    python3 - "$DIR/data/corral.db" "$RANGE" <<'PY'
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], timeout=10)
db.execute("UPDATE environments SET overlay_cidr = ? WHERE name = 'default'", (sys.argv[2],))
db.commit()
PY
    (
        set -a; . "$DIR/data/admin.env"; set +a
        "$BIN" bench connect --agents "$n" --hold "$HOLD" --ping-interval "$PING" \
            --concurrency 64 --overlay --server-pid "$SERVER" -o json
    ) | python3 -c 'import json,sys; r=json.load(sys.stdin); r["label"]=sys.argv[1]; print(json.dumps(r))' "$label" >>"$OUT"
    kill "$SERVER"; wait "$SERVER" 2>/dev/null || true
    SERVER=
    rm -rf "$DIR"; DIR=
}

for n in $SIZES; do
    if [ -n "${OLD_BIN:-}" ]; then
        echo "== $n agents: older server" >&2
        run old "$OLD_BIN" "$n"
    fi
    echo "== $n agents: this tree's server" >&2
    run new "$BIN" "$n"
done

python3 - "$OUT" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print("| server | agents | connect all | heartbeat p99 | server CPU idle | one join: server CPU | one join: overlay messages / bytes to the others |")
print("|---|---:|---:|---:|---:|---:|---:|")
for r in rows:
    print(f"| {r['label']} | {r['connected']:,} | {r['connect_seconds']:.1f} s | {r['heartbeat_rtt_p99_ms']:.2f} ms "
          f"| {r['server_cpu_idle_cores']:.3f} cores | {r['join_server_cpu_ms']:.0f} ms "
          f"| {r['join_overlay_messages']:,} / {r['join_overlay_bytes']:,} |")
PY
