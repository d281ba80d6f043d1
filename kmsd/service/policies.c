/*
 * policies — the pairing policy list (policies.h): its checks, its rows in
 * pairing_policies and their audit records.
 */
#include "service/policies.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "service/audit.h"
#include "service/auth.h"
#include "service/device_model.h"
#include "service/devices.h"
#include "service/sessions.h"
#include "store/pgjson.h"
#include "store/queries.h"

static json_t *policy_json(const PGresult *r, int i)
{
    return json_pack("{s:o,s:o,s:o,s:o,s:o,s:i,s:i,s:i,s:o,s:o,s:o,s:s}", "name",
                     pgjson_text(r, i, 0), "type_a", pgjson_text(r, i, 1), "type_b",
                     pgjson_text(r, i, 2), "group_a", pgjson_text(r, i, 3), "group_b",
                     pgjson_text(r, i, 4), "key_bits", atoi(PQgetvalue(r, i, 5)), "idle_timeout_s",
                     atoi(PQgetvalue(r, i, 6)), "max_lifetime_s", atoi(PQgetvalue(r, i, 7)),
                     "delivery", pgjson_text(r, i, 8), "created_at", pgjson_time(r, i, 9),
                     "created_by", pgjson_text(r, i, 10), "scope",
                     PQgetvalue(r, i, 12)[0] == 't' ? "parent"
                     : !strcmp(PQgetvalue(r, i, 1), SESSION_PLATFORM_PEER) ||
                             !strcmp(PQgetvalue(r, i, 2), SESSION_PLATFORM_PEER)
                         ? "platform"
                     : PQgetisnull(r, i, 3) ? "same-group"
                                            : "cross-group");
}

static json_t *policy_row(const PGresult *r, int i)
{
    json_t *o = policy_json(r, i);
    json_t *ks = json_loads(PQgetvalue(r, i, 11), 0, NULL);
    if (o && ks)
        json_object_set_new(o, "key_sources", ks);
    else
        json_decref(ks);
    if (o) {
        json_object_set_new(o, "max_epochs", json_integer(atoi(PQgetvalue(r, i, 13))));
        json_object_set_new(o, "directions", json_boolean(PQgetvalue(r, i, 14)[0] == 't'));
        json_object_set_new(o, "epoch_grace_s", json_integer(atoi(PQgetvalue(r, i, 15))));
        json_object_set_new(o, "rekey_after_s", PQgetisnull(r, i, 16) ? json_null()
                                                : json_integer(atoi(PQgetvalue(r, i, 16))));
        json_object_set_new(o, "rekey_after_deliveries",
                            PQgetisnull(r, i, 17) ? json_null()
                                                  : json_integer(atoll(PQgetvalue(r, i, 17))));
        json_object_set_new(o, "stream_window", json_integer(atoi(PQgetvalue(r, i, 18))));
    }
    return o;
}

qk_kind policies_list(qk_svc *s, json_t **out, qk_err *e)
{
    db_status st;
    PGresult *r = db_query(s->db, Q_POLICY_LIST, 0, NULL, NULL, NULL, &st);

    *out = NULL;
    if (!r)
        return db_fail(e, st);
    *out = json_pack("{s:o}", "policies", pgjson_rows(r, policy_row));
    PQclear(r);
    return QK_OK;
}

/* "*", "@platform" (the platform as a peer, protocol v2) or a registered
 * device type, into *ok. */
static qk_kind type_ok(qk_svc *s, const char *type, bool *ok, qk_err *e)
{
    *ok = type && (!strcmp(type, "*") || !strcmp(type, SESSION_PLATFORM_PEER) ||
                   device_type_name_valid(type));
    if (!*ok || !strcmp(type, "*") || !strcmp(type, SESSION_PLATFORM_PEER))
        return QK_OK;
    return device_types_has(s, type, ok, e);
}

/* The integer as text into buf (def when not set), if within lo..hi. */
static qk_kind int_arg(const char *key, policy_int v, long long lo, long long hi, int def,
                       char buf[24], qk_err *e)
{
    if (v.set && (v.v < lo || v.v > hi))
        return qk_fail(e, QK_INVALID, "invalid_policy", "%s must be an integer from %lld to %lld",
                       key, lo, hi);
    snprintf(buf, 24, "%lld", v.set ? v.v : (long long)def);
    return QK_OK;
}

static qk_kind check_policy(qk_svc *s, const policy_spec *p, char ints[8][24], qk_err *e)
{
    bool a = false, b = false;
    qk_kind k;

    if (!auth_name_valid(p->name))
        return qk_fail(e, QK_INVALID, "invalid_policy",
                       "name must be 1-64 of letters, digits, '.', '_' or '-'");
    if ((k = type_ok(s, p->type_a, &a, e)) != QK_OK || (a && (k = type_ok(s, p->type_b, &b, e)) != QK_OK))
        return k;
    if (!a || !b)
        return qk_fail(e, QK_INVALID, "invalid_policy",
                       "type_a and type_b must be registered device types, \"*\" or "
                       "\"@platform\"");
    if (!strcmp(p->type_a, SESSION_PLATFORM_PEER) + !strcmp(p->type_b, SESSION_PLATFORM_PEER) == 2 ||
        ((!strcmp(p->type_a, SESSION_PLATFORM_PEER) || !strcmp(p->type_b, SESSION_PLATFORM_PEER)) &&
         p->group_a))
        return qk_fail(e, QK_INVALID, "invalid_policy",
                       "a policy for the platform as peer names \"@platform\" on one side only, "
                       "and no groups");
    if (!!p->group_a != !!p->group_b ||
        (p->group_a && (!device_group_valid(p->group_a) || !device_group_valid(p->group_b))))
        return qk_fail(e, QK_INVALID, "invalid_policy",
                       "group_a and group_b go together (cross-group policy) and must be groups");
    if (p->scope && strcmp(p->scope, "parent") && strcmp(p->scope, "groups"))
        return qk_fail(e, QK_INVALID, "invalid_policy",
                       "scope is \"parent\" (a sub-device with its own gateway only) or "
                       "\"groups\" (the default)");
    if (p->scope && !strcmp(p->scope, "parent") &&
        (p->group_a || !strcmp(p->type_a, SESSION_PLATFORM_PEER) ||
         !strcmp(p->type_b, SESSION_PLATFORM_PEER)))
        return qk_fail(e, QK_INVALID, "invalid_policy",
                       "a scope \"parent\" policy names no groups and no \"@platform\"");
    if (p->delivery && strcmp(p->delivery, "session") && strcmp(p->delivery, "delivered"))
        return qk_fail(e, QK_INVALID, "invalid_policy", "delivery must be session or delivered");
    if ((k = int_arg("key_bits", p->key_bits, 128, 256, 128, ints[0], e)) != QK_OK ||
        (k = int_arg("idle_timeout_s", p->idle_timeout_s, 1, 86400, 300, ints[1], e)) != QK_OK ||
        (k = int_arg("max_lifetime_s", p->max_lifetime_s, 1, 604800, 3600, ints[2], e)) != QK_OK ||
        (k = int_arg("max_epochs", p->max_epochs, 1, 1000000, 1, ints[3], e)) != QK_OK ||
        (k = int_arg("epoch_grace_s", p->epoch_grace_s, 0, 86400, 60, ints[4], e)) != QK_OK ||
        (k = int_arg("rekey_after_s", p->rekey_after_s, 1, 604800, 0, ints[5], e)) != QK_OK ||
        (k = int_arg("rekey_after_deliveries", p->rekey_after_deliveries, 2, 1000000000, 0,
                     ints[6], e)) != QK_OK ||
        (k = int_arg("stream_window", p->stream_window, 1, 1024, 16, ints[7], e)) != QK_OK)
        return k;
    if ((p->rekey_after_s.set || p->rekey_after_deliveries.set) &&
        !(p->max_epochs.set && p->max_epochs.v > 1))
        return qk_fail(e, QK_INVALID, "invalid_policy",
                       "rekey_after_s and rekey_after_deliveries need max_epochs above 1");
    if ((p->max_epochs.set && p->max_epochs.v > 1) || p->directions) {
        /* A single-transfer session has one key, and the platform's
         * channel keys are protocol v2's, which has no epochs. */
        if (p->delivery && !strcmp(p->delivery, "delivered"))
            return qk_fail(e, QK_INVALID, "invalid_policy",
                           "max_epochs above 1 and directions are for delivery \"session\"");
        if (!strcmp(p->type_a, SESSION_PLATFORM_PEER) || !strcmp(p->type_b, SESSION_PLATFORM_PEER))
            return qk_fail(e, QK_INVALID, "invalid_policy",
                           "max_epochs above 1 and directions are for two devices, not "
                           "\"@platform\"");
    }
    if (strcmp(ints[0], "128") && strcmp(ints[0], "256"))
        return qk_fail(e, QK_INVALID, "invalid_policy", "key_bits must be 128 or 256");
    return QK_OK;
}

/* key_sources ("ac") as the array literal "{a,c}" into out (all three when
 * NULL). */
static qk_kind sources_arg(const char *ks, char out[8], qk_err *e)
{
    size_t n = 0;
    if (!ks)
        ks = "abc";
    if (!*ks || strlen(ks) > 3)
        return qk_fail(e, QK_INVALID, "invalid_policy",
                       "key_sources must be one to three of \"a\", \"b\", \"c\", each once");
    out[n++] = '{';
    for (const char *p = ks; *p; p++) {
        if (!strchr("abc", *p) || strchr(p + 1, *p))
            return qk_fail(e, QK_INVALID, "invalid_policy",
                           "key_sources must be one to three of \"a\", \"b\", \"c\", each once");
        if (p != ks)
            out[n++] = ',';
        out[n++] = *p;
    }
    out[n++] = '}';
    out[n] = 0;
    return QK_OK;
}

/* The audit detail: the fields the policy was given, as given. */
static json_t *policy_detail(const policy_spec *p)
{
    json_t *d = json_pack("{s:s,s:s,s:s}", "name", p->name, "type_a", p->type_a, "type_b",
                          p->type_b);
    const char *const skey[] = {"group_a", "group_b", "delivery"};
    const char *const sval[] = {p->group_a, p->group_b, p->delivery};
    const char *const ikey[] = {"key_bits",      "idle_timeout_s", "max_lifetime_s",
                                "max_epochs",    "epoch_grace_s",  "rekey_after_s",
                                "rekey_after_deliveries", "stream_window"};
    const policy_int ival[] = {p->key_bits,      p->idle_timeout_s, p->max_lifetime_s,
                               p->max_epochs,    p->epoch_grace_s,  p->rekey_after_s,
                               p->rekey_after_deliveries, p->stream_window};
    for (int i = 0; i < 8 && d; i++) {
        if (i < 3 && sval[i])
            json_object_set_new(d, skey[i], json_string(sval[i]));
        if (ival[i].set)
            json_object_set_new(d, ikey[i], json_integer(ival[i].v));
    }
    if (d && p->directions)
        json_object_set_new(d, "directions", json_true());
    return d;
}

struct policy_tx {
    const char *vals[18];
    const char *actor;
    json_t *detail;
    bool remove;
};

static db_status policy_tx_fn(db_conn *c, void *arg)
{
    struct policy_tx *t = arg;
    db_status st;
    PGresult *r = t->remove ? db_exec(c, Q_POLICY_DELETE, 1, t->vals, NULL, NULL, &st)
                            : db_exec(c, Q_POLICY_INSERT, 18, t->vals, NULL, NULL, &st);
    int found;
    if (!r)
        return st;
    found = t->remove ? PQntuples(r) : 1;
    PQclear(r);
    if (!found)
        return DB_NOT_FOUND;
    return audit_append(c, t->actor, t->remove ? "policy.removed" : "policy.added", NULL,
                        json_incref(t->detail));
}

qk_kind policies_add(qk_svc *s, const qk_principal *who, const policy_spec *p, qk_err *e)
{
    struct policy_tx t = {{0}, who->name, NULL, false};
    char ints[8][24], sources[8];
    db_status st;
    qk_kind k;

    qk_clear(e);
    if ((k = check_policy(s, p, ints, e)) != QK_OK || (k = sources_arg(p->key_sources, sources, e)) != QK_OK)
        return k;
    t.vals[0] = p->name;
    t.vals[1] = p->type_a;
    t.vals[2] = p->type_b;
    t.vals[3] = p->group_a;
    t.vals[4] = p->group_b;
    t.vals[5] = ints[0];
    t.vals[6] = ints[1];
    t.vals[7] = ints[2];
    t.vals[8] = p->delivery ? p->delivery : "session";
    t.vals[9] = who->name;
    t.vals[10] = sources;
    t.vals[11] = p->scope && !strcmp(p->scope, "parent") ? "true" : "false";
    t.vals[12] = ints[3];
    t.vals[13] = p->directions ? "true" : "false";
    t.vals[14] = ints[4];
    t.vals[15] = p->rekey_after_s.set ? ints[5] : NULL;
    t.vals[16] = p->rekey_after_deliveries.set ? ints[6] : NULL;
    t.vals[17] = ints[7];
    t.detail = policy_detail(p);
    if (t.detail && p->scope)
        json_object_set_new(t.detail, "scope", json_string(p->scope));
    if (t.detail && p->key_sources)
        json_object_set_new(t.detail, "key_sources", json_string(p->key_sources));
    st = db_tx(s->db, policy_tx_fn, &t);
    json_decref(t.detail);
    if (st == DB_CONFLICT)
        return qk_fail(e, QK_CONFLICT, "conflict", "a policy named '%s' exists", p->name);
    if (st != DB_OK)
        return db_fail(e, st);
    return QK_OK;
}

qk_kind policies_remove(qk_svc *s, const qk_principal *who, const char *name, qk_err *e)
{
    struct policy_tx t = {{name}, who->name, NULL, true};
    db_status st;

    qk_clear(e);
    if (!name || !auth_name_valid(name))
        return qk_fail(e, QK_NOT_FOUND, "not_found", "no such policy");
    t.detail = json_pack("{s:s}", "name", name);
    st = db_tx(s->db, policy_tx_fn, &t);
    json_decref(t.detail);
    if (st == DB_NOT_FOUND)
        return qk_fail(e, QK_NOT_FOUND, "not_found", "no policy named '%s'", name);
    if (st != DB_OK)
        return db_fail(e, st);
    return QK_OK;
}
