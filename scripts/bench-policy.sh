#!/usr/bin/env bash
# Network policy costs, on a lab of three hosts (scripts/lab.sh: a server and three hosts, each
# in its own network namespace with its own dockerd and agent; release build):
#
#   1. the rule update on one host as replicas grow (10 … 10,000): compile, render, `nft -f`
#      (crates/corral-policy/examples/bench_nft.rs, in a namespace of its own);
#   2. from `corral policy apply` until every host enforces the new generation, with REPLICAS
#      replicas over the three hosts (each agent logs the moment its rules are in the kernel);
#   3. from a new replica starting (its container's start, as Docker records it) until every
#      host's rules know it;
#   4. TCP throughput between two containers on two hosts through the overlay with a
#      RULES-rule policy in force against none, alternated run by run (none, policy, none, …),
#      with iperf3 in the containers' network namespaces.
#
#   bash scripts/bench-policy.sh                       # REPLICAS=600 RULES=1000 RUNS=3 SECS=10
#   REPLICAS=60 RUNS=1 bash scripts/bench-policy.sh    # a quick look
#
# 600 replicas, not 1,000: a host's overlay lease is a /24 (253 container addresses), so three
# hosts hold at most 759, and the scheduler does not yet count addresses when it spreads (it
# may put more than 253 on one host; the extra ones then never start).
set -euo pipefail
cd "$(dirname "$0")/.."
REPLICAS=${REPLICAS:-600}
RULES=${RULES:-1000}
RUNS=${RUNS:-3}
SECS=${SECS:-10}

[ "$(id -u)" = 0 ] || { echo "bench-policy: run as root (namespaces, dockerds, nftables)" >&2; exit 1; }
command -v iperf3 >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iperf3 >/dev/null; }
command -v nft >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nftables >/dev/null; }
BIN=${CORRAL_BIN:-${CARGO_TARGET_DIR:-target}/release/corral}
[ -x "$BIN" ] || cargo build --release -p corral
export CORRAL_BIN=$BIN

echo "== 1. rule update on one host (compile, render, nft -f replacing the table; medians of 5)"
cargo run --release -q -p corral-policy --example bench_nft -- 5

LAB=$(mktemp -d /tmp/corral-bench-policy.XXXXXX)
IPERF_PIDS=()
cleanup() {
    for p in "${IPERF_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    bash scripts/lab.sh down "$LAB" >/dev/null 2>&1 || true
    rm -rf "$LAB"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

cli() { bash scripts/lab.sh cli "$LAB" "$@"; }
epoch() { date +%s.%N; }
ts() { # an agent log line's RFC 3339 timestamp → epoch seconds
    python3 -c 'import sys, datetime; print(datetime.datetime.fromisoformat(sys.argv[1].replace("Z", "+00:00")).timestamp())' "$1"
}
# The time (epoch seconds) at which HOST's agent first logged rules in force matching PATTERN
# after line SKIP of its log, or nothing yet.
in_force_at() {
    local line
    line=$(tail -n +"$(($2 + 1))" "$LAB/$1/agent.log" | grep -m1 -E "network policy in force $3" || true)
    if [ -n "$line" ]; then ts "${line%% *}"; fi
}
lines() { wc -l <"$LAB/$1/agent.log"; }
# Waits until every host logged PATTERN after the marks in MARK_h1.. and prints the latest time.
all_in_force() {
    local pattern=$1 deadline=$(( $(date +%s) + 120 )) latest=0 h t
    for h in h1 h2 h3; do
        while :; do
            t=$(in_force_at "$h" "${MARK[$h]}" "$pattern")
            [ -n "$t" ] && break
            [ "$(date +%s)" -lt "$deadline" ] || { echo "bench-policy: $h never enforced /$pattern/" >&2; tail -5 "$LAB/$h/agent.log" >&2; exit 1; }
            sleep 0.1
        done
        latest=$(awk -v a="$latest" -v b="$t" 'BEGIN { print (b > a) ? b : a }')
    done
    echo "$latest"
}
declare -A MARK
mark_all() { local h; for h in h1 h2 h3; do MARK[$h]=$(lines "$h"); done; }
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }

echo
echo "== building the lab (3 hosts) and deploying $REPLICAS replicas"
bash scripts/lab.sh up "$LAB" 3 >/dev/null
cat >"$LAB/compose.yaml" <<EOF
name: bench
services:
  server:
    image: corral-test/busybox:latest
    command: ["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1 & wait; done"]
    labels: { zone: app }
    deploy: { placement: { constraints: ["node.hostname == h2"] } }
  client:
    image: corral-test/busybox:latest
    command: ["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1 & wait; done"]
    labels: { zone: dmz }
    deploy: { placement: { constraints: ["node.hostname == h1"] } }
  filler:
    image: corral-test/busybox:latest
    command: ["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1 & wait; done"]
    labels: { zone: db }
    deploy: { replicas: $((REPLICAS - 2)) }
EOF
t0=$(epoch)
cli up -f "$LAB/compose.yaml" --wait --timeout 30m >/dev/null 2>&1
echo "deployed in $(awk -v a="$t0" -v b="$(epoch)" 'BEGIN { printf "%.0f", b - a }') s"

# Two documents that differ, so that every apply is a change the hosts must make. Each has
# RULES rules that land in the kernel: deny rules from the client to the server on ports the
# benchmark never uses, and the allows the traffic needs.
policy_doc() { # VARIANT
    {
        echo "default: deny"
        echo "allow:"
        echo "  - { from: { service: client }, to: { service: server }, ports: [5201/tcp] }"
        echo "  - { from: { labels: { zone: db } }, to: { labels: { zone: db } }, ports: [$((7000 + $1))/tcp] }"
        echo "deny:"
        for i in $(seq 1 $((RULES - 2))); do
            echo "  - { from: { service: client }, to: { service: server }, ports: [$((10000 + i))/tcp] }"
        done
    } >"$LAB/policy-$1.yaml"
    echo "$LAB/policy-$1.yaml"
}
EMPTY=$LAB/empty.yaml
: >"$EMPTY"

echo
echo "== 2. policy apply → enforced on every host ($REPLICAS replicas, $RULES rules)"
APPLY=()
for run in $(seq "$RUNS"); do
    doc=$(policy_doc "$run")
    mark_all
    t0=$(epoch)
    cli policy apply -f "$doc" >/dev/null
    gen=$(cli policy show -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)["generation"])')
    t1=$(all_in_force "generation=$gen( |\$)")
    d=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')
    echo "run $run/$RUNS: generation $gen in force on h1, h2, h3 after $d s" >&2
    APPLY+=("$d")
done

echo
echo "== 3. a replica starts → every host's rules know it"
START=()
for run in $(seq "$RUNS"); do
    n=$((REPLICAS - 2 + run))
    mark_all
    cli scale "bench/filler=$n" >/dev/null
    t1=$(all_in_force "generation=[0-9]+ services=3 replicas=$((n + 2))( |\$)")
    # The newest filler container's start, as its host's Docker recorded it.
    started=$(for h in h1 h2 h3; do
        ids=$(bash scripts/lab.sh docker "$LAB" "$h" ps -q --filter label=io.corral.service=filler)
        # shellcheck disable=SC2086
        [ -z "$ids" ] || bash scripts/lab.sh docker "$LAB" "$h" inspect -f '{{.State.StartedAt}}' $ids
    done | python3 -c '
import sys, datetime
def t(s):
    s = s.strip().replace("Z", "")
    head, _, frac = s.partition(".")
    return datetime.datetime.fromisoformat(head + "+00:00").timestamp() + float("0." + (frac or "0"))
print(max(t(l) for l in sys.stdin if l.strip()))')
    [ "$started" != 0 ] || { echo "bench-policy: cannot find replica $n's container" >&2; exit 1; }
    d=$(awk -v a="$started" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')
    echo "run $run/$RUNS: replica filler.$n started, known to all hosts' rules after $d s" >&2
    START+=("$d")
done

echo
echo "== 4. overlay throughput, $RULES-rule policy vs none (${SECS}s runs, alternated)"
pid_of() { # HOST SERVICE: the container's init pid on its host
    local id
    id=$(bash scripts/lab.sh docker "$LAB" "$1" ps -q --filter "label=io.corral.service=$2" | head -1)
    bash scripts/lab.sh docker "$LAB" "$1" inspect -f '{{.State.Pid}}' "$id"
}
SERVER_PID=$(pid_of h2 server)
CLIENT_PID=$(pid_of h1 client)
SERVER_IP=$(nsenter -n -t "$SERVER_PID" ip -4 -o addr show | awk '$2 != "lo" {split($4, a, "/"); print a[1]; exit}')
nsenter -n -t "$SERVER_PID" iperf3 -s -p 5201 >/dev/null 2>&1 &
IPERF_PIDS+=($!)
sleep 1
gbps() { python3 -c 'import json,sys; print("%.3f" % (json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"] / 1e9))'; }
NONE=(); WITH=()
BIG=$(policy_doc 99)
for run in $(seq "$RUNS"); do
    for side in none with; do
        mark_all
        if [ "$side" = none ]; then
            cli policy apply -f "$EMPTY" >/dev/null
            gen=$(cli policy show -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)["generation"])')
            all_in_force "generation=$gen( |\$)" >/dev/null
        else
            cli policy apply -f "$BIG" >/dev/null
            gen=$(cli policy show -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)["generation"])')
            all_in_force "generation=$gen( |\$)" >/dev/null
        fi
        nsenter -n -t "$CLIENT_PID" iperf3 -c "$SERVER_IP" -p 5201 -t "$SECS" -J >"$LAB/iperf.json" || true
        g=$(gbps <"$LAB/iperf.json") || { echo "bench-policy: iperf3 failed ($side):" >&2; head -c 600 "$LAB/iperf.json" >&2; exit 1; }
        echo "run $run/$RUNS, $side: $g Gbit/s" >&2
        if [ "$side" = none ]; then NONE+=("$g"); else WITH+=("$g"); fi
    done
done

echo
echo "== results"
printf '%-58s %s s   (%s)\n' "policy apply → enforced on all 3 hosts ($REPLICAS replicas)" "$(median "${APPLY[@]}")" "${APPLY[*]}"
printf '%-58s %s s   (%s)\n' "a replica starts → known to all 3 hosts' rules" "$(median "${START[@]}")" "${START[*]}"
NM=$(median "${NONE[@]}"); WM=$(median "${WITH[@]}")
printf '%-58s %s Gbit/s   (%s)\n' "overlay TCP, no policy" "$NM" "${NONE[*]}"
printf '%-58s %s Gbit/s   (%s)\n' "overlay TCP, $RULES-rule policy" "$WM" "${WITH[*]}"
printf '%-58s %s\n' "ratio policy / none" "$(awk -v w="$WM" -v n="$NM" 'BEGIN { printf "%.3f", w / n }')"
