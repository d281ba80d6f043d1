/* Unit tests: which db_conninfo hosts kmsd resolves itself, and the lists it
 * hands libpq (store/pgresolve.h). The resolver outage itself is tested end
 * to end with a silent DNS server (tests/integration/test_db_resolve.py). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "store/pgresolve.h"

static int64_t mono_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

/* pgr_params for conninfo with a deadline ms away: its return value, the
 * lists (free them) in *out, *used and err. */
static int resolve(const char *conninfo, int ms, pgr_lists **out, bool *used, char *err,
                   size_t errlen)
{
    pg_resolver *r = pgr_new(conninfo);
    int rc;
    *out = malloc(sizeof(**out));
    assert_non_null(r);
    assert_non_null(*out);
    *used = false;
    rc = pgr_params(r, mono_ms() + ms, *out, used, err, errlen);
    pgr_free(r);
    return rc;
}

static void names_and_not_names(void **state)
{
    (void)state;
    assert_true(pgr_is_dns_name("postgres"));
    assert_true(pgr_is_dns_name("db.example.com"));
    assert_false(pgr_is_dns_name(""));
    assert_false(pgr_is_dns_name(NULL));
    assert_false(pgr_is_dns_name("/var/run/postgresql"));
    assert_false(pgr_is_dns_name("@abstract"));
    assert_false(pgr_is_dns_name("10.0.0.5"));
    assert_false(pgr_is_dns_name("::1"));
    assert_false(pgr_is_dns_name("fe80::1"));
}

static void split_lists(void **state)
{
    char out[3][PGR_ENTRY_MAX];
    char longer[PGR_ENTRY_MAX + 10];
    (void)state;
    assert_int_equal(pgr_split("a", out, 3), 1);
    assert_string_equal(out[0], "a");
    assert_int_equal(pgr_split("a,,c", out, 3), 3);
    assert_string_equal(out[1], "");
    assert_string_equal(out[2], "c");
    assert_int_equal(pgr_split("a,b,c,d", out, 3), -1);
    memset(longer, 'x', sizeof(longer) - 1);
    longer[sizeof(longer) - 1] = '\0';
    assert_int_equal(pgr_split(longer, out, 3), -1);
}

/* Nothing to resolve: libpq connects exactly as before. */
static void untouched_conninfos(void **state)
{
    static const char *const cases[] = {
        "host=/tmp/pg port=5432 dbname=qkms",
        "host=127.0.0.1 dbname=qkms",
        "host=postgres hostaddr=10.0.0.5 dbname=qkms", /* the operator pinned it */
        "host=a,b port=1,2,3 dbname=qkms",             /* libpq refuses: it says why */
        "postgresql://%2Ftmp%2Fpg/qkms",
        "not a conninfo",
    };
    (void)state;
    unsetenv("PGHOST");
    unsetenv("PGHOSTADDR");
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        pgr_lists *l;
        bool used;
        char err[128] = "";
        assert_int_equal(resolve(cases[i], 1000, &l, &used, err, sizeof(err)), 0);
        assert_false(used);
        free(l);
    }
}

/* A name in /etc/hosts: host= repeated once per address, hostaddr= the
 * addresses, the single port left to the conninfo. */
static void localhost_resolves(void **state)
{
    pgr_lists *l;
    bool used;
    char err[128] = "";
    (void)state;
    assert_int_equal(resolve("host=localhost port=5433 dbname=qkms", 5000, &l, &used, err,
                             sizeof(err)), 0);
    assert_true(used);
    assert_non_null(strstr(l->hostaddr, "127.0.0.1"));
    assert_int_equal(strncmp(l->host, "localhost", 9), 0);
    assert_string_equal(l->port, "");
    /* As many host entries as addresses. */
    {
        int commas_h = 0, commas_a = 0;
        for (const char *p = l->host; *p; p++)
            commas_h += *p == ',';
        for (const char *p = l->hostaddr; *p; p++)
            commas_a += *p == ',';
        assert_int_equal(commas_h, commas_a);
    }
    free(l);
}

/* Per-host ports follow their host through the expansion; a socket path
 * keeps an empty hostaddr (libpq then uses host=). */
static void mixed_list_with_ports(void **state)
{
    pgr_lists *l;
    bool used;
    char err[128] = "";
    (void)state;
    assert_int_equal(resolve("host=/tmp/pg,localhost port=5432,5433 dbname=qkms", 5000, &l,
                             &used, err, sizeof(err)), 0);
    assert_true(used);
    assert_int_equal(strncmp(l->host, "/tmp/pg,localhost", 17), 0);
    assert_true(strncmp(l->hostaddr, ",127.0.0.1", 10) == 0 || strncmp(l->hostaddr, ",::1", 4) == 0);
    assert_int_equal(strncmp(l->port, "5432,5433", 9), 0);
    free(l);
}

/* A name that does not exist is an error naming it, with no address to
 * fall back on. */
static void unknown_name_fails(void **state)
{
    pgr_lists *l;
    bool used;
    char err[256] = "";
    (void)state;
    assert_int_equal(resolve("host=no-such-host.invalid dbname=qkms", 3000, &l, &used, err,
                             sizeof(err)), -1);
    assert_false(used);
    assert_non_null(strstr(err, "no-such-host.invalid"));
    free(l);
}

/* glibc runs each lookup's completion notification on a thread of its
 * own, which frees the lookup, maybe after the test that asked returned:
 * wait for those before LeakSanitizer looks at exit. */
static int lookups_settled(void **state)
{
    int64_t until = mono_ms() + 10000;
    (void)state;
    while (pgr_lookups_in_flight() > 0 && mono_ms() < until) {
        struct timespec ms = {0, 1000000};
        nanosleep(&ms, NULL);
    }
    assert_int_equal(pgr_lookups_in_flight(), 0);
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(names_and_not_names),
        cmocka_unit_test(split_lists),
        cmocka_unit_test(untouched_conninfos),
        cmocka_unit_test(localhost_resolves),
        cmocka_unit_test(mixed_list_with_ports),
        cmocka_unit_test(unknown_name_fails),
    };
    return cmocka_run_group_tests_name("pgresolve", tests, NULL, lookups_settled);
}
