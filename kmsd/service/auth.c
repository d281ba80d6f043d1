/* auth — admin API tokens. */
#include "service/auth.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "entropy/entropy.h"
#include "hexutil.h"
#include "service/names.h"
#include "store/queries.h"

unsigned auth_role_parse(const char *s)
{
    if (!s)
        return 0;
    if (!strcmp(s, "admin"))
        return ROLE_ADMIN;
    if (!strcmp(s, "operator"))
        return ROLE_OPERATOR;
    if (!strcmp(s, "auditor"))
        return ROLE_AUDITOR;
    if (!strcmp(s, "app"))
        return ROLE_APP;
    if (!strcmp(s, "crypto"))
        return ROLE_CRYPTO;
    if (!strcmp(s, "release"))
        return ROLE_RELEASE;
    return 0;
}

const char *auth_role_name(unsigned r)
{
    return r == ROLE_ADMIN      ? "admin"
           : r == ROLE_OPERATOR ? "operator"
           : r == ROLE_AUDITOR  ? "auditor"
           : r == ROLE_APP      ? "app"
           : r == ROLE_CRYPTO   ? "crypto"
           : r == ROLE_RELEASE  ? "release"
                                : "?";
}

bool auth_name_valid(const char *s) { return name_valid(s, 64); }

int auth_bearer(const char *h, char *tok, size_t toklen)
{
    size_t n;
    if (!h || strncasecmp(h, "Bearer ", 7) != 0)
        return -1;
    h += 7;
    while (*h == ' ')
        h++;
    n = strlen(h);
    while (n > 0 && h[n - 1] == ' ')
        n--;
    if (n == 0 || n >= toklen)
        return -1;
    memcpy(tok, h, n);
    tok[n] = 0;
    return 0;
}

bool auth_token_well_formed(const char *t)
{
    if (strlen(t) != AUTH_TOKEN_LEN || strncmp(t, AUTH_TOKEN_PREFIX, 5) != 0)
        return false;
    for (const char *p = t + 5; *p; p++)
        if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f')))
            return false;
    return true;
}

void auth_token_hash(const char *tok, uint8_t out[32])
{
    unsigned int n = 0;
    EVP_Digest(tok, strlen(tok), out, &n, EVP_sha256(), NULL);
}

int auth_token_new(entropy *e, char out[AUTH_TOKEN_LEN + 1])
{
    uint8_t raw[32];
    if (entropy_get_secret(e, raw, sizeof(raw)) != 0)
        return -1;
    memcpy(out, AUTH_TOKEN_PREFIX, 5);
    qkms_hex_encode(raw, sizeof(raw), out + 5);
    OPENSSL_cleanse(raw, sizeof(raw));
    return 0;
}

PGresult *auth_token_insert(db_conn *c, const char *name, const char *role, const uint8_t hash[32],
                            const char *created_by, const char *expires_days,
                            const char *acts_for, db_status *st)
{
    const char *vals[6] = {name, role, (const char *)hash, created_by, expires_days, acts_for};
    int lens[6] = {0, 0, 32, 0, 0, 0}, fmts[6] = {0, 0, 1, 0, 0, 0}; /* the hash is binary */
    PGresult *r = db_exec(c, Q_TOKEN_INSERT, 6, vals, lens, fmts, st);
    if (r && PQntuples(r) == 0) { /* acts_for names no live device */
        PQclear(r);
        r = NULL;
        *st = DB_NOT_FOUND;
    }
    return r;
}

db_status auth_lookup(db_pool *db, const char *tok, auth_principal *who)
{
    uint8_t h[32], stored[32];
    const char *vals[1] = {(const char *)h};
    int lens[1] = {32}, fmts[1] = {1};
    db_status st;
    PGresult *r;

    if (!auth_token_well_formed(tok))
        return DB_NOT_FOUND;
    auth_token_hash(tok, h);
    r = db_query(db, Q_TOKEN_AUTH, 1, vals, lens, fmts, &st);
    if (!r)
        return st;
    st = DB_NOT_FOUND;
    if (PQntuples(r) == 1) {
        /* bytea comes back as text "\x<hex>". */
        const char *hx = PQgetvalue(r, 0, 3);
        if (strlen(hx) == 66 && qkms_hex_decode(hx + 2, 64, stored, 32) == 32 &&
            CRYPTO_memcmp(stored, h, 32) == 0) {
            who->id = atoll(PQgetvalue(r, 0, 0));
            snprintf(who->name, sizeof(who->name), "%s", PQgetvalue(r, 0, 1));
            who->role = auth_role_parse(PQgetvalue(r, 0, 2));
            st = who->role ? DB_OK : DB_NOT_FOUND;
        }
    }
    PQclear(r);
    return st;
}
