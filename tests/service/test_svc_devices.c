/*
 * Service tests of the device registry (devices.h), its keys
 * (device_keys.h) and the fill export (device_fill.h), against the service
 * as kmsd builds it, without HTTP: one test per operation, with the error
 * paths each can reach.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "fillpkg.h"
#include "fixture.h"
#include "hexutil.h"
#include "service/auth.h"
#include "service/device_fill.h"
#include "service/device_keys.h"
#include "service/devices.h"

static qk_principal admin;

static int setup(void **state)
{
    (void)state;
    admin = fixture_admin("svc-devices");
    return fixture_open(&fx);
}

/* ---- helpers ---------------------------------------------------------------- */

static void spec_of(device_reg *row, const char *id, const char *type, const char *group,
                    const char *parent, int nkeys, int bits)
{
    memset(row, 0, sizeof(*row));
    snprintf(row->spec.device_id, sizeof(row->spec.device_id), "%s", id);
    snprintf(row->spec.type, sizeof(row->spec.type), "%s", type);
    snprintf(row->spec.group, sizeof(row->spec.group), "%s", group);
    snprintf(row->spec.parent, sizeof(row->spec.parent), "%s", parent ? parent : "");
    row->spec.nkeys = nkeys;
    row->spec.key_bits = bits;
    row->spec.validity_days = 365;
}

/* Register one device (asserting it was created); its ID into id. */
static void make_device(char *id, size_t len, const char *group, int nkeys, int bits)
{
    device_reg row;
    qk_err e;
    fixture_unique(id, len, "svc-dev");
    spec_of(&row, id, "vehicle", group, NULL, nkeys, bits);
    assert_int_equal(devices_register(&fx.svc, &admin, &row, 1, &e), QK_OK);
    assert_true(row.created);
    assert_int_equal(devices_row_err(&row, &e), QK_OK);
}

static json_t *get(const char *id, bool with_kcv)
{
    json_t *rec = NULL;
    qk_err e;
    assert_int_equal(devices_get(&fx.svc, id, true, with_kcv, &rec, &e), QK_OK);
    assert_non_null(rec);
    return rec;
}

static const char *state_of(json_t *rec)
{
    return json_string_value(json_object_get(rec, "state"));
}

static json_t *key_at(json_t *rec, size_t i)
{
    return json_array_get(json_object_get(rec, "keys"), i);
}

/* How many audit rows of event there are for device id. */
static long audit_rows(const char *event, const char *id)
{
    const char *vals[2] = {event, id};
    db_status st;
    db_conn *c = db_acquire(fx.svc.db, &st);
    PGresult *r;
    long n;
    assert_non_null(c);
    r = db_exec_params(c, "SELECT count(*) FROM audit_log WHERE event = $1 AND device_id = $2", 2,
                       vals, &st);
    assert_non_null(r);
    n = atol(PQgetvalue(r, 0, 0));
    PQclear(r);
    db_release(fx.svc.db, c);
    return n;
}

/* ---- registry --------------------------------------------------------------- */

static void register_one(void **state)
{
    char id[96];
    json_t *rec;
    (void)state;
    make_device(id, sizeof(id), "svc-grp", 2, 256);
    rec = get(id, false);
    assert_string_equal(state_of(rec), "active");
    assert_string_equal(json_string_value(json_object_get(rec, "type")), "vehicle");
    assert_int_equal(json_array_size(json_object_get(rec, "keys")), 2);
    assert_string_equal(json_string_value(json_object_get(key_at(rec, 1), "algorithm")), "AES-256");
    assert_null(json_object_get(key_at(rec, 0), "kcv"));
    json_decref(rec);
    assert_int_equal(audit_rows("device.registered", id), 1);
}

static void register_batch(void **state)
{
    char gw[96], sub[96], plain[96], old[96];
    device_reg rows[5];
    qk_err e;
    (void)state;
    make_device(old, sizeof(old), "svc-grp", 1, 128);
    fixture_unique(gw, sizeof(gw), "svc-gw");
    fixture_unique(sub, sizeof(sub), "svc-sub");
    fixture_unique(plain, sizeof(plain), "svc-plain");
    /* A subdevice under a gateway earlier in the same batch (the gateway
     * goes in first, its subdevices in a second pass). */
    spec_of(&rows[0], gw, "gateway", "svc-grp", NULL, 2, 128);
    spec_of(&rows[1], sub, "subdevice", "svc-grp", gw, 1, 128);
    spec_of(&rows[2], plain, "vehicle", "svc-grp", NULL, 1, 128);
    spec_of(&rows[3], plain, "no-such-type", "svc-grp", NULL, 1, 128);
    spec_of(&rows[4], old, "vehicle", "svc-grp", NULL, 1, 128);
    assert_int_equal(devices_register(&fx.svc, &admin, rows, 5, &e), QK_OK);
    assert_true(rows[0].created);
    assert_true(rows[1].created);
    assert_true(rows[2].created);
    assert_false(rows[3].created);
    assert_int_equal(devices_row_err(&rows[3], &e), QK_INVALID);
    assert_string_equal(e.code, "invalid_type");
    assert_false(rows[4].created);
    assert_int_equal(devices_row_err(&rows[4], &e), QK_CONFLICT);
    assert_string_equal(e.code, "conflict");
    assert_non_null(strstr(e.detail, "already registered"));
    {
        json_t *rec = get(sub, false);
        assert_string_equal(json_string_value(json_object_get(rec, "parent")), gw);
        json_decref(rec);
    }
}

static void register_refusals(void **state)
{
    char id[96], other[96];
    device_reg rows[3];
    qk_err e;
    (void)state;
    fixture_unique(id, sizeof(id), "svc-ref");
    fixture_unique(other, sizeof(other), "svc-ref2");
    spec_of(&rows[0], id, "vehicle", "svc-grp", NULL, 1, 128);
    spec_of(&rows[1], id, "vehicle", "svc-grp", NULL, 1, 128);      /* twice in the batch */
    spec_of(&rows[2], other, "vehicle", "svc-grp", "nobody", 1, 128); /* parent on a vehicle */
    assert_int_equal(devices_register(&fx.svc, &admin, rows, 3, &e), QK_OK);
    assert_true(rows[0].created);
    assert_int_equal(devices_row_err(&rows[1], &e), QK_CONFLICT);
    assert_non_null(strstr(e.detail, "twice"));
    assert_int_equal(devices_row_err(&rows[2], &e), QK_INVALID);
    assert_string_equal(e.code, "invalid_parent");
    /* A subdevice under an unknown parent. */
    fixture_unique(other, sizeof(other), "svc-orphan");
    spec_of(&rows[0], other, "subdevice", "svc-grp", "no-such-gateway", 1, 128);
    assert_int_equal(devices_register(&fx.svc, &admin, rows, 1, &e), QK_OK);
    assert_int_equal(devices_row_err(&rows[0], &e), QK_INVALID);
    assert_string_equal(e.code, "invalid_parent");
}

static void get_with_kcv(void **state)
{
    char id[96];
    json_t *rec;
    qk_err e;
    (void)state;
    make_device(id, sizeof(id), "svc-grp", 2, 128);
    rec = get(id, true);
    for (size_t i = 0; i < 2; i++) {
        const char *kcv = json_string_value(json_object_get(key_at(rec, i), "kcv"));
        assert_non_null(kcv);
        assert_int_equal(strlen(kcv), 10);
    }
    json_decref(rec);
    /* Without keys: the record only. */
    assert_int_equal(devices_get(&fx.svc, id, false, false, &rec, &e), QK_OK);
    assert_null(json_object_get(rec, "keys"));
    json_decref(rec);
}

static void get_not_found(void **state)
{
    json_t *rec = (json_t *)1;
    qk_err e;
    (void)state;
    assert_int_equal(devices_get(&fx.svc, "svc-no-such-device", true, false, &rec, &e),
                     QK_NOT_FOUND);
    assert_string_equal(e.code, "not_found");
    assert_null(rec);
}

static void list_with_filters(void **state)
{
    char group[64], a[96], b[96];
    device_filter f = {NULL, NULL, NULL, NULL, -1, 100, NULL, NULL, -1, NULL};
    json_t *out, *devs;
    qk_err e;
    (void)state;
    fixture_unique(group, sizeof(group), "g");
    make_device(a, sizeof(a), group, 1, 128);
    make_device(b, sizeof(b), group, 1, 128);
    f.group = group;
    assert_int_equal(devices_list(&fx.svc, &f, &out, &e), QK_OK);
    devs = json_object_get(out, "devices");
    assert_int_equal(json_array_size(devs), 2);
    assert_string_equal(json_string_value(json_object_get(json_array_get(devs, 0), "device_id")), a);
    assert_int_equal(json_integer_value(json_object_get(json_array_get(devs, 0), "active_keys")), 1);
    assert_true(json_is_null(json_object_get(out, "next")));
    json_decref(out);
    /* A page of one says where the next starts; after= continues there. */
    f.limit = 1;
    assert_int_equal(devices_list(&fx.svc, &f, &out, &e), QK_OK);
    assert_string_equal(json_string_value(json_object_get(out, "next")), a);
    json_decref(out);
    f.after = a;
    assert_int_equal(devices_list(&fx.svc, &f, &out, &e), QK_OK);
    devs = json_object_get(out, "devices");
    assert_string_equal(json_string_value(json_object_get(json_array_get(devs, 0), "device_id")), b);
    json_decref(out);
    /* Type, state and expiry filters. */
    f = (device_filter){"gateway", group, NULL, NULL, -1, 100, NULL, NULL, -1, NULL};
    assert_int_equal(devices_list(&fx.svc, &f, &out, &e), QK_OK);
    assert_int_equal(json_array_size(json_object_get(out, "devices")), 0);
    json_decref(out);
    f = (device_filter){NULL, group, "suspended", NULL, -1, 100, NULL, NULL, -1, NULL};
    assert_int_equal(devices_list(&fx.svc, &f, &out, &e), QK_OK);
    assert_int_equal(json_array_size(json_object_get(out, "devices")), 0);
    json_decref(out);
    f = (device_filter){NULL, group, NULL, NULL, 400, 100, NULL, NULL, -1, NULL};
    assert_int_equal(devices_list(&fx.svc, &f, &out, &e), QK_OK);
    assert_int_equal(json_array_size(json_object_get(out, "devices")), 2);
    json_decref(out);
    /* First contact: never heard from (the service writes no contact for
     * admin calls), and a seen_since the calendar refuses. */
    f = (device_filter){NULL, group, NULL, NULL, -1, 100, NULL, NULL, 1, NULL};
    assert_int_equal(devices_list(&fx.svc, &f, &out, &e), QK_OK);
    assert_int_equal(json_array_size(json_object_get(out, "devices")), 2);
    json_decref(out);
    f = (device_filter){NULL, group, NULL, NULL, -1, 100, NULL, NULL, 0, NULL};
    assert_int_equal(devices_list(&fx.svc, &f, &out, &e), QK_OK);
    assert_int_equal(json_array_size(json_object_get(out, "devices")), 0);
    json_decref(out);
    f = (device_filter){NULL, group, NULL, NULL, -1, 100, NULL, NULL, -1, "2026-02-30"};
    assert_int_equal(devices_list(&fx.svc, &f, &out, &e), QK_MALFORMED);
    assert_string_equal(e.code, "invalid_query");
}

/* ---- lifecycle -------------------------------------------------------------- */

static void expect_state(const char *id, const char *want)
{
    json_t *rec = get(id, false);
    assert_string_equal(state_of(rec), want);
    json_decref(rec);
}

static void suspend_resume_revoke(void **state)
{
    char id[96];
    json_t *rec;
    qk_err e;
    (void)state;
    make_device(id, sizeof(id), "svc-grp", 2, 128);
    assert_int_equal(devices_set_state(&fx.svc, &admin, id, DEVICE_RESUME, &e), QK_CONFLICT);
    assert_string_equal(e.code, "invalid_state");
    assert_int_equal(devices_set_state(&fx.svc, &admin, id, DEVICE_SUSPEND, &e), QK_OK);
    expect_state(id, "suspended");
    assert_int_equal(devices_set_state(&fx.svc, &admin, id, DEVICE_SUSPEND, &e), QK_CONFLICT);
    assert_string_equal(e.code, "invalid_state");
    assert_int_equal(devices_set_state(&fx.svc, &admin, id, DEVICE_RESUME, &e), QK_OK);
    expect_state(id, "active");
    assert_int_equal(devices_set_state(&fx.svc, &admin, id, DEVICE_REVOKE, &e), QK_OK);
    rec = get(id, false);
    assert_string_equal(state_of(rec), "revoked");
    /* Revocation destroys the key material. */
    for (size_t i = 0; i < 2; i++) {
        assert_string_equal(json_string_value(json_object_get(key_at(rec, i), "state")),
                            "destroyed");
        assert_true(json_is_null(json_object_get(key_at(rec, i), "master_version")));
    }
    json_decref(rec);
    assert_int_equal(devices_set_state(&fx.svc, &admin, id, DEVICE_REVOKE, &e), QK_CONFLICT);
    assert_int_equal(devices_set_state(&fx.svc, &admin, id, DEVICE_RESUME, &e), QK_CONFLICT);
    assert_int_equal(audit_rows("device.suspended", id), 1);
    assert_int_equal(audit_rows("device.revoked", id), 1);
    assert_int_equal(devices_set_state(&fx.svc, &admin, "svc-no-such-device", DEVICE_SUSPEND, &e),
                     QK_NOT_FOUND);
    assert_string_equal(e.code, "not_found");
}

/* ---- keys ------------------------------------------------------------------- */

static void rotate(void **state)
{
    char id[96];
    json_t *rec;
    qk_err e;
    (void)state;
    make_device(id, sizeof(id), "svc-grp", 1, 256);
    /* key_bits 0: as the newest key (256). */
    assert_int_equal(device_keys_rotate(&fx.svc, &admin, id, NULL, 7, 0, 0, &e), QK_OK);
    assert_int_equal(device_keys_rotate(&fx.svc, &admin, id, NULL, 0, 128, 30, &e), QK_OK);
    rec = get(id, false);
    assert_int_equal(json_array_size(json_object_get(rec, "keys")), 3);
    assert_int_equal(json_integer_value(json_object_get(key_at(rec, 1), "index")), 1);
    assert_string_equal(json_string_value(json_object_get(key_at(rec, 1), "algorithm")), "AES-256");
    assert_string_equal(json_string_value(json_object_get(key_at(rec, 2), "algorithm")), "AES-128");
    /* The older keys retire after the grace period. */
    assert_false(json_is_null(json_object_get(key_at(rec, 0), "retire_at")));
    assert_true(json_is_null(json_object_get(key_at(rec, 2), "retire_at")));
    json_decref(rec);
    assert_int_equal(audit_rows("device.rotated", id), 2);
    assert_int_equal(device_keys_rotate(&fx.svc, &admin, "svc-no-such-device", NULL, 7, 0, 0, &e),
                     QK_NOT_FOUND);
    assert_int_equal(devices_set_state(&fx.svc, &admin, id, DEVICE_REVOKE, &e), QK_OK);
    assert_int_equal(device_keys_rotate(&fx.svc, &admin, id, NULL, 7, 0, 0, &e), QK_CONFLICT);
    assert_string_equal(e.code, "invalid_state");
}

static void key_primitives(void **state)
{
    char *hex = NULL, kcv[11], kcv2[11];
    const char *prov = NULL;
    uint8_t *key = OPENSSL_secure_malloc(DEVICE_KEY_BUF);
    size_t kl = 0;
    int mv = 0;
    qk_err e;
    (void)state;
    assert_non_null(key);
    assert_int_equal(device_key_new(&fx.svc, "svc-prim", 3, "AES-256", &hex, &mv, &prov, &e),
                     QK_OK);
    assert_non_null(hex);
    assert_true(mv >= 1);
    assert_non_null(prov);
    assert_int_equal(device_key_unwrap(&fx.svc, "svc-prim", 3, "AES-256", hex, key, &kl, &e),
                     QK_OK);
    assert_int_equal(kl, 32);
    assert_int_equal(device_key_kcv("AES-256", key, kl, kcv), 0);
    assert_int_equal(device_key_kcv("AES-256", key, kl, kcv2), 0);
    assert_string_equal(kcv, kcv2);
    /* Bound to its row: another index, or another algorithm, does not open it. */
    assert_int_not_equal(
        device_key_unwrap(&fx.svc, "svc-prim", 4, "AES-256", hex, key, &kl, &e), QK_OK);
    assert_int_equal(device_key_unwrap(&fx.svc, "svc-prim", 3, "AES-256", "zz", key, &kl, &e),
                     QK_INTERNAL);
    free(hex);
    hex = NULL;
    assert_int_equal(device_key_new(&fx.svc, "svc-prim", 5, "SM4-128", &hex, &mv, &prov, &e),
                     QK_OK);
    assert_int_equal(device_key_unwrap(&fx.svc, "svc-prim", 5, "SM4-128", hex, key, &kl, &e),
                     QK_OK);
    assert_int_equal(kl, 16);
    assert_int_not_equal(
        device_key_unwrap(&fx.svc, "svc-prim", 5, "AES-128", hex, key, &kl, &e), QK_OK);
    assert_int_equal(device_key_len("AES-256"), 32);
    assert_int_equal(device_key_len("SM4-128"), 16);
    assert_true(device_key_alg_valid("SM4-128") && !device_key_alg_valid("SM4-256"));
    free(hex);
    OPENSSL_secure_clear_free(key, DEVICE_KEY_BUF);
}

/* ---- fill export ------------------------------------------------------------ */

/* The KCVs of id's keys, by index. */
static void kcvs_of(const char *id, char out[][11], size_t n)
{
    json_t *rec = get(id, true);
    for (size_t i = 0; i < n; i++)
        snprintf(out[i], 11, "%s", json_string_value(json_object_get(key_at(rec, i), "kcv")));
    json_decref(rec);
}

/* Check a plaintext fill document of id against the keys' KCVs. */
static void check_doc(const char *id, const char *text, size_t len, size_t nkeys)
{
    char kcv[4][11];
    json_error_t je;
    json_t *doc = json_loadb(text, len, 0, &je), *keys;
    assert_non_null(doc);
    kcvs_of(id, kcv, nkeys);
    assert_string_equal(json_string_value(json_object_get(doc, "format")), "qkms-fill/1");
    assert_string_equal(json_string_value(json_object_get(doc, "device_id")), id);
    keys = json_object_get(doc, "keys");
    assert_int_equal(json_array_size(keys), nkeys);
    for (size_t i = 0; i < nkeys; i++) {
        json_t *k = json_array_get(keys, i);
        const char *hex = json_string_value(json_object_get(k, "key"));
        uint8_t raw[32];
        char mine[11];
        long rl = qkms_hex_decode(hex, strlen(hex), raw, sizeof(raw));
        assert_int_equal(rl, 16);
        assert_int_equal(device_key_kcv("AES-128", raw, (size_t)rl, mine), 0);
        assert_string_equal(mine, kcv[i]);
        assert_string_equal(json_string_value(json_object_get(k, "kcv")), kcv[i]);
        OPENSSL_cleanse(raw, sizeof(raw));
    }
    json_decref(doc);
}

static void fill_plaintext(void **state)
{
    char id[96];
    qbuf *doc = NULL;
    json_t *out = NULL;
    qk_err e;
    (void)state;
    make_device(id, sizeof(id), "svc-grp", 2, 128);
    assert_int_equal(device_fill_export(&fx.svc, &admin, id, NULL, NULL, 0, false, false, NULL, &out, &doc, &e),
                     QK_OK);
    assert_non_null(doc);
    assert_int_equal(json_array_size(json_object_get(out, "indices")), 2);
    assert_null(json_object_get(out, "package"));
    check_doc(id, qbuf_str(doc), qbuf_len(doc), 2);
    qbuf_free(doc);
    json_decref(out);
    assert_int_equal(audit_rows("device.fill_exported", id), 1);
    /* Once exported, the keys go out again only with force. */
    assert_int_equal(device_fill_export(&fx.svc, &admin, id, NULL, NULL, 0, false, false, NULL, &out, &doc, &e),
                     QK_CONFLICT);
    assert_string_equal(e.code, "already_exported");
    assert_null(doc);
    assert_null(out);
    assert_int_equal(device_fill_export(&fx.svc, &admin, id, NULL, (const int[]){1}, 1, true, false, NULL, &out,
                                        &doc, &e),
                     QK_OK);
    assert_int_equal(json_integer_value(json_array_get(json_object_get(out, "indices"), 0)), 1);
    qbuf_free(doc);
    json_decref(out);
}

static void fill_sealed(void **state)
{
    char id[96], why[160];
    EVP_PKEY *priv = EVP_PKEY_Q_keygen(NULL, NULL, "X25519");
    json_t *out = NULL;
    uint8_t pkg[4096], *pt = NULL;
    size_t pt_len = 0;
    int pl;
    const char *b64;
    qk_err e;
    (void)state;
    assert_non_null(priv);
    make_device(id, sizeof(id), "svc-grp", 2, 128);
    assert_int_equal(device_fill_export(&fx.svc, &admin, id, priv, NULL, 0, false, false, NULL, &out, NULL, &e),
                     QK_OK);
    assert_string_equal(json_string_value(json_object_get(out, "format")), "qkms-fill/1");
    assert_int_equal(strlen(json_string_value(json_object_get(out, "recipient_fingerprint"))), 64);
    b64 = json_string_value(json_object_get(out, "package"));
    assert_non_null(b64);
    pl = EVP_DecodeBlock(pkg, (const unsigned char *)b64, (int)strlen(b64));
    assert_true(pl > 0);
    /* EVP_DecodeBlock counts the padding as zero bytes: drop them. */
    pl -= (int)(strlen(b64) > 0 && b64[strlen(b64) - 1] == '=') +
          (int)(strlen(b64) > 1 && b64[strlen(b64) - 2] == '=');
    assert_int_equal(fillpkg_open(priv, pkg, (size_t)pl, &pt, &pt_len, why, sizeof(why)), 0);
    check_doc(id, (const char *)pt, pt_len, 2);
    OPENSSL_secure_clear_free(pt, pt_len);
    json_decref(out);
    EVP_PKEY_free(priv);
}

static void fill_refusals(void **state)
{
    char id[96];
    qk_principal operator = fixture_admin("svc-operator");
    json_t *out = NULL;
    qbuf *doc = NULL;
    qk_err e;
    (void)state;
    operator.roles = ROLE_OPERATOR;
    make_device(id, sizeof(id), "svc-grp", 1, 128);
    assert_int_equal(device_fill_may_plaintext(&operator, &e), QK_FORBIDDEN);
    assert_int_equal(device_fill_may_plaintext(&admin, &e), QK_OK);
    assert_int_equal(device_fill_export(&fx.svc, &operator, id, NULL, NULL, 0, false, false, NULL, &out,
                                        &doc, &e),
                     QK_FORBIDDEN);
    assert_string_equal(e.code, "forbidden");
    assert_int_equal(device_fill_export(&fx.svc, &admin, "svc-no-such-device", NULL, NULL, 0, false, false,
                                        NULL, &out, &doc, &e),
                     QK_NOT_FOUND);
    assert_int_equal(device_fill_export(&fx.svc, &admin, id, NULL, (const int[]){5}, 1, false, false, NULL,
                                        &out, &doc, &e),
                     QK_INVALID);
    assert_string_equal(e.code, "no_exportable_keys");
    assert_int_equal(devices_set_state(&fx.svc, &admin, id, DEVICE_SUSPEND, &e), QK_OK);
    assert_int_equal(device_fill_export(&fx.svc, &admin, id, NULL, NULL, 0, false, false, NULL, &out, &doc, &e),
                     QK_CONFLICT);
    assert_string_equal(e.code, "invalid_state");
    assert_null(out);
    assert_null(doc);
    /* Nothing was marked exported by the refusals. */
    assert_int_equal(audit_rows("device.fill_exported", id), 0);
}

/* ---- device types ----------------------------------------------------------- */

static void device_types(void **state)
{
    char name[64];
    json_t *out = NULL, *v;
    bool known = false, found = false;
    size_t i;
    qk_err e;
    (void)state;
    fixture_unique(name, sizeof(name), "t");
    assert_int_equal(device_types_has(&fx.svc, name, &known, &e), QK_OK);
    assert_false(known);
    const char *tpl[2] = {"local", "access"}, *bad[1] = {"wan"};
    assert_int_equal(device_types_add(&fx.svc, &admin, name, bad, 1, 0, NULL, &e), QK_INVALID);
    assert_string_equal(e.code, "invalid_key_purposes");
    assert_int_equal(device_types_add(&fx.svc, &admin, name, tpl, 2, 0, NULL, &e), QK_OK);
    assert_int_equal(device_types_has(&fx.svc, name, &known, &e), QK_OK);
    assert_true(known);
    assert_int_equal(device_types_list(&fx.svc, &out, &e), QK_OK);
    json_array_foreach(json_object_get(out, "types"), i, v) found =
        found || !strcmp(json_string_value(v), name);
    assert_true(found);
    v = json_object_get(json_object_get(out, "key_purposes"), name);
    assert_int_equal(json_array_size(v), 2);
    assert_string_equal(json_string_value(json_array_get(v, 0)), "local");
    v = json_object_get(json_object_get(out, "key_purposes"), "gateway");
    assert_string_equal(json_string_value(json_array_get(v, 0)), "access");
    assert_string_equal(json_string_value(json_array_get(v, 1)), "local");
    json_decref(out);
    assert_int_equal(device_types_add(&fx.svc, &admin, name, NULL, 0, 0, NULL, &e), QK_CONFLICT);
    assert_string_equal(e.code, "conflict");
    assert_int_equal(device_types_add(&fx.svc, &admin, "vehicle", NULL, 0, 0, NULL, &e),
                     QK_CONFLICT);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(register_one),      cmocka_unit_test(register_batch),
        cmocka_unit_test(register_refusals), cmocka_unit_test(get_with_kcv),
        cmocka_unit_test(get_not_found),     cmocka_unit_test(list_with_filters),
        cmocka_unit_test(suspend_resume_revoke), cmocka_unit_test(rotate),
        cmocka_unit_test(key_primitives),    cmocka_unit_test(fill_plaintext),
        cmocka_unit_test(fill_sealed),       cmocka_unit_test(fill_refusals),
        cmocka_unit_test(device_types),
    };
    return cmocka_run_group_tests(tests, setup, fixture_teardown);
}
