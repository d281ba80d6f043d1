/* qkd_seal — the device library's sealed frames (qkms_device.h): a session
 * key as qkd_response_key gives it, the two parties' IDs for the direction,
 * and qkms_seal's frame. */
#include "qkms_device.h"

#include <stdarg.h>
#include <stdio.h>

#include <openssl/crypto.h>

static int fail(int rc, char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int fail(int rc, char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    if (err && errlen) {
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return rc;
}

/* The key, its 16-byte ID and the direction from -> to, or a message. */
static int prepare(const qkd_session_key *k, const char *from, const char *to, uint8_t kid[16],
                   int *dir, char *err, size_t errlen)
{
    if (!k || !k->key || (k->key_len != 16 && k->key_len != 32))
        return fail(QKD_ERR_INPUT, err, errlen, "input: no session key");
    if (qks_uuid_parse(k->key_id, kid) != QKS_OK)
        return fail(QKD_ERR_INPUT, err, errlen, "input: the key ID is not a UUID");
    if (!from || !to || !qkp_id_valid(from) || !qkp_id_valid(to))
        return fail(QKD_ERR_INPUT, err, errlen, "input: the parties' IDs");
    if ((*dir = qks_direction_of(from, to)) < 0)
        return fail(QKD_ERR_INPUT, err, errlen, "input: a party does not seal for itself");
    return QKD_OK;
}

static int frame_error(int rc, char *err, size_t errlen)
{
    static const char *why[] = {
        [-QKS_ERR_INPUT] = "a bad argument (sizes, seq, session ID)",
        [-QKS_ERR_FORMAT] = "not a sealed frame of this version",
        [-QKS_ERR_KEY] = "sealed under another key",
        [-QKS_ERR_DIRECTION] = "sealed for the other direction",
        [-QKS_ERR_AUTH] = "the tag does not verify (altered, or another session)",
        [-QKS_ERR_REPLAY] = "seq already accepted or behind the window",
        [-QKS_ERR_INTERNAL] = "the crypto library failed",
    };
    return fail(rc == QKS_ERR_INTERNAL ? QKD_ERR_INTERNAL : QKD_ERR_INPUT, err, errlen, "%s: %s",
                qks_strerror(rc), why[-rc]);
}

int qkd_seal(const qkd_session_key *k, const char *my_id, const char *peer_id, uint64_t seq,
             const uint8_t *pt, size_t pt_len, uint8_t *out, size_t cap, size_t *out_len,
             char *err, size_t errlen)
{
    uint8_t kid[16];
    int dir, rc;

    if ((rc = prepare(k, my_id, peer_id, kid, &dir, err, errlen)) != QKD_OK)
        return rc;
    if (seq > QKS_PARTY_MAX_SEQ)
        return fail(QKD_ERR_INPUT, err, errlen,
                    "input: seq 2^63 and up are the platform's (docs/sealing.md)");
    rc = qks_seal(k->key, k->key_len, kid, k->session_id, dir, seq, pt, pt_len, out, cap,
                  out_len);
    return rc == QKS_OK ? QKD_OK : frame_error(rc, err, errlen);
}

int qkd_open(const qkd_session_key *k, const char *my_id, const char *peer_id,
             qkd_seal_window *w, const uint8_t *frame, size_t len, uint8_t *pt, size_t cap,
             size_t *pt_len, uint64_t *seq, char *err, size_t errlen)
{
    uint8_t kid[16];
    int dir, rc;

    /* What the peer sends: its direction to me. */
    if ((rc = prepare(k, peer_id, my_id, kid, &dir, err, errlen)) != QKD_OK)
        return rc;
    rc = qks_open(k->key, k->key_len, kid, k->session_id, dir, w, frame, len, pt, cap, pt_len,
                  seq);
    return rc == QKS_OK ? QKD_OK : frame_error(rc, err, errlen);
}

int qkd_device_seal(const qkd_device *d, int index, int64_t now, uint64_t seq, const uint8_t *pt,
                    size_t pt_len, uint8_t *out, size_t cap, size_t *out_len, char *err,
                    size_t errlen)
{
    uint8_t key[32], kid[16];
    const qkd_key *k;
    int dir, rc;

    if (!d)
        return fail(QKD_ERR_INPUT, err, errlen, "input: no device");
    if (index < 0)
        index = qkd_device_default_index(d, now);
    if (!(k = qkd_device_key(d, index)) || k->local)
        return fail(QKD_ERR_INPUT, err, errlen, "input: no usable device key of index %d", index);
    if (seq > QKS_PARTY_MAX_SEQ)
        return fail(QKD_ERR_INPUT, err, errlen,
                    "input: seq 2^63 and up are the platform's (docs/sealing.md)");
    if ((dir = qks_direction_of(d->device_id, QKS_PLATFORM_ID)) < 0)
        return fail(QKD_ERR_INPUT, err, errlen, "input: the device ID");
    if ((rc = qks_device_data_key(k->key, k->len, d->device_id, key, kid)) != QKS_OK)
        return frame_error(rc, err, errlen);
    rc = qks_seal(key, 32, kid, d->device_id, dir, seq, pt, pt_len, out, cap, out_len);
    OPENSSL_cleanse(key, sizeof(key));
    return rc == QKS_OK ? QKD_OK : frame_error(rc, err, errlen);
}

int qkd_device_open(const qkd_device *d, qkd_seal_window *w, const uint8_t *frame, size_t len,
                    uint8_t *pt, size_t cap, size_t *pt_len, uint64_t *seq, int *index,
                    char *err, size_t errlen)
{
    uint8_t key[32], kid[16];
    qks_header h;
    int dir, rc;

    if (!d)
        return fail(QKD_ERR_INPUT, err, errlen, "input: no device");
    if ((rc = qks_peek(frame, len, &h)) != QKS_OK)
        return frame_error(rc, err, errlen);
    if ((dir = qks_direction_of(QKS_PLATFORM_ID, d->device_id)) < 0)
        return fail(QKD_ERR_INPUT, err, errlen, "input: the device ID");
    /* The key the frame names: one of the device's (not its local keys). */
    for (size_t i = 0; i < d->nkeys; i++) {
        const qkd_key *k = &d->keys[i];
        if (k->local)
            continue;
        if ((rc = qks_device_data_key(k->key, k->len, d->device_id, key, kid)) != QKS_OK)
            return frame_error(rc, err, errlen);
        if (CRYPTO_memcmp(kid, h.key_id, 16) != 0) {
            OPENSSL_cleanse(key, sizeof(key));
            continue;
        }
        rc = qks_open(key, 32, kid, d->device_id, dir, w, frame, len, pt, cap, pt_len, seq);
        OPENSSL_cleanse(key, sizeof(key));
        if (rc == QKS_OK && index)
            *index = k->index;
        return rc == QKS_OK ? QKD_OK : frame_error(rc, err, errlen);
    }
    return frame_error(QKS_ERR_KEY, err, errlen);
}
