/*
 * streams — sequential key streams (docs/protocol.md, "Key streams"): keys
 * numbered 0, 1, 2, ... handed out in order to a pair of devices without a
 * session ID, each made once and delivered to both parties, destroyed once
 * both hold it, inside a window above the lowest key not yet consumed. The
 * service knows no door: the device protocol v1 (api/device_v1.c) calls it
 * with the request's device_auth and encodes the answer.
 *
 * Contract:
 *  - As sessions.h: a device operation takes the device_auth of its
 *    request and a QK_PRINCIPAL_DEVICE principal naming the same device;
 *    state lives only in PostgreSQL and each call is one stored function
 *    (schema/028) in one transaction, so one key per (stream, seq) and one
 *    live stream per pair hold across kmsd instances; the nonce is recorded
 *    before any outcome a device sees (a replay is the 401 of
 *    device_auth_fail).
 *  - A stream key exists at rest only wrapped under the master key, with a
 *    context naming the stream ID and the key ID (stream_key_context);
 *    plaintext leaves this module only in a stream_grant, secure heap.
 *  - Refusals: QK_INVALID unknown_peer, peer_inactive; QK_FORBIDDEN
 *    device_inactive, service_expired, not_a_party, peer_mismatch,
 *    policy_denied, key_source_denied; QK_NOT_FOUND unknown_stream;
 *    QK_CONFLICT stream_ended, key_consumed, seq_out_of_window;
 *    QK_UNAVAILABLE unavailable, token_unavailable, entropy_unavailable
 *    (Retry-After 1); QK_INTERNAL.
 */
#ifndef QKMS_STREAMS_H
#define QKMS_STREAMS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "err.h"
#include "service/device_auth.h"
#include "service/service.h"

/* A stream key request (its inner request). */
typedef struct {
    const char *stream_id; /* a UUID, or NULL: the pair's live stream, opened if none */
    const char *peer_id;   /* the other party: a valid ID, not the asker */
    int64_t seq;           /* >= 0 */
    int64_t ts;            /* the request's time, Unix seconds (the database judges it) */
} stream_ask;

/* Key seq of a stream, for one party. */
typedef struct {
    char stream_id[37];
    int64_t seq;
    char key_id[37];
    int key_bits;
    int64_t expires_at; /* the stream's end of life, Unix seconds */
    int64_t low;        /* every seq below is consumed (as of before this request) */
    int window;         /* seq < low + window may be asked for */
    bool created;       /* this request made the key */
    uint8_t *key;       /* key_len bytes, secure heap */
    size_t key_len;
} stream_grant;

/* Key a->seq of the stream: QK_OK with *g filled, or e. */
qk_kind streams_key(qk_svc *s, const qk_principal *who, device_auth *a, const stream_ask *ask,
                    stream_grant *g, qk_err *e);
/* Wipe and free g's key; g is zeroed. */
void stream_grant_clear(stream_grant *g);

/* End stream_id at a party's request, destroying its keys: QK_OK, or
 * QK_NOT_FOUND unknown_stream, QK_CONFLICT stream_ended, QK_FORBIDDEN
 * not_a_party, a 401. A suspended device may still end its streams. */
qk_kind streams_end(qk_svc *s, const qk_principal *who, device_auth *a, const char *stream_id,
                    int64_t ts, qk_err *e);

/* ---- the operator's view ---------------------------------------------------- */

/* Live streams (device: a party, or NULL; limit 1..1000), newest first, as
 * the admin API's JSON array: QK_OK with *out, or QK_MALFORMED
 * invalid_query. */
qk_kind streams_list(qk_svc *s, const char *device, long limit, json_t **out, qk_err *e);
/* The live stream of that ID, else its tombstone: QK_OK with *out, or
 * QK_NOT_FOUND not_found. */
qk_kind streams_get(qk_svc *s, const char *stream_id, json_t **out, qk_err *e);
/* End a live stream on an operator's word (who is recorded): QK_OK, or
 * QK_NOT_FOUND not_found. */
qk_kind streams_end_by_operator(qk_svc *s, const qk_principal *who, const char *stream_id,
                                qk_err *e);

/* One reaper pass over streams (idle or past their lifetime, old
 * tombstones): the number destroyed, or -1. */
int streams_reap(qk_svc *s);

/* The wrap context of a stream key: "qkms/stream-key/v1\n" stream_id "\n"
 * key_id. Its length, or -1 when it does not fit. */
int stream_key_context(const char *stream_id, const char *key_id, char *out, size_t len);

#endif
