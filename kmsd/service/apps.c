/*
 * apps — owners' accounts, their devices and binding (apps.h). The bind
 * and the reset are stored functions (schema/021_apps.sql); the
 * verification code is computed here from the gateway's access key.
 */
#include "service/apps.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#include "hexutil.h"
#include "log.h"
#include "qkms_proto.h"
#include "service/audit.h"
#include "service/auth.h"
#include "service/device_keys.h"
#include "service/names.h"
#include "service/session_id.h"
#include "store/pgarray.h"
#include "store/pgjson.h"
#include "store/queries.h"

#define KEY_BUF (KEYWRAP_MAX_KEY + 16)

bool app_name_valid(const char *s) { return name_valid(s, APP_NAME_MAX); }

/* A JSON array of type names (array_to_json) into out; how many. */
static int type_array_parse(const char *text, char out[][DEVICE_TYPE_MAX + 1], int max)
{
    json_t *a = json_loads(text, 0, NULL), *v;
    size_t i;
    int n = 0;
    json_array_foreach(a, i, v) if (n < max && json_is_string(v) &&
                                    json_string_length(v) <= DEVICE_TYPE_MAX)
        snprintf(out[n++], DEVICE_TYPE_MAX + 1, "%s", json_string_value(v));
    json_decref(a);
    return n;
}

qk_kind apps_of_token(qk_svc *s, long long token_id, app_account *out, qk_err *e)
{
    char id[24];
    const char *vals[1] = {id};
    db_status st;
    PGresult *r;

    memset(out, 0, sizeof(*out));
    snprintf(id, sizeof(id), "%lld", token_id);
    if (!(r = db_query(s->db, Q_APP_OF_TOKEN, 1, vals, NULL, NULL, &st)))
        return db_fail(e, st);
    if (PQntuples(r) != 1) {
        PQclear(r);
        return qk_fail(e, QK_UNAUTHENTICATED, "unauthenticated", "the token's app is revoked");
    }
    out->id = atoll(PQgetvalue(r, 0, 0));
    snprintf(out->name, sizeof(out->name), "%s", PQgetvalue(r, 0, 1));
    snprintf(out->actor, sizeof(out->actor), "app/%s", out->name);
    /* text[] as PostgreSQL writes it: the type names need no quoting. */
    out->ntypes = type_array_parse(PQgetvalue(r, 0, 2), out->types, APP_SCOPE_TYPES_MAX);
    snprintf(out->group, sizeof(out->group), "%s", PQgetvalue(r, 0, 3));
    PQclear(r);
    return QK_OK;
}

/* A new token for app name on c: *tok filled. */
static db_status token_insert(qk_svc *s, db_conn *c, const char *actor, const char *name,
                              char tok[AUTH_TOKEN_LEN + 1], qk_err *e)
{
    char tname[72], suffix[7];
    uint8_t hash[32], rnd[3];
    const char *vals[4] = {tname, (const char *)hash, actor, name};
    int lens[4] = {0, 32, 0, 0}, fmts[4] = {0, 1, 0, 0};
    db_status st;
    PGresult *r;

    if (auth_token_new(s->ent, tok) != 0 || RAND_bytes(rnd, sizeof(rnd)) != 1) {
        qk_fail(e, QK_UNAVAILABLE, "entropy_unavailable", "no entropy source available");
        e->retry_after = 1;
        return DB_ERROR;
    }
    qkms_hex_encode(rnd, sizeof(rnd), suffix);
    /* Unique among live tokens: app.NAME.<6 hex> (names.h's rule). */
    snprintf(tname, sizeof(tname), "app.%s.%s", name, suffix);
    auth_token_hash(tok, hash);
    r = db_exec(c, Q_APP_TOKEN_INSERT, 4, vals, lens, fmts, &st);
    OPENSSL_cleanse(hash, sizeof(hash));
    if (!r)
        return st;
    st = PQntuples(r) == 1 ? DB_OK : DB_NOT_FOUND;
    PQclear(r);
    if (st == DB_NOT_FOUND)
        qk_fail(e, QK_NOT_FOUND, "not_found", "no live app '%s'", name);
    return st;
}

struct create_tx {
    qk_svc *s;
    const char *actor, *name, *types_lit, *group;
    bool self;
    json_t *types;
    char tok[AUTH_TOKEN_LEN + 1];
    qk_err *e;
};

static db_status create_tx_fn(db_conn *c, void *arg)
{
    struct create_tx *t = arg;
    const char *vals[5] = {t->name, t->types_lit, t->group, t->self ? "t" : "f", t->actor};
    db_status st;
    PGresult *r;

    qk_clear(t->e);
    if (!(r = db_exec(c, Q_APP_INSERT, 5, vals, NULL, NULL, &st)))
        return st;
    PQclear(r);
    if ((st = token_insert(t->s, c, t->actor, t->name, t->tok, t->e)) != DB_OK)
        return st;
    return audit_append(c, t->actor, "app.created", NULL,
                        json_pack("{s:s,s:O,s:s?,s:b}", "name", t->name, "enroll_types",
                                  t->types, "enroll_group", t->group, "self_registered",
                                  t->self));
}

qk_kind apps_create(qk_svc *s, const qk_principal *who, const char *name,
                    const char *const *types, int ntypes, const char *group, bool self_registered,
                    json_t **out, qk_err *e)
{
    struct create_tx t;
    pgarray lit;
    db_status st;
    qk_kind k;

    *out = NULL;
    memset(&t, 0, sizeof(t));
    t.s = s;
    t.actor = who->name;
    t.name = name;
    t.group = group && *group ? group : NULL;
    t.self = self_registered;
    t.e = e;
    t.types = json_array();
    pgarray_init(&lit);
    for (int i = 0; i < ntypes; i++) {
        pgarray_add(&lit, types[i]);
        json_array_append_new(t.types, json_string(types[i]));
    }
    t.types_lit = pgarray_finish(&lit);
    if (!t.types_lit || !t.types) {
        k = qk_fail(e, QK_INTERNAL, "internal", "out of memory");
        goto out;
    }
    st = db_tx(s->db, create_tx_fn, &t);
    if (st == DB_CONFLICT) {
        k = qk_fail(e, QK_CONFLICT, "conflict", "an app named '%s' exists", name);
        goto out;
    }
    if (st != DB_OK) {
        k = e->kind != QK_OK ? e->kind : db_fail(e, st);
        goto out;
    }
    log_with(&who->log, LOG_INFO, "app created", "{s:s,s:s,s:b}", "name", name, "by", who->name,
             "self_registered", self_registered);
    *out = json_pack("{s:s,s:O,s:s?,s:b,s:s}", "name", name, "enroll_types", t.types,
                     "enroll_group", t.group, "self_registered", self_registered, "token", t.tok);
    k = *out ? QK_OK : qk_fail(e, QK_INTERNAL, "internal", "out of memory");
out:
    OPENSSL_cleanse(t.tok, sizeof(t.tok));
    json_decref(t.types);
    pgarray_free(&lit);
    return k;
}

struct token_tx {
    qk_svc *s;
    const char *actor, *name;
    char tok[AUTH_TOKEN_LEN + 1];
    qk_err *e;
};

static db_status token_tx_fn(db_conn *c, void *arg)
{
    struct token_tx *t = arg;
    db_status st;
    qk_clear(t->e);
    if ((st = token_insert(t->s, c, t->actor, t->name, t->tok, t->e)) != DB_OK)
        return st;
    return audit_append(c, t->actor, "app.token_created", NULL,
                        json_pack("{s:s}", "name", t->name));
}

qk_kind apps_token_new(qk_svc *s, const qk_principal *who, const char *name, json_t **out,
                       qk_err *e)
{
    struct token_tx t;
    db_status st;
    qk_kind k;

    *out = NULL;
    memset(&t, 0, sizeof(t));
    t.s = s;
    t.actor = who->name;
    t.name = name;
    t.e = e;
    st = db_tx(s->db, token_tx_fn, &t);
    if (st != DB_OK) {
        k = e->kind != QK_OK ? e->kind : db_fail(e, st);
    } else {
        log_with(&who->log, LOG_INFO, "app token created", "{s:s,s:s}", "name", name, "by",
                 who->name);
        *out = json_pack("{s:s,s:s}", "name", name, "token", t.tok);
        k = *out ? QK_OK : qk_fail(e, QK_INTERNAL, "internal", "out of memory");
    }
    OPENSSL_cleanse(t.tok, sizeof(t.tok));
    return k;
}

static json_t *text_array(const char *json_text)
{
    json_t *a = json_loads(json_text, 0, NULL);
    return json_is_array(a) ? a : (json_decref(a), json_array());
}

qk_kind apps_list(qk_svc *s, json_t **out, qk_err *e)
{
    db_status st;
    PGresult *r;
    json_t *arr;

    *out = NULL;
    if (!(r = db_query(s->db, Q_APP_LIST, 0, NULL, NULL, NULL, &st)))
        return db_fail(e, st);
    arr = json_array();
    for (int i = 0; i < PQntuples(r); i++)
        json_array_append_new(
            arr, json_pack("{s:o,s:o,s:o,s:b,s:o,s:o,s:o,s:I}", "name", pgjson_text(r, i, 0),
                           "enroll_types", text_array(PQgetvalue(r, i, 1)), "enroll_group",
                           pgjson_text(r, i, 2), "self_registered",
                           !strcmp(PQgetvalue(r, i, 3), "t"), "created_at", pgjson_time(r, i, 4),
                           "created_by", pgjson_text(r, i, 5), "revoked_at",
                           pgjson_time(r, i, 6), "devices",
                           (json_int_t)atoll(PQgetvalue(r, i, 7))));
    PQclear(r);
    *out = json_pack("{s:o}", "apps", arr);
    return QK_OK;
}

struct revoke_tx {
    const char *actor, *name;
    long long unbound;
    qk_err *e;
};

static db_status revoke_tx_fn(db_conn *c, void *arg)
{
    struct revoke_tx *t = arg;
    const char *vals[1] = {t->name};
    db_status st;
    PGresult *r;

    qk_clear(t->e);
    if (!(r = db_exec(c, Q_APP_REVOKE, 1, vals, NULL, NULL, &st)))
        return st;
    if (atoi(PQgetvalue(r, 0, 0)) == 0) {
        PQclear(r);
        qk_fail(t->e, QK_NOT_FOUND, "not_found", "no live app '%s'", t->name);
        return DB_NOT_FOUND;
    }
    t->unbound = atoll(PQgetvalue(r, 0, 1));
    PQclear(r);
    return audit_append(c, t->actor, "app.revoked", NULL,
                        json_pack("{s:s,s:I}", "name", t->name, "unbound",
                                  (json_int_t)t->unbound));
}

qk_kind apps_revoke(qk_svc *s, const qk_principal *who, const char *name, qk_err *e)
{
    struct revoke_tx t = {who->name, name, 0, e};
    db_status st = db_tx(s->db, revoke_tx_fn, &t);
    if (st != DB_OK)
        return e->kind != QK_OK ? e->kind : db_fail(e, st);
    log_with(&who->log, LOG_INFO, "app revoked", "{s:s,s:s,s:I}", "name", name, "by", who->name,
             "unbound", (json_int_t)t.unbound);
    return QK_OK;
}

qk_kind apps_owns(qk_svc *s, const app_account *app, const char *device_id, bool registered,
                  qk_err *e)
{
    char id[24];
    const char *vals[2] = {device_id, id};
    db_status st;
    PGresult *r;
    bool owned;

    snprintf(id, sizeof(id), "%lld", app->id);
    if (!(r = db_query(s->db, Q_APP_OWNS, 2, vals, NULL, NULL, &st)))
        return db_fail(e, st);
    owned = PQntuples(r) > 0;
    PQclear(r);
    if (!owned)
        return qk_fail(e, QK_NOT_FOUND, "not_found", "no such device");
    if (!registered)
        return QK_OK;
    if (!(r = db_query(s->db, Q_APP_OWNS_REGISTERED, 2, vals, NULL, NULL, &st)))
        return db_fail(e, st);
    owned = PQntuples(r) > 0;
    PQclear(r);
    return owned ? QK_OK
                 : qk_fail(e, QK_FORBIDDEN, "out_of_scope",
                           "only a device this app registered gets keys through it (a bound one:"
                           " its operator rotates it)");
}

qk_kind apps_devices(qk_svc *s, const app_account *app, json_t **out, qk_err *e)
{
    char id[24];
    const char *vals[1] = {id};
    db_status st;
    PGresult *r;
    json_t *arr;

    *out = NULL;
    snprintf(id, sizeof(id), "%lld", app->id);
    if (!(r = db_query(s->db, Q_APP_DEVICES, 1, vals, NULL, NULL, &st)))
        return db_fail(e, st);
    arr = json_array();
    for (int i = 0; i < PQntuples(r); i++) {
        json_t *attrs = json_loads(PQgetvalue(r, i, 9), 0, NULL);
        json_array_append_new(
            arr, json_pack("{s:o,s:o,s:o,s:o,s:o,s:o,s:o,s:o,s:o,s:o,s:o,s:o}", "device_id",
                           pgjson_text(r, i, 0), "type", pgjson_text(r, i, 1), "group",
                           pgjson_text(r, i, 2), "parent", pgjson_text(r, i, 3), "state",
                           pgjson_text(r, i, 4), "created_at", pgjson_time(r, i, 5),
                           "updated_at", pgjson_time(r, i, 6), "revoked_at",
                           pgjson_time(r, i, 7), "sae_id", pgjson_text(r, i, 8), "attributes",
                           attrs ? attrs : json_object(), "service_until",
                           pgjson_time(r, i, 10), "owned", pgjson_text(r, i, 11)));
    }
    PQclear(r);
    *out = json_pack("{s:o}", "devices", arr);
    return QK_OK;
}

qk_kind apps_scope_check(qk_svc *s, const app_account *app, device_spec *spec, qk_err *e)
{
    bool type_ok = false;
    if (!app->group[0])
        return qk_fail(e, QK_FORBIDDEN, "out_of_scope",
                       "this app may not register devices (it has no enroller scope)");
    for (int i = 0; i < app->ntypes && !type_ok; i++)
        type_ok = !strcmp(app->types[i], spec->type);
    if (!type_ok)
        return qk_fail(e, QK_FORBIDDEN, "out_of_scope",
                       "this app may not register devices of type '%s'", spec->type);
    if (strcmp(spec->group, "default") && strcmp(spec->group, app->group))
        return qk_fail(e, QK_FORBIDDEN, "out_of_scope",
                       "this app registers into group '%s' only", app->group);
    snprintf(spec->group, sizeof(spec->group), "%s", app->group);
    if (spec->parent[0])
        return apps_owns(s, app, spec->parent, true, e);
    return QK_OK;
}

/* RFC 4648 base32 of the first bits of in (len bytes), n characters. */
static void base32(const uint8_t *in, size_t len, char *out, int n)
{
    static const char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    for (int i = 0; i < n; i++) {
        size_t bit = (size_t)i * 5, byte = bit / 8, shift = bit % 8;
        unsigned v = ((unsigned)(byte < len ? in[byte] : 0) << 8 |
                      (byte + 1 < len ? in[byte + 1] : 0)) >> (11 - shift);
        out[i] = alphabet[v & 31];
    }
    out[n] = 0;
}

qk_kind apps_verification_code(qk_svc *s, const qk_principal *who, const char *device_id,
                               char out[APP_VERIFICATION_CODE_LEN + 1], qk_err *e)
{
    static const char label[] = "qkms/v1/verification-code\n";
    const char *vals[1] = {device_id};
    uint8_t *key = NULL, mac[32], *msg = NULL;
    unsigned int maclen = sizeof(mac);
    char epoch[16];
    size_t klen = 0, ml;
    db_status st;
    PGresult *r;
    qk_kind k;

    out[0] = 0;
    if (!(r = db_query(s->db, Q_DEVICE_ACCESS_KEY, 1, vals, NULL, NULL, &st)))
        return db_fail(e, st);
    if (PQntuples(r) != 1 || PQgetisnull(r, 0, 0)) {
        k = PQntuples(r) != 1
                ? qk_fail(e, QK_NOT_FOUND, "not_found", "no such device")
                : qk_fail(e, QK_CONFLICT, "invalid_state",
                          "device '%s' has no live access key (a gateway's: docs/gateways.md)",
                          device_id);
        PQclear(r);
        return k;
    }
    snprintf(epoch, sizeof(epoch), "\n%s", PQgetvalue(r, 0, 3));
    ml = strlen(label) + strlen(device_id) + strlen(epoch);
    if (!(key = OPENSSL_secure_malloc(KEY_BUF)) || !(msg = malloc(ml))) {
        k = qk_fail(e, QK_INTERNAL, "internal", "out of memory");
        goto out;
    }
    if ((k = device_key_unwrap(s, device_id, atoi(PQgetvalue(r, 0, 0)), PQgetvalue(r, 0, 1),
                               PQgetvalue(r, 0, 2), key, &klen, e)) != QK_OK)
        goto out;
    memcpy(msg, label, strlen(label));
    memcpy(msg + strlen(label), device_id, strlen(device_id));
    memcpy(msg + strlen(label) + strlen(device_id), epoch, strlen(epoch));
    if (!HMAC(EVP_sha256(), key, (int)klen, msg, ml, mac, &maclen)) {
        k = qk_fail(e, QK_INTERNAL, "internal", "internal error (see kmsd log)");
        goto out;
    }
    base32(mac, sizeof(mac), out, APP_VERIFICATION_CODE_LEN);
    if (who) {
        const char *av[4] = {who->name, "device.verification_code_read", device_id, "{}"};
        PGresult *ar = db_query(s->db, Q_AUDIT_APPEND, 4, av, NULL, NULL, &st);
        if (!ar) {
            OPENSSL_cleanse(out, APP_VERIFICATION_CODE_LEN + 1);
            k = db_fail(e, st);
            goto out;
        }
        PQclear(ar);
    }
    k = QK_OK;
out:
    OPENSSL_cleanse(mac, sizeof(mac));
    if (key)
        OPENSSL_secure_clear_free(key, KEY_BUF);
    free(msg);
    PQclear(r);
    return k;
}

qk_kind apps_bind_challenge(qk_svc *s, const app_account *app, const char *device_id,
                            json_t **out, qk_err *e)
{
    char id[37], appid[24], rhex[65], rb64[QKP_B64URL_LEN(32)], ttl[16];
    uint8_t rnd[32];
    const char *vals[5] = {id, appid, rhex, device_id, ttl};
    db_status st;
    PGresult *r;

    *out = NULL;
    if (uuid4_text(id) != 0 || RAND_bytes(rnd, sizeof(rnd)) != 1) {
        qk_fail(e, QK_UNAVAILABLE, "entropy_unavailable", "the RNG failed; retry later");
        e->retry_after = 1;
        return QK_UNAVAILABLE;
    }
    snprintf(appid, sizeof(appid), "%lld", app->id);
    snprintf(ttl, sizeof(ttl), "%d", APP_CHALLENGE_TTL_S);
    qkms_hex_encode(rnd, sizeof(rnd), rhex);
    qkp_b64url_encode(rnd, sizeof(rnd), rb64);
    if (!(r = db_query(s->db, Q_BIND_CHALLENGE, 5, vals, NULL, NULL, &st)))
        return db_fail(e, st);
    if (PQntuples(r) != 1) {
        PQclear(r);
        return qk_fail(e, QK_INTERNAL, "internal", "internal error (see kmsd log)");
    }
    *out = json_pack("{s:s,s:s,s:s,s:I}", "challenge_id", id, "device_id", device_id, "random",
                     rb64, "expires_at", (json_int_t)atoll(PQgetvalue(r, 0, 0)));
    PQclear(r);
    return *out ? QK_OK : qk_fail(e, QK_INTERNAL, "internal", "out of memory");
}

/* base64url(SHA-256("qkms/v1/bind\n" || code || "\n" || random_b64u)). */
static int bind_proof(const char *code, const char *random_b64u, char out[QKP_B64URL_LEN(32)])
{
    static const char label[] = "qkms/v1/bind\n";
    uint8_t d[32];
    unsigned int dl = sizeof(d);
    EVP_MD_CTX *m = EVP_MD_CTX_new();
    int rc = m && EVP_DigestInit_ex(m, EVP_sha256(), NULL) == 1 &&
                     EVP_DigestUpdate(m, label, sizeof(label) - 1) == 1 &&
                     EVP_DigestUpdate(m, code, strlen(code)) == 1 &&
                     EVP_DigestUpdate(m, "\n", 1) == 1 &&
                     EVP_DigestUpdate(m, random_b64u, strlen(random_b64u)) == 1 &&
                     EVP_DigestFinal_ex(m, d, &dl) == 1
                 ? 0
                 : -1;
    EVP_MD_CTX_free(m);
    if (rc == 0)
        qkp_b64url_encode(d, sizeof(d), out);
    return rc;
}

qk_kind apps_bind(qk_svc *s, const app_account *app, const char *challenge_id, const char *proof,
                  json_t **out, qk_err *e)
{
    char appid[24], code[APP_VERIFICATION_CODE_LEN + 1] = "", want[QKP_B64URL_LEN(32)] = "",
                    rb64[QKP_B64URL_LEN(32)], dev[DEVICE_ID_MAX + 1] = "";
    uint8_t rnd[32];
    const char *vals[3] = {appid, challenge_id, "f"};
    bool ok = false;
    db_status st;
    PGresult *r;
    qk_kind k;

    *out = NULL;
    snprintf(appid, sizeof(appid), "%lld", app->id);
    {
        const char *gv[2] = {challenge_id, appid};
        if (!(r = db_query(s->db, Q_BIND_CHALLENGE_GET, 2, gv, NULL, NULL, &st)))
            return db_fail(e, st);
    }
    if (PQntuples(r) == 1 && !PQgetisnull(r, 0, 0) &&
        qkms_hex_decode(PQgetvalue(r, 0, 1), strlen(PQgetvalue(r, 0, 1)), rnd, sizeof(rnd)) ==
            (long)sizeof(rnd)) {
        snprintf(dev, sizeof(dev), "%s", PQgetvalue(r, 0, 0));
        qkp_b64url_encode(rnd, sizeof(rnd), rb64);
        PQclear(r);
        r = NULL;
        if ((k = apps_verification_code(s, NULL, dev, code, e)) != QK_OK &&
            !(k == QK_CONFLICT && !strcmp(e->code, "invalid_state")))
            return k; /* the token or the database: the challenge stays */
        ok = code[0] && bind_proof(code, rb64, want) == 0 && strlen(proof) == strlen(want) &&
             CRYPTO_memcmp(proof, want, strlen(want)) == 0;
    }
    PQclear(r);
    OPENSSL_cleanse(code, sizeof(code));
    OPENSSL_cleanse(want, sizeof(want));
    qk_clear(e);
    vals[2] = ok ? "t" : "f";
    if (!(r = db_query(s->db, Q_APP_BIND, 3, vals, NULL, NULL, &st)))
        return db_fail(e, st);
    if (!strcmp(PQgetvalue(r, 0, 0), "bound")) {
        log_emit(LOG_INFO, "device bound", "{s:s,s:s}", "device_id", PQgetvalue(r, 0, 1), "app",
                 app->name);
        *out = json_pack("{s:s,s:b}", "device_id", PQgetvalue(r, 0, 1), "bound", 1);
        k = *out ? QK_OK : qk_fail(e, QK_INTERNAL, "internal", "out of memory");
    } else if (!strcmp(PQgetvalue(r, 0, 0), "already_bound")) {
        k = qk_fail(e, QK_CONFLICT, "already_bound", "another owner has bound this device");
    } else {
        log_emit(LOG_WARN, "bind refused", "{s:s,s:s}", "app", app->name, "challenge_id",
                 challenge_id);
        k = qk_fail(e, QK_UNAUTHENTICATED, "bind_failed",
                    "the proof does not match, or the challenge is unknown, used or expired");
    }
    PQclear(r);
    return k;
}
