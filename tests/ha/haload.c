/*
 * haload — the steady paired-key load of the failover drills (docs/ha.md,
 * tests/ha/): device protocol v1 through the device library, every answer
 * opened and checked, and every request's outcome written down so that the
 * drill can compare what clients received with what the database holds.
 *
 * usage: haload PORT CONC SECONDS FILLDIR NPAIRS OUTFILE [PREFIX]
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
 * OUTFILE gets one line per request outcome, wall-clock milliseconds first:
 *   <ms> <session> <v|e> ok <key_id> <kcv hex>
 *   <ms> <session> <v|e> err <status|conn|open>
 *   <ms> <session> - abandoned
 * The key itself is never written: its check value (common/kcv) tells two
 * copies apart. Loopback only; each request waits at most 10 s.
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
#include "qkms_device.h"

#define GRACE_S 30.0
#define IO_TIMEOUT_S 10

typedef struct {
    int port, id;
    double end;            /* no new session after this (httpc_now) */
    const char *stopfile;  /* or once this file exists */
    const char *prefix;
    qkd_device *veh, *enc;
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

/* One request of d in session sid; 0 with *key filled on success, else
 * -1 with why set ("conn", "open" or the status). */
static int ask(worker *w, int *fd, const qkd_device *d, const char *sid, const char *peer,
               char *buf, size_t cap, qkd_session_key *key, char why[16])
{
    qkd_request rq;
    char req[4096], err[128];
    const char *body;
    size_t blen;
    int n, st, rc = -1;

    if (qkd_request_key(&rq, d, 0, sid, peer, false, (int64_t)time(NULL), NULL, err,
                        sizeof(err)) != QKD_OK) {
        fprintf(stderr, "haload: %s\n", err);
        exit(2);
    }
    n = snprintf(req, sizeof(req),
                 "POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 "Content-Length: %zu\r\n\r\n%s",
                 rq.path, rq.body_len, rq.body);
    if (*fd < 0 && (*fd = dial(w->port)) < 0) {
        snprintf(why, 16, "conn");
        goto out;
    }
    st = httpc_roundtrip(*fd, req, (size_t)n, buf, cap, &body, &blen);
    if (st < 0) {
        close(*fd);
        *fd = -1;
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
                if (ask(w, &fd, party[p], sid, peer[p], buf, 65536, &k, why) == 0) {
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

int main(int argc, char **argv)
{
    int conc, npairs, rc = 0;
    worker *w;
    pthread_t *t;
    FILE *out;
    long ok = 0, errors = 0, abandoned = 0;
    char stopfile[4096];

    if (argc < 7 || argc > 8) {
        fprintf(stderr, "usage: haload PORT CONC SECONDS FILLDIR NPAIRS OUTFILE [PREFIX]\n");
        return 2;
    }
    conc = atoi(argv[2]);
    npairs = atoi(argv[5]);
    if (conc < 1 || npairs < 1 || !(out = fopen(argv[6], "w"))) {
        fprintf(stderr, "haload: bad arguments or cannot write %s\n", argv[6]);
        return 2;
    }
    setvbuf(out, NULL, _IOLBF, 0);
    snprintf(stopfile, sizeof(stopfile), "%s.stop", argv[6]);
    w = calloc((size_t)conc, sizeof(*w));
    t = calloc((size_t)conc, sizeof(*t));
    if (!w || !t)
        return 2;
    for (int i = 0; i < conc; i++) {
        w[i] = (worker){.port = atoi(argv[1]), .id = i, .end = httpc_now() + atof(argv[3]),
                        .stopfile = stopfile, .prefix = argc == 8 ? argv[7] : "ha", .out = out};
        w[i].veh = bench_fill_load(argv[4], "veh", i % npairs);
        w[i].enc = bench_fill_load(argv[4], "enc", i % npairs);
        if (!w[i].veh || !w[i].enc) {
            fprintf(stderr, "haload: cannot load the fills of pair %d\n", i % npairs);
            return 2;
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
    }
    fclose(out);
    printf("name=haload conc=%d ok=%ld errors=%ld abandoned=%ld\n", conc, ok, errors, abandoned);
    free(w);
    free(t);
    return rc;
}
