/*
 * certs — device certificates issued by the platform CA (ca.h) from the
 * device's CSR, stored in `certificates` with an audit row (docs/pki.md:
 * the profile).
 *
 * Contract:
 *  - certs_issue refuses, with 422 and a stable code and nothing stored: a
 *    CSR that does not parse or whose signature does not verify
 *    (invalid_csr), a subject CN naming another device
 *    (csr_subject_mismatch), a key other than EC P-256/P-384, RSA
 *    2048..8192 or Ed25519 (unsupported_key), a validity out of 1..3650
 *    days (invalid_validity). The device must exist (404) and be active
 *    (409 invalid_state), checked under a row lock in the transaction that
 *    stores the certificate and its audit row. A key on another device's
 *    active certificate is refused (422 certificate_in_use): one key, one
 *    device, for issued and bound certificates alike.
 *  - A device's revocation (devices.c) revokes its active certificates in
 *    the same transaction (reason cessationOfOperation).
 *  - The certificate is signed before the transaction: a refusal there
 *    leaves a signed certificate nobody ever saw, never a stored one.
 */
#ifndef QKMS_CERTS_H
#define QKMS_CERTS_H

#include <jansson.h>
#include <stddef.h>

#include "err.h"
#include "service/service.h"

typedef struct {
    const char *device_id;
    const char *csr_pem;
    size_t csr_len;
    int validity_days; /* 0: the default, 365 */
} cert_request;

/* *out: the certificate's record (certs_list's element) with "device_id",
 * "certificate" and "chain" (PEM). */
qk_kind certs_issue(qk_svc *s, const qk_principal *who, const cert_request *rq, json_t **out,
                    qk_err *e);
/* Bind a certificate issued elsewhere (PEM) to a device, for seed 002's
 * "registered ID bound one-to-one to a certificate": refused (422, nothing
 * stored) when it does not parse (invalid_certificate), has expired
 * (certificate_expired), is not a client certificate
 * (not_client_certificate), has a key the profile does not accept
 * (unsupported_key), or it or its key is on record already
 * (certificate_in_use: a key identifies one device). Its issuer is not
 * checked here: who trusts it is the TLS configuration's business. */
qk_kind certs_bind(qk_svc *s, const qk_principal *who, const char *device_id, const char *pem,
                   size_t len, json_t **out, qk_err *e);
/* {"device_id", "certificates": [...]} of a device, oldest first. */
qk_kind certs_list(qk_svc *s, const char *device_id, json_t **out, qk_err *e);
/* One certificate's record, with "device_id". */
qk_kind certs_get(qk_svc *s, const char *device_id, const char *serial, json_t **out, qk_err *e);
/* Revoke a certificate (reason NULL: unspecified; otherwise a name
 * crl_reason_code knows, else 422 invalid_reason); 409 invalid_state when
 * it is revoked already. The row and its audit row commit together; then a
 * new CRL is made at once (crl.h). *out: the record, as certs_get. */
qk_kind certs_revoke(qk_svc *s, const qk_principal *who, const char *device_id,
                     const char *serial, const char *reason, json_t **out, qk_err *e);

/* Who a TLS client certificate names. */
typedef struct {
    char device_id[129];
    char serial[41];
    char sha256[65];
} cert_principal;

/* Authenticate a TLS client by its certificate chain (DER, leaf first; n
 * certificates): the leaf must be a certificate on record for a device,
 * active, of an active device, and verify against the platform CA (time,
 * TLS client purpose, signatures). QK_UNAUTHENTICATED with the reason in
 * e->detail (for the log; the client sees the code) otherwise. *out
 * names the certificate's SHA-256 once the leaf parsed, and the device
 * once the certificate was found on record. */
qk_kind certs_authenticate(qk_svc *s, const unsigned char *const *der, const size_t *len, int n,
                           cert_principal *out, qk_err *e);

#endif
