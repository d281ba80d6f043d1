/*
 * wipegrow — growing a buffer that may hold secrets (request and response
 * bodies, tokens, random bytes that become keys).
 *
 * realloc may leave the old block's bytes in freed heap; this copies into
 * a new block and wipes the old one (OPENSSL_cleanse) before freeing it.
 * Shared by kmsd (HTTP bodies, QRNG answers) and kmsctl (API answers).
 *
 * Contract: qkms_grow_wiped makes *buf hold at least need bytes, doubling
 * *cap from min_cap (when *buf is NULL) until it does; the first used
 * bytes are kept. Returns 0, or -1 when out of memory (*buf and *cap are
 * unchanged). A no-op when *cap >= need.
 */
#ifndef QKMS_WIPEGROW_H
#define QKMS_WIPEGROW_H
#include <stddef.h>

int qkms_grow_wiped(char **buf, size_t *cap, size_t used, size_t need, size_t min_cap);

#endif
