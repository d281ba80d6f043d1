/*
 * firmware_sign — signing a release into a firmware package
 * (docs/firmware.md; docs/api.md "Signing releases"): the manifest signed
 * in the token by the product's active firmware key, the counter decided
 * and recorded (firmware_releases, schema/035) with its audit row, the
 * content key wrapped for each target device under a key derived from its
 * newest device key; the package then produced as it is sent.
 *
 * Contract:
 *  - The image is held once: firmware_sign takes it over (on every path;
 *    wiped and freed with the package or at once on a refusal) and the
 *    package's chunks are encrypted from it one at a time as they are read
 *    (firmware_package_read), so kmsd holds the image and one chunk.
 *  - Counters: a given counter must be above the product's last signed one
 *    (409 "counter_rollback"); without one, the last + 1. Decided under
 *    the product's lock and committed with the release row before a byte
 *    of the package exists: a package whose answer was lost is signed again
 *    with the next counter.
 *  - Targets: devices (the content key wrapped under a key derived from
 *    each one's newest device key) and groups (wrapped under each of the
 *    group's firmware keys, firmware_groups.h: the active one and the
 *    previous ones not yet destroyed).
 *  - Nothing is signed when a check fails: the targets' keys are read
 *    before the manifest is signed. Errors (err.h): QK_INVALID
 *    "invalid_product", "invalid_version", "invalid_counter",
 *    "invalid_not_before", "invalid_targets", "unknown_device" (no active
 *    device of that ID with a usable key), "invalid_image" (empty);
 *    QK_CONFLICT "no_firmware_key", "no_group_key", "counter_rollback",
 *    and the approvals' (firmware_approvals.h: QK_CONFLICT
 *    "approval_required", "approval_pending", "approval_used",
 *    "approval_expired", "approval_mismatch", "approval_revoked";
 *    QK_INVALID "unknown_approval"); QK_UNAVAILABLE
 *    "token_unavailable", "entropy_unavailable", "unavailable"; QK_INTERNAL.
 */
#ifndef QKMS_FIRMWARE_SIGN_H
#define QKMS_FIRMWARE_SIGN_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "err.h"
#include "service/firmware_spec.h"
#include "service/service.h"

#define FIRMWARE_CHUNK 65536u

typedef struct firmware_package firmware_package;

/* Sign image (image_len bytes, malloc'd; taken over, see the contract) per
 * sp: *out the package to read, *info {"product","version","counter",
 * "package_id","image_size","image_sha256","signer","package_size"}. */
qk_kind firmware_sign(qk_svc *s, const qk_principal *who, const firmware_sign_spec *sp,
                      uint8_t *image, size_t image_len, firmware_package **out, json_t **info,
                      qk_err *e);
uint64_t firmware_package_size(const firmware_package *p);
/* Bytes of the package from pos (read in order), up to max: how many, or
 * -1 when the crypto library failed. ctx is the firmware_package. */
long firmware_package_read(void *ctx, uint64_t pos, char *buf, size_t max);
/* Wipes and frees the package (and the image); ctx as above. */
void firmware_package_free(void *ctx);

#endif
