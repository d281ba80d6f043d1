/*
 * err — the error currency (err.h): setting a qk_err, and the two
 * translations from the layers below (store, token) into it.
 */
#include "err.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "log.h"
#include "p11.h"

qk_kind qk_fail(qk_err *e, qk_kind kind, const char *code, const char *fmt, ...)
{
    va_list ap;
    if (!e)
        return kind;
    e->kind = kind;
    e->code = code;
    e->retry_after = 0;
    va_start(ap, fmt);
    vsnprintf(e->detail, sizeof(e->detail), fmt, ap);
    va_end(ap);
    return kind;
}

void qk_clear(qk_err *e)
{
    if (!e)
        return;
    memset(e, 0, sizeof(*e));
    e->code = "ok";
}

qk_kind qk_from_token(qk_err *e, unsigned long rv, const char *op)
{
    p11_kind k = p11_rv_kind((CK_RV)rv);
    if (op)
        log_emit(LOG_ERROR, "token operation failed", "{s:s,s:s}", "op", op, "ckr",
                 p11_rv_name((CK_RV)rv));
    if (k == P11_KIND_UNAVAILABLE || k == P11_KIND_NOT_FOUND) {
        qk_fail(e, QK_UNAVAILABLE, "token_unavailable", "key token unavailable, retry later");
        if (e)
            e->retry_after = 1;
        return QK_UNAVAILABLE;
    }
    return qk_fail(e, QK_INTERNAL, "internal", "internal error (see kmsd log)");
}

const char *qk_kind_name(qk_kind k)
{
    static const char *const names[] = {
        [QK_OK] = "ok",
        [QK_MALFORMED] = "malformed",
        [QK_UNAUTHENTICATED] = "unauthenticated",
        [QK_FORBIDDEN] = "forbidden",
        [QK_NOT_FOUND] = "not_found",
        [QK_CONFLICT] = "conflict",
        [QK_TOO_LARGE] = "too_large",
        [QK_INVALID] = "invalid",
        [QK_RATE_LIMITED] = "rate_limited",
        [QK_INTERNAL] = "internal",
        [QK_UNAVAILABLE] = "unavailable",
    };
    if ((unsigned)k >= sizeof(names) / sizeof(names[0]) || !names[k])
        return "unknown";
    return names[k];
}
