#!/bin/sh
# The one list of Debian packages qkms needs to build, run and test.
# Used by the README, .ci/run and the Dockerfiles. Run as root.
#   scripts/deps.sh            build + run + test packages
#   scripts/deps.sh --print    print the package list and exit
#   scripts/deps.sh --with-recommends PKG...
#                              install these packages instead, recommends
#                              included (scripts/container-deps.sh)
set -eu

BUILD="build-essential pkg-config libmicrohttpd-dev libgnutls28-dev libjansson-dev libpq-dev libssl-dev
libcurl4-openssl-dev libp11-kit-dev"
RUN="postgresql-15 postgresql-client-15 softhsm2 opensc ca-certificates"
TEST="libcmocka-dev python3 python3-pytest python3-requests python3-cryptography python3-pykcs11
python3-psycopg2 python3-jsonschema python3-yaml procps prometheus man-db python3-matplotlib"
# prometheus: for promtool, which checks the metrics, the alert rules and their tests (the
# package is ~100 MB and, on a systemd host, also starts a Prometheus server)
# man-db: `man -l` renders the manual pages in the tests; python3-matplotlib: the plot
# make bench draws (bench/plot.py), and its test
# make fuzz: libFuzzer targets built with clang (fuzz/README.md)
FUZZ="clang-14 libfuzzer-14-dev"
# make ha-test (docs/ha.md): Patroni with its etcd client, etcd, HAProxy, and nftables for
# the partition drill (on a systemd host the etcd-server and haproxy packages also start
# their own services on the default ports; the drills use free ports of their own)
HA="patroni python3-etcd etcd-server haproxy nftables"

PKGS="$BUILD $RUN $TEST $FUZZ $HA"
RECOMMENDS=--no-install-recommends
if [ "${1:-}" = "--print" ]; then echo $PKGS; exit 0; fi
if [ "${1:-}" = "--with-recommends" ]; then shift; PKGS="$*"; RECOMMENDS=; fi

missing=""
for p in $PKGS; do
    dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -z "$missing" ]; then echo "deps: all packages present"; exit 0; fi
if [ "$(id -u)" != 0 ]; then echo "deps: missing:$missing (run as root: scripts/deps.sh)" >&2; exit 1; fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# shellcheck disable=SC2086
apt-get install -y -qq $RECOMMENDS $missing
