/*
 * audit_seal — the sealer (audit_seal.h). A pass is one transaction of
 * named steps: take the sealer lock, read where the chain stands, take the
 * late rows and then the committed rows in id order (skipping ids missing
 * too long), write their hashes, renew the gap watermark, write a
 * checkpoint, and record where the chain stands now. Everything a step
 * decides lives in a seal_batch, so the transaction can be run again from
 * scratch (db_tx retries it).
 */
#include "service/audit_seal.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/rand.h>

#include "hexutil.h"
#include "log.h"
#include "service/audit_canon.h"
#include "service/audit_rows.h"
#include "store/pgarray.h"
#include "store/queries.h"

#define SEAL_BATCH 2000     /* rows read per statement */
#define SEAL_MAX_ROWS 20000 /* rows sealed per pass (one transaction) */
#define LATE_MAX 1000       /* late rows sealed per pass */

typedef struct {
    qk_svc *s;
    int interval_s; /* seal only when the newest checkpoint is this old ... */
    bool force;     /* ... unless the last pass was full */
    audit_seal_stats st; /* this pass */
    CK_RV token_rv;
    bool inconsistent, not_due;
} seal_ctx;

/* One pass: where the chain stands, and what the pass adds to it. */
typedef struct {
    int64_t main_id, head_id, chain_length;
    uint8_t head_hash[AUDIT_HASH_LEN];
    /* Gap watermark: every id <= seen_upto was handed out before seen_at,
     * so once seen_at is AUDIT_GAP_GRACE_S old ("matured"), such an id that
     * is still not visible has been missing at least that long. */
    int64_t seen_upto;
    bool seen_null, matured, refresh;
    char seen_at[64];
    uint32_t cp_version; /* of the newest checkpoint ... */
    bool cp_version_null; /* ... if there is one */

    pgarray ids, prevs, hashes;   /* rows to seal */
    pgarray at_us, details;       /* ... and the rendered values their hash covers */
    pgarray late_ids, late_prevs; /* audit_late rows */
    pgarray gap_lo, gap_hi;       /* audit_gaps rows */
    bool oom;
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

static const char *lit(seal_batch *b, pgarray *a)
{
    const char *s = pgarray_finish(a);
    if (!s)
        b->oom = true;
    return s ? s : "{}";
}

/* ---- the steps ---------------------------------------------------------------- */

/* The sealer's transaction-level lock: another instance holding it means
 * it is sealing now (sc->st.locked_out; nothing to do here). */
static db_status lock_sealer(db_conn *c, seal_ctx *sc)
{
    db_status st;
    PGresult *r;
    if ((st = qt_command(c, QT_UTF8_LOCAL)) != DB_OK)
        return st;
    if (!(r = qt_exec(c, QT_AUDIT_SEAL_TRY_LOCK, 0, NULL, &st)))
        return st;
    sc->st.locked_out = strcmp(PQgetvalue(r, 0, 0), "t") != 0;
    PQclear(r);
    return DB_OK;
}

/* Where the chain stands (its row locked until commit), and whether a pass
 * is due (sc->not_due). */
static db_status read_state(db_conn *c, seal_ctx *sc, seal_batch *b)
{
    audit_i64_text secs = audit_i64_param(sc->interval_s), grace = audit_i64_param(AUDIT_GAP_GRACE_S);
    const char *vals[2] = {secs.s, grace.s};
    db_status st;
    PGresult *r = qt_exec(c, QT_AUDIT_SEAL_STATE, 2, vals, &st);
    if (!r)
        return st;
    if (PQntuples(r) != 1) {
        PQclear(r);
        log_emit(LOG_ERROR, "audit chain: audit_chain_state has no row; sealing stopped", NULL);
        return DB_ERROR;
    }
    b->main_id = audit_get_i64(r, 0, 0);
    b->head_id = audit_get_i64(r, 0, 1);
    if (!audit_get_hex(r, 0, 2, b->head_hash, AUDIT_HASH_LEN))
        memset(b->head_hash, 0, AUDIT_HASH_LEN);
    b->chain_length = audit_get_i64(r, 0, 3);
    b->seen_null = PQgetisnull(r, 0, 4) || PQgetisnull(r, 0, 5);
    b->seen_upto = audit_get_i64(r, 0, 4);
    b->matured = !b->seen_null && !strcmp(PQgetvalue(r, 0, 5), "t");
    b->cp_version_null = PQgetisnull(r, 0, 6);
    b->cp_version = (uint32_t)audit_get_i64(r, 0, 6);
    /* Sealed and checkpointed less than interval_s ago. */
    sc->not_due = strcmp(PQgetvalue(r, 0, 7), "t") != 0 && !sc->force;
    PQclear(r);
    return DB_OK;
}

/* Rows that committed after their id was skipped: sealed at the head. */
static db_status take_late_rows(db_conn *c, seal_ctx *sc, seal_batch *b)
{
    audit_i64_text smain = audit_i64_param(b->main_id),
                   window = audit_i64_param(AUDIT_LATE_WINDOW_S), max = audit_i64_param(LATE_MAX);
    const char *vals[3] = {smain.s, window.s, max.s};
    db_status st;
    PGresult *r = qt_exec(c, QT_AUDIT_LATE_ROWS, 3, vals, &st);
    if (!r)
        return st;
    for (int i = 0; i < PQntuples(r); i++) {
        audit_row row;
        audit_i64_text prev = audit_i64_param(b->head_id);
        int64_t after = b->head_id;
        audit_row_from(r, i, &row, false);
        pgarray_add_int(&b->late_ids, (long)row.id);
        pgarray_add(&b->late_prevs, b->head_id ? prev.s : NULL);
        if (seal_one(b, &row) != 0)
            b->oom = true;
        sc->st.late++;
        log_emit(LOG_INFO, "audit chain: row committed after its id was skipped; sealed late",
                 "{s:I,s:I}", "id", (json_int_t)row.id, "after", (json_int_t)after);
    }
    PQclear(r);
    return DB_OK;
}

typedef enum { TAKE_NEXT, TAKE_STOP } take_result;

/* One committed row past the sealer's position: seal it, skipping first
 * the ids before it that have been missing too long. */
static take_result take_row(seal_ctx *sc, seal_batch *b, const audit_row *row, bool sealed)
{
    if (sealed) {
        sc->inconsistent = true;
        log_emit(LOG_ERROR,
                 "audit chain: a row past the sealer's position is already sealed;"
                 " sealing stopped (run kmsctl audit verify)",
                 "{s:I,s:I}", "id", (json_int_t)row->id, "main_id", (json_int_t)b->main_id);
        return TAKE_STOP;
    }
    if (row->id != b->main_id + 1 && b->matured && b->seen_upto > b->main_id) {
        /* Missing since before the matured watermark: gone for good. */
        int64_t hi = row->id - 1 < b->seen_upto ? row->id - 1 : b->seen_upto;
        audit_i64_text slo = audit_i64_param(b->main_id + 1), shi = audit_i64_param(hi);
        pgarray_add(&b->gap_lo, slo.s);
        pgarray_add(&b->gap_hi, shi.s);
        sc->st.skipped_ids += hi - b->main_id;
        log_emit(LOG_INFO, "audit chain: ids missing too long; skipped", "{s:I,s:I}", "from",
                 (json_int_t)(b->main_id + 1), "to", (json_int_t)hi);
        b->main_id = hi;
    }
    if (row->id != b->main_id + 1) /* in flight, or not missing long enough */
        return TAKE_STOP;
    if (seal_one(b, row) != 0) {
        b->oom = true;
        return TAKE_STOP;
    }
    b->main_id = row->id;
    sc->st.sealed++;
    return TAKE_NEXT;
}

/* Committed rows in id order, up to SEAL_MAX_ROWS, until an id is missing. */
static db_status take_committed_rows(db_conn *c, seal_ctx *sc, seal_batch *b)
{
    audit_i64_text page = audit_i64_param(SEAL_BATCH);
    bool stop = false;
    while (!stop && !b->oom && sc->st.sealed < SEAL_MAX_ROWS) {
        audit_i64_text smain = audit_i64_param(b->main_id);
        const char *vals[2] = {smain.s, page.s};
        db_status st;
        PGresult *r = qt_exec(c, QT_AUDIT_ROWS_AFTER, 2, vals, &st);
        int nrows;
        if (!r)
            return st;
        nrows = PQntuples(r);
        for (int i = 0; i < nrows && !stop; i++) {
            audit_row row;
            audit_row_from(r, i, &row, false);
            stop = take_row(sc, b, &row, !strcmp(PQgetvalue(r, i, 6), "t")) == TAKE_STOP;
        }
        PQclear(r);
        if (nrows < SEAL_BATCH)
            break;
    }
    return DB_OK;
}

/* The hashes, with the renderings they cover (verification hashes those,
 * not a later rendering of the columns), and the late rows and gaps. */
static db_status write_rows(db_conn *c, seal_ctx *sc, seal_batch *b)
{
    db_status st = DB_OK;
    PGresult *r;
    if (sc->st.sealed > 0) {
        const char *vals[5] = {lit(b, &b->ids), lit(b, &b->prevs), lit(b, &b->hashes),
                               lit(b, &b->at_us), lit(b, &b->details)};
        if (b->oom)
            return DB_ERROR;
        if (!(r = qt_exec(c, QT_AUDIT_SEAL_ROWS, 5, vals, &st)))
            return st;
        if (strtoll(PQcmdTuples(r), NULL, 10) != sc->st.sealed) {
            PQclear(r);
            log_emit(LOG_ERROR, "audit chain: rows vanished while sealing; will retry", NULL);
            return DB_RETRY;
        }
        PQclear(r);
    }
    if (sc->st.late > 0) {
        const char *vals[2] = {lit(b, &b->late_ids), lit(b, &b->late_prevs)};
        if (b->oom)
            return DB_ERROR;
        if (!(r = qt_exec(c, QT_AUDIT_LATE_INSERT, 2, vals, &st)))
            return st;
        PQclear(r);
    }
    if (sc->st.skipped_ids > 0) {
        const char *vals[2] = {lit(b, &b->gap_lo), lit(b, &b->gap_hi)};
        if (b->oom)
            return DB_ERROR;
        if (!(r = qt_exec(c, QT_AUDIT_GAPS_INSERT, 2, vals, &st)))
            return st;
        PQclear(r);
    }
    return DB_OK;
}

/* A new watermark once the old one is used up. */
static db_status renew_watermark(db_conn *c, seal_batch *b)
{
    db_status st;
    PGresult *r;
    if (!b->seen_null && !(b->matured && b->main_id >= b->seen_upto))
        return DB_OK;
    if (!(r = qt_exec(c, QT_AUDIT_WATERMARK, 0, NULL, &st)))
        return st;
    b->seen_upto = audit_get_i64(r, 0, 0);
    snprintf(b->seen_at, sizeof(b->seen_at), "%s", PQgetvalue(r, 0, 1));
    b->refresh = true;
    PQclear(r);
    return DB_OK;
}

/* The checkpoint message for the current head, MAC'd under the active
 * master key; the token's failure in sc->token_rv (DB_ERROR). */
static db_status mac_checkpoint(seal_ctx *sc, audit_checkpoint *cp)
{
    uint8_t msg[AUDIT_CP_MSG_LEN];
    CK_RV rv;
    if (RAND_bytes(cp->iv, sizeof(cp->iv)) != 1) {
        sc->token_rv = CKR_FUNCTION_FAILED;
        return DB_ERROR;
    }
    audit_checkpoint_msg(cp, msg);
    rv = keywrap_mac(sc->s->kw, cp->master_version, cp->iv, msg, sizeof(msg), cp->mac);
    if (rv != CKR_OK) {
        sc->token_rv = rv;
        return DB_ERROR;
    }
    return DB_OK;
}

/* Write the checkpoint for the current head under the active master key. */
static db_status write_checkpoint(db_conn *c, seal_ctx *sc, const seal_batch *b)
{
    audit_checkpoint cp;
    char hexhead[2 * AUDIT_HASH_LEN + 1], hexiv[25], hexmac[33];
    audit_i64_text sid, slast, slen, sver;
    db_status st;
    PGresult *r = NULL, *ins;

    memset(&cp, 0, sizeof(cp));
    cp.master_version = keywrap_active(sc->s->kw);
    if (cp.master_version == 0) {
        sc->token_rv = CKR_KEY_HANDLE_INVALID;
        return DB_ERROR;
    }
    if (!(r = qt_exec(c, QT_AUDIT_CHECKPOINT_NEXT, 0, NULL, &st)))
        return st;
    cp.id = audit_get_i64(r, 0, 0);
    cp.at_us = audit_get_i64(r, 0, 2);
    cp.last_audit_id = b->head_id;
    cp.chain_length = b->chain_length;
    memcpy(cp.head_hash, b->head_hash, AUDIT_HASH_LEN);
    if ((st = mac_checkpoint(sc, &cp)) != DB_OK)
        goto out;
    qkms_hex_encode(cp.head_hash, AUDIT_HASH_LEN, hexhead);
    qkms_hex_encode(cp.iv, sizeof(cp.iv), hexiv);
    qkms_hex_encode(cp.mac, sizeof(cp.mac), hexmac);
    sid = audit_i64_param(cp.id);
    slast = audit_i64_param(cp.last_audit_id);
    slen = audit_i64_param(cp.chain_length);
    sver = audit_i64_param(cp.master_version);
    {
        const char *vals[8] = {sid.s,  slast.s, slen.s, hexhead,
                               sver.s, hexiv,   hexmac, PQgetvalue(r, 0, 1)};
        ins = qt_exec(c, QT_AUDIT_CHECKPOINT_INSERT, 8, vals, &st);
    }
    if (!ins)
        goto out;
    PQclear(ins);
    sc->st.checkpoints++;
    log_emit(LOG_DEBUG, "audit checkpoint", "{s:I,s:I,s:I,s:s,s:i}", "checkpoint",
             (json_int_t)cp.id, "last_audit_id", (json_int_t)cp.last_audit_id, "chain_length",
             (json_int_t)cp.chain_length, "head_hash", hexhead, "master_version",
             (int)cp.master_version);
    st = DB_OK;
out:
    PQclear(r);
    return st;
}

/* A checkpoint when the chain grew, or to re-anchor the head under a newly
 * active master key (older versions may be destroyed later). */
static db_status checkpoint_if_due(db_conn *c, seal_ctx *sc, seal_batch *b)
{
    uint32_t active = keywrap_active(sc->s->kw);
    db_status st;
    if (b->chain_length == 0 ||
        !(sc->st.sealed > 0 || b->cp_version_null || b->cp_version != active))
        return DB_OK;
    if ((st = write_checkpoint(c, sc, b)) != DB_OK)
        return st;
    b->cp_version = keywrap_active(sc->s->kw);
    b->cp_version_null = false;
    return DB_OK;
}

/* Where the chain stands now, when anything changed. */
static db_status write_state(db_conn *c, seal_ctx *sc, const seal_batch *b)
{
    audit_i64_text sm = audit_i64_param(b->main_id), shid = audit_i64_param(b->head_id),
                   slen = audit_i64_param(b->chain_length), sgap = audit_i64_param(b->seen_upto),
                   sver = audit_i64_param(b->cp_version);
    char hexhead[2 * AUDIT_HASH_LEN + 1];
    db_status st;
    PGresult *r;
    if (sc->st.sealed == 0 && sc->st.checkpoints == 0 && !b->refresh)
        return DB_OK;
    qkms_hex_encode(b->head_hash, AUDIT_HASH_LEN, hexhead);
    {
        const char *vals[8] = {sm.s,
                               b->head_id ? shid.s : NULL,
                               b->head_id ? hexhead : NULL,
                               slen.s,
                               sgap.s,
                               b->refresh ? b->seen_at : NULL,
                               b->cp_version_null ? NULL : sver.s,
                               sc->st.checkpoints > 0 ? "t" : "f"};
        r = qt_exec(c, QT_AUDIT_STATE_UPDATE, 8, vals, &st);
    }
    if (!r)
        return st;
    PQclear(r);
    return DB_OK;
}

/* One pass: a db_tx callback, so it may run again from the start. */
static db_status seal_tx(db_conn *c, void *arg)
{
    seal_ctx *sc = arg;
    seal_batch b;
    db_status st;

    memset(&sc->st, 0, sizeof(sc->st));
    sc->token_rv = CKR_OK;
    sc->inconsistent = sc->not_due = false;
    batch_init(&b);
    if ((st = lock_sealer(c, sc)) != DB_OK || sc->st.locked_out)
        goto out; /* another instance is sealing */
    if ((st = read_state(c, sc, &b)) != DB_OK || sc->not_due)
        goto out;
    if ((st = take_late_rows(c, sc, &b)) != DB_OK ||
        (st = take_committed_rows(c, sc, &b)) != DB_OK)
        goto out;
    sc->st.sealed += sc->st.late;
    if (b.oom) {
        st = DB_ERROR;
        log_emit(LOG_ERROR, "audit chain: out of memory while sealing", NULL);
        goto out;
    }
    if ((st = write_rows(c, sc, &b)) != DB_OK || (st = renew_watermark(c, &b)) != DB_OK ||
        (st = checkpoint_if_due(c, sc, &b)) != DB_OK)
        goto out;
    st = write_state(c, sc, &b);
out:
    batch_free(&b);
    return st;
}

/* A failed pass: logged, and said in the error currency. */
static qk_kind pass_failed(const seal_ctx *sc, db_status st, qk_err *e)
{
    if (sc->token_rv != CKR_OK) {
        log_emit(LOG_WARN, "audit chain: cannot MAC a checkpoint; nothing sealed, will retry",
                 "{s:s}", "error", p11_rv_name(sc->token_rv));
        qk_fail(e, QK_UNAVAILABLE, "token_unavailable", "cannot MAC an audit checkpoint: %s",
                p11_rv_name(sc->token_rv));
        if (e)
            e->retry_after = 1;
        return QK_UNAVAILABLE;
    }
    log_emit(LOG_WARN, "audit chain: sealing pass failed; will retry", "{s:s}", "error",
             db_status_name(st));
    return db_fail(e, st);
}

qk_kind audit_chain_seal(qk_svc *s, audit_seal_stats *stats, qk_err *e)
{
    seal_ctx sc = {.s = s};
    audit_seal_stats total = {0};
    qk_kind k = QK_OK;
    db_status st;

    sc.interval_s = s->cfg->maintenance_interval < AUDIT_SEAL_INTERVAL_S
                        ? s->cfg->maintenance_interval
                        : AUDIT_SEAL_INTERVAL_S;
    for (int pass = 0; pass < AUDIT_SEAL_MAX_PASSES; pass++) {
        sc.force = pass > 0;
        if ((st = db_tx(s->db, seal_tx, &sc)) != DB_OK) {
            k = pass_failed(&sc, st, e);
            goto out;
        }
        total.sealed += sc.st.sealed;
        total.late += sc.st.late;
        total.skipped_ids += sc.st.skipped_ids;
        total.checkpoints += sc.st.checkpoints;
        total.locked_out = sc.st.locked_out;
        if (sc.st.sealed > 0)
            log_emit(LOG_DEBUG, "audit rows sealed", "{s:I,s:I}", "sealed",
                     (json_int_t)sc.st.sealed, "checkpoints", (json_int_t)sc.st.checkpoints);
        /* Go on at once only while behind (a pass filled up). */
        if (sc.inconsistent || sc.st.sealed - sc.st.late < SEAL_MAX_ROWS)
            break;
    }
    if (sc.inconsistent)
        k = qk_fail(e, QK_INTERNAL, "internal",
                    "audit chain inconsistent: a row past the sealer's position is sealed");
out:
    if (stats)
        *stats = total;
    return k;
}
