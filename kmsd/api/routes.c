/*
 * routes — the route table: per route its method, pattern, metrics name,
 * roles (0 = no bearer token), handler, the listeners that serve it (door:
 * DEV the device listener, ADM the admin listener, BOTH; server.h) and its
 * per-principal rate-limit scope (ratelimit.h), then optional attributes
 * (.max_body, .probe).
 *
 * routes_print_json writes the table for `kmsd --print-routes`: docs/openapi.yaml
 * is checked against it (tests/integration/test_openapi.py).
 */
#include "api/routes.h"
#include "service/firmware_verify.h"

#define OPS (ROLE_ADMIN | ROLE_OPERATOR)
#define IMPORT_MAX_BODY (4u << 20)
/* The ETSI door refuses bodies over 64 KiB itself, in the standard's Error
 * object (400); the gate only stops what no client of it would send. */
#define ETSI_GATE_MAX_BODY (1u << 20)
/* The crypto services' data (service/crypto.h, 4 MiB and a frame's
 * overhead) in base64 inside JSON. */
#define CRYPTO_MAX_BODY (6u << 20)
#define DEV DOOR_DEVICE
#define ADM DOOR_ADMIN
#define BOTH DOOR_ALL
#define MET DOOR_METRICS

#define ROUTES(X)                                                                    \
    X("GET", "/healthz", "healthz", 0, h_healthz, BOTH | MET, RL_NONE, .probe = true) \
    X("GET", "/readyz", "readyz", 0, h_readyz, BOTH | MET, RL_NONE, .probe = true) \
    X("GET", "/metrics", "metrics", 0, h_metrics, ADM | MET, RL_NONE, .probe = true) \
    X("GET", "/v1/admin/status", "admin_status", ROLE_ANY, h_admin_status, ADM, RL_ADMIN) \
    X("POST", "/v1/admin/tokens", "admin_tokens_create", ROLE_ADMIN, h_tokens_create, ADM, RL_ADMIN) \
    X("GET", "/v1/admin/tokens", "admin_tokens_list", ROLE_ADMIN, h_tokens_list, ADM, RL_ADMIN) \
    X("DELETE", "/v1/admin/tokens/{name}", "admin_tokens_revoke", ROLE_ADMIN, h_tokens_revoke, ADM, RL_ADMIN) \
    X("POST", "/v1/admin/tokens/{name}/certificates", "admin_token_certs_bind", ROLE_ADMIN, h_token_certs_bind, ADM, RL_ADMIN) \
    X("GET", "/v1/admin/tokens/{name}/certificates", "admin_token_certs_list", ROLE_ADMIN, h_token_certs_list, ADM, RL_ADMIN) \
    X("DELETE", "/v1/admin/tokens/{name}/certificates/{sha256}", "admin_token_certs_unbind", ROLE_ADMIN, h_token_certs_unbind, ADM, RL_ADMIN) \
    X("POST", "/v1/admin/devices", "admin_devices_create", OPS, h_devices_create, ADM, RL_ADMIN) \
    X("GET", "/v1/admin/devices", "admin_devices_list", ROLE_ANY, h_devices_list, ADM, RL_ADMIN) \
    X("POST", "/v1/admin/devices/import", "admin_devices_import", OPS, h_devices_import, ADM, RL_ADMIN, .max_body = IMPORT_MAX_BODY) \
    X("GET", "/v1/admin/devices/{id}", "admin_device_get", ROLE_ANY, h_device_get, ADM, RL_ADMIN) \
    X("GET", "/v1/admin/devices/{id}/keys", "admin_device_keys", ROLE_ANY, h_device_keys, ADM, RL_ADMIN) \
    X("POST", "/v1/admin/devices/{id}/suspend", "admin_device_suspend", OPS, h_device_suspend, ADM, RL_ADMIN) \
    X("POST", "/v1/admin/devices/{id}/resume", "admin_device_resume", OPS, h_device_resume, ADM, RL_ADMIN) \
    X("POST", "/v1/admin/devices/{id}/revoke", "admin_device_revoke", OPS, h_device_revoke, ADM, RL_ADMIN) \
    X("POST", "/v1/admin/devices/{id}/rotate", "admin_device_rotate", OPS, h_device_rotate, ADM, RL_ADMIN) \
    X("POST", "/v1/admin/devices/{id}/sae", "admin_device_sae", OPS, h_device_sae, ADM, RL_ADMIN) \
    X("POST", "/v1/admin/devices/{id}/attributes", "admin_device_attributes", OPS, h_device_attributes, ADM, RL_ADMIN) \
    X("POST", "/v1/admin/devices/{id}/service", "admin_device_service", OPS, h_device_service, ADM, RL_ADMIN) \
    X("POST", "/v1/admin/devices/{id}/credential", "admin_device_credential", OPS, h_device_credential, ADM, RL_ADMIN) \
    X("GET", "/v1/admin/devices/{id}/verification-code", "admin_device_verification_code", OPS, h_device_verification_code, ADM, RL_ADMIN) \
    X("POST", "/v1/admin/devices/{id}/fill", "admin_device_fill", OPS, h_device_fill, ADM, RL_ADMIN) \
    X("GET", "/v1/admin/devices/{id}/certificates", "admin_device_certs_list", ROLE_ANY, h_device_certs_list, ADM, RL_ADMIN) \
    X("POST", "/v1/admin/devices/{id}/certificates", "admin_device_cert_issue", OPS, h_device_cert_issue, ADM, RL_ADMIN) \
    X("GET", "/v1/admin/devices/{id}/certificates/{serial}", "admin_device_cert_get", ROLE_ANY, h_device_cert_get, ADM, RL_ADMIN) \
    X("POST", "/v1/admin/devices/{id}/certificates/{serial}/revoke", "admin_device_cert_revoke", OPS, h_device_cert_revoke, ADM, RL_ADMIN) \
    X("GET", "/v1/ca", "ca_chain", 0, h_ca_chain, BOTH, RL_NONE) \
    X("GET", "/v1/ca/crl", "ca_crl", 0, h_ca_crl, BOTH, RL_NONE) \
    X("GET", "/v1/admin/ca", "admin_ca", ROLE_ANY, h_admin_ca, ADM, RL_ADMIN) \
    X("POST", "/v1/admin/ca/rotate", "admin_ca_rotate", ROLE_ADMIN, h_admin_ca_rotate, ADM, RL_ADMIN) \
    X("POST", "/v1/admin/ca/csr", "admin_ca_csr", ROLE_ADMIN, h_admin_ca_csr, ADM, RL_ADMIN) \
    X("POST", "/v1/admin/ca/import", "admin_ca_import", ROLE_ADMIN, h_admin_ca_import, ADM, RL_ADMIN, .max_body = 128 * 1024) \
    X("GET", "/v1/admin/device-types", "admin_devtypes_list", ROLE_ANY, h_devtypes_list, ADM, RL_ADMIN) \
    X("POST", "/v1/admin/device-types", "admin_devtypes_add", ROLE_ADMIN, h_devtypes_add, ADM, RL_ADMIN) \
    X("POST", "/v1/sessions/key", "session_key", 0, h_session_key, DEV, RL_DEVICE, .client_cert = true) \
    X("POST", "/v1/sessions/end", "session_end", 0, h_session_end, DEV, RL_DEVICE, .client_cert = true) \
    X("POST", "/v1/streams/key", "stream_key", 0, h_stream_key, DEV, RL_DEVICE, .client_cert = true) \
    X("POST", "/v1/streams/end", "stream_end", 0, h_stream_end, DEV, RL_DEVICE, .client_cert = true) \
    X("POST", "/v2/sessions/key", "session_key_v2", 0, h_session_key_v2, DEV, RL_DEVICE, .client_cert = true) \
    X("POST", "/v2/sessions/end", "session_end_v2", 0, h_session_end_v2, DEV, RL_DEVICE, .client_cert = true) \
    X("POST", "/v1/gateway/login", "gateway_login", 0, h_gateway_login, DEV, RL_DEVICE, .client_cert = true) \
    X("POST", "/v1/gateway/logout", "gateway_logout", 0, h_gateway_logout, DEV, RL_DEVICE, .client_cert = true) \
    X("POST", "/v1/gateway/reset", "gateway_reset", 0, h_gateway_reset, DEV, RL_DEVICE, .client_cert = true) \
    X("POST", "/v1/app/register", "app_register", 0, h_app_register, DEV, RL_NONE) \
    X("POST", "/v1/app/devices", "app_devices_create", ROLE_APP, h_app_devices_create, DEV, RL_ADMIN) \
    X("GET", "/v1/app/devices", "app_devices_list", ROLE_APP, h_app_devices_list, DEV, RL_ADMIN) \
    X("GET", "/v1/app/devices/{id}", "app_device_get", ROLE_APP, h_app_device_get, DEV, RL_ADMIN) \
    X("POST", "/v1/app/devices/{id}/rotate", "app_device_rotate", ROLE_APP, h_app_device_rotate, DEV, RL_ADMIN) \
    X("POST", "/v1/app/bind/challenges", "app_bind_challenge", ROLE_APP, h_app_bind_challenge, DEV, RL_ADMIN) \
    X("POST", "/v1/app/bind", "app_bind", ROLE_APP, h_app_bind, DEV, RL_ADMIN) \
    X("GET", "/v1/app/events", "app_events", ROLE_APP, h_app_events, DEV, RL_ADMIN) \
    X("GET", "/v1/admin/events", "admin_events_list", ROLE_ANY, h_events_list, ADM, RL_ADMIN) \
    X("POST", "/v1/admin/events/replay", "admin_events_replay", ROLE_ADMIN, h_events_replay, ADM, RL_ADMIN) \
    X("DELETE", "/v1/admin/events/webhooks/{id}", "admin_webhook_remove", ROLE_ADMIN, h_webhook_remove, ADM, RL_ADMIN) \
    X("POST", "/v1/admin/apps", "admin_apps_create", ROLE_ADMIN, h_apps_create, ADM, RL_ADMIN) \
    X("GET", "/v1/admin/apps", "admin_apps_list", ROLE_ANY, h_apps_list, ADM, RL_ADMIN) \
    X("DELETE", "/v1/admin/apps/{name}", "admin_apps_revoke", ROLE_ADMIN, h_apps_revoke, ADM, RL_ADMIN) \
    X("POST", "/v1/admin/apps/{name}/tokens", "admin_apps_token", ROLE_ADMIN, h_apps_token, ADM, RL_ADMIN) \
    X("GET", "/api/v1/keys/{sae}/status", "etsi_status", 0, h_etsi_status, DEV, RL_DEVICE, .client_cert = true) \
    X("GET", "/api/v1/keys/{sae}/enc_keys", "etsi_enc_keys_get", 0, h_etsi_enc_get, DEV, RL_DEVICE, .client_cert = true) \
    X("POST", "/api/v1/keys/{sae}/enc_keys", "etsi_enc_keys", 0, h_etsi_enc_post, DEV, RL_DEVICE, .client_cert = true, .max_body = ETSI_GATE_MAX_BODY) \
    X("GET", "/api/v1/keys/{sae}/dec_keys", "etsi_dec_keys_get", 0, h_etsi_dec_get, DEV, RL_DEVICE, .client_cert = true) \
    X("POST", "/api/v1/keys/{sae}/dec_keys", "etsi_dec_keys", 0, h_etsi_dec_post, DEV, RL_DEVICE, .client_cert = true, .max_body = ETSI_GATE_MAX_BODY) \
    X("GET", "/v1/admin/qkd", "admin_qkd", ROLE_ANY, h_admin_qkd, ADM, RL_ADMIN) \
    X("GET", "/v1/admin/qkd/keys", "admin_qkd_keys", ROLE_ANY, h_admin_qkd_keys, ADM, RL_ADMIN) \
    X("GET", "/v1/platform/certificates", "platform_certs", 0, h_platform_certs, BOTH, RL_NONE) \
    X("POST", "/v1/admin/platform/rotate", "admin_platform_rotate", ROLE_ADMIN, h_admin_platform_rotate, ADM, RL_ADMIN) \
    X("GET", "/v1/admin/sessions", "admin_sessions_list", ROLE_ANY, h_admin_sessions_list, ADM, RL_ADMIN) \
    X("GET", "/v1/admin/sessions/{id}", "admin_session_get", ROLE_ANY, h_admin_session_get, ADM, RL_ADMIN) \
    X("POST", "/v1/admin/sessions/{id}/end", "admin_session_end", OPS, h_admin_session_end, ADM, RL_ADMIN) \
    X("GET", "/v1/admin/streams", "admin_streams_list", ROLE_ANY, h_admin_streams_list, ADM, RL_ADMIN) \
    X("GET", "/v1/admin/streams/{id}", "admin_stream_get", ROLE_ANY, h_admin_stream_get, ADM, RL_ADMIN) \
    X("POST", "/v1/admin/streams/{id}/end", "admin_stream_end", OPS, h_admin_stream_end, ADM, RL_ADMIN) \
    X("GET", "/v1/admin/policies", "admin_policies_list", ROLE_ANY, h_policies_list, ADM, RL_ADMIN) \
    X("POST", "/v1/admin/policies", "admin_policies_add", OPS, h_policies_add, ADM, RL_ADMIN) \
    X("DELETE", "/v1/admin/policies/{name}", "admin_policies_remove", OPS, h_policies_remove, ADM, RL_ADMIN) \
    X("GET", "/v1/admin/master", "admin_master", ROLE_ANY, h_admin_master, ADM, RL_ADMIN) \
    X("POST", "/v1/admin/master/rotate", "admin_master_rotate", ROLE_ADMIN, h_admin_master_rotate, ADM, RL_ADMIN) \
    X("GET", "/v1/admin/master/instances", "admin_master_instances", ROLE_ANY, h_admin_master_instances, ADM, RL_ADMIN) \
    X("GET", "/v1/admin/audit", "admin_audit_list", ROLE_ANY, h_audit_list, ADM, RL_ADMIN) \
    X("POST", "/v1/admin/audit/verify", "admin_audit_verify", ROLE_ADMIN | ROLE_AUDITOR, h_audit_verify, ADM, RL_ADMIN) \
    X("GET", "/v1/admin/audit/verify/{request_id}", "admin_audit_verify_progress", ROLE_ADMIN | ROLE_AUDITOR, h_audit_verify_progress, ADM, RL_ADMIN) \
    X("GET", "/v1/admin/audit/export", "admin_audit_export", ROLE_ADMIN | ROLE_AUDITOR, h_audit_export, ADM, RL_ADMIN) \
    X("GET", "/v1/admin/entropy", "admin_entropy", ROLE_ANY, h_admin_entropy, ADM, RL_ADMIN) \
    X("POST", "/v1/admin/entropy/sources/{name}/enable", "admin_entropy_enable", ROLE_ADMIN, h_admin_entropy_enable, ADM, RL_ADMIN) \
    X("GET", "/v1/admin/firmware/keys", "admin_firmware_keys", ROLE_ANY | ROLE_RELEASE, h_firmware_keys_list, ADM, RL_ADMIN) \
    X("POST", "/v1/admin/firmware/keys", "admin_firmware_keys_create", ROLE_ADMIN, h_firmware_keys_create, ADM, RL_ADMIN) \
    X("POST", "/v1/admin/firmware/keys/{product}/rotate", "admin_firmware_keys_rotate", ROLE_ADMIN, h_firmware_keys_rotate, ADM, RL_ADMIN) \
    X("POST", "/v1/admin/firmware/keys/{product}/versions/{version}/revoke", "admin_firmware_keys_revoke", ROLE_ADMIN, h_firmware_keys_revoke, ADM, RL_ADMIN) \
    X("GET", "/v1/admin/signing-keys", "admin_signing_keys", ROLE_ANY, h_data_keys_list, ADM, RL_ADMIN) \
    X("POST", "/v1/admin/signing-keys", "admin_signing_keys_create", ROLE_ADMIN, h_data_keys_create, ADM, RL_ADMIN) \
    X("POST", "/v1/admin/signing-keys/{name}/rotate", "admin_signing_keys_rotate", ROLE_ADMIN, h_data_keys_rotate, ADM, RL_ADMIN) \
    X("POST", "/v1/admin/signing-keys/{name}/versions/{version}/revoke", "admin_signing_keys_revoke", ROLE_ADMIN, h_data_keys_revoke, ADM, RL_ADMIN) \
    X("POST", "/v1/admin/firmware/packages", "admin_firmware_sign", ROLE_RELEASE, h_firmware_sign, ADM, RL_ADMIN, .octets = true) \
    X("POST", "/v1/admin/firmware/packages/verify", "admin_firmware_verify", ROLE_ANY | ROLE_RELEASE, h_firmware_verify, ADM, RL_ADMIN, .octets = true, .max_body = FIRMWARE_PACKAGE_ROOM) \
    X("GET", "/v1/admin/firmware/products", "admin_firmware_products", ROLE_ANY | ROLE_RELEASE, h_firmware_rules_list, ADM, RL_ADMIN) \
    X("POST", "/v1/admin/firmware/products/{product}/rule", "admin_firmware_product_rule", ROLE_ADMIN, h_firmware_rule_set, ADM, RL_ADMIN) \
    X("GET", "/v1/admin/firmware/approvals", "admin_firmware_approvals", ROLE_ANY | ROLE_RELEASE, h_firmware_approvals_list, ADM, RL_ADMIN) \
    X("POST", "/v1/admin/firmware/approvals", "admin_firmware_approval_request", ROLE_RELEASE, h_firmware_approval_request, ADM, RL_ADMIN) \
    X("POST", "/v1/admin/firmware/approvals/{id}/approve", "admin_firmware_approval_approve", ROLE_RELEASE, h_firmware_approval_approve, ADM, RL_ADMIN) \
    X("GET", "/v1/admin/firmware/groups", "admin_firmware_groups", ROLE_ANY | ROLE_RELEASE, h_firmware_groups_list, ADM, RL_ADMIN) \
    X("POST", "/v1/admin/firmware/groups", "admin_firmware_groups_create", ROLE_ADMIN, h_firmware_groups_create, ADM, RL_ADMIN) \
    X("POST", "/v1/admin/firmware/groups/{group}/rotate", "admin_firmware_groups_rotate", ROLE_ADMIN, h_firmware_groups_rotate, ADM, RL_ADMIN) \
    X("DELETE", "/v1/admin/firmware/groups/{group}/keys/{key_id}", "admin_firmware_groups_destroy", ROLE_ADMIN, h_firmware_groups_destroy, ADM, RL_ADMIN) \
    X("GET", "/v1/random", "random", ROLE_CRYPTO | ROLE_ADMIN, h_crypto_random, ADM, RL_ADMIN) \
    X("POST", "/v1/crypto/sessions/{session}/encrypt", "crypto_session_encrypt", ROLE_CRYPTO, h_crypto_encrypt, ADM, RL_ADMIN, .max_body = CRYPTO_MAX_BODY) \
    X("POST", "/v1/crypto/sessions/{session}/decrypt", "crypto_session_decrypt", ROLE_CRYPTO, h_crypto_decrypt, ADM, RL_ADMIN, .max_body = CRYPTO_MAX_BODY) \
    X("POST", "/v1/crypto/devices/{id}/encrypt", "crypto_device_encrypt", ROLE_CRYPTO, h_crypto_device_encrypt, ADM, RL_ADMIN, .max_body = CRYPTO_MAX_BODY) \
    X("POST", "/v1/crypto/devices/{id}/decrypt", "crypto_device_decrypt", ROLE_CRYPTO, h_crypto_device_decrypt, ADM, RL_ADMIN, .max_body = CRYPTO_MAX_BODY) \
    X("POST", "/v1/crypto/sign", "crypto_sign", ROLE_CRYPTO, h_crypto_sign, ADM, RL_ADMIN, .max_body = CRYPTO_MAX_BODY) \
    X("POST", "/v1/crypto/verify", "crypto_verify", ROLE_CRYPTO, h_crypto_verify, ADM, RL_ADMIN, .max_body = CRYPTO_MAX_BODY)

#define ROW(m, p, n, r, f, d, rl, ...) \
    {.method = m, .pattern = p, .name = n, .roles = r, .fn = f, .door = d, .rl_scope = rl, __VA_ARGS__},
#define NAME(m, p, n, r, f, ...) n,
const http_route routes[] = {ROUTES(ROW)};
const char *const route_names[] = {ROUTES(NAME)};
const int routes_count = (int)(sizeof(routes) / sizeof(routes[0]));

int routes_print_json(FILE *f)
{
    static const unsigned bits[] = {ROLE_ADMIN, ROLE_OPERATOR, ROLE_AUDITOR, ROLE_APP,
                                    ROLE_CRYPTO, ROLE_RELEASE};
    json_t *arr = json_array();
    int rc;
    for (int i = 0; arr && i < routes_count; i++) {
        const http_route *rt = &routes[i];
        json_t *roles = json_array();
        for (size_t b = 0; roles && b < sizeof(bits) / sizeof(bits[0]); b++)
            if (rt->roles & bits[b])
                json_array_append_new(roles, json_string(auth_role_name(bits[b])));
        static const char *const scopes[] = {"device", "client", "admin"};
        json_t *doors = json_array();
        if (doors && (rt->door & DOOR_DEVICE))
            json_array_append_new(doors, json_string("device"));
        if (doors && (rt->door & DOOR_ADMIN))
            json_array_append_new(doors, json_string("admin"));
        if (doors && (rt->door & DOOR_METRICS))
            json_array_append_new(doors, json_string("metrics"));
        if (json_array_append_new(
                arr, json_pack("{s:s,s:s,s:s,s:o*,s:I,s:b,s:b,s:o*,s:s?}", "method", rt->method,
                               "path", rt->pattern, "name", rt->name, "roles", roles, "max_body",
                               (json_int_t)rt->max_body, "probe", rt->probe, "client_cert",
                               rt->client_cert, "listeners", doors,
                               "rate_limit",
                               rt->rl_scope >= 0 && rt->rl_scope < RL_NSCOPES
                                   ? scopes[rt->rl_scope]
                                   : NULL)) != 0) {
            json_decref(arr);
            arr = NULL;
        }
    }
    rc = arr && json_dumpf(arr, f, JSON_INDENT(1)) == 0 && fputc('\n', f) != EOF ? 0 : -1;
    json_decref(arr);
    return rc;
}

