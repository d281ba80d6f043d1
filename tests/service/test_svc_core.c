/*
 * Service tests: the service as kmsd builds it, without HTTP (this binary
 * does not link libmicrohttpd): the pool reaches PostgreSQL, the master key
 * wraps and unwraps through the token, the entropy interface gives bytes,
 * and the error currency's translations.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "err.h"
#include "fixture.h"

static void database_answers(void **state)
{
    (void)state;
    assert_int_equal(db_ping(fx.svc.db), DB_OK);
}

static void master_key_round_trip(void **state)
{
    uint8_t key[32], blob[32 + KEYWRAP_OVERHEAD], back[KEYWRAP_MAX_KEY + 16];
    size_t blob_len = sizeof(blob), back_len = sizeof(back);
    const uint8_t ctx[] = "service-test";
    (void)state;
    assert_int_equal(entropy_get(fx.svc.ent, key, sizeof(key), NULL), 0);
    assert_int_equal(keywrap_wrap(fx.svc.kw, ctx, sizeof(ctx), key, sizeof(key), blob, &blob_len),
                     CKR_OK);
    assert_int_equal(blob_len, sizeof(blob));
    assert_int_equal(keywrap_unwrap(fx.svc.kw, ctx, sizeof(ctx), blob, blob_len, back, &back_len),
                     CKR_OK);
    assert_int_equal(back_len, sizeof(key));
    assert_memory_equal(back, key, sizeof(key));
    /* Another context does not open it. */
    back_len = sizeof(back);
    assert_int_not_equal(keywrap_unwrap(fx.svc.kw, (const uint8_t *)"other", 5, blob, blob_len,
                                        back, &back_len),
                         CKR_OK);
}

static void error_translations(void **state)
{
    qk_err e;
    (void)state;
    assert_int_equal(db_fail(&e, DB_UNAVAILABLE), QK_UNAVAILABLE);
    assert_string_equal(e.code, "unavailable");
    assert_int_equal(e.retry_after, 1);
    assert_int_equal(db_fail(&e, DB_ERROR), QK_INTERNAL);
    assert_string_equal(e.code, "internal");
    assert_int_equal(qk_from_token(&e, CKR_DEVICE_REMOVED, "test"), QK_UNAVAILABLE);
    assert_string_equal(e.code, "token_unavailable");
    /* CKR_GENERAL_ERROR counts as the token being unwell (p11_rv_kind);
     * a refused argument is a bug. */
    assert_int_equal(qk_from_token(&e, CKR_ARGUMENTS_BAD, "test"), QK_INTERNAL);
    assert_string_equal(e.code, "internal");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(database_answers),
        cmocka_unit_test(master_key_round_trip),
        cmocka_unit_test(error_translations),
    };
    return cmocka_run_group_tests(tests, fixture_setup, fixture_teardown);
}
