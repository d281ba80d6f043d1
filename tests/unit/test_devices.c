/* Unit tests: device registration rules, array literals, fill packages, KCV. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/pem.h>

#include "service/device_attrs.h"
#include "service/device_model.h"
#include "service/device_keys.h"
#include "fillpkg.h"
#include "store/pgarray.h"

static const device_defaults defs = {4, 365};

static int spec(const char *js, device_spec *s, const char **code)
{
    char msg[200];
    json_error_t je;
    json_t *o = json_loads(js, 0, &je);
    int rc;
    assert_non_null(o);
    *code = NULL;
    rc = device_spec_from_json(o, &defs, s, code, msg, sizeof(msg));
    json_decref(o);
    return rc;
}

static void ids_and_groups(void **state)
{
    (void)state;
    assert_true(device_id_valid("VIN-1HGCM82633A004352"));
    assert_true(device_id_valid("meter:42@site.7"));
    assert_false(device_id_valid(""));
    assert_false(device_id_valid("a b"));
    assert_false(device_id_valid("a/b"));
    assert_false(device_id_valid("a%2Fb"));
    assert_false(device_id_valid("a?b"));
    assert_false(device_id_valid("a#b"));
    assert_false(device_id_valid("a\\b"));
    assert_false(device_id_valid("tab\there"));
    assert_false(device_id_valid("caf\xc3\xa9"));
    char longid[130];
    memset(longid, 'x', 129);
    longid[129] = 0;
    assert_false(device_id_valid(longid));
    longid[128] = 0;
    assert_true(device_id_valid(longid));
    assert_true(device_group_valid("fleet-a"));
    assert_false(device_group_valid("-fleet"));
    assert_true(device_type_name_valid("vehicle"));
    assert_false(device_type_name_valid("Vehicle"));
    assert_false(device_type_name_valid("1abc"));
    assert_true(device_state_valid("suspended"));
    assert_false(device_state_valid("deleted"));
}

static void key_purposes(void **state)
{
    const char *out[4] = {0};
    (void)state;
    assert_true(device_key_purpose_valid("access"));
    assert_true(device_key_purpose_valid("local"));
    assert_true(device_key_purpose_valid("generic"));
    assert_false(device_key_purpose_valid("Local"));
    assert_false(device_key_purpose_valid(""));
    assert_false(device_key_purpose_valid(NULL));
    assert_int_equal(device_template_parse("{access,local}", out, 4), 2);
    assert_string_equal(out[0], "access");
    assert_string_equal(out[1], "local");
    assert_int_equal(device_template_parse("{}", out, 4), 0);
    assert_int_equal(device_template_parse("", out, 4), 0);
    assert_int_equal(device_template_parse(NULL, out, 4), 0);
    /* At most max; an unknown word keeps its place, as generic. */
    assert_int_equal(device_template_parse("{local,wan,access,generic}", out, 3), 3);
    assert_string_equal(out[0], "local");
    assert_string_equal(out[1], "generic");
    assert_string_equal(out[2], "access");
    assert_int_equal(device_template_parse("{access", out, 4), 1);
}

static json_t *attrs(const char *js, char *msg)
{
    json_t *o = json_loads(js, 0, NULL), *n;
    assert_non_null(o);
    n = device_attrs_check(o, msg, 200);
    json_decref(o);
    return n;
}

static void attributes(void **state)
{
    char msg[200], name[DEVICE_ATTR_NAME_MAX + 1], *text;
    json_t *n, *v;
    (void)state;
    n = attrs("{\"mac\":\"02-1A-2B-3C-4D-5E\",\"sn\":\"SN-001\",\"uuid\":"
              "\"5F0C2B3A-1D2E-4F60-8A9B-0C1D2E3F4A5B\",\"ip\":\"2001:DB8:0:0::1\","
              "\"port\":8443,\"joined\":true,\"room\":\"kitchen\",\"floor\":2}", msg);
    assert_non_null(n);
    text = json_dumps(n, JSON_COMPACT | JSON_SORT_KEYS);
    assert_string_equal(text, "{\"floor\":2,\"ip\":\"2001:db8::1\",\"joined\":true,"
                              "\"mac\":\"02:1a:2b:3c:4d:5e\",\"port\":8443,\"room\":\"kitchen\","
                              "\"sn\":\"SN-001\",\"uuid\":\"5f0c2b3a-1d2e-4f60-8a9b-0c1d2e3f4a5b\"}");
    free(text);
    json_decref(n);
    n = attrs("{\"mac\":\"021a2b3c4d5e\",\"ip\":\"10.0.0.7\"}", msg);
    assert_string_equal(json_string_value(json_object_get(n, "mac")), "02:1a:2b:3c:4d:5e");
    json_decref(n);
    const char *bad[] = {"[]", "{\"mac\":\"02:1a:2b:3c:4d\"}", "{\"mac\":\"02:1a-2b:3c:4d:5e\"}",
                         "{\"mac\":\"zz:1a:2b:3c:4d:5e\"}", "{\"mac\":5}", "{\"sn\":\"a b\"}",
                         "{\"sn\":\"\"}", "{\"uuid\":\"nope\"}", "{\"ip\":\"10.0.0.256\"}",
                         "{\"port\":0}", "{\"port\":65536}", "{\"port\":\"80\"}",
                         "{\"joined\":1}", "{\"Bad\":1}", "{\"x\":[1]}", "{\"x\":{}}",
                         "{\"x\":null}", NULL};
    for (int i = 0; bad[i]; i++) {
        msg[0] = 0;
        assert_null(attrs(bad[i], msg));
        assert_true(msg[0] != 0);
    }
    /* Search terms take the attribute's type from its name. */
    assert_int_equal(device_attr_term("mac=02-1A-2B-3C-4D-5E", name, &v, msg, sizeof(msg)), 0);
    assert_string_equal(name, "mac");
    assert_string_equal(json_string_value(v), "02:1a:2b:3c:4d:5e");
    json_decref(v);
    assert_int_equal(device_attr_term("port=8443", name, &v, msg, sizeof(msg)), 0);
    assert_int_equal(json_integer_value(v), 8443);
    json_decref(v);
    assert_int_equal(device_attr_term("joined=false", name, &v, msg, sizeof(msg)), 0);
    assert_true(json_is_false(v));
    json_decref(v);
    assert_int_equal(device_attr_term("room=a=b", name, &v, msg, sizeof(msg)), 0);
    assert_string_equal(json_string_value(v), "a=b");
    json_decref(v);
    assert_int_equal(device_attr_term("port=x", name, &v, msg, sizeof(msg)), -1);
    assert_int_equal(device_attr_term("=x", name, &v, msg, sizeof(msg)), -1);
    assert_int_equal(device_attr_term("mac", name, &v, msg, sizeof(msg)), -1);
}

static void specs(void **state)
{
    device_spec s;
    const char *code;
    (void)state;
    assert_int_equal(spec("{\"device_id\":\"V1\",\"type\":\"vehicle\"}", &s, &code), 0);
    assert_string_equal(s.group, "default");
    assert_int_equal(s.nkeys, 4);
    assert_int_equal(s.key_bits, 128);
    assert_int_equal(s.validity_days, 365);
    assert_string_equal(s.parent, "");
    assert_int_equal(spec("{\"device_id\":\"S1\",\"type\":\"subdevice\",\"parent\":\"G1\",\"keys\":2,"
                          "\"key_bits\":256,\"validity_days\":30,\"group\":\"g\",\"line\":7}", &s, &code), 0);
    assert_string_equal(s.parent, "G1");
    assert_int_equal(s.key_bits, 256);
    assert_int_equal(s.line, 7);
    assert_int_equal(spec("{\"device_id\":\"S1\",\"type\":\"subdevice\"}", &s, &code), -1);
    assert_string_equal(code, "invalid_parent");
    assert_int_equal(spec("{\"device_id\":\"S1\",\"type\":\"subdevice\",\"parent\":\"S1\"}", &s, &code), -1);
    assert_string_equal(code, "invalid_parent");
    assert_int_equal(spec("{\"device_id\":\"V1\",\"type\":\"vehicle\",\"key_bits\":192}", &s, &code), -1);
    assert_string_equal(code, "invalid_key_bits");
    assert_int_equal(spec("{\"device_id\":\"V1\",\"type\":\"vehicle\",\"keys\":true}", &s, &code), -1);
    assert_string_equal(code, "invalid_keys");
    assert_int_equal(spec("{\"device_id\":\"V1\",\"type\":\"vehicle\",\"x\":1}", &s, &code), -1);
    assert_string_equal(code, "invalid_request");
    assert_int_equal(spec("{\"type\":\"vehicle\"}", &s, &code), -1);
    assert_string_equal(code, "invalid_device_id");
    assert_int_equal(spec("[1]", &s, &code), -1);
    assert_string_equal(code, "invalid_request");
}

static void key_context_binds_row(void **state)
{
    char a[256], b[256];
    (void)state;
    assert_true(device_key_context("V1", 0, "AES-128", a, sizeof(a)) > 0);
    assert_true(device_key_context("V1", 1, "AES-128", b, sizeof(b)) > 0);
    assert_string_not_equal(a, b);
    assert_string_equal(a, "qkms/device-key/v1\nV1\n0\nAES-128");
    /* The algorithm is bound too: an SM4 key's blob does not open as AES. */
    assert_true(device_key_context("V1", 0, "SM4-128", b, sizeof(b)) > 0);
    assert_string_equal(b, "qkms/device-key/v1\nV1\n0\nSM4-128");
    assert_int_equal(device_key_context("V1", 0, "AES-128", a, 8), -1);
}

static void array_literals(void **state)
{
    pgarray a;
    (void)state;
    pgarray_init(&a);
    assert_string_equal(pgarray_finish(&a), "{}");
    pgarray_free(&a);
    pgarray_init(&a);
    pgarray_add(&a, "plain");
    pgarray_add(&a, "with \"quote\" and \\ backslash");
    pgarray_add(&a, NULL);
    pgarray_add(&a, "a,b{c}");
    pgarray_add_int(&a, -42);
    assert_string_equal(pgarray_finish(&a),
                        "{\"plain\",\"with \\\"quote\\\" and \\\\ backslash\",NULL,\"a,b{c}\",\"-42\"}");
    pgarray_free(&a);
}

static void kcv_vector(void **state)
{
    /* Known answer: the NIST SP 800-38B example key, CMAC over one zero
     * block, computed independently with Python's cryptography package. */
    static const uint8_t key[16] = {0x2b, 0x7e, 0x15, 0x16, 0x28, 0xae, 0xd2, 0xa6,
                                    0xab, 0xf7, 0x15, 0x88, 0x09, 0xcf, 0x4f, 0x3c};
    char kcv[11], kcv2[11];
    (void)kcv2;
    (void)state;
    assert_int_equal(device_key_kcv("AES-128", key, 16, kcv), 0);
    assert_string_equal(kcv, "7ad386c376");
    assert_int_equal(device_key_kcv("AES-128", key, 15, kcv2), -1);
    /* SM4-CMAC, the same way (Python's cryptography, algorithms.SM4). */
    assert_int_equal(device_key_kcv("SM4-128", key, 16, kcv), 0);
    assert_string_equal(kcv, "704ee20d7b");
    assert_int_equal(device_key_kcv("SM4-128", key, 32, kcv2), -1);
    assert_int_equal(device_key_kcv("DES", key, 16, kcv2), -1);
}

static void roundtrip(const char *alg)
{
    EVP_PKEY *priv = !strcmp(alg, "X25519") ? EVP_PKEY_Q_keygen(NULL, NULL, "X25519")
                                            : EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    BIO *b = BIO_new(BIO_s_mem());
    char *pem, err[128];
    long pl;
    EVP_PKEY *pub;
    const char msg[] = "{\"format\":\"qkms-fill/1\"}";
    uint8_t *pkg, *pt;
    size_t pkg_len, pt_len;

    assert_non_null(priv);
    PEM_write_bio_PUBKEY(b, priv);
    pl = BIO_get_mem_data(b, &pem);
    pub = fillpkg_parse_recipient(pem, (size_t)pl, err, sizeof(err));
    assert_non_null(pub);
    assert_int_equal(fillpkg_seal(pub, (const uint8_t *)msg, strlen(msg), &pkg, &pkg_len, err, sizeof(err)), 0);
    assert_memory_equal(pkg, "QKFP\x01", 5);
    assert_int_equal(fillpkg_open(priv, pkg, pkg_len, &pt, &pt_len, err, sizeof(err)), 0);
    assert_int_equal(pt_len, strlen(msg));
    assert_memory_equal(pt, msg, pt_len);
    OPENSSL_secure_clear_free(pt, pt_len);
    /* Every single-bit flip anywhere is detected. */
    for (size_t i = 0; i < pkg_len; i += 7) {
        pkg[i] ^= 0x01;
        assert_int_equal(fillpkg_open(priv, pkg, pkg_len, &pt, &pt_len, err, sizeof(err)), -1);
        pkg[i] ^= 0x01;
    }
    assert_int_equal(fillpkg_open(priv, pkg, pkg_len - 1, &pt, &pt_len, err, sizeof(err)), -1);
    free(pkg);
    EVP_PKEY_free(pub);
    EVP_PKEY_free(priv);
    BIO_free(b);
}

static void fill_packages(void **state)
{
    char err[128];
    (void)state;
    roundtrip("X25519");
    roundtrip("P-256");
    assert_null(fillpkg_parse_recipient("garbage", 7, err, sizeof(err)));
    EVP_PKEY *rsa = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)1024);
    BIO *b = BIO_new(BIO_s_mem());
    char *pem;
    long pl;
    PEM_write_bio_PUBKEY(b, rsa);
    pl = BIO_get_mem_data(b, &pem);
    assert_null(fillpkg_parse_recipient(pem, (size_t)pl, err, sizeof(err)));
    assert_non_null(strstr(err, "X25519 or P-256"));
    BIO_free(b);
    EVP_PKEY_free(rsa);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(ids_and_groups), cmocka_unit_test(specs), cmocka_unit_test(key_purposes), cmocka_unit_test(attributes),
        cmocka_unit_test(key_context_binds_row), cmocka_unit_test(array_literals),
        cmocka_unit_test(kcv_vector), cmocka_unit_test(fill_packages),
    };
    return cmocka_run_group_tests_name("devices", tests, NULL, NULL);
}
