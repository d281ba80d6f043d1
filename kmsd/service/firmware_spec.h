/*
 * firmware_spec — what a release is (docs/api.md "Signing releases"):
 * product, version, counter, not_before and targets, checked the one way
 * both the signature (firmware_sign.h) and its approval
 * (firmware_approvals.h) check them.
 *
 * Contract: pure functions of the spec; no I/O. Errors (err.h):
 * QK_INVALID "invalid_product", "invalid_version", "invalid_counter",
 * "invalid_targets", in that order.
 */
#ifndef QKMS_FIRMWARE_SPEC_H
#define QKMS_FIRMWARE_SPEC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "err.h"

/* Targets (devices and groups together) travel in the request's query
 * string (libmicrohttpd's 32 KiB connection memory holds the request
 * line): 100 device IDs of up to 128 bytes fit. Many devices are a
 * group's. */
#define FIRMWARE_MAX_TARGETS 100

typedef struct {
    const char *product;
    const char *version;          /* 1-64 printable ASCII */
    uint64_t counter;             /* 0: the product's last + 1 */
    int64_t not_before;           /* Unix seconds; < 0: now */
    const char *const *devices;   /* the target devices' IDs */
    size_t ndevices;
    const char *const *groups;    /* the target groups; with the devices 1..FIRMWARE_MAX_TARGETS */
    size_t ngroups;
    const char *approval;         /* a release approval's ID (firmware_approvals.h), or NULL */
} firmware_sign_spec;

/* The checks of sp's own fields, in the documented order (the image's
 * aside): QK_OK or QK_INVALID with its code. */
qk_kind firmware_spec_check(const firmware_sign_spec *sp, qk_err *e);
/* sp's targets as {"groups":[...],"devices":[...]}, each sorted (what an
 * approval fixes), malloc'd; NULL out of memory. */
char *firmware_targets_canonical(const firmware_sign_spec *sp);

/* {"groups":[...],"devices":[...]} in the order given (new reference). */
json_t *firmware_targets_json(const firmware_sign_spec *sp);

#endif
