/* Unit tests: which connections may carry key material in clear
 * (kmsd/transport.c; plaintext export answers 403 insecure_transport on the
 * others: tests/integration/test_transport.py checks that end to end). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "api/transport.h"

static void loopback_addresses(void **state)
{
    (void)state;
    const char *yes[] = {"127.0.0.1", "127.255.255.254", "127.0.0.2", "::1",
                         "::ffff:127.0.0.1", "0:0:0:0:0:0:0:1"};
    for (size_t i = 0; i < sizeof(yes) / sizeof(yes[0]); i++) {
        assert_true(transport_is_loopback(yes[i]));
        assert_true(transport_confidential(false, yes[i]));
    }
}

static void other_addresses_need_tls(void **state)
{
    (void)state;
    const char *no[] = {"10.213.0.1", "128.0.0.1", "126.255.255.255", "0.0.0.0", "192.168.1.7",
                        "::", "::2", "fe80::1", "::ffff:10.0.0.1", "::127.0.0.1", "2001:db8::1",
                        "?", "", "127.0.0.1 ", "localhost", "127.1"};
    for (size_t i = 0; i < sizeof(no) / sizeof(no[0]); i++) {
        assert_false(transport_is_loopback(no[i]));
        assert_false(transport_confidential(false, no[i]));
        assert_true(transport_confidential(true, no[i]));
    }
    assert_false(transport_is_loopback(NULL));
    assert_false(transport_confidential(false, NULL));
    assert_true(transport_confidential(true, NULL));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(loopback_addresses),
        cmocka_unit_test(other_addresses_need_tls),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
