/*
 * qkms_proto2 — the cryptographic core of the qkms device protocol v2
 * (docs/protocol.md, "qkms device protocol v2"), shared by devices
 * (qkms_device2.h) and kmsd so both ends compute the same bytes;
 * tests/vectors/protocol-v2.json holds the test vectors.
 *
 * The one suite, P256-HKDF-SHA256-AES256GCM: ECDSA P-256/SHA-256 with
 * signatures as r || s (64 bytes), ECDH P-256 (the shared secret is the
 * x-coordinate), HKDF-SHA-256, AES-256-GCM with a zero nonce under keys used
 * once. Points are uncompressed (65 bytes).
 *
 * Only OpenSSL's libcrypto. Functions return 0 on success, -1 on failure;
 * nothing here logs, and secrets written to caller buffers are the
 * caller's to wipe. Derived keys on a failure path are wiped here.
 */
#ifndef QKMS_PROTO2_H
#define QKMS_PROTO2_H

#include <stddef.h>
#include <stdint.h>

#include <openssl/evp.h>

#define QKP2_VERSION 2
#define QKP2_SUITE "P256-HKDF-SHA256-AES256GCM"
#define QKP2_POINT_LEN 65  /* 0x04 || X || Y */
#define QKP2_SIG_LEN 64    /* r || s */
#define QKP2_Z_LEN 32      /* an ECDH shared secret */
#define QKP2_HASH_LEN 32   /* SHA-256: the request hash H, certificate pins */
#define QKP2_RANDOM_LEN 32 /* the client random CR and the server random SR */
#define QKP2_CR_LEN (QKP2_RANDOM_LEN + 16)
#define QKP2_KEY_LEN 32    /* K1, K2 */

/* HKDF-SHA-256 (RFC 5869) into out[len]. */
int qkp2_hkdf(const uint8_t *ikm, size_t ikm_len, const uint8_t *salt, size_t salt_len,
              const uint8_t *info, size_t info_len, uint8_t *out, size_t len);

/* A P-256 public key from an uncompressed point (refused unless it is on
 * the curve), or NULL. */
EVP_PKEY *qkp2_point_key(const uint8_t *pt, size_t len);
/* The uncompressed point of a P-256 key (public or private). */
int qkp2_key_point(EVP_PKEY *k, uint8_t out[QKP2_POINT_LEN]);
/* A fresh P-256 key pair (an ephemeral), or NULL. */
EVP_PKEY *qkp2_keygen(void);
/* A P-256 private key from its 32-byte scalar (test vectors), or NULL. */
EVP_PKEY *qkp2_priv_from_scalar(const uint8_t d[32]);
/* ECDH: z = x-coordinate of priv * peer. */
int qkp2_ecdh(EVP_PKEY *priv, EVP_PKEY *peer, uint8_t z[QKP2_Z_LEN]);

/* ECDSA P-256 SHA-256 over prefix || msg: sig = r || s. */
int qkp2_sign(EVP_PKEY *priv, const char *prefix, const uint8_t *msg, size_t len,
              uint8_t sig[QKP2_SIG_LEN]);
/* 0 when sig (r || s) verifies under pub over prefix || msg. */
int qkp2_verify(EVP_PKEY *pub, const char *prefix, const uint8_t *msg, size_t len,
                const uint8_t sig[QKP2_SIG_LEN]);
/* H = SHA-256(N || R): the request hash, over the request's 12-byte nonce
 * and the inner request's bytes. */
int qkp2_request_hash(const uint8_t nonce[12], const uint8_t *r, size_t len,
                      uint8_t h[QKP2_HASH_LEN]);
/* SHA-256 of prefix || msg (the digest the token signs for kmsd). */
int qkp2_digest(const char *prefix, const uint8_t *msg, size_t len, uint8_t out[32]);
/* r || s <-> DER ECDSA-Sig-Value. der_len in: capacity, out: length. */
int qkp2_sig_to_der(const uint8_t sig[QKP2_SIG_LEN], uint8_t *der, size_t *der_len);
int qkp2_sig_from_der(const uint8_t *der, size_t der_len, uint8_t sig[QKP2_SIG_LEN]);

#define QKP2_REQ_PREFIX "qkms/v2/req\n"
#define QKP2_RESP_PREFIX "qkms/v2/resp\n"

/* K1 = HKDF(Z1, salt = epk || ka_point, info = "qkms/v2/cr" || nonce, 32). */
int qkp2_cr_key(const uint8_t z1[QKP2_Z_LEN], const uint8_t epk[QKP2_POINT_LEN],
                const uint8_t ka_point[QKP2_POINT_LEN], const uint8_t *nonce, size_t nonce_len,
                uint8_t k1[QKP2_KEY_LEN]);
/* cr = AES-256-GCM(K1, 0, aad = device_id, CR) and its inverse (out is
 * zeroed when the tag does not verify). */
int qkp2_cr_seal(const uint8_t k1[QKP2_KEY_LEN], const char *device_id,
                 const uint8_t in[QKP2_RANDOM_LEN], uint8_t out[QKP2_CR_LEN]);
int qkp2_cr_open(const uint8_t k1[QKP2_KEY_LEN], const char *device_id,
                 const uint8_t in[QKP2_CR_LEN], uint8_t out[QKP2_RANDOM_LEN]);

/* K2 = HKDF(Z2 || Z3, salt = H, info = "qkms/v2/resp" || epk_s, 32); z3 is
 * the ECDH secret with the device's certificate key (modes 1, 2) or the
 * device key (mode 3, 16 or 32 bytes). */
int qkp2_resp_key(const uint8_t z2[QKP2_Z_LEN], const uint8_t *z3, size_t z3_len,
                  const uint8_t h[QKP2_HASH_LEN], const uint8_t epk_s[QKP2_POINT_LEN],
                  uint8_t k2[QKP2_KEY_LEN]);
/* ct = AES-256-GCM(K2, 0, aad = key_id, payload): len + 16 bytes. */
int qkp2_payload_seal(const uint8_t k2[QKP2_KEY_LEN], const char *key_id, const uint8_t *in,
                      size_t len, uint8_t *out);
/* in is len bytes (>= 16); out gets len - 16 (zeroed on failure). */
int qkp2_payload_open(const uint8_t k2[QKP2_KEY_LEN], const char *key_id, const uint8_t *in,
                      size_t len, uint8_t *out);

/* A session key of source a (sr != NULL) or b (sr == NULL):
 * HKDF(CR [|| SR], salt = H, info = "qkms/v2/key\n" || key_id, len). */
int qkp2_session_key(const uint8_t cr[QKP2_RANDOM_LEN], const uint8_t *sr,
                     const uint8_t h[QKP2_HASH_LEN], const char *key_id, uint8_t *out,
                     size_t len);

/* Mode 3's associated data: "qkms/v2/req\n" op "\n" device_id "\n"
 * key_index; the length, or -1 (as qkp_request_aad). */
int qkp2_request_aad(const char *op, const char *device_id, int key_index, char *out,
                     size_t cap);

/* SHA-256 as lower-case hex (65 bytes with the NUL). */
void qkp2_hex(const uint8_t *in, size_t len, char *out);

#endif
