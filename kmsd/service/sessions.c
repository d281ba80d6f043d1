/*
 * sessions — the session service (sessions.h): issuing one paired key per
 * session ID through the stored function qkms_session_key, ending sessions
 * (qkms_session_end, and on an operator's word), reaping expired ones, and
 * the operator's view.
 * Authentication is device_auth.c's, the session ID hash session_id.c's;
 * the wire encoding is the doors'.
 */
#include "service/sessions.h"

#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/rand.h>

#include "hexutil.h"
#include "qkms_proto2.h"
#include "service/device_model.h"
#include "service/keycache.h"
#include "service/master.h"
#include "service/session_id.h"
#include "service/session_metrics.h"
#include "service/device_seen.h"
#include "service/session_seen.h"
#include "store/pgjson.h"
#include "store/queries.h"

#define SESSION_WRAPPED_MAX (32 + KEYWRAP_OVERHEAD)
#define SESSION_KEY_BUF (KEYWRAP_MAX_KEY + 16)

/* ---- candidate keys --------------------------------------------------------- */

/* A candidate session key: wrapped for the database, and the plaintext kept
 * (secure heap) until the answer, so that the request that creates the
 * session needs no token unwrap to deliver it. A request that goes without
 * one (its session was seen to exist) has key == NULL and empty strings,
 * i.e. NULL parameters. */
typedef struct {
    char key_id[37];
    char wrapped_hex[2 * SESSION_WRAPPED_MAX + 1];
    char master[12];
    char bits[8];
    const char *provenance;
    char provenance_buf[48];
    uint8_t *key; /* bits / 8 bytes, secure heap; NULL: no candidate */
    size_t key_len;
    uint8_t *sr;  /* key source 'a': the server random, secure heap */
} candidate;

static void candidate_clear(candidate *cd)
{
    if (cd->key)
        OPENSSL_secure_clear_free(cd->key, 32);
    if (cd->sr)
        OPENSSL_secure_clear_free(cd->sr, QKP2_RANDOM_LEN);
    OPENSSL_cleanse(cd, sizeof(*cd));
}

static qk_kind no_entropy(qk_err *e)
{
    qk_kind r = qk_fail(e, QK_UNAVAILABLE, "entropy_unavailable", "no entropy source available");
    if (e)
        e->retry_after = 1;
    return r;
}

/* The candidate's key bytes by the request's key source (sessions.h): from
 * the entropy interface ('c', v1), or derived from the initiator's random
 * ('b') and a server random from the entropy interface ('a'). The
 * provenance recorded says which: the entropy source's name, "device", or
 * "device+" and the source's name. */
static qk_kind candidate_key(qk_svc *s, const session_ask *ask, int bits, candidate *cd,
                             uint8_t *key, qk_err *e)
{
    const char *src = NULL;

    if (ask->key_source != 'a' && ask->key_source != 'b') {
        if (entropy_get(s->ent, key, (size_t)bits / 8, &cd->provenance) != 0)
            return no_entropy(e);
        return QK_OK;
    }
    if (!ask->cr || !ask->h)
        return qk_fail(e, QK_INTERNAL, "internal", "internal error (see kmsd log)");
    if (ask->key_source == 'a') {
        if (!(cd->sr = OPENSSL_secure_malloc(QKP2_RANDOM_LEN)))
            return qk_fail(e, QK_INTERNAL, "internal", "out of secure memory");
        if (entropy_get(s->ent, cd->sr, QKP2_RANDOM_LEN, &src) != 0)
            return no_entropy(e);
    }
    snprintf(cd->provenance_buf, sizeof(cd->provenance_buf), "%s%s", src ? "device+" : "device",
             src ? src : "");
    cd->provenance = cd->provenance_buf;
    if (qkp2_session_key(ask->cr, cd->sr, ask->h, cd->key_id, key, (size_t)bits / 8) != 0)
        return qk_fail(e, QK_INTERNAL, "internal", "internal error (see kmsd log)");
    return QK_OK;
}

/* A new session key from the entropy interface, wrapped under the master
 * key, into cd (its earlier key, if any, is wiped). */
static qk_kind make_candidate(qk_svc *s, const qk_principal *who, const session_ask *ask,
                              const uint8_t hash[32], int bits, candidate *cd, qk_err *e)
{
    uint8_t *key, wrapped[SESSION_WRAPPED_MAX];
    size_t wl = sizeof(wrapped);
    char ctx[160];
    uint32_t used;
    qk_kind r;
    CK_RV rv;

    candidate_clear(cd);
    if (!(key = OPENSSL_secure_malloc(32)))
        return qk_fail(e, QK_INTERNAL, "internal", "out of secure memory");
    if (uuid4_text(cd->key_id) != 0) {
        OPENSSL_secure_clear_free(key, 32);
        qk_fail(e, QK_UNAVAILABLE, "entropy_unavailable", "the RNG failed; retry later");
        e->retry_after = 1;
        return QK_UNAVAILABLE;
    }
    if ((r = candidate_key(s, ask, bits, cd, key, e)) != QK_OK)
        goto out;
    session_key_context_of(hash, cd->key_id, ctx, sizeof(ctx));
    used = keywrap_active(s->kw);
    rv = keywrap_wrap(s->kw, (const uint8_t *)ctx, strlen(ctx), key, (size_t)bits / 8, wrapped, &wl);
    if (rv != CKR_OK && master_refresh(s, NULL) == 0 && keywrap_active(s->kw) != used) {
        /* The version we think active may have been retired and destroyed
         * by another instance since our last refresh: look again, once. */
        wl = sizeof(wrapped);
        rv = keywrap_wrap(s->kw, (const uint8_t *)ctx, strlen(ctx), key, (size_t)bits / 8,
                          wrapped, &wl);
    }
    if (rv != CKR_OK) {
        /* Whatever the token said, a key cannot be made now: the client
         * retries (qk_from_token would answer 500 for some codes). */
        log_with(&who->log, LOG_ERROR, "session key wrap failed", "{s:s}", "ckr", p11_rv_name(rv));
        r = qk_fail(e, QK_UNAVAILABLE, "token_unavailable", "key token unavailable, retry later");
        if (e)
            e->retry_after = 1;
        goto out;
    }
    qkms_hex_encode(wrapped, wl, cd->wrapped_hex);
    snprintf(cd->master, sizeof(cd->master), "%u", keywrap_blob_version(wrapped, wl));
    snprintf(cd->bits, sizeof(cd->bits), "%d", bits);
    cd->key = key;
    cd->key_len = (size_t)bits / 8;
    key = NULL;
    r = QK_OK;
    session_metrics_count(s->smetrics, SESSION_EV_CANDIDATE_MADE, 1);
out:
    if (key)
        OPENSSL_secure_clear_free(key, 32);
    return r;
}

/* ---- issuing ---------------------------------------------------------------- */

/* What a request's stored-function call needs besides the device_auth. */
typedef struct {
    const char *sid, *peer;
    bool delivered;
    char ts[24], skew[12], pk[24], kidx[8];
    uint8_t hash[32], legacy[32];
    const uint8_t *cert; /* v2 modes 1, 2: the certificate's SHA-256, else NULL */
    char cert_hex[65];
    char source[2];      /* v2: the asked key source; empty for v1 (NULL) */
} session_call;

static qk_kind session_call_init(qk_svc *s, const device_auth *a, const char *sid,
                                 const char *peer, bool delivered, int64_t ts, session_call *sc,
                                 qk_err *e)
{
    memset(sc, 0, sizeof(*sc));
    sc->sid = sid;
    sc->peer = peer;
    sc->delivered = delivered;
    if (!qkp_id_valid(sid))
        return qk_fail(e, QK_INVALID, "invalid_request", "session_id is not a valid ID");
    if (session_hash(sid, sc->hash) != 0)
        return qk_fail(e, QK_INTERNAL, "internal", "internal error (see kmsd log)");
    session_hash_legacy(sid, sc->legacy);
    snprintf(sc->ts, sizeof(sc->ts), "%lld", (long long)ts);
    snprintf(sc->skew, sizeof(sc->skew), "%d", s->cfg->protocol_clock_skew);
    snprintf(sc->pk, sizeof(sc->pk), "%lld", a->device_pk);
    snprintf(sc->kidx, sizeof(sc->kidx), "%d", a->key_index);
    if (a->by_cert) {
        sc->cert = a->cert_sha256;
        qkms_hex_encode(a->cert_sha256, 32, sc->cert_hex);
    }
    return QK_OK;
}

/* The principal must be the device that authenticated. */
static qk_kind device_principal(const qk_principal *who, const device_auth *a, qk_err *e)
{
    if (!who || who->kind != QK_PRINCIPAL_DEVICE || !who->name || (!a->key && !a->by_cert) ||
        strcmp(who->name, a->device_id) != 0) {
        log_emit(LOG_ERROR, "session operation without its device", NULL);
        return qk_fail(e, QK_INTERNAL, "internal", "internal error (see kmsd log)");
    }
    return QK_OK;
}

/* One qkms_session_key call's arguments. */
typedef struct {
    const device_auth *a;
    const session_call *sc;
    const candidate *cd;
} key_call;

/* The candidate's five arguments of qkms_session_key (key ID, wrapped key,
 * master version, provenance, bits; adjacent in both statements) into
 * out[0..4]: SQL NULLs when the request goes without a candidate. */
static void candidate_args(const candidate *cd, const char **out)
{
    bool has = cd->key != NULL;
    out[0] = has ? cd->key_id : NULL;
    out[1] = has ? cd->wrapped_hex : NULL;
    out[2] = has ? cd->master : NULL;
    out[3] = has ? cd->provenance : NULL;
    out[4] = has ? cd->bits : NULL;
}

/* The call alone on c: the prepared statement, binary arguments. */
static PGresult *session_key_alone(db_conn *c, void *arg, db_status *st)
{
    const key_call *kc = arg;
    const char *vals[17] = {kc->sc->pk, kc->sc->kidx, (const char *)kc->a->nonce,
                            (const char *)kc->sc->hash, kc->sc->sid, kc->sc->peer,
                            kc->sc->delivered ? "true" : "false", NULL, NULL, NULL, NULL, NULL,
                            kc->sc->ts, kc->sc->skew, (const char *)kc->sc->legacy,
                            (const char *)kc->sc->cert, kc->sc->source[0] ? kc->sc->source : NULL};
    int lens[17] = {0, 0, QKP_NONCE_LEN, 32, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 32, 0};
    int fmts[17] = {0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0};

    candidate_args(kc->cd, &vals[7]);
    return db_exec(c, Q_SESSION_KEY, 17, vals, lens, fmts, st);
}

/* One call of qkms_session_key, through the group commit when it is on
 * (text values in the order of the function's parameters, the binary ones
 * hex-encoded): QK_OK with *out (PQclear it), or e. */
static qk_kind session_key_call(qk_svc *s, const device_auth *a, const session_call *sc,
                                const candidate *cd, PGresult **out, qk_err *e)
{
    key_call kc = {a, sc, cd};
    char nonce[2 * QKP_NONCE_LEN + 1], hash[65], legacy[65];
    const char *vals[Q_SESSION_KEY_BATCH_PARAMS] = {
        sc->pk,   sc->kidx, nonce, sc->ts, sc->skew, hash, legacy, sc->sid, sc->peer,
        sc->delivered ? "t" : "f"}; /* the candidate's five follow, then cert and source */
    db_status st;

    candidate_args(cd, &vals[10]);
    vals[15] = sc->cert ? sc->cert_hex : NULL;
    vals[16] = sc->source[0] ? sc->source : NULL;

    if (!s->key_batch) {
        db_conn *c = db_acquire(s->db, &st);
        *out = c ? session_key_alone(c, &kc, &st) : NULL;
        db_release(s->db, c);
        return *out ? QK_OK : db_fail(e, st);
    }
    qkms_hex_encode(a->nonce, QKP_NONCE_LEN, nonce);
    qkms_hex_encode(sc->hash, 32, hash);
    qkms_hex_encode(sc->legacy, 32, legacy);
    *out = db_batch_run(s->key_batch, vals, session_key_alone, &kc, &st);
    return *out ? QK_OK : db_fail(e, st);
}

/* One call of qkms_session_key_ext (schema/026): an ext request's key by
 * epoch and direction. Never batched: such requests are rare next to the
 * first key's. QK_OK with *out (PQclear it), or e. */
static qk_kind session_key_ext_call(qk_svc *s, const device_auth *a, const session_call *sc,
                                    const session_ask *ask, const candidate *cd, PGresult **out,
                                    qk_err *e)
{
    char epoch[16];
    const char *vals[15] = {sc->pk,   sc->kidx, (const char *)a->nonce, sc->ts, sc->skew,
                            (const char *)sc->hash, sc->peer, epoch, ask->direction ? ask->direction : ""};
    int lens[15] = {0, 0, QKP_NONCE_LEN, 0, 0, 32, 0, 0, 0, 0, 0, 0, 0, 0, 32};
    int fmts[15] = {0, 0, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1};
    db_status st;

    snprintf(epoch, sizeof(epoch), "%d", ask->epoch);
    candidate_args(cd, &vals[9]);
    vals[14] = (const char *)sc->cert;
    *out = db_query(s->db, Q_SESSION_KEY_EXT, 15, vals, lens, fmts, &st);
    return *out ? QK_OK : db_fail(e, st);
}

static const struct {
    const char *outcome;
    qk_kind kind;
    const char *code;
    const char *message;
    session_refusal refusal;
} outcomes[] = {
    {"ended", QK_CONFLICT, "session_ended", "this session has ended; use a new session ID", SESSION_REFUSE_ENDED},
    {"not_a_party", QK_FORBIDDEN, "not_a_party", "this device is not a party of the session", SESSION_REFUSE_NOT_PARTY},
    {"peer_mismatch", QK_FORBIDDEN, "peer_mismatch", "the session's other party is a different device", SESSION_REFUSE_PEER_MISMATCH},
    {"unknown_peer", QK_INVALID, "unknown_peer", "the peer is not a registered device", SESSION_REFUSE_PEER},
    {"peer_inactive", QK_INVALID, "peer_inactive", "the peer is suspended or revoked, or its service ended", SESSION_REFUSE_PEER},
    {"policy_denied", QK_FORBIDDEN, "policy_denied", "no pairing policy allows these two devices", SESSION_REFUSE_POLICY},
    {"source_denied", QK_FORBIDDEN, "key_source_denied", "the pairing policy does not allow this key source", SESSION_REFUSE_POLICY},
    /* Epochs and direction keys (schema/026). */
    {"unknown_session", QK_NOT_FOUND, "unknown_session", "no such session: its first key is asked for without epoch or direction", SESSION_REFUSE_EPOCH},
    {"direction_denied", QK_FORBIDDEN, "direction_denied", "the session's pairing policy allows no direction keys", SESSION_REFUSE_POLICY},
    {"epoch_denied", QK_FORBIDDEN, "epoch_denied", "a single-transfer session has one key", SESSION_REFUSE_POLICY},
    {"epoch_skip", QK_CONFLICT, "epoch_skip", "an epoch may only be the session's current one plus one at most", SESSION_REFUSE_EPOCH},
    {"epoch_limit", QK_CONFLICT, "epoch_limit", "the session has as many epochs as its pairing policy allows", SESSION_REFUSE_EPOCH},
    {"epoch_ended", QK_CONFLICT, "epoch_ended", "that epoch's key is destroyed: ask for the current epoch", SESSION_REFUSE_EPOCH},
};

/* The outcomes both stored functions share: the nonce was used before
 * (replay) or the request's time is outside the clock window (stale), both
 * authentication failures. true with e set when outcome is one of them. */
static bool refused_request(qk_svc *s, const qk_principal *who, device_auth *a,
                            const char *outcome, qk_err *e, qk_kind *k)
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
    return false;
}

/* A refusal outcome of qkms_session_key (everything but ok, need_key and
 * master_inactive), into e. */
static qk_kind session_key_refused(qk_svc *s, const qk_principal *who, device_auth *a,
                                   const session_call *sc, PGresult *r, qk_err *e)
{
    const char *outcome = PQgetvalue(r, 0, 0);
    qk_kind k;

    if (refused_request(s, who, a, outcome, e, &k))
        return k;
    if (!strcmp(outcome, "unauthenticated")) {
        /* The authoritative re-check refused what a cached row allowed. */
        keycache_invalidate(s->keys, a->device_id);
        return device_auth_fail(s, &who->log, a->device_id, a->key_index, PQgetvalue(r, 0, 5), e);
    }
    if (!strcmp(outcome, "device_inactive")) {
        keycache_invalidate(s->keys, a->device_id);
        session_metrics_refused(s->smetrics, SESSION_REFUSE_INACTIVE);
        return qk_fail(e, QK_FORBIDDEN, "device_inactive", "this device is %s", PQgetvalue(r, 0, 5));
    }
    if (!strcmp(outcome, "service_expired")) {
        session_metrics_refused(s->smetrics, SESSION_REFUSE_SERVICE);
        return qk_fail(e, QK_FORBIDDEN, "service_expired", "this device's service ended at %s",
                       PQgetvalue(r, 0, 5));
    }
    for (size_t i = 0; i < sizeof(outcomes) / sizeof(outcomes[0]); i++)
        if (!strcmp(outcome, outcomes[i].outcome)) {
            session_metrics_refused(s->smetrics, outcomes[i].refusal);
            log_with(&who->log, LOG_WARN, "session request refused", "{s:s,s:s,s:s}", "device_id",
                     a->device_id, "peer_id", sc->peer ? sc->peer : SESSION_PLATFORM_PEER, "reason",
                     outcome);
            return qk_fail(e, outcomes[i].kind, outcomes[i].code, "%s", outcomes[i].message);
        }
    log_with(&who->log, LOG_ERROR, "unexpected session outcome", "{s:s}", "outcome", outcome);
    return qk_fail(e, QK_INTERNAL, "internal", "internal error (see kmsd log)");
}

void sessions_delivered(qk_svc *s, const qk_principal *who, const session_grant *g)
{
    session_metrics_count(s->smetrics, SESSION_EV_DELIVERED, 1);
    if (g->created && g->ext) {
        log_with(&who->log, LOG_INFO, "session key created", "{s:s,s:s,s:i,s:s}", "device_id",
                 who->name, "key_id", g->key_id, "epoch", g->epoch, "direction", g->direction);
    } else if (g->created) {
        session_metrics_count(s->smetrics, SESSION_EV_CREATED, 1);
        log_with(&who->log, LOG_INFO, "session created", "{s:s,s:s,s:s}", "device_id", who->name,
                 "key_id", g->key_id, "policy", g->policy);
    }
}

void session_grant_clear(session_grant *g)
{
    if (g->key)
        OPENSSL_secure_clear_free(g->key, SESSION_KEY_BUF);
    if (g->sr)
        OPENSSL_secure_clear_free(g->sr, QKP2_RANDOM_LEN);
    memset(g, 0, sizeof(*g));
}

/* The "ok" row of qkms_session_key: its session key into g, unwrapped by the
 * token, or the candidate's plaintext when the row is the session this
 * request just created from it (its key ID and wrapped key are the
 * candidate's). */
static qk_kind grant_from_row(qk_svc *s, const qk_principal *who, PGresult *r,
                              candidate *cd, session_grant *g, qk_err *e)
{
    /* The wrap context names the hash the row is keyed by (a row from
     * before the keyed hash keeps its SHA-256, docs/sessions.md). */
    const char *key_id = PQgetvalue(r, 0, 1), *whex = PQgetvalue(r, 0, 3),
               *hash_hex = PQgetvalue(r, 0, 8);
    uint8_t blob[SESSION_WRAPPED_MAX];
    long bl = qkms_hex_decode(whex, strlen(whex), blob, sizeof(blob));
    char ctx[160];
    qk_kind k = QK_INTERNAL;
    CK_RV rv;

    snprintf(g->key_id, sizeof(g->key_id), "%s", key_id);
    g->key_bits = atoi(PQgetvalue(r, 0, 2));
    g->expires_at = atoll(PQgetvalue(r, 0, 4));
    snprintf(g->delivery, sizeof(g->delivery), "%s", PQgetvalue(r, 0, 6));
    g->created = PQgetvalue(r, 0, 7)[0] == 't';
    g->key = OPENSSL_secure_malloc(SESSION_KEY_BUF);
    g->key_len = SESSION_KEY_BUF;
    if (!g->key || bl <= 0 || session_key_context(hash_hex, key_id, ctx, sizeof(ctx)) < 0) {
        qk_fail(e, QK_INTERNAL, "internal", "internal error (see kmsd log)");
        goto out;
    }
    g->key_source = 'c';
    if (g->created && cd->key && cd->key_len == (size_t)g->key_bits / 8 &&
        !strcmp(cd->key_id, key_id) && !strcmp(cd->wrapped_hex, whex)) {
        memcpy(g->key, cd->key, cd->key_len);
        g->key_len = cd->key_len;
        /* The key was made from this request's randoms: the answer gives
         * the device what it needs to derive it (the server random of 'a'),
         * not the key. */
        if (cd->provenance == cd->provenance_buf) {
            g->key_source = cd->sr ? 'a' : 'b';
            g->sr = cd->sr; /* moved */
            cd->sr = NULL;
        }
        rv = CKR_OK;
        session_metrics_count(s->smetrics, SESSION_EV_KEY_FROM_CANDIDATE, 1);
    } else {
        rv = keywrap_unwrap(s->kw, (const uint8_t *)ctx, strlen(ctx), blob, (size_t)bl, g->key,
                            &g->key_len);
        session_metrics_count(s->smetrics, SESSION_EV_KEY_FROM_TOKEN, 1);
    }
    if (p11_rv_kind(rv) == P11_KIND_NOT_FOUND && master_refresh(s, NULL) == 0) {
        /* Rewrapped by another instance under a version we have not
         * loaded yet: load it and try once more. */
        g->key_len = SESSION_KEY_BUF;
        rv = keywrap_unwrap(s->kw, (const uint8_t *)ctx, strlen(ctx), blob, (size_t)bl, g->key,
                            &g->key_len);
    }
    if (rv != CKR_OK || g->key_len != (size_t)g->key_bits / 8) {
        log_with(&who->log, LOG_ERROR, "session key unwrap failed", "{s:s,s:s}", "ckr",
                 p11_rv_name(rv), "key_id", key_id);
        if (rv == CKR_OK)
            qk_fail(e, QK_INTERNAL, "internal", "internal error (see kmsd log)");
        else
            qk_from_token(e, rv, NULL); /* logged just above */
        goto out;
    }
    snprintf(g->policy, sizeof(g->policy), "%s", PQgetvalue(r, 0, 5));
    if (PQnfields(r) > 10) { /* an ext request's answer */
        g->epoch = atoi(PQgetvalue(r, 0, 9));
        g->current_epoch = atoi(PQgetvalue(r, 0, 10));
    }
    k = QK_OK;
out:
    OPENSSL_cleanse(blob, sizeof(blob));
    if (k != QK_OK)
        session_grant_clear(g);
    return k;
}

/* need_key: the policy wants other bits. master_inactive: the candidate was
 * wrapped under a version another instance has retired; learn the active
 * one and wrap again. Neither wrote anything (the nonce is still unused). */
static qk_kind new_candidate(qk_svc *s, const qk_principal *who, const session_ask *ask,
                             const session_call *sc, PGresult *r, candidate *cd, qk_err *e)
{
    int bits = atoi(PQgetvalue(r, 0, 2));
    if (PQgetvalue(r, 0, 0)[0] == 'm' && master_refresh(s, NULL) != 0)
        return db_fail(e, DB_UNAVAILABLE);
    return make_candidate(s, who, ask, sc->hash, bits, cd, e);
}

qk_kind sessions_issue(qk_svc *s, const qk_principal *who, device_auth *a, const session_ask *ask,
                       session_grant *g, qk_err *e)
{
    session_call sc;
    candidate cd;
    PGresult *r = NULL;
    qk_kind k;

    memset(g, 0, sizeof(*g));
    memset(&cd, 0, sizeof(cd));
    memset(&sc, 0, sizeof(sc));
    if ((k = device_principal(who, a, e)) != QK_OK ||
        (k = session_call_init(s, a, ask->session_id, ask->peer_id, ask->delivered, ask->ts, &sc,
                               e)) != QK_OK)
        goto out;
    if (ask->platform_peer) {
        /* The platform holds a channel key from the start: single transfer
         * would destroy it as soon as the device had it. */
        if (ask->peer_id || ask->delivered || ask->key_source == 0) {
            k = qk_fail(e, QK_INVALID, "invalid_request",
                        "the platform as peer: no peer_id, no delivered mode, protocol v2");
            goto out;
        }
    } else if (!qkp_id_valid(ask->peer_id) || !strcmp(ask->peer_id, a->device_id)) {
        k = qk_fail(e, QK_INVALID, "invalid_request", "peer_id must be another device's ID");
        goto out;
    }
    if (ask->ext && (ask->platform_peer || ask->key_source || ask->epoch < 0 ||
                     !ask->direction ||
                     (ask->direction[0] && strcmp(ask->direction, "a2b") &&
                      strcmp(ask->direction, "b2a")))) {
        k = qk_fail(e, QK_INVALID, "invalid_request",
                    "epoch must be an integer from 0, direction a2b or b2a (protocol v1)");
        goto out;
    }
    if (ask->key_source) {
        if (!strchr("abc", ask->key_source) ||
            (ask->key_source != 'c' && (!ask->cr || !ask->h))) {
            k = qk_fail(e, QK_INVALID, "invalid_request", "key_source must be a, b or c");
            goto out;
        }
        sc.source[0] = ask->key_source;
    }
    /* A candidate key goes with the first call unless this kmsd has seen
     * the session exist (the second party, mostly): when the session is new
     * this saves a round trip; when it exists, the candidate is dropped (it
     * never left kmsd unwrapped). A session wrongly thought to exist is
     * answered need_key, and the loop below makes the candidate. */
    if (ask->ext) /* the epoch's or direction's key may not exist yet: no guess */
        ;
    else if (session_seen_has(s->seen, sc.hash))
        session_metrics_count(s->smetrics, SESSION_EV_CANDIDATE_SKIPPED, 1);
    else if ((k = make_candidate(s, who, ask, sc.hash, 128, &cd, e)) != QK_OK)
        goto out;
    session_metrics_stage(s->smetrics, SESSION_STAGE_NEW_KEY, a->t0);
    for (int attempt = 0; attempt < 3; attempt++) {
        const char *outcome;
        k = ask->ext ? session_key_ext_call(s, a, &sc, ask, &cd, &r, e)
                     : session_key_call(s, a, &sc, &cd, &r, e);
        session_metrics_stage(s->smetrics, SESSION_STAGE_SESSION_TX, a->t0);
        if (k != QK_OK)
            goto out;
        outcome = PQgetvalue(r, 0, 0);
        if (!strcmp(outcome, "ok")) {
            k = grant_from_row(s, who, r, &cd, g, e);
            if (k == QK_OK && ask->ext) {
                g->ext = true;
                snprintf(g->direction, sizeof(g->direction), "%s", ask->direction);
            }
            if (k == QK_OK) {
                session_seen_add(s->seen, sc.hash);
                if (!ask->contact_by_caller) /* a contact, written off the path */
                    device_seen_note(s->contact, a->device_pk);
            }
            goto out;
        }
        if (strcmp(outcome, "need_key") != 0 && strcmp(outcome, "master_inactive") != 0) {
            k = session_key_refused(s, who, a, &sc, r, e);
            goto out;
        }
        if ((k = new_candidate(s, who, ask, &sc, r, &cd, e)) != QK_OK)
            goto out;
        PQclear(r);
        r = NULL;
        session_metrics_stage(s->smetrics, SESSION_STAGE_NEW_KEY, a->t0);
    }
    log_with(&who->log, LOG_ERROR, "session could not be settled", "{s:s}", "device_id",
             a->device_id);
    k = qk_fail(e, QK_INTERNAL, "internal", "session could not be settled");
out:
    PQclear(r);
    candidate_clear(&cd);
    OPENSSL_cleanse(&sc, sizeof(sc));
    return k;
}

/* ---- ending ----------------------------------------------------------------- */

/* An outcome of qkms_session_end, into e. */
static qk_kind session_end_outcome(qk_svc *s, const qk_principal *who, device_auth *a,
                                   const char *outcome, qk_err *e)
{
    qk_kind k;

    if (!strcmp(outcome, "ok")) {
        session_metrics_count(s->smetrics, SESSION_EV_ENDED_BY_PARTY, 1);
        log_with(&who->log, LOG_INFO, "session ended", "{s:s,s:s}", "device_id", a->device_id,
                 "reason", "ended_by_party");
        return QK_OK;
    }
    if (refused_request(s, who, a, outcome, e, &k))
        return k;
    if (!strncmp(outcome, "unauthenticated: ", 17)) {
        keycache_invalidate(s->keys, a->device_id);
        return device_auth_fail(s, &who->log, a->device_id, a->key_index, outcome + 17, e);
    }
    if (!strcmp(outcome, "ended")) {
        session_metrics_refused(s->smetrics, SESSION_REFUSE_ENDED);
        return qk_fail(e, QK_CONFLICT, "session_ended", "this session has already ended");
    }
    if (!strcmp(outcome, "unknown"))
        return qk_fail(e, QK_NOT_FOUND, "unknown_session", "no such session");
    session_metrics_refused(s->smetrics, SESSION_REFUSE_NOT_PARTY);
    return qk_fail(e, QK_FORBIDDEN, "not_a_party", "this device is not a party of the session");
}

qk_kind sessions_end(qk_svc *s, const qk_principal *who, device_auth *a, const char *session_id,
                     int64_t ts, qk_err *e)
{
    session_call sc;
    PGresult *r = NULL;
    db_status st;
    qk_kind k;

    memset(&sc, 0, sizeof(sc));
    if ((k = device_principal(who, a, e)) != QK_OK ||
        (k = session_call_init(s, a, session_id, NULL, false, ts, &sc, e)) != QK_OK)
        goto out;
    /* A suspended device may still end its sessions: ending only destroys. */
    {
        const char *vals[8] = {sc.pk, sc.kidx, (const char *)a->nonce, (const char *)sc.hash,
                               sc.ts, sc.skew, (const char *)sc.legacy, (const char *)sc.cert};
        int lens[8] = {0, 0, QKP_NONCE_LEN, 32, 0, 0, 32, 32},
            fmts[8] = {0, 0, 1, 1, 0, 0, 1, 1};
        r = db_query(s->db, Q_SESSION_END, 8, vals, lens, fmts, &st);
    }
    if (!r) {
        k = db_fail(e, st);
        goto out;
    }
    k = session_end_outcome(s, who, a, PQgetvalue(r, 0, 0), e);
    if (k == QK_OK)
        device_seen_note(s->contact, a->device_pk);
out:
    PQclear(r);
    OPENSSL_cleanse(&sc, sizeof(sc));
    return k;
}

qk_kind sessions_end_all(qk_svc *s, const qk_principal *who, device_auth *a, int64_t ts,
                         int *ended, int *streams_ended, qk_err *e)
{
    char pk[24], kidx[8], tsb[24], skew[12];
    const char *vals[6] = {pk, kidx, (const char *)a->nonce, tsb, skew,
                           a->by_cert ? (const char *)a->cert_sha256 : NULL};
    int lens[6] = {0, 0, QKP_NONCE_LEN, 0, 0, 32}, fmts[6] = {0, 0, 1, 0, 0, 1};
    const char *outcome;
    PGresult *r = NULL;
    db_status st;
    qk_kind k;

    *ended = *streams_ended = 0;
    if ((k = device_principal(who, a, e)) != QK_OK)
        return k;
    snprintf(pk, sizeof(pk), "%lld", a->device_pk);
    snprintf(kidx, sizeof(kidx), "%d", a->key_index);
    snprintf(tsb, sizeof(tsb), "%lld", (long long)ts);
    snprintf(skew, sizeof(skew), "%d", s->cfg->protocol_clock_skew);
    if (!(r = db_query(s->db, Q_SESSION_END_ALL, 6, vals, lens, fmts, &st)))
        return db_fail(e, st);
    outcome = PQgetvalue(r, 0, 0);
    if (refused_request(s, who, a, outcome, e, &k))
        goto out;
    if (!strncmp(outcome, "unauthenticated: ", 17)) {
        keycache_invalidate(s->keys, a->device_id);
        k = device_auth_fail(s, &who->log, a->device_id, a->key_index, outcome + 17, e);
        goto out;
    }
    if (strcmp(outcome, "ok") != 0) {
        log_with(&who->log, LOG_ERROR, "unexpected session outcome", "{s:s}", "outcome", outcome);
        k = qk_fail(e, QK_INTERNAL, "internal", "internal error (see kmsd log)");
        goto out;
    }
    *ended = atoi(PQgetvalue(r, 0, 1));
    *streams_ended = atoi(PQgetvalue(r, 0, 2));
    session_metrics_count(s->smetrics, SESSION_EV_ENDED_BY_DEVICE, (uint64_t)*ended);
    log_with(&who->log, LOG_INFO, "sessions ended", "{s:s,s:s,s:i,s:i}", "device_id",
             a->device_id, "reason", "device_ended", "count", *ended, "streams", *streams_ended);
    device_seen_note(s->contact, a->device_pk);
    k = QK_OK;
out:
    PQclear(r);
    return k;
}

int sessions_reap(qk_svc *k, int *examined)
{
    char win[16], days[16], lim[16];
    const char *vals[3] = {win, days, lim};
    db_status st;
    PGresult *r;
    int n;
    /* Since schema 006 each nonce carries its own expiry (ts + skew) and
     * the window argument is ignored; it is kept for the stored function's
     * signature. */
    snprintf(win, sizeof(win), "%d", 2 * k->cfg->protocol_clock_skew + 60);
    snprintf(days, sizeof(days), "%d", k->cfg->session_tombstone_days);
    snprintf(lim, sizeof(lim), "%d", SESSION_REAP_BATCH);
    r = db_query(k->db, Q_SESSION_REAP, 3, vals, NULL, NULL, &st);
    if (!r)
        return -1;
    n = atoi(PQgetvalue(r, 0, 0));
    if (examined)
        *examined = atoi(PQgetvalue(r, 0, 1));
    PQclear(r);
    /* Older epochs' keys whose grace is over (schema/026); a full batch
     * asks for another pass like the sessions'. */
    if ((r = db_query(k->db, Q_SESSION_KEYS_REAP, 1, &vals[2], NULL, NULL, &st))) {
        int keys = atoi(PQgetvalue(r, 0, 0));
        PQclear(r);
        if (keys > 0)
            log_emit(LOG_INFO, "older epochs' keys destroyed", "{s:i}", "count", keys);
        if (keys >= SESSION_REAP_BATCH && examined)
            *examined = SESSION_REAP_BATCH;
    }
    if (n > 0) {
        session_metrics_count(k->smetrics, SESSION_EV_REAPED, (uint64_t)n);
        log_emit(LOG_INFO, "expired sessions destroyed", "{s:i}", "count", n);
    }
    return n;
}

/* ---- the operator's view ---------------------------------------------------- */

static json_t *session_json(const PGresult *r, int i)
{
    return json_pack("{s:o,s:o,s:o,s:o,s:o,s:o,s:i,s:o,s:o,s:o,s:i,s:o,s:o,s:o,s:o,s:o,s:o}",
                     "session_id",
                     pgjson_text(r, i, 0), "key_id", pgjson_text(r, i, 1), "initiator",
                     pgjson_text(r, i, 2), "responder", pgjson_text(r, i, 3), "policy",
                     pgjson_text(r, i, 4), "delivery", pgjson_text(r, i, 5), "key_bits",
                     atoi(PQgetvalue(r, i, 6)), "created_at", pgjson_time(r, i, 7), "last_used_at",
                     pgjson_time(r, i, 8), "expires_at", pgjson_time(r, i, 9), "idle_timeout_s",
                     atoi(PQgetvalue(r, i, 10)), "initiator_delivered_at", pgjson_time(r, i, 11),
                     "responder_delivered_at", pgjson_time(r, i, 12), "provenance",
                     pgjson_text(r, i, 13), "state", pgjson_text(r, i, 14), "key_source",
                     pgjson_text(r, i, 15), "epoch", json_integer(atoi(PQgetvalue(r, i, 16))));
}

static json_t *tombstone_json(const PGresult *r, int i)
{
    return json_pack("{s:o,s:o,s:o,s:o,s:o,s:o,s:o,s:s}", "session_hash", pgjson_text(r, i, 0),
                     "key_id", pgjson_text(r, i, 1), "initiator", pgjson_text(r, i, 2),
                     "responder", pgjson_text(r, i, 3), "created_at", pgjson_time(r, i, 4),
                     "ended_at", pgjson_time(r, i, 5), "reason", pgjson_text(r, i, 6), "state",
                     "ended");
}

/* Live sessions (device/session filters) or, for state=ended, tombstones. */
static qk_kind query_sessions(qk_svc *s, const char *device, const char *sid, const char *state,
                              long limit, json_t **out, qk_err *e)
{
    char lim[16];
    uint8_t hash[32], legacy[32];
    bool ended = state && !strcmp(state, "ended");
    const char *vals[4] = {device, sid, lim, ended ? NULL : state};
    int lens[4] = {0, 0, 0, 0}, fmts[4] = {0, 0, 0, 0};
    db_status st;
    PGresult *r;

    snprintf(lim, sizeof(lim), "%ld", limit);
    if (ended && sid) {
        if (session_hash(sid, hash) != 0)
            return qk_fail(e, QK_INTERNAL, "internal", "internal error (see kmsd log)");
        session_hash_legacy(sid, legacy);
        vals[1] = (const char *)hash;
        vals[3] = (const char *)legacy;
        lens[1] = lens[3] = 32;
        fmts[1] = fmts[3] = 1;
    }
    r = db_query(s->db, ended ? Q_TOMBSTONES_LIST : Q_SESSIONS_LIST, 4, vals, lens, fmts, &st);
    if (!r)
        return db_fail(e, st);
    *out = pgjson_rows(r, ended ? tombstone_json : session_json);
    PQclear(r);
    return QK_OK;
}

qk_kind sessions_list(qk_svc *s, const session_filter *f, json_t **out, qk_err *e)
{
    const char *st = f->state;
    *out = NULL;
    if ((f->device && !device_id_valid(f->device)) || f->limit < 1 || f->limit > 1000 ||
        (st && strcmp(st, "pending") && strcmp(st, "active") && strcmp(st, "ended")))
        return qk_fail(e, QK_MALFORMED, "invalid_query",
                       "bad device, state (pending|active|ended) or limit");
    return query_sessions(s, f->device, NULL, st, f->limit, out, e);
}

qk_kind sessions_get(qk_svc *s, const char *session_id, json_t **out, qk_err *e)
{
    json_t *arr = NULL;
    qk_kind k;

    *out = NULL;
    if (!qkp_id_valid(session_id))
        return qk_fail(e, QK_NOT_FOUND, "not_found", "no such session");
    if ((k = query_sessions(s, NULL, session_id, NULL, 1, &arr, e)) != QK_OK)
        return k;
    if (json_array_size(arr) == 0) {
        json_decref(arr);
        arr = NULL;
        if ((k = query_sessions(s, NULL, session_id, "ended", 1, &arr, e)) != QK_OK)
            return k;
    }
    if (json_array_size(arr) == 0) {
        json_decref(arr);
        return qk_fail(e, QK_NOT_FOUND, "not_found", "no such session");
    }
    *out = json_incref(json_array_get(arr, 0));
    json_decref(arr);
    return QK_OK;
}

qk_kind sessions_end_by_operator(qk_svc *s, const qk_principal *who, const char *session_id,
                                 qk_err *e)
{
    uint8_t hash[32], legacy[32];
    const char *vals[3] = {(const char *)hash, who->name, (const char *)legacy};
    int lens[3] = {32, 0, 32}, fmts[3] = {1, 0, 1};
    db_status st;
    PGresult *r;
    int n;

    if (!qkp_id_valid(session_id))
        return qk_fail(e, QK_NOT_FOUND, "not_found", "no such session");
    if (session_hash(session_id, hash) != 0)
        return qk_fail(e, QK_INTERNAL, "internal", "internal error (see kmsd log)");
    session_hash_legacy(session_id, legacy);
    r = db_query(s->db, Q_SESSION_END_OPERATOR, 3, vals, lens, fmts, &st);
    if (!r)
        return db_fail(e, st);
    n = PQntuples(r);
    PQclear(r);
    if (n == 0)
        return qk_fail(e, QK_NOT_FOUND, "not_found", "no live session with that ID");
    session_metrics_count(s->smetrics, SESSION_EV_ENDED_BY_OPERATOR, 1);
    log_with(&who->log, LOG_INFO, "session ended", "{s:s,s:s}", "reason", "ended_by_operator", "by",
             who->name);
    return QK_OK;
}
