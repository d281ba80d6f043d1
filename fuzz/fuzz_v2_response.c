/*
 * fuzz_v2_response — what a device reads back in protocol v2
 * (device/qkms_device2.c): the platform's signed answer to a `key` or `end`
 * request. Input: byte 0 picks a case of tests/vectors/protocol-v2.json,
 * which fixes the platform, the device and the request (rebuilt from the
 * case's fields, not by qkd2_request_key, whose fixed randoms are for test
 * builds); the rest is the response body. An accepted key answer must be
 * for the session asked, with a key of key_bits / 8 bytes and a source the
 * request allows.
 */
#include "fuzz_common.h"

#include <openssl/bio.h>
#include <openssl/pem.h>

#include "hexutil.h"
#include "qkms_device2.h"

#define MAXC 64
static qkd2_platform *plat;
static qkd2_identity *ids[MAXC];
static qkd2_request reqs[MAXC];
static size_t nc;

static char *der_pem(const char *b64)
{
    uint8_t der[4096];
    long n = qkp_b64url_decode(b64, strlen(b64), der, sizeof(der));
    const unsigned char *p = der;
    X509 *x = n > 0 ? d2i_X509(NULL, &p, n) : NULL;
    BIO *b = BIO_new(BIO_s_mem());
    char *data, *out;
    long len;
    FUZZ_CHECK(x && b && PEM_write_bio_X509(b, x) == 1);
    len = BIO_get_mem_data(b, &data);
    /* (BIO data is not NUL-terminated: no strndup, which may read on.) */
    out = malloc((size_t)len + 1);
    memcpy(out, data, (size_t)len);
    out[len] = 0;
    BIO_free(b);
    X509_free(x);
    return out;
}

static const char *s(const json_t *o, const char *k)
{
    return json_string_value(json_object_get(o, k));
}

static void unhex(const char *h, uint8_t *out, size_t n)
{
    FUZZ_CHECK(h && qkms_hex_decode(h, strlen(h), out, n) == (long)n);
}

static void add(const json_t *c)
{
    qkd2_request *r = &reqs[nc];
    char err[200];
    int mode = (int)json_integer_value(json_object_get(c, "mode"));
    uint8_t d[32];

    if (mode != 3) {
        EVP_PKEY *k;
        BIO *b = BIO_new(BIO_s_mem());
        char *kp, *cp = der_pem(s(c, "device_cert_b64u"));
        long kl;
        unhex(s(c, "device_priv_hex"), d, 32);
        k = qkp2_priv_from_scalar(d);
        FUZZ_CHECK(k && PEM_write_bio_PrivateKey(b, k, NULL, NULL, 0, NULL, NULL) == 1);
        kl = BIO_get_mem_data(b, &kp);
        FUZZ_CHECK(qkd2_identity_cert(&ids[nc], s(c, "device_id"), mode, cp, strlen(cp), kp,
                                      (size_t)kl, err, sizeof(err)) == QKD_OK);
        BIO_free(b);
        EVP_PKEY_free(k);
        free(cp);
    } else {
        qkd_device *dev = NULL;
        char doc[512], idj[2 * QKP_MAX_ID + 3];
        const char *kh = s(c, "device_key_hex");
        FUZZ_CHECK(kh && qkd_json_id(s(c, "device_id"), idj, sizeof(idj)) > 0);
        snprintf(doc, sizeof(doc),
                 "{\"device_id\":%s,\"keys\":[{\"index\":%d,\"algorithm\":\"%s\",\"key\":\"%s\"}]}",
                 idj, (int)json_integer_value(json_object_get(c, "key_index")),
                 strlen(kh) == 32 ? "AES-128" : "AES-256", kh);
        FUZZ_CHECK(qkd_device_load(&dev, doc, strlen(doc), err, sizeof(err)) == QKD_OK);
        FUZZ_CHECK(qkd2_identity_keys(&ids[nc], dev,
                                      (int)json_integer_value(json_object_get(c, "key_index")),
                                      err, sizeof(err)) == QKD_OK);
        qkd_device_free(dev);
    }
    memset(r, 0, sizeof(*r));
    r->op = !strcmp(s(c, "op"), "end") ? QKD_OP_END : QKD_OP_KEY;
    snprintf(r->device_id, sizeof(r->device_id), "%s", s(c, "device_id"));
    snprintf(r->session_id, sizeof(r->session_id), "%s", s(c, "session_id"));
    r->mode = mode;
    unhex(s(c, "nonce_hex"), r->nonce, sizeof(r->nonce));
    unhex(s(c, "request_hash_hex"), r->h, sizeof(r->h));
    if (r->op == QKD_OP_KEY) {
        r->key_source = s(c, "key_source")[0];
        unhex(s(c, "e_c_priv_hex"), d, 32);
        FUZZ_CHECK((r->e_c = qkp2_priv_from_scalar(d)) != NULL);
        FUZZ_CHECK(qkp2_key_point(r->e_c, r->epk) == 0);
        if (s(c, "cr_plain_hex"))
            unhex(s(c, "cr_plain_hex"), r->cr, sizeof(r->cr));
    }
    nc++;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    const json_t *v = fuzz_vectors_v2(), *p = json_object_get(v, "platform"), *c;
    char *a, *b, *both, err[200];
    size_t i;
    (void)argc;
    (void)argv;
    fuzz_quiet();
    a = der_pem(s(p, "sign_cert_b64u"));
    b = der_pem(s(p, "ka_cert_b64u"));
    FUZZ_CHECK(asprintf(&both, "%s%s", a, b) > 0);
    FUZZ_CHECK(qkd2_platform_load(&plat, both, strlen(both), err, sizeof(err)) == QKD_OK);
    free(a);
    free(b);
    free(both);
    json_array_foreach(json_object_get(v, "cases"), i, c)
        if (nc < MAXC && !strcmp(s(c, "expect"), "accept") && s(c, "session_id"))
            add(c); /* (not the end of all sessions: it names none) */
    FUZZ_CHECK(nc > 0);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const qkd2_request *r;
    qkd_session_key k;
    char err[200], src = 0;
    size_t i;

    if (size < 1)
        return 0;
    i = data[0] % nc;
    r = &reqs[i];
    if (r->op == QKD_OP_KEY) {
        if (qkd2_response_key(&k, &src, r, ids[i], plat, (const char *)data + 1, size - 1, err,
                              sizeof(err)) == QKD_OK) {
            FUZZ_CHECK(!strcmp(k.session_id, r->session_id));
            FUZZ_CHECK((k.key_bits == 128 || k.key_bits == 256) &&
                       k.key_len == (size_t)k.key_bits / 8 && k.key);
            FUZZ_CHECK(src == 'c' || src == r->key_source);
        }
        qkd_session_key_clear(&k);
    } else {
        (void)qkd2_response_end(r, plat, (const char *)data + 1, size - 1, err, sizeof(err));
    }
    return 0;
}
