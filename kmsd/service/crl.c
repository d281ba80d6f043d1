/* crl — the platform CA's revocation list, made and stored (crl.h). */
#include "service/crl.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "log.h"
#include "service/ca.h"
#include "service/x509util.h"
#include "store/queries.h"

/* CRLs kept per CA version (older ones are pruned). */
#define CRL_KEEP 10

static const struct {
    const char *name;
    int code; /* RFC 5280 CRLReason */
} reasons[] = {
    {"unspecified", CRL_REASON_UNSPECIFIED},
    {"keyCompromise", CRL_REASON_KEY_COMPROMISE},
    {"affiliationChanged", CRL_REASON_AFFILIATION_CHANGED},
    {"superseded", CRL_REASON_SUPERSEDED},
    {"cessationOfOperation", CRL_REASON_CESSATION_OF_OPERATION},
    {"privilegeWithdrawn", CRL_REASON_PRIVILEGE_WITHDRAWN},
};

int crl_reason_code(const char *name)
{
    for (size_t i = 0; name && i < sizeof(reasons) / sizeof(reasons[0]); i++)
        if (!strcmp(reasons[i].name, name))
            return reasons[i].code;
    return -1;
}

/* One revoked entry: serial (hex), revocation time, reason. */
static int add_entry(X509_CRL *crl, const char *serial_hex, time_t at, const char *reason)
{
    X509_REVOKED *rv = X509_REVOKED_new();
    ASN1_INTEGER *sn = NULL;
    ASN1_TIME *t = ASN1_TIME_set(NULL, at);
    BIGNUM *bn = NULL;
    int code = crl_reason_code(reason), ok = -1;
    if (!rv || !t || !BN_hex2bn(&bn, serial_hex) || !(sn = BN_to_ASN1_INTEGER(bn, NULL)) ||
        X509_REVOKED_set_serialNumber(rv, sn) != 1 || X509_REVOKED_set_revocationDate(rv, t) != 1)
        goto out;
    /* RFC 5280 5.3.1: the reason code is omitted rather than "unspecified". */
    if (code > 0) {
        ASN1_ENUMERATED *e = ASN1_ENUMERATED_new();
        int added = e && ASN1_ENUMERATED_set(e, code) == 1 &&
                    X509_REVOKED_add1_ext_i2d(rv, NID_crl_reason, e, 0, 0) == 1;
        ASN1_ENUMERATED_free(e);
        if (!added)
            goto out;
    }
    if (X509_CRL_add0_revoked(crl, rv) == 1) {
        rv = NULL; /* owned by crl */
        ok = 0;
    }
out:
    X509_REVOKED_free(rv);
    ASN1_INTEGER_free(sn);
    ASN1_TIME_free(t);
    BN_free(bn);
    return ok;
}

/* The CRL of version's revoked rows r (serial, revoked_at epoch, reason). */
static X509_CRL *build(X509 *issuer, PGresult *r, long long number, time_t now, int interval)
{
    X509_CRL *crl = X509_CRL_new();
    ASN1_TIME *tu = ASN1_TIME_set(NULL, now), *nu = ASN1_TIME_set(NULL, now + 2L * interval);
    ASN1_INTEGER *num = ASN1_INTEGER_new();
    X509V3_CTX ctx;
    X509_EXTENSION *aki = NULL;
    bool ok = crl && tu && nu && num && X509_CRL_set_version(crl, 1) == 1 &&
              X509_CRL_set_issuer_name(crl, X509_get_subject_name(issuer)) == 1 &&
              X509_CRL_set1_lastUpdate(crl, tu) == 1 && X509_CRL_set1_nextUpdate(crl, nu) == 1 &&
              ASN1_INTEGER_set_int64(num, number) == 1 &&
              X509_CRL_add1_ext_i2d(crl, NID_crl_number, num, 0, 0) == 1;
    if (ok) {
        X509V3_set_ctx(&ctx, issuer, NULL, NULL, crl, 0);
        ok = (aki = X509V3_EXT_conf_nid(NULL, &ctx, NID_authority_key_identifier, "keyid:always")) &&
             X509_CRL_add_ext(crl, aki, -1) == 1;
    }
    for (int i = 0; ok && i < PQntuples(r); i++)
        ok = add_entry(crl, PQgetvalue(r, i, 0), (time_t)strtoll(PQgetvalue(r, i, 1), NULL, 10),
                       PQgetisnull(r, i, 2) ? NULL : PQgetvalue(r, i, 2)) == 0;
    ok = ok && X509_CRL_sort(crl) == 1;
    X509_EXTENSION_free(aki);
    ASN1_INTEGER_free(num);
    ASN1_TIME_free(tu);
    ASN1_TIME_free(nu);
    if (!ok) {
        X509_CRL_free(crl);
        return NULL;
    }
    return crl;
}

struct crl_tx {
    qk_svc *s;
    bool force;
    int version;
    char ver[16];
    char interval[16];
    long long number; /* the CRL made, 0 = none needed */
    CK_RV rv;         /* the token's answer when signing failed */
};

static db_status crl_tx_fn(db_conn *c, void *arg)
{
    struct crl_tx *t = arg;
    const char *vals[5] = {t->ver, t->interval};
    db_status st;
    PGresult *r = NULL;
    X509_CRL *crl = NULL;
    X509 *issuer = ca_cert(t->s->ca, t->version);
    unsigned char *der = NULL;
    char *hex = NULL, num[24], tu[24], nu[24];
    long long last = 0;
    time_t now = time(NULL);
    int derl;

    t->number = 0;
    t->rv = CKR_OK;
    /* Instances making CRLs at once take turns on the CA's row. */
    if (!(r = qt_exec(c, QT_CA_ROW_LOCK, 1, vals, &st)))
        return st;
    PQclear(r);
    if (!(r = qt_exec(c, QT_CRL_NEWEST, 2, vals, &st)))
        return st;
    if (PQntuples(r) > 0) {
        last = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
        if (!t->force && !strcmp(PQgetvalue(r, 0, 1), "t")) {
            PQclear(r);
            return DB_OK; /* the newest is recent enough */
        }
    }
    PQclear(r);
    if (!(r = qt_exec(c, QT_CRL_REVOKED, 1, vals, &st)))
        return st;
    crl = build(issuer, r, last + 1, now, atoi(t->interval));
    PQclear(r);
    if (!crl)
        return DB_ERROR;
    if ((t->rv = ca_sign_crl(t->s->ca, t->version, crl)) != CKR_OK) {
        X509_CRL_free(crl);
        return DB_ERROR;
    }
    st = DB_ERROR;
    if ((derl = i2d_X509_CRL(crl, &der)) <= 0 || !(hex = malloc(2 * (size_t)derl + 1)))
        goto out;
    x509_hex(der, (size_t)derl, hex);
    snprintf(num, sizeof(num), "%lld", last + 1);
    snprintf(tu, sizeof(tu), "%lld", (long long)now);
    snprintf(nu, sizeof(nu), "%lld", (long long)now + 2LL * atoi(t->interval));
    vals[1] = num;
    vals[2] = tu;
    vals[3] = nu;
    vals[4] = hex;
    if (!(r = qt_exec(c, QT_CRL_INSERT, 5, vals, &st)))
        goto out;
    PQclear(r);
    snprintf(num, sizeof(num), "%lld", last + 1 - CRL_KEEP);
    if (!(r = qt_exec(c, QT_CRL_PRUNE, 2, vals, &st)))
        goto out;
    PQclear(r);
    t->number = last + 1;
    st = DB_OK;
out:
    free(hex);
    OPENSSL_free(der);
    X509_CRL_free(crl);
    return st;
}

/* One version's CRL (crl_refresh). */
static qk_kind refresh_version(qk_svc *s, int version, bool force, qk_err *e)
{
    struct crl_tx t = {.s = s, .force = force, .version = version};
    db_status st;
    snprintf(t.ver, sizeof(t.ver), "%d", t.version);
    snprintf(t.interval, sizeof(t.interval), "%d", s->cfg->ca_crl_interval);
    st = db_tx(s->db, crl_tx_fn, &t);
    if (t.rv != CKR_OK) {
        log_emit(LOG_WARN, "CRL not made", "{s:i,s:s}", "ca_version", t.version, "ckr",
                 p11_rv_name(t.rv));
        return qk_from_token(e, t.rv, NULL);
    }
    if (st != DB_OK) {
        log_emit(LOG_WARN, "CRL not made", "{s:i,s:s}", "ca_version", t.version, "error",
                 db_status_name(st));
        return db_fail(e, st);
    }
    if (t.number)
        log_emit(LOG_INFO, "CRL made", "{s:i,s:I,s:b}", "ca_version", t.version, "crl_number",
                 (json_int_t)t.number, "forced", force);
    return QK_OK;
}

qk_kind crl_refresh(qk_svc *s, bool force, qk_err *e)
{
    int versions[32], n = ca_versions_valid(s->ca, versions, 32);
    qk_kind k = QK_OK;
    qk_err ve;
    qk_clear(e);
    /* Every version that still verifies keeps its own CRL: what a retired
     * version issued is revoked in the list its key signs. */
    for (int i = 0; i < n; i++)
        if (refresh_version(s, versions[i], force, &ve) != QK_OK && k == QK_OK) {
            k = ve.kind;
            *e = ve;
        }
    return k;
}

static qk_kind newest(qk_svc *s, const char *ver, PGresult **out, qk_err *e)
{
    const char *vals[] = {ver};
    db_status st;
    db_conn *c = db_acquire(s->db, &st);
    if (!c)
        return db_fail(e, st);
    *out = qt_exec(c, QT_CRL_GET, 1, vals, &st);
    db_release(s->db, c);
    return *out ? QK_OK : db_fail(e, st);
}

/* The CRL's DER as PEM (malloc'd). */
static char *pem_of_der(const unsigned char *der, size_t len, size_t *out_len)
{
    const unsigned char *p = der;
    X509_CRL *crl = d2i_X509_CRL(NULL, &p, (long)len);
    BIO *b = BIO_new(BIO_s_mem());
    char *out = NULL, *m;
    long n;
    if (crl && b && PEM_write_bio_X509_CRL(b, crl) == 1 && (n = BIO_get_mem_data(b, &m)) > 0 &&
        (out = malloc((size_t)n + 1))) {
        memcpy(out, m, (size_t)n);
        out[n] = '\0';
        *out_len = (size_t)n;
    }
    BIO_free(b);
    X509_CRL_free(crl);
    return out;
}

qk_kind crl_get(qk_svc *s, int version, bool pem, char **body, size_t *len, qk_err *e)
{
    char ver[16];
    X509 *cert;
    PGresult *r = NULL;
    unsigned char *der = NULL;
    size_t dl = 0;
    qk_kind k;

    qk_clear(e);
    *body = NULL;
    if (version == 0)
        ca_active_cert(s->ca, &version);
    if (!(cert = ca_cert(s->ca, version)))
        return qk_fail(e, QK_NOT_FOUND, "not_found", "no CA version %d", version);
    if (X509_cmp_current_time(X509_get0_notAfter(cert)) <= 0)
        return qk_fail(e, QK_NOT_FOUND, "not_found",
                       "CA version %d has expired: it keeps no CRL", version);
    snprintf(ver, sizeof(ver), "%d", version);
    if ((k = newest(s, ver, &r, e)) != QK_OK)
        return k;
    if (PQntuples(r) == 0) {
        PQclear(r);
        if ((k = refresh_version(s, version, false, e)) != QK_OK ||
            (k = newest(s, ver, &r, e)) != QK_OK)
            return k;
        if (PQntuples(r) == 0) {
            PQclear(r);
            return qk_fail(e, QK_UNAVAILABLE, "unavailable", "no CRL yet; retry");
        }
    }
    k = x509_unhex(PQgetvalue(r, 0, 0), &der, &dl) == 0 ? QK_OK
                                                         : qk_fail(e, QK_INTERNAL, "internal", "out of memory");
    PQclear(r);
    if (k != QK_OK)
        return k;
    if (pem) {
        *body = pem_of_der(der, dl, len);
    } else if ((*body = malloc(dl ? dl : 1))) {
        memcpy(*body, der, dl);
        *len = dl;
    }
    OPENSSL_free(der);
    return *body ? QK_OK : qk_fail(e, QK_INTERNAL, "internal", "out of memory");
}
