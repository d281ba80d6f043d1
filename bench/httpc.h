/*
 * httpc — the minimal keep-alive HTTP/1.1 client the benchmarks share:
 * loopback only, Content-Length bodies only (kmsd always sends one), plain
 * or over TLS (OpenSSL).
 */
#ifndef QKMS_BENCH_HTTPC_H
#define QKMS_BENCH_HTTPC_H

#include <stddef.h>

#include <openssl/ssl.h>

int httpc_dial(int port);
/* Send req (complete bytes); read one response into buf. Returns the status
 * and sets *body / *body_len into buf, or -1 (the connection is then dead). */
int httpc_roundtrip(int fd, const char *req, size_t req_len, char *buf, size_t cap,
                    const char **body, size_t *body_len);
double httpc_now(void);

/* The same over TLS (mutual TLS when ctx carries a client certificate):
 * the server must verify against ctx's trust and name 127.0.0.1. NULL on
 * failure; httpc_tls_close closes the socket too. */
SSL *httpc_tls_dial(int port, SSL_CTX *ctx);
int httpc_tls_roundtrip(SSL *s, const char *req, size_t req_len, char *buf, size_t cap,
                        const char **body, size_t *body_len);
void httpc_tls_close(SSL *s);

#endif
