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
#include <stdbool.h>
#include <stddef.h>

#include <openssl/x509.h>

#include "err.h"
#include "qbuf.h"
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
/* A key pair made here (ECDSA P-256, on the host) and its certificate,
 * issued (the checks and profile of certs_issue; rq->csr_* unused) and
 * recorded: *doc (QBUF_SECURE, the caller's to qbuf_free) is the document
 * "qkms-tls-identity/1": {"format", "device_id", "serial", "certificate",
 * "chain", "private_key" (PKCS#8 PEM)}, *record the certificate's record
 * plus "key_generated": true. The key exists only in that document: never
 * in PostgreSQL, a log or an answer in clear. A caller that cannot deliver
 * the document calls certs_identity_undo (the certificate is revoked,
 * superseded: nobody holds its key). */
qk_kind certs_identity(qk_svc *s, const qk_principal *who, const cert_request *rq, qbuf **doc,
                       json_t **record, qk_err *e);
void certs_identity_undo(qk_svc *s, const qk_principal *who, const json_t *record);
/* certs_identity's document sealed to a provisioning station's public key
 * (recipient: X25519 or P-256) in a fill package (fillpkg.h). *out: the
 * record plus "package_format", "recipient_fingerprint" and "package"
 * (base64). */
qk_kind certs_issue_generated(qk_svc *s, const qk_principal *who, const cert_request *rq,
                              EVP_PKEY *recipient, json_t **out, qk_err *e);
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
/* Rotate the platform CA (ca_rotate; docs/pki.md, "Rotating the CA") and
 * make the CRLs; *out is ca_show's answer after it. Admin principals only
 * (the door's route says so). */
qk_kind certs_ca_rotate(qk_svc *s, const qk_principal *who, json_t **out, qk_err *e);
/* The same for an operator's own root (ca_import): the pending version
 * becomes the active one; *out is ca_show's answer after it. */
qk_kind certs_ca_import(qk_svc *s, const qk_principal *who, const char *pem, size_t len,
                        json_t **out, qk_err *e);
/* Parse a PEM certificate (at most 16 KiB) that may identify a TLS client:
 * the checks of certs_bind but the record (invalid_certificate,
 * certificate_expired, not_client_certificate, unsupported_key). *out is
 * the caller's (X509_free). */
qk_kind certs_parse_client(const char *pem, size_t len, X509 **out, qk_err *e);
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
    char sha256[65];     /* of the leaf certificate (DER), hex */
    long long valid_until; /* the earliest notAfter of the verified chain (Unix s) */
    bool by_platform_ca; /* the chain verified against the platform CA (not a
                          * tls_client_ca_file issuer, whose CRLs may change) */
} cert_principal;

/* A TLS client's certificate chain (DER, leaf first; n certificates): time,
 * TLS client purpose and signatures, against the platform CA and else the
 * issuers of tls_client_ca_file with their CRLs (trust.h).
 * QK_UNAUTHENTICATED with the reason in e->detail otherwise. Fills
 * out->sha256 once the leaf parsed, valid_until and by_platform_ca. */
qk_kind certs_verify_chain(qk_svc *s, const unsigned char *const *der, const size_t *len, int n,
                           cert_principal *out, qk_err *e);
/* The verified leaf (p->sha256) must be a certificate on record, active, of
 * an active device: fills p->device_id and p->serial (the device once the
 * certificate was found), else QK_UNAUTHENTICATED with the reason in
 * e->detail; a database failure is its own kind (db_fail). One indexed
 * query: made for every request, so a revocation takes effect at once. */
qk_kind certs_lookup(qk_svc *s, cert_principal *p, qk_err *e);
/* Both, in that order. */
qk_kind certs_authenticate(qk_svc *s, const unsigned char *const *der, const size_t *len, int n,
                           cert_principal *out, qk_err *e);
/* Record (audit row certificate.mismatch: actor and device_id the
 * certificate's device, detail its serial and the claimed device) that a request authenticated by p's
 * certificate named another device, claimed, in its envelope. Best effort:
 * a database failure is logged, the request is refused either way. */
void certs_mismatch(qk_svc *s, const cert_principal *p, const char *claimed, const log_ctx *log);

#endif
