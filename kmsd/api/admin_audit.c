/*
 * admin_audit — the audit log's admin door: GET /v1/admin/audit,
 * GET /v1/admin/audit/export, POST /v1/admin/audit/verify and its progress,
 * GET /v1/admin/audit/verify/{request_id}
 * (docs/operations.md). It reads the query or body, calls the audit
 * service (service/audit_query.h) and encodes the answer.
 */
#include <stdlib.h>

#include "api/principal.h"
#include "api/routes.h"
#include "hexutil.h"
#include "service/audit_query.h"
#include "service/audit_verify.h"

static void list_door(http_request *rq, http_response *rs, bool export)
{
    audit_list_args a = {.since = http_query(rq, "since"),
                         .device = http_query(rq, "device"),
                         .type = http_query(rq, "type"),
                         .limit = http_query(rq, "limit"),
                         .after = http_query(rq, "after")};
    audit_page p;
    qk_err e;
    qk_kind k = export ? audit_query_export(&rq->kms->svc, &a, &p, &e)
                       : audit_query_list(&rq->kms->svc, &a, &p, &e);
    if (k != QK_OK) {
        http_fail(rs, &e);
        return;
    }
    http_json(rs, 200,
              json_pack("{s:o,s:o}", export ? "rows" : "events", p.rows, "next",
                        p.next ? json_integer((json_int_t)p.next) : json_null()));
}

void h_audit_list(http_request *rq, http_response *rs) { list_door(rq, rs, false); }

void h_audit_export(http_request *rq, http_response *rs) { list_door(rq, rs, true); }

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

static json_t *verify_json(const audit_verify_result *v)
{
    json_t *bad = json_null(), *head = json_null(), *gaps = gaps_json(v);
    char hex[2 * AUDIT_HASH_LEN + 1];
    if (!v->ok) {
        bad = json_pack("{s:I,s:s,s:s}", "id", (json_int_t)v->bad_id, "problem",
                        audit_problem_name(v->problem), "detail", v->detail);
        if (bad && v->bad_checkpoint)
            json_object_set_new(bad, "checkpoint", json_integer((json_int_t)v->bad_checkpoint));
    }
    if (v->head_id) {
        qkms_hex_encode(v->head_hash, AUDIT_HASH_LEN, hex);
        head = json_pack("{s:I,s:s}", "id", (json_int_t)v->head_id, "hash", hex);
    }
    return json_pack("{s:b,s:I,s:I,s:I,s:I,s:o,s:o,s:I,s:I,s:o}", "ok", v->ok, "rows_checked",
                     (json_int_t)v->rows_checked, "checkpoints_checked",
                     (json_int_t)v->checkpoints_checked, "checkpoints_unverifiable",
                     (json_int_t)v->checkpoints_unverifiable, "pending", (json_int_t)v->pending,
                     "head", head ? head : json_null(), "first_bad", bad ? bad : json_null(),
                     "gap_count", (json_int_t)v->gap_count, "gap_ids", (json_int_t)v->gap_ids,
                     "gaps", gaps ? gaps : json_null());
}

void h_audit_verify(http_request *rq, http_response *rs)
{
    audit_verify_result v;
    qk_principal who = admin_principal(rq);
    qk_err e;
    json_t *in = http_body_object_opt(rq, rs);

    if (!in)
        return;
    if (json_object_size(in) != 0) {
        json_decref(in);
        http_error(rs, 422, "invalid_request", "verify takes no parameters");
        return;
    }
    json_decref(in);
    if (audit_query_verify(&rq->kms->svc, &who, &v, &e) != QK_OK) {
        http_fail(rs, &e);
        return;
    }
    http_json(rs, 200, verify_json(&v));
    free(v.gaps);
}

/* GET /v1/admin/audit/verify/{request_id}: how far a verification started
 * on this kmsd with that X-Request-Id has got (kmsctl audit verify polls it
 * to draw its progress). */
void h_audit_verify_progress(http_request *rq, http_response *rs)
{
    audit_verify_progress_info p;
    const char *id = rq->params[0];

    if (!http_request_id_ok(id)) {
        http_error(rs, 422, "invalid_request",
                   "request_id must be 1-64 characters of A-Z a-z 0-9 - _ .");
        return;
    }
    if (!audit_verify_progress(id, &p)) {
        http_error(rs, 404, "not_found",
                   "no verification with this request ID is running on this kmsd");
        return;
    }
    http_json(rs, 200,
              json_pack("{s:s,s:I,s:f}", "request_id", id, "rows_checked",
                        (json_int_t)p.rows_checked, "fraction", p.fraction));
}
