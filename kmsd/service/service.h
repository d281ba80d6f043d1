/*
 * service — the key service's context: what a service operation may reach.
 *
 * The service layer (kmsd/service/) issues, delivers and destroys keys,
 * registers devices, keeps the audit chain and rotates master keys for an
 * authenticated principal. It knows nothing of HTTP: a door (kmsd/api/)
 * parses and authenticates a request, calls an operation with a qk_svc,
 * a principal and plain arguments, and encodes the answer or the qk_err
 * (err.h).
 *
 * Contract:
 *  - main() builds one qk_svc before any door opens and tears it down after
 *    the last one closed; its members are never reassigned in between, so
 *    any thread may read them without a lock. cfg points to the running
 *    configuration (reload changes only what is documented as reloadable,
 *    none of it read here).
 *  - Nothing here owns a listener, a rate limiter or the metrics registry.
 */
#ifndef QKMS_SERVICE_H
#define QKMS_SERVICE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "entropy/entropy.h"
#include "keywrap.h"
#include "log.h"
#include "p11.h"
#include "service/instances.h"
#include "store/db.h"
#include "store/dbbatch.h"

typedef struct keycache keycache;
typedef struct qk_ca qk_ca;
typedef struct platform_keys platform_keys;
typedef struct certkeys certkeys;
typedef struct qkd_metrics qkd_metrics;
typedef struct qk_trust qk_trust;
typedef struct session_seen session_seen;
typedef struct device_seen device_seen;
typedef struct session_metrics session_metrics;

typedef struct qk_svc {
    const kms_config *cfg;
    db_pool *db;
    db_batch *key_batch; /* group commit of key requests; NULL = each alone */
    p11_token *token;
    keywrap *kw;      /* the active master key, through the token */
    entropy *ent;     /* where key material comes from */
    keycache *keys;   /* device key rows; unwrapped keys in the secure heap */
    session_seen *seen; /* sessions seen to exist: no candidate key for them */
    device_seen *contact; /* devices heard from: first_seen_at, last_seen_at (device_seen.h) */
    session_metrics *smetrics;
    qk_ca *ca;        /* the platform CA (its key in the token), service/ca.h */
    platform_keys *pkeys; /* protocol v2's signing and key-agreement keys (platform_keys.h) */
    certkeys *v2cache; /* protocol v2: certificate keys by digest (certkeys.h) */
    qkd_metrics *qkdm; /* ETSI GS QKD 014 counters (qkd.h) */
    qk_trust *trust;  /* other issuers of client certificates (trust.h); NULL: none */
    /* The rotation's scan of sessions for rows under an older master version
     * found none while this version was active (0: not yet). Rows are only
     * written under the active version (006's trigger), so the scan, a full
     * pass over every live session, is not run again until the next version;
     * only the maintenance thread reads and writes it. */
    uint32_t sessions_rewrapped_for;
    /* This instance in the registry of instances (instances.h); self.name
     * points at instance. */
    char instance[128];
    instance_self self;
} qk_svc;

/* Who asks: an admin token (by name and roles) or a device (by identity ID),
 * with the request it came in on, for the log lines an operation writes. */
typedef enum { QK_PRINCIPAL_NONE = 0, QK_PRINCIPAL_ADMIN, QK_PRINCIPAL_DEVICE } qk_principal_kind;

typedef struct qk_principal {
    qk_principal_kind kind;
    const char *name; /* token name or device ID; the actor in audit rows */
    long long token_id; /* an admin token's row (admin_tokens.id); 0 otherwise */
    unsigned roles;   /* ROLE_* (service/auth.h) for an admin token */
    log_ctx log;      /* req_id, client, principal (= name) */
} qk_principal;

/* Check the schema (apply = run pending migrations; else refuse an old
 * one), waiting up to 60 s for PostgreSQL; *schema_version is what it is
 * now. 0, or -1 with err set (and logged). */
int service_migrate(const kms_config *cfg, bool apply, int *schema_version, char *err,
                    size_t errlen);
/* Build *s from a finished configuration: the statement pool, the token
 * (pin, pin_len bytes in the secure heap, is consumed: wiped and freed on
 * every path), the master key check, the entropy sources and the caches.
 * 0, or -1 with err set; on failure the caller still calls service_close. */
int service_open(qk_svc *s, const kms_config *cfg, char *pin, size_t pin_len, char *err,
                 size_t errlen);
/* Tear down what service_open built (any part of it); *s is zeroed. */
void service_close(qk_svc *s);

#endif
