/*
 * policies — pairing policies: which device types (within a group, or
 * across two named groups) may share session keys, with the keys' size,
 * idle timeout, lifetime and delivery mode. The session service
 * (sessions.h) reads them in the database when it pairs two devices; this
 * module keeps the list.
 *
 * Contract:
 *  - A policy is valid when: its name follows names.h (at most 64); type_a
 *    and type_b are "*" or registered device types (a typo would make a
 *    policy that never matches); group_a and group_b are both absent
 *    (same-group policy) or both groups (cross-group); delivery is
 *    "session" (default) or "delivered"; key_bits is 128 (default) or 256;
 *    idle_timeout_s 1..86400 (default 300); max_lifetime_s 1..604800
 *    (default 3600); max_epochs and epoch_grace_s as in policy_spec.
 *    Anything else is QK_INVALID "invalid_policy".
 *  - Adding and removing commit with their audit row ("policy.added",
 *    "policy.removed"; actor who->name).
 *  - Errors (err.h; e must not be NULL): QK_INVALID "invalid_policy";
 *    QK_CONFLICT "conflict" (the name exists); QK_NOT_FOUND "not_found";
 *    QK_UNAVAILABLE "unavailable" (Retry-After 1); QK_INTERNAL.
 */
#ifndef QKMS_POLICIES_H
#define QKMS_POLICIES_H

#include <stdbool.h>

#include <jansson.h>

#include "err.h"
#include "service/service.h"

/* An optional integer: set = false means "the default". */
typedef struct {
    bool set;
    long long v;
} policy_int;

typedef struct {
    const char *name;
    const char *type_a, *type_b;   /* "*" or a device type */
    const char *group_a, *group_b; /* NULL, NULL = same-group policy */
    const char *delivery;          /* NULL = "session" */
    policy_int key_bits, idle_timeout_s, max_lifetime_s;
    /* Protocol v2's key sources the policy allows (docs/protocol.md, "Key
     * sources"): some of 'a', 'b', 'c', each once, e.g. "ac"; NULL = all. */
    const char *key_sources;
    /* "parent": a family policy (docs/gateways.md), pairing a sub-device
     * with its own gateway only, whatever their groups; NULL or "groups":
     * the group rules above. */
    const char *scope;
    /* Several keys per session (docs/sessions.md, "Epochs and direction
     * keys"): max_epochs 1..1000000 (default 1: the first key only),
     * directions (direction keys allowed; default false), epoch_grace_s
     * 0..86400 (default 60: how long an older epoch's keys outlive the move
     * to a newer one, at most). */
    policy_int max_epochs, epoch_grace_s;
    bool directions;
    /* Re-keying (max_epochs above 1): a session moves to its next epoch
     * once the current one is rekey_after_s old (1..604800) or its keys
     * were delivered rekey_after_deliveries times (2..1000000000); unset:
     * never by itself. */
    policy_int rekey_after_s, rekey_after_deliveries;
    /* Key streams (streams.h): how far above the lowest key not yet
     * consumed a party may ask, 1..1024 (default 16). */
    policy_int stream_window;
} policy_spec;

/* {"policies": [{"name", "type_a", "type_b", "group_a", "group_b",
 * "key_bits", "idle_timeout_s", "max_lifetime_s", "delivery", "created_at",
 * "created_by", "scope" (same-group, cross-group, platform or parent),
 * "key_sources", "max_epochs", "directions", "epoch_grace_s", "rekey_after_s",
 * "rekey_after_deliveries" (null: none), "stream_window"}, ...]} by name. */
qk_kind policies_list(qk_svc *s, json_t **out, qk_err *e);
qk_kind policies_add(qk_svc *s, const qk_principal *who, const policy_spec *p, qk_err *e);
/* A name that cannot be a policy's is QK_NOT_FOUND too. */
qk_kind policies_remove(qk_svc *s, const qk_principal *who, const char *name, qk_err *e);

#endif
