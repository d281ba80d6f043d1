/* cmd_qkd — `kmsctl qkd status`, `kmsctl qkd keys list`: ETSI GS QKD 014 key
 * delivery as the operator sees it (docs/etsi014.md); SAE IDs are given
 * with `kmsctl device sae`. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "client.h"
#include "command.h"
#include "exitcodes.h"
#include "output.h"

static int print_status(const json_t *doc)
{
    static const char *const cols[] = {"MASTER-SAE", "SLAVE-SAE", "WAITING", "NEXT-EXPIRY"};
    static const char *const keys[] = {"master_sae", "slave_sae", "waiting", "next_expiry"};
    printf("KME: %s; key size %lld bits (%lld to %lld), at most %lld keys a request, %lld "
           "waiting a pair, %lld additional slaves\n",
           json_string_value(json_object_get(doc, "kme_id")),
           (long long)json_integer_value(json_object_get(doc, "key_size")),
           (long long)json_integer_value(json_object_get(doc, "min_key_size")),
           (long long)json_integer_value(json_object_get(doc, "max_key_size")),
           (long long)json_integer_value(json_object_get(doc, "max_key_per_request")),
           (long long)json_integer_value(json_object_get(doc, "max_key_count")),
           (long long)json_integer_value(json_object_get(doc, "max_SAE_ID_count")));
    return out_table(json_object_get(doc, "pairs"), 4, cols, keys);
}

static int status_run(const struct kmsctl_ctx *ctx, const struct invocation *inv)
{
    (void)inv;
    return client_show(ctx, "/v1/admin/qkd", print_status);
}

/* SLAVES: "sae (fetched at)" list. */
static void key_row(const json_t *k, char **cells)
{
    const json_t *s;
    size_t i;
    char buf[1024] = "";
    cells[0] = out_value_str(json_object_get(k, "key_id"));
    cells[1] = out_value_str(json_object_get(k, "master_sae"));
    json_array_foreach(json_object_get(k, "slaves"), i, s) {
        const char *sae = json_string_value(json_object_get(s, "sae_id"));
        bool got = json_is_string(json_object_get(s, "fetched_at"));
        size_t l = strlen(buf);
        snprintf(buf + l, sizeof(buf) - l, "%s%s%s", i ? "," : "", sae ? sae : "?",
                 got ? "(fetched)" : "");
    }
    cells[2] = strdup(buf);
    cells[3] = out_value_str(json_object_get(k, "size"));
    cells[4] = out_value_str(json_object_get(k, "expires_at"));
}

static int print_keys(const json_t *doc)
{
    static const char *const headers[] = {"KEY-ID", "MASTER-SAE", "SLAVES", "SIZE", "EXPIRES"};
    return out_table_by(json_object_get(doc, "keys"), 5, headers, key_row);
}

static int keys_run(const struct kmsctl_ctx *ctx, const struct invocation *inv)
{
    const char *m = opt_get(&inv->local, "master"), *s = opt_get(&inv->local, "slave"),
               *l = opt_get(&inv->local, "limit");
    char *path = NULL;
    json_t *resp = NULL;
    int rc;
    char *em, *es, *el;
    if (strcmp(inv->pos[0], "list")) {
        out_error("unknown action 'keys %s' (keys list)", out_safe(inv->pos[0]));
        return EXIT_USAGE;
    }
    em = m ? client_escape(m) : NULL;
    es = s ? client_escape(s) : NULL;
    el = l ? client_escape(l) : NULL;
    if ((m && !em) || (s && !es) || (l && !el) ||
        asprintf(&path, "/v1/admin/qkd/keys?limit=%s%s%s%s%s", el ? el : "100",
                 em ? "&master=" : "", em ? em : "", es ? "&slave=" : "", es ? es : "") < 0) {
        free(em);
        free(es);
        free(el);
        out_error("out of memory");
        return EXIT_INTERNAL;
    }
    free(em);
    free(es);
    free(el);
    rc = client_call(ctx, "GET", path, NULL, &resp);
    free(path);
    return out_result(ctx->json, rc, resp, print_keys);
}

static const struct opt_spec keys_opts[] = {
    {"master", 0, "SAE_ID", "only keys of this master SAE"},
    {"slave", 0, "SAE_ID", "only keys for this slave SAE"},
    {"limit", 0, "N", "at most N keys, newest first (1-1000, default 100)"},
    {0},
};

static const struct action qkd_actions[] = {
    {
        .sub = "status",
        .usage = "",
        .summary = "ETSI GS QKD 014: this KME's limits and the keys waiting for slave SAEs",
        .description = "Columns: MASTER-SAE SLAVE-SAE WAITING NEXT-EXPIRY, by pair.\n"
                       "\n"
                       "Request: GET /v1/admin/qkd\n",
        .run = status_run,
    },
    {
        .sub = "keys",
        .usage = "list [--master SAE_ID] [--slave SAE_ID] [--limit N]",
        .summary = "List keys waiting for slave SAEs (never their bytes)",
        .description = "Columns: KEY-ID MASTER-SAE SLAVES SIZE EXPIRES; a slave that fetched\n"
                       "the key is marked (fetched).\n"
                       "\n"
                       "Request: GET /v1/admin/qkd/keys\n",
        .opts = keys_opts,
        .min_args = 1,
        .max_args = 1,
        .run = keys_run,
    },
    {0},
};

const struct command cmd_qkd = {
    .name = "qkd",
    .summary = "ETSI GS QKD 014 key delivery to SAEs",
    .actions = qkd_actions,
};
