/*
 * Unit tests: the sealed frame (device/qkms_seal.h, docs/sealing.md) against
 * its test vectors (tests/vectors/seal-v1.json, written by
 * tests/vectors/make_vectors_seal.py from the doc alone; run from the
 * repository root, as `make unit` does), and the library wrappers
 * qkd_seal/qkd_open. tests/integration/test_seal.py checks the same file
 * against the Python implementation.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>
#include <openssl/crypto.h>
#include <openssl/rand.h>

#include "qkms_device.h"
#include "qkms_seal.h"

#define VECTORS "tests/vectors/seal-v1.json"
#define MAXF 4096

static json_t *doc;

static const char *str(const json_t *o, const char *name)
{
    const char *s = json_string_value(json_object_get(o, name));
    if (!s)
        fail_msg("vector field \"%s\" missing or not a string", name);
    return s;
}

static uint64_t seq_of(const json_t *o)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(str(o, "seq"), &end, 10);
    if (errno || *end)
        fail_msg("bad seq in vectors");
    return (uint64_t)v;
}

static size_t unhex(const char *s, uint8_t *out, size_t cap)
{
    size_t n = strlen(s);
    if (n % 2 || n / 2 > cap)
        fail_msg("bad hex in vectors: %.40s", s);
    for (size_t i = 0; i < n / 2; i++) {
        unsigned v;
        if (sscanf(s + 2 * i, "%2x", &v) != 1)
            fail_msg("bad hex in vectors: %.40s", s);
        out[i] = (uint8_t)v;
    }
    return n / 2;
}

static int dir_of(const char *d)
{
    return !strcmp(d, "a2b") ? QKS_A2B : !strcmp(d, "b2a") ? QKS_B2A : 0;
}

static const char *code_name(int rc) { return qks_strerror(rc); }

static int setup(void **state)
{
    json_error_t e;
    (void)state;
    doc = json_load_file(VECTORS, 0, &e);
    if (!doc)
        fprintf(stderr, "%s: %s (line %d)\n", VECTORS, e.text, e.line);
    return doc ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    json_decref(doc);
    return 0;
}

static void test_seal_vectors(void **state)
{
    size_t i;
    json_t *c;
    (void)state;
    assert_true(json_array_size(json_object_get(doc, "seal")) >= 5);
    json_array_foreach(json_object_get(doc, "seal"), i, c) {
        uint8_t key[32], kid[16], pt[MAXF], frame[MAXF], want[MAXF], back[MAXF];
        size_t kl = unhex(str(c, "key"), key, sizeof(key)), pl = unhex(str(c, "plaintext"), pt, sizeof(pt));
        size_t wl = unhex(str(c, "frame"), want, sizeof(want)), fl = 0, bl = 0;
        uint64_t seq = seq_of(c), got_seq = 0;
        qks_header h;
        qks_window w = {0};
        int d = dir_of(str(c, "direction"));

        assert_int_equal(qks_uuid_parse(str(c, "key_id"), kid), QKS_OK);
        assert_int_equal(qks_seal(key, kl, kid, str(c, "session_id"), d, seq, pt, pl, frame,
                                  sizeof(frame), &fl),
                         QKS_OK);
        if (fl != wl || memcmp(frame, want, wl) != 0)
            fail_msg("seal case %s: frame differs", str(c, "name"));
        assert_int_equal(qks_peek(frame, fl, &h), QKS_OK);
        assert_int_equal(h.direction, d);
        assert_true(h.seq == seq);
        assert_memory_equal(h.key_id, kid, 16);
        assert_int_equal(qks_open(key, kl, kid, str(c, "session_id"), d, &w, frame, fl, back,
                                  sizeof(back), &bl, &got_seq),
                         QKS_OK);
        assert_int_equal(bl, pl);
        assert_true(got_seq == seq);
        if (pl)
            assert_memory_equal(back, pt, pl);
    }
}

static void test_reject_vectors(void **state)
{
    size_t i;
    json_t *c;
    (void)state;
    assert_true(json_array_size(json_object_get(doc, "reject")) >= 10);
    json_array_foreach(json_object_get(doc, "reject"), i, c) {
        uint8_t key[32], kid[16], frame[MAXF], pt[MAXF];
        size_t kl = unhex(str(c, "key"), key, sizeof(key));
        size_t fl = unhex(str(c, "frame"), frame, sizeof(frame)), pl = 12345;
        qks_window w = {0};
        int rc;

        memset(pt, 0xA5, sizeof(pt));
        assert_int_equal(qks_uuid_parse(str(c, "key_id"), kid), QKS_OK);
        rc = qks_open(key, kl, kid, str(c, "session_id"), dir_of(str(c, "direction")), &w, frame,
                      fl, pt, sizeof(pt), &pl, NULL);
        if (strcmp(code_name(rc), str(c, "error")) != 0)
            fail_msg("reject case %s: got %s, want %s", str(c, "name"), code_name(rc),
                     str(c, "error"));
        assert_int_equal(w.any, 0);   /* the window did not move */
        assert_int_equal(pl, 12345);  /* no length reported */
        for (size_t k = 0; k < fl; k++) /* no plaintext left behind */
            if (pt[k] != 0xA5 && pt[k] != 0)
                fail_msg("reject case %s: output not wiped", str(c, "name"));
    }
}

static void test_window_vectors(void **state)
{
    size_t i, j;
    json_t *c, *s;
    (void)state;
    json_array_foreach(json_object_get(doc, "window"), i, c) {
        uint8_t key[32], kid[16];
        size_t kl = unhex(str(c, "key"), key, sizeof(key));
        qks_window w = {0};
        int d = dir_of(str(c, "direction"));

        assert_int_equal(qks_uuid_parse(str(c, "key_id"), kid), QKS_OK);
        json_array_foreach(json_object_get(c, "steps"), j, s) {
            uint8_t frame[MAXF], pt[MAXF];
            size_t fl = unhex(str(s, "frame"), frame, sizeof(frame)), pl;
            uint64_t seq = 0;
            int rc = qks_open(key, kl, kid, str(c, "session_id"), d, &w, frame, fl, pt,
                              sizeof(pt), &pl, &seq);
            if (json_is_true(json_object_get(s, "accept"))) {
                if (rc != QKS_OK)
                    fail_msg("window step seq %s: refused (%s)", str(s, "seq"), code_name(rc));
                assert_true(seq == seq_of(s));
            } else if (strcmp(code_name(rc), str(s, "error")) != 0) {
                fail_msg("window step seq %s: got %s, want %s", str(s, "seq"), code_name(rc),
                         str(s, "error"));
            }
        }
    }
}

/* Bad arguments are refused before anything is written. */
static void test_arguments(void **state)
{
    uint8_t key[32] = {1}, kid[16] = {2}, out[128], pt[8] = {0};
    size_t n = 0;
    (void)state;
    assert_int_equal(qks_seal(key, 24, kid, "S", QKS_A2B, 0, pt, 8, out, sizeof(out), &n),
                     QKS_ERR_INPUT);
    assert_int_equal(qks_seal(key, 32, kid, "S", 3, 0, pt, 8, out, sizeof(out), &n), QKS_ERR_INPUT);
    assert_int_equal(qks_seal(key, 32, kid, "S", QKS_A2B, UINT64_MAX, pt, 8, out, sizeof(out), &n),
                     QKS_ERR_INPUT);
    assert_int_equal(qks_seal(key, 32, kid, "", QKS_A2B, 0, pt, 8, out, sizeof(out), &n),
                     QKS_ERR_INPUT);
    assert_int_equal(qks_seal(key, 32, kid, "S", QKS_A2B, 0, pt, 8, out, 8 + QKS_OVERHEAD - 1, &n),
                     QKS_ERR_INPUT);
    char long_sid[130];
    memset(long_sid, 'x', 129);
    long_sid[129] = 0;
    assert_int_equal(qks_seal(key, 32, kid, long_sid, QKS_A2B, 0, pt, 8, out, sizeof(out), &n),
                     QKS_ERR_INPUT);
    assert_int_equal(qks_seal(key, 32, kid, long_sid + 1, QKS_A2B, 0, pt, 8, out, sizeof(out), &n),
                     QKS_OK);
    assert_int_equal(n, 8 + QKS_OVERHEAD);
    /* An output buffer too small for the plaintext: refused, window unmoved. */
    qks_window w = {0};
    size_t pl;
    assert_int_equal(qks_open(key, 32, kid, long_sid + 1, QKS_A2B, &w, out, n, pt, 7, &pl, NULL),
                     QKS_ERR_INPUT);
    assert_int_equal(w.any, 0);
    assert_int_equal(qks_open(key, 32, kid, long_sid + 1, QKS_A2B, &w, out, n, pt, 8, &pl, NULL),
                     QKS_OK);
    assert_int_equal(qks_direction_of("A", "B"), QKS_A2B);
    assert_int_equal(qks_direction_of("B", "A"), QKS_B2A);
    assert_int_equal(qks_direction_of("A", "A"), QKS_ERR_INPUT);
    /* Byte order, not locale order: 'Z' (0x5A) sorts before 'a' (0x61). */
    assert_int_equal(qks_direction_of("Z-1", "a-1"), QKS_A2B);
    uint8_t u[16];
    assert_int_equal(qks_uuid_parse("6D1F0A52-3C1E-4B7A-9A44-0C2B1F3E5D77", u), QKS_OK);
    assert_int_equal(u[0], 0x6d);
    assert_int_equal(qks_uuid_parse("6d1f0a52-3c1e-4b7a-9a44-0c2b1f3e5d7", u), QKS_ERR_INPUT);
    assert_int_equal(qks_uuid_parse("6d1f0a52+3c1e-4b7a-9a44-0c2b1f3e5d77", u), QKS_ERR_INPUT);
    assert_int_equal(qks_uuid_parse("6d1f0a52-3c1e-4b7a-9a44-0c2b1f3e5dzz", u), QKS_ERR_INPUT);
}

/* The window at its edges, random orders: each seq accepted once, nothing
 * QKS_WINDOW or more behind the top. Checked against a plain model. */
static void test_window_model(void **state)
{
    uint8_t key[16], kid[16] = {9}, frame[64], pt[8];
    (void)state;
    assert_int_equal(RAND_bytes(key, sizeof(key)), 1);
    for (int round = 0; round < 20; round++) {
        qks_window w = {0};
        uint8_t seen[512] = {0};
        int top = -1;
        for (int k = 0; k < 400; k++) {
            uint16_t r;
            size_t fl, pl;
            assert_int_equal(RAND_bytes((uint8_t *)&r, sizeof(r)), 1);
            int seq = r % 512;
            assert_int_equal(qks_seal(key, 16, kid, "S", QKS_B2A, (uint64_t)seq, pt, 0, frame,
                                      sizeof(frame), &fl),
                             QKS_OK);
            int want_ok = top < 0 || seq > top || (top - seq < QKS_WINDOW && !seen[seq]);
            int rc = qks_open(key, 16, kid, "S", QKS_B2A, &w, frame, fl, pt, sizeof(pt), &pl, NULL);
            assert_int_equal(rc, want_ok ? QKS_OK : QKS_ERR_REPLAY);
            if (want_ok) {
                seen[seq] = 1;
                if (seq > top)
                    top = seq;
            }
        }
    }
}

/* The library's wrappers: a session key as qkd_response_key gives it. */
static void test_qkd_wrappers(void **state)
{
    qkd_session_key k;
    uint8_t frame[256], pt[64];
    size_t fl = 0, pl = 0;
    uint64_t seq = 0;
    qkd_seal_window w = {0};
    char err[256];
    (void)state;

    memset(&k, 0, sizeof(k));
    snprintf(k.session_id, sizeof(k.session_id), "trip-1");
    snprintf(k.key_id, sizeof(k.key_id), "6d1f0a52-3c1e-4b7a-9a44-0c2b1f3e5d77");
    k.key_bits = 256;
    k.key_len = 32;
    k.key = OPENSSL_secure_malloc(32);
    assert_non_null(k.key);
    assert_int_equal(RAND_bytes(k.key, 32), 1);

    assert_int_equal(qkd_seal(&k, "VIN-0001", "ENC-0002", 5, (const uint8_t *)"hello", 5, frame,
                              sizeof(frame), &fl, err, sizeof(err)),
                     QKD_OK);
    assert_int_equal(fl, 5 + QKS_OVERHEAD);
    /* The peer opens what VIN-0001 sent it. */
    assert_int_equal(qkd_open(&k, "ENC-0002", "VIN-0001", &w, frame, fl, pt, sizeof(pt), &pl,
                              &seq, err, sizeof(err)),
                     QKD_OK);
    assert_int_equal(pl, 5);
    assert_memory_equal(pt, "hello", 5);
    assert_true(seq == 5);
    /* Again: a replay. */
    assert_int_equal(qkd_open(&k, "ENC-0002", "VIN-0001", &w, frame, fl, pt, sizeof(pt), &pl,
                              &seq, err, sizeof(err)),
                     QKD_ERR_INPUT);
    assert_non_null(strstr(err, "replay"));
    /* The sender itself cannot open its own frame as received. */
    assert_int_equal(qkd_open(&k, "VIN-0001", "ENC-0002", NULL, frame, fl, pt, sizeof(pt), &pl,
                              &seq, err, sizeof(err)),
                     QKD_ERR_INPUT);
    assert_non_null(strstr(err, "direction"));
    /* The platform's half of the sequence space is not a party's. */
    assert_int_equal(qkd_seal(&k, "VIN-0001", "ENC-0002", QKS_PARTY_MAX_SEQ + 1, pt, 1, frame,
                              sizeof(frame), &fl, err, sizeof(err)),
                     QKD_ERR_INPUT);
    assert_non_null(strstr(err, "platform"));
    assert_int_equal(qkd_seal(&k, "VIN-0001", "ENC-0002", QKS_PARTY_MAX_SEQ, pt, 1, frame,
                              sizeof(frame), &fl, err, sizeof(err)),
                     QKD_OK);
    /* A key that is not a UUID, or no key. */
    snprintf(k.key_id, sizeof(k.key_id), "not-a-uuid");
    assert_int_equal(qkd_seal(&k, "VIN-0001", "ENC-0002", 6, pt, 1, frame, sizeof(frame), &fl,
                              err, sizeof(err)),
                     QKD_ERR_INPUT);
    qkd_session_key_clear(&k);
    assert_int_equal(qkd_seal(&k, "VIN-0001", "ENC-0002", 6, pt, 1, frame, sizeof(frame), &fl,
                              err, sizeof(err)),
                     QKD_ERR_INPUT);
}

/* Data under a device key: the device seals to the platform, the platform
 * (qks_device_data_key + qks_open, as kmsd) opens; back the other way; the
 * device cannot open its own frame; the key ID names the key. */
static void test_device_data(void **state)
{
    static const char fill[] =
        "{\"format\":\"qkms-fill/1\",\"device_id\":\"METER-1\",\"keys\":["
        "{\"index\":0,\"algorithm\":\"AES-128\",\"key\":\"000102030405060708090a0b0c0d0e0f\"},"
        "{\"index\":2,\"algorithm\":\"AES-256\",\"key\":"
        "\"202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f\"}]}";
    qkd_device *d = NULL;
    uint8_t frame[256], pt[256], fk[32], kid[16];
    size_t fl = 0, pl = 0;
    uint64_t seq = 0;
    int idx = -1;
    char err[160];
    qks_header h;
    (void)state;

    assert_int_equal(qkd_device_load(&d, fill, strlen(fill), err, sizeof(err)), QKD_OK);
    assert_int_equal(qkd_device_seal(d, -1, 1000, 5, (const uint8_t *)"m3=12", 5, frame,
                                     sizeof(frame), &fl, err, sizeof(err)),
                     QKD_OK);
    /* The platform's side: key 2 (the newest), device ID as the session ID,
     * the device's direction to @platform. */
    assert_int_equal(qks_peek(frame, fl, &h), QKS_OK);
    assert_int_equal(qks_device_data_key(d->keys[1].key, 32, "METER-1", fk, kid), QKS_OK);
    assert_memory_equal(h.key_id, kid, 16);
    assert_int_equal(qks_open(fk, 32, kid, "METER-1", qks_direction_of("METER-1", "@platform"),
                              NULL, frame, fl, pt, sizeof(pt), &pl, &seq),
                     QKS_OK);
    assert_int_equal(pl, 5);
    assert_memory_equal(pt, "m3=12", 5);
    /* The device does not open its own frame as one from the platform. */
    assert_int_equal(qkd_device_open(d, NULL, frame, fl, pt, sizeof(pt), &pl, &seq, &idx, err,
                                     sizeof(err)),
                     QKD_ERR_INPUT);
    assert_non_null(strstr(err, "direction"));
    /* The platform's frame under key 0 opens on the device, naming key 0. */
    assert_int_equal(qks_device_data_key(d->keys[0].key, 16, "METER-1", fk, kid), QKS_OK);
    assert_int_equal(qks_seal(fk, 32, kid, "METER-1", qks_direction_of("@platform", "METER-1"),
                              UINT64_C(1) << 63, (const uint8_t *)"close", 5, frame,
                              sizeof(frame), &fl),
                     QKS_OK);
    assert_int_equal(qkd_device_open(d, NULL, frame, fl, pt, sizeof(pt), &pl, &seq, &idx, err,
                                     sizeof(err)),
                     QKD_OK);
    assert_int_equal(idx, 0);
    assert_true(seq == (UINT64_C(1) << 63) && pl == 5 && !memcmp(pt, "close", 5));
    /* A key ID of no key of the device; the platform's half of seqs; no key. */
    frame[4] ^= 1;
    assert_int_equal(qkd_device_open(d, NULL, frame, fl, pt, sizeof(pt), &pl, &seq, &idx, err,
                                     sizeof(err)),
                     QKD_ERR_INPUT);
    assert_non_null(strstr(err, "key"));
    assert_int_equal(qkd_device_seal(d, 0, 1000, UINT64_C(1) << 63, pt, 1, frame, sizeof(frame),
                                     &fl, err, sizeof(err)),
                     QKD_ERR_INPUT);
    assert_int_equal(qkd_device_seal(d, 7, 1000, 1, pt, 1, frame, sizeof(frame), &fl, err,
                                     sizeof(err)),
                     QKD_ERR_INPUT);
    qkd_device_free(d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_seal_vectors),   cmocka_unit_test(test_reject_vectors),
        cmocka_unit_test(test_window_vectors), cmocka_unit_test(test_arguments),
        cmocka_unit_test(test_window_model),   cmocka_unit_test(test_qkd_wrappers),
        cmocka_unit_test(test_device_data),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
