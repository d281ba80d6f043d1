/*
 * service — building and tearing down the key service (service.h): the
 * schema check, the statement pool, the token session pool, the master key,
 * the entropy sources and the in-memory caches. main() and the service
 * tests (tests/service/) build it the same way, through these functions.
 */
#include "service/service.h"

#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "service/ca.h"
#include "service/certkeys.h"
#include "service/qkd_metrics.h"
#include "service/platform_keys.h"
#include "service/keycache.h"
#include "service/device_seen.h"
#include "service/session_seen.h"
#include "service/master.h"
#include "service/session_metrics.h"
#include "service/session_id.h"
#include "service/trust.h"
#include "store/migrate.h"
#include "store/queries.h"

/* Start-up waits this long for PostgreSQL (compose starts both at once). */
#define DB_START_WAIT_S 60
/* A token may be briefly unreadable while another process writes it
 * (SoftHSM's file store), or still coming up (a network HSM). */
#define TOKEN_OPEN_TRIES 20
#define TOKEN_OPEN_PAUSE_MS 250

static void log_token_reinit(CK_RV rv, const char *err)
{
    if (rv == CKR_OK)
        log_emit(LOG_WARN, "token module re-initialized after a failure", "{s:s}", "ckr", "CKR_OK");
    else
        log_emit(LOG_ERROR, "token module re-initialization failed", "{s:s,s:s}", "ckr",
                 p11_rv_name(rv), "error", err);
}

int service_migrate(const kms_config *cfg, bool apply, int *schema_version, char *err,
                    size_t errlen)
{
    db_pool *p = NULL;
    db_conn *c = NULL;
    db_status st;
    int rc = -1;

    if (db_pool_open(&p, cfg->db_conninfo, cfg->db_pool_size, cfg->db_acquire_timeout_ms,
                     cfg->db_statement_timeout_ms, NULL, 0) != 0) {
        snprintf(err, errlen, "out of memory");
        goto out;
    }
    db_pool_set_io_timeout(p, cfg->db_io_timeout_ms);
    db_pool_set_reconnect_max(p, cfg->db_reconnect_max_ms);
    if (db_wait_ready(p, DB_START_WAIT_S, err, errlen) != 0) {
        log_emit(LOG_ERROR, "database unreachable; giving up", "{s:s}", "error", err);
        goto out;
    }
    if (!(c = db_acquire(p, &st))) {
        snprintf(err, errlen, "database unavailable");
        goto out;
    }
    if (migrate_run(db_pg(c), apply, schema_version, err, errlen) != 0) {
        log_emit(LOG_ERROR, "schema migration failed", "{s:s}", "error", err);
        goto out;
    }
    rc = 0;
out:
    if (c)
        db_release(p, c);
    db_pool_close(p);
    return rc;
}

static CK_RV open_token(qk_svc *s, const kms_config *cfg, char *pin, size_t pin_len, char *err,
                        size_t errlen)
{
    p11_opts po = {cfg->pkcs11_module, cfg->pkcs11_token_label, pin, pin_len,
                   cfg->pkcs11_sessions};
    CK_RV rv = p11_open(&s->token, &po, err, errlen);
    /* Wrong PINs and unsupported tokens are not retried. */
    for (int i = 0; i < TOKEN_OPEN_TRIES && rv != CKR_OK && p11_rv_kind(rv) != P11_KIND_AUTH &&
                    p11_rv_kind(rv) != P11_KIND_CONFIG;
         i++) {
        struct timespec ts = {0, TOKEN_OPEN_PAUSE_MS * 1000000L};
        log_emit(LOG_WARN, "token not available yet; retrying", "{s:s,s:s}", "error", err, "ckr",
                 p11_rv_name(rv));
        nanosleep(&ts, NULL);
        rv = p11_open(&s->token, &po, err, errlen);
    }
    return rv;
}

/* This instance's name in the registry of instances (instances.h). */
static void name_instance(qk_svc *s)
{
    char host[64] = "";
    if (s->cfg->instance_name) {
        snprintf(s->instance, sizeof(s->instance), "%s", s->cfg->instance_name);
    } else {
        /* A host name may hold what schema/040 refuses; those bytes become
         * '-'. The process ID tells two instances of one host apart. */
        if (gethostname(host, sizeof(host) - 1) != 0 || !host[0])
            snprintf(host, sizeof(host), "kmsd");
        for (char *p = host; *p; p++)
            if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
                  (*p >= '0' && *p <= '9') || strchr("._-", *p)))
                *p = '-';
        if (host[0] == '-' || host[0] == '.' || host[0] == '_')
            host[0] = 'h';
        snprintf(s->instance, sizeof(s->instance), "%s/%ld", host, (long)getpid());
    }
    {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        s->self.started_us = (long long)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
    }
    s->self.name = s->instance;
    /* Three maintenance steps (one each session_reap_interval) and 30 s
     * for a slow one: past it the instance counts as gone. */
    s->self.lease_s = 3 * s->cfg->session_reap_interval + 30;
}

int service_open(qk_svc *s, const kms_config *cfg, char *pin, size_t pin_len, char *err,
                 size_t errlen)
{
    master_deps md;
    CK_RV rv;
    int rc = -1;

    memset(s, 0, sizeof(*s));
    s->cfg = cfg;
    name_instance(s);
    if (db_pool_open(&s->db, cfg->db_conninfo, cfg->db_pool_size, cfg->db_acquire_timeout_ms,
                     cfg->db_statement_timeout_ms, queries, Q__COUNT) != 0) {
        snprintf(err, errlen, "out of memory");
        goto out;
    }
    db_pool_set_io_timeout(s->db, cfg->db_io_timeout_ms);
    db_pool_set_reconnect_max(s->db, cfg->db_reconnect_max_ms);
    if (cfg->db_group_commit_max > 1 &&
        db_batch_open(&s->key_batch, s->db, Q_SESSION_KEY_BATCH, Q_SESSION_KEY_BATCH_PARAMS,
                      cfg->db_group_commit_max, cfg->db_group_commit_inflight,
                      cfg->db_acquire_timeout_ms) != 0) {
        snprintf(err, errlen, "out of memory");
        goto out;
    }
    rv = open_token(s, cfg, pin, pin_len, err, errlen);
    /* The token layer keeps its own copy in the secure heap for re-login
     * after a token failure; this one is not needed again. */
    OPENSSL_secure_clear_free(pin, pin_len + 1);
    pin = NULL;
    if (rv != CKR_OK) {
        log_emit(LOG_ERROR, "token unavailable", "{s:s,s:s}", "error", err, "ckr", p11_rv_name(rv));
        goto out;
    }
    p11_set_reinit_logger(s->token, log_token_reinit);
    if (keywrap_new(&s->kw, s->token, cfg->master_key_label) != CKR_OK) {
        snprintf(err, errlen, "out of memory");
        goto out;
    }
    md = (master_deps){s->db, s->token, s->kw, cfg->master_key_create, &s->self};
    if (master_init(&md, err, errlen) != 0) {
        log_emit(LOG_ERROR, "master key check failed", "{s:s}", "error", err);
        goto out;
    }
    if (ca_open(&s->ca, s->db, s->token, err, errlen) != 0) {
        log_emit(LOG_ERROR, "platform CA check failed", "{s:s}", "error", err);
        goto out;
    }
    if (platform_keys_open(&s->pkeys, s->db, s->token, s->ca, cfg->platform_key_overlap_days, err,
                           errlen) != 0) {
        log_emit(LOG_ERROR, "platform key check failed", "{s:s}", "error", err);
        goto out;
    }
    if (trust_open(&s->trust, cfg->tls_client_ca_file, cfg->tls_client_crl_file, err, errlen) !=
        0) {
        log_emit(LOG_ERROR, "client certificate trust configuration error", "{s:s}", "error",
                 err);
        goto out;
    }
    if (entropy_open(&s->ent, cfg, s->token, err, errlen) != 0) {
        log_emit(LOG_ERROR, "entropy configuration error", "{s:s}", "error", err);
        goto out;
    }
    s->smetrics = session_metrics_new();
    s->keys = keycache_new((size_t)cfg->device_key_cache_size,
                           (size_t)cfg->device_key_cache_unwrapped, cfg->device_key_cache_ttl);
    /* 64 Ki slots (512 KiB): a hint for every session opened in the last
     * half minute at 2,000 sessions/s. */
    s->seen = session_seen_new(65536);
    /* 256 Ki slots (2 MiB): each device heard from is written once a
     * minute while fewer than about that many are active in a minute;
     * devices sharing a slot are written once per request of theirs. */
    s->contact = device_seen_open(s->db, 262144);
    s->v2cache = certkeys_new();
    s->qkdm = qkd_metrics_new();
    if (!s->smetrics || !s->keys || !s->seen || !s->contact || !s->v2cache || !s->qkdm) {
        snprintf(err, errlen, "out of memory");
        goto out;
    }
    rc = 0;
out:
    if (pin)
        OPENSSL_secure_clear_free(pin, pin_len + 1);
    return rc;
}

void service_close(qk_svc *s)
{
    device_seen_close(s->contact); /* flushes: needs the pool */
    session_metrics_free(s->smetrics);
    sessions_set_id_key(NULL, 0);
    keycache_free(s->keys);
    platform_keys_free(s->pkeys);
    certkeys_free(s->v2cache);
    qkd_metrics_free(s->qkdm);
    ca_free(s->ca);
    trust_free(s->trust);
    session_seen_free(s->seen);
    entropy_close(s->ent);
    keywrap_free(s->kw);
    p11_close(s->token);
    db_batch_close(s->key_batch);
    db_pool_close(s->db);
    memset(s, 0, sizeof(*s));
}
