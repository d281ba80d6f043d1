/*
 * transport — whether a request's connection is confidential enough to carry
 * key material in clear (plaintext key export).
 *
 * Contract: pure functions of their arguments, no I/O, thread-safe.
 * A connection qualifies when the listener speaks TLS, or when the peer
 * address is a loopback address (127.0.0.0/8, ::1, or ::ffff:127.0.0.0/104):
 * then the bytes never cross a network. Anything else, including an address
 * that does not parse ("?" when kmsd could not read it), does not.
 */
#ifndef QKMS_TRANSPORT_H
#define QKMS_TRANSPORT_H

#include <stdbool.h>

/* ip: the client address as kmsd's request log prints it (inet_ntop). */
bool transport_is_loopback(const char *ip);

/* tls: the listener the request came in on speaks HTTPS (its tls_cert_file or
 * admin_tls_cert_file is set); see also http_confidential (server.h). */
bool transport_confidential(bool tls, const char *ip);

#endif
