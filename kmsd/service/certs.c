/* certs — device certificates: issued by the platform CA from CSRs (certs.h). */
#include "service/certs.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/bio.h>
#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "fillpkg.h"
#include "log.h"
#include "qbuf.h"
#include "service/audit.h"
#include "service/ca.h"
#include "service/crl.h"
#include "service/device_model.h"
#include "service/trust.h"
#include "service/x509util.h"
#include "store/pgjson.h"
#include "store/queries.h"

#define CERT_DEFAULT_DAYS 365
#define CERT_MAX_DAYS 3650
/* Certificates start a minute early: a device whose clock runs a little
 * behind must not see its brand-new certificate as not yet valid. */
#define CERT_BACKDATE_S 60

/* A serial as certificates stores it: 2..40 lower-case hex digits. */
static bool serial_valid(const char *s)
{
    size_t n = s ? strlen(s) : 0;
    if (n < 2 || n > 40)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return false;
    return true;
}

/* The CSR's public key, if we accept it: EC P-256/P-384, RSA 2048..8192
 * bits, Ed25519. */
static qk_kind key_acceptable(EVP_PKEY *k, qk_err *e)
{
    char group[32] = "";
    size_t gl = 0;
    switch (EVP_PKEY_get_base_id(k)) {
    case EVP_PKEY_EC:
        if (EVP_PKEY_get_utf8_string_param(k, OSSL_PKEY_PARAM_GROUP_NAME, group, sizeof(group),
                                           &gl) == 1 &&
            (!strcmp(group, "prime256v1") || !strcmp(group, "secp384r1") ||
             !strcmp(group, "P-256") || !strcmp(group, "P-384")))
            return QK_OK;
        return qk_fail(e, QK_INVALID, "unsupported_key",
                       "EC keys must be on P-256 or P-384 (this one: %.31s)", gl ? group : "unknown");
    case EVP_PKEY_RSA:
        if (EVP_PKEY_get_bits(k) >= 2048 && EVP_PKEY_get_bits(k) <= 8192)
            return QK_OK;
        return qk_fail(e, QK_INVALID, "unsupported_key",
                       "RSA keys must have 2048 to 8192 bits (this one: %d)", EVP_PKEY_get_bits(k));
    case EVP_PKEY_ED25519:
        return QK_OK;
    default:
        return qk_fail(e, QK_INVALID, "unsupported_key",
                       "the key must be EC (P-256, P-384), RSA (2048+) or Ed25519");
    }
}

/* A certificate built for the CA version that was active, which a rotation
 * retired before it was signed: 503, retry (it is built afresh). */
static qk_kind ca_rotated(qk_err *e)
{
    qk_fail(e, QK_UNAVAILABLE, "unavailable", "the platform CA was rotated meanwhile; retry");
    e->retry_after = 1;
    return QK_UNAVAILABLE;
}

/* The CSR's subject may name the device (CN) or nothing; never another. */
static qk_kind subject_ok(X509_REQ *req, const char *device_id, qk_err *e)
{
    X509_NAME *n = X509_REQ_get_subject_name(req);
    int i = -1;
    while ((i = X509_NAME_get_index_by_NID(n, NID_commonName, i)) >= 0) {
        ASN1_STRING *d = X509_NAME_ENTRY_get_data(X509_NAME_get_entry(n, i));
        unsigned char *u = NULL;
        int ul = ASN1_STRING_to_UTF8(&u, d);
        bool same = ul >= 0 && (size_t)ul == strlen(device_id) && !memcmp(u, device_id, (size_t)ul);
        OPENSSL_free(u);
        if (!same)
            return qk_fail(e, QK_INVALID, "csr_subject_mismatch",
                           "the CSR's subject CN must be the device ID '%s'", device_id);
    }
    return QK_OK;
}

static qk_kind parse_csr(const cert_request *rq, X509_REQ **out, EVP_PKEY **key, qk_err *e)
{
    BIO *b;
    X509_REQ *req = NULL;
    EVP_PKEY *k;
    qk_kind kd;
    if (!rq->csr_pem || rq->csr_len == 0 || rq->csr_len > 16384)
        return qk_fail(e, QK_INVALID, "invalid_csr", "csr must be a PEM CERTIFICATE REQUEST (at most 16 KiB)");
    if (!(b = BIO_new_mem_buf(rq->csr_pem, (int)rq->csr_len)))
        return qk_fail(e, QK_INTERNAL, "internal", "out of memory");
    req = PEM_read_bio_X509_REQ(b, NULL, NULL, NULL);
    BIO_free(b);
    if (!req)
        return qk_fail(e, QK_INVALID, "invalid_csr", "csr is not a PEM CERTIFICATE REQUEST");
    if (!(k = X509_REQ_get0_pubkey(req))) {
        X509_REQ_free(req);
        return qk_fail(e, QK_INVALID, "invalid_csr", "the CSR's public key does not parse");
    }
    if ((kd = key_acceptable(k, e)) != QK_OK) {
        X509_REQ_free(req);
        return kd;
    }
    if (X509_REQ_verify(req, k) != 1) {
        X509_REQ_free(req);
        return qk_fail(e, QK_INVALID, "invalid_csr", "the CSR's signature does not verify");
    }
    if ((kd = subject_ok(req, rq->device_id, e)) != QK_OK) {
        X509_REQ_free(req);
        return kd;
    }
    *out = req;
    *key = k;
    return QK_OK;
}

/* The device's URI: urn:qkms:device:<id>, the ID percent-encoded where a
 * URI may not carry it as it is. */
static void device_uri(const char *id, char *out, size_t len)
{
    static const char hx[] = "0123456789ABCDEF";
    size_t o = (size_t)snprintf(out, len, "urn:qkms:device:");
    for (const unsigned char *p = (const unsigned char *)id; *p && o + 4 < len; p++) {
        if ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
            strchr("-._~:@!$&'()*+;=", *p))
            out[o++] = (char)*p;
        else {
            out[o++] = '%';
            out[o++] = hx[*p >> 4];
            out[o++] = hx[*p & 15];
        }
    }
    out[o] = '\0';
}

/* The subjectAltName with the device's URI, built as a value: never
 * through OpenSSL's configuration syntax, where a device ID's ',' would
 * start another name ("a,URI:urn:qkms:device:victim"). */
static int add_device_san(X509 *x, const char *device_id)
{
    char uri[512];
    GENERAL_NAMES *names = GENERAL_NAMES_new();
    GENERAL_NAME *gn = GENERAL_NAME_new();
    ASN1_IA5STRING *v = ASN1_IA5STRING_new();
    int ok = -1;
    device_uri(device_id, uri, sizeof(uri));
    if (names && gn && v && ASN1_STRING_set(v, uri, -1) == 1) {
        GENERAL_NAME_set0_value(gn, GEN_URI, v);
        v = NULL; /* owned by gn */
        if (sk_GENERAL_NAME_push(names, gn)) {
            gn = NULL; /* owned by names */
            ok = X509_add1_ext_i2d(x, NID_subject_alt_name, names, 0, 0) == 1 ? 0 : -1;
        }
    }
    ASN1_IA5STRING_free(v);
    GENERAL_NAME_free(gn);
    GENERAL_NAMES_free(names);
    return ok;
}

/* The device's own validity: the latest notAfter of its active keys (a
 * device whose keys have all expired can do nothing, and nor may a
 * certificate of it). QK_OK with *until; 404 for no such device; 409
 * invalid_state when it has no live key. The transaction that stores the
 * certificate checks the device's state again. */
static qk_kind device_until(qk_svc *s, const char *device_id, time_t *until, qk_err *e)
{
    const char *vals[1] = {device_id};
    db_status st;
    db_conn *c = db_acquire(s->db, &st);
    PGresult *r;
    qk_kind k = QK_OK;

    if (!c)
        return db_fail(e, st);
    r = qt_exec(c, QT_CERT_DEVICE_UNTIL, 1, vals, &st);
    db_release(s->db, c);
    if (!r)
        return db_fail(e, st);
    if (PQntuples(r) == 0)
        k = qk_fail(e, QK_NOT_FOUND, "not_found", "no device '%s'", device_id);
    else if (PQgetisnull(r, 0, 1))
        k = qk_fail(e, QK_CONFLICT, "invalid_state",
                    "device '%s' has no live key: a certificate would outlive it", device_id);
    else
        *until = (time_t)strtoll(PQgetvalue(r, 0, 1), NULL, 10);
    PQclear(r);
    return k;
}

/* The certificate, its issuer the active CA version, *version; it ends
 * after days, and never after the CA or device_end. */
static X509 *build_cert(qk_ca *ca, const char *device_id, EVP_PKEY *key, int days,
                        time_t device_end, int *version)
{
    X509 *issuer = ca_active_cert(ca, version), *x = X509_new();
    X509_NAME *n = X509_NAME_new();
    long secs = (long)days * 86400;
    time_t ca_end = x509_time(X509_get0_notAfter(issuer));
    bool ok;
    /* Never beyond the CA's own validity (certs_issue refuses a CA with
     * less than a day left), nor the device's own (its live keys'). */
    if (ca_end && ca_end - time(NULL) < secs)
        secs = (long)(ca_end - time(NULL));
    if (device_end && device_end - time(NULL) < secs)
        secs = (long)(device_end - time(NULL));
    ok = x && n && X509_set_version(x, 2) == 1 && x509_random_serial(x) == 0 &&
         X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_UTF8, (const unsigned char *)device_id, -1,
                                    -1, 0) == 1 &&
         X509_set_subject_name(x, n) == 1 &&
         X509_set_issuer_name(x, X509_get_subject_name(issuer)) == 1 &&
         X509_gmtime_adj(X509_getm_notBefore(x), -CERT_BACKDATE_S) &&
         X509_gmtime_adj(X509_getm_notAfter(x), secs) && X509_set_pubkey(x, key) == 1 &&
         x509_add_ext(x, issuer, NID_basic_constraints, "critical,CA:FALSE") == 0 &&
         x509_add_ext(x, issuer, NID_key_usage,
                 EVP_PKEY_get_base_id(key) == EVP_PKEY_RSA
                     ? "critical,digitalSignature,keyEncipherment"
                     : EVP_PKEY_get_base_id(key) == EVP_PKEY_EC
                           ? "critical,digitalSignature,keyAgreement"
                           : "critical,digitalSignature") == 0 &&
         x509_add_ext(x, issuer, NID_ext_key_usage, "clientAuth") == 0 &&
         add_device_san(x, device_id) == 0 &&
         x509_add_ext(x, issuer, NID_subject_key_identifier, "hash") == 0 &&
         x509_add_ext(x, issuer, NID_authority_key_identifier, "keyid:always") == 0;
    X509_NAME_free(n);
    if (!ok) {
        X509_free(x);
        return NULL;
    }
    return x;
}

/* A certificate row of QT_CERT_LIST as JSON. */
static json_t *cert_row(PGresult *r, int i, bool with_pem)
{
    json_t *j = json_pack(
        "{s:s,s:s,s:s,s:o,s:o,s:s,s:s,s:s,s:o,s:o,s:o,s:s}", "serial", PQgetvalue(r, i, 0), "kind",
        PQgetvalue(r, i, 1), "subject", PQgetvalue(r, i, 3), "not_before", pgjson_time(r, i, 4),
        "not_after", pgjson_time(r, i, 5), "sha256", PQgetvalue(r, i, 6), "spki_sha256",
        PQgetvalue(r, i, 7), "state", PQgetvalue(r, i, 8), "revoked_at", pgjson_time(r, i, 9),
        "revoke_reason", pgjson_text(r, i, 10), "created_at", pgjson_time(r, i, 11), "created_by",
        PQgetvalue(r, i, 12));
    if (!j)
        return NULL;
    json_object_set_new(j, "ca_version", PQgetisnull(r, i, 2) ? json_null()
                                                              : json_integer(atoi(PQgetvalue(r, i, 2))));
    if (with_pem) {
        unsigned char *der = NULL;
        const unsigned char *p;
        size_t len;
        X509 *x = NULL;
        char *pem = NULL;
        if (x509_unhex(PQgetvalue(r, i, 13), &der, &len) == 0) {
            p = der;
            x = d2i_X509(NULL, &p, (long)len);
        }
        pem = x ? x509_pem(x, NULL) : NULL;
        json_object_set_new(j, "certificate", pem ? json_string(pem) : json_null());
        free(pem);
        X509_free(x);
        OPENSSL_free(der);
    }
    return j;
}

struct store_tx {
    const char *device_id;
    const char *actor;
    const char *event; /* certificate.issued | certificate.bound */
    const char *vals[12];
    json_t *detail;
    json_t *created_at; /* from the insert */
    bool inactive;
    char in_use_by[160]; /* "device 'X'" or "admin token 'Y'" holding this key */
};

static db_status store_tx_fn(db_conn *c, void *arg)
{
    struct store_tx *t = arg;
    db_status st;
    const char *dv[] = {t->device_id};
    char pk[24];
    PGresult *r = qt_exec(c, QT_CERT_DEVICE, 1, dv, &st);
    if (!r)
        return st;
    if (PQntuples(r) == 0) {
        PQclear(r);
        return DB_NOT_FOUND;
    }
    t->inactive = strcmp(PQgetvalue(r, 0, 1), "active") != 0;
    snprintf(pk, sizeof(pk), "%s", PQgetvalue(r, 0, 0));
    PQclear(r);
    if (t->inactive)
        return DB_CONFLICT;
    t->vals[1] = pk;
    t->in_use_by[0] = '\0';
    {
        /* One key, one device: a certificate is a device's identity, so a
         * key on another device's active certificate is refused, issued
         * (a CSR is public: another device's could be replayed) or bound.
         * Writers of one key take turns (a transaction lock on its hash),
         * so two at once cannot both pass the check. */
        const char *kv[] = {t->vals[9], t->device_id};
        if (!(r = qt_exec(c, QT_CERT_SPKI_LOCK, 1, kv, &st)))
            return st;
        PQclear(r);
        if (!(r = qt_exec(c, QT_CERT_SPKI_ELSEWHERE, 2, kv, &st)))
            return st;
        if (PQntuples(r) > 0)
            snprintf(t->in_use_by, sizeof(t->in_use_by), "%s", PQgetvalue(r, 0, 0));
        PQclear(r);
        if (t->in_use_by[0])
            return DB_CONFLICT;
    }
    if (!(r = qt_exec(c, QT_CERT_INSERT, 12, t->vals, &st)))
        return st;
    json_decref(t->created_at); /* a retried transaction's first answer */
    t->created_at = pgjson_time(r, 0, 0);
    PQclear(r);
    return audit_append(c, t->actor, t->event, t->device_id, json_incref(t->detail));
}

/* Store x as the device's certificate (kind "issued" with ca_version, or
 * "bound" with 0) with its audit row, and answer its record. */
static qk_kind store_cert(qk_svc *s, const qk_principal *who, const char *device_id, X509 *x,
                          const char *kind, int ca_version, json_t **out, qk_err *e)
{
    bool issued = !strcmp(kind, "issued");
    char serial[44], sha[65], spki[65], ver[16], nb[24], na[24], *subj = NULL, *hex = NULL;
    char *pem = NULL, *chain = NULL;
    unsigned char *der = NULL;
    int derl;
    size_t cl;
    struct store_tx t = {device_id, who->name, issued ? "certificate.issued" : "certificate.bound",
                         {0}, NULL, NULL, false, ""};
    db_status st;
    qk_kind k;
    qk_err ce;

    if (x509_serial_hex(x, serial, sizeof(serial)) != 0)
        return qk_fail(e, QK_INVALID, "invalid_certificate",
                       "the certificate's serial number must be positive and at most 20 bytes");
    if (x509_digests(x, sha, spki) != 0 || !(subj = x509_name_text(X509_get_subject_name(x))) ||
        (derl = i2d_X509(x, &der)) <= 0 || !(hex = malloc(2 * (size_t)derl + 1))) {
        k = qk_fail(e, QK_INTERNAL, "internal", "encoding the certificate failed");
        goto out;
    }
    x509_hex(der, (size_t)derl, hex);
    snprintf(ver, sizeof(ver), "%d", ca_version);
    snprintf(nb, sizeof(nb), "%lld", (long long)x509_time(X509_get0_notBefore(x)));
    snprintf(na, sizeof(na), "%lld", (long long)x509_time(X509_get0_notAfter(x)));
    const char *vals[12] = {serial, NULL, device_id, kind, issued ? ver : NULL, subj, nb, na, sha,
                            spki, hex, who->name};
    memcpy(t.vals, vals, sizeof(vals));
    t.detail = json_pack("{s:s,s:s,s:s,s:o,s:o}", "serial", serial, "sha256", sha, "subject", subj,
                         "ca_version", issued ? json_integer(ca_version) : json_null(), "not_after",
                         x509_rfc3339((time_t)strtoll(na, NULL, 10)));
    st = db_tx(s->db, store_tx_fn, &t);
    json_decref(t.detail);
    if (st == DB_NOT_FOUND) {
        k = qk_fail(e, QK_NOT_FOUND, "not_found", "no device '%s'", device_id);
        goto out;
    }
    if (st == DB_CONFLICT && t.inactive) {
        k = qk_fail(e, QK_CONFLICT, "invalid_state",
                    "device '%s' is not active: no certificate is %s", device_id,
                    issued ? "issued" : "bound");
        goto out;
    }
    if (st == DB_CONFLICT && (t.in_use_by[0] || !issued)) {
        if (t.in_use_by[0])
            k = qk_fail(e, QK_INVALID, "certificate_in_use",
                        "a certificate with this key is bound to %s", t.in_use_by);
        else
            k = qk_fail(e, QK_INVALID, "certificate_in_use",
                        "this certificate (or its serial, for this device) is on record already");
        goto out;
    }
    if (st != DB_OK) {
        k = db_fail(e, st);
        goto out;
    }
    log_with(&who->log, LOG_INFO, issued ? "certificate issued" : "certificate bound",
             "{s:s,s:s,s:s}", "device_id", device_id, "serial", serial, "sha256", sha);
    pem = x509_pem(x, NULL);
    if (issued && ca_chain_pem(s->ca, &chain, &cl, &ce) != QK_OK)
        chain = NULL;
    *out = json_pack("{s:s,s:s,s:s,s:s,s:o,s:s,s:o,s:o,s:s,s:s,s:O,s:s,s:n,s:n,s:s?}", "serial",
                     serial, "device_id", device_id, "kind", kind, "state", "active", "ca_version",
                     issued ? json_integer(ca_version) : json_null(), "subject", subj,
                     "not_before", x509_rfc3339((time_t)strtoll(nb, NULL, 10)), "not_after",
                     x509_rfc3339((time_t)strtoll(na, NULL, 10)), "sha256", sha, "spki_sha256",
                     spki, "created_at", t.created_at, "created_by", who->name, "revoked_at",
                     "revoke_reason", "certificate", pem);
    if (*out && chain)
        json_object_set_new(*out, "chain", json_string(chain));
    k = *out ? QK_OK : qk_fail(e, QK_INTERNAL, "internal", "out of memory");
out:
    json_decref(t.created_at);
    free(pem);
    free(chain);
    free(hex);
    free(subj);
    OPENSSL_free(der);
    return k;
}

/* What issuing needs before anything is built: a device ID, a validity in
 * range, a CA with more than a day left. */
static qk_kind issue_checks(qk_ca *ca, const char *device_id, int days, qk_err *e)
{
    if (!device_id_valid(device_id))
        return qk_fail(e, QK_NOT_FOUND, "not_found", "no such device");
    if (days < 1 || days > CERT_MAX_DAYS)
        return qk_fail(e, QK_INVALID, "invalid_validity", "validity_days must be 1..%d",
                       CERT_MAX_DAYS);
    if (X509_cmp_time(X509_get0_notAfter(ca_active_cert(ca, NULL)), &(time_t){time(NULL) + 86400}) <= 0)
        return qk_fail(e, QK_UNAVAILABLE, "unavailable",
                       "the platform CA expires within a day: no certificate is issued");
    return QK_OK;
}

qk_kind certs_issue(qk_svc *s, const qk_principal *who, const cert_request *rq, json_t **out,
                    qk_err *e)
{
    qk_ca *ca = s->ca;
    X509_REQ *req = NULL;
    EVP_PKEY *key = NULL;
    X509 *x = NULL;
    CK_RV rv;
    int ca_version, days = rq->validity_days ? rq->validity_days : CERT_DEFAULT_DAYS;
    time_t device_end = 0;
    qk_kind k;

    qk_clear(e);
    *out = NULL;
    if ((k = issue_checks(ca, rq->device_id, days, e)) != QK_OK)
        return k;
    if ((k = parse_csr(rq, &req, &key, e)) != QK_OK)
        return k;
    if ((k = device_until(s, rq->device_id, &device_end, e)) != QK_OK)
        goto out;
    /* The version recorded is the one whose name the certificate carries:
     * ca_sign refuses it if a rotation made another version active since. */
    if (!(x = build_cert(ca, rq->device_id, key, days, device_end, &ca_version))) {
        k = qk_fail(e, QK_INTERNAL, "internal", "building the certificate failed");
        goto out;
    }
    if ((rv = ca_sign(ca, x)) != CKR_OK) {
        k = rv == CKR_KEY_CHANGED ? ca_rotated(e) : qk_from_token(e, rv, "sign certificate");
        goto out;
    }
    k = store_cert(s, who, rq->device_id, x, "issued", ca_version, out, e);
out:
    X509_free(x);
    X509_REQ_free(req);
    return k;
}

/* A PEM text into a JSON string's contents: PEM holds only base64, '-',
 * ' ' and newlines, of which only the newlines need escaping. */
static int put_pem_json(qbuf *b, const char *pem, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (pem[i] == '"' || pem[i] == '\\' || ((unsigned char)pem[i] < 0x20 && pem[i] != '\n'))
            return -1;
        if ((pem[i] == '\n' ? qbuf_put(b, "\\n", 2) : qbuf_put(b, pem + i, 1)) != QBUF_OK)
            return -1;
    }
    return 0;
}

#define TLS_IDENTITY_FORMAT "qkms-tls-identity/1"

qk_kind certs_identity(qk_svc *s, const qk_principal *who, const cert_request *rq, qbuf **doc,
                       json_t **record, qk_err *e)
{
    qk_ca *ca = s->ca;
    EVP_PKEY *key = NULL;
    X509 *x = NULL;
    BIO *kb = NULL;
    qbuf *d = NULL;
    size_t cl = 0;
    char *cert_pem = NULL, *chain = NULL, *idj = NULL, *kpem, serial[44];
    long kl;
    int ca_version, days = rq->validity_days ? rq->validity_days : CERT_DEFAULT_DAYS;
    time_t device_end = 0;
    json_t *jid = NULL;
    CK_RV rv;
    qk_err ce;
    qk_kind k;

    qk_clear(e);
    *doc = NULL;
    *record = NULL;
    if ((k = issue_checks(ca, rq->device_id, days, e)) != QK_OK)
        return k;
    if ((k = device_until(s, rq->device_id, &device_end, e)) != QK_OK)
        goto out;
    if (!(key = EVP_EC_gen("P-256")) ||
        !(x = build_cert(ca, rq->device_id, key, days, device_end, &ca_version))) {
        k = qk_fail(e, QK_INTERNAL, "internal", "building the key pair or certificate failed");
        goto out;
    }
    if ((rv = ca_sign(ca, x)) != CKR_OK) {
        k = rv == CKR_KEY_CHANGED ? ca_rotated(e) : qk_from_token(e, rv, "sign certificate");
        goto out;
    }
    /* The document, in the secure heap: the key's PEM goes from a
     * secure-heap BIO straight into it. */
    if (!(kb = BIO_new(BIO_s_secmem())) || PEM_write_bio_PrivateKey(kb, key, NULL, NULL, 0, NULL, NULL) != 1 ||
        (kl = BIO_get_mem_data(kb, &kpem)) <= 0 || !(cert_pem = x509_pem(x, NULL)) ||
        ca_chain_pem(ca, &chain, &cl, &ce) != QK_OK || x509_serial_hex(x, serial, sizeof(serial)) != 0 ||
        !(jid = json_string(rq->device_id)) || !(idj = json_dumps(jid, JSON_ENCODE_ANY)) ||
        !(d = qbuf_new(64 * 1024, QBUF_SECURE)) ||
        qbuf_putf(d, "{\"format\":\"" TLS_IDENTITY_FORMAT "\",\"device_id\":%s,\"serial\":\"%s\","
                     "\"certificate\":\"", idj, serial) != QBUF_OK ||
        put_pem_json(d, cert_pem, strlen(cert_pem)) != 0 ||
        qbuf_put_str(d, "\",\"chain\":\"") != QBUF_OK || put_pem_json(d, chain, cl) != 0 ||
        qbuf_put_str(d, "\",\"private_key\":\"") != QBUF_OK ||
        put_pem_json(d, kpem, (size_t)kl) != 0 || qbuf_put_str(d, "\"}") != QBUF_OK) {
        k = qk_fail(e, QK_INTERNAL, "internal", "out of memory");
        goto out;
    }
    if ((k = store_cert(s, who, rq->device_id, x, "issued", ca_version, record, e)) != QK_OK)
        goto out;
    json_object_set_new(*record, "key_generated", json_true());
    *doc = d;
    d = NULL;
    log_with(&who->log, LOG_INFO, "certificate key pair generated", "{s:s,s:s}", "device_id",
             rq->device_id, "serial", serial);
out:
    qbuf_free(d); /* wipes */
    BIO_free_all(kb); /* the secure heap's: wiped */
    EVP_PKEY_free(key);
    X509_free(x);
    free(cert_pem);
    free(chain);
    free(idj);
    json_decref(jid);
    return k;
}

void certs_identity_undo(qk_svc *s, const qk_principal *who, const json_t *record)
{
    const char *serial = json_string_value(json_object_get(record, "serial"));
    const char *device = json_string_value(json_object_get(record, "device_id"));
    json_t *out = NULL;
    qk_err e;
    /* Its key was never delivered: nobody may use the certificate. */
    if (serial && device && certs_revoke(s, who, device, serial, "superseded", &out, &e) != QK_OK)
        log_with(&who->log, LOG_ERROR, "undelivered certificate not revoked; revoke it",
                 "{s:s,s:s,s:s}", "device_id", device, "serial", serial, "error", e.detail);
    json_decref(out);
}

qk_kind certs_issue_generated(qk_svc *s, const qk_principal *who, const cert_request *rq,
                              EVP_PKEY *recipient, json_t **out, qk_err *e)
{
    qbuf *doc = NULL;
    uint8_t *pkg = NULL;
    size_t pkg_len = 0;
    char fp[65], err[160], *b64 = NULL;
    qk_kind k;

    qk_clear(e);
    *out = NULL;
    if (fillpkg_fingerprint(recipient, fp) != 0)
        return qk_fail(e, QK_INVALID, "invalid_recipient_key", "cannot encode the recipient key");
    if ((k = certs_identity(s, who, rq, &doc, out, e)) != QK_OK)
        return k;
    if (fillpkg_seal(recipient, qbuf_ptr(doc), qbuf_len(doc), &pkg, &pkg_len, err, sizeof(err)) != 0 ||
        !(b64 = malloc(4 * ((pkg_len + 2) / 3) + 1))) {
        k = qk_fail(e, QK_INTERNAL, "internal", "sealing the package failed");
        goto fail;
    }
    EVP_EncodeBlock((unsigned char *)b64, pkg, (int)pkg_len);
    if (json_object_set_new(*out, "package_format", json_string(TLS_IDENTITY_FORMAT)) ||
        json_object_set_new(*out, "recipient_fingerprint", json_string(fp)) ||
        json_object_set_new(*out, "package", json_string(b64))) {
        k = qk_fail(e, QK_INTERNAL, "internal", "out of memory");
        goto fail;
    }
    log_with(&who->log, LOG_INFO, "certificate key pair sealed", "{s:s,s:s}", "device_id",
             rq->device_id, "recipient_fingerprint", fp);
    goto out;
fail:
    certs_identity_undo(s, who, *out);
    json_decref(*out);
    *out = NULL;
out:
    qbuf_free(doc);
    free(pkg);
    free(b64);
    return k;
}

/* A certificate issued elsewhere that may identify a device: a client
 * certificate (not a CA; extendedKeyUsage, when present, allows clientAuth;
 * keyUsage, when present, allows digitalSignature), valid now, with a key
 * the profile accepts. */
static qk_kind bindable(X509 *x, qk_err *e)
{
    EVP_PKEY *k = X509_get0_pubkey(x);
    uint32_t xku, ku;
    qk_kind kd;
    if (!k)
        return qk_fail(e, QK_INVALID, "invalid_certificate", "the certificate's key does not parse");
    if ((kd = key_acceptable(k, e)) != QK_OK)
        return kd;
    if (X509_cmp_current_time(X509_get0_notAfter(x)) <= 0)
        return qk_fail(e, QK_INVALID, "certificate_expired", "the certificate has expired");
    if (X509_cmp_time(X509_get0_notBefore(x), &(time_t){time(NULL) + CERT_BACKDATE_S}) > 0)
        return qk_fail(e, QK_INVALID, "invalid_certificate", "the certificate is not valid yet");
    X509_check_purpose(x, -1, 0); /* computes the flags below */
    xku = X509_get_extended_key_usage(x);
    ku = X509_get_key_usage(x);
    if ((X509_get_extension_flags(x) & EXFLAG_CA) || !(xku & XKU_SSL_CLIENT) ||
        !(ku & KU_DIGITAL_SIGNATURE))
        return qk_fail(e, QK_INVALID, "not_client_certificate",
                       "the certificate must be an end-entity certificate for TLS client "
                       "authentication (no CA, clientAuth allowed, digitalSignature allowed)");
    return QK_OK;
}

qk_kind certs_ca_rotate(qk_svc *s, const qk_principal *who, json_t **out, qk_err *e)
{
    int version = 0;
    qk_err ce;
    qk_kind k;

    *out = NULL;
    if ((k = ca_rotate(s->ca, s->db, who->name, &version, e)) != QK_OK)
        return k;
    /* The new version's first CRL (empty) at once; a failure here is the
     * maintenance thread's to repair, the rotation stands. */
    if (crl_refresh(s, true, &ce) != QK_OK)
        log_with(&who->log, LOG_WARN, "CRL after the CA rotation not made; the maintenance "
                 "thread makes it", "{s:s}", "error", ce.detail);
    return ca_show(s->ca, out, e);
}

qk_kind certs_ca_import(qk_svc *s, const qk_principal *who, const char *pem, size_t len,
                        json_t **out, qk_err *e)
{
    int version = 0;
    qk_err ce;
    qk_kind k;

    *out = NULL;
    if ((k = ca_import(s->ca, s->db, who->name, pem, len, &version, e)) != QK_OK)
        return k;
    if (crl_refresh(s, true, &ce) != QK_OK)
        log_with(&who->log, LOG_WARN, "CRL after the CA import not made; the maintenance "
                 "thread makes it", "{s:s}", "error", ce.detail);
    return ca_show(s->ca, out, e);
}

qk_kind certs_parse_client(const char *pem, size_t len, X509 **out, qk_err *e)
{
    BIO *b;
    X509 *x;
    qk_kind k;

    *out = NULL;
    if (!pem || len == 0 || len > 16384)
        return qk_fail(e, QK_INVALID, "invalid_certificate",
                       "certificate must be a PEM CERTIFICATE (at most 16 KiB)");
    if (!(b = BIO_new_mem_buf(pem, (int)len)))
        return qk_fail(e, QK_INTERNAL, "internal", "out of memory");
    x = PEM_read_bio_X509(b, NULL, NULL, NULL);
    BIO_free(b);
    if (!x)
        return qk_fail(e, QK_INVALID, "invalid_certificate", "certificate is not a PEM CERTIFICATE");
    if ((k = bindable(x, e)) != QK_OK) {
        X509_free(x);
        return k;
    }
    *out = x;
    return QK_OK;
}

qk_kind certs_bind(qk_svc *s, const qk_principal *who, const char *device_id, const char *pem,
                   size_t len, json_t **out, qk_err *e)
{
    X509 *x = NULL;
    qk_kind k;

    qk_clear(e);
    *out = NULL;
    if (!device_id_valid(device_id))
        return qk_fail(e, QK_NOT_FOUND, "not_found", "no such device");
    if ((k = certs_parse_client(pem, len, &x, e)) == QK_OK)
        k = store_cert(s, who, device_id, x, "bound", 0, out, e);
    X509_free(x);
    return k;
}

qk_kind certs_list(qk_svc *s, const char *device_id, json_t **out, qk_err *e)
{
    db_status st;
    db_conn *c;
    PGresult *r = NULL, *d = NULL;
    json_t *arr;
    const char *vals[] = {device_id};
    qk_kind k = QK_OK;

    qk_clear(e);
    *out = NULL;
    if (!device_id_valid(device_id))
        return qk_fail(e, QK_NOT_FOUND, "not_found", "no such device");
    if (!(c = db_acquire(s->db, &st)))
        return db_fail(e, st);
    if (!(d = db_exec(c, Q_DEVICE_GET, 1, vals, NULL, NULL, &st)) ||
        (PQntuples(d) > 0 && !(r = qt_exec(c, QT_CERT_LIST, 1, vals, &st)))) {
        k = db_fail(e, st);
        goto out;
    }
    if (PQntuples(d) == 0) {
        k = qk_fail(e, QK_NOT_FOUND, "not_found", "no device '%s'", device_id);
        goto out;
    }
    arr = json_array();
    for (int i = 0; arr && i < PQntuples(r); i++)
        if (json_array_append_new(arr, cert_row(r, i, true)) != 0) {
            json_decref(arr);
            arr = NULL;
        }
    *out = arr ? json_pack("{s:s,s:o}", "device_id", device_id, "certificates", arr) : NULL;
    if (!*out)
        k = qk_fail(e, QK_INTERNAL, "internal", "out of memory");
out:
    PQclear(r);
    PQclear(d);
    db_release(s->db, c);
    return k;
}

qk_kind certs_get(qk_svc *s, const char *device_id, const char *serial, json_t **out, qk_err *e)
{
    const char *vals[] = {device_id, serial};
    db_status st;
    db_conn *c;
    PGresult *r;

    qk_clear(e);
    *out = NULL;
    if (!device_id_valid(device_id) || !serial_valid(serial))
        return qk_fail(e, QK_NOT_FOUND, "not_found", "no such certificate");
    if (!(c = db_acquire(s->db, &st)))
        return db_fail(e, st);
    r = qt_exec(c, QT_CERT_GET, 2, vals, &st);
    db_release(s->db, c);
    if (!r)
        return db_fail(e, st);
    if (PQntuples(r) == 0) {
        PQclear(r);
        return qk_fail(e, QK_NOT_FOUND, "not_found", "device '%s' has no certificate %s",
                       device_id, serial);
    }
    *out = cert_row(r, 0, true);
    PQclear(r);
    if (*out)
        json_object_set_new(*out, "device_id", json_string(device_id));
    return *out ? QK_OK : qk_fail(e, QK_INTERNAL, "internal", "out of memory");
}

struct revoke_tx {
    const char *vals[3]; /* device_id, serial, reason */
    const char *actor;
    bool revoked_already;
    bool issued; /* by the platform CA: it goes into the CRL */
};

static db_status revoke_tx_fn(db_conn *c, void *arg)
{
    struct revoke_tx *t = arg;
    db_status st;
    PGresult *r = qt_exec(c, QT_CERT_LOCK, 2, t->vals, &st);
    if (!r)
        return st;
    if (PQntuples(r) == 0) {
        PQclear(r);
        return DB_NOT_FOUND;
    }
    t->revoked_already = strcmp(PQgetvalue(r, 0, 0), "active") != 0;
    t->issued = !strcmp(PQgetvalue(r, 0, 1), "t");
    PQclear(r);
    if (t->revoked_already)
        return DB_CONFLICT;
    if (!(r = qt_exec(c, QT_CERT_REVOKE, 3, t->vals, &st)))
        return st;
    PQclear(r);
    return audit_append(c, t->actor, "certificate.revoked", t->vals[0],
                        json_pack("{s:s,s:s}", "serial", t->vals[1], "reason", t->vals[2]));
}

qk_kind certs_revoke(qk_svc *s, const qk_principal *who, const char *device_id,
                     const char *serial, const char *reason, json_t **out, qk_err *e)
{
    struct revoke_tx t = {{device_id, serial, reason ? reason : "unspecified"}, who->name, false,
                          false};
    db_status st;
    qk_err ce;

    qk_clear(e);
    *out = NULL;
    if (!device_id_valid(device_id) || !serial_valid(serial))
        return qk_fail(e, QK_NOT_FOUND, "not_found", "no such certificate");
    if (crl_reason_code(t.vals[2]) < 0)
        return qk_fail(e, QK_INVALID, "invalid_reason",
                       "reason must be unspecified, keyCompromise, affiliationChanged, superseded, "
                       "cessationOfOperation or privilegeWithdrawn");
    st = db_tx(s->db, revoke_tx_fn, &t);
    if (st == DB_NOT_FOUND)
        return qk_fail(e, QK_NOT_FOUND, "not_found", "device '%s' has no certificate %s",
                       device_id, serial);
    if (st == DB_CONFLICT && t.revoked_already)
        return qk_fail(e, QK_CONFLICT, "invalid_state", "certificate %s is revoked already", serial);
    if (st != DB_OK)
        return db_fail(e, st);
    log_with(&who->log, LOG_INFO, "certificate revoked", "{s:s,s:s,s:s}", "device_id", device_id,
             "serial", serial, "reason", t.vals[2]);
    /* The revocation stands; a CRL that could not be made now is made by
     * the next maintenance pass (crl.h). */
    if (t.issued && crl_refresh(s, true, &ce) != QK_OK)
        log_with(&who->log, LOG_WARN, "CRL not refreshed after a revocation", "{s:s,s:s}", "code",
                 ce.code, "detail", ce.detail);
    return certs_get(s, device_id, serial, out, e);
}

/* The earliest notAfter of a verified chain (Unix seconds). */
static long long chain_until(STACK_OF(X509) *chain)
{
    long long until = 0;
    for (int i = 0; i < sk_X509_num(chain); i++) {
        struct tm tm;
        if (ASN1_TIME_to_tm(X509_get0_notAfter(sk_X509_value(chain, i)), &tm) != 1)
            return 0;
        long long t = (long long)timegm(&tm);
        if (!until || t < until)
            until = t;
    }
    return until;
}

/* The chain (leaf first) verified against store: time, purpose (TLS
 * client), signatures, and the CRLs when the store asks for them. 0 (with
 * *until), or -1 with the verifier's error in *err. */
static int chain_ok(X509_STORE *store, X509 *leaf, STACK_OF(X509) *rest, long long *until,
                    int *err)
{
    X509_STORE_CTX *ctx = X509_STORE_CTX_new();
    int ok = -1;
    *err = X509_V_ERR_OUT_OF_MEM;
    if (ctx && X509_STORE_CTX_init(ctx, store, leaf, rest) == 1 &&
        X509_STORE_CTX_set_purpose(ctx, X509_PURPOSE_SSL_CLIENT) == 1) {
        if (X509_verify_cert(ctx) == 1) {
            *until = chain_until(X509_STORE_CTX_get0_chain(ctx));
            ok = 0;
        } else {
            *err = X509_STORE_CTX_get_error(ctx);
        }
    }
    X509_STORE_CTX_free(ctx);
    return ok;
}

qk_kind certs_verify_chain(qk_svc *s, const unsigned char *const *der, const size_t *len, int n,
                           cert_principal *out, qk_err *e)
{
    X509 *leaf = NULL;
    STACK_OF(X509) *rest = sk_X509_new_null();
    X509_STORE *other = NULL;
    const unsigned char *p;
    const char *why = NULL;
    char spki[65];
    int verr = 0, oerr = 0;
    qk_kind k = QK_UNAUTHENTICATED;

    qk_clear(e);
    memset(out, 0, sizeof(*out));
    if (!rest)
        return qk_fail(e, QK_INTERNAL, "internal", "out of memory");
    if (n < 1) {
        why = "no client certificate";
        goto out;
    }
    p = der[0];
    if (!(leaf = d2i_X509(NULL, &p, (long)len[0])) || p != der[0] + len[0]) {
        why = "the client certificate does not parse";
        goto out;
    }
    for (int i = 1; i < n; i++) {
        X509 *x;
        p = der[i];
        if (!(x = d2i_X509(NULL, &p, (long)len[i])) || !sk_X509_push(rest, x)) {
            X509_free(x);
            why = "a certificate of the client's chain does not parse";
            goto out;
        }
    }
    if (x509_digests(leaf, out->sha256, spki) != 0) {
        k = qk_fail(e, QK_INTERNAL, "internal", "out of memory");
        goto out;
    }
    if (chain_ok(ca_store(s->ca), leaf, rest, &out->valid_until, &verr) == 0) {
        out->by_platform_ca = true;
        k = QK_OK;
        goto out;
    }
    if ((other = trust_store(s->trust)) &&
        chain_ok(other, leaf, rest, &out->valid_until, &oerr) == 0) {
        k = QK_OK;
        goto out;
    }
    /* The reason that says most: the platform CA's, unless it merely did
     * not know the issuer and another trusted issuer looked at it. */
    if (other && (verr == X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY ||
                  verr == X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT))
        verr = oerr;
    why = X509_verify_cert_error_string(verr);
out:
    if (k == QK_UNAUTHENTICATED)
        qk_fail(e, QK_UNAUTHENTICATED, "unauthenticated", "%s", why ? why : "refused");
    X509_STORE_free(other);
    X509_free(leaf);
    sk_X509_pop_free(rest, X509_free);
    return k;
}

qk_kind certs_lookup(qk_svc *s, cert_principal *cp, qk_err *e)
{
    const char *vals[1] = {cp->sha256}, *why = NULL;
    db_status st;
    PGresult *r;
    qk_kind k = QK_UNAUTHENTICATED;

    qk_clear(e);
    cp->device_id[0] = cp->serial[0] = 0;
    /* Only certificates on record name a device: the platform CA's, or
     * bound ones (whose issuers tls_client_ca_file vouches for). */
    if (!(r = db_query(s->db, Q_CERT_BY_SHA256, 1, vals, NULL, NULL, &st)))
        return db_fail(e, st);
    if (PQntuples(r) == 0) {
        why = "the client certificate is not on record for any device";
        goto out;
    }
    snprintf(cp->device_id, sizeof(cp->device_id), "%s", PQgetvalue(r, 0, 0));
    snprintf(cp->serial, sizeof(cp->serial), "%s", PQgetvalue(r, 0, 1));
    if (strcmp(PQgetvalue(r, 0, 2), "active")) {
        why = "the client certificate is revoked";
        goto out;
    }
    if (strcmp(PQgetvalue(r, 0, 3), "active")) {
        why = "the certificate's device is not active";
        goto out;
    }
    k = QK_OK;
out:
    if (k == QK_UNAUTHENTICATED)
        qk_fail(e, QK_UNAUTHENTICATED, "unauthenticated", "%s", why);
    PQclear(r);
    return k;
}

qk_kind certs_authenticate(qk_svc *s, const unsigned char *const *der, const size_t *len, int n,
                           cert_principal *out, qk_err *e)
{
    qk_kind k = certs_verify_chain(s, der, len, n, out, e);
    return k == QK_OK ? certs_lookup(s, out, e) : k;
}

typedef struct {
    const cert_principal *p;
    const char *claimed;
} mismatch_tx;

static db_status mismatch_fn(db_conn *c, void *arg)
{
    const mismatch_tx *t = arg;
    return audit_append(c, t->p->device_id, "certificate.mismatch", t->p->device_id,
                        json_pack("{s:s,s:s}", "serial", t->p->serial, "claimed_device",
                                  t->claimed));
}

void certs_mismatch(qk_svc *s, const cert_principal *p, const char *claimed, const log_ctx *log)
{
    mismatch_tx t = {p, claimed};
    db_status st;
    log_with(log, LOG_WARN, "device request refused", "{s:s,s:s,s:s}", "device_id", claimed,
             "certificate_device", p->device_id, "auth_failure",
             "the client certificate names another device");
    if ((st = db_tx(s->db, mismatch_fn, &t)) != DB_OK)
        log_with(log, LOG_ERROR, "certificate mismatch not audited", "{s:s}", "error",
                 db_status_name(st));
}
