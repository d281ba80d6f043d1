/*
 * p11 — access to one PKCS#11 token through a module loaded by path.
 *
 * Contract:
 *  - p11_open() dlopens the module, calls C_Initialize with CKF_OS_LOCKING_OK,
 *    finds the token by label, opens a fixed pool of R/W sessions and logs in
 *    once as the user. The process must not fork after this (PKCS#11 forbids
 *    using a module across fork).
 *  - Every operation borrows a session from the pool (blocking until one is
 *    free) and returns it. A session the module reports closed or invalid is
 *    reopened, and a lost login is re-established, once per call; the
 *    operation is then run again only if that is safe: a key generation is
 *    retried only after a search by label finds no key (a first try whose
 *    answer was lost may have created it), so it never makes two keys with
 *    one label.
 *  - When the token itself fails (device error, token gone, general error),
 *    the module is finalized and initialized again (at most every 2 s, with
 *    no operation in flight) and p11_generation() moves on, so key handles
 *    are looked up again; until then operations fail and callers answer 503.
 *  - Functions return the raw CK_RV; p11_rv_kind() classifies it and
 *    p11_rv_name() names the CKR_ constant for logs. No PIN or key byte is ever
 *    written to an error message.
 *  - Thread-safe: any number of threads may call concurrently.
 */
#ifndef QKMS_P11_H
#define QKMS_P11_H

#include <stddef.h>
#include <stdio.h>
#include <stdint.h>
#include <stdbool.h>

#include <p11-kit/pkcs11.h>

typedef enum {
    P11_KIND_OK = 0,
    P11_KIND_UNAVAILABLE, /* token/device/session trouble: answer 503, retry later */
    P11_KIND_AUTH,        /* PIN wrong/locked */
    P11_KIND_NOT_FOUND,   /* object handle invalid or absent */
    P11_KIND_DATA,        /* ciphertext/tag did not verify, bad lengths */
    P11_KIND_CONFIG,      /* mechanism or attribute unsupported by this token */
    P11_KIND_INTERNAL     /* anything else */
} p11_kind;

typedef struct p11_token p11_token;

typedef struct {
    const char *module_path;
    const char *token_label;
    const char *pin;      /* user PIN, not copied beyond login */
    size_t pin_len;
    int nsessions;        /* pool size, >= 1 */
} p11_opts;

/* Our own "module-level" failures that have no CKR_ code. */
#define P11_RV_NO_MODULE      ((CK_RV)0x8051A001UL)
#define P11_RV_NO_TOKEN       ((CK_RV)0x8051A002UL)
#define P11_RV_TIMEOUT        ((CK_RV)0x8051A003UL)

/* Open the module and token. On failure *out is NULL and errbuf says why. */
CK_RV p11_open(p11_token **out, const p11_opts *opts, char *errbuf, size_t errlen);
void p11_close(p11_token *t);

const char *p11_rv_name(CK_RV rv);
p11_kind p11_rv_kind(CK_RV rv);

/* Module and token description for status output. */
const char *p11_module_path(const p11_token *t);
const char *p11_token_label(const p11_token *t);
int p11_pool_size(const p11_token *t);
int p11_pool_in_use(p11_token *t);

/* Find a secret key object by exact label; *found false when absent. */
CK_RV p11_find_secret_key(p11_token *t, const char *label, CK_OBJECT_HANDLE *h, bool *found);

/* Generate a persistent AES-256 key: token, private, sensitive, never
 * extractable, usable for encrypt/decrypt/wrap/unwrap only. The caller has
 * checked that no key has this label (a retry takes one it finds). */
CK_RV p11_generate_master_key(p11_token *t, const char *label, CK_OBJECT_HANDLE *h);

/* Read the boolean attributes tests and status care about. */
typedef struct {
    bool token, sensitive, extractable, always_sensitive, never_extractable;
    CK_ULONG value_len;
} p11_key_info;
CK_RV p11_key_info_get(p11_token *t, CK_OBJECT_HANDLE h, p11_key_info *info);

/* AES-GCM (16-byte tag) with the given key handle. out must hold len+16
 * bytes for encrypt, len-16 for decrypt. */
CK_RV p11_gcm_encrypt(p11_token *t, CK_OBJECT_HANDLE key, const uint8_t iv[12],
                      const uint8_t *aad, size_t aad_len,
                      const uint8_t *in, size_t in_len, uint8_t *out, size_t *out_len);
CK_RV p11_gcm_decrypt(p11_token *t, CK_OBJECT_HANDLE key, const uint8_t iv[12],
                      const uint8_t *aad, size_t aad_len,
                      const uint8_t *in, size_t in_len, uint8_t *out, size_t *out_len);

/* EC P-256 key pairs (the platform CA, the platform's protocol v2 keys):
 * the private key token, private, sensitive, never extractable, and either
 * sign only or derive (ECDH) only; the public key beside it under the same
 * label. A generation that finds a private key with the label takes it (a
 * retry after a lost answer). */
typedef enum { P11_EC_SIGN, P11_EC_DERIVE } p11_ec_usage;
CK_RV p11_generate_ec_key_pair(p11_token *t, const char *label, p11_ec_usage usage,
                               CK_OBJECT_HANDLE *priv);
/* Find a private key object by exact label; *found false when absent. */
CK_RV p11_find_private_key(p11_token *t, const char *label, CK_OBJECT_HANDLE *h, bool *found);
/* The public point (uncompressed, 0x04 || X || Y) of the public key object
 * labelled label; *len in: capacity, out: length. CKR_KEY_HANDLE_INVALID
 * when there is none. */
CK_RV p11_ec_public_point(p11_token *t, const char *label, uint8_t *out, size_t *len);
/* CKM_ECDSA over a digest the caller computed: sig gets r || s (64 bytes
 * for P-256); *sig_len in: capacity, out: length. */
CK_RV p11_ecdsa_sign(p11_token *t, CK_OBJECT_HANDLE priv, const uint8_t *digest, size_t dlen,
                     uint8_t *sig, size_t *sig_len);

/* CKM_ECDH1_DERIVE with a derive-only private key and a peer's public
 * point (uncompressed, 65 bytes for P-256): z gets the shared secret, the
 * x-coordinate (32 bytes); z is zeroed on failure. */
#define P11_ECDH_LEN 32
CK_RV p11_ecdh_derive(p11_token *t, CK_OBJECT_HANDLE priv, const uint8_t *point, size_t point_len,
                      uint8_t z[P11_ECDH_LEN]);

/* Destroy a token object (master key retirement). */
CK_RV p11_destroy_object(p11_token *t, CK_OBJECT_HANDLE h);

/* C_GenerateRandom. */
CK_RV p11_random(p11_token *t, uint8_t *buf, size_t len);

/* Cheap liveness probe: the session is usable and still logged in. */
CK_RV p11_ping(p11_token *t);

/* Incremented each time the module is re-initialized after a token failure;
 * object handles obtained under an older generation must be found again. */
uint64_t p11_generation(p11_token *t);
/* Ask for a module re-initialization (rate-limited like the automatic one):
 * for callers that see the token lose state the module does not report as
 * an error, such as a known key object vanishing. */
void p11_recover(p11_token *t);
/* Called (outside any lock) after each re-initialization attempt. */
void p11_set_reinit_logger(p11_token *t, void (*fn)(CK_RV rv, const char *err));

/* Counters for metrics (monotonic). */
typedef struct {
    uint64_t ops;
    uint64_t errors;
    uint64_t reopened_sessions;
    uint64_t relogins;
    uint64_t reinits;
} p11_stats;
void p11_stats_get(p11_token *t, p11_stats *out);
/* The token pool's figures as Prometheus text (kmsd's /metrics; token is a
 * p11_token). */
void p11_metrics_render(void *token, FILE *f);

#endif
