/*
 * Unit tests: the protocol v1 test vectors (tests/vectors/protocol-v1.json,
 * written by tests/vectors/make_vectors.py from docs/protocol.md alone)
 * against the C implementation: qkms_proto (AADs, AES-GCM, base64url), used
 * by kmsd too, and the device client qkms_device (request bodies, response
 * verification).
 *
 * The file is found through $QKMS_VECTORS, else at
 * tests/vectors/protocol-v1.json relative to the current directory (`make
 * unit` runs from the repository root).
 *
 * Every check loops over the cases and names the failing case before it
 * fails. tests/integration/test_vectors.py checks the same file against the
 * Python client.
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

#include "qkms_device.h"
#include "qkms_proto.h"

#define DEFAULT_VECTORS "tests/vectors/protocol-v1.json"

/* ---- helpers ----------------------------------------------------------------- */

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

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

/* Lower-case hex into out (cap bytes); returns the length, fails the test on
 * bad input. */
static size_t unhex(const char *s, uint8_t *out, size_t cap)
{
    size_t n = strlen(s);
    if (n % 2 || n / 2 > cap)
        fail_msg("bad hex in vectors: %s", s);
    for (size_t i = 0; i < n / 2; i++) {
        int hi = hexval(s[2 * i]), lo = hexval(s[2 * i + 1]);
        if (hi < 0 || lo < 0)
            fail_msg("bad hex in vectors: %s", s);
        out[i] = (uint8_t)(hi << 4 | lo);
    }
    return n / 2;
}

static int is_op(const json_t *c, const char *op)
{
    return strcmp(str(c, "op"), op) == 0;
}

static int accepts(const json_t *c)
{
    return strcmp(str(c, "expect"), "accept") == 0;
}

/* The device of a case, through the library's own loader (a minimal fill
 * document: no kcv, no validity bounds). */
static qkd_device *load_device(const json_t *c)
{
    qkd_device *d = NULL;
    char err[160];
    json_t *doc = json_pack("{s:s,s:[{s:I,s:s,s:s}]}", "device_id", str(c, "device_id"), "keys",
                            "index", num(c, "key_index"), "algorithm",
                            str(c, "device_key_algorithm"), "key", str(c, "device_key"));
    char *text = doc ? json_dumps(doc, JSON_COMPACT) : NULL;
    assert_non_null(text);
    if (qkd_device_load(&d, text, strlen(text), err, sizeof(err)) != QKD_OK)
        fail_msg("%s: qkd_device_load: %s", str(c, "name"), err);
    free(text);
    json_decref(doc);
    return d;
}

/* The case's request, built by the client with the case's fixed nonce. */
static void build_request(const json_t *c, const qkd_device *d, qkd_request *r)
{
    uint8_t nonce[QKP_NONCE_LEN];
    char err[160];
    int rc;

    assert_int_equal(unhex(str(c, "request_nonce"), nonce, sizeof(nonce)), QKP_NONCE_LEN);
    if (is_op(c, "stream"))
        rc = qkd_request_stream(r, d, (int)num(c, "key_index"),
                                json_string_value(json_object_get(c, "stream_id")),
                                str(c, "peer_id"), num(c, "seq"), num(c, "ts"), nonce, err,
                                sizeof(err));
    else if (is_op(c, "key") && (json_object_get(c, "epoch") || json_object_get(c, "direction")))
        rc = qkd_request_key_ext(r, d, (int)num(c, "key_index"), str(c, "session_id"),
                                 str(c, "peer_id"),
                                 json_object_get(c, "epoch") ? (int)num(c, "epoch") : -1,
                                 json_string_value(json_object_get(c, "direction")), num(c, "ts"),
                                 nonce, err, sizeof(err));
    else if (is_op(c, "key"))
        rc = qkd_request_key(r, d, (int)num(c, "key_index"), str(c, "session_id"),
                             str(c, "peer_id"), json_is_true(json_object_get(c, "delivered")),
                             num(c, "ts"), nonce, err, sizeof(err));
    else if (json_is_true(json_object_get(c, "all"))) /* every session of the device */
        rc = qkd_request_end_all(r, d, (int)num(c, "key_index"), num(c, "ts"), nonce, err,
                                 sizeof(err));
    else
        rc = qkd_request_end(r, d, (int)num(c, "key_index"), str(c, "session_id"), num(c, "ts"),
                             nonce, err, sizeof(err));
    if (rc != QKD_OK)
        fail_msg("%s: building the request: %s", str(c, "name"), err);
}

/* ---- fixture ------------------------------------------------------------------ */

static int setup(void **state)
{
    const char *path = getenv("QKMS_VECTORS");
    json_error_t jerr;
    json_t *cases;

    if (!path || !*path)
        path = DEFAULT_VECTORS;
    cases = json_load_file(path, JSON_REJECT_DUPLICATES, &jerr);
    if (!json_is_array(cases) || json_array_size(cases) == 0) {
        fprintf(stderr, "%s: not a non-empty JSON list of vectors (%s, line %d); set "
                        "QKMS_VECTORS or run from the repository root\n",
                path, jerr.text, jerr.line);
        json_decref(cases);
        return -1;
    }
    *state = cases;
    return 0;
}

static int teardown(void **state)
{
    json_decref(*state);
    return 0;
}

#define FOR_CASES(cases, i, c) json_array_foreach((json_t *)(cases), i, c)

/* ---- tests --------------------------------------------------------------------- */

/* The file holds the edge cases it is for: a regenerated file that lost
 * them (or a wrong file) fails here rather than passing vacuously. */
static void coverage(void **state)
{
    size_t i;
    json_t *c;
    int key_ok = 0, end_ok = 0, end_all = 0, stream_ok = 0, sm4 = 0, rejects = 0, aes128 = 0, aes256 = 0, bits256 = 0, idx255 = 0,
        quote_sid = 0, quote_dev = 0, delivered = 0;

    FOR_CASES(*state, i, c) {
        const char *alg = str(c, "device_key_algorithm");
        aes128 += strcmp(alg, "AES-128") == 0;
        aes256 += strcmp(alg, "AES-256") == 0;
        sm4 += strcmp(alg, "SM4-128") == 0;
        if (!accepts(c)) {
            rejects++;
            assert_true(is_op(c, "key"));
            str(c, "must_fail");
            continue;
        }
        key_ok += is_op(c, "key");
        end_ok += is_op(c, "end");
        idx255 += num(c, "key_index") == 255;
        end_all += json_is_true(json_object_get(c, "all"));
        stream_ok += is_op(c, "stream");
        if (is_op(c, "stream"))
            assert_null(json_object_get(c, "session_id"));
        else if (json_is_true(json_object_get(c, "all")))
            assert_null(json_object_get(c, "session_id"));
        else
            quote_sid += strchr(str(c, "session_id"), '"') != NULL;
        quote_dev += strchr(str(c, "device_id"), '"') != NULL;
        if (is_op(c, "key")) {
            bits256 += num(json_object_get(c, "response"), "key_bits") == 256;
            delivered += json_is_true(json_object_get(c, "delivered"));
        }
    }
    assert_true(key_ok >= 3 && end_ok >= 1 && rejects >= 3);
    assert_true(aes128 && aes256 && bits256 && idx255 && quote_sid && quote_dev && delivered &&
                end_all && stream_ok >= 2 && sm4 >= 3);
}

static void request_aad(void **state)
{
    size_t i;
    json_t *c;
    char aad[QKP_MAX_AAD];

    FOR_CASES(*state, i, c) {
        const char *want = str(c, "request_aad");
        int n = qkp_request_aad(str(c, "op"), str(c, "device_id"), (int)num(c, "key_index"), aad,
                                sizeof(aad));
        if (n < 0 || (size_t)n != strlen(want) || strcmp(aad, want) != 0)
            fail_msg("%s: request AAD \"%s\", expected \"%s\"", str(c, "name"), n < 0 ? "-" : aad,
                     want);
    }
}

/* The client's request body, byte for byte; and its pieces, so that a
 * mismatch says which one differs. */
static void request_body(void **state)
{
    size_t i;
    json_t *c;

    FOR_CASES(*state, i, c) {
        const char *name = str(c, "name"), *want = str(c, "request_body");
        qkd_device *d = load_device(c);
        qkd_request r;

        build_request(c, d, &r);
        if (strcmp(r.nonce_b64, str(c, "request_nonce_b64u")) != 0)
            fail_msg("%s: request nonce %s, expected %s", name, r.nonce_b64,
                     str(c, "request_nonce_b64u"));
        if (strcmp(r.path, str(c, "request_path")) != 0)
            fail_msg("%s: path %s, expected %s", name, r.path, str(c, "request_path"));
        if (r.body_len != strlen(r.body) || r.body_len != strlen(want) ||
            memcmp(r.body, want, r.body_len) != 0)
            fail_msg("%s: request body\n  got      %s\n  expected %s", name, r.body, want);
        if (json_is_true(json_object_get(c, "all")))
            assert_true(r.all && r.session_id[0] == '\0');
        else if (is_op(c, "stream"))
            assert_string_equal(r.session_id,
                                json_object_get(c, "stream_id") ? str(c, "stream_id") : "");
        else
            assert_string_equal(r.session_id, str(c, "session_id"));
        assert_string_equal(r.device_id, str(c, "device_id"));
        assert_int_equal(r.key_index, num(c, "key_index"));
        qkd_request_clear(&r);
        qkd_device_free(d);
    }
}

/* qkp_seal of the canonical inner request gives the body's ct, and
 * qkp_open gives the plaintext back. */
static void request_ct(void **state)
{
    size_t i;
    json_t *c;
    uint8_t key[QKD_MAX_KEY_LEN], nonce[QKP_NONCE_LEN], ct[QKP_MAX_PLAINTEXT + QKP_TAG_LEN],
        back[QKP_MAX_PLAINTEXT];
    char ct_b64[QKP_B64URL_LEN(sizeof(ct))];

    FOR_CASES(*state, i, c) {
        const char *name = str(c, "name"), *pt = str(c, "request_plaintext"),
                   *aad = str(c, "request_aad");
        size_t klen = unhex(str(c, "device_key"), key, sizeof(key)), len = strlen(pt);

        unhex(str(c, "request_nonce"), nonce, sizeof(nonce));
        assert_true(len <= QKP_MAX_PLAINTEXT);
        qkp_suite suite = (qkp_suite)qkp_suite_of(str(c, "device_key_algorithm"));
        assert_int_equal(qkp_seal_suite(suite, key, klen, nonce, aad, strlen(aad),
                                        (const uint8_t *)pt, len, ct),
                         0);
        qkp_b64url_encode(ct, len + QKP_TAG_LEN, ct_b64);
        if (strcmp(ct_b64, str(c, "request_ct")) != 0)
            fail_msg("%s: request ct %s, expected %s", name, ct_b64, str(c, "request_ct"));
        assert_int_equal(qkp_open_suite(suite, key, klen, nonce, aad, strlen(aad), ct,
                                        len + QKP_TAG_LEN, back),
                         0);
        assert_memory_equal(back, pt, len);
    }
}

/* The server's side of a good answer: response AAD and sealed session key. */
static void response_aad_and_seal(void **state)
{
    size_t i;
    json_t *c;
    char aad[QKP_MAX_AAD], ct_b64[QKP_B64URL_LEN(QKD_MAX_KEY_LEN + QKP_TAG_LEN)];
    uint8_t key[QKD_MAX_KEY_LEN], nonce[QKP_NONCE_LEN], skey[QKD_MAX_KEY_LEN],
        ct[QKD_MAX_KEY_LEN + QKP_TAG_LEN];
    int checked = 0;

    FOR_CASES(*state, i, c) {
        if (!is_op(c, "key") || !accepts(c))
            continue;
        const char *name = str(c, "name");
        const json_t *resp = json_object_get(c, "response");
        const char *want = str(resp, "aad");
        bool ext = json_object_get(c, "epoch") || json_object_get(c, "direction");
        const char *dir = json_string_value(json_object_get(c, "direction"));
        int n = ext ? qkp_response_aad_ext(str(c, "session_id"), str(c, "device_id"),
                                           (int)num(c, "key_index"), str(resp, "key_id"),
                                           num(resp, "expires_at"), str(c, "request_nonce_b64u"),
                                           json_object_get(c, "epoch") ? (int)num(c, "epoch") : 0,
                                           dir ? dir : "", aad, sizeof(aad))
                    : qkp_response_aad(str(c, "session_id"), str(c, "device_id"),
                                       (int)num(c, "key_index"), str(resp, "key_id"),
                                       num(resp, "expires_at"), str(c, "request_nonce_b64u"), aad,
                                       sizeof(aad));
        if (n < 0 || (size_t)n != strlen(want) || strcmp(aad, want) != 0)
            fail_msg("%s: response AAD \"%s\", expected \"%s\"", name, n < 0 ? "-" : aad, want);

        size_t klen = unhex(str(c, "device_key"), key, sizeof(key));
        size_t slen = unhex(str(resp, "session_key"), skey, sizeof(skey));
        assert_int_equal(slen * 8, num(resp, "key_bits"));
        assert_int_equal(unhex(str(resp, "nonce"), nonce, sizeof(nonce)), QKP_NONCE_LEN);
        assert_int_equal(qkp_seal_suite((qkp_suite)qkp_suite_of(str(c, "device_key_algorithm")),
                                        key, klen, nonce, aad, (size_t)n, skey, slen, ct),
                         0);
        qkp_b64url_encode(ct, slen + QKP_TAG_LEN, ct_b64);
        if (strcmp(ct_b64, str(resp, "ct")) != 0)
            fail_msg("%s: response ct %s, expected %s", name, ct_b64, str(resp, "ct"));
        assert_string_equal(str(json_object_get(resp, "body"), "ct"), ct_b64);
        checked++;
    }
    assert_true(checked > 0);
}

/* Runs the case's response body through qkd_response_key for the case's
 * request; returns the library's code, *sk and err filled. */
static int client_response(const json_t *c, qkd_session_key *sk, char *err, size_t errlen)
{
    const json_t *body = json_object_get(json_object_get(c, "response"), "body");
    char *text = json_dumps(body, JSON_COMPACT);
    qkd_device *d = load_device(c);
    qkd_request r;
    int rc;

    assert_non_null(text);
    build_request(c, d, &r);
    err[0] = 0;
    rc = qkd_response_key(sk, d, &r, text, strlen(text), err, errlen);
    qkd_request_clear(&r);
    qkd_device_free(d);
    free(text);
    return rc;
}

static void response_accepted(void **state)
{
    size_t i;
    json_t *c;
    uint8_t skey[QKD_MAX_KEY_LEN];
    char err[256];
    int checked = 0;

    FOR_CASES(*state, i, c) {
        if (!is_op(c, "key") || !accepts(c))
            continue;
        const char *name = str(c, "name");
        const json_t *resp = json_object_get(c, "response");
        qkd_session_key sk;
        size_t slen = unhex(str(resp, "session_key"), skey, sizeof(skey));

        if (client_response(c, &sk, err, sizeof(err)) != QKD_OK)
            fail_msg("%s: good response refused: %s", name, err);
        assert_non_null(sk.key);
        if (sk.key_len != slen || memcmp(sk.key, skey, slen) != 0)
            fail_msg("%s: session key differs from the expected one", name);
        assert_int_equal(sk.key_bits, num(resp, "key_bits"));
        assert_string_equal(sk.session_id, str(c, "session_id"));
        assert_string_equal(sk.key_id, str(resp, "key_id"));
        assert_int_equal(sk.expires_at, num(resp, "expires_at"));
        assert_string_equal(sk.delivery, str(resp, "delivery"));
        if (json_object_get(c, "epoch") || json_object_get(c, "direction")) {
            const json_t *b = json_object_get(resp, "body");
            assert_int_equal(sk.epoch, num(b, "epoch"));
            assert_string_equal(sk.direction, str(b, "direction"));
            assert_int_equal(sk.current_epoch, num(b, "current_epoch"));
        }
        qkd_session_key_clear(&sk);
        checked++;
    }
    assert_true(checked > 0);
}

/* Key streams: the server's side (AAD, seal) and the client's (the key). */
static void stream_responses(void **state)
{
    size_t i;
    json_t *c;
    char aad[QKP_MAX_AAD], err[256], ct_b64[QKP_B64URL_LEN(QKD_MAX_KEY_LEN + QKP_TAG_LEN)];
    uint8_t key[QKD_MAX_KEY_LEN], nonce[QKP_NONCE_LEN], skey[QKD_MAX_KEY_LEN],
        ct[QKD_MAX_KEY_LEN + QKP_TAG_LEN];
    int checked = 0;

    FOR_CASES(*state, i, c) {
        if (!is_op(c, "stream"))
            continue;
        const char *name = str(c, "name");
        const json_t *resp = json_object_get(c, "response");
        int n = qkp_stream_aad(str(resp, "stream_id"), str(c, "device_id"),
                               (int)num(c, "key_index"), num(c, "seq"), str(resp, "key_id"),
                               num(resp, "expires_at"), str(c, "request_nonce_b64u"), aad,
                               sizeof(aad));
        if (n < 0 || strcmp(aad, str(resp, "aad")) != 0)
            fail_msg("%s: stream AAD \"%s\", expected \"%s\"", name, n < 0 ? "-" : aad,
                     str(resp, "aad"));
        size_t klen = unhex(str(c, "device_key"), key, sizeof(key));
        size_t slen = unhex(str(resp, "session_key"), skey, sizeof(skey));
        assert_int_equal(unhex(str(resp, "nonce"), nonce, sizeof(nonce)), QKP_NONCE_LEN);
        assert_int_equal(qkp_seal_suite((qkp_suite)qkp_suite_of(str(c, "device_key_algorithm")),
                                        key, klen, nonce, aad, (size_t)n, skey, slen, ct),
                         0);
        qkp_b64url_encode(ct, slen + QKP_TAG_LEN, ct_b64);
        assert_string_equal(ct_b64, str(resp, "ct"));

        const json_t *body = json_object_get(resp, "body");
        char *text = json_dumps(body, JSON_COMPACT);
        qkd_device *d = load_device(c);
        qkd_request r;
        qkd_stream_key sk;
        build_request(c, d, &r);
        if (qkd_response_stream(&sk, d, &r, text, strlen(text), err, sizeof(err)) != QKD_OK)
            fail_msg("%s: good stream answer refused: %s", name, err);
        assert_true(sk.key_len == slen && memcmp(sk.key, skey, slen) == 0);
        assert_string_equal(sk.stream_id, str(resp, "stream_id"));
        assert_int_equal(sk.seq, num(c, "seq"));
        assert_int_equal(sk.low, num(resp, "low"));
        assert_int_equal(sk.window, num(resp, "window"));
        qkd_stream_key_clear(&sk);
        /* Another seq in the body: refused (the AAD would open: the body's
         * seq is the request's only if the client checks it). */
        json_t *other = json_deep_copy(body);
        json_object_set_new(other, "seq", json_integer(num(c, "seq") + 1));
        char *t2 = json_dumps(other, JSON_COMPACT);
        assert_int_equal(qkd_response_stream(&sk, d, &r, t2, strlen(t2), err, sizeof(err)),
                         QKD_ERR_INPUT);
        assert_null(sk.key);
        free(t2);
        json_decref(other);
        qkd_request_clear(&r);
        qkd_device_free(d);
        free(text);
        checked++;
    }
    assert_true(checked >= 2);
}

/* What the client's error message must mention for each must_fail, so that
 * a case is refused for the reason it is about and not by accident (a
 * parse failure, say). Matched case-insensitively against the messages of
 * qkd_response_key. */
static const char *reason_word(const char *must_fail)
{
    static const struct {
        const char *must_fail, *word;
    } words[] = {
        {"aead", "does not verify"}, {"key_bits", "-bit key"},       {"session_id", "session"},
        {"version", "version"},      {"nonce_reuse", "request nonce"}, {"nonce_length", "12 bytes"},
        {"b64u", "response ct"},     {"epoch", "epoch"},
    };
    for (size_t i = 0; i < sizeof(words) / sizeof(words[0]); i++) {
        if (strcmp(words[i].must_fail, must_fail) == 0)
            return words[i].word;
    }
    fail_msg("unknown must_fail \"%s\" in the vectors", must_fail);
    return NULL;
}

static void response_refused(void **state)
{
    size_t i;
    json_t *c;
    char err[256];
    int checked = 0;

    FOR_CASES(*state, i, c) {
        if (accepts(c))
            continue;
        const char *name = str(c, "name"), *word = reason_word(str(c, "must_fail"));
        qkd_session_key sk;
        int rc = client_response(c, &sk, err, sizeof(err));

        if (rc == QKD_OK) {
            qkd_session_key_clear(&sk);
            fail_msg("%s: accepted a response that must fail (%s)", name, str(c, "must_fail"));
        }
        if (rc != QKD_ERR_INPUT)
            fail_msg("%s: refused with %d (%s), expected QKD_ERR_INPUT", name, rc, err);
        /* Nothing of a refused response is returned. */
        assert_null(sk.key);
        assert_int_equal(sk.key_len, 0);
        assert_int_equal(sk.key_id[0], 0);
        if (!strcasestr(err, word))
            fail_msg("%s: refused, but for another reason than %s: \"%s\"", name,
                     str(c, "must_fail"), err);
        checked++;
    }
    assert_true(checked > 0);
}

/* The refusal test can fail: a key_bits reject case whose key_bits is put
 * back to what was sealed is accepted, with the sealed key. */
static void refusal_is_not_vacuous(void **state)
{
    size_t i;
    json_t *c, *copy = NULL;
    uint8_t skey[QKD_MAX_KEY_LEN];
    char err[256];

    FOR_CASES(*state, i, c) {
        if (!accepts(c) && strcmp(str(c, "must_fail"), "key_bits") == 0) {
            copy = json_deep_copy(c);
            break;
        }
    }
    assert_non_null(copy);
    json_t *resp = json_object_get(copy, "response");
    json_object_set_new(json_object_get(resp, "body"), "key_bits",
                        json_integer(num(resp, "key_bits")));
    qkd_session_key sk;
    size_t slen = unhex(str(resp, "session_key"), skey, sizeof(skey));
    if (client_response(copy, &sk, err, sizeof(err)) != QKD_OK)
        fail_msg("repaired %s refused: %s", str(copy, "name"), err);
    assert_int_equal(sk.key_len, slen);
    assert_memory_equal(sk.key, skey, slen);
    qkd_session_key_clear(&sk);
    json_decref(copy);
}

/* Each reject case is a valid response with one named thing changed: its
 * body differs from valid_body in exactly the fields differs_in lists, and
 * valid_body itself is accepted with the sealed key (so the refusal above
 * comes from that one change, not from another defect of the vector). */
static void reject_undone_is_accepted(void **state)
{
    size_t i;
    json_t *c;
    uint8_t skey[QKD_MAX_KEY_LEN];
    char err[256];
    int checked = 0;

    FOR_CASES(*state, i, c) {
        if (accepts(c))
            continue;
        const char *name = str(c, "name"), *k;
        json_t *copy = json_deep_copy(c), *resp = json_object_get(copy, "response");
        json_t *valid = json_object_get(copy, "valid_body"), *differs = json_object_get(c, "differs_in");
        json_t *body = json_object_get(resp, "body"), *v;
        size_t ndiff = 0, slen = unhex(str(resp, "session_key"), skey, sizeof(skey));
        qkd_session_key sk;

        if (!json_is_object(valid) || !json_is_array(differs) || json_array_size(differs) == 0)
            fail_msg("%s: valid_body or differs_in missing", name);
        json_object_foreach(valid, k, v) {
            json_t *b = json_object_get(body, k);
            if (!b || !json_equal(b, v)) {
                int listed = 0;
                for (size_t j = 0; j < json_array_size(differs); j++)
                    listed |= !strcmp(json_string_value(json_array_get(differs, j)), k);
                if (!listed)
                    fail_msg("%s: field %s differs but is not in differs_in", name, k);
                ndiff++;
            }
        }
        if (ndiff != json_array_size(differs) || json_object_size(body) != json_object_size(valid))
            fail_msg("%s: differs_in does not match the body", name);
        json_object_set(resp, "body", valid);
        if (client_response(copy, &sk, err, sizeof(err)) != QKD_OK)
            fail_msg("%s: the valid body is refused: %s", name, err);
        if (sk.key_len != slen || memcmp(sk.key, skey, slen) != 0)
            fail_msg("%s: the valid body gives another key", name);
        qkd_session_key_clear(&sk);
        json_decref(copy);
        checked++;
    }
    assert_true(checked > 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(coverage),
        cmocka_unit_test(request_aad),
        cmocka_unit_test(request_body),
        cmocka_unit_test(request_ct),
        cmocka_unit_test(response_aad_and_seal),
        cmocka_unit_test(response_accepted),
        cmocka_unit_test(response_refused),
        cmocka_unit_test(refusal_is_not_vacuous),
        cmocka_unit_test(reject_undone_is_accepted),
        cmocka_unit_test(stream_responses),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
