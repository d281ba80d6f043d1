/* csv — an RFC 4180 record splitter as a small state machine. */
#include "csv.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

enum state {
    FIELD_START, /* nothing of the current field seen yet */
    UNQUOTED,    /* inside a plain field */
    QUOTED,      /* inside "..." */
    QUOTE_SEEN,  /* a '"' inside "...": an escaped quote or the end */
};

struct builder {
    char *buf; /* the current field */
    size_t len, cap;
    struct csv_record rec;
    size_t cap_fields;
};

static bool put_char(struct builder *b, char c)
{
    if (b->len + 1 >= b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 64;
        char *grown = realloc(b->buf, cap);
        if (!grown)
            return false;
        b->buf = grown;
        b->cap = cap;
    }
    b->buf[b->len++] = c;
    return true;
}

/* Ends the current field and moves it into the record. */
static bool end_field(struct builder *b)
{
    if (b->rec.n == b->cap_fields) {
        size_t cap = b->cap_fields ? b->cap_fields * 2 : 8;
        char **grown = realloc(b->rec.field, cap * sizeof(char *));
        if (!grown)
            return false;
        b->rec.field = grown;
        b->cap_fields = cap;
    }
    char *copy = malloc(b->len + 1);
    if (!copy)
        return false;
    if (b->len)
        memcpy(copy, b->buf, b->len);
    copy[b->len] = '\0';
    b->rec.field[b->rec.n++] = copy;
    b->len = 0;
    return true;
}

/* One character; false with *why set (or NULL for out of memory). */
static bool step(struct builder *b, enum state *st, char c, const char **why)
{
    *why = NULL;
    switch (*st) {
    case FIELD_START:
        if (c == '"') {
            *st = QUOTED;
            return true;
        }
        if (c == ',')
            return end_field(b);
        *st = UNQUOTED;
        return put_char(b, c);
    case UNQUOTED:
        if (c == ',') {
            *st = FIELD_START;
            return end_field(b);
        }
        if (c == '"') {
            *why = "a quote inside an unquoted field (quote the whole field and double the quote)";
            return false;
        }
        return put_char(b, c);
    case QUOTED:
        if (c == '"') {
            *st = QUOTE_SEEN;
            return true;
        }
        return put_char(b, c);
    case QUOTE_SEEN:
        if (c == '"') {
            *st = QUOTED;
            return put_char(b, '"');
        }
        if (c == ',') {
            *st = FIELD_START;
            return end_field(b);
        }
        *why = "text after the closing quote of a field";
        return false;
    }
    return false;
}

enum csv_result csv_split(const char *text, size_t len, struct csv_record *out, const char **why)
{
    struct builder b = {0};
    enum state st = FIELD_START;
    enum csv_result res = CSV_NOMEM;

    out->field = NULL;
    out->n = 0;
    *why = NULL;
    for (size_t i = 0; i < len; i++) {
        if (text[i] == '\0') {
            *why = "a NUL byte";
            res = CSV_BAD;
            goto fail;
        }
        if (!step(&b, &st, text[i], why)) {
            res = *why ? CSV_BAD : CSV_NOMEM;
            goto fail;
        }
    }
    if (st == QUOTED) {
        res = CSV_MORE;
        goto fail;
    }
    if (!end_field(&b))
        goto fail;
    free(b.buf);
    *out = b.rec;
    return CSV_OK;

fail:
    free(b.buf);
    csv_record_free(&b.rec);
    return res;
}

void csv_record_free(struct csv_record *r)
{
    for (size_t i = 0; i < r->n; i++)
        free(r->field[i]);
    free(r->field);
    r->field = NULL;
    r->n = 0;
}
