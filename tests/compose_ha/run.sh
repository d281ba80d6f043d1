#!/bin/bash
# tests/compose_ha/run.sh — `make compose-ha-test`: the failover drills of
# docs/ha.md on the compose profile "ha" (docker/compose.ha.yaml).
#
#   1. remove what an interrupted earlier run left (project
#      $QKMS_COMPOSE_PROJECT, default qkmshatest: never the `make
#      compose-ha-up` stack, project qkms-ha);
#   2. build the images (docker/compose.sh --ha build);
#   3. bring the stack up and wait until healthy (docker/compose.sh --ha up);
#   4. tests/compose_ha/test_compose_ha.py against HAProxy's device port on
#      127.0.0.1:$QKMS_COMPOSE_HA_PORT (8480, or a free port when 8480 is
#      taken; the platform CA from kmsctl ca show --pem): the zones, then
#      the drills under tests/ha/haload's mutual-TLS load; the table goes to
#      build/compose-ha/drills.txt;
#   5. tear down with the volumes (`down -v`), whatever happened.
#
# Every stage is bounded (seconds): QKMS_COMPOSE_BUILD_TIMEOUT (1200: a cold
# build includes debootstrap and apt), QKMS_COMPOSE_UP_TIMEOUT (300),
# QKMS_COMPOSE_TEST_TIMEOUT (600). Build output goes to
# build/compose-ha/build.log (shown on failure). Arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
PYTHON=${PYTHON:-/usr/bin/python3}
LOGDIR=$ROOT/build/compose-ha
mkdir -p "$LOGDIR"

export QKMS_COMPOSE_PROJECT=${QKMS_COMPOSE_PROJECT:-qkmshatest}
# The stack as committed: a local docker/compose.ha.override.yaml is not read.
export QKMS_COMPOSE_OVERRIDE=0
if [ -z "${QKMS_COMPOSE_HA_PORT:-}" ]; then
    QKMS_COMPOSE_HA_PORT=$("$PYTHON" "$ROOT/tests/compose/free-port.py" 8480)
fi
export QKMS_COMPOSE_HA_PORT
export QKMS_COMPOSE_HA_URL=https://127.0.0.1:$QKMS_COMPOSE_HA_PORT
export QKMS_COMPOSE_HA_OUT=$LOGDIR
export QKMS_DEVICE=${QKMS_DEVICE:-$ROOT/build/release/bin/qkms-device}
export QKMS_HALOAD=${QKMS_HALOAD:-$ROOT/build/release/tests/ha/haload}
for b in "$QKMS_DEVICE" "$QKMS_HALOAD"; do
    [ -x "$b" ] || { echo "compose-ha-test: $b missing (run make compose-ha-test, which builds it)" >&2; exit 2; }
done

COMPOSE=(bash "$ROOT/docker/compose.sh" --ha)
SERVICES="init etcd pg1 pg2 pg3 qrng-sim kmsd1 kmsd2 haproxy"
start=$(date +%s)
stage_start=$start
stage() { # stage NAME: print the time the previous stage took
    local now
    now=$(date +%s)
    echo "compose-ha-test: $1 (+$(( now - stage_start ))s, total $(( now - start ))s)" >&2
    stage_start=$now
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [ $rc != 0 ]; then
        echo "compose-ha-test: FAILED (status $rc); state of project $QKMS_COMPOSE_PROJECT:" >&2
        "${COMPOSE[@]}" ps >&2 2>&1 || true
        for s in $SERVICES; do
            timeout 20 "${COMPOSE[@]}" logs "$s" >"$LOGDIR/$s.log" 2>&1 || true
        done
        for s in kmsd1 kmsd2 haproxy; do
            echo "---- $s (last 20 lines; all: $LOGDIR/$s.log)" >&2
            tail -n 20 "$LOGDIR/$s.log" >&2
        done
    fi
    timeout -k 10 240 "${COMPOSE[@]}" down -v >"$LOGDIR/down.log" 2>&1 ||
        echo "compose-ha-test: down -v failed, see $LOGDIR/down.log" >&2
    stage "down"
    echo "compose-ha-test: $( [ $rc = 0 ] && echo passed || echo failed ) in $(( $(date +%s) - start ))s" >&2
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "compose-ha-test: engine $("${COMPOSE[@]}" engine), project $QKMS_COMPOSE_PROJECT, $QKMS_COMPOSE_HA_URL" >&2
timeout -k 10 240 "${COMPOSE[@]}" down -v >"$LOGDIR/down.log" 2>&1 || true
stage "clean"
if ! timeout -k 10 "${QKMS_COMPOSE_BUILD_TIMEOUT:-1200}" "${COMPOSE[@]}" build >"$LOGDIR/build.log" 2>&1; then
    tail -n 40 "$LOGDIR/build.log" >&2
    echo "compose-ha-test: build failed or took too long (log: $LOGDIR/build.log)" >&2
    exit 1
fi
stage "images built"
timeout -k 10 "${QKMS_COMPOSE_UP_TIMEOUT:-300}" "${COMPOSE[@]}" up --no-build 2>"$LOGDIR/up.log" || {
    grep -v '^\[\|^podman \|systemd connection\|syslog' "$LOGDIR/up.log" | tail -n 40 >&2
    echo "compose-ha-test: up failed or took too long (log: $LOGDIR/up.log)" >&2
    exit 1
}
stage "stack healthy"
# The platform CA: the issuer of both kmsd's server certificates, which the
# host's clients verify (haload and qkms-device: --cacert; requests: verify=).
"${COMPOSE[@]}" kmsctl ca show --pem > "$LOGDIR/ca.pem"
export QKMS_COMPOSE_HA_CA=$LOGDIR/ca.pem
timeout -k 10 "${QKMS_COMPOSE_TEST_TIMEOUT:-600}" \
    "$PYTHON" -m pytest -q -p no:cacheprovider -rs -s tests/compose_ha "$@"
stage "tests done"
