/* dbbatch — group commit of one statement (see dbbatch.h). */
#include "store/dbbatch.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "deadline.h"
#include "log.h"
#include "store/pgarray.h"

#define MAX_COLS 64

/* One request, on its caller's stack for the length of db_batch_run. */
typedef struct item {
    const char *const *values;
    db_batch_alone_fn alone;
    void *arg;
    PGresult *res;
    db_status st;
    bool taken; /* in a leader's batch: its answer will come */
    bool done;
    pthread_cond_t cv;
    struct item *next;
} item;

struct db_batch {
    db_pool *pool;
    int stmt, nparams, max_items, max_inflight, max_wait_ms;
    pthread_mutex_t mu;
    item *head, *tail; /* waiting, in arrival order */
    int inflight;      /* batches running */
    _Atomic uint64_t batches, items, fallbacks, timeouts;
};

int db_batch_open(db_batch **out, db_pool *pool, int stmt, int nparams, int max_items,
                  int max_inflight, int max_wait_ms)
{
    db_batch *b;
    if (nparams < 1 || nparams > DB_BATCH_MAX_PARAMS || max_items < 1 || max_inflight < 1 ||
        max_wait_ms < 1)
        return -1;
    b = calloc(1, sizeof(*b));
    if (!b)
        return -1;
    b->pool = pool;
    b->stmt = stmt;
    b->nparams = nparams;
    b->max_items = max_items;
    b->max_inflight = max_inflight;
    b->max_wait_ms = max_wait_ms;
    pthread_mutex_init(&b->mu, NULL);
    *out = b;
    return 0;
}

void db_batch_close(db_batch *b)
{
    if (!b)
        return;
    pthread_mutex_destroy(&b->mu);
    free(b);
}

/* Item k's rows of r (i = k), without the i column, as a result of its own. */
static PGresult *rows_of(PGresult *r, int k, db_status *st)
{
    int ncols = PQnfields(r) - 1, row = 0;
    PGresAttDesc att[MAX_COLS];
    PGresult *out;

    if (ncols < 1 || ncols > MAX_COLS) {
        *st = DB_ERROR;
        return NULL;
    }
    out = PQmakeEmptyPGresult(NULL, PGRES_TUPLES_OK);
    if (!out) {
        *st = DB_ERROR;
        return NULL;
    }
    for (int c = 0; c < ncols; c++) {
        att[c] = (PGresAttDesc){.name = PQfname(r, c + 1), .tableid = PQftable(r, c + 1),
                                .columnid = PQftablecol(r, c + 1), .format = PQfformat(r, c + 1),
                                .typid = PQftype(r, c + 1), .typlen = PQfsize(r, c + 1),
                                .atttypmod = PQfmod(r, c + 1)};
    }
    if (!PQsetResultAttrs(out, ncols, att))
        goto fail;
    for (int t = 0; t < PQntuples(r); t++) {
        if (atoi(PQgetvalue(r, t, 0)) != k)
            continue;
        for (int c = 0; c < ncols; c++) {
            bool null = PQgetisnull(r, t, c + 1);
            if (!PQsetvalue(out, row, c, null ? NULL : PQgetvalue(r, t, c + 1),
                            null ? -1 : PQgetlength(r, t, c + 1)))
                goto fail;
        }
        row++;
    }
    if (row == 0) {
        /* The statement must answer every request; a missing one is a bug
         * in it, not something to guess around. */
        log_emit(LOG_ERROR, "group commit: no row for a request", "{s:i}", "item", k);
        goto fail;
    }
    *st = DB_OK;
    return out;
fail:
    PQclear(out);
    *st = DB_ERROR;
    return NULL;
}

/* Run the statement for the n items of list on c: their arrays, one call.
 * DB_OK with every item's res/st set, or the statement's status (items
 * untouched). */
static db_status exec_items(db_batch *b, db_conn *c, item *list, int n)
{
    pgarray arr[DB_BATCH_MAX_PARAMS];
    const char *vals[DB_BATCH_MAX_PARAMS] = {0};
    db_status st = DB_ERROR;
    PGresult *r = NULL;
    int p, k;
    item *it;

    if (n == 1 && list->alone) {
        /* By itself: the single statement, no arrays, no copy. */
        list->res = list->alone(c, list->arg, &st);
        if (list->res)
            list->st = DB_OK;
        return st;
    }
    for (p = 0; p < b->nparams; p++)
        pgarray_init(&arr[p]);
    for (it = list, k = 0; it && k < n; it = it->next, k++)
        for (p = 0; p < b->nparams; p++)
            pgarray_add(&arr[p], it->values[p]);
    for (p = 0; p < b->nparams; p++)
        if (!(vals[p] = pgarray_finish(&arr[p])))
            goto out;
    r = db_exec(c, b->stmt, b->nparams, vals, NULL, NULL, &st);
    if (!r)
        goto out;
    for (it = list, k = 1; it && k <= n; it = it->next, k++)
        it->res = rows_of(r, k, &it->st);
    st = DB_OK;
out:
    PQclear(r);
    for (p = 0; p < b->nparams; p++)
        pgarray_free(&arr[p]);
    return st;
}

/* The leader's work: the batch of n items starting at list. */
static void run_batch(db_batch *b, item *list, int n)
{
    db_status st;
    db_conn *c = db_acquire(b->pool, &st);
    item *it;

    if (n > 1) {
        atomic_fetch_add(&b->batches, 1);
        atomic_fetch_add(&b->items, (uint64_t)n);
    }
    if (c)
        st = exec_items(b, c, list, n);
    if (c && n > 1 &&
        (st == DB_RETRY || st == DB_CONFLICT || st == DB_INVALID || st == DB_ERROR)) {
        /* The server refused the statement and rolled all of it back: one
         * request's failure (or a serialization failure between batches).
         * Each request alone now, so only the failing one fails. */
        atomic_fetch_add(&b->fallbacks, 1);
        for (it = list; it && n-- > 0; it = it->next) {
            item *next = it->next;
            if (!c)
                c = db_acquire(b->pool, &it->st);
            if (!c)
                continue;
            it->next = NULL; /* exec_items takes a list */
            if ((st = exec_items(b, c, it, 1)) != DB_OK)
                it->st = st;
            it->next = next;
            if (st == DB_UNAVAILABLE) { /* the connection may be gone: a fresh one */
                db_release(b->pool, c);
                c = NULL;
            }
        }
    } else if (st != DB_OK) {
        for (it = list; it && n-- > 0; it = it->next)
            it->st = st;
    }
    if (c)
        db_release(b->pool, c);
}

PGresult *db_batch_run(db_batch *b, const char *const *values, db_batch_alone_fn alone,
                       void *arg, db_status *st)
{
    item me = {.values = values, .alone = alone, .arg = arg, .st = DB_ERROR};
    struct timespec dl = deadline_in_ms(b->max_wait_ms);

    deadline_cond_init(&me.cv);
    pthread_mutex_lock(&b->mu);
    if (b->tail)
        b->tail->next = &me;
    else
        b->head = &me;
    b->tail = &me;
    while (!me.done) {
        if (b->head == &me && b->inflight < b->max_inflight) {
            /* Lead: take the queue's first max_items (this one first). */
            item *list = b->head, *last = b->head, *it;
            int n = 1;
            while (n < b->max_items && last->next) {
                last = last->next;
                n++;
            }
            b->head = last->next;
            if (!b->head)
                b->tail = NULL;
            last->next = NULL;
            for (it = list; it; it = it->next)
                it->taken = true;
            b->inflight++;
            if (b->head && b->inflight < b->max_inflight)
                pthread_cond_signal(&b->head->cv); /* another batch may start */
            pthread_mutex_unlock(&b->mu);

            run_batch(b, list, n);

            pthread_mutex_lock(&b->mu);
            b->inflight--;
            for (it = list; it;) {
                item *next = it->next;
                it->done = true;
                if (it != &me)
                    pthread_cond_signal(&it->cv); /* it may return once we unlock */
                it = next;
            }
            if (b->head)
                pthread_cond_signal(&b->head->cv); /* a slot is free: lead */
            continue;
        }
        if (me.taken) {
            /* In a running batch: its statement has its own deadlines. */
            pthread_cond_wait(&me.cv, &b->mu);
        } else if (pthread_cond_timedwait(&me.cv, &b->mu, &dl) == ETIMEDOUT && !me.taken &&
                   !me.done) {
            /* No batch took it within the pool's acquire timeout: overloaded,
             * answer now (503) rather than queue without bound. */
            item **pp = &b->head, *prev = NULL;
            while (*pp != &me) {
                prev = *pp;
                pp = &(*pp)->next;
            }
            *pp = me.next;
            if (b->tail == &me)
                b->tail = prev;
            if (b->head && b->inflight < b->max_inflight)
                pthread_cond_signal(&b->head->cv);
            me.st = DB_UNAVAILABLE;
            atomic_fetch_add(&b->timeouts, 1);
            break;
        }
    }
    pthread_mutex_unlock(&b->mu);
    pthread_cond_destroy(&me.cv);
    *st = me.res ? DB_OK : me.st;
    return me.res;
}

void db_batch_metrics_render(void *batch, FILE *f)
{
    db_batch *b = batch;
    if (!b)
        return;
    fprintf(f,
            "# HELP qkms_db_group_commits_total Batches of two or more key requests run as one"
            " statement and one commit.\n"
            "# TYPE qkms_db_group_commits_total counter\nqkms_db_group_commits_total %llu\n"
            "# HELP qkms_db_group_commit_requests_total Key requests that shared a commit in those"
            " batches.\n"
            "# TYPE qkms_db_group_commit_requests_total counter\n"
            "qkms_db_group_commit_requests_total %llu\n"
            "# HELP qkms_db_group_commit_fallbacks_total Batches refused by the server whose"
            " requests then ran one by one.\n"
            "# TYPE qkms_db_group_commit_fallbacks_total counter\n"
            "qkms_db_group_commit_fallbacks_total %llu\n"
            "# HELP qkms_db_group_commit_queue_timeouts_total Key requests answered 503 because no"
            " batch took them within db_acquire_timeout_ms.\n"
            "# TYPE qkms_db_group_commit_queue_timeouts_total counter\n"
            "qkms_db_group_commit_queue_timeouts_total %llu\n",
            (unsigned long long)atomic_load(&b->batches),
            (unsigned long long)atomic_load(&b->items),
            (unsigned long long)atomic_load(&b->fallbacks),
            (unsigned long long)atomic_load(&b->timeouts));
}
