/* token_certs — client certificates of admin tokens (token_certs.h). */
#include "service/token_certs.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/x509.h>

#include "log.h"
#include "service/audit.h"
#include "service/certs.h"
#include "service/x509util.h"
#include "store/pgjson.h"
#include "store/queries.h"

static bool sha_valid(const char *s)
{
    if (!s || strlen(s) != 64)
        return false;
    for (int i = 0; i < 64; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return false;
    return true;
}

/* A binding row (QT_TCERT_LIST's columns) as its record. */
static json_t *binding_json(const PGresult *r, int i, const char *token)
{
    const char *hex = PQgetvalue(r, i, 8);
    size_t hl = strlen(hex);
    unsigned char *der = malloc(hl / 2 + 1);
    const unsigned char *p = der;
    char *pem = NULL;
    X509 *x = NULL;
    json_t *j;
    for (size_t k = 0; der && k + 1 < hl; k += 2) {
        unsigned v;
        sscanf(hex + k, "%2x", &v);
        der[k / 2] = (unsigned char)v;
    }
    if (der && (x = d2i_X509(NULL, &p, (long)(hl / 2))))
        pem = x509_pem(x, NULL);
    j = json_pack("{s:s,s:o,s:o,s:o,s:o,s:o,s:o,s:o,s:o,s:s?}", "token", token, "sha256",
                  pgjson_text(r, i, 0), "spki_sha256", pgjson_text(r, i, 1), "subject",
                  pgjson_text(r, i, 2), "issuer", pgjson_text(r, i, 3), "not_before",
                  pgjson_time(r, i, 4), "not_after", pgjson_time(r, i, 5), "created_at",
                  pgjson_time(r, i, 6), "created_by", pgjson_text(r, i, 7), "certificate", pem);
    free(pem);
    X509_free(x);
    free(der);
    return j;
}

typedef struct {
    const char *token;
    const char *actor;
    const char *vals[9]; /* QT_TCERT_INSERT's, [0] filled in the transaction */
    char token_id[24];
    bool no_token;
    char in_use_by[160];
    bool duplicate;
    json_t *created_at;
    json_t *detail;
} bind_tx;

static db_status bind_fn(db_conn *c, void *arg)
{
    bind_tx *t = arg;
    const char *tv[1] = {t->token}, *sv[2];
    db_status st;
    PGresult *r;

    t->no_token = t->duplicate = false;
    t->in_use_by[0] = 0;
    if (!(r = qt_exec(c, QT_TCERT_TOKEN, 1, tv, &st)))
        return st;
    if (PQntuples(r) == 0) {
        PQclear(r);
        t->no_token = true;
        return DB_NOT_FOUND;
    }
    snprintf(t->token_id, sizeof(t->token_id), "%s", PQgetvalue(r, 0, 0));
    PQclear(r);
    t->vals[0] = t->token_id;
    /* One key, one principal: the lock device certificates take too. */
    sv[0] = t->vals[2];
    sv[1] = t->token_id;
    if (!(r = qt_exec(c, QT_CERT_SPKI_LOCK, 1, sv, &st)))
        return st;
    PQclear(r);
    if (!(r = qt_exec(c, QT_TCERT_ELSEWHERE, 2, sv, &st)))
        return st;
    if (PQntuples(r) > 0)
        snprintf(t->in_use_by, sizeof(t->in_use_by), "%s", PQgetvalue(r, 0, 0));
    PQclear(r);
    if (t->in_use_by[0])
        return DB_CONFLICT;
    if (!(r = qt_exec(c, QT_TCERT_INSERT, 9, t->vals, &st)))
        return st;
    if (PQntuples(r) == 0) {
        PQclear(r);
        t->duplicate = true;
        return DB_CONFLICT;
    }
    json_decref(t->created_at);
    t->created_at = pgjson_time(r, 0, 0);
    PQclear(r);
    return audit_append(c, t->actor, "token.certificate_bound", NULL, json_incref(t->detail));
}

qk_kind token_certs_bind(qk_svc *s, const qk_principal *who, const char *token, const char *pem,
                         size_t len, json_t **out, qk_err *e)
{
    X509 *x = NULL;
    char sha[65], spki[65], nb[24], na[24], *subj = NULL, *iss = NULL, *hex = NULL, *xpem = NULL;
    unsigned char *der = NULL;
    int derl;
    bind_tx t;
    db_status st;
    qk_kind k;

    qk_clear(e);
    *out = NULL;
    memset(&t, 0, sizeof(t));
    if (!token || !auth_name_valid(token))
        return qk_fail(e, QK_NOT_FOUND, "not_found", "no live token with that name");
    if ((k = certs_parse_client(pem, len, &x, e)) != QK_OK)
        return k;
    if (x509_digests(x, sha, spki) != 0 || !(subj = x509_name_text(X509_get_subject_name(x))) ||
        !(iss = x509_name_text(X509_get_issuer_name(x))) || (derl = i2d_X509(x, &der)) <= 0 ||
        !(hex = malloc(2 * (size_t)derl + 1)) || !(xpem = x509_pem(x, NULL))) {
        k = qk_fail(e, QK_INTERNAL, "internal", "encoding the certificate failed");
        goto out;
    }
    x509_hex(der, (size_t)derl, hex);
    snprintf(nb, sizeof(nb), "%lld", (long long)x509_time(X509_get0_notBefore(x)));
    snprintf(na, sizeof(na), "%lld", (long long)x509_time(X509_get0_notAfter(x)));
    t.token = token;
    t.actor = who->name;
    const char *vals[9] = {NULL, sha, spki, subj, iss, nb, na, hex, who->name};
    memcpy(t.vals, vals, sizeof(vals));
    t.detail = json_pack("{s:s,s:s,s:s,s:s,s:o}", "token", token, "sha256", sha, "subject", subj,
                         "issuer", iss, "not_after", x509_rfc3339((time_t)strtoll(na, NULL, 10)));
    st = db_tx(s->db, bind_fn, &t);
    if (st == DB_NOT_FOUND && t.no_token) {
        k = qk_fail(e, QK_NOT_FOUND, "not_found", "no live token named '%s'", token);
        goto out;
    }
    if (st == DB_CONFLICT && (t.in_use_by[0] || t.duplicate)) {
        if (t.duplicate)
            k = qk_fail(e, QK_INVALID, "certificate_in_use", "this certificate is bound already");
        else
            k = qk_fail(e, QK_INVALID, "certificate_in_use",
                        "a certificate with this key is bound to %s", t.in_use_by);
        goto out;
    }
    if (st != DB_OK) {
        k = db_fail(e, st);
        goto out;
    }
    log_with(&who->log, LOG_INFO, "certificate bound to admin token", "{s:s,s:s}", "token", token,
             "sha256", sha);
    *out = json_pack("{s:s,s:s,s:s,s:s,s:s,s:o,s:o,s:O,s:s,s:s}", "token", token, "sha256", sha,
                     "spki_sha256", spki, "subject", subj, "issuer", iss, "not_before",
                     x509_rfc3339((time_t)strtoll(nb, NULL, 10)), "not_after",
                     x509_rfc3339((time_t)strtoll(na, NULL, 10)), "created_at", t.created_at,
                     "created_by", who->name, "certificate", xpem);
    k = *out ? QK_OK : qk_fail(e, QK_INTERNAL, "internal", "out of memory");
out:
    json_decref(t.created_at);
    json_decref(t.detail);
    free(xpem);
    free(hex);
    free(subj);
    free(iss);
    OPENSSL_free(der);
    X509_free(x);
    return k;
}

typedef struct {
    const char *vals[1];
    bool live;
    PGresult *rows;
} list_tx;

static db_status list_fn(db_conn *c, void *arg)
{
    list_tx *t = arg;
    db_status st;
    PGresult *r = qt_exec(c, QT_TCERT_TOKEN, 1, t->vals, &st);
    if (!r)
        return st;
    t->live = PQntuples(r) > 0;
    PQclear(r);
    PQclear(t->rows); /* a retried transaction's */
    t->rows = NULL;
    if (!t->live)
        return DB_NOT_FOUND;
    return (t->rows = qt_exec(c, QT_TCERT_LIST, 1, t->vals, &st)) ? DB_OK : st;
}

qk_kind token_certs_list(qk_svc *s, const char *token, json_t **out, qk_err *e)
{
    list_tx t = {{token}, false, NULL};
    json_t *arr;
    db_status st;

    qk_clear(e);
    *out = NULL;
    if (!token || !auth_name_valid(token))
        return qk_fail(e, QK_NOT_FOUND, "not_found", "no live token with that name");
    st = db_tx(s->db, list_fn, &t);
    if (st == DB_NOT_FOUND && !t.live)
        return qk_fail(e, QK_NOT_FOUND, "not_found", "no live token named '%s'", token);
    if (st != DB_OK) {
        PQclear(t.rows);
        return db_fail(e, st);
    }
    arr = json_array();
    for (int i = 0; arr && i < PQntuples(t.rows); i++)
        if (json_array_append_new(arr, binding_json(t.rows, i, token)) != 0) {
            json_decref(arr);
            arr = NULL;
        }
    PQclear(t.rows);
    *out = arr ? json_pack("{s:s,s:o}", "token", token, "certificates", arr) : NULL;
    return *out ? QK_OK : qk_fail(e, QK_INTERNAL, "internal", "out of memory");
}

typedef struct {
    const char *vals[2];
    const char *actor;
    bool none;
} unbind_tx;

static db_status unbind_fn(db_conn *c, void *arg)
{
    unbind_tx *t = arg;
    db_status st;
    PGresult *r = qt_exec(c, QT_TCERT_DELETE, 2, t->vals, &st);
    json_t *d;
    if (!r)
        return st;
    t->none = PQntuples(r) == 0;
    d = t->none ? NULL
                : json_pack("{s:s,s:s,s:s}", "token", t->vals[0], "sha256", t->vals[1], "subject",
                            PQgetvalue(r, 0, 0));
    PQclear(r);
    if (t->none)
        return DB_NOT_FOUND;
    return audit_append(c, t->actor, "token.certificate_unbound", NULL, d);
}

qk_kind token_certs_unbind(qk_svc *s, const qk_principal *who, const char *token,
                           const char *sha_hex, json_t **out, qk_err *e)
{
    unbind_tx t = {{token, sha_hex}, who->name, false};
    db_status st;

    qk_clear(e);
    *out = NULL;
    if (!token || !auth_name_valid(token) || !sha_valid(sha_hex))
        return qk_fail(e, QK_NOT_FOUND, "not_found",
                       "no such certificate (name it by the SHA-256 of its DER, 64 lower-case hex)");
    st = db_tx(s->db, unbind_fn, &t);
    if (st == DB_NOT_FOUND && t.none)
        return qk_fail(e, QK_NOT_FOUND, "not_found",
                       "live token '%s' has no certificate with that SHA-256", token);
    if (st != DB_OK)
        return db_fail(e, st);
    log_with(&who->log, LOG_INFO, "certificate unbound from admin token", "{s:s,s:s}", "token",
             token, "sha256", sha_hex);
    *out = json_pack("{s:s,s:s,s:b}", "token", token, "sha256", sha_hex, "unbound", 1);
    return *out ? QK_OK : qk_fail(e, QK_INTERNAL, "internal", "out of memory");
}

db_status token_certs_lookup(db_pool *db, const char *sha_hex, auth_principal *who)
{
    const char *vals[1] = {sha_hex};
    db_status st;
    PGresult *r = db_query(db, Q_TCERT_AUTH, 1, vals, NULL, NULL, &st);
    if (!r)
        return st;
    if (PQntuples(r) == 0) {
        PQclear(r);
        return DB_NOT_FOUND;
    }
    memset(who, 0, sizeof(*who));
    who->id = atoll(PQgetvalue(r, 0, 0));
    snprintf(who->name, sizeof(who->name), "%s", PQgetvalue(r, 0, 1));
    who->role = auth_role_parse(PQgetvalue(r, 0, 2));
    PQclear(r);
    return DB_OK;
}
