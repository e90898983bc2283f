#!/usr/bin/env bash
# Overlay throughput: TCP between two containers on two lab hosts through corral's encrypted
# overlay, against the raw path between the same two hosts' namespaces (the lab bridge), with
# iperf3; the CPU the two agents spend per Gbit/s; and the encryption-only bound (one core
# sealing and opening WireGuard data messages, examples/bench_crypto.rs).
#
#   bash scripts/bench-overlay.sh            # SECS=10 per run, RUNS=3
#   SECS=180 RUNS=1 bash scripts/bench-overlay.sh   # sustained, across the 120 s rekey
#
# Each run also prints its slowest second: a session that stalls (rekey trouble) shows there.
#
# The lab (scripts/lab.sh: a server and two hosts, each in its own network namespace with its
# own dockerd and agent) is built with the release binary and removed at the end, on success
# and on failure. iperf3 runs from this machine's binary inside each container's network
# namespace (`nsenter -n -t PID`), so the traffic is container to container.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${SECS:-10}
RUNS=${RUNS:-3}

command -v iperf3 >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iperf3 >/dev/null; }
BIN=${CORRAL_BIN:-${CARGO_TARGET_DIR:-target}/release/corral}
[ -x "$BIN" ] || cargo build --release -p corral
export CORRAL_BIN=$BIN

LAB=$(mktemp -d /tmp/corral-bench-overlay.XXXXXX)
IPERF_PIDS=()
cleanup() {
    for p in "${IPERF_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    bash scripts/lab.sh down "$LAB" >/dev/null 2>&1 || true
    rm -rf "$LAB"
}
trap cleanup EXIT
# A signal ends the script through its EXIT trap (bash does not run it on a fatal signal).
trap 'exit 130' INT
trap 'exit 143' TERM

bash scripts/lab.sh up "$LAB" 2 >/dev/null
cat >"$LAB/compose.yaml" <<'EOF'
name: bench
services:
  server:
    image: corral-test/busybox:latest
    command: ["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1 & wait; done"]
    deploy: { placement: { constraints: ["node.hostname == h2"] } }
  client:
    image: corral-test/busybox:latest
    command: ["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1 & wait; done"]
    deploy: { placement: { constraints: ["node.hostname == h1"] } }
EOF
bash scripts/lab.sh cli "$LAB" up -f "$LAB/compose.yaml" --wait >/dev/null 2>&1

pid_of() { # HOST SERVICE: the container's init pid on its host
    local id
    id=$(bash scripts/lab.sh docker "$LAB" "$1" ps -q --filter "label=io.corral.service=$2")
    bash scripts/lab.sh docker "$LAB" "$1" inspect -f '{{.State.Pid}}' "$id"
}
SERVER_PID=$(pid_of h2 server)
CLIENT_PID=$(pid_of h1 client)
SERVER_IP=$(nsenter -n -t "$SERVER_PID" ip -4 -o addr show | awk '$2 != "lo" {split($4, a, "/"); print a[1]; exit}')
H1=$(bash scripts/lab.sh ns "$LAB" h1)
H2=$(bash scripts/lab.sh ns "$LAB" h2)
AGENT1=$(cat "$LAB/h1/agent.pid")
AGENT2=$(cat "$LAB/h2/agent.pid")

cpu_ticks() { # PID: utime + stime in clock ticks
    awk '{print $14 + $15}' "/proc/$1/stat"
}

# iperf3 servers: one in the server container's namespace, one in h2's namespace (raw path).
nsenter -n -t "$SERVER_PID" iperf3 -s -p 5201 >/dev/null 2>&1 &
IPERF_PIDS+=($!)
ip netns exec "$H2" iperf3 -s -p 5202 >/dev/null 2>&1 &
IPERF_PIDS+=($!)
sleep 1

slowest_second() { # iperf3 -J output on stdin → the lowest 1-second interval, Gbit/s
    python3 -c 'import json,sys; print("%.3f" % (min(i["sum"]["bits_per_second"] for i in json.load(sys.stdin)["intervals"]) / 1e9))'
}
gbps() { # iperf3 -J output on stdin → receiver Gbit/s
    python3 -c 'import json,sys; print("%.3f" % (json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"] / 1e9))'
}

OVERLAY=(); RAW=(); CPU=()
HZ=$(getconf CLK_TCK)
for run in $(seq "$RUNS"); do
    a1=$(cpu_ticks "$AGENT1"); a2=$(cpu_ticks "$AGENT2")
    nsenter -n -t "$CLIENT_PID" iperf3 -c "$SERVER_IP" -p 5201 -t "$SECS" -J >"$LAB/overlay.json"
    o=$(gbps <"$LAB/overlay.json")
    low=$(slowest_second <"$LAB/overlay.json")
    b1=$(cpu_ticks "$AGENT1"); b2=$(cpu_ticks "$AGENT2")
    r=$(ip netns exec "$H1" iperf3 -c 192.0.2.12 -p 5202 -t "$SECS" -J | gbps)
    # CPU-seconds per second of both agents together, per Gbit/s carried.
    c=$(awk -v t=$(( (b1 - a1) + (b2 - a2) )) -v hz="$HZ" -v s="$SECS" -v g="$o" 'BEGIN { printf "%.2f", (t / hz / s) / g }')
    echo "run $run/$RUNS: overlay $o Gbit/s (slowest second $low), raw $r Gbit/s, agents' CPU $c cores per Gbit/s" >&2
    OVERLAY+=("$o"); RAW+=("$r"); CPU+=("$c")
done

median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
OM=$(median "${OVERLAY[@]}"); RM=$(median "${RAW[@]}"); CM=$(median "${CPU[@]}")
echo
echo "TCP, container on h1 -> container on h2, ${SECS}s per run, $RUNS runs (medians)"
printf '%-44s %8s Gbit/s   (%s)\n' "through the encrypted overlay" "$OM" "${OVERLAY[*]}"
printf '%-44s %8s Gbit/s   (%s)\n' "raw path between the two namespaces" "$RM" "${RAW[*]}"
printf '%-44s %8s\n' "ratio overlay / raw" "$(awk -v o="$OM" -v r="$RM" 'BEGIN { printf "%.3f", o / r }')"
printf '%-44s %8s cores per Gbit/s   (%s)\n' "agents' CPU (both hosts)" "$CM" "${CPU[*]}"
peak_rss() { # PID: the process's peak resident set, MiB
    awk '/^VmHWM:/ {printf "%.1f", $2 / 1024}' "/proc/$1/status"
}
printf '%-44s %8s MiB (h1, sending)   %s MiB (h2, receiving)\n' "agents' peak RSS" "$(peak_rss "$AGENT1")" "$(peak_rss "$AGENT2")"

# The encryption-only bound: sealing and opening on one core, no kernel in the way.
echo
echo "encryption only (bench_crypto, 1420-byte packets, one core):"
cargo run --release -q -p corral-overlay --example bench_crypto -- 1420 3 | sed -n '2,4p'

