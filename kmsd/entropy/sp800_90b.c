/* sp800_90b — SP 800-90B §4.4 continuous health tests (RCT and APT). */
#include "entropy/sp800_90b.h"

#include <limits.h>
#include <math.h>
#include <string.h>

/* ln(e^a + e^b) without overflow; a may be -inf (an empty sum). */
static double log_add(double a, double b)
{
    if (a < b) {
        double t = a;
        a = b;
        b = t;
    }
    if (b == -HUGE_VAL)
        return a;
    return a + log1p(exp(b - a));
}

/* ln k!. lgamma_r rather than lgamma: lgamma stores the sign in the global
 * signgam, a data race when two threads compute parameters at once. */
static double log_factorial(int k)
{
    int sign;
    return lgamma_r((double)k + 1.0, &sign);
}

/*
 * The APT cutoff: the smallest c with P(B >= c) <= alpha, B ~ Binomial(W, p),
 * p = 2^-h — the standard's 1 + CRITBINOM(W, 2^-h, 1 - alpha).
 *
 * Every term P(B = k) = C(W,k) p^k (1-p)^(W-k) is formed in log space: with
 * W = 512 and p near 1/256 the upper terms are ~1e-1000, and with p near
 * 0.7 the lower ones are, so no term can be formed directly as a double.
 * Summing the tail from k = W downwards with log_add keeps every partial
 * sum in range; since the tail only grows as c falls, the first c whose tail
 * exceeds alpha gives the answer c + 1. Returns W + 1 when even P(B = W) > alpha
 * (tiny h): the APT then cannot fail, as the standard's formula implies.
 *
 * Rounding cannot move a cutoff in practice: libm's few-ulp errors give a
 * relative error near 1e-13 in the tail, while for every value in the
 * header's table the tail next to the cutoff is at least 1.3% away from
 * alpha. The unit test's expected values come from an exact rational
 * computation, not from this code.
 */
static int apt_cutoff(double h, int alpha_log2, int w)
{
    const double ln2 = log(2.0);
    double ln_p = -h * ln2;
    /* ln(1 - 2^-h) via expm1: 1 - p computed directly would lose most of
     * its digits as h gets small and p approaches 1. */
    double ln_q = log(-expm1(ln_p));
    double ln_alpha = -alpha_log2 * ln2;
    double ln_wfact = log_factorial(w);
    double tail = -HUGE_VAL;

    for (int c = w; c >= 0; c--) {
        double term = ln_wfact - log_factorial(c) - log_factorial(w - c) + c * ln_p +
                      (w - c) * ln_q;
        tail = log_add(tail, term);
        if (tail > ln_alpha)
            return c + 1;
    }
    return 0; /* unreachable: the tail at c = 0 is 1 > alpha */
}

int hc_params_compute(double h, int alpha_log2, hc_params *out)
{
    /* Written as !(in range) so that NaN is rejected too. */
    if (out == NULL || !(h > 0.0 && h <= 8.0) || alpha_log2 < 20 || alpha_log2 > 40)
        return -1;

    /* C = 1 + ceil(alpha_log2 / h), kept in int: reject an h so small that
     * C would not fit (h < ~1.9e-8, far below any usable source). The
     * quotient is the rounded double one on purpose: h = 0.3 with
     * alpha_log2 = 33 gives 110, so C = 111 as the decimal values mean, not
     * 112 as the binary double just below 0.3 would strictly give. */
    double q = (double)alpha_log2 / h;
    if (q > (double)(INT_MAX - 2))
        return -1;
    int ceil_q = (int)q; /* q > 0, so truncation is floor */
    if ((double)ceil_q < q)
        ceil_q++;

    memset(out, 0, sizeof(*out));
    out->h = h;
    out->alpha_log2 = alpha_log2;
    out->rct_cutoff = 1 + ceil_q;
    out->apt_window = HC_APT_WINDOW;
    out->apt_cutoff = apt_cutoff(h, alpha_log2, HC_APT_WINDOW);
    return 0;
}

void hc_init(hc_state *s, const hc_params *p)
{
    memset(s, 0, sizeof(*s));
    s->p = *p;
    /* Fail closed: a zeroed or hand-made hc_params that could not come from
     * hc_params_compute would make the tests meaningless (a cutoff <= 1 or a
     * window < 2), so such a state rejects everything instead of passing it. */
    if (p->rct_cutoff < 2 || p->apt_window < 2 || p->apt_cutoff < 2)
        s->failed = HC_FAIL_RCT;
}

hc_result hc_feed(hc_state *s, const uint8_t *buf, size_t n, size_t *fail_at)
{
    if (s->failed != HC_OK) {
        /* Sticky: no sample of this buf tripped anything, so point nowhere. */
        if (fail_at)
            *fail_at = SIZE_MAX;
        return s->failed;
    }
    for (size_t i = 0; i < n; i++) {
        uint8_t x = buf[i];
        hc_result r = HC_OK;

        s->samples++;

        /* §4.4.1 RCT: B counts the current run of identical samples,
         * including its first; the sample that makes B reach C fails. */
        if (s->rct_b == 0 || x != s->rct_a) {
            s->rct_a = x;
            s->rct_b = 1;
        } else if (++s->rct_b >= s->p.rct_cutoff) {
            r = HC_FAIL_RCT;
        }

        /* §4.4.2 APT: non-overlapping windows of W samples; B counts copies
         * of the window's first sample, including it; reaching the cutoff
         * fails. Evaluated even when the RCT just failed, so the state is
         * consistent, but the RCT is reported for that sample. */
        if (s->apt_i == 0) {
            s->apt_a = x;
            s->apt_b = 1;
            s->apt_i = 1;
        } else {
            if (x == s->apt_a && ++s->apt_b >= s->p.apt_cutoff && r == HC_OK)
                r = HC_FAIL_APT;
            if (++s->apt_i == s->p.apt_window)
                s->apt_i = 0; /* the next sample opens a new window */
        }

        if (r != HC_OK) {
            s->failed = r;
            if (fail_at)
                *fail_at = i;
            return r;
        }
    }
    return HC_OK;
}

int hc_startup(const hc_params *p, const uint8_t *buf, size_t n)
{
    hc_state s;

    if (p == NULL || buf == NULL || n < HC_STARTUP_SAMPLES)
        return -1;
    hc_init(&s, p);
    return (int)hc_feed(&s, buf, n, NULL);
}

uint64_t hc_samples(const hc_state *s)
{
    return s->samples;
}
