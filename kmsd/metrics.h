/*
 * metrics — Prometheus text exposition of kmsd's counters: a registry.
 *
 * Request counters are per route and status; latency histograms per route.
 * Every other module (pool, token, entropy, sessions, caches, rate limits,
 * maintenance) registers a render function at start-up, called at scrape
 * time in registration order; this module imports none of them. Updates are
 * lock-free atomics, safe from any thread; registration happens before the
 * listeners start and is not thread-safe.
 */
#ifndef QKMS_METRICS_H
#define QKMS_METRICS_H

#include <stddef.h>
#include <stdio.h>
#include <time.h>

typedef struct metrics metrics;

/* Writes complete "# HELP"/"# TYPE"/sample lines for its figures to f. */
typedef void (*metrics_render_fn)(void *ctx, FILE *f);
#define METRICS_MAX_SOURCES 16

metrics *metrics_new(int nroutes, const char *const *route_names, time_t started_at);
/* 0, or -1 when the registry is full (METRICS_MAX_SOURCES). */
int metrics_register(metrics *m, metrics_render_fn fn, void *ctx);
void metrics_free(metrics *m);
/* route may be -1 for requests that matched no route. */
void metrics_observe(metrics *m, int route, int status, double seconds);
void metrics_inflight(metrics *m, int delta);
/* Render the exposition text; caller frees. */
char *metrics_render(metrics *m, size_t *len);

#endif
