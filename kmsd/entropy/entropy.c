/* entropy — health-tested sources, refill pool, CTR-DRBG or direct output, policy. */
#include "entropy/entropy.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "deadline.h"
#include "entropy/entropy_source.h"
#include "log.h"
#include "entropy/sp800_90b.h"

#define MAX_SOURCES 6
#define STARTUP_SAMPLES 1024
#define SEED_LEN 48 /* AES-256 CTR-DRBG seed length */
#define BACKOFF_MIN_MS 250

typedef enum { SRC_STARTING, SRC_OK, SRC_QUARANTINED, SRC_DISABLED } src_state;
static const char *const state_names[] = {"starting", "ok", "quarantined", "disabled"};

typedef struct {
    esrc *s;
    /* Held across a fallback source's read (sources are used by one thread
     * at a time), never together with a lock key generation needs: e->mu is
     * taken only around the state check before and the health test after. */
    pthread_mutex_t io;
    char name[16];
    bool primary;
    src_state state;
    hc_state hc;
    uint64_t bytes, rct_failures, apt_failures, errors;
    int consecutive;
    int backoff_ms;
    double next_try;
    char last_error[160];
    char prov_drbg[48], prov_direct[48], prov_fallback[48];
} source;

struct entropy {
    const kms_config *cfg;
    hc_params hp;
    source src[MAX_SOURCES];
    int n;
    bool require, direct;

    pthread_mutex_t mu; /* sources' state, the pool */
    pthread_cond_t refill, data;
    uint8_t *pool; /* secure heap ring buffer */
    size_t cap, head, len;
    /* A wait for the pool timed out and no primary data has come since: the
     * primary is stalled (a slow read in flight). Later requests do not wait
     * again but go straight to the policy, so a stalled feed costs one
     * entropy_wait_ms, not one per request. Cleared by pool_put. */
    bool starved;
    pthread_t thread;
    bool stop, thread_started;

    pthread_mutex_t drbg_mu;
    EVP_RAND *rand;
    EVP_RAND_CTX *drbg;
    bool drbg_ready;
    _Atomic bool force_reseed; /* set by the refill thread, read by requests */
    uint64_t since_reseed, reseeds, fallback_served;
    double last_reseed;
};

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

int entropy_block_looks_stuck(const uint8_t *buf, size_t len)
{
    if (len < 16)
        return 0;
    for (size_t i = 1; i < len; i++)
        if (buf[i] != buf[0])
            return 0;
    return 1;
}

/* ---- source state (callers hold e->mu) ------------------------------------- */

static void transition(source *s, src_state to, const char *why)
{
    src_state from = s->state;
    s->state = to;
    if (from != to)
        log_emit(to == SRC_OK ? LOG_INFO : LOG_WARN, "entropy source state changed",
                 "{s:s,s:s,s:s,s:s,s:s}", "source", s->name, "from", state_names[from], "to",
                 state_names[to], "reason", why ? why : "", "role",
                 s->primary ? "primary" : "fallback");
}

static void source_failed(entropy *e, source *s, const char *why, bool health)
{
    snprintf(s->last_error, sizeof(s->last_error), "%s", why);
    if (!health)
        s->errors++;
    s->consecutive++;
    s->backoff_ms = s->backoff_ms ? s->backoff_ms * 2 : BACKOFF_MIN_MS;
    if (s->backoff_ms > e->cfg->entropy_retry_max * 1000)
        s->backoff_ms = e->cfg->entropy_retry_max * 1000;
    s->next_try = now_s() + s->backoff_ms / 1000.0;
    transition(s, s->consecutive >= e->cfg->entropy_failure_limit ? SRC_DISABLED : SRC_QUARANTINED,
               why);
}

/* Test freshly read bytes. A source (re)starting must first pass the
 * start-up test over >= 1024 samples; afterwards every byte goes through
 * the continuous tests. Returns true when buf may be used. */
static bool health_check(entropy *e, source *s, const uint8_t *buf, size_t n)
{
    size_t at = 0;
    hc_result r;
    if (s->state != SRC_OK) {
        int sr = hc_startup(&e->hp, buf, n);
        if (sr != HC_OK) {
            if (sr == HC_FAIL_APT)
                s->apt_failures++;
            else if (sr == HC_FAIL_RCT)
                s->rct_failures++;
            source_failed(e, s, sr == HC_FAIL_APT ? "start-up adaptive proportion test failed"
                                : sr == HC_FAIL_RCT ? "start-up repetition count test failed"
                                                    : "too few samples for the start-up test",
                          sr == HC_FAIL_APT || sr == HC_FAIL_RCT);
            return false;
        }
        hc_init(&s->hc, &e->hp);
    }
    r = hc_feed(&s->hc, buf, n, &at);
    if (r != HC_OK) {
        if (r == HC_FAIL_RCT)
            s->rct_failures++;
        else
            s->apt_failures++;
        source_failed(e, s, r == HC_FAIL_RCT ? "repetition count test failed"
                                             : "adaptive proportion test failed",
                      true);
        return false;
    }
    if (s->state != SRC_OK)
        e->force_reseed = true; /* the DRBG takes fresh primary input first */
    s->consecutive = 0;
    s->backoff_ms = 0;
    s->bytes += n;
    transition(s, SRC_OK, "health tests passed");
    return true;
}

/* ---- the pool -------------------------------------------------------------- */

/* Append; when full, the oldest bytes make room (fresher data wins). */
static void pool_put(entropy *e, const uint8_t *buf, size_t n)
{
    if (n)
        e->starved = false;
    for (size_t i = 0; i < n; i++) {
        if (e->len == e->cap) {
            e->pool[e->head] = 0;
            e->head = (e->head + 1) % e->cap;
            e->len--;
        }
        e->pool[(e->head + e->len) % e->cap] = buf[i];
        e->len++;
    }
}

static void pool_flush(entropy *e)
{
    OPENSSL_cleanse(e->pool, e->cap);
    e->head = e->len = 0;
}

/* Take exactly n bytes, waiting up to wait_ms for the refill thread; 0 or -1. */
static int pool_take(entropy *e, uint8_t *buf, size_t n, int wait_ms)
{
    struct timespec dl = deadline_in_ms(wait_ms);
    int rc = -1;
    pthread_mutex_lock(&e->mu);
    while (e->len < n && e->src[0].state == SRC_OK && !e->stop && !e->starved) {
        pthread_cond_signal(&e->refill);
        if (pthread_cond_timedwait(&e->data, &e->mu, &dl) == ETIMEDOUT) {
            e->starved = e->len < n;
            break;
        }
    }
    if (e->len >= n && e->src[0].state == SRC_OK) {
        for (size_t i = 0; i < n; i++) {
            buf[i] = e->pool[e->head];
            e->pool[e->head] = 0;
            e->head = (e->head + 1) % e->cap;
        }
        e->len -= n;
        rc = 0;
    }
    if (e->len < (size_t)e->cfg->entropy_pool_low)
        pthread_cond_signal(&e->refill);
    pthread_mutex_unlock(&e->mu);
    return rc;
}

static void *refill_loop(void *arg)
{
    entropy *e = arg;
    source *p = &e->src[0];
    size_t chunk = (size_t)e->cfg->entropy_pool_high;
    uint8_t *buf = OPENSSL_secure_malloc(chunk);
    double last_read = 0;

    pthread_mutex_lock(&e->mu);
    while (buf && !e->stop) {
        double wait = 0;
        char err[160] = "";
        long n;
        if (p->state == SRC_DISABLED) {
            wait = 1.0;
        } else if (p->state == SRC_QUARANTINED && now_s() < p->next_try) {
            wait = p->next_try - now_s();
        } else if (e->len >= (size_t)e->cfg->entropy_pool_low && p->state == SRC_OK) {
            /* Full enough: sleep until a consumer drains it, but probe the
             * source every entropy_probe_interval so its health is known
             * even when little is drawn (the fresh bytes replace old ones). */
            wait = last_read + e->cfg->entropy_probe_interval - now_s();
            if (wait > 1.0)
                wait = 1.0;
        }
        if (wait > 0) {
            struct timespec dl = deadline_in_ms((long)(wait * 1000.0));
            pthread_cond_timedwait(&e->refill, &e->mu, &dl);
            continue;
        }
        /* Read outside the lock: it may take a network round trip. */
        size_t want = e->cap - e->len;
        if (want < (size_t)e->cfg->entropy_pool_low)
            want = (size_t)e->cfg->entropy_pool_low; /* a probe of a full pool */
        if (want > chunk)
            want = chunk;
        last_read = now_s();
        if (p->state != SRC_OK && want < STARTUP_SAMPLES)
            want = STARTUP_SAMPLES;
        pthread_mutex_unlock(&e->mu);
        size_t got = 0;
        while (got < want) {
            n = p->s->ops->read(p->s, buf + got, want - got, err, sizeof(err));
            if (n <= 0)
                break;
            got += (size_t)n;
            if (p->state == SRC_OK)
                break; /* steady state: take what one read gives */
        }
        pthread_mutex_lock(&e->mu);
        if (got == 0 || (p->state != SRC_OK && got < STARTUP_SAMPLES)) {
            source_failed(e, p, err[0] ? err : "short read", false);
            pthread_cond_broadcast(&e->data);
        } else if (health_check(e, p, buf, got)) {
            pool_put(e, buf, got);
            pthread_cond_broadcast(&e->data);
        } else {
            /* Data that failed a test is never used, nor what was pooled
             * just before it from the same source. */
            pool_flush(e);
            pthread_cond_broadcast(&e->data);
        }
        OPENSSL_cleanse(buf, got);
    }
    pthread_mutex_unlock(&e->mu);
    if (buf)
        OPENSSL_secure_clear_free(buf, chunk);
    return NULL;
}

/* ---- fallback sources (read synchronously by the request) -------------------- */

/* Read exactly len bytes from s, or fewer on a failure (reason in err).
 * The caller holds s->io, not e->mu: this may take a source's timeout. */
static size_t read_full(source *s, uint8_t *buf, size_t len, char *err, size_t el)
{
    size_t got = 0;
    while (got < len) {
        long n = s->s->ops->read(s->s, buf + got, len - got, err, el);
        if (n <= 0)
            break;
        got += (size_t)n;
    }
    return got;
}

/* Caller holds e->mu. */
static bool source_usable(const source *s)
{
    return s->state != SRC_DISABLED && !(s->state == SRC_QUARANTINED && now_s() < s->next_try);
}

/* Serve len tested bytes from fallback s: 0, or -1 (buf wiped). Waits at
 * most entropy_wait_ms for another request's read of the same source (a
 * slow one: the next fallback serves instead). e->mu is held only to read
 * the state and to test what was read, so a slow fallback stalls neither
 * the pool, nor the other sources, nor /readyz and the status. */
static int fallback_try(entropy *e, source *s, uint8_t *buf, size_t len)
{
    struct timespec dl = deadline_in_ms(e->cfg->entropy_wait_ms);
    uint8_t start[STARTUP_SAMPLES];
    char err[160] = "";
    bool usable, starting, ok = false;
    size_t got;

    pthread_mutex_lock(&e->mu);
    usable = source_usable(s);
    pthread_mutex_unlock(&e->mu);
    if (!usable || pthread_mutex_clocklock(&s->io, CLOCK_MONOTONIC, &dl) != 0)
        return -1; /* skipped at once while quarantined, without the io lock */
    pthread_mutex_lock(&e->mu);
    usable = source_usable(s);
    starting = s->state != SRC_OK;
    pthread_mutex_unlock(&e->mu);
    if (!usable)
        goto out;
    if (starting) {
        /* Start-up test on a separate sample before first use. */
        got = read_full(s, start, sizeof(start), err, sizeof(err));
        pthread_mutex_lock(&e->mu);
        if (got < sizeof(start))
            source_failed(e, s, err[0] ? err : "short read", false);
        usable = got == sizeof(start) && health_check(e, s, start, got);
        pthread_mutex_unlock(&e->mu);
        OPENSSL_cleanse(start, sizeof(start));
        if (!usable)
            goto out;
    }
    got = read_full(s, buf, len, err, sizeof(err));
    pthread_mutex_lock(&e->mu);
    if (got < len)
        source_failed(e, s, err[0] ? err : "short read", false);
    else if (health_check(e, s, buf, len))
        ok = true;
    if (ok)
        e->fallback_served++;
    pthread_mutex_unlock(&e->mu);
out:
    if (!ok)
        OPENSSL_cleanse(buf, len);
    pthread_mutex_unlock(&s->io);
    return ok ? 0 : -1;
}

static int fallback_read(entropy *e, uint8_t *buf, size_t len, const char **prov)
{
    for (int i = 1; i < e->n; i++)
        if (fallback_try(e, &e->src[i], buf, len) == 0) {
            *prov = e->src[i].prov_fallback;
            return 0;
        }
    return -1;
}

/* ---- serving ------------------------------------------------------------------ */

static bool primary_ok(entropy *e)
{
    pthread_mutex_lock(&e->mu);
    bool ok = e->src[0].state == SRC_OK;
    pthread_mutex_unlock(&e->mu);
    return ok;
}

/* Caller holds drbg_mu. */
static bool drbg_needs_reseed(entropy *e, size_t len)
{
    const kms_config *c = e->cfg;
    return e->force_reseed || c->entropy_prediction_resistance || !e->drbg_ready ||
           e->since_reseed + len > (uint64_t)c->entropy_reseed_bytes ||
           now_s() - e->last_reseed >= c->entropy_reseed_interval;
}

/* Caller holds drbg_mu; seed is fresh tested primary output. */
static int drbg_reseed(entropy *e, const uint8_t *seed)
{
    if (!e->drbg_ready) {
        /* Instantiation draws OpenSSL's own seed; the reseed right after
         * puts our tested primary input in. */
        if (EVP_RAND_instantiate(e->drbg, 256, 0, (const unsigned char *)"qkms", 4, NULL) != 1)
            return -1;
        e->drbg_ready = true;
    }
    if (EVP_RAND_reseed(e->drbg, 0, seed, SEED_LEN, NULL, 0) != 1) {
        log_emit(LOG_ERROR, "DRBG reseed failed", NULL);
        return -1;
    }
    e->since_reseed = 0;
    e->last_reseed = now_s();
    e->reseeds++;
    e->force_reseed = false;
    return 0;
}

/* The seed is taken from the pool without drbg_mu held: a request waiting
 * for a slow primary must not hold up requests the DRBG can serve now.
 * Whoever finds a reseed due fetches a seed, then takes drbg_mu; at most
 * two rounds, since the second always has a seed in hand. */
static int drbg_get(entropy *e, uint8_t *buf, size_t len, const char **prov)
{
    uint8_t seed[SEED_LEN];
    bool have_seed = false;
    int rc = -1;

    for (int round = 0; round < 2; round++) {
        pthread_mutex_lock(&e->drbg_mu);
        if (have_seed || !drbg_needs_reseed(e, len))
            break; /* with drbg_mu held */
        pthread_mutex_unlock(&e->drbg_mu);
        if (pool_take(e, seed, sizeof(seed), e->cfg->entropy_wait_ms) != 0)
            goto out_unlocked;
        have_seed = true;
    }
    if (have_seed && drbg_reseed(e, seed) != 0)
        goto out;
    for (size_t off = 0; off < len;) {
        size_t n = len - off > 4096 ? 4096 : len - off;
        if (EVP_RAND_generate(e->drbg, buf + off, n, 256, 0, NULL, 0) != 1)
            goto out;
        off += n;
    }
    e->since_reseed += len;
    *prov = e->src[0].prov_drbg;
    rc = 0;
out:
    pthread_mutex_unlock(&e->drbg_mu);
out_unlocked:
    OPENSSL_cleanse(seed, sizeof(seed));
    if (rc != 0)
        OPENSSL_cleanse(buf, len);
    return rc;
}

/* Conditioned primary output: SHA-256 over more raw input than output
 * entropy (256 + 64 bits), per 32-byte block (SP 800-90B 3.1.5). */
static int direct_get(entropy *e, uint8_t *buf, size_t len, const char **prov)
{
    size_t raw_len = (size_t)ceil((256.0 + 64.0) / e->cfg->entropy_min_entropy);
    uint8_t raw[64 * 8], md[32];
    unsigned int mdl = 0;
    int rc = 0;
    if (raw_len > sizeof(raw))
        raw_len = sizeof(raw);
    for (size_t off = 0; off < len && rc == 0; off += 32) {
        if (pool_take(e, raw, raw_len, e->cfg->entropy_wait_ms) != 0 ||
            EVP_Digest(raw, raw_len, md, &mdl, EVP_sha256(), NULL) != 1) {
            rc = -1;
            break;
        }
        memcpy(buf + off, md, len - off < 32 ? len - off : 32);
    }
    OPENSSL_cleanse(raw, sizeof(raw));
    OPENSSL_cleanse(md, sizeof(md));
    if (rc == 0)
        *prov = e->src[0].prov_direct;
    else
        OPENSSL_cleanse(buf, len);
    return rc;
}

int entropy_get(entropy *e, uint8_t *buf, size_t len, const char **provenance)
{
    const char *prov = NULL;
    int rc = -1;
    if (primary_ok(e))
        rc = e->direct ? direct_get(e, buf, len, &prov) : drbg_get(e, buf, len, &prov);
    if (rc != 0 && !e->require) {
        rc = fallback_read(e, buf, len, &prov);
        if (rc == 0)
            log_emit(LOG_WARN, "entropy served by a fallback source", "{s:s,s:s}", "provenance",
                     prov, "primary_state", state_names[e->src[0].state]);
    }
    if (rc == 0 && provenance)
        *provenance = prov;
    return rc;
}

int entropy_get_secret(entropy *e, uint8_t *buf, size_t len)
{
    const char *prov;
    if (entropy_get(e, buf, len, &prov) == 0)
        return 0;
    return fallback_read(e, buf, len, &prov);
}

int entropy_ready(entropy *e, char *why, size_t wl)
{
    int ok = 0;
    pthread_mutex_lock(&e->mu);
    if (e->src[0].state == SRC_OK || e->src[0].state == SRC_STARTING)
        ok = 1;
    else if (!e->require)
        for (int i = 1; i < e->n; i++)
            ok = ok || e->src[i].state != SRC_DISABLED;
    if (!ok)
        snprintf(why, wl, "%s source %s is %s (%s)", e->require ? "required" : "every",
                 e->src[0].name, state_names[e->src[0].state], e->src[0].last_error);
    pthread_mutex_unlock(&e->mu);
    return ok ? 0 : -1;
}

int entropy_enable(entropy *e, const char *name)
{
    int rc = -1;
    pthread_mutex_lock(&e->mu);
    for (int i = 0; i < e->n; i++)
        if (!strcmp(e->src[i].name, name)) {
            e->src[i].consecutive = 0;
            e->src[i].backoff_ms = 0;
            e->src[i].next_try = 0;
            if (e->src[i].state == SRC_DISABLED)
                transition(&e->src[i], SRC_QUARANTINED, "re-enabled by an operator");
            rc = 0;
        }
    pthread_cond_signal(&e->refill);
    pthread_mutex_unlock(&e->mu);
    return rc;
}

/* ---- lifecycle ----------------------------------------------------------------- */

/* The next source of entropy_sources, by name. 0, or -1 with err set. */
static int add_source(entropy *e, const char *tok, const kms_config *cfg, p11_token *token,
                      char *err, size_t el)
{
    source *s = &e->src[e->n];
    if (e->n == MAX_SOURCES) {
        snprintf(err, el, "entropy_sources: too many sources");
        return -1;
    }
    for (int i = 0; i < e->n; i++)
        if (!strcmp(e->src[i].name, tok)) {
            snprintf(err, el, "entropy_sources: '%s' listed twice", tok);
            return -1;
        }
    if (esrc_create(&s->s, tok, cfg, token, err, el) != 0)
        return -1;
    pthread_mutex_init(&s->io, NULL);
    snprintf(s->name, sizeof(s->name), "%s", tok);
    s->primary = e->n == 0;
    s->state = SRC_STARTING;
    snprintf(s->prov_drbg, sizeof(s->prov_drbg), "%s+ctr-drbg", tok);
    snprintf(s->prov_direct, sizeof(s->prov_direct), "%s (direct)", tok);
    snprintf(s->prov_fallback, sizeof(s->prov_fallback), "%s (fallback)", tok);
    e->n++;
    return 0;
}

/* The refill pool (secure heap) and the AES-256 CTR-DRBG. 0, or -1. */
static int pool_and_drbg(entropy *e, char *err, size_t el)
{
    OSSL_PARAM p[2] = {OSSL_PARAM_construct_utf8_string(OSSL_DRBG_PARAM_CIPHER,
                                                        (char *)"AES-256-CTR", 0),
                       OSSL_PARAM_construct_end()};
    e->cap = (size_t)e->cfg->entropy_pool_high;
    e->pool = OPENSSL_secure_zalloc(e->cap);
    e->rand = EVP_RAND_fetch(NULL, "CTR-DRBG", NULL);
    e->drbg = e->rand ? EVP_RAND_CTX_new(e->rand, NULL) : NULL;
    if (!e->pool || !e->drbg) {
        snprintf(err, el, "cannot allocate the entropy pool or the CTR-DRBG");
        return -1;
    }
    if (EVP_RAND_CTX_set_params(e->drbg, p) != 1) {
        snprintf(err, el, "cannot configure CTR-DRBG with AES-256");
        return -1;
    }
    return 0;
}

int entropy_open(entropy **out, const kms_config *cfg, p11_token *token, char *err, size_t el)
{
    entropy *e = calloc(1, sizeof(*e));
    char *copy = strdup(cfg->entropy_sources), *save = NULL, *tok;
    int rc = -1;

    if (!e || !copy) {
        snprintf(err, el, "out of memory");
        goto out;
    }
    e->cfg = cfg;
    e->require = !strcmp(cfg->entropy_policy, "require");
    e->direct = !strcmp(cfg->entropy_mode, "direct");
    pthread_mutex_init(&e->mu, NULL);
    pthread_mutex_init(&e->drbg_mu, NULL);
    deadline_cond_init(&e->refill);
    deadline_cond_init(&e->data);
    if (hc_params_compute(cfg->entropy_min_entropy, cfg->entropy_health_alpha_log2, &e->hp) != 0) {
        snprintf(err, el, "entropy_min_entropy/entropy_health_alpha_log2 out of range");
        goto out;
    }
    for (tok = strtok_r(copy, ", ", &save); tok; tok = strtok_r(NULL, ", ", &save))
        if (add_source(e, tok, cfg, token, err, el) != 0)
            goto out;
    if (e->n == 0) {
        snprintf(err, el, "entropy_sources: no source configured");
        goto out;
    }
    if (pool_and_drbg(e, err, el) != 0)
        goto out;
    for (int i = 0; i < e->n; i++)
        if (e->src[i].s->ops->open(e->src[i].s, err, el) != 0)
            log_emit(LOG_WARN, "entropy source not available yet", "{s:s,s:s}", "source",
                     e->src[i].name, "error", err);
    if (pthread_create(&e->thread, NULL, refill_loop, e) != 0) {
        snprintf(err, el, "cannot start the entropy refill thread");
        goto out;
    }
    e->thread_started = true;
    {
        /* Give the primary its start-up test before the first key is asked
         * for (the bootstrap token comes next), bounded by its timeout. */
        struct timespec dl = deadline_in_ms(cfg->entropy_http_timeout_ms + 500);
        pthread_mutex_lock(&e->mu);
        while (e->src[0].state == SRC_STARTING &&
               pthread_cond_timedwait(&e->data, &e->mu, &dl) != ETIMEDOUT)
            ;
        pthread_mutex_unlock(&e->mu);
    }
    log_emit(LOG_INFO, "entropy ready", "{s:s,s:s,s:s,s:f,s:i,s:i,s:i}", "sources",
             cfg->entropy_sources, "policy", cfg->entropy_policy, "mode", cfg->entropy_mode, "h",
             cfg->entropy_min_entropy, "alpha_log2", cfg->entropy_health_alpha_log2, "rct_cutoff",
             e->hp.rct_cutoff, "apt_cutoff", e->hp.apt_cutoff);
    *out = e;
    e = NULL;
    rc = 0;
out:
    free(copy);
    entropy_close(e);
    return rc;
}

void entropy_close(entropy *e)
{
    if (!e)
        return;
    if (e->thread_started) {
        pthread_mutex_lock(&e->mu);
        e->stop = true;
        pthread_cond_broadcast(&e->refill);
        pthread_cond_broadcast(&e->data);
        pthread_mutex_unlock(&e->mu);
        pthread_join(e->thread, NULL);
    }
    for (int i = 0; i < e->n; i++) {
        esrc_destroy(e->src[i].s);
        pthread_mutex_destroy(&e->src[i].io);
    }
    if (e->pool)
        OPENSSL_secure_clear_free(e->pool, e->cap);
    EVP_RAND_CTX_free(e->drbg);
    EVP_RAND_free(e->rand);
    pthread_mutex_destroy(&e->mu);
    pthread_mutex_destroy(&e->drbg_mu);
    pthread_cond_destroy(&e->refill);
    pthread_cond_destroy(&e->data);
    free(e);
}

/* ---- status ---------------------------------------------------------------------- */

json_t *entropy_status(entropy *e, bool full)
{
    json_t *srcs = json_array(), *out;
    pthread_mutex_lock(&e->mu);
    for (int i = 0; i < e->n; i++) {
        source *s = &e->src[i];
        json_array_append_new(
            srcs, json_pack("{s:s,s:s,s:s,s:s,s:I,s:I,s:I,s:I,s:i,s:s}", "name", s->name, "role",
                            s->primary ? "primary" : "fallback", "describe", full ? s->s->describe : s->s->describe_public,
                            "state", state_names[s->state], "bytes", (json_int_t)s->bytes,
                            "health_failures_rct", (json_int_t)s->rct_failures,
                            "health_failures_apt", (json_int_t)s->apt_failures, "errors",
                            (json_int_t)s->errors, "consecutive_failures", s->consecutive,
                            "last_error", s->last_error));
    }
    out = json_pack("{s:s,s:s,s:{s:I,s:i,s:i},s:{s:f,s:i,s:i,s:i},s:o,s:I}", "policy",
                    e->cfg->entropy_policy, "mode", e->cfg->entropy_mode, "pool", "bytes",
                    (json_int_t)e->len, "low", e->cfg->entropy_pool_low, "high",
                    e->cfg->entropy_pool_high, "health_tests", "min_entropy_per_byte", e->hp.h,
                    "alpha_log2", e->hp.alpha_log2, "rct_cutoff", e->hp.rct_cutoff, "apt_cutoff",
                    e->hp.apt_cutoff, "sources", srcs, "fallback_served",
                    (json_int_t)e->fallback_served);
    pthread_mutex_unlock(&e->mu);
    pthread_mutex_lock(&e->drbg_mu);
    json_object_set_new(out, "drbg",
                        json_pack("{s:b,s:I,s:I}", "instantiated", e->drbg_ready, "reseeds",
                                  (json_int_t)e->reseeds, "bytes_since_reseed",
                                  (json_int_t)e->since_reseed));
    pthread_mutex_unlock(&e->drbg_mu);
    return out;
}

void entropy_metrics_render(void *ent, FILE *f)
{
    entropy *e = ent;
    pthread_mutex_lock(&e->mu);
    fprintf(f, "# HELP qkms_entropy_bytes_total Health-tested bytes taken from each source.\n"
               "# TYPE qkms_entropy_bytes_total counter\n");
    for (int i = 0; i < e->n; i++)
        fprintf(f, "qkms_entropy_bytes_total{source=\"%s\"} %llu\n", e->src[i].name,
                (unsigned long long)e->src[i].bytes);
    fprintf(f, "# HELP qkms_entropy_health_failures_total SP 800-90B health-test failures.\n"
               "# TYPE qkms_entropy_health_failures_total counter\n");
    for (int i = 0; i < e->n; i++)
        fprintf(f,
                "qkms_entropy_health_failures_total{source=\"%s\",test=\"repetition_count\"} %llu\n"
                "qkms_entropy_health_failures_total{source=\"%s\",test=\"adaptive_proportion\"} %llu\n",
                e->src[i].name, (unsigned long long)e->src[i].rct_failures, e->src[i].name,
                (unsigned long long)e->src[i].apt_failures);
    fprintf(f, "# HELP qkms_entropy_failures_total Failed reads (transport) per source.\n"
               "# TYPE qkms_entropy_failures_total counter\n");
    for (int i = 0; i < e->n; i++)
        fprintf(f, "qkms_entropy_failures_total{source=\"%s\"} %llu\n", e->src[i].name,
                (unsigned long long)e->src[i].errors);
    fprintf(f, "# HELP qkms_entropy_source_state 1 for the state each source is in.\n"
               "# TYPE qkms_entropy_source_state gauge\n");
    for (int i = 0; i < e->n; i++)
        for (int st = 0; st < 4; st++)
            fprintf(f, "qkms_entropy_source_state{source=\"%s\",role=\"%s\",state=\"%s\"} %d\n",
                    e->src[i].name, e->src[i].primary ? "primary" : "fallback", state_names[st],
                    e->src[i].state == (src_state)st);
    fprintf(f,
            "# HELP qkms_entropy_pool_bytes Health-tested primary bytes waiting in the pool.\n"
            "# TYPE qkms_entropy_pool_bytes gauge\nqkms_entropy_pool_bytes %zu\n"
            "# HELP qkms_entropy_fallback_served_total Requests served by a fallback source.\n"
            "# TYPE qkms_entropy_fallback_served_total counter\nqkms_entropy_fallback_served_total %llu\n",
            e->len, (unsigned long long)e->fallback_served);
    pthread_mutex_unlock(&e->mu);
    pthread_mutex_lock(&e->drbg_mu);
    fprintf(f, "# HELP qkms_entropy_drbg_reseeds_total CTR-DRBG reseeds from the primary.\n"
               "# TYPE qkms_entropy_drbg_reseeds_total counter\nqkms_entropy_drbg_reseeds_total %llu\n",
            (unsigned long long)e->reseeds);
    pthread_mutex_unlock(&e->drbg_mu);
}
