/*
 * pgarray — array literals for statement parameters (pgarray.h), written
 * into a bounded, wiping qbuf.
 */
#include "store/pgarray.h"

#include <stdio.h>
#include <string.h>

void pgarray_init(pgarray *a) { memset(a, 0, sizeof(*a)); }

static void put(pgarray *a, const char *s, size_t n)
{
    if (a->failed)
        return;
    if (!a->b && !(a->b = qbuf_new(PGARRAY_MAX, 0))) {
        a->failed = 1;
        return;
    }
    if (qbuf_put(a->b, s, n) != QBUF_OK)
        a->failed = 1;
}

void pgarray_add(pgarray *a, const char *e)
{
    const char *p, *run;
    put(a, a->n++ ? "," : "{", 1);
    if (!e) {
        put(a, "NULL", 4);
        return;
    }
    put(a, "\"", 1);
    /* Runs without a character to escape go in whole. */
    for (run = p = e; *p; p++) {
        if (*p != '"' && *p != '\\')
            continue;
        put(a, run, (size_t)(p - run));
        put(a, "\\", 1);
        run = p;
    }
    put(a, run, (size_t)(p - run));
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
    return a->failed ? NULL : qbuf_str(a->b);
}

void pgarray_free(pgarray *a)
{
    qbuf_free(a->b);
    memset(a, 0, sizeof(*a));
}
