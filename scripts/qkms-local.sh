#!/bin/sh
# qkms-local — the embedded default deployment: a PostgreSQL 15 cluster and a
# SoftHSMv2 token under one state directory, then kmsd in the foreground.
#
#   qkms-local.sh run        init (idempotent), start PostgreSQL, run kmsd; Ctrl-C stops both
#   qkms-local.sh init       create whatever is missing under the state dir
#   qkms-local.sh start-db | stop-db | status
#
# Environment: QKMS_STATE (default ./var), QKMS_KMSD (kmsd binary),
# QKMS_PG_PORT (default 5470), QKMS_PORT (kmsd port, default 8470),
# QKMS_TOKEN_LABEL (default qkms), PG_BIN (default /usr/lib/postgresql/15/bin).
#
# Secrets (token PINs, database password, admin token) are generated here or
# by kmsd, written 0600 under $QKMS_STATE/secrets or $QKMS_STATE, and never
# printed. PostgreSQL refuses to run as root, so as root the cluster belongs
# to the 'postgres' user.
set -eu
umask 077

STATE=${QKMS_STATE:-./var}
mkdir -p "$STATE"
STATE=$(cd "$STATE" && pwd)
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
PG_PORT=${QKMS_PG_PORT:-5470}
KMS_PORT=${QKMS_PORT:-8470}
LABEL=${QKMS_TOKEN_LABEL:-qkms}
KMSD=${QKMS_KMSD:-kmsd}
SOFTHSM_MODULE=${QKMS_PKCS11_MODULE:-/usr/lib/softhsm/libsofthsm2.so}

PGDATA=$STATE/pg/data
PGRUN=$STATE/pg/run
SECRETS=$STATE/secrets

log() { printf '{"ts":"%s","level":"info","msg":"%s","component":"qkms-local"}\n' \
    "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$*" >&2; }
die() { printf '{"ts":"%s","level":"error","msg":"%s","component":"qkms-local"}\n' \
    "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$*" >&2; exit 1; }

if [ "$(id -u)" = 0 ]; then PGUSER_OS=postgres; else PGUSER_OS=$(id -un); fi
as_pg() {
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}
secret() { # secret FILE: create a random hex secret once
    [ -s "$1" ] || { od -An -vtx1 -N24 /dev/urandom | tr -d ' \n' > "$1.tmp" && mv "$1.tmp" "$1"; }
}

pg_running() { [ -f "$PGDATA/postmaster.pid" ] && as_pg "$PG_BIN/pg_ctl" -D "$PGDATA" status >/dev/null 2>&1; }

init_pg() {
    [ -x "$PG_BIN/initdb" ] || die "PostgreSQL 15 not found in $PG_BIN (run: make deps)"
    # The cluster's owner must be able to traverse the state dir.
    chmod 0711 "$STATE"
    if [ "$(id -u)" = 0 ] && ! runuser -u postgres -- test -x "$STATE"; then
        die "the postgres user cannot reach $STATE (a parent directory is private); use QKMS_STATE=/var/lib/qkms or a directory under /srv or /tmp"
    fi
    mkdir -p "$STATE/pg" "$SECRETS"
    secret "$SECRETS/db.password"
    if [ ! -f "$PGDATA/PG_VERSION" ]; then
        log "creating PostgreSQL cluster in $PGDATA"
        mkdir -p "$PGDATA" "$PGRUN"
        chown -R "$PGUSER_OS" "$STATE/pg"
        chmod 0700 "$PGDATA"
        # The parent must be traversable by the postgres user.
        chmod 0711 "$STATE" "$STATE/pg"
        as_pg "$PG_BIN/initdb" -D "$PGDATA" -U postgres --auth-local=peer --auth-host=scram-sha-256 \
            -E UTF8 --locale=C.UTF-8 >/dev/null
        cat >> "$PGDATA/postgresql.conf" <<EOF
# qkms-local
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$PGRUN'
max_connections = 200
shared_buffers = 128MB
password_encryption = scram-sha-256
logging_collector = off
log_min_messages = warning
EOF
        # kmsd authenticates with a password over the socket or loopback; the
        # OS user postgres keeps peer access for administration.
        cat > "$PGDATA/pg_hba.conf" <<EOF
local   all   postgres                 peer
local   all   all                      scram-sha-256
host    all   all      127.0.0.1/32    scram-sha-256
EOF
        chown "$PGUSER_OS" "$PGDATA/postgresql.conf" "$PGDATA/pg_hba.conf"
    fi
}

start_db() {
    if pg_running; then return 0; fi
    chown "$PGUSER_OS" "$PGRUN" 2>/dev/null || true
    log "starting PostgreSQL on 127.0.0.1:$PG_PORT"
    as_pg "$PG_BIN/pg_ctl" -D "$PGDATA" -l "$STATE/pg/postgresql.log" -w -t 60 start >/dev/null
}

stop_db() {
    if pg_running; then
        log "stopping PostgreSQL"
        as_pg "$PG_BIN/pg_ctl" -D "$PGDATA" -m fast -w stop >/dev/null
    fi
}

init_db_role() {
    pw=$(cat "$SECRETS/db.password")
    # Idempotent: create the role and database if missing; the password comes
    # through psql's variable interpolation on stdin, never argv.
    as_pg "$PG_BIN/psql" -X -q -h "$PGRUN" -p "$PG_PORT" -U postgres -d postgres -v ON_ERROR_STOP=1 \
        -v pw="$pw" >/dev/null <<'EOF'
SELECT 'CREATE ROLE qkms LOGIN' WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'qkms')
\gexec
ALTER ROLE qkms PASSWORD :'pw';
SELECT 'CREATE DATABASE qkms OWNER qkms' WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = 'qkms')
\gexec
EOF
    printf '*:*:qkms:qkms:%s\n' "$pw" > "$SECRETS/pgpass"
    chmod 0600 "$SECRETS/pgpass"
}

init_token() {
    mkdir -p "$STATE/softhsm/tokens" "$SECRETS"
    cat > "$STATE/softhsm/softhsm2.conf" <<EOF
directories.tokendir = $STATE/softhsm/tokens
objectstore.backend = file
log.level = ERROR
slots.removable = false
EOF
    secret "$SECRETS/token.so-pin"
    secret "$SECRETS/token.pin"
    export SOFTHSM2_CONF="$STATE/softhsm/softhsm2.conf"
    # softhsm2-util pads labels with spaces to 32 characters.
    if ! softhsm2-util --show-slots 2>/dev/null | grep -q "Label:[[:space:]]*$LABEL[[:space:]]*\$"; then
        log "creating SoftHSM token '$LABEL'"
        softhsm2-util --init-token --free --label "$LABEL" \
            --so-pin "$(cat "$SECRETS/token.so-pin")" --pin "$(cat "$SECRETS/token.pin")" >/dev/null
    fi
}

init_config() {
    [ -f "$STATE/kmsd.conf" ] && return 0
    log "writing $STATE/kmsd.conf"
    cat > "$STATE/kmsd.conf" <<EOF
# kmsd configuration for the local embedded deployment (scripts/qkms-local.sh).
# Every option: docs/configuration.md. Environment QKMS_<OPTION> overrides.
listen_addr = 127.0.0.1
listen_port = $KMS_PORT
db_conninfo = "host=$PGRUN port=$PG_PORT dbname=qkms user=qkms passfile=$SECRETS/pgpass"
pkcs11_module = $SOFTHSM_MODULE
pkcs11_token_label = $LABEL
pkcs11_pin_file = $SECRETS/token.pin
bootstrap_token_file = $STATE/admin.token
log_level = info
EOF
}

init_all() {
    init_pg
    start_db
    init_db_role
    init_token
    init_config
}

case "${1:-run}" in
init)
    init_all
    ;;
start-db)
    start_db
    ;;
stop-db)
    stop_db
    ;;
status)
    if pg_running; then echo "postgresql: running"; else echo "postgresql: stopped"; fi
    ;;
run)
    init_all
    export SOFTHSM2_CONF="$STATE/softhsm/softhsm2.conf"
    command -v "$KMSD" >/dev/null 2>&1 || die "kmsd binary not found ($KMSD); run make"
    log "starting kmsd on 127.0.0.1:$KMS_PORT (admin token: $STATE/admin.token)"
    # kmsd gets SIGINT from the terminal; TERM from a supervisor is passed on.
    "$KMSD" -c "$STATE/kmsd.conf" &
    pid=$!
    trap 'kill -TERM $pid 2>/dev/null || true' TERM
    trap 'kill -INT $pid 2>/dev/null || true' INT
    rc=0
    wait $pid || rc=$?
    # wait returns early when a trapped signal arrives; wait for kmsd itself.
    while kill -0 $pid 2>/dev/null; do wait $pid || rc=$?; done
    stop_db
    exit $rc
    ;;
*)
    echo "usage: $0 run|init|start-db|stop-db|status" >&2
    exit 2
    ;;
esac
