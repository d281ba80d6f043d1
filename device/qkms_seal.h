/*
 * qkms_seal — payloads sealed under a session key: the frame two parties of
 * a session (and the platform's data services) use for what they send each
 * other. docs/sealing.md is the specification, tests/vectors/seal-v1.json
 * the test vectors; device and platform build the same bytes from here.
 *
 * Frame (all integers big-endian):
 *   0   1  version      1
 *   1   1  algorithm    1: AES-GCM (AES-128 or AES-256 by the key's length)
 *   2   1  direction    1: a2b, 2: b2a (a: the party whose ID sorts first)
 *   3   1  reserved     0
 *   4  16  key_id       the session key's ID (a UUID), binary
 *  20   8  seq          the sender's sequence number, 0 .. 2^64 - 2
 *  28   n  ciphertext
 *  28+n 16 tag
 * nonce = direction as 4 bytes || seq (NIST SP 800-38D 8.2.1: a fixed field
 * that keeps the two senders' nonces apart, and an invocation counter);
 * AAD = "qkms/seal/v1" 0x00 session_id 0x00 header (the frame's first 28
 * bytes). So a frame opens only under its key, for its session, in its
 * direction, at its sequence number; every header bit is authenticated.
 *
 * Contract:
 *  - The sender must never seal two frames with one seq under one key in
 *    one direction (GCM's nonce): it keeps its counter across restarts or
 *    asks for a new key. qks_seal refuses nothing on that count: it cannot
 *    know.
 *  - The receiver's qks_window accepts each seq once, and refuses seqs more
 *    than QKS_WINDOW - 1 behind the highest accepted one (too old to tell);
 *    frames may arrive out of order within the window. The window moves
 *    only for a frame that authenticated.
 *  - Nothing is written to pt unless the frame authenticated; on a failure
 *    the output is wiped. Nothing here logs or keeps key bytes.
 *  - Functions return QKS_OK or one of the QKS_ERR_* codes below, which
 *    qks_strerror names; they are stable (the data services map them to
 *    their answers).
 */
#ifndef QKMS_SEAL_H
#define QKMS_SEAL_H

#include <stddef.h>
#include <stdint.h>

#define QKS_VERSION 1
#define QKS_ALG_AES_GCM 1
#define QKS_A2B 1
#define QKS_B2A 2
#define QKS_HEADER_LEN 28
#define QKS_TAG_LEN 16
#define QKS_OVERHEAD (QKS_HEADER_LEN + QKS_TAG_LEN)
#define QKS_MAX_SEQ UINT64_C(0xFFFFFFFFFFFFFFFE)
/* A party sealing on its own uses seq 0 .. 2^63 - 1; 2^63 and up are the
 * platform's crypto services', sealing for a party under the same key
 * (docs/sealing.md), so the two never meet. qkd_seal enforces it. */
#define QKS_PARTY_MAX_SEQ UINT64_C(0x7FFFFFFFFFFFFFFF)
#define QKS_MAX_PLAINTEXT ((size_t)64 << 20) /* 64 MiB per frame */
#define QKS_WINDOW 64

enum {
    QKS_OK = 0,
    QKS_ERR_INPUT = -1,     /* a bad argument: key length, direction, seq, sizes */
    QKS_ERR_FORMAT = -2,    /* not a frame: too short, version, algorithm, reserved */
    QKS_ERR_KEY = -3,       /* sealed under another key (key_id) */
    QKS_ERR_DIRECTION = -4, /* sealed for the other direction */
    QKS_ERR_AUTH = -5,      /* the tag does not verify: altered, or another session */
    QKS_ERR_REPLAY = -6,    /* seq already accepted, or behind the window */
    QKS_ERR_INTERNAL = -7,  /* the crypto library failed */
};

/* A frame's header, as read by qks_peek. */
typedef struct {
    int version;
    int algorithm;
    int direction;
    uint8_t key_id[16];
    uint64_t seq;
} qks_header;

/* The receiver's replay window for one key and direction. Zero it to start. */
typedef struct {
    uint64_t top;    /* the highest seq accepted */
    uint64_t bitmap; /* bit i set: seq top - i accepted */
    int any;         /* 0 until a frame is accepted */
} qks_window;

/* "ok", "input", "format", "key", "direction", "auth", "replay", "internal". */
const char *qks_strerror(int code);

/* QKS_A2B when from_id sorts before to_id (byte order), QKS_B2A when after,
 * QKS_ERR_INPUT when they are equal or either is NULL. */
int qks_direction_of(const char *from_id, const char *to_id);

/* A UUID's text ("8-4-4-4-12" hex, either case) as 16 bytes: QKS_OK, or
 * QKS_ERR_INPUT. */
int qks_uuid_parse(const char *text, uint8_t out[16]);

/*
 * Seals pt (pt_len <= QKS_MAX_PLAINTEXT) for session_id (1..128 bytes, no
 * NUL) under key (16 or 32 bytes) with ID key_id, from the sender of
 * `direction`, at seq; writes pt_len + QKS_OVERHEAD bytes to out (cap at
 * least that) and their number to *out_len.
 */
int qks_seal(const uint8_t *key, size_t key_len, const uint8_t key_id[16],
             const char *session_id, int direction, uint64_t seq, const uint8_t *pt,
             size_t pt_len, uint8_t *out, size_t cap, size_t *out_len);

/* Reads the header of frame (QKS_ERR_FORMAT if it is none), authenticating
 * nothing: a receiver's way to pick the key and window a frame names. */
int qks_peek(const uint8_t *frame, size_t len, qks_header *h);

/*
 * Opens frame for session_id under key / key_id, expecting `direction`
 * (what the peer sends: the receiver's own opposite). w (NULL: no replay
 * check, for a one-off open) is checked before and moved after the tag
 * verified. On QKS_OK, len - QKS_OVERHEAD plaintext bytes are in pt (cap at
 * least that), their number in *pt_len, the frame's seq in *seq (may be
 * NULL). The checks run in this order, each answering its own code: format,
 * key, direction, window, tag.
 */
int qks_open(const uint8_t *key, size_t key_len, const uint8_t key_id[16],
             const char *session_id, int direction, qks_window *w, const uint8_t *frame,
             size_t len, uint8_t *pt, size_t cap, size_t *pt_len, uint64_t *seq);

/*
 * Data under a device key (docs/sealing.md, "Data under a device key"): the
 * same frame between a device and the platform without a session. The
 * frame key is HKDF-SHA-256(IKM = the device key, no salt, info =
 * "qkms/seal/device-data/v1" 0x00 device_id), 32 bytes (AES-256-GCM,
 * whatever the device key's suite); its key_id the first 16 bytes of
 * HMAC-SHA-256(frame key, "qkms/seal/device-key-id/v1"); the AAD's session
 * ID is the device ID; the platform's ID for the direction is "@platform".
 * Writes out (32 bytes) and key_id; QKS_OK, QKS_ERR_INPUT or
 * QKS_ERR_INTERNAL.
 */
#define QKS_PLATFORM_ID "@platform"
int qks_device_data_key(const uint8_t *device_key, size_t len, const char *device_id,
                        uint8_t out[32], uint8_t key_id[16]);

#endif
