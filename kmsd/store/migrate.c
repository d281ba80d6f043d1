/* migrate — schema migrations under an advisory lock. */
#include "store/migrate.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#include "hexutil.h"
#include "log.h"

/* Arbitrary constant naming qkms's migration lock. */
#define MIGRATE_LOCK "7164803901"

static int exec_ok(PGconn *pg, const char *sql, char *err, size_t el)
{
    PGresult *r = PQexec(pg, sql);
    int ok = PQresultStatus(r) == PGRES_COMMAND_OK || PQresultStatus(r) == PGRES_TUPLES_OK;
    if (!ok)
        snprintf(err, el, "%s", PQresultErrorMessage(r));
    PQclear(r);
    return ok ? 0 : -1;
}

static void sha256_hex(const char *s, char out[65])
{
    uint8_t md[32];
    unsigned int n = 0;
    EVP_Digest(s, strlen(s), md, &n, EVP_sha256(), NULL);
    qkms_hex_encode(md, 32, out);
}

/* The migrations the database has applied, each known to this kmsd with
 * the same SQL; *cur is the highest. 0, or -1 with err set. */
static int check_applied(PGconn *pg, int *cur, char *err, size_t el)
{
    PGresult *r =
        PQexec(pg, "SELECT version, name, sha256 FROM qkms_schema_migrations ORDER BY version");
    int rc = -1;

    *cur = 0;
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        snprintf(err, el, "%s", PQresultErrorMessage(r));
        goto out;
    }
    for (int i = 0; i < PQntuples(r); i++) {
        int v = atoi(PQgetvalue(r, i, 0));
        const migration *m = NULL;
        char sum[65];
        for (int j = 0; j < schema_migrations_count; j++)
            if (schema_migrations[j].version == v)
                m = &schema_migrations[j];
        if (!m) {
            snprintf(err, el,
                     "database has schema migration %d (%s) that this kmsd does not know; "
                     "it was written by a newer kmsd",
                     v, PQgetvalue(r, i, 1));
            goto out;
        }
        sha256_hex(m->sql, sum);
        if (strcmp(sum, PQgetvalue(r, i, 2)) != 0) {
            snprintf(err, el, "schema migration %d (%s) in the database differs from this kmsd's",
                     v, m->name);
            goto out;
        }
        if (v > *cur)
            *cur = v;
    }
    rc = 0;
out:
    PQclear(r);
    return rc;
}

/* Apply m and record it, in one transaction. 0, or -1 with err set (rolled
 * back). */
static int apply_one(PGconn *pg, const migration *m, char *err, size_t el)
{
    char sum[65], vbuf[16];
    const char *params[3] = {vbuf, m->name, sum};
    PGresult *ins;

    sha256_hex(m->sql, sum);
    snprintf(vbuf, sizeof(vbuf), "%d", m->version);
    /* A migration rewrites whole tables (the audit log, nonces): on a large
     * database it takes longer than any request may, so kmsd's
     * statement_timeout does not apply to it. */
    if (exec_ok(pg, "BEGIN", err, el) != 0 ||
        exec_ok(pg, "SET LOCAL statement_timeout = 0", err, el) != 0)
        return -1;
    if (exec_ok(pg, m->sql, err, el) != 0) {
        char why[512];
        snprintf(why, sizeof(why), "%s", err);
        snprintf(err, el, "migration %d (%s) failed: %s", m->version, m->name, why);
        PQclear(PQexec(pg, "ROLLBACK"));
        return -1;
    }
    ins = PQexecParams(pg,
                       "INSERT INTO qkms_schema_migrations (version, name, sha256) "
                       "VALUES ($1::int, $2, $3)",
                       3, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(ins) != PGRES_COMMAND_OK) {
        snprintf(err, el, "%s", PQresultErrorMessage(ins));
        PQclear(ins);
        PQclear(PQexec(pg, "ROLLBACK"));
        return -1;
    }
    PQclear(ins);
    if (exec_ok(pg, "COMMIT", err, el) != 0)
        return -1;
    log_emit(LOG_INFO, "schema migration applied", "{s:i,s:s}", "version", m->version, "name",
             m->name);
    return 0;
}

int migrate_run(PGconn *pg, int apply, int *version, char *err, size_t el)
{
    int rc = -1, cur = 0;

    if (exec_ok(pg, "SELECT pg_advisory_lock(" MIGRATE_LOCK ")", err, el) != 0)
        return -1;
    if (exec_ok(pg,
                "CREATE TABLE IF NOT EXISTS qkms_schema_migrations ("
                " version integer PRIMARY KEY, name text NOT NULL, sha256 text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())",
                err, el) != 0)
        goto out;
    if (check_applied(pg, &cur, err, el) != 0)
        goto out;
    for (int j = 0; j < schema_migrations_count; j++) {
        const migration *m = &schema_migrations[j];
        if (m->version <= cur)
            continue;
        if (!apply) {
            snprintf(err, el, "schema is at version %d, this kmsd needs %d (run kmsd --migrate)",
                     cur, schema_migrations[schema_migrations_count - 1].version);
            goto out;
        }
        if (apply_one(pg, m, err, el) != 0)
            goto out;
        cur = m->version;
    }
    *version = cur;
    rc = 0;
out:
    PQclear(PQexec(pg, "SELECT pg_advisory_unlock(" MIGRATE_LOCK ")"));
    return rc;
}
