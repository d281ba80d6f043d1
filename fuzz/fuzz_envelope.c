/*
 * fuzz_envelope — the server's parse of a device request (docs/protocol.md):
 * the v1 envelope {"v","device_id","key_index","nonce","ct"} as
 * kmsd/api/device_v1.c's parse_envelope reads a POST /v1/sessions/key body, then,
 * when the envelope names a device of the test vectors, the AEAD open under
 * that device's key (as authenticate() does after the token unwrap) and the
 * inner request's fields (inner_fields), for both operations.
 *
 * parse_envelope and inner_fields are static: this file compiles
 * kmsd/api/device_v1.c into itself rather than changing it (the rest of kmsd
 * comes from the fuzz library; device_v1.o is never pulled in because every
 * symbol it defines is defined here; fuzz_sessions.h).
 */
#include "fuzz_common.h"

#include <errno.h>

#include "hexutil.h"
#include "fuzz_sessions.h"

typedef struct {
    const char *device_id;
    int key_index;
    uint8_t key[32];
    size_t len;
    qkp_suite suite; /* the vector's device_key_algorithm's (AES or SM4) */
} vkey;

static kms_ctx fk;
static vkey vkeys[64];
static size_t nvkeys;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    json_t *vs = fuzz_vectors(), *v;
    size_t i;
    (void)argc;
    (void)argv;
    fuzz_sessions_init(&fk);
    json_array_foreach(vs, i, v) {
        const char *hex = json_string_value(json_object_get(v, "device_key"));
        vkey *k = &vkeys[nvkeys];
        if (!hex || nvkeys == sizeof(vkeys) / sizeof(vkeys[0]))
            continue;
        k->device_id = json_string_value(json_object_get(v, "device_id"));
        k->key_index = (int)json_integer_value(json_object_get(v, "key_index"));
        k->len = strlen(hex) / 2;
        k->suite = (qkp_suite)qkp_suite_of(
            json_string_value(json_object_get(v, "device_key_algorithm")));
        FUZZ_CHECK(k->device_id && (int)k->suite >= 0 &&
                   qkms_hex_decode(hex, strlen(hex), k->key, sizeof(k->key)) == (long)k->len);
        nvkeys++;
    }
    return 0;
}

static const vkey *find_key(const envelope *env)
{
    for (size_t i = 0; i < nvkeys; i++)
        if (vkeys[i].key_index == env->key_index && !strcmp(vkeys[i].device_id, env->device_id))
            return &vkeys[i];
    return NULL;
}

/* What a refused parse must look like: a JSON error with a 4xx status. */
static void check_refusal(const http_response *rs)
{
    /* A 500 for malformed input is a finding too (issue 12, item 14). */
    FUZZ_CHECK(rs->status >= 400 && rs->status < 500 && rs->body != NULL);
}

static void inner(http_request *rq, const envelope *env, const vkey *k, const char *op)
{
    char aad[QKP_MAX_AAD];
    uint8_t pt[QKP_MAX_PLAINTEXT];
    http_response rs;
    authed a;
    json_error_t je;
    const char *sid = NULL, *peer = NULL;
    char ts[24];
    bool delivered = false, want_peer = !strcmp(op, "key");
    int aad_len = qkp_request_aad(op, env->device_id, env->key_index, aad, sizeof(aad));

    FUZZ_CHECK(aad_len > 0);
    if (qkp_open_suite(k->suite, k->key, k->len, env->nonce, aad, (size_t)aad_len, env->ct,
                       env->ct_len, pt) != 0)
        return;
    memset(&a, 0, sizeof(a));
    memset(&rs, 0, sizeof(rs));
    a.inner = json_loadb((const char *)pt, env->ct_len - QKP_TAG_LEN, JSON_REJECT_DUPLICATES, &je);
    if (json_is_object(a.inner) &&
        inner_fields(rq, &rs, env, &a, want_peer, &sid, &peer, &delivered, ts) == 0) {
        char *end;
        errno = 0;
        (void)strtoll(ts, &end, 10); /* handed to the database as bigint text */
        FUZZ_CHECK(ts[0] && !*end && errno == 0);
        /* An end names a session, or none with "all": true. */
        FUZZ_CHECK(want_peer ? qkp_id_valid(sid) : (!sid || qkp_id_valid(sid)));
        FUZZ_CHECK(!want_peer || (qkp_id_valid(peer) && strcmp(peer, env->device_id) != 0));
    } else if (json_is_object(a.inner)) {
        check_refusal(&rs);
    }
    free(rs.body);
    authed_clear(&a);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    http_request rq;
    http_response rs;
    envelope env;
    const vkey *k;

    memset(&rq, 0, sizeof(rq));
    memset(&rs, 0, sizeof(rs));
    rq.kms = &fk;
    rq.method = "POST";
    rq.path = "/v1/sessions/key";
    rq.body = (const char *)data;
    rq.body_len = size;
    rq.content_type = "application/json";
    snprintf(rq.client_ip, sizeof(rq.client_ip), "127.0.0.1");
    if (parse_envelope(&rq, &rs, &env) != 0) {
        check_refusal(&rs);
        free(rs.body);
        return 0;
    }
    FUZZ_CHECK(rs.body == NULL);
    FUZZ_CHECK(qkp_id_valid(env.device_id));
    FUZZ_CHECK(env.key_index >= 0 && env.key_index <= 255);
    FUZZ_CHECK(env.ct_len >= QKP_TAG_LEN + 1 && env.ct_len <= sizeof(env.ct));
    k = find_key(&env);
    if (k) {
        inner(&rq, &env, k, "key");
        inner(&rq, &env, k, "end");
    }
    return 0;
}
