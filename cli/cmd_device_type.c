/* cmd_device_type — `kmsctl device-type list|add`: /v1/admin/device-types. */
#include "command.h"

#include <stdio.h>
#include <jansson.h>

#include "client.h"
#include "device_common.h"
#include "exitcodes.h"
#include "output.h"
#include "resource.h"

/* One name a line; checked here, so --json prints any answer as it is. */
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

static int type_list(const struct kmsctl_ctx *ctx, const struct invocation *inv)
{
    (void)inv;
    return client_show(ctx, "/v1/admin/device-types", print_types);
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
