/*
 * fuzz_audit_canon — the audit chain's canonical form (kmsd/service/
 * audit_canon.c: audit_canon, audit_row_hash; docs/operations.md "Audit
 * log"): the bytes
 * each row's hash covers, built from text any authenticated caller can put
 * into a row (actor names, device IDs, detail JSON).
 *
 * Input: 16 bytes of id and at_us, one flag byte (device_id NULL or not),
 * then actor, event, device_id and detail separated by NUL bytes.
 * Properties: audit_canon_len is the length audit_canon appends; a qbuf
 * whose maximum is too small refuses the row whole and keeps what it held
 * (the qbuf bounds every write); decoding the encoding gives back every
 * field (the form is injective, so two different rows never hash alike by
 * construction); audit_row_hash is SHA-256(prev || canon);
 * audit_format_time always writes a NUL-terminated string.
 */
#include "fuzz_common.h"

#include <openssl/evp.h>

#include "qbuf.h"
#include "service/audit_canon.h"

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fuzz_quiet();
    return 0;
}

static uint64_t get_be(const uint8_t *p, int n)
{
    uint64_t v = 0;
    for (int i = 0; i < n; i++)
        v = v << 8 | p[i];
    return v;
}

/* Reads one length-prefixed string at *pos and compares it with want. */
static void expect_str(const uint8_t *buf, size_t len, size_t *pos, const char *want)
{
    size_t n;
    FUZZ_CHECK(*pos + 4 <= len);
    n = (size_t)get_be(buf + *pos, 4);
    *pos += 4;
    FUZZ_CHECK(n == strlen(want) && *pos + n <= len && !memcmp(buf + *pos, want, n));
    *pos += n;
}

static void decode_back(const audit_row *r, const uint8_t *buf, size_t len)
{
    const size_t ml = sizeof(AUDIT_CANON_MAGIC) - 1;
    size_t pos = ml;
    FUZZ_CHECK(len >= ml + 16 && !memcmp(buf, AUDIT_CANON_MAGIC, ml));
    FUZZ_CHECK((int64_t)get_be(buf + pos, 8) == r->id);
    FUZZ_CHECK((int64_t)get_be(buf + pos + 8, 8) == r->at_us);
    pos += 16;
    expect_str(buf, len, &pos, r->actor);
    expect_str(buf, len, &pos, r->event);
    FUZZ_CHECK(pos < len && buf[pos] == (r->device_id ? 1 : 0));
    pos++;
    if (r->device_id)
        expect_str(buf, len, &pos, r->device_id);
    expect_str(buf, len, &pos, r->detail);
    FUZZ_CHECK(pos == len);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    audit_row r;
    char *text, *fields[4] = {"", "", "", ""}, *p, ts[28];
    size_t tl, need, cut;
    uint8_t prev[AUDIT_HASH_LEN], h1[AUDIT_HASH_LEN], h2[AUDIT_HASH_LEN];
    unsigned int hl = 0;
    qbuf *full, *part;
    EVP_MD_CTX *x;

    if (size < 17)
        return 0;
    memset(&r, 0, sizeof(r));
    r.id = (int64_t)get_be(data, 8);
    r.at_us = (int64_t)get_be(data + 8, 8);
    text = fuzz_strndup(data + 17, size - 17);
    tl = size - 17;
    p = text;
    for (int i = 0; i < 4 && p <= text + tl; i++) {
        fields[i] = p;
        p += strlen(p) + 1;
    }
    r.actor = fields[0];
    r.event = fields[1];
    r.device_id = data[16] & 1 ? fields[2] : NULL;
    r.detail = fields[3];

    need = audit_canon_len(&r);
    full = qbuf_new(need, 0); /* exactly large enough */
    FUZZ_CHECK(full != NULL);
    FUZZ_CHECK(audit_canon(&r, full) == QBUF_OK && qbuf_len(full) == need);
    decode_back(&r, qbuf_ptr(full), need);
    /* After cut bytes already there, one byte short of room for the row:
     * refused whole (pieces already appended are taken back), the cut
     * bytes kept. */
    cut = (size_t)data[16] % need;
    part = qbuf_new(cut + need - 1, 0);
    FUZZ_CHECK(part != NULL);
    FUZZ_CHECK(qbuf_put(part, qbuf_ptr(full), cut) == QBUF_OK);
    FUZZ_CHECK(audit_canon(&r, part) == QBUF_E_LIMIT);
    FUZZ_CHECK(qbuf_len(part) == cut && !memcmp(qbuf_ptr(part), qbuf_ptr(full), cut));

    memset(prev, data[0], sizeof(prev));
    FUZZ_CHECK(audit_row_hash(prev, &r, h1) == 0);
    x = EVP_MD_CTX_new();
    FUZZ_CHECK(x && EVP_DigestInit_ex(x, EVP_sha256(), NULL) == 1 &&
               EVP_DigestUpdate(x, prev, sizeof(prev)) == 1 &&
               EVP_DigestUpdate(x, qbuf_ptr(full), need) == 1 && EVP_DigestFinal_ex(x, h2, &hl) == 1);
    EVP_MD_CTX_free(x);
    FUZZ_CHECK(hl == AUDIT_HASH_LEN && !memcmp(h1, h2, AUDIT_HASH_LEN));

    audit_format_time(r.at_us, ts);
    FUZZ_CHECK(memchr(ts, 0, sizeof(ts)) != NULL);
    qbuf_free(part);
    qbuf_free(full);
    free(text);
    return 0;
}
