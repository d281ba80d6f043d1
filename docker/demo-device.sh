#!/bin/bash
# A demo device (compose profile "demo": services vehicle and encryptor):
# asks kmsd for the key of the demo session with qkms-device and its fill
# document, over mutual TLS (its client certificate and key, the platform
# CA as the server's issuer), and prints the key ID (never the key). Both
# parties print the same key ID.
#   demo-device.sh SELF_ID PEER_ID
set -euo pipefail
self=${1:?usage: demo-device.sh SELF_ID PEER_ID}
peer=${2:?usage: demo-device.sh SELF_ID PEER_ID}
url=${KMS_ADDR:-https://kmsd:8470}
fills=/var/lib/qkms/fills

deadline=$(( $(date +%s) + ${DEMO_WAIT_SECONDS:-180} ))
until [ -s "$fills/session.id" ] && [ -s "$fills/$self.json" ] && [ -s "$fills/$self.crt" ]; do
    [ "$(date +%s)" -lt "$deadline" ] || { echo "$self: no fill document, certificate or session ID (demo-setup failed?)" >&2; exit 1; }
    sleep 1
done
sid=$(cat "$fills/session.id")
out=$(qkms-device key --url "$url" --fill "$fills/$self.json" --session "$sid" --peer "$peer" \
    --cacert "$fills/ca.pem" --cert "$fills/$self.crt" --key "$fills/$self.key")
key_id=$(printf '%s\n' "$out" | sed -n 's/^key_id: //p')
expires=$(printf '%s\n' "$out" | sed -n 's/^expires_at: //p')
unset out
echo "$self: session $sid with $peer: key_id $key_id (expires $expires)"
