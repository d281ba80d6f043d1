/*
 * qkms_proto — the qkms device protocol v1, transport-independent core.
 * Used by devices (through qkms_device.h) and by kmsd itself, so both ends
 * build the same bytes; docs/protocol.md is the specification and
 * tests/vectors/protocol-v1.json the test vectors.
 *
 * Primitives:
 *  - base64url without padding (RFC 4648 section 5), strict decoding;
 *  - AES-GCM (128- or 256-bit key by its length, 96-bit nonce, 128-bit tag);
 *  - the associated data of requests and responses:
 *      request:  "qkms/v1/req\n" op "\n" device_id "\n" key_index
 *      response: "qkms/v1/resp\n" session_id "\n" device_id "\n" key_index "\n"
 *                key_id "\n" expires_at "\n" request_nonce_b64url
 *    (integers in decimal ASCII).
 * Only OpenSSL's libcrypto is used. Functions return 0 on success, -1 on
 * failure; nothing here logs or keeps key bytes.
 */
#ifndef QKMS_PROTO_H
#define QKMS_PROTO_H

#include <stddef.h>
#include <stdint.h>

#define QKP_VERSION 1
#define QKP_NONCE_LEN 12
#define QKP_TAG_LEN 16
#define QKP_MAX_ID 128
#define QKP_MAX_PLAINTEXT 2048
#define QKP_MAX_AAD 512
#define QKP_MAX_EPOCH 999999 /* a session's epochs are 0..QKP_MAX_EPOCH */

/* Output size for n input bytes, including the NUL. */
#define QKP_B64URL_LEN(n) ((((n) + 2) / 3) * 4 + 1)

void qkp_b64url_encode(const uint8_t *in, size_t len, char *out);
/* Returns the decoded length, or -1 on bad characters, padding, trailing
 * bits, or a result larger than cap. */
long qkp_b64url_decode(const char *in, size_t len, uint8_t *out, size_t cap);

/* Identifiers (device and session IDs): 1-128 printable ASCII characters
 * (0x21-0x7E) except / \ % ? # */
int qkp_id_valid(const char *s);

/* Both return the AAD length (out is NUL-terminated), or -1 when it does not
 * fit, a string is NULL or holds '\n' (the field separator), key_index is
 * outside 0-255 or expires_at is negative. */
int qkp_request_aad(const char *op, const char *device_id, int key_index, char *out, size_t cap);
int qkp_response_aad(const char *session_id, const char *device_id, int key_index,
                     const char *key_id, int64_t expires_at, const char *req_nonce_b64,
                     char *out, size_t cap);

/* The response AAD of a request that named an epoch or a direction
 * (docs/protocol.md, "Epochs and direction keys"): qkp_response_aad's, then
 * "\n" epoch "\n" direction ("" for none, else "a2b" or "b2a"). -1 also for
 * a negative epoch or another direction. */
int qkp_response_aad_ext(const char *session_id, const char *device_id, int key_index,
                         const char *key_id, int64_t expires_at, const char *req_nonce_b64,
                         int epoch, const char *direction, char *out, size_t cap);

/* The response AAD of a key stream's key (docs/protocol.md, "Key
 * streams"): "qkms/v1/stream\n" stream_id "\n" device_id "\n" key_index
 * "\n" seq "\n" key_id "\n" expires_at "\n" req_nonce_b64. -1 as
 * qkp_response_aad, and for a negative seq. */
int qkp_stream_aad(const char *stream_id, const char *device_id, int key_index, int64_t seq,
                   const char *key_id, int64_t expires_at, const char *req_nonce_b64, char *out,
                   size_t cap);

/*
 * The v1 envelope's suites (docs/protocol.md, "Suites"): what a device key
 * seals with. QKP_SUITE_AES: AES-GCM under the key (16 or 32 bytes), as
 * qkp_seal. QKP_SUITE_SM4: for a 16-byte SM4 key K, SM4-CTR then HMAC-SM3
 * (encrypt-then-MAC, since OpenSSL 3.0 has no SM4-GCM) with
 *   Ke = HMAC-SM3(K, "qkms/v1/sm4/enc")[0..16]
 *   Km = HMAC-SM3(K, "qkms/v1/sm4/mac")
 *   C  = SM4-CTR(Ke, counter block nonce || 00000000, plaintext)
 *   T  = HMAC-SM3(Km, "qkms/v1/sm4\n" || be64(len(aad)) || aad || nonce || C)[0..16]
 * out = C || T: the same lengths as AES-GCM's.
 */
typedef enum { QKP_SUITE_AES = 0, QKP_SUITE_SM4 = 1 } qkp_suite;

/* The suite of a key algorithm: "AES-128", "AES-256" -> QKP_SUITE_AES,
 * "SM4-128" -> QKP_SUITE_SM4, anything else -1. */
int qkp_suite_of(const char *algorithm);

/* qkp_seal and qkp_open in the suite (same contracts); SM4 takes 16-byte
 * keys only. */
int qkp_seal_suite(qkp_suite suite, const uint8_t *key, size_t key_len,
                   const uint8_t nonce[QKP_NONCE_LEN], const void *aad, size_t aad_len,
                   const uint8_t *pt, size_t len, uint8_t *out);
int qkp_open_suite(qkp_suite suite, const uint8_t *key, size_t key_len,
                   const uint8_t nonce[QKP_NONCE_LEN], const void *aad, size_t aad_len,
                   const uint8_t *in, size_t len, uint8_t *out);

/* out receives len + 16 bytes (ciphertext then tag). */
int qkp_seal(const uint8_t *key, size_t key_len, const uint8_t nonce[QKP_NONCE_LEN],
             const void *aad, size_t aad_len, const uint8_t *pt, size_t len, uint8_t *out);
/* in is ciphertext then tag (len >= 16); out receives len - 16 bytes. On
 * failure (wrong key, nonce, AAD or tag) out is zeroed, never left holding
 * unauthenticated plaintext. */
int qkp_open(const uint8_t *key, size_t key_len, const uint8_t nonce[QKP_NONCE_LEN],
             const void *aad, size_t aad_len, const uint8_t *in, size_t len, uint8_t *out);

#endif
