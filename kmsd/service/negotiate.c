/* negotiate — device protocol v2, the service side (negotiate.h). */
#include "service/negotiate.h"

#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/x509.h>

#include "hexutil.h"
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
                       json_t *detail)
{
    char ts[24], skew[12];
    const char *vals[6] = {rq->device_id, (const char *)rq->nonce, rq->has_ts ? ts : NULL, skew,
                           reason, NULL};
    int lens[6] = {0, rq->nonce ? QKP_NONCE_LEN : 0, 0, 0, 0, 0}, fmts[6] = {0, 1, 0, 0, 0, 0};
    char *dj = NULL;
    db_status st;
    PGresult *r;
    bool replay = false;

    snprintf(ts, sizeof(ts), "%lld", (long long)rq->ts);
    snprintf(skew, sizeof(skew), "%d", s->cfg->protocol_clock_skew);
    if (detail)
        vals[5] = dj = json_dumps(detail, JSON_COMPACT);
    r = db_query(s->db, Q_V2_REFUSED, 6, vals, lens, fmts, &st);
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
    if (negotiate_refused(s, log, rq, code, json_pack("{s:i,s:s}", "mode", rq->mode, "why", why)))
        return device_auth_fail(s, log, rq->device_id, rq->key_index, "nonce already used (replay)",
                                e);
    log_with(&lc, LOG_WARN, "device request refused", "{s:s,s:i,s:s,s:s}", "device_id",
             rq->device_id, "mode", rq->mode, "code", code, "auth_failure", why);
    if (kind == QK_UNAUTHENTICATED)
        session_metrics_refused(s->smetrics, SESSION_REFUSE_AUTH);
    else
        session_metrics_refused(s->smetrics, SESSION_REFUSE_INVALID);
    return qk_fail(e, kind, code, "%s", why);
}

/* ---- modes 1 and 2 ------------------------------------------------------------ */

typedef struct {
    uint8_t sha[32];
    X509 *x;
    bool active, valid;
} dev_cert;

/* The device's row and certificates (one query): its pk and state, and up
 * to V2_MAX_CERTS certificates, newest first. -1 with e on a database
 * failure; 0 with *pk 0 when there is no such device. */
static int load_certs(qk_svc *s, const char *device_id, long long *pk, char state[16],
                      dev_cert *out, int *n, qk_err *e)
{
    const char *vals[1] = {device_id};
    db_status st;
    PGresult *r = db_query(s->db, Q_V2_DEVICE_CERTS, 1, vals, NULL, NULL, &st);

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
        unsigned char *der = malloc(dl ? dl : 1);
        const unsigned char *p = der;
        dev_cert *c = &out[*n];
        memset(c, 0, sizeof(*c));
        if (der && qkms_hex_decode(sh, strlen(sh), c->sha, 32) == 32 &&
            qkms_hex_decode(dh, strlen(dh), der, dl) == (long)dl &&
            (c->x = d2i_X509(NULL, &p, (long)dl))) {
            c->active = !strcmp(PQgetvalue(r, i, 4), "active");
            c->valid = PQgetvalue(r, i, 5)[0] == 't';
            (*n)++;
        }
        free(der);
    }
    ERR_clear_error();
    PQclear(r);
    return 0;
}

/* Protocol v2's one suite signs and agrees on P-256 only. */
static bool p256(X509 *x)
{
    uint8_t pt[QKP2_POINT_LEN];
    bool ok = qkp2_key_point(X509_get0_pubkey(x), pt) == 0;
    ERR_clear_error();
    return ok;
}

static void free_certs(dev_cert *c, int n)
{
    for (int i = 0; i < n; i++)
        X509_free(c[i].x);
}

static qk_kind by_signature(qk_svc *s, const log_ctx *log, const v2_request *rq, v2_auth *a,
                            qk_err *e)
{
    dev_cert certs[V2_MAX_CERTS];
    char state[16] = "";
    long long pk;
    int n = 0, use = -1;
    uint8_t sha[32];
    qk_kind k;

    if (load_certs(s, rq->device_id, &pk, state, certs, &n, e) != 0)
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
        const unsigned char *der[1] = {rq->cert};
        size_t len[1] = {rq->cert_len};
        cert_principal cp;
        qk_err ce;
        /* The chain first: a certificate no trusted issuer made is refused
         * whatever the records say. */
        if (certs_verify_chain(s, der, len, 1, &cp, &ce) != QK_OK) {
            k = ce.kind == QK_UNAUTHENTICATED
                    ? refuse(s, log, rq, QK_UNAUTHENTICATED, "certificate_refused", ce.detail, e)
                    : qk_fail(e, ce.kind, ce.code, "%s", ce.detail);
            goto out;
        }
        if (qkms_hex_decode(cp.sha256, 64, sha, 32) != 32) {
            k = qk_fail(e, QK_INTERNAL, "internal", "internal error (see kmsd log)");
            goto out;
        }
        for (int i = 0; i < n && use < 0; i++)
            if (!memcmp(certs[i].sha, sha, 32))
                use = i;
        if (use >= 0 && !p256(certs[use].x)) {
            k = refuse(s, log, rq, QK_UNAUTHENTICATED, "certificate_refused",
                       "the certificate's key is not a P-256 key, which protocol v2 needs", e);
            goto out;
        }
        if (use < 0 || !certs[use].active || !certs[use].valid) {
            k = refuse(s, log, rq, QK_UNAUTHENTICATED, "certificate_refused",
                       use < 0                ? "the certificate is not on record for this device"
                       : !certs[use].active ? "the certificate is revoked"
                                              : "the certificate is outside its validity",
                       e);
            goto out;
        }
    } else {
        /* Mode 2: the certificates on record stand for the device; the
         * newest active one whose key verifies is the one it signed with. */
        bool any = false;
        for (int i = 0; i < n && use < 0; i++) {
            if (!certs[i].active || !certs[i].valid || !p256(certs[i].x))
                continue;
            any = true;
            if (qkp2_verify(X509_get0_pubkey(certs[i].x), QKP2_REQ_PREFIX, rq->inner,
                            rq->inner_len, rq->sig) == 0)
                use = i;
        }
        ERR_clear_error();
        if (!any) {
            k = refuse(s, log, rq, QK_UNAUTHENTICATED, "no_bound_certificate",
                       "the device has no active P-256 certificate on record", e);
            goto out;
        }
    }
    if (use < 0 || qkp2_verify(X509_get0_pubkey(certs[use].x), QKP2_REQ_PREFIX, rq->inner,
                               rq->inner_len, rq->sig) != 0) {
        ERR_clear_error();
        k = refuse(s, log, rq, QK_UNAUTHENTICATED, "unauthenticated",
                   "the signature does not verify", e);
        /* One answer for every authentication failure, as v1. */
        if (k == QK_UNAUTHENTICATED && e)
            qk_fail(e, QK_UNAUTHENTICATED, "unauthenticated", "request could not be authenticated");
        goto out;
    }
    snprintf(a->da.device_id, sizeof(a->da.device_id), "%s", rq->device_id);
    a->da.device_pk = pk;
    a->da.key_index = -1;
    a->da.by_cert = true;
    memcpy(a->da.cert_sha256, certs[use].sha, 32);
    memcpy(a->da.nonce, rq->nonce, QKP_NONCE_LEN);
    a->da.t0 = rq->t0;
    a->device_pub = X509_get_pubkey(certs[use].x);
    k = a->device_pub ? QK_OK : qk_fail(e, QK_INTERNAL, "internal", "out of memory");
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
