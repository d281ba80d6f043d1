/*
 * client — one authenticated JSON request to the qkms admin API.
 *
 * Sends `Authorization: Bearer <admin token>` (from config_load_token),
 * `Accept: application/json`, and with a body `Content-Type:
 * application/json`. Never follows redirects, speaks only http and https,
 * always verifies TLS certificates, and never prints the token.
 */
#ifndef KMSCTL_CLIENT_H
#define KMSCTL_CLIENT_H
#include <stdint.h>
#include <stdio.h>

#include <jansson.h>
#include "context.h"
#include "output.h"

/* Call once before any request and once at exit, as libcurl requires. */
int client_global_init(void);
void client_global_cleanup(void);

/*
 * method: "GET", "POST", "DELETE", ...; path: starts with '/', already
 * escaped (see client_escape); body: NULL for none.
 *
 * On a 2xx response carrying a JSON object or array, stores it in *out
 * (caller json_decref's) and returns EXIT_OK. Otherwise *out is NULL, the
 * failure has been reported (see out_api_error) and the exit code is:
 * EXIT_USAGE no usable token (nothing sent), EXIT_CONNECT transport or TLS
 * failure, EXIT_AUTH 401/403, EXIT_SERVER 5xx or a 1xx/3xx status or a
 * success body that is not JSON, EXIT_REFUSED other 4xx. An error status
 * keeps its own exit code even if its body is not JSON.
 */
int client_call(const struct kmsctl_ctx *ctx, const char *method, const char *path,
                const json_t *body, json_t **out);

/*
 * As client_call, but a 2xx answer with an empty body also succeeds and
 * yields an empty object: for routes whose contract documents a status
 * but no body (`POST /v1/admin/device-types`: "201").
 */
int client_call_empty_ok(const struct kmsctl_ctx *ctx, const char *method, const char *path,
                         const json_t *body, json_t **out);

/* As client_call, sending request_id (1-64 of A-Z a-z 0-9 - _ .) as
 * X-Request-Id, so that another call can ask after this request while it
 * runs (audit verify's progress). */
int client_call_id(const struct kmsctl_ctx *ctx, const char *method, const char *path,
                   const json_t *body, const char *request_id, json_t **out);

/* GET path reporting nothing about the exchange, for polling beside
 * another call: on a 2xx JSON answer EXIT_OK and *out; otherwise a nonzero
 * exit code and *out NULL. Safe from another thread (each call has its own
 * curl handle). Only a missing token is still reported (as every call
 * does, before sending): poll after the main call has found one. */
int client_get_quiet(const struct kmsctl_ctx *ctx, const char *path, json_t **out);

/* GET path of a public route whose answer is not JSON (the CRL), sending
 * no token: on 2xx its bytes in *data (malloc'd, a NUL after them) and
 * *len; otherwise as client_call. */
int client_get_raw(const struct kmsctl_ctx *ctx, const char *path, char **data, size_t *len);

/* GET path, then out_result: the whole of a command that shows one answer
 * (JSON with --json, else through print). */
int client_show(const struct kmsctl_ctx *ctx, const char *path, out_printer print);

/* Percent-escapes s for use as one path segment. Heap string, caller
 * frees; NULL on out of memory (reported). */
char *client_escape(const char *s);

/*
 * As client_escape, but "." and ".." become "%2E" and "%2E%2E", which curl
 * would leave alone: as bare segments no proxy or client library may take
 * them for dot segments. For IDs used as one path segment.
 */
char *client_escape_segment(const char *s);

/*
 * Appends "?name=value", or "&name=value" once *query holds something, to
 * the heap string *query (NULL: empty), escaping value. EXIT_OK, or
 * EXIT_INTERNAL after reporting.
 */
int client_query_add(char **query, const char *name, const char *value);

/* POST in (in_len bytes, application/octet-stream, read as it is sent) to
 * path with the admin token; a 2xx answer's body is written to out as it
 * arrives, and its Qkms-* header lines appended to *answer_headers (may be
 * NULL); other answers are reported as client_call reports them. */
struct curl_slist;
int client_upload(const struct kmsctl_ctx *ctx, const char *path, FILE *in, uint64_t in_len,
                  FILE *out, struct curl_slist **answer_headers, json_t **err_out);

#endif
