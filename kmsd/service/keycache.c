/* keycache — direct-mapped, TTL-bounded cache of wrapped device key rows. */
#include "service/keycache.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

#include "qkms_proto.h"

#define STRIPES 64

typedef struct {
    bool used;
    char device_id[QKP_MAX_ID + 1];
    int key_index;
    time_t stored;
    keycache_entry e;
} slot;

struct keycache {
    slot *slots;
    size_t n;
    int ttl;
    pthread_mutex_t locks[STRIPES];
    _Atomic uint64_t hits, misses, invalidations;
};

/* FNV-1a over the ID and the index. */
static size_t slot_of(const keycache *c, const char *id, int idx)
{
    uint64_t h = 1469598103934665603ull;
    for (const char *p = id; *p; p++)
        h = (h ^ (uint8_t)*p) * 1099511628211ull;
    h = (h ^ (uint8_t)idx) * 1099511628211ull;
    return (size_t)(h % c->n);
}

keycache *keycache_new(size_t slots, int ttl_s)
{
    keycache *c = calloc(1, sizeof(*c));
    if (!c)
        return NULL;
    c->n = slots;
    c->ttl = ttl_s;
    if (slots && !(c->slots = calloc(slots, sizeof(slot)))) {
        free(c);
        return NULL;
    }
    for (int i = 0; i < STRIPES; i++)
        pthread_mutex_init(&c->locks[i], NULL);
    return c;
}

void keycache_free(keycache *c)
{
    if (!c)
        return;
    if (c->slots) {
        OPENSSL_cleanse(c->slots, c->n * sizeof(slot));
        free(c->slots);
    }
    for (int i = 0; i < STRIPES; i++)
        pthread_mutex_destroy(&c->locks[i]);
    free(c);
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
        time(NULL) - s->stored < c->ttl) {
        *out = s->e;
        hit = true;
    }
    pthread_mutex_unlock(&c->locks[i % STRIPES]);
    atomic_fetch_add(hit ? &c->hits : &c->misses, 1);
    return hit;
}

void keycache_put(keycache *c, const char *id, int idx, const keycache_entry *e)
{
    size_t i;
    if (!c->n || strlen(id) > QKP_MAX_ID)
        return;
    i = slot_of(c, id, idx);
    pthread_mutex_lock(&c->locks[i % STRIPES]);
    slot *s = &c->slots[i];
    s->used = true;
    strcpy(s->device_id, id);
    s->key_index = idx;
    s->stored = time(NULL);
    s->e = *e;
    pthread_mutex_unlock(&c->locks[i % STRIPES]);
}

void keycache_invalidate(keycache *c, const char *id)
{
    if (!c->n)
        return;
    atomic_fetch_add(&c->invalidations, 1);
    for (int idx = 0; idx < 256; idx++) {
        size_t i = slot_of(c, id, idx);
        pthread_mutex_lock(&c->locks[i % STRIPES]);
        slot *s = &c->slots[i];
        if (s->used && s->key_index == idx && !strcmp(s->device_id, id))
            s->used = false;
        pthread_mutex_unlock(&c->locks[i % STRIPES]);
    }
}

void keycache_clear(keycache *c)
{
    for (size_t i = 0; i < c->n; i++) {
        pthread_mutex_lock(&c->locks[i % STRIPES]);
        if (c->slots[i].used)
            OPENSSL_cleanse(&c->slots[i].e, sizeof(c->slots[i].e));
        c->slots[i].used = false;
        pthread_mutex_unlock(&c->locks[i % STRIPES]);
    }
}

void keycache_stats_get(keycache *c, keycache_stats *out)
{
    out->hits = atomic_load(&c->hits);
    out->misses = atomic_load(&c->misses);
    out->invalidations = atomic_load(&c->invalidations);
}

void keycache_metrics_render(void *cache, FILE *f)
{
    keycache *c = cache;
    keycache_stats ks;
    keycache_stats_get(c, &ks);
    fprintf(f, "# HELP qkms_device_key_cache_total Device key cache lookups by result.\n"
               "# TYPE qkms_device_key_cache_total counter\n"
               "qkms_device_key_cache_total{result=\"hit\"} %llu\n"
               "qkms_device_key_cache_total{result=\"miss\"} %llu\n",
            (unsigned long long)ks.hits, (unsigned long long)ks.misses);
}
