/* device_common — device field checks, route paths, record rendering. */
#include "device_common.h"

#include <stdlib.h>
#include <string.h>

#include "exitcodes.h"
#include "output.h"

#define TYPE_MAX 32
#define GROUP_MAX 64

static bool is_lower_or_digit(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
}

static bool is_alnum(char c)
{
    return is_lower_or_digit(c) || (c >= 'A' && c <= 'Z');
}

bool device_id_ok(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > DEVICE_ID_MAX)
        return false;
    for (const char *p = s; *p; p++)
        if (*p < 0x21 || *p > 0x7e || strchr("/\\%?#", *p))
            return false;
    return true;
}

bool device_type_ok(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > TYPE_MAX || s[0] < 'a' || s[0] > 'z')
        return false;
    for (const char *p = s; *p; p++)
        if (!is_lower_or_digit(*p) && *p != '_' && *p != '-')
            return false;
    return true;
}

bool device_group_ok(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > GROUP_MAX || !is_alnum(s[0]))
        return false;
    for (const char *p = s; *p; p++)
        if (!is_alnum(*p) && *p != '.' && *p != '_' && *p != '-')
            return false;
    return true;
}

int device_check_id(const char *what, const char *s)
{
    if (device_id_ok(s))
        return EXIT_OK;
    out_error("bad %s '%s': use 1-%d printable ASCII characters, no spaces and none of "
              "/ \\ %% ? #",
              what, out_safe(s), DEVICE_ID_MAX);
    return EXIT_USAGE;
}

int device_check_type(const char *what, const char *s)
{
    if (device_type_ok(s))
        return EXIT_OK;
    out_error("bad %s '%s': use a lowercase letter, then up to %d of a-z 0-9 _ -",
              what, out_safe(s), TYPE_MAX - 1);
    return EXIT_USAGE;
}

int device_check_group(const char *what, const char *s)
{
    if (device_group_ok(s))
        return EXIT_OK;
    out_error("bad %s '%s': use 1-%d of A-Z a-z 0-9 . _ -, starting with a letter or digit",
              what, out_safe(s), GROUP_MAX);
    return EXIT_USAGE;
}

int device_check_key_bits(const char *what, const char *s, long *bits)
{
    if (!s)
        return EXIT_OK;
    if (strcmp(s, "128") == 0 || strcmp(s, "256") == 0) {
        *bits = strtol(s, NULL, 10);
        return EXIT_OK;
    }
    out_error("%s must be 128 or 256", what);
    return EXIT_USAGE;
}

int device_put(json_t *o, const char *key, json_t *value)
{
    /* json_object_set_new takes value even when it fails. */
    if (!value || json_object_set_new(o, key, value) != 0) {
        out_error("out of memory");
        return EXIT_INTERNAL;
    }
    return EXIT_OK;
}

const struct resource device_resource = {
    .base = "/v1/admin/devices",
    .what = "device ID",
    .check = device_check_id,
};

int device_print_keys(const json_t *owner, bool kcv)
{
    static const char *const headers[] = {"INDEX",     "ALG",       "STATE",    "EXPIRED",
                                          "NOT-AFTER", "RETIRE-AT", "EXPORTED", "KCV"};
    static const char *const fields[] = {"index",     "algorithm", "state",       "expired",
                                         "not_after", "retire_at", "exported_at", "kcv"};

    const json_t *keys = resource_items(owner, "keys");
    return keys ? out_table(keys, kcv ? 8 : 7, headers, fields) : EXIT_SERVER;
}

int device_print_record(const json_t *record)
{
    json_t *fields = NULL;
    int rc = EXIT_SERVER;

    if (!json_is_object(record)) {
        out_error("server response is not a device record");
        goto cleanup;
    }
    /* A shallow copy: the keys get a table of their own below. */
    rc = EXIT_INTERNAL;
    if (!(fields = json_copy((json_t *)record))) {
        out_error("out of memory");
        goto cleanup;
    }
    json_object_del(fields, "keys"); /* absent is fine */
    rc = out_kv(fields);
    if (rc)
        goto cleanup;
    fputc('\n', stdout);
    rc = device_print_keys(record, false);

cleanup:
    json_decref(fields);
    return rc;
}
