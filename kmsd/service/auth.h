/*
 * auth — admin API tokens: format, hashing, lookup and roles.
 *
 * Contract:
 *  - A token is "qkms_" followed by 64 hex digits (32 bytes from the
 *    entropy interface). Only SHA-256(token) is stored.
 *  - auth_lookup() finds a live (not revoked, not expired) token by hash in
 *    one indexed query and confirms the stored hash in constant time.
 *  - Roles are bits so a route can allow several.
 */
#ifndef QKMS_AUTH_H
#define QKMS_AUTH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "store/db.h"

/* ROLE_APP: an app's token (apps.h): only the app door's routes take it.
 * ROLE_CRYPTO: a back end's token for the crypto services (crypto.h), which
 * acts for one party (a device or '@platform'): only those routes take it.
 * ROLE_RELEASE: signs firmware releases (docs/firmware.md) and reads the
 * firmware keys; nothing else. */
enum {
    ROLE_ADMIN = 1u,
    ROLE_OPERATOR = 2u,
    ROLE_AUDITOR = 4u,
    ROLE_APP = 8u,
    ROLE_CRYPTO = 16u,
    ROLE_RELEASE = 32u,
};
#define ROLE_ANY (ROLE_ADMIN | ROLE_OPERATOR | ROLE_AUDITOR)

#define AUTH_TOKEN_PREFIX "qkms_"
#define AUTH_TOKEN_LEN (5 + 64)

typedef struct {
    long long id;
    char name[65];
    unsigned role;
} auth_principal;

struct entropy;

/* "admin" -> ROLE_ADMIN; 0 when unknown. */
unsigned auth_role_parse(const char *s);
const char *auth_role_name(unsigned role);
/* Token names: the rule of names.h, at most 64 characters. */
bool auth_name_valid(const char *s);
/* Extract the token from an Authorization header value ("Bearer <tok>");
 * returns 0 or -1 when absent or malformed. */
int auth_bearer(const char *header, char *tok, size_t toklen);
/* Syntactic check of a token string. */
bool auth_token_well_formed(const char *tok);
void auth_token_hash(const char *tok, uint8_t out[32]);
/* Make a fresh token (from the entropy interface); 0 or -1. */
int auth_token_new(struct entropy *e, char out[AUTH_TOKEN_LEN + 1]);
/* DB_OK with *who filled, DB_NOT_FOUND when unknown/revoked/expired. */
db_status auth_lookup(db_pool *db, const char *tok, auth_principal *who);
/* Store a token by its hash (the token itself never reaches the database):
 * name, role, who made it and its lifetime (expires_days, decimal; NULL =
 * never expires), and for a crypto token the party it acts for (acts_for:
 * a device ID or "@platform"; NULL for other roles). Returns the row
 * (created_at, expires_at; PQclear it) or NULL with *st set; DB_CONFLICT: a
 * live token has that name; DB_NOT_FOUND: acts_for names no device that is
 * not revoked. */
PGresult *auth_token_insert(db_conn *c, const char *name, const char *role, const uint8_t hash[32],
                            const char *created_by, const char *expires_days,
                            const char *acts_for, db_status *st);

#endif
