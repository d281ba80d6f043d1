/*
 * device_v1 — the device protocol v1 door (docs/protocol.md): POST
 * /v1/sessions/key and POST /v1/sessions/end. It owns the wire: the
 * envelope's parse, the inner request's fields, the device rate limit, the
 * answer sealed under the device key, and the one mapping of the service's
 * qk_err to HTTP (http_fail). Authentication (device_auth_open) and the
 * sessions themselves (sessions_issue, sessions_end) are the service's.
 * A gateway's login and logout (POST /v1/gateway/login|logout,
 * docs/gateways.md) are the same envelope with their own ops and inner
 * requests, onto gateway_login.h.
 *
 * parse_envelope and inner_fields are static and reached by the fuzz
 * targets, which compile this file in (fuzz/fuzz_sessions.h).
 */
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/rand.h>

#include "api/ratelimit.h"
#include "api/routes.h"
#include "log.h"
#include "qkms_proto.h"
#include "service/certs.h"
#include "service/device_auth.h"
#include "service/gateway_login.h"
#include "service/session_metrics.h"
#include "service/sessions.h"
#include "service/streams.h"

#define ENVELOPE_MAX 8192

static void refuse(http_request *rq, session_refusal why)
{
    session_metrics_refused(rq->kms->svc.smetrics, why);
}

/* ---- the envelope ----------------------------------------------------------- */

typedef struct {
    char device_id[QKP_MAX_ID + 1];
    int key_index;
    uint8_t nonce[QKP_NONCE_LEN];
    char nonce_b64[QKP_B64URL_LEN(QKP_NONCE_LEN)];
    uint8_t ct[QKP_MAX_PLAINTEXT + QKP_TAG_LEN];
    size_t ct_len;
} envelope;

/* An authenticated request and its inner request, parsed. */
typedef struct {
    device_auth da;
    json_t *inner;
} authed;

static void authed_clear(authed *a)
{
    device_auth_clear(&a->da);
    json_decref(a->inner);
    a->inner = NULL;
}

static int parse_envelope(http_request *rq, http_response *rs, envelope *env)
{
    json_t *in, *v;
    const char *key, *s;
    int rc = -1;

    if (rq->body_len > ENVELOPE_MAX) {
        http_error(rs, 413, "payload_too_large", "request body too large");
        return -1;
    }
    in = http_body_object(rq, rs);
    if (!in)
        return -1;
    json_object_foreach(in, key, v) {
        if (strcmp(key, "v") && strcmp(key, "device_id") && strcmp(key, "key_index") &&
            strcmp(key, "nonce") && strcmp(key, "ct")) {
            http_error(rs, 400, "malformed_request", "unknown field '%.32s'", key);
            goto out;
        }
    }
    v = json_object_get(in, "v");
    if (!json_is_integer(v) || json_integer_value(v) != QKP_VERSION) {
        http_error(rs, 400, "malformed_request", "v must be 1");
        goto out;
    }
    s = json_string_value(json_object_get(in, "device_id"));
    if (!qkp_id_valid(s)) {
        http_error(rs, 400, "malformed_request", "device_id is not a valid ID");
        goto out;
    }
    strcpy(env->device_id, s);
    v = json_object_get(in, "key_index");
    if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > 255) {
        http_error(rs, 400, "malformed_request", "key_index must be an integer from 0 to 255");
        goto out;
    }
    env->key_index = (int)json_integer_value(v);
    s = json_string_value(json_object_get(in, "nonce"));
    if (!s || qkp_b64url_decode(s, strlen(s), env->nonce, sizeof(env->nonce)) != QKP_NONCE_LEN) {
        http_error(rs, 400, "malformed_request", "nonce must be 12 bytes in base64url");
        goto out;
    }
    strcpy(env->nonce_b64, s);
    s = json_string_value(json_object_get(in, "ct"));
    long n = s ? qkp_b64url_decode(s, strlen(s), env->ct, sizeof(env->ct)) : -1;
    if (n < QKP_TAG_LEN + 1) {
        http_error(rs, 400, "malformed_request", "ct must be base64url, 17 to 2064 bytes");
        goto out;
    }
    env->ct_len = (size_t)n;
    rc = 0;
out:
    json_decref(in);
    return rc;
}

/* ---- authentication --------------------------------------------------------- */

static qk_principal device_principal(const http_request *rq, const device_auth *da)
{
    /* The device routes carry no token: the principal is the device the
     * request authenticated as. */
    qk_principal p = {.kind = QK_PRINCIPAL_DEVICE, .name = da->device_id, .log = http_log_ctx(rq)};
    p.log.principal = da->device_id;
    return p;
}

/* A request that came with a client certificate (api/tlsauth.h) must name
 * the certificate's device: checked before any key is unwrapped, and a
 * mismatch is audited (certs_mismatch). */
static bool bound_to_cert(http_request *rq, http_response *rs, const envelope *env)
{
    log_ctx lc;
    if (!rq->cert.device_id[0] || !strcmp(rq->cert.device_id, env->device_id))
        return true;
    lc = http_log_ctx(rq);
    lc.principal = rq->cert.device_id;
    certs_mismatch(&rq->kms->svc, &rq->cert, env->device_id, &lc);
    refuse(rq, SESSION_REFUSE_AUTH);
    http_error(rs, 401, "certificate_mismatch",
               "the request names another device than its client certificate");
    return false;
}

/* Open the request under its device key (service: device_auth_open) and
 * parse the inner request as a JSON object. */
static int authenticate(http_request *rq, http_response *rs, const char *op, const envelope *env,
                        authed *a, uint64_t *t0)
{
    device_request dr = {op, env->device_id, env->key_index, env->nonce, env->ct, env->ct_len, t0, 1};
    log_ctx lc = http_log_ctx(rq); /* no principal yet */
    json_error_t je;
    qk_err e;

    memset(a, 0, sizeof(*a));
    if (device_auth_open(&rq->kms->svc, &lc, &dr, &a->da, &e) != QK_OK) {
        http_fail(rs, &e);
        return -1;
    }
    a->inner = json_loadb((const char *)a->da.inner, a->da.inner_len, JSON_REJECT_DUPLICATES, &je);
    if (!json_is_object(a->inner)) {
        http_error(rs, 422, "invalid_request", "the inner request is not a JSON object");
        refuse(rq, SESSION_REFUSE_INVALID);
        authed_clear(a);
        return -1;
    }
    return 0;
}

/* The inner request names only known fields and has an integer ts (*ts).
 * The clock check is part of authentication and is made by the stored
 * function against the database's clock (one clock for every instance,
 * the one nonces expire by): here ts is only required to be an integer.
 * 0, or -1 with rs answered and the refusal counted. */
static int inner_known(http_request *rq, http_response *rs, json_t *inner,
                       const char *const known[], long long *ts)
{
    json_t *t = json_object_get(inner, "ts"), *v;
    const char *key;

    json_object_foreach(inner, key, v) {
        size_t i = 0;
        while (known[i] && strcmp(known[i], key))
            i++;
        if (!known[i]) {
            http_error(rs, 422, "invalid_request", "unknown field '%.32s'", key);
            refuse(rq, SESSION_REFUSE_INVALID);
            return -1;
        }
    }
    if (!json_is_integer(t)) {
        http_error(rs, 422, "invalid_request", "ts must be an integer");
        refuse(rq, SESSION_REFUSE_INVALID);
        return -1;
    }
    *ts = (long long)json_integer_value(t);
    return 0;
}

/* Fields of a session's inner request (key: with peer_id and delivery). */
static int inner_fields(http_request *rq, http_response *rs, const envelope *env, authed *a,
                        bool want_peer, const char **sid, const char **peer, bool *delivered,
                        char ts_out[24])
{
    static const char *const key_fields[] = {"session_id", "ts",    "peer_id",
                                             "delivery",   "epoch", "direction", NULL};
    static const char *const end_fields[] = {"session_id", "ts", "all", NULL};
    json_t *d = json_object_get(a->inner, "delivery"), *all = json_object_get(a->inner, "all");
    long long ts;

    if (inner_known(rq, rs, a->inner, want_peer ? key_fields : end_fields, &ts) != 0)
        return -1;
    snprintf(ts_out, 24, "%lld", ts);
    *sid = json_string_value(json_object_get(a->inner, "session_id"));
    if (all) { /* end: every session of the device, named by none */
        if (!json_is_true(all) || json_object_get(a->inner, "session_id")) {
            http_error(rs, 422, "invalid_request",
                       "all may only be true, and goes without session_id");
            refuse(rq, SESSION_REFUSE_INVALID);
            return -1;
        }
        *sid = NULL;
        return 0;
    }
    if (!qkp_id_valid(*sid)) {
        http_error(rs, 422, "invalid_request", "session_id is not a valid ID");
        refuse(rq, SESSION_REFUSE_INVALID);
        return -1;
    }
    if (!want_peer)
        return 0;
    *peer = json_string_value(json_object_get(a->inner, "peer_id"));
    if (!qkp_id_valid(*peer) || !strcmp(*peer, env->device_id)) {
        http_error(rs, 422, "invalid_request", "peer_id must be another device's ID");
        refuse(rq, SESSION_REFUSE_INVALID);
        return -1;
    }
    if (d && !(json_is_string(d) && !strcmp(json_string_value(d), "delivered"))) {
        http_error(rs, 422, "invalid_request", "delivery may only be \"delivered\"");
        refuse(rq, SESSION_REFUSE_INVALID);
        return -1;
    }
    *delivered = d != NULL;
    return 0;
}

/* The key request's optional epoch and direction (docs/protocol.md,
 * "Epochs and direction keys") into ask: either one makes it an ext
 * request. 0, or -1 with rs answered (422) and the refusal counted. */
static int inner_epoch(http_request *rq, http_response *rs, json_t *inner, session_ask *ask)
{
    json_t *ep = json_object_get(inner, "epoch"), *dir = json_object_get(inner, "direction");
    const char *d = json_string_value(dir);

    if (!ep && !dir)
        return 0;
    if ((ep && (!json_is_integer(ep) || json_integer_value(ep) < 0 ||
                json_integer_value(ep) > QKP_MAX_EPOCH)) ||
        (dir && (!d || (strcmp(d, "a2b") && strcmp(d, "b2a"))))) {
        http_error(rs, 422, "invalid_request",
                   "epoch must be an integer from 0 to %d, direction \"a2b\" or \"b2a\"",
                   QKP_MAX_EPOCH);
        refuse(rq, SESSION_REFUSE_INVALID);
        return -1;
    }
    if (json_object_get(inner, "delivery")) {
        http_error(rs, 422, "invalid_request",
                   "epoch and direction are for session mode, not \"delivery\"");
        refuse(rq, SESSION_REFUSE_INVALID);
        return -1;
    }
    ask->ext = true;
    ask->epoch = ep ? (int)json_integer_value(ep) : 0;
    ask->direction = d ? d : "";
    return 0;
}

/* ---- answers ---------------------------------------------------------------- */

/* A refused operation: a replayed nonce gets its rate-limit token back (a
 * replay must not spend the device's budget); one http_fail for the rest. */
static void answer_failure(http_request *rq, http_response *rs, const envelope *env,
                           const authed *a, const qk_err *e)
{
    if (a->da.replayed && rq->kms->rl[RL_DEVICE])
        ratelimit_refund(rq->kms->rl[RL_DEVICE], env->device_id, ratelimit_now_ns());
    http_fail(rs, e);
}

/* Seal the session key under the device key, bound to the request (the
 * response AAD names the request's nonce). 0, or -1 with rs the 500. */
static int deliver(http_response *rs, const envelope *env, const authed *a, const char *sid,
                   const session_grant *g, bool login)
{
    uint8_t nonce[QKP_NONCE_LEN], ct[32 + QKP_TAG_LEN];
    char aad[QKP_MAX_AAD], nonce_b64[QKP_B64URL_LEN(QKP_NONCE_LEN)],
        ct_b64[QKP_B64URL_LEN(sizeof(ct))];
    int aad_len = g->ext ? qkp_response_aad_ext(sid, env->device_id, env->key_index, g->key_id,
                                                g->expires_at, env->nonce_b64, g->epoch,
                                                g->direction, aad, sizeof(aad))
                         : qkp_response_aad(sid, env->device_id, env->key_index, g->key_id,
                                            g->expires_at, env->nonce_b64, aad, sizeof(aad));

    if (g->key_len > 32 || RAND_bytes(nonce, sizeof(nonce)) != 1 || aad_len < 0 ||
        qkp_seal_suite(a->da.suite, a->da.key, a->da.key_len, nonce, aad, (size_t)aad_len, g->key,
                       g->key_len, ct) != 0) {
        http_error(rs, 500, "internal", "internal error (see kmsd log)");
        return -1;
    }
    qkp_b64url_encode(nonce, sizeof(nonce), nonce_b64);
    qkp_b64url_encode(ct, g->key_len + QKP_TAG_LEN, ct_b64);
    if (login) /* a gateway login: its ID is the platform's choice, its delivery "session" */
        http_json(rs, 200,
                  json_pack("{s:i,s:s,s:s,s:i,s:I,s:s,s:s}", "v", QKP_VERSION, "login_id", sid,
                            "key_id", g->key_id, "key_bits", g->key_bits, "expires_at",
                            (json_int_t)g->expires_at, "nonce", nonce_b64, "ct", ct_b64));
    else if (g->ext) /* the key's epoch and direction, bound by the AAD */
        http_json(rs, 200,
                  json_pack("{s:i,s:s,s:s,s:i,s:I,s:s,s:i,s:s,s:i,s:s,s:s}", "v", QKP_VERSION,
                            "session_id", sid, "key_id", g->key_id, "key_bits", g->key_bits,
                            "expires_at", (json_int_t)g->expires_at, "delivery", g->delivery,
                            "epoch", g->epoch, "direction", g->direction, "current_epoch",
                            g->current_epoch, "nonce", nonce_b64, "ct", ct_b64));
    else
        http_json(rs, 200,
                  json_pack("{s:i,s:s,s:s,s:i,s:I,s:s,s:s,s:s}", "v", QKP_VERSION, "session_id",
                            sid, "key_id", g->key_id, "key_bits", g->key_bits, "expires_at",
                            (json_int_t)g->expires_at, "delivery", g->delivery, "nonce",
                            nonce_b64, "ct", ct_b64));
    return 0;
}

/* ---- the handlers ----------------------------------------------------------- */

void h_session_key(http_request *rq, http_response *rs)
{
    qk_svc *s = &rq->kms->svc;
    envelope env;
    authed a;
    session_grant g;
    qk_principal who;
    qk_err e;
    session_ask ask = {0};
    char ts[24];
    uint64_t t0 = session_clock_ns();

    memset(&a, 0, sizeof(a));
    memset(&g, 0, sizeof(g));
    if (parse_envelope(rq, rs, &env) != 0 || !bound_to_cert(rq, rs, &env))
        goto out;
    session_metrics_stage(s->smetrics, SESSION_STAGE_PARSE, &t0);
    if (authenticate(rq, rs, "key", &env, &a, &t0) != 0 ||
        inner_fields(rq, rs, &env, &a, true, &ask.session_id, &ask.peer_id, &ask.delivered,
                     ts) != 0 ||
        inner_epoch(rq, rs, a.inner, &ask) != 0)
        goto out;
    session_metrics_stage(s->smetrics, SESSION_STAGE_OPEN, &t0);
    /* Per device only once authenticated, so nobody can spend another
     * device's tokens (a replay gets its token back). A device that
     * kmsd's row shows inactive is refused by the stored function, which
     * records the nonce first. */
    if (!http_rate_limit(rq, rs, RL_DEVICE, env.device_id))
        goto out;
    ask.ts = strtoll(ts, NULL, 10);
    who = device_principal(rq, &a.da);
    if (sessions_issue(s, &who, &a.da, &ask, &g, &e) != QK_OK) {
        answer_failure(rq, rs, &env, &a, &e);
        goto out;
    }
    if (deliver(rs, &env, &a, ask.session_id, &g, false) == 0)
        sessions_delivered(s, &who, &g);
    session_metrics_stage(s->smetrics, SESSION_STAGE_DELIVER, &t0);
out:
    session_grant_clear(&g);
    authed_clear(&a);
}

void h_session_end(http_request *rq, http_response *rs)
{
    qk_svc *s = &rq->kms->svc;
    envelope env;
    authed a;
    qk_principal who;
    qk_err e;
    const char *sid = NULL;
    char ts[24];
    uint64_t t0 = session_clock_ns();

    memset(&a, 0, sizeof(a));
    if (parse_envelope(rq, rs, &env) != 0 || !bound_to_cert(rq, rs, &env) ||
        authenticate(rq, rs, "end", &env, &a, &t0) != 0 ||
        inner_fields(rq, rs, &env, &a, false, &sid, NULL, NULL, ts) != 0)
        goto out;
    if (!http_rate_limit(rq, rs, RL_DEVICE, env.device_id))
        goto out;
    who = device_principal(rq, &a.da);
    if (!sid) { /* "all": true (inner_fields) */
        int ended = 0, streams = 0;
        if (sessions_end_all(s, &who, &a.da, strtoll(ts, NULL, 10), &ended, &streams, &e) !=
            QK_OK) {
            answer_failure(rq, rs, &env, &a, &e);
            goto out;
        }
        http_json(rs, 200,
                  json_pack("{s:i,s:b,s:b,s:i,s:i}", "v", QKP_VERSION, "all", 1, "ended", 1,
                            "sessions_ended", ended, "streams_ended", streams));
        goto out;
    }
    if (sessions_end(s, &who, &a.da, sid, strtoll(ts, NULL, 10), &e) != QK_OK) {
        answer_failure(rq, rs, &env, &a, &e);
        goto out;
    }
    http_json(rs, 200, json_pack("{s:i,s:s,s:b}", "v", QKP_VERSION, "session_id", sid, "ended", 1));
out:
    authed_clear(&a);
}

/* ---- key streams (docs/protocol.md, "Key streams") ---------------------------- */

/* The stream key request's fields: stream_id (optional), peer_id, seq, ts.
 * 0, or -1 with rs answered (422) and the refusal counted. */
static int stream_fields(http_request *rq, http_response *rs, const envelope *env, authed *a,
                         stream_ask *ask)
{
    static const char *const fields[] = {"stream_id", "peer_id", "seq", "ts", NULL};
    json_t *sid = json_object_get(a->inner, "stream_id"), *seq = json_object_get(a->inner, "seq");
    long long ts;

    if (inner_known(rq, rs, a->inner, fields, &ts) != 0)
        return -1;
    ask->ts = ts;
    ask->stream_id = json_string_value(sid);
    ask->peer_id = json_string_value(json_object_get(a->inner, "peer_id"));
    if ((sid && !ask->stream_id) || !qkp_id_valid(ask->peer_id) ||
        !strcmp(ask->peer_id, env->device_id) || !json_is_integer(seq) ||
        json_integer_value(seq) < 0) {
        http_error(rs, 422, "invalid_request",
                   "peer_id must be another device's ID, seq an integer from 0, stream_id a "
                   "string");
        refuse(rq, SESSION_REFUSE_INVALID);
        return -1;
    }
    ask->seq = (int64_t)json_integer_value(seq);
    return 0;
}

void h_stream_key(http_request *rq, http_response *rs)
{
    qk_svc *s = &rq->kms->svc;
    envelope env;
    authed a;
    stream_grant g;
    stream_ask ask = {0};
    qk_principal who;
    qk_err e;
    uint8_t nonce[QKP_NONCE_LEN], ct[32 + QKP_TAG_LEN];
    char aad[QKP_MAX_AAD], nonce_b64[QKP_B64URL_LEN(QKP_NONCE_LEN)],
        ct_b64[QKP_B64URL_LEN(sizeof(ct))];
    int aad_len;
    uint64_t t0 = session_clock_ns();

    memset(&a, 0, sizeof(a));
    memset(&g, 0, sizeof(g));
    if (parse_envelope(rq, rs, &env) != 0 || !bound_to_cert(rq, rs, &env) ||
        authenticate(rq, rs, "stream", &env, &a, &t0) != 0 ||
        stream_fields(rq, rs, &env, &a, &ask) != 0)
        goto out;
    if (!http_rate_limit(rq, rs, RL_DEVICE, env.device_id))
        goto out;
    who = device_principal(rq, &a.da);
    if (streams_key(s, &who, &a.da, &ask, &g, &e) != QK_OK) {
        answer_failure(rq, rs, &env, &a, &e);
        goto out;
    }
    /* Sealed under the request's device key, bound to the request. */
    aad_len = qkp_stream_aad(g.stream_id, env.device_id, env.key_index, g.seq, g.key_id,
                             g.expires_at, env.nonce_b64, aad, sizeof(aad));
    if (g.key_len > 32 || RAND_bytes(nonce, sizeof(nonce)) != 1 || aad_len < 0 ||
        qkp_seal_suite(a.da.suite, a.da.key, a.da.key_len, nonce, aad, (size_t)aad_len, g.key,
                       g.key_len, ct) != 0) {
        http_error(rs, 500, "internal", "internal error (see kmsd log)");
        goto out;
    }
    qkp_b64url_encode(nonce, sizeof(nonce), nonce_b64);
    qkp_b64url_encode(ct, g.key_len + QKP_TAG_LEN, ct_b64);
    http_json(rs, 200,
              json_pack("{s:i,s:s,s:I,s:s,s:i,s:I,s:I,s:i,s:s,s:s}", "v", QKP_VERSION,
                        "stream_id", g.stream_id, "seq", (json_int_t)g.seq, "key_id", g.key_id,
                        "key_bits", g.key_bits, "expires_at", (json_int_t)g.expires_at, "low",
                        (json_int_t)g.low, "window", g.window, "nonce", nonce_b64, "ct", ct_b64));
out:
    OPENSSL_cleanse(ct, sizeof(ct));
    stream_grant_clear(&g);
    authed_clear(&a);
}

void h_stream_end(http_request *rq, http_response *rs)
{
    qk_svc *s = &rq->kms->svc;
    static const char *const fields[] = {"stream_id", "ts", NULL};
    envelope env;
    authed a;
    qk_principal who;
    qk_err e;
    const char *sid;
    long long ts;
    uint64_t t0 = session_clock_ns();

    memset(&a, 0, sizeof(a));
    if (parse_envelope(rq, rs, &env) != 0 || !bound_to_cert(rq, rs, &env) ||
        authenticate(rq, rs, "stream_end", &env, &a, &t0) != 0 ||
        inner_known(rq, rs, a.inner, fields, &ts) != 0)
        goto out;
    if (!(sid = json_string_value(json_object_get(a.inner, "stream_id")))) {
        http_error(rs, 422, "invalid_request", "stream_id must be a string");
        refuse(rq, SESSION_REFUSE_INVALID);
        goto out;
    }
    if (!http_rate_limit(rq, rs, RL_DEVICE, env.device_id))
        goto out;
    who = device_principal(rq, &a.da);
    if (streams_end(s, &who, &a.da, sid, ts, &e) != QK_OK) {
        answer_failure(rq, rs, &env, &a, &e);
        goto out;
    }
    http_json(rs, 200, json_pack("{s:i,s:s,s:b}", "v", QKP_VERSION, "stream_id", sid, "ended", 1));
out:
    authed_clear(&a);
}

/* ---- the gateway login (docs/gateways.md, "Login") -------------------------- */

/* jansson's copy of a password, on every path (its parse buffers are
 * freed unwiped: docs/gateways.md says so). */
static void wipe_password(json_t *o)
{
    json_t *v = json_object_get(o, "password");
    if (json_is_string(v))
        OPENSSL_cleanse((void *)json_string_value(v), json_string_length(v));
}

/* The login's inner request: {"tid", "password", "ts"}; logout's {"ts"}. */
static int login_fields(http_request *rq, http_response *rs, authed *a, bool login,
                        login_ask *ask)
{
    static const char *const login_known[] = {"tid", "password", "ts", NULL};
    static const char *const logout_known[] = {"ts", NULL};
    json_t *v;
    long long ts;

    if (inner_known(rq, rs, a->inner, login ? login_known : logout_known, &ts) != 0)
        return -1;
    ask->ts = ts;
    if (!login)
        return 0;
    ask->tid = json_string_value(json_object_get(a->inner, "tid"));
    v = json_object_get(a->inner, "password");
    ask->password = (const uint8_t *)json_string_value(v);
    ask->password_len = json_is_string(v) ? json_string_length(v) : 0;
    if (!gateway_tid_valid(ask->tid) || !ask->password || ask->password_len < 1 ||
        ask->password_len > 256) {
        http_error(rs, 422, "invalid_request",
                   "tid must be 1-64 printable ASCII characters, password a string of 1 to 256"
                   " bytes");
        refuse(rq, SESSION_REFUSE_INVALID);
        return -1;
    }
    return 0;
}

/* A gateway's request, opened: the envelope, its certificate binding, the
 * AEAD under its key (op in the AAD), the inner fields and the device rate
 * limit. false with rs answered. */
static bool open_gateway(http_request *rq, http_response *rs, const char *op, bool login,
                         envelope *env, authed *a, login_ask *ask, uint64_t *t0)
{
    /* t0 is the handler's: the authenticated request keeps a pointer to it. */
    return parse_envelope(rq, rs, env) == 0 && bound_to_cert(rq, rs, env) &&
           authenticate(rq, rs, op, env, a, t0) == 0 && login_fields(rq, rs, a, login, ask) == 0 &&
           http_rate_limit(rq, rs, RL_DEVICE, env->device_id);
}

void h_gateway_login(http_request *rq, http_response *rs)
{
    qk_svc *s = &rq->kms->svc;
    envelope env;
    authed a;
    session_grant g;
    qk_principal who;
    qk_err e;
    login_ask ask = {0};
    char login_id[37];
    qk_kind k;
    uint64_t t0 = session_clock_ns();

    memset(&a, 0, sizeof(a));
    memset(&g, 0, sizeof(g));
    if (!open_gateway(rq, rs, "login", true, &env, &a, &ask, &t0))
        goto out;
    who = device_principal(rq, &a.da);
    k = gateway_login(s, &who, &a.da, &ask, login_id, &g, &e);
    if (k != QK_OK) {
        answer_failure(rq, rs, &env, &a, &e);
        goto out;
    }
    if (deliver(rs, &env, &a, login_id, &g, true) == 0)
        sessions_delivered(s, &who, &g);
out:
    session_grant_clear(&g);
    wipe_password(a.inner);
    authed_clear(&a); /* wipes the opened inner request */
}

void h_gateway_logout(http_request *rq, http_response *rs)
{
    envelope env;
    authed a;
    qk_principal who;
    qk_err e;
    login_ask ask = {0};
    uint64_t t0 = session_clock_ns();

    memset(&a, 0, sizeof(a));
    if (!open_gateway(rq, rs, "logout", false, &env, &a, &ask, &t0))
        goto out;
    who = device_principal(rq, &a.da);
    if (gateway_logout(&rq->kms->svc, &who, &a.da, ask.ts, &e) != QK_OK) {
        answer_failure(rq, rs, &env, &a, &e);
        goto out;
    }
    http_json(rs, 200, json_pack("{s:i,s:b}", "v", QKP_VERSION, "logged_out", 1));
out:
    authed_clear(&a);
}

/* POST /v1/gateway/reset: the gateway unbinds itself from its owners and
 * ends its sessions (docs/gateways.md, "Owners, binding, reset"). */
void h_gateway_reset(http_request *rq, http_response *rs)
{
    envelope env;
    authed a;
    qk_principal who;
    qk_err e;
    login_ask ask = {0};
    int unbound = 0, ended = 0, epoch = 0;
    uint64_t t0 = session_clock_ns();

    memset(&a, 0, sizeof(a));
    if (!open_gateway(rq, rs, "reset", false, &env, &a, &ask, &t0))
        goto out;
    who = device_principal(rq, &a.da);
    if (gateway_reset(&rq->kms->svc, &who, &a.da, ask.ts, &unbound, &ended, &epoch, &e) !=
        QK_OK) {
        answer_failure(rq, rs, &env, &a, &e);
        goto out;
    }
    http_json(rs, 200, json_pack("{s:i,s:b,s:i,s:i,s:i}", "v", QKP_VERSION, "reset", 1,
                                 "unbound", unbound, "sessions_ended", ended, "bind_epoch",
                                 epoch));
out:
    authed_clear(&a);
}
