/* devices — device registry, key generation and wrapping, lifecycle, fill export. */
#include "service/devices.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "service/audit.h"
#include "fillpkg.h"
#include "hexutil.h"
#include "kcv.h"
#include "service/keycache.h"
#include "log.h"
#include "service/master.h"
#include "store/pgarray.h"
#include "store/pgjson.h"
#include "store/queries.h"

#define WRAPPED_MAX (32 + KEYWRAP_OVERHEAD)

static void err_set(devices_err *e, int status, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void err_set(devices_err *e, int status, const char *code, const char *fmt, ...)
{
    va_list ap;
    e->status = status;
    e->code = code;
    va_start(ap, fmt);
    vsnprintf(e->message, sizeof(e->message), fmt, ap);
    va_end(ap);
}

static void err_db(devices_err *e, db_status st)
{
    if (st == DB_UNAVAILABLE || st == DB_RETRY) {
        e->retry_after = 1;
        err_set(e, 503, "unavailable", "database unavailable, retry later");
    } else {
        err_set(e, 500, "internal", "internal error (see kmsd log)");
    }
}

static void err_token(devices_err *e, CK_RV rv, const char *what)
{
    log_emit(LOG_ERROR, "token operation failed", "{s:s,s:s}", "op", what, "ckr", p11_rv_name(rv));
    if (p11_rv_kind(rv) == P11_KIND_UNAVAILABLE || p11_rv_kind(rv) == P11_KIND_NOT_FOUND) {
        e->retry_after = 1;
        err_set(e, 503, "token_unavailable", "key token unavailable, retry later");
    } else {
        err_set(e, 500, "internal", "internal error (see kmsd log)");
    }
}

int device_key_kcv(const uint8_t *key, size_t len, char out[11])
{
    uint8_t kcv[QKMS_KCV_LEN];
    if (qkms_kcv_compute(key, len, kcv) != 0)
        return -1;
    qkms_hex_encode(kcv, QKMS_KCV_LEN, out);
    return 0;
}

/* ---- key generation and unwrapping -------------------------------------- */

/* After a transaction failed with st: whether the database refused keys
 * wrapped under master version `used` because another instance rotated
 * since our last refresh (qkms_master_must_be_active answers 40001, i.e.
 * DB_RETRY) and a refresh has switched us to another version, so wrapping
 * again and retrying can succeed. */
static bool master_moved(qk_svc *k, db_status st, uint32_t used)
{
    return st == DB_RETRY && master_refresh(k, NULL) == 0 && keywrap_active(k->kw) != used;
}

static int gen_key(qk_svc *k, const char *device_id, int index, int bits, char **wrapped_hex,
                   int *mv, const char **prov, devices_err *e)
{
    size_t klen = (size_t)bits / 8, wl = WRAPPED_MAX;
    uint8_t *key = OPENSSL_secure_malloc(32), wrapped[WRAPPED_MAX];
    char ctx[256];
    CK_RV rv;
    int rc = -1;

    *wrapped_hex = NULL;
    if (!key) {
        err_set(e, 500, "internal", "out of secure memory");
        return -1;
    }
    if (entropy_get(k->ent, key, klen, prov) != 0) {
        e->retry_after = 1;
        err_set(e, 503, "entropy_unavailable", "no entropy source available");
        goto out;
    }
    device_key_context(device_id, index, bits, ctx, sizeof(ctx));
    *mv = (int)keywrap_active(k->kw);
    rv = keywrap_wrap(k->kw, (const uint8_t *)ctx, strlen(ctx), key, klen, wrapped, &wl);
    if (rv != CKR_OK && master_refresh(k, NULL) == 0 && keywrap_active(k->kw) != (uint32_t)*mv) {
        /* The version we think active may be gone (destroyed by another
         * instance after it rotated): look again, once. */
        wl = WRAPPED_MAX;
        rv = keywrap_wrap(k->kw, (const uint8_t *)ctx, strlen(ctx), key, klen, wrapped, &wl);
    }
    if (rv != CKR_OK) {
        err_token(e, rv, "wrap device key");
        goto out;
    }
    *mv = (int)keywrap_blob_version(wrapped, wl);
    *wrapped_hex = malloc(2 * wl + 1);
    if (!*wrapped_hex) {
        err_set(e, 500, "internal", "out of memory");
        goto out;
    }
    qkms_hex_encode(wrapped, wl, *wrapped_hex);
    rc = 0;
out:
    OPENSSL_secure_clear_free(key, 32);
    return rc;
}

/* Unwrap into key (secure memory of at least KEYWRAP_MAX_KEY + 16 bytes). */
static int unwrap_key(qk_svc *k, const char *device_id, int index, int bits, const char *hexblob,
                      uint8_t *key, size_t *klen, devices_err *e)
{
    uint8_t blob[WRAPPED_MAX];
    char ctx[256];
    long bl = qkms_hex_decode(hexblob, strlen(hexblob), blob, sizeof(blob));
    CK_RV rv;
    if (bl <= 0) {
        err_set(e, 500, "internal", "stored key is malformed");
        return -1;
    }
    device_key_context(device_id, index, bits, ctx, sizeof(ctx));
    *klen = KEYWRAP_MAX_KEY + 16;
    rv = keywrap_unwrap(k->kw, (const uint8_t *)ctx, strlen(ctx), blob, (size_t)bl, key, klen);
    if (rv != CKR_OK) {
        if (p11_rv_kind(rv) == P11_KIND_DATA)
            log_emit(LOG_ERROR, "stored device key failed authentication", "{s:s,s:i}",
                     "device_id", device_id, "index", index);
        err_token(e, rv, "unwrap device key");
        return -1;
    }
    if (*klen != (size_t)bits / 8) {
        OPENSSL_cleanse(key, *klen);
        err_set(e, 500, "internal", "stored key has the wrong length");
        return -1;
    }
    return 0;
}

static int alg_bits(const char *alg) { return !strcmp(alg, "AES-256") ? 256 : 128; }

/* ---- JSON records ---------------------------------------------------------- */

/* Columns of Q_DEVICE_GET / Q_DEVICE_LIST 0..7. */
static json_t *device_json(const PGresult *r, int i)
{
    return json_pack("{s:o,s:o,s:o,s:o,s:o,s:o,s:o,s:o}", "device_id", pgjson_text(r, i, 0), "type",
                     pgjson_text(r, i, 1), "group", pgjson_text(r, i, 2), "parent",
                     pgjson_text(r, i, 3), "state", pgjson_text(r, i, 4), "created_at",
                     pgjson_time(r, i, 5), "updated_at", pgjson_time(r, i, 6), "revoked_at",
                     pgjson_time(r, i, 7));
}

/* One row of Q_DEVICE_KEYS. */
static json_t *key_json(const PGresult *r, int i)
{
    return json_pack("{s:i,s:o,s:o,s:b,s:o,s:o,s:o,s:o,s:i,s:o,s:o,s:o}", "index",
                     atoi(PQgetvalue(r, i, 0)), "algorithm", pgjson_text(r, i, 1), "state",
                     pgjson_text(r, i, 2), "expired", PQgetvalue(r, i, 3)[0] == 't', "not_before",
                     pgjson_time(r, i, 4), "not_after", pgjson_time(r, i, 5), "retire_at",
                     pgjson_time(r, i, 6), "exported_at", pgjson_time(r, i, 7), "export_count",
                     atoi(PQgetvalue(r, i, 8)), "master_version",
                     PQgetisnull(r, i, 9) ? json_null() : json_integer(atoi(PQgetvalue(r, i, 9))),
                     "provenance", pgjson_text(r, i, 10), "created_at", pgjson_time(r, i, 12));
}

static int keys_json(qk_svc *k, db_conn *c, const char *device_id, bool with_kcv, json_t **out,
                     devices_err *e)
{
    const char *vals[1] = {device_id};
    db_status st;
    PGresult *r = db_exec(c, Q_DEVICE_KEYS, 1, vals, NULL, NULL, &st);
    json_t *arr;
    uint8_t *key = NULL;
    if (!r) {
        err_db(e, st);
        return -1;
    }
    arr = json_array();
    if (with_kcv)
        key = OPENSSL_secure_malloc(KEYWRAP_MAX_KEY + 16);
    for (int i = 0; i < PQntuples(r); i++) {
        json_t *kj = key_json(r, i);
        if (with_kcv && !PQgetisnull(r, i, 11)) {
            size_t kl;
            char kcv[11];
            if (!key || unwrap_key(k, device_id, atoi(PQgetvalue(r, i, 0)),
                                   alg_bits(PQgetvalue(r, i, 1)), PQgetvalue(r, i, 11), key, &kl,
                                   e) != 0) {
                if (!key)
                    err_set(e, 500, "internal", "out of secure memory");
                json_decref(kj);
                json_decref(arr);
                arr = NULL;
                break;
            }
            device_key_kcv(key, kl, kcv);
            OPENSSL_cleanse(key, kl);
            json_object_set_new(kj, "kcv", json_string(kcv));
        }
        json_array_append_new(arr, kj);
    }
    if (key)
        OPENSSL_secure_clear_free(key, KEYWRAP_MAX_KEY + 16);
    PQclear(r);
    *out = arr;
    return arr ? 0 : -1;
}

int devices_get(qk_svc *k, const char *device_id, bool with_keys, bool with_kcv, json_t **out,
                devices_err *e)
{
    const char *vals[1] = {device_id};
    db_status st;
    db_conn *c;
    PGresult *r;
    json_t *rec, *keys;

    *out = NULL;
    c = db_acquire(k->db, &st);
    if (!c) {
        err_db(e, st);
        return -1;
    }
    r = db_exec(c, Q_DEVICE_GET, 1, vals, NULL, NULL, &st);
    if (!r) {
        err_db(e, st);
        db_release(k->db, c);
        return -1;
    }
    if (PQntuples(r) == 0) {
        PQclear(r);
        db_release(k->db, c);
        err_set(e, 404, "not_found", "no device '%s'", device_id);
        return -1;
    }
    rec = device_json(r, 0);
    PQclear(r);
    if (with_keys) {
        if (keys_json(k, c, device_id, with_kcv, &keys, e) != 0) {
            json_decref(rec);
            db_release(k->db, c);
            return -1;
        }
        json_object_set_new(rec, "keys", keys);
    }
    db_release(k->db, c);
    *out = rec;
    return 0;
}

int devices_list(qk_svc *k, const device_filter *f, json_t **out, devices_err *e)
{
    char days[16], lim[16];
    const char *vals[6];
    db_status st;
    PGresult *r;
    json_t *arr;
    int n;

    snprintf(days, sizeof(days), "%d", f->expiring_within);
    snprintf(lim, sizeof(lim), "%d", f->limit);
    vals[0] = f->type;
    vals[1] = f->group;
    vals[2] = f->state;
    vals[3] = f->expiring_within >= 0 ? days : NULL;
    vals[4] = f->after;
    vals[5] = lim;
    r = db_query(k->db, Q_DEVICE_LIST, 6, vals, NULL, NULL, &st);
    if (!r) {
        err_db(e, st);
        return -1;
    }
    arr = json_array();
    n = PQntuples(r);
    for (int i = 0; i < n; i++) {
        json_t *d = device_json(r, i);
        json_object_set_new(d, "active_keys", json_integer(atoll(PQgetvalue(r, i, 8))));
        json_object_set_new(d, "next_expiry", pgjson_time(r, i, 9));
        json_array_append_new(arr, d);
    }
    *out = json_pack("{s:o,s:o}", "devices", arr, "next",
                     n == f->limit && n > 0 ? pgjson_text(r, n - 1, 0) : json_null());
    PQclear(r);
    return 0;
}

/* ---- registration --------------------------------------------------------- */

struct reg_tx {
    qk_svc *k;
    const char *actor;
    device_reg *rows;
    int n;
    int *pass; /* per row: 1 = parent in the database or none, 2 = parent in this batch */
};

static bool row_ok(const device_reg *r) { return !r->code && !r->db_code; }

static void row_fail(device_reg *r, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void row_fail(device_reg *r, const char *code, const char *fmt, ...)
{
    va_list ap;
    r->db_code = code;
    va_start(ap, fmt);
    vsnprintf(r->db_message, sizeof(r->db_message), fmt, ap);
    va_end(ap);
}

/* Insert the rows of one pass; mark created and conflicting rows. */
static db_status insert_pass(db_conn *c, struct reg_tx *t, int pass)
{
    pgarray ids, types, groups, parents;
    const char *vals[4];
    db_status st = DB_OK;
    PGresult *r = NULL;
    int count = 0;

    pgarray_init(&ids);
    pgarray_init(&types);
    pgarray_init(&groups);
    pgarray_init(&parents);
    for (int i = 0; i < t->n; i++) {
        device_reg *row = &t->rows[i];
        if (!row_ok(row) || t->pass[i] != pass)
            continue;
        pgarray_add(&ids, row->spec.device_id);
        pgarray_add(&types, row->spec.type);
        pgarray_add(&groups, row->spec.group);
        pgarray_add(&parents, row->spec.parent[0] ? row->spec.parent : NULL);
        count++;
    }
    if (count == 0)
        goto out;
    vals[0] = pgarray_finish(&ids);
    vals[1] = pgarray_finish(&types);
    vals[2] = pgarray_finish(&groups);
    vals[3] = pgarray_finish(&parents);
    if (!vals[0] || !vals[1] || !vals[2] || !vals[3]) {
        st = DB_ERROR;
        goto out;
    }
    r = db_exec(c, Q_DEVICE_INSERT_MANY, 4, vals, NULL, NULL, &st);
    if (!r)
        goto out;
    /* RETURNING gives the IDs that went in; the others already existed. */
    for (int i = 0; i < t->n; i++) {
        device_reg *row = &t->rows[i];
        if (!row_ok(row) || t->pass[i] != pass)
            continue;
        for (int j = 0; j < PQntuples(r) && !row->created; j++)
            row->created = !strcmp(PQgetvalue(r, j, 0), row->spec.device_id);
        if (!row->created)
            row_fail(row, "conflict", "device '%s' is already registered", row->spec.device_id);
    }
out:
    PQclear(r);
    pgarray_free(&ids);
    pgarray_free(&types);
    pgarray_free(&groups);
    pgarray_free(&parents);
    return st;
}

static db_status resolve_parents(db_conn *c, struct reg_tx *t)
{
    pgarray names;
    const char *vals[1];
    db_status st = DB_OK;
    PGresult *r = NULL;
    int count = 0;

    pgarray_init(&names);
    for (int i = 0; i < t->n; i++) {
        t->pass[i] = 1;
        if (row_ok(&t->rows[i]) && t->rows[i].spec.parent[0]) {
            pgarray_add(&names, t->rows[i].spec.parent);
            count++;
        }
    }
    if (count == 0)
        goto out;
    vals[0] = pgarray_finish(&names);
    if (!vals[0]) {
        st = DB_ERROR;
        goto out;
    }
    r = db_exec(c, Q_DEVICE_PARENTS, 1, vals, NULL, NULL, &st);
    if (!r)
        goto out;
    for (int i = 0; i < t->n; i++) {
        device_reg *row = &t->rows[i];
        const char *p = row->spec.parent;
        int found = -1;
        if (!row_ok(row) || !p[0])
            continue;
        for (int j = 0; j < PQntuples(r) && found < 0; j++)
            if (!strcmp(PQgetvalue(r, j, 0), p))
                found = j;
        if (found >= 0) {
            if (strcmp(PQgetvalue(r, found, 1), "gateway") != 0)
                row_fail(row, "invalid_parent", "parent '%s' is not a gateway", p);
            else if (!strcmp(PQgetvalue(r, found, 2), "revoked"))
                row_fail(row, "invalid_parent", "parent '%s' is revoked", p);
            continue;
        }
        /* A gateway earlier in the same batch will do. */
        for (int j = 0; j < i && found < 0; j++)
            if (row_ok(&t->rows[j]) && !strcmp(t->rows[j].spec.device_id, p))
                found = j;
        if (found < 0)
            row_fail(row, "invalid_parent", "unknown parent '%s'", p);
        else if (strcmp(t->rows[found].spec.type, "gateway") != 0)
            row_fail(row, "invalid_parent", "parent '%s' is not a gateway", p);
        else
            t->pass[i] = 2;
    }
out:
    PQclear(r);
    pgarray_free(&names);
    return st;
}

static db_status insert_keys_and_audit(db_conn *c, struct reg_tx *t)
{
    pgarray ids, idx, alg, wrapped, mv, prov, days, aud_ids, aud_detail;
    const char *vals[7], *avals[4];
    db_status st = DB_OK;
    PGresult *r = NULL;
    int count = 0;

    pgarray_init(&ids); pgarray_init(&idx); pgarray_init(&alg); pgarray_init(&wrapped);
    pgarray_init(&mv); pgarray_init(&prov); pgarray_init(&days);
    pgarray_init(&aud_ids); pgarray_init(&aud_detail);
    for (int i = 0; i < t->n; i++) {
        device_reg *row = &t->rows[i];
        char *detail;
        json_t *jd;
        if (!row->created)
            continue;
        for (int j = 0; j < row->spec.nkeys; j++) {
            pgarray_add(&ids, row->spec.device_id);
            pgarray_add_int(&idx, j);
            pgarray_add(&alg, row->spec.key_bits == 256 ? "AES-256" : "AES-128");
            pgarray_add(&wrapped, row->wrapped_hex[j]);
            pgarray_add_int(&mv, row->master_version[j]);
            pgarray_add(&prov, row->provenance);
            pgarray_add_int(&days, row->spec.validity_days);
        }
        jd = json_pack("{s:s,s:s,s:s?,s:i,s:i,s:i,s:s,s:I}", "type", row->spec.type, "group",
                       row->spec.group, "parent", row->spec.parent[0] ? row->spec.parent : NULL,
                       "keys", row->spec.nkeys, "key_bits", row->spec.key_bits, "validity_days",
                       row->spec.validity_days, "provenance", row->provenance, "line",
                       (json_int_t)row->spec.line);
        detail = jd ? json_dumps(jd, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
        json_decref(jd);
        pgarray_add(&aud_ids, row->spec.device_id);
        pgarray_add(&aud_detail, detail ? detail : "{}");
        free(detail);
        count++;
    }
    if (count == 0)
        goto out;
    vals[0] = pgarray_finish(&ids);
    vals[1] = pgarray_finish(&idx);
    vals[2] = pgarray_finish(&alg);
    vals[3] = pgarray_finish(&wrapped);
    vals[4] = pgarray_finish(&mv);
    vals[5] = pgarray_finish(&prov);
    vals[6] = pgarray_finish(&days);
    avals[0] = t->actor;
    avals[1] = "device.registered";
    avals[2] = pgarray_finish(&aud_ids);
    avals[3] = pgarray_finish(&aud_detail);
    for (int i = 0; i < 7; i++)
        if (!vals[i])
            st = DB_ERROR;
    if (st != DB_OK || !avals[2] || !avals[3]) {
        st = DB_ERROR;
        goto out;
    }
    r = db_exec(c, Q_DEVKEY_INSERT_MANY, 7, vals, NULL, NULL, &st);
    if (!r)
        goto out;
    PQclear(r);
    r = db_exec(c, Q_AUDIT_APPEND_MANY, 4, avals, NULL, NULL, &st);
out:
    PQclear(r);
    pgarray_free(&ids); pgarray_free(&idx); pgarray_free(&alg); pgarray_free(&wrapped);
    pgarray_free(&mv); pgarray_free(&prov); pgarray_free(&days);
    pgarray_free(&aud_ids); pgarray_free(&aud_detail);
    return st;
}

static db_status reg_tx_fn(db_conn *c, void *arg)
{
    struct reg_tx *t = arg;
    db_status st;
    /* db_tx may run this again after a serialization failure: start clean. */
    for (int i = 0; i < t->n; i++) {
        t->rows[i].db_code = NULL;
        t->rows[i].db_message[0] = 0;
        t->rows[i].created = false;
    }
    st = resolve_parents(c, t);
    if (st == DB_OK)
        st = insert_pass(c, t, 1);
    if (st == DB_OK) {
        /* Second pass: sub-devices whose gateway is in this batch. */
        for (int i = 0; i < t->n; i++) {
            device_reg *row = &t->rows[i];
            if (t->pass[i] != 2 || !row_ok(row))
                continue;
            for (int j = 0; j < t->n; j++)
                if (!strcmp(t->rows[j].spec.device_id, row->spec.parent) && t->rows[j].created)
                    goto parent_ok;
            row_fail(row, "invalid_parent", "parent '%s' was not registered", row->spec.parent);
        parent_ok:;
        }
        st = insert_pass(c, t, 2);
    }
    if (st == DB_OK)
        st = insert_keys_and_audit(c, t);
    return st;
}

static int load_types(qk_svc *k, PGresult **out, devices_err *e)
{
    db_status st;
    *out = db_query(k->db, Q_DEVTYPE_LIST, 0, NULL, NULL, NULL, &st);
    if (!*out) {
        err_db(e, st);
        return -1;
    }
    return 0;
}

static void free_wrapped(device_reg *rows, int n)
{
    for (int i = 0; i < n; i++)
        for (int j = 0; j < DEVICE_MAX_KEYS; j++) {
            free(rows[i].wrapped_hex[j]);
            rows[i].wrapped_hex[j] = NULL;
        }
}

/* Make and wrap the keys of every row still to register (again). */
static int gen_all_keys(qk_svc *k, device_reg *rows, int n, devices_err *e)
{
    free_wrapped(rows, n);
    for (int i = 0; i < n; i++) {
        device_reg *row = &rows[i];
        if (row->code)
            continue;
        for (int j = 0; j < row->spec.nkeys; j++)
            if (gen_key(k, row->spec.device_id, j, row->spec.key_bits, &row->wrapped_hex[j],
                        &row->master_version[j], &row->provenance, e) != 0)
                return -1;
    }
    return 0;
}

int devices_register(qk_svc *k, const char *actor, device_reg *rows, int n, devices_err *e)
{
    PGresult *types = NULL;
    struct reg_tx t = {k, actor, rows, n, NULL};
    db_status st;
    int rc = -1;

    memset(e, 0, sizeof(*e));
    if (load_types(k, &types, e) != 0)
        return -1;
    for (int i = 0; i < n; i++) {
        device_reg *row = &rows[i];
        bool known = false;
        if (row->code)
            continue;
        for (int j = 0; j < PQntuples(types) && !known; j++)
            known = !strcmp(PQgetvalue(types, j, 0), row->spec.type);
        if (!known) {
            row->code = "invalid_type";
            snprintf(row->message, sizeof(row->message), "unknown device type '%s'", row->spec.type);
            continue;
        }
        if (row->spec.parent[0] && strcmp(row->spec.type, "subdevice") != 0) {
            row->code = "invalid_parent";
            snprintf(row->message, sizeof(row->message), "only a subdevice has a parent");
            continue;
        }
        for (int j = 0; j < i; j++)
            if (!rows[j].code && !strcmp(rows[j].spec.device_id, row->spec.device_id)) {
                row->code = "conflict";
                snprintf(row->message, sizeof(row->message), "device '%s' appears twice in the batch",
                         row->spec.device_id);
                break;
            }
    }
    PQclear(types);

    t.pass = calloc((size_t)n + 1, sizeof(int));
    if (!t.pass) {
        err_set(e, 500, "internal", "out of memory");
        goto out;
    }
    for (int attempt = 0; attempt < 2; attempt++) {
        uint32_t used = keywrap_active(k->kw);
        /* Keys are made and wrapped before the transaction: token calls and
         * entropy do not belong inside a retried database transaction. */
        if (gen_all_keys(k, rows, n, e) != 0)
            goto out;
        st = db_tx(k->db, reg_tx_fn, &t);
        if (!master_moved(k, st, used))
            break;
    }
    if (st != DB_OK) {
        err_db(e, st);
        goto out;
    }
    for (int i = 0; i < n; i++)
        if (rows[i].created)
            log_emit(LOG_INFO, "device registered", "{s:s,s:s,s:s,s:i,s:s}", "device_id",
                     rows[i].spec.device_id, "type", rows[i].spec.type, "group",
                     rows[i].spec.group, "keys", rows[i].spec.nkeys, "by", actor);
    rc = 0;
out:
    free(t.pass);
    free_wrapped(rows, n);
    return rc;
}

/* ---- lifecycle ------------------------------------------------------------- */

struct state_tx {
    const char *actor, *device_id;
    device_action action;
    devices_err *e;
};

static db_status state_tx_fn(db_conn *c, void *arg)
{
    struct state_tx *t = arg;
    const char *vals[2] = {t->device_id, NULL};
    static const char *const target[] = {"suspended", "active", "revoked"};
    static const char *const event[] = {"device.suspended", "device.resumed", "device.revoked"};
    db_status st;
    PGresult *r = db_exec(c, Q_DEVICE_LOCK, 1, vals, NULL, NULL, &st);
    char pk[24], from[16];
    json_t *destroyed = json_array();
    bool ok;

    if (!r)
        goto fail;
    if (PQntuples(r) == 0) {
        PQclear(r);
        err_set(t->e, 404, "not_found", "no device '%s'", t->device_id);
        json_decref(destroyed);
        return DB_NOT_FOUND;
    }
    snprintf(pk, sizeof(pk), "%s", PQgetvalue(r, 0, 0));
    snprintf(from, sizeof(from), "%s", PQgetvalue(r, 0, 1));
    PQclear(r);
    ok = (t->action == DEVICE_SUSPEND && !strcmp(from, "active")) ||
         (t->action == DEVICE_RESUME && !strcmp(from, "suspended")) ||
         (t->action == DEVICE_REVOKE && strcmp(from, "revoked") != 0);
    if (!ok) {
        err_set(t->e, 409, "invalid_state", "device '%s' is %s", t->device_id, from);
        json_decref(destroyed);
        return DB_INVALID;
    }
    vals[0] = pk;
    vals[1] = target[t->action];
    r = db_exec(c, Q_DEVICE_SET_STATE, 2, vals, NULL, NULL, &st);
    if (!r)
        goto fail;
    PQclear(r);
    if (t->action == DEVICE_REVOKE) {
        /* Revocation destroys the key material at once (crypto-shredding);
         * the metadata stays for audit. */
        r = db_exec(c, Q_DEVKEY_DESTROY_ALL, 1, vals, NULL, NULL, &st);
        if (!r)
            goto fail;
        for (int i = 0; i < PQntuples(r); i++)
            json_array_append_new(destroyed, json_integer(atoi(PQgetvalue(r, i, 0))));
        PQclear(r);
        /* ...and ends the device's open sessions, destroying their keys. */
        vals[1] = t->actor;
        r = db_exec(c, Q_SESSIONS_END_FOR_DEVICE, 2, vals, NULL, NULL, &st);
        if (!r)
            goto fail;
        PQclear(r);
    }
    return audit_append(c, t->actor, event[t->action], t->device_id,
                        json_pack("{s:s,s:s,s:o}", "from", from, "to", target[t->action],
                                  "destroyed_keys", destroyed));
fail:
    json_decref(destroyed);
    err_db(t->e, st);
    return st;
}

int devices_set_state(qk_svc *k, const char *actor, const char *device_id, device_action a,
                      devices_err *e)
{
    struct state_tx t = {actor, device_id, a, e};
    db_status st;
    memset(e, 0, sizeof(*e));
    st = db_tx(k->db, state_tx_fn, &t);
    keycache_invalidate(k->keys, device_id);
    if (st != DB_OK) {
        if (!e->status)
            err_db(e, st);
        return -1;
    }
    log_emit(LOG_INFO, a == DEVICE_REVOKE ? "device revoked" : a == DEVICE_SUSPEND ? "device suspended" : "device resumed",
             "{s:s,s:s}", "device_id", device_id, "by", actor);
    return 0;
}

/* ---- rotation -------------------------------------------------------------- */

struct rotate_tx {
    const char *actor, *device_id;
    int index, bits, validity, grace, mv;
    const char *wrapped_hex, *prov;
    bool stale;
    devices_err *e;
};

static db_status rotate_tx_fn(db_conn *c, void *arg)
{
    struct rotate_tx *t = arg;
    const char *vals[7];
    char pk[24], idx[16], mv[16], days[16], grace[16];
    db_status st;
    PGresult *r;
    json_t *retiring = json_array();

    t->stale = false;
    vals[0] = t->device_id;
    r = db_exec(c, Q_DEVICE_LOCK, 1, vals, NULL, NULL, &st);
    if (!r)
        goto fail;
    if (PQntuples(r) == 0) {
        PQclear(r);
        json_decref(retiring);
        err_set(t->e, 404, "not_found", "no device '%s'", t->device_id);
        return DB_NOT_FOUND;
    }
    if (!strcmp(PQgetvalue(r, 0, 1), "revoked")) {
        PQclear(r);
        json_decref(retiring);
        err_set(t->e, 409, "invalid_state", "device '%s' is revoked", t->device_id);
        return DB_INVALID;
    }
    snprintf(pk, sizeof(pk), "%s", PQgetvalue(r, 0, 0));
    PQclear(r);
    r = db_exec(c, Q_DEVKEY_MAX_INDEX, 1, vals, NULL, NULL, &st);
    if (!r)
        goto fail;
    if (atoi(PQgetvalue(r, 0, 0)) + 1 != t->index) {
        /* Another rotation got in first; our key was wrapped for its index. */
        PQclear(r);
        json_decref(retiring);
        t->stale = true;
        return DB_INVALID;
    }
    PQclear(r);
    snprintf(grace, sizeof(grace), "%d", t->grace);
    vals[0] = pk;
    vals[1] = grace;
    r = db_exec(c, Q_DEVKEY_SCHEDULE_RETIRE, 2, vals, NULL, NULL, &st);
    if (!r)
        goto fail;
    for (int i = 0; i < PQntuples(r); i++)
        json_array_append_new(retiring, json_integer(atoi(PQgetvalue(r, i, 0))));
    PQclear(r);
    snprintf(idx, sizeof(idx), "%d", t->index);
    snprintf(mv, sizeof(mv), "%d", t->mv);
    snprintf(days, sizeof(days), "%d", t->validity);
    vals[1] = idx;
    vals[2] = t->bits == 256 ? "AES-256" : "AES-128";
    vals[3] = t->wrapped_hex;
    vals[4] = mv;
    vals[5] = t->prov;
    vals[6] = days;
    r = db_exec(c, Q_DEVKEY_INSERT_ONE, 7, vals, NULL, NULL, &st);
    if (!r)
        goto fail;
    PQclear(r);
    return audit_append(c, t->actor, "device.rotated", t->device_id,
                        json_pack("{s:i,s:i,s:i,s:o,s:s}", "new_index", t->index, "key_bits",
                                  t->bits, "grace_days", t->grace, "retiring", retiring,
                                  "provenance", t->prov));
fail:
    json_decref(retiring);
    err_db(t->e, st);
    return st;
}

int devices_rotate(qk_svc *k, const char *actor, const char *device_id, int grace_days,
                   int key_bits, int validity_days, devices_err *e)
{
    memset(e, 0, sizeof(*e));
    for (int attempt = 0; attempt < 3; attempt++) {
        json_t *rec = NULL, *keys;
        struct rotate_tx t = {actor, device_id, 0, key_bits, validity_days, grace_days, 0,
                              NULL, NULL, false, e};
        char *wrapped = NULL;
        db_status st;
        size_t n;

        if (devices_get(k, device_id, true, false, &rec, e) != 0)
            return -1;
        keys = json_object_get(rec, "keys");
        n = json_array_size(keys);
        t.index = n ? (int)json_integer_value(json_object_get(json_array_get(keys, n - 1), "index")) + 1 : 0;
        if (t.bits <= 0)
            t.bits = n ? alg_bits(json_string_value(json_object_get(json_array_get(keys, n - 1), "algorithm")))
                       : 128;
        json_decref(rec);
        if (t.validity <= 0)
            t.validity = k->cfg->device_key_validity_days;
        if (t.index > DEVICE_MAX_KEY_INDEX) {
            err_set(e, 409, "key_index_exhausted", "device '%s' has used all 256 key indices",
                    device_id);
            return -1;
        }
        if (gen_key(k, device_id, t.index, t.bits, &wrapped, &t.mv, &t.prov, e) != 0)
            return -1;
        t.wrapped_hex = wrapped;
        st = db_tx(k->db, rotate_tx_fn, &t);
        free(wrapped);
        keycache_invalidate(k->keys, device_id);
        if (st == DB_OK) {
            log_emit(LOG_INFO, "device key rotated", "{s:s,s:i,s:s}", "device_id", device_id,
                     "new_index", t.index, "by", actor);
            return 0;
        }
        if (master_moved(k, st, (uint32_t)t.mv)) {
            memset(e, 0, sizeof(*e));
            continue;
        }
        if (!t.stale) {
            if (!e->status)
                err_db(e, st);
            return -1;
        }
    }
    err_set(e, 409, "conflict", "concurrent rotations of '%s'; try again", device_id);
    return -1;
}

/* ---- fill export ------------------------------------------------------------ */

/* A bounded writer into secure memory for the plaintext fill document. */
typedef struct {
    char *buf;
    size_t len, cap;
    bool overflow;
} sbuf;

static void sb_printf(sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(sbuf *b, const char *fmt, ...)
{
    va_list ap;
    int n;
    if (b->overflow)
        return;
    va_start(ap, fmt);
    n = vsnprintf(b->buf + b->len, b->cap - b->len, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= b->cap - b->len)
        b->overflow = true;
    else
        b->len += (size_t)n;
}

/* JSON string body for our restricted identifiers (only '"' needs care). */
static void sb_str(sbuf *b, const char *s)
{
    sb_printf(b, "\"");
    for (; *s; s++)
        sb_printf(b, *s == '"' ? "\\\"" : "%c", *s);
    sb_printf(b, "\"");
}

struct fill_tx {
    qk_svc *k;
    const char *actor, *device_id;
    const int *indices;
    int nindices;
    bool force;
    EVP_PKEY *recipient;
    char fingerprint[65];
    devices_err *e;
    /* outputs */
    sbuf doc;
    int chosen[DEVICE_MAX_KEY_INDEX + 1];
    int nchosen;
    json_t *exported; /* indices, in document order */
    uint8_t *package;
    size_t package_len;
};

static bool want_index(const struct fill_tx *t, int idx)
{
    for (int i = 0; i < t->nindices; i++)
        if (t->indices[i] == idx)
            return true;
    return false;
}

/* Choose the keys to export from Q_DEVICE_KEYS rows; sets t->chosen. */
static int choose_keys(struct fill_tx *t, PGresult *keys)
{
    int live = 0, fresh = 0;
    t->nchosen = 0;
    if (t->nindices > 0) {
        for (int i = 0; i < t->nindices; i++) {
            bool found = false;
            for (int r = 0; r < PQntuples(keys); r++) {
                if (atoi(PQgetvalue(keys, r, 0)) != t->indices[i])
                    continue;
                found = true;
                if (strcmp(PQgetvalue(keys, r, 2), "active") != 0 || PQgetvalue(keys, r, 3)[0] == 't') {
                    err_set(t->e, 422, "no_exportable_keys", "key %d of '%s' is not active", t->indices[i], t->device_id);
                    return -1;
                }
                if (atoi(PQgetvalue(keys, r, 8)) > 0 && !t->force) {
                    err_set(t->e, 409, "already_exported",
                            "key %d of '%s' was exported before; use force to export it again",
                            t->indices[i], t->device_id);
                    return -1;
                }
            }
            if (!found) {
                err_set(t->e, 422, "no_exportable_keys", "device '%s' has no key %d", t->device_id, t->indices[i]);
                return -1;
            }
        }
    }
    for (int r = 0; r < PQntuples(keys); r++) {
        int idx = atoi(PQgetvalue(keys, r, 0));
        bool is_live = !strcmp(PQgetvalue(keys, r, 2), "active") && PQgetvalue(keys, r, 3)[0] != 't';
        bool exported = atoi(PQgetvalue(keys, r, 8)) > 0;
        if (!is_live)
            continue;
        live++;
        fresh += !exported;
        if (t->nindices > 0 ? want_index(t, idx) : (!exported || t->force))
            t->chosen[t->nchosen++] = r;
    }
    if (t->nchosen == 0) {
        if (live > 0 && fresh == 0)
            err_set(t->e, 409, "already_exported",
                    "every live key of '%s' was exported before; use force to export again", t->device_id);
        else
            err_set(t->e, 422, "no_exportable_keys", "device '%s' has no live keys", t->device_id);
        return -1;
    }
    return 0;
}

static void reset_fill_outputs(struct fill_tx *t)
{
    if (t->doc.buf)
        OPENSSL_secure_clear_free(t->doc.buf, t->doc.cap);
    memset(&t->doc, 0, sizeof(t->doc));
    free(t->package);
    t->package = NULL;
    t->package_len = 0;
    json_decref(t->exported);
    t->exported = NULL;
}

static db_status fill_tx_fn(db_conn *c, void *arg)
{
    struct fill_tx *t = arg;
    const char *vals[2] = {t->device_id, NULL};
    db_status st;
    PGresult *dev = NULL, *keys = NULL, *r;
    uint8_t *key = NULL;
    char pk[24], type[DEVICE_TYPE_MAX + 1], group[DEVICE_GROUP_MAX + 1], now[32];
    pgarray idx;
    json_t *jidx = NULL;
    time_t tnow = time(NULL);
    struct tm tm;

    pgarray_init(&idx);
    reset_fill_outputs(t);
    dev = db_exec(c, Q_DEVICE_LOCK, 1, vals, NULL, NULL, &st);
    if (!dev)
        goto dberr;
    if (PQntuples(dev) == 0) {
        err_set(t->e, 404, "not_found", "no device '%s'", t->device_id);
        st = DB_NOT_FOUND;
        goto out;
    }
    if (strcmp(PQgetvalue(dev, 0, 1), "active") != 0) {
        err_set(t->e, 409, "invalid_state", "device '%s' is %s", t->device_id, PQgetvalue(dev, 0, 1));
        st = DB_INVALID;
        goto out;
    }
    snprintf(pk, sizeof(pk), "%s", PQgetvalue(dev, 0, 0));
    snprintf(type, sizeof(type), "%s", PQgetvalue(dev, 0, 2));
    snprintf(group, sizeof(group), "%s", PQgetvalue(dev, 0, 3));
    keys = db_exec(c, Q_DEVICE_KEYS, 1, vals, NULL, NULL, &st);
    if (!keys)
        goto dberr;
    if (choose_keys(t, keys) != 0) {
        st = DB_INVALID;
        goto out;
    }

    t->doc.cap = 1024 + (size_t)t->nchosen * 512;
    t->doc.buf = OPENSSL_secure_malloc(t->doc.cap);
    key = OPENSSL_secure_malloc(KEYWRAP_MAX_KEY + 16);
    if (!t->doc.buf || !key) {
        err_set(t->e, 500, "internal", "out of secure memory");
        st = DB_ERROR;
        goto out;
    }
    gmtime_r(&tnow, &tm);
    strftime(now, sizeof(now), "%Y-%m-%dT%H:%M:%SZ", &tm);
    sb_printf(&t->doc, "{\"format\":\"qkms-fill/1\",\"issuer\":\"qkms\",\"device_id\":");
    sb_str(&t->doc, t->device_id);
    sb_printf(&t->doc, ",\"type\":\"%s\",\"group\":\"%s\",\"created_at\":\"%s\",\"keys\":[", type,
              group, now);
    jidx = json_array();
    for (int i = 0; i < t->nchosen; i++) {
        int r0 = t->chosen[i], index = atoi(PQgetvalue(keys, r0, 0));
        int bits = alg_bits(PQgetvalue(keys, r0, 1));
        char kcv[11], nb[32], na[32];
        size_t kl;
        if (unwrap_key(t->k, t->device_id, index, bits, PQgetvalue(keys, r0, 11), key, &kl, t->e) != 0) {
            st = DB_INVALID;
            goto out;
        }
        device_key_kcv(key, kl, kcv);
        pgjson_rfc3339(PQgetvalue(keys, r0, 4), nb, sizeof(nb));
        pgjson_rfc3339(PQgetvalue(keys, r0, 5), na, sizeof(na));
        sb_printf(&t->doc, "%s{\"index\":%d,\"algorithm\":\"%s\",\"key\":\"", i ? "," : "", index,
                  PQgetvalue(keys, r0, 1));
        for (size_t b = 0; b < kl; b++)
            sb_printf(&t->doc, "%02x", key[b]);
        OPENSSL_cleanse(key, kl);
        sb_printf(&t->doc, "\",\"kcv\":\"%s\",\"not_before\":\"%s\",\"not_after\":\"%s\"}", kcv, nb, na);
        pgarray_add_int(&idx, index);
        json_array_append_new(jidx, json_integer(index));
    }
    sb_printf(&t->doc, "]}");
    if (t->doc.overflow) {
        err_set(t->e, 500, "internal", "fill document too large");
        st = DB_ERROR;
        goto out;
    }
    if (t->recipient) {
        char why[128];
        if (fillpkg_seal(t->recipient, (const uint8_t *)t->doc.buf, t->doc.len, &t->package,
                         &t->package_len, why, sizeof(why)) != 0) {
            log_emit(LOG_ERROR, "fill package sealing failed", "{s:s}", "error", why);
            err_set(t->e, 500, "internal", "sealing the fill package failed");
            st = DB_ERROR;
            goto out;
        }
    }
    vals[0] = pk;
    vals[1] = pgarray_finish(&idx);
    r = db_exec(c, Q_DEVKEY_MARK_EXPORTED, 2, vals, NULL, NULL, &st);
    if (!r)
        goto dberr;
    PQclear(r);
    st = audit_append(c, t->actor, "device.fill_exported", t->device_id,
                      json_pack("{s:O,s:s,s:s?,s:b}", "indices", jidx, "mode",
                                t->recipient ? "sealed" : "plaintext", "recipient_fingerprint",
                                t->recipient ? t->fingerprint : NULL, "forced", t->force));
    if (st != DB_OK)
        goto dberr;
    t->exported = json_incref(jidx);
    goto out;
dberr:
    err_db(t->e, st);
out:
    if (key)
        OPENSSL_secure_clear_free(key, KEYWRAP_MAX_KEY + 16);
    json_decref(jidx);
    pgarray_free(&idx);
    PQclear(dev);
    PQclear(keys);
    return st;
}

int devices_fill(qk_svc *k, const char *actor, const char *device_id, EVP_PKEY *recipient,
                 const int *indices, int nindices, bool force, json_t **out, char **plaintext,
                 size_t *plaintext_len, devices_err *e)
{
    struct fill_tx *t = calloc(1, sizeof(*t));
    db_status st;
    int rc = -1;

    memset(e, 0, sizeof(*e));
    *out = NULL;
    if (plaintext)
        *plaintext = NULL;
    if (!t || (!recipient && !plaintext)) {
        err_set(e, 500, "internal", "out of memory");
        return -1;
    }
    t->k = k;
    t->actor = actor;
    t->device_id = device_id;
    t->indices = indices;
    t->nindices = nindices;
    t->force = force;
    t->recipient = recipient;
    t->e = e;
    if (recipient && fillpkg_fingerprint(recipient, t->fingerprint) != 0) {
        err_set(e, 422, "invalid_recipient_key", "cannot encode the recipient key");
        goto out;
    }
    st = db_tx(k->db, fill_tx_fn, t);
    if (st != DB_OK) {
        if (!e->status)
            err_db(e, st);
        goto out;
    }
    if (recipient) {
        size_t b64len = 4 * ((t->package_len + 2) / 3) + 1;
        char *b64 = malloc(b64len);
        if (!b64) {
            err_set(e, 500, "internal", "out of memory");
            goto out;
        }
        EVP_EncodeBlock((unsigned char *)b64, t->package, (int)t->package_len);
        *out = json_pack("{s:s,s:s,s:O,s:s,s:s}", "device_id", device_id, "format", "qkms-fill/1",
                         "indices", t->exported, "recipient_fingerprint", t->fingerprint,
                         "package", b64);
        free(b64);
    } else {
        /* Handed over as bytes in secure memory: jansson never holds the keys. */
        *plaintext = OPENSSL_secure_malloc(t->doc.len + 1);
        if (!*plaintext) {
            err_set(e, 500, "internal", "out of secure memory");
            goto out;
        }
        memcpy(*plaintext, t->doc.buf, t->doc.len);
        (*plaintext)[t->doc.len] = 0;
        *plaintext_len = t->doc.len;
        *out = json_pack("{s:s,s:s,s:O}", "device_id", device_id, "format", "qkms-fill/1",
                         "indices", t->exported);
    }
    log_emit(LOG_INFO, "device keys exported", "{s:s,s:s,s:i,s:b,s:s}", "device_id", device_id,
             "mode", recipient ? "sealed" : "plaintext", "keys", t->nchosen, "forced", force, "by",
             actor);
    rc = 0;
out:
    reset_fill_outputs(t);
    free(t);
    return rc;
}

/* ---- device types ------------------------------------------------------------ */

int device_types_list(qk_svc *k, json_t **out, devices_err *e)
{
    PGresult *r = NULL;
    json_t *arr;
    memset(e, 0, sizeof(*e));
    if (load_types(k, &r, e) != 0)
        return -1;
    arr = json_array();
    for (int i = 0; i < PQntuples(r); i++)
        json_array_append_new(arr, json_string(PQgetvalue(r, i, 0)));
    PQclear(r);
    *out = json_pack("{s:o}", "types", arr);
    return 0;
}

struct type_tx {
    const char *actor, *name;
};

static db_status type_tx_fn(db_conn *c, void *arg)
{
    struct type_tx *t = arg;
    const char *vals[1] = {t->name};
    db_status st;
    PGresult *r = db_exec(c, Q_DEVTYPE_INSERT, 1, vals, NULL, NULL, &st);
    if (!r)
        return st;
    PQclear(r);
    return audit_append(c, t->actor, "device_type.added", NULL, json_pack("{s:s}", "name", t->name));
}

int device_types_add(qk_svc *k, const char *actor, const char *name, devices_err *e)
{
    struct type_tx t = {actor, name};
    db_status st;
    memset(e, 0, sizeof(*e));
    st = db_tx(k->db, type_tx_fn, &t);
    if (st == DB_CONFLICT) {
        err_set(e, 409, "conflict", "device type '%s' exists", name);
        return -1;
    }
    if (st != DB_OK) {
        err_db(e, st);
        return -1;
    }
    return 0;
}
