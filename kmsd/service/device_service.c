/*
 * device_service — setting a device's end of service and warning before
 * it (device_service.h). The refusal past the end is the stored functions'
 * (019_service_validity.sql) and the ETSI door's (qkd.c).
 */
#include "service/device_service.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "service/audit.h"
#include "service/devices.h"
#include "store/pgjson.h"
#include "store/queries.h"

struct service_tx {
    const char *actor, *device_id, *how, *days, *until;
    char from[32], to[32];
    qk_err *e;
};

static db_status service_tx_fn(db_conn *c, void *arg)
{
    struct service_tx *t = arg;
    const char *vals[4] = {t->device_id, t->how, t->days, t->until};
    char pk[24];
    db_status st;
    PGresult *r;

    qk_clear(t->e);
    if ((st = devices_lock_live(c, t->device_id, pk, t->e)) != DB_OK)
        return st;
    vals[0] = pk;
    if (t->days) {
        /* A renewal extends an end; a service without one has none to extend. */
        if (!(r = db_exec(c, Q_SERVICE_GET, 1, vals, NULL, NULL, &st)))
            return st;
        bool none = PQgetisnull(r, 0, 0);
        PQclear(r);
        if (none) {
            qk_fail(t->e, QK_CONFLICT, "invalid_state",
                    "device '%s' has no end of service to renew (set one with until)",
                    t->device_id);
            return DB_INVALID;
        }
    }
    if (!(r = db_exec(c, Q_SERVICE_SET, 4, vals, NULL, NULL, &st))) {
        if (st == DB_INVALID) /* the calendar: "2026-02-30T00:00:00Z" */
            qk_fail(t->e, QK_INVALID, "invalid_service", "until is not a valid time");
        return st;
    }
    snprintf(t->from, sizeof(t->from), "%s", PQgetvalue(r, 0, 0));
    snprintf(t->to, sizeof(t->to), "%s", PQgetvalue(r, 0, 1));
    PQclear(r);
    return audit_append(c, t->actor, "device.service_set", t->device_id,
                        json_pack("{s:s?,s:s?}", "from", t->from[0] ? t->from : NULL, "to",
                                  t->to[0] ? t->to : NULL));
}

qk_kind device_service_set(qk_svc *s, const qk_principal *who, const char *device_id,
                           service_change how, int days, const char *until, qk_err *e)
{
    static const char *const hows[] = {"extend", "until", "none"};
    char sdays[16];
    struct service_tx t;
    db_status st;

    qk_clear(e);
    memset(&t, 0, sizeof(t));
    snprintf(sdays, sizeof(sdays), "%d", days);
    t.actor = who->name;
    t.device_id = device_id;
    t.how = hows[how];
    t.days = how == SERVICE_EXTEND ? sdays : NULL;
    t.until = how == SERVICE_UNTIL ? until : NULL;
    t.e = e;
    st = db_tx(s->db, service_tx_fn, &t);
    if (st != DB_OK)
        return e->kind != QK_OK ? e->kind : db_fail(e, st);
    log_with(&who->log, LOG_INFO, "device service set", "{s:s,s:s?,s:s?,s:s}", "device_id",
             device_id, "from", t.from[0] ? t.from : NULL, "to", t.to[0] ? t.to : NULL, "by",
             who->name);
    return QK_OK;
}

int device_service_warn(db_conn *c, int warn_days, device_service_counts *out, db_status *st)
{
    char days[16];
    const char *vals[1] = {days};
    PGresult *r;

    snprintf(days, sizeof(days), "%d", warn_days);
    if (!(r = db_exec(c, Q_SERVICE_WARN, 1, vals, NULL, NULL, st)))
        return -1;
    for (int i = 0; i < PQntuples(r); i++)
        log_emit(LOG_WARN, "device service ending soon", "{s:s,s:s,s:i}", "device_id",
                 PQgetvalue(r, i, 0), "service_until", PQgetvalue(r, i, 1), "warn_days",
                 warn_days);
    PQclear(r);
    if (!(r = db_exec(c, Q_SERVICE_COUNTS, 1, vals, NULL, NULL, st)))
        return -1;
    out->ending = atoll(PQgetvalue(r, 0, 0));
    out->ended = atoll(PQgetvalue(r, 0, 1));
    PQclear(r);
    return 0;
}
