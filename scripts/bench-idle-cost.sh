#!/usr/bin/env bash
# Idle cost of the server, and the cost of one host joining, at several numbers of agents.
# For each size a fresh release server in a temporary data dir and N simulated agents with
# heartbeats every 15 s; the server's CPU is measured over the first half of the hold (idle).
# Two kinds of run:
#   plain   (SIZES)          agents without an overlay key, as `bench connect` has always run;
#   overlay (OVERLAY_SIZES)  each agent announces an overlay key, so all are each other's
#                            peers (the range is grown to a /12 so that all get a lease: at
#                            most 4,095 hosts, the most one environment's overlay holds).
# Either way, halfway through the hold one more agent joins (with a key in overlay runs), and
# the server CPU beyond the idle rate and the messages and bytes the others receive are
# reported.
# Everything it starts is stopped by process id and removed.
#
#   bash scripts/bench-idle-cost.sh
#   SIZES="1000 20000" OVERLAY_SIZES="" HOLD=40s bash scripts/bench-idle-cost.sh
#   OLD_BIN=/path/to/an/older/corral OLD_SIZES="1000 2500" OLD_OVERLAY_SIZES=1000 \
#       bash scripts/bench-idle-cost.sh
#
# With OLD_BIN, each size runs the older server and this tree's server one after the other
# (A then B), with the same load generator (this tree's `corral bench connect`), so the two
# are compared in one run.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZES=${SIZES-"1000 2500 5000 10000 20000"}
OVERLAY_SIZES=${OVERLAY_SIZES-"1000 2500 4000"}
# The sizes at which OLD_BIN runs too (default: the same).
OLD_SIZES=${OLD_SIZES-$SIZES}
OLD_OVERLAY_SIZES=${OLD_OVERLAY_SIZES-$OVERLAY_SIZES}
HOLD=${HOLD:-40s}
PING=${PING:-15s}
RANGE=${RANGE:-10.32.0.0/12}
cargo build --release --locked -q
BIN=$PWD/target/release/corral
[ -n "${CARGO_TARGET_DIR:-}" ] && BIN=$CARGO_TARGET_DIR/release/corral
# Each agent is one open file in the load generator and one in the server: N agents need a
# hard limit above N (raised here when allowed; otherwise sizes above it report nothing).
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

run() { # label server-binary agents plain|overlay
    local label=$1 server_bin=$2 n=$3 mode=$4 port flag=
    [ "$mode" = overlay ] && flag=--overlay
    DIR=$(mktemp -d /tmp/corral-bench.XXXXXX)
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    "$server_bin" server --listen 127.0.0.1:"$port" --data-dir "$DIR/data" >"$DIR/server.log" 2>&1 &
    SERVER=$!
    for _ in $(seq 100); do [ -f "$DIR/data/admin.env" ] && break; sleep 0.1; done
    # With overlay keys, a range that gives every agent a lease, written straight into the
    # datastore so that a release without `env set-overlay --range` is measured the same way.
    if [ "$mode" = overlay ]; then
        python3 - "$DIR/data/corral.db" "$RANGE" <<'PY'
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], timeout=10)
db.execute("UPDATE environments SET overlay_cidr = ? WHERE name = 'default'", (sys.argv[2],))
db.commit()
PY
    fi
    # A run in which agents failed to connect still reports (and says how many failed).
    (
        set -a; . "$DIR/data/admin.env"; set +a
        "$BIN" bench connect --agents "$n" --hold "$HOLD" --ping-interval "$PING" \
            --concurrency 64 $flag --keep --server-pid "$SERVER" -o json || true
    ) >"$DIR/report.json"
    # A run that could not start (an open-file limit too low, say) reports nothing: said, and
    # the other sizes still run.
    python3 -c 'import json,sys; r=json.load(open(sys.argv[3])); r["label"]=sys.argv[1]; r["mode"]=sys.argv[2]; print(json.dumps(r))' \
        "$label" "$mode" "$DIR/report.json" | tee -a "$OUT" >&2 || echo "no report for $label, $mode, $n agents" >&2
    kill "$SERVER"; wait "$SERVER" 2>/dev/null || true
    SERVER=
    rm -rf "$DIR"; DIR=
}

sizes() { # plain|overlay
    local mode=$1 n olds
    if [ "$mode" = plain ]; then set -- $SIZES; olds=$OLD_SIZES; else set -- $OVERLAY_SIZES; olds=$OLD_OVERLAY_SIZES; fi
    for n in "$@"; do
        if [ -n "${OLD_BIN:-}" ] && [[ " $olds " == *" $n "* ]]; then
            echo "== $mode, $n agents: older server" >&2
            run old "$OLD_BIN" "$n" "$mode"
        fi
        echo "== $mode, $n agents: this tree's server" >&2
        run new "$BIN" "$n" "$mode"
    done
}
sizes plain
sizes overlay

python3 - "$OUT" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print("| run | server | agents connected | connect all | server RSS per agent | heartbeat p99 | server CPU idle | one join: server CPU | one join: messages / bytes to the others |")
print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
for r in rows:
    join = f"{r['join_server_cpu_ms']:.0f} ms | {r['join_messages']:,} / {r['join_bytes']:,}"
    print(f"| {r['mode']} | {r['label']} | {r['connected']:,} of {r['agents']:,} | {r['connect_seconds']:.1f} s "
          f"| {r['server_rss_per_agent_bytes'] / 1024:.1f} KiB | {r['heartbeat_rtt_p99_ms']:.2f} ms "
          f"| {r['server_cpu_idle_cores']:.3f} cores | {join} |")
PY
