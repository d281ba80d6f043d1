/* wipegrow — grow a buffer without leaving its old bytes in the heap. */
#include "wipegrow.h"

#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

int qkms_grow_wiped(char **buf, size_t *cap, size_t used, size_t need, size_t min_cap)
{
    size_t nc = *cap ? *cap : min_cap;
    char *nb;
    if (*cap >= need)
        return 0;
    while (nc < need) {
        if (nc > ((size_t)-1) / 2)
            return -1;
        nc *= 2;
    }
    nb = malloc(nc);
    if (!nb)
        return -1;
    if (*buf) {
        memcpy(nb, *buf, used);
        OPENSSL_cleanse(*buf, *cap);
        free(*buf);
    }
    *buf = nb;
    *cap = nc;
    return 0;
}
