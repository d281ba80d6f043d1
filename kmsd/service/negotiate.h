/*
 * negotiate — the service side of device protocol v2 (docs/protocol.md,
 * "qkms device protocol v2"): authenticating a request in its three modes,
 * opening the client random, sealing the answer's payload to the device and
 * signing the answer with the platform's key. The door (api/device_v2.c)
 * owns the JSON; the session itself is sessions.h's, called with the
 * device_auth made here.
 *
 * Contract:
 *  - negotiate_authenticate: mode 3 is device_auth_open with the v2 AAD.
 *    Modes 1 and 2 look the device and its certificates up in one indexed
 *    query; mode 1 takes the certificate in the request, which must be on
 *    record for the device (by its SHA-256), active and within its
 *    validity, and if bound from another issuer also chain to it with its
 *    CRLs (certs_verify_chain); mode 2 takes the device's active
 *    certificates on record (the newest first). Certificate keys are
 *    cached by digest (certkeys.h), their state never. The signature over "qkms/v2/req\n" || R must
 *    verify under the certificate's key. Then the device_auth says by_cert,
 *    with the certificate's SHA-256, which the stored functions re-check.
 *  - Refusals: QK_UNAUTHENTICATED with code certificate_refused,
 *    no_bound_certificate or unauthenticated (the reason in the log only
 *    for the last); QK_INVALID unknown_platform_key, invalid_client_random;
 *    QK_UNAVAILABLE (database, token). Each refusal of a request that names
 *    a registered device is audited and its nonce recorded
 *    (negotiate_refused, schema/014's qkms_v2_refused); a nonce already
 *    used turns the refusal into the replay's 401.
 *  - The v2_auth owns the device_auth and the device's public key
 *    (v2_auth_clear). Secrets (CR, Z, K2) are wiped before returning.
 */
#ifndef QKMS_NEGOTIATE_H
#define QKMS_NEGOTIATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <openssl/evp.h>

#include "err.h"
#include "log.h"
#include "qkms_proto2.h"
#include "service/device_auth.h"
#include "service/platform_keys.h"
#include "service/service.h"

/* A v2 request's authentication material, as the door decoded it. */
typedef struct {
    const char *op;        /* "key" or "end" */
    const char *device_id; /* a valid ID */
    int mode;              /* 1, 2 or 3 */
    /* modes 1 and 2 */
    const uint8_t *inner;  /* R, exactly as sent */
    size_t inner_len;
    const uint8_t *sig;    /* 64 bytes */
    const uint8_t *cert;   /* mode 1: the certificate's DER */
    size_t cert_len;
    /* all modes: the request's nonce (the inner one in modes 1, 2, the
     * outer one in mode 3) and, when the door could read it, its ts */
    const uint8_t *nonce;  /* QKP_NONCE_LEN bytes */
    int64_t ts;
    bool has_ts;
    /* mode 3 */
    int key_index;
    const uint8_t *ct;
    size_t ct_len;
    uint64_t *t0;          /* the stage clock, or NULL */
} v2_request;

typedef struct {
    device_auth da;        /* mode 3: da.key and da.inner (R); modes 1, 2: by_cert */
    EVP_PKEY *device_pub;  /* modes 1, 2: the certificate's key */
    uint8_t h[QKP2_HASH_LEN]; /* SHA-256(R) */
} v2_auth;

qk_kind negotiate_authenticate(qk_svc *s, const log_ctx *log, const v2_request *rq, v2_auth *a,
                               qk_err *e);
void v2_auth_clear(v2_auth *a);

/* Record a refusal of rq for `reason` (an error code of docs/protocol.md),
 * with detail (stolen, may be NULL); authenticated: the request proved its
 * device (else the audit row's actor is "unauthenticated"). True when the
 * nonce had been used, i.e. the request is a replay and must be answered
 * as one. */
bool negotiate_refused(qk_svc *s, const log_ctx *log, const v2_request *rq, const char *reason,
                       bool authenticated, json_t *detail);

/* The platform key a request names by certificate SHA-256: the signing
 * key (pin) or the key-agreement key (ka). QK_INVALID unknown_platform_key
 * (recorded as a refusal) when it names none usable. */
qk_kind negotiate_platform_key(qk_svc *s, const log_ctx *log, const v2_request *rq,
                               platform_purpose p, const uint8_t sha[32],
                               const platform_key **out, qk_err *e);

/* CR from cr (docs/protocol.md, "Request"): ECDH with the key-agreement
 * key in the token. QK_INVALID invalid_client_random (recorded) when it
 * does not open; QK_UNAVAILABLE token_unavailable. */
qk_kind negotiate_open_cr(qk_svc *s, const log_ctx *log, const v2_request *rq,
                          const platform_key *ka, const uint8_t epk[QKP2_POINT_LEN],
                          const uint8_t cr[QKP2_CR_LEN], uint8_t out[QKP2_RANDOM_LEN], qk_err *e);

/* The answer's payload sealed to the device (docs/protocol.md, "Response"):
 * a fresh ephemeral pair, K2 from it, the request's epk and the device's
 * certificate key (modes 1, 2) or device key (mode 3). epk_s gets the
 * ephemeral public point, ct len + 16 bytes. */
qk_kind negotiate_seal(const v2_auth *a, const uint8_t epk[QKP2_POINT_LEN], const char *key_id,
                       const uint8_t *payload, size_t len, uint8_t epk_s[QKP2_POINT_LEN],
                       uint8_t *ct, qk_err *e);

/* sig = the platform's signature (signing key k, in the token) over
 * "qkms/v2/resp\n" || P. QK_UNAVAILABLE token_unavailable. */
qk_kind negotiate_sign(qk_svc *s, const platform_key *k, const uint8_t *p, size_t len,
                       uint8_t sig[QKP2_SIG_LEN], qk_err *e);

#endif
