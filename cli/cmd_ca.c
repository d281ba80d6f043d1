/* cmd_ca — `kmsctl ca show [--pem]`, `kmsctl ca crl`, `kmsctl ca rotate`,
 * `kmsctl ca import --csr-out FILE | --chain FILE`: the platform CA
 * (docs/pki.md). */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

/* `ca rotate`: POST /v1/admin/ca/rotate; prints the versions after it. */
static int ca_rotate_run(const struct kmsctl_ctx *ctx, const struct invocation *inv)
{
    json_t *resp = NULL;
    int rc;
    (void)inv;
    rc = client_call(ctx, "POST", "/v1/admin/ca/rotate", NULL, &resp);
    return out_result(ctx->json, rc, resp, print_ca);
}

/* `ca import --csr-out FILE`: POST /v1/admin/ca/csr, the CSR to FILE;
 * `ca import --chain FILE`: POST /v1/admin/ca/import. */
static int ca_import_run(const struct kmsctl_ctx *ctx, const struct invocation *inv)
{
    const char *csr_out = opt_get(&inv->local, "csr-out"), *chain = opt_get(&inv->local, "chain");
    json_t *resp = NULL, *req = NULL;
    char *pem = NULL;
    size_t len = 0;
    int fd = -1, rc;

    if (!csr_out == !chain) {
        out_error("give --csr-out FILE (a new CA key pair and its CSR for your root to sign) "
                  "or --chain FILE (the CA certificate your root issued, then its issuers)");
        return EXIT_USAGE;
    }
    if (chain) {
        if ((rc = file_read("chain", chain, 64 * 1024, &pem, &len)))
            return rc;
        if (!(req = json_pack("{s:s%}", "chain", pem, len))) {
            free(pem);
            out_error("the chain file is not UTF-8 text");
            return EXIT_USAGE;
        }
        free(pem);
        rc = client_call(ctx, "POST", "/v1/admin/ca/import", req, &resp);
        json_decref(req);
        return out_result(ctx->json, rc, resp, print_ca);
    }
    if ((fd = file_create_new("CSR", csr_out)) < 0)
        return EXIT_USAGE;
    rc = client_call(ctx, "POST", "/v1/admin/ca/csr", NULL, &resp);
    const char *csr = json_string_value(json_object_get(resp, "csr"));
    if (rc == EXIT_OK && !csr) {
        out_error("server response has no csr");
        rc = EXIT_SERVER;
    }
    if (rc == EXIT_OK && (rc = file_write_close(fd, csr_out, csr, strlen(csr))) != EXIT_OK)
        file_discard(-1, csr_out);
    else if (rc != EXIT_OK)
        file_discard(fd, csr_out);
    if (rc == EXIT_OK && !ctx->json) {
        out_note("CA version %lld is pending; its CSR is in %s. Have your root sign it as a CA "
                 "(pathlen 0), then: kmsctl ca import --chain FILE",
                 (long long)json_integer_value(json_object_get(resp, "version")), csr_out);
        json_decref(resp);
        return EXIT_OK;
    }
    return out_result(ctx->json, rc, resp, NULL);
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

static const struct opt_spec import_opts[] = {
    {"csr-out", 0, "FILE", "make a new CA key pair in the token and write its CSR to a new FILE"},
    {"chain", 0, "FILE", "the CA certificate your root issued for it, then its issuers up to the root (PEM)"},
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
    {
        .sub = "rotate",
        .usage = "",
        .summary = "Make a new CA version (key pair in the token); the old one retires",
        .description =
            "The new version issues from now on; the retired one keeps verifying what it\n"
            "issued until its own certificate expires, and keeps its CRL. Devices must\n"
            "trust the new CA certificate (GET /v1/ca lists both) before their\n"
            "certificates are renewed under it. Admin tokens only (docs/pki.md,\n"
            "\"Rotating the CA\").\n"
            "\n"
            "Request: POST /v1/admin/ca/rotate\n",
        .run = ca_rotate_run,
    },
    {
        .sub = "import",
        .usage = "--csr-out FILE | --chain FILE",
        .summary = "Have your own root certify the platform CA (CSR out, chain in)",
        .description =
            "--csr-out: a new CA version, pending: its key pair is made in the token, its CSR\n"
            "written to a new FILE (asked again, the same CSR). Your CA signs it as a CA that\n"
            "signs certificates and CRLs. --chain: that certificate, then the ones above it\n"
            "up to your root (PEM); the pending version becomes the active one, the previous\n"
            "retires as with 'ca rotate'. Admin tokens only (docs/pki.md, \"Your own root\").\n"
            "\n"
            "Requests: POST /v1/admin/ca/csr, POST /v1/admin/ca/import\n",
        .opts = import_opts,
        .run = ca_import_run,
    },
    {0},
};

const struct command cmd_ca = {
    .name = "ca",
    .summary = "The platform CA",
    .actions = ca_actions,
};
