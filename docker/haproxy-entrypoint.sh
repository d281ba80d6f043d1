#!/bin/bash
# Entrypoint of the haproxy service of docker/compose.ha.yaml
# (docker/haproxy.Dockerfile). HAProxy is on both networks: the devices'
# (frontend) for kmsd's device port, the backend to reach kmsd and the
# PostgreSQL nodes. Its PostgreSQL port must answer on the backend network
# only, so it binds the address from which this container reaches
# QKMS_HAPROXY_DB_PEER (default etcd: a host of the backend network alone,
# started first): the source address of the route to it, which must be on a
# network of this container (no gateway between). Compose engines differ in
# how they pin addresses, so it is found at each start. When the peer cannot
# be found in time, the PostgreSQL port binds 127.0.0.1 (inside the
# container only) and says so: devices are served either way.
# QKMS_HAPROXY_PG_ADDR, when set, wins.
set -euo pipefail

log() { # level msg
    printf '{"ts":"%s","level":"%s","msg":"%s","component":"haproxy-entrypoint"}\n' \
        "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$1" "$2" >&2
}

if [ -z "${QKMS_HAPROXY_PG_ADDR:-}" ]; then
    peer_name=${QKMS_HAPROXY_DB_PEER:-etcd}
    addr='' route=''
    deadline=$(( $(date +%s) + ${QKMS_HAPROXY_PEER_WAIT:-60} ))
    while :; do
        peer=$(getent ahostsv4 "$peer_name" | awk 'NR == 1 { print $1 }') || peer=
        if [ -n "$peer" ]; then
            route=$(ip -4 -o route get "$peer" 2>/dev/null) || route=
            addr=$(printf '%s\n' "$route" | sed -n 's/.* src \([0-9.]*\).*/\1/p')
        fi
        [ -n "$addr" ] && break
        [ "$(date +%s)" -lt "$deadline" ] || break
        sleep 0.5
    done
    case "$route" in
        *" via "*) addr= ;;
    esac
    if [ -z "$addr" ]; then
        log warn "cannot find the address facing $peer_name: the PostgreSQL port binds 127.0.0.1 only"
        addr=127.0.0.1
    fi
    export QKMS_HAPROXY_PG_ADDR=$addr
fi
log info "PostgreSQL primary port on $QKMS_HAPROXY_PG_ADDR:5432, kmsd device port on 0.0.0.0:8470"
exec /usr/sbin/haproxy -db -f /etc/haproxy/haproxy.cfg "$@"
