/*
 * qkd_metrics — the counters of ETSI GS QKD 014 key delivery (qkd.h) for
 * /metrics: keys issued, fetched, expired, and refused requests by reason. Atomic:
 * any thread counts, the metrics thread renders. The service owns one
 * (s->qkdm), made by service_open.
 */
#ifndef QKMS_QKD_METRICS_H
#define QKMS_QKD_METRICS_H

#include <stdatomic.h>
#include <stdio.h>

/* Why a request was refused: the standard's two refusal statuses. */
typedef enum {
    QKD_REFUSE_BAD_REQUEST,  /* 400: the request (fields, key IDs, limits) */
    QKD_REFUSE_UNAUTHORIZED, /* 401: who asked (certificate, SAE, pair, policy) */
    QKD_REFUSE__N
} qkd_refusal;

typedef struct qkd_metrics {
    _Atomic unsigned long long issued, fetched, expired;
    _Atomic unsigned long long refused[QKD_REFUSE__N];
} qkd_metrics;

qkd_metrics *qkd_metrics_new(void);
/* Counts one refused request; the door calls it once per answer, whether
 * the door's parser or the key service refused. NULL m: nothing. */
void qkd_metrics_refused(qkd_metrics *m, qkd_refusal why);
void qkd_metrics_free(qkd_metrics *m);
void qkd_metrics_render(void *ctx, FILE *f);

#endif
