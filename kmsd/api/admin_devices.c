/*
 * admin_devices — the door of the device registry's admin API (operator and
 * admin roles): it parses and checks the request, calls the device service
 * (devices.h, device_keys.h, device_fill.h) and encodes the answer; every
 * failure of the service goes out through http_fail.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

#include "api/principal.h"
#include "api/routes.h"
#include "api/transport.h"
#include "fillpkg.h"
#include "service/certs.h"
#include "service/qkd.h"
#include "service/device_fill.h"
#include "service/device_keys.h"
#include "service/device_service.h"
#include "service/gateway_login.h"
#include "service/devices.h"
#include "timetext.h"

#define IMPORT_MAX_ROWS 1000

static device_defaults defaults_of(kms_ctx *k)
{
    device_defaults d = {k->cfg.device_default_keys, k->cfg.device_key_validity_days};
    return d;
}

/* The {id} path parameter, checked; answers 404 for what cannot exist. */
static const char *path_device(http_request *rq, http_response *rs)
{
    const char *id = rq->params[0];
    if (!device_id_valid(id)) {
        http_error(rs, 404, "not_found", "no such device");
        return NULL;
    }
    return id;
}

static void answer_device(http_request *rq, http_response *rs, const char *id, int status)
{
    json_t *rec;
    qk_err e;
    if (devices_get(&rq->kms->svc, id, true, false, &rec, &e) != QK_OK) {
        http_fail(rs, &e);
        return;
    }
    http_json(rs, status, rec);
}

void h_devices_create(http_request *rq, http_response *rs)
{
    json_t *in = http_body_object(rq, rs);
    device_defaults d = defaults_of(rq->kms);
    qk_principal who = admin_principal(rq);
    device_reg row;
    qk_err e;
    const char *code;

    if (!in)
        return;
    memset(&row, 0, sizeof(row));
    if (device_spec_from_json(in, &d, &row.spec, &code, row.message, sizeof(row.message)) != 0) {
        http_error(rs, 422, code, "%s", row.message);
        json_decref(in);
        return;
    }
    json_decref(in);
    if (devices_register(&rq->kms->svc, &who, &row, 1, &e) != QK_OK ||
        devices_row_err(&row, &e) != QK_OK) {
        http_fail(rs, &e);
        return;
    }
    answer_device(rq, rs, row.spec.device_id, 201);
}

void h_devices_import(http_request *rq, http_response *rs)
{
    json_t *in = http_body_object(rq, rs), *list, *results = NULL;
    device_defaults d = defaults_of(rq->kms);
    qk_principal who = admin_principal(rq);
    device_reg *rows = NULL;
    qk_err e;
    size_t n;
    int created = 0, failed = 0;

    if (!in)
        return;
    list = json_object_get(in, "devices");
    if (!json_is_array(list) || json_object_size(in) != 1) {
        http_error(rs, 422, "invalid_request", "expected {\"devices\": [...]}");
        goto out;
    }
    n = json_array_size(list);
    if (n == 0 || n > IMPORT_MAX_ROWS) {
        http_error(rs, 422, "invalid_request", "send 1 to %d devices per request", IMPORT_MAX_ROWS);
        goto out;
    }
    rows = calloc(n, sizeof(*rows));
    if (!rows) {
        http_error(rs, 500, "internal", "out of memory");
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        json_t *o = json_array_get(list, i);
        json_t *line = json_object_get(o, "line");
        device_spec_from_json(o, &d, &rows[i].spec, &rows[i].code, rows[i].message,
                              sizeof(rows[i].message));
        if (line && json_is_integer(line))
            rows[i].spec.line = (long)json_integer_value(line);
        else if (!rows[i].spec.line)
            rows[i].spec.line = (long)i + 1;
    }
    if (devices_register(&rq->kms->svc, &who, rows, (int)n, &e) != QK_OK) {
        http_fail(rs, &e);
        goto out;
    }
    results = json_array();
    for (size_t i = 0; i < n; i++) {
        device_reg *r = &rows[i];
        const char *code = r->code ? r->code : r->db_code;
        /* Echo what the operator sent, so a bad row can be found in the file. */
        const char *raw = json_string_value(json_object_get(json_array_get(list, i), "device_id"));
        json_t *id = r->spec.device_id[0] ? json_string(r->spec.device_id)
                     : raw ? http_json_text(raw, DEVICE_ID_MAX) : json_null();
        if (!code) {
            created++;
            json_array_append_new(results, json_pack("{s:I,s:o,s:s}", "line", (json_int_t)r->spec.line,
                                                     "device_id", id, "status", "created"));
        } else {
            failed++;
            json_array_append_new(results,
                                  json_pack("{s:I,s:o,s:s,s:{s:s,s:o}}", "line", (json_int_t)r->spec.line,
                                            "device_id", id, "status", "error", "error", "code",
                                            code, "message",
                                            http_json_text(r->code ? r->message : r->db_message,
                                                           sizeof(r->message))));
        }
    }
    http_json(rs, 200, json_pack("{s:i,s:i,s:o}", "created", created, "failed", failed, "results",
                                 results));
out:
    free(rows);
    json_decref(in);
}

static int query_int(http_request *rq, http_response *rs, const char *key, int lo, int hi,
                     int *out)
{
    const char *v = http_query(rq, key);
    char *end;
    long n;
    if (!v)
        return 0;
    n = strtol(v, &end, 10);
    if (!*v || *end || n < lo || n > hi) {
        http_error(rs, 400, "invalid_query", "%s must be an integer from %d to %d", key, lo, hi);
        return -1;
    }
    *out = (int)n;
    return 0;
}

/* One attr=name=value term of the device list into the filter object. */
struct attr_terms {
    json_t *all;
    char msg[160];
};

static int attr_term(void *arg, const char *term)
{
    struct attr_terms *a = arg;
    char name[DEVICE_ATTR_NAME_MAX + 1];
    json_t *v;
    if (json_object_size(a->all) >= DEVICE_ATTRS_MAX) {
        snprintf(a->msg, sizeof(a->msg), "at most %d attr terms", DEVICE_ATTRS_MAX);
        return -1;
    }
    if (device_attr_term(term, name, &v, a->msg, sizeof(a->msg)) != 0)
        return -1;
    json_object_set_new(a->all, name, v);
    return 0;
}

void h_devices_list(http_request *rq, http_response *rs)
{
    struct attr_terms at = {json_object(), ""};
    device_filter f = {http_query(rq, "type"), http_query(rq, "group"), http_query(rq, "state"),
                       http_query(rq, "after"), -1, 100, http_query(rq, "parent"), at.all,
                       -1, http_query(rq, "seen_since")};
    const char *never = http_query(rq, "never_seen");
    json_t *out;
    qk_err e;

    if (!at.all || http_query_each(rq, "attr", attr_term, &at) != 0) {
        http_error(rs, 400, "invalid_query", "attr: %s", at.msg[0] ? at.msg : "out of memory");
        json_decref(at.all);
        return;
    }

    if ((f.type && !device_type_name_valid(f.type)) || (f.group && !device_group_valid(f.group)) ||
        (f.state && !device_state_valid(f.state)) || (f.after && !device_id_valid(f.after)) ||
        (f.parent && !device_id_valid(f.parent))) {
        http_error(rs, 400, "invalid_query", "bad type, group, state, parent or after");
        goto out;
    }
    if (query_int(rq, rs, "expiring_within", 0, 3650, &f.expiring_within) != 0 ||
        query_int(rq, rs, "limit", 1, 1000, &f.limit) != 0)
        goto out;
    if (never) {
        if (!strcmp(never, "true") || !strcmp(never, "1")) {
            f.never_seen = 1;
        } else if (!strcmp(never, "false") || !strcmp(never, "0")) {
            f.never_seen = 0;
        } else {
            http_error(rs, 400, "invalid_query", "never_seen must be true or false");
            goto out;
        }
    }
    if (f.seen_since && !timetext_valid(f.seen_since, true)) {
        http_error(rs, 400, "invalid_query",
                   "seen_since must be an RFC 3339 time or a date (YYYY-MM-DD)");
        goto out;
    }
    if (f.never_seen == 1 && f.seen_since) {
        http_error(rs, 400, "invalid_query", "never_seen=true and seen_since exclude each other");
        goto out;
    }
    if (devices_list(&rq->kms->svc, &f, &out, &e) != QK_OK) {
        http_fail(rs, &e);
        goto out;
    }
    http_json(rs, 200, out);
out:
    json_decref(at.all);
}

void h_device_get(http_request *rq, http_response *rs)
{
    const char *id = path_device(rq, rs);
    if (id)
        answer_device(rq, rs, id, 200);
}

void h_device_keys(http_request *rq, http_response *rs)
{
    const char *id = path_device(rq, rs), *kcv = http_query(rq, "kcv");
    json_t *rec;
    qk_err e;
    bool with_kcv = kcv && (!strcmp(kcv, "true") || !strcmp(kcv, "1"));
    if (!id)
        return;
    if (kcv && !with_kcv && strcmp(kcv, "false") != 0 && strcmp(kcv, "0") != 0) {
        http_error(rs, 400, "invalid_query", "kcv must be true or false");
        return;
    }
    if (devices_get(&rq->kms->svc, id, true, with_kcv, &rec, &e) != QK_OK) {
        http_fail(rs, &e);
        return;
    }
    http_json(rs, 200, json_pack("{s:O,s:O}", "device_id", json_object_get(rec, "device_id"),
                                 "keys", json_object_get(rec, "keys")));
    json_decref(rec);
}

static void state_action(http_request *rq, http_response *rs, device_action a)
{
    const char *id = path_device(rq, rs);
    qk_principal who = admin_principal(rq);
    json_t *in;
    qk_err e;
    if (!id)
        return;
    in = http_body_object_opt(rq, rs);
    if (!in)
        return;
    if (json_object_size(in) != 0) {
        json_decref(in);
        http_error(rs, 422, "invalid_request", "this action takes no parameters");
        return;
    }
    json_decref(in);
    if (devices_set_state(&rq->kms->svc, &who, id, a, &e) != QK_OK) {
        http_fail(rs, &e);
        return;
    }
    answer_device(rq, rs, id, 200);
}

void h_device_suspend(http_request *rq, http_response *rs) { state_action(rq, rs, DEVICE_SUSPEND); }
void h_device_resume(http_request *rq, http_response *rs) { state_action(rq, rs, DEVICE_RESUME); }
void h_device_revoke(http_request *rq, http_response *rs) { state_action(rq, rs, DEVICE_REVOKE); }

/* An action's body: a JSON object (with opt, an empty body is {}) with no
 * field but those in known (NULL-terminated). NULL with the answer set. */
static json_t *action_body(http_request *rq, http_response *rs, bool opt,
                           const char *const *known)
{
    json_t *in = opt ? http_body_object_opt(rq, rs) : http_body_object(rq, rs), *v;
    const char *key;
    if (!in)
        return NULL;
    json_object_foreach(in, key, v) {
        int i = 0;
        while (known[i] && strcmp(key, known[i]))
            i++;
        if (!known[i]) {
            http_error(rs, 422, "invalid_request", "unknown field '%.64s'", key);
            json_decref(in);
            return NULL;
        }
    }
    return in;
}

/* POST /v1/admin/devices/{id}/sae {"sae_id": "ID" | null}: the device's
 * SAE ID for ETSI GS QKD 014 (docs/etsi014.md); the answer is the device. */
void h_device_sae(http_request *rq, http_response *rs)
{
    static const char *const known[] = {"sae_id", NULL};
    const char *id = path_device(rq, rs);
    qk_principal who = admin_principal(rq);
    json_t *in, *v;
    qk_err e;
    if (!id || !(in = action_body(rq, rs, false, known)))
        return;
    v = json_object_get(in, "sae_id");
    if (!v || !(json_is_string(v) || json_is_null(v))) {
        http_error(rs, 422, "invalid_sae_id", "sae_id must be a string, or null to remove it");
        json_decref(in);
        return;
    }
    if (qkd_set_sae(&rq->kms->svc, &who, id, json_string_value(v), &e) != QK_OK)
        http_fail(rs, &e);
    else
        answer_device(rq, rs, id, 200);
    json_decref(in);
}

/* POST /v1/admin/devices/{id}/attributes {"set"?: {name: value}, "unset"?:
 * [name]}: the device's attributes (docs/gateways.md, "Attributes"); the
 * answer is the device. */
void h_device_attributes(http_request *rq, http_response *rs)
{
    static const char *const known[] = {"set", "unset", NULL};
    const char *id = path_device(rq, rs);
    qk_principal who = admin_principal(rq);
    json_t *in, *set = NULL, *unset, *v, *empty_set = json_object(), *empty_unset = json_array();
    char msg[200];
    size_t i;
    qk_err e;
    if (!id || !(in = action_body(rq, rs, false, known))) {
        json_decref(empty_set);
        json_decref(empty_unset);
        return;
    }
    unset = json_object_get(in, "unset");
    if (unset && !json_is_array(unset)) {
        http_error(rs, 422, "invalid_attributes", "unset must be an array of attribute names");
        goto out;
    }
    json_array_foreach(unset, i, v) if (!json_is_string(v) ||
                                        strlen(json_string_value(v)) > DEVICE_ATTR_NAME_MAX) {
        http_error(rs, 422, "invalid_attributes", "unset must be an array of attribute names");
        goto out;
    }
    if (!(set = device_attrs_check(json_object_get(in, "set") ? json_object_get(in, "set")
                                                                : empty_set,
                                   msg, sizeof(msg)))) {
        http_error(rs, 422, "invalid_attributes", "%s", msg);
        goto out;
    }
    if (devices_set_attributes(&rq->kms->svc, &who, id, set, unset ? unset : empty_unset, &e) !=
        QK_OK)
        http_fail(rs, &e);
    else
        answer_device(rq, rs, id, 200);
out:
    json_decref(set);
    json_decref(in);
    json_decref(empty_set);
    json_decref(empty_unset);
}

/* POST /v1/admin/devices/{id}/service: {"days": N} extends the service N
 * days past the later of now and its current end; {"until": "RFC 3339"}
 * sets the end (a past time ends it now); {"until": null} removes the end.
 * The answer is the device. */
void h_device_service(http_request *rq, http_response *rs)
{
    static const char *const known[] = {"days", "until", NULL};
    const char *id = path_device(rq, rs);
    qk_principal who = admin_principal(rq);
    json_t *in, *days, *until;
    qk_err e;
    if (!id || !(in = action_body(rq, rs, false, known)))
        return;
    days = json_object_get(in, "days");
    until = json_object_get(in, "until");
    if ((days != NULL) == (until != NULL)) {
        http_error(rs, 422, "invalid_service", "give one of days (extend) and until");
    } else if (days && (!json_is_integer(days) || json_integer_value(days) < 1 ||
                        json_integer_value(days) > DEVICE_SERVICE_DAYS_MAX)) {
        http_error(rs, 422, "invalid_service", "days must be an integer from 1 to %d",
                   DEVICE_SERVICE_DAYS_MAX);
    } else if (until && !json_is_null(until) &&
               !timetext_valid(json_string_value(until), false)) {
        http_error(rs, 422, "invalid_service",
                   "until must be an RFC 3339 time (2027-01-31T00:00:00Z) or null for no end");
    } else if (device_service_set(&rq->kms->svc, &who, id,
                                  days ? SERVICE_EXTEND
                                       : json_is_null(until) ? SERVICE_NO_END : SERVICE_UNTIL,
                                  days ? (int)json_integer_value(days) : 0,
                                  json_string_value(until), &e) != QK_OK) {
        http_fail(rs, &e);
    } else {
        answer_device(rq, rs, id, 200);
    }
    json_decref(in);
}

/* POST /v1/admin/devices/{id}/credential {"tid", "password"}: the
 * gateway's login account (docs/gateways.md, "Login"); the answer names
 * the device and the tid, never the password. */
void h_device_credential(http_request *rq, http_response *rs)
{
    const char *id = path_device(rq, rs), *tid, *key;
    qk_principal who = admin_principal(rq);
    json_t *in, *pw, *v;
    qk_err e;
    if (!id || !(in = http_body_object(rq, rs)))
        return;
    tid = json_string_value(json_object_get(in, "tid"));
    pw = json_object_get(in, "password");
    key = NULL;
    json_object_foreach(in, key, v) if (strcmp(key, "tid") && strcmp(key, "password")) break;
    if (key && strcmp(key, "tid") && strcmp(key, "password")) {
        http_error(rs, 422, "invalid_request", "unknown field '%.64s'", key);
    } else if (!json_is_string(pw)) {
        http_error(rs, 422, "invalid_credential", "password must be a string");
    } else if (gateway_credential_set(&rq->kms->svc, &who, id, tid,
                                      (const uint8_t *)json_string_value(pw),
                                      json_string_length(pw), &e) != QK_OK) {
        http_fail(rs, &e);
    } else {
        http_json(rs, 200, json_pack("{s:s,s:s}", "device_id", id, "tid", tid));
    }
    if (json_is_string(pw)) /* jansson's copy; its parse buffers are freed unwiped */
        OPENSSL_cleanse((void *)json_string_value(pw), json_string_length(pw));
    json_decref(in);
}

/* Optional integer field; absent keeps *out. */
static int body_int(json_t *in, http_response *rs, const char *key, int lo, int hi, int *out)
{
    json_t *v = json_object_get(in, key);
    if (!v || json_is_null(v))
        return 0;
    if (!json_is_integer(v) || json_integer_value(v) < lo || json_integer_value(v) > hi) {
        http_error(rs, 422, "invalid_request", "%s must be an integer from %d to %d", key, lo, hi);
        return -1;
    }
    *out = (int)json_integer_value(v);
    return 0;
}

void h_device_rotate(http_request *rq, http_response *rs)
{
    static const char *const known[] = {"grace_days", "key_bits", "validity_days", "purpose",
                                        NULL};
    const char *id = path_device(rq, rs);
    json_t *in;
    int grace = rq->kms->cfg.device_key_grace_days, bits = 0, validity = 0;
    json_t *pv;
    qk_principal who = admin_principal(rq);
    qk_err e;
    if (!id)
        return;
    in = action_body(rq, rs, true, known);
    if (!in)
        return;
    if (body_int(in, rs, "grace_days", 0, 365, &grace) || body_int(in, rs, "key_bits", 128, 256, &bits) ||
        body_int(in, rs, "validity_days", 1, 3650, &validity)) {
        json_decref(in);
        return;
    }
    pv = json_object_get(in, "purpose");
    if (pv && !json_is_null(pv) && !device_key_purpose_valid(json_string_value(pv))) {
        http_error(rs, 422, "invalid_key_purposes", "purpose is access, local or generic");
        json_decref(in);
        return;
    }
    if (bits && bits != 128 && bits != 256) {
        http_error(rs, 422, "invalid_key_bits", "key_bits must be 128 or 256");
        json_decref(in);
        return;
    }
    if (device_keys_rotate(&rq->kms->svc, &who, id, json_string_value(pv), grace, bits, validity,
                           &e) != QK_OK) {
        http_fail(rs, &e);
        json_decref(in);
        return;
    }
    json_decref(in);
    answer_device(rq, rs, id, 200);
}

/* A fill request's parameters, checked. */
struct fill_args {
    int indices[DEVICE_MAX_KEY_INDEX + 1], nidx;
    bool force, plaintext, family_only;
    const char *pem;
    bool identity;         /* "certificate": a TLS identity in the package too */
    cert_request identity_rq;
};

/* An optional boolean field; absent is false. */
static int body_bool(json_t *in, http_response *rs, const char *key, bool *out)
{
    json_t *v = json_object_get(in, key);
    if (v && !json_is_boolean(v)) {
        http_error(rs, 422, "invalid_request", "%s must be true or false", key);
        return -1;
    }
    *out = json_is_true(v);
    return 0;
}

/* "indices": distinct key indices, at most one of each. */
static int body_indices(json_t *in, http_response *rs, struct fill_args *a)
{
    json_t *jidx = json_object_get(in, "indices"), *v;
    size_t i;
    if (!jidx)
        return 0;
    if (!json_is_array(jidx) || json_array_size(jidx) > DEVICE_MAX_KEY_INDEX + 1) {
        http_error(rs, 422, "invalid_request", "indices must be an array of key indices");
        return -1;
    }
    json_array_foreach(jidx, i, v) {
        if (!json_is_integer(v) || json_integer_value(v) < 0 ||
            json_integer_value(v) > DEVICE_MAX_KEY_INDEX) {
            http_error(rs, 422, "invalid_request", "indices must be integers from 0 to 255");
            return -1;
        }
        for (int j = 0; j < a->nidx; j++)
            if (a->indices[j] == (int)json_integer_value(v)) {
                http_error(rs, 422, "invalid_request", "index %d listed twice", a->indices[j]);
                return -1;
            }
        a->indices[a->nidx++] = (int)json_integer_value(v);
    }
    return 0;
}

/* Parse and check a fill request, in the order the answers are documented;
 * *rcpt is the parsed recipient key for a sealed export. */
static int fill_args_parse(http_request *rq, http_response *rs, json_t *in,
                           const qk_principal *who, struct fill_args *a, EVP_PKEY **rcpt)
{
    char why[160];
    json_t *v;
    qk_err e;

    if (body_bool(in, rs, "force", &a->force) || body_bool(in, rs, "plaintext", &a->plaintext) ||
        body_bool(in, rs, "family_only", &a->family_only) || body_indices(in, rs, a))
        return -1;
    a->pem = json_string_value(json_object_get(in, "recipient_pub"));
    if (a->plaintext == (a->pem != NULL)) {
        http_error(rs, 422, "invalid_request", "give exactly one of recipient_pub and plaintext");
        return -1;
    }
    if (a->plaintext && device_fill_may_plaintext(who, &e) != QK_OK) {
        http_fail(rs, &e);
        return -1;
    }
    /* Keys in clear (and the bearer token that asked) only where no network
     * can read them: a TLS listener, or a loopback client. */
    if (a->plaintext && !http_confidential(rq)) {
        http_error(rs, 403, "insecure_transport",
                   "plaintext export needs TLS or a loopback connection; use recipient_pub");
        return -1;
    }
    if ((v = json_object_get(in, "certificate"))) {
        json_t *d = json_is_object(v) ? json_object_get(v, "validity_days") : NULL;
        if (!(json_is_true(v) || (json_is_object(v) && json_object_size(v) == (d ? 1u : 0u)))) {
            http_error(rs, 422, "invalid_request",
                       "certificate must be true or {\"validity_days\"?: 1..3650}");
            return -1;
        }
        if (d && (!json_is_integer(d) || json_integer_value(d) < 1 || json_integer_value(d) > 3650)) {
            http_error(rs, 422, "invalid_validity", "validity_days must be an integer 1..3650");
            return -1;
        }
        a->identity = true;
        a->identity_rq.validity_days = d ? (int)json_integer_value(d) : 0;
    }
    if (a->pem) {
        if (strlen(a->pem) > 16384 ||
            !(*rcpt = fillpkg_parse_recipient(a->pem, strlen(a->pem), why, sizeof(why)))) {
            http_error(rs, 422, "invalid_recipient_key", "%s",
                       strlen(a->pem) > 16384 ? "recipient key too large" : why);
            return -1;
        }
    }
    return 0;
}

/* {...fields..., "plaintext": <document>}: spliced as bytes so the key
 * material only ever sits in buffers that are wiped (the response body is
 * wiped when it is freed). */
static void answer_plaintext(http_response *rs, json_t *fields, const qbuf *doc)
{
    char *head = json_dumps(fields, JSON_COMPACT);
    size_t hl = head ? strlen(head) : 0, dl = qbuf_len(doc), total;
    char *body = NULL;
    static const char mid[] = ",\"plaintext\":";

    total = hl - 1 + sizeof(mid) - 1 + dl + 1;
    if (!head || hl < 2 || !(body = malloc(total + 1))) {
        free(head);
        http_error(rs, 500, "internal", "out of memory");
        return;
    }
    memcpy(body, head, hl - 1);
    memcpy(body + hl - 1, mid, sizeof(mid) - 1);
    memcpy(body + hl - 1 + sizeof(mid) - 1, qbuf_ptr(doc), dl);
    body[total - 1] = '}';
    body[total] = 0;
    free(head);
    http_text(rs, 200, "application/json", body, total);
}

void h_device_fill(http_request *rq, http_response *rs)
{
    static const char *const known[] = {"recipient_pub", "indices", "force", "plaintext",
                                        "certificate", "family_only", NULL};
    const char *id = path_device(rq, rs);
    qk_principal who = admin_principal(rq);
    struct fill_args a;
    json_t *in, *out = NULL;
    EVP_PKEY *rcpt = NULL;
    qbuf *doc = NULL;
    qk_err e;

    if (!id)
        return;
    in = action_body(rq, rs, false, known);
    if (!in)
        return;
    memset(&a, 0, sizeof(a));
    if (fill_args_parse(rq, rs, in, &who, &a, &rcpt) != 0)
        goto out;
    a.identity_rq.device_id = id;
    if (device_fill_export(&rq->kms->svc, &who, id, rcpt, a.indices, a.nidx, a.force, a.family_only,
                           a.identity ? &a.identity_rq : NULL, &out, a.plaintext ? &doc : NULL,
                           &e) != QK_OK) {
        http_fail(rs, &e);
        goto out;
    }
    if (a.plaintext) {
        answer_plaintext(rs, out, doc);
    } else {
        http_json(rs, 200, out);
        out = NULL;
    }
out:
    qbuf_free(doc);
    EVP_PKEY_free(rcpt);
    json_decref(out);
    json_decref(in);
}

void h_devtypes_list(http_request *rq, http_response *rs)
{
    json_t *out;
    qk_err e;
    if (device_types_list(&rq->kms->svc, &out, &e) != QK_OK) {
        http_fail(rs, &e);
        return;
    }
    http_json(rs, 200, out);
}

void h_devtypes_add(http_request *rq, http_response *rs)
{
    json_t *in = http_body_object(rq, rs);
    const char *name;
    qk_principal who = admin_principal(rq);
    qk_err e;
    if (!in)
        return;
    const char *purposes[DEVICE_MAX_KEYS];
    json_t *kp, *sd, *su;
    size_t np = 0;
    name = json_string_value(json_object_get(in, "name"));
    kp = json_object_get(in, "key_purposes");
    sd = json_object_get(in, "service_days");
    su = json_object_get(in, "suite");
    if (kp && json_is_array(kp) && json_array_size(kp) <= DEVICE_MAX_KEYS)
        for (np = 0; np < json_array_size(kp); np++)
            if (!device_key_purpose_valid(purposes[np] =
                                              json_string_value(json_array_get(kp, np))))
                break;
    if (json_object_size(in) != 1 + (size_t)(kp != NULL) + (size_t)(sd != NULL) +
                                    (size_t)(su != NULL) ||
        !device_type_name_valid(name) ||
        (su && !(json_is_string(su) && (!strcmp(json_string_value(su), "aes") ||
                                        !strcmp(json_string_value(su), "sm4"))))) {
        http_error(rs, 422, "invalid_type",
                   "name must match [a-z][a-z0-9_-]{0,31}; the other fields are key_purposes,"
                   " service_days and suite (aes or sm4)");
    } else if (sd && !json_is_null(sd) &&
               (!json_is_integer(sd) || json_integer_value(sd) < 1 ||
                json_integer_value(sd) > DEVICE_SERVICE_DAYS_MAX)) {
        http_error(rs, 422, "invalid_service",
                   "service_days must be an integer from 1 to %d, or null for no end",
                   DEVICE_SERVICE_DAYS_MAX);
    } else if (kp && (!json_is_array(kp) || np != json_array_size(kp) ||
                      json_array_size(kp) > DEVICE_MAX_KEYS)) {
        http_error(rs, 422, "invalid_key_purposes",
                   "key_purposes is an array of at most %d of access, local, generic",
                   DEVICE_MAX_KEYS);
    } else if (device_types_add(&rq->kms->svc, &who, name, purposes, (int)np,
                                sd ? (int)json_integer_value(sd) : 0, json_string_value(su),
                                &e) != QK_OK) {
        http_fail(rs, &e);
    } else {
        http_json(rs, 201, json_pack("{s:s,s:o,s:o,s:s}", "name", name, "key_purposes",
                                     kp ? json_incref(kp) : json_array(), "service_days",
                                     sd ? json_incref(sd) : json_null(), "suite",
                                     su ? json_string_value(su) : "aes"));
    }
    json_decref(in);
}
