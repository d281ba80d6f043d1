/*
 * crypto_sign — signatures with the platform's data-signing keys
 * (crypto_sign.h): one transaction per call, the token's party and the
 * key read, the signature made in the token, the audit row appended.
 */
#include "service/crypto_sign.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/bn.h>
#include <openssl/crypto.h>
#include <openssl/ecdsa.h>
#include <openssl/evp.h>
#include <openssl/x509.h>

#include "qkms_seal.h"
#include "service/audit.h"
#include "service/firmware_keys.h"
#include "service/x509util.h"
#include "store/queries.h"

typedef struct {
    qk_svc *s;
    const qk_principal *who;
    const char *name;
    const uint8_t *digest;
    long long size;
    int want;                /* verify: the version asked for (0: any) */
    int version;             /* the one used (set by each attempt) */
    const uint8_t *sig;      /* verify */
    size_t siglen;
    bool valid;              /* verify's outcome */
    uint8_t der[80];         /* sign's signature */
    size_t derlen;
    char cert_sha[65];
    bool sign, refused;
    qk_err *e;
} sign_tx;

static db_status refuse(db_conn *c, sign_tx *t, qk_kind kind, const char *code, const char *msg)
{
    db_status st;
    qk_fail(t->e, kind, code, "%s", msg);
    t->refused = true;
    log_with(&t->who->log, LOG_INFO, "crypto request refused", "{s:s,s:s,s:s}", "op",
             t->sign ? "sign" : "verify", "code", code, "key", t->name);
    st = audit_append(c, t->who->name, "crypto.refused", NULL,
                      json_pack("{s:s,s:s,s:s,s:I}", "op", t->sign ? "sign" : "verify", "code",
                                code, "key", t->name, "bytes", (json_int_t)t->size));
    if (st != DB_OK) { /* no refusal without its audit row */
        qk_clear(t->e);
        t->refused = false;
    }
    return st;
}

/* The signature in the token under label, as DER into t->der. */
static db_status sign_in_token(sign_tx *t, const char *label)
{
    uint8_t rs[64];
    size_t rsl = sizeof(rs);
    CK_OBJECT_HANDLE h;
    bool found = false;
    CK_RV rv;
    ECDSA_SIG *sig = NULL;
    BIGNUM *br = NULL, *bs = NULL;
    unsigned char *q = t->der;
    int n;

    if ((rv = p11_find_private_key(t->s->token, label, &h, &found)) != CKR_OK || !found ||
        (rv = p11_ecdsa_sign(t->s->token, h, t->digest, 32, rs, &rsl)) != CKR_OK || rsl != 64) {
        qk_from_token(t->e, rv == CKR_OK ? CKR_KEY_HANDLE_INVALID : rv, "signing with a data key");
        return DB_ERROR;
    }
    if ((sig = ECDSA_SIG_new()) && (br = BN_bin2bn(rs, 32, NULL)) &&
        (bs = BN_bin2bn(rs + 32, 32, NULL)) && ECDSA_SIG_set0(sig, br, bs) == 1)
        br = bs = NULL; /* the signature's now */
    BN_free(br);
    BN_free(bs);
    if (!sig || !ECDSA_SIG_get0_r(sig) || i2d_ECDSA_SIG(sig, NULL) > (int)sizeof(t->der)) {
        ECDSA_SIG_free(sig);
        qk_fail(t->e, QK_INTERNAL, "internal", "the crypto library failed");
        return DB_ERROR;
    }
    n = i2d_ECDSA_SIG(sig, &q);
    ECDSA_SIG_free(sig);
    if (n <= 0) {
        qk_fail(t->e, QK_INTERNAL, "internal", "the crypto library failed");
        return DB_ERROR;
    }
    t->derlen = (size_t)n;
    return DB_OK;
}

/* Whether t->sig verifies under the certificate (DER hex) of a version. */
static int verify_one(const sign_tx *t, const char *cert_hex)
{
    unsigned char *der = NULL;
    const unsigned char *q;
    size_t len;
    X509 *x = NULL;
    EVP_PKEY_CTX *ctx = NULL;
    int ok = -1;

    if (x509_unhex(cert_hex, &der, &len) != 0 || !(q = der) ||
        !(x = d2i_X509(NULL, &q, (long)len)) ||
        !(ctx = EVP_PKEY_CTX_new(X509_get0_pubkey(x), NULL)) || EVP_PKEY_verify_init(ctx) != 1 ||
        EVP_PKEY_CTX_set_signature_md(ctx, EVP_sha256()) != 1)
        goto out;
    ok = EVP_PKEY_verify(ctx, t->sig, t->siglen, t->digest, 32) == 1;
out:
    EVP_PKEY_CTX_free(ctx);
    X509_free(x);
    OPENSSL_free(der);
    return ok;
}

static db_status sign_tx_fn(db_conn *c, void *arg)
{
    sign_tx *t = arg;
    char tokid[24];
    const char *vals[2] = {tokid, t->name};
    db_status st;
    PGresult *r = NULL;

    qk_clear(t->e); /* db_tx may run this again: nothing of an earlier attempt stays */
    t->refused = false;
    t->valid = false;
    t->version = 0;
    t->cert_sha[0] = 0;
    t->derlen = 0;
    snprintf(tokid, sizeof(tokid), "%lld", t->who->token_id);
    /* A signature and a revocation (or rotation) of its key do not
     * overlap: once a revocation is answered, nothing signs with the key. */
    if (t->sign) {
        if (!(r = db_exec(c, Q_SIGN_KEY_LOCK, 1, vals + 1, NULL, NULL, &st)))
            goto out;
        PQclear(r);
    }
    if (!(r = db_exec(c, Q_SIGN_KEY, 2, vals, NULL, NULL, &st)))
        goto out;
    if (PQntuples(r) == 0) {
        st = refuse(c, t, QK_UNAUTHENTICATED, "unauthenticated", "the token is no longer valid");
        goto out;
    }
    if (t->sign) {
        if (strcmp(PQgetvalue(r, 0, 0), QKS_PLATFORM_ID) != 0) {
            st = refuse(c, t, QK_FORBIDDEN, "not_a_party",
                        "signatures are the platform's: only a crypto token acting for @platform "
                        "signs");
            goto out;
        }
        if (PQgetisnull(r, 0, 1)) {
            st = refuse(c, t, QK_NOT_FOUND, "unknown_key", "no data-signing key of that name");
            goto out;
        }
        t->version = atoi(PQgetvalue(r, 0, 2));
        snprintf(t->cert_sha, sizeof(t->cert_sha), "%s", PQgetvalue(r, 0, 3));
        if ((st = sign_in_token(t, PQgetvalue(r, 0, 1))) != DB_OK)
            goto out;
        st = audit_append(c, t->who->name, "crypto.sign", NULL,
                          json_pack("{s:s,s:i,s:I}", "key", t->name, "version", t->version,
                                    "bytes", (json_int_t)t->size));
        goto out;
    }
    PQclear(r);
    if (!(r = db_exec(c, Q_SIGN_KEY_CERTS, 1, vals + 1, NULL, NULL, &st)))
        goto out;
    {
        int want = t->want, n = 0;
        for (int i = 0; i < PQntuples(r) && !t->valid; i++) {
            int v = atoi(PQgetvalue(r, i, 0)), ok;
            if (want && v != want)
                continue;
            n++;
            if ((ok = verify_one(t, PQgetvalue(r, i, 1))) < 0) {
                /* a signature that is not DER is no signature: false */
                continue;
            }
            if (ok) {
                t->valid = true;
                t->version = v;
                snprintf(t->cert_sha, sizeof(t->cert_sha), "%s", PQgetvalue(r, i, 2));
            }
        }
        if (n == 0) {
            st = refuse(c, t, QK_NOT_FOUND, "unknown_key",
                        want ? "no such version of the data-signing key"
                             : "no data-signing key of that name");
            goto out;
        }
    }
    st = audit_append(c, t->who->name, "crypto.verify", NULL,
                      json_pack("{s:s,s:b,s:I}", "key", t->name, "valid", t->valid, "bytes",
                                (json_int_t)t->size));
out:
    PQclear(r);
    return st;
}

static qk_kind run(sign_tx *t, json_t **out)
{
    db_status st;
    *out = NULL;
    qk_clear(t->e);
    if (!firmware_product_valid(t->name))
        return qk_fail(t->e, QK_INVALID, "invalid_name",
                       "key must be 1-64 of A-Z a-z 0-9 . _ -, starting with a letter or digit");
    st = db_tx(t->s->db, sign_tx_fn, t);
    if (st != DB_OK)
        return !t->refused && t->e->kind != QK_OK ? t->e->kind : db_fail(t->e, st);
    if (t->refused)
        return t->e->kind;
    if (t->sign) {
        size_t bl = 4 * ((t->derlen + 2) / 3) + 1;
        char *b64 = malloc(bl);
        if (b64)
            EVP_EncodeBlock((unsigned char *)b64, t->der, (int)t->derlen);
        *out = b64 ? json_pack("{s:s,s:i,s:s,s:s,s:s}", "key", t->name, "version", t->version,
                               "certificate_sha256", t->cert_sha, "algorithm",
                               "ecdsa-p256-sha256", "signature", b64)
                   : NULL;
        free(b64);
    } else {
        *out = json_pack("{s:b,s:s,s:o}", "valid", t->valid, "key", t->name, "version",
                         t->valid ? json_integer(t->version) : json_null());
    }
    return *out ? QK_OK : qk_fail(t->e, QK_INTERNAL, "internal", "out of memory");
}

qk_kind crypto_sign(qk_svc *s, const qk_principal *who, const char *name,
                    const uint8_t digest[32], long long size, json_t **out, qk_err *e)
{
    sign_tx t = {.s = s, .who = who, .name = name, .digest = digest, .size = size,
                 .sign = true, .e = e};
    return run(&t, out);
}

qk_kind crypto_verify(qk_svc *s, const qk_principal *who, const char *name, int version,
                      const uint8_t digest[32], long long size, const uint8_t *sig, size_t siglen,
                      json_t **out, qk_err *e)
{
    sign_tx t = {.s = s, .who = who, .name = name, .digest = digest, .size = size,
                 .want = version, .sig = sig, .siglen = siglen, .e = e};
    return run(&t, out);
}
