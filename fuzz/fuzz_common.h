/*
 * fuzz_common — what every libFuzzer target in fuzz/ shares (fuzz/README.md).
 *
 * Contract:
 *  - fuzz_quiet() sends the code under test's stdio stderr (kmsctl's
 *    messages) to /dev/null and turns kmsd's JSON log off, so a run prints
 *    only libFuzzer's and the sanitizers' reports (they write to fd 2
 *    directly). QKMS_FUZZ_VERBOSE=1 keeps both.
 *  - FUZZ_CHECK(cond) is a property the target asserts on top of the
 *    sanitizers: when it fails the input is a finding (abort, so libFuzzer
 *    keeps it as a crash artifact).
 *  - fuzz_vectors() is tests/vectors/protocol-v1.json, parsed once (the
 *    path is compiled in as FUZZ_VECTORS); NULL-safe callers only.
 *  - fuzz_vectors_v2() is tests/vectors/protocol-v2.json (FUZZ_VECTORS_V2).
 *  - fuzz_strndup() copies input bytes into a NUL-terminated heap string.
 */
#ifndef QKMS_FUZZ_COMMON_H
#define QKMS_FUZZ_COMMON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

#define FUZZ_CHECK(cond)                                                                         \
    do {                                                                                         \
        if (!(cond)) {                                                                           \
            dprintf(STDERR_FILENO, "FUZZ_CHECK failed: %s (%s:%d)\n", #cond, __FILE__, __LINE__); \
            abort();                                                                             \
        }                                                                                        \
    } while (0)

static inline bool fuzz_env_on(const char *name)
{
    const char *v = getenv(name);
    return v && !strcmp(v, "1");
}

/* Silences stdio stderr; kmsd targets also call log_set_level themselves
 * (the device and kmsctl targets do not link kmsd's log). */
static inline void fuzz_quiet(void)
{
    FILE *devnull;
    if (fuzz_env_on("QKMS_FUZZ_VERBOSE"))
        return;
    devnull = fopen("/dev/null", "w");
    if (devnull)
        stderr = devnull; /* fd 2 stays for libFuzzer and the sanitizers */
}

static inline char *fuzz_strndup(const uint8_t *data, size_t size)
{
    char *s = malloc(size + 1);
    FUZZ_CHECK(s != NULL);
    if (size)
        memcpy(s, data, size);
    s[size] = 0;
    return s;
}

#ifdef FUZZ_VECTORS
/* tests/vectors/protocol-v2.json (FUZZ_VECTORS_V2), parsed once. */
static inline json_t *fuzz_vectors_v2(void)
{
    static json_t *v;
    json_error_t je;
    if (!v) {
        v = json_load_file(FUZZ_VECTORS_V2, 0, &je);
        if (!json_is_array(json_object_get(v, "cases"))) {
            dprintf(STDERR_FILENO, "cannot load %s: %s\n", FUZZ_VECTORS_V2, je.text);
            abort();
        }
    }
    return v;
}

static inline json_t *fuzz_vectors(void)
{
    static json_t *v;
    json_error_t je;
    if (!v) {
        v = json_load_file(FUZZ_VECTORS, 0, &je);
        if (!json_is_array(v)) {
            dprintf(STDERR_FILENO, "cannot load %s: %s\n", FUZZ_VECTORS, je.text);
            abort();
        }
    }
    return v;
}
#endif

#endif
