/*
 * server — kmsd's HTTP side (server.h): the listeners (one MHD daemon each,
 * sockets from listen.c), the router, the gate before the body (limits,
 * route, rate limits, bearer token, role, body cap), the request body
 * buffer, the one error shape and the request log line. Handlers own what
 * a route does; this file owns everything around it.
 */
#include "api/server.h"
#include "service/audit.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <microhttpd.h>
#include <openssl/crypto.h>
#include <openssl/rand.h>

#include "hexutil.h"
#include "log.h"
#include "metrics.h"
#include "qbuf.h"
#include "api/listen.h"
#include "api/ratelimit.h"
#include "api/tlsauth.h"
#include "api/transport.h"
#include "service/ca.h"
#include "service/trust.h"
#include "utf8.h"

#define HTTP_MAX_LISTENERS 3

/* One listening socket and its MHD daemon, serving the routes of door. */
typedef struct http_listener {
    struct http_server *srv;
    struct MHD_Daemon *d;
    unsigned door;       /* DOOR_* mask */
    bool tls;
    char *tls_cert, *tls_key;
    tls_client_mode client_auth; /* of its .client_cert routes (tlsauth.h) */
    tls_client_mode admin_client_auth; /* of its admin routes (roles != 0) */
    char *tls_trust;     /* the issuers a client certificate may name (PEM) */
    char *unix_path;     /* the admin unix socket, removed at stop; else NULL */
    listen_unix_id unix_id;
} http_listener;

struct http_server {
    http_listener l[HTTP_MAX_LISTENERS];
    int nl;
    kms_ctx *kms;
    const http_route *routes;
    int nroutes;
    size_t max_body;
    _Atomic int inflight; /* over all listeners */
    /* Bytes of raw uploads held now (.octets routes), over all requests:
     * at most twice http_max_upload_mb, so concurrent uploads cannot take
     * the machine's memory. */
    _Atomic unsigned long long octets_held;
};

/* Limits kmsd checks in the first callback, so that the answer is JSON.
 * They sit below libmicrohttpd's own (its connection memory pool, 32 KiB by
 * default), past which the library answers 414/431 itself (docs/api.md). */
#define HTTP_MAX_PATH 1024
#define HTTP_MAX_HEADER_BYTES 8192

/* Per-request state, owned by MHD's connection slot (*con_cls). */
typedef struct {
    struct timespec t0;
    qbuf *body;          /* made once the gate has set max_body; NULL: none yet */
    uint8_t *octets;     /* an .octets route's body: exactly Content-Length bytes */
    size_t octets_len, octets_cap;
    unsigned long long octets_counted; /* its share of octets_held */
    bool too_large;
    bool responded;
    size_t max_body;
    char req_id[65];
    char client_ip[64];
    /* The gate's outcome (first callback), for the later ones. */
    int route;
    int nparams;
    const char *params[HTTP_MAX_PARAMS]; /* into pathbuf */
    char pathbuf[HTTP_MAX_PATH + 1];
    auth_principal who;
    cert_principal cert;
} req_state;

static double elapsed(const struct timespec *t0)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)(t.tv_sec - t0->tv_sec) + (double)(t.tv_nsec - t0->tv_nsec) / 1e9;
}

bool http_request_id_ok(const char *s)
{
    size_t n = s ? strlen(s) : 0;
    if (n == 0 || n > 64)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '_' || c == '.'))
            return false;
    }
    return true;
}

/* Response bodies may carry tokens or wrapped keys: zeroize before free.
 * free_body is MHD's callback (bodies are NUL-terminated text); body_drop
 * is ours, for a body that is replaced or never sent. */
static void free_body(void *p)
{
    if (p) {
        OPENSSL_cleanse(p, strlen(p));
        free(p);
    }
}

static void body_drop(http_response *rs)
{
    if (rs->body) {
        OPENSSL_cleanse(rs->body, rs->body_len);
        free(rs->body);
    }
    rs->body = NULL;
    rs->body_len = 0;
    if (rs->stream) { /* never handed to MHD */
        rs->stream->release(rs->stream->ctx);
        free(rs->stream);
        rs->stream = NULL;
    }
}

void http_stream_answer(http_response *rs, int status, const char *content_type, http_stream *st)
{
    body_drop(rs);
    rs->status = status;
    rs->content_type = content_type;
    rs->stream = st;
}

static ssize_t stream_read(void *cls, uint64_t pos, char *buf, size_t max)
{
    http_stream *st = cls;
    long n;
    if (pos >= st->total)
        return MHD_CONTENT_READER_END_OF_STREAM;
    n = st->read(st->ctx, pos, buf, max);
    return n > 0 ? (ssize_t)n : MHD_CONTENT_READER_END_WITH_ERROR;
}

static void stream_free(void *cls)
{
    http_stream *st = cls;
    st->release(st->ctx);
    free(st);
}

void http_json(http_response *rs, int status, json_t *body)
{
    body_drop(rs);
    rs->status = status;
    rs->body = body ? json_dumps(body, JSON_COMPACT) : NULL;
    rs->body_len = rs->body ? strlen(rs->body) : 0;
    rs->content_type = "application/json";
    json_decref(body);
    if (!rs->body && status != 204) {
        rs->status = 500;
        rs->body = strdup("{\"error\":{\"code\":\"internal\",\"message\":\"out of memory\"}}");
        rs->body_len = rs->body ? strlen(rs->body) : 0;
    }
}

void http_vmessage(char msg[HTTP_MESSAGE_MAX], const char *fmt, va_list ap)
{
    char raw[HTTP_MESSAGE_MAX / 3];
    int n = vsnprintf(raw, sizeof(raw), fmt, ap);
    if (n < 0)
        n = 0;
    /* Messages quote client input (names, JSON keys, a %.32s cut that may
     * fall inside a character): jansson refuses invalid UTF-8, and the
     * answer would become a 500. Each bad byte becomes U+FFFD. */
    if ((size_t)n >= sizeof(raw))
        n = (int)sizeof(raw) - 1;
    utf8_sanitize(raw, (size_t)n, msg, HTTP_MESSAGE_MAX, NULL);
}

void http_error(http_response *rs, int status, const char *code, const char *fmt, ...)
{
    char msg[HTTP_MESSAGE_MAX];
    va_list ap;
    va_start(ap, fmt);
    http_vmessage(msg, fmt, ap);
    va_end(ap);
    rs->err_code = code;
    http_json(rs, status, json_pack("{s:{s:s,s:s}}", "error", "code", code, "message", msg));
}

log_ctx http_log_ctx(const http_request *rq)
{
    log_ctx c = {.req_id = rq->req_id, .client = rq->client_ip,
                 .principal = rq->who.name[0] ? rq->who.name : NULL};
    return c;
}

void http_log(const http_request *rq, log_level l, const char *msg, const char *fmt, ...)
{
    log_ctx c = http_log_ctx(rq);
    va_list ap;
    va_start(ap, fmt);
    log_withv(&c, l, msg, fmt, ap);
    va_end(ap);
}

int http_status_of(qk_kind k)
{
    switch (k) {
    case QK_OK: return 200;
    case QK_MALFORMED: return 400;
    case QK_UNAUTHENTICATED: return 401;
    case QK_FORBIDDEN: return 403;
    case QK_NOT_FOUND: return 404;
    case QK_CONFLICT: return 409;
    case QK_TOO_LARGE: return 413;
    case QK_INVALID: return 422;
    case QK_RATE_LIMITED: return 429;
    case QK_UNAVAILABLE: return 503;
    case QK_INTERNAL: break;
    }
    return 500;
}

void http_fail(http_response *rs, const qk_err *e)
{
    if (e->kind == QK_OK || !e->code) {
        /* A caller that failed without saying why: a bug, never a 200. */
        http_error(rs, 500, "internal", "internal error (see kmsd log)");
        return;
    }
    http_error(rs, http_status_of(e->kind), e->code, "%s", e->detail);
    if (e->retry_after > 0)
        rs->retry_after = e->retry_after;
}

void http_db_error(http_response *rs, db_status st)
{
    qk_err e;
    db_fail(&e, st);
    http_fail(rs, &e);
}

json_t *http_json_text(const char *s, size_t max)
{
    char buf[1024];
    size_t n = strnlen(s, max < sizeof(buf) / 3 ? max : sizeof(buf) / 3);
    utf8_sanitize(s, n, buf, sizeof(buf), NULL);
    return json_string(buf);
}

void http_text(http_response *rs, int status, const char *ct, char *text, size_t len)
{
    body_drop(rs);
    rs->status = status;
    rs->body = text;
    rs->body_len = len;
    rs->content_type = ct;
}

const char *http_query(http_request *rq, const char *key)
{
    return MHD_lookup_connection_value(rq->conn, MHD_GET_ARGUMENT_KIND, key);
}

struct query_count {
    const char *key;
    int n;
};

static enum MHD_Result count_arg(void *cls, enum MHD_ValueKind kind, const char *key,
                                 const char *value)
{
    struct query_count *q = cls;
    (void)kind;
    (void)value;
    if (key && !strcmp(key, q->key))
        q->n++;
    return MHD_YES;
}

int http_query_count(http_request *rq, const char *key)
{
    struct query_count q = {key, 0};
    MHD_get_connection_values(rq->conn, MHD_GET_ARGUMENT_KIND, count_arg, &q);
    return q.n;
}

struct query_each {
    const char *key;
    int (*fn)(void *, const char *);
    void *arg;
    int rc;
};

static enum MHD_Result each_arg(void *cls, enum MHD_ValueKind kind, const char *key,
                                const char *value)
{
    struct query_each *q = cls;
    (void)kind;
    if (key && !strcmp(key, q->key) && (q->rc = q->fn(q->arg, value ? value : "")) != 0)
        return MHD_NO;
    return MHD_YES;
}

int http_query_each(http_request *rq, const char *key, int (*fn)(void *arg, const char *value),
                    void *arg)
{
    struct query_each q = {key, fn, arg, 0};
    MHD_get_connection_values(rq->conn, MHD_GET_ARGUMENT_KIND, each_arg, &q);
    return q.rc;
}

bool http_confidential(const http_request *rq)
{
    /* A unix socket's bytes never leave the host, like loopback's. */
    return transport_confidential(rq->tls || rq->unix_socket, rq->client_ip);
}

_Static_assert(sizeof(((kms_ctx *)0)->rl) / sizeof(ratelimit *) == RL_NSCOPES, "kms_ctx.rl");

bool http_rate_limit(http_request *rq, http_response *rs, int scope, const char *key)
{
    static const char *const whose[RL_NSCOPES] = {"this device", "this client address",
                                                  "this token"};
    int ra = 0;
    if (scope < 0 || scope >= RL_NSCOPES || !rq->kms->rl[scope] ||
        ratelimit_take(rq->kms->rl[scope], key, ratelimit_now_ns(), &ra))
        return true;
    rs->retry_after = ra;
    http_error(rs, 429, "rate_limited", "too many requests from %s; retry in %d s", whose[scope],
               ra);
    /* The request line has the address and the token name, not the device. */
    if (scope == RL_DEVICE)
        http_log(rq, LOG_WARN, "device rate limited", "{s:s,s:i}", "device_id", key,
                 "retry_after", ra);
    return false;
}

json_t *http_body_object_opt(http_request *rq, http_response *rs)
{
    if (rq->body_len == 0)
        return json_object();
    return http_body_object(rq, rs);
}

json_t *http_body_object(http_request *rq, http_response *rs)
{
    json_error_t je;
    json_t *j;
    const char *ct = rq->content_type;
    size_t ctl;

    if (!ct) {
        http_error(rs, 415, "unsupported_media_type", "Content-Type must be application/json");
        return NULL;
    }
    ctl = strcspn(ct, ";");
    while (ctl > 0 && ct[ctl - 1] == ' ')
        ctl--;
    if (ctl != 16 || strncasecmp(ct, "application/json", 16) != 0) {
        http_error(rs, 415, "unsupported_media_type", "Content-Type must be application/json");
        return NULL;
    }
    if (rq->body_len == 0) {
        http_error(rs, 400, "malformed_json", "request body is empty");
        return NULL;
    }
    j = json_loadb(rq->body, rq->body_len, JSON_REJECT_DUPLICATES, &je);
    if (!j) {
        http_error(rs, 400, "malformed_json", "malformed JSON at line %d column %d: %s", je.line,
                   je.column, je.text);
        return NULL;
    }
    if (!json_is_object(j)) {
        json_decref(j);
        http_error(rs, 400, "malformed_json", "request body must be a JSON object");
        return NULL;
    }
    return j;
}

static bool seg_match(const char *pat, size_t pl, const char *seg, size_t sl)
{
    if (pl >= 2 && pat[0] == '{' && pat[pl - 1] == '}')
        return sl > 0;
    return pl == sl && memcmp(pat, seg, pl) == 0;
}

/* Match path against one pattern; on success fill params (pointing into
 * buf, which receives a NUL-separated copy of the path). */
static bool match(const char *pattern, const char *path, char *buf, size_t bl, const char **params,
                  int *np)
{
    const char *p = pattern, *s = path;
    size_t used = 0;
    int n = 0;
    while (*p == '/' && *s == '/') {
        const char *pe = strchr(p + 1, '/'), *se = strchr(s + 1, '/');
        size_t pl = pe ? (size_t)(pe - p - 1) : strlen(p + 1);
        size_t sl = se ? (size_t)(se - s - 1) : strlen(s + 1);
        if (!seg_match(p + 1, pl, s + 1, sl))
            return false;
        if (p[1] == '{') {
            if (n == HTTP_MAX_PARAMS || used + sl + 1 > bl)
                return false;
            memcpy(buf + used, s + 1, sl);
            buf[used + sl] = 0;
            params[n++] = buf + used;
            used += sl + 1;
        }
        p += pl + 1;
        s += sl + 1;
    }
    if (*p || *s)
        return false;
    *np = n;
    return true;
}

int http_route_find(const http_route *routes, int n, unsigned door, const char *method,
                    const char *path, char *buf, size_t bl, const char **params, int *np,
                    char *allow, size_t al)
{
    bool path_seen = false;
    if (allow && al)
        allow[0] = 0;
    for (int i = 0; i < n; i++) {
        /* Another listener's route does not exist here: 404, never 405. */
        if (!(routes[i].door & door))
            continue;
        if (!match(routes[i].pattern, path, buf, bl, params, np))
            continue;
        if (!strcmp(routes[i].method, method))
            return i;
        path_seen = true;
        if (allow && strlen(allow) + strlen(routes[i].method) + 3 < al) {
            if (allow[0])
                strcat(allow, ", ");
            strcat(allow, routes[i].method);
        }
    }
    return path_seen ? -405 : -404;
}

static void client_ip(struct MHD_Connection *c, char *out, size_t len)
{
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    snprintf(out, len, "?");
    if (!ci || !ci->client_addr)
        return;
    /* Every client of the admin unix socket is this one (log, rate limit). */
    if (ci->client_addr->sa_family == AF_UNIX)
        snprintf(out, len, "unix");
    else if (ci->client_addr->sa_family == AF_INET)
        inet_ntop(AF_INET, &((const struct sockaddr_in *)ci->client_addr)->sin_addr, out, (socklen_t)len);
    else if (ci->client_addr->sa_family == AF_INET6)
        inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)ci->client_addr)->sin6_addr, out, (socklen_t)len);
}

/* The path as logged: anything shaped like an admin token (a client that
 * put one in a URL by mistake) is replaced, since logs are read by more
 * people than tokens should be. */
void http_path_for_log(const char *path, char *out, size_t len)
{
    static const char mark[] = AUTH_TOKEN_PREFIX;
    size_t o = 0, ml = sizeof(mark) - 1;
    while (*path && o + 1 < len) {
        size_t hex = 0;
        if (!strncmp(path, mark, ml))
            while (isxdigit((unsigned char)path[ml + hex]))
                hex++;
        if (hex >= 16) {
            int n = snprintf(out + o, len - o, "%s<redacted>", mark);
            if (n < 0 || (size_t)n >= len - o)
                break;
            o += (size_t)n;
            path += ml + hex;
            continue;
        }
        out[o++] = *path++;
    }
    out[o] = 0;
}

static enum MHD_Result send_response(http_server *srv, struct MHD_Connection *conn, req_state *st,
                                     http_request *rq, http_response *rs)
{
    struct MHD_Response *r;
    enum MHD_Result ret;
    double secs;
    int route = st->route;
    const char *route_name = route >= 0 ? srv->routes[route].name : "unmatched";

    if (!rs->body && !rs->stream && rs->status != 204)
        http_error(rs, 500, "internal", "handler produced no response");
    if (rs->stream) {
        r = MHD_create_response_from_callback(rs->stream->total, 64 * 1024, stream_read,
                                              rs->stream, stream_free);
        if (!r) {
            body_drop(rs);
            return MHD_NO;
        }
        rs->stream = NULL; /* MHD owns it now */
    } else {
        r = MHD_create_response_from_buffer_with_free_callback(rs->body_len, rs->body,
                                                               free_body);
        if (!r) {
            body_drop(rs);
            return MHD_NO;
        }
        rs->body = NULL; /* MHD owns it now */
    }
    if (rs->content_type)
        MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, rs->content_type);
    MHD_add_response_header(r, "X-Request-Id", st->req_id);
    MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
    MHD_add_response_header(r, "X-Content-Type-Options", "nosniff");
    if (rs->allow[0])
        MHD_add_response_header(r, MHD_HTTP_HEADER_ALLOW, rs->allow);
    if (rs->provenance[0])
        MHD_add_response_header(r, "Qkms-Provenance", rs->provenance);
    for (int i = 0; i < 2; i++)
        if (rs->extra_name[i][0])
            MHD_add_response_header(r, rs->extra_name[i], rs->extra_value[i]);
    if (rs->retry_after > 0) {
        char ra[16];
        snprintf(ra, sizeof(ra), "%d", rs->retry_after);
        MHD_add_response_header(r, MHD_HTTP_HEADER_RETRY_AFTER, ra);
    }
    ret = MHD_queue_response(conn, (unsigned)rs->status, r);
    MHD_destroy_response(r);
    st->responded = true;

    secs = elapsed(&st->t0);
    metrics_observe(srv->kms->metrics, route, rs->status, secs);
    /* Probes would drown the log; they still count in metrics. */
    if (route < 0 || rs->status >= 400 || !srv->routes[route].probe || log_enabled(LOG_DEBUG)) {
        char logpath[HTTP_MAX_PATH + 16];
        http_path_for_log(rq->path, logpath, sizeof(logpath));
        log_emit(rs->status >= 500 ? LOG_WARN : LOG_INFO, "request",
                 "{s:s,s:s,s:s,s:s,s:i,s:f,s:s,s:s*,s:s*}", "req_id", st->req_id, "method",
                 rq->method, "route", route_name, "client", rq->client_ip, "status", rs->status,
                 "ms", (double)(long long)(secs * 1e6) / 1000.0, "path", logpath, "error", rs->err_code, "principal",
                 rq->who.name[0] ? rq->who.name : NULL);
    }
    return ret;
}

/* The client-address rate-limit key: the address itself, or for IPv6 its
 * /64, since one host commonly holds a whole /64 and could otherwise walk
 * through fresh buckets. An IPv4-mapped address counts as IPv4. */
void http_client_key(const char *ip, char *out, size_t len)
{
    struct in6_addr a6;
    char buf[INET6_ADDRSTRLEN];
    snprintf(out, len, "%s", ip);
    if (inet_pton(AF_INET6, ip, &a6) != 1 || IN6_IS_ADDR_V4MAPPED(&a6))
        return;
    memset(a6.s6_addr + 8, 0, 8);
    if (inet_ntop(AF_INET6, &a6, buf, sizeof(buf)))
        snprintf(out, len, "%s/64", buf);
}

/* The total size of the request's headers, as the client sent them. */
static enum MHD_Result add_header_size(void *cls, enum MHD_ValueKind kind, const char *key,
                                       const char *value)
{
    (void)kind;
    *(size_t *)cls += strlen(key) + (value ? strlen(value) : 0) + 4; /* ": " CRLF */
    return MHD_YES;
}

/* Content-Length as sent: a value that does not fit counts as too large. */
static bool content_length_over(struct MHD_Connection *conn, size_t cap)
{
    const char *cl = MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
                                                 MHD_HTTP_HEADER_CONTENT_LENGTH);
    unsigned long long v;
    char *end;
    if (!cl)
        return false;
    errno = 0;
    v = strtoull(cl, &end, 10);
    return errno == ERANGE || v > cap;
}

/* An .octets route: application/octet-stream with a Content-Length (the
 * gate checked it against the cap), and the one buffer of that size. */
static bool octets_gate(http_server *srv, struct MHD_Connection *conn, req_state *st,
                        http_response *rs)
{
    /* Twice http_max_upload_mb in all, and the route's room over it (a
     * package being checked): one budget for every raw upload. */
    unsigned long long cap = ((unsigned long long)srv->kms->cfg.http_max_upload_mb << 20) +
                             st->max_body,
                       held;
    const char *ct = MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
                                                 MHD_HTTP_HEADER_CONTENT_TYPE);
    const char *cl = MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
                                                 MHD_HTTP_HEADER_CONTENT_LENGTH);
    size_t ctl = ct ? strcspn(ct, ";") : 0;
    unsigned long long v;
    char *end;

    while (ctl > 0 && ct[ctl - 1] == ' ')
        ctl--;
    if (!ct || ctl != 24 || strncasecmp(ct, "application/octet-stream", 24) != 0) {
        http_error(rs, 415, "unsupported_media_type",
                   "Content-Type must be application/octet-stream");
        return false;
    }
    errno = 0;
    if (!cl || !*cl || (v = strtoull(cl, &end, 10), errno || *end)) {
        http_error(rs, 411, "length_required", "a Content-Length is required");
        return false;
    }
    held = atomic_fetch_add(&srv->octets_held, v);
    st->octets_counted = v;
    if (held + v > cap || !(st->octets = malloc(v ? (size_t)v : 1))) {
        http_error(rs, 503, "unavailable",
                   "other uploads hold the memory for this one now: retry later");
        rs->retry_after = 5;
        return false; /* on_completed gives the share back */
    }
    st->octets_cap = (size_t)v;
    return true;
}

/* The token a bearer header names. true with *who; false: rs holds the
 * 401 or 503. */
static bool bearer_principal(http_server *srv, const char *h, auth_principal *who,
                             http_response *rs)
{
    char tok[128];
    db_status ds;

    if (auth_bearer(h, tok, sizeof(tok)) != 0) {
        http_error(rs, 401, "unauthenticated", "missing or malformed bearer token");
        return false;
    }
    ds = auth_lookup(srv->kms->svc.db, tok, who);
    OPENSSL_cleanse(tok, sizeof(tok));
    if (ds == DB_NOT_FOUND) {
        http_error(rs, 401, "unauthenticated", "unknown, expired or revoked token");
        return false;
    }
    if (ds != DB_OK) {
        rs->retry_after = 1;
        http_error(rs, 503, "unavailable", "database unavailable");
        return false;
    }
    return true;
}

/* The principal (a client certificate bound to a token, on a listener with
 * admin_tls_client_auth; else the bearer token), its rate limit and the
 * route's role. false: rs holds 401/403/429/503. */
static bool authenticate(const http_listener *l, struct MHD_Connection *conn, req_state *st,
                         http_request *rq, http_response *rs)
{
    http_server *srv = l->srv;
    const http_route *rt = &srv->routes[st->route];
    const char *h = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
    bool by_cert = false;

    if (l->admin_client_auth != TLS_CLIENT_NONE) {
        const union MHD_ConnectionInfo *ci =
            MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
        log_ctx lc = http_log_ctx(rq);
        qk_err e;
        if (tlsauth_admin(&srv->kms->svc, conn, l->admin_client_auth,
                          ci ? ci->socket_context : NULL, &lc, &st->who, &by_cert, &e) != QK_OK) {
            http_fail(rs, &e);
            return false;
        }
    }
    if (by_cert && h) {
        /* Both: they must name one principal. */
        auth_principal bw;
        if (!bearer_principal(srv, h, &bw, rs))
            return false;
        if (bw.id != st->who.id) {
            http_log(rq, LOG_WARN, "client certificate refused", "{s:s,s:s,s:s}", "reason",
                     "the bearer token is another token than the certificate's", "code",
                     "certificate_mismatch", "certificate_token", st->who.name);
            http_error(rs, 401, "certificate_mismatch",
                       "the bearer token is another admin token than the client certificate's");
            return false;
        }
    } else if (!by_cert && !bearer_principal(srv, h, &st->who, rs)) {
        return false;
    }
    rq->who = st->who;
    /* The route's scope, keyed by the token's name (RL_ADMIN). */
    if (rt->rl_scope != RL_NONE && !http_rate_limit(rq, rs, rt->rl_scope, st->who.name))
        return false;
    if (!(rt->roles & st->who.role)) {
        /* A token trying what its role may not (a crypto token signing a
         * release, an operator rotating the master key) is a security
         * event: audited, whatever else happens. */
        db_status ast = audit_append_alone(
            srv->kms->svc.db, st->who.name, "auth.forbidden",
            json_pack("{s:s,s:s,s:s}", "method", rt->method, "route", rt->pattern, "role",
                      auth_role_name(st->who.role)));
        if (ast != DB_OK)
            http_log(rq, LOG_WARN, "a refused request could not be audited", "{s:s,s:s}",
                     "route", rt->pattern, "error", db_status_name(ast));
        http_error(rs, 403, "forbidden", "role %s may not use this route",
                   auth_role_name(st->who.role));
        return false;
    }
    return true;
}

/*
 * Everything decided before a byte of the body is read (first callback):
 * path and header limits, the route, the client-address rate limit, the
 * bearer token and role, and the body cap. Doing it here means a client
 * without credentials can make kmsd buffer at most http_max_body bytes,
 * whatever the route would allow an authenticated one (an import may carry
 * megabytes), and every guessed token first costs a rate-limit token.
 * true: go on and read the body; false: rs holds the answer.
 */
static bool gate(const http_listener *l, struct MHD_Connection *conn, req_state *st,
                 http_request *rq, http_response *rs)
{
    http_server *srv = l->srv;
    char allow[64], key[80];
    size_t hdr = 0;
    int idx;

    st->max_body = srv->max_body;
    if (strlen(rq->path) > HTTP_MAX_PATH) {
        http_error(rs, 414, "uri_too_long", "request path longer than %d bytes", HTTP_MAX_PATH);
        return false;
    }
    MHD_get_connection_values(conn, MHD_HEADER_KIND, add_header_size, &hdr);
    if (hdr > HTTP_MAX_HEADER_BYTES) {
        http_error(rs, 431, "headers_too_large", "request headers exceed %d bytes",
                   HTTP_MAX_HEADER_BYTES);
        return false;
    }
    idx = http_route_find(srv->routes, srv->nroutes, l->door, rq->method, rq->path, st->pathbuf,
                          sizeof(st->pathbuf), st->params, &st->nparams, allow, sizeof(allow));
    if (idx == -405) {
        snprintf(rs->allow, sizeof(rs->allow), "%s", allow);
        http_error(rs, 405, "method_not_allowed", "method %s not allowed here (allowed: %s)",
                   rq->method, allow);
        return false;
    }
    if (idx < 0) {
        http_error(rs, 404, "not_found", "no such route");
        return false;
    }
    st->route = idx;
    /* Per client address before any parsing, key or database work. */
    http_client_key(st->client_ip, key, sizeof(key));
    if (!srv->routes[idx].probe && !http_rate_limit(rq, rs, RL_CLIENT, key))
        return false;
    if (srv->routes[idx].client_cert && l->client_auth != TLS_CLIENT_NONE) {
        const union MHD_ConnectionInfo *ci =
            MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
        log_ctx lc = http_log_ctx(rq);
        qk_err e;
        if (tlsauth_check(&srv->kms->svc, conn, l->client_auth, ci ? ci->socket_context : NULL,
                          &lc, &st->cert, &e) != QK_OK) {
            http_fail(rs, &e);
            return false;
        }
        rq->cert = st->cert;
    }
    if (srv->routes[idx].roles && !authenticate(l, conn, st, rq, rs))
        return false;
    if (srv->routes[idx].max_body && !srv->routes[idx].octets)
        st->max_body = srv->routes[idx].max_body;
    if (srv->routes[idx].octets) /* max_body: the room over the upload cap */
        st->max_body =
            ((size_t)srv->kms->cfg.http_max_upload_mb << 20) + srv->routes[idx].max_body;
    if (content_length_over(conn, st->max_body)) {
        http_error(rs, 413, "payload_too_large", "request body exceeds %zu bytes", st->max_body);
        return false;
    }
    if (srv->routes[idx].octets && !octets_gate(srv, conn, st, rs))
        return false;
    return true;
}

static void request_init(http_request *rq, const http_listener *l, struct MHD_Connection *conn,
                         req_state *st, const char *url, const char *method)
{
    memset(rq, 0, sizeof(*rq));
    rq->kms = l->srv->kms;
    rq->method = method;
    rq->path = url;
    /* qbuf keeps the body NUL-terminated; "" when there is none. */
    rq->body = st->body ? qbuf_str(st->body) : "";
    rq->body_len = st->body ? qbuf_len(st->body) : 0;
    if (st->octets) {
        rq->body = (const char *)st->octets;
        rq->body_len = st->octets_len;
        rq->octets = &st->octets;
    }
    rq->tls = l->tls;
    rq->unix_socket = l->unix_path != NULL;
    rq->content_type = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_TYPE);
    rq->conn = conn;
    rq->who = st->who;
    rq->cert = st->cert;
    snprintf(rq->req_id, sizeof(rq->req_id), "%s", st->req_id);
    snprintf(rq->client_ip, sizeof(rq->client_ip), "%s", st->client_ip);
    for (int i = 0; i < st->nparams; i++)
        rq->params[i] = st->params[i];
    rq->nparams = st->nparams;
}

static req_state *state_new(http_server *srv, struct MHD_Connection *conn)
{
    req_state *st = calloc(1, sizeof(*st));
    const char *rid;
    if (!st)
        return NULL;
    clock_gettime(CLOCK_MONOTONIC, &st->t0);
    st->route = -1;
    rid = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "X-Request-Id");
    if (http_request_id_ok(rid)) {
        snprintf(st->req_id, sizeof(st->req_id), "%s", rid);
    } else {
        uint8_t r[16];
        RAND_bytes(r, sizeof(r));
        qkms_hex_encode(r, sizeof(r), st->req_id);
    }
    client_ip(conn, st->client_ip, sizeof(st->client_ip));
    atomic_fetch_add(&srv->inflight, 1);
    metrics_inflight(srv->kms->metrics, 1);
    return st;
}

/* Append an upload chunk; past the route's cap only a flag is kept (answer
 * 413). The qbuf wipes what it held when it grows and when it is freed:
 * bodies may carry tokens or wrapped keys. false: out of memory. */
static bool body_append(req_state *st, const char *data, size_t n)
{
    int r;
    if (st->too_large)
        return true;
    if (st->octets) { /* exactly Content-Length bytes: MHD sends no more */
        if (n > st->octets_cap - st->octets_len) {
            st->too_large = true;
            return true;
        }
        memcpy(st->octets + st->octets_len, data, n);
        st->octets_len += n;
        return true;
    }
    if (!st->body && !(st->body = qbuf_new(st->max_body, 0)))
        return false;
    r = qbuf_put(st->body, data, n);
    if (r == QBUF_E_LIMIT)
        st->too_large = true;
    return r != QBUF_E_NOMEM;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version, const char *upload,
                                  size_t *upload_size, void **con_cls)
{
    const http_listener *l = cls;
    http_server *srv = l->srv;
    req_state *st = *con_cls;
    http_request rq;
    http_response rs;
    enum MHD_Result ret;
    (void)version;

    memset(&rs, 0, sizeof(rs));
    if (!st) {
        if (!(st = state_new(srv, conn)))
            return MHD_NO;
        *con_cls = st;
        request_init(&rq, l, conn, st, url, method);
        if (gate(l, conn, st, &rq, &rs))
            return MHD_YES; /* read the body, then the handler */
        /* Refused before a byte of the body was read. */
        ret = send_response(srv, conn, st, &rq, &rs);
        body_drop(&rs);
        return ret;
    }
    if (*upload_size) {
        if (!body_append(st, upload, *upload_size))
            return MHD_NO;
        *upload_size = 0;
        return MHD_YES;
    }
    if (st->responded)
        return MHD_YES;
    request_init(&rq, l, conn, st, url, method);
    if (st->too_large)
        http_error(&rs, 413, "payload_too_large", "request body exceeds %zu bytes", st->max_body);
    else
        srv->routes[st->route].fn(&rq, &rs);
    ret = send_response(srv, conn, st, &rq, &rs);
    body_drop(&rs);
    return ret;
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    http_server *srv = ((const http_listener *)cls)->srv;
    req_state *st = *con_cls;
    (void)conn;
    (void)toe;
    if (!st)
        return;
    qbuf_free(st->body); /* wipes: bodies may carry wrapped keys or tokens */
    if (st->octets) { /* not taken over by the handler */
        OPENSSL_cleanse(st->octets, st->octets_len);
        free(st->octets);
    }
    /* A taken-over body lives on in the answer being sent, which ends
     * before the request completes. */
    atomic_fetch_sub(&srv->octets_held, st->octets_counted);
    free(st);
    *con_cls = NULL;
    atomic_fetch_sub(&srv->inflight, 1);
    metrics_inflight(srv->kms->metrics, -1);
}

static void on_mhd_log(void *cls, const char *fm, va_list ap)
{
    char msg[512];
    size_t n;
    (void)cls;
    vsnprintf(msg, sizeof(msg), fm, ap);
    n = strlen(msg);
    while (n && msg[n - 1] == '\n')
        msg[--n] = 0;
    log_emit(LOG_WARN, "libmicrohttpd", "{s:s}", "detail", msg);
}

static char *slurp(const char *path)
{
    FILE *f = fopen(path, "rb");
    char *buf = NULL;
    long n;
    if (!f)
        return NULL;
    if (fseek(f, 0, SEEK_END) == 0 && (n = ftell(f)) > 0 && n < (1 << 20) && fseek(f, 0, SEEK_SET) == 0) {
        buf = calloc(1, (size_t)n + 1);
        if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) {
            free(buf);
            buf = NULL;
        }
    }
    fclose(f);
    return buf;
}

/* What one listener is configured to be (from kms_config). */
typedef struct {
    const char *opt;       /* "" or "admin_": its options' prefix, for errors */
    unsigned door;
    const char *addr;      /* TCP, or NULL with unix_path */
    int port;
    const char *unix_path;
    const char *cert, *key; /* TLS files, or NULL */
} listen_spec;

/* The listeners kms->cfg asks for: one serving every door, or the device
 * listener and the admin listener; then the metrics listener if asked for.
 * Returns how many. */
static int listen_specs(const kms_config *c, listen_spec sp[HTTP_MAX_LISTENERS])
{
    int n = 0;
    if (!config_admin_apart(c)) {
        sp[n++] = (listen_spec){"", DOOR_ALL, c->listen_addr, c->listen_port, NULL,
                                c->tls_cert_file, c->tls_key_file};
    } else {
        sp[n++] = (listen_spec){"", DOOR_DEVICE, c->listen_addr, c->listen_port, NULL,
                                c->tls_cert_file, c->tls_key_file};
        sp[n++] = (listen_spec){"admin_", DOOR_ADMIN, c->admin_listen_addr, c->admin_listen_port,
                                c->admin_listen_unix, c->admin_tls_cert_file,
                                c->admin_tls_key_file};
    }
    if (c->metrics_listen_addr)
        sp[n++] = (listen_spec){"metrics_", DOOR_METRICS, c->metrics_listen_addr,
                                c->metrics_listen_port, NULL, NULL, NULL};
    return n;
}

static void listener_free(http_listener *l)
{
    if (l->d)
        MHD_stop_daemon(l->d);
    l->d = NULL;
    if (l->unix_path)
        listen_unix_remove(l->unix_path, &l->unix_id);
    free(l->unix_path);
    l->unix_path = NULL;
    if (l->tls_key) {
        OPENSSL_cleanse(l->tls_key, strlen(l->tls_key));
        free(l->tls_key);
    }
    free(l->tls_cert);
    free(l->tls_trust);
    l->tls_key = l->tls_cert = l->tls_trust = NULL;
}

/* The socket options: an address MHD binds, or the unix socket we bind.
 * Appends to opts; 0, or -1 with err. */
static int listener_socket(http_listener *l, const listen_spec *sp, struct sockaddr_storage *ss,
                           unsigned *flags, struct MHD_OptionItem *opts, int *no, char *err,
                           size_t el)
{
    const kms_config *c = &l->srv->kms->cfg;
    bool v6;
    int fd;

    if (sp->unix_path) {
        fd = listen_unix_open(sp->unix_path, &l->unix_id, err, el);
        if (fd < 0)
            return -1;
        if (!(l->unix_path = strdup(sp->unix_path))) {
            close(fd);
            unlink(sp->unix_path);
            snprintf(err, el, "out of memory");
            return -1;
        }
        opts[(*no)++] = (struct MHD_OptionItem){MHD_OPTION_LISTEN_SOCKET, fd, NULL};
        return 0;
    }
    if (listen_tcp_addr(sp->addr, sp->port, ss, &v6) != 0) {
        snprintf(err, el, "%slisten_addr '%s' is not an IPv4 or IPv6 address", sp->opt,
                 sp->addr ? sp->addr : "");
        return -1;
    }
    if (v6)
        *flags |= MHD_USE_IPv6;
    opts[(*no)++] = (struct MHD_OptionItem){MHD_OPTION_SOCK_ADDR, 0, ss};
    opts[(*no)++] =
        (struct MHD_OptionItem){MHD_OPTION_PER_IP_CONNECTION_LIMIT, c->http_per_ip_connections, NULL};
    return 0;
}

/* The issuers a client certificate may name, as one PEM text: the platform
 * CA's certificates and tls_client_ca_file's. NULL with err. */
static char *client_trust_pem(kms_ctx *kms, char *err, size_t el)
{
    const char *other = trust_pem(kms->svc.trust);
    char *ca = NULL, *all = NULL;
    size_t cl = 0, ol = other ? strlen(other) : 0;
    qk_err e;

    if (ca_chain_pem(kms->svc.ca, &ca, &cl, &e) != QK_OK) {
        snprintf(err, el, "platform CA: %s", e.detail);
        return NULL;
    }
    if ((all = malloc(cl + ol + 2))) {
        memcpy(all, ca, cl);
        all[cl] = '\n';
        memcpy(all + cl + 1, other ? other : "", ol);
        all[cl + 1 + ol] = 0;
    } else {
        snprintf(err, el, "out of memory");
    }
    free(ca);
    return all;
}

/* A connection opens or closes: its tlsauth memo (client_auth listeners). */
static void on_connection(void *cls, struct MHD_Connection *conn, void **socket_context,
                          enum MHD_ConnectionNotificationCode code)
{
    (void)cls;
    (void)conn;
    if (code == MHD_CONNECTION_NOTIFY_STARTED) {
        *socket_context = tlsauth_memo_new();
    } else if (code == MHD_CONNECTION_NOTIFY_CLOSED) {
        tlsauth_memo_free(*socket_context);
        *socket_context = NULL;
    }
}

static int listener_tls(http_listener *l, const listen_spec *sp, unsigned *flags,
                        struct MHD_OptionItem *opts, int *no, char *err, size_t el)
{
    if (!sp->cert)
        return 0;
    l->tls_cert = slurp(sp->cert);
    l->tls_key = slurp(sp->key);
    if (!l->tls_cert || !l->tls_key) {
        snprintf(err, el, "cannot read %stls_cert_file or %stls_key_file", sp->opt, sp->opt);
        return -1;
    }
    l->tls = true;
    *flags |= MHD_USE_TLS;
    opts[(*no)++] = (struct MHD_OptionItem){MHD_OPTION_HTTPS_MEM_CERT, 0, l->tls_cert};
    opts[(*no)++] = (struct MHD_OptionItem){MHD_OPTION_HTTPS_MEM_KEY, 0, l->tls_key};
    if (sp->door & DOOR_DEVICE)
        l->client_auth = tlsauth_mode(l->srv->kms->cfg.tls_client_auth);
    if (sp->door & DOOR_ADMIN)
        l->admin_client_auth = tlsauth_mode(l->srv->kms->cfg.admin_tls_client_auth);
    if (l->client_auth == TLS_CLIENT_NONE && l->admin_client_auth == TLS_CLIENT_NONE)
        return 0;
    if (!(l->tls_trust = client_trust_pem(l->srv->kms, err, el)))
        return -1;
    /* With a trust list GnuTLS asks the client for a certificate (naming
     * these issuers) but, as MHD never verifies it, a handshake without
     * one goes on: tlsauth answers for it, in JSON. */
    opts[(*no)++] = (struct MHD_OptionItem){MHD_OPTION_HTTPS_MEM_TRUST, 0, l->tls_trust};
    opts[(*no)++] = (struct MHD_OptionItem){MHD_OPTION_NOTIFY_CONNECTION, (intptr_t)on_connection, l};
    return 0;
}

/* Start one MHD daemon for sp. On failure l holds what to free. */
static int listener_start(http_listener *l, const listen_spec *sp, char *err, size_t el)
{
    const kms_config *c = &l->srv->kms->cfg;
    struct sockaddr_storage ss;
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ITC | MHD_USE_ERROR_LOG;
    struct MHD_OptionItem opts[20];
    int no = 0;

    l->door = sp->door;
    /* The logger must come first or MHD prints early messages itself. */
    opts[no++] = (struct MHD_OptionItem){MHD_OPTION_EXTERNAL_LOGGER, (intptr_t)on_mhd_log, NULL};
    if (!strcmp(c->http_threading, "connection")) {
        flags |= MHD_USE_THREAD_PER_CONNECTION | MHD_USE_POLL;
    } else {
        flags |= MHD_USE_EPOLL;
        opts[no++] = (struct MHD_OptionItem){MHD_OPTION_THREAD_POOL_SIZE, c->http_threads, NULL};
    }
    if (listener_socket(l, sp, &ss, &flags, opts, &no, err, el) != 0 ||
        listener_tls(l, sp, &flags, opts, &no, err, el) != 0)
        return -1;
    opts[no++] = (struct MHD_OptionItem){MHD_OPTION_CONNECTION_LIMIT, c->http_max_connections, NULL};
    opts[no++] = (struct MHD_OptionItem){MHD_OPTION_CONNECTION_TIMEOUT, c->http_timeout, NULL};
    opts[no++] = (struct MHD_OptionItem){MHD_OPTION_NOTIFY_COMPLETED, (intptr_t)on_completed, l};
    opts[no++] = (struct MHD_OptionItem){MHD_OPTION_LISTEN_BACKLOG_SIZE, 1024, NULL};
    opts[no++] = (struct MHD_OptionItem){MHD_OPTION_END, 0, NULL};

    l->d = MHD_start_daemon(flags, sp->unix_path ? 0 : (uint16_t)sp->port, NULL, NULL, on_request,
                            l, MHD_OPTION_ARRAY, opts, MHD_OPTION_END);
    if (!l->d) {
        if (sp->unix_path)
            snprintf(err, el, "cannot serve on %s (bad TLS files?)", sp->unix_path);
        else
            snprintf(err, el, "cannot listen on %s:%d (address in use, or bad TLS files?)",
                     sp->addr, sp->port);
        return -1;
    }
    return 0;
}

/* Every route must say where it is served and which limit applies. */
static int routes_check(const http_route *routes, int n, char *err, size_t el)
{
    for (int i = 0; i < n; i++) {
        const http_route *r = &routes[i];
        if ((r->door & DOOR_ALL) == 0 || (r->door & ~(unsigned)(DOOR_ALL | DOOR_METRICS)) ||
            r->rl_scope < RL_NONE || r->rl_scope >= RL_NSCOPES || r->rl_scope == RL_CLIENT) {
            snprintf(err, el, "route %s %s: bad door or rate-limit scope", r->method, r->pattern);
            return -1;
        }
    }
    return 0;
}

int http_start(http_server **out, kms_ctx *kms, const http_route *routes, int nroutes, char *err,
               size_t el)
{
    listen_spec sp[HTTP_MAX_LISTENERS];
    http_server *s;
    int n;

    if (routes_check(routes, nroutes, err, el) != 0)
        return -1;
    if (!(s = calloc(1, sizeof(*s)))) {
        snprintf(err, el, "out of memory");
        return -1;
    }
    s->kms = kms;
    s->routes = routes;
    s->nroutes = nroutes;
    s->max_body = (size_t)kms->cfg.http_max_body;
    n = listen_specs(&kms->cfg, sp);
    for (s->nl = 0; s->nl < n; s->nl++) {
        s->l[s->nl].srv = s;
        if (listener_start(&s->l[s->nl], &sp[s->nl], err, el) != 0) {
            s->nl++; /* free this one's parts too */
            http_stop(s);
            return -1;
        }
    }
    *out = s;
    return 0;
}

void http_quiesce(http_server *s)
{
    for (int i = 0; i < s->nl; i++) {
        MHD_socket fd = MHD_quiesce_daemon(s->l[i].d);
        if (fd != MHD_INVALID_SOCKET)
            close(fd);
    }
}

int http_inflight(http_server *s) { return atomic_load(&s->inflight); }

void http_stop(http_server *s)
{
    if (!s)
        return;
    for (int i = 0; i < s->nl; i++)
        listener_free(&s->l[i]);
    free(s);
}
