/*
 * entropy_source — the kinds of raw random-number sources behind one
 * interface (open, read, close, describe): a QRNG reached over HTTP, a
 * character device or FIFO (a PCIe/USB QRNG card), a program writing random
 * bytes to stdout, the token's C_GenerateRandom, and the OS's getrandom.
 *
 * Contract: read() returns raw bytes exactly as the source produced them
 * (after transport decoding such as hex or base64) and never conditions or
 * tests them — health testing and policy belong to entropy.c. A read may
 * block up to the source's own timeout and returns fewer bytes than asked
 * for, or -1 with a reason (no secrets, no data) in err. Sources are used
 * by one thread at a time.
 */
#ifndef QKMS_ENTROPY_SOURCE_H
#define QKMS_ENTROPY_SOURCE_H

#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "p11.h"

typedef struct esrc esrc;

typedef struct {
    const char *kind;
    int (*open)(esrc *s, char *err, size_t errlen);
    long (*read)(esrc *s, uint8_t *buf, size_t len, char *err, size_t errlen);
    void (*close)(esrc *s);
} esrc_ops;

struct esrc {
    const esrc_ops *ops;
    const kms_config *cfg;
    p11_token *token;
    void *impl;
    char describe[256]; /* e.g. "http GET https://qrng.example/random (hex)": admins only */
    char describe_public[256]; /* the same without URL path, query, user info or
                                  command arguments, which may carry an API key */
};

/* kind: http, device, exec, pkcs11, os. Checks the configuration the kind
 * needs; does not open yet. */
int esrc_create(esrc **out, const char *kind, const kms_config *cfg, p11_token *token,
                char *err, size_t errlen);
void esrc_destroy(esrc *s);

/* Decoding of http bodies (pure; unit-tested): extract the value at a
 * dotted JSON path (NULL = whole body) and decode raw/hex/base64 into out.
 * Returns the number of bytes, or -1 with a reason. */
long esrc_decode_body(const char *body, size_t len, const char *json_path, const char *format,
                      uint8_t *out, size_t cap, char *err, size_t errlen);

#endif
