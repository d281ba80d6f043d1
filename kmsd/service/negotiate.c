/* negotiate — device protocol v2, the service side (negotiate.h). */
#include "service/negotiate.h"

#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/sha.h>
#include <openssl/x509.h>

#include "hexutil.h"
#include "service/certkeys.h"
#include "service/certs.h"
#include "service/session_metrics.h"
#include "store/queries.h"

#define V2_MAX_CERTS 16

void v2_auth_clear(v2_auth *a)
{
    device_auth_clear(&a->da);
    EVP_PKEY_free(a->device_pub);
    memset(a, 0, sizeof(*a));
}

bool negotiate_refused(qk_svc *s, const log_ctx *log, const v2_request *rq, const char *reason,
                       bool authenticated, json_t *detail)
{
    char ts[24], skew[12];
    const char *vals[7] = {rq->device_id, (const char *)rq->nonce, rq->has_ts ? ts : NULL, skew,
                           reason, NULL, authenticated ? "true" : "false"};
    int lens[7] = {0, rq->nonce ? QKP_NONCE_LEN : 0, 0, 0, 0, 0, 0},
        fmts[7] = {0, 1, 0, 0, 0, 0, 0};
    char *dj = NULL;
    db_status st;
    PGresult *r;
    bool replay = false;

    snprintf(ts, sizeof(ts), "%lld", (long long)rq->ts);
    snprintf(skew, sizeof(skew), "%d", s->cfg->protocol_clock_skew);
    if (detail)
        vals[5] = dj = json_dumps(detail, JSON_COMPACT);
    r = db_query(s->db, Q_V2_REFUSED, 7, vals, lens, fmts, &st);
    if (!r)
        log_with(log, LOG_WARN, "v2 refusal not recorded", "{s:s,s:s}", "device_id",
                 rq->device_id, "reason", reason);
    else
        replay = !strcmp(PQgetvalue(r, 0, 0), "replay");
    PQclear(r);
    free(dj);
    json_decref(detail);
    return replay;
}

/* A refusal of code/message after recording it; a replay is the one
 * unauthenticated answer instead. */
static qk_kind refuse(qk_svc *s, const log_ctx *log, const v2_request *rq, qk_kind kind,
                      const char *code, const char *why, qk_err *e)
{
    log_ctx lc = {log ? log->req_id : NULL, log ? log->client : NULL, NULL};
    /* An authentication failure names a device that proved nothing: the
     * audit row's actor says so. */
    if (negotiate_refused(s, log, rq, code, kind != QK_UNAUTHENTICATED,
                          json_pack("{s:i,s:s}", "mode", rq->mode, "why", why)))
        return device_auth_fail(s, log, rq->device_id, rq->key_index, "nonce already used (replay)",
                                e);
    log_with(&lc, LOG_WARN, "device request refused", "{s:s,s:i,s:s,s:s}", "device_id",
             rq->device_id, "mode", rq->mode, "code", code, "auth_failure", why);
    if (kind == QK_UNAUTHENTICATED)
        session_metrics_refused(s->smetrics, SESSION_REFUSE_AUTH);
    else
        session_metrics_refused(s->smetrics, SESSION_REFUSE_INVALID);
    /* The one answer for every authentication failure, as v1 (the reason
     * is in the log and the audit row), but for the two codes the
     * protocol names: a certificate that does not authenticate, no
     * certificate to authenticate with. */
    if (kind == QK_UNAUTHENTICATED && !strcmp(code, "unauthenticated"))
        return qk_fail(e, kind, code, "request could not be authenticated");
    return qk_fail(e, kind, code, "%s", why);
}

/* ---- modes 1 and 2 ------------------------------------------------------------ */

typedef struct {
    uint8_t sha[32];
    EVP_PKEY *pub; /* NULL when the DER does not parse */
    bool p256, active, valid, issued;
    uint8_t *der;  /* a bound certificate that may authenticate: for its chain */
    size_t der_len;
} dev_cert;

/* The device's row and certificates (one query): its pk and state, and up
 * to V2_MAX_CERTS certificates, newest first, with their keys. -1 with e on
 * a database failure; 0 with *pk 0 when there is no such device. */
static int load_certs(qk_svc *s, const char *device_id, const uint8_t *sha, long long *pk,
                      char state[16], dev_cert *out, int *n, qk_err *e)
{
    const char *vals[2] = {device_id, (const char *)sha};
    int lens[2] = {0, sha ? 32 : 0}, fmts[2] = {0, 1};
    db_status st;
    PGresult *r = db_query(s->db, Q_V2_DEVICE_CERTS, 2, vals, lens, fmts, &st);

    *n = 0;
    *pk = 0;
    if (!r) {
        db_fail(e, st);
        return -1;
    }
    for (int i = 0; i < PQntuples(r); i++) {
        *pk = atoll(PQgetvalue(r, i, 0));
        snprintf(state, 16, "%s", PQgetvalue(r, i, 1));
        if (PQgetisnull(r, i, 2) || *n == V2_MAX_CERTS)
            continue;
        const char *sh = PQgetvalue(r, i, 2), *dh = PQgetvalue(r, i, 3);
        size_t dl = strlen(dh) / 2;
        dev_cert *c = &out[*n];
        memset(c, 0, sizeof(*c));
        if (qkms_hex_decode(sh, strlen(sh), c->sha, 32) != 32)
            continue;
        c->active = !strcmp(PQgetvalue(r, i, 4), "active");
        c->valid = PQgetvalue(r, i, 5)[0] == 't';
        c->issued = !strcmp(PQgetvalue(r, i, 6), "issued");
        /* Only certificates that may authenticate need their key. */
        if (c->active && c->valid) {
            uint8_t *der = malloc(dl ? dl : 1);
            if (der && qkms_hex_decode(dh, strlen(dh), der, dl) == (long)dl)
                c->pub = certkeys_get(s->v2cache, c->sha, der, dl, &c->p256);
            if (c->pub && !c->issued) {
                c->der = der;
                c->der_len = dl;
                der = NULL;
            }
            free(der);
        }
        (*n)++;
    }
    PQclear(r);
    return 0;
}

static void free_certs(dev_cert *c, int n)
{
    for (int i = 0; i < n; i++) {
        EVP_PKEY_free(c[i].pub);
        free(c[i].der);
    }
}

/* A certificate bound from another issuer is checked against that issuer
 * and its CRL (tls_client_ca_file, trust.h) too, which can revoke it on its
 * own; the platform CA's own are authoritative in their records. NULL, or
 * why not. */
static qk_kind bound_chain(qk_svc *s, const dev_cert *c, const char **why, qk_err *ce)
{
    const unsigned char *der[1] = {c->der};
    size_t len[1] = {c->der_len};
    cert_principal cp;
    *why = NULL;
    if (c->issued)
        return QK_OK;
    if (certs_verify_chain(s, der, len, 1, &cp, ce) != QK_OK) {
        if (ce->kind != QK_UNAUTHENTICATED)
            return ce->kind;
        *why = ce->detail;
    }
    return QK_OK;
}

static qk_kind by_signature(qk_svc *s, const log_ctx *log, const v2_request *rq, v2_auth *a,
                            qk_err *e)
{
    dev_cert certs[V2_MAX_CERTS];
    char state[16] = "";
    long long pk;
    int n = 0, use = -1;
    qk_kind k;

    uint8_t csha[32];
    if (rq->mode == 1)
        SHA256(rq->cert, rq->cert_len, csha);
    if (load_certs(s, rq->device_id, rq->mode == 1 ? csha : NULL, &pk, state, certs, &n, e) != 0)
        return e ? e->kind : QK_UNAVAILABLE;
    if (!pk) {
        k = device_auth_fail(s, log, rq->device_id, -1, "unknown device", e);
        goto out;
    }
    if (!strcmp(state, "revoked")) {
        k = refuse(s, log, rq, QK_UNAUTHENTICATED, "unauthenticated", "device revoked", e);
        goto out;
    }
    if (rq->mode == 1) {
        const char *why = NULL;
        /* The certificate in the request must be one on record for the
         * device (by its digest): the record says whether it is active
         * and valid. */
        for (int i = 0; i < n && use < 0; i++)
            if (!memcmp(certs[i].sha, csha, 32))
                use = i;
        if (use < 0)
            why = "the certificate is not on record for this device";
        else if (!certs[use].active)
            why = "the certificate is revoked";
        else if (!certs[use].valid)
            why = "the certificate is outside its validity";
        else if (!certs[use].pub)
            why = "the certificate does not parse";
        else if (!certs[use].p256)
            why = "the certificate's key is not a P-256 key for signing and key agreement, "
                  "which protocol v2 needs";
        if (why) {
            k = refuse(s, log, rq, QK_UNAUTHENTICATED, "certificate_refused", why, e);
            goto out;
        }
    } else {
        /* Mode 2: the certificates on record stand for the device; the
         * newest active one whose key verifies is the one it signed with. */
        bool any = false;
        for (int i = 0; i < n && use < 0; i++) {
            if (!certs[i].active || !certs[i].valid || !certs[i].pub || !certs[i].p256)
                continue;
            any = true;
            if (qkp2_verify(certs[i].pub, QKP2_REQ_PREFIX, rq->inner, rq->inner_len, rq->sig) ==
                0)
                use = i;
        }
        ERR_clear_error();
        if (!any) {
            k = refuse(s, log, rq, QK_UNAUTHENTICATED, "no_bound_certificate",
                       "the device has no active P-256 certificate on record for signing and "
                       "key agreement",
                       e);
            goto out;
        }
    }
    /* Mode 2 verified while it chose; mode 1 verifies now. */
    if (use < 0 || (rq->mode == 1 && qkp2_verify(certs[use].pub, QKP2_REQ_PREFIX, rq->inner,
                                                 rq->inner_len, rq->sig) != 0)) {
        ERR_clear_error();
        k = refuse(s, log, rq, QK_UNAUTHENTICATED, "unauthenticated",
                   "the signature does not verify", e);
        goto out;
    }
    {
        const char *why;
        qk_err ce;
        qk_kind ck = bound_chain(s, &certs[use], &why, &ce);
        if (ck != QK_OK) {
            k = qk_fail(e, ck, ce.code, "%s", ce.detail);
            goto out;
        }
        if (why) {
            k = refuse(s, log, rq, QK_UNAUTHENTICATED, "certificate_refused", why, e);
            goto out;
        }
    }
    snprintf(a->da.device_id, sizeof(a->da.device_id), "%s", rq->device_id);
    a->da.device_pk = pk;
    a->da.key_index = -1;
    a->da.by_cert = true;
    memcpy(a->da.cert_sha256, certs[use].sha, 32);
    memcpy(a->da.nonce, rq->nonce, QKP_NONCE_LEN);
    a->da.t0 = rq->t0;
    a->device_pub = certs[use].pub;
    certs[use].pub = NULL; /* moved */
    k = QK_OK;
out:
    free_certs(certs, n);
    return k;
}

qk_kind negotiate_authenticate(qk_svc *s, const log_ctx *log, const v2_request *rq, v2_auth *a,
                               qk_err *e)
{
    qk_kind k;

    memset(a, 0, sizeof(*a));
    if (rq->mode == 3) {
        device_request dr = {rq->op,     rq->device_id, rq->key_index, rq->nonce,
                             rq->ct,     rq->ct_len,    rq->t0,        2};
        if ((k = device_auth_open(s, log, &dr, &a->da, e)) != QK_OK)
            return k;
        if (qkp2_request_hash(rq->nonce, a->da.inner, a->da.inner_len, a->h) != 0) {
            v2_auth_clear(a);
            return qk_fail(e, QK_INTERNAL, "internal", "internal error (see kmsd log)");
        }
        return QK_OK;
    }
    if ((rq->mode != 1 && rq->mode != 2) || !rq->inner || !rq->sig || !rq->nonce ||
        (rq->mode == 1 && !rq->cert))
        return qk_fail(e, QK_INTERNAL, "internal", "internal error (see kmsd log)");
    if ((k = by_signature(s, log, rq, a, e)) != QK_OK) {
        v2_auth_clear(a);
        return k;
    }
    if (qkp2_request_hash(rq->nonce, rq->inner, rq->inner_len, a->h) != 0) {
        v2_auth_clear(a);
        return qk_fail(e, QK_INTERNAL, "internal", "internal error (see kmsd log)");
    }
    return QK_OK;
}

/* ---- the platform's keys ------------------------------------------------------- */

qk_kind negotiate_platform_key(qk_svc *s, const log_ctx *log, const v2_request *rq,
                               platform_purpose p, const uint8_t sha[32],
                               const platform_key **out, qk_err *e)
{
    if ((*out = platform_keys_find(s->pkeys, p, sha)))
        return QK_OK;
    return refuse(s, log, rq, QK_INVALID, "unknown_platform_key",
                  p == PLATFORM_SIGN ? "pin names no usable platform signing certificate"
                                     : "ka names no usable platform key-agreement certificate",
                  e);
}

static qk_kind token_down(qk_err *e, CK_RV rv)
{
    qk_kind k = qk_fail(e, QK_UNAVAILABLE, "token_unavailable", "key token unavailable, retry later");
    if (e)
        e->retry_after = 1;
    log_emit(LOG_ERROR, "platform key operation failed", "{s:s}", "ckr", p11_rv_name(rv));
    return k;
}

qk_kind negotiate_open_cr(qk_svc *s, const log_ctx *log, const v2_request *rq,
                          const platform_key *ka, const uint8_t epk[QKP2_POINT_LEN],
                          const uint8_t cr[QKP2_CR_LEN], uint8_t out[QKP2_RANDOM_LEN], qk_err *e)
{
    uint8_t z[QKP2_Z_LEN], k1[QKP2_KEY_LEN];
    CK_RV rv = platform_keys_ecdh(s->pkeys, ka, epk, QKP2_POINT_LEN, z);
    int ok;

    if (rv != CKR_OK) {
        /* A point the token refuses was checked on the curve by the door:
         * what is left is the token's own failure. */
        return token_down(e, rv);
    }
    ok = qkp2_cr_key(z, epk, platform_key_point(ka), rq->nonce, QKP_NONCE_LEN, k1) == 0 &&
         qkp2_cr_open(k1, rq->device_id, cr, out) == 0;
    OPENSSL_cleanse(z, sizeof(z));
    OPENSSL_cleanse(k1, sizeof(k1));
    if (!ok)
        return refuse(s, log, rq, QK_INVALID, "invalid_client_random",
                      "cr does not decrypt under the named key-agreement key", e);
    return QK_OK;
}

/* ---- the answer ------------------------------------------------------------------- */

qk_kind negotiate_seal(const v2_auth *a, const uint8_t epk[QKP2_POINT_LEN], const char *key_id,
                       const uint8_t *payload, size_t len, uint8_t epk_s[QKP2_POINT_LEN],
                       uint8_t *ct, qk_err *e)
{
    EVP_PKEY *es = qkp2_keygen(), *peer = qkp2_point_key(epk, QKP2_POINT_LEN);
    uint8_t z2[QKP2_Z_LEN], z3[QKP2_Z_LEN], k2[QKP2_KEY_LEN];
    const uint8_t *z3p = z3;
    size_t z3l = sizeof(z3);
    qk_kind k = QK_INTERNAL;

    if (!es || !peer || qkp2_key_point(es, epk_s) != 0 || qkp2_ecdh(es, peer, z2) != 0)
        goto out;
    if (a->da.by_cert) {
        if (qkp2_ecdh(es, a->device_pub, z3) != 0)
            goto out;
    } else {
        z3p = a->da.key;
        z3l = a->da.key_len;
    }
    if (qkp2_resp_key(z2, z3p, z3l, a->h, epk_s, k2) != 0 ||
        qkp2_payload_seal(k2, key_id, payload, len, ct) != 0)
        goto out;
    k = QK_OK;
out:
    OPENSSL_cleanse(z2, sizeof(z2));
    OPENSSL_cleanse(z3, sizeof(z3));
    OPENSSL_cleanse(k2, sizeof(k2));
    EVP_PKEY_free(es);
    EVP_PKEY_free(peer);
    ERR_clear_error();
    if (k != QK_OK)
        qk_fail(e, QK_INTERNAL, "internal", "internal error (see kmsd log)");
    return k;
}

qk_kind negotiate_sign(qk_svc *s, const platform_key *k, const uint8_t *p, size_t len,
                       uint8_t sig[QKP2_SIG_LEN], qk_err *e)
{
    uint8_t dg[32];
    CK_RV rv;
    if (qkp2_digest(QKP2_RESP_PREFIX, p, len, dg) != 0)
        return qk_fail(e, QK_INTERNAL, "internal", "internal error (see kmsd log)");
    if ((rv = platform_keys_sign(s->pkeys, k, dg, sig)) != CKR_OK)
        return token_down(e, rv);
    return QK_OK;
}
