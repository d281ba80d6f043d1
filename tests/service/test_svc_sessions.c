/*
 * Service tests of the session service (service/sessions.h) and device
 * authentication (service/device_auth.h), without HTTP: real device
 * requests (sealed under device keys as a device seals them) are opened by
 * device_auth_open and answered by sessions_issue / sessions_end; the
 * operator's view is read through sessions_list / sessions_get and ended
 * through sessions_end_by_operator; sessions_reap destroys expired ones.
 *
 * Each run registers its own devices in its own groups, with a pairing
 * policy per group, so runs against one database do not meet.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <openssl/crypto.h>
#include <openssl/rand.h>

#include "err.h"
#include "fixture.h"
#include "hexutil.h"
#include "qkms_proto.h"
#include "service/device_auth.h"
#include "service/device_model.h"
#include "service/devices.h"
#include "service/keycache.h"
#include "service/session_metrics.h"
#include "service/sessions.h"
#include "store/queries.h"

/* A, B, C in group g (policy: any two devices of g); D, E in group gq,
 * whose policy lets sessions idle 1 s (the reap test). */
static char dev_a[64], dev_b[64], dev_c[64], dev_d[64], dev_e[64];
static char grp[64], grp_quick[64];

/* ---- set-up ----------------------------------------------------------------- */

/* Register one device with two 128-bit keys through the devices service. */
static void register_device(const char *id, const char *group)
{
    qk_principal who = fixture_admin("service-test");
    device_reg row;
    qk_err e;
    memset(&row, 0, sizeof(row));
    snprintf(row.spec.device_id, sizeof(row.spec.device_id), "%s", id);
    snprintf(row.spec.type, sizeof(row.spec.type), "generic");
    snprintf(row.spec.group, sizeof(row.spec.group), "%s", group);
    row.spec.nkeys = 2;
    row.spec.key_bits = 128;
    row.spec.validity_days = 30;
    if (devices_register(&fx.svc, &who, &row, 1, &e) != QK_OK ||
        devices_row_err(&row, &e) != QK_OK || !row.created)
        fail_msg("registering %s: %s %s", id, e.code ? e.code : "", e.detail);
}

/* A same-group pairing policy for group (no HTTP door for it in the
 * service yet: the statement the admin API runs). */
static void add_policy(const char *group, const char *idle_s)
{
    char name[64];
    const char *vals[18] = {name,   "*",    "*",       group,          group,     "128",
                            idle_s, "3600", "session", "service-test", "{a,b,c}", "false",
                            "1",    "false", "60",     NULL,           NULL,      "16"};
    db_status st;
    PGresult *r;
    fixture_unique(name, sizeof(name), "pol");
    r = db_query(fx.svc.db, Q_POLICY_INSERT, 18, vals, NULL, NULL, &st);
    if (!r)
        fail_msg("policy for %s: %s", group, db_status_name(st));
    PQclear(r);
}

static int setup(void **state)
{
    (void)state;
    fixture_open(&fx);
    fixture_unique(grp, sizeof(grp), "g");
    fixture_unique(grp_quick, sizeof(grp_quick), "gq");
    fixture_unique(dev_a, sizeof(dev_a), "A");
    fixture_unique(dev_b, sizeof(dev_b), "B");
    fixture_unique(dev_c, sizeof(dev_c), "C");
    fixture_unique(dev_d, sizeof(dev_d), "D");
    fixture_unique(dev_e, sizeof(dev_e), "E");
    register_device(dev_a, grp);
    register_device(dev_b, grp);
    register_device(dev_c, grp);
    register_device(dev_d, grp_quick);
    register_device(dev_e, grp_quick);
    add_policy(grp, "300");
    add_policy(grp_quick, "1");
    return 0;
}

/* ---- a device ----------------------------------------------------------------- */

/* The device's key index idx as the device holds it (unwrapped from its
 * row, as a fill would hand it over). */
static size_t device_key(const char *id, int idx, uint8_t key[KEYWRAP_MAX_KEY + 16])
{
    char sidx[8], ctx[256];
    const char *vals[2] = {id, sidx};
    uint8_t blob[KEYCACHE_WRAPPED_MAX];
    size_t kl = KEYWRAP_MAX_KEY + 16;
    db_status st;
    PGresult *r;
    long bl;

    snprintf(sidx, sizeof(sidx), "%d", idx);
    r = db_query(fx.svc.db, Q_DEVKEY_FOR_AUTH, 2, vals, NULL, NULL, &st);
    assert_non_null(r);
    assert_int_equal(PQntuples(r), 1);
    bl = qkms_hex_decode(PQgetvalue(r, 0, 3), strlen(PQgetvalue(r, 0, 3)), blob, sizeof(blob));
    PQclear(r);
    assert_true(bl > 0);
    device_key_context(id, idx, "AES-128", ctx, sizeof(ctx));
    assert_int_equal(keywrap_unwrap(fx.svc.kw, (const uint8_t *)ctx, strlen(ctx), blob,
                                    (size_t)bl, key, &kl),
                     CKR_OK);
    return kl;
}

/* A sealed request of device id (key index 0) for op with inner body pt:
 * the fields of an envelope, into rq (ct: caller's buffer). */
static void seal_request(const char *op, const char *id, const char *pt, uint8_t nonce[12],
                         uint8_t *ct, device_request *rq)
{
    uint8_t key[KEYWRAP_MAX_KEY + 16];
    char aad[QKP_MAX_AAD];
    size_t kl = device_key(id, 0, key);
    int aad_len = qkp_request_aad(op, id, 0, aad, sizeof(aad));

    assert_true(aad_len > 0);
    assert_int_equal(RAND_bytes(nonce, QKP_NONCE_LEN), 1);
    assert_int_equal(qkp_seal(key, kl, nonce, aad, (size_t)aad_len, (const uint8_t *)pt,
                              strlen(pt), ct),
                     0);
    OPENSSL_cleanse(key, sizeof(key));
    memset(rq, 0, sizeof(*rq));
    rq->op = op;
    rq->device_id = id;
    rq->key_index = 0;
    rq->nonce = nonce;
    rq->ct = ct;
    rq->ct_len = strlen(pt) + QKP_TAG_LEN;
}

static qk_principal device_of(const device_auth *a)
{
    return fixture_device(a->device_id);
}

/* Device id asks for the key of session sid with peer: the service's answer. */
static qk_kind ask_key(const char *id, const char *sid, const char *peer, session_grant *g,
                       qk_err *e)
{
    char pt[512];
    uint8_t nonce[QKP_NONCE_LEN], ct[sizeof(pt) + QKP_TAG_LEN];
    int64_t now = (int64_t)time(NULL);
    session_ask ask = {.session_id = sid, .peer_id = peer, .ts = now};
    device_request rq;
    device_auth a;
    /* Before authentication the request has a context but no principal. */
    qk_principal req = fixture_device(NULL), who;
    qk_kind k;

    snprintf(pt, sizeof(pt), "{\"session_id\":\"%s\",\"peer_id\":\"%s\",\"ts\":%lld}", sid, peer,
             (long long)now);
    seal_request("key", id, pt, nonce, ct, &rq);
    memset(g, 0, sizeof(*g));
    k = device_auth_open(&fx.svc, &req.log, &rq, &a, e);
    if (k != QK_OK)
        return k;
    who = device_of(&a);
    k = sessions_issue(&fx.svc, &who, &a, &ask, g, e);
    device_auth_clear(&a);
    return k;
}

/* Device id ends session sid. */
static qk_kind end_session(const char *id, const char *sid, qk_err *e)
{
    char pt[256];
    uint8_t nonce[QKP_NONCE_LEN], ct[sizeof(pt) + QKP_TAG_LEN];
    int64_t now = (int64_t)time(NULL);
    device_request rq;
    device_auth a;
    /* Before authentication the request has a context but no principal. */
    qk_principal req = fixture_device(NULL), who;
    qk_kind k;

    snprintf(pt, sizeof(pt), "{\"session_id\":\"%s\",\"ts\":%lld}", sid, (long long)now);
    seal_request("end", id, pt, nonce, ct, &rq);
    k = device_auth_open(&fx.svc, &req.log, &rq, &a, e);
    if (k != QK_OK)
        return k;
    who = device_of(&a);
    k = sessions_end(&fx.svc, &who, &a, sid, now, e);
    device_auth_clear(&a);
    return k;
}

static void assert_fails(qk_kind got, const qk_err *e, qk_kind kind, const char *code)
{
    assert_int_equal(got, kind);
    assert_int_equal(e->kind, kind);
    assert_string_equal(e->code, code);
}

/* ---- device authentication ------------------------------------------------------ */

static void auth_opens_a_sealed_request(void **state)
{
    const char *pt = "{\"hello\":1}";
    uint8_t nonce[QKP_NONCE_LEN], ct[64];
    device_request rq;
    device_auth a;
    qk_err e;
    (void)state;

    seal_request("key", dev_a, pt, nonce, ct, &rq);
    assert_int_equal(device_auth_open(&fx.svc, NULL, &rq, &a, &e), QK_OK);
    assert_string_equal(a.device_id, dev_a);
    assert_int_equal(a.inner_len, strlen(pt));
    assert_memory_equal(a.inner, pt, strlen(pt));
    assert_memory_equal(a.nonce, nonce, QKP_NONCE_LEN);
    assert_non_null(a.key);
    device_auth_clear(&a);
    assert_null(a.key);
    assert_null(a.inner);
}

static void auth_refuses_what_does_not_open(void **state)
{
    uint8_t nonce[QKP_NONCE_LEN], ct[64];
    uint64_t before = session_metrics_refusals(fx.svc.smetrics, SESSION_REFUSE_AUTH);
    device_request rq;
    device_auth a;
    qk_err e;
    (void)state;

    /* Sealed for "key", presented as "end": the AAD binds the operation. */
    seal_request("key", dev_a, "{}", nonce, ct, &rq);
    rq.op = "end";
    assert_fails(device_auth_open(&fx.svc, NULL, &rq, &a, &e), &e, QK_UNAUTHENTICATED,
                 "unauthenticated");
    assert_string_equal(e.detail, "request could not be authenticated");
    assert_null(a.key);
    /* Sealed by A, claimed by B. */
    seal_request("key", dev_a, "{}", nonce, ct, &rq);
    rq.device_id = dev_b;
    assert_fails(device_auth_open(&fx.svc, NULL, &rq, &a, &e), &e, QK_UNAUTHENTICATED,
                 "unauthenticated");
    /* A device nobody registered, and a key index A does not have. */
    seal_request("key", dev_a, "{}", nonce, ct, &rq);
    rq.device_id = "no-such-device";
    assert_fails(device_auth_open(&fx.svc, NULL, &rq, &a, &e), &e, QK_UNAUTHENTICATED,
                 "unauthenticated");
    rq.device_id = dev_a;
    rq.key_index = 9;
    assert_fails(device_auth_open(&fx.svc, NULL, &rq, &a, &e), &e, QK_UNAUTHENTICATED,
                 "unauthenticated");
    assert_int_equal(session_metrics_refusals(fx.svc.smetrics, SESSION_REFUSE_AUTH), before + 4);
}

/* ---- issuing ---------------------------------------------------------------------- */

static void both_parties_get_the_same_key(void **state)
{
    char sid[64];
    session_grant ga, gb;
    qk_err e;
    (void)state;

    fixture_unique(sid, sizeof(sid), "s-same");
    assert_int_equal(ask_key(dev_a, sid, dev_b, &ga, &e), QK_OK);
    assert_true(ga.created);
    assert_int_equal(ga.key_bits, 128);
    assert_int_equal(ga.key_len, 16);
    assert_string_equal(ga.delivery, "session");
    assert_true(ga.expires_at > (int64_t)time(NULL));
    assert_int_equal(ask_key(dev_b, sid, dev_a, &gb, &e), QK_OK);
    assert_false(gb.created);
    assert_string_equal(gb.key_id, ga.key_id);
    assert_int_equal(gb.key_len, ga.key_len);
    assert_memory_equal(gb.key, ga.key, ga.key_len);
    session_grant_clear(&ga);
    session_grant_clear(&gb);
    assert_null(ga.key);
}

static void a_third_device_is_refused(void **state)
{
    char sid[64];
    session_grant g;
    uint64_t before = session_metrics_refusals(fx.svc.smetrics, SESSION_REFUSE_NOT_PARTY);
    qk_err e;
    (void)state;

    fixture_unique(sid, sizeof(sid), "s-third");
    assert_int_equal(ask_key(dev_a, sid, dev_b, &g, &e), QK_OK);
    session_grant_clear(&g);
    assert_fails(ask_key(dev_c, sid, dev_a, &g, &e), &e, QK_FORBIDDEN, "not_a_party");
    assert_string_equal(e.detail, "this device is not a party of the session");
    assert_null(g.key);
    assert_int_equal(session_metrics_refusals(fx.svc.smetrics, SESSION_REFUSE_NOT_PARTY),
                     before + 1);
    /* The responder naming another peer than the initiator. */
    assert_fails(ask_key(dev_b, sid, dev_c, &g, &e), &e, QK_FORBIDDEN, "peer_mismatch");
}

static void a_new_session_id_gives_a_new_key(void **state)
{
    char s1[64], s2[64];
    session_grant g1, g2;
    qk_err e;
    (void)state;

    fixture_unique(s1, sizeof(s1), "s-one");
    fixture_unique(s2, sizeof(s2), "s-two");
    assert_int_equal(ask_key(dev_a, s1, dev_b, &g1, &e), QK_OK);
    assert_int_equal(ask_key(dev_a, s2, dev_b, &g2, &e), QK_OK);
    assert_true(g2.created);
    assert_string_not_equal(g1.key_id, g2.key_id);
    assert_memory_not_equal(g1.key, g2.key, g1.key_len);
    session_grant_clear(&g1);
    session_grant_clear(&g2);
}

static void a_replayed_request_is_refused(void **state)
{
    char sid[64], pt[256];
    uint8_t nonce[QKP_NONCE_LEN], ct[sizeof(pt) + QKP_TAG_LEN];
    int64_t now = (int64_t)time(NULL);
    session_ask ask = {.session_id = sid, .peer_id = dev_b, .ts = now};
    session_grant g;
    device_request rq;
    device_auth a;
    qk_principal who;
    qk_err e;
    (void)state;

    fixture_unique(sid, sizeof(sid), "s-replay");
    snprintf(pt, sizeof(pt), "{\"session_id\":\"%s\",\"peer_id\":\"%s\",\"ts\":%lld}", sid, dev_b,
             (long long)now);
    seal_request("key", dev_a, pt, nonce, ct, &rq);
    for (int i = 0; i < 2; i++) {
        assert_int_equal(device_auth_open(&fx.svc, NULL, &rq, &a, &e), QK_OK);
        who = device_of(&a);
        if (i == 0) {
            assert_int_equal(sessions_issue(&fx.svc, &who, &a, &ask, &g, &e), QK_OK);
            assert_false(a.replayed);
            session_grant_clear(&g);
        } else {
            /* The same nonce again: the database has recorded it. */
            assert_fails(sessions_issue(&fx.svc, &who, &a, &ask, &g, &e), &e, QK_UNAUTHENTICATED,
                         "unauthenticated");
            assert_true(a.replayed);
        }
        device_auth_clear(&a);
    }
}

static void a_stale_request_is_refused(void **state)
{
    char sid[64];
    session_grant g;
    qk_err e;
    (void)state;

    /* ts is judged by the database's clock, against protocol_clock_skew. */
    fixture_unique(sid, sizeof(sid), "s-stale");
    {
        char pt[256];
        uint8_t nonce[QKP_NONCE_LEN], ct[sizeof(pt) + QKP_TAG_LEN];
        int64_t old = (int64_t)time(NULL) - 10 * fx.cfg.protocol_clock_skew - 60;
        session_ask ask = {.session_id = sid, .peer_id = dev_b, .ts = old};
        device_request rq;
        device_auth a;
        qk_principal who;
        snprintf(pt, sizeof(pt), "{\"session_id\":\"%s\",\"peer_id\":\"%s\",\"ts\":%lld}", sid,
                 dev_b, (long long)old);
        seal_request("key", dev_a, pt, nonce, ct, &rq);
        assert_int_equal(device_auth_open(&fx.svc, NULL, &rq, &a, &e), QK_OK);
        who = device_of(&a);
        assert_fails(sessions_issue(&fx.svc, &who, &a, &ask, &g, &e), &e, QK_UNAUTHENTICATED,
                     "unauthenticated");
        assert_false(a.replayed);
        device_auth_clear(&a);
    }
}

static void the_principal_must_be_the_device(void **state)
{
    char sid[64];
    uint8_t nonce[QKP_NONCE_LEN], ct[64];
    session_ask ask = {.session_id = sid, .peer_id = dev_b, .ts = (int64_t)time(NULL)};
    session_grant g;
    device_request rq;
    device_auth a;
    qk_principal other = fixture_device(dev_c), admin = fixture_admin("svc-admin");
    qk_err e;
    (void)state;

    fixture_unique(sid, sizeof(sid), "s-who");
    seal_request("key", dev_a, "{}", nonce, ct, &rq);
    assert_int_equal(device_auth_open(&fx.svc, NULL, &rq, &a, &e), QK_OK);
    assert_fails(sessions_issue(&fx.svc, &other, &a, &ask, &g, &e), &e, QK_INTERNAL, "internal");
    assert_fails(sessions_issue(&fx.svc, &admin, &a, &ask, &g, &e), &e, QK_INTERNAL, "internal");
    device_auth_clear(&a);
}

/* ---- ending ----------------------------------------------------------------------- */

static void end_destroys_the_key(void **state)
{
    char sid[64], unknown[64];
    session_grant g;
    uint64_t ended = session_metrics_get(fx.svc.smetrics, SESSION_EV_ENDED_BY_PARTY);
    qk_err e;
    (void)state;

    fixture_unique(sid, sizeof(sid), "s-end");
    fixture_unique(unknown, sizeof(unknown), "s-never");
    assert_int_equal(ask_key(dev_a, sid, dev_b, &g, &e), QK_OK);
    session_grant_clear(&g);
    /* Only a party may end it. */
    assert_fails(end_session(dev_c, sid, &e), &e, QK_FORBIDDEN, "not_a_party");
    assert_int_equal(end_session(dev_b, sid, &e), QK_OK);
    assert_int_equal(session_metrics_get(fx.svc.smetrics, SESSION_EV_ENDED_BY_PARTY), ended + 1);
    /* The key is gone: neither party gets it again, and the ID stays used. */
    assert_fails(ask_key(dev_a, sid, dev_b, &g, &e), &e, QK_CONFLICT, "session_ended");
    assert_null(g.key);
    assert_fails(ask_key(dev_b, sid, dev_a, &g, &e), &e, QK_CONFLICT, "session_ended");
    assert_fails(end_session(dev_a, sid, &e), &e, QK_CONFLICT, "session_ended");
    assert_fails(end_session(dev_a, unknown, &e), &e, QK_NOT_FOUND, "unknown_session");
}

static void reap_destroys_expired_sessions(void **state)
{
    char sid[64];
    session_grant g;
    json_t *rec = NULL;
    uint64_t reaped = session_metrics_get(fx.svc.smetrics, SESSION_EV_REAPED);
    int n;
    qk_err e;
    (void)state;

    fixture_unique(sid, sizeof(sid), "s-reap");
    assert_int_equal(ask_key(dev_d, sid, dev_e, &g, &e), QK_OK);
    session_grant_clear(&g);
    /* The group's policy lets a session idle 1 s. */
    sleep(2);
    n = sessions_reap(&fx.svc, NULL);
    assert_true(n >= 1);
    assert_int_equal(session_metrics_get(fx.svc.smetrics, SESSION_EV_REAPED), reaped + (uint64_t)n);
    assert_int_equal(sessions_get(&fx.svc, sid, &rec, &e), QK_OK);
    assert_string_equal(json_string_value(json_object_get(rec, "state")), "ended");
    assert_string_equal(json_string_value(json_object_get(rec, "reason")), "idle_timeout");
    json_decref(rec);
    assert_fails(ask_key(dev_e, sid, dev_d, &g, &e), &e, QK_CONFLICT, "session_ended");
}

/* ---- the operator's view ------------------------------------------------------------ */

static void admin_list_get_and_end(void **state)
{
    char sid[64];
    session_grant g;
    session_filter f = {dev_a, NULL, 1000}, bad = {NULL, "open", 10};
    json_t *arr = NULL, *rec = NULL;
    qk_principal op = fixture_admin("svc-operator");
    bool listed = false;
    size_t i;
    json_t *v;
    qk_err e;
    (void)state;

    fixture_unique(sid, sizeof(sid), "s-admin");
    assert_int_equal(ask_key(dev_a, sid, dev_b, &g, &e), QK_OK);
    session_grant_clear(&g);
    assert_int_equal(sessions_list(&fx.svc, &f, &arr, &e), QK_OK);
    json_array_foreach(arr, i, v)
        listed |= !strcmp(json_string_value(json_object_get(v, "session_id")), sid);
    assert_true(listed);
    json_decref(arr);

    assert_int_equal(sessions_get(&fx.svc, sid, &rec, &e), QK_OK);
    assert_string_equal(json_string_value(json_object_get(rec, "initiator")), dev_a);
    assert_string_equal(json_string_value(json_object_get(rec, "responder")), dev_b);
    assert_string_equal(json_string_value(json_object_get(rec, "state")), "pending");
    json_decref(rec);

    assert_int_equal(sessions_end_by_operator(&fx.svc, &op, sid, &e), QK_OK);
    assert_int_equal(sessions_get(&fx.svc, sid, &rec, &e), QK_OK);
    assert_string_equal(json_string_value(json_object_get(rec, "state")), "ended");
    assert_string_equal(json_string_value(json_object_get(rec, "reason")), "ended_by_operator");
    json_decref(rec);
    assert_fails(sessions_end_by_operator(&fx.svc, &op, sid, &e), &e, QK_NOT_FOUND, "not_found");
    assert_string_equal(e.detail, "no live session with that ID");
    assert_fails(ask_key(dev_b, sid, dev_a, &g, &e), &e, QK_CONFLICT, "session_ended");

    /* Tombstones by device. */
    f.state = "ended";
    assert_int_equal(sessions_list(&fx.svc, &f, &arr, &e), QK_OK);
    assert_true(json_array_size(arr) >= 1);
    json_decref(arr);
    /* What the service refuses. */
    assert_fails(sessions_list(&fx.svc, &bad, &arr, &e), &e, QK_MALFORMED, "invalid_query");
    assert_null(arr);
    bad.state = NULL;
    bad.limit = 0;
    assert_fails(sessions_list(&fx.svc, &bad, &arr, &e), &e, QK_MALFORMED, "invalid_query");
    assert_fails(sessions_get(&fx.svc, "no/such", &rec, &e), &e, QK_NOT_FOUND, "not_found");
    assert_fails(sessions_get(&fx.svc, "never-was", &rec, &e), &e, QK_NOT_FOUND, "not_found");
    assert_null(rec);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(auth_opens_a_sealed_request),
        cmocka_unit_test(auth_refuses_what_does_not_open),
        cmocka_unit_test(both_parties_get_the_same_key),
        cmocka_unit_test(a_third_device_is_refused),
        cmocka_unit_test(a_new_session_id_gives_a_new_key),
        cmocka_unit_test(a_replayed_request_is_refused),
        cmocka_unit_test(a_stale_request_is_refused),
        cmocka_unit_test(the_principal_must_be_the_device),
        cmocka_unit_test(end_destroys_the_key),
        cmocka_unit_test(reap_destroys_expired_sessions),
        cmocka_unit_test(admin_list_get_and_end),
    };
    return cmocka_run_group_tests(tests, setup, fixture_teardown);
}
