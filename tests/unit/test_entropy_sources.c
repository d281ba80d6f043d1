/* Unit tests: decoding QRNG HTTP bodies (raw, hex, base64, JSON paths). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "entropy/entropy_source.h"

static long dec(const char *body, const char *path, const char *fmt, uint8_t *out, size_t cap)
{
    char err[128] = "";
    return esrc_decode_body(body, strlen(body), path, fmt, out, cap, err, sizeof(err));
}

static void formats(void **state)
{
    uint8_t out[16];
    (void)state;
    assert_int_equal(dec("ABC", NULL, "raw", out, sizeof(out)), 3);
    assert_memory_equal(out, "ABC", 3);
    assert_int_equal(dec("00ff10\n", NULL, "hex", out, sizeof(out)), 3);
    assert_memory_equal(out, "\x00\xff\x10", 3);
    assert_int_equal(dec("zz", NULL, "hex", out, sizeof(out)), -1);
    assert_int_equal(dec("AP8Q", NULL, "base64", out, sizeof(out)), 3);
    assert_memory_equal(out, "\x00\xff\x10", 3);
    assert_int_equal(dec("AP8=", NULL, "base64", out, sizeof(out)), 2);
    assert_int_equal(dec("AP", NULL, "base64", out, sizeof(out)), -1);
    assert_int_equal(dec("!!!!", NULL, "base64", out, sizeof(out)), -1);
    /* Never more than the caller's buffer. */
    assert_int_equal(dec("0011223344", NULL, "hex", out, 2), 2);
}

/* Found by fuzz/fuzz_qrng_decode.c: EVP_DecodeBlock alone skips white
 * space around the text and decodes '=' anywhere as zero bits, so these
 * bodies gave bytes the source never sent (two zero bytes for the first). */
static void base64_strict(void **state)
{
    uint8_t out[16];
    (void)state;
    assert_int_equal(dec("AA==    ", NULL, "base64", out, sizeof(out)), -1);
    assert_int_equal(dec("    AAAA", NULL, "base64", out, sizeof(out)), -1);
    assert_int_equal(dec("7777777=77777777", NULL, "base64", out, sizeof(out)), -1);
    assert_int_equal(dec("AA=A", NULL, "base64", out, sizeof(out)), -1);
    assert_int_equal(dec("A===", NULL, "base64", out, sizeof(out)), -1);
    assert_int_equal(dec("AAAA\tAAA", NULL, "base64", out, sizeof(out)), -1);
    /* Still accepted: padding at the end, a trailing line break. */
    assert_int_equal(dec("AP8Q/+8=\r\n", NULL, "base64", out, sizeof(out)), 5);
    assert_memory_equal(out, "\x00\xff\x10\xff\xef", 5);
}

static void json_paths(void **state)
{
    uint8_t out[16];
    (void)state;
    assert_int_equal(dec("{\"data\":\"0a0b\"}", "data", "hex", out, sizeof(out)), 2);
    assert_memory_equal(out, "\x0a\x0b", 2);
    assert_int_equal(dec("{\"result\":{\"random\":{\"data\":\"AP8Q\"}}}", "result.random.data",
                         "base64", out, sizeof(out)), 3);
    assert_int_equal(dec("{\"result\":{}}", "result.random.data", "hex", out, sizeof(out)), -1);
    assert_int_equal(dec("{\"data\":12}", "data", "hex", out, sizeof(out)), -1);
    assert_int_equal(dec("not json", "data", "hex", out, sizeof(out)), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {cmocka_unit_test(formats), cmocka_unit_test(base64_strict),
                                       cmocka_unit_test(json_paths)};
    return cmocka_run_group_tests_name("entropy_sources", tests, NULL, NULL);
}
