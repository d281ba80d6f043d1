/*
 * audit_rows — audit rows and checkpoints as the store returns them: the
 * decoding the sealer and the verifier share of results whose columns
 * store/queries.h lays out (QKMS_AUDIT_ROW_COLS, QKMS_AUDIT_CHAIN_COLS,
 * QT_AUDIT_CHECKPOINTS_AFTER), and the integer parameters they take.
 *
 * Contract:
 *  - Decoders never fail: a NULL reads as 0 (or absent), a malformed hex
 *    value as zeros, which will not match any hash or MAC: verification
 *    then reports the row, rather than crashing on it.
 *  - audit_row strings point into the PGresult: valid until it is cleared.
 */
#ifndef QKMS_AUDIT_ROWS_H
#define QKMS_AUDIT_ROWS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <libpq-fe.h>

#include "service/audit_canon.h"

/* Text of an int64 parameter. */
typedef struct {
    char s[24];
} audit_i64_text;
audit_i64_text audit_i64_param(int64_t v);

/* Column col of row as an int64 (NULL: 0). */
int64_t audit_get_i64(const PGresult *r, int row, int col);
/* A hex column into out[len]; false when NULL or malformed. */
bool audit_get_hex(const PGresult *r, int row, int col, uint8_t *out, size_t len);
/* Row i of a QKMS_AUDIT_ROW_COLS result; with chain_cols, the
 * QKMS_AUDIT_CHAIN_COLS that follow too. */
void audit_row_from(const PGresult *r, int i, audit_row *row, bool chain_cols);
/* Row i of QT_AUDIT_CHECKPOINTS_AFTER. */
void audit_checkpoint_from(const PGresult *r, int i, audit_checkpoint *cp);

#endif
