/*
 * rotation — the master key's life after start-up (rotation.h): new
 * versions (by an operator, or the wrap budget), the status view, and the
 * maintenance step that adopts other instances' versions, rewraps what is
 * still under an older one and destroys versions nothing references.
 */
#include "service/rotation.h"
#include "service/qkd.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

#include "service/audit.h"
#include "service/device_model.h"
#include "service/firmware_groups.h"
#include "service/instances.h"
#include "hexutil.h"
#include "service/keycache.h"
#include "log.h"
#include "service/master.h"
#include "store/pgjson.h"
#include "store/queries.h"
#include "service/session_id.h"
#include "service/streams.h"

#define REWRAP_BATCH "500"
#define BLOB_MAX (64 + KEYWRAP_OVERHEAD)

/* ---- rotate ---------------------------------------------------------------- */

/* Every rotation failure answers 503 "unavailable" with Retry-After: the
 * operator (or the wrap budget) tries again. */
static qk_kind rotate_fail(qk_err *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static qk_kind rotate_fail(qk_err *e, const char *fmt, ...)
{
    char msg[sizeof(e->detail)];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    qk_fail(e, QK_UNAVAILABLE, "unavailable", "%s", msg);
    if (e)
        e->retry_after = 1;
    return QK_UNAVAILABLE;
}

/* The version after the highest ever recorded (destroyed ones included). */
static qk_kind next_version(db_conn *c, uint32_t *v, qk_err *e)
{
    db_status st;
    PGresult *r = db_exec(c, Q_MASTER_MAX, 0, NULL, NULL, NULL, &st);
    if (!r)
        return rotate_fail(e, "database unavailable");
    *v = (uint32_t)strtoul(PQgetvalue(r, 0, 0), NULL, 10) + 1;
    PQclear(r);
    return QK_OK;
}

/* The end of recording new version v, whose transaction is open on c and
 * went as st says: COMMIT it, or ROLLBACK and destroy the new key again (no
 * orphan in the token). A COMMIT that got no answer keeps the key (below). */
static qk_kind finish_record(qk_svc *s, db_conn *c, db_status st, uint32_t v, const char *label,
                             qk_err *e)
{
    if (st != DB_OK) {
        db_command(c, "ROLLBACK");
        keywrap_destroy(s->kw, v);
        return rotate_fail(e, "recording %s failed: %s", label, db_status_name(st));
    }
    if ((st = db_command(c, "COMMIT")) == DB_OK)
        return QK_OK;
    /* COMMIT sent, no answer (db_io_timeout_ms): the row may well be
     * committed, and then this key is the active (or staged) master key.
     * Keep it: every instance adopts it at its next refresh if it was
     * recorded, and if it was not, the next rotation finds it by its label
     * and uses it (p11 generation looks for the label first). */
    log_emit(LOG_WARN, "master key rotation: outcome unknown, key kept in the token", "{s:s,s:s}",
             "label", label, "error", db_status_name(st));
    return rotate_fail(e, "recording %s: outcome unknown (%s); see GET /v1/admin/master", label,
                       db_status_name(st));
}

/* Record v as the active version and the active one as retired, audited,
 * in one transaction (finish_record). */
static qk_kind record_version(qk_svc *s, db_conn *c, const char *actor, uint32_t v,
                              const char *label, const uint8_t kcv[KEYWRAP_KCV_LEN],
                              char from[16], qk_err *e)
{
    char ver[16];
    const char *vals[3] = {ver, label, (const char *)kcv};
    int lens[3] = {0, 0, KEYWRAP_KCV_LEN}, fmts[3] = {0, 0, 1};
    PGresult *r;
    db_status st;

    snprintf(ver, sizeof(ver), "%u", v);
    st = db_command(c, "BEGIN");
    if (st == DB_OK && (r = db_exec(c, Q_MASTER_RETIRE_ACTIVE, 0, NULL, NULL, NULL, &st))) {
        if (PQntuples(r) > 0)
            snprintf(from, 16, "%s", PQgetvalue(r, 0, 0));
        PQclear(r);
    }
    if (st == DB_OK && (r = db_exec(c, Q_MASTER_INSERT, 3, vals, lens, fmts, &st)))
        PQclear(r);
    if (st == DB_OK)
        st = audit_append(c, actor, "master.rotated", NULL,
                          json_pack("{s:s,s:i,s:s}", "from", from, "to", (int)v, "label", label));
    return finish_record(s, c, st, v, label, e);
}

/* The live instances whose token lacks staged version ver, but skip (NULL:
 * none), added to names when not NULL: how many, or -1 when the database
 * cannot say. */
static int64_t waiting_for(db_conn *c, const char *ver, const char *skip, json_t *names)
{
    const char *vals[1] = {ver};
    db_status st;
    PGresult *r = qt_exec(c, QT_MASTER_WAITING, 1, vals, &st);
    int64_t n = 0;
    if (!r)
        return -1;
    for (int i = 0; i < PQntuples(r); i++) {
        if (skip && !strcmp(PQgetvalue(r, i, 0), skip))
            continue;
        n++;
        if (names)
            json_array_append_new(names, json_string(PQgetvalue(r, i, 0)));
    }
    PQclear(r);
    return n;
}

/* Record v as staged (rotation.h), audited with the instances it waits
 * for, in one transaction; failures as in record_version. */
static qk_kind record_staged(qk_svc *s, db_conn *c, const char *actor, uint32_t v,
                             const char *label, const uint8_t kcv[KEYWRAP_KCV_LEN], qk_err *e)
{
    char ver[16], kcvhex[2 * KEYWRAP_KCV_LEN + 1];
    const char *vals[3] = {ver, label, kcvhex};
    json_t *waiting = json_array();
    PGresult *r;
    db_status st;

    snprintf(ver, sizeof(ver), "%u", v);
    qkms_hex_encode(kcv, KEYWRAP_KCV_LEN, kcvhex);
    st = db_command(c, "BEGIN");
    if (st == DB_OK && (r = qt_exec(c, QT_MASTER_INSERT_STAGED, 3, vals, &st)))
        PQclear(r);
    /* Who it waits for: the live instances but this one (which holds it). */
    if (st == DB_OK && waiting_for(c, ver, s->instance, waiting) < 0)
        st = DB_UNAVAILABLE;
    if (st == DB_OK) {
        st = audit_append(c, actor, "master.staged", NULL,
                          json_pack("{s:i,s:s,s:O}", "version", (int)v, "label", label,
                                    "waiting_for", waiting));
    }
    json_decref(waiting);
    return finish_record(s, c, st, v, label, e);
}

/* Activate staged version v (the active one retires), audited; the caller
 * holds the master key lock. QK_OK, or QK_UNAVAILABLE. */
static qk_kind activate(qk_svc *s, db_conn *c, const char *actor, uint32_t v, const char *label,
                        bool forced, qk_err *e)
{
    char ver[16], from[16] = "";
    const char *vals[1] = {ver};
    PGresult *r;
    db_status st;
    bool activated = false;

    snprintf(ver, sizeof(ver), "%u", v);
    st = db_command(c, "BEGIN");
    if (st == DB_OK && (r = db_exec(c, Q_MASTER_RETIRE_ACTIVE, 0, NULL, NULL, NULL, &st))) {
        if (PQntuples(r) > 0)
            snprintf(from, sizeof(from), "%s", PQgetvalue(r, 0, 0));
        PQclear(r);
    }
    if (st == DB_OK && (r = qt_exec(c, QT_MASTER_ACTIVATE, 1, vals, &st))) {
        activated = PQntuples(r) == 1;
        PQclear(r);
    }
    if (st == DB_OK && activated)
        st = audit_append(c, actor, "master.rotated", NULL,
                          json_pack("{s:s,s:i,s:s,s:b}", "from", from, "to", (int)v, "label",
                                    label, "forced", forced));
    if (st == DB_OK && activated) {
        if ((st = db_command(c, "COMMIT")) == DB_OK) {
            log_emit(LOG_INFO, "staged master key version activated", "{s:s,s:s,s:s,s:b}",
                     "from", from, "to", label, "by", actor, "forced", forced);
            master_refresh(s, c); /* switch this instance at once */
            return QK_OK;
        }
        /* COMMIT sent, no answer: it may have committed; every instance
         * follows the database at its next refresh either way. */
        return rotate_fail(e, "activating %s: outcome unknown (%s); see GET /v1/admin/master",
                           label, db_status_name(st));
    }
    db_command(c, "ROLLBACK");
    return rotate_fail(e, "activating %s failed: %s", label,
                       st == DB_OK ? "it is no longer staged" : db_status_name(st));
}

/* The staged version (0 if none), its label and how long it has waited
 * (age_s may be NULL); -1 when the database cannot say. */
static int staged_version(db_conn *c, uint32_t *v, char *label, size_t len, int64_t *age_s)
{
    db_status st;
    PGresult *r = qt_exec(c, QT_MASTER_STAGED, 0, NULL, &st);
    *v = 0;
    if (!r)
        return -1;
    if (PQntuples(r) == 1) {
        *v = (uint32_t)strtoul(PQgetvalue(r, 0, 0), NULL, 10);
        snprintf(label, len, "%s", PQgetvalue(r, 0, 1));
        if (age_s)
            *age_s = strtoll(PQgetvalue(r, 0, 2), NULL, 10);
    }
    PQclear(r);
    return 0;
}

/* A count query's answer, or -1. */
static int64_t count_of(db_conn *c, text_query_id q, int n, const char *const *vals)
{
    db_status st;
    PGresult *r = qt_exec(c, q, n, vals, &st);
    int64_t v = r && PQntuples(r) == 1 ? strtoll(PQgetvalue(r, 0, 0), NULL, 10) : -1;
    PQclear(r);
    return v;
}

/* How many live instances, other than this one, share the database; -1
 * when the database cannot say. */
static long other_instances(qk_svc *s, db_conn *c)
{
    const char *vals[1] = {s->instance};
    return (long)count_of(c, QT_INSTANCE_OTHERS_LIVE, 1, vals);
}

qk_kind rotation_rotate(qk_svc *s, const char *actor, bool force, qk_err *e)
{
    db_status st;
    db_conn *c = db_acquire(s->db, &st);
    uint8_t kcv[KEYWRAP_KCV_LEN];
    char label[128], from[16] = "";
    uint32_t v = 0, staged = 0;
    long others;
    CK_RV rv;
    qk_kind k;

    if (!c)
        return rotate_fail(e, "database unavailable");
    if (qt_command(c, QT_MASTER_LOCK) != DB_OK) {
        db_release(s->db, c);
        return rotate_fail(e, "cannot take the master key lock");
    }
    if (staged_version(c, &staged, label, sizeof(label), NULL) != 0) {
        k = rotate_fail(e, "database unavailable");
        goto out;
    }
    if (staged) {
        /* One rotation at a time: the staged one finishes first. */
        if (force) {
            /* Never a version no token here holds: from an instance that
             * lacks it, force would make a key no instance can use. */
            master_refresh(s, c);
            if (!keywrap_has(s->kw, staged))
                k = qk_fail(e, QK_CONFLICT, "staged_not_held",
                            "this instance's token does not hold staged master key version %u; "
                            "force it from an instance that does (GET "
                            "/v1/admin/master/instances)", staged);
            else
                k = activate(s, c, actor, staged, label, true, e);
        } else
            k = qk_fail(e, QK_CONFLICT, "rotation_pending",
                        "master key version %u is staged and waits for every instance to hold "
                        "it (GET /v1/admin/master/instances); rotate with force to activate it "
                        "now", staged);
        goto out;
    }
    if ((others = other_instances(s, c)) < 0) {
        k = rotate_fail(e, "database unavailable");
        goto out;
    }
    if ((k = next_version(c, &v, e)) != QK_OK)
        goto out;
    keywrap_label(s->kw, v, label, sizeof(label));
    /* The token first: a database row must never name a key that does not exist. */
    rv = keywrap_create(s->kw, v);
    if (rv == CKR_OK)
        rv = keywrap_kcv(s->kw, v, kcv);
    if (rv != CKR_OK) {
        k = rotate_fail(e, "creating %s in the token failed: %s", label, p11_rv_name(rv));
        goto out;
    }
    if (others > 0 && !force) {
        /* Other instances may lack it: staged until each holds it. */
        if ((k = record_staged(s, c, actor, v, label, kcv, e)) != QK_OK)
            goto out;
        keywrap_expect_kcv(s->kw, v, kcv);
        instances_report(&s->self, s->kw, c); /* this one holds it now */
        log_emit(LOG_INFO, "master key version staged until every instance holds it",
                 "{s:s,s:s,s:i}", "label", label, "by", actor, "other_instances", (int)others);
        goto out;
    }
    if ((k = record_version(s, c, actor, v, label, kcv, from, e)) != QK_OK)
        goto out;
    keywrap_expect_kcv(s->kw, v, kcv);
    keywrap_set_active(s->kw, v);
    log_emit(LOG_INFO, "master key rotated", "{s:s,s:s,s:s}", "from", from, "to", label, "by", actor);
out:
    qt_command(c, QT_MASTER_UNLOCK);
    db_release(s->db, c);
    return k;
}

int rotation_stage_pass(qk_svc *s, rotation_stage_result *out)
{
    db_status st;
    db_conn *c = db_acquire(s->db, &st);
    char label[128], ver[16];
    rotation_stage_result res = {-1, -1, -1};
    uint32_t staged = 0;
    qk_err e;
    int rc = -1;

    if (!c)
        goto done;
    master_refresh(s, c); /* load what the token got since */
    if (instances_report(&s->self, s->kw, c) != 0)
        goto release;
    res.live_instances = count_of(c, QT_INSTANCES_LIVE, 0, NULL);
    {
        int64_t age = 0;
        if (staged_version(c, &staged, label, sizeof(label), &age) != 0)
            goto release;
        res.staged_s = age;
    }
    rc = 0;
    if (!staged) {
        res.staged_waiting = 0;
        goto release;
    }
    snprintf(ver, sizeof(ver), "%u", staged);
    res.staged_waiting = waiting_for(c, ver, NULL, NULL);
    if (res.staged_waiting != 0)
        goto release;
    /* Checked again under the lock: another instance may have activated
     * it, or one that lacks it may have just reported. */
    if (qt_command(c, QT_MASTER_LOCK) != DB_OK) {
        rc = -1;
        goto release;
    }
    if (staged_version(c, &staged, label, sizeof(label), NULL) == 0 && staged &&
        waiting_for(c, ver, NULL, NULL) == 0) {
        rc = activate(s, c, "kmsd", staged, label, false, &e) == QK_OK ? 1 : -1;
        if (rc < 0)
            log_emit(LOG_WARN, "staged master key version not activated; will retry", "{s:s}",
                     "error", e.detail);
        else
            res.staged_s = 0;
    }
    qt_command(c, QT_MASTER_UNLOCK);
release:
    db_release(s->db, c);
done:
    if (out)
        *out = res;
    return rc;
}

qk_kind rotation_status(qk_svc *s, json_t **out, qk_err *e)
{
    db_status st;
    PGresult *r = db_query(s->db, Q_MASTER_STATUS, 0, NULL, NULL, NULL, &st);
    json_t *arr, *waiting;
    long long pending = 0;
    uint32_t staged = 0;
    *out = NULL;
    if (!r) /* any failure answers 503, as GET /v1/admin/master always has */
        return db_fail(e, DB_UNAVAILABLE);
    arr = json_array();
    waiting = json_array();
    for (int i = 0; i < PQntuples(r); i++) {
        long long dk = atoll(PQgetvalue(r, i, 5)), ss = atoll(PQgetvalue(r, i, 6));
        if (!strcmp(PQgetvalue(r, i, 2), "staged"))
            staged = (uint32_t)atoi(PQgetvalue(r, i, 0));
        /* ETSI GS QKD 014 keys (qkd.h) and groups' firmware keys
         * (firmware_groups.h) count as pending too; they are not listed per
         * version (the former live minutes; the latter are a handful). */
        if (strcmp(PQgetvalue(r, i, 2), "active") != 0)
            pending += dk + ss + atoll(PQgetvalue(r, i, 7));
        json_array_append_new(
            arr, json_pack("{s:i,s:o,s:o,s:o,s:o,s:I,s:I}", "version", atoi(PQgetvalue(r, i, 0)),
                           "label", pgjson_text(r, i, 1), "state", pgjson_text(r, i, 2),
                           "created_at", pgjson_time(r, i, 3), "retired_at", pgjson_time(r, i, 4),
                           "device_keys", (json_int_t)dk, "sessions", (json_int_t)ss));
    }
    PQclear(r);
    if (staged) {
        /* Who the staged version waits for (live instances lacking it). */
        char ver[16];
        db_conn *c = db_acquire(s->db, &st);
        int64_t n = -1;
        snprintf(ver, sizeof(ver), "%u", staged);
        if (c) {
            n = waiting_for(c, ver, NULL, waiting);
            db_release(s->db, c);
        }
        if (n < 0) {
            json_decref(arr);
            json_decref(waiting);
            return db_fail(e, DB_UNAVAILABLE);
        }
    }
    *out = json_pack("{s:i,s:o,s:I,s:o,s:o}", "active", (int)keywrap_active(s->kw), "versions",
                     arr, "pending_rewrap", (json_int_t)pending, "staged",
                     staged ? json_integer(staged) : json_null(), "waiting_for", waiting);
    if (!*out)
        return qk_fail(e, QK_INTERNAL, "internal", "out of memory");
    return QK_OK;
}

/* ---- refresh, rewrap, destroy ------------------------------------------------ */

/* Unwrap under whatever version the blob names, wrap under the active one. */
static int rewrap_blob(qk_svc *k, const char *ctx, const char *hexblob, char *out_hex,
                       uint32_t *version)
{
    uint8_t blob[BLOB_MAX], key[KEYWRAP_MAX_KEY + 16], nb[BLOB_MAX];
    size_t kl = sizeof(key), nl = sizeof(nb);
    long bl = qkms_hex_decode(hexblob, strlen(hexblob), blob, sizeof(blob));
    int rc = -1;
    if (bl > 0 &&
        keywrap_unwrap(k->kw, (const uint8_t *)ctx, strlen(ctx), blob, (size_t)bl, key, &kl) == CKR_OK &&
        keywrap_wrap(k->kw, (const uint8_t *)ctx, strlen(ctx), key, kl, nb, &nl) == CKR_OK) {
        qkms_hex_encode(nb, nl, out_hex);
        *version = keywrap_blob_version(nb, nl);
        rc = 0;
    }
    OPENSSL_cleanse(key, sizeof(key));
    return rc;
}

/* The session ID hash key: rewrapped like any key, never changed (the
 * hashes of live sessions and tombstones must keep matching). 1 if done. */
static int rewrap_session_id_key(qk_svc *k, db_conn *c, uint32_t av)
{
    char hex[2 * BLOB_MAX + 1], newv[16];
    const char *vals[3] = {hex, newv, NULL};
    db_status st;
    PGresult *r = db_exec(c, Q_SIDKEY_GET, 0, NULL, NULL, NULL, &st), *u = NULL;
    uint32_t nv = 0;
    int done = 0;

    if (r && PQntuples(r) == 1 && strtoul(PQgetvalue(r, 0, 1), NULL, 10) < av &&
        rewrap_blob(k, SID_KEY_CONTEXT, PQgetvalue(r, 0, 0), hex, &nv) == 0) {
        snprintf(newv, sizeof(newv), "%u", nv);
        vals[2] = PQgetvalue(r, 0, 1);
        u = db_exec(c, Q_SIDKEY_REWRAP_SET, 3, vals, NULL, NULL, &st);
        done = u && atoi(PQcmdTuples(u)) == 1;
    }
    PQclear(u);
    PQclear(r);
    OPENSSL_cleanse(hex, sizeof(hex));
    return done;
}

/* ETSI GS QKD 014 keys waiting for their slaves (qkd.h): a batch, like
 * the sessions'. */
static int rewrap_qkd(qk_svc *k, db_conn *c, const char *active)
{
    char newv[16], ctx[96], hex[2 * BLOB_MAX + 1];
    const char *vals[4] = {active, REWRAP_BATCH, NULL, NULL};
    db_status st;
    PGresult *r = db_exec(c, Q_REWRAP_QKD, 2, vals, NULL, NULL, &st), *u;
    uint32_t nv = 0;
    int done = 0;
    for (int i = 0; r && i < PQntuples(r); i++) {
        snprintf(ctx, sizeof(ctx), QKD_WRAP_CONTEXT "%s", PQgetvalue(r, i, 1));
        if (rewrap_blob(k, ctx, PQgetvalue(r, i, 2), hex, &nv) != 0)
            continue;
        snprintf(newv, sizeof(newv), "%u", nv);
        vals[0] = PQgetvalue(r, i, 0);
        vals[1] = PQgetvalue(r, i, 3);
        vals[2] = hex;
        vals[3] = newv;
        u = db_exec(c, Q_REWRAP_QKD_SET, 4, vals, NULL, NULL, &st);
        if (u && atoi(PQcmdTuples(u)) == 1)
            done++;
        PQclear(u);
    }
    PQclear(r);
    OPENSSL_cleanse(hex, sizeof(hex));
    return done;
}

/* One batch of session keys under versions before the active one, from
 * query q (id, session hash, key ID, wrapped hex, version) and written back
 * by set (id, old version, wrapped hex, new version): how many it rewrapped;
 * *found how many it found (0: none left), -1 when the query failed. */
typedef int (*wrap_context_fn)(const char *owner, const char *key_id, char *out, size_t len);

static int rewrap_sessions(qk_svc *k, db_conn *c, int q, int set, wrap_context_fn context,
                           const char *active, int *found)
{
    char newv[16], ctx[256], hex[2 * BLOB_MAX + 1];
    const char *vals[4] = {active, REWRAP_BATCH, NULL, NULL};
    db_status st;
    PGresult *r = db_exec(c, q, 2, vals, NULL, NULL, &st), *u;
    uint32_t nv = 0;
    int done = 0;

    *found = r ? PQntuples(r) : -1;
    for (int i = 0; i < *found; i++) {
        if (context(PQgetvalue(r, i, 1), PQgetvalue(r, i, 2), ctx, sizeof(ctx)) < 0 ||
            rewrap_blob(k, ctx, PQgetvalue(r, i, 3), hex, &nv) != 0)
            continue;
        snprintf(newv, sizeof(newv), "%u", nv);
        vals[0] = PQgetvalue(r, i, 0);
        vals[1] = PQgetvalue(r, i, 4);
        vals[2] = hex;
        vals[3] = newv;
        u = db_exec(c, set, 4, vals, NULL, NULL, &st);
        if (u && atoi(PQcmdTuples(u)) == 1)
            done++;
        PQclear(u);
    }
    PQclear(r);
    OPENSSL_cleanse(hex, sizeof(hex));
    return done;
}

static int rewrap_batch(qk_svc *k, db_conn *c)
{
    char active[16], newv[16], ctx[256], hex[2 * BLOB_MAX + 1];
    const char *vals[5];
    db_status st;
    PGresult *r, *u;
    int done = 0;
    uint32_t av = keywrap_active(k->kw), nv = 0;

    snprintf(active, sizeof(active), "%u", av);
    vals[0] = active;
    vals[1] = REWRAP_BATCH;
    r = db_exec(c, Q_REWRAP_DEVKEYS, 2, vals, NULL, NULL, &st);
    if (!r)
        return -1;
    for (int i = 0; i < PQntuples(r); i++) {
        device_key_context(PQgetvalue(r, i, 0), atoi(PQgetvalue(r, i, 2)), PQgetvalue(r, i, 3), ctx,
                           sizeof(ctx));
        if (rewrap_blob(k, ctx, PQgetvalue(r, i, 4), hex, &nv) != 0)
            continue;
        snprintf(newv, sizeof(newv), "%u", nv);
        vals[0] = PQgetvalue(r, i, 1);
        vals[1] = PQgetvalue(r, i, 2);
        vals[2] = PQgetvalue(r, i, 5);
        vals[3] = hex;
        vals[4] = newv;
        u = db_exec(c, Q_REWRAP_DEVKEY_SET, 5, vals, NULL, NULL, &st);
        if (u && atoi(PQcmdTuples(u)) == 1)
            done++;
        PQclear(u);
    }
    PQclear(r);
    OPENSSL_cleanse(hex, sizeof(hex));
    done += rewrap_session_id_key(k, c, av);
    /* Before the sessions' skip below: QKD keys have no such latch, and a
     * rotation must reach every one of them however few sessions remain. */
    done += rewrap_qkd(k, c, active);
    {
        /* Groups' firmware keys (schema/036): few, long-lived, rewrapped
         * on every pass like the QKD keys, whatever the sessions' latch. */
        int fg;
        done += rewrap_sessions(k, c, Q_REWRAP_FW_GROUPS, Q_REWRAP_FW_GROUP_SET,
                                firmware_group_key_context, active, &fg);
    }
    if (k->sessions_rewrapped_for == av)
        return done;
    {
        /* Sessions' own keys, then their other epochs' and directions'
         * (schema/026): rows of the same shape, wrapped in the same
         * context. */
        int fa, fb, fc;
        done += rewrap_sessions(k, c, Q_REWRAP_SESSIONS, Q_REWRAP_SESSION_SET,
                                session_key_context, active, &fa);
        done += rewrap_sessions(k, c, Q_REWRAP_SESSION_KEYS, Q_REWRAP_SESSION_KEY_SET,
                                session_key_context, active, &fb);
        /* And streams' keys (schema/028), under their own context. */
        done += rewrap_sessions(k, c, Q_REWRAP_STREAM_KEYS, Q_REWRAP_STREAM_KEY_SET,
                                stream_key_context, active, &fc);
        if (fa == 0 && fb == 0 && fc == 0)
            k->sessions_rewrapped_for = av;
    }
    return done;
}

/* Destroy one retired version nothing references, in the token and in the
 * database, inside one transaction holding its master_keys row FOR UPDATE:
 * a writer naming the version (qkms_master_must_be_active takes the row FOR
 * SHARE) waits for us and then finds it destroyed, so no row can ever be
 * wrapped under a version that is gone. */
static void destroy_one(qk_svc *k, db_conn *c, const char *grace)
{
    const char *vals[1] = {grace};
    db_status st = db_command(c, "BEGIN");
    PGresult *r = NULL, *u = NULL;
    char ver[16], label[128];
    uint32_t v;
    CK_RV rv;

    if (st == DB_OK)
        r = db_exec(c, Q_MASTER_DESTROYABLE, 1, vals, NULL, NULL, &st);
    if (!r || PQntuples(r) == 0)
        goto rollback;
    v = (uint32_t)strtoul(PQgetvalue(r, 0, 0), NULL, 10);
    snprintf(ver, sizeof(ver), "%u", v);
    snprintf(label, sizeof(label), "%s", PQgetvalue(r, 0, 1));
    vals[0] = ver;
    u = db_exec(c, Q_MASTER_MARK_DESTROYED, 1, vals, NULL, NULL, &st);
    if (!u || PQntuples(u) != 1)
        goto rollback;
    st = audit_append(c, "kmsd", "master.destroyed", NULL,
                      json_pack("{s:i,s:s}", "version", (int)v, "label", label));
    if (st != DB_OK)
        goto rollback;
    /* The token last, while the row is still locked: if it fails, nothing
     * is recorded and the next pass tries again. */
    rv = keywrap_has(k->kw, v) ? keywrap_destroy(k->kw, v) : CKR_OK;
    if (rv != CKR_OK) {
        log_emit(LOG_ERROR, "destroying a retired master key failed", "{s:i,s:s}", "version",
                 (int)v, "ckr", p11_rv_name(rv));
        goto rollback;
    }
    if (db_command(c, "COMMIT") == DB_OK)
        log_emit(LOG_INFO, "retired master key destroyed in the token", "{s:s}", "label", label);
    goto out;
rollback:
    db_command(c, "ROLLBACK");
out:
    PQclear(u);
    PQclear(r);
}

static void destroy_unused(qk_svc *k, db_conn *c)
{
    char grace[16];
    /* Every instance must have adopted the new version and dropped cached
     * rows wrapped under the old one before it goes (a lagging instance
     * that has not is refused by the database and refreshes at once). */
    snprintf(grace, sizeof(grace), "%d",
             2 * k->cfg->maintenance_interval + k->cfg->device_key_cache_ttl);
    if (qt_command(c, QT_MASTER_LOCK) != DB_OK)
        return;
    destroy_one(k, c, grace);
    qt_command(c, QT_MASTER_UNLOCK);
}

int rotation_pass(qk_svc *k)
{
    db_status st;
    db_conn *c = db_acquire(k->db, &st);
    int n;
    if (!c)
        return -1;
    master_refresh(k, c);
    n = rewrap_batch(k, c);
    if (n > 0) {
        keycache_clear(k->keys); /* cached rows still hold the old wrapping */
        log_emit(LOG_INFO, "keys rewrapped under the active master key", "{s:i,s:i}", "count", n,
                 "version", (int)keywrap_active(k->kw));
    }
    if (n == 0)
        destroy_unused(k, c);
    db_release(k->db, c);
    return n;
}
