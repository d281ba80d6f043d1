/* keywrap — AES-GCM wrapping of key material under versioned token master keys. */
#include "keywrap.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/rand.h>

#define KW_MAX_VERSIONS 8

struct keywrap {
    p11_token *t;
    char *prefix;
    pthread_rwlock_t lock;
    struct {
        uint32_t version;
        CK_OBJECT_HANDLE h;
        uint64_t generation; /* p11 generation the handle belongs to */
        bool has_kcv;
        uint8_t kcv[KEYWRAP_KCV_LEN];
        _Atomic uint64_t uses; /* new-IV GCM calls not yet taken (keywrap_uses_take) */
    } keys[KW_MAX_VERSIONS];
    int nkeys;
    uint32_t active;
};

CK_RV keywrap_new(keywrap **out, p11_token *t, const char *prefix)
{
    keywrap *kw = calloc(1, sizeof(*kw));
    if (!kw)
        return CKR_HOST_MEMORY;
    kw->t = t;
    kw->prefix = strdup(prefix);
    if (!kw->prefix) {
        free(kw);
        return CKR_HOST_MEMORY;
    }
    pthread_rwlock_init(&kw->lock, NULL);
    *out = kw;
    return CKR_OK;
}

void keywrap_free(keywrap *kw)
{
    if (!kw)
        return;
    pthread_rwlock_destroy(&kw->lock);
    free(kw->prefix);
    free(kw);
}

void keywrap_label(const keywrap *kw, uint32_t version, char *buf, size_t len)
{
    snprintf(buf, len, "%s-%u", kw->prefix, version);
}

/* Handle of a loaded version, if it is still valid in the module's
 * current generation. *known tells whether the version was ever loaded. */
static bool lookup(keywrap *kw, uint32_t version, CK_OBJECT_HANDLE *h, bool *known)
{
    bool ok = false;
    uint64_t gen = p11_generation(kw->t);
    *known = false;
    pthread_rwlock_rdlock(&kw->lock);
    for (int i = 0; i < kw->nkeys; i++)
        if (kw->keys[i].version == version) {
            *known = true;
            *h = kw->keys[i].h;
            ok = kw->keys[i].generation == gen;
        }
    pthread_rwlock_unlock(&kw->lock);
    return ok;
}

static CK_RV remember(keywrap *kw, uint32_t version, CK_OBJECT_HANDLE h, uint64_t gen)
{
    CK_RV rv = CKR_OK;
    pthread_rwlock_wrlock(&kw->lock);
    int i;
    for (i = 0; i < kw->nkeys; i++)
        if (kw->keys[i].version == version)
            break;
    if (i == kw->nkeys) {
        if (kw->nkeys == KW_MAX_VERSIONS)
            rv = CKR_DEVICE_MEMORY;
        else
            kw->nkeys++;
    }
    if (rv == CKR_OK) {
        kw->keys[i].version = version;
        kw->keys[i].h = h;
        kw->keys[i].generation = gen;
    }
    pthread_rwlock_unlock(&kw->lock);
    return rv;
}

CK_RV keywrap_load(keywrap *kw, uint32_t version, bool *found)
{
    char label[128];
    CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;
    uint64_t gen = p11_generation(kw->t); /* read before the search, see lookup() */
    keywrap_label(kw, version, label, sizeof(label));
    CK_RV rv = p11_find_secret_key(kw->t, label, &h, found);
    if (rv == CKR_OK && *found)
        rv = remember(kw, version, h, gen);
    return rv;
}

CK_RV keywrap_create(keywrap *kw, uint32_t version)
{
    char label[128];
    CK_OBJECT_HANDLE h;
    uint64_t gen = p11_generation(kw->t);
    keywrap_label(kw, version, label, sizeof(label));
    CK_RV rv = p11_generate_master_key(kw->t, label, &h);
    if (rv == CKR_OK)
        rv = remember(kw, version, h, gen);
    return rv;
}

static CK_RV handle_for(keywrap *kw, uint32_t version, CK_OBJECT_HANDLE *h);

bool keywrap_has(keywrap *kw, uint32_t version)
{
    CK_OBJECT_HANDLE h;
    bool known;
    lookup(kw, version, &h, &known);
    return known;
}

CK_RV keywrap_destroy(keywrap *kw, uint32_t version)
{
    CK_OBJECT_HANDLE h;
    CK_RV rv = handle_for(kw, version, &h);
    if (rv != CKR_OK)
        return rv;
    rv = p11_destroy_object(kw->t, h);
    if (rv == CKR_OK || rv == CKR_OBJECT_HANDLE_INVALID) {
        keywrap_forget(kw, version);
        rv = CKR_OK;
    }
    return rv;
}

void keywrap_forget(keywrap *kw, uint32_t version)
{
    pthread_rwlock_wrlock(&kw->lock);
    for (int i = 0; i < kw->nkeys; i++)
        if (kw->keys[i].version == version) {
            /* Field by field: the counter is atomic. A forgotten version's
             * untaken uses go with it. */
            int last = kw->nkeys - 1;
            kw->keys[i].version = kw->keys[last].version;
            kw->keys[i].h = kw->keys[last].h;
            kw->keys[i].generation = kw->keys[last].generation;
            kw->keys[i].has_kcv = kw->keys[last].has_kcv;
            memcpy(kw->keys[i].kcv, kw->keys[last].kcv, KEYWRAP_KCV_LEN);
            atomic_store(&kw->keys[i].uses, atomic_load(&kw->keys[last].uses));
            atomic_store(&kw->keys[last].uses, 0);
            kw->nkeys--;
            break;
        }
    pthread_rwlock_unlock(&kw->lock);
}

void keywrap_set_active(keywrap *kw, uint32_t version)
{
    pthread_rwlock_wrlock(&kw->lock);
    kw->active = version;
    pthread_rwlock_unlock(&kw->lock);
}

uint32_t keywrap_active(const keywrap *kw)
{
    keywrap *m = (keywrap *)kw;
    pthread_rwlock_rdlock(&m->lock);
    uint32_t v = m->active;
    pthread_rwlock_unlock(&m->lock);
    return v;
}

/* A current handle for version: the cached one, or found again by label
 * after the module was re-initialized. */
static CK_RV handle_for(keywrap *kw, uint32_t version, CK_OBJECT_HANDLE *h)
{
    bool known, found = false;
    CK_RV rv;
    if (lookup(kw, version, h, &known))
        return CKR_OK;
    if (!known)
        return CKR_KEY_HANDLE_INVALID;
    rv = keywrap_load(kw, version, &found);
    if (rv != CKR_OK)
        return rv;
    if (!found || !lookup(kw, version, h, &known))
        return CKR_KEY_HANDLE_INVALID;
    return CKR_OK;
}

CK_RV keywrap_info(keywrap *kw, uint32_t version, p11_key_info *info)
{
    CK_OBJECT_HANDLE h;
    CK_RV rv = handle_for(kw, version, &h);
    return rv != CKR_OK ? rv : p11_key_info_get(kw->t, h, info);
}

/* Run a GCM operation under version. A handle that went stale (re-inserted
 * token, changed object) is found again by label, once. */
static CK_RV gcm(keywrap *kw, bool enc, uint32_t version, const uint8_t iv[12],
                 const uint8_t *aad, size_t aad_len, const uint8_t *in, size_t in_len,
                 uint8_t *out, size_t *out_len)
{
    CK_OBJECT_HANDLE h;
    size_t cap = *out_len;
    CK_RV rv = handle_for(kw, version, &h);
    if (rv != CKR_OK)
        return rv;
    for (int attempt = 0; attempt < 2; attempt++) {
        bool found = false, known;
        *out_len = cap;
        rv = enc ? p11_gcm_encrypt(kw->t, h, iv, aad, aad_len, in, in_len, out, out_len)
                 : p11_gcm_decrypt(kw->t, h, iv, aad, aad_len, in, in_len, out, out_len);
        if (p11_rv_kind(rv) != P11_KIND_NOT_FOUND)
            break;
        CK_RV lrv = keywrap_load(kw, version, &found);
        if (lrv == CKR_OK && found && lookup(kw, version, &h, &known))
            continue; /* a fresh handle (the module was re-initialized): again */
        /* A master key we knew is gone. A version other than the active
         * one may have been rotated away and destroyed by another
         * instance: it stays gone, and the caller refreshes its view of
         * the versions (not-found). The active one gone means the token
         * lost its state (an HSM restart, a store that vanished):
         * re-initialize the module and ask once more; a search the token
         * answers without the key still means not-found, a failing one an
         * outage. Re-initializing for a destroyed old version would void
         * every concurrent request's key handles for nothing. */
        if (version != keywrap_active(kw)) {
            rv = lrv != CKR_OK ? lrv : found ? CKR_DEVICE_REMOVED : CKR_KEY_HANDLE_INVALID;
            break;
        }
        p11_recover(kw->t);
        found = false;
        if (keywrap_load(kw, version, &found) == CKR_OK && !found) {
            rv = CKR_KEY_HANDLE_INVALID;
            break;
        }
        if (!found || !lookup(kw, version, &h, &known)) {
            rv = CKR_DEVICE_REMOVED;
            break;
        }
    }
    return rv;
}

CK_RV keywrap_kcv(keywrap *kw, uint32_t version, uint8_t kcv[KEYWRAP_KCV_LEN])
{
    /* GMAC: empty plaintext, fixed AAD, all-zero IV. Random wrap IVs are
     * never all-zero in practice (2^-96), so this IV is not reused. */
    static const uint8_t iv[12] = {0};
    static const char aad[] = "qkms master key check value v1";
    uint8_t tag[16], none[1] = {0};
    size_t len = sizeof(tag);
    /* Modules reject a NULL data pointer even with length 0. */
    CK_RV rv = gcm(kw, true, version, iv, (const uint8_t *)aad, sizeof(aad) - 1, none, 0, tag,
                   &len);
    if (rv == CKR_OK && len != sizeof(tag))
        rv = CKR_FUNCTION_FAILED;
    if (rv == CKR_OK)
        memcpy(kcv, tag, KEYWRAP_KCV_LEN);
    return rv;
}

/* Count one GCM invocation with a new random IV under version, before it
 * runs (so a failed call is counted too). The counts live in memory until
 * kmsd records them in the database (wrap_budget.h): a crash loses those
 * since the last record. */
static void count_use(keywrap *kw, uint32_t version)
{
    pthread_rwlock_rdlock(&kw->lock);
    for (int i = 0; i < kw->nkeys; i++)
        if (kw->keys[i].version == version)
            atomic_fetch_add(&kw->keys[i].uses, 1);
    pthread_rwlock_unlock(&kw->lock);
}

int keywrap_uses_take(keywrap *kw, uint32_t *versions, uint64_t *counts, int max)
{
    int n = 0;
    pthread_rwlock_rdlock(&kw->lock);
    for (int i = 0; i < kw->nkeys && n < max; i++) {
        uint64_t c = atomic_exchange(&kw->keys[i].uses, 0);
        if (c) {
            versions[n] = kw->keys[i].version;
            counts[n++] = c;
        }
    }
    pthread_rwlock_unlock(&kw->lock);
    return n;
}

void keywrap_uses_return(keywrap *kw, uint32_t version, uint64_t n)
{
    pthread_rwlock_rdlock(&kw->lock);
    for (int i = 0; i < kw->nkeys; i++)
        if (kw->keys[i].version == version)
            atomic_fetch_add(&kw->keys[i].uses, n);
    pthread_rwlock_unlock(&kw->lock);
}

/* The GMAC itself, for making (counted) and checking (not: the IV is old). */
static CK_RV mac_compute(keywrap *kw, uint32_t version, const uint8_t iv[12],
                         const uint8_t *data, size_t len, uint8_t tag[KEYWRAP_MAC_LEN])
{
    uint8_t aad[1 + KEYWRAP_MAC_MAX], out[16], none[1] = {0};
    size_t out_len = sizeof(out);
    CK_RV rv;
    if (len > KEYWRAP_MAC_MAX || (len && !data))
        return CKR_ARGUMENTS_BAD;
    aad[0] = 0x02;
    if (len)
        memcpy(aad + 1, data, len);
    rv = gcm(kw, true, version, iv, aad, len + 1, none, 0, out, &out_len);
    if (rv == CKR_OK && out_len != sizeof(out))
        rv = CKR_FUNCTION_FAILED;
    if (rv == CKR_OK)
        memcpy(tag, out, KEYWRAP_MAC_LEN);
    return rv;
}

CK_RV keywrap_mac(keywrap *kw, uint32_t version, const uint8_t iv[12], const uint8_t *data,
                  size_t len, uint8_t tag[KEYWRAP_MAC_LEN])
{
    count_use(kw, version);
    return mac_compute(kw, version, iv, data, len, tag);
}

CK_RV keywrap_mac_verify(keywrap *kw, uint32_t version, const uint8_t iv[12],
                         const uint8_t *data, size_t len, const uint8_t tag[KEYWRAP_MAC_LEN])
{
    uint8_t want[KEYWRAP_MAC_LEN];
    CK_RV rv = mac_compute(kw, version, iv, data, len, want);
    if (rv == CKR_OK && CRYPTO_memcmp(want, tag, KEYWRAP_MAC_LEN) != 0)
        rv = CKR_SIGNATURE_INVALID;
    OPENSSL_cleanse(want, sizeof(want));
    return rv;
}

CK_RV keywrap_expect_kcv(keywrap *kw, uint32_t version, const uint8_t kcv[KEYWRAP_KCV_LEN])
{
    CK_RV rv = CKR_KEY_HANDLE_INVALID;
    pthread_rwlock_wrlock(&kw->lock);
    for (int i = 0; i < kw->nkeys; i++)
        if (kw->keys[i].version == version) {
            memcpy(kw->keys[i].kcv, kcv, KEYWRAP_KCV_LEN);
            kw->keys[i].has_kcv = true;
            rv = CKR_OK;
        }
    pthread_rwlock_unlock(&kw->lock);
    return rv;
}

CK_RV keywrap_check(keywrap *kw)
{
    uint8_t want[KEYWRAP_KCV_LEN], got[KEYWRAP_KCV_LEN];
    uint32_t v = keywrap_active(kw);
    bool known = false;
    CK_RV rv;
    pthread_rwlock_rdlock(&kw->lock);
    for (int i = 0; i < kw->nkeys; i++)
        if (kw->keys[i].version == v && kw->keys[i].has_kcv) {
            memcpy(want, kw->keys[i].kcv, KEYWRAP_KCV_LEN);
            known = true;
        }
    pthread_rwlock_unlock(&kw->lock);
    if (!known)
        return CKR_KEY_HANDLE_INVALID;
    rv = keywrap_kcv(kw, v, got);
    if (rv == CKR_OK && CRYPTO_memcmp(want, got, KEYWRAP_KCV_LEN) != 0)
        rv = CKR_KEY_CHANGED;
    return rv;
}

static void put_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

uint32_t keywrap_blob_version(const uint8_t *b, size_t n)
{
    if (n < KEYWRAP_OVERHEAD + 1 || b[0] != KEYWRAP_FORMAT)
        return 0;
    return (uint32_t)b[1] << 24 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 8 | b[4];
}

/* aad = header || ctx; ctx is bounded so a stack buffer does. */
static int build_aad(uint8_t *aad, size_t cap, const uint8_t *hdr, const uint8_t *ctx,
                     size_t ctx_len, size_t *len)
{
    if (ctx_len > cap - KEYWRAP_HDR)
        return -1;
    memcpy(aad, hdr, KEYWRAP_HDR);
    if (ctx_len)
        memcpy(aad + KEYWRAP_HDR, ctx, ctx_len);
    *len = KEYWRAP_HDR + ctx_len;
    return 0;
}

CK_RV keywrap_wrap(keywrap *kw, const uint8_t *ctx, size_t ctx_len, const uint8_t *key,
                   size_t key_len, uint8_t *out, size_t *out_len)
{
    uint8_t aad[512];
    size_t aad_len, ct_len;
    uint32_t v = keywrap_active(kw);
    CK_RV rv;

    if (key_len == 0 || key_len > KEYWRAP_MAX_KEY || *out_len < key_len + KEYWRAP_OVERHEAD)
        return CKR_ARGUMENTS_BAD;
    if (v == 0)
        return CKR_KEY_HANDLE_INVALID;
    out[0] = KEYWRAP_FORMAT;
    put_be32(out + 1, v);
    if (RAND_bytes(out + KEYWRAP_HDR, 12) != 1)
        return CKR_FUNCTION_FAILED;
    if (build_aad(aad, sizeof(aad), out, ctx, ctx_len, &aad_len) != 0)
        return CKR_ARGUMENTS_BAD;
    ct_len = *out_len - KEYWRAP_HDR - 12;
    count_use(kw, v);
    rv = gcm(kw, true, v, out + KEYWRAP_HDR, aad, aad_len, key, key_len,
             out + KEYWRAP_HDR + 12, &ct_len);
    if (rv == CKR_OK)
        *out_len = KEYWRAP_HDR + 12 + ct_len;
    return rv;
}

CK_RV keywrap_unwrap(keywrap *kw, const uint8_t *ctx, size_t ctx_len, const uint8_t *blob,
                     size_t blob_len, uint8_t *key, size_t *key_len)
{
    uint8_t aad[512];
    size_t aad_len;
    uint32_t v = keywrap_blob_version(blob, blob_len);
    size_t ct_len = blob_len - KEYWRAP_HDR - 12;

    if (v == 0 || blob_len > KEYWRAP_MAX_KEY + KEYWRAP_OVERHEAD)
        return CKR_ENCRYPTED_DATA_INVALID;
    if (*key_len < ct_len)
        return CKR_BUFFER_TOO_SMALL;
    if (build_aad(aad, sizeof(aad), blob, ctx, ctx_len, &aad_len) != 0)
        return CKR_ARGUMENTS_BAD;
    CK_RV rv = gcm(kw, false, v, blob + KEYWRAP_HDR, aad, aad_len, blob + KEYWRAP_HDR + 12,
                   ct_len, key, key_len);
    if (rv != CKR_OK)
        OPENSSL_cleanse(key, ct_len);
    return rv;
}
