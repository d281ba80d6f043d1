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

int httpc_roundtrip(int fd, const char *req, size_t req_len, char *buf, size_t cap,
                    const char **body, size_t *body_len)
{
    size_t have = 0, sent = 0;
    while (sent < req_len) {
        ssize_t n = write(fd, req + sent, req_len - sent);
        if (n <= 0)
            return -1;
        sent += (size_t)n;
    }
    for (;;) {
        ssize_t n = read(fd, buf + have, cap - have - 1);
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
            n = read(fd, buf + have, total - have);
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
