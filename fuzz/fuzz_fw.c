/*
 * fuzz_fw — a device opening firmware packages (device/qkms_fw.h,
 * docs/firmware.md), with the policy of the first case of
 * tests/vectors/firmware-v1.json (its group key, pinned signer, product).
 *
 * Input: byte 0 picks the mode and the slicing.
 *  - bit 7 clear: the rest is a package, fed to the stream in slices of
 *    (byte 0 & 0x7f) + 1 bytes, and opened whole by qkd_firmware_open.
 *  - bit 7 set: the rest is a body's plaintext (manifest_len, manifest,
 *    signature_len, signature, image), which the harness encrypts into a
 *    package for the group key, so the manifest's parser and the body's
 *    length fields are reached past the chunks' authentication.
 * Properties: both ways of opening agree (ok, or the same refusal name,
 * but for trailing bytes, which the whole open sees first); a package that
 * opens gives exactly image_size bytes whose SHA-256 is the manifest's.
 * (Mutations cannot pass the signature check: rollback, targets and the
 * image hash are reached by the unmutated seeds only.)
 */
#include "fuzz_common.h"

#include <openssl/evp.h>

#include "hexutil.h"
#include "qkms_fw.h"

static qkd_firmware_group_key group;
static uint8_t *cert;
static size_t cert_len;
static qkd_firmware_policy pol;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    json_error_t e;
    json_t *doc = json_load_file(FUZZ_VECTORS_FW, 0, &e), *g, *c;
    const char *hex;
    (void)argc;
    (void)argv;
    fuzz_quiet();
    FUZZ_CHECK(doc != NULL);
    g = json_array_get(json_object_get(doc, "groups"), 0);
    snprintf(group.group, sizeof(group.group), "%s",
             json_string_value(json_object_get(g, "group")));
    hex = json_string_value(json_object_get(g, "key_id"));
    FUZZ_CHECK(qkms_hex_decode(hex, strlen(hex), group.key_id, 16) == 16);
    hex = json_string_value(json_object_get(g, "key"));
    FUZZ_CHECK(qkms_hex_decode(hex, strlen(hex), group.key, 32) == 32);
    hex = json_string_value(json_object_get(json_object_get(doc, "signer"), "cert"));
    cert_len = strlen(hex) / 2;
    cert = malloc(cert_len);
    FUZZ_CHECK(cert && qkms_hex_decode(hex, strlen(hex), cert, cert_len) == (long)cert_len);
    c = json_array_get(json_object_get(doc, "cases"), 0);
    pol.product = strdup(json_string_value(json_object_get(json_object_get(c, "policy"), "product")));
    pol.counter = 0;
    pol.now = -1;
    pol.groups = &group;
    pol.ngroups = 1;
    pol.certs = (const uint8_t *const *)&cert;
    pol.cert_lens = &cert_len;
    pol.ncerts = 1;
    json_decref(doc);
    return 0;
}

static int gcm(const uint8_t *key, const uint8_t nonce[12], const uint8_t *aad, size_t al,
               const uint8_t *in, size_t n, uint8_t *out)
{
    EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
    int l = 0, ok = c && EVP_EncryptInit_ex(c, EVP_aes_256_gcm(), NULL, key, nonce) == 1 &&
                    EVP_EncryptUpdate(c, NULL, &l, aad, (int)al) == 1 &&
                    (n == 0 || EVP_EncryptUpdate(c, out, &l, in, (int)n) == 1) &&
                    EVP_EncryptFinal_ex(c, out + l, &l) == 1 &&
                    EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_GET_TAG, 16, out + n) == 1;
    EVP_CIPHER_CTX_free(c);
    return ok ? 0 : -1;
}

/* A package for the group key around body (the mode with bit 7 set). */
static uint8_t *wrap_body(const uint8_t *body, size_t n, size_t *out_len)
{
    static const uint8_t k[32] = {7}, pid[16] = {1, 2, 3}, wnonce[12] = {9};
    const size_t cs = 1024, hl = QKF_FIXED_LEN + QKF_RECIPIENT_LEN;
    size_t chunks = (n + cs - 1) / cs, len = hl + n + 16 * chunks, off;
    uint8_t *p = malloc(len), aad[QKF_FIXED_LEN + 17], cad[11 + 32];
    EVP_MD_CTX *h = EVP_MD_CTX_new();
    FUZZ_CHECK(p && h && n > 0);
    memcpy(p, QKF_MAGIC, 8);
    p[8] = QKF_VERSION;
    p[9] = QKF_SUITE;
    p[10] = 0;
    p[11] = 1;
    p[12] = 0;
    p[13] = 0;
    p[14] = (uint8_t)(cs >> 8);
    p[15] = (uint8_t)cs;
    memcpy(p + 16, pid, 16);
    for (int b = 0; b < 8; b++)
        p[32 + b] = (uint8_t)((uint64_t)n >> (56 - 8 * b));
    p[40] = QKF_KIND_GROUP;
    memset(p + 41, 0, 3);
    memcpy(p + 44, group.key_id, 16);
    memcpy(p + 60, wnonce, 12);
    memcpy(aad, p, QKF_FIXED_LEN);
    aad[QKF_FIXED_LEN] = QKF_KIND_GROUP;
    memcpy(aad + QKF_FIXED_LEN + 1, group.key_id, 16);
    FUZZ_CHECK(gcm(group.key, wnonce, aad, sizeof(aad), k, 32, p + 72) == 0);
    memcpy(cad, "qkms/fw/v1", 11);
    FUZZ_CHECK(EVP_DigestInit_ex(h, EVP_sha256(), NULL) == 1 && EVP_DigestUpdate(h, p, hl) == 1 &&
               EVP_DigestFinal_ex(h, cad + 11, NULL) == 1);
    EVP_MD_CTX_free(h);
    off = hl;
    for (size_t i = 0; i < chunks; i++) {
        size_t m = i + 1 < chunks ? cs : n - i * cs;
        uint8_t nonce[12] = {0};
        nonce[0] = i + 1 == chunks;
        for (int b = 0; b < 8; b++)
            nonce[4 + b] = (uint8_t)((uint64_t)i >> (56 - 8 * b));
        FUZZ_CHECK(gcm(k, nonce, cad, sizeof(cad), body + i * cs, m, p + off) == 0);
        off += m + 16;
    }
    *out_len = len;
    return p;
}

struct count {
    uint64_t n;
};

static int counting_sink(void *arg, const uint8_t *d, size_t n)
{
    (void)d;
    ((struct count *)arg)->n += n;
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const uint8_t *pkg;
    uint8_t *built = NULL, *img = NULL, h[32];
    size_t len, step, il = 0;
    qkd_firmware_stream *s = NULL;
    qkd_firmware_manifest m1, m2;
    struct count cnt = {0};
    char e1[256] = "", e2[256] = "";
    int r1, r2;

    if (size < 2)
        return 0;
    step = (size_t)(data[0] & 0x7f) + 1;
    if (data[0] & 0x80) {
        built = wrap_body(data + 1, size - 1, &len);
        pkg = built;
    } else {
        pkg = data + 1;
        len = size - 1;
    }
    r1 = qkd_firmware_open(pkg, len, &pol, &img, &il, &m1, e1, sizeof(e1));
    FUZZ_CHECK(qkd_firmware_stream_new(&s, &pol, counting_sink, &cnt, e2, sizeof(e2)) == QKD_OK);
    r2 = QKD_OK;
    for (size_t off = 0; off < len && r2 == QKD_OK; off += step)
        r2 = qkd_firmware_stream_update(s, pkg + off, off + step <= len ? step : len - off, e2,
                                        sizeof(e2));
    if (r2 == QKD_OK)
        r2 = qkd_firmware_stream_final(s, &m2, e2, sizeof(e2));
    qkd_firmware_stream_free(s);
    FUZZ_CHECK(r1 == r2);
    FUZZ_CHECK(r1 == QKD_OK || r1 == QKD_ERR_INPUT);
    if (r1 != QKD_OK) {
        /* the same refusal's name, but for trailing bytes: the whole open
         * sees them first, a stream at its end */
        if (strncmp(e1, "format: bytes after", 19) != 0)
            FUZZ_CHECK(strncmp(e1, e2, strcspn(e1, ":")) == 0);
        FUZZ_CHECK(img == NULL);
    } else {
        EVP_MD_CTX *x = EVP_MD_CTX_new();
        FUZZ_CHECK(il == m1.image_size && cnt.n == il && m2.counter == m1.counter);
        FUZZ_CHECK(x && EVP_DigestInit_ex(x, EVP_sha256(), NULL) == 1 &&
                   EVP_DigestUpdate(x, img, il) == 1 && EVP_DigestFinal_ex(x, h, NULL) == 1);
        EVP_MD_CTX_free(x);
        FUZZ_CHECK(!memcmp(h, m1.image_sha256, 32));
    }
    free(img);
    free(built);
    return 0;
}
