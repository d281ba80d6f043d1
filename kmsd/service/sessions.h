/*
 * sessions — the session service: one paired session key per session ID
 * for two authenticated devices, ending sessions, destroying expired ones,
 * and the operator's view (docs/sessions.md). It knows no door: the device
 * protocol v1 (api/device_v1.c) and the admin API (api/admin_sessions.c)
 * call it with a principal and plain arguments and encode the answer or the
 * qk_err (err.h).
 *
 * Contract:
 *  - A device operation takes the device_auth of its request (device_auth.h:
 *    the authenticated device, its key index and the request's nonce) and a
 *    principal of kind QK_PRINCIPAL_DEVICE naming the same device, whose log
 *    context the operation's log lines carry.
 *  - Session state lives only in PostgreSQL and is changed by the stored
 *    functions of schema/003 and 006 in one round trip and one transaction
 *    each, so the database alone guarantees one key per session ID, across
 *    kmsd instances. The session key exists at rest only wrapped under the
 *    master key, in the live session's row; it leaves this module only
 *    unwrapped into a session_grant in the secure heap, for the door to seal
 *    to the device.
 *  - The database is also the authority for the request's time (its now())
 *    and for replays: the nonce is recorded before every outcome a device
 *    sees. A replayed nonce, a stale ts or a device the authoritative
 *    re-check refuses is the 401 of device_auth_fail; a replay also sets
 *    a->replayed. A wrap the database refuses as made under a master
 *    version no longer active makes kmsd refresh its view (master_refresh)
 *    and wrap again.
 *  - Refusals, as today's wire contract (docs/protocol.md): QK_FORBIDDEN
 *    device_inactive, not_a_party, peer_mismatch, policy_denied;
 *    QK_CONFLICT session_ended; QK_NOT_FOUND unknown_session (end only);
 *    QK_INVALID unknown_peer, peer_inactive; for ext requests (and a v1
 *    request on a session past its first epoch) QK_CONFLICT epoch_skip,
 *    epoch_limit, epoch_ended, QK_FORBIDDEN direction_denied, epoch_denied,
 *    QK_NOT_FOUND unknown_session; QK_UNAVAILABLE unavailable,
 *    token_unavailable, entropy_unavailable (Retry-After 1); QK_INTERNAL.
 *  - Counters and stage timings go to s->smetrics (session_metrics.h).
 */
#ifndef QKMS_SESSIONS_H
#define QKMS_SESSIONS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "err.h"
#include "service/device_auth.h"
#include "service/service.h"
#include "service/session_id.h"

/* What a device asks for in a key request (its inner request). */
typedef struct {
    const char *session_id; /* a valid ID (qkp_id_valid) */
    const char *peer_id;    /* the other party: a valid ID, not the asker; NULL with
                             * platform_peer */
    bool delivered;         /* delivery "delivered": end the session once both hold it */
    int64_t ts;             /* the request's time, Unix seconds (the database judges it) */
    /* Protocol v2 (docs/protocol.md "Key sources"): 0 for v1 (as 'c');
     * 'a' or 'b' derive a creating request's key from cr (and, for 'a', a
     * server random from the entropy interface) over the request hash h. */
    char key_source;
    const uint8_t *cr;      /* 32 bytes, for 'a' and 'b' */
    const uint8_t *h;       /* 32 bytes, for 'a' and 'b' */
    /* v2: the platform itself is the peer (a device-platform channel key,
     * docs/protocol.md): the session row has no responder, the platform
     * holds the key until the session ends. */
    bool platform_peer;
    /* The caller has more to settle before the request succeeds (a
     * gateway login): it notes the device's contact itself. */
    bool contact_by_caller;
    /* Several keys per session (docs/sessions.md, "Epochs and direction
     * keys"): ext asks for the key of epoch (>= 0) and direction ("",
     * "a2b" or "b2a") of a session that exists; v1 only (key_source 0, a
     * device peer). Without ext the request is served as it always was. */
    bool ext;
    int epoch;
    const char *direction;
} session_ask;

/* How a channel's platform side is named (session rows, logs, the admin
 * view). '@' is in no device type's name, so policies name it too. */
#define SESSION_PLATFORM_PEER "@platform"

/* A session key for one party. */
typedef struct {
    char key_id[37];
    int key_bits;
    int64_t expires_at;    /* Unix seconds */
    char delivery[16];     /* "session" or "delivered" */
    bool created;          /* this request created the session */
    char policy[65];       /* the pairing policy that allowed it */
    uint8_t *key;          /* key_len = key_bits / 8 bytes, secure heap */
    size_t key_len;
    /* How this answer gives the key (v2): 'a' or 'b' when this request
     * created the session from its own randoms (sr: the server random of
     * 'a', secure heap), else 'c' (the key itself). */
    char key_source;
    uint8_t *sr;
    /* ext requests: the key's epoch and direction, and the session's
     * current epoch. */
    bool ext;
    int epoch, current_epoch;
    char direction[4];
} session_grant;

/* The session key of ask->session_id for the device of a (creating the
 * session on the first request): QK_OK with *g filled, or e. */
qk_kind sessions_issue(qk_svc *s, const qk_principal *who, device_auth *a, const session_ask *ask,
                       session_grant *g, qk_err *e);
/* The door has sealed g for its device: count the delivery (and the
 * session, with its log line, when this request created it). Called only
 * once the answer exists, so a failed seal is not a delivery. */
void sessions_delivered(qk_svc *s, const qk_principal *who, const session_grant *g);
/* Wipe and free g's key; g is zeroed. */
void session_grant_clear(session_grant *g);

/* End session_id at a party's request, destroying its key. QK_OK or e
 * (QK_NOT_FOUND unknown_session, QK_CONFLICT session_ended, QK_FORBIDDEN
 * not_a_party, or a 401). ts as in session_ask. */
qk_kind sessions_end(qk_svc *s, const qk_principal *who, device_auth *a, const char *session_id,
                     int64_t ts, qk_err *e);

/* End every live session of the device of a at its request (a power-down,
 * docs/protocol.md "Ending every session"), and all its key streams
 * (streams.h), in one transaction: QK_OK with *ended and *streams_ended the
 * numbers ended (0 is fine), or a 401 (device_auth_fail). A
 * suspended device may still do it. ts as in session_ask. */
qk_kind sessions_end_all(qk_svc *s, const qk_principal *who, device_auth *a, int64_t ts,
                         int *ended, int *streams_ended, qk_err *e);

/* One reaper pass, one transaction: up to SESSION_REAP_BATCH sessions whose
 * reap_at has come are destroyed (past their idle timeout or lifetime) or
 * given a later reap_at; old nonces and tombstones are purged. Returns the
 * number destroyed, or -1; *examined (if not NULL) is how many it took, so
 * SESSION_REAP_BATCH means more may be due. */
#define SESSION_REAP_BATCH 1000
int sessions_reap(qk_svc *k, int *examined);

/* ---- the operator's view ---------------------------------------------------- */

typedef struct {
    const char *device; /* a party, or NULL */
    const char *state;  /* "pending", "active", "ended" (tombstones) or NULL */
    long limit;         /* 1..1000 */
} session_filter;

/* Sessions matching f, newest first, as the admin API's JSON array:
 * QK_OK with *out (caller decrefs), or QK_MALFORMED invalid_query. */
qk_kind sessions_list(qk_svc *s, const session_filter *f, json_t **out, qk_err *e);
/* The live session of that ID or else its tombstone: QK_OK with *out, or
 * QK_NOT_FOUND not_found. */
qk_kind sessions_get(qk_svc *s, const char *session_id, json_t **out, qk_err *e);
/* End a live session on an operator's word (who: the admin principal, the
 * actor recorded): QK_OK, or QK_NOT_FOUND not_found. */
qk_kind sessions_end_by_operator(qk_svc *s, const qk_principal *who, const char *session_id,
                                 qk_err *e);

#endif
