/*
 * devices — the device registry: registering devices (one or a batch) with
 * their pre-filled keys, reading and listing them, their lifecycle
 * (suspend, resume, revoke) and the device types. Key material lives in
 * device_keys.h (generation, rotation), the fill export in device_fill.h.
 *
 * Contract:
 *  - Every operation returns a qk_kind (QK_OK = 0) and on failure fills *e
 *    (err.h; e must not be NULL) with a stable code: not_found, conflict,
 *    invalid_state, unavailable (Retry-After 1), token_unavailable,
 *    entropy_unavailable, internal.
 *  - Changes are made for a principal (who->name is the actor in audit
 *    rows and the "by" of log lines, who->log the request's context) and
 *    commit in one transaction with their audit_log rows.
 *  - Registration makes and wraps every key before the transaction, so a
 *    retried transaction never calls the token or the entropy sources.
 *  - A change to a device drops its key cache entry (keycache.h).
 *  - Results are JSON records in the shape of the admin API (docs/api.md);
 *    the caller owns them.
 */
#ifndef QKMS_DEVICES_H
#define QKMS_DEVICES_H

#include <stdbool.h>

#include <jansson.h>

#include "err.h"
#include "service/device_model.h"
#include "service/service.h"
#include "store/db.h"

/* One row of a registration batch. */
typedef struct {
    device_spec spec;
    const char *code; /* validation failure (set by the caller) or NULL */
    long long owner_app; /* an app registering it for its owner (apps.h), or 0 */
    char message[200];
    /* filled by devices_register */
    const char *db_code;
    char db_message[200];
    bool created;
    char service_until[32]; /* RFC 3339, "" for no end: set when created */
    char *wrapped_hex[DEVICE_MAX_KEYS];
    int master_version[DEVICE_MAX_KEYS];
    const char *provenance;
    char key_alg[8]; /* its keys' algorithm, by its type's suite (devices_register) */
} device_reg;

/* Register a batch (rows whose code is set are skipped; rows refused here
 * get code or db_code). On QK_OK the batch committed and each row says
 * created or why not; on failure nothing was written. Frees the rows'
 * wrapped keys before returning. */
qk_kind devices_register(qk_svc *s, const qk_principal *who, device_reg *rows, int n, qk_err *e);
/* Why a row was not registered, as an error: QK_CONFLICT for "conflict",
 * QK_INVALID for any other code; QK_OK when it was created. */
qk_kind devices_row_err(const device_reg *row, qk_err *e);

/* The device record, with its keys when with_keys (and their KCVs when
 * with_kcv, which unwraps each live key). QK_NOT_FOUND "not_found". */
qk_kind devices_get(qk_svc *s, const char *device_id, bool with_keys, bool with_kcv, json_t **out,
                    qk_err *e);

typedef struct {
    const char *type, *group, *state, *after; /* NULL = any */
    int expiring_within;                      /* days; -1 = no filter */
    int limit;
    const char *parent; /* NULL = any; else the sub-devices of that gateway */
    json_t *attrs;      /* NULL = any; else attributes the device has (normal forms) */
    int never_seen;     /* -1 = any; 1 = never heard from; 0 = heard from at least once */
    const char *seen_since; /* NULL = any; else heard from at or after this time (RFC 3339) */
} device_filter;
/* {"devices": [...], "next": <last device_id when the page is full, or null>} */
qk_kind devices_list(qk_svc *s, const device_filter *f, json_t **out, qk_err *e);

typedef enum { DEVICE_SUSPEND, DEVICE_RESUME, DEVICE_REVOKE } device_action;
/* Suspend (from active), resume (from suspended) or revoke (from either).
 * Revoking destroys the device's key material and ends its sessions. A
 * gateway's sub-devices follow it in the same transaction, each with its
 * own audit row (cascade_from): suspended with it, resumed with it when
 * they were suspended with it, revoked with it. QK_NOT_FOUND, or
 * QK_CONFLICT "invalid_state" from any other state, or for resuming a
 * sub-device whose gateway is not active. */
qk_kind devices_set_state(qk_svc *s, const qk_principal *who, const char *device_id,
                          device_action a, qk_err *e);

/* Change a device's attributes (device_attrs.h): the names in unset go,
 * set's members (normal forms: device_attrs_check) are written over, in
 * one transaction with its audit row (device.attributes_set). QK_NOT_FOUND;
 * QK_CONFLICT "conflict" (another device of its type has that mac or sn);
 * QK_INVALID "invalid_attributes" (too many or too long in all). */
qk_kind devices_set_attributes(qk_svc *s, const qk_principal *who, const char *device_id,
                               const json_t *set, const json_t *unset, qk_err *e);

/* In c's transaction, lock device_id's row for a change to it: its row id
 * (decimal) in pk. DB_OK; DB_NOT_FOUND with e QK_NOT_FOUND "not_found";
 * DB_INVALID with e QK_CONFLICT "invalid_state" when it is revoked. */
db_status devices_lock_live(db_conn *c, const char *device_id, char pk[24], qk_err *e);

/* {"types": [names in order], "key_purposes": {name: [purpose of index 0,
 * 1, ...]}, "service_days": {name: days or null}, "suites": {name: "aes" or
 * "sm4"}} (an empty template: every key generic; null: no end of service). */
qk_kind device_types_list(qk_svc *s, json_t **out, qk_err *e);
/* Whether name is a registered device type (*known). */
qk_kind device_types_has(qk_svc *s, const char *name, bool *known, qk_err *e);
/* Add a type (name checked by the caller: device_type_name_valid) with its
 * key template: purposes[i] is the purpose of key index i (none: generic
 * keys), and its devices' default service length (service_days 0: no end;
 * else 1..DEVICE_SERVICE_DAYS_MAX, checked by the caller), and its suite
 * ("aes", the default for NULL, or "sm4": docs/protocol.md "Suites").
 * QK_CONFLICT "conflict" when it exists; QK_INVALID "invalid_key_purposes",
 * "invalid_type" (another suite). */
qk_kind device_types_add(qk_svc *s, const qk_principal *who, const char *name,
                         const char *const *purposes, int npurposes, int service_days,
                         const char *suite, qk_err *e);

#endif
