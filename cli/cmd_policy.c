/*
 * cmd_policy — `kmsctl policy list|add|remove`: the pairing policies that
 * decide which devices may share session keys, /v1/admin/policies
 * (docs/protocol.md "Sessions and pairing").
 *
 * The checks mirror the server's (kmsd/admin_policies.c and the
 * pairing_policies table) so that a typo is a usage error and nothing is
 * sent; the server checks again.
 */
#include "command.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <jansson.h>

#include "client.h"
#include "device_common.h"
#include "exitcodes.h"
#include "output.h"
#include "resource.h"

#define NAME_MAX_LEN 64
#define IDLE_MAX 86400L     /* one day */
#define LIFETIME_MAX 604800L /* one week */
#define EPOCHS_MAX 1000000L
#define GRACE_MAX 86400L
#define SAME_GROUP "(same)"  /* GROUPS cell of a same-group policy; no group has '(' */

/* [A-Za-z0-9][A-Za-z0-9._-]{0,63}, the server's rule for policy names. */
static bool name_ok(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > NAME_MAX_LEN)
        return false;
    for (const char *p = s; *p; p++) {
        bool alnum = (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9');
        if (!alnum && (p == s || !strchr("._-", *p)))
            return false;
    }
    return true;
}

static int check_name(const char *what, const char *s)
{
    if (name_ok(s))
        return EXIT_OK;
    out_error("bad %s '%s': use 1-%d of A-Z a-z 0-9 . _ -, starting with a letter or digit",
              what, out_safe(s), NAME_MAX_LEN);
    return EXIT_USAGE;
}

static const struct resource policy_resource = {
    .base = "/v1/admin/policies",
    .what = "policy name",
    .check = check_name,
};

/*
 * Splits "A:B" at its only ':' into heap copies *a and *b, each checked by
 * ok. EXIT_USAGE (after saying so) unless there is exactly one ':' and both
 * halves pass.
 */
static int split_pair(const char *what, const char *value, bool (*ok)(const char *),
                      const char *rule, char **a, char **b)
{
    const char *colon = strchr(value, ':');
    *a = *b = NULL;
    if (!colon || strchr(colon + 1, ':')) {
        out_error("%s takes two values joined by one ':' (e.g. %s), not '%s'", what,
                  strcmp(what, "--types") == 0 ? "vehicle:encryptor" : "depot-1:fleet-2",
                  out_safe(value));
        return EXIT_USAGE;
    }
    if (!(*a = strndup(value, (size_t)(colon - value))) || !(*b = strdup(colon + 1))) {
        out_error("out of memory");
        goto fail;
    }
    if (!ok(*a) || !ok(*b)) {
        out_error("bad %s '%s': each side must be %s", what, out_safe(value), rule);
        free(*a);
        free(*b);
        *a = *b = NULL;
        return EXIT_USAGE;
    }
    return EXIT_OK;

fail:
    free(*a);
    free(*b);
    *a = *b = NULL;
    return EXIT_INTERNAL;
}

/* '@platform': the platform itself as the peer (protocol v2 channels, a
 * gateway's login: docs/gateways.md). */
static bool type_or_any_ok(const char *s)
{
    return strcmp(s, "*") == 0 || strcmp(s, "@platform") == 0 || device_type_ok(s);
}

/* ---- list ------------------------------------------------------------------ */

/* --key-sources a,c: the policy's "key_sources" (the server checks the
 * letters; here only the form). */
static int key_sources_arg(const char *v, json_t *req)
{
    json_t *arr = json_array();
    const char *p = v;
    while (arr && *p) {
        size_t n = strcspn(p, ",");
        if (n != 1 || json_array_size(arr) == 3) {
            json_decref(arr);
            out_error("--key-sources: some of a, b, c separated by commas (e.g. a,c)");
            return EXIT_USAGE;
        }
        json_array_append_new(arr, json_stringn(p, 1));
        p += n + (p[n] == ',');
    }
    if (!arr || json_array_size(arr) == 0) {
        json_decref(arr);
        out_error("--key-sources: some of a, b, c separated by commas (e.g. a,c)");
        return EXIT_USAGE;
    }
    return device_put(req, "key_sources", arr);
}

/* "A:B" from two fields, or `none` when the first is null or missing. */
static char *pair_cell(const json_t *o, const char *ka, const char *kb, const char *none)
{
    const json_t *a = json_object_get(o, ka), *b = json_object_get(o, kb);
    char *sa = NULL, *sb = NULL, *cell = NULL;

    if (!a || json_is_null(a))
        return strdup(none);
    if ((sa = out_value_str(a)) && (sb = out_value_str(b)) && asprintf(&cell, "%s:%s", sa, sb) < 0)
        cell = NULL;
    free(sa);
    free(sb);
    return cell;
}

static void policy_row(const json_t *p, char **cells)
{
    static const char *const fields[] = {"key_bits", "idle_timeout_s", "max_lifetime_s",
                                         "delivery"};
    const char *scope = json_string_value(json_object_get(p, "scope"));
    cells[0] = out_value_str(json_object_get(p, "name"));
    cells[1] = pair_cell(p, "type_a", "type_b", "-");
    cells[2] = scope && !strcmp(scope, "parent") ? strdup("(parent)")
                                                 : pair_cell(p, "group_a", "group_b", SAME_GROUP);
    for (size_t c = 0; c < 4; c++)
        cells[3 + c] = out_value_str(json_object_get(p, fields[c]));
    /* ["a","b","c"] as a,b,c */
    {
        const json_t *ks = json_object_get(p, "key_sources"), *x;
        char buf[16] = "";
        size_t i;
        json_array_foreach(ks, i, x) if (json_is_string(x) && strlen(buf) + 3 < sizeof(buf)) {
            if (i)
                strcat(buf, ",");
            strncat(buf, json_string_value(x), 1);
        }
        cells[7] = strdup(buf[0] ? buf : "-");
    }
}

/* The policies table, and a warning when there are none. */
static int print_policies(const json_t *resp)
{
    static const char *const headers[] = {"NAME",         "TYPES",        "GROUPS",
                                          "KEY-BITS",     "IDLE-TIMEOUT", "MAX-LIFETIME",
                                          "DELIVERY",     "KEY-SOURCES"};
    const json_t *policies = json_object_get(resp, "policies");
    int rc = out_table_by(policies, 8, headers, policy_row);
    if (!rc && json_array_size(policies) == 0)
        out_note("No pairing policies: every new session is refused (policy_denied).");
    return rc;
}

static int policy_list(const struct kmsctl_ctx *ctx, const struct invocation *inv)
{
    (void)inv;
    json_t *resp;
    int rc = resource_list(ctx, "/v1/admin/policies", NULL, "policies", &resp);
    return out_result(ctx->json, rc, resp, print_policies);
}

/* ---- add ------------------------------------------------------------------- */

/* The request body from NAME and the options, checked. */
static int add_body(const char *name, const struct opt_values *o, json_t **req)
{
    const char *types = opt_get(o, "types"), *groups = opt_get(o, "groups");
    const char *idle = opt_get(o, "idle-timeout"), *life = opt_get(o, "max-lifetime");
    const char *epochs = opt_get(o, "max-epochs"), *grace = opt_get(o, "epoch-grace");
    const char *rk_age = opt_get(o, "rekey-after"), *rk_n = opt_get(o, "rekey-deliveries");
    const char *win = opt_get(o, "stream-window");
    char *ta = NULL, *tb = NULL, *ga = NULL, *gb = NULL;
    long bits = 0, idle_s = 0, life_s = 0, epochs_n = 0, grace_s = 0, rk_age_s = 0, rk_count = 0,
         win_n = 0;
    int rc;

    *req = NULL;
    if ((rc = check_name(policy_resource.what, name)))
        goto cleanup;
    rc = EXIT_USAGE;
    if (!types) {
        out_error("--types is required: two device types joined by ':', either may be '*' "
                  "(e.g. vehicle:encryptor)");
        goto cleanup;
    }
    if ((rc = split_pair("--types", types, type_or_any_ok, "a device type, '*' or '@platform'", &ta, &tb)))
        goto cleanup;
    if (groups && (rc = split_pair("--groups", groups, device_group_ok,
                                   "a group (1-64 of A-Z a-z 0-9 . _ -, starting with a letter "
                                   "or digit)",
                                   &ga, &gb)))
        goto cleanup;
    if ((rc = device_check_key_bits("--key-bits", opt_get(o, "key-bits"), &bits)))
        goto cleanup;
    rc = EXIT_USAGE;
    if (idle && !arg_to_long(idle, 1, IDLE_MAX, &idle_s)) {
        out_error("--idle-timeout must be a whole number of seconds from 1 to %ld", IDLE_MAX);
        goto cleanup;
    }
    if (life && !arg_to_long(life, 1, LIFETIME_MAX, &life_s)) {
        out_error("--max-lifetime must be a whole number of seconds from 1 to %ld", LIFETIME_MAX);
        goto cleanup;
    }
    if (epochs && !arg_to_long(epochs, 1, EPOCHS_MAX, &epochs_n)) {
        out_error("--max-epochs must be a whole number from 1 to %ld", EPOCHS_MAX);
        goto cleanup;
    }
    if (grace && !arg_to_long(grace, 0, GRACE_MAX, &grace_s)) {
        out_error("--epoch-grace must be a whole number of seconds from 0 to %ld", GRACE_MAX);
        goto cleanup;
    }
    if (rk_age && !arg_to_long(rk_age, 1, LIFETIME_MAX, &rk_age_s)) {
        out_error("--rekey-after must be a whole number of seconds from 1 to %ld", LIFETIME_MAX);
        goto cleanup;
    }
    if (rk_n && !arg_to_long(rk_n, 2, 1000000000L, &rk_count)) {
        out_error("--rekey-deliveries must be a whole number from 2 to 1000000000");
        goto cleanup;
    }
    if (win && !arg_to_long(win, 1, 1024, &win_n)) {
        out_error("--stream-window must be a whole number from 1 to 1024");
        goto cleanup;
    }
    if ((rk_age || rk_n) && epochs_n < 2) {
        out_error("--rekey-after and --rekey-deliveries need --max-epochs above 1");
        goto cleanup;
    }

    rc = EXIT_INTERNAL;
    if (!(*req = json_pack("{s:s, s:s, s:s}", "name", name, "type_a", ta, "type_b", tb))) {
        out_error("out of memory");
        goto cleanup;
    }
    if ((ga && ((rc = device_put(*req, "group_a", json_string(ga))) ||
                (rc = device_put(*req, "group_b", json_string(gb))))) ||
        (bits && (rc = device_put(*req, "key_bits", json_integer(bits)))) ||
        (idle && (rc = device_put(*req, "idle_timeout_s", json_integer(idle_s)))) ||
        (life && (rc = device_put(*req, "max_lifetime_s", json_integer(life_s)))) ||
        (epochs && (rc = device_put(*req, "max_epochs", json_integer(epochs_n)))) ||
        (grace && (rc = device_put(*req, "epoch_grace_s", json_integer(grace_s)))) ||
        (opt_get(o, "directions") && (rc = device_put(*req, "directions", json_true()))) ||
        (rk_age && (rc = device_put(*req, "rekey_after_s", json_integer(rk_age_s)))) ||
        (rk_n && (rc = device_put(*req, "rekey_after_deliveries", json_integer(rk_count)))) ||
        (win && (rc = device_put(*req, "stream_window", json_integer(win_n)))) ||
        (opt_get(o, "delivered") && (rc = device_put(*req, "delivery", json_string("delivered")))))
        goto cleanup;
    if (opt_get(o, "key-sources") && (rc = key_sources_arg(opt_get(o, "key-sources"), *req)))
        goto cleanup;
    if (opt_get(o, "scope")) {
        const char *scope = opt_get(o, "scope");
        if (strcmp(scope, "parent") && strcmp(scope, "groups")) {
            out_error("--scope must be parent or groups");
            rc = EXIT_USAGE;
            goto cleanup;
        }
        if ((rc = device_put(*req, "scope", json_string(scope))))
            goto cleanup;
    }
    rc = EXIT_OK;

cleanup:
    if (rc) {
        json_decref(*req);
        *req = NULL;
    }
    free(ta);
    free(tb);
    free(ga);
    free(gb);
    return rc;
}

static int policy_add(const struct kmsctl_ctx *ctx, const struct invocation *inv)
{
    const char *name = inv->pos[0];
    json_t *req = NULL, *resp = NULL;
    const json_t *policies;
    int rc = add_body(name, &inv->local, &req);
    if (rc)
        goto cleanup;
    rc = client_call(ctx, "POST", "/v1/admin/policies", req, &resp);
    if (rc)
        goto cleanup;
    if (!(policies = resource_items(resp, "policies"))) {
        rc = EXIT_SERVER;
        goto cleanup;
    }
    if (ctx->json) {
        rc = out_json(resp);
        goto cleanup;
    }
    printf("Added pairing policy '%s'.\n", name); /* checked: [A-Za-z0-9._-] */
    size_t i;
    const json_t *p;
    json_array_foreach(policies, i, p) {
        const char *n = json_string_value(json_object_get(p, "name"));
        if (n && strcmp(n, name) == 0) {
            rc = out_kv(p);
            break;
        }
    }

cleanup:
    json_decref(req);
    json_decref(resp);
    return rc;
}

/* ---- remove ---------------------------------------------------------------- */

static int policy_remove(const struct kmsctl_ctx *ctx, const struct invocation *inv)
{
    const char *name = inv->pos[0];
    json_t *resp;
    int rc = resource_call(ctx, &policy_resource, "DELETE", name, NULL, NULL, &resp);
    if (!rc && ctx->json)
        rc = out_json(resp);
    else if (!rc)
        printf("Removed pairing policy '%s'.\n", name); /* checked: [A-Za-z0-9._-] */
    json_decref(resp);
    return rc;
}

/* ---- the table ------------------------------------------------------------- */

static const struct opt_spec add_opts[] = {
    {"types", 0, "A:B", "device types that may pair, '*' for any, '@platform' for the platform itself (required)"},
    {"groups", 0, "GA:GB", "groups of the A and the B device (default: both in one group)"},
    {"key-bits", 0, "BITS", "session key length, 128 or 256 (default 128)"},
    {"idle-timeout", 0, "SECONDS", "end sessions idle this long, 1..86400 (default 300)"},
    {"max-lifetime", 0, "SECONDS", "end sessions this long after start, 1..604800 (default 3600)"},
    {"delivered", 0, NULL, "destroy each session's key once both parties have received it"},
    {"key-sources", 0, "LIST", "protocol v2 key sources allowed, some of a,b,c (default all; v1 counts as c)"},
    {"scope", 0, "SCOPE", "parent: a sub-device with its own gateway only (no --groups); groups (default)"},
    {"max-epochs", 0, "N", "keys a session may move through (epochs), 1..1000000 (default 1)"},
    {"directions", 0, NULL, "allow a key per direction (a2b, b2a) in each epoch"},
    {"epoch-grace", 0, "SECONDS", "an older epoch's keys last at most this long, 0..86400 (default 60)"},
    {"rekey-after", 0, "SECONDS", "move a session to its next epoch once the current one is this old, 1..604800 (with --max-epochs above 1)"},
    {"rekey-deliveries", 0, "N", "... or once its keys were delivered N times, 2..1000000000"},
    {"stream-window", 0, "N", "key streams: keys a party may ask for ahead of the lowest not consumed, 1..1024 (default 16)"},
    {0},
};

static const struct action policy_actions[] = {
    {
        .sub = "list",
        .usage = "",
        .summary = "List pairing policies",
        .description = "Columns: NAME TYPES GROUPS KEY-BITS IDLE-TIMEOUT MAX-LIFETIME DELIVERY;\n"
                       "timeouts in seconds. GROUPS is " SAME_GROUP " for a policy that pairs\n"
                       "devices of the same group only, (parent) for a family policy.\n"
                       "\n"
                       "Request: GET /v1/admin/policies\n",
        .run = policy_list,
    },
    {
        .sub = "add",
        .usage = "NAME --types A:B [--groups GA:GB] [--key-bits B] [--idle-timeout SECONDS] "
                 "[--max-lifetime SECONDS] [--delivered] [--key-sources a,b,c] [--scope parent] "
                 "[--max-epochs N] [--directions] [--epoch-grace SECONDS] [--rekey-after SECONDS] "
                 "[--rekey-deliveries N] [--stream-window N]",
        .summary = "Add a pairing policy: which devices may share session keys",
        .description =
            "Two devices may start a session only if a policy matches them, in either\n"
            "order: their types (A:B; '*' matches any type, quote it for the shell: '*:*')\n"
            "and groups. Without --groups both devices must be in the same group; with\n"
            "--groups GA:GB the device of type A must be in group GA and the one of type B\n"
            "in GB. With --scope parent it pairs a sub-device with its own gateway only,\n"
            "whatever their groups (docs/gateways.md). A family policy wins, then the most\n"
            "specific matching policy. --max-epochs, --directions and --epoch-grace let a\n"
            "session hold several keys (docs/sessions.md, \"Epochs and direction keys\").\n"
            "NAME: 1-64 of A-Z a-z 0-9 . _ -, starting with a letter or digit.\n"
            "Prints the new policy; with --json the server's answer (every policy).\n"
            "\n"
            "Request: POST /v1/admin/policies\n",
        .opts = add_opts,
        .min_args = 1,
        .max_args = 1,
        .run = policy_add,
    },
    {
        .sub = "remove",
        .usage = "NAME",
        .summary = "Remove a pairing policy",
        .description = "New sessions it allowed are refused from then on (policy_denied)\n"
                       "unless another policy matches.\n"
                       "\n"
                       "Request: DELETE /v1/admin/policies/NAME\n",
        .min_args = 1,
        .max_args = 1,
        .run = policy_remove,
    },
    {0},
};

const struct command cmd_policy = {
    .name = "policy",
    .summary = "Manage pairing policies for device sessions",
    .actions = policy_actions,
};
