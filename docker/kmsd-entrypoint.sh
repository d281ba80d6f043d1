#!/bin/bash
# Entrypoint of the kmsd service (docker/compose.yaml).
#
# Waits for the files the init service creates (KMSD_WAIT_FILES, space
# separated; at most KMSD_WAIT_SECONDS), because not every compose engine
# honours `depends_on: condition: service_completed_successfully`; then execs
# kmsd. kmsd itself waits up to 60 s for PostgreSQL.
#
# Configuration is the QKMS_* environment (docs/configuration.md); a file
# mounted at /etc/qkms/kmsd.conf (or named by KMSD_CONFIG) is read first and
# the environment overrides it. Arguments are passed to kmsd.
set -euo pipefail

deadline=$(( $(date +%s) + ${KMSD_WAIT_SECONDS:-120} ))
for f in ${KMSD_WAIT_FILES:-}; do
    while [ ! -e "$f" ]; do
        if [ "$(date +%s)" -ge "$deadline" ]; then
            printf '{"ts":"%s","level":"error","msg":"waited too long for %s (is the init service done?)","component":"kmsd-entrypoint"}\n' \
                "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$f" >&2
            exit 1
        fi
        sleep 0.5
    done
done

conf=${KMSD_CONFIG:-/etc/qkms/kmsd.conf}
if [ -f "$conf" ]; then
    exec /usr/local/bin/kmsd -c "$conf" "$@"
fi
exec /usr/local/bin/kmsd "$@"
