/*
 * admin_master — the master key's admin door: GET /v1/admin/master and
 * POST /v1/admin/master/rotate. It calls the rotation service
 * (service/rotation.h) and encodes the status.
 */
#include "api/routes.h"
#include "service/rotation.h"

void h_admin_master(http_request *rq, http_response *rs)
{
    json_t *st;
    qk_err e;
    if (rotation_status(&rq->kms->svc, &st, &e) != QK_OK) {
        http_fail(rs, &e);
        return;
    }
    http_json(rs, 200, st);
}

void h_admin_master_rotate(http_request *rq, http_response *rs)
{
    json_t *in = http_body_object_opt(rq, rs), *st;
    qk_err e;
    if (!in)
        return;
    json_decref(in); /* rotation takes no parameters; any object is accepted */
    if (rotation_rotate(&rq->kms->svc, rq->who.name, &e) != QK_OK) {
        http_fail(rs, &e);
        return;
    }
    /* Rotated: the answer is the new status, or {} if it cannot be read now. */
    http_json(rs, 200, rotation_status(&rq->kms->svc, &st, &e) == QK_OK ? st : json_object());
}
