/* import_file — CSV / JSON-lines rows for device import; see import_file.h. */
#include "import_file.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include "attr_arg.h"
#include "csv.h"
#include "exitcodes.h"
#include "output.h"

/* Far beyond any real row; keeps a file without line breaks in check. */
#define RECORD_MAX (64 * 1024)
#define BOM "\xef\xbb\xbf"

enum format { FMT_UNKNOWN, FMT_CSV, FMT_JSONL };

enum col {
    COL_DEVICE_ID, COL_TYPE, COL_GROUP, COL_PARENT, COL_KEYS, COL_KEY_BITS, COL_VALIDITY,
    COL_SERVICE_DAYS, NCOLS,
    COL_ATTR = NCOLS /* attr.NAME: one attribute, its name in attr_names */
};
static const char *const col_names[NCOLS] = {"device_id", "type",     "group",
                                             "parent",    "keys",     "key_bits",
                                             "validity_days", "service_days"};
#define ATTR_PREFIX "attr."
#define ATTR_COLS_MAX 32 /* the server's limit of attributes per device */
#define ATTR_NAME_MAX 32
#define HEADER_MAX (NCOLS + ATTR_COLS_MAX)
/* The columns the server takes as integers; the rest are strings. */
static bool col_is_int(enum col c)
{
    return c == COL_KEYS || c == COL_KEY_BITS || c == COL_VALIDITY || c == COL_SERVICE_DAYS;
}

struct import_file {
    FILE *fp;
    const char *path;
    enum format fmt;
    char *line; /* getline's buffer: the current physical line, terminator stripped */
    size_t line_cap, line_len;
    long lineno;  /* of the current physical line */
    bool pending; /* line is a data line import_open read ahead */
    enum col cols[HEADER_MAX]; /* CSV: the column at each header position */
    char attr_names[HEADER_MAX][ATTR_NAME_MAX + 1]; /* of the COL_ATTR ones */
    size_t ncols;
};

/* A row that does not parse; message is printf-style. */
struct failure {
    const char *device_id; /* NULL if unknown */
    char message[200];
};

/* ---- lines ---------------------------------------------------------------- */

/* Next physical line into f->line, terminator and a leading BOM stripped.
 * EXIT_OK with *got false at the end of the file; EXIT_USAGE on a read
 * error, after reporting. */
static int read_line(struct import_file *f, bool *got)
{
    errno = 0;
    ssize_t n = getline(&f->line, &f->line_cap, f->fp);
    *got = n >= 0;
    if (n < 0) {
        if (ferror(f->fp)) {
            out_error("cannot read import file %s: %s", out_safe(f->path),
                      strerror(errno ? errno : EIO));
            return EXIT_USAGE;
        }
        return EXIT_OK;
    }
    f->lineno++;
    size_t len = (size_t)n;
    if (len && f->line[len - 1] == '\n')
        len--;
    if (len && f->line[len - 1] == '\r')
        len--;
    f->line[len] = '\0';
    if (f->lineno == 1 && len >= 3 && memcmp(f->line, BOM, 3) == 0) {
        memmove(f->line, f->line + 3, len - 2);
        len -= 3;
    }
    f->line_len = len;
    return EXIT_OK;
}

static bool line_blank(const struct import_file *f)
{
    for (size_t i = 0; i < f->line_len; i++)
        if (f->line[i] != ' ' && f->line[i] != '\t')
            return false;
    return true;
}

static int read_nonblank(struct import_file *f, bool *got)
{
    int rc;
    do
        rc = read_line(f, got);
    while (!rc && *got && line_blank(f));
    return rc;
}

/* ---- results ----------------------------------------------------------------- */

static int failure_row(long line, const struct failure *why, json_t **row)
{
    static const char fmt[] = "{s:I, s:s?, s:s, s:{s:s, s:s}}";
    *row = json_pack(fmt, "line", (json_int_t)line, "device_id", why->device_id, "status",
                     "error", "error", "code", "parse_error", "message", why->message);
    /* Not UTF-8 (the ID, or file text quoted in the message): say less. */
    if (!*row)
        *row = json_pack(fmt, "line", (json_int_t)line, "device_id", NULL, "status", "error",
                         "error", "code", "parse_error", "message", why->message);
    if (!*row)
        *row = json_pack(fmt, "line", (json_int_t)line, "device_id", NULL, "status", "error",
                         "error", "code", "parse_error", "message",
                         "row does not parse (and is not valid UTF-8)");
    if (!*row) {
        out_error("out of memory");
        return EXIT_INTERNAL;
    }
    return EXIT_OK;
}

/* Strict optional-minus-then-digits, within json_int_t. */
static bool parse_int(const char *s, json_int_t *out)
{
    const char *d = *s == '-' ? s + 1 : s;
    if (*d < '0' || *d > '9')
        return false;
    errno = 0;
    char *end;
    long long v = strtoll(s, &end, 10);
    if (errno || *end)
        return false;
    *out = (json_int_t)v;
    return true;
}

/* ---- CSV ------------------------------------------------------------------ */

static int read_header(struct import_file *f)
{
    struct csv_record rec = {0};
    const char *why;
    bool seen[NCOLS] = {false};
    int rc = EXIT_USAGE;

    switch (csv_split(f->line, f->line_len, &rec, &why)) {
    case CSV_OK:
        break;
    case CSV_NOMEM:
        out_error("out of memory");
        return EXIT_INTERNAL;
    default:
        out_error("%s line %ld: bad CSV header: %s", out_safe(f->path), f->lineno,
                  why ? why : "a quote is not closed");
        return EXIT_USAGE;
    }
    if (rec.n > HEADER_MAX) {
        out_error("%s line %ld: the CSV header has %zu columns; at most %d", out_safe(f->path),
                  f->lineno, rec.n, HEADER_MAX);
        goto cleanup;
    }
    for (size_t i = 0; i < rec.n; i++) {
        char *name = rec.field[i];
        size_t len = strlen(name);
        while (len && name[len - 1] == ' ') /* "device_id, type" is common */
            name[--len] = '\0';
        name += strspn(name, " ");
        int c = 0;
        if (!strncmp(name, ATTR_PREFIX, strlen(ATTR_PREFIX))) {
            const char *an = name + strlen(ATTR_PREFIX);
            bool dup = false;
            for (size_t j = 0; j < i; j++)
                dup = dup || (f->cols[j] == COL_ATTR && !strcmp(f->attr_names[j], an));
            bool ascii = true;
            for (const char *q = an; *q; q++)
                ascii = ascii && *q > 0x20 && *q < 0x7f;
            /* The name's form is the server's to judge; printable ASCII
             * makes it a JSON key, its length bounds the buffer. */
            if (!*an || strlen(an) > ATTR_NAME_MAX || dup || !ascii) {
                out_error("%s line %ld: %s column '%s' in the CSV header (attr.NAME, NAME of 1 to"
                          " %d printable ASCII characters)",
                          out_safe(f->path), f->lineno, dup ? "repeated" : "bad", out_safe(name),
                          ATTR_NAME_MAX);
                goto cleanup;
            }
            snprintf(f->attr_names[i], sizeof(f->attr_names[i]), "%s", an);
            f->cols[i] = COL_ATTR;
            continue;
        }
        while (c < NCOLS && strcmp(col_names[c], name) != 0)
            c++;
        if (c == NCOLS || seen[c]) {
            out_error("%s line %ld: %s column '%s' in the CSV header (known: device_id, type, "
                      "group, parent, keys, key_bits, validity_days, service_days, attr.NAME)",
                      out_safe(f->path), f->lineno, c == NCOLS ? "unknown" : "repeated",
                      out_safe(name));
            goto cleanup;
        }
        seen[c] = true;
        f->cols[i] = (enum col)c;
    }
    if (!seen[COL_DEVICE_ID] || !seen[COL_TYPE]) {
        out_error("%s line %ld: the CSV header must name the device_id and type columns",
                  out_safe(f->path), f->lineno);
        goto cleanup;
    }
    f->ncols = rec.n;
    rc = EXIT_OK;

cleanup:
    csv_record_free(&rec);
    return rc;
}

/*
 * Splits the record starting at the current line. A quoted field left open
 * pulls in following lines, so that they are not mistaken for rows; such a
 * record is then rejected as a whole. Returns EXIT_OK with *res CSV_OK or
 * CSV_BAD (why in *fail), or an exit code.
 */
static int split_record(struct import_file *f, struct csv_record *rec, enum csv_result *res,
                        struct failure *fail)
{
    long first = f->lineno;
    char *acc = NULL;
    size_t acc_len = 0;
    const char *why = NULL;
    int rc = EXIT_OK;

    *res = csv_split(f->line, f->line_len, rec, &why);
    while (*res == CSV_MORE) {
        bool got;
        if (!acc) {
            if (!(acc = strndup(f->line, f->line_len)))
                break;
            acc_len = f->line_len;
        }
        if ((rc = read_line(f, &got)))
            goto cleanup;
        if (!got || acc_len + 1 + f->line_len > RECORD_MAX) {
            snprintf(fail->message, sizeof(fail->message),
                     "a quoted field is not closed on this line (fields may not span lines)");
            *res = CSV_BAD;
            goto cleanup;
        }
        char *grown = realloc(acc, acc_len + 1 + f->line_len + 1);
        if (!grown)
            break;
        acc = grown;
        acc[acc_len] = '\n';
        memcpy(acc + acc_len + 1, f->line, f->line_len + 1);
        acc_len += 1 + f->line_len;
        *res = csv_split(acc, acc_len, rec, &why);
    }
    if (*res == CSV_MORE || *res == CSV_NOMEM) {
        out_error("out of memory");
        rc = EXIT_INTERNAL;
    } else if (*res == CSV_BAD) {
        snprintf(fail->message, sizeof(fail->message), "bad CSV: %s", why);
    } else if (f->lineno != first) {
        csv_record_free(rec);
        snprintf(fail->message, sizeof(fail->message),
                 "a quoted field spans lines %ld-%ld; fields may not span lines", first, f->lineno);
        *res = CSV_BAD;
    }

cleanup:
    free(acc);
    return rc;
}

static bool short_ascii(const char *s)
{
    size_t n = 0;
    for (; s[n]; n++)
        if ((unsigned char)s[n] < 0x20 || (unsigned char)s[n] > 0x7e)
            return false;
    return n <= 40;
}

/* One cell into obj[col] (an attribute into obj.attributes[name]); false
 * with fail->message set if it does not parse. */
static bool put_cell(json_t *obj, enum col c, const char *attr, const char *cell,
                     struct failure *fail, int *rc)
{
    json_t *v, *attrs;
    json_int_t n;
    if (c == COL_ATTR) {
        if (!(attrs = json_object_get(obj, "attributes")) &&
            json_object_set_new(obj, "attributes", attrs = json_object()) != 0)
            attrs = NULL;
        if (!(v = attr_arg_value(attr, cell))) {
            snprintf(fail->message, sizeof(fail->message), "attr.%s is not valid UTF-8", attr);
            return false;
        }
        if (!attrs || json_object_set_new(attrs, attr, v) != 0) {
            out_error("out of memory");
            *rc = EXIT_INTERNAL;
            return false;
        }
        return true;
    }
    if (c == COL_SERVICE_DAYS && !strcmp(cell, "none")) {
        v = json_null(); /* no end of service */
    } else if (col_is_int(c)) {
        if (!parse_int(cell, &n)) {
            /* Quote only short ASCII: a cut UTF-8 sequence would not be JSON. */
            bool quote = short_ascii(cell);
            snprintf(fail->message, sizeof(fail->message), "%s must be a whole number%s%s%s",
                     col_names[c], quote ? ", not '" : "", quote ? cell : "", quote ? "'" : "");
            return false;
        }
        v = json_integer(n);
    } else if (!(v = json_string(cell))) {
        snprintf(fail->message, sizeof(fail->message), "%s is not valid UTF-8", col_names[c]);
        return false;
    }
    if (json_object_set_new(obj, col_names[c], v) != 0) {
        out_error("out of memory");
        *rc = EXIT_INTERNAL;
        return false;
    }
    return true;
}

static int csv_row(struct import_file *f, json_t **row, bool *parsed)
{
    long line = f->lineno;
    struct csv_record rec = {0};
    struct failure fail = {0};
    enum csv_result res;
    json_t *obj = NULL;
    int rc = split_record(f, &rec, &res, &fail);

    if (rc || res != CSV_OK)
        goto done;
    for (size_t i = 0; i < rec.n && i < f->ncols; i++)
        if (f->cols[i] == COL_DEVICE_ID)
            fail.device_id = rec.field[i];
    if (rec.n != f->ncols) {
        snprintf(fail.message, sizeof(fail.message), "expected %zu fields as in the header, found %zu",
                 f->ncols, rec.n);
        goto done;
    }
    if (!(obj = json_pack("{s:I}", "line", (json_int_t)line))) {
        out_error("out of memory");
        rc = EXIT_INTERNAL;
        goto done;
    }
    for (size_t i = 0; i < rec.n; i++)
        if (*rec.field[i] &&
            !put_cell(obj, f->cols[i], f->attr_names[i], rec.field[i], &fail, &rc))
            goto done;
    *row = obj;
    obj = NULL;
    *parsed = true;

done:
    if (!rc && !*parsed)
        rc = failure_row(line, &fail, row);
    json_decref(obj);
    csv_record_free(&rec);
    return rc;
}

/* ---- JSON lines ------------------------------------------------------------ */

static int jsonl_row(struct import_file *f, json_t **row, bool *parsed)
{
    struct failure fail = {0};
    json_error_t jerr;
    json_t *obj = json_loadb(f->line, f->line_len, JSON_REJECT_DUPLICATES, &jerr);
    int rc = EXIT_OK;

    if (!obj) {
        snprintf(fail.message, sizeof(fail.message), "not valid JSON: %s (column %d)", jerr.text,
                 jerr.column);
        goto done;
    }
    if (!json_is_object(obj)) {
        snprintf(fail.message, sizeof(fail.message), "not a JSON object");
        goto done;
    }
    fail.device_id = json_string_value(json_object_get(obj, "device_id"));
    for (int c = 0; c < NCOLS; c++) {
        const json_t *v = json_object_get(obj, col_names[c]);
        if (col_is_int(c) && v && !json_is_integer(v) && !json_is_null(v)) {
            snprintf(fail.message, sizeof(fail.message), "%s must be a whole number", col_names[c]);
            goto done;
        }
    }
    if (json_object_set_new(obj, "line", json_integer(f->lineno)) != 0) {
        out_error("out of memory");
        rc = EXIT_INTERNAL;
        goto done;
    }
    *row = obj;
    obj = NULL;
    *parsed = true;

done:
    if (!rc && !*parsed)
        rc = failure_row(f->lineno, &fail, row);
    json_decref(obj); /* after failure_row: fail.device_id may point into it */
    return rc;
}

/* ---- the file ---------------------------------------------------------------- */

static bool has_suffix(const char *path, const char *suffix)
{
    size_t n = strlen(path), s = strlen(suffix);
    return n > s && strcasecmp(path + n - s, suffix) == 0;
}

static enum format format_of(const char *path)
{
    if (has_suffix(path, ".csv"))
        return FMT_CSV;
    if (has_suffix(path, ".jsonl") || has_suffix(path, ".json") || has_suffix(path, ".ndjson"))
        return FMT_JSONL;
    return FMT_UNKNOWN;
}

/* With the first non-blank line read: settles the format, reads the header. */
static int start(struct import_file *f)
{
    char first = f->line[strspn(f->line, " \t")];
    if (f->fmt == FMT_UNKNOWN)
        f->fmt = first == '{' ? FMT_JSONL : FMT_CSV;
    if (f->fmt == FMT_CSV)
        return read_header(f);
    if (first == '[') {
        out_error("%s holds a JSON array; import reads JSON lines: one object per line",
                  out_safe(f->path));
        return EXIT_USAGE;
    }
    f->pending = true;
    return EXIT_OK;
}

int import_open(const char *path, const char *format, struct import_file **out)
{
    struct import_file *f = calloc(1, sizeof(*f));
    bool got;
    int rc = EXIT_INTERNAL;

    *out = NULL;
    if (!f) {
        out_error("out of memory");
        return rc;
    }
    f->path = path;
    rc = EXIT_USAGE;
    if (!format)
        f->fmt = format_of(path);
    else if (strcmp(format, "csv") == 0)
        f->fmt = FMT_CSV;
    else if (strcmp(format, "jsonl") == 0)
        f->fmt = FMT_JSONL;
    else {
        out_error("--format must be csv or jsonl");
        goto fail;
    }
    if (!(f->fp = fopen(path, "re"))) {
        out_error("cannot read import file %s: %s", out_safe(path), strerror(errno));
        goto fail;
    }
    if ((rc = read_nonblank(f, &got)))
        goto fail;
    if (got && (rc = start(f)))
        goto fail;
    *out = f;
    return EXIT_OK;

fail:
    import_close(f);
    return rc;
}

int import_next(struct import_file *f, json_t **row, bool *parsed)
{
    bool got = true;
    int rc = EXIT_OK;

    *row = NULL;
    *parsed = false;
    if (f->pending)
        f->pending = false;
    else if ((rc = read_nonblank(f, &got)) || !got)
        return rc;

    if (f->line_len > RECORD_MAX) {
        struct failure fail = {0};
        snprintf(fail.message, sizeof(fail.message), "line is longer than %d bytes", RECORD_MAX);
        return failure_row(f->lineno, &fail, row);
    }
    return f->fmt == FMT_CSV ? csv_row(f, row, parsed) : jsonl_row(f, row, parsed);
}

void import_close(struct import_file *f)
{
    if (!f)
        return;
    if (f->fp)
        fclose(f->fp);
    free(f->line);
    free(f);
}

double import_fraction(const struct import_file *f)
{
    struct stat sb;
    off_t at;
    if (!f || !f->fp || fstat(fileno(f->fp), &sb) != 0 || !S_ISREG(sb.st_mode) ||
        sb.st_size <= 0 || (at = ftello(f->fp)) < 0)
        return -1;
    return at >= sb.st_size ? 1.0 : (double)at / (double)sb.st_size;
}
