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
 *   FILLDIR holds veh-<i>.json and enc-<i>.json (i = 0..NPAIRS-1).
 *   "deliveries" leaves out the end: two key deliveries per session, the
 *   sessions then end by idle timeout.
 *   TLSDIR: mutual TLS. It holds ca.pem (the server's CA) and each
 *   device's client certificate and key, veh-<i>.crt/.key and
 *   enc-<i>.crt/.key; a worker then keeps one keep-alive connection per
 *   device (a connection carries one client certificate), and the line's
 *   name gets "_mtls".
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "httpc.h"
#include "qkms_device.h"

typedef struct {
    int port, id;
    double seconds;
    qkd_device *veh, *enc;
    double *lat;
    size_t nlat, cap;
    long sessions, errors, mismatches;
    int with_end;
    SSL_CTX *ctx_veh, *ctx_enc; /* mutual TLS: each device's certificate */
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

static void *run(void *arg)
{
    worker *w = arg;
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

static qkd_device *load(const char *dir, const char *kind, int i)
{
    char path[512], err[128], *text;
    FILE *f;
    long n;
    qkd_device *d = NULL;
    snprintf(path, sizeof(path), "%s/%s-%d.json", dir, kind, i);
    f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    n = ftell(f);
    fseek(f, 0, SEEK_SET);
    text = calloc(1, (size_t)n + 1);
    if (text && fread(text, 1, (size_t)n, f) == (size_t)n &&
        qkd_device_load(&d, text, (size_t)n, err, sizeof(err)) != QKD_OK)
        fprintf(stderr, "%s: %s\n", path, err);
    fclose(f);
    if (text) {
        OPENSSL_cleanse(text, (size_t)n);
        free(text);
    }
    return d;
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

    int with_end;
    const char *tlsdir = argc == 8 ? argv[7] : NULL;
    if (argc < 6 || argc > 8)
        return 2;
    with_end = argc == 6 || strcmp(argv[6], "deliveries") != 0;
    port = atoi(argv[1]);
    conc = atoi(argv[2]);
    secs = atof(argv[3]);
    npairs = atoi(argv[5]);
    if (conc < 1 || conc > 512 || secs <= 0 || secs > 600 || npairs < 1)
        return 2;
    CRYPTO_secure_malloc_init(1 << 22, 16);
    w = calloc((size_t)conc, sizeof(*w));
    th = calloc((size_t)conc, sizeof(*th));
    for (int i = 0; i < conc; i++) {
        w[i].port = port;
        w[i].id = i;
        w[i].seconds = secs;
        w[i].with_end = with_end;
        w[i].veh = load(argv[4], "veh", i % npairs);
        w[i].enc = load(argv[4], "enc", i % npairs);
        if (!w[i].veh || !w[i].enc) {
            fprintf(stderr, "session_bench: cannot load pair %d\n", i % npairs);
            return 1;
        }
        if (tlsdir && (!(w[i].ctx_veh = tls_ctx(tlsdir, "veh", i % npairs)) ||
                       !(w[i].ctx_enc = tls_ctx(tlsdir, "enc", i % npairs))))
            return 1;
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
    }
    qsort(all, total, sizeof(double), cmpd);
    printf("name=%s%s conc=%d sessions=%ld deliveries=%ld requests=%zu errors=%ld "
           "key_mismatches=%ld sessions_per_s=%.0f deliveries_per_s=%.0f requests_per_s=%.0f "
           "p50_ms=%.3f p99_ms=%.3f\n",
           with_end ? "sessions" : "deliveries", tlsdir ? "_mtls" : "", conc, sessions, 2 * sessions, total, errors, mism, (double)sessions / el,
           2.0 * (double)sessions / el, (double)total / el, total ? all[total / 2] : 0,
           total ? all[(size_t)((double)total * 0.99)] : 0);
    free(all);
    free(w);
    free(th);
    return mism ? 1 : 0;
}
