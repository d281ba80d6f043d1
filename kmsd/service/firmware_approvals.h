/*
 * firmware_approvals — two distinct approvers before a release is signed
 * (schema/038; docs/api.md "Release approvals"), for the products whose
 * rule asks for it.
 *
 * Contract:
 *  - A product's rule: 1 (the default: the release token that signs) or 2
 *    approvals; set by an admin, audited (firmware.approval_rule).
 *  - Under rule 2 a release token requests approval of exactly what will
 *    be signed — version, image size and SHA-256, targets (as sets),
 *    counter and not_before (each fixed, or left to the signature) — and a
 *    second release token, not the requester, approves it within
 *    FIRMWARE_APPROVAL_HOURS. Signing names the approval; the signature's
 *    transaction checks it against the request (firmware_approval_use) and
 *    uses it up with the release row. The image itself is never stored.
 *  - Requests, approvals and their use are audited
 *    (firmware.approval_requested, firmware.approved,
 *    firmware.approval_used with the package ID and both approvers, in
 *    the signature's commit).
 *  - Errors (err.h): QK_INVALID as firmware_spec_check, "invalid_approvals",
 *    "invalid_image" (size 0 or a digest that is not 64 hex digits),
 *    "unknown_approval" (no such approval for the product); QK_NOT_FOUND
 *    "not_found" (approve: no such approval); QK_CONFLICT "same_approver",
 *    "approval_approved" (approved before), "approval_used",
 *    "approval_expired", "approval_required", "approval_pending",
 *    "approval_mismatch", "approval_revoked" (the requester's or the
 *    approver's release token was revoked or expired since: approvals
 *    are people's, checked again when used); QK_UNAVAILABLE "unavailable"; QK_INTERNAL.
 */
#ifndef QKMS_FIRMWARE_APPROVALS_H
#define QKMS_FIRMWARE_APPROVALS_H

#include <stdint.h>

#include <jansson.h>

#include "err.h"
#include "service/firmware_spec.h"
#include "service/service.h"
#include "store/db.h"

#define FIRMWARE_APPROVAL_HOURS 24

/* *out {"product","approvals","updated_at","updated_by"}. */
qk_kind firmware_rule_set(qk_svc *s, const qk_principal *who, const char *product, int approvals,
                          json_t **out, qk_err *e);
/* {"products":[rule]}: the products with a rule set, by name. */
qk_kind firmware_rules_list(qk_svc *s, json_t **out, qk_err *e);

/* A request for sp (approval NULL) with the image's size and SHA-256
 * (64 hex). *out the approval's record. */
qk_kind firmware_approval_request(qk_svc *s, const qk_principal *who, const firmware_sign_spec *sp,
                                  uint64_t image_size, const char *image_sha256, json_t **out,
                                  qk_err *e);
qk_kind firmware_approval_approve(qk_svc *s, const qk_principal *who, const char *id,
                                  json_t **out, qk_err *e);
/* {"approvals":[record]}, newest first, at most 100; product NULL: all. A
 * record: {"id","product","version","image_size","image_sha256","targets",
 * "counter","not_before","state" (pending, approved, used, expired),
 * "requested_by","requested_at","approved_by","approved_at","used_at",
 * "package_id","expires_at"}. */
qk_kind firmware_approvals_list(qk_svc *s, const char *product, json_t **out, qk_err *e);

/* Inside the signature's transaction on c, under the product's lock: the
 * product's rule and sp's approval checked against sp, image_len and
 * image_sha (hex). DB_OK with *refused false: go on (*approved_by the
 * second approver, or "" without an approval); with *refused true: *e
 * says why, nothing is to be written. Else the failure. */
db_status firmware_approval_check(db_conn *c, const firmware_sign_spec *sp, uint64_t image_len,
                                  const char *image_sha, char approved_by[129], char requested_by[129],
                                  bool *refused, qk_err *e);
/* After the release row: the approval used for package_id. */
db_status firmware_approval_use(db_conn *c, const char *approval, const char *package_id,
                                qk_err *e);

#endif
