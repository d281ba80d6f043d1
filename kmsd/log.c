/* log — JSON-lines logging. */
#include "log.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "utf8.h"

static _Atomic int log_min = LOG_INFO;
static const char *const names[] = {"debug", "info", "warn", "error"};

int log_level_parse(const char *s, log_level *out)
{
    for (int i = 0; i < 4; i++)
        if (s && !strcmp(s, names[i])) {
            *out = (log_level)i;
            return 0;
        }
    return -1;
}

void log_set_level(log_level l) { atomic_store(&log_min, (int)l); }
int log_enabled(log_level l) { return (int)l >= atomic_load(&log_min); }

/* A string field, made valid UTF-8 first; the key goes into *bad when
 * bytes had to be replaced, so a reader knows the value is not verbatim. */
static void set_str(json_t *o, const char *key, const char *v, json_t **bad)
{
    char buf[2048];
    bool repl = false;
    size_t n = strlen(v);

    if (utf8_valid(v, n)) {
        json_object_set_new(o, key, json_stringn(v, n));
        return;
    }
    /* Cut long values: a log field is for a person, not a byte dump. */
    utf8_sanitize(v, n, buf, sizeof(buf), &repl);
    json_object_set_new(o, key, json_string(buf));
    if (!*bad)
        *bad = json_array();
    json_array_append_new(*bad, json_string(key));
}

/*
 * The fields of a line, from a json_pack()-style format restricted to what a
 * log line needs: "{s:X, ...}" with X one of s (NULL is null), s?
 * (NULL is null), s* (NULL omits the field), i, I (json_int_t), f, b, and O
 * (a json_t *, borrowed: NULL is null, or omitted with *; jansson's values
 * are valid UTF-8 already). Not o: a line below the log level is dropped
 * before its arguments are read, so a stolen reference would leak. Done by
 * hand rather than by json_vpack_ex because that refuses the whole object
 * when one string is not UTF-8 (a client's path or header, say), and a log
 * line must never be lost to the data it reports. A format outside this
 * grammar stops the walk (the arguments after it cannot be read safely) and
 * marks the line with "log_format_error".
 */
static json_t *pack_fields(const char *fmt, va_list ap)
{
    json_t *o = json_object(), *bad = NULL, *unenc = NULL;
    const char *p = fmt;

    if (!o)
        return NULL;
    while (*p) {
        const char *key;
        char t, mod = 0;
        if (*p == '{' || *p == '}' || *p == ',' || *p == ' ') {
            p++;
            continue;
        }
        if (p[0] != 's' || p[1] != ':')
            goto bad_format;
        key = va_arg(ap, const char *);
        t = p[2];
        p += 3;
        if (*p == '?' || *p == '*')
            mod = *p++;
        if (!key || !utf8_valid(key, strlen(key)))
            goto bad_format; /* keys are literals: a bug, not input */
        switch (t) {
        case 's': {
            const char *v = va_arg(ap, const char *);
            if (v)
                set_str(o, key, v, &bad);
            else if (mod != '*')
                json_object_set_new(o, key, json_null());
            break;
        }
        case 'i':
            json_object_set_new(o, key, json_integer(va_arg(ap, int)));
            break;
        case 'I':
            json_object_set_new(o, key, json_integer(va_arg(ap, json_int_t)));
            break;
        case 'f': {
            /* NaN and infinities have no JSON form: the field becomes null
             * and is named in "unencodable" rather than vanishing. */
            json_t *v = json_real(va_arg(ap, double));
            if (!v) {
                v = json_null();
                if (!unenc)
                    unenc = json_array();
                json_array_append_new(unenc, json_string(key));
            }
            json_object_set_new(o, key, v);
            break;
        }
        case 'b':
            json_object_set_new(o, key, json_boolean(va_arg(ap, int)));
            break;
        case 'O': {
            json_t *v = va_arg(ap, json_t *);
            if (v)
                json_object_set_new(o, key, json_incref(v));
            else if (mod != '*')
                json_object_set_new(o, key, json_null());
            break;
        }
        default:
            goto bad_format;
        }
    }
    if (bad)
        json_object_set_new(o, "invalid_utf8", bad);
    if (unenc)
        json_object_set_new(o, "unencodable", unenc);
    return o;
bad_format:
    json_decref(bad);
    json_decref(unenc);
    json_object_set_new(o, "log_format_error", json_string(fmt));
    return o;
}

static void vemit(const log_ctx *c, log_level l, const char *msg, const char *fmt, va_list ap)
{
    json_t *o = NULL, *base;
    char ts[80];
    struct timespec now;
    struct tm tm;
    char *line = NULL;

    if (fmt)
        o = pack_fields(fmt, ap);
    clock_gettime(CLOCK_REALTIME, &now);
    gmtime_r(&now.tv_sec, &tm);
    snprintf(ts, sizeof(ts), "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ", tm.tm_year + 1900,
             tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, now.tv_nsec / 1000000);
    /* ts, level, msg first: what a person scanning the log reads first. */
    base = json_pack("{s:s,s:s}", "ts", ts, "level", names[l]);
    if (base) {
        json_t *bad = NULL;
        if (msg)
            set_str(base, "msg", msg, &bad);
        json_decref(bad); /* msg is a literal; only a bug makes it invalid */
        bad = NULL;
        /* The request's context next, so every line of one request can be
         * found by req_id without each caller repeating it. */
        if (c && c->req_id)
            set_str(base, "req_id", c->req_id, &bad);
        if (c && c->client)
            set_str(base, "client", c->client, &bad);
        if (c && c->principal)
            set_str(base, "principal", c->principal, &bad);
        if (bad)
            json_object_set_new(base, "invalid_utf8_context", bad);
        if (o)
            json_object_update_missing(base, o);
        /* Ten significant digits: 0.941 ms prints as 0.941, not
         * 0.94099999999999995 (jansson's default is 17). */
        line = json_dumps(base, JSON_COMPACT | JSON_REAL_PRECISION(10));
        json_decref(base);
    }
    json_decref(o);
    if (line) {
        size_t n = strlen(line);
        char *buf = malloc(n + 2);
        if (buf) {
            memcpy(buf, line, n);
            buf[n] = '\n';
            ssize_t w = write(STDERR_FILENO, buf, n + 1);
            (void)w;
            free(buf);
        }
        free(line);
    }
}

void log_emit(log_level l, const char *msg, const char *fmt, ...)
{
    va_list ap;
    if (!log_enabled(l))
        return;
    va_start(ap, fmt);
    vemit(NULL, l, msg, fmt, ap);
    va_end(ap);
}

void log_with(const log_ctx *c, log_level l, const char *msg, const char *fmt, ...)
{
    va_list ap;
    if (!log_enabled(l))
        return;
    va_start(ap, fmt);
    vemit(c, l, msg, fmt, ap);
    va_end(ap);
}

void log_withv(const log_ctx *c, log_level l, const char *msg, const char *fmt, va_list ap)
{
    if (log_enabled(l))
        vemit(c, l, msg, fmt, ap);
}
