/* admin_tokens — create, list and revoke admin API tokens. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

#include "log.h"
#include "store/pgjson.h"
#include "store/queries.h"
#include "api/routes.h"

void h_tokens_create(http_request *rq, http_response *rs)
{
    json_t *in = http_body_object(rq, rs);
    json_t *jname, *jrole, *jexp;
    const char *name, *role;
    char tok[AUTH_TOKEN_LEN + 1], days[16];
    uint8_t hash[32];
    db_status st;
    db_conn *c = NULL;
    PGresult *r = NULL;

    if (!in)
        return;
    jname = json_object_get(in, "name");
    jrole = json_object_get(in, "role");
    jexp = json_object_get(in, "expires_in_days");
    if (json_object_size(in) > (size_t)(1 + 1 + (jexp ? 1 : 0)) || !jname || !jrole) {
        http_error(rs, 422, "invalid_request",
                   "expected {\"name\": string, \"role\": string, \"expires_in_days\"?: integer}");
        goto out;
    }
    name = json_string_value(jname);
    role = json_string_value(jrole);
    if (!name || !auth_name_valid(name)) {
        http_error(rs, 422, "invalid_name",
                   "name must be 1-64 characters of letters, digits, '.', '_' or '-', "
                   "starting with a letter or digit");
        goto out;
    }
    if (!auth_role_parse(role)) {
        http_error(rs, 422, "invalid_role", "role must be admin, operator or auditor");
        goto out;
    }
    if (jexp && !json_is_null(jexp) &&
        (!json_is_integer(jexp) || json_integer_value(jexp) < 1 || json_integer_value(jexp) > 3650)) {
        http_error(rs, 422, "invalid_expiry", "expires_in_days must be an integer from 1 to 3650");
        goto out;
    }
    if (auth_token_new(rq->kms->svc.ent, tok) != 0) {
        rs->retry_after = 1;
        http_error(rs, 503, "entropy_unavailable", "no entropy source available");
        goto out;
    }
    auth_token_hash(tok, hash);
    snprintf(days, sizeof(days), "%lld", jexp && json_is_integer(jexp) ? (long long)json_integer_value(jexp) : 0LL);

    c = db_acquire(rq->kms->svc.db, &st);
    if (!c) {
        http_db_error(rs, st);
        goto out;
    }
    r = auth_token_insert(c, name, role, hash, rq->who.name,
                          jexp && json_is_integer(jexp) ? days : NULL, &st);
    if (!r) {
        if (st == DB_CONFLICT)
            http_error(rs, 409, "conflict", "a live token named '%s' exists", name);
        else
            http_db_error(rs, st);
        goto out;
    }
    log_emit(LOG_INFO, "admin token created", "{s:s,s:s,s:s,s:s}", "name", name, "role", role,
             "by", rq->who.name, "req_id", rq->req_id);
    http_json(rs, 201,
              json_pack("{s:s,s:s,s:s,s:o,s:o}", "name", name, "role", role, "token", tok,
                        "created_at", pgjson_time(r, 0, 0), "expires_at", pgjson_time(r, 0, 1)));
out:
    OPENSSL_cleanse(tok, sizeof(tok));
    PQclear(r);
    db_release(rq->kms->svc.db, c);
    json_decref(in);
}

static json_t *token_json(const PGresult *r, int i)
{
    return json_pack("{s:o,s:o,s:o,s:o,s:o,s:o,s:o,s:o}", "name", pgjson_text(r, i, 0), "role",
                     pgjson_text(r, i, 1), "state", pgjson_text(r, i, 2), "created_at",
                     pgjson_time(r, i, 3), "expires_at", pgjson_time(r, i, 4), "last_used_at",
                     pgjson_time(r, i, 5), "revoked_at", pgjson_time(r, i, 6), "created_by",
                     pgjson_text(r, i, 7));
}

void h_tokens_list(http_request *rq, http_response *rs)
{
    http_db_list(rq, rs, Q_TOKEN_LIST, "tokens", token_json);
}

void h_tokens_revoke(http_request *rq, http_response *rs)
{
    const char *name = rq->params[0];
    const char *vals[1] = {name};
    db_status st;
    PGresult *r;

    if (!auth_name_valid(name)) {
        http_error(rs, 422, "invalid_name", "not a valid token name");
        return;
    }
    r = db_query(rq->kms->svc.db, Q_TOKEN_REVOKE, 1, vals, NULL, NULL, &st);
    if (!r) {
        http_db_error(rs, st);
        return;
    }
    if (PQntuples(r) == 0) {
        PQclear(r);
        http_error(rs, 404, "not_found", "no live token named '%s'", name);
        return;
    }
    log_emit(LOG_INFO, "admin token revoked", "{s:s,s:s,s:s}", "name", name, "by", rq->who.name,
             "req_id", rq->req_id);
    http_json(rs, 200, json_pack("{s:s,s:o}", "name", name, "revoked_at", pgjson_time(r, 0, 0)));
    PQclear(r);
}
