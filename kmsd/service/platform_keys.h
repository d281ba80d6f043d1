/*
 * platform_keys — the platform's own key pairs for device protocol v2
 * (docs/protocol.md, "The platform's keys"): a signing key that signs every
 * v2 answer and a key-agreement key that devices encrypt their client
 * randoms to. Both are P-256 pairs generated in the token (private keys
 * sensitive, never extractable; sign-only and derive-only), each with a
 * certificate from the platform CA, recorded in platform_keys (schema/014).
 *
 * Contract:
 *  - platform_keys_open, at start and under an advisory lock (instances
 *    starting together agree): with no active version, one is made
 *    (labels "qkms-v2-sign-<v>", "qkms-v2-agree-<v>"). The active version's
 *    private keys must be in the token and match their certificates, or
 *    kmsd refuses to start.
 *  - A version is active, retired (still answering devices that name it,
 *    until its overlap_until) or destroyed (its private keys deleted from
 *    the token; requests naming it are refused). platform_keys_find hands
 *    out only a usable key: active, or retired within its overlap.
 *  - platform_keys_rotate makes version N+1 active and retires N with an
 *    overlap of platform_key_overlap_days, in one transaction with its
 *    audit row (platform.rotated). platform_keys_refresh (the maintenance
 *    thread) takes in versions other instances made, destroys versions
 *    whose overlap has ended (audit platform.destroyed), and rotates on its
 *    own when the active certificates have less than the overlap left.
 *  - Thread-safe: versions are appended, never freed while kmsd runs, so
 *    a platform_key pointer stays valid; states and key handles change
 *    under a lock. Signing and deriving happen in the token: no private
 *    key byte is ever in kmsd's memory.
 */
#ifndef QKMS_PLATFORM_KEYS_H
#define QKMS_PLATFORM_KEYS_H

#include <stdint.h>

#include <jansson.h>

#include "err.h"
#include "p11.h"
#include "service/ca.h"
#include "store/db.h"

typedef struct platform_keys platform_keys;
typedef struct platform_key platform_key;
typedef enum { PLATFORM_SIGN = 0, PLATFORM_AGREE = 1 } platform_purpose;

/* 0, or -1 with err (why kmsd refuses to start). */
int platform_keys_open(platform_keys **out, db_pool *db, p11_token *t, qk_ca *ca,
                       int overlap_days, char *err, size_t errlen);
void platform_keys_free(platform_keys *pk);

/* The usable key of that purpose whose certificate's DER has this SHA-256,
 * or NULL (never issued, or destroyed, or past its overlap). */
const platform_key *platform_keys_find(platform_keys *pk, platform_purpose p,
                                       const uint8_t sha256[32]);
/* The active key of that purpose (never NULL after a successful open). */
const platform_key *platform_keys_active(platform_keys *pk, platform_purpose p);

/* The certificate's SHA-256 as hex, the public point (65 bytes), the
 * version: plain reads of data that never changes. */
const char *platform_key_sha_hex(const platform_key *k);
const uint8_t *platform_key_point(const platform_key *k);
int platform_key_version(const platform_key *k);

/* The key's private half is in the token now (its handle found): asked
 * before a session is committed, so that an answer that cannot be signed
 * is refused before, not after (a failure in between is still possible,
 * as a lost answer is). */
CK_RV platform_keys_ready(platform_keys *pk, const platform_key *k);
/* ECDSA in the token over a SHA-256 digest: sig = r || s. */
CK_RV platform_keys_sign(platform_keys *pk, const platform_key *k, const uint8_t digest[32],
                         uint8_t sig[64]);
/* ECDH in the token with a peer's point (65 bytes): z = 32 bytes. */
CK_RV platform_keys_ecdh(platform_keys *pk, const platform_key *k, const uint8_t *point,
                         size_t point_len, uint8_t z[32]);

/* GET /v1/platform/certificates: {"certificates":[{purpose, version, state,
 * sha256, subject, not_before, not_after, overlap_until, pem}]}, active
 * first, then the retired ones still usable. */
qk_kind platform_keys_json(platform_keys *pk, json_t **out, qk_err *e);
/* Rotate (see the contract); *version the new one. */
qk_kind platform_keys_rotate(platform_keys *pk, db_pool *db, const char *actor, int *version,
                             qk_err *e);
/* The maintenance pass (see the contract). */
qk_kind platform_keys_refresh(platform_keys *pk, db_pool *db, qk_err *e);

#endif
