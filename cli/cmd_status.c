/* cmd_status — `kmsctl status`: GET /v1/admin/status. */
#include "command.h"

#include <jansson.h>

#include "client.h"
#include "output.h"

static int status_run(const struct kmsctl_ctx *ctx, const struct invocation *inv)
{
    (void)inv;
    /* Show whatever the server reports, so new fields need no CLI change. */
    return client_show(ctx, "/v1/admin/status", out_kv);
}

static const struct action status_actions[] = {
    {
        .sub = NULL,
        .usage = "",
        .summary = "Show server status: version, uptime, master key, token, database",
        .description = "Prints every field the server reports as aligned 'key: value' lines;\n"
                       "nested fields are shown as 'master_key.label'.\n"
                       "\n"
                       "Request: GET /v1/admin/status\n",
        .run = status_run,
    },
    {0},
};

const struct command cmd_status = {
    .name = "status",
    .summary = "Show server status",
    .actions = status_actions,
};
