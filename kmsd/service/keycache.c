/* keycache — direct-mapped, TTL-bounded cache of device key rows and of the
 * keys unwrapped from them (the latter in the secure heap). */
#include "service/keycache.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <openssl/crypto.h>

#include "deadline.h"
#include "log.h"
#include "qkms_proto.h"

#define STRIPES 64

/* Entry ages on the monotonic clock: a wall-clock step back must not keep
 * a key past its TTL. */
static time_t now_s(void) { return (time_t)(deadline_now_ms() / 1000); }

typedef struct {
    bool used;
    char device_id[QKP_MAX_ID + 1];
    int key_index;
    time_t stored;
    keycache_entry e;
} slot;

/* An unwrapped key's slot: what it was unwrapped from, in ordinary memory;
 * the key itself at keys + i * KEYCACHE_KEY_MAX, in the secure heap. */
typedef struct {
    bool used;
    char device_id[QKP_MAX_ID + 1];
    int key_index;
    time_t stored;
    uint8_t wrapped[KEYCACHE_WRAPPED_MAX];
    size_t wrapped_len, key_len;
} uslot;

struct keycache {
    slot *slots;
    size_t n;
    uslot *uslots;
    uint8_t *keys; /* un * KEYCACHE_KEY_MAX bytes, secure heap */
    size_t un;
    int ttl;
    pthread_mutex_t locks[STRIPES];
    _Atomic uint64_t hits, misses, invalidations, uhits, umisses;
    _Atomic uint64_t generation; /* bumped by every invalidate and clear */
};

/* FNV-1a over the ID and the index. */
static uint64_t hash_of(const char *id, int idx)
{
    uint64_t h = 1469598103934665603ull;
    for (const char *p = id; *p; p++)
        h = (h ^ (uint8_t)*p) * 1099511628211ull;
    return (h ^ (uint8_t)idx) * 1099511628211ull;
}

static size_t slot_of(const keycache *c, const char *id, int idx)
{
    return (size_t)(hash_of(id, idx) % c->n);
}

static size_t uslot_of(const keycache *c, const char *id, int idx)
{
    return (size_t)(hash_of(id, idx) % c->un);
}

/* Both tables share the striped locks: a slot's lock is its index mod
 * STRIPES in either table, so keycache_invalidate takes each at most once
 * per table. */
keycache *keycache_new(size_t slots, size_t unwrapped_slots, int ttl_s)
{
    keycache *c = calloc(1, sizeof(*c));
    if (!c)
        return NULL;
    c->n = slots;
    c->ttl = ttl_s;
    if (slots && !(c->slots = calloc(slots, sizeof(slot))))
        goto fail;
    /* Plaintext keys only where they are locked and wiped: without a
     * secure heap OPENSSL_secure_zalloc would quietly use malloc. */
    if (unwrapped_slots && CRYPTO_secure_malloc_initialized()) {
        c->keys = OPENSSL_secure_zalloc(unwrapped_slots * KEYCACHE_KEY_MAX);
        c->uslots = calloc(unwrapped_slots, sizeof(uslot));
        if (!c->keys || !c->uslots || !CRYPTO_secure_allocated(c->keys)) {
            log_emit(LOG_WARN, "unwrapped device keys are not cached: no room in the secure heap",
                     "{s:I}", "slots", (json_int_t)unwrapped_slots);
            OPENSSL_secure_clear_free(c->keys, unwrapped_slots * KEYCACHE_KEY_MAX);
            free(c->uslots);
            c->keys = NULL;
            c->uslots = NULL;
        } else {
            c->un = unwrapped_slots;
        }
    }
    for (int i = 0; i < STRIPES; i++)
        pthread_mutex_init(&c->locks[i], NULL);
    return c;
fail:
    free(c);
    return NULL;
}

void keycache_free(keycache *c)
{
    if (!c)
        return;
    if (c->slots) {
        OPENSSL_cleanse(c->slots, c->n * sizeof(slot));
        free(c->slots);
    }
    if (c->keys)
        OPENSSL_secure_clear_free(c->keys, c->un * KEYCACHE_KEY_MAX);
    free(c->uslots);
    for (int i = 0; i < STRIPES; i++)
        pthread_mutex_destroy(&c->locks[i]);
    free(c);
}

bool keycache_holds_unwrapped(const keycache *c) { return c->un > 0; }

/* Wipe unwrapped slot i (its stripe lock held). */
static void udrop(keycache *c, size_t i)
{
    OPENSSL_cleanse(c->keys + i * KEYCACHE_KEY_MAX, KEYCACHE_KEY_MAX);
    c->uslots[i].used = false;
    c->uslots[i].key_len = 0;
}

bool keycache_get_unwrapped(keycache *c, const char *id, int idx, const uint8_t *wrapped,
                            size_t wl, uint8_t *key, size_t cap, size_t *key_len)
{
    bool hit = false;
    size_t i;
    if (!c->un)
        return false;
    i = uslot_of(c, id, idx);
    pthread_mutex_lock(&c->locks[i % STRIPES]);
    uslot *u = &c->uslots[i];
    if (u->used && u->key_index == idx && !strcmp(u->device_id, id)) {
        if (now_s() - u->stored >= c->ttl)
            udrop(c, i); /* expired: not left lying in memory until reused */
        else if (u->wrapped_len == wl && !memcmp(u->wrapped, wrapped, wl) && u->key_len <= cap) {
            memcpy(key, c->keys + i * KEYCACHE_KEY_MAX, u->key_len);
            *key_len = u->key_len;
            hit = true;
        }
    }
    pthread_mutex_unlock(&c->locks[i % STRIPES]);
    atomic_fetch_add(hit ? &c->uhits : &c->umisses, 1);
    return hit;
}

void keycache_put_unwrapped(keycache *c, const char *id, int idx, const uint8_t *wrapped,
                            size_t wl, const uint8_t *key, size_t key_len, uint64_t gen)
{
    size_t i;
    if (!c->un || strlen(id) > QKP_MAX_ID || wl > KEYCACHE_WRAPPED_MAX ||
        key_len > KEYCACHE_KEY_MAX)
        return;
    i = uslot_of(c, id, idx);
    pthread_mutex_lock(&c->locks[i % STRIPES]);
    /* Checked under the slot's lock: an invalidate that bumped the
     * generation before this point has its wipe of this slot after it. */
    if (atomic_load(&c->generation) != gen) {
        pthread_mutex_unlock(&c->locks[i % STRIPES]);
        return;
    }
    uslot *u = &c->uslots[i];
    udrop(c, i);
    u->used = true;
    strcpy(u->device_id, id);
    u->key_index = idx;
    u->stored = now_s();
    memcpy(u->wrapped, wrapped, wl);
    u->wrapped_len = wl;
    memcpy(c->keys + i * KEYCACHE_KEY_MAX, key, key_len);
    u->key_len = key_len;
    pthread_mutex_unlock(&c->locks[i % STRIPES]);
}

bool keycache_get(keycache *c, const char *id, int idx, keycache_entry *out)
{
    size_t i;
    bool hit = false;
    if (!c->n) {
        atomic_fetch_add(&c->misses, 1);
        return false;
    }
    i = slot_of(c, id, idx);
    pthread_mutex_lock(&c->locks[i % STRIPES]);
    slot *s = &c->slots[i];
    if (s->used && s->key_index == idx && !strcmp(s->device_id, id) &&
        now_s() - s->stored < c->ttl) {
        *out = s->e;
        hit = true;
    }
    pthread_mutex_unlock(&c->locks[i % STRIPES]);
    atomic_fetch_add(hit ? &c->hits : &c->misses, 1);
    return hit;
}

void keycache_put(keycache *c, const char *id, int idx, const keycache_entry *e, uint64_t gen)
{
    size_t i;
    if (!c->n || strlen(id) > QKP_MAX_ID)
        return;
    i = slot_of(c, id, idx);
    pthread_mutex_lock(&c->locks[i % STRIPES]);
    if (atomic_load(&c->generation) != gen) {
        pthread_mutex_unlock(&c->locks[i % STRIPES]);
        return;
    }
    slot *s = &c->slots[i];
    s->used = true;
    strcpy(s->device_id, id);
    s->key_index = idx;
    s->stored = now_s();
    s->e = *e;
    pthread_mutex_unlock(&c->locks[i % STRIPES]);
}

void keycache_invalidate(keycache *c, const char *id)
{
    if (!c->n && !c->un)
        return;
    atomic_fetch_add(&c->generation, 1);
    atomic_fetch_add(&c->invalidations, 1);
    for (int idx = 0; idx < 256; idx++) {
        if (c->n) {
            size_t i = slot_of(c, id, idx);
            pthread_mutex_lock(&c->locks[i % STRIPES]);
            slot *s = &c->slots[i];
            if (s->used && s->key_index == idx && !strcmp(s->device_id, id))
                s->used = false;
            pthread_mutex_unlock(&c->locks[i % STRIPES]);
        }
        if (c->un) {
            size_t i = uslot_of(c, id, idx);
            pthread_mutex_lock(&c->locks[i % STRIPES]);
            uslot *u = &c->uslots[i];
            if (u->used && u->key_index == idx && !strcmp(u->device_id, id))
                udrop(c, i);
            pthread_mutex_unlock(&c->locks[i % STRIPES]);
        }
    }
}

uint64_t keycache_generation(keycache *c) { return atomic_load(&c->generation); }

size_t keycache_expire(keycache *c)
{
    time_t now = now_s();
    size_t n = 0;
    for (size_t i = 0; i < c->un; i++) {
        pthread_mutex_lock(&c->locks[i % STRIPES]);
        if (c->uslots[i].used && now - c->uslots[i].stored >= c->ttl) {
            udrop(c, i);
            n++;
        }
        pthread_mutex_unlock(&c->locks[i % STRIPES]);
    }
    return n;
}

void keycache_clear(keycache *c)
{
    atomic_fetch_add(&c->generation, 1);
    for (size_t i = 0; i < c->n; i++) {
        pthread_mutex_lock(&c->locks[i % STRIPES]);
        if (c->slots[i].used)
            OPENSSL_cleanse(&c->slots[i].e, sizeof(c->slots[i].e));
        c->slots[i].used = false;
        pthread_mutex_unlock(&c->locks[i % STRIPES]);
    }
    for (size_t i = 0; i < c->un; i++) {
        pthread_mutex_lock(&c->locks[i % STRIPES]);
        udrop(c, i);
        pthread_mutex_unlock(&c->locks[i % STRIPES]);
    }
}

void keycache_stats_get(keycache *c, keycache_stats *out)
{
    out->hits = atomic_load(&c->hits);
    out->misses = atomic_load(&c->misses);
    out->invalidations = atomic_load(&c->invalidations);
    out->unwrapped_hits = atomic_load(&c->uhits);
    out->unwrapped_misses = atomic_load(&c->umisses);
}

void keycache_metrics_render(void *cache, FILE *f)
{
    keycache *c = cache;
    keycache_stats ks;
    keycache_stats_get(c, &ks);
    fprintf(f, "# HELP qkms_device_key_cache_total Device key cache lookups by result.\n"
               "# TYPE qkms_device_key_cache_total counter\n"
               "qkms_device_key_cache_total{result=\"hit\"} %llu\n"
               "qkms_device_key_cache_total{result=\"miss\"} %llu\n"
               "# HELP qkms_device_key_unwrapped_cache_total Lookups of unwrapped device keys "
               "(a hit skips a token unwrap).\n"
               "# TYPE qkms_device_key_unwrapped_cache_total counter\n"
               "qkms_device_key_unwrapped_cache_total{result=\"hit\"} %llu\n"
               "qkms_device_key_unwrapped_cache_total{result=\"miss\"} %llu\n",
            (unsigned long long)ks.hits, (unsigned long long)ks.misses,
            (unsigned long long)ks.unwrapped_hits, (unsigned long long)ks.unwrapped_misses);
}
