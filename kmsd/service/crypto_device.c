/*
 * crypto_device — frames between a device and the platform under one of
 * its device keys (crypto.h; docs/sealing.md "Data under a device key"):
 * the device and its keys from Q_CRYPTO_DEVICE, the frame key derived by
 * qks_device_data_key from the unwrapped device key, the replay window and
 * send counter in device_seal_state, an audit row for every outcome.
 */
#include "service/crypto.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

#include "hexutil.h"
#include "qkms_proto.h"
#include "qkms_seal.h"
#include "service/audit.h"
#include "service/device_keys.h"
#include "store/queries.h"

typedef struct {
    qk_svc *s;
    const qk_principal *who;
    bool seal;
    const char *device_id;
    int want_index; /* seal: -1 the newest usable */
    const uint8_t *in;
    size_t in_len;
    qks_header hdr; /* open */
    crypto_result *out;
    qk_err *e;
    bool refused;
} dev_tx;

static const char *dir_name(int d) { return d == QKS_A2B ? "a2b" : "b2a"; }

static db_status refuse(db_conn *c, dev_tx *t, qk_kind kind, const char *code, const char *msg)
{
    json_t *d;
    db_status st;
    qk_fail(t->e, kind, code, "%s", msg);
    t->refused = true;
    log_with(&t->who->log, LOG_INFO, "crypto request refused", "{s:s,s:s,s:s}", "op",
             t->seal ? "encrypt" : "decrypt", "code", code, "device_id", t->device_id);
    d = json_pack("{s:s,s:s,s:s,s:I}", "op", t->seal ? "encrypt" : "decrypt", "code", code,
                  "device", t->device_id, "bytes",
                  (json_int_t)(t->seal ? t->in_len : t->in_len - QKS_OVERHEAD));
    if (d && !t->seal) {
        char sq[24];
        snprintf(sq, sizeof(sq), "%llu", (unsigned long long)t->hdr.seq);
        json_object_set_new(d, "seq", json_string(sq));
    }
    st = audit_append(c, t->who->name, "crypto.refused", t->device_id, d);
    if (st != DB_OK) { /* no refusal without its audit row */
        qk_clear(t->e);
        t->refused = false;
    }
    return st;
}

/* The frame key of row i's device key: unwrapped by the token, derived. */
static qk_kind frame_key(dev_tx *t, PGresult *r, int i, uint8_t key[32], uint8_t kid[16])
{
    uint8_t *dk = OPENSSL_secure_malloc(DEVICE_KEY_BUF);
    size_t dl = 0;
    qk_kind k;
    if (!dk)
        return qk_fail(t->e, QK_INTERNAL, "internal", "out of secure memory");
    k = device_key_unwrap(t->s, t->device_id, atoi(PQgetvalue(r, i, 3)), PQgetvalue(r, i, 4),
                          PQgetvalue(r, i, 5), dk, &dl, t->e);
    if (k == QK_OK && qks_device_data_key(dk, dl, t->device_id, key, kid) != QKS_OK)
        k = qk_fail(t->e, QK_INTERNAL, "internal", "internal error (see kmsd log)");
    OPENSSL_secure_clear_free(dk, DEVICE_KEY_BUF);
    return k;
}

static db_status dev_tx_fn(db_conn *c, void *arg)
{
    dev_tx *t = arg;
    crypto_result *o = t->out;
    char tokid[24], pk[24], idx[8], dirb[8], topb[24], bitb[24], msg[200];
    const char *vals[2] = {tokid, t->device_id};
    uint8_t key[32], kid[16];
    PGresult *r = NULL, *w = NULL;
    db_status st;
    int row = -1, dir, rc, n;

    qk_clear(t->e);
    t->refused = false;
    crypto_result_clear(o);
    snprintf(tokid, sizeof(tokid), "%lld", t->who->token_id);
    if (!(r = db_exec(c, Q_CRYPTO_DEVICE, 2, vals, NULL, NULL, &st)))
        goto out;
    if ((n = PQntuples(r)) == 0) {
        st = refuse(c, t, QK_UNAUTHENTICATED, "unauthenticated", "the token is no longer valid");
        goto out;
    }
    snprintf(o->party, sizeof(o->party), "%s", PQgetvalue(r, 0, 0));
    snprintf(o->peer, sizeof(o->peer), "%s", t->device_id);
    if (strcmp(o->party, QKS_PLATFORM_ID) != 0) {
        st = refuse(c, t, QK_FORBIDDEN, "not_a_party",
                    "a device's data is the platform's: only a crypto token acting for "
                    "@platform seals and opens it");
        goto out;
    }
    if (PQgetisnull(r, 0, 1)) {
        st = refuse(c, t, QK_NOT_FOUND, "unknown_device", "no such device");
        goto out;
    }
    if (strcmp(PQgetvalue(r, 0, 2), "active") != 0) {
        st = refuse(c, t, QK_FORBIDDEN, "device_inactive", "the device is suspended or revoked");
        goto out;
    }
    snprintf(pk, sizeof(pk), "%s", PQgetvalue(r, 0, 1));
    dir = t->seal ? qks_direction_of(QKS_PLATFORM_ID, t->device_id)
                  : qks_direction_of(t->device_id, QKS_PLATFORM_ID);
    o->direction = dir;
    if (!t->seal && t->hdr.direction != dir) {
        snprintf(msg, sizeof(msg),
                 "the frame was sealed by the platform's side (direction %s), not by the device",
                 dir_name(t->hdr.direction));
        st = refuse(c, t, QK_INVALID, "seal_direction", msg);
        goto out;
    }
    /* The key: to seal, the one asked for or the newest usable; to open,
     * the one whose derived key ID the frame names. */
    for (int i = 0; i < n && row < 0; i++) {
        if (PQgetisnull(r, i, 3))
            continue;
        if (t->seal) {
            if (PQgetvalue(r, i, 6)[0] == 't' &&
                (t->want_index < 0 || atoi(PQgetvalue(r, i, 3)) == t->want_index)) {
                if (frame_key(t, r, i, key, kid) != QK_OK) {
                    st = DB_ERROR;
                    goto out;
                }
                row = i;
            }
        } else if (PQgetvalue(r, i, 7)[0] == 't') {
            if (frame_key(t, r, i, key, kid) != QK_OK) {
                st = DB_ERROR;
                goto out;
            }
            if (CRYPTO_memcmp(kid, t->hdr.key_id, 16) == 0)
                row = i;
            else
                OPENSSL_cleanse(key, sizeof(key));
        }
    }
    if (row < 0) {
        if (t->seal && t->want_index >= 0)
            snprintf(msg, sizeof(msg), "the device has no usable key of index %d", t->want_index);
        else
            snprintf(msg, sizeof(msg), t->seal ? "the device has no usable key"
                                               : "the frame's key is none of the device's keys");
        st = refuse(c, t, QK_CONFLICT, t->seal ? "no_key" : "seal_key", msg);
        goto out;
    }
    o->key_index = atoi(PQgetvalue(r, row, 3));
    qkms_uuid_format(kid, o->key_id);
    snprintf(idx, sizeof(idx), "%d", o->key_index);
    snprintf(dirb, sizeof(dirb), "%d", dir);
    {
        const char *wv[3] = {pk, idx, dirb};
        if (!(w = db_exec(c, t->seal ? Q_DSEAL_SEND_NEXT : Q_DSEAL_RECV_LOCK, 3, wv, NULL, NULL,
                          &st)))
            goto out;
    }
    if (t->seal && PQntuples(w) == 0) {
        st = refuse(c, t, QK_CONFLICT, "seal_exhausted",
                    "the key has sealed its last sequence number in this direction: rotate the "
                    "device's keys");
        goto out;
    }
    {
        qks_window win;
        qk_kind kind;
        const char *code;
        rc = crypto_frame_step(t->seal, key, 32, kid, t->device_id, dir, w, t->in, t->in_len, o,
                               &win);
        if (!t->seal && rc == QKS_OK) {
            const char *uv[5] = {pk, idx, dirb, topb, bitb};
            PGresult *u;
            snprintf(topb, sizeof(topb), "%lld", (long long)win.top);
            snprintf(bitb, sizeof(bitb), "%lld", (long long)win.bitmap);
            if (!(u = db_exec(c, Q_DSEAL_RECV_SET, 5, uv, NULL, NULL, &st)))
                goto out;
            PQclear(u);
        }
        if (crypto_frame_refusal(rc, t->hdr.seq, "another device", &kind, &code, msg,
                                 sizeof(msg))) {
            st = refuse(c, t, kind, code, msg);
            goto out;
        }
    }
    if (rc != QKS_OK) {
        log_with(&t->who->log, LOG_ERROR, "seal operation failed", "{s:s}", "error",
                 qks_strerror(rc));
        qk_fail(t->e, QK_INTERNAL, "internal", "internal error (see kmsd log)");
        st = DB_ERROR;
        goto out;
    }
    snprintf(msg, sizeof(msg), "%llu", (unsigned long long)o->seq);
    st = audit_append(c, t->who->name, t->seal ? "crypto.encrypt" : "crypto.decrypt",
                      t->device_id,
                      json_pack("{s:s,s:i,s:s,s:s,s:I}", "device", t->device_id, "key_index",
                                o->key_index, "direction", dir_name(dir), "seq", msg, "bytes",
                                (json_int_t)(t->seal ? t->in_len : o->len)));
out:
    OPENSSL_cleanse(key, sizeof(key));
    PQclear(w);
    PQclear(r);
    return st;
}

static qk_kind run(qk_svc *s, const qk_principal *who, dev_tx *t, qk_err *e)
{
    db_status st;
    qk_kind k;
    qk_clear(e); /* db_tx may fail before the callback ever ran */
    if (!qkp_id_valid(t->device_id))
        return qk_fail(e, QK_NOT_FOUND, "unknown_device", "no such device");
    t->s = s;
    t->who = who;
    t->e = e;
    st = db_tx(s->db, dev_tx_fn, t);
    if ((k = crypto_tx_outcome(st, t->refused, t->out, e)) != QK_OK)
        return k;
    log_with(&who->log, LOG_INFO, t->seal ? "device frame sealed" : "device frame opened",
             "{s:s,s:i,s:I}", "device_id", t->device_id, "key_index", t->out->key_index, "bytes",
             (json_int_t)(t->seal ? t->in_len : t->out->len));
    return QK_OK;
}

qk_kind crypto_device_seal(qk_svc *s, const qk_principal *who, const char *device_id,
                           int key_index, const uint8_t *pt, size_t pt_len, crypto_result *out,
                           qk_err *e)
{
    dev_tx t;
    memset(&t, 0, sizeof(t));
    memset(out, 0, sizeof(*out));
    if (pt_len > CRYPTO_DATA_MAX)
        return qk_fail(e, QK_TOO_LARGE, "payload_too_large", "plaintext over %zu bytes",
                       CRYPTO_DATA_MAX);
    if (key_index < -1 || key_index > 255)
        return qk_fail(e, QK_INVALID, "invalid_key_index", "key_index must be from 0 to 255");
    t.seal = true;
    t.device_id = device_id;
    t.want_index = key_index;
    t.in = pt;
    t.in_len = pt_len;
    t.out = out;
    return run(s, who, &t, e);
}

qk_kind crypto_device_open(qk_svc *s, const qk_principal *who, const char *device_id,
                           const uint8_t *frame, size_t len, crypto_result *out, qk_err *e)
{
    dev_tx t;
    memset(&t, 0, sizeof(t));
    memset(out, 0, sizeof(*out));
    if (len > CRYPTO_DATA_MAX + QKS_OVERHEAD)
        return qk_fail(e, QK_TOO_LARGE, "payload_too_large", "frame over %zu bytes",
                       CRYPTO_DATA_MAX + QKS_OVERHEAD);
    if (qks_peek(frame, len, &t.hdr) != QKS_OK)
        return qk_fail(e, QK_MALFORMED, "seal_format",
                       "not a sealed frame of version 1 (docs/sealing.md)");
    t.seal = false;
    t.device_id = device_id;
    t.in = frame;
    t.in_len = len;
    t.out = out;
    return run(s, who, &t, e);
}
