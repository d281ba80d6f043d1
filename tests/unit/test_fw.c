/*
 * Unit tests: firmware packages on the device (device/qkms_fw.h,
 * docs/firmware.md) against tests/vectors/firmware-v1.json (written by
 * tests/vectors/make_vectors_fw.py with the Python implementation; run from
 * the repository root, as `make unit` does): each case opened whole and as
 * a stream in several slicings, with the expected image or the expected
 * refusal's name; a flipped bit anywhere in a package never opens and never
 * gives an image byte before the manifest's checks.
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

#include "qkms_fw.h"

#define VECTORS "tests/vectors/firmware-v1.json"

static json_t *doc;
static qkd_device *dev;
static qkd_firmware_group_key groups[4];
static size_t ngroups;
static uint8_t *certs[2];
static size_t cert_lens[2];

static uint8_t *unhex(const char *s, size_t *len)
{
    size_t n = strlen(s);
    uint8_t *out = malloc(n / 2 + 1);
    if (!out || n % 2)
        fail_msg("bad hex in vectors");
    for (size_t i = 0; i < n / 2; i++) {
        unsigned v;
        if (sscanf(s + 2 * i, "%2x", &v) != 1)
            fail_msg("bad hex in vectors");
        out[i] = (uint8_t)v;
    }
    *len = n / 2;
    return out;
}

static const char *str(const json_t *o, const char *k)
{
    const char *s = json_string_value(json_object_get(o, k));
    if (!s)
        fail_msg("vector field %s missing", k);
    return s;
}

static int setup(void **state)
{
    json_error_t je;
    char err[256], *fill;
    size_t i, n;
    json_t *g;
    (void)state;
    if (!(doc = json_load_file(VECTORS, 0, &je)))
        fail_msg("%s: %s", VECTORS, je.text);
    fill = json_dumps(json_object_get(doc, "device"), JSON_COMPACT);
    if (!fill || qkd_device_load(&dev, fill, strlen(fill), err, sizeof(err)) != QKD_OK)
        fail_msg("device: %s", err);
    free(fill);
    json_array_foreach(json_object_get(doc, "groups"), i, g) {
        uint8_t *b;
        if (i >= 4)
            fail_msg("too many groups");
        snprintf(groups[i].group, sizeof(groups[i].group), "%s", str(g, "group"));
        b = unhex(str(g, "key_id"), &n);
        memcpy(groups[i].key_id, b, 16);
        free(b);
        b = unhex(str(g, "key"), &n);
        memcpy(groups[i].key, b, 32);
        free(b);
        ngroups = i + 1;
    }
    certs[0] = unhex(str(json_object_get(doc, "signer"), "cert"), &cert_lens[0]);
    certs[1] = unhex(str(json_object_get(doc, "other_signer"), "cert"), &cert_lens[1]);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    qkd_device_free(dev);
    free(certs[0]);
    free(certs[1]);
    json_decref(doc);
    return 0;
}

/* The policy of a case; the arrays live in *gs and *cs. */
static void policy_of(const json_t *c, qkd_firmware_policy *p, qkd_firmware_group_key *gs,
                      const uint8_t **cs, size_t *cls)
{
    const json_t *pj = json_object_get(c, "policy"), *x;
    size_t i;
    memset(p, 0, sizeof(*p));
    p->product = str(pj, "product");
    p->counter = (uint64_t)json_integer_value(json_object_get(pj, "counter"));
    p->now = json_integer_value(json_object_get(pj, "now"));
    p->device = json_is_true(json_object_get(pj, "device")) ? dev : NULL;
    json_array_foreach(json_object_get(pj, "groups"), i, x) {
        gs[i] = groups[json_integer_value(x)];
        p->ngroups = i + 1;
    }
    p->groups = gs;
    json_array_foreach(json_object_get(pj, "certs"), i, x) {
        int k = !strcmp(json_string_value(x), "signer") ? 0 : 1;
        cs[i] = certs[k];
        cls[i] = cert_lens[k];
        p->ncerts = i + 1;
    }
    p->certs = cs;
    p->cert_lens = cls;
}

struct sink {
    uint8_t *buf;
    size_t len, cap;
};

static int sink(void *arg, const uint8_t *d, size_t n)
{
    struct sink *s = arg;
    if (n > s->cap - s->len)
        return -1;
    memcpy(s->buf + s->len, d, n);
    s->len += n;
    return 0;
}

/* Opens pkg as a stream in slices of `step` bytes: 0 ok, else the error
 * name copied into name. */
static int stream_open(const uint8_t *pkg, size_t len, const qkd_firmware_policy *p, size_t step,
                       struct sink *out, qkd_firmware_manifest *m, char *err, size_t errlen)
{
    qkd_firmware_stream *s;
    int rc;
    assert_int_equal(qkd_firmware_stream_new(&s, p, sink, out, err, errlen), QKD_OK);
    rc = QKD_OK;
    for (size_t off = 0; off < len && rc == QKD_OK; off += step)
        rc = qkd_firmware_stream_update(s, pkg + off, off + step <= len ? step : len - off, err,
                                        errlen);
    if (rc == QKD_OK)
        rc = qkd_firmware_stream_final(s, m, err, errlen);
    qkd_firmware_stream_free(s);
    return rc;
}

static void check_outcome(const char *name, const json_t *expect, int rc, const char *err,
                          const uint8_t *img, size_t img_len, const qkd_firmware_manifest *m)
{
    const char *want = json_string_value(json_object_get(expect, "error"));
    if (want) {
        size_t wl = strlen(want);
        if (rc != QKD_ERR_INPUT || strncmp(err, want, wl) != 0 || err[wl] != ':')
            fail_msg("%s: expected %s, got rc %d: %s", name, want, rc, err);
        return;
    }
    if (rc != QKD_OK)
        fail_msg("%s: expected to open, got %s", name, err);
    {
        size_t el;
        uint8_t *exp = unhex(str(expect, "image"), &el);
        assert_int_equal(img_len, el);
        assert_memory_equal(img, exp, el ? el : 0);
        free(exp);
    }
    assert_int_equal(m->counter, json_integer_value(json_object_get(expect, "counter")));
    assert_string_equal(m->version, str(expect, "version"));
    assert_int_equal(m->kind, json_integer_value(json_object_get(expect, "kind")));
}

static void test_vectors(void **state)
{
    json_t *c;
    size_t i;
    (void)state;
    assert_true(json_array_size(json_object_get(doc, "cases")) >= 30);
    json_array_foreach(json_object_get(doc, "cases"), i, c) {
        const char *name = str(c, "name");
        qkd_firmware_group_key gs[4];
        const uint8_t *cs[2];
        size_t cls[2], len, img_len = 0;
        uint8_t *pkg = unhex(str(c, "package"), &len), *img = NULL;
        qkd_firmware_policy p;
        qkd_firmware_manifest m;
        char err[256] = "";
        int rc;

        policy_of(c, &p, gs, cs, cls);
        rc = qkd_firmware_open(pkg, len, &p, &img, &img_len, &m, err, sizeof(err));
        check_outcome(name, json_object_get(c, "expect"), rc, err, img, img_len, &m);
        if (rc != QKD_OK)
            assert_null(img);
        free(img);
        /* The same outcome in any slicing. */
        static const size_t steps[] = {1, 7, 80, 1040, 65552};
        for (size_t k = 0; k < sizeof(steps) / sizeof(steps[0]); k++) {
            struct sink out = {NULL, 0, len};
            if (steps[k] == 1 && len > 20000)
                continue; /* the large case byte by byte adds nothing */
            out.buf = malloc(len + 1);
            rc = stream_open(pkg, len, &p, steps[k], &out, &m, err, sizeof(err));
            check_outcome(name,
                          json_object_get(c, json_object_get(c, "expect_stream") ? "expect_stream"
                                                                                  : "expect"),
                          rc, err, out.buf, out.len, &m);
            free(out.buf);
        }
        free(pkg);
    }
}

/* No image byte before the manifest passed: a refused signature gives the
 * sink nothing. */
static int sink_forbidden(void *arg, const uint8_t *d, size_t n)
{
    (void)arg;
    (void)d;
    (void)n;
    fail_msg("image bytes before the manifest's checks");
    return -1;
}

static void test_flipped_bits_never_open(void **state)
{
    const json_t *c = json_array_get(json_object_get(doc, "cases"), 0);
    qkd_firmware_group_key gs[4];
    const uint8_t *cs[2];
    size_t cls[2], len;
    uint8_t *pkg = unhex(str(c, "package"), &len);
    qkd_firmware_policy p;
    qkd_firmware_manifest m;
    char err[256];
    (void)state;

    policy_of(c, &p, gs, cs, cls);
    for (size_t i = 0; i < len; i++) {
        uint8_t *img = NULL;
        size_t il = 0;
        pkg[i] ^= 0x20;
        assert_int_equal(qkd_firmware_open(pkg, len, &p, &img, &il, &m, err, sizeof(err)),
                         QKD_ERR_INPUT);
        assert_null(img);
        pkg[i] ^= 0x20;
    }
    /* With another product, the manifest is refused before any image byte. */
    p.product = "meter-g5";
    {
        qkd_firmware_stream *s;
        assert_int_equal(qkd_firmware_stream_new(&s, &p, sink_forbidden, NULL, err, sizeof(err)),
                         QKD_OK);
        assert_int_equal(qkd_firmware_stream_update(s, pkg, len, err, sizeof(err)), QKD_ERR_INPUT);
        assert_non_null(strstr(err, "product"));
        /* A failed stream stays failed. */
        assert_int_equal(qkd_firmware_stream_final(s, &m, err, sizeof(err)), QKD_ERR_INPUT);
        qkd_firmware_stream_free(s);
    }
    free(pkg);
}

static void test_arguments(void **state)
{
    qkd_firmware_stream *s;
    qkd_firmware_policy p = {0};
    char err[128];
    (void)state;
    assert_int_equal(qkd_firmware_stream_new(&s, NULL, NULL, NULL, err, sizeof(err)),
                     QKD_ERR_INPUT);
    assert_int_equal(qkd_firmware_stream_new(&s, &p, NULL, NULL, err, sizeof(err)),
                     QKD_ERR_INPUT); /* no product */
    p.product = "x";
    assert_int_equal(qkd_firmware_stream_new(&s, &p, NULL, NULL, err, sizeof(err)), QKD_OK);
    assert_int_equal(qkd_firmware_stream_final(s, &(qkd_firmware_manifest){0}, err, sizeof(err)),
                     QKD_ERR_INPUT);
    assert_non_null(strstr(err, "format"));
    qkd_firmware_stream_free(s);
    qkd_firmware_stream_free(NULL);
}

/* The group key of a fill document, or the key alone; none; malformed. */
static void test_group_key_load(void **state)
{
    (void)state;
    static const char kid[] = "00112233445566778899aabbccddeeff";
    static const char key[] = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
    char fd[512], err[200];
    qkd_firmware_group_key g;
    int found = -1;

    snprintf(fd, sizeof(fd),
             "{\"format\":\"qkms-fill/1\",\"device_id\":\"M1\",\"group\":\"plant-7\","
             "\"keys\":[],\"firmware_group_key\":{\"group\":\"plant-7\",\"key_id\":\"%s\","
             "\"key\":\"%s\"}}",
             kid, key);
    assert_int_equal(qkd_firmware_group_key_load(fd, strlen(fd), &g, &found, err, sizeof(err)),
                     QKD_OK);
    assert_int_equal(found, 1);
    assert_string_equal(g.group, "plant-7");
    assert_int_equal(g.key_id[0], 0x00);
    assert_int_equal(g.key_id[15], 0xff);
    assert_int_equal(g.key[31], 0x1f);
    snprintf(fd, sizeof(fd), "{\"group\":\"g\",\"key_id\":\"%s\",\"key\":\"%s\"}", kid, key);
    assert_int_equal(qkd_firmware_group_key_load(fd, strlen(fd), &g, &found, err, sizeof(err)),
                     QKD_OK);
    assert_int_equal(found, 1);
    assert_string_equal(g.group, "g");
    /* a fill document without one */
    snprintf(fd, sizeof(fd), "{\"format\":\"qkms-fill/1\",\"device_id\":\"M1\",\"keys\":[]}");
    assert_int_equal(qkd_firmware_group_key_load(fd, strlen(fd), &g, &found, err, sizeof(err)),
                     QKD_OK);
    assert_int_equal(found, 0);
    /* malformed: short key, bad hex, missing group, not JSON; never found */
    {
        static const char *const bad[] = {
            "{\"group\":\"g\",\"key_id\":\"00112233445566778899aabbccddeeff\",\"key\":\"00\"}",
            "{\"group\":\"g\",\"key_id\":\"zz112233445566778899aabbccddeeff\",\"key\":"
            "\"000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f\"}",
            "{\"firmware_group_key\":{\"key_id\":\"00112233445566778899aabbccddeeff\"}}",
            "{\"firmware_group_key\":5}",
            "not json",
        };
        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
            assert_int_equal(qkd_firmware_group_key_load(bad[i], strlen(bad[i]), &g, &found, err,
                                                         sizeof(err)),
                             QKD_ERR_INPUT);
            assert_int_equal(found, 0);
            assert_null(strstr(err, "0102030405"));
        }
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_vectors),
        cmocka_unit_test(test_flipped_bits_never_open),
        cmocka_unit_test(test_arguments),
        cmocka_unit_test(test_group_key_load),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
