/* pgjson — PostgreSQL text values to JSON. */
#include "store/pgjson.h"

#include <stdio.h>
#include <string.h>

int pgjson_rfc3339(const char *s, char *out, size_t len)
{
    /* "2026-11-23 08:13:28.123+00" -> "2026-11-23T08:13:28Z" */
    if (strlen(s) < 19 || s[10] != ' ' || len < 21)
        return -1;
    memcpy(out, s, 19);
    out[10] = 'T';
    out[19] = 'Z';
    out[20] = 0;
    return 0;
}

json_t *pgjson_text(const PGresult *r, int row, int col)
{
    if (PQgetisnull(r, row, col))
        return json_null();
    return json_string(PQgetvalue(r, row, col));
}

json_t *pgjson_time(const PGresult *r, int row, int col)
{
    char buf[32];
    if (PQgetisnull(r, row, col) || pgjson_rfc3339(PQgetvalue(r, row, col), buf, sizeof(buf)))
        return json_null();
    return json_string(buf);
}

json_t *pgjson_rows(const PGresult *r, pgjson_row_fn row)
{
    json_t *arr = json_array();
    for (int i = 0; i < PQntuples(r); i++)
        json_array_append_new(arr, row(r, i));
    return arr;
}
