/*
 * qkms_fw — firmware packages on the device (qkms_fw.h, docs/firmware.md).
 * One state machine consumes the package in any slicing: the fixed header,
 * the recipient entries one at a time (the header is hashed as it passes,
 * never kept), then the chunks, each opened once whole; the body's
 * plaintext feeds the manifest prefix, then the image.
 */
#include "qkms_fw.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/kdf.h>
#include <openssl/core_names.h>
#include <openssl/x509.h>

#include "hexutil.h"
#include "qkd_json.h"

#define FW_AAD_LABEL "qkms/fw/v1"
#define FW_KEK_INFO "qkms/fw/kek/v1"
#define FW_RECIPIENT_LABEL "qkms/fw/recipient/v1"

enum { ST_FIXED, ST_RECIPIENTS, ST_CHUNKS, ST_DONE, ST_FAILED };

struct qkd_firmware_stream {
    const qkd_firmware_policy *p;
    qkd_firmware_sink sink;
    void *arg;
    int state;
    uint8_t fixed[QKF_FIXED_LEN];
    uint8_t entry[QKF_RECIPIENT_LEN];
    size_t have; /* bytes of the current fixed header, entry or chunk */
    uint32_t n, chunk_size, got_entries;
    uint64_t body_len, nchunks, chunk_i, body_done;
    EVP_MD_CTX *hh; /* header_hash, as the header passes */
    uint8_t header_hash[32];
    uint8_t *k;     /* the content key (secure heap), NULL until unwrapped */
    int kind;
    char group[65];
    uint8_t *chunk; /* chunk_size + 16 */
    /* the body's prefix: manifest_len, manifest, signature_len, signature */
    uint8_t *prefix;
    size_t prefix_have, prefix_need;
    bool manifest_ok;
    EVP_MD_CTX *img; /* SHA-256 of the image */
    uint64_t img_done;
    qkd_firmware_manifest m;
};

static int fail(qkd_firmware_stream *s, int rc, char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
static int fail(qkd_firmware_stream *s, int rc, char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    if (s)
        s->state = ST_FAILED;
    if (err && errlen) {
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return rc;
}

static uint32_t be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static uint64_t be64(const uint8_t *p) { return (uint64_t)be32(p) << 32 | be32(p + 4); }

int qkd_firmware_stream_new(qkd_firmware_stream **out, const qkd_firmware_policy *p,
                            qkd_firmware_sink sink, void *arg, char *err, size_t errlen)
{
    qkd_firmware_stream *s;

    *out = NULL;
    if (!p || !p->product || (p->ncerts && (!p->certs || !p->cert_lens)) ||
        (p->ngroups && !p->groups))
        return fail(NULL, QKD_ERR_INPUT, err, errlen, "input: no policy");
    if (!(s = calloc(1, sizeof(*s))))
        return fail(NULL, QKD_ERR_INTERNAL, err, errlen, "out of memory");
    s->p = p;
    s->sink = sink;
    s->arg = arg;
    s->hh = EVP_MD_CTX_new();
    s->img = EVP_MD_CTX_new();
    if (!s->hh || !s->img || EVP_DigestInit_ex(s->hh, EVP_sha256(), NULL) != 1 ||
        EVP_DigestInit_ex(s->img, EVP_sha256(), NULL) != 1) {
        qkd_firmware_stream_free(s);
        return fail(NULL, QKD_ERR_INTERNAL, err, errlen, "the crypto library failed");
    }
    *out = s;
    return QKD_OK;
}

void qkd_firmware_stream_free(qkd_firmware_stream *s)
{
    if (!s)
        return;
    if (s->k)
        OPENSSL_secure_clear_free(s->k, 32);
    if (s->chunk) {
        OPENSSL_cleanse(s->chunk, (size_t)s->chunk_size + QKF_TAG_LEN);
        free(s->chunk);
    }
    if (s->prefix) {
        OPENSSL_cleanse(s->prefix, s->prefix_need);
        free(s->prefix);
    }
    EVP_MD_CTX_free(s->hh);
    EVP_MD_CTX_free(s->img);
    OPENSSL_cleanse(s, sizeof(*s));
    free(s);
}

/* AES-256-GCM open; 1 opened, 0 tag refused, -1 library failure. */
static int gcm_open(const uint8_t *key, const uint8_t nonce[12], const uint8_t *aad,
                    size_t aad_len, const uint8_t *ct, size_t ct_len, const uint8_t tag[16],
                    uint8_t *pt)
{
    EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
    int l = 0, rc = -1;
    if (c && EVP_DecryptInit_ex(c, EVP_aes_256_gcm(), NULL, key, nonce) == 1 &&
        (aad_len == 0 || EVP_DecryptUpdate(c, NULL, &l, aad, (int)aad_len) == 1) &&
        (ct_len == 0 || EVP_DecryptUpdate(c, pt, &l, ct, (int)ct_len) == 1) &&
        EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_SET_TAG, 16, (void *)tag) == 1)
        rc = EVP_DecryptFinal_ex(c, pt + l, &l) == 1 ? 1 : 0;
    EVP_CIPHER_CTX_free(c);
    if (rc != 1 && pt && ct_len)
        OPENSSL_cleanse(pt, ct_len);
    return rc;
}

static int sha256(const void *a, size_t al, const void *b, size_t bl, const void *c, size_t cl,
                  uint8_t out[32])
{
    EVP_MD_CTX *x = EVP_MD_CTX_new();
    int ok = x && EVP_DigestInit_ex(x, EVP_sha256(), NULL) == 1 &&
             EVP_DigestUpdate(x, a, al) == 1 && (!bl || EVP_DigestUpdate(x, b, bl) == 1) &&
             (!cl || EVP_DigestUpdate(x, c, cl) == 1) && EVP_DigestFinal_ex(x, out, NULL) == 1;
    EVP_MD_CTX_free(x);
    return ok ? 0 : -1;
}

/* A device's kek_id for one of its keys: HMAC-SHA-256(key, label 0x00
 * package_id), first 16 bytes (no one without the key can tell whose). */
static int device_kek_id(const uint8_t *key, size_t key_len, const uint8_t package_id[16],
                         uint8_t out[16])
{
    uint8_t msg[sizeof(FW_RECIPIENT_LABEL) + 16], h[32];
    unsigned int hl = 0;
    memcpy(msg, FW_RECIPIENT_LABEL, sizeof(FW_RECIPIENT_LABEL)); /* with its NUL */
    memcpy(msg + sizeof(FW_RECIPIENT_LABEL), package_id, 16);
    if (!HMAC(EVP_sha256(), key, (int)key_len, msg, sizeof(msg), h, &hl) || hl != 32)
        return -1;
    memcpy(out, h, 16);
    OPENSSL_cleanse(h, sizeof(h));
    return 0;
}

/* HKDF-SHA-256(ikm, salt = package_id, info = label 0x00 device_id) -> 32. */
static int device_kek(const uint8_t *ikm, size_t ikm_len, const uint8_t salt[16],
                      const char *device_id, uint8_t out[32])
{
    uint8_t info[sizeof(FW_KEK_INFO) + QKP_MAX_ID];
    size_t dl = strlen(device_id);
    EVP_KDF *kdf = EVP_KDF_fetch(NULL, "HKDF", NULL);
    EVP_KDF_CTX *c = kdf ? EVP_KDF_CTX_new(kdf) : NULL;
    OSSL_PARAM ps[5];
    int ok;

    memcpy(info, FW_KEK_INFO, sizeof(FW_KEK_INFO));
    memcpy(info + sizeof(FW_KEK_INFO), device_id, dl);
    ps[0] = OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, (char *)"SHA256", 0);
    ps[1] = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, (void *)ikm, ikm_len);
    ps[2] = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SALT, (void *)salt, 16);
    ps[3] = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO, info,
                                              sizeof(FW_KEK_INFO) + dl);
    ps[4] = OSSL_PARAM_construct_end();
    ok = c && EVP_KDF_derive(c, out, 32, ps) == 1;
    EVP_KDF_CTX_free(c);
    EVP_KDF_free(kdf);
    return ok ? 0 : -1;
}

int qkd_firmware_device_kek(const uint8_t *dkey, size_t len, const uint8_t package_id[16],
                            const char *device_id, uint8_t kek[32], uint8_t kek_id[16])
{
    if (device_kek_id(dkey, len, package_id, kek_id) != 0 ||
        device_kek(dkey, len, package_id, device_id, kek) != 0) {
        OPENSSL_cleanse(kek, 32);
        return QKD_ERR_INTERNAL;
    }
    return QKD_OK;
}

/* One recipient entry: the content key if it is ours. 1 unwrapped, 0 not
 * ours, -1 library failure, -2 ours but it does not open. */
static int try_entry(qkd_firmware_stream *s)
{
    const qkd_firmware_policy *p = s->p;
    const uint8_t *e = s->entry, *kek_id = e + 4, *nonce = e + 20, *ct = e + 32;
    uint8_t aad[QKF_FIXED_LEN + 17], kek[32], id[16];
    int rc = 0;

    if (s->k || (e[0] != QKF_KIND_GROUP && e[0] != QKF_KIND_DEVICE))
        return 0;
    memcpy(aad, s->fixed, QKF_FIXED_LEN); /* associated data: fixed header, kind, kek_id */
    aad[QKF_FIXED_LEN] = e[0];
    memcpy(aad + QKF_FIXED_LEN + 1, kek_id, 16);
    if (!(s->k = OPENSSL_secure_malloc(32)))
        return -1;
    if (e[0] == QKF_KIND_GROUP) {
        for (size_t i = 0; i < p->ngroups && rc == 0; i++) {
            if (CRYPTO_memcmp(p->groups[i].key_id, kek_id, 16) != 0)
                continue;
            rc = gcm_open(p->groups[i].key, nonce, aad, sizeof(aad), ct, 32, ct + 32, s->k);
            if (rc == 1) {
                s->kind = QKF_KIND_GROUP;
                snprintf(s->group, sizeof(s->group), "%s", p->groups[i].group);
            } else if (rc == 0) {
                rc = -2;
            }
        }
    } else if (p->device) {
        for (size_t i = 0; i < p->device->nkeys && rc == 0; i++) {
            const qkd_key *dk = &p->device->keys[i];
            if (device_kek_id(dk->key, dk->len, s->fixed + 16, id) != 0) {
                rc = -1;
                break;
            }
            if (CRYPTO_memcmp(id, kek_id, 16) != 0)
                continue;
            if (device_kek(dk->key, dk->len, s->fixed + 16, p->device->device_id, kek) != 0) {
                rc = -1;
                break;
            }
            rc = gcm_open(kek, nonce, aad, sizeof(aad), ct, 32, ct + 32, s->k);
            if (rc == 1)
                s->kind = QKF_KIND_DEVICE;
            else if (rc == 0)
                rc = -2;
        }
    }
    OPENSSL_cleanse(kek, sizeof(kek));
    if (rc != 1) {
        OPENSSL_secure_clear_free(s->k, 32);
        s->k = NULL;
    }
    return rc;
}

static int parse_fixed(qkd_firmware_stream *s, char *err, size_t errlen)
{
    const uint8_t *f = s->fixed;
    if (memcmp(f, QKF_MAGIC, 8) != 0 || f[8] != QKF_VERSION || f[9] != QKF_SUITE)
        return fail(s, QKD_ERR_INPUT, err, errlen,
                    "format: not a firmware package of version 1 (magic, version, suite)");
    s->n = (uint32_t)f[10] << 8 | f[11];
    s->chunk_size = be32(f + 12);
    s->body_len = be64(f + 32);
    if (s->n < 1 || s->chunk_size < QKF_CHUNK_MIN || s->chunk_size > QKF_CHUNK_MAX ||
        s->body_len < 1 || s->body_len > QKF_BODY_MAX)
        return fail(s, QKD_ERR_INPUT, err, errlen,
                    "format: recipients, chunk size or body length out of range");
    s->nchunks = (s->body_len + s->chunk_size - 1) / s->chunk_size;
    if (!(s->chunk = malloc((size_t)s->chunk_size + QKF_TAG_LEN)))
        return fail(s, QKD_ERR_INTERNAL, err, errlen, "out of memory");
    return QKD_OK;
}

/* The manifest's checks, once the prefix is whole (docs/firmware.md). */
static int check_manifest(qkd_firmware_stream *s, char *err, size_t errlen)
{
    const qkd_firmware_policy *p = s->p;
    qkd_firmware_manifest *m = &s->m;
    uint32_t ml = be32(s->prefix);
    const uint8_t *man = s->prefix + 4, *sig = man + ml + 2;
    size_t sl = (size_t)s->prefix[4 + ml] << 8 | s->prefix[4 + ml + 1];
    json_t *j = NULL, *t, *devs, *groups;
    json_error_t je;
    const char *fmt, *prod, *ver, *sha, *pid, *signer;
    json_int_t counter, size, nb;
    char pid_expect[37], hx[33];
    const uint8_t *der = NULL;
    size_t der_len = 0;
    X509 *cert = NULL;
    EVP_MD_CTX *v = NULL;
    int rc = QKD_ERR_INPUT;
    bool target = false;

    j = json_loadb((const char *)man, ml, JSON_REJECT_DUPLICATES, &je);
    if (!j || json_unpack(j, "{s:s,s:s,s:s,s:I,s:I,s:s,s:o,s:I,s:s,s:s!}", "format", &fmt,
                          "product", &prod, "version", &ver, "counter", &counter, "image_size",
                          &size, "image_sha256", &sha, "targets", &t, "not_before", &nb,
                          "package_id", &pid, "signer", &signer) != 0 ||
        strcmp(fmt, "qkms-fw-manifest/1") != 0 || strlen(prod) < 1 || strlen(prod) > 64 ||
        strlen(ver) < 1 || strlen(ver) > 64 || counter < 1 ||
        (uint64_t)counter > QKF_COUNTER_MAX || size < 0 ||
        strlen(sha) != 64 || strspn(sha, "0123456789abcdef") != 64 ||
        strlen(signer) != 64 || strspn(signer, "0123456789abcdef") != 64 ||
        qkms_hex_decode(sha, 64, m->image_sha256, 32) != 32 ||
        qkms_hex_decode(signer, 64, m->signer, 32) != 32 ||
        json_unpack(t, "{s:o,s:o!}", "groups", &groups, "devices", &devs) != 0 ||
        !json_is_array(groups) || !json_is_array(devs) ||
        json_array_size(groups) + json_array_size(devs) == 0) {
        fail(s, rc, err, errlen, "manifest: not a manifest of format qkms-fw-manifest/1");
        goto out;
    }
    qkms_hex_encode(s->fixed + 16, 16, hx);
    snprintf(pid_expect, sizeof(pid_expect), "%.8s-%.4s-%.4s-%.4s-%.12s", hx, hx + 8, hx + 12,
             hx + 16, hx + 20);
    if (strcmp(pid, pid_expect) != 0 ||
        s->body_len != 4 + (uint64_t)ml + 2 + sl + (uint64_t)size) {
        fail(s, rc, err, errlen,
             "manifest: its package_id or image_size does not match the package");
        goto out;
    }
    snprintf(m->product, sizeof(m->product), "%s", prod);
    snprintf(m->version, sizeof(m->version), "%s", ver);
    snprintf(m->package_id, sizeof(m->package_id), "%s", pid);
    m->counter = (uint64_t)counter;
    m->image_size = (uint64_t)size;
    m->not_before = (int64_t)nb;
    m->kind = s->kind;
    snprintf(m->group, sizeof(m->group), "%s", s->group);

    /* signature: a pinned certificate, valid at not_before, and the
     * signature under its key */
    for (size_t i = 0; i < p->ncerts && !der; i++) {
        uint8_t h[32];
        if (sha256(p->certs[i], p->cert_lens[i], NULL, 0, NULL, 0, h) != 0) {
            rc = fail(s, QKD_ERR_INTERNAL, err, errlen, "the crypto library failed");
            goto out;
        }
        if (CRYPTO_memcmp(h, m->signer, 32) == 0) {
            der = p->certs[i];
            der_len = p->cert_lens[i];
        }
    }
    if (!der) {
        fail(s, rc, err, errlen, "signature: the signer is not a pinned certificate");
        goto out;
    }
    {
        const unsigned char *q = der;
        EVP_PKEY *pk;
        cert = d2i_X509(NULL, &q, (long)der_len);
        pk = cert ? X509_get0_pubkey(cert) : NULL;
        /* notBefore <= not_before <= notAfter; -2 is a time that does not
         * parse (refused, never taken for "valid"). */
        int before = cert ? ASN1_TIME_cmp_time_t(X509_get0_notBefore(cert), (time_t)nb) : -2,
            after = cert ? ASN1_TIME_cmp_time_t(X509_get0_notAfter(cert), (time_t)nb) : -2;
        if (!pk || !EVP_PKEY_is_a(pk, "EC") || before == -2 || before > 0 || after == -2 ||
            after < 0) {
            fail(s, rc, err, errlen,
                 "signature: the signer's certificate is unusable or not valid at not_before");
            goto out;
        }
        if (!(v = EVP_MD_CTX_new()) ||
            EVP_DigestVerifyInit(v, NULL, EVP_sha256(), NULL, pk) != 1 ||
            EVP_DigestVerify(v, sig, sl, man, ml) != 1) {
            fail(s, rc, err, errlen, "signature: the manifest's signature does not verify");
            goto out;
        }
    }
    if (strcmp(prod, p->product) != 0) {
        fail(s, rc, err, errlen, "product: for product '%.64s', not this device's", prod);
        goto out;
    }
    {
        /* the device by its ID, or the group whose key unwrapped K */
        json_t *x;
        size_t i;
        json_array_foreach(devs, i, x) {
            if (p->device && json_is_string(x) &&
                !strcmp(json_string_value(x), p->device->device_id))
                target = true;
        }
        json_array_foreach(groups, i, x) {
            if (s->kind == QKF_KIND_GROUP && json_is_string(x) &&
                !strcmp(json_string_value(x), s->group))
                target = true;
        }
    }
    if (!target) {
        fail(s, rc, err, errlen, "not_a_target: the manifest names neither this device nor %s",
             s->kind == QKF_KIND_GROUP ? "its group" : "a group it unwrapped the key with");
        goto out;
    }
    if ((uint64_t)counter <= p->counter) {
        fail(s, rc, err, errlen,
             "rollback: counter %lld is not above the installed %llu", (long long)counter,
             (unsigned long long)p->counter);
        goto out;
    }
    if (p->now >= 0 && (int64_t)nb > p->now) {
        fail(s, rc, err, errlen, "not_yet: not before %lld", (long long)nb);
        goto out;
    }
    s->manifest_ok = true;
    rc = QKD_OK;
out:
    EVP_MD_CTX_free(v);
    X509_free(cert);
    json_decref(j);
    return rc;
}

/* Body plaintext, in order: the prefix first, then image bytes. */
static int body_bytes(qkd_firmware_stream *s, const uint8_t *d, size_t len, char *err,
                      size_t errlen)
{
    while (len && !s->manifest_ok) {
        size_t take;
        if (!s->prefix) { /* room for the largest prefix */
            s->prefix_need = 4;
            if (!(s->prefix = malloc(4 + QKF_MANIFEST_MAX + 2 + QKF_SIG_MAX)))
                return fail(s, QKD_ERR_INTERNAL, err, errlen, "out of memory");
        }
        take = s->prefix_need - s->prefix_have < len ? s->prefix_need - s->prefix_have : len;
        memcpy(s->prefix + s->prefix_have, d, take);
        s->prefix_have += take;
        d += take;
        len -= take;
        if (s->prefix_have < s->prefix_need)
            return QKD_OK;
        if (s->prefix_need == 4) { /* manifest_len known */
            uint32_t ml = be32(s->prefix);
            if (ml < 2 || ml > QKF_MANIFEST_MAX)
                return fail(s, QKD_ERR_INPUT, err, errlen, "manifest: length out of range");
            s->prefix_need = 4 + ml + 2;
        } else if (s->prefix_need == 4 + be32(s->prefix) + 2) { /* signature_len known */
            size_t sl = (size_t)s->prefix[s->prefix_need - 2] << 8 | s->prefix[s->prefix_need - 1];
            if (sl < 8 || sl > QKF_SIG_MAX)
                return fail(s, QKD_ERR_INPUT, err, errlen, "manifest: signature length out of range");
            s->prefix_need += sl;
        } else {
            int rc = check_manifest(s, err, errlen);
            if (rc != QKD_OK)
                return rc;
        }
    }
    if (!len)
        return QKD_OK;
    if (s->img_done + len > s->m.image_size)
        return fail(s, QKD_ERR_INPUT, err, errlen, "image: longer than the manifest says");
    if (EVP_DigestUpdate(s->img, d, len) != 1)
        return fail(s, QKD_ERR_INTERNAL, err, errlen, "the crypto library failed");
    s->img_done += len;
    if (s->sink && s->sink(s->arg, d, len) != 0)
        return fail(s, QKD_ERR_INPUT, err, errlen, "sink: the image's writer refused it");
    return QKD_OK;
}

/* The current chunk is whole: open it and pass its plaintext on. */
static int open_chunk(qkd_firmware_stream *s, size_t ct_len, char *err, size_t errlen)
{
    uint8_t nonce[12] = {0}, aad[sizeof(FW_AAD_LABEL) + 32];
    bool last = s->chunk_i == s->nchunks - 1;
    int rc;

    nonce[0] = last ? 1 : 0;
    for (int b = 0; b < 8; b++)
        nonce[4 + b] = (uint8_t)(s->chunk_i >> (56 - 8 * b));
    memcpy(aad, FW_AAD_LABEL, sizeof(FW_AAD_LABEL));
    memcpy(aad + sizeof(FW_AAD_LABEL), s->header_hash, 32);
    rc = gcm_open(s->k, nonce, aad, sizeof(aad), s->chunk, ct_len, s->chunk + ct_len, s->chunk);
    if (rc < 0)
        return fail(s, QKD_ERR_INTERNAL, err, errlen, "the crypto library failed");
    if (rc == 0)
        return fail(s, QKD_ERR_INPUT, err, errlen, "auth: chunk %llu does not authenticate",
                    (unsigned long long)s->chunk_i);
    s->chunk_i++;
    s->body_done += ct_len;
    rc = body_bytes(s, s->chunk, ct_len, err, errlen);
    OPENSSL_cleanse(s->chunk, ct_len);
    return rc;
}

int qkd_firmware_stream_update(qkd_firmware_stream *s, const uint8_t *d, size_t len, char *err,
                               size_t errlen)
{
    int rc;

    if (!s || (!d && len))
        return fail(NULL, QKD_ERR_INPUT, err, errlen, "input: no stream");
    if (s->state == ST_FAILED)
        return fail(s, QKD_ERR_INPUT, err, errlen, "input: the stream failed before");
    while (len) {
        size_t need, take;
        uint8_t *dst;
        switch (s->state) {
        case ST_FIXED:
            need = QKF_FIXED_LEN;
            dst = s->fixed;
            break;
        case ST_RECIPIENTS:
            need = QKF_RECIPIENT_LEN;
            dst = s->entry;
            break;
        case ST_CHUNKS: {
            uint64_t left = s->body_len - s->body_done;
            need = (size_t)(left < s->chunk_size ? left : s->chunk_size) + QKF_TAG_LEN;
            dst = s->chunk;
            break;
        }
        default:
            return fail(s, QKD_ERR_INPUT, err, errlen, "format: bytes after the last chunk");
        }
        take = need - s->have < len ? need - s->have : len;
        memcpy(dst + s->have, d, take);
        if (s->state != ST_CHUNKS && EVP_DigestUpdate(s->hh, d, take) != 1)
            return fail(s, QKD_ERR_INTERNAL, err, errlen, "the crypto library failed");
        s->have += take;
        d += take;
        len -= take;
        if (s->have < need)
            break;
        s->have = 0;
        if (s->state == ST_FIXED) {
            if ((rc = parse_fixed(s, err, errlen)) != QKD_OK)
                return rc;
            s->state = ST_RECIPIENTS;
        } else if (s->state == ST_RECIPIENTS) {
            if (s->entry[1] || s->entry[2] || s->entry[3])
                return fail(s, QKD_ERR_INPUT, err, errlen, "format: a recipient's reserved bytes");
            rc = try_entry(s);
            if (rc == -1)
                return fail(s, QKD_ERR_INTERNAL, err, errlen, "the crypto library failed");
            if (rc == -2)
                return fail(s, QKD_ERR_INPUT, err, errlen,
                            "not_a_target: this device's recipient entry does not open");
            if (++s->got_entries == s->n) {
                if (EVP_DigestFinal_ex(s->hh, s->header_hash, NULL) != 1)
                    return fail(s, QKD_ERR_INTERNAL, err, errlen, "the crypto library failed");
                if (!s->k)
                    return fail(s, QKD_ERR_INPUT, err, errlen,
                                "not_a_target: no recipient entry for this device or its groups");
                s->state = ST_CHUNKS;
            }
        } else {
            if ((rc = open_chunk(s, need - QKF_TAG_LEN, err, errlen)) != QKD_OK)
                return rc;
            if (s->chunk_i == s->nchunks)
                s->state = ST_DONE;
        }
    }
    return QKD_OK;
}

int qkd_firmware_stream_final(qkd_firmware_stream *s, qkd_firmware_manifest *m, char *err,
                              size_t errlen)
{
    uint8_t h[32];

    if (!s || !m)
        return fail(NULL, QKD_ERR_INPUT, err, errlen, "input: no stream");
    memset(m, 0, sizeof(*m));
    if (s->state == ST_FAILED)
        return fail(s, QKD_ERR_INPUT, err, errlen, "input: the stream failed before");
    if (s->state == ST_FIXED || s->state == ST_RECIPIENTS)
        return fail(s, QKD_ERR_INPUT, err, errlen, "format: the package ends in its header");
    if (s->state != ST_DONE) /* a missing final chunk is the tag's failure */
        return fail(s, QKD_ERR_INPUT, err, errlen, "auth: the package ends before its last chunk");
    if (!s->manifest_ok)
        return fail(s, QKD_ERR_INPUT, err, errlen, "manifest: the body ends in its manifest");
    if (EVP_DigestFinal_ex(s->img, h, NULL) != 1)
        return fail(s, QKD_ERR_INTERNAL, err, errlen, "the crypto library failed");
    if (s->img_done != s->m.image_size || CRYPTO_memcmp(h, s->m.image_sha256, 32) != 0)
        return fail(s, QKD_ERR_INPUT, err, errlen, "image: its length or SHA-256 is not the manifest's");
    *m = s->m;
    return QKD_OK;
}

struct membuf {
    uint8_t *p;
    size_t len, cap;
};

static int mem_sink(void *arg, const uint8_t *d, size_t n)
{
    struct membuf *b = arg;
    if (n > b->cap - b->len)
        return -1;
    memcpy(b->p + b->len, d, n);
    b->len += n;
    return 0;
}

int qkd_firmware_open(const uint8_t *pkg, size_t len, const qkd_firmware_policy *p,
                      uint8_t **image, size_t *image_len, qkd_firmware_manifest *m, char *err,
                      size_t errlen)
{
    struct membuf b = {0};
    qkd_firmware_stream *s = NULL;
    int rc;

    *image = NULL;
    *image_len = 0;
    /* The image is shorter than the package: one buffer of its size holds it. */
    if (!(b.p = malloc(len ? len : 1)))
        return fail(NULL, QKD_ERR_INTERNAL, err, errlen, "out of memory");
    b.cap = len;
    /* The whole package is at hand: bytes after its last chunk are a
     * format error before anything else is looked at (docs/firmware.md). */
    if (len >= QKF_FIXED_LEN && !memcmp(pkg, QKF_MAGIC, 8)) {
        uint32_t n = (uint32_t)pkg[10] << 8 | pkg[11], cs = be32(pkg + 12);
        uint64_t bl = be64(pkg + 32);
        if (n >= 1 && cs >= QKF_CHUNK_MIN && cs <= QKF_CHUNK_MAX && bl >= 1 && bl <= QKF_BODY_MAX &&
            len > QKF_FIXED_LEN + (uint64_t)QKF_RECIPIENT_LEN * n + bl +
                      QKF_TAG_LEN * ((bl + cs - 1) / cs)) {
            OPENSSL_cleanse(b.p, b.cap);
            free(b.p);
            return fail(NULL, QKD_ERR_INPUT, err, errlen, "format: bytes after the last chunk");
        }
    }
    if ((rc = qkd_firmware_stream_new(&s, p, mem_sink, &b, err, errlen)) == QKD_OK &&
        (rc = qkd_firmware_stream_update(s, pkg, len, err, errlen)) == QKD_OK)
        rc = qkd_firmware_stream_final(s, m, err, errlen);
    qkd_firmware_stream_free(s);
    if (rc != QKD_OK) {
        OPENSSL_cleanse(b.p, b.cap);
        free(b.p);
        return rc;
    }
    *image = b.p;
    *image_len = b.len;
    return QKD_OK;
}

/* ---- a group's key from a fill document ------------------------------------ */

int qkd_firmware_group_key_load(const char *text, size_t len, qkd_firmware_group_key *g,
                                int *found, char *err, size_t errlen)
{
    json_error_t je;
    json_t *doc = json_loadb(text, len, JSON_REJECT_DUPLICATES, &je), *m = NULL;
    const char *name = NULL, *kid = NULL, *key = NULL;
    int rc = QKD_ERR_INPUT;

    *found = 0;
    memset(g, 0, sizeof(*g));
    if (!json_is_object(doc)) {
        /* the position only: jansson's text can quote a piece of a key */
        rc = fail(NULL, QKD_ERR_INPUT, err, errlen, "not a JSON object (line %d, column %d)",
                  je.line, je.column);
        goto out;
    }
    /* a fill document's member, or a document that is the key alone */
    m = json_object_get(doc, "firmware_group_key");
    if (!m && json_object_get(doc, "key_id"))
        m = doc;
    if (!m) {
        rc = QKD_OK; /* a fill document without one */
        goto out;
    }
    if (json_unpack(m, "{s:s,s:s,s:s}", "group", &name, "key_id", &kid, "key", &key) != 0 ||
        strlen(name) < 1 || strlen(name) >= sizeof(g->group) || strlen(kid) != 32 ||
        strlen(key) != 64 || qkms_hex_decode(kid, 32, g->key_id, 16) != 16 ||
        qkms_hex_decode(key, 64, g->key, 32) != 32) {
        OPENSSL_cleanse(g, sizeof(*g));
        rc = fail(NULL, QKD_ERR_INPUT, err, errlen,
                  "firmware_group_key: expected {\"group\",\"key_id\" (32 hex),\"key\" (64 hex)}");
        goto out;
    }
    snprintf(g->group, sizeof(g->group), "%s", name);
    *found = 1;
    rc = QKD_OK;
out:
    /* every string of the parsed tree (device keys, TLS key, the group's
     * key): wiped before it is freed */
    qkd_json_wipe(doc);
    json_decref(doc);
    return rc;
}
