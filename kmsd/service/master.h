/*
 * master — finds or creates the master key at start and checks that the
 * token holds exactly the keys the database was wrapped under.
 *
 * Contract (master_init):
 *  - The database's master_keys table lists every version still in use with
 *    a key check value (KCV). Each must be present in the token with the same
 *    KCV, or kmsd refuses to start: keys wrapped under a missing master key
 *    could never be opened again, and a different key under the same label
 *    would fail every unwrap.
 *  - With no version recorded, version 1 is created in the token (if
 *    master_key_create) or adopted if the token already has it, and recorded.
 *    Runs under an advisory lock, so kmsd instances starting together agree.
 *  - Then the session ID hash key (session_id.h): made from the token's RNG
 *    and stored wrapped under the active version if the database has none,
 *    unwrapped and handed to session_id; kmsd refuses to start if it cannot
 *    be unwrapped.
 *  - Still under the lock, this instance's first report to the registry of
 *    instances (instances.h): a staged version it lacks waits for it.
 *    A staged version its token lacks (or holds under another key) does not
 *    keep it from starting: nothing is wrapped under it yet.
 *  - The module sees only what it needs (master_deps), not the whole qk_svc:
 *    service_open, which builds the qk_svc, calls master_init, so master
 *    must not include service.h (an import circle).
 */
#ifndef QKMS_MASTER_H
#define QKMS_MASTER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "keywrap.h"
#include "p11.h"
#include "service/instances.h"
#include "store/db.h"

typedef struct {
    db_pool *db;
    p11_token *token;
    keywrap *kw;
    bool create; /* master_key_create: make version 1 when the token has none */
    const instance_self *self; /* reported in the registry under the lock */
} master_deps;

/* 0, or -1 with err (why kmsd refuses to start). */
int master_init(const master_deps *k, char *err, size_t errlen);

/*
 * master_refresh: read master_keys again, load versions recorded since (each
 * checked against its check value) and switch to the active one. Run by the
 * maintenance pass of every instance, and at once by a request whose wrap
 * the database refused as made under a version no longer active (another
 * instance rotated). Callers arriving together while one refresh runs
 * share it. c: a connection to use, or NULL to take one from the pool.
 * 0, or -1 when the database could not be read.
 */
int master_reload(keywrap *kw, db_pool *db, db_conn *c);
/* The database's active master key version as of the last refresh when
 * this instance's token does not hold it (or holds another key under its
 * label), else 0. Such an instance can open nothing wrapped under that
 * version and cannot wrap under it: /readyz reports it (readiness.c), so a
 * load balancer routes around it until the token gets the version
 * (docs/ha.md). */
uint32_t master_active_missing(void);
/* The same for callers holding the service context (a qk_svc *svc). */
#define master_refresh(svc, c) master_reload((svc)->kw, (svc)->db, (c))

#endif
