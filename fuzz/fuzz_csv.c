/*
 * fuzz_csv — kmsctl's RFC 4180 record splitter (cli/csv.c csv_split).
 * Properties: CSV_OK gives at least one field, none holding a NUL; quoting
 * each field again (RFC 4180: in quotes, '"' doubled) and joining with ','
 * splits back to the same fields.
 */
#include "fuzz_common.h"

#include "csv.h"

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fuzz_quiet();
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct csv_record rec, again;
    const char *why = NULL;
    enum csv_result r = csv_split((const char *)data, size, &rec, &why);
    char *joined, *p;
    size_t cap = 1;

    if (r != CSV_OK) {
        FUZZ_CHECK(rec.n == 0 && rec.field == NULL);
        FUZZ_CHECK(r != CSV_BAD || why != NULL);
        return 0;
    }
    FUZZ_CHECK(rec.n >= 1);
    for (size_t i = 0; i < rec.n; i++)
        cap += 2 * strlen(rec.field[i]) + 3;
    joined = p = malloc(cap);
    FUZZ_CHECK(joined != NULL);
    for (size_t i = 0; i < rec.n; i++) {
        if (i)
            *p++ = ',';
        *p++ = '"';
        for (const char *s = rec.field[i]; *s; s++) {
            if (*s == '"')
                *p++ = '"';
            *p++ = *s;
        }
        *p++ = '"';
    }
    FUZZ_CHECK(csv_split(joined, (size_t)(p - joined), &again, &why) == CSV_OK);
    FUZZ_CHECK(again.n == rec.n);
    for (size_t i = 0; i < rec.n; i++)
        FUZZ_CHECK(!strcmp(again.field[i], rec.field[i]));
    csv_record_free(&again);
    csv_record_free(&rec);
    free(joined);
    return 0;
}
