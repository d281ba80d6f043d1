/*
 * rotation — master key rotation without downtime.
 *
 * Contract:
 *  - rotation_rotate() creates master key version N+1 in the token, records
 *    it as active and the previous one as retired (one transaction, under
 *    the master key advisory lock, audited). New wraps use it at once.
 *    When other instances share the database, their tokens may lack N+1
 *    (SoftHSM on other hosts): it is recorded 'staged' instead, nothing
 *    is wrapped under it, and rotation_stage_pass activates it once every
 *    live instance reports holding it (instances.h), so that no instance
 *    is left unable to open what the others wrap.
 *  - rotation_pass(), run by the maintenance thread of every kmsd:
 *    1. refreshes the loaded versions from the database (master_refresh;
 *       another instance may have rotated);
 *    2. rewraps a batch of device keys, live session keys and the session
 *       ID hash key still wrapped under an older version (unwrap and wrap
 *       in the token, optimistic
 *       UPDATE ... WHERE master_version = old, so instances never clash);
 *    3. destroys a retired version nothing references any more, once it
 *       has been retired longer than two maintenance intervals plus the
 *       device key cache TTL, in one transaction holding its master_keys
 *       row FOR UPDATE (marked destroyed and audited, then destroyed in the
 *       token, then committed). The database refuses any key written under
 *       a version that is not active (schema 006 trigger, row FOR SHARE),
 *       so the grace is about cached wrappings, not about correctness.
 *  - Unwrapping keeps working throughout: a wrapped blob names its version
 *    and every version not yet destroyed stays loaded.
 *  - rotation_rotate and rotation_status are service operations (err.h):
 *    every rotation failure is QK_UNAVAILABLE "unavailable" with a
 *    Retry-After hint and a detail naming the step (and the CKR_ name of a
 *    token failure); the status fails only when the database cannot say.
 */
#ifndef QKMS_ROTATION_H
#define QKMS_ROTATION_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "err.h"
#include "service/service.h"

/* Make version N+1 the active master key; actor is recorded in the audit
 * row (a token name, or "kmsd" for the wrap budget). With other live
 * instances in the registry (instances.h) and !force, N+1 is recorded
 * 'staged' instead (audited master.staged) and rotation_stage_pass
 * activates it once every live instance holds it. A staged version
 * already waiting: force activates it now, else QK_CONFLICT
 * "rotation_pending". */
qk_kind rotation_rotate(qk_svc *s, const char *actor, bool force, qk_err *e);
/* *out = {"active":N,"versions":[{version,label,state,created_at,
 * retired_at,device_keys,sessions}],"pending_rewrap":M,"staged":S|null,
 * "waiting_for":[instance names]} (caller decrefs). */
qk_kind rotation_status(qk_svc *s, json_t **out, qk_err *e);
/* What a stage step saw, for /metrics (maintenance.h); -1: unknown. */
typedef struct {
    int64_t live_instances; /* live rows in the registry */
    int64_t staged_s;       /* how long the staged version has waited; 0: none */
    int64_t staged_waiting; /* live instances lacking it */
} rotation_stage_result;

/* One maintenance step of every instance: refresh the loaded versions,
 * report them in the registry (instances_report), and activate a staged
 * version no live instance lacks (audited master.rotated by "kmsd").
 * 1 activated, 0 nothing to do, -1 error (retried next step); *out (may
 * be NULL) what it saw. */
int rotation_stage_pass(qk_svc *s, rotation_stage_result *out);
/* One maintenance step; returns the number of keys rewrapped, or -1. */
int rotation_pass(qk_svc *k);

#endif
