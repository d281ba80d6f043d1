#!/bin/bash
# Entrypoint of the kmsd service (docker/compose.yaml).
#
# Waits for the files the init service creates (KMSD_WAIT_FILES, space
# separated; at most KMSD_WAIT_SECONDS), because not every compose engine
# honours `depends_on: condition: service_completed_successfully`; then execs
# kmsd. kmsd itself waits up to 60 s for PostgreSQL. With KMSD_METRICS_PEER
# it first finds the metrics listener's address (below).
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

# The metrics listener on the network from which this container reaches
# KMSD_METRICS_PEER (a host of the monitoring network: compose.yaml names
# postgres, on the backend network with Prometheus), so that the devices'
# network never reaches it: the source address of the route to the peer,
# which must be on a network of this container (no gateway between). When
# the peer cannot be found in time (PostgreSQL down, a DNS stall) kmsd starts
# without the metrics listener, says so, and Prometheus sees it down
# (QkmsDown) rather than kmsd not starting at all.
# QKMS_METRICS_LISTEN_ADDR, when set, wins.
log() { # level msg
    printf '{"ts":"%s","level":"%s","msg":"%s","component":"kmsd-entrypoint"}\n' \
        "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$1" "$2" >&2
}
if [ -n "${KMSD_METRICS_PEER:-}" ] && [ -z "${QKMS_METRICS_LISTEN_ADDR:-}" ]; then
    addr= route=
    peer_deadline=$(( $(date +%s) + ${KMSD_METRICS_PEER_WAIT:-60} ))
    while :; do
        peer=$(getent ahostsv4 "$KMSD_METRICS_PEER" | awk 'NR == 1 { print $1 }') || peer=
        if [ -n "$peer" ]; then
            route=$(ip -4 -o route get "$peer" 2>/dev/null) || route=
            addr=$(printf '%s\n' "$route" | sed -n 's/.* src \([0-9.]*\).*/\1/p')
        fi
        [ -n "$addr" ] && break
        [ "$(date +%s)" -lt "$peer_deadline" ] || break
        sleep 0.5
    done
    case "$route" in
        *" via "*)
            log warn "$KMSD_METRICS_PEER is reached through a gateway: no metrics listener (set QKMS_METRICS_LISTEN_ADDR)"
            ;;
        *)
            if [ -n "$addr" ]; then
                export QKMS_METRICS_LISTEN_ADDR=$addr
            else
                log warn "cannot find the address facing $KMSD_METRICS_PEER: no metrics listener until kmsd restarts"
            fi
            ;;
    esac
fi

conf=${KMSD_CONFIG:-/etc/qkms/kmsd.conf}
if [ -f "$conf" ]; then
    exec /usr/local/bin/kmsd -c "$conf" "$@"
fi
exec /usr/local/bin/kmsd "$@"
