/* qkms_device2 — protocol v2 on the device side (qkms_device2.h). */
#include "qkms_device2.h"

#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/sha.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

static int fail(int rc, char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int fail(int rc, char *err, size_t errlen, const char *fmt, ...)
{
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    ERR_clear_error();
    return rc;
}

/* ---- the platform ------------------------------------------------------------ */

struct qkd2_platform {
    EVP_PKEY *sign;     /* the signing certificate's key */
    uint8_t ka_point[QKP2_POINT_LEN];
    char pin[65], ka[65];
};

static int cert_sha_hex(X509 *x, char out[65])
{
    unsigned char *der = NULL, d[32];
    int n = i2d_X509(x, &der);
    if (n <= 0)
        return -1;
    SHA256(der, (size_t)n, d);
    OPENSSL_free(der);
    qkp2_hex(d, 32, out);
    return 0;
}

int qkd2_platform_load(qkd2_platform **out, const char *pem, size_t len, char *err, size_t errlen)
{
    BIO *b = BIO_new_mem_buf(pem, (int)len);
    qkd2_platform *p = calloc(1, sizeof(*p));
    X509 *x;
    bool have_ka = false;
    int rc = QKD_ERR_INPUT;

    *out = NULL;
    if (!b || !p) {
        rc = fail(QKD_ERR_INTERNAL, err, errlen, "out of memory");
        goto out;
    }
    while ((x = PEM_read_bio_X509(b, NULL, NULL, NULL))) {
        uint32_t ku = X509_get_key_usage(x);
        EVP_PKEY *k = X509_get0_pubkey(x);
        int ok = -1;
        /* The first of each purpose: GET /v1/platform/certificates lists
         * the active pair first, then retired ones during an overlap. */
        if ((ku & KU_DIGITAL_SIGNATURE) && (X509_get_extension_flags(x) & EXFLAG_XKUSAGE)) {
            /* The platform's signing certificate has no extended key usage:
             * one with it is a firmware or data-signing certificate, whose
             * key signs what others ask (docs/protocol.md, v2). */
            ok = -2;
        } else if (ku & KU_DIGITAL_SIGNATURE) {
            uint8_t pt[QKP2_POINT_LEN];
            ok = 0;
            if (!p->sign)
                ok = qkp2_key_point(k, pt) == 0 && (p->sign = qkp2_point_key(pt, sizeof(pt)))
                         ? cert_sha_hex(x, p->pin)
                         : -1;
        } else if (ku & KU_KEY_AGREEMENT) {
            ok = 0;
            if (!have_ka) {
                ok = qkp2_key_point(k, p->ka_point) == 0 ? cert_sha_hex(x, p->ka) : -1;
                have_ka = ok == 0;
            }
        }
        X509_free(x);
        if (ok == -2) {
            rc = fail(QKD_ERR_INPUT, err, errlen,
                      "a certificate with an extended key usage (a firmware or data-signing "
                      "one) is not a platform certificate");
            goto out;
        }
        if (ok != 0) {
            rc = fail(QKD_ERR_INPUT, err, errlen,
                      "a platform certificate is neither a P-256 signing nor a key-agreement one");
            goto out;
        }
    }
    if (!p->sign || !have_ka) {
        rc = fail(QKD_ERR_INPUT, err, errlen,
                  "the platform certificates must hold a signing and a key-agreement certificate");
        goto out;
    }
    *out = p;
    p = NULL;
    rc = QKD_OK;
out:
    ERR_clear_error();
    qkd2_platform_free(p);
    BIO_free(b);
    return rc;
}

void qkd2_platform_free(qkd2_platform *p)
{
    if (!p)
        return;
    EVP_PKEY_free(p->sign);
    free(p);
}

const char *qkd2_platform_pin(const qkd2_platform *p) { return p->pin; }
const char *qkd2_platform_ka(const qkd2_platform *p) { return p->ka; }

/* ---- the device's identity ----------------------------------------------------- */

struct qkd2_identity {
    char device_id[QKP_MAX_ID + 1];
    int mode;
    EVP_PKEY *priv;     /* modes 1, 2 */
    uint8_t *cert_der;  /* mode 1 */
    size_t cert_len;
    int key_index;      /* mode 3 */
    uint8_t *key;       /* mode 3, secure heap */
    size_t key_len;
};

int qkd2_identity_cert(qkd2_identity **out, const char *device_id, int mode, const char *cert_pem,
                       size_t cert_len, const char *key_pem, size_t key_len, char *err,
                       size_t errlen)
{
    qkd2_identity *id = calloc(1, sizeof(*id));
    BIO *cb = BIO_new_mem_buf(cert_pem, (int)cert_len), *kb = BIO_new_mem_buf(key_pem, (int)key_len);
    X509 *x = NULL;
    unsigned char *der = NULL;
    uint8_t a[QKP2_POINT_LEN], b[QKP2_POINT_LEN];
    int n, rc = QKD_ERR_INPUT;

    *out = NULL;
    if (!id || !cb || !kb) {
        rc = fail(QKD_ERR_INTERNAL, err, errlen, "out of memory");
        goto out;
    }
    if ((mode != 1 && mode != 2) || (device_id && !qkp_id_valid(device_id))) {
        rc = fail(QKD_ERR_INPUT, err, errlen, "a certificate identity is mode 1 or 2 of a valid ID");
        goto out;
    }
    if (!(x = PEM_read_bio_X509(cb, NULL, NULL, NULL)) ||
        !(id->priv = PEM_read_bio_PrivateKey(kb, NULL, NULL, NULL))) {
        rc = fail(QKD_ERR_INPUT, err, errlen, "the certificate or the private key does not parse");
        goto out;
    }
    /* No ID given: the certificate's CN, which the platform CA's profile
     * makes the device ID (docs/pki.md). */
    if (!device_id) {
        int cn = X509_NAME_get_text_by_NID(X509_get_subject_name(x), NID_commonName,
                                           id->device_id, sizeof(id->device_id));
        if (cn <= 0 || !qkp_id_valid(id->device_id)) {
            rc = fail(QKD_ERR_INPUT, err, errlen, "the certificate's CN is not a device ID");
            goto out;
        }
        device_id = id->device_id;
    }
    /* The suite is P-256: the key must be one, and the certificate's. */
    if (qkp2_key_point(id->priv, a) != 0 || qkp2_key_point(X509_get0_pubkey(x), b) != 0 ||
        memcmp(a, b, sizeof(a)) != 0) {
        rc = fail(QKD_ERR_INPUT, err, errlen,
                  "the private key is not the certificate's, or not a P-256 key");
        goto out;
    }
    if ((n = i2d_X509(x, &der)) <= 0 || !(id->cert_der = malloc((size_t)n))) {
        rc = fail(QKD_ERR_INTERNAL, err, errlen, "out of memory");
        goto out;
    }
    memcpy(id->cert_der, der, (size_t)n);
    id->cert_len = (size_t)n;
    if (device_id != id->device_id)
        strcpy(id->device_id, device_id);
    id->mode = mode;
    id->key_index = -1;
    *out = id;
    id = NULL;
    rc = QKD_OK;
out:
    OPENSSL_free(der);
    X509_free(x);
    BIO_free(cb);
    BIO_free(kb);
    qkd2_identity_free(id);
    ERR_clear_error();
    return rc;
}

int qkd2_identity_keys(qkd2_identity **out, const qkd_device *d, int key_index, char *err,
                       size_t errlen)
{
    const qkd_key *k = d ? qkd_device_key(d, key_index) : NULL;
    qkd2_identity *id;

    *out = NULL;
    if (!k)
        return fail(QKD_ERR_INPUT, err, errlen, "the device has no key with index %d", key_index);
    if (k->local)
        return fail(QKD_ERR_INPUT, err, errlen,
                    "key %d is a local key: for the gateway's local network only", key_index);
    if (k->suite != QKP_SUITE_AES)
        return fail(QKD_ERR_INPUT, err, errlen,
                    "key %d is an SM4 key: protocol v2's suite is AES (use protocol v1)",
                    key_index);
    if (!(id = calloc(1, sizeof(*id))) || !(id->key = OPENSSL_secure_malloc(k->len))) {
        free(id);
        return fail(QKD_ERR_INTERNAL, err, errlen, "out of memory");
    }
    memcpy(id->key, k->key, k->len);
    id->key_len = k->len;
    id->key_index = key_index;
    id->mode = 3;
    strcpy(id->device_id, d->device_id);
    *out = id;
    return QKD_OK;
}

void qkd2_identity_free(qkd2_identity *id)
{
    if (!id)
        return;
    EVP_PKEY_free(id->priv);
    free(id->cert_der);
    if (id->key)
        OPENSSL_secure_clear_free(id->key, id->key_len);
    free(id);
}

/* ---- requests ------------------------------------------------------------------- */

/* Appending to a fixed buffer: once one append does not fit, every later
 * one fails too (b->ok). */
typedef struct {
    char *p;
    size_t cap, len;
    bool ok;
} sbuf;

static void put(sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void put(sbuf *b, const char *fmt, ...)
{
    va_list ap;
    int n;
    if (!b->ok)
        return;
    va_start(ap, fmt);
    n = vsnprintf(b->p + b->len, b->cap - b->len, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= b->cap - b->len)
        b->ok = false;
    else
        b->len += (size_t)n;
}

static void put_id(sbuf *b, const char *id)
{
    char q[2 * QKP_MAX_ID + 3];
    if (qkd_json_id(id, q, sizeof(q)) < 0)
        b->ok = false;
    else
        put(b, "%s", q);
}

static void put_b64(sbuf *b, const uint8_t *d, size_t n)
{
    char *s = malloc(QKP_B64URL_LEN(n));
    if (!s) {
        b->ok = false;
        return;
    }
    qkp_b64url_encode(d, n, s);
    put(b, "\"%s\"", s);
    free(s);
}

static int fixed_ok(const qkd2_fixed *f, char *err, size_t errlen)
{
#ifdef QKMS_TESTING
    (void)f;
    (void)err;
    (void)errlen;
    return QKD_OK;
#else
    if (f && (f->nonce || f->e_c || f->cr))
        return fail(QKD_ERR_INPUT, err, errlen,
                    "fixed randoms are accepted only in test builds (QKMS_TESTING)");
    return QKD_OK;
#endif
}

static int build(qkd2_request *r, qkd_op op, const qkd2_identity *id, const qkd2_platform *p,
                 const char *session_id, const char *peer_id, char source, bool delivered,
                 int64_t ts, const qkd2_fixed *fx, char *err, size_t errlen)
{
    const char *opname = op == QKD_OP_KEY ? "key" : "end";
    sbuf in = {NULL, sizeof(r->inner), 0, true}, body = {NULL, sizeof(r->body), 0, true};
    uint8_t z1[QKP2_Z_LEN], k1[QKP2_KEY_LEN], ka_cr[QKP2_CR_LEN];
    EVP_PKEY *ka = NULL;
    int rc;

    memset(r, 0, sizeof(*r));
    in.p = r->inner;
    body.p = r->body;
    if ((rc = fixed_ok(fx, err, errlen)) != QKD_OK)
        goto out;
    rc = QKD_ERR_INPUT;
    if (!id || !p) {
        rc = fail(QKD_ERR_INPUT, err, errlen, "no identity or platform");
        goto out;
    }
    if ((op != QKD_OP_END || session_id) && !qkp_id_valid(session_id)) {
        rc = fail(QKD_ERR_INPUT, err, errlen, "session and peer IDs must be valid IDs");
        goto out;
    }
    if (op == QKD_OP_KEY && peer_id && !qkp_id_valid(peer_id)) {
        rc = fail(QKD_ERR_INPUT, err, errlen, "session and peer IDs must be valid IDs");
        goto out;
    }
    if (op == QKD_OP_KEY && !peer_id && delivered) {
        rc = fail(QKD_ERR_INPUT, err, errlen, "a channel with the platform has no delivered mode");
        goto out;
    }
    if (op == QKD_OP_KEY && (source != 'a' && source != 'b' && source != 'c')) {
        rc = fail(QKD_ERR_INPUT, err, errlen, "key source must be a, b or c");
        goto out;
    }
    if (ts < 0) {
        rc = fail(QKD_ERR_INPUT, err, errlen, "timestamp must not be negative");
        goto out;
    }
    r->op = op;
    r->path = op == QKD_OP_KEY ? QKD2_PATH_KEY : QKD2_PATH_END;
    strcpy(r->device_id, id->device_id);
    r->all = !session_id; /* an end of all the device's sessions */
    if (session_id)
        strcpy(r->session_id, session_id);
    r->mode = id->mode;
    r->key_source = op == QKD_OP_KEY ? source : 0;
    rc = QKD_ERR_INTERNAL;
    if (fx && fx->nonce)
        memcpy(r->nonce, fx->nonce, QKP_NONCE_LEN);
    else if (RAND_bytes(r->nonce, QKP_NONCE_LEN) != 1) {
        rc = fail(QKD_ERR_INTERNAL, err, errlen, "no randomness");
        goto out;
    }
    if (op == QKD_OP_KEY) {
        r->e_c = fx && fx->e_c ? qkp2_priv_from_scalar(fx->e_c) : qkp2_keygen();
        if (!r->e_c || qkp2_key_point(r->e_c, r->epk) != 0) {
            rc = fail(QKD_ERR_INTERNAL, err, errlen, "making the ephemeral key failed");
            goto out;
        }
        if (source != 'c') {
            if (fx && fx->cr)
                memcpy(r->cr, fx->cr, QKP2_RANDOM_LEN);
            else if (RAND_bytes(r->cr, QKP2_RANDOM_LEN) != 1) {
                rc = fail(QKD_ERR_INTERNAL, err, errlen, "no randomness");
                goto out;
            }
            if (!(ka = qkp2_point_key(p->ka_point, QKP2_POINT_LEN)) ||
                qkp2_ecdh(r->e_c, ka, z1) != 0 ||
                qkp2_cr_key(z1, r->epk, p->ka_point, r->nonce, QKP_NONCE_LEN, k1) != 0 ||
                qkp2_cr_seal(k1, id->device_id, r->cr, ka_cr) != 0) {
                rc = fail(QKD_ERR_INTERNAL, err, errlen, "encrypting the client random failed");
                goto out;
            }
        }
    }
    /* R, the fields in the order of the spec's table. */
    put(&in, "{\"op\":\"%s\",\"device_id\":", opname);
    put_id(&in, id->device_id);
    put(&in, ",\"mode\":%d,\"suite\":\"%s\",", id->mode, QKP2_SUITE);
    if (r->all) {
        put(&in, "\"all\":true");
    } else {
        put(&in, "\"session_id\":");
        put_id(&in, session_id);
    }
    if (op == QKD_OP_KEY) {
        if (peer_id) {
            put(&in, ",\"peer_id\":");
            put_id(&in, peer_id);
        } else {
            put(&in, ",\"peer_platform\":true");
        }
        put(&in, ",\"key_source\":\"%c\"", source);
        if (delivered)
            put(&in, ",\"delivery\":\"delivered\"");
    }
    put(&in, ",\"ts\":%lld", (long long)ts);
    if (id->mode != 3) {
        put(&in, ",\"nonce\":");
        put_b64(&in, r->nonce, QKP_NONCE_LEN);
    }
    put(&in, ",\"pin\":\"%s\"", p->pin);
    if (op == QKD_OP_KEY) {
        put(&in, ",\"epk\":");
        put_b64(&in, r->epk, QKP2_POINT_LEN);
        if (source != 'c') {
            put(&in, ",\"ka\":\"%s\",\"cr\":", p->ka);
            put_b64(&in, ka_cr, sizeof(ka_cr));
        }
    }
    if (id->mode == 1) {
        put(&in, ",\"cert\":");
        put_b64(&in, id->cert_der, id->cert_len);
    }
    put(&in, "}");
    if (!in.ok) {
        rc = fail(QKD_ERR_INPUT, err, errlen, "request too large");
        goto out;
    }
    r->inner_len = in.len;
    if (qkp2_request_hash(r->nonce, (const uint8_t *)r->inner, r->inner_len, r->h) != 0)
        goto out;
    put(&body, "{\"v\":2,\"suite\":\"%s\",\"mode\":%d,\"device_id\":", QKP2_SUITE, id->mode);
    put_id(&body, id->device_id);
    if (id->mode != 3) {
        uint8_t sig[QKP2_SIG_LEN];
        if (qkp2_sign(id->priv, QKP2_REQ_PREFIX, (const uint8_t *)r->inner, r->inner_len, sig) !=
            0) {
            rc = fail(QKD_ERR_INTERNAL, err, errlen, "signing the request failed");
            goto out;
        }
        put(&body, ",\"req\":");
        put_b64(&body, (const uint8_t *)r->inner, r->inner_len);
        put(&body, ",\"sig\":");
        put_b64(&body, sig, sizeof(sig));
    } else {
        char aad[QKP_MAX_AAD];
        int al = qkp2_request_aad(opname, id->device_id, id->key_index, aad, sizeof(aad));
        uint8_t *ct = malloc(r->inner_len + QKP_TAG_LEN);
        if (al < 0 || !ct || r->inner_len > QKP_MAX_PLAINTEXT ||
            qkp_seal(id->key, id->key_len, r->nonce, aad, (size_t)al, (const uint8_t *)r->inner,
                     r->inner_len, ct) != 0) {
            free(ct);
            rc = fail(QKD_ERR_INTERNAL, err, errlen, "sealing the request failed");
            goto out;
        }
        put(&body, ",\"key_index\":%d,\"nonce\":", id->key_index);
        put_b64(&body, r->nonce, QKP_NONCE_LEN);
        put(&body, ",\"ct\":");
        put_b64(&body, ct, r->inner_len + QKP_TAG_LEN);
        free(ct);
    }
    put(&body, "}");
    if (!body.ok) {
        rc = fail(QKD_ERR_INPUT, err, errlen, "request too large");
        goto out;
    }
    r->body_len = body.len;
    rc = QKD_OK;
out:
    OPENSSL_cleanse(z1, sizeof(z1));
    OPENSSL_cleanse(k1, sizeof(k1));
    EVP_PKEY_free(ka);
    ERR_clear_error();
    if (rc != QKD_OK)
        qkd2_request_clear(r);
    return rc;
}

int qkd2_request_key(qkd2_request *r, const qkd2_identity *id, const qkd2_platform *p,
                     const char *session_id, const char *peer_id, char key_source, bool delivered,
                     int64_t ts, const qkd2_fixed *fixed, char *err, size_t errlen)
{
    return build(r, QKD_OP_KEY, id, p, session_id, peer_id, key_source, delivered, ts, fixed, err,
                 errlen);
}

int qkd2_request_end(qkd2_request *r, const qkd2_identity *id, const qkd2_platform *p,
                     const char *session_id, int64_t ts, const qkd2_fixed *fixed, char *err,
                     size_t errlen)
{
    if (!session_id)
        return fail(QKD_ERR_INPUT, err, errlen, "session and peer IDs must be valid IDs");
    return build(r, QKD_OP_END, id, p, session_id, NULL, 0, false, ts, fixed, err, errlen);
}

int qkd2_request_end_all(qkd2_request *r, const qkd2_identity *id, const qkd2_platform *p,
                         int64_t ts, const qkd2_fixed *fixed, char *err, size_t errlen)
{
    return build(r, QKD_OP_END, id, p, NULL, NULL, 0, false, ts, fixed, err, errlen);
}

void qkd2_request_clear(qkd2_request *r)
{
    if (!r)
        return;
    EVP_PKEY_free(r->e_c);
    OPENSSL_cleanse(r, sizeof(*r));
}

/* ---- answers -------------------------------------------------------------------- */

static const char *str(const json_t *o, const char *k)
{
    return json_string_value(json_object_get(o, k));
}

/* The outer answer's signature under the pinned key, then P parsed, with
 * the fields every answer has checked against r. *pout the caller's. */
static int open_answer(json_t **pout, const qkd2_request *r, const qkd2_platform *p,
                       const char *body, size_t len, char *err, size_t errlen)
{
    json_error_t je;
    json_t *o = json_loadb(body, len, JSON_REJECT_DUPLICATES, &je), *in = NULL, *v;
    uint8_t sig[QKP2_SIG_LEN], *pb = NULL, h[QKP2_HASH_LEN];
    const char *resp, *sg, *s;
    long pl;
    int rc = QKD_ERR_INPUT;

    *pout = NULL;
    if (!json_is_object(o) || !json_is_integer(v = json_object_get(o, "v")) ||
        json_integer_value(v) != QKP2_VERSION || !(resp = str(o, "resp")) || !(sg = str(o, "sig"))) {
        rc = fail(QKD_ERR_INPUT, err, errlen, "the answer is not a protocol v2 answer");
        goto out;
    }
    if (!(pb = malloc(strlen(resp) + 1))) {
        rc = fail(QKD_ERR_INTERNAL, err, errlen, "out of memory");
        goto out;
    }
    pl = qkp_b64url_decode(resp, strlen(resp), pb, strlen(resp) + 1);
    if (pl < 2 || qkp_b64url_decode(sg, strlen(sg), sig, sizeof(sig)) != QKP2_SIG_LEN) {
        rc = fail(QKD_ERR_INPUT, err, errlen, "the answer's resp or sig is not base64url");
        goto out;
    }
    if (qkp2_verify(p->sign, QKP2_RESP_PREFIX, pb, (size_t)pl, sig) != 0) {
        rc = fail(QKD_ERR_INPUT, err, errlen,
                  "the answer's signature does not verify under the pinned signing certificate");
        goto out;
    }
    in = json_loadb((const char *)pb, (size_t)pl, JSON_REJECT_DUPLICATES, &je);
    if (!json_is_object(in)) {
        rc = fail(QKD_ERR_INPUT, err, errlen, "the answer's resp is not a JSON object");
        goto out;
    }
    s = str(in, "signer");
    if (!s || strcmp(s, p->pin)) {
        rc = fail(QKD_ERR_INPUT, err, errlen, "the answer names another signer than the pinned one");
        goto out;
    }
    s = str(in, "op");
    if (!s || strcmp(s, r->op == QKD_OP_KEY ? "key" : "end") || !(s = str(in, "device_id")) ||
        strcmp(s, r->device_id) ||
        (r->all ? json_object_get(in, "session_id") != NULL ||
                      !json_is_true(json_object_get(in, "all"))
                : json_object_get(in, "all") != NULL || !(s = str(in, "session_id")) ||
                      strcmp(s, r->session_id))) {
        rc = fail(QKD_ERR_INPUT, err, errlen,
                  "the answer is for another operation, device or session");
        goto out;
    }
    s = str(in, "request");
    if (!s || qkp_b64url_decode(s, strlen(s), h, sizeof(h)) != QKP2_HASH_LEN ||
        CRYPTO_memcmp(h, r->h, sizeof(h)) != 0) {
        rc = fail(QKD_ERR_INPUT, err, errlen, "the answer is for another request");
        goto out;
    }
    *pout = in;
    in = NULL;
    rc = QKD_OK;
out:
    json_decref(in);
    json_decref(o);
    free(pb);
    ERR_clear_error();
    return rc;
}

int qkd2_response_key(qkd_session_key *out, char *source, const qkd2_request *r,
                      const qkd2_identity *id, const qkd2_platform *p, const char *body,
                      size_t len, char *err, size_t errlen)
{
    json_t *in = NULL, *jbits, *jexp;
    const char *key_id, *delivery, *ks, *es, *cs;
    uint8_t epk_s[QKP2_POINT_LEN], ct[QKP2_RANDOM_LEN + QKP_TAG_LEN], pay[QKP2_RANDOM_LEN];
    uint8_t z2[QKP2_Z_LEN], z3[QKP2_Z_LEN], k2[QKP2_KEY_LEN];
    EVP_PKEY *ep = NULL;
    long cl;
    size_t want;
    int bits, rc;

    memset(out, 0, sizeof(*out));
    if (!r || r->op != QKD_OP_KEY || !r->e_c || !id || !p || strcmp(id->device_id, r->device_id))
        return fail(QKD_ERR_INPUT, err, errlen, "not a key request of this identity");
    if ((rc = open_answer(&in, r, p, body, len, err, errlen)) != QKD_OK)
        goto out;
    rc = QKD_ERR_INPUT;
    key_id = str(in, "key_id");
    jbits = json_object_get(in, "key_bits");
    jexp = json_object_get(in, "expires_at");
    delivery = str(in, "delivery");
    ks = str(in, "key_source");
    es = str(in, "epk");
    cs = str(in, "ct");
    if (!qkp_id_valid(key_id) || !json_is_integer(jbits) ||
        (json_integer_value(jbits) != 128 && json_integer_value(jbits) != 256) ||
        !json_is_integer(jexp) || json_integer_value(jexp) < 0 || !delivery ||
        (strcmp(delivery, "session") && strcmp(delivery, "delivered"))) {
        rc = fail(QKD_ERR_INPUT, err, errlen,
                  "the answer's key_id, key_bits, expires_at or delivery is malformed");
        goto out;
    }
    bits = (int)json_integer_value(jbits);
    if (!ks || strlen(ks) != 1 || (ks[0] != 'c' && ks[0] != r->key_source)) {
        rc = fail(QKD_ERR_INPUT, err, errlen,
                  "the answer's key_source is neither the one asked for nor c");
        goto out;
    }
    want = ks[0] == 'c' ? (size_t)bits / 8 : ks[0] == 'a' ? QKP2_RANDOM_LEN : 0;
    if (!es || qkp_b64url_decode(es, strlen(es), epk_s, sizeof(epk_s)) != QKP2_POINT_LEN ||
        !(ep = qkp2_point_key(epk_s, sizeof(epk_s)))) {
        rc = fail(QKD_ERR_INPUT, err, errlen, "the answer's epk is not a P-256 point");
        goto out;
    }
    cl = cs ? qkp_b64url_decode(cs, strlen(cs), ct, sizeof(ct)) : -1;
    if (cl < 0 || (size_t)cl != want + QKP_TAG_LEN) {
        rc = fail(QKD_ERR_INPUT, err, errlen,
                  "the answer's ct is not the length key source %c gives", ks[0]);
        goto out;
    }
    if (qkp2_ecdh(r->e_c, ep, z2) != 0 ||
        (id->mode != 3 && qkp2_ecdh(id->priv, ep, z3) != 0) ||
        qkp2_resp_key(z2, id->mode != 3 ? z3 : id->key, id->mode != 3 ? sizeof(z3) : id->key_len,
                      r->h, epk_s, k2) != 0) {
        rc = fail(QKD_ERR_INTERNAL, err, errlen, "deriving the answer's key failed");
        goto out;
    }
    if (qkp2_payload_open(k2, key_id, ct, (size_t)cl, pay) != 0) {
        rc = fail(QKD_ERR_INPUT, err, errlen,
                  "the answer's ct does not open (tampered, or not for this device)");
        goto out;
    }
    if (!(out->key = OPENSSL_secure_malloc((size_t)bits / 8))) {
        rc = fail(QKD_ERR_INTERNAL, err, errlen, "out of secure memory");
        goto out;
    }
    out->key_len = (size_t)bits / 8;
    if (ks[0] == 'c')
        memcpy(out->key, pay, out->key_len);
    else if (qkp2_session_key(r->cr, ks[0] == 'a' ? pay : NULL, r->h, key_id, out->key,
                              out->key_len) != 0) {
        rc = fail(QKD_ERR_INTERNAL, err, errlen, "deriving the session key failed");
        goto out;
    }
    strcpy(out->session_id, r->session_id);
    strcpy(out->key_id, key_id);
    out->key_bits = bits;
    out->expires_at = (int64_t)json_integer_value(jexp);
    strcpy(out->delivery, delivery);
    if (source)
        *source = ks[0];
    rc = QKD_OK;
out:
    OPENSSL_cleanse(pay, sizeof(pay));
    OPENSSL_cleanse(z2, sizeof(z2));
    OPENSSL_cleanse(z3, sizeof(z3));
    OPENSSL_cleanse(k2, sizeof(k2));
    EVP_PKEY_free(ep);
    json_decref(in);
    if (rc != QKD_OK)
        qkd_session_key_clear(out);
    ERR_clear_error();
    return rc;
}

int qkd2_response_end(const qkd2_request *r, const qkd2_platform *p, const char *body, size_t len,
                      char *err, size_t errlen)
{
    json_t *in = NULL;
    int rc;
    if (!r || r->op != QKD_OP_END || r->all || !p)
        return fail(QKD_ERR_INPUT, err, errlen,
                    r && r->all ? "an end of all sessions: qkd2_response_end_all"
                                : "not an end request");
    if ((rc = open_answer(&in, r, p, body, len, err, errlen)) != QKD_OK)
        return rc;
    rc = json_is_true(json_object_get(in, "ended"))
             ? QKD_OK
             : fail(QKD_ERR_INPUT, err, errlen, "the answer does not say the session ended");
    json_decref(in);
    return rc;
}

int qkd2_response_end_all(const qkd2_request *r, const qkd2_platform *p, const char *body,
                          size_t len, int *ended, int *streams_ended, char *err, size_t errlen)
{
    json_t *in = NULL, *n, *m;
    int rc;
    if (ended)
        *ended = 0;
    if (streams_ended)
        *streams_ended = 0;
    if (!r || r->op != QKD_OP_END || !r->all || !p)
        return fail(QKD_ERR_INPUT, err, errlen, "not an end of all sessions");
    if ((rc = open_answer(&in, r, p, body, len, err, errlen)) != QKD_OK)
        return rc;
    n = json_object_get(in, "sessions_ended");
    m = json_object_get(in, "streams_ended");
    if (!json_is_true(json_object_get(in, "ended")) || !json_is_integer(n) ||
        json_integer_value(n) < 0 || json_integer_value(n) > INT_MAX || !json_is_integer(m) ||
        json_integer_value(m) < 0 || json_integer_value(m) > INT_MAX) {
        rc = fail(QKD_ERR_INPUT, err, errlen,
                  "the answer does not say that all the device's sessions ended");
    } else {
        if (ended)
            *ended = (int)json_integer_value(n);
        if (streams_ended)
            *streams_ended = (int)json_integer_value(m);
        rc = QKD_OK;
    }
    json_decref(in);
    return rc;
}
