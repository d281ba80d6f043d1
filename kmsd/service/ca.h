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
 *  - Thread-safe after ca_open; the CA's state is read-only but for the
 *    token handle, found again (under a lock) after the token module was
 *    re-initialized. The module sees the pool and the token, not the
 *    service context (service_open builds one from the other).
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
/* Sign x (every field set, issuer the active CA's subject) with the active
 * CA key in the token; CKR_SIGNATURE_INVALID if the result did not verify. */
CK_RV ca_sign(qk_ca *ca, X509 *x);
/* The same for a CRL (every field set, issuer the active CA's subject). */
CK_RV ca_sign_crl(qk_ca *ca, X509_CRL *crl);

#endif
