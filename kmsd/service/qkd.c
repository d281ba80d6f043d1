/* qkd — key delivery to SAEs, ETSI GS QKD 014's service (qkd.h). */
#include "service/device_seen.h"
#include "service/qkd.h"
#include "service/session_id.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/rand.h>

#include "hexutil.h"
#include "log.h"
#include "service/audit.h"
#include "service/master.h"
#include "store/pgarray.h"
#include "store/pgjson.h"
#include "store/queries.h"

#define QKD_WRAPPED_MAX (64 + KEYWRAP_OVERHEAD)
#define QKD_CTX QKD_WRAP_CONTEXT

void qkd_keys_out_clear(qkd_keys_out *o)
{
    for (int i = 0; o->keys && i < o->n; i++)
        if (o->keys[i].key)
            OPENSSL_secure_clear_free(o->keys[i].key, o->keys[i].len);
    free(o->keys);
    memset(o, 0, sizeof(*o));
}

static qk_kind unavailable(qk_err *e, const char *code, const char *msg)
{
    qk_kind k = qk_fail(e, QK_UNAVAILABLE, code, "%s", msg);
    if (e)
        e->retry_after = 1;
    return k;
}

qk_kind qkd_sae_of(qk_svc *s, const char *device_id, qkd_sae *out, qk_err *e)
{
    const char *vals[1] = {device_id};
    db_status st;
    PGresult *r;
    qk_kind k;

    memset(out, 0, sizeof(*out));
    if (!device_id || !*device_id)
        return qk_fail(e, QK_UNAUTHENTICATED, "not_an_sae",
                       "the client certificate names no registered SAE");
    if (!(r = db_query(s->db, Q_QKD_SAE, 1, vals, NULL, NULL, &st)))
        return db_fail(e, st);
    if (PQntuples(r) != 1 || PQgetisnull(r, 0, 1) || strcmp(PQgetvalue(r, 0, 2), "active")) {
        k = qk_fail(e, QK_UNAUTHENTICATED, "not_an_sae",
                    "the client certificate's device is no active SAE (it has no SAE ID, or is "
                    "suspended or revoked)");
    } else if (!strcmp(PQgetvalue(r, 0, 3), "t")) {
        /* The standard has no 403: its 401 says the SAE may not be served. */
        k = qk_fail(e, QK_UNAUTHENTICATED, "service_expired", "this SAE's service ended at %s",
                    PQgetvalue(r, 0, 4));
    } else {
        out->pk = atoll(PQgetvalue(r, 0, 0));
        snprintf(out->device_id, sizeof(out->device_id), "%s", device_id);
        snprintf(out->sae_id, sizeof(out->sae_id), "%s", PQgetvalue(r, 0, 1));
        k = QK_OK;
    }
    PQclear(r);
    return k;
}

bool qkd_sae_id_valid(const char *s)
{
    size_t n = s ? strlen(s) : 0;
    if (n == 0 || n > QKD_MAX_SAE_ID)
        return false;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] < 0x21 || (unsigned char)s[i] > 0x7e || strchr("/\\%?#", s[i]))
            return false;
    return true;
}

struct sae_tx {
    const char *device_id, *sae_id, *actor;
};

static db_status sae_tx_fn(db_conn *c, void *arg)
{
    struct sae_tx *t = arg;
    const char *vals[2] = {t->device_id, t->sae_id};
    db_status st;
    PGresult *r = db_exec(c, Q_QKD_SET_SAE, 2, vals, NULL, NULL, &st);
    json_t *d;
    if (!r)
        return st;
    if (PQntuples(r) != 1) {
        PQclear(r);
        return DB_NOT_FOUND;
    }
    d = json_pack("{s:o,s:s?}", "from", pgjson_text(r, 0, 0), "sae_id", t->sae_id);
    /* Keys waiting under the old SAE ID name it, not the device: they end
     * (tombstone sae_changed) rather than follow the device to its new ID
     * or leave another device holding the old one. */
    if (PQgetisnull(r, 0, 0) || !t->sae_id || strcmp(PQgetvalue(r, 0, 0), t->sae_id)) {
        const char *qv[3] = {PQgetvalue(r, 0, 2), t->actor, "sae_changed"};
        PGresult *q = db_exec(c, Q_QKD_DESTROY_FOR_DEVICE, 3, qv, NULL, NULL, &st);
        if (!q) {
            PQclear(r);
            json_decref(d);
            return st;
        }
        PQclear(q);
    }
    PQclear(r);
    return audit_append(c, t->actor, "device.sae_set", t->device_id, d);
}

qk_kind qkd_set_sae(qk_svc *s, const qk_principal *who, const char *device_id, const char *sae_id,
                    qk_err *e)
{
    struct sae_tx t = {device_id, sae_id, who->name};
    db_status st;
    qk_clear(e);
    if (sae_id && !qkd_sae_id_valid(sae_id))
        return qk_fail(e, QK_INVALID, "invalid_sae_id",
                       "sae_id must be 1-128 printable ASCII characters without spaces or / \\ %% ? #");
    st = db_tx(s->db, sae_tx_fn, &t);
    if (st == DB_NOT_FOUND)
        return qk_fail(e, QK_NOT_FOUND, "not_found", "no device '%.128s'", device_id);
    if (st == DB_CONFLICT)
        return qk_fail(e, QK_CONFLICT, "conflict", "SAE ID '%.128s' belongs to another device",
                       sae_id);
    if (st != DB_OK)
        return db_fail(e, st);
    log_with(&who->log, LOG_INFO, "device SAE ID set", "{s:s,s:s?}", "device_id", device_id,
             "sae_id", sae_id);
    return QK_OK;
}

/* ---- Get key ----------------------------------------------------------------- */

/* A refusal outcome of the stored functions (detail: a slave SAE, a key
 * ID, or why), into e. */
static qk_kind outcome_fail(const char *outcome, const char *detail, qk_err *e)
{
    if (!strcmp(outcome, "unauthenticated"))
        return qk_fail(e, QK_UNAUTHENTICATED, "not_an_sae", "%s", detail);
    if (!strcmp(outcome, "invalid"))
        return qk_fail(e, QK_INVALID, "invalid_request", "%s", detail);
    if (!strcmp(outcome, "unknown_slave"))
        return qk_fail(e, QK_INVALID, "unknown_slave", "slave SAE '%.128s' is not registered",
                       detail);
    if (!strcmp(outcome, "slave_inactive"))
        return qk_fail(e, QK_INVALID, "slave_inactive",
                       "slave SAE '%.128s' is suspended, revoked or out of service", detail);
    if (!strcmp(outcome, "policy_denied"))
        return qk_fail(e, QK_FORBIDDEN, "policy_denied",
                       "no pairing policy allows keys between this SAE and '%.128s'", detail);
    if (!strcmp(outcome, "source_denied"))
        return qk_fail(e, QK_FORBIDDEN, "key_source_denied",
                       "the pairing policy with '%.128s' does not allow key source c (the "
                       "platform's entropy), which these keys come from",
                       detail);
    if (!strcmp(outcome, "master_inactive"))
        return qk_fail(e, QK_INVALID, "master_inactive",
                       "the master SAE of key_ID %.40s is suspended", detail);
    if (!strcmp(outcome, "stock_full"))
        return qk_fail(e, QK_INVALID, "stock_full",
                       "%s keys already wait for this slave: ask fewer, or let the slave fetch "
                       "them first",
                       detail);
    if (!strcmp(outcome, "unknown_key"))
        return qk_fail(e, QK_INVALID, "unknown_key",
                       "key_ID %.40s expired, or was destroyed before this SAE fetched it",
                       detail);
    if (!strcmp(outcome, "not_yours"))
        return qk_fail(e, QK_FORBIDDEN, "not_yours",
                       "key_ID %.40s is no key of that master SAE for this SAE", detail);
    if (!strcmp(outcome, "already_fetched"))
        return qk_fail(e, QK_INVALID, "already_fetched",
                       "key_ID %.40s was already delivered to this SAE", detail);
    log_emit(LOG_ERROR, "unexpected qkd outcome", "{s:s}", "outcome", outcome);
    return qk_fail(e, QK_INTERNAL, "internal", "internal error (see kmsd log)");
}

/* number keys from the entropy interface, wrapped for their rows, into
 * out (plaintext) and the three array literals (IDs, wrapped keys, each
 * key's provenance). *moved: the active master version changed under the
 * wraps (another instance rotated): the caller makes them again. */
static qk_kind make_keys(qk_svc *s, int number, int size, qkd_keys_out *out, pgarray *ids,
                         pgarray *wrapped, pgarray *provs, uint32_t *version, bool *moved,
                         qk_err *e)
{
    uint8_t blob[QKD_WRAPPED_MAX];
    char hex[2 + 2 * QKD_WRAPPED_MAX + 1], ctx[64];
    size_t len = (size_t)size / 8;
    qk_kind k = QK_OK;

    *moved = false;
    if (!(out->keys = calloc((size_t)number, sizeof(qkd_key))))
        return qk_fail(e, QK_INTERNAL, "internal", "out of memory");
    *version = keywrap_active(s->kw);
    for (int i = 0; i < number && k == QK_OK; i++) {
        qkd_key *q = &out->keys[i];
        const char *prov = NULL;
        size_t bl = sizeof(blob);
        CK_RV rv;
        if (!(q->key = OPENSSL_secure_malloc(len))) {
            k = qk_fail(e, QK_INTERNAL, "internal", "out of secure memory");
            break;
        }
        q->len = len;
        out->n = i + 1;
        if (entropy_get(s->ent, q->key, len, &prov) != 0) {
            k = unavailable(e, "entropy_unavailable", "no entropy source available");
            break;
        }
        if (uuid4_text(q->key_id) != 0) {
            k = unavailable(e, "entropy_unavailable", "no random key ID available");
            break;
        }
        snprintf(ctx, sizeof(ctx), QKD_CTX "%s", q->key_id);
        rv = keywrap_wrap(s->kw, (const uint8_t *)ctx, strlen(ctx), q->key, len, blob, &bl);
        if (rv != CKR_OK) {
            log_emit(LOG_ERROR, "qkd key wrap failed", "{s:s}", "ckr", p11_rv_name(rv));
            k = unavailable(e, "token_unavailable", "key token unavailable, retry later");
            break;
        }
        if (keywrap_blob_version(blob, bl) != *version) {
            *moved = true;
            k = unavailable(e, "token_unavailable", "the master key version moved, retry");
            break;
        }
        memcpy(hex, "\\x", 2);
        qkms_hex_encode(blob, bl, hex + 2);
        pgarray_add(ids, q->key_id);
        pgarray_add(wrapped, hex);
        pgarray_add(provs, prov);
    }
    OPENSSL_cleanse(blob, sizeof(blob));
    OPENSSL_cleanse(hex, sizeof(hex));
    return k;
}

/* One Get key, in one transaction: the stored function checks the pair
 * and stores the wrapped keys, the door's answer is made, and only then the
 * transaction commits. An answer that cannot be made rolls it back: no key
 * is left for a slave to fetch. The keys themselves are made before (token
 * and entropy calls do not belong in a transaction that may run again). */
struct enc_tx {
    const char *const *vals;
    qkd_deliver_fn deliver;
    void *arg;
    const qkd_keys_out *out;
    qk_err err;
    char outcome[32], detail[160];
    long long expires_at;
    bool failed;  /* our own failure: err set, roll back */
    bool refused; /* the stored function's refusal: commit (its audit row) */
    bool moved;   /* the master version moved under the wraps (40001): make them again */
};

static db_status enc_tx_fn(db_conn *c, void *arg)
{
    struct enc_tx *t = arg;
    db_status st;
    PGresult *r;

    t->failed = t->refused = t->moved = false;
    qk_clear(&t->err);
    if (!(r = db_exec(c, Q_QKD_ENC, 8, t->vals, NULL, NULL, &st))) {
        if (st != DB_RETRY)
            return st;
        /* The keys' master version was retired by another instance (the
         * row trigger) or a lock wait failed: roll back and let the caller
         * wrap again, rather than run the same wraps into the same wall. */
        t->moved = true;
        return DB_INVALID;
    }
    if (PQntuples(r) != 1) {
        PQclear(r);
        qk_fail(&t->err, QK_INTERNAL, "internal", "internal error (see kmsd log)");
        t->failed = true;
        return DB_INVALID;
    }
    if (strcmp(PQgetvalue(r, 0, 0), "ok")) {
        snprintf(t->outcome, sizeof(t->outcome), "%s", PQgetvalue(r, 0, 0));
        snprintf(t->detail, sizeof(t->detail), "%s", PQgetvalue(r, 0, 1));
        outcome_fail(t->outcome, t->detail, &t->err);
        t->refused = true;
        PQclear(r);
        return DB_OK;
    }
    t->expires_at = atoll(PQgetvalue(r, 0, 2));
    PQclear(r);
    /* The answer exists before the keys do. */
    if (t->deliver(t->arg, t->out) != 0) {
        qk_fail(&t->err, QK_UNAVAILABLE, "unavailable", "the answer could not be made; retry");
        t->err.retry_after = 1;
        t->failed = true;
        return DB_INVALID;
    }
    return DB_OK;
}

static void arrays_reset(pgarray *ids, pgarray *wr, pgarray *pv)
{
    pgarray_free(ids);
    pgarray_free(wr);
    pgarray_free(pv);
    pgarray_init(ids);
    pgarray_init(wr);
    pgarray_init(pv);
}

qk_kind qkd_enc(qk_svc *s, const qk_principal *who, const qkd_sae *master,
                const char *const *slaves, int nslaves, int number, int size,
                qkd_deliver_fn deliver, void *arg, qk_err *e)
{
    pgarray sl, ids, wr, pv;
    const char *vals[8];
    bool moved = false;
    char pk[24], ver[16], bits[8], maxw[16];
    uint32_t version = 0;
    qkd_keys_out out;
    struct enc_tx t;
    db_status st = DB_ERROR;
    qk_kind k;

    memset(&out, 0, sizeof(out));
    memset(&t, 0, sizeof(t));
    pgarray_init(&sl);
    pgarray_init(&ids);
    pgarray_init(&wr);
    pgarray_init(&pv);
    if (number < 1 || number > QKD_MAX_KEY_PER_REQUEST || size < QKD_MIN_KEY_SIZE ||
        size > QKD_MAX_KEY_SIZE || size % 8 || nslaves < 1 ||
        nslaves > 1 + QKD_MAX_SAE_ID_COUNT) {
        k = qk_fail(e, QK_INVALID, "invalid_request", "number, size or slaves out of range");
        goto out;
    }
    for (int i = 0; i < nslaves; i++)
        pgarray_add(&sl, slaves[i]);
    /* Finished once: a finish appends the closing brace. */
    vals[1] = pgarray_finish(&sl);
    /* One try again when another instance retired the master version we
     * wrapped under since our last look (the row's trigger says 40001). */
    for (int attempt = 0; attempt < 2; attempt++) {
        if (attempt > 0) {
            if (master_refresh(s, NULL) != 0) {
                k = unavailable(e, "token_unavailable", "key token unavailable, retry later");
                goto out;
            }
            qkd_keys_out_clear(&out);
            arrays_reset(&ids, &wr, &pv);
        }
        if ((k = make_keys(s, number, size, &out, &ids, &wr, &pv, &version, &moved, e)) != QK_OK) {
            if (moved && attempt == 0)
                continue;
            goto out;
        }
        snprintf(pk, sizeof(pk), "%lld", master->pk);
        snprintf(ver, sizeof(ver), "%u", version);
        snprintf(bits, sizeof(bits), "%d", size);
        snprintf(maxw, sizeof(maxw), "%d", QKD_MAX_KEY_COUNT);
        vals[0] = pk;
        vals[2] = pgarray_finish(&ids);
        vals[3] = pgarray_finish(&wr);
        vals[4] = ver;
        vals[5] = pgarray_finish(&pv);
        vals[6] = bits;
        vals[7] = maxw;
        if (!vals[1] || !vals[2] || !vals[3] || !vals[5]) {
            k = qk_fail(e, QK_INTERNAL, "internal", "out of memory");
            goto out;
        }
        t = (struct enc_tx){.vals = vals, .deliver = deliver, .arg = arg, .out = &out};
        st = db_tx(s->db, enc_tx_fn, &t);
        if (!t.moved)
            break;
        st = DB_RETRY;
    }
    if (t.failed || t.refused) {
        k = t.err.kind;
        if (e)
            *e = t.err;
        if (k == QK_FORBIDDEN)
            log_with(&who->log, LOG_WARN, "qkd request refused", "{s:s,s:s}", "reason",
                     t.outcome, "slave_sae", t.detail);
        goto out;
    }
    if (st != DB_OK) {
        k = db_fail(e, st);
        goto out;
    }
    if (s->qkdm)
        atomic_fetch_add(&s->qkdm->issued, (unsigned long long)number);
    log_with(&who->log, LOG_INFO, "qkd keys issued", "{s:s,s:i,s:i,s:i}", "master_sae",
             master->sae_id, "number", number, "size", size, "slaves", nslaves);
    device_seen_note(s->contact, master->pk);
    k = QK_OK;
out:
    pgarray_free(&sl);
    pgarray_free(&ids);
    pgarray_free(&wr);
    pgarray_free(&pv);
    qkd_keys_out_clear(&out);
    OPENSSL_cleanse(&t, sizeof(t));
    return k;
}

/* ---- Get key with key IDs ------------------------------------------------------ */

/* One dec_keys, in one transaction: the stored function marks the keys
 * fetched (and destroys those every slave now has), the keys are unwrapped
 * and the door's answer is made, and only then the transaction commits. A
 * failure anywhere rolls it back: nothing consumed. The uncommitted delete
 * also keeps a master key version these keys name from being destroyed
 * before they are unwrapped (Q_MASTER_DESTROYABLE waits for the rows). */
struct dec_tx {
    qk_svc *s;
    const qk_principal *who;
    const char *vals[3];
    int n;
    qkd_deliver_fn deliver;
    void *arg;
    qkd_keys_out out;
    qk_err err;
    bool failed;   /* our own failure: err set, roll back */
    bool refused;  /* the stored function's refusal: err set, commit (its audit row) */
};

static db_status dec_fail(struct dec_tx *t, qk_kind k)
{
    (void)k;
    t->failed = true;
    qkd_keys_out_clear(&t->out);
    return DB_INVALID; /* rolls back, not retried */
}

static db_status dec_tx_fn(db_conn *c, void *arg)
{
    struct dec_tx *t = arg;
    char ctx[64];
    uint8_t blob[QKD_WRAPPED_MAX];
    db_status st;
    PGresult *r;

    qkd_keys_out_clear(&t->out);
    t->failed = t->refused = false;
    qk_clear(&t->err);
    if (!(r = db_exec(c, Q_QKD_DEC, 3, t->vals, NULL, NULL, &st)))
        return st;
    if (PQntuples(r) < 1) {
        PQclear(r);
        qk_fail(&t->err, QK_INTERNAL, "internal", "internal error (see kmsd log)");
        return dec_fail(t, QK_INTERNAL);
    }
    if (strcmp(PQgetvalue(r, 0, 0), "ok")) {
        outcome_fail(PQgetvalue(r, 0, 0), PQgetvalue(r, 0, 1), &t->err);
        t->refused = true;
        PQclear(r);
        return DB_OK;
    }
    if (PQntuples(r) != t->n || !(t->out.keys = calloc((size_t)t->n, sizeof(qkd_key)))) {
        PQclear(r);
        qk_fail(&t->err, QK_INTERNAL, "internal", "internal error (see kmsd log)");
        return dec_fail(t, QK_INTERNAL);
    }
    for (int i = 0; i < t->n; i++) {
        qkd_key *q = &t->out.keys[i];
        const char *wh = PQgetvalue(r, i, 3);
        long bl = strlen(wh) > 2 ? qkms_hex_decode(wh + 2, strlen(wh) - 2, blob, sizeof(blob)) : -1;
        size_t kl = 64 + 16;
        CK_RV rv;
        snprintf(q->key_id, sizeof(q->key_id), "%s", PQgetvalue(r, i, 2));
        snprintf(ctx, sizeof(ctx), QKD_CTX "%s", q->key_id);
        if (bl <= 0 || !(q->key = OPENSSL_secure_malloc(kl))) {
            PQclear(r);
            qk_fail(&t->err, QK_INTERNAL, "internal", "internal error (see kmsd log)");
            return dec_fail(t, QK_INTERNAL);
        }
        t->out.n = i + 1;
        q->len = kl;
        rv = keywrap_unwrap(t->s->kw, (const uint8_t *)ctx, strlen(ctx), blob, (size_t)bl, q->key,
                            &q->len);
        if (p11_rv_kind(rv) == P11_KIND_NOT_FOUND && master_refresh(t->s, NULL) == 0) {
            q->len = kl;
            rv = keywrap_unwrap(t->s->kw, (const uint8_t *)ctx, strlen(ctx), blob, (size_t)bl,
                                q->key, &q->len);
        }
        if (rv != CKR_OK || q->len * 8 != (size_t)atoi(PQgetvalue(r, i, 4))) {
            log_with(&t->who->log, LOG_ERROR, "qkd key unwrap failed", "{s:s,s:s}", "ckr",
                     p11_rv_name(rv), "key_id", q->key_id);
            PQclear(r);
            OPENSSL_cleanse(blob, sizeof(blob));
            if (rv == CKR_OK || qk_from_token(&t->err, rv, NULL) != QK_UNAVAILABLE)
                qk_fail(&t->err, QK_INTERNAL, "internal", "internal error (see kmsd log)");
            return dec_fail(t, QK_INTERNAL);
        }
    }
    PQclear(r);
    OPENSSL_cleanse(blob, sizeof(blob));
    /* The answer exists before the keys are consumed. */
    if (t->deliver(t->arg, &t->out) != 0) {
        qk_fail(&t->err, QK_UNAVAILABLE, "unavailable", "the answer could not be made; retry");
        t->err.retry_after = 1;
        return dec_fail(t, QK_UNAVAILABLE);
    }
    return DB_OK;
}

qk_kind qkd_dec(qk_svc *s, const qk_principal *who, const qkd_sae *slave, const char *master_sae,
                const char *const *key_ids, int n, qkd_deliver_fn deliver, void *arg, qk_err *e)
{
    struct dec_tx t;
    pgarray ids;
    char pk[24];
    db_status st;
    qk_kind k;

    memset(&t, 0, sizeof(t));
    pgarray_init(&ids);
    if (n < 1 || n > QKD_MAX_KEY_PER_REQUEST) {
        k = qk_fail(e, QK_INVALID, "invalid_request", "1 to %d key IDs", QKD_MAX_KEY_PER_REQUEST);
        goto out;
    }
    for (int i = 0; i < n; i++)
        pgarray_add(&ids, key_ids[i]);
    snprintf(pk, sizeof(pk), "%lld", slave->pk);
    t = (struct dec_tx){.s = s, .who = who, .vals = {pk, master_sae, pgarray_finish(&ids)},
                        .n = n, .deliver = deliver, .arg = arg};
    if (!t.vals[2]) {
        k = qk_fail(e, QK_INTERNAL, "internal", "out of memory");
        goto out;
    }
    st = db_tx(s->db, dec_tx_fn, &t);
    if (t.failed || t.refused) {
        k = t.err.kind;
        if (e)
            *e = t.err;
        goto out;
    }
    if (st != DB_OK) {
        k = db_fail(e, st);
        goto out;
    }
    if (s->qkdm)
        atomic_fetch_add(&s->qkdm->fetched, (unsigned long long)n);
    log_with(&who->log, LOG_INFO, "qkd keys fetched", "{s:s,s:s,s:i}", "slave_sae",
             slave->sae_id, "master_sae", master_sae, "number", n);
    device_seen_note(s->contact, slave->pk);
    k = QK_OK;
out:
    qkd_keys_out_clear(&t.out);
    pgarray_free(&ids);
    return k;
}

/* ---- Get status and expiry ---------------------------------------------------- */

qk_kind qkd_status(qk_svc *s, const qkd_sae *master, const char *slave_sae, json_t **out,
                   qk_err *e)
{
    char pk[24];
    const char *vals[2] = {pk, slave_sae};
    db_status st;
    PGresult *r;
    json_int_t stored;

    *out = NULL;
    snprintf(pk, sizeof(pk), "%lld", master->pk);
    if (!(r = db_query(s->db, Q_QKD_STATUS, 2, vals, NULL, NULL, &st)))
        return db_fail(e, st);
    if (PQntuples(r) != 1) {
        PQclear(r);
        return qk_fail(e, QK_INVALID, "unknown_slave", "slave SAE '%.128s' is not registered",
                       slave_sae);
    }
    /* What Get key would refuse, Get status refuses too. */
    if (atoll(PQgetvalue(r, 0, 0)) == master->pk || strcmp(PQgetvalue(r, 0, 1), "active") ||
        PQgetvalue(r, 0, 2)[0] != 't' || PQgetvalue(r, 0, 4)[0] != 't') {
        qk_kind k = atoll(PQgetvalue(r, 0, 0)) == master->pk
                        ? qk_fail(e, QK_INVALID, "invalid_request", "the slave SAE is the caller")
                    : strcmp(PQgetvalue(r, 0, 1), "active")
                        ? qk_fail(e, QK_INVALID, "slave_inactive",
                                  "slave SAE '%.128s' is suspended, revoked or out of service",
                                  slave_sae)
                    : PQgetvalue(r, 0, 2)[0] != 't'
                        ? qk_fail(e, QK_FORBIDDEN, "policy_denied",
                                  "no pairing policy allows keys between this SAE and '%.128s'",
                                  slave_sae)
                        : qk_fail(e, QK_FORBIDDEN, "key_source_denied",
                                  "the pairing policy with '%.128s' does not allow key source c "
                                  "(the platform's entropy), which these keys come from",
                                  slave_sae);
        PQclear(r);
        return k;
    }
    stored = atoll(PQgetvalue(r, 0, 3));
    PQclear(r);
    *out = json_pack("{s:s,s:s,s:s,s:s,s:i,s:I,s:i,s:i,s:i,s:i,s:i}", "source_KME_ID",
                     s->cfg->qkd_kme_id, "target_KME_ID", s->cfg->qkd_kme_id, "master_SAE_ID",
                     master->sae_id, "slave_SAE_ID", slave_sae, "key_size", QKD_KEY_SIZE,
                     "stored_key_count", stored, "max_key_count", QKD_MAX_KEY_COUNT,
                     "max_key_per_request", QKD_MAX_KEY_PER_REQUEST, "max_key_size",
                     QKD_MAX_KEY_SIZE, "min_key_size", QKD_MIN_KEY_SIZE, "max_SAE_ID_count",
                     QKD_MAX_SAE_ID_COUNT);
    if (!*out)
        return qk_fail(e, QK_INTERNAL, "internal", "out of memory");
    device_seen_note(s->contact, master->pk);
    return QK_OK;
}

qk_kind qkd_overview(qk_svc *s, json_t **out, qk_err *e)
{
    db_status st;
    PGresult *r = db_query(s->db, Q_QKD_PAIRS, 0, NULL, NULL, NULL, &st);
    json_t *pairs;
    *out = NULL;
    if (!r)
        return db_fail(e, st);
    pairs = json_array();
    for (int i = 0; pairs && i < PQntuples(r); i++)
        json_array_append_new(pairs, json_pack("{s:o,s:o,s:I,s:o}", "master_sae",
                                               pgjson_text(r, i, 0), "slave_sae",
                                               pgjson_text(r, i, 1), "waiting",
                                               (json_int_t)atoll(PQgetvalue(r, i, 2)),
                                               "next_expiry", pgjson_time(r, i, 3)));
    PQclear(r);
    *out = json_pack("{s:s,s:i,s:i,s:i,s:i,s:i,s:i,s:o}", "kme_id", s->cfg->qkd_kme_id,
                     "key_size", QKD_KEY_SIZE, "min_key_size", QKD_MIN_KEY_SIZE, "max_key_size",
                     QKD_MAX_KEY_SIZE, "max_key_per_request", QKD_MAX_KEY_PER_REQUEST,
                     "max_key_count", QKD_MAX_KEY_COUNT, "max_SAE_ID_count",
                     QKD_MAX_SAE_ID_COUNT, "pairs", pairs);
    return *out ? QK_OK : qk_fail(e, QK_INTERNAL, "internal", "out of memory");
}

qk_kind qkd_keys_list(qk_svc *s, const char *master, const char *slave, long limit, json_t **out,
                      qk_err *e)
{
    char lim[16];
    const char *vals[3] = {master, slave, lim};
    db_status st;
    PGresult *r;
    json_t *keys;
    *out = NULL;
    if (limit < 1 || limit > 1000 || (master && !qkd_sae_id_valid(master)) ||
        (slave && !qkd_sae_id_valid(slave)))
        return qk_fail(e, QK_MALFORMED, "invalid_query", "bad master, slave or limit (1-1000)");
    snprintf(lim, sizeof(lim), "%ld", limit);
    if (!(r = db_query(s->db, Q_QKD_KEYS_LIST, 3, vals, NULL, NULL, &st)))
        return db_fail(e, st);
    keys = json_array();
    for (int i = 0; keys && i < PQntuples(r); i++) {
        json_t *slaves = json_loads(PQgetvalue(r, i, 6), 0, NULL);
        json_array_append_new(
            keys, json_pack("{s:o,s:o,s:i,s:o,s:o,s:o,s:o}", "key_id", pgjson_text(r, i, 0),
                            "master_sae", pgjson_text(r, i, 1), "size", atoi(PQgetvalue(r, i, 2)),
                            "policy", pgjson_text(r, i, 3), "created_at", pgjson_time(r, i, 4),
                            "expires_at", pgjson_time(r, i, 5), "slaves",
                            slaves ? slaves : json_array()));
    }
    PQclear(r);
    *out = json_pack("{s:o}", "keys", keys);
    return *out ? QK_OK : qk_fail(e, QK_INTERNAL, "internal", "out of memory");
}

int qkd_reap(qk_svc *s)
{
    const char *vals[1] = {"1000"};
    db_status st;
    PGresult *r = db_query(s->db, Q_QKD_REAP, 1, vals, NULL, NULL, &st);
    int n;
    if (!r)
        return -1;
    n = atoi(PQgetvalue(r, 0, 0));
    PQclear(r);
    if (n > 0) {
        if (s->qkdm)
            atomic_fetch_add(&s->qkdm->expired, (unsigned long long)n);
        log_emit(LOG_INFO, "expired qkd keys destroyed", "{s:i}", "count", n);
    }
    return n;
}
