/*
 * fuzz_import_file — kmsctl's device import file reader (cli/import_file.c:
 * format detection, BOM, CRLF, the CSV header, quoted fields that span lines,
 * JSON lines), as `kmsctl device import FILE` drives it.
 *
 * Input: byte 0 chooses the --format (csv, jsonl, or detect); the rest is
 * the file, written to a memfd that import_open reads through
 * /proc/self/fd. Every row that comes back is either a registration object
 * with its integer "line", or a parse_error result shaped like the server's.
 */
#include "fuzz_common.h"

#include <sys/mman.h>

#include "exitcodes.h"
#include "import_file.h"

static int fd = -1;
static char path[64];

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fuzz_quiet();
    fd = memfd_create("fuzz-import", MFD_CLOEXEC);
    FUZZ_CHECK(fd >= 0);
    snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
    return 0;
}

static void check_row(const json_t *row, bool parsed)
{
    const json_t *line = json_object_get(row, "line");
    FUZZ_CHECK(json_is_object(row) && json_is_integer(line) && json_integer_value(line) >= 1);
    if (!parsed) {
        const json_t *e = json_object_get(row, "error");
        FUZZ_CHECK(!strcmp(json_string_value(json_object_get(row, "status")), "error"));
        FUZZ_CHECK(!strcmp(json_string_value(json_object_get(e, "code")), "parse_error"));
        FUZZ_CHECK(json_string_value(json_object_get(e, "message")) != NULL);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const char *const formats[] = {NULL, "csv", "jsonl"};
    struct import_file *f = NULL;
    const char *format;

    if (size < 1)
        return 0;
    format = formats[data[0] % 3];
    FUZZ_CHECK(ftruncate(fd, 0) == 0);
    FUZZ_CHECK(pwrite(fd, data + 1, size - 1, 0) == (ssize_t)(size - 1));
    if (import_open(path, format, &f) != EXIT_OK) {
        FUZZ_CHECK(f == NULL);
        return 0;
    }
    for (size_t n = 0; n < 100000; n++) {
        json_t *row = NULL;
        bool parsed = false;
        int rc = import_next(f, &row, &parsed);
        FUZZ_CHECK(rc == EXIT_OK && "import_next failed on a readable file");
        if (!row)
            break;
        check_row(row, parsed);
        json_decref(row);
    }
    import_close(f);
    return 0;
}
