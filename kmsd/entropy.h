/*
 * entropy — the one place key material's randomness comes from.
 *
 * Contract:
 *  - Sources sit behind one interface (read, health, describe, close) and are
 *    tried in the configured order ("pkcs11,os"); the first source that
 *    delivers healthy output serves the request and is reported as the
 *    provenance. No caller reads a source directly, so new sources (the
 *    quantum RNG feed) plug in here without touching callers.
 *  - Output that fails the source's sanity check is discarded, never used.
 *  - entropy_get() fails (-1) only when every source fails; callers answer
 *    503 then. Thread-safe.
 */
#ifndef QKMS_ENTROPY_H
#define QKMS_ENTROPY_H

#include <stddef.h>
#include <stdint.h>

#include "p11.h"

#define ENTROPY_MAX_SOURCES 8

typedef struct entropy_source entropy_source;

typedef struct {
    const char *kind;
    /* Fill buf completely; 0 on success, -1 with a reason in err. */
    int (*read)(entropy_source *s, uint8_t *buf, size_t len, char *err, size_t errlen);
    void (*close)(entropy_source *s);
} entropy_source_ops;

typedef struct entropy entropy;

typedef struct {
    const char *name;
    const char *state; /* "ok" or "failing" */
    uint64_t bytes, failures;
    char last_error[128];
} entropy_source_status;

/* spec: comma-separated source kinds. token may be NULL if "pkcs11" unused. */
int entropy_open(entropy **out, const char *spec, p11_token *token, char *err, size_t errlen);
void entropy_close(entropy *e);

/* Fill buf with len random bytes; *source (optional) names the source used. */
int entropy_get(entropy *e, uint8_t *buf, size_t len, const char **source);

int entropy_source_count(const entropy *e);
void entropy_source_status_get(entropy *e, int i, entropy_source_status *st);

/* Sanity check applied to every block read: a run of identical bytes as
 * long as the whole block (>= 16 bytes) marks a stuck source. Pure; exposed
 * for unit tests. Full SP 800-90B health tests replace this later. */
int entropy_block_looks_stuck(const uint8_t *buf, size_t len);

#endif
