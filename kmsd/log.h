/*
 * log — structured logs: one JSON object per line on stderr.
 *
 * Every line has "ts" (RFC 3339 UTC, ms), "level" and "msg"; extra fields are
 * given as a json_pack()-style format and its arguments, e.g.
 *     log_emit(LOG_INFO, "listening", "{s:s,s:i}", "addr", a, "port", p);
 * The format is a flat object: "s:" keys and values s, s? (NULL is null),
 * s* (NULL omits the field), i, I (json_int_t), f, b. A string value that is
 * not valid UTF-8 (a client's path, say) is logged with each bad byte
 * replaced by U+FFFD and its key listed in "invalid_utf8": the line and its
 * other fields are never lost; a real with no JSON form (NaN, infinity) is
 * null and named in "unencodable". Reals print with ten significant digits.
 * log_with() also writes the request's context (req_id, client, principal)
 * after msg, so a request's lines are found by req_id without each caller
 * repeating it.
 * A line is written with one write(2), so lines from threads never interleave.
 * Callers must never pass key bytes, PINs or tokens.
 * The level is the one piece of process-wide state here: an atomic that
 * SIGHUP may change.
 */
#ifndef QKMS_LOG_H
#define QKMS_LOG_H

#include <stdarg.h>

typedef enum { LOG_DEBUG = 0, LOG_INFO, LOG_WARN, LOG_ERROR } log_level;

int log_level_parse(const char *s, log_level *out);
void log_set_level(log_level l);
int log_enabled(log_level l);
void log_emit(log_level l, const char *msg, const char *fmt, ...);

/* Who a line is about: the request it belongs to. Any field may be NULL
 * (left out). The strings are borrowed for the call. */
typedef struct log_ctx {
    const char *req_id;
    const char *client;    /* the client's address */
    const char *principal; /* token name or device ID, once authenticated */
} log_ctx;
void log_with(const log_ctx *c, log_level l, const char *msg, const char *fmt, ...);
void log_withv(const log_ctx *c, log_level l, const char *msg, const char *fmt, va_list ap);

#endif
