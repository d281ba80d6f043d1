/*
 * output — everything kmsctl prints.
 *
 * stdout carries results only (tables, key/value lines, or with --json the
 * server's JSON body); stderr carries errors and notes. Text that came from
 * the server is printed with control characters replaced by '?', so a
 * broken or hostile server cannot drive the terminal. Functions returning
 * int return EXIT_OK, or EXIT_INTERNAL after reporting the failure.
 */
#ifndef KMSCTL_OUTPUT_H
#define KMSCTL_OUTPUT_H
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <jansson.h>

/* "kmsctl: <message>\n" on stderr. Only for text kmsctl itself composed. */
void out_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* s, or a placeholder when s carries something that looks like an admin
 * token ("qkms_..."): for echoing user-typed words and URLs in messages,
 * where a token pasted in the wrong place must not end up on screen or in
 * a CI log. */
const char *out_safe(const char *s);
/* "<message>\n" on stderr, for hints that are not errors. */
void out_note(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Writes s to f with terminal control characters replaced. */
void out_text(FILE *f, const char *s);
/* The same, but newlines are kept: for multi-line text from the server
 * (PEM). A C1 control's two bytes are each replaced. */
void out_lines(FILE *f, const char *s);
/*
 * fmt to f, each "%s" replaced by the next argument through out_text: for
 * sentences around names that came from the user or the server. "%s" is
 * the only conversion; the rest of fmt is written as it is.
 */
void out_textf(FILE *f, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* The string value of v, or none when v is not a string (or NULL). */
const char *out_string_or(const json_t *v, const char *none);

/*
 * Reports an error response: "kmsctl: <message> (<code>, HTTP <status>)"
 * from the server's {"error":{"code","message"}}, else `fallback`. With
 * json set, a JSON body is also printed on stdout for scripts.
 */
void out_api_error(bool json, long status, const json_t *body, const char *fallback);

/* The value pretty-printed on stdout, newline-terminated. */
int out_json(const json_t *value);

/* Human output of a server answer; returns like the functions above. */
typedef int (*out_printer)(const json_t *value);

/*
 * The end of most commands: when rc is EXIT_OK, prints value as JSON
 * (json set, i.e. --json) or through print. Takes value (NULL is fine) and
 * releases it either way. Returns rc if it is not EXIT_OK, else the
 * printing's result.
 */
int out_result(bool json, int rc, json_t *value, out_printer print);

/*
 * Heap string for one JSON value in human output: strings as they are,
 * null or missing (NULL) as "-", numbers and booleans as in JSON, arrays
 * and objects as compact JSON. NULL on out of memory. Caller frees.
 */
char *out_value_str(const json_t *value);

/*
 * An object as aligned "key: value" lines on stdout, nested objects
 * flattened to dotted keys ("master_key.label"), in the server's order.
 */
int out_kv(const json_t *object);

/*
 * A table of ncols columns on stdout: a header row, then one row per
 * object of the array rows, its fields rendered with out_value_str (a
 * non-array prints the header alone).
 */
int out_table(const json_t *rows, size_t ncols, const char *const *headers,
              const char *const *fields);
/* Sets the ncols cells of one row to heap strings made from row; a cell
 * left NULL stands for a failed allocation. */
typedef void (*out_row_fn)(const json_t *row, char **cells);
/* As out_table, but each row's cells come from make; the table takes them
 * and reports out of memory for a NULL one. */
int out_table_by(const json_t *rows, size_t ncols, const char *const *headers, out_row_fn make);

/* A text table: columns padded to the widest cell, two spaces apart. */
struct table;
/* headers: ncols strings (copied), or NULL for a table without a header row. */
struct table *table_new(size_t ncols, const char *const *headers);
/* Copies ncols cells into a new row. */
int table_add(struct table *t, const char *const *cells);
/* Adds one row from object fields, rendered with out_value_str. */
int table_add_json(struct table *t, const json_t *object, const char *const *keys);
int table_print(const struct table *t, FILE *f);
void table_free(struct table *t);
/* table_free for a table whose cells held secrets: wipes them first. */
void table_free_wiped(struct table *t);

#endif
