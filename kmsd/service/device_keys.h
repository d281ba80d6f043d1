/*
 * device_keys — a device's key material: making a key and wrapping it under
 * the active master key, unwrapping a stored one, key check values, the key
 * listing of a device record, and rotation (a new key index, the older keys
 * retiring after a grace period).
 *
 * Contract:
 *  - Plaintext key bytes exist only in the secure heap (or a caller's
 *    secure buffer of DEVICE_KEY_BUF bytes), for as long as one operation
 *    needs them, and are wiped after; they never reach a log line, an error
 *    detail or PostgreSQL. What leaves this module is a wrapped key (hex),
 *    a KCV, or plaintext in a caller-owned secure buffer.
 *  - A key is bound to its row: the wrap's associated data is
 *    device_key_context(device_id, index, algorithm), so a wrapped key moved to
 *    another row does not open.
 *  - Key generation and wrapping (entropy, token) happen before any
 *    transaction: a retried database transaction never repeats them.
 *  - Errors are the service currency (err.h): qk_kind returned, *e filled.
 */
#ifndef QKMS_DEVICE_KEYS_H
#define QKMS_DEVICE_KEYS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "err.h"
#include "service/service.h"

/* Size of a buffer device_key_unwrap may write into (secure heap). */
#define DEVICE_KEY_BUF (KEYWRAP_MAX_KEY + 16)

/* A device key's algorithm, as stored and in fill documents: "AES-128",
 * "AES-256" or "SM4-128" (the SM4 suite of protocol v1, docs/protocol.md
 * "Suites"). */
bool device_key_alg_valid(const char *algorithm);
/* Its length in bytes: 32 for "AES-256", else 16. */
size_t device_key_len(const char *algorithm);

/* Key check value: first 5 bytes of CMAC(key, 0^16) in the key's cipher
 * (AES or SM4), as 10 hex digits. 0, or -1 for a length or algorithm that
 * does not fit. */
int device_key_kcv(const char *algorithm, const uint8_t *key, size_t len, char out[11]);

/* A new key of algorithm for (device_id, index) from the entropy
 * interface, wrapped under the active master key: *wrapped_hex (malloc'd,
 * the caller frees), *master_version the version that wrapped it, *prov the
 * entropy provenance (a static string). QK_UNAVAILABLE "entropy_unavailable"
 * or "token_unavailable" (Retry-After 1) when a dependency is down. */
qk_kind device_key_new(qk_svc *s, const char *device_id, int index, const char *algorithm,
                       char **wrapped_hex, int *master_version, const char **prov, qk_err *e);
/* Unwrap the stored key (hex) of (device_id, index, algorithm) into key
 * (DEVICE_KEY_BUF bytes, secure heap); *klen its length. A key that fails
 * authentication is logged (device and index, never bytes). */
qk_kind device_key_unwrap(qk_svc *s, const char *device_id, int index, const char *algorithm,
                          const char *hexblob, uint8_t *key, size_t *klen, qk_err *e);

/* After a transaction failed with st having wrapped under master version
 * used: whether another instance rotated the master key meanwhile (the
 * database refused the version, DB_RETRY) and a refresh moved this one to
 * another version, so wrapping again and retrying can succeed. */
bool device_keys_master_moved(qk_svc *s, db_status st, uint32_t used);

/* The keys of device_id (Q_DEVICE_KEYS on c, the caller's connection) as a
 * JSON array of key records; with_kcv adds each live key's "kcv" (which
 * unwraps it). *out is new, or NULL on failure. */
qk_kind device_keys_list(qk_svc *s, db_conn *c, const char *device_id, bool with_kcv,
                         json_t **out, qk_err *e);

/* Rotate: add a new key to device_id for purpose (NULL: one for each
 * purpose its active keys have, in the order access, local, generic; a
 * device without active keys gets a generic one), at the next key indices;
 * its older active keys of those purposes retire after grace_days.
 * key_bits <= 0: as the newest key (128 when none); validity_days <= 0:
 * the configured default. One transaction with its audit row
 * ("device.rotated"); the key cache entry is dropped. QK_NOT_FOUND
 * "not_found"; QK_INVALID "invalid_key_purposes"; QK_CONFLICT
 * "invalid_state" (revoked), "key_index_exhausted", or "conflict" after
 * three concurrent rotations. */
qk_kind device_keys_rotate(qk_svc *s, const qk_principal *who, const char *device_id,
                           const char *purpose, int grace_days, int key_bits, int validity_days,
                           qk_err *e);

#endif
