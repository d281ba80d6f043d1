/* entropy — ordered entropy sources: the token's RNG and the OS's. */
#include "entropy.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include <openssl/crypto.h>

#include "log.h"

struct entropy_source {
    const entropy_source_ops *ops;
    p11_token *token;
    pthread_mutex_t mu; /* guards the status fields below */
    uint64_t bytes, failures;
    int failing;
    char last_error[128];
};

struct entropy {
    entropy_source src[ENTROPY_MAX_SOURCES];
    int n;
};

int entropy_block_looks_stuck(const uint8_t *buf, size_t len)
{
    if (len < 16)
        return 0;
    for (size_t i = 1; i < len; i++)
        if (buf[i] != buf[0])
            return 0;
    return 1;
}

static int os_read(entropy_source *s, uint8_t *buf, size_t len, char *err, size_t el)
{
    size_t got = 0;
    (void)s;
    while (got < len) {
        ssize_t n = getrandom(buf + got, len - got, 0);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            snprintf(err, el, "getrandom: %s", strerror(errno));
            return -1;
        }
        got += (size_t)n;
    }
    return 0;
}

static int p11_read(entropy_source *s, uint8_t *buf, size_t len, char *err, size_t el)
{
    CK_RV rv = p11_random(s->token, buf, len);
    if (rv != CKR_OK) {
        snprintf(err, el, "C_GenerateRandom: %s", p11_rv_name(rv));
        return -1;
    }
    return 0;
}

static const entropy_source_ops os_ops = {"os", os_read, NULL};
static const entropy_source_ops p11_ops = {"pkcs11", p11_read, NULL};

int entropy_open(entropy **out, const char *spec, p11_token *token, char *err, size_t el)
{
    entropy *e = calloc(1, sizeof(*e));
    char *copy = strdup(spec), *save = NULL, *tok;
    int rc = -1;

    if (!e || !copy) {
        snprintf(err, el, "out of memory");
        goto out;
    }
    for (tok = strtok_r(copy, ", ", &save); tok; tok = strtok_r(NULL, ", ", &save)) {
        const entropy_source_ops *ops = NULL;
        if (!strcmp(tok, "os"))
            ops = &os_ops;
        else if (!strcmp(tok, "pkcs11"))
            ops = &p11_ops;
        if (!ops) {
            snprintf(err, el, "entropy_sources: unknown source '%s' (known: pkcs11, os)", tok);
            goto out;
        }
        if (ops == &p11_ops && !token) {
            snprintf(err, el, "entropy_sources: pkcs11 needs the token");
            goto out;
        }
        for (int i = 0; i < e->n; i++)
            if (e->src[i].ops == ops) {
                snprintf(err, el, "entropy_sources: '%s' listed twice", tok);
                goto out;
            }
        if (e->n == ENTROPY_MAX_SOURCES) {
            snprintf(err, el, "entropy_sources: too many sources");
            goto out;
        }
        e->src[e->n].ops = ops;
        e->src[e->n].token = token;
        pthread_mutex_init(&e->src[e->n].mu, NULL);
        e->n++;
    }
    if (e->n == 0) {
        snprintf(err, el, "entropy_sources: no source configured");
        goto out;
    }
    *out = e;
    e = NULL;
    rc = 0;
out:
    free(copy);
    entropy_close(e);
    return rc;
}

void entropy_close(entropy *e)
{
    if (!e)
        return;
    for (int i = 0; i < e->n; i++) {
        if (e->src[i].ops->close)
            e->src[i].ops->close(&e->src[i]);
        pthread_mutex_destroy(&e->src[i].mu);
    }
    free(e);
}

static void note(entropy_source *s, int ok, size_t len, const char *why)
{
    int was;
    pthread_mutex_lock(&s->mu);
    was = s->failing;
    if (ok) {
        s->bytes += len;
        s->failing = 0;
    } else {
        s->failures++;
        s->failing = 1;
        snprintf(s->last_error, sizeof(s->last_error), "%s", why);
    }
    pthread_mutex_unlock(&s->mu);
    if (was != !ok)
        log_emit(ok ? LOG_INFO : LOG_WARN, ok ? "entropy source recovered" : "entropy source failing",
                 "{s:s,s:s}", "source", s->ops->kind, "error", ok ? "" : why);
}

int entropy_get(entropy *e, uint8_t *buf, size_t len, const char **source)
{
    for (int i = 0; i < e->n; i++) {
        entropy_source *s = &e->src[i];
        char why[128] = "";
        if (s->ops->read(s, buf, len, why, sizeof(why)) == 0) {
            if (!entropy_block_looks_stuck(buf, len)) {
                note(s, 1, len, NULL);
                if (source)
                    *source = s->ops->kind;
                return 0;
            }
            snprintf(why, sizeof(why), "output failed the stuck-output check");
        }
        OPENSSL_cleanse(buf, len);
        note(s, 0, 0, why);
    }
    return -1;
}

int entropy_source_count(const entropy *e) { return e->n; }

void entropy_source_status_get(entropy *e, int i, entropy_source_status *st)
{
    entropy_source *s = &e->src[i];
    pthread_mutex_lock(&s->mu);
    st->name = s->ops->kind;
    st->state = s->failing ? "failing" : "ok";
    st->bytes = s->bytes;
    st->failures = s->failures;
    snprintf(st->last_error, sizeof(st->last_error), "%s", s->last_error);
    pthread_mutex_unlock(&s->mu);
}
