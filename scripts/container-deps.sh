#!/bin/sh
# Container tooling for `make compose-test` / `make compose-up` on a Debian 12
# machine without Docker: podman, podman-compose, runc and debootstrap (for the
# local base image, docker/base-image.sh). Run as root. Idempotent.
#
# Where `docker compose` already answers, nothing is installed: docker/compose.sh
# prefers it.
#
# /etc/containers/containers.conf is written only when absent: runc instead of
# crun and explicit ulimits, because some sandboxes (ours among them) refuse
# crun and podman's default ulimits. An existing file is left alone.
set -eu

if docker compose version >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
    echo "container-deps: docker compose present; nothing to install"
    exit 0
fi

# Recommends are kept on purpose: aardvark-dns (container name resolution on
# compose networks), catatonit (init), slirp4netns come in as recommends.
sh "$(dirname "$0")/deps.sh" --with-recommends podman podman-compose runc debootstrap

conf=/etc/containers/containers.conf
if [ ! -e "$conf" ]; then
    if [ "$(id -u)" != 0 ]; then
        echo "container-deps: $conf absent (run as root to write it)" >&2
        exit 1
    fi
    mkdir -p /etc/containers
    cat > "$conf" <<'CONF'
# Written by qkms scripts/container-deps.sh.
[containers]
default_ulimits = ["nofile=16384:16384", "nproc=16384:16384"]

[engine]
runtime = "runc"
CONF
    echo "container-deps: wrote $conf"
fi
podman --version
