/*
 * Service tests of the admin token resource (tokens.h) without HTTP:
 * create (and the token then authenticates), list, revoke (and it no
 * longer does), with each refusal.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "fixture.h"
#include "service/auth.h"
#include "service/tokens.h"

static qk_principal admin;

static int setup(void **state)
{
    (void)state;
    admin = fixture_admin("svc-tokens");
    return fixture_open(&fx);
}

/* Create name with role (expiry in days, 0 = never): the token into tok. */
static void create(const char *name, const char *role, long long days, char tok[AUTH_TOKEN_LEN + 1])
{
    token_spec s = {name, role, days > 0, days, NULL};
    json_t *out = NULL;
    qk_err e;
    assert_int_equal(tokens_create(&fx.svc, &admin, &s, &out, &e), QK_OK);
    assert_string_equal(json_string_value(json_object_get(out, "name")), name);
    assert_string_equal(json_string_value(json_object_get(out, "role")), role);
    assert_false(json_is_null(json_object_get(out, "created_at")));
    assert_int_equal(json_is_null(json_object_get(out, "expires_at")), days <= 0);
    snprintf(tok, AUTH_TOKEN_LEN + 1, "%s", json_string_value(json_object_get(out, "token")));
    json_decref(out);
}

static void create_token(void **state)
{
    char name[64], tok[AUTH_TOKEN_LEN + 1];
    auth_principal who;
    (void)state;
    fixture_unique(name, sizeof(name), "tok");
    create(name, "operator", 0, tok);
    assert_true(auth_token_well_formed(tok));
    assert_int_equal(auth_lookup(fx.svc.db, tok, &who), DB_OK);
    assert_string_equal(who.name, name);
    assert_int_equal(who.role, ROLE_OPERATOR);
    fixture_unique(name, sizeof(name), "tok-exp");
    create(name, "auditor", 30, tok);
}

static void expect_invalid(const char *name, const char *role, bool expires, long long days,
                           const char *code)
{
    token_spec s = {name, role, expires, days, NULL};
    json_t *out = (json_t *)1;
    qk_err e;
    assert_int_equal(tokens_create(&fx.svc, &admin, &s, &out, &e), QK_INVALID);
    assert_string_equal(e.code, code);
    assert_null(out);
}

static void create_refusals(void **state)
{
    char name[64], tok[AUTH_TOKEN_LEN + 1];
    token_spec s;
    json_t *out;
    qk_err e;
    (void)state;
    fixture_unique(name, sizeof(name), "tok-bad");
    expect_invalid(NULL, "admin", false, 0, "invalid_name");
    expect_invalid("-x", "admin", false, 0, "invalid_name");
    expect_invalid(name, "root", false, 0, "invalid_role");
    expect_invalid(name, NULL, false, 0, "invalid_role");
    expect_invalid(name, "admin", true, 0, "invalid_expiry");
    expect_invalid(name, "admin", true, TOKEN_EXPIRY_MAX_DAYS + 1, "invalid_expiry");
    /* A crypto token acts for one party; no other role does. */
    s = (token_spec){name, "crypto", false, 0, NULL};
    assert_int_equal(tokens_create(&fx.svc, &admin, &s, &out, &e), QK_INVALID);
    assert_string_equal(e.code, "invalid_acts_for");
    s = (token_spec){name, "operator", false, 0, "@platform"};
    assert_int_equal(tokens_create(&fx.svc, &admin, &s, &out, &e), QK_INVALID);
    assert_string_equal(e.code, "invalid_acts_for");
    s = (token_spec){name, "crypto", false, 0, "no-such-device-x"};
    assert_int_equal(tokens_create(&fx.svc, &admin, &s, &out, &e), QK_INVALID);
    assert_string_equal(e.code, "unknown_device");
    /* One live token per name. */
    create(name, "admin", 0, tok);
    s = (token_spec){name, "auditor", false, 0, NULL};
    assert_int_equal(tokens_create(&fx.svc, &admin, &s, &out, &e), QK_CONFLICT);
    assert_string_equal(e.code, "conflict");
}

static void list_tokens(void **state)
{
    char name[64], tok[AUTH_TOKEN_LEN + 1];
    json_t *out = NULL, *v, *found = NULL;
    size_t i;
    qk_err e;
    (void)state;
    fixture_unique(name, sizeof(name), "tok-list");
    create(name, "auditor", 0, tok);
    assert_int_equal(tokens_list(&fx.svc, &out, &e), QK_OK);
    json_array_foreach(json_object_get(out, "tokens"), i, v) {
        assert_null(json_object_get(v, "token")); /* never shown again */
        if (!strcmp(json_string_value(json_object_get(v, "name")), name))
            found = v;
    }
    assert_non_null(found);
    assert_string_equal(json_string_value(json_object_get(found, "state")), "active");
    assert_string_equal(json_string_value(json_object_get(found, "created_by")), "svc-tokens");
    json_decref(out);
}

static void revoke_token(void **state)
{
    char name[64], tok[AUTH_TOKEN_LEN + 1];
    auth_principal who;
    json_t *out = NULL;
    qk_err e;
    (void)state;
    fixture_unique(name, sizeof(name), "tok-rev");
    create(name, "operator", 0, tok);
    assert_int_equal(tokens_revoke(&fx.svc, &admin, name, &out, &e), QK_OK);
    assert_string_equal(json_string_value(json_object_get(out, "name")), name);
    assert_false(json_is_null(json_object_get(out, "revoked_at")));
    json_decref(out);
    assert_int_equal(auth_lookup(fx.svc.db, tok, &who), DB_NOT_FOUND);
    assert_int_equal(tokens_revoke(&fx.svc, &admin, name, &out, &e), QK_NOT_FOUND);
    assert_string_equal(e.code, "not_found");
    assert_int_equal(tokens_revoke(&fx.svc, &admin, "not a name", &out, &e), QK_INVALID);
    assert_string_equal(e.code, "invalid_name");
    /* The name is free again. */
    create(name, "operator", 0, tok);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(create_token),
        cmocka_unit_test(create_refusals),
        cmocka_unit_test(list_tokens),
        cmocka_unit_test(revoke_token),
    };
    return cmocka_run_group_tests(tests, setup, fixture_teardown);
}
