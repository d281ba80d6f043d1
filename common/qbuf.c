/*
 * qbuf — the bounded, wiping byte buffer (qbuf.h). It owns its storage and
 * nothing else; the only policy here is the maximum and where the storage
 * comes from.
 */
#include "qbuf.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

#define QBUF_MIN_CAP 64

struct qbuf {
    uint8_t *d;
    size_t len, cap; /* cap counts the NUL byte's slot */
    size_t max;
    unsigned flags;
    int secure_heap; /* d came from OPENSSL_secure_malloc */
};

static uint8_t *alloc_bytes(size_t n, unsigned flags, int *secure)
{
    if ((flags & QBUF_SECURE) && CRYPTO_secure_malloc_initialized()) {
        uint8_t *p = OPENSSL_secure_malloc(n);
        *secure = 1;
        return p;
    }
    *secure = 0;
    return malloc(n);
}

static void free_bytes(uint8_t *p, size_t n, int secure)
{
    if (!p)
        return;
    if (secure) {
        OPENSSL_secure_clear_free(p, n);
    } else {
        OPENSSL_cleanse(p, n);
        free(p);
    }
}

qbuf *qbuf_new(size_t max, unsigned flags)
{
    qbuf *b;
    if (max == 0 || max > ((size_t)-1) / 4)
        return NULL;
    b = calloc(1, sizeof(*b));
    if (!b)
        return NULL;
    b->max = max;
    b->flags = flags;
    return b;
}

void qbuf_free(qbuf *b)
{
    if (!b)
        return;
    free_bytes(b->d, b->cap, b->secure_heap);
    free(b);
}

void qbuf_reset(qbuf *b)
{
    if (b->d) {
        OPENSSL_cleanse(b->d, b->len);
        b->d[0] = 0;
    }
    b->len = 0;
}

size_t qbuf_len(const qbuf *b) { return b->len; }
size_t qbuf_max(const qbuf *b) { return b->max; }
const char *qbuf_str(const qbuf *b) { return b->d ? (const char *)b->d : ""; }
const uint8_t *qbuf_ptr(const qbuf *b) { return b->d ? b->d : (const uint8_t *)""; }

/* Room for n more bytes plus the NUL, within the maximum. */
static int grow(qbuf *b, size_t n)
{
    size_t need, nc;
    uint8_t *nd;
    int secure;
    if (n > b->max - b->len)
        return QBUF_E_LIMIT;
    need = b->len + n + 1;
    if (need <= b->cap)
        return QBUF_OK;
    nc = b->cap ? b->cap : QBUF_MIN_CAP;
    while (nc < need)
        nc *= 2;
    if (nc > b->max + 1)
        nc = b->max + 1;
    nd = alloc_bytes(nc, b->flags, &secure);
    if (!nd)
        return QBUF_E_NOMEM;
    if (b->d)
        memcpy(nd, b->d, b->len + 1);
    else
        nd[0] = 0;
    free_bytes(b->d, b->cap, b->secure_heap);
    b->d = nd;
    b->cap = nc;
    b->secure_heap = secure;
    return QBUF_OK;
}

int qbuf_reserve(qbuf *b, size_t n, uint8_t **dst)
{
    int r = grow(b, n);
    if (r != QBUF_OK)
        return r;
    *dst = b->d + b->len;
    b->len += n;
    b->d[b->len] = 0;
    return QBUF_OK;
}

int qbuf_put(qbuf *b, const void *p, size_t n)
{
    uint8_t *dst;
    int r;
    if (n == 0)
        return grow(b, 0);
    if ((r = qbuf_reserve(b, n, &dst)) != QBUF_OK)
        return r;
    memcpy(dst, p, n);
    return QBUF_OK;
}

int qbuf_put_str(qbuf *b, const char *s) { return qbuf_put(b, s, strlen(s)); }

int qbuf_put_u8(qbuf *b, uint8_t v) { return qbuf_put(b, &v, 1); }

int qbuf_vputf(qbuf *b, const char *fmt, va_list ap)
{
    va_list ap2;
    int n, r;
    uint8_t *dst;
    char small[256];

    va_copy(ap2, ap);
    n = vsnprintf(small, sizeof(small), fmt, ap2);
    va_end(ap2);
    if (n < 0)
        return QBUF_E_NOMEM;
    if ((size_t)n < sizeof(small)) {
        r = qbuf_put(b, small, (size_t)n);
        OPENSSL_cleanse(small, sizeof(small));
        return r;
    }
    OPENSSL_cleanse(small, sizeof(small));
    if ((r = grow(b, (size_t)n)) != QBUF_OK)
        return r;
    /* grow() left room for n bytes and the NUL vsnprintf writes. */
    dst = b->d + b->len;
    vsnprintf((char *)dst, (size_t)n + 1, fmt, ap);
    b->len += (size_t)n;
    return QBUF_OK;
}

int qbuf_putf(qbuf *b, const char *fmt, ...)
{
    va_list ap;
    int r;
    va_start(ap, fmt);
    r = qbuf_vputf(b, fmt, ap);
    va_end(ap);
    return r;
}

void qbuf_truncate(qbuf *b, size_t len)
{
    if (len >= b->len)
        return;
    OPENSSL_cleanse(b->d + len, b->len - len);
    b->len = len;
    b->d[len] = 0;
}

int qbuf_steal(qbuf *b, char **out, size_t *len)
{
    int r;
    if (!b->d && (r = grow(b, 0)) != QBUF_OK)
        return r;
    *out = (char *)b->d;
    *len = b->len;
    b->d = NULL;
    b->len = b->cap = 0;
    b->secure_heap = 0;
    return QBUF_OK;
}

void qbuf_free_stolen(char *p, size_t len)
{
    if (!p)
        return;
    /* Bytes past len + 1 were never written unwiped (grow copies len + 1,
     * truncate and reset wipe): cleansing len + 1 covers every secret. */
    if (CRYPTO_secure_malloc_initialized() && CRYPTO_secure_allocated(p)) {
        OPENSSL_secure_clear_free(p, len + 1);
    } else {
        OPENSSL_cleanse(p, len + 1);
        free(p);
    }
}
