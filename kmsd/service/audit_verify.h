/*
 * audit_verify — checking the audit chain: a walker that judges rows fed to
 * it in id order (pure: its database and token come in as callbacks, so it
 * is unit-tested against a fake), and audit_chain_verify, which feeds it
 * the whole audit_log from one snapshot and checks every checkpoint's MAC
 * in the token.
 *
 * Contract (byte-exact definitions in docs/operations.md, "Audit log"):
 *  - The chain is valid when every sealed row's hash is SHA-256 of its
 *    predecessor's hash and its canonical form (audit_canon.h), every id
 *    the chain links over is a recorded gap, every late row sits where
 *    audit_late says, every checkpoint authenticates and names the chain
 *    head at its length, and a checkpoint covers the newest sealed row.
 *    The first problem found is reported (audit_verify_result), and the
 *    walk stops there.
 *  - Unsealed rows past the sealer's position, and rows committed late into
 *    a recent gap, are pending, not problems.
 *  - audit_chain_verify also reports every recorded gap whose ids are still
 *    missing (a rolled-back transaction, or a row deleted before it was
 *    sealed: the two cannot be told apart), in the same snapshot. Gaps do
 *    not make the chain invalid.
 *  - audit_chain_verify returns QK_OK when verification ran, whatever it
 *    found; otherwise the database's error (db_fail) or, for the token,
 *    503 "unavailable" (logged, as the audit API has always answered).
 */
#ifndef QKMS_AUDIT_VERIFY_H
#define QKMS_AUDIT_VERIFY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "err.h"
#include "service/audit_canon.h"
#include "service/service.h"

#define AUDIT_GAPS_LISTED 10000 /* the newest this many gaps are listed; all are counted */

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

typedef struct {
    bool ok;
    int64_t rows_checked, checkpoints_checked, checkpoints_unverifiable, pending;
    /* Gaps (filled by audit_chain_verify, not by the walker): ranges and
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

/* ---- the walker (pure) ---------------------------------------------------- */

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

/* ---- against the database and the token ---------------------------------- */

/* Verify the whole chain: QK_OK with *out filled (free out->gaps), or the
 * reason verification itself could not run in *e (*out then holds no
 * gaps). track_id (a request ID, or NULL): while it runs, the walk's
 * progress can be read under that ID with audit_verify_progress. */
qk_kind audit_chain_verify(qk_svc *s, const char *track_id, audit_verify_result *out, qk_err *e);

/* The progress of a verification running in this process, by the
 * track_id it was started with: rows walked so far and the fraction of
 * audit ids walked (0..1). false when none with that ID is running here
 * (finished, never started, or running on another kmsd). At most
 * AUDIT_VERIFY_TRACKED run tracked at once; others run untracked. */
#define AUDIT_VERIFY_TRACKED 16
typedef struct {
    int64_t rows_checked;
    double fraction;
} audit_verify_progress_info;
bool audit_verify_progress(const char *track_id, audit_verify_progress_info *out);
/* qkms_audit_verifications_total{result="ok|broken|error"} of this process
 * (a metrics_render_fn; arg unused). The newest verdict of any instance is
 * the maintenance pass's qkms_audit_chain_broken. */
void audit_verify_metrics_render(void *arg, FILE *f);

#endif
