/*
 * audit_rows — decoding audit rows and checkpoints from PostgreSQL results
 * (audit_rows.h). It owns only the column layout's reading; the SQL text is
 * in store/queries.h next to the column lists it must agree with.
 */
#include "service/audit_rows.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hexutil.h"

audit_i64_text audit_i64_param(int64_t v)
{
    audit_i64_text t;
    snprintf(t.s, sizeof(t.s), "%" PRId64, v);
    return t;
}

int64_t audit_get_i64(const PGresult *r, int row, int col)
{
    return PQgetisnull(r, row, col) ? 0 : strtoll(PQgetvalue(r, row, col), NULL, 10);
}

bool audit_get_hex(const PGresult *r, int row, int col, uint8_t *out, size_t len)
{
    const char *s;
    if (PQgetisnull(r, row, col))
        return false;
    s = PQgetvalue(r, row, col);
    return qkms_hex_decode(s, strlen(s), out, len) == (long)len;
}

/* A sealed row's hash input: the stored values where present (cols 9-11). */
static void row_stored(const PGresult *r, int i, audit_row *row)
{
    if (!PQgetisnull(r, i, 9))
        row->at_us = audit_get_i64(r, i, 9);
    if (!PQgetisnull(r, i, 10))
        row->detail = PQgetvalue(r, i, 10);
    row->content_changed = strcmp(PQgetvalue(r, i, 11), "t") != 0;
}

void audit_row_from(const PGresult *r, int i, audit_row *row, bool chain_cols)
{
    memset(row, 0, sizeof(*row));
    row->id = audit_get_i64(r, i, 0);
    row->at_us = audit_get_i64(r, i, 1);
    row->actor = PQgetvalue(r, i, 2);
    row->event = PQgetvalue(r, i, 3);
    row->device_id = PQgetisnull(r, i, 4) ? NULL : PQgetvalue(r, i, 4);
    row->detail = PQgetvalue(r, i, 5);
    if (!chain_cols)
        return;
    /* A malformed (non-NULL) value counts as present and reads as zeros:
     * it will not match. */
    row->has_prev = !PQgetisnull(r, i, 6);
    if (row->has_prev && !audit_get_hex(r, i, 6, row->prev_hash, AUDIT_HASH_LEN))
        memset(row->prev_hash, 0, AUDIT_HASH_LEN);
    row->has_hash = !PQgetisnull(r, i, 7);
    if (row->has_hash && !audit_get_hex(r, i, 7, row->hash, AUDIT_HASH_LEN))
        memset(row->hash, 0, AUDIT_HASH_LEN);
    row->has_sealed_at = !strcmp(PQgetvalue(r, i, 8), "t");
    if (PQnfields(r) > 11)
        row_stored(r, i, row);
}

void audit_checkpoint_from(const PGresult *r, int i, audit_checkpoint *cp)
{
    memset(cp, 0, sizeof(*cp));
    cp->id = audit_get_i64(r, i, 0);
    cp->last_audit_id = audit_get_i64(r, i, 1);
    cp->chain_length = audit_get_i64(r, i, 2);
    /* Malformed values leave zeros: the MAC then fails. */
    audit_get_hex(r, i, 3, cp->head_hash, AUDIT_HASH_LEN);
    cp->master_version = (uint32_t)audit_get_i64(r, i, 4);
    audit_get_hex(r, i, 5, cp->iv, sizeof(cp->iv));
    audit_get_hex(r, i, 6, cp->mac, sizeof(cp->mac));
    cp->at_us = audit_get_i64(r, i, 7);
}
