/*
 * crypto — the platform's data services for back ends (issue 19; seed 003
 * claim 13, seed 000's cipher machine): random bytes from the entropy
 * subsystem, and frames sealed and opened under a session's key on behalf
 * of one of its parties. docs/api.md ("Crypto services") is the contract,
 * docs/sealing.md the frame.
 *
 * Contract:
 *  - Session operations are for a principal with a crypto token, which acts
 *    for one party (tokens.h: a device, or "@platform" for the platform's
 *    side of platform-peer sessions). They work only on a live session that
 *    party is in, as that party: frames it receives are opened (the peer's
 *    direction), frames it sends are sealed (its own). No other identity
 *    gets anything from a session's key.
 *  - Opening checks what qks_open checks, in its order, against a replay
 *    window per key and direction kept in PostgreSQL (seal_state), read and
 *    moved in one transaction under a row lock: across kmsd instances and
 *    restarts a frame is opened at most once. Sealing takes its seq from a
 *    counter per key and direction in the same table, starting at 2^63 (the
 *    upper half of the sequence space, so a party that also seals itself
 *    from 0 never reuses a nonce), committed before the frame is returned.
 *  - Every operation, done or refused after its arguments parsed, writes an
 *    audit row (crypto.encrypt, crypto.decrypt, crypto.random,
 *    crypto.refused) with sizes, key ID and seq, never data. The session
 *    key is unwrapped by the token into the secure heap for the one
 *    operation and wiped; plaintexts handed out are the caller's to wipe
 *    (crypto_result_clear).
 *  - Errors (err.h): see docs/api.md; the seal_* codes are the frame's
 *    check names (docs/sealing.md) with "seal_" in front.
 */
#ifndef QKMS_CRYPTO_H
#define QKMS_CRYPTO_H

#include <stddef.h>
#include <stdint.h>

#include "err.h"
#include "qkms_seal.h"
#include "service/service.h"

#define CRYPTO_RANDOM_MAX 4096
/* The largest plaintext sealed or opened in one call (the door's body
 * limit is set from it). */
#define CRYPTO_DATA_MAX ((size_t)4 << 20)

typedef struct {
    uint8_t *data; /* the frame (seal) or the plaintext (open), malloc'd */
    size_t len;
    char key_id[37];
    uint64_t seq;
    int direction;      /* QKS_A2B or QKS_B2A */
    char party[129];    /* who the token acts for */
    char peer[129];
    int key_index;      /* data under a device key: the device key's index */
} crypto_result;

/* Wipe and free r->data; zero r. */
void crypto_result_clear(crypto_result *r);

/* n (1..CRYPTO_RANDOM_MAX) bytes into out from the entropy subsystem under
 * its policy; *provenance where they came from (entropy.h). Audited. */
qk_kind crypto_random(qk_svc *s, const qk_principal *who, size_t n, uint8_t *out,
                      const char **provenance, qk_err *e);

/* Seal pt for session_id as who's party, under key_id (NULL: the shared key
 * of the session's current epoch). */
qk_kind crypto_seal(qk_svc *s, const qk_principal *who, const char *session_id,
                    const char *key_id, const uint8_t *pt, size_t pt_len, crypto_result *out,
                    qk_err *e);

/* Open frame for session_id as who's party. */
qk_kind crypto_open(qk_svc *s, const qk_principal *who, const char *session_id,
                    const uint8_t *frame, size_t len, crypto_result *out, qk_err *e);

/*
 * Data under a device key (crypto_device.c; docs/sealing.md "Data under a
 * device key"): for a crypto token acting for "@platform" only (the
 * device's data is between it and the platform). Seal pt to device_id
 * under its key of key_index (-1: its newest usable one: active, valid
 * now, not a local key), or open a frame the device sealed under one of
 * its keys (active or retired). out->party is "@platform", out->peer the
 * device, out->key_index the key. Windows and counters in device_seal_state
 * (schema/034), as for sessions. Errors as for sessions, and QK_NOT_FOUND
 * "unknown_device", QK_FORBIDDEN "device_inactive".
 */
qk_kind crypto_device_seal(qk_svc *s, const qk_principal *who, const char *device_id,
                           int key_index, const uint8_t *pt, size_t pt_len, crypto_result *out,
                           qk_err *e);
qk_kind crypto_device_open(qk_svc *s, const qk_principal *who, const char *device_id,
                           const uint8_t *frame, size_t len, crypto_result *out, qk_err *e);

/* Shared by crypto.c and crypto_device.c, inside their transactions: the
 * frame step of a seal or an open under key (key_len bytes) / kid, for
 * aad_id (the session ID, or the device ID) in direction dir, with the
 * state row w (seal: the seq Q_*SEAL_SEND_NEXT returned; open: the window
 * Q_*SEAL_RECV_LOCK returned). Seal fills o->data, len, seq from in; open
 * fills them from the frame in and sets *win to the window to store when
 * it returns QKS_OK. A QKS_* code (QKS_ERR_INTERNAL also for memory). */
int crypto_frame_step(bool seal, const uint8_t *key, size_t key_len, const uint8_t kid[16],
                      const char *aad_id, int dir, const PGresult *w, const uint8_t *in,
                      size_t in_len, crypto_result *o, qks_window *win);
/* A refusal among a frame step's codes (replay: 409 seal_replay; auth:
 * 400 seal_auth, "what" naming what else it could be sealed for): true
 * with *kind, *code and msg; false for QKS_OK and internal failures. */
bool crypto_frame_refusal(int rc, uint64_t seq, const char *what, qk_kind *kind,
                          const char **code, char *msg, size_t len);
/* A frame transaction's outcome (st from db_tx; refused: the callback
 * refused, its audit row committed): QK_OK, or the failure with out
 * cleared. A fault the callback named (token, internal) stands; a refusal
 * whose transaction did not commit is the database's failure. */
qk_kind crypto_tx_outcome(db_status st, bool refused, crypto_result *out, qk_err *e);

#endif
