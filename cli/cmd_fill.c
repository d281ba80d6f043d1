/*
 * cmd_fill — `kmsctl fill open --key PRIVPEM FILE`: the provisioning
 * station's side of `device fill`. Purely local: opens a fill package with
 * the station's private key (common/fillpkg.h) and prints the fill
 * document, key bytes included, since loading them is the point.
 *
 * Exit status: EXIT_USAGE when the key or package file cannot be read or
 * the key is not an unencrypted X25519 or P-256 private key; EXIT_REFUSED
 * when the package does not open (not a package, wrong key, tampered) or
 * holds no valid qkms-fill/1 document, including a key whose check value
 * does not match it. The plaintext is wiped from memory after printing.
 */
#include "command.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <jansson.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/pem.h>

#include "exitcodes.h"
#include "fileio.h"
#include "fillpkg.h"
#include "hexutil.h"
#include "kcv.h"
#include "output.h"
#include "wipe.h"

#define KEY_PEM_MAX (64 * 1024)
#define PACKAGE_MAX (FILLPKG_MAX_PLAINTEXT + 1024) /* plaintext plus header and tag */
#define FILL_FORMAT "qkms-fill/1"
#define TLS_IDENTITY_FORMAT "qkms-tls-identity/1" /* device cert issue --generate */

/* Encrypted keys are refused rather than prompting: scripts must not hang. */
static int no_passphrase(char *buf, int size, int rwflag, void *u)
{
    (void)buf, (void)size, (void)rwflag, (void)u;
    return -1;
}

static int is_fill_curve(EVP_PKEY *k)
{
    char group[32];
    size_t gl = 0;
    if (EVP_PKEY_is_a(k, "X25519"))
        return 1;
    return EVP_PKEY_is_a(k, "EC") &&
           EVP_PKEY_get_utf8_string_param(k, OSSL_PKEY_PARAM_GROUP_NAME, group, sizeof(group), &gl) &&
           (strcmp(group, "prime256v1") == 0 || strcmp(group, "P-256") == 0);
}

static int load_private_key(const char *path, EVP_PKEY **key)
{
    char *pem = NULL;
    size_t len = 0;
    int rc = file_read("private key file", path, KEY_PEM_MAX, &pem, &len);
    if (rc)
        return rc;
    BIO *b = BIO_new_mem_buf(pem, (int)len);
    *key = b ? PEM_read_bio_PrivateKey(b, NULL, no_passphrase, NULL) : NULL;
    BIO_free(b);
    explicit_bzero(pem, len);
    free(pem);
    if (!*key) {
        out_error("%s: not an unencrypted PEM private key", out_safe(path));
        return EXIT_USAGE;
    }
    if (!is_fill_curve(*key)) {
        out_error("%s: need an X25519 or P-256 private key", out_safe(path));
        EVP_PKEY_free(*key);
        *key = NULL;
        return EXIT_USAGE;
    }
    return EXIT_OK;
}

/* The key's check value (kcv.h) as hex. */
static int compute_kcv(const char *alg, const uint8_t *key, size_t len,
                       char out[2 * QKMS_KCV_LEN + 1])
{
    uint8_t kcv[QKMS_KCV_LEN];
    if (qkms_kcv_compute_alg(alg, key, len, kcv) != 0)
        return -1;
    qkms_hex_encode(kcv, QKMS_KCV_LEN, out);
    return 0;
}

/* One key entry: algorithm, key length and check value agree. */
static int check_key(const json_t *k, size_t i)
{
    const char *alg = json_string_value(json_object_get(k, "algorithm"));
    const char *hex = json_string_value(json_object_get(k, "key"));
    const char *kcv = json_string_value(json_object_get(k, "kcv"));
    size_t want = alg && (strcmp(alg, "AES-128") == 0 || strcmp(alg, "SM4-128") == 0) ? 16
                  : alg && strcmp(alg, "AES-256") == 0                                 ? 32
                                                                                       : 0;
    uint8_t key[32];
    char mine[2 * QKMS_KCV_LEN + 1];
    int rc = EXIT_REFUSED;

    if (!want || !hex || !kcv || qkms_hex_decode(hex, strlen(hex), key, sizeof(key)) != (long)want) {
        out_error("fill document key #%zu: algorithm, key or kcv missing or malformed", i);
        goto cleanup;
    }
    if (compute_kcv(alg, key, want, mine) != 0) {
        out_error("cannot compute a key check value (CMAC)");
        rc = EXIT_INTERNAL;
        goto cleanup;
    }
    if (strcasecmp(mine, kcv) != 0) {
        out_error("fill document key #%zu: check value does not match the key", i);
        goto cleanup;
    }
    rc = EXIT_OK;

cleanup:
    OPENSSL_cleanse(key, sizeof(key));
    return rc;
}

/* A qkms-tls-identity/1 document: a certificate, its CA chain and the
 * private key, which must be the certificate's. */
static int check_tls_identity(const json_t *doc)
{
    const char *id = json_string_value(json_object_get(doc, "device_id"));
    const char *cert = json_string_value(json_object_get(doc, "certificate"));
    const char *chain = json_string_value(json_object_get(doc, "chain"));
    const char *kp = json_string_value(json_object_get(doc, "private_key"));
    BIO *cb = NULL, *kb = NULL;
    X509 *x = NULL;
    EVP_PKEY *k = NULL;
    int rc = EXIT_REFUSED;

    if (!id || !cert || !chain || !kp || !json_is_string(json_object_get(doc, "serial"))) {
        out_error("the " TLS_IDENTITY_FORMAT " document lacks device_id, serial, certificate, "
                  "chain or private_key");
        return EXIT_REFUSED;
    }
    if ((cb = BIO_new_mem_buf(cert, -1)) && (kb = BIO_new_mem_buf(kp, -1)) &&
        (x = PEM_read_bio_X509(cb, NULL, NULL, NULL)) &&
        (k = PEM_read_bio_PrivateKey(kb, NULL, no_passphrase, NULL)) && X509_check_private_key(x, k) == 1)
        rc = EXIT_OK;
    else
        out_error("the " TLS_IDENTITY_FORMAT " document's private key is not its certificate's");
    EVP_PKEY_free(k);
    X509_free(x);
    BIO_free(kb);
    BIO_free(cb);
    return rc;
}

/* The plaintext as a qkms-fill/1 document with sound keys, or a
 * qkms-tls-identity/1 document whose key is its certificate's. */
static int parse_document(const uint8_t *pt, size_t len, json_t **doc)
{
    json_error_t jerr;
    size_t i;
    const json_t *k;

    *doc = json_loadb((const char *)pt, len, JSON_REJECT_DUPLICATES, &jerr);
    const char *format = json_string_value(json_object_get(*doc, "format"));
    const json_t *keys = json_object_get(*doc, "keys");
    if (json_is_object(*doc) && format && !strcmp(format, TLS_IDENTITY_FORMAT))
        return check_tls_identity(*doc);
    if (!json_is_object(*doc) || !format || strcmp(format, FILL_FORMAT) != 0 || !json_is_array(keys)) {
        out_error("the package does not hold a " FILL_FORMAT " fill document");
        return EXIT_REFUSED;
    }
    json_array_foreach(keys, i, k) {
        int rc = check_key(k, i);
        if (rc)
            return rc;
    }
    /* device fill --with-certificate: the device's TLS identity too. */
    if (json_object_get(*doc, "tls"))
        return check_tls_identity(json_object_get(*doc, "tls"));
    return EXIT_OK;
}

/* A TLS identity: its fields, then the PEM blocks as they are. */
static int print_tls_identity(const json_t *doc)
{
    json_t *about = json_pack("{s:O?, s:O?, s:O?}", "device", json_object_get(doc, "device_id"),
                              "serial", json_object_get(doc, "serial"), "format",
                              json_object_get(doc, "format"));
    int rc = about ? out_kv(about) : EXIT_INTERNAL;
    json_decref(about);
    if (rc)
        return rc;
    fputc('\n', stdout);
    out_lines(stdout, json_string_value(json_object_get(doc, "certificate")));
    out_lines(stdout, json_string_value(json_object_get(doc, "chain")));
    out_lines(stdout, json_string_value(json_object_get(doc, "private_key")));
    return EXIT_OK;
}

/* A sub-device's family member: its gateway's local keys (docs/gateways.md). */
static int print_family(const json_t *fam, const char *const *headers, const char *const *fields)
{
    struct table *t = table_new(5, headers);
    const json_t *k;
    size_t i;
    int rc = EXIT_OK;
    if (!t) {
        out_error("out of memory");
        return EXIT_INTERNAL;
    }
    json_array_foreach(json_object_get(fam, "keys"), i, k)
        if ((rc = table_add_json(t, k, fields)))
            break;
    if (!rc) {
        out_textf(stdout, "\nFamily: the local keys of gateway %s\n",
                  out_string_or(json_object_get(fam, "gateway_id"), "?"));
        rc = table_print(t, stdout);
    }
    table_free_wiped(t);
    return rc;
}

static int print_document(const json_t *doc)
{
    static const char *const headers[] = {"INDEX", "ALG", "KEY", "KCV", "NOT-AFTER"};
    static const char *const fields[] = {"index", "algorithm", "key", "kcv", "not_after"};
    struct table *t = NULL;
    json_t *about = json_pack("{s:O?, s:O?, s:O?}", "device", json_object_get(doc, "device_id"),
                              "type", json_object_get(doc, "type"), "group",
                              json_object_get(doc, "group"));
    int rc = EXIT_INTERNAL;

    if (!about || !(t = table_new(5, headers))) {
        out_error("out of memory");
        goto cleanup;
    }
    size_t i;
    const json_t *k;
    json_array_foreach(json_object_get(doc, "keys"), i, k) {
        if ((rc = table_add_json(t, k, fields)))
            goto cleanup;
    }
    if ((rc = out_kv(about)))
        goto cleanup;
    fputc('\n', stdout);
    rc = table_print(t, stdout);
    if (!rc && json_object_get(doc, "family"))
        rc = print_family(json_object_get(doc, "family"), headers, fields);
    if (!rc && json_object_get(doc, "tls")) {
        fputs("\nTLS identity\n", stdout);
        rc = print_tls_identity(json_object_get(doc, "tls"));
    }

cleanup:
    table_free_wiped(t);
    json_decref(about);
    return rc;
}

static int fill_open(const struct kmsctl_ctx *ctx, const struct invocation *inv)
{
    const char *key_path = opt_get(&inv->local, "key"), *path = inv->pos[0];
    EVP_PKEY *key = NULL;
    char *pkg = NULL;
    size_t pkg_len = 0, pt_len = 0;
    uint8_t *pt = NULL;
    json_t *doc = NULL;
    char err[160];
    int rc = EXIT_USAGE;

    if (!key_path) {
        out_error("--key PRIVPEM is required (the station's private key)");
        goto cleanup;
    }
    if ((rc = load_private_key(key_path, &key)) ||
        (rc = file_read("fill package", path, PACKAGE_MAX, &pkg, &pkg_len)))
        goto cleanup;
    if (fillpkg_open(key, (const uint8_t *)pkg, pkg_len, &pt, &pt_len, err, sizeof(err)) != 0) {
        out_error("%s: %s", out_safe(path), err);
        rc = EXIT_REFUSED;
        goto cleanup;
    }
    if ((rc = parse_document(pt, pt_len, &doc)))
        goto cleanup;
    rc = ctx->json ? out_json(doc)
         : !strcmp(json_string_value(json_object_get(doc, "format")), TLS_IDENTITY_FORMAT)
             ? print_tls_identity(doc)
             : print_document(doc);
    /* The caller reads the keys from our stdout: get them there now. */
    if (fflush(stdout) != 0 && !rc) {
        out_error("cannot write output");
        rc = EXIT_INTERNAL;
    }

cleanup:
    wipe_json(doc);
    json_decref(doc);
    if (pt)
        OPENSSL_secure_clear_free(pt, pt_len);
    free(pkg);
    EVP_PKEY_free(key);
    return rc;
}

static const struct opt_spec open_opts[] = {
    {"key", 0, "PRIVPEM", "the station's X25519 or P-256 private key, PEM (required)"},
    {0},
};

static const struct action fill_actions[] = {
    {
        .sub = "open",
        .usage = "--key PRIVPEM FILE",
        .summary = "Open a fill package and print the device keys in it (local)",
        .description = "FILE is a package written by 'kmsctl device fill --recipient-pub'. Prints\n"
                       "device, type and group, then INDEX ALG KEY KCV NOT-AFTER for each key;\n"
                       "with --json the fill document itself. Each key's check value is verified.\n"
                       "A package of 'device cert issue --generate' (qkms-tls-identity/1) prints\n"
                       "device and serial, then the certificate, the CA chain and the private key\n"
                       "(PEM); the key is checked to be the certificate's.\n"
                       "No server or admin token is involved. The output holds the keys IN CLEAR.\n"
                       "Exit status 6 if the package does not open with this key (wrong key,\n"
                       "tampered, not a package) or holds no valid fill document.\n",
        .opts = open_opts,
        .min_args = 1,
        .max_args = 1,
        .run = fill_open,
    },
    {0},
};

const struct command cmd_fill = {
    .name = "fill",
    .summary = "Open fill packages on a provisioning station",
    .actions = fill_actions,
};
