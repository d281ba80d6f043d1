/*
 * pgjson — turning PostgreSQL text results into JSON values.
 * Sessions run with TimeZone=UTC, so timestamptz arrives as
 * "YYYY-MM-DD HH:MM:SS[.ffffff]+00"; we answer RFC 3339 "YYYY-MM-DDTHH:MM:SSZ".
 */
#ifndef QKMS_PGJSON_H
#define QKMS_PGJSON_H

#include <jansson.h>
#include <libpq-fe.h>

/* Field as a JSON string, or JSON null when SQL NULL. */
json_t *pgjson_text(const PGresult *r, int row, int col);
/* timestamptz field as RFC 3339 UTC string, or JSON null. */
json_t *pgjson_time(const PGresult *r, int row, int col);
/* Convert one timestamptz text (UTC) into RFC 3339; returns 0 or -1. */
int pgjson_rfc3339(const char *pg, char *out, size_t len);

/* One result row as a JSON value. */
typedef json_t *(*pgjson_row_fn)(const PGresult *r, int row);
/* Every row of r through row(), in order, as a new JSON array. */
json_t *pgjson_rows(const PGresult *r, pgjson_row_fn row);

#endif
