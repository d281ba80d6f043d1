/*
 * cmd_device — `kmsctl device ...`: /v1/admin/devices. register, list,
 * show, keys, suspend, resume, revoke and rotate live here; fill, import
 * and cert have modules of their own (device_fill.h, device_import.h,
 * device_cert.h).
 */
#include "command.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <jansson.h>

#include "attr_arg.h"
#include "client.h"
#include "device_common.h"
#include "device_cert.h"
#include "device_fill.h"
#include "device_import.h"
#include "exitcodes.h"
#include "output.h"
#include "timearg.h"

#define LIST_LIMIT_MAX 1000L
#define ALL_PAGE_SIZE "1000" /* --all without --limit: fewest round trips */

static const char *const states[] = {"active", "suspended", "revoked", NULL};

/* ---- register ------------------------------------------------------------ */

/* Each --OPT NAME=VALUE (repeatable) as an attributes object: port is a
 * number, joined a boolean, every other value a string (the server checks
 * and normalizes them: docs/gateways.md). *out stays NULL when none. */
static int attrs_arg(const struct opt_values *o, const char *opt, json_t **out)
{
    const char *terms[ARGS_MAX_VALUES];
    size_t n = opt_get_all(o, opt, terms, ARGS_MAX_VALUES);
    *out = NULL;
    if (n == 0)
        return EXIT_OK;
    if (!(*out = json_object())) {
        out_error("out of memory");
        return EXIT_INTERNAL;
    }
    for (size_t i = 0; i < n; i++) {
        const char *eq = strchr(terms[i], '=');
        char name[64];
        json_t *v;
        if (!eq || eq == terms[i] || (size_t)(eq - terms[i]) >= sizeof(name)) {
            out_error("--%s takes NAME=VALUE", opt);
            json_decref(*out);
            *out = NULL;
            return EXIT_USAGE;
        }
        memcpy(name, terms[i], (size_t)(eq - terms[i]));
        name[eq - terms[i]] = 0;
        eq++;
        if (!(v = attr_arg_value(name, eq))) {
            out_error("--%s %s: the value is not valid UTF-8", opt, name);
            json_decref(*out);
            *out = NULL;
            return EXIT_USAGE;
        }
        json_object_set_new(*out, name, v);
    }
    return EXIT_OK;
}

/* The optional registration fields, checked; EXIT_USAGE says which is bad. */
static int register_optional(const struct opt_values *o, json_t *req)
{
    const char *group = opt_get(o, "group"), *parent = opt_get(o, "parent");
    const char *keys = opt_get(o, "keys"), *validity = opt_get(o, "validity");
    const char *service = opt_get(o, "service-days");
    long nkeys = 0, bits = 0, days = 0, sdays = 0;
    json_t *attrs = NULL;
    int rc;

    if (group && (rc = device_check_group("--group", group)))
        return rc;
    if (parent && (rc = device_check_id("--parent", parent)))
        return rc;
    if (keys && !arg_to_long(keys, 1, DEVICE_KEYS_MAX, &nkeys)) {
        out_error("--keys must be a whole number from 1 to %d", DEVICE_KEYS_MAX);
        return EXIT_USAGE;
    }
    if ((rc = device_check_key_bits("--key-bits", opt_get(o, "key-bits"), &bits)))
        return rc;
    if (validity && !arg_to_long(validity, 1, DEVICE_VALIDITY_MAX, &days)) {
        out_error("--validity must be a whole number of days from 1 to %ld", DEVICE_VALIDITY_MAX);
        return EXIT_USAGE;
    }
    if (service && (opt_get(o, "no-service-end") != NULL)) {
        out_error("give --service-days or --no-service-end, not both");
        return EXIT_USAGE;
    }
    if (service && !arg_to_long(service, 1, DEVICE_SERVICE_MAX, &sdays)) {
        out_error("--service-days must be a whole number of days from 1 to %ld",
                  DEVICE_SERVICE_MAX);
        return EXIT_USAGE;
    }
    if ((service && (rc = device_put(req, "service_days", json_integer(sdays)))) ||
        ((opt_get(o, "no-service-end") != NULL) && (rc = device_put(req, "service_days", json_null()))))
        return rc;

    if ((group && (rc = device_put(req, "group", json_string(group)))) ||
        (parent && (rc = device_put(req, "parent", json_string(parent)))) ||
        (nkeys && (rc = device_put(req, "keys", json_integer(nkeys)))) ||
        (bits && (rc = device_put(req, "key_bits", json_integer(bits)))) ||
        (days && (rc = device_put(req, "validity_days", json_integer(days)))))
        return rc;
    if ((rc = attrs_arg(o, "attr", &attrs)))
        return rc;
    if (attrs && (rc = device_put(req, "attributes", attrs)))
        return rc;
    return EXIT_OK;
}

static int device_register(const struct kmsctl_ctx *ctx, const struct invocation *inv)
{
    const char *id = inv->pos[0];
    const char *type = opt_get(&inv->local, "type");
    json_t *req = NULL, *resp = NULL;
    int rc;

    if ((rc = device_check_id("device ID", id)))
        goto cleanup;
    rc = EXIT_USAGE;
    if (!type) {
        out_error("--type is required (e.g. vehicle, meter, gateway; see 'kmsctl device-type list')");
        goto cleanup;
    }
    if ((rc = device_check_type("--type", type)))
        goto cleanup;
    /* docs/api.md: "A subdevice must name a parent". */
    if (strcmp(type, "subdevice") == 0 && !opt_get(&inv->local, "parent")) {
        out_error("a subdevice needs --parent (the device ID of its gateway)");
        rc = EXIT_USAGE;
        goto cleanup;
    }
    if (!(req = json_pack("{s:s, s:s}", "device_id", id, "type", type))) {
        out_error("out of memory");
        rc = EXIT_INTERNAL;
        goto cleanup;
    }
    if ((rc = register_optional(&inv->local, req)))
        goto cleanup;

    rc = client_call(ctx, "POST", "/v1/admin/devices", req, &resp);
    rc = out_result(ctx->json, rc, resp, device_print_record);

cleanup:
    json_decref(req);
    return rc;
}

/* ---- list ---------------------------------------------------------------- */

/* Each --attr NAME=VALUE as an attr= term of the query. */
static int attr_query(const struct opt_values *o, char **query)
{
    const char *terms[ARGS_MAX_VALUES];
    size_t n = opt_get_all(o, "attr", terms, ARGS_MAX_VALUES);
    int rc;
    for (size_t i = 0; i < n; i++) {
        if (!strchr(terms[i], '=') || terms[i][0] == '=') {
            out_error("--attr takes NAME=VALUE");
            return EXIT_USAGE;
        }
        if ((rc = client_query_add(query, "attr", terms[i])))
            return rc;
    }
    return EXIT_OK;
}

/* The filter query from the options, checked; NULL *query when none. */
static int list_query(const struct opt_values *o, char **query)
{
    const char *type = opt_get(o, "type"), *group = opt_get(o, "group");
    const char *state = opt_get(o, "state"), *within = opt_get(o, "expiring-within");
    const char *limit = opt_get(o, "limit"), *after = opt_get(o, "after");
    const char *parent = opt_get(o, "parent"), *since = opt_get(o, "seen-since");
    bool never = opt_get(o, "never-seen") != NULL;
    char *since_v = NULL;
    long v;
    int rc;

    *query = NULL;
    if (never && since) {
        out_error("--never-seen and --seen-since exclude each other");
        return EXIT_USAGE;
    }
    if (type && (rc = device_check_type("--type", type)))
        return rc;
    if (group && (rc = device_check_group("--group", group)))
        return rc;
    if (state && !arg_is_one_of(state, states)) {
        out_error("--state must be active, suspended or revoked");
        return EXIT_USAGE;
    }
    if (within && !arg_to_long(within, 0, DEVICE_VALIDITY_MAX, &v)) {
        out_error("--expiring-within must be a whole number of days from 0 to %ld", DEVICE_VALIDITY_MAX);
        return EXIT_USAGE;
    }
    if (limit && !arg_to_long(limit, 1, LIST_LIMIT_MAX, &v)) {
        out_error("--limit must be a whole number from 1 to %ld", LIST_LIMIT_MAX);
        return EXIT_USAGE;
    }
    if (after && (rc = device_check_id("--after", after)))
        return rc;
    if (parent && (rc = device_check_id("--parent", parent)))
        return rc;
    if (!limit && opt_get(o, "all"))
        limit = ALL_PAGE_SIZE;
    if (since && (rc = time_arg("--seen-since", since, &since_v)))
        return rc;

    rc = EXIT_OK;
    if ((never && (rc = client_query_add(query, "never_seen", "true"))) ||
        (since_v && (rc = client_query_add(query, "seen_since", since_v)))) {
        free(since_v);
        return rc;
    }
    free(since_v);
    if ((type && (rc = client_query_add(query, "type", type))) ||
        (group && (rc = client_query_add(query, "group", group))) ||
        (state && (rc = client_query_add(query, "state", state))) ||
        (parent && (rc = client_query_add(query, "parent", parent))) ||
        (rc = attr_query(o, query)) ||
        (within && (rc = client_query_add(query, "expiring_within", within))) ||
        (limit && (rc = client_query_add(query, "limit", limit))))
        return rc;
    return EXIT_OK;
}

/* One page from the cursor `after` (NULL: the first), checked for shape. */
static int list_page(const struct kmsctl_ctx *ctx, const char *query, const char *after,
                     json_t **page)
{
    char *q = NULL, *path = NULL;
    int rc = EXIT_INTERNAL;

    *page = NULL;
    if (query && !(q = strdup(query))) {
        out_error("out of memory");
        goto cleanup;
    }
    if (after && (rc = client_query_add(&q, "after", after)))
        goto cleanup;
    if (asprintf(&path, "/v1/admin/devices%s", q ? q : "") < 0) {
        path = NULL;
        out_error("out of memory");
        rc = EXIT_INTERNAL;
        goto cleanup;
    }
    rc = client_call(ctx, "GET", path, NULL, page);
    if (rc)
        goto cleanup;
    const json_t *next = json_object_get(*page, "next");
    if (!json_is_array(json_object_get(*page, "devices")) || !(json_is_string(next) || json_is_null(next))) {
        out_error("server response has no \"devices\" list or \"next\" cursor");
        json_decref(*page);
        *page = NULL;
        rc = EXIT_SERVER;
    }

cleanup:
    free(path);
    free(q);
    return rc;
}

/* Follows "next" from `after` until it is null; every page's devices
 * combined into one {"devices":[...]} in *resp (NULL unless EXIT_OK). */
static int list_all(const struct kmsctl_ctx *ctx, const char *query, const char *after,
                    json_t **resp)
{
    char *cursor = NULL;
    json_t *devices = json_array(), *page = NULL;
    int rc = EXIT_INTERNAL;

    *resp = NULL;
    /* "o" takes devices, even when json_pack fails. */
    if (!devices || !(*resp = json_pack("{s:o}", "devices", devices)))
        goto oom;
    if (after && !(cursor = strdup(after)))
        goto oom;
    for (;;) {
        rc = list_page(ctx, query, cursor, &page);
        if (rc)
            goto cleanup;
        const json_t *batch = json_object_get(page, "devices");
        const char *next = json_string_value(json_object_get(page, "next"));
        if (json_array_extend(devices, (json_t *)batch) != 0)
            goto oom;
        if (!next)
            break;
        /* A cursor that does not move would page forever. */
        if (json_array_size(batch) == 0 || (cursor && strcmp(next, cursor) == 0)) {
            out_error("server sent a list cursor that does not advance; stopping");
            rc = EXIT_SERVER;
            goto cleanup;
        }
        free(cursor);
        if (!(cursor = strdup(next)))
            goto oom;
        json_decref(page);
        page = NULL;
    }
    rc = EXIT_OK;
    goto cleanup;

oom:
    out_error("out of memory");
    rc = EXIT_INTERNAL;
cleanup:
    if (rc) {
        json_decref(*resp);
        *resp = NULL;
    }
    json_decref(page);
    free(cursor);
    return rc;
}

/* The devices table, and a note when a "next" cursor says more follow. */
static int print_device_page(const json_t *resp)
{
    static const char *const headers[] = {"DEVICE",      "TYPE",        "GROUP",    "STATE",
                                          "ACTIVE-KEYS", "NEXT-EXPIRY", "LAST-SEEN"};
    static const char *const fields[] = {"device_id",   "type",        "group",       "state",
                                         "active_keys", "next_expiry", "last_seen_at"};
    int rc = out_table(json_object_get(resp, "devices"), 7, headers, fields);
    if (!rc && json_is_string(json_object_get(resp, "next")))
        out_note("More devices follow: use --all, or --after with the last device ID shown.");
    return rc;
}

static int device_list(const struct kmsctl_ctx *ctx, const struct invocation *inv)
{
    const char *after = opt_get(&inv->local, "after");
    char *query = NULL;
    json_t *resp = NULL;
    int rc = list_query(&inv->local, &query);
    if (!rc && opt_get(&inv->local, "all"))
        rc = list_all(ctx, query, after, &resp);
    else if (!rc)
        rc = list_page(ctx, query, after, &resp);
    free(query);
    return out_result(ctx->json, rc, resp, print_device_page);
}

/* ---- show, keys ---------------------------------------------------------- */

static int device_show(const struct kmsctl_ctx *ctx, const struct invocation *inv)
{
    json_t *resp;
    int rc = resource_call(ctx, &device_resource, "GET", inv->pos[0], NULL, NULL, &resp);
    return out_result(ctx->json, rc, resp, device_print_record);
}

/* The keys table of a GET .../keys answer, always with its KCV column. */
static int print_keys_answer(const json_t *resp)
{
    return device_print_keys(resp, true);
}

static int device_keys(const struct kmsctl_ctx *ctx, const struct invocation *inv)
{
    const char *suffix = opt_get(&inv->local, "kcv") ? "keys?kcv=true" : "keys";
    json_t *resp;
    int rc = resource_call(ctx, &device_resource, "GET", inv->pos[0], suffix, NULL, &resp);
    return out_result(ctx->json, rc, resp, print_keys_answer);
}

/* `device verification-code ID`: what an owner's app proves it knows to
 * bind the gateway (docs/gateways.md); the gateway shows the same. */
static int device_vcode(const struct kmsctl_ctx *ctx, const struct invocation *inv)
{
    json_t *resp;
    int rc = resource_call(ctx, &device_resource, "GET", inv->pos[0], "verification-code", NULL,
                           &resp);
    return out_result(ctx->json, rc, resp, out_kv);
}

/* ---- suspend, resume, revoke, rotate ------------------------------------- */

static int change_state(const struct kmsctl_ctx *ctx, const struct invocation *inv, const char *verb)
{
    const char *id = inv->pos[0];
    json_t *resp;
    int rc = resource_act(ctx, &device_resource, id, verb, &resp);
    if (!rc && strcmp(verb, "revoke") == 0)
        out_note("Device keys of '%s' were destroyed; a revoked device cannot be resumed.",
                 out_safe(id));
    if (!rc && ctx->json)
        rc = out_json(resp);
    else if (!rc)
        out_textf(stdout, "Device '%s' is now %s.\n", id,
                  out_string_or(json_object_get(resp, "state"), "-"));
    json_decref(resp);
    return rc;
}

static int device_suspend(const struct kmsctl_ctx *ctx, const struct invocation *inv)
{
    return change_state(ctx, inv, "suspend");
}

static int device_resume(const struct kmsctl_ctx *ctx, const struct invocation *inv)
{
    return change_state(ctx, inv, "resume");
}

static int device_revoke(const struct kmsctl_ctx *ctx, const struct invocation *inv)
{
    return change_state(ctx, inv, "revoke");
}

/* `device sae ID SAE_ID` / `device sae ID --clear`: the device's SAE ID
 * for ETSI GS QKD 014 (docs/etsi014.md). */
static int device_sae(const struct kmsctl_ctx *ctx, const struct invocation *inv)
{
    const char *id = inv->pos[0], *sae = inv->npos > 1 ? inv->pos[1] : NULL;
    bool clear = opt_get(&inv->local, "clear") != NULL;
    json_t *req, *resp = NULL;
    int rc;

    if (!sae == !clear) {
        out_error("give the SAE ID, or --clear to take it away");
        return EXIT_USAGE;
    }
    req = json_pack("{s:o}", "sae_id", sae ? json_string(sae) : json_null());
    if (!req) {
        out_error("the SAE ID is not UTF-8 text");
        return EXIT_USAGE;
    }
    rc = resource_call(ctx, &device_resource, "POST", id, "sae", req, &resp);
    json_decref(req);
    if (!rc && ctx->json)
        rc = out_json(resp);
    else if (!rc)
        out_textf(stdout, "Device '%s' has SAE ID %s.\n", id,
                  out_string_or(json_object_get(resp, "sae_id"), "(none)"));
    json_decref(resp);
    return rc;
}

/* The rotate body from the options, checked. */
static int rotate_body(const struct opt_values *o, json_t *req)
{
    const char *grace = opt_get(o, "grace-days"), *validity = opt_get(o, "validity"),
               *purpose = opt_get(o, "purpose");
    long days = 0, bits = 0, gdays = 0;
    int rc;

    if (grace && !arg_to_long(grace, 0, DEVICE_GRACE_MAX, &gdays)) {
        out_error("--grace-days must be a whole number from 0 to %ld", DEVICE_GRACE_MAX);
        return EXIT_USAGE;
    }
    if ((rc = device_check_key_bits("--key-bits", opt_get(o, "key-bits"), &bits)))
        return rc;
    if (validity && !arg_to_long(validity, 1, DEVICE_VALIDITY_MAX, &days)) {
        out_error("--validity must be a whole number of days from 1 to %ld", DEVICE_VALIDITY_MAX);
        return EXIT_USAGE;
    }
    if (purpose && strcmp(purpose, "access") && strcmp(purpose, "local") &&
        strcmp(purpose, "generic")) {
        out_error("--purpose must be access, local or generic");
        return EXIT_USAGE;
    }
    if ((purpose && (rc = device_put(req, "purpose", json_string(purpose)))) ||
        (grace && (rc = device_put(req, "grace_days", json_integer(gdays)))) ||
        (bits && (rc = device_put(req, "key_bits", json_integer(bits)))) ||
        (days && (rc = device_put(req, "validity_days", json_integer(days)))))
        return rc;
    return EXIT_OK;
}

static int device_rotate(const struct kmsctl_ctx *ctx, const struct invocation *inv)
{
    json_t *req = json_object(), *resp = NULL;
    int rc = EXIT_INTERNAL;

    if (!req) {
        out_error("out of memory");
        goto cleanup;
    }
    if ((rc = rotate_body(&inv->local, req)))
        goto cleanup;
    rc = resource_call(ctx, &device_resource, "POST", inv->pos[0], "rotate", req, &resp);
    rc = out_result(ctx->json, rc, resp, device_print_record);

cleanup:
    json_decref(req);
    return rc;
}

static void wipe_json_string(json_t *v)
{
    if (json_is_string(v))
        explicit_bzero((void *)json_string_value(v), json_string_length(v));
}

/* `device credential ID --tid TID [--password-stdin]`: without
 * --password-stdin a password is made here (24 characters from the OS
 * RNG) and printed once. */
static int device_credential(const struct kmsctl_ctx *ctx, const struct invocation *inv)
{
    static const char alphabet[] = "ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789";
    const char *tid = opt_get(&inv->local, "tid");
    bool from_stdin = opt_get(&inv->local, "password-stdin") != NULL;
    char pw[258];
    size_t n = 0;
    json_t *req = NULL, *resp = NULL;
    int rc = EXIT_USAGE;

    if (!tid) {
        out_error("--tid is required (the gateway's account name)");
        goto cleanup;
    }
    if (from_stdin) {
        if (!fgets(pw, sizeof(pw), stdin)) {
            out_error("no password on stdin");
            goto cleanup;
        }
        n = strcspn(pw, "\r\n");
        pw[n] = 0;
        if (n < 8 || n > 256) {
            out_error("the password must be 8 to 256 bytes");
            goto cleanup;
        }
    } else {
        uint8_t r[24];
        if (getrandom(r, sizeof(r), 0) != (ssize_t)sizeof(r)) {
            out_error("the OS RNG failed");
            rc = EXIT_INTERNAL;
            goto cleanup;
        }
        for (n = 0; n < sizeof(r); n++) /* 57 symbols: a small bias, 140 bits */
            pw[n] = alphabet[r[n] % (sizeof(alphabet) - 1)];
        pw[n] = 0;
        explicit_bzero(r, sizeof(r));
    }
    if (!(req = json_pack("{s:s,s:s}", "tid", tid, "password", pw))) {
        out_error("--tid and the password must be UTF-8");
        goto cleanup;
    }
    rc = resource_call(ctx, &device_resource, "POST", inv->pos[0], "credential", req, &resp);
    if (rc == EXIT_OK) {
        if (!from_stdin)
            json_object_set_new(resp, "password", json_string(pw));
        rc = ctx->json ? out_json(resp) : out_kv(resp);
    }

cleanup:
    explicit_bzero(pw, sizeof(pw));
    wipe_json_string(json_object_get(req, "password")); /* jansson's copies */
    wipe_json_string(json_object_get(resp, "password"));
    json_decref(req);
    json_decref(resp);
    return rc;
}

/* `device service ID (--days N | --until TIME | --no-end)` */
static int device_service(const struct kmsctl_ctx *ctx, const struct invocation *inv)
{
    const struct opt_values *o = &inv->local;
    const char *days = opt_get(o, "days"), *until = opt_get(o, "until");
    bool none = opt_get(o, "no-end") != NULL;
    json_t *req = NULL, *resp = NULL;
    long n = 0;
    int rc = EXIT_USAGE;

    if ((days != NULL) + (until != NULL) + none != 1) {
        out_error("give one of --days N, --until TIME, --no-end");
        goto cleanup;
    }
    if (days && !arg_to_long(days, 1, DEVICE_SERVICE_MAX, &n)) {
        out_error("--days must be a whole number from 1 to %ld", DEVICE_SERVICE_MAX);
        goto cleanup;
    }
    req = days ? json_pack("{s:I}", "days", (json_int_t)n)
          : until ? json_pack("{s:s}", "until", until)
                  : json_pack("{s:n}", "until");
    if (!req) {
        out_error(until ? "--until is not UTF-8" : "out of memory");
        goto cleanup;
    }
    rc = resource_call(ctx, &device_resource, "POST", inv->pos[0], "service", req, &resp);
    rc = out_result(ctx->json, rc, resp, device_print_record);

cleanup:
    json_decref(req);
    return rc;
}

/* `device attributes ID [--set NAME=VALUE]... [--unset NAME]...` */
static int device_attributes(const struct kmsctl_ctx *ctx, const struct invocation *inv)
{
    const struct opt_values *o = &inv->local;
    const char *names[ARGS_MAX_VALUES];
    size_t n = opt_get_all(o, "unset", names, ARGS_MAX_VALUES);
    json_t *req = json_object(), *unset = json_array(), *set = NULL, *resp = NULL;
    int rc = EXIT_INTERNAL;

    if (!req || !unset) {
        out_error("out of memory");
        goto cleanup;
    }
    /* --set takes what register's --attr takes. */
    if ((rc = attrs_arg(o, "set", &set)))
        goto cleanup;
    if (!set && !(set = json_object())) {
        rc = EXIT_INTERNAL;
        goto cleanup;
    }
    for (size_t i = 0; i < n; i++)
        json_array_append_new(unset, json_string(names[i]));
    if (json_object_size(set) == 0 && n == 0) {
        out_error("give --set NAME=VALUE or --unset NAME");
        rc = EXIT_USAGE;
        goto cleanup;
    }
    json_object_set_new(req, "set", set);
    set = NULL;
    json_object_set_new(req, "unset", unset);
    unset = NULL;
    rc = resource_call(ctx, &device_resource, "POST", inv->pos[0], "attributes", req, &resp);
    rc = out_result(ctx->json, rc, resp, device_print_record);

cleanup:
    json_decref(set);
    json_decref(unset);
    json_decref(req);
    return rc;
}

/* ---- the table ------------------------------------------------------------ */

static const struct opt_spec register_opts[] = {
    {"type", 0, "TYPE", "device type, e.g. vehicle, meter, gateway (required)"},
    {"group", 0, "GROUP", "group label (server default: default)"},
    {"parent", 0, "ID", "parent device (a gateway); required for a subdevice"},
    {"keys", 0, "N", "initial keys, 1..16 (server default: 4)"},
    {"key-bits", 0, "BITS", "128 or 256 (server default: 128)"},
    {"validity", 0, "DAYS", "key validity in days, 1..3650 (server default: 365)"},
    {"attr", 0, "NAME=VALUE", "an attribute (mac, sn, uuid, ip, port, joined or your own); repeat for more"},
    {"service-days", 0, "DAYS", "service validity in days, 1..36500 (server default: the type's)"},
    {"no-service-end", 0, NULL, "no end of service, whatever the type's default"},
    {0},
};

static const struct opt_spec credential_opts[] = {
    {"tid", 0, "TID", "the gateway's account name, 1-64 printable ASCII (required)"},
    {"password-stdin", 0, NULL, "read the password (8-256 bytes) from the first line of stdin; without it one is made and printed once"},
    {0},
};

static const struct opt_spec service_opts[] = {
    {"days", 0, "N", "extend the service N days past the later of now and its current end"},
    {"until", 0, "TIME", "end the service at TIME (RFC 3339; a time already past ends it)"},
    {"no-end", 0, NULL, "remove the end of service"},
    {0},
};

static const struct opt_spec attr_opts[] = {
    {"set", 0, "NAME=VALUE", "set an attribute; repeat for more"},
    {"unset", 0, "NAME", "remove an attribute; repeat for more"},
    {0},
};

static const struct opt_spec list_opts[] = {
    {"type", 0, "TYPE", "only devices of this type"},
    {"group", 0, "GROUP", "only devices in this group"},
    {"state", 0, "STATE", "only active, suspended or revoked devices"},
    {"parent", 0, "ID", "only the sub-devices of this gateway"},
    {"attr", 0, "NAME=VALUE", "only devices with this attribute; repeat for more (all must match)"},
    {"expiring-within", 0, "DAYS", "only devices with a live key expiring within DAYS (0..3650)"},
    {"never-seen", 0, NULL, "only devices never heard from (no request since registration)"},
    {"seen-since", 0, "T", "only devices heard from at or after T: a time, a date, or 30m, 12h, 7d back"},
    {"limit", 0, "N", "devices per page, 1..1000 (server default 100; 1000 with --all)"},
    {"after", 0, "ID", "start after this device ID (the 'next' cursor)"},
    {"all", 0, NULL, "follow the cursor and list every page"},
    {0},
};

static const struct opt_spec keys_opts[] = {
    {"kcv", 0, NULL, "include each live key's check value"},
    {0},
};

static const struct opt_spec rotate_opts[] = {
    {"grace-days", 0, "N", "days older keys stay usable, 0..365 (server default from config)"},
    {"key-bits", 0, "BITS", "128 or 256 for the new key"},
    {"validity", 0, "DAYS", "validity of the new key in days, 1..3650"},
    {"purpose", 0, "PURPOSE", "replace only the keys of access, local or generic (default: one new key per purpose the device has)"},
    {0},
};

static const struct opt_spec sae_opts[] = {
    {"clear", 0, NULL, "take the device's SAE ID away"},
    {0},
};

static const struct action device_actions[] = {
    {
        .sub = "register",
        .usage = "ID --type TYPE [--group G] [--parent ID] [--keys N] [--key-bits B] [--validity DAYS] [--attr NAME=VALUE]... [--service-days DAYS | --no-service-end]",
        .summary = "Register a device and generate its initial keys",
        .description = "Prints the new device record as 'key: value' lines and its keys as a table.\n"
                       "Device IDs: 1-128 printable ASCII characters, none of / \\ % ? #.\n"
                       DASH_NOTE
                       "\n"
                       "Request: POST /v1/admin/devices\n",
        .opts = register_opts,
        .min_args = 1,
        .max_args = 1,
        .run = device_register,
    },
    {
        .sub = "list",
        .usage = "[--type T] [--group G] [--state S] [--parent ID] [--attr NAME=VALUE]... [--expiring-within DAYS] [--never-seen | --seen-since T] [--limit N] [--after ID] [--all]",
        .summary = "List devices",
        .description = "Columns: DEVICE TYPE GROUP STATE ACTIVE-KEYS NEXT-EXPIRY LAST-SEEN; '-' means none.\n"
                       "Without --all one page is shown and a note says when more follow.\n"
                       "With --all and --json the pages are combined into one {\"devices\":[...]}.\n"
                       "A device is seen when a request of its own succeeds (a key, an end, a\n"
                       "gateway logout or reset), recorded to about a minute.\n"
                       "\n"
                       "Request: GET /v1/admin/devices?type=&group=&state=&expiring_within=\n"
                       "         &never_seen=&seen_since=&limit=&after=\n",
        .opts = list_opts,
        .run = device_list,
    },
    {
        .sub = "show",
        .usage = "ID",
        .summary = "Show a device and its keys",
        .description = DASH_NOTE "\nRequest: GET /v1/admin/devices/ID\n",
        .min_args = 1,
        .max_args = 1,
        .run = device_show,
    },
    {
        .sub = "keys",
        .usage = "ID [--kcv]",
        .summary = "List a device's keys (never their bytes)",
        .description = "Columns: INDEX ALG STATE EXPIRED NOT-AFTER RETIRE-AT EXPORTED KCV.\n"
                       "\n"
                       "Request: GET /v1/admin/devices/ID/keys[?kcv=true]\n",
        .opts = keys_opts,
        .min_args = 1,
        .max_args = 1,
        .run = device_keys,
    },
    {
        .sub = "sae",
        .usage = "ID (SAE_ID | --clear)",
        .summary = "Give a device an SAE ID for ETSI GS QKD 014 key delivery, or take it away",
        .description = "An SAE (Secure Application Entity: a QKD encryptor, a VPN router) asks\n"
                       "for keys over /api/v1/keys/... with its client certificate; the\n"
                       "certificate names the device, the device's SAE ID names it in the\n"
                       "standard's requests (docs/etsi014.md). SAE IDs are unique.\n"
                       "\n"
                       "Request: POST /v1/admin/devices/ID/sae\n",
        .opts = sae_opts,
        .min_args = 1,
        .max_args = 2,
        .run = device_sae,
    },
    {
        .sub = "verification-code",
        .usage = "ID",
        .summary = "Show a gateway's verification code (for binding it to an owner)",
        .description = "Derived from the gateway's newest access key: the gateway computes\n"
                       "the same and shows it (label, display, local channel); an owner's app\n"
                       "proves it knows it to bind the gateway (docs/gateways.md). A new\n"
                       "access key makes a new code.\n"
                       "\n"
                       "Request: GET /v1/admin/devices/ID/verification-code\n",
        .min_args = 1,
        .max_args = 1,
        .run = device_vcode,
    },
    {
        .sub = "credential",
        .usage = "ID --tid TID [--password-stdin]",
        .summary = "Set a gateway's login account (tid and password)",
        .description = "The gateway logs in with them, sealed under its access key\n"
                       "(docs/gateways.md, \"Login\"). The platform keeps only an scrypt hash.\n"
                       "Setting it unlocks the account and ends the gateway's current login.\n"
                       "Without --password-stdin a 24-character password is made and printed\n"
                       "once (\"password\"): give it to the gateway, it is not kept.\n"
                       "\n"
                       "Request: POST /v1/admin/devices/ID/credential\n",
        .opts = credential_opts,
        .min_args = 1,
        .max_args = 1,
        .run = device_credential,
    },
    {
        .sub = "service",
        .usage = "ID (--days N | --until TIME | --no-end)",
        .summary = "Renew, set or remove a device's end of service",
        .description = "Past its end of service (service_until) a device is refused keys on\n"
                       "every door: 403 service_expired (docs/gateways.md). --days renews:\n"
                       "N days past the later of now and the current end. Prints the record.\n"
                       "\n"
                       "Request: POST /v1/admin/devices/ID/service\n",
        .opts = service_opts,
        .min_args = 1,
        .max_args = 1,
        .run = device_service,
    },
    {
        .sub = "attributes",
        .usage = "ID [--set NAME=VALUE]... [--unset NAME]...",
        .summary = "Set or remove a device's attributes (mac, sn, uuid, ip, port, joined, ...)",
        .description = "mac and sn are unique among the devices of a type. port is a number,\n"
                       "joined true or false, every other value a string; the server writes the\n"
                       "known ones in one normal form (docs/gateways.md). Prints the record.\n"
                       "\n"
                       "Request: POST /v1/admin/devices/ID/attributes\n",
        .opts = attr_opts,
        .min_args = 1,
        .max_args = 1,
        .run = device_attributes,
    },
    {
        .sub = "suspend",
        .usage = "ID",
        .summary = "Suspend an active device (its keys are kept)",
        .description = "Request: POST /v1/admin/devices/ID/suspend\n",
        .min_args = 1,
        .max_args = 1,
        .run = device_suspend,
    },
    {
        .sub = "resume",
        .usage = "ID",
        .summary = "Resume a suspended device",
        .description = "Request: POST /v1/admin/devices/ID/resume\n",
        .min_args = 1,
        .max_args = 1,
        .run = device_resume,
    },
    {
        .sub = "revoke",
        .usage = "ID",
        .summary = "Revoke a device and destroy its keys at once (no confirmation)",
        .description = "This cannot be undone: the device's key bytes are destroyed on the server.\n"
                       "\n"
                       "Request: POST /v1/admin/devices/ID/revoke\n",
        .min_args = 1,
        .max_args = 1,
        .run = device_revoke,
    },
    {
        .sub = "rotate",
        .usage = "ID [--grace-days N] [--key-bits B] [--validity DAYS] [--purpose PURPOSE]",
        .summary = "Add new keys; older active keys of their purposes retire after the grace period",
        .description = "One new key for each purpose the device's active keys have (a gateway:\n"
                       "access and local), or only for --purpose. Prints the updated device\n"
                       "record and its keys.\n"
                       "\n"
                       "Request: POST /v1/admin/devices/ID/rotate\n",
        .opts = rotate_opts,
        .min_args = 1,
        .max_args = 1,
        .run = device_rotate,
    },
    {
        .sub = "fill",
        .usage = "ID (--recipient-pub PEMFILE [--with-certificate [--cert-validity DAYS]] | --plaintext) --out FILE [--index N]... [--force] [--family-only]",
        .summary = "Export device keys for a provisioning station into FILE",
        .description = "With --recipient-pub the keys are sealed to the station's X25519 or P-256\n"
                       "public key (open them with 'kmsctl fill open'); FILE gets the package bytes.\n"
                       "With --plaintext (admin only) FILE gets the keys IN CLEAR as JSON.\n"
                       "FILE is created with mode 0600 and never overwritten. Keys already exported\n"
                       "need --force. With --json the server's answer is printed without the keys\n"
                       "and with \"out\": FILE.\n"
                       "--with-certificate: the package also carries the device's TLS identity, a\n"
                       "key pair made by the platform and its certificate from the platform CA\n"
                       "(member \"tls\" of the fill document; docs/pki.md).\n"
                       "\n"
                       "Request: POST /v1/admin/devices/ID/fill\n",
        .opts = device_fill_opts,
        .min_args = 1,
        .max_args = 1,
        .run = device_fill_run,
    },
    {
        .sub = "import",
        .usage = "FILE [--batch N] [--format csv|jsonl]",
        .summary = "Register devices in bulk from a CSV or JSON-lines file",
        .description = "CSV: a header line naming the columns device_id,type,group,parent,keys,\n"
                       "key_bits,validity_days,service_days (days, or 'none': no end) and\n"
                       "attr.NAME (one attribute each: port a number, joined true|false, others\n"
                       "text) in any order, device_id and type required; then one device per\n"
                       "line; empty cells are left to the server's defaults. RFC 4180\n"
                       "quoting; a field may not span lines. JSON lines: one object per line with\n"
                       "the same field names; blank lines are skipped. The format follows the\n"
                       "extension (.csv, .jsonl, .json), else the first character ('{': JSON lines).\n"
                       "Rows that do not parse are reported with code parse_error and not sent.\n"
                       "Output: 'created N, failed M' and one line per failed row; with --json\n"
                       "{\"created\",\"failed\",\"results\"}. Exit status 6 if any row failed.\n"
                       "On a terminal, stderr shows the progress (rows, rows/s, share of the\n"
                       "file read, ETA) until the summary; never with --json or into a pipe.\n"
                       "\n"
                       "Request: POST /v1/admin/devices/import, N rows at a time\n",
        .opts = device_import_opts,
        .min_args = 1,
        .max_args = 1,
        .run = device_import_run,
    },
    {
        .sub = "cert",
        .usage = "issue ID --csr FILE [--validity DAYS] [--out FILE] | issue ID --generate --recipient-pub PEMFILE --out FILE [--validity DAYS] | bind ID --cert FILE | list ID | show ID SERIAL | revoke ID SERIAL [--reason R]",
        .summary = "A device's certificates: issue from a CSR, bind one issued elsewhere, list, show, revoke",
        .description = "issue: the platform CA signs the CSR in the token (docs/pki.md). Without\n"
                       "--out the certificate record and its PEM are printed; with --out FILE the\n"
                       "PEM goes to a new FILE (mode 0600, never overwritten). With --generate\n"
                       "the platform makes the key pair and seals it, with the certificate and\n"
                       "the CA chain, to the station's key in a fill package written to --out\n"
                       "(document qkms-tls-identity/1; open it with 'kmsctl fill open').\n"
                       "bind: a certificate issued elsewhere becomes the device's (one key, one\n"
                       "device); its issuer must be in the TLS trust configuration to be accepted.\n"
                       "list: columns SERIAL KIND STATE CA NOT-AFTER SHA256.\n"
                       "revoke: the certificate goes into the next CRL, made at once\n"
                       "(GET /v1/ca/crl; 'kmsctl ca crl').\n"
                       DASH_NOTE
                       "\n"
                       "Requests: POST and GET /v1/admin/devices/ID/certificates,\n"
                       "GET .../certificates/SERIAL, POST .../certificates/SERIAL/revoke\n",
        .opts = device_cert_opts,
        .min_args = 2,
        .max_args = 3,
        .run = device_cert_run,
    },
    {0},
};

const struct command cmd_device = {
    .name = "device",
    .summary = "Manage devices and their keys",
    .actions = device_actions,
};
