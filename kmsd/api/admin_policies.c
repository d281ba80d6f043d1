/* admin_policies — pairing policies: which devices may share session keys. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "service/audit.h"
#include "service/auth.h"
#include "service/device_model.h"
#include "service/devices.h"
#include "store/pgjson.h"
#include "store/queries.h"
#include "api/routes.h"

static json_t *policy_json(const PGresult *r, int i)
{
    return json_pack("{s:o,s:o,s:o,s:o,s:o,s:i,s:i,s:i,s:o,s:o,s:o,s:s}", "name",
                     pgjson_text(r, i, 0), "type_a", pgjson_text(r, i, 1), "type_b",
                     pgjson_text(r, i, 2), "group_a", pgjson_text(r, i, 3), "group_b",
                     pgjson_text(r, i, 4), "key_bits", atoi(PQgetvalue(r, i, 5)), "idle_timeout_s",
                     atoi(PQgetvalue(r, i, 6)), "max_lifetime_s", atoi(PQgetvalue(r, i, 7)),
                     "delivery", pgjson_text(r, i, 8), "created_at", pgjson_time(r, i, 9),
                     "created_by", pgjson_text(r, i, 10), "scope",
                     PQgetisnull(r, i, 3) ? "same-group" : "cross-group");
}

void h_policies_list(http_request *rq, http_response *rs)
{
    http_db_list(rq, rs, Q_POLICY_LIST, "policies", policy_json);
}

struct policy_tx {
    const char *vals[10];
    const char *actor, *name;
    json_t *detail;
    int remove;
    int found;
};

static db_status policy_tx_fn(db_conn *c, void *arg)
{
    struct policy_tx *t = arg;
    db_status st;
    PGresult *r = t->remove ? db_exec(c, Q_POLICY_DELETE, 1, t->vals, NULL, NULL, &st)
                            : db_exec(c, Q_POLICY_INSERT, 10, t->vals, NULL, NULL, &st);
    if (!r)
        return st;
    t->found = t->remove ? PQntuples(r) : 1;
    PQclear(r);
    if (!t->found)
        return DB_NOT_FOUND;
    return audit_append(c, t->actor, t->remove ? "policy.removed" : "policy.added", NULL,
                        json_incref(t->detail));
}

static bool type_ok(const char *s) { return s && (!strcmp(s, "*") || device_type_name_valid(s)); }

/* "*" or a type in device_types (a typo would make a policy that never matches). */
static bool type_known(http_request *rq, const char *type)
{
    json_t *types;
    devices_err e;
    size_t i;
    json_t *v;
    bool found = !strcmp(type, "*");
    if (found || device_types_list(&rq->kms->svc, &types, &e) != 0)
        return found;
    json_array_foreach(json_object_get(types, "types"), i, v)
        found = found || !strcmp(json_string_value(v), type);
    json_decref(types);
    return found;
}

static int opt_int(json_t *in, http_response *rs, const char *key, int lo, int hi, int def, char *buf)
{
    json_t *v = json_object_get(in, key);
    int n = def;
    if (v && !json_is_null(v)) {
        if (!json_is_integer(v) || json_integer_value(v) < lo || json_integer_value(v) > hi) {
            http_error(rs, 422, "invalid_policy", "%s must be an integer from %d to %d", key, lo, hi);
            return -1;
        }
        n = (int)json_integer_value(v);
    }
    snprintf(buf, 16, "%d", n);
    return 0;
}

void h_policies_add(http_request *rq, http_response *rs)
{
    static const char *const known[] = {"name", "type_a", "type_b", "group_a", "group_b",
                                        "key_bits", "idle_timeout_s", "max_lifetime_s",
                                        "delivery", NULL};
    json_t *in = http_body_object(rq, rs), *v;
    struct policy_tx t;
    char bits[16], idle[16], life[16];
    const char *key, *delivery;
    db_status st;

    if (!in)
        return;
    memset(&t, 0, sizeof(t));
    json_object_foreach(in, key, v) {
        bool ok = false, is_int = !strcmp(key, "key_bits") || !strcmp(key, "idle_timeout_s") ||
                                  !strcmp(key, "max_lifetime_s");
        for (int i = 0; known[i]; i++)
            ok = ok || !strcmp(key, known[i]);
        if (!ok) {
            http_error(rs, 422, "invalid_policy", "unknown field '%.64s'", key);
            goto out;
        }
        /* A wrongly typed field is an error, never silently "absent". */
        if (!json_is_null(v) && (is_int ? !json_is_integer(v) : !json_is_string(v))) {
            http_error(rs, 422, "invalid_policy", "field '%s' must be %s", key,
                       is_int ? "an integer" : "a string");
            goto out;
        }
    }
    t.name = json_string_value(json_object_get(in, "name"));
    t.vals[0] = t.name;
    t.vals[1] = json_string_value(json_object_get(in, "type_a"));
    t.vals[2] = json_string_value(json_object_get(in, "type_b"));
    t.vals[3] = json_string_value(json_object_get(in, "group_a"));
    t.vals[4] = json_string_value(json_object_get(in, "group_b"));
    delivery = json_string_value(json_object_get(in, "delivery"));
    if (!auth_name_valid(t.name)) {
        http_error(rs, 422, "invalid_policy", "name must be 1-64 of letters, digits, '.', '_' or '-'");
        goto out;
    }
    if (!type_ok(t.vals[1]) || !type_ok(t.vals[2]) || !type_known(rq, t.vals[1]) ||
        !type_known(rq, t.vals[2])) {
        http_error(rs, 422, "invalid_policy",
                   "type_a and type_b must be registered device types or \"*\"");
        goto out;
    }
    if (!!t.vals[3] != !!t.vals[4] || (t.vals[3] && (!device_group_valid(t.vals[3]) ||
                                                      !device_group_valid(t.vals[4])))) {
        http_error(rs, 422, "invalid_policy",
                   "group_a and group_b go together (cross-group policy) and must be groups");
        goto out;
    }
    if (delivery && strcmp(delivery, "session") && strcmp(delivery, "delivered")) {
        http_error(rs, 422, "invalid_policy", "delivery must be session or delivered");
        goto out;
    }
    if (opt_int(in, rs, "key_bits", 128, 256, 128, bits) ||
        opt_int(in, rs, "idle_timeout_s", 1, 86400, 300, idle) ||
        opt_int(in, rs, "max_lifetime_s", 1, 604800, 3600, life))
        goto out;
    if (strcmp(bits, "128") && strcmp(bits, "256")) {
        http_error(rs, 422, "invalid_policy", "key_bits must be 128 or 256");
        goto out;
    }
    t.vals[5] = bits;
    t.vals[6] = idle;
    t.vals[7] = life;
    t.vals[8] = delivery ? delivery : "session";
    t.vals[9] = rq->who.name;
    t.actor = rq->who.name;
    t.detail = json_deep_copy(in);
    st = db_tx(rq->kms->svc.db, policy_tx_fn, &t);
    if (st == DB_CONFLICT)
        http_error(rs, 409, "conflict", "a policy named '%s' exists", t.name);
    else if (st != DB_OK)
        http_db_error(rs, st);
    else
        h_policies_list(rq, rs);
    if (st == DB_OK)
        rs->status = 201;
out:
    json_decref(t.detail);
    json_decref(in);
}

void h_policies_remove(http_request *rq, http_response *rs)
{
    struct policy_tx t;
    db_status st;
    memset(&t, 0, sizeof(t));
    t.name = rq->params[0];
    if (!auth_name_valid(t.name)) {
        http_error(rs, 404, "not_found", "no such policy");
        return;
    }
    t.vals[0] = t.name;
    t.remove = 1;
    t.actor = rq->who.name;
    t.detail = json_pack("{s:s}", "name", t.name);
    st = db_tx(rq->kms->svc.db, policy_tx_fn, &t);
    json_decref(t.detail);
    if (st == DB_NOT_FOUND)
        http_error(rs, 404, "not_found", "no policy named '%s'", t.name);
    else if (st != DB_OK)
        http_db_error(rs, st);
    else
        http_json(rs, 200, json_pack("{s:s,s:b}", "name", t.name, "removed", 1));
}
