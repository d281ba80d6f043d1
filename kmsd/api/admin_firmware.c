/*
 * admin_firmware — the doors of the firmware signing keys
 * (service/firmware_keys.h; docs/api.md, "Firmware signing keys"):
 * GET and POST /v1/admin/firmware/keys, POST .../keys/{product}/rotate.
 */
#include "api/principal.h"
#include "api/routes.h"
#include "service/firmware_keys.h"

void h_firmware_keys_list(http_request *rq, http_response *rs)
{
    json_t *out;
    qk_err e;
    if (http_query_count(rq, "product") > 1) {
        http_error(rs, 400, "invalid_query", "product given twice");
        return;
    }
    if (firmware_keys_list(&rq->kms->svc, http_query(rq, "product"), &out, &e) != QK_OK) {
        http_fail(rs, &e);
        return;
    }
    http_json(rs, 200, out);
}

void h_firmware_keys_create(http_request *rq, http_response *rs)
{
    qk_principal who = admin_principal(rq);
    json_t *in = http_body_object(rq, rs), *out;
    qk_err e;

    if (!in)
        return;
    if (json_object_size(in) != 1 || !json_is_string(json_object_get(in, "product"))) {
        http_error(rs, 422, "invalid_request", "expected {\"product\": string}");
        goto out;
    }
    if (firmware_keys_create(&rq->kms->svc, &who, json_string_value(json_object_get(in, "product")),
                             &out, &e) != QK_OK) {
        http_fail(rs, &e);
        goto out;
    }
    http_json(rs, 201, out);
out:
    json_decref(in);
}

void h_firmware_keys_rotate(http_request *rq, http_response *rs)
{
    qk_principal who = admin_principal(rq);
    json_t *in = http_body_object_opt(rq, rs), *jd, *out;
    int days = FIRMWARE_OVERLAP_DEFAULT_DAYS;
    qk_err e;

    if (!in)
        return;
    jd = json_object_get(in, "overlap_days");
    if (json_object_size(in) > (jd ? 1u : 0u) || (jd && !json_is_integer(jd))) {
        http_error(rs, 422, "invalid_request", "expected {\"overlap_days\"?: integer}");
        goto out;
    }
    if (jd) /* out of int's range is out of the service's range too */
        days = json_integer_value(jd) < 0 || json_integer_value(jd) > 100000
                   ? 0
                   : (int)json_integer_value(jd);
    if (firmware_keys_rotate(&rq->kms->svc, &who, rq->params[0], days, &out, &e) != QK_OK) {
        http_fail(rs, &e);
        goto out;
    }
    http_json(rs, 200, out);
out:
    json_decref(in);
}
