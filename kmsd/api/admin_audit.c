/* admin_audit — the audit log's admin API: list, verify, export (docs/operations.md). */
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "service/audit.h"
#include "service/audit_chain.h"
#include "service/device_model.h"
#include "hexutil.h"
#include "log.h"
#include "api/routes.h"

#define LIST_MAX 1000
#define LIST_DEFAULT 100
#define EXPORT_MAX 5000
#define EXPORT_DEFAULT 1000
#define EVENT_MAX 64

static bool digits(const char *s, int n)
{
    for (int i = 0; i < n; i++)
        if (s[i] < '0' || s[i] > '9')
            return false;
    return true;
}

/* "YYYY-MM-DD" or RFC 3339 "YYYY-MM-DDTHH:MM:SS[.frac](Z|+HH:MM|-HH:MM)".
 * PostgreSQL checks the calendar. */
static bool time_arg_ok(const char *s)
{
    size_t n = strlen(s), i = 19;
    if (n == 10)
        return digits(s, 4) && s[4] == '-' && digits(s + 5, 2) && s[7] == '-' && digits(s + 8, 2);
    if (n < 20 || n > 40 || !digits(s, 4) || s[4] != '-' || !digits(s + 5, 2) || s[7] != '-' ||
        !digits(s + 8, 2) || (s[10] != 'T' && s[10] != 't') || !digits(s + 11, 2) ||
        s[13] != ':' || !digits(s + 14, 2) || s[16] != ':' || !digits(s + 17, 2))
        return false;
    if (s[i] == '.') {
        size_t f = ++i;
        while (s[i] >= '0' && s[i] <= '9')
            i++;
        if (i == f || i - f > 9)
            return false;
    }
    if ((s[i] == 'Z' || s[i] == 'z') && s[i + 1] == 0)
        return true;
    return (s[i] == '+' || s[i] == '-') && n - i == 6 && digits(s + i + 1, 2) && s[i + 3] == ':' &&
           digits(s + i + 4, 2);
}

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

/* GET /v1/admin/audit and /v1/admin/audit/export: the same filters, rows in
 * id order after the cursor; export adds the chain columns. */
static void list_rows(http_request *rq, http_response *rs, bool export)
{
    const char *since = http_query(rq, "since"), *device = http_query(rq, "device"),
               *type = http_query(rq, "type"), *lims = http_query(rq, "limit"),
               *afters = http_query(rq, "after");
    long limit = export ? EXPORT_DEFAULT : LIST_DEFAULT, after = 0;
    bool prefix = false;
    char slimit[16], safter[24], typebuf[EVENT_MAX + 1];
    db_status st;
    db_conn *c;
    PGresult *r;
    json_t *rows;

    if ((since && !time_arg_ok(since)) || (device && !device_id_valid(device)) ||
        (type && !event_arg_ok(type, &prefix)) ||
        (lims && !long_arg(lims, 1, export ? EXPORT_MAX : LIST_MAX, &limit)) ||
        (afters && !long_arg(afters, 0, LONG_MAX, &after))) {
        http_error(rs, 400, "invalid_query",
                   "bad since (RFC 3339 time or YYYY-MM-DD), device, type (event name, or prefix"
                   " ending in *), limit (1-%d) or after (row id)",
                   export ? EXPORT_MAX : LIST_MAX);
        return;
    }
    if (type) {
        snprintf(typebuf, sizeof(typebuf), "%.*s", (int)strlen(type) - (prefix ? 1 : 0), type);
        type = typebuf;
    }
    snprintf(slimit, sizeof(slimit), "%ld", limit);
    snprintf(safter, sizeof(safter), "%ld", after);
    c = db_acquire(rq->kms->svc.db, &st);
    if (!c) {
        http_db_error(rs, st);
        return;
    }
    {
        const char *vals[6] = {safter, since, device, type, prefix ? "t" : "f", slimit};
        r = db_exec_params(
            c,
            "SELECT a.id, (extract(epoch FROM a.at) * 1000000)::bigint, a.actor, a.event,"
            " a.device_id, a.detail::text, encode(a.prev_hash, 'hex'), encode(a.hash, 'hex'),"
            " (extract(epoch FROM a.sealed_at) * 1000000)::bigint, a.hashed_at_us, a.hashed_detail"
            " FROM audit_log a WHERE a.id > $1::bigint"
            " AND ($2::timestamptz IS NULL OR a.at >= $2::timestamptz)"
            " AND ($3::text IS NULL OR a.device_id = $3::text)"
            " AND ($4::text IS NULL OR a.event = $4::text"
            "      OR ($5::boolean AND left(a.event, length($4::text)) = $4::text))"
            " ORDER BY a.id LIMIT $6::int",
            6, vals, &st);
    }
    if (!r) {
        db_release(rq->kms->svc.db, c);
        if (st == DB_INVALID)
            http_error(rs, 400, "invalid_query", "since is not a valid time");
        else
            http_db_error(rs, st);
        return;
    }
    db_release(rq->kms->svc.db, c);
    rows = json_array();
    for (int i = 0; i < PQntuples(r); i++) {
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
        json_array_append_new(rows, o ? o : json_null());
    }
    {
        int n = PQntuples(r);
        json_t *next = n == limit && n > 0
                           ? json_integer((json_int_t)strtoll(PQgetvalue(r, n - 1, 0), NULL, 10))
                           : json_null();
        PQclear(r);
        http_json(rs, 200, json_pack("{s:o,s:o}", export ? "rows" : "events", rows, "next", next));
    }
}

void h_audit_list(http_request *rq, http_response *rs) { list_rows(rq, rs, false); }

void h_audit_export(http_request *rq, http_response *rs) { list_rows(rq, rs, true); }

/* Who ran a verification, and what it found, is itself an audit event. */
static void record_verify(http_request *rq, const audit_verify_result *v)
{
    db_status st;
    db_conn *c = db_acquire(rq->kms->svc.db, &st);
    if (!c)
        return;
    json_t *d = json_pack("{s:b,s:I,s:I,s:I}", "ok", v->ok, "rows_checked",
                          (json_int_t)v->rows_checked, "checkpoints_checked",
                          (json_int_t)v->checkpoints_checked, "gaps", (json_int_t)v->gap_count);
    if (d && !v->ok) {
        json_object_set_new(d, "problem", json_string(audit_problem_name(v->problem)));
        json_object_set_new(d, "id", json_integer((json_int_t)v->bad_id));
    }
    audit_append(c, rq->who.name, "audit.verified", NULL, d);
    db_release(rq->kms->svc.db, c);
}

/* [{"lo","hi","missing","skipped_at"}] for the listed gaps. */
static json_t *gaps_json(const audit_verify_result *v)
{
    json_t *a = json_array();
    for (size_t i = 0; a && i < v->ngaps; i++) {
        char at[28];
        audit_format_time(v->gaps[i].skipped_at_us, at);
        if (json_array_append_new(a, json_pack("{s:I,s:I,s:I,s:s}", "lo", (json_int_t)v->gaps[i].lo,
                                               "hi", (json_int_t)v->gaps[i].hi, "missing",
                                               (json_int_t)v->gaps[i].missing, "skipped_at",
                                               at)) != 0) {
            json_decref(a);
            return NULL;
        }
    }
    return a;
}

void h_audit_verify(http_request *rq, http_response *rs)
{
    audit_verify_result v;
    db_status st = DB_OK;
    CK_RV rv = CKR_OK;
    json_t *in = http_body_object_opt(rq, rs), *bad = json_null(), *head = json_null(), *gaps;
    char hex[2 * AUDIT_HASH_LEN + 1];

    if (!in)
        return;
    if (json_object_size(in) != 0) {
        json_decref(in);
        http_error(rs, 422, "invalid_request", "verify takes no parameters");
        return;
    }
    json_decref(in);
    if (audit_chain_verify(&rq->kms->svc, &v, &st, &rv) != 0) {
        if (rv != CKR_OK) {
            log_emit(LOG_WARN, "audit verification: token error", "{s:s}", "error",
                     p11_rv_name(rv));
            rs->retry_after = 1;
            http_error(rs, 503, "unavailable", "token unavailable, retry later");
        } else {
            http_db_error(rs, st);
        }
        return;
    }
    if (!v.ok) {
        bad = json_pack("{s:I,s:s,s:s}", "id", (json_int_t)v.bad_id, "problem",
                        audit_problem_name(v.problem), "detail", v.detail);
        if (bad && v.bad_checkpoint)
            json_object_set_new(bad, "checkpoint", json_integer((json_int_t)v.bad_checkpoint));
        log_emit(LOG_ERROR, "audit chain verification failed", "{s:s,s:I,s:s,s:s}", "problem",
                 audit_problem_name(v.problem), "id", (json_int_t)v.bad_id, "detail", v.detail,
                 "by", rq->who.name);
    } else {
        log_emit(LOG_INFO, "audit chain verified", "{s:I,s:I,s:s}", "rows",
                 (json_int_t)v.rows_checked, "checkpoints", (json_int_t)v.checkpoints_checked,
                 "by", rq->who.name);
    }
    if (v.head_id) {
        qkms_hex_encode(v.head_hash, AUDIT_HASH_LEN, hex);
        head = json_pack("{s:I,s:s}", "id", (json_int_t)v.head_id, "hash", hex);
    }
    if (v.gap_count > 0)
        log_emit(LOG_WARN, "audit log has gaps: ids never sealed (rolled back, or deleted before"
                           " sealing)",
                 "{s:I,s:I,s:I,s:I}", "gaps", (json_int_t)v.gap_count, "ids",
                 (json_int_t)v.gap_ids, "first", (json_int_t)(v.ngaps ? v.gaps[0].lo : 0), "last",
                 (json_int_t)(v.ngaps ? v.gaps[v.ngaps - 1].hi : 0));
    record_verify(rq, &v);
    gaps = gaps_json(&v);
    free(v.gaps);
    http_json(rs, 200,
              json_pack("{s:b,s:I,s:I,s:I,s:I,s:o,s:o,s:I,s:I,s:o}", "ok", v.ok, "rows_checked",
                        (json_int_t)v.rows_checked, "checkpoints_checked",
                        (json_int_t)v.checkpoints_checked, "checkpoints_unverifiable",
                        (json_int_t)v.checkpoints_unverifiable, "pending", (json_int_t)v.pending,
                        "head", head ? head : json_null(), "first_bad", bad ? bad : json_null(),
                        "gap_count", (json_int_t)v.gap_count, "gap_ids", (json_int_t)v.gap_ids,
                        "gaps", gaps ? gaps : json_null()));
}
