/* utf8 — validation and replacement of invalid UTF-8 (see utf8.h). */
#include "utf8.h"

#include <string.h>

size_t utf8_seq_len(const unsigned char *s, size_t avail)
{
    unsigned char c = s[0];
    size_t n;
    unsigned char lo = 0x80, hi = 0xBF; /* range of the second byte */

    if (avail == 0 || c == 0)
        return 0;
    if (c < 0x80)
        return 1;
    if (c >= 0xC2 && c <= 0xDF)
        n = 2;
    else if (c >= 0xE0 && c <= 0xEF) {
        n = 3;
        if (c == 0xE0)
            lo = 0xA0; /* overlong */
        else if (c == 0xED)
            hi = 0x9F; /* surrogates */
    } else if (c >= 0xF0 && c <= 0xF4) {
        n = 4;
        if (c == 0xF0)
            lo = 0x90; /* overlong */
        else if (c == 0xF4)
            hi = 0x8F; /* above U+10FFFF */
    } else
        return 0;
    if (avail < n || s[1] < lo || s[1] > hi)
        return 0;
    for (size_t i = 2; i < n; i++)
        if ((s[i] & 0xC0) != 0x80)
            return 0;
    return n;
}

bool utf8_valid(const char *s, size_t len)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;
    while (i < len) {
        size_t n = utf8_seq_len(p + i, len - i);
        if (n == 0)
            return false;
        i += n;
    }
    return true;
}

size_t utf8_sanitize(const char *in, size_t len, char *out, size_t cap, bool *replaced)
{
    static const char fffd[] = "\xEF\xBF\xBD";
    const unsigned char *p = (const unsigned char *)in;
    size_t i = 0, o = 0;

    if (replaced)
        *replaced = false;
    if (cap == 0)
        return 0;
    while (i < len) {
        size_t n = utf8_seq_len(p + i, len - i);
        const char *src = n ? in + i : fffd;
        size_t sl = n ? n : 3;
        if (o + sl >= cap)
            break;
        memcpy(out + o, src, sl);
        o += sl;
        i += n ? n : 1;
        if (!n && replaced)
            *replaced = true;
    }
    out[o] = 0;
    return o;
}
