/* Unit tests: the bounded, wiping buffer (common/qbuf.c) and the error
 * currency's names (kmsd/err.c). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>
#include <openssl/crypto.h>

#include "err.h"
#include "qbuf.h"

static void put_and_read(void **state)
{
    qbuf *b = qbuf_new(1024, 0);
    (void)state;
    assert_non_null(b);
    assert_int_equal(qbuf_len(b), 0);
    assert_string_equal(qbuf_str(b), "");
    assert_int_equal(qbuf_put_str(b, "abc"), QBUF_OK);
    assert_int_equal(qbuf_put_u8(b, 'd'), QBUF_OK);
    assert_int_equal(qbuf_putf(b, "-%d-%s", 42, "x"), QBUF_OK);
    assert_string_equal(qbuf_str(b), "abcd-42-x");
    assert_int_equal(qbuf_len(b), 9);
    qbuf_truncate(b, 3);
    assert_string_equal(qbuf_str(b), "abc");
    qbuf_reset(b);
    assert_int_equal(qbuf_len(b), 0);
    assert_string_equal(qbuf_str(b), "");
    qbuf_free(b);
    qbuf_free(NULL);
}

/* The maximum is exact: the put that reaches it succeeds, the next byte is
 * refused and the contents stay as they were. */
static void maximum_is_enforced(void **state)
{
    qbuf *b = qbuf_new(100, 0);
    char big[101];
    (void)state;
    memset(big, 'a', sizeof(big));
    assert_int_equal(qbuf_put(b, big, 60), QBUF_OK);
    assert_int_equal(qbuf_put(b, big, 41), QBUF_E_LIMIT);
    assert_int_equal(qbuf_len(b), 60);
    assert_int_equal(qbuf_put(b, big, 40), QBUF_OK);
    assert_int_equal(qbuf_len(b), 100);
    assert_int_equal(qbuf_put_u8(b, 'z'), QBUF_E_LIMIT);
    assert_int_equal(qbuf_putf(b, "%s", "z"), QBUF_E_LIMIT);
    assert_int_equal(qbuf_len(b), 100);
    assert_int_equal(qbuf_str(b)[100], 0);
    qbuf_free(b);
    assert_null(qbuf_new(0, 0));
}

/* Growing (copy into a new block, wipe the old) keeps every byte written,
 * and an impossible growth leaves the buffer as it was. */
static void growth_keeps_bytes(void **state)
{
    qbuf *b = qbuf_new(1 << 20, 0);
    uint8_t *dst;
    (void)state;
    for (int i = 0; i < 10000; i++)
        assert_int_equal(qbuf_put_u8(b, (uint8_t)(i % 251)), QBUF_OK);
    for (int i = 0; i < 10000; i++)
        assert_int_equal(qbuf_ptr(b)[i], (uint8_t)(i % 251));
    assert_int_equal(qbuf_reserve(b, (size_t)-1, &dst), QBUF_E_LIMIT);
    assert_int_equal(qbuf_len(b), 10000);
    assert_int_equal(qbuf_ptr(b)[9999], (uint8_t)(9999 % 251));
    qbuf_free(b);
}

/* Long formatted text takes the second vsnprintf path. */
static void long_format(void **state)
{
    qbuf *b = qbuf_new(1 << 20, 0);
    char s[5000];
    (void)state;
    memset(s, 'q', sizeof(s) - 1);
    s[sizeof(s) - 1] = 0;
    assert_int_equal(qbuf_putf(b, "<%s>", s), QBUF_OK);
    assert_int_equal(qbuf_len(b), 5001);
    assert_int_equal(qbuf_str(b)[0], '<');
    assert_int_equal(qbuf_str(b)[5000], '>');
    qbuf_free(b);
}

static void reserve_and_steal(void **state)
{
    qbuf *b = qbuf_new(64, 0);
    uint8_t *dst;
    char *out;
    size_t len;
    (void)state;
    assert_int_equal(qbuf_reserve(b, 4, &dst), QBUF_OK);
    memcpy(dst, "wxyz", 4);
    assert_int_equal(qbuf_reserve(b, 61, &dst), QBUF_E_LIMIT);
    assert_int_equal(qbuf_steal(b, &out, &len), QBUF_OK);
    assert_int_equal(len, 4);
    assert_string_equal(out, "wxyz");
    assert_int_equal(qbuf_len(b), 0);
    qbuf_free_stolen(out, len);
    /* An empty buffer still hands over a NUL-terminated string. */
    assert_int_equal(qbuf_steal(b, &out, &len), QBUF_OK);
    assert_int_equal(len, 0);
    assert_string_equal(out, "");
    qbuf_free_stolen(out, len);
    qbuf_free(b);
}

/* QBUF_SECURE storage comes from the secure heap once it is initialised,
 * across growth, and a stolen block goes back there. */
static void secure_heap(void **state)
{
    qbuf *b;
    char *out;
    size_t len;
    (void)state;
    assert_int_equal(CRYPTO_secure_malloc_init(1 << 16, 16), 1);
    b = qbuf_new(4096, QBUF_SECURE);
    assert_int_equal(qbuf_put_str(b, "secret"), QBUF_OK);
    assert_true(CRYPTO_secure_allocated(qbuf_ptr(b)));
    for (int i = 0; i < 100; i++)
        assert_int_equal(qbuf_put_str(b, "0123456789"), QBUF_OK);
    assert_true(CRYPTO_secure_allocated(qbuf_ptr(b)));
    assert_int_equal(qbuf_steal(b, &out, &len), QBUF_OK);
    assert_int_equal(len, 1006);
    assert_true(CRYPTO_secure_allocated(out));
    qbuf_free_stolen(out, len);
    qbuf_free(b);
    assert_int_equal(CRYPTO_secure_used(), 0);
    CRYPTO_secure_malloc_done();
}

static void error_currency(void **state)
{
    qk_err e;
    (void)state;
    qk_clear(&e);
    assert_int_equal(e.kind, QK_OK);
    assert_int_equal(qk_fail(&e, QK_CONFLICT, "session_ended", "session %s ended", "s1"),
                     QK_CONFLICT);
    assert_string_equal(e.code, "session_ended");
    assert_string_equal(e.detail, "session s1 ended");
    assert_string_equal(qk_kind_name(QK_UNAVAILABLE), "unavailable");
    assert_string_equal(qk_kind_name((qk_kind)99), "unknown");
    assert_int_equal(qk_fail(NULL, QK_INVALID, "x", "y"), QK_INVALID);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(put_and_read),     cmocka_unit_test(maximum_is_enforced),
        cmocka_unit_test(long_format),      cmocka_unit_test(growth_keeps_bytes),      cmocka_unit_test(reserve_and_steal),
        cmocka_unit_test(secure_heap),      cmocka_unit_test(error_currency),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
