#!/usr/bin/env bash
# A multi-host lab on one machine: a corral server and N hosts, each in its own network
# namespace, joined by a lab bridge; every host runs its own dockerd (in its namespace, with its
# own data root) and a corral agent that dials the server across the bridge.
#
#   bash scripts/lab.sh up DIR N [-- SERVER_ARGS…]   # build it; state and logs go to DIR
#   bash scripts/lab.sh cli DIR ARGS…                 # the corral CLI, in the server's namespace
#   bash scripts/lab.sh docker DIR HOST ARGS…         # docker against host HOST's engine (h1…)
#   bash scripts/lab.sh ns DIR HOST                   # the network namespace of HOST (or srv)
#   bash scripts/lab.sh bridge DIR                    # the lab bridge (to capture on)
#   bash scripts/lab.sh agent-stop DIR HOST           # stop HOST's agent (its dockerd stays)
#   bash scripts/lab.sh agent-start DIR HOST          # start it again (same state dir)
#   bash scripts/lab.sh server-stop DIR               # stop the server (agents keep running)
#   bash scripts/lab.sh server-start DIR              # start it again (same data dir)
#   bash scripts/lab.sh down DIR                      # remove everything `up` made
#
# Addresses come from TEST-NET-1: the server is 192.0.2.1, host hI is 192.0.2.(10+I); nothing is
# routed out of the machine. The root namespace gets no address (these machines' root namespace
# does not answer ARP from a namespace), so the CLI runs in the server's namespace (`cli`).
# Everything made is recorded in DIR/state as it is made, and `down` undoes it by process id and
# by name; `up` undoes what it made if it fails. CORRAL_BIN picks the binary (default:
# target/debug/corral, else the one on PATH).
set -Eeuo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)

die() { echo "lab: $*" >&2; exit 1; }

corral_bin() {
    if [ -n "${CORRAL_BIN:-}" ]; then echo "$CORRAL_BIN"
    elif [ -x "${CARGO_TARGET_DIR:-$ROOT/target}/debug/corral" ]; then echo "${CARGO_TARGET_DIR:-$ROOT/target}/debug/corral"
    else command -v corral || die "no corral binary: build it (cargo build) or set CORRAL_BIN"
    fi
}

record() { echo "$*" >>"$DIR/state"; }
field() { sed -n "s/^$1 //p" "$DIR/lab.env" 2>/dev/null | tail -n 1; }

wait_for() { # SECONDS DESCRIPTION COMMAND…
    local secs=$1 what=$2; shift 2
    for _ in $(seq $((secs * 4))); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.25
    done
    die "timed out after ${secs}s waiting for $what"
}

host_ns() { echo "corral-lab-$(field id)-$1"; }
sock() { echo "$DIR/$1/docker.sock"; }

start_agent() { # HOST [TOKEN]
    local h=$1 token=${2:-} ns; ns=$(host_ns "$h")
    local args=(agent --server "https://192.0.2.1:8443" --ca-checksum "$(field checksum)"
        --state-dir "$DIR/$h/agent" --name "$h" --docker-host "unix://$(sock "$h")" --label "lab=yes")
    [ -n "$token" ] && args+=(--token "$token")
    ip netns exec "$ns" "$(corral_bin)" "${args[@]}" >>"$DIR/$h/agent.log" 2>&1 &
    echo $! >"$DIR/$h/agent.pid"
    record "pid $!"
}

stop_agent() { # HOST
    local pidfile="$DIR/$1/agent.pid"
    [ -f "$pidfile" ] || return 0
    local pid; pid=$(cat "$pidfile")
    if ours "$pid"; then
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
        ours "$pid" && kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$pidfile"
}

host_available() { # HOST: connected, with Docker available
    cli host ls -o json | python3 -c '
import json, sys
hosts = json.load(sys.stdin)
sys.exit(0 if any(h["name"] == sys.argv[1] and h.get("state") == "active"
                  and (h.get("docker") or {}).get("state") == "available" for h in hosts) else 1)' "$1"
}

ours() { # PID: still one of the processes the lab started (not a reused id)
    grep -qaE 'corral|dockerd|nsenter' "/proc/$1/cmdline" 2>/dev/null
}

start_server() {
    local args=()
    if [ -s "$DIR/server/args" ]; then mapfile -t args <"$DIR/server/args"; fi
    ip netns exec "$(host_ns srv)" "$(corral_bin)" server --listen 192.0.2.1:8443 \
        --data-dir "$DIR/server" --advertise-url https://192.0.2.1:8443 "${args[@]}" \
        >>"$DIR/server/server.log" 2>&1 &
    echo $! >"$DIR/server/server.pid"
    record "pid $!"
}

stop_server() {
    local pid; pid=$(cat "$DIR/server/server.pid" 2>/dev/null) || return 0
    if ours "$pid"; then
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    fi
    rm -f "$DIR/server/server.pid"
}

cli() { # ARGS…
    local env="$DIR/server/admin.env"
    [ -f "$env" ] || die "no lab in $DIR (run: lab.sh up $DIR N)"
    # shellcheck disable=SC1090
    (set -a; . "$env"; set +a; exec ip netns exec "$(host_ns srv)" "$(corral_bin)" "$@")
}

down() {
    [ -f "$DIR/state" ] || return 0
    # Undo in reverse order of creation.
    tac "$DIR/state" | while read -r kind arg rest; do
        case "$kind" in
            pid) if ours "$arg"; then
                     kill "$arg" 2>/dev/null || true
                     for _ in $(seq 40); do kill -0 "$arg" 2>/dev/null || break; sleep 0.25; done
                     ours "$arg" && kill -9 "$arg" 2>/dev/null || true
                 fi ;;
            dockerd) # arg: host; its containers go first, then the daemon (and its containerd)
                 docker -H "unix://$(sock "$arg")" ps -aq 2>/dev/null |
                     xargs -r docker -H "unix://$(sock "$arg")" rm -f -v >/dev/null 2>&1 || true
                 if [ -f "$DIR/$arg/docker.pid" ]; then
                     pid=$(cat "$DIR/$arg/docker.pid")
                     kill "$pid" 2>/dev/null || true
                     for _ in $(seq 80); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
                     kill -9 "$pid" 2>/dev/null || true
                 fi ;;
            netns) ip netns del "$arg" 2>/dev/null || true ;;
            link) ip link del "$arg" 2>/dev/null || true ;;
            iptables) iptables -D DOCKER-USER -i "$arg" -o "$arg" -j ACCEPT 2>/dev/null || true ;;
            rundir) rm -rf "$arg" ;;
        esac
    done
    rm -f "$DIR/state"
}

up() { # N [-- SERVER_ARGS…]
    local n=$1; shift
    [ "${1:-}" = "--" ] && shift
    [ "$n" -ge 1 ] && [ "$n" -le 20 ] || die "N must be 1 to 20"
    [ ! -f "$DIR/state" ] || die "$DIR already holds a lab (lab.sh down $DIR first)"
    command -v dockerd >/dev/null || die "no dockerd (apt-get install -y docker.io)"
    command -v busybox >/dev/null || die "no busybox (apt-get install -y busybox-static)"
    mkdir -p "$DIR"
    DIR=$(cd "$DIR" && pwd)
    local id; id=$(printf '%04x' $(( (RANDOM << 1 ^ $$) & 0xffff )))
    echo "id $id" >"$DIR/lab.env"
    : >"$DIR/state"
    trap 'echo "lab: setup failed; undoing" >&2; down' ERR
    local bridge="cl${id}b"
    ip link add "$bridge" type bridge
    record "link $bridge"
    # A dockerd in the root namespace drops bridged frames (FORWARD DROP + br_netfilter).
    if iptables -L DOCKER-USER >/dev/null 2>&1; then
        iptables -I DOCKER-USER -i "$bridge" -o "$bridge" -j ACCEPT
        record "iptables $bridge"
    fi
    ip link set "$bridge" up
    local rundir="/run/corral-lab-$id"
    mkdir -p "$rundir"
    record "rundir $rundir"
    local names=(srv) i
    for i in $(seq "$n"); do names+=("h$i"); done
    for name in "${names[@]}"; do
        local ns; ns=$(host_ns "$name")
        local ip=192.0.2.1
        [ "$name" = srv ] || ip="192.0.2.$((10 + ${name#h}))"
        ip netns add "$ns"
        record "netns $ns"
        local veth="cl${id}${name}"
        ip link add "$veth" type veth peer name "${veth}p"
        record "link $veth"
        ip link set "$veth" master "$bridge"
        ip link set "$veth" up
        ip link set "${veth}p" netns "$ns"
        ip -n "$ns" link set "${veth}p" name eth0
        ip -n "$ns" addr add "$ip/24" dev eth0
        ip -n "$ns" link set eth0 up
        ip -n "$ns" link set lo up
        echo "ip_$name $ip" >>"$DIR/lab.env"
    done

    # The server.
    mkdir -p "$DIR/server"
    : >"$DIR/server/args"
    if [ $# -gt 0 ]; then printf '%s\n' "$@" >"$DIR/server/args"; fi
    start_server
    wait_for 30 "the server" grep -q "is running" "$DIR/server/server.log"
    echo "checksum $(sed -n 's/^CORRAL_CA_CHECKSUM=//p' "$DIR/server/admin.env")" >>"$DIR/lab.env"
    local token
    token=$(cli token create --ttl 1h -o json | sed -n 's/.*"token": *"\([^"]*\)".*/\1/p')
    [ -n "$token" ] || die "cannot create a registration token"

    # The hosts: dockerd (its own data root, in its namespace), the test image, the agent.
    # LAB_DOCKER_IPTABLES=1 lets each dockerd manage its namespace's iptables, as a default
    # Docker install does.
    local docker_fw=(--iptables=false --ip-masq=false)
    if [ "${LAB_DOCKER_IPTABLES:-0}" = 1 ]; then docker_fw=(--iptables=true); fi
    for name in "${names[@]:1}"; do
        local ns; ns=$(host_ns "$name")
        mkdir -p "$DIR/$name/docker" "$rundir/$name"
        nsenter --net="/var/run/netns/$ns" dockerd --data-root "$DIR/$name/docker" \
            --exec-root "$rundir/$name" --pidfile "$DIR/$name/docker.pid" \
            -H "unix://$(sock "$name")" --bridge=none "${docker_fw[@]}" \
            >"$DIR/$name/dockerd.log" 2>&1 &
        record "pid $!"
        record "dockerd $name"
    done
    for name in "${names[@]:1}"; do
        wait_for 60 "dockerd of $name" docker -H "unix://$(sock "$name")" info
        DOCKER_HOST="unix://$(sock "$name")" bash "$ROOT/scripts/test-image.sh" >/dev/null
        start_agent "$name" "$token"
    done
    for name in "${names[@]:1}"; do
        wait_for 30 "host $name to report Docker" host_available "$name"
    done
    trap - ERR
    echo "lab up: server 192.0.2.1:8443 in $(host_ns srv); hosts ${names[*]:1}; state in $DIR"
}

cmd=${1:-}; DIR=${2:-}
[ -n "$cmd" ] && [ -n "$DIR" ] || { sed -n '2,19p' "$0" >&2; exit 2; }
shift 2
case "$cmd" in
    up) up "${1:?N}" "${@:2}" ;;
    down) DIR=$(cd "$DIR" 2>/dev/null && pwd) || exit 0; down ;;
    cli) cli "$@" ;;
    docker) h=${1:?HOST}; shift; exec docker -H "unix://$(sock "$h")" "$@" ;;
    ns) host_ns "${1:?HOST}" ;;
    bridge) echo "cl$(field id)b" ;;
    agent-stop) stop_agent "${1:?HOST}" ;;
    agent-start) start_agent "${1:?HOST}" ;;
    server-stop) stop_server ;;
    server-start) start_server ;;
    *) die "unknown command $cmd" ;;
esac
