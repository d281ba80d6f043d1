/*
 * b64 — strict standard base64 (RFC 4648 section 4) decoding, for what
 * kmsd and kmsctl exchange inside JSON (fill packages, the crypto services'
 * data).
 *
 * Accepts the standard alphabet with correct '=' padding, or the same
 * without padding; rejects whitespace, any other character, padding in the
 * middle, a length that no encoding produces, and non-zero unused bits
 * (so every byte string has exactly one accepted encoding).
 */
#ifndef QKMS_B64_H
#define QKMS_B64_H
#include <stddef.h>
#include <stdint.h>

/* Upper bound of the decoded size of len characters. */
size_t b64_decoded_max(size_t len);

/* Returns the number of bytes written to out, or -1 on bad input or when
 * out_cap is too small. */
long b64_decode(const char *in, size_t len, uint8_t *out, size_t out_cap);

#endif
