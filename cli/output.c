/* output — human tables, key/value lines, JSON, and error reports. */
#include "output.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "exitcodes.h"
#include "progress.h"

void out_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    /* One message, whole: a progress redraw from another thread waits
     * (the stream lock is recursive, progress_interrupt takes it too). */
    flockfile(stderr);
    progress_interrupt();
    fputs("kmsctl: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    funlockfile(stderr);
    va_end(ap);
}

void out_note(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    flockfile(stderr);
    progress_interrupt();
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    funlockfile(stderr);
    va_end(ap);
}

void out_text(FILE *f, const char *s)
{
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p < 0x20 || *p == 0x7f) {
            fputc('?', f);
        } else if (*p == 0xc2 && p[1] >= 0x80 && p[1] <= 0x9f) {
            /* UTF-8 encoded C1 control (U+0080..U+009F, e.g. CSI). */
            fputc('?', f);
            p++;
        } else {
            fputc(*p, f);
        }
    }
}

void out_lines(FILE *f, const char *s)
{
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '\n') {
            fputc('\n', f);
        } else {
            char one[2] = {(char)*p, '\0'};
            out_text(f, one);
        }
    }
}

void out_textf(FILE *f, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    for (const char *p = fmt; *p; p++) {
        if (p[0] == '%' && p[1] == 's') {
            out_text(f, va_arg(ap, const char *));
            p++;
        } else {
            fputc(*p, f);
        }
    }
    va_end(ap);
}

const char *out_string_or(const json_t *v, const char *none)
{
    return json_is_string(v) ? json_string_value(v) : none;
}

/* Terminal columns of s as out_text prints it; wide glyphs count as one. */
static size_t text_width(const char *s)
{
    size_t w = 0;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++)
        if ((*p & 0xc0) != 0x80)
            w++;
    return w;
}

void out_api_error(bool json, long status, const json_t *body, const char *fallback)
{
    if (json && body)
        out_json(body);

    const json_t *err = json_object_get(body, "error");
    const char *code = json_string_value(json_object_get(err, "code"));
    const char *message = json_string_value(json_object_get(err, "message"));

    flockfile(stderr);
    progress_interrupt();
    fputs("kmsctl: ", stderr);
    out_text(stderr, message && *message ? message : fallback);
    fputs(" (", stderr);
    if (code && *code) {
        out_text(stderr, code);
        fputs(", ", stderr);
    }
    fprintf(stderr, "HTTP %ld)\n", status);
    funlockfile(stderr);
}

int out_json(const json_t *value)
{
    if (json_dumpf(value, stdout, JSON_INDENT(2) | JSON_ENCODE_ANY) != 0 || fputc('\n', stdout) == EOF) {
        out_error("cannot write output");
        return EXIT_INTERNAL;
    }
    return EXIT_OK;
}

int out_result(bool json, int rc, json_t *value, out_printer print)
{
    if (rc == EXIT_OK)
        rc = json ? out_json(value) : print(value);
    json_decref(value);
    return rc;
}

char *out_value_str(const json_t *v)
{
    if (!v || json_is_null(v))
        return strdup("-");
    if (json_is_string(v))
        return strdup(json_string_value(v));
    return json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
}

struct table {
    size_t ncols;
    bool has_header;
    char **cells; /* row-major; row 0 is the header when has_header */
    size_t nrows, cap_rows;
};

static void free_cells(char **cells, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(cells[i]);
}

/* Appends a row; takes ownership of the ncols strings in row either way. */
static int table_push(struct table *t, char **row)
{
    for (size_t c = 0; c < t->ncols; c++)
        if (!row[c])
            goto oom;
    if (t->nrows == t->cap_rows) {
        size_t cap = t->cap_rows ? t->cap_rows * 2 : 8;
        if (cap > SIZE_MAX / sizeof(char *) / t->ncols)
            goto oom;
        char **grown = realloc(t->cells, cap * t->ncols * sizeof(char *));
        if (!grown)
            goto oom;
        t->cells = grown;
        t->cap_rows = cap;
    }
    memcpy(t->cells + t->nrows * t->ncols, row, t->ncols * sizeof(char *));
    t->nrows++;
    return EXIT_OK;

oom:
    free_cells(row, t->ncols);
    out_error("out of memory");
    return EXIT_INTERNAL;
}

#define TABLE_MAX_COLS 16

struct table *table_new(size_t ncols, const char *const *headers)
{
    if (ncols == 0 || ncols > TABLE_MAX_COLS)
        return NULL;
    struct table *t = calloc(1, sizeof(*t));
    if (!t) {
        out_error("out of memory");
        return NULL;
    }
    t->ncols = ncols;
    if (headers) {
        t->has_header = true;
        if (table_add(t, headers) != EXIT_OK) {
            table_free(t);
            return NULL;
        }
    }
    return t;
}

int table_add(struct table *t, const char *const *cells)
{
    char *row[TABLE_MAX_COLS];
    for (size_t c = 0; c < t->ncols; c++)
        row[c] = strdup(cells[c] ? cells[c] : "-");
    return table_push(t, row);
}

int table_add_json(struct table *t, const json_t *object, const char *const *keys)
{
    char *row[TABLE_MAX_COLS];
    for (size_t c = 0; c < t->ncols; c++)
        row[c] = out_value_str(json_object_get(object, keys[c]));
    return table_push(t, row);
}

int table_print(const struct table *t, FILE *f)
{
    size_t width[TABLE_MAX_COLS] = {0};
    for (size_t r = 0; r < t->nrows; r++)
        for (size_t c = 0; c < t->ncols; c++) {
            size_t w = text_width(t->cells[r * t->ncols + c]);
            if (w > width[c])
                width[c] = w;
        }

    for (size_t r = 0; r < t->nrows; r++) {
        for (size_t c = 0; c < t->ncols; c++) {
            const char *cell = t->cells[r * t->ncols + c];
            out_text(f, cell);
            if (c + 1 < t->ncols) /* no trailing blanks after the last column */
                fprintf(f, "%*s", (int)(width[c] - text_width(cell) + 2), "");
        }
        fputc('\n', f);
    }
    if (ferror(f)) {
        out_error("cannot write output");
        return EXIT_INTERNAL;
    }
    return EXIT_OK;
}

/* out_table (fields set) and out_table_by (make set) in one loop. */
static int print_rows(const json_t *rows, size_t ncols, const char *const *headers,
                      const char *const *fields, out_row_fn make)
{
    struct table *t = table_new(ncols, headers);
    const json_t *row;
    size_t i;
    int rc = EXIT_INTERNAL;

    if (!t)
        goto cleanup;
    json_array_foreach(rows, i, row) {
        char *cells[TABLE_MAX_COLS] = {NULL};
        if (make)
            make(row, cells);
        rc = make ? table_push(t, cells) : table_add_json(t, row, fields);
        if (rc)
            goto cleanup;
    }
    rc = table_print(t, stdout);

cleanup:
    table_free(t);
    return rc;
}

int out_table(const json_t *rows, size_t ncols, const char *const *headers,
              const char *const *fields)
{
    return print_rows(rows, ncols, headers, fields, NULL);
}

int out_table_by(const json_t *rows, size_t ncols, const char *const *headers, out_row_fn make)
{
    return print_rows(rows, ncols, headers, NULL, make);
}

void table_free(struct table *t)
{
    if (!t)
        return;
    free_cells(t->cells, t->nrows * t->ncols);
    free(t->cells);
    free(t);
}

void table_free_wiped(struct table *t)
{
    if (!t)
        return;
    for (size_t i = 0; i < t->nrows * t->ncols; i++)
        explicit_bzero(t->cells[i], strlen(t->cells[i]));
    table_free(t);
}

/* Adds "prefix.key:" rows for object members, recursing into objects. */
static int kv_collect(struct table *t, const char *prefix, const json_t *object)
{
    const char *key;
    json_t *value;
    json_object_foreach((json_t *)object, key, value) {
        char *path = NULL;
        int rc;
        if (asprintf(&path, "%s%s%s", prefix, *prefix ? "." : "", key) < 0) {
            out_error("out of memory");
            return EXIT_INTERNAL;
        }
        if (json_is_object(value) && json_object_size(value) > 0) {
            rc = kv_collect(t, path, value);
        } else {
            char *row[2] = {NULL, out_value_str(value)};
            if (asprintf(&row[0], "%s:", path) < 0)
                row[0] = NULL;
            rc = table_push(t, row);
        }
        free(path);
        if (rc)
            return rc;
    }
    return EXIT_OK;
}

int out_kv(const json_t *object)
{
    if (!json_is_object(object))
        return out_json(object);
    struct table *t = table_new(2, NULL);
    if (!t)
        return EXIT_INTERNAL;
    int rc = kv_collect(t, "", object);
    if (rc == EXIT_OK)
        rc = table_print(t, stdout);
    table_free(t);
    return rc;
}

const char *out_safe(const char *s)
{
    return s && strstr(s, "qkms_") ? "<hidden: looks like an admin token>" : s;
}
