/*
 * Service tests of the audit log, one per operation, without HTTP: the
 * sealer chains new rows and checkpoints them, verification passes on an
 * intact chain and names a row changed behind kmsd's back (tampered here
 * through libpq, then put back), the listing filters and pages, and the
 * export carries what a verifier outside kmsd needs to recompute a hash.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "err.h"
#include "fixture.h"
#include "hexutil.h"
#include "service/audit.h"
#include "service/audit_canon.h"
#include "service/audit_query.h"
#include "service/audit_seal.h"
#include "service/audit_verify.h"

#define ACTOR "svc-test-audit"
#define SEAL_WAIT_S 30

static int64_t sql_i64(const char *text, int n, const char *const *vals)
{
    char *s = fixture_sql1(text, n, vals);
    int64_t v = s ? strtoll(s, NULL, 10) : 0;
    free(s);
    return v;
}

/* An audit row as a request path writes it; its id. */
static int64_t append(const char *event, const char *device_id)
{
    db_status st;
    db_conn *c = db_acquire(fx.svc.db, &st);
    const char *vals[1] = {event};
    assert_non_null(c);
    assert_int_equal(audit_append(c, ACTOR, event, device_id, json_pack("{s:s}", "why", "test")),
                     DB_OK);
    db_release(fx.svc.db, c);
    return sql_i64("SELECT max(id) FROM audit_log WHERE event = $1", 1, vals);
}

/* Seal until row id is in the chain (a pass seals only when one is due,
 * and waits out ids still in flight). */
static void seal_until(int64_t id)
{
    char sid[24];
    const char *vals[1] = {sid};
    snprintf(sid, sizeof(sid), "%lld", (long long)id);
    for (int i = 0; i < SEAL_WAIT_S; i++) {
        audit_seal_stats stats;
        qk_err e;
        char *sealed;
        assert_int_equal(audit_chain_seal(&fx.svc, &stats, &e), QK_OK);
        assert_false(stats.locked_out);
        sealed = fixture_sql1("SELECT hash IS NOT NULL FROM audit_log WHERE id = $1", 1, vals);
        if (sealed && !strcmp(sealed, "t")) {
            free(sealed);
            return;
        }
        free(sealed);
        sleep(1);
    }
    fail_msg("row %lld not sealed within %d s", (long long)id, SEAL_WAIT_S);
}

static void seal_chains_and_checkpoints(void **state)
{
    char event[80], sid[24];
    const char *vals[1] = {sid};
    int64_t id, cps;
    (void)state;
    fixture_unique(event, sizeof(event), "svc.seal");
    id = append(event, NULL);
    snprintf(sid, sizeof(sid), "%lld", (long long)id);
    seal_until(id);
    /* Linked to the row before it, with the values it covers stored. */
    assert_int_equal(sql_i64("SELECT count(*) FROM audit_log WHERE id = $1 AND prev_hash IS NOT NULL"
                             " AND hashed_detail IS NOT NULL AND sealed_at IS NOT NULL",
                             1, vals),
                     1);
    /* A checkpoint under the active master key covers it. */
    cps = sql_i64("SELECT count(*) FROM audit_checkpoints WHERE last_audit_id >= $1", 1, vals);
    assert_true(cps >= 1);
    assert_true(sql_i64("SELECT main_id FROM audit_chain_state", 0, NULL) >= id);
}

static audit_verify_result verify(void)
{
    qk_principal who = fixture_admin(ACTOR);
    audit_verify_result v;
    qk_err e;
    qk_kind k = audit_query_verify(&fx.svc, &who, &v, &e);
    if (k != QK_OK)
        fail_msg("verify: %s %s", e.code, e.detail);
    return v;
}

static void verify_intact_chain(void **state)
{
    char event[80];
    const char *vals[1] = {ACTOR};
    int64_t id, recorded;
    audit_verify_result v;
    (void)state;
    fixture_unique(event, sizeof(event), "svc.verify");
    id = append(event, NULL);
    seal_until(id);
    recorded = sql_i64("SELECT count(*) FROM audit_log WHERE event = 'audit.verified'"
                       " AND actor = $1", 1, vals);
    v = verify();
    assert_true(v.ok);
    assert_int_equal(v.problem, AUDIT_OK);
    assert_true(v.rows_checked >= 1);
    assert_true(v.checkpoints_checked >= 1);
    assert_true(v.head_id >= id);
    free(v.gaps);
    /* Who verified, and what they found, is an audit event itself. */
    assert_int_equal(sql_i64("SELECT count(*) FROM audit_log WHERE event = 'audit.verified'"
                             " AND actor = $1", 1, vals),
                     recorded + 1);
}

static void verify_names_a_tampered_row(void **state)
{
    char event[80], sid[24];
    const char *vals[2] = {sid, ACTOR};
    int64_t id;
    audit_verify_result v;
    (void)state;
    fixture_unique(event, sizeof(event), "svc.tamper");
    id = append(event, "SVC-TAMPER");
    seal_until(id);
    snprintf(sid, sizeof(sid), "%lld", (long long)id);
    /* Behind kmsd's back: another actor on a sealed row. */
    free(fixture_sql1("UPDATE audit_log SET actor = 'mallory' WHERE id = $1", 1, vals));
    v = verify();
    assert_false(v.ok);
    assert_int_equal(v.problem, AUDIT_MODIFIED);
    assert_int_equal(v.bad_id, id);
    assert_non_null(strstr(v.detail, "does not match its hash"));
    free(v.gaps);
    /* Put back, the chain is whole again (and stays so for later tests). */
    free(fixture_sql1("UPDATE audit_log SET actor = $2 WHERE id = $1", 2, vals));
    v = verify();
    assert_true(v.ok);
    free(v.gaps);
}

static void list_filters_and_pages(void **state)
{
    char event[80], prefix[80], device[80];
    audit_list_args a = {0};
    audit_page p;
    qk_err e;
    int64_t ids[3];
    (void)state;
    fixture_unique(event, sizeof(event), "svc.list");
    fixture_unique(device, sizeof(device), "SVC-LIST");
    for (int i = 0; i < 3; i++)
        ids[i] = append(event, i == 1 ? device : NULL);

    /* By event, two to a page. */
    a.type = event;
    a.limit = "2";
    assert_int_equal(audit_query_list(&fx.svc, &a, &p, &e), QK_OK);
    assert_int_equal(json_array_size(p.rows), 2);
    assert_int_equal(json_integer_value(json_object_get(json_array_get(p.rows, 0), "id")), ids[0]);
    assert_string_equal(json_string_value(json_object_get(json_array_get(p.rows, 0), "actor")),
                        ACTOR);
    assert_string_equal(json_string_value(json_object_get(
                            json_object_get(json_array_get(p.rows, 0), "detail"), "why")),
                        "test");
    assert_null(json_object_get(json_array_get(p.rows, 0), "hash")); /* list, not export */
    assert_int_equal(p.next, ids[1]);
    json_decref(p.rows);
    {
        char after[24];
        snprintf(after, sizeof(after), "%lld", (long long)p.next);
        a.after = after;
        assert_int_equal(audit_query_list(&fx.svc, &a, &p, &e), QK_OK);
        assert_int_equal(json_array_size(p.rows), 1);
        assert_int_equal(json_integer_value(json_object_get(json_array_get(p.rows, 0), "id")),
                         ids[2]);
        assert_int_equal(p.next, 0); /* the last page */
        json_decref(p.rows);
        a.after = NULL;
    }
    /* By prefix and device. */
    snprintf(prefix, sizeof(prefix), "%.*s*", (int)strlen(event) - 2, event);
    a.type = prefix;
    a.device = device;
    a.limit = NULL;
    assert_int_equal(audit_query_list(&fx.svc, &a, &p, &e), QK_OK);
    assert_int_equal(json_array_size(p.rows), 1);
    assert_int_equal(json_integer_value(json_object_get(json_array_get(p.rows, 0), "id")), ids[1]);
    json_decref(p.rows);

    /* Refused filters: the shape, then the calendar (PostgreSQL's). */
    a = (audit_list_args){.limit = "0"};
    assert_int_equal(audit_query_list(&fx.svc, &a, &p, &e), QK_MALFORMED);
    assert_string_equal(e.code, "invalid_query");
    assert_non_null(strstr(e.detail, "limit (1-1000)"));
    a = (audit_list_args){.type = "Not An Event"};
    assert_int_equal(audit_query_list(&fx.svc, &a, &p, &e), QK_MALFORMED);
    a = (audit_list_args){.since = "2026-02-30"};
    assert_int_equal(audit_query_list(&fx.svc, &a, &p, &e), QK_MALFORMED);
    assert_string_equal(e.code, "invalid_query");
    assert_string_equal(e.detail, "since is not a valid time");
}

/* The hash of an exported row, recomputed from the export alone. */
static void export_recomputes(void **state)
{
    char event[80];
    audit_list_args a = {0};
    audit_page p;
    qk_err e;
    json_t *o;
    audit_row row = {0};
    uint8_t prev[AUDIT_HASH_LEN], want[AUDIT_HASH_LEN], got[AUDIT_HASH_LEN];
    const char *ph, *h;
    int64_t id;
    (void)state;
    fixture_unique(event, sizeof(event), "svc.export");
    id = append(event, "SVC-EXPORT");
    seal_until(id);
    a.type = event;
    assert_int_equal(audit_query_export(&fx.svc, &a, &p, &e), QK_OK);
    assert_int_equal(json_array_size(p.rows), 1);
    o = json_array_get(p.rows, 0);
    assert_true(json_is_true(json_object_get(o, "sealed")));
    assert_non_null(json_string_value(json_object_get(o, "sealed_at")));
    ph = json_string_value(json_object_get(o, "prev_hash"));
    h = json_string_value(json_object_get(o, "hash"));
    assert_non_null(ph);
    assert_non_null(h);
    assert_int_equal(qkms_hex_decode(ph, strlen(ph), prev, sizeof(prev)), AUDIT_HASH_LEN);
    assert_int_equal(qkms_hex_decode(h, strlen(h), want, sizeof(want)), AUDIT_HASH_LEN);
    row.id = json_integer_value(json_object_get(o, "id"));
    row.at_us = json_integer_value(json_object_get(o, "hashed_at_us"));
    row.actor = json_string_value(json_object_get(o, "actor"));
    row.event = json_string_value(json_object_get(o, "event"));
    row.device_id = json_string_value(json_object_get(o, "device_id"));
    row.detail = json_string_value(json_object_get(o, "hashed_detail"));
    assert_int_equal(row.id, id);
    assert_string_equal(row.device_id, "SVC-EXPORT");
    assert_non_null(row.detail);
    assert_int_equal(audit_row_hash(prev, &row, got), 0);
    assert_memory_equal(got, want, AUDIT_HASH_LEN);
    json_decref(p.rows);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(seal_chains_and_checkpoints),
        cmocka_unit_test(verify_intact_chain),
        cmocka_unit_test(verify_names_a_tampered_row),
        cmocka_unit_test(list_filters_and_pages),
        cmocka_unit_test(export_recomputes),
    };
    return cmocka_run_group_tests(tests, fixture_setup, fixture_teardown);
}
