/* password — scrypt password hashes (password.h). */
#include "service/password.h"

#include <string.h>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/kdf.h>
#include <openssl/params.h>
#include <openssl/rand.h>

/* What scrypt needs (OpenSSL: 128 r (N + 2) + 128 r p bytes), with room;
 * a cost that needs more than PASSWORD_MAXMEM fails (-1) rather than
 * exhausting the host. 2 GiB: N = 2^20, r = 8 (the largest cost the
 * configuration allows) fits. */
#define PASSWORD_MAXMEM ((uint64_t)2 << 30)

static int derive(const uint8_t *pw, size_t len, const password_cost *c, const uint8_t *salt,
                  uint8_t out[PASSWORD_HASH_LEN])
{
    EVP_KDF *kdf = EVP_KDF_fetch(NULL, "SCRYPT", NULL);
    EVP_KDF_CTX *kc = kdf ? EVP_KDF_CTX_new(kdf) : NULL;
    uint64_t n = c->n, maxmem = 128 * (uint64_t)c->r * (c->n + 2) + 128 * (uint64_t)c->r * c->p +
                                (1u << 20);
    uint32_t r = c->r, p = c->p;
    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_PASSWORD, (void *)pw, len),
        OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SALT, (void *)salt, PASSWORD_SALT_LEN),
        OSSL_PARAM_construct_uint64(OSSL_KDF_PARAM_SCRYPT_N, &n),
        OSSL_PARAM_construct_uint32(OSSL_KDF_PARAM_SCRYPT_R, &r),
        OSSL_PARAM_construct_uint32(OSSL_KDF_PARAM_SCRYPT_P, &p),
        OSSL_PARAM_construct_uint64(OSSL_KDF_PARAM_SCRYPT_MAXMEM, &maxmem),
        OSSL_PARAM_construct_end(),
    };
    int rc = maxmem <= PASSWORD_MAXMEM && kc && EVP_KDF_derive(kc, out, PASSWORD_HASH_LEN, params) == 1
                 ? 0
                 : -1;
    EVP_KDF_CTX_free(kc);
    EVP_KDF_free(kdf);
    return rc;
}

int password_hash(const uint8_t *pw, size_t len, const password_cost *c,
                  uint8_t salt[PASSWORD_SALT_LEN], uint8_t hash[PASSWORD_HASH_LEN])
{
    if (RAND_bytes(salt, PASSWORD_SALT_LEN) != 1)
        return -1;
    return derive(pw, len, c, salt, hash);
}

int password_check(const uint8_t *pw, size_t len, const password_cost *c,
                   const uint8_t salt[PASSWORD_SALT_LEN], const uint8_t hash[PASSWORD_HASH_LEN])
{
    uint8_t got[PASSWORD_HASH_LEN];
    int rc = derive(pw, len, c, salt, got);
    if (rc == 0)
        rc = CRYPTO_memcmp(got, hash, PASSWORD_HASH_LEN) == 0 ? 1 : 0;
    OPENSSL_cleanse(got, sizeof(got));
    return rc;
}
