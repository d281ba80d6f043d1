/*
 * admin_certs — the platform CA's doors (service/ca.h): GET /v1/ca (the CA
 * certificates as PEM, no authentication: devices and clients need them to
 * trust the platform), GET /v1/ca/crl (its revocation list, no
 * authentication either), GET /v1/admin/ca, and a device's certificates:
 * issue, list, show, revoke (service/certs.h).
 */
#include <string.h>

#include "api/principal.h"
#include "api/routes.h"
#include "service/ca.h"
#include "service/certs.h"
#include "service/crl.h"

void h_ca_chain(http_request *rq, http_response *rs)
{
    char *pem;
    size_t len;
    qk_err e;
    if (ca_chain_pem(rq->kms->svc.ca, &pem, &len, &e) != QK_OK) {
        http_fail(rs, &e);
        return;
    }
    http_text(rs, 200, "application/pem-certificate-chain", pem, len);
}

void h_admin_ca(http_request *rq, http_response *rs)
{
    json_t *out;
    qk_err e;
    if (ca_show(rq->kms->svc.ca, &out, &e) != QK_OK) {
        http_fail(rs, &e);
        return;
    }
    http_json(rs, 200, out);
}

void h_device_certs_list(http_request *rq, http_response *rs)
{
    json_t *out;
    qk_err e;
    if (certs_list(&rq->kms->svc, rq->params[0], &out, &e) != QK_OK) {
        http_fail(rs, &e);
        return;
    }
    http_json(rs, 200, out);
}

/* {"csr": PEM, "validity_days"?: N} issues; {"certificate": PEM} binds one
 * issued elsewhere. Every field known and of its type. */
void h_device_cert_issue(http_request *rq, http_response *rs)
{
    json_t *in = http_body_object(rq, rs), *csr, *cert, *days, *v;
    qk_principal who = admin_principal(rq);
    cert_request req = {0};
    const char *key;
    json_t *out;
    qk_err e;
    qk_kind k;

    if (!in)
        return;
    json_object_foreach(in, key, v) {
        if (strcmp(key, "csr") && strcmp(key, "validity_days") && strcmp(key, "certificate")) {
            http_error(rs, 422, "invalid_request", "unknown field '%.64s'", key);
            goto out;
        }
    }
    csr = json_object_get(in, "csr");
    cert = json_object_get(in, "certificate");
    days = json_object_get(in, "validity_days");
    if (!!csr == !!cert) {
        http_error(rs, 422, "invalid_request",
                   "give csr (to issue a certificate) or certificate (to bind one), not both");
        goto out;
    }
    if (cert) {
        if (days) {
            http_error(rs, 422, "invalid_request", "validity_days goes with csr, not certificate");
            goto out;
        }
        if (!json_is_string(cert)) {
            http_error(rs, 422, "invalid_certificate", "certificate must be a string holding a PEM CERTIFICATE");
            goto out;
        }
        k = certs_bind(&rq->kms->svc, &who, rq->params[0], json_string_value(cert),
                       json_string_length(cert), &out, &e);
    } else {
        if (!json_is_string(csr)) {
            http_error(rs, 422, "invalid_csr", "csr must be a string holding a PEM CERTIFICATE REQUEST");
            goto out;
        }
        if (days && !json_is_null(days) &&
            (!json_is_integer(days) || json_integer_value(days) < 1 || json_integer_value(days) > 3650)) {
            http_error(rs, 422, "invalid_validity", "validity_days must be an integer 1..3650");
            goto out;
        }
        req.device_id = rq->params[0];
        req.csr_pem = json_string_value(csr);
        req.csr_len = json_string_length(csr);
        req.validity_days = json_is_integer(days) ? (int)json_integer_value(days) : 0;
        k = certs_issue(&rq->kms->svc, &who, &req, &out, &e);
    }
    if (k != QK_OK) {
        http_fail(rs, &e);
        goto out;
    }
    http_json(rs, 201, out);
out:
    json_decref(in);
}

/* GET /v1/ca/crl[?format=der|pem]: the newest CRL, no authentication. */
void h_ca_crl(http_request *rq, http_response *rs)
{
    const char *fmt = http_query(rq, "format");
    bool pem;
    char *body;
    size_t len;
    qk_err e;
    if (fmt && strcmp(fmt, "der") && strcmp(fmt, "pem")) {
        http_error(rs, 400, "invalid_query", "format must be der or pem");
        return;
    }
    pem = fmt && !strcmp(fmt, "pem");
    if (crl_get(&rq->kms->svc, pem, &body, &len, &e) != QK_OK) {
        http_fail(rs, &e);
        return;
    }
    http_text(rs, 200, pem ? "application/x-pem-file" : "application/pkix-crl", body, len);
}

void h_device_cert_get(http_request *rq, http_response *rs)
{
    json_t *out;
    qk_err e;
    if (certs_get(&rq->kms->svc, rq->params[0], rq->params[1], &out, &e) != QK_OK) {
        http_fail(rs, &e);
        return;
    }
    http_json(rs, 200, out);
}

/* {"reason"?: RFC 5280 reason name}: none or {} is "unspecified". */
void h_device_cert_revoke(http_request *rq, http_response *rs)
{
    json_t *in = http_body_object_opt(rq, rs), *v, *out;
    qk_principal who = admin_principal(rq);
    const char *key, *reason = NULL;
    qk_err e;

    if (!in)
        return;
    json_object_foreach(in, key, v) {
        if (strcmp(key, "reason")) {
            http_error(rs, 422, "invalid_request", "unknown field '%.64s'", key);
            goto out;
        }
        if (!json_is_string(v) && !json_is_null(v)) {
            http_error(rs, 422, "invalid_reason", "reason must be a string");
            goto out;
        }
        reason = json_string_value(v);
    }
    if (certs_revoke(&rq->kms->svc, &who, rq->params[0], rq->params[1], reason, &out, &e) != QK_OK) {
        http_fail(rs, &e);
        goto out;
    }
    http_json(rs, 200, out);
out:
    json_decref(in);
}
