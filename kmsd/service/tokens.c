/*
 * tokens — creating, listing and revoking admin API tokens (tokens.h). The
 * token string lives on the stack only until it is in the answer, and is
 * wiped there.
 */
#include "service/tokens.h"

#include <stdio.h>
#include <string.h>

#include <openssl/crypto.h>

#include "qkms_proto.h"
#include "service/auth.h"
#include "store/pgjson.h"
#include "store/queries.h"

static qk_kind check_spec(const token_spec *spec, qk_err *e)
{
    if (!spec->name || !auth_name_valid(spec->name))
        return qk_fail(e, QK_INVALID, "invalid_name",
                       "name must be 1-64 characters of letters, digits, '.', '_' or '-', "
                       "starting with a letter or digit");
    if (spec->name && !strncmp(spec->name, "app.", 4))
        return qk_fail(e, QK_INVALID, "invalid_name",
                       "token names starting with 'app.' are the apps' (/v1/admin/apps)");
    unsigned role = auth_role_parse(spec->role);
    if (!(role & (ROLE_ANY | ROLE_CRYPTO | ROLE_RELEASE)))
        return qk_fail(e, QK_INVALID, "invalid_role",
                       "role must be admin, operator, auditor, crypto or release (an app's "
                       "tokens: /v1/admin/apps)");
    if (role == ROLE_CRYPTO && !spec->acts_for)
        return qk_fail(e, QK_INVALID, "invalid_acts_for",
                       "a crypto token acts for one party: acts_for, a device ID or '@platform'");
    if (role != ROLE_CRYPTO && spec->acts_for)
        return qk_fail(e, QK_INVALID, "invalid_acts_for", "only a crypto token acts for a party");
    if (spec->acts_for && strcmp(spec->acts_for, "@platform") != 0 &&
        !qkp_id_valid(spec->acts_for))
        return qk_fail(e, QK_INVALID, "invalid_acts_for",
                       "acts_for must be a device ID (1-128 printable ASCII characters) or "
                       "'@platform'");
    if (spec->expires &&
        (spec->expires_in_days < 1 || spec->expires_in_days > TOKEN_EXPIRY_MAX_DAYS))
        return qk_fail(e, QK_INVALID, "invalid_expiry",
                       "expires_in_days must be an integer from 1 to %d", TOKEN_EXPIRY_MAX_DAYS);
    return QK_OK;
}

qk_kind tokens_create(qk_svc *s, const qk_principal *who, const token_spec *spec, json_t **out,
                      qk_err *e)
{
    char tok[AUTH_TOKEN_LEN + 1] = "", days[24];
    uint8_t hash[32];
    db_status st;
    db_conn *c = NULL;
    PGresult *r = NULL;
    qk_kind k;

    *out = NULL;
    qk_clear(e);
    if ((k = check_spec(spec, e)) != QK_OK)
        return k;
    if (auth_token_new(s->ent, tok) != 0) {
        k = qk_fail(e, QK_UNAVAILABLE, "entropy_unavailable", "no entropy source available");
        e->retry_after = 1;
        goto out;
    }
    auth_token_hash(tok, hash);
    snprintf(days, sizeof(days), "%lld", spec->expires_in_days);
    if (!(c = db_acquire(s->db, &st))) {
        k = db_fail(e, st);
        goto out;
    }
    r = auth_token_insert(c, spec->name, spec->role, hash, who->name, spec->expires ? days : NULL,
                          spec->acts_for, &st);
    if (!r) {
        k = st == DB_CONFLICT    ? qk_fail(e, QK_CONFLICT, "conflict",
                                           "a live token named '%s' exists", spec->name)
            : st == DB_NOT_FOUND ? qk_fail(e, QK_INVALID, "unknown_device",
                                           "no device '%s' that is not revoked", spec->acts_for)
                                 : db_fail(e, st);
        goto out;
    }
    log_with(&who->log, LOG_INFO, "admin token created", "{s:s,s:s,s:s,s:s?}", "name", spec->name,
             "role", spec->role, "by", who->name, "acts_for", spec->acts_for);
    *out = json_pack("{s:s,s:s,s:s,s:o,s:o,s:s?}", "name", spec->name, "role", spec->role, "token",
                     tok, "created_at", pgjson_time(r, 0, 0), "expires_at", pgjson_time(r, 0, 1),
                     "acts_for", spec->acts_for);
    if (*out && !spec->acts_for)
        json_object_set_new(*out, "acts_for", json_null());
    k = QK_OK;
out:
    OPENSSL_cleanse(tok, sizeof(tok));
    OPENSSL_cleanse(hash, sizeof(hash));
    PQclear(r);
    if (c)
        db_release(s->db, c);
    return k;
}

static json_t *token_json(const PGresult *r, int i)
{
    return json_pack("{s:o,s:o,s:o,s:o,s:o,s:o,s:o,s:o,s:o}", "name", pgjson_text(r, i, 0),
                     "role", pgjson_text(r, i, 1), "state", pgjson_text(r, i, 2), "created_at",
                     pgjson_time(r, i, 3), "expires_at", pgjson_time(r, i, 4), "last_used_at",
                     pgjson_time(r, i, 5), "revoked_at", pgjson_time(r, i, 6), "created_by",
                     pgjson_text(r, i, 7), "acts_for", pgjson_text(r, i, 8));
}

qk_kind tokens_list(qk_svc *s, json_t **out, qk_err *e)
{
    db_status st;
    PGresult *r = db_query(s->db, Q_TOKEN_LIST, 0, NULL, NULL, NULL, &st);

    *out = NULL;
    if (!r)
        return db_fail(e, st);
    *out = json_pack("{s:o}", "tokens", pgjson_rows(r, token_json));
    PQclear(r);
    return QK_OK;
}

qk_kind tokens_revoke(qk_svc *s, const qk_principal *who, const char *name, json_t **out,
                      qk_err *e)
{
    const char *vals[1] = {name};
    db_status st;
    PGresult *r;

    *out = NULL;
    if (!name || !auth_name_valid(name))
        return qk_fail(e, QK_INVALID, "invalid_name", "not a valid token name");
    if (!(r = db_query(s->db, Q_TOKEN_REVOKE, 1, vals, NULL, NULL, &st)))
        return db_fail(e, st);
    if (PQntuples(r) == 0) {
        PQclear(r);
        return qk_fail(e, QK_NOT_FOUND, "not_found", "no live token named '%s'", name);
    }
    log_with(&who->log, LOG_INFO, "admin token revoked", "{s:s,s:s}", "name", name, "by",
             who->name);
    *out = json_pack("{s:s,s:o}", "name", name, "revoked_at", pgjson_time(r, 0, 0));
    PQclear(r);
    return QK_OK;
}
