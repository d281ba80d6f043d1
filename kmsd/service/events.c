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
#define EVENTS_LIVE_CHECK_S 60

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
            arr, json_pack("{s:o,s:o,s:I,s:I,s:i,s:o,s:o,s:o}", "id", pgjson_text(r, i, 0), "url",
                           pgjson_text(r, i, 1), "pending", (json_int_t)atoll(PQgetvalue(r, i, 2)),
                           "failed", (json_int_t)atoll(PQgetvalue(r, i, 3)), "attempts",
                           atoi(PQgetvalue(r, i, 4)), "last_error", pgjson_text(r, i, 5),
                           "last_delivered_at", pgjson_time(r, i, 6), "registered_at",
                           pgjson_time(r, i, 7)));
    PQclear(r);
    *out = json_pack("{s:o}", "webhooks", arr);
    return QK_OK;
}

/* One batch of a replay, in its own transaction; the first of a call also
 * writes the audit row, so the replay is on record before anything is
 * re-armed. */
struct replay_tx {
    const char *actor;
    long long after, until, from, next, rows, hooks, events;
    bool first;
};

static db_status replay_tx_fn(db_conn *c, void *arg)
{
    struct replay_tx *t = arg;
    char cur[24], lim[16], upto[24];
    const char *vals[3] = {cur, lim, upto};
    db_status st;
    PGresult *r;

    snprintf(cur, sizeof(cur), "%lld", t->from);
    snprintf(lim, sizeof(lim), "%d", EVENTS_REPLAY_BATCH);
    snprintf(upto, sizeof(upto), "%lld", t->until);
    if (!(r = db_exec(c, Q_WEBHOOK_REPLAY, 3, vals, NULL, NULL, &st)))
        return st;
    /* Assigned, not added, and from left alone: db_tx runs this again
     * after a serialization failure; the caller moves on once committed. */
    t->rows = atoll(PQgetvalue(r, 0, 0));
    t->hooks = atoll(PQgetvalue(r, 0, 1));
    t->events = atoll(PQgetvalue(r, 0, 2));
    t->next = atoll(PQgetvalue(r, 0, 3));
    PQclear(r);
    if (!t->first || t->hooks == 0)
        return DB_OK; /* no webhook: nothing written, the caller answers 409 */
    return audit_append(c, t->actor, "events.replayed", NULL,
                        json_pack("{s:I,s:I}", "after", (json_int_t)t->after, "until",
                                  (json_int_t)t->until));
}

qk_kind events_replay(qk_svc *s, const qk_principal *who, long long after, long long until,
                      events_replay_result *out, qk_err *e)
{
    struct replay_tx t = {who->name, after, until, after, after, 0, 0, 0, true};
    long long total = 0, done = 0;
    db_status st;

    memset(out, 0, sizeof(*out));
    if (t.until <= 0) { /* the range ends at the last event now: later ones are not chased */
        PGresult *r = db_query(s->db, Q_EVENTS_LAST, 0, NULL, NULL, NULL, &st);
        if (!r)
            return db_fail(e, st);
        t.until = atoll(PQgetvalue(r, 0, 0));
        PQclear(r);
    }
    /* Batches of EVENTS_REPLAY_BATCH events, each its own transaction, and
     * at most EVENTS_REPLAY_PER_CALL per call: no statement near the
     * statement timeout, no request near a client's. */
    for (;;) {
        st = db_tx(s->db, replay_tx_fn, &t);
        if (st != DB_OK)
            return db_fail(e, st);
        if (t.first && t.hooks == 0)
            return qk_fail(e, QK_CONFLICT, "invalid_state",
                           "no webhook is registered (webhook_urls of a running kmsd)");
        t.first = false;
        t.from = t.next;
        total += t.rows;
        done += t.events;
        if (t.events < EVENTS_REPLAY_BATCH || t.from >= t.until)
            break;
        if (done >= EVENTS_REPLAY_PER_CALL) {
            out->next = t.from;
            break;
        }
    }
    out->until = t.until;
    out->deliveries = total;
    log_with(&who->log, LOG_INFO, "events replayed", "{s:I,s:I,s:I,s:I,s:s}", "after",
             (json_int_t)after, "until", (json_int_t)t.until, "next", (json_int_t)out->next,
             "deliveries", (json_int_t)total, "by", who->name);
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
    PGresult *r;

    /* db_tx may run this again (serialization failure): start clean. */
    free(t->shown);
    t->shown = NULL;
    t->pending = 0;
    if (!(r = db_exec(c, Q_WEBHOOK_RETIRE, 1, vals, NULL, NULL, &st)))
        return st;
    if (PQntuples(r) == 1 && !(t->shown = strdup(PQgetvalue(r, 0, 0)))) {
        PQclear(r);
        return DB_ERROR; /* rolled back: no retirement without its audit row */
    }
    if (t->shown)
        t->pending = atoll(PQgetvalue(r, 0, 1));
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

/* Run a DELETE of at most EVENTS_PURGE_BATCH rows (its batch size $last)
 * until it deletes fewer, at most EVENTS_PURGE_BATCHES times. */
static long long purge_batches(db_conn *c, query_id q, int nparams, const char **vals,
                               db_status *st)
{
    long long total = 0;
    for (int i = 0; i < EVENTS_PURGE_BATCHES; i++) {
        PGresult *r = db_exec(c, q, nparams, vals, NULL, NULL, st);
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

long long events_purge(db_conn *c, int days, db_status *st)
{
    char sd[16], sb[16];
    const char *ev[2] = {sd, sb}, *hooks[1] = {sb};
    long long n, m;
    PGresult *r;

    snprintf(sd, sizeof(sd), "%d", days);
    snprintf(sb, sizeof(sb), "%d", EVENTS_PURGE_BATCH);
    /* Batches in their own transactions: a backlog never holds locks on
     * the outbox for long, and what is done stays done. */
    if ((n = purge_batches(c, Q_EVENTS_PURGE, 2, ev, st)) < 0 ||
        (m = purge_batches(c, Q_WEBHOOKS_RETIRED_PURGE, 1, hooks, st)) < 0)
        return -1;
    if (!(r = db_exec(c, Q_WEBHOOKS_RETIRED_DROP, 0, NULL, NULL, NULL, st)))
        return -1;
    PQclear(r);
    return n + m;
}

int events_read_secret(const char *path, uint8_t **out, size_t *len, size_t *cap, char *err,
                       size_t errlen)
{
    /* A symlink is followed (Kubernetes mounts secrets so); the mode is the
     * file's own. */
    int fd = path ? open(path, O_RDONLY | O_CLOEXEC) : -1;
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

/* HMAC-SHA-256(key, a || b) into mac. 0 or -1. */
static int hmac2(const uint8_t *key, size_t key_len, const void *a, size_t al, const void *b,
                 size_t bl, uint8_t mac[32])
{
    EVP_MAC *m = EVP_MAC_fetch(NULL, "HMAC", NULL);
    EVP_MAC_CTX *mc = m ? EVP_MAC_CTX_new(m) : NULL;
    OSSL_PARAM params[] = {OSSL_PARAM_construct_utf8_string("digest", "SHA256", 0),
                           OSSL_PARAM_construct_end()};
    size_t outl = 0;
    int rc = mc && EVP_MAC_init(mc, key, key_len, params) == 1 &&
                     EVP_MAC_update(mc, a, al) == 1 && EVP_MAC_update(mc, b, bl) == 1 &&
                     EVP_MAC_final(mc, mac, &outl, 32) == 1 && outl == 32
                 ? 0
                 : -1;
    EVP_MAC_CTX_free(mc);
    EVP_MAC_free(m);
    return rc;
}

int events_sign(const uint8_t *secret, size_t secret_len, long long ts, const char *body,
                size_t body_len, char out[68])
{
    uint8_t mac[32];
    char prefix[32];
    int pl = snprintf(prefix, sizeof(prefix), "%lld.", ts);
    int rc = hmac2(secret, secret_len, prefix, (size_t)pl, body, body_len, mac);
    if (rc == 0) {
        memcpy(out, "v1=", 3);
        qkms_hex_encode(mac, sizeof(mac), out + 3);
    }
    OPENSSL_cleanse(mac, sizeof(mac));
    return rc;
}

int events_webhook_id(const uint8_t *secret, size_t secret_len, const char *url, char out[65])
{
    static const char label[] = "qkms/webhook-id\n";
    uint8_t mac[32];
    int rc = hmac2(secret, secret_len, label, sizeof(label) - 1, url, strlen(url), mac);
    if (rc == 0)
        qkms_hex_encode(mac, sizeof(mac), out);
    return rc;
}

/* ---- the worker -------------------------------------------------------------- */

/* One webhook and the thread that delivers to it: a slow or dead receiver
 * holds up no other. */
typedef struct {
    events_worker *w;
    pthread_t thread;
    bool started;
    char url[EVENTS_URL_MAX]; /* may hold a credential: cleansed at stop */
    char shown[EVENTS_URL_MAX];
    char id[65]; /* its webhook_id, hex */
    CURL *curl;
    /* the thread's own */
    bool registered, retired_warned, db_failing;
    int fail_streak;           /* failed POSTs in a row */
    int64_t skip_until_ms;     /* webhook-level back-off after a failure */
    int64_t live_checked_ms;
} hook;

struct events_worker {
    qk_svc *s;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    _Atomic bool stop;
    uint8_t *secret; /* secure heap */
    size_t secret_len, secret_cap;
    hook hooks[EVENTS_MAX_URLS];
    int nhooks;
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
static enum post_result post_event(hook *h, const char *event_id, const char *body, char *why,
                                   size_t wl)
{
    events_worker *w = h->w;
    const char *ca = w->s->cfg->webhook_ca_file;
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
    curl_easy_reset(h->curl);
    curl_easy_setopt(h->curl, CURLOPT_URL, h->url);
    curl_easy_setopt(h->curl, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(h->curl, CURLOPT_PROXY, ""); /* not the environment's proxy */
    if (ca && *ca) { /* only these CAs: not the CA directory libcurl was built with */
        curl_easy_setopt(h->curl, CURLOPT_CAINFO, ca);
        curl_easy_setopt(h->curl, CURLOPT_CAPATH, NULL);
    }
    curl_easy_setopt(h->curl, CURLOPT_HTTPHEADER, hdr);
    curl_easy_setopt(h->curl, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(h->curl, CURLOPT_TIMEOUT_MS, EVENTS_HTTP_TIMEOUT_MS);
    curl_easy_setopt(h->curl, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h->curl, CURLOPT_WRITEFUNCTION, discard);
    curl_easy_setopt(h->curl, CURLOPT_XFERINFOFUNCTION, abort_on_stop);
    curl_easy_setopt(h->curl, CURLOPT_XFERINFODATA, w);
    curl_easy_setopt(h->curl, CURLOPT_NOPROGRESS, 0L);
    cc = curl_easy_perform(h->curl);
    if (cc == CURLE_OK)
        curl_easy_getinfo(h->curl, CURLINFO_RESPONSE_CODE, &status);
    curl_slist_free_all(hdr);
    if (cc == CURLE_ABORTED_BY_CALLBACK)
        return POST_ABORTED;
    if (cc != CURLE_OK) {
        snprintf(why, wl, "%s", curl_easy_strerror(cc)); /* generic: no part of the URL */
        return POST_FAILED;
    }
    if (status < 200 || status > 299) {
        snprintf(why, wl, "HTTP %ld", status);
        return POST_FAILED;
    }
    return POST_OK;
}

/* A database failure is logged when it starts and when it ends, not at
 * every pass. */
static void db_state(hook *h, bool failing, db_status st)
{
    if (failing && !h->db_failing)
        log_emit(LOG_WARN, "event delivery cannot reach the database; will retry",
                 "{s:s,s:s}", "webhook", h->shown, "error", db_status_name(st));
    else if (!failing && h->db_failing)
        log_emit(LOG_INFO, "event delivery reaches the database again", "{s:s}", "webhook",
                 h->shown);
    h->db_failing = failing;
}

/* Mark a leased row: done, failed (why), or released untried (why NULL).
 * Only the lease's holder can: a row whose lease ran out and was leased
 * again is the new holder's. */
static void mark(hook *h, const char *event_pk, const char *lease, bool done, const char *why)
{
    events_worker *w = h->w;
    char maxa[16];
    const char *vals[5] = {h->id, event_pk, lease, why, maxa};
    db_status st;
    PGresult *r;

    snprintf(maxa, sizeof(maxa), "%d", w->s->cfg->webhook_max_attempts);
    r = db_query(w->s->db, done ? Q_DELIVERY_DONE : Q_DELIVERY_FAILED, done ? 3 : 5, vals, NULL,
                 NULL, &st);
    if (!r) {
        log_emit(LOG_WARN, "event delivery not recorded; its lease will run out",
                 "{s:s,s:s}", "event", event_pk, "error", db_status_name(st));
        if (st == DB_UNAVAILABLE)
            db_state(h, true, st);
        return;
    }
    if (!done && why && PQntuples(r) == 1 && PQgetvalue(r, 0, 0)[0] == 't') {
        atomic_fetch_add(&w->given_up, 1);
        log_emit(LOG_ERROR, "event delivery given up; replay it once the webhook works",
                 "{s:s,s:s,s:i}", "webhook", h->shown, "event", event_pk, "attempts",
                 w->s->cfg->webhook_max_attempts);
    }
    PQclear(r);
}

/* One batch: lease the webhook's due rows (a short statement of its own),
 * POST each with no transaction open, mark each. Stops at the first
 * failure or when kmsd stops (the rest released untried). How many it
 * leased, or -1 after a failure. */
static int deliver_batch(hook *h)
{
    events_worker *w = h->w;
    char lim[8], lease[8], why[200];
    const char *vals[3] = {h->id, lim, lease};
    db_status st;
    PGresult *ev;
    int n, i;
    bool failed = false;

    snprintf(lim, sizeof(lim), "%d", EVENTS_BATCH);
    snprintf(lease, sizeof(lease), "%ld",
             EVENTS_BATCH * EVENTS_HTTP_TIMEOUT_MS / 1000 + EVENTS_LEASE_MARGIN_S);
    ev = db_query(w->s->db, Q_DELIVERY_LEASE, 3, vals, NULL, NULL, &st);
    db_state(h, !ev, st);
    if (!ev)
        return 0;
    n = PQntuples(ev);
    for (i = 0; i < n; i++) {
        const char *pk = PQgetvalue(ev, i, 0), *lid = PQgetvalue(ev, i, 7);
        enum post_result pr = POST_FAILED;
        json_t *j;
        char *body;
        if (failed || atomic_load(&w->stop)) {
            /* Released untried; with the database failing, left to the
             * lease's end rather than a stop waiting on timeouts. */
            if (!h->db_failing)
                mark(h, pk, lid, false, NULL);
            continue;
        }
        j = event_json(ev, i);
        body = j ? json_dumps(j, JSON_COMPACT) : NULL;
        json_decref(j);
        snprintf(why, sizeof(why), "out of memory");
        if (body)
            pr = post_event(h, PQgetvalue(ev, i, 1), body, why, sizeof(why));
        if (pr == POST_OK) {
            atomic_fetch_add(&w->delivered, 1);
            h->fail_streak = 0;
            mark(h, pk, lid, true, NULL);
        } else if (pr == POST_ABORTED) {
            mark(h, pk, lid, false, NULL); /* kmsd is stopping: not an attempt */
        } else {
            failed = true;
            atomic_fetch_add(&w->failures, 1);
            /* The receiver is down or refusing: this instance leaves it
             * alone 1, 2, 4 ... 300 s, whatever its backlog. */
            h->fail_streak++;
            h->skip_until_ms =
                deadline_now_ms() +
                1000LL * (h->fail_streak > 9 ? 300 : 1LL << (h->fail_streak - 1)); /* 256 at 9 */
            log_emit(LOG_WARN, "event delivery failed; will retry", "{s:s,s:s,s:s}", "webhook",
                     h->shown, "event_id", PQgetvalue(ev, i, 1), "error", why);
            mark(h, pk, lid, false, why);
        }
        free(body);
    }
    PQclear(ev);
    return failed ? -1 : n;
}

/* Register the webhook (a database down at start is retried every pass),
 * then every EVENTS_LIVE_CHECK_S see that no operator removed it. */
static void check_registration(hook *h)
{
    events_worker *w = h->w;
    const char *vals[2] = {h->id, h->shown};
    db_status st;
    PGresult *r;
    int64_t now = deadline_now_ms();

    if (!h->registered) {
        r = db_query(w->s->db, Q_WEBHOOK_REGISTER, 2, vals, NULL, NULL, &st);
        db_state(h, !r, st);
        if (!r)
            return;
        PQclear(r);
        h->registered = true;
        h->live_checked_ms = now;
        return;
    }
    if (now - h->live_checked_ms < EVENTS_LIVE_CHECK_S * 1000LL)
        return;
    if (!(r = db_query(w->s->db, Q_WEBHOOK_LIVE, 1, vals, NULL, NULL, &st)))
        return;
    h->live_checked_ms = now;
    if (PQntuples(r) == 0 && !h->retired_warned)
        log_emit(LOG_WARN,
                 "webhook removed by an operator but still in webhook_urls here; its events"
                 " are not delivered until it is registered again (kmsd restart)",
                 "{s:s,s:s}", "webhook", h->shown, "id", h->id);
    h->retired_warned = PQntuples(r) == 0;
    PQclear(r);
}

static void *loop(void *arg)
{
    hook *h = arg;
    events_worker *w = h->w;
    pthread_mutex_lock(&w->mu);
    while (!atomic_load(&w->stop)) {
        struct timespec dl;
        pthread_mutex_unlock(&w->mu);
        check_registration(h);
        if (h->registered && deadline_now_ms() >= h->skip_until_ms)
            while (!atomic_load(&w->stop) && deliver_batch(h) == EVENTS_BATCH)
                ;
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
        hook *h = &w->hooks[i];
        h->w = w;
        memcpy(h->url, urls[i], EVENTS_URL_MAX);
        url_shown(urls[i], h->shown, EVENTS_URL_MAX);
        if (events_webhook_id(w->secret, w->secret_len, urls[i], h->id) != 0) {
            snprintf(err, errlen, "HMAC-SHA-256 failed");
            rc = -1;
        } else if (!(h->curl = curl_easy_init())) {
            snprintf(err, errlen, "curl_easy_init failed");
            rc = -1;
        }
    }
    OPENSSL_cleanse(urls, sizeof(urls));
    w->nhooks = n;
    return rc;
}

/* Stop and join the started threads, free everything. */
static void worker_free(events_worker *w)
{
    pthread_mutex_lock(&w->mu);
    atomic_store(&w->stop, true);
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
    for (int i = 0; i < w->nhooks; i++) {
        if (w->hooks[i].started)
            pthread_join(w->hooks[i].thread, NULL);
        if (w->hooks[i].curl)
            curl_easy_cleanup(w->hooks[i].curl);
    }
    if (w->secret)
        OPENSSL_secure_clear_free(w->secret, w->secret_cap);
    OPENSSL_cleanse(w->hooks, sizeof(w->hooks));
    pthread_mutex_destroy(&w->mu);
    pthread_cond_destroy(&w->cv);
    free(w);
}

int events_worker_start(events_worker **out, qk_svc *s, char *err, size_t errlen)
{
    events_worker *w;
    const char *ca = s->cfg->webhook_ca_file;

    *out = NULL;
    if (!s->cfg->webhook_urls || !*s->cfg->webhook_urls)
        return 0;
    if (ca && *ca && access(ca, R_OK) != 0) {
        snprintf(err, errlen, "webhook_ca_file: cannot read %s: %s", ca, strerror(errno));
        return -1;
    }
    if (!(w = calloc(1, sizeof(*w)))) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    w->s = s;
    pthread_mutex_init(&w->mu, NULL);
    deadline_cond_init(&w->cv);
    if (events_read_secret(s->cfg->webhook_secret_file, &w->secret, &w->secret_len,
                           &w->secret_cap, err, errlen) != 0 ||
        hooks_from_config(w, err, errlen) != 0)
        goto fail;
    /* Registered before kmsd reports ready, so the events of its first
     * requests have their deliveries; a database that is down now is
     * retried by each thread. */
    for (int i = 0; i < w->nhooks; i++)
        check_registration(&w->hooks[i]);
    for (int i = 0; i < w->nhooks; i++) {
        if (pthread_create(&w->hooks[i].thread, NULL, loop, &w->hooks[i]) != 0) {
            snprintf(err, errlen, "cannot start an event delivery thread");
            goto fail;
        }
        w->hooks[i].started = true;
    }
    *out = w;
    return 0;
fail:
    worker_free(w);
    return -1;
}

void events_worker_stop(events_worker *w)
{
    if (w)
        worker_free(w);
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
