/* client — HTTP via libcurl, JSON in and out, status to exit-code mapping. */
#include "client.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <curl/curl.h>
#include <openssl/crypto.h>

#include "config.h"
#include "exitcodes.h"
#include "output.h"
#include "version.h"
#include "qbuf.h"

/* Admin responses are small; a bigger one means something is wrong. */
#define RESPONSE_MAX (8u * 1024 * 1024)

struct buffer {
    qbuf *q; /* bounded by RESPONSE_MAX; may hold tokens or device keys */
    bool too_large;
    FILE *sink;  /* a 2xx answer's bytes go here instead (client_upload) */
    CURL *curl;
    bool sink_failed;
    uint64_t sunk;
};

static size_t on_body(char *chunk, size_t size, size_t nmemb, void *userdata)
{
    struct buffer *b = userdata;
    size_t n = size * nmemb;
    if (b->sink) {
        long status = 0;
        curl_easy_getinfo(b->curl, CURLINFO_RESPONSE_CODE, &status);
        if (status >= 200 && status < 300) {
            if (fwrite(chunk, 1, n, b->sink) != n) {
                b->sink_failed = true;
                return 0;
            }
            b->sunk += n;
            return n;
        }
    }
    int r = qbuf_put(b->q, chunk, n); /* wipes the old block as it grows */
    if (r == QBUF_E_LIMIT)
        b->too_large = true;
    return r == QBUF_OK ? n : 0; /* 0 makes curl fail with CURLE_WRITE_ERROR */
}

int client_global_init(void)
{
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        out_error("cannot initialise libcurl");
        return EXIT_INTERNAL;
    }
    return EXIT_OK;
}

void client_global_cleanup(void)
{
    curl_global_cleanup();
}

char *client_escape(const char *s)
{
    /* curl_easy_escape ignores its handle since 7.82; pass one anyway for
     * older libcurl builds. */
    char *copy = NULL;
    CURL *h = curl_easy_init();
    char *escaped = h ? curl_easy_escape(h, s, 0) : NULL;
    if (escaped)
        copy = strdup(escaped);
    if (!copy)
        out_error("out of memory");
    curl_free(escaped);
    curl_easy_cleanup(h);
    return copy;
}

char *client_escape_segment(const char *s)
{
    if (strcmp(s, ".") == 0 || strcmp(s, "..") == 0) {
        char *copy = strdup(s[1] ? "%2E%2E" : "%2E");
        if (!copy)
            out_error("out of memory");
        return copy;
    }
    return client_escape(s);
}

int client_query_add(char **query, const char *name, const char *value)
{
    char *escaped = client_escape(value), *grown = NULL;
    if (!escaped)
        return EXIT_INTERNAL;
    int n = asprintf(&grown, "%s%c%s=%s", *query ? *query : "", *query ? '&' : '?', name, escaped);
    free(escaped);
    if (n < 0) {
        out_error("out of memory");
        return EXIT_INTERNAL;
    }
    free(*query);
    *query = grown;
    return EXIT_OK;
}

/* What one call does besides the request itself. */
struct call_opts {
    bool empty_ok;          /* a 2xx without a body is an empty object */
    bool quiet;             /* report nothing: the caller polls */
    const char *request_id; /* sent as X-Request-Id, or NULL */
    FILE *upload;           /* the request body, raw (application/octet-stream) */
    uint64_t upload_len;
    FILE *download;         /* a 2xx answer's body, raw */
    struct curl_slist **answer_headers; /* Qkms-* headers of the answer */
};

static size_t on_header(char *line, size_t size, size_t nmemb, void *userdata)
{
    struct curl_slist **l = userdata, *h;
    size_t n = size * nmemb;
    if (n > 5 && !strncasecmp(line, "Qkms-", 5)) {
        char *copy = strndup(line, n);
        if (copy) {
            copy[strcspn(copy, "\r\n")] = 0;
            if ((h = curl_slist_append(*l, copy)))
                *l = h;
            free(copy);
        }
    }
    return n;
}

static int transport_error(const struct kmsctl_ctx *ctx, const char *url, CURLcode code,
                           const char *detail, const struct buffer *b)
{
    if (b->too_large) {
        out_error("response from %s is larger than %u bytes", url, RESPONSE_MAX);
        return EXIT_SERVER;
    }
    const char *why = *detail ? detail : curl_easy_strerror(code);
    switch (code) {
    case CURLE_OUT_OF_MEMORY:
        out_error("out of memory");
        return EXIT_INTERNAL;
    case CURLE_WRITE_ERROR: /* only on_body fails writes: memory, or the output file */
        out_error(b->sink_failed ? "cannot write the answer to its file"
                                 : "out of memory reading the response");
        return EXIT_INTERNAL;
    case CURLE_OPERATION_TIMEDOUT:
        out_error("request to %s timed out after %ld s", url, ctx->timeout_s);
        return EXIT_CONNECT;
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_CIPHER:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_SSL_ISSUER_ERROR:
    case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
    case CURLE_SSL_INVALIDCERTSTATUS:
    case CURLE_SSL_CRL_BADFILE:
    case CURLE_SSL_ENGINE_NOTFOUND:
    case CURLE_SSL_ENGINE_SETFAILED:
    case CURLE_SSL_ENGINE_INITFAILED:
    case CURLE_SSL_SHUTDOWN_FAILED:
        out_error("TLS failure talking to %s: %s", out_safe(url), why);
        return EXIT_CONNECT;
    default:
        out_error("cannot reach %s: %s", out_safe(url), why);
        return EXIT_CONNECT;
    }
}

/* Maps a completed HTTP exchange to an exit code, reporting failures. */
static int classify(const struct kmsctl_ctx *ctx, long status, const struct buffer *b,
                    bool empty_ok, json_t **out)
{
    json_error_t jerr;
    /* Without JSON_DECODE_ANY jansson accepts only an object or array. */
    size_t len = qbuf_len(b->q);
    json_t *body = len ? json_loadb(qbuf_str(b->q), len, JSON_REJECT_DUPLICATES, &jerr) : NULL;
    int rc;

    if (status >= 200 && status < 300) {
        if (body) {
            *out = body;
            return EXIT_OK;
        }
        if (empty_ok && len == 0) {
            if (!(*out = json_object())) {
                out_error("out of memory");
                return EXIT_INTERNAL;
            }
            return EXIT_OK;
        }
        out_error("server sent a response that is not valid JSON (HTTP %ld)", status);
        return EXIT_SERVER;
    }

    const char *fallback;
    if (status == 401 || status == 403) {
        rc = EXIT_AUTH;
        fallback = status == 401 ? "authentication refused" : "permission denied";
    } else if (status >= 400 && status < 500) {
        rc = EXIT_REFUSED;
        fallback = "request refused";
    } else if (status >= 500 && status < 600) {
        rc = EXIT_SERVER;
        fallback = "server error";
    } else {
        rc = EXIT_SERVER; /* 1xx/3xx: redirects are deliberately not followed */
        fallback = "unexpected response status";
    }
    out_api_error(ctx->json, status, body, fallback);
    json_decref(body);
    return rc;
}

/* raw: on a 2xx answer its bytes go to *raw (malloc'd, NUL after them)
 * and *out stays NULL; errors are classified as for JSON. */
static int call(const struct kmsctl_ctx *ctx, const char *method, const char *path,
                const json_t *body, const struct call_opts *o, json_t **out, char **raw,
                size_t *raw_len)
{
    *out = NULL;
    int rc;
    char *token = NULL, *auth = NULL, *url = NULL, *where = NULL, *payload = NULL, *rid = NULL;
    struct curl_slist *headers = NULL, *h;
    struct buffer resp = {0};
    char errbuf[CURL_ERROR_SIZE] = "";
    CURL *curl = NULL;

    /* raw answers come from public routes (the CRL): no token is sent,
     * and none is needed. */
    if (!raw && (rc = config_load_token(ctx, &token)))
        goto cleanup;

    rc = EXIT_INTERNAL;
    if (!(resp.q = qbuf_new(RESPONSE_MAX, 0)))
        goto oom;
    if (asprintf(&url, "%s%s", ctx->addr, path) < 0) {
        url = NULL;
        goto oom;
    }
    /* Errors name what the user gave: the URL, or the unix socket. */
    if (ctx->unix_path ? asprintf(&where, "unix:%s", ctx->unix_path) < 0
                       : !(where = strdup(url))) {
        where = NULL;
        goto oom;
    }
    if (token && asprintf(&auth, "Authorization: Bearer %s", token) < 0) {
        auth = NULL;
        goto oom;
    }
    if (body && !(payload = json_dumps(body, JSON_COMPACT)))
        goto oom;

    if (auth) {
        if (!(h = curl_slist_append(headers, auth)))
            goto oom;
        headers = h;
    }
    if (!(h = curl_slist_append(headers, raw ? "Accept: */*" : "Accept: application/json")))
        goto oom;
    headers = h;
    if (payload || o->upload) {
        if (!(h = curl_slist_append(headers, o->upload ? "Content-Type: application/octet-stream"
                                                       : "Content-Type: application/json")))
            goto oom;
        headers = h;
    }
    if (o->request_id) {
        if (asprintf(&rid, "X-Request-Id: %s", o->request_id) < 0) {
            rid = NULL;
            goto oom;
        }
        if (!(h = curl_slist_append(headers, rid)))
            goto oom;
        headers = h;
    }
    /* No "Expect: 100-continue" round trip: bodies are small. But an
     * upload waits for it: a refusal (401, 413 ...) comes before hundreds of
     * MiB are sent to a server that will not read them. */
    if (!o->upload) {
        if (!(h = curl_slist_append(headers, "Expect:")))
            goto oom;
        headers = h;
    }

    if (!(curl = curl_easy_init()))
        goto oom;

    /* Return codes are ignored: these options only fail on out of memory
     * or an unsupported libcurl, which curl_easy_perform then reports. */
    curl_easy_setopt(curl, CURLOPT_URL, url);
    if (ctx->unix_path)
        curl_easy_setopt(curl, CURLOPT_UNIX_SOCKET_PATH, ctx->unix_path);
    curl_easy_setopt(curl, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(curl, CURLOPT_FOLLOWLOCATION, 0L); /* token must not travel on */
    curl_easy_setopt(curl, CURLOPT_PATH_AS_IS, 1L);     /* send the path exactly as built */
    curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(curl, CURLOPT_USERAGENT, "kmsctl/" QKMS_VERSION);
    curl_easy_setopt(curl, CURLOPT_TIMEOUT, ctx->timeout_s);
    curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT, ctx->timeout_s);
    curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(curl, CURLOPT_SSL_VERIFYPEER, 1L);
    curl_easy_setopt(curl, CURLOPT_SSL_VERIFYHOST, 2L);
    if (ctx->cacert)
        curl_easy_setopt(curl, CURLOPT_CAINFO, ctx->cacert);
    if (ctx->cert) {
        curl_easy_setopt(curl, CURLOPT_SSLCERT, ctx->cert);
        curl_easy_setopt(curl, CURLOPT_SSLCERTTYPE, "PEM");
    }
    if (ctx->key) {
        curl_easy_setopt(curl, CURLOPT_SSLKEY, ctx->key);
        curl_easy_setopt(curl, CURLOPT_SSLKEYTYPE, "PEM");
    }
    curl_easy_setopt(curl, CURLOPT_ERRORBUFFER, errbuf);
    curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(curl, CURLOPT_WRITEDATA, &resp);
    if (strcmp(method, "GET") == 0)
        curl_easy_setopt(curl, CURLOPT_HTTPGET, 1L);
    else
        curl_easy_setopt(curl, CURLOPT_CUSTOMREQUEST, method);
    if (payload) {
        curl_easy_setopt(curl, CURLOPT_POSTFIELDS, payload);
        curl_easy_setopt(curl, CURLOPT_POSTFIELDSIZE, (long)strlen(payload));
    }
    if (o->upload) { /* read from the file as it is sent: never in memory whole */
        curl_easy_setopt(curl, CURLOPT_POST, 1L);
        curl_easy_setopt(curl, CURLOPT_READFUNCTION, fread);
        curl_easy_setopt(curl, CURLOPT_READDATA, o->upload);
        curl_easy_setopt(curl, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)o->upload_len);
        /* Hundreds of MiB take longer than an admin call: at least 10 minutes. */
        curl_easy_setopt(curl, CURLOPT_TIMEOUT, ctx->timeout_s > 600 ? ctx->timeout_s : 600L);
    }
    if (o->download) {
        resp.sink = o->download;
        resp.curl = curl;
    }
    if (o->answer_headers) {
        curl_easy_setopt(curl, CURLOPT_HEADERFUNCTION, on_header);
        curl_easy_setopt(curl, CURLOPT_HEADERDATA, o->answer_headers);
    }

    if (ctx->verbose && !o->quiet)
        out_note("> %s %s%s%s", method, out_safe(url), ctx->unix_path ? " over " : "",
                 ctx->unix_path ? out_safe(where) : "");
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    CURLcode code = curl_easy_perform(curl);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    if (code != CURLE_OK) {
        rc = o->quiet ? EXIT_CONNECT : transport_error(ctx, where, code, errbuf, &resp);
        goto cleanup;
    }

    long status = 0;
    curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &status);
    if (ctx->verbose && !o->quiet) {
        long ms = (t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000;
        out_note("< HTTP %ld, %zu bytes, %ld ms", status, qbuf_len(resp.q), ms);
    }
    if (o->download && status >= 200 && status < 300) {
        rc = EXIT_OK;
        goto cleanup;
    }
    if (raw && status >= 200 && status < 300) {
        size_t n = qbuf_len(resp.q);
        if (!(*raw = malloc(n + 1)))
            goto oom;
        memcpy(*raw, qbuf_str(resp.q), n);
        (*raw)[n] = '\0';
        *raw_len = n;
        rc = EXIT_OK;
        goto cleanup;
    }
    if (o->quiet) { /* a 2xx JSON object or array, or a plain failure */
        size_t n = qbuf_len(resp.q);
        if (status < 200 || status >= 300)
            rc = EXIT_REFUSED;
        else if (!n || !(*out = json_loadb(qbuf_str(resp.q), n, JSON_REJECT_DUPLICATES, NULL)))
            rc = EXIT_SERVER;
        else
            rc = EXIT_OK;
        goto cleanup;
    }
    rc = classify(ctx, status, &resp, o->empty_ok, out);
    goto cleanup;

oom:
    if (!o->quiet)
        out_error("out of memory");
cleanup:
    curl_easy_cleanup(curl);
    /* curl_slist_append copied the header; wipe our copies of the token. */
    curl_slist_free_all(headers);
    if (auth)
        explicit_bzero(auth, strlen(auth));
    free(auth);
    config_token_free(token);
    /* Request bodies may name secrets too (a device import's rows). */
    if (payload)
        OPENSSL_cleanse(payload, strlen(payload));
    free(payload);
    free(url);
    free(where);
    free(rid);
    /* Responses may carry tokens or device keys (`device fill --plaintext`):
     * the whole block, not just what was filled. */
    qbuf_free(resp.q);
    return rc;
}

int client_call(const struct kmsctl_ctx *ctx, const char *method, const char *path,
                const json_t *body, json_t **out)
{
    static const struct call_opts plain = {0};
    return call(ctx, method, path, body, &plain, out, NULL, NULL);
}

int client_call_id(const struct kmsctl_ctx *ctx, const char *method, const char *path,
                   const json_t *body, const char *request_id, json_t **out)
{
    const struct call_opts o = {.request_id = request_id};
    return call(ctx, method, path, body, &o, out, NULL, NULL);
}

int client_get_quiet(const struct kmsctl_ctx *ctx, const char *path, json_t **out)
{
    static const struct call_opts quiet = {.quiet = true};
    return call(ctx, "GET", path, NULL, &quiet, out, NULL, NULL);
}

int client_get_raw(const struct kmsctl_ctx *ctx, const char *path, char **data, size_t *len)
{
    json_t *none = NULL;
    int rc;
    *data = NULL;
    static const struct call_opts plain = {0};
    rc = call(ctx, "GET", path, NULL, &plain, &none, data, len);
    json_decref(none); /* never set on 2xx; an error's body was reported */
    return rc;
}

int client_show(const struct kmsctl_ctx *ctx, const char *path, out_printer print)
{
    json_t *resp;
    int rc = client_call(ctx, "GET", path, NULL, &resp);
    return out_result(ctx->json, rc, resp, print);
}

int client_call_empty_ok(const struct kmsctl_ctx *ctx, const char *method, const char *path,
                         const json_t *body, json_t **out)
{
    static const struct call_opts empty_ok = {.empty_ok = true};
    return call(ctx, method, path, body, &empty_ok, out, NULL, NULL);
}

int client_upload(const struct kmsctl_ctx *ctx, const char *path, FILE *in, uint64_t in_len,
                  FILE *out, struct curl_slist **answer_headers, json_t **err_out)
{
    struct call_opts o = {.upload = in, .upload_len = in_len, .download = out,
                          .answer_headers = answer_headers};
    json_t *body = NULL;
    int rc = call(ctx, "POST", path, NULL, &o, &body, NULL, NULL);
    if (err_out)
        *err_out = body;
    else
        json_decref(body);
    return rc;
}
