/* ca — the platform CA: its key pair in the token, signing there (ca.h). */
#include "service/ca.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/bio.h>
#include <openssl/err.h>
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
#include "service/audit.h"
#include "service/x509util.h"
#include "store/queries.h"

#define CA_LABEL_PREFIX "qkms-ca"
#define CA_ROOT_DAYS 3650
/* Certificates start a minute early: a device whose clock runs a little
 * behind must not see its brand-new certificate as not yet valid. */
#define CERT_BACKDATE_S 60
#define CA_MAX_VERSIONS 32

typedef struct {
    int version;
    char label[64];
    X509 *cert;
    STACK_OF(X509) *issuers; /* above it up to an operator's root; NULL: self-signed */
    CK_OBJECT_HANDLE priv; /* found on first use; under ca->lock */
    uint64_t gen;          /* the token generation priv belongs to */
} ca_version;

/* Versions are appended, never changed or removed while kmsd runs: v[i]
 * for i < nv is read without a lock (certificates, labels), so pointers
 * handed out stay valid. Appends and key handles take lock. */
struct qk_ca {
    p11_token *t;
    X509_STORE *store; /* every CA version's certificate: verifying client certificates */
    pthread_mutex_t lock;
    ca_version v[CA_MAX_VERSIONS];
    _Atomic int nv;
    _Atomic int active; /* index into v */
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

/* Version i's private key handle, found again after the module was
 * re-initialized (handles of an older generation are void). */
static CK_RV priv_handle(qk_ca *ca, int i, CK_OBJECT_HANDLE *h)
{
    CK_RV rv = CKR_OK;
    bool found = true;
    uint64_t gen = p11_generation(ca->t);
    ca_version *v = &ca->v[i];
    pthread_mutex_lock(&ca->lock);
    if (v->gen != gen || v->priv == CK_INVALID_HANDLE) {
        rv = p11_find_private_key(ca->t, v->label, &v->priv, &found);
        if (rv == CKR_OK && !found)
            rv = CKR_KEY_HANDLE_INVALID;
        v->gen = rv == CKR_OK ? gen : 0;
    }
    *h = v->priv;
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

/* What the token signs: a certificate, a CRL or a certificate request. */
typedef enum { SIGN_CERT, SIGN_CRL, SIGN_REQ } sign_kind;

/* Sign obj (a kind) in the token with the CA key priv. OpenSSL has no call
 * that takes a signature made elsewhere, so obj is first signed with a
 * throwaway key, which sets both signature algorithm fields to
 * ecdsa-with-SHA256 and marks the cached encoding modified (so it is
 * encoded afresh); the to-be-signed part is then encoded again, signed in
 * the token, and the throwaway signature replaced. The result is verified
 * with the CA's public key, so a token fault never yields an object that
 * does not verify. */
static CK_RV token_sign(p11_token *t, CK_OBJECT_HANDLE priv, sign_kind kind, void *obj,
                        EVP_PKEY *ca_pub)
{
    EVP_PKEY *tmp = EVP_EC_gen("P-256");
    unsigned char *tbs = NULL;
    int tbsl = 0, ok = 0;
    CK_RV rv = CKR_FUNCTION_FAILED;
    const ASN1_BIT_STRING *sig = NULL;
    const X509_ALGOR *alg;

    if (!tmp)
        goto out;
    switch (kind) {
    case SIGN_CERT:
        if ((ok = X509_sign(obj, tmp, EVP_sha256()) > 0 && (tbsl = i2d_re_X509_tbs(obj, &tbs)) > 0))
            X509_get0_signature(&sig, &alg, obj);
        break;
    case SIGN_CRL:
        if ((ok = X509_CRL_sign(obj, tmp, EVP_sha256()) > 0 &&
                  (tbsl = i2d_re_X509_CRL_tbs(obj, &tbs)) > 0))
            X509_CRL_get0_signature(obj, &sig, &alg);
        break;
    case SIGN_REQ:
        if ((ok = X509_REQ_sign(obj, tmp, EVP_sha256()) > 0 &&
                  (tbsl = i2d_re_X509_REQ_tbs(obj, &tbs)) > 0))
            X509_REQ_get0_signature(obj, &sig, &alg);
        break;
    }
    if (ok && (rv = sign_into(t, priv, tbs, tbsl, sig)) == CKR_OK &&
        (kind == SIGN_CERT  ? X509_verify(obj, ca_pub)
         : kind == SIGN_CRL ? X509_CRL_verify(obj, ca_pub)
                            : X509_REQ_verify(obj, ca_pub)) != 1)
        rv = CKR_SIGNATURE_INVALID;
out:
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
    if ((rv = token_sign(ca->t, priv, SIGN_CERT, x, pub)) != CKR_OK) {
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

/* A new version: its key pair generated in the token (label
 * qkms-ca-<version>) and its self-signed root; recorded by the caller.
 * The certificate, or NULL with err. */
static X509 *new_version(qk_ca *ca, int version, char label[64], char *err, size_t el)
{
    CK_OBJECT_HANDLE priv;
    CK_RV rv;
    snprintf(label, 64, "%s-%d", CA_LABEL_PREFIX, version);
    if ((rv = p11_generate_ec_key_pair(ca->t, label, P11_EC_SIGN, &priv)) != CKR_OK) {
        snprintf(err, el, "generating the CA key pair in the token: %s", p11_rv_name(rv));
        return NULL;
    }
    return make_root(ca, version, label, err, el);
}

/* The values of QT_CA_INSERT for x (hex and na are the caller's to free). */
static int insert_values(X509 *x, char **hex, char na[24])
{
    unsigned char *der = NULL;
    int derl = i2d_X509(x, &der);
    if (derl <= 0 || !(*hex = malloc(2 * (size_t)derl + 1))) {
        OPENSSL_free(der);
        return -1;
    }
    x509_hex(der, (size_t)derl, *hex);
    OPENSSL_free(der);
    snprintf(na, 24, "%lld", (long long)x509_time(X509_get0_notAfter(x)));
    return 0;
}

/* With no CA recorded: version 1, key pair in the token, root in ca_keys. */
static int create_first(qk_ca *ca, db_conn *c, char *err, size_t el)
{
    char label[64], na[24], *hex = NULL;
    int rc = -1;
    db_status st;
    X509 *x;
    PGresult *r;
    if (!(x = new_version(ca, 1, label, err, el)))
        return -1;
    if (insert_values(x, &hex, na) != 0) {
        snprintf(err, el, "encoding the CA certificate failed");
        goto out;
    }
    const char *vals[] = {"1", label, hex, na};
    if (!(r = qt_exec(c, QT_CA_INSERT, 4, vals, &st))) {
        snprintf(err, el, "recording the CA failed: %s", db_status_name(st));
        goto out;
    }
    PQclear(r);
    log_emit(LOG_INFO, "platform CA created", "{s:i,s:s}", "version", 1, "label", label);
    rc = 0;
out:
    free(hex);
    X509_free(x);
    return rc;
}

static int find_index(qk_ca *ca, int version)
{
    int n = atomic_load(&ca->nv);
    for (int i = 0; i < n; i++)
        if (ca->v[i].version == version)
            return i;
    return -1;
}

/* Take in the versions of ca_keys this instance does not hold yet (another
 * instance rotated, or this one just did) and the active one. Under
 * ca->lock. 0, or -1 with err. */
static int sync_versions(qk_ca *ca, db_conn *c, char *err, size_t el)
{
    db_status st;
    PGresult *r = qt_exec(c, QT_CA_LIST, 0, NULL, &st);
    int active = -1;
    if (!r) {
        snprintf(err, el, "reading ca_keys failed: %s", db_status_name(st));
        return -1;
    }
    for (int i = 0; i < PQntuples(r); i++) {
        int version = atoi(PQgetvalue(r, i, 0)), idx = find_index(ca, version);
        if (idx < 0) {
            int n = atomic_load(&ca->nv);
            ca_version *v = &ca->v[n];
            unsigned char *der = NULL;
            const unsigned char *p;
            size_t len;
            if (n == CA_MAX_VERSIONS) {
                snprintf(err, el, "more than %d CA versions", CA_MAX_VERSIONS);
                PQclear(r);
                return -1;
            }
            if (x509_unhex(PQgetvalue(r, i, 3), &der, &len) != 0) {
                snprintf(err, el, "reading the certificate of CA version %d failed", version);
                PQclear(r);
                return -1;
            }
            p = der;
            v->cert = d2i_X509(NULL, &p, (long)len);
            OPENSSL_free(der);
            if (!v->cert || X509_STORE_add_cert(ca->store, v->cert) != 1) {
                snprintf(err, el, "the certificate of CA version %d does not parse", version);
                X509_free(v->cert);
                v->cert = NULL;
                PQclear(r);
                return -1;
            }
            if (!PQgetisnull(r, i, 4) &&
                !(v->issuers = x509_parse_chain(PQgetvalue(r, i, 4), strlen(PQgetvalue(r, i, 4))))) {
                snprintf(err, el, "the issuers of CA version %d do not parse", version);
                X509_free(v->cert);
                v->cert = NULL;
                PQclear(r);
                return -1;
            }
            /* The operator's root and intermediates are trusted with it
             * (a certificate already in the store is no error in OpenSSL 3). */
            for (int j = 0; v->issuers && j < sk_X509_num(v->issuers); j++)
                X509_STORE_add_cert(ca->store, sk_X509_value(v->issuers, j));
            ERR_clear_error();
            v->version = version;
            snprintf(v->label, sizeof(v->label), "%s", PQgetvalue(r, i, 1));
            v->priv = CK_INVALID_HANDLE;
            v->gen = 0;
            idx = n;
            atomic_store(&ca->nv, n + 1); /* published whole */
        }
        if (!strcmp(PQgetvalue(r, i, 2), "active"))
            active = idx;
    }
    PQclear(r);
    if (active >= 0)
        atomic_store(&ca->active, active);
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
    int a;

    *out = NULL;
    if (!ca) {
        snprintf(err, el, "out of memory");
        return -1;
    }
    ca->t = t;
    atomic_store(&ca->active, -1);
    pthread_mutex_init(&ca->lock, NULL);
    if (!(ca->store = X509_STORE_new())) {
        snprintf(err, el, "out of memory");
        goto out;
    }
    if (!(c = db_acquire(db, &st))) {
        snprintf(err, el, "database unavailable: %s", db_status_name(st));
        goto out;
    }
    if (qt_command(c, QT_CA_LOCK) != DB_OK) {
        snprintf(err, el, "taking the CA lock failed");
        goto out;
    }
    locked = true;
    if (sync_versions(ca, c, err, el) != 0)
        goto out;
    if (atomic_load(&ca->nv) == 0) {
        if (create_first(ca, c, err, el) != 0 || sync_versions(ca, c, err, el) != 0)
            goto out;
    }
    if ((a = atomic_load(&ca->active)) < 0) {
        snprintf(err, el, "no active CA version in ca_keys");
        goto out;
    }
    /* The token must hold the active version's pair, and it must be the
     * certificate's: another token, or a label reused, would sign
     * certificates nobody can verify. */
    if ((rv = priv_handle(ca, a, &h)) != CKR_OK || !(pub = token_public_key(t, ca->v[a].label, &rv))) {
        snprintf(err, el, "the CA key %s is not in the token: %s", ca->v[a].label,
                 p11_rv_name(rv));
        goto out;
    }
    if (EVP_PKEY_eq(pub, X509_get0_pubkey(ca->v[a].cert)) != 1) {
        snprintf(err, el, "the token's key %s is not the CA certificate's key", ca->v[a].label);
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
    for (int i = 0; i < atomic_load(&ca->nv); i++) {
        X509_free(ca->v[i].cert);
        sk_X509_pop_free(ca->v[i].issuers, X509_free);
    }
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
    int nv = atomic_load(&ca->nv), active = atomic_load(&ca->active);
    qk_clear(e);
    /* The active one first, then retired ones that still verify, newest
     * first. */
    for (int pass = 0; pass < 2; pass++)
        for (int i = pass ? nv - 1 : 0; pass ? i >= 0 : i < nv; i += pass ? -1 : 1) {
            size_t n;
            char *p, *grown;
            if ((pass == 0) != (i == active) || (pass == 1 && !still_valid(ca->v[i].cert)))
                continue;
            for (int j = -1; j < (ca->v[i].issuers ? sk_X509_num(ca->v[i].issuers) : 0); j++) {
                X509 *x = j < 0 ? ca->v[i].cert : sk_X509_value(ca->v[i].issuers, j);
                if (!(p = x509_pem(x, &n)) || !(grown = realloc(out, total + n + 1))) {
                    free(p);
                    free(out);
                    return qk_fail(e, QK_INTERNAL, "internal", "out of memory");
                }
                out = grown;
                memcpy(out + total, p, n + 1);
                total += n;
                free(p);
            }
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
    int nv = atomic_load(&ca->nv), active = atomic_load(&ca->active);
    qk_clear(e);
    /* Newest first. */
    for (int i = nv - 1; arr && i >= 0; i--) {
        json_t *c = cert_summary(ca->v[i].cert);
        if (!c || json_object_set_new(c, "version", json_integer(ca->v[i].version)) ||
            json_object_set_new(c, "state", json_string(i == active ? "active" : "retired")) ||
            json_object_set_new(c, "label", json_string(ca->v[i].label)) ||
            json_object_set_new(c, "key", json_pack("{s:s,s:s}", "type", "EC", "curve", "P-256")) ||
            json_array_append_new(arr, c)) {
            json_decref(arr);
            arr = NULL;
        }
    }
    if (!arr)
        return qk_fail(e, QK_INTERNAL, "internal", "out of memory");
    *out = json_pack("{s:i,s:o}", "active_version", ca->v[active].version, "certificates", arr);
    return *out ? QK_OK : qk_fail(e, QK_INTERNAL, "internal", "out of memory");
}

/* ---- signing for others (certs.c) ---------------------------------------- */

X509 *ca_active_cert(qk_ca *ca, int *version)
{
    int a = atomic_load(&ca->active);
    if (version)
        *version = ca->v[a].version;
    return ca->v[a].cert;
}

X509 *ca_cert(qk_ca *ca, int version)
{
    int i = find_index(ca, version);
    return i < 0 ? NULL : ca->v[i].cert;
}

int ca_versions_valid(qk_ca *ca, int *out, int max)
{
    int n = 0, nv = atomic_load(&ca->nv);
    for (int i = 0; i < nv && n < max; i++)
        if (still_valid(ca->v[i].cert))
            out[n++] = ca->v[i].version;
    return n;
}

/* After a failed signature: a handle the module voided is found again on
 * the next call. */
static CK_RV after_sign(qk_ca *ca, int i, CK_RV rv)
{
    if (rv != CKR_OK && rv != CKR_HOST_MEMORY) {
        pthread_mutex_lock(&ca->lock);
        ca->v[i].gen = 0;
        pthread_mutex_unlock(&ca->lock);
    }
    return rv;
}

CK_RV ca_sign(qk_ca *ca, X509 *x)
{
    CK_OBJECT_HANDLE priv;
    int a = atomic_load(&ca->active);
    EVP_PKEY *pub;
    CK_RV rv;
    /* Built for the version that was active then: a rotation since means
     * the certificate names a retired issuer, which issues no more. */
    if (X509_NAME_cmp(X509_get_issuer_name(x), X509_get_subject_name(ca->v[a].cert)) != 0)
        return CKR_KEY_CHANGED;
    if (!(pub = X509_get_pubkey(ca->v[a].cert)))
        return CKR_HOST_MEMORY;
    if ((rv = priv_handle(ca, a, &priv)) == CKR_OK)
        rv = token_sign(ca->t, priv, SIGN_CERT, x, pub);
    EVP_PKEY_free(pub);
    return after_sign(ca, a, rv);
}

X509 *ca_issue_leaf(qk_ca *ca, EVP_PKEY *pub, const char *cn, long days, const char *key_usage,
                    const char *ext_key_usage, CK_RV *rv)
{
    X509 *x = NULL;
    X509_NAME *n = NULL;

    *rv = CKR_ATTRIBUTE_VALUE_INVALID;
    for (int attempt = 0; attempt < 2; attempt++) {
        X509 *issuer = ca_active_cert(ca, NULL);
        long secs = days * 86400;
        time_t ca_end = x509_time(X509_get0_notAfter(issuer));
        bool ok;
        if (ca_end && ca_end - time(NULL) < secs)
            secs = (long)(ca_end - time(NULL));
        X509_free(x);
        X509_NAME_free(n);
        x = X509_new();
        n = X509_NAME_new();
        ok = x && n && secs > 3600 && X509_set_version(x, 2) == 1 && x509_random_serial(x) == 0 &&
             X509_NAME_add_entry_by_txt(n, "O", MBSTRING_ASC, (const unsigned char *)"qkms", -1,
                                        -1, 0) == 1 &&
             X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_UTF8, (const unsigned char *)cn, -1,
                                        -1, 0) == 1 &&
             X509_set_subject_name(x, n) == 1 &&
             X509_set_issuer_name(x, X509_get_subject_name(issuer)) == 1 &&
             X509_gmtime_adj(X509_getm_notBefore(x), -60) &&
             X509_gmtime_adj(X509_getm_notAfter(x), secs) && X509_set_pubkey(x, pub) == 1 &&
             x509_add_ext(x, issuer, NID_basic_constraints, "critical,CA:FALSE") == 0 &&
             x509_add_ext(x, issuer, NID_key_usage, key_usage) == 0 &&
             (!ext_key_usage || x509_add_ext(x, issuer, NID_ext_key_usage, ext_key_usage) == 0) &&
             x509_add_ext(x, issuer, NID_subject_key_identifier, "hash") == 0 &&
             x509_add_ext(x, issuer, NID_authority_key_identifier, "keyid:always") == 0;
        if (!ok) {
            *rv = CKR_ATTRIBUTE_VALUE_INVALID; /* not the token's failure */
            break;
        }
        *rv = ca_sign(ca, x);
        if (*rv == CKR_OK) {
            X509_NAME_free(n);
            return x;
        }
        if (*rv != CKR_KEY_CHANGED)
            break;
    }
    X509_NAME_free(n);
    X509_free(x);
    return NULL;
}

CK_RV ca_sign_crl(qk_ca *ca, int version, X509_CRL *crl)
{
    CK_OBJECT_HANDLE priv;
    int i = find_index(ca, version);
    EVP_PKEY *pub;
    CK_RV rv;
    if (i < 0)
        return CKR_KEY_HANDLE_INVALID;
    if (!(pub = X509_get_pubkey(ca->v[i].cert)))
        return CKR_HOST_MEMORY;
    if ((rv = priv_handle(ca, i, &priv)) == CKR_OK)
        rv = token_sign(ca->t, priv, SIGN_CRL, crl, pub);
    EVP_PKEY_free(pub);
    return after_sign(ca, i, rv);
}

X509_STORE *ca_store(qk_ca *ca) { return ca->store; }

/* ---- new versions ------------------------------------------------------------ */

/* sync_versions under ca->lock (held only for the appends), for the
 * paths that run while kmsd serves. */
static qk_kind sync_locked(qk_ca *ca, db_conn *c, qk_err *e)
{
    char err[256];
    int rc;
    pthread_mutex_lock(&ca->lock);
    rc = sync_versions(ca, c, err, sizeof(err));
    pthread_mutex_unlock(&ca->lock);
    return rc == 0 ? QK_OK : qk_fail(e, QK_UNAVAILABLE, "unavailable", "%s", err);
}

qk_kind ca_refresh(qk_ca *ca, db_pool *db, qk_err *e)
{
    db_status st;
    db_conn *c = db_acquire(db, &st);
    int before;
    qk_kind k;
    qk_clear(e);
    if (!c)
        return db_fail(e, st);
    before = atomic_load(&ca->active);
    k = sync_locked(ca, c, e);
    db_release(db, c);
    if (k != QK_OK)
        return k;
    if (atomic_load(&ca->active) != before)
        log_emit(LOG_INFO, "platform CA version adopted", "{s:i}", "version",
                 ca->v[atomic_load(&ca->active)].version);
    return QK_OK;
}

qk_kind ca_rotate(qk_ca *ca, db_pool *db, const char *actor, int *version, qk_err *e)
{
    db_status st;
    db_conn *c;
    char label[64], na[24], ver[16], err[256], sha[65], spki[65], *hex = NULL;
    X509 *x = NULL;
    PGresult *r;
    qk_kind k = QK_OK;
    int prev, next = 0;
    json_t *detail = NULL;

    qk_clear(e);
    if (!(c = db_acquire(db, &st)))
        return db_fail(e, st);
    /* One rotation at a time across instances, as at the first start. */
    if ((st = qt_command(c, QT_CA_LOCK)) != DB_OK) {
        db_release(db, c);
        return db_fail(e, st);
    }
    /* ca->lock only around the appends: never across the token's key
     * generation or a statement (a CRL's transaction may hold the CA row
     * and wait for a key handle, which takes the lock). */
    if ((k = sync_locked(ca, c, e)) != QK_OK)
        goto out;
    prev = ca->v[atomic_load(&ca->active)].version;
    for (int i = 0; i < atomic_load(&ca->nv); i++)
        if (ca->v[i].version > next)
            next = ca->v[i].version;
    next++;
    if (atomic_load(&ca->nv) == CA_MAX_VERSIONS) {
        k = qk_fail(e, QK_CONFLICT, "invalid_state", "this kmsd holds %d CA versions, the most it can",
                    CA_MAX_VERSIONS);
        goto out;
    }
    if (!(x = new_version(ca, next, label, err, sizeof(err)))) {
        k = qk_fail(e, QK_UNAVAILABLE, "token_unavailable", "%s", err);
        goto out;
    }
    if (insert_values(x, &hex, na) != 0 || x509_digests(x, sha, spki) != 0) {
        k = qk_fail(e, QK_INTERNAL, "internal", "encoding the CA certificate failed");
        goto out;
    }
    snprintf(ver, sizeof(ver), "%d", next);
    detail = json_pack("{s:i,s:i,s:s,s:s,s:o}", "from_version", prev, "version", next, "label",
                       label, "sha256", sha, "not_after",
                       x509_rfc3339(x509_time(X509_get0_notAfter(x))));
    /* Retire, record and audit in one transaction, on the connection that
     * holds the lock. */
    {
        const char *vals[] = {ver, label, hex, na};
        st = qt_command(c, QT_BEGIN);
        if (st == DB_OK && (r = qt_exec(c, QT_CA_RETIRE, 0, NULL, &st)))
            PQclear(r);
        if (st == DB_OK && (r = qt_exec(c, QT_CA_INSERT, 4, vals, &st)))
            PQclear(r);
        if (st == DB_OK)
            st = audit_append(c, actor, "ca.rotated", NULL, json_incref(detail));
        if (st == DB_OK)
            st = qt_command(c, QT_COMMIT);
        if (st != DB_OK) {
            qt_command(c, QT_ROLLBACK);
            k = db_fail(e, st);
            goto out;
        }
    }
    if ((k = sync_locked(ca, c, e)) != QK_OK)
        goto out;
    log_emit(LOG_INFO, "platform CA rotated", "{s:i,s:i,s:s,s:s}", "from_version", prev,
             "version", next, "label", label, "by", actor);
    *version = next;
out:
    qt_command(c, QT_CA_UNLOCK);
    db_release(db, c);
    json_decref(detail);
    free(hex);
    X509_free(x);
    return k;
}

/* ---- an operator's own root ------------------------------------------------------ */

/* The CSR of a new key pair (version, label) for an operator's CA to sign:
 * subject O=qkms, CN=qkms platform CA <version>, asking for a CA that signs
 * certificates and CRLs and no CA below it. PEM, or NULL with err. */
static char *make_csr(qk_ca *ca, int version, const char *label, char *err, size_t el)
{
    CK_OBJECT_HANDLE priv;
    CK_RV rv;
    bool found = false;
    char cn[64], *out = NULL, *p;
    long n;
    EVP_PKEY *pub = token_public_key(ca->t, label, &rv);
    X509_REQ *req = X509_REQ_new();
    X509_NAME *nm = X509_NAME_new();
    STACK_OF(X509_EXTENSION) *exts = sk_X509_EXTENSION_new_null();
    X509_EXTENSION *bc = X509V3_EXT_conf_nid(NULL, NULL, NID_basic_constraints, "critical,CA:TRUE,pathlen:0");
    X509_EXTENSION *ku = X509V3_EXT_conf_nid(NULL, NULL, NID_key_usage, "critical,keyCertSign,cRLSign");
    BIO *b = BIO_new(BIO_s_mem());

    snprintf(cn, sizeof(cn), "qkms platform CA %d", version);
    if (!pub || !req || !nm || !exts || !bc || !ku || !b) {
        snprintf(err, el, "building the CA's CSR failed (%s)", pub ? "out of memory" : p11_rv_name(rv));
        goto out;
    }
    if ((rv = p11_find_private_key(ca->t, label, &priv, &found)) != CKR_OK || !found) {
        snprintf(err, el, "CA private key %s not found: %s", label, p11_rv_name(rv));
        goto out;
    }
    if (X509_REQ_set_version(req, 0) != 1 ||
        X509_NAME_add_entry_by_txt(nm, "O", MBSTRING_ASC, (const unsigned char *)"qkms", -1, -1, 0) != 1 ||
        X509_NAME_add_entry_by_txt(nm, "CN", MBSTRING_ASC, (const unsigned char *)cn, -1, -1, 0) != 1 ||
        X509_REQ_set_subject_name(req, nm) != 1 || X509_REQ_set_pubkey(req, pub) != 1 ||
        !sk_X509_EXTENSION_push(exts, bc)) {
        snprintf(err, el, "building the CA's CSR failed");
        goto out;
    }
    bc = NULL; /* exts owns it */
    if (!sk_X509_EXTENSION_push(exts, ku) || X509_REQ_add_extensions(req, exts) != 1) {
        snprintf(err, el, "building the CA's CSR failed");
        goto out;
    }
    ku = NULL;
    if ((rv = token_sign(ca->t, priv, SIGN_REQ, req, pub)) != CKR_OK) {
        snprintf(err, el, "signing the CA's CSR in the token: %s", p11_rv_name(rv));
        goto out;
    }
    if (PEM_write_bio_X509_REQ(b, req) == 1 && (n = BIO_get_mem_data(b, &p)) > 0 &&
        (out = malloc((size_t)n + 1))) {
        memcpy(out, p, (size_t)n);
        out[n] = 0;
    } else {
        snprintf(err, el, "out of memory");
    }
out:
    BIO_free(b);
    X509_EXTENSION_free(bc);
    X509_EXTENSION_free(ku);
    sk_X509_EXTENSION_pop_free(exts, X509_EXTENSION_free);
    X509_NAME_free(nm);
    X509_REQ_free(req);
    EVP_PKEY_free(pub);
    return out;
}

qk_kind ca_csr(qk_ca *ca, db_pool *db, const char *actor, json_t **out, qk_err *e)
{
    db_status st;
    db_conn *c;
    PGresult *r = NULL;
    char label[64], ver[16], err[256], *csr = NULL;
    int version;
    qk_kind k = QK_OK;

    qk_clear(e);
    *out = NULL;
    if (!(c = db_acquire(db, &st)))
        return db_fail(e, st);
    if ((st = qt_command(c, QT_CA_LOCK)) != DB_OK) {
        db_release(db, c);
        return db_fail(e, st);
    }
    /* A pending version answers with its CSR again (a lost answer, or the
     * operator's CA wants it twice): one key pair per pending version. */
    if (!(r = qt_exec(c, QT_CA_PENDING, 0, NULL, &st))) {
        k = db_fail(e, st);
        goto out;
    }
    if (PQntuples(r) > 0) {
        *out = json_pack("{s:i,s:s,s:s,s:b}", "version", atoi(PQgetvalue(r, 0, 0)), "label",
                         PQgetvalue(r, 0, 1), "csr", PQgetvalue(r, 0, 2), "pending_before", 1);
        k = *out ? QK_OK : qk_fail(e, QK_INTERNAL, "internal", "out of memory");
        goto out;
    }
    PQclear(r);
    if (!(r = qt_exec(c, QT_CA_MAX_VERSION, 0, NULL, &st))) {
        k = db_fail(e, st);
        goto out;
    }
    version = atoi(PQgetvalue(r, 0, 0)) + 1;
    snprintf(label, sizeof(label), "%s-%d", CA_LABEL_PREFIX, version);
    snprintf(ver, sizeof(ver), "%d", version);
    {
        CK_OBJECT_HANDLE priv;
        CK_RV rv = p11_generate_ec_key_pair(ca->t, label, P11_EC_SIGN, &priv);
        if (rv != CKR_OK) {
            k = qk_from_token(e, rv, "generate CA key pair");
            goto out;
        }
    }
    if (!(csr = make_csr(ca, version, label, err, sizeof(err)))) {
        k = qk_fail(e, QK_UNAVAILABLE, "token_unavailable", "%s", err);
        goto out;
    }
    {
        const char *vals[] = {ver, label, csr};
        PGresult *ir = NULL;
        st = qt_command(c, QT_BEGIN);
        if (st == DB_OK && (ir = qt_exec(c, QT_CA_INSERT_PENDING, 3, vals, &st)))
            PQclear(ir);
        if (st == DB_OK)
            st = audit_append(c, actor, "ca.csr_made", NULL,
                              json_pack("{s:i,s:s}", "version", version, "label", label));
        if (st == DB_OK)
            st = qt_command(c, QT_COMMIT);
        if (st != DB_OK) {
            qt_command(c, QT_ROLLBACK);
            k = db_fail(e, st);
            goto out;
        }
    }
    log_emit(LOG_INFO, "platform CA key pair made for an operator's root", "{s:i,s:s,s:s}",
             "version", version, "label", label, "by", actor);
    *out = json_pack("{s:i,s:s,s:s,s:b}", "version", version, "label", label, "csr", csr,
                     "pending_before", 0);
    k = *out ? QK_OK : qk_fail(e, QK_INTERNAL, "internal", "out of memory");
out:
    PQclear(r);
    free(csr);
    qt_command(c, QT_CA_UNLOCK);
    db_release(db, c);
    return k;
}

/* The imported chain's checks: leaf the pending key's CA certificate, in
 * date, a CA for certificates and CRLs, chaining to the last certificate,
 * a self-signed root. QK_OK, or 422 with why. */
static qk_kind chain_acceptable(qk_ca *ca, const char *label, STACK_OF(X509) *chain, qk_err *e)
{
    X509 *leaf = sk_X509_value(chain, 0), *root = sk_X509_value(chain, sk_X509_num(chain) - 1);
    STACK_OF(X509) *mid = sk_X509_new_null();
    X509_STORE *st = X509_STORE_new();
    X509_STORE_CTX *ctx = X509_STORE_CTX_new();
    CK_RV rv;
    EVP_PKEY *pub = token_public_key(ca->t, label, &rv);
    qk_kind k = QK_INVALID;

    if (!mid || !st || !ctx || !pub) {
        k = pub ? qk_fail(e, QK_INTERNAL, "internal", "out of memory")
                : qk_from_token(e, rv, "read the pending CA key");
        goto out;
    }
    X509_check_purpose(leaf, -1, 0);
    if (EVP_PKEY_eq(pub, X509_get0_pubkey(leaf)) != 1) {
        qk_fail(e, QK_INVALID, "invalid_certificate",
                "the first certificate is not for the pending CA key (%s)", label);
    } else if (X509_check_ca(leaf) < 1 || !(X509_get_key_usage(leaf) & KU_KEY_CERT_SIGN) ||
               !(X509_get_key_usage(leaf) & KU_CRL_SIGN)) {
        qk_fail(e, QK_INVALID, "invalid_certificate",
                "the first certificate must be a CA certificate that may sign certificates and "
                "CRLs (basicConstraints CA:TRUE, keyUsage keyCertSign and cRLSign)");
    } else if (X509_cmp_time(X509_get0_notAfter(leaf), &(time_t){time(NULL) + 86400}) <= 0) {
        qk_fail(e, QK_INVALID, "certificate_expired",
                "the CA certificate has expired or expires within a day");
    } else if (X509_cmp_time(X509_get0_notBefore(leaf), &(time_t){time(NULL) + CERT_BACKDATE_S}) > 0) {
        qk_fail(e, QK_INVALID, "invalid_certificate", "the CA certificate is not valid yet");
    } else if (sk_X509_num(chain) < 2 || X509_self_signed(root, 1) != 1) {
        qk_fail(e, QK_INVALID, "invalid_certificate",
                "the chain must go on with the certificates above it and end with the root "
                "(self-signed)");
    } else {
        for (int i = 1; i < sk_X509_num(chain) - 1; i++)
            if (!sk_X509_push(mid, sk_X509_value(chain, i))) {
                k = qk_fail(e, QK_INTERNAL, "internal", "out of memory");
                goto out;
            }
        if (X509_STORE_add_cert(st, root) != 1 || X509_STORE_CTX_init(ctx, st, leaf, mid) != 1) {
            k = qk_fail(e, QK_INTERNAL, "internal", "out of memory");
        } else if (X509_verify_cert(ctx) != 1) {
            qk_fail(e, QK_INVALID, "invalid_certificate", "the chain does not verify: %s",
                    X509_verify_cert_error_string(X509_STORE_CTX_get_error(ctx)));
        } else {
            k = QK_OK;
        }
    }
out:
    ERR_clear_error();
    EVP_PKEY_free(pub);
    X509_STORE_CTX_free(ctx);
    X509_STORE_free(st);
    sk_X509_free(mid); /* the certificates are chain's */
    return k;
}

qk_kind ca_import(qk_ca *ca, db_pool *db, const char *actor, const char *pem, size_t len,
                  int *version, qk_err *e)
{
    STACK_OF(X509) *chain = NULL;
    db_status st;
    db_conn *c = NULL;
    PGresult *r = NULL;
    char label[64], ver[16], na[24], *hex = NULL, *issuers = NULL, sha[65], spki[65];
    size_t il = 0;
    qk_kind k;
    int v;

    qk_clear(e);
    if (!pem || len == 0 || len > 64 * 1024 || !(chain = x509_parse_chain(pem, len)) ||
        sk_X509_num(chain) > 8) {
        sk_X509_pop_free(chain, X509_free);
        return qk_fail(e, QK_INVALID, "invalid_certificate",
                       "chain must be PEM certificates (at most 8, 64 KiB): this CA's, then "
                       "those above it up to the root");
    }
    if (!(c = db_acquire(db, &st))) {
        k = db_fail(e, st);
        goto done;
    }
    if ((st = qt_command(c, QT_CA_LOCK)) != DB_OK) {
        db_release(db, c);
        c = NULL;
        k = db_fail(e, st);
        goto done;
    }
    if (!(r = qt_exec(c, QT_CA_PENDING, 0, NULL, &st))) {
        k = db_fail(e, st);
        goto out;
    }
    if (PQntuples(r) == 0) {
        k = qk_fail(e, QK_CONFLICT, "invalid_state",
                    "no CA version is pending: make its CSR first (kmsctl ca import --csr-out)");
        goto out;
    }
    v = atoi(PQgetvalue(r, 0, 0));
    snprintf(label, sizeof(label), "%s", PQgetvalue(r, 0, 1));
    if ((k = chain_acceptable(ca, label, chain, e)) != QK_OK)
        goto out;
    if (insert_values(sk_X509_value(chain, 0), &hex, na) != 0 ||
        x509_digests(sk_X509_value(chain, 0), sha, spki) != 0) {
        k = qk_fail(e, QK_INTERNAL, "internal", "encoding the CA certificate failed");
        goto out;
    }
    for (int i = 1; i < sk_X509_num(chain); i++) {
        size_t n;
        char *p = x509_pem(sk_X509_value(chain, i), &n), *g;
        if (!p || !(g = realloc(issuers, il + n + 1))) {
            free(p);
            k = qk_fail(e, QK_INTERNAL, "internal", "out of memory");
            goto out;
        }
        issuers = g;
        memcpy(issuers + il, p, n + 1);
        il += n;
        free(p);
    }
    snprintf(ver, sizeof(ver), "%d", v);
    {
        const char *vals[] = {ver, hex, na, issuers};
        char *subj = x509_name_text(X509_get_issuer_name(sk_X509_value(chain, 0)));
        PGresult *ur = NULL;
        st = qt_command(c, QT_BEGIN);
        if (st == DB_OK && (ur = qt_exec(c, QT_CA_RETIRE, 0, NULL, &st)))
            PQclear(ur);
        if (st == DB_OK && (ur = qt_exec(c, QT_CA_ACTIVATE, 4, vals, &st)))
            PQclear(ur);
        if (st == DB_OK)
            st = audit_append(c, actor, "ca.imported", NULL,
                              json_pack("{s:i,s:s,s:s,s:s?,s:i}", "version", v, "label", label,
                                        "sha256", sha, "issuer", subj, "chain_length",
                                        sk_X509_num(chain)));
        if (st == DB_OK)
            st = qt_command(c, QT_COMMIT);
        free(subj);
        if (st != DB_OK) {
            qt_command(c, QT_ROLLBACK);
            k = db_fail(e, st);
            goto out;
        }
    }
    if ((k = sync_locked(ca, c, e)) != QK_OK)
        goto out;
    log_emit(LOG_INFO, "platform CA certified by an operator's root", "{s:i,s:s,s:s}",
             "version", v, "label", label, "by", actor);
    *version = v;
    k = QK_OK;
out:
    PQclear(r);
    qt_command(c, QT_CA_UNLOCK);
    db_release(db, c);
done:
    free(hex);
    free(issuers);
    sk_X509_pop_free(chain, X509_free);
    return k;
}
