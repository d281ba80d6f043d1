/* admin_status — GET /v1/admin/status. */
#include <stdlib.h>
#include <time.h>

#include "store/queries.h"
#include "api/routes.h"
#include "version.h"

void h_admin_status(http_request *rq, http_response *rs)
{
    kms_ctx *k = rq->kms;
    db_status st;
    PGresult *r = db_query(k->svc.db, Q_TOKEN_COUNT, 0, NULL, NULL, NULL, &st);
    char label[128];
    db_stats ds;
    long long ntokens;
    uint32_t mv = keywrap_active(k->svc.kw);

    if (!r) {
        http_db_error(rs, st);
        return;
    }
    ntokens = atoll(PQgetvalue(r, 0, 0));
    PQclear(r);
    keywrap_label(k->svc.kw, mv, label, sizeof(label));
    db_stats_get(k->svc.db, &ds);
    http_json(rs, 200,
              json_pack("{s:s,s:I,s:{s:s,s:i},s:i,s:{s:s,s:s,s:i},s:{s:i,s:i},s:{s:I},s:s}",
                        "version", QKMS_VERSION, "uptime_s", (json_int_t)(time(NULL) - k->started_at),
                        "master_key", "label", label, "version", (int)mv, "schema_version",
                        k->schema_version, "token", "module", p11_module_path(k->svc.token), "label",
                        p11_token_label(k->svc.token), "sessions", p11_pool_size(k->svc.token), "db",
                        "pool_size", ds.size, "in_use", ds.in_use, "counts", "admin_tokens",
                        (json_int_t)ntokens, "config_hash", k->config_hash));
}
