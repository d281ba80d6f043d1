/*
 * device_fill — `kmsctl device fill ID (--recipient-pub PEMFILE |
 * --plaintext) --out FILE [--index N]... [--force]`:
 * POST /v1/admin/devices/ID/fill, result written to FILE.
 *
 * Everything that can be checked locally is, before the request: the ID,
 * the indices, that the PEM file holds an X25519 or P-256 public key, and
 * that FILE can be created (it is created then, so a file that appears
 * meanwhile cannot be overwritten). After the answer the package must be
 * valid base64 of a qkms fill package, sealed to the key we sent (the
 * server's recipient_fingerprint must match ours); otherwise FILE is
 * removed and the exit status is EXIT_SERVER.
 */
#ifndef KMSCTL_DEVICE_FILL_H
#define KMSCTL_DEVICE_FILL_H
#include "args.h"
#include "context.h"

extern const struct opt_spec device_fill_opts[];
int device_fill_run(const struct kmsctl_ctx *ctx, const struct invocation *inv);

#endif
