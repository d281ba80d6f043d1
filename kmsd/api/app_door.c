/*
 * app_door — the owners' door (docs/gateways.md, "Owners, binding,
 * reset"): /v1/app/... for tokens of role app on the device listener, and
 * the operators' /v1/admin/apps. It parses and checks, resolves the app of
 * the token (apps_of_token), calls the service (apps.h, devices.h,
 * device_fill.h, device_keys.h) and encodes the answer.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/principal.h"
#include "api/routes.h"
#include "fillpkg.h"
#include "service/apps.h"
#include "service/device_fill.h"
#include "service/device_keys.h"
#include "service/devices.h"
#include "service/events.h"

/* The app of the request's token, or the answer (401 for a revoked app). */
static bool the_app(http_request *rq, http_response *rs, app_account *app, qk_principal *who)
{
    qk_err e;
    if (apps_of_token(&rq->kms->svc, rq->who.id, app, &e) != QK_OK) {
        http_fail(rs, &e);
        return false;
    }
    *who = admin_principal(rq);
    who->name = app->actor; /* its audit rows name the app ("app/NAME"), not a token */
    return true;
}

static const char *path_id(http_request *rq, http_response *rs)
{
    if (!device_id_valid(rq->params[0])) {
        http_error(rs, 404, "not_found", "no such device");
        return NULL;
    }
    return rq->params[0];
}

/* recipient_pub: the device's own X25519 key (a fill package is sealed to
 * it, docs/devices.md); NULL with the 422 in rs. */
static EVP_PKEY *recipient(http_response *rs, json_t *in)
{
    const char *pem = json_string_value(json_object_get(in, "recipient_pub"));
    char why[160] = "recipient_pub is required: the device's X25519 public key (PEM)";
    EVP_PKEY *k = pem && strlen(pem) <= 16384
                      ? fillpkg_parse_recipient(pem, strlen(pem), why, sizeof(why))
                      : NULL;
    if (!k)
        http_error(rs, 422, "invalid_recipient_key", "%s",
                   pem && strlen(pem) > 16384 ? "recipient key too large" : why);
    return k;
}

static bool only_fields(http_response *rs, json_t *in, const char *const *known)
{
    const char *key;
    json_t *v;
    json_object_foreach(in, key, v) {
        int i = 0;
        while (known[i] && strcmp(key, known[i]))
            i++;
        if (!known[i]) {
            http_error(rs, 422, "invalid_request", "unknown field '%.64s'", key);
            return false;
        }
    }
    return true;
}

/* The sealed fill of device_id's keys not exported before, with its record. */
static void answer_fill(http_request *rq, http_response *rs, const qk_principal *who,
                        const char *id, EVP_PKEY *rcpt, int status)
{
    json_t *out = NULL, *rec = NULL;
    qk_err e;
    if (device_fill_export(&rq->kms->svc, who, id, rcpt, NULL, 0, false, false, NULL, &out, NULL,
                           &e) != QK_OK ||
        devices_get(&rq->kms->svc, id, true, false, &rec, &e) != QK_OK) {
        json_decref(out);
        http_fail(rs, &e);
        return;
    }
    json_object_set_new(out, "device", rec);
    http_json(rs, status, out);
}

/* POST /v1/app/devices: register a device for the app's owner. */
void h_app_devices_create(http_request *rq, http_response *rs)
{
    static const char *const known[] = {"device_id", "type",       "parent",        "keys",
                                        "key_bits",  "attributes", "recipient_pub", "group",
                                        NULL};
    json_t *in = http_body_object(rq, rs);
    device_defaults d = {rq->kms->cfg.device_default_keys, rq->kms->cfg.device_key_validity_days};
    app_account app;
    qk_principal who;
    device_reg row;
    EVP_PKEY *rcpt = NULL;
    const char *code;
    qk_err e;

    if (!in)
        return;
    memset(&row, 0, sizeof(row));
    if (!only_fields(rs, in, known) || !the_app(rq, rs, &app, &who))
        goto out;
    if (!app.group[0]) {
        http_error(rs, 403, "out_of_scope",
                   "this app may not register devices (it has no enroller scope)");
        goto out;
    }
    /* The type defaults to the app's first enroller type. */
    if (!json_object_get(in, "type") && app.ntypes > 0)
        json_object_set_new(in, "type", json_string(app.types[0]));
    {
        json_t *spec = json_deep_copy(in);
        json_object_del(spec, "recipient_pub");
        int rc = device_spec_from_json(spec, &d, &row.spec, &code, row.message,
                                       sizeof(row.message));
        json_decref(spec);
        if (rc != 0) {
            http_error(rs, 422, code, "%s", row.message);
            goto out;
        }
    }
    if (!(rcpt = recipient(rs, in)))
        goto out;
    if (apps_scope_check(&rq->kms->svc, &app, &row.spec, &e) != QK_OK) {
        http_fail(rs, &e);
        goto out;
    }
    row.owner_app = app.id;
    if (devices_register(&rq->kms->svc, &who, &row, 1, &e) != QK_OK ||
        devices_row_err(&row, &e) != QK_OK) {
        http_fail(rs, &e);
        goto out;
    }
    answer_fill(rq, rs, &who, row.spec.device_id, rcpt, 201);
out:
    EVP_PKEY_free(rcpt);
    json_decref(in);
}

/* GET /v1/app/devices */
void h_app_devices_list(http_request *rq, http_response *rs)
{
    app_account app;
    qk_principal who;
    json_t *out;
    qk_err e;
    if (!the_app(rq, rs, &app, &who))
        return;
    if (apps_devices(&rq->kms->svc, &app, &out, &e) != QK_OK)
        http_fail(rs, &e);
    else
        http_json(rs, 200, out);
}

/* GET /v1/app/devices/{id} */
void h_app_device_get(http_request *rq, http_response *rs)
{
    const char *id = path_id(rq, rs);
    app_account app;
    qk_principal who;
    json_t *rec;
    qk_err e;
    if (!id || !the_app(rq, rs, &app, &who))
        return;
    if (apps_owns(&rq->kms->svc, &app, id, false, &e) != QK_OK ||
        devices_get(&rq->kms->svc, id, true, false, &rec, &e) != QK_OK)
        http_fail(rs, &e);
    else
        http_json(rs, 200, rec);
}

/* POST /v1/app/devices/{id}/rotate {"recipient_pub"}: re-registration: a
 * new key for each purpose, sealed to the device. */
void h_app_device_rotate(http_request *rq, http_response *rs)
{
    static const char *const known[] = {"recipient_pub", NULL};
    const char *id = path_id(rq, rs);
    json_t *in;
    app_account app;
    qk_principal who;
    EVP_PKEY *rcpt = NULL;
    qk_err e;
    if (!id || !(in = http_body_object(rq, rs)))
        return;
    if (!only_fields(rs, in, known) || !the_app(rq, rs, &app, &who) || !(rcpt = recipient(rs, in)))
        goto out;
    if (apps_owns(&rq->kms->svc, &app, id, true, &e) != QK_OK ||
        device_keys_rotate(&rq->kms->svc, &who, id, NULL, rq->kms->cfg.device_key_grace_days,
                           0, 0, &e) != QK_OK) {
        http_fail(rs, &e);
        goto out;
    }
    answer_fill(rq, rs, &who, id, rcpt, 200);
out:
    EVP_PKEY_free(rcpt);
    json_decref(in);
}

/* POST /v1/app/bind/challenges {"device_id"} */
void h_app_bind_challenge(http_request *rq, http_response *rs)
{
    static const char *const known[] = {"device_id", NULL};
    json_t *in = http_body_object(rq, rs), *out;
    app_account app;
    qk_principal who;
    const char *id;
    qk_err e;
    if (!in)
        return;
    id = json_string_value(json_object_get(in, "device_id"));
    if (!only_fields(rs, in, known) || !the_app(rq, rs, &app, &who))
        goto out;
    if (!device_id_valid(id)) {
        http_error(rs, 422, "invalid_request", "device_id must be a device ID");
        goto out;
    }
    if (apps_bind_challenge(&rq->kms->svc, &app, id, &out, &e) != QK_OK)
        http_fail(rs, &e);
    else
        http_json(rs, 201, out);
out:
    json_decref(in);
}

/* A lowercase UUID in its 8-4-4-4-12 form. */
static bool uuid_text_valid(const char *u)
{
    if (!u || strlen(u) != 36)
        return false;
    for (int i = 0; i < 36; i++)
        if ((i == 8 || i == 13 || i == 18 || i == 23) ? u[i] != '-'
                                                      : !strchr("0123456789abcdef", u[i]) || !u[i])
            return false;
    return true;
}

/* POST /v1/app/bind {"challenge_id", "proof"} */
void h_app_bind(http_request *rq, http_response *rs)
{
    static const char *const known[] = {"challenge_id", "proof", NULL};
    json_t *in = http_body_object(rq, rs), *out;
    app_account app;
    qk_principal who;
    const char *ch, *proof;
    qk_err e;
    if (!in)
        return;
    ch = json_string_value(json_object_get(in, "challenge_id"));
    proof = json_string_value(json_object_get(in, "proof"));
    if (!only_fields(rs, in, known) || !the_app(rq, rs, &app, &who))
        goto out;
    if (!uuid_text_valid(ch) || !proof || strlen(proof) > 64) {
        http_error(rs, 422, "invalid_request",
                   "challenge_id must be a challenge's UUID (lowercase), proof a base64url"
                   " string");
        goto out;
    }
    if (apps_bind(&rq->kms->svc, &app, ch, proof, &out, &e) != QK_OK)
        http_fail(rs, &e);
    else
        http_json(rs, 200, out);
out:
    json_decref(in);
}

/* POST /v1/app/register {"name"}: self-registration, when
 * app_self_registration is on; the new app has no enroller scope. */
void h_app_register(http_request *rq, http_response *rs)
{
    static const char *const known[] = {"name", NULL};
    json_t *in = http_body_object(rq, rs), *out;
    qk_principal who = {.kind = QK_PRINCIPAL_ADMIN, .name = "self-registration",
                        .log = http_log_ctx(rq)};
    const char *name;
    qk_err e;
    if (!in)
        return;
    name = json_string_value(json_object_get(in, "name"));
    if (!rq->kms->cfg.app_self_registration) {
        http_error(rs, 403, "self_registration_off",
                   "apps are created by operators here (kmsctl app create)");
    } else if (!only_fields(rs, in, known)) {
        /* answered */
    } else if (!app_name_valid(name)) {
        http_error(rs, 422, "invalid_name",
                   "name must be 1-48 of letters, digits, '.', '_' or '-', starting with a"
                   " letter or digit");
    } else if (apps_create(&rq->kms->svc, &who, name, NULL, 0, NULL, true, &out, &e) != QK_OK) {
        http_fail(rs, &e);
    } else {
        http_json(rs, 201, out);
    }
    json_decref(in);
}

/* ---- the operators' side ------------------------------------------------------- */

/* POST /v1/admin/apps {"name", "enroll_types"?, "enroll_group"?} */
void h_apps_create(http_request *rq, http_response *rs)
{
    static const char *const known[] = {"name", "enroll_types", "enroll_group", NULL};
    json_t *in = http_body_object(rq, rs), *types, *out;
    const char *t[APP_SCOPE_TYPES_MAX], *name, *group;
    qk_principal who = admin_principal(rq);
    size_t n = 0;
    qk_err e;
    if (!in)
        return;
    name = json_string_value(json_object_get(in, "name"));
    types = json_object_get(in, "enroll_types");
    group = json_string_value(json_object_get(in, "enroll_group"));
    if (!only_fields(rs, in, known))
        goto out;
    if (!app_name_valid(name)) {
        http_error(rs, 422, "invalid_name",
                   "name must be 1-48 of letters, digits, '.', '_' or '-', starting with a"
                   " letter or digit");
        goto out;
    }
    if (types && (!json_is_array(types) || json_array_size(types) > APP_SCOPE_TYPES_MAX)) {
        http_error(rs, 422, "invalid_scope", "enroll_types is an array of at most %d type names",
                   APP_SCOPE_TYPES_MAX);
        goto out;
    }
    for (n = 0; types && n < json_array_size(types); n++) {
        bool known_type = false;
        t[n] = json_string_value(json_array_get(types, n));
        if (device_type_name_valid(t[n]) &&
            device_types_has(&rq->kms->svc, t[n], &known_type, &e) != QK_OK) {
            http_fail(rs, &e);
            goto out;
        }
        if (!known_type) {
            http_error(rs, 422, "invalid_scope", "enroll_types names an unknown device type");
            goto out;
        }
    }
    if ((json_object_get(in, "enroll_group") && !json_is_null(json_object_get(in, "enroll_group")) &&
         !device_group_valid(group)) ||
        (n > 0) != (group != NULL)) {
        http_error(rs, 422, "invalid_scope",
                   "an enroller scope is enroll_types and enroll_group together (a group name)");
        goto out;
    }
    if (apps_create(&rq->kms->svc, &who, name, t, (int)n, group, false, &out, &e) != QK_OK)
        http_fail(rs, &e);
    else
        http_json(rs, 201, out);
out:
    json_decref(in);
}

/* GET /v1/admin/apps */
void h_apps_list(http_request *rq, http_response *rs)
{
    json_t *out;
    qk_err e;
    if (apps_list(&rq->kms->svc, &out, &e) != QK_OK)
        http_fail(rs, &e);
    else
        http_json(rs, 200, out);
}

/* DELETE /v1/admin/apps/{name} */
void h_apps_revoke(http_request *rq, http_response *rs)
{
    qk_principal who = admin_principal(rq);
    qk_err e;
    if (!app_name_valid(rq->params[0])) {
        http_error(rs, 404, "not_found", "no such app");
        return;
    }
    if (apps_revoke(&rq->kms->svc, &who, rq->params[0], &e) != QK_OK)
        http_fail(rs, &e);
    else
        http_json(rs, 200, json_pack("{s:s,s:b}", "name", rq->params[0], "revoked", 1));
}

/* POST /v1/admin/apps/{name}/tokens */
void h_apps_token(http_request *rq, http_response *rs)
{
    qk_principal who = admin_principal(rq);
    json_t *out;
    qk_err e;
    if (!app_name_valid(rq->params[0])) {
        http_error(rs, 404, "not_found", "no such app");
        return;
    }
    if (apps_token_new(&rq->kms->svc, &who, rq->params[0], &out, &e) != QK_OK)
        http_fail(rs, &e);
    else
        http_json(rs, 201, out);
}

/* GET /v1/admin/devices/{id}/verification-code */
void h_device_verification_code(http_request *rq, http_response *rs)
{
    const char *id = path_id(rq, rs);
    char code[APP_VERIFICATION_CODE_LEN + 1];
    qk_err e;
    if (!id)
        return;
    qk_principal who = admin_principal(rq);
    if (apps_verification_code(&rq->kms->svc, &who, id, code, &e) != QK_OK) {
        http_fail(rs, &e);
        return;
    }
    http_json(rs, 200, json_pack("{s:s,s:s}", "device_id", id, "verification_code", code));
}

/* ---- events ---------------------------------------------------------------------- */

/* ?after=ID&limit=N of an event listing: false with the 400 in rs. */
static bool page_args(http_request *rq, http_response *rs, long long *after, int *limit)
{
    const char *a = http_query(rq, "after"), *l = http_query(rq, "limit");
    char *end;
    long long v;
    *after = 0;
    *limit = 100;
    if (a) {
        errno = 0;
        v = strtoll(a, &end, 10);
        if (*a < '0' || *a > '9' || *end || errno || v < 0) {
            http_error(rs, 400, "invalid_query", "after is an event id (0 or more)");
            return false;
        }
        *after = v;
    }
    if (l) {
        errno = 0;
        v = strtoll(l, &end, 10);
        if (*l < '0' || *l > '9' || *end || errno || v < 1 || v > EVENTS_LIST_MAX) {
            http_error(rs, 400, "invalid_query", "limit is 1 to %d", EVENTS_LIST_MAX);
            return false;
        }
        *limit = (int)v;
    }
    return true;
}

/* GET /v1/app/events?after=&limit= : the app's events. */
void h_app_events(http_request *rq, http_response *rs)
{
    app_account app;
    qk_principal who;
    long long after;
    int limit;
    json_t *out;
    qk_err e;
    if (!page_args(rq, rs, &after, &limit) || !the_app(rq, rs, &app, &who))
        return;
    if (events_list(&rq->kms->svc, app.id, after, limit, &out, &e) != QK_OK)
        http_fail(rs, &e);
    else
        http_json(rs, 200, out);
}

/* GET /v1/admin/events?after=&limit= : every event, and the webhooks' state. */
void h_events_list(http_request *rq, http_response *rs)
{
    long long after;
    int limit;
    json_t *out, *hooks;
    qk_err e;
    if (!page_args(rq, rs, &after, &limit))
        return;
    if (events_list(&rq->kms->svc, 0, after, limit, &out, &e) != QK_OK)
        goto fail;
    if (events_webhooks(&rq->kms->svc, &hooks, &e) != QK_OK) {
        json_decref(out);
        goto fail;
    }
    json_object_update(out, hooks);
    json_decref(hooks);
    http_json(rs, 200, out);
    return;
fail:
    http_fail(rs, &e);
}

/* POST /v1/admin/events/replay {"after": ID, "until": ID}: the kept events
 * in (after, until] to every live webhook again, a bounded part per call:
 * "next" says where the next call starts. */
void h_events_replay(http_request *rq, http_response *rs)
{
    static const char *const known[] = {"after", "until", NULL};
    json_t *in = http_body_object(rq, rs), *a, *u;
    qk_principal who = admin_principal(rq);
    events_replay_result res;
    qk_err e;
    if (!in)
        return;
    a = json_object_get(in, "after");
    u = json_object_get(in, "until");
    if (!only_fields(rs, in, known)) {
        /* answered */
    } else if (!json_is_integer(a) || json_integer_value(a) < 0 ||
               (u && (!json_is_integer(u) || json_integer_value(u) <= json_integer_value(a)))) {
        http_error(rs, 422, "invalid_request",
                   "after is an event id (0 or more); until, if given, a greater one");
    } else if (events_replay(&rq->kms->svc, &who, (long long)json_integer_value(a),
                             u ? (long long)json_integer_value(u) : 0, &res, &e) != QK_OK) {
        http_fail(rs, &e);
    } else {
        http_json(rs, 200,
                  json_pack("{s:I,s:I,s:I,s:o}", "after", json_integer_value(a), "until",
                            (json_int_t)res.until, "deliveries", (json_int_t)res.deliveries,
                            "next", res.next ? json_integer(res.next) : json_null()));
    }
    json_decref(in);
}

/* DELETE /v1/admin/events/webhooks/{id}: id as listed (events_webhook_id, hex). */
void h_webhook_remove(http_request *rq, http_response *rs)
{
    qk_principal who = admin_principal(rq);
    const char *id = rq->params[0];
    char *shown = NULL;
    qk_err e;
    if (strlen(id) != 64 || strspn(id, "0123456789abcdef") != 64) {
        http_error(rs, 404, "not_found", "no such webhook (its id is 64 lowercase hex)");
        return;
    }
    if (events_webhook_remove(&rq->kms->svc, &who, id, &shown, &e) != QK_OK)
        http_fail(rs, &e);
    else
        http_json(rs, 200, json_pack("{s:s,s:s,s:b}", "id", id, "url", shown, "removed", 1));
    free(shown);
}
