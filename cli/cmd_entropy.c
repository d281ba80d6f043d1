/* cmd_entropy — `kmsctl entropy status|enable`: the entropy sources' health. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "client.h"
#include "command.h"
#include "exitcodes.h"
#include "output.h"
#include "resource.h"

/* One line per source: what an operator on call scans first. */
static int print_status(const json_t *st)
{
    static const char *const cols[] = {"SOURCE", "ROLE", "STATE", "BYTES", "RCT-FAIL", "APT-FAIL",
                                       "ERRORS", "LAST-ERROR"};
    static const char *const keys[] = {"name", "role", "state", "bytes", "health_failures_rct",
                                       "health_failures_apt", "errors", "last_error"};
    const json_t *pool = json_object_get(st, "pool"), *ht = json_object_get(st, "health_tests");

    printf("policy: %s   mode: %s   pool: %lld of %lld..%lld bytes   fallback served: %lld\n",
           json_string_value(json_object_get(st, "policy")),
           json_string_value(json_object_get(st, "mode")),
           (long long)json_integer_value(json_object_get(pool, "bytes")),
           (long long)json_integer_value(json_object_get(pool, "low")),
           (long long)json_integer_value(json_object_get(pool, "high")),
           (long long)json_integer_value(json_object_get(st, "fallback_served")));
    printf("health tests: H=%g bits/byte, alpha=2^-%lld, repetition cutoff %lld, "
           "adaptive proportion cutoff %lld/512\n",
           json_real_value(json_object_get(ht, "min_entropy_per_byte")),
           (long long)json_integer_value(json_object_get(ht, "alpha_log2")),
           (long long)json_integer_value(json_object_get(ht, "rct_cutoff")),
           (long long)json_integer_value(json_object_get(ht, "apt_cutoff")));
    return out_table(json_object_get(st, "sources"), 8, cols, keys);
}

static int entropy_status_run(const struct kmsctl_ctx *ctx, const struct invocation *inv)
{
    (void)inv;
    return client_show(ctx, "/v1/admin/entropy", print_status);
}

/* Up to 15 of a-z 0-9: refuses anything that could leave the path segment. */
static int check_source(const char *what, const char *name)
{
    if (strlen(name) <= 15 && strspn(name, "abcdefghijklmnopqrstuvwxyz0123456789") == strlen(name))
        return EXIT_OK;
    out_error("not an %s: %s", what, out_safe(name));
    return EXIT_USAGE;
}

static const struct resource source_resource = {
    .base = "/v1/admin/entropy/sources",
    .what = "entropy source name",
    .check = check_source,
};

static int entropy_enable_run(const struct kmsctl_ctx *ctx, const struct invocation *inv)
{
    json_t *resp, *body = json_object();
    int rc = resource_call(ctx, &source_resource, "POST", inv->pos[0], "enable", body, &resp);
    json_decref(body);
    return out_result(ctx->json, rc, resp, print_status);
}

static const struct action entropy_actions[] = {
    {
        .sub = "status",
        .usage = "",
        .summary = "Show entropy sources: role, state, bytes, health-test failures",
        .description = "Request: GET /v1/admin/entropy\n",
        .run = entropy_status_run,
    },
    {
        .sub = "enable",
        .usage = "SOURCE",
        .summary = "Re-enable a source disabled after repeated failures",
        .description = "Request: POST /v1/admin/entropy/sources/SOURCE/enable (admin)\n",
        .min_args = 1,
        .max_args = 1,
        .run = entropy_enable_run,
    },
    {0},
};

const struct command cmd_entropy = {
    .name = "entropy",
    .summary = "Entropy sources (quantum RNG feed) and their health",
    .actions = entropy_actions,
};
