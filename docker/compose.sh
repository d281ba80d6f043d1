#!/bin/bash
# docker/compose.sh — run docker/compose.yaml (or, with --ha first,
# docker/compose.ha.yaml) with whichever compose engine the machine has, and
# do what the compose CLIs do differently in one way:
#
#   compose.sh build             base image (docker/base-image.sh) + compose build
#   compose.sh up [--no-build]   build, start the stack (no demo), wait until healthy
#   compose.sh wait              wait: init exited 0; postgres, qrng-sim, prometheus, kmsd healthy
#   compose.sh demo              run the demo profile; prints both devices' lines
#   compose.sh down [-v]         stop gracefully and remove (-v: the volumes too)
#   compose.sh kmsctl ARGS...    kmsctl in the kmsd container, on the admin socket
#   compose.sh admin-token FILE  copy the bootstrap admin token out of the stack (0600)
#   compose.sh cid SERVICE       container ID of a service
#   compose.sh logs SERVICE      its logs
#   compose.sh restart SERVICE   restart its container
#   compose.sh exec [-i] [-u USER] SERVICE CMD...   (-i: with stdin)
#   compose.sh probe NETWORK CMD...  CMD in a throwaway container of the kmsd
#                                image on the project's NETWORK only
#   compose.sh ps | config | engine
#   compose.sh compose ARGS...   the compose CLI itself, with project and file
#
#   compose.sh --ha COMMAND...   the same commands on docker/compose.ha.yaml
#                                (the HA profile, docs/ha.md; project qkms-ha;
#                                wait: init exited 0; etcd, pg1-3, qrng-sim,
#                                kmsd1, kmsd2, haproxy healthy; kmsctl and
#                                admin-token in kmsd1; no demo)
#
# Engine: `docker compose` when a Docker daemon answers, else podman-compose,
# else docker-compose; QKMS_COMPOSE="podman-compose" (or "docker compose")
# forces one. Project: QKMS_COMPOSE_PROJECT (default qkms; with --ha,
# qkms-ha). Waits are bounded by QKMS_COMPOSE_WAIT seconds (default 180).
#
# podman without systemd never runs health checks by itself; `wait` runs them
# (podman healthcheck run). podman-compose 1.0 ignores profiles and
# depends_on conditions: `up` names the services to start, `demo` starts the
# demo's containers one after the other, and the entrypoints wait for the
# files they need. It also ignores networks' driver_opts: `up` and `demo`
# create the project's networks first, isolated as compose.yaml asks.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
WAIT=${QKMS_COMPOSE_WAIT:-180}
BASE_IMAGE=${QKMS_BASE_IMAGE:-localhost/qkms-debian:bookworm}
NETWORKS="backend frontend" # driver_opts isolate=true in both compose files
# Per stack: its file (and the local override read after it, as `docker
# compose` does in docker/ by itself: a real HSM or QRNG, see README.md),
# the services `up` starts, those `wait` waits for (init exits, the others
# turn healthy, in this order), the order `down` stops them in (a
# comma-separated group is stopped at once), the volumes `down -v` removes,
# and the kmsd service that kmsctl and admin-token use.
if [ "${1:-}" = --ha ]; then
    shift
    STACK=ha
    FILE=$HERE/compose.ha.yaml
    OVERRIDE=$HERE/compose.ha.override.yaml
    PROJECT=${QKMS_COMPOSE_PROJECT:-qkms-ha}
    CORE_SERVICES="init etcd pg1 pg2 pg3 qrng-sim kmsd1 kmsd2 haproxy"
    HEALTHY_SERVICES="etcd pg1 pg2 pg3 qrng-sim kmsd1 kmsd2 haproxy"
    DEMO_SERVICES=""
    # kmsd before the database; the nodes together (in turn, each stop of a
    # primary would promote the next, only for it to be stopped too).
    STOP_ORDER="haproxy kmsd1,kmsd2 qrng-sim pg1,pg2,pg3 etcd"
    VOLUMES="etcd pg1 pg2 pg3 patroni-secret db-secret token token-pin admin tls"
    KMSD_SERVICE=kmsd1
    DEVICE_PORT=${QKMS_COMPOSE_HA_PORT:-8480}
else
    STACK=main
    FILE=$HERE/compose.yaml
    OVERRIDE=$HERE/compose.override.yaml
    PROJECT=${QKMS_COMPOSE_PROJECT:-qkms}
    CORE_SERVICES="init postgres qrng-sim prometheus kmsd"
    HEALTHY_SERVICES="postgres qrng-sim prometheus kmsd"
    DEMO_SERVICES="demo-setup vehicle encryptor"
    STOP_ORDER="demo-setup vehicle encryptor kmsd prometheus qrng-sim postgres"
    VOLUMES="pgdata db-secret token token-pin admin fills tls prometheus"
    KMSD_SERVICE=kmsd
    DEVICE_PORT=${QKMS_COMPOSE_PORT:-8470}
fi
FILES=(-f "$FILE")
[ "${QKMS_COMPOSE_OVERRIDE:-1}" != 0 ] && [ -f "$OVERRIDE" ] && FILES+=(-f "$OVERRIDE")

say() { echo "compose: $*" >&2; }
die() { echo "compose: $*" >&2; exit 1; }

# ---- engine ---------------------------------------------------------------------
COMPOSE=()
if [ -n "${QKMS_COMPOSE:-}" ]; then
    read -r -a COMPOSE <<<"$QKMS_COMPOSE"
elif command -v docker >/dev/null 2>&1 && docker compose version >/dev/null 2>&1 &&
     docker info >/dev/null 2>&1; then
    COMPOSE=(docker compose)
elif command -v podman-compose >/dev/null 2>&1; then
    COMPOSE=(podman-compose)
elif command -v docker-compose >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
    COMPOSE=(docker-compose)
else
    die "no compose engine: install docker with the compose plugin, or podman and podman-compose"
fi
case "${COMPOSE[0]}" in
    podman-compose) ENGINE=podman ;;
    *) ENGINE=docker ;;
esac
export CONTAINER_ENGINE=$ENGINE
# podman builds OCI images by default, which drop HEALTHCHECK and STOPSIGNAL.
[ "$ENGINE" = podman ] && export BUILDAH_FORMAT=${BUILDAH_FORMAT:-docker}

# podman without systemd complains on every container start that it cannot
# schedule health checks (`wait` runs them instead); those lines are dropped.
NOISE='/unable to get systemd connection/d; /failed to connect to syslog/d'

engine() { # the engine CLI, stdout kept, podman's systemd complaints dropped
    if [ "$ENGINE" = podman ]; then
        { podman "$@" 2>&1 1>&3 3>&- | sed "$NOISE" >&2; } 3>&1
    else
        docker "$@"
    fi
}

compose() {
    if [ "$ENGINE" = podman ]; then
        # podman-compose prints every podman command it runs; keep them off stdout.
        "${COMPOSE[@]}" -p "$PROJECT" "${FILES[@]}" "$@" 2>&1 | sed "$NOISE" >&2
    else
        "${COMPOSE[@]}" -p "$PROJECT" "${FILES[@]}" "$@"
    fi
}

cid() { # cid SERVICE: the service's (first) container, empty if none
    "$ENGINE" ps -aq --filter "label=com.docker.compose.project=$PROJECT" \
        --filter "label=com.docker.compose.service=$1" | sed -n 1p
}

need_cid() {
    local c
    c=$(cid "$1")
    [ -n "$c" ] || die "service $1 has no container (is the stack up?)"
    echo "$c"
}

state() { "$ENGINE" inspect -f '{{.State.Status}}' "$1" 2>/dev/null || echo missing; }
exit_code() { "$ENGINE" inspect -f '{{.State.ExitCode}}' "$1"; }

healthy() { # healthy CID: the service's health check passes now
    if [ "$ENGINE" = podman ]; then
        [ "$(state "$1")" = running ] && podman healthcheck run "$1" >/dev/null 2>&1
    else
        [ "$("$ENGINE" inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{end}}' "$1" 2>/dev/null)" = healthy ]
    fi
}

show_logs() { # show_logs SERVICE: the tail of a failing service's log
    local c
    c=$(cid "$1")
    [ -n "$c" ] || return 0
    echo "---- logs of $1 (last 40 lines) ----" >&2
    "$ENGINE" logs --tail 40 "$c" >&2 2>&1 || true
    echo "----" >&2
}

wait_exited_ok() { # wait_exited_ok SERVICE
    local svc=$1 deadline=$(( $(date +%s) + WAIT )) c st
    while :; do
        c=$(cid "$svc")
        if [ -n "$c" ]; then
            st=$(state "$c")
            if [ "$st" = exited ] || [ "$st" = stopped ]; then
                [ "$(exit_code "$c")" = 0 ] && return 0
                show_logs "$svc"
                die "$svc exited with status $(exit_code "$c")"
            fi
        fi
        [ "$(date +%s)" -lt "$deadline" ] || { show_logs "$svc"; die "$svc did not finish in ${WAIT}s"; }
        sleep 1
    done
}

wait_healthy() { # wait_healthy SERVICE
    local svc=$1 deadline=$(( $(date +%s) + WAIT )) c
    while :; do
        c=$(cid "$svc")
        if [ -n "$c" ] && healthy "$c"; then
            say "$svc healthy"
            return 0
        fi
        [ "$(date +%s)" -lt "$deadline" ] || { show_logs "$svc"; die "$svc not healthy in ${WAIT}s"; }
        sleep 1
    done
}

cmd_wait() {
    wait_exited_ok init
    local s
    for s in $HEALTHY_SERVICES; do wait_healthy "$s"; done
}

cmd_build() {
    case "$BASE_IMAGE" in
        localhost/*) QKMS_BASE="$BASE_IMAGE" sh "$HERE/base-image.sh" ;;
    esac
    say "building images (${COMPOSE[*]})"
    if [ "$ENGINE" = podman ]; then
        # podman-compose 1.0.3 exits 0 even when an image fails to build
        # (the stack would then start from an older image); the "exit code:
        # N" line it prints after each build is what tells.
        local log rc=0
        log=$(mktemp)
        "${COMPOSE[@]}" -p "$PROJECT" "${FILES[@]}" build >"$log" 2>&1 || rc=$?
        sed "$NOISE" "$log" >&2
        if [ "$rc" != 0 ] || grep -Eq '^exit code: [1-9]' "$log"; then
            rm -f "$log"
            die "image build failed (see the output above)"
        fi
        rm -f "$log"
    else
        compose build
    fi
}

# podman-compose 1.0 creates networks without their driver_opts; made here
# first (with the labels it would give them), it finds them and uses them.
podman_networks() {
    local n
    [ "$ENGINE" = podman ] || return 0
    for n in $NETWORKS; do
        podman network exists "${PROJECT}_$n" && continue
        podman network create --opt isolate=true \
            --label "io.podman.compose.project=$PROJECT" \
            --label "com.docker.compose.project=$PROJECT" "${PROJECT}_$n" >/dev/null
    done
}

cmd_up() {
    [ "${1:-}" = --no-build ] || cmd_build
    say "starting project $PROJECT"
    podman_networks
    if [ "$ENGINE" = podman ]; then
        # shellcheck disable=SC2086
        compose up -d --no-build $CORE_SERVICES
    else
        compose up -d --no-build
    fi
    cmd_wait
    local ha=
    [ "$STACK" = ha ] && ha="--ha "
    say "up: kmsd's device listener on https://127.0.0.1:$DEVICE_PORT (its CA: $0 ${ha}kmsctl ca show --pem; devices need a client certificate); admin: $0 ${ha}kmsctl status"
}

cmd_demo() {
    local s c
    [ -n "$DEMO_SERVICES" ] || die "the $STACK stack has no demo profile"
    # Fresh containers each time, so that their logs show this run only.
    for s in $DEMO_SERVICES; do
        c=$(cid "$s")
        [ -z "$c" ] || "$ENGINE" rm -f "$c" >/dev/null
    done
    podman_networks
    if [ "$ENGINE" = podman ]; then
        # One after the other: podman-compose 1.0 would start them all at once.
        # shellcheck disable=SC2086
        compose up --no-start --no-build $DEMO_SERVICES
        c=$(need_cid demo-setup)
        engine start "$c" >/dev/null
        wait_exited_ok demo-setup
        for s in vehicle encryptor; do engine start "$(need_cid "$s")" >/dev/null; done
    else
        compose --profile demo up -d --no-build
        wait_exited_ok demo-setup
    fi
    for s in vehicle encryptor; do wait_exited_ok "$s"; done
    "$ENGINE" logs "$(need_cid demo-setup)" 2>&1 | sed 's/^/  /' >&2
    for s in vehicle encryptor; do "$ENGINE" logs "$(need_cid "$s")" 2>&1; done
}

cmd_down() {
    local s c group cids
    # Graceful stop in reverse start order (podman-compose 1.0 stops with a 1 s timeout).
    for group in $STOP_ORDER; do
        cids=()
        for s in ${group//,/ }; do
            c=$(cid "$s")
            [ -z "$c" ] || cids+=("$c")
        done
        if [ ${#cids[@]} -gt 0 ]; then "$ENGINE" stop -t 30 "${cids[@]}" >/dev/null 2>&1 || true; fi
    done
    if [ "$ENGINE" = podman ]; then
        compose down "$@" || true
        # podman-compose 1.0 removes only the volumes it labelled itself.
        if [ "${1:-}" = -v ]; then
            for s in $VOLUMES; do podman volume rm -f "${PROJECT}_$s" >/dev/null 2>&1 || true; done
        fi
        # podman-compose 1.0 leaves the project's networks behind.
        for c in $(podman network ls -q --filter "label=com.docker.compose.project=$PROJECT" 2>/dev/null); do
            podman network rm "$c" >/dev/null 2>&1 || true
        done
    else
        compose --profile demo down "$@"
    fi
}

cmd_admin_token() {
    local out=${1:?usage: compose.sh admin-token FILE} c
    c=$(need_cid "$KMSD_SERVICE")
    ( umask 077; "$ENGINE" exec "$c" cat /var/lib/qkms/admin/admin.token > "$out.tmp" )
    [ -s "$out.tmp" ] || { rm -f "$out.tmp"; die "no admin token in the kmsd container yet"; }
    mv "$out.tmp" "$out"
    say "admin token copied to $out"
}

cmd_probe() { # probe NETWORK CMD...: what a container on NETWORK alone reaches
    local net=${1:?usage: compose.sh probe NETWORK CMD...}
    shift
    "$ENGINE" run --rm --network "${PROJECT}_$net" --entrypoint "" --user 10001:10001 \
        --read-only --cap-drop ALL --security-opt no-new-privileges \
        localhost/qkms/kmsd:latest "$@"
}

cmd_exec() { # exec [-i] [-u USER] SERVICE CMD...
    local i=()
    if [ "${1:-}" = -i ]; then i=(-i); shift; fi
    if [ "${1:-}" = -u ]; then i+=(-u "${2:?usage: compose.sh exec [-i] [-u USER] SERVICE CMD...}"); shift 2; fi
    local s=${1:?usage: compose.sh exec [-i] [-u USER] SERVICE CMD...}
    shift
    "$ENGINE" exec "${i[@]}" "$(need_cid "$s")" "$@"
}

cmd=${1:-}
[ $# -gt 0 ] && shift
case "$cmd" in
    engine) echo "${COMPOSE[*]} ($ENGINE)" ;;
    build) cmd_build ;;
    up) cmd_up "$@" ;;
    wait) cmd_wait ;;
    demo) cmd_demo ;;
    down) cmd_down "$@" ;;
    admin-token) cmd_admin_token "$@" ;;
    cid) need_cid "${1:?usage: compose.sh cid SERVICE}" ;;
    logs) "$ENGINE" logs "$(need_cid "${1:?usage: compose.sh logs SERVICE}")" ;;
    restart) engine restart -t 30 "$(need_cid "${1:?usage: compose.sh restart SERVICE}")" >/dev/null ;;
    exec) cmd_exec "$@" ;;
    kmsctl) "$ENGINE" exec "$(need_cid "$KMSD_SERVICE")" kmsctl "$@" ;;
    probe) cmd_probe "$@" ;;
    ps) "$ENGINE" ps -a --filter "label=com.docker.compose.project=$PROJECT" ;;
    config) compose config ;;
    compose) compose "$@" ;;
    *) sed -n '2,31p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
