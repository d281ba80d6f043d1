/*
 * admin_certs — the platform CA's doors (service/ca.h): GET /v1/ca (the CA
 * certificates as PEM, no authentication: devices and clients need them to
 * trust the platform), GET /v1/ca/crl (its revocation list, no
 * authentication either), GET /v1/admin/ca, POST /v1/admin/ca/rotate,
 * /csr and /import (an operator's own root), and
 * a device's certificates: issue, list, show, revoke (service/certs.h).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "api/principal.h"
#include "api/routes.h"
#include "service/ca.h"
#include "service/certs.h"
#include "service/platform_keys.h"
#include "service/crl.h"
#include "fillpkg.h"

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
/* POST /v1/admin/devices/{id}/certificates: issue from a CSR, bind one
 * issued elsewhere, or generate the key pair here and deliver it sealed
 * to a provisioning station's key (docs/pki.md). */
void h_device_cert_issue(http_request *rq, http_response *rs)
{
    json_t *in = http_body_object(rq, rs), *csr, *cert, *gen, *rcpt, *days, *v;
    qk_principal who = admin_principal(rq);
    cert_request req = {0};
    EVP_PKEY *recipient = NULL;
    const char *key;
    char why[160];
    json_t *out;
    qk_err e;
    qk_kind k;

    if (!in)
        return;
    json_object_foreach(in, key, v) {
        if (strcmp(key, "csr") && strcmp(key, "validity_days") && strcmp(key, "certificate") &&
            strcmp(key, "generate") && strcmp(key, "recipient_pub")) {
            http_error(rs, 422, "invalid_request", "unknown field '%.64s'", key);
            goto out;
        }
    }
    csr = json_object_get(in, "csr");
    cert = json_object_get(in, "certificate");
    gen = json_object_get(in, "generate");
    rcpt = json_object_get(in, "recipient_pub");
    days = json_object_get(in, "validity_days");
    if (!!csr + !!cert + !!gen != 1) {
        http_error(rs, 422, "invalid_request",
                   "give one of csr (issue from the device's CSR), certificate (bind one issued "
                   "elsewhere) or generate with recipient_pub (a key pair made here, sealed to a "
                   "station)");
        goto out;
    }
    if ((gen && !json_is_true(gen)) || (rcpt && !gen)) {
        http_error(rs, 422, "invalid_request", "generate must be true, and recipient_pub goes with it");
        goto out;
    }
    if (days && (cert || (!json_is_null(days) && (!json_is_integer(days) ||
                                                  json_integer_value(days) < 1 ||
                                                  json_integer_value(days) > 3650)))) {
        if (cert)
            http_error(rs, 422, "invalid_request", "validity_days goes with csr or generate");
        else
            http_error(rs, 422, "invalid_validity", "validity_days must be an integer 1..3650");
        goto out;
    }
    req.device_id = rq->params[0];
    req.validity_days = json_is_integer(days) ? (int)json_integer_value(days) : 0;
    if (cert) {
        if (!json_is_string(cert)) {
            http_error(rs, 422, "invalid_certificate", "certificate must be a string holding a PEM CERTIFICATE");
            goto out;
        }
        k = certs_bind(&rq->kms->svc, &who, rq->params[0], json_string_value(cert),
                       json_string_length(cert), &out, &e);
    } else if (gen) {
        if (!json_is_string(rcpt) || json_string_length(rcpt) > 16384 ||
            !(recipient = fillpkg_parse_recipient(json_string_value(rcpt), json_string_length(rcpt),
                                                  why, sizeof(why)))) {
            http_error(rs, 422, "invalid_recipient_key", "%s",
                       json_is_string(rcpt) ? (json_string_length(rcpt) > 16384
                                                   ? "recipient key too large"
                                                   : why)
                                            : "recipient_pub must be the station's public key (PEM)");
            goto out;
        }
        k = certs_issue_generated(&rq->kms->svc, &who, &req, recipient, &out, &e);
    } else {
        if (!json_is_string(csr)) {
            http_error(rs, 422, "invalid_csr", "csr must be a string holding a PEM CERTIFICATE REQUEST");
            goto out;
        }
        req.csr_pem = json_string_value(csr);
        req.csr_len = json_string_length(csr);
        k = certs_issue(&rq->kms->svc, &who, &req, &out, &e);
    }
    if (k != QK_OK) {
        http_fail(rs, &e);
        goto out;
    }
    http_json(rs, 201, out);
out:
    EVP_PKEY_free(recipient);
    json_decref(in);
}

/* POST /v1/admin/ca/rotate: a new CA version (certs_ca_rotate). */
void h_admin_ca_rotate(http_request *rq, http_response *rs)
{
    qk_principal who = admin_principal(rq);
    json_t *out;
    qk_err e;
    if (certs_ca_rotate(&rq->kms->svc, &who, &out, &e) != QK_OK) {
        http_fail(rs, &e);
        return;
    }
    http_json(rs, 200, out);
}

/* POST /v1/admin/platform/rotate: new protocol v2 keys (docs/protocol.md,
 * "The platform's keys"); the answer is GET /v1/platform/certificates'. */
void h_admin_platform_rotate(http_request *rq, http_response *rs)
{
    qk_principal who = admin_principal(rq);
    json_t *out;
    qk_err e;
    int version;
    if (platform_keys_rotate(rq->kms->svc.pkeys, rq->kms->svc.db, who.name, &version, &e) !=
            QK_OK ||
        platform_keys_json(rq->kms->svc.pkeys, &out, &e) != QK_OK) {
        http_fail(rs, &e);
        return;
    }
    json_object_set_new(out, "active_version", json_integer(version));
    http_json(rs, 200, out);
}

/* POST /v1/admin/ca/csr: a pending CA version for an operator's root. */
void h_admin_ca_csr(http_request *rq, http_response *rs)
{
    qk_principal who = admin_principal(rq);
    json_t *out;
    qk_err e;
    if (ca_csr(rq->kms->svc.ca, rq->kms->svc.db, who.name, &out, &e) != QK_OK) {
        http_fail(rs, &e);
        return;
    }
    http_json(rs, 200, out);
}

/* POST /v1/admin/ca/import {"chain": PEM}: the pending version, certified. */
void h_admin_ca_import(http_request *rq, http_response *rs)
{
    json_t *in = http_body_object(rq, rs), *chain, *out;
    qk_principal who = admin_principal(rq);
    qk_err e;
    if (!in)
        return;
    chain = json_object_get(in, "chain");
    if (json_object_size(in) != 1 || !json_is_string(chain)) {
        http_error(rs, 422, "invalid_request", "expected {\"chain\": PEM string}");
    } else if (certs_ca_import(&rq->kms->svc, &who, json_string_value(chain),
                               json_string_length(chain), &out, &e) != QK_OK) {
        http_fail(rs, &e);
    } else {
        http_json(rs, 200, out);
    }
    json_decref(in);
}

/* GET /v1/ca/crl[?format=der|pem][&version=N]: the newest CRL of the
 * active CA version (or of version N), no authentication. */
void h_ca_crl(http_request *rq, http_response *rs)
{
    const char *fmt = http_query(rq, "format"), *vs = http_query(rq, "version");
    bool pem;
    char *body, *end;
    size_t len;
    long version = 0;
    qk_err e;
    if (fmt && strcmp(fmt, "der") && strcmp(fmt, "pem")) {
        http_error(rs, 400, "invalid_query", "format must be der or pem");
        return;
    }
    if (vs) {
        errno = 0;
        version = strtol(vs, &end, 10);
        if (!*vs || *end || errno || version < 1 || version > 1000000) {
            http_error(rs, 400, "invalid_query", "version must be a CA version number");
            return;
        }
    }
    pem = fmt && !strcmp(fmt, "pem");
    if (crl_get(&rq->kms->svc, (int)version, pem, &body, &len, &e) != QK_OK) {
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
