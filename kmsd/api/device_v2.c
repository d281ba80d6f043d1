/*
 * device_v2 — the device protocol v2 door (docs/protocol.md, "qkms device
 * protocol v2"): POST /v2/sessions/key and POST /v2/sessions/end. It owns
 * the wire: the outer object, the inner request's fields, the device rate
 * limit, the inner response and its encoding. Authentication, the client
 * random, sealing and signing are the service's (service/negotiate.h); the
 * sessions are sessions.h's, shared with v1.
 *
 * parse_outer, inner_ident and inner_fields are static and reached by the
 * fuzz target, which compiles this file in (fuzz/fuzz_v2.c).
 */
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

#include "api/ratelimit.h"
#include "api/routes.h"
#include "hexutil.h"
#include "log.h"
#include "qkms_proto.h"
#include "qkms_proto2.h"
#include "service/certs.h"
#include "service/negotiate.h"
#include "service/session_metrics.h"
#include "service/sessions.h"

#define V2_BODY_MAX 8192
#define V2_INNER_MAX 6144
#define V2_CERT_MAX 4096

/* ---- the outer object ----------------------------------------------------- */

typedef struct {
    char device_id[QKP_MAX_ID + 1];
    int mode;
    bool suite_ok;
    /* modes 1, 2 */
    uint8_t inner[V2_INNER_MAX];
    size_t inner_len;
    uint8_t sig[QKP2_SIG_LEN];
    /* mode 3 */
    int key_index;
    uint8_t nonce[QKP_NONCE_LEN];
    uint8_t ct[QKP_MAX_PLAINTEXT + QKP_TAG_LEN];
    size_t ct_len;
} outer;

static bool only_fields(json_t *o, const char *const *names, const char **bad)
{
    const char *key;
    json_t *v;
    json_object_foreach(o, key, v) {
        bool known = false;
        for (int i = 0; names[i] && !known; i++)
            known = !strcmp(key, names[i]);
        if (!known) {
            *bad = key;
            return false;
        }
    }
    return true;
}

static const char *const outer_signed[] = {"v", "suite", "mode", "device_id", "req", "sig", NULL};
static const char *const outer_sealed[] = {"v",         "suite", "mode", "device_id",
                                           "key_index", "nonce", "ct",   NULL};

/* The outer object. -1 with rs the 400/413. An unknown suite is not an
 * error here (out->suite_ok false): the caller records the refusal once it
 * knows the nonce. */
static int parse_outer(http_request *rq, http_response *rs, outer *out)
{
    json_t *in, *v;
    const char *s, *bad = NULL;
    long n;
    int rc = -1;

    memset(out, 0, sizeof(*out));
    if (rq->body_len > V2_BODY_MAX) {
        http_error(rs, 413, "payload_too_large", "request body too large");
        return -1;
    }
    if (!(in = http_body_object(rq, rs)))
        return -1;
    v = json_object_get(in, "v");
    if (!json_is_integer(v) || json_integer_value(v) != QKP2_VERSION) {
        http_error(rs, 400, "malformed_request", "v must be 2");
        goto out;
    }
    v = json_object_get(in, "mode");
    if (!json_is_integer(v) || json_integer_value(v) < 1 || json_integer_value(v) > 3) {
        http_error(rs, 400, "malformed_request", "mode must be 1, 2 or 3");
        goto out;
    }
    out->mode = (int)json_integer_value(v);
    if (!only_fields(in, out->mode == 3 ? outer_sealed : outer_signed, &bad)) {
        http_error(rs, 400, "malformed_request", "unknown field '%.32s' for mode %d", bad,
                   out->mode);
        goto out;
    }
    s = json_string_value(json_object_get(in, "suite"));
    if (!s) {
        http_error(rs, 400, "malformed_request", "suite must be a string");
        goto out;
    }
    out->suite_ok = !strcmp(s, QKP2_SUITE);
    s = json_string_value(json_object_get(in, "device_id"));
    if (!qkp_id_valid(s)) {
        http_error(rs, 400, "malformed_request", "device_id is not a valid ID");
        goto out;
    }
    strcpy(out->device_id, s);
    if (out->mode == 3) {
        v = json_object_get(in, "key_index");
        if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > 255) {
            http_error(rs, 400, "malformed_request", "key_index must be an integer from 0 to 255");
            goto out;
        }
        out->key_index = (int)json_integer_value(v);
        s = json_string_value(json_object_get(in, "nonce"));
        if (!s || qkp_b64url_decode(s, strlen(s), out->nonce, sizeof(out->nonce)) != QKP_NONCE_LEN) {
            http_error(rs, 400, "malformed_request", "nonce must be 12 bytes in base64url");
            goto out;
        }
        s = json_string_value(json_object_get(in, "ct"));
        n = s ? qkp_b64url_decode(s, strlen(s), out->ct, sizeof(out->ct)) : -1;
        if (n < QKP_TAG_LEN + 1) {
            http_error(rs, 400, "malformed_request", "ct must be base64url, 17 to 2064 bytes");
            goto out;
        }
        out->ct_len = (size_t)n;
    } else {
        out->key_index = -1;
        s = json_string_value(json_object_get(in, "req"));
        n = s ? qkp_b64url_decode(s, strlen(s), out->inner, sizeof(out->inner)) : -1;
        if (n < 2) {
            http_error(rs, 400, "malformed_request", "req must be base64url, 2 to %d bytes",
                       V2_INNER_MAX);
            goto out;
        }
        out->inner_len = (size_t)n;
        s = json_string_value(json_object_get(in, "sig"));
        if (!s || qkp_b64url_decode(s, strlen(s), out->sig, sizeof(out->sig)) != QKP2_SIG_LEN) {
            http_error(rs, 400, "malformed_request", "sig must be 64 bytes in base64url");
            goto out;
        }
    }
    rc = 0;
out:
    json_decref(in);
    return rc;
}

/* ---- the inner request --------------------------------------------------------- */

typedef struct {
    json_t *obj;
    const char *session_id, *peer_id; /* peer_id NULL: the platform is the peer */
    bool all; /* end: every session of the device (session_id NULL) */
    char key_source;
    bool delivered, platform_peer;
    int64_t ts;
    bool has_ts;
    uint8_t nonce[QKP_NONCE_LEN];
    bool has_nonce;
    uint8_t pin[32], ka[32];
    uint8_t epk[QKP2_POINT_LEN];
    uint8_t cr[QKP2_CR_LEN];
    uint8_t cert[V2_CERT_MAX];
    size_t cert_len;
} inner_req;

static void inner_clear(inner_req *ir)
{
    json_decref(ir->obj);
    OPENSSL_cleanse(ir, sizeof(*ir));
}

/* What a refusal record needs from R before it is authenticated: the
 * nonce and ts, when they parse (modes 1, 2). */
static void inner_peek(inner_req *ir, json_t *obj)
{
    const char *s = json_string_value(json_object_get(obj, "nonce"));
    json_t *ts = json_object_get(obj, "ts");
    ir->has_nonce =
        s && qkp_b64url_decode(s, strlen(s), ir->nonce, sizeof(ir->nonce)) == QKP_NONCE_LEN;
    if (json_is_integer(ts)) {
        ir->ts = json_integer_value(ts);
        ir->has_ts = true;
    }
}

static bool hex32(json_t *v, uint8_t out[32])
{
    const char *s = json_string_value(v);
    return s && strlen(s) == 64 && qkms_hex_decode(s, 64, out, 32) == 32;
}

static const char *const inner_key_fields[] = {
    "op",   "device_id", "mode", "suite", "session_id", "peer_id", "peer_platform", "key_source",
    "delivery", "ts", "nonce", "pin", "epk", "ka", "cr", "cert", NULL};
static const char *const inner_end_fields[] = {"op",  "device_id", "mode", "suite", "session_id",
                                               "all", "ts",        "nonce", "pin",  "cert", NULL};

#define FAIL(...)                                                                                  \
    do {                                                                                           \
        snprintf(why, wl, __VA_ARGS__);                                                            \
        return -1;                                                                                 \
    } while (0)

/* R's identity fields (docs/protocol.md, the inner request table): no
 * unknown field, op the path's, device_id, mode and suite the outer
 * object's, the nonce (modes 1, 2) and the certificate (mode 1). Checked
 * before the signature in modes 1 and 2, which need them to verify it.
 * 0, or -1 with the message in why. */
static int inner_ident(inner_req *ir, const char *op, const outer *o, char *why, size_t wl)
{
    json_t *obj = ir->obj, *v;
    const char *s, *bad = NULL;
    long n;

    if (!only_fields(obj, !strcmp(op, "key") ? inner_key_fields : inner_end_fields, &bad))
        FAIL("unknown field '%.32s' in the inner request", bad);
    s = json_string_value(json_object_get(obj, "op"));
    if (!s || strcmp(s, op))
        FAIL("op must be \"%s\"", op);
    s = json_string_value(json_object_get(obj, "device_id"));
    if (!s || strcmp(s, o->device_id))
        FAIL("device_id must be the outer device_id");
    v = json_object_get(obj, "mode");
    if (!json_is_integer(v) || json_integer_value(v) != o->mode)
        FAIL("mode must be the outer mode");
    s = json_string_value(json_object_get(obj, "suite"));
    if (!s || strcmp(s, QKP2_SUITE))
        FAIL("suite must be the outer suite");
    inner_peek(ir, obj);
    if (o->mode == 3) {
        if (json_object_get(obj, "nonce"))
            FAIL("nonce belongs to the outer object in mode 3");
    } else if (!ir->has_nonce) {
        FAIL("nonce must be 12 bytes in base64url");
    }
    v = json_object_get(obj, "cert");
    if ((o->mode == 1) != (v != NULL))
        FAIL(o->mode == 1 ? "cert is required in mode 1" : "cert is only for mode 1");
    if (v) {
        s = json_string_value(v);
        n = s ? qkp_b64url_decode(s, strlen(s), ir->cert, sizeof(ir->cert)) : -1;
        if (n < 1)
            FAIL("cert must be a DER certificate in base64url, at most %d bytes", V2_CERT_MAX);
        ir->cert_len = (size_t)n;
    }
    return 0;
}

/* The rest of R, once authenticated (422 invalid_request). */
static int inner_fields(inner_req *ir, const char *op, const outer *o, char *why, size_t wl)
{
    json_t *obj = ir->obj, *v;
    const char *s;

    ir->session_id = json_string_value(json_object_get(obj, "session_id"));
    v = json_object_get(obj, "all");
    if (v) { /* end: every session of the device, named by none */
        if (!json_is_true(v) || json_object_get(obj, "session_id"))
            FAIL("all may only be true, and goes without session_id");
        ir->all = true;
    } else if (!qkp_id_valid(ir->session_id)) {
        FAIL("session_id is not a valid ID");
    }
    if (!ir->has_ts)
        FAIL("ts must be an integer");
    if (!hex32(json_object_get(obj, "pin"), ir->pin))
        FAIL("pin must be a SHA-256 in hex");
    if (strcmp(op, "key"))
        return 0;
    v = json_object_get(obj, "peer_platform");
    if (v && !json_is_true(v))
        FAIL("peer_platform may only be true");
    ir->platform_peer = v != NULL;
    ir->peer_id = json_string_value(json_object_get(obj, "peer_id"));
    if (ir->platform_peer) {
        if (json_object_get(obj, "peer_id") || json_object_get(obj, "delivery"))
            FAIL("peer_platform goes without peer_id and delivery");
    } else if (!qkp_id_valid(ir->peer_id) || !strcmp(ir->peer_id, o->device_id)) {
        FAIL("peer_id must be another device's ID, or peer_platform true");
    }
    s = json_string_value(json_object_get(obj, "key_source"));
    if (!s || strlen(s) != 1 || !strchr("abc", s[0]))
        FAIL("key_source must be \"a\", \"b\" or \"c\"");
    ir->key_source = s[0];
    v = json_object_get(obj, "delivery");
    if (v && !(json_is_string(v) && !strcmp(json_string_value(v), "delivered")))
        FAIL("delivery may only be \"delivered\"");
    ir->delivered = v != NULL;
    s = json_string_value(json_object_get(obj, "epk"));
    if (!s || qkp_b64url_decode(s, strlen(s), ir->epk, sizeof(ir->epk)) != QKP2_POINT_LEN)
        FAIL("epk must be an uncompressed P-256 point (65 bytes) in base64url");
    {
        EVP_PKEY *k = qkp2_point_key(ir->epk, sizeof(ir->epk));
        if (!k)
            FAIL("epk is not a point on P-256");
        EVP_PKEY_free(k);
    }
    if (ir->key_source == 'c') {
        if (json_object_get(obj, "ka") || json_object_get(obj, "cr"))
            FAIL("ka and cr are only for key sources a and b");
        return 0;
    }
    if (!hex32(json_object_get(obj, "ka"), ir->ka))
        FAIL("ka must be a SHA-256 in hex (key sources a and b)");
    s = json_string_value(json_object_get(obj, "cr"));
    if (!s || qkp_b64url_decode(s, strlen(s), ir->cr, sizeof(ir->cr)) != QKP2_CR_LEN)
        FAIL("cr must be 48 bytes in base64url (key sources a and b)");
    return 0;
}
#undef FAIL

/* ---- one request ------------------------------------------------------------------ */

typedef struct {
    outer o;
    inner_req ir;
    v2_request vr;
    v2_auth a;
    const platform_key *signer;
    log_ctx lc;
} v2_call;

static void call_clear(v2_call *c)
{
    inner_clear(&c->ir);
    v2_auth_clear(&c->a);
    OPENSSL_cleanse(&c->o, sizeof(c->o));
}

static void refuse_metric(http_request *rq, session_refusal why)
{
    session_metrics_refused(rq->kms->svc.smetrics, why);
}

/* Parse, authenticate and check a v2 request up to its signer. 0, or -1
 * with rs answered. */
static int open_request(http_request *rq, http_response *rs, const char *op, v2_call *c,
                        uint64_t *t0)
{
    qk_svc *s = &rq->kms->svc;
    json_error_t je;
    char why[160];
    qk_err e;
    const uint8_t *rbytes;
    size_t rlen;

    c->lc = http_log_ctx(rq);
    if (parse_outer(rq, rs, &c->o) != 0)
        return -1;
    c->vr = (v2_request){.op = op, .device_id = c->o.device_id, .mode = c->o.mode,
                         .key_index = c->o.key_index, .t0 = t0};
    if (c->o.mode != 3) {
        c->ir.obj = json_loadb((const char *)c->o.inner, c->o.inner_len, JSON_REJECT_DUPLICATES, &je);
        if (!json_is_object(c->ir.obj)) {
            http_error(rs, 400, "malformed_request", "req is not a JSON object");
            return -1;
        }
        inner_peek(&c->ir, c->ir.obj);
        c->vr.nonce = c->ir.has_nonce ? c->ir.nonce : NULL;
        c->vr.ts = c->ir.ts;
        c->vr.has_ts = c->ir.has_ts;
    } else {
        c->vr.nonce = c->o.nonce;
    }
    if (!c->o.suite_ok) {
        if (negotiate_refused(s, &c->lc, &c->vr, "unsupported_suite", false, NULL)) {
            http_error(rs, 401, "unauthenticated", "request could not be authenticated");
            return -1;
        }
        refuse_metric(rq, SESSION_REFUSE_INVALID);
        http_error(rs, 400, "unsupported_suite", "the only suite is %s", QKP2_SUITE);
        return -1;
    }
    if (rq->cert.device_id[0] && strcmp(rq->cert.device_id, c->o.device_id)) {
        log_ctx lc = c->lc;
        lc.principal = rq->cert.device_id;
        certs_mismatch(s, &rq->cert, c->o.device_id, &lc);
        refuse_metric(rq, SESSION_REFUSE_AUTH);
        http_error(rs, 401, "certificate_mismatch",
                   "the request names another device than its client certificate");
        return -1;
    }
    if (c->o.mode != 3) {
        /* Before the signature is checked R is only parsed: its identity
         * fields must agree with the outer object, and mode 1 must carry
         * the certificate to check it with. */
        if (inner_ident(&c->ir, op, &c->o, why, sizeof(why)) != 0) {
            http_error(rs, 400, "malformed_request", "%s", why);
            return -1;
        }
        c->vr.inner = c->o.inner;
        c->vr.inner_len = c->o.inner_len;
        c->vr.sig = c->o.sig;
        c->vr.cert = c->ir.cert_len ? c->ir.cert : NULL;
        c->vr.cert_len = c->ir.cert_len;
    } else {
        c->vr.ct = c->o.ct;
        c->vr.ct_len = c->o.ct_len;
    }
    if (negotiate_authenticate(s, &c->lc, &c->vr, &c->a, &e) != QK_OK) {
        http_fail(rs, &e);
        return -1;
    }
    if (c->o.mode == 3) {
        rbytes = c->a.da.inner;
        rlen = c->a.da.inner_len;
        c->ir.obj = json_loadb((const char *)rbytes, rlen, JSON_REJECT_DUPLICATES, &je);
        if (!json_is_object(c->ir.obj) || inner_ident(&c->ir, op, &c->o, why, sizeof(why)) != 0) {
            http_error(rs, 422, "invalid_request", "%s",
                       json_is_object(c->ir.obj) ? why : "the inner request is not a JSON object");
            refuse_metric(rq, SESSION_REFUSE_INVALID);
            return -1;
        }
        c->vr.ts = c->ir.ts;
        c->vr.has_ts = c->ir.has_ts;
    }
    if (inner_fields(&c->ir, op, &c->o, why, sizeof(why)) != 0) {
        http_error(rs, 422, "invalid_request", "%s", why);
        refuse_metric(rq, SESSION_REFUSE_INVALID);
        return -1;
    }
    if (negotiate_platform_key(s, &c->lc, &c->vr, PLATFORM_SIGN, c->ir.pin, &c->signer, &e) !=
        QK_OK) {
        http_fail(rs, &e);
        return -1;
    }
    /* The answer is signed after the session's transaction: make sure now
     * that it can be (docs/protocol.md, "A lost answer"). */
    if (platform_keys_ready(s->pkeys, c->signer) != CKR_OK) {
        http_error(rs, 503, "token_unavailable", "key token unavailable, retry later");
        rs->retry_after = 1;
        return -1;
    }
    return 0;
}

static json_t *b64_json(const uint8_t *b, size_t n)
{
    char *s = malloc(QKP_B64URL_LEN(n));
    json_t *j;
    if (!s)
        return NULL;
    qkp_b64url_encode(b, n, s);
    j = json_string(s);
    free(s);
    return j;
}

/* Sign P and answer {"v":2,"resp":b64u(P),"sig":b64u(sig)}. P is stolen. */
static void answer(http_request *rq, http_response *rs, v2_call *c, json_t *p)
{
    char *text = p ? json_dumps(p, JSON_COMPACT) : NULL;
    uint8_t sig[QKP2_SIG_LEN];
    qk_err e;

    json_decref(p);
    if (!text) {
        http_error(rs, 500, "internal", "internal error (see kmsd log)");
        return;
    }
    if (negotiate_sign(&rq->kms->svc, c->signer, (const uint8_t *)text, strlen(text), sig, &e) !=
        QK_OK)
        http_fail(rs, &e);
    else
        http_json(rs, 200,
                  json_pack("{s:i,s:o,s:o}", "v", QKP2_VERSION, "resp",
                            b64_json((const uint8_t *)text, strlen(text)), "sig",
                            b64_json(sig, sizeof(sig))));
    free(text);
}

static qk_principal principal(const v2_call *c)
{
    qk_principal p = {.kind = QK_PRINCIPAL_DEVICE, .name = c->a.da.device_id, .log = c->lc};
    p.log.principal = c->a.da.device_id;
    return p;
}

static void answer_failure(http_request *rq, http_response *rs, v2_call *c, const qk_err *e)
{
    if (c->a.da.replayed && rq->kms->rl[RL_DEVICE])
        ratelimit_refund(rq->kms->rl[RL_DEVICE], c->o.device_id, ratelimit_now_ns());
    http_fail(rs, e);
}

void h_session_key_v2(http_request *rq, http_response *rs)
{
    qk_svc *s = &rq->kms->svc;
    v2_call c;
    session_grant g;
    session_ask ask = {0};
    qk_principal who;
    qk_err e;
    uint8_t cr[QKP2_RANDOM_LEN], epk_s[QKP2_POINT_LEN], ct[QKP2_RANDOM_LEN + QKP_TAG_LEN];
    const uint8_t *payload;
    size_t plen;
    char h_b64[QKP_B64URL_LEN(QKP2_HASH_LEN)];
    uint64_t t0 = session_clock_ns();

    memset(&c, 0, sizeof(c));
    memset(&g, 0, sizeof(g));
    if (open_request(rq, rs, "key", &c, &t0) != 0)
        goto out;
    session_metrics_stage(s->smetrics, SESSION_STAGE_OPEN, &t0);
    if (c.ir.key_source != 'c') {
        const platform_key *ka;
        if (negotiate_platform_key(s, &c.lc, &c.vr, PLATFORM_AGREE, c.ir.ka, &ka, &e) != QK_OK ||
            negotiate_open_cr(s, &c.lc, &c.vr, ka, c.ir.epk, c.ir.cr, cr, &e) != QK_OK) {
            http_fail(rs, &e);
            goto out;
        }
        ask.cr = cr;
        ask.h = c.a.h;
    }
    if (!http_rate_limit(rq, rs, RL_DEVICE, c.o.device_id))
        goto out;
    ask.session_id = c.ir.session_id;
    ask.peer_id = c.ir.peer_id;
    ask.delivered = c.ir.delivered;
    ask.platform_peer = c.ir.platform_peer;
    ask.ts = c.ir.ts;
    ask.key_source = c.ir.key_source;
    who = principal(&c);
    if (sessions_issue(s, &who, &c.a.da, &ask, &g, &e) != QK_OK) {
        answer_failure(rq, rs, &c, &e);
        goto out;
    }
    /* The payload by how this answer gives the key (sessions.h). */
    payload = g.key_source == 'a' ? g.sr : g.key_source == 'b' ? NULL : g.key;
    plen = g.key_source == 'a' ? QKP2_RANDOM_LEN : g.key_source == 'b' ? 0 : g.key_len;
    if (plen > QKP2_RANDOM_LEN ||
        negotiate_seal(&c.a, c.ir.epk, g.key_id, payload, plen, epk_s, ct, &e) != QK_OK) {
        http_error(rs, 500, "internal", "internal error (see kmsd log)");
        goto out;
    }
    qkp_b64url_encode(c.a.h, QKP2_HASH_LEN, h_b64);
    answer(rq, rs, &c,
           json_pack("{s:s,s:s,s:s,s:s,s:s,s:s,s:i,s:I,s:s,s:s%,s:o,s:o}", "op", "key",
                     "device_id", c.o.device_id, "session_id", c.ir.session_id, "request", h_b64,
                     "signer", platform_key_sha_hex(c.signer), "key_id", g.key_id, "key_bits",
                     g.key_bits, "expires_at", (json_int_t)g.expires_at, "delivery", g.delivery,
                     "key_source", &g.key_source, (size_t)1, "epk",
                     b64_json(epk_s, sizeof(epk_s)), "ct", b64_json(ct, plen + QKP_TAG_LEN)));
    if (rs->status == 200)
        sessions_delivered(s, &who, &g);
    session_metrics_stage(s->smetrics, SESSION_STAGE_DELIVER, &t0);
out:
    OPENSSL_cleanse(cr, sizeof(cr));
    OPENSSL_cleanse(ct, sizeof(ct));
    session_grant_clear(&g);
    call_clear(&c);
}

void h_session_end_v2(http_request *rq, http_response *rs)
{
    qk_svc *s = &rq->kms->svc;
    v2_call c;
    qk_principal who;
    qk_err e;
    char h_b64[QKP_B64URL_LEN(QKP2_HASH_LEN)];
    uint64_t t0 = session_clock_ns();

    memset(&c, 0, sizeof(c));
    if (open_request(rq, rs, "end", &c, &t0) != 0)
        goto out;
    if (!http_rate_limit(rq, rs, RL_DEVICE, c.o.device_id))
        goto out;
    who = principal(&c);
    if (c.ir.all) {
        int ended = 0, streams = 0;
        if (sessions_end_all(s, &who, &c.a.da, c.ir.ts, &ended, &streams, &e) != QK_OK) {
            answer_failure(rq, rs, &c, &e);
            goto out;
        }
        qkp_b64url_encode(c.a.h, QKP2_HASH_LEN, h_b64);
        answer(rq, rs, &c,
               json_pack("{s:s,s:s,s:b,s:s,s:s,s:b,s:i,s:i}", "op", "end", "device_id",
                         c.o.device_id, "all", 1, "request", h_b64, "signer",
                         platform_key_sha_hex(c.signer), "ended", 1, "sessions_ended", ended,
                         "streams_ended", streams));
        goto out;
    }
    if (sessions_end(s, &who, &c.a.da, c.ir.session_id, c.ir.ts, &e) != QK_OK) {
        answer_failure(rq, rs, &c, &e);
        goto out;
    }
    qkp_b64url_encode(c.a.h, QKP2_HASH_LEN, h_b64);
    answer(rq, rs, &c,
           json_pack("{s:s,s:s,s:s,s:s,s:s,s:b}", "op", "end", "device_id", c.o.device_id,
                     "session_id", c.ir.session_id, "request", h_b64, "signer",
                     platform_key_sha_hex(c.signer), "ended", 1));
out:
    call_clear(&c);
}

/* GET /v1/platform/certificates (no authentication). */
void h_platform_certs(http_request *rq, http_response *rs)
{
    json_t *out;
    qk_err e;
    if (platform_keys_json(rq->kms->svc.pkeys, &out, &e) != QK_OK) {
        http_fail(rs, &e);
        return;
    }
    http_json(rs, 200, out);
}
