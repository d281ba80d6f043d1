#!/bin/bash
# tests/compose/run.sh — `make compose-test`: the compose stack end to end.
#
#   1. remove what an interrupted earlier run left (project $QKMS_COMPOSE_PROJECT,
#      default qkmstest: never the `make compose-up` stack, project qkms);
#   2. build the images (docker/compose.sh build: base image, compose build);
#   3. bring the stack up and wait until healthy (docker/compose.sh up);
#   4. tests/compose/test_compose.py against https://127.0.0.1:$QKMS_COMPOSE_PORT
#      (8470, or a free port when 8470 is taken; the platform CA from kmsctl
#      ca show --pem as the server's issuer): paired sessions over mutual TLS
#      with the host's qkms-device and the Python client, kmsctl in the kmsd container
#      (admin socket), the zones (from the devices' network only the device
#      port answers), PostgreSQL restarted under load, kmsd restarted (keys
#      survive), the QRNG down (kmsd fails closed), the demo profile;
#   5. tear down with the volumes (`down -v`), whatever happened.
#
# Every stage is bounded (seconds): QKMS_COMPOSE_BUILD_TIMEOUT (1200: a cold
# build includes debootstrap and apt), QKMS_COMPOSE_UP_TIMEOUT (240),
# QKMS_COMPOSE_TEST_TIMEOUT (600). Build output goes to
# build/compose-test/build.log (shown on failure). Arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
PYTHON=${PYTHON:-/usr/bin/python3}
LOGDIR=$ROOT/build/compose-test
mkdir -p "$LOGDIR"

export QKMS_COMPOSE_PROJECT=${QKMS_COMPOSE_PROJECT:-qkmstest}
# The stack as committed: a local docker/compose.override.yaml is not read.
export QKMS_COMPOSE_OVERRIDE=0
if [ -z "${QKMS_COMPOSE_PORT:-}" ]; then
    QKMS_COMPOSE_PORT=$("$PYTHON" "$ROOT/tests/compose/free-port.py" 8470)
fi
export QKMS_COMPOSE_PORT
export QKMS_COMPOSE_URL=https://127.0.0.1:$QKMS_COMPOSE_PORT
export QKMS_KMSCTL=${QKMS_KMSCTL:-$ROOT/build/release/bin/kmsctl}
export QKMS_DEVICE=${QKMS_DEVICE:-$ROOT/build/release/bin/qkms-device}
for b in "$QKMS_KMSCTL" "$QKMS_DEVICE"; do
    [ -x "$b" ] || { echo "compose-test: $b missing (run make)" >&2; exit 2; }
done

COMPOSE=(bash "$ROOT/docker/compose.sh")
start=$(date +%s)
stage_start=$start
stage() { # stage NAME: print the time the previous stage took
    local now
    now=$(date +%s)
    echo "compose-test: $1 (+$(( now - stage_start ))s, total $(( now - start ))s)" >&2
    stage_start=$now
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [ $rc != 0 ]; then
        echo "compose-test: FAILED (status $rc); state of project $QKMS_COMPOSE_PROJECT:" >&2
        "${COMPOSE[@]}" ps >&2 2>&1 || true
        for s in kmsd postgres qrng-sim init demo-setup vehicle encryptor; do
            timeout 20 "${COMPOSE[@]}" logs "$s" >"$LOGDIR/$s.log" 2>&1 || true
        done
        for s in kmsd postgres; do
            echo "---- $s (last 30 lines; all: $LOGDIR/$s.log)" >&2
            tail -n 30 "$LOGDIR/$s.log" >&2
        done
    fi
    timeout -k 10 180 "${COMPOSE[@]}" down -v >"$LOGDIR/down.log" 2>&1 ||
        echo "compose-test: down -v failed, see $LOGDIR/down.log" >&2
    echo "compose-test: $( [ $rc = 0 ] && echo passed || echo failed ) in $(( $(date +%s) - start ))s" >&2
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "compose-test: engine $("${COMPOSE[@]}" engine), project $QKMS_COMPOSE_PROJECT, $QKMS_COMPOSE_URL" >&2
timeout -k 10 180 "${COMPOSE[@]}" down -v >"$LOGDIR/down.log" 2>&1 || true
stage "clean"
if ! timeout -k 10 "${QKMS_COMPOSE_BUILD_TIMEOUT:-1200}" "${COMPOSE[@]}" build >"$LOGDIR/build.log" 2>&1; then
    tail -n 40 "$LOGDIR/build.log" >&2
    echo "compose-test: build failed or took too long (log: $LOGDIR/build.log)" >&2
    exit 1
fi
stage "images built"
timeout -k 10 "${QKMS_COMPOSE_UP_TIMEOUT:-240}" "${COMPOSE[@]}" up --no-build 2>"$LOGDIR/up.log" || {
    grep -v '^\[\|^podman \|systemd connection\|syslog' "$LOGDIR/up.log" | tail -n 40 >&2
    echo "compose-test: up failed or took too long (log: $LOGDIR/up.log)" >&2
    exit 1
}
stage "stack healthy"
# The platform CA: the issuer of kmsd's server certificate, which the host's
# clients verify (python3-requests through REQUESTS_CA_BUNDLE).
"${COMPOSE[@]}" kmsctl ca show --pem > "$LOGDIR/ca.pem"
export QKMS_COMPOSE_CA=$LOGDIR/ca.pem REQUESTS_CA_BUNDLE=$LOGDIR/ca.pem
timeout -k 10 "${QKMS_COMPOSE_TEST_TIMEOUT:-600}" \
    "$PYTHON" -m pytest -q -p no:cacheprovider -rs tests/compose "$@"
stage "tests done"
