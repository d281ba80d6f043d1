/*
 * tlsauth — client certificates on a TLS listener (docs/pki.md, "Mutual
 * TLS"). libmicrohttpd with GnuTLS only *requests* a certificate and never
 * verifies one; this module takes the chain GnuTLS received and has the
 * service verify it for every request of a route marked .client_cert.
 *
 * Contract:
 *  - Modes (tls_client_auth for the device protocol, admin_tls_client_auth
 *    for the admin API): none: certificates are not looked at; optional:
 *    a request that brings one must authenticate by it, one without goes
 *    on as before; require: one without is refused too.
 *  - A certificate that does not authenticate (chain, time, purpose,
 *    CRLs of other issuers, not on record, revoked, device not active) is
 *    QK_UNAUTHENTICATED client_certificate_refused with the reason in the
 *    detail and in the "client certificate refused" log line; none on a
 *    require route is client_certificate_required; a database outage is
 *    db_fail's. The gate answers it (http_fail) before the handler runs;
 *    otherwise the request carries the certificate's device (rq->cert).
 *  - Per connection, a chain that verified against the platform CA is not
 *    verified again while its leaf is the same and the chain is in date
 *    (the TLS session's certificates cannot change); the database lookup
 *    (revocation, device state) is made for every request.
 *  - Binding the envelope to the certificate is the door's (device_v1.c,
 *    with certs_mismatch).
 */
#ifndef QKMS_TLSAUTH_H
#define QKMS_TLSAUTH_H

#include <stdbool.h>

#include "err.h"
#include "log.h"
#include "service/auth.h"
#include "service/certs.h"

struct MHD_Connection;

typedef enum { TLS_CLIENT_NONE = 0, TLS_CLIENT_OPTIONAL, TLS_CLIENT_REQUIRE } tls_client_mode;

/* "none", "optional", "require" (config.c checked it); NULL: none. */
tls_client_mode tlsauth_mode(const char *s);
/* A connection's memo: made when it opens, freed when it closes (MHD's
 * NOTIFY_CONNECTION). NULL when out of memory: the chain is then verified
 * for every request. */
void *tlsauth_memo_new(void);
void tlsauth_memo_free(void *memo);
/* The gate's step for a .client_cert route on a TLS listener: conn is the
 * request's connection, memo the connection's (may be NULL),
 * log the request's context. QK_OK with *out set (device_id "" when no
 * certificate came and mode is optional); else e says what to answer. */
qk_kind tlsauth_check(qk_svc *s, struct MHD_Connection *conn, tls_client_mode mode, void *memo,
                      const log_ctx *log, cert_principal *out, qk_err *e);
/* The same for an admin route (admin_tls_client_auth): a certificate that
 * verifies and is bound to a live admin token (token_certs.h) is that
 * token: QK_OK with *by_cert and *who set; none (optional mode): QK_OK
 * with *by_cert false, the bearer token decides. A certificate bound to no
 * live token is refused (client_certificate_refused). */
qk_kind tlsauth_admin(qk_svc *s, struct MHD_Connection *conn, tls_client_mode mode, void *memo,
                      const log_ctx *log, auth_principal *who, bool *by_cert, qk_err *e);

#endif
