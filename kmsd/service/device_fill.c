/*
 * device_fill — the fill export (device_fill.h). One transaction locks the
 * device, chooses the keys, writes the fill document (unwrapping each key
 * into the secure heap just long enough to hex it into the document's
 * secure qbuf), seals it when there is a recipient, marks the keys exported
 * and appends the audit row. The document is written here by hand, not
 * through jansson, so that the key material only ever sits in wiped
 * buffers.
 */
#include "service/device_fill.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/crypto.h>

#include "fillpkg.h"
#include "hexutil.h"
#include "service/audit.h"
#include "service/auth.h"
#include "service/certs.h"
#include "service/device_keys.h"
#include "service/device_model.h"
#include "service/firmware_groups.h"
#include "store/pgarray.h"
#include "store/pgjson.h"
#include "store/queries.h"

/* The document's bound: its head, and per key far more than one entry
 * ({"index":255,"algorithm":"AES-256","key":<64 hex>,...}) needs. */
#define DOC_HEAD_MAX 1024
#define DOC_KEY_MAX 512

struct fill_tx {
    qk_svc *s;
    const char *actor, *device_id;
    const int *indices;
    int nindices;
    bool force, family_only;
    EVP_PKEY *recipient;
    char fingerprint[65];
    const qbuf *tls; /* a qkms-tls-identity/1 document to carry as "tls", or NULL */
    qk_err *e;
    /* outputs (reset at the start of each run: db_tx may run it again) */
    qbuf *doc;
    int chosen[DEVICE_MAX_KEY_INDEX + 1]; /* rows of Q_DEVICE_KEYS, in document order */
    int nchosen;
    json_t *exported; /* indices, in document order */
    json_t *family;   /* the gateway's local key indices in the document */
    char gateway[DEVICE_ID_MAX + 1];
    uint8_t *gkeys;        /* the group's active firmware key (secure heap) */
    size_t ngkeys;
    char group_key_id[33]; /* the one in the document, or "" */
    uint8_t *package;
    size_t package_len;
};

qk_kind device_fill_may_plaintext(const qk_principal *who, qk_err *e)
{
    if (who->kind == QK_PRINCIPAL_ADMIN && (who->roles & ROLE_ADMIN))
        return QK_OK;
    return qk_fail(e, QK_FORBIDDEN, "forbidden", "only an admin may export keys in plaintext");
}

static bool want_index(const struct fill_tx *t, int idx)
{
    for (int i = 0; i < t->nindices; i++)
        if (t->indices[i] == idx)
            return true;
    return false;
}

static bool key_live(const PGresult *keys, int r)
{
    return !strcmp(PQgetvalue(keys, r, 2), "active") && PQgetvalue(keys, r, 3)[0] != 't';
}

static bool key_exported(const PGresult *keys, int r) { return atoi(PQgetvalue(keys, r, 8)) > 0; }

/* Each index asked for exists, is live and (without force) was never
 * exported. */
static db_status check_asked(struct fill_tx *t, const PGresult *keys)
{
    for (int i = 0; i < t->nindices; i++) {
        int r = 0;
        while (r < PQntuples(keys) && atoi(PQgetvalue(keys, r, 0)) != t->indices[i])
            r++;
        if (r == PQntuples(keys)) {
            qk_fail(t->e, QK_INVALID, "no_exportable_keys", "device '%s' has no key %d",
                    t->device_id, t->indices[i]);
            return DB_INVALID;
        }
        if (!key_live(keys, r)) {
            qk_fail(t->e, QK_INVALID, "no_exportable_keys", "key %d of '%s' is not active",
                    t->indices[i], t->device_id);
            return DB_INVALID;
        }
        if (key_exported(keys, r) && !t->force) {
            qk_fail(t->e, QK_CONFLICT, "already_exported",
                    "key %d of '%s' was exported before; use force to export it again",
                    t->indices[i], t->device_id);
            return DB_INVALID;
        }
    }
    return DB_OK;
}

/* Choose the keys to export from Q_DEVICE_KEYS rows into t->chosen. */
static db_status choose_keys(struct fill_tx *t, const PGresult *keys)
{
    int live = 0, fresh = 0;
    db_status st;

    t->nchosen = 0;
    if ((st = check_asked(t, keys)) != DB_OK)
        return st;
    for (int r = 0; r < PQntuples(keys); r++) {
        bool exported = key_exported(keys, r);
        if (!key_live(keys, r))
            continue;
        live++;
        fresh += !exported;
        if (t->nindices > 0 ? want_index(t, atoi(PQgetvalue(keys, r, 0))) : (!exported || t->force))
            t->chosen[t->nchosen++] = r;
    }
    if (t->nchosen > 0)
        return DB_OK;
    if (live > 0 && fresh == 0)
        qk_fail(t->e, QK_CONFLICT, "already_exported",
                "every live key of '%s' was exported before; use force to export again",
                t->device_id);
    else
        qk_fail(t->e, QK_INVALID, "no_exportable_keys", "device '%s' has no live keys",
                t->device_id);
    return DB_INVALID;
}

/* The first failure of a run of puts (QBUF_OK while there is none). */
static int keep(int first, int r) { return first != QBUF_OK ? first : r; }

/* JSON string for our restricted identifiers (printable ASCII, where only
 * '"' needs escaping; device_model.h). */
static int put_str(qbuf *b, const char *s)
{
    int bad = qbuf_put_u8(b, '"');
    for (; *s; s++)
        bad = keep(bad, *s == '"' ? qbuf_put(b, "\\\"", 2) : qbuf_put_u8(b, (uint8_t)*s));
    return keep(bad, qbuf_put_u8(b, '"'));
}

/* One key's entry, its bytes hexed straight from the secure buffer. */
static int put_key(qbuf *b, int first, const PGresult *keys, int r0, const uint8_t *key, size_t kl,
                   const char *kcv)
{
    char nb[32], na[32];
    uint8_t *dst;
    int bad;

    pgjson_rfc3339(PQgetvalue(keys, r0, 4), nb, sizeof(nb));
    pgjson_rfc3339(PQgetvalue(keys, r0, 5), na, sizeof(na));
    bad = qbuf_putf(b, "%s{\"index\":%d,\"purpose\":\"%s\",\"algorithm\":\"%s\",\"key\":\"",
                    first ? "" : ",", atoi(PQgetvalue(keys, r0, 0)), PQgetvalue(keys, r0, 13),
                    PQgetvalue(keys, r0, 1));
    if (bad == QBUF_OK && (bad = qbuf_reserve(b, 2 * kl, &dst)) == QBUF_OK)
        qkms_hex_encode(key, kl, (char *)dst); /* its NUL lands on the qbuf's own */
    return keep(bad, qbuf_putf(b, "\",\"kcv\":\"%s\",\"not_before\":\"%s\",\"not_after\":\"%s\"}",
                               kcv, nb, na));
}

static db_status doc_failed(struct fill_tx *t, int bad)
{
    if (bad == QBUF_E_LIMIT)
        qk_fail(t->e, QK_INTERNAL, "internal", "fill document too large");
    else
        qk_fail(t->e, QK_INTERNAL, "internal", "out of secure memory");
    return DB_ERROR;
}

/* The family member of a sub-device's document: its gateway's live local
 * keys (Q_FAMILY_LOCAL_KEYS rows; docs/gateways.md), unwrapped under the
 * gateway's own key contexts. Their indices go into t->family. */
static db_status write_family(struct fill_tx *t, const PGresult *fam, uint8_t *key)
{
    const char *gw = PQgetvalue(fam, 0, 14);
    int bad = qbuf_put_str(t->doc, ",\"family\":{\"gateway_id\":");
    bad = keep(bad, put_str(t->doc, gw));
    bad = keep(bad, qbuf_put_str(t->doc, ",\"keys\":["));
    for (int r0 = 0; r0 < PQntuples(fam) && !bad; r0++) {
        int index = atoi(PQgetvalue(fam, r0, 0));
        char kcv[11];
        size_t kl;
        if (device_key_unwrap(t->s, gw, index, PQgetvalue(fam, r0, 1), PQgetvalue(fam, r0, 11),
                              key, &kl, t->e) != QK_OK)
            return DB_INVALID;
        device_key_kcv(PQgetvalue(fam, r0, 1), key, kl, kcv);
        bad = put_key(t->doc, r0 == 0, fam, r0, key, kl, kcv);
        OPENSSL_cleanse(key, kl);
        json_array_append_new(t->family, json_integer(index));
    }
    bad = keep(bad, qbuf_put_str(t->doc, "]}"));
    return bad ? doc_failed(t, bad) : DB_OK;
}

/* Write the document of the chosen keys (and fam's, when it has rows) into
 * t->doc; their indices go into idx (for the statement) and t->exported. */
static db_status write_doc(struct fill_tx *t, const PGresult *keys, const PGresult *fam,
                           const char *type, const char *group, pgarray *idx)
{
    uint8_t *key = OPENSSL_secure_malloc(DEVICE_KEY_BUF);
    time_t tnow = time(NULL);
    char now[32];
    struct tm tm;
    db_status st = DB_OK;
    int bad;

    t->doc = qbuf_new(DOC_HEAD_MAX * (PQntuples(fam) > 0 ? 3 : 2) +
                          (size_t)(t->nchosen + PQntuples(fam)) * DOC_KEY_MAX +
                          (t->tls ? qbuf_len(t->tls) + 16 : 0),
                      QBUF_SECURE);
    t->exported = json_array();
    t->family = json_array();
    if (!t->doc || !key || !t->exported || !t->family) {
        qk_fail(t->e, QK_INTERNAL, "internal", "out of secure memory");
        st = DB_ERROR;
        goto out;
    }
    gmtime_r(&tnow, &tm);
    strftime(now, sizeof(now), "%Y-%m-%dT%H:%M:%SZ", &tm);
    bad = qbuf_put_str(t->doc, "{\"format\":\"qkms-fill/1\",\"issuer\":\"qkms\",\"device_id\":");
    bad = keep(bad, put_str(t->doc, t->device_id));
    bad = keep(bad, qbuf_putf(t->doc, ",\"type\":\"%s\",\"group\":\"%s\",\"created_at\":\"%s\",\"keys\":[",
                     type, group, now));
    for (int i = 0; i < t->nchosen && !bad; i++) {
        int r0 = t->chosen[i], index = atoi(PQgetvalue(keys, r0, 0));
        char kcv[11];
        size_t kl;
        if (device_key_unwrap(t->s, t->device_id, index, PQgetvalue(keys, r0, 1),
                              PQgetvalue(keys, r0, 11), key, &kl, t->e) != QK_OK) {
            st = DB_INVALID;
            goto out;
        }
        device_key_kcv(PQgetvalue(keys, r0, 1), key, kl, kcv);
        bad = put_key(t->doc, i == 0, keys, r0, key, kl, kcv);
        OPENSSL_cleanse(key, kl);
        pgarray_add_int(idx, index);
        json_array_append_new(t->exported, json_integer(index));
    }
    bad = keep(bad, qbuf_put_str(t->doc, "]"));
    if (bad) {
        st = doc_failed(t, bad);
        goto out;
    }
    if (PQntuples(fam) > 0 && (st = write_family(t, fam, key)) != DB_OK)
        goto out;
    /* The group's active firmware key (firmware_groups.h): group-targeted
     * packages are wrapped under it. */
    if (t->ngkeys > 0) {
        uint8_t *dst;
        qkms_hex_encode(t->gkeys + 32, 16, t->group_key_id);
        bad = keep(bad, qbuf_put_str(t->doc, ",\"firmware_group_key\":{\"group\":"));
        bad = keep(bad, put_str(t->doc, group));
        bad = keep(bad, qbuf_putf(t->doc, ",\"key_id\":\"%s\",\"key\":\"", t->group_key_id));
        if (bad == QBUF_OK && (bad = qbuf_reserve(t->doc, 64, &dst)) == QBUF_OK)
            qkms_hex_encode(t->gkeys, 32, (char *)dst);
        bad = keep(bad, qbuf_put_str(t->doc, "\"}"));
    }
    /* The device's TLS identity (device_fill.h), as made by certs_identity. */
    if (t->tls) {
        bad = keep(bad, qbuf_put_str(t->doc, ",\"tls\":"));
        bad = keep(bad, qbuf_put(t->doc, qbuf_ptr(t->tls), qbuf_len(t->tls)));
    }
    bad = keep(bad, qbuf_put_str(t->doc, "}"));
    if (bad)
        st = doc_failed(t, bad);
out:
    if (key)
        OPENSSL_secure_clear_free(key, DEVICE_KEY_BUF);
    return st;
}

static void reset_fill_outputs(struct fill_tx *t)
{
    qbuf_free(t->doc);
    t->doc = NULL;
    free(t->package);
    t->package = NULL;
    t->package_len = 0;
    json_decref(t->exported);
    t->exported = NULL;
    json_decref(t->family);
    t->family = NULL;
    if (t->gkeys)
        OPENSSL_cleanse(t->gkeys, FIRMWARE_GROUP_ENTRY * FIRMWARE_GROUP_MAX_KEYS);
    t->ngkeys = 0;
    t->group_key_id[0] = 0;
}

/* Lock the device (it must be active); its pk, type and group. */
static db_status fill_lock(db_conn *c, struct fill_tx *t, char pk[24], char *type, char *group)
{
    const char *vals[1] = {t->device_id};
    db_status st;
    PGresult *dev = db_exec(c, Q_DEVICE_LOCK, 1, vals, NULL, NULL, &st);
    if (!dev) {
        db_fail(t->e, st);
        return st;
    }
    st = DB_OK;
    if (PQntuples(dev) == 0) {
        qk_fail(t->e, QK_NOT_FOUND, "not_found", "no device '%s'", t->device_id);
        st = DB_NOT_FOUND;
    } else if (strcmp(PQgetvalue(dev, 0, 1), "active") != 0) {
        qk_fail(t->e, QK_CONFLICT, "invalid_state", "device '%s' is %s", t->device_id,
                PQgetvalue(dev, 0, 1));
        st = DB_INVALID;
    } else {
        snprintf(pk, 24, "%s", PQgetvalue(dev, 0, 0));
        snprintf(type, DEVICE_TYPE_MAX + 1, "%s", PQgetvalue(dev, 0, 2));
        snprintf(group, DEVICE_GROUP_MAX + 1, "%s", PQgetvalue(dev, 0, 3));
    }
    PQclear(dev);
    return st;
}

static db_status seal(struct fill_tx *t)
{
    char why[128];
    if (fillpkg_seal(t->recipient, qbuf_ptr(t->doc), qbuf_len(t->doc), &t->package,
                     &t->package_len, why, sizeof(why)) == 0)
        return DB_OK;
    log_emit(LOG_ERROR, "fill package sealing failed", "{s:s}", "error", why);
    qk_fail(t->e, QK_INTERNAL, "internal", "sealing the fill package failed");
    return DB_ERROR;
}

/* Mark the exported keys and append the audit row. */
static db_status record(db_conn *c, struct fill_tx *t, const char *pk, pgarray *idx)
{
    const char *vals[2] = {pk, pgarray_finish(idx)};
    db_status st;
    PGresult *r;

    if (!vals[1]) {
        qk_fail(t->e, QK_INTERNAL, "internal", "out of memory");
        return DB_ERROR;
    }
    if (!(r = db_exec(c, Q_DEVKEY_MARK_EXPORTED, 2, vals, NULL, NULL, &st))) {
        db_fail(t->e, st);
        return st;
    }
    PQclear(r);
    st = audit_append(c, t->actor, "device.fill_exported", t->device_id,
                      json_pack("{s:O,s:s,s:s?,s:b,s:s?,s:o?}", "indices", t->exported, "mode",
                                t->recipient ? "sealed" : "plaintext", "recipient_fingerprint",
                                t->recipient ? t->fingerprint : NULL, "forced", t->force,
                                "firmware_group_key_id",
                                t->group_key_id[0] ? t->group_key_id : NULL,
                                "family", json_array_size(t->family)
                                              ? json_pack("{s:s,s:O}", "gateway_id", t->gateway,
                                                          "indices", t->family)
                                              : NULL));
    /* The gateway's own trail names where its local key went. */
    if (st == DB_OK && json_array_size(t->family))
        st = audit_append(c, t->actor, "device.family_key_exported", t->gateway,
                          json_pack("{s:s,s:O,s:s}", "sub_device", t->device_id, "indices",
                                    t->family, "mode", t->recipient ? "sealed" : "plaintext"));
    if (st != DB_OK)
        db_fail(t->e, st);
    return st;
}

static db_status fill_tx_fn(db_conn *c, void *arg)
{
    struct fill_tx *t = arg;
    const char *vals[1] = {t->device_id};
    char pk[24], type[DEVICE_TYPE_MAX + 1], group[DEVICE_GROUP_MAX + 1];
    const char *fvals[1] = {pk};
    PGresult *keys = NULL, *fam = NULL;
    pgarray idx;
    db_status st;

    /* db_tx may run this again: an error of an earlier attempt must not
     * decide the answer of this one. */
    qk_clear(t->e);
    pgarray_init(&idx);
    reset_fill_outputs(t);
    if ((st = fill_lock(c, t, pk, type, group)) != DB_OK)
        goto out;
    if (!(keys = db_exec(c, Q_DEVICE_KEYS, 1, vals, NULL, NULL, &st))) {
        db_fail(t->e, st);
        goto out;
    }
    /* A sub-device also gets its gateway's local key (its family's). */
    if (!(fam = db_exec(c, Q_FAMILY_LOCAL_KEYS, 1, fvals, NULL, NULL, &st))) {
        db_fail(t->e, st);
        goto out;
    }
    t->gateway[0] = 0;
    if (PQntuples(fam) > 0)
        snprintf(t->gateway, sizeof(t->gateway), "%s", PQgetvalue(fam, 0, 14));
    if (t->family_only) {
        t->nchosen = 0;
        if (PQntuples(fam) == 0) {
            qk_fail(t->e, QK_INVALID, "no_exportable_keys",
                    "device '%s' has no gateway with a live local key", t->device_id);
            st = DB_INVALID;
            goto out;
        }
    } else if ((st = choose_keys(t, keys)) != DB_OK) {
        goto out;
    }
    /* A family-only refill carries the family's keys alone. */
    if (!t->family_only &&
        (st = firmware_group_keys_get(t->s, c, group, 1, t->gkeys, &t->ngkeys, t->e)) != DB_OK)
        goto out;
    if ((st = write_doc(t, keys, fam, type, group, &idx)) != DB_OK)
        goto out;
    if (t->recipient && (st = seal(t)) != DB_OK)
        goto out;
    st = record(c, t, pk, &idx);
out:
    pgarray_free(&idx);
    PQclear(keys);
    PQclear(fam);
    return st;
}

/* The sealed answer: the package in base64 with its fields. */
static qk_kind sealed_answer(struct fill_tx *t, json_t **out, qk_err *e)
{
    size_t b64len = 4 * ((t->package_len + 2) / 3) + 1;
    char *b64 = malloc(b64len);
    if (!b64)
        return qk_fail(e, QK_INTERNAL, "internal", "out of memory");
    EVP_EncodeBlock((unsigned char *)b64, t->package, (int)t->package_len);
    *out = json_pack("{s:s,s:s,s:O,s:s,s:s}", "device_id", t->device_id, "format", "qkms-fill/1",
                     "indices", t->exported, "recipient_fingerprint", t->fingerprint, "package",
                     b64);
    free(b64);
    return QK_OK;
}

qk_kind device_fill_export(qk_svc *s, const qk_principal *who, const char *device_id,
                           EVP_PKEY *recipient, const int *indices, int nindices, bool force,
                           bool family_only, const cert_request *identity, json_t **out,
                           qbuf **plaintext, qk_err *e)
{
    struct fill_tx *t = NULL;
    qbuf *tls = NULL;
    json_t *cert = NULL;
    qk_kind k;
    db_status st;

    qk_clear(e);
    *out = NULL;
    if (plaintext)
        *plaintext = NULL;
    if (!recipient && !plaintext)
        return qk_fail(e, QK_INTERNAL, "internal", "no plaintext buffer");
    if (!recipient && (k = device_fill_may_plaintext(who, e)) != QK_OK)
        return k;
    if (identity && !recipient)
        return qk_fail(e, QK_INVALID, "invalid_request",
                       "a certificate's key pair is delivered sealed only: give recipient_pub");
    if (!(t = calloc(1, sizeof(*t))))
        return qk_fail(e, QK_INTERNAL, "internal", "out of memory");
    if (family_only && (nindices > 0 || identity)) {
        free(t);
        return qk_fail(e, QK_INVALID, "invalid_request",
                       "family_only exports the family's keys alone: no indices, no certificate");
    }
    *t = (struct fill_tx){.s = s, .actor = who->name, .device_id = device_id, .indices = indices,
                          .nindices = nindices, .force = force, .family_only = family_only,
                          .recipient = recipient, .e = e};
    if (recipient && fillpkg_fingerprint(recipient, t->fingerprint) != 0) {
        k = qk_fail(e, QK_INVALID, "invalid_recipient_key", "cannot encode the recipient key");
        goto out;
    }
    if (!(t->gkeys = OPENSSL_secure_zalloc(FIRMWARE_GROUP_ENTRY * FIRMWARE_GROUP_MAX_KEYS))) {
        k = qk_fail(e, QK_INTERNAL, "internal", "out of secure memory");
        goto out;
    }
    /* The identity first (it is recorded); undone if the fill fails. */
    if (identity && (k = certs_identity(s, who, identity, &tls, &cert, e)) != QK_OK)
        goto out;
    t->tls = tls;
    if ((st = db_tx(s->db, fill_tx_fn, t)) != DB_OK) {
        k = e->kind != QK_OK ? e->kind : db_fail(e, st);
        if (cert)
            certs_identity_undo(s, who, cert);
        goto out;
    }
    qk_clear(e);
    if (recipient) {
        if ((k = sealed_answer(t, out, e)) != QK_OK)
            goto out;
        if (cert)
            json_object_set(*out, "certificate", cert);
    } else {
        *out = json_pack("{s:s,s:s,s:O}", "device_id", device_id, "format", "qkms-fill/1",
                         "indices", t->exported);
        *plaintext = t->doc;
        t->doc = NULL;
    }
    log_with(&who->log, LOG_INFO, "device keys exported", "{s:s,s:s,s:i,s:b,s:s}", "device_id",
             device_id, "mode", recipient ? "sealed" : "plaintext", "keys", t->nchosen, "forced",
             force, "by", who->name);
    k = QK_OK;
out:
    reset_fill_outputs(t);
    if (t->gkeys)
        OPENSSL_secure_clear_free(t->gkeys, FIRMWARE_GROUP_ENTRY * FIRMWARE_GROUP_MAX_KEYS);
    free(t);
    qbuf_free(tls); /* wipes the private key */
    json_decref(cert);
    return k;
}
