#!/bin/sh
# qkms-backup — back up and restore a qkms deployment made by
# scripts/qkms-local.sh (make run): the database, the SoftHSM token, the
# secrets and the configuration. docs/operations.md ("Backup and restore")
# says what to do for a real HSM and for other deployments.
#
#   qkms-backup.sh backup FILE.tar    (kmsd may keep running; PostgreSQL must)
#   qkms-backup.sh restore FILE.tar   into an empty QKMS_STATE; then start kmsd
#
# QKMS_STATE (default ./var) names the state directory. The archive holds the
# token's user PIN and the bootstrap admin token: it is written mode 0600 and
# must be stored like the token itself (encrypted, offline, access-logged).
# A consistent pair matters: the token (master keys) and the database (keys
# wrapped under them) are taken together, token first, so every master key
# version the dump can reference is in the archive.
set -eu
umask 077

STATE=${QKMS_STATE:-./var}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}

die() { echo "qkms-backup: $*" >&2; exit 1; }

[ $# -eq 2 ] || die "usage: $0 backup|restore FILE.tar"
cmd=$1
file=$2
case "$file" in /*) ;; *) file=$(pwd)/$file ;; esac

conninfo() {
    port=$(sed -n 's/^port = //p' "$STATE/pg/data/postgresql.conf" | tail -1)
    echo "host=$STATE/pg/run port=$port dbname=qkms user=qkms passfile=$STATE/secrets/pgpass"
}

case "$cmd" in
backup)
    [ -d "$STATE" ] || die "no state directory $STATE"
    STATE=$(cd "$STATE" && pwd)
    [ -e "$file" ] && die "$file exists; not overwriting"
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    mkdir -p "$work/qkms-backup"
    # The token before the database: a master key rotated in between would
    # only add a version the dump does not use yet.
    tar -C "$STATE" -cf "$work/qkms-backup/token.tar" softhsm
    "$PG_BIN/pg_dump" -Fc -d "$(conninfo)" -f "$work/qkms-backup/qkms.dump"
    tar -C "$STATE" -cf "$work/qkms-backup/secrets.tar" secrets
    cp "$STATE/kmsd.conf" "$work/qkms-backup/kmsd.conf"
    [ -f "$STATE/admin.token" ] && cp "$STATE/admin.token" "$work/qkms-backup/admin.token"
    {
        echo "qkms backup"
        echo "created: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
        echo "from: $STATE"
        (cd "$work/qkms-backup" && sha256sum token.tar qkms.dump secrets.tar kmsd.conf)
    } > "$work/qkms-backup/MANIFEST"
    tar -C "$work" -cf "$file" qkms-backup
    chmod 0600 "$file"
    echo "qkms-backup: wrote $file ($(du -h "$file" | cut -f1))"
    ;;
restore)
    [ -f "$file" ] || die "no archive $file"
    mkdir -p "$STATE"
    STATE=$(cd "$STATE" && pwd)
    [ -e "$STATE/pg/data/PG_VERSION" ] && die "$STATE already holds a database; restore into an empty state directory"
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    tar -C "$work" -xf "$file"
    (cd "$work/qkms-backup" && sed -n '4,$p' MANIFEST | sha256sum -c --quiet) || die "archive is damaged (checksums differ)"
    # Secrets first, so the local bootstrap reuses the same PINs and
    # password; then the token, so it is not created afresh.
    tar -C "$STATE" -xf "$work/qkms-backup/secrets.tar"
    tar -C "$STATE" -xf "$work/qkms-backup/token.tar"
    # The token directory path is recorded in softhsm2.conf: point it here.
    sed -i "s|^directories.tokendir = .*|directories.tokendir = $STATE/softhsm/tokens|" \
        "$STATE/softhsm/softhsm2.conf"
    [ -f "$work/qkms-backup/admin.token" ] && cp "$work/qkms-backup/admin.token" "$STATE/admin.token"
    # A fresh cluster and role with the restored password; kmsd.conf is
    # regenerated for this directory (paths), the old one kept for reference.
    sh "$ROOT/scripts/qkms-local.sh" init >/dev/null
    cp "$work/qkms-backup/kmsd.conf" "$STATE/kmsd.conf.from-backup"
    "$PG_BIN/pg_restore" --no-owner --role=qkms -d "$(conninfo)" "$work/qkms-backup/qkms.dump"
    echo "qkms-backup: restored into $STATE; start kmsd (make run, or kmsd -c $STATE/kmsd.conf)"
    ;;
*)
    die "usage: $0 backup|restore FILE.tar"
    ;;
esac
