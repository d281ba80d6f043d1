/*
 * device_auth — authenticating a device request (docs/protocol.md,
 * "Authentication"): the service primitive every device door calls before
 * it asks the session service for anything.
 *
 * A request names a device and one of its key indices and carries an
 * AES-GCM ciphertext under that key, with the operation, the device ID and
 * the key index in the AAD. device_auth_open finds the key row (through the
 * keycache, else one indexed query), checks the device and key states and
 * the key's validity, unwraps the key through the token into the secure
 * heap and opens the ciphertext. The opened bytes (the inner request) are
 * the door's to parse.
 *
 * Contract:
 *  - Every authentication failure is the same QK_UNAUTHENTICATED
 *    "unauthenticated" "request could not be authenticated" for the client;
 *    the reason is written to the log only (one "device request refused"
 *    line with an auth_failure field, the request's context, never a
 *    principal: nothing was authenticated) and counted as a refusal.
 *    device_auth_fail is that one path, also used by the session service
 *    when the database's authoritative re-check refuses.
 *  - Other failures: QK_UNAVAILABLE (database or token down, Retry-After),
 *    QK_INTERNAL.
 *  - The checks here may rest on a cached key row; the stored functions the
 *    session service calls repeat them in their own transaction and record
 *    the nonce (replays and the clock window are judged there).
 *  - A device_auth owns the unwrapped device key and the inner request, both
 *    in the secure heap: device_auth_clear wipes and frees them (safe on a
 *    zeroed or cleared device_auth, and on every path of device_auth_open).
 */
#ifndef QKMS_DEVICE_AUTH_H
#define QKMS_DEVICE_AUTH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "err.h"
#include "log.h"
#include "qkms_proto.h"
#include "service/service.h"

/* A device request as it arrived (the envelope's fields, decoded). */
typedef struct {
    const char *op;        /* the operation bound into the AAD: "key", "end" */
    const char *device_id; /* the claimed device: a valid ID (qkp_id_valid) */
    int key_index;         /* 0..255 */
    const uint8_t *nonce;  /* QKP_NONCE_LEN bytes */
    const uint8_t *ct;     /* ciphertext and tag */
    size_t ct_len;         /* QKP_TAG_LEN + 1 .. QKP_MAX_PLAINTEXT + QKP_TAG_LEN */
    uint64_t *t0;          /* the request's stage clock (session_metrics.h), or NULL */
    int version;           /* the protocol, for the AAD's label: 0 or 1 v1, 2 v2 (mode 3) */
} device_request;

/* An authenticated device request. */
typedef struct device_auth {
    char device_id[QKP_MAX_ID + 1];
    int key_index;
    long long device_pk;      /* the device's row */
    uint8_t nonce[QKP_NONCE_LEN];
    uint8_t *key;             /* the device key, secure heap */
    size_t key_len;
    int suite;                /* its envelope suite (qkp_suite): AES-GCM or SM4 */
    uint8_t *inner;           /* the opened inner request, secure heap */
    size_t inner_len;
    uint64_t *t0;             /* the request's stage clock, or NULL */
    bool replayed;            /* the database found the nonce used (the door may
                               * refund what the request cost) */
    char purpose[8];          /* the key's: "access" or "generic" (a "local" key
                               * never authenticates) */
    /* Protocol v2 modes 1 and 2 (negotiate.h): authenticated by a signature
     * under this device certificate (SHA-256 of its DER), not by a device
     * key: key is NULL, key_index -1, and the stored functions re-check the
     * certificate instead of the key. */
    bool by_cert;
    uint8_t cert_sha256[32];
} device_auth;

/* Authenticate rq: QK_OK with *a filled, or the failure in e (a cleared). */
qk_kind device_auth_open(qk_svc *s, const log_ctx *log, const device_request *rq, device_auth *a,
                         qk_err *e);
/* Wipe and free what a holds; a is zeroed. */
void device_auth_clear(device_auth *a);

/* The one authentication failure: log why (with log's request context,
 * never its principal), count it, set e. Returns QK_UNAUTHENTICATED. */
qk_kind device_auth_fail(qk_svc *s, const log_ctx *log, const char *device_id, int key_index,
                         const char *why, qk_err *e);

#endif
