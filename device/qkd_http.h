/*
 * qkd_http — an optional libcurl transport for qkms_device: one JSON POST,
 * its HTTP status and body. Devices with their own HTTP stack skip this
 * module and hand qkms_device the bytes themselves.
 *
 * Contract:
 *  - Speaks only http and https, never follows redirects (a 3xx is returned
 *    as is), verifies TLS certificate and host name always (the CA file is
 *    optional: the system store otherwise), sends no Expect: 100-continue.
 *  - With cert and key it presents that client certificate (mutual TLS,
 *    docs/pki.md); with pin_sha256 the server's public key must also be the
 *    pinned one (base64 of the SHA-256 of its SubjectPublicKeyInfo, DER; a
 *    list separated by ';' pins several), else the exchange fails before a
 *    byte of the request is sent.
 *  - The response body is read up to QKD_HTTP_BODY_MAX bytes; a larger one
 *    fails the exchange (QKD_HTTP_TOO_LARGE) rather than being truncated.
 *  - Every status is a completed exchange (QKD_HTTP_OK); interpreting it is
 *    the caller's business.
 *  - Call qkd_http_global_init once before the first request (libcurl's
 *    global state), qkd_http_global_cleanup once at the end.
 */
#ifndef QKD_HTTP_H
#define QKD_HTTP_H

#include <stddef.h>

#define QKD_HTTP_BODY_MAX (64 * 1024)
#define QKD_HTTP_DEFAULT_TIMEOUT 30

enum {
    QKD_HTTP_OK = 0,
    QKD_HTTP_TRANSPORT = -1, /* connect, DNS, TLS, timeout, bad URL */
    QKD_HTTP_TOO_LARGE = -2, /* response body over QKD_HTTP_BODY_MAX */
    QKD_HTTP_NOMEM = -3,
};

typedef struct {
    const char *cacert; /* PEM CA bundle for https, or NULL for the system store */
    long timeout_s;     /* whole exchange, connect included; <= 0: QKD_HTTP_DEFAULT_TIMEOUT */
    const char *user_agent; /* NULL: "qkms-device" */
    const char *cert;   /* client certificate (PEM; may carry its chain), or NULL */
    const char *key;    /* its private key (PEM), or NULL: the one in cert's file */
    const char *pin_sha256; /* the server's SPKI pin(s), or NULL */
} qkd_http_opts;

typedef struct {
    long status; /* HTTP status */
    char *body;  /* NUL-terminated (len excludes it), heap; NULL when empty */
    size_t len;
} qkd_http_response;

int qkd_http_global_init(void);
void qkd_http_global_cleanup(void);

/*
 * POSTs body (len bytes, Content-Type: application/json) to base_url joined
 * with path (one '/' between them whatever base_url ends with). opts may be
 * NULL. On QKD_HTTP_OK *resp holds the answer (qkd_http_response_clear);
 * otherwise *resp is empty and err (optional) says why.
 */
int qkd_http_post(const char *base_url, const char *path, const char *body, size_t len,
                  const qkd_http_opts *opts, qkd_http_response *resp, char *err, size_t errlen);

/* Zeroes and frees the body. NULL is fine. */
void qkd_http_response_clear(qkd_http_response *resp);

#endif
