/*
 * device_keys — a device's key material (device_keys.h): generation through
 * the entropy interface and wrapping in the token, unwrapping, key check
 * values, the key listing of a device record, and rotation. Registration
 * (devices.c) and the fill export (device_fill.c) use the primitives here;
 * this module owns no other state.
 */
#include "service/device_keys.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

#include "hexutil.h"
#include "kcv.h"
#include "service/audit.h"
#include "service/device_model.h"
#include "service/keycache.h"
#include "service/master.h"
#include "store/pgjson.h"
#include "store/queries.h"

#define WRAPPED_MAX (32 + KEYWRAP_OVERHEAD)
/* Rotations that lose the race for the next index to another one try again,
 * this often in all. */
#define ROTATE_TRIES 3

bool device_key_alg_valid(const char *a)
{
    return a && (!strcmp(a, "AES-128") || !strcmp(a, "AES-256") || !strcmp(a, "SM4-128"));
}

size_t device_key_len(const char *a) { return a && !strcmp(a, "AES-256") ? 32 : 16; }

int device_key_kcv(const char *algorithm, const uint8_t *key, size_t len, char out[11])
{
    uint8_t kcv[QKMS_KCV_LEN];
    if (qkms_kcv_compute_alg(algorithm, key, len, kcv) != 0)
        return -1;
    qkms_hex_encode(kcv, QKMS_KCV_LEN, out);
    return 0;
}


bool device_keys_master_moved(qk_svc *s, db_status st, uint32_t used)
{
    /* qkms_master_must_be_active answers 40001 (DB_RETRY) for a version
     * another instance retired since our last refresh. */
    return st == DB_RETRY && master_refresh(s, NULL) == 0 && keywrap_active(s->kw) != used;
}

/* ---- generation and unwrapping ------------------------------------------- */

qk_kind device_key_new(qk_svc *s, const char *device_id, int index, const char *algorithm,
                       char **wrapped_hex, int *mv, const char **prov, qk_err *e)
{
    size_t klen = device_key_len(algorithm), wl = WRAPPED_MAX;
    uint8_t *key = OPENSSL_secure_malloc(32), wrapped[WRAPPED_MAX];
    char ctx[256];
    CK_RV rv;
    qk_kind r = QK_INTERNAL;

    *wrapped_hex = NULL;
    if (!key)
        return qk_fail(e, QK_INTERNAL, "internal", "out of secure memory");
    if (entropy_get(s->ent, key, klen, prov) != 0) {
        r = qk_fail(e, QK_UNAVAILABLE, "entropy_unavailable", "no entropy source available");
        e->retry_after = 1;
        goto out;
    }
    device_key_context(device_id, index, algorithm, ctx, sizeof(ctx));
    *mv = (int)keywrap_active(s->kw);
    rv = keywrap_wrap(s->kw, (const uint8_t *)ctx, strlen(ctx), key, klen, wrapped, &wl);
    if (rv != CKR_OK && master_refresh(s, NULL) == 0 && keywrap_active(s->kw) != (uint32_t)*mv) {
        /* The version we think active may be gone (destroyed by another
         * instance after it rotated): look again, once. */
        wl = WRAPPED_MAX;
        rv = keywrap_wrap(s->kw, (const uint8_t *)ctx, strlen(ctx), key, klen, wrapped, &wl);
    }
    if (rv != CKR_OK) {
        r = qk_from_token(e, rv, "wrap device key");
        goto out;
    }
    *mv = (int)keywrap_blob_version(wrapped, wl);
    if (!(*wrapped_hex = malloc(2 * wl + 1))) {
        r = qk_fail(e, QK_INTERNAL, "internal", "out of memory");
        goto out;
    }
    qkms_hex_encode(wrapped, wl, *wrapped_hex);
    r = QK_OK;
out:
    OPENSSL_secure_clear_free(key, 32);
    return r;
}

qk_kind device_key_unwrap(qk_svc *s, const char *device_id, int index, const char *algorithm,
                          const char *hexblob, uint8_t *key, size_t *klen, qk_err *e)
{
    uint8_t blob[WRAPPED_MAX];
    char ctx[256];
    long bl = qkms_hex_decode(hexblob, strlen(hexblob), blob, sizeof(blob));
    CK_RV rv;

    if (bl <= 0)
        return qk_fail(e, QK_INTERNAL, "internal", "stored key is malformed");
    device_key_context(device_id, index, algorithm, ctx, sizeof(ctx));
    *klen = DEVICE_KEY_BUF;
    rv = keywrap_unwrap(s->kw, (const uint8_t *)ctx, strlen(ctx), blob, (size_t)bl, key, klen);
    if (rv != CKR_OK) {
        if (p11_rv_kind(rv) == P11_KIND_DATA)
            log_emit(LOG_ERROR, "stored device key failed authentication", "{s:s,s:i}",
                     "device_id", device_id, "index", index);
        return qk_from_token(e, rv, "unwrap device key");
    }
    if (*klen != device_key_len(algorithm)) {
        OPENSSL_cleanse(key, *klen);
        return qk_fail(e, QK_INTERNAL, "internal", "stored key has the wrong length");
    }
    return QK_OK;
}

/* ---- the key listing ------------------------------------------------------ */

/* One row of Q_DEVICE_KEYS. */
static json_t *key_json(const PGresult *r, int i)
{
    return json_pack("{s:i,s:o,s:o,s:o,s:b,s:o,s:o,s:o,s:o,s:i,s:o,s:o,s:o}", "index",
                     atoi(PQgetvalue(r, i, 0)), "purpose", pgjson_text(r, i, 13), "algorithm",
                     pgjson_text(r, i, 1), "state",
                     pgjson_text(r, i, 2), "expired", PQgetvalue(r, i, 3)[0] == 't', "not_before",
                     pgjson_time(r, i, 4), "not_after", pgjson_time(r, i, 5), "retire_at",
                     pgjson_time(r, i, 6), "exported_at", pgjson_time(r, i, 7), "export_count",
                     atoi(PQgetvalue(r, i, 8)), "master_version",
                     PQgetisnull(r, i, 9) ? json_null() : json_integer(atoi(PQgetvalue(r, i, 9))),
                     "provenance", pgjson_text(r, i, 10), "created_at", pgjson_time(r, i, 12));
}

/* Add "kcv" to kj from row i's wrapped key (key: a DEVICE_KEY_BUF buffer). */
static qk_kind add_kcv(qk_svc *s, const char *device_id, const PGresult *r, int i, uint8_t *key,
                       json_t *kj, qk_err *e)
{
    size_t kl;
    char kcv[11];
    qk_kind k = device_key_unwrap(s, device_id, atoi(PQgetvalue(r, i, 0)), PQgetvalue(r, i, 1),
                                  PQgetvalue(r, i, 11), key, &kl, e);
    if (k != QK_OK)
        return k;
    device_key_kcv(PQgetvalue(r, i, 1), key, kl, kcv);
    OPENSSL_cleanse(key, kl);
    json_object_set_new(kj, "kcv", json_string(kcv));
    return QK_OK;
}

qk_kind device_keys_list(qk_svc *s, db_conn *c, const char *device_id, bool with_kcv,
                         json_t **out, qk_err *e)
{
    const char *vals[1] = {device_id};
    db_status st;
    PGresult *r = db_exec(c, Q_DEVICE_KEYS, 1, vals, NULL, NULL, &st);
    json_t *arr = NULL;
    uint8_t *key = NULL;
    qk_kind k = QK_OK;

    *out = NULL;
    if (!r)
        return db_fail(e, st);
    if (with_kcv && !(key = OPENSSL_secure_malloc(DEVICE_KEY_BUF))) {
        k = qk_fail(e, QK_INTERNAL, "internal", "out of secure memory");
        goto out;
    }
    arr = json_array();
    for (int i = 0; i < PQntuples(r) && k == QK_OK; i++) {
        json_t *kj = key_json(r, i);
        /* Destroyed keys have no bytes, so no check value. */
        if (with_kcv && !PQgetisnull(r, i, 11))
            k = add_kcv(s, device_id, r, i, key, kj, e);
        json_array_append_new(arr, kj);
    }
    if (k == QK_OK) {
        *out = arr;
        arr = NULL;
    }
out:
    if (key)
        OPENSSL_secure_clear_free(key, DEVICE_KEY_BUF);
    json_decref(arr);
    PQclear(r);
    return k;
}

/* ---- rotation ------------------------------------------------------------- */

/* One new key per purpose rotated (docs/gateways.md, "Key purposes"). */
#define ROTATE_MAX 3

struct rotate_key {
    int index, mv;
    const char *purpose, *prov;
    char *wrapped_hex;
};

struct rotate_tx {
    const char *actor, *device_id;
    int bits, validity, grace, n;
    char alg[8]; /* the new keys' algorithm (rotate_plan) */
    struct rotate_key k[ROTATE_MAX];
    bool stale; /* another rotation took the index first */
    qk_err *e;
};

/* The device row, locked; DB_NOT_FOUND / DB_INVALID (revoked) with *e set. */
static db_status rotate_lock(db_conn *c, struct rotate_tx *t, char pk[24])
{
    const char *vals[1] = {t->device_id};
    db_status st;
    PGresult *r = db_exec(c, Q_DEVICE_LOCK, 1, vals, NULL, NULL, &st);
    if (!r) {
        db_fail(t->e, st);
        return st;
    }
    st = DB_OK;
    if (PQntuples(r) == 0) {
        qk_fail(t->e, QK_NOT_FOUND, "not_found", "no device '%s'", t->device_id);
        st = DB_NOT_FOUND;
    } else if (!strcmp(PQgetvalue(r, 0, 1), "revoked")) {
        qk_fail(t->e, QK_CONFLICT, "invalid_state", "device '%s' is revoked", t->device_id);
        st = DB_INVALID;
    } else {
        snprintf(pk, 24, "%s", PQgetvalue(r, 0, 0));
    }
    PQclear(r);
    return st;
}

/* Whether our first index is still the next one (else t->stale, DB_INVALID). */
static db_status rotate_check_index(db_conn *c, struct rotate_tx *t)
{
    const char *vals[1] = {t->device_id};
    db_status st;
    PGresult *r = db_exec(c, Q_DEVKEY_MAX_INDEX, 1, vals, NULL, NULL, &st);
    if (!r) {
        db_fail(t->e, st);
        return st;
    }
    st = DB_OK;
    if (atoi(PQgetvalue(r, 0, 0)) + 1 != t->k[0].index) {
        /* Another rotation got in first; our keys were wrapped for its indices. */
        t->stale = true;
        st = DB_INVALID;
    }
    PQclear(r);
    return st;
}

static db_status rotate_tx_fn(db_conn *c, void *arg)
{
    struct rotate_tx *t = arg;
    const char *vals[8];
    char pk[24], idx[16], mv[16], days[16], grace[16], purposes[64];
    db_status st;
    PGresult *r;
    json_t *retiring = NULL, *indices = NULL, *names = NULL;
    size_t pl = 0;

    /* db_tx may run this again: an error of an earlier attempt must not
     * decide the answer of this one. */
    qk_clear(t->e);
    t->stale = false;
    if ((st = rotate_lock(c, t, pk)) != DB_OK || (st = rotate_check_index(c, t)) != DB_OK)
        return st;
    purposes[pl++] = '{';
    for (int i = 0; i < t->n; i++)
        pl += (size_t)snprintf(purposes + pl, sizeof(purposes) - pl, "%s%s", i ? "," : "",
                               t->k[i].purpose);
    snprintf(purposes + pl, sizeof(purposes) - pl, "}");
    snprintf(grace, sizeof(grace), "%d", t->grace);
    vals[0] = pk;
    vals[1] = grace;
    vals[2] = purposes;
    /* Only the keys of the purposes rotated retire: a gateway's new local
     * key leaves its access key alone. */
    if (!(r = db_exec(c, Q_DEVKEY_SCHEDULE_RETIRE, 3, vals, NULL, NULL, &st)))
        goto fail;
    retiring = json_array();
    indices = json_array();
    names = json_array();
    for (int i = 0; i < PQntuples(r); i++)
        json_array_append_new(retiring, json_integer(atoi(PQgetvalue(r, i, 0))));
    PQclear(r);
    snprintf(days, sizeof(days), "%d", t->validity);
    for (int i = 0; i < t->n; i++) {
        snprintf(idx, sizeof(idx), "%d", t->k[i].index);
        snprintf(mv, sizeof(mv), "%d", t->k[i].mv);
        vals[1] = idx;
        vals[2] = t->alg;
        vals[3] = t->k[i].wrapped_hex;
        vals[4] = mv;
        vals[5] = t->k[i].prov;
        vals[6] = days;
        vals[7] = t->k[i].purpose;
        if (!(r = db_exec(c, Q_DEVKEY_INSERT_ONE, 8, vals, NULL, NULL, &st)))
            goto fail;
        PQclear(r);
        json_array_append_new(indices, json_integer(t->k[i].index));
        json_array_append_new(names, json_string(t->k[i].purpose));
    }
    return audit_append(c, t->actor, "device.rotated", t->device_id,
                        json_pack("{s:i,s:o,s:o,s:i,s:i,s:o,s:s}", "new_index", t->k[0].index,
                                  "new_indices", indices, "purposes", names, "key_bits", t->bits,
                                  "grace_days", t->grace, "retiring", retiring, "provenance",
                                  t->k[0].prov));
fail:
    json_decref(retiring);
    json_decref(indices);
    json_decref(names);
    db_fail(t->e, st);
    return st;
}

/* The next index of device_id, the purposes to rotate into t->k, and, when
 * t->bits <= 0, the newest key's size (128 with no key yet). The purposes:
 * purpose, which the device must have (an active key of it, or its type's
 * template names it; generic always), or else those of its active keys
 * and of its type's template (access, local, generic in that order;
 * generic when there are none): a gateway whose local key is gone gets a
 * new one. QK_NOT_FOUND for an unknown device; QK_INVALID
 * "invalid_key_purposes". */
static qk_kind rotate_plan(qk_svc *s, const char *device_id, const char *purpose,
                           struct rotate_tx *t, qk_err *e)
{
    static const char *const order[ROTATE_MAX] = {"access", "local", "generic"};
    const char *vals[1] = {device_id};
    db_status st;
    db_conn *c = db_acquire(s->db, &st);
    PGresult *r = NULL;
    qk_kind k = QK_OK;
    bool live[ROTATE_MAX] = {false, false, false};
    char type[DEVICE_TYPE_MAX + 1];
    int n, next;

    if (!c)
        return db_fail(e, st);
    if (!(r = db_exec(c, Q_DEVICE_GET, 1, vals, NULL, NULL, &st))) {
        k = db_fail(e, st);
        goto out;
    }
    if (PQntuples(r) == 0) {
        k = qk_fail(e, QK_NOT_FOUND, "not_found", "no device '%s'", device_id);
        goto out;
    }
    snprintf(type, sizeof(type), "%s", PQgetvalue(r, 0, 1));
    {
        const char *tv[1] = {type}, *tpl[DEVICE_MAX_KEYS] = {0};
        PGresult *tr;
        PQclear(r);
        if (!(r = db_exec(c, Q_DEVTYPE_TEMPLATE, 1, tv, NULL, NULL, &st))) {
            k = db_fail(e, st);
            goto out;
        }
        tr = r;
        n = PQntuples(tr) ? device_template_parse(PQgetvalue(tr, 0, 0), tpl, DEVICE_MAX_KEYS) : 0;
        for (int i = 0; i < n; i++)
            for (int j = 0; j < ROTATE_MAX; j++)
                if (!strcmp(tpl[i], order[j]))
                    live[j] = true;
        PQclear(tr);
        r = NULL;
    }
    if (!(r = db_exec(c, Q_DEVICE_KEYS, 1, vals, NULL, NULL, &st))) {
        k = db_fail(e, st);
        goto out;
    }
    n = PQntuples(r);
    next = n ? atoi(PQgetvalue(r, n - 1, 0)) + 1 : 0;
    /* A device's new keys keep its suite (an SM4 device's are SM4-128);
     * AES keys take the asked length, else the last key's. */
    if (n && !strcmp(PQgetvalue(r, n - 1, 1), "SM4-128")) {
        if (t->bits > 0 && t->bits != 128) {
            k = qk_fail(e, QK_INVALID, "invalid_key_bits",
                        "an SM4 device's keys are 128 bits (SM4-128)");
            goto out;
        }
        snprintf(t->alg, sizeof(t->alg), "SM4-128");
        t->bits = 128;
    } else {
        if (t->bits <= 0)
            t->bits = n && !strcmp(PQgetvalue(r, n - 1, 1), "AES-256") ? 256 : 128;
        snprintf(t->alg, sizeof(t->alg), "%s", t->bits == 256 ? "AES-256" : "AES-128");
    }
    for (int i = 0; i < n; i++)
        for (int j = 0; j < ROTATE_MAX; j++)
            if (!strcmp(PQgetvalue(r, i, 2), "active") && !strcmp(PQgetvalue(r, i, 13), order[j]))
                live[j] = true;
    if (purpose && strcmp(purpose, "generic") != 0) {
        bool has = false;
        for (int j = 0; j < ROTATE_MAX; j++)
            has = has || (live[j] && !strcmp(purpose, order[j]));
        if (!has) {
            k = qk_fail(e, QK_INVALID, "invalid_key_purposes",
                        "device '%s' has no %s key and its type's template names none",
                        device_id, purpose);
            goto out;
        }
    }
    t->n = 0;
    for (int j = 0; j < ROTATE_MAX; j++)
        if (purpose ? !strcmp(purpose, order[j]) : live[j]) {
            t->k[t->n] = (struct rotate_key){.index = next + t->n, .purpose = order[j]};
            t->n++;
        }
    if (t->n == 0) {
        t->k[0] = (struct rotate_key){.index = next, .purpose = "generic"};
        t->n = 1;
    }
out:
    PQclear(r);
    db_release(s->db, c);
    return k;
}

static void rotate_free(struct rotate_tx *t)
{
    for (int i = 0; i < t->n; i++) {
        free(t->k[i].wrapped_hex);
        t->k[i].wrapped_hex = NULL;
    }
}

qk_kind device_keys_rotate(qk_svc *s, const qk_principal *who, const char *device_id,
                           const char *purpose, int grace_days, int key_bits, int validity_days,
                           qk_err *e)
{
    qk_clear(e);
    if (purpose && !device_key_purpose_valid(purpose))
        return qk_fail(e, QK_INVALID, "invalid_key_purposes",
                       "purpose is access, local or generic");
    for (int attempt = 0; attempt < ROTATE_TRIES; attempt++) {
        struct rotate_tx t = {.actor = who->name, .device_id = device_id, .bits = key_bits,
                              .validity = validity_days, .grace = grace_days, .e = e};
        db_status st;
        qk_kind k;

        if ((k = rotate_plan(s, device_id, purpose, &t, e)) != QK_OK)
            return k;
        if (t.validity <= 0)
            t.validity = s->cfg->device_key_validity_days;
        if (t.k[t.n - 1].index > DEVICE_MAX_KEY_INDEX)
            return qk_fail(e, QK_CONFLICT, "key_index_exhausted",
                           "device '%s' has used all 256 key indices", device_id);
        for (int i = 0; i < t.n; i++)
            if ((k = device_key_new(s, device_id, t.k[i].index, t.alg, &t.k[i].wrapped_hex,
                                    &t.k[i].mv, &t.k[i].prov, e)) != QK_OK) {
                rotate_free(&t);
                return k;
            }
        st = db_tx(s->db, rotate_tx_fn, &t);
        rotate_free(&t);
        keycache_invalidate(s->keys, device_id);
        if (st == DB_OK) {
            log_with(&who->log, LOG_INFO, "device key rotated", "{s:s,s:i,s:i,s:s}", "device_id",
                     device_id, "new_index", t.k[0].index, "keys", t.n, "by", who->name);
            qk_clear(e);
            return QK_OK;
        }
        /* Every key of one attempt is wrapped under one version unless a
         * rotation of the master key came in between: then the database
         * refuses, and the next attempt wraps them all again. */
        if (device_keys_master_moved(s, st, (uint32_t)t.k[0].mv)) {
            qk_clear(e);
            continue;
        }
        if (!t.stale)
            return e->kind != QK_OK ? e->kind : db_fail(e, st);
        qk_clear(e);
    }
    return qk_fail(e, QK_CONFLICT, "conflict", "concurrent rotations of '%s'; try again",
                   device_id);
}
