/* entropy_source — http, device, exec, pkcs11 and os random sources. */
#include "entropy/entropy_source.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>
#include <jansson.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "hexutil.h"
#include "qbuf.h"

#define HTTP_BODY_MAX (4u << 20)

/* ---- os ------------------------------------------------------------------- */

static int noop_open(esrc *s, char *err, size_t el)
{
    (void)s;
    (void)err;
    (void)el;
    return 0;
}

static long os_read(esrc *s, uint8_t *buf, size_t len, char *err, size_t el)
{
    ssize_t n;
    (void)s;
    do
        n = getrandom(buf, len, 0);
    while (n < 0 && errno == EINTR);
    if (n < 0)
        snprintf(err, el, "getrandom: %s", strerror(errno));
    return n;
}

static void noop_close(esrc *s) { (void)s; }

static const esrc_ops os_ops = {"os", noop_open, os_read, noop_close};

/* ---- pkcs11 --------------------------------------------------------------- */

static long p11_read(esrc *s, uint8_t *buf, size_t len, char *err, size_t el)
{
    CK_RV rv;
    if (len > 4096)
        len = 4096;
    rv = p11_random(s->token, buf, len);
    if (rv != CKR_OK) {
        snprintf(err, el, "C_GenerateRandom: %s", p11_rv_name(rv));
        return -1;
    }
    return (long)len;
}

static const esrc_ops p11_ops = {"pkcs11", noop_open, p11_read, noop_close};

/* ---- device: a character device or FIFO ------------------------------------ */

typedef struct {
    int fd;
} fd_impl;

static int dev_open(esrc *s, char *err, size_t el)
{
    fd_impl *d = s->impl;
    if (d->fd >= 0)
        return 0;
    d->fd = open(s->cfg->entropy_device_path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (d->fd < 0) {
        snprintf(err, el, "open %s: %s", s->cfg->entropy_device_path, strerror(errno));
        return -1;
    }
    return 0;
}

/* Wait up to timeout_ms for data, then read what is there. */
static long fd_read(int *fd, uint8_t *buf, size_t len, int timeout_ms, char *err, size_t el)
{
    struct pollfd p = {*fd, POLLIN, 0};
    ssize_t n;
    int r = poll(&p, 1, timeout_ms);
    if (r == 0) {
        snprintf(err, el, "no data within %d ms", timeout_ms);
        return -1;
    }
    if (r < 0) {
        snprintf(err, el, "poll: %s", strerror(errno));
        return -1;
    }
    n = read(*fd, buf, len);
    if (n == 0) {
        snprintf(err, el, "end of file");
        close(*fd);
        *fd = -1;
        return -1;
    }
    if (n < 0) {
        if (errno == EAGAIN || errno == EINTR) {
            snprintf(err, el, "no data");
        } else {
            snprintf(err, el, "read: %s", strerror(errno));
            close(*fd);
            *fd = -1;
        }
        return -1;
    }
    return n;
}

static long dev_read(esrc *s, uint8_t *buf, size_t len, char *err, size_t el)
{
    fd_impl *d = s->impl;
    if (d->fd < 0 && dev_open(s, err, el) != 0)
        return -1;
    return fd_read(&d->fd, buf, len, s->cfg->entropy_http_timeout_ms, err, el);
}

static void dev_close(esrc *s)
{
    fd_impl *d = s->impl;
    if (d->fd >= 0)
        close(d->fd);
    d->fd = -1;
}

static const esrc_ops dev_ops = {"device", dev_open, dev_read, dev_close};

/* ---- exec: a program writing random bytes to stdout ------------------------- */

/* How long a program has to exit after SIGTERM before it gets SIGKILL. */
#define EXEC_REAP_GRACE_MS 2000

typedef struct {
    int fd;
    pid_t pid;
    char **argv;
    char **envp; /* the minimal environment the program gets (exec_env) */
} exec_impl;

static long ms_since(const struct timespec *t0)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (long)(now.tv_sec - t0->tv_sec) * 1000 + (now.tv_nsec - t0->tv_nsec) / 1000000;
}

/* Stop the program: SIGTERM, then SIGKILL if it is still there after
 * EXEC_REAP_GRACE_MS, and reap it either way, so neither a program that
 * ignores SIGTERM nor a hung one can hold up kmsd's shutdown or linger. */
static void exec_reap(exec_impl *x)
{
    struct timespec t0, nap = {0, 10 * 1000000L};
    if (x->fd >= 0)
        close(x->fd);
    x->fd = -1;
    if (x->pid <= 0)
        return;
    kill(x->pid, SIGTERM);
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (;;) {
        pid_t r = waitpid(x->pid, NULL, WNOHANG);
        if (r == x->pid || (r < 0 && errno != EINTR))
            break;
        if (ms_since(&t0) >= EXEC_REAP_GRACE_MS) {
            kill(x->pid, SIGKILL);
            while (waitpid(x->pid, NULL, 0) < 0 && errno == EINTR)
                ;
            break;
        }
        nanosleep(&nap, NULL);
    }
    x->pid = 0;
}

/* The program's environment: only what a program needs to run, copied from
 * kmsd's own (PATH, LANG, LC_ALL, TZ; PATH defaults to a system path). Never
 * kmsd's whole environment, which may carry QKMS_* settings, PG* variables
 * or anything else a secret could hide in. */
static const char *const exec_env_names[] = {"PATH", "LANG", "LC_ALL", "TZ"};
#define EXEC_ENV_N (sizeof(exec_env_names) / sizeof(exec_env_names[0]))

static char **exec_env(void)
{
    char **envp = calloc(EXEC_ENV_N + 1, sizeof(char *));
    size_t n = 0;
    if (!envp)
        return NULL;
    for (size_t i = 0; i < EXEC_ENV_N; i++) {
        const char *v = getenv(exec_env_names[i]);
        if (!v && !strcmp(exec_env_names[i], "PATH"))
            v = "/usr/local/bin:/usr/bin:/bin";
        if (v && asprintf(&envp[n], "%s=%s", exec_env_names[i], v) >= 0)
            n++;
    }
    return envp;
}

/* posix_spawn, not fork: the child execs at once and never touches the
 * PKCS#11 module, which must not be used across fork. kmsd blocks SIGINT,
 * SIGTERM and SIGHUP in every thread and ignores SIGPIPE; a program must
 * start with an empty mask and default dispositions (else SIGTERM could
 * never stop it, and a closed pipe would not end it), and with no
 * descriptor of kmsd's but its stdout. */
static int exec_spawn(exec_impl *x, int out_fd)
{
    posix_spawn_file_actions_t fa;
    posix_spawnattr_t at;
    sigset_t none, all;
    int rc;

    sigemptyset(&none);
    sigfillset(&all);
    posix_spawn_file_actions_init(&fa);
    posix_spawnattr_init(&at);
    posix_spawn_file_actions_adddup2(&fa, out_fd, STDOUT_FILENO);
    posix_spawn_file_actions_addclosefrom_np(&fa, STDERR_FILENO + 1);
    posix_spawnattr_setsigmask(&at, &none);
    posix_spawnattr_setsigdefault(&at, &all);
    posix_spawnattr_setflags(&at, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
    rc = posix_spawnp(&x->pid, x->argv[0], &fa, &at, x->argv, x->envp);
    posix_spawnattr_destroy(&at);
    posix_spawn_file_actions_destroy(&fa);
    return rc;
}

static int exec_open(esrc *s, char *err, size_t el)
{
    exec_impl *x = s->impl;
    int pfd[2], rc;
    if (x->fd >= 0)
        return 0;
    if (pipe2(pfd, O_CLOEXEC) != 0) {
        snprintf(err, el, "pipe: %s", strerror(errno));
        return -1;
    }
    rc = exec_spawn(x, pfd[1]);
    close(pfd[1]);
    if (rc != 0) {
        close(pfd[0]);
        x->pid = 0;
        snprintf(err, el, "cannot start %s: %s", x->argv[0], strerror(rc));
        return -1;
    }
    x->fd = pfd[0];
    return 0;
}

static long exec_read(esrc *s, uint8_t *buf, size_t len, char *err, size_t el)
{
    exec_impl *x = s->impl;
    long n;
    if (x->fd < 0 && exec_open(s, err, el) != 0)
        return -1;
    n = fd_read(&x->fd, buf, len, s->cfg->entropy_http_timeout_ms, err, el);
    if (n < 0 && x->fd < 0)
        exec_reap(x); /* the program exited: restarted on a later read */
    return n;
}

static void exec_close(esrc *s) { exec_reap(s->impl); }

static const esrc_ops exec_ops = {"exec", exec_open, exec_read, exec_close};

/* ---- http: a QRNG appliance or service ------------------------------------ */

typedef struct {
    CURL *curl;
    char *bearer; /* "Authorization: Bearer ..." */
    qbuf *body; /* bounded by HTTP_BODY_MAX; random bytes that become keys */
    int overflow;
} http_impl;

static size_t http_sink(char *p, size_t sz, size_t n, void *arg)
{
    http_impl *h = arg;
    size_t k = sz * n;
    /* qbuf wipes the old block when it grows: it holds random bytes that
     * become key material. */
    int r = qbuf_put(h->body, p, k);
    if (r == QBUF_E_LIMIT)
        h->overflow = 1;
    return r == QBUF_OK ? k : 0;
}

static int http_open(esrc *s, char *err, size_t el)
{
    http_impl *h = s->impl;
    if (h->curl)
        return 0;
    h->curl = curl_easy_init();
    if (!h->curl) {
        snprintf(err, el, "curl_easy_init failed");
        return -1;
    }
    return 0;
}

/* Replace {bytes} in the URL template. */
static void http_url(const char *tmpl, size_t n, char *out, size_t cap)
{
    const char *p = strstr(tmpl, "{bytes}");
    if (!p)
        snprintf(out, cap, "%s", tmpl);
    else
        snprintf(out, cap, "%.*s%zu%s", (int)(p - tmpl), tmpl, n, p + 7);
}

/* Standard base64 with '=' only as the final padding (n is a non-zero
 * multiple of 4). EVP_DecodeBlock alone skips white space around the text
 * and decodes '=' anywhere as zero bits: a malformed body would give bytes
 * the source never sent. */
static int b64_strict(const char *s, size_t n)
{
    size_t pad = s[n - 1] == '=' ? (s[n - 2] == '=' ? 2 : 1) : 0;
    for (size_t i = 0; i < n - pad; i++) {
        char c = s[i];
        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
              c == '+' || c == '/'))
            return 0;
    }
    return 1;
}

long esrc_decode_body(const char *body, size_t len, const char *path, const char *format,
                      uint8_t *out, size_t cap, char *err, size_t el)
{
    const char *data = body;
    size_t dlen = len;
    json_t *root = NULL, *v;
    long n = -1;

    if (path && *path) {
        json_error_t je;
        char seg[128];
        const char *p = path;
        root = json_loadb(body, len, 0, &je);
        v = root;
        while (v && *p) {
            size_t sl = strcspn(p, ".");
            if (sl == 0 || sl >= sizeof(seg))
                break;
            memcpy(seg, p, sl);
            seg[sl] = 0;
            v = json_object_get(v, seg);
            p += sl + (p[sl] == '.');
        }
        if (!json_is_string(v)) {
            snprintf(err, el, "no string at JSON path '%s'", path);
            goto out;
        }
        data = json_string_value(v);
        dlen = json_string_length(v);
    }
    if (!strcmp(format, "raw")) {
        if (dlen > cap)
            dlen = cap;
        memcpy(out, data, dlen);
        n = (long)dlen;
    } else if (!strcmp(format, "hex")) {
        while (dlen && (data[dlen - 1] == '\n' || data[dlen - 1] == '\r'))
            dlen--;
        if (dlen / 2 > cap)
            dlen = 2 * cap;
        n = qkms_hex_decode(data, dlen, out, cap);
        if (n < 0)
            snprintf(err, el, "body is not hex");
    } else {
        /* base64 (standard alphabet, padded), as QRNG services send it. */
        size_t need = 3 * (dlen / 4);
        uint8_t *tmp;
        int dn;
        while (dlen && (data[dlen - 1] == '\n' || data[dlen - 1] == '\r'))
            dlen--;
        if (dlen % 4 || dlen == 0 || !b64_strict(data, dlen)) {
            snprintf(err, el, "body is not base64");
            goto out;
        }
        tmp = OPENSSL_secure_malloc(need + 1);
        dn = tmp ? EVP_DecodeBlock(tmp, (const unsigned char *)data, (int)dlen) : -1;
        if (dn < 0) {
            snprintf(err, el, "body is not base64");
        } else {
            dn -= (data[dlen - 1] == '=') + (data[dlen - 2] == '=');
            n = (long)((size_t)dn > cap ? cap : (size_t)dn);
            memcpy(out, tmp, (size_t)n);
        }
        if (tmp)
            OPENSSL_secure_clear_free(tmp, need + 1);
    }
out:
    json_decref(root);
    return n;
}

static long http_read(esrc *s, uint8_t *buf, size_t len, char *err, size_t el)
{
    http_impl *h = s->impl;
    const kms_config *c = s->cfg;
    struct curl_slist *hdrs = NULL;
    char url[2048], post[64];
    long status = 0, n = -1;
    size_t ask = (size_t)c->entropy_http_request_bytes;
    CURLcode cc;

    if (!h->curl && http_open(s, err, el) != 0)
        return -1;
    if (ask > len)
        ask = len;
    http_url(c->entropy_http_url, ask, url, sizeof(url));
    qbuf_reset(h->body);
    h->overflow = 0;
    curl_easy_reset(h->curl);
    curl_easy_setopt(h->curl, CURLOPT_URL, url);
    curl_easy_setopt(h->curl, CURLOPT_TIMEOUT_MS, (long)c->entropy_http_timeout_ms);
    curl_easy_setopt(h->curl, CURLOPT_CONNECTTIMEOUT_MS, (long)c->entropy_http_timeout_ms);
    curl_easy_setopt(h->curl, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h->curl, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(h->curl, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(h->curl, CURLOPT_SSL_VERIFYPEER, 1L);
    curl_easy_setopt(h->curl, CURLOPT_SSL_VERIFYHOST, 2L);
    if (c->entropy_http_cacert)
        curl_easy_setopt(h->curl, CURLOPT_CAINFO, c->entropy_http_cacert);
    curl_easy_setopt(h->curl, CURLOPT_WRITEFUNCTION, http_sink);
    curl_easy_setopt(h->curl, CURLOPT_WRITEDATA, h);
    if (h->bearer)
        hdrs = curl_slist_append(hdrs, h->bearer);
    if (!strcmp(c->entropy_http_method, "POST")) {
        snprintf(post, sizeof(post), "{\"bytes\":%zu}", ask);
        hdrs = curl_slist_append(hdrs, "Content-Type: application/json");
        curl_easy_setopt(h->curl, CURLOPT_COPYPOSTFIELDS, post);
    }
    curl_easy_setopt(h->curl, CURLOPT_HTTPHEADER, hdrs);
    cc = curl_easy_perform(h->curl);
    curl_easy_getinfo(h->curl, CURLINFO_RESPONSE_CODE, &status);
    curl_slist_free_all(hdrs);
    if (cc != CURLE_OK) {
        snprintf(err, el, "%s", h->overflow ? "response too large" : curl_easy_strerror(cc));
    } else if (status != 200) {
        snprintf(err, el, "HTTP %ld", status);
    } else {
        n = esrc_decode_body(qbuf_str(h->body), qbuf_len(h->body), c->entropy_http_json_path,
                             c->entropy_http_format, buf, len, err, el);
        if (n == 0)
            snprintf(err, el, "empty body");
        if (n == 0)
            n = -1;
    }
    qbuf_reset(h->body);
    OPENSSL_cleanse(url, sizeof(url)); /* its query may carry an API key */
    return n;
}

static void http_close(esrc *s)
{
    http_impl *h = s->impl;
    if (h->curl)
        curl_easy_cleanup(h->curl);
    h->curl = NULL;
}

static const esrc_ops http_ops = {"http", http_open, http_read, http_close};

/* ---- construction ------------------------------------------------------------- */

static char *read_secret_line(const char *path)
{
    FILE *f = fopen(path, "r");
    char buf[1024], *out = NULL;
    if (!f)
        return NULL;
    setvbuf(f, NULL, _IONBF, 0); /* no stdio buffer left holding the token */
    if (fgets(buf, sizeof(buf), f)) {
        buf[strcspn(buf, "\r\n")] = 0;
        if (asprintf(&out, "Authorization: Bearer %s", buf) < 0)
            out = NULL;
    }
    OPENSSL_cleanse(buf, sizeof(buf));
    fclose(f);
    return out;
}

/* What non-admin roles are shown (esrc.describe_public): an http URL cut to
 * scheme, host and port (its user info, path and query may carry an API
 * key), an exec command cut to the program's base name (its arguments may). */
static void describe_http_public(esrc *s, const kms_config *cfg)
{
    const char *u = cfg->entropy_http_url, *host = strstr(u, "://"), *end, *at;
    size_t scheme = host ? (size_t)(host - u) : 0;
    host = host ? host + 3 : u;
    end = host + strcspn(host, "/?#");
    at = memchr(host, '@', (size_t)(end - host));
    if (at)
        host = at + 1;
    snprintf(s->describe_public, sizeof(s->describe_public), "http %s %.*s%s%.*s/... (%s)",
             cfg->entropy_http_method, (int)scheme, u, scheme ? "://" : "", (int)(end - host),
             host, cfg->entropy_http_format);
}

static void describe_exec_public(esrc *s, const char *prog)
{
    const char *base = strrchr(prog, '/');
    snprintf(s->describe_public, sizeof(s->describe_public), "exec %s ...",
             base ? base + 1 : prog);
}

int esrc_create(esrc **out, const char *kind, const kms_config *cfg, p11_token *token, char *err,
                size_t el)
{
    esrc *s = calloc(1, sizeof(*s));
    if (!s) {
        snprintf(err, el, "out of memory");
        return -1;
    }
    s->cfg = cfg;
    s->token = token;
    if (!strcmp(kind, "os")) {
        s->ops = &os_ops;
        snprintf(s->describe, sizeof(s->describe), "os getrandom");
    } else if (!strcmp(kind, "pkcs11")) {
        if (!token) {
            snprintf(err, el, "entropy source pkcs11 needs the token");
            goto fail;
        }
        s->ops = &p11_ops;
        snprintf(s->describe, sizeof(s->describe), "pkcs11 C_GenerateRandom (token %s)",
                 p11_token_label(token));
    } else if (!strcmp(kind, "device")) {
        fd_impl *d = calloc(1, sizeof(*d));
        if (!cfg->entropy_device_path || !d) {
            free(d);
            snprintf(err, el, "entropy source device needs entropy_device_path");
            goto fail;
        }
        d->fd = -1;
        s->impl = d;
        s->ops = &dev_ops;
        snprintf(s->describe, sizeof(s->describe), "device %s", cfg->entropy_device_path);
    } else if (!strcmp(kind, "exec")) {
        exec_impl *x = calloc(1, sizeof(*x));
        char *copy, *save = NULL, *tok;
        int n = 0;
        if (!cfg->entropy_exec_command || !x) {
            free(x);
            snprintf(err, el, "entropy source exec needs entropy_exec_command");
            goto fail;
        }
        x->fd = -1;
        x->argv = calloc(33, sizeof(char *));
        x->envp = exec_env();
        copy = x->argv && x->envp ? strdup(cfg->entropy_exec_command) : NULL;
        for (tok = copy ? strtok_r(copy, " ", &save) : NULL; tok && n < 32;
             tok = strtok_r(NULL, " ", &save))
            x->argv[n++] = strdup(tok);
        if (copy) {
            OPENSSL_cleanse(copy, strlen(cfg->entropy_exec_command));
            free(copy);
        }
        s->impl = x;
        s->ops = &exec_ops;
        if (n == 0) {
            esrc_destroy(s);
            snprintf(err, el, "entropy_exec_command is empty");
            return -1;
        }
        snprintf(s->describe, sizeof(s->describe), "exec %s", cfg->entropy_exec_command);
        describe_exec_public(s, x->argv[0]);
    } else if (!strcmp(kind, "http")) {
        http_impl *h = calloc(1, sizeof(*h));
        if (!cfg->entropy_http_url || !h) {
            free(h);
            snprintf(err, el, "entropy source http needs entropy_http_url");
            goto fail;
        }
        if (cfg->entropy_http_bearer_file && !(h->bearer = read_secret_line(cfg->entropy_http_bearer_file))) {
            free(h);
            snprintf(err, el, "cannot read entropy_http_bearer_file %s", cfg->entropy_http_bearer_file);
            goto fail;
        }
        /* The ordinary heap, wiped as it grows and after each read: an
         * answer of up to 4 MiB would not fit the 1 MiB secure heap that
         * holds every unwrapped key. */
        if (!(h->body = qbuf_new(HTTP_BODY_MAX, 0))) {
            free(h->bearer);
            free(h);
            snprintf(err, el, "out of memory");
            goto fail;
        }
        s->impl = h;
        s->ops = &http_ops;
        snprintf(s->describe, sizeof(s->describe), "http %s %s (%s%s%s)", cfg->entropy_http_method,
                 cfg->entropy_http_url, cfg->entropy_http_format,
                 cfg->entropy_http_json_path ? " at " : "",
                 cfg->entropy_http_json_path ? cfg->entropy_http_json_path : "");
        describe_http_public(s, cfg);
    } else {
        snprintf(err, el, "unknown entropy source '%s' (known: http, device, exec, pkcs11, os)", kind);
        goto fail;
    }
    if (!s->describe_public[0])
        snprintf(s->describe_public, sizeof(s->describe_public), "%s", s->describe);
    *out = s;
    return 0;
fail:
    free(s);
    return -1;
}

void esrc_destroy(esrc *s)
{
    if (!s)
        return;
    s->ops->close(s);
    if (s->ops == &exec_ops) {
        exec_impl *x = s->impl;
        for (int i = 0; x->argv && x->argv[i]; i++)
            free(x->argv[i]);
        free(x->argv);
        for (int i = 0; x->envp && x->envp[i]; i++)
            free(x->envp[i]);
        free(x->envp);
    } else if (s->ops == &http_ops) {
        http_impl *h = s->impl;
        if (h->bearer) {
            OPENSSL_cleanse(h->bearer, strlen(h->bearer));
            free(h->bearer);
        }
        qbuf_free(h->body);
    }
    free(s->impl);
    free(s);
}
