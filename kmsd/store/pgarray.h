/*
 * pgarray — building PostgreSQL array literals for parameters, so a whole
 * batch travels as a few array parameters (unnest on the server) instead of
 * a statement per row. Elements are always double-quoted and escaped, so any
 * text is safe; NULL elements are written as NULL.
 */
#ifndef QKMS_PGARRAY_H
#define QKMS_PGARRAY_H

#include <stddef.h>

typedef struct {
    char *buf;
    size_t len, cap;
    int n;
    int failed;
} pgarray;

void pgarray_init(pgarray *a);
void pgarray_add(pgarray *a, const char *elem); /* NULL = SQL NULL */
void pgarray_add_int(pgarray *a, long v);
/* The literal ("{...}"), or NULL after an allocation failure. */
const char *pgarray_finish(pgarray *a);
void pgarray_free(pgarray *a);

#endif
