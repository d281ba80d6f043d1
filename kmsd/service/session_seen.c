/* session_seen — a direct-mapped set of recently seen session hashes. */
#include "service/session_seen.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

struct session_seen {
    size_t n;
    _Atomic uint64_t *tags; /* 0: empty */
};

/* Bytes 0..7 pick the slot, bytes 8..15 are the tag (never 0). */
static void split(const session_seen *ss, const uint8_t hash[32], size_t *slot, uint64_t *tag)
{
    uint64_t a, b;
    memcpy(&a, hash, 8);
    memcpy(&b, hash + 8, 8);
    *slot = (size_t)(a % ss->n);
    *tag = b | 1;
}

session_seen *session_seen_new(size_t slots)
{
    session_seen *ss = calloc(1, sizeof(*ss));
    if (!ss)
        return NULL;
    ss->n = slots;
    if (slots && !(ss->tags = calloc(slots, sizeof(*ss->tags)))) {
        free(ss);
        return NULL;
    }
    return ss;
}

void session_seen_free(session_seen *ss)
{
    if (!ss)
        return;
    free((void *)ss->tags);
    free(ss);
}

void session_seen_add(session_seen *ss, const uint8_t hash[32])
{
    size_t i;
    uint64_t tag;
    if (!ss || !ss->n)
        return;
    split(ss, hash, &i, &tag);
    atomic_store_explicit(&ss->tags[i], tag, memory_order_relaxed);
}

bool session_seen_has(session_seen *ss, const uint8_t hash[32])
{
    size_t i;
    uint64_t tag;
    if (!ss || !ss->n)
        return false;
    split(ss, hash, &i, &tag);
    return atomic_load_explicit(&ss->tags[i], memory_order_relaxed) == tag;
}
