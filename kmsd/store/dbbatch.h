/*
 * dbbatch — group commit: requests that arrive together run as one
 * statement and one durable commit.
 *
 * Why: a key delivery's database work is one call of a stored function and
 * its commit; the per-statement and per-commit overhead (round trip,
 * executor start, transaction start and commit, WAL flush wait, two context
 * switches) is most of PostgreSQL's share. A batch pays it once for up to
 * max_items requests.
 *
 * Contract:
 *  - The statement (a prepared statement of the pool) takes nparams text
 *    arrays; element k of each array is request k's value (SQL NULL for a
 *    NULL value), and every row it returns starts with an integer column i
 *    = k (1-based). db_batch_run gives each request a PGresult of its own
 *    rows without that column, as if it had run alone.
 *  - Leader/follower, no timer: a request that finds fewer than
 *    max_inflight batches running leads at once (alone, when nothing else
 *    waits: then it runs its own single statement, so light load pays
 *    nothing for batching); the others queue and the next free leader takes
 *    up to max_items of them. Batches form only when requests already wait
 *    for each other.
 *  - Bounded wait: a request that no batch has taken within max_wait_ms
 *    (the pool's acquire timeout) leaves the queue with DB_UNAVAILABLE, as
 *    it would have waiting for a pooled connection; once taken, it waits
 *    for its batch, whose statement has the pool's deadlines.
 *  - Durable before the answer: a request's result is handed over only after
 *    the statement and its commit completed (ReadyForQuery with no error).
 *  - One failing request never fails its neighbours: when the batch
 *    statement fails with an error of the server (the whole statement and
 *    its transaction rolled back, nothing kept), each request runs again
 *    alone and gets its own outcome. When the connection fails, every
 *    request of the batch gets that error (DB_UNAVAILABLE), as one request
 *    alone would; the commit of a batch is atomic, so either all of it is in
 *    the database or none of it.
 *  - Thread-safe; the batch keeps pointers to the caller's values only
 *    until db_batch_run returns.
 */
#ifndef QKMS_DBBATCH_H
#define QKMS_DBBATCH_H

#include <stdio.h>

#include "store/db.h"

#define DB_BATCH_MAX_PARAMS 32

typedef struct db_batch db_batch;

/* max_items >= 1, max_inflight >= 1, nparams <= DB_BATCH_MAX_PARAMS,
 * max_wait_ms >= 1. 0, or -1 when out of memory. */
int db_batch_open(db_batch **out, db_pool *pool, int stmt, int nparams, int max_items,
                  int max_inflight, int max_wait_ms);
void db_batch_close(db_batch *b);

/* The request run alone on c (a batch of one, and each request after a
 * refused batch): the cheaper single statement, with the same rows. */
typedef PGresult *(*db_batch_alone_fn)(db_conn *c, void *arg, db_status *st);

/* Run one request (nparams text values, NULL = SQL NULL; alone(c, arg) when
 * it runs by itself). Its rows (PQclear them), or NULL with *st. */
PGresult *db_batch_run(db_batch *b, const char *const *values, db_batch_alone_fn alone,
                       void *arg, db_status *st);

/* Prometheus text: batches, requests, fallbacks to single runs. */
void db_batch_metrics_render(void *batch, FILE *f);

#endif
