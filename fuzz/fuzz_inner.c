/*
 * fuzz_inner — the decrypted inner request of a device request
 * (docs/protocol.md): the bytes the AEAD opened, parsed by
 * kmsd/api/device_v1.c exactly as authenticate() and inner_fields() do for the
 * `key` operation (session_id, peer_id, ts, delivery, epoch, direction:
 * inner_epoch) and the `end` operation (session_id or all, ts), as
 * stream_fields() does for a key stream's, and as login_fields() does for a gateway's
 * `login` (tid, password, ts) and `logout` (ts). The AEAD is skipped: the fuzzer stands in for
 * a device that holds its own key, which is the case the inner parse must
 * survive.
 *
 * Like fuzz_envelope, this compiles kmsd/api/device_v1.c in (its parsers are
 * static; fuzz_sessions.h).
 */
#include "fuzz_common.h"

#include <errno.h>

#include "fuzz_sessions.h"

static kms_ctx fk;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fuzz_sessions_init(&fk);
    {
        /* The session-ID HMAC key kmsd unwraps at start (a fixed one here). */
        static const uint8_t k[SID_KEY_LEN] = {1, 2, 3};
        FUZZ_CHECK(sessions_set_id_key(k, sizeof(k)) == 0);
    }
    return 0;
}

static void one(const uint8_t *data, size_t size, bool want_peer)
{
    http_request rq;
    http_response rs;
    envelope env;
    authed a;
    json_error_t je;
    const char *sid = NULL, *peer = NULL;
    char ts[24];
    bool delivered = false;

    memset(&rq, 0, sizeof(rq));
    memset(&rs, 0, sizeof(rs));
    memset(&env, 0, sizeof(env));
    memset(&a, 0, sizeof(a));
    rq.kms = &fk;
    snprintf(env.device_id, sizeof(env.device_id), "VIN-0001");
    /* authenticate(): the plaintext is at most the envelope's ct less the tag. */
    a.inner = json_loadb((const char *)data, size, JSON_REJECT_DUPLICATES, &je);
    if (!json_is_object(a.inner))
        goto out;
    if (inner_fields(&rq, &rs, &env, &a, want_peer, &sid, &peer, &delivered, ts) == 0) {
        char *end;
        errno = 0;
        (void)strtoll(ts, &end, 10); /* handed to the database as bigint text */
        FUZZ_CHECK(ts[0] && !*end && errno == 0);
        FUZZ_CHECK(rs.body == NULL);
        if (!want_peer && !sid) { /* an end of every session: "all" is true */
            FUZZ_CHECK(json_is_true(json_object_get(a.inner, "all")));
            goto out;
        }
        FUZZ_CHECK(qkp_id_valid(sid));
        if (want_peer) { /* the epoch and direction of the same request */
            session_ask ask = {0};
            if (inner_epoch(&rq, &rs, a.inner, &ask) == 0)
                FUZZ_CHECK(!ask.ext || (ask.epoch >= 0 && ask.epoch <= QKP_MAX_EPOCH &&
                                        ask.direction &&
                                        (!ask.direction[0] || !strcmp(ask.direction, "a2b") ||
                                         !strcmp(ask.direction, "b2a"))));
            else
                FUZZ_CHECK(rs.status == 422 && rs.body != NULL);
        }
        FUZZ_CHECK(!want_peer || (qkp_id_valid(peer) && strcmp(peer, env.device_id) != 0));
        /* The session hash and wrap context are computed from what passed. */
        {
            uint8_t hash[32];
            char ctx[160];
            FUZZ_CHECK(session_hash(sid, hash) == 0);
            session_key_context_of(hash, "6af360dc-ef7a-10be-584b-e5e40adddaf2", ctx, sizeof(ctx));
        }
    } else {
        FUZZ_CHECK(rs.status >= 400);
        FUZZ_CHECK(rs.status < 500 && rs.body != NULL); /* issue 12, item 14 */
    }
out:
    free(rs.body);
    authed_clear(&a);
}

/* A key stream's inner request (docs/protocol.md, "Key streams"). */
static void one_stream(const uint8_t *data, size_t size)
{
    http_request rq;
    http_response rs;
    envelope env;
    authed a;
    json_error_t je;
    stream_ask ask = {0};

    memset(&rq, 0, sizeof(rq));
    memset(&rs, 0, sizeof(rs));
    memset(&env, 0, sizeof(env));
    memset(&a, 0, sizeof(a));
    rq.kms = &fk;
    snprintf(env.device_id, sizeof(env.device_id), "VIN-0001");
    a.inner = json_loadb((const char *)data, size, JSON_REJECT_DUPLICATES, &je);
    if (!json_is_object(a.inner))
        goto out;
    if (stream_fields(&rq, &rs, &env, &a, &ask) == 0) {
        FUZZ_CHECK(rs.body == NULL);
        FUZZ_CHECK(qkp_id_valid(ask.peer_id) && strcmp(ask.peer_id, env.device_id) != 0);
        FUZZ_CHECK(ask.seq >= 0);
    } else {
        FUZZ_CHECK(rs.status == 422 && rs.body != NULL);
    }
out:
    free(rs.body);
    authed_clear(&a);
}

/* The gateway login's inner request (docs/gateways.md, "Login"). */
static void one_login(const uint8_t *data, size_t size, bool login)
{
    http_request rq;
    http_response rs;
    authed a;
    json_error_t je;
    login_ask ask = {0};

    memset(&rq, 0, sizeof(rq));
    memset(&rs, 0, sizeof(rs));
    memset(&a, 0, sizeof(a));
    rq.kms = &fk;
    a.inner = json_loadb((const char *)data, size, JSON_REJECT_DUPLICATES, &je);
    if (!json_is_object(a.inner))
        goto out;
    if (login_fields(&rq, &rs, &a, login, &ask) == 0) {
        FUZZ_CHECK(rs.body == NULL);
        FUZZ_CHECK(!login || (gateway_tid_valid(ask.tid) && ask.password &&
                              ask.password_len >= 1 && ask.password_len <= 256));
    } else {
        FUZZ_CHECK(rs.status == 422 && rs.body != NULL);
    }
out:
    free(rs.body);
    authed_clear(&a);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > QKP_MAX_PLAINTEXT)
        return 0;
    one(data, size, true);
    one(data, size, false);
    one_stream(data, size);
    one_login(data, size, true);
    one_login(data, size, false);
    return 0;
}
