/*
 * config — where kmsctl's global settings come from: the global option
 * table, then environment variables, then built-in defaults.
 *
 * Address:  --addr, KMS_ADDR, http://127.0.0.1:8470; an http:// or https://
 *           URL, or unix:PATH for kmsd's admin unix socket (admin_listen_unix)
 * Token:    --token, --token-file, KMS_TOKEN, KMS_TOKEN_FILE,
 *           $QKMS_STATE/admin.token (if that file exists), ./var/admin.token
 * Empty environment variables count as unset.
 */
#ifndef KMSCTL_CONFIG_H
#define KMSCTL_CONFIG_H
#include "args.h"
#include "context.h"

#define CONFIG_DEFAULT_ADDR "http://127.0.0.1:8470"
#define CONFIG_DEFAULT_TIMEOUT_S 10L

/* The global options, shared by args (parsing) and help (listing). */
extern const struct opt_spec config_global_opts[];

/*
 * Fills ctx from parsed global options and the environment, checking every
 * value. Returns EXIT_OK, or EXIT_USAGE / EXIT_INTERNAL after printing why.
 * The token itself is not read here; see config_load_token. On any return
 * the caller owns ctx and must pass it to config_release.
 */
int config_resolve(const struct opt_values *globals, struct kmsctl_ctx *ctx);
void config_release(struct kmsctl_ctx *ctx);

/*
 * Finds the admin token in the order above and returns a heap copy in *out,
 * whitespace-trimmed at the end and checked to be one printable word.
 * Returns EXIT_OK, or EXIT_USAGE / EXIT_INTERNAL after printing why; errors
 * name the source (option, variable or file path), never the token.
 * With --cert and no token given (--token, --token-file, KMS_TOKEN,
 * KMS_TOKEN_FILE), *out stays NULL and EXIT_OK: the certificate alone
 * authenticates (the default token files are not looked at).
 * Free *out with config_token_free, which wipes it.
 */
int config_load_token(const struct kmsctl_ctx *ctx, char **out);
void config_token_free(char *token);

#endif
