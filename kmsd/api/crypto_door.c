/*
 * crypto_door — the door of the crypto services (service/crypto.h) on the
 * admin listener: GET /v1/random, POST /v1/crypto/sessions/{session}/
 * encrypt and .../decrypt, .../devices/{id}/encrypt and .../decrypt, POST
 * /v1/crypto/sign and /verify (docs/api.md, "Crypto services"). Data travels as
 * standard base64 inside JSON; sequence numbers, unsigned 64-bit, as
 * decimal strings.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "api/principal.h"
#include "api/routes.h"
#include "b64.h"
#include "qkms_seal.h"
#include "hexutil.h"
#include "service/crypto.h"
#include "service/crypto_sign.h"

/* Standard base64 of len bytes, malloc'd (NULL: out of memory). */
static char *b64_encode(const uint8_t *in, size_t len)
{
    size_t n = 4 * ((len + 2) / 3) + 1;
    char *out = malloc(n);
    if (out)
        EVP_EncodeBlock((unsigned char *)out, in, (int)len);
    return out;
}

/* The named string member of in as bytes (malloc'd, *len): strict standard
 * base64 of at most max bytes. NULL with the answer written otherwise. */
static uint8_t *b64_member(json_t *in, const char *name, size_t max, size_t *len,
                           http_response *rs)
{
    json_t *j = json_object_get(in, name);
    const char *s = json_string_value(j);
    size_t sl = s ? json_string_length(j) : 0;
    uint8_t *out;
    long n;

    if (!s) {
        http_error(rs, 422, "invalid_request", "%s must be a base64 string", name);
        return NULL;
    }
    if (!(out = malloc(b64_decoded_max(sl) + 1))) {
        http_error(rs, 500, "internal", "out of memory");
        return NULL;
    }
    n = b64_decode(s, sl, out, b64_decoded_max(sl) + 1);
    if (n < 0 || (size_t)n > max) {
        OPENSSL_cleanse(out, b64_decoded_max(sl) + 1);
        free(out);
        if (n < 0)
            http_error(rs, 422, "invalid_base64", "%s is not standard base64 (RFC 4648)", name);
        else
            http_error(rs, 413, "payload_too_large", "%s over %zu bytes", name, max);
        return NULL;
    }
    *len = (size_t)n;
    return out;
}

/* Only the named members (each at most once: JSON objects here have
 * unique keys). */
static bool only_members(json_t *in, const char *const *names, int n)
{
    const char *k;
    json_t *v;
    json_object_foreach(in, k, v) {
        int i;
        for (i = 0; i < n && strcmp(k, names[i]) != 0; i++)
            ;
        if (i == n)
            return false;
    }
    return true;
}

void h_crypto_random(http_request *rq, http_response *rs)
{
    const char *bs = http_query(rq, "bytes"), *prov = NULL;
    qk_principal who = admin_principal(rq);
    uint8_t buf[CRYPTO_RANDOM_MAX];
    char *end = NULL, *b64 = NULL;
    long n = 0;
    qk_err e;

    if (bs && *bs >= '0' && *bs <= '9') {
        errno = 0;
        n = strtol(bs, &end, 10);
        if (errno || *end)
            n = 0;
    }
    if (http_query_count(rq, "bytes") > 1)
        n = 0;
    /* n = 0 (absent, not a number, 0) is refused by the service with its
     * one message. */
    if (crypto_random(&rq->kms->svc, &who, n > 0 && n <= CRYPTO_RANDOM_MAX ? (size_t)n : 0, buf,
                      &prov, &e) != QK_OK) {
        http_fail(rs, &e);
        return;
    }
    if (!(b64 = b64_encode(buf, (size_t)n))) {
        http_error(rs, 500, "internal", "out of memory");
        goto out;
    }
    snprintf(rs->provenance, sizeof(rs->provenance), "%s", prov);
    http_json(rs, 200, json_pack("{s:i,s:s,s:s}", "bytes", (int)n, "random", b64, "provenance",
                                 prov));
out:
    OPENSSL_cleanse(buf, sizeof(buf));
    if (b64) {
        OPENSSL_cleanse(b64, strlen(b64));
        free(b64);
    }
}

/* The answer of a seal or an open: data under `field`; with_index: the
 * device key's index too (data under a device key). */
static void answer(http_response *rs, const crypto_result *r, const char *field,
                   bool with_index)
{
    char *b64 = b64_encode(r->data, r->len), seq[24];
    json_t *j;
    if (!b64) {
        http_error(rs, 500, "internal", "out of memory");
        return;
    }
    snprintf(seq, sizeof(seq), "%llu", (unsigned long long)r->seq);
    j = json_pack("{s:s,s:s,s:s,s:s,s:s,s:s}", field, b64, "key_id", r->key_id, "seq", seq,
                  "direction", r->direction == QKS_A2B ? "a2b" : "b2a", "party", r->party,
                  "peer", r->peer);
    if (j && with_index)
        json_object_set_new(j, "key_index", json_integer(r->key_index));
    http_json(rs, 200, j);
    OPENSSL_cleanse(b64, strlen(b64));
    free(b64);
}

void h_crypto_encrypt(http_request *rq, http_response *rs)
{
    static const char *const members[] = {"plaintext", "key_id"};
    qk_principal who = admin_principal(rq);
    json_t *in = http_body_object(rq, rs), *jk;
    uint8_t *pt = NULL;
    size_t pt_len = 0;
    crypto_result r = {0};
    qk_err e;

    if (!in)
        return;
    jk = json_object_get(in, "key_id");
    if (!only_members(in, members, 2) || (jk && !json_is_string(jk))) {
        http_error(rs, 422, "invalid_request",
                   "expected {\"plaintext\": base64 string, \"key_id\"?: string}");
        goto out;
    }
    if (!(pt = b64_member(in, "plaintext", CRYPTO_DATA_MAX, &pt_len, rs)))
        goto out;
    if (crypto_seal(&rq->kms->svc, &who, rq->params[0], json_string_value(jk), pt, pt_len, &r,
                    &e) != QK_OK) {
        http_fail(rs, &e);
        goto out;
    }
    answer(rs, &r, "frame", false);
out:
    crypto_result_clear(&r);
    if (pt) {
        OPENSSL_cleanse(pt, pt_len);
        free(pt);
    }
    json_decref(in);
}

/* A decrypt: {"frame"} opened by fn for the route's session or device;
 * with_index: the answer names the device key's index too. */
typedef qk_kind (*open_fn)(qk_svc *, const qk_principal *, const char *, const uint8_t *, size_t,
                           crypto_result *, qk_err *);

static void decrypt_door(http_request *rq, http_response *rs, open_fn fn, bool with_index)
{
    static const char *const members[] = {"frame"};
    qk_principal who = admin_principal(rq);
    json_t *in = http_body_object(rq, rs);
    uint8_t *frame = NULL;
    size_t len = 0;
    crypto_result r = {0};
    qk_err e;

    if (!in)
        return;
    if (!only_members(in, members, 1)) {
        http_error(rs, 422, "invalid_request", "expected {\"frame\": base64 string}");
        goto out;
    }
    if (!(frame = b64_member(in, "frame", CRYPTO_DATA_MAX + QKS_OVERHEAD, &len, rs)))
        goto out;
    if (fn(&rq->kms->svc, &who, rq->params[0], frame, len, &r, &e) != QK_OK) {
        http_fail(rs, &e);
        goto out;
    }
    answer(rs, &r, "plaintext", with_index);
out:
    crypto_result_clear(&r);
    free(frame);
    json_decref(in);
}

void h_crypto_decrypt(http_request *rq, http_response *rs)
{
    decrypt_door(rq, rs, crypto_open, false);
}

void h_crypto_device_encrypt(http_request *rq, http_response *rs)
{
    static const char *const members[] = {"plaintext", "key_index"};
    qk_principal who = admin_principal(rq);
    json_t *in = http_body_object(rq, rs), *ji;
    uint8_t *pt = NULL;
    size_t pt_len = 0;
    crypto_result r = {0};
    int idx = -1;
    qk_err e;

    if (!in)
        return;
    ji = json_object_get(in, "key_index");
    if (!only_members(in, members, 2) || (ji && !json_is_integer(ji))) {
        http_error(rs, 422, "invalid_request",
                   "expected {\"plaintext\": base64 string, \"key_index\"?: integer}");
        goto out;
    }
    if (ji) /* out of 0..255 is refused by the service, with its message */
        idx = json_integer_value(ji) < 0 || json_integer_value(ji) > 255
                  ? 256
                  : (int)json_integer_value(ji);
    if (!(pt = b64_member(in, "plaintext", CRYPTO_DATA_MAX, &pt_len, rs)))
        goto out;
    if (crypto_device_seal(&rq->kms->svc, &who, rq->params[0], idx, pt, pt_len, &r, &e) !=
        QK_OK) {
        http_fail(rs, &e);
        goto out;
    }
    answer(rs, &r, "frame", true);
out:
    crypto_result_clear(&r);
    if (pt) {
        OPENSSL_cleanse(pt, pt_len);
        free(pt);
    }
    json_decref(in);
}

void h_crypto_device_decrypt(http_request *rq, http_response *rs)
{
    decrypt_door(rq, rs, crypto_device_open, true);
}

/* ---- signatures (service/crypto_sign.h) ------------------------------------- */

/* A P-256 signature in DER is at most 72 bytes; anything up to this size
 * gets a verdict, larger is 413. */
#define CRYPTO_SIGNATURE_MAX 512

/* The key's name and the SHA-256 to sign or verify: of "data" (base64, up
 * to CRYPTO_DATA_MAX) or given as "digest" (64 hex), one of them; *size
 * the data's length, -1 for a digest. false with the answer written. */
static bool sign_input(json_t *in, http_response *rs, const char **name, uint8_t digest[32],
                       long long *size)
{
    json_t *jd = json_object_get(in, "data"), *jg = json_object_get(in, "digest");
    *name = json_string_value(json_object_get(in, "key"));
    if (!*name || !jd == !jg) {
        http_error(rs, 422, "invalid_request",
                   "expected {\"key\": string} and one of \"data\" (base64) and \"digest\" "
                   "(SHA-256, 64 hex digits)");
        return false;
    }
    if (jg) {
        const char *h = json_string_value(jg);
        if (!h || json_string_length(jg) != 64 || qkms_hex_decode(h, 64, digest, 32) != 32) {
            http_error(rs, 422, "invalid_digest", "digest must be a SHA-256: 64 hex digits");
            return false;
        }
        *size = -1;
        return true;
    }
    {
        size_t len = 0;
        uint8_t *data = b64_member(in, "data", CRYPTO_DATA_MAX, &len, rs);
        if (!data)
            return false;
        EVP_Digest(data, len, digest, NULL, EVP_sha256(), NULL);
        OPENSSL_cleanse(data, len);
        free(data);
        *size = (long long)len;
        return true;
    }
}

void h_crypto_sign(http_request *rq, http_response *rs)
{
    static const char *const names[] = {"key", "data", "digest"};
    qk_principal who = admin_principal(rq);
    json_t *in = http_body_object(rq, rs), *out;
    const char *name;
    uint8_t digest[32];
    long long size;
    qk_err e;

    if (!in)
        return;
    if (!only_members(in, names, 3)) {
        http_error(rs, 422, "invalid_request", "unknown field (key, data, digest)");
        goto out;
    }
    if (!sign_input(in, rs, &name, digest, &size))
        goto out;
    if (crypto_sign(&rq->kms->svc, &who, name, digest, size, &out, &e) != QK_OK) {
        http_fail(rs, &e);
        goto out;
    }
    http_json(rs, 200, out);
out:
    json_decref(in);
}

void h_crypto_verify(http_request *rq, http_response *rs)
{
    static const char *const names[] = {"key", "data", "digest", "signature", "version"};
    qk_principal who = admin_principal(rq);
    json_t *in = http_body_object(rq, rs), *out, *jv;
    const char *name;
    uint8_t digest[32], *sig = NULL;
    size_t siglen = 0;
    long long size;
    int version = 0;
    qk_err e;

    if (!in)
        return;
    if (!only_members(in, names, 5)) {
        http_error(rs, 422, "invalid_request",
                   "unknown field (key, data, digest, signature, version)");
        goto out;
    }
    jv = json_object_get(in, "version");
    if (jv && (!json_is_integer(jv) || json_integer_value(jv) < 1 ||
               json_integer_value(jv) > 1000000)) {
        http_error(rs, 422, "invalid_request", "version must be an integer from 1");
        goto out;
    }
    version = jv ? (int)json_integer_value(jv) : 0;
    if (!sign_input(in, rs, &name, digest, &size) ||
        !(sig = b64_member(in, "signature", CRYPTO_SIGNATURE_MAX, &siglen, rs)))
        goto out;
    if (crypto_verify(&rq->kms->svc, &who, name, version, digest, size, sig, siglen, &out, &e) !=
        QK_OK) {
        http_fail(rs, &e);
        goto out;
    }
    http_json(rs, 200, out);
out:
    free(sig);
    json_decref(in);
}
