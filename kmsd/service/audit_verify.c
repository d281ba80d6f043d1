/*
 * audit_verify — verification of the audit chain (audit_verify.h): the
 * walker, which judges rows in id order against the chain it has seen so
 * far and asks its callbacks about everything else (other rows, gaps,
 * checkpoints, MACs); and audit_chain_verify, which runs it over audit_log
 * in one read-only snapshot, with the callbacks answered by PostgreSQL and
 * the token. It writes nothing: recording who verified is the caller's.
 */
#include "service/audit_verify.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>

#include "hexutil.h"
#include "log.h"
#include "service/audit_rows.h"
#include "store/queries.h"

#define VERIFY_PAGE 5000 /* rows read per statement */
#define CP_PAGE 1000     /* checkpoints read per statement */

/* ---- the walker ------------------------------------------------------------- */

const char *audit_problem_name(audit_problem p)
{
    static const char *const n[] = {"ok",       "modified",       "deleted",
                                    "reordered", "inserted",       "checkpoint_mac",
                                    "checkpoint_head", "checkpoint_missing"};
    return (unsigned)p < sizeof(n) / sizeof(n[0]) ? n[p] : "?";
}

/* ---- the verifier ------------------------------------------------------------ */

typedef struct {
    audit_row row;
    char *strings; /* owns the row's strings */
    bool present, done;
} stashed_row;

struct audit_verifier {
    audit_verify_ops ops;
    int64_t main_id;
    size_t nlate;
    int64_t *late_id, *late_prev;
    stashed_row *stash;

    uint8_t expect[AUDIT_HASH_LEN]; /* hash of the newest element (zeros: none) */
    int64_t last_id, last_main_id, n;

    bool cp_have, cp_done;
    audit_checkpoint cp;
    int64_t anchored;         /* chain length the newest matching checkpoint covers */
    int64_t first_unanchored; /* id of element anchored + 1 */
    int newest_mac;           /* MAC result of the newest checkpoint seen (-1: none) */
    uint32_t newest_version;

    audit_verify_result res;
    bool bad;
};

static int fail(audit_verifier *v, audit_problem p, int64_t id, int64_t cp, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

static int fail(audit_verifier *v, audit_problem p, int64_t id, int64_t cp, const char *fmt, ...)
{
    va_list ap;
    v->bad = true;
    v->res.problem = p;
    v->res.bad_id = id;
    v->res.bad_checkpoint = cp;
    va_start(ap, fmt);
    vsnprintf(v->res.detail, sizeof(v->res.detail), fmt, ap);
    va_end(ap);
    return 1;
}

audit_verifier *audit_verifier_new(const audit_verify_ops *ops, int64_t main_id,
                                   const int64_t *late_ids, const int64_t *late_prev, size_t nlate)
{
    audit_verifier *v = calloc(1, sizeof(*v));
    if (!v)
        return NULL;
    v->ops = *ops;
    v->main_id = main_id;
    v->newest_mac = -1;
    v->nlate = nlate;
    if (nlate) {
        v->late_id = malloc(nlate * sizeof(int64_t));
        v->late_prev = malloc(nlate * sizeof(int64_t));
        v->stash = calloc(nlate, sizeof(stashed_row));
        if (!v->late_id || !v->late_prev || !v->stash) {
            audit_verifier_free(v);
            return NULL;
        }
        memcpy(v->late_id, late_ids, nlate * sizeof(int64_t));
        memcpy(v->late_prev, late_prev, nlate * sizeof(int64_t));
    }
    return v;
}

void audit_verifier_free(audit_verifier *v)
{
    if (!v)
        return;
    for (size_t i = 0; i < v->nlate; i++)
        free(v->stash[i].strings);
    free(v->stash);
    free(v->late_id);
    free(v->late_prev);
    free(v);
}

static ssize_t late_index(const audit_verifier *v, const int64_t *arr, int64_t id)
{
    for (size_t i = 0; i < v->nlate; i++)
        if (arr[i] == id)
            return (ssize_t)i;
    return -1;
}

static int stash(audit_verifier *v, size_t i, const audit_row *r)
{
    size_t la = strlen(r->actor) + 1, le = strlen(r->event) + 1,
           ld = r->device_id ? strlen(r->device_id) + 1 : 0, lt = strlen(r->detail) + 1;
    char *s = malloc(la + le + ld + lt);
    if (!s)
        return -1;
    free(v->stash[i].strings);
    v->stash[i].row = *r;
    v->stash[i].strings = s;
    memcpy(s, r->actor, la);
    v->stash[i].row.actor = s;
    memcpy(s + la, r->event, le);
    v->stash[i].row.event = s + la;
    if (ld) {
        memcpy(s + la + le, r->device_id, ld);
        v->stash[i].row.device_id = s + la + le;
    }
    memcpy(s + la + le + ld, r->detail, lt);
    v->stash[i].row.detail = s + la + le + ld;
    v->stash[i].present = true;
    return 0;
}

static int load_checkpoint(audit_verifier *v)
{
    int rc;
    if (v->cp_have || v->cp_done)
        return 0;
    rc = v->ops.next_checkpoint(v->ops.arg, &v->cp);
    if (rc < 0)
        return -1;
    if (rc == 0)
        v->cp_done = true;
    else
        v->cp_have = true;
    return 0;
}

/* MAC of the current checkpoint; counts it. 1 ok, 2 unverifiable, 0 bad
 * (v->bad set), -1 error. */
static int check_mac(audit_verifier *v)
{
    int mac = v->ops.checkpoint_mac(v->ops.arg, &v->cp);
    if (mac < 0)
        return -1;
    if (mac == 0) {
        fail(v, AUDIT_CHECKPOINT_MAC, v->cp.last_audit_id, v->cp.id,
             "checkpoint %" PRId64 " does not authenticate (MAC under master key version %u)",
             v->cp.id, v->cp.master_version);
        return 0;
    }
    if (mac == 2)
        v->res.checkpoints_unverifiable++;
    else
        v->res.checkpoints_checked++;
    v->newest_mac = mac;
    v->newest_version = v->cp.master_version;
    return mac;
}

/* Checkpoints that end at the current chain length. */
static int checkpoints_here(audit_verifier *v)
{
    for (;;) {
        if (load_checkpoint(v) < 0)
            return -1;
        if (!v->cp_have || v->cp.chain_length > v->n)
            return 0;
        int mac = check_mac(v);
        if (mac < 0)
            return -1;
        if (mac == 0)
            return 1;
        if (v->cp.chain_length != v->n || v->cp.last_audit_id != v->last_id ||
            memcmp(v->cp.head_hash, v->expect, AUDIT_HASH_LEN) != 0)
            return fail(v, AUDIT_CHECKPOINT_HEAD, v->cp.last_audit_id, v->cp.id,
                        "checkpoint %" PRId64 " names row %" PRId64 " at chain position %" PRId64
                        " with another hash: rows up to it were rewritten",
                        v->cp.id, v->cp.last_audit_id, v->cp.chain_length);
        v->anchored = v->n;
        v->cp_have = false;
    }
}

/* The first id between the previous main-chain element and r that no
 * recorded gap covers (0: none), or -1 on error. */
static int64_t unrecorded_between(audit_verifier *v, const audit_row *r)
{
    audit_range *g = NULL;
    int64_t missing;
    int ng;
    if (r->id - 1 < v->last_main_id + 1)
        return 0;
    ng = v->ops.gaps_between(v->ops.arg, v->last_main_id + 1, r->id - 1, &g);
    if (ng < 0)
        return -1;
    missing = audit_first_uncovered(g, (size_t)ng, v->last_main_id + 1, r->id - 1);
    free(g);
    return missing;
}

/* One chain element. 0 go on, 1 problem, -1 error. */
static int element(audit_verifier *v, const audit_row *r, bool late)
{
    uint8_t h[AUDIT_HASH_LEN];
    int64_t missing = 0;
    if (!r->has_prev || memcmp(r->prev_hash, v->expect, AUDIT_HASH_LEN) != 0) {
        int64_t found = 0;
        int rc;
        if (!late && (missing = unrecorded_between(v, r)) != 0) {
            if (missing < 0)
                return -1;
            return fail(v, AUDIT_DELETED, missing, 0,
                        "row %" PRId64 " is missing: row %" PRId64
                        " does not link to the chain before it",
                        missing, r->id);
        }
        if (r->has_prev) {
            rc = v->ops.hash_elsewhere(v->ops.arg, r->prev_hash, r->id, &found);
            if (rc < 0)
                return -1;
            if (rc == 1)
                return fail(v, AUDIT_REORDERED, r->id, 0,
                            "row %" PRId64 " links to row %" PRId64
                            ", which is not its predecessor in the chain",
                            r->id, found);
        }
        if (v->last_id)
            return fail(v, AUDIT_MODIFIED, v->last_id, 0,
                        "row %" PRId64 " was rewritten: row %" PRId64
                        " links to a hash no row has",
                        v->last_id, r->id);
        return fail(v, AUDIT_MODIFIED, r->id, 0,
                    "row %" PRId64 " is first in the chain but does not start it", r->id);
    }
    /* Linked over a gap: every skipped id must still be recorded as one, or
     * a row deleted before sealing could be hidden by deleting its gap. */
    if (!late && (missing = unrecorded_between(v, r)) != 0) {
        if (missing < 0)
            return -1;
        return fail(v, AUDIT_DELETED, missing, 0,
                    "row %" PRId64 " is missing and no gap is recorded for it (the chain links"
                    " over it: it was deleted before it was sealed, and its gap record removed)",
                    missing);
    }
    if (audit_row_hash(r->prev_hash, r, h) != 0)
        return -1;
    if (!r->has_hash || memcmp(h, r->hash, AUDIT_HASH_LEN) != 0)
        return fail(v, AUDIT_MODIFIED, r->id, 0, "row %" PRId64 " does not match its hash",
                    r->id);
    if (r->content_changed)
        return fail(v, AUDIT_MODIFIED, r->id, 0,
                    "row %" PRId64 " does not match its hash: its time or detail differs from"
                    " the values sealed",
                    r->id);
    memcpy(v->expect, r->hash, AUDIT_HASH_LEN);
    v->last_id = r->id;
    if (!late)
        v->last_main_id = r->id;
    v->n++;
    v->res.rows_checked = v->n;
    if (v->n == v->anchored + 1)
        v->first_unanchored = r->id;
    return checkpoints_here(v);
}

/* An element, then any late rows sealed right after it. */
static int element_and_late(audit_verifier *v, const audit_row *r, bool late)
{
    int rc = element(v, r, late);
    while (rc == 0) {
        ssize_t i = late_index(v, v->late_prev, v->last_id);
        if (i < 0)
            break;
        if (!v->stash[i].present)
            return fail(v, AUDIT_DELETED, v->late_id[i], 0,
                        "row %" PRId64 " (sealed late, after row %" PRId64 ") is missing",
                        v->late_id[i], v->late_prev[i]);
        if (v->stash[i].done)
            return fail(v, AUDIT_REORDERED, v->late_id[i], 0,
                        "row %" PRId64 " appears twice in the chain", v->late_id[i]);
        v->stash[i].done = true;
        rc = element(v, &v->stash[i].row, true);
    }
    return rc;
}

int audit_verifier_row(audit_verifier *v, const audit_row *r)
{
    ssize_t li;
    if (v->bad)
        return 1;
    if (!r->has_hash) {
        int rc;
        if (r->id > v->main_id) {
            v->res.pending++;
            return 0;
        }
        if (r->has_prev || r->has_sealed_at)
            return fail(v, AUDIT_MODIFIED, r->id, 0, "row %" PRId64 " was sealed but lost its hash",
                        r->id);
        rc = v->ops.in_recent_gap(v->ops.arg, r->id);
        if (rc < 0)
            return -1;
        if (rc == 1) { /* committed late; the next sealer pass takes it */
            v->res.pending++;
            return 0;
        }
        return fail(v, AUDIT_INSERTED, r->id, 0,
                    "row %" PRId64 " is not sealed although the chain is past its id", r->id);
    }
    li = late_index(v, v->late_id, r->id);
    if (li >= 0) /* its place in the chain comes after row late_prev */
        return stash(v, (size_t)li, r) < 0 ? -1 : 0;
    return element_and_late(v, r, false);
}

int audit_verifier_finish(audit_verifier *v, audit_verify_result *out)
{
    if (!v->bad) {
        /* Checkpoints beyond the end of the chain: rows were cut off. */
        if (load_checkpoint(v) < 0)
            return -1;
        if (v->cp_have) {
            int mac = check_mac(v);
            if (mac < 0)
                return -1;
            if (mac != 0)
                fail(v, AUDIT_DELETED, v->cp.last_audit_id, v->cp.id,
                     "checkpoint %" PRId64 " covers %" PRId64 " rows up to row %" PRId64
                     " but the chain has %" PRId64,
                     v->cp.id, v->cp.chain_length, v->cp.last_audit_id, v->n);
        }
    }
    if (!v->bad)
        for (size_t i = 0; i < v->nlate; i++)
            if (!v->stash[i].done) {
                fail(v, AUDIT_DELETED, v->late_prev[i], 0,
                     "row %" PRId64 " (the chain predecessor of late row %" PRId64 ") is missing",
                     v->late_prev[i], v->late_id[i]);
                break;
            }
    if (!v->bad && v->n > 0) {
        if (v->anchored < v->n)
            fail(v, AUDIT_CHECKPOINT_MISSING, v->first_unanchored, 0,
                 "rows from %" PRId64 " on are sealed but no checkpoint covers them",
                 v->first_unanchored);
        else if (v->newest_mac == 2)
            fail(v, AUDIT_CHECKPOINT_MAC, v->last_id, v->cp.id,
                 "the newest checkpoint is under master key version %u, which is not loaded",
                 v->newest_version);
    }
    *out = v->res;
    out->ok = !v->bad;
    if (!v->bad)
        out->problem = AUDIT_OK;
    out->head_id = v->last_id;
    memcpy(out->head_hash, v->expect, AUDIT_HASH_LEN);
    return 0;
}

/* ---- the callbacks, answered by the database and the token ------------------ */

typedef struct {
    qk_svc *s;
    db_conn *c;
    db_status st;
    CK_RV rv;
    /* checkpoint paging */
    PGresult *cps;
    int cp_i;
    int64_t cp_after;
    bool cp_end;
} verify_ctx;

static int v_hash_elsewhere(void *arg, const uint8_t hash[AUDIT_HASH_LEN], int64_t not_id,
                            int64_t *found)
{
    verify_ctx *vc = arg;
    char hex[2 * AUDIT_HASH_LEN + 1];
    audit_i64_text sid = audit_i64_param(not_id);
    const char *vals[2] = {hex, sid.s};
    PGresult *r;
    int rc;
    qkms_hex_encode(hash, AUDIT_HASH_LEN, hex);
    r = qt_exec(vc->c, QT_AUDIT_HASH_ELSEWHERE, 2, vals, &vc->st);
    if (!r)
        return -1;
    rc = PQntuples(r) > 0;
    if (rc)
        *found = audit_get_i64(r, 0, 0);
    PQclear(r);
    return rc;
}

static int v_gaps_between(void *arg, int64_t lo, int64_t hi, audit_range **out)
{
    verify_ctx *vc = arg;
    audit_i64_text slo = audit_i64_param(lo), shi = audit_i64_param(hi);
    const char *vals[2] = {slo.s, shi.s};
    PGresult *r = qt_exec(vc->c, QT_AUDIT_GAPS_BETWEEN, 2, vals, &vc->st);
    int n;
    if (!r)
        return -1;
    n = PQntuples(r);
    *out = calloc(n ? (size_t)n : 1, sizeof(audit_range));
    if (!*out) {
        PQclear(r);
        return -1;
    }
    for (int i = 0; i < n; i++) {
        (*out)[i].lo = audit_get_i64(r, i, 0);
        (*out)[i].hi = audit_get_i64(r, i, 1);
    }
    PQclear(r);
    return n;
}

static int v_in_recent_gap(void *arg, int64_t id)
{
    verify_ctx *vc = arg;
    audit_i64_text sid = audit_i64_param(id), window = audit_i64_param(AUDIT_LATE_WINDOW_S);
    const char *vals[2] = {sid.s, window.s};
    PGresult *r = qt_exec(vc->c, QT_AUDIT_IN_RECENT_GAP, 2, vals, &vc->st);
    int rc;
    if (!r)
        return -1;
    rc = PQntuples(r) > 0;
    PQclear(r);
    return rc;
}

static int v_next_checkpoint(void *arg, audit_checkpoint *cp)
{
    verify_ctx *vc = arg;
    if (vc->cps && vc->cp_i >= PQntuples(vc->cps)) {
        vc->cp_end = PQntuples(vc->cps) < CP_PAGE;
        PQclear(vc->cps);
        vc->cps = NULL;
    }
    if (!vc->cps) {
        audit_i64_text after = audit_i64_param(vc->cp_after), page = audit_i64_param(CP_PAGE);
        const char *vals[2] = {after.s, page.s};
        if (vc->cp_end)
            return 0;
        vc->cps = qt_exec(vc->c, QT_AUDIT_CHECKPOINTS_AFTER, 2, vals, &vc->st);
        if (!vc->cps)
            return -1;
        vc->cp_i = 0;
        if (PQntuples(vc->cps) == 0) {
            vc->cp_end = true;
            return 0;
        }
    }
    audit_checkpoint_from(vc->cps, vc->cp_i++, cp);
    vc->cp_after = cp->id;
    return 1;
}

static int v_checkpoint_mac(void *arg, const audit_checkpoint *cp)
{
    verify_ctx *vc = arg;
    uint8_t msg[AUDIT_CP_MSG_LEN];
    CK_RV rv;
    audit_checkpoint_msg(cp, msg);
    if (cp->master_version == 0)
        return 2;
    rv = keywrap_mac_verify(vc->s->kw, cp->master_version, cp->iv, msg, sizeof(msg), cp->mac);
    if (rv == CKR_OK)
        return 1;
    if (rv == CKR_SIGNATURE_INVALID)
        return 0;
    if (rv == CKR_KEY_HANDLE_INVALID)
        return 2;
    vc->rv = rv;
    return -1;
}

/* ---- the walk ---------------------------------------------------------------- */

/* Every recorded gap with ids still missing: counted in full, the newest
 * AUDIT_GAPS_LISTED listed in ascending order. 0, or -1 (vc->st set). */
static int load_gaps(verify_ctx *vc, audit_verify_result *out)
{
    audit_i64_text listed = audit_i64_param(AUDIT_GAPS_LISTED);
    const char *vals[1] = {listed.s};
    PGresult *r = qt_exec(vc->c, QT_AUDIT_GAPS_MISSING, 1, vals, &vc->st);
    int n;
    if (!r)
        return -1;
    n = PQntuples(r);
    if (n > 0) {
        out->gaps = calloc((size_t)n, sizeof(audit_gap));
        if (!out->gaps) {
            PQclear(r);
            vc->st = DB_ERROR;
            return -1;
        }
        out->gap_count = audit_get_i64(r, 0, 4);
        out->gap_ids = audit_get_i64(r, 0, 5);
    }
    for (int i = 0; i < n; i++) {
        audit_gap *g = &out->gaps[n - 1 - i];
        g->lo = audit_get_i64(r, i, 0);
        g->hi = audit_get_i64(r, i, 1);
        g->missing = audit_get_i64(r, i, 2);
        g->skipped_at_us = audit_get_i64(r, i, 3);
    }
    out->ngaps = (size_t)n;
    PQclear(r);
    return 0;
}

/* A connection in one read-only snapshot for the whole walk, so the sealer
 * working meanwhile does not show up as a change. 0, or -1 (vc->st set). */
static int begin_snapshot(verify_ctx *vc)
{
    vc->c = db_acquire(vc->s->db, &vc->st);
    if (!vc->c)
        return -1;
    if ((vc->st = qt_command(vc->c, QT_AUDIT_VERIFY_BEGIN)) != DB_OK ||
        (vc->st = qt_command(vc->c, QT_UTF8_LOCAL)) != DB_OK)
        return -1;
    return 0;
}

/* A walker that knows the sealer's position and the late rows. NULL on
 * failure (vc->st set). */
static audit_verifier *new_walker(verify_ctx *vc, const audit_verify_ops *ops)
{
    audit_verifier *v = NULL;
    int64_t *late_id = NULL, *late_prev = NULL, main_id;
    PGresult *r = qt_exec(vc->c, QT_AUDIT_MAIN_ID, 0, NULL, &vc->st);
    int nlate;
    if (!r)
        return NULL;
    main_id = PQntuples(r) ? audit_get_i64(r, 0, 0) : 0;
    PQclear(r);
    if (!(r = qt_exec(vc->c, QT_AUDIT_LATE_LIST, 0, NULL, &vc->st)))
        return NULL;
    nlate = PQntuples(r);
    late_id = calloc(nlate ? (size_t)nlate : 1, sizeof(int64_t));
    late_prev = calloc(nlate ? (size_t)nlate : 1, sizeof(int64_t));
    if (!late_id || !late_prev)
        goto out;
    for (int i = 0; i < nlate; i++) {
        late_id[i] = audit_get_i64(r, i, 0);
        late_prev[i] = audit_get_i64(r, i, 1);
    }
    v = audit_verifier_new(ops, main_id, late_id, late_prev, (size_t)nlate);
out:
    if (!v)
        vc->st = DB_ERROR; /* out of memory */
    PQclear(r);
    free(late_id);
    free(late_prev);
    return v;
}

/* ---- progress of running verifications, by track ID -------------------------- */

/* A fixed table under one lock: a verification updates its slot once per
 * page, a poller reads it; neither is on a hot path. */
typedef struct {
    bool used;
    char id[65];
    int64_t rows, last_id, max_id;
} track_slot;

static pthread_mutex_t track_lock = PTHREAD_MUTEX_INITIALIZER;
static track_slot tracks[AUDIT_VERIFY_TRACKED];

/* A slot for id, or -1: no id, table full, or the ID already running (the
 * poller would not know whose progress it read). */
static int track_begin(const char *id)
{
    int free_slot = -1;
    if (!id || !*id || strlen(id) >= sizeof(tracks[0].id))
        return -1;
    pthread_mutex_lock(&track_lock);
    for (int i = 0; i < AUDIT_VERIFY_TRACKED; i++) {
        if (tracks[i].used && !strcmp(tracks[i].id, id)) {
            free_slot = -1;
            break;
        }
        if (!tracks[i].used && free_slot < 0)
            free_slot = i;
    }
    if (free_slot >= 0) {
        tracks[free_slot] = (track_slot){.used = true};
        snprintf(tracks[free_slot].id, sizeof(tracks[free_slot].id), "%s", id);
    }
    pthread_mutex_unlock(&track_lock);
    return free_slot;
}

static void track_set(int slot, int64_t rows, int64_t last_id, int64_t max_id)
{
    if (slot < 0)
        return;
    pthread_mutex_lock(&track_lock);
    tracks[slot].rows = rows;
    tracks[slot].last_id = last_id;
    tracks[slot].max_id = max_id;
    pthread_mutex_unlock(&track_lock);
}

static void track_end(int slot)
{
    if (slot < 0)
        return;
    pthread_mutex_lock(&track_lock);
    tracks[slot].used = false;
    pthread_mutex_unlock(&track_lock);
}

bool audit_verify_progress(const char *track_id, audit_verify_progress_info *out)
{
    bool found = false;
    if (!track_id)
        return false;
    pthread_mutex_lock(&track_lock);
    for (int i = 0; i < AUDIT_VERIFY_TRACKED && !found; i++) {
        if (!tracks[i].used || strcmp(tracks[i].id, track_id))
            continue;
        found = true;
        out->rows_checked = tracks[i].rows;
        out->fraction = tracks[i].max_id > 0 ? (double)tracks[i].last_id / (double)tracks[i].max_id
                                             : 0.0;
        if (out->fraction > 1.0)
            out->fraction = 1.0;
    }
    pthread_mutex_unlock(&track_lock);
    return found;
}

/* Feed every row in id order until the walker finds a problem, its
 * progress in slot. 0, or -1. */
static int walk_rows(verify_ctx *vc, audit_verifier *v, int slot)
{
    int64_t after = 0, rows = 0, max_id = 0;
    if (slot >= 0) {
        PGresult *r = qt_exec(vc->c, QT_AUDIT_MAX_ID, 0, NULL, &vc->st);
        if (!r)
            return -1;
        max_id = audit_get_i64(r, 0, 0);
        PQclear(r);
        track_set(slot, 0, 0, max_id);
    }
    for (;;) {
        audit_i64_text safter = audit_i64_param(after), page = audit_i64_param(VERIFY_PAGE);
        const char *vals[2] = {safter.s, page.s};
        PGresult *r = qt_exec(vc->c, QT_AUDIT_VERIFY_ROWS, 2, vals, &vc->st);
        int n, stop = 0;
        if (!r)
            return -1;
        n = PQntuples(r);
        for (int i = 0; i < n && !stop; i++) {
            audit_row row;
            audit_row_from(r, i, &row, true);
            after = row.id;
            rows++;
            stop = audit_verifier_row(v, &row);
        }
        PQclear(r);
        track_set(slot, rows, after, max_id);
        if (stop < 0)
            return -1;
        if (stop || n < VERIFY_PAGE)
            return 0;
    }
}

/* Why verification could not run, in the audit API's terms. */
static qk_kind verify_failed(const verify_ctx *vc, qk_err *e)
{
    if (vc->rv != CKR_OK) {
        log_emit(LOG_WARN, "audit verification: token error", "{s:s}", "error",
                 p11_rv_name(vc->rv));
        qk_fail(e, QK_UNAVAILABLE, "unavailable", "token unavailable, retry later");
        if (e)
            e->retry_after = 1;
        return QK_UNAVAILABLE;
    }
    return db_fail(e, vc->st == DB_OK ? DB_ERROR : vc->st);
}

/* This process's verifications, for /metrics. */
static atomic_ullong verified_ok, verified_broken, verify_errors;

void audit_verify_metrics_render(void *arg, FILE *f)
{
    (void)arg;
    fprintf(f,
            "# HELP qkms_audit_verifications_total Audit chain verifications run by this process,"
            " by result.\n# TYPE qkms_audit_verifications_total counter\n"
            "qkms_audit_verifications_total{result=\"ok\"} %llu\n"
            "qkms_audit_verifications_total{result=\"broken\"} %llu\n"
            "qkms_audit_verifications_total{result=\"error\"} %llu\n",
            (unsigned long long)atomic_load(&verified_ok),
            (unsigned long long)atomic_load(&verified_broken),
            (unsigned long long)atomic_load(&verify_errors));
}

qk_kind audit_chain_verify(qk_svc *s, const char *track_id, audit_verify_result *out, qk_err *e)
{
    verify_ctx vc = {.s = s, .st = DB_OK, .rv = CKR_OK};
    audit_verify_ops ops = {.arg = &vc,
                            .hash_elsewhere = v_hash_elsewhere,
                            .gaps_between = v_gaps_between,
                            .in_recent_gap = v_in_recent_gap,
                            .next_checkpoint = v_next_checkpoint,
                            .checkpoint_mac = v_checkpoint_mac};
    audit_verifier *v = NULL;
    qk_kind k = QK_OK;
    int slot = track_begin(track_id);

    memset(out, 0, sizeof(*out));
    if (begin_snapshot(&vc) != 0 || !(v = new_walker(&vc, &ops)) || walk_rows(&vc, v, slot) != 0 ||
        audit_verifier_finish(v, out) != 0 || load_gaps(&vc, out) != 0)
        k = verify_failed(&vc, e);
    if (vc.cps)
        PQclear(vc.cps);
    if (vc.c) {
        if (PQstatus(db_pg(vc.c)) == CONNECTION_OK)
            db_command(vc.c, "COMMIT");
        db_release(s->db, vc.c);
    }
    if (k != QK_OK) {
        free(out->gaps);
        out->gaps = NULL;
        out->ngaps = 0;
        atomic_fetch_add(&verify_errors, 1);
    } else {
        atomic_fetch_add(out->problem == AUDIT_OK ? &verified_ok : &verified_broken, 1);
    }
    audit_verifier_free(v);
    track_end(slot);
    return k;
}
