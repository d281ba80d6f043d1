/*
 * firmware_keys — the platform's signing keys in the token: product lines'
 * firmware signing keys, and named data-signing keys (schema/037;
 * docs/api.md "Data-signing keys"; the same life, label "qkms-sign-<name>-
 * <version>", CN "qkms signing <name> <version>", extended key usage
 * DATA_SIGNING_EKU,
 * audit rows signing.key_created/.key_rotated, records with "name" for
 * "product", "invalid_name" for "invalid_product"). The firmware keys
 * (schema/033,
 * docs/firmware.md, docs/api.md "Firmware signing keys"): ECDSA P-256
 * pairs generated in the token (private key sensitive, never extractable,
 * sign only; label "qkms-fw-<product>-<version>"), each with a certificate
 * from the platform CA (digitalSignature, codeSigning; CN "qkms firmware
 * <product> <version>") that the product's devices pin.
 *
 * Contract:
 *  - One active key per product. firmware_keys_create makes a product's
 *    first key (QK_CONFLICT "conflict" when it has one); firmware_keys_rotate
 *    makes version N+1 active and retires N, pinned by devices until
 *    overlap_until (now + overlap_days, 1..365). Each runs under a
 *    per-product advisory lock, so two instances cannot make two keys, and
 *    commits its row with an audit row (firmware.key_created,
 *    firmware.key_rotated).
 *  - The token key is made before the row; a retry after a failure between
 *    the two takes the key the token already has under that label.
 *  - No private key byte is ever in kmsd's memory.
 *  - Errors (err.h): QK_INVALID "invalid_product", "invalid_overlap";
 *    QK_NOT_FOUND "not_found" (rotate: no key for the product);
 *    QK_CONFLICT "conflict"; QK_UNAVAILABLE "token_unavailable",
 *    "unavailable"; QK_INTERNAL.
 */
#ifndef QKMS_FIRMWARE_KEYS_H
#define QKMS_FIRMWARE_KEYS_H

#include <jansson.h>

#include "err.h"
#include "service/service.h"

/* The extended key usage of data-signing certificates: id-kp-
 * documentSigning (RFC 9336), so no verifier mistakes one for the
 * platform's v2 signing certificate (no EKU; the device library refuses a
 * signing certificate with one) nor for a firmware key's (codeSigning). */
#define DATA_SIGNING_EKU "1.3.6.1.5.5.7.3.36"

#define FIRMWARE_KEY_DAYS 1825 /* five years, at most the CA's remaining life */
#define FIRMWARE_OVERLAP_DEFAULT_DAYS 30
#define FIRMWARE_OVERLAP_MAX_DAYS 365

/* Product names: 1-64 of A-Z a-z 0-9 . _ -, starting with a letter or digit. */
bool firmware_product_valid(const char *product);

/* *out = the new key's record (as in the list). */
qk_kind firmware_keys_create(qk_svc *s, const qk_principal *who, const char *product,
                             json_t **out, qk_err *e);
qk_kind firmware_keys_rotate(qk_svc *s, const qk_principal *who, const char *product,
                             int overlap_days, json_t **out, qk_err *e);
/* {"keys":[{"product","version","state","sha256","subject","not_after",
 * "overlap_until","created_at","created_by","retired_at","certificate",
 * "revoked_at","revoke_reason"}]},
 * by product then version; product NULL: every product. */
qk_kind firmware_keys_list(qk_svc *s, const char *product, json_t **out, qk_err *e);

/* The data-signing keys: as above, by name. */
qk_kind data_keys_create(qk_svc *s, const qk_principal *who, const char *name, json_t **out,
                         qk_err *e);
qk_kind data_keys_rotate(qk_svc *s, const qk_principal *who, const char *name, int overlap_days,
                         json_t **out, qk_err *e);
qk_kind data_keys_list(qk_svc *s, const char *name, json_t **out, qk_err *e);

/* Revoke a version (active or retired) for reason (an RFC 5280 name,
 * crl_reason_code; NULL: unspecified): it signs nothing more (its private
 * key is destroyed in the token once the revocation committed; data
 * signatures take the key's lock shared, so none is made after the
 * revocation is answered), is no longer among the certificates to pin or
 * verify with, and its certificate goes into its CA version's CRL
 * (refreshed at once; a failure there is logged, the revocation stays). A product whose active
 * key is revoked has none: create makes the next version. Audited
 * (firmware.key_revoked, signing.key_revoked). *out the key's record.
 * QK_NOT_FOUND "not_found"; QK_CONFLICT "conflict" (revoked already);
 * QK_INVALID "invalid_reason" and the name's code. */
qk_kind firmware_keys_revoke(qk_svc *s, const qk_principal *who, const char *product, int version,
                             const char *reason, json_t **out, qk_err *e);
qk_kind data_keys_revoke(qk_svc *s, const qk_principal *who, const char *name, int version,
                         const char *reason, json_t **out, qk_err *e);

#endif
