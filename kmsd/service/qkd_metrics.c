/* qkd_metrics — ETSI GS QKD 014 counters (qkd_metrics.h). */
#include "service/qkd_metrics.h"

#include <stdlib.h>

qkd_metrics *qkd_metrics_new(void) { return calloc(1, sizeof(qkd_metrics)); }
void qkd_metrics_free(qkd_metrics *m) { free(m); }

void qkd_metrics_refused(qkd_metrics *m, qkd_refusal why)
{
    if (m && why >= 0 && why < QKD_REFUSE__N)
        atomic_fetch_add(&m->refused[why], 1);
}

void qkd_metrics_render(void *ctx, FILE *f)
{
    qkd_metrics *m = ctx;
    fprintf(f,
            "# HELP qkms_qkd_keys_total ETSI GS QKD 014 keys, by event: issued to a master "
            "SAE, fetched by a slave SAE, expired with a slave that never fetched it.\n"
            "# TYPE qkms_qkd_keys_total counter\n"
            "qkms_qkd_keys_total{event=\"issued\"} %llu\n"
            "qkms_qkd_keys_total{event=\"fetched\"} %llu\n"
            "qkms_qkd_keys_total{event=\"expired\"} %llu\n"
            "# HELP qkms_qkd_refusals_total Refused ETSI GS QKD 014 requests, by reason: "
            "bad_request (answered 400), unauthorized (answered 401).\n"
            "# TYPE qkms_qkd_refusals_total counter\n"
            "qkms_qkd_refusals_total{reason=\"bad_request\"} %llu\n"
            "qkms_qkd_refusals_total{reason=\"unauthorized\"} %llu\n",
            (unsigned long long)atomic_load(&m->issued),
            (unsigned long long)atomic_load(&m->fetched),
            (unsigned long long)atomic_load(&m->expired),
            (unsigned long long)atomic_load(&m->refused[QKD_REFUSE_BAD_REQUEST]),
            (unsigned long long)atomic_load(&m->refused[QKD_REFUSE_UNAUTHORIZED]));
}
