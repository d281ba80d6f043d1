/*
 * streams — sequential key streams (streams.h) through the stored functions
 * qkms_stream_key, qkms_stream_end and qkms_stream_reap (schema/028).
 * Authentication is device_auth.c's; the wire encoding is the door's.
 */
#include "service/streams.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

#include "hexutil.h"
#include "service/device_seen.h"
#include "service/keycache.h"
#include "service/master.h"
#include "service/session_id.h"
#include "service/device_model.h"
#include "store/pgjson.h"
#include "store/queries.h"

#define STREAM_WRAPPED_MAX (32 + KEYWRAP_OVERHEAD)
#define STREAM_KEY_BUF (KEYWRAP_MAX_KEY + 16)

int stream_key_context(const char *stream_id, const char *key_id, char *out, size_t len)
{
    int n = snprintf(out, len, "qkms/stream-key/v1\n%s\n%s", stream_id, key_id);
    return n > 0 && (size_t)n < len ? n : -1;
}

/* A UUID in lower-case text form (what kmsd hands out as stream IDs). */
static bool uuid_text(const char *s)
{
    if (!s || strlen(s) != 36)
        return false;
    for (int i = 0; i < 36; i++) {
        bool dash = i == 8 || i == 13 || i == 18 || i == 23;
        if (dash ? s[i] != '-' : !(isdigit((unsigned char)s[i]) || (s[i] >= 'a' && s[i] <= 'f')))
            return false;
    }
    return true;
}

static qk_kind internal(qk_err *e)
{
    return qk_fail(e, QK_INTERNAL, "internal", "internal error (see kmsd log)");
}

static qk_kind retry_later(qk_err *e, const char *code, const char *msg)
{
    qk_kind k = qk_fail(e, QK_UNAVAILABLE, code, "%s", msg);
    if (e)
        e->retry_after = 1;
    return k;
}

/* ---- candidates --------------------------------------------------------------- */

/* A new stream key from the entropy interface for stream_id, wrapped under
 * the master key, its plaintext kept (secure heap) for the answer. */
typedef struct {
    char stream_id[37];
    char key_id[37];
    char wrapped_hex[2 * STREAM_WRAPPED_MAX + 1];
    char master[12];
    char bits[8];
    const char *provenance;
    uint8_t *key;
    size_t key_len;
} candidate;

static void candidate_clear(candidate *cd)
{
    if (cd->key)
        OPENSSL_secure_clear_free(cd->key, 32);
    OPENSSL_cleanse(cd, sizeof(*cd));
}

static qk_kind make_candidate(qk_svc *s, const qk_principal *who, const char *stream_id,
                              int bits, candidate *cd, qk_err *e)
{
    uint8_t wrapped[STREAM_WRAPPED_MAX];
    size_t wl = sizeof(wrapped);
    char ctx[128];
    uint32_t used;
    CK_RV rv;

    candidate_clear(cd);
    if (bits != 128 && bits != 256)
        return internal(e);
    if (!(cd->key = OPENSSL_secure_malloc(32)))
        return qk_fail(e, QK_INTERNAL, "internal", "out of secure memory");
    cd->key_len = (size_t)bits / 8;
    if (uuid4_text(cd->key_id) != 0 || (stream_id ? snprintf(cd->stream_id, sizeof(cd->stream_id),
                                                             "%s", stream_id) < 0
                                                   : uuid4_text(cd->stream_id) != 0) ||
        entropy_get(s->ent, cd->key, cd->key_len, &cd->provenance) != 0) {
        candidate_clear(cd);
        return retry_later(e, "entropy_unavailable", "no entropy source available");
    }
    if (stream_key_context(cd->stream_id, cd->key_id, ctx, sizeof(ctx)) < 0) {
        candidate_clear(cd);
        return internal(e);
    }
    used = keywrap_active(s->kw);
    rv = keywrap_wrap(s->kw, (const uint8_t *)ctx, strlen(ctx), cd->key, cd->key_len, wrapped,
                      &wl);
    if (rv != CKR_OK && master_refresh(s, NULL) == 0 && keywrap_active(s->kw) != used) {
        wl = sizeof(wrapped);
        rv = keywrap_wrap(s->kw, (const uint8_t *)ctx, strlen(ctx), cd->key, cd->key_len,
                          wrapped, &wl);
    }
    if (rv != CKR_OK) {
        log_with(&who->log, LOG_ERROR, "stream key wrap failed", "{s:s}", "ckr", p11_rv_name(rv));
        candidate_clear(cd);
        return retry_later(e, "token_unavailable", "key token unavailable, retry later");
    }
    qkms_hex_encode(wrapped, wl, cd->wrapped_hex);
    snprintf(cd->master, sizeof(cd->master), "%u", keywrap_blob_version(wrapped, wl));
    snprintf(cd->bits, sizeof(cd->bits), "%d", bits);
    OPENSSL_cleanse(wrapped, sizeof(wrapped));
    return QK_OK;
}

/* ---- a key -------------------------------------------------------------------- */

static qk_kind device_principal(const qk_principal *who, const device_auth *a, qk_err *e)
{
    if (!who || who->kind != QK_PRINCIPAL_DEVICE || !who->name || !a->key ||
        strcmp(who->name, a->device_id) != 0) {
        log_emit(LOG_ERROR, "stream operation without its device", NULL);
        return internal(e);
    }
    return QK_OK;
}

/* The refusals both functions share: replay, stale, unauthenticated. true
 * with *k set when outcome is one of them. */
static bool auth_outcome(qk_svc *s, const qk_principal *who, device_auth *a, const char *outcome,
                         const char *detail, qk_err *e, qk_kind *k)
{
    if (!strcmp(outcome, "replay")) {
        a->replayed = true;
        *k = device_auth_fail(s, &who->log, a->device_id, a->key_index,
                              "nonce already used (replay)", e);
        return true;
    }
    if (!strcmp(outcome, "stale")) {
        *k = device_auth_fail(s, &who->log, a->device_id, a->key_index,
                              "timestamp outside the clock window", e);
        return true;
    }
    if (!strncmp(outcome, "unauthenticated", 15)) {
        keycache_invalidate(s->keys, a->device_id);
        *k = device_auth_fail(s, &who->log, a->device_id, a->key_index,
                              detail ? detail : outcome[15] ? outcome + 17 : "refused", e);
        return true;
    }
    return false;
}

static const struct {
    const char *outcome;
    qk_kind kind;
    const char *code;
    const char *message;
} refusals[] = {
    {"unknown_peer", QK_INVALID, "unknown_peer", "the peer is not a registered device"},
    {"peer_inactive", QK_INVALID, "peer_inactive", "the peer is suspended or revoked, or its service ended"},
    {"policy_denied", QK_FORBIDDEN, "policy_denied", "no pairing policy allows these two devices"},
    {"source_denied", QK_FORBIDDEN, "key_source_denied", "the pairing policy does not allow platform-made keys (c)"},
    {"unknown_stream", QK_NOT_FOUND, "unknown_stream", "no such stream"},
    {"ended", QK_CONFLICT, "stream_ended", "this stream has ended; open a new one"},
    {"not_a_party", QK_FORBIDDEN, "not_a_party", "this device is not a party of the stream"},
    {"peer_mismatch", QK_FORBIDDEN, "peer_mismatch", "the stream's other party is a different device"},
    {"key_consumed", QK_CONFLICT, "key_consumed", "that key was sent to both parties and is destroyed; go on with the next"},
    {"seq_out_of_window", QK_CONFLICT, "seq_out_of_window", "seq is beyond the stream's window"},
};

static qk_kind key_refused(qk_svc *s, const qk_principal *who, device_auth *a, PGresult *r,
                           qk_err *e)
{
    const char *outcome = PQgetvalue(r, 0, 0);
    qk_kind k;

    if (auth_outcome(s, who, a, outcome, PQgetisnull(r, 0, 9) ? NULL : PQgetvalue(r, 0, 9), e,
                     &k))
        return k;
    if (!strcmp(outcome, "device_inactive")) {
        keycache_invalidate(s->keys, a->device_id);
        return qk_fail(e, QK_FORBIDDEN, "device_inactive", "this device is %s", PQgetvalue(r, 0, 9));
    }
    if (!strcmp(outcome, "service_expired"))
        return qk_fail(e, QK_FORBIDDEN, "service_expired", "this device's service ended at %s",
                       PQgetvalue(r, 0, 9));
    if (!strcmp(outcome, "retry"))
        return retry_later(e, "unavailable", "the stream changed under this request; retry");
    for (size_t i = 0; i < sizeof(refusals) / sizeof(refusals[0]); i++)
        if (!strcmp(outcome, refusals[i].outcome)) {
            log_with(&who->log, LOG_WARN, "stream request refused", "{s:s,s:s}", "device_id",
                     a->device_id, "reason", outcome);
            if (!strcmp(outcome, "key_consumed") || !strcmp(outcome, "seq_out_of_window"))
                return qk_fail(e, refusals[i].kind, refusals[i].code,
                               "%s (low %s, window %s)", refusals[i].message,
                               PQgetvalue(r, 0, 6), PQgetvalue(r, 0, 7));
            return qk_fail(e, refusals[i].kind, refusals[i].code, "%s", refusals[i].message);
        }
    log_with(&who->log, LOG_ERROR, "unexpected stream outcome", "{s:s}", "outcome", outcome);
    return internal(e);
}

/* The "ok" row: its key into g, the candidate's plaintext when this request
 * made it, else unwrapped by the token. */
static qk_kind grant_from_row(qk_svc *s, const qk_principal *who, PGresult *r, candidate *cd,
                              stream_grant *g, qk_err *e)
{
    const char *whex = PQgetvalue(r, 0, 4);
    uint8_t blob[STREAM_WRAPPED_MAX];
    long bl = qkms_hex_decode(whex, strlen(whex), blob, sizeof(blob));
    char ctx[128];
    qk_kind k = QK_INTERNAL;
    CK_RV rv;

    snprintf(g->stream_id, sizeof(g->stream_id), "%s", PQgetvalue(r, 0, 1));
    snprintf(g->key_id, sizeof(g->key_id), "%s", PQgetvalue(r, 0, 2));
    g->key_bits = atoi(PQgetvalue(r, 0, 3));
    g->expires_at = atoll(PQgetvalue(r, 0, 5));
    g->low = atoll(PQgetvalue(r, 0, 6));
    g->window = atoi(PQgetvalue(r, 0, 7));
    g->created = PQgetvalue(r, 0, 8)[0] == 't';
    g->key = OPENSSL_secure_malloc(STREAM_KEY_BUF);
    g->key_len = STREAM_KEY_BUF;
    if (!g->key || bl <= 0 || stream_key_context(g->stream_id, g->key_id, ctx, sizeof(ctx)) < 0) {
        internal(e);
        goto out;
    }
    if (g->created && cd->key && !strcmp(cd->key_id, g->key_id) &&
        !strcmp(cd->stream_id, g->stream_id) && cd->key_len == (size_t)g->key_bits / 8) {
        memcpy(g->key, cd->key, cd->key_len);
        g->key_len = cd->key_len;
        rv = CKR_OK;
    } else {
        rv = keywrap_unwrap(s->kw, (const uint8_t *)ctx, strlen(ctx), blob, (size_t)bl, g->key,
                            &g->key_len);
        if (p11_rv_kind(rv) == P11_KIND_NOT_FOUND && master_refresh(s, NULL) == 0) {
            g->key_len = STREAM_KEY_BUF;
            rv = keywrap_unwrap(s->kw, (const uint8_t *)ctx, strlen(ctx), blob, (size_t)bl,
                                g->key, &g->key_len);
        }
    }
    if (rv != CKR_OK || g->key_len != (size_t)g->key_bits / 8) {
        log_with(&who->log, LOG_ERROR, "stream key unwrap failed", "{s:s,s:s}", "ckr",
                 p11_rv_name(rv), "key_id", g->key_id);
        if (rv == CKR_OK)
            internal(e);
        else
            qk_from_token(e, rv, NULL);
        goto out;
    }
    k = QK_OK;
out:
    OPENSSL_cleanse(blob, sizeof(blob));
    if (k != QK_OK)
        stream_grant_clear(g);
    return k;
}

void stream_grant_clear(stream_grant *g)
{
    if (g->key)
        OPENSSL_secure_clear_free(g->key, STREAM_KEY_BUF);
    memset(g, 0, sizeof(*g));
}

qk_kind streams_key(qk_svc *s, const qk_principal *who, device_auth *a, const stream_ask *ask,
                    stream_grant *g, qk_err *e)
{
    char pk[24], kidx[8], ts[24], skew[12], seq[24];
    candidate cd;
    PGresult *r = NULL;
    db_status st;
    qk_kind k;

    memset(g, 0, sizeof(*g));
    memset(&cd, 0, sizeof(cd));
    if ((k = device_principal(who, a, e)) != QK_OK)
        return k;
    if ((ask->stream_id && !uuid_text(ask->stream_id)) || !qkp_id_valid(ask->peer_id) ||
        !strcmp(ask->peer_id, a->device_id) || ask->seq < 0)
        return qk_fail(e, QK_INVALID, "invalid_request",
                       "stream_id must be a stream's ID, peer_id another device's, seq >= 0");
    snprintf(pk, sizeof(pk), "%lld", a->device_pk);
    snprintf(kidx, sizeof(kidx), "%d", a->key_index);
    snprintf(ts, sizeof(ts), "%lld", (long long)ask->ts);
    snprintf(skew, sizeof(skew), "%d", s->cfg->protocol_clock_skew);
    snprintf(seq, sizeof(seq), "%lld", (long long)ask->seq);
    /* The first call goes without a candidate: most requests find the key
     * made by the other party. need_key says which stream and length. */
    for (int attempt = 0; attempt < 4; attempt++) {
        const char *vals[14] = {pk,   kidx, (const char *)a->nonce, ts,   skew, ask->stream_id,
                                ask->peer_id, seq, NULL, NULL, NULL, NULL, NULL, NULL};
        int lens[14] = {0, 0, QKP_NONCE_LEN, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0};
        int fmts[14] = {0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0};
        const char *outcome;

        if (cd.key) {
            vals[8] = cd.key_id;
            vals[9] = cd.wrapped_hex;
            vals[10] = cd.master;
            vals[11] = cd.provenance;
            vals[12] = cd.bits;
            vals[13] = cd.stream_id;
        }
        PQclear(r);
        if (!(r = db_query(s->db, Q_STREAM_KEY, 14, vals, lens, fmts, &st))) {
            k = db_fail(e, st);
            goto out;
        }
        outcome = PQgetvalue(r, 0, 0);
        if (!strcmp(outcome, "ok")) {
            if ((k = grant_from_row(s, who, r, &cd, g, e)) == QK_OK) {
                g->seq = ask->seq;
                device_seen_note(s->contact, a->device_pk);
                if (g->created && ask->seq == 0 && !ask->stream_id)
                    log_with(&who->log, LOG_INFO, "stream key made", "{s:s,s:s}", "stream_id",
                             g->stream_id, "key_id", g->key_id);
            }
            goto out;
        }
        if (!strcmp(outcome, "need_key") || !strcmp(outcome, "master_inactive")) {
            if (outcome[0] == 'm' && master_refresh(s, NULL) != 0) {
                k = db_fail(e, DB_UNAVAILABLE);
                goto out;
            }
            if ((k = make_candidate(s, who, PQgetisnull(r, 0, 1) ? NULL : PQgetvalue(r, 0, 1),
                                    atoi(PQgetvalue(r, 0, 3)), &cd, e)) != QK_OK)
                goto out;
            continue;
        }
        k = key_refused(s, who, a, r, e);
        goto out;
    }
    log_with(&who->log, LOG_ERROR, "stream key could not be settled", "{s:s}", "device_id",
             a->device_id);
    k = retry_later(e, "unavailable", "the stream key could not be settled; retry");
out:
    PQclear(r);
    candidate_clear(&cd);
    return k;
}

qk_kind streams_end(qk_svc *s, const qk_principal *who, device_auth *a, const char *stream_id,
                    int64_t ts, qk_err *e)
{
    char pk[24], kidx[8], tsb[24], skew[12];
    const char *vals[6] = {pk, kidx, (const char *)a->nonce, tsb, skew, stream_id};
    int lens[6] = {0, 0, QKP_NONCE_LEN, 0, 0, 0}, fmts[6] = {0, 0, 1, 0, 0, 0};
    const char *outcome;
    PGresult *r;
    db_status st;
    qk_kind k;

    if ((k = device_principal(who, a, e)) != QK_OK)
        return k;
    if (!uuid_text(stream_id))
        return qk_fail(e, QK_INVALID, "invalid_request", "stream_id must be a stream's ID");
    snprintf(pk, sizeof(pk), "%lld", a->device_pk);
    snprintf(kidx, sizeof(kidx), "%d", a->key_index);
    snprintf(tsb, sizeof(tsb), "%lld", (long long)ts);
    snprintf(skew, sizeof(skew), "%d", s->cfg->protocol_clock_skew);
    if (!(r = db_query(s->db, Q_STREAM_END, 6, vals, lens, fmts, &st)))
        return db_fail(e, st);
    outcome = PQgetvalue(r, 0, 0);
    if (auth_outcome(s, who, a, outcome, NULL, e, &k))
        ;
    else if (!strcmp(outcome, "ok")) {
        log_with(&who->log, LOG_INFO, "stream ended", "{s:s,s:s,s:s}", "device_id", a->device_id,
                 "stream_id", stream_id, "reason", "ended_by_party");
        device_seen_note(s->contact, a->device_pk);
        k = QK_OK;
    } else if (!strcmp(outcome, "ended"))
        k = qk_fail(e, QK_CONFLICT, "stream_ended", "this stream has already ended");
    else if (!strcmp(outcome, "unknown"))
        k = qk_fail(e, QK_NOT_FOUND, "unknown_stream", "no such stream");
    else if (!strcmp(outcome, "not_a_party"))
        k = qk_fail(e, QK_FORBIDDEN, "not_a_party", "this device is not a party of the stream");
    else
        k = internal(e);
    PQclear(r);
    return k;
}

int streams_reap(qk_svc *s)
{
    char days[16], lim[16];
    const char *vals[2] = {days, lim};
    db_status st;
    PGresult *r;
    int n;

    snprintf(days, sizeof(days), "%d", s->cfg->session_tombstone_days);
    snprintf(lim, sizeof(lim), "%d", 1000);
    if (!(r = db_query(s->db, Q_STREAM_REAP, 2, vals, NULL, NULL, &st)))
        return -1;
    n = atoi(PQgetvalue(r, 0, 0));
    PQclear(r);
    if (n > 0)
        log_emit(LOG_INFO, "expired streams destroyed", "{s:i}", "count", n);
    return n;
}

/* ---- the operator's view ------------------------------------------------------ */

static json_t *stream_json(const PGresult *r, int i)
{
    return json_pack("{s:o,s:[o,o],s:o,s:o,s:i,s:i,s:I,s:I,s:o,s:o,s:o,s:i,s:s}", "stream_id",
                     pgjson_text(r, i, 0), "parties", pgjson_text(r, i, 1), pgjson_text(r, i, 2),
                     "opened_by", pgjson_text(r, i, 3), "policy", pgjson_text(r, i, 4),
                     "key_bits", atoi(PQgetvalue(r, i, 5)), "window", atoi(PQgetvalue(r, i, 6)),
                     "low", (json_int_t)atoll(PQgetvalue(r, i, 7)), "keys_live",
                     (json_int_t)atoll(PQgetvalue(r, i, 8)), "created_at", pgjson_time(r, i, 9),
                     "last_used_at", pgjson_time(r, i, 10), "expires_at", pgjson_time(r, i, 11),
                     "idle_timeout_s", atoi(PQgetvalue(r, i, 12)), "state", "live");
}

static json_t *tombstone_json(const PGresult *r, int i)
{
    return json_pack("{s:o,s:[o,o],s:o,s:o,s:I,s:o,s:s}", "stream_id", pgjson_text(r, i, 0),
                     "parties", pgjson_text(r, i, 1), pgjson_text(r, i, 2), "created_at",
                     pgjson_time(r, i, 3), "ended_at", pgjson_time(r, i, 4), "keys_consumed",
                     (json_int_t)atoll(PQgetvalue(r, i, 5)), "reason", pgjson_text(r, i, 6),
                     "state", "ended");
}

static qk_kind query_streams(qk_svc *s, const char *device, const char *stream_id, long limit,
                             json_t **out, qk_err *e)
{
    char lim[16];
    const char *vals[3] = {device, stream_id, lim};
    db_status st;
    PGresult *r;

    snprintf(lim, sizeof(lim), "%ld", limit);
    if (!(r = db_query(s->db, Q_STREAMS_LIST, 3, vals, NULL, NULL, &st)))
        return db_fail(e, st);
    *out = pgjson_rows(r, stream_json);
    PQclear(r);
    return QK_OK;
}

qk_kind streams_list(qk_svc *s, const char *device, long limit, json_t **out, qk_err *e)
{
    *out = NULL;
    if ((device && !device_id_valid(device)) || limit < 1 || limit > 1000)
        return qk_fail(e, QK_MALFORMED, "invalid_query", "bad device or limit");
    return query_streams(s, device, NULL, limit, out, e);
}

qk_kind streams_get(qk_svc *s, const char *stream_id, json_t **out, qk_err *e)
{
    json_t *arr = NULL;
    const char *vals[1] = {stream_id};
    db_status st;
    PGresult *r;
    qk_kind k;

    *out = NULL;
    if (!uuid_text(stream_id))
        return qk_fail(e, QK_NOT_FOUND, "not_found", "no such stream");
    if ((k = query_streams(s, NULL, stream_id, 1, &arr, e)) != QK_OK)
        return k;
    if (json_array_size(arr) == 1) {
        *out = json_incref(json_array_get(arr, 0));
        json_decref(arr);
        return QK_OK;
    }
    json_decref(arr);
    if (!(r = db_query(s->db, Q_STREAM_TOMBSTONE, 1, vals, NULL, NULL, &st)))
        return db_fail(e, st);
    if (PQntuples(r) == 1)
        *out = tombstone_json(r, 0);
    PQclear(r);
    return *out ? QK_OK : qk_fail(e, QK_NOT_FOUND, "not_found", "no such stream");
}

qk_kind streams_end_by_operator(qk_svc *s, const qk_principal *who, const char *stream_id,
                                qk_err *e)
{
    const char *vals[2] = {stream_id, who->name};
    db_status st;
    PGresult *r;
    int n;

    if (!uuid_text(stream_id))
        return qk_fail(e, QK_NOT_FOUND, "not_found", "no such stream");
    if (!(r = db_query(s->db, Q_STREAM_END_OPERATOR, 2, vals, NULL, NULL, &st)))
        return db_fail(e, st);
    n = PQntuples(r);
    PQclear(r);
    if (n == 0)
        return qk_fail(e, QK_NOT_FOUND, "not_found", "no live stream with that ID");
    log_with(&who->log, LOG_INFO, "stream ended", "{s:s,s:s,s:s}", "stream_id", stream_id,
             "reason", "ended_by_operator", "by", who->name);
    return QK_OK;
}
