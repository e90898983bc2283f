#!/usr/bin/env bash
# The whole test suite, from a fresh Debian 12 machine: installs what the tests need, then runs
# formatting, lints and every test (unit, property, integration with real processes).
#
#   bash scripts/test.sh
#
# Set CORRAL_TEST_NO_INSTALL=1 to skip package installation.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '==> %s\n' "$*"; }

install_packages() {
    local missing=()
    command -v nft >/dev/null 2>&1 || missing+=(nftables)
    command -v iptables-restore >/dev/null 2>&1 || missing+=(iptables)
    command -v curl >/dev/null 2>&1 || missing+=(curl)
    command -v dot >/dev/null 2>&1 || missing+=(graphviz)
    command -v ip >/dev/null 2>&1 || missing+=(iproute2)
    command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
    command -v busybox >/dev/null 2>&1 || missing+=(busybox-static)
    command -v docker-registry >/dev/null 2>&1 || missing+=(docker-registry)
    command -v htpasswd >/dev/null 2>&1 || missing+=(apache2-utils)
    command -v openssl >/dev/null 2>&1 || missing+=(openssl)
    command -v tcpdump >/dev/null 2>&1 || missing+=(tcpdump)
    command -v ping >/dev/null 2>&1 || missing+=(iputils-ping)
    command -v slapd >/dev/null 2>&1 || missing+=(slapd)
    command -v ldapadd >/dev/null 2>&1 || missing+=(ldap-utils)
    command -v chromium >/dev/null 2>&1 || missing+=(chromium)
    [ -x /usr/lib/postgresql/15/bin/postgres ] || missing+=(postgresql)
    if [ ${#missing[@]} -gt 0 ]; then
        log "installing ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
    if ! python3 -c 'import botocore' >/dev/null 2>&1; then
        log "installing botocore (EC2 API model, to validate AWS exports)"
        python3 -m pip install -q botocore
    fi
    if ! python3 -c 'import schemathesis, openapi_spec_validator' >/dev/null 2>&1; then
        log "installing schemathesis and openapi-spec-validator (to check the API against its OpenAPI document)"
        python3 -m pip install -q 'schemathesis==4.32.5' 'openapi-spec-validator==0.9.0'
    fi
}

if [ "${CORRAL_TEST_NO_INSTALL:-0}" != 1 ]; then
    if [ "$(id -u)" = 0 ]; then
        install_packages
    else
        log "not root: skipping package installation"
    fi
fi

# A Docker engine for the container tests: started here if none answers, stopped on exit.
DOCKERD_PID=
stop_dockerd() {
    if [ -n "$DOCKERD_PID" ]; then
        kill "$DOCKERD_PID" 2>/dev/null || true
        wait "$DOCKERD_PID" 2>/dev/null || true
    fi
}
trap stop_dockerd EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
if command -v dockerd >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    if ! docker info >/dev/null 2>&1; then
        log "starting dockerd"
        dockerd >/tmp/corral-test-dockerd.log 2>&1 &
        DOCKERD_PID=$!
        for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 0.5; done
    fi
    docker info >/dev/null 2>&1 || { echo "dockerd did not start; see /tmp/corral-test-dockerd.log" >&2; exit 1; }
    bash scripts/test-image.sh
    DOCKER_CHECKS=1
fi

# What corral made in the machine's Docker (containers, networks, volumes, by its label).
corral_objects() {
    local f=label=io.corral.managed=true
    docker ps -aq --no-trunc --filter "$f" | sed 's/^/container /'
    docker network ls -q --no-trunc --filter "$f" | sed 's/^/network /'
    docker volume ls -q --filter "$f" | sed 's/^/volume /'
}

log "cargo fmt --check"
cargo fmt --all -- --check
log "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
log "cargo test"
if [ "${DOCKER_CHECKS:-0}" = 1 ]; then
    before=$(corral_objects | sort)
fi
status=0
cargo test --workspace --locked || status=$?
# The control-plane, container and stack tests again, each server on a PostgreSQL of its own
# (TLS, verify-full) instead of SQLite: one schema, one set of queries, both engines.
log "cargo test on PostgreSQL (control_plane, containers, stacks)"
CORRAL_TEST_DATASTORE=postgres cargo test --locked -p corral \
    --test control_plane --test containers --test stacks || status=$?

# Every test removes what it deployed. A leftover is a leak: it is reported, removed, and fails
# the suite (leaked networks once used up Docker's address pools, and later runs failed for it).
if [ "${DOCKER_CHECKS:-0}" = 1 ]; then
    leaked=$(comm -13 <(printf '%s\n' "$before") <(corral_objects | sort) | sed '/^$/d')
    if [ -n "$leaked" ]; then
        echo "tests left corral objects in the machine's Docker (removed now):" >&2
        printf '%s\n' "$leaked" >&2
        while read -r kind id; do
            case $kind in
                container) docker rm -f -v "$id" >/dev/null 2>&1 || true ;;
                network) docker network rm "$id" >/dev/null 2>&1 || true ;;
                volume) docker volume rm "$id" >/dev/null 2>&1 || true ;;
            esac
        done < <(printf '%s\n' "$leaked" | sort -k1,1 -s)
        [ "$status" != 0 ] || status=1
    fi
fi
exit "$status"
