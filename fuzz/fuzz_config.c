/*
 * fuzz_config — kmsd's configuration file parser (kmsd/config.c
 * config_parse_text, as config_load_file calls it: text without NUL bytes),
 * then the effective-settings hash and the cross-option checks of
 * config_finish. pkcs11_pin_file is dropped before config_finish so the
 * fuzzer never makes kmsd read a file (that path is a plain fopen).
 * Refusals must name the source and line ("fuzz.conf:N: ...").
 */
#include "fuzz_common.h"

#include "config.h"

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fuzz_quiet();
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    kms_config c;
    char err[512], hash[65];
    char *text;

    if (size > (1u << 20) || memchr(data, 0, size))
        return 0; /* config_load_file refuses both before parsing */
    text = fuzz_strndup(data, size);
    config_defaults(&c);
    err[0] = 0;
    if (config_parse_text(&c, text, "fuzz.conf", err, sizeof(err)) != 0) {
        FUZZ_CHECK(!strncmp(err, "fuzz.conf:", 10));
    } else {
        config_hash(&c, hash);
        FUZZ_CHECK(strlen(hash) == 64);
        free(c.pkcs11_pin_file);
        c.pkcs11_pin_file = NULL;
        (void)config_finish(&c, err, sizeof(err));
    }
    config_free(&c);
    free(text);
    return 0;
}
