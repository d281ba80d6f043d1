/*
 * admin_sessions — the operator's doors onto the session service:
 * GET /v1/admin/sessions, GET /v1/admin/sessions/{id} and
 * POST /v1/admin/sessions/{id}/end (docs/api.md). The query string and the
 * path are parsed here; what they mean is sessions_list, sessions_get and
 * sessions_end_by_operator's.
 */
#include <errno.h>
#include <stdlib.h>

#include "api/principal.h"
#include "api/routes.h"
#include "qkms_proto.h"
#include "service/sessions.h"

void h_admin_sessions_list(http_request *rq, http_response *rs)
{
    const char *lims = http_query(rq, "limit");
    session_filter f = {http_query(rq, "device"), http_query(rq, "state"), 100};
    char *end = NULL;
    json_t *arr;
    qk_err e;

    if (lims) {
        /* Anything but a whole decimal number is refused as out of range. */
        errno = 0;
        f.limit = strtol(lims, &end, 10);
        if (errno || !*lims || *end)
            f.limit = 0;
    }
    if (sessions_list(&rq->kms->svc, &f, &arr, &e) != QK_OK) {
        http_fail(rs, &e);
        return;
    }
    http_json(rs, 200, json_pack("{s:o}", "sessions", arr));
}

void h_admin_session_get(http_request *rq, http_response *rs)
{
    json_t *rec;
    qk_err e;
    if (sessions_get(&rq->kms->svc, rq->params[0], &rec, &e) != QK_OK) {
        http_fail(rs, &e);
        return;
    }
    http_json(rs, 200, rec);
}

void h_admin_session_end(http_request *rq, http_response *rs)
{
    const char *sid = rq->params[0];
    qk_principal who = admin_principal(rq);
    json_t *in;
    qk_err e;

    /* A path that names no possible session is 404 before the body is read. */
    if (!qkp_id_valid(sid)) {
        qk_fail(&e, QK_NOT_FOUND, "not_found", "no such session");
        http_fail(rs, &e);
        return;
    }
    in = http_body_object_opt(rq, rs);
    if (!in)
        return;
    json_decref(in);
    if (sessions_end_by_operator(&rq->kms->svc, &who, sid, &e) != QK_OK) {
        http_fail(rs, &e);
        return;
    }
    h_admin_session_get(rq, rs);
}
