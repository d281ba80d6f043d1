/* cmd_device_type — `kmsctl device-type list|add`: /v1/admin/device-types. */
#include "command.h"

#include <stdio.h>
#include <string.h>

#include <jansson.h>

#include "client.h"
#include "device_common.h"
#include "exitcodes.h"
#include "output.h"
#include "resource.h"

/* One name a line (scripts read it so; the key templates are in --json);
 * checked here, so --json prints any answer as it is. */
static int print_types(const json_t *resp)
{
    const json_t *types = resource_items(resp, "types"), *name;
    size_t i;
    if (!types)
        return EXIT_SERVER;
    json_array_foreach(types, i, name)
        out_textf(stdout, "%s\n", out_string_or(name, "-"));
    return EXIT_OK;
}

/* --key-purposes a,b,...: each access, local or generic, at most 16. */
static int purposes_arg(const char *arg, json_t *out)
{
    char buf[256];
    size_t n = 0;
    if (strlen(arg) >= sizeof(buf)) {
        out_error("--key-purposes is too long");
        return EXIT_USAGE;
    }
    strcpy(buf, arg);
    for (char *save = NULL, *w = strtok_r(buf, ",", &save); w; w = strtok_r(NULL, ",", &save)) {
        if ((strcmp(w, "access") && strcmp(w, "local") && strcmp(w, "generic")) || ++n > 16) {
            out_error("--key-purposes is a comma-separated list of at most 16 of access, local, "
                      "generic");
            return EXIT_USAGE;
        }
        json_array_append_new(out, json_string(w));
    }
    return EXIT_OK;
}

static int type_list(const struct kmsctl_ctx *ctx, const struct invocation *inv)
{
    (void)inv;
    return client_show(ctx, "/v1/admin/device-types", print_types);
}

static int type_add(const struct kmsctl_ctx *ctx, const struct invocation *inv)
{
    const char *name = inv->pos[0];
    json_t *req = NULL, *resp = NULL;
    const char *kp = opt_get(&inv->local, "key-purposes");
    const char *sd = opt_get(&inv->local, "service-days");
    const char *suite = opt_get(&inv->local, "suite");
    long days = 0;
    int rc = device_check_type("type name", name);
    if (rc)
        goto cleanup;
    if (suite && strcmp(suite, "aes") && strcmp(suite, "sm4")) {
        out_error("--suite must be aes or sm4");
        rc = EXIT_USAGE;
        goto cleanup;
    }
    if (sd && !arg_to_long(sd, 1, DEVICE_SERVICE_MAX, &days)) {
        out_error("--service-days must be a whole number of days from 1 to %ld",
                  DEVICE_SERVICE_MAX);
        rc = EXIT_USAGE;
        goto cleanup;
    }
    if (!(req = json_pack("{s:s}", "name", name))) {
        out_error("out of memory");
        rc = EXIT_INTERNAL;
        goto cleanup;
    }
    if (days)
        json_object_set_new(req, "service_days", json_integer(days));
    if (suite)
        json_object_set_new(req, "suite", json_string(suite));
    if (kp) {
        json_t *arr = json_array();
        json_object_set_new(req, "key_purposes", arr);
        if ((rc = purposes_arg(kp, arr)))
            goto cleanup;
    }
    /* The contract documents "201" and no body; accept one either way. */
    rc = client_call_empty_ok(ctx, "POST", "/v1/admin/device-types", req, &resp);
    if (rc)
        goto cleanup;
    if (ctx->json && json_object_size(resp) > 0) {
        rc = out_json(resp);
        goto cleanup;
    }
    if (ctx->json) {
        json_t *doc = json_pack("{s:s}", "name", name);
        rc = doc ? out_json(doc) : EXIT_INTERNAL;
        json_decref(doc);
        goto cleanup;
    }
    printf("Added device type '%s'.\n", name); /* checked: [a-z][a-z0-9_-]* */

cleanup:
    json_decref(req);
    json_decref(resp);
    return rc;
}

static const struct opt_spec add_opts[] = {
    {"key-purposes", 0, "P,P,...", "the type's key template: access, local or generic per index"},
    {"service-days", 0, "DAYS", "its devices' service validity in days, 1..36500 (default: no end)"},
    {"suite", 0, "SUITE", "aes (default) or sm4: its devices' keys and protocol v1 envelope"},
    {0},
};

static const struct action type_actions[] = {
    {
        .sub = "list",
        .usage = "",
        .summary = "List the device types devices may be registered with",
        .description = "One type name per line; with --json also each type's key template\n"
                       "(\"key_purposes\": the purpose of key index 0, 1, ...; docs/gateways.md)\n"
                       "its default service validity (\"service_days\", null: no end) and its\n"
                       "suite (\"suites\": aes or sm4).\n"
                       "\n"
                       "Request: GET /v1/admin/device-types\n",
        .run = type_list,
    },
    {
        .sub = "add",
        .usage = "NAME [--key-purposes P,P,...] [--service-days DAYS] [--suite aes|sm4]",
        .summary = "Add a device type (admin)",
        .description = "NAME: a lowercase letter, then up to 31 of a-z 0-9 _ -.\n"
                       "--key-purposes: the purpose of key index 0, 1, ... of its devices\n"
                       "(access, local, generic); a device of the type has at least that many\n"
                       "keys.\n"
                       "--service-days: a device of the type is served that many days from its\n"
                       "registration unless renewed (kmsctl device service); default: no end.\n"
                       "--suite sm4: its devices' keys are SM4-128 and their protocol v1\n"
                       "requests and answers are SM4-CTR with HMAC-SM3 (docs/protocol.md,\n"
                       "\"Suites\"); default aes.\n"
                       "With --json the server's answer is printed, or {\"name\": NAME} if it\n"
                       "sent none.\n"
                       "\n"
                       "Request: POST /v1/admin/device-types\n",
        .opts = add_opts,
        .min_args = 1,
        .max_args = 1,
        .run = type_add,
    },
    {0},
};

const struct command cmd_device_type = {
    .name = "device-type",
    .summary = "Manage device types",
    .actions = type_actions,
};
