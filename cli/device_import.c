/* device_import — `kmsctl device import`; see device_import.h. */
#include "device_import.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <jansson.h>

#include "client.h"
#include "exitcodes.h"
#include "import_file.h"
#include "output.h"
#include "progress.h"

#define BATCH_DEFAULT 500L
#define BATCH_MAX 1000L /* the server's limit per request */

const struct opt_spec device_import_opts[] = {
    {"batch", 0, "N", "rows per request, 1..1000 (default 500)"},
    {"format", 0, "FORMAT", "csv or jsonl (default: by extension, then by content)"},
    {0},
};

struct tally {
    json_int_t created, failed;
    json_t *results; /* every row's result, local parse failures included */
};

static int append(json_t *array, json_t *value)
{
    if (json_array_append_new(array, value) != 0) {
        out_error("out of memory");
        return EXIT_INTERNAL;
    }
    return EXIT_OK;
}

/* Sends the rows in batch and adds the answer to t; empties batch. */
static int send_batch(const struct kmsctl_ctx *ctx, json_t *batch, struct tally *t)
{
    json_t *req = json_pack("{s:O}", "devices", batch), *resp = NULL;
    int rc = EXIT_INTERNAL;

    if (!req) {
        out_error("out of memory");
        goto cleanup;
    }
    rc = client_call(ctx, "POST", "/v1/admin/devices/import", req, &resp);
    if (rc)
        goto cleanup;
    const json_t *created = json_object_get(resp, "created");
    const json_t *failed = json_object_get(resp, "failed");
    json_t *results = json_object_get(resp, "results");
    if (!json_is_integer(created) || !json_is_integer(failed) || !json_is_array(results)) {
        out_error("server response has no \"created\", \"failed\" or \"results\"");
        rc = EXIT_SERVER;
        goto cleanup;
    }
    t->created += json_integer_value(created);
    t->failed += json_integer_value(failed);
    if (json_array_extend(t->results, results) != 0 || json_array_clear(batch) != 0) {
        out_error("out of memory");
        rc = EXIT_INTERNAL;
    }

cleanup:
    json_decref(req);
    json_decref(resp);
    return rc;
}

struct entry {
    json_int_t line;
    size_t pos; /* keeps equal lines in arrival order */
    json_t *result;
};

static int by_line(const void *a, const void *b)
{
    const struct entry *x = a, *y = b;
    if (x->line != y->line)
        return x->line < y->line ? -1 : 1;
    return x->pos < y->pos ? -1 : x->pos > y->pos;
}

/* Local failures were collected as they came; put all rows in file order. */
static int sort_results(json_t *results)
{
    size_t n = json_array_size(results), i;
    json_t *r;
    if (n < 2)
        return EXIT_OK;
    struct entry *e = calloc(n, sizeof(*e));
    if (!e) {
        out_error("out of memory");
        return EXIT_INTERNAL;
    }
    json_array_foreach(results, i, r) {
        e[i].line = json_integer_value(json_object_get(r, "line"));
        e[i].pos = i;
        e[i].result = json_incref(r);
    }
    qsort(e, n, sizeof(*e), by_line);
    json_array_clear(results);
    int rc = EXIT_OK;
    for (i = 0; i < n; i++)
        if (!rc)
            rc = append(results, e[i].result); /* takes our reference */
        else
            json_decref(e[i].result);
    free(e);
    return rc;
}

/* "line L: DEVICE: message (code)" for one failed row. */
static void print_failure(const json_t *r)
{
    const json_t *err = json_object_get(r, "error");
    const char *id = json_string_value(json_object_get(r, "device_id"));
    const char *msg = json_string_value(json_object_get(err, "message"));
    const char *code = json_string_value(json_object_get(err, "code"));
    printf("line %lld: ", (long long)json_integer_value(json_object_get(r, "line")));
    out_textf(stdout, "%s: %s (%s)\n", id ? id : "-", msg ? msg : "failed", code ? code : "-");
}

static int print_tally(const struct kmsctl_ctx *ctx, const struct tally *t)
{
    if (ctx->json) {
        json_t *doc = json_pack("{s:I, s:I, s:O}", "created", t->created, "failed", t->failed,
                                "results", t->results);
        if (!doc) {
            out_error("out of memory");
            return EXIT_INTERNAL;
        }
        int rc = out_json(doc);
        json_decref(doc);
        return rc;
    }
    printf("created %lld, failed %lld\n", (long long)t->created, (long long)t->failed);
    size_t i;
    const json_t *r;
    json_array_foreach(t->results, i, r) {
        const char *status = json_string_value(json_object_get(r, "status"));
        if (!status || strcmp(status, "created") != 0)
            print_failure(r);
    }
    return EXIT_OK;
}

/* Reads every row, sending full batches as they fill; progress on a
 * terminal (progress.h). */
static int run_import(const struct kmsctl_ctx *ctx, struct import_file *f, size_t batch_size,
                      struct tally *t)
{
    json_t *batch = json_array(), *row = NULL;
    json_int_t batch_line = 0; /* first line of the batch being filled */
    struct progress *pg = progress_start("import", "rows", ctx->json);
    bool parsed;
    int rc = EXIT_INTERNAL;

    if (!batch) {
        out_error("out of memory");
        progress_end(pg);
        return rc;
    }
    for (;;) {
        if ((rc = import_next(f, &row, &parsed)) || !row)
            break;
        if (!parsed) {
            t->failed++;
            if ((rc = append(t->results, row)))
                break;
            continue;
        }
        if (json_array_size(batch) == 0)
            batch_line = json_integer_value(json_object_get(row, "line"));
        if ((rc = append(batch, row)))
            break;
        if (json_array_size(batch) == batch_size && (rc = send_batch(ctx, batch, t)))
            goto stopped;
        progress_update(pg, t->created + t->failed, import_fraction(f));
    }
    if (!rc && json_array_size(batch) > 0 && (rc = send_batch(ctx, batch, t)))
        goto stopped;
    progress_end(pg);
    json_decref(batch);
    return rc;

stopped:
    progress_end(pg);
    out_note("Import stopped at the batch starting at line %lld; %lld device(s) from earlier "
             "batches were created.",
             (long long)batch_line, (long long)t->created);
    json_decref(batch);
    return rc;
}

int device_import_run(const struct kmsctl_ctx *ctx, const struct invocation *inv)
{
    const char *batch_arg = opt_get(&inv->local, "batch");
    struct import_file *f = NULL;
    struct tally t = {0};
    long batch_size = BATCH_DEFAULT;
    int rc = EXIT_USAGE;

    if (batch_arg && !arg_to_long(batch_arg, 1, BATCH_MAX, &batch_size)) {
        out_error("--batch must be a whole number from 1 to %ld", BATCH_MAX);
        goto cleanup;
    }
    if ((rc = import_open(inv->pos[0], opt_get(&inv->local, "format"), &f)))
        goto cleanup;
    if (!(t.results = json_array())) {
        out_error("out of memory");
        rc = EXIT_INTERNAL;
        goto cleanup;
    }
    if ((rc = run_import(ctx, f, (size_t)batch_size, &t)) || (rc = sort_results(t.results)) ||
        (rc = print_tally(ctx, &t)))
        goto cleanup;
    rc = t.failed ? EXIT_REFUSED : EXIT_OK;

cleanup:
    json_decref(t.results);
    import_close(f);
    return rc;
}
