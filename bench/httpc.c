/* httpc — keep-alive HTTP/1.1 for benchmarks. */
#include "httpc.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

double httpc_now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

int httpc_dial(int port)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    int one = 1, fd = socket(AF_INET, SOCK_STREAM, 0);
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    if (fd < 0)
        return -1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (connect(fd, (struct sockaddr *)&a, sizeof(a)) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

/* The transport under one round trip: a socket, or a TLS session. */
typedef struct {
    int fd;
    SSL *ssl;
} io;

static ssize_t io_write(io *c, const char *p, size_t n)
{
    if (!c->ssl)
        return write(c->fd, p, n);
    int r = SSL_write(c->ssl, p, (int)n);
    return r > 0 ? r : -1;
}

static ssize_t io_read(io *c, char *p, size_t n)
{
    if (!c->ssl)
        return read(c->fd, p, n);
    int r = SSL_read(c->ssl, p, (int)n);
    return r > 0 ? r : -1;
}

static int roundtrip(io *c, const char *req, size_t req_len, char *buf, size_t cap,
                     const char **body, size_t *body_len)
{
    size_t have = 0, sent = 0;
    while (sent < req_len) {
        ssize_t n = io_write(c, req + sent, req_len - sent);
        if (n <= 0)
            return -1;
        sent += (size_t)n;
    }
    for (;;) {
        ssize_t n = io_read(c, buf + have, cap - have - 1);
        char *hdr_end, *cl;
        if (n <= 0)
            return -1;
        have += (size_t)n;
        buf[have] = 0;
        hdr_end = strstr(buf, "\r\n\r\n");
        if (!hdr_end)
            continue;
        cl = strcasestr(buf, "\r\nContent-Length:");
        size_t blen = cl && cl < hdr_end ? (size_t)strtoul(cl + 17, NULL, 10) : 0;
        size_t total = (size_t)(hdr_end + 4 - buf) + blen;
        if (total >= cap)
            return -1;
        while (have < total) {
            n = io_read(c, buf + have, total - have);
            if (n <= 0)
                return -1;
            have += (size_t)n;
        }
        buf[total] = 0;
        if (body)
            *body = hdr_end + 4;
        if (body_len)
            *body_len = blen;
        return atoi(buf + 9);
    }
}

int httpc_roundtrip(int fd, const char *req, size_t req_len, char *buf, size_t cap,
                    const char **body, size_t *body_len)
{
    io c = {fd, NULL};
    return roundtrip(&c, req, req_len, buf, cap, body, body_len);
}

SSL *httpc_tls_dial(int port, SSL_CTX *ctx)
{
    int fd = httpc_dial(port);
    SSL *s;
    if (fd < 0)
        return NULL;
    if (!(s = SSL_new(ctx)) || SSL_set_fd(s, fd) != 1 ||
        X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(s), "127.0.0.1") != 1 ||
        SSL_connect(s) != 1) {
        SSL_free(s);
        close(fd);
        return NULL;
    }
    return s;
}

int httpc_tls_roundtrip(SSL *s, const char *req, size_t req_len, char *buf, size_t cap,
                        const char **body, size_t *body_len)
{
    io c = {SSL_get_fd(s), s};
    return roundtrip(&c, req, req_len, buf, cap, body, body_len);
}

void httpc_tls_close(SSL *s)
{
    int fd;
    if (!s)
        return;
    fd = SSL_get_fd(s);
    SSL_shutdown(s);
    SSL_free(s);
    close(fd);
}
