#!/bin/sh
# make bench — throughput and latency of kmsd on this machine, bounded in time.
# Starts its own stack (PostgreSQL + SoftHSM token + release kmsd) in a
# temporary state dir on free loopback ports and prints one line per run.
#   BENCH_SECONDS   seconds per run (default 5)
#   BENCH_DEVICES   devices for the import benchmark (default 10000)
#   BENCH_THREADING=both   also measure MHD's pool threading model
#   BENCH_PARTS     which parts: "import http entropy tls v2 etsi crypto sessions" (default all),
#                   or "scale" (minutes: see bench_scale below), or "pgmodes"
#                   (group commit: batch call against pipeline mode, pgbench), or "ab"
#                   (BENCH_AB="a.sql b.sql": two SQL variants in one stack, turn about), or "ha"
#                   (bench/ha_bench.py: deliveries on the Patroni cluster of docs/ha.md with
#                   the synchronous standby and without; BENCH_HA_ROUNDS, default 2)
#   BENCH_SCALE_DEVICES  devices registered by the scale part (default 1000000)
#   BENCH_SCALE_SESSIONS open sessions added by it (default 100000)
#   BENCH_SCALE_EXPIRED  expired sessions it gives the reaper (default 50000)
#   BENCH_PG_SETTINGS    extra postgresql.conf lines for this run, "name=value ..."
#                        (to measure a setting against the shipped ones)
# With the sessions part it also draws build/bench/sessions.svg (bench/plot.py:
# deliveries/s and p99 against concurrency; needs python3-matplotlib).
# The last line reads: deliveries_per_s=N p99_ms=X pg_floor_tps=F ratio=R
# (the best concurrency of the "deliveries" runs: two key requests per
# session; the "sessions" runs add the end request).
set -eu
ROOT=$(cd "$(dirname "$0")/.." && pwd)
KMSD=${QKMS_KMSD:-$ROOT/build/release/bin/kmsd}
KMSCTL=${QKMS_KMSCTL:-$ROOT/build/release/bin/kmsctl}
SECS=${BENCH_SECONDS:-5}
BENCH_DEVICES=${BENCH_DEVICES:-10000}
PARTS=${BENCH_PARTS:-import http entropy tls v2 etsi crypto sessions}
OUT=$ROOT/build/bench
REL=$ROOT/build/release
mkdir -p "$OUT"

CFLAGS="-O2 -Wall -Wextra -Werror -std=c17 -D_GNU_SOURCE -pthread -I$ROOT/bench -I$ROOT/device -I$ROOT/pkcs11 $(pkg-config --cflags p11-kit-1 libpq)"
cc $CFLAGS "$ROOT/bench/loadgen.c" "$ROOT/bench/httpc.c" -lssl -lcrypto -o "$OUT/loadgen"
cc $CFLAGS "$ROOT/bench/unwrap_bench.c" "$REL/libqkms-p11.a" -lcrypto -ldl -o "$OUT/unwrap_bench"
cc $CFLAGS "$ROOT/bench/seal_bench.c" "$REL/libqkms-device.a" -lcrypto -o "$OUT/seal_bench"
cc $CFLAGS -I"$ROOT/common" "$ROOT/bench/v2ops_bench.c" "$REL/libqkms-p11.a" "$REL/libqkms-device.a" \
    -lcrypto -ldl -o "$OUT/v2ops_bench"
cc $CFLAGS "$ROOT/bench/session_bench.c" "$ROOT/bench/httpc.c" "$ROOT/bench/fillload.c" "$REL/libqkms-device.a" \
    -ljansson -lcurl -lssl -lcrypto -o "$OUT/session_bench"
cc $CFLAGS "$ROOT/bench/etsi_bench.c" "$ROOT/bench/httpc.c" -ljansson -lssl -lcrypto -o "$OUT/etsi_bench"
cc $CFLAGS "$ROOT/bench/pgfloor.c" "$ROOT/bench/httpc.c" $(pkg-config --libs libpq) -lssl -lcrypto -o "$OUT/pgfloor"
cc $CFLAGS -I"$ROOT/kmsd" -I"$ROOT/common" "$ROOT/bench/entropy_bench.c" "$REL/libqkms-service.a" "$REL/libqkms-p11.a" \
    $(pkg-config --libs jansson libcurl libcrypto libpq libmicrohttpd) -ldl -lm -o "$OUT/entropy_bench"

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
if [ -n "${BENCH_PG_SETTINGS:-}" ]; then
    for kv in $BENCH_PG_SETTINGS; do echo "$kv" | sed 's/=/ = /'; done >> "$STATE/pg/data/postgresql.conf"
    sh "$ROOT/scripts/qkms-local.sh" stop-db >/dev/null 2>&1
    sh "$ROOT/scripts/qkms-local.sh" start-db >/dev/null 2>&1
    echo "# PostgreSQL settings added: $BENCH_PG_SETTINGS"
fi
CONNINFO="host=$STATE/pg/run port=$QKMS_PG_PORT dbname=qkms user=qkms passfile=$STATE/secrets/pgpass"
URL="http://127.0.0.1:$QKMS_PORT"

start_kmsd() { # threading [db pool size]
    # Rate limits off: the benchmark is one client address driving many devices.
    QKMS_HTTP_THREADING=$1 QKMS_DB_POOL_SIZE=${2:-8} QKMS_LOG_LEVEL=warn \
        QKMS_RATE_LIMIT_DEVICE=0 QKMS_RATE_LIMIT_CLIENT=0 QKMS_RATE_LIMIT_ADMIN=0 \
        "$KMSD" -c "$STATE/kmsd.conf" 2>>"$STATE/kmsd.log" &
    PID=$!
    for _ in $(seq 1 100); do
        curl -sf "$URL/readyz" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    echo "bench: kmsd did not become ready" >&2; cat "$STATE/kmsd.log" >&2; exit 1
}
stop_kmsd() { kill "$PID"; wait "$PID" || true; PID=; }
admin() { # method path [json]
    curl -sf -X "$1" -H "Authorization: Bearer $(cat "$STATE/admin.token")" \
        -H 'Content-Type: application/json' ${3:+-d "$3"} "$URL$2"
}
# Cumulative CPU seconds (user+system) of a process, and of all postgres processes.
cpu_of() { awk -v hz="$(getconf CLK_TCK)" '{ print ($14 + $15) / hz }' "/proc/$1/stat"; }
pg_cpu() {
    t=0
    for p in $(pgrep -u postgres postgres); do
        t=$(awk -v hz="$(getconf CLK_TCK)" -v t="$t" '{ print t + ($14 + $15 + $16 + $17) / hz }' "/proc/$p/stat" 2>/dev/null || echo "$t")
    done
    echo "$t"
}
field() { awk -v k="$1" '{ for (i = 1; i <= NF; i++) { split($i, a, "="); if (a[1] == k) print a[2] } }'; }

# -- registering devices through the import path ----------------------------
# Register n devices with 4 keys each through `kmsctl device import` and print
# one line: name=<name> devices keys seconds devices_per_s keys_per_s.
import_devices() { # name n id-printf-format group
    csv="$STATE/import.csv"
    awk -v n="$2" -v f="$3" -v g="$4" 'BEGIN { print "device_id,type,group,keys"
        for (i = 0; i < n; i++) printf f ",%s,%s,4\n", i, (i % 2 ? "vehicle" : "encryptor"), g }' > "$csv"
    t0=$(date +%s.%N)
    KMS_ADDR="$URL" KMS_TOKEN_FILE="$STATE/admin.token" "$KMSCTL" --timeout 3600 device import "$csv" >/dev/null
    t1=$(date +%s.%N)
    rm -f "$csv"
    awk -v nm="$1" -v n="$2" -v a="$t0" -v b="$t1" \
        'BEGIN { printf "name=%s devices=%d keys=%d seconds=%.2f devices_per_s=%.0f keys_per_s=%.0f\n", nm, n, 4*n, b-a, n/(b-a), 4*n/(b-a) }'
}
bench_import() {
    start_kmsd connection
    import_devices import "$BENCH_DEVICES" BENCH-%06d bench
    "$OUT/loadgen" -p "$QKMS_PORT" -c 16 -s "$SECS" -N "device_get" \
        -H "Authorization: Bearer $(cat "$STATE/admin.token")" /v1/admin/devices/BENCH-000042
    stop_kmsd
    "$OUT/unwrap_bench" /usr/lib/softhsm/libsofthsm2.so qkms "$STATE/secrets/token.pin" 1 "$SECS"
    "$OUT/unwrap_bench" /usr/lib/softhsm/libsofthsm2.so qkms "$STATE/secrets/token.pin" 4 "$SECS"
}

# -- entropy: key generation per source and mode -----------------------------
bench_entropy() {
    sim_out="$STATE/qrng-sim.out"
    python3 "$ROOT/tools/qrng-sim.py" --port 0 --admin-port 0 > "$sim_out" 2>/dev/null &
    sim=$!
    for _ in $(seq 1 50); do [ "$(wc -l < "$sim_out")" -ge 2 ] && break; sleep 0.1; done
    sport=$(head -1 "$sim_out" | sed 's/.*://')
    p11="pkcs11_module=/usr/lib/softhsm/libsofthsm2.so pkcs11_token_label=qkms pkcs11_pin=$(cat "$STATE/secrets/token.pin")"
    http="entropy_http_url=http://127.0.0.1:$sport/random?bytes={bytes} entropy_http_request_bytes=65536"
    for mode in drbg direct; do
        "$OUT/entropy_bench" os $mode "$SECS"
        # shellcheck disable=SC2086
        "$OUT/entropy_bench" pkcs11 $mode "$SECS" $p11
        # shellcheck disable=SC2086
        "$OUT/entropy_bench" http $mode "$SECS" $http
    done
    kill "$sim" 2>/dev/null; wait "$sim" 2>/dev/null || true
}

# -- plain HTTP routes: the empty-handler floor ------------------------------
run_model() { # threading
    start_kmsd "$1"
    for c in 1 16 64; do
        "$OUT/loadgen" -p "$QKMS_PORT" -c $c -s "$SECS" -N "healthz/$1" /healthz
        "$OUT/loadgen" -p "$QKMS_PORT" -c $c -s "$SECS" -N "admin_status/$1" \
            -H "Authorization: Bearer $(cat "$STATE/admin.token")" /v1/admin/status
    done
    stop_kmsd
}

# -- the session-key protocol ------------------------------------------------
NPAIRS=64
bench_sessions_setup() { # kmsd with the bench pairs, their fills in $STATE/fill
    start_kmsd connection 16
    # Epochs for the epochs line (a plain session's request is the same
    # with or without them); streams take the policy's default window.
    admin POST /v1/admin/policies '{"name":"bench","type_a":"vehicle","type_b":"encryptor","max_epochs":1000000}' >/dev/null
    mkdir -p "$STATE/fill"
    { echo "device_id,type,group,keys"
      i=0; while [ $i -lt $NPAIRS ]; do echo "SV-$i,vehicle,sbench,1"; echo "SE-$i,encryptor,sbench,1"; i=$((i+1)); done
    } > "$STATE/pairs.csv"
    KMS_ADDR="$URL" KMS_TOKEN_FILE="$STATE/admin.token" "$KMSCTL" device import "$STATE/pairs.csv" >/dev/null
    i=0
    while [ $i -lt $NPAIRS ]; do
        for kind in veh enc; do
            id=$([ $kind = veh ] && echo "SV-$i" || echo "SE-$i")
            admin POST "/v1/admin/devices/$id/fill" '{"plaintext":true}' |
                python3 -c 'import json,sys; print(json.dumps(json.load(sys.stdin)["plaintext"]))' \
                > "$STATE/fill/$kind-$i.json"
        done
        i=$((i+1))
    done
}
bench_sessions() {
    bench_sessions_setup
    for c in 1 16 64; do
        k0=$(cpu_of "$PID"); p0=$(pg_cpu); b0=$(date +%s.%N)
        "$OUT/session_bench" "$QKMS_PORT" $c "$SECS" "$STATE/fill" $NPAIRS deliveries | tee "$STATE/last"
        k1=$(cpu_of "$PID"); p1=$(pg_cpu); b1=$(date +%s.%N)
        # CPU per delivery: kmsd, PostgreSQL; and the machine's two cores' budget.
        awk -v k0="$k0" -v k1="$k1" -v p0="$p0" -v p1="$p1" -v t0="$b0" -v t1="$b1" \
            -v d="$(field deliveries < "$STATE/last")" -v c="$c" \
            'BEGIN { if (d > 0) printf "cpu conc=%d kmsd_us_per_delivery=%.0f postgres_us_per_delivery=%.0f cores_busy_kmsd=%.2f cores_busy_postgres=%.2f\n", c, 1e6*(k1-k0)/d, 1e6*(p1-p0)/d, (k1-k0)/(t1-t0), (p1-p0)/(t1-t0) }'
    done
    for c in 1 16 64; do
        "$OUT/session_bench" "$QKMS_PORT" $c "$SECS" "$STATE/fill" $NPAIRS sessions
    done
    # Epoch requests and stream keys beside them, in the same stack (issue
    # 20): two deliveries per epoch or per stream key.
    for mode in epochs streams; do
        "$OUT/session_bench" "$QKMS_PORT" 16 "$SECS" "$STATE/fill" $NPAIRS $mode
    done
    # Where the time goes: average per stage of a key request.
    curl -sf "$URL/metrics" | awk '
        /^qkms_session_stage_seconds_sum/ { match($0, /stage="[^"]*"/); s = substr($0, RSTART+7, RLENGTH-8); sum[s] = $2 }
        /^qkms_session_stage_seconds_count/ { match($0, /stage="[^"]*"/); s = substr($0, RSTART+7, RLENGTH-8); cnt[s] = $2 }
        END { printf "stages_us:"; for (s in sum) if (cnt[s] > 0) printf " %s=%.0f", s, 1e6 * sum[s] / cnt[s]; printf "\n" }'
    stop_kmsd
    for c in 16 64; do "$OUT/pgfloor" "$CONNINFO" $c "$SECS"; done
    "$OUT/loadgen" -p 1 -c 1 -s 0.01 /healthz >/dev/null 2>&1 || true
}

# -- mutual TLS: the same deliveries with client certificates ----------------
# At 16 clients, in one stack and one invocation: plain HTTP first, then the
# device listener over TLS with tls_client_auth=require (kmsd's own server
# certificate from the platform CA through tls_server_names, a certificate
# per bench device issued from its CSR), keep-alive connections (one per
# device: a connection carries one client certificate). One line: both
# rates, their ratio, p99 and kmsd's CPU per delivery each way.
deliveries_at() { # conc [tlsdir]: one session_bench line; CPU per delivery in last.cpu
    k0=$(cpu_of "$PID"); p0=$(pg_cpu)
    "$OUT/session_bench" "$QKMS_PORT" "$1" "$SECS" "$STATE/fill" $NPAIRS deliveries ${2:+"$2"} > "$STATE/last"
    k1=$(cpu_of "$PID"); p1=$(pg_cpu)
    cat "$STATE/last"
    awk -v k0="$k0" -v k1="$k1" -v p0="$p0" -v p1="$p1" -v d="$(field deliveries < "$STATE/last")" \
        'BEGIN { if (d > 0) printf "%.0f %.0f\n", 1e6 * (k1 - k0) / d, 1e6 * (p1 - p0) / d; else print "0 0" }' \
        > "$STATE/last.cpu"
}
# A certificate from the platform CA for every bench device, issued from a
# CSR made here: DIR/veh-<i>.crt/.key, DIR/enc-<i>.crt/.key.
issue_certs() { # dir
    tdir=$1
    mkdir -p "$tdir"
    i=0
    while [ $i -lt $NPAIRS ]; do
        for kind in veh enc; do
            id=$([ $kind = veh ] && echo "SV-$i" || echo "SE-$i")
            openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$id" \
                -keyout "$tdir/$kind-$i.key" -out "$tdir/req.csr" 2>/dev/null
            admin POST "/v1/admin/devices/$id/certificates" \
                "$(python3 -c 'import json, sys; print(json.dumps({"csr": open(sys.argv[1]).read()}))' "$tdir/req.csr")" |
                python3 -c 'import json, sys; sys.stdout.write(json.load(sys.stdin)["certificate"])' > "$tdir/$kind-$i.crt"
        done
        i=$((i+1))
    done
}
bench_tls() {
    bench_sessions_setup
    tdir="$STATE/tls"
    issue_certs "$tdir"
    curl -sf "$URL/v1/ca" > "$tdir/ca.pem"
    deliveries_at 16 > "$STATE/plain"
    plain=$(head -1 "$STATE/plain"); plain_cpu=$(cat "$STATE/last.cpu")
    stop_kmsd
    aport=$(port)
    export QKMS_ADMIN_LISTEN_ADDR=127.0.0.1 QKMS_ADMIN_LISTEN_PORT="$aport" \
        QKMS_TLS_CERT_FILE="$tdir/kmsd.crt" QKMS_TLS_KEY_FILE="$tdir/kmsd.key" \
        QKMS_TLS_SERVER_NAMES=127.0.0.1 QKMS_TLS_CLIENT_AUTH=require
    url_plain=$URL
    URL="http://127.0.0.1:$aport"
    start_kmsd connection 16
    deliveries_at 16 "$tdir" > "$STATE/mtls"
    mtls=$(head -1 "$STATE/mtls"); mtls_cpu=$(cat "$STATE/last.cpu")
    stop_kmsd
    unset QKMS_ADMIN_LISTEN_ADDR QKMS_ADMIN_LISTEN_PORT QKMS_TLS_CERT_FILE QKMS_TLS_KEY_FILE \
        QKMS_TLS_SERVER_NAMES QKMS_TLS_CLIENT_AUTH
    URL=$url_plain
    echo "$plain"
    echo "$mtls"
    awk -v a="$(echo "$plain" | field deliveries_per_s)" -v b="$(echo "$mtls" | field deliveries_per_s)" \
        -v pa="$(echo "$plain" | field p99_ms)" -v pb="$(echo "$mtls" | field p99_ms)" \
        -v ca="$plain_cpu" -v cb="$mtls_cpu" -v e="$(echo "$mtls" | field errors)" \
        'BEGIN { split(ca, x, " "); split(cb, y, " ");
                 printf "name=tls conc=16 deliveries_per_s_http=%d deliveries_per_s_mtls=%d ratio_mtls_to_http=%.2f p99_ms_http=%s p99_ms_mtls=%s kmsd_us_per_delivery_http=%d kmsd_us_per_delivery_mtls=%d postgres_us_per_delivery_http=%d postgres_us_per_delivery_mtls=%d errors_mtls=%d\n", a, b, (a > 0 ? b / a : 0), pa, pb, x[1], y[1], x[2], y[2], e }'
}

# -- device protocol v2: the same deliveries, signed and key-agreed ----------
# At 16 clients, one stack, plain HTTP both ways: v1 (AES-GCM under device
# keys) then v2 (docs/protocol.md: the vehicle signs in mode 2 asking key
# source a, so kmsd verifies an ECDSA signature, derives with the
# key-agreement key in the token, makes an ephemeral pair, two ECDHs on the
# host and signs the answer in the token; the encryptor, second, gets the
# key enclosed). One line: both rates, the ratio, p99, CPU per delivery.
bench_v2() {
    bench_sessions_setup
    vdir="$STATE/v2"
    issue_certs "$vdir"
    curl -sf "$URL/v1/platform/certificates" |
        python3 -c 'import json, sys; sys.stdout.write("".join(c["pem"] for c in json.load(sys.stdin)["certificates"] if c["state"] == "active"))' \
        > "$vdir/platform.pem"
    deliveries_at 16 > "$STATE/v1"
    v1=$(head -1 "$STATE/v1"); v1_cpu=$(cat "$STATE/last.cpu")
    # Each cryptographic step alone (one thread), kmsd's token beside it.
    "$OUT/v2ops_bench" /usr/lib/softhsm/libsofthsm2.so qkms "$STATE/secrets/token.pin" 2
    k0=$(cpu_of "$PID"); p0=$(pg_cpu)
    "$OUT/session_bench" "$QKMS_PORT" 16 "$SECS" "$STATE/fill" $NPAIRS deliveries_v2 "$vdir" > "$STATE/v2line"
    k1=$(cpu_of "$PID"); p1=$(pg_cpu)
    v2=$(head -1 "$STATE/v2line")
    echo "$v1"
    echo "$v2"
    awk -v a="$(echo "$v1" | field deliveries_per_s)" -v b="$(echo "$v2" | field deliveries_per_s)" \
        -v pa="$(echo "$v1" | field p99_ms)" -v pb="$(echo "$v2" | field p99_ms)" \
        -v ca="$v1_cpu" -v e="$(echo "$v2" | field errors)" -v d="$(echo "$v2" | field deliveries)" \
        -v k0="$k0" -v k1="$k1" -v p0="$p0" -v p1="$p1" \
        'BEGIN { split(ca, x, " ");
                 kv2 = d > 0 ? 1e6 * (k1 - k0) / d : 0; pv2 = d > 0 ? 1e6 * (p1 - p0) / d : 0;
                 printf "name=v2 conc=16 deliveries_per_s_v1=%d deliveries_per_s_v2=%d ratio_v2_to_v1=%.2f p99_ms_v1=%s p99_ms_v2=%s kmsd_us_per_delivery_v1=%d kmsd_us_per_delivery_v2=%d postgres_us_per_delivery_v1=%d postgres_us_per_delivery_v2=%d errors_v2=%d\n", a, b, (a > 0 ? b / a : 0), pa, pb, x[1], kv2, x[2], pv2, e }'
    stop_kmsd
}

# -- ETSI GS QKD 014: key pairs over mutual TLS --------------------------------
# At 16 clients over the device listener with tls_client_auth=require (as the
# tls part): each worker's master SAE asks for one key (enc_keys), its slave
# fetches it by ID (dec_keys); both SAEs have their own connection and
# certificate. One line: pairs/s, requests/s, p50 and p99 per request, and
# CPU per pair (kmsd, PostgreSQL).
bench_etsi() {
    bench_sessions_setup
    tdir="$STATE/etsi"
    issue_certs "$tdir"
    curl -sf "$URL/v1/ca" > "$tdir/ca.pem"
    admin POST /v1/admin/policies '{"name":"bench-sae","type_a":"vehicle","type_b":"encryptor","max_lifetime_s":600}' >/dev/null
    i=0
    while [ $i -lt $NPAIRS ]; do
        admin POST "/v1/admin/devices/SV-$i/sae" "{\"sae_id\":\"SAE-V-$i\"}" >/dev/null
        admin POST "/v1/admin/devices/SE-$i/sae" "{\"sae_id\":\"SAE-E-$i\"}" >/dev/null
        i=$((i+1))
    done
    stop_kmsd
    aport=$(port)
    export QKMS_ADMIN_LISTEN_ADDR=127.0.0.1 QKMS_ADMIN_LISTEN_PORT="$aport" \
        QKMS_TLS_CERT_FILE="$tdir/kmsd.crt" QKMS_TLS_KEY_FILE="$tdir/kmsd.key" \
        QKMS_TLS_SERVER_NAMES=127.0.0.1 QKMS_TLS_CLIENT_AUTH=require
    url_plain=$URL
    URL="http://127.0.0.1:$aport"
    start_kmsd connection 16
    k0=$(cpu_of "$PID"); p0=$(pg_cpu)
    "$OUT/etsi_bench" "$QKMS_PORT" 16 "$SECS" "$tdir" $NPAIRS > "$STATE/etsi.line"
    k1=$(cpu_of "$PID"); p1=$(pg_cpu)
    stop_kmsd
    unset QKMS_ADMIN_LISTEN_ADDR QKMS_ADMIN_LISTEN_PORT QKMS_TLS_CERT_FILE QKMS_TLS_KEY_FILE \
        QKMS_TLS_SERVER_NAMES QKMS_TLS_CLIENT_AUTH
    URL=$url_plain
    line=$(head -1 "$STATE/etsi.line")
    awk -v l="$line" -v n="$(echo "$line" | field pairs)" -v k0="$k0" -v k1="$k1" -v p0="$p0" -v p1="$p1" \
        'BEGIN { printf "%s kmsd_us_per_pair=%.0f postgres_us_per_pair=%.0f\n", l,
                 (n > 0 ? 1e6 * (k1 - k0) / n : 0), (n > 0 ? 1e6 * (p1 - p0) / n : 0) }'
}

bench_crypto() {
    # Sealed frames (docs/sealing.md) in one thread: MB/s per frame size,
    # and the ratio to bare AES-256-GCM on the same buffers.
    "$OUT/seal_bench" "$SECS"
    # Firmware releases signed per second: one ECDSA signature in the
    # token, a committed counter, one target, a 4 KiB image's package.
    start_kmsd connection 16
    for c in 1 4; do
        "${PYTHON:-python3}" "$ROOT/bench/fw_sign_bench.py" "$URL" "$STATE/admin.token" "$SECS" $c
    done
    # Data signatures for back ends (POST /v1/crypto/sign of a digest): a
    # token signature and an audit row per call.
    for c in 1 4; do
        "${PYTHON:-python3}" "$ROOT/bench/fw_sign_bench.py" "$URL" "$STATE/admin.token" "$SECS" $c data
    done
    stop_kmsd
}

# -- A/B: two variants of SQL in one stack, interleaved ---------------------
# BENCH_PARTS=ab BENCH_AB="a.sql b.sql" applies a.sql, runs the deliveries at
# 16 and 64 clients, applies b.sql, runs them again, BENCH_AB_ROUNDS times
# (default 4). On a machine whose speed drifts between runs (this VM's
# one-row commit floor moves by half within an hour), variants measured in
# one stack, turn about, share the drift; separate stacks do not. The two
# files must be the same function in two forms: requests in flight see
# either. One line per run: the session_bench line, variant, round, and CPU
# per delivery (kmsd, PostgreSQL).
bench_ab() {
    bench_sessions_setup
    # shellcheck disable=SC2086
    set -- $BENCH_AB
    r=1
    while [ $r -le "${BENCH_AB_ROUNDS:-4}" ]; do
        for v in a b; do
            f=$1; [ $v = b ] && f=$2
            psql -X -q -d "$CONNINFO" -v ON_ERROR_STOP=1 -f "$f" >/dev/null
            for c in 16 64; do
                line=$(deliveries_at $c | head -1)
                echo "$line variant=$v round=$r kmsd_us_per_delivery=$(cut -d' ' -f1 "$STATE/last.cpu") postgres_us_per_delivery=$(cut -d' ' -f2 "$STATE/last.cpu")"
            done
        done
        r=$((r+1))
    done
    stop_kmsd
}

# -- scale: the same deliveries with a fleet in the database -----------------
# Deliveries at 16 and 64 clients (the 64 bench pairs) three times in one
# stack: on the small database; after importing BENCH_SCALE_DEVICES devices
# (4 keys each, through `kmsctl device import`: the import is itself a line)
# and adding BENCH_SCALE_SESSIONS open sessions between them; and right
# after adding BENCH_SCALE_EXPIRED sessions past their lifetime, while the
# reaper destroys them. The added sessions are filler rows written by SQL
# (random bytes where the wrapped key goes, never requested); the devices
# are real registrations.
sql() { psql -X -q -At -d "$CONNINFO" -v ON_ERROR_STOP=1 -c "$1"; }
scale_runs() { # phase
    for c in 16 64; do
        k0=$(cpu_of "$PID"); p0=$(pg_cpu)
        "$OUT/session_bench" "$QKMS_PORT" $c "$SECS" "$STATE/fill" $NPAIRS deliveries > "$STATE/last"
        k1=$(cpu_of "$PID"); p1=$(pg_cpu)
        d=$(field deliveries < "$STATE/last")
        awk -v ph="$1" -v k0="$k0" -v k1="$k1" -v p0="$p0" -v p1="$p1" -v d="$d" \
            -v line="$(sed 's/^name=deliveries //' "$STATE/last")" \
            'BEGIN { printf "name=scale phase=%s %s cpu_us_per_delivery=%.0f\n", ph, line, (d > 0 ? 1e6*((k1-k0)+(p1-p0))/d : 0) }'
    done
}
add_sessions() { # n, expires-at SQL expression, id prefix
    # reap_at (schema 010) as qkms_session_key writes it; omitted when
    # measuring a kmsd from before it
    rc= rv=
    if [ "$(sql "SELECT count(*) FROM pg_attribute WHERE attrelid = 'sessions'::regclass AND attname = 'reap_at'")" = 1 ]; then
        rc=", reap_at" rv=", least($2, now() + interval '1 day')"
    fi
    sql "INSERT INTO sessions (session_hash, session_id, key_id, key_bits, wrapped_key, master_version,
             provenance, initiator, responder, initiator_id, responder_id, policy, delivery,
             idle_timeout_s, expires_at $rc)
         SELECT sha256(convert_to('$3' || g, 'UTF8')), '$3' || g, gen_random_uuid(), 128,
                decode(md5('$3' || g) || md5(g || '$3') || md5('x' || g), 'hex'),
                (SELECT version FROM master_keys WHERE state = 'active'), 'bench filler',
                a.id, b.id, a.device_id, b.device_id, 'bench', 'session', 86400, $2 $rv
           FROM generate_series(0, $1 - 1) g
           JOIN devices a ON a.device_id = 'SCALE-' || lpad(((2 * g) % $SCALE_DEVICES)::text, 7, '0')
           JOIN devices b ON b.device_id = 'SCALE-' || lpad(((2 * g + 1) % $SCALE_DEVICES)::text, 7, '0')"
}
bench_scale() {
    SCALE_DEVICES=${BENCH_SCALE_DEVICES:-1000000}
    bench_sessions_setup
    scale_runs small
    import_devices import_scale "$SCALE_DEVICES" SCALE-%07d scale
    add_sessions "${BENCH_SCALE_SESSIONS:-100000}" "now() + interval '1 day'" "scale-open-"
    sql "VACUUM ANALYZE" 2>/dev/null || true
    echo "name=scale_db $(sql "SELECT 'devices=' || (SELECT count(*) FROM devices) || ' device_keys=' || (SELECT count(*) FROM device_keys) || ' open_sessions=' || (SELECT count(*) FROM sessions) || ' db_mb=' || pg_database_size(current_database()) / 1048576")"
    scale_runs fleet
    n0=$(sql "SELECT count(*) FROM session_tombstones WHERE reason = 'max_lifetime'")
    add_sessions "${BENCH_SCALE_EXPIRED:-50000}" "now() - interval '1 minute'" "scale-expired-"
    scale_runs reaping
    n1=$(sql "SELECT count(*) FROM session_tombstones WHERE reason = 'max_lifetime'")
    echo "name=scale_reaper destroyed_during_runs=$((n1 - n0))"
    stop_kmsd
}

# -- group commit: one batch call or a pipeline of single calls ---------------
# PostgreSQL's side of the two ways issue 14 names to share one commit among
# waiting requests: kmsd's qkms_session_key_batch (one statement, array
# arguments) and libpq pipeline mode (each request its own statement, all in
# one transaction and one round trip). pgbench drives both with the same
# deliveries (bench/pgmodes.py: n sessions per commit, each created by its
# initiator and found by its responder) at 2 clients (kmsd's batches in
# flight) and 4; PostgreSQL's CPU per delivery from /proc.
PGBENCH=$(ls /usr/lib/postgresql/*/bin/pgbench 2>/dev/null | tail -1)
bench_pgmodes() {
    bench_sessions_setup
    stop_kmsd
    for n in 4 16; do
        for mode in ${BENCH_PGMODES:-batch pipeline}; do
            python3 "$ROOT/bench/pgmodes.py" $mode $n > "$STATE/$mode.sql"
            for c in 2 4; do
                p0=$(pg_cpu)
                tps=$("$PGBENCH" -n -M extended -c $c -j $c -T "$SECS" -f "$STATE/$mode.sql" "$CONNINFO" 2>"$STATE/pgbench.err" |
                      awk '/^tps/ { print $3; exit }')
                p1=$(pg_cpu)
                [ -n "$tps" ] || { cat "$STATE/pgbench.err" >&2; tps=0; }
                awk -v m=$mode -v n=$n -v c=$c -v t="$tps" -v p0="$p0" -v p1="$p1" -v s="$SECS" \
                    'BEGIN { d = t * 2 * n; printf "name=pgmode mode=%s deliveries_per_commit=%d conc=%d commits_per_s=%.0f deliveries_per_s=%.0f postgres_us_per_delivery=%.0f\n", m, 2*n, c, t, d, (d > 0 ? 1e6 * (p1 - p0) / (d * s) : 0) }'
            done
        done
    done
}

echo "# kmsd benchmark: $(nproc) cores, ${SECS}s per run, loopback, release build, durable commits"
for part in $PARTS; do
    case $part in
    import) bench_import | tee "$OUT/import.txt" ;;
    http)
        run_model connection | tee "$OUT/http.txt"
        if [ "${BENCH_THREADING:-}" = both ]; then run_model pool | tee -a "$OUT/http.txt"; fi ;;
    entropy) bench_entropy | tee "$OUT/entropy.txt" ;;
    tls) bench_tls | tee "$OUT/tls.txt" ;;
    v2) bench_v2 | tee "$OUT/v2.txt" ;;
    etsi) bench_etsi | tee "$OUT/etsi.txt" ;;
    crypto) bench_crypto | tee "$OUT/crypto.txt" ;;
    sessions) bench_sessions | tee "$OUT/sessions.txt" ;;
    scale) bench_scale | tee "$OUT/scale.txt" ;;
    pgmodes) bench_pgmodes | tee "$OUT/pgmodes.txt" ;;
    ab) bench_ab | tee "$OUT/ab.txt" ;;
    ha) QKMS_KMSD=$KMSD "${PYTHON:-python3}" "$ROOT/bench/ha_bench.py" "$OUT/session_bench" "$SECS" |
            tee "$OUT/ha.txt" ;;
    esac
done

if [ -f "$OUT/sessions.txt" ] && echo "$PARTS" | grep -q sessions; then
    # The picture (docs/performance.md): deliveries/s and p99 against
    # concurrency, beside the lines; not made without matplotlib.
    if "${PYTHON:-python3}" "$ROOT/bench/plot.py" "$OUT/sessions.txt" "$OUT/sessions.svg" \
        "kmsd session keys: $(nproc) cores, ${SECS} s per run, $(date -u +%Y-%m-%d)"; then
        echo "# plot: $OUT/sessions.svg"
    fi
    # The headline: the best concurrency's deliveries, its p99, and the
    # one-row commit floor at the same concurrency (each delivery commits once).
    best=$(grep '^name=deliveries' "$OUT/sessions.txt" |
           awk '{ for (i=1;i<=NF;i++) { split($i,a,"="); v[a[1]]=a[2] } if (v["deliveries_per_s"] > m) { m = v["deliveries_per_s"]; line = $0 } } END { print line }')
    conc=$(echo "$best" | field conc)
    dps=$(echo "$best" | field deliveries_per_s)
    p99=$(echo "$best" | field p99_ms)
    floor=$(grep "^name=pg_floor conc=$conc " "$OUT/sessions.txt" | field tps)
    [ -n "$floor" ] || floor=$(grep '^name=pg_floor' "$OUT/sessions.txt" | tail -1 | field tps)
    # CPU per delivery (kmsd + PostgreSQL, from /proc) at the same concurrency.
    cpu=$(grep "^cpu conc=$conc " "$OUT/sessions.txt" |
          awk '{ for (i=1;i<=NF;i++) { split($i,a,"="); v[a[1]]=a[2] } print v["kmsd_us_per_delivery"] + v["postgres_us_per_delivery"] }')
    awk -v d="$dps" -v p="$p99" -v f="$floor" -v c="${cpu:-0}" \
        'BEGIN { printf "deliveries_per_s=%d p99_ms=%s pg_floor_tps=%d ratio=%.2f cpu_us_per_delivery=%d\n", d, p, f, (f > 0 ? d / f : 0), c }'
fi
