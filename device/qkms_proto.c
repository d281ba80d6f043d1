/* qkms_proto — base64url, identifiers, associated data, AES-GCM. */
#include "qkms_proto.h"

#include <limits.h>
#include <stdio.h>
#include <string.h>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/params.h>

static const char b64u[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

void qkp_b64url_encode(const uint8_t *in, size_t len, char *out)
{
    size_t o = 0, i = 0;
    for (; i + 2 < len; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
        out[o++] = b64u[v >> 18 & 63];
        out[o++] = b64u[v >> 12 & 63];
        out[o++] = b64u[v >> 6 & 63];
        out[o++] = b64u[v & 63];
    }
    if (len - i == 1) {
        uint32_t v = (uint32_t)in[i] << 16;
        out[o++] = b64u[v >> 18 & 63];
        out[o++] = b64u[v >> 12 & 63];
    } else if (len - i == 2) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8;
        out[o++] = b64u[v >> 18 & 63];
        out[o++] = b64u[v >> 12 & 63];
        out[o++] = b64u[v >> 6 & 63];
    }
    out[o] = 0;
}

static int val(char c)
{
    const char *p = c ? strchr(b64u, c) : NULL;
    return p ? (int)(p - b64u) : -1;
}

long qkp_b64url_decode(const char *in, size_t len, uint8_t *out, size_t cap)
{
    size_t o = 0, i = 0;
    if (len % 4 == 1)
        return -1;
    for (; i + 4 <= len; i += 4) {
        int a = val(in[i]), b = val(in[i + 1]), c = val(in[i + 2]), d = val(in[i + 3]);
        if (a < 0 || b < 0 || c < 0 || d < 0 || o + 3 > cap)
            return -1;
        out[o++] = (uint8_t)(a << 2 | b >> 4);
        out[o++] = (uint8_t)((b & 15) << 4 | c >> 2);
        out[o++] = (uint8_t)((c & 3) << 6 | d);
    }
    if (len - i == 2) {
        int a = val(in[i]), b = val(in[i + 1]);
        /* Unused trailing bits must be zero: one encoding per value. */
        if (a < 0 || b < 0 || (b & 15) || o + 1 > cap)
            return -1;
        out[o++] = (uint8_t)(a << 2 | b >> 4);
    } else if (len - i == 3) {
        int a = val(in[i]), b = val(in[i + 1]), c = val(in[i + 2]);
        if (a < 0 || b < 0 || c < 0 || (c & 3) || o + 2 > cap)
            return -1;
        out[o++] = (uint8_t)(a << 2 | b >> 4);
        out[o++] = (uint8_t)((b & 15) << 4 | c >> 2);
    }
    return (long)o;
}

int qkp_id_valid(const char *s)
{
    size_t n = s ? strlen(s) : 0;
    if (n == 0 || n > QKP_MAX_ID)
        return 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x21 || c > 0x7e || c == '/' || c == '\\' || c == '%' || c == '?' || c == '#')
            return 0;
    }
    return 1;
}

/* A field of the associated data: present and free of the '\n' separator,
 * so that distinct field values never give the same bytes. */
static int aad_field_ok(const char *s)
{
    return s && !strchr(s, '\n');
}

int qkp_request_aad(const char *op, const char *device_id, int key_index, char *out, size_t cap)
{
    /* The spec encodes integers without a sign; the index range is 0-255. */
    if (!aad_field_ok(op) || !aad_field_ok(device_id) || key_index < 0 || key_index > 255)
        return -1;
    int n = snprintf(out, cap, "qkms/v1/req\n%s\n%s\n%d", op, device_id, key_index);
    return n > 0 && (size_t)n < cap ? n : -1;
}

int qkp_response_aad(const char *session_id, const char *device_id, int key_index,
                     const char *key_id, int64_t expires_at, const char *req_nonce_b64, char *out,
                     size_t cap)
{
    if (!aad_field_ok(session_id) || !aad_field_ok(device_id) || !aad_field_ok(key_id) ||
        !aad_field_ok(req_nonce_b64) || key_index < 0 || key_index > 255 || expires_at < 0)
        return -1;
    int n = snprintf(out, cap, "qkms/v1/resp\n%s\n%s\n%d\n%s\n%lld\n%s", session_id, device_id,
                     key_index, key_id, (long long)expires_at, req_nonce_b64);
    return n > 0 && (size_t)n < cap ? n : -1;
}

int qkp_response_aad_ext(const char *session_id, const char *device_id, int key_index,
                         const char *key_id, int64_t expires_at, const char *req_nonce_b64,
                         int epoch, const char *direction, char *out, size_t cap)
{
    int n = qkp_response_aad(session_id, device_id, key_index, key_id, expires_at, req_nonce_b64,
                             out, cap), m;
    if (n < 0 || epoch < 0 || !direction ||
        (direction[0] && strcmp(direction, "a2b") && strcmp(direction, "b2a")))
        return -1;
    m = snprintf(out + n, cap - (size_t)n, "\n%d\n%s", epoch, direction);
    return m > 0 && (size_t)m < cap - (size_t)n ? n + m : -1;
}

int qkp_stream_aad(const char *stream_id, const char *device_id, int key_index, int64_t seq,
                   const char *key_id, int64_t expires_at, const char *req_nonce_b64, char *out,
                   size_t cap)
{
    if (!aad_field_ok(stream_id) || !aad_field_ok(device_id) || !aad_field_ok(key_id) ||
        !aad_field_ok(req_nonce_b64) || key_index < 0 || key_index > 255 || expires_at < 0 ||
        seq < 0)
        return -1;
    int n = snprintf(out, cap, "qkms/v1/stream\n%s\n%s\n%d\n%lld\n%s\n%lld\n%s", stream_id,
                     device_id, key_index, (long long)seq, key_id, (long long)expires_at,
                     req_nonce_b64);
    return n > 0 && (size_t)n < cap ? n : -1;
}

static const EVP_CIPHER *cipher_for(size_t key_len)
{
    return key_len == 16 ? EVP_aes_128_gcm() : key_len == 32 ? EVP_aes_256_gcm() : NULL;
}

static int gcm(int enc, const uint8_t *key, size_t key_len, const uint8_t *nonce, const void *aad,
               size_t aad_len, const uint8_t *in, size_t len, uint8_t *out, uint8_t *tag)
{
    const EVP_CIPHER *c = cipher_for(key_len);
    EVP_CIPHER_CTX *x;
    int n = 0, ok;

    /* OpenSSL takes int lengths. */
    if (!c || len > INT_MAX || aad_len > INT_MAX)
        return -1;
    x = EVP_CIPHER_CTX_new();
    ok = x && EVP_CipherInit_ex(x, c, NULL, NULL, NULL, enc) == 1 &&
         EVP_CIPHER_CTX_ctrl(x, EVP_CTRL_GCM_SET_IVLEN, QKP_NONCE_LEN, NULL) == 1 &&
         EVP_CipherInit_ex(x, NULL, NULL, key, nonce, enc) == 1 &&
         EVP_CipherUpdate(x, NULL, &n, aad, (int)aad_len) == 1 &&
         (len == 0 || EVP_CipherUpdate(x, out, &n, in, (int)len) == 1);
    if (ok && !enc)
        ok = EVP_CIPHER_CTX_ctrl(x, EVP_CTRL_GCM_SET_TAG, QKP_TAG_LEN, tag) == 1;
    if (ok)
        ok = EVP_CipherFinal_ex(x, len ? out + n : out, &n) == 1; /* no NULL + 0 */
    if (ok && enc)
        ok = EVP_CIPHER_CTX_ctrl(x, EVP_CTRL_GCM_GET_TAG, QKP_TAG_LEN, tag) == 1;
    EVP_CIPHER_CTX_free(x);
    return ok ? 0 : -1;
}

int qkp_seal(const uint8_t *key, size_t key_len, const uint8_t nonce[QKP_NONCE_LEN],
             const void *aad, size_t aad_len, const uint8_t *pt, size_t len, uint8_t *out)
{
    return gcm(1, key, key_len, nonce, aad, aad_len, pt, len, out, out + len);
}

int qkp_open(const uint8_t *key, size_t key_len, const uint8_t nonce[QKP_NONCE_LEN],
             const void *aad, size_t aad_len, const uint8_t *in, size_t len, uint8_t *out)
{
    uint8_t tag[QKP_TAG_LEN];
    if (len < QKP_TAG_LEN)
        return -1;
    memcpy(tag, in + len - QKP_TAG_LEN, QKP_TAG_LEN);
    if (gcm(0, key, key_len, nonce, aad, aad_len, in, len - QKP_TAG_LEN, out, tag) != 0) {
        /* GCM decrypts before the tag is checked: do not leave unauthenticated
         * plaintext for a caller that forgets the return value. */
        OPENSSL_cleanse(out, len - QKP_TAG_LEN);
        return -1;
    }
    return 0;
}

/* ---- the SM4 suite ---------------------------------------------------------- */

int qkp_suite_of(const char *algorithm)
{
    if (algorithm && (!strcmp(algorithm, "AES-128") || !strcmp(algorithm, "AES-256")))
        return QKP_SUITE_AES;
    if (algorithm && !strcmp(algorithm, "SM4-128"))
        return QKP_SUITE_SM4;
    return -1;
}

static int hmac_sm3(const uint8_t *key, size_t key_len, const void *const *parts,
                    const size_t *lens, int nparts, uint8_t out[32])
{
    EVP_MAC *mac = EVP_MAC_fetch(NULL, "HMAC", NULL);
    EVP_MAC_CTX *c = mac ? EVP_MAC_CTX_new(mac) : NULL;
    OSSL_PARAM params[] = {OSSL_PARAM_construct_utf8_string("digest", (char *)"SM3", 0),
                           OSSL_PARAM_construct_end()};
    size_t n = 0;
    int ok = c && EVP_MAC_init(c, key, key_len, params) == 1;
    for (int i = 0; ok && i < nparts; i++)
        ok = lens[i] == 0 || EVP_MAC_update(c, parts[i], lens[i]) == 1;
    ok = ok && EVP_MAC_final(c, out, &n, 32) == 1 && n == 32;
    EVP_MAC_CTX_free(c);
    EVP_MAC_free(mac);
    return ok ? 0 : -1;
}

/* Ke (16 bytes) and Km (32 bytes) of an SM4 device key. */
static int sm4_keys(const uint8_t *key, uint8_t ke[32], uint8_t km[32])
{
    static const char enc[] = "qkms/v1/sm4/enc", mac[] = "qkms/v1/sm4/mac";
    const void *pe[1] = {enc}, *pm[1] = {mac};
    size_t le[1] = {sizeof(enc) - 1}, lm[1] = {sizeof(mac) - 1};
    return hmac_sm3(key, 16, pe, le, 1, ke) == 0 && hmac_sm3(key, 16, pm, lm, 1, km) == 0 ? 0
                                                                                          : -1;
}

static int sm4_tag(const uint8_t km[32], const uint8_t nonce[QKP_NONCE_LEN], const void *aad,
                   size_t aad_len, const uint8_t *c, size_t len, uint8_t tag[32])
{
    static const char label[] = "qkms/v1/sm4\n";
    uint8_t be[8];
    for (int i = 0; i < 8; i++)
        be[i] = (uint8_t)((uint64_t)aad_len >> (56 - 8 * i));
    const void *parts[5] = {label, be, aad, nonce, c};
    size_t lens[5] = {sizeof(label) - 1, 8, aad_len, QKP_NONCE_LEN, len};
    return hmac_sm3(km, 32, parts, lens, 5, tag);
}

static int sm4_ctr(const uint8_t ke[16], const uint8_t nonce[QKP_NONCE_LEN], const uint8_t *in,
                   size_t len, uint8_t *out)
{
    uint8_t iv[16] = {0};
    EVP_CIPHER *ciph = EVP_CIPHER_fetch(NULL, "SM4-CTR", NULL);
    EVP_CIPHER_CTX *x = EVP_CIPHER_CTX_new();
    int n = 0, m = 0, ok;

    memcpy(iv, nonce, QKP_NONCE_LEN);
    ok = ciph && x && len <= INT_MAX && EVP_EncryptInit_ex2(x, ciph, ke, iv, NULL) == 1 &&
         (len == 0 || EVP_EncryptUpdate(x, out, &n, in, (int)len) == 1) &&
         EVP_EncryptFinal_ex(x, len ? out + n : out, &m) == 1 && (size_t)(n + m) == len;
    EVP_CIPHER_CTX_free(x);
    EVP_CIPHER_free(ciph);
    return ok ? 0 : -1;
}

int qkp_seal_suite(qkp_suite suite, const uint8_t *key, size_t key_len,
                   const uint8_t nonce[QKP_NONCE_LEN], const void *aad, size_t aad_len,
                   const uint8_t *pt, size_t len, uint8_t *out)
{
    uint8_t ke[32], km[32], tag[32];
    int rc = -1;
    if (suite == QKP_SUITE_AES)
        return qkp_seal(key, key_len, nonce, aad, aad_len, pt, len, out);
    if (suite != QKP_SUITE_SM4 || key_len != 16 || sm4_keys(key, ke, km) != 0)
        goto out;
    if (sm4_ctr(ke, nonce, pt, len, out) != 0 || sm4_tag(km, nonce, aad, aad_len, out, len, tag))
        goto out;
    memcpy(out + len, tag, QKP_TAG_LEN);
    rc = 0;
out:
    OPENSSL_cleanse(ke, sizeof(ke));
    OPENSSL_cleanse(km, sizeof(km));
    OPENSSL_cleanse(tag, sizeof(tag));
    return rc;
}

int qkp_open_suite(qkp_suite suite, const uint8_t *key, size_t key_len,
                   const uint8_t nonce[QKP_NONCE_LEN], const void *aad, size_t aad_len,
                   const uint8_t *in, size_t len, uint8_t *out)
{
    uint8_t ke[32], km[32], tag[32];
    int rc = -1;
    if (suite == QKP_SUITE_AES)
        return qkp_open(key, key_len, nonce, aad, aad_len, in, len, out);
    if (suite != QKP_SUITE_SM4 || key_len != 16 || len < QKP_TAG_LEN ||
        sm4_keys(key, ke, km) != 0)
        goto out;
    /* The tag first, in constant time: nothing is decrypted unauthenticated. */
    if (sm4_tag(km, nonce, aad, aad_len, in, len - QKP_TAG_LEN, tag) != 0 ||
        CRYPTO_memcmp(tag, in + len - QKP_TAG_LEN, QKP_TAG_LEN) != 0)
        goto out;
    rc = sm4_ctr(ke, nonce, in, len - QKP_TAG_LEN, out);
out:
    OPENSSL_cleanse(ke, sizeof(ke));
    OPENSSL_cleanse(km, sizeof(km));
    OPENSSL_cleanse(tag, sizeof(tag));
    return rc;
}
