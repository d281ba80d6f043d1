/* device_fill — `kmsctl device fill`; see device_fill.h. */
#include "device_fill.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <jansson.h>
#include <openssl/evp.h>

#include "b64.h"
#include "client.h"
#include "device_common.h"
#include "exitcodes.h"
#include "fileio.h"
#include "fillpkg.h"
#include "output.h"
#include "wipe.h"

#define PEM_MAX (64 * 1024)

const struct opt_spec device_fill_opts[] = {
    {"recipient-pub", 0, "PEMFILE", "station's X25519 or P-256 public key (PEM)"},
    {"plaintext", 0, NULL, "export the keys in clear instead (admin only)"},
    {"out", 0, "FILE", "new file to write (required; never overwritten)"},
    {"index", 0, "N", "export only key N, 0..255; repeat for more (default: all live)"},
    {"force", 0, NULL, "export again keys that were exported before"},
    {"family-only", 0, NULL, "a sub-device: only its gateway's local keys (the refill after a rotation)"},
    {"with-certificate", 0, NULL,
     "also a TLS identity: a key pair made by the platform and its certificate (sealed only)"},
    {"cert-validity", 0, "DAYS", "--with-certificate: validity in days, 1..3650 (default 365)"},
    {0},
};

/* One fill request, checked and ready to send. */
struct fill {
    const char *id, *out;
    bool plaintext, force, identity, family_only;
    long cert_days;
    long indices[ARGS_MAX_VALUES];
    size_t nindices;
    struct fill_recipient r; /* r.pem NULL with --plaintext */
};

static int parse_indices(const struct opt_values *o, struct fill *f)
{
    const char *vals[ARGS_MAX_VALUES];
    f->nindices = opt_get_all(o, "index", vals, ARGS_MAX_VALUES);
    if (f->nindices > ARGS_MAX_VALUES) /* args caps values at this; be sure */
        f->nindices = ARGS_MAX_VALUES;
    for (size_t i = 0; i < f->nindices; i++) {
        if (!arg_to_long(vals[i], 0, DEVICE_KEY_INDEX_MAX, &f->indices[i])) {
            out_error("--index must be a whole number from 0 to %d", DEVICE_KEY_INDEX_MAX);
            return EXIT_USAGE;
        }
    }
    return EXIT_OK;
}

int fill_recipient_load(const char *path, struct fill_recipient *r)
{
    char err[160];
    int rc = file_read("public key file", path, PEM_MAX, &r->pem, &r->pem_len);
    if (rc)
        return rc;
    EVP_PKEY *pub = fillpkg_parse_recipient(r->pem, r->pem_len, err, sizeof(err));
    if (!pub) {
        out_error("%s: %s", out_safe(path), err);
        return EXIT_USAGE;
    }
    r->curve = EVP_PKEY_is_a(pub, "X25519") ? FILLPKG_CURVE_X25519 : FILLPKG_CURVE_P256;
    if (fillpkg_fingerprint(pub, r->fingerprint) != 0) {
        out_error("cannot fingerprint the public key in %s", out_safe(path));
        rc = EXIT_INTERNAL;
    }
    EVP_PKEY_free(pub);
    return rc;
}

json_t *fill_recipient_json(const struct fill_recipient *r)
{
    json_t *pem = json_stringn(r->pem, r->pem_len);
    if (!pem) /* the PEM block parsed, so the rest is not UTF-8 text */
        out_error("the public key file is not UTF-8 text");
    return pem;
}

static int parse_fill(const struct invocation *inv, struct fill *f)
{
    const struct opt_values *o = &inv->local;
    const char *pub = opt_get(o, "recipient-pub");
    int rc;

    f->id = inv->pos[0];
    f->out = opt_get(o, "out");
    f->plaintext = opt_get(o, "plaintext") != NULL;
    f->force = opt_get(o, "force") != NULL;
    f->family_only = opt_get(o, "family-only") != NULL;
    f->identity = opt_get(o, "with-certificate") != NULL;
    if (opt_get(o, "cert-validity") && (!f->identity || !arg_to_long(opt_get(o, "cert-validity"), 1, 3650, &f->cert_days))) {
        out_error("--cert-validity goes with --with-certificate: a whole number of days from 1 to 3650");
        return EXIT_USAGE;
    }
    if (f->identity && f->plaintext) {
        out_error("--with-certificate needs --recipient-pub: a TLS key pair is delivered sealed only");
        return EXIT_USAGE;
    }
    if ((rc = device_check_id("device ID", f->id)))
        return rc;
    if (!pub == !f->plaintext) {
        out_error("give exactly one of --recipient-pub PEMFILE and --plaintext");
        return EXIT_USAGE;
    }
    if (!f->out || !*f->out) {
        out_error("--out FILE is required");
        return EXIT_USAGE;
    }
    if ((rc = parse_indices(o, f)))
        return rc;
    return pub ? fill_recipient_load(pub, &f->r) : EXIT_OK;
}

/* With --json the path is echoed as a JSON string; refuse it before the
 * request rather than fail once the keys count as exported. */
static int check_out_utf8(const char *out)
{
    json_t *s = json_string(out);
    bool ok = s != NULL;
    json_decref(s);
    if (ok)
        return EXIT_OK;
    out_error("with --json, --out must be a UTF-8 path");
    return EXIT_USAGE;
}

static int build_body(const struct fill *f, json_t **body)
{
    json_t *req = json_object(), *indices = NULL;
    int rc = EXIT_INTERNAL;

    *body = NULL;
    if (!req)
        goto oom;
    if (f->r.pem) {
        json_t *pem = fill_recipient_json(&f->r);
        if (!pem) {
            rc = EXIT_USAGE;
            goto cleanup;
        }
        if ((rc = device_put(req, "recipient_pub", pem)))
            goto cleanup;
    } else if ((rc = device_put(req, "plaintext", json_true()))) {
        goto cleanup;
    }
    if (f->nindices) {
        if (!(indices = json_array()))
            goto oom;
        for (size_t i = 0; i < f->nindices; i++)
            if (json_array_append_new(indices, json_integer(f->indices[i])) != 0)
                goto oom;
        rc = device_put(req, "indices", indices);
        indices = NULL;
        if (rc)
            goto cleanup;
    }
    if (f->force && (rc = device_put(req, "force", json_true())))
        goto cleanup;
    if (f->family_only && (rc = device_put(req, "family_only", json_true())))
        goto cleanup;
    if (f->identity &&
        (rc = device_put(req, "certificate",
                         f->cert_days ? json_pack("{s:I}", "validity_days", (json_int_t)f->cert_days)
                                      : json_true())))
        goto cleanup;
    *body = req;
    req = NULL;
    rc = EXIT_OK;
    goto cleanup;

oom:
    out_error("out of memory");
    rc = EXIT_INTERNAL;
cleanup:
    json_decref(indices);
    json_decref(req);
    return rc;
}

int fill_package_decode(const struct fill_recipient *r, const json_t *resp, uint8_t **pkg,
                        size_t *len)
{
    const json_t *b64 = json_object_get(resp, "package");
    const char *fp = json_string_value(json_object_get(resp, "recipient_fingerprint"));
    uint8_t *buf = NULL;

    *pkg = NULL;
    if (!json_is_string(b64) || !fp) {
        out_error("server response has no \"package\" or \"recipient_fingerprint\"");
        return EXIT_SERVER;
    }
    if (strcasecmp(fp, r->fingerprint) != 0) {
        out_error("server sealed the package to another key (fingerprint %.64s, ours %s)",
                  out_safe(fp), r->fingerprint);
        return EXIT_SERVER;
    }
    size_t cap = b64_decoded_max(json_string_length(b64));
    if (!(buf = malloc(cap))) {
        out_error("out of memory");
        return EXIT_INTERNAL;
    }
    long n = b64_decode(json_string_value(b64), json_string_length(b64), buf, cap);
    if (n < 0) {
        out_error("server sent a package that is not valid base64");
        goto bad;
    }
    if (n < 8 || memcmp(buf, FILLPKG_MAGIC, 4) != 0 || buf[4] != FILLPKG_VERSION ||
        buf[5] != r->curve) {
        out_error("server sent something that is not a fill package for this key");
        goto bad;
    }
    *pkg = buf;
    *len = (size_t)n;
    return EXIT_OK;

bad:
    free(buf);
    return EXIT_SERVER;
}

static int write_package(const struct fill *f, json_t *resp, int fd, size_t *written)
{
    uint8_t *pkg = NULL;
    int rc = fill_package_decode(&f->r, resp, &pkg, written);
    if (rc) {
        file_discard(fd, f->out);
        return rc;
    }
    rc = file_write_close(fd, f->out, pkg, *written);
    if (rc)
        file_discard(-1, f->out);
    free(pkg);
    return rc;
}

static int write_plaintext(const struct fill *f, json_t *resp, int fd, size_t *written)
{
    json_t *doc = json_object_get(resp, "plaintext");
    char *text = NULL;
    int rc = EXIT_SERVER;

    if (!json_is_object(doc)) {
        out_error("server response has no \"plaintext\" fill document");
        goto fail;
    }
    rc = EXIT_INTERNAL;
    text = json_dumps(doc, JSON_INDENT(2));
    wipe_json(doc); /* from here on the only copy we control is text */
    if (!text) {
        out_error("out of memory");
        goto fail;
    }
    size_t n = strlen(text);
    text[n] = '\n'; /* replaces the NUL: the file ends in a newline */
    *written = n + 1;
    rc = file_write_close(fd, f->out, text, *written);
    explicit_bzero(text, *written);
    free(text);
    if (rc)
        file_discard(-1, f->out);
    return rc;

fail:
    file_discard(fd, f->out);
    return rc;
}

static int print_result(const struct kmsctl_ctx *ctx, const struct fill *f, json_t *resp,
                        size_t written)
{
    if (ctx->json) {
        /* The keys went to the file; stdout gets only what describes it. */
        json_object_del(resp, "package");
        json_object_del(resp, "plaintext");
        int rc = device_put(resp, "out", json_string(f->out)); /* UTF-8: checked first */
        return rc ? rc : out_json(resp);
    }
    /* A table rather than out_kv: the path need not be UTF-8 here. */
    char size[32];
    char *indices = out_value_str(json_object_get(resp, "indices"));
    const char *rows[5][2] = {
        {"device:", f->id},
        {"indices:", indices},
        {"recipient_fingerprint:", f->plaintext ? "none (keys in clear)" : f->r.fingerprint},
        {"out:", f->out},
        {"size:", size},
    };
    struct table *t = table_new(2, NULL);
    int rc = EXIT_INTERNAL;

    snprintf(size, sizeof(size), "%zu bytes", written);
    if (!t || !indices) {
        out_error("out of memory");
        goto cleanup;
    }
    for (size_t i = 0; i < 5; i++)
        if ((rc = table_add(t, rows[i])))
            goto cleanup;
    rc = table_print(t, stdout);
    if (!rc && json_is_object(json_object_get(resp, "certificate")))
        out_note("certificate %s issued; its key pair is in the package (member \"tls\")",
                 out_string_or(json_object_get(json_object_get(resp, "certificate"), "serial"), "?"));

cleanup:
    table_free(t);
    free(indices);
    return rc;
}

int device_fill_run(const struct kmsctl_ctx *ctx, const struct invocation *inv)
{
    struct fill f = {0};
    json_t *req = NULL, *resp = NULL;
    char *path = NULL;
    size_t written = 0;
    int fd = -1;
    int rc = parse_fill(inv, &f);

    if (rc || (ctx->json && (rc = check_out_utf8(f.out))) || (rc = build_body(&f, &req)))
        goto cleanup;
    if (!(path = resource_path(&device_resource, f.id, "fill"))) {
        rc = EXIT_INTERNAL;
        goto cleanup;
    }
    /* Claim FILE before asking: once the server answers, the keys count
     * as exported and a second try needs --force. */
    if ((fd = file_create_new("output file", f.out)) < 0) {
        rc = EXIT_USAGE;
        goto cleanup;
    }
    rc = client_call(ctx, "POST", path, req, &resp);
    if (rc) {
        file_discard(fd, f.out);
        goto cleanup;
    }
    rc = f.plaintext ? write_plaintext(&f, resp, fd, &written)
                     : write_package(&f, resp, fd, &written);
    if (rc) {
        out_note("Nothing was written. The server may count these keys as exported now:\n"
                 "export them again with --force.");
        goto cleanup;
    }
    if (f.plaintext)
        out_note("WARNING: %s holds the device keys of '%s' IN CLEAR.\n"
                 "WARNING: load them over a trusted channel, then destroy the file (shred -u).",
                 out_safe(f.out), out_safe(f.id));
    rc = print_result(ctx, &f, resp, written);

cleanup:
    wipe_json(json_object_get(resp, "plaintext"));
    json_decref(resp);
    json_decref(req);
    free(path);
    free(f.r.pem);
    return rc;
}
