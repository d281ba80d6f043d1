/* cmd_ca — `kmsctl ca show [--pem]`, `kmsctl ca crl`: the platform CA
 * (docs/pki.md). */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>

#include <jansson.h>

#include "client.h"
#include "command.h"
#include "exitcodes.h"
#include "fileio.h"
#include "output.h"

static int print_ca(const json_t *ca)
{
    static const char *const cols[] = {"VERSION", "STATE", "LABEL", "SUBJECT", "NOT-AFTER",
                                       "SHA256"};
    static const char *const keys[] = {"version", "state", "label", "subject", "not_after",
                                       "sha256"};
    printf("active version: %lld\n", (long long)json_integer_value(json_object_get(ca, "active_version")));
    return out_table(json_object_get(ca, "certificates"), 6, cols, keys);
}

/* --pem: the certificates themselves, the active one first (what devices
 * and clients trust; GET /v1/ca serves the same without a token). */
static int print_pem(const json_t *ca)
{
    size_t i;
    const json_t *c;
    json_array_foreach(json_object_get(ca, "certificates"), i, c)
        if (json_is_string(json_object_get(c, "pem")))
            out_lines(stdout, json_string_value(json_object_get(c, "pem")));
    return EXIT_OK;
}

static int ca_show_run(const struct kmsctl_ctx *ctx, const struct invocation *inv)
{
    return client_show(ctx, "/v1/admin/ca", opt_get(&inv->local, "pem") ? print_pem : print_ca);
}

/* `ca crl [--der] [--out FILE]`: the newest CRL, PEM by default (what
 * GET /v1/ca/crl serves to anyone). */
static int ca_crl_run(const struct kmsctl_ctx *ctx, const struct invocation *inv)
{
    const char *out = opt_get(&inv->local, "out");
    bool der = opt_get(&inv->local, "der") != NULL;
    char *data = NULL;
    size_t len = 0;
    int fd = -1, rc;

    if (der && !out) {
        out_error("--der needs --out FILE (DER is binary)");
        return EXIT_USAGE;
    }
    if (out && (fd = file_create_new("CRL", out)) < 0)
        return EXIT_USAGE;
    rc = client_get_raw(ctx, der ? "/v1/ca/crl?format=der" : "/v1/ca/crl?format=pem", &data, &len);
    if (fd >= 0) {
        if (rc == EXIT_OK && (rc = file_write_close(fd, out, data, len)) != EXIT_OK)
            file_discard(-1, out);
        else if (rc != EXIT_OK)
            file_discard(fd, out);
    } else if (rc == EXIT_OK) {
        out_lines(stdout, data);
    }
    free(data);
    return rc;
}

static const struct opt_spec crl_opts[] = {
    {"out", 0, "FILE", "write the CRL to a new FILE instead of stdout"},
    {"der", 0, NULL, "DER instead of PEM (with --out)"},
    {0},
};

static const struct opt_spec show_opts[] = {
    {"pem", 0, NULL, "print the CA certificates as PEM instead of a table"},
    {0},
};

static const struct action ca_actions[] = {
    {
        .sub = "show",
        .usage = "[--pem]",
        .summary = "Show the platform CA's versions (its key pair lives in the token)",
        .description = "Columns: VERSION STATE LABEL SUBJECT NOT-AFTER SHA256.\n"
                       "\n"
                       "Request: GET /v1/admin/ca\n",
        .opts = show_opts,
        .run = ca_show_run,
    },
    {
        .sub = "crl",
        .usage = "[--out FILE [--der]]",
        .summary = "Print or save the CA's newest certificate revocation list",
        .description = "PEM on stdout, or to a new FILE (mode 0600, never overwritten); --der\n"
                       "saves the DER form. The same list is served without a token.\n"
                       "\n"
                       "Request: GET /v1/ca/crl?format=pem|der\n",
        .opts = crl_opts,
        .run = ca_crl_run,
    },
    {0},
};

const struct command cmd_ca = {
    .name = "ca",
    .summary = "The platform CA",
    .actions = ca_actions,
};
