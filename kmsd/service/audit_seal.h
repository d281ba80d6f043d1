/*
 * audit_seal — the audit chain's sealer: links committed audit_log rows into
 * a SHA-256 hash chain after the fact, and anchors the chain head in
 * checkpoints MAC'd under a token master key (docs/operations.md, "Audit
 * log"; the forms are in audit_canon.h).
 *
 * Contract:
 *  - Request paths insert audit rows as before (audit.h): no lock, no
 *    trigger, no extra work. Sealing happens later, off the request path.
 *  - audit_chain_seal() (the maintenance thread, every pass) seals committed
 *    rows in id order under a transaction-level advisory lock, so several
 *    kmsd instances may run it; one that finds the lock taken seals nothing
 *    (stats->locked_out). A missing id (a transaction in flight or rolled
 *    back) stops sealing until it has been missing for AUDIT_GAP_GRACE_S
 *    seconds; then it is recorded in audit_gaps and the chain links over
 *    it. A row that commits after its id was skipped is sealed at the chain
 *    head of that moment and recorded in audit_late (for
 *    AUDIT_LATE_WINDOW_S, audit_canon.h).
 *  - Each pass that extends the chain (or finds the newest checkpoint under
 *    a master key version other than the active one) writes a checkpoint in
 *    the same transaction; if the token cannot MAC, nothing is sealed.
 *  - Failures are logged here (warn; the next pass retries); the qk_err
 *    says which dependency failed.
 *  - One caller at a time per process (the maintenance thread; tests).
 */
#ifndef QKMS_AUDIT_SEAL_H
#define QKMS_AUDIT_SEAL_H

#include <stdbool.h>
#include <stdint.h>

#include "err.h"
#include "service/service.h"

#define AUDIT_SEAL_INTERVAL_S 5 /* seal (and checkpoint) at most this often ... */
#define AUDIT_SEAL_MAX_PASSES 5 /* ... except for back-to-back passes while behind */
#define AUDIT_GAP_GRACE_S 5     /* a missing id blocks sealing this long */

typedef struct {
    int64_t sealed, late, skipped_ids, checkpoints;
    bool locked_out; /* another instance holds the sealer lock */
} audit_seal_stats;

/* Called on every maintenance loop iteration: seals when the newest
 * checkpoint is at least min(maintenance_interval, AUDIT_SEAL_INTERVAL_S)
 * seconds old, with more passes at once while a pass fills up. QK_OK (also
 * when nothing was due), or the failure (that pass sealed nothing; a chain
 * found inconsistent is QK_INTERNAL after sealing what precedes the
 * problem). stats (totals, also on failure) may be NULL. */
qk_kind audit_chain_seal(qk_svc *s, audit_seal_stats *stats, qk_err *e);

#endif
