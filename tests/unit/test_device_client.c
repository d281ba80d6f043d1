/*
 * Unit tests: the device client library (device/qkms_device.h) and the
 * protocol primitives under it (device/qkms_proto.h).
 *
 * The expected request bodies and the first responses were computed
 * independently with Python's cryptography package (AESGCM, CMAC), so these
 * are cross-implementation vectors, not just round trips.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>
#include <openssl/rand.h>

#include "qkd_http.h"
#include "qkms_device.h"
#include "qkms_proto.h"

/* 2026-11-23T08:00:00Z, 2027-05-23T08:00:00Z, 2027-11-23T08:00:00Z */
#define T_FILL 1795420800LL
#define T_K1_END 1811059200LL
#define T_K0_END 1826956800LL

static const uint8_t K0[16] = {0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77,
                               0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff};

/* As `kmsctl fill open --json` prints it (indented), keys out of order and
 * an unknown field to ignore. */
static const char FILL[] =
    "{\n"
    "  \"format\": \"qkms-fill/1\",\n"
    "  \"issuer\": \"qkms\",\n"
    "  \"device_id\": \"VIN-0001\",\n"
    "  \"type\": \"vehicle\",\n"
    "  \"group\": \"fleet-a\",\n"
    "  \"created_at\": \"2026-11-23T08:00:00Z\",\n"
    "  \"future_field\": {\"x\": [1, 2]},\n"
    "  \"keys\": [\n"
    "    {\"index\": 1, \"algorithm\": \"AES-256\",\n"
    "     \"key\": \"000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f\",\n"
    "     \"kcv\": \"377822c093\", \"not_before\": \"2026-11-23T08:00:00Z\",\n"
    "     \"not_after\": \"2027-05-23T08:00:00Z\"},\n"
    "    {\"index\": 0, \"algorithm\": \"AES-128\", \"key\": \"00112233445566778899AABBCCDDEEFF\",\n"
    "     \"kcv\": \"53e107b36e\", \"not_before\": \"2026-11-23T08:00:00Z\",\n"
    "     \"not_after\": \"2027-11-23T08:00:00Z\"}\n"
    "  ]\n"
    "}\n";

static const uint8_t N0[12] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11};
static const uint8_t N1[12] = {12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23};
static const uint8_t N2[12] = {24, 25, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35};
static const uint8_t NR[12] = {36, 37, 38, 39, 40, 41, 42, 43, 44, 45, 46, 47};

#define KEY_ID "8b0c5e2a-1f3d-4c6b-9a7e-0d1c2b3a4f5e"
#define EXPIRES 1795433600LL

static int setup(void **state)
{
    qkd_device *d = NULL;
    char err[160];
    if (qkd_device_load(&d, FILL, strlen(FILL), err, sizeof(err)) != QKD_OK) {
        fprintf(stderr, "fill: %s\n", err);
        return -1;
    }
    *state = d;
    return 0;
}

static int teardown(void **state)
{
    qkd_device_free(*state);
    return 0;
}

/* ---- fill documents ------------------------------------------------------ */

static void fill_loaded(void **state)
{
    const qkd_device *d = *state;
    assert_string_equal(d->device_id, "VIN-0001");
    assert_int_equal(d->nkeys, 2);
    assert_int_equal(d->keys[0].index, 0); /* sorted */
    assert_int_equal(d->keys[0].len, 16);
    assert_memory_equal(d->keys[0].key, K0, 16);
    assert_true(d->keys[0].not_before == T_FILL);
    assert_true(d->keys[0].not_after == T_K0_END);
    assert_int_equal(d->keys[1].index, 1);
    assert_int_equal(d->keys[1].len, 32);
    for (int i = 0; i < 32; i++)
        assert_int_equal(d->keys[1].key[i], i);
    assert_true(d->keys[1].not_after == T_K1_END);
    assert_ptr_equal(qkd_device_key(d, 1), &d->keys[1]);
    assert_null(qkd_device_key(d, 2));
    assert_null(qkd_device_key(d, -1));
}

static void default_index(void **state)
{
    const qkd_device *d = *state;
    assert_int_equal(qkd_device_default_index(d, T_FILL - 1), -1);  /* not yet valid */
    assert_int_equal(qkd_device_default_index(d, T_FILL), 1);
    assert_int_equal(qkd_device_default_index(d, T_K1_END - 1), 1);
    assert_int_equal(qkd_device_default_index(d, T_K1_END), 0);     /* key 1 expired */
    assert_int_equal(qkd_device_default_index(d, T_K0_END - 1), 0);
    assert_int_equal(qkd_device_default_index(d, T_K0_END), -1);    /* all expired */
    assert_int_equal(qkd_device_default_index(NULL, T_FILL), -1);
}

static int load(const char *text)
{
    qkd_device *d = NULL;
    char err[160];
    int rc = qkd_device_load(&d, text, strlen(text), err, sizeof(err));
    if (rc == QKD_OK)
        assert_non_null(d);
    else
        assert_null(d);
    /* No message may quote the key. */
    if (rc != QKD_OK)
        assert_null(strstr(err, "0011223344"));
    qkd_device_free(d);
    return rc;
}

#define KEY0 "\"key\":\"00112233445566778899aabbccddeeff\""

/* A gateway's document (docs/gateways.md): its local key is never the
 * default and never builds a request to the platform. */
static void local_keys(void **state)
{
    static const char gw[] =
        "{\"device_id\":\"GW-1\",\"keys\":["
        "{\"index\":0,\"purpose\":\"access\",\"algorithm\":\"AES-128\"," KEY0 "},"
        "{\"index\":1,\"purpose\":\"local\",\"algorithm\":\"AES-128\"," KEY0 "}],"
        "\"family\":{\"gateway_id\":\"GW-1\",\"keys\":[]}}";
    qkd_device *d = NULL;
    qkd_request r;
    char err[160];
    (void)state;
    assert_int_equal(qkd_device_load(&d, gw, strlen(gw), err, sizeof(err)), QKD_OK);
    assert_false(qkd_device_key(d, 0)->local);
    assert_true(qkd_device_key(d, 1)->local);
    assert_int_equal(qkd_device_default_index(d, T_FILL), 0);
    assert_int_equal(qkd_request_key(&r, d, 1, "S-1", "VIN-0001", false, T_FILL, N0, err,
                                     sizeof(err)),
                     QKD_ERR_INPUT);
    assert_non_null(strstr(err, "local key"));
    assert_int_equal(qkd_request_key(&r, d, 0, "S-1", "VIN-0001", false, T_FILL, N0, err,
                                     sizeof(err)),
                     QKD_OK);
    qkd_device_free(d);
    assert_int_equal(load("{\"device_id\":\"D\",\"keys\":[{\"index\":0,\"purpose\":\"wan\","
                          "\"algorithm\":\"AES-128\"," KEY0 "}]}"),
                     QKD_ERR_INPUT);
}

static void fill_refused(void **state)
{
    (void)state;
    /* minimal document: no format, kcv or validity */
    assert_int_equal(load("{\"device_id\":\"D\",\"keys\":[{\"index\":7,\"algorithm\":\"AES-128\"," KEY0 "}]}"),
                     QKD_OK);
    /* integer validity, offsets and fractions */
    assert_int_equal(load("{\"device_id\":\"D\",\"keys\":[{\"index\":0,\"algorithm\":\"AES-128\"," KEY0
                          ",\"not_before\":0,\"not_after\":\"2027-11-23T09:30:00.123+01:30\"}]}"),
                     QKD_OK);
    assert_int_equal(load("not json"), QKD_ERR_INPUT);
    assert_int_equal(load("[]"), QKD_ERR_INPUT);
    assert_int_equal(load("{\"format\":\"qkms-fill/2\",\"device_id\":\"D\",\"keys\":[{\"index\":0,"
                          "\"algorithm\":\"AES-128\"," KEY0 "}]}"),
                     QKD_ERR_INPUT);
    assert_int_equal(load("{\"device_id\":\"a/b\",\"keys\":[{\"index\":0,\"algorithm\":\"AES-128\"," KEY0 "}]}"),
                     QKD_ERR_INPUT);
    assert_int_equal(load("{\"device_id\":\"D\",\"keys\":[]}"), QKD_ERR_INPUT);
    assert_int_equal(load("{\"device_id\":\"D\"}"), QKD_ERR_INPUT);
    /* index range and duplicates */
    assert_int_equal(load("{\"device_id\":\"D\",\"keys\":[{\"index\":256,\"algorithm\":\"AES-128\"," KEY0 "}]}"),
                     QKD_ERR_INPUT);
    assert_int_equal(load("{\"device_id\":\"D\",\"keys\":[{\"index\":1,\"algorithm\":\"AES-128\"," KEY0
                          "},{\"index\":1,\"algorithm\":\"AES-128\"," KEY0 "}]}"),
                     QKD_ERR_INPUT);
    /* algorithm and key length must agree */
    assert_int_equal(load("{\"device_id\":\"D\",\"keys\":[{\"index\":0,\"algorithm\":\"AES-256\"," KEY0 "}]}"),
                     QKD_ERR_INPUT);
    assert_int_equal(load("{\"device_id\":\"D\",\"keys\":[{\"index\":0,\"algorithm\":\"AES-192\"," KEY0 "}]}"),
                     QKD_ERR_INPUT);
    assert_int_equal(load("{\"device_id\":\"D\",\"keys\":[{\"index\":0,\"algorithm\":\"AES-128\","
                          "\"key\":\"00112233445566778899aabbccddeefg\"}]}"),
                     QKD_ERR_INPUT);
    /* a check value that does not match (last digit changed) */
    assert_int_equal(load("{\"device_id\":\"D\",\"keys\":[{\"index\":0,\"algorithm\":\"AES-128\"," KEY0
                          ",\"kcv\":\"53e107b36f\"}]}"),
                     QKD_ERR_INPUT);
    assert_int_equal(load("{\"device_id\":\"D\",\"keys\":[{\"index\":0,\"algorithm\":\"AES-128\"," KEY0
                          ",\"kcv\":\"53e107b36e\"}]}"),
                     QKD_OK);
    /* bad times: Feb 30, no zone, garbage */
    assert_int_equal(load("{\"device_id\":\"D\",\"keys\":[{\"index\":0,\"algorithm\":\"AES-128\"," KEY0
                          ",\"not_after\":\"2027-02-30T00:00:00Z\"}]}"),
                     QKD_ERR_INPUT);
    assert_int_equal(load("{\"device_id\":\"D\",\"keys\":[{\"index\":0,\"algorithm\":\"AES-128\"," KEY0
                          ",\"not_after\":\"2027-01-01T00:00:00\"}]}"),
                     QKD_ERR_INPUT);
    assert_int_equal(load("{\"device_id\":\"D\",\"keys\":[{\"index\":0,\"algorithm\":\"AES-128\"," KEY0
                          ",\"not_after\":\"soon\"}]}"),
                     QKD_ERR_INPUT);
}

static void fill_times(void **state)
{
    qkd_device *d = NULL;
    char err[160];
    static const char doc[] =
        "{\"device_id\":\"D\",\"keys\":[{\"index\":0,\"algorithm\":\"AES-128\"," KEY0
        ",\"not_before\":\"2000-02-29T23:59:59Z\",\"not_after\":\"2027-11-23T09:30:00.5+01:30\"}]}";
    (void)state;
    assert_int_equal(qkd_device_load(&d, doc, strlen(doc), err, sizeof(err)), QKD_OK);
    assert_true(d->keys[0].not_before == 951868799LL);
    assert_true(d->keys[0].not_after == T_K0_END);
    qkd_device_free(d);
}

/* ---- requests ------------------------------------------------------------ */

/* Opens r with the device key and checks the plaintext is exactly want. */
static void open_request(const qkd_device *d, const qkd_request *r, const char *op, const char *want)
{
    const qkd_key *k = qkd_device_key(d, r->key_index);
    const char *p = strstr(r->body, "\"ct\":\"");
    uint8_t ct[QKD_MAX_BODY], pt[QKD_MAX_BODY];
    char aad[QKP_MAX_AAD];
    assert_non_null(k);
    assert_non_null(p);
    p += 6;
    long n = qkp_b64url_decode(p, strcspn(p, "\""), ct, sizeof(ct));
    assert_true(n > QKP_TAG_LEN);
    int al = qkp_request_aad(op, d->device_id, r->key_index, aad, sizeof(aad));
    assert_true(al > 0);
    assert_int_equal(qkp_open(k->key, k->len, r->nonce, aad, (size_t)al, ct, (size_t)n, pt), 0);
    assert_int_equal((size_t)n - QKP_TAG_LEN, strlen(want));
    assert_memory_equal(pt, want, strlen(want));
    /* bound to the operation: the same ct does not open as the other op */
    al = qkp_request_aad(strcmp(op, "key") ? "key" : "end", d->device_id, r->key_index, aad,
                         sizeof(aad));
    assert_int_equal(qkp_open(k->key, k->len, r->nonce, aad, (size_t)al, ct, (size_t)n, pt), -1);
}

static void request_vectors(void **state)
{
    const qkd_device *d = *state;
    qkd_request r;
    char err[160];

    assert_int_equal(qkd_request_key(&r, d, 0, "S-1", "ENC-7", false, 1795430000, N0, err, sizeof(err)),
                     QKD_OK);
    assert_string_equal(r.path, "/v1/sessions/key");
    assert_string_equal(r.nonce_b64, "AAECAwQFBgcICQoL");
    assert_string_equal(r.body,
                        "{\"v\":1,\"device_id\":\"VIN-0001\",\"key_index\":0,\"nonce\":\"AAECAwQFBgcICQoL\","
                        "\"ct\":\"UPdEod3k5g_xZ0D7MrdjviAur2ZWwYvo_QGzKsMxpG14yv9jMyRrhAGPscTlKODUzAC0iZmxmmapBfhdWA_K7CceQsKXDQ\"}");
    assert_int_equal(r.body_len, strlen(r.body));
    open_request(d, &r, "key", "{\"session_id\":\"S-1\",\"peer_id\":\"ENC-7\",\"ts\":1795430000}");

    /* delivered, AES-256, '"' in IDs escaped */
    assert_int_equal(qkd_request_key(&r, d, 1, "s\"q", "P\"1", true, 1795430001, N1, err, sizeof(err)),
                     QKD_OK);
    assert_string_equal(r.body,
                        "{\"v\":1,\"device_id\":\"VIN-0001\",\"key_index\":1,\"nonce\":\"DA0ODxAREhMUFRYX\","
                        "\"ct\":\"49wavQwFlTxZdSGxs7EElAkhnMzaX0vP_tCliYCC-th8q0gUw-kEFWzRNGPZlS_uv2aL4ZjYNtcrkxMq358zmiEIJK6d26o0hx3TWT0vr_ZjqDZcJHE5EIX3csbD\"}");
    open_request(d, &r, "key",
                 "{\"session_id\":\"s\\\"q\",\"peer_id\":\"P\\\"1\",\"ts\":1795430001,\"delivery\":\"delivered\"}");

    assert_int_equal(qkd_request_end(&r, d, 0, "S-1", 1795430002, N2, err, sizeof(err)), QKD_OK);
    assert_string_equal(r.path, "/v1/sessions/end");
    assert_string_equal(r.body,
                        "{\"v\":1,\"device_id\":\"VIN-0001\",\"key_index\":0,\"nonce\":\"GBkaGxwdHh8gISIj\","
                        "\"ct\":\"XmbsAc_j-OEKYi6_T68gniLxfOMsn83XB2t988PQkmmrWvPFWFEQ2TkwuOtzNVxJ_gN7eA\"}");
    open_request(d, &r, "end", "{\"session_id\":\"S-1\",\"ts\":1795430002}");
    qkd_request_clear(&r);
}

static void request_random_nonce(void **state)
{
    const qkd_device *d = *state;
    qkd_request a, b;
    assert_int_equal(qkd_request_key(&a, d, 0, "S", "P", false, 1, NULL, NULL, 0), QKD_OK);
    assert_int_equal(qkd_request_key(&b, d, 0, "S", "P", false, 1, NULL, NULL, 0), QKD_OK);
    assert_memory_not_equal(a.nonce, b.nonce, QKP_NONCE_LEN);
    assert_string_not_equal(a.body, b.body);
    open_request(d, &a, "key", "{\"session_id\":\"S\",\"peer_id\":\"P\",\"ts\":1}");
}

static void request_refused(void **state)
{
    const qkd_device *d = *state;
    qkd_request r;
    char err[160], longid[QKP_MAX_ID + 2];
    memset(longid, 'x', sizeof(longid) - 1);
    longid[sizeof(longid) - 1] = 0;

    assert_int_equal(qkd_request_key(&r, d, 2, "S", "P", false, 1, N0, err, sizeof(err)), QKD_ERR_INPUT);
    assert_int_equal(qkd_request_key(&r, d, 0, "S/1", "P", false, 1, N0, err, sizeof(err)), QKD_ERR_INPUT);
    assert_int_equal(qkd_request_key(&r, d, 0, "S", "", false, 1, N0, err, sizeof(err)), QKD_ERR_INPUT);
    assert_int_equal(qkd_request_key(&r, d, 0, "S", NULL, false, 1, N0, err, sizeof(err)), QKD_ERR_INPUT);
    assert_int_equal(qkd_request_key(&r, d, 0, longid, "P", false, 1, N0, err, sizeof(err)), QKD_ERR_INPUT);
    assert_int_equal(qkd_request_key(&r, d, 0, "S", "P", false, -1, N0, err, sizeof(err)), QKD_ERR_INPUT);
    assert_int_equal(qkd_request_end(&r, d, 0, "S\n", 1, N0, err, sizeof(err)), QKD_ERR_INPUT);
    /* the longest IDs, all quotes, still fit */
    memset(longid, '"', QKP_MAX_ID);
    longid[QKP_MAX_ID] = 0;
    assert_int_equal(qkd_request_key(&r, d, 1, longid, longid, true, INT64_MAX, NULL, err, sizeof(err)),
                     QKD_OK);
    assert_true(r.body_len < QKD_MAX_BODY);
}

/* ---- key responses ------------------------------------------------------- */

/* What kmsd would answer, with knobs to break it. */
struct fake {
    int v;
    const char *session_id, *aad_session_id;
    const char *key_id;
    int key_bits;
    size_t skey_len;
    int64_t expires_at, aad_expires_at;
    const char *delivery;
    const uint8_t *rnonce;
    const char *aad_req_nonce;
    int aad_index;
    const uint8_t *seal_key; /* NULL: the request's device key */
    size_t seal_key_len;
    int flip; /* index of a ct byte to flip, or -1 */
    const char *aad_dir; /* non-NULL: the ext AAD, with aad_epoch and this direction */
    int aad_epoch;
    const char *extra;   /* JSON members appended to the body, e.g. ",\"epoch\":1" */
};

static struct fake fake_for(const qkd_request *r)
{
    return (struct fake){
        .v = 1, .session_id = r->session_id, .aad_session_id = r->session_id, .key_id = KEY_ID,
        .key_bits = 128, .skey_len = 16, .expires_at = EXPIRES, .aad_expires_at = EXPIRES,
        .delivery = "session", .rnonce = NR, .aad_req_nonce = r->nonce_b64,
        .aad_index = r->key_index, .flip = -1,
    };
}

static void make_response(const qkd_device *d, const qkd_request *r, const struct fake *f,
                          char *out, size_t cap)
{
    const qkd_key *k = qkd_device_key(d, r->key_index);
    uint8_t skey[32], ct[32 + QKP_TAG_LEN];
    char aad[QKP_MAX_AAD], nb[QKP_B64URL_LEN(12)], cb[QKP_B64URL_LEN(sizeof(ct))], sid[300];
    for (size_t i = 0; i < sizeof(skey); i++)
        skey[i] = (uint8_t)(0xa0 + i);
    int al = f->aad_dir ? qkp_response_aad_ext(f->aad_session_id, r->device_id, f->aad_index,
                                               f->key_id, f->aad_expires_at, f->aad_req_nonce,
                                               f->aad_epoch, f->aad_dir, aad, sizeof(aad))
                        : qkp_response_aad(f->aad_session_id, r->device_id, f->aad_index,
                                           f->key_id, f->aad_expires_at, f->aad_req_nonce, aad,
                                           sizeof(aad));
    assert_true(al > 0);
    assert_int_equal(qkp_seal(f->seal_key ? f->seal_key : k->key, f->seal_key ? f->seal_key_len : k->len,
                              f->rnonce, aad, (size_t)al, skey, f->skey_len, ct),
                     0);
    if (f->flip >= 0)
        ct[f->flip] ^= 0x01;
    qkp_b64url_encode(f->rnonce, 12, nb);
    qkp_b64url_encode(ct, f->skey_len + QKP_TAG_LEN, cb);
    assert_true(qkd_json_id(f->session_id, sid, sizeof(sid)) > 0);
    int n = snprintf(out, cap,
                     "{\"v\":%d,\"session_id\":%s,\"key_id\":\"%s\",\"key_bits\":%d,\"expires_at\":%lld,"
                     "\"delivery\":\"%s\",\"nonce\":\"%s\",\"ct\":\"%s\"%s}",
                     f->v, sid, f->key_id, f->key_bits, (long long)f->expires_at, f->delivery, nb, cb,
                     f->extra ? f->extra : "");
    assert_true(n > 0 && (size_t)n < cap);
}

static int try_response(const qkd_device *d, const qkd_request *r, const struct fake *f)
{
    char body[1024], err[200];
    qkd_session_key sk;
    make_response(d, r, f, body, sizeof(body));
    int rc = qkd_response_key(&sk, d, r, body, strlen(body), err, sizeof(err));
    if (rc != QKD_OK) {
        assert_null(sk.key); /* nothing of a refused response */
        assert_int_equal(sk.key_id[0], 0);
    }
    qkd_session_key_clear(&sk);
    return rc;
}

static void response_vectors(void **state)
{
    const qkd_device *d = *state;
    qkd_request r;
    qkd_session_key sk;
    char err[200];
    /* computed with Python's cryptography for the first request vector */
    static const char resp0[] =
        "{\"v\":1,\"session_id\":\"S-1\",\"key_id\":\"" KEY_ID "\",\"key_bits\":128,"
        "\"expires_at\":1795433600,\"delivery\":\"session\",\"nonce\":\"JCUmJygpKissLS4v\","
        "\"ct\":\"_AwthxGZ7Tu9sa4Lrt9rBmoxOvVS0GZQOZjQ3HiXhQA\"}";
    static const char resp1[] =
        "{\"v\":1,\"session_id\":\"s\\\"q\",\"key_id\":\"" KEY_ID "\",\"key_bits\":256,"
        "\"expires_at\":1795433600,\"delivery\":\"delivered\",\"nonce\":\"JCUmJygpKissLS4v\","
        "\"ct\":\"M05hHeeLm-7xLq_e2VmI2hNHqXmC2ATvAu-znE0rALGcetrUInWnpT7ErbfD3jai\"}";

    assert_int_equal(qkd_request_key(&r, d, 0, "S-1", "ENC-7", false, 1795430000, N0, err, sizeof(err)),
                     QKD_OK);
    assert_int_equal(qkd_response_key(&sk, d, &r, resp0, strlen(resp0), err, sizeof(err)), QKD_OK);
    assert_string_equal(sk.session_id, "S-1");
    assert_string_equal(sk.key_id, KEY_ID);
    assert_int_equal(sk.key_bits, 128);
    assert_int_equal(sk.key_len, 16);
    assert_true(sk.expires_at == EXPIRES);
    assert_string_equal(sk.delivery, "session");
    for (int i = 0; i < 16; i++)
        assert_int_equal(sk.key[i], 0xa0 + i);
    qkd_session_key_clear(&sk);
    assert_null(sk.key);

    assert_int_equal(qkd_request_key(&r, d, 1, "s\"q", "P\"1", true, 1795430001, N1, err, sizeof(err)),
                     QKD_OK);
    assert_int_equal(qkd_response_key(&sk, d, &r, resp1, strlen(resp1), err, sizeof(err)), QKD_OK);
    assert_string_equal(sk.session_id, "s\"q");
    assert_int_equal(sk.key_bits, 256);
    assert_string_equal(sk.delivery, "delivered");
    for (int i = 0; i < 32; i++)
        assert_int_equal(sk.key[i], 0xc0 + i);
    qkd_session_key_clear(&sk);
    /* resp0 does not answer this request */
    assert_int_equal(qkd_response_key(&sk, d, &r, resp0, strlen(resp0), err, sizeof(err)), QKD_ERR_INPUT);
}

/* Epochs and direction keys: the answer must name what the request asked
 * for, bound by the AAD, and a plain request refuses such fields. */
static void ext_responses(void **state)
{
    const qkd_device *d = *state;
    qkd_request r, plain;
    struct fake f;
    char err[200], body[1024];
    qkd_session_key sk;

    assert_int_equal(qkd_request_key_ext(&r, d, 0, "S-1", "ENC-7", 1, "a2b", 1795430000, N0, err,
                                         sizeof(err)),
                     QKD_OK);
    assert_true(r.ext && r.epoch == 1 && !strcmp(r.direction, "a2b"));
    f = fake_for(&r);
    f.aad_dir = "a2b";
    f.aad_epoch = 1;
    f.extra = ",\"epoch\":1,\"direction\":\"a2b\",\"current_epoch\":2";
    make_response(d, &r, &f, body, sizeof(body));
    assert_int_equal(qkd_response_key(&sk, d, &r, body, strlen(body), err, sizeof(err)), QKD_OK);
    assert_int_equal(sk.epoch, 1);
    assert_string_equal(sk.direction, "a2b");
    assert_int_equal(sk.current_epoch, 2);
    qkd_session_key_clear(&sk);
    static const char *const bad_extra[] = {
        ",\"epoch\":1,\"direction\":\"b2a\",\"current_epoch\":1",  /* another direction */
        ",\"epoch\":2,\"direction\":\"a2b\",\"current_epoch\":2",  /* another epoch */
        ",\"epoch\":1,\"direction\":\"a2b\",\"current_epoch\":0",  /* current < epoch */
        ",\"epoch\":1,\"direction\":\"a2b\"",                       /* no current_epoch */
        ",\"epoch\":\"1\",\"direction\":\"a2b\",\"current_epoch\":1", /* a string */
        "",                                                         /* none of them */
    };
    for (size_t i = 0; i < sizeof(bad_extra) / sizeof(bad_extra[0]); i++) {
        f.extra = bad_extra[i];
        assert_int_equal(try_response(d, &r, &f), QKD_ERR_INPUT);
    }
    /* Sealed for epoch 2: the AEAD refuses, whatever the body says. */
    f.extra = ",\"epoch\":1,\"direction\":\"a2b\",\"current_epoch\":2";
    f.aad_epoch = 2;
    assert_int_equal(try_response(d, &r, &f), QKD_ERR_INPUT);
    /* A plain request refuses an answer naming an epoch. */
    assert_int_equal(qkd_request_key(&plain, d, 0, "S-1", "ENC-7", false, 1795430000, N1, err,
                                     sizeof(err)),
                     QKD_OK);
    f = fake_for(&plain);
    assert_int_equal(try_response(d, &plain, &f), QKD_OK);
    f.extra = ",\"epoch\":0,\"direction\":\"\",\"current_epoch\":0";
    assert_int_equal(try_response(d, &plain, &f), QKD_ERR_INPUT);
    /* Building: bad epochs and directions, and with delivered or end. */
    assert_int_equal(qkd_request_key_ext(&r, d, 0, "S-1", "ENC-7", -1, NULL, 1, N0, err,
                                         sizeof(err)),
                     QKD_ERR_INPUT);
    assert_int_equal(qkd_request_key_ext(&r, d, 0, "S-1", "ENC-7", QKP_MAX_EPOCH + 1, NULL, 1,
                                         N0, err, sizeof(err)),
                     QKD_ERR_INPUT);
    assert_int_equal(qkd_request_key_ext(&r, d, 0, "S-1", "ENC-7", 1, "up", 1, N0, err,
                                         sizeof(err)),
                     QKD_ERR_INPUT);
    assert_int_equal(qkd_request_key_ext(&r, d, 0, "S-1", "ENC-7", -1, "b2a", 1, N0, err,
                                         sizeof(err)),
                     QKD_OK);
    assert_true(r.ext && r.epoch == 0 && !strcmp(r.direction, "b2a"));
}

/* The SM4 suite against the Python implementation's answer for the same
 * inputs (tests/integration/qkms_proto_py.py seal("sm4", ...)): key 00..0f,
 * nonce 0^12, AAD "aad", plaintext "hello world". */
static void sm4_suite(void **state)
{
    (void)state;
    static const char want[] = "d5c2fc25ee26c5d2d042f02a74f6709fad640dc20ff015abc594d9";
    uint8_t key[16], nonce[12] = {0}, ct[11 + QKP_TAG_LEN], pt[11];
    char hexct[2 * sizeof(ct) + 1];
    for (int i = 0; i < 16; i++)
        key[i] = (uint8_t)i;
    assert_int_equal(qkp_suite_of("SM4-128"), QKP_SUITE_SM4);
    assert_int_equal(qkp_suite_of("AES-256"), QKP_SUITE_AES);
    assert_int_equal(qkp_suite_of("SM4-256"), -1);
    assert_int_equal(qkp_seal_suite(QKP_SUITE_SM4, key, 16, nonce, "aad", 3,
                                    (const uint8_t *)"hello world", 11, ct),
                     0);
    for (size_t i = 0; i < sizeof(ct); i++)
        snprintf(hexct + 2 * i, 3, "%02x", ct[i]);
    assert_string_equal(hexct, want);
    assert_int_equal(qkp_open_suite(QKP_SUITE_SM4, key, 16, nonce, "aad", 3, ct, sizeof(ct), pt),
                     0);
    assert_memory_equal(pt, "hello world", 11);
    /* Any bit of the AAD, nonce, ciphertext or tag: refused, nothing out. */
    assert_int_equal(qkp_open_suite(QKP_SUITE_SM4, key, 16, nonce, "aae", 3, ct, sizeof(ct), pt),
                     -1);
    for (size_t i = 0; i < sizeof(ct); i++) {
        ct[i] ^= 1;
        assert_int_equal(qkp_open_suite(QKP_SUITE_SM4, key, 16, nonce, "aad", 3, ct, sizeof(ct),
                                        pt),
                         -1);
        ct[i] ^= 1;
    }
    nonce[11] = 1;
    assert_int_equal(qkp_open_suite(QKP_SUITE_SM4, key, 16, nonce, "aad", 3, ct, sizeof(ct), pt),
                     -1);
    /* SM4 keys are 16 bytes; an AES-GCM seal does not open as SM4. */
    assert_int_equal(qkp_seal_suite(QKP_SUITE_SM4, key, 32 - 16 + 8, nonce, "", 0, pt, 1, ct), -1);
    nonce[11] = 0;
    assert_int_equal(qkp_seal_suite(QKP_SUITE_AES, key, 16, nonce, "aad", 3,
                                    (const uint8_t *)"hello world", 11, ct),
                     0);
    assert_int_equal(qkp_open_suite(QKP_SUITE_SM4, key, 16, nonce, "aad", 3, ct, sizeof(ct), pt),
                     -1);
}

static void response_refused(void **state)
{
    const qkd_device *d = *state;
    qkd_request r, other;
    struct fake f;
    char err[200];
    static const uint8_t wrong_key[16] = {1};

    assert_int_equal(qkd_request_key(&r, d, 0, "S-1", "ENC-7", false, 1795430000, N0, err, sizeof(err)),
                     QKD_OK);
    assert_int_equal(qkd_request_key(&other, d, 0, "S-1", "ENC-7", false, 1795430000, N1, err, sizeof(err)),
                     QKD_OK);
    f = fake_for(&r);
    assert_int_equal(try_response(d, &r, &f), QKD_OK);
    f.key_bits = 256, f.skey_len = 32;
    assert_int_equal(try_response(d, &r, &f), QKD_OK);

    /* another session, in the JSON only or in the JSON and the AAD */
    f = fake_for(&r), f.session_id = "S-2";
    assert_int_equal(try_response(d, &r, &f), QKD_ERR_INPUT);
    f.aad_session_id = "S-2";
    assert_int_equal(try_response(d, &r, &f), QKD_ERR_INPUT);
    /* a flipped ct byte, in the key and in the tag */
    f = fake_for(&r), f.flip = 0;
    assert_int_equal(try_response(d, &r, &f), QKD_ERR_INPUT);
    f.flip = 16 + 15;
    assert_int_equal(try_response(d, &r, &f), QKD_ERR_INPUT);
    /* the answer to another request (its nonce in the AAD) */
    f = fake_for(&r), f.aad_req_nonce = other.nonce_b64;
    assert_int_equal(try_response(d, &r, &f), QKD_ERR_INPUT);
    f = fake_for(&other);
    {
        char body[1024];
        qkd_session_key sk;
        make_response(d, &other, &f, body, sizeof(body));
        assert_int_equal(qkd_response_key(&sk, d, &other, body, strlen(body), err, sizeof(err)), QKD_OK);
        qkd_session_key_clear(&sk);
        assert_int_equal(qkd_response_key(&sk, d, &r, body, strlen(body), err, sizeof(err)), QKD_ERR_INPUT);
    }
    /* key_bits that does not match ct, or is not 128/256 */
    f = fake_for(&r), f.key_bits = 256;
    assert_int_equal(try_response(d, &r, &f), QKD_ERR_INPUT);
    f = fake_for(&r), f.key_bits = 192, f.skey_len = 24;
    assert_int_equal(try_response(d, &r, &f), QKD_ERR_INPUT);
    f = fake_for(&r), f.skey_len = 15;
    assert_int_equal(try_response(d, &r, &f), QKD_ERR_INPUT);
    /* expires_at, key_id or key index other than sealed */
    f = fake_for(&r), f.expires_at = EXPIRES + 3600;
    assert_int_equal(try_response(d, &r, &f), QKD_ERR_INPUT);
    f = fake_for(&r), f.aad_index = 1;
    assert_int_equal(try_response(d, &r, &f), QKD_ERR_INPUT);
    /* sealed under another key */
    f = fake_for(&r), f.seal_key = wrong_key, f.seal_key_len = sizeof(wrong_key);
    assert_int_equal(try_response(d, &r, &f), QKD_ERR_INPUT);
    /* the server reused our nonce */
    f = fake_for(&r), f.rnonce = N0;
    assert_int_equal(try_response(d, &r, &f), QKD_ERR_INPUT);
    /* version, delivery, key_id shape */
    f = fake_for(&r), f.v = 2;
    assert_int_equal(try_response(d, &r, &f), QKD_ERR_INPUT);
    f = fake_for(&r), f.delivery = "often";
    assert_int_equal(try_response(d, &r, &f), QKD_ERR_INPUT);
    f = fake_for(&r), f.key_id = "a/b";
    assert_int_equal(try_response(d, &r, &f), QKD_ERR_INPUT);

    /* a sound answer whose session_id hides a NUL: "S-1\u0000x" is not "S-1" */
    qkd_session_key sk;
    {
        char body[1024], tail[1024];
        f = fake_for(&r);
        make_response(d, &r, &f, body, sizeof(body));
        assert_int_equal(qkd_response_key(&sk, d, &r, body, strlen(body), err, sizeof(err)), QKD_OK);
        qkd_session_key_clear(&sk);
        char *p = strstr(body, "\"S-1\"");
        assert_non_null(p);
        snprintf(tail, sizeof(tail), "%s", p + 4);
        snprintf(p, sizeof(body) - (size_t)(p - body), "\"S-1\\u0000x\"%s", tail);
        assert_int_equal(qkd_response_key(&sk, d, &r, body, strlen(body), err, sizeof(err)),
                         QKD_ERR_INPUT);
    }
    /* not objects, missing fields, duplicate fields, end request */
    static const char *bad[] = {
        "", "[]", "null", "{}", "{\"v\":1,\"session_id\":\"S-1\"}", "{\"v\":1,\"v\":1}",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_int_equal(qkd_response_key(&sk, d, &r, bad[i], strlen(bad[i]), err, sizeof(err)),
                         QKD_ERR_INPUT);
    qkd_request end;
    assert_int_equal(qkd_request_end(&end, d, 0, "S-1", 1, N2, err, sizeof(err)), QKD_OK);
    f = fake_for(&end);
    {
        char body[1024];
        make_response(d, &end, &f, body, sizeof(body));
        assert_int_equal(qkd_response_key(&sk, d, &end, body, strlen(body), err, sizeof(err)),
                         QKD_ERR_INPUT);
    }
}

static void end_and_error_responses(void **state)
{
    const qkd_device *d = *state;
    qkd_request r, k;
    qkd_error e;
    char err[200];
    assert_int_equal(qkd_request_end(&r, d, 0, "S-1", 1, N2, err, sizeof(err)), QKD_OK);
    assert_int_equal(qkd_request_key(&k, d, 0, "S-1", "P", false, 1, N0, err, sizeof(err)), QKD_OK);
    static const char ok[] = "{\"v\":1,\"session_id\":\"S-1\",\"ended\":true}";
    assert_int_equal(qkd_response_end(&r, ok, strlen(ok), err, sizeof(err)), QKD_OK);
    assert_int_equal(qkd_response_end(&k, ok, strlen(ok), err, sizeof(err)), QKD_ERR_INPUT);
    static const char *bad[] = {
        "{\"v\":1,\"session_id\":\"S-2\",\"ended\":true}",
        "{\"v\":1,\"session_id\":\"S-1\",\"ended\":false}",
        "{\"v\":1,\"session_id\":\"S-1\"}",
        "{\"v\":2,\"session_id\":\"S-1\",\"ended\":true}",
        "{\"session_id\":\"S-1\",\"ended\":true}",
        "{\"v\":1,\"session_id\":\"S-1\",\"ended\":1}",
        "{\"v\":1,\"session_id\":\"S-1\",\"session_id\":\"S-1\",\"ended\":true}",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_int_equal(qkd_response_end(&r, bad[i], strlen(bad[i]), err, sizeof(err)), QKD_ERR_INPUT);

    /* An end of every session: its own answer, not a single end's. */
    {
        qkd_request a;
        int n = -1, m = -1;
        static const char all_ok[] =
            "{\"v\":1,\"all\":true,\"ended\":true,\"sessions_ended\":3,\"streams_ended\":1}";
        static const char *all_bad[] = {
            "{\"v\":1,\"all\":true,\"ended\":true}",
            "{\"v\":1,\"all\":true,\"ended\":true,\"sessions_ended\":3}",
            "{\"v\":1,\"all\":true,\"ended\":true,\"sessions_ended\":3,\"streams_ended\":-1}",
            "{\"v\":1,\"all\":true,\"ended\":true,\"sessions_ended\":-1}",
            "{\"v\":1,\"all\":true,\"ended\":true,\"sessions_ended\":1.0}",
            "{\"v\":1,\"all\":false,\"ended\":true,\"sessions_ended\":1}",
            "{\"v\":1,\"all\":true,\"ended\":false,\"sessions_ended\":1}",
            "{\"v\":1,\"all\":true,\"session_id\":\"S-1\",\"ended\":true,\"sessions_ended\":1}",
            "{\"v\":2,\"all\":true,\"ended\":true,\"sessions_ended\":1}",
            "{\"v\":1,\"all\":true,\"ended\":true,\"sessions_ended\":1,\"sessions_ended\":2}",
        };
        assert_int_equal(qkd_request_end_all(&a, d, 0, 1, N1, err, sizeof(err)), QKD_OK);
        assert_true(a.all && a.session_id[0] == '\0');
        assert_non_null(strstr(a.path, "/end"));
        assert_int_equal(qkd_response_end_all(&a, all_ok, strlen(all_ok), &n, &m, err, sizeof(err)),
                         QKD_OK);
        assert_int_equal(n, 3);
        assert_int_equal(m, 1);
        assert_int_equal(qkd_response_end(&a, all_ok, strlen(all_ok), err, sizeof(err)),
                         QKD_ERR_INPUT);
        assert_int_equal(qkd_response_end_all(&r, all_ok, strlen(all_ok), &n, &m, err, sizeof(err)),
                         QKD_ERR_INPUT);
        assert_int_equal(qkd_response_end_all(&a, ok, strlen(ok), &n, &m, err, sizeof(err)),
                         QKD_ERR_INPUT);
        for (size_t i = 0; i < sizeof(all_bad) / sizeof(all_bad[0]); i++)
            assert_int_equal(qkd_response_end_all(&a, all_bad[i], strlen(all_bad[i]), &n, &m, err,
                                                  sizeof(err)),
                             QKD_ERR_INPUT);
        assert_int_equal(qkd_request_end(&a, d, 0, NULL, 1, N1, err, sizeof(err)), QKD_ERR_INPUT);
    }

    static const char e409[] =
        "{\"error\":{\"code\":\"session_ended\",\"message\":\"the session has ended\"}}";
    assert_int_equal(qkd_response_error(&e, e409, strlen(e409)), QKD_OK);
    assert_string_equal(e.code, "session_ended");
    assert_string_equal(e.message, "the session has ended");
    static const char nomsg[] = "{\"error\":{\"code\":\"unauthenticated\"}}";
    assert_int_equal(qkd_response_error(&e, nomsg, strlen(nomsg)), QKD_OK);
    assert_string_equal(e.message, "");
    static const char *not_errors[] = {"", "<html>", "{}", "{\"error\":\"x\"}", "{\"error\":{\"code\":\"\"}}",
                                       "{\"error\":{\"code\":7}}"};
    for (size_t i = 0; i < sizeof(not_errors) / sizeof(not_errors[0]); i++) {
        assert_int_equal(qkd_response_error(&e, not_errors[i], strlen(not_errors[i])), QKD_ERR_INPUT);
        assert_string_equal(e.code, "");
    }
    assert_int_equal(qkd_response_error(&e, NULL, 0), QKD_ERR_INPUT);
}

/* ---- primitives ---------------------------------------------------------- */

static void b64url_edges(void **state)
{
    uint8_t buf[64], in[40], out[40];
    char enc[QKP_B64URL_LEN(40)];
    (void)state;

    /* padding, wrong alphabet, impossible lengths */
    static const char *bad[] = {"AA==", "AAA=", "AA=", "A", "AAAAA", "AB+/", "AB/c", "AB c", "AA\n",
                                "=AAA", "AAA\xc3"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_int_equal(qkp_b64url_decode(bad[i], strlen(bad[i]), buf, sizeof(buf)), -1);
    /* an embedded NUL is a bad character, not the end */
    assert_int_equal(qkp_b64url_decode("AA\0A", 4, buf, sizeof(buf)), -1);
    /* non-zero unused trailing bits: one encoding per value */
    assert_int_equal(qkp_b64url_decode("AA", 2, buf, sizeof(buf)), 1);
    assert_int_equal(qkp_b64url_decode("AB", 2, buf, sizeof(buf)), -1);
    assert_int_equal(qkp_b64url_decode("AP", 2, buf, sizeof(buf)), -1);
    assert_int_equal(qkp_b64url_decode("AQ", 2, buf, sizeof(buf)), 1);
    assert_int_equal(buf[0], 0x01);
    assert_int_equal(qkp_b64url_decode("AAA", 3, buf, sizeof(buf)), 2);
    assert_int_equal(qkp_b64url_decode("AAB", 3, buf, sizeof(buf)), -1);
    assert_int_equal(qkp_b64url_decode("AAD", 3, buf, sizeof(buf)), -1);
    assert_int_equal(qkp_b64url_decode("AAE", 3, buf, sizeof(buf)), 2);
    assert_int_equal(qkp_b64url_decode("", 0, buf, sizeof(buf)), 0);
    /* url alphabet */
    assert_int_equal(qkp_b64url_decode("-_-_", 4, buf, sizeof(buf)), 3);
    assert_memory_equal(buf, "\xfb\xff\xbf", 3);
    qkp_b64url_encode((const uint8_t *)"\xfb\xff\xbf", 3, enc);
    assert_string_equal(enc, "-_-_");

    /* round trips, exact capacity, and one byte short */
    for (size_t len = 0; len <= 40; len++) {
        assert_int_equal(RAND_bytes(in, sizeof(in)), 1);
        qkp_b64url_encode(in, len, enc);
        assert_int_equal(strlen(enc), (len * 4 + 2) / 3);
        assert_true(strlen(enc) + 1 <= QKP_B64URL_LEN(len));
        assert_null(strchr(enc, '='));
        assert_int_equal(qkp_b64url_decode(enc, strlen(enc), out, len), (long)len);
        assert_memory_equal(in, out, len);
        if (len > 0)
            assert_int_equal(qkp_b64url_decode(enc, strlen(enc), out, len - 1), -1);
    }
}

static void ids_and_aad(void **state)
{
    char id[QKP_MAX_ID + 2], q[300], aad[QKP_MAX_AAD];
    (void)state;
    assert_true(qkp_id_valid("VIN-0001"));
    assert_true(qkp_id_valid("!\"~"));
    static const char *bad[] = {"", "a b", "a/b", "a\\b", "a%b", "a?b", "a#b", "a\nb", "\x7f", "\xc3\xa9"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_false(qkp_id_valid(bad[i]));
    assert_false(qkp_id_valid(NULL));
    memset(id, 'a', sizeof(id) - 1);
    id[QKP_MAX_ID] = 0;
    assert_true(qkp_id_valid(id));
    id[QKP_MAX_ID] = 'a', id[QKP_MAX_ID + 1] = 0;
    assert_false(qkp_id_valid(id));

    assert_int_equal(qkd_json_id("a\"b", q, sizeof(q)), 6);
    assert_string_equal(q, "\"a\\\"b\"");
    assert_int_equal(qkd_json_id("abc", q, 5), -1);
    assert_int_equal(qkd_json_id("abc", q, 6), 5);
    assert_int_equal(qkd_json_id("a/b", q, sizeof(q)), -1);

    assert_int_equal(qkp_request_aad("key", "D", 255, aad, sizeof(aad)), 21);
    assert_string_equal(aad, "qkms/v1/req\nkey\nD\n255");
    assert_int_equal(qkp_request_aad("key", "D", -1, aad, sizeof(aad)), -1);
    assert_int_equal(qkp_request_aad("key", "D", 256, aad, sizeof(aad)), -1);
    assert_int_equal(qkp_request_aad("key", "D\n0", 0, aad, sizeof(aad)), -1);
    assert_int_equal(qkp_request_aad("key", "D", 0, aad, 5), -1);
    assert_true(qkp_response_aad("S", "D", 0, "K", 0, "N", aad, sizeof(aad)) > 0);
    assert_string_equal(aad, "qkms/v1/resp\nS\nD\n0\nK\n0\nN");
    assert_int_equal(qkp_response_aad("S", "D", 0, "K", -1, "N", aad, sizeof(aad)), -1);
    assert_int_equal(qkp_response_aad("S", "D", 0, "K\n1", 1, "N", aad, sizeof(aad)), -1);
}

static void gcm_open_wipes(void **state)
{
    uint8_t ct[16 + QKP_TAG_LEN], pt[16];
    (void)state;
    assert_int_equal(qkp_seal(K0, 16, N0, "a", 1, (const uint8_t *)"0123456789abcdef", 16, ct), 0);
    assert_int_equal(qkp_open(K0, 16, N0, "a", 1, ct, sizeof(ct), pt), 0);
    assert_memory_equal(pt, "0123456789abcdef", 16);
    ct[sizeof(ct) - 1] ^= 1;
    memset(pt, 0x55, sizeof(pt));
    assert_int_equal(qkp_open(K0, 16, N0, "a", 1, ct, sizeof(ct), pt), -1);
    for (size_t i = 0; i < sizeof(pt); i++)
        assert_int_equal(pt[i], 0); /* no unauthenticated plaintext left */
    assert_int_equal(qkp_open(K0, 16, N0, "a", 1, ct, QKP_TAG_LEN - 1, pt), -1);
    assert_int_equal(qkp_seal(K0, 24, N0, "a", 1, pt, 1, ct), -1); /* AES-192 is not in the protocol */
    /* empty plaintext */
    assert_int_equal(qkp_seal(K0, 16, N0, NULL, 0, NULL, 0, ct), 0);
    assert_int_equal(qkp_open(K0, 16, N0, NULL, 0, ct, QKP_TAG_LEN, pt), 0);
}

/* Pins as libqkms-device callers may pass them, the shortest entries
 * included (each grows by "sha256//" and a ';' in libcurl's form): the
 * exchange fails at connect (nothing listens on port 1), and ASan sees
 * every byte the list took. */
static void http_pin_lists(void **state)
{
    static const char *const pins[] = {"a", "a;a;a;a;a;a;a;a", ";;;", "sha256//a;b", "a;", ""};
    (void)state;
    assert_int_equal(qkd_http_global_init(), QKD_HTTP_OK);
    for (size_t i = 0; i < sizeof(pins) / sizeof(pins[0]); i++) {
        qkd_http_opts o = {.timeout_s = 5, .pin_sha256 = pins[i]};
        qkd_http_response r;
        char err[256];
        assert_int_equal(qkd_http_post("https://127.0.0.1:1", "/v1/sessions/key", "{}", 2, &o, &r,
                                       err, sizeof(err)),
                         QKD_HTTP_TRANSPORT);
        assert_null(r.body);
    }
    qkd_http_global_cleanup();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(fill_loaded),
        cmocka_unit_test(default_index),
        cmocka_unit_test(local_keys),
        cmocka_unit_test(fill_refused),
        cmocka_unit_test(fill_times),
        cmocka_unit_test(request_vectors),
        cmocka_unit_test(request_random_nonce),
        cmocka_unit_test(request_refused),
        cmocka_unit_test(response_vectors),
        cmocka_unit_test(response_refused),
        cmocka_unit_test(ext_responses),
        cmocka_unit_test(sm4_suite),
        cmocka_unit_test(end_and_error_responses),
        cmocka_unit_test(b64url_edges),
        cmocka_unit_test(ids_and_aad),
        cmocka_unit_test(gcm_open_wipes),
        cmocka_unit_test(http_pin_lists),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
