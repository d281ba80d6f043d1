/* audit — audit_log rows. */
#include "service/audit.h"

#include <stdlib.h>

#include "store/queries.h"

db_status audit_append(db_conn *c, const char *actor, const char *event, const char *device_id,
                       json_t *detail)
{
    char *js = detail ? json_dumps(detail, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
    const char *vals[4] = {actor, event, device_id, js ? js : "{}"};
    db_status st;
    PGresult *r = db_exec(c, Q_AUDIT_APPEND, 4, vals, NULL, NULL, &st);
    PQclear(r);
    free(js);
    json_decref(detail);
    return r ? DB_OK : st;
}

db_status audit_append_alone(db_pool *db, const char *actor, const char *event, json_t *detail)
{
    db_status st;
    db_conn *c = db_acquire(db, &st);
    if (!c) {
        json_decref(detail);
        return st;
    }
    st = audit_append(c, actor, event, NULL, detail);
    db_release(db, c);
    return st;
}
