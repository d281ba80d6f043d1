#!/bin/sh
# docker/base-image.sh — build the local Debian 12 (bookworm) base image the
# qkms Dockerfiles start FROM, for machines that reach a Debian mirror but no
# image registry:
#
#   debootstrap --variant=minbase bookworm ROOTFS  ->  tar | ENGINE import - IMAGE
#
# Idempotent: nothing is done when IMAGE already exists (QKMS_BASE_REBUILD=1
# forces a rebuild). Run as root (debootstrap needs it).
#
# Where a registry is reachable this script is not needed: every Dockerfile
# starts with
#     ARG BASE=localhost/qkms-debian:bookworm
#     FROM ${BASE}
# so `QKMS_BASE=debian:bookworm docker compose build` (compose passes QKMS_BASE
# as the BASE build argument), or `docker build --build-arg BASE=debian:bookworm`,
# uses the official image unchanged.
#
# Environment:
#   QKMS_BASE       image name (default localhost/qkms-debian:bookworm)
#   CONTAINER_ENGINE  podman or docker (default: podman if present, else docker)
#   DEBIAN_MIRROR   (default http://deb.debian.org/debian)
#   DEBIAN_SECURITY_MIRROR (default http://deb.debian.org/debian-security)
set -eu

IMAGE=${QKMS_BASE:-localhost/qkms-debian:bookworm}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SECURITY=${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
if [ -z "${CONTAINER_ENGINE:-}" ]; then
    if command -v podman >/dev/null 2>&1; then CONTAINER_ENGINE=podman; else CONTAINER_ENGINE=docker; fi
fi
ENGINE=$CONTAINER_ENGINE

log() { echo "base-image: $*" >&2; }

if [ "${QKMS_BASE_REBUILD:-0}" != 1 ] && $ENGINE image inspect "$IMAGE" >/dev/null 2>&1; then
    log "$IMAGE exists (QKMS_BASE_REBUILD=1 to rebuild)"
    exit 0
fi
[ "$(id -u)" = 0 ] || { log "run as root (debootstrap)"; exit 1; }
command -v debootstrap >/dev/null 2>&1 || { log "debootstrap missing: apt-get install -y debootstrap"; exit 1; }

ROOTFS=$(mktemp -d /var/tmp/qkms-base.XXXXXX)
trap 'rm -rf "$ROOTFS"' EXIT INT TERM
log "debootstrap --variant=minbase bookworm ($MIRROR)"
debootstrap --variant=minbase bookworm "$ROOTFS" "$MIRROR" >"$ROOTFS.log" 2>&1 || {
    tail -n 30 "$ROOTFS.log" >&2; rm -f "$ROOTFS.log"; exit 1; }
rm -f "$ROOTFS.log"

# The same apt sources as the official image (updates and security included),
# and the official image's container-friendly apt settings.
rm -f "$ROOTFS/etc/apt/sources.list"
cat > "$ROOTFS/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $MIRROR
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $SECURITY
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
cat > "$ROOTFS/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
printf 'Acquire::GzipIndexes "true";\nAcquire::CompressionTypes::Order:: "gz";\n' \
    > "$ROOTFS/etc/apt/apt.conf.d/docker-gzip-indexes"
printf 'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n' \
    > "$ROOTFS/etc/apt/apt.conf.d/docker-no-recommends"
# No services start inside an image build.
printf '#!/bin/sh\nexit 101\n' > "$ROOTFS/usr/sbin/policy-rc.d"
chmod 0755 "$ROOTFS/usr/sbin/policy-rc.d"
rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/*.bin \
       "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/log/* "$ROOTFS"/tmp/* 2>/dev/null || true
# The host's identity stays out of the image.
: > "$ROOTFS/etc/hostname"
: > "$ROOTFS/etc/resolv.conf"

log "importing as $IMAGE"
tar --numeric-owner -C "$ROOTFS" -c . |
    $ENGINE import --change 'CMD ["/bin/bash"]' --change 'ENV LANG=C.UTF-8' - "$IMAGE" >/dev/null
log "done: $IMAGE"
