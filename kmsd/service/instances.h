/*
 * instances — the registry of the kmsd instances sharing one database
 * (schema/040), so that a master key rotation reaches every instance
 * before any key is wrapped under it (rotation.h, docs/ha.md).
 *
 * Contract:
 *  - An instance's name is qk_svc.self.name: instance_name, or
 *    "<host name>/<pid>" when that is unset (set by service_open).
 *  - master_init reports first, under the master key lock, before the
 *    instance serves: a rotation or activation (under the same lock)
 *    either sees it, or it sees theirs (and refuses to start if its token
 *    lacks an active version).
 *  - instances_report(), run by every maintenance step of every instance
 *    after the master key refresh, records the versions this instance's
 *    token holds (those master_refresh loaded: staged, active or retired,
 *    each with the check value the database recorded) under a lease of
 *    three steps (3 x session_reap_interval + 30 s). An instance whose
 *    lease ran out counts as gone; its row is purged a day later.
 *  - instances_leave() deletes this instance's row at a clean shutdown,
 *    so that a stopped instance does not hold back an activation.
 *  - instances_list() is GET /v1/admin/master/instances: every row with
 *    "live" and the versions it lacks.
 *  - Failures are logged and retried at the next step (report, leave);
 *    the listing fails with QK_UNAVAILABLE when the database cannot say.
 */
#ifndef QKMS_INSTANCES_H
#define QKMS_INSTANCES_H

#include <jansson.h>

#include "err.h"
#include "keywrap.h"
#include "store/db.h"

/* This instance: its name, its start (Unix microseconds: tells it from an
 * earlier process of the same name) and its lease in seconds. master_init
 * reports with it too, so the header needs no qk_svc (service.h includes
 * master.h, which includes this). */
typedef struct {
    const char *name;
    long long started_us;
    int lease_s;
} instance_self;

/* Record the versions kw holds, as me; c: a pooled connection. 0, or -1. */
int instances_report(const instance_self *me, keywrap *kw, db_conn *c);
void instances_leave(const instance_self *me, db_pool *db);
/* *out = {"self":name,"instances":[{name,software,started_at,seen_at,
 * expires_at,live,versions:[...],lacking:[...]}]} (caller decrefs). */
qk_kind instances_list(db_pool *db, const char *self, json_t **out, qk_err *e);

#endif
