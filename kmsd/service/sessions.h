/*
 * sessions — the device protocol v1 (docs/protocol.md) on the server side:
 * authenticating device requests, issuing one paired session key per session
 * ID, ending sessions, and the operator's view of them.
 *
 * Contract:
 *  - A request is authenticated by opening its AEAD under the named device
 *    key (unwrapped through the token into secure memory, zeroized after).
 *    Every authentication failure answers the same 401; the log line names
 *    the reason (auth_failure).
 *  - Session state lives only in PostgreSQL and is changed by the stored
 *    functions of schema/003 and 006 in one round trip and one transaction
 *    each, so the database alone guarantees one key per session ID, across
 *    kmsd instances. The session key exists at rest only wrapped under the
 *    master key, in the live session's row.
 *  - The database is also the authority for the request's time (its now())
 *    and for replays: the nonce is recorded before every outcome a device
 *    sees. A wrap it refuses as made under a master version no longer
 *    active makes kmsd refresh its view (master_refresh) and wrap again.
 *  - Counters for /metrics are kept here (lock-free).
 */
#ifndef QKMS_SESSIONS_H
#define QKMS_SESSIONS_H

#include <stdint.h>
#include <stdio.h>

#include "api/server.h"

typedef struct session_metrics session_metrics;

session_metrics *session_metrics_new(void);
void session_metrics_free(session_metrics *m);
/* A metrics_render_fn; ctx is a session_metrics. */
void session_metrics_render(void *ctx, FILE *f);

void h_session_key(http_request *rq, http_response *rs);
void h_session_end(http_request *rq, http_response *rs);

/* Admin: GET /v1/admin/sessions, GET /v1/admin/sessions/{id}, POST .../{id}/end */
void h_admin_sessions_list(http_request *rq, http_response *rs);
void h_admin_session_get(http_request *rq, http_response *rs);
void h_admin_session_end(http_request *rq, http_response *rs);

/* Destroy sessions past their idle timeout or lifetime; purge old nonces
 * and tombstones. Returns the number destroyed, or -1. */
int sessions_reap(qk_svc *k);

/* The session ID hash key: SID_KEY_LEN random bytes, stored only wrapped
 * under the master key with context SID_KEY_CONTEXT (master.c makes and
 * unwraps it at start, rotation.c rewraps it). */
#define SID_KEY_LEN 32
#define SID_KEY_CONTEXT "qkms/session-id-hmac-key/v1"
/* Keep a copy of key in secure memory (NULL: wipe and forget it). 0 or -1. */
int sessions_set_id_key(const uint8_t *key, size_t len);

/* HMAC-SHA-256 of a session ID under the session ID hash key: what the
 * sessions and tombstones are keyed by, so a database reader cannot test
 * guessed session IDs. -1 if the key is not set. */
int session_hash(const char *session_id, uint8_t out[32]);
/* The plain SHA-256 rows written before migration 006 are keyed by; looked
 * up as a fallback so sessions live across the upgrade keep working. */
void session_hash_legacy(const char *session_id, uint8_t out[32]);

/* The wrap context (AAD) of a session key: its session hash as lower-case
 * hex and its key ID. One definition for wrapping (sessions.c) and
 * rewrapping under a new master key (rotation.c). -1 if out is too short. */
int session_key_context(const char *hash_hex, const char *key_id, char *out, size_t len);

#endif
