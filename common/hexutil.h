/*
 * hexutil — hex encoding and strict decoding, shared by kmsd, kmsctl and
 * the device library. Names carry the qkms_ prefix because the device
 * library (libqkms-device.a) is linked into integrators' firmware.
 * qkms_hex_decode accepts upper or lower case, rejects odd length and any other
 * character, and never writes past out_cap.
 */
#ifndef QKMS_HEXUTIL_H
#define QKMS_HEXUTIL_H
#include <stddef.h>
#include <stdint.h>

/* Writes 2*len hex digits and a NUL into out (size >= 2*len+1). */
void qkms_hex_encode(const uint8_t *in, size_t len, char *out);
/* Returns the number of bytes written, or -1 on bad input or short buffer. */
long qkms_hex_decode(const char *in, size_t in_len, uint8_t *out, size_t out_cap);
#endif
