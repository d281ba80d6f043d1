/*
 * cmd_session — `kmsctl session list|show|end`: the operator's view of
 * paired device sessions, /v1/admin/sessions (docs/sessions.md).
 *
 * Session IDs follow the device protocol's ID rule, which is the device ID
 * rule (1-128 printable ASCII, none of / \ % ? #), so device_check_id
 * checks them too.
 */
#include "command.h"

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
#define HASH_SHOWN 16           /* hex digits of a tombstone's session hash in the table */

static const char *const states[] = {"pending", "active", "ended", NULL};

/* ---- list ------------------------------------------------------------------ */

/* The filter query from the options, checked; NULL *query when none. */
static int list_query(const struct opt_values *o, char **query, long *limit)
{
    const char *device = opt_get(o, "device"), *state = opt_get(o, "state");
    const char *lim = opt_get(o, "limit");
    int rc;

    *query = NULL;
    *limit = LIST_LIMIT_DEFAULT;
    if (device && (rc = device_check_id("--device", device)))
        return rc;
    if (state && !arg_is_one_of(state, states)) {
        out_error("--state must be pending, active or ended");
        return EXIT_USAGE;
    }
    if (lim && !arg_to_long(lim, 1, LIST_LIMIT_MAX, limit)) {
        out_error("--limit must be a whole number from 1 to %ld", LIST_LIMIT_MAX);
        return EXIT_USAGE;
    }
    if ((device && (rc = client_query_add(query, "device", device))) ||
        (state && (rc = client_query_add(query, "state", state))) ||
        (lim && (rc = client_query_add(query, "limit", lim))))
        return rc;
    return EXIT_OK;
}

/* A tombstone row: its session hash shortened, the rest as sent. */
static void tombstone_row(const json_t *stone, char **cells)
{
    static const char *const fields[] = {"session_hash", "key_id", "initiator",
                                         "responder",    "reason", "ended_at"};
    for (size_t c = 0; c < 6; c++)
        cells[c] = out_value_str(json_object_get(stone, fields[c]));
    if (cells[0] && strlen(cells[0]) > HASH_SHOWN)
        cells[0][HASH_SHOWN] = '\0';
}

static int print_session_table(const json_t *sessions, bool ended)
{
    static const char *const live_headers[] = {"SESSION",   "KEY-ID", "INITIATOR",
                                               "RESPONDER", "STATE",  "EXPIRES"};
    static const char *const live_fields[] = {"session_id", "key_id", "initiator",
                                              "responder",  "state",  "expires_at"};
    static const char *const ended_headers[] = {"SESSION-HASH", "KEY-ID", "INITIATOR",
                                                "RESPONDER",    "REASON", "ENDED"};
    return ended ? out_table_by(sessions, 6, ended_headers, tombstone_row)
                 : out_table(sessions, 6, live_headers, live_fields);
}

static int session_list(const struct kmsctl_ctx *ctx, const struct invocation *inv)
{
    const char *state = opt_get(&inv->local, "state");
    char *query = NULL;
    json_t *resp = NULL;
    long limit;
    int rc = list_query(&inv->local, &query, &limit);
    if (!rc)
        rc = resource_list(ctx, "/v1/admin/sessions", query, "sessions", &resp);
    if (rc)
        goto cleanup;
    if (ctx->json) {
        rc = out_json(resp);
        goto cleanup;
    }
    const json_t *sessions = json_object_get(resp, "sessions");
    rc = print_session_table(sessions, state && strcmp(state, "ended") == 0);
    if (!rc && json_array_size(sessions) >= (size_t)limit)
        out_note("Only the newest %ld are shown; use --limit (up to %ld) or --device to see more.",
                 limit, LIST_LIMIT_MAX);

cleanup:
    free(query);
    json_decref(resp);
    return rc;
}

/* ---- show, end -------------------------------------------------------------- */

static const struct resource session_resource = {
    .base = "/v1/admin/sessions",
    .what = "session ID",
    .check = device_check_id,
    .record = "session record",
};

static int session_show(const struct kmsctl_ctx *ctx, const struct invocation *inv)
{
    json_t *resp;
    int rc = resource_call(ctx, &session_resource, "GET", inv->pos[0], NULL, NULL, &resp);
    return out_result(ctx->json, rc, resp, out_kv);
}

static int session_end(const struct kmsctl_ctx *ctx, const struct invocation *inv)
{
    const char *id = inv->pos[0];
    json_t *resp;
    int rc = resource_act(ctx, &session_resource, id, "end", &resp);
    if (!rc && ctx->json)
        rc = out_json(resp);
    else if (!rc)
        out_textf(stdout, "Session '%s' ended (%s); its key is destroyed.\n", id,
                  out_string_or(json_object_get(resp, "reason"), "-"));
    json_decref(resp);
    return rc;
}

/* ---- the table ------------------------------------------------------------- */

static const struct opt_spec list_opts[] = {
    {"device", 0, "ID", "only sessions this device is a party of"},
    {"state", 0, "STATE", "pending, active or ended (default: pending and active)"},
    {"limit", 0, "N", "at most N sessions, newest first, 1..1000 (server default 100)"},
    {0},
};

static const struct action session_actions[] = {
    {
        .sub = "list",
        .usage = "[--device ID] [--state pending|active|ended] [--limit N]",
        .summary = "List live sessions, or ended ones",
        .description =
            "Live sessions: SESSION KEY-ID INITIATOR RESPONDER STATE EXPIRES. A session is\n"
            "pending until both parties have received its key, then active; EXPIRES is its\n"
            "maximum lifetime (it may end sooner when idle).\n"
            "--state ended lists tombstones instead: SESSION-HASH (the first 16 hex digits\n"
            "of SHA-256 of the session ID; the ID itself is not kept) KEY-ID INITIATOR\n"
            "RESPONDER REASON ENDED.\n"
            "\n"
            "Request: GET /v1/admin/sessions?device=&state=&limit=\n",
        .opts = list_opts,
        .run = session_list,
    },
    {
        .sub = "show",
        .usage = "ID",
        .summary = "Show a live session, or the tombstone of an ended one",
        .description = "Prints 'key: value' lines. An ended session shows state 'ended' and the\n"
                       "reason it ended (ended_by_party, ended_by_operator, delivered,\n"
                       "idle_timeout, max_lifetime, revoked).\n"
                       DASH_NOTE
                       "\n"
                       "Request: GET /v1/admin/sessions/ID\n",
        .min_args = 1,
        .max_args = 1,
        .run = session_show,
    },
    {
        .sub = "end",
        .usage = "ID",
        .summary = "End a live session now and destroy its key (no confirmation)",
        .description = "Both parties are refused from then on (409 session_ended), and the ID\n"
                       "cannot be used again. With --json the tombstone is printed.\n"
                       DASH_NOTE
                       "\n"
                       "Request: POST /v1/admin/sessions/ID/end\n",
        .min_args = 1,
        .max_args = 1,
        .run = session_end,
    },
    {0},
};

const struct command cmd_session = {
    .name = "session",
    .summary = "Inspect and end device sessions",
    .actions = session_actions,
};
