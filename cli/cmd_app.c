/* cmd_app — `kmsctl app create|list|token|revoke`: /v1/admin/apps (owners'
 * accounts, docs/gateways.md "Owners, binding, reset"). */
#include "command.h"

#include <stdio.h>
#include <string.h>

#include <jansson.h>

#include "client.h"
#include "device_common.h"
#include "exitcodes.h"
#include "output.h"
#include "resource.h"

static int print_apps(const json_t *resp)
{
    static const char *const headers[] = {"APP", "ENROLL-TYPES", "ENROLL-GROUP", "DEVICES",
                                          "REVOKED-AT"};
    static const char *const fields[] = {"name", "enroll_types", "enroll_group", "devices",
                                         "revoked_at"};
    const json_t *apps = resource_items(resp, "apps");
    if (!apps)
        return EXIT_SERVER;
    return out_table(apps, 5, headers, fields);
}

static int app_list(const struct kmsctl_ctx *ctx, const struct invocation *inv)
{
    (void)inv;
    return client_show(ctx, "/v1/admin/apps", print_apps);
}

/* The answer with the token: shown once, as "key: value" lines (or JSON). */
static int print_with_token(const json_t *resp)
{
    int rc = out_kv(resp);
    if (rc == EXIT_OK)
        fprintf(stderr, "The token is shown only now: keep it where the app keeps its secrets.\n");
    return rc;
}

static int app_create(const struct kmsctl_ctx *ctx, const struct invocation *inv)
{
    const char *types = opt_get(&inv->local, "enroll-types");
    const char *group = opt_get(&inv->local, "enroll-group");
    json_t *req = json_pack("{s:s}", "name", inv->pos[0]), *resp = NULL;
    char buf[600];
    int rc = EXIT_USAGE;

    if (!req) {
        out_error("the app name must be UTF-8");
        goto cleanup;
    }
    if ((types != NULL) != (group != NULL)) {
        out_error("an enroller scope is --enroll-types and --enroll-group together");
        goto cleanup;
    }
    if (types) {
        json_t *arr = json_array();
        if (strlen(types) >= sizeof(buf)) {
            json_decref(arr);
            out_error("--enroll-types is too long");
            goto cleanup;
        }
        strcpy(buf, types);
        for (char *save = NULL, *w = strtok_r(buf, ",", &save); w; w = strtok_r(NULL, ",", &save))
            json_array_append_new(arr, json_string(w));
        json_object_set_new(req, "enroll_types", arr);
        json_object_set_new(req, "enroll_group", json_string(group));
    }
    rc = client_call(ctx, "POST", "/v1/admin/apps", req, &resp);
    rc = out_result(ctx->json, rc, resp, print_with_token);
cleanup:
    json_decref(req);
    return rc;
}

static int app_token(const struct kmsctl_ctx *ctx, const struct invocation *inv)
{
    char path[160];
    json_t *resp = NULL;
    int rc;
    snprintf(path, sizeof(path), "/v1/admin/apps/%s/tokens", inv->pos[0]);
    if (strpbrk(inv->pos[0], "/?#%")) {
        out_error("not an app name: '%s'", inv->pos[0]);
        return EXIT_USAGE;
    }
    rc = client_call(ctx, "POST", path, NULL, &resp);
    return out_result(ctx->json, rc, resp, print_with_token);
}

static int app_revoke(const struct kmsctl_ctx *ctx, const struct invocation *inv)
{
    char path[160];
    json_t *resp = NULL;
    int rc;
    if (strpbrk(inv->pos[0], "/?#%")) {
        out_error("not an app name: '%s'", inv->pos[0]);
        return EXIT_USAGE;
    }
    snprintf(path, sizeof(path), "/v1/admin/apps/%s", inv->pos[0]);
    rc = client_call(ctx, "DELETE", path, NULL, &resp);
    return out_result(ctx->json, rc, resp, out_kv);
}

static const struct opt_spec create_opts[] = {
    {"enroll-types", 0, "T,T,...", "device types it may register for its owners (with --enroll-group)"},
    {"enroll-group", 0, "GROUP", "the group its devices are registered into"},
    {0},
};

static const struct action app_actions[] = {
    {
        .sub = "create",
        .usage = "NAME [--enroll-types T,T,... --enroll-group GROUP]",
        .summary = "Create an app (an owner's account) and its first token (admin)",
        .description = "An app binds gateways its owner can prove local access to, and sees\n"
                       "only its devices (docs/gateways.md). With an enroller scope it also\n"
                       "registers devices of those types into that group; their keys reach\n"
                       "it only sealed to each device's own public key. The token is printed\n"
                       "once.\n"
                       "\n"
                       "Request: POST /v1/admin/apps\n",
        .opts = create_opts,
        .min_args = 1,
        .max_args = 1,
        .run = app_create,
    },
    {
        .sub = "list",
        .usage = "",
        .summary = "List the apps, their scopes and how many devices each owns",
        .description = "Request: GET /v1/admin/apps\n",
        .run = app_list,
    },
    {
        .sub = "token",
        .usage = "NAME",
        .summary = "Make another token for an app (admin); printed once",
        .description = "Revoke the old one with 'kmsctl token revoke app.NAME.XXXXXX'.\n"
                       "\n"
                       "Request: POST /v1/admin/apps/NAME/tokens\n",
        .min_args = 1,
        .max_args = 1,
        .run = app_token,
    },
    {
        .sub = "revoke",
        .usage = "NAME",
        .summary = "Revoke an app, its tokens and its bindings (admin)",
        .description = "Its devices stay registered, without an owner.\n"
                       "\n"
                       "Request: DELETE /v1/admin/apps/NAME\n",
        .min_args = 1,
        .max_args = 1,
        .run = app_revoke,
    },
    {0},
};

const struct command cmd_app = {
    .name = "app",
    .summary = "Manage apps (owners' accounts)",
    .actions = app_actions,
};
