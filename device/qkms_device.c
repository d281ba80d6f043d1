/* qkms_device — fill documents, request building, response verification. */
#include "qkms_device.h"
#include "qkd_json.h"

#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <openssl/crypto.h>
#include <openssl/rand.h>

#include "hexutil.h"
#include "qbuf.h"
#include "kcv.h"

#define FILL_FORMAT "qkms-fill/1"

static int fail(int rc, char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int fail(int rc, char *err, size_t errlen, const char *fmt, ...)
{
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return rc;
}

/* ---- small helpers -------------------------------------------------------- */

/* Exactly 2*len hex digits into len bytes; 0 or -1. */
static int hex_exact(const char *in, size_t in_len, uint8_t *out, size_t len)
{
    return in_len == 2 * len && qkms_hex_decode(in, in_len, out, len) == (long)len ? 0 : -1;
}

/* A string member without embedded NUL, or NULL. jansson refuses "\u0000"
 * unless JSON_ALLOW_NUL is passed; checking here keeps C string comparisons
 * sound whatever the flags. */
static const char *get_str(const json_t *obj, const char *name)
{
    const json_t *v = json_object_get(obj, name);
    const char *s = json_string_value(v);
    return s && strlen(s) == json_string_length(v) ? s : NULL;
}

void qkd_json_wipe(json_t *v)
{
    size_t i;
    const char *k;
    json_t *item;

    if (json_is_string(v)) {
        OPENSSL_cleanse((char *)json_string_value(v), json_string_length(v));
    } else if (json_is_array(v)) {
        json_array_foreach(v, i, item)
            qkd_json_wipe(item);
    } else if (json_is_object(v)) {
        json_object_foreach(v, k, item)
            qkd_json_wipe(item);
    }
}

/* Writers append to a qbuf (common/qbuf.h: bounded, wiped on free) and
 * OR their results, so a request is checked for overflow once at the end. */
static int qb_i64(qbuf *b, int64_t v) { return qbuf_putf(b, "%lld", (long long)v); }

/* A JSON string literal of an ID (qkd_json_id's rule). */
static int qb_id(qbuf *b, const char *id)
{
    int r = qbuf_put_u8(b, '"');
    for (const char *p = id; *p && r == QBUF_OK; p++)
        r = *p == '"' ? qbuf_put(b, "\\\"", 2) : qbuf_put_u8(b, (uint8_t)*p);
    return r != QBUF_OK ? r : qbuf_put_u8(b, '"');
}

/* Copy b (and its NUL) into out of cap bytes; its length, or -1. */
static int qb_copy_out(const qbuf *b, char *out, size_t cap)
{
    if (qbuf_len(b) >= cap)
        return -1;
    memcpy(out, qbuf_str(b), qbuf_len(b) + 1);
    return (int)qbuf_len(b);
}

int qkd_json_id(const char *id, char *out, size_t cap)
{
    qbuf *b;
    int n = -1;
    if (!qkp_id_valid(id) || cap == 0)
        return -1;
    out[0] = 0;
    if (!(b = qbuf_new(cap, 0)))
        return -1;
    if (qb_id(b, id) == QBUF_OK)
        n = qb_copy_out(b, out, cap);
    qbuf_free(b);
    return n;
}

/* ---- time ---------------------------------------------------------------- */

/* Days from 1970-01-01 to y-m-d in the proleptic Gregorian calendar
 * (H. Hinnant's days_from_civil): no timegm, no TZ environment. */
static int64_t days_from_civil(int64_t y, int m, int d)
{
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    int64_t yoe = y - era * 400;
    int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

static int digits(const char *s, int n, int *out)
{
    int v = 0;
    for (int i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (s[i] - '0');
    }
    *out = v;
    return 0;
}

/* RFC 3339: YYYY-MM-DDTHH:MM:SS[.frac](Z|+HH:MM|-HH:MM). Fractions are
 * dropped (validity is checked to the second). */
static int parse_rfc3339(const char *s, int64_t *out)
{
    static const int mdays[] = {31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    int y, mo, d, h, mi, se, oh = 0, om = 0, sign = 0;
    size_t n = strlen(s), i = 19;

    if (n < 20 || digits(s, 4, &y) || s[4] != '-' || digits(s + 5, 2, &mo) || s[7] != '-' ||
        digits(s + 8, 2, &d) || (s[10] != 'T' && s[10] != 't') || digits(s + 11, 2, &h) ||
        s[13] != ':' || digits(s + 14, 2, &mi) || s[16] != ':' || digits(s + 17, 2, &se))
        return -1;
    if (s[i] == '.') {
        size_t start = ++i;
        while (s[i] >= '0' && s[i] <= '9')
            i++;
        if (i == start)
            return -1;
    }
    if ((s[i] == 'Z' || s[i] == 'z') && s[i + 1] == 0) {
        sign = 0;
    } else if ((s[i] == '+' || s[i] == '-') && n - i == 6 && !digits(s + i + 1, 2, &oh) &&
               s[i + 3] == ':' && !digits(s + i + 4, 2, &om)) {
        sign = s[i] == '+' ? 1 : -1;
    } else {
        return -1;
    }
    bool leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    if (mo < 1 || mo > 12 || d < 1 || d > mdays[mo - 1] || (mo == 2 && d == 29 && !leap) ||
        h > 23 || mi > 59 || se > 60 || oh > 23 || om > 59)
        return -1;
    if (se == 60) /* a leap second: the POSIX clock repeats :59 */
        se = 59;
    *out = days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + se -
           sign * (oh * 3600 + om * 60);
    return 0;
}

/* A validity bound: absent (dflt), RFC 3339 text or integer Unix seconds. */
static int get_time(const json_t *k, const char *name, int64_t dflt, int64_t *out)
{
    const json_t *v = json_object_get(k, name);
    if (!v || json_is_null(v)) {
        *out = dflt;
        return 0;
    }
    if (json_is_integer(v)) {
        *out = json_integer_value(v);
        return 0;
    }
    const char *s = get_str(k, name);
    return s ? parse_rfc3339(s, out) : -1;
}

/* ---- fill documents ------------------------------------------------------ */

/* The check value of docs/devices.md (kcv.h), compared in constant time. */
static int kcv_matches(const char *alg, const uint8_t *key, size_t len,
                       const uint8_t want[QKMS_KCV_LEN], bool *match)
{
    uint8_t mine[QKMS_KCV_LEN];
    if (qkms_kcv_compute_alg(alg, key, len, mine) != 0)
        return -1;
    *match = CRYPTO_memcmp(mine, want, QKMS_KCV_LEN) == 0;
    OPENSSL_cleanse(mine, sizeof(mine));
    return 0;
}

/* Fills slot from keys[i]; slot->key is allocated here (freed by the caller
 * through qkd_device_free, also on failure). */
static int load_key(const json_t *k, size_t i, qkd_key *slot, char *err, size_t errlen)
{
    const json_t *jidx = json_object_get(k, "index");
    const char *alg = get_str(k, "algorithm"), *hex = get_str(k, "key"), *kcv = get_str(k, "kcv");
    uint8_t want[QKMS_KCV_LEN];
    bool match = false;

    if (!json_is_object(k))
        return fail(QKD_ERR_INPUT, err, errlen, "keys[%zu] is not an object", i);
    if (!json_is_integer(jidx) || json_integer_value(jidx) < 0 || json_integer_value(jidx) > 255)
        return fail(QKD_ERR_INPUT, err, errlen, "keys[%zu]: index must be an integer 0-255", i);
    slot->index = (int)json_integer_value(jidx);
    if (alg && strcmp(alg, "AES-128") == 0)
        slot->len = 16;
    else if (alg && strcmp(alg, "AES-256") == 0)
        slot->len = 32;
    else if (alg && strcmp(alg, "SM4-128") == 0)
        slot->len = 16;
    else
        return fail(QKD_ERR_INPUT, err, errlen,
                    "key %d: algorithm must be AES-128, AES-256 or SM4-128", slot->index);
    slot->suite = qkp_suite_of(alg);
    if (!(slot->key = OPENSSL_secure_malloc(slot->len)))
        return fail(QKD_ERR_INTERNAL, err, errlen, "out of secure memory");
    /* Never quote the key text in a message. */
    if (!hex || hex_exact(hex, strlen(hex), slot->key, slot->len) != 0)
        return fail(QKD_ERR_INPUT, err, errlen, "key %d: key must be %zu hex digits", slot->index,
                    2 * slot->len);
    if (kcv) {
        if (hex_exact(kcv, strlen(kcv), want, QKMS_KCV_LEN) != 0)
            return fail(QKD_ERR_INPUT, err, errlen, "key %d: kcv must be %d hex digits",
                        slot->index, 2 * QKMS_KCV_LEN);
        if (kcv_matches(alg, slot->key, slot->len, want, &match) != 0)
            return fail(QKD_ERR_INTERNAL, err, errlen, "cannot compute a key check value (CMAC)");
        if (!match)
            return fail(QKD_ERR_INPUT, err, errlen, "key %d: check value does not match the key",
                        slot->index);
    }
    /* "purpose" (docs/gateways.md): absent in older documents (generic). */
    if (json_object_get(k, "purpose")) {
        const char *p = get_str(k, "purpose");
        if (!p || (strcmp(p, "access") && strcmp(p, "local") && strcmp(p, "generic")))
            return fail(QKD_ERR_INPUT, err, errlen,
                        "key %d: purpose must be access, local or generic", slot->index);
        slot->local = !strcmp(p, "local");
    }
    if (get_time(k, "not_before", INT64_MIN, &slot->not_before) != 0 ||
        get_time(k, "not_after", INT64_MAX, &slot->not_after) != 0)
        return fail(QKD_ERR_INPUT, err, errlen,
                    "key %d: not_before/not_after must be RFC 3339 times", slot->index);
    return QKD_OK;
}

static int by_index(const void *a, const void *b)
{
    return ((const qkd_key *)a)->index - ((const qkd_key *)b)->index;
}

int qkd_device_load(qkd_device **out, const char *text, size_t len, char *err, size_t errlen)
{
    json_error_t jerr;
    json_t *doc = NULL;
    const json_t *keys;
    const char *format, *id;
    qkd_device *d = NULL;
    int rc = QKD_ERR_INPUT;

    *out = NULL;
    doc = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!json_is_object(doc)) {
        /* Position only: jansson's text can quote a piece of a key. */
        rc = fail(QKD_ERR_INPUT, err, errlen,
                  "fill document is not a JSON object (line %d, column %d)", jerr.line,
                  jerr.column);
        goto cleanup;
    }
    format = get_str(doc, "format");
    if (json_object_get(doc, "format") && (!format || strcmp(format, FILL_FORMAT) != 0)) {
        rc = fail(QKD_ERR_INPUT, err, errlen, "fill document format is not " FILL_FORMAT);
        goto cleanup;
    }
    id = get_str(doc, "device_id");
    if (!qkp_id_valid(id)) {
        rc = fail(QKD_ERR_INPUT, err, errlen, "fill document: device_id missing or not a valid ID");
        goto cleanup;
    }
    keys = json_object_get(doc, "keys");
    if (!json_is_array(keys) || json_array_size(keys) == 0 ||
        json_array_size(keys) > QKD_MAX_KEYS) {
        rc = fail(QKD_ERR_INPUT, err, errlen, "fill document: keys must be an array of 1-%d keys",
                  QKD_MAX_KEYS);
        goto cleanup;
    }
    if (!(d = calloc(1, sizeof(*d))) ||
        !(d->keys = calloc(json_array_size(keys), sizeof(qkd_key)))) {
        rc = fail(QKD_ERR_INTERNAL, err, errlen, "out of memory");
        goto cleanup;
    }
    strcpy(d->device_id, id); /* qkp_id_valid: at most QKP_MAX_ID */
    for (size_t i = 0; i < json_array_size(keys); i++) {
        d->nkeys = i + 1; /* so that qkd_device_free sees this slot's key */
        if ((rc = load_key(json_array_get(keys, i), i, &d->keys[i], err, errlen)) != QKD_OK)
            goto cleanup;
    }
    qsort(d->keys, d->nkeys, sizeof(qkd_key), by_index);
    for (size_t i = 1; i < d->nkeys; i++) {
        if (d->keys[i].index == d->keys[i - 1].index) {
            rc = fail(QKD_ERR_INPUT, err, errlen, "fill document: key index %d appears twice",
                      d->keys[i].index);
            goto cleanup;
        }
    }
    *out = d;
    d = NULL;
    rc = QKD_OK;

cleanup:
    qkd_device_free(d);
    qkd_json_wipe(doc);
    json_decref(doc);
    return rc;
}

int qkd_device_new(qkd_device **out, const char *device_id, char *err, size_t errlen)
{
    *out = NULL;
    if (!qkp_id_valid(device_id))
        return fail(QKD_ERR_INPUT, err, errlen, "device_id is not a valid ID");
    if (!(*out = calloc(1, sizeof(**out))))
        return fail(QKD_ERR_INTERNAL, err, errlen, "out of memory");
    strcpy((*out)->device_id, device_id); /* qkp_id_valid: at most QKP_MAX_ID */
    return QKD_OK;
}

int qkd_device_add_key(qkd_device *d, int index, const char *algorithm, const uint8_t *key,
                       size_t len, char *err, size_t errlen)
{
    qkd_key *keys, *slot;
    size_t at = 0;
    int suite = algorithm ? qkp_suite_of(algorithm) : -1;

    if (index < 0 || index > 255 || suite < 0 ||
        len != (strcmp(algorithm, "AES-256") == 0 ? 32u : 16u) || !key)
        return fail(QKD_ERR_INPUT, err, errlen, "key %d: bad index, algorithm or length", index);
    if (qkd_device_key(d, index))
        return fail(QKD_ERR_INPUT, err, errlen, "key index %d appears twice", index);
    if (d->nkeys >= QKD_MAX_KEYS ||
        !(keys = realloc(d->keys, (d->nkeys + 1) * sizeof(qkd_key))))
        return fail(QKD_ERR_INTERNAL, err, errlen, "out of memory");
    d->keys = keys;
    while (at < d->nkeys && d->keys[at].index < index) /* kept sorted by index */
        at++;
    memmove(&d->keys[at + 1], &d->keys[at], (d->nkeys - at) * sizeof(qkd_key));
    slot = &d->keys[at];
    memset(slot, 0, sizeof(*slot));
    if (!(slot->key = OPENSSL_secure_malloc(len))) {
        memmove(&d->keys[at], &d->keys[at + 1], (d->nkeys - at) * sizeof(qkd_key));
        return fail(QKD_ERR_INTERNAL, err, errlen, "out of secure memory");
    }
    memcpy(slot->key, key, len);
    slot->index = index;
    slot->len = len;
    slot->suite = suite;
    slot->not_before = INT64_MIN;
    slot->not_after = INT64_MAX;
    d->nkeys++;
    return QKD_OK;
}

void qkd_device_free(qkd_device *d)
{
    if (!d)
        return;
    for (size_t i = 0; d->keys && i < d->nkeys; i++) {
        if (d->keys[i].key)
            OPENSSL_secure_clear_free(d->keys[i].key, d->keys[i].len);
    }
    free(d->keys);
    OPENSSL_cleanse(d, sizeof(*d));
    free(d);
}

const qkd_key *qkd_device_key(const qkd_device *d, int index)
{
    for (size_t i = 0; d && i < d->nkeys; i++) {
        if (d->keys[i].index == index)
            return &d->keys[i];
    }
    return NULL;
}

int qkd_device_default_index(const qkd_device *d, int64_t now)
{
    /* keys are sorted by index: scan down from the highest. */
    for (size_t i = d ? d->nkeys : 0; i > 0; i--) {
        const qkd_key *k = &d->keys[i - 1];
        if (!k->local && k->not_before <= now && now < k->not_after)
            return k->index;
    }
    return -1;
}

/* ---- requests ------------------------------------------------------------ */

/* The envelope of r: the inner request in sealed under key k (index
 * key_index of d) with r's nonce, the AAD naming opname; r->body. */
static int seal_envelope(qkd_request *r, const qkd_device *d, const qkd_key *k, int key_index,
                         const char *opname, const qbuf *in, char *err, size_t errlen)
{
    char aad[QKP_MAX_AAD];
    uint8_t ct[QKP_MAX_PLAINTEXT + QKP_TAG_LEN];
    char ct_b64[QKP_B64URL_LEN(sizeof(ct))];
    qbuf *body = qbuf_new(sizeof(r->body), 0);
    int aad_len, w, rc = QKD_ERR_INTERNAL;

    if (!body) {
        rc = fail(QKD_ERR_INTERNAL, err, errlen, "out of memory");
        goto cleanup;
    }
    aad_len = qkp_request_aad(opname, d->device_id, key_index, aad, sizeof(aad));
    if (aad_len < 0) {
        rc = fail(QKD_ERR_INTERNAL, err, errlen, "request does not fit its buffers");
        goto cleanup;
    }
    if (qkp_seal_suite(k->suite, k->key, k->len, r->nonce, aad, (size_t)aad_len, qbuf_ptr(in),
                       qbuf_len(in),
                 ct) != 0) {
        rc = fail(QKD_ERR_INTERNAL, err, errlen, "sealing the request failed");
        goto cleanup;
    }
    qkp_b64url_encode(ct, qbuf_len(in) + QKP_TAG_LEN, ct_b64);

    w = qbuf_put_str(body, "{\"v\":1,\"device_id\":") | qb_id(body, d->device_id);
    w |= qbuf_put_str(body, ",\"key_index\":") | qb_i64(body, key_index);
    w |= qbuf_put_str(body, ",\"nonce\":\"") | qbuf_put_str(body, r->nonce_b64);
    w |= qbuf_put_str(body, "\",\"ct\":\"") | qbuf_put_str(body, ct_b64);
    w |= qbuf_put_str(body, "\"}");
    if (w != QBUF_OK || qb_copy_out(body, r->body, sizeof(r->body)) < 0) {
        rc = fail(QKD_ERR_INTERNAL, err, errlen, "request body too large");
        goto cleanup;
    }
    r->body_len = qbuf_len(body);
    rc = QKD_OK;

cleanup:
    qbuf_free(body);
    return rc;
}

static const char *const op_names[] = {"key", "end", "stream", "stream_end"};
static const char *const op_paths[] = {QKD_PATH_KEY, QKD_PATH_END, QKD_PATH_STREAM,
                                       QKD_PATH_STREAM_END};

/* Every request: op on session_id (for the stream ops the stream ID; NULL
 * for an end of all sessions, or a stream request that opens or joins). */
static int build(qkd_request *r, qkd_op op, const qkd_device *d, int key_index,
                 const char *session_id, const char *peer_id, bool delivered, int epoch,
                 const char *direction, int64_t seq, int64_t ts,
                 const uint8_t nonce[QKP_NONCE_LEN], char *err, size_t errlen)
{
    const char *opname = op_names[op];
    const qkd_key *k = qkd_device_key(d, key_index);
    bool stream = op == QKD_OP_STREAM || op == QKD_OP_STREAM_END;
    /* Inner plaintext at most ~600 bytes here (two escaped IDs); the
     * protocol's limit is QKP_MAX_PLAINTEXT. */
    qbuf *in = qbuf_new(QKP_MAX_PLAINTEXT, QBUF_SECURE);
    int w, rc = QKD_ERR_INPUT;

    memset(r, 0, sizeof(*r));
    if (!in) {
        rc = fail(QKD_ERR_INTERNAL, err, errlen, "out of memory");
        goto cleanup;
    }
    if (!d || !k) {
        rc = fail(QKD_ERR_INPUT, err, errlen, "the device has no key with index %d", key_index);
        goto cleanup;
    }
    if (k->local) {
        /* The platform refuses it (and audits the attempt). */
        rc = fail(QKD_ERR_INPUT, err, errlen,
                  "key %d is a local key: for the gateway's local network only", key_index);
        goto cleanup;
    }
    if ((session_id || (op != QKD_OP_END && op != QKD_OP_STREAM)) && !qkp_id_valid(session_id)) {
        rc = fail(QKD_ERR_INPUT, err, errlen, stream ? "stream ID is not a valid ID"
                                                     : "session ID is not a valid ID");
        goto cleanup;
    }
    if ((op == QKD_OP_KEY || op == QKD_OP_STREAM) &&
        (!qkp_id_valid(peer_id) || !strcmp(peer_id, d->device_id))) {
        rc = fail(QKD_ERR_INPUT, err, errlen, "peer ID is not another device's valid ID");
        goto cleanup;
    }
    if (ts < 0 || (op == QKD_OP_STREAM && seq < 0)) {
        rc = fail(QKD_ERR_INPUT, err, errlen, "timestamp and seq must not be negative");
        goto cleanup;
    }
    if ((epoch >= 0 || direction) &&
        (op != QKD_OP_KEY || delivered || epoch > QKP_MAX_EPOCH ||
         (direction && strcmp(direction, "a2b") && strcmp(direction, "b2a")))) {
        rc = fail(QKD_ERR_INPUT, err, errlen,
                  "epoch 0-%d and direction a2b or b2a, for a key request in session mode",
                  QKP_MAX_EPOCH);
        goto cleanup;
    }

    r->op = op;
    if (epoch >= 0 || direction) { /* one of the session's other keys */
        r->ext = true;
        r->epoch = epoch >= 0 ? epoch : 0;
        snprintf(r->direction, sizeof(r->direction), "%s", direction ? direction : "");
    }
    r->path = op_paths[op];
    strcpy(r->device_id, d->device_id);
    r->key_index = key_index;
    r->all = op == QKD_OP_END && !session_id; /* an end of all the device's sessions */
    r->seq = op == QKD_OP_STREAM ? seq : 0;
    if (session_id)
        strcpy(r->session_id, session_id);
    r->ts = ts;
    if (nonce) {
#ifdef QKMS_TESTING
        memcpy(r->nonce, nonce, QKP_NONCE_LEN);
#else
        /* A caller-chosen nonce can repeat under the device key, which breaks
         * AES-GCM: only test builds (the vectors) may fix it. */
        rc = fail(QKD_ERR_INPUT, err, errlen,
                  "a fixed request nonce is accepted only in test builds (QKMS_TESTING)");
        goto cleanup;
#endif
    } else if (RAND_bytes(r->nonce, QKP_NONCE_LEN) != 1) {
        rc = fail(QKD_ERR_INTERNAL, err, errlen, "no randomness for the request nonce");
        goto cleanup;
    }
    qkp_b64url_encode(r->nonce, QKP_NONCE_LEN, r->nonce_b64);

    /* The canonical inner request: fixed field order, no spaces. */
    if (stream) {
        w = qbuf_put_str(in, "{");
        if (session_id)
            w |= qbuf_put_str(in, "\"stream_id\":") | qb_id(in, session_id) |
                 qbuf_put_str(in, ",");
        if (op == QKD_OP_STREAM)
            w |= qbuf_put_str(in, "\"peer_id\":") | qb_id(in, peer_id) |
                 qbuf_put_str(in, ",\"seq\":") | qb_i64(in, seq) | qbuf_put_str(in, ",");
        w |= qbuf_put_str(in, "\"ts\":") | qb_i64(in, ts);
    } else {
        if (r->all)
            w = qbuf_put_str(in, "{\"all\":true");
        else
            w = qbuf_put_str(in, "{\"session_id\":") | qb_id(in, session_id);
        if (op == QKD_OP_KEY)
            w |= qbuf_put_str(in, ",\"peer_id\":") | qb_id(in, peer_id);
        w |= qbuf_put_str(in, ",\"ts\":") | qb_i64(in, ts);
        if (op == QKD_OP_KEY && delivered)
            w |= qbuf_put_str(in, ",\"delivery\":\"delivered\"");
        if (epoch >= 0)
            w |= qbuf_put_str(in, ",\"epoch\":") | qb_i64(in, epoch);
        if (direction)
            w |= qbuf_put_str(in, ",\"direction\":\"") | qbuf_put_str(in, direction) |
                 qbuf_put_str(in, "\"");
    }
    w |= qbuf_put_str(in, "}");
    if (w != QBUF_OK) {
        rc = fail(QKD_ERR_INTERNAL, err, errlen, "request does not fit its buffers");
        goto cleanup;
    }
    rc = seal_envelope(r, d, k, key_index, opname, in, err, errlen);

cleanup:
    /* The plaintext names session and peer: confidential by the protocol;
     * qbuf_free wipes it. */
    qbuf_free(in);
    if (rc != QKD_OK)
        qkd_request_clear(r);
    return rc;
}

int qkd_request_key(qkd_request *r, const qkd_device *d, int key_index, const char *session_id,
                    const char *peer_id, bool delivered, int64_t ts,
                    const uint8_t nonce[QKP_NONCE_LEN], char *err, size_t errlen)
{
    return build(r, QKD_OP_KEY, d, key_index, session_id, peer_id, delivered, -1, NULL, 0, ts,
                 nonce, err, errlen);
}

int qkd_request_key_ext(qkd_request *r, const qkd_device *d, int key_index,
                        const char *session_id, const char *peer_id, int epoch,
                        const char *direction, int64_t ts, const uint8_t nonce[QKP_NONCE_LEN],
                        char *err, size_t errlen)
{
    if (epoch < 0 && !direction)
        return fail(QKD_ERR_INPUT, err, errlen, "an epoch, a direction or both");
    return build(r, QKD_OP_KEY, d, key_index, session_id, peer_id, false, epoch, direction, 0,
                 ts, nonce, err, errlen);
}

int qkd_request_end(qkd_request *r, const qkd_device *d, int key_index, const char *session_id,
                    int64_t ts, const uint8_t nonce[QKP_NONCE_LEN], char *err, size_t errlen)
{
    if (!session_id)
        return fail(QKD_ERR_INPUT, err, errlen, "session ID is not a valid ID");
    return build(r, QKD_OP_END, d, key_index, session_id, NULL, false, -1, NULL, 0, ts, nonce,
                 err, errlen);
}

int qkd_request_end_all(qkd_request *r, const qkd_device *d, int key_index, int64_t ts,
                        const uint8_t nonce[QKP_NONCE_LEN], char *err, size_t errlen)
{
    return build(r, QKD_OP_END, d, key_index, NULL, NULL, false, -1, NULL, 0, ts, nonce, err,
                 errlen);
}

int qkd_request_stream(qkd_request *r, const qkd_device *d, int key_index, const char *stream_id,
                       const char *peer_id, int64_t seq, int64_t ts,
                       const uint8_t nonce[QKP_NONCE_LEN], char *err, size_t errlen)
{
    return build(r, QKD_OP_STREAM, d, key_index, stream_id, peer_id, false, -1, NULL, seq, ts,
                 nonce, err, errlen);
}

int qkd_request_stream_end(qkd_request *r, const qkd_device *d, int key_index,
                           const char *stream_id, int64_t ts, const uint8_t nonce[QKP_NONCE_LEN],
                           char *err, size_t errlen)
{
    if (!stream_id)
        return fail(QKD_ERR_INPUT, err, errlen, "stream ID is not a valid ID");
    return build(r, QKD_OP_STREAM_END, d, key_index, stream_id, NULL, false, -1, NULL, 0, ts,
                 nonce, err, errlen);
}

void qkd_request_clear(qkd_request *r)
{
    if (r)
        OPENSSL_cleanse(r, sizeof(*r));
}

/* ---- responses ----------------------------------------------------------- */

static json_t *parse_object(const char *body, size_t len)
{
    json_error_t jerr;
    json_t *o = body ? json_loadb(body, len, JSON_REJECT_DUPLICATES, &jerr) : NULL;
    if (o && !json_is_object(o)) {
        json_decref(o);
        o = NULL;
    }
    return o;
}

/* v is the integer 1 and session_id the one r asked about. */
static int check_common(const json_t *o, const qkd_request *r, char *err, size_t errlen)
{
    const json_t *v = json_object_get(o, "v");
    const char *sid = get_str(o, "session_id");
    if (!json_is_integer(v) || json_integer_value(v) != QKP_VERSION)
        return fail(QKD_ERR_INPUT, err, errlen, "response is not protocol version 1");
    if (!sid || strcmp(sid, r->session_id) != 0)
        return fail(QKD_ERR_INPUT, err, errlen, "response is for another session");
    return QKD_OK;
}

/* The nonce and ct of an answer to r carrying a bits-bit key: decoded and
 * checked (12 bytes, not the request's own: the answer is sealed under the
 * same device key, so a server reusing the request's nonce would break the
 * AEAD for that key; ct a key and its tag). */
static int decode_sealed(const qkd_request *r, const char *nonce_s, const char *ct_s, int bits,
                         uint8_t nonce[QKP_NONCE_LEN], uint8_t ct[QKD_MAX_KEY_LEN + QKP_TAG_LEN],
                         long *ct_len, char *err, size_t errlen)
{
    if (!nonce_s ||
        qkp_b64url_decode(nonce_s, strlen(nonce_s), nonce, QKP_NONCE_LEN) != QKP_NONCE_LEN)
        return fail(QKD_ERR_INPUT, err, errlen, "response nonce must be 12 bytes in base64url");
    if (CRYPTO_memcmp(nonce, r->nonce, QKP_NONCE_LEN) == 0)
        return fail(QKD_ERR_INPUT, err, errlen, "response reuses the request nonce");
    *ct_len = ct_s ? qkp_b64url_decode(ct_s, strlen(ct_s), ct, QKD_MAX_KEY_LEN + QKP_TAG_LEN)
                   : -1;
    if (*ct_len != bits / 8 + QKP_TAG_LEN)
        return fail(QKD_ERR_INPUT, err, errlen, "response ct is not a %d-bit key and tag", bits);
    return QKD_OK;
}

/* Opens the sealed key (decode_sealed's) under r's device key k in its
 * suite with the AAD the client computed (aad_len < 0: it did not fit):
 * *key is then bits / 8 bytes of secure heap, the caller's on success and
 * on failure (its clear function frees it). */
static int open_sealed(const qkd_key *k, const qkd_request *r, const uint8_t nonce[QKP_NONCE_LEN],
                       const char *aad, int aad_len, const uint8_t *ct, long ct_len, int bits,
                       uint8_t **key, size_t *key_len, char *err, size_t errlen)
{
    if (aad_len < 0)
        return fail(QKD_ERR_INPUT, err, errlen, "response fields too long");
    if (!(*key = OPENSSL_secure_malloc((size_t)bits / 8)))
        return fail(QKD_ERR_INTERNAL, err, errlen, "out of secure memory");
    *key_len = (size_t)bits / 8;
    if (qkp_open_suite(k->suite, k->key, k->len, nonce, aad, (size_t)aad_len, ct, (size_t)ct_len,
                       *key) != 0)
        return fail(QKD_ERR_INPUT, err, errlen,
                    "response does not verify under device key %d "
                    "(tampered, or not an answer to this request)",
                    r->key_index);
    return QKD_OK;
}

int qkd_response_key(qkd_session_key *out, const qkd_device *d, const qkd_request *r,
                     const char *body, size_t len, char *err, size_t errlen)
{
    json_t *o = NULL;
    const json_t *jbits, *jexp;
    const char *key_id, *delivery, *nonce_s, *ct_s;
    const qkd_key *k;
    uint8_t nonce[QKP_NONCE_LEN], ct[QKD_MAX_KEY_LEN + QKP_TAG_LEN];
    char aad[QKP_MAX_AAD];
    long ct_len;
    int bits, aad_len, rc = QKD_ERR_INPUT;

    memset(out, 0, sizeof(*out));
    if (!d || !r || r->op != QKD_OP_KEY || strcmp(d->device_id, r->device_id) != 0 ||
        !(k = qkd_device_key(d, r->key_index))) {
        rc = fail(QKD_ERR_INPUT, err, errlen, "not a key request of this device");
        goto cleanup;
    }
    if (!(o = parse_object(body, len))) {
        rc = fail(QKD_ERR_INPUT, err, errlen, "response is not a JSON object");
        goto cleanup;
    }
    if ((rc = check_common(o, r, err, errlen)) != QKD_OK)
        goto cleanup;
    rc = QKD_ERR_INPUT;
    key_id = get_str(o, "key_id");
    jbits = json_object_get(o, "key_bits");
    jexp = json_object_get(o, "expires_at");
    delivery = get_str(o, "delivery");
    nonce_s = get_str(o, "nonce");
    ct_s = get_str(o, "ct");
    /* key_id goes into the AAD and onto terminals: hold it to the ID rule
     * (a UUID passes), which also keeps '\n' out. */
    if (!qkp_id_valid(key_id)) {
        rc = fail(QKD_ERR_INPUT, err, errlen, "response key_id missing or malformed");
        goto cleanup;
    }
    if (!json_is_integer(jbits) ||
        (json_integer_value(jbits) != 128 && json_integer_value(jbits) != 256)) {
        rc = fail(QKD_ERR_INPUT, err, errlen, "response key_bits must be 128 or 256");
        goto cleanup;
    }
    if (!json_is_integer(jexp) || json_integer_value(jexp) < 0) {
        rc = fail(QKD_ERR_INPUT, err, errlen, "response expires_at must be a non-negative integer");
        goto cleanup;
    }
    if (!delivery || (strcmp(delivery, "session") != 0 && strcmp(delivery, "delivered") != 0)) {
        rc = fail(QKD_ERR_INPUT, err, errlen, "response delivery must be session or delivered");
        goto cleanup;
    }
    bits = (int)json_integer_value(jbits);
    if ((rc = decode_sealed(r, nonce_s, ct_s, bits, nonce, ct, &ct_len, err, errlen)) != QKD_OK)
        goto cleanup;
    rc = QKD_ERR_INPUT;
    {
        /* An ext request's answer names the epoch and direction asked for
         * (the AAD binds them) and the session's current epoch; any other
         * answer names none of them. */
        json_t *je = json_object_get(o, "epoch"), *jc = json_object_get(o, "current_epoch");
        const char *dir = get_str(o, "direction");
        if (r->ext ? !json_is_integer(je) || json_integer_value(je) != r->epoch || !dir ||
                         strcmp(dir, r->direction) || !json_is_integer(jc) ||
                         json_integer_value(jc) < r->epoch || json_integer_value(jc) > INT_MAX
                   : je || jc || json_object_get(o, "direction")) {
            rc = fail(QKD_ERR_INPUT, err, errlen,
                      r->ext ? "response is for another epoch or direction"
                             : "response names an epoch the request did not ask for");
            goto cleanup;
        }
        if (r->ext)
            out->current_epoch = (int)json_integer_value(jc);
    }
    aad_len = r->ext ? qkp_response_aad_ext(r->session_id, r->device_id, r->key_index, key_id,
                                            (int64_t)json_integer_value(jexp), r->nonce_b64,
                                            r->epoch, r->direction, aad, sizeof(aad))
                     : qkp_response_aad(r->session_id, r->device_id, r->key_index, key_id,
                                        (int64_t)json_integer_value(jexp), r->nonce_b64, aad,
                                        sizeof(aad));
    if ((rc = open_sealed(k, r, nonce, aad, aad_len, ct, ct_len, bits, &out->key, &out->key_len,
                          err, errlen)) != QKD_OK)
        goto cleanup;
    strcpy(out->session_id, r->session_id);
    strcpy(out->key_id, key_id);
    out->key_bits = bits;
    out->expires_at = (int64_t)json_integer_value(jexp);
    strcpy(out->delivery, delivery);
    out->epoch = r->ext ? r->epoch : 0;
    strcpy(out->direction, r->ext ? r->direction : "");
    rc = QKD_OK;

cleanup:
    if (rc != QKD_OK)
        qkd_session_key_clear(out);
    json_decref(o);
    return rc;
}

void qkd_session_key_clear(qkd_session_key *k)
{
    if (!k)
        return;
    if (k->key)
        OPENSSL_secure_clear_free(k->key, k->key_len);
    OPENSSL_cleanse(k, sizeof(*k));
}

int qkd_response_end(const qkd_request *r, const char *body, size_t len, char *err, size_t errlen)
{
    json_t *o = NULL;
    int rc = QKD_ERR_INPUT;

    if (!r || r->op != QKD_OP_END || r->all) {
        rc = fail(QKD_ERR_INPUT, err, errlen,
                  r && r->all ? "an end of all sessions: qkd_response_end_all"
                              : "not an end request");
        goto cleanup;
    }
    if (!(o = parse_object(body, len))) {
        rc = fail(QKD_ERR_INPUT, err, errlen, "response is not a JSON object");
        goto cleanup;
    }
    if ((rc = check_common(o, r, err, errlen)) != QKD_OK)
        goto cleanup;
    if (!json_is_true(json_object_get(o, "ended"))) {
        rc = fail(QKD_ERR_INPUT, err, errlen, "response does not say the session ended");
        goto cleanup;
    }
    rc = QKD_OK;

cleanup:
    json_decref(o);
    return rc;
}

int qkd_response_end_all(const qkd_request *r, const char *body, size_t len, int *ended,
                         int *streams_ended, char *err, size_t errlen)
{
    json_t *o = NULL, *v, *n, *m;
    int rc = QKD_ERR_INPUT;

    if (ended)
        *ended = 0;
    if (streams_ended)
        *streams_ended = 0;
    if (!r || r->op != QKD_OP_END || !r->all) {
        rc = fail(QKD_ERR_INPUT, err, errlen, "not an end of all sessions");
        goto cleanup;
    }
    if (!(o = parse_object(body, len))) {
        rc = fail(QKD_ERR_INPUT, err, errlen, "response is not a JSON object");
        goto cleanup;
    }
    v = json_object_get(o, "v");
    if (!json_is_integer(v) || json_integer_value(v) != QKP_VERSION) {
        rc = fail(QKD_ERR_INPUT, err, errlen, "response is not protocol version 1");
        goto cleanup;
    }
    n = json_object_get(o, "sessions_ended");
    m = json_object_get(o, "streams_ended");
    if (!json_is_true(json_object_get(o, "all")) || !json_is_true(json_object_get(o, "ended")) ||
        json_object_get(o, "session_id") || !json_is_integer(n) || json_integer_value(n) < 0 ||
        json_integer_value(n) > INT_MAX || !json_is_integer(m) || json_integer_value(m) < 0 ||
        json_integer_value(m) > INT_MAX) {
        rc = fail(QKD_ERR_INPUT, err, errlen,
                  "response does not say that all the device's sessions ended");
        goto cleanup;
    }
    if (ended)
        *ended = (int)json_integer_value(n);
    if (streams_ended)
        *streams_ended = (int)json_integer_value(m);
    rc = QKD_OK;

cleanup:
    json_decref(o);
    return rc;
}

int qkd_response_stream(qkd_stream_key *out, const qkd_device *d, const qkd_request *r,
                        const char *body, size_t len, char *err, size_t errlen)
{
    json_t *o = NULL, *v, *jseq, *jbits, *jexp, *jlow, *jwin;
    const char *sid, *key_id, *nonce_s, *ct_s;
    const qkd_key *k;
    uint8_t nonce[QKP_NONCE_LEN], ct[QKD_MAX_KEY_LEN + QKP_TAG_LEN];
    char aad[QKP_MAX_AAD];
    long ct_len;
    int bits, aad_len, rc = QKD_ERR_INPUT;

    memset(out, 0, sizeof(*out));
    if (!d || !r || r->op != QKD_OP_STREAM || strcmp(d->device_id, r->device_id) != 0 ||
        !(k = qkd_device_key(d, r->key_index))) {
        rc = fail(QKD_ERR_INPUT, err, errlen, "not a stream request of this device");
        goto cleanup;
    }
    if (!(o = parse_object(body, len))) {
        rc = fail(QKD_ERR_INPUT, err, errlen, "response is not a JSON object");
        goto cleanup;
    }
    v = json_object_get(o, "v");
    sid = get_str(o, "stream_id");
    key_id = get_str(o, "key_id");
    jseq = json_object_get(o, "seq");
    jbits = json_object_get(o, "key_bits");
    jexp = json_object_get(o, "expires_at");
    jlow = json_object_get(o, "low");
    jwin = json_object_get(o, "window");
    nonce_s = get_str(o, "nonce");
    ct_s = get_str(o, "ct");
    if (!json_is_integer(v) || json_integer_value(v) != QKP_VERSION) {
        rc = fail(QKD_ERR_INPUT, err, errlen, "response is not protocol version 1");
        goto cleanup;
    }
    if (!qkp_id_valid(sid) || (r->session_id[0] && strcmp(sid, r->session_id) != 0) ||
        !json_is_integer(jseq) || json_integer_value(jseq) != r->seq) {
        rc = fail(QKD_ERR_INPUT, err, errlen, "response is for another stream or seq");
        goto cleanup;
    }
    if (!qkp_id_valid(key_id) || !json_is_integer(jexp) || json_integer_value(jexp) < 0 ||
        !json_is_integer(jlow) || json_integer_value(jlow) < 0 || !json_is_integer(jwin) ||
        json_integer_value(jwin) < 1 ||
        json_integer_value(jwin) > 1024 || json_integer_value(jlow) > r->seq ||
        r->seq >= json_integer_value(jlow) + json_integer_value(jwin)) {
        rc = fail(QKD_ERR_INPUT, err, errlen,
                  "response key_id, expires_at, low or window malformed, or seq outside its "
                  "window");
        goto cleanup;
    }
    if (!json_is_integer(jbits) ||
        (json_integer_value(jbits) != 128 && json_integer_value(jbits) != 256)) {
        rc = fail(QKD_ERR_INPUT, err, errlen, "response key_bits must be 128 or 256");
        goto cleanup;
    }
    bits = (int)json_integer_value(jbits);
    if ((rc = decode_sealed(r, nonce_s, ct_s, bits, nonce, ct, &ct_len, err, errlen)) != QKD_OK)
        goto cleanup;
    aad_len = qkp_stream_aad(sid, r->device_id, r->key_index, r->seq, key_id,
                             (int64_t)json_integer_value(jexp), r->nonce_b64, aad, sizeof(aad));
    if ((rc = open_sealed(k, r, nonce, aad, aad_len, ct, ct_len, bits, &out->key, &out->key_len,
                          err, errlen)) != QKD_OK)
        goto cleanup;
    strcpy(out->stream_id, sid);
    strcpy(out->key_id, key_id);
    out->seq = r->seq;
    out->key_bits = bits;
    out->expires_at = (int64_t)json_integer_value(jexp);
    out->low = (int64_t)json_integer_value(jlow);
    out->window = (int)json_integer_value(jwin);
    rc = QKD_OK;

cleanup:
    OPENSSL_cleanse(ct, sizeof(ct));
    if (rc != QKD_OK)
        qkd_stream_key_clear(out);
    json_decref(o);
    return rc;
}

void qkd_stream_key_clear(qkd_stream_key *k)
{
    if (!k)
        return;
    if (k->key)
        OPENSSL_secure_clear_free(k->key, k->key_len);
    OPENSSL_cleanse(k, sizeof(*k));
}

int qkd_response_stream_end(const qkd_request *r, const char *body, size_t len, char *err,
                            size_t errlen)
{
    json_t *o = NULL, *v;
    const char *sid;
    int rc = QKD_ERR_INPUT;

    if (!r || r->op != QKD_OP_STREAM_END) {
        rc = fail(QKD_ERR_INPUT, err, errlen, "not a stream end request");
        goto cleanup;
    }
    if (!(o = parse_object(body, len))) {
        rc = fail(QKD_ERR_INPUT, err, errlen, "response is not a JSON object");
        goto cleanup;
    }
    v = json_object_get(o, "v");
    sid = get_str(o, "stream_id");
    if (!json_is_integer(v) || json_integer_value(v) != QKP_VERSION || !sid ||
        strcmp(sid, r->session_id) != 0 || !json_is_true(json_object_get(o, "ended"))) {
        rc = fail(QKD_ERR_INPUT, err, errlen, "response does not say the stream ended");
        goto cleanup;
    }
    rc = QKD_OK;

cleanup:
    json_decref(o);
    return rc;
}

int qkd_response_error(qkd_error *out, const char *body, size_t len)
{
    json_t *o = parse_object(body, len);
    const json_t *e = json_object_get(o, "error");
    const char *code = get_str(e, "code"), *message = get_str(e, "message");
    int rc = QKD_ERR_INPUT;

    memset(out, 0, sizeof(*out));
    if (json_is_object(e) && code && *code) {
        snprintf(out->code, sizeof(out->code), "%s", code);
        snprintf(out->message, sizeof(out->message), "%s", message ? message : "");
        rc = QKD_OK;
    }
    json_decref(o);
    return rc;
}
