/*
 * session_metrics — the session service's counters and stage timings
 * (session_metrics.h): atomics updated on the request path, rendered in
 * the Prometheus text format when /metrics is scraped.
 */
#include "service/session_metrics.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <time.h>

static const char *const refuse_names[SESSION_REFUSE__N] = {
    "unauthenticated", "device_inactive", "not_a_party",   "peer_mismatch",
    "policy_denied",   "session_ended",   "unknown_peer",  "invalid_request",
    "service_expired", "epoch"};

static const char *const stage_names[SESSION_STAGE__N] = {
    "parse",      "device_key_lookup", "device_key_unwrap", "open_request",
    "session_tx", "new_session_key",   "deliver"};

struct session_metrics {
    _Atomic uint64_t events[SESSION_EV__N];
    _Atomic uint64_t refused[SESSION_REFUSE__N];
    _Atomic uint64_t stage_ns[SESSION_STAGE__N], stage_count[SESSION_STAGE__N];
};

session_metrics *session_metrics_new(void) { return calloc(1, sizeof(session_metrics)); }
void session_metrics_free(session_metrics *m) { free(m); }

void session_metrics_count(session_metrics *m, session_event ev, uint64_t n)
{
    if (m && (unsigned)ev < SESSION_EV__N)
        atomic_fetch_add(&m->events[ev], n);
}

void session_metrics_refused(session_metrics *m, session_refusal why)
{
    if (m && (unsigned)why < SESSION_REFUSE__N)
        atomic_fetch_add(&m->refused[why], 1);
}

uint64_t session_clock_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

void session_metrics_stage(session_metrics *m, session_stage which, uint64_t *t0)
{
    uint64_t t;
    if (!t0)
        return;
    t = session_clock_ns();
    if (m && (unsigned)which < SESSION_STAGE__N) {
        atomic_fetch_add(&m->stage_ns[which], t - *t0);
        atomic_fetch_add(&m->stage_count[which], 1);
    }
    *t0 = t;
}

uint64_t session_metrics_get(session_metrics *m, session_event ev)
{
    return m && (unsigned)ev < SESSION_EV__N ? atomic_load(&m->events[ev]) : 0;
}

uint64_t session_metrics_refusals(session_metrics *m, session_refusal why)
{
    return m && (unsigned)why < SESSION_REFUSE__N ? atomic_load(&m->refused[why]) : 0;
}

void session_metrics_render(void *ctx, FILE *f)
{
    session_metrics *m = ctx;
    fprintf(f,
            "# HELP qkms_sessions_created_total Sessions created (first key request).\n"
            "# TYPE qkms_sessions_created_total counter\nqkms_sessions_created_total %llu\n"
            "# HELP qkms_session_deliveries_total Session keys delivered to a party.\n"
            "# TYPE qkms_session_deliveries_total counter\nqkms_session_deliveries_total %llu\n"
            "# HELP qkms_sessions_ended_total Sessions ended by this kmsd, by reason.\n"
            "# TYPE qkms_sessions_ended_total counter\n"
            "qkms_sessions_ended_total{reason=\"ended_by_party\"} %llu\n"
            "qkms_sessions_ended_total{reason=\"ended_by_operator\"} %llu\n"
            "qkms_sessions_ended_total{reason=\"device_ended\"} %llu\n"
            "qkms_sessions_ended_total{reason=\"expired\"} %llu\n"
            "# HELP qkms_session_candidate_keys_total Key requests by whether a candidate "
            "session key went with them (skipped: the session was seen to exist).\n"
            "# TYPE qkms_session_candidate_keys_total counter\n"
            "qkms_session_candidate_keys_total{result=\"made\"} %llu\n"
            "qkms_session_candidate_keys_total{result=\"skipped\"} %llu\n"
            "# HELP qkms_session_key_sources_total Session keys delivered, by where the plaintext "
            "came from (candidate: the creating request's own; token: an unwrap of the row).\n"
            "# TYPE qkms_session_key_sources_total counter\n"
            "qkms_session_key_sources_total{source=\"candidate\"} %llu\n"
            "qkms_session_key_sources_total{source=\"token\"} %llu\n"
            "# HELP qkms_session_refusals_total Refused device requests, by reason.\n"
            "# TYPE qkms_session_refusals_total counter\n",
            (unsigned long long)atomic_load(&m->events[SESSION_EV_CREATED]),
            (unsigned long long)atomic_load(&m->events[SESSION_EV_DELIVERED]),
            (unsigned long long)atomic_load(&m->events[SESSION_EV_ENDED_BY_PARTY]),
            (unsigned long long)atomic_load(&m->events[SESSION_EV_ENDED_BY_OPERATOR]),
            (unsigned long long)atomic_load(&m->events[SESSION_EV_ENDED_BY_DEVICE]),
            (unsigned long long)atomic_load(&m->events[SESSION_EV_REAPED]),
            (unsigned long long)atomic_load(&m->events[SESSION_EV_CANDIDATE_MADE]),
            (unsigned long long)atomic_load(&m->events[SESSION_EV_CANDIDATE_SKIPPED]),
            (unsigned long long)atomic_load(&m->events[SESSION_EV_KEY_FROM_CANDIDATE]),
            (unsigned long long)atomic_load(&m->events[SESSION_EV_KEY_FROM_TOKEN]));
    for (int i = 0; i < SESSION_REFUSE__N; i++)
        fprintf(f, "qkms_session_refusals_total{reason=\"%s\"} %llu\n", refuse_names[i],
                (unsigned long long)atomic_load(&m->refused[i]));
    fprintf(f, "# HELP qkms_session_stage_seconds Time spent in each stage of key requests.\n"
               "# TYPE qkms_session_stage_seconds summary\n");
    for (int i = 0; i < SESSION_STAGE__N; i++)
        fprintf(f,
                "qkms_session_stage_seconds_sum{stage=\"%s\"} %.6f\n"
                "qkms_session_stage_seconds_count{stage=\"%s\"} %llu\n",
                stage_names[i], (double)atomic_load(&m->stage_ns[i]) / 1e9, stage_names[i],
                (unsigned long long)atomic_load(&m->stage_count[i]));
}
