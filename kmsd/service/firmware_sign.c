/*
 * firmware_sign — a release into a package (firmware_sign.h,
 * docs/firmware.md byte for byte): checks, then one transaction under the
 * product's lock (key, counter, targets' keys, manifest, signature in the
 * token, release row, audit row), then the package as a header and chunks
 * encrypted on demand from the image.
 */
#include "service/firmware_sign.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/crypto.h>
#include <openssl/ec.h>
#include <openssl/evp.h>

#include "hexutil.h"
#include "qkms_fw.h"
#include "qkms_proto.h"
#include "service/audit.h"
#include "service/device_keys.h"
#include "service/device_model.h"
#include "service/firmware_approvals.h"
#include "service/firmware_groups.h"
#include "service/firmware_keys.h"
#include "store/queries.h"

struct firmware_package {
    uint8_t *header; /* fixed + recipients */
    size_t hlen;
    uint8_t *prefix; /* manifest_len, manifest, signature_len, signature */
    size_t plen;
    uint8_t *image;
    size_t image_len;
    uint8_t *k; /* the content key, secure heap */
    uint64_t body_len, nchunks;
    uint8_t aad[11 + 32]; /* "qkms/fw/v1" 0x00 header_hash */
    uint8_t *chunk;       /* the chunk last encrypted (ciphertext and tag) */
    uint64_t chunk_i;     /* its index; UINT64_MAX: none yet */
    size_t chunk_len;
};

static void put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

static void put64(uint8_t *p, uint64_t v)
{
    put32(p, (uint32_t)(v >> 32));
    put32(p + 4, (uint32_t)v);
}

void firmware_package_free(void *ctx)
{
    firmware_package *p = ctx;
    if (!p)
        return;
    if (p->k)
        OPENSSL_secure_clear_free(p->k, 32);
    if (p->image) {
        OPENSSL_cleanse(p->image, p->image_len);
        free(p->image);
    }
    if (p->chunk) {
        OPENSSL_cleanse(p->chunk, FIRMWARE_CHUNK + QKF_TAG_LEN);
        free(p->chunk);
    }
    free(p->header);
    free(p->prefix);
    free(p);
}

uint64_t firmware_package_size(const firmware_package *p)
{
    return p->hlen + p->body_len + QKF_TAG_LEN * p->nchunks;
}

static int gcm_seal(const uint8_t *key, const uint8_t nonce[12], const uint8_t *aad, size_t al,
                    const uint8_t *in, size_t n, uint8_t *out)
{
    EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
    int l = 0, ok = c && EVP_EncryptInit_ex(c, EVP_aes_256_gcm(), NULL, key, nonce) == 1 &&
                    EVP_EncryptUpdate(c, NULL, &l, aad, (int)al) == 1 &&
                    (n == 0 || EVP_EncryptUpdate(c, out, &l, in, (int)n) == 1) &&
                    EVP_EncryptFinal_ex(c, out + n, &l) == 1 &&
                    EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_GET_TAG, 16, out + n) == 1;
    EVP_CIPHER_CTX_free(c);
    return ok ? 0 : -1;
}

/* Chunk i: its plaintext from the prefix and the image, sealed in place. */
static int make_chunk(firmware_package *p, uint64_t i)
{
    uint64_t from = i * FIRMWARE_CHUNK, to = from + FIRMWARE_CHUNK;
    uint8_t nonce[12] = {0};
    size_t n = 0;

    if (to > p->body_len)
        to = p->body_len;
    if (from < p->plen) {
        size_t m = (size_t)((to < p->plen ? to : p->plen) - from);
        memcpy(p->chunk, p->prefix + from, m);
        n = m;
    }
    if (to > p->plen) {
        uint64_t a = from > p->plen ? from - p->plen : 0, b = to - p->plen;
        memcpy(p->chunk + n, p->image + a, (size_t)(b - a));
        n += (size_t)(b - a);
    }
    nonce[0] = i + 1 == p->nchunks;
    put64(nonce + 4, i);
    if (gcm_seal(p->k, nonce, p->aad, sizeof(p->aad), p->chunk, n, p->chunk) != 0)
        return -1;
    p->chunk_i = i;
    p->chunk_len = n + QKF_TAG_LEN;
    return 0;
}

long firmware_package_read(void *ctx, uint64_t pos, char *buf, size_t max)
{
    firmware_package *p = ctx;
    size_t n;
    if (pos < p->hlen) {
        n = p->hlen - (size_t)pos < max ? p->hlen - (size_t)pos : max;
        memcpy(buf, p->header + pos, n);
        return (long)n;
    }
    {
        uint64_t off = pos - p->hlen, i = off / (FIRMWARE_CHUNK + QKF_TAG_LEN),
                 in = off % (FIRMWARE_CHUNK + QKF_TAG_LEN);
        if (i >= p->nchunks)
            return -1;
        if (p->chunk_i != i && make_chunk(p, i) != 0)
            return -1;
        n = p->chunk_len - (size_t)in < max ? p->chunk_len - (size_t)in : max;
        memcpy(buf, p->chunk + in, n);
        return (long)n;
    }
}

/* ---- signing -------------------------------------------------------------- */

typedef struct {
    qk_svc *s;
    const qk_principal *who;
    const firmware_sign_spec *sp;
    uint8_t image_sha[32];
    uint64_t image_len;
    firmware_package *pkg; /* built per attempt */
    uint64_t counter;
    char package_id[37], signer[65];
    char approved_by[129], requested_by[129]; /* the approval's, or "" */
    qk_err *e;
    bool refused;
} sign_tx;

/* A refusal's audit row (firmware.refused: what was asked, the code; never
 * the image), in the transaction that otherwise writes nothing. */
static db_status audit_refusal(db_conn *c, sign_tx *t)
{
    char sha[65];
    db_status st;
    const char *ap = t->sp->approval;
    /* the approval as given only if it is one (the query string carries
     * any bytes; the row must always be written) */
    if (ap && !qkms_uuid_valid(ap))
        ap = "(not an approval ID)";
    qkms_hex_encode(t->image_sha, 32, sha);
    st = audit_append(c, t->who->name, "firmware.refused", NULL,
                      json_pack("{s:s,s:s,s:s,s:I,s:s,s:s?}", "product", t->sp->product,
                                "version", t->sp->version, "code", t->e->code, "image_size",
                                (json_int_t)t->image_len, "image_sha256", sha, "approval",
                                ap));
    if (st != DB_OK) { /* no refusal without its audit row */
        qk_clear(t->e);
        t->refused = false;
    }
    return st;
}

static db_status refuse(db_conn *c, sign_tx *t, qk_kind kind, const char *code, const char *msg)
{
    qk_fail(t->e, kind, code, "%s", msg);
    t->refused = true;
    return audit_refusal(c, t); /* nothing else written */
}

/* The manifest's bytes: the documented key order, no spaces. */
static char *manifest_text(const firmware_sign_spec *sp, uint64_t counter, uint64_t size,
                           const char *sha_hex, int64_t nb, const char *pid, const char *signer)
{
    json_t *targets = firmware_targets_json(sp), *m;
    char *text;
    m = json_pack("{s:s,s:s,s:s,s:I,s:I,s:s,s:o,s:I,s:s,s:s}", "format", "qkms-fw-manifest/1",
                  "product", sp->product, "version", sp->version, "counter", (json_int_t)counter,
                  "image_size", (json_int_t)size, "image_sha256", sha_hex, "targets", targets,
                  "not_before", (json_int_t)nb, "package_id", pid, "signer", signer);
    text = m ? json_dumps(m, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
    json_decref(m);
    return text;
}

/* Recipients a package may have: one per device, FIRMWARE_GROUP_MAX_KEYS
 * per group. */
static size_t max_recipients(const firmware_sign_spec *sp)
{
    return sp->ndevices + FIRMWARE_GROUP_MAX_KEYS * sp->ngroups;
}

static db_status sign_tx_fn(db_conn *c, void *arg)
{
    sign_tx *t = arg;
    const firmware_sign_spec *sp = t->sp;
    const char *pv[1] = {sp->product};
    firmware_package *p = NULL;
    PGresult *r = NULL;
    db_status st;
    char label[96], msg[200], sha_hex[65], *man = NULL, cnt[24], nbs[24];
    uint8_t pid[16], dig[32], rs[64], *der = NULL, *dk = NULL, *keks = NULL, *kinds = NULL;
    size_t nr = 0; /* recipients gathered */
    unsigned char *q;
    size_t ml, sl, rsl = sizeof(rs);
    int64_t nb = sp->not_before >= 0 ? sp->not_before : (int64_t)time(NULL);
    uint64_t last;
    CK_OBJECT_HANDLE h;
    bool found;
    CK_RV rv;
    ECDSA_SIG *sig = NULL;

    qk_clear(t->e);
    t->refused = false;
    firmware_package_free(t->pkg); /* an earlier attempt's */
    t->pkg = NULL;
    if (!(r = db_exec(c, Q_FW_KEY_LOCK, 1, pv, NULL, NULL, &st)))
        goto out;
    PQclear(r);
    if (!(r = db_exec(c, Q_FW_SIGN_STATE, 1, pv, NULL, NULL, &st)))
        goto out;
    /* (the active key's label, its certificate's SHA-256, the last counter) */
    if (PQgetisnull(r, 0, 0)) {
        snprintf(msg, sizeof(msg), "product '%s' has no firmware key (firmware keys create)",
                 sp->product);
        st = refuse(c, t, QK_CONFLICT, "no_firmware_key", msg);
        goto out;
    }
    snprintf(label, sizeof(label), "%s", PQgetvalue(r, 0, 0));
    snprintf(t->signer, sizeof(t->signer), "%s", PQgetvalue(r, 0, 1));
    last = (uint64_t)strtoull(PQgetvalue(r, 0, 2), NULL, 10);
    /* Devices accept a manifest only while its signer's certificate was
     * valid at not_before: a package they would all refuse is not made. */
    if (nb < atoll(PQgetvalue(r, 0, 3)) || nb > atoll(PQgetvalue(r, 0, 4))) {
        snprintf(msg, sizeof(msg),
                 "not_before %lld is outside the active firmware certificate's validity "
                 "(%s to %s, Unix seconds)",
                 (long long)nb, PQgetvalue(r, 0, 3), PQgetvalue(r, 0, 4));
        st = refuse(c, t, QK_INVALID, "invalid_not_before", msg);
        goto out;
    }
    PQclear(r);
    r = NULL;
    if (sp->counter && sp->counter <= last) {
        snprintf(msg, sizeof(msg), "counter %llu is not above %llu, the last one signed for '%s'",
                 (unsigned long long)sp->counter, (unsigned long long)last, sp->product);
        st = refuse(c, t, QK_CONFLICT, "counter_rollback", msg);
        goto out;
    }
    t->counter = sp->counter ? sp->counter : last + 1;
    if (t->counter > QKF_COUNTER_MAX) {
        st = refuse(c, t, QK_CONFLICT, "counter_rollback", "the product's counters are spent");
        goto out;
    }

    /* The product's approval rule, and the approval when one is named
     * (firmware_approvals.h): checked before anything is made. */
    qkms_hex_encode(t->image_sha, 32, sha_hex);
    if ((st = firmware_approval_check(c, sp, t->image_len, sha_hex, t->approved_by,
                                      t->requested_by, &t->refused, t->e)) != DB_OK)
        goto out;
    if (t->refused) {
        st = audit_refusal(c, t);
        goto out;
    }

    /* The package: its ID and content key from the entropy interface. */
    if (!(p = calloc(1, sizeof(*p))) || !(p->k = OPENSSL_secure_malloc(32)) ||
        !(dk = OPENSSL_secure_malloc(DEVICE_KEY_BUF))) {
        qk_fail(t->e, QK_INTERNAL, "internal", "out of memory");
        st = DB_ERROR;
        goto out;
    }
    p->chunk_i = UINT64_MAX;
    if (entropy_get(t->s->ent, pid, sizeof(pid), &(const char *){NULL}) != 0 ||
        entropy_get(t->s->ent, p->k, 32, &(const char *){NULL}) != 0) {
        qk_fail(t->e, QK_UNAVAILABLE, "entropy_unavailable", "no entropy source may serve now");
        t->e->retry_after = 1;
        st = DB_ERROR;
        goto out;
    }
    qkms_uuid_v4(pid);
    qkms_uuid_format(pid, t->package_id);
    /* The targets' keys first: nothing is signed for a package that
     * cannot be made. Each recipient's KEK and kek_id (docs/firmware.md),
     * kept in the secure heap: for a device, derived from its newest usable
     * device key; for a group, each of its firmware keys as they are. */
    if (!(keks = OPENSSL_secure_malloc(FIRMWARE_GROUP_ENTRY * max_recipients(sp))) ||
        !(kinds = malloc(max_recipients(sp)))) {
        qk_fail(t->e, QK_INTERNAL, "internal", "out of secure memory");
        st = DB_ERROR;
        goto out;
    }
    for (size_t i = 0; i < sp->ngroups; i++) {
        size_t n = 0;
        if ((st = firmware_group_keys_get(t->s, c, sp->groups[i], FIRMWARE_GROUP_MAX_KEYS,
                                          keks + 48 * nr, &n, t->e)) !=
            DB_OK)
            goto out;
        if (n == 0) {
            snprintf(msg, sizeof(msg), "group '%s' has no firmware key (firmware groups create)",
                     sp->groups[i]);
            st = refuse(c, t, QK_CONFLICT, "no_group_key", msg);
            goto out;
        }
        memset(kinds + nr, QKF_KIND_GROUP, n);
        nr += n;
    }
    for (size_t i = 0; i < sp->ndevices; i++) {
        const char *dv[1] = {sp->devices[i]};
        size_t dl = 0;
        if (!(r = db_exec(c, Q_FW_TARGET_KEY, 1, dv, NULL, NULL, &st)))
            goto out;
        if (PQntuples(r) == 0) {
            snprintf(msg, sizeof(msg), "no active device '%.128s' with a usable device key",
                     sp->devices[i]);
            st = refuse(c, t, QK_INVALID, "unknown_device", msg);
            goto out;
        }
        if (device_key_unwrap(t->s, sp->devices[i], atoi(PQgetvalue(r, 0, 0)),
                              PQgetvalue(r, 0, 1), PQgetvalue(r, 0, 2), dk, &dl, t->e) != QK_OK) {
            st = DB_ERROR;
            goto out;
        }
        PQclear(r);
        r = NULL;
        if (qkd_firmware_device_kek(dk, dl, pid, sp->devices[i], keks + 48 * nr,
                                    keks + 48 * nr + 32) != QKD_OK) {
            qk_fail(t->e, QK_INTERNAL, "internal", "the crypto library failed");
            st = DB_ERROR;
            goto out;
        }
        OPENSSL_cleanse(dk, DEVICE_KEY_BUF);
        kinds[nr++] = QKF_KIND_DEVICE;
    }
    if (!(man = manifest_text(sp, t->counter, t->image_len, sha_hex, nb, t->package_id,
                              t->signer))) {
        qk_fail(t->e, QK_INTERNAL, "internal", "out of memory");
        st = DB_ERROR;
        goto out;
    }
    ml = strlen(man);
    if (ml > QKF_MANIFEST_MAX) {
        st = refuse(c, t, QK_INVALID, "invalid_targets",
                    "the targets make a manifest over 64 KiB: fewer or shorter device IDs");
        goto out;
    }
    /* Signed in the token: ECDSA P-256 over SHA-256(manifest), as DER. */
    if (EVP_Digest(man, ml, dig, NULL, EVP_sha256(), NULL) != 1) {
        qk_fail(t->e, QK_INTERNAL, "internal", "the crypto library failed");
        st = DB_ERROR;
        goto out;
    }
    if ((rv = p11_find_private_key(t->s->token, label, &h, &found)) != CKR_OK || !found ||
        (rv = p11_ecdsa_sign(t->s->token, h, dig, sizeof(dig), rs, &rsl)) != CKR_OK ||
        rsl != 64) {
        qk_from_token(t->e, rv == CKR_OK ? CKR_KEY_HANDLE_INVALID : rv,
                      "signing a firmware manifest");
        st = DB_ERROR;
        goto out;
    }
    {
        BIGNUM *br = BN_bin2bn(rs, 32, NULL), *bs = BN_bin2bn(rs + 32, 32, NULL);
        int dl;
        if (!(sig = ECDSA_SIG_new()) || !br || !bs || ECDSA_SIG_set0(sig, br, bs) != 1) {
            BN_free(br);
            BN_free(bs);
            qk_fail(t->e, QK_INTERNAL, "internal", "the crypto library failed");
            st = DB_ERROR;
            goto out;
        }
        q = NULL;
        if ((dl = i2d_ECDSA_SIG(sig, &q)) <= 0 || dl > (int)QKF_SIG_MAX) {
            qk_fail(t->e, QK_INTERNAL, "internal", "the crypto library failed");
            st = DB_ERROR;
            goto out;
        }
        der = q;
        sl = (size_t)dl;
    }
    /* The body's prefix, and the sizes the header states. */
    p->plen = 4 + ml + 2 + sl;
    if (!(p->prefix = malloc(p->plen))) {
        qk_fail(t->e, QK_INTERNAL, "internal", "out of memory");
        st = DB_ERROR;
        goto out;
    }
    put32(p->prefix, (uint32_t)ml);
    memcpy(p->prefix + 4, man, ml);
    p->prefix[4 + ml] = (uint8_t)(sl >> 8);
    p->prefix[5 + ml] = (uint8_t)sl;
    memcpy(p->prefix + 6 + ml, der, sl);
    p->body_len = p->plen + t->image_len;
    p->nchunks = (p->body_len + FIRMWARE_CHUNK - 1) / FIRMWARE_CHUNK;
    p->hlen = QKF_FIXED_LEN + QKF_RECIPIENT_LEN * nr;
    if (!(p->header = calloc(1, p->hlen)) || !(p->chunk = malloc(FIRMWARE_CHUNK + QKF_TAG_LEN))) {
        qk_fail(t->e, QK_INTERNAL, "internal", "out of memory");
        st = DB_ERROR;
        goto out;
    }
    memcpy(p->header, QKF_MAGIC, 8);
    p->header[8] = QKF_VERSION;
    p->header[9] = QKF_SUITE;
    p->header[10] = (uint8_t)(nr >> 8);
    p->header[11] = (uint8_t)nr;
    put32(p->header + 12, FIRMWARE_CHUNK);
    memcpy(p->header + 16, pid, 16);
    put64(p->header + 32, p->body_len);

    /* One recipient per key gathered above. */
    for (size_t i = 0; i < nr; i++) {
        uint8_t *e = p->header + QKF_FIXED_LEN + QKF_RECIPIENT_LEN * i, aad[QKF_FIXED_LEN + 17];
        const uint8_t *kk = keks + 48 * i; /* kek (32) || kek_id (16) */
        e[0] = kinds[i];
        memcpy(e + 4, kk + 32, 16);
        if (entropy_get_secret(t->s->ent, e + 20, 12) != 0) {
            qk_fail(t->e, QK_UNAVAILABLE, "entropy_unavailable", "no entropy source may serve now");
            t->e->retry_after = 1;
            st = DB_ERROR;
            goto out;
        }
        memcpy(aad, p->header, QKF_FIXED_LEN);
        aad[QKF_FIXED_LEN] = kinds[i];
        memcpy(aad + QKF_FIXED_LEN + 1, kk + 32, 16);
        if (gcm_seal(kk, e + 20, aad, sizeof(aad), p->k, 32, e + 32) != 0) {
            qk_fail(t->e, QK_INTERNAL, "internal", "the crypto library failed");
            st = DB_ERROR;
            goto out;
        }
    }
    memcpy(p->aad, "qkms/fw/v1", 11); /* with its NUL */
    if (EVP_Digest(p->header, p->hlen, p->aad + 11, NULL, EVP_sha256(), NULL) != 1) {
        qk_fail(t->e, QK_INTERNAL, "internal", "the crypto library failed");
        st = DB_ERROR;
        goto out;
    }

    /* The release, and its audit row, in the same commit. */
    snprintf(cnt, sizeof(cnt), "%llu", (unsigned long long)t->counter);
    snprintf(nbs, sizeof(nbs), "%lld", (long long)nb);
    {
        json_t *targets = firmware_targets_json(sp);
        char *tg = targets ? json_dumps(targets, JSON_COMPACT) : NULL;
        uint8_t msha[32];
        char msha_hex[65], isize[24];
        json_decref(targets);
        EVP_Digest(man, ml, msha, NULL, EVP_sha256(), NULL);
        qkms_hex_encode(msha, 32, msha_hex);
        snprintf(isize, sizeof(isize), "%llu", (unsigned long long)t->image_len);
        {
            const char *vals[11] = {sp->product, cnt, sp->version, t->package_id, isize, sha_hex,
                                    msha_hex, t->signer, tg, nbs, t->who->name};
            PGresult *ins = tg ? db_exec(c, Q_FW_RELEASE_INSERT, 11, vals, NULL, NULL, &st) : NULL;
            free(tg);
            if (!ins && !tg) {
                qk_fail(t->e, QK_INTERNAL, "internal", "out of memory");
                st = DB_ERROR;
            }
            if (!ins)
                goto out;
            PQclear(ins);
        }
    }
    if (sp->approval && (st = firmware_approval_use(c, sp->approval, t->package_id, t->e)) != DB_OK)
        goto out;
    st = audit_append(c, t->who->name, "firmware.signed", NULL,
                      json_pack("{s:s,s:s,s:s,s:s,s:I,s:s,s:s,s:o,s:i}", "product",
                                sp->product, "version", sp->version, "counter", cnt, "package_id",
                                t->package_id, "image_size", (json_int_t)t->image_len,
                                "image_sha256", sha_hex, "signer", t->signer, "targets",
                                firmware_targets_json(sp), "recipients", (int)nr));
    if (st == DB_OK && sp->approval)
        st = audit_append(c, t->who->name, "firmware.approval_used", NULL,
                          json_pack("{s:s,s:s,s:s,s:s}", "approval", sp->approval, "package_id",
                                    t->package_id, "requested_by", t->requested_by,
                                    "approved_by", t->approved_by));
    if (st == DB_OK) {
        t->pkg = p;
        p = NULL;
    }
out:
    if (keks)
        OPENSSL_secure_clear_free(keks, FIRMWARE_GROUP_ENTRY * max_recipients(sp));
    free(kinds);
    if (dk)
        OPENSSL_secure_clear_free(dk, DEVICE_KEY_BUF);
    ECDSA_SIG_free(sig);
    OPENSSL_free(der);
    free(man);
    PQclear(r);
    firmware_package_free(p); /* the image is not its own yet: see firmware_sign */
    return st;
}

qk_kind firmware_sign(qk_svc *s, const qk_principal *who, const firmware_sign_spec *sp,
                      uint8_t *image, size_t image_len, firmware_package **out, json_t **info,
                      qk_err *e)
{
    sign_tx t;
    db_status st;
    qk_kind k = QK_OK;

    qk_clear(e); /* db_tx may fail before the callback ever ran */
    *out = NULL;
    *info = NULL;
    memset(&t, 0, sizeof(t));
    if ((k = firmware_spec_check(sp, e)) == QK_OK && image_len == 0)
        k = qk_fail(e, QK_INVALID, "invalid_image", "the image is empty");
    if (k != QK_OK)
        goto fail;
    t.s = s;
    t.who = who;
    t.sp = sp;
    t.e = e;
    t.image_len = image_len;
    if (EVP_Digest(image, image_len, t.image_sha, NULL, EVP_sha256(), NULL) != 1) {
        k = qk_fail(e, QK_INTERNAL, "internal", "the crypto library failed");
        goto fail;
    }
    st = db_tx(s->db, sign_tx_fn, &t);
    if (st != DB_OK || t.refused || !t.pkg) {
        firmware_package_free(t.pkg);
        k = st != DB_OK ? (!t.refused && e->kind != QK_OK ? e->kind : db_fail(e, st))
            : t.refused ? e->kind
                        : qk_fail(e, QK_INTERNAL, "internal", "internal error (see kmsd log)");
        goto fail;
    }
    t.pkg->image = image; /* the package's from now on */
    t.pkg->image_len = image_len;
    {
        char sha[65], cnt[24];
        qkms_hex_encode(t.image_sha, 32, sha);
        snprintf(cnt, sizeof(cnt), "%llu", (unsigned long long)t.counter);
        *info = json_pack("{s:s,s:s,s:I,s:s,s:I,s:s,s:s,s:I}", "product", sp->product, "version",
                          sp->version, "counter", (json_int_t)t.counter, "package_id",
                          t.package_id, "image_size", (json_int_t)image_len, "image_sha256", sha,
                          "signer", t.signer, "package_size",
                          (json_int_t)firmware_package_size(t.pkg));
        log_with(&who->log, LOG_INFO, "firmware signed", "{s:s,s:s,s:s,s:s,s:I}", "product",
                 sp->product, "version", sp->version, "counter", cnt, "package_id", t.package_id,
                 "image_size", (json_int_t)image_len);
    }
    *out = t.pkg;
    return QK_OK;
fail:
    OPENSSL_cleanse(image, image_len);
    free(image);
    return k;
}
