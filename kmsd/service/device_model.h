/*
 * device_model — what a valid device registration is (pure; unit-tested).
 *
 * device IDs: 1-128 printable ASCII (0x21-0x7E) except / \ % ? # (they
 * would be ambiguous in URL paths). Groups: 1-64 of [A-Za-z0-9._-], first
 * a letter or digit. Type names: [a-z][a-z0-9_-]{0,31}.
 * device_spec_from_json() checks one registration object and fills defaults;
 * on failure it returns -1 with a stable error code and a message.
 */
#ifndef QKMS_DEVICE_MODEL_H
#define QKMS_DEVICE_MODEL_H

#include <stdbool.h>
#include <stddef.h>

#include <jansson.h>

#include "service/device_attrs.h"

#define DEVICE_ID_MAX 128
#define DEVICE_GROUP_MAX 64
#define DEVICE_TYPE_MAX 32
#define DEVICE_MAX_KEYS 16
#define DEVICE_MAX_KEY_INDEX 255
#define DEVICE_SERVICE_DAYS_MAX 36500
#define DEVICE_SERVICE_TYPE (-1)
#define DEVICE_SERVICE_NONE 0

typedef struct {
    char device_id[DEVICE_ID_MAX + 1];
    char type[DEVICE_TYPE_MAX + 1];
    char group[DEVICE_GROUP_MAX + 1];
    char parent[DEVICE_ID_MAX + 1]; /* "" when none */
    int nkeys;
    int key_bits;
    int validity_days;
    int service_days; /* DEVICE_SERVICE_TYPE: its type's; DEVICE_SERVICE_NONE: no end; else days */
    long line; /* import: the row's line in the operator's file, 0 if none */
    /* Its attributes in normal form, compact JSON ("" = none: device_attrs.h). */
    char attributes[DEVICE_ATTRS_TEXT_MAX + 1];
} device_spec;

typedef struct {
    int keys, validity_days; /* defaults from configuration */
} device_defaults;

bool device_id_valid(const char *s);
bool device_group_valid(const char *s);
bool device_type_name_valid(const char *s);
bool device_state_valid(const char *s);
/* A key's purpose (docs/gateways.md, "Key purposes"): "access" (a gateway's
 * wide-area key), "local" (its local network's: never accepted by a
 * device-facing door) or "generic". */
bool device_key_purpose_valid(const char *s);
/* A type's key template as PostgreSQL writes a text[] ("{access,local}"):
 * the purposes in index order into out[0..max) (static strings), and how
 * many. An unknown word is generic in its place; past max is cut. */
int device_template_parse(const char *lit, const char **out, int max);

int device_spec_from_json(const json_t *o, const device_defaults *d, device_spec *out,
                          const char **code, char *msg, size_t msglen);

/* Associated data binding a wrapped device key to its row. */
int device_key_context(const char *device_id, int index, const char *algorithm, char *out,
                       size_t len);

#endif
