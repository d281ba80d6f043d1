/* cmd_signing — `kmsctl signing keys list|create|rotate`: the platform's
 * data-signing keys (docs/api.md, "Data-signing keys"); `kmsctl signing
 * sign|verify FILE`: signatures with them through the crypto services
 * ("Signatures"), the file hashed here so its bytes never leave. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>
#include <openssl/evp.h>

#include "args.h"
#include "b64.h"
#include "client.h"
#include "command.h"
#include "exitcodes.h"
#include "fileio.h"
#include "hexutil.h"
#include "output.h"
#include "signkeys.h"

static const struct signkeys DATA_KEYS = {"/v1/admin/signing-keys", "name", "NAME"};

static int keys_run(const struct kmsctl_ctx *ctx, const struct invocation *inv)
{
    return signkeys_run(ctx, inv, &DATA_KEYS);
}

static int print_signature(const json_t *j)
{
    out_textf(stdout, "%s\n", json_string_value(json_object_get(j, "signature")) ?: "");
    return EXIT_OK;
}

static int sign_run(const struct kmsctl_ctx *ctx, const struct invocation *inv)
{
    const char *key = opt_get(&inv->local, "key"), *outp = opt_get(&inv->local, "out");
    char hex[65];
    json_t *req, *resp = NULL;
    int rc;

    if (!key) {
        out_error("sign needs --key NAME");
        return EXIT_USAGE;
    }
    if ((rc = file_sha256("data", inv->pos[0], hex, NULL)) != EXIT_OK)
        return rc;
    req = json_pack("{s:s,s:s}", "key", key, "digest", hex);
    rc = client_call(ctx, "POST", "/v1/crypto/sign", req, &resp);
    json_decref(req);
    if (rc == EXIT_OK && outp) {
        /* the signature as DER, as `openssl dgst -sha256 -sign` writes it */
        const char *b = json_string_value(json_object_get(resp, "signature"));
        uint8_t der[256];
        long n = b ? b64_decode(b, strlen(b), der, sizeof(der)) : -1;
        if (n <= 0) {
            out_error("the answer carries no signature");
            rc = EXIT_SERVER;
        } else {
            /* made before the request would be better; but a refused
             * request must leave no file, so it is made once signed */
            int fd = file_create_new("signature", outp);
            rc = fd < 0 ? EXIT_USAGE : file_write_close(fd, outp, der, (size_t)n);
        }
        if (rc == EXIT_OK && !ctx->json) {
            char ver[24];
            snprintf(ver, sizeof(ver), "%lld",
                     (long long)json_integer_value(json_object_get(resp, "version")));
            out_textf(stdout, "Signed with %s version %s into %s.\n", key, ver, outp);
            json_decref(resp);
            return EXIT_OK;
        }
    }
    return out_result(ctx->json, rc, resp, print_signature);
}

static int print_verdict(const json_t *j)
{
    out_textf(stdout, "%s\n", json_is_true(json_object_get(j, "valid")) ? "Valid." : "Invalid.");
    return EXIT_OK;
}

static int verify_run(const struct kmsctl_ctx *ctx, const struct invocation *inv)
{
    const char *key = opt_get(&inv->local, "key"), *sigp = opt_get(&inv->local, "signature");
    char hex[65], *b64 = NULL, *der = NULL;
    size_t len = 0;
    json_t *req, *resp = NULL;
    int rc;

    if (!key || !sigp) {
        out_error("verify needs --key NAME and --signature FILE (DER)");
        return EXIT_USAGE;
    }
    if ((rc = file_sha256("data", inv->pos[0], hex, NULL)) != EXIT_OK)
        return rc;
    if ((rc = file_read("signature", sigp, 256, &der, &len)) != EXIT_OK)
        return rc;
    if (len == 0) {
        free(der);
        out_error("%s: empty: not a signature", out_safe(sigp));
        return EXIT_USAGE;
    }
    if (!(b64 = malloc(4 * ((len + 2) / 3) + 1))) {
        free(der);
        return EXIT_INTERNAL;
    }
    EVP_EncodeBlock((unsigned char *)b64, (const unsigned char *)der, (int)len);
    req = json_pack("{s:s,s:s,s:s}", "key", key, "digest", hex, "signature", b64);
    rc = client_call(ctx, "POST", "/v1/crypto/verify", req, &resp);
    json_decref(req);
    free(b64);
    free(der);
    if (rc == EXIT_OK && !json_is_true(json_object_get(resp, "valid"))) {
        rc = out_result(ctx->json, rc, resp, print_verdict);
        return rc == EXIT_OK ? EXIT_REFUSED : rc;
    }
    return out_result(ctx->json, rc, resp, print_verdict);
}

static const struct opt_spec sign_opts[] = {
    {"key", 0, "NAME", "the data-signing key"},
    {"out", 0, "FILE", "write the signature there (DER) instead of printing it (base64)"},
    {0},
};

static const struct opt_spec verify_opts[] = {
    {"key", 0, "NAME", "the data-signing key"},
    {"signature", 0, "FILE", "the signature (DER)"},
    {0},
};

static const struct action signing_actions[] = {
    {
        .sub = "keys",
        .usage = "list [NAME] [--pem] | create NAME | rotate NAME [--overlap-days N]\n"
                 "         | revoke NAME VERSION [--reason R]",
        .summary = "The platform's data-signing keys (in the token)",
        .description =
            "Named ECDSA P-256 keys made in the token, each with a certificate from the\n"
            "platform CA, for signatures the platform makes for back ends (signing\n"
            "sign, POST /v1/crypto/sign). create makes a name's first key; rotate\n"
            "makes the next version active and retires the current one, whose\n"
            "certificate verifiers keep for --overlap-days; revoke ends a version (it\n"
            "signs and verifies nothing more and enters the CA's CRL). list columns: NAME VERSION\n"
            "STATE NOT-AFTER OVERLAP-UNTIL SHA256; --pem prints the certificates.\n"
            "create, rotate and revoke: admin tokens; list: any admin role.\n"
            "\n"
            "Requests: GET, POST /v1/admin/signing-keys,\n"
            "          POST /v1/admin/signing-keys/NAME/rotate,\n"
            "          POST /v1/admin/signing-keys/NAME/versions/VERSION/revoke\n",
        .opts = signkeys_opts,
        .min_args = 1,
        .max_args = 3,
        .run = keys_run,
    },
    {
        .sub = "sign",
        .usage = "FILE --key NAME [--out SIG]",
        .summary = "Sign a file's SHA-256 with a data-signing key",
        .description =
            "The file is hashed here (its bytes never leave); the platform signs the\n"
            "SHA-256 in the token with the key's active version: ECDSA P-256, DER,\n"
            "as `openssl dgst -sha256 -sign` writes it. Crypto tokens acting for\n"
            "@platform only.\n"
            "\n"
            "Request: POST /v1/crypto/sign\n",
        .opts = sign_opts,
        .min_args = 1,
        .max_args = 1,
        .run = sign_run,
    },
    {
        .sub = "verify",
        .usage = "FILE --key NAME --signature SIG",
        .summary = "Check a signature of a file under a data-signing key",
        .description =
            "Against every version of the key, newest first. Prints Valid. (exit 0)\n"
            "or Invalid. (exit 6). Crypto tokens.\n"
            "\n"
            "Request: POST /v1/crypto/verify\n",
        .opts = verify_opts,
        .min_args = 1,
        .max_args = 1,
        .run = verify_run,
    },
    {0},
};

const struct command cmd_signing = {
    .name = "signing",
    .summary = "Data-signing keys and signatures with them",
    .actions = signing_actions,
};
