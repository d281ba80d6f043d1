/*
 * etsi014 — the ETSI GS QKD 014 V1.1.1 door (docs/etsi014.md): Get status,
 * Get key (enc_keys) and Get key with key IDs (dec_keys), in their GET and
 * POST forms, under /api/v1/keys/{SAE_ID}/. It owns the standard's wire:
 * the request data formats, the Key container and Status answers, the
 * Error object ({"message", "details"}) with 400, 401 and 503. The calling
 * SAE is the device of its TLS client certificate (api/tlsauth.h), never a
 * URL; the keys are the service's (service/qkd.h).
 *
 * parse_key_request and parse_key_ids are static and reached by the fuzz
 * target, which compiles this file in (fuzz/fuzz_etsi014.c).
 */
#include <ctype.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "hexutil.h"
#include "api/routes.h"
#include "log.h"
#include "qbuf.h"
#include "service/qkd.h"

#define ETSI_BODY_MAX 65536

/* The standard's Error object; details carry qkms's stable code. */
static void etsi_error(http_response *rs, int status, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void etsi_error(http_response *rs, int status, const char *code, const char *fmt, ...)
{
    char msg[HTTP_MESSAGE_MAX];
    va_list ap;
    va_start(ap, fmt);
    http_vmessage(msg, fmt, ap);
    va_end(ap);
    http_json(rs, status, json_pack("{s:s,s:[{s:s}]}", "message", msg, "details", "qkms_code",
                                    code));
    rs->err_code = code;
}

/* A service failure in the standard's terms: 400 for what the request
 * asked, 401 for who asked (the standard has no 403: another pair's key or
 * a pair no policy allows is "unauthorized"), 503 for the platform. */
static void etsi_fail(http_response *rs, const qk_err *e)
{
    /* The standard knows 400, 401 and 503: kmsd's own failure is a 503
     * too (code internal; the log says what happened). */
    int status = e->kind == QK_UNAUTHENTICATED || e->kind == QK_FORBIDDEN ? 401
                 : e->kind == QK_UNAVAILABLE || e->kind == QK_INTERNAL  ? 503
                                                                          : 400;
    etsi_error(rs, status, e->code ? e->code : "internal", "%s",
               e->kind == QK_INTERNAL ? "internal error (see kmsd log)" : e->detail);
    if (status == 503)
        rs->retry_after = e->retry_after > 0 ? e->retry_after : 1;
}

/* The calling SAE: its client certificate's device, an active SAE. */
static int caller(http_request *rq, http_response *rs, qkd_sae *sae, qk_principal *who)
{
    qk_err e;
    if (!rq->cert.device_id[0]) {
        etsi_error(rs, 401, "client_certificate_required",
                   "an SAE is identified by its TLS client certificate; none was presented");
        return -1;
    }
    if (qkd_sae_of(&rq->kms->svc, rq->cert.device_id, sae, &e) != QK_OK) {
        etsi_fail(rs, &e);
        return -1;
    }
    *who = (qk_principal){.kind = QK_PRINCIPAL_DEVICE, .name = sae->device_id,
                          .log = http_log_ctx(rq)};
    who->log.principal = sae->device_id;
    if (!http_rate_limit(rq, rs, RL_DEVICE, sae->device_id)) {
        /* The standard knows no 429: its "try again later" is a 503, in its
         * Error object, with the limiter's Retry-After. */
        int ra = rs->retry_after;
        etsi_error(rs, 503, "rate_limited", "too many requests from this SAE; retry in %d s", ra);
        rs->retry_after = ra > 0 ? ra : 1;
        return -1;
    }
    return 0;
}

/* A decimal integer of at most 9 digits (GET forms), or -1. */
static long small_int(const char *s)
{
    long v = 0;
    size_t n = s ? strlen(s) : 0;
    if (n == 0 || n > 9)
        return -1;
    for (size_t i = 0; i < n; i++) {
        if (!isdigit((unsigned char)s[i]))
            return -1;
        v = v * 10 + (s[i] - '0');
    }
    return v;
}

/* ---- request data formats ------------------------------------------------------- */

typedef struct {
    long number, size;
    const char *slaves[1 + QKD_MAX_SAE_ID_COUNT];
    int nslaves;
    json_t *obj; /* owns the strings */
} key_request;

static json_t *load_body(http_request *rq, http_response *rs)
{
    json_error_t je;
    json_t *o;
    const char *ct = rq->content_type;
    size_t ctl = ct ? strcspn(ct, ";") : 0;
    while (ctl > 0 && ct[ctl - 1] == ' ')
        ctl--;
    if (!ct || ctl != 16 || strncasecmp(ct, "application/json", 16)) {
        etsi_error(rs, 400, "unsupported_media_type", "Content-Type must be application/json");
        return NULL;
    }
    if (rq->body_len > ETSI_BODY_MAX) {
        etsi_error(rs, 400, "payload_too_large", "the request body is over %d bytes",
                   ETSI_BODY_MAX);
        return NULL;
    }
    o = json_loadb(rq->body ? rq->body : "", rq->body_len, JSON_REJECT_DUPLICATES, &je);
    if (!json_is_object(o)) {
        json_decref(o);
        etsi_error(rs, 400, "malformed_json", "the body is not one JSON object");
        return NULL;
    }
    return o;
}

/* An extension_mandatory we do not support is the standard's 400; qkms
 * supports none. extension_optional is ignored. */
static int extensions(http_response *rs, json_t *o, const char *mandatory, const char *optional)
{
    json_t *m = json_object_get(o, mandatory), *op = json_object_get(o, optional);
    if (m && !(json_is_array(m) && json_array_size(m) == 0) && !json_is_null(m)) {
        etsi_error(rs, 400, "unsupported_extension",
                   "%s: this KME supports no mandatory extension", mandatory);
        return -1;
    }
    if (op && !json_is_array(op) && !json_is_null(op)) {
        etsi_error(rs, 400, "invalid_request", "%s must be an array", optional);
        return -1;
    }
    return 0;
}

/* The Key request (POST enc_keys; GET's query fills the same). 0, or -1
 * with rs the 400. */
static int parse_key_request(http_response *rs, json_t *o, const char *slave, key_request *kr)
{
    const char *key;
    json_t *v;
    size_t i;

    kr->number = 1;
    kr->size = QKD_KEY_SIZE;
    kr->slaves[0] = slave;
    kr->nslaves = 1;
    json_object_foreach(o, key, v) {
        if (strcmp(key, "number") && strcmp(key, "size") &&
            strcmp(key, "additional_slave_SAE_IDs") && strcmp(key, "extension_mandatory") &&
            strcmp(key, "extension_optional")) {
            etsi_error(rs, 400, "invalid_request", "unknown field '%.32s' in the Key request",
                       key);
            return -1;
        }
    }
    if ((v = json_object_get(o, "number"))) {
        if (!json_is_integer(v) || json_integer_value(v) < 1 ||
            json_integer_value(v) > QKD_MAX_KEY_PER_REQUEST) {
            etsi_error(rs, 400, "invalid_request", "number must be an integer from 1 to %d",
                       QKD_MAX_KEY_PER_REQUEST);
            return -1;
        }
        kr->number = (long)json_integer_value(v);
    }
    if ((v = json_object_get(o, "size"))) {
        if (!json_is_integer(v) || json_integer_value(v) < QKD_MIN_KEY_SIZE ||
            json_integer_value(v) > QKD_MAX_KEY_SIZE || json_integer_value(v) % 8) {
            etsi_error(rs, 400, "invalid_request",
                       "size must be a multiple of 8 from %d to %d (bits)", QKD_MIN_KEY_SIZE,
                       QKD_MAX_KEY_SIZE);
            return -1;
        }
        kr->size = (long)json_integer_value(v);
    }
    if ((v = json_object_get(o, "additional_slave_SAE_IDs")) && !json_is_null(v)) {
        json_t *x;
        if (!json_is_array(v) || json_array_size(v) > QKD_MAX_SAE_ID_COUNT) {
            etsi_error(rs, 400, "invalid_request",
                       "additional_slave_SAE_IDs must be an array of at most %d SAE IDs",
                       QKD_MAX_SAE_ID_COUNT);
            return -1;
        }
        json_array_foreach(v, i, x) {
            const char *s = json_string_value(x);
            if (!qkd_sae_id_valid(s)) {
                etsi_error(rs, 400, "invalid_request", "additional_slave_SAE_IDs[%zu] is no SAE ID",
                           i);
                return -1;
            }
            for (int j = 0; j < kr->nslaves; j++)
                if (!strcmp(kr->slaves[j], s)) {
                    etsi_error(rs, 400, "invalid_request", "SAE ID '%.128s' is named twice", s);
                    return -1;
                }
            kr->slaves[kr->nslaves++] = s;
        }
    }
    return extensions(rs, o, "extension_mandatory", "extension_optional");
}

/* A key ID: a UUID in its text form, lower-cased into out. */
static bool uuid_ok(const char *s, char out[37])
{
    if (!qkms_uuid_valid(s))
        return false;
    for (int i = 0; i < 36; i++)
        out[i] = (char)tolower((unsigned char)s[i]);
    out[36] = 0;
    return true;
}

typedef struct {
    char ids[QKD_MAX_KEY_PER_REQUEST][37];
    const char *ptrs[QKD_MAX_KEY_PER_REQUEST];
    int n;
} key_ids;

/* The Key IDs object (POST dec_keys). 0, or -1 with rs the 400. */
static int parse_key_ids(http_response *rs, json_t *o, key_ids *k)
{
    const char *key;
    json_t *v, *arr = json_object_get(o, "key_IDs"), *x;
    size_t i;

    json_object_foreach(o, key, v) {
        if (strcmp(key, "key_IDs") && strcmp(key, "key_IDs_extension")) {
            etsi_error(rs, 400, "invalid_request", "unknown field '%.32s' in Key IDs", key);
            return -1;
        }
    }
    if (!json_is_array(arr) || json_array_size(arr) < 1 ||
        json_array_size(arr) > QKD_MAX_KEY_PER_REQUEST) {
        etsi_error(rs, 400, "invalid_request", "key_IDs must be an array of 1 to %d objects",
                   QKD_MAX_KEY_PER_REQUEST);
        return -1;
    }
    v = json_object_get(o, "key_IDs_extension");
    if (v && !json_is_null(v) && !json_is_object(v)) {
        etsi_error(rs, 400, "invalid_request", "key_IDs_extension must be an object");
        return -1;
    }
    json_array_foreach(arr, i, x) {
        const char *kk;
        json_t *kv;
        if (!json_is_object(x)) {
            etsi_error(rs, 400, "invalid_request", "key_IDs[%zu] must be an object", i);
            return -1;
        }
        json_object_foreach(x, kk, kv) {
            if (strcmp(kk, "key_ID") && strcmp(kk, "key_ID_extension")) {
                etsi_error(rs, 400, "invalid_request", "unknown field '%.32s' in key_IDs[%zu]",
                           kk, i);
                return -1;
            }
        }
        if (!uuid_ok(json_string_value(json_object_get(x, "key_ID")), k->ids[k->n])) {
            etsi_error(rs, 400, "invalid_request", "key_IDs[%zu].key_ID must be a UUID", i);
            return -1;
        }
        for (int j = 0; j < k->n; j++)
            if (!strcmp(k->ids[j], k->ids[k->n])) {
                etsi_error(rs, 400, "invalid_request", "key_ID %s is named twice", k->ids[j]);
                return -1;
            }
        k->ptrs[k->n] = k->ids[k->n];
        k->n++;
    }
    return 0;
}

/* ---- answers ----------------------------------------------------------------------- */

/* The Key container, {"keys":[{"key_ID","key"}]}, keys in base64 (RFC 4648
 * section 4, padded), written by hand in the secure heap: the key bytes
 * never pass through jansson, whose buffers are freed unwiped. *out is
 * malloc'd (the server wipes a body when it frees it). 0, or -1. */
static int container_text(const qkd_keys_out *o, char **out, size_t *len)
{
    qbuf *b = qbuf_new((size_t)o->n * 200 + 32, QBUF_SECURE);
    unsigned char b64[((QKD_MAX_KEY_SIZE / 8 + 2) / 3) * 4 + 1];
    int w = b ? qbuf_put_str(b, "{\"keys\":[") : -1;

    *out = NULL;
    for (int i = 0; w == QBUF_OK && i < o->n; i++) {
        if (o->keys[i].len > QKD_MAX_KEY_SIZE / 8) {
            w = -1;
            break;
        }
        EVP_EncodeBlock(b64, o->keys[i].key, (int)o->keys[i].len);
        w = qbuf_put_str(b, i ? ",{\"key_ID\":\"" : "{\"key_ID\":\"") |
            qbuf_put_str(b, o->keys[i].key_id) | qbuf_put_str(b, "\",\"key\":\"") |
            qbuf_put_str(b, (const char *)b64) | qbuf_put_str(b, "\"}");
        OPENSSL_cleanse(b64, sizeof(b64));
    }
    if (w == QBUF_OK)
        w = qbuf_put_str(b, "]}");
    if (w == QBUF_OK && (*out = malloc(qbuf_len(b) + 1))) {
        memcpy(*out, qbuf_ptr(b), qbuf_len(b) + 1);
        *len = qbuf_len(b);
    }
    qbuf_free(b);
    return *out ? 0 : -1;
}

/* The Key container, made inside the transaction that stores (enc_keys)
 * or consumes (dec_keys) the keys. */
typedef struct {
    char *text;
    size_t len;
} made_answer;

static void answer_drop(made_answer *a)
{
    if (a->text) {
        OPENSSL_cleanse(a->text, a->len);
        free(a->text);
        a->text = NULL;
    }
}

static int make_answer(void *arg, const qkd_keys_out *keys)
{
    made_answer *a = arg;
    /* A transaction run again (a serialization failure) makes it again. */
    answer_drop(a);
    return container_text(keys, &a->text, &a->len);
}

/* ---- the handlers -------------------------------------------------------------------- */

/* Every answer of this door is counted once here, whichever layer refused:
 * the door's parser or the key service. */
static void counted(http_request *rq, http_response *rs)
{
    if (rs->status == 400)
        qkd_metrics_refused(rq->kms->svc.qkdm, QKD_REFUSE_BAD_REQUEST);
    else if (rs->status == 401)
        qkd_metrics_refused(rq->kms->svc.qkdm, QKD_REFUSE_UNAUTHORIZED);
}

static void status_of(http_request *rq, http_response *rs)
{
    qkd_sae me;
    qk_principal who;
    json_t *out;
    qk_err e;
    if (caller(rq, rs, &me, &who) != 0)
        return;
    if (!qkd_sae_id_valid(rq->params[0])) {
        etsi_error(rs, 400, "invalid_request", "the slave SAE ID is not an SAE ID");
        return;
    }
    if (qkd_status(&rq->kms->svc, &me, rq->params[0], &out, &e) != QK_OK) {
        etsi_fail(rs, &e);
        return;
    }
    http_json(rs, 200, out);
}

void h_etsi_status(http_request *rq, http_response *rs)
{
    status_of(rq, rs);
    counted(rq, rs);
}

static void enc(http_request *rq, http_response *rs, json_t *body)
{
    qkd_sae me;
    qk_principal who;
    key_request kr;
    made_answer ans = {NULL, 0};
    qk_err e;

    memset(&kr, 0, sizeof(kr));
    if (caller(rq, rs, &me, &who) != 0)
        return;
    if (!qkd_sae_id_valid(rq->params[0])) {
        etsi_error(rs, 400, "invalid_request", "the slave SAE ID is not an SAE ID");
        return;
    }
    if (parse_key_request(rs, body, rq->params[0], &kr) != 0)
        return;
    if (qkd_enc(&rq->kms->svc, &who, &me, kr.slaves, kr.nslaves, (int)kr.number, (int)kr.size,
                make_answer, &ans, &e) != QK_OK) {
        answer_drop(&ans);
        etsi_fail(rs, &e);
        return;
    }
    http_text(rs, 200, "application/json", ans.text, ans.len);
}

void h_etsi_enc_post(http_request *rq, http_response *rs)
{
    json_t *body = load_body(rq, rs);
    if (body)
        enc(rq, rs, body);
    json_decref(body);
    counted(rq, rs);
}

/* GET enc_keys?number=N&size=S: the Key request's two scalars. */
void h_etsi_enc_get(http_request *rq, http_response *rs)
{
    const char *names[2] = {"number", "size"};
    json_t *body = json_object();
    for (int i = 0; i < 2; i++) {
        const char *q = http_query(rq, names[i]);
        long v = q ? small_int(q) : 0;
        if (q && v < 0) {
            etsi_error(rs, 400, "invalid_request", "%s must be a decimal integer", names[i]);
            goto out;
        }
        if (q)
            json_object_set_new(body, names[i], json_integer(v));
    }
    enc(rq, rs, body);
out:
    json_decref(body);
    counted(rq, rs);
}

static void dec(http_request *rq, http_response *rs, const key_ids *k)
{
    qkd_sae me;
    qk_principal who;
    made_answer ans = {NULL, 0};
    qk_err e;

    if (caller(rq, rs, &me, &who) != 0)
        return;
    if (!qkd_sae_id_valid(rq->params[0])) {
        etsi_error(rs, 400, "invalid_request", "the master SAE ID is not an SAE ID");
        return;
    }
    if (!strcmp(rq->params[0], me.sae_id)) {
        /* The standard: 401 for a requester the Get key did not name. */
        etsi_error(rs, 401, "not_yours",
                   "Get key with key IDs is the slave's: the master has its keys already");
        return;
    }
    if (qkd_dec(&rq->kms->svc, &who, &me, rq->params[0], k->ptrs, k->n, make_answer, &ans,
                &e) != QK_OK) {
        /* Made but not committed: the keys were not consumed, and the
         * answer must not outlive that. */
        answer_drop(&ans);
        etsi_fail(rs, &e);
        return;
    }
    http_text(rs, 200, "application/json", ans.text, ans.len);
}

void h_etsi_dec_post(http_request *rq, http_response *rs)
{
    json_t *body = load_body(rq, rs);
    key_ids *k = calloc(1, sizeof(*k));
    if (!k) {
        etsi_error(rs, 503, "unavailable", "out of memory");
        rs->retry_after = 1;
    } else if (body && parse_key_ids(rs, body, k) == 0)
        dec(rq, rs, k);
    free(k);
    json_decref(body);
    counted(rq, rs);
}

/* GET dec_keys?key_ID=UUID: one key. */
void h_etsi_dec_get(http_request *rq, http_response *rs)
{
    key_ids *k = calloc(1, sizeof(*k));
    if (!k) {
        etsi_error(rs, 503, "unavailable", "out of memory");
        rs->retry_after = 1;
        return;
    }
    if (http_query_count(rq, "key_ID") > 1) {
        etsi_error(rs, 400, "invalid_request",
                   "key_ID is named more than once: the GET form takes one key (POST takes a list)");
    } else if (!uuid_ok(http_query(rq, "key_ID"), k->ids[0])) {
        etsi_error(rs, 400, "invalid_request", "key_ID must be a UUID");
    } else {
        k->ptrs[0] = k->ids[0];
        k->n = 1;
        dec(rq, rs, k);
    }
    free(k);
    counted(rq, rs);
}
