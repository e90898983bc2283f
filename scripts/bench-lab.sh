# shellcheck shell=bash
# The benchmark lab shared by scripts/bench-pull.sh and scripts/bench-build.sh, sourced by both
# (`. "$(dirname "$0")/bench-lab.sh"`, after `set -euo pipefail`). Sourcing it only defines
# functions: nothing runs, nothing is set, until the script calls them.
#
# What it provides:
#   messages and timing  log, die, now, elapsed, median
#   checks               check_root_runs (root, RUNS), check_tools (the packages the lab needs)
#   waiting              run (a command in the background, so that a signal is handled at once),
#                        wait_for, wait_gone
#   the work directory   lab_work (WORK, ID, CHILD, DOCKERD_PID), lab_traps (cleanup on EXIT,
#                        exit 130 on INT, 143 on TERM), record, undo, cleanup
#   the binary           lab_bin (BIN: CORRAL_BIN, or CARGO_TARGET_DIR's release build, built if
#                        missing), lab_versions (the versions line the scripts log first)
#   the network          lab_network (a free /24 of 198.19.0.0/16, the bridge, the DOCKER-USER
#                        rule), add_ns, ns_of, host_ip
#   engines              start_dockerd, wait_dockerd, start_hosts, stop_dockerd, dk, dkc, sock,
#                        dlog, ours, stop_pid
#   the registry         start_registry (TLS under a throwaway CA, htpasswd, its namespace, the
#                        temporary DOCKER_CONFIG), fresh_registry, reg_status, reg_lines, trust,
#                        untrust, login
#   corral               start_corral (server with SERVER_ARGS, an agent per host in AGENT_PID,
#                        the registry added when there is one), cli,
#                        hosts_available, corral_leftovers
#
# Conventions:
# - The script sets, before calling anything here: BENCH (its name, e.g. bench-pull: in die's
#   messages, the temporary directories' names, the CA's name, the registry's secret), LAB_TAG
#   (three letters that start the names of its namespaces, veths and bridge: cpb, cbb), POLL
#   (seconds between two polls), RUNS, REG_USER, ROOT (the checkout, also the current
#   directory); HOSTS (h1 h2 …) before start_hosts, start_corral and hosts_available; LOG_TAG
#   (optional) goes into the host engines' log names.
# - Everything the lab makes is recorded, as it is made, as a line "KIND ARG" in a state file
#   (record FILE "KIND ARG"; kinds: pid, dockerd, netns, link, iptables, certsd, dir) and undone
#   newest first (undo FILE). Functions that make something take the state file as their first
#   argument. cleanup (on exit, Ctrl-C included) stops the running CHILD, undoes the files of the
#   UNDO_FILES array in its order, then removes WORK, or with KEEP=1 keeps it without the
#   registry's keys and storage and the paths of the KEEP_DROP array.
# - A process counts as the script's own (ours, stop_pid) only while its command line names WORK.
# - Names (ID: 4 hex digits per run): namespaces ${LAB_TAG}-${ID}-NAME, the bridge
#   ${LAB_TAG}${ID}b, veths ${LAB_TAG}${ID}NAME (…p inside the namespace, renamed eth0); addresses
#   PREFIX.1 srv (corral server), .2 reg, .3 a builder, .10+I host hI. Engines live under
#   WORK/docker/HOST, logs under WORK/logs.
# - Globals it sets: WORK ID CHILD DOCKERD_PID AGENT_PID UNDO_FILES KEEP_DROP (lab_work), BIN (lab_bin),
#   PREFIX BRIDGE (lab_network), REG_IP REG CERTS_D TLS REG_PASSWORD REG_PID REG_STATE DOCKER_CFG
#   (start_registry), SRV_DIR (start_corral).
# - The registry answers on REG (REG_IP:5000), its CA in TLS/ca.crt; the engines trust it only
#   while the CA is in CERTS_D (trust, untrust); `docker login` goes to DOCKER_CFG, never the
#   machine's own configuration, and dk/dkc never talk to the machine's own engine.

# --- messages and timing ----------------------------------------------------------------------
log() { printf '==> %s\n' "$*" >&2; }
die() { printf '%s: %s\n' "$BENCH" "$*" >&2; exit 1; }
now() { printf '%s' "$EPOCHREALTIME"; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }
median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) printf "%.2f", v[(NR + 1) / 2]; else printf "%.2f", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

# --- checks -----------------------------------------------------------------------------------
check_root_runs() {
    [ "$(id -u)" = 0 ] || die "run as root (network namespaces, dockerds, /etc/docker/certs.d)"
    [ "$RUNS" -ge 1 ] 2>/dev/null || die "RUNS must be a positive integer"
}
check_tools() {
    local tool
    for tool in dockerd:docker.io docker:docker.io docker-registry:docker-registry htpasswd:apache2-utils \
        openssl:openssl curl:curl busybox:busybox-static ip:iproute2 nsenter:util-linux python3:python3; do
        command -v "${tool%%:*}" >/dev/null 2>&1 || die "no ${tool%%:*} (apt-get install -y ${tool#*:})"
    done
}

# --- waiting ----------------------------------------------------------------------------------
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

wait_for() { # SECONDS DESCRIPTION CMD…: until CMD succeeds, polling every 250 ms
    local secs=$1 what=$2
    shift 2
    local t0=$SECONDS
    until "$@" >/dev/null 2>&1; do
        [ $((SECONDS - t0)) -ge "$secs" ] && die "timed out after ${secs}s waiting for $what"
        sleep "$POLL"
    done
}
wait_gone() { # SECONDS DESCRIPTION CMD…: until CMD prints nothing
    local secs=$1 what=$2
    shift 2
    local t0=$SECONDS
    while [ -n "$("$@" 2>/dev/null)" ]; do
        [ $((SECONDS - t0)) -ge "$secs" ] && die "timed out after ${secs}s waiting for $what to be gone: $("$@" 2>&1 | tr '\n' ' ')"
        sleep "$POLL"
    done
}

# --- the work directory and undo --------------------------------------------------------------
lab_work() { # WORK (/tmp/corral-BENCH.XXXXXX, with logs/ and docker/), ID, CHILD, DOCKERD_PID
    WORK=$(mktemp -d "/tmp/corral-$BENCH.XXXXXX")
    ID=$(printf '%04x' $(((RANDOM << 1 ^ $$) & 0xffff)))
    CHILD=
    UNDO_FILES=()
    KEEP_DROP=()
    declare -gA DOCKERD_PID=()
    declare -gA AGENT_PID=()
    mkdir -p "$WORK/logs" "$WORK/docker"
}
lab_traps() {
    trap cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
}
ns_of() { echo "$LAB_TAG-$ID-$1"; }
sock() { echo "$WORK/docker/$1/docker.sock"; }
dk() { # HOST ARGS…: the docker CLI against HOST's engine (never the machine's own)
    local h=$1
    shift
    docker -H "unix://$(sock "$h")" "$@"
}
dkc() { # HOST ARGS…: dk with the temporary DOCKER_CONFIG (docker login's, never the machine's own)
    local h=$1
    shift
    docker --config "$DOCKER_CFG" -H "unix://$(sock "$h")" "$@"
}
ours() { # PID: still a process this script started (not a reused id): its command line names
    # the work directory (every agent, server, registry, dockerd and containerd started here does)
    grep -qaF "$WORK/" "/proc/$1/cmdline" 2>/dev/null
}
stop_pid() { # PID: SIGTERM, up to 20 s, then SIGKILL
    local pid=$1
    ours "$pid" || return 0
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 80); do ours "$pid" || break; sleep "$POLL"; done
    if ours "$pid"; then kill -9 "$pid" 2>/dev/null || true; fi
    wait "$pid" 2>/dev/null || true
}
stop_dockerd() { # HOST: its containers and Swarm mode (if on) go, then the daemon and its containerd
    local h=$1 dir=$WORK/docker/$1
    if dk "$h" info >/dev/null 2>&1; then
        [ "$(dk "$h" info -f '{{.Swarm.LocalNodeState}}' 2>/dev/null)" = inactive ] ||
            dk "$h" swarm leave --force >/dev/null 2>&1 || true
        dk "$h" ps -aq 2>/dev/null | xargs -r docker -H "unix://$(sock "$h")" rm -f -v >/dev/null 2>&1 || true
    fi
    [ -f "$dir/pid" ] && stop_pid "$(cat "$dir/pid")"
    local cpid
    cpid=$(cat "$dir/exec/containerd/containerd.pid" 2>/dev/null) || cpid=
    if [ -n "$cpid" ] && grep -qaF "$dir/exec" "/proc/$cpid/cmdline" 2>/dev/null; then
        stop_pid "$cpid"
    fi
    # Whatever dockerd left mounted under its directories (overlay2, netns files).
    grep -F " $dir/" /proc/mounts | awk '{ print $2 }' | sort -r | xargs -r -n 1 umount -l 2>/dev/null || true
    rm -rf --one-file-system "$dir"
}
undo() { # STATE_FILE: undo what it records, newest first
    local file=$1 kind arg
    [ -f "$file" ] || return 0
    tac "$file" | while read -r kind arg; do
        case "$kind" in
            pid) stop_pid "$arg" ;;
            dockerd) stop_dockerd "$arg" ;;
            netns) ip netns del "$arg" 2>/dev/null || true ;;
            link) ip link del "$arg" 2>/dev/null || true ;;
            iptables) iptables -w -D DOCKER-USER -i "$arg" -o "$arg" -j ACCEPT 2>/dev/null || true ;;
            certsd) rm -rf "$arg" ;;
            dir) rm -rf --one-file-system "$arg" ;;
        esac
    done
    : >"$file"
}
record() { echo "$2" >>"$1"; } # STATE_FILE "KIND ARG"
cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    if [ -n "$CHILD" ]; then
        kill "$CHILD" 2>/dev/null
        wait "$CHILD" 2>/dev/null
    fi
    [ "$rc" = 0 ] || log "failed (exit $rc); undoing everything"
    local file
    for file in "${UNDO_FILES[@]}"; do undo "$file"; done
    if [ "${KEEP:-0}" = 1 ]; then
        rm -rf "$WORK/reg/tls" "$WORK/reg/storage" "$WORK/reg/htpasswd" "$WORK/reg/password" "${KEEP_DROP[@]}"
        log "logs kept in $WORK"
    else
        rm -rf --one-file-system "$WORK"
    fi
    exit "$rc"
}

# --- the binary -------------------------------------------------------------------------------
lab_bin() { # BIN: CORRAL_BIN, or the release build under CARGO_TARGET_DIR (built if missing)
    BIN=${CORRAL_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/corral}
    if [ ! -x "$BIN" ]; then
        [ -z "${CORRAL_BIN:-}" ] || die "CORRAL_BIN=$CORRAL_BIN is not executable"
        log "building the release binary (cargo build --release -p corral)"
        cargo build --release -p corral --locked -q
    elif [ -z "${CORRAL_BIN:-}" ] && [ -n "$(find crates Cargo.toml Cargo.lock -newer "$BIN" \( -name '*.rs' -o -name 'Cargo.*' \) -print -quit)" ]; then
        log "warning: $BIN is older than the sources; run \`cargo build --release -p corral\` to measure them"
    fi
}
lab_versions() {
    echo "corral $("$BIN" --version | awk '{ print $2 }'), dockerd $(dockerd --version | awk '{ print $3 }' | tr -d ,), docker CLI $(docker --version | awk '{ print $3 }' | tr -d ,); lab on $PREFIX.0/24"
}

# --- the network ------------------------------------------------------------------------------
lab_network() { # STATE_FILE: PREFIX (a /24 of 198.19.0.0/16 the root namespace does not use), BRIDGE
    local root_addrs p
    root_addrs=$(ip -4 -o addr show)
    PREFIX=
    for _ in $(seq 256); do
        p="198.19.$((RANDOM % 256))"
        grep -qF " $p." <<<"$root_addrs" || { PREFIX=$p; break; }
    done
    [ -n "$PREFIX" ] || die "no free /24 in 198.19.0.0/16 (the root namespace uses them all?)"
    BRIDGE="$LAB_TAG${ID}b"
    ip link add "$BRIDGE" type bridge
    record "$1" "link $BRIDGE"
    echo 1 >"/proc/sys/net/ipv6/conf/$BRIDGE/disable_ipv6" 2>/dev/null || true
    if iptables -w -n -L DOCKER-USER >/dev/null 2>&1; then
        # A dockerd in the root namespace: FORWARD policy DROP and br_netfilter on (see LAB.md).
        iptables -w -I DOCKER-USER -i "$BRIDGE" -o "$BRIDGE" -j ACCEPT
        record "$1" "iptables $BRIDGE"
    fi
    ip link set "$BRIDGE" up
}
add_ns() { # STATE_FILE NAME IP: a namespace with eth0 at IP/24, on the bridge
    local state=$1 name=$2 ip=$3 ns veth
    ns=$(ns_of "$name")
    veth="$LAB_TAG${ID}${name}"
    ip netns add "$ns"
    record "$state" "netns $ns"
    ip link add "$veth" type veth peer name "${veth}p"
    record "$state" "link $veth"
    echo 1 >"/proc/sys/net/ipv6/conf/$veth/disable_ipv6" 2>/dev/null || true
    ip link set "$veth" master "$BRIDGE"
    ip link set "$veth" up
    ip link set "${veth}p" netns "$ns"
    ip -n "$ns" link set "${veth}p" name eth0
    ip -n "$ns" addr add "$ip/24" dev eth0
    ip -n "$ns" link set eth0 up
    ip -n "$ns" link set lo up
}
host_ip() { echo "$PREFIX.$((10 + ${1#h}))"; }

# --- engines ----------------------------------------------------------------------------------
dlog() { echo "$WORK/logs/dockerd-${LOG_TAG:-}$1.log"; }
start_dockerd() { # STATE_FILE HOST: in HOST's namespace, everything under WORK/docker/HOST
    local state=$1 h=$2 dir=$WORK/docker/$2
    mkdir -p "$dir/data" "$dir/exec"
    nsenter --net="/var/run/netns/$(ns_of "$h")" dockerd --data-root "$dir/data" \
        --exec-root "$dir/exec" --pidfile "$dir/pid" -H "unix://$(sock "$h")" \
        --bridge=none --iptables=false --ip-masq=false >"$(dlog "$h")" 2>&1 &
    DOCKERD_PID[$h]=$!
    record "$state" "pid $!"
    record "$state" "dockerd $h"
}
wait_dockerd() { # HOST
    local h=$1 t0=$SECONDS
    until dk "$h" info >/dev/null 2>&1; do
        ours "${DOCKERD_PID[$h]}" || die "dockerd of $h exited: $(tail -n 5 "$(dlog "$h")")"
        [ $((SECONDS - t0)) -ge 60 ] && die "dockerd of $h did not answer within 60 s: $(tail -n 5 "$(dlog "$h")")"
        sleep "$POLL"
    done
}
start_hosts() { # STATE_FILE: for each host of HOSTS a namespace and a dockerd; waits for them all
    local h
    for h in "${HOSTS[@]}"; do
        add_ns "$1" "$h" "$(host_ip "$h")"
        start_dockerd "$1" "$h"
    done
    for h in "${HOSTS[@]}"; do wait_dockerd "$h"; done
}

# --- the registry -----------------------------------------------------------------------------
# STATE_FILE: Debian's docker-registry on REG (PREFIX.2:5000) in the namespace reg, TLS under a
# CA made here (TLS/ca.crt), htpasswd basic auth for REG_USER (REG_PASSWORD), its access log in
# WORK/logs/registry.log; then the temporary DOCKER_CONFIG (DOCKER_CFG).
start_registry() {
    REG_STATE=$1
    REG_IP=$PREFIX.2
    REG=$REG_IP:5000
    CERTS_D=/etc/docker/certs.d/$REG
    [ ! -e "$CERTS_D" ] || die "$CERTS_D exists already; remove it (a leftover?)"
    add_ns "$REG_STATE" reg "$REG_IP"
    mkdir -p "$WORK/reg/tls" "$WORK/reg/storage"
    TLS=$WORK/reg/tls
    local ec=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
    openssl req -x509 "${ec[@]}" -keyout "$TLS/ca.key" -out "$TLS/ca.crt" -days 2 \
        -subj "/CN=corral $BENCH registry CA" \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
    openssl req -new "${ec[@]}" -keyout "$TLS/server.key" -out "$TLS/server.csr" -subj "/CN=$REG_IP" 2>/dev/null
    printf 'subjectAltName=IP:%s\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n' \
        "$REG_IP" >"$TLS/server.ext"
    openssl x509 -req -in "$TLS/server.csr" -CA "$TLS/ca.crt" -CAkey "$TLS/ca.key" -set_serial 2 -days 2 \
        -extfile "$TLS/server.ext" -out "$TLS/server.crt" 2>/dev/null
    REG_PASSWORD=$(openssl rand -hex 16)
    printf '%s' "$REG_PASSWORD" >"$WORK/reg/password"
    htpasswd -Bbn "$REG_USER" "$REG_PASSWORD" | sed '/^$/d' >"$WORK/reg/htpasswd"
    cat >"$WORK/reg/config.yml" <<EOF
version: 0.1
log:
  level: info
  fields:
    service: registry
storage:
  filesystem:
    rootdirectory: $WORK/reg/storage
  delete:
    enabled: true
http:
  addr: $REG
  secret: $BENCH-$ID
  tls:
    certificate: $TLS/server.crt
    key: $TLS/server.key
auth:
  htpasswd:
    realm: corral-bench-registry
    path: $WORK/reg/htpasswd
EOF
    REG_PID=
    fresh_registry
    log "registry: https://$REG (TLS, basic auth) in $(ns_of reg)"
    record "$REG_STATE" "certsd $CERTS_D"
    DOCKER_CFG=$(mktemp -d "/tmp/corral-$BENCH-docker-config.XXXXXX")
    record "$REG_STATE" "dir $DOCKER_CFG"
}
reg_status() {
    ip netns exec "$(ns_of reg)" curl -s -o /dev/null --max-time 5 -w '%{http_code}' --cacert "$TLS/ca.crt" "https://$REG/v2/" || true
}
# (Re)starts the registry on an empty storage directory: nothing pushed before is there any more.
# Its log is appended to, so the request counts go on from line numbers.
fresh_registry() {
    [ -z "$REG_PID" ] || stop_pid "$REG_PID"
    rm -rf --one-file-system "$WORK/reg/storage"
    mkdir -p "$WORK/reg/storage"
    nsenter --net="/var/run/netns/$(ns_of reg)" docker-registry serve "$WORK/reg/config.yml" >>"$WORK/logs/registry.log" 2>&1 &
    REG_PID=$!
    record "$REG_STATE" "pid $REG_PID"
    local t0=$SECONDS
    until [ "$(reg_status)" != 000 ]; do
        kill -0 "$REG_PID" 2>/dev/null || die "the registry exited: $(tail -n 10 "$WORK/logs/registry.log")"
        [ $((SECONDS - t0)) -ge 30 ] && die "the registry did not answer within 30 s: $(tail -n 10 "$WORK/logs/registry.log")"
        sleep "$POLL"
    done
    [ "$(reg_status)" = 401 ] || die "the registry answered $(reg_status) to an anonymous /v2/, not 401"
}
reg_lines() { wc -l <"$WORK/logs/registry.log"; }

# The CA in /etc/docker/certs.d/REG/ca.crt: every engine on this machine reads it there (at each
# connection), so it is put there only while something other than corral must pull or push
# (corral's agents install it themselves, from the account).
trust() { mkdir -p "$CERTS_D" && cp "$TLS/ca.crt" "$CERTS_D/ca.crt"; }
untrust() { rm -rf "$CERTS_D"; }
login() { # HOST: docker login REG against HOST's engine, into the temporary DOCKER_CONFIG
    printf '%s' "$REG_PASSWORD" | dkc "$1" login -u "$REG_USER" --password-stdin "$REG" >>"$WORK/logs/docker-login.log" 2>&1 ||
        die "docker login $REG via $1 failed: $(tail -n 3 "$WORK/logs/docker-login.log")"
}

# --- corral -----------------------------------------------------------------------------------
# STATE_FILE TAG [ARG…]: `corral server` in the namespace srv (PREFIX.1:8443, data in
# WORK/corralTAG/server, log WORK/logs/serverTAG.log), an agent per host of HOSTS on its engine
# (state in WORK/corralTAG/HOST, log WORK/logs/agentTAG-HOST.log), all connected with Docker
# available; then `corral registry add REG` with the account and the CA, and ARGs.
start_corral() {
    local state=$1 tag=$2 h checksum token
    shift 2
    add_ns "$state" srv "$PREFIX.1"
    SRV_DIR=$WORK/corral$tag/server
    mkdir -p "$SRV_DIR"
    ip netns exec "$(ns_of srv)" "$BIN" server --listen "$PREFIX.1:8443" --data-dir "$SRV_DIR" \
        --advertise-url "https://$PREFIX.1:8443" ${SERVER_ARGS[@]+"${SERVER_ARGS[@]}"} >"$WORK/logs/server$tag.log" 2>&1 &
    record "$state" "pid $!"
    wait_for 30 "the corral server" grep -q "is running" "$WORK/logs/server$tag.log"
    checksum=$(sed -n 's/^CORRAL_CA_CHECKSUM=//p' "$SRV_DIR/admin.env")
    token=$(cli token create --ttl 1h -o json | sed -n 's/.*"token": *"\([^"]*\)".*/\1/p')
    [ -n "$token" ] || die "cannot create a registration token"
    for h in "${HOSTS[@]}"; do
        ip netns exec "$(ns_of "$h")" "$BIN" agent --server "https://$PREFIX.1:8443" --ca-checksum "$checksum" \
            --state-dir "$WORK/corral$tag/$h" --name "$h" --docker-host "unix://$(sock "$h")" --token "$token" \
            >"$WORK/logs/agent$tag-$h.log" 2>&1 &
        AGENT_PID[$h]=$!
        record "$state" "pid $!"
    done
    wait_for 60 "${#HOSTS[@]} host(s) to connect with Docker available" hosts_available
    [ -n "${REG:-}" ] || return 0
    printf '%s' "$REG_PASSWORD" | cli registry add "$REG" --username "$REG_USER" --password-stdin \
        --ca-file "$TLS/ca.crt" "$@" >"$WORK/logs/registry-add$tag.log" 2>&1 ||
        die "corral registry add failed: $(cat "$WORK/logs/registry-add$tag.log")"
}
cli() { # ARGS…: the corral CLI in the server's namespace, as the admin
    (set -a; . "$SRV_DIR/admin.env"; set +a; exec ip netns exec "$(ns_of srv)" "$BIN" "$@")
}
hosts_available() { # all hosts of HOSTS connected with Docker available
    cli host ls -o json | python3 -c '
import json, sys
hosts = json.load(sys.stdin)
ok = [h for h in hosts if h.get("state") == "active" and (h.get("docker") or {}).get("state") == "available"]
sys.exit(0 if len(ok) == int(sys.argv[1]) else 1)' "${#HOSTS[@]}"
}
corral_leftovers() { # STACK: the ids of its containers and of its network, on every host
    local h
    for h in "${HOSTS[@]}"; do
        dk "$h" ps -aq --filter "label=io.corral.stack=$1"
        dk "$h" network ls -q --filter "name=^corral_${1}\$"
    done
}
