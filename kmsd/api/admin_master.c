/*
 * admin_master — the master key's admin door: GET /v1/admin/master,
 * POST /v1/admin/master/rotate and GET /v1/admin/master/instances. It
 * calls the rotation service (service/rotation.h) and the registry of
 * instances (service/instances.h) and encodes their answers.
 */
#include "api/routes.h"
#include "service/instances.h"
#include "service/rotation.h"

void h_admin_master_instances(http_request *rq, http_response *rs)
{
    json_t *out;
    qk_err e;
    if (instances_list(rq->kms->svc.db, rq->kms->svc.instance, &out, &e) != QK_OK) {
        http_fail(rs, &e);
        return;
    }
    http_json(rs, 200, out);
}

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
    json_t *in = http_body_object_opt(rq, rs), *st, *force;
    qk_err e;
    bool f;
    if (!in)
        return;
    force = json_object_get(in, "force");
    if (force && !json_is_boolean(force)) {
        json_decref(in);
        http_error(rs, 422, "invalid_request", "field 'force' must be a boolean");
        return;
    }
    f = json_is_true(force);
    json_decref(in); /* other members are ignored, as they always were */
    if (rotation_rotate(&rq->kms->svc, rq->who.name, f, &e) != QK_OK) {
        http_fail(rs, &e);
        return;
    }
    /* Rotated: the answer is the new status, or {} if it cannot be read now. */
    http_json(rs, 200, rotation_status(&rq->kms->svc, &st, &e) == QK_OK ? st : json_object());
}
