/*
 * fuzz_hex — the strict decoders every wire and database value passes
 * through: qkms_hex_decode (common/hexutil.c: wrapped keys, device keys in
 * fill documents, QRNG hex bodies) and the protocol's base64url
 * (device/qkms_proto.c qkp_b64url_decode: nonces and ciphertexts), plus the
 * identifier rule qkp_id_valid and the UUID text rule qkms_uuid_valid (a
 * valid one is the text qkms_uuid_format makes of its bytes, up to case).
 *
 * Input: byte 0 the output capacity (allocated exactly), the rest the text.
 * Properties: decoding never writes past the capacity; whatever decodes
 * encodes back to the same text (hex: up to case; base64url: exactly, as
 * the decoder refuses padding and non-zero trailing bits), so each value
 * has one accepted encoding.
 */
#include "fuzz_common.h"

#include <ctype.h>
#include <strings.h>

#include "hexutil.h"
#include "qkms_proto.h"

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fuzz_quiet();
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    size_t cap, len;
    const char *in;
    uint8_t *out;
    char *enc, *s;
    long n;

    if (size < 1)
        return 0;
    cap = data[0];
    in = (const char *)data + 1;
    len = size - 1;
    out = malloc(cap ? cap : 1);
    FUZZ_CHECK(out != NULL);

    n = qkms_hex_decode(in, len, out, cap);
    if (n >= 0) {
        FUZZ_CHECK((size_t)n * 2 == len && (size_t)n <= cap);
        enc = malloc(2 * (size_t)n + 1);
        FUZZ_CHECK(enc != NULL);
        qkms_hex_encode(out, (size_t)n, enc);
        FUZZ_CHECK(strlen(enc) == len && !strncasecmp(enc, in, len));
        free(enc);
    }

    n = qkp_b64url_decode(in, len, out, cap);
    if (n >= 0) {
        FUZZ_CHECK((size_t)n <= cap);
        enc = malloc(QKP_B64URL_LEN((size_t)n));
        FUZZ_CHECK(enc != NULL);
        qkp_b64url_encode(out, (size_t)n, enc);
        FUZZ_CHECK(strlen(enc) == len && !memcmp(enc, in, len));
        free(enc);
    }

    s = fuzz_strndup((const uint8_t *)in, len);
    if (qkp_id_valid(s)) {
        FUZZ_CHECK(strlen(s) >= 1 && strlen(s) <= QKP_MAX_ID && !strpbrk(s, "/\\%?# "));
        for (const char *p = s; *p; p++)
            FUZZ_CHECK(isgraph((unsigned char)*p));
    }
    if (qkms_uuid_valid(s)) {
        uint8_t b[16];
        char hx[33], back[37];
        for (int i = 0, j = 0; i < 36; i++)
            if (s[i] != '-')
                hx[j++] = s[i];
        FUZZ_CHECK(qkms_hex_decode(hx, 32, b, sizeof(b)) == 16);
        qkms_uuid_format(b, back);
        FUZZ_CHECK(!strcasecmp(back, s));
    }
    free(s);
    free(out);
    return 0;
}
