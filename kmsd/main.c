/* kmsd — the qkms key-management daemon: start-up, signals, shutdown. */
#include <errno.h>
#include <getopt.h>
#include <malloc.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>
#include <openssl/crypto.h>

#include "service/audit_verify.h"
#include "service/bootstrap.h"
#include "service/instances.h"
#include "service/qkd_metrics.h"
#include "service/servercert.h"
#include "api/server.h"
#include "service/keycache.h"
#include "api/context.h"
#include "log.h"
#include "manroff.h"
#include "service/events.h"
#include "service/maintenance.h"
#include "service/master.h"
#include "service/service.h"
#include "metrics.h"
#include "store/migrate.h"
#include "store/queries.h"
#include "api/ratelimit.h"
#include "service/readiness.h"
#include "api/routes.h"
#include "service/session_metrics.h"
#include "version.h"

/* Locked, non-dumpable heap for PINs and unwrapped keys (OpenSSL's secure
 * heap: mmap + mlock + MADV_DONTDUMP + guard pages). */
#define SECURE_HEAP_BYTES (1 << 22) /* 2 MiB of it at most for unwrapped device keys */
#define SECURE_HEAP_MIN 16

static const char usage_text[] =
    "usage: kmsd [-c FILE] [--check-config | --migrate | --print-config-doc | --print-routes |\n"
    "            --print-man]\n"
    "  -c, --config FILE     configuration file (default: none; QKMS_* environment)\n"
    "      --check-config    parse and validate the configuration, then exit\n"
    "      --migrate         apply schema migrations, then exit\n"
    "      --print-config-doc  print the option table (Markdown), then exit\n"
    "      --print-routes    print the HTTP route table (JSON), then exit\n"
    "      --print-man       print kmsd(8) (man(7) format), then exit\n"
    "  -V, --version         print the version\n"
    "  -h, --help            this help\n";

static void usage(FILE *f) { fputs(usage_text, f); }

/* kmsd(8): the usage text and the option table, the same as --help and
 * --print-config-doc show, so the manual cannot drift from them. */
static void print_man(FILE *f)
{
    const char *opts = strchr(usage_text, '\n');
    opts = strchr(opts + 1, '\n') + 1; /* past the two synopsis lines */
    man_title(f, "kmsd", 8, "qkms " QKMS_VERSION);
    man_name(f, "kmsd", "the qkms key-management daemon");
    man_section(f, "SYNOPSIS");
    man_synopsis(f, usage_text, (size_t)(opts - usage_text));
    man_section(f, "DESCRIPTION");
    man_text(f, "kmsd issues, delivers and destroys the keys of devices' sessions over HTTP "
                "(the device protocol, ETSI GS QKD 014, gateway logins) and serves the admin "
                "API, `/metrics`, `/healthz` and `/readyz`. Its state is in PostgreSQL "
                "(`db_conninfo`); keys at rest are wrapped under a master key that never "
                "leaves the PKCS#11 token (`pkcs11_module`). Logs are JSON lines on stderr.");
    man_section(f, "OPTIONS");
    man_verbatim(f, opts);
    man_section(f, "CONFIGURATION");
    man_text(f, "One file (`-c FILE`) of `key = value` lines; `#` starts a comment; a value "
                "may be double-quoted. Every option can also be set in the environment as "
                "`QKMS_<OPTION>` in upper case, which overrides the file. Options marked "
                "SIGHUP take effect when kmsd receives SIGHUP (the file is read again); the "
                "others at the next start.");
    config_print_man(f);
    man_section(f, "SIGNALS");
    man_item(f, "SIGHUP", "re-read the configuration file; a file that fails to parse is "
                          "refused (logged) and the running configuration kept.");
    man_item(f, "SIGTERM, SIGINT", "stop accepting, let the requests in flight finish "
                                   "(at most `shutdown_grace` seconds), then exit.");
    man_section(f, "SEE ALSO");
    man_text(f, "kmsctl(1), qkms-device(1); the qkms documentation (docs/ in the source: "
                "configuration.md, operations.md, api.md).");
}

/* jansson's free: every block it held is wiped first. Request and answer
 * bodies pass through its trees and buffers (the crypto services' data,
 * random bytes, plaintext fill documents for admins); the blocks are plain
 * malloc blocks, so what jansson hands out (json_dumps) may still be freed
 * with free() elsewhere. */
static void json_wiping_free(void *p)
{
    if (p) {
        OPENSSL_cleanse(p, malloc_usable_size(p));
        free(p);
    }
}

/* No core files, no ptrace by other users, no swap of key pages. true when
 * the secure heap is locked in memory. */
static bool harden_process(void)
{
    int rc;
    struct rlimit rl = {0, 0};
    setrlimit(RLIMIT_CORE, &rl);
#if !defined(__SANITIZE_ADDRESS__)
    /* LeakSanitizer needs to ptrace the process at exit; sanitizer builds
     * keep it dumpable (RLIMIT_CORE is still 0). */
    prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
#endif
    /* 2: the heap exists but mlock failed (RLIMIT_MEMLOCK). */
    if ((rc = CRYPTO_secure_malloc_init(SECURE_HEAP_BYTES, SECURE_HEAP_MIN)) != 1)
        log_emit(LOG_WARN, "secure heap unavailable (RLIMIT_MEMLOCK?); key buffers not locked", NULL);
    return rc == 1;
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

/* The listening addresses: addr/port (and tls) are the device listener, or
 * the one listener when the admin API is not apart; admin_* name the admin
 * listener when it is (admin_unix for a unix socket). */
#define READY_FMT "{s:s,s:i,s:s,s:b,s:i"
#define READY_ARGS(c, k)                                                                          \
    "addr", (c)->listen_addr, "port", (c)->listen_port, "threading", (c)->http_threading, "tls", \
        (c)->tls_cert_file != NULL, "schema_version", (k)->schema_version
static void log_ready(const kms_ctx *k)
{
    const kms_config *c = &k->cfg;
    bool admin_tls = c->admin_tls_cert_file != NULL;

    if (c->admin_listen_unix)
        log_emit(LOG_INFO, "kmsd ready", READY_FMT ",s:s,s:b}", READY_ARGS(c, k), "admin_unix",
                 c->admin_listen_unix, "admin_tls", admin_tls);
    else if (c->admin_listen_addr)
        log_emit(LOG_INFO, "kmsd ready", READY_FMT ",s:s,s:i,s:b}", READY_ARGS(c, k),
                 "admin_addr", c->admin_listen_addr, "admin_port", c->admin_listen_port,
                 "admin_tls", admin_tls);
    else
        log_emit(LOG_INFO, "kmsd ready", READY_FMT "}", READY_ARGS(c, k));
    if (c->metrics_listen_addr)
        log_emit(LOG_INFO, "metrics listener ready", "{s:s,s:i}", "metrics_addr",
                 c->metrics_listen_addr, "metrics_port", c->metrics_listen_port);
}

/* The background threads, the rate limiters, the metrics registry and its
 * sources, then the listeners: everything that serves requests. */
static int start_doors(kms_ctx *k, char *err, size_t el)
{
    if (maintenance_start(&k->maint, &k->svc) != 0) {
        log_emit(LOG_ERROR, "cannot start the maintenance thread", NULL);
        return -1;
    }
    if (readiness_start(&k->ready, &k->svc) != 0) {
        log_emit(LOG_ERROR, "cannot start the readiness prober", NULL);
        return -1;
    }
    if (events_worker_start(&k->events, &k->svc, err, el) != 0) {
        log_emit(LOG_ERROR, "cannot start the event delivery", "{s:s}", "error", err);
        return -1;
    }
    k->metrics = metrics_new(routes_count, route_names, k->started_at);
    if (!k->metrics || ratelimit_open_all(k->rl, &k->cfg) != 0)
        return -1;
    /* /metrics renders in this order. */
    if (metrics_register(k->metrics, db_metrics_render, k->svc.db) != 0 ||
        metrics_register(k->metrics, db_batch_metrics_render, k->svc.key_batch) != 0 ||
        metrics_register(k->metrics, p11_metrics_render, k->svc.token) != 0 ||
        metrics_register(k->metrics, entropy_metrics_render, k->svc.ent) != 0 ||
        metrics_register(k->metrics, session_metrics_render, k->svc.smetrics) != 0 ||
        metrics_register(k->metrics, qkd_metrics_render, k->svc.qkdm) != 0 ||
        metrics_register(k->metrics, keycache_metrics_render, k->svc.keys) != 0 ||
        metrics_register(k->metrics, ratelimit_metrics_render, k->rl) != 0 ||
        metrics_register(k->metrics, maintenance_metrics_render, k->maint) != 0 ||
        metrics_register(k->metrics, events_metrics_render, k->events) != 0 ||
        metrics_register(k->metrics, readiness_metrics_render, k->ready) != 0 ||
        metrics_register(k->metrics, audit_verify_metrics_render, NULL) != 0)
        return -1;
    if (http_start(&k->http, k, routes, routes_count, err, el) != 0) {
        log_emit(LOG_ERROR, "http listener failed", "{s:s}", "error", err);
        return -1;
    }
    return 0;
}

/* Serve until SIGINT or SIGTERM (SIGHUP reloads), then stop accepting and
 * give in-flight requests up to shutdown_grace seconds. */
static void serve(kms_ctx *k, const sigset_t *sigs)
{
    for (;;) {
        int sig = 0;
        if (sigwait(sigs, &sig) != 0)
            continue;
        if (sig == SIGHUP) {
            reload(k);
            continue;
        }
        log_emit(LOG_INFO, "shutting down", "{s:s,s:i}", "signal",
                 sig == SIGINT ? "SIGINT" : "SIGTERM", "inflight", http_inflight(k->http));
        break;
    }
    http_quiesce(k->http);
    for (int waited = 0; http_inflight(k->http) > 0 && waited < k->cfg.shutdown_grace * 10;
         waited++) {
        struct timespec ts = {0, 100 * 1000000L};
        nanosleep(&ts, NULL);
    }
}

/* Signals are taken synchronously by the main thread; every thread started
 * after this inherits the mask. */
static void block_signals(sigset_t *sigs)
{
    sigemptyset(sigs);
    sigaddset(sigs, SIGINT);
    sigaddset(sigs, SIGTERM);
    sigaddset(sigs, SIGHUP);
    pthread_sigmask(SIG_BLOCK, sigs, NULL);
    signal(SIGPIPE, SIG_IGN);
}

/* The PIN moves to the secure heap (locked, not dumped) until the token
 * has it; the configuration's copy is wiped now. NULL when out of memory. */
static char *take_pin(kms_config *cfg, size_t *len)
{
    char *pin;
    *len = strlen(cfg->pkcs11_pin);
    pin = OPENSSL_secure_malloc(*len + 1);
    if (pin)
        memcpy(pin, cfg->pkcs11_pin, *len + 1);
    config_forget_pin(cfg);
    return pin;
}

enum { RUN_SERVE, RUN_CHECK, RUN_MIGRATE };

/* Command line: 0 to go on with *mode set, or the exit status (>= 0) of an
 * option that has done its work, as 1 + status. */
static int parse_args(int argc, char **argv, kms_ctx *k, int *mode)
{
    static const struct option lopts[] = {
        {"config", required_argument, NULL, 'c'}, {"check-config", no_argument, NULL, 'k'},
        {"migrate", no_argument, NULL, 'm'},      {"print-config-doc", no_argument, NULL, 'd'},
        {"version", no_argument, NULL, 'V'},      {"help", no_argument, NULL, 'h'},
        {"print-routes", no_argument, NULL, 'r'}, {"print-man", no_argument, NULL, 'M'},
        {NULL, 0, NULL, 0}};
    int opt;
    while ((opt = getopt_long(argc, argv, "c:Vh", lopts, NULL)) != -1) {
        switch (opt) {
        case 'c': k->config_path = optarg; break;
        case 'k': *mode = RUN_CHECK; break;
        case 'm': *mode = RUN_MIGRATE; break;
        case 'd': config_print_doc(stdout); return 1;
        case 'r': return 1 + (routes_print_json(stdout) == 0 ? 0 : 1);
        case 'M': print_man(stdout); return 1;
        case 'V': printf("kmsd %s\n", QKMS_VERSION); return 1;
        case 'h': usage(stdout); return 1;
        default: usage(stderr); return 3;
        }
    }
    if (optind != argc) {
        usage(stderr);
        return 3;
    }
    return 0;
}

int main(int argc, char **argv)
{
    kms_ctx k;
    char err[1024];
    int mode = RUN_SERVE, rc = 1, done;
    bool heap_locked;
    sigset_t sigs;
    log_level lvl;
    char *pin = NULL; /* secure heap until service_open has taken it */
    size_t pin_len = 0;

    memset(&k, 0, sizeof(k));
    k.svc.cfg = &k.cfg;
    /* Before any thread: curl_easy_init would do it implicitly, which is
     * thread-safe only in recent libcurl (QRNG source, webhooks). */
    curl_global_init(CURL_GLOBAL_DEFAULT);
    if ((done = parse_args(argc, argv, &k, &mode)) != 0)
        return done - 1;
    heap_locked = harden_process();
    json_set_alloc_funcs(malloc, json_wiping_free); /* before any other jansson call */
    block_signals(&sigs);
    if (load_config(&k.cfg, k.config_path, 1, err, sizeof(err)) != 0) {
        fprintf(stderr, "kmsd: %s\n", err);
        log_emit(LOG_ERROR, "configuration error", "{s:s}", "error", err);
        config_free(&k.cfg);
        return 2;
    }
    if (!heap_locked && k.cfg.device_key_cache_unwrapped > 0 && mode == RUN_SERVE) {
        /* Plaintext keys are kept only where they cannot be swapped out. */
        log_emit(LOG_WARN, "unwrapped device keys are not cached: the secure heap is not locked",
                 NULL);
        k.cfg.device_key_cache_unwrapped = 0;
    }
    if (mode == RUN_CHECK) {
        if (k.cfg.webhook_urls && *k.cfg.webhook_urls) {
            uint8_t *secret;
            size_t slen, scap;
            if (events_read_secret(k.cfg.webhook_secret_file, &secret, &slen, &scap, err,
                                   sizeof(err)) != 0) {
                fprintf(stderr, "kmsd: %s\n", err);
                config_free(&k.cfg);
                return 2;
            }
            OPENSSL_secure_clear_free(secret, scap);
            if (k.cfg.webhook_ca_file && *k.cfg.webhook_ca_file &&
                access(k.cfg.webhook_ca_file, R_OK) != 0) {
                fprintf(stderr, "kmsd: webhook_ca_file: cannot read %s\n", k.cfg.webhook_ca_file);
                config_free(&k.cfg);
                return 2;
            }
        }
        printf("kmsd: configuration OK\n");
        config_free(&k.cfg);
        return 0;
    }
    if (!(pin = take_pin(&k.cfg, &pin_len))) {
        log_emit(LOG_ERROR, "out of memory", NULL);
        config_free(&k.cfg);
        return 1;
    }
    if (log_level_parse(k.cfg.log_level, &lvl) == 0)
        log_set_level(lvl);
    config_hash(&k.cfg, k.config_hash);
    k.started_at = time(NULL);
    log_emit(LOG_INFO, "kmsd starting", "{s:s,s:s,s:i}", "version", QKMS_VERSION, "config_hash",
             k.config_hash, "pid", (int)getpid());

    if (service_migrate(&k.cfg, k.cfg.db_migrate || mode == RUN_MIGRATE, &k.schema_version, err,
                        sizeof(err)) != 0)
        goto out;
    if (mode == RUN_MIGRATE) {
        log_emit(LOG_INFO, "schema up to date", "{s:i}", "version", k.schema_version);
        rc = 0;
        goto out;
    }
    done = service_open(&k.svc, &k.cfg, pin, pin_len, err, sizeof(err));
    pin = NULL; /* service_open wiped it */
    if (done != 0) {
        fprintf(stderr, "kmsd: %s\n", err);
        goto out;
    }
    if (bootstrap_admin_token(&k.svc, err, sizeof(err)) != 0) {
        log_emit(LOG_ERROR, "bootstrap admin token failed", "{s:s}", "error", err);
        goto out;
    }
    if (k.cfg.tls_server_names &&
        servercert_ensure(&k.svc, k.cfg.tls_server_names, k.cfg.tls_cert_file,
                          k.cfg.tls_key_file, err, sizeof(err)) != 0) {
        log_emit(LOG_ERROR, "server certificate failed", "{s:s}", "error", err);
        goto out;
    }
    if (start_doors(&k, err, sizeof(err)) != 0)
        goto out;
    log_ready(&k);
    serve(&k, &sigs);
    rc = 0;
out:
    http_stop(k.http);
    events_worker_stop(k.events);
    readiness_stop(k.ready);
    ratelimit_free_all(k.rl);
    if (k.maint) {
        maintenance_stop(k.maint);
        /* After the last pass, which would report it again. */
        instances_leave(&k.svc.self, k.svc.db);
    }
    metrics_free(k.metrics);
    service_close(&k.svc);
    config_free(&k.cfg);
    if (pin)
        OPENSSL_secure_clear_free(pin, pin_len + 1);
    CRYPTO_secure_malloc_done();
    curl_global_cleanup();
    if (rc == 0)
        log_emit(LOG_INFO, "kmsd stopped", NULL);
    return rc;
}
