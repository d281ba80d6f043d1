/*
 * admin_streams — the operator's doors onto the key stream service:
 * GET /v1/admin/streams, GET /v1/admin/streams/{id} and
 * POST /v1/admin/streams/{id}/end (docs/api.md). The query string and the
 * path are parsed here; what they mean is streams_list, streams_get and
 * streams_end_by_operator's.
 */
#include <errno.h>
#include <stdlib.h>

#include "api/principal.h"
#include "api/routes.h"
#include "service/streams.h"

void h_admin_streams_list(http_request *rq, http_response *rs)
{
    const char *lims = http_query(rq, "limit");
    long limit = 100;
    char *end = NULL;
    json_t *arr;
    qk_err e;

    if (lims) {
        /* Anything but a whole decimal number is refused as out of range. */
        errno = 0;
        limit = strtol(lims, &end, 10);
        if (errno || !*lims || *end)
            limit = 0;
    }
    if (streams_list(&rq->kms->svc, http_query(rq, "device"), limit, &arr, &e) != QK_OK) {
        http_fail(rs, &e);
        return;
    }
    http_json(rs, 200, json_pack("{s:o}", "streams", arr));
}

void h_admin_stream_get(http_request *rq, http_response *rs)
{
    json_t *rec;
    qk_err e;
    if (streams_get(&rq->kms->svc, rq->params[0], &rec, &e) != QK_OK) {
        http_fail(rs, &e);
        return;
    }
    http_json(rs, 200, rec);
}

void h_admin_stream_end(http_request *rq, http_response *rs)
{
    qk_principal who = admin_principal(rq);
    json_t *in = http_body_object_opt(rq, rs);
    qk_err e;

    if (!in)
        return;
    json_decref(in);
    if (streams_end_by_operator(&rq->kms->svc, &who, rq->params[0], &e) != QK_OK) {
        http_fail(rs, &e);
        return;
    }
    h_admin_stream_get(rq, rs);
}
