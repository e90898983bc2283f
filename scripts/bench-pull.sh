#!/usr/bin/env bash
# Pull benchmark: one Compose file of SERVICES services × REPLICAS replicas whose images are in a
# private registry (TLS under a throwaway CA, htpasswd basic auth) and on no host, deployed by
# `corral up --wait` and by `docker stack deploy --with-registry-auth` (Docker Swarm) on the same
# lab hosts, for each host count in HOST_COUNTS; the median of RUNS times to convergence of each.
#
#   bash scripts/bench-pull.sh                          # HOST_COUNTS="1 3" RUNS=3
#   HOST_COUNTS=3 RUNS=1 KEEP=1 bash scripts/bench-pull.sh
#   LAYER_KB=4096 bash scripts/bench-pull.sh             # a bigger layer of each service's own
#   FLOOR=0 bash scripts/bench-pull.sh                   # skip the engine's pull floor
#
# Needs root and docker.io, docker-registry, apache2-utils (htpasswd), openssl, curl,
# busybox-static, iproute2, python3; uses ${CORRAL_BIN:-${CARGO_TARGET_DIR:-target}/release/corral}
# and builds it (cargo build --release -p corral) if missing.
#
# The lab, as scripts/lab.sh builds one but on a /24 of 198.19.0.0/16 (half of 198.18.0.0/15,
# reserved for benchmarks; the test kit's labs take 198.18.N, so the two never meet in the root
# namespace's connection tracking), every address inside a network namespace, all namespaces on
# one lab bridge (made by the functions of scripts/bench-lab.sh, which bench-build.sh shares):
#   reg  (.2)   Debian's docker-registry on :5000, TLS (a CA made here with openssl, the server
#               certificate naming the IP) and htpasswd (bcrypt) basic auth, as
#               crates/corral-testkit/src/registry.rs runs it.
#   bld  (.3)   a builder dockerd, started once: the base image (a busybox-static rootfs, tarred
#               and `docker import`ed, as scripts/test-image.sh does), then REG/bench/sK:1 for
#               K = 1..SERVICES, each FROM the base plus a layer of its own (LAYER_KB of random
#               bytes, so no two services share it), pushed with a login of its own and the CA
#               trusted in /etc/docker/certs.d/REG/ only for the push. The builder then stops.
#   srv  (.1)   `corral server` (fresh data dir per host count).
#   hI   (.10+I) a dockerd of its own (`nsenter --net=… dockerd --data-root … --exec-root …
#               --pidfile … -H unix://SOCK --bridge=none --iptables=false --ip-masq=false`) and a
#               corral agent. No image at all on these engines: before every timed run the
#               script removes every image on every host and checks that none is left, so every
#               run pulls every service's image on every host that runs one of its replicas.
#
# corral: `corral registry add REG --username … --password-stdin --ca-file CA` once per lab; the
#   CA is removed from /etc/docker/certs.d before every run (the agents install it from the
#   account, as on a real host). Timed: `corral up -f FILE -p bench --wait`, from its start to the
#   "converged in X s" it prints (every replica running, seen by its 250 ms poll); its wall time
#   (1 s longer: it checks that the stack stays converged) is reported too. Then `corral down`,
#   and the script waits until no host has a container or the network of the stack.
# Swarm: `docker swarm init --advertise-addr <h1's IP>` on h1's engine, the other hosts join as
#   workers (over the lab bridge: 2377/tcp, 7946/tcp+udp, 4789/udp between namespaces); `docker
#   login` with a DOCKER_CONFIG of its own (a temporary directory), the CA trusted in
#   /etc/docker/certs.d/REG/ for the Swarm runs only (the engines have no other way to trust it).
#   Timed: from the start of `docker stack deploy --with-registry-auth -c FILE benchswarm` to the
#   first 250 ms poll of `docker stack ps benchswarm --filter desired-state=running` that shows
#   every task Running (as scripts/bench-deploy.sh measures). Then `docker stack rm`, and the
#   script waits until no host has a container of the stack and its services and network are
#   gone. Swarm runs on the engines as they are started above (--iptables=false --bridge=none):
#   swarm init makes its ingress network and docker_gwbridge itself, and a stack without
#   published ports needs no iptables rule (see BENCHMARKS.md).
# The corral agents and Swarm mode share the engines for the whole host count: the runs
# alternate (corral then Swarm on odd runs, Swarm then corral on even ones), so that a change in
# the load of this shared machine weighs on both alike. Before every timed run, every image is
# removed from every host engine.
#
# The engine's floor (FLOOR=1, the default), after each pair of runs: h1's engine pulls the
# SERVICES images by digest through its API with no orchestrator (one python3 process, every pull
# at once, as corral's agent sends them): once with one pull per image, once with REPLICAS pulls
# per image (one per replica, what both orchestrators ask of an engine that runs every replica).
# Also counted per run: the registry's requests (from its access log: manifest GETs and HEADs,
# blob GETs, all), which shows how often each orchestrator asked it, and the contended manifest
# writes in the host engines' logs ("ref … locked for"), which shows concurrent pulls of one image
# on one engine waiting for each other.
#
# Everything it makes is recorded as it is made and undone in reverse order, on success, on
# failure and on Ctrl-C: processes by their pid (agents, server, registry, dockerds, and the
# containerd of each dockerd if it outlives it), Swarm mode (swarm leave --force on each engine),
# mounts under its work directory, network namespaces, veths, the bridge, the DOCKER-USER rule
# (added when a dockerd runs in the root namespace: its FORWARD DROP and br_netfilter would drop
# frames crossing the lab bridge), /etc/docker/certs.d/REG, the temporary DOCKER_CONFIG and the
# work directory. KEEP=1 keeps the logs (the work directory, without keys or image data).
set -euo pipefail
. "$(dirname "$0")/bench-lab.sh"
cd "$(dirname "$0")/.."
ROOT=$PWD

BENCH=bench-pull
LAB_TAG=cpb
RUNS=${RUNS:-3}
HOST_COUNTS=${HOST_COUNTS:-"1 3"}
SERVICES=${SERVICES:-10}
REPLICAS=${REPLICAS:-5}
LAYER_KB=${LAYER_KB:-1024}
FLOOR=${FLOOR:-1}
TIMEOUT_S=${TIMEOUT_S:-300}
TOTAL=$((SERVICES * REPLICAS))
CORRAL_STACK=bench
SWARM_STACK=benchswarm
REG_USER=bench
CMD_JSON='["sh", "-c", "trap '"'"'exit 0'"'"' TERM; while :; do sleep 1 & wait; done"]'
POLL=0.25

check_root_runs
for n in $HOST_COUNTS; do
    [ "$n" -ge 1 ] 2>/dev/null && [ "$n" -le 20 ] || die "HOST_COUNTS: each count must be 1 to 20 (got $n)"
done
check_tools

lab_work
BASE_STATE=$WORK/state.base # undone last: bridge, registry, CA trust
LAB_STATE=$WORK/state.lab   # undone after each host count: hosts, server, agents, swarm
: >"$BASE_STATE"
UNDO_FILES=("$LAB_STATE" "$BASE_STATE")
KEEP_DROP=("$WORK/build")
lab_traps

# --- the binary -------------------------------------------------------------------------------
lab_bin
"$BIN" registry add --help >/dev/null 2>&1 || die "$BIN has no \`registry add\`: build a current one"

# --- the network, the registry ----------------------------------------------------------------
lab_network "$BASE_STATE"
LOG_TAG= # the host count, in the names of the host engines' logs
start_registry "$BASE_STATE"

# --- the images: built and pushed by a builder engine of their own ----------------------------
add_ns "$BASE_STATE" bld "$PREFIX.3"
start_dockerd "$BASE_STATE" bld
wait_dockerd bld
DOCKER_HOST="unix://$(sock bld)" bash scripts/test-image.sh corral-bench/busybox:base >/dev/null
trust
login bld
DIGESTS=()
for k in $(seq "$SERVICES"); do
    ctx=$WORK/build/s$k
    mkdir -p "$ctx"
    head -c "$((LAYER_KB * 1024))" /dev/urandom >"$ctx/payload"
    printf 'FROM corral-bench/busybox:base\nCOPY payload /payload-s%s\n' "$k" >"$ctx/Dockerfile"
    DOCKER_BUILDKIT=0 dk bld build -q --network none -t "$REG/bench/s$k:1" "$ctx" >>"$WORK/logs/build.log" 2>&1 ||
        die "docker build of bench/s$k failed: $(tail -n 5 "$WORK/logs/build.log")"
    dkc bld push "$REG/bench/s$k:1" >"$WORK/logs/push-s$k.log" 2>&1 ||
        die "docker push of bench/s$k failed: $(tail -n 5 "$WORK/logs/push-s$k.log")"
    DIGESTS+=("$(sed -n 's/.*digest: \(sha256:[0-9a-f]\{64\}\) .*/\1/p' "$WORK/logs/push-s$k.log" | tail -n 1)")
    [ -n "${DIGESTS[-1]}" ] || die "no digest in the output of docker push bench/s$k: $(tail -n 3 "$WORK/logs/push-s$k.log")"
done
untrust
rm -f "$DOCKER_CFG/config.json"
IMAGE_MB=$(dk bld image inspect -f '{{.Size}}' "$REG/bench/s1:1" | awk '{ printf "%.1f", $1 / 1048576 }')
log "pushed $SERVICES images bench/s1:1 … bench/s$SERVICES:1 (each ${IMAGE_MB} MB unpacked: the busybox base and ${LAYER_KB} KiB of its own)"
stop_dockerd bld # it is not needed any more; its record stays for the final undo (a no-op)

FILE=$WORK/compose.yaml
{
    echo "services:"
    for k in $(seq "$SERVICES"); do
        cat <<EOF
  s$k:
    image: $REG/bench/s$k:1
    # Long-lived, and exits at once on SIGTERM (docker stop takes ~0.2 s, not the 10 s grace).
    command: $CMD_JSON
    deploy:
      replicas: $REPLICAS
EOF
    done
} >"$FILE"

# --- per-host helpers -------------------------------------------------------------------------
HOSTS=()
remove_images() { # every image on every host engine; then checks that none is left
    local h
    for h in "${HOSTS[@]}"; do
        dk "$h" images -aq --no-trunc | sort -u | xargs -r docker -H "unix://$(sock "$h")" rmi -f >/dev/null 2>&1 || true
    done
    for h in "${HOSTS[@]}"; do
        local left
        left=$(dk "$h" images -a --format '{{.Repository}}:{{.Tag}} {{.ID}}')
        [ -z "$left" ] || die "host $h still has images after removal: $left"
    done
}
count_running() { # LABEL_FILTER: running containers with that label, on all hosts
    local h n=0
    for h in "${HOSTS[@]}"; do
        n=$((n + $(dk "$h" ps -q --filter "label=$1" --filter status=running | wc -l)))
    done
    echo "$n"
}
per_host() { # LABEL_FILTER: "h1=N h2=M …" running containers per host
    local h out=()
    for h in "${HOSTS[@]}"; do
        out+=("$h=$(dk "$h" ps -q --filter "label=$1" --filter status=running | wc -l)")
    done
    echo "${out[*]}"
}
reg_requests() { # FROM_LINE: "manifest GET/HEAD, blob GET, all" since that line of the access log
    tail -n "+$(($1 + 1))" "$WORK/logs/registry.log" | awk '
        /"GET \/v2\/[^ ]*\/manifests\// { mg++ }
        /"HEAD \/v2\/[^ ]*\/manifests\// { mh++ }
        /"GET \/v2\/[^ ]*\/blobs\// { bg++ }
        /"(GET|HEAD|POST|PUT|PATCH) \/v2\// { all++ }
        END { printf "%d/%d/%d/%d", mg, mh, bg, all }'
}

swarm_leftovers() {
    local h
    dk h1 service ls -q --filter "label=com.docker.stack.namespace=$SWARM_STACK"
    dk h1 network ls -q --filter "label=com.docker.stack.namespace=$SWARM_STACK"
    for h in "${HOSTS[@]}"; do
        dk "$h" ps -aq --filter "label=com.docker.stack.namespace=$SWARM_STACK"
    done
}
swarm_running() {
    dk h1 stack ps "$SWARM_STACK" --filter desired-state=running --format '{{.CurrentState}}' 2>/dev/null |
        grep -c '^Running' || true
}
swarm_ready_nodes() {
    dk h1 node ls --format '{{.Status}} {{.Availability}}' 2>/dev/null | grep -c '^Ready Active$' || true
}

lock_waits() { # SINCE (per-host line counts "h1:N h2:M"): contended manifest writes since then
    local h entry n=0 from
    for entry in $1; do
        h=${entry%%:*} from=${entry#*:}
        n=$((n + $(tail -n "+$((from + 1))" "$(dlog "$h")" | grep -c 'locked for' || true)))
    done
    echo "$n"
}
log_marks() { # "h1:N h2:M …": each host engine's log length now
    local h out=()
    for h in "${HOSTS[@]}"; do out+=("$h:$(wc -l <"$(dlog "$h")")"); done
    echo "${out[*]}"
}

# Results, per host count: space-separated figures, one per run.
declare -A R_CORRAL R_CORRAL_WALL R_SWARM R_SWARM_CMD R_CORRAL_REQ R_SWARM_REQ R_CORRAL_SPREAD R_SWARM_SPREAD R_CORRAL_LOCK R_SWARM_LOCK R_FLOOR1 R_FLOORR

corral_run() { # N RUN: one timed `corral up --wait`, then `corral down`
    local n=$1 run=$2 from marks t0 t1 conv running
    remove_images
    untrust # the agents install the CA from the account, as on a fresh host
    from=$(reg_lines)
    marks=$(log_marks)
    t0=$(now)
    run cli up -f "$FILE" -p "$CORRAL_STACK" --wait --timeout "${TIMEOUT_S}s" \
        >"$WORK/logs/corral-up-$n-$run.out" 2>"$WORK/logs/corral-up-$n-$run.err" ||
        die "corral up failed: $(tail -n 20 "$WORK/logs/corral-up-$n-$run.err")"
    t1=$(now)
    running=$(count_running "io.corral.stack=$CORRAL_STACK")
    [ "$running" = "$TOTAL" ] || die "corral said converged but $running of $TOTAL containers run"
    conv=$(sed -n 's/.* converged in \([0-9.]*\)s .*/\1/p' "$WORK/logs/corral-up-$n-$run.err" | tail -n 1)
    [ -n "$conv" ] || die "no \"converged in\" in corral up's output: $(tail -n 5 "$WORK/logs/corral-up-$n-$run.err")"
    printf 'corral\t%s\t%s\t%s\t%s\n' "$n" "$run" "$t0" "$t1" >>"$WORK/logs/runs.tsv"
    R_CORRAL[$n]+="$conv "
    R_CORRAL_WALL[$n]+="$(elapsed "$t0" "$t1") "
    R_CORRAL_REQ[$n]+="$(reg_requests "$from") "
    R_CORRAL_LOCK[$n]+="$(lock_waits "$marks") "
    R_CORRAL_SPREAD[$n]=$(per_host "io.corral.stack=$CORRAL_STACK")
    log "corral, $n host(s), run $run/$RUNS: converged in $conv s (returned after $(elapsed "$t0" "$t1") s); registry requests manifest GET/HEAD, blob GET, all: $(reg_requests "$from"); manifest lock waits: $(lock_waits "$marks"); ${R_CORRAL_SPREAD[$n]}"
    run cli down -p "$CORRAL_STACK" --timeout "${TIMEOUT_S}s" >"$WORK/logs/corral-down-$n-$run.log" 2>&1 ||
        die "corral down failed: $(tail -n 5 "$WORK/logs/corral-down-$n-$run.log")"
    wait_gone 120 "the containers and network of corral stack $CORRAL_STACK" corral_leftovers "$CORRAL_STACK"
    remove_images
    untrust
}

swarm_run() { # N RUN: one timed `docker stack deploy`, then `docker stack rm`
    local n=$1 run=$2 from marks t0 tc t1 running failed
    remove_images
    trust # the engines trust the registry only through certs.d
    login h1
    from=$(reg_lines)
    marks=$(log_marks)
    t0=$(now)
    run docker --config "$DOCKER_CFG" -H "unix://$(sock h1)" stack deploy --with-registry-auth -c "$FILE" "$SWARM_STACK" \
        >"$WORK/logs/swarm-deploy-$n-$run.log" 2>&1 ||
        die "docker stack deploy failed: $(tail -n 5 "$WORK/logs/swarm-deploy-$n-$run.log")"
    tc=$(now)
    until [ "$(swarm_running)" = "$TOTAL" ]; do
        [ "$(elapsed "$t0" "$(now)" | cut -d. -f1)" -ge "$TIMEOUT_S" ] &&
            die "swarm did not converge within ${TIMEOUT_S}s: $(swarm_running)/$TOTAL running; $(dk h1 stack ps "$SWARM_STACK" --no-trunc --format '{{.Name}} {{.CurrentState}} {{.Error}}' | grep -v Running | head -n 5)"
        sleep "$POLL"
    done
    t1=$(now)
    running=$(count_running "com.docker.stack.namespace=$SWARM_STACK")
    [ "$running" = "$TOTAL" ] || die "swarm reports all tasks running but $running of $TOTAL containers run"
    # Tasks that failed on the way (a failed pull, say) and were replaced by Swarm.
    failed=$(dk h1 stack ps "$SWARM_STACK" --format '{{.DesiredState}}' | grep -vc '^Running' || true)
    printf 'swarm\t%s\t%s\t%s\t%s\n' "$n" "$run" "$t0" "$t1" >>"$WORK/logs/runs.tsv"
    R_SWARM[$n]+="$(elapsed "$t0" "$t1") "
    R_SWARM_CMD[$n]+="$(elapsed "$t0" "$tc") "
    R_SWARM_REQ[$n]+="$(reg_requests "$from") "
    R_SWARM_LOCK[$n]+="$(lock_waits "$marks") "
    R_SWARM_SPREAD[$n]=$(per_host "com.docker.stack.namespace=$SWARM_STACK")
    log "swarm, $n host(s), run $run/$RUNS: all Running after $(elapsed "$t0" "$t1") s (docker stack deploy returned after $(elapsed "$t0" "$tc") s); registry requests manifest GET/HEAD, blob GET, all: $(reg_requests "$from"); manifest lock waits: $(lock_waits "$marks"); ${R_SWARM_SPREAD[$n]}; replaced tasks: $failed"
    run dk h1 stack rm "$SWARM_STACK" >"$WORK/logs/swarm-rm-$n-$run.log" 2>&1 || die "docker stack rm failed"
    wait_gone 180 "swarm stack $SWARM_STACK" swarm_leftovers
    rm -f "$DOCKER_CFG/config.json"
    untrust
    remove_images
}

# The engine's floor: the same pulls without an orchestrator, by one python3 process talking to
# h1's engine API as corral's agent does (POST /images/create?fromImage=REG/bench/sK&tag=DIGEST
# with the account in X-Registry-Auth, the progress stream read to its end), every pull at once:
# PER_IMAGE pulls of each of the SERVICES images. Seconds from the first request to the last
# pull's end.
FLOOR_PY='
import base64, http.client, json, socket, sys, threading, time
sock, reg, user, password, per_image = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
digests = sys.argv[6:]
auth = base64.urlsafe_b64encode(json.dumps({"username": user, "password": password, "serveraddress": reg}).encode()).decode()
class Conn(http.client.HTTPConnection):
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(sock)
errors = []
def pull(k, digest):
    try:
        c = Conn("localhost", timeout=300)
        c.request("POST", f"/v1.41/images/create?fromImage={reg}/bench/s{k}&tag={digest}", None, {"X-Registry-Auth": auth})
        r = c.getresponse()
        body = r.read().decode(errors="replace")
        if r.status >= 300 or "errorDetail" in body:
            errors.append(f"s{k}: {r.status} {body[-300:]}")
    except BaseException as e:
        errors.append(f"s{k}: {e}")
threads = [threading.Thread(target=pull, args=(k + 1, d)) for k, d in enumerate(digests) for _ in range(per_image)]
t0 = time.monotonic()
for t in threads:
    t.start()
for t in threads:
    t.join()
if errors:
    raise SystemExit("floor: " + errors[0])
print(f"{time.monotonic() - t0:.2f}")
'
floor_run() { # N PER_IMAGE
    local n=$1 per=$2 t
    remove_images
    trust # the engine's only way to trust the registry
    t=$(python3 -c "$FLOOR_PY" "$(sock h1)" "$REG" "$REG_USER" "$REG_PASSWORD" "$per" "${DIGESTS[@]}" 2>"$WORK/logs/floor-$n-$per.err") ||
        die "the pull floor failed: $(tail -n 3 "$WORK/logs/floor-$n-$per.err")"
    [ "$(dk h1 images -q | sort -u | wc -l)" = "$SERVICES" ] || die "the pull floor left $(dk h1 images -q | sort -u | wc -l) images on h1, not $SERVICES"
    untrust
    remove_images
    echo "$t"
}

bench_hosts() { # N
    local n=$1 h i
    HOSTS=()
    for i in $(seq "$n"); do HOSTS+=("h$i"); done
    log "=== $n host(s): ${HOSTS[*]}"
    LOG_TAG=$n-
    : >"$LAB_STATE"
    start_hosts "$LAB_STATE"
    for h in "${HOSTS[@]}"; do
        [ -z "$(dk "$h" images -aq)" ] || die "the new engine of $h has images"
    done

    # corral: a fresh server (data in WORK/corral-N), an agent per host, the registry added.
    start_corral "$LAB_STATE" "-$n"

    # Swarm, on the same engines: h1 the manager, the others workers.
    log "swarm: init on h1 ($(host_ip h1)), ${#HOSTS[@]} node(s)"
    dk h1 swarm init --advertise-addr "$(host_ip h1)" >"$WORK/logs/swarm-init-$n.log" 2>&1 ||
        die "docker swarm init failed: $(cat "$WORK/logs/swarm-init-$n.log")"
    local wtoken
    wtoken=$(dk h1 swarm join-token -q worker)
    for h in "${HOSTS[@]:1}"; do
        dk "$h" swarm join --advertise-addr "$(host_ip "$h")" --token "$wtoken" "$(host_ip h1):2377" >>"$WORK/logs/swarm-join-$n.log" 2>&1 ||
            die "docker swarm join of $h failed: $(tail -n 3 "$WORK/logs/swarm-join-$n.log")"
    done
    swarm_nodes_ready() { [ "$(swarm_ready_nodes)" = "$n" ]; }
    wait_for 60 "$n swarm node(s) Ready" swarm_nodes_ready

    # Alternate which goes first, so that a drift in the machine's load (it is shared) weighs on
    # both alike.
    local run
    for run in $(seq "$RUNS"); do
        if [ $((run % 2)) = 1 ]; then
            corral_run "$n" "$run"
            swarm_run "$n" "$run"
        else
            swarm_run "$n" "$run"
            corral_run "$n" "$run"
        fi
        if [ "$FLOOR" = 1 ]; then
            local f1 fr
            f1=$(floor_run "$n" 1)
            fr=$(floor_run "$n" "$REPLICAS")
            R_FLOOR1[$n]+="$f1 "
            R_FLOORR[$n]+="$fr "
            log "floor on h1's engine, run $run/$RUNS: $SERVICES images, 1 pull each: $f1 s; $REPLICAS pulls each at once: $fr s"
        fi
    done
    for h in "${HOSTS[@]}"; do dk "$h" swarm leave --force >/dev/null 2>&1 || true; done
    undo "$LAB_STATE"
}

log "$(lab_versions)"
for n in $HOST_COUNTS; do bench_hosts "$n"; done

# --- results ----------------------------------------------------------------------------------
echo
echo "pull + deploy of $SERVICES services × $REPLICAS replicas ($TOTAL containers), each service its own image"
echo "(REG/bench/sK:1, ${IMAGE_MB} MB unpacked, ${LAYER_KB} KiB of it its own layer) from a TLS + basic-auth registry,"
echo "no image on any host before each run; $RUNS run(s) each; corral = \"converged in\", swarm = all tasks Running"
echo
printf '%-6s %14s %14s %14s\n' hosts "corral median" "swarm median" "swarm/corral"
for n in $HOST_COUNTS; do
    # shellcheck disable=SC2086
    cm=$(median ${R_CORRAL[$n]})
    # shellcheck disable=SC2086
    sm=$(median ${R_SWARM[$n]})
    printf '%-6s %13ss %13ss %14s\n' "$n" "$cm" "$sm" "$(awk -v c="$cm" -v s="$sm" 'BEGIN { printf "%.2f", s / c }')"
done
echo
for n in $HOST_COUNTS; do
    echo "$n host(s):"
    # shellcheck disable=SC2086
    printf '  %-44s %7ss   %s\n' "corral up --wait -> converged" "$(median ${R_CORRAL[$n]})" "${R_CORRAL[$n]}"
    # shellcheck disable=SC2086
    printf '  %-44s %7ss   %s\n' "(corral up --wait returned after)" "$(median ${R_CORRAL_WALL[$n]})" "${R_CORRAL_WALL[$n]}"
    # shellcheck disable=SC2086
    printf '  %-44s %7ss   %s\n' "docker stack deploy -> all Running" "$(median ${R_SWARM[$n]})" "${R_SWARM[$n]}"
    # shellcheck disable=SC2086
    printf '  %-44s %7ss   %s\n' "(docker stack deploy returned after)" "$(median ${R_SWARM_CMD[$n]})" "${R_SWARM_CMD[$n]}"
    printf '  %-44s %s\n' "registry requests, corral (a)" "${R_CORRAL_REQ[$n]}"
    printf '  %-44s %s\n' "registry requests, swarm (a)" "${R_SWARM_REQ[$n]}"
    printf '  %-44s %s\n' "manifest lock waits in dockerd, corral (b)" "${R_CORRAL_LOCK[$n]}"
    printf '  %-44s %s\n' "manifest lock waits in dockerd, swarm (b)" "${R_SWARM_LOCK[$n]}"
    if [ "$FLOOR" = 1 ]; then
        # shellcheck disable=SC2086
        printf '  %-44s %7ss   %s\n' "floor: h1 pulls $SERVICES images, 1 pull each" "$(median ${R_FLOOR1[$n]})" "${R_FLOOR1[$n]}"
        # shellcheck disable=SC2086
        printf '  %-44s %7ss   %s\n' "floor: h1 pulls them, $REPLICAS pulls each at once" "$(median ${R_FLOORR[$n]})" "${R_FLOORR[$n]}"
    fi
    printf '  %-44s %s\n' "replicas per host: corral" "${R_CORRAL_SPREAD[$n]}"
    printf '  %-44s %s\n' "replicas per host: swarm" "${R_SWARM_SPREAD[$n]}"
done
echo
echo "(a) per run: manifest GET / manifest HEAD / blob GET / all requests to /v2/, from the registry's access log"
echo "(b) per run: \"ref … locked for\" lines in the host engines' logs: a pull waiting for another pull of the"
echo "    same image on the same engine to release its manifest in containerd's content store"
