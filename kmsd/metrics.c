/* metrics — request counters, latency histograms and scrape-time gauges. */
#include "metrics.h"

#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "keycache.h"
#include "maintenance.h"
#include "ratelimit.h"
#include "sessions.h"
#include "version.h"

static const int statuses[] = {200, 201, 204, 400, 401, 403, 404, 405,
                               409, 413, 415, 422, 429, 500, 503, 0};
#define NSTATUS (int)(sizeof(statuses) / sizeof(statuses[0]))
static const double buckets[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                                 0.05,   0.1,   0.25,   0.5,   1,    2.5};
#define NBUCKET (int)(sizeof(buckets) / sizeof(buckets[0]))

typedef struct {
    _Atomic uint64_t by_status[NSTATUS];
    _Atomic uint64_t bucket[NBUCKET + 1]; /* last: +Inf */
    _Atomic uint64_t sum_us;
} route_metrics;

struct metrics {
    int nroutes; /* plus one slot for "unmatched" */
    const char *const *names;
    route_metrics *r;
    _Atomic int64_t inflight;
};

metrics *metrics_new(int nroutes, const char *const *names)
{
    metrics *m = calloc(1, sizeof(*m));
    if (!m)
        return NULL;
    m->r = calloc((size_t)nroutes + 1, sizeof(route_metrics));
    if (!m->r) {
        free(m);
        return NULL;
    }
    m->nroutes = nroutes;
    m->names = names;
    return m;
}

void metrics_free(metrics *m)
{
    if (!m)
        return;
    free(m->r);
    free(m);
}

void metrics_inflight(metrics *m, int delta) { atomic_fetch_add(&m->inflight, delta); }

void metrics_observe(metrics *m, int route, int status, double s)
{
    route_metrics *r = &m->r[route < 0 || route >= m->nroutes ? m->nroutes : route];
    int si = NSTATUS - 1, b = NBUCKET;
    for (int i = 0; i < NSTATUS - 1; i++)
        if (statuses[i] == status)
            si = i;
    for (int i = 0; i < NBUCKET; i++)
        if (s <= buckets[i]) {
            b = i;
            break;
        }
    atomic_fetch_add(&r->by_status[si], 1);
    atomic_fetch_add(&r->bucket[b], 1);
    atomic_fetch_add(&r->sum_us, (uint64_t)(s * 1e6));
}

static const char *route_name(metrics *m, int i)
{
    return i == m->nroutes ? "unmatched" : m->names[i];
}

char *metrics_render(metrics *m, kms_ctx *kms, size_t *len)
{
    char *buf = NULL;
    FILE *f = open_memstream(&buf, len);
    db_stats ds;
    p11_stats ps;

    if (!f)
        return NULL;
    fprintf(f, "# HELP qkms_build_info Build information.\n# TYPE qkms_build_info gauge\n"
               "qkms_build_info{version=\"%s\"} 1\n",
            QKMS_VERSION);
    fprintf(f, "# HELP qkms_start_time_seconds Start time of kmsd since the epoch.\n"
               "# TYPE qkms_start_time_seconds gauge\nqkms_start_time_seconds %lld\n",
            (long long)kms->started_at);

    fprintf(f, "# HELP qkms_http_requests_total HTTP requests by route and status.\n"
               "# TYPE qkms_http_requests_total counter\n");
    for (int i = 0; i <= m->nroutes; i++)
        for (int s = 0; s < NSTATUS; s++) {
            uint64_t v = atomic_load(&m->r[i].by_status[s]);
            if (!v)
                continue;
            if (statuses[s])
                fprintf(f, "qkms_http_requests_total{route=\"%s\",status=\"%d\"} %llu\n",
                        route_name(m, i), statuses[s], (unsigned long long)v);
            else
                fprintf(f, "qkms_http_requests_total{route=\"%s\",status=\"other\"} %llu\n",
                        route_name(m, i), (unsigned long long)v);
        }
    fprintf(f, "# HELP qkms_http_request_duration_seconds Request latency by route.\n"
               "# TYPE qkms_http_request_duration_seconds histogram\n");
    for (int i = 0; i <= m->nroutes; i++) {
        uint64_t cum = 0;
        const char *rn = route_name(m, i);
        for (int b = 0; b <= NBUCKET; b++) {
            cum += atomic_load(&m->r[i].bucket[b]);
            if (b < NBUCKET)
                fprintf(f, "qkms_http_request_duration_seconds_bucket{route=\"%s\",le=\"%g\"} %llu\n",
                        rn, buckets[b], (unsigned long long)cum);
            else
                fprintf(f, "qkms_http_request_duration_seconds_bucket{route=\"%s\",le=\"+Inf\"} %llu\n",
                        rn, (unsigned long long)cum);
        }
        fprintf(f, "qkms_http_request_duration_seconds_sum{route=\"%s\"} %.6f\n", rn,
                (double)atomic_load(&m->r[i].sum_us) / 1e6);
        fprintf(f, "qkms_http_request_duration_seconds_count{route=\"%s\"} %llu\n", rn,
                (unsigned long long)cum);
    }
    fprintf(f, "# HELP qkms_http_inflight_requests Requests being handled now.\n"
               "# TYPE qkms_http_inflight_requests gauge\nqkms_http_inflight_requests %lld\n",
            (long long)atomic_load(&m->inflight));

    db_stats_get(kms->db, &ds);
    fprintf(f,
            "# HELP qkms_db_pool_size PostgreSQL connections in the pool.\n"
            "# TYPE qkms_db_pool_size gauge\nqkms_db_pool_size %d\n"
            "# HELP qkms_db_pool_in_use PostgreSQL connections lent out now.\n"
            "# TYPE qkms_db_pool_in_use gauge\nqkms_db_pool_in_use %d\n"
            "# HELP qkms_db_connects_total Successful PostgreSQL connects.\n"
            "# TYPE qkms_db_connects_total counter\nqkms_db_connects_total %llu\n"
            "# HELP qkms_db_connect_failures_total Failed PostgreSQL connects.\n"
            "# TYPE qkms_db_connect_failures_total counter\nqkms_db_connect_failures_total %llu\n"
            "# HELP qkms_db_tx_errors_total Transactions that failed after retries.\n"
            "# TYPE qkms_db_tx_errors_total counter\nqkms_db_tx_errors_total %llu\n"
            "# HELP qkms_db_tx_retries_total Transactions run again (serialization, reconnect).\n"
            "# TYPE qkms_db_tx_retries_total counter\nqkms_db_tx_retries_total %llu\n"
            "# HELP qkms_db_timeouts_total Connections dropped because PostgreSQL did not answer"
            " within db_io_timeout_ms.\n"
            "# TYPE qkms_db_timeouts_total counter\nqkms_db_timeouts_total %llu\n",
            ds.size, ds.in_use, (unsigned long long)ds.connects,
            (unsigned long long)ds.connect_failures, (unsigned long long)ds.errors,
            (unsigned long long)ds.retries, (unsigned long long)ds.timeouts);

    p11_stats_get(kms->token, &ps);
    fprintf(f,
            "# HELP qkms_pkcs11_sessions PKCS#11 sessions in the pool.\n"
            "# TYPE qkms_pkcs11_sessions gauge\nqkms_pkcs11_sessions %d\n"
            "# HELP qkms_pkcs11_sessions_in_use PKCS#11 sessions lent out now.\n"
            "# TYPE qkms_pkcs11_sessions_in_use gauge\nqkms_pkcs11_sessions_in_use %d\n"
            "# HELP qkms_pkcs11_operations_total Token operations.\n"
            "# TYPE qkms_pkcs11_operations_total counter\nqkms_pkcs11_operations_total %llu\n"
            "# HELP qkms_pkcs11_errors_total Token operations that failed.\n"
            "# TYPE qkms_pkcs11_errors_total counter\nqkms_pkcs11_errors_total %llu\n"
            "# HELP qkms_pkcs11_session_reopens_total Sessions reopened after loss.\n"
            "# TYPE qkms_pkcs11_session_reopens_total counter\n"
            "qkms_pkcs11_session_reopens_total %llu\n"
            "# HELP qkms_pkcs11_relogins_total Logins re-established.\n"
            "# TYPE qkms_pkcs11_relogins_total counter\nqkms_pkcs11_relogins_total %llu\n"
            "# HELP qkms_pkcs11_reinits_total Module re-initializations after token failures.\n"
            "# TYPE qkms_pkcs11_reinits_total counter\nqkms_pkcs11_reinits_total %llu\n",
            p11_pool_size(kms->token), p11_pool_in_use(kms->token), (unsigned long long)ps.ops,
            (unsigned long long)ps.errors, (unsigned long long)ps.reopened_sessions,
            (unsigned long long)ps.relogins, (unsigned long long)ps.reinits);

    entropy_metrics_render(kms->ent, f);
    if (kms->smetrics)
        session_metrics_render(kms->smetrics, f);
    if (kms->keys) {
        keycache_stats ks;
        keycache_stats_get(kms->keys, &ks);
        fprintf(f, "# HELP qkms_device_key_cache_total Device key cache lookups by result.\n"
                   "# TYPE qkms_device_key_cache_total counter\n"
                   "qkms_device_key_cache_total{result=\"hit\"} %llu\n"
                   "qkms_device_key_cache_total{result=\"miss\"} %llu\n",
                (unsigned long long)ks.hits, (unsigned long long)ks.misses);
    }
    if (kms->rl[0])
        ratelimit_metrics_render(kms->rl, f);
    if (kms->maint) {
        maintenance_stats ms;
        maintenance_stats_get(kms->maint, &ms);
        fprintf(f,
                "# HELP qkms_devices Registered devices by state (last maintenance pass).\n"
                "# TYPE qkms_devices gauge\nqkms_devices{state=\"active\"} %lld\n"
                "qkms_devices{state=\"suspended\"} %lld\nqkms_devices{state=\"revoked\"} %lld\n"
                "# HELP qkms_device_keys_expiring Live device keys expiring within device_key_warn_days.\n"
                "# TYPE qkms_device_keys_expiring gauge\nqkms_device_keys_expiring %lld\n"
                "# HELP qkms_device_keys_retired_total Device keys retired after a rotation's grace.\n"
                "# TYPE qkms_device_keys_retired_total counter\nqkms_device_keys_retired_total %llu\n"
                "# HELP qkms_sessions_open Live sessions (last maintenance pass).\n"
                "# TYPE qkms_sessions_open gauge\nqkms_sessions_open %lld\n"
                "# HELP qkms_maintenance_failures_total Maintenance passes that failed.\n"
                "# TYPE qkms_maintenance_failures_total counter\nqkms_maintenance_failures_total %llu\n",
                (long long)ms.devices_active, (long long)ms.devices_suspended,
                (long long)ms.devices_revoked, (long long)ms.keys_expiring,
                (unsigned long long)ms.keys_retired, (long long)ms.sessions_open,
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
                kms->cfg.master_key_wrap_limit, (unsigned long long)ms.wrap_budget_rotations);
    }
    fclose(f);
    return buf;
}
