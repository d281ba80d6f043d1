/* log — JSON-lines logging. */
#include "log.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

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

void log_emit(log_level l, const char *msg, const char *fmt, ...)
{
    json_t *o = NULL;
    char ts[80];
    struct timespec now;
    struct tm tm;
    char *line = NULL;

    if (!log_enabled(l))
        return;
    if (fmt) {
        va_list ap;
        json_error_t je;
        va_start(ap, fmt);
        o = json_vpack_ex(&je, 0, fmt, ap);
        va_end(ap);
    }
    if (!o)
        o = json_object();
    if (!o)
        return;
    clock_gettime(CLOCK_REALTIME, &now);
    gmtime_r(&now.tv_sec, &tm);
    snprintf(ts, sizeof(ts), "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ", tm.tm_year + 1900,
             tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, now.tv_nsec / 1000000);
    {
        /* ts, level, msg first: what a person scanning the log reads first. */
        json_t *base = json_pack("{s:s,s:s,s:s?}", "ts", ts, "level", names[l], "msg", msg);
        if (base) {
            json_object_update_missing(base, o);
            line = json_dumps(base, JSON_COMPACT);
            json_decref(base);
        }
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
