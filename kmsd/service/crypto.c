/*
 * crypto — random bytes, and frames sealed and opened under a session key
 * for a party of the session (crypto.h). The key and the party are
 * qkms_crypto_key's (schema/032), the frame is qkms_seal.h's, the replay
 * window and the send counter are rows of seal_state.
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
#include "service/master.h"
#include "service/session_id.h"
#include "store/queries.h"

#define CRYPTO_KEY_BUF (KEYWRAP_MAX_KEY + 16)
#define CRYPTO_WRAPPED_MAX (32 + KEYWRAP_OVERHEAD)

void crypto_result_clear(crypto_result *r)
{
    if (r->data) {
        OPENSSL_cleanse(r->data, r->len);
        free(r->data);
    }
    memset(r, 0, sizeof(*r));
}

static const char *dir_name(int d) { return d == QKS_A2B ? "a2b" : d == QKS_B2A ? "b2a" : ""; }

int crypto_frame_step(bool seal, const uint8_t *key, size_t key_len, const uint8_t kid[16],
                      const char *aad_id, int dir, const PGresult *w, const uint8_t *in,
                      size_t in_len, crypto_result *o, qks_window *win)
{
    memset(win, 0, sizeof(*win));
    if (seal) {
        o->seq = (uint64_t)strtoll(PQgetvalue(w, 0, 0), NULL, 10); /* the bit pattern */
        o->len = in_len + QKS_OVERHEAD;
        if (!(o->data = malloc(o->len)))
            return QKS_ERR_INTERNAL;
        return qks_seal(key, key_len, kid, aad_id, dir, o->seq, in, in_len, o->data, o->len,
                        &o->len);
    }
    if (!PQgetisnull(w, 0, 0)) {
        win->any = 1;
        win->top = (uint64_t)strtoll(PQgetvalue(w, 0, 0), NULL, 10);
        win->bitmap = (uint64_t)strtoll(PQgetvalue(w, 0, 1), NULL, 10);
    }
    o->len = in_len - QKS_OVERHEAD;
    if (!(o->data = malloc(o->len ? o->len : 1)))
        return QKS_ERR_INTERNAL;
    return qks_open(key, key_len, kid, aad_id, dir, win, in, in_len, o->data, o->len, &o->len,
                    &o->seq);
}

bool crypto_frame_refusal(int rc, uint64_t seq, const char *what, qk_kind *kind,
                          const char **code, char *msg, size_t len)
{
    if (rc == QKS_ERR_REPLAY) {
        *kind = QK_CONFLICT;
        *code = "seal_replay";
        snprintf(msg, len,
                 "frame %llu was opened already, or is too far behind the newest one opened",
                 (unsigned long long)seq);
        return true;
    }
    if (rc == QKS_ERR_AUTH) {
        *kind = QK_MALFORMED;
        *code = "seal_auth";
        snprintf(msg, len, "the frame does not authenticate (altered, or sealed for %s)", what);
        return true;
    }
    return false;
}

qk_kind crypto_random(qk_svc *s, const qk_principal *who, size_t n, uint8_t *out,
                      const char **provenance, qk_err *e)
{
    db_conn *c = NULL;
    db_status st;
    qk_kind k;

    *provenance = NULL;
    if (n < 1 || n > CRYPTO_RANDOM_MAX)
        return qk_fail(e, QK_INVALID, "invalid_bytes", "bytes must be an integer from 1 to %d",
                       CRYPTO_RANDOM_MAX);
    if (entropy_get(s->ent, out, n, provenance) != 0) {
        k = qk_fail(e, QK_UNAVAILABLE, "entropy_unavailable",
                    "no entropy source may serve now (entropy_policy)");
        e->retry_after = 1;
        goto out;
    }
    /* Handed out only once the audit row is written: a random number the
     * audit does not know of never leaves. */
    if (!(c = db_acquire(s->db, &st)) ||
        (st = audit_append(c, who->name, "crypto.random", NULL,
                           json_pack("{s:I,s:s}", "bytes", (json_int_t)n, "provenance",
                                     *provenance))) != DB_OK) {
        k = db_fail(e, st);
        goto out;
    }
    log_with(&who->log, LOG_DEBUG, "random bytes served", "{s:i,s:s}", "bytes", (int)n,
             "provenance", *provenance);
    k = QK_OK;
out:
    if (c)
        db_release(s->db, c);
    if (k != QK_OK)
        OPENSSL_cleanse(out, n);
    return k;
}

/* One seal or open, run by db_tx (and again on a serialization failure). */
typedef struct {
    qk_svc *s;
    const qk_principal *who;
    bool seal;
    const char *session_id;
    uint8_t hash[32], legacy[32];
    char want_key[37]; /* seal: "" = the default key; open: the frame's */
    const uint8_t *in;
    size_t in_len;
    qks_header hdr; /* open: the frame's header */
    crypto_result *out;
    qk_err *e;     /* a refusal (audited, committed) or a fault (rolled back) */
    bool refused;
} crypto_tx;

/* A refusal: its audit row, committed with nothing else. */
static db_status refuse(db_conn *c, crypto_tx *t, const char *hash_hex, qk_kind kind,
                        const char *code, const char *msg)
{
    char hh[65];
    json_t *d;
    qk_fail(t->e, kind, code, "%s", msg);
    t->refused = true;
    if (!hash_hex) {
        qkms_hex_encode(t->hash, 32, hh);
        hash_hex = hh;
    }
    log_with(&t->who->log, LOG_INFO, "crypto request refused", "{s:s,s:s}", "op",
             t->seal ? "encrypt" : "decrypt", "code", code);
    d = json_pack("{s:s,s:s,s:s,s:s?,s:I}", "op", t->seal ? "encrypt" : "decrypt", "code", code,
                  "session_hash", hash_hex, "key_id",
                  t->seal ? (t->want_key[0] ? t->want_key : NULL) : t->out->key_id, "bytes",
                  (json_int_t)(t->seal ? t->in_len : t->in_len - QKS_OVERHEAD));
    if (d && !t->seal) { /* seqs are unsigned 64-bit: decimal text, as on the wire */
        char sq[24];
        snprintf(sq, sizeof(sq), "%llu", (unsigned long long)t->hdr.seq);
        json_object_set_new(d, "seq", json_string(sq));
    }
    db_status st = audit_append(c, t->who->name, "crypto.refused",
                                t->out->party[0] ? t->out->party : NULL, d);
    if (st != DB_OK) { /* no refusal without its audit row: the caller answers st */
        qk_clear(t->e);
        t->refused = false;
    }
    return st;
}

static qk_kind unwrap_key(crypto_tx *t, const char *hash_hex, const char *key_id, const char *whex,
                          uint8_t *key, size_t *key_len)
{
    uint8_t blob[CRYPTO_WRAPPED_MAX];
    char ctx[160];
    long bl = -1;
    CK_RV rv;
    qk_kind k = QK_INTERNAL;

    /* bytea in text form: "\x" then hex. */
    if (strlen(whex) > 2)
        bl = qkms_hex_decode(whex + 2, strlen(whex) - 2, blob, sizeof(blob));
    if (bl <= 0 || session_key_context(hash_hex, key_id, ctx, sizeof(ctx)) < 0) {
        log_with(&t->who->log, LOG_ERROR, "session key row unreadable", "{s:s}", "key_id", key_id);
        qk_fail(t->e, QK_INTERNAL, "internal", "internal error (see kmsd log)");
        goto out;
    }
    *key_len = CRYPTO_KEY_BUF;
    rv = keywrap_unwrap(t->s->kw, (const uint8_t *)ctx, strlen(ctx), blob, (size_t)bl, key,
                        key_len);
    if (p11_rv_kind(rv) == P11_KIND_NOT_FOUND && master_refresh(t->s, NULL) == 0) {
        /* Rewrapped by another instance under a version not loaded yet. */
        *key_len = CRYPTO_KEY_BUF;
        rv = keywrap_unwrap(t->s->kw, (const uint8_t *)ctx, strlen(ctx), blob, (size_t)bl, key,
                            key_len);
    }
    if (rv != CKR_OK) {
        log_with(&t->who->log, LOG_ERROR, "session key unwrap failed", "{s:s,s:s}", "ckr",
                 p11_rv_name(rv), "key_id", key_id);
        qk_from_token(t->e, rv, NULL);
        goto out;
    }
    k = QK_OK;
out:
    OPENSSL_cleanse(blob, sizeof(blob));
    return k;
}

static db_status crypto_tx_fn(db_conn *c, void *arg)
{
    crypto_tx *t = arg;
    crypto_result *o = t->out;
    char tokid[24];
    const char *vals[4] = {tokid, (const char *)t->hash, (const char *)t->legacy,
                           t->want_key[0] ? t->want_key : NULL};
    int lens[4] = {0, 32, 32, 0}, fmts[4] = {0, 1, 1, 0};
    const char *outcome, *hash_hex, *key_dir, *spk;
    char dirb[12], topb[24], bitb[24], msg[200];
    uint8_t *key = NULL, kid[16];
    size_t key_len = 0;
    PGresult *r = NULL, *w = NULL;
    db_status st;
    int dir, rc;

    qk_clear(t->e);
    t->refused = false;
    crypto_result_clear(o);
    snprintf(tokid, sizeof(tokid), "%lld", t->who->token_id);
    if (!t->seal)
        qkms_uuid_format(t->hdr.key_id, o->key_id);
    if (!(r = db_exec(c, Q_CRYPTO_KEY, 4, vals, lens, fmts, &st)))
        goto out;
    outcome = PQgetvalue(r, 0, 0);
    if (!PQgetisnull(r, 0, 1))
        snprintf(o->party, sizeof(o->party), "%s", PQgetvalue(r, 0, 1));
    if (strcmp(outcome, "ok") != 0) {
        static const struct {
            const char *outcome;
            qk_kind kind;
            const char *code, *msg;
        } map[] = {
            {"no_party", QK_UNAUTHENTICATED, "unauthenticated", "the token is no longer valid"},
            {"party_inactive", QK_FORBIDDEN, "party_inactive",
             "the device this token acts for is suspended or revoked"},
            {"unknown_session", QK_NOT_FOUND, "unknown_session", "no such session"},
            {"ended", QK_CONFLICT, "session_ended", "the session has ended"},
            {"not_a_party", QK_FORBIDDEN, "not_a_party",
             "the party this token acts for is not a party of the session"},
        };
        for (size_t i = 0; i < sizeof(map) / sizeof(map[0]); i++)
            if (!strcmp(outcome, map[i].outcome)) {
                st = refuse(c, t, NULL, map[i].kind, map[i].code, map[i].msg);
                goto out;
            }
        if (!strcmp(outcome, "no_key")) {
            if (!t->seal)
                snprintf(msg, sizeof(msg),
                         "the frame's key %s is not a live key of the session (destroyed with "
                         "an older epoch, or never made)",
                         o->key_id);
            else if (t->want_key[0])
                snprintf(msg, sizeof(msg), "key %s is not a live key of the session",
                         t->want_key);
            else
                snprintf(msg, sizeof(msg), "the session's current epoch has no shared key yet");
            st = refuse(c, t, NULL, QK_CONFLICT, t->seal ? "no_key" : "seal_key", msg);
            goto out;
        }
        log_with(&t->who->log, LOG_ERROR, "unexpected crypto outcome", "{s:s}", "outcome",
                 outcome);
        qk_fail(t->e, QK_INTERNAL, "internal", "internal error (see kmsd log)");
        st = DB_ERROR;
        goto out;
    }
    snprintf(o->peer, sizeof(o->peer), "%s", PQgetvalue(r, 0, 2));
    spk = PQgetvalue(r, 0, 3);
    hash_hex = PQgetvalue(r, 0, 4);
    snprintf(o->key_id, sizeof(o->key_id), "%s", PQgetvalue(r, 0, 5));
    key_dir = PQgetvalue(r, 0, 8);
    /* The party seals in its own direction and opens its peer's. */
    dir = t->seal ? qks_direction_of(o->party, o->peer) : qks_direction_of(o->peer, o->party);
    o->direction = dir;
    if (dir < 0) {
        qk_fail(t->e, QK_INTERNAL, "internal", "internal error (see kmsd log)");
        st = DB_ERROR;
        goto out;
    }
    if (!t->seal && t->hdr.direction != dir) {
        snprintf(msg, sizeof(msg),
                 "the frame was sealed by this token's own party (direction %s), not by its peer",
                 dir_name(t->hdr.direction));
        st = refuse(c, t, hash_hex, QK_INVALID, "seal_direction", msg);
        goto out;
    }
    if (key_dir[0] && strcmp(key_dir, dir_name(dir)) != 0) {
        snprintf(msg, sizeof(msg), "the key is the direction key %s: it seals only that direction",
                 key_dir);
        st = refuse(c, t, hash_hex, QK_INVALID, "seal_direction", msg);
        goto out;
    }
    snprintf(dirb, sizeof(dirb), "%d", dir);
    {
        const char *wv[3] = {o->key_id, dirb, spk};
        if (!(w = db_exec(c, t->seal ? Q_SEAL_SEND_NEXT : Q_SEAL_RECV_LOCK, 3, wv, NULL, NULL,
                          &st)))
            goto out;
    }
    if (t->seal && PQntuples(w) == 0) {
        st = refuse(c, t, hash_hex, QK_CONFLICT, "seal_exhausted",
                    "the key has sealed its last sequence number in this direction: ask for the "
                    "session's next epoch");
        goto out;
    }
    key = OPENSSL_secure_malloc(CRYPTO_KEY_BUF);
    if (!key || qks_uuid_parse(o->key_id, kid) != QKS_OK) {
        qk_fail(t->e, QK_INTERNAL, "internal", "internal error (see kmsd log)");
        st = DB_ERROR;
        goto out;
    }
    if (unwrap_key(t, hash_hex, o->key_id, PQgetvalue(r, 0, 7), key, &key_len) != QK_OK) {
        st = DB_ERROR; /* rolled back: no seq spent, nothing audited (the log says it) */
        goto out;
    }
    {
        qks_window win;
        qk_kind kind;
        const char *code;
        rc = crypto_frame_step(t->seal, key, key_len, kid, t->session_id, dir, w, t->in,
                               t->in_len, o, &win);
        if (!t->seal && rc == QKS_OK) {
            const char *uv[4] = {o->key_id, dirb, topb, bitb};
            PGresult *u;
            snprintf(topb, sizeof(topb), "%lld", (long long)win.top);
            snprintf(bitb, sizeof(bitb), "%lld", (long long)win.bitmap);
            if (!(u = db_exec(c, Q_SEAL_RECV_SET, 4, uv, NULL, NULL, &st)))
                goto out;
            PQclear(u);
        }
        if (crypto_frame_refusal(rc, t->hdr.seq, "another session", &kind, &code, msg,
                                 sizeof(msg))) {
            st = refuse(c, t, hash_hex, kind, code, msg);
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
    st = audit_append(c, t->who->name, t->seal ? "crypto.encrypt" : "crypto.decrypt", o->party,
                      json_pack("{s:s,s:s,s:s,s:s,s:s,s:I}", "session_hash", hash_hex, "key_id",
                                o->key_id, "peer", o->peer, "direction", dir_name(dir), "seq",
                                msg, "bytes",
                                (json_int_t)(t->seal ? t->in_len : o->len)));
out:
    if (key)
        OPENSSL_secure_clear_free(key, CRYPTO_KEY_BUF);
    OPENSSL_cleanse(kid, sizeof(kid));
    PQclear(w);
    PQclear(r);
    return st;
}

qk_kind crypto_tx_outcome(db_status st, bool refused, crypto_result *out, qk_err *e)
{
    if (st == DB_OK && !refused)
        return QK_OK;
    crypto_result_clear(out);
    if (st != DB_OK)
        return !refused && e->kind != QK_OK ? e->kind : db_fail(e, st);
    return e->kind;
}

static qk_kind run(qk_svc *s, const qk_principal *who, crypto_tx *t, qk_err *e)
{
    db_status st;
    qk_kind k;
    qk_clear(e); /* db_tx may fail before the callback ever ran */
    if (!qkp_id_valid(t->session_id))
        return qk_fail(e, QK_NOT_FOUND, "unknown_session", "no such session");
    if (session_hash(t->session_id, t->hash) != 0)
        return qk_fail(e, QK_INTERNAL, "internal", "internal error (see kmsd log)");
    session_hash_legacy(t->session_id, t->legacy);
    t->s = s;
    t->who = who;
    t->e = e;
    st = db_tx(s->db, crypto_tx_fn, t);
    if ((k = crypto_tx_outcome(st, t->refused, t->out, e)) != QK_OK)
        return k;
    {
        char sq[24];
        snprintf(sq, sizeof(sq), "%llu", (unsigned long long)t->out->seq);
        log_with(&who->log, LOG_INFO, t->seal ? "frame sealed" : "frame opened",
                 "{s:s,s:s,s:s,s:s,s:I}", "party", t->out->party, "key_id", t->out->key_id,
                 "direction", dir_name(t->out->direction), "seq", sq, "bytes",
                 (json_int_t)(t->seal ? t->in_len : t->out->len));
    }
    return QK_OK;
}

qk_kind crypto_seal(qk_svc *s, const qk_principal *who, const char *session_id,
                    const char *key_id, const uint8_t *pt, size_t pt_len, crypto_result *out,
                    qk_err *e)
{
    crypto_tx t;
    uint8_t kid[16];

    memset(&t, 0, sizeof(t));
    memset(out, 0, sizeof(*out));
    t.seal = true;
    t.session_id = session_id;
    t.in = pt;
    t.in_len = pt_len;
    t.out = out;
    if (pt_len > CRYPTO_DATA_MAX)
        return qk_fail(e, QK_TOO_LARGE, "payload_too_large", "plaintext over %zu bytes", CRYPTO_DATA_MAX);
    if (key_id) {
        if (qks_uuid_parse(key_id, kid) != QKS_OK)
            return qk_fail(e, QK_INVALID, "invalid_key_id", "key_id must be a UUID");
        qkms_uuid_format(kid, t.want_key); /* canonical, lower case */
    }
    return run(s, who, &t, e);
}

qk_kind crypto_open(qk_svc *s, const qk_principal *who, const char *session_id,
                    const uint8_t *frame, size_t len, crypto_result *out, qk_err *e)
{
    crypto_tx t;

    memset(&t, 0, sizeof(t));
    memset(out, 0, sizeof(*out));
    t.seal = false;
    t.session_id = session_id;
    t.in = frame;
    t.in_len = len;
    t.out = out;
    if (len > CRYPTO_DATA_MAX + QKS_OVERHEAD)
        return qk_fail(e, QK_TOO_LARGE, "payload_too_large", "frame over %zu bytes",
                       CRYPTO_DATA_MAX + QKS_OVERHEAD);
    if (qks_peek(frame, len, &t.hdr) != QKS_OK)
        return qk_fail(e, QK_MALFORMED, "seal_format",
                       "not a sealed frame of version 1 (docs/sealing.md)");
    qkms_uuid_format(t.hdr.key_id, t.want_key); /* the key the frame names */
    return run(s, who, &t, e);
}
