/* audit_chain — hash chain over audit_log, its sealer, checkpoints and verification. */
#include "service/audit_chain.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include "hexutil.h"
#include "log.h"
#include "store/pgarray.h"

/* Arbitrary constant naming the sealer's advisory lock (transaction level). */
#define AUDIT_SEAL_LOCK "7164803902"
#define SEAL_BATCH 2000     /* rows read per statement */
#define SEAL_MAX_ROWS 20000 /* rows sealed per pass (one transaction) */
#define LATE_MAX 1000       /* late rows sealed per pass */
#define VERIFY_PAGE 5000
#define CP_PAGE 1000
#define STR_(x) #x
#define STR(x) STR_(x)

/* ---- pure parts ---------------------------------------------------------- */

static void put_be64(uint8_t *p, uint64_t v)
{
    for (int i = 7; i >= 0; i--) {
        p[i] = (uint8_t)v;
        v >>= 8;
    }
}

static void put_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

/* Appends n bytes at *pos when they fit; *pos always advances. */
static void emit(uint8_t *buf, size_t cap, size_t *pos, const void *src, size_t n)
{
    if (*pos <= cap && n <= cap - *pos && n)
        memcpy(buf + *pos, src, n);
    *pos += n;
}

static void emit_str(uint8_t *buf, size_t cap, size_t *pos, const char *s)
{
    size_t n = strlen(s);
    uint8_t len[4];
    put_be32(len, (uint32_t)n);
    emit(buf, cap, pos, len, 4);
    emit(buf, cap, pos, s, n);
}

size_t audit_canon(const audit_row *r, uint8_t *buf, size_t cap)
{
    size_t pos = 0;
    uint8_t b[8], flag;
    emit(buf, cap, &pos, AUDIT_CANON_MAGIC, sizeof(AUDIT_CANON_MAGIC) - 1);
    put_be64(b, (uint64_t)r->id);
    emit(buf, cap, &pos, b, 8);
    put_be64(b, (uint64_t)r->at_us); /* two's complement */
    emit(buf, cap, &pos, b, 8);
    emit_str(buf, cap, &pos, r->actor);
    emit_str(buf, cap, &pos, r->event);
    flag = r->device_id ? 1 : 0;
    emit(buf, cap, &pos, &flag, 1);
    if (r->device_id)
        emit_str(buf, cap, &pos, r->device_id);
    emit_str(buf, cap, &pos, r->detail);
    return pos;
}

int audit_row_hash(const uint8_t prev[AUDIT_HASH_LEN], const audit_row *r,
                   uint8_t out[AUDIT_HASH_LEN])
{
    uint8_t stackbuf[1024], *buf = stackbuf;
    size_t need = AUDIT_HASH_LEN + audit_canon(r, NULL, 0);
    unsigned int n = 0;
    int rc = 0;
    if (need > sizeof(stackbuf) && !(buf = malloc(need)))
        return -1;
    memcpy(buf, prev, AUDIT_HASH_LEN);
    audit_canon(r, buf + AUDIT_HASH_LEN, need - AUDIT_HASH_LEN);
    if (EVP_Digest(buf, need, out, &n, EVP_sha256(), NULL) != 1 || n != AUDIT_HASH_LEN)
        rc = -1;
    if (buf != stackbuf)
        free(buf);
    return rc;
}

void audit_checkpoint_msg(const audit_checkpoint *cp, uint8_t out[AUDIT_CP_MSG_LEN])
{
    size_t pos = 0;
    uint8_t b[8];
    emit(out, AUDIT_CP_MSG_LEN, &pos, AUDIT_CP_MAGIC, sizeof(AUDIT_CP_MAGIC) - 1);
    put_be64(b, (uint64_t)cp->id);
    emit(out, AUDIT_CP_MSG_LEN, &pos, b, 8);
    put_be64(b, (uint64_t)cp->last_audit_id);
    emit(out, AUDIT_CP_MSG_LEN, &pos, b, 8);
    put_be64(b, (uint64_t)cp->chain_length);
    emit(out, AUDIT_CP_MSG_LEN, &pos, b, 8);
    emit(out, AUDIT_CP_MSG_LEN, &pos, cp->head_hash, AUDIT_HASH_LEN);
    put_be32(b, cp->master_version);
    emit(out, AUDIT_CP_MSG_LEN, &pos, b, 4);
    put_be64(b, (uint64_t)cp->at_us);
    emit(out, AUDIT_CP_MSG_LEN, &pos, b, 8);
}

int64_t audit_first_uncovered(const audit_range *ranges, size_t n, int64_t lo, int64_t hi)
{
    int64_t x = lo;
    bool moved = true;
    /* Advance x past every range covering it; n is small. */
    while (x <= hi && moved) {
        moved = false;
        for (size_t i = 0; i < n; i++)
            if (ranges[i].lo <= x && x <= ranges[i].hi) {
                x = ranges[i].hi + 1;
                moved = true;
            }
    }
    return x <= hi ? x : 0;
}

void audit_format_time(int64_t at_us, char out[28])
{
    int64_t s = at_us / 1000000, us = at_us % 1000000;
    struct tm tm;
    time_t t;
    if (us < 0) {
        us += 1000000;
        s--;
    }
    t = (time_t)s;
    if (!gmtime_r(&t, &tm) || tm.tm_year + 1900 > 9999 || tm.tm_year + 1900 < 0) {
        snprintf(out, 28, "invalid");
        return;
    }
    char tmp[96];
    snprintf(tmp, sizeof(tmp), "%04d-%02d-%02dT%02d:%02d:%02d.%06dZ", tm.tm_year + 1900,
             tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (int)us);
    snprintf(out, 28, "%.27s", tmp);
}

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

/* ---- database helpers ----------------------------------------------------------- */

/* An unprepared statement (the sealer and the audit admin routes are not on
 * the request path). NULL with *st set on failure. */
static PGresult *q(db_conn *c, const char *sql, int n, const char *const *vals, db_status *st)
{
    /* db_exec_params: under the pool's io deadline, errors classified and logged. */
    return db_exec_params(c, sql, n, vals, st);
}

static int64_t get_i64(const PGresult *r, int row, int col)
{
    return PQgetisnull(r, row, col) ? 0 : strtoll(PQgetvalue(r, row, col), NULL, 10);
}

/* A hex column into out[len]; false when NULL or malformed. */
static bool get_hex(const PGresult *r, int row, int col, uint8_t *out, size_t len)
{
    const char *s;
    if (PQgetisnull(r, row, col))
        return false;
    s = PQgetvalue(r, row, col);
    return qkms_hex_decode(s, strlen(s), out, len) == (long)len;
}

/* Columns: id, at_us, actor, event, device_id, detail, then from col 6 on
 * optionally prev_hash hex, hash hex, sealed_at IS NOT NULL, and CHAIN_COLS. */
#define ROW_COLS                                                                                 \
    "a.id, (extract(epoch FROM a.at) * 1000000)::bigint, a.actor, a.event, a.device_id,"        \
    " a.detail::text"
/* Cols 9-11: the values the hash covers as stored when sealed, and whether
 * they still equal the row's columns, compared by value (epoch, jsonb
 * equality), not by rendering. Rows sealed by a kmsd before migration 007
 * have NULLs there and are hashed over the columns' current rendering. */
#define STORED_COLS                                                                              \
    ", a.hashed_at_us, a.hashed_detail,"                                                         \
    " CASE WHEN a.hashed_at_us IS NULL AND a.hashed_detail IS NULL THEN true"                    \
    " WHEN a.hashed_at_us IS NULL OR a.hashed_detail IS NULL THEN false"                         \
    " WHEN a.hashed_at_us <> (extract(epoch FROM a.at) * 1000000)::bigint THEN false"            \
    " WHEN a.hashed_detail = a.detail::text THEN true"                                           \
    " ELSE coalesce(qkms_audit_detail_same(a.hashed_detail, a.detail), false) END"

/* A sealed row's hash input: the stored values where present (cols 9-11). */
static void row_stored(const PGresult *r, int i, audit_row *row)
{
    if (!PQgetisnull(r, i, 9))
        row->at_us = get_i64(r, i, 9);
    if (!PQgetisnull(r, i, 10))
        row->detail = PQgetvalue(r, i, 10);
    row->content_changed = strcmp(PQgetvalue(r, i, 11), "t") != 0;
}

static void row_from(const PGresult *r, int i, audit_row *row, bool chain_cols)
{
    memset(row, 0, sizeof(*row));
    row->id = get_i64(r, i, 0);
    row->at_us = get_i64(r, i, 1);
    row->actor = PQgetvalue(r, i, 2);
    row->event = PQgetvalue(r, i, 3);
    row->device_id = PQgetisnull(r, i, 4) ? NULL : PQgetvalue(r, i, 4);
    row->detail = PQgetvalue(r, i, 5);
    if (chain_cols) {
        /* A malformed (non-NULL) value counts as present and reads as zeros:
         * it will not match. */
        row->has_prev = !PQgetisnull(r, i, 6);
        if (row->has_prev && !get_hex(r, i, 6, row->prev_hash, AUDIT_HASH_LEN))
            memset(row->prev_hash, 0, AUDIT_HASH_LEN);
        row->has_hash = !PQgetisnull(r, i, 7);
        if (row->has_hash && !get_hex(r, i, 7, row->hash, AUDIT_HASH_LEN))
            memset(row->hash, 0, AUDIT_HASH_LEN);
        row->has_sealed_at = !strcmp(PQgetvalue(r, i, 8), "t");
        if (PQnfields(r) > 11)
            row_stored(r, i, row);
    }
}

/* ---- the sealer ------------------------------------------------------------------ */

typedef struct {
    qk_svc *k;
    int interval_s; /* seal only when the newest checkpoint is this old ... */
    bool force;     /* ... unless the last pass was full */
    audit_seal_stats s;
    CK_RV token_rv;
    bool inconsistent, not_due;
} seal_ctx;

typedef struct {
    pgarray ids, prevs, hashes;     /* rows to seal */
    pgarray at_us, details;         /* ... and the rendered values their hash covers */
    pgarray late_ids, late_prevs;   /* audit_late rows */
    pgarray gap_lo, gap_hi;         /* audit_gaps rows */
    int64_t main_id, head_id, chain_length;
    uint8_t head_hash[AUDIT_HASH_LEN];
} seal_batch;

static void batch_init(seal_batch *b)
{
    memset(b, 0, sizeof(*b));
    pgarray_init(&b->ids);
    pgarray_init(&b->prevs);
    pgarray_init(&b->hashes);
    pgarray_init(&b->at_us);
    pgarray_init(&b->details);
    pgarray_init(&b->late_ids);
    pgarray_init(&b->late_prevs);
    pgarray_init(&b->gap_lo);
    pgarray_init(&b->gap_hi);
}

static void batch_free(seal_batch *b)
{
    pgarray_free(&b->ids);
    pgarray_free(&b->prevs);
    pgarray_free(&b->hashes);
    pgarray_free(&b->at_us);
    pgarray_free(&b->details);
    pgarray_free(&b->late_ids);
    pgarray_free(&b->late_prevs);
    pgarray_free(&b->gap_lo);
    pgarray_free(&b->gap_hi);
}

/* Chain one row after the head. */
static int seal_one(seal_batch *b, const audit_row *row)
{
    uint8_t h[AUDIT_HASH_LEN];
    char hex[2 * AUDIT_HASH_LEN + 1];
    if (audit_row_hash(b->head_hash, row, h) != 0)
        return -1;
    pgarray_add_int(&b->ids, (long)row->id);
    qkms_hex_encode(b->head_hash, AUDIT_HASH_LEN, hex);
    pgarray_add(&b->prevs, hex);
    qkms_hex_encode(h, AUDIT_HASH_LEN, hex);
    pgarray_add(&b->hashes, hex);
    pgarray_add_int(&b->at_us, (long)row->at_us);
    pgarray_add(&b->details, row->detail);
    memcpy(b->head_hash, h, AUDIT_HASH_LEN);
    b->head_id = row->id;
    b->chain_length++;
    return 0;
}

static const char *lit(pgarray *a, bool *oom)
{
    const char *s = pgarray_finish(a);
    if (!s)
        *oom = true;
    return s ? s : "{}";
}

/* Write the checkpoint for the current head under the active master key. */
static db_status write_checkpoint(db_conn *c, seal_ctx *sc, const seal_batch *b)
{
    audit_checkpoint cp;
    uint8_t msg[AUDIT_CP_MSG_LEN];
    char hexhead[65], hexiv[25], hexmac[33], sid[24], slast[24], slen[24], sver[16];
    db_status st;
    PGresult *r;
    CK_RV rv;

    memset(&cp, 0, sizeof(cp));
    cp.master_version = keywrap_active(sc->k->kw);
    if (cp.master_version == 0) {
        sc->token_rv = CKR_KEY_HANDLE_INVALID;
        return DB_ERROR;
    }
    r = q(c,
          "SELECT nextval(pg_get_serial_sequence('audit_checkpoints', 'id')), now(),"
          " (extract(epoch FROM now()) * 1000000)::bigint",
          0, NULL, &st);
    if (!r)
        return st;
    cp.id = get_i64(r, 0, 0);
    cp.at_us = get_i64(r, 0, 2);
    cp.last_audit_id = b->head_id;
    cp.chain_length = b->chain_length;
    memcpy(cp.head_hash, b->head_hash, AUDIT_HASH_LEN);
    if (RAND_bytes(cp.iv, sizeof(cp.iv)) != 1) {
        PQclear(r);
        sc->token_rv = CKR_FUNCTION_FAILED;
        return DB_ERROR;
    }
    audit_checkpoint_msg(&cp, msg);
    rv = keywrap_mac(sc->k->kw, cp.master_version, cp.iv, msg, sizeof(msg), cp.mac);
    if (rv != CKR_OK) {
        PQclear(r);
        sc->token_rv = rv;
        return DB_ERROR;
    }
    qkms_hex_encode(cp.head_hash, AUDIT_HASH_LEN, hexhead);
    qkms_hex_encode(cp.iv, sizeof(cp.iv), hexiv);
    qkms_hex_encode(cp.mac, sizeof(cp.mac), hexmac);
    snprintf(sid, sizeof(sid), "%" PRId64, cp.id);
    snprintf(slast, sizeof(slast), "%" PRId64, cp.last_audit_id);
    snprintf(slen, sizeof(slen), "%" PRId64, cp.chain_length);
    snprintf(sver, sizeof(sver), "%u", cp.master_version);
    {
        const char *vals[8] = {sid, slast, slen, hexhead, sver, hexiv, hexmac, PQgetvalue(r, 0, 1)};
        PGresult *ins = q(c,
                          "INSERT INTO audit_checkpoints (id, last_audit_id, chain_length, head_hash,"
                          " master_version, iv, mac, at) VALUES ($1, $2, $3, decode($4, 'hex'), $5,"
                          " decode($6, 'hex'), decode($7, 'hex'), $8::timestamptz)",
                          8, vals, &st);
        PQclear(ins);
    }
    PQclear(r);
    if (st == DB_OK) {
        sc->s.checkpoints++;
        log_emit(LOG_DEBUG, "audit checkpoint", "{s:I,s:I,s:I,s:s,s:i}", "checkpoint",
                 (json_int_t)cp.id, "last_audit_id", (json_int_t)cp.last_audit_id,
                 "chain_length", (json_int_t)cp.chain_length, "head_hash", hexhead,
                 "master_version", (int)cp.master_version);
    }
    return st;
}

static db_status seal_tx(db_conn *c, void *arg)
{
    seal_ctx *sc = arg;
    seal_batch b;
    db_status st;
    PGresult *r;
    /* Gap watermark: every id <= seen_upto was handed out before seen_at,
     * so once seen_at is AUDIT_GAP_GRACE_S old ("matured"), such an id that
     * is still not visible has been missing at least that long. */
    int64_t seen_upto = 0;
    bool seen_null, matured, refresh = false, stop = false, oom = false;
    char seen_at[64] = "";
    uint32_t cp_version = 0;
    bool cp_version_null = true;
    char smain[24];

    memset(&sc->s, 0, sizeof(sc->s));
    sc->token_rv = CKR_OK;
    sc->inconsistent = sc->not_due = false;
    batch_init(&b);

    r = q(c, "SET LOCAL client_encoding = 'UTF8'", 0, NULL, &st);
    PQclear(r);
    if (!r)
        goto out;
    r = q(c, "SELECT pg_try_advisory_xact_lock(" AUDIT_SEAL_LOCK ")", 0, NULL, &st);
    if (!r)
        goto out;
    if (strcmp(PQgetvalue(r, 0, 0), "t") != 0) {
        PQclear(r);
        sc->s.locked_out = true;
        goto out; /* another instance is sealing */
    }
    PQclear(r);
    {
        char secs[16];
        const char *vals[1] = {secs};
        snprintf(secs, sizeof(secs), "%d", sc->interval_s);
        r = q(c,
              "SELECT main_id, head_id, encode(head_hash, 'hex'), chain_length, gap_seen_upto,"
              " gap_seen_at <= now() - make_interval(secs => " STR(AUDIT_GAP_GRACE_S) "),"
              " checkpoint_version,"
              " checkpoint_at IS NULL OR checkpoint_at <= now() - make_interval(secs => $1::int)"
              " FROM audit_chain_state FOR UPDATE",
              1, vals, &st);
    }
    if (!r)
        goto out;
    if (PQntuples(r) != 1) {
        PQclear(r);
        log_emit(LOG_ERROR, "audit chain: audit_chain_state has no row; sealing stopped", NULL);
        st = DB_ERROR;
        goto out;
    }
    b.main_id = get_i64(r, 0, 0);
    b.head_id = get_i64(r, 0, 1);
    if (!get_hex(r, 0, 2, b.head_hash, AUDIT_HASH_LEN))
        memset(b.head_hash, 0, AUDIT_HASH_LEN);
    b.chain_length = get_i64(r, 0, 3);
    seen_null = PQgetisnull(r, 0, 4) || PQgetisnull(r, 0, 5);
    seen_upto = get_i64(r, 0, 4);
    matured = !seen_null && !strcmp(PQgetvalue(r, 0, 5), "t");
    cp_version_null = PQgetisnull(r, 0, 6);
    cp_version = (uint32_t)get_i64(r, 0, 6);
    sc->not_due = PQntuples(r) == 1 && strcmp(PQgetvalue(r, 0, 7), "t") != 0 && !sc->force;
    PQclear(r);
    if (sc->not_due) { /* sealed and checkpointed less than interval_s ago */
        st = DB_OK;
        goto out;
    }

    /* Rows that committed after their id was skipped: sealed at the head. */
    snprintf(smain, sizeof(smain), "%" PRId64, b.main_id);
    {
        const char *vals[1] = {smain};
        r = q(c,
              "SELECT " ROW_COLS " FROM audit_gaps g JOIN audit_log a ON a.id BETWEEN g.lo AND g.hi"
              " WHERE g.skipped_at > now() - make_interval(secs => " STR(AUDIT_LATE_WINDOW_S) ")"
              " AND a.hash IS NULL AND a.id <= $1 ORDER BY a.id LIMIT " STR(LATE_MAX),
              1, vals, &st);
    }
    if (!r)
        goto out;
    for (int i = 0; i < PQntuples(r); i++) {
        audit_row row;
        char prev[24];
        row_from(r, i, &row, false);
        snprintf(prev, sizeof(prev), "%" PRId64, b.head_id);
        pgarray_add_int(&b.late_ids, (long)row.id);
        pgarray_add(&b.late_prevs, b.head_id ? prev : NULL);
        if (seal_one(&b, &row) != 0)
            oom = true;
        sc->s.late++;
        log_emit(LOG_INFO, "audit chain: row committed after its id was skipped; sealed late",
                 "{s:I,s:I}", "id", (json_int_t)row.id, "after", (json_int_t)strtoll(prev, NULL, 10));
    }
    PQclear(r);

    /* Committed rows in id order. */
    while (!stop && !oom && sc->s.sealed < SEAL_MAX_ROWS) {
        const char *vals[1] = {smain};
        int nrows;
        snprintf(smain, sizeof(smain), "%" PRId64, b.main_id);
        r = q(c,
              "SELECT " ROW_COLS ", a.hash IS NOT NULL FROM audit_log a WHERE a.id > $1"
              " ORDER BY a.id LIMIT " STR(SEAL_BATCH),
              1, vals, &st);
        if (!r)
            goto out;
        nrows = PQntuples(r);
        for (int i = 0; i < nrows && !stop; i++) {
            audit_row row;
            row_from(r, i, &row, false);
            if (!strcmp(PQgetvalue(r, i, 6), "t")) {
                sc->inconsistent = true;
                log_emit(LOG_ERROR,
                         "audit chain: a row past the sealer's position is already sealed;"
                         " sealing stopped (run kmsctl audit verify)",
                         "{s:I,s:I}", "id", (json_int_t)row.id, "main_id", (json_int_t)b.main_id);
                stop = true;
                break;
            }
            if (row.id != b.main_id + 1 && matured && seen_upto > b.main_id) {
                /* Missing since before the matured watermark: gone for good. */
                int64_t hi_id = row.id - 1 < seen_upto ? row.id - 1 : seen_upto;
                char lo[24], hi[24];
                snprintf(lo, sizeof(lo), "%" PRId64, b.main_id + 1);
                snprintf(hi, sizeof(hi), "%" PRId64, hi_id);
                pgarray_add(&b.gap_lo, lo);
                pgarray_add(&b.gap_hi, hi);
                sc->s.skipped_ids += hi_id - b.main_id;
                log_emit(LOG_INFO, "audit chain: ids missing too long; skipped", "{s:I,s:I}",
                         "from", (json_int_t)(b.main_id + 1), "to", (json_int_t)hi_id);
                b.main_id = hi_id;
            }
            if (row.id != b.main_id + 1) { /* in flight, or not missing long enough */
                stop = true;
                break;
            }
            if (seal_one(&b, &row) != 0) {
                oom = true;
                break;
            }
            b.main_id = row.id;
            sc->s.sealed++;
        }
        PQclear(r);
        if (nrows < SEAL_BATCH)
            break;
    }
    sc->s.sealed += sc->s.late;
    if (oom) {
        st = DB_ERROR;
        log_emit(LOG_ERROR, "audit chain: out of memory while sealing", NULL);
        goto out;
    }

    if (sc->s.sealed > 0) {
        const char *vals[5] = {lit(&b.ids, &oom), lit(&b.prevs, &oom), lit(&b.hashes, &oom),
                               lit(&b.at_us, &oom), lit(&b.details, &oom)};
        if (oom) {
            st = DB_ERROR;
            goto out;
        }
        /* The hashed renderings are stored with the hash: verification
         * hashes them, not a later rendering of the columns. */
        r = q(c,
              "UPDATE audit_log a SET prev_hash = decode(u.p, 'hex'), hash = decode(u.h, 'hex'),"
              " hashed_at_us = u.t, hashed_detail = u.d, sealed_at = now()"
              " FROM unnest($1::bigint[], $2::text[], $3::text[], $4::bigint[], $5::text[])"
              " AS u(id, p, h, t, d) WHERE a.id = u.id",
              5, vals, &st);
        if (!r)
            goto out;
        if (strtoll(PQcmdTuples(r), NULL, 10) != sc->s.sealed) {
            PQclear(r);
            log_emit(LOG_ERROR, "audit chain: rows vanished while sealing; will retry", NULL);
            st = DB_RETRY;
            goto out;
        }
        PQclear(r);
    }
    if (sc->s.late > 0) {
        const char *vals[2] = {lit(&b.late_ids, &oom), lit(&b.late_prevs, &oom)};
        if (oom) {
            st = DB_ERROR;
            goto out;
        }
        r = q(c,
              "INSERT INTO audit_late (id, chain_prev)"
              " SELECT * FROM unnest($1::bigint[], $2::bigint[])",
              2, vals, &st);
        PQclear(r);
        if (!r)
            goto out;
    }
    if (sc->s.skipped_ids > 0) {
        const char *vals[2] = {lit(&b.gap_lo, &oom), lit(&b.gap_hi, &oom)};
        if (oom) {
            st = DB_ERROR;
            goto out;
        }
        r = q(c, "INSERT INTO audit_gaps (lo, hi) SELECT * FROM unnest($1::bigint[], $2::bigint[])",
              2, vals, &st);
        PQclear(r);
        if (!r)
            goto out;
    }
    /* A new watermark once the old one is used up. */
    if (seen_null || (matured && b.main_id >= seen_upto)) {
        /* clock_timestamp(), not now(): read after this statement's snapshot. */
        r = q(c, "SELECT coalesce(max(id), 0), clock_timestamp() FROM audit_log", 0, NULL, &st);
        if (!r)
            goto out;
        seen_upto = get_i64(r, 0, 0);
        snprintf(seen_at, sizeof(seen_at), "%s", PQgetvalue(r, 0, 1));
        refresh = true;
        PQclear(r);
    }
    /* A checkpoint when the chain grew, or to re-anchor the head under a
     * newly active master key (older versions may be destroyed later). */
    if (b.chain_length > 0 &&
        (sc->s.sealed > 0 || cp_version_null || cp_version != keywrap_active(sc->k->kw))) {
        st = write_checkpoint(c, sc, &b);
        if (st != DB_OK)
            goto out;
        cp_version = keywrap_active(sc->k->kw);
        cp_version_null = false;
    }
    if (sc->s.sealed > 0 || sc->s.checkpoints > 0 || refresh) {
        char sm[24], shid[24], slen[24], sgap[24], sver[16], hexhead[65];
        snprintf(sm, sizeof(sm), "%" PRId64, b.main_id);
        snprintf(shid, sizeof(shid), "%" PRId64, b.head_id);
        snprintf(slen, sizeof(slen), "%" PRId64, b.chain_length);
        snprintf(sgap, sizeof(sgap), "%" PRId64, seen_upto);
        snprintf(sver, sizeof(sver), "%u", cp_version);
        qkms_hex_encode(b.head_hash, AUDIT_HASH_LEN, hexhead);
        const char *vals[8] = {sm,
                               b.head_id ? shid : NULL,
                               b.head_id ? hexhead : NULL,
                               slen,
                               sgap,
                               refresh ? seen_at : NULL,
                               cp_version_null ? NULL : sver,
                               sc->s.checkpoints > 0 ? "t" : "f"};
        r = q(c,
              "UPDATE audit_chain_state SET main_id = $1, head_id = $2, head_hash = decode($3, 'hex'),"
              " chain_length = $4, gap_seen_upto = $5,"
              " gap_seen_at = coalesce($6::timestamptz, gap_seen_at),"
              " checkpoint_version = $7, updated_at = now(),"
              " checkpoint_at = CASE WHEN $8::boolean THEN now() ELSE checkpoint_at END",
              8, vals, &st);
        PQclear(r);
        if (!r)
            goto out;
    }
    st = DB_OK;
out:
    batch_free(&b);
    return st;
}

int audit_chain_seal(qk_svc *k, audit_seal_stats *stats)
{
    seal_ctx sc;
    audit_seal_stats total;
    db_status st;
    memset(&sc, 0, sizeof(sc));
    memset(&total, 0, sizeof(total));
    sc.k = k;
    sc.interval_s = k->cfg->maintenance_interval < AUDIT_SEAL_INTERVAL_S
                        ? k->cfg->maintenance_interval
                        : AUDIT_SEAL_INTERVAL_S;
    for (int pass = 0; pass < AUDIT_SEAL_MAX_PASSES; pass++) {
        sc.force = pass > 0;
        st = db_tx(k->db, seal_tx, &sc);
        if (st != DB_OK) {
            if (sc.token_rv != CKR_OK)
                log_emit(LOG_WARN,
                         "audit chain: cannot MAC a checkpoint; nothing sealed, will retry",
                         "{s:s}", "error", p11_rv_name(sc.token_rv));
            else
                log_emit(LOG_WARN, "audit chain: sealing pass failed; will retry", "{s:s}",
                         "error", db_status_name(st));
            if (stats)
                *stats = total;
            return -1;
        }
        total.sealed += sc.s.sealed;
        total.late += sc.s.late;
        total.skipped_ids += sc.s.skipped_ids;
        total.checkpoints += sc.s.checkpoints;
        total.locked_out = sc.s.locked_out;
        if (sc.s.sealed > 0)
            log_emit(LOG_DEBUG, "audit rows sealed", "{s:I,s:I}", "sealed",
                     (json_int_t)sc.s.sealed, "checkpoints", (json_int_t)sc.s.checkpoints);
        /* Go on at once only while behind (a pass filled up). */
        if (sc.inconsistent || sc.s.sealed - sc.s.late < SEAL_MAX_ROWS)
            break;
    }
    if (stats)
        *stats = total;
    return sc.inconsistent ? -1 : 0;
}

/* ---- verification against the database and the token ------------------------- */

typedef struct {
    qk_svc *k;
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
    char hex[65], sid[24];
    const char *vals[2] = {hex, sid};
    PGresult *r;
    qkms_hex_encode(hash, AUDIT_HASH_LEN, hex);
    snprintf(sid, sizeof(sid), "%" PRId64, not_id);
    r = q(vc->c, "SELECT id FROM audit_log WHERE hash = decode($1, 'hex') AND id <> $2 LIMIT 1", 2,
          vals, &vc->st);
    if (!r)
        return -1;
    int rc = PQntuples(r) > 0;
    if (rc)
        *found = get_i64(r, 0, 0);
    PQclear(r);
    return rc;
}

static int v_gaps_between(void *arg, int64_t lo, int64_t hi, audit_range **out)
{
    verify_ctx *vc = arg;
    char slo[24], shi[24];
    const char *vals[2] = {slo, shi};
    PGresult *r;
    int n;
    snprintf(slo, sizeof(slo), "%" PRId64, lo);
    snprintf(shi, sizeof(shi), "%" PRId64, hi);
    r = q(vc->c, "SELECT lo, hi FROM audit_gaps WHERE hi >= $1 AND lo <= $2 ORDER BY lo", 2, vals,
          &vc->st);
    if (!r)
        return -1;
    n = PQntuples(r);
    *out = calloc(n ? (size_t)n : 1, sizeof(audit_range));
    if (!*out) {
        PQclear(r);
        return -1;
    }
    for (int i = 0; i < n; i++) {
        (*out)[i].lo = get_i64(r, i, 0);
        (*out)[i].hi = get_i64(r, i, 1);
    }
    PQclear(r);
    return n;
}

static int v_in_recent_gap(void *arg, int64_t id)
{
    verify_ctx *vc = arg;
    char sid[24];
    const char *vals[1] = {sid};
    PGresult *r;
    snprintf(sid, sizeof(sid), "%" PRId64, id);
    r = q(vc->c,
          "SELECT 1 FROM (SELECT hi, skipped_at FROM audit_gaps WHERE lo <= $1 ORDER BY lo DESC"
          " LIMIT 1) g WHERE g.hi >= $1"
          " AND g.skipped_at > now() - make_interval(secs => " STR(AUDIT_LATE_WINDOW_S) ")",
          1, vals, &vc->st);
    if (!r)
        return -1;
    int rc = PQntuples(r) > 0;
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
        char after[24];
        const char *vals[1] = {after};
        if (vc->cp_end)
            return 0;
        snprintf(after, sizeof(after), "%" PRId64, vc->cp_after);
        vc->cps = q(vc->c,
                    "SELECT id, last_audit_id, chain_length, encode(head_hash, 'hex'), master_version,"
                    " encode(iv, 'hex'), encode(mac, 'hex'), (extract(epoch FROM at) * 1000000)::bigint"
                    " FROM audit_checkpoints WHERE id > $1 ORDER BY id LIMIT " STR(CP_PAGE),
                    1, vals, &vc->st);
        if (!vc->cps)
            return -1;
        vc->cp_i = 0;
        if (PQntuples(vc->cps) == 0) {
            vc->cp_end = true;
            return 0;
        }
    }
    {
        PGresult *r = vc->cps;
        int i = vc->cp_i++;
        memset(cp, 0, sizeof(*cp));
        cp->id = get_i64(r, i, 0);
        cp->last_audit_id = get_i64(r, i, 1);
        cp->chain_length = get_i64(r, i, 2);
        /* Malformed values leave zeros: the MAC then fails. */
        get_hex(r, i, 3, cp->head_hash, AUDIT_HASH_LEN);
        cp->master_version = (uint32_t)get_i64(r, i, 4);
        get_hex(r, i, 5, cp->iv, sizeof(cp->iv));
        get_hex(r, i, 6, cp->mac, sizeof(cp->mac));
        cp->at_us = get_i64(r, i, 7);
        vc->cp_after = cp->id;
    }
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
    rv = keywrap_mac_verify(vc->k->kw, cp->master_version, cp->iv, msg, sizeof(msg), cp->mac);
    if (rv == CKR_OK)
        return 1;
    if (rv == CKR_SIGNATURE_INVALID)
        return 0;
    if (rv == CKR_KEY_HANDLE_INVALID)
        return 2;
    vc->rv = rv;
    return -1;
}

/* Every recorded gap with ids still missing: counted in full, the newest
 * AUDIT_GAPS_LISTED listed in ascending order. 0, or -1 (vc->st set). */
static int load_gaps(verify_ctx *vc, audit_verify_result *out)
{
    PGresult *r = q(vc->c,
                    "WITH g AS (SELECT lo, hi, (extract(epoch FROM skipped_at) * 1000000)::bigint"
                    " AS at_us, (hi - lo + 1) - (SELECT count(*) FROM audit_log a"
                    " WHERE a.id BETWEEN audit_gaps.lo AND audit_gaps.hi) AS missing"
                    " FROM audit_gaps)"
                    " SELECT lo, hi, missing, at_us, count(*) OVER (), sum(missing) OVER ()"
                    " FROM g WHERE missing > 0 ORDER BY lo DESC LIMIT " STR(AUDIT_GAPS_LISTED),
                    0, NULL, &vc->st);
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
        out->gap_count = get_i64(r, 0, 4);
        out->gap_ids = get_i64(r, 0, 5);
    }
    for (int i = 0; i < n; i++) {
        audit_gap *g = &out->gaps[n - 1 - i];
        g->lo = get_i64(r, i, 0);
        g->hi = get_i64(r, i, 1);
        g->missing = get_i64(r, i, 2);
        g->skipped_at_us = get_i64(r, i, 3);
    }
    out->ngaps = (size_t)n;
    PQclear(r);
    return 0;
}

int audit_chain_verify(qk_svc *k, audit_verify_result *out, db_status *st, CK_RV *rv)
{
    verify_ctx vc;
    audit_verify_ops ops = {.hash_elsewhere = v_hash_elsewhere,
                            .gaps_between = v_gaps_between,
                            .in_recent_gap = v_in_recent_gap,
                            .next_checkpoint = v_next_checkpoint,
                            .checkpoint_mac = v_checkpoint_mac};
    audit_verifier *v = NULL;
    int64_t *late_id = NULL, *late_prev = NULL, main_id = 0, after = 0;
    PGresult *r;
    int rc = -1, nlate = 0;

    memset(&vc, 0, sizeof(vc));
    memset(out, 0, sizeof(*out));
    vc.k = k;
    vc.st = DB_OK;
    vc.rv = CKR_OK;
    ops.arg = &vc;
    vc.c = db_acquire(k->db, &vc.st);
    if (!vc.c)
        goto done;
    /* One snapshot for the whole walk, so the sealer working meanwhile does
     * not show up as a change. */
    vc.st = db_command(vc.c, "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY");
    if (vc.st != DB_OK)
        goto done;
    r = q(vc.c, "SET LOCAL client_encoding = 'UTF8'", 0, NULL, &vc.st);
    PQclear(r);
    if (!r)
        goto done;
    r = q(vc.c, "SELECT main_id FROM audit_chain_state", 0, NULL, &vc.st);
    if (!r)
        goto done;
    main_id = PQntuples(r) ? get_i64(r, 0, 0) : 0;
    PQclear(r);
    r = q(vc.c, "SELECT id, chain_prev FROM audit_late ORDER BY id", 0, NULL, &vc.st);
    if (!r)
        goto done;
    nlate = PQntuples(r);
    late_id = calloc(nlate ? (size_t)nlate : 1, sizeof(int64_t));
    late_prev = calloc(nlate ? (size_t)nlate : 1, sizeof(int64_t));
    if (late_id && late_prev)
        for (int i = 0; i < nlate; i++) {
            late_id[i] = get_i64(r, i, 0);
            late_prev[i] = get_i64(r, i, 1);
        }
    PQclear(r);
    if (!late_id || !late_prev || !(v = audit_verifier_new(&ops, main_id, late_id, late_prev,
                                                            (size_t)nlate))) {
        vc.st = DB_ERROR;
        goto done;
    }
    for (;;) {
        char safter[24];
        const char *vals[1] = {safter};
        int n, stop = 0;
        snprintf(safter, sizeof(safter), "%" PRId64, after);
        r = q(vc.c,
              "SELECT " ROW_COLS ", encode(a.prev_hash, 'hex'), encode(a.hash, 'hex'),"
              " a.sealed_at IS NOT NULL" STORED_COLS " FROM audit_log a WHERE a.id > $1 ORDER BY a.id"
              " LIMIT " STR(VERIFY_PAGE),
              1, vals, &vc.st);
        if (!r)
            goto done;
        n = PQntuples(r);
        for (int i = 0; i < n && !stop; i++) {
            audit_row row;
            row_from(r, i, &row, true);
            after = row.id;
            stop = audit_verifier_row(v, &row);
        }
        PQclear(r);
        if (stop < 0)
            goto done;
        if (stop || n < VERIFY_PAGE)
            break;
    }
    if (audit_verifier_finish(v, out) != 0 || load_gaps(&vc, out) != 0)
        goto done;
    rc = 0;
done:
    if (vc.cps)
        PQclear(vc.cps);
    if (vc.c) {
        if (PQstatus(db_pg(vc.c)) == CONNECTION_OK)
            db_command(vc.c, "COMMIT");
        db_release(k->db, vc.c);
    }
    if (rc != 0) {
        free(out->gaps);
        out->gaps = NULL;
        out->ngaps = 0;
    }
    if (rc != 0 && vc.st == DB_OK && vc.rv == CKR_OK)
        vc.st = DB_ERROR;
    *st = vc.st;
    *rv = vc.rv;
    audit_verifier_free(v);
    free(late_id);
    free(late_prev);
    return rc;
}
