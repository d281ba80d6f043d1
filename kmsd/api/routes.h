/*
 * routes — the table of every HTTP route kmsd serves, and the handlers'
 * declarations. Adding an endpoint means one row here and one handler.
 */
#ifndef QKMS_ROUTES_H
#define QKMS_ROUTES_H

#include <stdio.h>

#include "api/server.h"

extern const http_route routes[];
extern const int routes_count;
/* Route names in table order, for metrics labels. */
extern const char *const route_names[];
/* The table as a JSON array on f (`kmsd --print-routes`): method, path,
 * name, roles (names; [] = no bearer token), max_body (0 = http_max_body)
 * and probe, per route in table order. 0, or -1 when it could not be written. */
int routes_print_json(FILE *f);

/* health.c */
void h_healthz(http_request *rq, http_response *rs);
void h_readyz(http_request *rq, http_response *rs);
void h_metrics(http_request *rq, http_response *rs);
void h_admin_entropy(http_request *rq, http_response *rs);
void h_admin_entropy_enable(http_request *rq, http_response *rs);
/* admin_firmware.c */
void h_firmware_keys_list(http_request *rq, http_response *rs);
void h_firmware_keys_create(http_request *rq, http_response *rs);
void h_firmware_keys_rotate(http_request *rq, http_response *rs);
void h_firmware_sign(http_request *rq, http_response *rs);
void h_firmware_verify(http_request *rq, http_response *rs);
void h_firmware_rules_list(http_request *rq, http_response *rs);
void h_firmware_rule_set(http_request *rq, http_response *rs);
void h_firmware_approvals_list(http_request *rq, http_response *rs);
void h_firmware_approval_request(http_request *rq, http_response *rs);
void h_firmware_approval_approve(http_request *rq, http_response *rs);
void h_data_keys_list(http_request *rq, http_response *rs);
void h_data_keys_create(http_request *rq, http_response *rs);
void h_data_keys_rotate(http_request *rq, http_response *rs);
void h_firmware_keys_revoke(http_request *rq, http_response *rs);
void h_data_keys_revoke(http_request *rq, http_response *rs);
void h_crypto_sign(http_request *rq, http_response *rs);
void h_crypto_verify(http_request *rq, http_response *rs);
void h_firmware_groups_list(http_request *rq, http_response *rs);
void h_firmware_groups_create(http_request *rq, http_response *rs);
void h_firmware_groups_rotate(http_request *rq, http_response *rs);
void h_firmware_groups_destroy(http_request *rq, http_response *rs);
/* crypto_door.c */
void h_crypto_random(http_request *rq, http_response *rs);
void h_crypto_encrypt(http_request *rq, http_response *rs);
void h_crypto_decrypt(http_request *rq, http_response *rs);
void h_crypto_device_encrypt(http_request *rq, http_response *rs);
void h_crypto_device_decrypt(http_request *rq, http_response *rs);
/* admin_status.c */
void h_admin_status(http_request *rq, http_response *rs);
/* admin_tokens.c */
void h_tokens_create(http_request *rq, http_response *rs);
void h_tokens_list(http_request *rq, http_response *rs);
void h_tokens_revoke(http_request *rq, http_response *rs);
void h_admin_ca_rotate(http_request *rq, http_response *rs);
void h_admin_ca_csr(http_request *rq, http_response *rs);
void h_admin_ca_import(http_request *rq, http_response *rs);
void h_token_certs_bind(http_request *rq, http_response *rs);
void h_token_certs_list(http_request *rq, http_response *rs);
void h_token_certs_unbind(http_request *rq, http_response *rs);

/* admin_devices.c */
void h_devices_create(http_request *rq, http_response *rs);
void h_devices_import(http_request *rq, http_response *rs);
void h_devices_list(http_request *rq, http_response *rs);
void h_device_get(http_request *rq, http_response *rs);
void h_device_keys(http_request *rq, http_response *rs);
void h_device_suspend(http_request *rq, http_response *rs);
void h_device_resume(http_request *rq, http_response *rs);
void h_device_revoke(http_request *rq, http_response *rs);
void h_device_rotate(http_request *rq, http_response *rs);
void h_device_fill(http_request *rq, http_response *rs);
void h_device_sae(http_request *rq, http_response *rs);
void h_device_attributes(http_request *rq, http_response *rs);
void h_device_service(http_request *rq, http_response *rs);
void h_device_credential(http_request *rq, http_response *rs);
void h_gateway_login(http_request *rq, http_response *rs);
void h_gateway_logout(http_request *rq, http_response *rs);
void h_gateway_reset(http_request *rq, http_response *rs);
void h_app_register(http_request *rq, http_response *rs);
void h_app_devices_create(http_request *rq, http_response *rs);
void h_app_devices_list(http_request *rq, http_response *rs);
void h_app_device_get(http_request *rq, http_response *rs);
void h_app_device_rotate(http_request *rq, http_response *rs);
void h_app_bind_challenge(http_request *rq, http_response *rs);
void h_app_bind(http_request *rq, http_response *rs);
void h_apps_create(http_request *rq, http_response *rs);
void h_apps_list(http_request *rq, http_response *rs);
void h_apps_revoke(http_request *rq, http_response *rs);
void h_apps_token(http_request *rq, http_response *rs);
void h_device_verification_code(http_request *rq, http_response *rs);
void h_app_events(http_request *rq, http_response *rs);
void h_events_list(http_request *rq, http_response *rs);
void h_events_replay(http_request *rq, http_response *rs);
void h_webhook_remove(http_request *rq, http_response *rs);
void h_devtypes_list(http_request *rq, http_response *rs);
void h_devtypes_add(http_request *rq, http_response *rs);

/* admin_master.c */
void h_admin_master(http_request *rq, http_response *rs);
void h_admin_master_rotate(http_request *rq, http_response *rs);
void h_admin_master_instances(http_request *rq, http_response *rs);

/* admin_audit.c */
void h_audit_list(http_request *rq, http_response *rs);
void h_audit_verify(http_request *rq, http_response *rs);
void h_audit_verify_progress(http_request *rq, http_response *rs);
void h_audit_export(http_request *rq, http_response *rs);

/* device_v1.c: the device protocol v1 */
void h_session_key(http_request *rq, http_response *rs);
void h_session_end(http_request *rq, http_response *rs);
void h_stream_key(http_request *rq, http_response *rs);
void h_stream_end(http_request *rq, http_response *rs);

/* device_v2.c: the device protocol v2, and the platform's certificates */
void h_session_key_v2(http_request *rq, http_response *rs);
void h_session_end_v2(http_request *rq, http_response *rs);
void h_platform_certs(http_request *rq, http_response *rs);
void h_admin_platform_rotate(http_request *rq, http_response *rs);

/* etsi014.c: ETSI GS QKD 014 (docs/etsi014.md) */
void h_etsi_status(http_request *rq, http_response *rs);
void h_etsi_enc_get(http_request *rq, http_response *rs);
void h_etsi_enc_post(http_request *rq, http_response *rs);
void h_etsi_dec_get(http_request *rq, http_response *rs);
void h_etsi_dec_post(http_request *rq, http_response *rs);

/* admin_qkd.c */
void h_admin_qkd(http_request *rq, http_response *rs);
void h_admin_qkd_keys(http_request *rq, http_response *rs);

/* admin_streams.c */
void h_admin_streams_list(http_request *rq, http_response *rs);
void h_admin_stream_get(http_request *rq, http_response *rs);
void h_admin_stream_end(http_request *rq, http_response *rs);
/* admin_sessions.c */
void h_admin_sessions_list(http_request *rq, http_response *rs);
void h_admin_session_get(http_request *rq, http_response *rs);
void h_admin_session_end(http_request *rq, http_response *rs);

/* admin_policies.c */
void h_policies_list(http_request *rq, http_response *rs);
void h_policies_add(http_request *rq, http_response *rs);
void h_policies_remove(http_request *rq, http_response *rs);

/* admin_certs.c */
void h_ca_chain(http_request *rq, http_response *rs);
void h_admin_ca(http_request *rq, http_response *rs);
void h_device_certs_list(http_request *rq, http_response *rs);
void h_device_cert_issue(http_request *rq, http_response *rs);
void h_device_cert_get(http_request *rq, http_response *rs);
void h_device_cert_revoke(http_request *rq, http_response *rs);
void h_ca_crl(http_request *rq, http_response *rs);

#endif
