/*
 * trust — the issuers a TLS client certificate may chain to besides the
 * platform CA: the PEM bundle of tls_client_ca_file (the CAs of bound
 * certificates) and the CRLs of tls_client_crl_file (docs/pki.md,
 * "Mutual TLS").
 *
 * Contract:
 *  - trust_open reads both files: 0, or -1 with err when a file cannot be
 *    read, does not parse, or the bundle holds no certificate (kmsd refuses
 *    to start rather than trust less or more than configured). No CA file:
 *    *out is NULL, and every trust_* call on NULL is a no-op returning NULL.
 *  - With a CRL file, every chain verified against the store is checked
 *    against its CAs' CRLs (X509_V_FLAG_CRL_CHECK | CRL_CHECK_ALL): a
 *    certificate whose issuer has no current CRL in the file is refused.
 *  - trust_store hands out the current store with a reference of its own
 *    (X509_STORE_free it). At most every 10 s it looks whether the CRL
 *    file changed (mtime, size, inode) and, if so, reads it again into a
 *    new store; a file that no longer parses keeps the previous store and
 *    is logged. Thread-safe.
 */
#ifndef QKMS_TRUST_H
#define QKMS_TRUST_H

#include <stddef.h>

#include <openssl/x509.h>

typedef struct qk_trust qk_trust;

int trust_open(qk_trust **out, const char *ca_file, const char *crl_file, char *err,
               size_t errlen);
void trust_free(qk_trust *t);
X509_STORE *trust_store(qk_trust *t);
/* The bundle as PEM (borrowed; lives as long as t), for the TLS layer's
 * list of acceptable issuers. NULL for a NULL t. */
const char *trust_pem(qk_trust *t);

#endif
