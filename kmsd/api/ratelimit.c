/* ratelimit — striped, bounded table of lazily refilled token buckets. */
#include "api/ratelimit.h"

#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/evp.h>
#include <openssl/rand.h>

#define RL_STRIPES 64 /* at most; fewer for small tables */
#define RL_WINDOW 8   /* slots a key may occupy */
#define RL_RATE_SCALE 1000.0
#define RL_EPS 1e-9

const char *const ratelimit_scope_names[RL_NSCOPES] = {"device", "client", "admin"};

typedef struct {
    uint64_t h[2];   /* keyed hash of the key; h[1] == 0: empty slot */
    double tokens;
    uint64_t last_ns; /* time of the last refill */
} rl_slot;

typedef struct {
    pthread_mutex_t m;
    size_t used;
} __attribute__((aligned(64))) rl_stripe;

struct ratelimit {
    rl_stripe *stripes;
    rl_slot *slots;
    size_t nstripes; /* power of two */
    size_t per;      /* slots per stripe */
    uint8_t salt[16];
    /* rate in thousandths per second << 32 | burst: one atomic word so a
     * reload never pairs an old rate with a new burst. */
    _Atomic uint64_t params;
    _Atomic uint64_t limited, evictions;
};

uint64_t ratelimit_now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

ratelimit *ratelimit_new(size_t capacity)
{
    ratelimit *rl = calloc(1, sizeof(*rl));
    size_t ns = RL_STRIPES;
    if (!rl)
        return NULL;
    while (ns > 1 && capacity / ns < RL_WINDOW)
        ns /= 2;
    rl->nstripes = ns;
    rl->per = (capacity + ns - 1) / ns;
    if (rl->per < RL_WINDOW)
        rl->per = RL_WINDOW;
    rl->stripes = aligned_alloc(64, ns * sizeof(rl_stripe));
    rl->slots = calloc(ns * rl->per, sizeof(rl_slot));
    if (!rl->stripes || !rl->slots || RAND_bytes(rl->salt, sizeof(rl->salt)) != 1) {
        free(rl->stripes);
        free(rl->slots);
        free(rl);
        return NULL;
    }
    memset(rl->stripes, 0, ns * sizeof(rl_stripe));
    for (size_t i = 0; i < ns; i++)
        pthread_mutex_init(&rl->stripes[i].m, NULL);
    return rl;
}

void ratelimit_free(ratelimit *rl)
{
    if (!rl)
        return;
    for (size_t i = 0; i < rl->nstripes; i++)
        pthread_mutex_destroy(&rl->stripes[i].m);
    free(rl->stripes);
    free(rl->slots);
    free(rl);
}

void ratelimit_set(ratelimit *rl, double rate, int burst)
{
    uint64_t milli = 0;
    if (rate > 0) {
        double m = ceil(rate * RL_RATE_SCALE - RL_EPS);
        milli = m < 1 ? 1 : m > 4e9 ? 4000000000u : (uint64_t)m;
    }
    if (burst < 1)
        burst = 1;
    atomic_store(&rl->params, milli << 32 | (uint32_t)burst);
}

static void key_hash(const ratelimit *rl, const char *key, uint64_t h[2])
{
    uint8_t md[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    EVP_MD_CTX *x = EVP_MD_CTX_new();
    memset(md, 0, sizeof(md));
    if (x && EVP_DigestInit_ex(x, EVP_sha256(), NULL) == 1 &&
        EVP_DigestUpdate(x, rl->salt, sizeof(rl->salt)) == 1 &&
        EVP_DigestUpdate(x, key, strlen(key)) == 1)
        EVP_DigestFinal_ex(x, md, &n);
    EVP_MD_CTX_free(x);
    memcpy(h, md, 16);
    h[1] |= 1; /* never the empty marker */
}

/* Tokens the bucket would hold at now. */
static double level(const rl_slot *s, uint64_t now, double rate)
{
    return s->tokens + (now > s->last_ns ? (double)(now - s->last_ns) * rate / 1e9 : 0.0);
}

bool ratelimit_take(ratelimit *rl, const char *key, uint64_t now, int *retry_after)
{
    uint64_t p = atomic_load(&rl->params), h[2];
    double rate = (double)(p >> 32) / RL_RATE_SCALE, burst = (double)(uint32_t)p;
    rl_stripe *st;
    rl_slot *base, *b = NULL, *empty = NULL, *idle = NULL, *oldest = NULL;
    size_t start, si;
    bool ok;

    if (retry_after)
        *retry_after = 0;
    if (rate <= 0)
        return true;
    key_hash(rl, key ? key : "", h);
    si = (size_t)(h[0] & (rl->nstripes - 1));
    st = &rl->stripes[si];
    base = rl->slots + si * rl->per;
    start = (size_t)((h[0] >> 16) % rl->per);

    pthread_mutex_lock(&st->m);
    for (size_t i = 0; i < RL_WINDOW && i < rl->per; i++) {
        rl_slot *s = &base[(start + i) % rl->per];
        if (s->h[0] == h[0] && s->h[1] == h[1]) {
            b = s;
            break;
        }
        if (!s->h[1]) {
            if (!empty)
                empty = s;
            continue;
        }
        if (!idle && level(s, now, rate) >= burst - RL_EPS)
            idle = s;
        if (!oldest || s->last_ns < oldest->last_ns)
            oldest = s;
    }
    if (!b) {
        /* A new bucket starts full: reuse an empty slot, else an idle one
         * (full again, so nothing is lost), else the least recently used. */
        if (empty) {
            b = empty;
            st->used++;
        } else if (idle) {
            b = idle;
        } else {
            b = oldest;
            atomic_fetch_add(&rl->evictions, 1);
        }
        b->h[0] = h[0];
        b->h[1] = h[1];
        b->tokens = burst;
        b->last_ns = now;
    } else if (now > b->last_ns) {
        b->tokens = level(b, now, rate);
        b->last_ns = now;
    }
    if (b->tokens > burst)
        b->tokens = burst; /* also after a reload lowered burst */
    ok = b->tokens >= 1.0 - RL_EPS;
    if (ok) {
        b->tokens -= 1.0;
        if (b->tokens < 0)
            b->tokens = 0;
    } else if (retry_after) {
        double wait = ceil((1.0 - b->tokens) / rate - RL_EPS);
        *retry_after = wait < 1 ? 1 : wait > 86400 ? 86400 : (int)wait;
    }
    pthread_mutex_unlock(&st->m);
    if (!ok)
        atomic_fetch_add(&rl->limited, 1);
    return ok;
}

void ratelimit_refund(ratelimit *rl, const char *key, uint64_t now)
{
    uint64_t p, h[2];
    double rate, burst;
    size_t start, si;
    rl_slot *base;

    if (!rl)
        return;
    p = atomic_load(&rl->params);
    rate = (double)(p >> 32) / RL_RATE_SCALE;
    burst = (double)(uint32_t)p;
    if (rate <= 0)
        return;
    key_hash(rl, key ? key : "", h);
    si = (size_t)(h[0] & (rl->nstripes - 1));
    base = rl->slots + si * rl->per;
    start = (size_t)((h[0] >> 16) % rl->per);
    pthread_mutex_lock(&rl->stripes[si].m);
    for (size_t i = 0; i < RL_WINDOW && i < rl->per; i++) {
        rl_slot *s = &base[(start + i) % rl->per];
        if (s->h[0] == h[0] && s->h[1] == h[1]) {
            if (now > s->last_ns) {
                s->tokens = level(s, now, rate);
                s->last_ns = now;
            }
            s->tokens += 1.0;
            if (s->tokens > burst)
                s->tokens = burst;
            break;
        }
    }
    pthread_mutex_unlock(&rl->stripes[si].m);
}

void ratelimit_stats_get(ratelimit *rl, ratelimit_stats *out)
{
    memset(out, 0, sizeof(*out));
    if (!rl)
        return;
    out->limited = atomic_load(&rl->limited);
    out->evictions = atomic_load(&rl->evictions);
    out->capacity = rl->nstripes * rl->per;
    for (size_t i = 0; i < rl->nstripes; i++) {
        pthread_mutex_lock(&rl->stripes[i].m);
        out->buckets += rl->stripes[i].used;
        pthread_mutex_unlock(&rl->stripes[i].m);
    }
}

/* ---- kmsd's scopes --------------------------------------------------------- */

int ratelimit_open_all(ratelimit *rl[RL_NSCOPES], const kms_config *c)
{
    for (int i = 0; i < RL_NSCOPES; i++) {
        rl[i] = ratelimit_new((size_t)c->rate_limit_buckets);
        if (!rl[i])
            return -1;
    }
    ratelimit_configure_all(rl, c);
    return 0;
}

void ratelimit_configure_all(ratelimit *rl[RL_NSCOPES], const kms_config *c)
{
    ratelimit_set(rl[RL_DEVICE], c->rate_limit_device, c->rate_limit_device_burst);
    ratelimit_set(rl[RL_CLIENT], c->rate_limit_client, c->rate_limit_client_burst);
    ratelimit_set(rl[RL_ADMIN], c->rate_limit_admin, c->rate_limit_admin_burst);
}

void ratelimit_free_all(ratelimit *rl[RL_NSCOPES])
{
    for (int i = 0; i < RL_NSCOPES; i++) {
        ratelimit_free(rl[i]);
        rl[i] = NULL;
    }
}

void ratelimit_metrics_render(void *scopes, FILE *f)
{
    ratelimit *const *rl = scopes;
    ratelimit_stats s[RL_NSCOPES];
    for (int i = 0; i < RL_NSCOPES; i++)
        ratelimit_stats_get(rl[i], &s[i]);
    fprintf(f, "# HELP qkms_rate_limited_total Requests refused with 429 rate_limited, by scope.\n"
               "# TYPE qkms_rate_limited_total counter\n");
    for (int i = 0; i < RL_NSCOPES; i++)
        fprintf(f, "qkms_rate_limited_total{scope=\"%s\"} %llu\n", ratelimit_scope_names[i],
                (unsigned long long)s[i].limited);
    fprintf(f, "# HELP qkms_rate_limit_buckets Rate-limit buckets in use, by scope.\n"
               "# TYPE qkms_rate_limit_buckets gauge\n");
    for (int i = 0; i < RL_NSCOPES; i++)
        fprintf(f, "qkms_rate_limit_buckets{scope=\"%s\"} %zu\n", ratelimit_scope_names[i],
                s[i].buckets);
    fprintf(f, "# HELP qkms_rate_limit_evictions_total Buckets dropped before refilling because "
               "the table was full (raise rate_limit_buckets if this grows).\n"
               "# TYPE qkms_rate_limit_evictions_total counter\n");
    for (int i = 0; i < RL_NSCOPES; i++)
        fprintf(f, "qkms_rate_limit_evictions_total{scope=\"%s\"} %llu\n",
                ratelimit_scope_names[i], (unsigned long long)s[i].evictions);
}
