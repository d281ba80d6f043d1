/* device_seen — see device_seen.h. */
#include "service/device_seen.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <time.h>

#include <jansson.h>

#include "log.h"
#include "store/pgarray.h"
#include "store/queries.h"

struct device_seen {
    db_pool *db;
    size_t n;
    _Atomic uint64_t *slots; /* device row << 24 | minute of the process + 1; 0: empty */
    time_t t0;               /* CLOCK_MONOTONIC seconds at open */
    pthread_mutex_t lock;    /* the queue and stop */
    pthread_cond_t wake;     /* on CLOCK_MONOTONIC */
    long long *queue;
    size_t queued;
    bool stop;
    pthread_t thread;
    pthread_mutex_t flushing; /* one flush at a time (the thread, a test, close) */
};

static time_t mono_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec;
}

void device_seen_note(device_seen *ds, long long device_pk)
{
    uint64_t minute, v, pk = (uint64_t)device_pk;
    size_t slot;

    if (!ds || device_pk <= 0)
        return;
    /* 24 bits of minutes: 31 years of uptime before a wrap, which costs
     * one extra note. Rows above 2^40 would share slot values: a missed
     * note at worst, never a wrong write. */
    minute = ((uint64_t)(mono_s() - ds->t0) / 60 + 1) & 0xffffff;
    v = (pk << 24) | minute;
    slot = (size_t)((pk * 0x9e3779b97f4a7c15ULL) >> 17) % ds->n;
    if (atomic_load_explicit(&ds->slots[slot], memory_order_relaxed) == v)
        return; /* noted this minute */
    atomic_store_explicit(&ds->slots[slot], v, memory_order_relaxed);
    pthread_mutex_lock(&ds->lock);
    if (ds->queued < DEVICE_SEEN_QUEUE)
        ds->queue[ds->queued++] = device_pk;
    else /* full: forget the note, so a later request makes it again */
        atomic_store_explicit(&ds->slots[slot], 0, memory_order_relaxed);
    pthread_mutex_unlock(&ds->lock);
}

/* One batch: last_seen_at, first_seen_at once, the first contacts audited. */
struct seen_tx {
    const char *rows; /* a bigint[] literal */
    long firsts;
};

static db_status seen_tx_fn(db_conn *c, void *arg)
{
    struct seen_tx *t = arg;
    const char *vals[1] = {t->rows};
    db_status st;
    PGresult *r = db_exec(c, Q_DEVICE_SEEN, 1, vals, NULL, NULL, &st);
    if (!r)
        return st;
    t->firsts = atol(PQgetvalue(r, 0, 0));
    PQclear(r);
    return DB_OK;
}

int device_seen_flush(device_seen *ds)
{
    long long *take = NULL;
    size_t n = 0, at = 0;
    int rc = 0;

    pthread_mutex_lock(&ds->flushing);
    pthread_mutex_lock(&ds->lock);
    if (ds->queued) {
        if ((take = malloc(ds->queued * sizeof(*take)))) {
            n = ds->queued;
            for (size_t i = 0; i < n; i++)
                take[i] = ds->queue[i];
        }
        ds->queued = 0; /* out of memory: dropped, noted again next minute */
    }
    pthread_mutex_unlock(&ds->lock);
    while (at < n) {
        size_t m = n - at < DEVICE_SEEN_BATCH ? n - at : DEVICE_SEEN_BATCH;
        struct seen_tx t = {0};
        pgarray a;
        db_status st;

        pgarray_init(&a);
        for (size_t i = 0; i < m; i++)
            pgarray_add_int(&a, (long)take[at + i]);
        if (!(t.rows = pgarray_finish(&a))) {
            log_emit(LOG_WARN, "device contact not recorded (out of memory)", "{s:i}", "devices",
                     (int)m);
            rc = -1;
        } else if ((st = db_tx(ds->db, seen_tx_fn, &t)) != DB_OK) {
            log_emit(LOG_WARN, "device contact not recorded; written at their next minute",
                     "{s:i,s:s}", "devices", (int)m, "error", db_status_name(st));
            rc = -1;
        } else if (t.firsts > 0) {
            log_emit(LOG_INFO, "devices heard from for the first time", "{s:I}", "count",
                     (json_int_t)t.firsts);
        }
        pgarray_free(&a);
        at += m;
    }
    free(take);
    pthread_mutex_unlock(&ds->flushing);
    return rc;
}

static void *flusher(void *arg)
{
    device_seen *ds = arg;
    pthread_mutex_lock(&ds->lock);
    while (!ds->stop) {
        struct timespec t;
        clock_gettime(CLOCK_MONOTONIC, &t);
        t.tv_sec += DEVICE_SEEN_FLUSH_S;
        while (!ds->stop && pthread_cond_timedwait(&ds->wake, &ds->lock, &t) == 0)
            ;
        if (ds->stop)
            break;
        pthread_mutex_unlock(&ds->lock);
        device_seen_flush(ds);
        pthread_mutex_lock(&ds->lock);
    }
    pthread_mutex_unlock(&ds->lock);
    return NULL;
}

device_seen *device_seen_open(db_pool *db, size_t slots)
{
    device_seen *ds = calloc(1, sizeof(*ds));
    pthread_condattr_t ca;
    bool cond = false;

    if (!ds)
        return NULL;
    ds->db = db;
    ds->n = slots ? slots : 1;
    ds->t0 = mono_s();
    pthread_mutex_init(&ds->lock, NULL);
    pthread_mutex_init(&ds->flushing, NULL);
    if (!(ds->slots = calloc(ds->n, sizeof(*ds->slots))) ||
        !(ds->queue = malloc(DEVICE_SEEN_QUEUE * sizeof(*ds->queue))))
        goto fail;
    if (pthread_condattr_init(&ca) != 0)
        goto fail;
    cond = pthread_condattr_setclock(&ca, CLOCK_MONOTONIC) == 0 &&
           pthread_cond_init(&ds->wake, &ca) == 0;
    pthread_condattr_destroy(&ca);
    if (!cond)
        goto fail;
    if (pthread_create(&ds->thread, NULL, flusher, ds) != 0) {
        pthread_cond_destroy(&ds->wake);
        goto fail;
    }
    return ds;
fail:
    pthread_mutex_destroy(&ds->lock);
    pthread_mutex_destroy(&ds->flushing);
    free((void *)ds->slots);
    free(ds->queue);
    free(ds);
    return NULL;
}

void device_seen_close(device_seen *ds)
{
    if (!ds)
        return;
    pthread_mutex_lock(&ds->lock);
    ds->stop = true;
    pthread_cond_signal(&ds->wake);
    pthread_mutex_unlock(&ds->lock);
    pthread_join(ds->thread, NULL);
    device_seen_flush(ds); /* what the last requests noted */
    pthread_cond_destroy(&ds->wake);
    pthread_mutex_destroy(&ds->lock);
    pthread_mutex_destroy(&ds->flushing);
    free((void *)ds->slots);
    free(ds->queue);
    free(ds);
}
