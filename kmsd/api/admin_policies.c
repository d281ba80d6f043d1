/*
 * admin_policies — the door of the pairing policy list (policies.h): the
 * request's fields and their JSON types are checked here, their values by
 * the service.
 */
#include <string.h>

#include "api/principal.h"
#include "api/routes.h"
#include "service/policies.h"

void h_policies_list(http_request *rq, http_response *rs)
{
    json_t *out;
    qk_err e;
    if (policies_list(&rq->kms->svc, &out, &e) != QK_OK) {
        http_fail(rs, &e);
        return;
    }
    http_json(rs, 200, out);
}

static bool is_int_field(const char *key)
{
    return !strcmp(key, "key_bits") || !strcmp(key, "idle_timeout_s") ||
           !strcmp(key, "max_lifetime_s") || !strcmp(key, "max_epochs") ||
           !strcmp(key, "epoch_grace_s") || !strcmp(key, "rekey_after_s") ||
           !strcmp(key, "rekey_after_deliveries") || !strcmp(key, "stream_window");
}

/* Every field known, each a string or an integer as it should be (null is
 * absent): a wrongly typed field is an error, never silently "absent". */
static int check_fields(json_t *in, http_response *rs)
{
    static const char *const known[] = {"name", "type_a", "type_b", "group_a", "group_b",
                                        "key_bits", "idle_timeout_s", "max_lifetime_s",
                                        "delivery", "key_sources", "scope", "max_epochs",
                                        "directions", "epoch_grace_s", "rekey_after_s",
                                        "rekey_after_deliveries", "stream_window", NULL};
    const char *key;
    json_t *v;
    json_object_foreach(in, key, v) {
        bool ok = false, is_int = is_int_field(key);
        for (int i = 0; known[i]; i++)
            ok = ok || !strcmp(key, known[i]);
        if (!ok) {
            http_error(rs, 422, "invalid_policy", "unknown field '%.64s'", key);
            return -1;
        }
        if (!strcmp(key, "directions")) {
            if (!json_is_null(v) && !json_is_boolean(v)) {
                http_error(rs, 422, "invalid_policy", "field 'directions' must be a boolean");
                return -1;
            }
            continue;
        }
        if (!strcmp(key, "key_sources")) {
            size_t i;
            json_t *x;
            bool strs = json_is_array(v);
            json_array_foreach(v, i, x) strs = strs && json_is_string(x) &&
                                              strlen(json_string_value(x)) == 1;
            if (!json_is_null(v) && !strs) {
                http_error(rs, 422, "invalid_policy",
                           "key_sources must be an array of \"a\", \"b\" and \"c\"");
                return -1;
            }
            continue;
        }
        if (!json_is_null(v) && (is_int ? !json_is_integer(v) : !json_is_string(v))) {
            http_error(rs, 422, "invalid_policy", "field '%s' must be %s", key,
                       is_int ? "an integer" : "a string");
            return -1;
        }
    }
    return 0;
}

static policy_int opt_int(json_t *in, const char *key)
{
    json_t *v = json_object_get(in, key);
    policy_int p = {json_is_integer(v), json_is_integer(v) ? json_integer_value(v) : 0};
    return p;
}

static const char *str(json_t *in, const char *key)
{
    return json_string_value(json_object_get(in, key));
}

void h_policies_add(http_request *rq, http_response *rs)
{
    json_t *in = http_body_object(rq, rs);
    qk_principal who = admin_principal(rq);
    policy_spec p;
    qk_err e;

    if (!in)
        return;
    if (check_fields(in, rs) != 0)
        goto out;
    p = (policy_spec){str(in, "name"), str(in, "type_a"), str(in, "type_b"), str(in, "group_a"),
                      str(in, "group_b"), str(in, "delivery"), opt_int(in, "key_bits"),
                      opt_int(in, "idle_timeout_s"), opt_int(in, "max_lifetime_s"), NULL,
                      str(in, "scope"), opt_int(in, "max_epochs"), opt_int(in, "epoch_grace_s"),
                      json_is_true(json_object_get(in, "directions")),
                      opt_int(in, "rekey_after_s"), opt_int(in, "rekey_after_deliveries"),
                      opt_int(in, "stream_window")};
    /* ["a", "c"] as "ac", checked by the service; more than three entries
     * cannot be right and go as four. */
    char ks[5] = "";
    json_t *ksv = json_object_get(in, "key_sources");
    if (json_is_array(ksv)) {
        size_t i, n = json_array_size(ksv);
        json_t *x;
        json_array_foreach(ksv, i, x) if (i < 4) ks[i] = json_string_value(x)[0];
        ks[n < 4 ? n : 4] = 0;
        p.key_sources = ks;
    }
    if (policies_add(&rq->kms->svc, &who, &p, &e) != QK_OK) {
        http_fail(rs, &e);
        goto out;
    }
    /* The answer is the list, with the new policy in it. */
    h_policies_list(rq, rs);
    if (rs->status == 200)
        rs->status = 201;
out:
    json_decref(in);
}

void h_policies_remove(http_request *rq, http_response *rs)
{
    const char *name = rq->params[0];
    qk_principal who = admin_principal(rq);
    qk_err e;
    if (policies_remove(&rq->kms->svc, &who, name, &e) != QK_OK) {
        http_fail(rs, &e);
        return;
    }
    http_json(rs, 200, json_pack("{s:s,s:b}", "name", name, "removed", 1));
}
