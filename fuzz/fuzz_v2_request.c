/*
 * fuzz_v2_request — the server's parse of a device protocol v2 request
 * (docs/protocol.md, "qkms device protocol v2"): kmsd/api/device_v2.c's
 * parse_outer on a POST /v2/sessions/key body, then the inner request R:
 * in modes 1 and 2 read from `req` (inner_ident, as before the signature,
 * then inner_fields); in mode 3 opened under a device key of the v2 test
 * vectors when the outer object names one (as device_auth_open does after
 * the token unwrap). Both operations are tried.
 *
 * The static parsers are reached by compiling device_v2.c in (device_v2.o
 * is never pulled from the fuzz library: every symbol it defines is here).
 */
#include "fuzz_common.h"

#include "hexutil.h"
#include "../kmsd/api/device_v2.c"

typedef struct {
    const char *device_id;
    int key_index;
    uint8_t key[32];
    size_t len;
} vkey;

static kms_ctx fk;
static vkey vkeys[32];
static size_t nvkeys;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    json_t *c;
    size_t i;
    (void)argc;
    (void)argv;
    fuzz_quiet();
    if (!fuzz_env_on("QKMS_FUZZ_VERBOSE"))
        log_set_level((log_level)(LOG_ERROR + 1));
    fk.svc.cfg = &fk.cfg;
    fk.svc.smetrics = session_metrics_new();
    FUZZ_CHECK(fk.svc.smetrics != NULL);
    json_array_foreach(json_object_get(fuzz_vectors_v2(), "cases"), i, c) {
        const char *hex = json_string_value(json_object_get(c, "device_key_hex"));
        vkey *k = &vkeys[nvkeys];
        if (!hex || nvkeys == sizeof(vkeys) / sizeof(vkeys[0]))
            continue;
        k->device_id = json_string_value(json_object_get(c, "device_id"));
        k->key_index = (int)json_integer_value(json_object_get(c, "key_index"));
        k->len = strlen(hex) / 2;
        FUZZ_CHECK(k->device_id && qkms_hex_decode(hex, strlen(hex), k->key, sizeof(k->key)) ==
                                       (long)k->len);
        nvkeys++;
    }
    return 0;
}

static void check_refusal(const http_response *rs)
{
    FUZZ_CHECK(rs->status >= 400 && rs->status < 500 && rs->body != NULL);
}

/* R through the checks of its op; what passes must be what the service is
 * promised. */
static void inner(const outer *o, const uint8_t *r, size_t len, const char *op)
{
    inner_req ir;
    json_error_t je;
    char why[160];

    memset(&ir, 0, sizeof(ir));
    ir.obj = json_loadb((const char *)r, len, JSON_REJECT_DUPLICATES, &je);
    if (json_is_object(ir.obj) && inner_ident(&ir, op, o, why, sizeof(why)) == 0 &&
        inner_fields(&ir, op, o, why, sizeof(why)) == 0) {
        /* an end of every session of the device names none */
        FUZZ_CHECK(ir.has_ts && (ir.all ? !strcmp(op, "end") && !ir.session_id
                                        : qkp_id_valid(ir.session_id)));
        FUZZ_CHECK(o->mode == 3 || ir.has_nonce);
        FUZZ_CHECK((o->mode == 1) == (ir.cert_len > 0));
        if (!strcmp(op, "key")) {
            EVP_PKEY *k = qkp2_point_key(ir.epk, sizeof(ir.epk));
            FUZZ_CHECK(k != NULL);
            EVP_PKEY_free(k);
            FUZZ_CHECK(strchr("abc", ir.key_source) && ir.key_source);
            /* peer_id NULL: the platform is the peer */
            FUZZ_CHECK(!ir.peer_id ||
                       (qkp_id_valid(ir.peer_id) && strcmp(ir.peer_id, o->device_id)));
        }
    }
    inner_clear(&ir);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    http_request rq;
    http_response rs;
    outer o;

    memset(&rq, 0, sizeof(rq));
    memset(&rs, 0, sizeof(rs));
    rq.kms = &fk;
    rq.method = "POST";
    rq.path = "/v2/sessions/key";
    rq.body = (const char *)data;
    rq.body_len = size;
    rq.content_type = "application/json";
    snprintf(rq.client_ip, sizeof(rq.client_ip), "127.0.0.1");
    if (parse_outer(&rq, &rs, &o) != 0) {
        check_refusal(&rs);
        free(rs.body);
        return 0;
    }
    FUZZ_CHECK(rs.body == NULL);
    FUZZ_CHECK(qkp_id_valid(o.device_id) && o.mode >= 1 && o.mode <= 3);
    if (o.mode != 3) {
        FUZZ_CHECK(o.inner_len >= 2 && o.inner_len <= sizeof(o.inner));
        inner(&o, o.inner, o.inner_len, "key");
        inner(&o, o.inner, o.inner_len, "end");
        return 0;
    }
    for (size_t i = 0; i < nvkeys; i++) {
        const char *ops[2] = {"key", "end"};
        if (vkeys[i].key_index != o.key_index || strcmp(vkeys[i].device_id, o.device_id))
            continue;
        for (int j = 0; j < 2; j++) {
            char aad[QKP_MAX_AAD];
            uint8_t pt[QKP_MAX_PLAINTEXT];
            int al = qkp2_request_aad(ops[j], o.device_id, o.key_index, aad, sizeof(aad));
            FUZZ_CHECK(al > 0);
            if (qkp_open(vkeys[i].key, vkeys[i].len, o.nonce, aad, (size_t)al, o.ct, o.ct_len,
                         pt) == 0)
                inner(&o, pt, o.ct_len - QKP_TAG_LEN, ops[j]);
        }
    }
    return 0;
}
