/*
 * firmware_approvals — release approvals (firmware_approvals.h): product
 * rules, requests and approvals, each in its own transaction with its
 * audit row; the check and the use inside the signature's.
 */
#include "service/firmware_approvals.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

#include "hexutil.h"
#include "service/audit.h"
#include "service/firmware_keys.h"
#include "store/pgjson.h"
#include "store/queries.h"

/* An integer column, or null. */
static json_t *int_or_null(const PGresult *r, int i, int col)
{
    return PQgetisnull(r, i, col) ? json_null()
                                  : json_integer((json_int_t)strtoll(PQgetvalue(r, i, col), NULL, 10));
}

static json_t *rule_json(const PGresult *r, int i)
{
    return json_pack("{s:o,s:i,s:o,s:o}", "product", pgjson_text(r, i, 0), "approvals",
                     atoi(PQgetvalue(r, i, 1)), "updated_at", pgjson_time(r, i, 2),
                     "updated_by", pgjson_text(r, i, 3));
}

static json_t *approval_json(const PGresult *r, int i)
{
    json_t *t = json_loads(PQgetvalue(r, i, 5), 0, NULL);
    return json_pack("{s:o,s:o,s:o,s:o,s:o,s:o,s:o,s:o,s:o,s:o,s:o,s:o,s:o,s:o,s:o,s:o}", "id",
                     pgjson_text(r, i, 0), "product", pgjson_text(r, i, 1), "version",
                     pgjson_text(r, i, 2), "image_size", int_or_null(r, i, 3), "image_sha256",
                     pgjson_text(r, i, 4), "targets", t ? t : json_null(), "counter",
                     int_or_null(r, i, 6), "not_before", int_or_null(r, i, 7), "state",
                     pgjson_text(r, i, 8), "requested_by", pgjson_text(r, i, 9), "requested_at",
                     pgjson_time(r, i, 10), "approved_by", pgjson_text(r, i, 11), "approved_at",
                     pgjson_time(r, i, 12), "used_at", pgjson_time(r, i, 13), "package_id",
                     pgjson_text(r, i, 14), "expires_at", pgjson_time(r, i, 15));
}

static qk_kind one_approval(qk_svc *s, const char *id, json_t **out, qk_err *e)
{
    const char *vals[2] = {NULL, id};
    db_status st;
    PGresult *r = db_query(s->db, Q_FW_APPROVALS_LIST, 2, vals, NULL, NULL, &st);
    if (!r)
        return db_fail(e, st);
    *out = PQntuples(r) == 1 ? approval_json(r, 0) : NULL;
    PQclear(r);
    return *out ? QK_OK : qk_fail(e, QK_INTERNAL, "internal", "out of memory");
}

/* ---- rules ------------------------------------------------------------------ */

typedef struct {
    const qk_principal *who;
    const char *product;
    int approvals;
    json_t *out;
    qk_err *e;
} rule_tx;

static db_status rule_tx_fn(db_conn *c, void *arg)
{
    rule_tx *t = arg;
    char n[8];
    const char *vals[3] = {t->product, n, t->who->name};
    db_status st;
    PGresult *r;
    int was = 1;

    json_decref(t->out);
    t->out = NULL;
    snprintf(n, sizeof(n), "%d", t->approvals);
    if (!(r = db_exec(c, Q_FW_RULE_LOCK, 1, vals, NULL, NULL, &st)))
        return st;
    if (PQntuples(r) == 1)
        was = atoi(PQgetvalue(r, 0, 0));
    PQclear(r);
    if (!(r = db_exec(c, Q_FW_RULE_SET, 3, vals, NULL, NULL, &st)))
        return st;
    t->out = rule_json(r, 0);
    PQclear(r);
    return audit_append(c, t->who->name, "firmware.approval_rule", NULL,
                        json_pack("{s:s,s:i,s:i}", "product", t->product, "approvals",
                                  t->approvals, "was", was));
}

qk_kind firmware_rule_set(qk_svc *s, const qk_principal *who, const char *product, int approvals,
                          json_t **out, qk_err *e)
{
    rule_tx t = {.who = who, .product = product, .approvals = approvals, .e = e};
    db_status st;

    qk_clear(e);
    *out = NULL;
    if (!firmware_product_valid(product))
        return qk_fail(e, QK_INVALID, "invalid_product",
                       "product must be 1-64 of A-Z a-z 0-9 . _ -, starting with a letter or digit");
    if (approvals != 1 && approvals != 2)
        return qk_fail(e, QK_INVALID, "invalid_approvals", "approvals must be 1 or 2");
    if ((st = db_tx(s->db, rule_tx_fn, &t)) != DB_OK) {
        json_decref(t.out);
        return db_fail(e, st);
    }
    log_with(&who->log, LOG_INFO, "firmware approval rule set", "{s:s,s:i}", "product", product,
             "approvals", approvals);
    *out = t.out;
    return *out ? QK_OK : qk_fail(e, QK_INTERNAL, "internal", "out of memory");
}

qk_kind firmware_rules_list(qk_svc *s, json_t **out, qk_err *e)
{
    db_status st;
    PGresult *r = db_query(s->db, Q_FW_RULES_LIST, 0, NULL, NULL, NULL, &st);
    *out = NULL;
    if (!r)
        return db_fail(e, st);
    *out = json_pack("{s:o}", "products", pgjson_rows(r, rule_json));
    PQclear(r);
    return *out ? QK_OK : qk_fail(e, QK_INTERNAL, "internal", "out of memory");
}

/* ---- requests and approvals ------------------------------------------------------ */

typedef struct {
    const char *const *vals; /* Q_FW_APPROVAL_INSERT's */
    const qk_principal *who;
    const firmware_sign_spec *sp;
    uint64_t size;
} request_tx;

static db_status request_fn(db_conn *c, void *arg)
{
    request_tx *t = arg;
    db_status st;
    PGresult *r = db_exec(c, Q_FW_APPROVAL_INSERT, 10, t->vals, NULL, NULL, &st);
    if (!r)
        return st;
    PQclear(r);
    return audit_append(c, t->who->name, "firmware.approval_requested", NULL,
                        json_pack("{s:s,s:s,s:s,s:s,s:I}", "approval", t->vals[0], "product",
                                  t->sp->product, "version", t->sp->version, "image_sha256",
                                  t->vals[4], "image_size", (json_int_t)t->size));
}

qk_kind firmware_approval_request(qk_svc *s, const qk_principal *who, const firmware_sign_spec *sp,
                                  uint64_t image_size, const char *image_sha256, json_t **out,
                                  qk_err *e)
{
    uint8_t raw[16], dig[32];
    char id[37], sz[24], cnt[24], nb[24], hours[8], sha[65], *targets = NULL;
    const char *vals[10];
    db_status st;
    qk_kind k;

    qk_clear(e);
    *out = NULL;
    if ((k = firmware_spec_check(sp, e)) != QK_OK)
        return k;
    if (image_size == 0 || image_size > ((uint64_t)1 << 40) || !image_sha256 ||
        strlen(image_sha256) != 64 || qkms_hex_decode(image_sha256, 64, dig, 32) != 32)
        return qk_fail(e, QK_INVALID, "invalid_image",
                       "image_size must be from 1 and image_sha256 64 hex digits");
    if (entropy_get_secret(s->ent, raw, sizeof(raw)) != 0) {
        k = qk_fail(e, QK_UNAVAILABLE, "entropy_unavailable", "no entropy source may serve now");
        e->retry_after = 1;
        return k;
    }
    qkms_uuid_v4(raw);
    qkms_uuid_format(raw, id);
    qkms_hex_encode(dig, 32, sha); /* lower case, as stored */
    if (!(targets = firmware_targets_canonical(sp)))
        return qk_fail(e, QK_INTERNAL, "internal", "out of memory");
    snprintf(sz, sizeof(sz), "%llu", (unsigned long long)image_size);
    snprintf(cnt, sizeof(cnt), "%llu", (unsigned long long)sp->counter);
    snprintf(nb, sizeof(nb), "%lld", (long long)sp->not_before);
    snprintf(hours, sizeof(hours), "%d", FIRMWARE_APPROVAL_HOURS);
    vals[0] = id;
    vals[1] = sp->product;
    vals[2] = sp->version;
    vals[3] = sz;
    vals[4] = sha;
    vals[5] = targets;
    vals[6] = sp->counter ? cnt : NULL;
    vals[7] = sp->not_before >= 0 ? nb : NULL;
    vals[8] = who->name;
    vals[9] = hours;
    {
        request_tx t = {.vals = vals, .who = who, .sp = sp, .size = image_size};
        st = db_tx(s->db, request_fn, &t);
    }
    free(targets);
    if (st != DB_OK)
        return db_fail(e, st);
    log_with(&who->log, LOG_INFO, "firmware approval requested", "{s:s,s:s,s:s}", "approval", id,
             "product", sp->product, "version", sp->version);
    return one_approval(s, id, out, e);
}

typedef struct {
    const qk_principal *who;
    const char *id;
    qk_err *e;
    bool refused;
} approve_tx;

static db_status approve_fn(db_conn *c, void *arg)
{
    approve_tx *t = arg;
    const char *vals[2] = {t->id, "{}"};
    db_status st;
    PGresult *r;
    char product[80];

    qk_clear(t->e);
    t->refused = true;
    if (!(r = db_exec(c, Q_FW_APPROVAL_LOCK, 2, vals, NULL, NULL, &st)))
        return st;
    if (PQntuples(r) == 0)
        qk_fail(t->e, QK_NOT_FOUND, "not_found", "no approval %s", t->id);
    else if (!strcmp(PQgetvalue(r, 0, 7), t->who->name))
        qk_fail(t->e, QK_CONFLICT, "same_approver",
                "the requester cannot approve: a second release token must");
    else if (PQgetvalue(r, 0, 9)[0] == 't')
        qk_fail(t->e, QK_CONFLICT, "approval_used", "approval %s was used for a signature", t->id);
    else if (!PQgetisnull(r, 0, 8))
        qk_fail(t->e, QK_CONFLICT, "approval_approved", "approval %s was approved by %s", t->id,
                PQgetvalue(r, 0, 8));
    else if (PQgetvalue(r, 0, 10)[0] == 't')
        qk_fail(t->e, QK_CONFLICT, "approval_expired", "approval %s expired", t->id);
    else if (PQgetvalue(r, 0, 11)[0] != 't')
        qk_fail(t->e, QK_CONFLICT, "approval_revoked",
                "the token that requested approval %s is revoked or expired", t->id);
    else
        t->refused = false;
    if (!t->refused)
        snprintf(product, sizeof(product), "%s", PQgetvalue(r, 0, 0));
    PQclear(r);
    if (t->refused)
        return DB_OK;
    vals[1] = t->who->name;
    if (!(r = db_exec(c, Q_FW_APPROVAL_APPROVE, 2, vals, NULL, NULL, &st)))
        return st;
    PQclear(r);
    return audit_append(c, t->who->name, "firmware.approved", NULL,
                        json_pack("{s:s,s:s}", "approval", t->id, "product", product));
}

qk_kind firmware_approval_approve(qk_svc *s, const qk_principal *who, const char *id,
                                  json_t **out, qk_err *e)
{
    approve_tx t = {.who = who, .id = id, .e = e};
    db_status st;

    qk_clear(e);
    *out = NULL;
    if (!qkms_uuid_valid(id))
        return qk_fail(e, QK_NOT_FOUND, "not_found", "no such approval");
    if ((st = db_tx(s->db, approve_fn, &t)) != DB_OK)
        return e->kind != QK_OK && !t.refused ? e->kind : db_fail(e, st);
    if (t.refused)
        return e->kind;
    log_with(&who->log, LOG_INFO, "firmware release approved", "{s:s}", "approval", id);
    return one_approval(s, id, out, e);
}

qk_kind firmware_approvals_list(qk_svc *s, const char *product, json_t **out, qk_err *e)
{
    const char *vals[2] = {product, NULL};
    db_status st;
    PGresult *r;

    *out = NULL;
    if (product && !firmware_product_valid(product))
        return qk_fail(e, QK_INVALID, "invalid_product",
                       "product must be 1-64 of A-Z a-z 0-9 . _ -, starting with a letter or digit");
    if (!(r = db_query(s->db, Q_FW_APPROVALS_LIST, 2, vals, NULL, NULL, &st)))
        return db_fail(e, st);
    *out = json_pack("{s:o}", "approvals", pgjson_rows(r, approval_json));
    PQclear(r);
    return *out ? QK_OK : qk_fail(e, QK_INTERNAL, "internal", "out of memory");
}

/* ---- inside the signature ---------------------------------------------------- */

db_status firmware_approval_check(db_conn *c, const firmware_sign_spec *sp, uint64_t image_len,
                                  const char *image_sha, char approved_by[129],
                                  char requested_by[129], bool *refused, qk_err *e)
{
    const char *pv[1] = {sp->product};
    db_status st;
    PGresult *r;
    int rule = 1;
    char *targets = NULL, why[160];

    *refused = false;
    approved_by[0] = requested_by[0] = 0;
    if (!(r = db_exec(c, Q_FW_RULE, 1, pv, NULL, NULL, &st)))
        return st;
    if (PQntuples(r) == 1)
        rule = atoi(PQgetvalue(r, 0, 0));
    PQclear(r);
    if (!sp->approval) {
        if (rule == 2) {
            qk_fail(e, QK_CONFLICT, "approval_required",
                    "product '%s' needs two approvers: request an approval, have a second release "
                    "token approve it, then sign naming it",
                    sp->product);
            *refused = true;
        }
        return DB_OK;
    }
    if (!qkms_uuid_valid(sp->approval)) {
        qk_fail(e, QK_INVALID, "unknown_approval", "approval is not an approval ID");
        *refused = true;
        return DB_OK;
    }
    if (!(targets = firmware_targets_canonical(sp))) {
        qk_fail(e, QK_INTERNAL, "internal", "out of memory");
        return DB_ERROR;
    }
    {
        const char *vals[2] = {sp->approval, targets};
        r = db_exec(c, Q_FW_APPROVAL_LOCK, 2, vals, NULL, NULL, &st);
    }
    free(targets);
    if (!r)
        return st;
    *refused = true;
    why[0] = 0;
    if (PQntuples(r) == 0 || strcmp(PQgetvalue(r, 0, 0), sp->product) != 0) {
        qk_fail(e, QK_INVALID, "unknown_approval", "no approval %s for product '%s'", sp->approval,
                sp->product);
    } else if (PQgetvalue(r, 0, 9)[0] == 't') {
        qk_fail(e, QK_CONFLICT, "approval_used", "approval %s was used for a signature",
                sp->approval);
    } else if (PQgetvalue(r, 0, 10)[0] == 't') {
        qk_fail(e, QK_CONFLICT, "approval_expired", "approval %s expired", sp->approval);
    } else if (PQgetisnull(r, 0, 8)) {
        qk_fail(e, QK_CONFLICT, "approval_pending", "approval %s awaits its second approver",
                sp->approval);
    } else if (PQgetvalue(r, 0, 11)[0] != 't' || PQgetvalue(r, 0, 12)[0] != 't') {
        /* an approver whose token went since: the approval is theirs no more */
        qk_fail(e, QK_CONFLICT, "approval_revoked",
                "a token that requested or approved approval %s is revoked or expired",
                sp->approval);
    } else {
        /* what the approvers saw, field by field */
        char cnt[24], nb[24];
        snprintf(cnt, sizeof(cnt), "%llu", (unsigned long long)sp->counter);
        snprintf(nb, sizeof(nb), "%lld", (long long)sp->not_before);
        if (strcmp(PQgetvalue(r, 0, 1), sp->version) != 0)
            snprintf(why, sizeof(why), "version");
        else if ((uint64_t)strtoull(PQgetvalue(r, 0, 2), NULL, 10) != image_len ||
                 strcmp(PQgetvalue(r, 0, 3), image_sha) != 0)
            snprintf(why, sizeof(why), "image (size or SHA-256)");
        else if (PQgetvalue(r, 0, 4)[0] != 't')
            snprintf(why, sizeof(why), "targets");
        else if (PQgetisnull(r, 0, 5) ? sp->counter != 0 : strcmp(PQgetvalue(r, 0, 5), cnt) != 0)
            snprintf(why, sizeof(why), "counter");
        else if (PQgetisnull(r, 0, 6) ? sp->not_before >= 0 : strcmp(PQgetvalue(r, 0, 6), nb) != 0)
            snprintf(why, sizeof(why), "not_before");
        if (why[0]) {
            qk_fail(e, QK_CONFLICT, "approval_mismatch",
                    "the %s differs from what approval %s approved", why, sp->approval);
        } else {
            *refused = false;
            snprintf(approved_by, 129, "%s", PQgetvalue(r, 0, 8));
            snprintf(requested_by, 129, "%s", PQgetvalue(r, 0, 7));
        }
    }
    PQclear(r);
    return DB_OK;
}

db_status firmware_approval_use(db_conn *c, const char *approval, const char *package_id,
                                qk_err *e)
{
    const char *vals[2] = {approval, package_id};
    db_status st;
    PGresult *r = db_exec(c, Q_FW_APPROVAL_USE, 2, vals, NULL, NULL, &st);
    if (!r)
        return st;
    if (atoi(PQcmdTuples(r)) != 1) {
        qk_fail(e, QK_INTERNAL, "internal", "the approval changed under its lock");
        st = DB_ERROR;
    }
    PQclear(r);
    return st;
}
