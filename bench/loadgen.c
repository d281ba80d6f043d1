/*
 * loadgen — a small closed-loop HTTP/1.1 load generator for qkms benchmarks.
 *
 * Each of C threads keeps one keep-alive connection to 127.0.0.1:PORT and
 * sends the same request back to back for S seconds (or until N requests),
 * recording every latency. Prints one line:
 *   name=... conc=C requests=R errors=E rps=X p50_ms=A p99_ms=B max_ms=M
 * Bounded in time and count by design; loopback only.
 *
 * usage: loadgen -p PORT -c CONC -s SECONDS [-n MAXREQ] [-m METHOD] [-H header]...
 *                [-d BODY] [-N name] PATH
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "httpc.h"

#define MAX_HEADERS 8

typedef struct {
    int port;
    double seconds;
    long max_requests;
    const char *request; /* full request bytes */
    size_t request_len;
    _Atomic long issued;
} config;

typedef struct {
    config *cfg;
    double *lat; /* ms */
    size_t nlat, cap;
    long errors;
    long non2xx;
} worker;

static double now_s(void) { return httpc_now(); }

static void *run(void *arg)
{
    worker *w = arg;
    config *c = w->cfg;
    char *buf = malloc(1 << 20);
    double end = now_s() + c->seconds;
    int fd = httpc_dial(c->port);

    while (buf && now_s() < end) {
        if (c->max_requests && atomic_fetch_add(&c->issued, 1) >= c->max_requests)
            break;
        if (fd < 0 && (fd = httpc_dial(c->port)) < 0) {
            w->errors++;
            usleep(10000);
            continue;
        }
        double t0 = now_s();
        int st = httpc_roundtrip(fd, c->request, c->request_len, buf, 1 << 20, NULL, NULL);
        if (st < 0) {
            w->errors++;
            close(fd);
            fd = -1;
            continue;
        }
        if (st < 200 || st > 299)
            w->non2xx++;
        if (w->nlat == w->cap) {
            w->cap = w->cap ? w->cap * 2 : 4096;
            double *nl = realloc(w->lat, w->cap * sizeof(double));
            if (!nl)
                break;
            w->lat = nl;
        }
        w->lat[w->nlat++] = (now_s() - t0) * 1000.0;
    }
    if (fd >= 0)
        close(fd);
    free(buf);
    return NULL;
}

static int cmpd(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
    config c = {.port = 8470, .seconds = 5};
    int conc = 1, opt, nh = 0;
    const char *method = "GET", *body = NULL, *name = "run", *hdrs[MAX_HEADERS];
    char *req;
    size_t cap;

    while ((opt = getopt(argc, argv, "p:c:s:n:m:H:d:N:")) != -1) {
        switch (opt) {
        case 'p': c.port = atoi(optarg); break;
        case 'c': conc = atoi(optarg); break;
        case 's': c.seconds = atof(optarg); break;
        case 'n': c.max_requests = atol(optarg); break;
        case 'm': method = optarg; break;
        case 'H': if (nh < MAX_HEADERS) hdrs[nh++] = optarg; break;
        case 'd': body = optarg; break;
        case 'N': name = optarg; break;
        default: fprintf(stderr, "usage: see bench/loadgen.c\n"); return 2;
        }
    }
    if (optind != argc - 1 || conc < 1 || conc > 1024 || c.seconds <= 0 || c.seconds > 600) {
        fprintf(stderr, "loadgen: need PATH; 1 <= -c <= 1024; 0 < -s <= 600\n");
        return 2;
    }
    cap = 4096 + (body ? strlen(body) : 0);
    req = malloc(cap);
    if (!req)
        return 1;
    int n = snprintf(req, cap, "%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\n", method, argv[optind]);
    for (int i = 0; i < nh; i++)
        n += snprintf(req + n, cap - (size_t)n, "%s\r\n", hdrs[i]);
    if (body)
        n += snprintf(req + n, cap - (size_t)n,
                      "Content-Type: application/json\r\nContent-Length: %zu\r\n\r\n%s",
                      strlen(body), body);
    else
        n += snprintf(req + n, cap - (size_t)n, "\r\n");
    c.request = req;
    c.request_len = (size_t)n;

    worker *w = calloc((size_t)conc, sizeof(*w));
    pthread_t *th = calloc((size_t)conc, sizeof(*th));
    double t0 = now_s();
    for (int i = 0; i < conc; i++) {
        w[i].cfg = &c;
        pthread_create(&th[i], NULL, run, &w[i]);
    }
    for (int i = 0; i < conc; i++)
        pthread_join(th[i], NULL);
    double elapsed = now_s() - t0;

    size_t total = 0;
    long errors = 0, non2xx = 0;
    for (int i = 0; i < conc; i++) {
        total += w[i].nlat;
        errors += w[i].errors;
        non2xx += w[i].non2xx;
    }
    double *all = malloc((total ? total : 1) * sizeof(double));
    size_t k = 0;
    for (int i = 0; i < conc; i++) {
        memcpy(all + k, w[i].lat, w[i].nlat * sizeof(double));
        k += w[i].nlat;
        free(w[i].lat);
    }
    qsort(all, total, sizeof(double), cmpd);
    double p50 = total ? all[total / 2] : 0, p99 = total ? all[(size_t)((double)total * 0.99)] : 0;
    double mx = total ? all[total - 1] : 0;
    printf("name=%s conc=%d requests=%zu errors=%ld non2xx=%ld rps=%.0f p50_ms=%.3f p99_ms=%.3f "
           "max_ms=%.3f\n",
           name, conc, total, errors, non2xx, (double)total / elapsed, p50, p99, mx);
    free(all);
    free(w);
    free(th);
    free(req);
    return 0;
}
