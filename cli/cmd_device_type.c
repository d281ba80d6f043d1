/* cmd_device_type — `kmsctl device-type list|add`: /v1/admin/device-types. */
#include "command.h"

#include <stdio.h>
#include <jansson.h>

#include "client.h"
#include "device_common.h"
#include "exitcodes.h"
#include "output.h"

static int type_list(const struct kmsctl_ctx *ctx, const struct invocation *inv)
{
    (void)inv;
    json_t *resp = NULL;
    int rc = client_call(ctx, "GET", "/v1/admin/device-types", NULL, &resp);
    if (rc)
        goto cleanup;
    if (ctx->json) {
        rc = out_json(resp);
        goto cleanup;
    }
    const json_t *types = json_object_get(resp, "types");
    if (!json_is_array(types)) {
        out_error("server response has no \"types\" list");
        rc = EXIT_SERVER;
        goto cleanup;
    }
    size_t i;
    const json_t *name;
    json_array_foreach(types, i, name) {
        const char *s = json_string_value(name);
        out_text(stdout, s ? s : "-");
        fputc('\n', stdout);
    }

cleanup:
    json_decref(resp);
    return rc;
}

static int type_add(const struct kmsctl_ctx *ctx, const struct invocation *inv)
{
    const char *name = inv->pos[0];
    json_t *req = NULL, *resp = NULL;
    int rc = device_check_type("type name", name);
    if (rc)
        goto cleanup;
    if (!(req = json_pack("{s:s}", "name", name))) {
        out_error("out of memory");
        rc = EXIT_INTERNAL;
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

static const struct action type_actions[] = {
    {
        .sub = "list",
        .usage = "",
        .summary = "List the device types devices may be registered with",
        .description = "One type name per line.\n"
                       "\n"
                       "Request: GET /v1/admin/device-types\n",
        .run = type_list,
    },
    {
        .sub = "add",
        .usage = "NAME",
        .summary = "Add a device type (admin)",
        .description = "NAME: a lowercase letter, then up to 31 of a-z 0-9 _ -.\n"
                       "With --json the server's answer is printed, or {\"name\": NAME} if it\n"
                       "sent none.\n"
                       "\n"
                       "Request: POST /v1/admin/device-types\n",
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
