/*
 * servercert — kmsd's own TLS server certificate for the device listener,
 * issued by the platform CA (docs/pki.md, "kmsd's server certificate"), so
 * that devices need trust only the CA they get from GET /v1/ca.
 *
 * Contract:
 *  - servercert_ensure, at start before the listeners open, with
 *    tls_server_names, tls_cert_file and tls_key_file set: the files are
 *    kept when the certificate verifies against the platform CA for TLS
 *    servers, names exactly tls_server_names (DNS names and IP addresses,
 *    in any order), has more than a third of its lifetime left, and the key
 *    file holds its private key. Otherwise a new ECDSA P-256 key is made on
 *    the host and a certificate (365 days, never beyond the CA's validity;
 *    serverAuth; the names as subjectAltName, the first as CN) is signed in
 *    the token; both files are written under temporary names and renamed
 *    into place (the key mode 0600), and an audit row
 *    (ca.server_certificate_issued) records serial, names, SHA-256 and
 *    expiry.
 *  - 0, or -1 with err (kmsd refuses to start: a listener without a
 *    certificate it was told to make would be worse than none).
 *  - The key is the TLS listener's: it lives in a file, like any TLS
 *    server key; it is never a device or session key.
 */
#ifndef QKMS_SERVERCERT_H
#define QKMS_SERVERCERT_H

#include <stddef.h>

#include "service/service.h"

/* names: tls_server_names, 1..16 comma-separated DNS names (letters,
 * digits, '-', '.'; a leading "*." allowed) or IPv4/IPv6 addresses; a
 * list that is not refuses the start too. */
int servercert_ensure(qk_svc *s, const char *names, const char *cert_file, const char *key_file,
                      char *err, size_t errlen);

#endif
