/*
 * import_file — reads a device import file (CSV or JSON lines) row by row
 * and turns each row into a registration object for
 * POST /v1/admin/devices/import, carrying "line": its 1-based line number.
 *
 * Format: forced by "csv" or "jsonl"; else by the extension (.csv; .jsonl,
 * .json, .ndjson); else JSON lines if the first non-blank character is
 * '{', CSV otherwise. A UTF-8 byte order mark is skipped; lines may end in
 * LF or CRLF; blank lines are skipped in both formats.
 *
 * CSV: the first non-blank line names the columns (device_id, type, group,
 * parent, keys, key_bits, validity_days; any order, device_id and type
 * required); an empty cell is left out of the object; keys, key_bits and
 * validity_days must be whole numbers. JSON lines: one object per line,
 * passed on as it is (the server judges its fields), except that those
 * three fields must be whole numbers (or null) when present and "line" is
 * set to the line number, replacing any "line" the object had.
 *
 * A problem with the file as a whole (cannot read it, bad or incomplete
 * CSV header, a JSON array instead of JSON lines) is a usage error found
 * before any row is returned. A row that does not parse is returned as a
 * failed result instead, shaped like the server's:
 *   {"line":L,"device_id":ID|null,"status":"error",
 *    "error":{"code":"parse_error","message":"..."}}
 */
#ifndef KMSCTL_IMPORT_FILE_H
#define KMSCTL_IMPORT_FILE_H
#include <stdbool.h>
#include <jansson.h>

struct import_file;

/* format: "csv", "jsonl" or NULL (detect). EXIT_OK with *out set, or
 * EXIT_USAGE / EXIT_INTERNAL after reporting. */
int import_open(const char *path, const char *format, struct import_file **out);

/*
 * The next row in *row (caller json_decref's): a registration object when
 * *parsed is true, else a parse_error result. *row is NULL at the end of
 * the file. Returns EXIT_OK, or EXIT_USAGE (read error) / EXIT_INTERNAL
 * after reporting.
 */
int import_next(struct import_file *f, json_t **row, bool *parsed);

void import_close(struct import_file *f);
/* How much of the file has been read: 0..1, or -1 when unknown (a pipe). */
double import_fraction(const struct import_file *f);

#endif
