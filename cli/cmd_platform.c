/* cmd_platform — `kmsctl platform show [--pem]`, `kmsctl platform rotate`:
 * the platform's device protocol v2 keys, a signing and a key-agreement
 * pair in the token with certificates from the platform CA (docs/protocol.md,
 * "The platform's keys"). */
#include <stdio.h>
#include <string.h>

#include <jansson.h>

#include "client.h"
#include "command.h"
#include "exitcodes.h"
#include "output.h"

static int print_keys(const json_t *doc)
{
    static const char *const cols[] = {"PURPOSE", "VERSION", "STATE", "NOT-AFTER",
                                       "OVERLAP-UNTIL", "SHA256"};
    static const char *const keys[] = {"purpose", "version", "state", "not_after",
                                       "overlap_until", "sha256"};
    return out_table(json_object_get(doc, "certificates"), 6, cols, keys);
}

/* --pem: the certificates a device pins (qkms-device --server-cert takes
 * the active pair as one file). */
static int print_pem(const json_t *doc)
{
    size_t i;
    const json_t *c;
    json_array_foreach(json_object_get(doc, "certificates"), i, c)
        if (json_is_string(json_object_get(c, "pem")) &&
            !strcmp(json_string_value(json_object_get(c, "state")) ?: "", "active"))
            out_lines(stdout, json_string_value(json_object_get(c, "pem")));
    return EXIT_OK;
}

static int show_run(const struct kmsctl_ctx *ctx, const struct invocation *inv)
{
    return client_show(ctx, "/v1/platform/certificates",
                       opt_get(&inv->local, "pem") ? print_pem : print_keys);
}

static int rotate_run(const struct kmsctl_ctx *ctx, const struct invocation *inv)
{
    json_t *resp = NULL;
    int rc;
    (void)inv;
    rc = client_call(ctx, "POST", "/v1/admin/platform/rotate", NULL, &resp);
    return out_result(ctx->json, rc, resp, print_keys);
}

static const struct opt_spec show_opts[] = {
    {"pem", 0, NULL, "print the active signing and key-agreement certificates as PEM"},
    {0},
};

static const struct action platform_actions[] = {
    {
        .sub = "show",
        .usage = "[--pem]",
        .summary = "Show the platform's protocol v2 keys (their certificates)",
        .description =
            "Columns: PURPOSE (sign or agree) VERSION STATE NOT-AFTER OVERLAP-UNTIL SHA256.\n"
            "A retired version answers devices that still pin it until OVERLAP-UNTIL.\n"
            "--pem prints the active pair, the file devices pin (qkms-device\n"
            "--server-cert). The same list is served without a token.\n"
            "\n"
            "Request: GET /v1/platform/certificates\n",
        .opts = show_opts,
        .run = show_run,
    },
    {
        .sub = "rotate",
        .usage = "",
        .summary = "Make new platform keys (in the token); the old ones retire",
        .description =
            "A new signing and key-agreement pair, certified by the platform CA, active at\n"
            "once. The previous pair keeps answering devices that pin it for\n"
            "platform_key_overlap_days, then its private keys are destroyed. Give devices\n"
            "the new certificates (platform show --pem) within the overlap. Admin tokens\n"
            "only (docs/protocol.md, \"The platform's keys\").\n"
            "\n"
            "Request: POST /v1/admin/platform/rotate\n",
        .run = rotate_run,
    },
    {0},
};

const struct command cmd_platform = {
    .name = "platform",
    .summary = "The platform's device protocol v2 keys",
    .actions = platform_actions,
};
