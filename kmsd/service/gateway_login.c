/*
 * gateway_login — gateway accounts, login and logout (gateway_login.h).
 * The login's key is a platform-peer session made by sessions_issue; the
 * account's state (failures, lock, the current login) is the stored
 * functions' of schema/020_gateway_login.sql.
 */
#include "service/gateway_login.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

#include "hexutil.h"
#include "log.h"
#include "qkms_proto.h"
#include "service/audit.h"
#include "service/keycache.h"
#include "service/password.h"
#include "service/session_id.h"
#include "store/queries.h"

bool gateway_tid_valid(const char *tid)
{
    size_t n = tid ? strlen(tid) : 0;
    if (n == 0 || n > GATEWAY_TID_MAX)
        return false;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)tid[i] < 0x21 || (unsigned char)tid[i] > 0x7e)
            return false;
    return true;
}

/* The request's principal must be its device, under an access key. */
static qk_kind login_principal(qk_svc *s, const qk_principal *who, device_auth *a, qk_err *e)
{
    if (!who || who->kind != QK_PRINCIPAL_DEVICE || !who->name || !a->key ||
        strcmp(who->name, a->device_id) != 0) {
        log_emit(LOG_ERROR, "gateway login without its device", NULL);
        return qk_fail(e, QK_INTERNAL, "internal", "internal error (see kmsd log)");
    }
    if (strcmp(a->purpose, "access") != 0)
        return device_auth_fail(s, &who->log, a->device_id, a->key_index,
                                "a login or logout not under an access key", e);
    return QK_OK;
}

typedef struct {
    bool found, locked;
    char tid[GATEWAY_TID_MAX + 1];
    password_cost cost;
    uint8_t salt[PASSWORD_SALT_LEN], hash[PASSWORD_HASH_LEN];
} credential;

static qk_kind load_credential(qk_svc *s, const device_auth *a, credential *c, qk_err *e)
{
    char pk[24];
    const char *vals[1] = {pk};
    db_status st;
    PGresult *r;

    memset(c, 0, sizeof(*c));
    snprintf(pk, sizeof(pk), "%lld", a->device_pk);
    if (!(r = db_query(s->db, Q_GW_CRED_GET, 1, vals, NULL, NULL, &st)))
        return db_fail(e, st);
    if (PQntuples(r) == 1) {
        c->found = true;
        snprintf(c->tid, sizeof(c->tid), "%s", PQgetvalue(r, 0, 0));
        c->cost.n = strtoull(PQgetvalue(r, 0, 1), NULL, 10);
        c->cost.r = (uint32_t)atoi(PQgetvalue(r, 0, 2));
        c->cost.p = (uint32_t)atoi(PQgetvalue(r, 0, 3));
        c->locked = !strcmp(PQgetvalue(r, 0, 6), "t");
        if (qkms_hex_decode(PQgetvalue(r, 0, 4), strlen(PQgetvalue(r, 0, 4)), c->salt,
                            sizeof(c->salt)) != PASSWORD_SALT_LEN ||
            qkms_hex_decode(PQgetvalue(r, 0, 5), strlen(PQgetvalue(r, 0, 5)), c->hash,
                            sizeof(c->hash)) != PASSWORD_HASH_LEN) {
            PQclear(r);
            return qk_fail(e, QK_INTERNAL, "internal", "internal error (see kmsd log)");
        }
    }
    PQclear(r);
    return QK_OK;
}

/* Why the account refuses the login ("no_credential", "locked", "wrong"),
 * or NULL; -1 in *err when the hash could not be computed. */
static const char *judge(const credential *c, const login_ask *ask, int *err)
{
    int ok;
    *err = 0;
    if (!c->found)
        return "no_credential";
    if (c->locked)
        return "locked";
    /* The hash is computed for a wrong tid too: the time does not say which. */
    ok = password_check(ask->password, ask->password_len, &c->cost, c->salt, c->hash);
    if (ok < 0) {
        *err = -1;
        return NULL;
    }
    return ok == 1 && !strcmp(c->tid, ask->tid) ? NULL : "wrong";
}

/* Record a refused login (its nonce first) and answer it. */
static qk_kind refuse(qk_svc *s, const qk_principal *who, device_auth *a, const login_ask *ask,
                      const char *why, qk_err *e)
{
    char pk[24], kidx[8], ts[24], skew[16], maxf[16], lock[16];
    const char *vals[8] = {pk, kidx, (const char *)a->nonce, ts, skew, why, maxf, lock};
    int lens[8] = {0, 0, QKP_NONCE_LEN, 0, 0, 0, 0, 0}, fmts[8] = {0, 0, 1, 0, 0, 0, 0, 0};
    const char *outcome;
    db_status st;
    PGresult *r;
    qk_kind k;
    int retry;

    snprintf(pk, sizeof(pk), "%lld", a->device_pk);
    snprintf(kidx, sizeof(kidx), "%d", a->key_index);
    snprintf(ts, sizeof(ts), "%lld", (long long)ask->ts);
    snprintf(skew, sizeof(skew), "%d", s->cfg->protocol_clock_skew);
    snprintf(maxf, sizeof(maxf), "%d", s->cfg->gateway_login_max_failures);
    snprintf(lock, sizeof(lock), "%d", s->cfg->gateway_login_lockout);
    if (!(r = db_query(s->db, Q_GW_LOGIN_REFUSED, 8, vals, lens, fmts, &st)))
        return db_fail(e, st);
    outcome = PQgetvalue(r, 0, 0);
    retry = PQgetisnull(r, 0, 1) ? 0 : atoi(PQgetvalue(r, 0, 1));
    if (!strcmp(outcome, "replay")) {
        a->replayed = true;
        k = device_auth_fail(s, &who->log, a->device_id, a->key_index,
                             "nonce already used (replay)", e);
    } else if (!strcmp(outcome, "stale")) {
        k = device_auth_fail(s, &who->log, a->device_id, a->key_index,
                             "timestamp outside the clock window", e);
    } else if (!strcmp(outcome, "unauthenticated")) {
        keycache_invalidate(s->keys, a->device_id);
        k = device_auth_fail(s, &who->log, a->device_id, a->key_index,
                             "the database refused the key", e);
    } else if (!strcmp(outcome, "device_inactive")) {
        k = qk_fail(e, QK_FORBIDDEN, "device_inactive", "this device is not active");
    } else if (!strcmp(outcome, "service_expired")) {
        k = qk_fail(e, QK_FORBIDDEN, "service_expired", "this device's service has ended");
    } else if (!strcmp(outcome, "no_credential")) {
        k = qk_fail(e, QK_FORBIDDEN, "no_credential",
                    "this gateway has no login account (kmsctl device credential)");
    } else if (!strcmp(outcome, "locked") || !strcmp(outcome, "locked_now")) {
        k = qk_fail(e, QK_FORBIDDEN, "login_locked",
                    "too many wrong passwords: the account is locked for %d s", retry);
        e->retry_after = retry > 0 ? retry : 1;
    } else if (!strcmp(outcome, "failed")) {
        k = qk_fail(e, QK_UNAUTHENTICATED, "login_failed", "wrong tid or password");
    } else {
        log_with(&who->log, LOG_ERROR, "unexpected login outcome", "{s:s}", "outcome", outcome);
        k = qk_fail(e, QK_INTERNAL, "internal", "internal error (see kmsd log)");
    }
    if (k != QK_INTERNAL && strcmp(outcome, "replay") && strcmp(outcome, "stale") &&
        strcmp(outcome, "unauthenticated"))
        log_with(&who->log, LOG_WARN, "gateway login refused", "{s:s,s:s}", "device_id",
                 a->device_id, "reason", outcome);
    PQclear(r);
    return k;
}

static void destroy_login(qk_svc *s, const char *hash_hex, const char *reason, const char *actor)
{
    const char *vals[3] = {hash_hex, reason, actor};
    db_status st;
    PQclear(db_query(s->db, Q_SESSION_DESTROY_BY_HASH, 3, vals, NULL, NULL, &st));
}

qk_kind gateway_login(qk_svc *s, const qk_principal *who, device_auth *a, const login_ask *ask,
                      char login_id[37], session_grant *g, qk_err *e)
{
    session_ask sa = {0};
    credential c;
    uint8_t hash[32];
    char hash_hex[65], pk[24];
    const char *why, *vals[3] = {pk, (const char *)hash, login_id};
    int lens[3] = {0, 32, 0}, fmts[3] = {0, 1, 0}, err;
    db_status st;
    PGresult *r;
    qk_kind k;

    memset(g, 0, sizeof(*g));
    if ((k = login_principal(s, who, a, e)) != QK_OK ||
        (k = load_credential(s, a, &c, e)) != QK_OK)
        goto out;
    why = judge(&c, ask, &err);
    if (err) {
        k = qk_fail(e, QK_INTERNAL, "internal", "internal error (see kmsd log)");
        log_with(&who->log, LOG_ERROR, "password hash failed", "{s:s}", "device_id", a->device_id);
        goto out;
    }
    if (why) {
        k = refuse(s, who, a, ask, why, e);
        goto out;
    }
    if (uuid4_text(login_id) != 0 || session_hash(login_id, hash) != 0) {
        k = qk_fail(e, QK_UNAVAILABLE, "entropy_unavailable", "the RNG failed; retry later");
        e->retry_after = 1;
        goto out;
    }
    sa.session_id = login_id;
    sa.platform_peer = true;
    sa.key_source = 'c'; /* the platform's entropy: the key itself in the answer */
    sa.ts = ask->ts;
    if ((k = sessions_issue(s, who, a, &sa, g, e)) != QK_OK)
        goto out;
    snprintf(pk, sizeof(pk), "%lld", a->device_pk);
    r = db_query(s->db, Q_GW_LOGIN_DONE, 3, vals, lens, fmts, &st);
    qkms_hex_encode(hash, sizeof(hash), hash_hex);
    if (!r || strcmp(PQgetvalue(r, 0, 0), "t") != 0) {
        /* The account changed under the login (locked, replaced): the new
         * key must not outlive this refusal. */
        k = r ? qk_fail(e, QK_FORBIDDEN, "login_locked", "the account changed; log in again")
              : db_fail(e, st);
        destroy_login(s, hash_hex, "ended_by_operator", "kmsd");
        PQclear(r);
        session_grant_clear(g);
        goto out;
    }
    PQclear(r);
    log_with(&who->log, LOG_INFO, "gateway logged in", "{s:s,s:s,s:s}", "device_id",
             a->device_id, "login_id", login_id, "key_id", g->key_id);
    k = QK_OK;
out:
    OPENSSL_cleanse(&c, sizeof(c));
    return k;
}

qk_kind gateway_logout(qk_svc *s, const qk_principal *who, device_auth *a, int64_t ts, qk_err *e)
{
    char pk[24], kidx[8], sts[24], skew[16];
    const char *vals[5] = {pk, kidx, (const char *)a->nonce, sts, skew}, *outcome;
    int lens[5] = {0, 0, QKP_NONCE_LEN, 0, 0}, fmts[5] = {0, 0, 1, 0, 0};
    db_status st;
    PGresult *r;
    qk_kind k;

    if ((k = login_principal(s, who, a, e)) != QK_OK)
        return k;
    snprintf(pk, sizeof(pk), "%lld", a->device_pk);
    snprintf(kidx, sizeof(kidx), "%d", a->key_index);
    snprintf(sts, sizeof(sts), "%lld", (long long)ts);
    snprintf(skew, sizeof(skew), "%d", s->cfg->protocol_clock_skew);
    if (!(r = db_query(s->db, Q_GW_LOGOUT, 5, vals, lens, fmts, &st)))
        return db_fail(e, st);
    outcome = PQgetvalue(r, 0, 0);
    if (!strcmp(outcome, "ok")) {
        log_with(&who->log, LOG_INFO, "gateway logged out", "{s:s}", "device_id", a->device_id);
        k = QK_OK;
    } else if (!strcmp(outcome, "no_login")) {
        k = qk_fail(e, QK_NOT_FOUND, "no_login", "this gateway has no live login");
    } else if (!strcmp(outcome, "replay")) {
        a->replayed = true;
        k = device_auth_fail(s, &who->log, a->device_id, a->key_index,
                             "nonce already used (replay)", e);
    } else if (!strcmp(outcome, "stale")) {
        k = device_auth_fail(s, &who->log, a->device_id, a->key_index,
                             "timestamp outside the clock window", e);
    } else {
        keycache_invalidate(s->keys, a->device_id);
        k = device_auth_fail(s, &who->log, a->device_id, a->key_index,
                             "the database refused the key", e);
    }
    PQclear(r);
    return k;
}

struct cred_tx {
    const char *actor, *device_id, *tid, *n, *r, *p, *salt, *hash;
    char old_login[65];
    qk_err *e;
};

static db_status cred_tx_fn(db_conn *c, void *arg)
{
    struct cred_tx *t = arg;
    const char *vals[7] = {t->device_id};
    char pk[24];
    db_status st;
    PGresult *r;

    qk_clear(t->e);
    t->old_login[0] = 0;
    if (!(r = db_exec(c, Q_DEVICE_LOCK, 1, vals, NULL, NULL, &st)))
        return st;
    if (PQntuples(r) == 0) {
        PQclear(r);
        qk_fail(t->e, QK_NOT_FOUND, "not_found", "no device '%s'", t->device_id);
        return DB_NOT_FOUND;
    }
    if (!strcmp(PQgetvalue(r, 0, 1), "revoked")) {
        PQclear(r);
        qk_fail(t->e, QK_CONFLICT, "invalid_state", "device '%s' is revoked", t->device_id);
        return DB_INVALID;
    }
    snprintf(pk, sizeof(pk), "%s", PQgetvalue(r, 0, 0));
    PQclear(r);
    vals[0] = pk;
    vals[1] = t->tid;
    vals[2] = t->n;
    vals[3] = t->r;
    vals[4] = t->p;
    vals[5] = t->salt;
    vals[6] = t->hash;
    if (!(r = db_exec(c, Q_GW_CRED_LOGIN, 1, vals, NULL, NULL, &st)))
        return st;
    if (PQntuples(r) == 1)
        snprintf(t->old_login, sizeof(t->old_login), "%s", PQgetvalue(r, 0, 0));
    PQclear(r);
    if (!(r = db_exec(c, Q_GW_CRED_SET, 7, vals, NULL, NULL, &st)))
        return st;
    PQclear(r);
    if (t->old_login[0]) {
        const char *dv[3] = {t->old_login, "ended_by_operator", t->actor};
        if (!(r = db_exec(c, Q_SESSION_DESTROY_BY_HASH, 3, dv, NULL, NULL, &st)))
            return st;
        PQclear(r);
    }
    return audit_append(c, t->actor, "gateway.credential_set", t->device_id,
                        json_pack("{s:s,s:s,s:b}", "tid", t->tid, "kdf", "scrypt",
                                  "ended_login", t->old_login[0] != 0));
}

qk_kind gateway_credential_set(qk_svc *s, const qk_principal *who, const char *device_id,
                               const char *tid, const uint8_t *password, size_t password_len,
                               qk_err *e)
{
    password_cost cost = {(uint64_t)1 << s->cfg->gateway_password_scrypt_log2n, 8, 1};
    uint8_t salt[PASSWORD_SALT_LEN], hash[PASSWORD_HASH_LEN];
    char n[24], salt_hex[2 * PASSWORD_SALT_LEN + 1], hash_hex[2 * PASSWORD_HASH_LEN + 1];
    struct cred_tx t = {who->name, device_id, tid, n, "8", "1", salt_hex, hash_hex, "", e};
    db_status st;
    qk_kind k;

    qk_clear(e);
    if (!gateway_tid_valid(tid))
        return qk_fail(e, QK_INVALID, "invalid_credential",
                       "tid must be 1-64 printable ASCII characters without spaces");
    if (password_len < PASSWORD_MIN || password_len > PASSWORD_MAX ||
        memchr(password, 0, password_len))
        return qk_fail(e, QK_INVALID, "invalid_credential",
                       "password must be %d to %d bytes, without NUL", PASSWORD_MIN,
                       PASSWORD_MAX);
    if (password_hash(password, password_len, &cost, salt, hash) != 0)
        return qk_fail(e, QK_INTERNAL, "internal", "internal error (see kmsd log)");
    snprintf(n, sizeof(n), "%llu", (unsigned long long)cost.n);
    qkms_hex_encode(salt, sizeof(salt), salt_hex);
    qkms_hex_encode(hash, sizeof(hash), hash_hex);
    st = db_tx(s->db, cred_tx_fn, &t);
    OPENSSL_cleanse(hash, sizeof(hash));
    OPENSSL_cleanse(hash_hex, sizeof(hash_hex));
    if (st == DB_CONFLICT)
        return qk_fail(e, QK_CONFLICT, "conflict", "another device has tid '%s'", tid);
    if (st != DB_OK)
        return e->kind != QK_OK ? e->kind : db_fail(e, st);
    log_with(&who->log, LOG_INFO, "gateway credential set", "{s:s,s:s,s:b}", "device_id",
             device_id, "by", who->name, "ended_login", t.old_login[0] != 0);
    k = QK_OK;
    return k;
}
