#!/usr/bin/env bash
# Failover of several servers on one PostgreSQL, in one run: PostgreSQL 15 on loopback (TLS,
# verify-full), three release servers on it — A active, B and C relaying to it — and N
# simulated agents (`corral bench connect --reconnect`) dialing B, so every tunnel is relayed.
# Then A is killed (SIGKILL, or frozen with SIGSTOP: SIGNAL=STOP). Reports the time from the
# signal to another server serving on its own (it holds the write lock and runs the
# reconciler), and from the first tunnel lost to the last one won back, with the reconnects
# in each second. Everything it starts is stopped by process id and removed.
#
#   bash scripts/bench-failover.sh 10
#   bash scripts/bench-failover.sh 1000
#   SIGNAL=STOP bash scripts/bench-failover.sh 1000
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-1000}
SIGNAL=${SIGNAL:-KILL}
HOLD=${HOLD:-40s}
cargo build --release --locked -q
BIN=$PWD/target/release/corral
[ -n "${CARGO_TARGET_DIR:-}" ] && BIN=$CARGO_TARGET_DIR/release/corral
ulimit -n "$(ulimit -Hn)"

. scripts/lib-postgres.sh
CORRAL_DATASTORE=$(pg_database failover)
export CORRAL_DATASTORE

declare -A PID PORT
# start NAME: a release server in $DIR/NAME on a port of its own.
start() {
    PORT[$1]=$(free_port)
    "$BIN" server --listen 127.0.0.1:"${PORT[$1]}" --data-dir "$DIR/$1" >"$DIR/$1.log" 2>&1 &
    PID[$1]=$!
    PIDS+=($!)
}
# wait_log NAME TEXT: until the server's log says TEXT.
wait_log() {
    for _ in $(seq 600); do grep -qs "$2" "$DIR/$1.log" && return 0; sleep 0.05; done
    cat "$DIR/$1.log" >&2; exit 1
}
echo "starting servers A (active), B and C (relaying)…" >&2
start a
wait_log a "is running"
for s in b c; do
    mkdir -p "$DIR/$s/pki"
    cp "$DIR/a/master.key" "$DIR/$s/"
    cp "$DIR/a/pki/ca.pem" "$DIR/a/pki/ca-key.pem" "$DIR/$s/pki/"
    start "$s"
done
wait_log b "relaying to the active server"
wait_log c "relaying to the active server"
set -a; . "$DIR/a/admin.env"; set +a
export CORRAL_SERVER="https://127.0.0.1:${PORT[b]}"
"$BIN" bench connect --agents "$N" --hold "$HOLD" --ping-interval 15s --concurrency 64 \
    --reconnect --keep -o json >"$DIR/report.json" 2>"$DIR/load.log" &
LOAD=$!
PIDS+=($LOAD)
until grep -qs "holding" "$DIR/load.log"; do
    kill -0 "$LOAD" 2>/dev/null || { cat "$DIR/load.log" >&2; exit 1; }
    sleep 0.2
done
sleep 2
echo "SIG$SIGNAL to A, with $N agents connected through B" >&2
T0=$(date +%s.%N)
kill -"$SIGNAL" "${PID[a]}"
disown "${PID[a]}" 2>/dev/null || true
NEW=
for _ in $(seq 1200); do
    for s in b c; do grep -qs "is running" "$DIR/$s.log" && NEW=$s && break 2; done
    sleep 0.02
done
T1=$(date +%s.%N)
[ -n "$NEW" ] || { echo "no server took over" >&2; exit 1; }
wait "$LOAD" || true
[ -s "$DIR/report.json" ] || { echo "the load ended without a report:" >&2; tail -20 "$DIR/load.log" >&2; exit 1; }
python3 - "$DIR/report.json" "$T0" "$T1" "$NEW" "$SIGNAL" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
t0, t1, new, sig = float(sys.argv[2]), float(sys.argv[3]), sys.argv[4].upper(), sys.argv[5]
c = r["reconnect"]
print(f"agents {r['connected']:,} (through B); A stopped with SIG{sig}")
print(f"new active server ({new}) serving {t1 - t0:.2f} s after the signal")
print(f"tunnels lost {c['lost']:,}, won back {c['reconnected']:,}, agents that gave up {c['gave_up']}, failed dial attempts {c['failed_attempts']:,}")
back = c["all_back_seconds"]
print("all back " + (f"{back:.2f} s after the first loss" if back is not None else "never"))
print("reconnects per second after the first loss:")
per = c["per_second"]
top = max(per) if per else 1
for second, n in enumerate(per):
    print(f"{second:4d} s {n:6,} {'#' * round(50 * n / top)}")
PY
