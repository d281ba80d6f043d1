/* trust — client certificate issuers beyond the platform CA (trust.h). */
#include "service/trust.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509_vfy.h>

#include "log.h"
#include "service/x509util.h"

/* How often trust_store looks at the CRL file. */
#define TRUST_CRL_CHECK_S 10
#define TRUST_FILE_MAX (8 << 20)

struct qk_trust {
    pthread_mutex_t mu;
    char *ca_pem;              /* the bundle as read */
    STACK_OF(X509) *cas;
    char *crl_file;            /* NULL: no CRL checks */
    struct stat crl_st;        /* the CRL file as last read */
    time_t crl_checked;        /* monotonic seconds of the last look */
    X509_STORE *store;         /* the CAs and the CRLs last read */
};

static char *read_all(const char *path, size_t *len, char *err, size_t el)
{
    FILE *f = fopen(path, "rb");
    char *buf = NULL;
    size_t n = 0, cap = 0;
    if (!f) {
        snprintf(err, el, "cannot open %s", path);
        return NULL;
    }
    for (;;) {
        if (n + 4096 + 1 > cap) {
            char *nb;
            cap = cap ? cap * 2 : 16384;
            if (cap > TRUST_FILE_MAX || !(nb = realloc(buf, cap))) {
                snprintf(err, el, "%s is larger than %d bytes", path, TRUST_FILE_MAX);
                goto fail;
            }
            buf = nb;
        }
        size_t r = fread(buf + n, 1, cap - n - 1, f);
        n += r;
        if (r == 0)
            break;
    }
    if (ferror(f)) {
        snprintf(err, el, "cannot read %s", path);
        goto fail;
    }
    fclose(f);
    buf[n] = 0;
    *len = n;
    return buf;
fail:
    fclose(f);
    free(buf);
    return NULL;
}

/* A new store of t's CAs and the CRLs in crl_file (when set). NULL, with
 * err, when the CRL file cannot be read or parsed. */
static X509_STORE *build_store(qk_trust *t, struct stat *st, char *err, size_t el)
{
    X509_STORE *s = X509_STORE_new();
    char *pem = NULL;
    size_t len = 0;
    BIO *b = NULL;
    X509_CRL *crl;
    int ncrl = 0;

    if (!s)
        goto nomem;
    for (int i = 0; i < sk_X509_num(t->cas); i++)
        if (X509_STORE_add_cert(s, sk_X509_value(t->cas, i)) != 1)
            goto nomem;
    if (!t->crl_file)
        return s;
    if (stat(t->crl_file, st) != 0 || !(pem = read_all(t->crl_file, &len, err, el))) {
        snprintf(err, el, "cannot read tls_client_crl_file %s", t->crl_file);
        goto fail;
    }
    if (!(b = BIO_new_mem_buf(pem, (int)len)))
        goto nomem;
    while ((crl = PEM_read_bio_X509_CRL(b, NULL, NULL, NULL))) {
        int ok = X509_STORE_add_crl(s, crl);
        X509_CRL_free(crl);
        if (ok != 1)
            goto nomem;
        ncrl++;
    }
    if (ERR_GET_REASON(ERR_peek_last_error()) != PEM_R_NO_START_LINE || ncrl == 0) {
        snprintf(err, el, "tls_client_crl_file %s: %s", t->crl_file,
                 ncrl ? "a CRL does not parse" : "no CRL in it");
        goto fail;
    }
    ERR_clear_error();
    X509_STORE_set_flags(s, X509_V_FLAG_CRL_CHECK | X509_V_FLAG_CRL_CHECK_ALL);
    BIO_free(b);
    free(pem);
    return s;
nomem:
    snprintf(err, el, "out of memory");
fail:
    ERR_clear_error();
    BIO_free(b);
    free(pem);
    X509_STORE_free(s);
    return NULL;
}

static time_t mono_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec;
}

int trust_open(qk_trust **out, const char *ca_file, const char *crl_file, char *err, size_t el)
{
    qk_trust *t;
    size_t len = 0;

    *out = NULL;
    if (!ca_file)
        return 0;
    if (!(t = calloc(1, sizeof(*t)))) {
        snprintf(err, el, "out of memory");
        return -1;
    }
    pthread_mutex_init(&t->mu, NULL);
    if (!(t->ca_pem = read_all(ca_file, &len, err, el)))
        goto fail;
    if (!(t->cas = x509_parse_chain(t->ca_pem, len))) {
        snprintf(err, el, "tls_client_ca_file %s: no certificate, or one that does not parse",
                 ca_file);
        goto fail;
    }
    if (crl_file && !(t->crl_file = strdup(crl_file))) {
        snprintf(err, el, "out of memory");
        goto fail;
    }
    if (!(t->store = build_store(t, &t->crl_st, err, el)))
        goto fail;
    t->crl_checked = mono_s();
    *out = t;
    return 0;
fail:
    trust_free(t);
    return -1;
}

void trust_free(qk_trust *t)
{
    if (!t)
        return;
    X509_STORE_free(t->store);
    sk_X509_pop_free(t->cas, X509_free);
    free(t->ca_pem);
    free(t->crl_file);
    pthread_mutex_destroy(&t->mu);
    free(t);
}

static bool same_file(const struct stat *a, const struct stat *b)
{
    return a->st_ino == b->st_ino && a->st_dev == b->st_dev && a->st_size == b->st_size &&
           a->st_mtim.tv_sec == b->st_mtim.tv_sec && a->st_mtim.tv_nsec == b->st_mtim.tv_nsec;
}

/* Under t->mu: read the CRL file again if it changed since last read. */
static void crl_refresh(qk_trust *t)
{
    struct stat st;
    char err[256];
    X509_STORE *ns;
    time_t now = mono_s();

    if (!t->crl_file || now - t->crl_checked < TRUST_CRL_CHECK_S)
        return;
    t->crl_checked = now;
    if (stat(t->crl_file, &st) == 0 && same_file(&st, &t->crl_st))
        return;
    if (!(ns = build_store(t, &st, err, sizeof(err)))) {
        log_emit(LOG_ERROR, "client CRL file not reloaded; the previous CRLs stay in use",
                 "{s:s}", "error", err);
        return;
    }
    X509_STORE_free(t->store);
    t->store = ns;
    t->crl_st = st;
    log_emit(LOG_INFO, "client CRL file reloaded", "{s:s}", "file", t->crl_file);
}

X509_STORE *trust_store(qk_trust *t)
{
    X509_STORE *s = NULL;
    if (!t)
        return NULL;
    pthread_mutex_lock(&t->mu);
    crl_refresh(t);
    if (X509_STORE_up_ref(t->store) == 1)
        s = t->store;
    pthread_mutex_unlock(&t->mu);
    return s;
}

const char *trust_pem(qk_trust *t) { return t ? t->ca_pem : NULL; }
