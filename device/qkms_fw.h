/*
 * qkms_fw — opening firmware packages on the device (docs/firmware.md is
 * the format, byte for byte; tests/vectors/firmware-v1.json the vectors):
 * the content key unwrapped with one of the device's keys or one of its
 * groups' firmware keys, the body opened chunk by chunk, the manifest's
 * signature checked against the pinned firmware certificates, then product,
 * target, anti-rollback counter and not_before, then the image's size and
 * SHA-256.
 *
 * Contract:
 *  - The checks run in the documented order; the first that fails ends
 *    the open with QKD_ERR_INPUT and an err that starts with its name
 *    ("format", "not_a_target", "auth", "manifest", "signature",
 *    "product", "rollback", "not_yet", "image"); QKD_ERR_INTERNAL is the
 *    crypto library or memory failing. A stream that failed stays failed.
 *  - No image byte reaches the caller before the manifest passed its
 *    checks and the chunk holding it authenticated. The stream's sink gets
 *    image bytes chunk by chunk; the image's hash is known only at
 *    qkd_firmware_stream_final, so they go to a staging area until it
 *    succeeds. qkd_firmware_open (whole package in memory) hands out the
 *    image only when everything passed.
 *  - The content key lives in the secure heap and is wiped when the
 *    stream is freed; buffers that held plaintext are wiped too. RAM of a
 *    stream: one chunk (chunk_size + 16) and the manifest (64 KiB at most).
 *  - Storing the counter after a successful open is the caller's (it must
 *    be written before the new image boots, where it cannot be rolled
 *    back).
 */
#ifndef QKMS_FW_H
#define QKMS_FW_H

#include <stddef.h>
#include <stdint.h>

#include "qkms_device.h"

#define QKF_MAGIC "QKMSFW01"
#define QKF_VERSION 1
#define QKF_SUITE 1
#define QKF_FIXED_LEN 40
#define QKF_RECIPIENT_LEN 80
#define QKF_KIND_GROUP 1
#define QKF_KIND_DEVICE 2
#define QKF_TAG_LEN 16
#define QKF_CHUNK_MIN 1024u
#define QKF_CHUNK_MAX (1u << 20)
#define QKF_MANIFEST_MAX 65536u
#define QKF_SIG_MAX 72u
#define QKF_BODY_MAX (UINT64_C(1) << 40)
#define QKF_COUNTER_MAX ((UINT64_C(1) << 53) - 1)

/* A group's firmware key, as the device keeps it. */
typedef struct {
    char group[65];
    uint8_t key_id[16];
    uint8_t key[32];
} qkd_firmware_group_key;

/* What the device checks a package against. */
typedef struct {
    const qkd_device *device;               /* its keys (kind 2); may be NULL */
    const qkd_firmware_group_key *groups;   /* its groups' keys (kind 1) */
    size_t ngroups;
    const char *product;                    /* its product line */
    uint64_t counter;                       /* the highest installed: accept above it */
    int64_t now;                            /* Unix seconds; < 0: no clock, no not_before check */
    const uint8_t *const *certs;            /* the pinned firmware certificates, DER */
    const size_t *cert_lens;
    size_t ncerts;
} qkd_firmware_policy;

/* The manifest of a package that opened. */
typedef struct {
    char product[65];
    char version[65];
    uint64_t counter;
    uint64_t image_size;
    uint8_t image_sha256[32];
    int64_t not_before;
    char package_id[37];
    uint8_t signer[32];
    int kind;        /* which recipient entry unwrapped the key: QKF_KIND_* */
    char group[65];  /* kind 1: the group */
} qkd_firmware_manifest;

/* A device recipient's KEK and kek_id for device key dkey (16 or 32 bytes)
 * in the package package_id (docs/firmware.md, "Header"): the signer wraps
 * with them, the device finds and unwraps its entry with them. QKD_OK or
 * QKD_ERR_INTERNAL. */
int qkd_firmware_device_kek(const uint8_t *dkey, size_t len, const uint8_t package_id[16],
                            const char *device_id, uint8_t kek[32], uint8_t kek_id[16]);

/* The group firmware key of a fill document (its member
 * "firmware_group_key", docs/devices.md), or of a document that is that
 * member alone: {"group","key_id" (32 hex),"key" (64 hex)}. QKD_OK with
 * *found 1 and *g filled (the caller wipes it), QKD_OK with *found 0 when
 * the document has neither the member nor "key_id"; QKD_ERR_INPUT when text is not JSON or the
 * member is malformed. The parsed key's hex is wiped from jansson's tree
 * (its parser buffers: see qkms_device.h). */
int qkd_firmware_group_key_load(const char *text, size_t len, qkd_firmware_group_key *g,
                                int *found, char *err, size_t errlen);

typedef struct qkd_firmware_stream qkd_firmware_stream;
/* Receives image bytes (staging: see the contract); nonzero stops the open
 * (QKD_ERR_INPUT, "sink"). */
typedef int (*qkd_firmware_sink)(void *arg, const uint8_t *data, size_t len);

/* p (and what it points to) must outlive the stream. */
int qkd_firmware_stream_new(qkd_firmware_stream **out, const qkd_firmware_policy *p,
                            qkd_firmware_sink sink, void *arg, char *err, size_t errlen);
/* The package's next len bytes, in any slicing. */
int qkd_firmware_stream_update(qkd_firmware_stream *s, const uint8_t *data, size_t len, char *err,
                               size_t errlen);
/* The end of the package: QKD_OK when every check passed; *m its manifest. */
int qkd_firmware_stream_final(qkd_firmware_stream *s, qkd_firmware_manifest *m, char *err,
                              size_t errlen);
void qkd_firmware_stream_free(qkd_firmware_stream *s);

/* The whole package in memory: on QKD_OK *image (malloc'd, *image_len
 * bytes, the caller's to free) and *m. */
int qkd_firmware_open(const uint8_t *pkg, size_t len, const qkd_firmware_policy *p,
                      uint8_t **image, size_t *image_len, qkd_firmware_manifest *m, char *err,
                      size_t errlen);

#endif
