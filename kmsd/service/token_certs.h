/*
 * token_certs — client certificates bound to admin tokens (docs/pki.md,
 * "Admin principals"): on an admin listener with admin_tls_client_auth, a
 * verified certificate on record here is its token, with the token's name
 * and role, while the token is live.
 *
 * Contract:
 *  - token_certs_bind: the token must be live (404 not_found); the
 *    certificate passes certs_parse_client (422 invalid_certificate,
 *    certificate_expired, not_client_certificate, unsupported_key) and
 *    neither it nor its key is on record for another principal: any
 *    device certificate, active or revoked, or another live token (422
 *    certificate_in_use; the same certificate twice for one token too). Its issuer is not checked
 *    here: a binding names who a certificate is, the TLS configuration
 *    says whom to believe (the platform CA, tls_client_ca_file). The row
 *    and its audit row (token.certificate_bound) commit together, under
 *    the key's lock that device certificates take too.
 *  - token_certs_unbind: 404 when the live token has no such certificate;
 *    audit row token.certificate_unbound. Revoking a token deletes its
 *    bindings in the same statement (Q_TOKEN_REVOKE).
 *  - token_certs_lookup: the live token a certificate (SHA-256 hex of its
 *    DER) is bound to: DB_OK with *who, DB_NOT_FOUND, or the outage.
 */
#ifndef QKMS_TOKEN_CERTS_H
#define QKMS_TOKEN_CERTS_H

#include <jansson.h>
#include <stddef.h>

#include "err.h"
#include "service/auth.h"
#include "service/service.h"

/* *out: the binding's record {token, sha256, spki_sha256, subject, issuer,
 * not_before, not_after, created_at, created_by, certificate (PEM)}. */
qk_kind token_certs_bind(qk_svc *s, const qk_principal *who, const char *token, const char *pem,
                         size_t len, json_t **out, qk_err *e);
/* {"token", "certificates": [records]}, oldest first; 404 for no live token. */
qk_kind token_certs_list(qk_svc *s, const char *token, json_t **out, qk_err *e);
/* *out: {"token", "sha256", "unbound": true}. */
qk_kind token_certs_unbind(qk_svc *s, const qk_principal *who, const char *token,
                           const char *sha_hex, json_t **out, qk_err *e);
db_status token_certs_lookup(db_pool *db, const char *sha_hex, auth_principal *who);

#endif
