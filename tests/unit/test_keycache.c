/* Unit tests: the device key cache's unwrapped part (service/keycache.h)
 * and the set of sessions seen to exist (service/session_seen.h). The
 * request path that uses them is tested end to end in
 * tests/integration/test_hot_path.py. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>
#include <openssl/crypto.h>

#include "service/keycache.h"
#include "service/session_seen.h"

static const uint8_t key1[16] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16};
static const uint8_t key2[32] = {0xaa, 0xbb};
static const uint8_t blob1[40] = {0x51, 1};
static const uint8_t blob2[40] = {0x51, 2};

static void unwrapped_hit_only_for_the_same_blob(void **state)
{
    (void)state;
    keycache *c = keycache_new(16, 64, 30);
    uint8_t *out = OPENSSL_secure_malloc(32);
    size_t n = 0;
    assert_non_null(c);
    assert_true(keycache_holds_unwrapped(c));
    assert_false(keycache_get_unwrapped(c, "DEV-1", 0, blob1, sizeof(blob1), out, 32, &n));
    keycache_put_unwrapped(c, "DEV-1", 0, blob1, sizeof(blob1), key1, sizeof(key1), keycache_generation(c));
    assert_true(keycache_get_unwrapped(c, "DEV-1", 0, blob1, sizeof(blob1), out, 32, &n));
    assert_int_equal(n, sizeof(key1));
    assert_memory_equal(out, key1, sizeof(key1));
    /* Another wrapped row (rotated, refilled, rewrapped): a miss. */
    assert_false(keycache_get_unwrapped(c, "DEV-1", 0, blob2, sizeof(blob2), out, 32, &n));
    assert_false(keycache_get_unwrapped(c, "DEV-1", 0, blob1, sizeof(blob1) - 1, out, 32, &n));
    /* Another index or device: a miss. */
    assert_false(keycache_get_unwrapped(c, "DEV-1", 1, blob1, sizeof(blob1), out, 32, &n));
    assert_false(keycache_get_unwrapped(c, "DEV-2", 0, blob1, sizeof(blob1), out, 32, &n));
    /* A buffer too small for the key: a miss, nothing written past it. */
    keycache_put_unwrapped(c, "DEV-3", 0, blob2, sizeof(blob2), key2, sizeof(key2), keycache_generation(c));
    assert_false(keycache_get_unwrapped(c, "DEV-3", 0, blob2, sizeof(blob2), out, 16, &n));
    assert_true(keycache_get_unwrapped(c, "DEV-3", 0, blob2, sizeof(blob2), out, 32, &n));
    assert_int_equal(n, 32);
    keycache_stats st;
    keycache_stats_get(c, &st);
    assert_int_equal(st.unwrapped_hits, 2);
    assert_int_equal(st.unwrapped_misses, 6);
    OPENSSL_secure_clear_free(out, 32);
    keycache_free(c);
}

static void invalidate_and_clear_wipe(void **state)
{
    (void)state;
    keycache *c = keycache_new(16, 64, 30);
    uint8_t *out = OPENSSL_secure_malloc(32);
    size_t n;
    keycache_put_unwrapped(c, "DEV-1", 0, blob1, sizeof(blob1), key1, sizeof(key1), keycache_generation(c));
    keycache_put_unwrapped(c, "DEV-1", 7, blob2, sizeof(blob2), key1, sizeof(key1), keycache_generation(c));
    keycache_put_unwrapped(c, "DEV-2", 0, blob1, sizeof(blob1), key1, sizeof(key1), keycache_generation(c));
    keycache_invalidate(c, "DEV-1");
    assert_false(keycache_get_unwrapped(c, "DEV-1", 0, blob1, sizeof(blob1), out, 32, &n));
    assert_false(keycache_get_unwrapped(c, "DEV-1", 7, blob2, sizeof(blob2), out, 32, &n));
    assert_true(keycache_get_unwrapped(c, "DEV-2", 0, blob1, sizeof(blob1), out, 32, &n));
    keycache_clear(c);
    assert_false(keycache_get_unwrapped(c, "DEV-2", 0, blob1, sizeof(blob1), out, 32, &n));
    OPENSSL_secure_clear_free(out, 32);
    keycache_free(c);
}

static void expired_entries_miss(void **state)
{
    (void)state;
    /* TTL 0: every entry is already too old when looked up. */
    keycache *c = keycache_new(16, 64, 0);
    uint8_t out[32];
    size_t n;
    keycache_put_unwrapped(c, "DEV-1", 0, blob1, sizeof(blob1), key1, sizeof(key1), keycache_generation(c));
    assert_false(keycache_get_unwrapped(c, "DEV-1", 0, blob1, sizeof(blob1), out, 32, &n));
    keycache_free(c);
}

static void put_after_an_invalidate_is_dropped(void **state)
{
    (void)state;
    keycache *c = keycache_new(16, 64, 30);
    uint8_t out[32];
    keycache_entry row = {.device_pk = 7, .algorithm = "AES-128"};
    keycache_entry got;
    size_t n;
    /* A request reads the generation, then the row, then unwraps; an
     * invalidate of the device comes in between: its puts are dropped. */
    uint64_t gen = keycache_generation(c);
    keycache_invalidate(c, "DEV-1");
    keycache_put(c, "DEV-1", 0, &row, gen);
    keycache_put_unwrapped(c, "DEV-1", 0, blob1, sizeof(blob1), key1, sizeof(key1), gen);
    assert_false(keycache_get(c, "DEV-1", 0, &got));
    assert_false(keycache_get_unwrapped(c, "DEV-1", 0, blob1, sizeof(blob1), out, 32, &n));
    /* The same after a clear; with a fresh generation they are kept. */
    gen = keycache_generation(c);
    keycache_clear(c);
    keycache_put(c, "DEV-1", 0, &row, gen);
    assert_false(keycache_get(c, "DEV-1", 0, &got));
    keycache_put(c, "DEV-1", 0, &row, keycache_generation(c));
    assert_true(keycache_get(c, "DEV-1", 0, &got));
    assert_int_equal(got.device_pk, 7);
    keycache_free(c);
}

static void expire_wipes_old_keys(void **state)
{
    (void)state;
    uint8_t out[32];
    size_t n;
    keycache *c = keycache_new(16, 64, 0); /* TTL 0: everything is old */
    keycache_put_unwrapped(c, "DEV-1", 0, blob1, sizeof(blob1), key1, sizeof(key1),
                           keycache_generation(c));
    assert_int_equal(keycache_expire(c), 1);
    assert_int_equal(keycache_expire(c), 0);
    keycache_free(c);
    c = keycache_new(16, 64, 30); /* nothing is old: expire keeps it */
    keycache_put_unwrapped(c, "DEV-1", 0, blob1, sizeof(blob1), key1, sizeof(key1),
                           keycache_generation(c));
    assert_int_equal(keycache_expire(c), 0);
    assert_true(keycache_get_unwrapped(c, "DEV-1", 0, blob1, sizeof(blob1), out, 32, &n));
    keycache_free(c);
}

static void off_when_zero_slots_or_oversized(void **state)
{
    (void)state;
    keycache *c = keycache_new(16, 0, 30);
    uint8_t out[32], big[KEYCACHE_WRAPPED_MAX + 1] = {0};
    size_t n;
    assert_false(keycache_holds_unwrapped(c));
    keycache_put_unwrapped(c, "DEV-1", 0, blob1, sizeof(blob1), key1, sizeof(key1), keycache_generation(c));
    assert_false(keycache_get_unwrapped(c, "DEV-1", 0, blob1, sizeof(blob1), out, 32, &n));
    keycache_free(c);
    c = keycache_new(16, 64, 30);
    keycache_put_unwrapped(c, "DEV-1", 0, big, sizeof(big), key1, sizeof(key1), keycache_generation(c));
    assert_false(keycache_get_unwrapped(c, "DEV-1", 0, big, sizeof(big), out, 32, &n));
    keycache_free(c);
}

static void seen_sessions(void **state)
{
    (void)state;
    uint8_t h1[32], h2[32];
    session_seen *ss = session_seen_new(1024);
    memset(h1, 0x11, sizeof(h1));
    memset(h2, 0x11, sizeof(h2));
    h2[9] ^= 1; /* the same slot, another tag */
    assert_false(session_seen_has(ss, h1));
    session_seen_add(ss, h1);
    assert_true(session_seen_has(ss, h1));
    assert_false(session_seen_has(ss, h2));
    session_seen_add(ss, h2); /* replaces h1 in its slot */
    assert_true(session_seen_has(ss, h2));
    assert_false(session_seen_has(ss, h1));
    session_seen_free(ss);
    ss = session_seen_new(0);
    session_seen_add(ss, h1);
    assert_false(session_seen_has(ss, h1));
    session_seen_free(ss);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(unwrapped_hit_only_for_the_same_blob),
        cmocka_unit_test(invalidate_and_clear_wipe),
        cmocka_unit_test(expired_entries_miss),
        cmocka_unit_test(put_after_an_invalidate_is_dropped),
        cmocka_unit_test(expire_wipes_old_keys),
        cmocka_unit_test(off_when_zero_slots_or_oversized),
        cmocka_unit_test(seen_sessions),
    };
    int rc;
    /* The unwrapped part exists only on a secure heap. */
    if (CRYPTO_secure_malloc_init(1 << 16, 16) == 0)
        return 1;
    rc = cmocka_run_group_tests(tests, NULL, NULL);
    CRYPTO_secure_malloc_done();
    return rc;
}
