/* fillload — see fillload.h. */
#include "fillload.h"

#include <stdio.h>
#include <stdlib.h>

#include <openssl/crypto.h>

qkd_device *bench_fill_load(const char *dir, const char *kind, int i)
{
    char path[512], err[128], *text = NULL;
    FILE *f;
    long n = 0;
    qkd_device *d = NULL;
    snprintf(path, sizeof(path), "%s/%s-%d.json", dir, kind, i);
    if (!(f = fopen(path, "rb")))
        return NULL;
    if (fseek(f, 0, SEEK_END) == 0 && (n = ftell(f)) > 0 && fseek(f, 0, SEEK_SET) == 0 &&
        (text = calloc(1, (size_t)n + 1)) && fread(text, 1, (size_t)n, f) == (size_t)n &&
        qkd_device_load(&d, text, (size_t)n, err, sizeof(err)) != QKD_OK)
        fprintf(stderr, "%s: %s\n", path, err);
    fclose(f);
    if (text) {
        OPENSSL_cleanse(text, (size_t)n);
        free(text);
    }
    return d;
}
