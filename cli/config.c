/* config — global settings from options, environment and defaults. */
#include "config.h"

#include <errno.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "exitcodes.h"
#include "output.h"

/* Longer than any token the server issues; guards against a wrong file. */
#define TOKEN_MAX 1024
#define TIMEOUT_MAX_S 86400L

const struct opt_spec config_global_opts[] = {
    {"addr", 0, "URL", "server URL or unix:SOCKET (env KMS_ADDR; " CONFIG_DEFAULT_ADDR ")"},
    {"token", 0, "TOKEN", "admin token (env KMS_TOKEN); prefer --token-file"},
    {"token-file", 0, "FILE", "file holding the admin token (env KMS_TOKEN_FILE)"},
    {"json", 0, NULL, "print the server's JSON response on stdout"},
    {"timeout", 0, "SECONDS", "seconds for the whole request, 1..86400 (default 10)"},
    {"cacert", 0, "FILE", "CA certificates for https; TLS is always verified"},
    {"cert", 0, "FILE", "client certificate (PEM) for an admin listener that asks for one"},
    {"key", 0, "FILE", "the --cert certificate's private key (PEM; default: in the --cert file)"},
    {"verbose", 'v', NULL, "log method, URL and status to stderr, never the token"},
    {"help", 'h', NULL, "show help (also after any command or subcommand)"},
    {"version", 0, NULL, "print the version and exit"},
    {"man", 0, NULL, "print this manual (man(7) format; kmsctl --man | man -l -) and exit"},
    {0},
};

static const char *env_nonempty(const char *name)
{
    const char *v = getenv(name);
    return v && *v ? v : NULL;
}

/* unix:PATH: HTTP over kmsd's admin unix socket; the URL's host is then
 * only the Host header. */
static int resolve_unix(const char *src, const char *path, struct kmsctl_ctx *ctx)
{
    if (!*path) {
        out_error("%s: unix: needs the socket's path (unix:/run/qkms/admin.sock)", src);
        return EXIT_USAGE;
    }
    for (const char *p = path; *p; p++) {
        if ((unsigned char)*p < 0x20 || *p == 0x7f) {
            out_error("%s must not contain control characters", src);
            return EXIT_USAGE;
        }
    }
    ctx->unix_path = strdup(path);
    ctx->addr = strdup("http://localhost");
    if (!ctx->unix_path || !ctx->addr) {
        out_error("out of memory");
        return EXIT_INTERNAL;
    }
    return EXIT_OK;
}

static int resolve_addr(const char *flag, struct kmsctl_ctx *ctx)
{
    const char *src = flag ? "--addr" : "KMS_ADDR";
    const char *addr = flag ? flag : env_nonempty("KMS_ADDR");
    if (!addr) {
        addr = CONFIG_DEFAULT_ADDR;
        src = "default address";
    }
    if (strncmp(addr, "unix:", 5) == 0)
        return resolve_unix(src, addr + 5, ctx);

    size_t scheme = strncasecmp(addr, "http://", 7) == 0    ? 7
                    : strncasecmp(addr, "https://", 8) == 0 ? 8
                                                            : 0;
    if (!scheme || addr[scheme] == '\0' || addr[scheme] == '/') {
        out_error("%s must be an http:// or https:// URL with a host, or unix:PATH", src);
        return EXIT_USAGE;
    }
    for (const char *p = addr; *p; p++) {
        if ((unsigned char)*p <= 0x20 || *p == 0x7f) {
            out_error("%s must not contain spaces or control characters", src);
            return EXIT_USAGE;
        }
    }

    ctx->addr = strdup(addr);
    if (!ctx->addr) {
        out_error("out of memory");
        return EXIT_INTERNAL;
    }
    /* Paths are appended as "/v1/..."; avoid "//v1" which some routers reject. */
    size_t n = strlen(ctx->addr);
    while (n > scheme + 1 && ctx->addr[n - 1] == '/')
        ctx->addr[--n] = '\0';
    return EXIT_OK;
}

int config_resolve(const struct opt_values *g, struct kmsctl_ctx *ctx)
{
    memset(ctx, 0, sizeof(*ctx));
    ctx->json = opt_get(g, "json") != NULL;
    ctx->verbose = opt_get(g, "verbose") != NULL;
    ctx->token = opt_get(g, "token");
    ctx->token_file = opt_get(g, "token-file");
    ctx->cacert = opt_get(g, "cacert");
    ctx->cert = opt_get(g, "cert");
    ctx->key = opt_get(g, "key");
    ctx->timeout_s = CONFIG_DEFAULT_TIMEOUT_S;

    int rc = resolve_addr(opt_get(g, "addr"), ctx);
    if (rc)
        return rc;

    const char *timeout = opt_get(g, "timeout");
    if (timeout && !arg_to_long(timeout, 1, TIMEOUT_MAX_S, &ctx->timeout_s)) {
        out_error("--timeout must be a whole number of seconds from 1 to %ld", TIMEOUT_MAX_S);
        return EXIT_USAGE;
    }
    if (ctx->token && ctx->token_file) {
        out_error("--token and --token-file cannot be used together");
        return EXIT_USAGE;
    }
    if (ctx->token && !*ctx->token) {
        out_error("--token must not be empty");
        return EXIT_USAGE;
    }
    /* Checked here so a typo is a usage error, not a TLS failure later. */
    if (ctx->cacert && access(ctx->cacert, R_OK) != 0) {
        out_error("--cacert %s: %s", out_safe(ctx->cacert), strerror(errno));
        return EXIT_USAGE;
    }
    if (ctx->key && !ctx->cert) {
        out_error("--key goes with --cert");
        return EXIT_USAGE;
    }
    for (int i = 0; i < 2; i++) {
        const char *f = i ? ctx->key : ctx->cert;
        if (f && access(f, R_OK) != 0) {
            out_error("--%s %s: %s", i ? "key" : "cert", out_safe(f), strerror(errno));
            return EXIT_USAGE;
        }
    }
    if (ctx->cert && (ctx->unix_path || strncasecmp(ctx->addr, "https://", 8) != 0)) {
        out_error("--cert needs an https:// address");
        return EXIT_USAGE;
    }
    return EXIT_OK;
}

void config_release(struct kmsctl_ctx *ctx)
{
    free(ctx->addr);
    ctx->addr = NULL;
    free(ctx->unix_path);
    ctx->unix_path = NULL;
}

/* One printable word: anything else would corrupt the Authorization header. */
static bool token_ok(const char *t)
{
    if (!*t)
        return false;
    for (const unsigned char *p = (const unsigned char *)t; *p; p++)
        if (*p <= 0x20 || *p >= 0x7f)
            return false;
    return true;
}

/* Reads path into a fresh heap string; EXIT_USAGE if missing or unusable. */
static int read_token_file(const char *path, const char *src, char **out)
{
    char buf[TOKEN_MAX + 2];
    int rc = EXIT_USAGE;
    FILE *f = fopen(path, "re");
    if (!f) {
        out_error("cannot read admin token file %s (%s): %s", out_safe(path), src, strerror(errno));
        goto cleanup;
    }
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    if (ferror(f)) {
        out_error("cannot read admin token file %s (%s): read error", out_safe(path), src);
        goto cleanup;
    }
    if (n > TOKEN_MAX) {
        out_error("admin token file %s is too large to be a token", path);
        goto cleanup;
    }
    buf[n] = '\0';
    while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r' || buf[n - 1] == ' ' ||
                     buf[n - 1] == '\t'))
        buf[--n] = '\0';
    if (!token_ok(buf)) {
        out_error("admin token file %s is empty or holds more than one printable word", path);
        goto cleanup;
    }
    *out = strdup(buf);
    rc = *out ? EXIT_OK : EXIT_INTERNAL;
    if (rc)
        out_error("out of memory");

cleanup:
    explicit_bzero(buf, sizeof(buf));
    if (f)
        fclose(f);
    return rc;
}

int config_load_token(const struct kmsctl_ctx *ctx, char **out)
{
    *out = NULL;
    const char *literal = NULL, *literal_src = NULL;

    if (ctx->token) {
        literal = ctx->token;
        literal_src = "--token";
    } else if (ctx->token_file) {
        return read_token_file(ctx->token_file, "--token-file", out);
    } else if ((literal = env_nonempty("KMS_TOKEN"))) {
        literal_src = "KMS_TOKEN";
    } else {
        const char *file = env_nonempty("KMS_TOKEN_FILE");
        if (file)
            return read_token_file(file, "KMS_TOKEN_FILE", out);
        /* A client certificate authenticates by itself: a token found
         * lying around (the bootstrap token) would be another principal. */
        if (ctx->cert)
            return EXIT_OK;

        const char *state = env_nonempty("QKMS_STATE");
        if (state) {
            char path[PATH_MAX];
            int len = snprintf(path, sizeof(path), "%s/admin.token", state);
            if (len > 0 && (size_t)len < sizeof(path) && access(path, F_OK) == 0)
                return read_token_file(path, "$QKMS_STATE", out);
        }
        if (access("var/admin.token", F_OK) == 0)
            return read_token_file("var/admin.token", "default file", out);

        out_error("no admin token: use --token-file FILE, --token TOKEN, KMS_TOKEN_FILE or "
                  "KMS_TOKEN (looked for $QKMS_STATE/admin.token and ./var/admin.token)");
        return EXIT_USAGE;
    }

    if (!token_ok(literal)) {
        out_error("%s must be one printable word", literal_src);
        return EXIT_USAGE;
    }
    *out = strdup(literal);
    if (!*out) {
        out_error("out of memory");
        return EXIT_INTERNAL;
    }
    return EXIT_OK;
}

void config_token_free(char *token)
{
    if (token) {
        explicit_bzero(token, strlen(token));
        free(token);
    }
}
