/*
 * qkms_device2 — the device side of protocol v2 (docs/protocol.md, "qkms
 * device protocol v2"), without any network: the platform's pinned
 * certificates, the device's identity (certificate and key, or a fill
 * document's keys for mode 3), the `key` and `end` request bodies, and the
 * verified answers. The transport is the caller's (qkd_http.h is one).
 *
 * Contract (as qkms_device.h's, and):
 *  - A request holds its ephemeral private key and client random until its
 *    answer is parsed; qkd2_request_clear destroys both. A request is
 *    answered once: build a new one for a retry.
 *  - A key answer is accepted only as docs/protocol.md says ("The device
 *    accepts an answer only if"); nothing of a refused answer is returned.
 *  - Requests are built canonically (the inner request's fields in the
 *    order of the spec's table, no spaces), so the test vectors can check
 *    every byte but the ECDSA signature, which is randomized.
 *  - Only a library built with -DQKMS_TESTING takes fixed randoms
 *    (qkd2_fixed): any other build refuses them.
 */
#ifndef QKMS_DEVICE2_H
#define QKMS_DEVICE2_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "qkms_device.h"
#include "qkms_proto2.h"

#define QKD2_PATH_KEY "/v2/sessions/key"
#define QKD2_PATH_END "/v2/sessions/end"
#define QKD2_MAX_BODY 8192

/* The platform's signing and key-agreement certificates, pinned. */
typedef struct qkd2_platform qkd2_platform;
/* From PEM text holding both certificates (in any order: told apart by key
 * usage, digitalSignature or keyAgreement; of several of one purpose, the
 * first, as GET /v1/platform/certificates lists the active pair first),
 * P-256 keys. The caller has verified them against the platform CA at
 * provisioning. */
int qkd2_platform_load(qkd2_platform **out, const char *pem, size_t len, char *err, size_t errlen);
void qkd2_platform_free(qkd2_platform *p);
/* The hex SHA-256 of the signing ("pin") and key-agreement ("ka") certificates. */
const char *qkd2_platform_pin(const qkd2_platform *p);
const char *qkd2_platform_ka(const qkd2_platform *p);

/* Who the device is: mode 1 or 2 with its certificate and private key
 * (PEM; device_id NULL: the certificate's CN), or mode 3 with a fill
 * document's key of key_index. */
typedef struct qkd2_identity qkd2_identity;
int qkd2_identity_cert(qkd2_identity **out, const char *device_id, int mode, const char *cert_pem,
                       size_t cert_len, const char *key_pem, size_t key_len, char *err,
                       size_t errlen);
int qkd2_identity_keys(qkd2_identity **out, const qkd_device *d, int key_index, char *err,
                       size_t errlen);
void qkd2_identity_free(qkd2_identity *id);

/* Fixed randoms for the test vectors (QKMS_TESTING builds only); NULL
 * fields are drawn fresh. */
typedef struct {
    const uint8_t *nonce;      /* 12 bytes */
    const uint8_t *e_c;        /* the ephemeral private scalar, 32 bytes */
    const uint8_t *cr;         /* the client random, 32 bytes */
} qkd2_fixed;

typedef struct {
    qkd_op op;
    const char *path;          /* QKD2_PATH_KEY or QKD2_PATH_END */
    char device_id[QKP_MAX_ID + 1];
    char session_id[QKP_MAX_ID + 1]; /* empty when all */
    bool all;                         /* an end of every session of the device */
    int mode;
    char key_source;           /* 'a', 'b', 'c'; 0 for end */
    uint8_t nonce[QKP_NONCE_LEN];
    uint8_t h[QKP2_HASH_LEN];  /* SHA-256 of the inner request */
    uint8_t epk[QKP2_POINT_LEN];
    uint8_t cr[QKP2_RANDOM_LEN]; /* secret */
    void *e_c;                 /* EVP_PKEY, the ephemeral private key */
    char inner[QKD2_MAX_BODY]; /* R, NUL-terminated */
    size_t inner_len;
    char body[QKD2_MAX_BODY];
    size_t body_len;
} qkd2_request;

/* peer_id NULL: the platform itself is the peer (a device-platform
 * channel key; no delivered mode). */
int qkd2_request_key(qkd2_request *r, const qkd2_identity *id, const qkd2_platform *p,
                     const char *session_id, const char *peer_id, char key_source, bool delivered,
                     int64_t ts, const qkd2_fixed *fixed, char *err, size_t errlen);
int qkd2_request_end(qkd2_request *r, const qkd2_identity *id, const qkd2_platform *p,
                     const char *session_id, int64_t ts, const qkd2_fixed *fixed, char *err,
                     size_t errlen);
/* An end of every session of the device (a power-down). */
int qkd2_request_end_all(qkd2_request *r, const qkd2_identity *id, const qkd2_platform *p,
                         int64_t ts, const qkd2_fixed *fixed, char *err, size_t errlen);
void qkd2_request_clear(qkd2_request *r);

/* A 200 answer to a key request: on success *out holds the session key
 * (qkd_session_key_clear) and *source how the answer gave it ('a', 'b' or
 * 'c'; may be NULL). */
int qkd2_response_key(qkd_session_key *out, char *source, const qkd2_request *r,
                      const qkd2_identity *id, const qkd2_platform *p, const char *body,
                      size_t len, char *err, size_t errlen);
/* A 200 answer to an end request (signed, unlike v1's). */
int qkd2_response_end(const qkd2_request *r, const qkd2_platform *p, const char *body, size_t len,
                      char *err, size_t errlen);
/* A 200 answer to an end of all sessions: signed, "all" true, no
 * session_id; the numbers of sessions and key streams ended into *ended and
 * *streams_ended (either may be NULL). */
int qkd2_response_end_all(const qkd2_request *r, const qkd2_platform *p, const char *body,
                          size_t len, int *ended, int *streams_ended, char *err, size_t errlen);

#endif
