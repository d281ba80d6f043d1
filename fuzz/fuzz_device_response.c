/*
 * fuzz_device_response — what a device reads back from the server
 * (device/qkms_device.c): the answer to a `key` request (parsed, then
 * verified with AES-GCM under the device key, bound to the request nonce),
 * the answer to an `end` request, and an error answer.
 *
 * Input: byte 0 picks a test vector (tests/vectors/protocol-v1.json), which
 * fixes the device, its key and the request; the rest is the response body.
 * The request is rebuilt from the vector's fields (not by qkd_request_key,
 * whose fixed-nonce argument is for test builds). An accepted key answer
 * must carry the session asked for and a key of key_bits / 8 bytes.
 */
#include "fuzz_common.h"

#include "hexutil.h"
#include "qkms_device.h"

#define MAXV 64
static qkd_device *devs[MAXV];
static qkd_request reqs[MAXV];
static size_t nv;

static void add(const json_t *v)
{
    char doc[512], err[256];
    const char *alg = json_string_value(json_object_get(v, "device_key_algorithm"));
    const char *key = json_string_value(json_object_get(v, "device_key"));
    const char *dev = json_string_value(json_object_get(v, "device_id"));
    const char *sid = json_string_value(json_object_get(v, "session_id"));
    const char *op = json_string_value(json_object_get(v, "op"));
    const char *nonce = json_string_value(json_object_get(v, "request_nonce"));
    int idx = (int)json_integer_value(json_object_get(v, "key_index"));
    char id_json[2 * QKP_MAX_ID + 3];
    qkd_request *r = &reqs[nv];

    FUZZ_CHECK(alg && key && dev && sid && op && nonce);
    FUZZ_CHECK(qkd_json_id(dev, id_json, sizeof(id_json)) > 0);
    snprintf(doc, sizeof(doc), "{\"device_id\":%s,\"keys\":[{\"index\":%d,\"algorithm\":\"%s\",\"key\":\"%s\"}]}",
             id_json, idx, alg, key);
    FUZZ_CHECK(qkd_device_load(&devs[nv], doc, strlen(doc), err, sizeof(err)) == QKD_OK);
    memset(r, 0, sizeof(*r));
    r->op = !strcmp(op, "end") ? QKD_OP_END : QKD_OP_KEY;
    r->path = r->op == QKD_OP_END ? QKD_PATH_END : QKD_PATH_KEY;
    snprintf(r->device_id, sizeof(r->device_id), "%s", dev);
    snprintf(r->session_id, sizeof(r->session_id), "%s", sid);
    r->key_index = idx;
    r->ts = json_integer_value(json_object_get(v, "ts"));
    FUZZ_CHECK(qkms_hex_decode(nonce, strlen(nonce), r->nonce, sizeof(r->nonce)) == QKP_NONCE_LEN);
    qkp_b64url_encode(r->nonce, sizeof(r->nonce), r->nonce_b64);
    nv++;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    json_t *vs = fuzz_vectors(), *v;
    size_t i;
    (void)argc;
    (void)argv;
    fuzz_quiet();
    json_array_foreach(vs, i, v) {
        /* Key and end requests that name a session (not an end of all,
         * not a key stream's). */
        const char *op = json_string_value(json_object_get(v, "op"));
        if (nv < MAXV && op && (!strcmp(op, "key") || !strcmp(op, "end")) &&
            json_object_get(v, "session_id"))
            add(v);
    }
    FUZZ_CHECK(nv > 0);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    size_t which;
    const char *body;
    size_t len;
    char err[256];
    qkd_error e;

    if (size < 1)
        return 0;
    which = data[0] % nv;
    body = (const char *)data + 1;
    len = size - 1;
    if (reqs[which].op == QKD_OP_KEY) {
        qkd_session_key sk;
        if (qkd_response_key(&sk, devs[which], &reqs[which], body, len, err, sizeof(err)) == QKD_OK) {
            FUZZ_CHECK(!strcmp(sk.session_id, reqs[which].session_id));
            FUZZ_CHECK((sk.key_bits == 128 || sk.key_bits == 256) && sk.key &&
                       sk.key_len == (size_t)sk.key_bits / 8);
        } else {
            FUZZ_CHECK(sk.key == NULL);
        }
        qkd_session_key_clear(&sk);
    } else {
        (void)qkd_response_end(&reqs[which], body, len, err, sizeof(err));
    }
    if (qkd_response_error(&e, body, len) == QKD_OK)
        FUZZ_CHECK(e.code[0] != 0);
    return 0;
}
