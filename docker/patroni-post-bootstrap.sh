#!/bin/bash
# Patroni's post_bootstrap script in the compose profile "ha": run once, as
# the postgres user, on the node that has just initialised the cluster (the
# other nodes clone it, roles and databases included). Creates the role qkms
# with the password the init service generated (copied by
# docker/patroni-entrypoint.sh to /run/patroni/db.password, postgres 0400)
# and its database; kmsd applies the schema. Patroni passes a connection URL
# as the argument; the local socket with peer authentication is used
# instead, so no password of the superuser is needed here.
#
# The password is set at bootstrap only: rotate it with ALTER ROLE on the
# primary (it replicates), then the db-secret volume's files.
set -euo pipefail

pw=$(cat /run/patroni/db.password)
[[ $pw =~ ^[A-Za-z0-9._~+/=-]{16,}$ ]] || { echo "post-bootstrap: unusable password" >&2; exit 1; }
# On stdin, not in an argument: no other process of the container sees it.
psql -X -q -v ON_ERROR_STOP=1 -h /run/postgresql -p 5432 -U postgres -d postgres >/dev/null <<SQL
SELECT 'CREATE ROLE qkms LOGIN' WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'qkms')
\gexec
ALTER ROLE qkms PASSWORD '$pw';
SELECT 'CREATE DATABASE qkms OWNER qkms' WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = 'qkms')
\gexec
SQL
echo "post-bootstrap: role and database qkms ready" >&2
