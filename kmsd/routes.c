/* routes — the route table. */
#include "routes.h"

#define ROUTES(X)                                                                    \
    X("GET", "/healthz", "healthz", 0, h_healthz)                                    \
    X("GET", "/readyz", "readyz", 0, h_readyz)                                       \
    X("GET", "/metrics", "metrics", 0, h_metrics)                                    \
    X("GET", "/v1/admin/status", "admin_status", ROLE_ANY, h_admin_status)           \
    X("POST", "/v1/admin/tokens", "admin_tokens_create", ROLE_ADMIN, h_tokens_create) \
    X("GET", "/v1/admin/tokens", "admin_tokens_list", ROLE_ADMIN, h_tokens_list)     \
    X("DELETE", "/v1/admin/tokens/{name}", "admin_tokens_revoke", ROLE_ADMIN, h_tokens_revoke)

#define ROW(m, p, n, r, f) {m, p, n, r, f},
#define NAME(m, p, n, r, f) n,
const http_route routes[] = {ROUTES(ROW)};
const char *const route_names[] = {ROUTES(NAME)};
const int routes_count = (int)(sizeof(routes) / sizeof(routes[0]));

void http_db_error(http_response *rs, db_status st)
{
    if (st == DB_UNAVAILABLE || st == DB_RETRY) {
        rs->retry_after = 1;
        http_error(rs, 503, "unavailable", "database unavailable, retry later");
    } else {
        http_error(rs, 500, "internal", "internal error (see kmsd log)");
    }
}
