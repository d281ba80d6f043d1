/* qkms_seal — the sealed frame: header, nonce, AAD, replay window. */
#include "qkms_seal.h"

#include <string.h>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/kdf.h>

#include "qkms_proto.h"

#define LABEL "qkms/seal/v1"
#define MAX_SID 128
#define AAD_CAP (sizeof(LABEL) + MAX_SID + 1 + QKS_HEADER_LEN)

const char *qks_strerror(int code)
{
    switch (code) {
    case QKS_OK: return "ok";
    case QKS_ERR_INPUT: return "input";
    case QKS_ERR_FORMAT: return "format";
    case QKS_ERR_KEY: return "key";
    case QKS_ERR_DIRECTION: return "direction";
    case QKS_ERR_AUTH: return "auth";
    case QKS_ERR_REPLAY: return "replay";
    default: return "internal";
    }
}

int qks_direction_of(const char *from_id, const char *to_id)
{
    int c;
    if (!from_id || !to_id)
        return QKS_ERR_INPUT;
    c = strcmp(from_id, to_id); /* unsigned-char order: byte order */
    return c < 0 ? QKS_A2B : c > 0 ? QKS_B2A : QKS_ERR_INPUT;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

int qks_uuid_parse(const char *text, uint8_t out[16])
{
    size_t i, n = 0;
    if (!text || strlen(text) != 36)
        return QKS_ERR_INPUT;
    for (i = 0; i < 36;) {
        int hi, lo;
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            if (text[i++] != '-')
                return QKS_ERR_INPUT;
            continue;
        }
        hi = hexval(text[i]);
        lo = hexval(text[i + 1]);
        if (hi < 0 || lo < 0)
            return QKS_ERR_INPUT;
        out[n++] = (uint8_t)(hi << 4 | lo);
        i += 2;
    }
    return QKS_OK;
}

static void put64(uint8_t *p, uint64_t v)
{
    for (int i = 7; i >= 0; i--, v >>= 8)
        p[i] = (uint8_t)v;
}

static uint64_t get64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = v << 8 | p[i];
    return v;
}

static void header(uint8_t h[QKS_HEADER_LEN], int direction, const uint8_t key_id[16],
                   uint64_t seq)
{
    h[0] = QKS_VERSION;
    h[1] = QKS_ALG_AES_GCM;
    h[2] = (uint8_t)direction;
    h[3] = 0;
    memcpy(h + 4, key_id, 16);
    put64(h + 20, seq);
}

static void nonce_of(uint8_t n[QKP_NONCE_LEN], int direction, uint64_t seq)
{
    n[0] = n[1] = n[2] = 0;
    n[3] = (uint8_t)direction;
    put64(n + 4, seq);
}

/* LABEL 0x00 session_id 0x00 header; 0 when session_id is not 1..128 bytes. */
static size_t aad_of(uint8_t *aad, const char *session_id, const uint8_t h[QKS_HEADER_LEN])
{
    size_t sl = session_id ? strnlen(session_id, MAX_SID + 1) : 0, n = 0;
    if (sl == 0 || sl > MAX_SID)
        return 0;
    memcpy(aad, LABEL, sizeof(LABEL)); /* with its NUL: the 0x00 separator */
    n = sizeof(LABEL);
    memcpy(aad + n, session_id, sl);
    n += sl;
    aad[n++] = 0;
    memcpy(aad + n, h, QKS_HEADER_LEN);
    return n + QKS_HEADER_LEN;
}

static int key_ok(const uint8_t *key, size_t key_len)
{
    return key && (key_len == 16 || key_len == 32);
}

int qks_seal(const uint8_t *key, size_t key_len, const uint8_t key_id[16],
             const char *session_id, int direction, uint64_t seq, const uint8_t *pt,
             size_t pt_len, uint8_t *out, size_t cap, size_t *out_len)
{
    uint8_t aad[AAD_CAP], nonce[QKP_NONCE_LEN];
    size_t aad_len;

    if (!key_ok(key, key_len) || !key_id || (direction != QKS_A2B && direction != QKS_B2A) ||
        seq > QKS_MAX_SEQ || (!pt && pt_len) || pt_len > QKS_MAX_PLAINTEXT || !out ||
        cap < pt_len + QKS_OVERHEAD || !out_len)
        return QKS_ERR_INPUT;
    header(out, direction, key_id, seq);
    if ((aad_len = aad_of(aad, session_id, out)) == 0)
        return QKS_ERR_INPUT;
    nonce_of(nonce, direction, seq);
    if (qkp_seal(key, key_len, nonce, aad, aad_len, pt, pt_len, out + QKS_HEADER_LEN) != 0) {
        OPENSSL_cleanse(out, pt_len + QKS_OVERHEAD);
        return QKS_ERR_INTERNAL;
    }
    *out_len = pt_len + QKS_OVERHEAD;
    return QKS_OK;
}

int qks_peek(const uint8_t *frame, size_t len, qks_header *h)
{
    if (!frame || !h || len < QKS_OVERHEAD)
        return QKS_ERR_FORMAT;
    if (frame[0] != QKS_VERSION || frame[1] != QKS_ALG_AES_GCM ||
        (frame[2] != QKS_A2B && frame[2] != QKS_B2A) || frame[3] != 0)
        return QKS_ERR_FORMAT;
    h->version = frame[0];
    h->algorithm = frame[1];
    h->direction = frame[2];
    memcpy(h->key_id, frame + 4, 16);
    h->seq = get64(frame + 20);
    if (h->seq > QKS_MAX_SEQ)
        return QKS_ERR_FORMAT;
    return QKS_OK;
}

/* QKS_OK when seq may be accepted by w. */
static int window_check(const qks_window *w, uint64_t seq)
{
    if (!w || !w->any || seq > w->top)
        return QKS_OK;
    if (w->top - seq >= QKS_WINDOW)
        return QKS_ERR_REPLAY; /* too old to tell */
    return (w->bitmap >> (w->top - seq)) & 1 ? QKS_ERR_REPLAY : QKS_OK;
}

static void window_accept(qks_window *w, uint64_t seq)
{
    if (!w)
        return;
    if (!w->any) {
        w->any = 1;
        w->top = seq;
        w->bitmap = 1;
    } else if (seq > w->top) {
        uint64_t shift = seq - w->top;
        w->bitmap = shift >= QKS_WINDOW ? 1 : (w->bitmap << shift) | 1;
        w->top = seq;
    } else {
        w->bitmap |= UINT64_C(1) << (w->top - seq);
    }
}

int qks_open(const uint8_t *key, size_t key_len, const uint8_t key_id[16],
             const char *session_id, int direction, qks_window *w, const uint8_t *frame,
             size_t len, uint8_t *pt, size_t cap, size_t *pt_len, uint64_t *seq)
{
    uint8_t aad[AAD_CAP], nonce[QKP_NONCE_LEN];
    qks_header h;
    size_t aad_len, n;
    int rc;

    if (!key_ok(key, key_len) || !key_id || (direction != QKS_A2B && direction != QKS_B2A) ||
        !pt_len || (!pt && cap))
        return QKS_ERR_INPUT;
    if ((rc = qks_peek(frame, len, &h)) != QKS_OK)
        return rc;
    n = len - QKS_OVERHEAD;
    if (n > QKS_MAX_PLAINTEXT)
        return QKS_ERR_FORMAT;
    if (cap < n)
        return QKS_ERR_INPUT;
    if (CRYPTO_memcmp(h.key_id, key_id, 16) != 0)
        return QKS_ERR_KEY;
    if (h.direction != direction)
        return QKS_ERR_DIRECTION;
    if ((rc = window_check(w, h.seq)) != QKS_OK)
        return rc;
    if ((aad_len = aad_of(aad, session_id, frame)) == 0)
        return QKS_ERR_INPUT;
    nonce_of(nonce, h.direction, h.seq);
    /* qkp_open wipes pt when the tag does not verify. */
    if (qkp_open(key, key_len, nonce, aad, aad_len, frame + QKS_HEADER_LEN, len - QKS_HEADER_LEN,
                 pt) != 0)
        return QKS_ERR_AUTH;
    window_accept(w, h.seq);
    *pt_len = n;
    if (seq)
        *seq = h.seq;
    return QKS_OK;
}

int qks_device_data_key(const uint8_t *device_key, size_t len, const char *device_id,
                        uint8_t out[32], uint8_t key_id[16])
{
    static const char info_label[] = "qkms/seal/device-data/v1";
    static const char id_label[] = "qkms/seal/device-key-id/v1";
    uint8_t info[sizeof(info_label) + 128], h[32];
    unsigned int hl = 0;
    size_t dl = device_id ? strlen(device_id) : 0;
    EVP_KDF *kdf;
    EVP_KDF_CTX *c = NULL;
    OSSL_PARAM ps[4];
    int rc = QKS_ERR_INTERNAL;

    if (!device_key || (len != 16 && len != 32) || dl < 1 || dl > 128 || !out || !key_id)
        return QKS_ERR_INPUT;
    memcpy(info, info_label, sizeof(info_label)); /* with its NUL */
    memcpy(info + sizeof(info_label), device_id, dl);
    ps[0] = OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, (char *)"SHA256", 0);
    ps[1] = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, (void *)device_key, len);
    ps[2] = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO, info, sizeof(info_label) + dl);
    ps[3] = OSSL_PARAM_construct_end();
    if ((kdf = EVP_KDF_fetch(NULL, "HKDF", NULL)) && (c = EVP_KDF_CTX_new(kdf)) &&
        EVP_KDF_derive(c, out, 32, ps) == 1 &&
        HMAC(EVP_sha256(), out, 32, (const unsigned char *)id_label, sizeof(id_label) - 1, h,
             &hl) &&
        hl == 32) {
        memcpy(key_id, h, 16);
        rc = QKS_OK;
    } else {
        OPENSSL_cleanse(out, 32);
    }
    OPENSSL_cleanse(h, sizeof(h));
    EVP_KDF_CTX_free(c);
    EVP_KDF_free(kdf);
    return rc;
}
