/*
 * ratelimit — token buckets keyed by string, in a bounded table.
 *
 * Contract:
 *  - A ratelimit holds one bucket per key (a device ID, a client address, an
 *    admin token's name), each holding up to `burst` tokens and refilled at
 *    `rate` tokens per second. A request takes one token; with none left it
 *    is refused and told how many whole seconds (at least 1) until one is.
 *  - Time is passed in (ratelimit_take's now_ns, CLOCK_MONOTONIC in kmsd) so
 *    the arithmetic is testable; refill is lazy (by elapsed time at the next
 *    take), there is no timer thread. Time going backwards adds nothing.
 *  - Memory is fixed at ratelimit_new: `capacity` slots, set-associative
 *    (a key may live in one of 8 slots of one stripe). Keys are stored as a
 *    128-bit keyed hash (SHA-256 with a per-process random salt), so a
 *    key's length does not matter and the table holds no IDs or addresses.
 *    When a key's slots are all taken, an idle bucket (one that has refilled
 *    to `burst`, so forgetting it changes nothing) is reused; only when none
 *    is idle is the least recently used dropped (counted as an eviction).
 *  - Thread-safe: a mutex per stripe; limits are read atomically, so
 *    ratelimit_set may be called at any time (SIGHUP). rate 0 = unlimited.
 */
#ifndef QKMS_RATELIMIT_H
#define QKMS_RATELIMIT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "config.h"

typedef struct ratelimit ratelimit;

typedef struct {
    uint64_t limited;   /* takes refused */
    uint64_t evictions; /* buckets dropped before they had refilled */
    size_t buckets;     /* slots in use */
    size_t capacity;    /* slots in all */
} ratelimit_stats;

/* NULL when out of memory. capacity is rounded up to whole stripes. */
ratelimit *ratelimit_new(size_t capacity);
void ratelimit_free(ratelimit *rl);
/* rate in tokens per second (resolution 0.001; 0 = unlimited), burst >= 1. */
void ratelimit_set(ratelimit *rl, double rate, int burst);
/* Take one token from key's bucket at time now_ns. true when allowed;
 * false when refused, with *retry_after_s (may be NULL) set to the whole
 * seconds until a token is available, at least 1. */
bool ratelimit_take(ratelimit *rl, const char *key, uint64_t now_ns, int *retry_after_s);
/* Give back a token taken for a request that turned out not to count (a
 * replay refused later); capped at burst, a no-op for an unknown key. */
void ratelimit_refund(ratelimit *rl, const char *key, uint64_t now_ns);
void ratelimit_stats_get(ratelimit *rl, ratelimit_stats *st);
/* CLOCK_MONOTONIC in nanoseconds. */
uint64_t ratelimit_now_ns(void);

/* kmsd's scopes: device API per authenticated device, device API per client
 * address, admin API per token name. RL_NONE: a route without a
 * per-principal limit (http_route.rl_scope). */
typedef enum { RL_NONE = -1, RL_DEVICE, RL_CLIENT, RL_ADMIN, RL_NSCOPES } rl_scope;
extern const char *const ratelimit_scope_names[RL_NSCOPES];

/* Create every scope's table (rate_limit_buckets slots each) and apply the
 * limits; 0 or -1 (out of memory; free with ratelimit_free_all). */
int ratelimit_open_all(ratelimit *rl[RL_NSCOPES], const kms_config *c);
/* Apply the rate_limit_* options (start and SIGHUP). */
void ratelimit_configure_all(ratelimit *rl[RL_NSCOPES], const kms_config *c);
void ratelimit_free_all(ratelimit *rl[RL_NSCOPES]);
/* qkms_rate_limited_total, qkms_rate_limit_buckets, qkms_rate_limit_evictions_total. */
/* scopes: the array of RL_NSCOPES limiters (a metrics_render_fn). */
void ratelimit_metrics_render(void *scopes, FILE *f);

#endif
