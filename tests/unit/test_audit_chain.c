/* Unit tests: the audit chain's canonical encoding, chain step, checkpoint
 * message, and the verifier's verdicts on tampered chains (with a fake
 * database and a fake token). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <openssl/evp.h>

#include "hexutil.h"
#include "qbuf.h"
#include "service/audit_canon.h"
#include "service/audit_verify.h"

static void hex_to(const char *hex, uint8_t *out, size_t len)
{
    assert_int_equal(qkms_hex_decode(hex, strlen(hex), out, len), (long)len);
}

static audit_row row1(void)
{
    audit_row r;
    memset(&r, 0, sizeof(r));
    r.id = 1;
    r.at_us = 1763885608123456LL; /* 2025-11-23T08:13:28.123456Z */
    r.actor = "admin";
    r.event = "device.created";
    r.device_id = "VIN1";
    r.detail = "{\"type\": \"vehicle\", \"group\": \"default\"}";
    return r;
}

/* The vectors in docs/operations.md, computed independently (Python). */
static void canonical_vector(void **state)
{
    (void)state;
    static const char want_hex[] =
        "716b6d732d61756469742d763100000000000000010006443e9f18bc400000000561646d696e0000000e"
        "6465766963652e63726561746564010000000456494e31000000277b2274797065223a20227665686963"
        "6c65222c202267726f7570223a202264656661756c74227d";
    uint8_t want[256];
    audit_row r = row1();
    size_t n = strlen(want_hex) / 2;
    qbuf *got = qbuf_new(256, 0);
    assert_non_null(got);
    hex_to(want_hex, want, n);
    assert_int_equal(audit_canon_len(&r), n); /* length only */
    assert_int_equal(audit_canon(&r, got), QBUF_OK);
    assert_int_equal(qbuf_len(got), n);
    assert_memory_equal(qbuf_ptr(got), want, n);
    /* It appends, and a buffer too small is never overrun: the row is
     * refused whole, what was there stays. */
    assert_int_equal(audit_canon(&r, got), QBUF_OK);
    assert_int_equal(qbuf_len(got), 2 * n);
    assert_memory_equal(qbuf_ptr(got) + n, want, n);
    qbuf_free(got);
    got = qbuf_new(10, 0);
    assert_non_null(got);
    assert_int_equal(qbuf_put(got, "ab", 2), QBUF_OK);
    assert_int_equal(audit_canon(&r, got), QBUF_E_LIMIT);
    assert_int_equal(qbuf_len(got), 2);
    assert_memory_equal(qbuf_ptr(got), "ab", 3);
    qbuf_free(got);

    /* NULL device_id is a single 0x00, not an empty string. */
    audit_row a = r, b = r;
    a.device_id = NULL;
    b.device_id = "";
    qbuf *ca = qbuf_new(256, 0), *cb = qbuf_new(256, 0);
    assert_non_null(ca);
    assert_non_null(cb);
    assert_int_equal(audit_canon(&a, ca), QBUF_OK);
    assert_int_equal(audit_canon(&b, cb), QBUF_OK);
    size_t na = qbuf_len(ca), nb = qbuf_len(cb);
    assert_int_equal(na, audit_canon_len(&a));
    assert_int_equal(nb, audit_canon_len(&b));
    assert_int_equal(nb, na + 4);
    assert_false(na == nb && !memcmp(qbuf_ptr(ca), qbuf_ptr(cb), na));
    qbuf_free(ca);
    qbuf_free(cb);
}

static void chain_step_vector(void **state)
{
    (void)state;
    uint8_t zero[32] = {0}, h1[32], h2[32], w1[32], w2[32];
    audit_row r = row1(), r2;
    memset(&r2, 0, sizeof(r2));
    r2.id = 2;
    r2.at_us = 1763885609000000LL;
    r2.actor = "kmsd";
    r2.event = "policy.added";
    r2.device_id = NULL;
    r2.detail = "{}";
    hex_to("2658431d87d5e02210dbf8cbf6df6b3778dc96f63fe1159259785bca24a799d8", w1, 32);
    hex_to("8966e41882d9130b5a4faff758f0390cfacf5e99858a6426b172111747577d82", w2, 32);
    assert_int_equal(audit_row_hash(zero, &r, h1), 0);
    assert_memory_equal(h1, w1, 32);
    assert_int_equal(audit_row_hash(h1, &r2, h2), 0);
    assert_memory_equal(h2, w2, 32);

    /* Every field and the previous hash count. */
    audit_row m;
    uint8_t x[32];
    const char *big;
    m = r, m.id = 3, audit_row_hash(zero, &m, x), assert_memory_not_equal(x, h1, 32);
    m = r, m.at_us++, audit_row_hash(zero, &m, x), assert_memory_not_equal(x, h1, 32);
    m = r, m.actor = "admim", audit_row_hash(zero, &m, x), assert_memory_not_equal(x, h1, 32);
    m = r, m.event = "device.createe", audit_row_hash(zero, &m, x), assert_memory_not_equal(x, h1, 32);
    m = r, m.device_id = "VIN2", audit_row_hash(zero, &m, x), assert_memory_not_equal(x, h1, 32);
    m = r, m.detail = "{}", audit_row_hash(zero, &m, x), assert_memory_not_equal(x, h1, 32);
    audit_row_hash(w2, &r, x);
    assert_memory_not_equal(x, h1, 32);
    /* Field boundaries are unambiguous: moving a byte between fields changes the hash. */
    m = r, m.actor = "admind", m.event = "evice.created";
    audit_row_hash(zero, &m, x);
    assert_memory_not_equal(x, h1, 32);
    /* A large detail (the canonical form is sized to the row). */
    char *d = malloc(5000);
    assert_non_null(d);
    memset(d, 'a', 4999);
    d[4999] = 0;
    big = d;
    m = r, m.detail = big;
    assert_int_equal(audit_row_hash(zero, &m, x), 0);
    free(d);
}

static void checkpoint_message(void **state)
{
    (void)state;
    audit_checkpoint cp;
    uint8_t msg[AUDIT_CP_MSG_LEN];
    memset(&cp, 0, sizeof(cp));
    cp.id = 7;
    cp.last_audit_id = 0x0102030405060708LL;
    cp.chain_length = 42;
    memset(cp.head_hash, 0xAB, 32);
    cp.master_version = 3;
    cp.at_us = 1;
    audit_checkpoint_msg(&cp, msg);
    assert_int_equal(AUDIT_CP_MSG_LEN, 24 + 8 + 8 + 8 + 32 + 4 + 8);
    assert_memory_equal(msg, "qkms-audit-checkpoint-v1", 24);
    assert_int_equal(msg[24 + 7], 7);
    assert_int_equal(msg[32], 0x01);
    assert_int_equal(msg[39], 0x08);
    assert_int_equal(msg[40 + 7], 42);
    assert_int_equal(msg[48], 0xAB);
    assert_int_equal(msg[79], 0xAB);
    assert_int_equal(msg[80 + 3], 3);
    assert_int_equal(msg[84 + 7], 1);
}

static void uncovered_and_time(void **state)
{
    (void)state;
    audit_range g[] = {{5, 7}, {3, 4}, {10, 10}};
    assert_int_equal(audit_first_uncovered(g, 3, 3, 7), 0);
    assert_int_equal(audit_first_uncovered(g, 3, 3, 8), 8);
    assert_int_equal(audit_first_uncovered(g, 3, 2, 7), 2);
    assert_int_equal(audit_first_uncovered(g, 3, 10, 10), 0);
    assert_int_equal(audit_first_uncovered(g, 3, 8, 10), 8);
    assert_int_equal(audit_first_uncovered(NULL, 0, 4, 4), 4);
    char t[28];
    audit_format_time(1763885608123456LL, t);
    assert_string_equal(t, "2025-11-23T08:13:28.123456Z");
    audit_format_time(0, t);
    assert_string_equal(t, "1970-01-01T00:00:00.000000Z");
    audit_format_time(-1, t);
    assert_string_equal(t, "1969-12-31T23:59:59.999999Z");
}

/* ---- a fake database and token for the verifier --------------------------------- */

#define MAXROWS 32
typedef struct {
    audit_row rows[MAXROWS];
    char details[MAXROWS][32];
    bool present[MAXROWS];
    int64_t n; /* ids 1..n */
    audit_range gaps[8];
    int ngaps;
    bool gaps_recent;
    audit_checkpoint cps[8];
    int ncps, cp_next;
    int64_t late_id[4], late_prev[4];
    int nlate;
    int64_t main_id;
} fakedb;

static void fake_mac(const audit_checkpoint *cp, uint8_t mac[16])
{
    uint8_t msg[AUDIT_CP_MSG_LEN], md[32];
    unsigned int n;
    audit_checkpoint_msg(cp, msg);
    EVP_Digest(msg, sizeof(msg), md, &n, EVP_sha256(), NULL);
    memcpy(mac, md, 16);
}

static int f_hash_elsewhere(void *arg, const uint8_t hash[32], int64_t not_id, int64_t *found)
{
    fakedb *db = arg;
    for (int64_t i = 1; i <= db->n; i++)
        if (db->present[i] && db->rows[i].id != not_id && db->rows[i].has_hash &&
            !memcmp(db->rows[i].hash, hash, 32)) {
            *found = db->rows[i].id;
            return 1;
        }
    return 0;
}

static int f_gaps_between(void *arg, int64_t lo, int64_t hi, audit_range **out)
{
    fakedb *db = arg;
    (void)lo;
    (void)hi;
    *out = calloc(8, sizeof(audit_range));
    memcpy(*out, db->gaps, sizeof(db->gaps));
    return db->ngaps;
}

static int f_in_recent_gap(void *arg, int64_t id)
{
    fakedb *db = arg;
    for (int i = 0; i < db->ngaps; i++)
        if (db->gaps[i].lo <= id && id <= db->gaps[i].hi)
            return db->gaps_recent;
    return 0;
}

static int f_next_checkpoint(void *arg, audit_checkpoint *cp)
{
    fakedb *db = arg;
    if (db->cp_next >= db->ncps)
        return 0;
    *cp = db->cps[db->cp_next++];
    return 1;
}

static int f_checkpoint_mac(void *arg, const audit_checkpoint *cp)
{
    uint8_t mac[16];
    (void)arg;
    if (cp->master_version == 99)
        return 2;
    fake_mac(cp, mac);
    return memcmp(mac, cp->mac, 16) == 0;
}

static const audit_verify_ops fake_ops = {NULL, f_hash_elsewhere, f_gaps_between,
                                          f_in_recent_gap, f_next_checkpoint, f_checkpoint_mac};

/* Unsealed rows 1..n. */
static void fake_rows(fakedb *db, int64_t n)
{
    memset(db, 0, sizeof(*db));
    db->n = n;
    for (int64_t i = 1; i <= n; i++) {
        audit_row *r = &db->rows[i];
        r->id = i;
        r->at_us = 1763885608000000LL + i;
        r->actor = "admin";
        r->event = "device.created";
        r->device_id = i % 2 ? "VIN1" : NULL;
        snprintf(db->details[i], sizeof(db->details[i]), "{\"n\": %d}", (int)i);
        r->detail = db->details[i];
        db->present[i] = true;
    }
}

static uint8_t head[32];
static int64_t head_id, chain_len;

static void seal(fakedb *db, int64_t id)
{
    audit_row *r = &db->rows[id];
    memcpy(r->prev_hash, head, 32);
    r->has_prev = r->has_hash = r->has_sealed_at = true;
    assert_int_equal(audit_row_hash(head, r, r->hash), 0);
    memcpy(head, r->hash, 32);
    head_id = id;
    chain_len++;
}

static void checkpoint(fakedb *db)
{
    audit_checkpoint *cp = &db->cps[db->ncps];
    memset(cp, 0, sizeof(*cp));
    cp->id = db->ncps + 1;
    cp->last_audit_id = head_id;
    cp->chain_length = chain_len;
    memcpy(cp->head_hash, head, 32);
    cp->master_version = 1;
    fake_mac(cp, cp->mac);
    db->ncps++;
}

/* Seal 1..n in order with checkpoints after 3 and n. */
static void fake_chain(fakedb *db, int64_t n)
{
    fake_rows(db, n);
    memset(head, 0, 32);
    head_id = chain_len = 0;
    for (int64_t i = 1; i <= n; i++) {
        seal(db, i);
        if (i == 3 || i == n)
            checkpoint(db);
    }
    db->main_id = n;
}

static audit_verify_result run(fakedb *db)
{
    audit_verify_ops ops = fake_ops;
    audit_verify_result res;
    audit_verifier *v;
    ops.arg = db;
    db->cp_next = 0;
    v = audit_verifier_new(&ops, db->main_id, db->late_id, db->late_prev, (size_t)db->nlate);
    assert_non_null(v);
    for (int64_t i = 1; i <= db->n; i++) {
        int rc;
        if (!db->present[i])
            continue;
        rc = audit_verifier_row(v, &db->rows[i]);
        assert_true(rc >= 0);
        if (rc)
            break;
    }
    assert_int_equal(audit_verifier_finish(v, &res), 0);
    audit_verifier_free(v);
    return res;
}

static void verify_intact(void **state)
{
    (void)state;
    fakedb db;
    fake_chain(&db, 8);
    audit_verify_result r = run(&db);
    assert_true(r.ok);
    assert_int_equal(r.rows_checked, 8);
    assert_int_equal(r.checkpoints_checked, 2);
    assert_int_equal(r.head_id, 8);

    /* Unsealed rows past the sealer's position are pending, not a problem. */
    fake_chain(&db, 8);
    db.n = 9;
    db.present[9] = true;
    db.rows[9] = db.rows[8];
    db.rows[9].id = 9;
    db.rows[9].has_hash = db.rows[9].has_prev = db.rows[9].has_sealed_at = false;
    r = run(&db);
    assert_true(r.ok);
    assert_int_equal(r.pending, 1);
}

static void verify_modified(void **state)
{
    (void)state;
    fakedb db;
    fake_chain(&db, 8);
    db.rows[5].detail = "{\"n\": 666}";
    audit_verify_result r = run(&db);
    assert_false(r.ok);
    assert_int_equal(r.problem, AUDIT_MODIFIED);
    assert_int_equal(r.bad_id, 5);
    assert_string_equal(audit_problem_name(r.problem), "modified");

    /* Rewritten with a recomputed hash: the next row no longer links. */
    fake_chain(&db, 8);
    db.rows[5].detail = "{\"n\": 666}";
    audit_row_hash(db.rows[5].prev_hash, &db.rows[5], db.rows[5].hash);
    r = run(&db);
    assert_false(r.ok);
    assert_int_equal(r.problem, AUDIT_MODIFIED);
    assert_int_equal(r.bad_id, 5);

    /* The whole chain recomputed from row 2 on: the authentic checkpoints
     * no longer match. */
    fake_chain(&db, 8);
    db.rows[2].detail = "{\"n\": 666}";
    memcpy(head, db.rows[1].hash, 32);
    chain_len = 1;
    for (int64_t i = 2; i <= 8; i++)
        seal(&db, i);
    r = run(&db);
    assert_false(r.ok);
    assert_int_equal(r.problem, AUDIT_CHECKPOINT_HEAD);
    assert_int_equal(r.bad_id, 3);
    assert_int_equal(r.bad_checkpoint, 1);

    /* A sealed row whose hash was cleared. */
    fake_chain(&db, 8);
    db.rows[4].has_hash = false;
    r = run(&db);
    assert_int_equal(r.problem, AUDIT_MODIFIED);
    assert_int_equal(r.bad_id, 4);

    /* Hash and stored hashed values intact, but the row's columns no longer
     * equal them by value (the database said so): modified. */
    fake_chain(&db, 8);
    db.rows[6].content_changed = true;
    r = run(&db);
    assert_false(r.ok);
    assert_int_equal(r.problem, AUDIT_MODIFIED);
    assert_int_equal(r.bad_id, 6);
}

static void verify_deleted(void **state)
{
    (void)state;
    fakedb db;
    fake_chain(&db, 8);
    db.present[4] = false;
    audit_verify_result r = run(&db);
    assert_false(r.ok);
    assert_int_equal(r.problem, AUDIT_DELETED);
    assert_int_equal(r.bad_id, 4);

    /* The newest rows cut off: the checkpoint covering them says so. */
    fake_chain(&db, 8);
    db.present[7] = db.present[8] = false;
    r = run(&db);
    assert_int_equal(r.problem, AUDIT_DELETED);
    assert_int_equal(r.bad_id, 8);
    assert_int_equal(r.bad_checkpoint, 2);

    /* A recorded gap is not a deletion. */
    fake_rows(&db, 8);
    memset(head, 0, 32);
    head_id = chain_len = 0;
    for (int64_t i = 1; i <= 8; i++)
        if (i != 4 && i != 5)
            seal(&db, i);
    checkpoint(&db);
    db.present[4] = db.present[5] = false;
    db.gaps[0] = (audit_range){4, 5};
    db.ngaps = 1;
    db.main_id = 8;
    r = run(&db);
    assert_true(r.ok);
    assert_int_equal(r.rows_checked, 6);
    /* ... but removing the gap record is: the chain links over ids 4-5,
     * and nothing says why they are absent. */
    db.ngaps = 0;
    r = run(&db);
    assert_false(r.ok);
    assert_int_equal(r.problem, AUDIT_DELETED);
    assert_int_equal(r.bad_id, 4);
    /* A gap record that covers only part of it names the rest. */
    db.gaps[0] = (audit_range){4, 4};
    db.ngaps = 1;
    r = run(&db);
    assert_int_equal(r.problem, AUDIT_DELETED);
    assert_int_equal(r.bad_id, 5);
    db.gaps[0] = (audit_range){4, 5};
    /* ... and deleting the row after the gap is. */
    db.present[6] = false;
    r = run(&db);
    assert_int_equal(r.problem, AUDIT_DELETED);
    assert_int_equal(r.bad_id, 6);
}

static void verify_reordered(void **state)
{
    (void)state;
    fakedb db;
    fake_chain(&db, 8);
    /* Rows 3 and 6 swap ids, everything else moving with them. */
    audit_row a = db.rows[3], b = db.rows[6];
    a.id = 6;
    b.id = 3;
    db.rows[3] = b;
    db.rows[6] = a;
    audit_verify_result r = run(&db);
    assert_false(r.ok);
    assert_int_equal(r.problem, AUDIT_REORDERED);
    assert_int_equal(r.bad_id, 3);

    /* Contents swapped, hashes left in place. */
    fake_chain(&db, 8);
    const char *d = db.rows[2].detail;
    db.rows[2].detail = db.rows[7].detail;
    db.rows[7].detail = d;
    r = run(&db);
    assert_int_equal(r.problem, AUDIT_MODIFIED);
    assert_int_equal(r.bad_id, 2);
}

static void verify_checkpoints(void **state)
{
    (void)state;
    fakedb db;
    fake_chain(&db, 8);
    db.cps[0].head_hash[0] ^= 1;
    audit_verify_result r = run(&db);
    assert_int_equal(r.problem, AUDIT_CHECKPOINT_MAC);
    assert_int_equal(r.bad_checkpoint, 1);
    assert_int_equal(r.bad_id, 3);

    fake_chain(&db, 8);
    db.cps[1].mac[15] ^= 1;
    r = run(&db);
    assert_int_equal(r.problem, AUDIT_CHECKPOINT_MAC);
    assert_int_equal(r.bad_checkpoint, 2);

    /* The newest checkpoint deleted: sealed rows nobody vouches for. */
    fake_chain(&db, 8);
    db.ncps = 1;
    r = run(&db);
    assert_int_equal(r.problem, AUDIT_CHECKPOINT_MISSING);
    assert_int_equal(r.bad_id, 4);

    /* Old checkpoints under a destroyed key are skipped; the newest must verify. */
    fake_chain(&db, 8);
    db.cps[0].master_version = 99;
    r = run(&db);
    assert_true(r.ok);
    assert_int_equal(r.checkpoints_unverifiable, 1);
    assert_int_equal(r.checkpoints_checked, 1);
    db.cps[1].master_version = 99;
    r = run(&db);
    assert_int_equal(r.problem, AUDIT_CHECKPOINT_MAC);
}

static void verify_late_and_inserted(void **state)
{
    (void)state;
    fakedb db;
    /* Rows 1, 2, 4, 5 sealed with 3 skipped; row 3 committed later and was
     * sealed after row 5, then row 6 after it. */
    fake_rows(&db, 6);
    memset(head, 0, 32);
    head_id = chain_len = 0;
    seal(&db, 1);
    seal(&db, 2);
    seal(&db, 4);
    seal(&db, 5);
    checkpoint(&db);
    seal(&db, 3);
    seal(&db, 6);
    checkpoint(&db);
    db.gaps[0] = (audit_range){3, 3};
    db.ngaps = 1;
    db.late_id[0] = 3;
    db.late_prev[0] = 5;
    db.nlate = 1;
    db.main_id = 6;
    audit_verify_result r = run(&db);
    assert_true(r.ok);
    assert_int_equal(r.rows_checked, 6);
    assert_int_equal(r.head_id, 6);

    /* The late row deleted. */
    db.present[3] = false;
    r = run(&db);
    assert_int_equal(r.problem, AUDIT_DELETED);
    assert_int_equal(r.bad_id, 3);
    db.present[3] = true;

    /* Its audit_late record removed: it no longer fits where its id is. */
    db.nlate = 0;
    r = run(&db);
    assert_false(r.ok);
    assert_int_equal(r.problem, AUDIT_REORDERED);
    assert_int_equal(r.bad_id, 3);

    /* An unsealed row in an old gap is an insertion; in a recent one it is pending. */
    fake_chain(&db, 8);
    db.rows[5].has_hash = db.rows[5].has_prev = db.rows[5].has_sealed_at = false;
    /* rebuild the chain without 5, with 5 as a gap */
    memset(head, 0, 32);
    head_id = chain_len = 0;
    db.ncps = 0;
    for (int64_t i = 1; i <= 8; i++)
        if (i != 5)
            seal(&db, i);
    checkpoint(&db);
    db.gaps[0] = (audit_range){5, 5};
    db.ngaps = 1;
    db.gaps_recent = false;
    r = run(&db);
    assert_int_equal(r.problem, AUDIT_INSERTED);
    assert_int_equal(r.bad_id, 5);
    db.gaps_recent = true;
    r = run(&db);
    assert_true(r.ok);
    assert_int_equal(r.pending, 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(canonical_vector),   cmocka_unit_test(chain_step_vector),
        cmocka_unit_test(checkpoint_message), cmocka_unit_test(uncovered_and_time),
        cmocka_unit_test(verify_intact),      cmocka_unit_test(verify_modified),
        cmocka_unit_test(verify_deleted),     cmocka_unit_test(verify_reordered),
        cmocka_unit_test(verify_checkpoints), cmocka_unit_test(verify_late_and_inserted),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
