#!/bin/bash
# Entrypoint of the PostgreSQL nodes pg1, pg2, pg3 of docker/compose.ha.yaml
# (docker/patroni.Dockerfile). Starts as root, only to prepare the data and
# run directories and read the password files; Patroni and PostgreSQL run as
# the postgres user.
#
#  1. wait for the files the init service writes (at most
#     QKMS_DB_WAIT_SECONDS): the qkms role's password (db-secret volume) and
#     the superuser's and replication role's (patroni-secret volume), none
#     readable by anyone but root;
#  2. render Patroni's configuration (docker/patroni-render.py, through
#     tests/ha/patroni_conf.py, with this container's address on the
#     backend network, where etcd is) into the tmpfs /run/patroni, readable
#     by the postgres user only, with the qkms password beside it for the
#     post-bootstrap script (docker/patroni-post-bootstrap.sh: the node that
#     initialises the cluster creates the qkms role and database with it);
#  3. exec Patroni as postgres. It initialises the cluster (the first node
#     to take the leader key in etcd) or clones the primary (the others),
#     and keeps the roles: one primary, one synchronous standby, in strict
#     mode (docs/ha.md). A stop (SIGTERM) shuts PostgreSQL down and hands
#     the leader key over.
#
# Environment: PATRONI_NODE (required: the service name), PATRONI_SCOPE
# (default qkms), PATRONI_ETCD (default etcd:2379), PATRONI_ADDRESS (default:
# the address facing etcd).
set -euo pipefail
umask 077

export PATRONI_NODE=${PATRONI_NODE:?set PATRONI_NODE to the service name (pg1, pg2, pg3)}
export PATRONI_SECRETS=${PATRONI_SECRETS:-/run/qkms/patroni}
export PATRONI_RUN=/run/patroni
export PATRONI_DATA=/var/lib/postgresql/patroni/data
DBPW=${QKMS_DB_PASSWORD_FILE:-/run/qkms/db/db.password}
LIB=/usr/local/lib/qkms

log() { printf '{"ts":"%s","level":"%s","msg":"%s","component":"patroni-entrypoint","node":"%s"}\n' \
    "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$1" "$2" "$PATRONI_NODE" >&2; }

deadline=$(( $(date +%s) + ${QKMS_DB_WAIT_SECONDS:-120} ))
for f in "$DBPW" "$PATRONI_SECRETS/superuser.password" "$PATRONI_SECRETS/replication.password"; do
    until [ -s "$f" ]; do
        if [ "$(date +%s)" -ge "$deadline" ]; then
            log error "no $f (is the init service done?)"
            exit 1
        fi
        sleep 0.5
    done
done
pw=$(cat "$DBPW")
# The post-bootstrap script puts it into SQL: it must not need quoting.
[[ $pw =~ ^[A-Za-z0-9._~+/=-]{16,}$ ]] || { log error "$DBPW: want 16+ characters of [A-Za-z0-9._~+/=-]"; exit 1; }

install -d -o postgres -g postgres -m 2775 /run/postgresql
install -d -o postgres -g postgres -m 0700 "$PATRONI_RUN" /var/lib/postgresql/patroni
# A data directory left by an earlier start keeps its owner and mode
# (PostgreSQL refuses a group- or world-readable one).
if [ -d "$PATRONI_DATA" ]; then
    chown postgres:postgres "$PATRONI_DATA"
    chmod 0700 "$PATRONI_DATA"
fi

# Written as root (only root reads the secrets), then handed to postgres.
conf=$PATRONI_RUN/patroni.yml
python3 "$LIB/patroni-render.py" > "$conf.tmp"
printf '%s\n' "$pw" > "$PATRONI_RUN/db.password"
unset pw
chown postgres:postgres "$conf.tmp" "$PATRONI_RUN/db.password"
chmod 0400 "$PATRONI_RUN/db.password"
chmod 0600 "$conf.tmp"
mv "$conf.tmp" "$conf"

log info "starting Patroni (scope ${PATRONI_SCOPE:-qkms}, etcd ${PATRONI_ETCD:-etcd:2379})"
cd /var/lib/postgresql/patroni
exec setpriv --reuid=postgres --regid=postgres --init-groups -- /usr/bin/patroni "$conf"
