/*
 * session_seen — which sessions this kmsd has recently seen exist, by their
 * keyed session hash, so that a request for one of them goes to the
 * database without a candidate session key (no entropy drawn, no token
 * wrap): typically the second party of a session, after the first created
 * it here.
 *
 * A hint, never an answer: a wrong "seen" (the session ended, another
 * instance created it, two hashes share a slot) costs one more round trip
 * (the stored function answers need_key and kmsd calls again with a
 * candidate); a missed one costs the candidate it would have cost anyway.
 * Fixed size, direct-mapped, lock-free; holds 64 bits of each hash (the
 * hash is an HMAC under a server key, so this reveals no session ID).
 */
#ifndef QKMS_SESSION_SEEN_H
#define QKMS_SESSION_SEEN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct session_seen session_seen;

/* slots == 0 gives a set that never answers "seen". */
session_seen *session_seen_new(size_t slots);
void session_seen_free(session_seen *ss);
void session_seen_add(session_seen *ss, const uint8_t hash[32]);
bool session_seen_has(session_seen *ss, const uint8_t hash[32]);

#endif
