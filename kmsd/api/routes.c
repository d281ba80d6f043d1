/*
 * routes — the route table: per route its method, pattern, metrics name,
 * roles (0 = no bearer token), handler, the listeners that serve it (door:
 * DEV the device listener, ADM the admin listener, BOTH; server.h) and its
 * per-principal rate-limit scope (ratelimit.h), then optional attributes
 * (.max_body, .probe).
 */
#include "api/routes.h"
#include "service/sessions.h"

#define OPS (ROLE_ADMIN | ROLE_OPERATOR)
#define IMPORT_MAX_BODY (4u << 20)
#define DEV DOOR_DEVICE
#define ADM DOOR_ADMIN
#define BOTH DOOR_ALL

#define ROUTES(X)                                                                    \
    X("GET", "/healthz", "healthz", 0, h_healthz, BOTH, RL_NONE, .probe = true) \
    X("GET", "/readyz", "readyz", 0, h_readyz, BOTH, RL_NONE, .probe = true) \
    X("GET", "/metrics", "metrics", 0, h_metrics, ADM, RL_NONE, .probe = true) \
    X("GET", "/v1/admin/status", "admin_status", ROLE_ANY, h_admin_status, ADM, RL_ADMIN) \
    X("POST", "/v1/admin/tokens", "admin_tokens_create", ROLE_ADMIN, h_tokens_create, ADM, RL_ADMIN) \
    X("GET", "/v1/admin/tokens", "admin_tokens_list", ROLE_ADMIN, h_tokens_list, ADM, RL_ADMIN) \
    X("DELETE", "/v1/admin/tokens/{name}", "admin_tokens_revoke", ROLE_ADMIN, h_tokens_revoke, ADM, RL_ADMIN) \
    X("POST", "/v1/admin/devices", "admin_devices_create", OPS, h_devices_create, ADM, RL_ADMIN) \
    X("GET", "/v1/admin/devices", "admin_devices_list", ROLE_ANY, h_devices_list, ADM, RL_ADMIN) \
    X("POST", "/v1/admin/devices/import", "admin_devices_import", OPS, h_devices_import, ADM, RL_ADMIN, .max_body = IMPORT_MAX_BODY) \
    X("GET", "/v1/admin/devices/{id}", "admin_device_get", ROLE_ANY, h_device_get, ADM, RL_ADMIN) \
    X("GET", "/v1/admin/devices/{id}/keys", "admin_device_keys", ROLE_ANY, h_device_keys, ADM, RL_ADMIN) \
    X("POST", "/v1/admin/devices/{id}/suspend", "admin_device_suspend", OPS, h_device_suspend, ADM, RL_ADMIN) \
    X("POST", "/v1/admin/devices/{id}/resume", "admin_device_resume", OPS, h_device_resume, ADM, RL_ADMIN) \
    X("POST", "/v1/admin/devices/{id}/revoke", "admin_device_revoke", OPS, h_device_revoke, ADM, RL_ADMIN) \
    X("POST", "/v1/admin/devices/{id}/rotate", "admin_device_rotate", OPS, h_device_rotate, ADM, RL_ADMIN) \
    X("POST", "/v1/admin/devices/{id}/fill", "admin_device_fill", OPS, h_device_fill, ADM, RL_ADMIN) \
    X("GET", "/v1/admin/device-types", "admin_devtypes_list", ROLE_ANY, h_devtypes_list, ADM, RL_ADMIN) \
    X("POST", "/v1/admin/device-types", "admin_devtypes_add", ROLE_ADMIN, h_devtypes_add, ADM, RL_ADMIN) \
    X("POST", "/v1/sessions/key", "session_key", 0, h_session_key, DEV, RL_DEVICE) \
    X("POST", "/v1/sessions/end", "session_end", 0, h_session_end, DEV, RL_DEVICE) \
    X("GET", "/v1/admin/sessions", "admin_sessions_list", ROLE_ANY, h_admin_sessions_list, ADM, RL_ADMIN) \
    X("GET", "/v1/admin/sessions/{id}", "admin_session_get", ROLE_ANY, h_admin_session_get, ADM, RL_ADMIN) \
    X("POST", "/v1/admin/sessions/{id}/end", "admin_session_end", OPS, h_admin_session_end, ADM, RL_ADMIN) \
    X("GET", "/v1/admin/policies", "admin_policies_list", ROLE_ANY, h_policies_list, ADM, RL_ADMIN) \
    X("POST", "/v1/admin/policies", "admin_policies_add", OPS, h_policies_add, ADM, RL_ADMIN) \
    X("DELETE", "/v1/admin/policies/{name}", "admin_policies_remove", OPS, h_policies_remove, ADM, RL_ADMIN) \
    X("GET", "/v1/admin/master", "admin_master", ROLE_ANY, h_admin_master, ADM, RL_ADMIN) \
    X("POST", "/v1/admin/master/rotate", "admin_master_rotate", ROLE_ADMIN, h_admin_master_rotate, ADM, RL_ADMIN) \
    X("GET", "/v1/admin/audit", "admin_audit_list", ROLE_ANY, h_audit_list, ADM, RL_ADMIN) \
    X("POST", "/v1/admin/audit/verify", "admin_audit_verify", ROLE_ADMIN | ROLE_AUDITOR, h_audit_verify, ADM, RL_ADMIN) \
    X("GET", "/v1/admin/audit/export", "admin_audit_export", ROLE_ADMIN | ROLE_AUDITOR, h_audit_export, ADM, RL_ADMIN) \
    X("GET", "/v1/admin/entropy", "admin_entropy", ROLE_ANY, h_admin_entropy, ADM, RL_ADMIN) \
    X("POST", "/v1/admin/entropy/sources/{name}/enable", "admin_entropy_enable", ROLE_ADMIN, h_admin_entropy_enable, ADM, RL_ADMIN)

#define ROW(m, p, n, r, f, d, rl, ...) \
    {.method = m, .pattern = p, .name = n, .roles = r, .fn = f, .door = d, .rl_scope = rl, __VA_ARGS__},
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
