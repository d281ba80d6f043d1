/* master — master key bootstrap and verification. */
#include "master.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

#include "hexutil.h"
#include "log.h"
#include "queries.h"

#define MASTER_LOCK "7164803902"

static int lock_cmd(db_conn *c, const char *sql)
{
    return db_command(c, sql) == DB_OK ? 0 : -1;
}

static int record_v1(kms_ctx *k, db_conn *c, char *err, size_t el)
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
        if (!k->cfg.master_key_create) {
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

int master_init(kms_ctx *k, char *err, size_t el)
{
    db_status st;
    db_conn *c = db_acquire(k->db, &st);
    PGresult *r = NULL;
    int rc = -1;

    if (!c) {
        snprintf(err, el, "database unavailable: %s", db_status_name(st));
        return -1;
    }
    if (lock_cmd(c, "SELECT pg_advisory_lock(" MASTER_LOCK ")") != 0) {
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
        goto out;
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
    rc = 0;
out:
    PQclear(r);
    lock_cmd(c, "SELECT pg_advisory_unlock(" MASTER_LOCK ")");
    db_release(k->db, c);
    if (rc == 0) {
        char label[128];
        keywrap_label(k->kw, keywrap_active(k->kw), label, sizeof(label));
        log_emit(LOG_INFO, "master key ready", "{s:s,s:i}", "label", label, "version",
                 (int)keywrap_active(k->kw));
    }
    return rc;
}
