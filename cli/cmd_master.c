/* cmd_master — `kmsctl master status|rotate`: master key versions and rotation. */
#include <stdio.h>

#include <jansson.h>

#include "client.h"
#include "command.h"
#include "output.h"

static int print_master(const json_t *st)
{
    static const char *const cols[] = {"VERSION", "LABEL", "STATE", "CREATED", "RETIRED",
                                       "DEVICE-KEYS", "SESSIONS"};
    static const char *const keys[] = {"version", "label", "state", "created_at", "retired_at",
                                       "device_keys", "sessions"};
    printf("active version: %lld   keys still to rewrap: %lld\n",
           (long long)json_integer_value(json_object_get(st, "active")),
           (long long)json_integer_value(json_object_get(st, "pending_rewrap")));
    return out_table(json_object_get(st, "versions"), 7, cols, keys);
}

static int master_status_run(const struct kmsctl_ctx *ctx, const struct invocation *inv)
{
    (void)inv;
    return client_show(ctx, "/v1/admin/master", print_master);
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
    json_decref(body);
    return out_result(ctx->json, rc, resp, print_master);
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
