/*
 * cmd_stream — `kmsctl stream list|show|end`: the operator's view of key
 * streams, /v1/admin/streams (docs/protocol.md "Key streams",
 * docs/sessions.md "Streams").
 *
 * Stream IDs are the platform's UUIDs: checked for that form here so that a
 * typo is a usage error.
 */
#include "command.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <jansson.h>

#include "client.h"
#include "device_common.h"
#include "exitcodes.h"
#include "output.h"
#include "resource.h"

#define LIST_LIMIT_MAX 1000L
#define LIST_LIMIT_DEFAULT 100L /* the server's, when no --limit is given */

static int check_stream_id(const char *what, const char *s)
{
    size_t n = strlen(s);
    bool ok = n == 36;
    for (size_t i = 0; ok && i < n; i++) {
        bool dash = i == 8 || i == 13 || i == 18 || i == 23;
        ok = dash ? s[i] == '-' : isxdigit((unsigned char)s[i]) && !isupper((unsigned char)s[i]);
    }
    if (ok)
        return EXIT_OK;
    out_error("bad %s '%s': a stream ID is a UUID in lower case", what, out_safe(s));
    return EXIT_USAGE;
}

static const struct resource stream_resource = {
    .base = "/v1/admin/streams",
    .what = "stream ID",
    .check = check_stream_id,
    .record = "stream record",
};

/* A live stream's row: its parties joined by ' / '. */
static void stream_row(const json_t *st, char **cells)
{
    static const char *const fields[] = {"stream_id", NULL, "low", "keys_live", "window",
                                         "expires_at"};
    const json_t *p = json_object_get(st, "parties");
    for (size_t c = 0; c < 6; c++) {
        if (fields[c]) {
            cells[c] = out_value_str(json_object_get(st, fields[c]));
            continue;
        }
        char *a = out_value_str(json_array_get(p, 0)), *b = out_value_str(json_array_get(p, 1));
        size_t n = (a ? strlen(a) : 1) + (b ? strlen(b) : 1) + 4;
        cells[c] = malloc(n);
        if (cells[c])
            snprintf(cells[c], n, "%s / %s", a ? a : "-", b ? b : "-");
        free(a);
        free(b);
    }
}

static int stream_list(const struct kmsctl_ctx *ctx, const struct invocation *inv)
{
    static const char *const headers[] = {"STREAM", "PARTIES", "LOW", "LIVE-KEYS", "WINDOW",
                                          "EXPIRES"};
    const char *device = opt_get(&inv->local, "device"), *lim = opt_get(&inv->local, "limit");
    char *query = NULL;
    json_t *resp = NULL;
    long limit = LIST_LIMIT_DEFAULT;
    int rc = EXIT_OK;

    if (device && (rc = device_check_id("--device", device)))
        goto cleanup;
    if (lim && !arg_to_long(lim, 1, LIST_LIMIT_MAX, &limit)) {
        out_error("--limit must be a whole number from 1 to %ld", LIST_LIMIT_MAX);
        rc = EXIT_USAGE;
        goto cleanup;
    }
    if ((device && (rc = client_query_add(&query, "device", device))) ||
        (lim && (rc = client_query_add(&query, "limit", lim))) ||
        (rc = resource_list(ctx, "/v1/admin/streams", query, "streams", &resp)))
        goto cleanup;
    if (ctx->json) {
        rc = out_json(resp);
        goto cleanup;
    }
    const json_t *streams = json_object_get(resp, "streams");
    rc = out_table_by(streams, 6, headers, stream_row);
    if (!rc && json_array_size(streams) >= (size_t)limit)
        out_note("Only the newest %ld are shown; use --limit (up to %ld) or --device to see more.",
                 limit, LIST_LIMIT_MAX);
cleanup:
    free(query);
    json_decref(resp);
    return rc;
}

static int stream_show(const struct kmsctl_ctx *ctx, const struct invocation *inv)
{
    json_t *resp;
    int rc = resource_call(ctx, &stream_resource, "GET", inv->pos[0], NULL, NULL, &resp);
    return out_result(ctx->json, rc, resp, out_kv);
}

static int stream_end(const struct kmsctl_ctx *ctx, const struct invocation *inv)
{
    const char *id = inv->pos[0];
    json_t *resp;
    int rc = resource_act(ctx, &stream_resource, id, "end", &resp);
    if (!rc && ctx->json)
        rc = out_json(resp);
    else if (!rc)
        out_textf(stdout, "Stream '%s' ended; its keys are destroyed.\n", id);
    json_decref(resp);
    return rc;
}

static const struct opt_spec list_opts[] = {
    {"device", 0, "ID", "only streams this device is a party of"},
    {"limit", 0, "N", "at most N streams, newest first, 1..1000 (server default 100)"},
    {0},
};

static const struct action stream_actions[] = {
    {
        .sub = "list",
        .usage = "[--device ID] [--limit N]",
        .summary = "List live key streams",
        .description =
            "Columns: STREAM PARTIES LOW LIVE-KEYS WINDOW EXPIRES. LOW is the lowest key\n"
            "not yet held by both parties (every key below it is destroyed), LIVE-KEYS the\n"
            "keys made and not yet consumed, EXPIRES the stream's maximum lifetime.\n"
            "\n"
            "Request: GET /v1/admin/streams?device=&limit=\n",
        .opts = list_opts,
        .run = stream_list,
    },
    {
        .sub = "show",
        .usage = "ID",
        .summary = "Show a live key stream, or the tombstone of an ended one",
        .description = "Prints 'key: value' lines. An ended stream shows state 'ended', the\n"
                       "reason it ended and how many keys were consumed.\n"
                       "\n"
                       "Request: GET /v1/admin/streams/ID\n",
        .min_args = 1,
        .max_args = 1,
        .run = stream_show,
    },
    {
        .sub = "end",
        .usage = "ID",
        .summary = "End a live key stream now and destroy its keys (no confirmation)",
        .description = "Both parties are refused from then on (409 stream_ended); their next\n"
                       "request without a stream ID opens a new stream. With --json the\n"
                       "tombstone is printed.\n"
                       "\n"
                       "Request: POST /v1/admin/streams/ID/end\n",
        .min_args = 1,
        .max_args = 1,
        .run = stream_end,
    },
    {0},
};

const struct command cmd_stream = {
    .name = "stream",
    .summary = "Inspect and end key streams",
    .actions = stream_actions,
};
