/*
 * kcv — the check value of a device key (docs/api.md, docs/devices.md):
 * the first QKMS_KCV_LEN bytes of AES-CMAC(key, 16 zero bytes). One definition
 * for the server that publishes it, kmsctl that checks fill documents, and
 * the device library that checks them on the device (hence the qkms_
 * prefix: that library is linked into integrators' firmware).
 */
#ifndef QKMS_KCV_H
#define QKMS_KCV_H
#include <stddef.h>
#include <stdint.h>

#define QKMS_KCV_LEN 5

/* key: 16 (AES-128) or 32 (AES-256) bytes. 0, or -1 for another length
 * or a crypto library failure. Leaves no copy of the full MAC behind. */
int qkms_kcv_compute(const uint8_t *key, size_t len, uint8_t kcv[QKMS_KCV_LEN]);
/* The same in the cipher of a key algorithm: "AES-128", "AES-256" (as
 * qkms_kcv_compute) or "SM4-128" (SM4-CMAC, 16 bytes). -1 for another
 * algorithm or a length that does not match it. */
int qkms_kcv_compute_alg(const char *algorithm, const uint8_t *key, size_t len,
                         uint8_t kcv[QKMS_KCV_LEN]);

#endif
