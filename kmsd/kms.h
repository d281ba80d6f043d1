/*
 * kms — the daemon's context: everything a request handler may reach.
 * This struct is the only process-wide mutable state besides the log level;
 * it is built once in main() and handed to every handler through the request.
 */
#ifndef QKMS_KMS_H
#define QKMS_KMS_H

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
    ratelimit *rl[3]; /* by rl_scope: device, client, admin (ratelimit.h) */
    readiness *ready;
} kms_ctx;

#endif
