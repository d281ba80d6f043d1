/* maintenance — periodic key retirement, expiry warnings and gauges. */
#include "service/maintenance.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "service/audit.h"
#include "service/audit_seal.h"
#include "service/ca.h"
#include "service/platform_keys.h"
#include "service/qkd.h"
#include "service/crl.h"
#include "service/device_service.h"
#include "service/events.h"
#include "service/keycache.h"
#include "deadline.h"
#include "log.h"
#include "store/pgjson.h"
#include "store/queries.h"
#include "service/rotation.h"
#include "service/sessions.h"
#include "service/streams.h"
#include "service/wrap_budget.h"

struct maintenance {
    qk_svc *k;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool stop;
    maintenance_stats stats; /* guarded by mu */
};

static db_status retire_tx(db_conn *c, void *arg)
{
    uint64_t *retired = arg;
    db_status st;
    PGresult *r = db_exec(c, Q_KEYS_RETIRE_DUE, 0, NULL, NULL, NULL, &st);
    *retired = 0;
    if (!r)
        return st;
    for (int i = 0; i < PQntuples(r) && st == DB_OK; i++) {
        st = audit_append(c, "kmsd", "device_key.retired", PQgetvalue(r, i, 0),
                          json_pack("{s:i,s:s}", "index", atoi(PQgetvalue(r, i, 1)), "reason",
                                    "rotation grace period ended"));
        (*retired)++;
    }
    PQclear(r);
    return st;
}

/* Certificates expiring within certificate_warn_days: a warning per
 * certificate at most once a day, and their count. 0, or -1 (*st set). */
static int cert_expiry(qk_svc *k, db_conn *c, int64_t *count, db_status *st)
{
    char days[16];
    const char *vals[1] = {days};
    PGresult *r;
    snprintf(days, sizeof(days), "%d", k->cfg->certificate_warn_days);
    if (!(r = qt_exec(c, QT_CERT_EXPIRY_WARN, 1, vals, st)))
        return -1;
    for (int i = 0; i < PQntuples(r); i++) {
        char when[32] = "";
        pgjson_rfc3339(PQgetvalue(r, i, 2), when, sizeof(when));
        log_emit(LOG_WARN, "certificate expiring soon", "{s:s,s:s,s:s,s:i}", "device_id",
                 PQgetvalue(r, i, 0), "serial", PQgetvalue(r, i, 1), "not_after", when,
                 "warn_days", k->cfg->certificate_warn_days);
    }
    PQclear(r);
    if (!(r = qt_exec(c, QT_CERTS_EXPIRING_COUNT, 1, vals, st)))
        return -1;
    *count = atoll(PQgetvalue(r, 0, 0));
    PQclear(r);
    return 0;
}

int maintenance_run_once(maintenance *m)
{
    qk_svc *k = m->k;
    char days[16];
    const char *vals[1] = {days};
    uint64_t retired = 0;
    int64_t expiring = -1, certs_expiring = -1, counts[3] = {0, 0, 0}, open_sessions = 0;
    int64_t unsealed = -1, seal_lag = -1, verified_age = -2;
    int broken = -2; /* -2: not read this pass (the last value stands) */
    device_service_counts service = {-1, -1};
    db_status st;
    db_conn *c;
    PGresult *r;
    int rc = -1;

    snprintf(days, sizeof(days), "%d", k->cfg->device_key_warn_days);
    st = db_tx(k->db, retire_tx, &retired);
    if (st != DB_OK)
        goto out;
    if (retired)
        log_emit(LOG_INFO, "device keys retired after rotation grace", "{s:I}", "count",
                 (json_int_t)retired);
    c = db_acquire(k->db, &st);
    if (!c)
        goto out;
    r = db_exec(c, Q_EXPIRY_WARN, 1, vals, NULL, NULL, &st);
    if (r) {
        for (int i = 0; i < PQntuples(r); i++) {
            char when[32] = "";
            pgjson_rfc3339(PQgetvalue(r, i, 1), when, sizeof(when));
            log_emit(LOG_WARN, "device key expiring soon", "{s:s,s:s,s:i}", "device_id",
                     PQgetvalue(r, i, 0), "not_after", when, "warn_days",
                     k->cfg->device_key_warn_days);
        }
        PQclear(r);
        r = db_exec(c, Q_KEYS_EXPIRING_COUNT, 1, vals, NULL, NULL, &st);
    }
    if (r) {
        expiring = atoll(PQgetvalue(r, 0, 0));
        PQclear(r);
        r = db_exec(c, Q_DEVICE_COUNTS, 0, NULL, NULL, NULL, &st);
    }
    if (r) {
        for (int i = 0; i < PQntuples(r); i++) {
            const char *s = PQgetvalue(r, i, 0);
            int idx = !strcmp(s, "active") ? 0 : !strcmp(s, "suspended") ? 1 : 2;
            counts[idx] = atoll(PQgetvalue(r, i, 1));
        }
        PQclear(r);
        r = db_exec(c, Q_SESSIONS_OPEN_COUNT, 0, NULL, NULL, NULL, &st);
    }
    if (r) {
        open_sessions = atoll(PQgetvalue(r, 0, 0));
        PQclear(r);
        rc = 0;
        /* Its own failure costs the gauge, not the rest of the pass. */
        if (cert_expiry(k, c, &certs_expiring, &st) != 0)
            log_emit(LOG_WARN, "certificate expiry check failed; will retry", "{s:s}", "error",
                     db_status_name(st));
        if ((r = db_exec(c, Q_BIND_CHALLENGES_PURGE, 0, NULL, NULL, NULL, &st)))
            PQclear(r);
        else
            log_emit(LOG_WARN, "old bind challenges not purged; will retry", "{s:s}", "error",
                     db_status_name(st));
        if (events_purge(c, k->cfg->event_retention_days, &st) < 0)
            log_emit(LOG_WARN, "old events not purged; will retry", "{s:s}", "error",
                     db_status_name(st));
        if ((r = qt_exec(c, QT_AUDIT_SEAL_LAG, 0, NULL, &st))) {
            if (PQntuples(r) == 1) {
                unsealed = atoll(PQgetvalue(r, 0, 0));
                seal_lag = atoll(PQgetvalue(r, 0, 1));
            }
            PQclear(r);
        } else {
            log_emit(LOG_WARN, "audit sealing lag not measured; will retry", "{s:s}", "error",
                     db_status_name(st));
        }
        if ((r = qt_exec(c, QT_AUDIT_LAST_VERIFIED, 0, NULL, &st))) {
            verified_age = PQntuples(r) == 1 ? atoll(PQgetvalue(r, 0, 0)) : -1;
            broken = PQntuples(r) == 1 ? PQgetvalue(r, 0, 1)[0] != 't' : -1;
            PQclear(r);
        } else {
            log_emit(LOG_WARN, "last audit verification not read; will retry", "{s:s}", "error",
                     db_status_name(st));
        }
        if (device_service_warn(c, k->cfg->service_warn_days, &service, &st) != 0) {
            service.ending = service.ended = -1;
            log_emit(LOG_WARN, "service expiry check failed; will retry", "{s:s}", "error",
                     db_status_name(st));
        }
    }
    db_release(k->db, c);
out:
    pthread_mutex_lock(&m->mu);
    m->stats.passes++;
    m->stats.keys_retired += retired;
    if (rc == 0) {
        m->stats.keys_expiring = expiring;
        m->stats.certs_expiring = certs_expiring;
        m->stats.service_ending = service.ending;
        m->stats.service_ended = service.ended;
        m->stats.devices_active = counts[0];
        m->stats.devices_suspended = counts[1];
        m->stats.devices_revoked = counts[2];
        m->stats.sessions_open = open_sessions;
        m->stats.audit_unsealed = unsealed;
        m->stats.audit_seal_lag_s = seal_lag;
        if (broken != -2) {
            m->stats.audit_verified_age_s = verified_age;
            m->stats.audit_broken = broken;
        }
    } else {
        m->stats.failures++;
    }
    pthread_mutex_unlock(&m->mu);
    if (rc != 0)
        log_emit(LOG_WARN, "maintenance pass failed; will retry", "{s:s}", "error",
                 db_status_name(st));
    return rc;
}

/* Record master key wraps in the database and rotate at the budget. */
static void wrap_budget_step(maintenance *m)
{
    wrap_budget_result wb;
    int rc = wrap_budget_pass(m->k, &wb);
    pthread_mutex_lock(&m->mu);
    m->stats.wraps_recorded += wb.recorded;
    if (rc == 0 && wb.active_version) {
        m->stats.wrap_active_version = wb.active_version;
        m->stats.wrap_active_count = wb.active_wrap_count;
    }
    if (wb.rotated)
        m->stats.wrap_budget_rotations++;
    pthread_mutex_unlock(&m->mu);
}

static void stage_step(maintenance *m)
{
    rotation_stage_result r;
    rotation_stage_pass(m->k, &r);
    pthread_mutex_lock(&m->mu);
    m->stats.instances_live = r.live_instances;
    m->stats.master_staged_s = r.staged_s;
    m->stats.master_staged_waiting = r.staged_waiting;
    pthread_mutex_unlock(&m->mu);
}

/* Destroy what is due. A full pass is followed by another, up to
 * REAP_PASSES_MAX, so the reaper keeps up with sessions ending faster than
 * one batch per interval (every session a kmsd creates ends one day:
 * 1,500 a second at this machine's throughput); a larger backlog (after a
 * downtime) is worked off at that pace, one transaction per batch, between
 * the requests rather than ahead of them. */
#define REAP_PASSES_MAX 5
static void reap(qk_svc *k)
{
    for (int i = 0; i < REAP_PASSES_MAX; i++) {
        int examined = 0;
        if (sessions_reap(k, &examined) < 0) {
            log_emit(LOG_WARN, "session reaper pass failed; will retry", NULL);
            break;
        }
        if (examined < SESSION_REAP_BATCH)
            break;
    }
    /* Key streams idle or past their lifetime (streams.h). */
    if (streams_reap(k) < 0)
        log_emit(LOG_WARN, "stream reaper pass failed; will retry", NULL);
    /* ETSI GS QKD 014 keys no slave fetched within their lifetime. */
    if (qkd_reap(k) < 0)
        log_emit(LOG_WARN, "qkd key expiry pass failed; will retry", NULL);
}

/* The reaper runs every session_reap_interval seconds (bounded delay for
 * session destruction); the heavier pass every maintenance_interval. */
static void *loop(void *arg)
{
    maintenance *m = arg;
    time_t next_full = 0, next_crl = 0;
    pthread_mutex_lock(&m->mu);
    while (!m->stop) {
        struct timespec dl;
        pthread_mutex_unlock(&m->mu);
        reap(m->k);
        audit_chain_seal(m->k, NULL, NULL); /* hash-chain new audit rows (logs its failures) */
        keycache_expire(m->k->keys); /* no unwrapped key outlives its TTL by more than a pass */
        wrap_budget_step(m);
        /* Master key rotation: report what this token holds, activate a
         * staged version every instance holds, adopt new versions, rewrap,
         * destroy unused. */
        stage_step(m); /* a failure is retried at the next step */
        for (int i = 0; i < 20 && rotation_pass(m->k) > 0; i++)
            ;
        if (time(NULL) >= next_full) {
            maintenance_run_once(m);
            next_full = time(NULL) + m->k->cfg->maintenance_interval;
        }
        /* A CRL when the newest is ca_crl_interval old or misses a
         * revocation (logs its failures). Checked often enough that the
         * newest never passes its nextUpdate (2 x ca_crl_interval),
         * whatever maintenance_interval is. */
        if (time(NULL) >= next_crl) {
            qk_err ce;
            int every = m->k->cfg->ca_crl_interval / 4;
            /* A CA version another instance made (rotation) first. */
            if (ca_refresh(m->k->ca, m->k->db, &ce) != QK_OK)
                log_emit(LOG_WARN, "platform CA versions not re-read", "{s:s}", "error",
                         ce.detail);
            crl_refresh(m->k, false, &ce);
            /* Protocol v2's keys: other instances' rotations, overlaps
             * that ended, certificates near their end. */
            if (platform_keys_refresh(m->k->pkeys, m->k->db, &ce) != QK_OK)
                log_emit(LOG_WARN, "platform keys not refreshed", "{s:s}", "error", ce.detail);
            next_crl = time(NULL) + (every < 60 ? every : 60);
        }
        pthread_mutex_lock(&m->mu);
        dl = deadline_in_ms(1000L * m->k->cfg->session_reap_interval);
        while (!m->stop && pthread_cond_timedwait(&m->cv, &m->mu, &dl) != ETIMEDOUT)
            ;
    }
    pthread_mutex_unlock(&m->mu);
    return NULL;
}

int maintenance_start(maintenance **out, qk_svc *k)
{
    maintenance *m = calloc(1, sizeof(*m));
    if (!m)
        return -1;
    m->k = k;
    m->stats.keys_expiring = -1;
    m->stats.instances_live = m->stats.master_staged_s = m->stats.master_staged_waiting = -1;
    m->stats.certs_expiring = -1;
    m->stats.service_ending = m->stats.service_ended = -1;
    m->stats.audit_unsealed = m->stats.audit_seal_lag_s = -1;
    m->stats.audit_verified_age_s = -1;
    m->stats.audit_broken = -1;
    pthread_mutex_init(&m->mu, NULL);
    deadline_cond_init(&m->cv); /* waited on with deadline_in_ms */
    if (pthread_create(&m->thread, NULL, loop, m) != 0) {
        pthread_mutex_destroy(&m->mu);
        pthread_cond_destroy(&m->cv);
        free(m);
        return -1;
    }
    *out = m;
    return 0;
}

void maintenance_stop(maintenance *m)
{
    if (!m)
        return;
    pthread_mutex_lock(&m->mu);
    m->stop = true;
    pthread_cond_signal(&m->cv);
    pthread_mutex_unlock(&m->mu);
    pthread_join(m->thread, NULL);
    if (wrap_budget_flush(m->k) != 0)
        log_emit(LOG_WARN, "master key wrap counts since the last pass not recorded", NULL);
    pthread_mutex_destroy(&m->mu);
    pthread_cond_destroy(&m->cv);
    free(m);
}

void maintenance_stats_get(maintenance *m, maintenance_stats *out)
{
    pthread_mutex_lock(&m->mu);
    *out = m->stats;
    pthread_mutex_unlock(&m->mu);
}

void maintenance_metrics_render(void *maint, FILE *f)
{
    maintenance *m = maint;
    maintenance_stats ms;
    maintenance_stats_get(m, &ms);
    fprintf(f,
            "# HELP qkms_devices Registered devices by state (last maintenance pass).\n"
            "# TYPE qkms_devices gauge\nqkms_devices{state=\"active\"} %lld\n"
            "qkms_devices{state=\"suspended\"} %lld\nqkms_devices{state=\"revoked\"} %lld\n"
            "# HELP qkms_device_keys_expiring Live device keys expiring within device_key_warn_days.\n"
            "# TYPE qkms_device_keys_expiring gauge\nqkms_device_keys_expiring %lld\n"
            "# HELP qkms_certificates_expiring Active device certificates expiring within"
            " certificate_warn_days.\n"
            "# TYPE qkms_certificates_expiring gauge\nqkms_certificates_expiring %lld\n"
            "# HELP qkms_device_keys_retired_total Device keys retired after a rotation's grace.\n"
            "# TYPE qkms_device_keys_retired_total counter\nqkms_device_keys_retired_total %llu\n"
            "# HELP qkms_sessions_open Live sessions (last maintenance pass).\n"
            "# TYPE qkms_sessions_open gauge\nqkms_sessions_open %lld\n"
            "# HELP qkms_maintenance_failures_total Maintenance passes that failed.\n"
            "# TYPE qkms_maintenance_failures_total counter\nqkms_maintenance_failures_total %llu\n",
            (long long)ms.devices_active, (long long)ms.devices_suspended,
            (long long)ms.devices_revoked, (long long)ms.keys_expiring,
            (long long)ms.certs_expiring, (unsigned long long)ms.keys_retired, (long long)ms.sessions_open,
            (unsigned long long)ms.failures);
    fprintf(f,
            "# HELP qkms_master_key_wraps Random-IV GCM invocations recorded under the active"
            " master key version (master_keys.wrap_count; budget: master_key_wrap_limit).\n"
            "# TYPE qkms_master_key_wraps gauge\nqkms_master_key_wraps{version=\"%u\"} %lld\n"
            "# HELP qkms_master_key_wrap_limit Configured master_key_wrap_limit.\n"
            "# TYPE qkms_master_key_wrap_limit gauge\nqkms_master_key_wrap_limit %d\n"
            "# HELP qkms_master_key_budget_rotations_total Automatic rotations at the wrap"
            " budget made by this process.\n"
            "# TYPE qkms_master_key_budget_rotations_total counter\n"
            "qkms_master_key_budget_rotations_total %llu\n",
            ms.wrap_active_version, (long long)ms.wrap_active_count,
            m->k->cfg->master_key_wrap_limit, (unsigned long long)ms.wrap_budget_rotations);
    fprintf(f,
            "# HELP qkms_instances_live Live kmsd instances in the registry of this database"
            " (last maintenance step; -1 unknown).\n"
            "# TYPE qkms_instances_live gauge\nqkms_instances_live %lld\n"
            "# HELP qkms_master_key_staged_seconds How long a staged master key version has"
            " waited for every instance to hold it (0 none; -1 unknown).\n"
            "# TYPE qkms_master_key_staged_seconds gauge\nqkms_master_key_staged_seconds %lld\n"
            "# HELP qkms_master_key_staged_waiting Live instances whose token lacks the staged"
            " master key version (0 none; -1 unknown).\n"
            "# TYPE qkms_master_key_staged_waiting gauge\nqkms_master_key_staged_waiting %lld\n",
            (long long)ms.instances_live, (long long)ms.master_staged_s,
            (long long)ms.master_staged_waiting);
    fprintf(f,
            "# HELP qkms_devices_service_ending Devices whose service ends within"
            " service_warn_days (last maintenance pass; -1 before the first).\n"
            "# TYPE qkms_devices_service_ending gauge\nqkms_devices_service_ending %lld\n"
            "# HELP qkms_devices_service_ended Devices not revoked whose service has ended (last"
            " maintenance pass; -1 before the first).\n"
            "# TYPE qkms_devices_service_ended gauge\nqkms_devices_service_ended %lld\n"
            "# HELP qkms_audit_unsealed_rows Audit ids above the sealer's position: rows not"
            " hash-chained yet, about (last maintenance pass; -1 unknown).\n"
            "# TYPE qkms_audit_unsealed_rows gauge\nqkms_audit_unsealed_rows %lld\n"
            "# HELP qkms_audit_seal_lag_seconds Age of the oldest audit row not chained yet (last"
            " maintenance pass; 0 none, -1 unknown).\n"
            "# TYPE qkms_audit_seal_lag_seconds gauge\nqkms_audit_seal_lag_seconds %lld\n"
            "# HELP qkms_audit_chain_broken The newest audit chain verification's verdict (any"
            " instance's, from the database): 1 broken, 0 intact, -1 none yet or unknown.\n"
            "# TYPE qkms_audit_chain_broken gauge\nqkms_audit_chain_broken %d\n"
            "# HELP qkms_audit_last_verification_seconds Age of the newest audit chain"
            " verification (any instance's; -1 none yet or unknown).\n"
            "# TYPE qkms_audit_last_verification_seconds gauge\n"
            "qkms_audit_last_verification_seconds %lld\n",
            (long long)ms.service_ending, (long long)ms.service_ended,
            (long long)ms.audit_unsealed, (long long)ms.audit_seal_lag_s, ms.audit_broken,
            (long long)ms.audit_verified_age_s);
}
