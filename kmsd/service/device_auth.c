/*
 * device_auth — authenticating device requests (device_auth.h): the device
 * key row (keycache, else one indexed query), the state and validity
 * checks, the unwrap through the token (with one refresh when the row names
 * a master key version this instance does not hold) and the AEAD open. It
 * owns the "device request refused" log line and the 401 every
 * authentication failure gets.
 */
#include "service/device_auth.h"

#include "qkms_proto2.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/crypto.h>

#include "hexutil.h"
#include "service/device_model.h"
#include "service/keycache.h"
#include "service/master.h"
#include "service/session_metrics.h"
#include "store/queries.h"

#define DEVICE_KEY_BUF (KEYWRAP_MAX_KEY + 16)

qk_kind device_auth_fail(qk_svc *s, const log_ctx *log, const char *device_id, int key_index,
                         const char *why, qk_err *e)
{
    /* The request names a device, but nobody proved to be it. */
    log_ctx lc = {log ? log->req_id : NULL, log ? log->client : NULL, NULL};
    log_with(&lc, LOG_WARN, "device request refused", "{s:s,s:i,s:s}", "device_id", device_id,
             "key_index", key_index, "auth_failure", why);
    session_metrics_refused(s->smetrics, SESSION_REFUSE_AUTH);
    return qk_fail(e, QK_UNAUTHENTICATED, "unauthenticated", "request could not be authenticated");
}

void device_auth_clear(device_auth *a)
{
    if (a->key)
        OPENSSL_secure_clear_free(a->key, DEVICE_KEY_BUF);
    if (a->inner)
        OPENSSL_secure_clear_free(a->inner, a->inner_len ? a->inner_len : 1);
    memset(a, 0, sizeof(*a));
}

/* The device key row of rq: 2 from the cache, 1 read by one indexed query
 * (then cached), 0 when there is none, -1 on error (e set). */
static int load_key_row(qk_svc *s, const device_request *rq, keycache_entry *row, uint64_t gen,
                        qk_err *e)
{
    char idx[8];
    const char *vals[2] = {rq->device_id, idx};
    db_status st;
    PGresult *r;
    long bl;

    if (keycache_get(s->keys, rq->device_id, rq->key_index, row))
        return 2;
    snprintf(idx, sizeof(idx), "%d", rq->key_index);
    r = db_query(s->db, Q_DEVKEY_FOR_AUTH, 2, vals, NULL, NULL, &st);
    session_metrics_stage(s->smetrics, SESSION_STAGE_KEY_LOOKUP, rq->t0);
    if (!r) {
        db_fail(e, st);
        return -1;
    }
    if (PQntuples(r) == 0) {
        PQclear(r);
        return 0;
    }
    memset(row, 0, sizeof(*row));
    row->device_pk = atoll(PQgetvalue(r, 0, 0));
    snprintf(row->device_state, sizeof(row->device_state), "%s", PQgetvalue(r, 0, 1));
    snprintf(row->algorithm, sizeof(row->algorithm), "%s", PQgetvalue(r, 0, 2));
    snprintf(row->key_state, sizeof(row->key_state), "%s", PQgetvalue(r, 0, 4));
    row->not_before = atoll(PQgetvalue(r, 0, 5));
    row->not_after = atoll(PQgetvalue(r, 0, 6));
    snprintf(row->purpose, sizeof(row->purpose), "%s", PQgetvalue(r, 0, 7));
    bl = PQgetisnull(r, 0, 3) ? 0
                              : qkms_hex_decode(PQgetvalue(r, 0, 3), strlen(PQgetvalue(r, 0, 3)),
                                                row->wrapped, sizeof(row->wrapped));
    row->wrapped_len = bl > 0 ? (size_t)bl : 0;
    PQclear(r);
    keycache_put(s->keys, rq->device_id, rq->key_index, row, gen);
    return 1;
}

/* Unwrap the device key of row (found: load_key_row's answer) into a->key. */
static CK_RV unwrap_device_key(qk_svc *s, const device_request *rq, keycache_entry *row, int found,
                               uint64_t cgen, const char *ctx, device_auth *a, qk_err *e)
{
    CK_RV rv;
    uint64_t gen = p11_generation(s->token);

    /* The key this exact wrapped row gave before: no token operation. A
     * row from the database (found == 1) may be newer than what the
     * cache holds; the byte-for-byte match of the wrapped blob decides. */
    if (keycache_get_unwrapped(s->keys, rq->device_id, rq->key_index, row->wrapped,
                               row->wrapped_len, a->key, DEVICE_KEY_BUF, &a->key_len))
        return CKR_OK;
    a->key_len = DEVICE_KEY_BUF;
    rv = keywrap_unwrap(s->kw, (const uint8_t *)ctx, strlen(ctx), row->wrapped, row->wrapped_len,
                        a->key, &a->key_len);
    /* A module re-initialized while we were at it (another request found a
     * key gone) voids the handles we used: that failure says nothing about
     * this row, so it is retried like a stale one. */
    if (rv != CKR_OK && (found == 2 || p11_rv_kind(rv) == P11_KIND_NOT_FOUND ||
                         p11_generation(s->token) != gen)) {
        /* A cached row may name a master key version rotated away and
         * destroyed since (the token answers not-found or, for a handle
         * whose object vanished, device-removed); any row may name a
         * version another instance made that we have not loaded yet
         * (not-found). Refresh our view of the versions and read the row
         * again, once: from the database, or from the cache when a
         * concurrent request has already re-read it (before, that case was
         * answered 503). A row just read that failed for another reason
         * would fail the same way again. */
        master_refresh(s, NULL);
        keycache_invalidate(s->keys, rq->device_id);
        cgen = keycache_generation(s->keys);
        if (load_key_row(s, rq, row, cgen, e) > 0 && row->wrapped_len) {
            a->key_len = DEVICE_KEY_BUF;
            rv = keywrap_unwrap(s->kw, (const uint8_t *)ctx, strlen(ctx), row->wrapped,
                                row->wrapped_len, a->key, &a->key_len);
        }
    }
    if (rv == CKR_OK)
        keycache_put_unwrapped(s->keys, rq->device_id, rq->key_index, row->wrapped,
                               row->wrapped_len, a->key, a->key_len, cgen);
    return rv;
}

/* An audit row for a local key used on a device-facing door (at most one a
 * minute per device: Q_AUDIT_LOCAL_KEY). Best effort:
 * the refusal stands whether or not the row could be written. */
static void local_key_audit(qk_svc *s, const log_ctx *log, const device_request *rq)
{
    char detail[128];
    const char *vals[2] = {rq->device_id, detail};
    db_status st;
    PGresult *r;
    /* op is the door's constant ("key", "end", ...), never the client's. */
    snprintf(detail, sizeof(detail), "{\"key_index\":%d,\"op\":\"%.16s\",\"protocol\":%d}",
             rq->key_index, rq->op, rq->version == 2 ? 2 : 1);
    r = db_query(s->db, Q_AUDIT_LOCAL_KEY, 2, vals, NULL, NULL, &st);
    if (!r)
        log_with(log, LOG_ERROR, "audit row for a local key not written", "{s:s}", "device_id",
                 rq->device_id);
    PQclear(r);
}

/* The checks a key row must pass (the stored function repeats them): NULL,
 * or the reason for the log. */
static const char *row_refusal(const keycache_entry *row, int64_t now)
{
    if (!strcmp(row->device_state, "revoked"))
        return "device revoked";
    if (strcmp(row->key_state, "active") != 0 || row->wrapped_len == 0)
        return !strcmp(row->key_state, "retired") ? "key retired" : "key destroyed";
    if (now < row->not_before || now >= row->not_after)
        return "key outside its validity (expired or not yet valid)";
    return NULL;
}

static qk_kind request_valid(const device_request *rq, qk_err *e)
{
    if (!rq->op || !qkp_id_valid(rq->device_id))
        return qk_fail(e, QK_MALFORMED, "malformed_request", "device_id is not a valid ID");
    if (rq->key_index < 0 || rq->key_index > 255)
        return qk_fail(e, QK_MALFORMED, "malformed_request",
                       "key_index must be an integer from 0 to 255");
    if (!rq->nonce || !rq->ct || rq->ct_len < QKP_TAG_LEN + 1 ||
        rq->ct_len > QKP_MAX_PLAINTEXT + QKP_TAG_LEN)
        return qk_fail(e, QK_MALFORMED, "malformed_request",
                       "ct must be base64url, 17 to 2064 bytes");
    return QK_OK;
}

qk_kind device_auth_open(qk_svc *s, const log_ctx *log, const device_request *rq, device_auth *a,
                         qk_err *e)
{
    char ctx[256], aad[QKP_MAX_AAD];
    int aad_len, found;
    uint64_t cgen;
    keycache_entry row;
    const char *why;
    qk_err local;
    qk_kind r;
    CK_RV rv;

    if (!e)
        e = &local;
    memset(a, 0, sizeof(*a));
    memset(&row, 0, sizeof(row));
    if ((r = request_valid(rq, e)) != QK_OK)
        goto out;
    snprintf(a->device_id, sizeof(a->device_id), "%s", rq->device_id);
    a->key_index = rq->key_index;
    memcpy(a->nonce, rq->nonce, QKP_NONCE_LEN);
    a->t0 = rq->t0;
    /* Read before the row: what a concurrent invalidate drops is not put
     * back by this request (keycache_generation). */
    cgen = keycache_generation(s->keys);
    if ((found = load_key_row(s, rq, &row, cgen, e)) < 0) {
        r = e->kind;
        goto out;
    }
    if (found == 0) {
        r = device_auth_fail(s, log, rq->device_id, rq->key_index, "unknown device or key index", e);
        goto out;
    }
    if ((why = row_refusal(&row, (int64_t)time(NULL))) != NULL) {
        r = device_auth_fail(s, log, rq->device_id, rq->key_index, why, e);
        goto out;
    }
    a->device_pk = row.device_pk;
    snprintf(a->purpose, sizeof(a->purpose), "%s", row.purpose);
    a->key = OPENSSL_secure_malloc(DEVICE_KEY_BUF);
    a->inner_len = rq->ct_len - QKP_TAG_LEN;
    a->inner = OPENSSL_secure_malloc(a->inner_len);
    if (!a->key || !a->inner) {
        r = qk_fail(e, QK_INTERNAL, "internal", "internal error (see kmsd log)");
        goto out;
    }
    /* The key's suite seals the protocol v1 envelope; protocol v2 (mode 3)
     * is AES-GCM by its own suite, and an SM4 key is not an AES key. */
    a->suite = qkp_suite_of(row.algorithm);
    if (a->suite < 0 || (rq->version == 2 && a->suite != QKP_SUITE_AES)) {
        r = device_auth_fail(s, log, rq->device_id, rq->key_index,
                             a->suite < 0 ? "unknown key algorithm"
                                          : "an SM4 key in protocol v2 (its suite is AES)",
                             e);
        goto out;
    }
    device_key_context(rq->device_id, rq->key_index, row.algorithm, ctx, sizeof(ctx));
    rv = unwrap_device_key(s, rq, &row, found, cgen, ctx, a, e);
    session_metrics_stage(s->smetrics, SESSION_STAGE_KEY_UNWRAP, rq->t0);
    if (rv != CKR_OK) {
        log_with(log, LOG_ERROR, "device key unwrap failed", "{s:s,s:s,s:i}", "ckr",
                 p11_rv_name(rv), "device_id", rq->device_id, "key_index", rq->key_index);
        r = qk_from_token(e, rv, NULL); /* logged just above */
        goto out;
    }
    aad_len = rq->version == 2
                  ? qkp2_request_aad(rq->op, rq->device_id, rq->key_index, aad, sizeof(aad))
                  : qkp_request_aad(rq->op, rq->device_id, rq->key_index, aad, sizeof(aad));
    if (aad_len < 0 || qkp_open_suite(a->suite, a->key, a->key_len, rq->nonce, aad,
                                      (size_t)aad_len, rq->ct, rq->ct_len, a->inner) != 0) {
        r = device_auth_fail(s, log, rq->device_id, rq->key_index,
                             "AEAD tag did not verify (wrong key, operation or tampering)", e);
        goto out;
    }
    /* A local key is for a gateway's local network and never crosses the
     * wide area (seed 004). Judged after the tag verified: a request that
     * holds the key is a device (or sub-device) misusing it, worth an audit
     * row; a mere claim of the index is any other failure. */
    if (!strcmp(row.purpose, "local")) {
        local_key_audit(s, log, rq);
        r = device_auth_fail(s, log, rq->device_id, rq->key_index,
                             "a local key (its gateway's local network only)", e);
        goto out;
    }
    r = QK_OK;
out:
    OPENSSL_cleanse(&row, sizeof(row));
    if (r != QK_OK)
        device_auth_clear(a);
    return r;
}
