/*
 * devices — the device registry (devices.h): registration in batches (a
 * few array-parameter statements per batch, sub-devices after the gateways
 * they hang from), reading and listing devices, their lifecycle, and the
 * device types. Keys come from device_keys.c; this file owns the devices
 * table's rows and their audit records.
 */
#include "service/devices.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "service/audit.h"
#include "service/crl.h"
#include "service/device_keys.h"
#include "service/keycache.h"
#include "store/pgarray.h"
#include "store/pgjson.h"
#include "store/queries.h"

/* ---- reading -------------------------------------------------------------- */

/* Columns of Q_DEVICE_GET / Q_DEVICE_LIST 0..7, and the SAE ID's column
 * (the attributes' and the end of service's are the next two). */
static json_t *device_json(const PGresult *r, int i, int sae_col)
{
    json_t *attrs = json_loads(PQgetvalue(r, i, sae_col + 1), 0, NULL);
    return json_pack("{s:o,s:o,s:o,s:o,s:o,s:o,s:o,s:o,s:o,s:o,s:o,s:o,s:o}", "device_id",
                     pgjson_text(r, i, 0), "type", pgjson_text(r, i, 1), "group",
                     pgjson_text(r, i, 2), "parent", pgjson_text(r, i, 3), "state",
                     pgjson_text(r, i, 4), "created_at", pgjson_time(r, i, 5), "updated_at",
                     pgjson_time(r, i, 6), "revoked_at", pgjson_time(r, i, 7), "sae_id",
                     pgjson_text(r, i, sae_col), "attributes", attrs ? attrs : json_object(),
                     "service_until", pgjson_time(r, i, sae_col + 2), "first_seen_at",
                     pgjson_time(r, i, sae_col + 3), "last_seen_at",
                     pgjson_time(r, i, sae_col + 4));
}

qk_kind devices_get(qk_svc *s, const char *device_id, bool with_keys, bool with_kcv, json_t **out,
                    qk_err *e)
{
    const char *vals[1] = {device_id};
    db_status st;
    db_conn *c;
    PGresult *r = NULL;
    json_t *rec = NULL, *keys;
    qk_kind k = QK_OK;

    *out = NULL;
    if (!(c = db_acquire(s->db, &st)))
        return db_fail(e, st);
    if (!(r = db_exec(c, Q_DEVICE_GET, 1, vals, NULL, NULL, &st))) {
        k = db_fail(e, st);
        goto out;
    }
    if (PQntuples(r) == 0) {
        k = qk_fail(e, QK_NOT_FOUND, "not_found", "no device '%s'", device_id);
        goto out;
    }
    rec = device_json(r, 0, 8);
    if (with_keys) {
        if ((k = device_keys_list(s, c, device_id, with_kcv, &keys, e)) != QK_OK)
            goto out;
        json_object_set_new(rec, "keys", keys);
    }
    *out = rec;
    rec = NULL;
out:
    json_decref(rec);
    PQclear(r);
    db_release(s->db, c);
    return k;
}

qk_kind devices_list(qk_svc *s, const device_filter *f, json_t **out, qk_err *e)
{
    char days[16], lim[16], *attr = NULL;
    const char *vals[10];
    db_status st;
    PGresult *r;
    json_t *arr;
    int n;

    *out = NULL;
    snprintf(days, sizeof(days), "%d", f->expiring_within);
    snprintf(lim, sizeof(lim), "%d", f->limit);
    vals[0] = f->type;
    vals[1] = f->group;
    vals[2] = f->state;
    vals[3] = f->expiring_within >= 0 ? days : NULL;
    vals[4] = f->after;
    vals[5] = lim;
    vals[6] = f->parent;
    vals[7] = f->attrs && json_object_size(f->attrs) ? (attr = json_dumps(f->attrs, JSON_COMPACT))
                                                      : NULL;
    vals[8] = f->never_seen < 0 ? NULL : f->never_seen ? "true" : "false";
    vals[9] = f->seen_since;
    r = db_query(s->db, Q_DEVICE_LIST, 10, vals, NULL, NULL, &st);
    free(attr);
    if (!r && st == DB_INVALID && f->seen_since) /* the calendar: "2026-02-30" */
        return qk_fail(e, QK_MALFORMED, "invalid_query", "seen_since is not a valid time");
    if (!r)
        return db_fail(e, st);
    arr = json_array();
    n = PQntuples(r);
    for (int i = 0; i < n; i++) {
        json_t *d = device_json(r, i, 10);
        json_object_set_new(d, "active_keys", json_integer(atoll(PQgetvalue(r, i, 8))));
        json_object_set_new(d, "next_expiry", pgjson_time(r, i, 9));
        json_array_append_new(arr, d);
    }
    *out = json_pack("{s:o,s:o}", "devices", arr, "next",
                     n == f->limit && n > 0 ? pgjson_text(r, n - 1, 0) : json_null());
    PQclear(r);
    return QK_OK;
}

/* ---- registration ------------------------------------------------------- */

struct reg_tx {
    qk_svc *k;
    const char *actor;
    device_reg *rows;
    int n;
    int *pass; /* per row: 1 = parent in the database or none, 2 = parent in this batch */
};

static bool row_ok(const device_reg *r) { return !r->code && !r->db_code; }

static void row_fail(device_reg *r, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void row_fail(device_reg *r, const char *code, const char *fmt, ...)
{
    va_list ap;
    r->db_code = code;
    va_start(ap, fmt);
    vsnprintf(r->db_message, sizeof(r->db_message), fmt, ap);
    va_end(ap);
}

/* Insert the rows of one pass; mark created and conflicting rows. */
static db_status insert_pass(db_conn *c, struct reg_tx *t, int pass)
{
    pgarray ids, types, groups, parents, attrs, svc;
    const char *vals[6];
    db_status st = DB_OK;
    PGresult *r = NULL;
    int count = 0;

    pgarray_init(&ids);
    pgarray_init(&types);
    pgarray_init(&groups);
    pgarray_init(&parents);
    pgarray_init(&attrs);
    pgarray_init(&svc);
    for (int i = 0; i < t->n; i++) {
        device_reg *row = &t->rows[i];
        if (!row_ok(row) || t->pass[i] != pass)
            continue;
        pgarray_add(&attrs, row->spec.attributes[0] ? row->spec.attributes : "{}");
        pgarray_add(&ids, row->spec.device_id);
        pgarray_add(&types, row->spec.type);
        pgarray_add(&groups, row->spec.group);
        pgarray_add(&parents, row->spec.parent[0] ? row->spec.parent : NULL);
        pgarray_add_int(&svc, row->spec.service_days);
        count++;
    }
    if (count == 0)
        goto out;
    vals[0] = pgarray_finish(&ids);
    vals[1] = pgarray_finish(&types);
    vals[2] = pgarray_finish(&groups);
    vals[3] = pgarray_finish(&parents);
    vals[4] = pgarray_finish(&attrs);
    vals[5] = pgarray_finish(&svc);
    if (!vals[0] || !vals[1] || !vals[2] || !vals[3] || !vals[4] || !vals[5]) {
        st = DB_ERROR;
        goto out;
    }
    r = db_exec(c, Q_DEVICE_INSERT_MANY, 6, vals, NULL, NULL, &st);
    if (!r)
        goto out;
    /* RETURNING gives the IDs that went in; the others already existed. */
    for (int i = 0; i < t->n; i++) {
        device_reg *row = &t->rows[i];
        if (!row_ok(row) || t->pass[i] != pass)
            continue;
        for (int j = 0; j < PQntuples(r) && !row->created; j++)
            if ((row->created = !strcmp(PQgetvalue(r, j, 0), row->spec.device_id)))
                snprintf(row->service_until, sizeof(row->service_until), "%s",
                         PQgetvalue(r, j, 1));
        if (!row->created)
            row_fail(row, "conflict", "device '%s' is already registered", row->spec.device_id);
    }
out:
    PQclear(r);
    pgarray_free(&ids);
    pgarray_free(&types);
    pgarray_free(&groups);
    pgarray_free(&parents);
    pgarray_free(&attrs);
    pgarray_free(&svc);
    return st;
}

static db_status resolve_parents(db_conn *c, struct reg_tx *t)
{
    pgarray names;
    const char *vals[1];
    db_status st = DB_OK;
    PGresult *r = NULL;
    int count = 0;

    pgarray_init(&names);
    for (int i = 0; i < t->n; i++) {
        t->pass[i] = 1;
        if (row_ok(&t->rows[i]) && t->rows[i].spec.parent[0]) {
            pgarray_add(&names, t->rows[i].spec.parent);
            count++;
        }
    }
    if (count == 0)
        goto out;
    vals[0] = pgarray_finish(&names);
    if (!vals[0]) {
        st = DB_ERROR;
        goto out;
    }
    r = db_exec(c, Q_DEVICE_PARENTS, 1, vals, NULL, NULL, &st);
    if (!r)
        goto out;
    for (int i = 0; i < t->n; i++) {
        device_reg *row = &t->rows[i];
        const char *p = row->spec.parent;
        int found = -1;
        if (!row_ok(row) || !p[0])
            continue;
        for (int j = 0; j < PQntuples(r) && found < 0; j++)
            if (!strcmp(PQgetvalue(r, j, 0), p))
                found = j;
        if (found >= 0) {
            if (strcmp(PQgetvalue(r, found, 1), "gateway") != 0)
                row_fail(row, "invalid_parent", "parent '%s' is not a gateway", p);
            else if (strcmp(PQgetvalue(r, found, 2), "active") != 0)
                /* A sub-device follows its gateway (docs/gateways.md): it
                 * is not made active under one that is not. */
                row_fail(row, "invalid_parent", "parent '%s' is %s", p, PQgetvalue(r, found, 2));
            continue;
        }
        /* A gateway earlier in the same batch will do. */
        for (int j = 0; j < i && found < 0; j++)
            if (row_ok(&t->rows[j]) && !strcmp(t->rows[j].spec.device_id, p))
                found = j;
        if (found < 0)
            row_fail(row, "invalid_parent", "unknown parent '%s'", p);
        else if (strcmp(t->rows[found].spec.type, "gateway") != 0)
            row_fail(row, "invalid_parent", "parent '%s' is not a gateway", p);
        else
            t->pass[i] = 2;
    }
out:
    PQclear(r);
    pgarray_free(&names);
    return st;
}

static db_status insert_keys_and_audit(db_conn *c, struct reg_tx *t)
{
    pgarray ids, idx, alg, wrapped, mv, prov, days, aud_ids, aud_detail;
    const char *vals[7], *avals[4];
    db_status st = DB_OK;
    PGresult *r = NULL;
    int count = 0;

    pgarray_init(&ids); pgarray_init(&idx); pgarray_init(&alg); pgarray_init(&wrapped);
    pgarray_init(&mv); pgarray_init(&prov); pgarray_init(&days);
    pgarray_init(&aud_ids); pgarray_init(&aud_detail);
    for (int i = 0; i < t->n; i++) {
        device_reg *row = &t->rows[i];
        char *detail;
        json_t *jd;
        if (!row->created)
            continue;
        for (int j = 0; j < row->spec.nkeys; j++) {
            pgarray_add(&ids, row->spec.device_id);
            pgarray_add_int(&idx, j);
            pgarray_add(&alg, row->key_alg);
            pgarray_add(&wrapped, row->wrapped_hex[j]);
            pgarray_add_int(&mv, row->master_version[j]);
            pgarray_add(&prov, row->provenance);
            pgarray_add_int(&days, row->spec.validity_days);
        }
        jd = json_pack("{s:s,s:s,s:s?,s:i,s:i,s:i,s:s,s:I,s:s?}", "type", row->spec.type,
                       "group", row->spec.group, "parent",
                       row->spec.parent[0] ? row->spec.parent : NULL, "keys", row->spec.nkeys,
                       "key_bits", row->spec.key_bits, "validity_days", row->spec.validity_days,
                       "provenance", row->provenance, "line", (json_int_t)row->spec.line,
                       "service_until", row->service_until[0] ? row->service_until : NULL);
        detail = jd ? json_dumps(jd, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
        json_decref(jd);
        pgarray_add(&aud_ids, row->spec.device_id);
        pgarray_add(&aud_detail, detail ? detail : "{}");
        free(detail);
        count++;
    }
    if (count == 0)
        goto out;
    vals[0] = pgarray_finish(&ids);
    vals[1] = pgarray_finish(&idx);
    vals[2] = pgarray_finish(&alg);
    vals[3] = pgarray_finish(&wrapped);
    vals[4] = pgarray_finish(&mv);
    vals[5] = pgarray_finish(&prov);
    vals[6] = pgarray_finish(&days);
    avals[0] = t->actor;
    avals[1] = "device.registered";
    avals[2] = pgarray_finish(&aud_ids);
    avals[3] = pgarray_finish(&aud_detail);
    for (int i = 0; i < 7; i++)
        if (!vals[i])
            st = DB_ERROR;
    if (st != DB_OK || !avals[2] || !avals[3]) {
        st = DB_ERROR;
        goto out;
    }
    r = db_exec(c, Q_DEVKEY_INSERT_MANY, 7, vals, NULL, NULL, &st);
    if (!r)
        goto out;
    PQclear(r);
    r = db_exec(c, Q_AUDIT_APPEND_MANY, 4, avals, NULL, NULL, &st);
out:
    PQclear(r);
    pgarray_free(&ids); pgarray_free(&idx); pgarray_free(&alg); pgarray_free(&wrapped);
    pgarray_free(&mv); pgarray_free(&prov); pgarray_free(&days);
    pgarray_free(&aud_ids); pgarray_free(&aud_detail);
    return st;
}

/* attribute name ("mac", "sn") of a spec's attributes, or NULL; *held
 * keeps the parsed object alive for the answer (decref it). */
static const char *spec_attr(const device_spec *s, const char *name, json_t **held)
{
    if (!*held)
        *held = s->attributes[0] ? json_loads(s->attributes, 0, NULL) : NULL;
    return json_string_value(json_object_get(*held, name));
}

/* Rows whose MAC or serial number another device of their type has:
 * refused (conflict) before anything is inserted. */
static db_status attrs_taken(db_conn *c, struct reg_tx *t)
{
    pgarray idx, types, macs, sns;
    json_t **held = calloc((size_t)t->n + 1, sizeof(json_t *));
    const char *vals[4];
    db_status st = DB_OK;
    PGresult *r = NULL;
    int count = 0;

    pgarray_init(&idx);
    pgarray_init(&types);
    pgarray_init(&macs);
    pgarray_init(&sns);
    if (!held)
        return DB_ERROR;
    for (int i = 0; i < t->n; i++) {
        device_reg *row = &t->rows[i];
        const char *mac, *sn;
        if (!row_ok(row) || !row->spec.attributes[0])
            continue;
        mac = spec_attr(&row->spec, "mac", &held[i]);
        sn = spec_attr(&row->spec, "sn", &held[i]);
        if (!mac && !sn)
            continue;
        pgarray_add_int(&idx, i);
        pgarray_add(&types, row->spec.type);
        pgarray_add(&macs, mac);
        pgarray_add(&sns, sn);
        count++;
    }
    if (count == 0)
        goto out;
    vals[0] = pgarray_finish(&idx);
    vals[1] = pgarray_finish(&types);
    vals[2] = pgarray_finish(&macs);
    vals[3] = pgarray_finish(&sns);
    if (!vals[0] || !vals[1] || !vals[2] || !vals[3]) {
        st = DB_ERROR;
        goto out;
    }
    if (!(r = db_exec(c, Q_DEVICE_ATTRS_TAKEN, 4, vals, NULL, NULL, &st)))
        goto out;
    for (int j = 0; j < PQntuples(r); j++) {
        int i = atoi(PQgetvalue(r, j, 0));
        if (i >= 0 && i < t->n)
            row_fail(&t->rows[i], "conflict", "another %s has this mac or sn",
                     t->rows[i].spec.type);
    }
out:
    PQclear(r);
    for (int i = 0; i < t->n; i++)
        json_decref(held[i]);
    free(held);
    pgarray_free(&idx);
    pgarray_free(&types);
    pgarray_free(&macs);
    pgarray_free(&sns);
    return st;
}

/* Rows an app registers (apps.h), in the transaction: the app is still
 * live (locked against its revocation) and a parent is still one it
 * registered (locked against a reset). */
static db_status owners_check(db_conn *c, struct reg_tx *t)
{
    db_status st = DB_OK;
    for (int i = 0; i < t->n && st == DB_OK; i++) {
        device_reg *row = &t->rows[i];
        char app[24];
        const char *vals[2] = {app, row->spec.parent[0] ? row->spec.parent : NULL};
        PGresult *r;
        if (!row->owner_app || !row_ok(row))
            continue;
        snprintf(app, sizeof(app), "%lld", row->owner_app);
        if (!(r = db_exec(c, Q_APP_REG_CHECK, 2, vals, NULL, NULL, &st)))
            break;
        if (strcmp(PQgetvalue(r, 0, 0), "t") != 0)
            row_fail(row, "out_of_scope", "the app was revoked");
        else if (strcmp(PQgetvalue(r, 0, 1), "t") != 0)
            row_fail(row, "out_of_scope", "parent '%s' is not a device this app registered",
                     row->spec.parent);
        PQclear(r);
    }
    return st;
}

static db_status reg_tx_fn(db_conn *c, void *arg)
{
    struct reg_tx *t = arg;
    db_status st;
    /* db_tx may run this again after a serialization failure: start clean. */
    for (int i = 0; i < t->n; i++) {
        t->rows[i].db_code = NULL;
        t->rows[i].db_message[0] = 0;
        t->rows[i].created = false;
    }
    st = owners_check(c, t);
    if (st == DB_OK)
        st = resolve_parents(c, t);
    if (st == DB_OK)
        st = attrs_taken(c, t);
    if (st == DB_OK)
        st = insert_pass(c, t, 1);
    if (st == DB_OK) {
        /* Second pass: sub-devices whose gateway is in this batch. */
        for (int i = 0; i < t->n; i++) {
            device_reg *row = &t->rows[i];
            if (t->pass[i] != 2 || !row_ok(row))
                continue;
            for (int j = 0; j < t->n; j++)
                if (!strcmp(t->rows[j].spec.device_id, row->spec.parent) && t->rows[j].created)
                    goto parent_ok;
            row_fail(row, "invalid_parent", "parent '%s' was not registered", row->spec.parent);
        parent_ok:;
        }
        st = insert_pass(c, t, 2);
    }
    if (st == DB_OK)
        st = insert_keys_and_audit(c, t);
    /* Registered by an app for its owner: the app owns it from the start. */
    for (int i = 0; i < t->n && st == DB_OK; i++) {
        char app[24];
        const char *vals[2] = {t->rows[i].spec.device_id, app};
        PGresult *r;
        if (!t->rows[i].created || !t->rows[i].owner_app)
            continue;
        snprintf(app, sizeof(app), "%lld", t->rows[i].owner_app);
        if ((r = db_exec(c, Q_DEVICE_OWNER_SET, 2, vals, NULL, NULL, &st)))
            PQclear(r);
    }
    return st;
}


static qk_kind load_types(qk_svc *s, PGresult **out, qk_err *e)
{
    db_status st;
    if (!(*out = db_query(s->db, Q_DEVTYPE_LIST, 0, NULL, NULL, NULL, &st)))
        return db_fail(e, st);
    return QK_OK;
}

static void free_wrapped(device_reg *rows, int n)
{
    for (int i = 0; i < n; i++)
        for (int j = 0; j < DEVICE_MAX_KEYS; j++) {
            free(rows[i].wrapped_hex[j]);
            rows[i].wrapped_hex[j] = NULL;
        }
}

/* Make and wrap the keys of every row still to register (again). */
static qk_kind gen_all_keys(qk_svc *s, device_reg *rows, int n, qk_err *e)
{
    qk_kind k;
    free_wrapped(rows, n);
    for (int i = 0; i < n; i++) {
        device_reg *row = &rows[i];
        if (row->code)
            continue;
        for (int j = 0; j < row->spec.nkeys; j++)
            if ((k = device_key_new(s, row->spec.device_id, j, row->key_alg,
                                    &row->wrapped_hex[j], &row->master_version[j],
                                    &row->provenance, e)) != QK_OK)
                return k;
    }
    return QK_OK;
}

static void row_refuse(device_reg *row, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void row_refuse(device_reg *row, const char *code, const char *fmt, ...)
{
    va_list ap;
    row->code = code;
    va_start(ap, fmt);
    vsnprintf(row->message, sizeof(row->message), fmt, ap);
    va_end(ap);
}

/* Row i's MAC or serial number on an earlier row of the same type in the
 * batch: refused (conflict), as against the database (attrs_taken). */
static void batch_attr_twice(device_reg *rows, int i)
{
    static const char *const names[] = {"mac", "sn"};
    json_t *mine = NULL;
    for (int n = 0; n < 2 && !rows[i].code; n++) {
        const char *v = spec_attr(&rows[i].spec, names[n], &mine);
        for (int j = 0; v && j < i && !rows[i].code; j++) {
            json_t *theirs = NULL;
            const char *w;
            if (rows[j].code || strcmp(rows[j].spec.type, rows[i].spec.type))
                continue;
            w = spec_attr(&rows[j].spec, names[n], &theirs);
            if (w && !strcmp(v, w))
                row_refuse(&rows[i], "conflict", "%s %s appears twice in the batch", names[n], v);
            json_decref(theirs);
        }
    }
    json_decref(mine);
}

/* What can be refused before the transaction: unknown types, a parent on a
 * device that is not a subdevice, an ID twice in the batch. */
static qk_kind precheck_rows(qk_svc *s, device_reg *rows, int n, qk_err *e)
{
    PGresult *types = NULL;
    qk_kind k;

    if ((k = load_types(s, &types, e)) != QK_OK)
        return k;
    for (int i = 0; i < n; i++) {
        device_reg *row = &rows[i];
        bool known = false;
        if (row->code)
            continue;
        int need = 0;
        bool sm4 = false;
        for (int j = 0; j < PQntuples(types) && !known; j++)
            if ((known = !strcmp(PQgetvalue(types, j, 0), row->spec.type))) {
                const char *purposes[DEVICE_MAX_KEYS] = {0};
                need = device_template_parse(PQgetvalue(types, j, 1), purposes, DEVICE_MAX_KEYS);
                sm4 = !strcmp(PQgetvalue(types, j, 3), "sm4");
            }
        if (!known) {
            row_refuse(row, "invalid_type", "unknown device type '%s'", row->spec.type);
            continue;
        }
        /* The type's suite decides the keys' algorithm: SM4 keys are
         * 128 bits (docs/protocol.md, "Suites"). */
        if (sm4 && row->spec.key_bits != 128) {
            row_refuse(row, "invalid_key_bits",
                       "a %s is of the SM4 suite: its keys are 128 bits (SM4-128)",
                       row->spec.type);
            continue;
        }
        snprintf(row->key_alg, sizeof(row->key_alg), "%s",
                 sm4 ? "SM4-128" : row->spec.key_bits == 256 ? "AES-256" : "AES-128");
        /* A template's keys all exist from the start (a gateway without its
         * local key could not serve its sub-devices). */
        if (row->spec.nkeys < need) {
            row_refuse(row, "invalid_keys",
                       "a %s has at least %d keys (its type's key purposes)", row->spec.type,
                       need);
            continue;
        }
        if (row->spec.parent[0] && strcmp(row->spec.type, "subdevice") != 0) {
            row_refuse(row, "invalid_parent", "only a subdevice has a parent");
            continue;
        }
        for (int j = 0; j < i; j++)
            if (!rows[j].code && !strcmp(rows[j].spec.device_id, row->spec.device_id)) {
                row_refuse(row, "conflict", "device '%s' appears twice in the batch",
                           row->spec.device_id);
                break;
            }
        if (!row->code && row->spec.attributes[0])
            batch_attr_twice(rows, i);
    }
    PQclear(types);
    return QK_OK;
}

qk_kind devices_register(qk_svc *s, const qk_principal *who, device_reg *rows, int n, qk_err *e)
{
    struct reg_tx t = {s, who->name, rows, n, NULL};
    db_status st = DB_OK;
    qk_kind k;

    qk_clear(e);
    if ((k = precheck_rows(s, rows, n, e)) != QK_OK)
        goto out;
    if (!(t.pass = calloc((size_t)n + 1, sizeof(int)))) {
        k = qk_fail(e, QK_INTERNAL, "internal", "out of memory");
        goto out;
    }
    for (int attempt = 0; attempt < 2; attempt++) {
        uint32_t used = keywrap_active(s->kw);
        /* Keys are made and wrapped before the transaction: token calls and
         * entropy do not belong inside a retried database transaction. */
        if ((k = gen_all_keys(s, rows, n, e)) != QK_OK)
            goto out;
        st = db_tx(s->db, reg_tx_fn, &t);
        if (!device_keys_master_moved(s, st, used))
            break;
    }
    if (st != DB_OK) {
        k = db_fail(e, st);
        goto out;
    }
    for (int i = 0; i < n; i++)
        if (rows[i].created)
            log_with(&who->log, LOG_INFO, "device registered", "{s:s,s:s,s:s,s:i,s:s}",
                     "device_id", rows[i].spec.device_id, "type", rows[i].spec.type, "group",
                     rows[i].spec.group, "keys", rows[i].spec.nkeys, "by", who->name);
    k = QK_OK;
out:
    free(t.pass);
    free_wrapped(rows, n);
    return k;
}

qk_kind devices_row_err(const device_reg *row, qk_err *e)
{
    const char *code = row->code ? row->code : row->db_code;
    if (!code) {
        qk_clear(e);
        return QK_OK;
    }
    return qk_fail(e,
                   !strcmp(code, "conflict")       ? QK_CONFLICT
                   : !strcmp(code, "out_of_scope") ? QK_FORBIDDEN
                                                   : QK_INVALID,
                   code, "%s", row->code ? row->message : row->db_message);
}

/* ---- lifecycle ------------------------------------------------------------ */

struct state_tx {
    const char *actor, *device_id;
    device_action action;
    qk_err *e;
    int certs_revoked; /* by a revocation, in this attempt */
    json_t *family;    /* the sub-devices moved with it, in this attempt */
};

/* Lock the device and check the transition; *pk and from filled. */
static db_status state_lock(db_conn *c, struct state_tx *t, char pk[24], char from[16])
{
    const char *vals[1] = {t->device_id};
    db_status st;
    PGresult *r = db_exec(c, Q_DEVICE_LOCK, 1, vals, NULL, NULL, &st);
    bool ok, with_parent;

    if (!r) {
        db_fail(t->e, st);
        return st;
    }
    if (PQntuples(r) == 0) {
        PQclear(r);
        qk_fail(t->e, QK_NOT_FOUND, "not_found", "no device '%s'", t->device_id);
        return DB_NOT_FOUND;
    }
    snprintf(pk, 24, "%s", PQgetvalue(r, 0, 0));
    snprintf(from, 16, "%s", PQgetvalue(r, 0, 1));
    with_parent = PQgetvalue(r, 0, 4)[0] == 't';
    PQclear(r);
    /* A sub-device suspended with its gateway may be suspended again by an
     * operator: it then stays suspended when the gateway resumes. */
    ok = (t->action == DEVICE_SUSPEND &&
          (!strcmp(from, "active") || (!strcmp(from, "suspended") && with_parent))) ||
         (t->action == DEVICE_RESUME && !strcmp(from, "suspended")) ||
         (t->action == DEVICE_REVOKE && strcmp(from, "revoked") != 0);
    if (!ok) {
        qk_fail(t->e, QK_CONFLICT, "invalid_state", "device '%s' is %s", t->device_id, from);
        return DB_INVALID;
    }
    return DB_OK;
}

/* Revocation destroys the key material at once (crypto-shredding; the
 * metadata stays for audit) and ends the device's open sessions,
 * destroying their keys. The destroyed indices go into *destroyed. */
static db_status state_shred(db_conn *c, struct state_tx *t, const char *pk, json_t *destroyed,
                             json_t *certs)
{
    const char *vals[2] = {pk, t->actor};
    db_status st;
    PGresult *r = db_exec(c, Q_DEVKEY_DESTROY_ALL, 1, vals, NULL, NULL, &st);
    if (!r)
        return st;
    for (int i = 0; i < PQntuples(r); i++)
        json_array_append_new(destroyed, json_integer(atoi(PQgetvalue(r, i, 0))));
    PQclear(r);
    if (!(r = db_exec(c, Q_SESSIONS_END_FOR_DEVICE, 2, vals, NULL, NULL, &st)))
        return st;
    PQclear(r);
    /* Its key streams too (streams.h): tombstone 'revoked'. */
    if (!(r = db_exec(c, Q_STREAMS_END_FOR_DEVICE, 2, vals, NULL, NULL, &st)))
        return st;
    PQclear(r);
    /* And its ETSI GS QKD 014 keys, as master or as a slave (qkd.h), like
     * its sessions: tombstone 'revoked'. */
    {
        const char *qv[3] = {pk, t->actor, "revoked"};
        if (!(r = db_exec(c, Q_QKD_DESTROY_FOR_DEVICE, 3, qv, NULL, NULL, &st)))
            return st;
    }
    PQclear(r);
    /* Its certificates go with it (certs.h): in the same transaction, so
     * no certificate of a revoked device is ever active on record. */
    if (!(r = qt_exec(c, QT_CERTS_REVOKE_DEVICE, 1, vals, &st)))
        return st;
    for (int i = 0; i < PQntuples(r); i++)
        json_array_append_new(certs, json_string(PQgetvalue(r, i, 0)));
    PQclear(r);
    return DB_OK;
}

/* One device's move to the action's state: the row, the family flag
 * (with_parent: suspended because its gateway was), for a revocation its
 * material (state_shred), and its audit row (cascade_from: the gateway it
 * followed, or NULL). */
static db_status state_apply(db_conn *c, struct state_tx *t, const char *pk,
                             const char *device_id, const char *from, bool with_parent,
                             const char *cascade_from)
{
    static const char *const target[] = {"suspended", "active", "revoked"};
    static const char *const event[] = {"device.suspended", "device.resumed", "device.revoked"};
    const char *vals[2] = {pk, target[t->action]};
    json_t *destroyed = json_array(), *certs = json_array();
    db_status st;
    PGresult *r;

    if (!(r = db_exec(c, Q_DEVICE_SET_STATE, 2, vals, NULL, NULL, &st)))
        goto fail;
    PQclear(r);
    vals[1] = with_parent ? "true" : "false";
    if (!(r = db_exec(c, Q_DEVICE_SET_WITH_PARENT, 2, vals, NULL, NULL, &st)))
        goto fail;
    PQclear(r);
    if (t->action == DEVICE_REVOKE && (st = state_shred(c, t, pk, destroyed, certs)) != DB_OK)
        goto fail;
    t->certs_revoked += (int)json_array_size(certs);
    if (!json_array_size(certs)) {
        json_decref(certs);
        certs = NULL;
    }
    return audit_append(c, t->actor, event[t->action], device_id,
                        json_pack("{s:s,s:s,s:o,s:o*,s:s*}", "from", from, "to",
                                  target[t->action], "destroyed_keys", destroyed,
                                  "revoked_certificates", certs, "cascade_from", cascade_from));
fail:
    json_decref(certs);
    json_decref(destroyed);
    return st;
}

/* A sub-device is resumed only under an active gateway. */
static db_status state_parent_allows(db_conn *c, struct state_tx *t, const char *pk)
{
    const char *vals[1] = {pk};
    db_status st;
    PGresult *r = db_exec(c, Q_DEVICE_PARENT_STATE, 1, vals, NULL, NULL, &st);
    if (!r)
        return st;
    st = DB_OK;
    if (PQntuples(r) == 1 && strcmp(PQgetvalue(r, 0, 1), "active") != 0) {
        qk_fail(t->e, QK_CONFLICT, "invalid_state", "the gateway of '%s', '%s', is %s",
                t->device_id, PQgetvalue(r, 0, 0), PQgetvalue(r, 0, 1));
        st = DB_INVALID;
    }
    PQclear(r);
    return st;
}

/* The gateway's sub-devices follow it (docs/gateways.md, "Families"):
 * suspended with it (and marked so), resumed with it when they were
 * suspended with it, revoked with it. r: their rows, locked. */
static db_status state_family(db_conn *c, struct state_tx *t, const PGresult *r)
{
    db_status st = DB_OK;
    for (int i = 0; i < PQntuples(r) && st == DB_OK; i++) {
        const char *state = PQgetvalue(r, i, 2);
        bool with = PQgetvalue(r, i, 3)[0] == 't';
        bool moves = t->action == DEVICE_SUSPEND  ? !strcmp(state, "active")
                     : t->action == DEVICE_RESUME ? !strcmp(state, "suspended") && with
                                                  : strcmp(state, "revoked") != 0;
        if (!moves)
            continue;
        st = state_apply(c, t, PQgetvalue(r, i, 0), PQgetvalue(r, i, 1), state,
                         t->action == DEVICE_SUSPEND, t->device_id);
        json_array_append_new(t->family, json_string(PQgetvalue(r, i, 1)));
    }
    return st;
}

static db_status state_tx_fn(db_conn *c, void *arg)
{
    struct state_tx *t = arg;
    char pk[24], from[16];
    const char *vals[1] = {pk};
    PGresult *children = NULL;
    db_status st;

    /* db_tx may run this again: an error of an earlier attempt must not
     * decide the answer of this one. */
    qk_clear(t->e);
    t->certs_revoked = 0;
    json_array_clear(t->family);

    if ((st = state_lock(c, t, pk, from)) != DB_OK)
        return st;
    /* The family is locked before anything is changed: the gateway's
     * revocation ends sessions its sub-devices are party to, and a
     * sub-device's own revocation locks the sub-device first. */
    if (!(children = db_exec(c, Q_DEVICE_CHILDREN_LOCK, 1, vals, NULL, NULL, &st)))
        goto fail;
    if (t->action == DEVICE_RESUME && (st = state_parent_allows(c, t, pk)) != DB_OK)
        goto fail;
    if ((st = state_apply(c, t, pk, t->device_id, from, false, NULL)) != DB_OK ||
        (st = state_family(c, t, children)) != DB_OK)
        goto fail;
    PQclear(children);
    return DB_OK;
fail:
    PQclear(children);
    if (t->e->kind == QK_OK)
        db_fail(t->e, st);
    return st;
}

qk_kind devices_set_state(qk_svc *s, const qk_principal *who, const char *device_id,
                          device_action a, qk_err *e)
{
    static const char *const done[] = {"device suspended", "device resumed", "device revoked"};
    struct state_tx t = {who->name, device_id, a, e, 0, json_array()};
    db_status st;
    json_t *v;
    size_t i;
    qk_err ce;

    qk_clear(e);
    if (!t.family)
        return qk_fail(e, QK_INTERNAL, "internal", "out of memory");
    st = db_tx(s->db, state_tx_fn, &t);
    keycache_invalidate(s->keys, device_id);
    json_array_foreach(t.family, i, v) keycache_invalidate(s->keys, json_string_value(v));
    if (st != DB_OK) {
        json_decref(t.family);
        return e->kind != QK_OK ? e->kind : db_fail(e, st);
    }
    qk_clear(e);
    log_with(&who->log, LOG_INFO, done[a], "{s:s,s:s,s:i,s:O}", "device_id", device_id, "by",
             who->name, "certificates_revoked", t.certs_revoked, "sub_devices", t.family);
    json_decref(t.family);
    /* The revocation stands; a CRL that could not be made now is made by
     * the next maintenance pass (crl.h). */
    if (t.certs_revoked && crl_refresh(s, true, &ce) != QK_OK)
        log_with(&who->log, LOG_WARN, "CRL not refreshed after a revocation", "{s:s,s:s}", "code",
                 ce.code, "detail", ce.detail);
    return QK_OK;
}

db_status devices_lock_live(db_conn *c, const char *device_id, char pk[24], qk_err *e)
{
    const char *vals[1] = {device_id};
    db_status st;
    PGresult *r = db_exec(c, Q_DEVICE_LOCK, 1, vals, NULL, NULL, &st);
    if (!r)
        return st;
    if (PQntuples(r) == 0) {
        qk_fail(e, QK_NOT_FOUND, "not_found", "no device '%s'", device_id);
        st = DB_NOT_FOUND;
    } else if (!strcmp(PQgetvalue(r, 0, 1), "revoked")) {
        qk_fail(e, QK_CONFLICT, "invalid_state", "device '%s' is revoked", device_id);
        st = DB_INVALID;
    } else {
        snprintf(pk, 24, "%s", PQgetvalue(r, 0, 0));
        st = DB_OK;
    }
    PQclear(r);
    return st;
}

/* ---- attributes ------------------------------------------------------------ */

struct attrs_tx {
    const char *actor, *device_id, *set, *unset;
    json_t *audit;
    qk_err *e;
};

static db_status attrs_tx_fn(db_conn *c, void *arg)
{
    struct attrs_tx *t = arg;
    const char *vals[3] = {t->device_id, t->set, t->unset};
    char pk[24];
    db_status st;
    PGresult *r;
    json_t *now;
    int n;

    qk_clear(t->e);
    if (!(r = db_exec(c, Q_DEVICE_LOCK, 1, vals, NULL, NULL, &st)))
        return st;
    if (PQntuples(r) == 0) {
        PQclear(r);
        qk_fail(t->e, QK_NOT_FOUND, "not_found", "no device '%s'", t->device_id);
        return DB_NOT_FOUND;
    }
    snprintf(pk, sizeof(pk), "%s", PQgetvalue(r, 0, 0));
    PQclear(r);
    vals[0] = pk;
    if (!(r = db_exec(c, Q_DEVICE_ATTRS_SET, 3, vals, NULL, NULL, &st)))
        return st;
    now = json_loads(PQgetvalue(r, 0, 0), 0, NULL);
    n = (int)json_object_size(now);
    st = strlen(PQgetvalue(r, 0, 0)) > DEVICE_ATTRS_TEXT_MAX || n > DEVICE_ATTRS_MAX ? DB_INVALID
                                                                                    : DB_OK;
    json_decref(now);
    PQclear(r);
    if (st != DB_OK) {
        qk_fail(t->e, QK_INVALID, "invalid_attributes",
                "a device has at most %d attributes, %d bytes of JSON", DEVICE_ATTRS_MAX,
                DEVICE_ATTRS_TEXT_MAX);
        return st;
    }
    if (!(r = db_exec(c, Q_DEVICE_ATTRS_CLASH, 1, vals, NULL, NULL, &st)))
        return st;
    if (PQntuples(r) > 0) {
        qk_fail(t->e, QK_CONFLICT, "conflict", "another device of its type has that mac or sn");
        PQclear(r);
        return DB_INVALID;
    }
    PQclear(r);
    return audit_append(c, t->actor, "device.attributes_set", t->device_id, json_incref(t->audit));
}

qk_kind devices_set_attributes(qk_svc *s, const qk_principal *who, const char *device_id,
                               const json_t *set, const json_t *unset, qk_err *e)
{
    struct attrs_tx t = {who->name, device_id, NULL, NULL, NULL, e};
    char *set_text = json_dumps(set, JSON_COMPACT | JSON_SORT_KEYS);
    pgarray names;
    size_t i;
    json_t *v;
    db_status st;
    qk_kind k;

    qk_clear(e);
    pgarray_init(&names);
    json_array_foreach(unset, i, v) pgarray_add(&names, json_string_value(v));
    t.set = set_text;
    t.unset = pgarray_finish(&names);
    t.audit = json_pack("{s:O,s:O}", "set", set, "unset", unset);
    if (!t.set || !t.unset || !t.audit) {
        k = qk_fail(e, QK_INTERNAL, "internal", "out of memory");
        goto out;
    }
    st = db_tx(s->db, attrs_tx_fn, &t);
    if (st == DB_CONFLICT) {
        /* The unique index saw a concurrent write of the same value. */
        k = qk_fail(e, QK_CONFLICT, "conflict", "another device of its type has that mac or sn");
        goto out;
    }
    if (st != DB_OK) {
        k = e->kind != QK_OK ? e->kind : db_fail(e, st);
        goto out;
    }
    log_with(&who->log, LOG_INFO, "device attributes set", "{s:s,s:s}", "device_id", device_id,
             "by", who->name);
    k = QK_OK;
out:
    free(set_text);
    pgarray_free(&names);
    json_decref(t.audit);
    return k;
}

/* ---- device types --------------------------------------------------------- */

qk_kind device_types_list(qk_svc *s, json_t **out, qk_err *e)
{
    PGresult *r = NULL;
    json_t *arr, *templates, *service, *suites;
    qk_kind k;

    *out = NULL;
    if ((k = load_types(s, &r, e)) != QK_OK)
        return k;
    arr = json_array();
    templates = json_object();
    service = json_object();
    suites = json_object();
    for (int i = 0; i < PQntuples(r); i++) {
        const char *purposes[DEVICE_MAX_KEYS] = {0};
        int n = device_template_parse(PQgetvalue(r, i, 1), purposes, DEVICE_MAX_KEYS);
        json_t *t = json_array();
        json_array_append_new(arr, json_string(PQgetvalue(r, i, 0)));
        for (int j = 0; j < n; j++)
            json_array_append_new(t, json_string(purposes[j]));
        json_object_set_new(templates, PQgetvalue(r, i, 0), t);
        json_object_set_new(service, PQgetvalue(r, i, 0),
                            PQgetisnull(r, i, 2) ? json_null()
                                                 : json_integer(atoi(PQgetvalue(r, i, 2))));
        json_object_set_new(suites, PQgetvalue(r, i, 0), json_string(PQgetvalue(r, i, 3)));
    }
    PQclear(r);
    *out = json_pack("{s:o,s:o,s:o,s:o}", "types", arr, "key_purposes", templates,
                     "service_days", service, "suites", suites);
    return QK_OK;
}

qk_kind device_types_has(qk_svc *s, const char *name, bool *known, qk_err *e)
{
    PGresult *r = NULL;
    qk_kind k;

    *known = false;
    if ((k = load_types(s, &r, e)) != QK_OK)
        return k;
    for (int i = 0; i < PQntuples(r) && !*known; i++)
        *known = !strcmp(PQgetvalue(r, i, 0), name);
    PQclear(r);
    return QK_OK;
}

struct type_tx {
    const char *actor, *name, *purposes_lit;
    json_t *purposes;
    int service_days;
    const char *suite; /* NULL: "aes" */
};

static db_status type_tx_fn(db_conn *c, void *arg)
{
    struct type_tx *t = arg;
    char days[16];
    const char *vals[4] = {t->name, t->purposes_lit, t->service_days > 0 ? days : NULL,
                           t->suite};
    db_status st;
    PGresult *r;
    snprintf(days, sizeof(days), "%d", t->service_days);
    if (!(r = db_exec(c, Q_DEVTYPE_INSERT, 4, vals, NULL, NULL, &st)))
        return st;
    PQclear(r);
    return audit_append(c, t->actor, "device_type.added", NULL,
                        json_pack("{s:s,s:O,s:o,s:s}", "name", t->name, "key_purposes",
                                  t->purposes, "service_days",
                                  t->service_days > 0 ? json_integer(t->service_days)
                                                      : json_null(),
                                  "suite", t->suite ? t->suite : "aes"));
}

qk_kind device_types_add(qk_svc *s, const qk_principal *who, const char *name,
                         const char *const *purposes, int npurposes, int service_days,
                         const char *suite, qk_err *e)
{
    struct type_tx t = {who->name, name, NULL, json_array(), service_days, suite};

    if (suite && strcmp(suite, "aes") && strcmp(suite, "sm4")) {
        json_decref(t.purposes);
        return qk_fail(e, QK_INVALID, "invalid_type", "suite is aes or sm4");
    }
    pgarray lit;
    db_status st;

    qk_clear(e);
    pgarray_init(&lit);
    if (npurposes < 0 || npurposes > DEVICE_MAX_KEYS) {
        json_decref(t.purposes);
        return qk_fail(e, QK_INVALID, "invalid_key_purposes", "at most %d key purposes",
                       DEVICE_MAX_KEYS);
    }
    for (int i = 0; i < npurposes; i++) {
        if (!device_key_purpose_valid(purposes[i])) {
            json_decref(t.purposes);
            pgarray_free(&lit);
            return qk_fail(e, QK_INVALID, "invalid_key_purposes",
                           "a key purpose is access, local or generic");
        }
        pgarray_add(&lit, purposes[i]);
        json_array_append_new(t.purposes, json_string(purposes[i]));
    }
    t.purposes_lit = pgarray_finish(&lit);
    if (!t.purposes_lit || !t.purposes) {
        json_decref(t.purposes);
        pgarray_free(&lit);
        return qk_fail(e, QK_INTERNAL, "internal", "out of memory");
    }
    st = db_tx(s->db, type_tx_fn, &t);
    json_decref(t.purposes);
    pgarray_free(&lit);
    if (st == DB_CONFLICT)
        return qk_fail(e, QK_CONFLICT, "conflict", "device type '%s' exists", name);
    if (st != DB_OK)
        return db_fail(e, st);
    return QK_OK;
}
