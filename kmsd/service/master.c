/*
 * master — the master key at start (master_init: find or create it, check
 * it against the database, the session ID hash key) and the refresh of the
 * loaded versions that other instances' rotations call for (master.h).
 */
#include "service/master.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

#include "hexutil.h"
#include "log.h"
#include "store/queries.h"
#include "service/session_id.h"

static int record_v1(const master_deps *k, db_conn *c, char *err, size_t el)
{
    uint8_t kcv[KEYWRAP_KCV_LEN];
    char label[128];
    const char *vals[3] = {"1", label, (const char *)kcv};
    int lens[3] = {0, 0, KEYWRAP_KCV_LEN}, fmts[3] = {0, 0, 1};
    bool found = false;
    db_status st;
    PGresult *r;
    CK_RV rv;

    keywrap_label(k->kw, 1, label, sizeof(label));
    rv = keywrap_load(k->kw, 1, &found);
    if (rv != CKR_OK) {
        snprintf(err, el, "searching the token for %s failed: %s", label, p11_rv_name(rv));
        return -1;
    }
    if (found) {
        log_emit(LOG_WARN, "adopting existing master key found in the token", "{s:s}", "label", label);
    } else {
        if (!k->create) {
            snprintf(err, el, "token has no master key %s and master_key_create is false", label);
            return -1;
        }
        rv = keywrap_create(k->kw, 1);
        if (rv != CKR_OK) {
            snprintf(err, el, "creating master key %s in the token failed: %s", label,
                     p11_rv_name(rv));
            return -1;
        }
        log_emit(LOG_INFO, "master key created in the token", "{s:s}", "label", label);
    }
    rv = keywrap_kcv(k->kw, 1, kcv);
    if (rv != CKR_OK) {
        snprintf(err, el, "master key %s is not usable for AES-GCM: %s", label, p11_rv_name(rv));
        return -1;
    }
    r = db_exec(c, Q_MASTER_INSERT, 3, vals, lens, fmts, &st);
    if (!r) {
        snprintf(err, el, "recording master key %s failed: %s", label, db_status_name(st));
        return -1;
    }
    PQclear(r);
    keywrap_expect_kcv(k->kw, 1, kcv);
    keywrap_set_active(k->kw, 1);
    return 0;
}

/* Make the session ID hash key if the database has none (wrapped under the
 * active version), then unwrap it into sessions.c. Under the master lock. */
static int session_id_key_init(const master_deps *k, db_conn *c, char *err, size_t el)
{
    uint8_t *key = OPENSSL_secure_malloc(KEYWRAP_MAX_KEY + 16), blob[SID_KEY_LEN + KEYWRAP_OVERHEAD];
    char hex[2 * sizeof(blob) + 1], ver[16];
    const char *vals[2] = {hex, ver};
    size_t kl = SID_KEY_LEN, bl = sizeof(blob);
    db_status st;
    PGresult *r = NULL;
    long n;
    int rc = -1;

    if (!key) {
        snprintf(err, el, "out of secure memory");
        return -1;
    }
    r = db_exec(c, Q_SIDKEY_GET, 0, NULL, NULL, NULL, &st);
    if (r && PQntuples(r) == 0) {
        PQclear(r);
        r = NULL;
        if (p11_random(k->token, key, SID_KEY_LEN) != CKR_OK ||
            keywrap_wrap(k->kw, (const uint8_t *)SID_KEY_CONTEXT, strlen(SID_KEY_CONTEXT), key,
                         SID_KEY_LEN, blob, &bl) != CKR_OK) {
            snprintf(err, el, "cannot make the session ID hash key in the token");
            goto out;
        }
        qkms_hex_encode(blob, bl, hex);
        snprintf(ver, sizeof(ver), "%u", keywrap_blob_version(blob, bl));
        r = db_exec(c, Q_SIDKEY_INSERT, 2, vals, NULL, NULL, &st);
        PQclear(r);
        r = r ? db_exec(c, Q_SIDKEY_GET, 0, NULL, NULL, NULL, &st) : NULL;
    }
    if (!r || PQntuples(r) != 1) {
        snprintf(err, el, "reading the session ID hash key failed: %s", db_status_name(st));
        goto out;
    }
    n = qkms_hex_decode(PQgetvalue(r, 0, 0), strlen(PQgetvalue(r, 0, 0)), blob, sizeof(blob));
    kl = KEYWRAP_MAX_KEY + 16;
    if (n <= 0 || keywrap_unwrap(k->kw, (const uint8_t *)SID_KEY_CONTEXT, strlen(SID_KEY_CONTEXT),
                                 blob, (size_t)n, key, &kl) != CKR_OK || kl != SID_KEY_LEN ||
        sessions_set_id_key(key, kl) != 0) {
        snprintf(err, el, "the session ID hash key (wrapped under master key version %s) cannot "
                 "be unwrapped; refusing to start", PQgetvalue(r, 0, 1));
        goto out;
    }
    rc = 0;
out:
    PQclear(r);
    OPENSSL_secure_clear_free(key, KEYWRAP_MAX_KEY + 16);
    return rc;
}

int master_init(const master_deps *k, char *err, size_t el)
{
    db_status st;
    db_conn *c = db_acquire(k->db, &st);
    PGresult *r = NULL;
    int rc = -1;

    if (!c) {
        snprintf(err, el, "database unavailable: %s", db_status_name(st));
        return -1;
    }
    if (qt_command(c, QT_MASTER_LOCK) != DB_OK) {
        snprintf(err, el, "cannot take the master key lock");
        db_release(k->db, c);
        return -1;
    }
    r = db_exec(c, Q_MASTER_LIST, 0, NULL, NULL, NULL, &st);
    if (!r) {
        snprintf(err, el, "reading master_keys failed: %s", db_status_name(st));
        goto out;
    }
    if (PQntuples(r) == 0) {
        rc = record_v1(k, c, err, el);
        if (rc == 0)
            rc = session_id_key_init(k, c, err, el);
        goto report;
    }
    for (int i = 0; i < PQntuples(r); i++) {
        uint32_t v = (uint32_t)strtoul(PQgetvalue(r, i, 0), NULL, 10);
        const char *label = PQgetvalue(r, i, 1), *kcvhex = PQgetvalue(r, i, 2);
        uint8_t want[KEYWRAP_KCV_LEN], got[KEYWRAP_KCV_LEN];
        bool found = false;
        CK_RV rv = keywrap_load(k->kw, v, &found);
        if (rv != CKR_OK) {
            snprintf(err, el, "searching the token for %s failed: %s", label, p11_rv_name(rv));
            goto out;
        }
        if (!found && !strcmp(PQgetvalue(r, i, 3), "staged")) {
            /* Nothing is wrapped under a staged version: this instance
             * starts, and the version waits for its token (rotation.h). */
            log_emit(LOG_WARN, "staged master key version not in the token; its activation waits "
                     "for this instance (docs/ha.md)", "{s:s}", "label", label);
            continue;
        }
        if (!found) {
            snprintf(err, el,
                     "the database holds keys wrapped under master key %s, but token '%s' has no "
                     "such key; refusing to start (restore the token, or point "
                     "pkcs11_token_label at the token that holds it)",
                     label, p11_token_label(k->token));
            goto out;
        }
        rv = keywrap_kcv(k->kw, v, got);
        if (rv != CKR_OK || strlen(kcvhex) != 2 + 2 * KEYWRAP_KCV_LEN ||
            qkms_hex_decode(kcvhex + 2, 2 * KEYWRAP_KCV_LEN, want, sizeof(want)) != KEYWRAP_KCV_LEN ||
            CRYPTO_memcmp(want, got, KEYWRAP_KCV_LEN) != 0) {
            if (!strcmp(PQgetvalue(r, i, 3), "staged")) {
                /* Another key under a staged version's label: not held
                 * (forgotten, never used); the activation waits. */
                keywrap_forget(k->kw, v);
                log_emit(LOG_WARN, "the token's key under a staged master key version's label is "
                         "not the recorded one; its activation waits for this instance",
                         "{s:s}", "label", label);
                continue;
            }
            snprintf(err, el,
                     "token key %s is not the master key the database was wrapped under (check "
                     "value mismatch); refusing to start",
                     label);
            goto out;
        }
        keywrap_expect_kcv(k->kw, v, want);
        if (!strcmp(PQgetvalue(r, i, 3), "active"))
            keywrap_set_active(k->kw, v);
    }
    if (keywrap_active(k->kw) == 0) {
        snprintf(err, el, "no active master key version in the database");
        goto out;
    }
    PQclear(r);
    r = NULL;
    rc = session_id_key_init(k, c, err, el);
report:
    if (rc == 0 && k->self && instances_report(k->self, k->kw, c) != 0) {
        snprintf(err, el, "cannot record this instance in the registry of instances");
        rc = -1;
    }
out:
    PQclear(r);
    qt_command(c, QT_MASTER_UNLOCK);
    db_release(k->db, c);
    if (rc == 0) {
        char label[128];
        keywrap_label(k->kw, keywrap_active(k->kw), label, sizeof(label));
        log_emit(LOG_INFO, "master key ready", "{s:s,s:i}", "label", label, "version",
                 (int)keywrap_active(k->kw));
    }
    return rc;
}

/* ---- refresh ----------------------------------------------------------------- */

static pthread_mutex_t refresh_mu = PTHREAD_MUTEX_INITIALIZER;
static _Atomic unsigned long refresh_count; /* refreshes started */
/* The active version of the last refresh when this token could not load it
 * (another instance rotated into a token this one has no copy of), else 0. */
static _Atomic uint32_t active_missing;
/* The versions not usable at the last refresh, as a set (a sum and an xor
 * of their numbers): they are logged again only when the set changes, not
 * on every refresh (a staged version may wait for this token for hours).
 * Callers hold refresh_mu. */
static uint64_t unusable_sig;

uint32_t master_active_missing(void) { return atomic_load(&active_missing); }

/* Versions another instance destroyed (rotation.h: it destroys them in
 * its own token only): gone from this token too, so that a retired key does
 * not outlive its destruction in the tokens of other hosts (and keywrap's
 * table of loaded versions does not fill up). A loaded one is destroyed at
 * once; the token is searched for one not loaded once per process (a
 * search on every refresh would be slow on a large token). Callers hold
 * refresh_mu. */
#define SEARCHED_MAX 64
static uint32_t searched[SEARCHED_MAX];
static int nsearched;

static bool was_searched(uint32_t v)
{
    for (int i = 0; i < nsearched; i++)
        if (searched[i] == v)
            return true;
    return false;
}

static void destroy_gone(keywrap *kw, db_conn *c)
{
    db_status st;
    PGresult *r = qt_exec(c, QT_MASTER_DESTROYED, 0, NULL, &st);
    for (int i = 0; r && i < PQntuples(r); i++) {
        uint32_t v = (uint32_t)strtoul(PQgetvalue(r, i, 0), NULL, 10);
        bool found = keywrap_has(kw, v);
        CK_RV rv = CKR_OK;
        if (!found) {
            if (was_searched(v))
                continue;
            rv = keywrap_load(kw, v, &found);
            if (rv == CKR_OK && !found && nsearched < SEARCHED_MAX)
                searched[nsearched++] = v; /* not in this token: done */
        }
        if (rv == CKR_OK && found)
            rv = keywrap_destroy(kw, v);
        if (rv != CKR_OK) {
            /* Retried at the next refresh (it stays loaded, or unsearched);
             * the others go on. Logged once per version in a row. */
            static uint32_t logged;
            if (logged != v)
                log_emit(LOG_ERROR, "destroying a master key version destroyed by another "
                         "instance failed; will retry", "{s:i,s:s}", "version", (int)v, "ckr",
                         p11_rv_name(rv));
            logged = v;
            continue;
        }
        if (found)
            log_emit(LOG_INFO, "master key version destroyed by another instance destroyed in "
                     "this token too", "{s:i}", "version", (int)v);
    }
    PQclear(r);
}

/* Load versions recorded since we last looked (checking their check values)
 * and switch the active one. Callers hold refresh_mu. */
static int refresh_locked(keywrap *kw, db_conn *c)
{
    db_status st;
    uint32_t missing = 0;
    uint64_t sig = 0, sum = 0, x = 0;
    PGresult *r = db_exec(c, Q_MASTER_LIST, 0, NULL, NULL, NULL, &st);
    if (!r)
        return -1;
    for (int pass = 0; pass < 2; pass++) {
        /* Pass 0 loads and checks, and finds the set of unusable versions;
         * pass 1 logs them if that set changed since the last refresh. */
        for (int i = 0; i < PQntuples(r); i++) {
            uint32_t v = (uint32_t)strtoul(PQgetvalue(r, i, 0), NULL, 10);
            const char *kcvhex = PQgetvalue(r, i, 2), *state = PQgetvalue(r, i, 3);
            uint8_t want[KEYWRAP_KCV_LEN], got[KEYWRAP_KCV_LEN];
            bool found = false;
            if (pass == 1) {
                if (!keywrap_has(kw, v) && sig != unusable_sig)
                    log_emit(!strcmp(state, "staged") ? LOG_WARN : LOG_ERROR,
                             !strcmp(state, "staged")
                                 ? "staged master key version not in the token (or another key "
                                   "under its label); its activation waits for this instance "
                                   "(docs/ha.md)"
                                 : "master key version recorded in the database is not usable",
                             "{s:i}", "version", (int)v);
                continue;
            }
            if (!keywrap_has(kw, v)) {
                if (keywrap_load(kw, v, &found) != CKR_OK || !found ||
                    keywrap_kcv(kw, v, got) != CKR_OK ||
                    strlen(kcvhex) != 2 + 2 * KEYWRAP_KCV_LEN ||
                    qkms_hex_decode(kcvhex + 2, 2 * KEYWRAP_KCV_LEN, want, sizeof(want)) !=
                        KEYWRAP_KCV_LEN ||
                    CRYPTO_memcmp(want, got, KEYWRAP_KCV_LEN) != 0) {
                    /* Not loaded: a key under the label that is not the
                     * recorded one must never count as held, nor be used
                     * (keywrap_has is what every later refresh and the
                     * registry of instances ask). */
                    if (found)
                        keywrap_forget(kw, v);
                    sum += v;
                    x ^= (uint64_t)v * 0x9E3779B97F4A7C15ull;
                    if (!strcmp(state, "active"))
                        missing = v;
                    continue;
                }
                keywrap_expect_kcv(kw, v, want);
                log_emit(LOG_INFO, "master key version loaded", "{s:i}", "version", (int)v);
            }
            if (!strcmp(state, "active") && keywrap_active(kw) != v) {
                keywrap_set_active(kw, v);
                log_emit(LOG_INFO, "active master key version switched", "{s:i}", "version",
                         (int)v);
            }
        }
        sig = sum ^ (x << 1);
    }
    unusable_sig = sig;
    PQclear(r);
    atomic_store(&active_missing, missing);
    destroy_gone(kw, c);
    return 0;
}

int master_reload(keywrap *kw, db_pool *db, db_conn *c)
{
    unsigned long seen = atomic_load(&refresh_count);
    db_status st;
    db_conn *own = NULL;
    int rc = 0;

    pthread_mutex_lock(&refresh_mu);
    /* Requests that found the view stale together refresh it once: a
     * refresh that started after we were called read the database after
     * what made us call. */
    if (atomic_load(&refresh_count) != seen)
        goto out;
    atomic_fetch_add(&refresh_count, 1);
    if (!c) {
        c = own = db_acquire(db, &st);
        if (!c) {
            rc = -1;
            goto out;
        }
    }
    rc = refresh_locked(kw, c);
out:
    if (own)
        db_release(db, own);
    pthread_mutex_unlock(&refresh_mu);
    return rc;
}
