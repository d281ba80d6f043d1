/*
 * context — the doors' context (kms_ctx): the key service (svc, all a
 * service operation may reach) plus what belongs to the doors and main
 * only: the listeners, rate limiters, metrics registry, maintenance thread
 * and readiness prober. Built once in main() and handed to every handler
 * through the request; with the log level, the only process-wide mutable
 * state. Service code never sees this struct (tools/check-layers.py).
 */
#ifndef QKMS_API_CONTEXT_H
#define QKMS_API_CONTEXT_H

#include <stdatomic.h>
#include <time.h>

#include "config.h"
#include "service/service.h"

typedef struct metrics metrics;
typedef struct maintenance maintenance;
typedef struct session_metrics session_metrics;
typedef struct keycache keycache;
typedef struct http_server http_server;
typedef struct ratelimit ratelimit;
typedef struct readiness readiness;

typedef struct kms_ctx {
    kms_config cfg;
    const char *config_path;
    char config_hash[65];
    time_t started_at;
    int schema_version;

    qk_svc svc; /* svc.cfg points to cfg */
    metrics *metrics;
    http_server *http;
    maintenance *maint;
    struct events_worker *events; /* NULL without webhook_urls */
    ratelimit *rl[3]; /* by rl_scope: device, client, admin (ratelimit.h) */
    readiness *ready;
} kms_ctx;

#endif
