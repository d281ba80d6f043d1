/*
 * keywrap — key material at rest, wrapped under a master key held in the token.
 *
 * Contract:
 *  - Master keys are AES-256 token objects labelled "<prefix>-<version>"
 *    (e.g. qkms-master-1), created sensitive and never extractable; their
 *    bytes never leave the token. Several versions may be loaded at once
 *    (rotation); one is active for new wraps.
 *  - A wrapped blob is self-describing:
 *        byte 0       format (0x01)
 *        bytes 1..4   master key version, big-endian
 *        bytes 5..16  96-bit random IV
 *        bytes 17..   AES-256-GCM ciphertext, then the 16-byte tag
 *    The token computes GCM with associated data = blob bytes 0..4 followed
 *    by the caller's context (for example "device:<id>:<index>"), so a blob
 *    moved to another row, or relabelled to another version, fails to open.
 *  - Unwrapped bytes are written only into the caller's buffer; callers keep
 *    them in locked memory and zeroize them.
 *  - Every GCM invocation with a new random IV (keywrap_wrap, keywrap_mac)
 *    is counted per version before it runs; kmsd drains the counts into the
 *    database (SP 800-38D's 2^32 budget per key, docs/operations.md).
 */
#ifndef QKMS_KEYWRAP_H
#define QKMS_KEYWRAP_H

#include "p11.h"

#define KEYWRAP_FORMAT 0x01
#define KEYWRAP_HDR 5
#define KEYWRAP_OVERHEAD (KEYWRAP_HDR + 12 + 16)
#define KEYWRAP_MAX_KEY 64
#define KEYWRAP_KCV_LEN 16

typedef struct keywrap keywrap;

CK_RV keywrap_new(keywrap **out, p11_token *t, const char *label_prefix);
void keywrap_free(keywrap *kw);

/* Label of a version, e.g. "qkms-master-1". */
void keywrap_label(const keywrap *kw, uint32_t version, char *buf, size_t len);

/* Find version in the token and remember its handle; *found false if absent. */
CK_RV keywrap_load(keywrap *kw, uint32_t version, bool *found);
/* Generate version in the token (it must not exist yet) and remember it. */
CK_RV keywrap_create(keywrap *kw, uint32_t version);
/* Key check value: GMAC of a fixed string under the loaded version, so the
 * database can tell the right key from another one with the same label. */
CK_RV keywrap_kcv(keywrap *kw, uint32_t version, uint8_t kcv[KEYWRAP_KCV_LEN]);
/* Message authentication with a master key (the audit log's chain heads):
 * tag = GMAC under version, with the caller's 96-bit iv (random for each new
 * tag, stored beside it), over 0x02 || data. The leading 0x02 keeps MAC
 * inputs apart from wraps (associated data starting 0x01) and the check value.
 * data: at most KEYWRAP_MAC_MAX bytes. */
#define KEYWRAP_MAC_MAX 1024
#define KEYWRAP_MAC_LEN 16
CK_RV keywrap_mac(keywrap *kw, uint32_t version, const uint8_t iv[12], const uint8_t *data,
                  size_t len, uint8_t tag[KEYWRAP_MAC_LEN]);
/* CKR_OK when tag is right, CKR_SIGNATURE_INVALID when not,
 * CKR_KEY_HANDLE_INVALID when version is not loaded, else the token's error. */
CK_RV keywrap_mac_verify(keywrap *kw, uint32_t version, const uint8_t iv[12],
                         const uint8_t *data, size_t len, const uint8_t tag[KEYWRAP_MAC_LEN]);
/* Attributes of a loaded version (for status and tests). */
CK_RV keywrap_info(keywrap *kw, uint32_t version, p11_key_info *info);

/* Remember the check value a version must keep (set once verified). */
CK_RV keywrap_expect_kcv(keywrap *kw, uint32_t version, const uint8_t kcv[KEYWRAP_KCV_LEN]);
/* Readiness: the active master key still answers with its check value.
 * CKR_KEY_CHANGED when it answers differently. */
CK_RV keywrap_check(keywrap *kw);

/* Destroy a version's key object in the token and forget it (rotation, once
 * nothing is wrapped under it any more). */
CK_RV keywrap_destroy(keywrap *kw, uint32_t version);
/* Forget a loaded version without touching the token (a key under its
 * label that is not the one the database recorded). */
void keywrap_forget(keywrap *kw, uint32_t version);
/* Whether a version is loaded. */
bool keywrap_has(keywrap *kw, uint32_t version);

void keywrap_set_active(keywrap *kw, uint32_t version);
uint32_t keywrap_active(const keywrap *kw);

/* Wrap key (1..KEYWRAP_MAX_KEY bytes) under the active version.
 * out must hold key_len + KEYWRAP_OVERHEAD bytes. */
CK_RV keywrap_wrap(keywrap *kw, const uint8_t *ctx, size_t ctx_len, const uint8_t *key,
                   size_t key_len, uint8_t *out, size_t *out_len);
/* Unwrap a blob made by keywrap_wrap with the same context. key must hold
 * KEYWRAP_MAX_KEY + 16 bytes. Returns CKR_ENCRYPTED_DATA_INVALID for a
 * malformed or unauthenticated blob, CKR_KEY_HANDLE_INVALID when its master
 * version is not loaded. */
CK_RV keywrap_unwrap(keywrap *kw, const uint8_t *ctx, size_t ctx_len, const uint8_t *blob,
                     size_t blob_len, uint8_t *key, size_t *key_len);
/* Drain the per-version counts of new-IV invocations since the last take:
 * up to max (version, count) pairs with count > 0, returned and reset. */
int keywrap_uses_take(keywrap *kw, uint32_t *versions, uint64_t *counts, int max);
/* Give back counts that could not be recorded (added to the next take). */
void keywrap_uses_return(keywrap *kw, uint32_t version, uint64_t n);
/* Master version a blob claims (0 when malformed). */
uint32_t keywrap_blob_version(const uint8_t *blob, size_t blob_len);

#endif
