/*
 * readiness — the prober thread behind /readyz (see readiness.h). It owns
 * the last result of each check; the HTTP handler only reads them.
 */
#include "service/readiness.h"

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "deadline.h"
#include "service/master.h"
#include "service/service.h"
#include "log.h"
#include "store/queries.h"

enum { CHK_DB, CHK_TOKEN, CHK_ENTROPY, CHK_N };
static const char *const check_names[CHK_N] = {"database", "token", "entropy"};

typedef struct {
    char state[128];    /* "ok" or why not */
    int64_t started_ms; /* when the probe in flight began; 0 = none */
} check;

/* How long /readyz waits for a round that started after it arrived, and
 * how close together rounds may start (so a flood of probes costs at most
 * one durable write per ROUND_GAP_MS). */
#define REPORT_WAIT_MS 300
#define ROUND_GAP_MS 20

struct readiness {
    qk_svc *k;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;      /* the prober waits here for a kick or its interval */
    pthread_cond_t done_cv; /* reporters wait here for a fresh round */
    bool stop, started, kicked;
    bool may_wait; /* thread-per-connection: a probe may wait for its round */
    int64_t done_round_start_ms; /* start of the last completed round */
    check c[CHK_N];
    uint64_t changes[CHK_N]; /* between ok and not ok, for /metrics (flapping) */
};

static void begin(readiness *r, int i)
{
    pthread_mutex_lock(&r->mu);
    r->c[i].started_ms = deadline_now_ms();
    pthread_mutex_unlock(&r->mu);
}

static void finish(readiness *r, int i, const char *state)
{
    pthread_mutex_lock(&r->mu);
    if (strcmp(r->c[i].state, "starting") != 0) {
        /* A probe that outlived readiness_timeout_ms was reported as
         * "timeout" (not ok) meanwhile: from ok, that was a change, and a
         * return to ok another. */
        bool was_ok = !strcmp(r->c[i].state, "ok");
        if (was_ok && r->c[i].started_ms &&
            deadline_now_ms() - r->c[i].started_ms > r->k->cfg->readiness_timeout_ms) {
            r->changes[i]++;
            was_ok = false;
        }
        if (was_ok != !strcmp(state, "ok"))
            r->changes[i]++;
    }
    if (strcmp(r->c[i].state, state) != 0 && strcmp(r->c[i].state, "starting") != 0)
        log_emit(strcmp(state, "ok") ? LOG_WARN : LOG_INFO, "readiness changed", "{s:s,s:s,s:s}",
                 "check", check_names[i], "from", r->c[i].state, "to", state);
    snprintf(r->c[i].state, sizeof(r->c[i].state), "%s", state);
    r->c[i].started_ms = 0;
    pthread_mutex_unlock(&r->mu);
}

/* Can PostgreSQL commit? A durable one-row update, plus the pool's memory
 * of recent resource failures (disk full). */
static void probe_db(readiness *r, char *out, size_t len)
{
    qk_svc *k = r->k;
    db_status st;
    char sqlstate[6];
    int64_t ago_ms;
    PGresult *res = db_query(k->db, Q_READINESS_PROBE, 0, NULL, NULL, NULL, &st);
    PQclear(res);
    if (st != DB_OK) {
        snprintf(out, len, "%s", db_status_name(st));
        return;
    }
    if (db_last_resource_failure(k->db, &ago_ms, sqlstate) &&
        ago_ms < (int64_t)k->cfg->readiness_write_failure_s * 1000) {
        snprintf(out, len, "write_failed (SQLSTATE %s, %lld ms ago)", sqlstate, (long long)ago_ms);
        return;
    }
    snprintf(out, len, "ok");
}

static void probe_round(readiness *r)
{
    qk_svc *k = r->k;
    char why[128];
    CK_RV rv;

    begin(r, CHK_DB);
    probe_db(r, why, sizeof(why));
    finish(r, CHK_DB, why);

    begin(r, CHK_TOKEN);
    rv = p11_ping(k->token);
    if (rv == CKR_OK)
        rv = keywrap_check(k->kw); /* the master key itself still answers */
    if (rv == CKR_OK && master_active_missing())
        snprintf(why, sizeof(why), "master key version %u not in the token",
                 (unsigned)master_active_missing());
    else
        snprintf(why, sizeof(why), "%s", rv == CKR_OK ? "ok" : p11_rv_name(rv));
    finish(r, CHK_TOKEN, why);

    begin(r, CHK_ENTROPY);
    if (entropy_ready(k->ent, why, sizeof(why)) == 0)
        snprintf(why, sizeof(why), "ok");
    finish(r, CHK_ENTROPY, why);
}

static void *prober(void *arg)
{
    readiness *r = arg;
    int64_t last_start = 0;
    for (;;) {
        struct timespec dl;
        int64_t start = deadline_now_ms();
        probe_round(r);
        last_start = start;
        pthread_mutex_lock(&r->mu);
        r->done_round_start_ms = start;
        pthread_cond_broadcast(&r->done_cv);
        /* Sleep for the interval, or until kicked (but not before the gap). */
        dl = deadline_in_ms(r->k->cfg->readiness_interval_ms);
        while (!r->stop && !r->kicked && pthread_cond_timedwait(&r->cv, &r->mu, &dl) != ETIMEDOUT)
            ;
        r->kicked = false;
        if (r->stop) {
            pthread_mutex_unlock(&r->mu);
            return NULL;
        }
        pthread_mutex_unlock(&r->mu);
        if (deadline_now_ms() - last_start < ROUND_GAP_MS) {
            struct timespec gap = {0, ROUND_GAP_MS * 1000000L};
            nanosleep(&gap, NULL);
        }
    }
}

int readiness_start(readiness **out, qk_svc *k)
{
    readiness *r = calloc(1, sizeof(*r));
    if (!r)
        return -1;
    r->k = k;
    r->may_wait = !strcmp(k->cfg->http_threading, "connection");
    for (int i = 0; i < CHK_N; i++)
        snprintf(r->c[i].state, sizeof(r->c[i].state), "starting");
    pthread_mutex_init(&r->mu, NULL);
    deadline_cond_init(&r->cv);
    deadline_cond_init(&r->done_cv);
    if (pthread_create(&r->thread, NULL, prober, r) != 0) {
        pthread_cond_destroy(&r->done_cv);
        pthread_cond_destroy(&r->cv);
        pthread_mutex_destroy(&r->mu);
        free(r);
        return -1;
    }
    r->started = true;
    *out = r;
    return 0;
}

void readiness_stop(readiness *r)
{
    if (!r)
        return;
    pthread_mutex_lock(&r->mu);
    r->stop = true;
    pthread_cond_signal(&r->cv);
    pthread_mutex_unlock(&r->mu);
    if (r->started)
        pthread_join(r->thread, NULL);
    pthread_cond_destroy(&r->done_cv);
    pthread_cond_destroy(&r->cv);
    pthread_mutex_destroy(&r->mu);
    free(r);
}

int readiness_report(readiness *r, json_t **checks, json_t **down)
{
    int n = 0;
    int64_t now = deadline_now_ms(), stale = r->k->cfg->readiness_timeout_ms;
    struct timespec dl = deadline_in_ms(REPORT_WAIT_MS);
    *checks = json_object();
    *down = json_array();
    pthread_mutex_lock(&r->mu);
    /* Ask for a round that starts after this request arrived and wait a
     * bounded time for it: fresh when the dependencies answer, the last
     * results (and "timeout" for a hung one) when they do not. With
     * http_threading=pool the caller is one of a few event-loop threads
     * that every client shares: it must not wait, so it gets the last
     * results (at most one interval old) and the next round comes sooner. */
    r->kicked = true;
    pthread_cond_signal(&r->cv);
    while (r->may_wait && r->done_round_start_ms < now &&
           pthread_cond_timedwait(&r->done_cv, &r->mu, &dl) != ETIMEDOUT)
        ;
    now = deadline_now_ms();
    for (int i = 0; i < CHK_N; i++) {
        const check *c = &r->c[i];
        const char *state = c->state;
        if (c->started_ms && now - c->started_ms > stale)
            state = "timeout"; /* the probe is stuck in this dependency */
        json_object_set_new(*checks, check_names[i], json_string(state));
        if (strcmp(state, "ok") != 0) {
            json_array_append_new(*down, json_string(check_names[i]));
            n++;
        }
    }
    pthread_mutex_unlock(&r->mu);
    return n;
}

void readiness_metrics_render(void *arg, FILE *f)
{
    readiness *r = arg;
    int64_t now = deadline_now_ms();
    if (!r)
        return;
    fprintf(f, "# HELP qkms_ready Whether a readiness check passed in its last round (1), or"
               " failed, hangs or has not run yet (0).\n# TYPE qkms_ready gauge\n");
    pthread_mutex_lock(&r->mu);
    for (int i = 0; i < CHK_N; i++) {
        const check *c = &r->c[i];
        bool stuck = c->started_ms && now - c->started_ms > r->k->cfg->readiness_timeout_ms;
        fprintf(f, "qkms_ready{check=\"%s\"} %d\n", check_names[i],
                !stuck && !strcmp(c->state, "ok"));
    }
    fprintf(f, "# HELP qkms_ready_changes_total Times a readiness check went from passing to"
               " failing or back.\n# TYPE qkms_ready_changes_total counter\n");
    for (int i = 0; i < CHK_N; i++)
        fprintf(f, "qkms_ready_changes_total{check=\"%s\"} %llu\n", check_names[i],
                (unsigned long long)r->changes[i]);
    pthread_mutex_unlock(&r->mu);
}
