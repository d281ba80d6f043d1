#!/bin/bash
# Entrypoint of the etcd service of docker/compose.ha.yaml (the image of
# docker/patroni.Dockerfile): one etcd member, Patroni's DCS (leader key and
# cluster configuration), data in the volume "etcd". Starts as root only to
# give the volume to the etcd user; etcd runs as that user.
#
# One member, as in the loopback drills (make ha-test): the drills restart
# it (failsafe_mode keeps the primary meanwhile). On real hosts run three or
# five (docs/ha.md, "Running it on real hosts"). Clients reach it as
# etcd:2379 on the backend network; the peer port stays on loopback.
set -euo pipefail
umask 077

DATA=/var/lib/etcd
chown etcd:etcd "$DATA"
chmod 0700 "$DATA"
exec setpriv --reuid=etcd --regid=etcd --init-groups -- /usr/bin/etcd \
    --name e1 --data-dir "$DATA/data" \
    --listen-client-urls http://0.0.0.0:2379 --advertise-client-urls http://etcd:2379 \
    --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
    --initial-cluster e1=http://127.0.0.1:2380 \
    --logger zap --log-outputs stderr --log-level warn
