/* queries — the statement tables (queries.h): the prepared ones, and the
 * text of those run unprepared with the two helpers that run them. */
#include "store/queries.h"

#define QKMS_Q_DEF(id, sql) {#id, sql},
const db_stmt_def queries[Q__COUNT] = {QKMS_QUERIES(QKMS_Q_DEF)};

#define QKMS_QT_DEF(id, sql) [id] = sql,
const char *const text_queries[QT__COUNT] = {QKMS_TEXT_QUERIES(QKMS_QT_DEF)};

PGresult *qt_exec(db_conn *c, text_query_id id, int nparams, const char *const *values,
                  db_status *st)
{
    return db_exec_params(c, text_queries[id], nparams, values, st);
}

db_status qt_command(db_conn *c, text_query_id id)
{
    db_status st;
    PGresult *r = qt_exec(c, id, 0, NULL, &st);
    PQclear(r);
    return r ? DB_OK : st;
}
