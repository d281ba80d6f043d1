/* queries — the prepared statement table. */
#include "store/queries.h"

#define QKMS_Q_DEF(id, sql) {#id, sql},
const db_stmt_def queries[Q__COUNT] = {QKMS_QUERIES(QKMS_Q_DEF)};
