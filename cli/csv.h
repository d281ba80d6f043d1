/*
 * csv — splits one RFC 4180 record into fields.
 *
 * Fields are separated by ','. A field may be enclosed in '"'; inside, ""
 * stands for one quote and ',' or a line break are ordinary characters.
 * A '"' inside an unquoted field, or anything but ',' after a closing
 * quote, is an error. Spaces belong to the field. The caller strips the
 * line terminator; an empty text is one empty field. Pure: no I/O.
 */
#ifndef KMSCTL_CSV_H
#define KMSCTL_CSV_H
#include <stddef.h>

enum csv_result {
    CSV_OK,    /* out holds the fields */
    CSV_MORE,  /* text ends inside a quoted field: the record goes on */
    CSV_BAD,   /* *why says what is wrong */
    CSV_NOMEM, /* out of memory (not reported) */
};

struct csv_record {
    char **field; /* NUL-terminated copies */
    size_t n;
};

/* On anything but CSV_OK, out is left empty. NUL bytes are CSV_BAD. */
enum csv_result csv_split(const char *text, size_t len, struct csv_record *out, const char **why);

/* Frees the fields and empties r; an empty record is fine. */
void csv_record_free(struct csv_record *r);

#endif
