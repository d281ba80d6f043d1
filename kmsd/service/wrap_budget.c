/*
 * wrap_budget — the master key's random-IV budget (wrap_budget.h): adds the
 * wrap counts keywrap keeps in memory to the database, and rotates (through
 * rotation.h) once the active version reaches master_key_wrap_limit.
 */
#include "service/wrap_budget.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "service/rotation.h"
#include "store/queries.h"

#define KW_TAKE_MAX 16
/* A claim of the automatic rotation of a version lasts this long: a failed
 * rotation is tried again (or, without master_key_create, re-logged) after it. */
#define CLAIM_SECONDS "60"

/* Add the in-memory counts to master_keys.wrap_count; what cannot be
 * recorded goes back to keywrap for the next pass. */
static int flush_counts(qk_svc *k, db_conn *c, uint64_t *recorded)
{
    uint32_t vers[KW_TAKE_MAX];
    uint64_t counts[KW_TAKE_MAX];
    int n = keywrap_uses_take(k->kw, vers, counts, KW_TAKE_MAX), rc = 0;
    *recorded = 0;
    for (int i = 0; i < n; i++) {
        char sv[16], sn[24];
        const char *vals[2] = {sv, sn};
        db_status st = DB_ERROR;
        PGresult *r = NULL;
        snprintf(sv, sizeof(sv), "%" PRIu32, vers[i]);
        snprintf(sn, sizeof(sn), "%" PRIu64, counts[i]);
        if (rc == 0)
            r = qt_exec(c, QT_MASTER_WRAPS_ADD, 2, vals, &st);
        if (!r) {
            keywrap_uses_return(k->kw, vers[i], counts[i]);
            rc = -1;
            continue;
        }
        PQclear(r);
        *recorded += counts[i];
    }
    return rc;
}

/* Claim the rotation of version v in the database: 1 claimed (this instance
 * rotates), 0 not (another did within CLAIM_SECONDS, or v is no longer
 * active), -1 error. */
static int claim_rotation(db_conn *c, const char *v, int64_t limit)
{
    char slimit[24];
    const char *vals[3] = {v, slimit, CLAIM_SECONDS};
    db_status st;
    PGresult *r;
    int rc;
    snprintf(slimit, sizeof(slimit), "%" PRId64, limit);
    r = qt_exec(c, QT_MASTER_WRAP_CLAIM, 3, vals, &st);
    if (!r)
        return -1;
    rc = PQntuples(r) == 1;
    PQclear(r);
    return rc;
}

static int rotate_for_budget(qk_svc *k, uint32_t v, int64_t count, int64_t limit)
{
    qk_err e;
    if (!k->cfg->master_key_create) {
        log_emit(LOG_ERROR,
                 "master key wrap budget reached and master_key_create is false: rotate now"
                 " (kmsctl master rotate)",
                 "{s:i,s:I,s:I}", "version", (int)v, "wrap_count", (json_int_t)count, "limit",
                 (json_int_t)limit);
        return -1;
    }
    log_emit(LOG_WARN, "master key wrap budget reached; rotating", "{s:i,s:I,s:I}", "version",
             (int)v, "wrap_count", (json_int_t)count, "limit", (json_int_t)limit);
    /* Not forced: with several instances the new version is staged until
     * each holds it (the limit leaves 2^32 minus it in reserve meanwhile). */
    if (rotation_rotate(k, "kmsd", false, &e) != QK_OK) {
        log_emit(e.kind == QK_CONFLICT ? LOG_WARN : LOG_ERROR,
                 e.kind == QK_CONFLICT ? "master key wrap budget reached; a staged version waits "
                                         "for every instance to hold it"
                                       : "automatic master key rotation failed; will retry",
                 "{s:i,s:s}", "version", (int)v, "error", e.detail);
        return -1;
    }
    return 0;
}

int wrap_budget_flush(qk_svc *k)
{
    db_status st;
    db_conn *c = db_acquire(k->db, &st);
    uint64_t recorded = 0;
    int rc;
    if (!c)
        return -1;
    rc = flush_counts(k, c, &recorded);
    db_release(k->db, c);
    return rc;
}

int wrap_budget_pass(qk_svc *k, wrap_budget_result *out)
{
    db_status st;
    db_conn *c = db_acquire(k->db, &st);
    PGresult *r;
    int64_t limit = k->cfg->master_key_wrap_limit, count;
    char sv[16];
    int rc = -1, claimed;

    memset(out, 0, sizeof(*out));
    if (!c)
        return -1;
    if (flush_counts(k, c, &out->recorded) != 0)
        goto done;
    r = qt_exec(c, QT_MASTER_ACTIVE_WRAPS, 0, NULL, &st);
    if (!r)
        goto done;
    if (PQntuples(r) != 1) {
        PQclear(r);
        rc = 0; /* no active version yet */
        goto done;
    }
    snprintf(sv, sizeof(sv), "%s", PQgetvalue(r, 0, 0));
    out->active_version = (uint32_t)strtoul(sv, NULL, 10);
    count = strtoll(PQgetvalue(r, 0, 1), NULL, 10);
    out->active_wrap_count = count;
    PQclear(r);
    rc = 0;
    if (count < limit)
        goto done;
    claimed = claim_rotation(c, sv, limit);
    db_release(k->db, c); /* rotation_rotate takes its own connection */
    c = NULL;
    if (claimed < 0)
        return -1;
    if (claimed == 0)
        return 0;
    if (rotate_for_budget(k, out->active_version, count, limit) != 0)
        return -1;
    out->rotated = true;
    out->active_version = keywrap_active(k->kw);
    out->active_wrap_count = 0;
done:
    db_release(k->db, c);
    return rc;
}
