/*
 * err — kmsd's one error currency, shared by every layer.
 *
 * A service operation returns a qk_kind (QK_OK = 0) and, on failure, fills
 * a caller-owned qk_err: the kind (which decides the HTTP status, once, in
 * api/server.c http_fail), a stable code string for clients (documented in
 * docs/api.md and docs/openapi.yaml, never changed once shipped), a detail
 * message that may be shown to the client, and a Retry-After hint.
 *
 * Calls chain as
 *     if ((r = devices_get(svc, id, &out, e)) != QK_OK)
 *         goto out;
 * and the first failure wins: qk_fail overwrites, so the innermost callee
 * that knows the reason should be the one to set it.
 *
 * Contract:
 *  - code always points to a string literal; detail is always
 *    NUL-terminated and never holds key bytes, PINs, tokens or SQL text.
 *  - The store's db_status and the token's CK_RV are translated once each:
 *    db_fail (store/db.h) and qk_from_token (here, which also writes the
 *    one log line that names the PKCS#11 return value).
 */
#ifndef QKMS_ERR_H
#define QKMS_ERR_H

#include <stdint.h>

typedef enum {
    QK_OK = 0,
    QK_MALFORMED,       /* 400: the request does not parse */
    QK_UNAUTHENTICATED, /* 401 */
    QK_FORBIDDEN,       /* 403: authenticated, but not allowed */
    QK_NOT_FOUND,       /* 404 */
    QK_CONFLICT,        /* 409: the state forbids it (exists, ended, exhausted) */
    QK_TOO_LARGE,       /* 413 */
    QK_INVALID,         /* 422: parses, but a value is refused */
    QK_RATE_LIMITED,    /* 429 */
    QK_INTERNAL,        /* 500: a bug or a schema mismatch; details only in the log */
    QK_UNAVAILABLE,     /* 503: a dependency is down; retry */
} qk_kind;

typedef struct qk_err {
    qk_kind kind;
    const char *code; /* stable wire code, a string literal */
    char detail[256];
    int retry_after;  /* seconds; 0 = no hint */
} qk_err;

/* Set *e (e may be NULL) and return kind. */
qk_kind qk_fail(qk_err *e, qk_kind kind, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* Reset *e to QK_OK. */
void qk_clear(qk_err *e);

/* A token failure (CK_RV): 503 "token_unavailable" when the token is
 * unreachable or the key is missing, 500 "internal" otherwise; logs op and
 * the CKR name, unless op is NULL (the caller has written a line of its
 * own that names the CKR and what failed). */
qk_kind qk_from_token(qk_err *e, unsigned long rv, const char *op);

/* The kind's name ("invalid", "unavailable"...), for logs and tests. */
const char *qk_kind_name(qk_kind k);

#endif
