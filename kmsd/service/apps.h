/*
 * apps — the owners of gateways (issue 18, seed 004; docs/gateways.md
 * "Owners, binding, reset"). An app is an owner's account, a phone app's
 * back end: it authenticates with tokens of role "app" (auth.h), and
 *  - registers devices on an owner's behalf within its enroller scope (the
 *    types it may register, into its group); their keys leave only as a
 *    fill package sealed to the device's own public key, which the app
 *    cannot open;
 *  - binds a gateway by proving local access to it: a hash of the
 *    gateway's verification code and a platform random (one-time,
 *    expiring), answered bound, or already_bound without naming the owner;
 *  - sees only the devices it owns and their sub-devices, and asks for the
 *    rotation (re-registration) of its gateways' keys.
 * A gateway's verification code is derived from its newest access key
 * (apps_verification_code), so the gateway computes it alone and a new key
 * brings a new code.
 *
 * Contract: every change commits with its audit row (actor: the app's
 * name). Errors: QK_NOT_FOUND "not_found" (also a device the app does not
 * own: its existence is not the app's business), QK_CONFLICT "conflict",
 * "already_bound", "invalid_state"; QK_FORBIDDEN "out_of_scope";
 * QK_UNAUTHENTICATED "bind_failed"; QK_INVALID; the usual QK_UNAVAILABLE.
 */
#ifndef QKMS_APPS_H
#define QKMS_APPS_H

#include <stdbool.h>

#include <jansson.h>

#include "err.h"
#include "service/device_model.h"
#include "service/service.h"

#define APP_NAME_MAX 48
#define APP_SCOPE_TYPES_MAX 16
#define APP_VERIFICATION_CODE_LEN 10
#define APP_CHALLENGE_TTL_S 300

typedef struct {
    long long id;
    char name[APP_NAME_MAX + 1];
    char actor[APP_NAME_MAX + 5]; /* "app/NAME": its audit rows' actor ('/' is in no
                                   * token name or device ID) */
    char types[APP_SCOPE_TYPES_MAX][DEVICE_TYPE_MAX + 1];
    int ntypes;
    char group[DEVICE_GROUP_MAX + 1]; /* "" : it registers nothing */
} app_account;

bool app_name_valid(const char *s);

/* The live app of a live token (its id, auth_principal.id):
 * QK_UNAUTHENTICATED "unauthenticated" when the app was revoked. */
qk_kind apps_of_token(qk_svc *s, long long token_id, app_account *out, qk_err *e);

/* A new app with its first token: *out = {"name", "enroll_types",
 * "enroll_group", "self_registered", "token"} (the token shown once).
 * types/group checked by the caller. QK_CONFLICT "conflict" (the name). */
qk_kind apps_create(qk_svc *s, const qk_principal *who, const char *name,
                    const char *const *types, int ntypes, const char *group, bool self_registered,
                    json_t **out, qk_err *e);
/* Another token for a live app: *out = {"name", "token"}. */
qk_kind apps_token_new(qk_svc *s, const qk_principal *who, const char *name, json_t **out,
                       qk_err *e);
/* {"apps": [{"name", "enroll_types", "enroll_group", "self_registered",
 * "created_at", "created_by", "revoked_at", "devices"}]} */
qk_kind apps_list(qk_svc *s, json_t **out, qk_err *e);
/* Revoke an app, its tokens and its bindings (audited app.revoked). */
qk_kind apps_revoke(qk_svc *s, const qk_principal *who, const char *name, qk_err *e);

/* Whether the app owns device_id (itself, or its gateway): QK_OK or
 * QK_NOT_FOUND. With registered, also that the app registered it itself
 * (an enroller's device): QK_FORBIDDEN "out_of_scope" for one it only
 * bound, since new keys sealed to a key the app names would reach the app. */
qk_kind apps_owns(qk_svc *s, const app_account *app, const char *device_id, bool registered,
                  qk_err *e);
/* {"devices": [device summaries with "owned": "registered" | "bound" |
 * "via_parent"]} */
qk_kind apps_devices(qk_svc *s, const app_account *app, json_t **out, qk_err *e);
/* Check row against the app's enroller scope and mark it the app's: its
 * group is the app's; a parent must be one the app registered (the
 * registration's transaction checks again: devices.c). QK_FORBIDDEN
 * "out_of_scope"; QK_NOT_FOUND for a parent it does not own. */
qk_kind apps_scope_check(qk_svc *s, const app_account *app, device_spec *spec, qk_err *e);

/* The verification code of device_id: APP_VERIFICATION_CODE_LEN characters
 * of RFC 4648 base32 of HMAC-SHA-256(newest live access key,
 * "qkms/v1/verification-code\n" || device_id || "\n" || bind epoch), the
 * epoch moving on at each reset. QK_NOT_FOUND; QK_CONFLICT "invalid_state"
 * when it has no live access key. With who, the read is audited
 * (device.verification_code_read). */
qk_kind apps_verification_code(qk_svc *s, const qk_principal *who, const char *device_id,
                               char out[APP_VERIFICATION_CODE_LEN + 1], qk_err *e);
/* A challenge for binding device_id: *out = {"challenge_id", "device_id",
 * "random" (base64url of 32 bytes), "expires_at"}, whether or not such a
 * device exists (one that does not, or cannot be bound, fails the bind). */
qk_kind apps_bind_challenge(qk_svc *s, const app_account *app, const char *device_id,
                            json_t **out, qk_err *e);
/* Bind with a challenge and proof = base64url(SHA-256("qkms/v1/bind\n" ||
 * code || "\n" || random)), the challenge used up whatever the outcome:
 * *out = {"device_id", "bound": true}; QK_CONFLICT "already_bound";
 * QK_UNAUTHENTICATED "bind_failed". */
qk_kind apps_bind(qk_svc *s, const app_account *app, const char *challenge_id, const char *proof,
                  json_t **out, qk_err *e);

#endif
