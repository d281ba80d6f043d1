/*
 * admin_tokens — the door of the admin token resource (tokens.h): create,
 * list and revoke. The request's shape is checked here, its values by the
 * service.
 */
#include "api/principal.h"
#include "api/routes.h"
#include "service/token_certs.h"
#include "service/tokens.h"

void h_tokens_create(http_request *rq, http_response *rs)
{
    json_t *in = http_body_object(rq, rs), *jname, *jrole, *jexp, *jacts, *out;
    qk_principal who = admin_principal(rq);
    token_spec spec;
    qk_err e;

    if (!in)
        return;
    jname = json_object_get(in, "name");
    jrole = json_object_get(in, "role");
    jexp = json_object_get(in, "expires_in_days");
    jacts = json_object_get(in, "acts_for");
    if (json_object_size(in) > (size_t)(1 + 1 + (jexp ? 1 : 0) + (jacts ? 1 : 0)) || !jname ||
        !jrole || (jacts && !json_is_string(jacts) && !json_is_null(jacts))) {
        http_error(rs, 422, "invalid_request",
                   "expected {\"name\": string, \"role\": string, \"expires_in_days\"?: integer, "
                   "\"acts_for\"?: string}");
        goto out;
    }
    spec.acts_for = json_string_value(jacts);
    spec.name = json_string_value(jname);
    spec.role = json_string_value(jrole);
    spec.expires = jexp && !json_is_null(jexp);
    /* A value that is not an integer is refused as out of range (0), with
     * the service's one message. */
    spec.expires_in_days = json_is_integer(jexp) ? json_integer_value(jexp) : 0;
    if (tokens_create(&rq->kms->svc, &who, &spec, &out, &e) != QK_OK) {
        http_fail(rs, &e);
        goto out;
    }
    http_json(rs, 201, out);
out:
    json_decref(in);
}

void h_tokens_list(http_request *rq, http_response *rs)
{
    json_t *out;
    qk_err e;
    if (tokens_list(&rq->kms->svc, &out, &e) != QK_OK) {
        http_fail(rs, &e);
        return;
    }
    http_json(rs, 200, out);
}

void h_tokens_revoke(http_request *rq, http_response *rs)
{
    qk_principal who = admin_principal(rq);
    json_t *out;
    qk_err e;
    if (tokens_revoke(&rq->kms->svc, &who, rq->params[0], &out, &e) != QK_OK) {
        http_fail(rs, &e);
        return;
    }
    http_json(rs, 200, out);
}

/* ---- client certificates of a token (token_certs.h) ------------------------ */

void h_token_certs_bind(http_request *rq, http_response *rs)
{
    json_t *in = http_body_object(rq, rs), *jc, *out;
    qk_principal who = admin_principal(rq);
    const char *pem;
    qk_err e;

    if (!in)
        return;
    jc = json_object_get(in, "certificate");
    if (json_object_size(in) != 1 || !(pem = json_string_value(jc))) {
        http_error(rs, 422, "invalid_request", "expected {\"certificate\": PEM string}");
        goto out;
    }
    if (token_certs_bind(&rq->kms->svc, &who, rq->params[0], pem, json_string_length(jc), &out,
                         &e) != QK_OK) {
        http_fail(rs, &e);
        goto out;
    }
    http_json(rs, 201, out);
out:
    json_decref(in);
}

void h_token_certs_list(http_request *rq, http_response *rs)
{
    json_t *out;
    qk_err e;
    if (token_certs_list(&rq->kms->svc, rq->params[0], &out, &e) != QK_OK) {
        http_fail(rs, &e);
        return;
    }
    http_json(rs, 200, out);
}

void h_token_certs_unbind(http_request *rq, http_response *rs)
{
    qk_principal who = admin_principal(rq);
    json_t *out;
    qk_err e;
    if (token_certs_unbind(&rq->kms->svc, &who, rq->params[0], rq->params[1], &out, &e) != QK_OK) {
        http_fail(rs, &e);
        return;
    }
    http_json(rs, 200, out);
}
