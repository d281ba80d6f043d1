#!/bin/bash
# Entrypoint of the postgres service (docker/postgres.Dockerfile). Starts as
# root, only to prepare the data directory and read the password file; the
# server runs as the postgres user.
#
#  1. wait for the password file the init service writes (QKMS_DB_PASSWORD_FILE,
#     default /run/qkms/db/db.password; at most QKMS_DB_WAIT_SECONDS);
#  2. first start: initdb (superuser postgres, peer auth on the socket only;
#     TCP: role qkms, database qkms, scram-sha-256);
#  3. when the password differs from the one last applied (a hash is kept in
#     the data directory): a socket-only temporary server creates the role
#     and the database if missing and sets the password;
#  4. exec postgres, listening on the compose network.
set -euo pipefail
umask 077

PGDATA=${PGDATA:-/var/lib/postgresql/data}
PWFILE=${QKMS_DB_PASSWORD_FILE:-/run/qkms/db/db.password}
PGBIN=/usr/lib/postgresql/15/bin

log() { printf '{"ts":"%s","level":"%s","msg":"%s","component":"postgres-entrypoint"}\n' \
    "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$1" "$2" >&2; }
as_pg() { setpriv --reuid=postgres --regid=postgres --init-groups -- "$@"; }

deadline=$(( $(date +%s) + ${QKMS_DB_WAIT_SECONDS:-120} ))
until [ -s "$PWFILE" ]; do
    if [ "$(date +%s)" -ge "$deadline" ]; then
        log error "no password file $PWFILE (is the init service done?)"
        exit 1
    fi
    sleep 0.5
done
pw=$(cat "$PWFILE")
# The password goes into SQL on psql's stdin; it must not need quoting.
[[ $pw =~ ^[A-Za-z0-9._~+/=-]{16,}$ ]] || { log error "$PWFILE: want 16+ characters of [A-Za-z0-9._~+/=-]"; exit 1; }

install -d -o postgres -g postgres -m 2775 /run/postgresql
[ -d "$PGDATA" ] || install -d -m 0700 "$PGDATA"
if [ "$(stat -c %U "$PGDATA")" != postgres ]; then
    chown postgres:postgres "$PGDATA"
fi
chmod 0700 "$PGDATA"

if ! as_pg test -s "$PGDATA/PG_VERSION"; then
    log info "creating the PostgreSQL cluster in $PGDATA"
    as_pg "$PGBIN/initdb" -D "$PGDATA" -U postgres --auth-local=peer --auth-host=scram-sha-256 \
        -E UTF8 --locale=C.UTF-8 >/dev/null
    as_pg tee -a "$PGDATA/postgresql.conf" >/dev/null <<'CONF'
# qkms compose
listen_addresses = '*'
port = 5432
unix_socket_directories = '/run/postgresql'
max_connections = 100
password_encryption = scram-sha-256
logging_collector = off
log_min_messages = warning
log_connections = off
CONF
    # Only the qkms role, only to the qkms database, only with its password;
    # the superuser only through the socket as the OS user postgres.
    as_pg tee "$PGDATA/pg_hba.conf" >/dev/null <<'HBA'
local   all    postgres                peer
host    qkms   qkms       all          scram-sha-256
HBA
fi

hash=$(printf '%s' "$pw" | sha256sum | cut -d' ' -f1)
if [ "$(as_pg cat "$PGDATA/qkms-password.sha256" 2>/dev/null || true)" != "$hash" ]; then
    log info "applying the qkms role, database and password"
    as_pg "$PGBIN/pg_ctl" -D "$PGDATA" -o "-c listen_addresses=''" -w -t 60 -s start >/dev/null
    as_pg "$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -h /run/postgresql -U postgres -d postgres >/dev/null <<SQL
SELECT 'CREATE ROLE qkms LOGIN' WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'qkms')
\gexec
ALTER ROLE qkms PASSWORD '$pw';
SELECT 'CREATE DATABASE qkms OWNER qkms' WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = 'qkms')
\gexec
SQL
    as_pg "$PGBIN/pg_ctl" -D "$PGDATA" -m fast -w -t 60 -s stop >/dev/null
    printf '%s\n' "$hash" | as_pg tee "$PGDATA/qkms-password.sha256" >/dev/null
fi
unset pw hash

log info "starting PostgreSQL"
exec setpriv --reuid=postgres --regid=postgres --init-groups -- "$PGBIN/postgres" -D "$PGDATA"
