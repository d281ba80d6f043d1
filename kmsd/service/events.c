/*
 * events — reading the outbox and delivering it to webhooks (events.h).
 * The worker thread leases a few rows of one webhook at a time in a short
 * statement and POSTs with no transaction open, so a slow receiver holds
 * no pooled connection; the lease (and its ID) keeps two instances off the
 * same rows, and its end returns a dead instance's rows.
 */
#include "service/events.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

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

#define EVENTS_BATCH 4
#define EVENTS_HTTP_TIMEOUT_MS 5000L
#define EVENTS_LEASE_MARGIN_S 10
#define EVENTS_PURGE_BATCH 2000
#define EVENTS_PURGE_BATCHES 20 /* per maintenance pass: a backlog goes over a few */

/* An event from columns id, event_id, type, device_id, created_at,
 * detail, app name. */
static json_t *event_json(const PGresult *r, int i)
{
    json_t *detail = json_loads(PQgetvalue(r, i, 5), 0, NULL);
    return json_pack("{s:I,s:o,s:o,s:o,s:o,s:o,s:o}", "id",
                     (json_int_t)atoll(PQgetvalue(r, i, 0)), "event_id", pgjson_text(r, i, 1),
                     "type", pgjson_text(r, i, 2), "device_id", pgjson_text(r, i, 3), "app",
                     pgjson_text(r, i, 6), "created_at", pgjson_time(r, i, 4), "detail",
                     detail ? detail : json_object());
}

qk_kind events_list(qk_svc *s, long long app_id, long long after, int limit, json_t **out,
                    qk_err *e)
{
    char sa[24], saft[24], slim[16];
    const char *vals[3] = {saft, slim, sa};
    db_status st;
    PGresult *r;
    json_t *arr;
    int n;

    *out = NULL;
    snprintf(sa, sizeof(sa), "%lld", app_id);
    snprintf(saft, sizeof(saft), "%lld", after);
    snprintf(slim, sizeof(slim), "%d", limit);
    if (!(r = app_id > 0 ? db_query(s->db, Q_EVENTS_LIST_APP, 3, vals, NULL, NULL, &st)
                         : db_query(s->db, Q_EVENTS_LIST, 2, vals, NULL, NULL, &st)))
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

int events_split_urls(const char *list, char urls[][EVENTS_URL_MAX], int max)
{
    int n = 0;
    while (list && *list && n < max) {
        size_t len = strcspn(list, ",");
        if (len > 0 && len < EVENTS_URL_MAX)
            snprintf(urls[n++], EVENTS_URL_MAX, "%.*s", (int)len, list);
        list += len;
        if (*list == ',')
            list++;
    }
    return n;
}

qk_kind events_webhooks(qk_svc *s, json_t **out, qk_err *e)
{
    db_status st;
    PGresult *r;
    json_t *arr;

    *out = NULL;
    if (!(r = db_query(s->db, Q_WEBHOOK_STATUS, 0, NULL, NULL, NULL, &st)))
        return db_fail(e, st);
    arr = json_array();
    for (int i = 0; i < PQntuples(r); i++)
        json_array_append_new(
            arr, json_pack("{s:o,s:o,s:I,s:I,s:I,s:i,s:o,s:o}", "id", pgjson_text(r, i, 0), "url",
                           pgjson_text(r, i, 1), "pending", (json_int_t)atoll(PQgetvalue(r, i, 2)),
                           "failed", (json_int_t)atoll(PQgetvalue(r, i, 3)), "delivered",
                           (json_int_t)atoll(PQgetvalue(r, i, 4)), "attempts",
                           atoi(PQgetvalue(r, i, 5)), "last_error", pgjson_text(r, i, 6),
                           "registered_at", pgjson_time(r, i, 7)));
    PQclear(r);
    *out = json_pack("{s:o}", "webhooks", arr);
    return QK_OK;
}

struct replay_tx {
    const char *actor, *after;
    long long rows, hooks;
};

static db_status replay_tx_fn(db_conn *c, void *arg)
{
    struct replay_tx *t = arg;
    const char *vals[1] = {t->after};
    db_status st;
    PGresult *r = db_exec(c, Q_WEBHOOK_REPLAY, 1, vals, NULL, NULL, &st);
    if (!r)
        return st;
    t->rows = atoll(PQgetvalue(r, 0, 0));
    t->hooks = atoll(PQgetvalue(r, 0, 1));
    PQclear(r);
    if (t->hooks == 0)
        return DB_OK; /* nothing written; the caller answers 409 */
    return audit_append(c, t->actor, "events.replayed", NULL,
                        json_pack("{s:I,s:I}", "after", (json_int_t)atoll(t->after),
                                  "deliveries", (json_int_t)t->rows));
}

qk_kind events_replay(qk_svc *s, const qk_principal *who, long long after, long long *rows,
                      qk_err *e)
{
    char saft[24];
    struct replay_tx t;
    db_status st;

    snprintf(saft, sizeof(saft), "%lld", after);
    t = (struct replay_tx){who->name, saft, 0, 0};
    st = db_tx(s->db, replay_tx_fn, &t);
    if (st != DB_OK)
        return db_fail(e, st);
    if (t.hooks == 0)
        return qk_fail(e, QK_CONFLICT, "invalid_state",
                       "no webhook is registered (webhook_urls of a running kmsd)");
    *rows = t.rows;
    log_with(&who->log, LOG_INFO, "events replayed", "{s:I,s:I,s:s}", "after", (json_int_t)after,
             "deliveries", (json_int_t)t.rows, "by", who->name);
    return QK_OK;
}

struct remove_tx {
    const char *actor, *id;
    char *shown;
    long long pending;
};

static db_status remove_tx_fn(db_conn *c, void *arg)
{
    struct remove_tx *t = arg;
    const char *vals[1] = {t->id};
    db_status st;
    PGresult *r = db_exec(c, Q_WEBHOOK_REMOVE, 1, vals, NULL, NULL, &st);
    if (!r)
        return st;
    if (PQntuples(r) == 1) {
        t->shown = strdup(PQgetvalue(r, 0, 0));
        t->pending = atoll(PQgetvalue(r, 0, 1));
    }
    PQclear(r);
    if (!t->shown)
        return DB_OK;
    return audit_append(c, t->actor, "webhook.removed", NULL,
                        json_pack("{s:s,s:s,s:I}", "webhook", t->id, "url", t->shown,
                                  "pending_dropped", (json_int_t)t->pending));
}

qk_kind events_webhook_remove(qk_svc *s, const qk_principal *who, const char *id, char **shown,
                              qk_err *e)
{
    struct remove_tx t = {who->name, id, NULL, 0};
    db_status st;

    *shown = NULL;
    st = db_tx(s->db, remove_tx_fn, &t);
    if (st != DB_OK) {
        free(t.shown);
        return db_fail(e, st);
    }
    if (!t.shown)
        return qk_fail(e, QK_NOT_FOUND, "not_found", "no such webhook");
    log_with(&who->log, LOG_INFO, "webhook removed", "{s:s,s:s,s:I,s:s}", "webhook", id, "url",
             t.shown, "pending_dropped", (json_int_t)t.pending, "by", who->name);
    *shown = t.shown;
    return QK_OK;
}

long long events_purge(db_conn *c, int days, db_status *st)
{
    char sd[16], sb[16];
    const char *vals[2] = {sd, sb};
    long long total = 0;

    snprintf(sd, sizeof(sd), "%d", days);
    snprintf(sb, sizeof(sb), "%d", EVENTS_PURGE_BATCH);
    /* Batches in their own transactions: a backlog never holds locks on
     * the outbox for long, and what is done stays done. */
    for (int i = 0; i < EVENTS_PURGE_BATCHES; i++) {
        PGresult *r = db_exec(c, Q_EVENTS_PURGE, 2, vals, NULL, NULL, st);
        long long n;
        if (!r)
            return -1;
        n = atoll(PQcmdTuples(r));
        PQclear(r);
        total += n;
        if (n < EVENTS_PURGE_BATCH)
            break;
    }
    return total;
}

int events_read_secret(const char *path, uint8_t **out, size_t *len, size_t *cap, char *err,
                       size_t errlen)
{
    int fd = path ? open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW) : -1;
    struct stat sb = {0};
    uint8_t *buf = NULL;
    size_t n = 0;
    ssize_t got;

    *out = NULL;
    *len = *cap = 0;
    if (fd < 0) {
        snprintf(err, errlen, "webhook_secret_file: cannot open it: %s",
                 path ? strerror(errno) : "not set");
        return -1;
    }
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode) || (sb.st_mode & 077) != 0 ||
        sb.st_size < EVENTS_SECRET_MIN || sb.st_size > 4096) {
        snprintf(err, errlen,
                 "webhook_secret_file: must be a regular file of %d to 4096 bytes that neither"
                 " group nor others may read (mode 0600 or 0400)",
                 EVENTS_SECRET_MIN);
        goto fail;
    }
    /* read(2) into the secure heap: no stdio buffer keeps a copy. */
    if (!(buf = OPENSSL_secure_malloc((size_t)sb.st_size))) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    while (n < (size_t)sb.st_size &&
           ((got = read(fd, buf + n, (size_t)sb.st_size - n)) > 0 || (got < 0 && errno == EINTR)))
        if (got > 0)
            n += (size_t)got;
    /* A trailing newline is the editor's, not the secret's. */
    while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r'))
        n--;
    if (n < EVENTS_SECRET_MIN) {
        snprintf(err, errlen, "webhook_secret_file: the secret must be at least %d bytes",
                 EVENTS_SECRET_MIN);
        goto fail;
    }
    close(fd);
    *out = buf;
    *len = n;
    *cap = (size_t)sb.st_size;
    return 0;
fail:
    if (buf)
        OPENSSL_secure_clear_free(buf, (size_t)sb.st_size);
    close(fd);
    return -1;
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
    _Atomic bool stop;
    uint8_t *secret; /* secure heap */
    size_t secret_len, secret_cap;
    struct {
        char url[EVENTS_URL_MAX]; /* may hold a credential: cleansed at stop */
        char shown[EVENTS_URL_MAX];
        char hash[65]; /* SHA-256 of url, hex: its rows' key */
        bool registered;
    } hooks[EVENTS_MAX_URLS];
    int nhooks;
    CURL *curl;
    atomic_ullong delivered, failures, given_up;
};

static size_t discard(char *p, size_t size, size_t n, void *u)
{
    (void)p;
    (void)u;
    return size * n;
}

/* curl's progress callback: a stopping kmsd abandons the transfer. */
static int abort_on_stop(void *u, curl_off_t a, curl_off_t b, curl_off_t c, curl_off_t d)
{
    events_worker *w = u;
    (void)a;
    (void)b;
    (void)c;
    (void)d;
    return atomic_load(&w->stop) ? 1 : 0;
}

enum post_result { POST_OK, POST_FAILED, POST_ABORTED };

/* POST one event: POST_OK on a 2xx answer, POST_FAILED with why, or
 * POST_ABORTED when kmsd is stopping (not the receiver's failure). */
static enum post_result post_event(events_worker *w, const char *url, const char *event_id,
                                   const char *body, char *why, size_t wl)
{
    char sig[68], h_sig[96], h_ts[48], h_id[80];
    long long ts = (long long)time(NULL);
    struct curl_slist *hdr = NULL;
    long status = 0;
    CURLcode cc;

    if (events_sign(w->secret, w->secret_len, ts, body, strlen(body), sig) != 0) {
        snprintf(why, wl, "signing failed");
        return POST_FAILED;
    }
    snprintf(h_sig, sizeof(h_sig), "X-Qkms-Signature: %s", sig);
    snprintf(h_ts, sizeof(h_ts), "X-Qkms-Timestamp: %lld", ts);
    snprintf(h_id, sizeof(h_id), "X-Qkms-Event-Id: %s", event_id);
    hdr = curl_slist_append(hdr, "Content-Type: application/json");
    hdr = curl_slist_append(hdr, "Expect:"); /* no 100-continue wait for larger bodies */
    hdr = curl_slist_append(hdr, h_sig);
    hdr = curl_slist_append(hdr, h_ts);
    hdr = curl_slist_append(hdr, h_id);
    curl_easy_reset(w->curl);
    curl_easy_setopt(w->curl, CURLOPT_URL, url);
    curl_easy_setopt(w->curl, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(w->curl, CURLOPT_PROXY, ""); /* not the environment's proxy */
    if (w->s->cfg->webhook_ca_file && *w->s->cfg->webhook_ca_file)
        curl_easy_setopt(w->curl, CURLOPT_CAINFO, w->s->cfg->webhook_ca_file);
    curl_easy_setopt(w->curl, CURLOPT_HTTPHEADER, hdr);
    curl_easy_setopt(w->curl, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(w->curl, CURLOPT_TIMEOUT_MS, EVENTS_HTTP_TIMEOUT_MS);
    curl_easy_setopt(w->curl, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(w->curl, CURLOPT_WRITEFUNCTION, discard);
    curl_easy_setopt(w->curl, CURLOPT_XFERINFOFUNCTION, abort_on_stop);
    curl_easy_setopt(w->curl, CURLOPT_XFERINFODATA, w);
    curl_easy_setopt(w->curl, CURLOPT_NOPROGRESS, 0L);
    cc = curl_easy_perform(w->curl);
    if (cc == CURLE_OK)
        curl_easy_getinfo(w->curl, CURLINFO_RESPONSE_CODE, &status);
    curl_slist_free_all(hdr);
    if (cc == CURLE_ABORTED_BY_CALLBACK)
        return POST_ABORTED;
    if (cc != CURLE_OK) {
        /* curl's generic message: no part of the URL. */
        snprintf(why, wl, "%s", curl_easy_strerror(cc));
        return POST_FAILED;
    }
    if (status < 200 || status > 299) {
        snprintf(why, wl, "HTTP %ld", status);
        return POST_FAILED;
    }
    return POST_OK;
}

/* Mark a leased row: done, failed (why), or released untried (why NULL).
 * Only the lease's holder can: a row whose lease ran out and was leased
 * again is the new holder's. */
static void mark(events_worker *w, int h, const char *event_pk, const char *lease, bool done,
                 const char *why)
{
    char maxa[16];
    const char *vals[5] = {w->hooks[h].hash, event_pk, lease, why, maxa};
    db_status st;
    PGresult *r;

    snprintf(maxa, sizeof(maxa), "%d", w->s->cfg->webhook_max_attempts);
    r = db_query(w->s->db, done ? Q_DELIVERY_DONE : Q_DELIVERY_FAILED, done ? 3 : 5, vals, NULL,
                 NULL, &st);
    if (!r) {
        log_emit(LOG_WARN, "event delivery not recorded; its lease will run out",
                 "{s:s,s:s}", "event", event_pk, "error", db_status_name(st));
        return;
    }
    if (!done && why && PQntuples(r) == 1 && PQgetvalue(r, 0, 0)[0] == 't') {
        atomic_fetch_add(&w->given_up, 1);
        log_emit(LOG_ERROR, "event delivery given up; replay it once the webhook works",
                 "{s:s,s:s,s:i}", "webhook", w->hooks[h].shown, "event", event_pk,
                 "attempts", w->s->cfg->webhook_max_attempts);
    }
    PQclear(r);
}

/* One batch for one webhook: lease its due rows (a short statement of its
 * own), POST each with no transaction open, mark each. Stops at the first
 * failure or when kmsd stops (the rest released untried). How many it
 * delivered. */
static int deliver_batch(events_worker *w, int h)
{
    qk_svc *s = w->s;
    char lim[8], lease[8], why[200];
    const char *vals[3] = {w->hooks[h].hash, lim, lease};
    db_status st;
    PGresult *ev;
    int n, i, delivered = 0;
    bool failed = false;

    snprintf(lim, sizeof(lim), "%d", EVENTS_BATCH);
    snprintf(lease, sizeof(lease), "%ld",
             EVENTS_BATCH * EVENTS_HTTP_TIMEOUT_MS / 1000 + EVENTS_LEASE_MARGIN_S);
    if (!(ev = db_query(s->db, Q_DELIVERY_LEASE, 3, vals, NULL, NULL, &st))) {
        log_emit(LOG_WARN, "event delivery pass failed; will retry", "{s:s,s:s}", "webhook",
                 w->hooks[h].shown, "error", db_status_name(st));
        return 0;
    }
    n = PQntuples(ev);
    for (i = 0; i < n; i++) {
        const char *pk = PQgetvalue(ev, i, 0), *lid = PQgetvalue(ev, i, 7);
        enum post_result pr = POST_FAILED;
        json_t *j;
        char *body;
        if (failed || atomic_load(&w->stop)) {
            mark(w, h, pk, lid, false, NULL);
            continue;
        }
        j = event_json(ev, i);
        body = j ? json_dumps(j, JSON_COMPACT) : NULL;
        json_decref(j);
        snprintf(why, sizeof(why), "out of memory");
        if (body)
            pr = post_event(w, w->hooks[h].url, PQgetvalue(ev, i, 1), body, why, sizeof(why));
        if (pr == POST_OK) {
            atomic_fetch_add(&w->delivered, 1);
            mark(w, h, pk, lid, true, NULL);
            delivered++;
        } else if (pr == POST_ABORTED) {
            mark(w, h, pk, lid, false, NULL); /* kmsd is stopping: not an attempt */
        } else {
            failed = true;
            atomic_fetch_add(&w->failures, 1);
            log_emit(LOG_WARN, "event delivery failed; will retry", "{s:s,s:s,s:s}", "webhook",
                     w->hooks[h].shown, "event_id", PQgetvalue(ev, i, 1), "error", why);
            mark(w, h, pk, lid, false, why);
        }
        free(body);
    }
    PQclear(ev);
    return delivered;
}

/* Register the webhooks not yet registered (a database that was down at
 * start is retried every pass). */
static void register_hooks(events_worker *w)
{
    for (int i = 0; i < w->nhooks; i++) {
        const char *vals[2] = {w->hooks[i].hash, w->hooks[i].shown};
        db_status st;
        PGresult *r;
        if (w->hooks[i].registered)
            continue;
        if (!(r = db_query(w->s->db, Q_WEBHOOK_REGISTER, 2, vals, NULL, NULL, &st))) {
            log_emit(LOG_WARN, "webhook not registered; will retry", "{s:s,s:s}", "webhook",
                     w->hooks[i].shown, "error", db_status_name(st));
            continue;
        }
        PQclear(r);
        w->hooks[i].registered = true;
    }
}

static void *loop(void *arg)
{
    events_worker *w = arg;
    pthread_mutex_lock(&w->mu);
    while (!atomic_load(&w->stop)) {
        struct timespec dl;
        bool more;
        pthread_mutex_unlock(&w->mu);
        register_hooks(w);
        /* Webhooks take turns, one batch each, so a backlog at one does not
         * delay the others. */
        do {
            more = false;
            for (int h = 0; h < w->nhooks && !atomic_load(&w->stop); h++)
                if (w->hooks[h].registered && deliver_batch(w, h) == EVENTS_BATCH)
                    more = true;
        } while (more && !atomic_load(&w->stop));
        pthread_mutex_lock(&w->mu);
        dl = deadline_in_ms(1000);
        while (!atomic_load(&w->stop) &&
               pthread_cond_timedwait(&w->cv, &w->mu, &dl) != ETIMEDOUT)
            ;
    }
    pthread_mutex_unlock(&w->mu);
    return NULL;
}

/* What logs, listings and the database show of a URL: scheme://host[:port]
 * and "/..." when there is more (a path or query may be the credential). */
static void url_shown(const char *url, char *out, size_t cap)
{
    const char *host = strstr(url, "://");
    size_t n = host ? (size_t)(host + 3 - url) + strcspn(host + 3, "/?#") : strlen(url);
    snprintf(out, cap, "%.*s%s", (int)n, url, url[n] ? "/..." : "");
}

static int hooks_from_config(events_worker *w, char *err, size_t errlen)
{
    char urls[EVENTS_MAX_URLS][EVENTS_URL_MAX];
    int n = events_split_urls(w->s->cfg->webhook_urls, urls, EVENTS_MAX_URLS), rc = 0;
    for (int i = 0; i < n && rc == 0; i++) {
        uint8_t d[32];
        unsigned int dl = sizeof(d);
        memcpy(w->hooks[i].url, urls[i], EVENTS_URL_MAX);
        url_shown(urls[i], w->hooks[i].shown, EVENTS_URL_MAX);
        if (EVP_Digest(urls[i], strlen(urls[i]), d, &dl, EVP_sha256(), NULL) != 1) {
            snprintf(err, errlen, "SHA-256 failed");
            rc = -1;
        }
        qkms_hex_encode(d, sizeof(d), w->hooks[i].hash);
    }
    OPENSSL_cleanse(urls, sizeof(urls));
    w->nhooks = n;
    return rc;
}

int events_worker_start(events_worker **out, qk_svc *s, char *err, size_t errlen)
{
    events_worker *w;

    *out = NULL;
    if (!s->cfg->webhook_urls || !*s->cfg->webhook_urls)
        return 0;
    if (!(w = calloc(1, sizeof(*w)))) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    w->s = s;
    if (events_read_secret(s->cfg->webhook_secret_file, &w->secret, &w->secret_len,
                           &w->secret_cap, err, errlen) != 0 ||
        hooks_from_config(w, err, errlen) != 0)
        goto fail;
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
    if (w->curl)
        curl_easy_cleanup(w->curl);
    if (w->secret)
        OPENSSL_secure_clear_free(w->secret, w->secret_cap);
    OPENSSL_cleanse(w->hooks, sizeof(w->hooks));
    free(w);
    return -1;
}

void events_worker_stop(events_worker *w)
{
    if (!w)
        return;
    pthread_mutex_lock(&w->mu);
    atomic_store(&w->stop, true);
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
    pthread_join(w->thread, NULL);
    curl_easy_cleanup(w->curl);
    OPENSSL_secure_clear_free(w->secret, w->secret_cap);
    OPENSSL_cleanse(w->hooks, sizeof(w->hooks));
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
            "qkms_event_delivery_failures_total %llu\n"
            "# HELP qkms_event_deliveries_given_up_total Event deliveries given up after"
            " webhook_max_attempts failures (this process).\n"
            "# TYPE qkms_event_deliveries_given_up_total counter\n"
            "qkms_event_deliveries_given_up_total %llu\n",
            w ? (unsigned long long)atomic_load(&w->delivered) : 0ULL,
            w ? (unsigned long long)atomic_load(&w->failures) : 0ULL,
            w ? (unsigned long long)atomic_load(&w->given_up) : 0ULL);
}
