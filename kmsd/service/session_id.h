/*
 * session_id — what session rows are keyed by: the session ID hash key and
 * the hashes and wrap contexts made with it (docs/sessions.md).
 *
 * Its own module, below sessions.c, because master.c (which makes and
 * unwraps the key at start) and rotation.c (which rewraps it and the
 * session keys) need it while sessions.c needs master.c: keeping it in
 * sessions.c made an import circle.
 *
 * Contract:
 *  - The key is SID_KEY_LEN random bytes, stored only wrapped under the
 *    master key with context SID_KEY_CONTEXT. This module keeps the one
 *    unwrapped copy in the secure heap, set once at start before any
 *    request (not synchronised) and wiped by sessions_set_id_key(NULL, 0).
 *  - Pure apart from that key: no database, no token.
 */
#ifndef QKMS_SESSION_ID_H
#define QKMS_SESSION_ID_H

#include <stddef.h>
#include <stdint.h>

#define SID_KEY_LEN 32
#define SID_KEY_CONTEXT "qkms/session-id-hmac-key/v1"

/* Keep a copy of key in secure memory (NULL: wipe and forget it). 0 or -1. */
int sessions_set_id_key(const uint8_t *key, size_t len);

/* HMAC-SHA-256 of a session ID under the session ID hash key: what the
 * sessions and tombstones are keyed by, so a database reader cannot test
 * guessed session IDs. -1 if the key is not set. */
int session_hash(const char *session_id, uint8_t out[32]);
/* The plain SHA-256 rows written before migration 006 are keyed by; looked
 * up as a fallback so sessions live across the upgrade keep working. */
void session_hash_legacy(const char *session_id, uint8_t out[32]);

/* A random (version 4) UUID in its 36-character text form: key IDs and
 * the platform's login IDs. 0, or -1 when the RNG fails. */
int uuid4_text(char out[37]);

/* The wrap context (AAD) of a session key: its session hash as lower-case
 * hex and its key ID. One definition for wrapping (sessions.c) and
 * rewrapping under a new master key (rotation.c). -1 if out is too short. */
int session_key_context(const char *hash_hex, const char *key_id, char *out, size_t len);
/* The same from the hash's 32 bytes. */
int session_key_context_of(const uint8_t hash[32], const char *key_id, char *out, size_t len);

#endif
