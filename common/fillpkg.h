/*
 * fillpkg — the fill package: device keys sealed to a provisioning
 * station's public key (seed 003's "key security file"). Shared by kmsd
 * (seal) and kmsctl (open); docs/devices.md specifies it byte by byte.
 *
 * Layout (all integers big-endian):
 *   offset  size  field
 *   0       4     magic "QKFP"
 *   4       1     format version, 0x01
 *   5       1     curve: 0x01 X25519, 0x02 P-256
 *   6       2     E = length of the ephemeral public key
 *   8       E     ephemeral public key (X25519: 32 raw bytes;
 *                 P-256: 65-byte uncompressed point 0x04||X||Y)
 *   8+E     32    HKDF salt (random)
 *   40+E    12    AES-GCM nonce (random)
 *   52+E    4     C = ciphertext length (plaintext length + 16)
 *   56+E    C     AES-256-GCM ciphertext || 16-byte tag
 *
 *   shared = ECDH(ephemeral private, recipient public)
 *   key    = HKDF-SHA256(ikm = shared, salt = salt,
 *                        info = "qkms fill package v1" || bytes 0 .. 55+E)
 *   AAD    = bytes 0 .. 55+E (the whole header)
 * The plaintext is a UTF-8 JSON document (format "qkms-fill/1").
 *
 * Both functions return 0 or -1 with a reason in err (never key bytes).
 * fillpkg_open returns the plaintext in OPENSSL_secure_malloc memory: free it
 * with OPENSSL_secure_clear_free(pt, pt_len).
 */
#ifndef QKMS_FILLPKG_H
#define QKMS_FILLPKG_H

#include <stddef.h>
#include <stdint.h>

#include <openssl/evp.h>

#define FILLPKG_MAGIC "QKFP"
#define FILLPKG_VERSION 0x01
#define FILLPKG_CURVE_X25519 0x01
#define FILLPKG_CURVE_P256 0x02
#define FILLPKG_MAX_PLAINTEXT (1u << 20)

/* Parse a PEM public key; accepts X25519 and P-256 only. */
EVP_PKEY *fillpkg_parse_recipient(const char *pem, size_t len, char *err, size_t errlen);
/* SHA-256 over the key's SubjectPublicKeyInfo DER, hex (65 bytes). */
int fillpkg_fingerprint(EVP_PKEY *pub, char out[65]);

int fillpkg_seal(EVP_PKEY *recipient, const uint8_t *pt, size_t pt_len, uint8_t **out,
                 size_t *out_len, char *err, size_t errlen);
int fillpkg_open(EVP_PKEY *priv, const uint8_t *pkg, size_t pkg_len, uint8_t **pt,
                 size_t *pt_len, char *err, size_t errlen);

#endif
