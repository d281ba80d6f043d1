#!/bin/bash
# The init service of docker/compose.yaml: a one-shot, idempotent setup of
# everything secret that the stack needs, created here at first start and
# never committed anywhere:
#
#   /run/qkms/db/db.password     PostgreSQL password of role qkms   (root 0400; read by the postgres entrypoint)
#   /run/qkms/db/pgpass          the same as a libpq passfile       (qkms 0400; kmsd's db_conninfo passfile=)
#   /run/qkms/pin/token.so-pin   SoftHSM SO PIN                     (root 0400; operators only)
#   /run/qkms/pin/token.pin      SoftHSM user PIN                   (qkms 0400; kmsd's pkcs11_pin_file)
#   /var/lib/qkms/token/         the SoftHSM token labelled $QKMS_PKCS11_TOKEN_LABEL (qkms 0700)
#   /var/lib/qkms/admin/         where kmsd writes the bootstrap admin token (qkms 0700)
#   /var/lib/qkms/fills/         the demo's fill documents and client certificates (qkms 0700)
#   /var/lib/qkms/tls/           where kmsd writes its server certificate and key (qkms 0700)
#
# With QKMS_INIT_PATRONI_DIR (the compose profile "ha", docker/compose.ha.yaml),
# also, in that directory (a volume mounted on the PostgreSQL nodes only):
#   superuser.password           PostgreSQL superuser of the Patroni cluster (root 0400)
#   replication.password         its replication role                       (root 0400)
#
# Each path is a named volume. Secrets are random (24 bytes from
# /dev/urandom, hex) and never printed. Running again changes nothing that
# exists; token.pin appears only once the token exists, so kmsd (which waits
# for it) never sees a PIN without its token.
#
# QKMS_INIT_SOFTHSM=0 skips the SoftHSM token and its PINs (a real HSM: the
# operator provides the module, the token and the PIN file).
set -euo pipefail
umask 077

QKMS_UID=${QKMS_UID:-10001}
LABEL=${QKMS_PKCS11_TOKEN_LABEL:-qkms}
DB=/run/qkms/db
PIN=/run/qkms/pin
TOKEN=/var/lib/qkms/token

log() { printf '{"ts":"%s","level":"info","msg":"%s","component":"qkms-init"}\n' \
    "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$*" >&2; }

# secret FILE: a random hex secret, created once (atomically).
secret() {
    [ -s "$1" ] && return 0
    head -c 24 /dev/urandom | od -An -vtx1 | tr -d ' \n' > "$1.tmp"
    mv "$1.tmp" "$1"
    log "created $1"
}

# ---- PostgreSQL password ---------------------------------------------------
install -d -m 0755 "$DB"
secret "$DB/db.password"
chown 0:0 "$DB/db.password"
chmod 0400 "$DB/db.password"
pw=$(cat "$DB/db.password")
want=$(printf '*:*:qkms:qkms:%s' "$pw")
if [ ! -s "$DB/pgpass" ] || [ "$(cat "$DB/pgpass")" != "$want" ]; then
    printf '%s\n' "$want" > "$DB/pgpass.tmp"
    mv "$DB/pgpass.tmp" "$DB/pgpass"
    log "wrote $DB/pgpass"
fi
unset pw want
chown "$QKMS_UID:$QKMS_UID" "$DB/pgpass"
chmod 0400 "$DB/pgpass"

# ---- the Patroni cluster's own roles (profile "ha") -----------------------------
# Patroni needs them to initialise, clone and rewind nodes; kmsd never does,
# so they live in a volume of their own, not in db-secret (mounted by kmsd).
if [ -n "${QKMS_INIT_PATRONI_DIR:-}" ]; then
    install -d -m 0755 "$QKMS_INIT_PATRONI_DIR"
    for f in superuser.password replication.password; do
        secret "$QKMS_INIT_PATRONI_DIR/$f"
        chown 0:0 "$QKMS_INIT_PATRONI_DIR/$f"
        chmod 0400 "$QKMS_INIT_PATRONI_DIR/$f"
    done
fi

# ---- SoftHSM token -----------------------------------------------------------
install -d -m 0755 "$PIN"
if [ "${QKMS_INIT_SOFTHSM:-1}" != 0 ]; then
    secret "$PIN/token.so-pin"
    chown 0:0 "$PIN/token.so-pin"
    chmod 0400 "$PIN/token.so-pin"
    userpin=$PIN/token.pin
    [ -s "$userpin" ] || { secret "$PIN/.token.pin.new"; userpin=$PIN/.token.pin.new; }
    install -d -m 0700 "$TOKEN"
    # softhsm2-util pads labels with spaces to 32 characters.
    # (Captured first: with pipefail, grep -q closing the pipe early could
    # make the check fail and a second token be created.)
    slots=$(softhsm2-util --show-slots 2>/dev/null || true)
    if grep -q "Label:[[:space:]]*${LABEL}[[:space:]]*\$" <<<"$slots"; then
        if [ "$userpin" != "$PIN/token.pin" ]; then
            log "the token '$LABEL' exists but its PIN file $PIN/token.pin is gone (volume removed?)"
            exit 1
        fi
    else
        log "creating SoftHSM token '$LABEL'"
        softhsm2-util --init-token --free --label "$LABEL" \
            --so-pin "$(cat "$PIN/token.so-pin")" --pin "$(cat "$userpin")" >/dev/null
    fi
    chown -R "$QKMS_UID:$QKMS_UID" "$TOKEN"
    chmod 0700 "$TOKEN"
    chown "$QKMS_UID:$QKMS_UID" "$userpin"
    chmod 0400 "$userpin"
    [ "$userpin" = "$PIN/token.pin" ] || mv "$userpin" "$PIN/token.pin"
fi

# ---- directories kmsd and the demo write ----------------------------------------
# A directory without a volume on it (a stack that does not use it: the
# "ha" profile has no fills) is the image's, on the read-only root: left alone.
for d in /var/lib/qkms/admin /var/lib/qkms/fills /var/lib/qkms/tls; do
    [ -d "$d" ] && [ -w "$d" ] || continue
    chown "$QKMS_UID:$QKMS_UID" "$d"
    chmod 0700 "$d"
done
log "init done"
