/*
 * firmware_verify — checking a firmware package as its targets would
 * (docs/api.md "Checking a package"; docs/firmware.md): the platform is
 * the one party that holds a key of every target, so it can tell a release
 * engineer whether a package is one it signed, whole and untouched, before
 * it goes out.
 *
 * Contract:
 *  - The package is looked up by its package ID (clear, in the header) in
 *    firmware_releases; then opened with the device library's streaming
 *    opener (device/qkms_fw.h), exactly as a device would, under each of
 *    the release's target groups' firmware keys and then each target
 *    device's keys, with every certificate of the product pinned, no
 *    counter and no clock. The opened manifest must match the recorded
 *    release (counter, version, image size and SHA-256, signer).
 *  - The package is taken over (wiped and freed on every path); image
 *    bytes are hashed and dropped, never copied. Keys are in the secure
 *    heap only while a check runs.
 *  - A package that fails a check is an answer, not an error: *out
 *    {"valid":false,"check","message"} where check is the first failed
 *    check's name (docs/firmware.md: "format", "not_a_target", "auth",
 *    "manifest", "signature", "product", "image") or "unknown_package" (no
 *    release of that ID was signed here) or "record" (it opens but differs
 *    from the recorded release). A package that passes: {"valid":true,
 *    "package_id","product","version","counter","image_size",
 *    "image_sha256","signer","not_before","targets","opened_with",
 *    "signed_by","signed_at"}.
 *  - Errors (err.h): QK_UNAVAILABLE "token_unavailable", "unavailable";
 *    QK_INTERNAL.
 */
#ifndef QKMS_FIRMWARE_VERIFY_H
#define QKMS_FIRMWARE_VERIFY_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "err.h"
#include "service/service.h"

/* What a package takes over its image, at most: the header (40 + 80 per
 * recipient, 500 recipients), the manifest and signature (64 KiB + 78),
 * a tag per 64 KiB chunk (1 MiB for the largest upload allowed, 4 GiB). */
#define FIRMWARE_PACKAGE_ROOM (2u << 20)

qk_kind firmware_verify(qk_svc *s, const qk_principal *who, uint8_t *pkg, size_t len,
                        json_t **out, qk_err *e);

#endif
