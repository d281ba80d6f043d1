/*
 * Service tests of the master key, one per operation, without HTTP: the
 * status names every version, a rotation makes the next version active
 * (audited), and the maintenance step rewraps a key stored under the old
 * version so that it opens to the same bytes under the new one. With
 * another live instance in the registry, a rotation is staged until that
 * instance holds the version (or forced).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "err.h"
#include "fixture.h"
#include "hexutil.h"
#include "service/device_model.h"
#include "service/instances.h"
#include "service/rotation.h"

#define ACTOR "svc-test-master"

static json_t *status(void)
{
    json_t *st = NULL;
    qk_err e;
    if (rotation_status(&fx.svc, &st, &e) != QK_OK)
        fail_msg("status: %s %s", e.code, e.detail);
    return st;
}

/* The state status gives version v ("" when it is not listed). */
static const char *state_of(json_t *st, uint32_t v)
{
    size_t i;
    json_t *x;
    json_array_foreach(json_object_get(st, "versions"), i, x)
        if (json_integer_value(json_object_get(x, "version")) == (json_int_t)v)
            return json_string_value(json_object_get(x, "state"));
    return "";
}

static void status_names_the_active_version(void **state)
{
    json_t *st = status();
    uint32_t active = keywrap_active(fx.svc.kw);
    char label[128];
    size_t i;
    json_t *x;
    (void)state;
    assert_true(active >= 1);
    assert_int_equal(json_integer_value(json_object_get(st, "active")), active);
    assert_string_equal(state_of(st, active), "active");
    keywrap_label(fx.svc.kw, active, label, sizeof(label));
    json_array_foreach(json_object_get(st, "versions"), i, x) {
        assert_non_null(json_object_get(x, "created_at"));
        assert_true(json_is_integer(json_object_get(x, "device_keys")));
        assert_true(json_is_integer(json_object_get(x, "sessions")));
        if (json_integer_value(json_object_get(x, "version")) == (json_int_t)active)
            assert_string_equal(json_string_value(json_object_get(x, "label")), label);
    }
    assert_true(json_is_integer(json_object_get(st, "pending_rewrap")));
    json_decref(st);
}

static void rotate_makes_the_next_version_active(void **state)
{
    uint32_t before = keywrap_active(fx.svc.kw), after;
    char from[16];
    const char *vals[2] = {ACTOR, from};
    qk_err e;
    json_t *st;
    char *n;
    (void)state;
    assert_int_equal(rotation_rotate(&fx.svc, ACTOR, false, &e), QK_OK);
    after = keywrap_active(fx.svc.kw);
    assert_true(after > before);
    st = status();
    assert_int_equal(json_integer_value(json_object_get(st, "active")), after);
    assert_string_equal(state_of(st, after), "active");
    assert_string_equal(state_of(st, before), "retired");
    json_decref(st);
    /* Audited, by whom, from which version. */
    snprintf(from, sizeof(from), "%u", before);
    n = fixture_sql1("SELECT count(*) FROM audit_log WHERE event = 'master.rotated' AND actor = $1"
             " AND detail->>'from' = $2",
             2, vals);
    assert_string_equal(n, "1");
    free(n);
}

/* A device key stored under the active version, rotated away from, is
 * rewrapped by the maintenance step and opens to the same bytes. */
static void rewrap_moves_keys_to_the_active_version(void **state)
{
    char device[80], ctx[256], hex[2 * (32 + KEYWRAP_OVERHEAD) + 1], ver[16], *got_hex, *got_ver;
    uint8_t key[32], blob[32 + KEYWRAP_OVERHEAD], back[KEYWRAP_MAX_KEY + 16];
    size_t bl = sizeof(blob), kl = sizeof(back);
    const char *vals[3] = {device, hex, ver};
    uint32_t old = keywrap_active(fx.svc.kw), now;
    qk_err e;
    json_t *st;
    int rewrapped = 0;
    (void)state;
    fixture_unique(device, sizeof(device), "SVC-REWRAP");
    assert_true(device_key_context(device, 0, "AES-256", ctx, sizeof(ctx)) > 0);
    assert_int_equal(entropy_get(fx.svc.ent, key, sizeof(key), NULL), 0);
    assert_int_equal(keywrap_wrap(fx.svc.kw, (const uint8_t *)ctx, strlen(ctx), key, sizeof(key),
                                  blob, &bl),
                     CKR_OK);
    qkms_hex_encode(blob, bl, hex);
    snprintf(ver, sizeof(ver), "%u", old);
    free(fixture_sql1("INSERT INTO devices (device_id, type, group_label) VALUES ($1, 'generic', 'svc')"
              " RETURNING id",
              1, vals));
    free(fixture_sql1("INSERT INTO device_keys (device_pk, key_index, algorithm, wrapped, master_version,"
              " provenance, not_before, not_after) SELECT id, 0, 'AES-256', decode($2, 'hex'),"
              " $3::int, 'svc-test', now(), now() + interval '1 day' FROM devices"
              " WHERE device_id = $1",
              3, vals));

    assert_int_equal(rotation_rotate(&fx.svc, ACTOR, false, &e), QK_OK);
    now = keywrap_active(fx.svc.kw);
    assert_true(now > old);
    for (int i = 0; i < 50; i++) {
        int n = rotation_pass(&fx.svc);
        assert_true(n >= 0);
        if (n == 0)
            break;
        rewrapped += n;
    }
    assert_true(rewrapped >= 1);

    got_ver = fixture_sql1("SELECT k.master_version FROM device_keys k JOIN devices d ON d.id = k.device_pk"
                   " WHERE d.device_id = $1",
                   1, vals);
    snprintf(ver, sizeof(ver), "%u", now);
    assert_string_equal(got_ver, ver);
    free(got_ver);
    got_hex = fixture_sql1("SELECT encode(k.wrapped, 'hex') FROM device_keys k JOIN devices d"
                   " ON d.id = k.device_pk WHERE d.device_id = $1",
                   1, vals);
    assert_non_null(got_hex);
    assert_string_not_equal(got_hex, hex);
    bl = (size_t)qkms_hex_decode(got_hex, strlen(got_hex), blob, sizeof(blob));
    free(got_hex);
    assert_int_equal(keywrap_blob_version(blob, bl), now);
    assert_int_equal(keywrap_unwrap(fx.svc.kw, (const uint8_t *)ctx, strlen(ctx), blob, bl, back,
                                    &kl),
                     CKR_OK);
    assert_int_equal(kl, sizeof(key));
    assert_memory_equal(back, key, sizeof(key));

    /* Nothing is left under an older version, the session ID key included. */
    st = status();
    assert_int_equal(json_integer_value(json_object_get(st, "pending_rewrap")), 0);
    json_decref(st);
    got_ver = fixture_sql1("SELECT master_version FROM session_hash_key", 0, NULL);
    assert_string_equal(got_ver, ver);
    free(got_ver);
}

static char *count_audit(const char *event, const char *actor, const char *version)
{
    const char *vals[3] = {event, actor, version};
    return fixture_sql1("SELECT count(*) FROM audit_log WHERE event = $1 AND actor = $2"
                        " AND coalesce(detail->>'to', detail->>'version') = $3",
                        3, vals);
}

/* Another live instance whose token lacks the new version holds it back:
 * staged (audited, named in the status), a second rotation refused, the
 * maintenance step activates it once the other reports holding it, and an
 * instance whose lease ran out holds nothing back; force does not wait. */
static void staged_version_waits_for_every_live_instance(void **state)
{
    uint32_t before = keywrap_active(fx.svc.kw), staged;
    char other[64], ver[16], *n;
    const char *vals[2] = {other, ver};
    qk_err e;
    json_t *st;
    (void)state;
    fixture_unique(other, sizeof(other), "svc-other");
    snprintf(ver, sizeof(ver), "%u", before);
    free(fixture_sql1("INSERT INTO kmsd_instances (name, versions, software, started_at,"
                      " expires_at) VALUES ($1, ARRAY[$2::int], 'test', now(),"
                      " now() + interval '1 hour') RETURNING name", 2, vals));

    assert_int_equal(rotation_rotate(&fx.svc, ACTOR, false, &e), QK_OK);
    assert_int_equal(keywrap_active(fx.svc.kw), before); /* nothing wraps under it yet */
    st = status();
    staged = (uint32_t)json_integer_value(json_object_get(st, "staged"));
    assert_true(staged > before);
    assert_string_equal(state_of(st, staged), "staged");
    assert_int_equal(json_array_size(json_object_get(st, "waiting_for")), 1);
    assert_string_equal(json_string_value(json_array_get(json_object_get(st, "waiting_for"), 0)),
                        other);
    json_decref(st);
    snprintf(ver, sizeof(ver), "%u", staged);
    n = count_audit("master.staged", ACTOR, ver);
    assert_string_equal(n, "1");
    free(n);

    assert_int_equal(rotation_rotate(&fx.svc, ACTOR, false, &e), QK_CONFLICT);
    assert_string_equal(e.code, "rotation_pending");
    assert_int_equal(rotation_stage_pass(&fx.svc, NULL), 0); /* the other still lacks it */
    assert_int_equal(keywrap_active(fx.svc.kw), before);

    free(fixture_sql1("UPDATE kmsd_instances SET versions = versions || $2::int WHERE name = $1"
                      " RETURNING name", 2, vals));
    assert_int_equal(rotation_stage_pass(&fx.svc, NULL), 1);
    assert_int_equal(keywrap_active(fx.svc.kw), staged);
    st = status();
    assert_true(json_is_null(json_object_get(st, "staged")));
    assert_string_equal(state_of(st, staged), "active");
    assert_string_equal(state_of(st, before), "retired");
    json_decref(st);
    n = count_audit("master.rotated", "kmsd", ver);
    assert_string_equal(n, "1");
    free(n);

    /* Gone (its lease ran out): it holds back nothing. */
    before = staged;
    assert_int_equal(rotation_rotate(&fx.svc, ACTOR, false, &e), QK_OK);
    assert_int_equal(keywrap_active(fx.svc.kw), before);
    free(fixture_sql1("UPDATE kmsd_instances SET expires_at = now() - interval '1 second'"
                      " WHERE name = $1 RETURNING name", 1, vals));
    assert_int_equal(rotation_stage_pass(&fx.svc, NULL), 1);
    assert_true(keywrap_active(fx.svc.kw) > before);

    /* Forced: active at once although a live instance lacks it. */
    before = keywrap_active(fx.svc.kw);
    free(fixture_sql1("UPDATE kmsd_instances SET expires_at = now() + interval '1 hour'"
                      " WHERE name = $1 RETURNING name", 1, vals));
    assert_int_equal(rotation_rotate(&fx.svc, ACTOR, true, &e), QK_OK);
    assert_true(keywrap_active(fx.svc.kw) > before);
    st = status();
    assert_true(json_is_null(json_object_get(st, "staged")));
    json_decref(st);

    free(fixture_sql1("DELETE FROM kmsd_instances WHERE name = $1 RETURNING name", 1, vals));
    instances_leave(&fx.svc.self, fx.svc.db);
}

/* A live row of the same name from another start is not taken over (two
 * instances given one instance_name); once it expires it is, and a clean
 * leave removes only this start's row. */
static void a_live_namesake_keeps_its_row(void **state)
{
    const char *vals[1] = {fx.svc.self.name};
    char *v;
    (void)state;
    instances_leave(&fx.svc.self, fx.svc.db);
    free(fixture_sql1("INSERT INTO kmsd_instances (name, versions, software, started_at,"
                      " expires_at) VALUES ($1, '{}', 'other', now() - interval '1 hour',"
                      " now() + interval '1 hour') RETURNING name", 1, vals));
    assert_true(rotation_stage_pass(&fx.svc, NULL) >= 0);
    v = fixture_sql1("SELECT software || ' ' || versions::text FROM kmsd_instances"
                     " WHERE name = $1", 1, vals);
    assert_string_equal(v, "other {}");
    free(v);
    instances_leave(&fx.svc.self, fx.svc.db); /* not its row: kept */
    v = fixture_sql1("SELECT count(*) FROM kmsd_instances WHERE name = $1", 1, vals);
    assert_string_equal(v, "1");
    free(v);

    free(fixture_sql1("UPDATE kmsd_instances SET expires_at = now() WHERE name = $1"
                      " RETURNING name", 1, vals));
    assert_true(rotation_stage_pass(&fx.svc, NULL) >= 0);
    v = fixture_sql1("SELECT software <> 'other' AND cardinality(versions) >= 1"
                     " FROM kmsd_instances WHERE name = $1", 1, vals);
    assert_string_equal(v, "t");
    free(v);
    instances_leave(&fx.svc.self, fx.svc.db);
    v = fixture_sql1("SELECT count(*) FROM kmsd_instances WHERE name = $1", 1, vals);
    assert_string_equal(v, "0");
    free(v);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(status_names_the_active_version),
        cmocka_unit_test(rotate_makes_the_next_version_active),
        cmocka_unit_test(rewrap_moves_keys_to_the_active_version),
        cmocka_unit_test(staged_version_waits_for_every_live_instance),
        cmocka_unit_test(a_live_namesake_keeps_its_row),
    };
    return cmocka_run_group_tests(tests, fixture_setup, fixture_teardown);
}
