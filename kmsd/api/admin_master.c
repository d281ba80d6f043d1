/* admin_master — GET /v1/admin/master, POST /v1/admin/master/rotate. */
#include "service/rotation.h"
#include "api/routes.h"

void h_admin_master(http_request *rq, http_response *rs)
{
    json_t *st = rotation_status(&rq->kms->svc);
    if (!st) {
        http_db_error(rs, DB_UNAVAILABLE);
        return;
    }
    http_json(rs, 200, st);
}

void h_admin_master_rotate(http_request *rq, http_response *rs)
{
    char err[256];
    int status;
    json_t *in = http_body_object_opt(rq, rs), *st;
    if (!in)
        return;
    json_decref(in);
    if (rotation_rotate(&rq->kms->svc, rq->who.name, &status, err, sizeof(err)) != 0) {
        rs->retry_after = 1;
        http_error(rs, status, "unavailable", "%s", err);
        return;
    }
    st = rotation_status(&rq->kms->svc);
    http_json(rs, 200, st ? st : json_object());
}
