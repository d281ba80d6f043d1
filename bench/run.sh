#!/bin/sh
# make bench — throughput and latency of kmsd on this machine, bounded in time.
# Starts its own stack (PostgreSQL + SoftHSM token + release kmsd) in a
# temporary state dir on free loopback ports, drives it with bench/loadgen,
# and prints one line per run plus ratios. BENCH_SECONDS (default 5) bounds
# each run; BENCH_THREADING=both also measures the other MHD threading model.
set -eu
ROOT=$(cd "$(dirname "$0")/.." && pwd)
KMSD=${QKMS_KMSD:-$ROOT/build/release/bin/kmsd}
SECS=${BENCH_SECONDS:-5}
OUT=$ROOT/build/bench
mkdir -p "$OUT"
KMSCTL=${QKMS_KMSCTL:-$ROOT/build/release/bin/kmsctl}
BENCH_DEVICES=${BENCH_DEVICES:-10000}
cc -O2 -Wall -Wextra -Werror -std=c17 -D_GNU_SOURCE -pthread "$ROOT/bench/loadgen.c" -o "$OUT/loadgen"
cc -O2 -Wall -Wextra -Werror -std=c17 -D_GNU_SOURCE -pthread -I"$ROOT/pkcs11" $(pkg-config --cflags p11-kit-1) \
    "$ROOT/bench/unwrap_bench.c" "$ROOT/build/release/libqkms-p11.a" -lcrypto -ldl -o "$OUT/unwrap_bench"

STATE=$(mktemp -d /tmp/qkms-bench-XXXXXX)
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
export QKMS_STATE="$STATE" QKMS_PG_PORT=$(port) QKMS_PORT=$(port)
export SOFTHSM2_CONF="$STATE/softhsm/softhsm2.conf"
PID=
cleanup() {
    [ -n "$PID" ] && kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null || true
    sh "$ROOT/scripts/qkms-local.sh" stop-db >/dev/null 2>&1 || true
    rm -rf "$STATE"
}
trap cleanup EXIT INT TERM
sh "$ROOT/scripts/qkms-local.sh" init 2>/dev/null

start_kmsd() { # threading
    QKMS_HTTP_THREADING=$1 QKMS_LOG_LEVEL=warn "$KMSD" -c "$STATE/kmsd.conf" 2>>"$STATE/kmsd.log" &
    PID=$!
    for _ in $(seq 1 100); do
        curl -sf "http://127.0.0.1:$QKMS_PORT/readyz" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    echo "bench: kmsd did not become ready" >&2; cat "$STATE/kmsd.log" >&2; exit 1
}
stop_kmsd() { kill "$PID"; wait "$PID" || true; PID=; }

TOKEN=
run_model() { # threading
    start_kmsd "$1"
    TOKEN=$(cat "$STATE/admin.token")
    for c in 1 16 64; do
        "$OUT/loadgen" -p "$QKMS_PORT" -c $c -s "$SECS" -N "healthz/$1" /healthz
        "$OUT/loadgen" -p "$QKMS_PORT" -c $c -s "$SECS" -N "admin_status/$1" \
            -H "Authorization: Bearer $TOKEN" /v1/admin/status
    done
    stop_kmsd
}

# Registering devices through the import path (kmsctl device import, batches
# of 500): N devices with 4 keys each, every key from the entropy interface
# and wrapped in the token.
bench_import() {
    start_kmsd connection
    csv="$STATE/devices.csv"
    awk -v n="$BENCH_DEVICES" 'BEGIN { print "device_id,type,group,keys"
        for (i = 0; i < n; i++) printf "BENCH-%06d,%s,bench,4\n", i, (i % 2 ? "vehicle" : "encryptor") }' > "$csv"
    t0=$(date +%s.%N)
    KMS_ADDR="http://127.0.0.1:$QKMS_PORT" KMS_TOKEN_FILE="$STATE/admin.token" \
        "$KMSCTL" --timeout 600 device import "$csv" >/dev/null
    t1=$(date +%s.%N)
    awk -v n="$BENCH_DEVICES" -v a="$t0" -v b="$t1" \
        'BEGIN { printf "name=import devices=%d keys=%d seconds=%.2f devices_per_s=%.0f keys_per_s=%.0f\n", n, 4*n, b-a, n/(b-a), 4*n/(b-a) }'
    # One device record (auth + device + keys queries) as a request-path proxy.
    "$OUT/loadgen" -p "$QKMS_PORT" -c 16 -s "$SECS" -N "device_get" \
        -H "Authorization: Bearer $(cat "$STATE/admin.token")" /v1/admin/devices/BENCH-000042
    stop_kmsd
    "$OUT/unwrap_bench" /usr/lib/softhsm/libsofthsm2.so qkms "$STATE/secrets/token.pin" 1 "$SECS"
    "$OUT/unwrap_bench" /usr/lib/softhsm/libsofthsm2.so qkms "$STATE/secrets/token.pin" 4 "$SECS"
}

echo "# kmsd benchmark: $(nproc) cores, ${SECS}s per run, loopback, release build"
bench_import | tee "$OUT/import.txt"
run_model connection | tee "$OUT/results.txt"
if [ "${BENCH_THREADING:-}" = both ]; then run_model pool | tee -a "$OUT/results.txt"; fi
# Floor: an empty handler (/healthz) bounds what any route can do; the ratio
# says how much of that the first database-backed route keeps.
awk '/^name=healthz\/connection conc=16 /{for(i=1;i<=NF;i++) if($i ~ /^rps=/){split($i,a,"="); h=a[2]}}
     /^name=admin_status\/connection conc=16 /{for(i=1;i<=NF;i++) if($i ~ /^rps=/){split($i,a,"="); s=a[2]}}
     END { if (h > 0) printf "summary: admin_status_rps=%d empty_handler_rps=%d ratio=%.2f\n", s, h, s/h }' "$OUT/results.txt"
