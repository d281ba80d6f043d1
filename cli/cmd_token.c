/* cmd_token — `kmsctl token create|list|revoke|cert`: /v1/admin/tokens. */
#include "command.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <jansson.h>

#include "client.h"
#include "exitcodes.h"
#include "fileio.h"
#include "output.h"
#include "resource.h"

#define EXPIRES_MAX_DAYS 3650L

static const char *const roles[] = {"admin", "operator", "auditor", "crypto", "release", NULL};

static int token_create(const struct kmsctl_ctx *ctx, const struct invocation *inv)
{
    const char *name = inv->pos[0];
    const char *role = opt_get(&inv->local, "role");
    const char *days_arg = opt_get(&inv->local, "expires-in-days");
    const char *acts_for = opt_get(&inv->local, "acts-for");
    json_t *req = NULL, *resp = NULL;
    int rc = EXIT_USAGE;

    /* All checks happen before the request: usage errors send nothing. */
    if (!*name) {
        out_error("token name must not be empty");
        goto cleanup;
    }
    if (!role) {
        out_error("--role is required (admin, operator, auditor, crypto or release)");
        goto cleanup;
    }
    if (!arg_is_one_of(role, roles)) {
        out_error("--role must be admin, operator, auditor, crypto or release");
        goto cleanup;
    }
    if ((strcmp(role, "crypto") == 0) != (acts_for != NULL)) {
        out_error(acts_for ? "--acts-for goes with --role crypto only"
                           : "--role crypto needs --acts-for DEVICE-ID (or @platform)");
        goto cleanup;
    }
    long days = 0;
    if (days_arg && !arg_to_long(days_arg, 1, EXPIRES_MAX_DAYS, &days)) {
        out_error("--expires-in-days must be a whole number from 1 to %ld", EXPIRES_MAX_DAYS);
        goto cleanup;
    }

    /* jansson refuses invalid UTF-8; running out of memory here is moot. */
    req = json_pack("{s:s, s:s}", "name", name, "role", role);
    if (!req) {
        out_error("token name must be valid UTF-8");
        goto cleanup;
    }
    if ((days_arg && json_object_set_new(req, "expires_in_days", json_integer(days))) ||
        (acts_for && json_object_set_new(req, "acts_for", json_string(acts_for)))) {
        out_error("out of memory");
        rc = EXIT_INTERNAL;
        goto cleanup;
    }

    rc = client_call(ctx, "POST", "/v1/admin/tokens", req, &resp);
    if (rc)
        goto cleanup;
    if (ctx->json) {
        rc = out_json(resp);
        goto cleanup;
    }

    const char *token = json_string_value(json_object_get(resp, "token"));
    if (!token || !*token) {
        out_error("server response has no token");
        rc = EXIT_SERVER;
        goto cleanup;
    }
    out_text(stdout, token);
    fputc('\n', stdout);
    /* stderr, so `kmsctl token create ... > file` captures only the token. */
    fprintf(stderr, "Created token '%s' with role %s, expires ", name, role);
    out_textf(stderr, "%s.\nThis token is shown only once: store it securely now.\n",
              out_string_or(json_object_get(resp, "expires_at"), "never"));
    rc = EXIT_OK;

cleanup:
    json_decref(req);
    json_decref(resp);
    return rc;
}

/* The tokens table; checked here, so --json prints any answer as it is. */
static int print_tokens(const json_t *resp)
{
    static const char *const headers[] = {"NAME",    "ROLE",      "STATE",   "CREATED",
                                          "EXPIRES", "LAST-USED", "ACTS-FOR"};
    static const char *const keys[] = {"name",       "role",         "state",   "created_at",
                                       "expires_at", "last_used_at", "acts_for"};
    const json_t *tokens = resource_items(resp, "tokens");
    return tokens ? out_table(tokens, 7, headers, keys) : EXIT_SERVER;
}

static int token_list(const struct kmsctl_ctx *ctx, const struct invocation *inv)
{
    (void)inv;
    return client_show(ctx, "/v1/admin/tokens", print_tokens);
}

/* "." and ".." would name another path once a server normalises it. */
static int check_name(const char *what, const char *s)
{
    /* A token pasted where its name goes must not travel in a URL: paths
     * end up in the server's and proxies' access logs. */
    if (strstr(s, "qkms_")) {
        out_error("%s looks like an admin token, not a name; not sent", what);
        return EXIT_USAGE;
    }
    if (*s && strcmp(s, ".") != 0 && strcmp(s, "..") != 0)
        return EXIT_OK;
    out_error("%s must not be empty, '.' or '..'", what);
    return EXIT_USAGE;
}

static const struct resource token_resource = {
    .base = "/v1/admin/tokens",
    .what = "token name",
    .check = check_name,
};

static int token_revoke(const struct kmsctl_ctx *ctx, const struct invocation *inv)
{
    const char *name = inv->pos[0];
    json_t *resp;
    int rc = resource_call(ctx, &token_resource, "DELETE", name, NULL, NULL, &resp);
    if (!rc && ctx->json)
        rc = out_json(resp);
    else if (!rc)
        out_textf(stdout, "Revoked token '%s' at %s.\n", name,
                  out_string_or(json_object_get(resp, "revoked_at"), "-"));
    json_decref(resp);
    return rc;
}

/* `token cert bind|list|unbind NAME [SHA256]`: client certificates of a
 * token (POST, GET /v1/admin/tokens/NAME/certificates, DELETE .../SHA256). */
static int print_tcert(const json_t *c)
{
    static const char *const keys[] = {"token", "sha256", "spki_sha256", "subject", "issuer",
                                       "not_before", "not_after", "created_at", "created_by",
                                       NULL};
    for (int i = 0; keys[i]; i++) {
        const json_t *v = json_object_get(c, keys[i]);
        char *s;
        if (!v)
            continue;
        if (!(s = out_value_str(v)))
            return EXIT_INTERNAL;
        out_textf(stdout, "%s: %s\n", keys[i], s);
        free(s);
    }
    return EXIT_OK;
}

static int print_tcerts(const json_t *resp)
{
    static const char *const cols[] = {"SHA256", "SUBJECT", "NOT-AFTER", "CREATED-BY"};
    static const char *const keys[] = {"sha256", "subject", "not_after", "created_by"};
    return out_table(json_object_get(resp, "certificates"), 4, cols, keys);
}

static int token_cert(const struct kmsctl_ctx *ctx, const struct invocation *inv)
{
    const char *verb = inv->pos[0], *name = inv->pos[1], *path = opt_get(&inv->local, "cert");
    bool bind = !strcmp(verb, "bind"), list = !strcmp(verb, "list"),
         unbind = !strcmp(verb, "unbind");
    json_t *req = NULL, *resp = NULL;
    char suffix[sizeof("certificates/") + 64];
    char *pem = NULL;
    size_t len = 0;
    int rc;

    if (!bind && !list && !unbind) {
        out_error("unknown cert action '%s' (bind, list or unbind)", out_safe(verb));
        return EXIT_USAGE;
    }
    if ((unbind ? 3 : 2) != inv->npos) {
        out_error("usage: token cert bind|list NAME, token cert unbind NAME SHA256");
        return EXIT_USAGE;
    }
    if (!bind != !path) {
        out_error(bind ? "--cert FILE is required (the certificate to bind, PEM)"
                       : "--cert goes with 'cert bind' only");
        return EXIT_USAGE;
    }
    if (list) {
        rc = resource_call(ctx, &token_resource, "GET", name, "certificates", NULL, &resp);
        return out_result(ctx->json, rc, resp, print_tcerts);
    }
    if (unbind) {
        const char *sha = inv->pos[2];
        if (strlen(sha) != 64 || strspn(sha, "0123456789abcdef") != 64) {
            out_error("SHA256 must be 64 lower-case hex digits (as 'token cert list' shows it)");
            return EXIT_USAGE;
        }
        snprintf(suffix, sizeof(suffix), "certificates/%s", sha);
        rc = resource_call(ctx, &token_resource, "DELETE", name, suffix, NULL, &resp);
        return out_result(ctx->json, rc, resp, print_tcert);
    }
    if ((rc = file_read("certificate", path, 16384, &pem, &len)))
        return rc;
    if (!(req = json_pack("{s:s%}", "certificate", pem, len))) {
        out_error("out of memory");
        free(pem);
        return EXIT_INTERNAL;
    }
    rc = resource_call(ctx, &token_resource, "POST", name, "certificates", req, &resp);
    json_decref(req);
    free(pem);
    return out_result(ctx->json, rc, resp, print_tcert);
}

static const struct opt_spec cert_opts[] = {
    {"cert", 0, "FILE", "bind: the client certificate (PEM)"},
    {0},
};

static const struct opt_spec create_opts[] = {
    {"role", 0, "ROLE", "admin, operator, auditor, crypto or release (required)"},
    {"expires-in-days", 0, "N", "expire after N days, 1..3650 (default: never)"},
    {"acts-for", 0, "PARTY", "crypto: the device ID it acts for, or @platform (required)"},
    {0},
};

static const struct action token_actions[] = {
    {
        .sub = "create",
        .usage = "NAME --role ROLE [--expires-in-days N] [--acts-for PARTY]",
        .summary = "Create an admin API token and print it once",
        .description = "The new token is printed alone on stdout, and only this once;\n"
                       "a note goes to stderr. With --json the whole response is printed.\n"
                       "A crypto token (the crypto services: random bytes, data sealed\n"
                       "under session keys) acts for one party of sessions: a device\n"
                       "(a back end registered as one) or @platform (docs/api.md).\n"
                       "\n"
                       "Request: POST /v1/admin/tokens\n",
        .opts = create_opts,
        .min_args = 1,
        .max_args = 1,
        .run = token_create,
    },
    {
        .sub = "list",
        .usage = "",
        .summary = "List admin API tokens (never their secrets)",
        .description = "Columns: NAME ROLE STATE CREATED EXPIRES LAST-USED ACTS-FOR; '-' means\n"
                       "none.\n"
                       "\n"
                       "Request: GET /v1/admin/tokens\n",
        .run = token_list,
    },
    {
        .sub = "revoke",
        .usage = "NAME",
        .summary = "Revoke an admin API token by name",
        .description = "Request: DELETE /v1/admin/tokens/NAME\n",
        .min_args = 1,
        .max_args = 1,
        .run = token_revoke,
    },
    {
        .sub = "cert",
        .usage = "bind NAME --cert FILE | list NAME | unbind NAME SHA256",
        .summary = "Client certificates that authenticate as a token",
        .description =
            "On an admin listener with admin_tls_client_auth, a TLS client whose\n"
            "certificate verifies (the platform CA, tls_client_ca_file) and is bound\n"
            "to a live token is that token, without a bearer token (docs/pki.md,\n"
            "\"Admin principals\"). A certificate is named by the SHA-256 of its DER.\n"
            "The --cert here is the certificate to bind; kmsctl's own TLS client\n"
            "certificate (--cert before the command) is another option.\n"
            "\n"
            "Requests: POST, GET /v1/admin/tokens/NAME/certificates,\n"
            "          DELETE /v1/admin/tokens/NAME/certificates/SHA256\n",
        .opts = cert_opts,
        .min_args = 2,
        .max_args = 3,
        .run = token_cert,
    },
    {0},
};

const struct command cmd_token = {
    .name = "token",
    .summary = "Manage admin API tokens",
    .actions = token_actions,
};
