/* Unit tests: configuration parsing and validation. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "config.h"

static void defaults_are_sane(void **state)
{
    kms_config c;
    (void)state;
    config_defaults(&c);
    assert_string_equal(c.listen_addr, "127.0.0.1");
    assert_int_equal(c.listen_port, 8470);
    assert_int_equal(c.db_pool_size, 8);
    assert_true(c.db_migrate);
    assert_string_equal(c.entropy_sources, "pkcs11,os");
    assert_null(c.db_conninfo);
    config_free(&c);
}

static void parses_values_comments_quotes(void **state)
{
    kms_config c;
    char err[256] = "";
    const char *text = "# comment\n"
                       "\n"
                       "listen_port = 9000   # trailing comment\n"
                       "db_conninfo = \"host=/tmp dbname=q # not a comment\"\n"
                       "   db_migrate=off\n"
                       "log_level = debug\n";
    (void)state;
    config_defaults(&c);
    assert_int_equal(config_parse_text(&c, text, "t.conf", err, sizeof(err)), 0);
    assert_int_equal(c.listen_port, 9000);
    assert_string_equal(c.db_conninfo, "host=/tmp dbname=q # not a comment");
    assert_false(c.db_migrate);
    assert_string_equal(c.log_level, "debug");
    config_free(&c);
}

static void expect_error(const char *text, const char *needle)
{
    kms_config c;
    char err[256] = "";
    config_defaults(&c);
    assert_int_equal(config_parse_text(&c, text, "k.conf", err, sizeof(err)), -1);
    if (!strstr(err, needle))
        fail_msg("error '%s' does not contain '%s'", err, needle);
    config_free(&c);
}

static void errors_name_the_line(void **state)
{
    (void)state;
    expect_error("listen_port = 1\nbogus = 2\n", "k.conf:2: unknown option 'bogus'");
    expect_error("\n\nlisten_port = 70000\n", "k.conf:3: option 'listen_port': expected an integer from 1 to 65535");
    expect_error("listen_port = 12x\n", "k.conf:1:");
    expect_error("db_migrate = maybe\n", "expected true or false");
    expect_error("log_level = loud\n", "expected one of debug|info|warn|error");
    expect_error("http_threading = fork\n", "expected one of connection|pool");
    expect_error("listen_port\n", "k.conf:1: expected 'key = value'");
    expect_error("db_conninfo = \"abc\n", "unterminated quote");
    expect_error("listen_port = 1\nlisten_port = 2\n", "k.conf:2: option 'listen_port' set twice");
    expect_error("Listen_Port = 1\n", "invalid option name");
}

static void secret_values_stay_out_of_errors(void **state)
{
    kms_config c;
    char err[256] = "";
    (void)state;
    config_defaults(&c);
    assert_int_equal(config_parse_text(&c, "pkcs11_pin = 123456\nlisten_port = zz\n", "s.conf", err,
                                       sizeof(err)),
                     -1);
    assert_null(strstr(err, "123456"));
    config_free(&c);
}

static void env_overrides_file(void **state)
{
    kms_config c;
    char err[256] = "";
    (void)state;
    config_defaults(&c);
    assert_int_equal(config_parse_text(&c, "listen_port = 9000\n", "e.conf", err, sizeof(err)), 0);
    setenv("QKMS_LISTEN_PORT", "9100", 1);
    setenv("QKMS_DB_POOL_SIZE", "3", 1);
    assert_int_equal(config_apply_env(&c, err, sizeof(err)), 0);
    assert_int_equal(c.listen_port, 9100);
    assert_int_equal(c.db_pool_size, 3);
    setenv("QKMS_DB_POOL_SIZE", "0", 1);
    assert_int_equal(config_apply_env(&c, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "QKMS_DB_POOL_SIZE"));
    unsetenv("QKMS_LISTEN_PORT");
    unsetenv("QKMS_DB_POOL_SIZE");
    config_free(&c);
}

static void finish_requires_db_and_pin(void **state)
{
    kms_config c;
    char err[256] = "";
    (void)state;
    config_defaults(&c);
    assert_int_equal(config_finish(&c, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "db_conninfo"));
    assert_int_equal(config_set(&c, "db_conninfo", "dbname=x", err, sizeof(err)), 0);
    assert_int_equal(config_finish(&c, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "PIN"));
    assert_int_equal(config_set(&c, "pkcs11_pin_file", "/nonexistent/pin", err, sizeof(err)), 0);
    assert_int_equal(config_finish(&c, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "/nonexistent/pin"));
    config_free(&c);
}

static void pin_file_trailing_newline_dropped(void **state)
{
    kms_config c;
    char err[256] = "", path[] = "/tmp/qkms-pin-XXXXXX";
    int fd = mkstemp(path);
    (void)state;
    assert_true(fd >= 0);
    assert_int_equal(write(fd, "987654\n", 7), 7);
    close(fd);
    config_defaults(&c);
    config_set(&c, "db_conninfo", "dbname=x", err, sizeof(err));
    config_set(&c, "pkcs11_pin_file", path, err, sizeof(err));
    assert_int_equal(config_finish(&c, err, sizeof(err)), 0);
    assert_string_equal(c.pkcs11_pin, "987654");
    unlink(path);
    config_free(&c);
}

static void tls_files_go_together(void **state)
{
    kms_config c;
    char err[256] = "";
    (void)state;
    config_defaults(&c);
    config_set(&c, "db_conninfo", "dbname=x", err, sizeof(err));
    config_set(&c, "pkcs11_pin", "1234", err, sizeof(err));
    config_set(&c, "tls_cert_file", "/x.pem", err, sizeof(err));
    assert_int_equal(config_finish(&c, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "tls_key_file"));
    config_free(&c);
}

static void hash_ignores_secrets_and_tracks_settings(void **state)
{
    kms_config a, b;
    char ha[65], hb[65], err[64];
    (void)state;
    config_defaults(&a);
    config_defaults(&b);
    config_set(&b, "pkcs11_pin", "secret", err, sizeof(err));
    config_hash(&a, ha);
    config_hash(&b, hb);
    assert_string_equal(ha, hb);
    config_set(&b, "listen_port", "9999", err, sizeof(err));
    config_hash(&b, hb);
    assert_string_not_equal(ha, hb);
    config_free(&a);
    config_free(&b);
}

/* Credentials read from the environment are wiped where they lived and
 * unset, so no child process and no /proc/<pid>/environ reader gets them;
 * other variables stay. */
static void env_secrets_scrubbed_after_reading(void **state)
{
    kms_config c;
    char err[256] = "";
    char pin_var[] = "QKMS_PKCS11_PIN=424242";
    (void)state;
    /* putenv: the string itself is the environment entry, so the test can
     * see that its bytes were overwritten, not just unlinked. */
    assert_int_equal(putenv(pin_var), 0);
    setenv("QKMS_DB_CONNINFO", "dbname=x password=hunter2", 1);
    setenv("QKMS_ENTROPY_HTTP_URL", "https://q.example/r?key=abc", 1);
    setenv("QKMS_ENTROPY_EXEC_COMMAND", "/opt/q --api-key abc", 1);
    setenv("QKMS_LISTEN_PORT", "9100", 1);
    config_defaults(&c);
    assert_int_equal(config_apply_env(&c, err, sizeof(err)), 0);
    assert_string_equal(c.pkcs11_pin, "424242");
    assert_string_equal(c.db_conninfo, "dbname=x password=hunter2");
    assert_string_equal(c.entropy_http_url, "https://q.example/r?key=abc");
    assert_string_equal(c.entropy_exec_command, "/opt/q --api-key abc");
    assert_int_equal(c.listen_port, 9100);
    assert_null(getenv("QKMS_PKCS11_PIN"));
    assert_null(getenv("QKMS_DB_CONNINFO"));
    assert_null(getenv("QKMS_ENTROPY_HTTP_URL"));
    assert_null(getenv("QKMS_ENTROPY_EXEC_COMMAND"));
    assert_null(strstr(pin_var, "424242"));
    assert_string_equal(getenv("QKMS_LISTEN_PORT"), "9100");
    unsetenv("QKMS_LISTEN_PORT");
    /* A reload checks what it can change without the secrets. */
    free(c.db_conninfo);
    c.db_conninfo = NULL;
    config_forget_pin(&c);
    assert_null(c.pkcs11_pin);
    assert_int_equal(config_check(&c, err, sizeof(err)), 0);
    assert_int_equal(config_finish(&c, err, sizeof(err)), -1);
    config_free(&c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(defaults_are_sane),
        cmocka_unit_test(parses_values_comments_quotes),
        cmocka_unit_test(errors_name_the_line),
        cmocka_unit_test(secret_values_stay_out_of_errors),
        cmocka_unit_test(env_overrides_file),
        cmocka_unit_test(finish_requires_db_and_pin),
        cmocka_unit_test(pin_file_trailing_newline_dropped),
        cmocka_unit_test(tls_files_go_together),
        cmocka_unit_test(hash_ignores_secrets_and_tracks_settings),
        cmocka_unit_test(env_secrets_scrubbed_after_reading),
    };
    return cmocka_run_group_tests_name("config", tests, NULL, NULL);
}
