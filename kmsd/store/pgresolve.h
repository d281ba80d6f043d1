/*
 * pgresolve — the host names of db_conninfo resolved within a deadline.
 *
 * Why: libpq resolves host names with a blocking getaddrinfo() inside
 * PQconnectStartParams/PQconnectPoll, before kmsd has a socket to poll, so
 * no deadline of kmsd's covers it. A resolver that stops answering (a
 * container engine's DNS while a container restarts) then holds every
 * connect for the resolver's timeout x attempts x servers: 30 s with glibc's
 * defaults and three name servers, measured in the compose stack. kmsd
 * resolves the names itself with getaddrinfo_a, waits at most until the
 * connect deadline, and gives libpq the numeric addresses as hostaddr= next
 * to host= (libpq still uses host= for TLS verify-full, the password file
 * and error messages).
 *
 * Contract:
 *  - pgr_new() reads host, hostaddr and port from the conninfo (or PGHOST,
 *    PGHOSTADDR, PGPORT when the conninfo has none). When hostaddr is given,
 *    or no host entry is a DNS name (unix socket paths, numeric addresses),
 *    pgr_params() has nothing to do and says so (*used = false): libpq
 *    connects as it always did.
 *  - Otherwise every name is looked up (A and AAAA, at most PGR_MAX_ADDRS
 *    addresses per name) and the lists are expanded so that libpq tries
 *    each address in turn: host=n,n hostaddr=a1,a2 port=p,p.
 *  - A lookup that has not answered by the deadline, or answers "try again"
 *    (EAI_AGAIN), falls back to the addresses that name last resolved to, if
 *    any ("stale", logged once per outage): a resolver outage alone does not
 *    take the database away. A name that does not exist (EAI_NONAME) is an
 *    error and forgets those addresses. Once the resolver has been found
 *    silent, later connects look for at most 50 ms before using the last
 *    addresses, until it answers again (so an outage costs one wait, not
 *    one per connect).
 *  - A lookup given up on keeps running in glibc's resolver thread and frees
 *    itself when it ends; nothing is leaked or touched after free.
 *  - Thread-safe.
 */
#ifndef QKMS_PGRESOLVE_H
#define QKMS_PGRESOLVE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define PGR_MAX_HOSTS 8 /* entries in host=; more and libpq resolves them itself */
#define PGR_MAX_ADDRS 4 /* addresses tried per name */
#define PGR_ENTRY_MAX 256

typedef struct pg_resolver pg_resolver;

/* The host, hostaddr and port lists for one connect (libpq's syntax). */
typedef struct {
    char host[PGR_MAX_HOSTS * PGR_MAX_ADDRS * PGR_ENTRY_MAX];
    char hostaddr[PGR_MAX_HOSTS * PGR_MAX_ADDRS * 48];
    char port[PGR_MAX_HOSTS * PGR_MAX_ADDRS * 16];
} pgr_lists;

/* NULL when out of memory or the conninfo does not parse. */
pg_resolver *pgr_new(const char *conninfo);
void pgr_free(pg_resolver *r);
/* Lookups whose completion notification has not run yet (it frees the
 * lookup on glibc's own thread, possibly after its caller gave up). A
 * process that checks for leaks at exit waits for 0 first. */
int pgr_lookups_in_flight(void);

/* Resolve for a connect that must be under way by deadline_ms (CLOCK_MONOTONIC
 * milliseconds). 0: *used says whether out holds lists to pass to libpq.
 * -1: no address for some name; err says why. */
int pgr_params(pg_resolver *r, int64_t deadline_ms, pgr_lists *out, bool *used, char *err,
               size_t errlen);

/* Pure helpers, exposed for the unit tests. */
/* Is s a name to look up (not empty, not a unix socket path, not numeric)? */
bool pgr_is_dns_name(const char *s);
/* Split a libpq comma list into at most max entries of PGR_ENTRY_MAX bytes;
 * returns the count, or -1 if it has more entries or an entry is too long. */
int pgr_split(const char *list, char (*out)[PGR_ENTRY_MAX], int max);

#endif
