/* ca — the platform CA: its key pair in the token, signing there (ca.h). */
#include "service/ca.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/bio.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/param_build.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/sha.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "log.h"
#include "store/queries.h"
#include "service/x509util.h"

#define CA_LABEL_PREFIX "qkms-ca"
#define CA_ROOT_DAYS 3650
/* Certificates start a minute early: a device whose clock runs a little
 * behind must not see its brand-new certificate as not yet valid. */
#define CERT_BACKDATE_S 60
#define CA_MAX_VERSIONS 8

typedef struct {
    int version;
    char label[64];
    bool active;
    X509 *cert;
} ca_version;

struct qk_ca {
    p11_token *t;
    X509_STORE *store; /* every CA version's certificate: verifying client certificates */
    pthread_mutex_t lock; /* guards priv and gen */
    CK_OBJECT_HANDLE priv;
    uint64_t gen;
    ca_version v[CA_MAX_VERSIONS];
    int nv;
    int active; /* index into v */
};

/* ---- small helpers ------------------------------------------------------ */

/* ---- the CA's key in the token -------------------------------------------- */

/* The token's public key of label as an EVP_PKEY (P-256). */
static EVP_PKEY *token_public_key(p11_token *t, const char *label, CK_RV *rv)
{
    uint8_t point[133];
    size_t n = sizeof(point);
    EVP_PKEY *pk = NULL;
    EVP_PKEY_CTX *pc = NULL;
    OSSL_PARAM params[3];
    if ((*rv = p11_ec_public_point(t, label, point, &n)) != CKR_OK)
        return NULL;
    params[0] = OSSL_PARAM_construct_utf8_string(OSSL_PKEY_PARAM_GROUP_NAME, "P-256", 0);
    params[1] = OSSL_PARAM_construct_octet_string(OSSL_PKEY_PARAM_PUB_KEY, point, n);
    params[2] = OSSL_PARAM_construct_end();
    if (!(pc = EVP_PKEY_CTX_new_from_name(NULL, "EC", NULL)) || EVP_PKEY_fromdata_init(pc) != 1 ||
        EVP_PKEY_fromdata(pc, &pk, EVP_PKEY_PUBLIC_KEY, params) != 1) {
        EVP_PKEY_free(pk);
        pk = NULL;
        *rv = CKR_ATTRIBUTE_VALUE_INVALID;
    }
    EVP_PKEY_CTX_free(pc);
    return pk;
}

/* The active version's private key handle, found again after the module
 * was re-initialized (handles of an older generation are void). */
static CK_RV priv_handle(qk_ca *ca, CK_OBJECT_HANDLE *h)
{
    CK_RV rv = CKR_OK;
    bool found = true;
    uint64_t gen = p11_generation(ca->t);
    pthread_mutex_lock(&ca->lock);
    if (ca->gen != gen || ca->priv == CK_INVALID_HANDLE) {
        rv = p11_find_private_key(ca->t, ca->v[ca->active].label, &ca->priv, &found);
        if (rv == CKR_OK && !found)
            rv = CKR_KEY_HANDLE_INVALID;
        ca->gen = rv == CKR_OK ? gen : 0;
    }
    *h = ca->priv;
    pthread_mutex_unlock(&ca->lock);
    return rv;
}

/* The token's P-256 signature r || s (64 bytes) as a DER ECDSA-Sig-Value
 * (OPENSSL_free *der); its length, or -1. */
static int ecdsa_der(const uint8_t rs[64], unsigned char **der)
{
    ECDSA_SIG *sig = ECDSA_SIG_new();
    BIGNUM *r = BN_bin2bn(rs, 32, NULL), *s = BN_bin2bn(rs + 32, 32, NULL);
    int len = -1;
    if (sig && r && s && ECDSA_SIG_set0(sig, r, s) == 1) {
        r = s = NULL; /* owned by sig */
        len = i2d_ECDSA_SIG(sig, der);
    }
    BN_free(r);
    BN_free(s);
    ECDSA_SIG_free(sig);
    return len;
}

/* Sign the to-be-signed bytes in the token (SHA-256 on the host, CKM_ECDSA
 * in the token) and put the DER signature into sig, the object's own
 * signature bit string (its getters hand it out const only by
 * convention). */
static CK_RV sign_into(p11_token *t, CK_OBJECT_HANDLE priv, const unsigned char *tbs, int tbsl,
                       const ASN1_BIT_STRING *sig)
{
    unsigned char *der = NULL, md[SHA256_DIGEST_LENGTH];
    uint8_t rs[132];
    size_t rsl = sizeof(rs);
    int derl;
    CK_RV rv;
    SHA256(tbs, (size_t)tbsl, md);
    if ((rv = p11_ecdsa_sign(t, priv, md, sizeof(md), rs, &rsl)) != CKR_OK)
        return rv;
    rv = CKR_FUNCTION_FAILED;
    if (rsl == 64 && (derl = ecdsa_der(rs, &der)) > 0 &&
        ASN1_BIT_STRING_set((ASN1_BIT_STRING *)sig, der, derl) == 1)
        rv = CKR_OK;
    OPENSSL_free(der);
    return rv;
}

/* Sign x in the token with the active CA key. OpenSSL has no call that
 * takes a signature made elsewhere, so x is first signed with a throwaway
 * key, which sets both signature algorithm fields to ecdsa-with-SHA256 and
 * marks the cached encoding modified (so i2d_X509 encodes the whole
 * certificate afresh); the to-be-signed part is then encoded again,
 * signed in the token, and the throwaway signature replaced. The result
 * is verified with the CA's public key, so a token fault never yields a
 * certificate that does not verify. */
static CK_RV token_sign(p11_token *t, CK_OBJECT_HANDLE priv, X509 *x, EVP_PKEY *ca_pub)
{
    EVP_PKEY *tmp = EVP_EC_gen("P-256");
    unsigned char *tbs = NULL;
    int tbsl;
    CK_RV rv = CKR_FUNCTION_FAILED;
    const ASN1_BIT_STRING *sig;
    const X509_ALGOR *alg;
    if (tmp && X509_sign(x, tmp, EVP_sha256()) > 0 && (tbsl = i2d_re_X509_tbs(x, &tbs)) > 0) {
        X509_get0_signature(&sig, &alg, x);
        if ((rv = sign_into(t, priv, tbs, tbsl, sig)) == CKR_OK && X509_verify(x, ca_pub) != 1)
            rv = CKR_SIGNATURE_INVALID;
    }
    OPENSSL_free(tbs);
    EVP_PKEY_free(tmp);
    return rv;
}

/* As token_sign, for a CRL. */
static CK_RV token_sign_crl(p11_token *t, CK_OBJECT_HANDLE priv, X509_CRL *crl, EVP_PKEY *ca_pub)
{
    EVP_PKEY *tmp = EVP_EC_gen("P-256");
    unsigned char *tbs = NULL;
    int tbsl;
    CK_RV rv = CKR_FUNCTION_FAILED;
    const ASN1_BIT_STRING *sig;
    const X509_ALGOR *alg;
    if (tmp && X509_CRL_sign(crl, tmp, EVP_sha256()) > 0 &&
        (tbsl = i2d_re_X509_CRL_tbs(crl, &tbs)) > 0) {
        X509_CRL_get0_signature(crl, &sig, &alg);
        if ((rv = sign_into(t, priv, tbs, tbsl, sig)) == CKR_OK && X509_CRL_verify(crl, ca_pub) != 1)
            rv = CKR_SIGNATURE_INVALID;
    }
    OPENSSL_free(tbs);
    EVP_PKEY_free(tmp);
    return rv;
}

/* A new self-signed root for version v whose key is already in the token. */
static X509 *make_root(qk_ca *ca, int version, const char *label, char *err, size_t el)
{
    CK_RV rv;
    CK_OBJECT_HANDLE priv;
    bool found = false;
    char cn[64];
    EVP_PKEY *pub = token_public_key(ca->t, label, &rv);
    X509 *x = X509_new();
    X509_NAME *n = X509_NAME_new();
    if (!pub || !x || !n) {
        snprintf(err, el, "reading the CA public key %s: %s", label, p11_rv_name(rv));
        goto fail;
    }
    if ((rv = p11_find_private_key(ca->t, label, &priv, &found)) != CKR_OK || !found) {
        snprintf(err, el, "CA private key %s not found: %s", label, p11_rv_name(rv));
        goto fail;
    }
    snprintf(cn, sizeof(cn), "qkms platform CA %d", version);
    if (X509_set_version(x, 2) != 1 || x509_random_serial(x) != 0 ||
        X509_NAME_add_entry_by_txt(n, "O", MBSTRING_ASC, (const unsigned char *)"qkms", -1, -1, 0) != 1 ||
        X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_ASC, (const unsigned char *)cn, -1, -1, 0) != 1 ||
        X509_set_subject_name(x, n) != 1 || X509_set_issuer_name(x, n) != 1 ||
        !X509_gmtime_adj(X509_getm_notBefore(x), -CERT_BACKDATE_S) ||
        !X509_gmtime_adj(X509_getm_notAfter(x), (long)CA_ROOT_DAYS * 86400) ||
        X509_set_pubkey(x, pub) != 1 ||
        x509_add_ext(x, x, NID_basic_constraints, "critical,CA:TRUE,pathlen:0") != 0 ||
        x509_add_ext(x, x, NID_key_usage, "critical,keyCertSign,cRLSign") != 0 ||
        x509_add_ext(x, x, NID_subject_key_identifier, "hash") != 0) {
        snprintf(err, el, "building the CA certificate failed");
        goto fail;
    }
    if ((rv = token_sign(ca->t, priv, x, pub)) != CKR_OK) {
        snprintf(err, el, "signing the CA certificate in the token: %s", p11_rv_name(rv));
        goto fail;
    }
    X509_NAME_free(n);
    EVP_PKEY_free(pub);
    return x;
fail:
    X509_NAME_free(n);
    X509_free(x);
    EVP_PKEY_free(pub);
    return NULL;
}

/* With no CA recorded: version 1, key pair in the token, root in ca_keys. */
static int create_first(qk_ca *ca, db_conn *c, char *err, size_t el)
{
    char label[64], ver[16], na[24], *hex = NULL;
    unsigned char *der = NULL;
    int derl, rc = -1;
    CK_OBJECT_HANDLE priv;
    db_status st;
    X509 *x = NULL;
    PGresult *r;
    snprintf(label, sizeof(label), "%s-1", CA_LABEL_PREFIX);
    CK_RV rv = p11_generate_ec_key_pair(ca->t, label, &priv);
    if (rv != CKR_OK) {
        snprintf(err, el, "generating the CA key pair in the token: %s", p11_rv_name(rv));
        return -1;
    }
    if (!(x = make_root(ca, 1, label, err, el)))
        return -1;
    if ((derl = i2d_X509(x, &der)) <= 0 || !(hex = malloc(2 * (size_t)derl + 1))) {
        snprintf(err, el, "encoding the CA certificate failed");
        goto out;
    }
    x509_hex(der, (size_t)derl, hex);
    snprintf(ver, sizeof(ver), "1");
    snprintf(na, sizeof(na), "%lld", (long long)x509_time(X509_get0_notAfter(x)));
    const char *vals[] = {ver, label, hex, na};
    if (!(r = qt_exec(c, QT_CA_INSERT, 4, vals, &st))) {
        snprintf(err, el, "recording the CA failed: %s", db_status_name(st));
        goto out;
    }
    PQclear(r);
    log_emit(LOG_INFO, "platform CA created", "{s:i,s:s}", "version", 1, "label", label);
    rc = 0;
out:
    free(hex);
    OPENSSL_free(der);
    X509_free(x);
    return rc;
}

static int load_versions(qk_ca *ca, db_conn *c, char *err, size_t el)
{
    db_status st;
    PGresult *r = qt_exec(c, QT_CA_LIST, 0, NULL, &st);
    if (!r) {
        snprintf(err, el, "reading ca_keys failed: %s", db_status_name(st));
        return -1;
    }
    ca->active = -1;
    for (int i = 0; i < PQntuples(r) && ca->nv < CA_MAX_VERSIONS; i++) {
        ca_version *v = &ca->v[ca->nv];
        unsigned char *der = NULL;
        const unsigned char *p;
        size_t len;
        v->version = atoi(PQgetvalue(r, i, 0));
        snprintf(v->label, sizeof(v->label), "%s", PQgetvalue(r, i, 1));
        v->active = !strcmp(PQgetvalue(r, i, 2), "active");
        if (x509_unhex(PQgetvalue(r, i, 3), &der, &len) != 0) {
            snprintf(err, el, "reading the certificate of CA version %d failed", v->version);
            PQclear(r);
            return -1;
        }
        p = der;
        v->cert = d2i_X509(NULL, &p, (long)len);
        OPENSSL_free(der);
        if (!v->cert) {
            snprintf(err, el, "the certificate of CA version %d does not parse", v->version);
            PQclear(r);
            return -1;
        }
        if (v->active)
            ca->active = ca->nv;
        ca->nv++;
    }
    PQclear(r);
    return 0;
}

int ca_open(qk_ca **out, db_pool *db, p11_token *t, char *err, size_t el)
{
    qk_ca *ca = calloc(1, sizeof(*ca));
    db_status st;
    db_conn *c = NULL;
    bool locked = false;
    int rc = -1;
    CK_RV rv;
    EVP_PKEY *pub = NULL;
    CK_OBJECT_HANDLE h;

    *out = NULL;
    if (!ca) {
        snprintf(err, el, "out of memory");
        return -1;
    }
    ca->t = t;
    ca->priv = CK_INVALID_HANDLE;
    pthread_mutex_init(&ca->lock, NULL);
    if (!(c = db_acquire(db, &st))) {
        snprintf(err, el, "database unavailable: %s", db_status_name(st));
        goto out;
    }
    if (qt_command(c, QT_CA_LOCK) != DB_OK) {
        snprintf(err, el, "taking the CA lock failed");
        goto out;
    }
    locked = true;
    if (load_versions(ca, c, err, el) != 0)
        goto out;
    if (ca->nv == 0) {
        if (create_first(ca, c, err, el) != 0 || load_versions(ca, c, err, el) != 0)
            goto out;
    }
    if (ca->active < 0) {
        snprintf(err, el, "no active CA version in ca_keys");
        goto out;
    }
    /* The token must hold the active version's pair, and it must be the
     * certificate's: another token, or a label reused, would sign
     * certificates nobody can verify. */
    if ((rv = priv_handle(ca, &h)) != CKR_OK || !(pub = token_public_key(t, ca->v[ca->active].label, &rv))) {
        snprintf(err, el, "the CA key %s is not in the token: %s", ca->v[ca->active].label,
                 p11_rv_name(rv));
        goto out;
    }
    if (EVP_PKEY_eq(pub, X509_get0_pubkey(ca->v[ca->active].cert)) != 1) {
        snprintf(err, el, "the token's key %s is not the CA certificate's key",
                 ca->v[ca->active].label);
        goto out;
    }
    if (!(ca->store = X509_STORE_new())) {
        snprintf(err, el, "out of memory");
        goto out;
    }
    for (int i = 0; i < ca->nv; i++)
        if (X509_STORE_add_cert(ca->store, ca->v[i].cert) != 1) {
            snprintf(err, el, "CA version %d cannot be trusted (X509_STORE_add_cert)",
                     ca->v[i].version);
            goto out;
        }
    rc = 0;
out:
    EVP_PKEY_free(pub);
    if (locked)
        qt_command(c, QT_CA_UNLOCK);
    if (c)
        db_release(db, c);
    if (rc == 0)
        *out = ca;
    else
        ca_free(ca);
    return rc;
}

void ca_free(qk_ca *ca)
{
    if (!ca)
        return;
    for (int i = 0; i < ca->nv; i++)
        X509_free(ca->v[i].cert);
    X509_STORE_free(ca->store);
    pthread_mutex_destroy(&ca->lock);
    free(ca);
}

/* ---- reading the CA -------------------------------------------------------- */

static bool still_valid(X509 *x)
{
    return X509_cmp_current_time(X509_get0_notAfter(x)) > 0;
}

qk_kind ca_chain_pem(qk_ca *ca, char **pem, size_t *len, qk_err *e)
{
    size_t total = 0;
    char *out = NULL;
    qk_clear(e);
    /* The active one first, then retired ones that still verify. */
    for (int pass = 0; pass < 2; pass++)
        for (int i = 0; i < ca->nv; i++) {
            size_t n;
            char *p, *grown;
            if ((pass == 0) != (i == ca->active) || (pass == 1 && !still_valid(ca->v[i].cert)))
                continue;
            if (!(p = x509_pem(ca->v[i].cert, &n)) || !(grown = realloc(out, total + n + 1))) {
                free(p);
                free(out);
                return qk_fail(e, QK_INTERNAL, "internal", "out of memory");
            }
            out = grown;
            memcpy(out + total, p, n + 1);
            total += n;
            free(p);
        }
    *pem = out;
    *len = total;
    return QK_OK;
}

static json_t *cert_summary(X509 *x)
{
    char sha[65], spki[65], *subj = x509_name_text(X509_get_subject_name(x)), *pem = x509_pem(x, NULL);
    json_t *j = NULL;
    if (subj && pem && x509_digests(x, sha, spki) == 0)
        j = json_pack("{s:s,s:o,s:o,s:s,s:s,s:s}", "subject", subj, "not_before",
                      x509_rfc3339(x509_time(X509_get0_notBefore(x))), "not_after",
                      x509_rfc3339(x509_time(X509_get0_notAfter(x))), "sha256", sha, "spki_sha256",
                      spki, "pem", pem);
    free(subj);
    free(pem);
    return j;
}

qk_kind ca_show(qk_ca *ca, json_t **out, qk_err *e)
{
    json_t *arr = json_array();
    qk_clear(e);
    for (int i = 0; arr && i < ca->nv; i++) {
        json_t *c = cert_summary(ca->v[i].cert);
        if (!c || json_object_set_new(c, "version", json_integer(ca->v[i].version)) ||
            json_object_set_new(c, "state", json_string(ca->v[i].active ? "active" : "retired")) ||
            json_object_set_new(c, "label", json_string(ca->v[i].label)) ||
            json_object_set_new(c, "key", json_pack("{s:s,s:s}", "type", "EC", "curve", "P-256")) ||
            json_array_append_new(arr, c)) {
            json_decref(arr);
            arr = NULL;
        }
    }
    if (!arr)
        return qk_fail(e, QK_INTERNAL, "internal", "out of memory");
    *out = json_pack("{s:i,s:o}", "active_version", ca->v[ca->active].version, "certificates", arr);
    return *out ? QK_OK : qk_fail(e, QK_INTERNAL, "internal", "out of memory");
}

/* ---- signing for others (certs.c) ---------------------------------------- */

X509 *ca_active_cert(qk_ca *ca, int *version)
{
    if (version)
        *version = ca->v[ca->active].version;
    return ca->v[ca->active].cert;
}

/* After a failed signature: a handle the module voided is found again on
 * the next call. */
static CK_RV after_sign(qk_ca *ca, CK_RV rv)
{
    if (rv != CKR_OK && rv != CKR_HOST_MEMORY) {
        pthread_mutex_lock(&ca->lock);
        ca->gen = 0;
        pthread_mutex_unlock(&ca->lock);
    }
    return rv;
}

CK_RV ca_sign(qk_ca *ca, X509 *x)
{
    CK_OBJECT_HANDLE priv;
    EVP_PKEY *pub = X509_get_pubkey(ca->v[ca->active].cert);
    CK_RV rv = pub ? priv_handle(ca, &priv) : CKR_HOST_MEMORY;
    if (rv == CKR_OK)
        rv = token_sign(ca->t, priv, x, pub);
    EVP_PKEY_free(pub);
    return after_sign(ca, rv);
}

CK_RV ca_sign_crl(qk_ca *ca, X509_CRL *crl)
{
    CK_OBJECT_HANDLE priv;
    EVP_PKEY *pub = X509_get_pubkey(ca->v[ca->active].cert);
    CK_RV rv = pub ? priv_handle(ca, &priv) : CKR_HOST_MEMORY;
    if (rv == CKR_OK)
        rv = token_sign_crl(ca->t, priv, crl, pub);
    EVP_PKEY_free(pub);
    return after_sign(ca, rv);
}

X509_STORE *ca_store(qk_ca *ca) { return ca->store; }
