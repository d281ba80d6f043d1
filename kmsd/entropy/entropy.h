/*
 * entropy — the one place key material's randomness comes from.
 *
 * Contract:
 *  - Sources (entropy_source.h) are configured in order: the first is the
 *    primary (normally the quantum RNG), the rest are fallbacks. Every byte
 *    any source produces passes the SP 800-90B continuous health tests
 *    (repetition count, adaptive proportion; sp800_90b.h) before use, and a
 *    source (re)starting passes the start-up test over >= 1024 samples. Data
 *    that failed a test is discarded, never used; the source is quarantined,
 *    retried with back-off, and disabled after entropy_failure_limit
 *    consecutive failures (until entropy_enable()).
 *  - A background thread keeps a pool of tested primary output in locked
 *    memory between entropy_pool_low and entropy_pool_high, so a request
 *    never waits on the network while the pool holds data.
 *  - entropy_get() serves, per entropy_mode, either an AES-256 CTR-DRBG
 *    (OpenSSL EVP_RAND) reseeded with primary output every
 *    entropy_reseed_bytes / entropy_reseed_interval (or before every call
 *    with prediction resistance), or conditioned primary output directly
 *    (SHA-256 over ceil((256+64)/H) raw bytes per 32 output bytes).
 *  - When the primary is not usable: entropy_policy=require fails (-1:
 *    callers answer 503); fallback serves from the first healthy fallback and
 *    says so in the provenance, the log and the metrics.
 *  - No lock key generation needs is held across a source read: the
 *    refill thread reads the primary without e->mu, a request waits for a
 *    reseed without the DRBG's lock, and a fallback is read under its own
 *    lock only (waited for at most entropy_wait_ms). Once a wait for the
 *    pool has timed out, later requests go to the policy at once until
 *    primary data arrives again.
 *  - *provenance names where the bytes came from, e.g. "http+ctr-drbg",
 *    "http (direct)", "os (fallback)"; it points to storage owned by the
 *    entropy object. Thread-safe.
 */
#ifndef QKMS_ENTROPY_H
#define QKMS_ENTROPY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <jansson.h>

#include "config.h"
#include "p11.h"

typedef struct entropy entropy;

int entropy_open(entropy **out, const kms_config *cfg, p11_token *token, char *err,
                 size_t errlen);
void entropy_close(entropy *e);

int entropy_get(entropy *e, uint8_t *buf, size_t len, const char **provenance);

/* For secrets that are not key material (admin API tokens): as
 * entropy_get, but when the policy refuses (require with the primary down)
 * any healthy fallback serves, so operators can still get in to fix it. */
int entropy_get_secret(entropy *e, uint8_t *buf, size_t len);

/* Whether entropy_get would succeed now under the policy (for /readyz);
 * why says what is missing. Consumes no entropy. */
int entropy_ready(entropy *e, char *why, size_t whylen);

/* Re-enable a disabled source by name; 0, or -1 when there is none. */
int entropy_enable(entropy *e, const char *name);

/* {"policy","mode","pool":{...},"drbg":{...},"sources":[...]}. A source's
 * "describe" is complete with full (admins); otherwise without what may
 * carry a credential: an http URL's user info, path and query, an exec
 * command's arguments and directory. */
json_t *entropy_status(entropy *e, bool full);
void entropy_metrics_render(void *ent, FILE *f); /* a metrics_render_fn */

/* Sanity check kept for callers' unit tests: a block of one repeated byte. */
int entropy_block_looks_stuck(const uint8_t *buf, size_t len);

#endif
