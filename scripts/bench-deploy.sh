#!/usr/bin/env bash
# Deploy benchmark: one Compose file (10 services × 5 replicas of the local busybox image, no
# published ports) deployed by `corral up --wait` and by `docker stack deploy` (Docker Swarm) on
# this machine's Docker engine; the median of RUNS wall-clock times to convergence for each, and
# the engine's own floor for the same containers.
#
#   bash scripts/bench-deploy.sh                    # RUNS=5
#   RUNS=3 SERVICES=10 REPLICAS=5 bash scripts/bench-deploy.sh
#   IMAGE_REF=tag bash scripts/bench-deploy.sh      # name the image by tag (see below)
#   FLOOR=0 bash scripts/bench-deploy.sh            # skip the engine floor
#
# Convergence, for both: every one of the SERVICES × REPLICAS tasks is running.
#   corral: from the start of `corral up -f FILE -p bench --wait` to the moment its CLI first
#           sees every replica running (it polls every 250 ms and prints "converged in X s";
#           it exits 1 s later, once the stack has stayed converged).
#   swarm:  from the start of `docker stack deploy --resolve-image never` to the first poll
#           (every 250 ms) of `docker stack ps benchswarm --filter desired-state=running` that
#           shows all tasks in state Running.
#   floor:  the same containers made without an orchestrator, by one python3 process: a bridge
#           network, then every container created and started through the Docker API at once
#           (one thread each, as corral's agent runs its commands concurrently); from the first
#           request to the last start's answer. What this engine itself needs.
# Between runs the stack is removed (`corral down`, `docker stack rm`) and the script waits
# until its containers and network are gone.
#
# The image is named by its ID (IMAGE_REF=id, the default): a Swarm worker tries to pull every
# task's image named by tag, even with --resolve-image never, and with no registry reachable
# (as on the lab machines) those failed pulls add waves of ~5 s to Swarm's time that a real
# registry would not. IMAGE_REF=tag names it corral-test/busybox:latest instead. corral never
# pulls either way.
#
# Everything it starts is stopped by process id, everything it creates is removed by name, on
# success and on failure: the corral server (fresh, in a temporary data dir, on a free loopback
# port), the stacks, the floor's containers and network, dockerd (only if this script started
# it) and Swarm mode (left only if this script initialised it, with its docker_gwbridge network).
# Set KEEP=1 to keep the logs.
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${RUNS:-5}
SERVICES=${SERVICES:-10}
REPLICAS=${REPLICAS:-5}
IMAGE_REF=${IMAGE_REF:-id}
FLOOR=${FLOOR:-1}
TIMEOUT_S=${TIMEOUT_S:-300}
TOTAL=$((SERVICES * REPLICAS))
CORRAL_STACK=bench
SWARM_STACK=benchswarm
FLOOR_LABEL=corral-bench-floor
FLOOR_NET=corral-bench-floor
IMAGE=corral-test/busybox:latest
CMD_JSON='["sh", "-c", "trap '"'"'exit 0'"'"' TERM; while :; do sleep 1 & wait; done"]'
POLL=0.25

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'bench-deploy: %s\n' "$*" >&2; exit 1; }
now() { printf '%s' "$EPOCHREALTIME"; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }
median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) printf "%.2f", v[(NR + 1) / 2]; else printf "%.2f", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

[ "$(id -u)" = 0 ] || die "run as root (it drives the Docker engine and Swarm mode)"
[ "$RUNS" -ge 1 ] 2>/dev/null || die "RUNS must be a positive integer"
case "$IMAGE_REF" in id | tag) ;; *) die "IMAGE_REF is id or tag" ;; esac

WORK=$(mktemp -d /tmp/corral-bench-deploy.XXXXXX)
DOCKERD_PID=
SERVER_PID=
SWARM_INIT=0
GWBRIDGE_EXISTED=1
CORRAL_USED=0
SWARM_USED=0
FLOOR_USED=0
BIN=
CHILD=

# Runs a command in the background and waits for it, so that a signal to this script is handled
# at once (bash defers traps while a foreground command runs); cleanup stops it.
run() {
    "$@" &
    CHILD=$!
    local rc=0
    wait "$CHILD" || rc=$?
    CHILD=
    return "$rc"
}

# --- cleanup: runs on every exit --------------------------------------------------------------
wait_gone() { # wait_gone SECONDS CMD…: until CMD prints nothing
    local limit=$1
    shift
    local t0=$SECONDS
    while [ -n "$("$@" 2>/dev/null)" ]; do
        [ $((SECONDS - t0)) -ge "$limit" ] && return 1
        sleep "$POLL"
    done
}
corral_leftovers() {
    docker ps -aq --filter "label=io.corral.stack=$CORRAL_STACK"
    docker network ls -q --filter "name=^corral_${CORRAL_STACK}\$"
}
swarm_leftovers() {
    docker service ls -q --filter "label=com.docker.stack.namespace=$SWARM_STACK"
    docker ps -aq --filter "label=com.docker.stack.namespace=$SWARM_STACK"
    docker network ls -q --filter "label=com.docker.stack.namespace=$SWARM_STACK"
    # The tasks' gateway endpoints on docker_gwbridge (released asynchronously).
    docker network inspect docker_gwbridge -f '{{range .Containers}}{{.Name}} {{end}}' 2>/dev/null |
        tr ' ' '\n' | grep -v -e '^$' -e '^gateway_ingress-sbox$' || true
}
floor_leftovers() {
    docker ps -aq --filter "label=$FLOOR_LABEL"
    docker network ls -q --filter "label=$FLOOR_LABEL"
}
remove_floor() {
    docker ps -aq --filter "label=$FLOOR_LABEL" | xargs -r docker rm -f >/dev/null
    docker network ls -q --filter "label=$FLOOR_LABEL" | xargs -r docker network rm >/dev/null
}
start_dockerd() {
    dockerd >>"$WORK/dockerd.log" 2>&1 &
    DOCKERD_PID=$!
    for _ in $(seq 60); do docker info >/dev/null 2>&1 && return 0; sleep 0.5; done
    return 1
}
stop_dockerd() {
    kill "$DOCKERD_PID" 2>/dev/null
    wait "$DOCKERD_PID" 2>/dev/null
    DOCKERD_PID=
}
remove_gwbridge() { # true once docker_gwbridge is gone
    for _ in $(seq 20); do
        docker network inspect docker_gwbridge >/dev/null 2>&1 || return 0
        docker network rm docker_gwbridge >/dev/null 2>&1 || sleep 0.25
    done
    ! docker network inspect docker_gwbridge >/dev/null 2>&1
}
cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    if [ -n "$CHILD" ]; then
        kill "$CHILD" 2>/dev/null
        wait "$CHILD" 2>/dev/null
    fi
    if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
        if [ "$CORRAL_USED" = 1 ]; then
            "$BIN" down -p "$CORRAL_STACK" --timeout 60s >>"$WORK/cleanup.log" 2>&1
        fi
        kill "$SERVER_PID" 2>/dev/null
        for _ in $(seq 100); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$SERVER_PID" 2>/dev/null
        wait "$SERVER_PID" 2>/dev/null
    fi
    if [ "$CORRAL_USED" = 1 ] && [ -n "$(corral_leftovers)" ]; then
        log "removing leftovers of corral stack $CORRAL_STACK"
        docker ps -aq --filter "label=io.corral.stack=$CORRAL_STACK" | xargs -r docker rm -f >/dev/null
        docker network rm "corral_$CORRAL_STACK" >/dev/null 2>&1
    fi
    if [ "$FLOOR_USED" = 1 ] && [ -n "$(floor_leftovers)" ]; then
        log "removing the floor's containers and network"
        remove_floor
    fi
    if [ "$SWARM_USED" = 1 ] && [ -n "$(swarm_leftovers)" ]; then
        log "removing swarm stack $SWARM_STACK"
        docker stack rm "$SWARM_STACK" >/dev/null 2>&1
        wait_gone 120 swarm_leftovers || log "stack $SWARM_STACK still has leftovers: $(swarm_leftovers | tr '\n' ' ')"
    fi
    if [ "$SWARM_INIT" = 1 ]; then
        log "leaving swarm mode (initialised by this script)"
        docker swarm leave --force >/dev/null
        [ "$(docker info -f '{{.Swarm.LocalNodeState}}' 2>/dev/null)" = inactive ] ||
            log "WARNING: the engine is still in swarm mode; run: docker swarm leave --force"
        # docker_gwbridge, made by swarm init, outlives the swarm. dockerd 20.10 often refuses to
        # remove it ("has active endpoints", though it lists none) after many tasks came and
        # went (moby/moby#37018), until dockerd restarts.
        if [ "$GWBRIDGE_EXISTED" = 0 ] && ! remove_gwbridge; then
            if [ -n "$DOCKERD_PID" ]; then
                log "restarting dockerd (started by this script) to remove docker_gwbridge"
                stop_dockerd
                start_dockerd && remove_gwbridge
            fi
            docker network inspect docker_gwbridge >/dev/null 2>&1 &&
                log "WARNING: docker_gwbridge (made by swarm init, empty) could not be removed: $(docker network rm docker_gwbridge 2>&1 | head -n 1); it goes with a restart of dockerd and \`docker network rm docker_gwbridge\`"
        fi
    fi
    if [ -n "$DOCKERD_PID" ]; then
        log "stopping dockerd (started by this script)"
        stop_dockerd
    fi
    if [ "$rc" != 0 ] && [ -s "$WORK/server.log" ]; then
        echo "--- last lines of the corral server's log ($WORK/server.log):" >&2
        tail -n 20 "$WORK/server.log" >&2
    fi
    if [ "${KEEP:-0}" = 1 ]; then
        log "logs kept in $WORK"
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- prerequisites ----------------------------------------------------------------------------
if ! docker info >/dev/null 2>&1 && [ -f /var/run/docker.pid ] && kill -0 "$(cat /var/run/docker.pid)" 2>/dev/null; then
    log "a dockerd is running but does not answer yet; waiting for it"
    for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 0.5; done
fi
if ! docker info >/dev/null 2>&1; then
    command -v dockerd >/dev/null 2>&1 || die "no dockerd: apt-get install -y docker.io"
    log "starting dockerd"
    start_dockerd || die "dockerd did not start: $(tail -n 5 "$WORK/dockerd.log")"
fi
bash scripts/test-image.sh "$IMAGE"

BIN=${CARGO_TARGET_DIR:-$PWD/target}/release/corral
if [ ! -x "$BIN" ] || ! "$BIN" up --help >/dev/null 2>&1; then
    log "building the release binary (cargo build --release -p corral)"
    cargo build --release -p corral --locked -q
elif [ -n "$(find crates Cargo.toml Cargo.lock -newer "$BIN" \( -name '*.rs' -o -name 'Cargo.*' \) -print -quit)" ]; then
    log "warning: $BIN is older than the sources; run \`cargo build --release -p corral\` to measure them"
fi
[ -n "$(corral_leftovers)" ] && die "a corral stack '$CORRAL_STACK' already has containers or a network here; remove it first"
[ -n "$(floor_leftovers)" ] && die "containers or networks labelled $FLOOR_LABEL exist here; remove them first"
if [ "$(docker info -f '{{.Swarm.LocalNodeState}}')" = active ] && [ -n "$(swarm_leftovers)" ]; then
    die "a swarm stack '$SWARM_STACK' already exists; remove it first (docker stack rm $SWARM_STACK)"
fi
OTHERS=$(docker ps -q | wc -l)
[ "$OTHERS" = 0 ] || log "note: $OTHERS other container(s) are running on this engine"

# --- the Compose file (one file for corral and for docker stack deploy) -----------------------
if [ "$IMAGE_REF" = id ]; then
    REF=$(docker image inspect -f '{{.Id}}' "$IMAGE")
else
    REF=$IMAGE
fi
FILE=$WORK/compose.yaml
{
    echo "services:"
    for i in $(seq -w 1 "$SERVICES"); do
        cat <<EOF
  svc$i:
    image: $REF
    # Long-lived, and exits at once on SIGTERM (docker stop takes ~0.2 s, not the 10 s grace).
    command: $CMD_JSON
    deploy:
      replicas: $REPLICAS
EOF
    done
} >"$FILE"

# --- corral -----------------------------------------------------------------------------------
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
log "corral: starting a server with an agent on 127.0.0.1:$PORT ($("$BIN" --version))"
"$BIN" server --listen "127.0.0.1:$PORT" --data-dir "$WORK/corral" --with-agent >"$WORK/server.log" 2>&1 &
SERVER_PID=$!
for _ in $(seq 100); do [ -f "$WORK/corral/admin.env" ] && break; sleep 0.1; done
[ -f "$WORK/corral/admin.env" ] || die "the server wrote no admin.env"
set -a
# shellcheck disable=SC1091
. "$WORK/corral/admin.env"
set +a
host_ready() {
    "$BIN" host ls -o json 2>/dev/null | python3 -c '
import json, sys
hosts = json.load(sys.stdin)
sys.exit(0 if any(h.get("state") == "active" and (h.get("docker") or {}).get("state") == "available" for h in hosts) else 1)'
}
for _ in $(seq 120); do host_ready && break; sleep 0.25; done
host_ready || die "no host with docker available after 30 s"

CORRAL_TIMES=()
CORRAL_SELF=()
CORRAL_USED=1
for run in $(seq "$RUNS"); do
    t0=$(now)
    run "$BIN" up -f "$FILE" -p "$CORRAL_STACK" --wait --timeout "${TIMEOUT_S}s" >"$WORK/corral-up-$run.out" 2>"$WORK/corral-up-$run.err" ||
        die "corral up failed: $(tail -n 20 "$WORK/corral-up-$run.err")"
    t1=$(now)
    running=$(docker ps -q --filter "label=io.corral.stack=$CORRAL_STACK" --filter status=running | wc -l)
    [ "$running" = "$TOTAL" ] || die "corral said converged but $running of $TOTAL containers run"
    CORRAL_TIMES+=("$(elapsed "$t0" "$t1")")
    CORRAL_SELF+=("$(sed -n 's/.* converged in \([0-9.]*\)s .*/\1/p' "$WORK/corral-up-$run.err")")
    log "corral run $run/$RUNS: ${CORRAL_TIMES[-1]} s (corral reports ${CORRAL_SELF[-1]} s)"
    run "$BIN" down -p "$CORRAL_STACK" --timeout "${TIMEOUT_S}s" >"$WORK/corral-down-$run.log" 2>&1 ||
        die "corral down failed: $(tail -n 5 "$WORK/corral-down-$run.log")"
    wait_gone 60 corral_leftovers || die "stack $CORRAL_STACK left containers or its network behind"
done
kill "$SERVER_PID" 2>/dev/null || true
wait "$SERVER_PID" 2>/dev/null || true
SERVER_PID=

# --- the engine's floor: the same containers, no orchestrator ---------------------------------
# One process (python3, one thread per container) creates and starts them all through the
# Docker API at once, as corral's agent does; it prints the seconds from the first request to
# the last start's answer.
FLOOR_PY='
import http.client, json, socket, sys, threading, time
ref, cmd, label, net, n = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5])
class Conn(http.client.HTTPConnection):
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect("/var/run/docker.sock")
def call(method, path, body=None):
    c = Conn("localhost", timeout=120)
    c.request(method, "/v1.41" + path, json.dumps(body) if body is not None else None,
              {"Content-Type": "application/json"})
    r = c.getresponse()
    data = r.read()
    if r.status >= 300:
        raise SystemExit(f"{method} {path}: {r.status} {data[:200]!r}")
    return json.loads(data) if data else None
errors = []
def one(i):
    try:
        spec = {"Image": ref, "Cmd": cmd, "Labels": {label: "1"}, "HostConfig": {"NetworkMode": net}}
        cid = call("POST", f"/containers/create?name={net}-{i}", spec)["Id"]
        call("POST", f"/containers/{cid}/start")
    except BaseException as e:
        errors.append(e)
t0 = time.monotonic()
call("POST", "/networks/create", {"Name": net, "Labels": {label: "1"}})
threads = [threading.Thread(target=one, args=(i,)) for i in range(1, n + 1)]
for t in threads:
    t.start()
for t in threads:
    t.join()
if errors:
    raise SystemExit(f"floor: {errors[0]}")
print(f"{time.monotonic() - t0:.2f}")
'
FLOOR_TIMES=()
if [ "$FLOOR" = 1 ]; then
    FLOOR_USED=1
    for run in $(seq "$RUNS"); do
        t=$(python3 -c "$FLOOR_PY" "$REF" "$CMD_JSON" "$FLOOR_LABEL" "$FLOOR_NET" "$TOTAL" 2>"$WORK/floor-$run.err") ||
            die "the floor failed: $(tail -n 3 "$WORK/floor-$run.err")"
        running=$(docker ps -q --filter "label=$FLOOR_LABEL" --filter status=running | wc -l)
        [ "$running" = "$TOTAL" ] || die "the floor started $running of $TOTAL containers"
        FLOOR_TIMES+=("$t")
        log "floor run $run/$RUNS: $t s"
        remove_floor
        wait_gone 60 floor_leftovers || die "the floor's containers or network were not removed"
    done
fi

# --- Docker Swarm -----------------------------------------------------------------------------
if [ "$(docker info -f '{{.Swarm.LocalNodeState}}')" != active ]; then
    docker network inspect docker_gwbridge >/dev/null 2>&1 || GWBRIDGE_EXISTED=0
    log "swarm: docker swarm init --advertise-addr 127.0.0.1"
    SWARM_INIT=1
    docker swarm init --advertise-addr 127.0.0.1 >/dev/null
else
    log "swarm: the engine is already in swarm mode; using it (it is left as it is)"
fi
swarm_running() {
    docker stack ps "$SWARM_STACK" --filter desired-state=running --format '{{.CurrentState}}' 2>/dev/null |
        grep -c '^Running' || true
}
SWARM_TIMES=()
SWARM_CMD=()
SWARM_USED=1
for run in $(seq "$RUNS"); do
    t0=$(now)
    run docker stack deploy --resolve-image never -c "$FILE" "$SWARM_STACK" >"$WORK/swarm-deploy-$run.log" 2>&1 ||
        die "docker stack deploy failed: $(tail -n 5 "$WORK/swarm-deploy-$run.log")"
    tc=$(now)
    until [ "$(swarm_running)" = "$TOTAL" ]; do
        [ "$(elapsed "$t0" "$(now)" | cut -d. -f1)" -ge "$TIMEOUT_S" ] &&
            die "swarm did not converge within ${TIMEOUT_S}s: $(swarm_running)/$TOTAL running"
        sleep "$POLL"
    done
    t1=$(now)
    running=$(docker ps -q --filter "label=com.docker.stack.namespace=$SWARM_STACK" --filter status=running | wc -l)
    [ "$running" = "$TOTAL" ] || die "swarm reports all tasks running but $running of $TOTAL containers run"
    SWARM_TIMES+=("$(elapsed "$t0" "$t1")")
    SWARM_CMD+=("$(elapsed "$t0" "$tc")")
    log "swarm run $run/$RUNS: ${SWARM_TIMES[-1]} s (docker stack deploy itself returned after ${SWARM_CMD[-1]} s)"
    run docker stack rm "$SWARM_STACK" >"$WORK/swarm-rm-$run.log" 2>&1 || die "docker stack rm failed"
    wait_gone "$TIMEOUT_S" swarm_leftovers || die "stack $SWARM_STACK left services, containers or its network behind"
done

# --- results ----------------------------------------------------------------------------------
# corral's time is the one its CLI reports: from the start of `corral up` until it first sees
# the stack converged (measured like Swarm's, by polling every 250 ms). The command itself
# returns 1 s later, after checking that the stack stays converged (see README).
CM=$(median "${CORRAL_SELF[@]}")
SM=$(median "${SWARM_TIMES[@]}")
RATIO=$(awk -v c="$CM" -v s="$SM" 'BEGIN { printf "%.2f", c / s }')
echo
echo "deploy of $SERVICES services × $REPLICAS replicas ($TOTAL containers of $IMAGE, named by $IMAGE_REF), $RUNS runs each"
printf '%-36s %8s   %s\n' "" "median" "runs (s)"
printf '%-36s %7ss   %s\n' "corral up --wait -> converged" "$CM" "${CORRAL_SELF[*]}"
printf '%-36s %7ss   %s\n' "docker stack deploy -> all Running" "$SM" "${SWARM_TIMES[*]}"
printf '%-36s %8s\n' "ratio corral / swarm" "$RATIO"
if [ "$FLOOR" = 1 ]; then
    FM=$(median "${FLOOR_TIMES[@]}")
    printf '%-36s %7ss   %s\n' "floor: Docker API, all at once" "$FM" "${FLOOR_TIMES[*]}"
    printf '%-36s %8s\n' "ratio corral / floor" "$(awk -v c="$CM" -v f="$FM" 'BEGIN { printf "%.2f", c / f }')"
    printf '%-36s %8s\n' "ratio swarm / floor" "$(awk -v s="$SM" -v f="$FM" 'BEGIN { printf "%.2f", s / f }')"
fi
printf '%-36s %7ss   %s\n' "(corral up --wait returned after)" "$(median "${CORRAL_TIMES[@]}")" "${CORRAL_TIMES[*]}"
printf '%-36s %7ss   %s\n' "(docker stack deploy returned after)" "$(median "${SWARM_CMD[@]}")" "${SWARM_CMD[*]}"
if awk -v r="$RATIO" 'BEGIN { exit !(r <= 0.5) }'; then
    echo "target (corral ≤ 0.5 × swarm): met"
else
    echo "target (corral ≤ 0.5 × swarm): NOT met"
fi
