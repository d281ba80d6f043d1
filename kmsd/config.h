/*
 * config — kmsd's settings: one table of options with types, bounds,
 * defaults and descriptions (the same table prints docs/configuration.md).
 *
 * Contract:
 *  - config_defaults() fills every option with its default.
 *  - config_parse_text() reads "key = value" lines ('#' comments, optional
 *    double quotes); an unknown key, a repeated key or a bad value is an error
 *    naming the source and line ("kmsd.conf:12: ...").
 *  - config_apply_env() applies QKMS_<KEY> overrides (upper case), with
 *    errors naming the variable. Variables that may hold a credential
 *    (QKMS_PKCS11_PIN, QKMS_DB_CONNINFO, QKMS_ENTROPY_HTTP_URL,
 *    QKMS_ENTROPY_EXEC_COMMAND) are wiped in place and unset once read: call
 *    it before any thread starts (setenv/unsetenv are not thread-safe).
 *  - config_finish() reads secret files (pkcs11_pin_file) and checks
 *    cross-option rules (TLS files in pairs, the admin listener's options). Secret values never appear in error messages.
 *  - config_check() is config_finish() without the secrets and without
 *    db_conninfo: for a SIGHUP reload, which changes neither (the scrubbed
 *    variables are gone by then).
 *  - config_forget_pin() wipes and frees the PIN once the token has it.
 *  - config_hash() is a SHA-256 over the effective non-secret settings.
 *  - config_free() zeroizes secrets.
 */
#ifndef QKMS_CONFIG_H
#define QKMS_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

typedef struct kms_config {
    /* http */
    char *listen_addr;
    int listen_port;
    char *http_threading; /* "connection" or "pool" */
    int http_threads;
    int http_max_body;
    int http_max_upload_mb; /* .octets routes (firmware images) */
    int http_max_connections;
    int http_per_ip_connections;
    int http_timeout;
    char *tls_cert_file;
    char *tls_key_file;
    char *tls_server_names;   /* kmsd issues its own certificate for these */
    char *tls_client_auth;    /* "none", "optional" or "require" (device routes) */
    char *tls_client_ca_file; /* issuers of bound client certificates, or NULL */
    char *tls_client_crl_file; /* their CRLs (PEM), or NULL */
    char *admin_listen_addr; /* NULL with admin_listen_unix NULL: one listener */
    int admin_listen_port;
    char *admin_listen_unix;
    char *admin_tls_cert_file;
    char *admin_tls_key_file;
    char *admin_tls_client_auth; /* "none", "optional" or "require" (admin routes) */
    char *metrics_listen_addr; /* NULL: no metrics listener */
    int metrics_listen_port;
    int shutdown_grace;
    int readiness_interval_ms;
    int readiness_timeout_ms;
    int db_group_commit_max;
    int db_group_commit_inflight;
    int readiness_write_failure_s;
    /* database */
    char *db_conninfo;
    int db_pool_size;
    int db_acquire_timeout_ms;
    int db_statement_timeout_ms;
    int db_io_timeout_ms;
    int db_reconnect_max_ms;
    bool db_migrate;
    /* token */
    char *pkcs11_module;
    char *pkcs11_token_label;
    char *pkcs11_pin;
    char *pkcs11_pin_file;
    int pkcs11_sessions;
    char *master_key_label;
    bool master_key_create;
    int master_key_wrap_limit;
    /* entropy */
    char *entropy_sources;
    char *entropy_policy;
    char *entropy_mode;
    double entropy_min_entropy;
    int entropy_health_alpha_log2;
    int entropy_reseed_bytes;
    int entropy_reseed_interval;
    bool entropy_prediction_resistance;
    int entropy_pool_low;
    int entropy_pool_high;
    int entropy_wait_ms;
    int entropy_probe_interval;
    int entropy_failure_limit;
    int entropy_retry_max;
    char *entropy_http_url;
    char *entropy_http_method;
    char *entropy_http_format;
    char *entropy_http_json_path;
    int entropy_http_timeout_ms;
    int entropy_http_request_bytes;
    char *entropy_http_bearer_file;
    char *entropy_http_cacert;
    char *entropy_device_path;
    char *entropy_exec_command;
    /* devices */
    int device_default_keys;
    int device_key_validity_days;
    int device_key_warn_days;
    int service_warn_days;
    int gateway_login_max_failures;
    int gateway_login_lockout;
    int gateway_password_scrypt_log2n;
    int gateway_login_concurrency;
    bool app_self_registration;
    char *webhook_urls;
    char *webhook_secret_file;
    int event_retention_days;
    int webhook_max_attempts;
    char *webhook_ca_file;
    int device_key_grace_days;
    int maintenance_interval;
    char *instance_name; /* the instance registry (service/instances.h); NULL: host/pid */
    /* sessions */
    int protocol_clock_skew;
    int session_tombstone_days;
    int session_reap_interval;
    int device_key_cache_size;
    int device_key_cache_ttl;
    int device_key_cache_unwrapped;
    /* the platform CA (docs/pki.md) */
    int ca_crl_interval;
    int certificate_warn_days;
    int platform_key_overlap_days; /* protocol v2 (docs/protocol.md) */
    char *qkd_kme_id;              /* ETSI GS QKD 014 (docs/etsi014.md) */
    /* admin */
    char *bootstrap_token_file;
    /* rate limits (kmsd/ratelimit.h) */
    double rate_limit_device;
    int rate_limit_device_burst;
    double rate_limit_client;
    int rate_limit_client_burst;
    double rate_limit_admin;
    int rate_limit_admin_burst;
    int rate_limit_buckets;
    /* logging */
    char *log_level;
} kms_config;

typedef enum { OPT_STR, OPT_INT, OPT_BOOL, OPT_DOUBLE } opt_type;

typedef struct {
    const char *name;
    opt_type type;
    size_t offset;
    const char *def;     /* default as text; NULL = unset */
    long min, max;       /* OPT_INT bounds */
    const char *choices; /* OPT_STR: '|'-separated allowed values, or NULL */
    bool secret;
    bool reloadable;     /* takes effect on SIGHUP */
    const char *doc;
} config_option;

extern const config_option config_options[];
extern const size_t config_options_count;

void config_defaults(kms_config *c);
int config_parse_text(kms_config *c, const char *text, const char *source, char *err, size_t errlen);
int config_load_file(kms_config *c, const char *path, char *err, size_t errlen);
int config_apply_env(kms_config *c, char *err, size_t errlen);
int config_finish(kms_config *c, char *err, size_t errlen);
int config_check(const kms_config *c, char *err, size_t errlen);
void config_forget_pin(kms_config *c);
/* Whether an admin listener is configured apart from the device listener
 * (admin_listen_addr or admin_listen_unix). */
bool config_admin_apart(const kms_config *c);
/* Longest admin_listen_unix: struct sockaddr_un's sun_path (107 bytes and
 * the NUL) less room for the temporary name the socket is made under
 * (".<pid>.tmp", api/listen.c). */
#define CONFIG_UNIX_PATH_MAX 91
/* Set one option from text (used by the parser and env); returns 0 or -1 with
 * a reason in why ("expected an integer from 1 to 65535"). */
int config_set(kms_config *c, const char *key, const char *value, char *why, size_t whylen);
void config_hash(const kms_config *c, char out_hex[65]);
void config_free(kms_config *c);
/* Markdown table of every option (docs/configuration.md). */
void config_print_doc(FILE *f);
/* The same options as man(7) tagged paragraphs (kmsd --print-man). */
void config_print_man(FILE *f);

#endif
