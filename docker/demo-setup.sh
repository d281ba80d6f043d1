#!/bin/bash
# demo-setup (compose profile "demo"): with kmsctl and the bootstrap admin
# token, add a vehicle:encryptor pairing policy, register the two demo
# devices and export their fill documents (JSON, mode 0600) into the shared
# "fills" volume, then pick a fresh session ID for this demo run.
# Idempotent: existing policy, devices and fill files are reused.
#
# kmsctl talks to kmsd's admin listener: the unix socket in the "admin"
# volume (KMS_ADDR=unix:PATH), or an http(s) URL.
#
# The keys travel as a real provisioning station gets them: sealed to a
# station key pair made here (kmsctl device fill ID --recipient-pub, then
# kmsctl fill open), although the admin socket, being local, would be
# allowed plaintext export.
#
# kmsd's device listener requires client certificates (mutual TLS): each
# device gets a key pair made here, as a device makes its own, and a
# certificate the platform CA issues from its CSR (kmsctl device cert
# issue), beside the CA certificate devices trust (kmsctl ca show --pem).
set -euo pipefail
umask 077

export KMS_ADDR=${KMS_ADDR:-unix:/var/lib/qkms/admin/kmsd.sock}
export KMS_TOKEN_FILE=${KMS_TOKEN_FILE:-/var/lib/qkms/admin/admin.token}
VEHICLE=${DEMO_VEHICLE:-DEMO-VIN-0001}
ENCRYPTOR=${DEMO_ENCRYPTOR:-DEMO-ENC-01}
GROUP=${DEMO_GROUP:-demo}
POLICY=${DEMO_POLICY:-demo-vehicle-encryptor}
FILLS=/var/lib/qkms/fills

say() { echo "demo-setup: $*"; }
die() { echo "demo-setup: $*" >&2; exit 1; }

if [[ $KMS_ADDR == unix:* ]]; then
    readyz=(--unix-socket "${KMS_ADDR#unix:}" http://localhost/readyz)
else
    readyz=("$KMS_ADDR/readyz")
fi
deadline=$(( $(date +%s) + ${DEMO_WAIT_SECONDS:-120} ))
until curl -fsS -o /dev/null --max-time 2 "${readyz[@]}" 2>/dev/null && [ -s "$KMS_TOKEN_FILE" ]; do
    [ "$(date +%s)" -lt "$deadline" ] || die "kmsd at $KMS_ADDR not ready in time"
    sleep 1
done

policies=$(kmsctl policy list --json)
if grep -q "\"name\": *\"$POLICY\"" <<<"$policies"; then
    say "policy $POLICY exists"
else
    kmsctl policy add "$POLICY" --types vehicle:encryptor >/dev/null
    say "policy $POLICY added (vehicle:encryptor, same group)"
fi

# The station key pair lives only for this run (ca-certificates brings openssl).
STATION=$(mktemp -d)
trap 'rm -rf "$STATION"' EXIT
openssl genpkey -algorithm X25519 -out "$STATION/key.pem" 2>/dev/null
openssl pkey -in "$STATION/key.pem" -pubout -out "$STATION/pub.pem"

for spec in "$VEHICLE:vehicle" "$ENCRYPTOR:encryptor"; do
    id=${spec%%:*} type=${spec#*:}
    if kmsctl device show "$id" >/dev/null 2>&1; then
        say "device $id exists"
    else
        kmsctl device register "$id" --type "$type" --group "$GROUP" --keys 2 >/dev/null
        say "device $id registered ($type, group $GROUP)"
    fi
    out=$FILLS/$id.json
    if [ -s "$out" ]; then
        say "fill document $out exists"
        continue
    fi
    rm -f "$out.new" "$STATION/$id.qkfp"
    # Keys exported before (e.g. the volume was lost) need --force.
    kmsctl device fill "$id" --recipient-pub "$STATION/pub.pem" --out "$STATION/$id.qkfp" >/dev/null 2>&1 ||
        kmsctl device fill "$id" --recipient-pub "$STATION/pub.pem" --out "$STATION/$id.qkfp" --force >/dev/null
    kmsctl fill open --key "$STATION/key.pem" "$STATION/$id.qkfp" --json > "$out.new"
    mv "$out.new" "$out"
    say "fill document $out written"
done

# The CA devices trust (it also issued kmsd's server certificate).
kmsctl ca show --pem > "$FILLS/ca.pem.new"
mv "$FILLS/ca.pem.new" "$FILLS/ca.pem"
for id in "$VEHICLE" "$ENCRYPTOR"; do
    if [ -s "$FILLS/$id.crt" ] && [ -s "$FILLS/$id.key" ]; then
        say "client certificate $FILLS/$id.crt exists"
        continue
    fi
    rm -f "$FILLS/$id.key.new" "$FILLS/$id.crt.new"
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$id" \
        -keyout "$FILLS/$id.key.new" -out "$STATION/$id.csr" 2>/dev/null
    kmsctl device cert issue "$id" --csr "$STATION/$id.csr" --out "$FILLS/$id.crt.new" >/dev/null
    mv "$FILLS/$id.key.new" "$FILLS/$id.key"
    mv "$FILLS/$id.crt.new" "$FILLS/$id.crt"
    say "client certificate $FILLS/$id.crt issued by the platform CA"
done

sid=demo-$(date -u +%Y%m%dT%H%M%SZ)-$(head -c 4 /dev/urandom | od -An -vtx1 | tr -d ' \n')
printf '%s\n' "$sid" > "$FILLS/session.id.new"
mv "$FILLS/session.id.new" "$FILLS/session.id"
say "session $sid"
