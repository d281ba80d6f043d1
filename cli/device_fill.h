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
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "args.h"
#include "context.h"

extern const struct opt_spec device_fill_opts[];

/* A provisioning station's public key, read from a PEM file. */
struct fill_recipient {
    char *pem; /* owned (free): the file's content, sent as is */
    size_t pem_len;
    int curve; /* FILLPKG_CURVE_* */
    char fingerprint[65];
};
/* Read and check the key (X25519 or P-256): EXIT_OK, or a printed error. */
int fill_recipient_load(const char *path, struct fill_recipient *r);
/* The PEM as a JSON string for "recipient_pub" (NULL, printed, if not UTF-8). */
json_t *fill_recipient_json(const struct fill_recipient *r);
/* The package of an answer ("package", "recipient_fingerprint"): base64
 * of a fill package sealed to r's key, else EXIT_SERVER (printed). *pkg is
 * the caller's (free). */
int fill_package_decode(const struct fill_recipient *r, const json_t *resp, uint8_t **pkg,
                        size_t *len);
int device_fill_run(const struct kmsctl_ctx *ctx, const struct invocation *inv);

#endif
