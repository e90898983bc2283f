#!/usr/bin/env bash
# What authorization costs: GET /v1/hosts at 1,000 registered hosts, timed with the admin's key
# (no roles to read) and with an environment owner's (its roles read and the listing filtered
# by them), requests alternating in one run. A fresh release server in a temporary data dir,
# stopped (by process id) and removed afterwards.
#
#   bash scripts/bench-auth.sh               # 1000 hosts, 300 requests per key
#   HOSTS=5000 REQUESTS=200 bash scripts/bench-auth.sh
set -euo pipefail
cd "$(dirname "$0")/.."
HOSTS=${HOSTS:-1000}
REQUESTS=${REQUESTS:-300}
cargo build --release --locked -q
BIN=$PWD/target/release/corral
[ -n "${CARGO_TARGET_DIR:-}" ] && BIN=$CARGO_TARGET_DIR/release/corral
DIR=$(mktemp -d /tmp/corral-bench.XXXXXX)
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$BIN" server --listen 127.0.0.1:"$PORT" --data-dir "$DIR/data" >"$DIR/server.log" 2>&1 &
SERVER=$!
cleanup() { kill "$SERVER" 2>/dev/null || true; wait "$SERVER" 2>/dev/null || true; rm -rf "$DIR"; }
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
for _ in $(seq 100); do [ -f "$DIR/data/admin.env" ] && break; sleep 0.1; done
sleep 0.5
set -a; . "$DIR/data/admin.env"; set +a
ulimit -n "$(ulimit -Hn)"
echo "registering $HOSTS hosts…" >&2
"$BIN" bench connect --agents "$HOSTS" --hold 1s --keep -o json >/dev/null
echo "a long enough password" | "$BIN" user create ops --password-stdin >&2
"$BIN" user grant ops --env default --role owner >&2
KEY_B=$(curl -s --cacert "$DIR/data/pki/ca.pem" -H 'content-type: application/json' \
    -d '{"user":"ops","password":"a long enough password"}' "$CORRAL_SERVER/v1/login" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])')
"$BIN" bench api --path /v1/hosts --key-b "$KEY_B" --requests "$REQUESTS" -o json
