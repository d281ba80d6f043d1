/* cmd_firmware — `kmsctl firmware keys list|create|rotate`: product lines'
 * firmware signing keys, in the token with certificates from the platform
 * CA (docs/firmware.md; docs/api.md, "Firmware signing keys"); `firmware
 * groups list|create|rotate|destroy`: groups' firmware keys ("Group
 * firmware keys"); `firmware sign`: a release into a package ("Signing
 * releases"). */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>

#include <jansson.h>

#include "args.h"
#include "client.h"
#include "command.h"
#include "exitcodes.h"
#include "fileio.h"
#include "output.h"
#include "signkeys.h"

static const struct signkeys FIRMWARE_KEYS = {"/v1/admin/firmware/keys", "product", "PRODUCT"};

static int keys_run(const struct kmsctl_ctx *ctx, const struct invocation *inv)
{
    return signkeys_run(ctx, inv, &FIRMWARE_KEYS);
}

static int print_group_keys(const json_t *doc)
{
    static const char *const cols[] = {"GROUP", "KEY-ID", "STATE", "CREATED-AT", "SUPERSEDED-AT"};
    static const char *const keys[] = {"group", "key_id", "state", "created_at", "superseded_at"};
    return out_table(json_object_get(doc, "keys"), 5, cols, keys);
}

static int print_group_key(const json_t *k)
{
    static const char *const fields[] = {"group",      "key_id",     "state",         "master_version",
                                         "created_at", "created_by", "superseded_at", NULL};
    for (int i = 0; fields[i]; i++) {
        char *v = out_value_str(json_object_get(k, fields[i]));
        if (!v)
            return EXIT_INTERNAL;
        out_textf(stdout, "%s: %s\n", fields[i], v);
        free(v);
    }
    return EXIT_OK;
}

static int print_destroyed(const json_t *k)
{
    out_textf(stdout, "Destroyed key %s of group %s.\n",
              json_string_value(json_object_get(k, "key_id")) ?: "",
              json_string_value(json_object_get(k, "group")) ?: "");
    return EXIT_OK;
}

static bool name_ok(const char *s)
{
    return strspn(s, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-") ==
           strlen(s);
}

static int groups_run(const struct kmsctl_ctx *ctx, const struct invocation *inv)
{
    const char *verb = inv->pos[0], *group = inv->npos > 1 ? inv->pos[1] : NULL,
               *kid = inv->npos > 2 ? inv->pos[2] : NULL;
    bool list = !strcmp(verb, "list"), create = !strcmp(verb, "create"),
         rotate = !strcmp(verb, "rotate"), destroy = !strcmp(verb, "destroy");
    char path[256];
    json_t *req = NULL, *resp = NULL;
    int rc;

    if (!list && !create && !rotate && !destroy) {
        out_error("unknown groups action '%s' (list, create, rotate or destroy)", out_safe(verb));
        return EXIT_USAGE;
    }
    if ((!list && !group) || (destroy != !!kid)) {
        out_error(destroy ? "destroy needs a GROUP and a KEY_ID" : "%s needs a GROUP%s", verb,
                  list ? " at most" : "");
        return EXIT_USAGE;
    }
    /* Group names are [A-Za-z0-9._-], key IDs hex: nothing to escape in a
     * path or a query; anything else is the server's to refuse. */
    if ((group && !name_ok(group)) ||
        (kid && strspn(kid, "0123456789abcdefABCDEF") != strlen(kid))) {
        out_error("GROUP must be of A-Z a-z 0-9 . _ -, KEY_ID hex");
        return EXIT_USAGE;
    }
    if (list) {
        snprintf(path, sizeof(path), "/v1/admin/firmware/groups%s%s", group ? "?group=" : "",
                 group ? group : "");
        return client_show(ctx, path, print_group_keys);
    }
    if (create) {
        req = json_pack("{s:s}", "group", group);
        rc = client_call(ctx, "POST", "/v1/admin/firmware/groups", req, &resp);
    } else if (rotate) {
        snprintf(path, sizeof(path), "/v1/admin/firmware/groups/%s/rotate", group);
        req = json_object();
        rc = client_call(ctx, "POST", path, req, &resp);
    } else {
        snprintf(path, sizeof(path), "/v1/admin/firmware/groups/%s/keys/%s", group, kid);
        rc = client_call(ctx, "DELETE", path, NULL, &resp);
    }
    json_decref(req);
    return out_result(ctx->json, rc, resp, destroy ? print_destroyed : print_group_key);
}

/* `firmware sign IMAGE`: the image streamed up, the package streamed down
 * into OUT.part, renamed to OUT once whole. */
static int sign_run(const struct kmsctl_ctx *ctx, const struct invocation *inv)
{
    const char *image = inv->pos[0], *product = opt_get(&inv->local, "product"),
               *version = opt_get(&inv->local, "version"),
               *devices = opt_get(&inv->local, "device"),
               *groups = opt_get(&inv->local, "group"),
               *counter = opt_get(&inv->local, "counter"),
               *nb = opt_get(&inv->local, "not-before"), *out = opt_get(&inv->local, "out"),
               *approval = opt_get(&inv->local, "approval");
    char *query = NULL, *path = NULL, *list = NULL, *tok, *save = NULL, tmp[4096];
    const char *pid = "", *cnt = "";
    struct curl_slist *hdrs = NULL, *h;
    FILE *in = NULL, *pkg = NULL;
    struct stat sb;
    long v;
    int rc = EXIT_USAGE, fd;

    if (!product || !version || (!devices && !groups) || !out) {
        out_error("sign needs --product, --version, --device or --group (or both) and --out");
        return EXIT_USAGE;
    }
    if ((counter && !arg_to_long(counter, 1, 9007199254740991L, &v)) ||
        (nb && !arg_to_long(nb, 0, 1099511627776L, &v))) {
        out_error("--counter must be from 1 to 2^53 - 1, --not-before Unix seconds");
        return EXIT_USAGE;
    }
    if (snprintf(tmp, sizeof(tmp), "%s.part", out) >= (int)sizeof(tmp)) {
        out_error("--out: path too long");
        return EXIT_USAGE;
    }
    if (!(in = fopen(image, "rb")) || fstat(fileno(in), &sb) != 0 || !S_ISREG(sb.st_mode)) {
        out_error("%s: %s", out_safe(image), in ? "not a regular file" : strerror(errno));
        goto done;
    }
    if (client_query_add(&query, "product", product) || client_query_add(&query, "version", version) ||
        (counter && client_query_add(&query, "counter", counter)) ||
        (nb && client_query_add(&query, "not_before", nb)) ||
        (approval && client_query_add(&query, "approval", approval))) {
        rc = EXIT_INTERNAL;
        goto done;
    }
    for (int g = 0; g < 2; g++) {
        const char *names = g ? groups : devices;
        if (!names)
            continue;
        free(list);
        save = NULL;
        if (!(list = strdup(names))) {
            rc = EXIT_INTERNAL;
            goto done;
        }
        for (tok = strtok_r(list, ",", &save); tok; tok = strtok_r(NULL, ",", &save))
            if (client_query_add(&query, g ? "group" : "device", tok)) {
                rc = EXIT_INTERNAL;
                goto done;
            }
    }
    if (asprintf(&path, "/v1/admin/firmware/packages%s", query) < 0) {
        path = NULL;
        rc = EXIT_INTERNAL;
        goto done;
    }
    /* Made here and now: a staging file already there is someone else's. */
    if ((fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644)) < 0) {
        out_error("%s: %s", out_safe(tmp), strerror(errno));
        goto done;
    }
    if (!(pkg = fdopen(fd, "wb"))) {
        out_error("%s: %s", out_safe(tmp), strerror(errno));
        close(fd);
        unlink(tmp);
        goto done;
    }
    rc = client_upload(ctx, path, in, (uint64_t)sb.st_size, pkg, &hdrs, NULL);
    for (h = hdrs; h; h = h->next) {
        if (!strncasecmp(h->data, "Qkms-Package-Id: ", 17))
            pid = h->data + 17;
        else if (!strncasecmp(h->data, "Qkms-Counter: ", 14))
            cnt = h->data + 14;
    }
    if ((fflush(pkg) != 0 || fsync(fileno(pkg)) != 0) && rc == EXIT_OK) {
        out_error("%s: %s", out_safe(tmp), strerror(errno));
        rc = EXIT_INTERNAL;
    }
    if (fclose(pkg) != 0 && rc == EXIT_OK) {
        out_error("%s: %s", out_safe(tmp), strerror(errno));
        rc = EXIT_INTERNAL;
    }
    pkg = NULL;
    /* link, not rename: an existing PKG is never replaced. */
    if (rc == EXIT_OK && link(tmp, out) != 0) {
        out_error("%s: %s", out_safe(out), strerror(errno));
        rc = EXIT_INTERNAL;
    }
    unlink(tmp);
    if (rc != EXIT_OK) {
        if (*cnt) /* signed, counter spent, but not received whole */
            out_error("the release was signed (counter %s, package %s) but its package was not "
                      "received whole: sign again (the next counter)",
                      out_safe(cnt), out_safe(pid));
        goto done;
    }
    {
        if (ctx->json) {
            json_t *j = json_pack("{s:s,s:s,s:s,s:s,s:s}", "product", product, "version",
                                  version, "counter", cnt, "package_id", pid, "out", out);
            rc = j ? out_json(j) : EXIT_INTERNAL;
            json_decref(j);
        } else {
            out_textf(stdout, "Signed %s %s (counter %s, package %s) into %s.\n", product,
                      version, cnt, pid, out);
        }
    }
done:
    if (pkg)
        fclose(pkg);
    if (in)
        fclose(in);
    curl_slist_free_all(hdrs);
    free(list);
    free(query);
    free(path);
    return rc;
}

/* `firmware verify PKG`: the package streamed up, checked by kmsd as its
 * targets would check it; the verdict printed. */
static int verify_run(const struct kmsctl_ctx *ctx, const struct invocation *inv)
{
    const char *path = inv->pos[0];
    FILE *in = NULL, *ans = NULL;
    char *buf = NULL;
    size_t blen = 0;
    struct stat sb;
    json_t *doc = NULL;
    int rc;

    if (!(in = fopen(path, "rb")) || fstat(fileno(in), &sb) != 0 || !S_ISREG(sb.st_mode)) {
        out_error("%s: %s", out_safe(path), in ? "not a regular file" : strerror(errno));
        if (in)
            fclose(in);
        return EXIT_USAGE;
    }
    if (!(ans = open_memstream(&buf, &blen))) {
        fclose(in);
        return EXIT_INTERNAL;
    }
    rc = client_upload(ctx, "/v1/admin/firmware/packages/verify", in, (uint64_t)sb.st_size, ans,
                       NULL, NULL);
    fclose(in);
    if (fclose(ans) != 0 && rc == EXIT_OK)
        rc = EXIT_INTERNAL;
    if (rc != EXIT_OK)
        goto out;
    if (!(doc = json_loadb(buf ? buf : "", blen, 0, NULL)) ||
        !json_is_boolean(json_object_get(doc, "valid"))) {
        out_error("the answer is not a verdict");
        rc = EXIT_SERVER;
        goto out;
    }
    if (ctx->json) {
        rc = out_json(doc);
    } else if (json_is_true(json_object_get(doc, "valid"))) {
        const json_t *w = json_object_get(doc, "opened_with");
        char cnt[24]; /* out_textf knows %s only */
        snprintf(cnt, sizeof(cnt), "%lld", (long long)json_integer_value(json_object_get(doc, "counter")));
        out_textf(stdout,
                  "Valid: %s %s (counter %s, package %s), signed by %s, opened with %s %s.\n",
                  json_string_value(json_object_get(doc, "product")) ?: "",
                  json_string_value(json_object_get(doc, "version")) ?: "", cnt,
                  json_string_value(json_object_get(doc, "package_id")) ?: "",
                  json_string_value(json_object_get(doc, "signer")) ?: "",
                  json_string_value(json_object_get(w, "kind")) ?: "",
                  json_string_value(json_object_get(w, "group"))
                      ?: json_string_value(json_object_get(w, "device_id")) ?: "");
    } else {
        out_textf(stdout, "Invalid (%s): %s\n",
                  json_string_value(json_object_get(doc, "check")) ?: "",
                  json_string_value(json_object_get(doc, "message")) ?: "");
    }
    if (rc == EXIT_OK && !json_is_true(json_object_get(doc, "valid")))
        rc = EXIT_REFUSED;
out:
    json_decref(doc);
    free(buf);
    return rc;
}

static const struct opt_spec sign_opts[] = {
    {"product", 0, "P", "the product line (its active firmware key signs)"},
    {"version", 0, "V", "the release's name (1-64 printable ASCII)"},
    {"device", 0, "ID[,ID]", "the target devices"},
    {"group", 0, "G[,G]", "the target groups (their firmware keys; 100 targets in all)"},
    {"counter", 0, "N", "anti-rollback counter (default: the product's last + 1)"},
    {"not-before", 0, "T", "Unix seconds before which devices do not install it (default: now)"},
    {"out", 0, "PKG", "where the package goes (written whole, or not at all; never replaced)"},
    {"approval", 0, "ID", "the release's approval (products with two approvers)"},
    {0},
};

static int print_approvals(const json_t *doc)
{
    static const char *const cols[] = {"ID", "PRODUCT", "VERSION", "STATE", "REQUESTED-BY",
                                       "APPROVED-BY", "EXPIRES-AT"};
    static const char *const keys[] = {"id", "product", "version", "state", "requested_by",
                                       "approved_by", "expires_at"};
    return out_table(json_object_get(doc, "approvals"), 7, cols, keys);
}

static int print_approval(const json_t *a)
{
    static const char *const fields[] = {"id", "product", "version", "state", "image_size",
                                         "image_sha256", "targets", "counter", "not_before",
                                         "requested_by", "approved_by", "expires_at", NULL};
    for (int i = 0; fields[i]; i++) {
        char *v = out_value_str(json_object_get(a, fields[i]));
        if (!v)
            return EXIT_INTERNAL;
        out_textf(stdout, "%s: %s\n", fields[i], v);
        free(v);
    }
    return EXIT_OK;
}

/* A comma-separated list as a JSON array (NULL list: empty). */
static json_t *csv_array(const char *list)
{
    json_t *a = json_array();
    char *copy = list ? strdup(list) : NULL, *tok, *save = NULL;
    if (list && !copy) {
        json_decref(a);
        return NULL;
    }
    for (tok = copy ? strtok_r(copy, ",", &save) : NULL; a && tok; tok = strtok_r(NULL, ",", &save))
        json_array_append_new(a, json_string(tok));
    free(copy);
    return a;
}

/* `firmware approvals list | request IMAGE ... | approve ID`. */
static int approvals_run(const struct kmsctl_ctx *ctx, const struct invocation *inv)
{
    const char *verb = inv->pos[0], *arg = inv->npos > 1 ? inv->pos[1] : NULL,
               *product = opt_get(&inv->local, "product"),
               *version = opt_get(&inv->local, "version"),
               *devices = opt_get(&inv->local, "device"), *groups = opt_get(&inv->local, "group"),
               *counter = opt_get(&inv->local, "counter"),
               *nb = opt_get(&inv->local, "not-before");
    char path[256], hex[65];
    unsigned long long size = 0;
    json_t *req = NULL, *resp = NULL;
    long c = 0, n = 0;
    int rc;

    if (!strcmp(verb, "list")) {
        if (arg) {
            out_error("list takes no argument (--product P)");
            return EXIT_USAGE;
        }
        if (product && strspn(product, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                                       "0123456789._-") != strlen(product)) {
            out_error("--product must be of A-Z a-z 0-9 . _ -");
            return EXIT_USAGE;
        }
        snprintf(path, sizeof(path), "/v1/admin/firmware/approvals%s%s",
                 product ? "?product=" : "", product ? product : "");
        return client_show(ctx, path, print_approvals);
    }
    if (!strcmp(verb, "approve")) {
        if (!arg || strspn(arg, "0123456789abcdefABCDEF-") != strlen(arg) || strlen(arg) != 36) {
            out_error("approve needs the approval's ID (a UUID)");
            return EXIT_USAGE;
        }
        snprintf(path, sizeof(path), "/v1/admin/firmware/approvals/%s/approve", arg);
        req = json_object();
        rc = client_call(ctx, "POST", path, req, &resp);
        json_decref(req);
        return out_result(ctx->json, rc, resp, print_approval);
    }
    if (strcmp(verb, "request") != 0) {
        out_error("unknown approvals action '%s' (list, request or approve)", out_safe(verb));
        return EXIT_USAGE;
    }
    if (!arg || !product || !version || (!devices && !groups)) {
        out_error("request needs IMAGE, --product, --version and --device or --group");
        return EXIT_USAGE;
    }
    if ((counter && !arg_to_long(counter, 1, 9007199254740991L, &c)) ||
        (nb && !arg_to_long(nb, 0, 1099511627776L, &n))) {
        out_error("--counter must be from 1 to 2^53 - 1, --not-before Unix seconds");
        return EXIT_USAGE;
    }
    /* The image is hashed here: approvers approve its SHA-256, and the
     * image goes up once, when it is signed. */
    if ((rc = file_sha256("image", arg, hex, &size)) != EXIT_OK)
        return rc;
    req = json_pack("{s:s,s:s,s:I,s:s,s:o,s:o}", "product", product, "version", version,
                    "image_size", (json_int_t)size, "image_sha256", hex, "devices",
                    csv_array(devices), "groups", csv_array(groups));
    if (req && counter)
        json_object_set_new(req, "counter", json_integer(c));
    if (req && nb)
        json_object_set_new(req, "not_before", json_integer(n));
    if (!req)
        return EXIT_INTERNAL;
    rc = client_call(ctx, "POST", "/v1/admin/firmware/approvals", req, &resp);
    json_decref(req);
    return out_result(ctx->json, rc, resp, print_approval);
}

static const struct opt_spec approvals_opts[] = {
    {"product", 0, "P", "the product line (list: only its approvals)"},
    {"version", 0, "V", "request: the release's name"},
    {"device", 0, "ID[,ID]", "request: the target devices"},
    {"group", 0, "G[,G]", "request: the target groups"},
    {"counter", 0, "N", "request: fix the anti-rollback counter"},
    {"not-before", 0, "T", "request: fix not_before (Unix seconds)"},
    {0},
};

static int print_rule(const json_t *r)
{
    char n[8];
    snprintf(n, sizeof(n), "%lld", (long long)json_integer_value(json_object_get(r, "approvals")));
    out_textf(stdout, "%s: %s approver(s) per release.\n",
              json_string_value(json_object_get(r, "product")) ?: "", n);
    return EXIT_OK;
}

static int print_rules(const json_t *doc)
{
    static const char *const cols[] = {"PRODUCT", "APPROVALS", "UPDATED-AT", "UPDATED-BY"};
    static const char *const keys[] = {"product", "approvals", "updated_at", "updated_by"};
    return out_table(json_object_get(doc, "products"), 4, cols, keys);
}

/* `firmware rule list | set PRODUCT --approvals N`. */
static int rule_run(const struct kmsctl_ctx *ctx, const struct invocation *inv)
{
    const char *verb = inv->pos[0], *product = inv->npos > 1 ? inv->pos[1] : NULL,
               *ap = opt_get(&inv->local, "approvals");
    char path[256];
    json_t *req, *resp = NULL;
    long n;
    int rc;

    if (!strcmp(verb, "list") && !product && !ap)
        return client_show(ctx, "/v1/admin/firmware/products", print_rules);
    if (strcmp(verb, "set") != 0 || !product || !ap || !arg_to_long(ap, 1, 2, &n) ||
        strspn(product, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-") !=
            strlen(product)) {
        out_error("usage: firmware rule list | firmware rule set PRODUCT --approvals 1|2");
        return EXIT_USAGE;
    }
    snprintf(path, sizeof(path), "/v1/admin/firmware/products/%s/rule", product);
    req = json_pack("{s:i}", "approvals", (int)n);
    rc = client_call(ctx, "POST", path, req, &resp);
    json_decref(req);
    return out_result(ctx->json, rc, resp, print_rule);
}

static const struct opt_spec rule_opts[] = {
    {"approvals", 0, "N", "set: 1 (the signer) or 2 (a request and a second approver)"},
    {0},
};


static const struct action firmware_actions[] = {
    {
        .sub = "rule",
        .usage = "list | set PRODUCT --approvals 1|2",
        .summary = "Approvals a product's releases need",
        .description =
            "1 (the default): the release token that signs. 2: a release token requests\n"
            "approval of the release (firmware approvals request), a second, distinct\n"
            "release token approves it, and the signature names the approval.\n"
            "set: admin tokens; list: any admin role and release.\n"
            "\n"
            "Requests: GET /v1/admin/firmware/products,\n"
            "          POST /v1/admin/firmware/products/PRODUCT/rule\n",
        .opts = rule_opts,
        .min_args = 1,
        .max_args = 2,
        .run = rule_run,
    },
    {
        .sub = "approvals",
        .usage = "list [--product P] | request IMAGE --product P --version V\n"
                 "         (--device ID[,ID] | --group G[,G]) [--counter N] [--not-before T]\n"
                 "         | approve ID",
        .summary = "Two-approver releases: request, approve, list",
        .description =
            "request fixes what will be signed (the image's SHA-256, computed here, and\n"
            "size; version; targets; counter and not_before if given) for 24 hours;\n"
            "approve, by another release token, lets firmware sign --approval ID sign\n"
            "exactly that, once. list columns: ID PRODUCT VERSION STATE REQUESTED-BY\n"
            "APPROVED-BY EXPIRES-AT. request and approve: release tokens; list: any\n"
            "admin role and release.\n"
            "\n"
            "Requests: GET, POST /v1/admin/firmware/approvals,\n"
            "          POST /v1/admin/firmware/approvals/ID/approve\n",
        .opts = approvals_opts,
        .min_args = 1,
        .max_args = 2,
        .run = approvals_run,
    },
    {
        .sub = "groups",
        .usage = "list [GROUP] | create GROUP | rotate GROUP | destroy GROUP KEY_ID",
        .summary = "Groups' firmware keys (packages for a whole group)",
        .description =
            "A package for a group wraps its content key under the group's firmware\n"
            "key, which every device of the group receives in its fill document\n"
            "(docs/firmware.md, \"Group targets\"). create makes a group's key; rotate\n"
            "makes a new active key and keeps the old one as previous (packages are\n"
            "wrapped for both until destroy removes it: refill the group's devices\n"
            "first). list columns: GROUP KEY-ID STATE CREATED-AT SUPERSEDED-AT.\n"
            "create, rotate and destroy: admin tokens; list: any admin role and release.\n"
            "\n"
            "Requests: GET, POST /v1/admin/firmware/groups,\n"
            "          POST /v1/admin/firmware/groups/GROUP/rotate,\n"
            "          DELETE /v1/admin/firmware/groups/GROUP/keys/KEY_ID\n",
        .min_args = 1,
        .max_args = 3,
        .run = groups_run,
    },
    {
        .sub = "keys",
        .usage = "list [PRODUCT] [--pem] | create PRODUCT | rotate PRODUCT [--overlap-days N]\n"
                 "         | revoke PRODUCT VERSION [--reason R]",
        .summary = "Firmware signing keys of product lines (in the token)",
        .description =
            "Each product line has one active ECDSA P-256 signing key, made in the token,\n"
            "with a certificate from the platform CA (codeSigning) that the product's\n"
            "devices pin (docs/firmware.md). create makes a product's first key; rotate\n"
            "makes the next version active and retires the current one, which devices\n"
            "keep pinning for --overlap-days. revoke (a lost key) ends a version:\n"
            "it signs nothing, leaves the list to pin and enters the CA's CRL; after\n"
            "revoking the active one, create makes the next. list columns: PRODUCT\n"
            "VERSION STATE NOT-AFTER OVERLAP-UNTIL SHA256; --pem prints the\n"
            "certificates to pin. create, rotate and revoke: admin tokens; list: any\n"
            "admin role and release.\n"
            "\n"
            "Requests: GET, POST /v1/admin/firmware/keys,\n"
            "          POST /v1/admin/firmware/keys/PRODUCT/rotate,\n"
            "          POST /v1/admin/firmware/keys/PRODUCT/versions/VERSION/revoke\n",
        .opts = signkeys_opts,
        .min_args = 1,
        .max_args = 3,
        .run = keys_run,
    },
    {
        .sub = "sign",
        .usage = "IMAGE --product P --version V (--device ID[,ID] | --group G[,G]) --out PKG\n"
                 "         [--counter N] [--not-before T] [--approval ID]",
        .summary = "Sign a firmware image into a package for its target devices and groups",
        .description =
            "The image is streamed to kmsd (held there once), which signs its manifest\n"
            "in the token with the product's active firmware key, decides the\n"
            "anti-rollback counter, wraps the content key for each target device and\n"
            "each key of each target group, and streams the package back\n"
            "(docs/firmware.md). Release tokens only.\n"
            "\n"
            "Request: POST /v1/admin/firmware/packages\n",
        .opts = sign_opts,
        .min_args = 1,
        .max_args = 1,
        .run = sign_run,
    },
    {
        .sub = "verify",
        .usage = "PKG",
        .summary = "Check a package as its targets would (kmsd opens it)",
        .description =
            "The package is streamed to kmsd, which finds the release it signed under\n"
            "that package ID and opens the package as its target devices would, with\n"
            "their keys and the product's certificates: every chunk's tag, the\n"
            "manifest's signature, the product and targets, the image's size and\n"
            "SHA-256, and the manifest against the recorded release. Prints the\n"
            "verdict; exit 0 when valid, 6 when a check failed (it names the check).\n"
            "Any admin role, and release tokens.\n"
            "\n"
            "Request: POST /v1/admin/firmware/packages/verify\n",
        .min_args = 1,
        .max_args = 1,
        .run = verify_run,
    },
    {0},
};

const struct command cmd_firmware = {
    .name = "firmware",
    .summary = "Firmware signing: keys of product lines, signing releases",
    .actions = firmware_actions,
};
