/* b64 — strict base64 decoding; see b64.h. */
#include "b64.h"

static int sextet(char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+')
        return 62;
    if (c == '/')
        return 63;
    return -1;
}

size_t b64_decoded_max(size_t len)
{
    return len / 4 * 3 + 3;
}

long b64_decode(const char *in, size_t len, uint8_t *out, size_t cap)
{
    /* Padding only at the end of a whole quantum: "xx==" or "xxx=". */
    if (len % 4 == 0 && len >= 4) {
        if (in[len - 1] == '=')
            len--;
        if (in[len - 1] == '=')
            len--;
    }
    size_t tail = len % 4; /* characters in the last, partial quantum */
    if (tail == 1)
        return -1;
    size_t n = len / 4 * 3 + (tail ? tail - 1 : 0);
    if (n > cap || n > (size_t)0x7fffffff)
        return -1;

    uint32_t acc = 0;
    size_t bits = 0, o = 0;
    for (size_t i = 0; i < len; i++) {
        int v = sextet(in[i]);
        if (v < 0)
            return -1;
        acc = acc << 6 | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (uint8_t)(acc >> bits);
            acc &= (1u << bits) - 1;
        }
    }
    /* The leftover bits of a partial quantum must be zero. */
    if (acc != 0)
        return -1;
    return (long)o;
}
