/*
 * admin_firmware — the doors of the firmware signing keys
 * (service/firmware_keys.h; docs/api.md, "Firmware signing keys"):
 * GET and POST /v1/admin/firmware/keys, POST .../keys/{product}/rotate,
 * and of their twins the data-signing keys ("Data-signing keys"): GET and
 * POST /v1/admin/signing-keys, POST .../signing-keys/{name}/rotate;
 * and of signing releases (service/firmware_sign.h; "Signing releases"):
 * POST /v1/admin/firmware/packages, the image in, the package out, each
 * held once; POST /v1/admin/firmware/packages/verify, a package checked
 * as its targets would (service/firmware_verify.h); and of groups' firmware keys (service/firmware_groups.h;
 * "Group firmware keys"): GET and POST /v1/admin/firmware/groups, POST
 * .../groups/{group}/rotate, DELETE .../groups/{group}/keys/{key_id}.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "api/principal.h"
#include "api/routes.h"
#include "service/firmware_approvals.h"
#include "service/firmware_groups.h"
#include "service/firmware_keys.h"
#include "service/firmware_sign.h"
#include "service/firmware_verify.h"

/* The doors of things named by one string (signing keys of either
 * purpose, groups' keys, approvals): field is the name's field in the
 * query and the body ("product", "name", "group"). */
typedef qk_kind (*keys_list_fn)(qk_svc *, const char *, json_t **, qk_err *);
typedef qk_kind (*keys_create_fn)(qk_svc *, const qk_principal *, const char *, json_t **,
                                  qk_err *);
typedef qk_kind (*keys_rotate_fn)(qk_svc *, const qk_principal *, const char *, int, json_t **,
                                  qk_err *);

static void keys_list(http_request *rq, http_response *rs, const char *field, keys_list_fn fn)
{
    json_t *out;
    qk_err e;
    if (http_query_count(rq, field) > 1) {
        http_error(rs, 400, "invalid_query", "%s given twice", field);
        return;
    }
    if (fn(&rq->kms->svc, http_query(rq, field), &out, &e) != QK_OK) {
        http_fail(rs, &e);
        return;
    }
    http_json(rs, 200, out);
}

static void keys_create(http_request *rq, http_response *rs, const char *field, keys_create_fn fn)
{
    qk_principal who = admin_principal(rq);
    json_t *in = http_body_object(rq, rs), *out;
    qk_err e;

    if (!in)
        return;
    if (json_object_size(in) != 1 || !json_is_string(json_object_get(in, field))) {
        http_error(rs, 422, "invalid_request", "expected {\"%s\": string}", field);
        goto out;
    }
    if (fn(&rq->kms->svc, &who, json_string_value(json_object_get(in, field)), &out, &e) !=
        QK_OK) {
        http_fail(rs, &e);
        goto out;
    }
    http_json(rs, 201, out);
out:
    json_decref(in);
}

static void keys_rotate(http_request *rq, http_response *rs, keys_rotate_fn fn)
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
    if (fn(&rq->kms->svc, &who, rq->params[0], days, &out, &e) != QK_OK) {
        http_fail(rs, &e);
        goto out;
    }
    http_json(rs, 200, out);
out:
    json_decref(in);
}

/* A POST on {param} with no body (or {}) doing fn: 200 with its answer. */
typedef qk_kind (*param_action_fn)(qk_svc *, const qk_principal *, const char *, json_t **,
                                   qk_err *);

static void empty_body_action(http_request *rq, http_response *rs, param_action_fn fn)
{
    qk_principal who = admin_principal(rq);
    json_t *in = http_body_object_opt(rq, rs), *out;
    qk_err e;

    if (!in)
        return;
    if (json_object_size(in) != 0) {
        http_error(rs, 422, "invalid_request", "expected no body or {}");
        goto out;
    }
    if (fn(&rq->kms->svc, &who, rq->params[0], &out, &e) != QK_OK) {
        http_fail(rs, &e);
        goto out;
    }
    http_json(rs, 200, out);
out:
    json_decref(in);
}

/* POST .../{name}/versions/{version}/revoke {"reason"?}: fn. */
typedef qk_kind (*keys_revoke_fn)(qk_svc *, const qk_principal *, const char *, int, const char *,
                                  json_t **, qk_err *);

static void keys_revoke(http_request *rq, http_response *rs, keys_revoke_fn fn)
{
    qk_principal who = admin_principal(rq);
    json_t *in = http_body_object_opt(rq, rs), *jr, *out;
    const char *v = rq->params[1];
    char *end = NULL;
    long version = 0;
    qk_err e;

    if (!in)
        return;
    jr = json_object_get(in, "reason");
    if (json_object_size(in) > (jr ? 1u : 0u) || (jr && !json_is_string(jr))) {
        http_error(rs, 422, "invalid_request", "expected {\"reason\"?: string}");
        goto out;
    }
    /* a version is decimal digits; anything else names no version */
    if (*v >= '1' && *v <= '9' && strlen(v) <= 9)
        version = strtol(v, &end, 10);
    if (fn(&rq->kms->svc, &who, rq->params[0], end && !*end ? (int)version : 0,
           json_string_value(jr), &out, &e) != QK_OK) {
        http_fail(rs, &e);
        goto out;
    }
    http_json(rs, 200, out);
out:
    json_decref(in);
}

void h_firmware_keys_revoke(http_request *rq, http_response *rs)
{
    keys_revoke(rq, rs, firmware_keys_revoke);
}

void h_data_keys_revoke(http_request *rq, http_response *rs)
{
    keys_revoke(rq, rs, data_keys_revoke);
}

void h_firmware_keys_list(http_request *rq, http_response *rs)
{
    keys_list(rq, rs, "product", firmware_keys_list);
}

void h_firmware_keys_create(http_request *rq, http_response *rs)
{
    keys_create(rq, rs, "product", firmware_keys_create);
}

void h_firmware_keys_rotate(http_request *rq, http_response *rs)
{
    keys_rotate(rq, rs, firmware_keys_rotate);
}

void h_data_keys_list(http_request *rq, http_response *rs)
{
    keys_list(rq, rs, "name", data_keys_list);
}

void h_data_keys_create(http_request *rq, http_response *rs)
{
    keys_create(rq, rs, "name", data_keys_create);
}

void h_data_keys_rotate(http_request *rq, http_response *rs)
{
    keys_rotate(rq, rs, data_keys_rotate);
}

/* ---- groups' firmware keys ------------------------------------------------------ */

void h_firmware_groups_list(http_request *rq, http_response *rs)
{
    keys_list(rq, rs, "group", firmware_groups_list);
}

void h_firmware_groups_create(http_request *rq, http_response *rs)
{
    keys_create(rq, rs, "group", firmware_groups_create);
}

void h_firmware_groups_rotate(http_request *rq, http_response *rs)
{
    empty_body_action(rq, rs, firmware_groups_rotate);
}

void h_firmware_groups_destroy(http_request *rq, http_response *rs)
{
    qk_principal who = admin_principal(rq);
    qk_err e;
    if (firmware_groups_destroy(&rq->kms->svc, &who, rq->params[0], rq->params[1], &e) != QK_OK) {
        http_fail(rs, &e);
        return;
    }
    http_json(rs, 200, json_pack("{s:s,s:s,s:s}", "group", rq->params[0], "key_id", rq->params[1],
                                 "state", "destroyed"));
}

/* ---- POST /v1/admin/firmware/packages ------------------------------------------ */

/* The device values: the first FIRMWARE_MAX_TARGETS + 1 kept, all counted
 * (the service refuses more than its maximum with its one message). */
struct devlist {
    const char *v[FIRMWARE_MAX_TARGETS + 1];
    size_t n, kept;
};

static int add_value(void *arg, const char *value)
{
    struct devlist *d = arg;
    if (d->kept < FIRMWARE_MAX_TARGETS + 1)
        d->v[d->kept++] = value;
    d->n++;
    return 0;
}

/* A decimal query value (absent: ok, *v untouched): false when it is not
 * a whole decimal number from lo to hi, or given twice. */
static bool query_u64(http_request *rq, const char *name, uint64_t lo, uint64_t hi, uint64_t *v)
{
    const char *s = http_query(rq, name);
    char *end = NULL;
    unsigned long long x;
    if (!s)
        return true;
    if (http_query_count(rq, name) > 1 || *s < '0' || *s > '9')
        return false;
    errno = 0;
    x = strtoull(s, &end, 10);
    if (errno || *end || x < lo || x > hi)
        return false;
    *v = x;
    return true;
}

void h_firmware_sign(http_request *rq, http_response *rs)
{
    qk_principal who = admin_principal(rq);
    firmware_sign_spec sp = {0};
    static struct devlist empty;
    struct devlist *devs = malloc(sizeof(*devs)), *groups = malloc(sizeof(*groups));
    firmware_package *pkg = NULL;
    http_stream *st = NULL;
    uint64_t counter = 0, nb = 0;
    uint8_t *image;
    json_t *info = NULL;
    qk_err e;

    if (!devs || !groups || !(st = calloc(1, sizeof(*st)))) {
        http_error(rs, 500, "internal", "out of memory");
        goto out;
    }
    *devs = empty;
    *groups = empty;
    if (http_query_count(rq, "product") > 1 || http_query_count(rq, "version") > 1 ||
        http_query_count(rq, "approval") > 1 ||
        !query_u64(rq, "counter", 1, (UINT64_C(1) << 53) - 1, &counter) ||
        !query_u64(rq, "not_before", 0, (UINT64_C(1) << 40), &nb) ||
        http_query_each(rq, "device", add_value, devs) != 0 ||
        http_query_each(rq, "group", add_value, groups) != 0) {
        http_error(rs, 400, "invalid_query",
                   "expected product, version (once each), counter and not_before (decimal, "
                   "once each), device and group (1 to %d in all)",
                   FIRMWARE_MAX_TARGETS);
        goto out;
    }
    sp.product = http_query(rq, "product");
    sp.version = http_query(rq, "version");
    sp.counter = counter;
    sp.not_before = http_query(rq, "not_before") ? (int64_t)nb : -1;
    sp.devices = devs->v;
    sp.ndevices = devs->n > devs->kept ? FIRMWARE_MAX_TARGETS + 1 : devs->n;
    sp.groups = groups->v;
    sp.ngroups = groups->n > groups->kept ? FIRMWARE_MAX_TARGETS + 1 : groups->n;
    sp.approval = http_query(rq, "approval");
    /* The image is the service's from here (held once: it is not copied). */
    image = *rq->octets;
    *rq->octets = NULL;
    if (firmware_sign(&rq->kms->svc, &who, &sp, image, rq->body_len, &pkg, &info, &e) != QK_OK) {
        http_fail(rs, &e);
        goto out;
    }
    if (!info) {
        firmware_package_free(pkg);
        http_error(rs, 500, "internal", "out of memory");
        goto out;
    }
    st->total = firmware_package_size(pkg);
    st->read = firmware_package_read;
    st->release = firmware_package_free;
    st->ctx = pkg;
    http_stream_answer(rs, 201, "application/octet-stream", st);
    st = NULL;
    snprintf(rs->extra_name[0], sizeof(rs->extra_name[0]), "Qkms-Package-Id");
    snprintf(rs->extra_value[0], sizeof(rs->extra_value[0]), "%s",
             json_string_value(json_object_get(info, "package_id")));
    snprintf(rs->extra_name[1], sizeof(rs->extra_name[1]), "Qkms-Counter");
    snprintf(rs->extra_value[1], sizeof(rs->extra_value[1]), "%lld",
             (long long)json_integer_value(json_object_get(info, "counter")));
out:
    json_decref(info);
    free(st);
    free(devs);
    free(groups);
}

/* ---- POST /v1/admin/firmware/packages/verify ----------------------------------- */

void h_firmware_verify(http_request *rq, http_response *rs)
{
    qk_principal who = admin_principal(rq);
    uint8_t *pkg = *rq->octets; /* the service's from here (held once) */
    json_t *out;
    qk_err e;

    *rq->octets = NULL;
    if (firmware_verify(&rq->kms->svc, &who, pkg, rq->body_len, &out, &e) != QK_OK) {
        http_fail(rs, &e);
        return;
    }
    http_json(rs, 200, out);
}

/* ---- release approvals (service/firmware_approvals.h) ----------------------------- */

void h_firmware_rules_list(http_request *rq, http_response *rs)
{
    json_t *out;
    qk_err e;
    if (firmware_rules_list(&rq->kms->svc, &out, &e) != QK_OK) {
        http_fail(rs, &e);
        return;
    }
    http_json(rs, 200, out);
}

void h_firmware_rule_set(http_request *rq, http_response *rs)
{
    qk_principal who = admin_principal(rq);
    json_t *in = http_body_object(rq, rs), *ja, *out;
    qk_err e;

    if (!in)
        return;
    ja = json_object_get(in, "approvals");
    if (json_object_size(in) != 1 || !json_is_integer(ja)) {
        http_error(rs, 422, "invalid_request", "expected {\"approvals\": 1 or 2}");
        goto out;
    }
    if (firmware_rule_set(&rq->kms->svc, &who, rq->params[0],
                          json_integer_value(ja) == 1 ? 1 : json_integer_value(ja) == 2 ? 2 : 0,
                          &out, &e) != QK_OK) {
        http_fail(rs, &e);
        goto out;
    }
    http_json(rs, 200, out);
out:
    json_decref(in);
}

void h_firmware_approvals_list(http_request *rq, http_response *rs)
{
    keys_list(rq, rs, "product", firmware_approvals_list);
}

/* A JSON array of strings into at most FIRMWARE_MAX_TARGETS + 1 pointers
 * (more counts as one too many for the service's check); -1 not strings. */
static long string_list(const json_t *a, const char **v)
{
    size_t i;
    const json_t *x;
    if (!a)
        return 0;
    if (!json_is_array(a))
        return -1;
    json_array_foreach(a, i, x) {
        if (!json_is_string(x))
            return -1;
        if (i <= FIRMWARE_MAX_TARGETS)
            v[i] = json_string_value(x);
    }
    return json_array_size(a) > FIRMWARE_MAX_TARGETS ? FIRMWARE_MAX_TARGETS + 1
                                                       : (long)json_array_size(a);
}

void h_firmware_approval_request(http_request *rq, http_response *rs)
{
    static const char *const names[] = {"product", "version", "image_size", "image_sha256",
                                        "devices", "groups", "counter", "not_before"};
    qk_principal who = admin_principal(rq);
    json_t *in = http_body_object(rq, rs), *out, *v;
    const char *devs[FIRMWARE_MAX_TARGETS + 1], *grps[FIRMWARE_MAX_TARGETS + 1], *k;
    firmware_sign_spec sp = {0};
    json_t *jc, *jn, *js;
    long nd, ng;
    qk_err e;

    if (!in)
        return;
    json_object_foreach(in, k, v) {
        size_t i;
        for (i = 0; i < sizeof(names) / sizeof(names[0]) && strcmp(k, names[i]); i++)
            ;
        if (i == sizeof(names) / sizeof(names[0])) {
            http_error(rs, 422, "invalid_request", "unknown field '%s'", k);
            goto out;
        }
    }
    jc = json_object_get(in, "counter");
    jn = json_object_get(in, "not_before");
    js = json_object_get(in, "image_size");
    nd = string_list(json_object_get(in, "devices"), devs);
    ng = string_list(json_object_get(in, "groups"), grps);
    if (!json_is_string(json_object_get(in, "product")) ||
        !json_is_string(json_object_get(in, "version")) || !json_is_integer(js) ||
        !json_is_string(json_object_get(in, "image_sha256")) || nd < 0 || ng < 0 ||
        (jc && (!json_is_integer(jc) || json_integer_value(jc) < 1)) ||
        (jn && (!json_is_integer(jn) || json_integer_value(jn) < 0 ||
                json_integer_value(jn) > ((json_int_t)1 << 40)))) {
        http_error(rs, 422, "invalid_request",
                   "expected {\"product\",\"version\",\"image_size\",\"image_sha256\","
                   "\"devices\"?:[],\"groups\"?:[],\"counter\"?,\"not_before\"?}");
        goto out;
    }
    sp.product = json_string_value(json_object_get(in, "product"));
    sp.version = json_string_value(json_object_get(in, "version"));
    sp.counter = jc ? (uint64_t)json_integer_value(jc) : 0;
    sp.not_before = jn ? (int64_t)json_integer_value(jn) : -1;
    sp.devices = devs;
    sp.ndevices = (size_t)nd;
    sp.groups = grps;
    sp.ngroups = (size_t)ng;
    if (firmware_approval_request(&rq->kms->svc, &who, &sp,
                                  json_integer_value(js) < 0 ? 0 : (uint64_t)json_integer_value(js),
                                  json_string_value(json_object_get(in, "image_sha256")), &out,
                                  &e) != QK_OK) {
        http_fail(rs, &e);
        goto out;
    }
    http_json(rs, 201, out);
out:
    json_decref(in);
}

void h_firmware_approval_approve(http_request *rq, http_response *rs)
{
    empty_body_action(rq, rs, firmware_approval_approve);
}
