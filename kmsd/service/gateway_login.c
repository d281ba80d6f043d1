/*
 * gateway_login — gateway accounts, login and logout (gateway_login.h).
 * The login's key is a platform-peer session made by sessions_issue; the
 * account's state (failures, lock, the current login) is the stored
 * functions' of schema/020_gateway_login.sql.
 */
#include "service/device_seen.h"
#include "service/gateway_login.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "hexutil.h"
#include "log.h"
#include "qkms_proto.h"
#include "service/audit.h"
#include "service/devices.h"
#include "service/keycache.h"
#include "service/password.h"
#include "service/session_id.h"
#include "service/session_metrics.h"
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

/* The request's principal must be its device, with its key. */
static qk_kind login_principal(const qk_principal *who, const device_auth *a, qk_err *e)
{
    if (!who || who->kind != QK_PRINCIPAL_DEVICE || !who->name || !a->key ||
        strcmp(who->name, a->device_id) != 0) {
        log_emit(LOG_ERROR, "gateway login without its device", NULL);
        return qk_fail(e, QK_INTERNAL, "internal", "internal error (see kmsd log)");
    }
    return QK_OK;
}

/* Password checks in flight (gateway_login_concurrency): each holds
 * 128 x N x r bytes for a fraction of a second. */
static atomic_int hashing;

typedef struct {
    char tid[GATEWAY_TID_MAX + 1];
    password_cost cost;
    uint8_t salt[PASSWORD_SALT_LEN], hash[PASSWORD_HASH_LEN];
    char hash_hex[2 * PASSWORD_HASH_LEN + 1];
} credential;

/* The outcomes every step shares (begin, logout): the request refused as
 * unauthenticated, or its device not served. true with *k and e set when
 * outcome is one of them. */
static bool common_refusal(qk_svc *s, const qk_principal *who, device_auth *a,
                           const char *outcome, const char *detail, qk_err *e, qk_kind *k)
{
    const char *why = NULL;
    if (!strcmp(outcome, "replay")) {
        a->replayed = true;
        why = "nonce already used (replay)";
    } else if (!strcmp(outcome, "stale")) {
        why = "timestamp outside the clock window";
    } else if (!strcmp(outcome, "not_access")) {
        why = "a login or logout not under the gateway's access key";
    } else if (!strcmp(outcome, "unauthenticated")) {
        keycache_invalidate(s->keys, a->device_id);
        why = detail && *detail ? detail : "the database refused the key";
    }
    if (why) {
        *k = device_auth_fail(s, &who->log, a->device_id, a->key_index, why, e);
        return true;
    }
    if (!strcmp(outcome, "device_inactive")) {
        keycache_invalidate(s->keys, a->device_id);
        session_metrics_refused(s->smetrics, SESSION_REFUSE_INACTIVE);
        *k = qk_fail(e, QK_FORBIDDEN, "device_inactive", "this device is %s", detail);
        return true;
    }
    if (!strcmp(outcome, "service_expired")) {
        session_metrics_refused(s->smetrics, SESSION_REFUSE_SERVICE);
        *k = qk_fail(e, QK_FORBIDDEN, "service_expired", "this device's service ended at %s",
                     detail);
        return true;
    }
    return false;
}

static qk_kind locked(qk_err *e, int retry)
{
    qk_fail(e, QK_FORBIDDEN, "login_locked",
            "too many wrong passwords: the account is locked for %d s", retry);
    e->retry_after = retry > 0 ? retry : 1;
    return QK_FORBIDDEN;
}

/* Begin: the request's checks, its nonce and the attempt recorded
 * (qkms_gateway_login_begin). QK_OK with *c the credential to check. */
static qk_kind begin(qk_svc *s, const qk_principal *who, device_auth *a, const login_ask *ask,
                     credential *c, qk_err *e)
{
    char pk[24], kidx[8], ts[24], skew[16], maxf[16], lock[16];
    const char *vals[8] = {pk,   kidx, (const char *)a->nonce, ts, skew,
                           strcmp(a->purpose, "access") ? "f" : "t", maxf, lock};
    int lens[8] = {0, 0, QKP_NONCE_LEN, 0, 0, 0, 0, 0}, fmts[8] = {0, 0, 1, 0, 0, 0, 0, 0};
    const char *outcome;
    db_status st;
    PGresult *r;
    qk_kind k;

    snprintf(pk, sizeof(pk), "%lld", a->device_pk);
    snprintf(kidx, sizeof(kidx), "%d", a->key_index);
    snprintf(ts, sizeof(ts), "%lld", (long long)ask->ts);
    snprintf(skew, sizeof(skew), "%d", s->cfg->protocol_clock_skew);
    snprintf(maxf, sizeof(maxf), "%d", s->cfg->gateway_login_max_failures);
    snprintf(lock, sizeof(lock), "%d", s->cfg->gateway_login_lockout);
    if (!(r = db_query(s->db, Q_GW_LOGIN_BEGIN, 8, vals, lens, fmts, &st)))
        return db_fail(e, st);
    outcome = PQgetvalue(r, 0, 0);
    if (common_refusal(s, who, a, outcome, PQgetvalue(r, 0, 1), e, &k)) {
        /* logged and counted there */
    } else if (!strcmp(outcome, "no_credential")) {
        k = qk_fail(e, QK_FORBIDDEN, "no_credential",
                    "this gateway has no login account (kmsctl device credential)");
    } else if (!strcmp(outcome, "locked")) {
        k = locked(e, atoi(PQgetvalue(r, 0, 2)));
    } else if (!strcmp(outcome, "check")) {
        snprintf(c->tid, sizeof(c->tid), "%s", PQgetvalue(r, 0, 3));
        c->cost.n = strtoull(PQgetvalue(r, 0, 4), NULL, 10);
        c->cost.r = (uint32_t)atoi(PQgetvalue(r, 0, 5));
        c->cost.p = (uint32_t)atoi(PQgetvalue(r, 0, 6));
        snprintf(c->hash_hex, sizeof(c->hash_hex), "%s", PQgetvalue(r, 0, 8));
        k = qkms_hex_decode(PQgetvalue(r, 0, 7), strlen(PQgetvalue(r, 0, 7)), c->salt,
                            sizeof(c->salt)) == PASSWORD_SALT_LEN &&
                    qkms_hex_decode(c->hash_hex, strlen(c->hash_hex), c->hash,
                                    sizeof(c->hash)) == PASSWORD_HASH_LEN
                ? QK_OK
                : qk_fail(e, QK_INTERNAL, "internal", "internal error (see kmsd log)");
    } else {
        log_with(&who->log, LOG_ERROR, "unexpected login outcome", "{s:s}", "outcome", outcome);
        k = qk_fail(e, QK_INTERNAL, "internal", "internal error (see kmsd log)");
    }
    if (k == QK_FORBIDDEN)
        log_with(&who->log, LOG_WARN, "gateway login refused", "{s:s,s:s}", "device_id",
                 a->device_id, "reason", outcome);
    PQclear(r);
    return k;
}

/* A password that did not match: audited, maybe the lock (qkms_gateway_login_failed). */
static qk_kind failed(qk_svc *s, const qk_principal *who, const device_auth *a,
                      const credential *c, qk_err *e)
{
    char pk[24], maxf[16], lock[16];
    const char *vals[4] = {pk, c->hash_hex, maxf, lock};
    db_status st;
    PGresult *r;
    qk_kind k;

    snprintf(pk, sizeof(pk), "%lld", a->device_pk);
    snprintf(maxf, sizeof(maxf), "%d", s->cfg->gateway_login_max_failures);
    snprintf(lock, sizeof(lock), "%d", s->cfg->gateway_login_lockout);
    if (!(r = db_query(s->db, Q_GW_LOGIN_FAILED, 4, vals, NULL, NULL, &st)))
        return db_fail(e, st);
    k = !strcmp(PQgetvalue(r, 0, 0), "locked")
            ? locked(e, atoi(PQgetvalue(r, 0, 1)))
            : qk_fail(e, QK_UNAUTHENTICATED, "login_failed", "wrong tid or password");
    log_with(&who->log, LOG_WARN, "gateway login refused", "{s:s,s:s}", "device_id",
             a->device_id, "reason", PQgetvalue(r, 0, 0));
    PQclear(r);
    return k;
}

static void destroy_login(qk_svc *s, const char *hash_hex, const char *reason, const char *actor)
{
    const char *vals[3] = {hash_hex, reason, actor};
    db_status st;
    PQclear(db_query(s->db, Q_SESSION_DESTROY_BY_HASH, 3, vals, NULL, NULL, &st));
}

/* The login's session is made by qkms_session_key, which records the nonce
 * it is given; the request's own was recorded by begin. It gets one derived
 * from the request's, so the session's creation is as unrepeatable as the
 * request and never collides with another request's nonce. */
static void session_nonce(uint8_t nonce[QKP_NONCE_LEN])
{
    static const char label[] = "qkms/v1/login-session\n";
    uint8_t d[32];
    unsigned int dl = sizeof(d);
    EVP_MD_CTX *m = EVP_MD_CTX_new();
    if (m && EVP_DigestInit_ex(m, EVP_sha256(), NULL) == 1 &&
        EVP_DigestUpdate(m, label, sizeof(label) - 1) == 1 &&
        EVP_DigestUpdate(m, nonce, QKP_NONCE_LEN) == 1 && EVP_DigestFinal_ex(m, d, &dl) == 1)
        memcpy(nonce, d, QKP_NONCE_LEN);
    else /* a nonce the request's is not: the stored function refuses a reused one */
        nonce[0] ^= 0x80;
    EVP_MD_CTX_free(m);
}

qk_kind gateway_login(qk_svc *s, const qk_principal *who, device_auth *a, const login_ask *ask,
                      char login_id[37], session_grant *g, qk_err *e)
{
    session_ask sa = {0};
    credential c;
    uint8_t hash[32];
    char hash_hex[65], pk[24];
    const char *vals[4] = {pk, (const char *)hash, login_id, c.hash_hex};
    int lens[4] = {0, 32, 0, 0}, fmts[4] = {0, 1, 0, 0}, ok;
    bool slot = false;
    db_status st;
    PGresult *r;
    qk_kind k;

    memset(g, 0, sizeof(*g));
    memset(&c, 0, sizeof(c));
    if ((k = login_principal(who, a, e)) != QK_OK)
        goto out;
    /* A slot first: a login refused for want of one has not used its nonce. */
    if (atomic_fetch_add(&hashing, 1) >= s->cfg->gateway_login_concurrency) {
        atomic_fetch_sub(&hashing, 1);
        k = qk_fail(e, QK_UNAVAILABLE, "unavailable", "too many logins at once; retry");
        e->retry_after = 1;
        goto out;
    }
    slot = true;
    if ((k = begin(s, who, a, ask, &c, e)) != QK_OK)
        goto out;
    /* The hash is computed for a wrong tid too: the time does not say which. */
    ok = password_check(ask->password, ask->password_len, &c.cost, c.salt, c.hash);
    atomic_fetch_sub(&hashing, 1);
    slot = false;
    if (ok < 0) {
        log_with(&who->log, LOG_ERROR, "password hash failed", "{s:s}", "device_id", a->device_id);
        k = qk_fail(e, QK_INTERNAL, "internal", "internal error (see kmsd log)");
        goto out;
    }
    if (ok != 1 || strcmp(c.tid, ask->tid) != 0) {
        k = failed(s, who, a, &c, e);
        goto out;
    }
    if (uuid4_text(login_id) != 0 || session_hash(login_id, hash) != 0) {
        k = qk_fail(e, QK_UNAVAILABLE, "entropy_unavailable", "the RNG failed; retry later");
        e->retry_after = 1;
        goto out;
    }
    session_nonce(a->nonce);
    sa.session_id = login_id;
    sa.platform_peer = true;
    sa.contact_by_caller = true; /* below, once the login is done */
    sa.key_source = 'c'; /* the platform's entropy: the key itself in the answer */
    sa.ts = ask->ts;
    if ((k = sessions_issue(s, who, a, &sa, g, e)) != QK_OK) {
        /* The password was right: its attempt no longer counts toward the
         * lock (a login refused for want of a policy must not lock the
         * account). Best effort: the refusal stands either way. */
        const char *rv[2] = {pk, c.hash_hex};
        snprintf(pk, sizeof(pk), "%lld", a->device_pk);
        PQclear(db_query(s->db, Q_GW_LOGIN_RIGHT, 2, rv, NULL, NULL, &st));
        goto out;
    }
    snprintf(pk, sizeof(pk), "%lld", a->device_pk);
    r = db_query(s->db, Q_GW_LOGIN_DONE, 4, vals, lens, fmts, &st);
    if (!r || strcmp(PQgetvalue(r, 0, 0), "t") != 0) {
        /* The account was replaced while this login ran: the password it
         * matched is no longer the account's, and its key must not live. */
        qkms_hex_encode(hash, sizeof(hash), hash_hex);
        destroy_login(s, hash_hex, "ended_by_operator", "kmsd");
        k = r ? qk_fail(e, QK_UNAUTHENTICATED, "login_failed",
                        "the account was replaced during the login; log in with the new one")
              : db_fail(e, st);
        PQclear(r);
        session_grant_clear(g);
        goto out;
    }
    PQclear(r);
    log_with(&who->log, LOG_INFO, "gateway logged in", "{s:s,s:s,s:s}", "device_id",
             a->device_id, "login_id", login_id, "key_id", g->key_id);
    device_seen_note(s->contact, a->device_pk);
    k = QK_OK;
out:
    if (slot)
        atomic_fetch_sub(&hashing, 1);
    OPENSSL_cleanse(&c, sizeof(c));
    return k;
}

/* A gateway's own request that only changes state (logout, reset): stmt
 * takes the request's device, key index, nonce, ts, the clock skew and
 * whether the key is an access key. *r is its answer, or NULL with e. */
static qk_kind state_call(qk_svc *s, const qk_principal *who, device_auth *a, int64_t ts,
                          int stmt, PGresult **r, qk_err *e)
{
    char pk[24], kidx[8], sts[24], skew[16];
    const char *vals[6] = {pk,   kidx, (const char *)a->nonce, sts, skew,
                           strcmp(a->purpose, "access") ? "f" : "t"};
    int lens[6] = {0, 0, QKP_NONCE_LEN, 0, 0, 0}, fmts[6] = {0, 0, 1, 0, 0, 0};
    db_status st;
    qk_kind k;

    *r = NULL;
    if ((k = login_principal(who, a, e)) != QK_OK)
        return k;
    snprintf(pk, sizeof(pk), "%lld", a->device_pk);
    snprintf(kidx, sizeof(kidx), "%d", a->key_index);
    snprintf(sts, sizeof(sts), "%lld", (long long)ts);
    snprintf(skew, sizeof(skew), "%d", s->cfg->protocol_clock_skew);
    if (!(*r = db_query(s->db, stmt, 6, vals, lens, fmts, &st)))
        return db_fail(e, st);
    return QK_OK;
}

qk_kind gateway_logout(qk_svc *s, const qk_principal *who, device_auth *a, int64_t ts, qk_err *e)
{
    const char *outcome;
    PGresult *r;
    qk_kind k;

    if ((k = state_call(s, who, a, ts, Q_GW_LOGOUT, &r, e)) != QK_OK)
        return k;
    outcome = PQgetvalue(r, 0, 0);
    if (!strcmp(outcome, "ok")) {
        log_with(&who->log, LOG_INFO, "gateway logged out", "{s:s}", "device_id", a->device_id);
        device_seen_note(s->contact, a->device_pk);
        k = QK_OK;
    } else if (!strcmp(outcome, "no_login")) {
        k = qk_fail(e, QK_NOT_FOUND, "no_login", "this gateway has no live login");
    } else if (!common_refusal(s, who, a, outcome, NULL, e, &k)) {
        log_with(&who->log, LOG_ERROR, "unexpected logout outcome", "{s:s}", "outcome", outcome);
        k = qk_fail(e, QK_INTERNAL, "internal", "internal error (see kmsd log)");
    }
    PQclear(r);
    return k;
}

qk_kind gateway_reset(qk_svc *s, const qk_principal *who, device_auth *a, int64_t ts,
                      int *unbound, int *ended, int *epoch, qk_err *e)
{
    const char *outcome;
    PGresult *r;
    qk_kind k;

    if ((k = state_call(s, who, a, ts, Q_GW_RESET, &r, e)) != QK_OK)
        return k;
    outcome = PQgetvalue(r, 0, 0);
    if (!strcmp(outcome, "ok")) {
        *unbound = atoi(PQgetvalue(r, 0, 1));
        *ended = atoi(PQgetvalue(r, 0, 2));
        *epoch = atoi(PQgetvalue(r, 0, 3));
        log_with(&who->log, LOG_INFO, "gateway reset", "{s:s,s:i,s:i}", "device_id",
                 a->device_id, "unbound", *unbound, "sessions_ended", *ended);
        device_seen_note(s->contact, a->device_pk);
        k = QK_OK;
    } else if (!common_refusal(s, who, a, outcome, NULL, e, &k)) {
        log_with(&who->log, LOG_ERROR, "unexpected reset outcome", "{s:s}", "outcome", outcome);
        k = qk_fail(e, QK_INTERNAL, "internal", "internal error (see kmsd log)");
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
    const char *vals[7] = {NULL};
    char pk[24];
    db_status st;
    PGresult *r;

    qk_clear(t->e);
    t->old_login[0] = 0;
    if ((st = devices_lock_live(c, t->device_id, pk, t->e)) != DB_OK)
        return st;
    vals[0] = pk;
    /* A login is sealed under an access key: a device without one has no
     * use for an account. */
    if (!(r = db_exec(c, Q_DEVKEY_HAS_ACCESS, 1, vals, NULL, NULL, &st)))
        return st;
    if (PQntuples(r) == 0) {
        PQclear(r);
        qk_fail(t->e, QK_CONFLICT, "invalid_state",
                "device '%s' has no live access key (a gateway's: docs/gateways.md)",
                t->device_id);
        return DB_INVALID;
    }
    PQclear(r);
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
