/*
 * audit_query — the audit log's admin operations (audit_query.h): judging
 * the list filters, reading a page of rows into the export format, and
 * verification with its log lines and its own audit event. The chain
 * itself is audit_seal's and audit_verify's; the SQL is in store/queries.h.
 */
#include "service/audit_query.h"

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "timetext.h"
#include "service/audit.h"
#include "service/audit_canon.h"
#include "service/device_model.h"
#include "store/queries.h"

#define EVENT_MAX 64

/* ---- the filters -------------------------------------------------------------- */

typedef struct {
    const char *since, *device, *type; /* type without its '*' */
    bool prefix;                       /* type names a prefix */
    long limit, after;
    char typebuf[EVENT_MAX + 1];
} list_filter;

/* Event names: 1-64 of [a-z0-9_.-]; a trailing '*' asks for a prefix. */
static bool event_arg_ok(const char *s, bool *prefix)
{
    size_t n = strlen(s);
    *prefix = n > 0 && s[n - 1] == '*';
    if (*prefix)
        n--;
    if (n == 0 || n > EVENT_MAX)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= '0' && s[i] <= '9') || s[i] == '_' ||
              s[i] == '.' || s[i] == '-'))
            return false;
    return true;
}

static bool long_arg(const char *s, long lo, long hi, long *out)
{
    char *end = NULL;
    long v;
    if (!s || !*s || *s == '-' || *s == '+' || *s == ' ')
        return false;
    errno = 0;
    v = strtol(s, &end, 10);
    if (errno || *end || v < lo || v > hi)
        return false;
    *out = v;
    return true;
}

static qk_kind judge_filter(const audit_list_args *a, bool export, list_filter *f, qk_err *e)
{
    long max = export ? AUDIT_EXPORT_MAX : AUDIT_LIST_MAX;
    memset(f, 0, sizeof(*f));
    f->limit = export ? AUDIT_EXPORT_DEFAULT : AUDIT_LIST_DEFAULT;
    if ((a->since && !timetext_valid(a->since, true)) || (a->device && !device_id_valid(a->device)) ||
        (a->type && !event_arg_ok(a->type, &f->prefix)) ||
        (a->limit && !long_arg(a->limit, 1, max, &f->limit)) ||
        (a->after && !long_arg(a->after, 0, LONG_MAX, &f->after)))
        return qk_fail(e, QK_MALFORMED, "invalid_query",
                       "bad since (RFC 3339 time or YYYY-MM-DD), device, type (event name, or"
                       " prefix ending in *), limit (1-%ld) or after (row id)",
                       max);
    f->since = a->since;
    f->device = a->device;
    if (a->type) {
        snprintf(f->typebuf, sizeof(f->typebuf), "%.*s",
                 (int)strlen(a->type) - (f->prefix ? 1 : 0), a->type);
        f->type = f->typebuf;
    }
    return QK_OK;
}

/* ---- the rows ------------------------------------------------------------------ */

static json_t *detail_json(const char *text)
{
    json_error_t je;
    json_t *j = json_loads(text, JSON_DECODE_ANY, &je);
    return j ? j : json_string(text);
}

static json_t *text_or_null(const PGresult *r, int row, int col)
{
    return PQgetisnull(r, row, col) ? json_null() : json_string(PQgetvalue(r, row, col));
}

static json_t *time_or_null(const PGresult *r, int row, int col)
{
    char buf[28];
    if (PQgetisnull(r, row, col))
        return json_null();
    audit_format_time(strtoll(PQgetvalue(r, row, col), NULL, 10), buf);
    return json_string(buf);
}

/* Row i of QT_AUDIT_LIST in the export format; JSON null if out of memory. */
static json_t *row_json(const PGresult *r, int i, bool export)
{
    json_t *o = json_pack("{s:I,s:o,s:o,s:o,s:o,s:o,s:b}", "id",
                          (json_int_t)strtoll(PQgetvalue(r, i, 0), NULL, 10), "at",
                          time_or_null(r, i, 1), "actor", text_or_null(r, i, 2), "event",
                          text_or_null(r, i, 3), "device_id", text_or_null(r, i, 4), "detail",
                          detail_json(PQgetvalue(r, i, 5)), "sealed", !PQgetisnull(r, i, 7));
    if (export && o) {
        json_object_set_new(o, "prev_hash", text_or_null(r, i, 6));
        json_object_set_new(o, "hash", text_or_null(r, i, 7));
        json_object_set_new(o, "sealed_at", time_or_null(r, i, 8));
        /* What the hash covers, exactly as sealed (docs/operations.md). */
        json_object_set_new(o, "hashed_at_us",
                            PQgetisnull(r, i, 9)
                                ? json_null()
                                : json_integer((json_int_t)strtoll(PQgetvalue(r, i, 9), NULL, 10)));
        json_object_set_new(o, "hashed_detail", text_or_null(r, i, 10));
    }
    return o ? o : json_null();
}

static qk_kind list_rows(qk_svc *s, const audit_list_args *a, bool export, audit_page *out,
                         qk_err *e)
{
    list_filter f;
    char slimit[24], safter[24];
    db_status st;
    db_conn *c = NULL;
    PGresult *r = NULL;
    qk_kind k;
    int n;

    memset(out, 0, sizeof(*out));
    if ((k = judge_filter(a, export, &f, e)) != QK_OK)
        return k;
    snprintf(slimit, sizeof(slimit), "%ld", f.limit);
    snprintf(safter, sizeof(safter), "%ld", f.after);
    if (!(c = db_acquire(s->db, &st)))
        return db_fail(e, st);
    {
        const char *vals[6] = {safter, f.since, f.device, f.type, f.prefix ? "t" : "f", slimit};
        r = qt_exec(c, QT_AUDIT_LIST, 6, vals, &st);
    }
    db_release(s->db, c);
    if (!r) {
        if (st == DB_INVALID) /* the calendar: "2026-02-30" */
            return qk_fail(e, QK_MALFORMED, "invalid_query", "since is not a valid time");
        return db_fail(e, st);
    }
    n = PQntuples(r);
    out->rows = json_array();
    for (int i = 0; i < n; i++)
        json_array_append_new(out->rows, row_json(r, i, export));
    if (n == f.limit && n > 0)
        out->next = strtoll(PQgetvalue(r, n - 1, 0), NULL, 10);
    PQclear(r);
    return QK_OK;
}

qk_kind audit_query_list(qk_svc *s, const audit_list_args *a, audit_page *out, qk_err *e)
{
    return list_rows(s, a, false, out, e);
}

qk_kind audit_query_export(qk_svc *s, const audit_list_args *a, audit_page *out, qk_err *e)
{
    return list_rows(s, a, true, out, e);
}

/* ---- verification -------------------------------------------------------------- */

/* Who ran a verification, and what it found, is itself an audit event
 * (best effort: the verdict stands without it). */
static void record_verify(qk_svc *s, const char *who, const audit_verify_result *v)
{
    db_status st;
    db_conn *c = db_acquire(s->db, &st);
    json_t *d;
    if (!c)
        return;
    d = json_pack("{s:b,s:I,s:I,s:I}", "ok", v->ok, "rows_checked", (json_int_t)v->rows_checked,
                  "checkpoints_checked", (json_int_t)v->checkpoints_checked, "gaps",
                  (json_int_t)v->gap_count);
    if (d && !v->ok) {
        json_object_set_new(d, "problem", json_string(audit_problem_name(v->problem)));
        json_object_set_new(d, "id", json_integer((json_int_t)v->bad_id));
    }
    audit_append(c, who, "audit.verified", NULL, d);
    db_release(s->db, c);
}

static void log_verdict(const char *who, const audit_verify_result *v)
{
    if (!v->ok)
        log_emit(LOG_ERROR, "audit chain verification failed", "{s:s,s:I,s:s,s:s}", "problem",
                 audit_problem_name(v->problem), "id", (json_int_t)v->bad_id, "detail", v->detail,
                 "by", who);
    else
        log_emit(LOG_INFO, "audit chain verified", "{s:I,s:I,s:s}", "rows",
                 (json_int_t)v->rows_checked, "checkpoints", (json_int_t)v->checkpoints_checked,
                 "by", who);
    if (v->gap_count > 0)
        log_emit(LOG_WARN,
                 "audit log has gaps: ids never sealed (rolled back, or deleted before sealing)",
                 "{s:I,s:I,s:I,s:I}", "gaps", (json_int_t)v->gap_count, "ids",
                 (json_int_t)v->gap_ids, "first", (json_int_t)(v->ngaps ? v->gaps[0].lo : 0),
                 "last", (json_int_t)(v->ngaps ? v->gaps[v->ngaps - 1].hi : 0));
}

qk_kind audit_query_verify(qk_svc *s, const qk_principal *who, audit_verify_result *out,
                           qk_err *e)
{
    qk_kind k = audit_chain_verify(s, who->log.req_id, out, e);
    if (k != QK_OK)
        return k;
    log_verdict(who->name, out);
    record_verify(s, who->name, out);
    return QK_OK;
}
