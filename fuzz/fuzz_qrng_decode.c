/*
 * fuzz_qrng_decode — the decoder of a QRNG service's HTTP response body
 * (kmsd/entropy_source.c esrc_decode_body; docs/entropy.md): an optional
 * dotted JSON path, then raw, hex or base64. Whatever it returns becomes
 * entropy input, so besides memory safety it must never return bytes that
 * are not in the body: every accepted hex or base64 value is compared with
 * a strict reference decoder here (RFC 4648 base64 with padding, after the
 * trailing CR/LF the decoder strips).
 *
 * Input: byte 0 the format, byte 1 the JSON path, byte 2 the output
 * capacity (1-256, allocated exactly, so ASan sees any overrun); the rest is
 * the body.
 */
#include "fuzz_common.h"

#include "entropy/entropy_source.h"
#include "hexutil.h"

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fuzz_quiet();
    return 0;
}

static int b64val(char c)
{
    static const char a[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    const char *p = c ? strchr(a, c) : NULL;
    return p ? (int)(p - a) : -1;
}

/* Strict padded base64; -1 when s is not that. */
static long ref_b64(const char *s, size_t n, uint8_t *out)
{
    size_t o = 0, pad = 0;
    if (n == 0 || n % 4)
        return -1;
    if (s[n - 1] == '=')
        pad = s[n - 2] == '=' ? 2 : 1;
    for (size_t i = 0; i < n; i += 4) {
        int v[4];
        for (int j = 0; j < 4; j++) {
            bool padpos = i + (size_t)j >= n - pad;
            v[j] = padpos ? (s[i + j] == '=' ? 0 : -1) : b64val(s[i + j]);
            if (v[j] < 0)
                return -1;
        }
        out[o++] = (uint8_t)(v[0] << 2 | v[1] >> 4);
        out[o++] = (uint8_t)((v[1] & 15) << 4 | v[2] >> 2);
        out[o++] = (uint8_t)((v[2] & 3) << 6 | v[3]);
    }
    return (long)(o - pad);
}

/* The text the format applies to: the JSON string at path, or the body. */
static char *payload(const char *body, size_t len, const char *path, size_t *n)
{
    json_error_t je;
    json_t *root = NULL;
    const json_t *v;
    char *copy;
    if (!path) {
        *n = len;
        return fuzz_strndup((const uint8_t *)body, len);
    }
    root = json_loadb(body, len, 0, &je);
    v = root;
    for (const char *p = path; v && *p;) {
        char seg[64];
        size_t sl = strcspn(p, ".");
        memcpy(seg, p, sl);
        seg[sl] = 0;
        v = json_object_get(v, seg);
        p += sl + (p[sl] == '.');
    }
    FUZZ_CHECK(json_is_string(v));
    *n = json_string_length(v);
    copy = fuzz_strndup((const uint8_t *)json_string_value(v), *n);
    json_decref(root);
    return copy;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const char *const formats[] = {"raw", "hex", "base64"};
    static const char *const paths[] = {NULL, "data", "result.random.data", "a.b.c"};
    const char *format, *path, *body;
    size_t cap, len, n = 0;
    uint8_t *out, *ref;
    char err[256], *text;
    long got, want;

    if (size < 3)
        return 0;
    format = formats[data[0] % 3];
    path = paths[data[1] % 4];
    cap = (size_t)data[2] + 1;
    body = (const char *)data + 3;
    len = size - 3;
    out = malloc(cap);
    FUZZ_CHECK(out != NULL);
    err[0] = 0;
    got = esrc_decode_body(body, len, path, format, out, cap, err, sizeof(err));
    if (got < 0) {
        FUZZ_CHECK(err[0] != 0);
        free(out);
        return 0;
    }
    FUZZ_CHECK((size_t)got <= cap);
    text = payload(body, len, path, &n);
    ref = malloc(n + 3);
    FUZZ_CHECK(ref != NULL);
    if (!strcmp(format, "raw")) {
        FUZZ_CHECK((size_t)got == (n < cap ? n : cap) && !memcmp(out, text, (size_t)got));
    } else {
        while (n && (text[n - 1] == '\n' || text[n - 1] == '\r'))
            n--;
        if (!strcmp(format, "hex")) {
            if (n / 2 > cap)
                n = 2 * cap;
            want = qkms_hex_decode(text, n, ref, n / 2 + 1);
        } else {
            want = ref_b64(text, n, ref);
        }
        /* Accepted, so the reference must accept it too, with the same bytes. */
        FUZZ_CHECK(want >= 0);
        FUZZ_CHECK((size_t)got == ((size_t)want < cap ? (size_t)want : cap));
        FUZZ_CHECK(!memcmp(out, ref, (size_t)got));
    }
    free(ref);
    free(text);
    free(out);
    return 0;
}
