/*
 * qkms_device — the device side of protocol v1 (docs/protocol.md), without
 * any network: load a device's keys from its fill document, build the
 * `key` and `end` request bodies, and parse and verify the answers. The
 * transport is the caller's (qkd_http.h is one).
 *
 * Contract:
 *  - Device and session key bytes live only in OPENSSL_secure_malloc memory
 *    and are zeroized when freed (qkd_device_free, qkd_session_key_clear).
 *    No function logs, and no error message contains key bytes.
 *  - Requests are built canonically, byte for byte as the test vectors
 *    expect: the inner plaintext is
 *      key: {"session_id":"S","peer_id":"P","ts":123}
 *           or ...,"ts":123,"delivery":"delivered"}
 *           or ...,"ts":123,"epoch":1,"direction":"a2b"} (either or both)
 *      end: {"session_id":"S","ts":123}
 *           or {"all":true,"ts":123} (every session of the device)
 *    and the body {"v":1,"device_id":"D","key_index":0,"nonce":"..","ct":".."},
 *    in this field order, without spaces.
 *  - A key response is accepted only when v is 1, session_id is the one
 *    asked for, epoch and direction are the ones an ext request asked for
 *    (and absent otherwise), key_bits is 128 or 256 and matches the length of ct, the
 *    response nonce differs from the request nonce, and ct opens under the
 *    request's device key with the response AAD bound to the request nonce.
 *    Nothing of a refused response is returned.
 *  - Functions return QKD_OK, QKD_ERR_INPUT (bad argument, document or
 *    response: the message in err says what) or QKD_ERR_INTERNAL (out of
 *    memory, no randomness, crypto library failure). err may be NULL.
 *  - Not thread-safe per object; distinct objects may be used concurrently.
 *
 * jansson parses the fill document, so its internal buffers briefly hold the
 * key hex. qkd_device_load zeroes the strings of the parsed tree; to also
 * zero jansson's parser buffers, install a zeroizing allocator with
 * json_set_alloc_funcs() before any jansson call, as qkms-device does.
 */
#ifndef QKMS_DEVICE_H
#define QKMS_DEVICE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "qkms_proto.h"
#include "qkms_seal.h"

enum {
    QKD_OK = 0,
    QKD_ERR_INPUT = -1,
    QKD_ERR_INTERNAL = -2,
};

#define QKD_MAX_KEYS 256       /* key indexes are 0-255 */
#define QKD_MAX_KEY_LEN 32     /* AES-256 */
#define QKD_MAX_BODY 2048      /* a request body we build; the protocol allows 8 KiB */
#define QKD_PATH_KEY "/v1/sessions/key"
#define QKD_PATH_END "/v1/sessions/end"
#define QKD_PATH_STREAM "/v1/streams/key"
#define QKD_PATH_STREAM_END "/v1/streams/end"

/* One pre-filled device key. */
typedef struct {
    int index;          /* 0-255 */
    size_t len;         /* 16 (AES-128, SM4-128) or 32 (AES-256) */
    int suite;          /* qkp_suite: AES-GCM, or SM4-CTR + HMAC-SM3 for SM4-128 */
    uint8_t *key;       /* len bytes, secure heap, owned by the qkd_device */
    int64_t not_before; /* Unix seconds; INT64_MIN when the document has none */
    int64_t not_after;  /* Unix seconds; INT64_MAX when the document has none */
    bool local;         /* purpose "local": a gateway's local network key, never
                         * sent to the platform (docs/gateways.md) */
} qkd_key;

/* A device as its fill document describes it. Read-only for callers. */
typedef struct {
    char device_id[QKP_MAX_ID + 1];
    size_t nkeys;
    qkd_key *keys; /* sorted by index, no duplicates */
} qkd_device;

/*
 * Reads a fill document (docs/devices.md; `kmsctl fill open --json` output):
 * "device_id" and "keys":[{"index","algorithm":"AES-128"|"AES-256"|"SM4-128","key":hex,
 * "kcv","not_before","not_after"}], times in RFC 3339 (or integer Unix
 * seconds). "format", when present, must be "qkms-fill/1"; "kcv", when
 * present, must match the key (AES-CMAC check value, SM4-CMAC for SM4-128); other fields are
 * ignored. text need not be NUL-terminated and is not modified; the caller
 * wipes it. On success *out is the caller's (qkd_device_free).
 */
int qkd_device_load(qkd_device **out, const char *text, size_t len, char *err, size_t errlen);

/* A device built from keys at hand rather than a fill document (the
 * platform checking a firmware package under its own copy of a device's
 * keys): an empty device with device_id, then each key added. add_key
 * copies key (16 or 32 bytes) into the secure heap; algorithm as in a fill
 * document; no validity limits, not local. QKD_ERR_INPUT for a bad ID,
 * length, algorithm or an index it has; QKD_ERR_INTERNAL out of memory. */
int qkd_device_new(qkd_device **out, const char *device_id, char *err, size_t errlen);
int qkd_device_add_key(qkd_device *d, int index, const char *algorithm, const uint8_t *key,
                       size_t len, char *err, size_t errlen);

/* Zeroizes and frees every key, then the device. NULL is fine. */
void qkd_device_free(qkd_device *d);

/* The key with this index, or NULL. */
const qkd_key *qkd_device_key(const qkd_device *d, int index);

/* The default key: the highest index valid at `now` (not_before <= now <
 * not_after) that is not a local key, or -1 when there is none. */
int qkd_device_default_index(const qkd_device *d, int64_t now);

typedef enum { QKD_OP_KEY, QKD_OP_END, QKD_OP_STREAM, QKD_OP_STREAM_END } qkd_op;

/* A built request: POST body to path. Plain data, no heap; the request must
 * be kept until its response is parsed (the response AAD names its nonce). */
typedef struct {
    qkd_op op;
    const char *path; /* QKD_PATH_KEY or QKD_PATH_END */
    char device_id[QKP_MAX_ID + 1];
    int key_index;
    char session_id[QKP_MAX_ID + 1]; /* empty when all; the stream ID for the stream ops
                                      * (empty: open or join the pair's stream) */
    int64_t seq;                      /* QKD_OP_STREAM: the key asked for */
    bool all;                         /* an end of every session of the device */
    bool ext;                         /* a key by epoch and direction: */
    int epoch;                        /*   0.. */
    char direction[4];                /*   "", "a2b" or "b2a" */
    int64_t ts;
    uint8_t nonce[QKP_NONCE_LEN];
    char nonce_b64[QKP_B64URL_LEN(QKP_NONCE_LEN)];
    char body[QKD_MAX_BODY];
    size_t body_len;
} qkd_request;

/*
 * Builds a `key` request of device d under its key key_index for session_id
 * with peer peer_id, timestamp ts (Unix seconds, >= 0), asking for
 * single-transfer delivery when delivered. nonce: NULL for a fresh random
 * one (RAND_bytes). Only a library compiled with -DQKMS_TESTING (the test
 * vectors' build) accepts 12 fixed bytes here; any other build refuses a
 * non-NULL nonce with QKD_ERR_INPUT, since a nonce that repeats under one
 * device key breaks AES-GCM. Session and peer must be valid IDs.
 */
int qkd_request_key(qkd_request *r, const qkd_device *d, int key_index, const char *session_id,
                    const char *peer_id, bool delivered, int64_t ts,
                    const uint8_t nonce[QKP_NONCE_LEN], char *err, size_t errlen);

/*
 * Builds a `key` request for one of the session's other keys (docs/protocol.md,
 * "Epochs and direction keys"): epoch 0..QKP_MAX_EPOCH (or -1: none, i.e. 0)
 * and direction "a2b", "b2a" (or NULL: none), at least one of them given;
 * session mode only. Other arguments as for qkd_request_key.
 */
int qkd_request_key_ext(qkd_request *r, const qkd_device *d, int key_index,
                        const char *session_id, const char *peer_id, int epoch,
                        const char *direction, int64_t ts, const uint8_t nonce[QKP_NONCE_LEN],
                        char *err, size_t errlen);

/* Builds an `end` request; arguments as for qkd_request_key. */
int qkd_request_end(qkd_request *r, const qkd_device *d, int key_index, const char *session_id,
                    int64_t ts, const uint8_t nonce[QKP_NONCE_LEN], char *err, size_t errlen);

/* Builds an `end` of every session of the device (a power-down:
 * docs/protocol.md, "Response to end"); arguments as for qkd_request_key. */
int qkd_request_end_all(qkd_request *r, const qkd_device *d, int key_index, int64_t ts,
                        const uint8_t nonce[QKP_NONCE_LEN], char *err, size_t errlen);

/*
 * Key streams (docs/protocol.md, "Key streams"): a request for key seq of
 * the stream with peer_id, the one named stream_id (a stream ID the
 * platform gave), or with stream_id NULL the pair's live stream (opened if
 * there is none). Other arguments as for qkd_request_key.
 */
int qkd_request_stream(qkd_request *r, const qkd_device *d, int key_index, const char *stream_id,
                       const char *peer_id, int64_t seq, int64_t ts,
                       const uint8_t nonce[QKP_NONCE_LEN], char *err, size_t errlen);
/* The end of stream stream_id. */
int qkd_request_stream_end(qkd_request *r, const qkd_device *d, int key_index,
                           const char *stream_id, int64_t ts, const uint8_t nonce[QKP_NONCE_LEN],
                           char *err, size_t errlen);

/* Zeroes the request (it names the session in clear). */
void qkd_request_clear(qkd_request *r);

/* A verified answer to a `key` request. */
typedef struct {
    char session_id[QKP_MAX_ID + 1];
    char key_id[QKP_MAX_ID + 1];
    int key_bits;        /* 128 or 256 */
    size_t key_len;      /* key_bits / 8: the bytes at key */
    int64_t expires_at;  /* Unix seconds */
    char delivery[16];   /* "session" or "delivered" (not covered by the AEAD) */
    int epoch;           /* the key's epoch and direction ("" for none): what an ext */
    char direction[4];   /* request asked for, bound by the AAD; 0 and "" otherwise */
    int current_epoch;   /* ext: the session's current epoch (not covered by the AEAD) */
    uint8_t *key;        /* key_len bytes, secure heap; NULL when empty */
} qkd_session_key;

/*
 * Parses and verifies the body of a 200 answer to the `key` request r, which
 * d built. On success *out holds the session key (qkd_session_key_clear);
 * on failure *out is empty. *out must not hold a key on entry.
 */
int qkd_response_key(qkd_session_key *out, const qkd_device *d, const qkd_request *r,
                     const char *body, size_t len, char *err, size_t errlen);

/* Zeroizes and frees the key and zeroes the struct. NULL is fine. */
void qkd_session_key_clear(qkd_session_key *k);

/*
 * Parses the body of a 200 answer to the `end` request r:
 * {"v":1,"session_id":r's,"ended":true}. Note that this answer carries no
 * AEAD: only TLS vouches for it.
 */
int qkd_response_end(const qkd_request *r, const char *body, size_t len, char *err, size_t errlen);

/*
 * Parses the body of a 200 answer to the end-all request r:
 * {"v":1,"all":true,"ended":true,"sessions_ended":N,"streams_ended":M}, N
 * into *ended and M into *streams_ended (either may be NULL). Like the
 * `end` answer it carries no AEAD.
 */
int qkd_response_end_all(const qkd_request *r, const char *body, size_t len, int *ended,
                         int *streams_ended, char *err, size_t errlen);

/* A verified key of a stream. */
typedef struct {
    char stream_id[QKP_MAX_ID + 1];
    int64_t seq;
    char key_id[QKP_MAX_ID + 1];
    int key_bits;
    size_t key_len;
    int64_t expires_at;
    int64_t low;     /* every seq below is consumed (not covered by the AEAD) */
    int window;      /* seq < low + window may be asked for (idem) */
    uint8_t *key;    /* key_len bytes, secure heap */
} qkd_stream_key;

/*
 * Parses and verifies the body of a 200 answer to the stream request r, which
 * d built: v 1, seq the one asked for, stream_id the one named (when r named
 * one), low <= seq < low + window, key_bits 128 or 256 matching ct, a fresh
 * response nonce, and ct opening under the request's device key with the
 * stream AAD (qkp_stream_aad). On success *out holds the key
 * (qkd_stream_key_clear).
 */
int qkd_response_stream(qkd_stream_key *out, const qkd_device *d, const qkd_request *r,
                        const char *body, size_t len, char *err, size_t errlen);
void qkd_stream_key_clear(qkd_stream_key *k);
/* {"v":1,"stream_id":r's,"ended":true} (no AEAD, as every end). */
int qkd_response_stream_end(const qkd_request *r, const char *body, size_t len, char *err,
                            size_t errlen);

/*
 * Data sealed under a session key (docs/sealing.md): what one party of the
 * session sends the other. qkd_seal seals pt (at most QKS_MAX_PLAINTEXT
 * bytes) from my_id to peer_id (the direction is theirs: a2b when my_id
 * sorts first) at seq, into out (cap >= pt_len + QKS_OVERHEAD), its length
 * in *out_len; seq at most QKS_PARTY_MAX_SEQ (2^63 - 1: the upper half is
 * the platform's). The caller must never seal twice with one seq under one
 * key: keep the counter across restarts, or ask for the next epoch's key.
 * qkd_open opens a frame peer_id sent to my_id, refusing a seq window w has
 * seen (w: one per key and direction, zeroed to start; NULL: no replay
 * check); the plaintext (the frame's length - QKS_OVERHEAD bytes, cap at
 * least that) into pt, its length into *pt_len, its seq into *seq (may be
 * NULL). A refused frame is QKD_ERR_INPUT and err starts with the frame
 * error's name ("format", "key", "direction", "auth", "replay"), nothing in
 * pt; the window moves only for a frame that opened.
 */
typedef qks_window qkd_seal_window;
int qkd_seal(const qkd_session_key *k, const char *my_id, const char *peer_id, uint64_t seq,
             const uint8_t *pt, size_t pt_len, uint8_t *out, size_t cap, size_t *out_len,
             char *err, size_t errlen);
int qkd_open(const qkd_session_key *k, const char *my_id, const char *peer_id,
             qkd_seal_window *w, const uint8_t *frame, size_t len, uint8_t *pt, size_t cap,
             size_t *pt_len, uint64_t *seq, char *err, size_t errlen);

/*
 * Data between the device and the platform under one of its device keys,
 * without a session (docs/sealing.md, "Data under a device key"): the
 * frame of qkd_seal under the key qks_device_data_key derives from the
 * device key of `index` (-1: qkd_device_default_index at now), sealed to
 * "@platform"; qkd_device_open opens what the platform sealed to the
 * device under whichever of its keys the frame names (*index, may be
 * NULL). Same rules as qkd_seal / qkd_open otherwise (seq below 2^63, one
 * window per key and direction).
 */
int qkd_device_seal(const qkd_device *d, int index, int64_t now, uint64_t seq, const uint8_t *pt,
                    size_t pt_len, uint8_t *out, size_t cap, size_t *out_len, char *err,
                    size_t errlen);
int qkd_device_open(const qkd_device *d, qkd_seal_window *w, const uint8_t *frame, size_t len,
                    uint8_t *pt, size_t cap, size_t *pt_len, uint64_t *seq, int *index,
                    char *err, size_t errlen);

/* An error answer {"error":{"code":"...","message":"..."}}. */
typedef struct {
    char code[64];
    char message[256]; /* truncated if longer; may hold any characters */
} qkd_error;

/* QKD_OK when body is such an object with a non-empty string code (message
 * may be absent: then empty); QKD_ERR_INPUT otherwise, *out then empty. */
int qkd_response_error(qkd_error *out, const char *body, size_t len);

/*
 * Writes id as a JSON string literal, quotes included, into out. IDs are
 * printable ASCII without backslash (qkp_id_valid), so only '"' needs
 * escaping. Returns the length written (NUL excluded), or -1 if id is not a
 * valid ID or out is too small.
 */
int qkd_json_id(const char *id, char *out, size_t cap);

#endif
