#!/usr/bin/env bash
# Build benchmark: `corral up --wait` of a stack with two built services (`build:`), REPLICAS
# replicas each kept apart (one per host), on HOSTS lab hosts with a private build registry
# (TLS under a throwaway CA, htpasswd basic auth); RUNS times each of three cases:
#
#   cold       nothing built anywhere: a fresh registry (empty storage), no built image on any
#              host engine, and contexts whose content is new (fresh random data, a run counter),
#              so their recipe keys are new too. `up` sends both contexts, one host builds each
#              service and pushes it, every other host pulls it, every replica starts.
#   unchanged  `up` again with nothing changed, the stack running: both contexts are already on
#              the server, both recipes are found in the registry; nothing is built, nothing
#              rolls (the script checks that the output says "build context unchanged" for both,
#              that no context is sent and that no container was replaced).
#   changed    one byte appended to one file of api's context: `up` sends that context, one host
#              builds api (its engine has the previous image: the layers before the changed file
#              come from its build cache), pushes it, the other hosts pull it, api rolls; worker
#              is found unchanged and its containers stay (checked).
#
# There is no peer to compare with: Docker Swarm cannot build (`docker stack deploy` ignores
# `build:`). As a reference the script measures the **floor** instead (FLOOR=1, the default):
# the same two contexts (content of their own) built by hand with `docker build` (classic
# builder) and `docker push` on h1's engine, one after the other as corral does, then pulled by
# the other hosts' engines at once; and the same for the changed api context. No containers are
# made in the floor.
#
#   CARGO_TARGET_DIR=/var/tmp/corral-release bash scripts/bench-build.sh      # HOSTS=3 RUNS=3
#   RUNS=1 KEEP=1 bash scripts/bench-build.sh
#   DATA_KB=8192 FLOOR=0 bash scripts/bench-build.sh   # bigger files in each context
#
# Needs root and docker.io, docker-registry, apache2-utils (htpasswd), openssl, curl,
# busybox-static, iproute2, python3; uses ${CORRAL_BIN:-${CARGO_TARGET_DIR:-target}/release/corral}
# and builds it (cargo build --release -p corral) if missing.
#
# The lab is scripts/bench-pull.sh's (both make it with the functions of scripts/bench-lab.sh): a
# /24 of 198.19.0.0/16 chosen at random and checked free, every address inside a network
# namespace, all namespaces on one lab bridge:
#   reg  (.2)   Debian's docker-registry on :5000, TLS (a CA made here with openssl) and htpasswd
#               (bcrypt) basic auth. Restarted on an empty storage directory before every cold run.
#   srv  (.1)   `corral server`; `corral registry add REG --username … --password-stdin --ca-file
#               CA --builds` makes the registry the environment's build registry.
#   hI   (.10+I) a dockerd of its own (`--bridge=none --iptables=false --ip-masq=false`, so builds
#               run with network none, as the agent then asks) and a corral agent. Each engine
#               gets the base image the Dockerfiles build FROM, corral-test/busybox:latest (a
#               busybox-static rootfs `docker import`ed as scripts/test-image.sh does; one tar made
#               once and imported into every engine, so the base layer is the same everywhere and
#               a pull finds it present, as with a base image pulled from a registry).
#
# The project (WORK/project): services api and worker, `build: ./api` and `build: ./worker`,
# `deploy.replicas: REPLICAS` (default HOSTS) and `x-corral: { anti_affinity: [SERVICE] }`, so each
# host runs one replica of each. Each context: a Dockerfile (FROM corral-test/busybox:latest; COPY
# data/a.bin; COPY data/b.bin; COPY version.txt; RUN cat /data/* | md5sum > /sum; CMD a loop that
# exits at once on SIGTERM), two files of DATA_KB KiB of random bytes, version.txt, and a
# build.log that .dockerignore leaves out.
#
# Before the runs, h1 pushes the base image once and the other engines pull it (the copies then
# go): so every engine knows the base layer by its registry digest, as if the base had been
# pulled from a registry, and no pull downloads it again (otherwise the first run's pulls would
# fetch it and the later ones would not).
#
# Timed: `corral up -f FILE -p bench --wait`, from its start to the "converged in X s" it prints
# (every replica of the current recipe running, the old ones gone, seen by its 250 ms poll); its
# wall time (1 s longer: it checks that the stack stays converged), and when its POST /v1/stacks
# answered (the line "stack bench created|updated", time-stamped as it is printed): by then the
# contexts were sent, the registry asked and every build pushed; what follows is pulls and
# containers. Also counted per case: the registry's requests (blob uploads, blob GETs, manifest
# PUTs, manifest GETs and HEADs, all) from its access log. After the three cases, `corral down`,
# and the script waits until no host has a container or the network of the stack, then removes
# every image but the base from every host engine (and checks it). From the agents' logs: the
# time of each build and push on the building host ("building" to "built and pushed"), and of
# each pull on the other hosts ("pulling" to "pulled").
#
# Everything it makes is recorded as it is made and undone in reverse order, on success, on
# failure and on Ctrl-C: processes by their pid (agents, server, registry, dockerds, and the
# containerd of each dockerd if it outlives it), mounts under its work directory, network
# namespaces, veths, the bridge, the DOCKER-USER rule (added when a dockerd runs in the root
# namespace: its FORWARD DROP and br_netfilter would drop frames crossing the lab bridge),
# /etc/docker/certs.d/REG, the temporary DOCKER_CONFIG and the work directory. KEEP=1 keeps the
# logs (the work directory, without keys, image data or the contexts' random data).
set -euo pipefail
. "$(dirname "$0")/bench-lab.sh"
cd "$(dirname "$0")/.."
ROOT=$PWD

BENCH=bench-build
LAB_TAG=cbb
RUNS=${RUNS:-3}
HOSTS_N=${HOSTS:-3}
REPLICAS=${REPLICAS:-$HOSTS_N}
DATA_KB=${DATA_KB:-1024}
FLOOR=${FLOOR:-1}
TIMEOUT_S=${TIMEOUT_S:-300}
STACK=bench
SERVICES=(api worker)
TOTAL=$((${#SERVICES[@]} * REPLICAS))
REG_USER=bench
POLL=0.25

check_root_runs
[ "$HOSTS_N" -ge 1 ] 2>/dev/null && [ "$HOSTS_N" -le 20 ] || die "HOSTS must be 1 to 20 (got $HOSTS_N)"
[ "$REPLICAS" -ge 1 ] 2>/dev/null && [ "$REPLICAS" -le "$HOSTS_N" ] ||
    die "REPLICAS must be 1 to HOSTS ($HOSTS_N): the replicas of a service are kept apart (got $REPLICAS)"
[ "$DATA_KB" -ge 1 ] 2>/dev/null || die "DATA_KB must be a positive integer"
check_tools

lab_work
STATE=$WORK/state
: >"$STATE"
UNDO_FILES=("$STATE")
KEEP_DROP=("$WORK/base.tar" "$WORK/project/api/data" "$WORK/project/worker/data" "$WORK/floor")
lab_traps

# --- the binary -------------------------------------------------------------------------------
lab_bin
[[ "$("$BIN" registry add --help 2>/dev/null)" == *--builds* ]] || die "$BIN has no \`registry add --builds\`: build a current one"

# --- the network, the registry ----------------------------------------------------------------
lab_network "$STATE"
start_registry "$STATE"
reg_requests() { # FROM_LINE: "blob uploads/blob GETs/manifest PUTs/manifest GETs+HEADs/all" since then
    tail -n "+$(($1 + 1))" "$WORK/logs/registry.log" | awk '
        /"PUT \/v2\/[^ ]*\/blobs\/uploads\// { up++ }
        /"GET \/v2\/[^ ]*\/blobs\// { bg++ }
        /"PUT \/v2\/[^ ]*\/manifests\// { mp++ }
        /"(GET|HEAD) \/v2\/[^ ]*\/manifests\// { mr++ }
        /"(GET|HEAD|POST|PUT|PATCH|DELETE) \/v2\// { all++ }
        END { printf "%d/%d/%d/%d/%d", up, bg, mp, mr, all }'
}

# --- the hosts, each with the base image ------------------------------------------------------
HOSTS=()
for i in $(seq "$HOSTS_N"); do HOSTS+=("h$i"); done
start_hosts "$STATE"

# The base image, as scripts/test-image.sh makes it, but from one tar (fixed mtimes and owners)
# imported into every engine: one layer, the same diff ID on every host.
BASE=corral-test/busybox:latest
rootfs=$WORK/rootfs
mkdir -p "$rootfs/bin" "$rootfs/tmp" "$rootfs/www"
cp "$(readlink -f "$(command -v busybox)")" "$rootfs/bin/busybox"
for applet in $("$rootfs/bin/busybox" --list); do
    [ "$applet" = busybox ] || ln -s busybox "$rootfs/bin/$applet"
done
echo "hello from corral" >"$rootfs/www/index.html"
tar -C "$rootfs" --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -cf "$WORK/base.tar" .
rm -rf "$rootfs"
for h in "${HOSTS[@]}"; do
    dk "$h" import -c 'ENV PATH=/bin' -c 'CMD ["sh"]' "$WORK/base.tar" "$BASE" >/dev/null ||
        die "docker import of the base image into $h failed"
done
BASE_LAYER=$(dk h1 image inspect -f '{{index .RootFS.Layers 0}}' "$BASE")
for h in "${HOSTS[@]}"; do
    [ "$(dk "$h" image inspect -f '{{index .RootFS.Layers 0}}' "$BASE")" = "$BASE_LAYER" ] ||
        die "the base image's layer differs on $h"
done
BASE_MB=$(dk h1 image inspect -f '{{.Size}}' "$BASE" | awk '{ printf "%.1f", $1 / 1048576 }')

# --- corral: a server, an agent per host, the build registry ----------------------------------
start_corral "$STATE" "" --builds

# The engines know the base layer by its registry digest, as they would had they pulled the base
# image from a registry: h1 pushes it once and the others pull it (then the copies go). Without
# this, an engine that imported the base would download its layer again the first time it pulls
# an image built on it (it cannot tell that the layer it has is the one the registry names),
# and only the first run would pay for that.
trust
login h1
dk h1 tag "$BASE" "$REG/base/busybox:latest"
dkc h1 push "$REG/base/busybox:latest" >"$WORK/logs/base-push.log" 2>&1 ||
    die "docker push of the base image failed: $(tail -n 5 "$WORK/logs/base-push.log")"
for h in "${HOSTS[@]:1}"; do
    dkc "$h" pull -q "$REG/base/busybox:latest" >>"$WORK/logs/base-pull.log" 2>&1 ||
        die "docker pull of the base image on $h failed: $(tail -n 5 "$WORK/logs/base-pull.log")"
done
for h in "${HOSTS[@]}"; do dk "$h" rmi "$REG/base/busybox:latest" >/dev/null; done
rm -f "$DOCKER_CFG/config.json"
untrust

# --- the project ------------------------------------------------------------------------------
PROJECT=$WORK/project
mkdir -p "$PROJECT"
FILE=$PROJECT/compose.yaml
make_context() { # DIR VERSION: a context with fresh random data (so no layer of it exists anywhere)
    local dir=$1 version=$2
    mkdir -p "$dir/data"
    head -c "$((DATA_KB * 1024))" /dev/urandom >"$dir/data/a.bin"
    head -c "$((DATA_KB * 1024))" /dev/urandom >"$dir/data/b.bin"
    printf '%s\n' "$version" >"$dir/version.txt"
    printf 'a build log the image must not get\n' >"$dir/build.log"
    printf '*.log\n' >"$dir/.dockerignore"
    cat >"$dir/Dockerfile" <<'EOF'
FROM corral-test/busybox:latest
COPY data/a.bin /data/a.bin
COPY data/b.bin /data/b.bin
COPY version.txt /version.txt
RUN cat /data/* | md5sum > /sum
CMD ["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1 & wait; done"]
EOF
}
{
    echo "services:"
    for s in "${SERVICES[@]}"; do
        cat <<EOF
  $s:
    build: ./$s
    deploy:
      replicas: $REPLICAS
    x-corral: { anti_affinity: [$s] }
EOF
    done
} >"$FILE"

# --- helpers ----------------------------------------------------------------------------------
BASE_IDS=()
for h in "${HOSTS[@]}"; do BASE_IDS+=("$h=$(dk "$h" image inspect -f '{{.Id}}' "$BASE")"); done
base_id() { local e; for e in "${BASE_IDS[@]}"; do [ "${e%%=*}" = "$1" ] && echo "${e#*=}"; done; }
remove_built_images() { # every image but the base on every host engine; then checks that none is left
    local h pass left
    for h in "${HOSTS[@]}"; do
        for pass in 1 2 3; do
            left=$(dk "$h" images -aq --no-trunc | sort -u | grep -vxF "$(base_id "$h")" || true)
            [ -n "$left" ] || break
            # shellcheck disable=SC2086
            dk "$h" rmi -f $left >/dev/null 2>&1 || true
        done
        left=$(dk "$h" images -a --format '{{.Repository}}:{{.Tag}} {{.ID}}' | grep -vF "$BASE " || true)
        [ -z "$left" ] || die "host $h still has images besides the base after removal: $left"
        dk "$h" image inspect "$BASE" >/dev/null 2>&1 || die "host $h lost the base image"
    done
}
containers_of() { # SERVICE: "host:id image" of its running containers, sorted
    local h
    for h in "${HOSTS[@]}"; do
        dk "$h" ps --no-trunc --filter "label=io.corral.stack=$STACK" --filter "label=io.corral.service=$1" \
            --filter status=running --format "$h:{{.ID}} {{.Image}}"
    done | sort
}
check_running() { # PHASE: every replica runs, one per host, all of a service on one built digest
    local s h list n images
    for s in "${SERVICES[@]}"; do
        list=$(containers_of "$s")
        n=$(grep -c . <<<"$list" || true)
        [ "$n" = "$REPLICAS" ] || die "$1: $n replicas of $s run, not $REPLICAS: $list"
        for h in "${HOSTS[@]}"; do
            [ "$(grep -c "^$h:" <<<"$list" || true)" -le 1 ] || die "$1: two replicas of $s on $h: $list"
        done
        images=$(awk '{ print $2 }' <<<"$list" | sort -u)
        [ "$(grep -c . <<<"$images")" = 1 ] || die "$1: the replicas of $s run different images: $images"
        case "$images" in
            "$REG/corral-builds/$STACK-$s@sha256:"*) ;;
            *) die "$1: $s runs $images, not a digest of $REG/corral-builds/$STACK-$s" ;;
        esac
    done
}
api_b_size() { # the size of /data/b.bin in every api replica, one line each
    local c
    containers_of api | while read -r c _; do
        dk "${c%%:*}" exec "${c#*:}" stat -c %s /data/b.bin
    done | sort -u
}

container_times() { # T0 SERVICE…: "FIRST_CREATED LAST_STARTED", seconds after T0, of the running
    # containers of those services (docker inspect: Created, State.StartedAt)
    local t0=$1 svc c created started
    shift
    for svc in "$@"; do
        containers_of "$svc" | while read -r c _; do
            dk "${c%%:*}" inspect -f '{{.Created}} {{.State.StartedAt}}' "${c#*:}"
        done
    done | while read -r created started; do
        printf '%s %s\n' "$(date -d "$created" +%s.%N)" "$(date -d "$started" +%s.%N)"
    done | awk -v t0="$t0" '
        NR == 1 || $1 < c { c = $1 }
        NR == 1 || $2 > s { s = $2 }
        END { printf "%.2f %.2f", c - t0, s - t0 }'
}

stamp() { # each line of standard input, prefixed with the time it was read
    local l
    while IFS= read -r l; do printf '%s %s\n' "$EPOCHREALTIME" "$l"; done
}
up_stamped() { # OUT ERR: corral up --wait; its stderr (progress) time-stamped line by line
    cli up -f "$FILE" -p "$STACK" --wait --timeout "${TIMEOUT_S}s" 2>&1 >"$1" | stamp >"$2"
}

agent_marks() { # "h1:N h2:M …": each agent log's length now
    local h out=()
    for h in "${HOSTS[@]}"; do out+=("$h:$(wc -l <"$WORK/logs/agent-$h.log")"); done
    echo "${out[*]}"
}
agent_since() { # MARKS: the agents' lines since then, each prefixed with its host
    local e
    for e in $1; do
        tail -n "+$((${e#*:} + 1))" "$WORK/logs/agent-${e%%:*}.log" | sed "s/^/${e%%:*} /"
    done
}
# From the agents' lines of one case: "BUILD PULL_EACH PULL_SPAN", seconds: the builds' time (from
# "building" to "built and pushed", summed over the builds), the mean time of one pull (from
# "pulling" to "pulled" of one image on one host) and the span of all pulls (first "pulling" to
# last "pulled", any host); "-" for what did not happen.
agent_times() { # MARKS
    agent_since "$1" | awk '
        function t(ts,  a) { split(substr(ts, 12), a, ":"); sub(/Z$/, "", a[3]); return a[1] * 3600 + a[2] * 60 + a[3] }
        function arg(k,  m) { return match($0, k "=[^ ]*") ? substr($0, RSTART, RLENGTH) : "" }
        / corral_agent::builds: building tag=/ { b0[$1 arg("tag")] = t($2) }
        / corral_agent::builds: built and pushed tag=/ { k = $1 arg("tag"); if (k in b0) { bs += t($2) - b0[k]; nb++ } }
        / corral_agent::images: pulling image=/ { k = $1 arg("image"); p0[k] = t($2); if (!first || t($2) < first) first = t($2) }
        / corral_agent::images: pulled image=/ { k = $1 arg("image"); if (k in p0) { ps += t($2) - p0[k]; np++ }; if (t($2) > last) last = t($2) }
        END {
            printf "%s %s %s", nb ? sprintf("%.2f", bs) : "-", np ? sprintf("%.2f", ps / np) : "-", np ? sprintf("%.2f", last - first) : "-"
        }'
}

# Results: space-separated figures, one per run.
declare -A R_CONV R_WALL R_POST R_REQ R_BUILT R_BUILD R_PULL1 R_PULLS R_CREATED R_STARTED
CASES=(cold unchanged changed)

corral_case() { # CASE RUN: one timed `corral up --wait`, with the checks of its case
    local c=$1 r=$2 out err from marks t0 t1 conv post built said s times
    out=$WORK/logs/up-$r-$c.out err=$WORK/logs/up-$r-$c.err
    from=$(reg_lines)
    marks=$(agent_marks)
    t0=$(now)
    run up_stamped "$out" "$err" || die "corral up ($c, run $r) failed: $(tail -n 20 "$err")"
    t1=$(now)
    said=$(cut -d' ' -f2- "$err")
    conv=$(sed -n 's/.* converged in \([0-9.]*\)s .*/\1/p' <<<"$said" | tail -n 1)
    [ -n "$conv" ] || die "no \"converged in\" in corral up's output: $(tail -n 5 "$err")"
    post=$(awk -v s="$STACK" '$2 == "stack" && $3 == s && ($4 == "created" || $4 == "updated") { print $1; exit }' "$err")
    [ -n "$post" ] || die "no \"stack $STACK created|updated\" in corral up's output: $(tail -n 5 "$err")"
    check_running "$c, run $r"
    local sent
    sent=$(grep -c '^sending build context' <<<"$said" || true)
    case "$c" in
        cold)
            for s in "${SERVICES[@]}"; do
                grep -q "^image service $s: built on host" <<<"$said" || die "cold run $r: $s was not built: $said"
            done
            [ "$sent" = 2 ] || die "cold run $r: $sent contexts sent, not 2"
            ;;
        unchanged)
            for s in "${SERVICES[@]}"; do
                grep -q "^image service $s: build context unchanged" <<<"$said" ||
                    die "unchanged run $r: no \"build context unchanged\" for $s: $said"
            done
            ! grep -q 'rolling update' <<<"$said" || die "unchanged run $r: something rolled: $said"
            [ "$sent" = 0 ] || die "unchanged run $r: $sent contexts sent, not 0"
            for s in "${SERVICES[@]}"; do
                [ "$(containers_of "$s")" = "${BEFORE[$s]}" ] || die "unchanged run $r: containers of $s were replaced"
            done
            ;;
        changed)
            grep -q "^image service api: built on host" <<<"$said" || die "changed run $r: api was not built: $said"
            grep -q "^image service worker: build context unchanged" <<<"$said" || die "changed run $r: worker was not found unchanged: $said"
            grep -q "(rolling update of api)" <<<"$said" || die "changed run $r: api did not roll: $said"
            [ "$sent" = 1 ] || die "changed run $r: $sent contexts sent, not 1"
            [ "$(containers_of worker)" = "${BEFORE[worker]}" ] || die "changed run $r: worker's containers were replaced"
            [ "$(api_b_size)" = "$((DATA_KB * 1024 + 1))" ] || die "changed run $r: api's replicas do not all have the changed file: $(api_b_size | tr '\n' ' ')"
            ;;
    esac
    built=$(sed -n 's/^image service \([^:]*\): built on host \([^ ]*\) .*/\1@\2/p' <<<"$said" | tr '\n' ',' | sed 's/,$//')
    R_CONV[$c]+="$conv "
    R_WALL[$c]+="$(elapsed "$t0" "$t1") "
    R_POST[$c]+="$(elapsed "$t0" "$post") "
    R_REQ[$c]+="$(reg_requests "$from") "
    R_BUILT[$c]+="${built:--} "
    local ct=(- -)
    case "$c" in
        cold) read -r -a ct <<<"$(container_times "$t0" "${SERVICES[@]}")" ;;
        changed) read -r -a ct <<<"$(container_times "$t0" api)" ;;
    esac
    R_CREATED[$c]+="${ct[0]} "
    R_STARTED[$c]+="${ct[1]} "
    read -r -a times <<<"$(agent_times "$marks")"
    R_BUILD[$c]+="${times[0]} "
    R_PULL1[$c]+="${times[1]} "
    R_PULLS[$c]+="${times[2]} "
    log "$c, run $r/$RUNS: converged in $conv s (POST answered after $(elapsed "$t0" "$post") s, returned after $(elapsed "$t0" "$t1") s); built: ${built:-nothing}; agents: builds ${times[0]} s, one pull ${times[1]} s, all pulls within ${times[2]} s; new containers: first created at ${ct[0]} s, last started at ${ct[1]} s; registry blob uploads/blob GETs/manifest PUTs/manifest GETs+HEADs/all: $(reg_requests "$from")"
}

declare -A BEFORE
corral_run() { # RUN: cold, unchanged, changed; then down and clean engines
    local r=$1 s
    remove_built_images
    fresh_registry
    untrust # the agents install the CA from the account, as on a fresh host
    for s in "${SERVICES[@]}"; do make_context "$PROJECT/$s" "$s run $r"; done
    corral_case cold "$r"
    for s in "${SERVICES[@]}"; do BEFORE[$s]=$(containers_of "$s"); done
    corral_case unchanged "$r"
    printf 'x' >>"$PROJECT/api/data/b.bin"
    corral_case changed "$r"
    run cli down -p "$STACK" --timeout "${TIMEOUT_S}s" >"$WORK/logs/down-$r.log" 2>&1 ||
        die "corral down failed: $(tail -n 5 "$WORK/logs/down-$r.log")"
    wait_gone 120 "the containers and network of corral stack $STACK" corral_leftovers "$STACK"
    remove_built_images
}

# The floor: the same work by hand on the engines, no orchestrator, no containers.
declare -A F
floor_pulls() { # TAG SERVICE…: every host but h1 pulls REG/floor/SERVICE:TAG, all at once
    local tag=$1 h s pid rc=0
    shift
    local pids=()
    for h in "${HOSTS[@]:1}"; do
        for s in "$@"; do
            docker --config "$DOCKER_CFG" -H "unix://$(sock "$h")" pull -q "$REG/floor/$s:$tag" >>"$WORK/logs/floor-pull.log" 2>&1 &
            pids+=("$!")
        done
    done
    for pid in "${pids[@]}"; do wait "$pid" || rc=1; done
    [ "$rc" = 0 ] || die "a floor pull failed: $(tail -n 5 "$WORK/logs/floor-pull.log")"
}
floor_build_push() { # TAG SERVICE…: build and push each on h1, one after the other
    local tag=$1 s
    shift
    for s in "$@"; do
        DOCKER_BUILDKIT=0 dk h1 build -q --network none -t "$REG/floor/$s:$tag" "$WORK/floor/$s" >>"$WORK/logs/floor-build.log" 2>&1 ||
            die "floor: docker build of $s failed: $(tail -n 5 "$WORK/logs/floor-build.log")"
        dkc h1 push "$REG/floor/$s:$tag" >>"$WORK/logs/floor-push.log" 2>&1 ||
            die "floor: docker push of $s failed: $(tail -n 5 "$WORK/logs/floor-push.log")"
    done
}
floor_run() { # RUN
    local r=$1 s t0 t1 t2 t3 t4 t5
    remove_built_images
    fresh_registry
    trust # the engines' only way to trust the registry
    login h1
    for s in "${SERVICES[@]}"; do make_context "$WORK/floor/$s" "$s floor $r"; done
    t0=$(now)
    floor_build_push "r$r" "${SERVICES[@]}"
    t1=$(now)
    floor_pulls "r$r" "${SERVICES[@]}"
    t2=$(now)
    printf 'x' >>"$WORK/floor/api/data/b.bin"
    t3=$(now)
    floor_build_push "r$r-changed" api
    t4=$(now)
    floor_pulls "r$r-changed" api
    t5=$(now)
    F[cold_bp]+="$(elapsed "$t0" "$t1") "
    F[cold_pull]+="$(elapsed "$t1" "$t2") "
    F[cold_total]+="$(elapsed "$t0" "$t2") "
    F[changed_bp]+="$(elapsed "$t3" "$t4") "
    F[changed_pull]+="$(elapsed "$t4" "$t5") "
    F[changed_total]+="$(elapsed "$t3" "$t5") "
    log "floor, run $r/$RUNS: both built and pushed on h1 in $(elapsed "$t0" "$t1") s, pulled by the other hosts in $(elapsed "$t1" "$t2") s; api changed: built and pushed in $(elapsed "$t3" "$t4") s, pulled in $(elapsed "$t4" "$t5") s"
    rm -f "$DOCKER_CFG/config.json"
    untrust
    remove_built_images
}

log "$(lab_versions), hosts ${HOSTS[*]}"
for r in $(seq "$RUNS"); do
    corral_run "$r"
    if [ "$FLOOR" = 1 ]; then floor_run "$r"; fi
done

# --- results ----------------------------------------------------------------------------------
CTX_MB=$(awk -v k="$DATA_KB" 'BEGIN { printf "%.1f", 2 * k / 1024 }')
echo
echo "corral up --wait of 2 built services × $REPLICAS replicas ($TOTAL containers, one replica of each per host) on ${#HOSTS[@]} host(s);"
echo "each context ${CTX_MB} MiB of random data (2 files) + version file, FROM the ${BASE_MB} MB busybox base on every host;"
echo "build registry with TLS + basic auth; $RUNS run(s) each; \"converged in\" as corral prints it"
echo
row() { # LABEL FIGURES…
    local label=$1
    shift
    if [[ " $* " == *" - "* ]]; then
        printf '  %-58s %8s   %s\n' "$label" "-" "$*"
    else
        # shellcheck disable=SC2068
        printf '  %-58s %7ss   %s\n' "$label" "$(median $@)" "$*"
    fi
}
# shellcheck disable=SC2086
{
    echo "cold (fresh registry, no built image on any host, new contexts):"
    row "corral up --wait -> converged" ${R_CONV[cold]}
    row "(POST /v1/stacks answered: contexts sent, both built+pushed)" ${R_POST[cold]}
    row "(of which builds + pushes on the host, agent log)" ${R_BUILD[cold]}
    row "(then a pull on another host, mean, agent log)" ${R_PULL1[cold]}
    row "(all pulls, first start to last end, agent log)" ${R_PULLS[cold]}
    row "(new containers: first created, docker inspect)" ${R_CREATED[cold]}
    row "(new containers: last started, docker inspect)" ${R_STARTED[cold]}
    row "(corral up --wait returned after)" ${R_WALL[cold]}
    echo "warm, nothing changed:"
    row "corral up --wait -> converged" ${R_CONV[unchanged]}
    row "(POST /v1/stacks answered)" ${R_POST[unchanged]}
    row "(corral up --wait returned after)" ${R_WALL[unchanged]}
    echo "warm, one byte appended to one file of api's context:"
    row "corral up --wait -> converged" ${R_CONV[changed]}
    row "(POST /v1/stacks answered: context sent, api built+pushed)" ${R_POST[changed]}
    row "(of which the build + push on the host, agent log)" ${R_BUILD[changed]}
    row "(then a pull on another host, mean, agent log)" ${R_PULL1[changed]}
    row "(all pulls, first start to last end, agent log)" ${R_PULLS[changed]}
    row "(new containers: first created, docker inspect)" ${R_CREATED[changed]}
    row "(new containers: last started, docker inspect)" ${R_STARTED[changed]}
    row "(corral up --wait returned after)" ${R_WALL[changed]}
    if [ "$FLOOR" = 1 ]; then
        echo "floor, by hand on the engines (no orchestrator, no containers):"
        row "cold: docker build + push of both on h1" ${F[cold_bp]}
        row "cold: then docker pull of both on the other hosts at once" ${F[cold_pull]}
        row "cold: total" ${F[cold_total]}
        row "api changed: docker build + push on h1 (cache warm)" ${F[changed_bp]}
        row "api changed: then docker pull on the other hosts at once" ${F[changed_pull]}
        row "api changed: total" ${F[changed_total]}
    fi
}
echo
for c in "${CASES[@]}"; do
    printf '  %-10s built (service@host): %s\n' "$c" "${R_BUILT[$c]}"
    printf '  %-10s registry requests (a): %s\n' "$c" "${R_REQ[$c]}"
done
echo
echo "(a) per run: blob uploads / blob GETs / manifest PUTs / manifest GETs+HEADs / all requests to /v2/,"
echo "    from the registry's access log"
