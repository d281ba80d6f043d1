/* Unit tests: token-bucket arithmetic and the bounded bucket table. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <pthread.h>
#include <stdatomic.h>

#include "config.h"
#include "api/ratelimit.h"

#define SEC 1000000000ull
#define MS 1000000ull
#define T0 (1000 * SEC) /* any starting point of the monotonic clock */

static bool take(ratelimit *rl, const char *key, uint64_t now, int *ra)
{
    return ratelimit_take(rl, key, now, ra);
}

static void burst_then_refused_with_retry_after(void **state)
{
    ratelimit *rl = ratelimit_new(1024);
    ratelimit_stats st;
    int ra = -1;
    (void)state;
    assert_non_null(rl);
    ratelimit_set(rl, 5, 5);
    for (int i = 0; i < 5; i++) {
        assert_true(take(rl, "dev-a", T0, &ra));
        assert_int_equal(ra, 0);
    }
    assert_false(take(rl, "dev-a", T0, &ra));
    assert_int_equal(ra, 1); /* 0.2 s to the next token: at least 1 */
    /* A refusal takes nothing: still refused a moment later, then allowed
     * exactly when one token has refilled (1/5 s). */
    assert_false(take(rl, "dev-a", T0 + 199 * MS, &ra));
    assert_true(take(rl, "dev-a", T0 + 200 * MS, &ra));
    assert_false(take(rl, "dev-a", T0 + 200 * MS, &ra));
    ratelimit_stats_get(rl, &st);
    assert_int_equal(st.limited, 3);
    assert_int_equal(st.buckets, 1);
    assert_int_equal(st.evictions, 0);
    ratelimit_free(rl);
}

static void refill_is_capped_at_burst(void **state)
{
    ratelimit *rl = ratelimit_new(1024);
    int ra;
    (void)state;
    ratelimit_set(rl, 10, 3);
    for (int i = 0; i < 3; i++)
        assert_true(take(rl, "k", T0, &ra));
    assert_false(take(rl, "k", T0, &ra));
    /* An hour idle refills to burst, not to 36000. */
    for (int i = 0; i < 3; i++)
        assert_true(take(rl, "k", T0 + 3600 * SEC, &ra));
    assert_false(take(rl, "k", T0 + 3600 * SEC, &ra));
    /* Partial refill: 250 ms at 10/s = 2.5 tokens -> 2 takes. */
    assert_true(take(rl, "k", T0 + 3600 * SEC + 250 * MS, &ra));
    assert_true(take(rl, "k", T0 + 3600 * SEC + 250 * MS, &ra));
    assert_false(take(rl, "k", T0 + 3600 * SEC + 250 * MS, &ra));
    /* The half token left counts: 50 ms more makes one. */
    assert_true(take(rl, "k", T0 + 3600 * SEC + 300 * MS, &ra));
    ratelimit_free(rl);
}

static void retry_after_rounds_up_whole_seconds(void **state)
{
    ratelimit *rl = ratelimit_new(1024);
    int ra;
    (void)state;
    ratelimit_set(rl, 0.1, 1); /* one every 10 s */
    assert_true(take(rl, "slow", T0, &ra));
    assert_false(take(rl, "slow", T0, &ra));
    assert_int_equal(ra, 10);
    assert_false(take(rl, "slow", T0 + 2500 * MS, &ra));
    assert_int_equal(ra, 8); /* 7.5 s left -> 8 */
    assert_false(take(rl, "slow", T0 + 9999 * MS, &ra));
    assert_int_equal(ra, 1);
    assert_true(take(rl, "slow", T0 + 10 * SEC, &ra));

    ratelimit_set(rl, 0.4, 1); /* one every 2.5 s */
    assert_true(take(rl, "s2", T0, &ra));
    assert_false(take(rl, "s2", T0, &ra));
    assert_int_equal(ra, 3);
    /* NULL retry_after is allowed. */
    assert_false(ratelimit_take(rl, "s2", T0, NULL));
    ratelimit_free(rl);
}

static void keys_are_independent(void **state)
{
    ratelimit *rl = ratelimit_new(1024);
    int ra;
    (void)state;
    ratelimit_set(rl, 1, 2);
    assert_true(take(rl, "alice", T0, &ra));
    assert_true(take(rl, "alice", T0, &ra));
    assert_false(take(rl, "alice", T0, &ra));
    assert_true(take(rl, "bob", T0, &ra));
    assert_true(take(rl, "bob", T0, &ra));
    assert_false(take(rl, "bob", T0, &ra));
    /* Prefixes and long keys are distinct keys. */
    assert_true(take(rl, "alic", T0, &ra));
    char longkey[600];
    memset(longkey, 'x', sizeof(longkey) - 1);
    longkey[sizeof(longkey) - 1] = 0;
    assert_true(take(rl, longkey, T0, &ra));
    longkey[598] = 'y';
    assert_true(take(rl, longkey, T0, &ra));
    ratelimit_free(rl);
}

static void zero_rate_is_unlimited(void **state)
{
    ratelimit *rl = ratelimit_new(256);
    ratelimit_stats st;
    int ra = -1;
    (void)state;
    ratelimit_set(rl, 0, 1);
    for (int i = 0; i < 10000; i++)
        assert_true(take(rl, "any", T0, &ra));
    assert_int_equal(ra, 0);
    ratelimit_stats_get(rl, &st);
    assert_int_equal(st.buckets, 0); /* nothing stored */
    ratelimit_free(rl);
}

static void reconfigure_applies_to_existing_buckets(void **state)
{
    ratelimit *rl = ratelimit_new(1024);
    int ra;
    (void)state;
    ratelimit_set(rl, 1, 100);
    assert_true(take(rl, "k", T0, &ra)); /* 99 left */
    /* Lowering burst clamps the stored tokens at the next take. */
    ratelimit_set(rl, 1, 2);
    assert_true(take(rl, "k", T0, &ra));
    assert_true(take(rl, "k", T0, &ra));
    assert_false(take(rl, "k", T0, &ra));
    assert_int_equal(ra, 1);
    /* A faster rate refills faster. */
    ratelimit_set(rl, 100, 2);
    assert_true(take(rl, "k", T0 + 10 * MS, &ra));
    assert_false(take(rl, "k", T0 + 10 * MS, &ra));
    /* Unlimited, then limited again: the bucket is where it was. */
    ratelimit_set(rl, 0, 2);
    for (int i = 0; i < 50; i++)
        assert_true(take(rl, "k", T0 + 10 * MS, &ra));
    ratelimit_set(rl, 100, 2);
    assert_false(take(rl, "k", T0 + 10 * MS, &ra));
    ratelimit_free(rl);
}

static void time_going_backwards_adds_nothing(void **state)
{
    ratelimit *rl = ratelimit_new(1024);
    int ra;
    (void)state;
    ratelimit_set(rl, 1, 1);
    assert_true(take(rl, "k", T0 + 5 * SEC, &ra));
    assert_false(take(rl, "k", T0, &ra));
    assert_false(take(rl, "k", T0 + 5 * SEC, &ra));
    assert_true(take(rl, "k", T0 + 6 * SEC, &ra));
    ratelimit_free(rl);
}

static void refund_gives_back_one_token(void **state)
{
    ratelimit *rl = ratelimit_new(1024);
    int ra;
    (void)state;
    ratelimit_set(rl, 1, 2);
    assert_true(take(rl, "k", T0, &ra));
    assert_true(take(rl, "k", T0, &ra));
    assert_false(take(rl, "k", T0, &ra));
    ratelimit_refund(rl, "k", T0);
    assert_true(take(rl, "k", T0, &ra));
    assert_false(take(rl, "k", T0, &ra));
    /* Capped at burst; unknown keys and NULL are no-ops. */
    for (int i = 0; i < 10; i++)
        ratelimit_refund(rl, "k", T0);
    assert_true(take(rl, "k", T0, &ra));
    assert_true(take(rl, "k", T0, &ra));
    assert_false(take(rl, "k", T0, &ra));
    ratelimit_refund(rl, "nobody", T0);
    ratelimit_refund(NULL, "k", T0);
    ratelimit_free(rl);
}

static void memory_stays_bounded_and_idle_buckets_go_first(void **state)
{
    ratelimit *rl = ratelimit_new(256);
    ratelimit_stats st;
    char key[32];
    int ra;
    uint64_t ev;
    (void)state;
    ratelimit_set(rl, 1, 2);
    ratelimit_stats_get(rl, &st);
    assert_int_equal(st.capacity, 256);
    /* 100000 keys at one moment: none is idle, so buckets are dropped
     * (counted), but the table does not grow. */
    for (int i = 0; i < 100000; i++) {
        snprintf(key, sizeof(key), "flood-%d", i);
        assert_true(take(rl, key, T0, &ra));
    }
    ratelimit_stats_get(rl, &st);
    assert_int_equal(st.buckets, st.capacity);
    assert_true(st.evictions >= 100000 - 256);
    ratelimit_free(rl);

    /* 64 slots: 8 stripes of 8, each stripe one associative set. */
    rl = ratelimit_new(64);
    ratelimit_set(rl, 1, 2);
    ratelimit_stats_get(rl, &st);
    assert_int_equal(st.capacity, 64);
    for (int i = 0; i < 1000; i++) {
        snprintf(key, sizeof(key), "old-%d", i);
        assert_true(take(rl, key, T0, &ra)); /* one token left each */
    }
    /* A second later every old bucket has refilled (idle); the victim is
     * throttled and stays so for 2 s. */
    uint64_t t1 = T0 + SEC;
    assert_true(take(rl, "victim", t1, &ra));
    assert_true(take(rl, "victim", t1, &ra));
    assert_false(take(rl, "victim", t1, &ra));
    ratelimit_stats_get(rl, &st);
    ev = st.evictions;
    /* Six busy newcomers cannot fill the victim's set of eight (it holds
     * the victim and at least one idle bucket): idle buckets go first, no
     * bucket that still limits anyone is dropped. */
    for (int i = 0; i < 6; i++) {
        snprintf(key, sizeof(key), "new-%d", i);
        assert_true(take(rl, key, t1 + (uint64_t)i * MS, &ra));
    }
    ratelimit_stats_get(rl, &st);
    assert_int_equal(st.evictions, ev);
    assert_false(take(rl, "victim", t1 + 10 * MS, &ra));
    assert_int_equal(ra, 1);
    ratelimit_free(rl);
}

static ratelimit *shared_rl;
static atomic_int shared_ok;

static void *hammer(void *arg)
{
    char key[16];
    int ra;
    snprintf(key, sizeof(key), "k%d", (int)(intptr_t)arg % 2);
    for (int i = 0; i < 2000; i++)
        if (ratelimit_take(shared_rl, key, T0, &ra))
            atomic_fetch_add(&shared_ok, 1);
    return NULL;
}

static void concurrent_takes_never_exceed_burst(void **state)
{
    pthread_t th[8];
    (void)state;
    shared_rl = ratelimit_new(1024);
    ratelimit_set(shared_rl, 1, 100);
    for (int i = 0; i < 8; i++)
        assert_int_equal(pthread_create(&th[i], NULL, hammer, (void *)(intptr_t)i), 0);
    for (int i = 0; i < 8; i++)
        pthread_join(th[i], NULL);
    assert_int_equal(atomic_load(&shared_ok), 200); /* two keys, burst 100 each */
    ratelimit_free(shared_rl);
}

static void configure_all_from_options(void **state)
{
    kms_config c;
    ratelimit *rl[RL_NSCOPES] = {0};
    char why[160];
    int ra;
    (void)state;
    config_defaults(&c);
    assert_true(c.rate_limit_device == 20 && c.rate_limit_device_burst == 40);
    assert_true(c.rate_limit_client == 500 && c.rate_limit_client_burst == 1000);
    assert_true(c.rate_limit_admin == 50 && c.rate_limit_admin_burst == 100);
    assert_int_equal(config_set(&c, "rate_limit_admin", "0.5", why, sizeof(why)), 0);
    assert_int_equal(config_set(&c, "rate_limit_admin_burst", "1", why, sizeof(why)), 0);
    assert_int_equal(config_set(&c, "rate_limit_device", "0", why, sizeof(why)), 0);
    assert_int_equal(config_set(&c, "rate_limit_client", "-1", why, sizeof(why)), -1);
    assert_int_equal(config_set(&c, "rate_limit_client", "nan", why, sizeof(why)), -1);
    assert_int_equal(config_set(&c, "rate_limit_client", "inf", why, sizeof(why)), -1);
    assert_int_equal(config_set(&c, "rate_limit_client_burst", "0", why, sizeof(why)), -1);
    assert_int_equal(ratelimit_open_all(rl, &c), 0);
    assert_true(take(rl[RL_ADMIN], "bootstrap", T0, &ra));
    assert_false(take(rl[RL_ADMIN], "bootstrap", T0, &ra));
    assert_int_equal(ra, 2);
    for (int i = 0; i < 1000; i++)
        assert_true(take(rl[RL_DEVICE], "dev", T0, &ra));
    assert_string_equal(ratelimit_scope_names[RL_CLIENT], "client");
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    ratelimit_metrics_render(rl, f);
    fclose(f);
    assert_non_null(strstr(buf, "qkms_rate_limited_total{scope=\"admin\"} 1\n"));
    assert_non_null(strstr(buf, "qkms_rate_limited_total{scope=\"device\"} 0\n"));
    assert_non_null(strstr(buf, "qkms_rate_limit_buckets{scope=\"admin\"} 1\n"));
    free(buf);
    ratelimit_free_all(rl);
    assert_null(rl[0]);
    config_free(&c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(burst_then_refused_with_retry_after),
        cmocka_unit_test(refill_is_capped_at_burst),
        cmocka_unit_test(retry_after_rounds_up_whole_seconds),
        cmocka_unit_test(keys_are_independent),
        cmocka_unit_test(zero_rate_is_unlimited),
        cmocka_unit_test(reconfigure_applies_to_existing_buckets),
        cmocka_unit_test(time_going_backwards_adds_nothing),
        cmocka_unit_test(refund_gives_back_one_token),
        cmocka_unit_test(memory_stays_bounded_and_idle_buckets_go_first),
        cmocka_unit_test(concurrent_takes_never_exceed_burst),
        cmocka_unit_test(configure_all_from_options),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
