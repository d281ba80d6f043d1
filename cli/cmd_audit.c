/*
 * cmd_audit — `kmsctl audit list|verify|export`: the tamper-evident audit
 * log (/v1/admin/audit, docs/operations.md "Audit log").
 */
#include "command.h"
#include <pthread.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <openssl/rand.h>

#include "client.h"
#include "device_common.h"
#include "exitcodes.h"
#include "fileio.h"
#include "output.h"
#include "progress.h"
#include "resource.h"
#include "timearg.h"

#define LIST_LIMIT_MAX 1000L
#define LIST_LIMIT_DEFAULT 100L
#define EXPORT_PAGE "5000"
#define HASH_SHOWN 16


static int check_type(const char *s)
{
    size_t n = strlen(s);
    if (n && s[n - 1] == '*')
        n--;
    if (n == 0 || n > 64 || strspn(s, "abcdefghijklmnopqrstuvwxyz0123456789_.-") != n) {
        out_error("--type must be an event name such as device.created, or a prefix ending"
                  " in * (device.*)");
        return EXIT_USAGE;
    }
    return EXIT_OK;
}

/* ---- list ----------------------------------------------------------------------- */

static int list_query(const struct opt_values *o, char **query, long *limit)
{
    const char *since = opt_get(o, "since"), *device = opt_get(o, "device"),
               *type = opt_get(o, "type"), *lim = opt_get(o, "limit"), *after = opt_get(o, "after");
    char *since_v = NULL;
    long dummy;
    int rc;

    *query = NULL;
    *limit = LIST_LIMIT_DEFAULT;
    if (device && (rc = device_check_id("--device", device)))
        return rc;
    if (type && (rc = check_type(type)))
        return rc;
    if (lim && !arg_to_long(lim, 1, LIST_LIMIT_MAX, limit)) {
        out_error("--limit must be a whole number from 1 to %ld", LIST_LIMIT_MAX);
        return EXIT_USAGE;
    }
    if (after && !arg_to_long(after, 0, 999999999999999999L, &dummy)) {
        out_error("--after must be an audit row id");
        return EXIT_USAGE;
    }
    if (since && (rc = time_arg("--since", since, &since_v)))
        return rc;
    rc = EXIT_OK;
    if (since_v)
        rc = client_query_add(query, "since", since_v);
    if (!rc && device)
        rc = client_query_add(query, "device", device);
    if (!rc && type)
        rc = client_query_add(query, "type", type);
    if (!rc && lim)
        rc = client_query_add(query, "limit", lim);
    if (!rc && after)
        rc = client_query_add(query, "after", after);
    free(since_v);
    return rc;
}

static void event_row(const json_t *e, char **cells)
{
    static const char *const keys[] = {"id", "at", "actor", "event", "device_id"};
    for (size_t c = 0; c < 5; c++)
        cells[c] = out_value_str(json_object_get(e, keys[c]));
    cells[5] = strdup(json_is_true(json_object_get(e, "sealed")) ? "yes" : "no");
    cells[6] = out_value_str(json_object_get(e, "detail"));
}

/* The events table, and a note when the server has more. */
static int print_page(const json_t *resp)
{
    static const char *const headers[] = {"ID", "AT", "ACTOR", "EVENT", "DEVICE", "SEALED", "DETAIL"};
    int rc = out_table_by(json_object_get(resp, "events"), 7, headers, event_row);
    if (!rc && json_is_integer(json_object_get(resp, "next")))
        out_note("More events follow: add --after %lld (or raise --limit, up to %ld).",
                 (long long)json_integer_value(json_object_get(resp, "next")), LIST_LIMIT_MAX);
    return rc;
}

static int audit_list(const struct kmsctl_ctx *ctx, const struct invocation *inv)
{
    char *query = NULL;
    json_t *resp = NULL;
    long limit;
    int rc = list_query(&inv->local, &query, &limit);
    if (!rc)
        rc = resource_list(ctx, "/v1/admin/audit", query, "events", &resp);
    free(query);
    return out_result(ctx->json, rc, resp, print_page);
}

/* ---- verify --------------------------------------------------------------------- */

#define GAPS_SHOWN 20

/* The gaps, in human form, on stdout (they are findings, not errors). */
static void print_gaps(const json_t *resp)
{
    const json_t *gaps = json_object_get(resp, "gaps"), *g;
    long long count = json_integer_value(json_object_get(resp, "gap_count")),
              ids = json_integer_value(json_object_get(resp, "gap_ids"));
    size_t i, n = json_array_size(gaps);
    if (count <= 0)
        return;
    printf("%lld gap%s: %lld id%s never sealed (a rolled-back transaction, or a row deleted"
           " before it was sealed):\n",
           count, count == 1 ? "" : "s", ids, ids == 1 ? "" : "s");
    json_array_foreach(gaps, i, g) {
        long long lo = json_integer_value(json_object_get(g, "lo")),
                  hi = json_integer_value(json_object_get(g, "hi")),
                  miss = json_integer_value(json_object_get(g, "missing"));
        const char *at = json_string_value(json_object_get(g, "skipped_at"));
        if (n > GAPS_SHOWN && i < n - GAPS_SHOWN)
            continue; /* the newest GAPS_SHOWN */
        if (lo == hi)
            printf("  id %lld", lo);
        else
            printf("  ids %lld-%lld (%lld missing)", lo, hi, miss);
        printf(", skipped at %s\n", at ? at : "?");
    }
    {
        size_t shown = n > GAPS_SHOWN ? GAPS_SHOWN : n;
        if (count > (long long)shown)
            printf("  (%lld older not shown; --json lists the newest %zu)\n",
                   count - (long long)shown, n);
    }
}

/* The progress of a verification, drawn on a terminal while the one
 * request runs: a second thread polls GET /v1/admin/audit/verify/{id}
 * with the request's X-Request-Id every half second. Best effort: behind a
 * load balancer the poll may reach another kmsd (404), and the line then
 * shows only that it runs and for how long. */
#define POLL_MS 500
#define POLL_TIMEOUT_S 2 /* a slow poll must not hold the answer back */

struct verify_watch {
    struct kmsctl_ctx poll_ctx; /* the caller's, with POLL_TIMEOUT_S */
    struct progress *pg;
    char id[48], path[96];
    pthread_mutex_t lock;
    pthread_cond_t cond; /* on CLOCK_MONOTONIC: a clock step neither stalls nor hurries it */
    bool done;
};

static void *verify_watch_run(void *arg)
{
    struct verify_watch *w = arg;

    pthread_mutex_lock(&w->lock);
    for (;;) {
        struct timespec t;
        clock_gettime(CLOCK_MONOTONIC, &t);
        t.tv_nsec += POLL_MS * 1000000L;
        if (t.tv_nsec >= 1000000000L) {
            t.tv_sec++;
            t.tv_nsec -= 1000000000L;
        }
        /* The first poll after half a second: a verification that fails
         * at once (no token, no server) has reported it alone. */
        while (!w->done && pthread_cond_timedwait(&w->cond, &w->lock, &t) == 0)
            ;
        if (w->done)
            break;
        pthread_mutex_unlock(&w->lock);
        json_t *r = NULL;
        int64_t rows = -1;
        double fraction = -1;
        if (client_get_quiet(&w->poll_ctx, w->path, &r) == EXIT_OK) {
            rows = json_integer_value(json_object_get(r, "rows_checked"));
            fraction = json_number_value(json_object_get(r, "fraction"));
        }
        json_decref(r);
        pthread_mutex_lock(&w->lock);
        if (!w->done)
            progress_update(w->pg, rows, fraction);
    }
    pthread_mutex_unlock(&w->lock);
    return NULL;
}

/* Starts the watch; false (and nothing to stop) when there is nothing to
 * draw or no thread to draw it with. */
static bool verify_watch_start(struct verify_watch *w, const struct kmsctl_ctx *ctx,
                               pthread_t *th)
{
    unsigned char r[12];
    pthread_condattr_t ca;
    bool ok = false;

    if (!(w->pg = progress_start("verify", "rows", ctx->json)))
        return false;
    w->poll_ctx = *ctx;
    if (w->poll_ctx.timeout_s > POLL_TIMEOUT_S)
        w->poll_ctx.timeout_s = POLL_TIMEOUT_S;
    w->poll_ctx.verbose = false;
    if (RAND_bytes(r, sizeof(r)) != 1 || pthread_condattr_init(&ca) != 0)
        goto out;
    memcpy(w->id, "kmsctl-verify-", 14);
    for (size_t i = 0; i < sizeof(r); i++)
        snprintf(w->id + 14 + 2 * i, 3, "%02x", r[i]);
    snprintf(w->path, sizeof(w->path), "/v1/admin/audit/verify/%s", w->id);
    pthread_mutex_init(&w->lock, NULL);
    if (pthread_condattr_setclock(&ca, CLOCK_MONOTONIC) == 0 &&
        pthread_cond_init(&w->cond, &ca) == 0) {
        if (pthread_create(th, NULL, verify_watch_run, w) == 0)
            ok = true;
        else
            pthread_cond_destroy(&w->cond);
    }
    pthread_condattr_destroy(&ca);
    if (!ok)
        pthread_mutex_destroy(&w->lock);
out:
    if (!ok) {
        progress_end(w->pg);
        w->pg = NULL;
    }
    return ok;
}

static void verify_watch_stop(struct verify_watch *w, pthread_t th)
{
    pthread_mutex_lock(&w->lock);
    w->done = true;
    pthread_cond_signal(&w->cond);
    pthread_mutex_unlock(&w->lock);
    pthread_join(th, NULL);
    pthread_cond_destroy(&w->cond);
    pthread_mutex_destroy(&w->lock);
    progress_end(w->pg); /* before the summary */
}

static int verify_call(const struct kmsctl_ctx *ctx, const json_t *body, json_t **resp)
{
    struct verify_watch w = {0};
    pthread_t th;
    int rc;

    if (!verify_watch_start(&w, ctx, &th))
        return client_call(ctx, "POST", "/v1/admin/audit/verify", body, resp);
    rc = client_call_id(ctx, "POST", "/v1/admin/audit/verify", body, w.id, resp);
    verify_watch_stop(&w, th);
    return rc;
}

static int audit_verify(const struct kmsctl_ctx *ctx, const struct invocation *inv)
{
    json_t *resp = NULL, *body = json_object();
    bool strict = opt_get(&inv->local, "strict") != NULL;
    int rc;
    if (!body) {
        out_error("out of memory");
        return EXIT_INTERNAL;
    }
    rc = verify_call(ctx, body, &resp);
    json_decref(body);
    if (rc)
        return rc;
    const json_t *ok = json_object_get(resp, "ok"), *bad = json_object_get(resp, "first_bad");
    if (!json_is_boolean(ok)) {
        out_error("server response has no \"ok\"");
        json_decref(resp);
        return EXIT_SERVER;
    }
    if (ctx->json) {
        rc = out_json(resp);
    } else if (json_is_true(ok)) {
        const json_t *head = json_object_get(resp, "head");
        const char *hash = json_string_value(json_object_get(head, "hash"));
        long long n_rows = json_integer_value(json_object_get(resp, "rows_checked")),
                  n_cps = json_integer_value(json_object_get(resp, "checkpoints_checked")),
                  n_old = json_integer_value(json_object_get(resp, "checkpoints_unverifiable"));
        printf("audit log OK: %lld row%s chained, %lld checkpoint%s authenticated by the token",
               n_rows, n_rows == 1 ? "" : "s", n_cps, n_cps == 1 ? "" : "s");
        if (n_old)
            printf(" (%lld older under master keys no longer loaded)", n_old);
        if (hash)
            printf("; head: row %lld, %.*s...",
                   (long long)json_integer_value(json_object_get(head, "id")), HASH_SHOWN, hash);
        printf("\n");
        if (json_integer_value(json_object_get(resp, "pending")))
            out_note("%lld newer rows are not sealed yet.",
                     (long long)json_integer_value(json_object_get(resp, "pending")));
    }
    if (!ctx->json)
        print_gaps(resp);
    if (json_is_true(ok) && strict && json_integer_value(json_object_get(resp, "gap_count")) > 0) {
        fprintf(stderr,
                "kmsctl: audit log has %lld gap%s (%lld ids never sealed); --strict fails on gaps\n",
                (long long)json_integer_value(json_object_get(resp, "gap_count")),
                json_integer_value(json_object_get(resp, "gap_count")) == 1 ? "" : "s",
                (long long)json_integer_value(json_object_get(resp, "gap_ids")));
        rc = EXIT_REFUSED;
    }
    if (!json_is_true(ok)) {
        const char *problem = json_string_value(json_object_get(bad, "problem"));
        const char *detail = json_string_value(json_object_get(bad, "detail"));
        fprintf(stderr, "kmsctl: audit log verification FAILED: row %lld %s",
                (long long)json_integer_value(json_object_get(bad, "id")),
                problem ? problem : "?");
        if (json_is_integer(json_object_get(bad, "checkpoint")))
            fprintf(stderr, " (checkpoint %lld)",
                    (long long)json_integer_value(json_object_get(bad, "checkpoint")));
        if (detail) {
            fputs(": ", stderr);
            out_text(stderr, detail);
        }
        fputc('\n', stderr);
        rc = EXIT_REFUSED;
    }
    json_decref(resp);
    return rc;
}

/* ---- export ------------------------------------------------------------------- */

static int write_all(int fd, const char *p, size_t len)
{
    while (len > 0) {
        ssize_t put = write(fd, p, len);
        if (put < 0 && errno == EINTR)
            continue;
        if (put < 0)
            return -1;
        p += put;
        len -= (size_t)put;
    }
    return 0;
}

static int audit_export(const struct kmsctl_ctx *ctx, const struct invocation *inv)
{
    const char *out = opt_get(&inv->local, "out"), *since = opt_get(&inv->local, "since");
    char *since_v = NULL, *base = NULL;
    bool to_stdout;
    long long after = 0, rows = 0;
    int fd = -1, rc;

    if (!out || !*out) {
        out_error("--out FILE is required (- for standard output)");
        return EXIT_USAGE;
    }
    to_stdout = strcmp(out, "-") == 0;
    if (since && (rc = time_arg("--since", since, &since_v)))
        return rc;
    rc = client_query_add(&base, "limit", EXPORT_PAGE);
    if (!rc && since_v)
        rc = client_query_add(&base, "since", since_v);
    free(since_v);
    if (rc)
        goto cleanup;
    if (!to_stdout && (fd = file_create_new("export file", out)) < 0) {
        rc = EXIT_USAGE;
        goto cleanup;
    }
    for (;;) {
        char *path = NULL;
        json_t *resp = NULL, *row;
        const json_t *list, *next;
        size_t i;
        if (asprintf(&path, "/v1/admin/audit/export%s&after=%lld", base, after) < 0) {
            out_error("out of memory");
            rc = EXIT_INTERNAL;
            goto cleanup;
        }
        rc = client_call(ctx, "GET", path, NULL, &resp);
        free(path);
        if (rc)
            goto cleanup;
        list = json_object_get(resp, "rows");
        next = json_object_get(resp, "next");
        if (!json_is_array(list)) {
            out_error("server response has no \"rows\" list");
            json_decref(resp);
            rc = EXIT_SERVER;
            goto cleanup;
        }
        json_array_foreach(list, i, row) {
            char *line = json_dumps(row, JSON_COMPACT | JSON_SORT_KEYS);
            int werr;
            if (!line) {
                out_error("out of memory");
                json_decref(resp);
                rc = EXIT_INTERNAL;
                goto cleanup;
            }
            if (to_stdout)
                werr = fputs(line, stdout) == EOF || fputc('\n', stdout) == EOF;
            else
                werr = write_all(fd, line, strlen(line)) != 0 || write_all(fd, "\n", 1) != 0;
            free(line);
            if (werr) {
                out_error("cannot write %s: %s", out_safe(out), strerror(errno));
                json_decref(resp);
                rc = EXIT_INTERNAL;
                goto cleanup;
            }
            rows++;
        }
        if (!json_is_integer(next) || json_integer_value(next) <= after) {
            json_decref(resp);
            break;
        }
        after = json_integer_value(next);
        json_decref(resp);
    }
    if (!to_stdout) {
        rc = file_write_close(fd, out, "", 0);
        fd = -1;
        if (rc) {
            unlink(out);
            goto cleanup;
        }
        out_note("exported %lld audit rows to %s", rows, out_safe(out));
    }
    rc = EXIT_OK;

cleanup:
    if (rc && fd >= 0)
        file_discard(fd, out);
    free(base);
    return rc;
}

static const struct opt_spec list_opts[] = {
    {"since", 0, "T", "only events at or after T: RFC 3339 time, date, or 30m / 12h / 7d ago"},
    {"device", 0, "ID", "only events about this device"},
    {"type", 0, "EVENT", "only this event (device.created), or a prefix (device.*)"},
    {"limit", 0, "N", "at most N events (1-1000, default 100)"},
    {"after", 0, "ID", "events after this audit row id (paging)"},
    {0},
};

static const struct opt_spec verify_opts[] = {
    {"strict", 0, NULL, "also fail (exit 6) when the log has gaps: ids never sealed"},
    {0},
};

static const struct opt_spec export_opts[] = {
    {"since", 0, "T", "only events at or after T (as for list)"},
    {"out", 'o', "FILE", "write JSON lines to FILE (created new, mode 0600), or - for stdout"},
    {0},
};

static const struct action audit_actions[] = {
    {
        .sub = "list",
        .usage = "[--since T] [--device ID] [--type EVENT] [--limit N] [--after ID]",
        .summary = "List audit events, oldest first",
        .description = "Request: GET /v1/admin/audit (any role)\n",
        .opts = list_opts,
        .run = audit_list,
    },
    {
        .sub = "verify",
        .usage = "[--strict]",
        .summary = "Verify the audit log's hash chain and its token-authenticated checkpoints",
        .description = "Request: POST /v1/admin/audit/verify (auditor, admin)\n"
                       "Exits 6 when a row was modified, deleted, reordered or inserted,\n"
                       "or a checkpoint does not authenticate; the first such row is named.\n"
                       "Gaps (ids never sealed: a rolled-back transaction, or a row deleted\n"
                       "before it was sealed) are listed; with --strict they also exit 6.\n"
                       "On a terminal, stderr shows the progress (rows checked, share of the\n"
                       "log) from GET /v1/admin/audit/verify/{request_id}.\n",
        .opts = verify_opts,
        .run = audit_verify,
    },
    {
        .sub = "export",
        .usage = "--out FILE [--since T]",
        .summary = "Export audit rows with their chain hashes as JSON lines (for a SIEM)",
        .description = "Requests: GET /v1/admin/audit/export, page by page (auditor, admin)\n",
        .opts = export_opts,
        .run = audit_export,
    },
    {0},
};

const struct command cmd_audit = {
    .name = "audit",
    .summary = "The tamper-evident audit log: list, verify, export",
    .actions = audit_actions,
};
