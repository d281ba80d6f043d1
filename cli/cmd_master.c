/* cmd_master — `kmsctl master status|rotate`: master key versions and rotation. */
#include <stdio.h>

#include <jansson.h>

#include "client.h"
#include "command.h"
#include "exitcodes.h"
#include "output.h"

static int print_master(const json_t *st)
{
    static const char *const cols[] = {"VERSION", "LABEL", "STATE", "CREATED", "RETIRED",
                                       "DEVICE-KEYS", "SESSIONS"};
    static const char *const keys[] = {"version", "label", "state", "created_at", "retired_at",
                                       "device_keys", "sessions"};
    struct table *t = table_new(7, cols);
    size_t i;
    json_t *v;
    int rc;
    if (!t)
        return EXIT_INTERNAL;
    printf("active version: %lld   keys still to rewrap: %lld\n",
           (long long)json_integer_value(json_object_get(st, "active")),
           (long long)json_integer_value(json_object_get(st, "pending_rewrap")));
    json_array_foreach(json_object_get(st, "versions"), i, v)
        if (table_add_json(t, v, keys) != 0) {
            table_free(t);
            return EXIT_INTERNAL;
        }
    rc = table_print(t, stdout);
    table_free(t);
    return rc;
}

static int master_status_run(const struct kmsctl_ctx *ctx, const struct invocation *inv)
{
    json_t *resp = NULL;
    int rc;
    (void)inv;
    rc = client_call(ctx, "GET", "/v1/admin/master", NULL, &resp);
    if (!rc)
        rc = ctx->json ? out_json(resp) : print_master(resp);
    json_decref(resp);
    return rc;
}

static int master_rotate_run(const struct kmsctl_ctx *ctx, const struct invocation *inv)
{
    json_t *resp = NULL, *body = json_object();
    int rc;
    (void)inv;
    rc = client_call(ctx, "POST", "/v1/admin/master/rotate", body, &resp);
    if (!rc && !ctx->json)
        fprintf(stderr, "kmsctl: new master key version %lld is active; older keys are being "
                        "rewrapped in the background (see 'kmsctl master status')\n",
                (long long)json_integer_value(json_object_get(resp, "active")));
    if (!rc)
        rc = ctx->json ? out_json(resp) : print_master(resp);
    json_decref(body);
    json_decref(resp);
    return rc;
}

static const struct action master_actions[] = {
    {
        .sub = "status",
        .usage = "",
        .summary = "Show master key versions and rewrap progress",
        .description = "Request: GET /v1/admin/master\n",
        .run = master_status_run,
    },
    {
        .sub = "rotate",
        .usage = "",
        .summary = "Create a new master key version in the token and rewrap everything under it",
        .description = "The new version wraps new keys at once; a background job rewraps device\n"
                       "and session keys in batches, and the old version is destroyed in the token\n"
                       "once nothing references it. Requests keep succeeding throughout.\n"
                       "\n"
                       "Request: POST /v1/admin/master/rotate (admin)\n",
        .run = master_rotate_run,
    },
    {0},
};

const struct command cmd_master = {
    .name = "master",
    .summary = "Master key versions and rotation",
    .actions = master_actions,
};
