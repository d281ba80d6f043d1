/*
 * device_common — what kmsctl checks about device fields before sending
 * anything (docs/api.md "Devices"), the paths of the device routes, and the
 * human rendering of device records and key lists shared by several
 * `device` subcommands.
 *
 * The checks mirror the server's so that a typo is a usage error (exit 2,
 * nothing sent); the server remains the authority and checks again.
 */
#ifndef KMSCTL_DEVICE_COMMON_H
#define KMSCTL_DEVICE_COMMON_H
#include <stdbool.h>
#include <jansson.h>
#include "resource.h"

#define DEVICE_ID_MAX 128
#define DEVICE_KEYS_MAX 16
#define DEVICE_KEY_INDEX_MAX 255
#define DEVICE_VALIDITY_MAX 3650L
#define DEVICE_SERVICE_MAX 36500L
#define DEVICE_GRACE_MAX 365L

/* 1..128 printable ASCII (0x21..0x7E) except / \ % ? #. */
bool device_id_ok(const char *s);
/* [a-z][a-z0-9_-]{0,31}: the server's type-name rule (schema/002). */
bool device_type_ok(const char *s);
/* 1..64 of [A-Za-z0-9._-], first a letter or digit. */
bool device_group_ok(const char *s);

/*
 * Each returns EXIT_OK, or EXIT_USAGE after saying what is wrong with the
 * value of `what` (e.g. "--parent"). Values are echoed through out_safe.
 */
int device_check_id(const char *what, const char *s);
int device_check_type(const char *what, const char *s);
int device_check_group(const char *what, const char *s);
/* "128" or "256" into *bits; absent (NULL) leaves *bits alone. */
int device_check_key_bits(const char *what, const char *s, long *bits);

/* Sets o[key] = value, taking value (NULL = out of memory). EXIT_OK, or
 * EXIT_INTERNAL after reporting. */
int device_put(json_t *o, const char *key, json_t *value);

/* /v1/admin/devices/<ID>, IDs checked by device_check_id (resource.h). */
extern const struct resource device_resource;

/*
 * Human output of a device record: its fields except "keys" as aligned
 * "key: value" lines, then a blank line and the keys table (see
 * device_print_keys). EXIT_SERVER if record is not an object.
 */
int device_print_record(const json_t *record);

/* owner's "keys" list as a table INDEX ALG STATE EXPIRED NOT-AFTER
 * RETIRE-AT EXPORTED [KCV]; EXIT_SERVER if there is no such list. */
int device_print_keys(const json_t *owner, bool kcv);

#endif
