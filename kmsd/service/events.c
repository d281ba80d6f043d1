/*
 * events — reading the outbox and delivering it to webhooks (events.h).
 * The worker thread holds a webhook's cursor row locked for one batch (one
 * transaction, a pooled connection) while it POSTs, so two instances never
 * deliver one webhook's events at once; the HTTP timeout bounds the hold.
 */
#include "service/events.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <curl/curl.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/core_names.h>
#include <openssl/params.h>

#include "deadline.h"
#include "hexutil.h"
#include "log.h"
#include "service/audit.h"
#include "store/pgjson.h"
#include "store/queries.h"

#define EVENTS_BATCH 20
#define EVENTS_HTTP_TIMEOUT_MS 5000L
#define EVENTS_MAX_URLS 8
#define EVENTS_BACKOFF_MAX_S 300

static json_t *event_json(const PGresult *r, int i)
{
    json_t *detail = json_loads(PQgetvalue(r, i, 5), 0, NULL);
    return json_pack("{s:I,s:o,s:o,s:o,s:o,s:o}", "id", (json_int_t)atoll(PQgetvalue(r, i, 0)),
                     "event_id", pgjson_text(r, i, 1), "type", pgjson_text(r, i, 2), "device_id",
                     pgjson_text(r, i, 3), "created_at", pgjson_time(r, i, 4), "detail",
                     detail ? detail : json_object());
}

qk_kind events_list(qk_svc *s, long long app_id, long long after, int limit, json_t **out,
                    qk_err *e)
{
    char sa[24], saft[24], slim[16];
    const char *vals[3] = {app_id > 0 ? sa : NULL, saft, slim};
    db_status st;
    PGresult *r;
    json_t *arr;
    int n;

    *out = NULL;
    snprintf(sa, sizeof(sa), "%lld", app_id);
    snprintf(saft, sizeof(saft), "%lld", after);
    snprintf(slim, sizeof(slim), "%d", limit);
    if (!(r = db_query(s->db, Q_EVENTS_LIST, 3, vals, NULL, NULL, &st)))
        return db_fail(e, st);
    arr = json_array();
    n = PQntuples(r);
    for (int i = 0; i < n; i++)
        json_array_append_new(arr, event_json(r, i));
    *out = json_pack("{s:o,s:o}", "events", arr, "next",
                     n == limit && n > 0 ? json_integer(atoll(PQgetvalue(r, n - 1, 0)))
                                         : json_null());
    PQclear(r);
    return QK_OK;
}

/* The configured URLs (webhook_urls, comma-separated) into urls; how many. */
static int split_urls(const char *list, char urls[][512], int max)
{
    int n = 0;
    while (list && *list && n < max) {
        size_t len = strcspn(list, ",");
        while (len > 0 && (*list == ' ')) {
            list++;
            len--;
        }
        if (len > 0 && len < 512) {
            snprintf(urls[n], 512, "%.*s", (int)len, list);
            while (strlen(urls[n]) && urls[n][strlen(urls[n]) - 1] == ' ')
                urls[n][strlen(urls[n]) - 1] = 0;
            n++;
        }
        list += len;
        if (*list == ',')
            list++;
    }
    return n;
}

qk_kind events_webhooks(qk_svc *s, json_t **out, qk_err *e)
{
    char urls[EVENTS_MAX_URLS][512];
    int n = split_urls(s->cfg->webhook_urls, urls, EVENTS_MAX_URLS);
    json_t *arr = json_array();

    *out = NULL;
    for (int i = 0; i < n; i++) {
        const char *vals[1] = {urls[i]};
        db_status st;
        PGresult *r = db_query(s->db, Q_WEBHOOK_GET, 1, vals, NULL, NULL, &st);
        if (!r) {
            json_decref(arr);
            return db_fail(e, st);
        }
        json_array_append_new(
            arr, PQntuples(r) == 1
                     ? json_pack("{s:s,s:I,s:i,s:o,s:o,s:I}", "url", urls[i], "last_event",
                                 (json_int_t)atoll(PQgetvalue(r, 0, 0)), "attempts",
                                 atoi(PQgetvalue(r, 0, 1)), "next_at", pgjson_time(r, 0, 2),
                                 "last_error", pgjson_text(r, 0, 3), "delivered",
                                 (json_int_t)atoll(PQgetvalue(r, 0, 4)))
                     : json_pack("{s:s,s:i,s:i,s:n,s:n,s:i}", "url", urls[i], "last_event", 0,
                                 "attempts", 0, "next_at", "last_error", "delivered", 0));
        PQclear(r);
    }
    *out = json_pack("{s:o}", "webhooks", arr);
    return QK_OK;
}

struct replay_tx {
    const char *actor, *after, *urls_lit;
    int n;
};

static db_status replay_tx_fn(db_conn *c, void *arg)
{
    struct replay_tx *t = arg;
    const char *vals[2] = {t->urls_lit, t->after};
    db_status st;
    PGresult *r = db_exec(c, Q_WEBHOOK_REPLAY, 2, vals, NULL, NULL, &st);
    if (!r)
        return st;
    PQclear(r);
    return audit_append(c, t->actor, "events.replayed", NULL,
                        json_pack("{s:I,s:i}", "after", (json_int_t)atoll(t->after), "webhooks",
                                  t->n));
}

qk_kind events_replay(qk_svc *s, const qk_principal *who, long long after, qk_err *e)
{
    char urls[EVENTS_MAX_URLS][512], saft[24];
    int n = split_urls(s->cfg->webhook_urls, urls, EVENTS_MAX_URLS);
    json_t *arr = json_array();
    char *lit;
    struct replay_tx t;
    db_status st;

    for (int i = 0; i < n; i++)
        json_array_append_new(arr, json_string(urls[i]));
    lit = json_dumps(arr, JSON_COMPACT);
    json_decref(arr);
    if (!lit)
        return qk_fail(e, QK_INTERNAL, "internal", "out of memory");
    snprintf(saft, sizeof(saft), "%lld", after);
    t = (struct replay_tx){who->name, saft, lit, n};
    st = db_tx(s->db, replay_tx_fn, &t);
    free(lit);
    if (st != DB_OK)
        return db_fail(e, st);
    log_with(&who->log, LOG_INFO, "events replayed", "{s:I,s:i,s:s}", "after", (json_int_t)after,
             "webhooks", n, "by", who->name);
    return QK_OK;
}

int events_sign(const uint8_t *secret, size_t secret_len, long long ts, const char *body,
                size_t body_len, char out[68])
{
    uint8_t mac[32];
    char prefix[32];
    int pl = snprintf(prefix, sizeof(prefix), "%lld.", ts);
    EVP_MAC *m = EVP_MAC_fetch(NULL, "HMAC", NULL);
    EVP_MAC_CTX *mc = m ? EVP_MAC_CTX_new(m) : NULL;
    OSSL_PARAM params[] = {OSSL_PARAM_construct_utf8_string("digest", "SHA256", 0),
                           OSSL_PARAM_construct_end()};
    size_t outl = 0;
    int rc = mc && EVP_MAC_init(mc, secret, secret_len, params) == 1 &&
                     EVP_MAC_update(mc, (const uint8_t *)prefix, (size_t)pl) == 1 &&
                     EVP_MAC_update(mc, (const uint8_t *)body, body_len) == 1 &&
                     EVP_MAC_final(mc, mac, &outl, sizeof(mac)) == 1 && outl == sizeof(mac)
                 ? 0
                 : -1;
    EVP_MAC_CTX_free(mc);
    EVP_MAC_free(m);
    if (rc == 0) {
        memcpy(out, "v1=", 3);
        qkms_hex_encode(mac, sizeof(mac), out + 3);
    }
    OPENSSL_cleanse(mac, sizeof(mac));
    return rc;
}

/* ---- the worker -------------------------------------------------------------- */

struct events_worker {
    qk_svc *s;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool stop;
    uint8_t *secret; /* secure heap */
    size_t secret_len;
    char urls[EVENTS_MAX_URLS][512];
    int nurls;
    CURL *curl;
    atomic_ullong delivered, failures;
};

static size_t discard(char *p, size_t size, size_t n, void *u)
{
    (void)p;
    (void)u;
    return size * n;
}

/* POST one event: 0 on a 2xx answer, else -1 with why. */
static int post_event(events_worker *w, const char *url, const char *event_id, const char *body,
                      char *why, size_t wl)
{
    char sig[68], h_sig[96], h_ts[48], h_id[80];
    long long ts = (long long)time(NULL);
    struct curl_slist *hdr = NULL;
    long status = 0;
    CURLcode cc;

    if (events_sign(w->secret, w->secret_len, ts, body, strlen(body), sig) != 0) {
        snprintf(why, wl, "signing failed");
        return -1;
    }
    snprintf(h_sig, sizeof(h_sig), "X-Qkms-Signature: %s", sig);
    snprintf(h_ts, sizeof(h_ts), "X-Qkms-Timestamp: %lld", ts);
    snprintf(h_id, sizeof(h_id), "X-Qkms-Event-Id: %s", event_id);
    hdr = curl_slist_append(hdr, "Content-Type: application/json");
    hdr = curl_slist_append(hdr, h_sig);
    hdr = curl_slist_append(hdr, h_ts);
    hdr = curl_slist_append(hdr, h_id);
    curl_easy_reset(w->curl);
    curl_easy_setopt(w->curl, CURLOPT_URL, url);
    curl_easy_setopt(w->curl, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(w->curl, CURLOPT_HTTPHEADER, hdr);
    curl_easy_setopt(w->curl, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(w->curl, CURLOPT_TIMEOUT_MS, EVENTS_HTTP_TIMEOUT_MS);
    curl_easy_setopt(w->curl, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(w->curl, CURLOPT_WRITEFUNCTION, discard);
    cc = curl_easy_perform(w->curl);
    if (cc == CURLE_OK)
        curl_easy_getinfo(w->curl, CURLINFO_RESPONSE_CODE, &status);
    curl_slist_free_all(hdr);
    if (cc != CURLE_OK) {
        snprintf(why, wl, "%s", curl_easy_strerror(cc));
        return -1;
    }
    if (status < 200 || status > 299) {
        snprintf(why, wl, "HTTP %ld", status);
        return -1;
    }
    return 0;
}

/* One batch for one webhook, in one transaction. */
static db_status deliver_batch(events_worker *w, const char *url)
{
    qk_svc *s = w->s;
    const char *vals[4] = {url};
    char last[24], lim[8], why[200] = "";
    db_status st;
    db_conn *c;
    PGresult *r = NULL, *ev = NULL;
    int n, sent = 0;

    if (!(c = db_acquire(s->db, &st)))
        return st;
    if ((r = db_exec(c, Q_WEBHOOK_ENSURE, 1, vals, NULL, NULL, &st)))
        PQclear(r);
    if ((st = db_command(c, "BEGIN")) != DB_OK)
        goto out;
    if (!(r = db_exec(c, Q_WEBHOOK_LOCK, 1, vals, NULL, NULL, &st)))
        goto rollback;
    if (PQntuples(r) != 1 || strcmp(PQgetvalue(r, 0, 2), "t") != 0) {
        /* Another instance has it, or its back-off has not passed. */
        PQclear(r);
        st = db_command(c, "COMMIT");
        goto out;
    }
    snprintf(last, sizeof(last), "%s", PQgetvalue(r, 0, 0));
    PQclear(r);
    r = NULL;
    snprintf(lim, sizeof(lim), "%d", EVENTS_BATCH);
    vals[0] = last;
    vals[1] = lim;
    if (!(ev = db_exec(c, Q_EVENTS_AFTER, 2, vals, NULL, NULL, &st)))
        goto rollback;
    n = PQntuples(ev);
    for (int i = 0; i < n; i++) {
        json_t *j = event_json(ev, i);
        char *body = j ? json_dumps(j, JSON_COMPACT) : NULL;
        int rc = body ? post_event(w, url, PQgetvalue(ev, i, 1), body, why, sizeof(why)) : -1;
        json_decref(j);
        free(body);
        if (rc != 0) {
            atomic_fetch_add(&w->failures, 1);
            log_emit(LOG_WARN, "event delivery failed; will retry", "{s:s,s:s,s:s}", "url", url,
                     "event_id", PQgetvalue(ev, i, 1), "error", why);
            break;
        }
        atomic_fetch_add(&w->delivered, 1);
        snprintf(last, sizeof(last), "%s", PQgetvalue(ev, i, 0));
        sent++;
    }
    {
        char ssent[16];
        const char *uv[4] = {url, last, ssent, why[0] ? why : NULL};
        snprintf(ssent, sizeof(ssent), "%d", sent);
        if (!(r = db_exec(c, Q_WEBHOOK_ADVANCE, 4, uv, NULL, NULL, &st)))
            goto rollback;
        PQclear(r);
        r = NULL;
    }
    st = db_command(c, "COMMIT");
    goto out;
rollback:
    db_command(c, "ROLLBACK");
out:
    PQclear(ev);
    db_release(s->db, c);
    return st;
}

static void *loop(void *arg)
{
    events_worker *w = arg;
    pthread_mutex_lock(&w->mu);
    while (!w->stop) {
        struct timespec dl;
        pthread_mutex_unlock(&w->mu);
        for (int i = 0; i < w->nurls; i++) {
            db_status st = deliver_batch(w, w->urls[i]);
            if (st != DB_OK)
                log_emit(LOG_WARN, "event delivery pass failed; will retry", "{s:s,s:s}", "url",
                         w->urls[i], "error", db_status_name(st));
        }
        pthread_mutex_lock(&w->mu);
        dl = deadline_in_ms(1000);
        while (!w->stop && pthread_cond_timedwait(&w->cv, &w->mu, &dl) != ETIMEDOUT)
            ;
    }
    pthread_mutex_unlock(&w->mu);
    return NULL;
}

int events_worker_start(events_worker **out, qk_svc *s, char *err, size_t errlen)
{
    events_worker *w;
    FILE *f = NULL;
    long len = 0;

    *out = NULL;
    if (!s->cfg->webhook_urls || !*s->cfg->webhook_urls)
        return 0;
    if (!(w = calloc(1, sizeof(*w))))
        return -1;
    w->s = s;
    w->nurls = split_urls(s->cfg->webhook_urls, w->urls, EVENTS_MAX_URLS);
    if (!s->cfg->webhook_secret_file || !(f = fopen(s->cfg->webhook_secret_file, "rb")) ||
        fseek(f, 0, SEEK_END) != 0 || (len = ftell(f)) < EVENTS_SECRET_MIN || len > 4096 ||
        fseek(f, 0, SEEK_SET) != 0 || !(w->secret = OPENSSL_secure_malloc((size_t)len)) ||
        fread(w->secret, 1, (size_t)len, f) != (size_t)len) {
        snprintf(err, errlen, "webhook_secret_file: cannot read a secret of %d to 4096 bytes",
                 EVENTS_SECRET_MIN);
        goto fail;
    }
    fclose(f);
    f = NULL;
    w->secret_len = (size_t)len;
    /* A trailing newline is the editor's, not the secret's. */
    while (w->secret_len > 0 && (w->secret[w->secret_len - 1] == '\n' ||
                                 w->secret[w->secret_len - 1] == '\r'))
        w->secret_len--;
    if (w->secret_len < EVENTS_SECRET_MIN) {
        snprintf(err, errlen, "webhook_secret_file: the secret must be at least %d bytes",
                 EVENTS_SECRET_MIN);
        goto fail;
    }
    if (!(w->curl = curl_easy_init())) {
        snprintf(err, errlen, "curl_easy_init failed");
        goto fail;
    }
    pthread_mutex_init(&w->mu, NULL);
    deadline_cond_init(&w->cv);
    if (pthread_create(&w->thread, NULL, loop, w) != 0) {
        snprintf(err, errlen, "cannot start the event delivery thread");
        pthread_mutex_destroy(&w->mu);
        pthread_cond_destroy(&w->cv);
        goto fail;
    }
    *out = w;
    return 0;
fail:
    if (f)
        fclose(f);
    if (w->curl)
        curl_easy_cleanup(w->curl);
    if (w->secret)
        OPENSSL_secure_clear_free(w->secret, (size_t)len);
    free(w);
    return -1;
}

void events_worker_stop(events_worker *w)
{
    if (!w)
        return;
    pthread_mutex_lock(&w->mu);
    w->stop = true;
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
    pthread_join(w->thread, NULL);
    curl_easy_cleanup(w->curl);
    OPENSSL_secure_clear_free(w->secret, w->secret_len);
    pthread_mutex_destroy(&w->mu);
    pthread_cond_destroy(&w->cv);
    free(w);
}

void events_metrics_render(void *arg, FILE *f)
{
    events_worker *w = arg;
    fprintf(f,
            "# HELP qkms_events_delivered_total Events answered 2xx by a webhook (this process).\n"
            "# TYPE qkms_events_delivered_total counter\nqkms_events_delivered_total %llu\n"
            "# HELP qkms_event_delivery_failures_total Event deliveries that failed and will be"
            " retried (this process).\n"
            "# TYPE qkms_event_delivery_failures_total counter\n"
            "qkms_event_delivery_failures_total %llu\n",
            w ? (unsigned long long)atomic_load(&w->delivered) : 0ULL,
            w ? (unsigned long long)atomic_load(&w->failures) : 0ULL);
}
