/* signkeys — `kmsctl firmware keys` and `kmsctl signing keys`: the
 * platform's signing keys in the token, the same life for both families
 * (docs/api.md, "Firmware signing keys", "Data-signing keys"). */
#include "signkeys.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>

#include "args.h"
#include "client.h"
#include "exitcodes.h"
#include "output.h"

const struct opt_spec signkeys_opts[] = {
    {"overlap-days", 0, "N", "rotate: days the old key stays pinned too (1..365, default 30)"},
    {"pem", 0, NULL, "list: print the certificates to pin (active and in overlap)"},
    {"reason", 0, "R", "revoke: an RFC 5280 reason (keyCompromise, superseded, ...)"},
    {0},
};

/* The family of the call in progress (kmsctl runs one command). */
static const struct signkeys *fam;

static int print_keys(const json_t *doc)
{
    const char *cols[] = {fam->upper, "VERSION", "STATE", "NOT-AFTER", "OVERLAP-UNTIL", "SHA256"};
    const char *keys[] = {fam->field, "version", "state", "not_after", "overlap_until", "sha256"};
    return out_table(json_object_get(doc, "keys"), 6, cols, keys);
}

/* One key's record: its fields, then the certificate devices pin. */
static int print_key(const json_t *k)
{
    const char *fields[] = {fam->field,   "version",       "state", "revoked_at", "revoke_reason",
                                         "sha256",     "subject",       "not_after",
                                         "created_at", "overlap_until", NULL};
    for (int i = 0; fields[i]; i++) {
        char *v = out_value_str(json_object_get(k, fields[i]));
        if (!v)
            return EXIT_INTERNAL;
        out_textf(stdout, "%s: %s\n", fields[i], v);
        free(v);
    }
    out_lines(stdout, json_string_value(json_object_get(k, "certificate")) ?: "");
    return EXIT_OK;
}

/* The certificates to pin now (devices of a product, verifiers of data): the active key's and
 * the retired ones' still in their overlap (overlap_until, RFC 3339 UTC
 * "YYYY-MM-DDTHH:MM:SSZ", compares as text). */
static int print_pem(const json_t *doc)
{
    char now[32];
    time_t t = time(NULL);
    struct tm tm;
    size_t i;
    const json_t *k;
    strftime(now, sizeof(now), "%Y-%m-%dT%H:%M:%SZ", gmtime_r(&t, &tm));
    json_array_foreach(json_object_get(doc, "keys"), i, k) {
        const char *state = json_string_value(json_object_get(k, "state")),
                   *until = json_string_value(json_object_get(k, "overlap_until"));
        bool pinned = state && (!strcmp(state, "active") ||
                                (!strcmp(state, "retired") && until && strcmp(until, now) > 0));
        if (pinned && json_is_string(json_object_get(k, "certificate")))
            out_lines(stdout, json_string_value(json_object_get(k, "certificate")));
    }
    return EXIT_OK;
}

int signkeys_run(const struct kmsctl_ctx *ctx, const struct invocation *inv,
                 const struct signkeys *f)
{
    const char *verb = inv->pos[0], *product = inv->npos > 1 ? inv->pos[1] : NULL,
               *ver_s = inv->npos > 2 ? inv->pos[2] : NULL;
    const char *days_s = opt_get(&inv->local, "overlap-days"),
               *reason = opt_get(&inv->local, "reason");
    bool list = !strcmp(verb, "list"), create = !strcmp(verb, "create"),
         rotate = !strcmp(verb, "rotate"), revoke = !strcmp(verb, "revoke");
    char path[256];
    json_t *req = NULL, *resp = NULL;
    long days = 0, version = 0;
    int rc;

    fam = f;
    if (!list && !create && !rotate && !revoke) {
        out_error("unknown keys action '%s' (list, create, rotate or revoke)", out_safe(verb));
        return EXIT_USAGE;
    }
    if (!list && !product) {
        out_error("%s needs a %s", verb, f->upper);
        return EXIT_USAGE;
    }
    if (revoke != !!ver_s || (revoke && !arg_to_long(ver_s, 1, 999999999, &version))) {
        if (revoke)
            out_error("revoke needs %s and a VERSION (a whole number from 1)", f->upper);
        else
            out_error("only revoke takes a VERSION");
        return EXIT_USAGE;
    }
    if (reason && !revoke) {
        out_error("--reason goes with revoke");
        return EXIT_USAGE;
    }
    if (days_s && (!rotate || !arg_to_long(days_s, 1, 365, &days))) {
        out_error(rotate ? "--overlap-days must be a whole number from 1 to 365"
                         : "--overlap-days goes with rotate");
        return EXIT_USAGE;
    }
    if (opt_get(&inv->local, "pem") && !list) {
        out_error("--pem goes with list");
        return EXIT_USAGE;
    }
    /* Names are [A-Za-z0-9._-]: nothing to escape in a path or a query;
     * anything else is the server's to refuse. */
    if (product && strspn(product, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                                   "0123456789._-") != strlen(product)) {
        out_error("%s must be of A-Z a-z 0-9 . _ -", f->upper);
        return EXIT_USAGE;
    }
    if (list) {
        snprintf(path, sizeof(path), "%s%s%s%s%s", f->path, product ? "?" : "",
                 product ? f->field : "", product ? "=" : "", product ? product : "");
        return client_show(ctx, path, opt_get(&inv->local, "pem") ? print_pem : print_keys);
    }
    if (create) {
        req = json_pack("{s:s}", f->field, product);
        rc = client_call(ctx, "POST", f->path, req, &resp);
    } else if (revoke) {
        snprintf(path, sizeof(path), "%s/%s/versions/%ld/revoke", f->path, product, version);
        req = reason ? json_pack("{s:s}", "reason", reason) : json_object();
        rc = client_call(ctx, "POST", path, req, &resp);
    } else {
        snprintf(path, sizeof(path), "%s/%s/rotate", f->path, product);
        req = days_s ? json_pack("{s:i}", "overlap_days", (int)days) : json_object();
        rc = client_call(ctx, "POST", path, req, &resp);
    }
    json_decref(req);
    return out_result(ctx->json, rc, resp, print_key);
}

