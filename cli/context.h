/*
 * context — the global settings of one kmsctl run, resolved once from
 * flags, environment and defaults (see config.h) and then passed read-only
 * to every module. This is kmsctl's only cross-module state.
 */
#ifndef KMSCTL_CONTEXT_H
#define KMSCTL_CONTEXT_H
#include <stdbool.h>

struct kmsctl_ctx {
    char *addr;             /* owned; base URL without trailing '/' */
    char *unix_path;        /* owned; KMS_ADDR=unix:PATH (addr is then
                             * http://localhost), else NULL */
    const char *token;      /* --token value, or NULL; see config_load_token */
    const char *token_file; /* --token-file value, or NULL */
    const char *cacert;     /* --cacert value, or NULL for the system store */
    const char *cert, *key; /* --cert/--key: a TLS client certificate, or NULL */
    long timeout_s;         /* whole-request limit, connect included */
    bool json;              /* print the server's JSON instead of human output */
    bool verbose;           /* log method, URL and status to stderr */
};

#endif
