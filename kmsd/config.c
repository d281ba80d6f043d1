/* config — option table, file/env parsing and validation. */
#include "config.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stddef.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "hexutil.h"
#include "manroff.h"

#define OFF(f) offsetof(kms_config, f)

const config_option config_options[] = {
    {"listen_addr", OPT_STR, OFF(listen_addr), "127.0.0.1", 0, 0, NULL, false, false,
     "IPv4 or IPv6 address of the device listener (device protocol, `/healthz`, `/readyz`). "
     "Without an admin listener (`admin_listen_addr`, `admin_listen_unix`) it serves the "
     "admin API and `/metrics` too."},
    {"listen_port", OPT_INT, OFF(listen_port), "8470", 1, 65535, NULL, false, false,
     "TCP port of the device listener."},
    {"http_threading", OPT_STR, OFF(http_threading), "connection", 0, 0, "connection|pool", false,
     false,
     "`connection`: a thread per connection, so a slow database or token call never stalls "
     "another client; `pool`: `http_threads` event-loop threads (see docs/architecture.md)."},
    {"http_threads", OPT_INT, OFF(http_threads), "4", 1, 256, NULL, false, false,
     "Threads of the `pool` model."},
    {"http_max_body", OPT_INT, OFF(http_max_body), "65536", 256, 16777216, NULL, false, false,
     "Largest accepted request body in bytes; larger ones get 413."},
    {"http_max_upload_mb", OPT_INT, OFF(http_max_upload_mb), "256", 1, 4096, NULL, false, false,
     "Largest raw upload in MiB (a firmware image to sign, `POST /v1/admin/firmware/packages`); "
     "larger ones get 413. kmsd holds an upload in memory once, and answers it as it goes; "
     "uploads held at once take at most twice this in all (plus 2 MiB while a package is "
     "checked, `POST /v1/admin/firmware/packages/verify`, whose packages may be 2 MiB over it; "
     "503 `unavailable`, `Retry-After`, beyond)."},
    {"http_max_connections", OPT_INT, OFF(http_max_connections), "1024", 1, 65535, NULL, false,
     false, "Concurrent connections accepted in total, per listener."},
    {"http_per_ip_connections", OPT_INT, OFF(http_per_ip_connections), "256", 0, 65535, NULL,
     false, false, "Concurrent connections per client address, per TCP listener "
     "(0 = unlimited)."},
    {"http_timeout", OPT_INT, OFF(http_timeout), "30", 1, 3600, NULL, false, false,
     "Seconds an idle connection is kept."},
    {"tls_cert_file", OPT_STR, OFF(tls_cert_file), NULL, 0, 0, NULL, false, false,
     "PEM certificate chain; with `tls_key_file`, the device listener (and a shared one) "
     "speaks HTTPS only."},
    {"tls_key_file", OPT_STR, OFF(tls_key_file), NULL, 0, 0, NULL, false, false,
     "PEM private key for `tls_cert_file`."},
    {"tls_server_names", OPT_STR, OFF(tls_server_names), NULL, 0, 0, NULL, false, false,
     "Comma-separated DNS names and IP addresses of the device listener. Set, with "
     "`tls_cert_file` and `tls_key_file`, kmsd makes its own server certificate from the "
     "platform CA at start when those files are missing, name other names, are not the "
     "platform CA's, or have less than a third of their lifetime left (a new P-256 key, 365 "
     "days; docs/pki.md, \"kmsd's server certificate\"). Renewed at a start only."},
    {"tls_client_auth", OPT_STR, OFF(tls_client_auth), "none", 0, 0, "none|optional|require",
     false, false,
     "Client certificates on the device routes of the TLS device listener (docs/pki.md, "
     "\"Mutual TLS\"): `none` asks for none; `optional` verifies one when the client sends it "
     "(401 if it does not verify) and then binds the request to its device; `require` also "
     "refuses a device request without one (401 `client_certificate_required`). The probes "
     "never need one. Needs `tls_cert_file`."},
    {"tls_client_ca_file", OPT_STR, OFF(tls_client_ca_file), NULL, 0, 0, NULL, false, false,
     "PEM bundle of the CAs that issued bound certificates (`kmsctl device cert bind`): a "
     "bound certificate authenticates only if it chains to one of these or to the platform "
     "CA. Read at start."},
    {"tls_client_crl_file", OPT_STR, OFF(tls_client_crl_file), NULL, 0, 0, NULL, false, false,
     "PEM file of CRLs of the `tls_client_ca_file` CAs: a certificate that chains to one of "
     "them is checked against its issuer's CRL, and refused while the CRL is missing or out "
     "of date. Read again when the file changes (checked at most every 10 s). The platform "
     "CA's own certificates are checked against the database instead, at every request."},
    {"admin_listen_addr", OPT_STR, OFF(admin_listen_addr), NULL, 0, 0, NULL, false, false,
     "IPv4 or IPv6 address of a separate admin listener: the admin API, `/metrics` and the "
     "probes. The device listener then no longer serves the admin API, nor this one the "
     "device protocol (404 `not_found`). Unset, with `admin_listen_unix` unset too: one "
     "listener serves everything."},
    {"admin_listen_port", OPT_INT, OFF(admin_listen_port), "8471", 1, 65535, NULL, false, false,
     "TCP port of the admin listener (with `admin_listen_addr`)."},
    {"admin_listen_unix", OPT_STR, OFF(admin_listen_unix), NULL, 0, 0, NULL, false, false,
     "Absolute path of a unix socket for the admin listener instead of TCP (mode 0660: kmsd's "
     "user and group; kmsctl: `KMS_ADDR=unix:PATH`). A socket left by a stopped kmsd is "
     "replaced; any other file there is refused. At most 91 bytes (the socket is made "
     "under a temporary name beside it, then renamed). Not with `admin_listen_addr`."},
    {"admin_tls_cert_file", OPT_STR, OFF(admin_tls_cert_file), NULL, 0, 0, NULL, false, false,
     "PEM certificate chain of the admin listener; with `admin_tls_key_file`, it speaks HTTPS "
     "only. Independent of `tls_cert_file`."},
    {"admin_tls_key_file", OPT_STR, OFF(admin_tls_key_file), NULL, 0, 0, NULL, false, false,
     "PEM private key for `admin_tls_cert_file`."},
    {"admin_tls_client_auth", OPT_STR, OFF(admin_tls_client_auth), "none", 0, 0,
     "none|optional|require", false, false,
     "Client certificates on the admin API (docs/pki.md, \"Admin principals\"): a TLS client "
     "whose certificate verifies and is bound to a live admin token (`kmsctl token cert bind`) "
     "is that token, without a bearer token. `optional`: a request without one is "
     "authenticated by its bearer token; `require`: refused (401 "
     "`client_certificate_required`). A bearer token sent as well must be the same token. "
     "Needs TLS on the listener serving the admin API (`admin_tls_cert_file`, or "
     "`tls_cert_file` when one listener serves everything)."},
    {"metrics_listen_addr", OPT_STR, OFF(metrics_listen_addr), NULL, 0, 0, NULL, false, false,
     "IPv4 or IPv6 address of a listener serving `/metrics`, `/healthz` and `/readyz` and "
     "nothing else (404 `not_found`), in plain HTTP and without a token, for a Prometheus "
     "on a network that must not reach the admin API or the device protocol (the compose "
     "stack's backend network). Unset: no such listener; `/metrics` is on the admin "
     "listener (or the one listener)."},
    {"metrics_listen_port", OPT_INT, OFF(metrics_listen_port), "8472", 1, 65535, NULL, false,
     false, "TCP port of the metrics listener (with `metrics_listen_addr`)."},
    {"shutdown_grace", OPT_INT, OFF(shutdown_grace), "10", 0, 600, NULL, false, false,
     "Seconds SIGTERM/SIGINT waits for in-flight requests before closing."},
    {"readiness_interval_ms", OPT_INT, OFF(readiness_interval_ms), "1000", 100, 60000, NULL,
     false, false, "How often the readiness prober checks the database (a one-row durable write), "
     "the token and entropy; `/readyz` answers from its last results."},
    {"readiness_timeout_ms", OPT_INT, OFF(readiness_timeout_ms), "1000", 100, 60000, NULL,
     false, false, "A readiness check whose probe has been running longer than this reports "
     "`timeout` in `/readyz` instead of its last result (a dependency that stopped answering, "
     "or a database host name the resolver does not answer for, is not ready)."},
    {"readiness_write_failure_s", OPT_INT, OFF(readiness_write_failure_s), "10", 0, 3600, NULL,
     false, false, "Seconds `/readyz` reports the database not ready after a statement failed "
     "for want of resources (SQLSTATE classes 53, 58: disk full, I/O error), even if the small "
     "write probe succeeds (0 = only the probe decides)."},
    {"db_conninfo", OPT_STR, OFF(db_conninfo), NULL, 0, 0, NULL, false, false,
     "libpq connection string (required), e.g. `host=/run/qkms dbname=qkms user=qkms`. Put a "
     "password in a `passfile=`, not here. kmsd looks `host=` names up itself, within half the "
     "connect deadline, and hands libpq the addresses (`hostaddr=`); while the resolver does not "
     "answer, the addresses the name last had are used (a `hostaddr=` of your own turns this "
     "off)."},
    {"db_pool_size", OPT_INT, OFF(db_pool_size), "8", 1, 512, NULL, false, false,
     "PostgreSQL connections kept open."},
    {"db_acquire_timeout_ms", OPT_INT, OFF(db_acquire_timeout_ms), "2000", 1, 60000, NULL, false,
     false, "How long a request waits for a pooled connection (a key request: for a "
     "group-commit batch to take it) before answering 503."},
    {"db_group_commit_max", OPT_INT, OFF(db_group_commit_max), "32", 1, 256, NULL, false, false,
     "Group commit of key requests: at most this many requests that wait for each other run as "
     "one statement and one durable commit (1 = each request commits alone). A request that "
     "finds no batch waiting runs at once; docs/performance.md."},
    {"db_group_commit_inflight", OPT_INT, OFF(db_group_commit_inflight), "2", 1, 64, NULL, false,
     false, "How many group-commit batches may run at once; requests that find them all running "
     "wait and join the next one."},
    {"db_statement_timeout_ms", OPT_INT, OFF(db_statement_timeout_ms), "5000", 0, 600000, NULL,
     false, false, "PostgreSQL statement_timeout for kmsd's sessions (0 = none). Set by kmsd "
     "after connecting, so `options` in `db_conninfo` cannot override it."},
    {"db_io_timeout_ms", OPT_INT, OFF(db_io_timeout_ms), "10000", 100, 600000, NULL, false, false,
     "Longest wait for PostgreSQL to answer a connect or one statement; then the connection is "
     "dropped and the request answers 503 (a stopped or vanished server). A connect also ends at "
     "`db_conninfo`'s `connect_timeout` (3 s when not set), whichever is sooner; with several "
     "hosts, each gets that budget in turn (docs/ha.md). Also sets TCP "
     "keepalives and `tcp_user_timeout`. Keep it above `db_statement_timeout_ms` "
     "(docs/operations.md)."},
    {"db_reconnect_max_ms", OPT_INT, OFF(db_reconnect_max_ms), "5000", 250, 60000, NULL, false,
     false,
     "Longest wait between connects while PostgreSQL cannot be reached (the wait starts at "
     "250 ms and doubles); requests meanwhile answer 503 at once. Lower it where a failed-over "
     "primary must be found again within a second or two (docs/ha.md)."},
    {"db_migrate", OPT_BOOL, OFF(db_migrate), "true", 0, 0, NULL, false, false,
     "Apply pending schema migrations at start (under an advisory lock)."},
    {"pkcs11_module", OPT_STR, OFF(pkcs11_module), "/usr/lib/softhsm/libsofthsm2.so", 0, 0, NULL,
     false, false, "Path of the PKCS#11 module to load."},
    {"pkcs11_token_label", OPT_STR, OFF(pkcs11_token_label), "qkms", 0, 0, NULL, false, false,
     "Label of the token holding the master key."},
    {"pkcs11_pin", OPT_STR, OFF(pkcs11_pin), NULL, 0, 0, NULL, true, false,
     "User PIN. Prefer `pkcs11_pin_file` or the `QKMS_PKCS11_PIN` environment variable."},
    {"pkcs11_pin_file", OPT_STR, OFF(pkcs11_pin_file), NULL, 0, 0, NULL, false, false,
     "File holding the user PIN (trailing newline ignored); should be mode 0600."},
    {"pkcs11_sessions", OPT_INT, OFF(pkcs11_sessions), "8", 1, 256, NULL, false, false,
     "PKCS#11 sessions kept open in the pool."},
    {"master_key_label", OPT_STR, OFF(master_key_label), "qkms-master", 0, 0, NULL, false, false,
     "Label prefix of master keys in the token; version N is `<prefix>-N`."},
    {"master_key_create", OPT_BOOL, OFF(master_key_create), "true", 0, 0, NULL, false, false,
     "Create master key version 1 in the token when the database has none yet. Set false when "
     "the key is provisioned by an HSM ceremony."},
    {"master_key_wrap_limit", OPT_INT, OFF(master_key_wrap_limit), "2000000000", 1, 2147483647,
     NULL, false, false,
     "Random-IV AES-GCM invocations (key wraps, audit checkpoint MACs) under one master key "
     "version after which kmsd rotates it automatically; SP 800-38D allows 2^32. Counted in "
     "`master_keys.wrap_count` (docs/operations.md, \"Master key wrap budget\")."},
    {"entropy_sources", OPT_STR, OFF(entropy_sources), "pkcs11,os", 0, 0, NULL, false, false,
     "Entropy sources, comma-separated: the first is the primary (normally the quantum RNG), "
     "the others are fallbacks in order. Kinds: `http` (a QRNG appliance or service), `device` "
     "(a character device or FIFO, e.g. /dev/qrandom0), `exec` (a program writing random bytes "
     "to stdout), `pkcs11` (the token's C_GenerateRandom), `os` (getrandom). See docs/entropy.md."},
    {"entropy_policy", OPT_STR, OFF(entropy_policy), "fallback", 0, 0, "require|fallback", false,
     false,
     "When the primary source is down or quarantined: `require` fails key generation (503, "
     "/readyz names entropy); `fallback` goes on from the fallback sources, alerting in the log "
     "and metrics and recording the provenance."},
    {"entropy_mode", OPT_STR, OFF(entropy_mode), "drbg", 0, 0, "drbg|direct", false, false,
     "`drbg`: keys come from an AES-256 CTR-DRBG (SP 800-90A) seeded and reseeded with "
     "health-tested primary output; `direct`: keys are conditioned primary output only "
     "(SHA-256 over more input entropy than output), so throughput follows the feed."},
    {"entropy_min_entropy", OPT_DOUBLE, OFF(entropy_min_entropy), "7", 1, 8, NULL, false, false,
     "Claimed min-entropy per byte of a source's raw output (H); sets the health-test cutoffs "
     "and how much raw input direct mode conditions per output byte."},
    {"entropy_health_alpha_log2", OPT_INT, OFF(entropy_health_alpha_log2), "30", 20, 40, NULL,
     false, false, "Health-test false-positive probability is 2^-N per test (SP 800-90B 4.4)."},
    {"entropy_reseed_bytes", OPT_INT, OFF(entropy_reseed_bytes), "1048576", 1024, 1073741824,
     NULL, false, false, "DRBG output bytes between reseeds from the primary source."},
    {"entropy_reseed_interval", OPT_INT, OFF(entropy_reseed_interval), "60", 1, 86400, NULL,
     false, false, "Seconds between DRBG reseeds from the primary source."},
    {"entropy_prediction_resistance", OPT_BOOL, OFF(entropy_prediction_resistance), "false", 0,
     0, NULL, false, false, "Reseed the DRBG with fresh primary entropy before every request."},
    {"entropy_pool_low", OPT_INT, OFF(entropy_pool_low), "4096", 64, 16777216, NULL, false,
     false, "The refill thread tops the pool of health-tested primary bytes up when it falls "
     "below this many bytes..."},
    {"entropy_pool_high", OPT_INT, OFF(entropy_pool_high), "65536", 128, 16777216, NULL, false,
     false, "...to this many bytes (kept in locked memory)."},
    {"entropy_wait_ms", OPT_INT, OFF(entropy_wait_ms), "200", 0, 60000, NULL, false, false,
     "How long a request may wait for the pool when it is empty before the policy applies."},
    {"entropy_probe_interval", OPT_INT, OFF(entropy_probe_interval), "10", 1, 3600, NULL, false,
     false, "Seconds between reads of the primary even while the pool is full, so its health "
     "is always current."},
    {"entropy_failure_limit", OPT_INT, OFF(entropy_failure_limit), "10", 1, 100000, NULL, false,
     false, "Consecutive failures after which a quarantined source is disabled until "
     "re-enabled (`kmsctl entropy enable`)."},
    {"entropy_retry_max", OPT_INT, OFF(entropy_retry_max), "30", 1, 3600, NULL, false, false,
     "Longest back-off, in seconds, between retries of a quarantined source."},
    {"entropy_http_url", OPT_STR, OFF(entropy_http_url), NULL, 0, 0, NULL, false, false,
     "`http` source: URL returning random bytes; `{bytes}` in it is replaced by the count asked "
     "for."},
    {"entropy_http_method", OPT_STR, OFF(entropy_http_method), "GET", 0, 0, "GET|POST", false,
     false, "`http` source: request method (POST sends {\"bytes\": N})."},
    {"entropy_http_format", OPT_STR, OFF(entropy_http_format), "raw", 0, 0, "raw|hex|base64",
     false, false, "`http` source: body encoding (or of the JSON string at the JSON path)."},
    {"entropy_http_json_path", OPT_STR, OFF(entropy_http_json_path), NULL, 0, 0, NULL, false,
     false, "`http` source: dotted path of the data in a JSON body, e.g. `result.random.data`."},
    {"entropy_http_timeout_ms", OPT_INT, OFF(entropy_http_timeout_ms), "2000", 10, 120000, NULL,
     false, false, "`http` source: whole-request timeout."},
    {"entropy_http_request_bytes", OPT_INT, OFF(entropy_http_request_bytes), "4096", 64, 1048576,
     NULL, false, false, "`http` source: bytes asked for per request."},
    {"entropy_http_bearer_file", OPT_STR, OFF(entropy_http_bearer_file), NULL, 0, 0, NULL, false,
     false, "`http` source: file holding a bearer token for the QRNG service."},
    {"entropy_http_cacert", OPT_STR, OFF(entropy_http_cacert), NULL, 0, 0, NULL, false, false,
     "`http` source: CA bundle for https (TLS is always verified)."},
    {"entropy_device_path", OPT_STR, OFF(entropy_device_path), NULL, 0, 0, NULL, false, false,
     "`device` source: path of the character device or FIFO."},
    {"entropy_exec_command", OPT_STR, OFF(entropy_exec_command), NULL, 0, 0, NULL, false, false,
     "`exec` source: program and arguments (space-separated, no shell) writing random bytes to "
     "stdout; restarted with back-off when it exits."},
    {"device_default_keys", OPT_INT, OFF(device_default_keys), "4", 1, 16, NULL, false, false,
     "Device keys generated at registration when the request does not say."},
    {"device_key_validity_days", OPT_INT, OFF(device_key_validity_days), "365", 1, 3650, NULL,
     false, false, "Validity of a new device key when the request does not say (seed 004: a year)."},
    {"device_key_warn_days", OPT_INT, OFF(device_key_warn_days), "15", 1, 365, NULL, false, false,
     "Keys expiring within this many days are warned about (log once a day per device, metric)."},
    {"service_warn_days", OPT_INT, OFF(service_warn_days), "15", 1, 365, NULL, false, false,
     "Devices whose service ends within this many days are warned about (log once a day per"
     " device, metric qkms_devices_service_ending)."},
    {"gateway_login_max_failures", OPT_INT, OFF(gateway_login_max_failures), "5", 1, 100, NULL,
     false, false,
     "Wrong gateway passwords in a row that lock the gateway's account (docs/gateways.md)."},
    {"gateway_login_lockout", OPT_INT, OFF(gateway_login_lockout), "900", 1, 86400, NULL, false,
     false, "Seconds a gateway's account stays locked after gateway_login_max_failures."},
    {"gateway_password_scrypt_log2n", OPT_INT, OFF(gateway_password_scrypt_log2n), "17", 10, 20,
     NULL, false, false,
     "scrypt cost of new gateway passwords: N = 2^this (r 8, p 1; 17 uses 128 MiB and about"
     " 0.3 s per check). Stored with each hash: a change applies to passwords set after it."},
    {"gateway_login_concurrency", OPT_INT, OFF(gateway_login_concurrency), "4", 1, 64, NULL,
     false, false,
     "Gateway password checks (scrypt) running at once; a login over it is answered 503 with"
     " Retry-After, before its nonce is used (memory: this many times 128 x 2^log2n x 8 bytes)."},
    {"app_self_registration", OPT_BOOL, OFF(app_self_registration), "false", 0, 0, NULL, false,
     false,
     "Whether anyone may create an app (an owner's account, without an enroller scope) with POST"
     " /v1/app/register; off, operators create them (kmsctl app create)."},
    {"webhook_urls", OPT_STR, OFF(webhook_urls), NULL, 0, 0, NULL, true, false,
     "Comma-separated http:// or https:// URLs (at most 8) every event is POSTed to, signed"
     " with HMAC-SHA-256 (docs/gateways.md, \"Events\"); empty: no push."},
    {"webhook_secret_file", OPT_STR, OFF(webhook_secret_file), NULL, 0, 0, NULL, false, false,
     "File holding the webhooks' HMAC secret (32 to 4096 bytes; mode 0600 or 0400, checked by"
     " --check-config); required with webhook_urls."},
    {"webhook_max_attempts", OPT_INT, OFF(webhook_max_attempts), "100", 1, 100000, NULL, false,
     false, "A delivery that failed this many times is given up (kmsctl events list shows it"
     " as failed) until a replay; retries come after 1, 2, 4 ... 300 seconds."},
    {"webhook_ca_file", OPT_STR, OFF(webhook_ca_file), NULL, 0, 0, NULL, false, false,
     "PEM file of the CA certificates https:// webhooks are verified against; unset: the"
     " system's store."},
    {"event_retention_days", OPT_INT, OFF(event_retention_days), "30", 1, 3650, NULL, false,
     false, "Events are kept this many days (for GET /v1/app/events and replays), then purged."},
    {"device_key_grace_days", OPT_INT, OFF(device_key_grace_days), "30", 0, 365, NULL, false, false,
     "After `device rotate`, older keys stay usable this many days, then retire."},
    {"instance_name", OPT_STR, OFF(instance_name), NULL, 0, 0, NULL, false, false,
     "This instance's name in the registry of instances sharing the database (`kmsctl master "
     "instances`), which a staged master key version waits for (docs/ha.md): 1 to 128 of "
     "A-Z a-z 0-9 . _ : / @ -, starting with a letter or digit, unique among the instances. "
     "Unset: the host name and the process ID (`host/1234`)."},
    {"maintenance_interval", OPT_INT, OFF(maintenance_interval), "30", 1, 3600, NULL, false, false,
     "Seconds between maintenance passes (key retirement, expiry warnings)."},
    {"protocol_clock_skew", OPT_INT, OFF(protocol_clock_skew), "300", 5, 3600, NULL, false, false,
     "Device requests must carry a timestamp within this many seconds (inclusive) of the "
     "database's clock; each nonce is remembered until its timestamp plus this (replay window)."},
    {"session_tombstone_days", OPT_INT, OFF(session_tombstone_days), "90", 0, 36500, NULL, false,
     false, "Days an ended session's tombstone (hashed ID, parties, reason) is kept; its session ID "
     "is refused meanwhile. 0 keeps tombstones forever."},
    {"session_reap_interval", OPT_INT, OFF(session_reap_interval), "1", 1, 60, NULL, false, false,
     "Seconds between passes that destroy sessions past their idle timeout or lifetime (and "
     "adopt a master key version another instance rotated to)."},
    {"ca_crl_interval", OPT_INT, OFF(ca_crl_interval), "3600", 60, 604800, NULL, false, false,
     "Seconds between the platform CA's CRLs when nothing is revoked (a revocation makes one at "
     "once); each CRL's nextUpdate is twice this after its thisUpdate (docs/pki.md)."},
    {"certificate_warn_days", OPT_INT, OFF(certificate_warn_days), "30", 1, 365, NULL, false,
     false, "Days before a device certificate's notAfter from which kmsd warns (a log line at "
     "most once a day per certificate, and `qkms_certificates_expiring`)."},
    {"qkd_kme_id", OPT_STR, OFF(qkd_kme_id), "qkms", 0, 0, NULL, false, false,
     "This KME's ID in ETSI GS QKD 014 answers (`source_KME_ID`, `target_KME_ID` of Get "
     "status: master and slave SAEs share this KME, docs/etsi014.md)."},
    {"platform_key_overlap_days", OPT_INT, OFF(platform_key_overlap_days), "30", 1, 365, NULL,
     false, false, "Days a retired version of the platform's protocol v2 keys keeps answering "
     "devices that still pin it, after a rotation (docs/protocol.md, \"The platform's keys\"); "
     "then its private keys are destroyed in the token."},
    {"device_key_cache_size", OPT_INT, OFF(device_key_cache_size), "65536", 0, 16777216, NULL,
     false, false,
     "Slots of the cache of wrapped device key rows on the request path (0 disables). Never "
     "holds plaintext; state is re-checked in each request's transaction."},
    {"device_key_cache_ttl", OPT_INT, OFF(device_key_cache_ttl), "30", 1, 3600, NULL, false, false,
     "Seconds a cached device key row is used before it is read again."},
    {"device_key_cache_unwrapped", OPT_INT, OFF(device_key_cache_unwrapped), "16384", 0, 65536,
     NULL, false, false,
     "Slots of device keys kept unwrapped in kmsd's locked secure heap, so a device request "
     "skips the token unwrap of its key (0 disables; off when the secure heap cannot be "
     "locked). An entry serves only the wrapped key it came from, is wiped when this kmsd "
     "changes the device, and lives at most device_key_cache_ttl seconds."},
    {"bootstrap_token_file", OPT_STR, OFF(bootstrap_token_file), NULL, 0, 0, NULL, false, false,
     "If set and no admin token named `bootstrap` ever existed (revoked ones count), kmsd "
     "creates one and writes it here (mode 0600, never overwritten), or registers the token "
     "this file holds. kmsd refuses to start if the file exists and is not a regular file of "
     "mode 0600 owned by its user."},
    {"rate_limit_device", OPT_DOUBLE, OFF(rate_limit_device), "20", 0, 1000000, NULL, false, true,
     "Device API requests per second per device, counted once the request has authenticated "
     "(0 = unlimited); over it: 429 `rate_limited` with `Retry-After` (on the ETSI GS QKD 014 "
     "door, 503 `rate_limited` in the standard's Error object, docs/etsi014.md). See "
     "docs/operations.md."},
    {"rate_limit_device_burst", OPT_INT, OFF(rate_limit_device_burst), "40", 1, 1000000, NULL,
     false, true, "Requests a device may make at once before `rate_limit_device` applies."},
    {"rate_limit_client", OPT_DOUBLE, OFF(rate_limit_client), "500", 0, 1000000, NULL, false,
     true, "Device API requests per second per client address, authenticated or not "
     "(0 = unlimited)."},
    {"rate_limit_client_burst", OPT_INT, OFF(rate_limit_client_burst), "1000", 1, 1000000, NULL,
     false, true, "Requests a client address may make at once before `rate_limit_client` "
     "applies."},
    {"rate_limit_admin", OPT_DOUBLE, OFF(rate_limit_admin), "50", 0, 1000000, NULL, false, true,
     "Admin API requests per second per admin token (by name), counted once the token is "
     "known (0 = unlimited)."},
    {"rate_limit_admin_burst", OPT_INT, OFF(rate_limit_admin_burst), "100", 1, 1000000, NULL,
     false, true, "Requests an admin token may make at once before `rate_limit_admin` applies."},
    {"rate_limit_buckets", OPT_INT, OFF(rate_limit_buckets), "16384", 64, 16777216, NULL, false,
     false, "Buckets kept per scope (device, client, admin; 32 bytes each). Buckets that have "
     "refilled are reused first, so this bounds keys limited at the same moment, not keys seen."},
    {"log_level", OPT_STR, OFF(log_level), "info", 0, 0, "debug|info|warn|error", false, true,
     "Least severe level written to the JSON log on stderr."},
};
const size_t config_options_count = sizeof(config_options) / sizeof(config_options[0]);

static const config_option *find_opt(const char *name, size_t len)
{
    for (size_t i = 0; i < config_options_count; i++)
        if (strlen(config_options[i].name) == len && strncmp(config_options[i].name, name, len) == 0)
            return &config_options[i];
    return NULL;
}

static void fmt(char *buf, size_t len, const char *f, ...)
{
    va_list ap;
    if (!buf || !len)
        return;
    va_start(ap, f);
    vsnprintf(buf, len, f, ap);
    va_end(ap);
}

static void free_str(char **p, bool secret)
{
    if (*p && secret)
        OPENSSL_cleanse(*p, strlen(*p));
    free(*p);
    *p = NULL;
}

static int set_opt(kms_config *c, const config_option *o, const char *v, char *why, size_t wl)
{
    void *field = (char *)c + o->offset;
    switch (o->type) {
    case OPT_INT: {
        char *end;
        long n;
        errno = 0;
        n = strtol(v, &end, 10);
        if (errno || end == v || *end || n < o->min || n > o->max) {
            fmt(why, wl, "expected an integer from %ld to %ld", o->min, o->max);
            return -1;
        }
        *(int *)field = (int)n;
        return 0;
    }
    case OPT_DOUBLE: {
        char *end;
        double d;
        errno = 0;
        d = strtod(v, &end);
        if (errno || end == v || *end || !(d >= (double)o->min && d <= (double)o->max)) {
            fmt(why, wl, "expected a number from %ld to %ld", o->min, o->max);
            return -1;
        }
        *(double *)field = d;
        return 0;
    }
    case OPT_BOOL:
        if (!strcmp(v, "true") || !strcmp(v, "yes") || !strcmp(v, "on") || !strcmp(v, "1"))
            *(bool *)field = true;
        else if (!strcmp(v, "false") || !strcmp(v, "no") || !strcmp(v, "off") || !strcmp(v, "0"))
            *(bool *)field = false;
        else {
            fmt(why, wl, "expected true or false");
            return -1;
        }
        return 0;
    case OPT_STR: {
        char *dup;
        if (o->choices) {
            const char *p = o->choices;
            size_t vl = strlen(v);
            bool ok = false;
            while (*p && !ok) {
                const char *bar = strchr(p, '|');
                size_t l = bar ? (size_t)(bar - p) : strlen(p);
                ok = l == vl && !strncmp(p, v, l);
                p += l + (bar ? 1 : 0);
            }
            if (!ok) {
                fmt(why, wl, "expected one of %s", o->choices);
                return -1;
            }
        }
        if (strlen(v) > 4096) {
            fmt(why, wl, "value longer than 4096 bytes");
            return -1;
        }
        dup = strdup(v);
        if (!dup) {
            fmt(why, wl, "out of memory");
            return -1;
        }
        free_str((char **)field, o->secret);
        *(char **)field = *dup ? dup : (free(dup), NULL);
        return 0;
    }
    }
    return -1;
}

int config_set(kms_config *c, const char *key, const char *value, char *why, size_t wl)
{
    const config_option *o = find_opt(key, strlen(key));
    if (!o) {
        fmt(why, wl, "unknown option '%s'", key);
        return -1;
    }
    return set_opt(c, o, value, why, wl);
}

void config_defaults(kms_config *c)
{
    memset(c, 0, sizeof(*c));
    for (size_t i = 0; i < config_options_count; i++)
        if (config_options[i].def)
            set_opt(c, &config_options[i], config_options[i].def, NULL, 0);
}

int config_parse_text(kms_config *c, const char *text, const char *src, char *err, size_t el)
{
    bool seen[sizeof(config_options) / sizeof(config_options[0])] = {0};
    const char *p = text;
    int line = 0;

    /* buf may hold a secret (a pkcs11_pin line): every way out wipes it. */
    char buf[4200];
    int rc = -1;

    while (*p) {
        const char *eol = strchr(p, '\n');
        size_t len = eol ? (size_t)(eol - p) : strlen(p);
        char why[160];
        char *k, *v, *eq, *end;
        const config_option *o;

        line++;
        if (len >= sizeof(buf)) {
            fmt(err, el, "%s:%d: line too long", src, line);
            goto out;
        }
        memcpy(buf, p, len);
        buf[len] = 0;
        p += len + (eol ? 1 : 0);

        for (k = buf; isspace((unsigned char)*k); k++)
            ;
        if (*k == 0 || *k == '#' || *k == ';')
            continue;
        eq = strchr(k, '=');
        if (!eq) {
            fmt(err, el, "%s:%d: expected 'key = value'", src, line);
            goto out;
        }
        for (end = eq; end > k && isspace((unsigned char)end[-1]); end--)
            ;
        *end = 0;
        for (v = eq + 1; isspace((unsigned char)*v); v++)
            ;
        if (*v == '"') {
            char *q = strrchr(v + 1, '"');
            char *rest;
            if (!q) {
                fmt(err, el, "%s:%d: unterminated quote", src, line);
                goto out;
            }
            for (rest = q + 1; isspace((unsigned char)*rest); rest++)
                ;
            if (*rest && *rest != '#') {
                fmt(err, el, "%s:%d: text after closing quote", src, line);
                goto out;
            }
            *q = 0;
            v++;
        } else {
            char *hash = strchr(v, '#');
            if (hash)
                *hash = 0;
            for (end = v + strlen(v); end > v && isspace((unsigned char)end[-1]); end--)
                ;
            *end = 0;
        }
        for (char *s = k; *s; s++)
            if (!(islower((unsigned char)*s) || isdigit((unsigned char)*s) || *s == '_')) {
                fmt(err, el, "%s:%d: invalid option name", src, line);
                goto out;
            }
        o = find_opt(k, strlen(k));
        if (!o) {
            fmt(err, el, "%s:%d: unknown option '%s'", src, line, k);
            goto out;
        }
        if (seen[o - config_options]) {
            fmt(err, el, "%s:%d: option '%s' set twice", src, line, k);
            goto out;
        }
        seen[o - config_options] = true;
        if (set_opt(c, o, v, why, sizeof(why)) != 0) {
            fmt(err, el, "%s:%d: option '%s': %s", src, line, k, why);
            goto out;
        }
        OPENSSL_cleanse(buf, sizeof(buf));
    }
    rc = 0;
out:
    OPENSSL_cleanse(buf, sizeof(buf));
    return rc;
}

static char *read_file(const char *path, size_t max, size_t *len, int *err)
{
    FILE *f = fopen(path, "rb");
    char *buf = NULL;
    size_t n;
    if (!f) {
        *err = errno;
        return NULL;
    }
    buf = malloc(max + 1);
    if (!buf) {
        *err = ENOMEM;
        fclose(f);
        return NULL;
    }
    /* Unbuffered: the file may hold a PIN, and stdio's buffer would go back
     * to the heap unwiped at fclose. */
    setvbuf(f, NULL, _IONBF, 0);
    n = fread(buf, 1, max + 1, f);
    fclose(f);
    if (n > max) {
        *err = EFBIG;
        OPENSSL_cleanse(buf, max + 1);
        free(buf);
        return NULL;
    }
    buf[n] = 0;
    *len = n;
    return buf;
}

int config_load_file(kms_config *c, const char *path, char *err, size_t el)
{
    size_t len;
    int e = 0, rc;
    char *text = read_file(path, 1 << 20, &len, &e);
    if (!text) {
        fmt(err, el, "%s: cannot read: %s", path, strerror(e));
        return -1;
    }
    if (strlen(text) != len) {
        fmt(err, el, "%s: contains a NUL byte", path);
        OPENSSL_cleanse(text, len);
        free(text);
        return -1;
    }
    rc = config_parse_text(c, text, path, err, el);
    OPENSSL_cleanse(text, len);
    free(text);
    return rc;
}

/* Options whose environment variable may carry a credential: the PIN, a
 * libpq string with password=, a QRNG URL or command line with an API key.
 * They are read once and then wiped and removed from the environment, so
 * that no child process and no /proc/<pid>/environ reader sees them. */
static bool env_is_secret(const config_option *o)
{
    static const char *const names[] = {"db_conninfo", "entropy_http_url", "webhook_urls",
                                        "entropy_exec_command"};
    if (o->secret)
        return true;
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        if (!strcmp(o->name, names[i]))
            return true;
    return false;
}

/* Overwrite the value where it lives (the process's initial environment
 * block, which /proc/<pid>/environ shows even after unsetenv), then drop
 * the variable. */
static void env_scrub(const char *var, char *value)
{
    OPENSSL_cleanse(value, strlen(value));
    unsetenv(var);
}

int config_apply_env(kms_config *c, char *err, size_t el)
{
    for (size_t i = 0; i < config_options_count; i++) {
        char var[96], why[160];
        char *v;
        size_t j;
        int rc;
        strcpy(var, "QKMS_");
        for (j = 0; config_options[i].name[j] && j < sizeof(var) - 6; j++)
            var[5 + j] = (char)toupper((unsigned char)config_options[i].name[j]);
        var[5 + j] = 0;
        v = getenv(var);
        if (!v)
            continue;
        rc = set_opt(c, &config_options[i], v, why, sizeof(why));
        if (env_is_secret(&config_options[i]))
            env_scrub(var, v);
        if (rc != 0) {
            fmt(err, el, "environment %s: %s", var, why);
            return -1;
        }
    }
    return 0;
}

bool config_admin_apart(const kms_config *c)
{
    return c->admin_listen_addr != NULL || c->admin_listen_unix != NULL;
}

/* An address literal, as the listeners bind it (no name lookup: a
 * listener on a name would move with DNS). */
static bool ip_literal(const char *a)
{
    unsigned char buf[sizeof(struct in6_addr)];
    return a && (inet_pton(AF_INET, a, buf) == 1 || inet_pton(AF_INET6, a, buf) == 1);
}

/* Two TCP listeners that would want the same socket: the same port on the
 * same address, or on a wildcard (0.0.0.0, ::) that covers the other.
 * Addresses are compared parsed, so ::1 and 0:0:0:0:0:0:0:1 are one. */
static bool listeners_clash(const char *a, int pa, const char *b, int pb)
{
    unsigned char x[sizeof(struct in6_addr)], y[sizeof(struct in6_addr)];
    static const unsigned char zero[sizeof(struct in6_addr)];
    int fa, fb;

    if (!a || !b || pa != pb)
        return false;
    fa = inet_pton(AF_INET, a, x) == 1 ? AF_INET : inet_pton(AF_INET6, a, x) == 1 ? AF_INET6 : 0;
    fb = inet_pton(AF_INET, b, y) == 1 ? AF_INET : inet_pton(AF_INET6, b, y) == 1 ? AF_INET6 : 0;
    if (!fa || !fb)
        return false; /* refused as not an address before this is asked */
    if (!memcmp(x, zero, fa == AF_INET ? 4 : 16) || !memcmp(y, zero, fb == AF_INET ? 4 : 16))
        return true; /* a wildcard (:: may take IPv4 too) */
    return fa == fb && !memcmp(x, y, fa == AF_INET ? 4 : 16);
}

/* The admin and metrics listeners' options make sense together
 * (docs/configuration.md). */
static int check_admin_listener(const kms_config *c, char *err, size_t el)
{
    static const struct {
        const char *name;
        size_t off;
    } addrs[] = {{"listen_addr", offsetof(kms_config, listen_addr)},
                 {"admin_listen_addr", offsetof(kms_config, admin_listen_addr)},
                 {"metrics_listen_addr", offsetof(kms_config, metrics_listen_addr)}};
    for (size_t i = 0; i < sizeof(addrs) / sizeof(addrs[0]); i++) {
        const char *a = *(char *const *)((const char *)c + addrs[i].off);
        if (a && !ip_literal(a)) {
            fmt(err, el, "%s '%s' is not an IPv4 or IPv6 address", addrs[i].name, a);
            return -1;
        }
    }
    if (c->admin_listen_addr && c->admin_listen_unix) {
        fmt(err, el, "admin_listen_addr and admin_listen_unix exclude each other");
        return -1;
    }
    if (!!c->admin_tls_cert_file != !!c->admin_tls_key_file) {
        fmt(err, el, "admin_tls_cert_file and admin_tls_key_file go together");
        return -1;
    }
    if (c->admin_tls_cert_file && !config_admin_apart(c)) {
        fmt(err, el, "admin_tls_cert_file needs an admin listener (admin_listen_addr or "
                     "admin_listen_unix)");
        return -1;
    }
    if (listeners_clash(c->admin_listen_addr, c->admin_listen_port, c->listen_addr,
                        c->listen_port)) {
        fmt(err, el, "the admin listener needs its own port (admin_listen_port is listen_port)");
        return -1;
    }
    if (listeners_clash(c->metrics_listen_addr, c->metrics_listen_port, c->listen_addr,
                        c->listen_port) ||
        listeners_clash(c->metrics_listen_addr, c->metrics_listen_port, c->admin_listen_addr,
                        c->admin_listen_port)) {
        fmt(err, el, "the metrics listener needs its own port (metrics_listen_port is "
                     "another listener's)");
        return -1;
    }
    if (c->admin_listen_unix &&
        (c->admin_listen_unix[0] != '/' || strlen(c->admin_listen_unix) > CONFIG_UNIX_PATH_MAX)) {
        fmt(err, el, "admin_listen_unix must be an absolute path of at most %d bytes",
            CONFIG_UNIX_PATH_MAX);
        return -1;
    }
    return 0;
}

/* schema/040's kmsd_instances.name check, before the database says no. */
static bool instance_name_ok(const char *n)
{
    size_t len = strlen(n);
    if (len < 1 || len > 128 || !isalnum((unsigned char)n[0]))
        return false;
    for (size_t i = 0; i < len; i++)
        if (!isalnum((unsigned char)n[i]) && !strchr("._:/@-", n[i]))
            return false;
    return true;
}

/* A client-certificate mode other than none. */
static bool mode_on(const char *m) { return m && strcmp(m, "none") != 0; }

int config_check(const kms_config *c, char *err, size_t el)
{
    if (!c->pkcs11_module || !c->pkcs11_token_label || !c->master_key_label ||
        !c->entropy_sources || !c->listen_addr) {
        fmt(err, el, "pkcs11_module, pkcs11_token_label, master_key_label, entropy_sources and "
                     "listen_addr must not be empty");
        return -1;
    }
    if (c->entropy_pool_low >= c->entropy_pool_high) {
        fmt(err, el, "entropy_pool_low must be below entropy_pool_high");
        return -1;
    }
    if (!!c->tls_cert_file != !!c->tls_key_file) {
        fmt(err, el, "tls_cert_file and tls_key_file go together");
        return -1;
    }
    if (c->tls_server_names && !c->tls_cert_file) {
        fmt(err, el, "tls_server_names needs tls_cert_file and tls_key_file (where the "
                     "certificate and its key are written)");
        return -1;
    }
    if (c->tls_client_auth && strcmp(c->tls_client_auth, "none") && !c->tls_cert_file) {
        fmt(err, el, "tls_client_auth %s needs a TLS device listener (tls_cert_file)",
            c->tls_client_auth);
        return -1;
    }
    if (mode_on(c->admin_tls_client_auth) &&
        !(config_admin_apart(c) ? c->admin_tls_cert_file : c->tls_cert_file)) {
        fmt(err, el, "admin_tls_client_auth %s needs TLS on the admin API's listener (%s)",
            c->admin_tls_client_auth,
            config_admin_apart(c) ? "admin_tls_cert_file" : "tls_cert_file");
        return -1;
    }
    if ((c->tls_client_ca_file || c->tls_client_crl_file) && !mode_on(c->tls_client_auth) &&
        !mode_on(c->admin_tls_client_auth)) {
        fmt(err, el, "tls_client_ca_file and tls_client_crl_file need tls_client_auth or "
                     "admin_tls_client_auth optional or require");
        return -1;
    }
    if (c->tls_client_crl_file && !c->tls_client_ca_file) {
        fmt(err, el, "tls_client_crl_file needs tls_client_ca_file (the CRLs of its CAs)");
        return -1;
    }
    if (c->instance_name && !instance_name_ok(c->instance_name)) {
        fmt(err, el, "instance_name must be 1 to 128 of A-Z a-z 0-9 . _ : / @ -, starting with a "
                     "letter or digit");
        return -1;
    }
    if (check_admin_listener(c, err, el) != 0)
        return -1;
    if (c->webhook_urls && *c->webhook_urls) {
        char list[8 * 512 + 8], *seen[8];
        int n = 0;
        if (!c->webhook_secret_file) {
            fmt(err, el, "webhook_urls needs webhook_secret_file (the HMAC secret)");
            return -1;
        }
        if (strlen(c->webhook_urls) >= sizeof(list)) {
            fmt(err, el, "webhook_urls: at most 8 URLs of at most 511 bytes");
            return -1;
        }
        snprintf(list, sizeof(list), "%s", c->webhook_urls);
        for (char *save = NULL, *u = strtok_r(list, ",", &save); u; u = strtok_r(NULL, ",", &save)) {
            const char *host = !strncmp(u, "http://", 7) ? u + 7 : !strncmp(u, "https://", 8) ? u + 8 : NULL;
            size_t hl = host ? strcspn(host, "/?#") : 0;
            bool dup = false;
            for (int i = 0; i < n; i++)
                dup = dup || !strcmp(seen[i], u);
            /* No userinfo: scheme://host[:port] is shown in logs and listings. */
            if (!host || hl == 0 || memchr(host, '@', hl) || strlen(u) >= 512 ||
                strpbrk(u, " \t\r\n") || n >= 8 || dup) {
                OPENSSL_cleanse(list, sizeof(list)); /* URLs may hold credentials */
                fmt(err, el, "webhook_urls: at most 8 distinct http:// or https:// URLs with a"
                             " host and no user:password@, comma-separated, without spaces");
                return -1;
            }
            seen[n++] = u;
        }
        OPENSSL_cleanse(list, sizeof(list));
    }
    for (const char *s = c->master_key_label; *s; s++)
        if (!isalnum((unsigned char)*s) && *s != '-' && *s != '_' && *s != '.') {
            fmt(err, el, "master_key_label: only letters, digits, '-', '_' and '.'");
            return -1;
        }
    return 0;
}

int config_finish(kms_config *c, char *err, size_t el)
{
    if (!c->db_conninfo) {
        fmt(err, el, "db_conninfo is required");
        return -1;
    }
    if (config_check(c, err, el) != 0)
        return -1;
    if (c->pkcs11_pin_file && !c->pkcs11_pin) {
        size_t len;
        int e = 0;
        char *pin = read_file(c->pkcs11_pin_file, 256, &len, &e);
        if (!pin) {
            fmt(err, el, "pkcs11_pin_file %s: cannot read: %s", c->pkcs11_pin_file, strerror(e));
            return -1;
        }
        while (len > 0 && (pin[len - 1] == '\n' || pin[len - 1] == '\r'))
            pin[--len] = 0;
        c->pkcs11_pin = pin;
    }
    if (!c->pkcs11_pin || !*c->pkcs11_pin) {
        fmt(err, el, "no PKCS#11 PIN: set pkcs11_pin_file (or QKMS_PKCS11_PIN)");
        return -1;
    }
    return 0;
}

void config_forget_pin(kms_config *c)
{
    free_str(&c->pkcs11_pin, true);
}

void config_hash(const kms_config *c, char out[65])
{
    uint8_t md[32];
    unsigned int mdlen = 0;
    EVP_MD_CTX *x = EVP_MD_CTX_new();
    EVP_DigestInit_ex(x, EVP_sha256(), NULL);
    for (size_t i = 0; i < config_options_count; i++) {
        const config_option *o = &config_options[i];
        const void *field = (const char *)c + o->offset;
        char val[64];
        const char *v = val;
        if (o->secret)
            continue;
        if (o->type == OPT_INT)
            snprintf(val, sizeof(val), "%d", *(const int *)field);
        else if (o->type == OPT_DOUBLE)
            snprintf(val, sizeof(val), "%g", *(const double *)field);
        else if (o->type == OPT_BOOL)
            v = *(const bool *)field ? "true" : "false";
        else
            v = *(char *const *)field ? *(char *const *)field : "";
        EVP_DigestUpdate(x, o->name, strlen(o->name) + 1);
        EVP_DigestUpdate(x, v, strlen(v) + 1);
    }
    EVP_DigestFinal_ex(x, md, &mdlen);
    EVP_MD_CTX_free(x);
    qkms_hex_encode(md, 32, out);
}

void config_free(kms_config *c)
{
    for (size_t i = 0; i < config_options_count; i++)
        if (config_options[i].type == OPT_STR)
            free_str((char **)((char *)c + config_options[i].offset), config_options[i].secret);
}

/* An option's range ("1–65535" with sep "–") or choices
 * ("none/optional/require"), or "". */
static void option_range(const config_option *o, const char *sep, char *range, size_t n)
{
    range[0] = 0;
    if (o->type == OPT_INT || o->type == OPT_DOUBLE)
        snprintf(range, n, "%ld%s%ld", o->min, sep, o->max);
    else if (o->choices)
        snprintf(range, n, "%s", o->choices);
    for (char *s = range; *s; s++)
        if (*s == '|')
            *s = '/';
}

static const char *option_type(const config_option *o)
{
    return o->type == OPT_INT ? "integer" : o->type == OPT_BOOL ? "boolean"
           : o->type == OPT_DOUBLE ? "number" : "string";
}

void config_print_doc(FILE *f)
{
    fprintf(f, "| option | type | default | range | reload | meaning |\n"
               "|---|---|---|---|---|---|\n");
    for (size_t i = 0; i < config_options_count; i++) {
        const config_option *o = &config_options[i];
        char range[64];
        option_range(o, "–", range, sizeof(range));
        fprintf(f, "| `%s` | %s | %s | %s | %s | %s |\n", o->name, option_type(o),
                o->def ? o->def : "(unset)", range, o->reloadable ? "SIGHUP" : "restart", o->doc);
    }
}

void config_print_man(FILE *f)
{
    for (size_t i = 0; i < config_options_count; i++) {
        const config_option *o = &config_options[i];
        char range[64], tag[192];
        option_range(o, "..", range, sizeof(range)); /* ASCII: any man locale */
        snprintf(tag, sizeof(tag), "%s (%s; default %s%s%s; %s)", o->name, option_type(o),
                 o->def ? o->def : "unset", *range ? "; " : "", range,
                 o->reloadable ? "SIGHUP" : "restart");
        man_item(f, tag, o->doc);
    }
}
