/*
 * x509util — small X.509 and PEM helpers shared by the platform CA (ca.c)
 * and device certificates (certs.c): hex, times, digests, names,
 * extensions, serial numbers. Pure OpenSSL, no token or database.
 */
#ifndef QKMS_X509UTIL_H
#define QKMS_X509UTIL_H

#include <stddef.h>
#include <time.h>

#include <jansson.h>
#include <openssl/x509.h>

/* Lower-case hex of n bytes into out (2n + 1 bytes). */
void x509_hex(const unsigned char *b, size_t n, char *out);
/* Bytes of a hex string (OPENSSL_free them). 0, or -1. */
int x509_unhex(const char *h, unsigned char **out, size_t *len);
/* An ASN1_TIME as time_t (0 when it does not parse). */
time_t x509_time(const ASN1_TIME *t);
/* "YYYY-MM-DDTHH:MM:SSZ" as a JSON string (null when out of range). */
json_t *x509_rfc3339(time_t t);
/* SHA-256 of the certificate's DER and of its SubjectPublicKeyInfo, hex. */
int x509_digests(X509 *x, char sha[65], char spki[65]);
/* The name in RFC 2253 form (malloc'd), NULL when out of memory. */
char *x509_name_text(const X509_NAME *n);
/* The certificate as PEM (malloc'd, NUL-terminated; *len its length if
 * len is not NULL), NULL when out of memory. */
char *x509_pem(X509 *x, size_t *len);
/* Add an extension in OpenSSL's configuration syntax ("critical,CA:FALSE"),
 * with issuer for the authority key identifier. 0, or -1. */
int x509_add_ext(X509 *x, X509 *issuer, int nid, const char *value);
/* The certificate's serial as lower-case hex (whole bytes), 0; -1 when it
 * is not positive or longer than 20 bytes, or out does not hold it. */
int x509_serial_hex(X509 *x, char *out, size_t len);
/* A random positive 128-bit serial (RAND_bytes) set on x (x509_serial_hex
 * reads it back). 0, or -1. */
int x509_random_serial(X509 *x);
/* Every certificate of a PEM text, in order (sk_X509_pop_free); NULL when
 * there is none or a block does not parse. */
STACK_OF(X509) *x509_parse_chain(const char *pem, size_t len);

#endif
