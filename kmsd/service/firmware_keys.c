/*
 * firmware_keys — product lines' firmware signing keys and named
 * data-signing keys (firmware_keys.h): the pair in the token, its
 * certificate from the platform CA, the row and its audit row in one
 * transaction under the key's advisory lock. The two purposes differ only
 * in the strings of struct purpose below.
 */
#include "service/firmware_keys.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "qkms_proto2.h"
#include "service/audit.h"
#include "service/ca.h"
#include "service/crl.h"
#include "service/names.h"
#include "service/x509util.h"
#include "store/pgjson.h"
#include "store/queries.h"

bool firmware_product_valid(const char *product) { return product && name_valid(product, 64); }

/* What a purpose's keys are called and certified as. */
struct purpose {
    const char *db;          /* firmware_keys.purpose */
    const char *label;       /* the token objects' label: this, name, "-", version */
    const char *cn;          /* the certificate's CN: this, name, " ", version */
    const char *eku;         /* extended key usage, or NULL */
    const char *field;       /* the name's field in records and audit rows */
    const char *lock_prefix; /* before the name in Q_FW_KEY_LOCK's argument */
    const char *invalid;     /* the code of a bad name */
    const char *ev_created, *ev_rotated, *what;
};

static const struct purpose FIRMWARE = {"firmware", "qkms-fw-", "qkms firmware ",
                                        "codeSigning", "product", "", "invalid_product",
                                        "firmware.key_created", "firmware.key_rotated",
                                        "firmware key"};
static const struct purpose DATA = {"data", "qkms-sign-", "qkms signing ", DATA_SIGNING_EKU, "name",
                                    "data/", "invalid_name", "signing.key_created",
                                    "signing.key_rotated", "data-signing key"};

/* The token's public key under label, as an EVP_PKEY. */
static EVP_PKEY *token_pub(p11_token *t, const char *label, CK_RV *rv)
{
    uint8_t point[QKP2_POINT_LEN];
    size_t n = sizeof(point);
    EVP_PKEY *k;
    if ((*rv = p11_ec_public_point(t, label, point, &n)) != CKR_OK)
        return NULL;
    if (n != QKP2_POINT_LEN || !(k = qkp2_point_key(point, n))) {
        *rv = CKR_ATTRIBUTE_VALUE_INVALID;
        return NULL;
    }
    return k;
}

/* A certificate of the platform CA for the token's signing key under
 * label: CN "qkms firmware <product> <version>", codeSigning. */
static qk_kind issue(qk_svc *s, const struct purpose *pp, const char *product, int version,
                     const char *label, X509 **out, qk_err *e)
{
    CK_RV rv = CKR_OK;
    EVP_PKEY *pub = token_pub(s->token, label, &rv);
    char cn[128];

    *out = NULL;
    if (!pub)
        return qk_from_token(e, rv, "reading a firmware key's public half");
    snprintf(cn, sizeof(cn), "%s%s %d", pp->cn, product, version);
    *out = ca_issue_leaf(s->ca, pub, cn, FIRMWARE_KEY_DAYS, "critical,digitalSignature", pp->eku,
                         &rv);
    EVP_PKEY_free(pub);
    if (!*out)
        return qk_from_token(e, rv, "the platform CA certifying a firmware key");
    return QK_OK;
}

static json_t *key_json(const PGresult *r, int i, const char *field)
{
    /* cert_der comes as "\x<hex>" */
    const char *hx = PQgetvalue(r, i, 9);
    unsigned char *der = NULL;
    size_t len = 0;
    const unsigned char *q;
    X509 *x = NULL;
    char *pem = NULL, *subject = NULL;
    size_t pl = 0;
    json_t *o = NULL;

    if (strlen(hx) > 2 && x509_unhex(hx + 2, &der, &len) == 0 && (q = der) &&
        (x = d2i_X509(NULL, &q, (long)len)) && (pem = x509_pem(x, &pl)) &&
        (subject = x509_name_text(X509_get_subject_name(x))))
        o = json_pack("{s:o,s:i,s:o,s:o,s:s,s:o,s:o,s:o,s:o,s:o,s:s%,s:o,s:o}", field,
                      pgjson_text(r, i, 0), "version", atoi(PQgetvalue(r, i, 1)), "state",
                      pgjson_text(r, i, 2), "sha256", pgjson_text(r, i, 3), "subject", subject,
                      "not_after", pgjson_time(r, i, 4), "overlap_until", pgjson_time(r, i, 5),
                      "created_at", pgjson_time(r, i, 6), "created_by", pgjson_text(r, i, 7),
                      "retired_at", pgjson_time(r, i, 8), "certificate", pem, pl,
                      "revoked_at", pgjson_time(r, i, 10), "revoke_reason", pgjson_text(r, i, 11));
    free(pem);
    free(subject);
    X509_free(x);
    OPENSSL_free(der);
    return o;
}

static json_t *fw_key_json(const PGresult *r, int i) { return key_json(r, i, "product"); }
static json_t *data_key_json(const PGresult *r, int i) { return key_json(r, i, "name"); }

static qk_kind bad_name(const struct purpose *pp, qk_err *e)
{
    return qk_fail(e, QK_INVALID, pp->invalid,
                   "%s must be 1-64 of A-Z a-z 0-9 . _ -, starting with a letter or digit",
                   pp->field);
}

static qk_kind list(qk_svc *s, const struct purpose *pp, const char *product, json_t **out,
                    qk_err *e)
{
    const char *vals[2] = {product, pp->db};
    db_status st;
    PGresult *r;

    *out = NULL;
    if (product && !firmware_product_valid(product))
        return bad_name(pp, e);
    if (!(r = db_query(s->db, Q_FW_KEYS_LIST, 2, vals, NULL, NULL, &st)))
        return db_fail(e, st);
    *out = json_pack("{s:o}", "keys", pgjson_rows(r, pp == &DATA ? data_key_json : fw_key_json));
    PQclear(r);
    return *out ? QK_OK : qk_fail(e, QK_INTERNAL, "internal", "out of memory");
}

qk_kind firmware_keys_list(qk_svc *s, const char *product, json_t **out, qk_err *e)
{
    return list(s, &FIRMWARE, product, out, e);
}

qk_kind data_keys_list(qk_svc *s, const char *name, json_t **out, qk_err *e)
{
    return list(s, &DATA, name, out, e);
}

/* One creation or rotation, in one transaction (db_tx). */
typedef struct {
    qk_svc *s;
    const qk_principal *who;
    const struct purpose *pp;
    const char *product;
    bool rotate;
    int overlap_days;
    int version;      /* the new key's */
    char label[96];
    qk_err *e;
    bool refused;
} fw_tx;

static db_status fw_tx_fn(db_conn *c, void *arg)
{
    fw_tx *t = arg;
    char lockname[80];
    const char *lv[1] = {lockname}, *pv[2] = {t->product, t->pp->db};
    char ver[16], days[16], sha_hex[65], spki[65], na[24];
    unsigned char *der = NULL;
    int dl;
    PGresult *r = NULL;
    db_status st;
    X509 *x = NULL;
    CK_OBJECT_HANDLE h;
    CK_RV rv;
    int active;

    qk_clear(t->e);
    t->refused = false;
    snprintf(lockname, sizeof(lockname), "%s%s", t->pp->lock_prefix, t->product);
    if (!(r = db_exec(c, Q_FW_KEY_LOCK, 1, lv, NULL, NULL, &st)))
        goto out;
    PQclear(r);
    if (!(r = db_exec(c, Q_FW_KEY_CURRENT, 2, pv, NULL, NULL, &st)))
        goto out;
    /* (max version, the active version or NULL) */
    t->version = atoi(PQgetvalue(r, 0, 0)) + 1;
    active = PQgetisnull(r, 0, 1) ? 0 : atoi(PQgetvalue(r, 0, 1));
    PQclear(r);
    r = NULL;
    if (!t->rotate && active) {
        qk_fail(t->e, QK_CONFLICT, "conflict", "%s '%s' has a %s (version %d): rotate it",
                t->pp->field, t->product, t->pp->what, active);
        t->refused = true;
        st = DB_OK;
        goto out;
    }
    if (t->rotate && !active) {
        qk_fail(t->e, QK_NOT_FOUND, "not_found", "%s '%s' has no %s", t->pp->field, t->product,
                t->pp->what);
        t->refused = true;
        st = DB_OK;
        goto out;
    }
    snprintf(t->label, sizeof(t->label), "%s%s-%d", t->pp->label, t->product, t->version);
    /* The token key first; a retry finds the one made before. */
    if ((rv = p11_generate_ec_key_pair(t->s->token, t->label, P11_EC_SIGN, &h)) != CKR_OK) {
        qk_from_token(t->e, rv, "generating a firmware signing key");
        st = DB_ERROR;
        goto out;
    }
    if (issue(t->s, t->pp, t->product, t->version, t->label, &x, t->e) != QK_OK) {
        st = DB_ERROR;
        goto out;
    }
    if ((dl = i2d_X509(x, &der)) <= 0 || x509_digests(x, sha_hex, spki) != 0) {
        qk_fail(t->e, QK_INTERNAL, "internal", "internal error (see kmsd log)");
        st = DB_ERROR;
        goto out;
    }
    snprintf(ver, sizeof(ver), "%d", t->version);
    snprintf(days, sizeof(days), "%d", t->overlap_days);
    snprintf(na, sizeof(na), "%lld", (long long)x509_time(X509_get0_notAfter(x)));
    {
        const char *vals[8] = {t->product, ver, t->label, (const char *)der, sha_hex, na,
                               t->who->name, t->pp->db};
        int lens[8] = {0, 0, 0, dl, 0, 0, 0, 0}, fmts[8] = {0, 0, 0, 1, 0, 0, 0, 0};
        if (t->rotate) {
            const char *rv2[3] = {t->product, days, t->pp->db};
            if (!(r = db_exec(c, Q_FW_KEY_RETIRE, 3, rv2, NULL, NULL, &st)))
                goto out;
            PQclear(r);
        }
        if (!(r = db_exec(c, Q_FW_KEY_INSERT, 8, vals, lens, fmts, &st)))
            goto out;
        PQclear(r);
        r = NULL;
    }
    {
        json_t *d = json_pack("{s:s,s:i,s:s}", t->pp->field, t->product, "version", t->version,
                              "sha256", sha_hex);
        if (d && t->rotate)
            json_object_set_new(d, "overlap_days", json_integer(t->overlap_days));
        st = audit_append(c, t->who->name,
                          t->rotate ? t->pp->ev_rotated : t->pp->ev_created, NULL, d);
    }
out:
    OPENSSL_free(der);
    X509_free(x);
    PQclear(r);
    return st;
}

static qk_kind run(qk_svc *s, const qk_principal *who, const struct purpose *pp,
                   const char *product, bool rotate, int overlap_days, json_t **out, qk_err *e)
{
    fw_tx t;
    db_status st;
    json_t *all = NULL, *k;
    size_t i;

    *out = NULL;
    if (!firmware_product_valid(product))
        return bad_name(pp, e);
    if (rotate && (overlap_days < 1 || overlap_days > FIRMWARE_OVERLAP_MAX_DAYS))
        return qk_fail(e, QK_INVALID, "invalid_overlap", "overlap_days must be from 1 to %d",
                       FIRMWARE_OVERLAP_MAX_DAYS);
    memset(&t, 0, sizeof(t));
    qk_clear(e); /* db_tx may fail before the callback ever ran */
    t.s = s;
    t.who = who;
    t.pp = pp;
    t.product = product;
    t.rotate = rotate;
    t.overlap_days = overlap_days;
    t.e = e;
    st = db_tx(s->db, fw_tx_fn, &t);
    if (st != DB_OK)
        return !t.refused && e->kind != QK_OK ? e->kind : db_fail(e, st);
    if (t.refused)
        return e->kind;
    log_with(&who->log, LOG_INFO, rotate ? "signing key rotated" : "signing key created",
             "{s:s,s:s,s:i,s:s}", "purpose", pp->db, pp->field, product, "version", t.version,
             "by", who->name);
    if (list(s, pp, product, &all, e) != QK_OK)
        return e->kind;
    json_array_foreach(json_object_get(all, "keys"), i, k) {
        if (json_integer_value(json_object_get(k, "version")) == t.version)
            *out = json_incref(k);
    }
    json_decref(all);
    return *out ? QK_OK : qk_fail(e, QK_INTERNAL, "internal", "internal error (see kmsd log)");
}

qk_kind firmware_keys_create(qk_svc *s, const qk_principal *who, const char *product,
                             json_t **out, qk_err *e)
{
    return run(s, who, &FIRMWARE, product, false, 0, out, e);
}

qk_kind firmware_keys_rotate(qk_svc *s, const qk_principal *who, const char *product,
                             int overlap_days, json_t **out, qk_err *e)
{
    return run(s, who, &FIRMWARE, product, true, overlap_days, out, e);
}

qk_kind data_keys_create(qk_svc *s, const qk_principal *who, const char *name, json_t **out,
                         qk_err *e)
{
    return run(s, who, &DATA, name, false, 0, out, e);
}

qk_kind data_keys_rotate(qk_svc *s, const qk_principal *who, const char *name, int overlap_days,
                         json_t **out, qk_err *e)
{
    return run(s, who, &DATA, name, true, overlap_days, out, e);
}

/* ---- revocation ----------------------------------------------------------- */

typedef struct {
    qk_svc *s;
    const qk_principal *who;
    const struct purpose *pp;
    const char *name, *reason;
    int version;
    char label[96]; /* the token key's */
    qk_err *e;
    bool refused;
} revoke_tx;

/* The CA version whose key signed x (its serial goes into that version's
 * CRL), or 0. */
static int issuing_version(qk_ca *ca, X509 *x)
{
    int versions[32], n = ca_versions_valid(ca, versions, 32), v = 0;
    for (int i = 0; i < n && !v; i++) {
        X509 *c = ca_cert(ca, versions[i]);
        if (c && X509_verify(x, X509_get0_pubkey(c)) == 1)
            v = versions[i];
    }
    ERR_clear_error(); /* the versions that did not verify it */
    return v;
}

static db_status revoke_fn(db_conn *c, void *arg)
{
    revoke_tx *t = arg;
    char lockname[80], ver[16], cav[16], serial[44];
    const char *lv[1] = {lockname}, *kv[3] = {t->name, ver, t->pp->db};
    db_status st;
    PGresult *r = NULL;
    X509 *x = NULL;
    const unsigned char *q;
    unsigned char *der = NULL;
    size_t len;
    int cv;

    qk_clear(t->e);
    t->refused = true;
    snprintf(lockname, sizeof(lockname), "%s%s", t->pp->lock_prefix, t->name);
    snprintf(ver, sizeof(ver), "%d", t->version);
    if (!(r = db_exec(c, Q_FW_KEY_LOCK, 1, lv, NULL, NULL, &st)))
        return st;
    PQclear(r);
    if (!(r = db_exec(c, Q_FW_KEY_ONE, 3, kv, NULL, NULL, &st)))
        return st;
    if (PQntuples(r) == 0) {
        qk_fail(t->e, QK_NOT_FOUND, "not_found", "%s '%s' has no key version %d", t->pp->field,
                t->name, t->version);
        st = DB_OK;
        goto out;
    }
    if (!strcmp(PQgetvalue(r, 0, 0), "revoked")) {
        qk_fail(t->e, QK_CONFLICT, "conflict", "version %d is revoked already", t->version);
        st = DB_OK;
        goto out;
    }
    /* the certificate's serial and issuer, for the CRL */
    {
        const char *hx = PQgetvalue(r, 0, 1); /* bytea as "\x<hex>" */
        if (strlen(hx) < 3 || x509_unhex(hx + 2, &der, &len) != 0 || !(q = der) ||
            !(x = d2i_X509(NULL, &q, (long)len)) || x509_serial_hex(x, serial, sizeof(serial)) != 0) {
            qk_fail(t->e, QK_INTERNAL, "internal", "a stored certificate does not parse");
            st = DB_ERROR;
            t->refused = false;
            goto out;
        }
    }
    /* an expired CA version keeps no CRL: its certificates are dead anyway
     * (a leaf never outlives its CA); a live one not found is logged */
    cv = issuing_version(t->s->ca, x);
    if (cv == 0 && X509_cmp_current_time(X509_get0_notAfter(x)) > 0)
        log_emit(LOG_WARN, "a revoked signing key's issuing CA version was not found: it is in "
                 "no CRL", "{s:s,s:i}", t->pp->field, t->name, "version", t->version);
    snprintf(t->label, sizeof(t->label), "%s", PQgetvalue(r, 0, 2));
    snprintf(cav, sizeof(cav), "%d", cv > 0 ? cv : 0);
    PQclear(r);
    {
        const char *uv[6] = {t->name, ver, t->pp->db, t->reason, serial, cav};
        if (!(r = db_exec(c, Q_FW_KEY_REVOKE, 6, uv, NULL, NULL, &st))) {
            t->refused = false;
            goto out;
        }
    }
    t->refused = false;
    st = audit_append(c, t->who->name, t->pp == &DATA ? "signing.key_revoked"
                                                     : "firmware.key_revoked",
                      NULL,
                      json_pack("{s:s,s:i,s:s,s:s}", t->pp->field, t->name, "version",
                                t->version, "reason", t->reason, "serial", serial));
out:
    X509_free(x);
    OPENSSL_free(der);
    PQclear(r);
    return st;
}

static qk_kind revoke(qk_svc *s, const qk_principal *who, const struct purpose *pp,
                      const char *name, int version, const char *reason, json_t **out, qk_err *e)
{
    revoke_tx t = {.s = s, .who = who, .pp = pp, .name = name, .version = version,
                   .reason = reason ? reason : "unspecified", .e = e};
    json_t *all = NULL, *k;
    db_status st;
    qk_err ce;
    size_t i;

    *out = NULL;
    qk_clear(e);
    if (!firmware_product_valid(name))
        return bad_name(pp, e);
    if (crl_reason_code(t.reason) < 0)
        return qk_fail(e, QK_INVALID, "invalid_reason",
                       "reason must be an RFC 5280 name: unspecified, keyCompromise, "
                       "affiliationChanged, superseded, cessationOfOperation, privilegeWithdrawn");
    if (version < 1)
        return qk_fail(e, QK_NOT_FOUND, "not_found", "no such version");
    st = db_tx(s->db, revoke_fn, &t);
    if (st != DB_OK)
        return !t.refused && e->kind != QK_OK ? e->kind : db_fail(e, st);
    if (t.refused)
        return e->kind;
    log_with(&who->log, LOG_WARN, "signing key revoked", "{s:s,s:s,s:i,s:s}", "purpose", pp->db,
             pp->field, name, "version", version, "reason", t.reason);
    /* The private key goes from the token (committed first: a failure
     * leaves a key nothing uses, logged); the public half stays. */
    {
        CK_OBJECT_HANDLE h;
        bool found = false;
        CK_RV rv = p11_find_private_key(s->token, t.label, &h, &found);
        if (rv == CKR_OK && found)
            rv = p11_destroy_object(s->token, h);
        if (rv != CKR_OK)
            log_emit(LOG_ERROR, "destroying a revoked signing key in the token failed",
                     "{s:s,s:s}", "label", t.label, "ckr", p11_rv_name(rv));
    }
    /* the CRL now; a failure leaves the revocation in place, for the next */
    if (crl_refresh(s, true, &ce) != QK_OK)
        log_emit(LOG_ERROR, "CRL refresh after a signing key revocation failed", "{s:s}", "error",
                 ce.detail);
    if (list(s, pp, name, &all, e) != QK_OK)
        return e->kind;
    json_array_foreach(json_object_get(all, "keys"), i, k) {
        if (json_integer_value(json_object_get(k, "version")) == version)
            *out = json_incref(k);
    }
    json_decref(all);
    return *out ? QK_OK : qk_fail(e, QK_INTERNAL, "internal", "internal error (see kmsd log)");
}

qk_kind firmware_keys_revoke(qk_svc *s, const qk_principal *who, const char *product, int version,
                             const char *reason, json_t **out, qk_err *e)
{
    return revoke(s, who, &FIRMWARE, product, version, reason, out, e);
}

qk_kind data_keys_revoke(qk_svc *s, const qk_principal *who, const char *name, int version,
                         const char *reason, json_t **out, qk_err *e)
{
    return revoke(s, who, &DATA, name, version, reason, out, e);
}
