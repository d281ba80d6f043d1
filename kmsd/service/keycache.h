/*
 * keycache — a bounded cache of device key rows (the wrapped key and its
 * metadata) for the device request path, so that a request costs one
 * database round trip instead of two; and, optionally, of the device keys
 * unwrapped from those rows, so that it also skips one token operation.
 *
 * Unwrapped keys live only in OpenSSL's secure heap (mlock'ed, excluded
 * from core dumps, wiped when dropped): if kmsd has no secure heap, the
 * unwrapped part is off. Ages are on the monotonic clock. An unwrapped entry answers only for the exact
 * wrapped blob it was unwrapped from (compared byte for byte), so a key
 * rotation, a refill or a rewrap under a new master version misses it.
 *
 * Correctness never depends on it: the stored functions that answer the
 * request re-check device and key state in the request's own transaction
 * (qkms_auth_refusal). Entries live at most device_key_cache_ttl seconds
 * and are dropped at once when this kmsd changes the device (rotate,
 * suspend, resume, revoke); other kmsd instances rely on the TTL and on the
 * authoritative check. Direct-mapped and fixed-size: a colliding insert
 * replaces the older entry. Thread-safe (striped locks).
 */
#ifndef QKMS_KEYCACHE_H
#define QKMS_KEYCACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdint.h>
#include <time.h>

#define KEYCACHE_WRAPPED_MAX 128

typedef struct {
    long long device_pk;
    char device_state[16];
    char key_state[16];
    char algorithm[8];             /* "AES-128", "AES-256", "SM4-128" */
    char purpose[8];               /* "access", "local", "generic" */
    int64_t not_before, not_after; /* Unix seconds */
    uint8_t wrapped[KEYCACHE_WRAPPED_MAX];
    size_t wrapped_len;
} keycache_entry;

typedef struct keycache keycache;

/* slots == 0 gives a cache that never hits; unwrapped_slots == 0 (or no
 * secure heap) never holds an unwrapped key. */
keycache *keycache_new(size_t slots, size_t unwrapped_slots, int ttl_s);
void keycache_free(keycache *c);
bool keycache_get(keycache *c, const char *device_id, int key_index, keycache_entry *out);
/* The generation to pass to the puts: read it before reading the row that
 * will be put. A put is dropped when an invalidate or clear came in
 * between, so a row read (or a key unwrapped) before a device changed is
 * never cached after this kmsd dropped the device. */
uint64_t keycache_generation(keycache *c);
void keycache_put(keycache *c, const char *device_id, int key_index, const keycache_entry *e,
                  uint64_t gen);
/* Drop the device's rows and wipe its unwrapped keys. */
void keycache_invalidate(keycache *c, const char *device_id);
/* Drop every entry (after this kmsd rewrapped keys under a new master key). */
void keycache_clear(keycache *c);

#define KEYCACHE_KEY_MAX 32

/* The key unwrapped from exactly wrapped[0..wl), if cached and younger than
 * the TTL: copied into key (cap bytes, the caller's secure memory). */
bool keycache_get_unwrapped(keycache *c, const char *device_id, int key_index,
                            const uint8_t *wrapped, size_t wl, uint8_t *key, size_t cap,
                            size_t *key_len);
/* Remember key (at most KEYCACHE_KEY_MAX bytes) as unwrapped from wrapped. */
void keycache_put_unwrapped(keycache *c, const char *device_id, int key_index,
                            const uint8_t *wrapped, size_t wl, const uint8_t *key,
                            size_t key_len, uint64_t gen);
/* Wipe the unwrapped keys older than the TTL (the maintenance thread calls
 * it every session_reap_interval), so a key nobody asks for again does not
 * stay in memory. Returns how many it wiped. */
size_t keycache_expire(keycache *c);
/* Whether unwrapped keys are kept (slots > 0 and a secure heap). */
bool keycache_holds_unwrapped(const keycache *c);

typedef struct {
    uint64_t hits, misses, invalidations;
    uint64_t unwrapped_hits, unwrapped_misses;
} keycache_stats;
void keycache_stats_get(keycache *c, keycache_stats *out);
/* Hits and misses of both parts for /metrics (a metrics_render_fn; cache is a keycache). */
void keycache_metrics_render(void *cache, FILE *f);

#endif
