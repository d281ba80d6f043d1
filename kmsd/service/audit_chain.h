/*
 * audit_chain — the tamper-evident audit log: a SHA-256 hash chain over
 * audit_log rows, computed after commit by a sealer, and checkpoints whose
 * chain head is authenticated by a GMAC under a token master key.
 *
 * Contract (byte-exact definitions in docs/operations.md, "Audit log"):
 *  - Request paths insert audit rows as before (audit.h): no lock, no
 *    trigger, no extra work.
 *  - audit_chain_seal() (the maintenance thread, every pass) seals committed
 *    rows in id order under a transaction-level advisory lock, so several
 *    kmsd instances may run it. A missing id (a transaction in flight or
 *    rolled back) stops sealing until it has been missing for
 *    AUDIT_GAP_GRACE_S seconds; then it is recorded in audit_gaps and the
 *    chain links over it. A row that commits after its id was skipped is
 *    sealed at the chain head of that moment and recorded in audit_late.
 *    Each pass that extends the chain (or finds the newest checkpoint under
 *    a master key version other than the active one) writes a checkpoint in
 *    the same transaction; if the token cannot MAC, nothing is sealed.
 *  - audit_chain_verify() recomputes the chain and checks every checkpoint,
 *    and reports every recorded gap whose ids are still missing (a rolled-
 *    back transaction, or a row deleted before it was sealed: the two cannot
 *    be told apart), in the same snapshot.
 *  - Everything above the database and token parts is pure and unit-tested.
 */
#ifndef QKMS_AUDIT_CHAIN_H
#define QKMS_AUDIT_CHAIN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "service/service.h"

#define AUDIT_HASH_LEN 32
#define AUDIT_SEAL_INTERVAL_S 5  /* seal (and checkpoint) at most this often ... */
#define AUDIT_SEAL_MAX_PASSES 5  /* ... except for back-to-back passes while behind */
#define AUDIT_GAP_GRACE_S 5      /* a missing id blocks sealing this long */
#define AUDIT_LATE_WINDOW_S 3600 /* a skipped id may still turn up (sealed late) this long */
#define AUDIT_CANON_MAGIC "qkms-audit-v1"
#define AUDIT_CP_MAGIC "qkms-audit-checkpoint-v1"
#define AUDIT_CP_MSG_LEN (sizeof(AUDIT_CP_MAGIC) - 1 + 8 + 8 + 8 + AUDIT_HASH_LEN + 4 + 8)

/* One audit row as the chain sees it. Strings are UTF-8, NUL-terminated
 * (PostgreSQL text never holds NUL); device_id NULL for SQL NULL; detail is
 * jsonb::text. */
typedef struct {
    int64_t id;
    int64_t at_us; /* at, microseconds since 1970-01-01T00:00:00Z */
    const char *actor, *event, *device_id, *detail;
    /* Chain columns as stored (verification input). */
    bool has_prev, has_hash, has_sealed_at;
    /* at_us/detail are the values stored when the row was sealed, and they
     * no longer equal the row's columns (compared by value, not rendering). */
    bool content_changed;
    uint8_t prev_hash[AUDIT_HASH_LEN], hash[AUDIT_HASH_LEN];
} audit_row;

/* Canonical encoding of a row's content (without prev_hash). Writes at most
 * cap bytes and returns the full length, like snprintf. */
size_t audit_canon(const audit_row *r, uint8_t *buf, size_t cap);
/* hash = SHA-256(prev || audit_canon(r)). 0, or -1 on allocation failure. */
int audit_row_hash(const uint8_t prev[AUDIT_HASH_LEN], const audit_row *r,
                   uint8_t out[AUDIT_HASH_LEN]);

typedef struct {
    int64_t id, last_audit_id, chain_length, at_us;
    uint8_t head_hash[AUDIT_HASH_LEN];
    uint32_t master_version;
    uint8_t iv[12], mac[16];
} audit_checkpoint;

/* The checkpoint message the MAC covers (AUDIT_CP_MSG_LEN bytes). */
void audit_checkpoint_msg(const audit_checkpoint *cp, uint8_t out[AUDIT_CP_MSG_LEN]);

/* Skipped-id ranges [lo, hi]. */
typedef struct {
    int64_t lo, hi;
} audit_range;
/* The first id in [lo, hi] no range covers, or 0 when all are covered
 * (ids are positive). ranges need not be sorted. */
int64_t audit_first_uncovered(const audit_range *ranges, size_t n, int64_t lo, int64_t hi);

/* "2026-11-23T08:13:28.123456Z" from microseconds; out holds 28 bytes. */
void audit_format_time(int64_t at_us, char out[28]);

/* ---- verification: a walker fed rows in id order ------------------------ */

typedef enum {
    AUDIT_OK = 0,
    AUDIT_MODIFIED,          /* content does not match its hash, or a row was rewritten */
    AUDIT_DELETED,           /* a sealed row is missing */
    AUDIT_REORDERED,         /* a row links to a row that is elsewhere in the chain */
    AUDIT_INSERTED,          /* an unsealed row where every id was already sealed or skipped */
    AUDIT_CHECKPOINT_MAC,    /* a checkpoint's MAC is wrong (or the newest cannot be checked) */
    AUDIT_CHECKPOINT_HEAD,   /* an authentic checkpoint names another chain head */
    AUDIT_CHECKPOINT_MISSING /* sealed rows after the newest checkpoint */
} audit_problem;

const char *audit_problem_name(audit_problem p);

typedef struct {
    void *arg;
    /* Some row other than not_id stores this hash: *found_id set, 1; none: 0; error: -1. */
    int (*hash_elsewhere)(void *arg, const uint8_t hash[AUDIT_HASH_LEN], int64_t not_id,
                          int64_t *found_id);
    /* Skipped ranges overlapping [lo, hi] (caller frees *out): count, or -1. */
    int (*gaps_between)(void *arg, int64_t lo, int64_t hi, audit_range **out);
    /* Whether id lies in a gap skipped less than AUDIT_LATE_WINDOW_S ago: 1/0, -1 error. */
    int (*in_recent_gap)(void *arg, int64_t id);
    /* Next checkpoint in id order: 1, none: 0, error: -1. */
    int (*next_checkpoint)(void *arg, audit_checkpoint *cp);
    /* MAC check: 1 right, 0 wrong, 2 cannot be checked (version not loaded), -1 error. */
    int (*checkpoint_mac)(void *arg, const audit_checkpoint *cp);
} audit_verify_ops;

/* A recorded gap some of whose ids never turned up (audit_gaps). */
typedef struct {
    int64_t lo, hi;
    int64_t missing;       /* ids in [lo, hi] with no row */
    int64_t skipped_at_us; /* when the sealer skipped them */
} audit_gap;
#define AUDIT_GAPS_LISTED 10000 /* the newest this many are listed; all are counted */

typedef struct {
    bool ok;
    int64_t rows_checked, checkpoints_checked, checkpoints_unverifiable, pending;
    /* Gaps (filled by audit_chain_verify, not by the verifier): ranges and
     * missing ids in total; gaps[] lists the newest, ascending (caller
     * frees with free()). Gaps do not make ok false. */
    int64_t gap_count, gap_ids;
    audit_gap *gaps;
    size_t ngaps;
    int64_t head_id;
    uint8_t head_hash[AUDIT_HASH_LEN];
    audit_problem problem;
    int64_t bad_id;         /* audit row id the problem names (0: none) */
    int64_t bad_checkpoint; /* checkpoint id for checkpoint problems (0: none) */
    char detail[160];
} audit_verify_result;

typedef struct audit_verifier audit_verifier;

/* main_id: the sealer's position (unsealed rows above it are pending);
 * late ids and their chain predecessors from audit_late. */
audit_verifier *audit_verifier_new(const audit_verify_ops *ops, int64_t main_id,
                                   const int64_t *late_ids, const int64_t *late_prev,
                                   size_t nlate);
/* Feed every row in ascending id order. Returns 0 to go on, 1 once a problem
 * is found (stop feeding), -1 on an error of a callback or allocation. */
int audit_verifier_row(audit_verifier *v, const audit_row *r);
/* After the last row: checks what remains; 0 or -1 on error. */
int audit_verifier_finish(audit_verifier *v, audit_verify_result *out);
void audit_verifier_free(audit_verifier *v);

/* ---- database and token ---------------------------------------------------- */

typedef struct {
    int64_t sealed, late, skipped_ids, checkpoints;
    bool locked_out; /* another instance holds the sealer lock */
} audit_seal_stats;

/* Called on every maintenance loop iteration: seals when the newest
 * checkpoint is at least min(maintenance_interval, AUDIT_SEAL_INTERVAL_S)
 * seconds old, with more passes at once while a pass fills up. 0, or -1
 * (logged; that pass sealed nothing). stats (totals) may be NULL. */
int audit_chain_seal(qk_svc *k, audit_seal_stats *stats);

/* Verify the whole chain. 0 with *out filled (free out->gaps), or -1 with
 * *st (database) or *rv (token) saying why verification itself could not run. */
int audit_chain_verify(qk_svc *k, audit_verify_result *out, db_status *st, CK_RV *rv);

#endif
