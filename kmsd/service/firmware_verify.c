/*
 * firmware_verify — a package checked as its targets would check it
 * (firmware_verify.h): the release looked up by package ID, then the
 * device library's streaming opener run under the target groups' keys and
 * then each target device's keys until one opens it.
 */
#include "service/firmware_verify.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

#include "hexutil.h"
#include "qkms_device.h"
#include "qkms_fw.h"
#include "service/audit.h"
#include "service/device_keys.h"
#include "service/firmware_groups.h"
#include "service/firmware_spec.h"
#include "service/x509util.h"
#include "store/pgjson.h"
#include "store/queries.h"

#define MAX_CERTS 32 /* a product's firmware keys: one per rotation */

typedef struct {
    qk_svc *s;
    const uint8_t *pkg;
    size_t len;
    qkd_firmware_policy p;
    uint8_t *certs[MAX_CERTS];
    size_t cert_lens[MAX_CERTS], ncerts;
    qkd_firmware_manifest m;
    char err[256];
    const char *product;
    qkd_firmware_group_key *gk; /* the target groups' keys (secure heap) */
    size_t ngk, gk_cap;
    qkd_device *devs[FIRMWARE_MAX_TARGETS]; /* the target devices' keys */
    const char *dev_ids[FIRMWARE_MAX_TARGETS];
    size_t ndevs;
} vctx;

static int discard(void *arg, const uint8_t *d, size_t n)
{
    (void)arg;
    (void)d;
    (void)n;
    return 0; /* the library hashes the image; nobody needs its bytes */
}

/* One run of the opener under v->p: QKD_OK, or the library's failure with
 * v->err naming the check. */
static int open_once(vctx *v)
{
    qkd_firmware_stream *st = NULL;
    int rc = qkd_firmware_stream_new(&st, &v->p, discard, NULL, v->err, sizeof(v->err));
    if (rc == QKD_OK)
        rc = qkd_firmware_stream_update(st, v->pkg, v->len, v->err, sizeof(v->err));
    if (rc == QKD_OK)
        rc = qkd_firmware_stream_final(st, &v->m, v->err, sizeof(v->err));
    qkd_firmware_stream_free(st);
    return rc;
}

static bool not_ours(const vctx *v) { return !strncmp(v->err, "not_a_target", 12); }

static json_t *invalid(const char *check, const char *message)
{
    return json_pack("{s:b,s:s,s:s}", "valid", 0, "check", check, "message", message);
}

/* The failure's check name: the library's message up to its colon. */
static json_t *invalid_from(const vctx *v)
{
    char check[32];
    size_t n = strcspn(v->err, ":");
    snprintf(check, sizeof(check), "%.*s", (int)(n < sizeof(check) ? n : sizeof(check) - 1),
             v->err);
    return invalid(check, v->err);
}

/* One run of the opener under v->p: 1 opened, 0 none of its keys is the
 * package's, -1 a check failed (v->err), -2 the library failed (e). */
static int attempt(vctx *v, qk_err *e)
{
    int rc = open_once(v);
    if (rc == QKD_OK)
        return 1;
    if (rc == QKD_ERR_INTERNAL) {
        qk_fail(e, QK_INTERNAL, "internal", "the crypto library failed");
        return -2;
    }
    return not_ours(v) ? 0 : -1;
}

/* The target groups' firmware keys, unwrapped into v->gk (secure heap). */
static qk_kind load_groups(vctx *v, db_conn *c, const json_t *groups, qk_err *e)
{
    size_t ng = json_array_size(groups), n, i;
    uint8_t *raw = NULL;
    const json_t *g;
    qk_kind k = QK_OK;

    if (ng == 0)
        return QK_OK;
    v->gk_cap = FIRMWARE_GROUP_MAX_KEYS * ng;
    if (!(raw = OPENSSL_secure_malloc(FIRMWARE_GROUP_ENTRY * FIRMWARE_GROUP_MAX_KEYS)) ||
        !(v->gk = OPENSSL_secure_zalloc(sizeof(*v->gk) * v->gk_cap))) {
        k = qk_fail(e, QK_INTERNAL, "internal", "out of secure memory");
        goto out;
    }
    json_array_foreach(groups, i, g) {
        const char *name = json_string_value(g);
        if (!name || strlen(name) >= sizeof(v->gk->group))
            continue;
        if (firmware_group_keys_get(v->s, c, name, FIRMWARE_GROUP_MAX_KEYS, raw, &n, e) != DB_OK) {
            k = e->kind != QK_OK ? e->kind : QK_INTERNAL;
            goto out;
        }
        for (size_t j = 0; j < n; j++, v->ngk++) {
            snprintf(v->gk[v->ngk].group, sizeof(v->gk->group), "%s", name);
            memcpy(v->gk[v->ngk].key, raw + FIRMWARE_GROUP_ENTRY * j, 32);
            memcpy(v->gk[v->ngk].key_id, raw + FIRMWARE_GROUP_ENTRY * j + 32, 16);
        }
        OPENSSL_cleanse(raw, FIRMWARE_GROUP_ENTRY * FIRMWARE_GROUP_MAX_KEYS);
    }
out:
    if (raw)
        OPENSSL_secure_clear_free(raw, FIRMWARE_GROUP_ENTRY * FIRMWARE_GROUP_MAX_KEYS);
    return k;
}

/* One target device's keys (any state but local) as a qkd_device: *out,
 * or NULL when it has none (or an ID the library would not take). */
static qk_kind load_device(vctx *v, db_conn *c, const char *id, qkd_device **out, qk_err *e)
{
    const char *vals[1] = {id};
    db_status st;
    PGresult *r = db_exec(c, Q_FW_DEVICE_KEYS_ALL, 1, vals, NULL, NULL, &st);
    uint8_t *key = OPENSSL_secure_malloc(DEVICE_KEY_BUF);
    qkd_device *d = NULL;
    qk_kind k = QK_OK;

    *out = NULL;
    if (!r) {
        k = db_fail(e, st);
        goto out;
    }
    if (!key) {
        k = qk_fail(e, QK_INTERNAL, "internal", "out of secure memory");
        goto out;
    }
    if (PQntuples(r) == 0 || qkd_device_new(&d, id, NULL, 0) != QKD_OK)
        goto out; /* gone, or an ID no device library would take */
    for (int i = 0; i < PQntuples(r); i++) {
        size_t kl;
        int idx = atoi(PQgetvalue(r, i, 0));
        if ((k = device_key_unwrap(v->s, id, idx, PQgetvalue(r, i, 1), PQgetvalue(r, i, 2), key,
                                   &kl, e)) != QK_OK)
            goto out;
        if (qkd_device_add_key(d, idx, PQgetvalue(r, i, 1), key, kl, NULL, 0) != QKD_OK) {
            k = qk_fail(e, QK_INTERNAL, "internal", "out of secure memory");
            goto out;
        }
        OPENSSL_cleanse(key, DEVICE_KEY_BUF);
    }
    *out = d;
    d = NULL;
out:
    qkd_device_free(d);
    if (key)
        OPENSSL_secure_clear_free(key, DEVICE_KEY_BUF);
    PQclear(r);
    return k;
}

/* The product's certificates, pinned as its devices pin them. */
static qk_kind load_certs(vctx *v, db_conn *c, qk_err *e)
{
    const char *vals[1] = {v->product};
    db_status st;
    PGresult *r = db_exec(c, Q_FW_PRODUCT_CERTS, 1, vals, NULL, NULL, &st);
    if (!r)
        return db_fail(e, st);
    for (int i = 0; i < PQntuples(r) && v->ncerts < MAX_CERTS; i++) {
        size_t n;
        if (x509_unhex(PQgetvalue(r, i, 0), &v->certs[v->ncerts], &n) == 0)
            v->cert_lens[v->ncerts++] = n;
    }
    PQclear(r);
    v->p.certs = (const uint8_t *const *)v->certs;
    v->p.cert_lens = v->cert_lens;
    v->p.ncerts = v->ncerts;
    return QK_OK;
}

qk_kind firmware_verify(qk_svc *s, const qk_principal *who, uint8_t *pkg, size_t len,
                        json_t **out, qk_err *e)
{
    vctx v = {.s = s, .pkg = pkg, .len = len};
    const char *pv[1];
    char pid[37] = "", msg[200];
    db_status st;
    db_conn *c = NULL;
    PGresult *r = NULL;
    json_t *targets = NULL, *with = NULL;
    qk_kind k = QK_OK;
    int got = 0;

    qk_clear(e);
    *out = NULL;
    if (len < QKF_FIXED_LEN || memcmp(pkg, QKF_MAGIC, 8) != 0) {
        *out = invalid("format", "format: not a firmware package (magic QKMSFW01)");
        goto done;
    }
    qkms_uuid_format(pkg + 16, pid);
    pv[0] = pid;
    if (!(c = db_acquire(s->db, &st))) {
        k = db_fail(e, st);
        goto done;
    }
    if (!(r = db_exec(c, Q_FW_RELEASE_BY_PACKAGE, 1, pv, NULL, NULL, &st))) {
        k = db_fail(e, st);
        goto done;
    }
    if (PQntuples(r) == 0) {
        snprintf(msg, sizeof(msg), "unknown_package: no release with package ID %s was signed here",
                 pid);
        *out = invalid("unknown_package", msg);
        goto done;
    }
    v.product = PQgetvalue(r, 0, 0);
    v.p.product = v.product;
    v.p.counter = 0; /* the platform checks the package, not a device's state */
    v.p.now = -1;
    targets = json_loads(PQgetvalue(r, 0, 6), 0, NULL);
    if (!json_is_object(targets)) {
        k = qk_fail(e, QK_INTERNAL, "internal", "a release's targets are unreadable");
        goto done;
    }
    /* Every key first, then the connection back to the pool: the opener
     * may take a while over a large package. */
    if ((k = load_certs(&v, c, e)) != QK_OK ||
        (k = load_groups(&v, c, json_object_get(targets, "groups"), e)) != QK_OK)
        goto done;
    {
        size_t i;
        const json_t *d;
        json_array_foreach(json_object_get(targets, "devices"), i, d) {
            if (!json_is_string(d) || v.ndevs == FIRMWARE_MAX_TARGETS)
                continue;
            if ((k = load_device(&v, c, json_string_value(d), &v.devs[v.ndevs], e)) != QK_OK)
                goto done;
            if (v.devs[v.ndevs])
                v.dev_ids[v.ndevs++] = json_string_value(d);
        }
    }
    db_release(s->db, c);
    c = NULL;
    if (v.ngk > 0) {
        v.p.groups = v.gk;
        v.p.ngroups = v.ngk;
        if ((got = attempt(&v, e)) == 1)
            with = json_pack("{s:s,s:s}", "kind", "group", "group", v.m.group);
        v.p.groups = NULL;
        v.p.ngroups = 0;
    }
    for (size_t i = 0; got == 0 && i < v.ndevs; i++) {
        v.p.device = v.devs[i];
        if ((got = attempt(&v, e)) == 1)
            with = json_pack("{s:s,s:s}", "kind", "device", "device_id", v.dev_ids[i]);
        v.p.device = NULL;
    }
    if (got == -2) {
        k = e->kind != QK_OK ? e->kind : qk_fail(e, QK_INTERNAL, "internal", "internal error");
        goto done;
    }
    if (got == -1) {
        *out = invalid_from(&v);
        goto done;
    }
    if (got == 0) {
        *out = invalid("not_a_target",
                       "not_a_target: no key of the release's targets opens the package");
        goto done;
    }
    {
        char sha[65], signer[65];
        qkms_hex_encode(v.m.image_sha256, 32, sha);
        qkms_hex_encode(v.m.signer, 32, signer);
        if ((uint64_t)strtoull(PQgetvalue(r, 0, 1), NULL, 10) != v.m.counter ||
            strcmp(PQgetvalue(r, 0, 2), v.m.version) != 0 ||
            (uint64_t)strtoull(PQgetvalue(r, 0, 3), NULL, 10) != v.m.image_size ||
            strcmp(PQgetvalue(r, 0, 4), sha) != 0 || strcmp(PQgetvalue(r, 0, 5), signer) != 0) {
            *out = invalid("record", "record: the package opens but its manifest is not the "
                                     "recorded release's");
            goto done;
        }
        *out = json_pack("{s:b,s:s,s:s,s:s,s:I,s:I,s:s,s:s,s:I,s:O,s:O,s:o,s:o}", "valid", 1,
                         "package_id", pid, "product", v.product, "version", v.m.version,
                         "counter", (json_int_t)v.m.counter, "image_size",
                         (json_int_t)v.m.image_size, "image_sha256", sha, "signer", signer,
                         "not_before", (json_int_t)v.m.not_before, "targets", targets,
                         "opened_with", with, "signed_by", pgjson_text(r, 0, 8), "signed_at",
                         pgjson_time(r, 0, 9));
    }
done:
    if (k == QK_OK && !*out)
        k = qk_fail(e, QK_INTERNAL, "internal", "out of memory");
    /* The verdict is answered only once audited (firmware.checked: the
     * package ID, the verdict and the failed check; nothing of the image). */
    if (k == QK_OK) {
        if (!c && !(c = db_acquire(s->db, &st)))
            k = db_fail(e, st);
        else if ((st = audit_append(
                      c, who->name, "firmware.checked", NULL,
                      json_pack("{s:s,s:O,s:O?,s:I}", "package_id", pid, "valid",
                                json_object_get(*out, "valid"), "check",
                                json_object_get(*out, "check"), "bytes", (json_int_t)len))) !=
                 DB_OK)
            k = db_fail(e, st);
        if (k != QK_OK) {
            json_decref(*out);
            *out = NULL;
        }
    }
    if (k == QK_OK)
        log_with(&who->log, LOG_INFO, "firmware package checked", "{s:s,s:O}", "package_id", pid,
                 "valid", json_object_get(*out, "valid"));
    for (size_t i = 0; i < v.ncerts; i++)
        OPENSSL_free(v.certs[i]);
    for (size_t i = 0; i < FIRMWARE_MAX_TARGETS; i++)
        qkd_device_free(v.devs[i]);
    if (v.gk)
        OPENSSL_secure_clear_free(v.gk, sizeof(*v.gk) * v.gk_cap);
    json_decref(targets);
    json_decref(with);
    PQclear(r);
    if (c)
        db_release(s->db, c);
    OPENSSL_cleanse(pkg, len);
    free(pkg);
    return k;
}
