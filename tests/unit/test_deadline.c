/* Unit tests: deadlines for timed condition waits run on CLOCK_MONOTONIC. */
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include <cmocka.h>

#include "deadline.h"

static int64_t mono_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

/* A deadline is "now + ms" on the monotonic clock, not the wall clock
 * (which an NTP step or an operator can move). */
static void deadline_is_monotonic(void **state)
{
    struct timespec dl = deadline_in_ms(1500);
    int64_t at = (int64_t)dl.tv_sec * 1000 + dl.tv_nsec / 1000000;
    (void)state;
    assert_true(dl.tv_nsec >= 0 && dl.tv_nsec < 1000000000L);
    assert_true(at - mono_ms() > 1000);
    assert_true(at - mono_ms() <= 1500);
}

/* A condition made by deadline_cond_init times out after the wait asked
 * for, measured on the monotonic clock: neither at once nor never. */
static void cond_wait_times_out_on_time(void **state)
{
    pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
    pthread_cond_t cv;
    struct timespec dl;
    int64_t t0, took;
    int rc = 0;
    (void)state;
    assert_int_equal(deadline_cond_init(&cv), 0);
    pthread_mutex_lock(&mu);
    t0 = mono_ms();
    dl = deadline_in_ms(200);
    while (rc != ETIMEDOUT)
        rc = pthread_cond_timedwait(&cv, &mu, &dl);
    took = mono_ms() - t0;
    pthread_mutex_unlock(&mu);
    pthread_cond_destroy(&cv);
    assert_true(took >= 190);
    assert_true(took < 3000);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(deadline_is_monotonic),
        cmocka_unit_test(cond_wait_times_out_on_time),
    };
    return cmocka_run_group_tests_name("deadline", tests, NULL, NULL);
}
