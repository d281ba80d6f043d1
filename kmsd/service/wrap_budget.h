/*
 * wrap_budget — the random-IV budget of master keys (SP 800-38D 8.3: at most
 * 2^32 AES-GCM invocations with random 96-bit IVs under one key).
 *
 * Contract:
 *  - keywrap counts every new-IV invocation (wrap, checkpoint MAC) per
 *    version in memory, before it runs. wrap_budget_pass(), called by the
 *    maintenance thread every loop iteration, adds those counts to
 *    master_keys.wrap_count (given back to keywrap if the database refuses,
 *    so they are added next time). A crash loses at most the wraps since the
 *    last successful pass (about session_reap_interval seconds' worth).
 *  - When the active version's wrap_count reaches master_key_wrap_limit, one
 *    instance claims the rotation in the database (at most one claim per
 *    version a minute, so instances do not rotate twice) and rotates
 *    (rotation_rotate, actor "kmsd"); logged at warn, counted in metrics.
 *    With master_key_create = false kmsd cannot make the key: it logs an
 *    error each minute instead, asking for `kmsctl master rotate`.
 *  - Not thread-safe: one caller (the maintenance thread).
 */
#ifndef QKMS_WRAP_BUDGET_H
#define QKMS_WRAP_BUDGET_H

#include <stdbool.h>
#include <stdint.h>

#include "service/service.h"

typedef struct {
    uint32_t active_version;  /* 0: unknown (database unreachable) */
    int64_t active_wrap_count; /* master_keys.wrap_count of the active version */
    uint64_t recorded;        /* invocations this pass added to the database */
    bool rotated;             /* this pass rotated the active version */
} wrap_budget_result;

/* 0, or -1 (database or token trouble; logged, retried next pass). */
int wrap_budget_pass(qk_svc *k, wrap_budget_result *out);
/* Only record the counts (no rotation): at shutdown, so that a clean stop
 * loses none. 0, or -1 when the database refused (the counts are lost). */
int wrap_budget_flush(qk_svc *k);

#endif
