/*
 * haload — the steady paired-key load of the failover drills (docs/ha.md,
 * tests/ha/): device protocol v1 through the device library, every answer
 * opened and checked, and every request's outcome written down so that the
 * drill can compare what clients received with what the database holds.
 *
 * usage: haload [--cacert CA [--certs DIR]] PORT CONC SECONDS FILLDIR NPAIRS OUTFILE [PREFIX]
 *   Runs SECONDS, or until the file OUTFILE.stop exists.
 *   FILLDIR holds veh-<i>.json and enc-<i>.json (i = 0..NPAIRS-1), as for
 *   bench/session_bench. Each worker runs sessions "PREFIX-<pid>-<w>-<n>":
 *   the vehicle's key request, then the encryptor's. A request that fails
 *   (a refused connection, a timeout, any status but 200, an answer that does
 *   not open) is tried again for the same session after 100 ms, with a fresh
 *   nonce, as a device would: a session is only left when its worker's time
 *   is up and GRACE (30 s) more has passed. So a key that the platform lost
 *   after answering it shows as the two parties holding different keys.
 *
 * Transport: without options, plain HTTP/1.1 on one keep-alive connection
 * per worker (bench/httpc), as the loopback drills' kmsd listen. With
 * --cacert, HTTPS through the device library's own transport (qkd_http:
 * libcurl, the server's certificate and name checked against CA, as
 * qkms-device does), one connection per request as a device that wakes up
 * to ask for a key; with --certs too, mutual TLS: each device presents its
 * client certificate DIR/<veh|enc>-<i>.crt with its key DIR/<...>-<i>.key
 * (kmsd's device protocol with tls_client_auth = require wants the
 * requesting device's own certificate, so a connection carries one).
 *
 * OUTFILE gets one line per request outcome, wall-clock milliseconds first:
 *   <ms> <session> <v|e> ok <key_id> <kcv hex>
 *   <ms> <session> <v|e> err <status|conn|open>
 *   <ms> <session> - abandoned
 * The key itself is never written: its check value (common/kcv) tells two
 * copies apart. Loopback only (127.0.0.1, also the name checked over TLS);
 * each request waits at most 10 s.
 */
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>


#include "fillload.h"
#include "httpc.h"
#include "kcv.h"
#include "qkd_http.h"
#include "qkms_device.h"

#define GRACE_S 30.0
#define IO_TIMEOUT_S 10

typedef struct {
    int port, id;
    double end;            /* no new session after this (httpc_now) */
    const char *stopfile;  /* or once this file exists */
    const char *prefix;
    qkd_device *veh, *enc;
    /* HTTPS (NULL: plain HTTP): the base URL, the server's CA, and each
     * party's client certificate and key (NULL: no client certificate). */
    const char *url, *cacert;
    char *cert[2], *key[2]; /* [0] the vehicle's, [1] the encryptor's */
    FILE *out;
    long ok, errors, abandoned;
} worker;

static long long wall_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    return (long long)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

static int dial(int port)
{
    struct timeval tv = {IO_TIMEOUT_S, 0};
    int fd = httpc_dial(port);
    if (fd >= 0) {
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    }
    return fd;
}

/* Each sends rq and returns the status with *body / *blen set, or -1 when
 * the exchange failed (connect, TLS, timeout, a broken connection). */

/* Plain HTTP on the worker's keep-alive connection *fd (dialled when -1,
 * closed when it breaks); the answer in buf. */
static int post_plain(const worker *w, int *fd, const qkd_request *rq, char *buf, size_t cap,
                      const char **body, size_t *blen)
{
    char req[4096];
    int n = snprintf(req, sizeof(req),
                     "POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     "Content-Length: %zu\r\n\r\n%s",
                     rq->path, rq->body_len, rq->body);
    int st;
    if (n < 0 || (size_t)n >= sizeof(req)) {
        fprintf(stderr, "haload: request too long\n");
        exit(2);
    }
    if (*fd < 0 && (*fd = dial(w->port)) < 0)
        return -1;
    st = httpc_roundtrip(*fd, req, (size_t)n, buf, cap, body, blen);
    if (st < 0) {
        close(*fd);
        *fd = -1;
    }
    return st;
}

/* HTTPS through the device library (qkd_http), as party p: the answer in
 * *resp (the caller clears it). */
static int post_tls(const worker *w, int p, const qkd_request *rq, qkd_http_response *resp,
                    const char **body, size_t *blen)
{
    qkd_http_opts o = {.cacert = w->cacert, .timeout_s = IO_TIMEOUT_S, .user_agent = "haload",
                       .cert = w->cert[p], .key = w->key[p]};
    char err[256];
    int rc = qkd_http_post(w->url, rq->path, rq->body, rq->body_len, &o, resp, err, sizeof(err));
    if (rc == QKD_HTTP_NOMEM) {
        fprintf(stderr, "haload: %s\n", err);
        exit(2);
    }
    if (rc != QKD_HTTP_OK)
        return -1;
    *body = resp->body ? resp->body : "";
    *blen = resp->len;
    return (int)resp->status;
}

/* One request of party p (d) in session sid; 0 with *key filled on
 * success, else -1 with why set ("conn", "open" or the status). */
static int ask(worker *w, int *fd, int p, const qkd_device *d, const char *sid, const char *peer,
               char *buf, size_t cap, qkd_session_key *key, char why[16])
{
    qkd_request rq;
    qkd_http_response resp = {0};
    char err[128];
    const char *body = NULL;
    size_t blen = 0;
    int st, rc = -1;

    if (qkd_request_key(&rq, d, 0, sid, peer, false, (int64_t)time(NULL), NULL, err,
                        sizeof(err)) != QKD_OK) {
        fprintf(stderr, "haload: %s\n", err);
        exit(2);
    }
    st = w->url ? post_tls(w, p, &rq, &resp, &body, &blen)
                : post_plain(w, fd, &rq, buf, cap, &body, &blen);
    if (st < 0) {
        snprintf(why, 16, "conn");
        goto out;
    }
    if (st != 200) {
        snprintf(why, 16, "%d", st);
        goto out;
    }
    if (qkd_response_key(key, d, &rq, body, blen, err, sizeof(err)) != QKD_OK) {
        snprintf(why, 16, "open");
        goto out;
    }
    rc = 0;
out:
    qkd_http_response_clear(&resp);
    qkd_request_clear(&rq);
    return rc;
}

/* Time up: the worker's end has come or the stop file exists (checked at
 * most every 100 ms); moves w->end to the moment it was seen. */
static bool time_up(worker *w)
{
    double now = httpc_now();
    if (now >= w->end)
        return true;
    if (access(w->stopfile, F_OK) == 0) {
        w->end = now;
        return true;
    }
    return false;
}

static void *run(void *arg)
{
    worker *w = arg;
    char *buf = malloc(65536), sid[96];
    int fd = -1;
    long n = 0;

    while (buf && !time_up(w)) {
        const qkd_device *party[2] = {w->veh, w->enc};
        const char *peer[2] = {w->enc->device_id, w->veh->device_id};
        snprintf(sid, sizeof(sid), "%s-%d-%d-%ld", w->prefix, (int)getpid(), w->id, n++);
        for (int p = 0; p < 2; p++) {
            for (;;) {
                qkd_session_key k;
                char why[16];
                memset(&k, 0, sizeof(k));
                if (ask(w, &fd, p, party[p], sid, peer[p], buf, 65536, &k, why) == 0) {
                    uint8_t kcv[QKMS_KCV_LEN];
                    char hex[2 * QKMS_KCV_LEN + 1];
                    if (qkms_kcv_compute(k.key, k.key_len, kcv) != 0) {
                        fprintf(stderr, "haload: check value failed\n");
                        exit(2);
                    }
                    for (int i = 0; i < QKMS_KCV_LEN; i++)
                        snprintf(hex + 2 * i, 3, "%02x", kcv[i]);
                    fprintf(w->out, "%lld %s %c ok %s %s\n", wall_ms(), sid, "ve"[p], k.key_id,
                            hex);
                    qkd_session_key_clear(&k);
                    w->ok++;
                    break;
                }
                fprintf(w->out, "%lld %s %c err %s\n", wall_ms(), sid, "ve"[p], why);
                w->errors++;
                if (time_up(w) && httpc_now() > w->end + GRACE_S) {
                    fprintf(w->out, "%lld %s - abandoned\n", wall_ms(), sid);
                    w->abandoned++;
                    goto out;
                }
                usleep(100 * 1000);
            }
        }
    }
out:
    if (fd >= 0)
        close(fd);
    free(buf);
    return NULL;
}

/* DIR/KIND-I.EXT, heap; exits when out of memory. */
static char *pair_file(const char *dir, const char *kind, int i, const char *ext)
{
    char *p;
    if (asprintf(&p, "%s/%s-%d.%s", dir, kind, i, ext) < 0) {
        fprintf(stderr, "haload: out of memory\n");
        exit(2);
    }
    if (access(p, R_OK) != 0) {
        fprintf(stderr, "haload: cannot read %s\n", p);
        exit(2);
    }
    return p;
}

#define USAGE                                                                                      \
    "usage: haload [--cacert CA [--certs DIR]] PORT CONC SECONDS FILLDIR NPAIRS OUTFILE [PREFIX]\n"

int main(int argc, char **argv)
{
    int conc, npairs, port, rc = 0;
    worker *w;
    pthread_t *t;
    FILE *out;
    long ok = 0, errors = 0, abandoned = 0;
    char stopfile[4096], url[64];
    const char *cacert = NULL, *certs = NULL;

    /* Options first, then the positional arguments as before. */
    while (argc > 1 && !strncmp(argv[1], "--", 2)) {
        if (argc > 2 && !strcmp(argv[1], "--cacert"))
            cacert = argv[2];
        else if (argc > 2 && !strcmp(argv[1], "--certs"))
            certs = argv[2];
        else {
            fputs(USAGE, stderr);
            return 2;
        }
        argc -= 2;
        argv += 2;
    }
    if (argc < 7 || argc > 8 || (certs && !cacert)) {
        fputs(USAGE, stderr);
        return 2;
    }
    port = atoi(argv[1]);
    conc = atoi(argv[2]);
    npairs = atoi(argv[5]);
    if (port < 1 || port > 65535 || conc < 1 || npairs < 1 || !(out = fopen(argv[6], "w"))) {
        fprintf(stderr, "haload: bad arguments or cannot write %s\n", argv[6]);
        return 2;
    }
    if (cacert && qkd_http_global_init() != QKD_HTTP_OK) {
        fprintf(stderr, "haload: libcurl did not initialise\n");
        return 2;
    }
    snprintf(url, sizeof(url), "https://127.0.0.1:%d", port);
    setvbuf(out, NULL, _IOLBF, 0);
    snprintf(stopfile, sizeof(stopfile), "%s.stop", argv[6]);
    w = calloc((size_t)conc, sizeof(*w));
    t = calloc((size_t)conc, sizeof(*t));
    if (!w || !t)
        return 2;
    for (int i = 0; i < conc; i++) {
        w[i] = (worker){.port = port, .id = i, .end = httpc_now() + atof(argv[3]),
                        .stopfile = stopfile, .prefix = argc == 8 ? argv[7] : "ha", .out = out,
                        .url = cacert ? url : NULL, .cacert = cacert};
        w[i].veh = bench_fill_load(argv[4], "veh", i % npairs);
        w[i].enc = bench_fill_load(argv[4], "enc", i % npairs);
        if (!w[i].veh || !w[i].enc) {
            fprintf(stderr, "haload: cannot load the fills of pair %d\n", i % npairs);
            return 2;
        }
        if (certs) {
            w[i].cert[0] = pair_file(certs, "veh", i % npairs, "crt");
            w[i].key[0] = pair_file(certs, "veh", i % npairs, "key");
            w[i].cert[1] = pair_file(certs, "enc", i % npairs, "crt");
            w[i].key[1] = pair_file(certs, "enc", i % npairs, "key");
        }
    }
    for (int i = 0; i < conc; i++)
        if (pthread_create(&t[i], NULL, run, &w[i]) != 0)
            return 2;
    for (int i = 0; i < conc; i++) {
        pthread_join(t[i], NULL);
        ok += w[i].ok;
        errors += w[i].errors;
        abandoned += w[i].abandoned;
    }
    for (int i = 0; i < conc; i++) {
        qkd_device_free(w[i].veh);
        qkd_device_free(w[i].enc);
        for (int p = 0; p < 2; p++) {
            free(w[i].cert[p]);
            free(w[i].key[p]);
        }
    }
    fclose(out);
    if (cacert)
        qkd_http_global_cleanup();
    printf("name=haload conc=%d ok=%ld errors=%ld abandoned=%ld\n", conc, ok, errors, abandoned);
    free(w);
    free(t);
    return rc;
}
