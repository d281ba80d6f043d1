/*
 * pgarray — building PostgreSQL array literals for parameters, so a whole
 * batch travels as a few array parameters (unnest on the server) instead of
 * a statement per row.
 *
 * Contract:
 *  - Elements are always double-quoted and escaped, so any text is safe;
 *    NULL elements are written as NULL.
 *  - The literal is built in a qbuf (common/qbuf.h): bounded by what
 *    PostgreSQL takes as one parameter (PGARRAY_MAX), and wiped when it
 *    grows and when freed, so elements may be sensitive.
 *  - An allocation failure or the bound is sticky: later adds are ignored
 *    and pgarray_finish answers NULL. pgarray_init never fails (storage is
 *    taken on the first add); pgarray_free is always needed after init.
 *  - One owner at a time; the literal is valid until the next call.
 */
#ifndef QKMS_PGARRAY_H
#define QKMS_PGARRAY_H

#include <stddef.h>

#include "qbuf.h"

/* PostgreSQL's limit on one field (1 GB), less one for the NUL. */
#define PGARRAY_MAX ((size_t)(1u << 30) - 1)

typedef struct {
    qbuf *b;
    int n;      /* elements added */
    int failed; /* an add or the finish could not be written */
} pgarray;

void pgarray_init(pgarray *a);
void pgarray_add(pgarray *a, const char *elem); /* NULL = SQL NULL */
void pgarray_add_int(pgarray *a, long v);
/* The literal ("{...}"), or NULL after an allocation failure. */
const char *pgarray_finish(pgarray *a);
void pgarray_free(pgarray *a);

#endif
