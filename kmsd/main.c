/* kmsd — the qkms key-management daemon: start-up, signals, shutdown. */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "bootstrap.h"
#include "http.h"
#include "keycache.h"
#include "kms.h"
#include "log.h"
#include "maintenance.h"
#include "master.h"
#include "metrics.h"
#include "migrate.h"
#include "queries.h"
#include "ratelimit.h"
#include "readiness.h"
#include "routes.h"
#include "sessions.h"
#include "version.h"

/* Locked, non-dumpable heap for PINs and unwrapped keys (OpenSSL's secure
 * heap: mmap + mlock + MADV_DONTDUMP + guard pages). */
#define SECURE_HEAP_BYTES (1 << 20)
#define SECURE_HEAP_MIN 16

static void usage(FILE *f)
{
    fprintf(f,
            "usage: kmsd [-c FILE] [--check-config | --migrate | --print-config-doc]\n"
            "  -c, --config FILE     configuration file (default: none; QKMS_* environment)\n"
            "      --check-config    parse and validate the configuration, then exit\n"
            "      --migrate         apply schema migrations, then exit\n"
            "      --print-config-doc  print the option table (Markdown), then exit\n"
            "  -V, --version         print the version\n"
            "  -h, --help            this help\n");
}

/* No core files, no ptrace by other users, no swap of key pages. */
static void harden_process(void)
{
    struct rlimit rl = {0, 0};
    setrlimit(RLIMIT_CORE, &rl);
#if !defined(__SANITIZE_ADDRESS__)
    /* LeakSanitizer needs to ptrace the process at exit; sanitizer builds
     * keep it dumpable (RLIMIT_CORE is still 0). */
    prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
#endif
    if (CRYPTO_secure_malloc_init(SECURE_HEAP_BYTES, SECURE_HEAP_MIN) != 1)
        log_emit(LOG_WARN, "secure heap unavailable (RLIMIT_MEMLOCK?); key buffers not locked", NULL);
}

static void log_token_reinit(CK_RV rv, const char *err)
{
    if (rv == CKR_OK)
        log_emit(LOG_WARN, "token module re-initialized after a failure", "{s:s}", "ckr", "CKR_OK");
    else
        log_emit(LOG_ERROR, "token module re-initialization failed", "{s:s,s:s}", "ckr",
                 p11_rv_name(rv), "error", err);
}

/* At start (startup = 1) the secrets are read too; a reload changes no
 * secret and must not need one: the secret variables were scrubbed from the
 * environment at start, and the PIN file is not read again. */
static int load_config(kms_config *cfg, const char *path, int startup, char *err, size_t el)
{
    config_defaults(cfg);
    if (path && config_load_file(cfg, path, err, el) != 0)
        return -1;
    if (config_apply_env(cfg, err, el) != 0)
        return -1;
    return startup ? config_finish(cfg, err, el) : config_check(cfg, err, el);
}

static void reload(kms_ctx *k)
{
    kms_config fresh;
    char err[512];
    log_level lvl;
    if (load_config(&fresh, k->config_path, 0, err, sizeof(err)) != 0) {
        log_emit(LOG_ERROR, "reload failed; keeping the running configuration", "{s:s}", "error", err);
        config_free(&fresh);
        return;
    }
    if (log_level_parse(fresh.log_level, &lvl) == 0)
        log_set_level(lvl);
    ratelimit_configure_all(k->rl, &fresh);
    log_emit(LOG_INFO, "configuration reloaded", "{s:s}", "log_level", fresh.log_level);
    config_free(&fresh);
}

static int run_migrations(kms_ctx *k, int apply, char *err, size_t el)
{
    db_status st;
    db_conn *c = db_acquire(k->db, &st);
    int rc;
    if (!c) {
        snprintf(err, el, "database unavailable");
        return -1;
    }
    rc = migrate_run(db_pg(c), apply, &k->schema_version, err, el);
    db_release(k->db, c);
    return rc;
}

int main(int argc, char **argv)
{
    static const struct option lopts[] = {
        {"config", required_argument, NULL, 'c'}, {"check-config", no_argument, NULL, 'k'},
        {"migrate", no_argument, NULL, 'm'},      {"print-config-doc", no_argument, NULL, 'd'},
        {"version", no_argument, NULL, 'V'},      {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0}};
    kms_ctx k;
    char err[1024];
    int opt, check_only = 0, migrate_only = 0, rc = 1;
    sigset_t sigs;
    log_level lvl;
    db_pool *early_db = NULL;
    char *pin = NULL; /* secure heap until p11_open has taken it */
    size_t pin_len = 0;

    memset(&k, 0, sizeof(k));
    while ((opt = getopt_long(argc, argv, "c:Vh", lopts, NULL)) != -1) {
        switch (opt) {
        case 'c': k.config_path = optarg; break;
        case 'k': check_only = 1; break;
        case 'm': migrate_only = 1; break;
        case 'd': config_print_doc(stdout); return 0;
        case 'V': printf("kmsd %s\n", QKMS_VERSION); return 0;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind != argc) {
        usage(stderr);
        return 2;
    }

    harden_process();
    /* Signals are taken synchronously by the main thread; every thread
     * started after this inherits the mask. */
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);

    if (load_config(&k.cfg, k.config_path, 1, err, sizeof(err)) != 0) {
        fprintf(stderr, "kmsd: %s\n", err);
        log_emit(LOG_ERROR, "configuration error", "{s:s}", "error", err);
        config_free(&k.cfg);
        return 2;
    }
    if (check_only) {
        printf("kmsd: configuration OK\n");
        config_free(&k.cfg);
        return 0;
    }
    /* From here until the token has it, the PIN lives in the secure heap
     * only (locked, not dumped); the configuration's copy is wiped now. */
    pin_len = strlen(k.cfg.pkcs11_pin);
    pin = OPENSSL_secure_malloc(pin_len + 1);
    if (!pin) {
        log_emit(LOG_ERROR, "out of memory", NULL);
        config_free(&k.cfg);
        return 1;
    }
    memcpy(pin, k.cfg.pkcs11_pin, pin_len + 1);
    config_forget_pin(&k.cfg);
    if (log_level_parse(k.cfg.log_level, &lvl) == 0)
        log_set_level(lvl);
    config_hash(&k.cfg, k.config_hash);
    k.started_at = time(NULL);
    log_emit(LOG_INFO, "kmsd starting", "{s:s,s:s,s:i}", "version", QKMS_VERSION, "config_hash",
             k.config_hash, "pid", (int)getpid());

    if (db_pool_open(&early_db, k.cfg.db_conninfo, k.cfg.db_pool_size, k.cfg.db_acquire_timeout_ms,
                     k.cfg.db_statement_timeout_ms, NULL, 0) != 0) {
        log_emit(LOG_ERROR, "out of memory", NULL);
        goto out;
    }
    db_pool_set_io_timeout(early_db, k.cfg.db_io_timeout_ms);
    /* Start-up waits for PostgreSQL (compose starts both at once). */
    if (db_wait_ready(early_db, 60, err, sizeof(err)) != 0) {
        log_emit(LOG_ERROR, "database unreachable; giving up", "{s:s}", "error", err);
        goto out;
    }
    k.db = early_db; /* migrations run before statements can be prepared */
    if (run_migrations(&k, k.cfg.db_migrate || migrate_only, err, sizeof(err)) != 0) {
        log_emit(LOG_ERROR, "schema migration failed", "{s:s}", "error", err);
        goto out;
    }
    k.db = NULL;
    if (migrate_only) {
        log_emit(LOG_INFO, "schema up to date", "{s:i}", "version", k.schema_version);
        rc = 0;
        goto out;
    }
    if (db_pool_open(&k.db, k.cfg.db_conninfo, k.cfg.db_pool_size, k.cfg.db_acquire_timeout_ms,
                     k.cfg.db_statement_timeout_ms, queries, Q__COUNT) != 0)
        goto out;
    db_pool_set_io_timeout(k.db, k.cfg.db_io_timeout_ms);

    {
        p11_opts po = {k.cfg.pkcs11_module, k.cfg.pkcs11_token_label, pin, pin_len,
                       k.cfg.pkcs11_sessions};
        CK_RV rv = p11_open(&k.token, &po, err, sizeof(err));
        /* A token may be briefly unreadable while another process writes
         * it (SoftHSM's file store), or still coming up (a network HSM):
         * retry for a while before giving up. Wrong PINs are not retried. */
        for (int i = 0; i < 20 && rv != CKR_OK && p11_rv_kind(rv) != P11_KIND_AUTH &&
                        p11_rv_kind(rv) != P11_KIND_CONFIG;
             i++) {
            struct timespec ts = {0, 250 * 1000000L};
            log_emit(LOG_WARN, "token not available yet; retrying", "{s:s,s:s}", "error", err,
                     "ckr", p11_rv_name(rv));
            nanosleep(&ts, NULL);
            rv = p11_open(&k.token, &po, err, sizeof(err));
        }
        /* The token layer keeps its own copy in the secure heap for
         * re-login after a token failure; this one is not needed again. */
        OPENSSL_secure_clear_free(pin, pin_len + 1);
        pin = NULL;
        if (rv != CKR_OK) {
            log_emit(LOG_ERROR, "token unavailable", "{s:s,s:s}", "error", err, "ckr", p11_rv_name(rv));
            goto out;
        }
    }
    p11_set_reinit_logger(k.token, log_token_reinit);
    if (keywrap_new(&k.kw, k.token, k.cfg.master_key_label) != CKR_OK)
        goto out;
    if (master_init(&k, err, sizeof(err)) != 0) {
        log_emit(LOG_ERROR, "master key check failed", "{s:s}", "error", err);
        fprintf(stderr, "kmsd: %s\n", err);
        goto out;
    }
    if (entropy_open(&k.ent, &k.cfg, k.token, err, sizeof(err)) != 0) {
        log_emit(LOG_ERROR, "entropy configuration error", "{s:s}", "error", err);
        goto out;
    }
    if (bootstrap_admin_token(&k, err, sizeof(err)) != 0) {
        log_emit(LOG_ERROR, "bootstrap admin token failed", "{s:s}", "error", err);
        goto out;
    }
    k.smetrics = session_metrics_new();
    k.keys = keycache_new((size_t)k.cfg.device_key_cache_size, k.cfg.device_key_cache_ttl);
    if (!k.smetrics || !k.keys)
        goto out;
    if (maintenance_start(&k.maint, &k) != 0) {
        log_emit(LOG_ERROR, "cannot start the maintenance thread", NULL);
        goto out;
    }
    if (readiness_start(&k.ready, &k) != 0) {
        log_emit(LOG_ERROR, "cannot start the readiness prober", NULL);
        goto out;
    }
    k.metrics = metrics_new(routes_count, route_names);
    if (!k.metrics || ratelimit_open_all(k.rl, &k.cfg) != 0)
        goto out;
    if (http_start(&k.http, &k, routes, routes_count, err, sizeof(err)) != 0) {
        log_emit(LOG_ERROR, "http listener failed", "{s:s}", "error", err);
        goto out;
    }
    log_emit(LOG_INFO, "kmsd ready", "{s:s,s:i,s:s,s:b,s:i}", "addr", k.cfg.listen_addr, "port",
             k.cfg.listen_port, "threading", k.cfg.http_threading, "tls",
             k.cfg.tls_cert_file != NULL, "schema_version", k.schema_version);

    for (;;) {
        int sig = 0;
        if (sigwait(&sigs, &sig) != 0)
            continue;
        if (sig == SIGHUP) {
            reload(&k);
            continue;
        }
        log_emit(LOG_INFO, "shutting down", "{s:s,s:i}", "signal", sig == SIGINT ? "SIGINT" : "SIGTERM",
                 "inflight", http_inflight(k.http));
        break;
    }
    http_quiesce(k.http);
    for (int waited = 0; http_inflight(k.http) > 0 && waited < k.cfg.shutdown_grace * 10; waited++) {
        struct timespec ts = {0, 100 * 1000000L};
        nanosleep(&ts, NULL);
    }
    rc = 0;
out:
    http_stop(k.http);
    readiness_stop(k.ready);
    ratelimit_free_all(k.rl);
    maintenance_stop(k.maint);
    session_metrics_free(k.smetrics);
    sessions_set_id_key(NULL, 0);
    keycache_free(k.keys);
    metrics_free(k.metrics);
    entropy_close(k.ent);
    keywrap_free(k.kw);
    p11_close(k.token);
    db_pool_close(k.db);
    db_pool_close(early_db);
    config_free(&k.cfg);
    if (pin)
        OPENSSL_secure_clear_free(pin, pin_len + 1);
    CRYPTO_secure_malloc_done();
    if (rc == 0)
        log_emit(LOG_INFO, "kmsd stopped", NULL);
    return rc;
}
