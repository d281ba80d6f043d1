/*
 * audit_canon — the audit chain's canonical forms (audit_canon.h): the
 * bytes a row's hash covers, the chain step, the checkpoint message, and
 * the pure helpers the sealer and the verifier share (gap coverage, time
 * rendering). It owns no state; every byte layout here is frozen by the
 * chains already sealed (docs/operations.md, "Audit log").
 */
#include "service/audit_canon.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

#include <openssl/evp.h>

static void put_be64(uint8_t *p, uint64_t v)
{
    for (int i = 7; i >= 0; i--) {
        p[i] = (uint8_t)v;
        v >>= 8;
    }
}

static void put_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

static int put64(qbuf *b, uint64_t v)
{
    uint8_t x[8];
    put_be64(x, v);
    return qbuf_put(b, x, sizeof(x));
}

/* A string as its 32-bit big-endian length, then its bytes. */
static int put_lstr(qbuf *b, const char *s)
{
    size_t n = strlen(s);
    uint8_t len[4];
    int r;
    if (n > UINT32_MAX)
        return QBUF_E_LIMIT; /* the length would not fit its prefix */
    put_be32(len, (uint32_t)n);
    if ((r = qbuf_put(b, len, sizeof(len))) != QBUF_OK)
        return r;
    return qbuf_put(b, s, n);
}

size_t audit_canon_len(const audit_row *r)
{
    size_t n = sizeof(AUDIT_CANON_MAGIC) - 1 + 8 + 8 + 1;
    n += 4 + strlen(r->actor);
    n += 4 + strlen(r->event);
    if (r->device_id)
        n += 4 + strlen(r->device_id);
    n += 4 + strlen(r->detail);
    return n;
}

int audit_canon(const audit_row *r, qbuf *b)
{
    size_t start = qbuf_len(b);
    int rc;
    /* magic, id, at_us (two's complement), actor, event, a flag byte for
     * device_id NULL (0) or present (1, then the string), detail. */
    if ((rc = qbuf_put(b, AUDIT_CANON_MAGIC, sizeof(AUDIT_CANON_MAGIC) - 1)) != QBUF_OK ||
        (rc = put64(b, (uint64_t)r->id)) != QBUF_OK ||
        (rc = put64(b, (uint64_t)r->at_us)) != QBUF_OK ||
        (rc = put_lstr(b, r->actor)) != QBUF_OK || (rc = put_lstr(b, r->event)) != QBUF_OK ||
        (rc = qbuf_put_u8(b, r->device_id ? 1 : 0)) != QBUF_OK ||
        (r->device_id && (rc = put_lstr(b, r->device_id)) != QBUF_OK) ||
        (rc = put_lstr(b, r->detail)) != QBUF_OK)
        goto out;
    rc = QBUF_OK;
out:
    if (rc != QBUF_OK)
        qbuf_truncate(b, start); /* all or nothing */
    return rc;
}

int audit_row_hash(const uint8_t prev[AUDIT_HASH_LEN], const audit_row *r,
                   uint8_t out[AUDIT_HASH_LEN])
{
    size_t need = AUDIT_HASH_LEN + audit_canon_len(r);
    qbuf *b = qbuf_new(need, 0);
    unsigned int n = 0;
    int rc = -1;
    if (!b || qbuf_put(b, prev, AUDIT_HASH_LEN) != QBUF_OK || audit_canon(r, b) != QBUF_OK)
        goto out;
    if (EVP_Digest(qbuf_ptr(b), qbuf_len(b), out, &n, EVP_sha256(), NULL) != 1 ||
        n != AUDIT_HASH_LEN)
        goto out;
    rc = 0;
out:
    qbuf_free(b);
    return rc;
}

void audit_checkpoint_msg(const audit_checkpoint *cp, uint8_t out[AUDIT_CP_MSG_LEN])
{
    /* Fixed layout, every offset known at compile time. */
    uint8_t *p = out;
    memcpy(p, AUDIT_CP_MAGIC, sizeof(AUDIT_CP_MAGIC) - 1);
    p += sizeof(AUDIT_CP_MAGIC) - 1;
    put_be64(p, (uint64_t)cp->id);
    put_be64(p + 8, (uint64_t)cp->last_audit_id);
    put_be64(p + 16, (uint64_t)cp->chain_length);
    memcpy(p + 24, cp->head_hash, AUDIT_HASH_LEN);
    put_be32(p + 24 + AUDIT_HASH_LEN, cp->master_version);
    put_be64(p + 28 + AUDIT_HASH_LEN, (uint64_t)cp->at_us);
    _Static_assert(AUDIT_CP_MSG_LEN == sizeof(AUDIT_CP_MAGIC) - 1 + 36 + AUDIT_HASH_LEN,
                   "checkpoint message layout");
}

int64_t audit_first_uncovered(const audit_range *ranges, size_t n, int64_t lo, int64_t hi)
{
    int64_t x = lo;
    bool moved = true;
    /* Advance x past every range covering it; n is small. */
    while (x <= hi && moved) {
        moved = false;
        for (size_t i = 0; i < n; i++)
            if (ranges[i].lo <= x && x <= ranges[i].hi) {
                x = ranges[i].hi + 1;
                moved = true;
            }
    }
    return x <= hi ? x : 0;
}

void audit_format_time(int64_t at_us, char out[28])
{
    int64_t s = at_us / 1000000, us = at_us % 1000000;
    struct tm tm;
    time_t t;
    char tmp[96];
    if (us < 0) {
        us += 1000000;
        s--;
    }
    t = (time_t)s;
    if (!gmtime_r(&t, &tm) || tm.tm_year + 1900 > 9999 || tm.tm_year + 1900 < 0) {
        snprintf(out, 28, "invalid");
        return;
    }
    snprintf(tmp, sizeof(tmp), "%04d-%02d-%02dT%02d:%02d:%02d.%06dZ", tm.tm_year + 1900,
             tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (int)us);
    snprintf(out, 28, "%.27s", tmp);
}
