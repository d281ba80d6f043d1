/*
 * firmware_groups — groups' firmware keys (firmware_groups.h): made and
 * wrapped before the transaction, recorded with their audit row under the
 * group's advisory lock, unwrapped for a fill or a signature inside the
 * caller's.
 */
#include "service/firmware_groups.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

#include "hexutil.h"
#include "service/audit.h"
#include "service/device_keys.h"
#include "service/device_model.h"
#include "store/pgjson.h"
#include "store/queries.h"

#define WRAPPED_MAX (32 + KEYWRAP_OVERHEAD)

int firmware_group_key_context(const char *group, const char *key_id_hex, char *out, size_t len)
{
    int n = snprintf(out, len, "qkms-fw-group:%s:%s", group, key_id_hex);
    return n < 0 || (size_t)n >= len ? -1 : 0;
}

static qk_kind bad_group(qk_err *e)
{
    return qk_fail(e, QK_INVALID, "invalid_group",
                   "group must be 1-64 of A-Z a-z 0-9 . _ -, starting with a letter or digit");
}

static json_t *key_json(const PGresult *r, int i)
{
    return json_pack("{s:o,s:o,s:o,s:i,s:o,s:o,s:o}", "group", pgjson_text(r, i, 0), "key_id",
                     pgjson_text(r, i, 1), "state", pgjson_text(r, i, 2), "master_version",
                     atoi(PQgetvalue(r, i, 3)), "created_at", pgjson_time(r, i, 4), "created_by",
                     pgjson_text(r, i, 5), "superseded_at", pgjson_time(r, i, 6));
}

qk_kind firmware_groups_list(qk_svc *s, const char *group, json_t **out, qk_err *e)
{
    const char *vals[1] = {group};
    db_status st;
    PGresult *r;

    *out = NULL;
    if (group && !device_group_valid(group))
        return bad_group(e);
    if (!(r = db_query(s->db, Q_FWG_LIST, 1, vals, NULL, NULL, &st)))
        return db_fail(e, st);
    *out = json_pack("{s:o}", "keys", pgjson_rows(r, key_json));
    PQclear(r);
    return *out ? QK_OK : qk_fail(e, QK_INTERNAL, "internal", "out of memory");
}

/* ---- create, rotate, destroy ---------------------------------------------- */

typedef enum { FWG_CREATE, FWG_ROTATE, FWG_DESTROY } fwg_op;

typedef struct {
    qk_svc *s;
    const qk_principal *who;
    const char *group;
    fwg_op op;
    char key_id[33];    /* the new key's (create, rotate) or the one to destroy */
    char *wrapped;      /* hex, the new key's */
    int master_version; /* that wrapped it */
    char superseded[33];
    qk_err *e;
    bool refused;
} fwg_tx;

static db_status refuse(fwg_tx *t, qk_kind kind, const char *code, const char *msg)
{
    qk_fail(t->e, kind, code, "%s", msg);
    t->refused = true;
    return DB_OK; /* nothing written: the transaction commits empty */
}

static db_status fwg_tx_fn(db_conn *c, void *arg)
{
    fwg_tx *t = arg;
    const char *gv[1] = {t->group};
    PGresult *r = NULL;
    db_status st;
    int n;
    bool active;
    char msg[200];

    qk_clear(t->e);
    t->refused = false;
    t->superseded[0] = 0;
    if (!(r = db_exec(c, Q_FWG_LOCK, 1, gv, NULL, NULL, &st)))
        goto out;
    PQclear(r);
    if (!(r = db_exec(c, Q_FWG_KEYS, 1, gv, NULL, NULL, &st)))
        goto out;
    n = PQntuples(r);
    active = n > 0 && !strcmp(PQgetvalue(r, 0, 2), "active");
    if (t->op == FWG_CREATE && n > 0) {
        snprintf(msg, sizeof(msg), "group '%s' has a firmware key: rotate it", t->group);
        st = refuse(t, QK_CONFLICT, "conflict", msg);
        goto out;
    }
    if (t->op != FWG_CREATE && !active) {
        snprintf(msg, sizeof(msg), "group '%s' has no firmware key", t->group);
        st = refuse(t, QK_NOT_FOUND, "not_found", msg);
        goto out;
    }
    if (t->op == FWG_ROTATE && n >= FIRMWARE_GROUP_MAX_KEYS) {
        snprintf(msg, sizeof(msg),
                 "group '%s' has %d keys, the most packages are wrapped for: destroy a previous "
                 "one first",
                 t->group, FIRMWARE_GROUP_MAX_KEYS);
        st = refuse(t, QK_CONFLICT, "too_many_keys", msg);
        goto out;
    }
    if (t->op == FWG_DESTROY) {
        const char *dv[2] = {t->group, t->key_id};
        PGresult *d;
        if (!strcmp(PQgetvalue(r, 0, 0), t->key_id)) {
            snprintf(msg, sizeof(msg), "key %s is the group's active key: rotate first",
                     t->key_id);
            st = refuse(t, QK_CONFLICT, "key_active", msg);
            goto out;
        }
        if (!(d = db_exec(c, Q_FWG_DELETE, 2, dv, NULL, NULL, &st)))
            goto out;
        n = PQntuples(d);
        PQclear(d);
        if (n == 0) {
            snprintf(msg, sizeof(msg), "group '%s' has no previous key %s", t->group, t->key_id);
            st = refuse(t, QK_NOT_FOUND, "not_found", msg);
            goto out;
        }
        st = audit_append(c, t->who->name, "firmware.group_key_destroyed", NULL,
                          json_pack("{s:s,s:s}", "group", t->group, "key_id", t->key_id));
        goto out;
    }
    if (t->op == FWG_ROTATE) {
        PGresult *u = db_exec(c, Q_FWG_SUPERSEDE, 1, gv, NULL, NULL, &st);
        if (!u)
            goto out;
        if (PQntuples(u) == 1)
            snprintf(t->superseded, sizeof(t->superseded), "%s", PQgetvalue(u, 0, 0));
        PQclear(u);
    }
    {
        char mv[16];
        const char *iv[5] = {t->group, t->key_id, t->wrapped, mv, t->who->name};
        PGresult *ins;
        snprintf(mv, sizeof(mv), "%d", t->master_version);
        if (!(ins = db_exec(c, Q_FWG_INSERT, 5, iv, NULL, NULL, &st)))
            goto out;
        PQclear(ins);
    }
    st = audit_append(c, t->who->name,
                      t->op == FWG_CREATE ? "firmware.group_key_created"
                                          : "firmware.group_key_rotated",
                      NULL,
                      json_pack("{s:s,s:s,s:s?}", "group", t->group, "key_id", t->key_id,
                                "superseded", t->superseded[0] ? t->superseded : NULL));
out:
    PQclear(r);
    if (st != DB_OK && !t->refused && t->e->kind == QK_OK)
        db_fail(t->e, st);
    return st;
}

/* A new key and its ID from the entropy interface, the key wrapped under
 * the active master key into t->wrapped. */
static qk_kind make_key(fwg_tx *t)
{
    uint8_t *key = OPENSSL_secure_malloc(32), id[16], wrapped[WRAPPED_MAX];
    size_t wl = sizeof(wrapped);
    char ctx[160];
    const char *prov = NULL;
    qk_kind k = QK_INTERNAL;
    CK_RV rv;

    free(t->wrapped);
    t->wrapped = NULL;
    if (!key)
        return qk_fail(t->e, QK_INTERNAL, "internal", "out of secure memory");
    if (entropy_get(t->s->ent, key, 32, &prov) != 0 || entropy_get(t->s->ent, id, 16, &prov) != 0) {
        k = qk_fail(t->e, QK_UNAVAILABLE, "entropy_unavailable", "no entropy source may serve now");
        t->e->retry_after = 1;
        goto out;
    }
    qkms_hex_encode(id, 16, t->key_id);
    firmware_group_key_context(t->group, t->key_id, ctx, sizeof(ctx));
    if ((rv = keywrap_wrap(t->s->kw, (const uint8_t *)ctx, strlen(ctx), key, 32, wrapped, &wl)) !=
        CKR_OK) {
        k = qk_from_token(t->e, rv, "wrapping a group firmware key");
        goto out;
    }
    t->master_version = (int)keywrap_blob_version(wrapped, wl);
    if (!(t->wrapped = malloc(2 * wl + 1))) {
        k = qk_fail(t->e, QK_INTERNAL, "internal", "out of memory");
        goto out;
    }
    qkms_hex_encode(wrapped, wl, t->wrapped);
    k = QK_OK;
out:
    OPENSSL_secure_clear_free(key, 32);
    return k;
}

static qk_kind run(qk_svc *s, const qk_principal *who, const char *group, fwg_op op,
                   const char *key_id, json_t **out, qk_err *e)
{
    fwg_tx t = {.s = s, .who = who, .group = group, .op = op, .e = e};
    db_status st = DB_OK;
    qk_kind k;

    qk_clear(e);
    if (out)
        *out = NULL;
    if (!device_group_valid(group))
        return bad_group(e);
    if (op == FWG_DESTROY) {
        uint8_t id[16];
        if (!key_id || strlen(key_id) != 32 || qkms_hex_decode(key_id, 32, id, 16) != 16)
            return qk_fail(e, QK_INVALID, "invalid_key_id", "a key ID is 32 hex digits");
        for (int i = 0; i < 32; i++) /* as the database writes it */
            t.key_id[i] = (char)(key_id[i] >= 'A' && key_id[i] <= 'F' ? key_id[i] + 32 : key_id[i]);
    }
    for (int attempt = 0; attempt < 2; attempt++) {
        if (op != FWG_DESTROY && (k = make_key(&t)) != QK_OK)
            goto out;
        st = db_tx(s->db, fwg_tx_fn, &t);
        /* Another instance retired the version we wrapped under: once more. */
        if (op == FWG_DESTROY || !device_keys_master_moved(s, st, (uint32_t)t.master_version))
            break;
    }
    if (st != DB_OK || t.refused) {
        k = t.refused || e->kind != QK_OK ? e->kind : db_fail(e, st);
        goto out;
    }
    log_with(&who->log, LOG_INFO,
             op == FWG_CREATE   ? "group firmware key created"
             : op == FWG_ROTATE ? "group firmware key rotated"
                                : "group firmware key destroyed",
             "{s:s,s:s}", "group", group, "key_id", t.key_id);
    k = QK_OK;
    if (out) {
        const char *vals[1] = {group};
        PGresult *r = db_query(s->db, Q_FWG_LIST, 1, vals, NULL, NULL, &st);
        /* the active key is the group's first row */
        *out = r && PQntuples(r) > 0 ? key_json(r, 0) : NULL;
        PQclear(r);
        if (!*out)
            k = r ? qk_fail(e, QK_INTERNAL, "internal", "out of memory") : db_fail(e, st);
    }
out:
    free(t.wrapped);
    return k;
}

qk_kind firmware_groups_create(qk_svc *s, const qk_principal *who, const char *group,
                               json_t **out, qk_err *e)
{
    return run(s, who, group, FWG_CREATE, NULL, out, e);
}

qk_kind firmware_groups_rotate(qk_svc *s, const qk_principal *who, const char *group,
                               json_t **out, qk_err *e)
{
    return run(s, who, group, FWG_ROTATE, NULL, out, e);
}

qk_kind firmware_groups_destroy(qk_svc *s, const qk_principal *who, const char *group,
                                const char *key_id_hex, qk_err *e)
{
    return run(s, who, group, FWG_DESTROY, key_id_hex, NULL, e);
}

/* ---- for fills and signatures ------------------------------------------------ */

db_status firmware_group_keys_get(qk_svc *s, db_conn *c, const char *group, size_t max,
                                  uint8_t *keys, size_t *n, qk_err *e)
{
    const char *gv[1] = {group};
    db_status st;
    PGresult *r = db_exec(c, Q_FWG_KEYS, 1, gv, NULL, NULL, &st);
    uint8_t blob[WRAPPED_MAX], *tmp = OPENSSL_secure_malloc(KEYWRAP_MAX_KEY + 16);
    char ctx[160];

    *n = 0;
    if (!r || !tmp) {
        OPENSSL_secure_free(tmp);
        PQclear(r);
        if (r)
            return qk_fail(e, QK_INTERNAL, "internal", "out of secure memory"), DB_ERROR;
        db_fail(e, st);
        return st;
    }
    for (int i = 0; i < PQntuples(r) && (size_t)i < max; i++) {
        const char *kid = PQgetvalue(r, i, 0), *hx = PQgetvalue(r, i, 1);
        uint8_t *dst = keys + FIRMWARE_GROUP_ENTRY * i;
        long bl = qkms_hex_decode(hx, strlen(hx), blob, sizeof(blob));
        size_t kl = KEYWRAP_MAX_KEY + 16;
        CK_RV rv;
        firmware_group_key_context(group, kid, ctx, sizeof(ctx));
        if (bl <= 0 || qkms_hex_decode(kid, 32, dst + 32, 16) != 16) {
            qk_fail(e, QK_INTERNAL, "internal", "a stored group firmware key is malformed");
            st = DB_ERROR;
            break;
        }
        rv = keywrap_unwrap(s->kw, (const uint8_t *)ctx, strlen(ctx), blob, (size_t)bl, tmp, &kl);
        if (rv == CKR_OK && kl == 32)
            memcpy(dst, tmp, 32);
        OPENSSL_cleanse(tmp, KEYWRAP_MAX_KEY + 16);
        if (rv != CKR_OK || kl != 32) {
            if (rv != CKR_OK && p11_rv_kind(rv) == P11_KIND_DATA)
                log_emit(LOG_ERROR, "stored group firmware key failed authentication",
                         "{s:s,s:s}", "group", group, "key_id", kid);
            qk_from_token(e, rv != CKR_OK ? rv : CKR_WRAPPED_KEY_INVALID,
                          "unwrap a group firmware key");
            OPENSSL_cleanse(dst, FIRMWARE_GROUP_ENTRY);
            st = DB_ERROR;
            break;
        }
        *n = (size_t)i + 1;
    }
    PQclear(r);
    OPENSSL_secure_clear_free(tmp, KEYWRAP_MAX_KEY + 16);
    if (st != DB_OK) {
        OPENSSL_cleanse(keys, FIRMWARE_GROUP_ENTRY * max);
        *n = 0;
    }
    return st;
}
