/* platform_keys — the platform's protocol v2 keys in the token (platform_keys.h). */
#include "service/platform_keys.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/sha.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "log.h"
#include "qkms_proto2.h"
#include "service/audit.h"
#include "service/x509util.h"
#include "store/queries.h"

#define PK_MAX_VERSIONS 64
#define PK_DAYS 1825 /* five years, at most the CA's own remaining life */

enum { PK_ACTIVE, PK_RETIRED, PK_DESTROYED };

struct platform_key {
    int version;
    platform_purpose purpose;
    char label[64];
    X509 *cert;
    uint8_t sha[32];
    char sha_hex[65];
    uint8_t point[QKP2_POINT_LEN];
    CK_OBJECT_HANDLE h; /* under pk->lock */
    uint64_t gen;       /* the token generation h belongs to; 0: look it up */
};

typedef struct {
    int version;
    platform_key key[2];
    _Atomic int state;
    _Atomic long long overlap_until; /* Unix seconds; retired versions */
} pk_version;

/* Versions are appended and never removed while kmsd runs (as the CA's). */
struct platform_keys {
    p11_token *t;
    qk_ca *ca;
    int overlap_days;
    pthread_mutex_t lock;
    pk_version v[PK_MAX_VERSIONS];
    _Atomic int nv;
    int *cleared; /* destroyed versions seen gone from this token (clear_destroyed) */
    size_t ncleared;
};

static const char *const purpose_name[2] = {"sign", "agree"};

/* ---- certificates ------------------------------------------------------------ */

static EVP_PKEY *token_pub(p11_token *t, const char *label, uint8_t point[QKP2_POINT_LEN],
                           CK_RV *rv)
{
    size_t n = QKP2_POINT_LEN;
    EVP_PKEY *k;
    if ((*rv = p11_ec_public_point(t, label, point, &n)) != CKR_OK)
        return NULL;
    if (n != QKP2_POINT_LEN || !(k = qkp2_point_key(point, n))) {
        *rv = CKR_ATTRIBUTE_VALUE_INVALID;
        return NULL;
    }
    return k;
}

/* A certificate of the platform CA for the token's key under label. */
static X509 *issue(platform_keys *pk, int version, platform_purpose p, const char *label,
                   char *err, size_t el)
{
    uint8_t point[QKP2_POINT_LEN];
    char cn[64];
    CK_RV rv = CKR_OK;
    EVP_PKEY *pub = token_pub(pk->t, label, point, &rv);
    X509 *x;

    if (!pub) {
        snprintf(err, el, "reading the public key %s: %s", label, p11_rv_name(rv));
        return NULL;
    }
    snprintf(cn, sizeof(cn), "qkms platform %s key %d",
             p == PLATFORM_SIGN ? "signing" : "key agreement", version);
    x = ca_issue_leaf(pk->ca, pub, cn, PK_DAYS,
                      p == PLATFORM_SIGN ? "critical,digitalSignature" : "critical,keyAgreement",
                      NULL, &rv);
    if (!x)
        snprintf(err, el, "the platform CA could not certify %s: %s", label, p11_rv_name(rv));
    EVP_PKEY_free(pub);
    return x;
}

/* ---- versions ------------------------------------------------------------------ */

static int find_index(platform_keys *pk, int version)
{
    int n = atomic_load(&pk->nv);
    for (int i = 0; i < n; i++)
        if (pk->v[i].version == version)
            return i;
    return -1;
}

static int state_of(const char *s)
{
    return !strcmp(s, "active") ? PK_ACTIVE : !strcmp(s, "retired") ? PK_RETIRED : PK_DESTROYED;
}

/* One row of QT_PK_LIST into key k (its certificate, digest and point). */
static int load_key(platform_key *k, int version, platform_purpose p, const char *label,
                    const char *hex)
{
    unsigned char *der = NULL;
    const unsigned char *q;
    size_t len;
    EVP_PKEY *pub;
    int rc = -1;

    if (x509_unhex(hex, &der, &len) != 0)
        return -1;
    q = der;
    k->cert = d2i_X509(NULL, &q, (long)len);
    if (k->cert && (pub = X509_get0_pubkey(k->cert)) && qkp2_key_point(pub, k->point) == 0) {
        SHA256(der, len, k->sha);
        qkp2_hex(k->sha, 32, k->sha_hex);
        k->version = version;
        k->purpose = p;
        snprintf(k->label, sizeof(k->label), "%s", label);
        k->h = CK_INVALID_HANDLE;
        k->gen = 0;
        rc = 0;
    }
    OPENSSL_free(der);
    return rc;
}

/* Take in the rows of platform_keys: new versions appended (both keys
 * first, then published), states updated. Under pk->lock. */
static int sync_versions(platform_keys *pk, db_conn *c, char *err, size_t el)
{
    db_status st;
    PGresult *r = qt_exec(c, QT_PK_LIST, 0, NULL, &st);
    int rc = -1;

    if (!r) {
        snprintf(err, el, "reading platform_keys failed: %s", db_status_name(st));
        return -1;
    }
    /* Rows come ordered by version, 'agree' before 'sign'. */
    for (int i = 0; i + 1 < PQntuples(r); i += 2) {
        int version = atoi(PQgetvalue(r, i, 0)), idx = find_index(pk, version);
        if (atoi(PQgetvalue(r, i + 1, 0)) != version || strcmp(PQgetvalue(r, i, 1), "agree") ||
            strcmp(PQgetvalue(r, i + 1, 1), "sign")) {
            snprintf(err, el, "platform_keys: version %d lacks a key", version);
            goto out;
        }
        /* A destroyed version is of no use to load: only its token
         * objects may still need deleting (clear_destroyed). Versions are
         * then bounded by those alive, not by every rotation ever made. */
        if (idx < 0 && state_of(PQgetvalue(r, i, 3)) == PK_DESTROYED)
            continue;
        if (idx < 0) {
            int n = atomic_load(&pk->nv);
            pk_version *v = &pk->v[n];
            if (n == PK_MAX_VERSIONS) {
                snprintf(err, el, "more than %d platform key versions", PK_MAX_VERSIONS);
                goto out;
            }
            memset(v, 0, sizeof(*v));
            if (load_key(&v->key[PLATFORM_AGREE], version, PLATFORM_AGREE, PQgetvalue(r, i, 2),
                         PQgetvalue(r, i, 4)) != 0 ||
                load_key(&v->key[PLATFORM_SIGN], version, PLATFORM_SIGN, PQgetvalue(r, i + 1, 2),
                         PQgetvalue(r, i + 1, 4)) != 0) {
                snprintf(err, el, "the certificates of platform key version %d do not parse",
                         version);
                X509_free(v->key[0].cert);
                X509_free(v->key[1].cert);
                memset(v, 0, sizeof(*v));
                goto out;
            }
            v->version = version;
            idx = n;
            atomic_store(&pk->nv, n + 1);
        }
        /* The overlap before the state: a reader that sees "retired" must
         * see its overlap too. */
        atomic_store(&pk->v[idx].overlap_until,
                     PQgetisnull(r, i, 5) ? 0 : atoll(PQgetvalue(r, i, 5)));
        atomic_store(&pk->v[idx].state, state_of(PQgetvalue(r, i, 3)));
    }
    rc = 0;
out:
    ERR_clear_error();
    PQclear(r);
    return rc;
}

static int active_index(platform_keys *pk)
{
    int n = atomic_load(&pk->nv), a = -1;
    for (int i = 0; i < n; i++)
        if (atomic_load(&pk->v[i].state) == PK_ACTIVE)
            a = i;
    return a;
}

/* A new version: both pairs generated in the token, their certificates
 * issued, the rows written (by the caller's transaction: QT_PK_INSERT x 2). */
static int make_version(platform_keys *pk, db_conn *c, int version, char *err, size_t el)
{
    X509 *x[2] = {NULL, NULL};
    char *hex[2] = {NULL, NULL}, label[2][64], sha[2][65], na[2][24], ver[16];
    int rc = -1;
    db_status st = DB_OK;
    PGresult *r;

    snprintf(ver, sizeof(ver), "%d", version);
    for (int p = 0; p < 2; p++) {
        CK_OBJECT_HANDLE h;
        CK_RV rv;
        unsigned char *der = NULL, dg[32];
        int dl;
        snprintf(label[p], 64, "qkms-v2-%s-%d", purpose_name[p], version);
        if ((rv = p11_generate_ec_key_pair(pk->t, label[p],
                                           p == PLATFORM_SIGN ? P11_EC_SIGN : P11_EC_DERIVE,
                                           &h)) != CKR_OK) {
            snprintf(err, el, "generating %s in the token: %s", label[p], p11_rv_name(rv));
            goto out;
        }
        if (!(x[p] = issue(pk, version, (platform_purpose)p, label[p], err, el)))
            goto out;
        if ((dl = i2d_X509(x[p], &der)) <= 0 || !(hex[p] = malloc(2 * (size_t)dl + 1))) {
            OPENSSL_free(der);
            snprintf(err, el, "out of memory");
            goto out;
        }
        x509_hex(der, (size_t)dl, hex[p]);
        SHA256(der, (size_t)dl, dg);
        x509_hex(dg, 32, sha[p]);
        OPENSSL_free(der);
        snprintf(na[p], 24, "%lld", (long long)x509_time(X509_get0_notAfter(x[p])));
    }
    for (int p = 0; p < 2 && st == DB_OK; p++) {
        const char *vals[] = {ver, purpose_name[p], label[p], hex[p], sha[p], na[p]};
        if ((r = qt_exec(c, QT_PK_INSERT, 6, vals, &st)))
            PQclear(r);
    }
    if (st != DB_OK) {
        snprintf(err, el, "recording platform key version %d failed: %s", version,
                 db_status_name(st));
        goto out;
    }
    rc = 0;
out:
    for (int p = 0; p < 2; p++) {
        X509_free(x[p]);
        free(hex[p]);
    }
    return rc;
}

/* The token's key handle of k, found again after a module re-init. */
static CK_RV key_handle(platform_keys *pk, platform_key *k, CK_OBJECT_HANDLE *h)
{
    uint64_t g = p11_generation(pk->t);
    CK_RV rv = CKR_OK;
    bool found = false;

    pthread_mutex_lock(&pk->lock);
    if (k->gen != g || k->h == CK_INVALID_HANDLE) {
        rv = p11_find_private_key(pk->t, k->label, &k->h, &found);
        if (rv == CKR_OK && !found)
            rv = CKR_KEY_HANDLE_INVALID;
        k->gen = rv == CKR_OK ? g : 0;
    }
    *h = k->h;
    pthread_mutex_unlock(&pk->lock);
    return rv;
}

/* The token must hold version i's private keys, matching its
 * certificates: another token would answer with keys nobody pinned. */
static int check_token(platform_keys *pk, int i, char *err, size_t el)
{
    for (int p = 0; p < 2; p++) {
        platform_key *k = &pk->v[i].key[p];
        uint8_t point[QKP2_POINT_LEN];
        CK_OBJECT_HANDLE h;
        CK_RV rv = key_handle(pk, k, &h);
        EVP_PKEY *pub = rv == CKR_OK ? token_pub(pk->t, k->label, point, &rv) : NULL;
        bool same = pub && !memcmp(point, k->point, sizeof(point));
        EVP_PKEY_free(pub);
        if (rv != CKR_OK || !same) {
            snprintf(err, el, "the platform key %s is %s", k->label,
                     rv != CKR_OK ? "not in the token" : "not its certificate's key");
            return -1;
        }
    }
    return 0;
}

int platform_keys_open(platform_keys **out, db_pool *db, p11_token *t, qk_ca *ca,
                       int overlap_days, char *err, size_t el)
{
    platform_keys *pk = calloc(1, sizeof(*pk));
    db_status st;
    db_conn *c = NULL;
    bool locked = false;
    int rc = -1, a;

    *out = NULL;
    if (!pk) {
        snprintf(err, el, "out of memory");
        return -1;
    }
    pk->t = t;
    pk->ca = ca;
    pk->overlap_days = overlap_days;
    pthread_mutex_init(&pk->lock, NULL);
    if (!(c = db_acquire(db, &st))) {
        snprintf(err, el, "database unavailable: %s", db_status_name(st));
        goto out;
    }
    if (qt_command(c, QT_PK_LOCK) != DB_OK) {
        snprintf(err, el, "taking the platform key lock failed");
        goto out;
    }
    locked = true;
    if (sync_versions(pk, c, err, el) != 0)
        goto out;
    if (active_index(pk) < 0) {
        int next = 1;
        for (int i = 0; i < atomic_load(&pk->nv); i++)
            if (pk->v[i].version >= next)
                next = pk->v[i].version + 1;
        /* Both rows in one transaction: a start that fails half way leaves
         * nothing behind to trip the next one. */
        if (qt_command(c, QT_BEGIN) != DB_OK) {
            snprintf(err, el, "database unavailable");
            goto out;
        }
        if (make_version(pk, c, next, err, el) != 0 || qt_command(c, QT_COMMIT) != DB_OK) {
            qt_command(c, QT_ROLLBACK);
            if (!err[0])
                snprintf(err, el, "recording the platform keys failed");
            goto out;
        }
        if (sync_versions(pk, c, err, el) != 0)
            goto out;
        log_emit(LOG_INFO, "platform keys created", "{s:i}", "version", next);
    }
    if ((a = active_index(pk)) < 0) {
        snprintf(err, el, "no active platform key version");
        goto out;
    }
    if (check_token(pk, a, err, el) != 0)
        goto out;
    rc = 0;
out:
    if (locked)
        qt_command(c, QT_PK_UNLOCK);
    if (c)
        db_release(db, c);
    if (rc == 0)
        *out = pk;
    else
        platform_keys_free(pk);
    return rc;
}

void platform_keys_free(platform_keys *pk)
{
    if (!pk)
        return;
    for (int i = 0; i < atomic_load(&pk->nv); i++)
        for (int p = 0; p < 2; p++)
            X509_free(pk->v[i].key[p].cert);
    free(pk->cleared);
    pthread_mutex_destroy(&pk->lock);
    free(pk);
}

/* ---- using the keys ---------------------------------------------------------- */

static bool usable(pk_version *v, time_t now)
{
    int s = atomic_load(&v->state);
    return s == PK_ACTIVE || (s == PK_RETIRED && atomic_load(&v->overlap_until) > now);
}

const platform_key *platform_keys_find(platform_keys *pk, platform_purpose p,
                                       const uint8_t sha256[32])
{
    int n = atomic_load(&pk->nv);
    time_t now = time(NULL);
    for (int i = 0; i < n; i++)
        if (!memcmp(pk->v[i].key[p].sha, sha256, 32))
            return usable(&pk->v[i], now) ? &pk->v[i].key[p] : NULL;
    return NULL;
}

const platform_key *platform_keys_active(platform_keys *pk, platform_purpose p)
{
    int a = active_index(pk);
    return a < 0 ? NULL : &pk->v[a].key[p];
}

const char *platform_key_sha_hex(const platform_key *k) { return k->sha_hex; }
const uint8_t *platform_key_point(const platform_key *k) { return k->point; }
int platform_key_version(const platform_key *k) { return k->version; }

/* A failure other than memory may mean the handle went stale (the token
 * was re-initialized, the object destroyed): look it up next time. */
static CK_RV after_use(platform_keys *pk, platform_key *k, CK_RV rv)
{
    if (rv != CKR_OK && rv != CKR_HOST_MEMORY) {
        pthread_mutex_lock(&pk->lock);
        k->gen = 0;
        pthread_mutex_unlock(&pk->lock);
    }
    return rv;
}

CK_RV platform_keys_ready(platform_keys *pk, const platform_key *ck)
{
    platform_key *k = (platform_key *)ck;
    CK_OBJECT_HANDLE h;
    return after_use(pk, k, key_handle(pk, k, &h));
}

CK_RV platform_keys_sign(platform_keys *pk, const platform_key *ck, const uint8_t digest[32],
                         uint8_t sig[64])
{
    platform_key *k = (platform_key *)ck; /* ours: the handle is cached in it */
    CK_OBJECT_HANDLE h;
    size_t sl = 64;
    CK_RV rv = key_handle(pk, k, &h);
    if (rv == CKR_OK)
        rv = p11_ecdsa_sign(pk->t, h, digest, 32, sig, &sl);
    if (rv == CKR_OK && sl != 64)
        rv = CKR_SIGNATURE_LEN_RANGE;
    return after_use(pk, k, rv);
}

CK_RV platform_keys_ecdh(platform_keys *pk, const platform_key *ck, const uint8_t *point,
                         size_t point_len, uint8_t z[32])
{
    platform_key *k = (platform_key *)ck;
    CK_OBJECT_HANDLE h;
    CK_RV rv = key_handle(pk, k, &h);
    if (rv == CKR_OK)
        rv = p11_ecdh_derive(pk->t, h, point, point_len, z);
    return after_use(pk, k, rv);
}

/* ---- the published view -------------------------------------------------------- */

static json_t *key_json(const pk_version *v, const platform_key *k, int state)
{
    size_t pl = 0;
    char *pem = x509_pem(k->cert, &pl), *subject = x509_name_text(X509_get_subject_name(k->cert));
    long long ou = atomic_load(&v->overlap_until);
    json_t *o = pem && subject
                    ? json_pack("{s:s,s:i,s:s,s:s,s:s,s:o,s:o,s:o,s:s}", "purpose",
                                purpose_name[k->purpose], "version", k->version, "state",
                                state == PK_ACTIVE ? "active" : "retired", "sha256", k->sha_hex,
                                "subject", subject, "not_before",
                                x509_rfc3339(x509_time(X509_get0_notBefore(k->cert))), "not_after",
                                x509_rfc3339(x509_time(X509_get0_notAfter(k->cert))),
                                "overlap_until",
                                state == PK_RETIRED ? x509_rfc3339((time_t)ou) : json_null(),
                                "pem", pem)
                    : NULL;
    free(pem);
    free(subject);
    return o;
}

qk_kind platform_keys_json(platform_keys *pk, json_t **out, qk_err *e)
{
    json_t *arr = json_array();
    int n = atomic_load(&pk->nv), a = active_index(pk);
    time_t now = time(NULL);

    *out = NULL;
    if (!arr)
        return qk_fail(e, QK_INTERNAL, "internal", "out of memory");
    for (int pass = 0; pass < 2; pass++)
        for (int i = n - 1; i >= 0; i--) {
            int s = atomic_load(&pk->v[i].state);
            if ((pass == 0) != (i == a) || !usable(&pk->v[i], now))
                continue;
            for (int p = 0; p < 2; p++)
                if (json_array_append_new(arr, key_json(&pk->v[i], &pk->v[i].key[p], s)) != 0) {
                    json_decref(arr);
                    return qk_fail(e, QK_INTERNAL, "internal", "out of memory");
                }
        }
    *out = json_pack("{s:o}", "certificates", arr);
    return *out ? QK_OK : qk_fail(e, QK_INTERNAL, "internal", "out of memory");
}

/* ---- rotation and the maintenance pass ------------------------------------------- */

static qk_kind sync_locked(platform_keys *pk, db_conn *c, qk_err *e)
{
    char err[256];
    int rc;
    pthread_mutex_lock(&pk->lock);
    rc = sync_versions(pk, c, err, sizeof(err));
    pthread_mutex_unlock(&pk->lock);
    if (rc == 0)
        return QK_OK;
    qk_fail(e, QK_UNAVAILABLE, "unavailable", "%s", err);
    if (e)
        e->retry_after = 1;
    return QK_UNAVAILABLE;
}

/* Rotate on c, which holds the platform key lock. */
static qk_kind rotate_locked(platform_keys *pk, db_conn *c, const char *actor, const char *why,
                             int *version, qk_err *e)
{
    char err[256], days[16];
    int prev = -1, next = 1, a;
    db_status st;
    PGresult *r;
    qk_kind k;

    if ((k = sync_locked(pk, c, e)) != QK_OK)
        return k;
    if ((a = active_index(pk)) >= 0)
        prev = pk->v[a].version;
    for (int i = 0; i < atomic_load(&pk->nv); i++)
        if (pk->v[i].version >= next)
            next = pk->v[i].version + 1;
    if (atomic_load(&pk->nv) == PK_MAX_VERSIONS)
        return qk_fail(e, QK_CONFLICT, "invalid_state",
                       "this kmsd holds %d platform key versions, the most it can",
                       PK_MAX_VERSIONS);
    snprintf(days, sizeof(days), "%d", pk->overlap_days);
    st = qt_command(c, QT_BEGIN);
    if (st == DB_OK) {
        const char *vals[] = {days};
        if ((r = qt_exec(c, QT_PK_RETIRE, 1, vals, &st)))
            PQclear(r);
    }
    if (st == DB_OK && make_version(pk, c, next, err, sizeof(err)) != 0) {
        qt_command(c, QT_ROLLBACK);
        qk_fail(e, QK_UNAVAILABLE, "token_unavailable", "%s", err);
        if (e)
            e->retry_after = 1;
        return QK_UNAVAILABLE;
    }
    if (st == DB_OK)
        st = audit_append(c, actor, "platform.rotated", NULL,
                          json_pack("{s:i,s:i,s:s,s:i}", "from_version", prev, "version", next,
                                    "reason", why, "overlap_days", pk->overlap_days));
    if (st == DB_OK)
        st = qt_command(c, QT_COMMIT);
    if (st != DB_OK) {
        qt_command(c, QT_ROLLBACK);
        return db_fail(e, st);
    }
    if ((k = sync_locked(pk, c, e)) != QK_OK)
        return k;
    log_emit(LOG_INFO, "platform keys rotated", "{s:i,s:i,s:s}", "from_version", prev, "version",
             next, "reason", why);
    if (version)
        *version = next;
    return QK_OK;
}

qk_kind platform_keys_rotate(platform_keys *pk, db_pool *db, const char *actor, int *version,
                             qk_err *e)
{
    db_status st;
    db_conn *c;
    qk_kind k;

    qk_clear(e);
    if (!(c = db_acquire(db, &st)))
        return db_fail(e, st);
    if ((st = qt_command(c, QT_PK_LOCK)) != DB_OK) {
        db_release(db, c);
        return db_fail(e, st);
    }
    k = rotate_locked(pk, c, actor, "operator", version, e);
    qt_command(c, QT_PK_UNLOCK);
    db_release(db, c);
    return k;
}

/* Delete from this instance's token the private keys of every version the
 * database says destroyed (each instance does it for its own token), until
 * the token is seen without them: a failure, or a crash between the
 * database's word and the deletion, is retried at the next pass. The
 * versions found cleared are remembered for the process's life (a start
 * looks once at each). Under the platform key lock, from the maintenance
 * thread only. */
static bool cleared(const platform_keys *pk, int version)
{
    for (size_t j = 0; j < pk->ncleared; j++)
        if (pk->cleared[j] == version)
            return true;
    return false;
}

static void clear_destroyed(platform_keys *pk, db_conn *c)
{
    db_status st;
    PGresult *r = qt_exec(c, QT_PK_DESTROYED, 0, NULL, &st);
    int n = r ? PQntuples(r) : 0;
    bool all_gone = true;

    for (int i = 0; i < n; i++) {
        int version = atoi(PQgetvalue(r, i, 0)), idx;
        const char *label = PQgetvalue(r, i, 1);
        bool found = false, last = i + 1 == n || atoi(PQgetvalue(r, i + 1, 0)) != version;
        CK_OBJECT_HANDLE h;
        CK_RV rv = CKR_OK;

        if (!cleared(pk, version)) {
            rv = p11_find_private_key(pk->t, label, &h, &found);
            if (rv == CKR_OK && found)
                rv = p11_destroy_object(pk->t, h);
            if (rv != CKR_OK) {
                all_gone = false;
                log_emit(LOG_WARN, "platform key not destroyed, retried at the next pass",
                         "{s:s,s:s}", "label", label, "ckr", p11_rv_name(rv));
            } else if (found) {
                log_emit(LOG_INFO, "platform key destroyed", "{s:i,s:s}", "version", version,
                         "label", label);
            }
            if ((idx = find_index(pk, version)) >= 0) {
                pthread_mutex_lock(&pk->lock);
                for (int p = 0; p < 2; p++) {
                    pk->v[idx].key[p].h = CK_INVALID_HANDLE;
                    pk->v[idx].key[p].gen = 0;
                }
                pthread_mutex_unlock(&pk->lock);
            }
        }
        /* A version's two rows come together: it counts as cleared when
         * both keys were seen gone. */
        if (last) {
            if (all_gone && !cleared(pk, version)) {
                int *grown = realloc(pk->cleared, (pk->ncleared + 1) * sizeof(int));
                if (grown) {
                    pk->cleared = grown;
                    pk->cleared[pk->ncleared++] = version;
                }
            }
            all_gone = true;
        }
    }
    PQclear(r);
}

qk_kind platform_keys_refresh(platform_keys *pk, db_pool *db, qk_err *e)
{
    db_status st;
    db_conn *c;
    PGresult *r;
    qk_kind k = QK_OK;
    int a;

    qk_clear(e);
    if (!(c = db_acquire(db, &st)))
        return db_fail(e, st);
    if ((st = qt_command(c, QT_PK_LOCK)) != DB_OK) {
        db_release(db, c);
        return db_fail(e, st);
    }
    /* Overlaps that ended: the rows say destroyed, with an audit row each,
     * in one transaction. */
    st = qt_command(c, QT_BEGIN);
    if (st == DB_OK && (r = qt_exec(c, QT_PK_DUE, 0, NULL, &st))) {
        for (int i = 0; i < PQntuples(r) && st == DB_OK; i++)
            if (!strcmp(PQgetvalue(r, i, 1), "sign"))
                st = audit_append(c, "kmsd", "platform.destroyed", NULL,
                              json_pack("{s:i}", "version", atoi(PQgetvalue(r, i, 0))));
        PQclear(r);
    }
    if (st == DB_OK)
        st = qt_command(c, QT_COMMIT);
    if (st != DB_OK) {
        qt_command(c, QT_ROLLBACK);
        k = db_fail(e, st);
        goto out;
    }
    if ((k = sync_locked(pk, c, e)) != QK_OK)
        goto out;
    clear_destroyed(pk, c);
    /* The active certificates must outlive the overlap a rotation gives
     * devices to re-pin: rotate before they get closer to their end. */
    if ((a = active_index(pk)) >= 0) {
        time_t now = time(NULL), margin = (time_t)(pk->overlap_days + 1) * 86400,
               end = x509_time(X509_get0_notAfter(pk->v[a].key[PLATFORM_SIGN].cert)),
               ca_end = x509_time(X509_get0_notAfter(ca_active_cert(pk->ca, NULL)));
        /* Only when new certificates would outlive that margin: a CA near
         * its own end caps them (rotate the CA first, docs/pki.md). */
        if (end && end - now < margin && ca_end - now > 2 * margin)
            k = rotate_locked(pk, c, "kmsd", "expiry", NULL, e);
    }
out:
    qt_command(c, QT_PK_UNLOCK);
    db_release(db, c);
    return k;
}
