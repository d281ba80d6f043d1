/* tlsauth — client certificates on a TLS listener (tlsauth.h). */
#include "api/tlsauth.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <gnutls/gnutls.h>
#include <microhttpd.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "service/certs.h"
#include "service/token_certs.h"

/* Longer chains than this are refused unread: a device's chain is its
 * certificate and perhaps an intermediate or two. */
#define TLSAUTH_MAX_CHAIN 8

typedef struct {
    bool valid;
    unsigned char leaf[32]; /* SHA-256 of the leaf's DER */
    cert_principal p;       /* as verified (device_id, serial: per request) */
} memo;

tls_client_mode tlsauth_mode(const char *s)
{
    if (s && !strcmp(s, "require"))
        return TLS_CLIENT_REQUIRE;
    if (s && !strcmp(s, "optional"))
        return TLS_CLIENT_OPTIONAL;
    return TLS_CLIENT_NONE;
}

void *tlsauth_memo_new(void) { return calloc(1, sizeof(memo)); }

void tlsauth_memo_free(void *m) { free(m); }

/* The certificates the client sent (DER, leaf first), *n of them; NULL
 * when none (or not a TLS connection). */
static const gnutls_datum_t *peer_chain(struct MHD_Connection *conn, unsigned *n)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_GNUTLS_SESSION);
    *n = 0;
    if (!ci || !ci->tls_session)
        return NULL;
    return gnutls_certificate_get_peers((gnutls_session_t)ci->tls_session, n);
}

static qk_kind refuse(const log_ctx *log, const char *code, const cert_principal *p,
                      const char *why, qk_err *e)
{
    log_with(log, LOG_WARN, "client certificate refused", "{s:s,s:s,s:s*,s:s*}", "reason", why,
             "code", code, "certificate_sha256", p && p->sha256[0] ? p->sha256 : NULL,
             "certificate_device", p && p->device_id[0] ? p->device_id : NULL);
    return qk_fail(e, QK_UNAUTHENTICATED, code, "client certificate refused: %s", why);
}

/* The client's chain, verified (certs_verify_chain, or the connection's
 * memo): QK_OK with *present false when none came, else *p the verified
 * leaf. A refusal is logged and e says what to answer. */
static qk_kind verified_chain(qk_svc *s, struct MHD_Connection *conn, memo *m, const log_ctx *log,
                              const char *required_for, tls_client_mode mode, cert_principal *p,
                              bool *present, qk_err *e)
{
    const gnutls_datum_t *peers;
    const unsigned char *der[TLSAUTH_MAX_CHAIN];
    size_t len[TLSAUTH_MAX_CHAIN];
    unsigned char leaf[32];
    unsigned n;
    char why[sizeof(e->detail)];

    *present = false;
    memset(p, 0, sizeof(*p));
    peers = peer_chain(conn, &n);
    if (!peers || n == 0) {
        if (mode == TLS_CLIENT_OPTIONAL)
            return QK_OK;
        log_with(log, LOG_WARN, "client certificate refused", "{s:s,s:s}", "reason",
                 "no client certificate", "code", "client_certificate_required");
        return qk_fail(e, QK_UNAUTHENTICATED, "client_certificate_required",
                       "this listener requires a client certificate for %s", required_for);
    }
    *present = true;
    if (n > TLSAUTH_MAX_CHAIN)
        return refuse(log, "client_certificate_refused", NULL, "the client's chain is too long", e);
    for (unsigned i = 0; i < n; i++) {
        der[i] = peers[i].data;
        len[i] = peers[i].size;
    }
    if (EVP_Digest(der[0], len[0], leaf, NULL, EVP_sha256(), NULL) != 1)
        return qk_fail(e, QK_INTERNAL, "internal", "out of memory");
    if (m && m->valid && CRYPTO_memcmp(m->leaf, leaf, sizeof(leaf)) == 0 &&
        (long long)time(NULL) < m->p.valid_until) {
        *p = m->p;
        return QK_OK;
    }
    if (m)
        m->valid = false;
    if (certs_verify_chain(s, der, len, (int)n, p, e) != QK_OK) {
        if (e->kind != QK_UNAUTHENTICATED)
            return e->kind;
        snprintf(why, sizeof(why), "%s", e->detail);
        return refuse(log, "client_certificate_refused", p, why, e);
    }
    /* Only the platform CA's verdict keeps: another issuer's CRL may
     * change under a live connection. */
    if (m && p->by_platform_ca) {
        memcpy(m->leaf, leaf, sizeof(leaf));
        m->p = *p;
        m->valid = true;
    }
    return QK_OK;
}

qk_kind tlsauth_check(qk_svc *s, struct MHD_Connection *conn, tls_client_mode mode, void *memo_p,
                      const log_ctx *log, cert_principal *out, qk_err *e)
{
    cert_principal p;
    char why[sizeof(e->detail)];
    bool present;
    qk_kind k;

    qk_clear(e);
    memset(out, 0, sizeof(*out));
    if (mode == TLS_CLIENT_NONE)
        return QK_OK;
    k = verified_chain(s, conn, memo_p, log, "the device protocol", mode, &p, &present, e);
    if (k != QK_OK || !present)
        return k;
    if (certs_lookup(s, &p, e) != QK_OK) {
        if (e->kind != QK_UNAUTHENTICATED)
            return e->kind;
        snprintf(why, sizeof(why), "%s", e->detail);
        return refuse(log, "client_certificate_refused", &p, why, e);
    }
    *out = p;
    return QK_OK;
}

qk_kind tlsauth_admin(qk_svc *s, struct MHD_Connection *conn, tls_client_mode mode, void *memo_p,
                      const log_ctx *log, auth_principal *who, bool *by_cert, qk_err *e)
{
    cert_principal p;
    db_status st;
    qk_kind k;

    qk_clear(e);
    *by_cert = false;
    if (mode == TLS_CLIENT_NONE)
        return QK_OK;
    k = verified_chain(s, conn, memo_p, log, "the admin API", mode, &p, by_cert, e);
    if (k != QK_OK || !*by_cert)
        return k;
    st = token_certs_lookup(s->db, p.sha256, who);
    if (st == DB_NOT_FOUND) {
        *by_cert = false;
        return refuse(log, "client_certificate_refused", &p,
                      "the client certificate is not bound to a live admin token", e);
    }
    if (st != DB_OK) {
        *by_cert = false;
        return db_fail(e, st);
    }
    return QK_OK;
}
