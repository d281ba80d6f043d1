/*
 * gateway_login — a gateway's login to the platform (issue 18, seed 004;
 * docs/gateways.md "Login"): its account (tid and password), sealed under
 * its access key, buys a session key shared with the platform that differs
 * at every login; logout ends it. The door (api/device_v1.c) opens the
 * envelope through device_auth and seals the answer; this module judges
 * the account and keeps one live login per gateway.
 *
 * A login is a session with the platform as its peer (sessions.h,
 * platform_peer) under a session ID the platform chooses (the login ID, a
 * UUID): a pairing policy between the gateway's type and '@platform' must
 * allow it (its key length and timeouts are the login's), and it ends as
 * sessions end, with a tombstone: 'logout', 'superseded' (the next login),
 * the policy's timeouts, revocation.
 *
 * Contract:
 *  - The login's first step is one transaction before any password is
 *    hashed (qkms_gateway_login_begin): the request's authentication, its
 *    ts and its nonce (recorded: a replayed or stale request never costs a
 *    hash), the key's purpose (only an access key logs in or out; else the
 *    one 401 of device_auth_fail), the device's standing (device_inactive,
 *    service_expired as for sessions, whatever the password), the account
 *    (QK_FORBIDDEN "no_credential") and its lock (QK_FORBIDDEN
 *    "login_locked", Retry-After). The attempt is counted there, so the
 *    attempts in flight together never check more than
 *    gateway_login_max_failures passwords per lock.
 *  - At most gateway_login_concurrency passwords are hashed at once; a
 *    login over it is QK_UNAVAILABLE (Retry-After 1) before its nonce is
 *    used.
 *  - A wrong tid or password is QK_UNAUTHENTICATED "login_failed" (audited
 *    gateway.login_failed); the one that reaches the limit locks the
 *    account for gateway_login_lockout seconds (gateway.login_locked) and
 *    is answered login_locked. A right one makes the login's session, then
 *    makes it the gateway's one login if the account is still the one the
 *    password matched (else login_failed, and the new key is destroyed).
 *  - policy_denied (and the rest of sessions_issue's refusals) when no
 *    policy allows the gateway's type a channel with '@platform'.
 *  - gateway_credential_set replaces the account (a new salt and hash),
 *    unlocks it and ends its current login, audited; the password never
 *    reaches the database, the log or the audit row. The device must have
 *    a live access key.
 */
#ifndef QKMS_GATEWAY_LOGIN_H
#define QKMS_GATEWAY_LOGIN_H

#include <stddef.h>
#include <stdint.h>

#include "err.h"
#include "service/device_auth.h"
#include "service/service.h"
#include "service/sessions.h"

#define GATEWAY_TID_MAX 64

typedef struct {
    const char *tid;
    const uint8_t *password;
    size_t password_len;
    int64_t ts; /* the request's time (the database judges it) */
} login_ask;

/* Log the gateway of a in: QK_OK with login_id (a UUID) and *g (the login
 * key, sessions.h) filled, or e. */
qk_kind gateway_login(qk_svc *s, const qk_principal *who, device_auth *a, const login_ask *ask,
                      char login_id[37], session_grant *g, qk_err *e);
/* End its current login: QK_OK, QK_NOT_FOUND "no_login", or a 401. */
qk_kind gateway_logout(qk_svc *s, const qk_principal *who, device_auth *a, int64_t ts, qk_err *e);

/* The gateway's reset at its own request (under its access key; the nonce
 * recorded first): every binding of it and its sub-devices to an owner
 * goes (apps.h), every session of it ends (tombstone "reset", its login
 * with them), its bind epoch moves on (a new verification code), audited
 * gateway.reset. QK_OK with how many of each and the new epoch, or a 401. */
qk_kind gateway_reset(qk_svc *s, const qk_principal *who, device_auth *a, int64_t ts,
                      int *unbound, int *ended, int *epoch, qk_err *e);

/* Whether tid is a valid account name: 1-64 printable ASCII, no space. */
bool gateway_tid_valid(const char *tid);
/* Set device_id's account (admin). QK_NOT_FOUND; QK_CONFLICT "conflict"
 * (another device has that tid), "invalid_state" (revoked, or no live
 * access key); QK_INVALID "invalid_credential" (tid or password out of
 * bounds). */
qk_kind gateway_credential_set(qk_svc *s, const qk_principal *who, const char *device_id,
                               const char *tid, const uint8_t *password, size_t password_len,
                               qk_err *e);

#endif
