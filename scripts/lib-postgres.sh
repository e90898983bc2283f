# Sourced by the benchmarks that need PostgreSQL (bench-datastore.sh, bench-failover.sh):
# makes $DIR (the run's files) and $PGDIR, and starts PostgreSQL 15 on loopback with TLS only
# (a throwaway CA, SCRAM, a role `corral` with the password in $PGPASS) on $PGPORT. Every
# process a benchmark starts goes into PIDS; on exit they are resumed (one may be stopped),
# interrupted and waited for by process id, and both directories removed.
# `pg_database NAME` makes a database and prints its URL (sslmode=verify-full).
PGBIN=/usr/lib/postgresql/15/bin
[ -x "$PGBIN/postgres" ] || { echo "needs PostgreSQL 15: apt-get install -y postgresql" >&2; exit 1; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
DIR=$(mktemp -d /tmp/corral-bench.XXXXXX)
# The postgres user must be able to enter its directory: not under root's 0700 $DIR.
PGDIR=$(mktemp -d /tmp/corral-pgbench.XXXXXX)
chmod 755 "$PGDIR"
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill -CONT "$p" 2>/dev/null || true; kill -INT "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$DIR" "$PGDIR"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

echo "starting PostgreSQL (TLS)…" >&2
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj "/CN=corral bench PostgreSQL CA" -keyout "$PGDIR/ca.key" -out "$PGDIR/ca.crt" \
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/CN=127.0.0.1" \
    -keyout "$PGDIR/server.key" -out "$PGDIR/server.csr" 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1\n' >"$PGDIR/ext"
openssl x509 -req -in "$PGDIR/server.csr" -CA "$PGDIR/ca.crt" -CAkey "$PGDIR/ca.key" \
    -CAcreateserial -days 2 -extfile "$PGDIR/ext" -out "$PGDIR/server.crt" 2>/dev/null
PGPASS=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
echo "$PGPASS" >"$PGDIR/pwfile"
mkdir "$PGDIR/socket"
chown -R postgres:postgres "$PGDIR"
chmod 600 "$PGDIR/server.key"
setpriv --reuid postgres --regid postgres --init-groups "$PGBIN/initdb" -D "$PGDIR/data" \
    -U postgres -E UTF8 --locale=C --auth-local=trust --auth-host=scram-sha-256 \
    --pwfile="$PGDIR/pwfile" --no-instructions >/dev/null
printf 'local all all trust\nhostssl all all 127.0.0.1/32 scram-sha-256\n' >"$PGDIR/data/pg_hba.conf"
PGPORT=$(free_port)
setpriv --reuid postgres --regid postgres --init-groups "$PGBIN/postgres" -D "$PGDIR/data" \
    -p "$PGPORT" -k "$PGDIR/socket" -c listen_addresses=127.0.0.1 -c ssl=on \
    -c ssl_cert_file="$PGDIR/server.crt" -c ssl_key_file="$PGDIR/server.key" \
    >"$DIR/postgres.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do "$PGBIN/pg_isready" -q -h "$PGDIR/socket" -p "$PGPORT" && break; sleep 0.2; done
psql -X -q -h "$PGDIR/socket" -p "$PGPORT" -U postgres \
    -c "CREATE ROLE corral LOGIN PASSWORD '$PGPASS'" >/dev/null
pg_database() {
    psql -X -q -h "$PGDIR/socket" -p "$PGPORT" -U postgres -c "CREATE DATABASE $1 OWNER corral" >/dev/null
    echo "postgres://corral:$PGPASS@127.0.0.1:$PGPORT/$1?sslmode=verify-full&sslrootcert=$PGDIR/ca.crt"
}
