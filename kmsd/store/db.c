/* db — libpq connection pool, prepared statements, retrying transactions. */
#include "store/db.h"

#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <openssl/rand.h>

#include "deadline.h"
#include "log.h"
#include "store/pgresolve.h"

#define DB_BACKOFF_MIN_MS 250
#define DB_TX_ATTEMPTS 5
#define DB_TLS_POLL_MS 100

struct db_conn {
    PGconn *pg;
    bool busy;
    bool broken;
    struct db_pool *pool;
    bool timed_out; /* the server did not answer within io_timeout_ms */
    /* The server warned that it stopped waiting for the synchronous standby
     * (on_notice_result): what it just committed may exist on the primary
     * alone. */
    bool sync_unconfirmed;
    int io_timeout_ms;
};

struct db_pool {
    char *conninfo;
    pg_resolver *resolver; /* host names looked up within the connect deadline */
    char stmt_timeout[16]; /* milliseconds, as text */
    int io_timeout_ms;
    int connect_timeout_ms; /* the conninfo's connect_timeout, default 3 s */
    const db_stmt_def *stmts;
    int nstmts;
    int acquire_timeout_ms;

    pthread_mutex_t mu;
    pthread_cond_t cv;
    db_conn *conns;
    int size, in_use;
    int64_t next_connect_ms; /* shared backoff while the server is down */
    int backoff_ms;
    int backoff_max_ms; /* db_pool_set_reconnect_max */
    _Atomic int last_target; /* the server of a multi-server list that answered last */
    char *ci_host, *ci_hostaddr, *ci_port; /* the conninfo's lists (read_conninfo) */

    _Atomic uint64_t connects, connect_failures, errors, retries, timeouts;
    _Atomic uint64_t acquires, acquire_wait_us, exhausted; /* lending: a full pool's cost */
    _Atomic uint64_t sync_unconfirmed; /* statements refused on the standby warning */
    /* The last statement refused for want of resources (readiness). */
    _Atomic int64_t resource_failure_ms; /* 0 = never */
    char resource_sqlstate[6];           /* under mu */
};

const char *db_status_name(db_status st)
{
    static const char *const n[] = {"ok", "not_found", "conflict", "retry",
                                    "unavailable", "invalid", "error"};
    return (unsigned)st < sizeof(n) / sizeof(n[0]) ? n[st] : "?";
}

db_status db_classify_sqlstate(const char *s)
{
    if (!s || strlen(s) != 5)
        return DB_UNAVAILABLE;
    if (!strcmp(s, "40001") || !strcmp(s, "40P01"))
        return DB_RETRY;
    if (!strcmp(s, "23505"))
        return DB_CONFLICT;
    if (!strncmp(s, "23", 2) || !strncmp(s, "22", 2))
        return DB_INVALID;
    /* 08: connection exception; 57P0x: admin/crash shutdown, cannot connect
     * now; 57014: statement timeout; 53: insufficient resources. */
    if (!strncmp(s, "08", 2) || !strncmp(s, "57P", 3) || !strcmp(s, "57014") ||
        !strncmp(s, "53", 2))
        return DB_UNAVAILABLE;
    return DB_ERROR;
}

/* What kmsd reads of the conninfo itself, once, when the pool opens:
 * connect_timeout (libpq enforces it only in its blocking connect; kmsd
 * connects without blocking, so it applies the value itself, default 3 s:
 * a server whose address no longer answers, such as a restarted
 * container, must not hold a request for the whole io timeout), and the
 * host, hostaddr and port lists that connect_deadline takes apart. A key
 * the conninfo does not set stays NULL. 0, or -1 when out of memory. */
static int read_conninfo(db_pool *p, const char *conninfo)
{
    PQconninfoOption *opts = PQconninfoParse(conninfo, NULL);
    int rc = 0;
    p->connect_timeout_ms = 3000;
    for (PQconninfoOption *o = opts; o && o->keyword; o++) {
        char **to = !strcmp(o->keyword, "host")       ? &p->ci_host
                    : !strcmp(o->keyword, "hostaddr") ? &p->ci_hostaddr
                    : !strcmp(o->keyword, "port")     ? &p->ci_port
                                                      : NULL;
        if (!o->val || !*o->val)
            continue;
        if (!strcmp(o->keyword, "connect_timeout") && atoi(o->val) > 0)
            p->connect_timeout_ms = atoi(o->val) * 1000;
        else if (to && !(*to = strdup(o->val)))
            rc = -1;
    }
    PQconninfoFree(opts);
    return rc;
}

int db_pool_open(db_pool **out, const char *conninfo, int size, int acquire_timeout_ms,
                 int statement_timeout_ms, const db_stmt_def *stmts, int nstmts)
{
    db_pool *p = calloc(1, sizeof(*p));
    if (!p)
        return -1;
    p->conninfo = strdup(conninfo);
    p->conns = calloc((size_t)size, sizeof(*p->conns));
    p->resolver = pgr_new(conninfo);
    if (!p->conninfo || !p->conns || !p->resolver || read_conninfo(p, conninfo) != 0) {
        pgr_free(p->resolver);
        free(p->ci_host);
        free(p->ci_hostaddr);
        free(p->ci_port);
        free(p->conninfo);
        free(p->conns);
        free(p);
        return -1;
    }
    snprintf(p->stmt_timeout, sizeof(p->stmt_timeout), "%d", statement_timeout_ms);
    p->io_timeout_ms = DB_IO_TIMEOUT_DEFAULT_MS;
    for (int i = 0; i < size; i++)
        p->conns[i].pool = p;
    p->size = size;
    p->stmts = stmts;
    p->nstmts = nstmts;
    p->acquire_timeout_ms = acquire_timeout_ms;
    p->backoff_ms = DB_BACKOFF_MIN_MS;
    p->backoff_max_ms = DB_RECONNECT_MAX_DEFAULT_MS;
    pthread_mutex_init(&p->mu, NULL);
    deadline_cond_init(&p->cv); /* waited on with deadline_in_ms */
    *out = p;
    return 0;
}

void db_pool_close(db_pool *p)
{
    if (!p)
        return;
    for (int i = 0; i < p->size; i++)
        if (p->conns[i].pg)
            PQfinish(p->conns[i].pg);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->cv);
    free(p->conns);
    pgr_free(p->resolver);
    free(p->ci_host);
    free(p->ci_hostaddr);
    free(p->ci_port);
    free(p->conninfo);
    free(p);
}

void db_first_line(const char *msg, char *buf, size_t len)
{
    size_t n = strcspn(msg ? msg : "", "\n");
    if (n >= len)
        n = len - 1;
    memcpy(buf, msg ? msg : "", n);
    buf[n] = 0;
}

/* libpq's message for a failed connect has one line per host it tried (a
 * multi-host db_conninfo): all of them, joined with "; ", so that the log
 * says why each candidate primary was passed over. */
static void all_lines(const char *msg, char *buf, size_t len)
{
    size_t o = 0;
    const char *m = msg ? msg : "";
    buf[0] = 0;
    while (*m && o + 1 < len) {
        size_t n = strcspn(m, "\n");
        if (n) {
            int w = snprintf(buf + o, len - o, "%s%.*s", o ? "; " : "", (int)n, m);
            if (w < 0 || (size_t)w >= len - o)
                break;
            o += (size_t)w;
        }
        m += n;
        while (*m == '\n')
            m++;
    }
}

/* Server notices ("relation already exists, skipping") go to the JSON log. */
static void on_notice(void *arg, const char *msg)
{
    char line[256];
    (void)arg;
    db_first_line(msg, line, sizeof(line));
    log_emit(LOG_DEBUG, "database notice", "{s:s}", "detail", line);
}

/* A pooled connection's notices. One of them matters to a key: when a
 * commit's wait for the synchronous standby is cancelled (an operator's
 * pg_cancel_backend while the standby is slow or gone; statement_timeout
 * does not apply, PostgreSQL disables it before the commit proper),
 * PostgreSQL reports the COMMIT, or the autocommitted statement, as
 * successful with a WARNING "canceling wait for synchronous replication":
 * committed on the primary, perhaps not on the standby, so a failover may
 * lose it. kmsd must not answer such a key (docs/ha.md). The warning has
 * the generic SQLSTATE 01000 and a translatable text; it is told from
 * other 01000 warnings (the wraparound "must be vacuumed" one) by the
 * function that raised it, which the server sends untranslated (when a
 * server leaves that field out, any WARNING 01000 is taken for it: kmsd's
 * own SQL raises none, and a false alarm costs a 503 where a miss could
 * cost a key). */
static void on_notice_result(void *arg, const PGresult *res)
{
    db_conn *c = arg;
    const char *sev = PQresultErrorField(res, PG_DIAG_SEVERITY_NONLOCALIZED);
    const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
    const char *fn = PQresultErrorField(res, PG_DIAG_SOURCE_FUNCTION);
    if (sev && state && !strcmp(sev, "WARNING") && !strcmp(state, "01000") &&
        (!fn || !strcmp(fn, "SyncRepWaitForLSN"))) {
        char line[256];
        c->sync_unconfirmed = true;
        db_first_line(PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY), line, sizeof(line));
        log_emit(LOG_WARN, "commit not confirmed by the synchronous standby", "{s:s}", "warning",
                 line);
        return;
    }
    on_notice(NULL, PQresultErrorMessage(res));
}

void db_pool_set_io_timeout(db_pool *p, int ms) { p->io_timeout_ms = ms > 0 ? ms : 1; }

void db_pool_set_reconnect_max(db_pool *p, int ms)
{
    p->backoff_max_ms = ms < DB_BACKOFF_MIN_MS ? DB_BACKOFF_MIN_MS : ms;
}

/* Wait until pg's socket is ready for events or the deadline passes:
 * 1 ready, 0 deadline passed, -1 error (no socket). */
static int wait_socket(PGconn *pg, short events, int64_t deadline)
{
    struct pollfd pfd = {.fd = PQsocket(pg), .events = events};
    for (;;) {
        int64_t left = deadline - deadline_now_ms();
        int n;
        if (pfd.fd < 0)
            return -1;
        if (left <= 0)
            return 0;
        n = poll(&pfd, 1, left > INT_MAX ? INT_MAX : (int)left);
        if (n > 0)
            return 1;
        if (n == 0)
            return 0;
        if (errno != EINTR)
            return -1;
    }
}

/* After a PQsend*(): flush the request and collect its results, never
 * waiting past deadline. Like PQexec, returns the last result, or the first
 * error; NULL with *timed_out set when the server did not answer in time
 * (the connection is then unusable: its protocol state is mid-query). A
 * blocking PQcancel is not attempted: it would wait on the same unanswering
 * server (it connects to the postmaster and waits for it to close). */
static PGresult *await_result(PGconn *pg, int64_t deadline, bool *timed_out)
{
    PGresult *keep = NULL, *r;
    int w;
    *timed_out = false;
    for (;;) {
        int f = PQflush(pg);
        if (f <= 0)
            break; /* sent, or an error PQgetResult reports */
        w = wait_socket(pg, POLLIN | POLLOUT, deadline);
        if (w == 0)
            goto timeout;
        if (w < 0 || !PQconsumeInput(pg))
            break;
    }
    for (;;) {
        while (PQisBusy(pg)) {
            /* Under TLS, bytes already decrypted may wait in the TLS layer
             * where poll() cannot see them (libpq's own waits check for
             * that; its public API cannot): read again before waiting, and
             * wait in short slices. */
            bool tls = PQsslInUse(pg);
            int64_t now = deadline_now_ms();
            int64_t until = tls && deadline - now > DB_TLS_POLL_MS ? now + DB_TLS_POLL_MS : deadline;
            if (tls && (!PQconsumeInput(pg) || !PQisBusy(pg)))
                break;
            w = wait_socket(pg, POLLIN, until);
            if (w == 0 && until == deadline)
                goto timeout;
            if (w < 0 || !PQconsumeInput(pg))
                break; /* the connection failed: PQgetResult says so */
        }
        r = PQgetResult(pg);
        if (!r)
            break;
        if (keep && PQresultStatus(keep) == PGRES_FATAL_ERROR) {
            PQclear(r);
        } else {
            PQclear(keep);
            keep = r;
        }
        if (PQstatus(pg) != CONNECTION_OK)
            break;
    }
    return keep;
timeout:
    PQclear(keep);
    *timed_out = true;
    return NULL;
}

/* The candidates of one connect: libpq's host, hostaddr and port lists
 * taken apart, one entry per server to try. */
#define DB_MAX_TARGETS (PGR_MAX_HOSTS * PGR_MAX_ADDRS)
typedef struct {
    char host[DB_MAX_TARGETS][PGR_ENTRY_MAX];
    char addr[DB_MAX_TARGETS][PGR_ENTRY_MAX];
    char port[DB_MAX_TARGETS][PGR_ENTRY_MAX];
    int n;
} db_targets;

/* Split the lists (NULL or "" for none). Returns the number of servers, 1
 * when there is nothing to take apart (a single host, or none: libpq's
 * defaults), or -1 when the lists do not match (libpq will say why). */
static int split_targets(db_targets *t, const char *host, const char *addr, const char *port)
{
    int nh = host && *host ? pgr_split(host, t->host, DB_MAX_TARGETS) : 0;
    int na = addr && *addr ? pgr_split(addr, t->addr, DB_MAX_TARGETS) : 0;
    int np = port && *port ? pgr_split(port, t->port, DB_MAX_TARGETS) : 0;
    int n = nh > na ? nh : na;
    if (nh < 0 || na < 0 || np < 0 || (nh && na && nh != na) || (np > 1 && np != n))
        return -1;
    for (int i = 0; i < n; i++) {
        if (!nh)
            t->host[i][0] = '\0';
        if (!na)
            t->addr[i][0] = '\0';
        if (np == 0)
            t->port[i][0] = '\0';
        else if (np == 1 && i > 0) /* one port for every host, as libpq reads it */
            memcpy(t->port[i], t->port[0], PGR_ENTRY_MAX);
    }
    t->n = n;
    return n > 1 ? n : 1;
}

/* One connect to the servers named by vals[7..9] (NULL: the conninfo's),
 * polled until it is made, fails, or the deadline passes. */
static PGconn *connect_poll(const char *const *keys, const char *const *vals, int64_t deadline,
                            int budget_ms, char *err, size_t errlen)
{
    PostgresPollingStatusType ps = PGRES_POLLING_WRITING;
    PGconn *pg = PQconnectStartParams(keys, vals, 1);
    if (!pg) {
        db_first_line("out of memory", err, errlen);
        return NULL;
    }
    while (PQstatus(pg) != CONNECTION_BAD && ps != PGRES_POLLING_OK && ps != PGRES_POLLING_FAILED) {
        int w = wait_socket(pg, ps == PGRES_POLLING_READING ? POLLIN : POLLOUT, deadline);
        if (w == 0) {
            snprintf(err, errlen, "no connection within %d ms", budget_ms);
            PQfinish(pg);
            return NULL;
        }
        ps = w < 0 ? PGRES_POLLING_FAILED : PQconnectPoll(pg);
    }
    if (PQstatus(pg) != CONNECTION_OK) {
        all_lines(PQerrorMessage(pg), err, errlen);
        PQfinish(pg);
        return NULL;
    }
    return pg;
}

/* Connect without blocking past a deadline (connect_timeout has a 2 s
 * granularity and does not cover a server that accepts but never answers).
 *
 * Several servers (a multi-host db_conninfo, or a name with several
 * addresses) are tried one at a time, each with a budget of its own
 * (per_host_ms), starting with the one that answered last: libpq's
 * non-blocking connect never leaves a server that is silent (a host gone
 * without a reset, a frozen postmaster that still accepts TCP), so one such
 * server listed first would otherwise use up every connect's deadline and
 * the primary behind it would never be reached. */
static PGconn *connect_deadline(db_pool *p, int per_host_ms, char *err, size_t errlen)
{
    char idle[16], intvl[16], tcp_to[16];
    /* host/hostaddr/port come after dbname (the conninfo) so that they win:
     * libpq takes the last non-empty value of a repeated key. */
    const char *keys[] = {"application_name", "keepalives",       "keepalives_idle",
                          "keepalives_interval", "keepalives_count", "tcp_user_timeout",
                          "dbname",           "host",             "hostaddr",
                          "port",             NULL};
    const char *vals[] = {"kmsd", "1", idle, intvl, "2", tcp_to, p->conninfo, NULL, NULL, NULL, NULL};
    pgr_lists *lists = NULL;
    db_targets *t = NULL;
    bool resolved = false;
    PGconn *pg = NULL;
    int n, first;
    int64_t start = deadline_now_ms();
    /* TCP: a vanished peer is noticed after about io_timeout_ms, by
     * keepalives while idle (idle + 2 probes) and tcp_user_timeout while
     * data is unacknowledged. A conninfo that sets these keys wins. */
    snprintf(idle, sizeof(idle), "%d", p->io_timeout_ms / 2000 > 1 ? p->io_timeout_ms / 2000 : 1);
    snprintf(intvl, sizeof(intvl), "%d", p->io_timeout_ms / 4000 > 1 ? p->io_timeout_ms / 4000 : 1);
    snprintf(tcp_to, sizeof(tcp_to), "%d", p->io_timeout_ms);
    /* Host names are looked up here, within the deadline, not by libpq's
     * blocking getaddrinfo (pgresolve.h). */
    lists = malloc(sizeof(*lists));
    t = malloc(sizeof(*t));
    if (!lists || !t) {
        db_first_line("out of memory", err, errlen);
        goto out;
    }
    /* Half the first server's budget for the lookup: the other half is for
     * TCP and authentication, also when the lookup gives up and falls back
     * to the name's last addresses. */
    if (pgr_params(p->resolver, start + per_host_ms / 2, lists, &resolved, err, errlen) != 0)
        goto out;
    if (resolved) {
        n = split_targets(t, lists->host, lists->hostaddr, lists->port);
        if (n > 1 && !lists->port[0] && p->ci_port && strchr(p->ci_port, ','))
            n = -1; /* a port list pgresolve left to libpq: let libpq have it all */
    } else {
        n = split_targets(t, p->ci_host, p->ci_hostaddr, p->ci_port);
    }
    if (n <= 1) {
        /* One server (or lists libpq must judge): one connect, as libpq
         * makes it. */
        if (resolved) {
            vals[7] = lists->host;
            vals[8] = lists->hostaddr;
            vals[9] = lists->port; /* empty: the conninfo's port stands */
        } else {
            keys[7] = NULL; /* libpq resolves as it always did */
        }
        pg = connect_poll(keys, vals, start + per_host_ms, per_host_ms, err, errlen);
        goto out;
    }
    first = atomic_load(&p->last_target) % n;
    err[0] = '\0';
    for (int k = 0; k < n && !pg; k++) {
        int i = (first + k) % n;
        char why[512];
        size_t used = strlen(err);
        vals[7] = t->host[i];
        vals[8] = t->addr[i];
        vals[9] = t->port[i];
        pg = connect_poll(keys, vals, deadline_now_ms() + per_host_ms, per_host_ms, why,
                          sizeof(why));
        if (pg) {
            atomic_store(&p->last_target, i);
        } else if (used + 1 < errlen) {
            /* libpq names the server in its own messages; a timeout does not */
            bool named = strstr(why, "connection to server") != NULL;
            snprintf(err + used, errlen - used, "%s%s%s%s%s%s", used ? "; " : "",
                     named ? "" : (t->host[i][0] ? t->host[i] : t->addr[i]), named ? "" : ":",
                     named ? "" : (t->port[i][0] ? t->port[i] : "default port"),
                     named ? "" : ": ", why);
        }
    }
out:
    free(t);
    free(lists);
    return pg;
}

/* kmsd's session settings, applied after connecting so that nothing in
 * db_conninfo (options=, PGOPTIONS, ALTER ROLE ... SET) can override them:
 * statement_timeout bounds every statement, timestamps and text come back
 * in the forms kmsd parses, the stored functions and SKIP LOCKED leases
 * are written for READ COMMITTED, and the prepared statements are planned
 * as PostgreSQL's default plans them (a forced generic plan turns the
 * event lease's index range into a full scan). */
static bool apply_settings(db_pool *p, PGconn *pg, int64_t deadline, char *err, size_t errlen)
{
    const char *vals[1] = {p->stmt_timeout};
    bool to = false;
    PGresult *r = NULL;
    if (PQsendQueryParams(pg,
                          "SELECT set_config('statement_timeout', $1, false),"
                          " set_config('TimeZone', 'UTC', false),"
                          " set_config('DateStyle', 'ISO, MDY', false),"
                          " set_config('IntervalStyle', 'postgres', false),"
                          " set_config('client_encoding', 'UTF8', false),"
                          " set_config('default_transaction_isolation', 'read committed', false),"
                          " set_config('plan_cache_mode', 'auto', false),"
                          /* A commit is answered only once durable: on the
                           * primary's disk, and on a synchronous standby's
                           * when the server has one (docs/ha.md). Weaker
                           * values from a role, a database or options= are
                           * raised; remote_apply (stronger) is kept. */
                          " CASE WHEN current_setting('synchronous_commit')"
                          "  IN ('off', 'local', 'remote_write')"
                          "  THEN set_config('synchronous_commit', 'on', false) END",
                          1, NULL, vals, NULL, NULL, 0))
        r = await_result(pg, deadline, &to);
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        if (to)
            snprintf(err, errlen, "no answer from the server within %d ms", p->io_timeout_ms);
        else
            db_first_line(r ? PQresultErrorMessage(r) : PQerrorMessage(pg), err, errlen);
        PQclear(r);
        return false;
    }
    PQclear(r);
    return true;
}

static PGconn *connect_one(db_pool *p, char *err, size_t errlen)
{
    char dummy[256];
    int per_host_ms = p->connect_timeout_ms < p->io_timeout_ms ? p->connect_timeout_ms
                                                               : p->io_timeout_ms;
    PGconn *pg;
    if (!err) {
        err = dummy;
        errlen = sizeof(dummy);
    }
    pg = connect_deadline(p, per_host_ms, err, errlen);
    if (!pg)
        return NULL;
    PQsetNoticeProcessor(pg, on_notice, NULL);
    /* Requests never block in send(); every wait is a poll with a deadline. */
    if (PQsetnonblocking(pg, 1) != 0 ||
        !apply_settings(p, pg, deadline_now_ms() + p->io_timeout_ms, err, errlen)) {
        PQfinish(pg);
        return NULL;
    }
    for (int i = 0; i < p->nstmts; i++) {
        char name[16];
        bool to = false;
        PGresult *r = NULL;
        snprintf(name, sizeof(name), "s%d", i);
        if (PQsendPrepare(pg, name, p->stmts[i].sql, 0, NULL))
            r = await_result(pg, deadline_now_ms() + p->io_timeout_ms, &to);
        if (PQresultStatus(r) != PGRES_COMMAND_OK) {
            char line[256];
            db_first_line(to ? "no answer from the server in time"
                          : r ? PQresultErrorMessage(r) : PQerrorMessage(pg),
                          line, sizeof(line));
            log_emit(LOG_ERROR, "prepare failed", "{s:s,s:s}", "statement", p->stmts[i].name,
                     "error", line);
            snprintf(err, errlen, "cannot prepare %s: %s", p->stmts[i].name, line);
            PQclear(r);
            PQfinish(pg);
            return NULL;
        }
        PQclear(r);
    }
    return pg;
}

int db_wait_ready(db_pool *p, int timeout_s, char *err, size_t errlen)
{
    int64_t deadline = deadline_now_ms() + (int64_t)timeout_s * 1000;
    int delay = DB_BACKOFF_MIN_MS;
    for (;;) {
        PGconn *pg = connect_one(p, err, errlen);
        if (pg) {
            PQfinish(pg);
            return 0;
        }
        if (deadline_now_ms() + delay > deadline)
            return -1;
        log_emit(LOG_WARN, "database not reachable yet", "{s:s,s:i}", "error", err, "retry_ms",
                 delay);
        usleep((useconds_t)delay * 1000);
        delay = delay * 2 > p->backoff_max_ms ? p->backoff_max_ms : delay * 2;
    }
}

/* An idle connection has nothing to say: if its socket is readable, the
 * server spoke unprompted (a FATAL before closing, then EOF). Read it and
 * see whether the connection survived; one poll(2), no round trip. */
static bool idle_conn_alive(PGconn *pg)
{
    struct pollfd pfd = {.fd = PQsocket(pg), .events = POLLIN};
    if (PQstatus(pg) != CONNECTION_OK || pfd.fd < 0)
        return false;
    /* libpq takes an ErrorResponse while idle for a notice and notices
     * the EOF behind it only on its next read: read until nothing is left. */
    for (int i = 0; i < 4; i++) {
        if (poll(&pfd, 1, 0) <= 0)
            return true; /* nothing (more) pending */
        if (!PQconsumeInput(pg) || PQstatus(pg) != CONNECTION_OK)
            return false;
    }
    return true;
}

/* A connection failed (p->mu held): wait out the backoff before the next
 * connect, and double it. Only a failure of an attempt made while
 * connecting was allowed moves it on: when the server goes away, every
 * pooled caller fails at once, and those failures are one outage, not
 * eight (which took the wait to its 5 s cap at the first restart and kept
 * requests failing for seconds after the server was back). */
static void backoff_step(db_pool *p)
{
    int64_t now = deadline_now_ms();
    if (now < p->next_connect_ms)
        return;
    p->next_connect_ms = now + p->backoff_ms;
    p->backoff_ms = p->backoff_ms * 2 > p->backoff_max_ms ? p->backoff_max_ms : p->backoff_ms * 2;
}

db_conn *db_acquire(db_pool *p, db_status *st)
{
    struct timespec dl = deadline_in_ms(p->acquire_timeout_ms);
    db_conn *c = NULL;
    bool need_connect;
    int64_t t0 = 0;

    pthread_mutex_lock(&p->mu);
    if (p->in_use == p->size)
        t0 = deadline_now_us();
    while (p->in_use == p->size)
        if (pthread_cond_timedwait(&p->cv, &p->mu, &dl) == ETIMEDOUT)
            break;
    atomic_fetch_add(&p->acquires, 1);
    if (t0)
        atomic_fetch_add(&p->acquire_wait_us, (uint64_t)(deadline_now_us() - t0));
    if (p->in_use == p->size) {
        pthread_mutex_unlock(&p->mu);
        atomic_fetch_add(&p->exhausted, 1);
        *st = DB_UNAVAILABLE;
        return NULL;
    }
    /* Prefer a live connection; otherwise take an empty slot to connect. */
    for (int i = 0; i < p->size && !c; i++)
        if (!p->conns[i].busy && p->conns[i].pg)
            c = &p->conns[i];
    for (int i = 0; i < p->size && !c; i++)
        if (!p->conns[i].busy)
            c = &p->conns[i];
    need_connect = !c->pg;
    if (need_connect && deadline_now_ms() < p->next_connect_ms) {
        pthread_mutex_unlock(&p->mu);
        *st = DB_UNAVAILABLE;
        return NULL;
    }
    c->busy = true;
    c->broken = false;
    c->timed_out = false;
    c->sync_unconfirmed = false;
    c->io_timeout_ms = p->io_timeout_ms;
    p->in_use++;
    pthread_mutex_unlock(&p->mu);

    if (!need_connect && !idle_conn_alive(c->pg)) {
        /* Closed by the server while idle (a restart): connect anew now
         * rather than fail this caller on a connection known to be dead. */
        PQfinish(c->pg);
        c->pg = NULL;
        need_connect = true;
    }
    if (need_connect) {
        char err[1024] = "";
        c->pg = connect_one(p, err, sizeof(err));
        pthread_mutex_lock(&p->mu);
        if (c->pg) {
            PQsetNoticeReceiver(c->pg, on_notice_result, c);
            atomic_fetch_add(&p->connects, 1);
            p->backoff_ms = DB_BACKOFF_MIN_MS;
            p->next_connect_ms = 0;
        } else {
            atomic_fetch_add(&p->connect_failures, 1);
            backoff_step(p);
            c->busy = false;
            p->in_use--;
            pthread_cond_signal(&p->cv);
        }
        pthread_mutex_unlock(&p->mu);
        if (!c->pg) {
            log_emit(LOG_WARN, "database connect failed", "{s:s}", "error", err);
            *st = DB_UNAVAILABLE;
            return NULL;
        }
    }
    *st = DB_OK;
    return c;
}

void db_release(db_pool *p, db_conn *c)
{
    if (!c)
        return;
    if (!c->broken && PQstatus(c->pg) == CONNECTION_OK &&
        PQtransactionStatus(c->pg) != PQTRANS_IDLE) {
        /* A caller left a transaction open (error path): roll it back. */
        if (db_command(c, "ROLLBACK") != DB_OK)
            c->broken = true;
    }
    if (c->broken || PQstatus(c->pg) != CONNECTION_OK) {
        PQfinish(c->pg);
        c->pg = NULL;
    }
    pthread_mutex_lock(&p->mu);
    if (c->timed_out) {
        /* The server stopped answering: new connections wait out the
         * shared backoff instead of each spending io_timeout_ms. */
        atomic_fetch_add(&p->timeouts, 1);
        backoff_step(p);
    }
    c->busy = false;
    p->in_use--;
    pthread_cond_signal(&p->cv);
    pthread_mutex_unlock(&p->mu);
}

PGconn *db_pg(db_conn *c) { return c->pg; }

/* Classes 53 (insufficient resources: disk full, out of memory) and 58
 * (system error: I/O) mean the server cannot persist what it is given. */
static void note_resource_failure(db_pool *p, const char *sqlstate)
{
    if (!sqlstate || strlen(sqlstate) != 5 || (strncmp(sqlstate, "53", 2) && strncmp(sqlstate, "58", 2)))
        return;
    pthread_mutex_lock(&p->mu);
    memcpy(p->resource_sqlstate, sqlstate, 6);
    atomic_store(&p->resource_failure_ms, deadline_now_ms());
    pthread_mutex_unlock(&p->mu);
}

bool db_last_resource_failure(db_pool *p, int64_t *ago_ms, char sqlstate[6])
{
    int64_t at = atomic_load(&p->resource_failure_ms);
    if (!at)
        return false;
    pthread_mutex_lock(&p->mu);
    memcpy(sqlstate, p->resource_sqlstate, 6);
    pthread_mutex_unlock(&p->mu);
    *ago_ms = deadline_now_ms() - at;
    return true;
}

static db_status classify_result(db_conn *c, PGresult *r, bool timed_out)
{
    db_status st;
    const char *sqlstate;
    if (c->sync_unconfirmed) {
        /* Whatever the statement answered: its commit is not known to be on
         * the standby. The caller's outcome is unknown, as after a lost
         * COMMIT; the connection is not reused. */
        c->broken = true;
        atomic_fetch_add(&c->pool->sync_unconfirmed, 1);
        return DB_UNAVAILABLE;
    }
    if (r && (PQresultStatus(r) == PGRES_COMMAND_OK || PQresultStatus(r) == PGRES_TUPLES_OK))
        return DB_OK;
    sqlstate = r ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : NULL;
    note_resource_failure(c->pool, sqlstate);
    st = db_classify_sqlstate(sqlstate);
    if (timed_out) {
        c->timed_out = true;
        c->broken = true;
        st = DB_UNAVAILABLE;
        log_emit(LOG_WARN, "database did not answer in time; connection dropped", "{s:i}",
                 "io_timeout_ms", c->io_timeout_ms);
        return st;
    }
    if (PQstatus(c->pg) != CONNECTION_OK) {
        c->broken = true;
        st = DB_UNAVAILABLE;
    }
    if (st == DB_ERROR || st == DB_UNAVAILABLE) {
        char line[256];
        db_first_line(r ? PQresultErrorMessage(r) : PQerrorMessage(c->pg), line, sizeof(line));
        log_emit(st == DB_ERROR ? LOG_ERROR : LOG_WARN, "database error", "{s:s,s:s}", "error",
                 line, "class", db_status_name(st));
    }
    return st;
}

PGresult *db_exec(db_conn *c, int stmt, int nparams, const char *const *values, const int *lengths,
                  const int *formats, db_status *st)
{
    /* The statement's server-side name is its index; see connect_one(). */
    PGresult *r = NULL;
    bool to = false;
    char name[16];
    snprintf(name, sizeof(name), "s%d", stmt);
    if (PQsendQueryPrepared(c->pg, name, nparams, values, lengths, formats, 0))
        r = await_result(c->pg, deadline_now_ms() + c->io_timeout_ms, &to);
    *st = classify_result(c, r, to);
    if (*st != DB_OK) {
        PQclear(r);
        return NULL;
    }
    return r;
}

PGresult *db_exec_params(db_conn *c, const char *sql, int nparams, const char *const *values,
                         db_status *st)
{
    PGresult *r = NULL;
    bool to = false;
    if (PQsendQueryParams(c->pg, sql, nparams, NULL, values, NULL, NULL, 0))
        r = await_result(c->pg, deadline_now_ms() + c->io_timeout_ms, &to);
    *st = classify_result(c, r, to);
    if (*st != DB_OK) {
        PQclear(r);
        return NULL;
    }
    return r;
}

PGresult *db_query(db_pool *p, int stmt, int nparams, const char *const *values,
                   const int *lengths, const int *formats, db_status *st)
{
    db_conn *c = db_acquire(p, st);
    PGresult *r;
    if (!c)
        return NULL;
    r = db_exec(c, stmt, nparams, values, lengths, formats, st);
    db_release(p, c);
    return r;
}

db_status db_command(db_conn *c, const char *sql)
{
    PGresult *r = NULL;
    bool to = false;
    db_status st;
    if (PQsendQuery(c->pg, sql))
        r = await_result(c->pg, deadline_now_ms() + c->io_timeout_ms, &to);
    st = classify_result(c, r, to);
    PQclear(r);
    return st;
}

static void jitter_sleep(int attempt)
{
    uint8_t b = 0;
    RAND_bytes(&b, 1);
    usleep((useconds_t)((1 << attempt) * 1000 + b * 20));
}

db_status db_tx(db_pool *p, db_tx_fn fn, void *arg)
{
    db_status st = DB_ERROR;
    bool reconnected = false;
    for (int attempt = 0; attempt < DB_TX_ATTEMPTS; attempt++) {
        bool commit_sent = false, timed_out;
        db_conn *c = db_acquire(p, &st);
        if (!c)
            return st;
        st = db_command(c, "BEGIN");
        if (st == DB_OK)
            st = fn(c, arg);
        if (st == DB_OK) {
            commit_sent = true;
            st = db_command(c, "COMMIT");
        }
        if (st != DB_OK && !c->broken)
            db_command(c, "ROLLBACK");
        timed_out = c->timed_out;
        db_release(p, c);
        if (st == DB_RETRY) {
            atomic_fetch_add(&p->retries, 1);
            jitter_sleep(attempt);
            continue;
        }
        /* A connection that died before COMMIT left nothing behind; one more
         * try on a fresh connection covers a server restart between requests.
         * After COMMIT was sent the outcome is unknown, so we do not retry;
         * nor after a server that did not answer at all (it would double the
         * wait of a request that already waited io_timeout_ms). */
        if (st == DB_UNAVAILABLE && !commit_sent && !reconnected && !timed_out) {
            reconnected = true;
            atomic_fetch_add(&p->retries, 1);
            continue;
        }
        break;
    }
    if (st != DB_OK)
        atomic_fetch_add(&p->errors, 1);
    return st;
}

db_status db_ping(db_pool *p)
{
    db_status st;
    db_conn *c = db_acquire(p, &st);
    if (!c)
        return st;
    st = db_command(c, "SELECT 1");
    db_release(p, c);
    return st;
}

void db_stats_get(db_pool *p, db_stats *s)
{
    pthread_mutex_lock(&p->mu);
    s->size = p->size;
    s->in_use = p->in_use;
    pthread_mutex_unlock(&p->mu);
    s->connects = atomic_load(&p->connects);
    s->connect_failures = atomic_load(&p->connect_failures);
    s->errors = atomic_load(&p->errors);
    s->retries = atomic_load(&p->retries);
    s->timeouts = atomic_load(&p->timeouts);
}

void db_metrics_render(void *pool, FILE *f)
{
    db_pool *p = pool;
    db_stats ds;
    db_stats_get(p, &ds);
    fprintf(f,
            "# HELP qkms_db_pool_size PostgreSQL connections in the pool.\n"
            "# TYPE qkms_db_pool_size gauge\nqkms_db_pool_size %d\n"
            "# HELP qkms_db_pool_in_use PostgreSQL connections lent out now.\n"
            "# TYPE qkms_db_pool_in_use gauge\nqkms_db_pool_in_use %d\n"
            "# HELP qkms_db_connects_total Successful PostgreSQL connects.\n"
            "# TYPE qkms_db_connects_total counter\nqkms_db_connects_total %llu\n"
            "# HELP qkms_db_connect_failures_total Failed PostgreSQL connects.\n"
            "# TYPE qkms_db_connect_failures_total counter\nqkms_db_connect_failures_total %llu\n"
            "# HELP qkms_db_tx_errors_total Transactions that failed after retries.\n"
            "# TYPE qkms_db_tx_errors_total counter\nqkms_db_tx_errors_total %llu\n"
            "# HELP qkms_db_tx_retries_total Transactions run again (serialization, reconnect).\n"
            "# TYPE qkms_db_tx_retries_total counter\nqkms_db_tx_retries_total %llu\n"
            "# HELP qkms_db_timeouts_total Connections dropped because PostgreSQL did not answer"
            " within db_io_timeout_ms.\n"
            "# TYPE qkms_db_timeouts_total counter\nqkms_db_timeouts_total %llu\n",
            ds.size, ds.in_use, (unsigned long long)ds.connects,
            (unsigned long long)ds.connect_failures, (unsigned long long)ds.errors,
            (unsigned long long)ds.retries, (unsigned long long)ds.timeouts);
    fprintf(f,
            "# HELP qkms_db_pool_acquires_total Connections asked of the pool.\n"
            "# TYPE qkms_db_pool_acquires_total counter\nqkms_db_pool_acquires_total %llu\n"
            "# HELP qkms_db_pool_wait_seconds_total Time callers waited for a free connection"
            " (rate over qkms_db_pool_acquires_total: the mean wait).\n"
            "# TYPE qkms_db_pool_wait_seconds_total counter\n"
            "qkms_db_pool_wait_seconds_total %.6f\n"
            "# HELP qkms_db_pool_exhausted_total Callers that got no connection within"
            " db_acquire_timeout_ms (answered 503).\n"
            "# TYPE qkms_db_pool_exhausted_total counter\nqkms_db_pool_exhausted_total %llu\n"
            "# HELP qkms_db_sync_unconfirmed_total Statements whose commit PostgreSQL reported"
            " with the warning that it stopped waiting for the synchronous standby (answered"
            " 503, connection dropped).\n"
            "# TYPE qkms_db_sync_unconfirmed_total counter\nqkms_db_sync_unconfirmed_total %llu\n",
            (unsigned long long)atomic_load(&p->acquires),
            (double)atomic_load(&p->acquire_wait_us) / 1e6,
            (unsigned long long)atomic_load(&p->exhausted),
            (unsigned long long)atomic_load(&p->sync_unconfirmed));

}

qk_kind db_fail(qk_err *e, db_status st)
{
    if (st == DB_UNAVAILABLE || st == DB_RETRY) {
        qk_fail(e, QK_UNAVAILABLE, "unavailable", "database unavailable, retry later");
        if (e)
            e->retry_after = 1;
        return QK_UNAVAILABLE;
    }
    return qk_fail(e, QK_INTERNAL, "internal", "internal error (see kmsd log)");
}
