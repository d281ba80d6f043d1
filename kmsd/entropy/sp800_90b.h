/*
 * sp800_90b — the NIST SP 800-90B §4.4 continuous health tests for an
 * entropy source of 8-bit samples: the Repetition Count Test (§4.4.1) and
 * the Adaptive Proportion Test (§4.4.2), plus the start-up test (§4.3)
 * that runs both over the first >= 1024 samples.
 *
 * Contract:
 *  - Parameters come from hc_params_compute(h, alpha_log2): h is the
 *    min-entropy per byte claimed for the source (0 < h <= 8) and
 *    alpha = 2^-alpha_log2 (20..40) the false-positive probability of each
 *    test for a source that really has h bits per sample.
 *      RCT cutoff C = 1 + ceil(alpha_log2 / h); a run of C identical
 *        consecutive samples fails (C - 1 pass).
 *      APT window W = 512 (the standard's size for non-binary samples); the
 *        cutoff is the smallest c with P(B >= c) <= alpha for
 *        B ~ Binomial(W, 2^-h), i.e. the standard's 1 + CRITBINOM(W, 2^-h,
 *        1 - alpha). Windows are consecutive and non-overlapping; in each, the
 *        copies of the window's first sample are counted, that first sample
 *        included, and the copy that brings the count to the cutoff fails.
 *        For h < alpha_log2 / 512 no count can reach alpha's rarity and the
 *        cutoff is W + 1: the APT cannot fail and only the RCT guards.
 *  - The tests are continuous: hc_feed() carries runs and windows across
 *    calls, so how a stream is split into buffers never changes the outcome.
 *  - A failure is sticky: every later hc_feed() on that state returns the
 *    same result at once (with *fail_at = SIZE_MAX, since no sample of that
 *    buffer tripped it) until hc_init() starts over. Data at or after a
 *    failing sample must be discarded by the caller; whether data before it
 *    in the same buffer is usable is the caller's policy.
 *  - Pure computation: no allocation, no I/O, no global mutable state
 *    (lgamma_r, not lgamma and its global signgam). Needs libm (-lm).
 *    One hc_state must not be fed from two threads at once; distinct
 *    states and hc_params are independent.
 *
 * Values for the defaults (h = 7.0, alpha = 2^-30):
 *     RCT cutoff C = 6, APT window W = 512, APT cutoff = 22.
 *
 *            alpha = 2^-20          alpha = 2^-30
 *   h      RCT C   APT cutoff     RCT C   APT cutoff
 *   1.0     21       311           31       325
 *   4.0      6        62            9        71
 *   6.0      5        25            6        31
 *   7.0      4        18            6        22
 *   7.5      4        15            5        19
 *   8.0      4        13            5        16
 *
 * Every APT value above (and the 2^-40 ones) was cross-checked against an
 * exact rational computation of the binomial tail (Python fractions +
 * math.comb); the alpha = 2^-20 ones match SP 800-90B's own table (H = 1:
 * 311, H = 4: 62, H = 8: 13; also H = 0.5: 410, H = 2: 177). None is a
 * close call: the nearest is h = 4, alpha = 2^-30, where P(B >= 70) is
 * 1.013 alpha and P(B >= 71) is 0.42 alpha.
 *
 * Note what alpha means: the false-alarm rate per test for a source with
 * exactly h bits. A perfect 8-bit source under h = 7, alpha = 2^-30 still
 * trips the RCT (6 equal bytes, p = 2^-40 per sample) about once per
 * 2^40 samples (1 TiB); budget the quarantine/retry path for that.
 */
#ifndef QKMS_SP800_90B_H
#define QKMS_SP800_90B_H

#include <stddef.h>
#include <stdint.h>

/* APT window for non-binary samples (SP 800-90B §4.4.2). */
#define HC_APT_WINDOW 512
/* The start-up test needs at least this many samples (§4.3). */
#define HC_STARTUP_SAMPLES 1024

typedef struct {
    double h;          /* claimed min-entropy per 8-bit sample */
    int alpha_log2;    /* false-positive probability 2^-alpha_log2 per test */
    int rct_cutoff;    /* C: this many identical consecutive samples fail */
    int apt_window;    /* W = 512 */
    int apt_cutoff;    /* this many copies of the window's first sample within W fail */
} hc_params;

/* 0, or -1 for h outside (0, 8] (NaN included) or alpha_log2 outside
 * 20..40 (or out == NULL, or h so small, < ~1.9e-8, that C overflows an
 * int). *out is written only on success. Cost: ~1000 log/exp evaluations,
 * so compute once per source configuration, not per sample. */
int hc_params_compute(double h, int alpha_log2, hc_params *out);

typedef enum { HC_OK = 0, HC_FAIL_RCT = 1, HC_FAIL_APT = 2 } hc_result;

/* Continuous-test state. The fields are private to sp800_90b.c; the type
 * is complete only so that callers can embed it without allocating. */
typedef struct {
    hc_params p;       /* a copy, so the caller's hc_params need not outlive the state */
    uint64_t samples;  /* samples examined, including one that tripped a test */
    hc_result failed;  /* HC_OK, or the sticky failure */
    int rct_b;         /* length of the current run; 0 before the first sample */
    int apt_b;         /* copies of apt_a so far in the current window */
    int apt_i;         /* samples seen in the current window; 0: next one opens it */
    uint8_t rct_a;     /* the value repeated in the current run */
    uint8_t apt_a;     /* the first sample of the current window */
} hc_state;

/* Start (or restart, after a failure) the tests with p, which must come
 * from a successful hc_params_compute(). A p that cannot have come from it
 * (a cutoff or window below 2, e.g. a zeroed struct) gives a state that
 * fails every hc_feed() with HC_FAIL_RCT: it fails closed. */
void hc_init(hc_state *s, const hc_params *p);

/* Run both tests over n more samples, continuing from earlier calls.
 * Returns HC_OK, or the first failure with *fail_at = index in buf of the
 * sample that tripped it; after a failure the state must be hc_init'ed again.
 * When one sample trips both tests, HC_FAIL_RCT is reported. fail_at may be
 * NULL and is written only on failure. buf may be NULL when n == 0. */
hc_result hc_feed(hc_state *s, const uint8_t *buf, size_t n, size_t *fail_at);

/* Start-up test: both tests over buf with a fresh state. Returns HC_OK,
 * HC_FAIL_RCT or HC_FAIL_APT, or -1 when n < HC_STARTUP_SAMPLES (1024) or p
 * or buf is NULL. A pass says nothing about later samples: follow it with
 * hc_init() + hc_feed() on everything the source produces. */
int hc_startup(const hc_params *p, const uint8_t *buf, size_t n);

/* Total samples tested so far by this state (since hc_init). */
uint64_t hc_samples(const hc_state *s);

#endif
