/*
 * firmware_groups — groups' firmware keys (schema/036; docs/firmware.md
 * "Group targets"; docs/api.md "Group firmware keys"): a package for a
 * group of devices wraps its content key under the group's key, which each
 * device of the group receives in its fill document.
 *
 * Contract:
 *  - A key is 32 bytes from the entropy interface with a random 16-byte
 *    key ID, stored only wrapped under the active master key in the
 *    context firmware_group_key_context(group, key ID hex); it is in
 *    kmsd's memory (secure heap, wiped) only while a fill or a signature
 *    uses it, and leaves kmsd only inside a fill document.
 *  - One active key per group, at most FIRMWARE_GROUP_MAX_KEYS in all:
 *    firmware_groups_rotate makes a new active key and keeps the old one as
 *    'previous' (packages are wrapped for every key of the group, so
 *    devices filled before the rotation still open them) until
 *    firmware_groups_destroy deletes it. Each change commits with its
 *    audit row (firmware.group_key_created, .group_key_rotated,
 *    .group_key_destroyed) under the group's advisory lock.
 *  - Generation and wrapping happen before the transaction; a transaction
 *    refused because another instance retired the master version is run
 *    again once, wrapped under the new one.
 *  - Errors (err.h): QK_INVALID "invalid_group", "invalid_key_id";
 *    QK_NOT_FOUND "not_found"; QK_CONFLICT "conflict" (create: the group
 *    has a key), "too_many_keys", "key_active" (destroy: rotate first);
 *    QK_UNAVAILABLE "entropy_unavailable", "token_unavailable",
 *    "unavailable"; QK_INTERNAL.
 */
#ifndef QKMS_FIRMWARE_GROUPS_H
#define QKMS_FIRMWARE_GROUPS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "err.h"
#include "service/service.h"
#include "store/db.h"

#define FIRMWARE_GROUP_MAX_KEYS 4
/* One key as firmware_group_keys_get hands it out: key (32) || key ID (16). */
#define FIRMWARE_GROUP_ENTRY 48

/* The wrap context of a group's key ("qkms-fw-group:<group>:<key ID hex>");
 * the signature rotation.c's rewrap expects. -1 if out is too short. */
int firmware_group_key_context(const char *group, const char *key_id_hex, char *out, size_t len);

/* *out = the new key's record (as in the list). */
qk_kind firmware_groups_create(qk_svc *s, const qk_principal *who, const char *group,
                               json_t **out, qk_err *e);
qk_kind firmware_groups_rotate(qk_svc *s, const qk_principal *who, const char *group,
                               json_t **out, qk_err *e);
qk_kind firmware_groups_destroy(qk_svc *s, const qk_principal *who, const char *group,
                                const char *key_id_hex, qk_err *e);
/* {"keys":[{"group","key_id","state","master_version","created_at",
 * "created_by","superseded_at"}]}, by group, active first; group NULL:
 * every group. */
qk_kind firmware_groups_list(qk_svc *s, const char *group, json_t **out, qk_err *e);

/* On the caller's connection (inside its transaction): the group's keys,
 * unwrapped, into keys (max * FIRMWARE_GROUP_ENTRY bytes, the caller's
 * secure heap), the active one first, at most max (1: the active one
 * alone, for a fill; FIRMWARE_GROUP_MAX_KEYS: every one, for a package);
 * *n how many (0: the group has none). DB_OK, or the failure with *e. */
db_status firmware_group_keys_get(qk_svc *s, db_conn *c, const char *group, size_t max,
                                  uint8_t *keys, size_t *n, qk_err *e);

#endif
