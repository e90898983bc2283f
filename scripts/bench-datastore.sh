#!/usr/bin/env bash
# SQLite beside PostgreSQL as the datastore, in one run: two fresh release servers, one on each
# (PostgreSQL 15 on loopback with TLS, verify-full, its default durability settings — fsync on),
# each with the same registered hosts; then
#   1. GET /v1/hosts, requests alternating between the two servers (python3, one TLS
#      connection per request, as a CLI makes them): p50 and p99 of each, and the ratio;
#   2. `corral bench deploy` (simulated agents answering as Docker hosts) against each server in
#      turn, SQLite then PostgreSQL, RUNS times: containers/s and time until all run.
# Everything it starts is stopped by process id and removed.
#
#   bash scripts/bench-datastore.sh                  # 1,000 hosts; 200 agents, 10,000 replicas
#   HOSTS=1000 AGENTS=200 REPLICAS=10000 REQUESTS=300 RUNS=2 bash scripts/bench-datastore.sh
set -euo pipefail
cd "$(dirname "$0")/.."
HOSTS=${HOSTS:-1000}
AGENTS=${AGENTS:-200}
REPLICAS=${REPLICAS:-10000}
REQUESTS=${REQUESTS:-300}
RUNS=${RUNS:-2}
cargo build --release --locked -q
BIN=$PWD/target/release/corral
[ -n "${CARGO_TARGET_DIR:-}" ] && BIN=$CARGO_TARGET_DIR/release/corral
ulimit -n "$(ulimit -Hn)"

. scripts/lib-postgres.sh

# start_server NAME [DATASTORE_URL]: a release server in $DIR/NAME; its pid in LAST_PID.
start_server() {
    local name=$1 url=${2:-} port
    port=$(free_port)
    if [ -n "$url" ]; then export CORRAL_DATASTORE=$url; else unset CORRAL_DATASTORE; fi
    "$BIN" server --listen 127.0.0.1:"$port" --data-dir "$DIR/$name" \
        --max-stack-replicas 10000 >"$DIR/$name.log" 2>&1 &
    unset CORRAL_DATASTORE
    PIDS+=($!)
    for _ in $(seq 200); do [ -f "$DIR/$name/admin.env" ] && break; sleep 0.1; done
    [ -f "$DIR/$name/admin.env" ] || { cat "$DIR/$name.log" >&2; exit 1; }
    LAST_PID=${PIDS[-1]}
}
env_of() { (set -a; . "$DIR/$1/admin.env"; set +a; shift; "$@"); }

echo "1. GET /v1/hosts at $HOSTS hosts, $REQUESTS requests to each server, alternating…" >&2
start_server lite
start_server pg "$(pg_database hosts)"
for s in lite pg; do
    env_of "$s" "$BIN" bench connect --agents "$HOSTS" --hold 1s --keep -o json >/dev/null
done
python3 - "$DIR" "$REQUESTS" <<'EOF'
import http.client, ssl, statistics, sys, time
d, n = sys.argv[1], int(sys.argv[2])
def env(name):
    out = {}
    for line in open(f"{d}/{name}/admin.env"):
        if "=" in line and not line.startswith("#"):
            k, v = line.strip().split("=", 1)
            out[k] = v
    return out
servers = {}
for name in ("lite", "pg"):
    e = env(name)
    host, port = e["CORRAL_SERVER"].split("//")[1].split(":")
    ctx = ssl.create_default_context(cafile=f"{d}/{name}/pki/ca.pem")
    servers[name] = (host, int(port), ctx, e["CORRAL_API_KEY"])
def get(name):
    host, port, ctx, key = servers[name]
    t = time.perf_counter()
    c = http.client.HTTPSConnection(host, port, context=ctx)
    c.request("GET", "/v1/hosts", headers={"Authorization": f"Bearer {key}"})
    r = c.getresponse()
    body = r.read()
    c.close()
    assert r.status == 200, (name, r.status, body[:200])
    return time.perf_counter() - t, len(body)
times = {"lite": [], "pg": []}
for _ in range(10):
    get("lite"); get("pg")
for _ in range(n):
    for name in ("lite", "pg"):
        times[name].append(get(name)[0])
def q(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p * len(xs)))] * 1000
size = get("lite")[1]
print(f"GET /v1/hosts ({size:,} bytes)   SQLite p50 {q(times['lite'], .5):.2f} ms  p99 {q(times['lite'], .99):.2f} ms")
print(f"                                PostgreSQL p50 {q(times['pg'], .5):.2f} ms  p99 {q(times['pg'], .99):.2f} ms")
print(f"                                PostgreSQL / SQLite (p50): {q(times['pg'], .5) / q(times['lite'], .5):.2f}")
EOF

echo "2. corral bench deploy: $AGENTS agents, $REPLICAS replicas, SQLite then PostgreSQL, $RUNS runs…" >&2
for run in $(seq "$RUNS"); do
    for engine in sqlite postgres; do
        name=deploy-$engine-$run
        if [ "$engine" = postgres ]; then
            start_server "$name" "$(pg_database "deploy_$run")"
        else
            start_server "$name"
        fi
        pid=$LAST_PID
        printf 'run %s, %s: ' "$run" "$engine"
        env_of "$name" "$BIN" bench deploy --agents "$AGENTS" --replicas "$REPLICAS" \
            --stack-replicas 10000 --server-pid "$pid" -o json |
            python3 -c 'import json,sys; r=json.load(sys.stdin); print(json.dumps({k: r[k] for k in r if not isinstance(r[k], (list, dict))}))'
        kill -INT "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
done
