/*
 * crypto_sign — signatures with the platform's data-signing keys
 * (docs/api.md "Signatures"; seed 000: the cipher machine signs for the
 * business platform): POST /v1/crypto/sign and /verify. The keys are the
 * purpose 'data' keys of firmware_keys.h (ECDSA P-256 in the token, a
 * certificate from the platform CA), never the v2 answer key nor a
 * firmware key.
 *
 * Contract:
 *  - Signing: for a crypto token acting for @platform only (a device's
 *    back end has no business signing as the platform); the data's SHA-256
 *    signed in the token by the name's active key, DER as `openssl dgst
 *    -sha256 -sign` writes it. Audited (crypto.sign) with the key, version
 *    and size, never the data nor its digest; refusals too (crypto.refused).
 *  - Verifying: any crypto token; against every version of the name (the
 *    one given, or newest first), with the certificates' public keys on the
 *    host. A signature that does not verify is an answer ({"valid":false}),
 *    not an error. Audited (crypto.verify) with the outcome and size.
 *  - size: the data's length, or -1 when the caller gave its digest.
 *  - Errors (err.h): QK_FORBIDDEN "not_a_party" (signing by a token not
 *    acting for @platform); QK_NOT_FOUND "unknown_key" (no data-signing key
 *    of that name, or no such version); QK_INVALID "invalid_name";
 *    QK_UNAUTHENTICATED "unauthenticated" (the token went away);
 *    QK_UNAVAILABLE "token_unavailable", "unavailable"; QK_INTERNAL.
 */
#ifndef QKMS_CRYPTO_SIGN_H
#define QKMS_CRYPTO_SIGN_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "err.h"
#include "service/service.h"

/* *out {"key","version","certificate_sha256","algorithm":"ecdsa-p256-sha256",
 * "signature" (DER, standard base64)}. */
qk_kind crypto_sign(qk_svc *s, const qk_principal *who, const char *name,
                    const uint8_t digest[32], long long size, json_t **out, qk_err *e);
/* version 0: any; *out {"valid","key","version" (the one that verified, or
 * null)}. */
qk_kind crypto_verify(qk_svc *s, const qk_principal *who, const char *name, int version,
                      const uint8_t digest[32], long long size, const uint8_t *sig, size_t siglen,
                      json_t **out, qk_err *e);

#endif
