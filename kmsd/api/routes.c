/* routes — the route table. */
#include "api/routes.h"

#define OPS (ROLE_ADMIN | ROLE_OPERATOR)
#define IMPORT_MAX_BODY (4u << 20)

#define ROUTES(X)                                                                    \
    X("GET", "/healthz", "healthz", 0, h_healthz, .probe = true)                     \
    X("GET", "/readyz", "readyz", 0, h_readyz, .probe = true)                        \
    X("GET", "/metrics", "metrics", 0, h_metrics, .probe = true)                     \
    X("GET", "/v1/admin/status", "admin_status", ROLE_ANY, h_admin_status)           \
    X("POST", "/v1/admin/tokens", "admin_tokens_create", ROLE_ADMIN, h_tokens_create) \
    X("GET", "/v1/admin/tokens", "admin_tokens_list", ROLE_ADMIN, h_tokens_list)     \
    X("DELETE", "/v1/admin/tokens/{name}", "admin_tokens_revoke", ROLE_ADMIN, h_tokens_revoke) \
    X("POST", "/v1/admin/devices", "admin_devices_create", OPS, h_devices_create)    \
    X("GET", "/v1/admin/devices", "admin_devices_list", ROLE_ANY, h_devices_list)    \
    X("POST", "/v1/admin/devices/import", "admin_devices_import", OPS, h_devices_import, .max_body = IMPORT_MAX_BODY) \
    X("GET", "/v1/admin/devices/{id}", "admin_device_get", ROLE_ANY, h_device_get)   \
    X("GET", "/v1/admin/devices/{id}/keys", "admin_device_keys", ROLE_ANY, h_device_keys) \
    X("POST", "/v1/admin/devices/{id}/suspend", "admin_device_suspend", OPS, h_device_suspend) \
    X("POST", "/v1/admin/devices/{id}/resume", "admin_device_resume", OPS, h_device_resume) \
    X("POST", "/v1/admin/devices/{id}/revoke", "admin_device_revoke", OPS, h_device_revoke) \
    X("POST", "/v1/admin/devices/{id}/rotate", "admin_device_rotate", OPS, h_device_rotate) \
    X("POST", "/v1/admin/devices/{id}/fill", "admin_device_fill", OPS, h_device_fill) \
    X("GET", "/v1/admin/device-types", "admin_devtypes_list", ROLE_ANY, h_devtypes_list) \
    X("POST", "/v1/admin/device-types", "admin_devtypes_add", ROLE_ADMIN, h_devtypes_add) \
    X("POST", "/v1/sessions/key", "session_key", 0, h_session_key)                    \
    X("POST", "/v1/sessions/end", "session_end", 0, h_session_end)                    \
    X("GET", "/v1/admin/sessions", "admin_sessions_list", ROLE_ANY, h_admin_sessions_list) \
    X("GET", "/v1/admin/sessions/{id}", "admin_session_get", ROLE_ANY, h_admin_session_get) \
    X("POST", "/v1/admin/sessions/{id}/end", "admin_session_end", OPS, h_admin_session_end) \
    X("GET", "/v1/admin/policies", "admin_policies_list", ROLE_ANY, h_policies_list) \
    X("POST", "/v1/admin/policies", "admin_policies_add", OPS, h_policies_add)        \
    X("DELETE", "/v1/admin/policies/{name}", "admin_policies_remove", OPS, h_policies_remove) \
    X("GET", "/v1/admin/master", "admin_master", ROLE_ANY, h_admin_master)            \
    X("POST", "/v1/admin/master/rotate", "admin_master_rotate", ROLE_ADMIN, h_admin_master_rotate) \
    X("GET", "/v1/admin/audit", "admin_audit_list", ROLE_ANY, h_audit_list)          \
    X("POST", "/v1/admin/audit/verify", "admin_audit_verify", ROLE_ADMIN | ROLE_AUDITOR, h_audit_verify) \
    X("GET", "/v1/admin/audit/export", "admin_audit_export", ROLE_ADMIN | ROLE_AUDITOR, h_audit_export) \
    X("GET", "/v1/admin/entropy", "admin_entropy", ROLE_ANY, h_admin_entropy)         \
    X("POST", "/v1/admin/entropy/sources/{name}/enable", "admin_entropy_enable", ROLE_ADMIN, h_admin_entropy_enable)

#define ROW(m, p, n, r, f, ...) {.method = m, .pattern = p, .name = n, .roles = r, .fn = f, __VA_ARGS__},
#define NAME(m, p, n, r, f, ...) n,
const http_route routes[] = {ROUTES(ROW)};
const char *const route_names[] = {ROUTES(NAME)};
const int routes_count = (int)(sizeof(routes) / sizeof(routes[0]));

void http_db_error(http_response *rs, db_status st)
{
    qk_err e;
    db_fail(&e, st);
    http_fail(rs, &e);
}

void http_db_list(http_request *rq, http_response *rs, int stmt, const char *key,
                  pgjson_row_fn row)
{
    db_status st;
    PGresult *r = db_query(rq->kms->svc.db, stmt, 0, NULL, NULL, NULL, &st);
    json_t *arr;
    if (!r) {
        http_db_error(rs, st);
        return;
    }
    arr = pgjson_rows(r, row);
    PQclear(r);
    http_json(rs, 200, json_pack("{s:o}", key, arr));
}
