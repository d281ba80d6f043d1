/*
 * metrics — Prometheus text exposition of kmsd's counters.
 *
 * Request counters are per route and status; latency histograms per route.
 * Pool, token and entropy figures are read from their modules at scrape
 * time. All updates are lock-free atomics, safe from any thread.
 */
#ifndef QKMS_METRICS_H
#define QKMS_METRICS_H

#include <stddef.h>

#include "kms.h"

metrics *metrics_new(int nroutes, const char *const *route_names);
void metrics_free(metrics *m);
/* route may be -1 for requests that matched no route. */
void metrics_observe(metrics *m, int route, int status, double seconds);
void metrics_inflight(metrics *m, int delta);
/* Render the exposition text; caller frees. */
char *metrics_render(metrics *m, kms_ctx *kms, size_t *len);

#endif
