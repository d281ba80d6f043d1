/*
 * Unit tests: the protocol v2 test vectors (tests/vectors/protocol-v2.json,
 * written by tests/vectors/make_vectors_v2.py from docs/protocol.md alone)
 * against the C implementation: qkms_proto2 (the primitives kmsd answers
 * with) and the device library qkms_device2 (requests, answers).
 *
 * The file is found through $QKMS_VECTORS_V2, else at
 * tests/vectors/protocol-v2.json relative to the current directory. Every
 * byte of a request but its ECDSA signature (randomized in OpenSSL 3.0) is
 * compared; signatures are verified instead. tests/integration/
 * test_vectors_v2.py checks the same file against the Python implementation.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>
#include <openssl/bio.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "qkms_device2.h"
#include "qkms_proto2.h"

#define DEFAULT_VECTORS "tests/vectors/protocol-v2.json"

static json_t *V; /* the whole file */

static const char *str(const json_t *o, const char *name)
{
    const char *s = json_string_value(json_object_get(o, name));
    if (!s)
        fail_msg("vector field \"%s\" missing or not a string", name);
    return s;
}

static json_int_t num(const json_t *o, const char *name)
{
    const json_t *v = json_object_get(o, name);
    if (!json_is_integer(v))
        fail_msg("vector field \"%s\" missing or not an integer", name);
    return json_integer_value(v);
}

static size_t unhex(const char *s, uint8_t *out, size_t cap)
{
    size_t n = strlen(s);
    long r = (n % 2 || n / 2 > cap) ? -1 : 0;
    for (size_t i = 0; r == 0 && i < n / 2; i++) {
        unsigned v;
        if (sscanf(s + 2 * i, "%2x", &v) != 1)
            r = -1;
        out[i] = (uint8_t)v;
    }
    if (r)
        fail_msg("bad hex in vectors: %.40s", s);
    return n / 2;
}

static size_t unb64(const char *s, uint8_t *out, size_t cap)
{
    long n = qkp_b64url_decode(s, strlen(s), out, cap);
    if (n < 0)
        fail_msg("bad b64u in vectors: %.40s", s);
    return (size_t)n;
}

static void expect_hex(const char *name, const char *what, const uint8_t *b, size_t n,
                       const char *want)
{
    char *h = malloc(2 * n + 1);
    qkp2_hex(b, n, h);
    if (strcmp(h, want))
        fail_msg("%s: %s differs:\n got  %s\n want %s", name, what, h, want);
    free(h);
}

/* A DER certificate (b64u) as PEM (malloc'd). */
static char *cert_pem(const char *b64)
{
    uint8_t der[4096];
    size_t n = unb64(b64, der, sizeof(der));
    const unsigned char *p = der;
    X509 *x = d2i_X509(NULL, &p, (long)n);
    BIO *b = BIO_new(BIO_s_mem());
    char *data, *out;
    long len;
    assert_non_null(x);
    assert_int_equal(PEM_write_bio_X509(b, x), 1);
    len = BIO_get_mem_data(b, &data);
    /* (BIO data is not NUL-terminated: no strndup, which may read on.) */
    out = malloc((size_t)len + 1);
    memcpy(out, data, (size_t)len);
    out[len] = 0;
    BIO_free(b);
    X509_free(x);
    return out;
}

static qkd2_platform *platform(void)
{
    const json_t *p = json_object_get(V, "platform");
    char *a = cert_pem(str(p, "sign_cert_b64u")), *b = cert_pem(str(p, "ka_cert_b64u")), err[160];
    size_t la = strlen(a), lb = strlen(b);
    char *both = malloc(la + lb + 1);
    qkd2_platform *out = NULL;
    memcpy(both, a, la);
    memcpy(both + la, b, lb + 1);
    if (qkd2_platform_load(&out, both, la + lb, err, sizeof(err)) != QKD_OK)
        fail_msg("platform: %s", err);
    assert_string_equal(qkd2_platform_pin(out), str(p, "pin"));
    assert_string_equal(qkd2_platform_ka(out), str(p, "ka"));
    free(a);
    free(b);
    free(both);
    return out;
}

/* The device of a case: its certificate and key (modes 1, 2) or a fill
 * document's key (mode 3). */
static qkd2_identity *identity(const json_t *c)
{
    qkd2_identity *id = NULL;
    char err[160];
    int mode = (int)num(c, "mode");
    if (mode != 3) {
        uint8_t d[32];
        EVP_PKEY *k;
        BIO *b = BIO_new(BIO_s_mem());
        char *kp, *cp = cert_pem(str(c, "device_cert_b64u"));
        long kl;
        unhex(str(c, "device_priv_hex"), d, sizeof(d));
        assert_non_null(k = qkp2_priv_from_scalar(d));
        assert_int_equal(PEM_write_bio_PrivateKey(b, k, NULL, NULL, 0, NULL, NULL), 1);
        kl = BIO_get_mem_data(b, &kp);
        if (qkd2_identity_cert(&id, str(c, "device_id"), mode, cp, strlen(cp), kp, (size_t)kl,
                               err, sizeof(err)) != QKD_OK)
            fail_msg("%s: identity: %s", str(c, "name"), err);
        BIO_free(b);
        EVP_PKEY_free(k);
        free(cp);
    } else {
        qkd_device *dev = NULL;
        const char *kh = str(c, "device_key_hex");
        json_t *doc = json_pack("{s:s,s:[{s:I,s:s,s:s}]}", "device_id", str(c, "device_id"),
                                "keys", "index", num(c, "key_index"), "algorithm",
                                strlen(kh) == 32 ? "AES-128" : "AES-256", "key", kh);
        char *text = json_dumps(doc, JSON_COMPACT);
        if (qkd_device_load(&dev, text, strlen(text), err, sizeof(err)) != QKD_OK ||
            qkd2_identity_keys(&id, dev, (int)num(c, "key_index"), err, sizeof(err)) != QKD_OK)
            fail_msg("%s: identity: %s", str(c, "name"), err);
        qkd_device_free(dev);
        free(text);
        json_decref(doc);
    }
    return id;
}

static void build(const json_t *c, const qkd2_identity *id, const qkd2_platform *p,
                  qkd2_request *r)
{
    uint8_t nonce[12], ec[32], cr[32];
    qkd2_fixed fx = {nonce, NULL, NULL};
    char err[160];
    int rc;
    unhex(str(c, "nonce_hex"), nonce, sizeof(nonce));
    if (!strcmp(str(c, "op"), "key")) {
        unhex(str(c, "e_c_priv_hex"), ec, sizeof(ec));
        fx.e_c = ec;
        if (json_object_get(c, "cr_plain_hex")) {
            unhex(str(c, "cr_plain_hex"), cr, sizeof(cr));
            fx.cr = cr;
        }
        /* No peer_id: the platform is the peer ("peer_platform": true). */
        rc = qkd2_request_key(r, id, p, str(c, "session_id"),
                              json_is_true(json_object_get(c, "peer_platform"))
                                  ? NULL
                                  : str(c, "peer_id"),
                              str(c, "key_source")[0],
                              json_is_true(json_object_get(c, "delivered")), num(c, "ts"), &fx,
                              err, sizeof(err));
    } else {
        rc = json_is_true(json_object_get(c, "all"))
                 ? qkd2_request_end_all(r, id, p, num(c, "ts"), &fx, err, sizeof(err))
                 : qkd2_request_end(r, id, p, str(c, "session_id"), num(c, "ts"), &fx, err,
                                    sizeof(err));
    }
    if (rc != QKD_OK)
        fail_msg("%s: building the request: %s", str(c, "name"), err);
}

/* ---- requests ------------------------------------------------------------------- */

static void requests_are_the_vectors(void **state)
{
    (void)state;
    qkd2_platform *p = platform();
    size_t i;
    json_t *c;
    int n = 0;
    json_array_foreach(json_object_get(V, "cases"), i, c) {
        const char *name = str(c, "name");
        qkd2_identity *id = identity(c);
        qkd2_request r;
        int mode = (int)num(c, "mode");
        build(c, id, p, &r);
        if (strcmp(r.inner, str(c, "request_inner")))
            fail_msg("%s: R differs:\n got  %s\n want %s", name, r.inner, str(c, "request_inner"));
        expect_hex(name, "H", r.h, sizeof(r.h), str(c, "request_hash_hex"));
        assert_string_equal(r.path, str(c, "request_path"));
        if (mode == 3) {
            if (strcmp(r.body, str(c, "request_body")))
                fail_msg("%s: body differs:\n got  %s\n want %s", name, r.body,
                         str(c, "request_body"));
        } else {
            /* Equal but for sig; ours and the vector's both verify. */
            json_t *got = json_loads(r.body, 0, NULL), *want = json_loads(str(c, "request_body"), 0, NULL);
            uint8_t sig[64], d[32];
            EVP_PKEY *k;
            assert_non_null(got);
            assert_non_null(want);
            unhex(str(c, "device_priv_hex"), d, sizeof(d));
            k = qkp2_priv_from_scalar(d);
            assert_int_equal(unb64(str(got, "sig"), sig, sizeof(sig)), 64);
            assert_int_equal(qkp2_verify(k, QKP2_REQ_PREFIX, (const uint8_t *)r.inner, r.inner_len, sig), 0);
            assert_int_equal(unb64(str(want, "sig"), sig, sizeof(sig)), 64);
            assert_int_equal(qkp2_verify(k, QKP2_REQ_PREFIX, (const uint8_t *)r.inner, r.inner_len, sig), 0);
            sig[0] ^= 1;
            assert_int_not_equal(qkp2_verify(k, QKP2_REQ_PREFIX, (const uint8_t *)r.inner, r.inner_len, sig), 0);
            json_object_del(got, "sig");
            json_object_del(want, "sig");
            if (!json_equal(got, want))
                fail_msg("%s: body differs beyond sig:\n got  %s", name, r.body);
            json_decref(got);
            json_decref(want);
            EVP_PKEY_free(k);
        }
        qkd2_request_clear(&r);
        qkd2_identity_free(id);
        n++;
    }
    assert_true(n >= 14);
    qkd2_platform_free(p);
}

/* The client random as kmsd opens it: K1 from Z1 = ECDH(ka, epk). */
static void client_random_opens_on_the_platform_side(void **state)
{
    (void)state;
    const json_t *pl = json_object_get(V, "platform");
    size_t i;
    json_t *c;
    int n = 0;
    uint8_t kad[32], kapt[65];
    EVP_PKEY *ka;
    unhex(str(pl, "ka_priv_hex"), kad, sizeof(kad));
    ka = qkp2_priv_from_scalar(kad);
    assert_int_equal(qkp2_key_point(ka, kapt), 0);
    json_array_foreach(json_object_get(V, "cases"), i, c) {
        uint8_t epk[65], z1[32], k1[32], crct[48], cr[32], nonce[12];
        EVP_PKEY *pe;
        if (!json_object_get(c, "cr_b64u"))
            continue;
        unb64(str(c, "epk_b64u"), epk, sizeof(epk));
        unhex(str(c, "nonce_hex"), nonce, sizeof(nonce));
        assert_non_null(pe = qkp2_point_key(epk, sizeof(epk)));
        assert_int_equal(qkp2_ecdh(ka, pe, z1), 0);
        expect_hex(str(c, "name"), "Z1", z1, 32, str(c, "z1_hex"));
        assert_int_equal(qkp2_cr_key(z1, epk, kapt, nonce, 12, k1), 0);
        expect_hex(str(c, "name"), "K1", k1, 32, str(c, "k1_hex"));
        assert_int_equal(unb64(str(c, "cr_b64u"), crct, sizeof(crct)), 48);
        assert_int_equal(qkp2_cr_open(k1, str(c, "device_id"), crct, cr), 0);
        expect_hex(str(c, "name"), "CR", cr, 32, str(c, "cr_plain_hex"));
        crct[47] ^= 1;
        assert_int_not_equal(qkp2_cr_open(k1, str(c, "device_id"), crct, cr), 0);
        EVP_PKEY_free(pe);
        n++;
    }
    assert_true(n >= 6);
    EVP_PKEY_free(ka);
}

/* The answer as kmsd seals it (negotiate_seal's primitives), byte for byte,
 * and the session keys of sources a and b as kmsd derives them. */
static void answers_seal_as_the_vectors(void **state)
{
    (void)state;
    size_t i;
    json_t *c;
    int n = 0;
    json_array_foreach(json_object_get(V, "cases"), i, c) {
        const json_t *rs = json_object_get(c, "response");
        const char *name = str(c, "name");
        uint8_t es_d[32], epk[65], epk_s[65], z2[32], z3[32], k2[32], h[32], pay[64], ct[96],
            key[32], cr[32], sr[32];
        size_t pl, z3l = 32;
        EVP_PKEY *es, *pe;
        if (strcmp(str(c, "expect"), "accept") || strcmp(str(c, "op"), "key"))
            continue;
        unhex(str(rs, "e_s_priv_hex"), es_d, sizeof(es_d));
        unb64(str(c, "epk_b64u"), epk, sizeof(epk));
        unhex(str(c, "request_hash_hex"), h, sizeof(h));
        es = qkp2_priv_from_scalar(es_d);
        pe = qkp2_point_key(epk, sizeof(epk));
        assert_int_equal(qkp2_key_point(es, epk_s), 0);
        {
            uint8_t want[65];
            unb64(str(rs, "epk_s_b64u"), want, sizeof(want));
            assert_memory_equal(want, epk_s, 65);
        }
        assert_int_equal(qkp2_ecdh(es, pe, z2), 0);
        expect_hex(name, "Z2", z2, 32, str(rs, "z2_hex"));
        if (num(c, "mode") != 3) {
            uint8_t dp[65];
            EVP_PKEY *dk;
            unb64(str(c, "device_pub_b64u"), dp, sizeof(dp));
            dk = qkp2_point_key(dp, sizeof(dp));
            assert_int_equal(qkp2_ecdh(es, dk, z3), 0);
            EVP_PKEY_free(dk);
        } else {
            z3l = unhex(str(c, "device_key_hex"), z3, sizeof(z3));
        }
        expect_hex(name, "Z3", z3, z3l, str(rs, "z3_hex"));
        assert_int_equal(qkp2_resp_key(z2, z3, z3l, h, epk_s, k2), 0);
        expect_hex(name, "K2", k2, 32, str(rs, "k2_hex"));
        pl = unhex(str(rs, "payload_hex"), pay, sizeof(pay));
        assert_int_equal(qkp2_payload_seal(k2, str(rs, "key_id"), pay, pl, ct), 0);
        {
            char *b = malloc(QKP_B64URL_LEN(pl + 16));
            qkp_b64url_encode(ct, pl + 16, b);
            if (strcmp(b, str(rs, "ct_b64u")))
                fail_msg("%s: ct differs", name);
            free(b);
        }
        if (str(rs, "key_source")[0] != 'c') {
            size_t kl = (size_t)num(rs, "key_bits") / 8;
            unhex(str(c, "cr_plain_hex"), cr, sizeof(cr));
            if (str(rs, "key_source")[0] == 'a')
                unhex(str(rs, "sr_hex"), sr, sizeof(sr));
            assert_int_equal(qkp2_session_key(cr, str(rs, "key_source")[0] == 'a' ? sr : NULL, h,
                                              str(rs, "key_id"), key, kl),
                             0);
            expect_hex(name, "session key", key, kl, str(rs, "session_key_hex"));
        }
        EVP_PKEY_free(es);
        EVP_PKEY_free(pe);
        n++;
    }
    assert_true(n >= 9);
}

/* ---- answers -------------------------------------------------------------------- */

static int open_answer(const json_t *c, const char *body, uint8_t *key, size_t *kl, char *src,
                       char *err, size_t el)
{
    qkd2_platform *p = platform();
    qkd2_identity *id = identity(c);
    qkd2_request r;
    qkd_session_key k;
    int rc;
    build(c, id, p, &r);
    if (!strcmp(str(c, "op"), "key")) {
        rc = qkd2_response_key(&k, src, &r, id, p, body, strlen(body), err, el);
        if (rc == QKD_OK) {
            memcpy(key, k.key, k.key_len);
            *kl = k.key_len;
            qkd_session_key_clear(&k);
        }
    } else {
        int n = -1, m = -1;
        rc = r.all ? qkd2_response_end_all(&r, p, body, strlen(body), &n, &m, err, el)
                   : qkd2_response_end(&r, p, body, strlen(body), err, el);
        if (rc == QKD_OK && r.all && (n < 0 || m < 0))
            fail_msg("%s: counts not read", str(c, "name"));
    }
    qkd2_request_clear(&r);
    qkd2_identity_free(id);
    qkd2_platform_free(p);
    return rc;
}

static void answers_are_accepted_or_refused(void **state)
{
    (void)state;
    size_t i;
    json_t *c;
    int acc = 0, rej = 0;
    json_array_foreach(json_object_get(V, "cases"), i, c) {
        const json_t *rs = json_object_get(c, "response");
        const char *name = str(c, "name");
        uint8_t key[32];
        size_t kl = 0;
        char src = 0, err[200];
        int rc = open_answer(c, str(rs, "body"), key, &kl, &src, err, sizeof(err));
        if (!strcmp(str(c, "expect"), "accept")) {
            if (rc != QKD_OK)
                fail_msg("%s: refused: %s", name, err);
            if (!strcmp(str(c, "op"), "key")) {
                expect_hex(name, "session key", key, kl, str(rs, "session_key_hex"));
                assert_int_equal(src, str(rs, "key_source")[0]);
            }
            acc++;
        } else {
            if (rc == QKD_OK)
                fail_msg("%s: accepted an answer to refuse (%s)", name, str(c, "reason"));
            /* The same request's genuine answer is accepted: the refusal
             * is the tampered field's doing. */
            rc = open_answer(c, str(c, "valid_body"), key, &kl, &src, err, sizeof(err));
            if (rc != QKD_OK)
                fail_msg("%s: the valid answer was refused: %s", name, err);
            rej++;
        }
    }
    assert_true(acc >= 14 && rej >= 15);
}

static void fixed_randoms_need_a_testing_build(void **state)
{
    (void)state;
    /* This binary links the QKMS_TESTING build; test_device_release checks
     * the real one refuses. Here: an ephemeral must not be reused. */
    qkd2_platform *p = platform();
    json_t *c = json_array_get(json_object_get(V, "cases"), 0);
    qkd2_identity *id = identity(c);
    qkd2_request a, b;
    char err[160];
    assert_int_equal(qkd2_request_key(&a, id, p, "S", "P", 'a', false, 1, NULL, err, sizeof(err)), QKD_OK);
    assert_int_equal(qkd2_request_key(&b, id, p, "S", "P", 'a', false, 1, NULL, err, sizeof(err)), QKD_OK);
    assert_memory_not_equal(a.epk, b.epk, 65);
    assert_memory_not_equal(a.nonce, b.nonce, 12);
    assert_memory_not_equal(a.cr, b.cr, 32);
    qkd2_request_clear(&a);
    qkd2_request_clear(&b);
    qkd2_identity_free(id);
    qkd2_platform_free(p);
}

static int setup(void **state)
{
    const char *path = getenv("QKMS_VECTORS_V2");
    json_error_t jerr;
    (void)state;
    if (!path || !*path)
        path = DEFAULT_VECTORS;
    V = json_load_file(path, JSON_REJECT_DUPLICATES, &jerr);
    if (!json_is_array(json_object_get(V, "cases"))) {
        fprintf(stderr, "%s: not the v2 vectors (%s, line %d)\n", path, jerr.text, jerr.line);
        return -1;
    }
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    json_decref(V);
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(requests_are_the_vectors),
        cmocka_unit_test(client_random_opens_on_the_platform_side),
        cmocka_unit_test(answers_seal_as_the_vectors),
        cmocka_unit_test(answers_are_accepted_or_refused),
        cmocka_unit_test(fixed_randoms_need_a_testing_build),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
