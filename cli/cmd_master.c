/* cmd_master — `kmsctl master status|rotate|instances`: master key versions,
 * rotation, and the instances a staged version waits for. */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include <jansson.h>

#include "args.h"
#include "client.h"
#include "command.h"
#include "exitcodes.h"
#include "output.h"
#include "progress.h"

static int print_master(const json_t *st)
{
    static const char *const cols[] = {"VERSION", "LABEL", "STATE", "CREATED", "RETIRED",
                                       "DEVICE-KEYS", "SESSIONS"};
    static const char *const keys[] = {"version", "label", "state", "created_at", "retired_at",
                                       "device_keys", "sessions"};
    const json_t *staged = json_object_get(st, "staged");
    printf("active version: %lld   keys still to rewrap: %lld\n",
           (long long)json_integer_value(json_object_get(st, "active")),
           (long long)json_integer_value(json_object_get(st, "pending_rewrap")));
    if (json_is_integer(staged)) {
        char *w = out_value_str(json_object_get(st, "waiting_for"));
        printf("staged version: %lld   waiting for: %s\n", (long long)json_integer_value(staged),
               w ? w : "-");
        free(w);
    }
    return out_table(json_object_get(st, "versions"), 7, cols, keys);
}

static int print_instances(const json_t *r)
{
    static const char *const cols[] = {"NAME", "LIVE", "VERSIONS", "LACKING", "SOFTWARE",
                                       "STARTED", "SEEN"};
    static const char *const keys[] = {"name", "live", "versions", "lacking", "software",
                                       "started_at", "seen_at"};
    return out_table(json_object_get(r, "instances"), 7, cols, keys);
}

static int master_instances_run(const struct kmsctl_ctx *ctx, const struct invocation *inv)
{
    (void)inv;
    return client_show(ctx, "/v1/admin/master/instances", print_instances);
}

static int master_status_run(const struct kmsctl_ctx *ctx, const struct invocation *inv)
{
    (void)inv;
    return client_show(ctx, "/v1/admin/master", print_master);
}

/* --wait: poll the status until no version is staged and nothing is left
 * to rewrap (or the time is up: EXIT_CONNECT, as for a request that timed
 * out), drawing the progress on a terminal. *resp: the last status. */
static int wait_rewrap(const struct kmsctl_ctx *ctx, long wait_s, json_t **resp)
{
    struct progress *pg = progress_start("rewrap", "keys", ctx->json);
    time_t until = time(NULL) + wait_s;
    json_int_t first = -1, left;
    bool staged;
    int rc;

    for (;;) {
        json_decref(*resp);
        *resp = NULL;
        if ((rc = client_call(ctx, "GET", "/v1/admin/master", NULL, resp)))
            break;
        staged = json_is_integer(json_object_get(*resp, "staged"));
        left = json_integer_value(json_object_get(*resp, "pending_rewrap"));
        if (!staged) {
            if (first < 0)
                first = left;
            progress_update(pg, first - left,
                            first > 0 ? (double)(first - left) / (double)first : 1);
            if (left <= 0)
                break;
        }
        if (time(NULL) >= until) {
            progress_end(pg);
            pg = NULL;
            if (staged)
                out_error("the new version is still staged after %ld s, waiting for instances "
                          "that lack it (see 'kmsctl master instances')", wait_s);
            else
                out_error("%lld keys still to rewrap after %ld s (the rewrap goes on; "
                          "see 'kmsctl master status')", (long long)left, wait_s);
            rc = EXIT_CONNECT;
            break;
        }
        nanosleep(&(struct timespec){1, 0}, NULL);
    }
    progress_end(pg);
    return rc;
}

static int master_rotate_run(const struct kmsctl_ctx *ctx, const struct invocation *inv)
{
    const char *wait = opt_get(&inv->local, "wait"), *wt = opt_get(&inv->local, "wait-timeout");
    json_t *resp = NULL, *body = json_pack("{s:b}", "force", opt_get(&inv->local, "force") != NULL);
    long wait_s = 3600;
    int rc;
    if (wt && (!wait || !arg_to_long(wt, 1, 86400 * 7, &wait_s))) {
        json_decref(body);
        out_error("--wait-timeout takes --wait and a number of seconds, 1..604800");
        return EXIT_USAGE;
    }
    rc = client_call(ctx, "POST", "/v1/admin/master/rotate", body, &resp);
    json_decref(body);
    if (!rc && !ctx->json && json_is_integer(json_object_get(resp, "staged"))) {
        char *w = out_value_str(json_object_get(resp, "waiting_for"));
        fprintf(stderr, "kmsctl: new master key version %lld is staged until every instance's "
                "token holds it; waiting for %s (see 'kmsctl master instances')\n",
                (long long)json_integer_value(json_object_get(resp, "staged")), w ? w : "-");
        free(w);
    } else if (!rc && !ctx->json) {
        fprintf(stderr, "kmsctl: new master key version %lld is active; older keys are %s\n",
                (long long)json_integer_value(json_object_get(resp, "active")),
                wait ? "being rewrapped" : "being rewrapped in the background (see 'kmsctl "
                                           "master status')");
    }
    if (!rc && wait)
        rc = wait_rewrap(ctx, wait_s, &resp);
    return out_result(ctx->json, rc, resp, print_master);
}

static const struct opt_spec rotate_opts[] = {
    {"force", 0, NULL, "activate at once, even if live instances' tokens lack the version"},
    {"wait", 0, NULL, "wait until the new version is active and every key is rewrapped under it"},
    {"wait-timeout", 0, "SECONDS", "give up waiting after this long (default 3600)"},
    {0},
};

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
        .usage = "[--force] [--wait [--wait-timeout SECONDS]]",
        .summary = "Create a new master key version in the token and rewrap everything under it",
        .description = "The new version wraps new keys at once; a background job rewraps device\n"
                       "and session keys in batches, and the old version is destroyed in the token\n"
                       "once nothing references it. Requests keep succeeding throughout.\n"
                       "With other kmsd instances on the database, the version is staged instead\n"
                       "and becomes active once every live instance's token holds it (copy the\n"
                       "token to them, docs/ha.md); 'kmsctl master instances' shows who lacks it.\n"
                       "--force activates it at once (or activates the staged one): instances\n"
                       "lacking it turn not ready until their token gets it. A second rotation\n"
                       "while one is staged is refused (rotation_pending).\n"
                       "--wait polls the status each second until the version is active and\n"
                       "nothing is left to rewrap (on a terminal, stderr shows the progress) and\n"
                       "prints it; after --wait-timeout it stops waiting with exit status 3.\n"
                       "\n"
                       "Request: POST /v1/admin/master/rotate (admin), then GET /v1/admin/master\n",
        .opts = rotate_opts,
        .run = master_rotate_run,
    },
    {
        .sub = "instances",
        .usage = "",
        .summary = "Show the kmsd instances on the database and the master key versions each holds",
        .description = "Every kmsd reports each second which master key versions its token holds;\n"
                       "one not seen for three maintenance steps is no longer live and no longer\n"
                       "holds back a staged version. LACKING: staged, active or retired versions\n"
                       "its token does not hold.\n"
                       "\n"
                       "Request: GET /v1/admin/master/instances\n",
        .run = master_instances_run,
    },
    {0},
};

const struct command cmd_master = {
    .name = "master",
    .summary = "Master key versions and rotation",
    .actions = master_actions,
};
