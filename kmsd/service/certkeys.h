/*
 * certkeys — the public keys of certificates on record, by the SHA-256 of
 * their DER, for protocol v2's signatures (negotiate.h): parsing a
 * certificate costs more than verifying its signature, and a certificate
 * never changes.
 *
 * Contract:
 *  - Only the key is kept, public data; whether the certificate may
 *    authenticate is the caller's to read from the database every time.
 *  - Direct-mapped, 4096 slots: a collision replaces the slot.
 *  - Thread-safe: one mutex, held for a lookup or a store, never while a
 *    certificate is parsed.
 */
#ifndef QKMS_CERTKEYS_H
#define QKMS_CERTKEYS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <openssl/evp.h>

typedef struct certkeys certkeys;

certkeys *certkeys_new(void);
void certkeys_free(certkeys *c);

/* The key of the certificate whose DER (len bytes) has digest sha: a
 * reference the caller frees, from the cache or else parsed and cached;
 * NULL when the DER does not parse. *p256: protocol v2 may use it: a P-256
 * key, and the certificate's key usage, if any, allows digitalSignature
 * and keyAgreement. */
EVP_PKEY *certkeys_get(certkeys *c, const uint8_t sha[32], const uint8_t *der, size_t len,
                       bool *p256);

#endif
