/*
 * httpc — the minimal keep-alive HTTP/1.1 client the benchmarks share:
 * loopback only, Content-Length bodies only (kmsd always sends one).
 */
#ifndef QKMS_BENCH_HTTPC_H
#define QKMS_BENCH_HTTPC_H

#include <stddef.h>

int httpc_dial(int port);
/* Send req (complete bytes); read one response into buf. Returns the status
 * and sets *body / *body_len into buf, or -1 (the connection is then dead). */
int httpc_roundtrip(int fd, const char *req, size_t req_len, char *buf, size_t cap,
                    const char **body, size_t *body_len);
double httpc_now(void);

#endif
