/*
 * ca — the platform CA: its key pair lives in the token, and it signs there
 * (docs/pki.md). Device certificates are certs.h's.
 *
 * Contract:
 *  - ca_open, at start and under an advisory lock (instances starting
 *    together agree): with no CA recorded, version 1 is made: an ECDSA
 *    P-256 pair generated in the token (label "qkms-ca-<version>", private
 *    key sensitive, never extractable, sign only) and a self-signed root
 *    (ten years) stored in ca_keys. Then the active version's private key
 *    must be in the token and its public key must be the certificate's, or
 *    kmsd refuses to start.
 *  - ca_sign: OpenSSL encodes the certificate; its to-be-signed part is
 *    hashed on the host (SHA-256) and signed in the token (CKM_ECDSA); the
 *    signature is put into the certificate, which is checked against the
 *    CA's public key before it is handed back. No private key byte of the
 *    CA ever leaves the token.
 *  - ca_rotate (docs/pki.md, "Rotating the CA"): a new version N+1, its
 *    key pair generated in the token and a new self-signed root, becomes
 *    the active one and issues from then on; the previous one is retired
 *    in the same transaction (audit row ca.rotated), stays in the trust
 *    store and in GET /v1/ca while its certificate is valid, so what it
 *    issued keeps verifying until it expires, and signs its own CRLs.
 *    Instances serialize on the CA's advisory lock; others take the new
 *    version in at their next ca_refresh (the maintenance thread, at least
 *    once a minute).
 *  - Thread-safe after ca_open: versions are only ever appended (pointers
 *    handed out stay valid), the active index is atomic, key handles are
 *    found again (under a lock) after the token module was re-initialized.
 *    The module sees the pool and the token, not the service context
 *    (service_open builds one from the other).
 */
#ifndef QKMS_CA_H
#define QKMS_CA_H

#include <jansson.h>
#include <stddef.h>

#include <openssl/x509.h>

#include "err.h"
#include "p11.h"
#include "store/db.h"

typedef struct qk_ca qk_ca;

/* 0, or -1 with err (why kmsd refuses to start). */
int ca_open(qk_ca **out, db_pool *db, p11_token *t, char *err, size_t errlen);
void ca_free(qk_ca *ca);

/* The CA certificates as PEM, the active one first, then retired ones
 * still valid (malloc'd, *len bytes). */
qk_kind ca_chain_pem(qk_ca *ca, char **pem, size_t *len, qk_err *e);
/* {"active_version", "certificates": [{version, state, label, subject,
 * not_before, not_after, sha256, spki_sha256, key: {type, curve}, pem}]} */
qk_kind ca_show(qk_ca *ca, json_t **out, qk_err *e);

/* Every CA version's certificate as a trust store, for verifying client
 * certificates (borrowed; read-only, so any thread may verify with it). */
X509_STORE *ca_store(qk_ca *ca);
/* The active CA's certificate (borrowed: lives as long as ca) and version. */
X509 *ca_active_cert(qk_ca *ca, int *version);
/* A version's certificate (borrowed), or NULL when there is none. */
X509 *ca_cert(qk_ca *ca, int version);
/* The versions whose certificates are still valid (at most max): those
 * that keep CRLs. Their number. */
int ca_versions_valid(qk_ca *ca, int *out, int max);
/* Sign x (every field set, issuer the active CA's subject) with the active
 * CA key in the token; CKR_SIGNATURE_INVALID if the result did not verify,
 * CKR_KEY_CHANGED when x names a CA that was rotated out meanwhile. */
CK_RV ca_sign(qk_ca *ca, X509 *x);
/* A leaf certificate of the active CA for pub (the platform's own keys in
 * the token): subject O=qkms, CN=cn; valid from a minute ago for days, or
 * the CA's remaining life if shorter; CA:FALSE, key_usage (e.g.
 * "critical,digitalSignature"), ext_key_usage when not NULL, key
 * identifiers. A CA rotated between building and signing is retried once.
 * NULL with *rv the token's failure, or CKR_ATTRIBUTE_VALUE_INVALID when the
 * certificate could not be built (the CA has under an hour left, memory). */
X509 *ca_issue_leaf(qk_ca *ca, EVP_PKEY *pub, const char *cn, long days, const char *key_usage,
                    const char *ext_key_usage, CK_RV *rv);
/* The same for a CRL of version (every field set, issuer that version's
 * subject), with that version's key. */
CK_RV ca_sign_crl(qk_ca *ca, int version, X509_CRL *crl);
/* Take in versions another instance made (and which one is active). */
qk_kind ca_refresh(qk_ca *ca, db_pool *db, qk_err *e);
/* An operator's own root (docs/pki.md, "Your own root"): ca_csr makes a
 * pending version, its key pair in the token, and answers {"version",
 * "label", "csr" (PEM, signed in the token), "pending_before"}: a version
 * already pending answers its CSR again. ca_import takes the certificate
 * the operator's CA issued for the pending key, then the certificates
 * above it up to the root (PEM), checks them (422 invalid_certificate,
 * certificate_expired; 409 invalid_state with nothing pending) and makes
 * that version the active one, the previous retired (audit ca.imported):
 * the issuers are trusted and served with it. */
qk_kind ca_csr(qk_ca *ca, db_pool *db, const char *actor, json_t **out, qk_err *e);
qk_kind ca_import(qk_ca *ca, db_pool *db, const char *actor, const char *pem, size_t len,
                  int *version, qk_err *e);
/* Rotate (see the contract); *version the new one. actor: the audit row's. */
qk_kind ca_rotate(qk_ca *ca, db_pool *db, const char *actor, int *version, qk_err *e);

#endif
