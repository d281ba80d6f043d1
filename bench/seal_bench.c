/*
 * seal_bench — sealed frames (device/qkms_seal.h, docs/sealing.md) on this
 * machine: qks_seal and qks_open (with a replay window) MB/s and frames/s
 * per frame size, beside bare AES-256-GCM through EVP on the same buffers,
 * so the frame's own cost shows as a ratio. One thread, SECS seconds per
 * line. Usage: seal_bench SECS
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/evp.h>
#include <openssl/rand.h>

#include "qkms_seal.h"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Bare AES-256-GCM of len bytes (a fresh context per call, as qks_seal). */
static int gcm(const uint8_t key[32], uint64_t n, const uint8_t *in, size_t len, uint8_t *out)
{
    uint8_t iv[12] = {0}, tag[16];
    int l = 0, ok;
    EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
    memcpy(iv + 4, &n, 8);
    ok = c && EVP_EncryptInit_ex(c, EVP_aes_256_gcm(), NULL, key, iv) == 1 &&
         EVP_EncryptUpdate(c, out, &l, in, (int)len) == 1 &&
         EVP_EncryptFinal_ex(c, out + l, &l) == 1 &&
         EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_GET_TAG, 16, tag) == 1;
    EVP_CIPHER_CTX_free(c);
    return ok ? 0 : -1;
}

int main(int argc, char **argv)
{
    static const size_t sizes[] = {64, 1024, 65536, 1u << 20};
    double secs = argc > 1 ? atof(argv[1]) : 2.0;
    uint8_t key[32], kid[16];
    const char *sid = "bench-session-0001";

    if (secs <= 0 || RAND_bytes(key, sizeof(key)) != 1 || RAND_bytes(kid, sizeof(kid)) != 1)
        return 1;
    for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
        size_t len = sizes[i], fl = 0, pl = 0;
        uint8_t *pt = malloc(len), *frame = malloc(len + QKS_OVERHEAD), *back = malloc(len + 1);
        double t0, t_seal, t_open, t_gcm;
        uint64_t n_seal = 0, n_open = 0, n_gcm = 0;
        qks_window w = {0};

        if (!pt || !frame || !back || RAND_bytes(pt, (int)len) != 1)
            return 1;
        /* Seal for secs/3, then open what was sealed last for secs/3 with a
         * moving window (each frame a new seq), then bare GCM. */
        t0 = now();
        do {
            if (qks_seal(key, 32, kid, sid, QKS_A2B, n_seal, pt, len, frame, len + QKS_OVERHEAD,
                         &fl) != QKS_OK)
                return 2;
            n_seal++;
        } while ((t_seal = now() - t0) < secs / 3);
        t0 = now();
        do {
            /* A fresh frame for each open would time the seal too: the same
             * frame is opened without a window (the window's check is a
             * few instructions; it is exercised once below). */
            if (qks_open(key, 32, kid, sid, QKS_A2B, NULL, frame, fl, back, len + 1, &pl, NULL) !=
                QKS_OK)
                return 3;
            n_open++;
        } while ((t_open = now() - t0) < secs / 3);
        if (qks_open(key, 32, kid, sid, QKS_A2B, &w, frame, fl, back, len + 1, &pl, NULL) !=
                QKS_OK ||
            pl != len || memcmp(back, pt, len) != 0)
            return 4;
        t0 = now();
        do {
            if (gcm(key, n_gcm, pt, len, frame) != 0)
                return 5;
            n_gcm++;
        } while ((t_gcm = now() - t0) < secs / 3);
        {
            double seal_mb = (double)n_seal * (double)len / t_seal / 1e6,
                   open_mb = (double)n_open * (double)len / t_open / 1e6,
                   gcm_mb = (double)n_gcm * (double)len / t_gcm / 1e6;
            printf("name=seal bytes=%zu seal_frames_per_s=%.0f seal_mb_per_s=%.1f "
                   "open_frames_per_s=%.0f open_mb_per_s=%.1f gcm_mb_per_s=%.1f "
                   "seal_vs_gcm=%.2f\n",
                   len, (double)n_seal / t_seal, seal_mb, (double)n_open / t_open, open_mb,
                   gcm_mb, gcm_mb > 0 ? seal_mb / gcm_mb : 0);
        }
        free(pt);
        free(frame);
        free(back);
    }
    return 0;
}
