/* device_cert — `kmsctl device cert issue|list` (device_cert.h). */
#include "device_cert.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <jansson.h>

#include "client.h"
#include "device_common.h"
#include "device_fill.h"
#include "exitcodes.h"
#include "fileio.h"
#include "output.h"
#include "resource.h"

#define CSR_MAX (16u * 1024u)

const struct opt_spec device_cert_opts[] = {
    {"csr", 0, "FILE", "issue: the device's certificate signing request (PEM)"},
    {"generate", 0, NULL, "issue: make the key pair on the platform instead of a CSR"},
    {"recipient-pub", 0, "PEMFILE",
     "issue --generate: the station's X25519 or P-256 public key the key is sealed to"},
    {"validity", 0, "DAYS", "issue: validity in days, 1..3650 (server default: 365)"},
    {"out", 0, "FILE", "issue: write the certificate (PEM) to a new FILE"},
    {"reason", 0, "REASON", "revoke: unspecified (default), keyCompromise, affiliationChanged, "
                            "superseded, cessationOfOperation, privilegeWithdrawn"},
    {"cert", 0, "FILE", "bind: a certificate issued elsewhere (PEM)"},
    {0},
};

/* The options an action takes; any other given is a usage error. */
static int only_opts(const struct invocation *inv, const char *verb, const char *const *allowed)
{
    static const char *const all[] = {"csr", "validity", "out", "reason", "cert",
                                      "generate", "recipient-pub", NULL};
    for (int i = 0; all[i]; i++) {
        bool ok = false;
        for (int j = 0; allowed[j]; j++)
            ok = ok || !strcmp(all[i], allowed[j]);
        if (!ok && opt_get(&inv->local, all[i])) {
            out_error("--%s does not go with 'cert %s'", all[i], verb);
            return EXIT_USAGE;
        }
    }
    return EXIT_OK;
}

/* ID and SERIAL: the serial path segment as the server stores it. */
static char *serial_suffix(const char *serial, const char *verb)
{
    size_t n = strlen(serial);
    char *p;
    if (n < 2 || n > 40 || strspn(serial, "0123456789abcdef") != n) {
        out_error("SERIAL must be 2 to 40 lower-case hex digits (as 'cert list' shows it)");
        return NULL;
    }
    if (!(p = malloc(sizeof("certificates/") + n + (verb ? strlen(verb) + 1 : 0)))) {
        out_error("out of memory");
        return NULL;
    }
    sprintf(p, "certificates/%s%s%s", serial, verb ? "/" : "", verb ? verb : "");
    return p;
}

static int print_cert(const json_t *c)
{
    static const char *const keys[] = {"serial", "device_id", "kind", "state", "ca_version",
                                       "subject", "not_before", "not_after", "sha256",
                                       "spki_sha256", "created_at", "created_by", "revoked_at",
                                       "revoke_reason", NULL};
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
    if (json_is_string(json_object_get(c, "certificate")))
        out_lines(stdout, json_string_value(json_object_get(c, "certificate")));
    return EXIT_OK;
}

static int print_list(const json_t *resp)
{
    static const char *const cols[] = {"SERIAL", "KIND", "STATE", "CA", "NOT-AFTER", "SHA256"};
    static const char *const keys[] = {"serial", "kind", "state", "ca_version", "not_after",
                                       "sha256"};
    return out_table(json_object_get(resp, "certificates"), 6, cols, keys);
}

/* `cert bind ID --cert FILE`: POST .../certificates {"certificate": PEM}. */
static int cert_bind(const struct kmsctl_ctx *ctx, const struct invocation *inv, const char *id)
{
    const char *path = opt_get(&inv->local, "cert");
    char *pem = NULL;
    size_t len = 0;
    json_t *req = NULL, *resp = NULL;
    int rc;

    if (!path) {
        out_error("--cert FILE is required (the certificate to bind, PEM)");
        return EXIT_USAGE;
    }
    if ((rc = file_read("certificate", path, CSR_MAX, &pem, &len)))
        return rc;
    if (!(req = json_pack("{s:s%}", "certificate", pem, len))) {
        out_error("out of memory");
        free(pem);
        return EXIT_INTERNAL;
    }
    rc = resource_call(ctx, &device_resource, "POST", id, "certificates", req, &resp);
    json_decref(req);
    free(pem);
    return out_result(ctx->json, rc, resp, print_cert);
}

/* `cert issue ID --generate --recipient-pub PEMFILE --out PKG`: the key
 * pair is made by the platform and comes back only in a fill package
 * sealed to the station's key (qkms-tls-identity/1; kmsctl fill open). */
static int cert_generate(const struct kmsctl_ctx *ctx, const struct invocation *inv,
                         const char *id)
{
    const char *validity = opt_get(&inv->local, "validity"), *out = opt_get(&inv->local, "out");
    const char *pub = opt_get(&inv->local, "recipient-pub");
    struct fill_recipient r = {0};
    json_t *req = NULL, *resp = NULL, *pem;
    uint8_t *pkg = NULL;
    size_t len = 0;
    long days = 0;
    int fd = -1, rc;

    if (!pub || !out) {
        out_error("--generate needs --recipient-pub PEMFILE (the station's key) and --out FILE "
                  "(the sealed package)");
        return EXIT_USAGE;
    }
    if (validity && !arg_to_long(validity, 1, 3650, &days)) {
        out_error("--validity must be a whole number of days from 1 to 3650");
        return EXIT_USAGE;
    }
    if ((rc = fill_recipient_load(pub, &r)))
        return rc;
    rc = EXIT_USAGE;
    if (!(pem = fill_recipient_json(&r)))
        goto out;
    rc = EXIT_INTERNAL;
    if (!(req = json_pack("{s:b,s:o}", "generate", 1, "recipient_pub", pem)) ||
        (days && json_object_set_new(req, "validity_days", json_integer(days)) != 0)) {
        out_error("out of memory");
        goto out;
    }
    if ((fd = file_create_new("package", out)) < 0) {
        rc = EXIT_USAGE;
        goto out;
    }
    rc = resource_call(ctx, &device_resource, "POST", id, "certificates", req, &resp);
    if (rc == EXIT_OK && (rc = fill_package_decode(&r, resp, &pkg, &len)) == EXIT_OK &&
        (rc = file_write_close(fd, out, pkg, len)) != EXIT_OK)
        file_discard(-1, out);
    else if (rc != EXIT_OK)
        file_discard(fd, out);
    fd = -1;
    if (rc == EXIT_OK) {
        json_object_del(resp, "package"); /* it went to the file */
        if (!ctx->json)
            out_note("certificate %s issued; its key pair is sealed in %s (kmsctl fill open)",
                     out_string_or(json_object_get(resp, "serial"), "?"), out);
    }
    rc = out_result(ctx->json, rc, resp, print_cert);
    resp = NULL;
out:
    json_decref(resp);
    json_decref(req);
    free(pkg);
    free(r.pem);
    return rc;
}

static int cert_issue(const struct kmsctl_ctx *ctx, const struct invocation *inv, const char *id)
{
    const char *csr_path = opt_get(&inv->local, "csr"), *validity = opt_get(&inv->local, "validity");
    const char *out = opt_get(&inv->local, "out");
    char *csr = NULL;
    size_t csr_len = 0;
    long days = 0;
    int fd = -1, rc;
    json_t *req = NULL, *resp = NULL;

    if (!csr_path) {
        out_error("--csr FILE is required (the device's certificate signing request, PEM)");
        return EXIT_USAGE;
    }
    if (validity && !arg_to_long(validity, 1, 3650, &days)) {
        out_error("--validity must be a whole number of days from 1 to 3650");
        return EXIT_USAGE;
    }
    if ((rc = file_read("CSR", csr_path, CSR_MAX, &csr, &csr_len)))
        return rc;
    rc = EXIT_INTERNAL;
    if (!(req = json_pack("{s:s%}", "csr", csr, csr_len)) ||
        (days && json_object_set_new(req, "validity_days", json_integer(days)) != 0)) {
        out_error("out of memory");
        goto out;
    }
    if (out && (fd = file_create_new("certificate", out)) < 0) {
        rc = EXIT_USAGE;
        goto out;
    }
    rc = resource_call(ctx, &device_resource, "POST", id, "certificates", req, &resp);
    if (fd >= 0) {
        const char *pem = json_string_value(json_object_get(resp, "certificate"));
        if (rc == EXIT_OK && !pem) {
            out_error("server response has no certificate");
            rc = EXIT_SERVER;
        }
        if (rc == EXIT_OK && (rc = file_write_close(fd, out, pem, strlen(pem))) != EXIT_OK)
            file_discard(-1, out);
        else if (rc != EXIT_OK)
            file_discard(fd, out); /* nothing issued, or nothing to write */
        fd = -1;
    }
    if (rc == EXIT_OK && out && !ctx->json) {
        out_note("certificate %s written to %s",
                 out_string_or(json_object_get(resp, "serial"), "?"), out);
        json_decref(resp);
        resp = NULL;
        goto out;
    }
    rc = out_result(ctx->json, rc, resp, print_cert);
    resp = NULL;
out:
    json_decref(resp);
    json_decref(req);
    free(csr);
    return rc;
}

int device_cert_run(const struct kmsctl_ctx *ctx, const struct invocation *inv)
{
    static const char *const issue_opts[] = {"csr", "validity", "out", "generate",
                                             "recipient-pub", NULL};
    static const char *const revoke_opts[] = {"reason", NULL};
    static const char *const bind_opts[] = {"cert", NULL};
    static const char *const none[] = {NULL};
    const char *verb = inv->pos[0], *id = inv->pos[1];
    bool is_issue = !strcmp(verb, "issue"), is_list = !strcmp(verb, "list"),
         is_show = !strcmp(verb, "show"), is_revoke = !strcmp(verb, "revoke"),
         is_bind = !strcmp(verb, "bind");
    json_t *resp = NULL, *body = NULL;
    char *suffix = NULL;
    int rc;

    if (!is_issue && !is_list && !is_show && !is_revoke && !is_bind) {
        out_error("unknown cert action '%s' (issue, bind, list, show or revoke)", out_safe(verb));
        return EXIT_USAGE;
    }
    if ((is_issue || is_list || is_bind) != (inv->npos == 2)) {
        out_error("usage: cert issue|bind|list ID, cert show|revoke ID SERIAL");
        return EXIT_USAGE;
    }
    if ((rc = only_opts(inv, verb, is_issue    ? issue_opts
                                   : is_revoke ? revoke_opts
                                   : is_bind   ? bind_opts
                                               : none)))
        return rc;
    if (is_issue && opt_get(&inv->local, "generate")) {
        if (opt_get(&inv->local, "csr")) {
            out_error("--csr and --generate exclude each other");
            return EXIT_USAGE;
        }
        return cert_generate(ctx, inv, id);
    }
    if (is_issue && opt_get(&inv->local, "recipient-pub")) {
        out_error("--recipient-pub goes with --generate");
        return EXIT_USAGE;
    }
    if (is_issue)
        return cert_issue(ctx, inv, id);
    if (is_bind)
        return cert_bind(ctx, inv, id);
    if (is_list) {
        rc = resource_call(ctx, &device_resource, "GET", id, "certificates", NULL, &resp);
        return out_result(ctx->json, rc, resp, print_list);
    }
    if (!(suffix = serial_suffix(inv->pos[2], is_revoke ? "revoke" : NULL)))
        return EXIT_USAGE;
    if (is_show) {
        rc = resource_call(ctx, &device_resource, "GET", id, suffix, NULL, &resp);
    } else {
        const char *reason = opt_get(&inv->local, "reason");
        rc = EXIT_INTERNAL;
        if (!(body = reason ? json_pack("{s:s}", "reason", reason) : json_object())) {
            out_error("out of memory");
            goto out;
        }
        rc = resource_call(ctx, &device_resource, "POST", id, suffix, body, &resp);
    }
    rc = out_result(ctx->json, rc, resp, print_cert);
out:
    json_decref(body);
    free(suffix);
    return rc;
}
