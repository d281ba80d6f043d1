/* kcv — CMAC key check values (AES, SM4); see kcv.h. */
#include "kcv.h"

#include <string.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>

static int kcv_cmac(const char *cipher, const uint8_t *key, size_t len, uint8_t kcv[QKMS_KCV_LEN]);

int qkms_kcv_compute(const uint8_t *key, size_t len, uint8_t kcv[QKMS_KCV_LEN])
{
    if (len != 16 && len != 32)
        return -1;
    return kcv_cmac(len == 16 ? "AES-128-CBC" : "AES-256-CBC", key, len, kcv);
}

int qkms_kcv_compute_alg(const char *algorithm, const uint8_t *key, size_t len,
                         uint8_t kcv[QKMS_KCV_LEN])
{
    if (algorithm && !strcmp(algorithm, "SM4-128"))
        return len == 16 ? kcv_cmac("SM4-CBC", key, len, kcv) : -1;
    if (algorithm && ((!strcmp(algorithm, "AES-128") && len == 16) ||
                      (!strcmp(algorithm, "AES-256") && len == 32)))
        return qkms_kcv_compute(key, len, kcv);
    return -1;
}

static int kcv_cmac(const char *cipher, const uint8_t *key, size_t len, uint8_t kcv[QKMS_KCV_LEN])
{
    static const uint8_t zero[16] = {0};
    uint8_t mac[16];
    size_t maclen = 0;
    EVP_MAC *m = EVP_MAC_fetch(NULL, "CMAC", NULL);
    EVP_MAC_CTX *c = m ? EVP_MAC_CTX_new(m) : NULL;
    OSSL_PARAM p[2] = {
        OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_CIPHER, (char *)cipher, 0),
        OSSL_PARAM_construct_end(),
    };
    int ok = c && EVP_MAC_init(c, key, len, p) == 1 &&
             EVP_MAC_update(c, zero, sizeof(zero)) == 1 &&
             EVP_MAC_final(c, mac, &maclen, sizeof(mac)) == 1 && maclen == sizeof(mac);
    if (ok)
        memcpy(kcv, mac, QKMS_KCV_LEN);
    OPENSSL_cleanse(mac, sizeof(mac));
    EVP_MAC_CTX_free(c);
    EVP_MAC_free(m);
    return ok ? 0 : -1;
}
