/* Unit tests: routing, request ids, tokens, hex, error classification. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "service/auth.h"
#include "store/db.h"
#include "entropy/entropy.h"
#include "hexutil.h"
#include "api/server.h"
#include "keywrap.h"
#include "p11.h"
#include "service/events.h"
#include "service/password.h"
#include "timetext.h"
#include "utf8.h"

static void dummy(http_request *rq, http_response *rs) { (void)rq; (void)rs; }

static const http_route rt[] = {
    {"GET", "/healthz", "healthz", 0, dummy, 0, false, DOOR_ALL | DOOR_METRICS, RL_NONE, false,
     false},
    {"GET", "/v1/admin/tokens", "list", ROLE_ADMIN, dummy, 0, false, DOOR_ADMIN, RL_ADMIN, false,
     false},
    {"POST", "/v1/admin/tokens", "create", ROLE_ADMIN, dummy, 0, false, DOOR_ADMIN, RL_ADMIN,
     false, false},
    {"DELETE", "/v1/admin/tokens/{name}", "revoke", ROLE_ADMIN, dummy, 0, false, DOOR_ADMIN,
     RL_ADMIN, false, false},
    {"GET", "/v1/x/{a}/y/{b}", "two", 0, dummy, 0, false, DOOR_ALL, RL_NONE, false, false},
    {"POST", "/v1/sessions/key", "session_key", 0, dummy, 0, false, DOOR_DEVICE, RL_DEVICE, true,
     false},
};

static int find_at(unsigned door, const char *m, const char *p, const char **params, int *np,
                   char *allow)
{
    static char buf[256];
    return http_route_find(rt, 6, door, m, p, buf, sizeof(buf), params, np, allow, 64);
}

static int find(const char *m, const char *p, const char **params, int *np, char *allow)
{
    return find_at(DOOR_ALL, m, p, params, np, allow); /* one listener serves all */
}

static void routing(void **state)
{
    const char *params[HTTP_MAX_PARAMS];
    int np = -1;
    char allow[64];
    (void)state;
    assert_int_equal(find("GET", "/healthz", params, &np, allow), 0);
    assert_int_equal(np, 0);
    assert_int_equal(find("POST", "/v1/admin/tokens", params, &np, allow), 2);
    assert_int_equal(find("DELETE", "/v1/admin/tokens/ops-1", params, &np, allow), 3);
    assert_int_equal(np, 1);
    assert_string_equal(params[0], "ops-1");
    assert_int_equal(find("GET", "/v1/x/aa/y/bb", params, &np, allow), 4);
    assert_int_equal(np, 2);
    assert_string_equal(params[0], "aa");
    assert_string_equal(params[1], "bb");
    /* Wrong method on a known path: 405 with the allowed methods. */
    assert_int_equal(find("PUT", "/v1/admin/tokens", params, &np, allow), -405);
    assert_string_equal(allow, "GET, POST");
    /* Unknown, trailing slash, empty segment, extra segment: 404. */
    assert_int_equal(find("GET", "/nope", params, &np, allow), -404);
    assert_int_equal(find("GET", "/healthz/", params, &np, allow), -404);
    assert_int_equal(find("DELETE", "/v1/admin/tokens/", params, &np, allow), -404);
    assert_int_equal(find("DELETE", "/v1/admin/tokens/a/b", params, &np, allow), -404);
    assert_int_equal(find("GET", "", params, &np, allow), -404);
}

/* A route another listener serves does not exist here: 404, not 405. */
static void routing_doors(void **state)
{
    const char *params[HTTP_MAX_PARAMS];
    int np = -1;
    char allow[64];
    (void)state;
    assert_int_equal(find_at(DOOR_DEVICE, "GET", "/healthz", params, &np, allow), 0);
    assert_int_equal(find_at(DOOR_ADMIN, "GET", "/healthz", params, &np, allow), 0);
    assert_int_equal(find_at(DOOR_ADMIN, "GET", "/v1/admin/tokens", params, &np, allow), 1);
    assert_int_equal(find_at(DOOR_DEVICE, "GET", "/v1/admin/tokens", params, &np, allow), -404);
    assert_int_equal(find_at(DOOR_DEVICE, "PUT", "/v1/admin/tokens", params, &np, allow), -404);
    assert_string_equal(allow, "");
    assert_int_equal(find_at(DOOR_DEVICE, "DELETE", "/v1/admin/tokens/x", params, &np, allow),
                     -404);
    assert_int_equal(find_at(DOOR_DEVICE, "POST", "/v1/sessions/key", params, &np, allow), 5);
    assert_int_equal(find_at(DOOR_DEVICE, "GET", "/v1/sessions/key", params, &np, allow), -405);
    assert_string_equal(allow, "POST");
    assert_int_equal(find_at(DOOR_ADMIN, "POST", "/v1/sessions/key", params, &np, allow), -404);
    assert_int_equal(find_at(DOOR_ADMIN, "GET", "/v1/sessions/key", params, &np, allow), -404);
    assert_int_equal(find("POST", "/v1/sessions/key", params, &np, allow), 5);
    /* The metrics listener: its routes, and nothing else exists there. */
    assert_int_equal(find_at(DOOR_METRICS, "GET", "/healthz", params, &np, allow), 0);
    assert_int_equal(find_at(DOOR_METRICS, "GET", "/v1/admin/tokens", params, &np, allow), -404);
    assert_int_equal(find_at(DOOR_METRICS, "POST", "/v1/sessions/key", params, &np, allow), -404);
    assert_int_equal(find_at(DOOR_METRICS, "GET", "/v1/x/a/y/b", params, &np, allow), -404);
}

static void request_ids(void **state)
{
    (void)state;
    assert_true(http_request_id_ok("abc-123_X.y"));
    assert_false(http_request_id_ok(""));
    assert_false(http_request_id_ok(NULL));
    assert_false(http_request_id_ok("a b"));
    assert_false(http_request_id_ok("a\nb"));
    assert_false(http_request_id_ok("{\"x\":1}"));
    char longid[70];
    memset(longid, 'a', 65);
    longid[65] = 0;
    assert_false(http_request_id_ok(longid));
}

static void bearer_and_tokens(void **state)
{
    char tok[128];
    (void)state;
    assert_int_equal(auth_bearer("Bearer abc", tok, sizeof(tok)), 0);
    assert_string_equal(tok, "abc");
    assert_int_equal(auth_bearer("bearer   abc  ", tok, sizeof(tok)), 0);
    assert_string_equal(tok, "abc");
    assert_int_equal(auth_bearer("Basic abc", tok, sizeof(tok)), -1);
    assert_int_equal(auth_bearer("Bearer ", tok, sizeof(tok)), -1);
    assert_int_equal(auth_bearer(NULL, tok, sizeof(tok)), -1);
    assert_int_equal(auth_bearer("Bearer 0123456789", tok, 5), -1);

    assert_true(auth_token_well_formed(
        "qkms_0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"));
    assert_false(auth_token_well_formed(
        "qkms_0123456789ABCDEF0123456789abcdef0123456789abcdef0123456789abcdef"));
    assert_false(auth_token_well_formed("qkms_00"));
    assert_false(auth_token_well_formed(
        "xkms_0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"));
}

static void names_and_roles(void **state)
{
    (void)state;
    assert_true(auth_name_valid("ops-1"));
    assert_true(auth_name_valid("a"));
    assert_true(auth_name_valid("A.b_c-9"));
    assert_false(auth_name_valid(""));
    assert_false(auth_name_valid("-x"));
    assert_false(auth_name_valid(".x"));
    assert_false(auth_name_valid("a b"));
    assert_false(auth_name_valid("a/b"));
    assert_false(auth_name_valid("caf\xc3\xa9"));
    char n65[66];
    memset(n65, 'a', 65);
    n65[65] = 0;
    assert_false(auth_name_valid(n65));
    n65[64] = 0;
    assert_true(auth_name_valid(n65));
    assert_int_equal(auth_role_parse("admin"), ROLE_ADMIN);
    assert_int_equal(auth_role_parse("operator"), ROLE_OPERATOR);
    assert_int_equal(auth_role_parse("auditor"), ROLE_AUDITOR);
    assert_int_equal(auth_role_parse("root"), 0);
    assert_int_equal(auth_role_parse(NULL), 0);
}

static void hex(void **state)
{
    uint8_t b[4];
    char s[9];
    (void)state;
    qkms_hex_encode((const uint8_t *)"\x00\xff\x10\xab", 4, s);
    assert_string_equal(s, "00ff10ab");
    assert_int_equal(qkms_hex_decode("00FF10ab", 8, b, 4), 4);
    assert_memory_equal(b, "\x00\xff\x10\xab", 4);
    assert_int_equal(qkms_hex_decode("abc", 3, b, 4), -1);
    assert_int_equal(qkms_hex_decode("zz", 2, b, 4), -1);
    assert_int_equal(qkms_hex_decode("0011223344", 10, b, 4), -1);
}

static void sqlstate_classes(void **state)
{
    (void)state;
    assert_int_equal(db_classify_sqlstate("40001"), DB_RETRY);
    assert_int_equal(db_classify_sqlstate("40P01"), DB_RETRY);
    assert_int_equal(db_classify_sqlstate("23505"), DB_CONFLICT);
    assert_int_equal(db_classify_sqlstate("23514"), DB_INVALID);
    assert_int_equal(db_classify_sqlstate("08006"), DB_UNAVAILABLE);
    assert_int_equal(db_classify_sqlstate("57P01"), DB_UNAVAILABLE);
    assert_int_equal(db_classify_sqlstate("57014"), DB_UNAVAILABLE);
    assert_int_equal(db_classify_sqlstate(NULL), DB_UNAVAILABLE);
    assert_int_equal(db_classify_sqlstate("42P01"), DB_ERROR);
}

static void ckr_mapping(void **state)
{
    (void)state;
    assert_string_equal(p11_rv_name(CKR_PIN_INCORRECT), "CKR_PIN_INCORRECT");
    assert_string_equal(p11_rv_name(CKR_DEVICE_REMOVED), "CKR_DEVICE_REMOVED");
    assert_string_equal(p11_rv_name(0x80001234UL), "CKR_VENDOR_OR_UNKNOWN");
    assert_int_equal(p11_rv_kind(CKR_OK), P11_KIND_OK);
    assert_int_equal(p11_rv_kind(CKR_DEVICE_REMOVED), P11_KIND_UNAVAILABLE);
    assert_int_equal(p11_rv_kind(CKR_TOKEN_NOT_PRESENT), P11_KIND_UNAVAILABLE);
    assert_int_equal(p11_rv_kind(CKR_SESSION_HANDLE_INVALID), P11_KIND_UNAVAILABLE);
    assert_int_equal(p11_rv_kind(P11_RV_TIMEOUT), P11_KIND_UNAVAILABLE);
    assert_int_equal(p11_rv_kind(CKR_PIN_LOCKED), P11_KIND_AUTH);
    assert_int_equal(p11_rv_kind(CKR_ENCRYPTED_DATA_INVALID), P11_KIND_DATA);
    assert_int_equal(p11_rv_kind(CKR_MECHANISM_INVALID), P11_KIND_CONFIG);
}

static void wrap_blob_header(void **state)
{
    uint8_t blob[KEYWRAP_OVERHEAD + 16] = {KEYWRAP_FORMAT, 0, 0, 1, 2};
    (void)state;
    assert_int_equal(keywrap_blob_version(blob, sizeof(blob)), 258);
    assert_int_equal(keywrap_blob_version(blob, KEYWRAP_OVERHEAD), 0); /* no ciphertext */
    blob[0] = 2;
    assert_int_equal(keywrap_blob_version(blob, sizeof(blob)), 0);
}

static void stuck_entropy_block(void **state)
{
    uint8_t b[32];
    (void)state;
    memset(b, 0x5a, sizeof(b));
    assert_true(entropy_block_looks_stuck(b, sizeof(b)));
    b[31] = 0x5b;
    assert_false(entropy_block_looks_stuck(b, sizeof(b)));
    assert_false(entropy_block_looks_stuck(b, 8)); /* too short to judge */
}

static void client_keys(void **state)
{
    char k[80];
    (void)state;
    http_client_key("192.0.2.7", k, sizeof(k));
    assert_string_equal(k, "192.0.2.7");
    /* One host holds a /64: every address in it shares one bucket. */
    http_client_key("2001:db8:1:2:aaaa:bbbb:cccc:dddd", k, sizeof(k));
    assert_string_equal(k, "2001:db8:1:2::/64");
    http_client_key("2001:db8:1:2::1", k, sizeof(k));
    assert_string_equal(k, "2001:db8:1:2::/64");
    http_client_key("2001:db8:1:3::1", k, sizeof(k));
    assert_string_equal(k, "2001:db8:1:3::/64");
    http_client_key("::ffff:192.0.2.7", k, sizeof(k)); /* mapped: as IPv4, whole */
    assert_string_equal(k, "::ffff:192.0.2.7");
    http_client_key("?", k, sizeof(k));
    assert_string_equal(k, "?");
}

static void token_paths_redacted(void **state)
{
    char out[200];
    const char *tok = "qkms_0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    char path[160];
    (void)state;
    snprintf(path, sizeof(path), "/v1/admin/tokens/%s", tok);
    http_path_for_log(path, out, sizeof(out));
    assert_string_equal(out, "/v1/admin/tokens/qkms_<redacted>");
    snprintf(path, sizeof(path), "/x/%s/y?t=%s", tok, tok);
    http_path_for_log(path, out, sizeof(out));
    assert_string_equal(out, "/x/qkms_<redacted>/y?t=qkms_<redacted>");
    /* A token name that merely starts with the prefix stays. */
    http_path_for_log("/v1/admin/tokens/qkms_ops", out, sizeof(out));
    assert_string_equal(out, "/v1/admin/tokens/qkms_ops");
    http_path_for_log("/v1/admin/tokens/qkms_0123", out, 12);
    assert_string_equal(out, "/v1/admin/t");
}

static void utf8_repair(void **state)
{
    char out[64];
    bool repl;
    (void)state;
    assert_true(utf8_valid("abc \xc3\xa9 \xe2\x82\xac \xf0\x9f\x94\x91", 15));
    assert_false(utf8_valid("a\xc3", 2));          /* cut inside a character */
    assert_false(utf8_valid("\xc0\xaf", 2));      /* overlong '/' */
    assert_false(utf8_valid("\xed\xa0\x80", 3));  /* surrogate */
    assert_false(utf8_valid("\xf4\x90\x80\x80", 4)); /* above U+10FFFF */
    assert_false(utf8_valid("\xff", 1));
    assert_int_equal(utf8_sanitize("ab\xff" "c", 4, out, sizeof(out), &repl), 6);
    assert_string_equal(out, "ab\xef\xbf\xbd" "c");
    assert_true(repl);
    utf8_sanitize("a\xc3", 2, out, sizeof(out), &repl);
    assert_string_equal(out, "a\xef\xbf\xbd");
    utf8_sanitize("\xc3\xa9t\xc3\xa9", 5, out, sizeof(out), &repl);
    assert_string_equal(out, "\xc3\xa9t\xc3\xa9");
    assert_false(repl);
    /* A full buffer ends on a whole character: 4 bytes fit "a" + one é. */
    assert_int_equal(utf8_sanitize("a\xc3\xa9\xc3\xa9", 5, out, 5, NULL), 3);
    assert_string_equal(out, "a\xc3\xa9");
    assert_int_equal(utf8_sanitize("x", 1, out, 0, NULL), 0);
}

/* The operator's times (audit since, a device's end of service). */
static void time_texts(void **state)
{
    (void)state;
    assert_true(timetext_valid("2027-01-31T00:00:00Z", false));
    assert_true(timetext_valid("2027-01-31t23:59:60.123456789z", false));
    assert_true(timetext_valid("2027-01-31T08:00:00+08:00", false));
    assert_true(timetext_valid("2027-01-31T08:00:00-05:30", true));
    assert_true(timetext_valid("2027-01-31", true));
    assert_false(timetext_valid("2027-01-31", false));
    assert_false(timetext_valid(NULL, true));
    assert_false(timetext_valid("", true));
    assert_false(timetext_valid("2027-01-31T00:00:00", false));     /* no zone */
    assert_false(timetext_valid("2027-01-31 00:00:00Z", false));    /* space */
    assert_false(timetext_valid("2027-01-31T00:00:00.Z", false));   /* empty fraction */
    assert_false(timetext_valid("2027-01-31T00:00:00.1234567890Z", false));
    assert_false(timetext_valid("2027-01-31T00:00:00+0800", false));
    assert_false(timetext_valid("2027-01-31T00:00:00Zjunk", false));
    assert_false(timetext_valid("tomorrow", true));
    assert_false(timetext_valid("27-01-31", true));
}

/* Gateway passwords: scrypt round trip, a wrong password or salt fails. */
static void password_hashes(void **state)
{
    password_cost c = {1024, 8, 1}, huge = {(uint64_t)1 << 24, 8, 1}, top = {(uint64_t)1 << 20, 8, 1};
    uint8_t salt[PASSWORD_SALT_LEN], hash[PASSWORD_HASH_LEN], salt2[PASSWORD_SALT_LEN],
        hash2[PASSWORD_HASH_LEN];
    (void)state;
    assert_int_equal(password_hash((const uint8_t *)"s3cret-pass", 11, &c, salt, hash), 0);
    assert_int_equal(password_check((const uint8_t *)"s3cret-pass", 11, &c, salt, hash), 1);
    assert_int_equal(password_check((const uint8_t *)"s3cret-pasS", 11, &c, salt, hash), 0);
    assert_int_equal(password_check((const uint8_t *)"s3cret-pas", 10, &c, salt, hash), 0);
    /* A fresh salt each time: the same password hashes differently. */
    assert_int_equal(password_hash((const uint8_t *)"s3cret-pass", 11, &c, salt2, hash2), 0);
    assert_memory_not_equal(salt, salt2, sizeof(salt));
    assert_memory_not_equal(hash, hash2, sizeof(hash));
    salt[0] ^= 1;
    assert_int_equal(password_check((const uint8_t *)"s3cret-pass", 11, &c, salt, hash), 0);
    /* A cost over the memory bound (2 GiB) fails instead of exhausting the host. */
    assert_int_equal(password_check((const uint8_t *)"s3cret-pass", 11, &huge, salt, hash), -1);
    /* The largest the configuration allows (gateway_password_scrypt_log2n 20) fits. */
    assert_int_equal(password_hash((const uint8_t *)"s3cret-pass", 11, &top, salt, hash), 0);
}

/* The webhook signature (docs/gateways.md, "Events"): a vector computed
 * with Python's hmac module. */
static void event_signature(void **state)
{
    uint8_t secret[32];
    char sig[68];
    (void)state;
    memset(secret, 'k', sizeof(secret));
    assert_int_equal(events_sign(secret, sizeof(secret), 1700000000LL, "{\"id\":1}", 8, sig), 0);
    assert_string_equal(sig, "v1=b0dcba5a42969fb3cc9dbf46fb0278a25a6d777ca4b49a285591a893c6e32e1d");
}

/* A webhook's id: HMAC-SHA-256(secret, "qkms/webhook-id\n" || URL), the
 * same vector's way. */
static void webhook_id(void **state)
{
    uint8_t secret[32];
    char id[65];
    (void)state;
    memset(secret, 'k', sizeof(secret));
    assert_int_equal(events_webhook_id(secret, sizeof(secret),
                                       "https://hooks.example.com/T0/B1?token=x", id), 0);
    assert_string_equal(id, "1402d9793c0e077298bd6de4a22c35bf59ae37780421dc579190d4da30f81ca1");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(routing),
        cmocka_unit_test(routing_doors),
        cmocka_unit_test(request_ids),
        cmocka_unit_test(bearer_and_tokens), cmocka_unit_test(names_and_roles),
        cmocka_unit_test(hex),              cmocka_unit_test(sqlstate_classes),
        cmocka_unit_test(ckr_mapping),      cmocka_unit_test(wrap_blob_header),
        cmocka_unit_test(stuck_entropy_block), cmocka_unit_test(client_keys),
        cmocka_unit_test(utf8_repair), cmocka_unit_test(token_paths_redacted),
        cmocka_unit_test(time_texts), cmocka_unit_test(password_hashes),
        cmocka_unit_test(event_signature), cmocka_unit_test(webhook_id),
    };
    return cmocka_run_group_tests_name("validation", tests, NULL, NULL);
}
