/* pgresolve — db_conninfo's host names resolved within a deadline (see pgresolve.h). */
#include "store/pgresolve.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <libpq-fe.h>

#include "deadline.h"
#include "log.h"

#define ADDR_MAX 48 /* INET6_ADDRSTRLEN and a margin */
#define PORT_MAX 16
/* How long a lookup may take once the resolver has been found silent. */
#define PGR_STALE_WAIT_MS 50

typedef struct {
    char addr[PGR_MAX_ADDRS][ADDR_MAX];
    int n;
    bool stale; /* serving these because the resolver did not answer */
} last_good;

struct pg_resolver {
    int n; /* host entries; 0: nothing for kmsd to resolve */
    bool per_host_port;
    char host[PGR_MAX_HOSTS][PGR_ENTRY_MAX];
    char port[PGR_MAX_HOSTS][PGR_ENTRY_MAX];
    pthread_mutex_t mu;
    last_good last[PGR_MAX_HOSTS]; /* under mu */
};

/* One getaddrinfo_a request. Two owners: the caller waiting for it and the
 * completion notification; the last to let go frees it, so a caller may
 * give up on a lookup that is still running. */
typedef struct {
    struct gaicb cb;
    struct addrinfo hints;
    atomic_int refs;
    char name[PGR_ENTRY_MAX];
} lookup;

bool pgr_is_dns_name(const char *s)
{
    unsigned char buf[sizeof(struct in6_addr)];
    if (!s || !*s || s[0] == '/' || s[0] == '@')
        return false; /* default, unix socket directory, abstract socket */
    return inet_pton(AF_INET, s, buf) != 1 && inet_pton(AF_INET6, s, buf) != 1;
}

int pgr_split(const char *list, char (*out)[PGR_ENTRY_MAX], int max)
{
    int n = 0;
    const char *p = list;
    for (;;) {
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        if (n == max || len >= PGR_ENTRY_MAX)
            return -1;
        memcpy(out[n], p, len);
        out[n][len] = '\0';
        n++;
        if (!comma)
            return n;
        p = comma + 1;
    }
}

/* The value libpq will use: the conninfo's, else the environment's. */
static const char *effective(PQconninfoOption *opts, const char *key, const char *env)
{
    for (PQconninfoOption *o = opts; o && o->keyword; o++)
        if (!strcmp(o->keyword, key) && o->val && *o->val)
            return o->val;
    return getenv(env);
}

/* Fill r->host/port from the conninfo; r->n stays 0 when libpq should
 * resolve on its own (hostaddr given, no name, lists it would refuse). */
static void parse_conninfo(pg_resolver *r, const char *conninfo)
{
    char *msg = NULL;
    PQconninfoOption *opts = PQconninfoParse(conninfo, &msg);
    const char *host, *port, *hostaddr;
    char ports[PGR_MAX_HOSTS][PGR_ENTRY_MAX];
    int nh, np = 0;
    bool any_name = false;

    PQfreemem(msg);
    if (!opts)
        return; /* libpq reports the syntax error when it connects */
    host = effective(opts, "host", "PGHOST");
    port = effective(opts, "port", "PGPORT");
    hostaddr = effective(opts, "hostaddr", "PGHOSTADDR");
    if (hostaddr || !host || (nh = pgr_split(host, r->host, PGR_MAX_HOSTS)) < 0)
        goto out;
    if (port && (np = pgr_split(port, ports, PGR_MAX_HOSTS)) < 0)
        goto out;
    if (np > 1 && np != nh)
        goto out; /* libpq refuses this list; let it say so */
    for (int i = 0; i < nh; i++) {
        const char *pi = np > 1 ? ports[i] : "";
        if (strlen(pi) >= PORT_MAX)
            goto out;
        snprintf(r->port[i], sizeof(r->port[i]), "%s", pi);
        any_name |= pgr_is_dns_name(r->host[i]);
    }
    if (any_name) {
        r->n = nh;
        r->per_host_port = np > 1;
    }
out:
    PQconninfoFree(opts);
}

pg_resolver *pgr_new(const char *conninfo)
{
    pg_resolver *r = calloc(1, sizeof(*r));
    if (!r)
        return NULL;
    pthread_mutex_init(&r->mu, NULL);
    parse_conninfo(r, conninfo);
    return r;
}

void pgr_free(pg_resolver *r)
{
    if (!r)
        return;
    pthread_mutex_destroy(&r->mu);
    free(r);
}

static atomic_int lookups_live;

int pgr_lookups_in_flight(void) { return atomic_load(&lookups_live); }

static void lookup_put(lookup *l)
{
    if (atomic_fetch_sub(&l->refs, 1) == 1) {
        if (l->cb.ar_result)
            freeaddrinfo(l->cb.ar_result);
        free(l);
        atomic_fetch_sub(&lookups_live, 1);
    }
}

static void lookup_done(union sigval sv) { lookup_put(sv.sival_ptr); }

/* Look name up, waiting until deadline_ms at most. 0 with the addresses in
 * addrs/n, or an EAI_* code; *timed_out when the resolver had not answered. */
static int lookup_name(const char *name, int64_t deadline_ms, char (*addrs)[ADDR_MAX], int *n,
                       bool *timed_out)
{
    lookup *l = calloc(1, sizeof(*l));
    struct gaicb *list[1];
    struct sigevent sev;
    int rc;

    *n = 0;
    *timed_out = false;
    if (!l)
        return EAI_MEMORY;
    atomic_fetch_add(&lookups_live, 1);
    snprintf(l->name, sizeof(l->name), "%s", name);
    l->hints.ai_family = AF_UNSPEC; /* as libpq asks */
    l->hints.ai_socktype = SOCK_STREAM;
    l->cb.ar_name = l->name;
    l->cb.ar_request = &l->hints;
    atomic_init(&l->refs, 2);
    memset(&sev, 0, sizeof(sev));
    sev.sigev_notify = SIGEV_THREAD;
    sev.sigev_notify_function = lookup_done;
    sev.sigev_value.sival_ptr = l;
    list[0] = &l->cb;
    rc = getaddrinfo_a(GAI_NOWAIT, list, 1, &sev);
    if (rc != 0) {
        free(l); /* not queued: no notification will come */
        atomic_fetch_sub(&lookups_live, 1);
        return rc;
    }
    while ((rc = gai_error(&l->cb)) == EAI_INPROGRESS) {
        int64_t left = deadline_ms - deadline_now_ms();
        struct timespec ts;
        if (left <= 0)
            break;
        ts.tv_sec = (time_t)(left / 1000);
        ts.tv_nsec = (long)(left % 1000) * 1000000L;
        gai_suspend((const struct gaicb *const *)list, 1, &ts);
    }
    if (rc == EAI_INPROGRESS) {
        *timed_out = true;
        rc = EAI_AGAIN;
    } else if (rc == 0) {
        for (struct addrinfo *ai = l->cb.ar_result; ai && *n < PGR_MAX_ADDRS; ai = ai->ai_next) {
            char a[ADDR_MAX];
            const void *src = ai->ai_family == AF_INET
                                  ? (const void *)&((struct sockaddr_in *)ai->ai_addr)->sin_addr
                                  : (const void *)&((struct sockaddr_in6 *)ai->ai_addr)->sin6_addr;
            bool dup = false;
            if ((ai->ai_family != AF_INET && ai->ai_family != AF_INET6) ||
                !inet_ntop(ai->ai_family, src, a, sizeof(a)))
                continue;
            for (int j = 0; j < *n && !dup; j++)
                dup = !strcmp(addrs[j], a);
            if (!dup)
                snprintf(addrs[(*n)++], ADDR_MAX, "%s", a);
        }
        if (*n == 0)
            rc = EAI_NONAME;
    }
    lookup_put(l);
    return rc;
}

/* Append s to the comma list in buf; false when it does not fit. */
static bool append(char *buf, size_t size, bool first, const char *s)
{
    size_t used = strlen(buf);
    int w = snprintf(buf + used, size - used, "%s%s", first ? "" : ",", s);
    return w >= 0 && (size_t)w < size - used;
}

/* The addresses to try for host entry i: a fresh answer, or the last one
 * while the resolver does not answer. 0 or an EAI_* code. */
static int addresses_for(pg_resolver *r, int i, int64_t deadline_ms, char (*addrs)[ADDR_MAX],
                         int *n, bool *timed_out)
{
    last_good *lg = &r->last[i];
    bool stale;
    int rc;

    /* While the resolver is known not to answer, a connect does not wait
     * for it again: a short look, then the last addresses. */
    pthread_mutex_lock(&r->mu);
    stale = lg->stale;
    pthread_mutex_unlock(&r->mu);
    if (stale && deadline_ms - deadline_now_ms() > PGR_STALE_WAIT_MS)
        deadline_ms = deadline_now_ms() + PGR_STALE_WAIT_MS;
    rc = lookup_name(r->host[i], deadline_ms, addrs, n, timed_out);

    pthread_mutex_lock(&r->mu);
    if (rc == 0) {
        if (lg->stale)
            log_emit(LOG_INFO, "database host name resolves again", "{s:s,s:i}", "host",
                     r->host[i], "addresses", *n);
        memcpy(lg->addr, addrs, sizeof(lg->addr));
        lg->n = *n;
        lg->stale = false;
    } else if (rc == EAI_AGAIN && lg->n > 0) {
        /* The resolver is down or slow, not the name gone: the database most
         * likely still has the address it had a moment ago. */
        if (!lg->stale)
            log_emit(LOG_WARN, "database host name not resolved in time; using its last addresses",
                     "{s:s,s:s,s:i}", "host", r->host[i], "error",
                     *timed_out ? "no answer from the resolver" : gai_strerror(rc), "addresses",
                     lg->n);
        memcpy(addrs, lg->addr, sizeof(lg->addr));
        *n = lg->n;
        lg->stale = true;
        rc = 0;
    } else if (rc == EAI_NONAME) {
        lg->n = 0;
        lg->stale = false;
    }
    pthread_mutex_unlock(&r->mu);
    return rc;
}

int pgr_params(pg_resolver *r, int64_t deadline_ms, pgr_lists *out, bool *used, char *err,
               size_t errlen)
{
    int entries = 0, failed_rc = 0, failed = -1;
    bool failed_timeout = false;

    *used = false;
    if (!r || r->n == 0)
        return 0;
    out->host[0] = out->hostaddr[0] = out->port[0] = '\0';
    for (int i = 0; i < r->n; i++) {
        char addrs[PGR_MAX_ADDRS][ADDR_MAX];
        int n = 0;
        if (!pgr_is_dns_name(r->host[i])) {
            /* A socket path or a numeric address: libpq needs no lookup. */
            snprintf(addrs[0], ADDR_MAX, "%s", "");
            n = 1;
        } else {
            bool to = false;
            int rc = addresses_for(r, i, deadline_ms, addrs, &n, &to);
            if (rc != 0) {
                /* libpq goes on to the next host; so do we. */
                failed = i;
                failed_rc = rc;
                failed_timeout = to;
                continue;
            }
        }
        for (int j = 0; j < n; j++, entries++) {
            bool first = entries == 0;
            if (!append(out->host, sizeof(out->host), first, r->host[i]) ||
                !append(out->hostaddr, sizeof(out->hostaddr), first, addrs[j]) ||
                !append(out->port, sizeof(out->port), first, r->port[i]))
                return 0; /* cannot happen with the limits above; libpq resolves */
        }
    }
    if (entries == 0) {
        if (failed_timeout)
            snprintf(err, errlen, "could not resolve \"%s\": no answer from the resolver in time",
                     r->host[failed]);
        else
            snprintf(err, errlen, "could not resolve \"%s\": %s", r->host[failed],
                     gai_strerror(failed_rc));
        return -1;
    }
    if (!r->per_host_port)
        out->port[0] = '\0'; /* one port for all: the conninfo's stands */
    *used = true;
    return 0;
}
