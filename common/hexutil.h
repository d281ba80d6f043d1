/*
 * hexutil — hex encoding and strict decoding, and UUIDs in their hex text
 * form, shared by kmsd, kmsctl and the device library. Names carry the qkms_ prefix because the device
 * library (libqkms-device.a) is linked into integrators' firmware.
 * qkms_hex_decode accepts upper or lower case, rejects odd length and any other
 * character, and never writes past out_cap.
 */
#ifndef QKMS_HEXUTIL_H
#define QKMS_HEXUTIL_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Writes 2*len hex digits and a NUL into out (size >= 2*len+1). */
void qkms_hex_encode(const uint8_t *in, size_t len, char *out);
/* Returns the number of bytes written, or -1 on bad input or short buffer. */
long qkms_hex_decode(const char *in, size_t in_len, uint8_t *out, size_t out_cap);

/* 16 bytes as a UUID's text, 8-4-4-4-12 lower-case hex digits and a NUL. */
void qkms_uuid_format(const uint8_t b[16], char out[37]);
/* Whether s is a UUID's text: 36 characters, hex digits of either case
 * with dashes at 8, 13, 18 and 23. */
bool qkms_uuid_valid(const char *s);
/* Marks 16 random bytes as a version 4 (random) UUID of RFC 9562's variant. */
void qkms_uuid_v4(uint8_t b[16]);
#endif
