/*
 * etsi_bench — ETSI GS QKD 014 key pairs against kmsd over mutual TLS
 * (docs/etsi014.md), closed loop, bounded in time. Each worker takes a
 * (master, slave) pair of SAEs, each with its own keep-alive TLS connection
 * and client certificate, and repeats: the master's Get key (POST enc_keys,
 * one key), then the slave's Get key with key IDs (POST dec_keys) of that
 * key; the two keys must be equal. Prints:
 *   name=etsi014 conc=C pairs=N errors=E key_mismatches=M pairs_per_s=...
 *        requests_per_s=... p50_ms=... p99_ms=... (per request)
 *
 * usage: etsi_bench PORT CONC SECONDS TLSDIR NPAIRS
 *   TLSDIR holds ca.pem, veh-<i>.crt/.key (the masters, SAE IDs SAE-V-<i>)
 *   and enc-<i>.crt/.key (the slaves, SAE-E-<i>).
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>
#include <openssl/crypto.h>

#include "httpc.h"

typedef struct {
    int port, pair;
    double seconds;
    SSL_CTX *master, *slave;
    double *lat;
    size_t nlat, cap;
    long pairs, errors, mismatches;
} worker;

static void record(worker *w, double ms)
{
    if (w->nlat == w->cap) {
        w->cap = w->cap ? w->cap * 2 : 8192;
        w->lat = realloc(w->lat, w->cap * sizeof(double));
    }
    if (w->lat)
        w->lat[w->nlat++] = ms;
}

/* POST path body over *s (dialled on demand); the parsed 200 answer or NULL. */
static json_t *post(worker *w, SSL **s, SSL_CTX *ctx, const char *path, const char *body,
                    char *buf, size_t cap)
{
    char req[2048];
    const char *rb;
    size_t rl;
    int n = snprintf(req, sizeof(req),
                     "POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     "Content-Length: %zu\r\n\r\n%s",
                     path, strlen(body), body);
    double t0 = httpc_now();
    int st;
    if (!*s && !(*s = httpc_tls_dial(w->port, ctx)))
        return NULL;
    st = httpc_tls_roundtrip(*s, req, (size_t)n, buf, cap, &rb, &rl);
    if (st < 0) {
        httpc_tls_close(*s);
        *s = NULL;
        return NULL;
    }
    record(w, (httpc_now() - t0) * 1000.0);
    return st == 200 ? json_loadb(rb, rl, 0, NULL) : NULL;
}

static void *run(void *arg)
{
    worker *w = arg;
    double end = httpc_now() + w->seconds;
    char *buf = malloc(65536), enc[128], dec[128], body[256];
    SSL *ms = NULL, *ss = NULL;
    snprintf(enc, sizeof(enc), "/api/v1/keys/SAE-E-%d/enc_keys", w->pair);
    snprintf(dec, sizeof(dec), "/api/v1/keys/SAE-V-%d/dec_keys", w->pair);
    while (buf && httpc_now() < end) {
        json_t *a = post(w, &ms, w->master, enc, "{\"number\":1}", buf, 65536), *b = NULL;
        json_t *ka = json_array_get(json_object_get(a, "keys"), 0);
        const char *id = json_string_value(json_object_get(ka, "key_ID"));
        if (id) {
            snprintf(body, sizeof(body), "{\"key_IDs\":[{\"key_ID\":\"%s\"}]}", id);
            b = post(w, &ss, w->slave, dec, body, buf, 65536);
        }
        json_t *kb = json_array_get(json_object_get(b, "keys"), 0);
        const char *x = json_string_value(json_object_get(ka, "key")),
                   *y = json_string_value(json_object_get(kb, "key"));
        if (!x || !y)
            w->errors++;
        else if (strcmp(x, y))
            w->mismatches++;
        else
            w->pairs++;
        json_decref(a);
        json_decref(b);
    }
    if (ms)
        httpc_tls_close(ms);
    if (ss)
        httpc_tls_close(ss);
    free(buf);
    return NULL;
}

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
        fprintf(stderr, "etsi_bench: TLS files %s, %s: cannot load\n", crt, key);
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
    long pairs = 0, errors = 0, mism = 0;
    double *all;

    if (argc != 6)
        return 2;
    port = atoi(argv[1]);
    conc = atoi(argv[2]);
    secs = atof(argv[3]);
    npairs = atoi(argv[5]);
    if (conc < 1 || conc > 512 || secs <= 0 || secs > 600 || npairs < 1)
        return 2;
    w = calloc((size_t)conc, sizeof(*w));
    th = calloc((size_t)conc, sizeof(*th));
    for (int i = 0; i < conc; i++) {
        w[i].port = port;
        w[i].pair = i % npairs;
        w[i].seconds = secs;
        if (!(w[i].master = tls_ctx(argv[4], "veh", w[i].pair)) ||
            !(w[i].slave = tls_ctx(argv[4], "enc", w[i].pair)))
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
        pairs += w[i].pairs;
        errors += w[i].errors;
        mism += w[i].mismatches;
        free(w[i].lat);
        SSL_CTX_free(w[i].master);
        SSL_CTX_free(w[i].slave);
    }
    qsort(all, total, sizeof(double), cmpd);
    printf("name=etsi014 conc=%d pairs=%ld requests=%zu errors=%ld key_mismatches=%ld "
           "pairs_per_s=%.0f requests_per_s=%.0f p50_ms=%.3f p99_ms=%.3f\n",
           conc, pairs, total, errors, mism, (double)pairs / el, (double)total / el,
           total ? all[total / 2] : 0, total ? all[(size_t)((double)total * 0.99)] : 0);
    free(all);
    free(w);
    free(th);
    return mism ? 1 : 0;
}
