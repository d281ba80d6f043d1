/*
 * maintenance — the background pass that keeps key state true over time:
 * retires device keys whose post-rotation grace has ended (audited), logs a
 * warning at most once a day per device whose keys expire within
 * device_key_warn_days and per certificate that expires within
 * certificate_warn_days, and refreshes the gauges /metrics shows. Runs every
 * maintenance_interval seconds on its own thread and its own pooled
 * connection; a failed pass (database down) is logged and retried next time.
 */
#ifndef QKMS_MAINTENANCE_H
#define QKMS_MAINTENANCE_H

#include <stdint.h>

#include "service/service.h"

typedef struct maintenance maintenance;

typedef struct {
    int64_t keys_expiring;    /* live keys expiring within the warning window */
    int64_t certs_expiring;   /* active certificates expiring within certificate_warn_days */
    int64_t service_ending;   /* devices whose service ends within service_warn_days */
    int64_t service_ended;    /* devices (not revoked) whose service has ended */
    int64_t devices_active, devices_suspended, devices_revoked;
    int64_t sessions_open;    /* live sessions (pending or active) */
    int64_t audit_unsealed;   /* audit rows the sealer has not chained yet (-1: unknown) */
    int64_t audit_seal_lag_s; /* the oldest of them's age */
    int64_t audit_verified_age_s; /* since the newest verification (-1: none) */
    int audit_broken;             /* its verdict: 1 broken, 0 intact, -1 none */
    uint64_t keys_retired;    /* total retired by this process */
    uint64_t passes, failures;
    /* master key wrap budget (wrap_budget.h) */
    uint32_t wrap_active_version;
    int64_t wrap_active_count;       /* master_keys.wrap_count of the active version */
    uint64_t wraps_recorded;         /* invocations this process added to the database */
    uint64_t wrap_budget_rotations;  /* automatic rotations this process made */
    /* the registry of instances and a staged master key version (rotation.h) */
    int64_t instances_live, master_staged_s, master_staged_waiting;
} maintenance_stats;

int maintenance_start(maintenance **out, qk_svc *k);
/* Run one pass now (tests and start-up); returns 0 or -1. */
int maintenance_run_once(maintenance *m);
void maintenance_stop(maintenance *m);
void maintenance_stats_get(maintenance *m, maintenance_stats *out);
/* The last pass's figures for /metrics (a metrics_render_fn). */
void maintenance_metrics_render(void *maint, FILE *f);

#endif
