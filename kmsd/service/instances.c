/*
 * instances — the registry of kmsd instances sharing the database
 * (instances.h): what each one's token holds, for staged master key
 * versions to wait for.
 */
#include "service/instances.h"

#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "store/pgarray.h"
#include "store/pgjson.h"
#include "store/queries.h"
#include "version.h"

/* The start time as PostgreSQL's to_timestamp takes it. */
static void started_text(const instance_self *me, char *buf, size_t len)
{
    snprintf(buf, len, "%lld.%06lld", me->started_us / 1000000, me->started_us % 1000000);
}

int instances_report(const instance_self *me, keywrap *kw, db_conn *c)
{
    char started[32], ttl[16];
    const char *vals[5];
    db_status st;
    PGresult *r = db_exec(c, Q_MASTER_LIST, 0, NULL, NULL, NULL, &st), *u;
    pgarray held;
    int rc = -1;

    if (!r)
        return -1;
    /* Loaded means checked: master_init and master_refresh load a version
     * only when the token's key has the check value the database recorded. */
    pgarray_init(&held);
    for (int i = 0; i < PQntuples(r); i++) {
        uint32_t v = (uint32_t)strtoul(PQgetvalue(r, i, 0), NULL, 10);
        if (keywrap_has(kw, v))
            pgarray_add_int(&held, (long)v);
    }
    PQclear(r);
    started_text(me, started, sizeof(started));
    snprintf(ttl, sizeof(ttl), "%d", me->lease_s);
    vals[0] = me->name;
    vals[1] = pgarray_finish(&held);
    vals[2] = QKMS_VERSION;
    vals[3] = started;
    vals[4] = ttl;
    u = vals[1] ? qt_exec(c, QT_INSTANCE_REPORT, 5, vals, &st) : NULL;
    if (u) {
        /* No row: a live instance of another start holds the name. */
        static _Atomic bool warned; /* the maintenance thread's and a rotation's */
        if (PQntuples(u) == 0 && !atomic_load(&warned))
            log_emit(LOG_WARN, "a live registry row of this instance_name is from another start "
                     "(an earlier run that did not stop cleanly, or another instance given "
                     "the same name); this one joins the registry when it expires",
                     "{s:s}", "instance", me->name);
        atomic_store(&warned, PQntuples(u) == 0);
        PQclear(u);
        if ((u = qt_exec(c, QT_INSTANCE_PURGE, 0, NULL, &st)))
            rc = 0;
        PQclear(u);
    }
    pgarray_free(&held);
    return rc;
}

void instances_leave(const instance_self *me, db_pool *db)
{
    char started[32];
    const char *vals[2] = {me->name, started};
    db_status st;
    db_conn *c;
    PGresult *r;
    if (!db || !me->name || !me->name[0] || !(c = db_acquire(db, &st)))
        return;
    started_text(me, started, sizeof(started));
    r = qt_exec(c, QT_INSTANCE_LEAVE, 2, vals, &st);
    if (!r)
        log_emit(LOG_WARN, "could not leave the registry of instances; the row expires by itself",
                 "{s:s,s:s}", "instance", me->name, "error", db_status_name(st));
    PQclear(r);
    db_release(db, c);
}

static json_t *json_col(const PGresult *r, int row, int col)
{
    json_t *j = json_loads(PQgetvalue(r, row, col), 0, NULL);
    return j ? j : json_array();
}

static json_t *instance_row(const PGresult *r, int i)
{
    return json_pack("{s:o,s:o,s:o,s:o,s:o,s:o,s:b,s:o}", "name", pgjson_text(r, i, 0),
                     "versions", json_col(r, i, 1), "software", pgjson_text(r, i, 2),
                     "started_at", pgjson_time(r, i, 3), "seen_at", pgjson_time(r, i, 4),
                     "expires_at", pgjson_time(r, i, 5), "live", PQgetvalue(r, i, 6)[0] == 't',
                     "lacking", json_col(r, i, 7));
}

qk_kind instances_list(db_pool *db, const char *self, json_t **out, qk_err *e)
{
    db_status st;
    db_conn *c = db_acquire(db, &st);
    PGresult *r;
    json_t *rows;
    *out = NULL;
    if (!c)
        return db_fail(e, st);
    r = qt_exec(c, QT_INSTANCE_LIST, 0, NULL, &st);
    db_release(db, c);
    if (!r)
        return db_fail(e, st);
    rows = pgjson_rows(r, instance_row);
    PQclear(r);
    *out = rows ? json_pack("{s:o,s:s}", "instances", rows, "self", self) : NULL;
    if (!*out)
        return qk_fail(e, QK_INTERNAL, "internal", "out of memory");
    return QK_OK;
}
