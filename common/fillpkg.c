/* fillpkg — ECDH + HKDF-SHA256 + AES-256-GCM sealing of fill packages. */
#include "fillpkg.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/kdf.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>

#include "hexutil.h"

#define INFO_PREFIX "qkms fill package v1"
#define SALT_LEN 32
#define NONCE_LEN 12
#define TAG_LEN 16
#define MAX_EPH 65

static void setf(char *err, size_t len, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void setf(char *err, size_t len, const char *fmt, ...)
{
    va_list ap;
    if (!err || !len)
        return;
    va_start(ap, fmt);
    vsnprintf(err, len, fmt, ap);
    va_end(ap);
}

/* 0x01 X25519, 0x02 P-256, 0 other. */
static int curve_of(EVP_PKEY *k)
{
    char group[64];
    size_t gl = 0;
    if (EVP_PKEY_is_a(k, "X25519"))
        return FILLPKG_CURVE_X25519;
    if (EVP_PKEY_is_a(k, "EC") &&
        EVP_PKEY_get_utf8_string_param(k, OSSL_PKEY_PARAM_GROUP_NAME, group, sizeof(group), &gl) &&
        (!strcmp(group, "prime256v1") || !strcmp(group, "P-256")))
        return FILLPKG_CURVE_P256;
    return 0;
}

EVP_PKEY *fillpkg_parse_recipient(const char *pem, size_t len, char *err, size_t el)
{
    BIO *b = BIO_new_mem_buf(pem, (int)len);
    EVP_PKEY *k = b ? PEM_read_bio_PUBKEY(b, NULL, NULL, NULL) : NULL;
    BIO_free(b);
    if (!k) {
        setf(err, el, "not a PEM public key (-----BEGIN PUBLIC KEY-----)");
        return NULL;
    }
    if (!curve_of(k)) {
        setf(err, el, "unsupported key type: need an X25519 or P-256 public key");
        EVP_PKEY_free(k);
        return NULL;
    }
    return k;
}

int fillpkg_fingerprint(EVP_PKEY *pub, char out[65])
{
    unsigned char *der = NULL, md[32];
    unsigned int mdl = 0;
    int n = i2d_PUBKEY(pub, &der);
    if (n <= 0)
        return -1;
    EVP_Digest(der, (size_t)n, md, &mdl, EVP_sha256(), NULL);
    OPENSSL_free(der);
    qkms_hex_encode(md, 32, out);
    return 0;
}

static int pub_bytes(EVP_PKEY *k, int curve, uint8_t *out, size_t *len)
{
    if (curve == FILLPKG_CURVE_X25519) {
        *len = 32;
        return EVP_PKEY_get_raw_public_key(k, out, len) == 1 && *len == 32 ? 0 : -1;
    }
    return EVP_PKEY_get_octet_string_param(k, OSSL_PKEY_PARAM_ENCODED_PUBLIC_KEY, out, MAX_EPH,
                                           len) == 1 &&
                   *len == 65 && out[0] == 0x04
               ? 0
               : -1;
}

static EVP_PKEY *pub_from_bytes(int curve, const uint8_t *b, size_t len)
{
    EVP_PKEY *k = NULL;
    EVP_PKEY_CTX *c;
    OSSL_PARAM p[3];
    if (curve == FILLPKG_CURVE_X25519)
        return len == 32 ? EVP_PKEY_new_raw_public_key(EVP_PKEY_X25519, NULL, b, len) : NULL;
    if (len != 65 || b[0] != 0x04)
        return NULL;
    c = EVP_PKEY_CTX_new_from_name(NULL, "EC", NULL);
    p[0] = OSSL_PARAM_construct_utf8_string(OSSL_PKEY_PARAM_GROUP_NAME, (char *)"prime256v1", 0);
    p[1] = OSSL_PARAM_construct_octet_string(OSSL_PKEY_PARAM_PUB_KEY, (void *)b, len);
    p[2] = OSSL_PARAM_construct_end();
    if (!c || EVP_PKEY_fromdata_init(c) != 1 || EVP_PKEY_fromdata(c, &k, EVP_PKEY_PUBLIC_KEY, p) != 1)
        k = NULL;
    EVP_PKEY_CTX_free(c);
    return k;
}

/* ECDH then HKDF over the header; key is 32 bytes. */
static int derive(EVP_PKEY *mine, EVP_PKEY *peer, const uint8_t *hdr, size_t hdr_len,
                  const uint8_t *salt, uint8_t key[32])
{
    EVP_PKEY_CTX *c = EVP_PKEY_CTX_new(mine, NULL);
    uint8_t shared[66], *info = NULL;
    size_t sl = sizeof(shared), il = strlen(INFO_PREFIX) + hdr_len;
    EVP_KDF *kdf = NULL;
    EVP_KDF_CTX *kc = NULL;
    OSSL_PARAM p[5];
    int rc = -1;

    if (!c || EVP_PKEY_derive_init(c) != 1 || EVP_PKEY_derive_set_peer(c, peer) != 1 ||
        EVP_PKEY_derive(c, shared, &sl) != 1)
        goto out;
    info = malloc(il);
    kdf = EVP_KDF_fetch(NULL, "HKDF", NULL);
    kc = kdf ? EVP_KDF_CTX_new(kdf) : NULL;
    if (!info || !kc)
        goto out;
    memcpy(info, INFO_PREFIX, strlen(INFO_PREFIX));
    memcpy(info + strlen(INFO_PREFIX), hdr, hdr_len);
    p[0] = OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, (char *)"SHA256", 0);
    p[1] = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, shared, sl);
    p[2] = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SALT, (void *)salt, SALT_LEN);
    p[3] = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO, info, il);
    p[4] = OSSL_PARAM_construct_end();
    if (EVP_KDF_derive(kc, key, 32, p) != 1)
        goto out;
    rc = 0;
out:
    OPENSSL_cleanse(shared, sizeof(shared));
    free(info);
    EVP_KDF_CTX_free(kc);
    EVP_KDF_free(kdf);
    EVP_PKEY_CTX_free(c);
    return rc;
}

static int gcm(int enc, const uint8_t key[32], const uint8_t *nonce, const uint8_t *aad,
               size_t aad_len, const uint8_t *in, size_t in_len, uint8_t *out, uint8_t *tag)
{
    EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
    int n = 0, ok;
    ok = c && EVP_CipherInit_ex(c, EVP_aes_256_gcm(), NULL, NULL, NULL, enc) == 1 &&
         EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_SET_IVLEN, NONCE_LEN, NULL) == 1 &&
         EVP_CipherInit_ex(c, NULL, NULL, key, nonce, enc) == 1 &&
         EVP_CipherUpdate(c, NULL, &n, aad, (int)aad_len) == 1 &&
         EVP_CipherUpdate(c, out, &n, in, (int)in_len) == 1;
    if (ok && !enc)
        ok = EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_SET_TAG, TAG_LEN, tag) == 1;
    if (ok)
        ok = EVP_CipherFinal_ex(c, out + n, &n) == 1;
    if (ok && enc)
        ok = EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_GET_TAG, TAG_LEN, tag) == 1;
    EVP_CIPHER_CTX_free(c);
    return ok ? 0 : -1;
}

static void put16(uint8_t *p, size_t v) { p[0] = (uint8_t)(v >> 8); p[1] = (uint8_t)v; }
static void put32(uint8_t *p, size_t v)
{
    p[0] = (uint8_t)(v >> 24); p[1] = (uint8_t)(v >> 16); p[2] = (uint8_t)(v >> 8); p[3] = (uint8_t)v;
}

int fillpkg_seal(EVP_PKEY *rcpt, const uint8_t *pt, size_t pt_len, uint8_t **out, size_t *out_len,
                 char *err, size_t el)
{
    int curve = curve_of(rcpt);
    EVP_PKEY *eph = NULL;
    uint8_t ephpub[MAX_EPH], key[32], *buf = NULL;
    size_t eplen = 0, hdr, total;
    int rc = -1;

    *out = NULL;
    if (!curve || pt_len == 0 || pt_len > FILLPKG_MAX_PLAINTEXT) {
        setf(err, el, "bad recipient key or plaintext size");
        return -1;
    }
    eph = curve == FILLPKG_CURVE_X25519 ? EVP_PKEY_Q_keygen(NULL, NULL, "X25519")
                                        : EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    if (!eph || pub_bytes(eph, curve, ephpub, &eplen) != 0) {
        setf(err, el, "ephemeral key generation failed");
        goto out;
    }
    hdr = 8 + eplen + SALT_LEN + NONCE_LEN + 4;
    total = hdr + pt_len + TAG_LEN;
    buf = malloc(total);
    if (!buf) {
        setf(err, el, "out of memory");
        goto out;
    }
    memcpy(buf, FILLPKG_MAGIC, 4);
    buf[4] = FILLPKG_VERSION;
    buf[5] = (uint8_t)curve;
    put16(buf + 6, eplen);
    memcpy(buf + 8, ephpub, eplen);
    if (RAND_bytes(buf + 8 + eplen, SALT_LEN + NONCE_LEN) != 1) {
        setf(err, el, "no randomness for salt and nonce");
        goto out;
    }
    put32(buf + hdr - 4, pt_len + TAG_LEN);
    if (derive(eph, rcpt, buf, hdr, buf + 8 + eplen, key) != 0 ||
        gcm(1, key, buf + 8 + eplen + SALT_LEN, buf, hdr, pt, pt_len, buf + hdr,
            buf + hdr + pt_len) != 0) {
        setf(err, el, "sealing failed");
        goto out;
    }
    *out = buf;
    *out_len = total;
    buf = NULL;
    rc = 0;
out:
    OPENSSL_cleanse(key, sizeof(key));
    free(buf);
    EVP_PKEY_free(eph);
    return rc;
}

static size_t get16(const uint8_t *p) { return (size_t)p[0] << 8 | p[1]; }
static size_t get32(const uint8_t *p)
{
    return (size_t)p[0] << 24 | (size_t)p[1] << 16 | (size_t)p[2] << 8 | p[3];
}

int fillpkg_open(EVP_PKEY *priv, const uint8_t *pkg, size_t len, uint8_t **pt, size_t *pt_len,
                 char *err, size_t el)
{
    EVP_PKEY *eph = NULL;
    uint8_t key[32], *buf = NULL;
    size_t eplen, hdr, clen;
    int curve, rc = -1;

    *pt = NULL;
    if (len < 8 || memcmp(pkg, FILLPKG_MAGIC, 4) != 0) {
        setf(err, el, "not a qkms fill package (bad magic)");
        return -1;
    }
    if (pkg[4] != FILLPKG_VERSION) {
        setf(err, el, "unsupported fill package version %u", pkg[4]);
        return -1;
    }
    curve = pkg[5];
    eplen = get16(pkg + 6);
    if ((curve != FILLPKG_CURVE_X25519 && curve != FILLPKG_CURVE_P256) ||
        eplen != (curve == FILLPKG_CURVE_X25519 ? 32u : 65u)) {
        setf(err, el, "unsupported curve or key length in fill package");
        return -1;
    }
    hdr = 8 + eplen + SALT_LEN + NONCE_LEN + 4;
    if (len < hdr + TAG_LEN + 1) {
        setf(err, el, "fill package truncated");
        return -1;
    }
    clen = get32(pkg + hdr - 4);
    if (clen != len - hdr || clen < TAG_LEN + 1 || clen - TAG_LEN > FILLPKG_MAX_PLAINTEXT) {
        setf(err, el, "fill package length field does not match its size");
        return -1;
    }
    if (curve_of(priv) != curve) {
        setf(err, el, "private key is not on the package's curve");
        return -1;
    }
    eph = pub_from_bytes(curve, pkg + 8, eplen);
    buf = OPENSSL_secure_malloc(clen - TAG_LEN);
    if (!eph || !buf) {
        setf(err, el, "invalid ephemeral key in fill package");
        goto out;
    }
    if (derive(priv, eph, pkg, hdr, pkg + 8 + eplen, key) != 0 ||
        gcm(0, key, pkg + 8 + eplen + SALT_LEN, pkg, hdr, pkg + hdr, clen - TAG_LEN, buf,
            (uint8_t *)pkg + len - TAG_LEN) != 0) {
        setf(err, el, "fill package does not open with this key (wrong key or tampered)");
        goto out;
    }
    *pt = buf;
    *pt_len = clen - TAG_LEN;
    buf = NULL;
    rc = 0;
out:
    OPENSSL_cleanse(key, sizeof(key));
    if (buf)
        OPENSSL_secure_clear_free(buf, clen - TAG_LEN);
    EVP_PKEY_free(eph);
    return rc;
}
