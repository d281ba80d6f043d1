/* servercert — kmsd's TLS server certificate from the platform CA (servercert.h). */
#include "service/servercert.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/bio.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "log.h"
#include "service/audit.h"
#include "service/ca.h"
#include "service/x509util.h"

#define SC_MAX_NAMES 16
#define SC_NAME_MAX 253
#define SC_DAYS 365
#define SC_BACKDATE_S 60

typedef struct {
    int n;
    struct {
        bool ip;
        unsigned char addr[16];
        int alen;
        char name[SC_NAME_MAX + 1];
    } v[SC_MAX_NAMES];
} name_list;

static bool dns_ok(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > SC_NAME_MAX || s[0] == '.' || s[n - 1] == '.' || strstr(s, ".."))
        return false;
    if (!strncmp(s, "*.", 2))
        s += 2;
    for (; *s; s++)
        if (!isalnum((unsigned char)*s) && *s != '-' && *s != '.')
            return false;
    return true;
}

static int parse_names(const char *in, name_list *nl, char *err, size_t el)
{
    memset(nl, 0, sizeof(*nl));
    while (*in) {
        size_t l = strcspn(in, ",");
        const char *p = in;
        while (l && isspace((unsigned char)*p)) {
            p++;
            l--;
        }
        while (l && isspace((unsigned char)p[l - 1]))
            l--;
        if (l) {
            if (nl->n == SC_MAX_NAMES || l > SC_NAME_MAX) {
                snprintf(err, el, "tls_server_names: at most %d names of %d bytes", SC_MAX_NAMES,
                         SC_NAME_MAX);
                return -1;
            }
            memcpy(nl->v[nl->n].name, p, l);
            nl->v[nl->n].name[l] = 0;
            if (inet_pton(AF_INET, nl->v[nl->n].name, nl->v[nl->n].addr) == 1) {
                nl->v[nl->n].ip = true;
                nl->v[nl->n].alen = 4;
            } else if (inet_pton(AF_INET6, nl->v[nl->n].name, nl->v[nl->n].addr) == 1) {
                nl->v[nl->n].ip = true;
                nl->v[nl->n].alen = 16;
            } else if (!dns_ok(nl->v[nl->n].name)) {
                snprintf(err, el, "tls_server_names: '%.64s' is neither a DNS name nor an IP address",
                         nl->v[nl->n].name);
                return -1;
            }
            nl->n++;
        }
        in = p + l;
        while (*in && *in != ',')
            in++;
        if (*in == ',')
            in++;
    }
    if (nl->n == 0) {
        snprintf(err, el, "tls_server_names: no name");
        return -1;
    }
    return 0;
}

/* Does the certificate's subjectAltName hold exactly the names of nl? */
static bool same_names(X509 *x, const name_list *nl)
{
    GENERAL_NAMES *gns = X509_get_ext_d2i(x, NID_subject_alt_name, NULL, NULL);
    int n = gns ? sk_GENERAL_NAME_num(gns) : 0;
    bool ok = n == nl->n;
    for (int i = 0; ok && i < n; i++) {
        const GENERAL_NAME *g = sk_GENERAL_NAME_value(gns, i);
        bool found = false;
        for (int j = 0; !found && j < nl->n; j++) {
            if (nl->v[j].ip && g->type == GEN_IPADD)
                found = ASN1_STRING_length(g->d.iPAddress) == nl->v[j].alen &&
                        !memcmp(ASN1_STRING_get0_data(g->d.iPAddress), nl->v[j].addr,
                                (size_t)nl->v[j].alen);
            else if (!nl->v[j].ip && g->type == GEN_DNS)
                found = (size_t)ASN1_STRING_length(g->d.dNSName) == strlen(nl->v[j].name) &&
                        !strncasecmp((const char *)ASN1_STRING_get0_data(g->d.dNSName),
                                     nl->v[j].name, strlen(nl->v[j].name));
        }
        ok = found;
    }
    GENERAL_NAMES_free(gns);
    return ok;
}

static X509 *read_cert(const char *path)
{
    FILE *f = fopen(path, "r");
    X509 *x;
    if (!f)
        return NULL;
    x = PEM_read_X509(f, NULL, NULL, NULL);
    fclose(f);
    return x;
}

static EVP_PKEY *read_key(const char *path)
{
    FILE *f = fopen(path, "r");
    EVP_PKEY *k;
    if (!f)
        return NULL;
    k = PEM_read_PrivateKey(f, NULL, NULL, NULL);
    fclose(f);
    return k;
}

/* Why the files on disk must be replaced, or NULL when they may stay. */
static const char *replace_why(qk_ca *ca, const char *cert_file, const char *key_file,
                               const name_list *nl)
{
    X509 *x = read_cert(cert_file);
    EVP_PKEY *k = NULL;
    X509_STORE_CTX *ctx = NULL;
    const char *why = NULL;
    time_t nb, na, now = time(NULL);

    if (!x) {
        why = "no certificate";
        goto out;
    }
    if (!(k = read_key(key_file)) || X509_check_private_key(x, k) != 1) {
        why = "the key file does not hold the certificate's key";
        goto out;
    }
    if (!(ctx = X509_STORE_CTX_new()) || X509_STORE_CTX_init(ctx, ca_store(ca), x, NULL) != 1 ||
        X509_STORE_CTX_set_purpose(ctx, X509_PURPOSE_SSL_SERVER) != 1 || X509_verify_cert(ctx) != 1) {
        why = "not a server certificate of the platform CA";
        goto out;
    }
    nb = x509_time(X509_get0_notBefore(x));
    na = x509_time(X509_get0_notAfter(x));
    if (!nb || !na || na - now < (na - nb) / 3) {
        why = "less than a third of its lifetime left";
        goto out;
    }
    if (!same_names(x, nl))
        why = "other names than tls_server_names";
out:
    ERR_clear_error();
    X509_STORE_CTX_free(ctx);
    EVP_PKEY_free(k);
    X509_free(x);
    return why;
}

static int add_san(X509 *x, const name_list *nl)
{
    GENERAL_NAMES *gns = GENERAL_NAMES_new();
    int ok = gns ? 0 : -1;
    for (int i = 0; ok == 0 && i < nl->n; i++) {
        GENERAL_NAME *g = GENERAL_NAME_new();
        ASN1_STRING *v = ASN1_OCTET_STRING_new();
        ok = -1;
        if (g && v &&
            (nl->v[i].ip ? ASN1_OCTET_STRING_set(v, nl->v[i].addr, nl->v[i].alen)
                         : ASN1_STRING_set(v, nl->v[i].name, -1)) == 1) {
            /* An IA5String for a DNS name: the same ASN1_STRING, another tag. */
            if (!nl->v[i].ip)
                v->type = V_ASN1_IA5STRING;
            GENERAL_NAME_set0_value(g, nl->v[i].ip ? GEN_IPADD : GEN_DNS, v);
            v = NULL;
            if (sk_GENERAL_NAME_push(gns, g)) {
                g = NULL;
                ok = 0;
            }
        }
        ASN1_STRING_free(v);
        GENERAL_NAME_free(g);
    }
    if (ok == 0)
        ok = X509_add1_ext_i2d(x, NID_subject_alt_name, gns, 0, 0) == 1 ? 0 : -1;
    GENERAL_NAMES_free(gns);
    return ok;
}

static X509 *build(qk_ca *ca, EVP_PKEY *key, const name_list *nl)
{
    X509 *issuer = ca_active_cert(ca, NULL), *x = X509_new();
    X509_NAME *n = X509_NAME_new();
    long secs = (long)SC_DAYS * 86400;
    time_t ca_end = x509_time(X509_get0_notAfter(issuer));
    bool ok;
    if (ca_end && ca_end - time(NULL) < secs)
        secs = (long)(ca_end - time(NULL));
    ok = x && n && secs > 3600 && X509_set_version(x, 2) == 1 && x509_random_serial(x) == 0 &&
         /* A CN holds at most 64 characters (RFC 5280's ub-common-name);
          * the names themselves are in the subjectAltName, which clients
          * match. */
         X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_UTF8,
                                    (const unsigned char *)(strlen(nl->v[0].name) <= 64
                                                                ? nl->v[0].name
                                                                : "qkms kmsd"),
                                    -1, -1, 0) == 1 &&
         X509_set_subject_name(x, n) == 1 &&
         X509_set_issuer_name(x, X509_get_subject_name(issuer)) == 1 &&
         X509_gmtime_adj(X509_getm_notBefore(x), -SC_BACKDATE_S) &&
         X509_gmtime_adj(X509_getm_notAfter(x), secs) && X509_set_pubkey(x, key) == 1 &&
         x509_add_ext(x, issuer, NID_basic_constraints, "critical,CA:FALSE") == 0 &&
         x509_add_ext(x, issuer, NID_key_usage, "critical,digitalSignature") == 0 &&
         x509_add_ext(x, issuer, NID_ext_key_usage, "serverAuth") == 0 && add_san(x, nl) == 0 &&
         x509_add_ext(x, issuer, NID_subject_key_identifier, "hash") == 0 &&
         x509_add_ext(x, issuer, NID_authority_key_identifier, "keyid:always") == 0;
    X509_NAME_free(n);
    if (!ok) {
        X509_free(x);
        return NULL;
    }
    return x;
}

/* Write the bytes of b to path through a temporary file beside it, with
 * mode, synced, then renamed over path. 0, or -1 with errno. */
static int write_atomic(const char *path, BIO *b, mode_t mode)
{
    char tmp[4096];
    char *data;
    long n = BIO_get_mem_data(b, &data);
    int fd, rc = -1, e;
    if (snprintf(tmp, sizeof(tmp), "%s.new.%ld", path, (long)getpid()) >= (int)sizeof(tmp)) {
        errno = ENAMETOOLONG;
        return -1;
    }
    unlink(tmp);
    if ((fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode)) < 0)
        return -1;
    if (fchmod(fd, mode) == 0 && n >= 0 && write(fd, data, (size_t)n) == (ssize_t)n &&
        fsync(fd) == 0)
        rc = 0;
    e = errno;
    close(fd);
    if (rc == 0 && rename(tmp, path) != 0) {
        e = errno;
        rc = -1;
    }
    if (rc != 0)
        unlink(tmp);
    errno = e;
    return rc;
}

typedef struct {
    json_t *detail;
} issued_tx;

static db_status issued_fn(db_conn *c, void *arg)
{
    issued_tx *t = arg;
    return audit_append(c, "kmsd", "ca.server_certificate_issued", NULL, json_incref(t->detail));
}

int servercert_ensure(qk_svc *s, const char *names, const char *cert_file, const char *key_file,
                      char *err, size_t el)
{
    name_list nl;
    const char *why;
    EVP_PKEY *key = NULL;
    X509 *x = NULL;
    BIO *kb = NULL, *cb = NULL;
    json_t *jnames = NULL;
    issued_tx t = {NULL};
    char sha[65], spki[65], serial[41];
    CK_RV rv;
    db_status st;
    int rc = -1;

    if (parse_names(names, &nl, err, el) != 0)
        return -1;
    if (!(why = replace_why(s->ca, cert_file, key_file, &nl))) {
        log_emit(LOG_INFO, "server certificate kept", "{s:s}", "file", cert_file);
        return 0;
    }
    if (!(key = EVP_EC_gen("P-256")) || !(x = build(s->ca, key, &nl))) {
        snprintf(err, el, "cannot build a server certificate (out of memory, or the platform CA "
                          "expires within an hour)");
        goto out;
    }
    if ((rv = ca_sign(s->ca, x)) != CKR_OK) {
        /* CKR_KEY_CHANGED: the CA rotated meanwhile; a start retries. */
        snprintf(err, el, "the token did not sign the server certificate: %s", p11_rv_name(rv));
        goto out;
    }
    if (!(kb = BIO_new(BIO_s_secmem())) || !(cb = BIO_new(BIO_s_mem())) ||
        PEM_write_bio_PrivateKey(kb, key, NULL, NULL, 0, NULL, NULL) != 1 ||
        PEM_write_bio_X509(cb, x) != 1 || PEM_write_bio_X509(cb, ca_active_cert(s->ca, NULL)) != 1) {
        snprintf(err, el, "out of memory");
        goto out;
    }
    if (x509_digests(x, sha, spki) != 0 || x509_serial_hex(x, serial, sizeof(serial)) != 0 ||
        !(jnames = json_array())) {
        snprintf(err, el, "out of memory");
        goto out;
    }
    for (int i = 0; i < nl.n; i++)
        json_array_append_new(jnames, json_string(nl.v[i].name));
    t.detail = json_pack("{s:s,s:O,s:s,s:s,s:o}", "serial", serial, "names", jnames, "sha256", sha,
                         "spki_sha256", spki, "not_after",
                         x509_rfc3339(x509_time(X509_get0_notAfter(x))));
    if (!t.detail || (st = db_tx(s->db, issued_fn, &t)) != DB_OK) {
        snprintf(err, el, "cannot record the server certificate in the audit log");
        goto out;
    }
    /* Recorded before it is written: the audit log may name a certificate
     * that never served, never miss one that did. The key first: the
     * certificate file never names a key that is not there. */
    if (write_atomic(key_file, kb, 0600) != 0 || write_atomic(cert_file, cb, 0644) != 0) {
        snprintf(err, el, "cannot write %s or %s: %s", key_file, cert_file, strerror(errno));
        goto out;
    }
    log_emit(LOG_INFO, "server certificate issued by the platform CA", "{s:s,s:s,s:s,s:O}",
             "reason", why, "serial", serial, "file", cert_file, "names", jnames);
    rc = 0;
out:
    BIO_free_all(kb); /* the secure heap's: wiped when freed */
    BIO_free_all(cb);
    json_decref(t.detail);
    json_decref(jnames);
    X509_free(x);
    EVP_PKEY_free(key);
    return rc;
}
