/*
 * fuzz_seal — a receiver's open of a sealed frame (device/qkms_seal.h,
 * docs/sealing.md): the bytes a peer (or anyone on the path) sends, read by
 * qks_peek and qks_open under the first case of tests/vectors/seal-v1.json
 * (its key, key ID, session and direction), with a replay window that the
 * input's frames share.
 *
 * Input: byte 0 picks the window's state (0: fresh, else the window of the
 * previous input, so sequences of frames are explored), the rest is the
 * frame.
 * Properties: nothing is written past the output capacity (exactly the
 * frame's plaintext length); a frame that opens seals back to the same
 * bytes (the frame is deterministic in its inputs) and has the header
 * qks_peek reads; a frame that opened once is refused as a replay the
 * second time; a refused frame leaves the window as it was.
 */
#include "fuzz_common.h"

#include <errno.h>

#include "hexutil.h"
#include "qkms_seal.h"

static uint8_t key[32], kid[16];
static size_t key_len;
static char sid[129];
static int dir;
static qks_window win;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    json_error_t e;
    json_t *doc = json_load_file(FUZZ_VECTORS_SEAL, 0, &e), *c;
    const char *hex;
    (void)argc;
    (void)argv;
    fuzz_quiet();
    FUZZ_CHECK(doc != NULL);
    c = json_array_get(json_object_get(doc, "seal"), 0);
    hex = json_string_value(json_object_get(c, "key"));
    FUZZ_CHECK(hex != NULL);
    long n = qkms_hex_decode(hex, strlen(hex), key, sizeof(key));
    FUZZ_CHECK(n == 16 || n == 32);
    key_len = (size_t)n;
    FUZZ_CHECK(qks_uuid_parse(json_string_value(json_object_get(c, "key_id")), kid) == QKS_OK);
    snprintf(sid, sizeof(sid), "%s", json_string_value(json_object_get(c, "session_id")));
    dir = !strcmp(json_string_value(json_object_get(c, "direction")), "a2b") ? QKS_A2B : QKS_B2A;
    json_decref(doc);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const uint8_t *frame = data + 1;
    size_t len, cap, pl = 0, rl = 0;
    uint8_t *pt, *re;
    uint64_t seq = 0;
    qks_header h;
    qks_window before;
    int rc;

    if (size < 1)
        return 0;
    if (data[0] == 0)
        memset(&win, 0, sizeof(win));
    len = size - 1;
    cap = len >= QKS_OVERHEAD ? len - QKS_OVERHEAD : 0;
    pt = malloc(cap ? cap : 1);
    FUZZ_CHECK(pt != NULL);
    before = win;
    rc = qks_open(key, key_len, kid, sid, dir, &win, frame, len, cap ? pt : NULL, cap, &pl, &seq);
    if (rc != QKS_OK) {
        FUZZ_CHECK(rc == QKS_ERR_FORMAT || rc == QKS_ERR_KEY || rc == QKS_ERR_DIRECTION ||
                   rc == QKS_ERR_AUTH || rc == QKS_ERR_REPLAY);
        FUZZ_CHECK(!memcmp(&before, &win, sizeof(win)));
        goto out;
    }
    /* Opened: the header agrees, the frame is what sealing gives, and it
     * does not open twice. */
    FUZZ_CHECK(pl == cap && qks_peek(frame, len, &h) == QKS_OK && h.seq == seq &&
               h.direction == dir && !memcmp(h.key_id, kid, 16));
    re = malloc(len);
    FUZZ_CHECK(re != NULL);
    FUZZ_CHECK(qks_seal(key, key_len, kid, sid, dir, seq, pt, pl, re, len, &rl) == QKS_OK);
    FUZZ_CHECK(rl == len && !memcmp(re, frame, len));
    free(re);
    FUZZ_CHECK(qks_open(key, key_len, kid, sid, dir, &win, frame, len, cap ? pt : NULL, cap, &pl,
                        NULL) == QKS_ERR_REPLAY);
out:
    free(pt);
    return 0;
}
