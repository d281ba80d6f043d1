/*
 * session_bench — drives the device protocol v1 against kmsd with real
 * protocol messages (device/qkms_device.h), closed loop, bounded in time.
 *
 * Each worker takes a (vehicle, encryptor) pair of fill documents and runs
 * full paired sessions: vehicle key request, encryptor key request (both
 * must return the same key ID), then an end from the vehicle. Prints:
 *   name=sessions conc=C sessions=N deliveries=D errors=E sessions_per_s=...
 *        deliveries_per_s=... p50_ms=... p99_ms=... (per request)
 *
 * usage: session_bench PORT CONC SECONDS FILLDIR NPAIRS [sessions|deliveries [TLSDIR]]
 *        session_bench PORT CONC SECONDS FILLDIR NPAIRS epochs|streams
 *        session_bench PORT CONC SECONDS FILLDIR NPAIRS deliveries_v2 V2DIR
 *   FILLDIR holds veh-<i>.json and enc-<i>.json (i = 0..NPAIRS-1).
 *   "deliveries" leaves out the end: two key deliveries per session, the
 *   sessions then end by idle timeout.
 *   TLSDIR: mutual TLS. It holds ca.pem (the server's CA) and each
 *   device's client certificate and key, veh-<i>.crt/.key and
 *   enc-<i>.crt/.key; a worker then keeps one keep-alive connection per
 *   device (a connection carries one client certificate), and the line's
 *   name gets "_mtls".
 *   epochs: each worker opens one session, then asks for its next epoch's
 *   key from both parties, over and over (docs/protocol.md, "Epochs and
 *   direction keys"; the policy allows 1,000,000 epochs): each epoch is two
 *   deliveries, the first of which makes the key and supersedes the epoch
 *   before. Line name "epochs".
 *   streams: each worker takes its pair's key stream, both parties asking
 *   for key 0, 1, 2, ... in turn (each key made by the first, consumed and
 *   destroyed at the second): two deliveries per key. Line name "streams";
 *   needs CONC <= NPAIRS (a stream is its pair's).
 *   deliveries_v2: the same deliveries in device protocol v2 (docs/protocol.md)
 *   over plain HTTP: the vehicle in mode 2 asking key source a (both
 *   sides' randoms, so the platform derives in the token), the encryptor in
 *   mode 2 (the key enclosed). V2DIR holds platform.pem (the platform's
 *   signing and key-agreement certificates) and veh-<i>.crt/.key,
 *   enc-<i>.crt/.key; the line's name is "deliveries_v2".
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "fillload.h"
#include "httpc.h"
#include "qkms_device.h"
#include "qkms_device2.h"

typedef struct {
    int port, id;
    double seconds;
    qkd_device *veh, *enc;
    double *lat;
    size_t nlat, cap;
    long sessions, errors, mismatches;
    int with_end;
    int mode; /* 0 sessions or deliveries, 1 epochs, 2 streams */
    SSL_CTX *ctx_veh, *ctx_enc; /* mutual TLS: each device's certificate */
    const qkd2_platform *plat;  /* protocol v2 */
    qkd2_identity *veh2, *enc2;
} worker;

/* One keep-alive connection: a socket, or a TLS session. */
typedef struct {
    int fd;
    SSL *ssl;
    SSL_CTX *ctx; /* NULL: plain */
} conn;

static void conn_close(conn *c)
{
    if (c->ssl)
        httpc_tls_close(c->ssl);
    else if (c->fd >= 0)
        close(c->fd);
    c->ssl = NULL;
    c->fd = -1;
}

static void record(worker *w, double ms)
{
    if (w->nlat == w->cap) {
        w->cap = w->cap ? w->cap * 2 : 8192;
        w->lat = realloc(w->lat, w->cap * sizeof(double));
    }
    if (w->lat)
        w->lat[w->nlat++] = ms;
}

/* One request; 0 on HTTP 200 (parsed into key when key != NULL). */
static int call(worker *w, conn *c, qkd_request *rq, const qkd_device *d, qkd_session_key *key,
                char *buf, size_t cap)
{
    char req[4096], err[128];
    const char *body;
    size_t blen;
    int n = snprintf(req, sizeof(req),
                     "POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     "Content-Length: %zu\r\n\r\n%s",
                     rq->path, rq->body_len, rq->body);
    double t0 = httpc_now();
    int st;
    if (c->ctx) {
        if (!c->ssl && !(c->ssl = httpc_tls_dial(w->port, c->ctx)))
            return -1;
        st = httpc_tls_roundtrip(c->ssl, req, (size_t)n, buf, cap, &body, &blen);
    } else {
        if (c->fd < 0 && (c->fd = httpc_dial(w->port)) < 0)
            return -1;
        st = httpc_roundtrip(c->fd, req, (size_t)n, buf, cap, &body, &blen);
    }
    if (st < 0) {
        conn_close(c);
        return -1;
    }
    record(w, (httpc_now() - t0) * 1000.0);
    if (st != 200)
        return -1;
    if (key && qkd_response_key(key, d, rq, body, blen, err, sizeof(err)) != QKD_OK)
        return -1;
    return 0;
}

/* A stream request and its answer (call's counterpart). */
static int call_stream(worker *w, conn *c, qkd_request *rq, const qkd_device *d,
                       qkd_stream_key *key, char *buf, size_t cap)
{
    char req[4096], err[128];
    const char *body;
    size_t blen;
    int n = snprintf(req, sizeof(req),
                     "POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     "Content-Length: %zu\r\n\r\n%s",
                     rq->path, rq->body_len, rq->body);
    double t0 = httpc_now();
    int st;
    if (c->fd < 0 && (c->fd = httpc_dial(w->port)) < 0)
        return -1;
    st = httpc_roundtrip(c->fd, req, (size_t)n, buf, cap, &body, &blen);
    if (st < 0) {
        conn_close(c);
        return -1;
    }
    record(w, (httpc_now() - t0) * 1000.0);
    if (st != 200 || qkd_response_stream(key, d, rq, body, blen, err, sizeof(err)) != QKD_OK)
        return -1;
    return 0;
}

/* epochs: one session, then its epochs 1, 2, ... from both parties. */
static void *run_epochs(worker *w)
{
    double end = httpc_now() + w->seconds;
    char *buf = malloc(65536), sid[64], err[128];
    conn c = {-1, NULL, NULL};
    int epoch = 0;
    qkd_request a, b;
    qkd_session_key ka, kb;
    int64_t now = (int64_t)time(NULL);

    memset(&ka, 0, sizeof(ka));
    memset(&kb, 0, sizeof(kb));
    snprintf(sid, sizeof(sid), "benche-%d-%d-%ld", (int)getpid(), w->id, (long)now);
    if (!buf || qkd_request_key(&a, w->veh, 0, sid, w->enc->device_id, false, now, NULL, err,
                                sizeof(err)) ||
        call(w, &c, &a, w->veh, &ka, buf, 65536)) {
        w->errors++;
        goto out;
    }
    qkd_session_key_clear(&ka);
    while (httpc_now() < end && epoch < QKP_MAX_EPOCH) {
        now = (int64_t)time(NULL);
        epoch++;
        if (qkd_request_key_ext(&a, w->veh, 0, sid, w->enc->device_id, epoch, NULL, now, NULL,
                                err, sizeof(err)) ||
            qkd_request_key_ext(&b, w->enc, 0, sid, w->veh->device_id, epoch, NULL, now, NULL,
                                err, sizeof(err))) {
            w->errors++;
            break;
        }
        if (call(w, &c, &a, w->veh, &ka, buf, 65536) || call(w, &c, &b, w->enc, &kb, buf, 65536))
            w->errors++;
        else if (strcmp(ka.key_id, kb.key_id) != 0 || ka.key_len != kb.key_len ||
                 CRYPTO_memcmp(ka.key, kb.key, ka.key_len) != 0)
            w->mismatches++;
        else
            w->sessions++;
        qkd_session_key_clear(&ka);
        qkd_session_key_clear(&kb);
        qkd_request_clear(&a);
        qkd_request_clear(&b);
    }
out:
    conn_close(&c);
    free(buf);
    return NULL;
}

/* streams: the pair's stream, keys 0, 1, 2, ... from both parties. */
static void *run_streams(worker *w)
{
    double end = httpc_now() + w->seconds;
    char *buf = malloc(65536), err[128], stream[QKP_MAX_ID + 1] = "";
    conn c = {-1, NULL, NULL};
    long seq = 0;

    while (buf && httpc_now() < end) {
        qkd_request a, b;
        qkd_stream_key ka, kb;
        int64_t now = (int64_t)time(NULL);
        memset(&ka, 0, sizeof(ka));
        memset(&kb, 0, sizeof(kb));
        if (qkd_request_stream(&a, w->veh, 0, stream[0] ? stream : NULL, w->enc->device_id, seq,
                               now, NULL, err, sizeof(err)) ||
            call_stream(w, &c, &a, w->veh, &ka, buf, 65536)) {
            w->errors++;
            qkd_request_clear(&a);
            break;
        }
        snprintf(stream, sizeof(stream), "%s", ka.stream_id);
        if (qkd_request_stream(&b, w->enc, 0, stream, w->veh->device_id, seq, now, NULL, err,
                               sizeof(err)) ||
            call_stream(w, &c, &b, w->enc, &kb, buf, 65536)) {
            /* Key seq stays live with one party: stop rather than fill the
             * window with such keys. */
            w->errors++;
            qkd_stream_key_clear(&ka);
            qkd_request_clear(&a);
            qkd_request_clear(&b);
            break;
        } else if (strcmp(ka.key_id, kb.key_id) != 0 || ka.key_len != kb.key_len ||
                 CRYPTO_memcmp(ka.key, kb.key, ka.key_len) != 0)
            w->mismatches++;
        else
            w->sessions++;
        seq++;
        qkd_stream_key_clear(&ka);
        qkd_stream_key_clear(&kb);
        qkd_request_clear(&a);
        qkd_request_clear(&b);
    }
    conn_close(&c);
    free(buf);
    return NULL;
}

/* A v2 request and its answer (call's counterpart). */
static int call2(worker *w, conn *c, qkd2_request *rq, const qkd2_identity *id,
                 qkd_session_key *key, char *buf, size_t cap)
{
    char *req = malloc(QKD2_MAX_BODY + 256), err[128];
    const char *body;
    size_t blen;
    int n, st;
    double t0;
    if (!req)
        return -1;
    n = snprintf(req, QKD2_MAX_BODY + 256,
                 "POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 "Content-Length: %zu\r\n\r\n%s",
                 rq->path, rq->body_len, rq->body);
    t0 = httpc_now();
    if (c->fd < 0 && (c->fd = httpc_dial(w->port)) < 0) {
        free(req);
        return -1;
    }
    st = httpc_roundtrip(c->fd, req, (size_t)n, buf, cap, &body, &blen);
    free(req);
    if (st < 0) {
        conn_close(c);
        return -1;
    }
    record(w, (httpc_now() - t0) * 1000.0);
    if (st != 200 ||
        qkd2_response_key(key, NULL, rq, id, w->plat, body, blen, err, sizeof(err)) != QKD_OK)
        return -1;
    return 0;
}

static void *run_v2(worker *w)
{
    double end = httpc_now() + w->seconds;
    char *buf = malloc(65536), sid[64], err[128];
    conn cv = {-1, NULL, NULL};
    long seq = 0;
    qkd2_request *a = calloc(1, sizeof(*a)), *b = calloc(1, sizeof(*b));
    while (buf && a && b && httpc_now() < end) {
        qkd_session_key ka, kb;
        int64_t now = (int64_t)time(NULL);
        memset(&ka, 0, sizeof(ka));
        memset(&kb, 0, sizeof(kb));
        snprintf(sid, sizeof(sid), "bench2-%d-%d-%ld-%ld", (int)getpid(), w->id, (long)now, seq++);
        if (qkd2_request_key(a, w->veh2, w->plat, sid, w->enc->device_id, 'a', false, now, NULL,
                             err, sizeof(err)) ||
            qkd2_request_key(b, w->enc2, w->plat, sid, w->veh->device_id, 'a', false, now, NULL,
                             err, sizeof(err))) {
            fprintf(stderr, "session_bench: %s\n", err);
            w->errors++;
            break;
        }
        if (call2(w, &cv, a, w->veh2, &ka, buf, 65536) || call2(w, &cv, b, w->enc2, &kb, buf, 65536))
            w->errors++;
        else if (strcmp(ka.key_id, kb.key_id) != 0 || ka.key_len != kb.key_len ||
                 CRYPTO_memcmp(ka.key, kb.key, ka.key_len) != 0)
            w->mismatches++;
        else
            w->sessions++;
        qkd_session_key_clear(&ka);
        qkd_session_key_clear(&kb);
        qkd2_request_clear(a);
        qkd2_request_clear(b);
    }
    conn_close(&cv);
    free(a);
    free(b);
    free(buf);
    return NULL;
}

static void *run(void *arg)
{
    worker *w = arg;
    if (w->plat)
        return run_v2(w);
    if (w->mode == 1)
        return run_epochs(w);
    if (w->mode == 2)
        return run_streams(w);
    double end = httpc_now() + w->seconds;
    char *buf = malloc(65536), sid[64];
    /* Plain: both devices share one connection; mutual TLS: one each. */
    conn cv = {-1, NULL, w->ctx_veh}, ce = {-1, NULL, w->ctx_enc};
    conn *ve = &cv, *en = w->ctx_enc ? &ce : &cv;
    long seq = 0;
    while (buf && httpc_now() < end) {
        qkd_request a, b, e;
        qkd_session_key ka, kb;
        char err[128];
        int64_t now = (int64_t)time(NULL);
        memset(&ka, 0, sizeof(ka));
        memset(&kb, 0, sizeof(kb));
        snprintf(sid, sizeof(sid), "bench-%d-%d-%ld-%ld", (int)getpid(), w->id, (long)now, seq++);
        if (qkd_request_key(&a, w->veh, 0, sid, w->enc->device_id, false, now, NULL, err, sizeof(err)) ||
            qkd_request_key(&b, w->enc, 0, sid, w->veh->device_id, false, now, NULL, err, sizeof(err)) ||
            qkd_request_end(&e, w->veh, 0, sid, now, NULL, err, sizeof(err))) {
            w->errors++;
            break;
        }
        if (call(w, ve, &a, w->veh, &ka, buf, 65536) || call(w, en, &b, w->enc, &kb, buf, 65536) ||
            (w->with_end && call(w, ve, &e, w->veh, NULL, buf, 65536)))
            w->errors++;
        else if (strcmp(ka.key_id, kb.key_id) != 0 || ka.key_len != kb.key_len ||
                 CRYPTO_memcmp(ka.key, kb.key, ka.key_len) != 0)
            w->mismatches++;
        else
            w->sessions++;
        qkd_session_key_clear(&ka);
        qkd_session_key_clear(&kb);
        qkd_request_clear(&a);
        qkd_request_clear(&b);
        qkd_request_clear(&e);
    }
    conn_close(&cv);
    conn_close(&ce);
    free(buf);
    return NULL;
}

static char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    char *t = NULL;
    long n;
    if (!f)
        return NULL;
    if (fseek(f, 0, SEEK_END) == 0 && (n = ftell(f)) >= 0 && fseek(f, 0, SEEK_SET) == 0 &&
        (t = calloc(1, (size_t)n + 1)) && fread(t, 1, (size_t)n, f) == (size_t)n)
        *len = (size_t)n;
    else {
        free(t);
        t = NULL;
    }
    fclose(f);
    return t;
}

/* kind-i's v2 identity (mode 2) from V2DIR's certificate and key. */
static qkd2_identity *identity2(const char *dir, const char *kind, int i)
{
    char crt[512], key[512], err[128];
    size_t cl = 0, kl = 0;
    char *c, *k;
    qkd2_identity *id = NULL;
    snprintf(crt, sizeof(crt), "%s/%s-%d.crt", dir, kind, i);
    snprintf(key, sizeof(key), "%s/%s-%d.key", dir, kind, i);
    c = slurp(crt, &cl);
    k = slurp(key, &kl);
    if (!c || !k || qkd2_identity_cert(&id, NULL, 2, c, cl, k, kl, err, sizeof(err)) != QKD_OK)
        fprintf(stderr, "session_bench: %s: %s\n", crt, c && k ? err : "cannot read");
    free(c);
    if (k) {
        OPENSSL_cleanse(k, kl);
        free(k);
    }
    return id;
}

/* A client TLS context: trust ca.pem, present kind-i's certificate. */
static SSL_CTX *tls_ctx(const char *dir, const char *kind, int i)
{
    char ca[512], crt[512], key[512];
    SSL_CTX *c = SSL_CTX_new(TLS_client_method());
    snprintf(ca, sizeof(ca), "%s/ca.pem", dir);
    snprintf(crt, sizeof(crt), "%s/%s-%d.crt", dir, kind, i);
    snprintf(key, sizeof(key), "%s/%s-%d.key", dir, kind, i);
    if (!c || SSL_CTX_load_verify_locations(c, ca, NULL) != 1 ||
        SSL_CTX_use_certificate_chain_file(c, crt) != 1 ||
        SSL_CTX_use_PrivateKey_file(c, key, SSL_FILETYPE_PEM) != 1) {
        fprintf(stderr, "session_bench: TLS files %s, %s: cannot load\n", crt, key);
        SSL_CTX_free(c);
        return NULL;
    }
    SSL_CTX_set_verify(c, SSL_VERIFY_PEER, NULL);
    return c;
}

static int cmpd(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
    int port, conc, npairs;
    double secs, t0, el;
    worker *w;
    pthread_t *th;
    size_t total = 0;
    long sessions = 0, errors = 0, mism = 0;
    double *all;

    int with_end, v2 = argc == 8 && !strcmp(argv[6], "deliveries_v2");
    const char *tlsdir = argc == 8 && !v2 ? argv[7] : NULL;
    qkd2_platform *plat = NULL;
    if (argc < 6 || argc > 8)
        return 2;
    int mode = argc == 7 && !strcmp(argv[6], "epochs") ? 1
               : argc == 7 && !strcmp(argv[6], "streams") ? 2
                                                           : 0;
    with_end = argc == 6 || (strcmp(argv[6], "deliveries") != 0 && !v2 && !mode);
    if (v2) {
        char path[512], err[128], *pem;
        size_t pl = 0;
        snprintf(path, sizeof(path), "%s/platform.pem", argv[7]);
        if (!(pem = slurp(path, &pl)) ||
            qkd2_platform_load(&plat, pem, pl, err, sizeof(err)) != QKD_OK) {
            fprintf(stderr, "session_bench: %s: %s\n", path, pem ? err : "cannot read");
            return 1;
        }
        free(pem);
    }
    port = atoi(argv[1]);
    conc = atoi(argv[2]);
    secs = atof(argv[3]);
    npairs = atoi(argv[5]);
    if (conc < 1 || conc > 512 || secs <= 0 || secs > 600 || npairs < 1 ||
        (mode == 2 && conc > npairs))
        return 2;
    CRYPTO_secure_malloc_init(1 << 22, 16);
    w = calloc((size_t)conc, sizeof(*w));
    th = calloc((size_t)conc, sizeof(*th));
    for (int i = 0; i < conc; i++) {
        w[i].port = port;
        w[i].id = i;
        w[i].seconds = secs;
        w[i].with_end = with_end;
        w[i].mode = mode;
        w[i].veh = bench_fill_load(argv[4], "veh", i % npairs);
        w[i].enc = bench_fill_load(argv[4], "enc", i % npairs);
        if (!w[i].veh || !w[i].enc) {
            fprintf(stderr, "session_bench: cannot load pair %d\n", i % npairs);
            return 1;
        }
        if (tlsdir && (!(w[i].ctx_veh = tls_ctx(tlsdir, "veh", i % npairs)) ||
                       !(w[i].ctx_enc = tls_ctx(tlsdir, "enc", i % npairs))))
            return 1;
        if (v2) {
            w[i].plat = plat;
            if (!(w[i].veh2 = identity2(argv[7], "veh", i % npairs)) ||
                !(w[i].enc2 = identity2(argv[7], "enc", i % npairs)))
                return 1;
        }
    }
    t0 = httpc_now();
    for (int i = 0; i < conc; i++)
        pthread_create(&th[i], NULL, run, &w[i]);
    for (int i = 0; i < conc; i++)
        pthread_join(th[i], NULL);
    el = httpc_now() - t0;
    for (int i = 0; i < conc; i++)
        total += w[i].nlat;
    all = malloc((total ? total : 1) * sizeof(double));
    total = 0;
    for (int i = 0; i < conc; i++) {
        memcpy(all + total, w[i].lat, w[i].nlat * sizeof(double));
        total += w[i].nlat;
        sessions += w[i].sessions;
        errors += w[i].errors;
        mism += w[i].mismatches;
        free(w[i].lat);
        qkd_device_free(w[i].veh);
        qkd_device_free(w[i].enc);
        SSL_CTX_free(w[i].ctx_veh);
        SSL_CTX_free(w[i].ctx_enc);
        qkd2_identity_free(w[i].veh2);
        qkd2_identity_free(w[i].enc2);
    }
    qkd2_platform_free(plat);
    qsort(all, total, sizeof(double), cmpd);
    printf("name=%s%s conc=%d sessions=%ld deliveries=%ld requests=%zu errors=%ld "
           "key_mismatches=%ld sessions_per_s=%.0f deliveries_per_s=%.0f requests_per_s=%.0f "
           "p50_ms=%.3f p99_ms=%.3f\n",
           mode == 1 ? "epochs" : mode == 2 ? "streams" : with_end ? "sessions" : "deliveries",
           tlsdir ? "_mtls" : v2 ? "_v2" : "", conc, sessions, 2 * sessions, total, errors, mism,
           (double)sessions / el,
           2.0 * (double)sessions / el, (double)total / el, total ? all[total / 2] : 0,
           total ? all[(size_t)((double)total * 0.99)] : 0);
    free(all);
    free(w);
    free(th);
    return mism ? 1 : 0;
}
