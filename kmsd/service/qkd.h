/*
 * qkd — key delivery to Secure Application Entities, the service behind the
 * ETSI GS QKD 014 door (api/etsi014.c, docs/etsi014.md). It knows no HTTP.
 *
 * An SAE is a registered device with an SAE ID (devices.sae_id). A master
 * SAE's Get key makes `number` keys of `size` bits from the entropy
 * interface and hands them to it at once; each slave SAE it named may then
 * fetch each key once by its key ID (Get key with key IDs). A key is
 * destroyed when every slave has it, or when the lifetime of the pairing
 * policy (max_lifetime_s) has passed; a tombstone and audit rows remain.
 *
 * Contract:
 *  - Keys exist at rest only wrapped under the master key (context
 *    "qkms/qkd-key/v1\n" key_id), in schema/015's qkd_keys; a key leaves
 *    this module only in a qkd_keys_out, in the secure heap.
 *  - Each operation is one stored-function call in one transaction
 *    (qkms_qkd_enc, qkms_qkd_dec): all or nothing, across kmsd instances.
 *    Two slaves racing for one key each get it once; one slave asking
 *    twice gets it once.
 *  - Refusals: QK_UNAUTHENTICATED not_an_sae (the caller is no active SAE),
 *    QK_FORBIDDEN policy_denied, key_source_denied, not_yours (a key ID
 *    never issued or another pair's: the door answers 401 as the standard
 *    does); QK_INVALID unknown_slave, master_inactive,
 *    slave_inactive, invalid_request, unknown_key, already_fetched,
 *    stock_full; QK_UNAVAILABLE unavailable, token_unavailable,
 *    entropy_unavailable.
 */
#ifndef QKMS_QKD_H
#define QKMS_QKD_H

#include <stddef.h>
#include <stdio.h>
#include <stdint.h>

#include <jansson.h>

#include "err.h"
#include "service/qkd_metrics.h"
#include "service/service.h"

/* The wrap context of a key: this, then its key_ID (rotation.c rewraps). */
#define QKD_WRAP_CONTEXT "qkms/qkd-key/v1\n"

/* The limits the door checks and Get status reports. */
#define QKD_KEY_SIZE 256          /* bits, when a request names none */
#define QKD_MIN_KEY_SIZE 64
#define QKD_MAX_KEY_SIZE 512      /* the master key wraps at most 64 bytes */
#define QKD_MAX_KEY_PER_REQUEST 128
#define QKD_MAX_KEY_COUNT 100000  /* keys waiting for one master-slave pair */
#define QKD_MAX_SAE_ID_COUNT 8    /* additional slaves of a multicast key */
#define QKD_MAX_SAE_ID 128

/* The SAE a request comes from (its client certificate's device). */
typedef struct {
    long long pk;
    char device_id[129];
    char sae_id[QKD_MAX_SAE_ID + 1];
} qkd_sae;

typedef struct {
    char key_id[37];
    uint8_t *key; /* len bytes, secure heap */
    size_t len;
} qkd_key;

typedef struct {
    qkd_key *keys;
    int n;
    int64_t expires_at; /* enc: Unix seconds */
} qkd_keys_out;

void qkd_keys_out_clear(qkd_keys_out *o);

/* The SAE of a device (QK_UNAUTHENTICATED not_an_sae when it has no SAE ID
 * or is not active). */
qk_kind qkd_sae_of(qk_svc *s, const char *device_id, qkd_sae *out, qk_err *e);

/* Give a device an SAE ID (sae_id NULL: take it away), audited
 * (device.sae_set): QK_OK, QK_NOT_FOUND not_found, QK_CONFLICT conflict
 * (another device has it), QK_INVALID invalid_sae_id. The device's keys
 * still waiting, as master or slave, are destroyed (sae_changed) in the
 * same transaction: a key is never handed out under another SAE ID. */
qk_kind qkd_set_sae(qk_svc *s, const qk_principal *who, const char *device_id, const char *sae_id,
                    qk_err *e);
bool qkd_sae_id_valid(const char *s);

/* Makes the door's answer from the keys, inside the transaction that
 * stores (Get key) or consumes (Get key with key IDs) them: 0, or -1 (then
 * nothing is stored or consumed). May be called more than once. */
typedef int (*qkd_deliver_fn)(void *arg, const qkd_keys_out *keys);

/* Get key: number keys of size bits for slaves[0..nslaves) (SAE IDs; the
 * first is the URL's), handed to deliver before the transaction that
 * stores them commits (they are wiped after): all or nothing. */
qk_kind qkd_enc(qk_svc *s, const qk_principal *who, const qkd_sae *master,
                const char *const *slaves, int nslaves, int number, int size,
                qkd_deliver_fn deliver, void *arg, qk_err *e);

/* Get key with key IDs: the keys of key_ids[0..n) (UUID text), master
 * master_sae's for this slave, all or nothing, handed to deliver before
 * the transaction that consumes them commits (they are wiped after). */
qk_kind qkd_dec(qk_svc *s, const qk_principal *who, const qkd_sae *slave, const char *master_sae,
                const char *const *key_ids, int n, qkd_deliver_fn deliver, void *arg,
                qk_err *e);

/* Get status: the standard's Status object for master and slave_sae
 * (stored_key_count: the master's keys waiting for that slave). */
qk_kind qkd_status(qk_svc *s, const qkd_sae *master, const char *slave_sae, json_t **out,
                   qk_err *e);

/* The operator's view. qkd_overview: {"kme_id", the limits of Get status,
 * "pairs": [{"master_sae", "slave_sae", "waiting", "next_expiry"}]} (keys
 * waiting for a slave, by pair). qkd_keys_list: {"keys": [{"key_id",
 * "master_sae", "size", "policy", "created_at", "expires_at", "slaves":
 * [{"sae_id", "fetched_at"}]}]} of keys waiting, newest first, filtered by
 * master and/or slave SAE ID (NULL: any), at most limit (1..1000). Never a
 * key byte. */
qk_kind qkd_overview(qk_svc *s, json_t **out, qk_err *e);
qk_kind qkd_keys_list(qk_svc *s, const char *master, const char *slave, long limit, json_t **out,
                      qk_err *e);

/* One expiry pass (the maintenance thread): keys destroyed, or -1. */
int qkd_reap(qk_svc *s);


#endif
