/*
 * device_fill — the fill export: a device's keys handed out once for
 * pre-filling it, either sealed to a recipient's public key (a fill
 * package, common/fillpkg.h) or, for an admin, as the plaintext fill
 * document ("qkms-fill/1", docs/api.md).
 *
 * Contract:
 *  - Only an active device's live keys (active, not expired) are exported;
 *    by default each key once (force exports again). Marking the keys
 *    exported and the "device.fill_exported" audit row commit in one
 *    transaction with the export; a failed export marks nothing.
 *  - The plaintext document exists only in a QBUF_SECURE qbuf (secure heap,
 *    wiped on grow and free), never in jansson, a log line or PostgreSQL;
 *    the sealed package holds no plaintext.
 *  - Plaintext export is for an admin principal only
 *    (device_fill_may_plaintext); a door that can tell whether its
 *    transport is confidential must check that too before calling.
 *  - Errors (err.h): QK_NOT_FOUND "not_found"; QK_CONFLICT "invalid_state"
 *    (device not active), "already_exported"; QK_INVALID
 *    "no_exportable_keys", "invalid_recipient_key"; QK_FORBIDDEN
 *    "forbidden"; and the storage, token and internal failures.
 */
#ifndef QKMS_DEVICE_FILL_H
#define QKMS_DEVICE_FILL_H

#include <stdbool.h>
#include <stddef.h>

#include <jansson.h>
#include <openssl/evp.h>

#include "err.h"
#include "qbuf.h"
#include "service/certs.h"
#include "service/service.h"

/* QK_OK when who may export keys in plaintext, else QK_FORBIDDEN. */
qk_kind device_fill_may_plaintext(const qk_principal *who, qk_err *e);

/* Export keys of device_id: indices (nindices of them; 0 = every live key
 * not exported before, or every live key with force) sealed to recipient,
 * or, with recipient NULL, in plaintext. A sub-device's document also
 * carries its gateway's live local keys ("family", docs/gateways.md); with
 * family_only it carries them alone (no key of its own, none marked
 * exported: the refill after the gateway's local key rotated), and
 * QK_INVALID "no_exportable_keys" when there are none.
 *  - sealed: *out = {"device_id", "format", "indices", "recipient_fingerprint",
 *    "package" (base64)}; *plaintext untouched (may be NULL).
 *  - plaintext: *out = {"device_id", "format", "indices"} and *plaintext the
 *    document (the caller qbuf_free()s it).
 * With identity (sealed only, else 422 invalid_request), the package also
 * carries the device's TLS identity: a key pair made here and its
 * certificate (certs_identity, validity from identity->validity_days) as
 * the member "tls" of the fill document (docs/pki.md), and *out its record
 * as "certificate". The certificate is recorded before the fill runs and
 * revoked (superseded) if the fill fails: nobody else ever holds its key.
 * On failure *out and *plaintext are NULL. */
qk_kind device_fill_export(qk_svc *s, const qk_principal *who, const char *device_id,
                           EVP_PKEY *recipient, const int *indices, int nindices, bool force,
                           bool family_only, const cert_request *identity, json_t **out,
                           qbuf **plaintext, qk_err *e);

#endif
