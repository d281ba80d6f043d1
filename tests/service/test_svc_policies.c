/*
 * Service tests of the pairing policies (policies.h) without HTTP: list,
 * add (with its defaults and every refusal), remove.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "fixture.h"
#include "service/policies.h"

static qk_principal admin;

static int setup(void **state)
{
    (void)state;
    admin = fixture_admin("svc-policies");
    return fixture_open(&fx);
}

static policy_spec spec(const char *name)
{
    policy_spec p = {.name = name, .type_a = "vehicle", .type_b = "*"};
    return p;
}

/* The listed policy named name, or NULL (a new reference). */
static json_t *find(const char *name)
{
    json_t *out = NULL, *v, *found = NULL;
    size_t i;
    qk_err e;
    assert_int_equal(policies_list(&fx.svc, &out, &e), QK_OK);
    json_array_foreach(json_object_get(out, "policies"), i, v) {
        if (!strcmp(json_string_value(json_object_get(v, "name")), name))
            found = json_incref(v);
    }
    json_decref(out);
    return found;
}

static void add_and_list(void **state)
{
    char name[64];
    policy_spec p;
    json_t *v;
    qk_err e;
    (void)state;
    fixture_unique(name, sizeof(name), "pol");
    p = spec(name);
    assert_int_equal(policies_add(&fx.svc, &admin, &p, &e), QK_OK);
    v = find(name);
    assert_non_null(v);
    /* The defaults. */
    assert_int_equal(json_integer_value(json_object_get(v, "key_bits")), 128);
    assert_int_equal(json_integer_value(json_object_get(v, "idle_timeout_s")), 300);
    assert_int_equal(json_integer_value(json_object_get(v, "max_lifetime_s")), 3600);
    assert_string_equal(json_string_value(json_object_get(v, "delivery")), "session");
    assert_string_equal(json_string_value(json_object_get(v, "scope")), "same-group");
    assert_string_equal(json_string_value(json_object_get(v, "created_by")), "svc-policies");
    json_decref(v);
    /* The name is taken now. */
    assert_int_equal(policies_add(&fx.svc, &admin, &p, &e), QK_CONFLICT);
    assert_string_equal(e.code, "conflict");
}

static void add_cross_group(void **state)
{
    char name[64];
    policy_spec p;
    json_t *v;
    qk_err e;
    (void)state;
    fixture_unique(name, sizeof(name), "pol-x");
    p = spec(name);
    p.group_a = "site-a";
    p.group_b = "site-b";
    p.delivery = "delivered";
    p.key_bits = (policy_int){true, 256};
    p.idle_timeout_s = (policy_int){true, 60};
    p.max_lifetime_s = (policy_int){true, 600};
    assert_int_equal(policies_add(&fx.svc, &admin, &p, &e), QK_OK);
    v = find(name);
    assert_non_null(v);
    assert_string_equal(json_string_value(json_object_get(v, "scope")), "cross-group");
    assert_string_equal(json_string_value(json_object_get(v, "group_b")), "site-b");
    assert_int_equal(json_integer_value(json_object_get(v, "key_bits")), 256);
    assert_int_equal(json_integer_value(json_object_get(v, "idle_timeout_s")), 60);
    assert_string_equal(json_string_value(json_object_get(v, "delivery")), "delivered");
    json_decref(v);
}

static void expect_invalid(const policy_spec *p, const char *detail_part)
{
    qk_err e;
    assert_int_equal(policies_add(&fx.svc, &admin, p, &e), QK_INVALID);
    assert_string_equal(e.code, "invalid_policy");
    if (!strstr(e.detail, detail_part))
        fail_msg("detail '%s' lacks '%s'", e.detail, detail_part);
}

static void add_refusals(void **state)
{
    char name[64];
    policy_spec p;
    (void)state;
    fixture_unique(name, sizeof(name), "pol-bad");
    p = spec("-bad name");
    expect_invalid(&p, "name must be");
    p = spec(name);
    p.type_b = "no-such-type";
    expect_invalid(&p, "registered device types");
    p = spec(name);
    p.type_a = NULL;
    expect_invalid(&p, "registered device types");
    p = spec(name);
    p.group_a = "site-a";
    expect_invalid(&p, "go together");
    p = spec(name);
    p.delivery = "later";
    expect_invalid(&p, "delivery must be");
    p = spec(name);
    p.key_bits = (policy_int){true, 192};
    expect_invalid(&p, "128 or 256");
    p = spec(name);
    p.key_bits = (policy_int){true, 512};
    expect_invalid(&p, "key_bits must be an integer from 128 to 256");
    p = spec(name);
    p.idle_timeout_s = (policy_int){true, 0};
    expect_invalid(&p, "idle_timeout_s must be an integer from 1 to 86400");
    p = spec(name);
    p.max_lifetime_s = (policy_int){true, 604801};
    expect_invalid(&p, "max_lifetime_s");
    /* Nothing was added by the refusals. */
    assert_null(find(name));
}

static void remove_policy(void **state)
{
    char name[64];
    policy_spec p;
    qk_err e;
    (void)state;
    fixture_unique(name, sizeof(name), "pol-rm");
    p = spec(name);
    assert_int_equal(policies_add(&fx.svc, &admin, &p, &e), QK_OK);
    assert_int_equal(policies_remove(&fx.svc, &admin, name, &e), QK_OK);
    assert_null(find(name));
    assert_int_equal(policies_remove(&fx.svc, &admin, name, &e), QK_NOT_FOUND);
    assert_string_equal(e.code, "not_found");
    assert_int_equal(policies_remove(&fx.svc, &admin, "not a name", &e), QK_NOT_FOUND);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(add_and_list),
        cmocka_unit_test(add_cross_group),
        cmocka_unit_test(add_refusals),
        cmocka_unit_test(remove_policy),
    };
    return cmocka_run_group_tests(tests, setup, fixture_teardown);
}
