/* sessions — device protocol v1: request authentication, paired session keys, ends. */
#include "service/sessions.h"

#include <errno.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#include "service/device_model.h"
#include "hexutil.h"
#include "service/keycache.h"
#include "log.h"
#include "service/master.h"
#include "store/pgjson.h"
#include "qkms_proto.h"
#include "store/queries.h"
#include "api/ratelimit.h"
#include "api/routes.h"

#define ENVELOPE_MAX 8192
#define SESSION_WRAPPED_MAX (32 + KEYWRAP_OVERHEAD)

/* ---- metrics ---------------------------------------------------------------- */

enum { REFUSE_AUTH, REFUSE_INACTIVE, REFUSE_NOT_PARTY, REFUSE_PEER_MISMATCH, REFUSE_POLICY,
       REFUSE_ENDED, REFUSE_PEER, REFUSE_INVALID, REFUSE__N };
static const char *const refuse_names[] = {"unauthenticated", "device_inactive", "not_a_party",
                                           "peer_mismatch", "policy_denied", "session_ended",
                                           "unknown_peer", "invalid_request"};

/* Where a key request's time goes (docs/performance.md). */
enum { STAGE_PARSE, STAGE_KEY_LOOKUP, STAGE_KEY_UNWRAP, STAGE_OPEN, STAGE_SESSION_TX,
       STAGE_NEW_KEY, STAGE_DELIVER, STAGE__N };
static const char *const stage_names[] = {"parse", "device_key_lookup", "device_key_unwrap",
                                          "open_request", "session_tx", "new_session_key",
                                          "deliver"};

struct session_metrics {
    _Atomic uint64_t created, deliveries, ended_by_party, ended_by_operator, reaped;
    _Atomic uint64_t refused[REFUSE__N];
    _Atomic uint64_t stage_ns[STAGE__N], stage_count[STAGE__N];
};

static uint64_t now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

/* Close the current stage and start the next one. */
static void stage(session_metrics *m, int which, uint64_t *t0)
{
    uint64_t t = now_ns();
    atomic_fetch_add(&m->stage_ns[which], t - *t0);
    atomic_fetch_add(&m->stage_count[which], 1);
    *t0 = t;
}

session_metrics *session_metrics_new(void) { return calloc(1, sizeof(session_metrics)); }
void session_metrics_free(session_metrics *m) { free(m); }

void session_metrics_render(void *ctx, FILE *f)
{
    session_metrics *m = ctx;
    fprintf(f,
            "# HELP qkms_sessions_created_total Sessions created (first key request).\n"
            "# TYPE qkms_sessions_created_total counter\nqkms_sessions_created_total %llu\n"
            "# HELP qkms_session_deliveries_total Session keys delivered to a party.\n"
            "# TYPE qkms_session_deliveries_total counter\nqkms_session_deliveries_total %llu\n"
            "# HELP qkms_sessions_ended_total Sessions ended by this kmsd, by reason.\n"
            "# TYPE qkms_sessions_ended_total counter\n"
            "qkms_sessions_ended_total{reason=\"ended_by_party\"} %llu\n"
            "qkms_sessions_ended_total{reason=\"ended_by_operator\"} %llu\n"
            "qkms_sessions_ended_total{reason=\"expired\"} %llu\n"
            "# HELP qkms_session_refusals_total Refused device requests, by reason.\n"
            "# TYPE qkms_session_refusals_total counter\n",
            (unsigned long long)atomic_load(&m->created),
            (unsigned long long)atomic_load(&m->deliveries),
            (unsigned long long)atomic_load(&m->ended_by_party),
            (unsigned long long)atomic_load(&m->ended_by_operator),
            (unsigned long long)atomic_load(&m->reaped));
    for (int i = 0; i < REFUSE__N; i++)
        fprintf(f, "qkms_session_refusals_total{reason=\"%s\"} %llu\n", refuse_names[i],
                (unsigned long long)atomic_load(&m->refused[i]));
    fprintf(f, "# HELP qkms_session_stage_seconds Time spent in each stage of key requests.\n"
               "# TYPE qkms_session_stage_seconds summary\n");
    for (int i = 0; i < STAGE__N; i++)
        fprintf(f,
                "qkms_session_stage_seconds_sum{stage=\"%s\"} %.6f\n"
                "qkms_session_stage_seconds_count{stage=\"%s\"} %llu\n",
                stage_names[i], (double)atomic_load(&m->stage_ns[i]) / 1e9, stage_names[i],
                (unsigned long long)atomic_load(&m->stage_count[i]));
}

static void refuse(http_request *rq, int why)
{
    atomic_fetch_add(&rq->kms->svc.smetrics->refused[why], 1);
}

/* ---- request authentication ------------------------------------------------ */

typedef struct {
    char device_id[QKP_MAX_ID + 1];
    int key_index;
    uint8_t nonce[QKP_NONCE_LEN];
    char nonce_b64[QKP_B64URL_LEN(QKP_NONCE_LEN)];
    uint8_t ct[QKP_MAX_PLAINTEXT + QKP_TAG_LEN];
    size_t ct_len;
} envelope;

typedef struct {
    long long device_pk;
    char state[16];
    uint8_t *key; /* secure heap, KEYWRAP_MAX_KEY + 16 */
    size_t key_len;
    json_t *inner;
} authed;

static void authed_clear(authed *a)
{
    if (a->key)
        OPENSSL_secure_clear_free(a->key, KEYWRAP_MAX_KEY + 16);
    a->key = NULL;
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

/* One 401 for every failure; the reason goes to the log only. */
static void auth_fail(http_request *rq, http_response *rs, const envelope *env, const char *why)
{
    log_emit(LOG_WARN, "device request refused", "{s:s,s:s,s:i,s:s,s:s}", "req_id", rq->req_id,
             "device_id", env->device_id, "key_index", env->key_index, "auth_failure", why,
             "client", rq->client_ip);
    refuse(rq, REFUSE_AUTH);
    http_error(rs, 401, "unauthenticated", "request could not be authenticated");
}

static void unavailable(http_response *rs, const char *code, const char *msg)
{
    rs->retry_after = 1;
    http_error(rs, 503, code, "%s", msg);
}

/* The device key row: 2 from the cache, 1 read by one indexed query (then
 * cached), 0 when there is none, -1 on error (answered). */
static int load_key_row(http_request *rq, http_response *rs, const envelope *env,
                        keycache_entry *e, uint64_t *t0)
{
    qk_svc *k = &rq->kms->svc;
    char idx[8];
    const char *vals[2] = {env->device_id, idx};
    db_status st;
    db_conn *c;
    PGresult *r;
    long bl;

    if (keycache_get(k->keys, env->device_id, env->key_index, e))
        return 2;
    snprintf(idx, sizeof(idx), "%d", env->key_index);
    c = db_acquire(k->db, &st);
    if (!c) {
        http_db_error(rs, st);
        return -1;
    }
    r = db_exec(c, Q_DEVKEY_FOR_AUTH, 2, vals, NULL, NULL, &st);
    db_release(k->db, c);
    stage(k->smetrics, STAGE_KEY_LOOKUP, t0);
    if (!r) {
        http_db_error(rs, st);
        return -1;
    }
    if (PQntuples(r) == 0) {
        PQclear(r);
        return 0;
    }
    memset(e, 0, sizeof(*e));
    e->device_pk = atoll(PQgetvalue(r, 0, 0));
    snprintf(e->device_state, sizeof(e->device_state), "%s", PQgetvalue(r, 0, 1));
    e->key_bits = !strcmp(PQgetvalue(r, 0, 2), "AES-256") ? 256 : 128;
    snprintf(e->key_state, sizeof(e->key_state), "%s", PQgetvalue(r, 0, 4));
    e->not_before = atoll(PQgetvalue(r, 0, 5));
    e->not_after = atoll(PQgetvalue(r, 0, 6));
    bl = PQgetisnull(r, 0, 3) ? 0
                              : qkms_hex_decode(PQgetvalue(r, 0, 3), strlen(PQgetvalue(r, 0, 3)),
                                           e->wrapped, sizeof(e->wrapped));
    e->wrapped_len = bl > 0 ? (size_t)bl : 0;
    PQclear(r);
    keycache_put(k->keys, env->device_id, env->key_index, e);
    return 1;
}

/* Unwrap the device key of row e (found: load_key_row's answer) into a->key. */
static CK_RV unwrap_device_key(http_request *rq, http_response *rs, const envelope *env,
                               keycache_entry *e, int found, const char *ctx, authed *a,
                               uint64_t *t0)
{
    qk_svc *k = &rq->kms->svc;
    CK_RV rv;

    a->key_len = KEYWRAP_MAX_KEY + 16;
    rv = keywrap_unwrap(k->kw, (const uint8_t *)ctx, strlen(ctx), e->wrapped, e->wrapped_len,
                        a->key, &a->key_len);
    if (rv != CKR_OK && (found == 2 || p11_rv_kind(rv) == P11_KIND_NOT_FOUND)) {
        /* A cached row may name a master key version rotated away and
         * destroyed since (the token answers not-found or, for a handle
         * whose object vanished, device-removed); any row may name a
         * version another instance made that we have not loaded yet
         * (not-found). Refresh our view of the versions and read the row
         * again, once. A row just read that failed for another reason
         * would fail the same way again. */
        master_refresh(k, NULL);
        keycache_invalidate(k->keys, env->device_id);
        if (load_key_row(rq, rs, env, e, t0) == 1 && e->wrapped_len) {
            a->key_len = KEYWRAP_MAX_KEY + 16;
            rv = keywrap_unwrap(k->kw, (const uint8_t *)ctx, strlen(ctx), e->wrapped,
                                e->wrapped_len, a->key, &a->key_len);
        }
    }
    return rv;
}

/* Find the device key, unwrap it through the token, open the request. The
 * checks here may use a cached row; the stored function repeats them. */
static int authenticate(http_request *rq, http_response *rs, const char *op, const envelope *env,
                        authed *a, uint64_t *t0)
{
    qk_svc *k = &rq->kms->svc;
    char ctx[256], aad[QKP_MAX_AAD];
    uint8_t *pt = NULL;
    int aad_len, rc = -1, found;
    int64_t now = (int64_t)time(NULL);
    keycache_entry e;
    json_error_t je;
    CK_RV rv;

    memset(a, 0, sizeof(*a));
    found = load_key_row(rq, rs, env, &e, t0);
    if (found < 0)
        return -1;
    if (found == 0) {
        auth_fail(rq, rs, env, "unknown device or key index");
        return -1;
    }
    a->device_pk = e.device_pk;
    snprintf(a->state, sizeof(a->state), "%s", e.device_state);
    if (!strcmp(e.device_state, "revoked") || strcmp(e.key_state, "active") != 0 ||
        e.wrapped_len == 0) {
        auth_fail(rq, rs, env,
                  !strcmp(e.device_state, "revoked") ? "device revoked"
                  : !strcmp(e.key_state, "retired")  ? "key retired"
                                                     : "key destroyed");
        return -1;
    }
    if (now < e.not_before || now >= e.not_after) {
        auth_fail(rq, rs, env, "key outside its validity (expired or not yet valid)");
        return -1;
    }
    a->key = OPENSSL_secure_malloc(KEYWRAP_MAX_KEY + 16);
    pt = OPENSSL_secure_malloc(env->ct_len);
    if (!a->key || !pt) {
        http_error(rs, 500, "internal", "internal error (see kmsd log)");
        goto out;
    }
    device_key_context(env->device_id, env->key_index, e.key_bits, ctx, sizeof(ctx));
    rv = unwrap_device_key(rq, rs, env, &e, found, ctx, a, t0);
    stage(k->smetrics, STAGE_KEY_UNWRAP, t0);
    if (rv != CKR_OK) {
        log_emit(LOG_ERROR, "device key unwrap failed", "{s:s,s:s,s:i}", "ckr", p11_rv_name(rv),
                 "device_id", env->device_id, "key_index", env->key_index);
        if (p11_rv_kind(rv) == P11_KIND_UNAVAILABLE || p11_rv_kind(rv) == P11_KIND_NOT_FOUND)
            unavailable(rs, "token_unavailable", "key token unavailable, retry later");
        else
            http_error(rs, 500, "internal", "internal error (see kmsd log)");
        goto out;
    }
    aad_len = qkp_request_aad(op, env->device_id, env->key_index, aad, sizeof(aad));
    if (aad_len < 0 || qkp_open(a->key, a->key_len, env->nonce, aad, (size_t)aad_len, env->ct,
                                env->ct_len, pt) != 0) {
        auth_fail(rq, rs, env, "AEAD tag did not verify (wrong key, operation or tampering)");
        goto out;
    }
    a->inner = json_loadb((const char *)pt, env->ct_len - QKP_TAG_LEN, JSON_REJECT_DUPLICATES, &je);
    if (!json_is_object(a->inner)) {
        http_error(rs, 422, "invalid_request", "the inner request is not a JSON object");
        refuse(rq, REFUSE_INVALID);
        goto out;
    }
    rc = 0;
out:
    OPENSSL_cleanse(&e, sizeof(e));
    if (pt)
        OPENSSL_secure_clear_free(pt, env->ct_len);
    if (rc != 0)
        authed_clear(a);
    return rc;
}

/* Fields of the inner request. The clock check is part of authentication
 * and is made by the stored function against the database's clock (one
 * clock for every instance, the one nonces expire by): here ts is only
 * required to be an integer. */
static int inner_fields(http_request *rq, http_response *rs, const envelope *env, authed *a,
                        bool want_peer, const char **sid, const char **peer, bool *delivered,
                        char ts_out[24])
{
    json_t *ts = json_object_get(a->inner, "ts"), *d = json_object_get(a->inner, "delivery");
    const char *key;
    json_t *v;

    json_object_foreach(a->inner, key, v) {
        if (strcmp(key, "session_id") && strcmp(key, "ts") &&
            !(want_peer && (!strcmp(key, "peer_id") || !strcmp(key, "delivery")))) {
            http_error(rs, 422, "invalid_request", "unknown field '%.32s'", key);
            refuse(rq, REFUSE_INVALID);
            return -1;
        }
    }
    if (!json_is_integer(ts)) {
        http_error(rs, 422, "invalid_request", "ts must be an integer");
        refuse(rq, REFUSE_INVALID);
        return -1;
    }
    snprintf(ts_out, 24, "%lld", (long long)json_integer_value(ts));
    *sid = json_string_value(json_object_get(a->inner, "session_id"));
    if (!qkp_id_valid(*sid)) {
        http_error(rs, 422, "invalid_request", "session_id is not a valid ID");
        refuse(rq, REFUSE_INVALID);
        return -1;
    }
    if (!want_peer)
        return 0;
    *peer = json_string_value(json_object_get(a->inner, "peer_id"));
    if (!qkp_id_valid(*peer) || !strcmp(*peer, env->device_id)) {
        http_error(rs, 422, "invalid_request", "peer_id must be another device's ID");
        refuse(rq, REFUSE_INVALID);
        return -1;
    }
    if (d && !(json_is_string(d) && !strcmp(json_string_value(d), "delivered"))) {
        http_error(rs, 422, "invalid_request", "delivery may only be \"delivered\"");
        refuse(rq, REFUSE_INVALID);
        return -1;
    }
    *delivered = d != NULL;
    return 0;
}

static uint8_t *sid_key; /* secure heap, SID_KEY_LEN; set once at start */

int sessions_set_id_key(const uint8_t *key, size_t len)
{
    if (sid_key)
        OPENSSL_secure_clear_free(sid_key, SID_KEY_LEN);
    sid_key = NULL;
    if (!key)
        return 0;
    if (len != SID_KEY_LEN || !(sid_key = OPENSSL_secure_malloc(SID_KEY_LEN)))
        return -1;
    memcpy(sid_key, key, SID_KEY_LEN);
    return 0;
}

int session_hash(const char *session_id, uint8_t out[32])
{
    unsigned int n = 32;
    if (!sid_key || !HMAC(EVP_sha256(), sid_key, SID_KEY_LEN, (const uint8_t *)session_id,
                          strlen(session_id), out, &n) || n != 32)
        return -1;
    return 0;
}

void session_hash_legacy(const char *session_id, uint8_t out[32])
{
    unsigned int n = 0;
    EVP_Digest(session_id, strlen(session_id), out, &n, EVP_sha256(), NULL);
}

int session_key_context(const char *hash_hex, const char *key_id, char *out, size_t len)
{
    int n = snprintf(out, len, "qkms/session-key/v1\n%s\n%s", hash_hex, key_id);
    return n > 0 && (size_t)n < len ? n : -1;
}

static void session_key_context_of(const uint8_t hash[32], const char *key_id, char *out,
                                   size_t len)
{
    char hx[65];
    qkms_hex_encode(hash, 32, hx);
    session_key_context(hx, key_id, out, len);
}

static void uuid4(char out[37])
{
    uint8_t b[16];
    RAND_bytes(b, sizeof(b));
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    snprintf(out, 37, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", b[0],
             b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13],
             b[14], b[15]);
}

typedef struct {
    char key_id[37];
    char wrapped_hex[2 * SESSION_WRAPPED_MAX + 1];
    char master[12];
    char bits[8];
    const char *provenance;
} candidate;

/* A new session key from the entropy interface, wrapped under the master key. */
static int make_candidate(http_request *rq, http_response *rs, const uint8_t hash[32], int bits,
                          candidate *cd)
{
    qk_svc *k = &rq->kms->svc;
    uint8_t *key = OPENSSL_secure_malloc(32), wrapped[SESSION_WRAPPED_MAX];
    size_t wl = sizeof(wrapped);
    char ctx[160];
    uint32_t used;
    CK_RV rv;
    int rc = -1;

    if (!key) {
        http_error(rs, 500, "internal", "out of secure memory");
        return -1;
    }
    if (entropy_get(k->ent, key, (size_t)bits / 8, &cd->provenance) != 0) {
        unavailable(rs, "entropy_unavailable", "no entropy source available");
        goto out;
    }
    uuid4(cd->key_id);
    session_key_context_of(hash, cd->key_id, ctx, sizeof(ctx));
    used = keywrap_active(k->kw);
    rv = keywrap_wrap(k->kw, (const uint8_t *)ctx, strlen(ctx), key, (size_t)bits / 8, wrapped, &wl);
    if (rv != CKR_OK && master_refresh(k, NULL) == 0 && keywrap_active(k->kw) != used) {
        /* The version we think active may have been retired and destroyed
         * by another instance since our last refresh: look again, once. */
        wl = sizeof(wrapped);
        rv = keywrap_wrap(k->kw, (const uint8_t *)ctx, strlen(ctx), key, (size_t)bits / 8,
                          wrapped, &wl);
    }
    if (rv != CKR_OK) {
        log_emit(LOG_ERROR, "session key wrap failed", "{s:s}", "ckr", p11_rv_name(rv));
        unavailable(rs, "token_unavailable", "key token unavailable, retry later");
        goto out;
    }
    qkms_hex_encode(wrapped, wl, cd->wrapped_hex);
    snprintf(cd->master, sizeof(cd->master), "%u", keywrap_blob_version(wrapped, wl));
    snprintf(cd->bits, sizeof(cd->bits), "%d", bits);
    rc = 0;
out:
    OPENSSL_secure_clear_free(key, 32);
    return rc;
}

static const struct {
    const char *outcome;
    int status;
    const char *code;
    const char *message;
    int refusal;
} outcomes[] = {
    {"ended", 409, "session_ended", "this session has ended; use a new session ID", REFUSE_ENDED},
    {"not_a_party", 403, "not_a_party", "this device is not a party of the session", REFUSE_NOT_PARTY},
    {"peer_mismatch", 403, "peer_mismatch", "the session's other party is a different device", REFUSE_PEER_MISMATCH},
    {"unknown_peer", 422, "unknown_peer", "the peer is not a registered device", REFUSE_PEER},
    {"peer_inactive", 422, "peer_inactive", "the peer is suspended or revoked", REFUSE_PEER},
    {"policy_denied", 403, "policy_denied", "no pairing policy allows these two devices", REFUSE_POLICY},
};

/* Deliver: unwrap the session key and seal it under the device key. */
static void deliver(http_request *rq, http_response *rs, const envelope *env, authed *a,
                    const char *sid, PGresult *r)
{
    qk_svc *k = &rq->kms->svc;
    /* The wrap context names the hash the row is keyed by (a row from
     * before the keyed hash keeps its SHA-256, docs/sessions.md). */
    const char *key_id = PQgetvalue(r, 0, 1), *whex = PQgetvalue(r, 0, 3),
               *hash_hex = PQgetvalue(r, 0, 8);
    int bits = atoi(PQgetvalue(r, 0, 2));
    long long expires = atoll(PQgetvalue(r, 0, 4));
    uint8_t blob[SESSION_WRAPPED_MAX], nonce[QKP_NONCE_LEN], ct[32 + QKP_TAG_LEN];
    uint8_t *skey = OPENSSL_secure_malloc(KEYWRAP_MAX_KEY + 16);
    char ctx[160], aad[QKP_MAX_AAD], nonce_b64[QKP_B64URL_LEN(QKP_NONCE_LEN)],
        ct_b64[QKP_B64URL_LEN(sizeof(ct))];
    size_t sl = KEYWRAP_MAX_KEY + 16;
    long bl = qkms_hex_decode(whex, strlen(whex), blob, sizeof(blob));
    int aad_len;
    CK_RV rv;

    if (!skey || bl <= 0 || session_key_context(hash_hex, key_id, ctx, sizeof(ctx)) < 0) {
        http_error(rs, 500, "internal", "internal error (see kmsd log)");
        goto out;
    }
    rv = keywrap_unwrap(k->kw, (const uint8_t *)ctx, strlen(ctx), blob, (size_t)bl, skey, &sl);
    if (p11_rv_kind(rv) == P11_KIND_NOT_FOUND && master_refresh(k, NULL) == 0) {
        /* Rewrapped by another instance under a version we have not
         * loaded yet: load it and try once more. */
        sl = KEYWRAP_MAX_KEY + 16;
        rv = keywrap_unwrap(k->kw, (const uint8_t *)ctx, strlen(ctx), blob, (size_t)bl, skey, &sl);
    }
    if (rv != CKR_OK || sl != (size_t)bits / 8) {
        log_emit(LOG_ERROR, "session key unwrap failed", "{s:s,s:s}", "ckr", p11_rv_name(rv),
                 "key_id", key_id);
        if (p11_rv_kind(rv) == P11_KIND_UNAVAILABLE || p11_rv_kind(rv) == P11_KIND_NOT_FOUND)
            unavailable(rs, "token_unavailable", "key token unavailable, retry later");
        else
            http_error(rs, 500, "internal", "internal error (see kmsd log)");
        goto out;
    }
    aad_len = qkp_response_aad(sid, env->device_id, env->key_index, key_id, expires,
                               env->nonce_b64, aad, sizeof(aad));
    if (RAND_bytes(nonce, sizeof(nonce)) != 1 || aad_len < 0 ||
        qkp_seal(a->key, a->key_len, nonce, aad, (size_t)aad_len, skey, sl, ct) != 0) {
        http_error(rs, 500, "internal", "internal error (see kmsd log)");
        goto out;
    }
    qkp_b64url_encode(nonce, sizeof(nonce), nonce_b64);
    qkp_b64url_encode(ct, sl + QKP_TAG_LEN, ct_b64);
    atomic_fetch_add(&k->smetrics->deliveries, 1);
    if (PQgetvalue(r, 0, 7)[0] == 't') {
        atomic_fetch_add(&k->smetrics->created, 1);
        log_emit(LOG_INFO, "session created", "{s:s,s:s,s:s,s:s}", "req_id", rq->req_id,
                 "device_id", env->device_id, "key_id", key_id, "policy", PQgetvalue(r, 0, 5));
    }
    http_json(rs, 200,
              json_pack("{s:i,s:s,s:s,s:i,s:I,s:s,s:s,s:s}", "v", QKP_VERSION, "session_id", sid,
                        "key_id", key_id, "key_bits", bits, "expires_at", (json_int_t)expires,
                        "delivery", PQgetvalue(r, 0, 6), "nonce", nonce_b64, "ct", ct_b64));
out:
    OPENSSL_cleanse(blob, sizeof(blob));
    if (skey)
        OPENSSL_secure_clear_free(skey, KEYWRAP_MAX_KEY + 16);
}

/* What a request's stored-function call needs besides the envelope. */
typedef struct {
    const char *sid, *peer;
    bool delivered;
    char ts[24], skew[12], pk[24], kidx[8];
    uint8_t hash[32], legacy[32];
} session_call;

static int session_call_init(http_request *rq, http_response *rs, const envelope *env, authed *a,
                             bool key_op, session_call *sc)
{
    memset(sc, 0, sizeof(*sc));
    if (inner_fields(rq, rs, env, a, key_op, &sc->sid, key_op ? &sc->peer : NULL,
                     key_op ? &sc->delivered : NULL, sc->ts) != 0)
        return -1;
    if (session_hash(sc->sid, sc->hash) != 0) {
        http_error(rs, 500, "internal", "internal error (see kmsd log)");
        return -1;
    }
    session_hash_legacy(sc->sid, sc->legacy);
    snprintf(sc->skew, sizeof(sc->skew), "%d", rq->kms->cfg.protocol_clock_skew);
    snprintf(sc->pk, sizeof(sc->pk), "%lld", a->device_pk);
    snprintf(sc->kidx, sizeof(sc->kidx), "%d", env->key_index);
    return 0;
}

/* One call of qkms_session_key: the result, or NULL (answered). */
static PGresult *session_key_call(http_request *rq, http_response *rs, const envelope *env,
                                  const session_call *sc, const candidate *cd)
{
    qk_svc *k = &rq->kms->svc;
    const char *vals[15] = {sc->pk, sc->kidx, (const char *)env->nonce, (const char *)sc->hash,
                            sc->sid, sc->peer, sc->delivered ? "true" : "false", cd->key_id,
                            cd->wrapped_hex, cd->master, cd->provenance, cd->bits, sc->ts,
                            sc->skew, (const char *)sc->legacy};
    int lens[15] = {0, 0, QKP_NONCE_LEN, 32, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32};
    int fmts[15] = {0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1};
    db_status st;
    PGresult *r = db_query(k->db, Q_SESSION_KEY, 15, vals, lens, fmts, &st);
    if (!r)
        http_db_error(rs, st);
    return r;
}

/* Answer a refusal outcome of qkms_session_key (everything but ok, need_key
 * and master_inactive). */
static void session_key_refused(http_request *rq, http_response *rs, const envelope *env,
                                const session_call *sc, PGresult *r)
{
    qk_svc *k = &rq->kms->svc;
    const char *outcome = PQgetvalue(r, 0, 0);

    if (!strcmp(outcome, "replay")) {
        ratelimit_refund(rq->kms->rl[RL_DEVICE], env->device_id, ratelimit_now_ns());
        auth_fail(rq, rs, env, "nonce already used (replay)");
        return;
    }
    if (!strcmp(outcome, "stale")) {
        auth_fail(rq, rs, env, "timestamp outside the clock window");
        return;
    }
    if (!strcmp(outcome, "unauthenticated")) {
        /* The authoritative re-check refused what a cached row allowed. */
        keycache_invalidate(k->keys, env->device_id);
        auth_fail(rq, rs, env, PQgetvalue(r, 0, 5));
        return;
    }
    if (!strcmp(outcome, "device_inactive")) {
        keycache_invalidate(k->keys, env->device_id);
        refuse(rq, REFUSE_INACTIVE);
        http_error(rs, 403, "device_inactive", "this device is %s", PQgetvalue(r, 0, 5));
        return;
    }
    for (size_t i = 0; i < sizeof(outcomes) / sizeof(outcomes[0]); i++)
        if (!strcmp(outcome, outcomes[i].outcome)) {
            refuse(rq, outcomes[i].refusal);
            log_emit(LOG_WARN, "session request refused", "{s:s,s:s,s:s,s:s}", "req_id",
                     rq->req_id, "device_id", env->device_id, "peer_id", sc->peer, "reason",
                     outcome);
            http_error(rs, outcomes[i].status, outcomes[i].code, "%s", outcomes[i].message);
            return;
        }
    log_emit(LOG_ERROR, "unexpected session outcome", "{s:s}", "outcome", outcome);
    http_error(rs, 500, "internal", "internal error (see kmsd log)");
}

void h_session_key(http_request *rq, http_response *rs)
{
    qk_svc *k = &rq->kms->svc;
    envelope env;
    authed a;
    session_call sc;
    candidate cd;
    PGresult *r = NULL;
    uint64_t t0 = now_ns();

    memset(&a, 0, sizeof(a));
    memset(&cd, 0, sizeof(cd));
    if (parse_envelope(rq, rs, &env) != 0)
        goto out;
    stage(k->smetrics, STAGE_PARSE, &t0);
    if (authenticate(rq, rs, "key", &env, &a, &t0) != 0 ||
        session_call_init(rq, rs, &env, &a, true, &sc) != 0)
        goto out;
    stage(k->smetrics, STAGE_OPEN, &t0);
    /* Per device only once authenticated, so nobody can spend another
     * device's tokens (a replay gets its token back below). A device that
     * kmsd's row shows inactive is refused by the stored function, which
     * records the nonce first. */
    if (!http_rate_limit(rq, rs, RL_DEVICE, env.device_id))
        goto out;
    /* A candidate key goes with the first call: when the session is new (the
     * common first request) this saves a round trip; when it exists, the
     * candidate is simply dropped (it never left kmsd unwrapped). */
    if (make_candidate(rq, rs, sc.hash, 128, &cd) != 0)
        goto out;
    stage(k->smetrics, STAGE_NEW_KEY, &t0);
    for (int attempt = 0; attempt < 3; attempt++) {
        const char *outcome;
        r = session_key_call(rq, rs, &env, &sc, &cd);
        stage(k->smetrics, STAGE_SESSION_TX, &t0);
        if (!r)
            goto out;
        outcome = PQgetvalue(r, 0, 0);
        if (!strcmp(outcome, "ok")) {
            deliver(rq, rs, &env, &a, sc.sid, r);
            stage(k->smetrics, STAGE_DELIVER, &t0);
            goto out;
        }
        if (!strcmp(outcome, "need_key") || !strcmp(outcome, "master_inactive")) {
            /* need_key: the policy wants other bits. master_inactive: the
             * candidate was wrapped under a version another instance has
             * retired; learn the active one and wrap again. Neither wrote
             * anything (the nonce is still unused). */
            int bits = atoi(PQgetvalue(r, 0, 2));
            if (outcome[0] == 'm' && master_refresh(k, NULL) != 0) {
                unavailable(rs, "unavailable", "database unavailable, retry later");
                goto out;
            }
            PQclear(r);
            r = NULL;
            if (make_candidate(rq, rs, sc.hash, bits, &cd) != 0)
                goto out;
            stage(k->smetrics, STAGE_NEW_KEY, &t0);
            continue;
        }
        session_key_refused(rq, rs, &env, &sc, r);
        goto out;
    }
    log_emit(LOG_ERROR, "session could not be settled", "{s:s}", "device_id", env.device_id);
    http_error(rs, 500, "internal", "session could not be settled");
out:
    PQclear(r);
    OPENSSL_cleanse(&cd, sizeof(cd));
    OPENSSL_cleanse(&sc, sizeof(sc));
    authed_clear(&a);
}

/* Answer an outcome of qkms_session_end. */
static void session_end_answer(http_request *rq, http_response *rs, const envelope *env,
                               const char *sid, const char *outcome)
{
    qk_svc *k = &rq->kms->svc;
    if (!strcmp(outcome, "ok")) {
        atomic_fetch_add(&k->smetrics->ended_by_party, 1);
        log_emit(LOG_INFO, "session ended", "{s:s,s:s,s:s}", "req_id", rq->req_id, "device_id",
                 env->device_id, "reason", "ended_by_party");
        http_json(rs, 200, json_pack("{s:i,s:s,s:b}", "v", QKP_VERSION, "session_id", sid, "ended", 1));
    } else if (!strcmp(outcome, "replay")) {
        ratelimit_refund(rq->kms->rl[RL_DEVICE], env->device_id, ratelimit_now_ns());
        auth_fail(rq, rs, env, "nonce already used (replay)");
    } else if (!strcmp(outcome, "stale")) {
        auth_fail(rq, rs, env, "timestamp outside the clock window");
    } else if (!strncmp(outcome, "unauthenticated: ", 17)) {
        keycache_invalidate(k->keys, env->device_id);
        auth_fail(rq, rs, env, outcome + 17);
    } else if (!strcmp(outcome, "ended")) {
        refuse(rq, REFUSE_ENDED);
        http_error(rs, 409, "session_ended", "this session has already ended");
    } else if (!strcmp(outcome, "unknown")) {
        http_error(rs, 404, "unknown_session", "no such session");
    } else {
        refuse(rq, REFUSE_NOT_PARTY);
        http_error(rs, 403, "not_a_party", "this device is not a party of the session");
    }
}

void h_session_end(http_request *rq, http_response *rs)
{
    qk_svc *k = &rq->kms->svc;
    envelope env;
    authed a;
    session_call sc;
    PGresult *r = NULL;
    db_status st;
    uint64_t t0 = now_ns();

    memset(&a, 0, sizeof(a));
    memset(&sc, 0, sizeof(sc));
    if (parse_envelope(rq, rs, &env) != 0 || authenticate(rq, rs, "end", &env, &a, &t0) != 0 ||
        session_call_init(rq, rs, &env, &a, false, &sc) != 0)
        goto out;
    if (!http_rate_limit(rq, rs, RL_DEVICE, env.device_id))
        goto out;
    /* A suspended device may still end its sessions: ending only destroys. */
    {
        const char *vals[7] = {sc.pk, sc.kidx, (const char *)env.nonce, (const char *)sc.hash,
                               sc.ts, sc.skew, (const char *)sc.legacy};
        int lens[7] = {0, 0, QKP_NONCE_LEN, 32, 0, 0, 32}, fmts[7] = {0, 0, 1, 1, 0, 0, 1};
        r = db_query(k->db, Q_SESSION_END, 7, vals, lens, fmts, &st);
    }
    if (!r) {
        http_db_error(rs, st);
        goto out;
    }
    session_end_answer(rq, rs, &env, sc.sid, PQgetvalue(r, 0, 0));
out:
    PQclear(r);
    OPENSSL_cleanse(&sc, sizeof(sc));
    authed_clear(&a);
}

int sessions_reap(qk_svc *k)
{
    char win[16], days[16];
    const char *vals[3] = {win, days, "1000"};
    db_status st;
    PGresult *r;
    int n;
    /* Since schema 006 each nonce carries its own expiry (ts + skew) and
     * the window argument is ignored; it is kept for the stored function's
     * signature. */
    snprintf(win, sizeof(win), "%d", 2 * k->cfg->protocol_clock_skew + 60);
    snprintf(days, sizeof(days), "%d", k->cfg->session_tombstone_days);
    r = db_query(k->db, Q_SESSION_REAP, 3, vals, NULL, NULL, &st);
    if (!r)
        return -1;
    n = atoi(PQgetvalue(r, 0, 0));
    PQclear(r);
    if (n > 0) {
        atomic_fetch_add(&k->smetrics->reaped, (uint64_t)n);
        log_emit(LOG_INFO, "expired sessions destroyed", "{s:i}", "count", n);
    }
    return n;
}

/* ---- admin view ------------------------------------------------------------- */

static json_t *session_json(const PGresult *r, int i)
{
    return json_pack("{s:o,s:o,s:o,s:o,s:o,s:o,s:i,s:o,s:o,s:o,s:i,s:o,s:o,s:o,s:o}", "session_id",
                     pgjson_text(r, i, 0), "key_id", pgjson_text(r, i, 1), "initiator",
                     pgjson_text(r, i, 2), "responder", pgjson_text(r, i, 3), "policy",
                     pgjson_text(r, i, 4), "delivery", pgjson_text(r, i, 5), "key_bits",
                     atoi(PQgetvalue(r, i, 6)), "created_at", pgjson_time(r, i, 7), "last_used_at",
                     pgjson_time(r, i, 8), "expires_at", pgjson_time(r, i, 9), "idle_timeout_s",
                     atoi(PQgetvalue(r, i, 10)), "initiator_delivered_at", pgjson_time(r, i, 11),
                     "responder_delivered_at", pgjson_time(r, i, 12), "provenance",
                     pgjson_text(r, i, 13), "state", pgjson_text(r, i, 14));
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
static int query_sessions(http_request *rq, http_response *rs, const char *device,
                          const char *sid, const char *state, int limit, json_t **out)
{
    char lim[16];
    uint8_t hash[32], legacy[32];
    bool ended = state && !strcmp(state, "ended");
    const char *vals[4] = {device, sid, lim, ended ? NULL : state};
    int lens[4] = {0, 0, 0, 0}, fmts[4] = {0, 0, 0, 0};
    db_status st;
    PGresult *r;
    snprintf(lim, sizeof(lim), "%d", limit);
    if (ended && sid) {
        if (session_hash(sid, hash) != 0) {
            http_error(rs, 500, "internal", "internal error (see kmsd log)");
            return -1;
        }
        session_hash_legacy(sid, legacy);
        vals[1] = (const char *)hash;
        vals[3] = (const char *)legacy;
        lens[1] = lens[3] = 32;
        fmts[1] = fmts[3] = 1;
    }
    r = ended ? db_query(rq->kms->svc.db, Q_TOMBSTONES_LIST, 4, vals, lens, fmts, &st)
              : db_query(rq->kms->svc.db, Q_SESSIONS_LIST, 4, vals, lens, fmts, &st);
    if (!r) {
        http_db_error(rs, st);
        return -1;
    }
    *out = pgjson_rows(r, ended ? tombstone_json : session_json);
    PQclear(r);
    return 0;
}

void h_admin_sessions_list(http_request *rq, http_response *rs)
{
    const char *device = http_query(rq, "device"), *state = http_query(rq, "state"),
               *lims = http_query(rq, "limit");
    long limit = 100;
    char *end = NULL;
    json_t *arr;

    if (lims) {
        errno = 0;
        limit = strtol(lims, &end, 10);
        if (errno || !*lims || *end)
            limit = 0;
    }
    if ((device && !device_id_valid(device)) || limit < 1 || limit > 1000 ||
        (state && strcmp(state, "pending") && strcmp(state, "active") && strcmp(state, "ended"))) {
        http_error(rs, 400, "invalid_query", "bad device, state (pending|active|ended) or limit");
        return;
    }
    if (query_sessions(rq, rs, device, NULL, state, (int)limit, &arr) != 0)
        return;
    http_json(rs, 200, json_pack("{s:o}", "sessions", arr));
}

void h_admin_session_get(http_request *rq, http_response *rs)
{
    const char *sid = rq->params[0];
    json_t *arr;
    if (!qkp_id_valid(sid)) {
        http_error(rs, 404, "not_found", "no such session");
        return;
    }
    if (query_sessions(rq, rs, NULL, sid, NULL, 1, &arr) != 0)
        return;
    if (json_array_size(arr) == 0) {
        json_decref(arr);
        if (query_sessions(rq, rs, NULL, sid, "ended", 1, &arr) != 0)
            return;
    }
    if (json_array_size(arr) == 0) {
        json_decref(arr);
        http_error(rs, 404, "not_found", "no such session");
        return;
    }
    http_json(rs, 200, json_incref(json_array_get(arr, 0)));
    json_decref(arr);
}

void h_admin_session_end(http_request *rq, http_response *rs)
{
    const char *sid = rq->params[0];
    uint8_t hash[32], legacy[32];
    const char *vals[3] = {(const char *)hash, rq->who.name, (const char *)legacy};
    int lens[3] = {32, 0, 32}, fmts[3] = {1, 0, 1};
    db_status st;
    PGresult *r;
    json_t *in;

    if (!qkp_id_valid(sid)) {
        http_error(rs, 404, "not_found", "no such session");
        return;
    }
    in = http_body_object_opt(rq, rs);
    if (!in)
        return;
    json_decref(in);
    if (session_hash(sid, hash) != 0) {
        http_error(rs, 500, "internal", "internal error (see kmsd log)");
        return;
    }
    session_hash_legacy(sid, legacy);
    r = db_query(rq->kms->svc.db, Q_SESSION_END_OPERATOR, 3, vals, lens, fmts, &st);
    if (!r) {
        http_db_error(rs, st);
        return;
    }
    if (PQntuples(r) == 0) {
        PQclear(r);
        http_error(rs, 404, "not_found", "no live session with that ID");
        return;
    }
    PQclear(r);
    atomic_fetch_add(&rq->kms->svc.smetrics->ended_by_operator, 1);
    log_emit(LOG_INFO, "session ended", "{s:s,s:s,s:s}", "req_id", rq->req_id, "reason",
             "ended_by_operator", "by", rq->who.name);
    h_admin_session_get(rq, rs);
}
