/* cmd_events — `kmsctl events list|replay|remove-webhook`: /v1/admin/events
 * (docs/gateways.md, "Events"). */
#include "command.h"

#include <stdio.h>
#include <string.h>

#include <jansson.h>

#include "args.h"
#include "client.h"
#include "exitcodes.h"
#include "output.h"
#include "resource.h"

static int print_events(const json_t *resp)
{
    static const char *const headers[] = {"ID", "TYPE", "DEVICE", "CREATED-AT", "EVENT-ID"};
    static const char *const fields[] = {"id", "type", "device_id", "created_at", "event_id"};
    static const char *const hheaders[] = {"WEBHOOK", "PENDING", "FAILED", "ATTEMPTS",
                                           "LAST-ERROR", "LAST-DELIVERED-AT", "ID"};
    static const char *const hfields[] = {"url", "pending", "failed", "attempts",
                                          "last_error", "last_delivered_at", "id"};
    const json_t *events = resource_items(resp, "events"), *hooks;
    int rc;
    if (!events)
        return EXIT_SERVER;
    if ((rc = out_table(events, 5, headers, fields)) != EXIT_OK)
        return rc;
    hooks = json_object_get(resp, "webhooks");
    if (json_array_size(hooks) > 0) {
        fputc('\n', stdout);
        rc = out_table(hooks, 7, hheaders, hfields);
    }
    return rc;
}

static int events_list(const struct kmsctl_ctx *ctx, const struct invocation *inv)
{
    const char *after = opt_get(&inv->local, "after"), *limit = opt_get(&inv->local, "limit");
    char path[128];
    long a = 0, l = 100;
    if ((after && !arg_to_long(after, 0, 9000000000000000000L, &a)) ||
        (limit && !arg_to_long(limit, 1, 1000, &l))) {
        out_error("--after is an event id (0 or more), --limit 1 to 1000");
        return EXIT_USAGE;
    }
    snprintf(path, sizeof(path), "/v1/admin/events?after=%ld&limit=%ld", a, l);
    return client_show(ctx, path, print_events);
}

/* A replay is a series of calls, each a bounded part of the range: the
 * first fixes the range's end (until), each answer says where the next
 * starts. The total is printed once. */
static int events_replay(const struct kmsctl_ctx *ctx, const struct invocation *inv)
{
    const char *after = opt_get(&inv->local, "after");
    json_int_t total = 0, until = 0, next;
    json_t *resp = NULL, *sum;
    long a = 0;
    int rc;
    if (!after || !arg_to_long(after, 0, 9000000000000000000L, &a)) {
        out_error("--after is required: the event id to deliver again after (0: all kept)");
        return EXIT_USAGE;
    }
    next = a;
    do {
        json_t *req = until ? json_pack("{s:I,s:I}", "after", next, "until", until)
                            : json_pack("{s:I}", "after", next);
        json_decref(resp);
        resp = NULL;
        rc = client_call(ctx, "POST", "/v1/admin/events/replay", req, &resp);
        json_decref(req);
        if (rc != EXIT_OK)
            return out_result(ctx->json, rc, resp, out_kv);
        total += json_integer_value(json_object_get(resp, "deliveries"));
        until = json_integer_value(json_object_get(resp, "until"));
        next = json_integer_value(json_object_get(resp, "next")); /* null: 0, done */
    } while (next > 0 && until > next);
    json_decref(resp);
    sum = json_pack("{s:I,s:I,s:I}", "after", (json_int_t)a, "until", until, "deliveries", total);
    return out_result(ctx->json, EXIT_OK, sum, out_kv);
}

static int events_remove_webhook(const struct kmsctl_ctx *ctx, const struct invocation *inv)
{
    const char *id = inv->pos[0];
    char path[128];
    json_t *resp = NULL;
    int rc;
    if (strlen(id) != 64 || strspn(id, "0123456789abcdef") != 64) {
        out_error("not a webhook id (64 lowercase hex, from 'kmsctl events list'): '%s'", id);
        return EXIT_USAGE;
    }
    snprintf(path, sizeof(path), "/v1/admin/events/webhooks/%s", id);
    rc = client_call(ctx, "DELETE", path, NULL, &resp);
    return out_result(ctx->json, rc, resp, out_kv);
}

static const struct opt_spec list_opts[] = {
    {"after", 0, "ID", "events after this id (the 'next' cursor)"},
    {"limit", 0, "N", "events per page, 1..1000 (default 100)"},
    {0},
};

static const struct opt_spec replay_opts[] = {
    {"after", 0, "ID", "deliver again every event after this id (required)"},
    {0},
};

static const struct action events_actions[] = {
    {
        .sub = "list",
        .usage = "[--after ID] [--limit N]",
        .summary = "List the events and where each webhook's delivery stands",
        .description = "Events: a key or a service about to expire, a gateway bound, reset or\n"
                       "revoked, a login locked (docs/gateways.md, \"Events\").\n"
                       "\n"
                       "Request: GET /v1/admin/events\n",
        .opts = list_opts,
        .run = events_list,
    },
    {
        .sub = "replay",
        .usage = "--after ID",
        .summary = "Deliver the events after ID to every webhook again (admin)",
        .description = "Every event after ID up to the last one now. Receivers deduplicate by\n"
                       "event_id. A long range takes several requests (10,000 events each);\n"
                       "the total is printed at the end.\n"
                       "\n"
                       "Request: POST /v1/admin/events/replay, until 'next' is null\n",
        .opts = replay_opts,
        .run = events_replay,
    },
    {
        .sub = "remove-webhook",
        .usage = "ID",
        .summary = "Forget a webhook and its deliveries (admin)",
        .description = "ID as 'kmsctl events list' shows it. Nothing more is delivered to it;\n"
                       "its deliveries are deleted by the next maintenance passes. Take the\n"
                       "URL out of every kmsd's webhook_urls first: a kmsd still configured\n"
                       "with it registers it again when it starts.\n"
                       "\n"
                       "Request: DELETE /v1/admin/events/webhooks/ID\n",
        .min_args = 1,
        .max_args = 1,
        .run = events_remove_webhook,
    },
    {0},
};

const struct command cmd_events = {
    .name = "events",
    .summary = "List and replay events (webhooks)",
    .actions = events_actions,
};
