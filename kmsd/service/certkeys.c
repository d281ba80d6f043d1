/* certkeys — the public keys of certificates by digest (certkeys.h). */
#include "service/certkeys.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "qkms_proto2.h"

#define PUBCACHE_SLOTS 4096

struct certkeys {
    pthread_mutex_t mu;
    struct {
        uint8_t sha[32];
        EVP_PKEY *pub; /* NULL: empty */
        bool p256;
    } slot[PUBCACHE_SLOTS];
};

certkeys *certkeys_new(void)
{
    certkeys *c = calloc(1, sizeof(*c));
    if (c)
        pthread_mutex_init(&c->mu, NULL);
    return c;
}

void certkeys_free(certkeys *c)
{
    if (!c)
        return;
    for (size_t i = 0; i < PUBCACHE_SLOTS; i++)
        EVP_PKEY_free(c->slot[i].pub);
    pthread_mutex_destroy(&c->mu);
    free(c);
}

static size_t slot_of(const uint8_t sha[32])
{
    return ((size_t)sha[0] << 8 | sha[1]) % PUBCACHE_SLOTS;
}

EVP_PKEY *certkeys_get(certkeys *c, const uint8_t sha[32], const uint8_t *der,
                          size_t len, bool *p256)
{
    size_t i = slot_of(sha);
    const unsigned char *p = der;
    EVP_PKEY *k = NULL;
    X509 *x;
    uint8_t pt[QKP2_POINT_LEN];

    pthread_mutex_lock(&c->mu);
    if (c->slot[i].pub && !memcmp(c->slot[i].sha, sha, 32) && EVP_PKEY_up_ref(c->slot[i].pub)) {
        k = c->slot[i].pub;
        *p256 = c->slot[i].p256;
    }
    pthread_mutex_unlock(&c->mu);
    if (k)
        return k;
    if (!(x = d2i_X509(NULL, &p, (long)len)) || !(k = X509_get_pubkey(x))) {
        X509_free(x);
        ERR_clear_error();
        return NULL;
    }
    /* Protocol v2 signs with the key and agrees on it (Z3): a P-256 key,
     * and a key usage, when there is one, that allows both. */
    {
        uint32_t ku = X509_get_key_usage(x);
        *p256 = qkp2_key_point(k, pt) == 0 &&
                (ku == UINT32_MAX ||
                 ((ku & KU_DIGITAL_SIGNATURE) && (ku & KU_KEY_AGREEMENT)));
    }
    X509_free(x);
    ERR_clear_error();
    pthread_mutex_lock(&c->mu);
    if (EVP_PKEY_up_ref(k)) {
        EVP_PKEY_free(c->slot[i].pub);
        memcpy(c->slot[i].sha, sha, 32);
        c->slot[i].pub = k;
        c->slot[i].p256 = *p256;
    }
    pthread_mutex_unlock(&c->mu);
    return k;
}

