/*
 * audit_canon — the audit chain's byte-exact definitions: what a row's hash
 * covers, how a hash links to the one before, what a checkpoint's MAC
 * covers (docs/operations.md, "Audit log"), and small pure helpers the
 * sealer and the verifier share.
 *
 * Contract:
 *  - Pure: no database, no token, no clock, no global state; thread-safe.
 *    Unit-tested (tests/unit/test_audit_chain.c, vectors computed
 *    independently) and fuzzed (fuzz/fuzz_audit_canon.c).
 *  - The canonical form is injective: every field is fixed-width or
 *    length-prefixed and device_id NULL differs from "", so two different
 *    rows never encode (and hash) alike by construction.
 *  - audit_canon appends to a qbuf (common/qbuf.h), which bounds it: a row
 *    longer than the buffer's maximum is refused, the buffer unchanged.
 *    Changing any byte of these forms breaks every chain ever sealed.
 */
#ifndef QKMS_AUDIT_CANON_H
#define QKMS_AUDIT_CANON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "qbuf.h"

#define AUDIT_HASH_LEN 32
#define AUDIT_CANON_MAGIC "qkms-audit-v1"
#define AUDIT_CP_MAGIC "qkms-audit-checkpoint-v1"
#define AUDIT_CP_MSG_LEN (sizeof(AUDIT_CP_MAGIC) - 1 + 8 + 8 + 8 + AUDIT_HASH_LEN + 4 + 8)
/* A skipped id may still turn up (and is then sealed late) this long: the
 * sealer looks for such rows, the verifier counts them as pending. */
#define AUDIT_LATE_WINDOW_S 3600
/* One audit row as the chain sees it. Strings are UTF-8, NUL-terminated
 * (PostgreSQL text never holds NUL); device_id NULL for SQL NULL; detail is
 * jsonb::text. */
typedef struct {
    int64_t id;
    int64_t at_us; /* at, microseconds since 1970-01-01T00:00:00Z */
    const char *actor, *event, *device_id, *detail;
    /* Chain columns as stored (verification input). */
    bool has_prev, has_hash, has_sealed_at;
    /* at_us/detail are the values stored when the row was sealed, and they
     * no longer equal the row's columns (compared by value, not rendering). */
    bool content_changed;
    uint8_t prev_hash[AUDIT_HASH_LEN], hash[AUDIT_HASH_LEN];
} audit_row;

/* Length in bytes of r's canonical encoding (without prev_hash). */
size_t audit_canon_len(const audit_row *r);
/* Append r's canonical encoding to b: QBUF_OK, or QBUF_E_LIMIT (a string
 * too long to encode, or past b's maximum) / QBUF_E_NOMEM with b as it
 * was. */
int audit_canon(const audit_row *r, qbuf *b);
/* hash = SHA-256(prev || audit_canon(r)). 0, or -1 (allocation). */
int audit_row_hash(const uint8_t prev[AUDIT_HASH_LEN], const audit_row *r,
                   uint8_t out[AUDIT_HASH_LEN]);

typedef struct {
    int64_t id, last_audit_id, chain_length, at_us;
    uint8_t head_hash[AUDIT_HASH_LEN];
    uint32_t master_version;
    uint8_t iv[12], mac[16];
} audit_checkpoint;

/* The checkpoint message the MAC covers (AUDIT_CP_MSG_LEN bytes). */
void audit_checkpoint_msg(const audit_checkpoint *cp, uint8_t out[AUDIT_CP_MSG_LEN]);

/* Skipped-id ranges [lo, hi]. */
typedef struct {
    int64_t lo, hi;
} audit_range;
/* The first id in [lo, hi] no range covers, or 0 when all are covered
 * (ids are positive). ranges need not be sorted. */
int64_t audit_first_uncovered(const audit_range *ranges, size_t n, int64_t lo, int64_t hi);

/* "2026-11-23T08:13:28.123456Z" from microseconds; out holds 28 bytes. */
void audit_format_time(int64_t at_us, char out[28]);

#endif
