/*
 * http — the HTTP API server (libmicrohttpd), routing, auth gate and the
 * one error shape.
 *
 * Contract:
 *  - Every response is JSON (except /metrics) and every error is
 *    {"error":{"code":"<stable_code>","message":"<text>"}} with the right
 *    status; each response carries X-Request-Id and Cache-Control: no-store.
 *  - Before a byte of the body is read (first callback), in this order: a
 *    path over 1024 bytes is 414 uri_too_long, headers over 8 KiB are 431
 *    headers_too_large, then the route among this listener's (404/405), the
 *    client-address rate limit (every route but the probes; IPv6 clients by
 *    /64), on a .client_cert route of a listener with tls_client_auth the
 *    client certificate (api/tlsauth.h: 401, 503), and for a route with
 *    roles != 0 the principal: a client certificate bound to a token on a
 *    listener with admin_tls_client_auth, else the Bearer token (401
 *    without or with an unknown token, 503 when the database cannot say),
 *    then the route's rate-limit scope (.rl_scope: admin) per token name
 *    and the role (403). Only then does the route's own body cap (an import
 *    allows megabytes) replace http_max_body: an unauthenticated client can
 *    make kmsd buffer at most http_max_body bytes per request.
 *  - Bodies larger than the cap get 413 (by Content-Length before any byte
 *    is read, a Content-Length that does not fit in 64 bits included, or as
 *    soon as a chunked body grows past it); bodies on POST/PUT/PATCH must be
 *    application/json (415) and parse (400).
 *  - Over a rate limit: 429 rate_limited with Retry-After (docs/operations.md).
 *  - Error messages may quote client input: it is made valid UTF-8 first
 *    (utf8.h), so an answer is never lost to the bytes it reports.
 *  - Handlers run on MHD's threads; with http_threading=connection each
 *    connection has its own thread, so a handler may block on PostgreSQL or
 *    the token without stalling other clients.
 *  - One JSON log line per request: id, method, route, status, latency.
 *  - Listeners: one (listen_addr:listen_port) serving every route, or, when
 *    admin_listen_addr or admin_listen_unix is set, two MHD daemons: the
 *    device listener serves the routes whose .door has DOOR_DEVICE, the
 *    admin listener (TCP or a unix socket) those with DOOR_ADMIN, each with
 *    its own TLS settings. A route another listener serves is 404
 *    not_found here, as if it did not exist (the route table's .door).
 *    metrics_listen_addr adds a plain-HTTP listener serving the routes
 *    with DOOR_METRICS (/metrics and the probes) and nothing else.
 */
#ifndef QKMS_HTTP_H
#define QKMS_HTTP_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>

#include <jansson.h>

#include "err.h"
#include "log.h"
#include "service/auth.h"
#include "service/certs.h"
#include "api/context.h"
#include "api/ratelimit.h"

#define HTTP_MAX_PARAMS 4

/* Which listener serves a route (http_route.door, a mask). */
enum {
    DOOR_DEVICE = 1u << 0, /* the device protocol; devices' network */
    DOOR_ADMIN = 1u << 1,  /* admin API, /metrics; operators' network */
    DOOR_ALL = DOOR_DEVICE | DOOR_ADMIN,
    /* metrics_listen_addr: /metrics and the probes only, for a scraper on
     * a network that must reach nothing else. A route has it besides
     * DOOR_ADMIN or DOOR_ALL, never alone. */
    DOOR_METRICS = 1u << 2,
};

typedef struct http_request {
    kms_ctx *kms;
    const char *method;
    const char *path;
    const char *params[HTTP_MAX_PARAMS]; /* captured {} segments */
    int nparams;
    const char *body;
    size_t body_len;
    const char *content_type;
    char req_id[65];
    char client_ip[64];
    auth_principal who; /* valid when the route requires a role */
    cert_principal cert; /* the client certificate's device, on a .client_cert
                          * route of a listener with tls_client_auth; else
                          * device_id is "" (api/tlsauth.h) */
    void *conn;         /* struct MHD_Connection * */
    uint8_t **octets;   /* an .octets route: the body's buffer, which the
                         * handler may take over (set *octets NULL) */
    bool tls;           /* the listener it came in on speaks TLS */
    bool unix_socket;   /* it came over the admin unix socket (client_ip "unix") */
} http_request;

typedef struct http_response {
    int status;
    char *body; /* malloc'd */
    size_t body_len;
    const char *content_type;
    const char *err_code; /* for the log line */
    char allow[64];
    int retry_after;
    char provenance[64]; /* Qkms-Provenance: where random bytes came from ("" none) */
    struct http_stream *stream; /* instead of body: an answer produced as it is sent */
    char extra_name[2][32], extra_value[2][96]; /* more headers ("" none) */
} http_response;

/* An answer too large to build in memory: total bytes, produced in order by
 * read (pos: how many were produced before; fills up to max into buf and
 * returns how many, 0 < n; -1 aborts the connection), freed by release
 * once the server is done with it (sent or not). http_stream_answer hands
 * one to the response. */
typedef struct http_stream {
    uint64_t total;
    long (*read)(void *ctx, uint64_t pos, char *buf, size_t max);
    void (*release)(void *ctx);
    void *ctx;
} http_stream;
/* rs answers status with st (malloc'd; owned by the response from now on,
 * released even when the answer is never sent) as content_type. */
void http_stream_answer(http_response *rs, int status, const char *content_type, http_stream *st);

typedef void (*http_handler)(http_request *rq, http_response *rs);

typedef struct {
    const char *method;
    const char *pattern; /* "/v1/admin/tokens/{name}": {x} matches one segment */
    const char *name;    /* metrics label */
    unsigned roles;      /* ROLE_* mask; 0 = no authentication */
    http_handler fn;
    size_t max_body;     /* 0 = http_max_body */
    bool probe;          /* answered from memory, no body: no client rate limit,
                          * so a load balancer's probes are never refused; and
                          * logged only when it fails */
    unsigned door;       /* DOOR_* mask: the listeners that serve it (not 0) */
    int rl_scope;        /* the per-principal rate limit (ratelimit.h): RL_ADMIN
                          * is taken by the gate, keyed by the token's name, once
                          * the bearer token is known; RL_DEVICE by the device
                          * handlers once the envelope has authenticated; RL_NONE:
                          * only the client-address limit (none for probes) */
    bool client_cert;    /* the listener's tls_client_auth applies (api/tlsauth.h):
                          * the device protocol's routes */
    bool octets;         /* the body is raw bytes (application/octet-stream) with a
                          * Content-Length (411 without), read once into a buffer
                          * of exactly that size (rq->octets), up to
                          * http_max_upload_mb MiB plus max_body (the room a
                          * firmware package takes over its image) */
} http_route;

/* Start the listener(s) of kms->cfg (see the contract above) serving
 * routes. Every route must name a door and a scope other than RL_CLIENT
 * (which the gate applies to all but probes). 0, or -1 with err. */
int http_start(http_server **out, kms_ctx *kms, const http_route *routes, int nroutes, char *err,
               size_t errlen);
/* Stop accepting connections on every listener; in-flight requests go on. */
void http_quiesce(http_server *s);
/* Requests in progress on all listeners. */
int http_inflight(http_server *s);
/* Stop every listener (removing the admin unix socket); NULL is a no-op. */
void http_stop(http_server *s);

/* Response helpers. http_json steals the reference to body. */
void http_json(http_response *rs, int status, json_t *body);
/* An error message from fmt, cut to fit and made valid UTF-8 (each bad
 * byte U+FFFD): what http_error and the ETSI door's Error object say. */
#define HTTP_MESSAGE_MAX 1536
void http_vmessage(char msg[HTTP_MESSAGE_MAX], const char *fmt, va_list ap);
void http_error(http_response *rs, int status, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
void http_text(http_response *rs, int status, const char *content_type, char *text, size_t len);
/* The one mapping of the error currency (err.h) to HTTP: the kind decides
 * the status, the code and detail become the error body, retry_after the
 * Retry-After header. A qk_err still QK_OK answers 500 internal. */
void http_fail(http_response *rs, const qk_err *e);
int http_status_of(qk_kind k);
/* A storage failure answered through the same mapping (db_fail, then
 * http_fail): 503 with Retry-After for an outage, 500 else. */
void http_db_error(http_response *rs, db_status st);
/* A request's log context (log.h): its req_id, the client's address and,
 * once the gate authenticated a token, its name. http_log writes a line
 * with it: every line a door writes about a request carries them. */
log_ctx http_log_ctx(const http_request *rq);
void http_log(const http_request *rq, log_level l, const char *msg, const char *fmt, ...);
/* A JSON string of at most max bytes of s, made valid UTF-8 (utf8.h): for
 * echoing client input in an answer. Never NULL unless out of memory. */
json_t *http_json_text(const char *s, size_t max);
/* Parse the body as a JSON object; on failure sets the error response and
 * returns NULL. Caller decrefs. */
json_t *http_body_object(http_request *rq, http_response *rs);
/* Like http_body_object, but an empty body (with or without a content type)
 * is an empty object: for actions whose parameters are all optional. */
json_t *http_body_object_opt(http_request *rq, http_response *rs);
/* A query-string argument, or NULL (the first, when it is repeated). */
const char *http_query(http_request *rq, const char *key);
/* How many times the query string names key. */
int http_query_count(http_request *rq, const char *key);
/* fn(arg, value) for each value of key in the query string, in order,
 * until one returns non-zero: that, or 0. */
int http_query_each(http_request *rq, const char *key, int (*fn)(void *arg, const char *value),
                    void *arg);
/* Take a token from the rate limit of scope (rl_scope, ratelimit.h) for key.
 * true: go on; false: rs is 429 rate_limited with Retry-After. The gate
 * applies the client scope (every route but probes) and a route's .rl_scope
 * when it authenticates the bearer token; device handlers apply the device
 * scope once a request has authenticated. */
bool http_rate_limit(http_request *rq, http_response *rs, int scope, const char *key);
/* Body text must be NUL-terminated: it is zeroized when MHD frees it.
 * The request body (rq->body) is NUL-terminated too, body_len bytes before
 * the NUL ("" when there is none). */

/* Whether the request's connection may carry key material in clear: its
 * listener speaks TLS, it came over the unix socket, or the client is on a
 * loopback address (transport.h). */
bool http_confidential(const http_request *rq);

/* The client-address rate-limit key of ip: ip itself, or "<prefix>::/64"
 * for IPv6 (IPv4-mapped addresses count as IPv4). Pure; unit-tested. */
void http_client_key(const char *ip, char *out, size_t len);

/* path as it may be logged: every "qkms_" followed by 16 or more hex
 * digits (an admin token put in a URL) becomes "qkms_<redacted>"; cut to
 * fit out. Pure; unit-tested. */
void http_path_for_log(const char *path, char *out, size_t len);

/* Routing (pure; unit-tested) among the routes served at door (a DOOR_*
 * mask; the others do not exist there). Returns the route index, -404 when
 * no path matches, -405 when the path matches only under other methods
 * (their names are written to allow). params point into pathbuf. */
int http_route_find(const http_route *routes, int n, unsigned door, const char *method,
                    const char *path, char *pathbuf, size_t pathbuf_len, const char **params,
                    int *nparams, char *allow, size_t allow_len);
/* Whether s is an acceptable client-supplied request id. */
bool http_request_id_ok(const char *s);

#endif
