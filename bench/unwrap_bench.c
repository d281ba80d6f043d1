/*
 * unwrap_bench — how fast the token unwraps device keys (keywrap_unwrap:
 * AES-256-GCM decrypt inside the PKCS#11 token), with T threads sharing the
 * session pool, for S seconds. This decides whether the request path needs
 * a cache of unwrapped device keys (docs/performance.md).
 *
 * usage: unwrap_bench MODULE TOKEN_LABEL PIN_FILE THREADS SECONDS
 * Uses master key qkms-master-1, which kmsd created in that token.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/rand.h>

#include "keywrap.h"

static keywrap *kw;
static double seconds;
static _Atomic long done, failed;
static uint8_t blob[32 + KEYWRAP_OVERHEAD];
static size_t blob_len = sizeof(blob);
static const char ctx[] = "qkms/device-key/v1\nBENCH\n0\nAES-128";

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static void *run(void *arg)
{
    double end = now() + seconds;
    uint8_t key[KEYWRAP_MAX_KEY + 16];
    (void)arg;
    while (now() < end) {
        size_t kl = sizeof(key);
        if (keywrap_unwrap(kw, (const uint8_t *)ctx, strlen(ctx), blob, blob_len, key, &kl) == CKR_OK)
            atomic_fetch_add(&done, 1);
        else
            atomic_fetch_add(&failed, 1);
    }
    return NULL;
}

int main(int argc, char **argv)
{
    char pin[256] = "", err[256];
    FILE *f;
    p11_token *t;
    int threads;
    uint8_t key[16];
    bool found = false;
    pthread_t th[64];
    double t0;

    if (argc != 6) {
        fprintf(stderr, "usage: unwrap_bench MODULE LABEL PIN_FILE THREADS SECONDS\n");
        return 2;
    }
    f = fopen(argv[3], "r");
    if (!f || !fgets(pin, sizeof(pin), f))
        return 1;
    fclose(f);
    pin[strcspn(pin, "\r\n")] = 0;
    threads = atoi(argv[4]);
    seconds = atof(argv[5]);
    if (threads < 1 || threads > 64 || seconds <= 0 || seconds > 120)
        return 2;
    p11_opts o = {argv[1], argv[2], pin, strlen(pin), threads};
    if (p11_open(&t, &o, err, sizeof(err)) != CKR_OK) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    keywrap_new(&kw, t, "qkms-master");
    if (keywrap_load(kw, 1, &found) != CKR_OK || !found) {
        fprintf(stderr, "no qkms-master-1 in the token\n");
        return 1;
    }
    keywrap_set_active(kw, 1);
    RAND_bytes(key, sizeof(key));
    if (keywrap_wrap(kw, (const uint8_t *)ctx, strlen(ctx), key, sizeof(key), blob, &blob_len) != CKR_OK)
        return 1;
    t0 = now();
    for (int i = 0; i < threads; i++)
        pthread_create(&th[i], NULL, run, NULL);
    for (int i = 0; i < threads; i++)
        pthread_join(th[i], NULL);
    printf("name=token_unwrap threads=%d unwraps=%ld failed=%ld unwraps_per_s=%.0f\n", threads,
           (long)done, (long)failed, (double)done / (now() - t0));
    keywrap_free(kw);
    p11_close(t);
    return failed ? 1 : 0;
}
