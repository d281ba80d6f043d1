/* Unit test: the device library as kmsd, qkms-device and an installation get
 * it (built without QKMS_TESTING; device/device.mk links this test against
 * that build, not the testing one the other unit tests use) refuses a
 * caller-supplied request nonce, and builds requests with random ones. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "qkms_device.h"
#include "qkms_device2.h"

static const char FILL[] =
    "{\"format\":\"qkms-fill/1\",\"device_id\":\"VIN-0001\",\"keys\":[{\"index\":0,"
    "\"algorithm\":\"AES-128\",\"key\":\"00112233445566778899aabbccddeeff\","
    "\"not_before\":\"2026-11-23T08:00:00Z\",\"not_after\":\"2127-11-23T08:00:00Z\"}]}";
static const uint8_t N0[12] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11};

static void fixed_nonce_refused(void **state)
{
    qkd_device *d = NULL;
    qkd_request r;
    char err[256] = "";
    (void)state;

#ifdef QKMS_TESTING
    fail_msg("this test must be built without QKMS_TESTING");
#endif
    assert_int_equal(qkd_device_load(&d, FILL, strlen(FILL), err, sizeof(err)), QKD_OK);
    assert_int_equal(qkd_request_key(&r, d, 0, "S-1", "ENC-1", false, 1795430000, N0, err, sizeof(err)),
                     QKD_ERR_INPUT);
    assert_non_null(strstr(err, "test builds"));
    assert_int_equal(r.body_len, 0);
    assert_int_equal(qkd_request_end(&r, d, 0, "S-1", 1795430000, N0, err, sizeof(err)),
                     QKD_ERR_INPUT);
    assert_int_equal(r.body_len, 0);
    qkd_request_clear(&r);
    qkd_device_free(d);
}

/* Protocol v2: fixed nonces, ephemerals and client randoms alike, before
 * anything else is looked at. */
static void v2_fixed_randoms_refused(void **state)
{
    qkd_device *d = NULL;
    qkd2_identity *id = NULL;
    qkd2_request r;
    static const uint8_t E[32] = {1}, CR[32] = {2};
    const qkd2_fixed fixes[] = {{N0, NULL, NULL}, {NULL, E, NULL}, {NULL, NULL, CR}};
    char err[256] = "";
    (void)state;

    assert_int_equal(qkd_device_load(&d, FILL, strlen(FILL), err, sizeof(err)), QKD_OK);
    assert_int_equal(qkd2_identity_keys(&id, d, 0, err, sizeof(err)), QKD_OK);
    for (size_t i = 0; i < sizeof(fixes) / sizeof(fixes[0]); i++) {
        err[0] = 0;
        assert_int_equal(qkd2_request_key(&r, id, NULL, "S-1", "ENC-1", 'a', false, 1, &fixes[i],
                                          err, sizeof(err)),
                         QKD_ERR_INPUT);
        assert_non_null(strstr(err, "test builds"));
        assert_int_equal(r.body_len, 0);
        assert_int_equal(qkd2_request_end(&r, id, NULL, "S-1", 1, &fixes[i], err, sizeof(err)),
                         QKD_ERR_INPUT);
    }
    qkd2_request_clear(&r);
    qkd2_identity_free(id);
    qkd_device_free(d);
}

static void random_nonces_differ(void **state)
{
    qkd_device *d = NULL;
    qkd_request a, b;
    char err[256] = "";
    (void)state;

    assert_int_equal(qkd_device_load(&d, FILL, strlen(FILL), err, sizeof(err)), QKD_OK);
    assert_int_equal(qkd_request_key(&a, d, 0, "S-1", "ENC-1", false, 1, NULL, err, sizeof(err)), QKD_OK);
    assert_int_equal(qkd_request_key(&b, d, 0, "S-1", "ENC-1", false, 1, NULL, err, sizeof(err)), QKD_OK);
    assert_memory_not_equal(a.nonce, b.nonce, sizeof(a.nonce));
    assert_true(a.body_len > 0 && b.body_len > 0);
    qkd_request_clear(&a);
    qkd_request_clear(&b);
    qkd_device_free(d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(fixed_nonce_refused),
        cmocka_unit_test(random_nonces_differ),
        cmocka_unit_test(v2_fixed_randoms_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
