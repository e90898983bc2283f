#!/usr/bin/env bash
# Host-loss recovery, corral beside Docker Swarm on the same lab: three hosts (h1–h3), each in
# its own network namespace with its own dockerd; a service of REPLICAS replicas spread over
# them; then h3 is frozen — SIGSTOP to its agent (corral) and to its dockerd and containerd
# (both) — and the time is taken until REPLICAS replicas run on h1 and h2.
#
#   bash scripts/bench-hostloss.sh            # RUNS=1 of each configuration
#   RUNS=3 REPLICAS=6 bash scripts/bench-hostloss.sh
#   ONLY=corral bash scripts/bench-hostloss.sh   # or ONLY=swarm
#
# Configurations, in this order, each on a fresh control plane:
#   corral default   the server's defaults (heartbeats 15 s, dead after 45 s, reschedule after 60 s)
#   corral short     --reschedule-after 5s (heartbeats and death as by default)
#   corral fast      --heartbeat-interval 2s --dead-after 6s --reschedule-after 5s
#   swarm default    a swarm of the three engines (h1 manager), dispatcher heartbeat 5 s
#   swarm fast       docker swarm update --dispatcher-heartbeat 1s
# For each: "detected" — from the freeze to the control plane saying the host is gone (corral:
# the host leaves `active`; swarm: the node is `down`), and "recovered" — from the freeze to
# REPLICAS replicas running on h1 and h2 (corral: `corral ps`; swarm: the service's tasks with
# desired state running, on the other nodes, in state running).
#
# A frozen host is not a closed connection: its kernel still answers TCP, so only the silence of
# its heartbeats tells either control plane. After each run h3 is thawed and the stack removed.
# Everything it starts is stopped by process id and everything it makes is removed (KEEP=1 keeps
# the logs), as scripts/bench-lab.sh does.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
BENCH=bench-hostloss
LAB_TAG=chl
POLL=0.25
RUNS=${RUNS:-1}
REPLICAS=${REPLICAS:-6}
TIMEOUT_S=${TIMEOUT_S:-300}
HOSTS=(h1 h2 h3)
IMAGE=corral-test/busybox:latest
STACK=hostloss
# shellcheck source=scripts/bench-lab.sh
. "$ROOT/scripts/bench-lab.sh"

check_root_runs
check_tools
lab_work
lab_traps
lab_bin
LAB=$WORK/lab.state
UNDO_FILES=("$LAB")
lab_network "$LAB"
start_hosts "$LAB"
# The same image (same ID) on every engine: made on h1, loaded into the others. Swarm tasks name
# it by ID: named by tag, a Swarm worker tries to pull it even with --no-resolve-image, and with
# no registry reachable the failed pulls add waves of retries that a real registry would not.
DOCKER_HOST="unix://$(sock h1)" bash scripts/test-image.sh "$IMAGE" >/dev/null
for h in h2 h3; do dk h1 save "$IMAGE" | dk "$h" load >/dev/null; done
IMAGE_ID=$(dk h1 image inspect -f '{{.Id}}' "$IMAGE")
log "$(lab_versions)"

frozen_pids() { # HOST: its dockerd and containerd, and its corral agent if one runs
    local h=$1 dir=$WORK/docker/$1
    # (The pid files end without a newline.)
    echo "$(cat "$dir/pid")"
    echo "$(cat "$dir/exec/containerd/containerd.pid")"
    if [ -n "${AGENT_PID[$h]:-}" ] && ours "${AGENT_PID[$h]}"; then echo "${AGENT_PID[$h]}"; fi
}
freeze() { local p; for p in $(frozen_pids "$1"); do ours "$p" && kill -STOP "$p"; done; }
thaw() { local p; for p in $(frozen_pids "$1"); do ours "$p" && kill -CONT "$p"; done; }
# Thawed whatever happens: a stopped dockerd would hang the cleanup.
trap 'rc=$?; set +e; thaw h3 2>/dev/null; (exit "$rc"); cleanup' EXIT

clear_engines() { # every container and corral network on every host's engine
    local h
    for h in "${HOSTS[@]}"; do
        dk "$h" ps -aq | xargs -r docker -H "unix://$(sock "$h")" rm -f -v >/dev/null 2>&1 || true
        dk "$h" network ls -q --filter name=corral_ | xargs -r docker -H "unix://$(sock "$h")" network rm >/dev/null 2>&1 || true
    done
}

COMPOSE=$WORK/compose.yaml
cat >"$COMPOSE" <<EOF
services:
  web:
    image: $IMAGE
    command: ["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1 & wait; done"]
    deploy:
      replicas: $REPLICAS
EOF

corral_counts() { # prints "ON_H3 ELSEWHERE_RUNNING H3_STATE"
    local view hosts
    view=$(cli ps -p "$STACK" -o json 2>/dev/null) || { echo "? ? ?"; return; }
    hosts=$(cli host ls -o json 2>/dev/null) || hosts='[]'
    python3 -c '
import json, sys
view = json.loads(sys.argv[1])[0]
reps = [r for s in view["services"] for r in s["replicas"]]
h3 = [h["state"] for h in json.loads(sys.argv[2]) if h["name"] == "h3"]
print(sum(r["host"] == "h3" for r in reps),
      sum(r["host"] != "h3" and r["actual"] == "running" for r in reps),
      h3[0] if h3 else "gone")' "$view" "$hosts"
}

declare -A RESULTS=()
run_corral() { # NAME SERVER_ARGS…
    local name=$1 run t0 det rec on_h3 elsewhere h3_state
    shift
    SERVER_ARGS=("$@")
    for run in $(seq "$RUNS"); do
        local state=$WORK/corral-$name-$run.state
        UNDO_FILES=("$state" "$LAB")
        start_corral "$state" "-$name-$run"
        cli up -f "$COMPOSE" -p "$STACK" --wait --timeout 120s >"$WORK/logs/up-$name-$run.log" 2>&1 ||
            die "corral up failed: $(tail -n 5 "$WORK/logs/up-$name-$run.log")"
        read -r on_h3 elsewhere h3_state <<<"$(corral_counts)"
        [ "$on_h3" -ge 1 ] || die "no replica on h3 to lose (${on_h3} there)"
        log "corral $name run $run: $on_h3 of $REPLICAS replicas on h3; freezing h3 (agent, dockerd, containerd)"
        t0=$(now)
        freeze h3
        det=
        rec=
        while [ -z "$rec" ]; do
            read -r on_h3 elsewhere h3_state <<<"$(corral_counts)"
            if [ -z "$det" ] && [ "$h3_state" != active ] && [ "$h3_state" != "?" ]; then
                det=$(elapsed "$t0" "$(now)")
            fi
            if [ "$elsewhere" = "$REPLICAS" ]; then rec=$(elapsed "$t0" "$(now)"); fi
            [ "$(elapsed "$t0" "$(now)" | cut -d. -f1)" -lt "$TIMEOUT_S" ] || die "corral $name: not recovered within ${TIMEOUT_S}s"
            sleep "$POLL"
        done
        log "corral $name run $run: detected ${det:-?} s, recovered $rec s"
        RESULTS["corral $name"]+="${det:-?}/$rec "
        thaw h3
        undo "$state"
        clear_engines
    done
}

swarm_node() { dk "$1" info -f '{{.Swarm.NodeID}}'; }
swarm_counts() { # prints "ELSEWHERE_RUNNING H3_STATUS"
    local ids
    ids=$(dk h1 service ps -q --filter desired-state=running "$STACK" 2>/dev/null) || { echo "? ?"; return; }
    local running=0 line
    if [ -n "$ids" ]; then
        # shellcheck disable=SC2086
        while read -r line; do
            case "$line" in "$H3_NODE "*) ;; *" running") running=$((running + 1)) ;; esac
        done < <(dk h1 inspect --format '{{.NodeID}} {{.Status.State}}' $ids 2>/dev/null)
    fi
    echo "$running $(dk h1 node inspect -f '{{.Status.State}}' "$H3_NODE" 2>/dev/null || echo '?')"
}
run_swarm() { # NAME HEARTBEAT
    local name=$1 heartbeat=$2 run t0 det rec elsewhere status token h
    dk h1 swarm init --advertise-addr "$(host_ip h1)" --listen-addr "$(host_ip h1):2377" \
        --dispatcher-heartbeat "$heartbeat" >"$WORK/logs/swarm-init-$name.log" 2>&1 ||
        die "docker swarm init failed: $(tail -n 5 "$WORK/logs/swarm-init-$name.log")"
    token=$(dk h1 swarm join-token -q worker)
    for h in h2 h3; do
        dk "$h" swarm join --token "$token" --advertise-addr "$(host_ip "$h")" "$(host_ip h1):2377" \
            >"$WORK/logs/swarm-join-$name-$h.log" 2>&1 ||
            die "docker swarm join of $h failed: $(tail -n 5 "$WORK/logs/swarm-join-$name-$h.log")"
    done
    H3_NODE=$(swarm_node h3)
    for run in $(seq "$RUNS"); do
        dk h1 service create --detach --name "$STACK" --replicas "$REPLICAS" --no-resolve-image \
            "$IMAGE_ID" sh -c "trap 'exit 0' TERM; while :; do sleep 1 & wait; done" >/dev/null
        local t=$SECONDS
        until [ "$(dk h1 service ls --filter name="$STACK" --format '{{.Replicas}}')" = "$REPLICAS/$REPLICAS" ]; do
            [ $((SECONDS - t)) -lt 120 ] ||
                die "the swarm service's tasks do not run: $(dk h1 service ps --no-trunc --format '{{.CurrentState}} {{.Error}}' "$STACK" | sort | uniq -c | head -5)"
            sleep "$POLL"
        done
        local on_h3
        on_h3=$(dk h3 ps -q | wc -l)
        [ "$on_h3" -ge 1 ] || die "no swarm task on h3 to lose"
        log "swarm $name run $run: $on_h3 of $REPLICAS tasks on h3; freezing h3 (dockerd, containerd)"
        t0=$(now)
        freeze h3
        det=
        rec=
        while [ -z "$rec" ]; do
            read -r elsewhere status <<<"$(swarm_counts)"
            if [ -z "$det" ] && [ "$status" = down ]; then det=$(elapsed "$t0" "$(now)"); fi
            if [ "$elsewhere" = "$REPLICAS" ]; then rec=$(elapsed "$t0" "$(now)"); fi
            [ "$(elapsed "$t0" "$(now)" | cut -d. -f1)" -lt "$TIMEOUT_S" ] || die "swarm $name: not recovered within ${TIMEOUT_S}s"
            sleep "$POLL"
        done
        log "swarm $name run $run: detected ${det:-?} s, recovered $rec s"
        RESULTS["swarm $name"]+="${det:-?}/$rec "
        thaw h3
        dk h1 service rm "$STACK" >/dev/null
        wait_gone 120 "the swarm service's containers" bash -c "for h in ${HOSTS[*]}; do docker -H unix://$WORK/docker/\$h/docker.sock ps -q; done"
    done
    for h in h3 h2 h1; do dk "$h" swarm leave --force >/dev/null 2>&1 || true; done
    clear_engines
}

ONLY=${ONLY:-}
if [ "$ONLY" != swarm ]; then
    run_corral default
    run_corral short --reschedule-after 5s
    run_corral fast --heartbeat-interval 2s --dead-after 6s --reschedule-after 5s
fi
UNDO_FILES=("$LAB")
if [ "$ONLY" != corral ]; then
    run_swarm default 5s
    run_swarm fast 1s
fi

echo
echo "host loss: $REPLICAS replicas over h1–h3, h3 frozen; seconds from the freeze (detected/recovered per run)"
printf '%-16s %s\n' "configuration" "runs"
for k in "corral default" "corral short" "corral fast" "swarm default" "swarm fast"; do
    printf '%-16s %s\n' "$k" "${RESULTS[$k]:-}"
done
