/*
 * qkms_proto2 — protocol v2's cryptographic core (qkms_proto2.h).
 */
#include "qkms_proto2.h"

#include <stdio.h>
#include <string.h>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/ec.h>
#include <openssl/ecdsa.h>
#include <openssl/kdf.h>
#include <openssl/param_build.h>

#include "qkms_proto.h"

static const uint8_t zero_nonce[QKP_NONCE_LEN];

int qkp2_hkdf(const uint8_t *ikm, size_t ikm_len, const uint8_t *salt, size_t salt_len,
              const uint8_t *info, size_t info_len, uint8_t *out, size_t len)
{
    EVP_KDF *kdf = EVP_KDF_fetch(NULL, "HKDF", NULL);
    EVP_KDF_CTX *kc = kdf ? EVP_KDF_CTX_new(kdf) : NULL;
    OSSL_PARAM p[5];
    int rc = -1;

    if (!kc)
        goto out;
    p[0] = OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, (char *)"SHA256", 0);
    p[1] = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, (void *)ikm, ikm_len);
    p[2] = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SALT, (void *)salt, salt_len);
    p[3] = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO, (void *)info, info_len);
    p[4] = OSSL_PARAM_construct_end();
    if (EVP_KDF_derive(kc, out, len, p) == 1)
        rc = 0;
    else
        OPENSSL_cleanse(out, len);
out:
    EVP_KDF_CTX_free(kc);
    EVP_KDF_free(kdf);
    return rc;
}

EVP_PKEY *qkp2_point_key(const uint8_t *pt, size_t len)
{
    EVP_PKEY_CTX *pc = NULL, *chk = NULL;
    EVP_PKEY *k = NULL;
    OSSL_PARAM p[3];

    if (len != QKP2_POINT_LEN || pt[0] != 0x04)
        return NULL;
    p[0] = OSSL_PARAM_construct_utf8_string(OSSL_PKEY_PARAM_GROUP_NAME, (char *)"P-256", 0);
    p[1] = OSSL_PARAM_construct_octet_string(OSSL_PKEY_PARAM_PUB_KEY, (void *)pt, len);
    p[2] = OSSL_PARAM_construct_end();
    if (!(pc = EVP_PKEY_CTX_new_from_name(NULL, "EC", NULL)) || EVP_PKEY_fromdata_init(pc) != 1 ||
        EVP_PKEY_fromdata(pc, &k, EVP_PKEY_PUBLIC_KEY, p) != 1)
        goto fail;
    /* The check refuses a point off the curve (an invalid-curve attack on
     * the ECDH that follows). The quick one is enough: P-256's cofactor is
     * 1, so a point on the curve is in the group, and the full check's
     * multiplication by the order (a third of an ECDH) adds nothing. */
    if (!(chk = EVP_PKEY_CTX_new_from_pkey(NULL, k, NULL)) || EVP_PKEY_public_check_quick(chk) != 1)
        goto fail;
    EVP_PKEY_CTX_free(chk);
    EVP_PKEY_CTX_free(pc);
    return k;
fail:
    EVP_PKEY_CTX_free(chk);
    EVP_PKEY_CTX_free(pc);
    EVP_PKEY_free(k);
    return NULL;
}

static int is_p256(EVP_PKEY *k)
{
    char group[32];
    size_t gl = 0;
    return k && EVP_PKEY_is_a(k, "EC") &&
           EVP_PKEY_get_utf8_string_param(k, OSSL_PKEY_PARAM_GROUP_NAME, group, sizeof(group),
                                          &gl) == 1 &&
           (!strcmp(group, "prime256v1") || !strcmp(group, "P-256"));
}

int qkp2_key_point(EVP_PKEY *k, uint8_t out[QKP2_POINT_LEN])
{
    size_t n = 0;
    if (!is_p256(k))
        return -1;
    /* Uncompressed is OpenSSL's default form for EC keys. */
    if (EVP_PKEY_get_octet_string_param(k, OSSL_PKEY_PARAM_PUB_KEY, out, QKP2_POINT_LEN, &n) !=
            1 ||
        n != QKP2_POINT_LEN || out[0] != 0x04)
        return -1;
    return 0;
}

EVP_PKEY *qkp2_keygen(void)
{
    return EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
}

EVP_PKEY *qkp2_priv_from_scalar(const uint8_t d[32])
{
    EC_GROUP *g = EC_GROUP_new_by_curve_name(NID_X9_62_prime256v1);
    EC_POINT *q = g ? EC_POINT_new(g) : NULL;
    BIGNUM *bn = BN_secure_new();
    OSSL_PARAM_BLD *b = OSSL_PARAM_BLD_new();
    OSSL_PARAM *p = NULL;
    EVP_PKEY_CTX *pc = NULL;
    EVP_PKEY *k = NULL;
    uint8_t pt[QKP2_POINT_LEN];

    if (!q || !bn || !b || !BN_bin2bn(d, 32, bn) || BN_is_zero(bn) ||
        BN_cmp(bn, EC_GROUP_get0_order(g)) >= 0 || !EC_POINT_mul(g, q, bn, NULL, NULL, NULL) ||
        EC_POINT_point2oct(g, q, POINT_CONVERSION_UNCOMPRESSED, pt, sizeof(pt), NULL) !=
            sizeof(pt) ||
        !OSSL_PARAM_BLD_push_utf8_string(b, OSSL_PKEY_PARAM_GROUP_NAME, "P-256", 0) ||
        !OSSL_PARAM_BLD_push_octet_string(b, OSSL_PKEY_PARAM_PUB_KEY, pt, sizeof(pt)) ||
        !OSSL_PARAM_BLD_push_BN(b, OSSL_PKEY_PARAM_PRIV_KEY, bn) ||
        !(p = OSSL_PARAM_BLD_to_param(b)) || !(pc = EVP_PKEY_CTX_new_from_name(NULL, "EC", NULL)) ||
        EVP_PKEY_fromdata_init(pc) != 1 || EVP_PKEY_fromdata(pc, &k, EVP_PKEY_KEYPAIR, p) != 1) {
        EVP_PKEY_free(k);
        k = NULL;
    }
    EVP_PKEY_CTX_free(pc);
    OSSL_PARAM_free(p);
    OSSL_PARAM_BLD_free(b);
    BN_clear_free(bn);
    EC_POINT_free(q);
    EC_GROUP_free(g);
    return k;
}

int qkp2_ecdh(EVP_PKEY *priv, EVP_PKEY *peer, uint8_t z[QKP2_Z_LEN])
{
    EVP_PKEY_CTX *c = EVP_PKEY_CTX_new_from_pkey(NULL, priv, NULL);
    size_t n = QKP2_Z_LEN;
    int rc = -1;

    if (c && is_p256(priv) && is_p256(peer) && EVP_PKEY_derive_init(c) == 1 &&
        EVP_PKEY_derive_set_peer(c, peer) == 1 && EVP_PKEY_derive(c, z, &n) == 1 &&
        n == QKP2_Z_LEN)
        rc = 0;
    else
        OPENSSL_cleanse(z, QKP2_Z_LEN);
    EVP_PKEY_CTX_free(c);
    return rc;
}

int qkp2_digest(const char *prefix, const uint8_t *msg, size_t len, uint8_t out[32])
{
    EVP_MD_CTX *c = EVP_MD_CTX_new();
    unsigned int n = 0;
    int rc = -1;
    if (c && EVP_DigestInit_ex(c, EVP_sha256(), NULL) == 1 &&
        EVP_DigestUpdate(c, prefix, strlen(prefix)) == 1 && EVP_DigestUpdate(c, msg, len) == 1 &&
        EVP_DigestFinal_ex(c, out, &n) == 1 && n == 32)
        rc = 0;
    EVP_MD_CTX_free(c);
    return rc;
}

int qkp2_request_hash(const uint8_t nonce[12], const uint8_t *r, size_t len,
                      uint8_t h[QKP2_HASH_LEN])
{
    EVP_MD_CTX *c = EVP_MD_CTX_new();
    unsigned int n = 0;
    int rc = -1;
    if (c && EVP_DigestInit_ex(c, EVP_sha256(), NULL) == 1 && EVP_DigestUpdate(c, nonce, 12) == 1 &&
        EVP_DigestUpdate(c, r, len) == 1 && EVP_DigestFinal_ex(c, h, &n) == 1 && n == 32)
        rc = 0;
    EVP_MD_CTX_free(c);
    return rc;
}

int qkp2_sig_to_der(const uint8_t sig[QKP2_SIG_LEN], uint8_t *der, size_t *der_len)
{
    ECDSA_SIG *s = ECDSA_SIG_new();
    BIGNUM *r = BN_bin2bn(sig, 32, NULL), *ss = BN_bin2bn(sig + 32, 32, NULL);
    unsigned char *p = der;
    int n, rc = -1;

    if (!s || !r || !ss || ECDSA_SIG_set0(s, r, ss) != 1)
        goto out;
    r = ss = NULL; /* owned by s */
    if ((n = i2d_ECDSA_SIG(s, NULL)) <= 0 || (size_t)n > *der_len ||
        i2d_ECDSA_SIG(s, &p) != n)
        goto out;
    *der_len = (size_t)n;
    rc = 0;
out:
    BN_free(r);
    BN_free(ss);
    ECDSA_SIG_free(s);
    return rc;
}

int qkp2_sig_from_der(const uint8_t *der, size_t der_len, uint8_t sig[QKP2_SIG_LEN])
{
    const unsigned char *p = der;
    ECDSA_SIG *s = d2i_ECDSA_SIG(NULL, &p, (long)der_len);
    int rc = -1;
    if (s && p == der + der_len && BN_bn2binpad(ECDSA_SIG_get0_r(s), sig, 32) == 32 &&
        BN_bn2binpad(ECDSA_SIG_get0_s(s), sig + 32, 32) == 32)
        rc = 0;
    ECDSA_SIG_free(s);
    return rc;
}

int qkp2_sign(EVP_PKEY *priv, const char *prefix, const uint8_t *msg, size_t len,
              uint8_t sig[QKP2_SIG_LEN])
{
    EVP_PKEY_CTX *c = EVP_PKEY_CTX_new_from_pkey(NULL, priv, NULL);
    uint8_t dg[32], der[80];
    size_t dl = sizeof(der);
    int rc = -1;

    if (c && is_p256(priv) && qkp2_digest(prefix, msg, len, dg) == 0 &&
        EVP_PKEY_sign_init(c) == 1 && EVP_PKEY_sign(c, der, &dl, dg, sizeof(dg)) == 1 &&
        qkp2_sig_from_der(der, dl, sig) == 0)
        rc = 0;
    EVP_PKEY_CTX_free(c);
    return rc;
}

int qkp2_verify(EVP_PKEY *pub, const char *prefix, const uint8_t *msg, size_t len,
                const uint8_t sig[QKP2_SIG_LEN])
{
    EVP_PKEY_CTX *c = EVP_PKEY_CTX_new_from_pkey(NULL, pub, NULL);
    uint8_t dg[32], der[80];
    size_t dl = sizeof(der);
    int rc = -1;

    if (c && is_p256(pub) && qkp2_digest(prefix, msg, len, dg) == 0 &&
        qkp2_sig_to_der(sig, der, &dl) == 0 && EVP_PKEY_verify_init(c) == 1 &&
        EVP_PKEY_verify(c, der, dl, dg, sizeof(dg)) == 1)
        rc = 0;
    EVP_PKEY_CTX_free(c);
    return rc;
}

int qkp2_cr_key(const uint8_t z1[QKP2_Z_LEN], const uint8_t epk[QKP2_POINT_LEN],
                const uint8_t ka_point[QKP2_POINT_LEN], const uint8_t *nonce, size_t nonce_len,
                uint8_t k1[QKP2_KEY_LEN])
{
    uint8_t salt[2 * QKP2_POINT_LEN], info[10 + 64];
    if (nonce_len > 64)
        return -1;
    memcpy(salt, epk, QKP2_POINT_LEN);
    memcpy(salt + QKP2_POINT_LEN, ka_point, QKP2_POINT_LEN);
    memcpy(info, "qkms/v2/cr", 10);
    memcpy(info + 10, nonce, nonce_len);
    return qkp2_hkdf(z1, QKP2_Z_LEN, salt, sizeof(salt), info, 10 + nonce_len, k1, QKP2_KEY_LEN);
}

int qkp2_cr_seal(const uint8_t k1[QKP2_KEY_LEN], const char *device_id,
                 const uint8_t in[QKP2_RANDOM_LEN], uint8_t out[QKP2_CR_LEN])
{
    return qkp_seal(k1, QKP2_KEY_LEN, zero_nonce, device_id, strlen(device_id), in,
                    QKP2_RANDOM_LEN, out);
}

int qkp2_cr_open(const uint8_t k1[QKP2_KEY_LEN], const char *device_id,
                 const uint8_t in[QKP2_CR_LEN], uint8_t out[QKP2_RANDOM_LEN])
{
    return qkp_open(k1, QKP2_KEY_LEN, zero_nonce, device_id, strlen(device_id), in, QKP2_CR_LEN,
                    out);
}

int qkp2_resp_key(const uint8_t z2[QKP2_Z_LEN], const uint8_t *z3, size_t z3_len,
                  const uint8_t h[QKP2_HASH_LEN], const uint8_t epk_s[QKP2_POINT_LEN],
                  uint8_t k2[QKP2_KEY_LEN])
{
    uint8_t ikm[QKP2_Z_LEN + 32], info[12 + QKP2_POINT_LEN];
    int rc;
    if (z3_len > 32)
        return -1;
    memcpy(ikm, z2, QKP2_Z_LEN);
    memcpy(ikm + QKP2_Z_LEN, z3, z3_len);
    memcpy(info, "qkms/v2/resp", 12);
    memcpy(info + 12, epk_s, QKP2_POINT_LEN);
    rc = qkp2_hkdf(ikm, QKP2_Z_LEN + z3_len, h, QKP2_HASH_LEN, info, sizeof(info), k2,
                   QKP2_KEY_LEN);
    OPENSSL_cleanse(ikm, sizeof(ikm));
    return rc;
}

int qkp2_payload_seal(const uint8_t k2[QKP2_KEY_LEN], const char *key_id, const uint8_t *in,
                      size_t len, uint8_t *out)
{
    return qkp_seal(k2, QKP2_KEY_LEN, zero_nonce, key_id, strlen(key_id), in, len, out);
}

int qkp2_payload_open(const uint8_t k2[QKP2_KEY_LEN], const char *key_id, const uint8_t *in,
                      size_t len, uint8_t *out)
{
    return qkp_open(k2, QKP2_KEY_LEN, zero_nonce, key_id, strlen(key_id), in, len, out);
}

int qkp2_session_key(const uint8_t cr[QKP2_RANDOM_LEN], const uint8_t *sr,
                     const uint8_t h[QKP2_HASH_LEN], const char *key_id, uint8_t *out,
                     size_t len)
{
    uint8_t ikm[2 * QKP2_RANDOM_LEN], info[12 + QKP_MAX_ID];
    size_t kl = strlen(key_id), il = sr ? sizeof(ikm) : QKP2_RANDOM_LEN;
    int rc;
    if (kl > QKP_MAX_ID)
        return -1;
    memcpy(ikm, cr, QKP2_RANDOM_LEN);
    if (sr)
        memcpy(ikm + QKP2_RANDOM_LEN, sr, QKP2_RANDOM_LEN);
    memcpy(info, "qkms/v2/key\n", 12);
    memcpy(info + 12, key_id, kl);
    rc = qkp2_hkdf(ikm, il, h, QKP2_HASH_LEN, info, 12 + kl, out, len);
    OPENSSL_cleanse(ikm, sizeof(ikm));
    return rc;
}

int qkp2_request_aad(const char *op, const char *device_id, int key_index, char *out,
                     size_t cap)
{
    /* v1's rules for the fields; only the label differs. */
    char probe[QKP_MAX_AAD];
    if (qkp_request_aad(op, device_id, key_index, probe, sizeof(probe)) < 0)
        return -1;
    int n = snprintf(out, cap, "qkms/v2/req\n%s\n%s\n%d", op, device_id, key_index);
    return n > 0 && (size_t)n < cap ? n : -1;
}

void qkp2_hex(const uint8_t *in, size_t len, char *out)
{
    static const char hx[] = "0123456789abcdef";
    for (size_t i = 0; i < len; i++) {
        out[2 * i] = hx[in[i] >> 4];
        out[2 * i + 1] = hx[in[i] & 15];
    }
    out[2 * len] = '\0';
}
