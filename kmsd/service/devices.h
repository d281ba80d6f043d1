/*
 * devices — the device registry: registering devices with their pre-filled
 * keys, reading them, their lifecycle (suspend, resume, revoke, rotate) and
 * the fill export.
 *
 * Contract:
 *  - Keys are generated through the entropy interface and wrapped under the
 *    active master key (keywrap) before any SQL runs; plaintext key bytes
 *    live only in the secure heap and are zeroized after use.
 *  - Every change and its audit_log row commit in one transaction.
 *  - Functions answer with a devices_err: an HTTP status and a stable code
 *    (status 0 = success), so handlers only translate.
 */
#ifndef QKMS_DEVICES_H
#define QKMS_DEVICES_H

#include <stdbool.h>

#include <jansson.h>
#include <openssl/evp.h>

#include "service/device_model.h"
#include "service/service.h"

typedef struct {
    int status;        /* 0 on success, else the HTTP status to answer */
    const char *code;  /* stable error code */
    char message[256];
    int retry_after;
} devices_err;

/* One row of a registration batch. */
typedef struct {
    device_spec spec;
    const char *code; /* validation failure (set by the caller) or NULL */
    char message[200];
    /* filled by devices_register */
    const char *db_code;
    char db_message[200];
    bool created;
    char *wrapped_hex[DEVICE_MAX_KEYS];
    int master_version[DEVICE_MAX_KEYS];
    const char *provenance;
} device_reg;

/* Register a batch (rows whose code is set are skipped). On success the
 * batch committed and each row says created or why not; on failure nothing
 * was written. Frees the rows' wrapped keys before returning. */
int devices_register(qk_svc *k, const char *actor, device_reg *rows, int n, devices_err *e);

/* The device record (with keys when with_keys). */
int devices_get(qk_svc *k, const char *device_id, bool with_keys, bool with_kcv, json_t **out,
                devices_err *e);

typedef struct {
    const char *type, *group, *state, *after;
    int expiring_within; /* -1 = no filter */
    int limit;
} device_filter;
int devices_list(qk_svc *k, const device_filter *f, json_t **out, devices_err *e);

typedef enum { DEVICE_SUSPEND, DEVICE_RESUME, DEVICE_REVOKE } device_action;
int devices_set_state(qk_svc *k, const char *actor, const char *device_id, device_action a,
                      devices_err *e);

/* Add a key index; older active keys retire after grace_days. key_bits and
 * validity_days <= 0 mean "as the newest key" / "configured default". */
int devices_rotate(qk_svc *k, const char *actor, const char *device_id, int grace_days,
                   int key_bits, int validity_days, devices_err *e);

/* Export keys: sealed to recipient (a fill package: *out has it in base64),
 * or, with recipient NULL, the plaintext fill document in *plaintext
 * (secure heap; OPENSSL_secure_clear_free(*plaintext, *plaintext_len + 1))
 * with *out holding the other fields. indices NULL/empty = every live key
 * not exported before; force allows exporting keys again. */
int devices_fill(qk_svc *k, const char *actor, const char *device_id, EVP_PKEY *recipient,
                 const int *indices, int nindices, bool force, json_t **out, char **plaintext,
                 size_t *plaintext_len, devices_err *e);

int device_types_list(qk_svc *k, json_t **out, devices_err *e);
int device_types_add(qk_svc *k, const char *actor, const char *name, devices_err *e);

/* Key check value: first 5 bytes of AES-CMAC(key, 0^16), as 10 hex digits. */
int device_key_kcv(const uint8_t *key, size_t len, char out[11]);

#endif
