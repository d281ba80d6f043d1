/*
 * keycache — a bounded cache of device key rows (the *wrapped* key and its
 * metadata, never plaintext) for the device request path, so that a request
 * costs one database round trip instead of two.
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
    int key_bits;
    int64_t not_before, not_after; /* Unix seconds */
    uint8_t wrapped[KEYCACHE_WRAPPED_MAX];
    size_t wrapped_len;
} keycache_entry;

typedef struct keycache keycache;

/* slots == 0 gives a cache that never hits. */
keycache *keycache_new(size_t slots, int ttl_s);
void keycache_free(keycache *c);
bool keycache_get(keycache *c, const char *device_id, int key_index, keycache_entry *out);
void keycache_put(keycache *c, const char *device_id, int key_index, const keycache_entry *e);
void keycache_invalidate(keycache *c, const char *device_id);
/* Drop every entry (after this kmsd rewrapped keys under a new master key). */
void keycache_clear(keycache *c);

typedef struct {
    uint64_t hits, misses, invalidations;
} keycache_stats;
void keycache_stats_get(keycache *c, keycache_stats *out);
/* Hits and misses for /metrics (a metrics_render_fn; cache is a keycache). */
void keycache_metrics_render(void *cache, FILE *f);

#endif
