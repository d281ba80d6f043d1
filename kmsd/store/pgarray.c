/* pgarray — array literal builder. */
#include "store/pgarray.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void pgarray_init(pgarray *a)
{
    memset(a, 0, sizeof(*a));
}

static void put(pgarray *a, const char *s, size_t n)
{
    if (a->failed)
        return;
    if (a->len + n + 2 > a->cap) {
        size_t nc = a->cap ? a->cap : 256;
        while (a->len + n + 2 > nc)
            nc *= 2;
        char *nb = realloc(a->buf, nc);
        if (!nb) {
            a->failed = 1;
            return;
        }
        a->buf = nb;
        a->cap = nc;
    }
    memcpy(a->buf + a->len, s, n);
    a->len += n;
}

void pgarray_add(pgarray *a, const char *e)
{
    put(a, a->n++ ? "," : "{", 1);
    if (!e) {
        put(a, "NULL", 4);
        return;
    }
    put(a, "\"", 1);
    for (const char *p = e; *p; p++) {
        if (*p == '"' || *p == '\\')
            put(a, "\\", 1);
        put(a, p, 1);
    }
    put(a, "\"", 1);
}

void pgarray_add_int(pgarray *a, long v)
{
    char b[32];
    snprintf(b, sizeof(b), "%ld", v);
    pgarray_add(a, b);
}

const char *pgarray_finish(pgarray *a)
{
    if (a->n == 0)
        put(a, "{", 1);
    put(a, "}", 1);
    if (a->failed)
        return NULL;
    a->buf[a->len] = 0;
    return a->buf;
}

void pgarray_free(pgarray *a)
{
    free(a->buf);
    memset(a, 0, sizeof(*a));
}
