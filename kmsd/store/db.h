/*
 * db — a fixed pool of libpq connections with prepared statements.
 *
 * Contract:
 *  - Statements are registered once (db_pool_open) as a table indexed by a
 *    caller-side enum; every connection prepares all of them when it
 *    connects. Parameters are always passed separately from SQL text.
 *  - db_acquire() hands out a connection, (re)connecting lazily; while the
 *    server is unreachable it fails fast (a shared backoff of 0.25 s doubling
 *    to db_pool_set_reconnect_max, 5 s by default) instead of stalling every
 *    request in connect().
 *  - Any error is classified (db_status); a connection that broke is closed
 *    on release and replaced on a later acquire, so a PostgreSQL restart heals
 *    without restarting kmsd.
 *  - db_tx() runs a callback inside BEGIN/COMMIT and retries it on
 *    serialization failure or deadlock (up to 5 times, jittered backoff) and
 *    once on a connection lost before COMMIT was sent. The callback must
 *    therefore have no side effects outside the database.
 *  - Every wait on the server (connect, each statement) has a deadline of
 *    io_timeout_ms (db_pool_set_io_timeout): a server that stops answering
 *    (stopped, partitioned, a dead host) costs a caller at most that long,
 *    then the statement fails DB_UNAVAILABLE, the connection is dropped and
 *    new connects wait out the shared backoff. TCP connections also get
 *    keepalives and tcp_user_timeout derived from it.
 *  - kmsd's session settings (statement_timeout, TimeZone UTC, DateStyle ISO,
 *    client_encoding UTF8) are SET after connecting, so nothing in the
 *    conninfo (options=, PGOPTIONS) or role defaults can override them.
 *  - Thread-safe.
 */
#ifndef QKMS_DB_H
#define QKMS_DB_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include <libpq-fe.h>

#include "err.h"

typedef enum {
    DB_OK = 0,
    DB_NOT_FOUND,   /* no row where one was required (callers set this) */
    DB_CONFLICT,    /* unique violation (23505) */
    DB_RETRY,       /* serialization failure / deadlock: run the transaction again */
    DB_UNAVAILABLE, /* cannot reach the server, pool exhausted, statement timeout */
    DB_INVALID,     /* a constraint refused the data (23xxx other than 23505) */
    DB_ERROR        /* anything else: a bug or a schema mismatch */
} db_status;

typedef struct {
    const char *name;
    const char *sql;
} db_stmt_def;

typedef struct db_pool db_pool;
typedef struct db_conn db_conn;

typedef struct {
    int size, in_use;
    uint64_t connects, connect_failures, errors, retries;
    uint64_t timeouts; /* statements or connects the server did not answer in time */
} db_stats;

int db_pool_open(db_pool **out, const char *conninfo, int size, int acquire_timeout_ms,
                 int statement_timeout_ms, const db_stmt_def *stmts, int nstmts);
void db_pool_close(db_pool *p);
/* Deadline for every wait on the server (default DB_IO_TIMEOUT_DEFAULT_MS);
 * set before the pool is used. */
#define DB_IO_TIMEOUT_DEFAULT_MS 10000
void db_pool_set_io_timeout(db_pool *p, int ms);
/* The longest wait between connects while the server is unreachable
 * (doubling from 250 ms; default DB_RECONNECT_MAX_DEFAULT_MS): how soon a
 * failed-over primary is found again. */
#define DB_RECONNECT_MAX_DEFAULT_MS 5000
void db_pool_set_reconnect_max(db_pool *p, int ms);

/* Wait (with backoff) until one connection succeeds or timeout_s passes.
 * Returns 0, or -1 with the libpq error (no secrets) in err. */
int db_wait_ready(db_pool *p, int timeout_s, char *err, size_t errlen);

db_conn *db_acquire(db_pool *p, db_status *st);
void db_release(db_pool *p, db_conn *c);
PGconn *db_pg(db_conn *c);

/* Execute prepared statement `stmt` with text parameters (NULL = SQL NULL)
 * and optional lengths/formats (binary parameters: formats[i] = 1). Returns
 * the result (PQclear it) or NULL with *st set. */
PGresult *db_exec(db_conn *c, int stmt, int nparams, const char *const *values,
                  const int *lengths, const int *formats, db_status *st);
/* One statement on its own (no transaction): acquire a connection, db_exec
 * stmt, release. Returns the result (PQclear it; it outlives the connection)
 * or NULL with *st set, from the acquire or from the statement. */
PGresult *db_query(db_pool *p, int stmt, int nparams, const char *const *values,
                   const int *lengths, const int *formats, db_status *st);
/* An unprepared statement with text parameters (admin and background paths),
 * under the same deadline and classification (errors logged). */
PGresult *db_exec_params(db_conn *c, const char *sql, int nparams, const char *const *values,
                         db_status *st);
/* Run a simple command (BEGIN, COMMIT, ...) with no parameters. */
db_status db_command(db_conn *c, const char *sql);

typedef db_status (*db_tx_fn)(db_conn *c, void *arg);
db_status db_tx(db_pool *p, db_tx_fn fn, void *arg);

/* SELECT 1 through the pool. */
db_status db_ping(db_pool *p);

/* Whether a statement has failed with SQLSTATE class 53 or 58 (disk full,
 * I/O error: the server cannot persist); if so, how long ago and which. */
bool db_last_resource_failure(db_pool *p, int64_t *ago_ms, char sqlstate[6]);

void db_stats_get(db_pool *p, db_stats *out);
/* The pool's figures for /metrics (a metrics_render_fn; pool is a db_pool). */
void db_metrics_render(void *pool, FILE *f);
const char *db_status_name(db_status st);
/* The first line of a libpq message (msg may be NULL), cut to fit buf:
 * what kmsd logs of a database error. */
void db_first_line(const char *msg, char *buf, size_t len);
/* The one translation of a db_status (not DB_OK) into the error currency
 * (err.h): 503 "unavailable" with Retry-After 1 for an outage or a retry
 * the pool gave up on, 500 "internal" for anything else (already logged).
 * Callers that give DB_NOT_FOUND or DB_CONFLICT a meaning of their own test
 * for them first. Returns the kind set. */
qk_kind db_fail(qk_err *e, db_status st);
/* Classify a SQLSTATE (NULL = connection-level failure). */
db_status db_classify_sqlstate(const char *sqlstate);

#endif
