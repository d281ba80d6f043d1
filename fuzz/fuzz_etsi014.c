/*
 * fuzz_etsi014 — the ETSI GS QKD 014 door's parsers (kmsd/api/etsi014.c):
 * byte 0 even, the body of POST enc_keys through parse_key_request; odd,
 * the body of POST dec_keys through parse_key_ids. What passes must be what
 * the service is promised (qkd.h's ranges, valid SAE IDs, UUIDs, no
 * duplicates); a refusal is a 400 with the standard's Error object.
 *
 * The static parsers are reached by compiling etsi014.c in (etsi014.o is
 * never pulled from the fuzz library: every symbol it defines is here).
 */
#include "fuzz_common.h"

#include "../kmsd/api/etsi014.c"

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fuzz_quiet();
    return 0;
}

static void check_refusal(http_response *rs)
{
    json_error_t je;
    json_t *o;
    FUZZ_CHECK(rs->status == 400 && rs->body);
    o = json_loads(rs->body, 0, &je);
    FUZZ_CHECK(json_is_string(json_object_get(o, "message")));
    json_decref(o);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    http_response rs;
    json_error_t je;
    json_t *o;

    if (size < 1)
        return 0;
    memset(&rs, 0, sizeof(rs));
    o = json_loadb((const char *)data + 1, size - 1, JSON_REJECT_DUPLICATES, &je);
    if (!json_is_object(o)) {
        json_decref(o);
        return 0;
    }
    if (data[0] % 2 == 0) {
        key_request kr;
        memset(&kr, 0, sizeof(kr));
        if (parse_key_request(&rs, o, "SAE-SLAVE", &kr) == 0) {
            FUZZ_CHECK(!rs.body);
            FUZZ_CHECK(kr.number >= 1 && kr.number <= QKD_MAX_KEY_PER_REQUEST);
            FUZZ_CHECK(kr.size >= QKD_MIN_KEY_SIZE && kr.size <= QKD_MAX_KEY_SIZE &&
                       kr.size % 8 == 0);
            FUZZ_CHECK(kr.nslaves >= 1 && kr.nslaves <= 1 + QKD_MAX_SAE_ID_COUNT);
            for (int i = 0; i < kr.nslaves; i++) {
                FUZZ_CHECK(qkd_sae_id_valid(kr.slaves[i]));
                for (int j = 0; j < i; j++)
                    FUZZ_CHECK(strcmp(kr.slaves[i], kr.slaves[j]) != 0);
            }
        } else {
            check_refusal(&rs);
        }
    } else {
        key_ids *k = calloc(1, sizeof(*k));
        FUZZ_CHECK(k != NULL);
        if (parse_key_ids(&rs, o, k) == 0) {
            FUZZ_CHECK(!rs.body && k->n >= 1 && k->n <= QKD_MAX_KEY_PER_REQUEST);
            for (int i = 0; i < k->n; i++) {
                char u[37];
                FUZZ_CHECK(uuid_ok(k->ptrs[i], u) && !strcmp(u, k->ptrs[i]));
                for (int j = 0; j < i; j++)
                    FUZZ_CHECK(strcmp(k->ptrs[i], k->ptrs[j]) != 0);
            }
        } else {
            check_refusal(&rs);
        }
        free(k);
    }
    free(rs.body);
    json_decref(o);
    return 0;
}
