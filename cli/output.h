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

/*
 * Reports an error response: "kmsctl: <message> (<code>, HTTP <status>)"
 * from the server's {"error":{"code","message"}}, else `fallback`. With
 * json set, a JSON body is also printed on stdout for scripts.
 */
void out_api_error(bool json, long status, const json_t *body, const char *fallback);

/* The value pretty-printed on stdout, newline-terminated. */
int out_json(const json_t *value);

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
