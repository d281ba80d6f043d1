/*
 * password — hashing and checking a gateway's password (docs/gateways.md,
 * "Login"): scrypt (RFC 7914) through OpenSSL's EVP_KDF, a 16-byte random
 * salt per password, a 32-byte hash. Debian 12's OpenSSL 3.0 has no
 * Argon2id; scrypt is the memory-hard function it has. The cost (N, r, p)
 * is stored beside each hash, so a new cost applies to new passwords and
 * every stored one still verifies.
 *
 * Contract: the password bytes are the caller's; nothing here keeps or
 * logs them, and the derived bytes are wiped. password_check compares in
 * constant time. Both return 0 / 1 as documented, -1 when OpenSSL fails
 * (out of memory, a cost over the memory bound).
 */
#ifndef QKMS_PASSWORD_H
#define QKMS_PASSWORD_H

#include <stddef.h>
#include <stdint.h>

#define PASSWORD_SALT_LEN 16
#define PASSWORD_HASH_LEN 32
#define PASSWORD_MIN 8
#define PASSWORD_MAX 256

typedef struct {
    uint64_t n;
    uint32_t r, p;
} password_cost;

/* A new salt (RAND_bytes) and the hash of pw under it: 0 or -1. */
int password_hash(const uint8_t *pw, size_t len, const password_cost *c,
                  uint8_t salt[PASSWORD_SALT_LEN], uint8_t hash[PASSWORD_HASH_LEN]);
/* 1 if pw hashes to hash under salt and c, 0 if not, -1 on error. */
int password_check(const uint8_t *pw, size_t len, const password_cost *c,
                   const uint8_t salt[PASSWORD_SALT_LEN], const uint8_t hash[PASSWORD_HASH_LEN]);

#endif
