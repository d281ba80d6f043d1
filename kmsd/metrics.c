/*
 * metrics — the registry behind /metrics: request counters and latency
 * histograms kept here, and every other module's figures rendered by the
 * function it registered (so this file imports none of them).
 */
#include "metrics.h"

#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

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
    time_t started_at;
    struct {
        metrics_render_fn fn;
        void *ctx;
    } sources[METRICS_MAX_SOURCES];
    int nsources;
};

metrics *metrics_new(int nroutes, const char *const *names, time_t started_at)
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
    m->started_at = started_at;
    return m;
}

int metrics_register(metrics *m, metrics_render_fn fn, void *ctx)
{
    if (!fn || m->nsources >= METRICS_MAX_SOURCES)
        return -1;
    m->sources[m->nsources].fn = fn;
    m->sources[m->nsources].ctx = ctx;
    m->nsources++;
    return 0;
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

char *metrics_render(metrics *m, size_t *len)
{
    char *buf = NULL;
    FILE *f = open_memstream(&buf, len);

    if (!f)
        return NULL;
    fprintf(f, "# HELP qkms_build_info Build information.\n# TYPE qkms_build_info gauge\n"
               "qkms_build_info{version=\"%s\"} 1\n",
            QKMS_VERSION);
    fprintf(f, "# HELP qkms_start_time_seconds Start time of kmsd since the epoch.\n"
               "# TYPE qkms_start_time_seconds gauge\nqkms_start_time_seconds %lld\n",
            (long long)m->started_at);

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

    for (int i = 0; i < m->nsources; i++)
        m->sources[i].fn(m->sources[i].ctx, f);
    fclose(f);
    return buf;
}
