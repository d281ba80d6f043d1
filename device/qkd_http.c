/* qkd_http — one bounded JSON POST through libcurl. */
#include "qkd_http.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>
#include <openssl/crypto.h>

struct buffer {
    char *data;
    size_t len; /* data, when set, has QKD_HTTP_BODY_MAX + 1 bytes */
    bool too_large, nomem;
};

static size_t on_body(char *chunk, size_t size, size_t nmemb, void *userdata)
{
    struct buffer *b = userdata;
    size_t n = size * nmemb;
    if (n > QKD_HTTP_BODY_MAX - b->len) {
        b->too_large = true;
        return 0; /* curl then fails with CURLE_WRITE_ERROR */
    }
    if (!b->data) {
        /* The bound is small: take it whole at once, so the body is never
         * reallocated and no partial copies are left in freed memory. */
        if (!(b->data = malloc(QKD_HTTP_BODY_MAX + 1))) {
            b->nomem = true;
            return 0;
        }
    }
    memcpy(b->data + b->len, chunk, n);
    b->len += n;
    b->data[b->len] = 0;
    return n;
}

int qkd_http_global_init(void)
{
    return curl_global_init(CURL_GLOBAL_DEFAULT) == CURLE_OK ? QKD_HTTP_OK : QKD_HTTP_NOMEM;
}

void qkd_http_global_cleanup(void)
{
    curl_global_cleanup();
}

void qkd_http_response_clear(qkd_http_response *resp)
{
    if (!resp)
        return;
    if (resp->body) {
        OPENSSL_cleanse(resp->body, resp->len);
        free(resp->body);
    }
    memset(resp, 0, sizeof(*resp));
}

/* libcurl's pin list ("sha256//B64;sha256//B64") from ours ("B64;B64",
 * the prefix optional). NULL when out of memory. */
static char *pin_list(const char *pins)
{
    /* Each entry grows by at most "sha256//" and a ';'. */
    size_t n = 1, entries = 1, cap, used = 0;
    char *out;
    for (const char *q = pins; *q; q++)
        entries += *q == ';';
    cap = strlen(pins) + entries * 9 + 1;
    if (!(out = malloc(cap)))
        return NULL;
    out[0] = 0;
    while (*pins) {
        size_t l = strcspn(pins, ";");
        const char *p = pins;
        if (l >= 8 && !strncmp(p, "sha256//", 8)) {
            p += 8;
            l -= 8;
        }
        if (l) {
            int w = snprintf(out + used, cap - used, "%ssha256//%.*s", n > 1 ? ";" : "", (int)l, p);
            if (w < 0 || (size_t)w >= cap - used)
                break; /* cannot happen with cap as computed; never overrun */
            used += (size_t)w;
            n++;
        }
        pins = p + l + (p[l] == ';');
    }
    return out;
}

int qkd_http_post(const char *base_url, const char *path, const char *body, size_t len,
                  const qkd_http_opts *opts, qkd_http_response *resp, char *err, size_t errlen)
{
    static const qkd_http_opts defaults = {0};
    const qkd_http_opts *o = opts ? opts : &defaults;
    long timeout = o->timeout_s > 0 ? o->timeout_s : QKD_HTTP_DEFAULT_TIMEOUT;
    struct buffer b = {0};
    struct curl_slist *headers = NULL, *h;
    char errbuf[CURL_ERROR_SIZE] = "";
    char *url = NULL, *pins = NULL;
    CURL *curl = NULL;
    size_t blen;
    int rc = QKD_HTTP_NOMEM;

    memset(resp, 0, sizeof(*resp));
    if (err && errlen)
        err[0] = 0;
    /* base "https://kms:8443/" + "/v1/..." must not become "//v1/...". */
    blen = strlen(base_url);
    while (blen > 0 && base_url[blen - 1] == '/')
        blen--;
    if (asprintf(&url, "%.*s/%s", (int)blen, base_url, path + (path[0] == '/')) < 0) {
        url = NULL;
        goto nomem;
    }
    if (!(h = curl_slist_append(headers, "Content-Type: application/json")))
        goto nomem;
    headers = h;
    if (!(h = curl_slist_append(headers, "Accept: application/json")))
        goto nomem;
    headers = h;
    if (!(h = curl_slist_append(headers, "Expect:")))
        goto nomem;
    headers = h;
    if (!(curl = curl_easy_init()))
        goto nomem;
    if (o->pin_sha256 && !(pins = pin_list(o->pin_sha256)))
        goto nomem;

    /* Options only fail on out of memory or an old libcurl; perform then
     * reports it, so their return codes are not checked one by one. */
    curl_easy_setopt(curl, CURLOPT_URL, url);
    curl_easy_setopt(curl, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(curl, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(curl, CURLOPT_PATH_AS_IS, 1L);
    curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(curl, CURLOPT_USERAGENT, o->user_agent ? o->user_agent : "qkms-device");
    curl_easy_setopt(curl, CURLOPT_TIMEOUT, timeout);
    curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT, timeout);
    curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L); /* no SIGALRM games in a library */
    curl_easy_setopt(curl, CURLOPT_SSL_VERIFYPEER, 1L);
    curl_easy_setopt(curl, CURLOPT_SSL_VERIFYHOST, 2L);
    if (o->cacert)
        curl_easy_setopt(curl, CURLOPT_CAINFO, o->cacert);
    if (o->cert) {
        curl_easy_setopt(curl, CURLOPT_SSLCERT, o->cert);
        curl_easy_setopt(curl, CURLOPT_SSLCERTTYPE, "PEM");
    }
    if (o->key) {
        curl_easy_setopt(curl, CURLOPT_SSLKEY, o->key);
        curl_easy_setopt(curl, CURLOPT_SSLKEYTYPE, "PEM");
    }
    if (pins && curl_easy_setopt(curl, CURLOPT_PINNEDPUBLICKEY, pins) != CURLE_OK) {
        rc = QKD_HTTP_TRANSPORT;
        if (err && errlen)
            snprintf(err, errlen, "this libcurl cannot pin public keys");
        goto cleanup;
    }
    curl_easy_setopt(curl, CURLOPT_ERRORBUFFER, errbuf);
    curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(curl, CURLOPT_WRITEDATA, &b);
    curl_easy_setopt(curl, CURLOPT_POST, 1L);
    curl_easy_setopt(curl, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(curl, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)len);

    CURLcode code = curl_easy_perform(curl);
    if (code != CURLE_OK) {
        if (b.too_large) {
            rc = QKD_HTTP_TOO_LARGE;
            if (err && errlen)
                snprintf(err, errlen, "response larger than %d bytes", QKD_HTTP_BODY_MAX);
        } else if (b.nomem || code == CURLE_OUT_OF_MEMORY) {
            goto nomem;
        } else {
            rc = QKD_HTTP_TRANSPORT;
            if (err && errlen)
                snprintf(err, errlen, "%s", *errbuf ? errbuf : curl_easy_strerror(code));
        }
        goto cleanup;
    }
    curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &resp->status);
    resp->body = b.data;
    resp->len = b.len;
    b.data = NULL;
    rc = QKD_HTTP_OK;
    goto cleanup;

nomem:
    rc = QKD_HTTP_NOMEM;
    if (err && errlen)
        snprintf(err, errlen, "out of memory");
cleanup:
    curl_easy_cleanup(curl);
    curl_slist_free_all(headers);
    free(url);
    free(pins);
    if (b.data) {
        OPENSSL_cleanse(b.data, b.len);
        free(b.data);
    }
    return rc;
}
