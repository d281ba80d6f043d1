/* Unit tests: SP 800-90B §4.4 health tests (sp800_90b.h). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <errno.h>
#include <math.h> /* NAN, INFINITY: macros only */
#include <sys/random.h>

#include <cmocka.h>
#include <openssl/sha.h>

#include "entropy/sp800_90b.h"

/* Good-data volume. 16 MiB takes well under a second even under ASan, so
 * the sanitizer build does not need a smaller run. */
#define GOOD_BYTES (16u << 20)

#define W HC_APT_WINDOW

static hc_params params(double h, int alpha_log2)
{
    hc_params p;
    assert_int_equal(hc_params_compute(h, alpha_log2, &p), 0);
    return p;
}

/* ---- deterministic generators ------------------------------------------ */

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* SHA-256 in counter mode: block i = SHA-256("qkms-hc-test" || le64(i)). */
static void sha256_stream(uint8_t *out, size_t n)
{
    uint8_t in[12 + 8], md[SHA256_DIGEST_LENGTH];
    memcpy(in, "qkms-hc-test", 12);
    for (uint64_t i = 0; n > 0; i++) {
        for (int b = 0; b < 8; b++)
            in[12 + b] = (uint8_t)(i >> (8 * b));
        SHA256(in, sizeof(in), md);
        size_t k = n < sizeof(md) ? n : sizeof(md);
        memcpy(out, md, k);
        out += k;
        n -= k;
    }
}

/* Filler that never equals `avoid` and never repeats consecutively. */
static uint8_t filler(size_t j, uint8_t avoid)
{
    return (uint8_t)(avoid + 1 + j % 255);
}

/* One window of W samples starting with a and holding exactly m copies of a,
 * spread as evenly as possible (j gets a iff j*m mod W < m: exactly m hits,
 * j = 0 among them), so runs stay far below any RCT cutoff. Returns the
 * index of the last copy. */
static size_t apt_window_with(uint8_t *win, uint8_t a, int m)
{
    size_t last = 0;
    for (size_t j = 0; j < W; j++) {
        if ((j * (size_t)m) % W < (size_t)m) {
            win[j] = a;
            last = j;
        } else {
            win[j] = filler(j, a);
        }
    }
    return last;
}

/* Brute-force references, written per definition rather than as a stream:
 * does the sample at i complete a run of c equal samples, or the c-th copy
 * of its window's first sample? */
static int ref_rct_trips_at(const uint8_t *b, size_t i, int c)
{
    if (i + 1 < (size_t)c)
        return 0;
    for (size_t k = i + 1 - (size_t)c; k < i; k++)
        if (b[k] != b[i])
            return 0;
    return i + 1 == (size_t)c || b[i - (size_t)c] != b[i];
}

static int ref_apt_count(const uint8_t *b, size_t i)
{
    size_t w0 = i - i % W;
    int cnt = 0;
    for (size_t k = w0; k <= i; k++)
        cnt += b[k] == b[w0];
    return cnt;
}

/* ---- cutoffs ------------------------------------------------------------ */

static void cutoffs_known_values(void **state)
{
    /* From an exact rational computation (Python Fraction + math.comb of
     * the binomial tail), independent of the C code. The 2^-20 column at
     * h = 0.5, 1, 2, 4, 8 is SP 800-90B's own table (410, 311, 177, 62, 13). */
    static const struct {
        double h;
        int a, rct, apt;
    } v[] = {
        {0.5, 20, 41, 410}, {0.5, 30, 61, 422}, {0.5, 40, 81, 432},
        {1.0, 20, 21, 311}, {1.0, 30, 31, 325}, {1.0, 40, 41, 336},
        {2.0, 20, 11, 177}, {2.0, 30, 16, 190}, {2.0, 40, 21, 201},
        {4.0, 20, 6, 62},   {4.0, 30, 9, 71},   {4.0, 40, 11, 78},
        {6.0, 20, 5, 25},   {6.0, 30, 6, 31},   {6.0, 40, 8, 35},
        {7.0, 20, 4, 18},   {7.0, 30, 6, 22},   {7.0, 40, 7, 26},
        {7.5, 20, 4, 15},   {7.5, 30, 5, 19},   {7.5, 40, 7, 22},
        {8.0, 20, 4, 13},   {8.0, 30, 5, 16},   {8.0, 40, 6, 19},
        {0.1, 25, 251, 505}, {3.3, 25, 9, 93},  {5.9, 37, 8, 35},
        {7.9, 21, 4, 13},   {0.05, 20, 401, 511},
        /* h < alpha_log2 / 512: P(B = 512) > alpha, so the APT is vacuous. */
        {0.05, 30, 601, 513},
    };
    (void)state;
    for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
        hc_params p;
        assert_int_equal(hc_params_compute(v[i].h, v[i].a, &p), 0);
        if (p.rct_cutoff != v[i].rct || p.apt_cutoff != v[i].apt)
            fail_msg("h=%g alpha=2^-%d: got C=%d APT=%d, want C=%d APT=%d", v[i].h, v[i].a,
                     p.rct_cutoff, p.apt_cutoff, v[i].rct, v[i].apt);
        assert_int_equal(p.apt_window, 512);
        assert_int_equal(p.alpha_log2, v[i].a);
        assert_true(p.h == v[i].h);
    }
}

static void params_validation(void **state)
{
    static const double bad_h[] = {0.0, -0.0, -1.0, 8.000001, 9.0, 1e-9};
    hc_params p, untouched;
    (void)state;
    memset(&p, 0xa5, sizeof(p));
    untouched = p;
    for (size_t i = 0; i < sizeof(bad_h) / sizeof(bad_h[0]); i++) {
        assert_int_equal(hc_params_compute(bad_h[i], 30, &p), -1);
        assert_memory_equal(&p, &untouched, sizeof(p)); /* not written on error */
    }
    assert_int_equal(hc_params_compute(NAN, 30, &p), -1);
    assert_int_equal(hc_params_compute(INFINITY, 30, &p), -1);
    assert_int_equal(hc_params_compute(-INFINITY, 30, &p), -1);
    assert_int_equal(hc_params_compute(7.0, 19, &p), -1);
    assert_int_equal(hc_params_compute(7.0, 41, &p), -1);
    assert_int_equal(hc_params_compute(7.0, 0, &p), -1);
    assert_int_equal(hc_params_compute(7.0, -30, &p), -1);
    assert_int_equal(hc_params_compute(7.0, 30, NULL), -1);
    assert_memory_equal(&p, &untouched, sizeof(p));
    /* The edges of the ranges are valid. */
    assert_int_equal(hc_params_compute(8.0, 20, &p), 0);
    assert_int_equal(hc_params_compute(8.0, 40, &p), 0);
    assert_int_equal(hc_params_compute(1e-6, 40, &p), 0);
    assert_int_equal(p.rct_cutoff, 40000001);
    assert_int_equal(p.apt_cutoff, 513);
}

/* ---- RCT ---------------------------------------------------------------- */

static void rct_at_cutoff(const hc_params *p)
{
    const int c = p->rct_cutoff;
    uint8_t *buf = calloc(2 * (size_t)c + 64, 1);
    const size_t pre = 10;
    hc_state s;
    size_t at = 12345;

    assert_non_null(buf);
    for (size_t i = 0; i < pre; i++)
        buf[i] = (uint8_t)(0x10 + i);
    memset(buf + pre, 0xee, (size_t)c);

    /* One call: C-1 identical pass, the C-th fails and is pointed at. */
    hc_init(&s, p);
    assert_int_equal(hc_feed(&s, buf, pre + (size_t)c - 1, &at), HC_OK);
    assert_int_equal(at, 12345); /* not written on success */
    assert_int_equal(hc_samples(&s), pre + (size_t)c - 1);
    assert_int_equal(hc_feed(&s, buf + pre + c - 1, 1, &at), HC_FAIL_RCT);
    assert_int_equal(at, 0);
    assert_int_equal(hc_samples(&s), pre + (size_t)c);

    hc_init(&s, p);
    assert_int_equal(hc_feed(&s, buf, pre + (size_t)c, &at), HC_FAIL_RCT);
    assert_int_equal(at, pre + (size_t)c - 1);

    /* Split in the middle of the run: the run carries over. */
    for (int k = 1; k < c; k++) {
        hc_init(&s, p);
        assert_int_equal(hc_feed(&s, buf, pre + (size_t)k, &at), HC_OK);
        assert_int_equal(hc_feed(&s, buf + pre + k, (size_t)(c - k), &at), HC_FAIL_RCT);
        assert_int_equal(at, (size_t)(c - k - 1));
    }

    /* A different sample restarts the run: C-1, x, C-1 passes. */
    memset(buf, 0xee, (size_t)c - 1);
    buf[c - 1] = 0x01;
    memset(buf + c, 0xee, (size_t)c - 1);
    hc_init(&s, p);
    assert_int_equal(hc_feed(&s, buf, 2 * (size_t)c - 1, &at), HC_OK);
    free(buf);
}

static void rct_trips_exactly_at_cutoff(void **state)
{
    (void)state;
    hc_params p = params(7.0, 30);
    assert_int_equal(p.rct_cutoff, 6);
    rct_at_cutoff(&p);
    p = params(8.0, 20);
    assert_int_equal(p.rct_cutoff, 4);
    rct_at_cutoff(&p);
    p = params(1.0, 20);
    assert_int_equal(p.rct_cutoff, 21);
    rct_at_cutoff(&p);
    p = params(0.5, 40);
    assert_int_equal(p.rct_cutoff, 81);
    rct_at_cutoff(&p);
}

/* When one sample trips both tests, the RCT is reported. */
static void rct_wins_a_tie(void **state)
{
    hc_params p = params(7.0, 30);
    uint8_t buf[16];
    hc_state s;
    size_t at = 0;
    (void)state;
    p.apt_cutoff = p.rct_cutoff; /* a run from the window's start trips both */
    memset(buf, 0x42, sizeof(buf));
    hc_init(&s, &p);
    assert_int_equal(hc_feed(&s, buf, sizeof(buf), &at), HC_FAIL_RCT);
    assert_int_equal(at, (size_t)p.rct_cutoff - 1);
}

/* ---- APT ---------------------------------------------------------------- */

static void apt_at_cutoff(const hc_params *p)
{
    const int c = p->apt_cutoff;
    uint8_t buf[3 * W];
    hc_state s;
    size_t at = 0;

    /* c - 1 copies of the first sample in a window pass, window after window. */
    apt_window_with(buf, 0x5a, c - 1);
    apt_window_with(buf + W, 0x00, c - 1);
    apt_window_with(buf + 2 * W, 0xff, c - 1);
    hc_init(&s, p);
    assert_int_equal(hc_feed(&s, buf, sizeof(buf), &at), HC_OK);
    assert_int_equal(hc_samples(&s), sizeof(buf));

    /* Exactly c copies fail, at the c-th copy. */
    size_t last = apt_window_with(buf, 0x5a, c);
    hc_init(&s, p);
    assert_int_equal(hc_feed(&s, buf, sizeof(buf), &at), HC_FAIL_APT);
    assert_int_equal(at, last);
    assert_int_equal(hc_samples(&s), last + 1);

    /* The same in the second window, with the stream cut at odd places:
     * the failing index is the same sample whatever the split. */
    apt_window_with(buf, 0x5a, c - 1);
    last = W + apt_window_with(buf + W, 0x33, c);
    static const size_t chunks[] = {1, 7, 100, 511, 512, 513, 3 * W};
    for (size_t k = 0; k < sizeof(chunks) / sizeof(chunks[0]); k++) {
        size_t off = 0;
        hc_result r = HC_OK;
        hc_init(&s, p);
        while (off < sizeof(buf) && r == HC_OK) {
            size_t n = chunks[k] < sizeof(buf) - off ? chunks[k] : sizeof(buf) - off;
            r = hc_feed(&s, buf + off, n, &at);
            if (r == HC_OK)
                off += n;
        }
        assert_int_equal(r, HC_FAIL_APT);
        assert_int_equal(off + at, last);
    }
}

static void apt_trips_exactly_at_cutoff(void **state)
{
    (void)state;
    hc_params p = params(7.0, 30);
    assert_int_equal(p.apt_cutoff, 22);
    apt_at_cutoff(&p);
    p = params(8.0, 20);
    assert_int_equal(p.apt_cutoff, 13);
    apt_at_cutoff(&p);
    p = params(4.0, 20);
    assert_int_equal(p.apt_cutoff, 62);
    apt_at_cutoff(&p);
    p = params(0.5, 20);
    assert_int_equal(p.apt_cutoff, 410);
    apt_at_cutoff(&p);
}

/* Windows are consecutive and disjoint: copies of A late in one window do
 * not count toward the next window that happens to start with A. */
static void apt_windows_do_not_overlap(void **state)
{
    hc_params p = params(7.0, 30); /* APT cutoff 22 */
    uint8_t buf[2 * W];
    hc_state s;
    size_t at = 0;
    (void)state;
    for (size_t j = 0; j < W; j++)
        buf[j] = filler(j, 0x00); /* window 1 starts with 0x01, holds no 0x00 */
    for (size_t k = 0; k < 21; k++)
        buf[W - 2 - 2 * k] = 0x00; /* 21 copies of 0x00 in its last 42 samples */
    apt_window_with(buf + W, 0x00, 21); /* window 2: 0x00 first, 21 copies */
    hc_init(&s, &p);
    assert_int_equal(hc_feed(&s, buf, sizeof(buf), &at), HC_OK);
    /* Any 512-sample span across the boundary holds >= 22 copies, so a
     * sliding window would have failed here. Check that premise: */
    int span = 0;
    for (size_t j = W / 2; j < W / 2 + W; j++)
        span += buf[j] == 0x00;
    assert_true(span >= 22);
}

/* A source whose most likely value has probability ~1/8 (min-entropy ~3
 * bits) claimed as h = 7: the APT must catch it; as h = 2 it must not. */
static void apt_catches_biased_source(void **state)
{
    enum { N = 64 * 1024 };
    uint8_t *buf = malloc(N);
    uint64_t seed = 20240501;
    hc_state s;
    size_t at = 0;
    (void)state;
    assert_non_null(buf);
    for (size_t i = 0; i < N; i++) {
        uint64_t r = splitmix64(&seed);
        buf[i] = (r & 7) == 0 ? 0xa5 : (uint8_t)(r >> 8);
    }

    hc_params p = params(7.0, 30);
    hc_init(&s, &p);
    assert_int_equal(hc_feed(&s, buf, N, &at), HC_FAIL_APT);
    /* fail_at is the cutoff-th copy of the first sample of its window ... */
    size_t w0 = at - at % W;
    assert_int_equal(buf[at], buf[w0]);
    assert_int_equal(ref_apt_count(buf, at), p.apt_cutoff);
    /* ... that window is the first to reach the cutoff, nothing earlier
     * tripped the RCT, and it is the window the reference predicts. */
    size_t expect = SIZE_MAX;
    for (size_t i = 0; i < N && expect == SIZE_MAX; i++) {
        assert_false(ref_rct_trips_at(buf, i, p.rct_cutoff));
        if (ref_apt_count(buf, i) == p.apt_cutoff && buf[i] == buf[i - i % W])
            expect = i;
    }
    assert_int_equal(at, expect);
    assert_true(at < 16 * W); /* ~1 window in 8 starts with 0xa5 */

    /* Claimed honestly (h = 2 < ~2.96 real), the same data passes. */
    p = params(2.0, 30);
    hc_init(&s, &p);
    assert_int_equal(hc_feed(&s, buf, N, &at), HC_OK);
    free(buf);
}

/* ---- good data ---------------------------------------------------------- */

static void feed_in_odd_chunks(hc_state *s, const uint8_t *buf, size_t n, hc_result *r,
                               size_t *at)
{
    uint64_t seed = 7;
    size_t off = 0;
    *r = HC_OK;
    while (off < n && *r == HC_OK) {
        size_t k = 1 + (size_t)(splitmix64(&seed) % 70000);
        if (k > n - off)
            k = n - off;
        *r = hc_feed(s, buf + off, k, at);
        if (*r != HC_OK)
            *at += off;
        off += k;
    }
}

static void good_sha256_stream_passes(void **state)
{
    uint8_t *buf = malloc(GOOD_BYTES);
    hc_params p = params(7.0, 30);
    hc_state s;
    hc_result r;
    size_t at = 0;
    (void)state;
    assert_non_null(buf);
    sha256_stream(buf, GOOD_BYTES);
    hc_init(&s, &p);
    feed_in_odd_chunks(&s, buf, GOOD_BYTES, &r, &at);
    if (r != HC_OK)
        fail_msg("false alarm %d at %zu", r, at);
    assert_int_equal(hc_samples(&s), GOOD_BYTES);
    free(buf);
}

/*
 * OS randomness. Not "astronomically" safe: a perfect byte source under
 * h = 7, alpha = 2^-30 still holds a run of 6 equal bytes with probability
 * ~2^-40 per sample, so 16 MiB (2^24) alarms about once in 65,000 runs. Such
 * an alarm is correct behaviour, not a bug, so it is checked against the
 * brute-force reference and the test is skipped (not failed) when the data
 * really did contain the event; an alarm without one fails.
 */
static void good_getrandom_passes(void **state)
{
    uint8_t *buf = malloc(GOOD_BYTES);
    hc_params p = params(7.0, 30);
    hc_state s;
    hc_result r;
    size_t at = 0, got = 0;
    (void)state;
    assert_non_null(buf);
    while (got < GOOD_BYTES) {
        ssize_t k = getrandom(buf + got, GOOD_BYTES - got, 0);
        if (k < 0 && errno == EINTR)
            continue;
        assert_true(k > 0);
        got += (size_t)k;
    }
    hc_init(&s, &p);
    feed_in_odd_chunks(&s, buf, GOOD_BYTES, &r, &at);
    if (r != HC_OK) {
        int genuine = r == HC_FAIL_RCT ? ref_rct_trips_at(buf, at, p.rct_cutoff)
                                        : buf[at] == buf[at - at % W] &&
                                              ref_apt_count(buf, at) == p.apt_cutoff;
        if (!genuine)
            fail_msg("alarm %d at %zu without the event in the data", r, at);
        free(buf);
        printf("getrandom data held a genuine 2^-40-per-sample event at %zu: skipped\n", at);
        skip();
    }
    assert_int_equal(hc_samples(&s), GOOD_BYTES);
    free(buf);
}

/* ---- start-up, state ---------------------------------------------------- */

static void startup_test(void **state)
{
    uint8_t buf[2048];
    hc_params p = params(7.0, 30);
    (void)state;
    sha256_stream(buf, sizeof(buf));
    assert_int_equal(hc_startup(&p, buf, 0), -1);
    assert_int_equal(hc_startup(&p, buf, 1023), -1);
    assert_int_equal(hc_startup(NULL, buf, 1024), -1);
    assert_int_equal(hc_startup(&p, NULL, 1024), -1);
    assert_int_equal(hc_startup(&p, buf, 1024), HC_OK);
    assert_int_equal(hc_startup(&p, buf, sizeof(buf)), HC_OK);

    memset(buf, 0x00, (size_t)p.rct_cutoff); /* stuck start */
    assert_int_equal(hc_startup(&p, buf, 1024), HC_FAIL_RCT);
    memset(buf, 0x00, 1024); /* stuck throughout */
    assert_int_equal(hc_startup(&p, buf, 1024), HC_FAIL_RCT);

    sha256_stream(buf, sizeof(buf)); /* a biased second window */
    apt_window_with(buf + W, 0x77, p.apt_cutoff);
    assert_int_equal(hc_startup(&p, buf, 1024), HC_FAIL_APT);
    /* The failure must be in the data, not a short-buffer artefact. */
    apt_window_with(buf + W, 0x77, p.apt_cutoff - 1);
    assert_int_equal(hc_startup(&p, buf, 1024), HC_OK);
}

static void state_lifecycle(void **state)
{
    uint8_t buf[64];
    hc_params p = params(7.0, 30), zero;
    hc_state s;
    size_t at = 0;
    (void)state;
    sha256_stream(buf, sizeof(buf));

    hc_init(&s, &p);
    assert_int_equal(hc_samples(&s), 0);
    assert_int_equal(hc_feed(&s, NULL, 0, &at), HC_OK);
    assert_int_equal(hc_feed(&s, buf, 10, NULL), HC_OK);
    assert_int_equal(hc_feed(&s, buf + 10, 20, &at), HC_OK);
    assert_int_equal(hc_samples(&s), 30);

    /* A failure is sticky until hc_init. */
    memset(buf, 0x99, sizeof(buf));
    assert_int_equal(hc_feed(&s, buf, sizeof(buf), &at), HC_FAIL_RCT);
    assert_int_equal(at, (size_t)p.rct_cutoff - 1);
    sha256_stream(buf, sizeof(buf));
    assert_int_equal(hc_feed(&s, buf, sizeof(buf), &at), HC_FAIL_RCT);
    assert_int_equal(at, SIZE_MAX);
    assert_int_equal(hc_feed(&s, NULL, 0, NULL), HC_FAIL_RCT);
    hc_init(&s, &p);
    assert_int_equal(hc_feed(&s, buf, sizeof(buf), &at), HC_OK);
    assert_int_equal(hc_samples(&s), sizeof(buf));

    /* Params that never came from hc_params_compute fail closed. */
    memset(&zero, 0, sizeof(zero));
    hc_init(&s, &zero);
    assert_int_equal(hc_feed(&s, buf, sizeof(buf), &at), HC_FAIL_RCT);
    assert_int_equal(hc_samples(&s), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(cutoffs_known_values),
        cmocka_unit_test(params_validation),
        cmocka_unit_test(rct_trips_exactly_at_cutoff),
        cmocka_unit_test(rct_wins_a_tie),
        cmocka_unit_test(apt_trips_exactly_at_cutoff),
        cmocka_unit_test(apt_windows_do_not_overlap),
        cmocka_unit_test(apt_catches_biased_source),
        cmocka_unit_test(good_sha256_stream_passes),
        cmocka_unit_test(good_getrandom_passes),
        cmocka_unit_test(startup_test),
        cmocka_unit_test(state_lifecycle),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
