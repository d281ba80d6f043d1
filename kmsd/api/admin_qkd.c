/*
 * admin_qkd — the operator's view of ETSI GS QKD 014 key delivery
 * (docs/etsi014.md): GET /v1/admin/qkd (limits and the keys waiting, by
 * master and slave SAE) and GET /v1/admin/qkd/keys (the waiting keys, never
 * their bytes). The service is qkd.h's.
 */
#include <errno.h>
#include <stdlib.h>

#include "api/routes.h"
#include "service/qkd.h"

void h_admin_qkd(http_request *rq, http_response *rs)
{
    json_t *out;
    qk_err e;
    if (qkd_overview(&rq->kms->svc, &out, &e) != QK_OK) {
        http_fail(rs, &e);
        return;
    }
    http_json(rs, 200, out);
}

void h_admin_qkd_keys(http_request *rq, http_response *rs)
{
    const char *ls = http_query(rq, "limit");
    long limit = 100;
    char *end = NULL;
    json_t *out;
    qk_err e;
    if (ls) {
        errno = 0;
        limit = strtol(ls, &end, 10);
        if (errno || !*ls || *end)
            limit = 0; /* refused by the service as out of range */
    }
    if (qkd_keys_list(&rq->kms->svc, http_query(rq, "master"), http_query(rq, "slave"), limit,
                      &out, &e) != QK_OK) {
        http_fail(rs, &e);
        return;
    }
    http_json(rs, 200, out);
}
