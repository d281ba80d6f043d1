/* x509util — small X.509 and PEM helpers of the CA and the certificates (x509util.h). */
#include "service/x509util.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/sha.h>
#include <openssl/x509v3.h>

void x509_hex(const unsigned char *b, size_t n, char *out)
{
    const char hx[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = hx[b[i] >> 4];
        out[2 * i + 1] = hx[b[i] & 15];
    }
    out[2 * n] = '\0';
}

int x509_unhex(const char *h, unsigned char **out, size_t *len)
{
    size_t n = strlen(h) / 2;
    long l = 0;
    unsigned char *b = OPENSSL_hexstr2buf(n ? h : "00", &l);
    if (!b)
        return -1;
    *out = b;
    *len = n ? (size_t)l : 0;
    return 0;
}

time_t x509_time(const ASN1_TIME *t)
{
    struct tm tm;
    if (!t || ASN1_TIME_to_tm(t, &tm) != 1)
        return 0;
    return timegm(&tm);
}

json_t *x509_rfc3339(time_t t)
{
    struct tm tm;
    char buf[32];
    if (!gmtime_r(&t, &tm) || !strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm))
        return json_null();
    return json_string(buf);
}

/* The certificate's SHA-256 over its DER and over its SubjectPublicKeyInfo. */
int x509_digests(X509 *x, char sha[65], char spki[65])
{
    unsigned char md[SHA256_DIGEST_LENGTH], *der = NULL;
    unsigned int n = 0;
    int len;
    if (X509_digest(x, EVP_sha256(), md, &n) != 1 || n != SHA256_DIGEST_LENGTH)
        return -1;
    x509_hex(md, n, sha);
    if ((len = i2d_X509_PUBKEY(X509_get_X509_PUBKEY(x), &der)) <= 0)
        return -1;
    SHA256(der, (size_t)len, md);
    OPENSSL_free(der);
    x509_hex(md, SHA256_DIGEST_LENGTH, spki);
    return 0;
}

char *x509_name_text(const X509_NAME *n)
{
    BIO *b = BIO_new(BIO_s_mem());
    char *out = NULL, *p;
    long len;
    if (!b)
        return NULL;
    if (X509_NAME_print_ex(b, n, 0, XN_FLAG_RFC2253) >= 0 && (len = BIO_get_mem_data(b, &p)) >= 0 &&
        (out = malloc((size_t)len + 1))) {
        memcpy(out, p, (size_t)len);
        out[len] = '\0';
    }
    BIO_free(b);
    return out;
}

char *x509_pem(X509 *x, size_t *len)
{
    BIO *b = BIO_new(BIO_s_mem());
    char *out = NULL, *p;
    long n;
    if (!b)
        return NULL;
    if (PEM_write_bio_X509(b, x) == 1 && (n = BIO_get_mem_data(b, &p)) > 0 &&
        (out = malloc((size_t)n + 1))) {
        memcpy(out, p, (size_t)n);
        out[n] = '\0';
        if (len)
            *len = (size_t)n;
    }
    BIO_free(b);
    return out;
}

int x509_add_ext(X509 *x, X509 *issuer, int nid, const char *value)
{
    X509V3_CTX ctx;
    X509_EXTENSION *ext;
    int ok;
    X509V3_set_ctx(&ctx, issuer, x, NULL, NULL, 0);
    if (!(ext = X509V3_EXT_conf_nid(NULL, &ctx, nid, value)))
        return -1;
    ok = X509_add_ext(x, ext, -1);
    X509_EXTENSION_free(ext);
    return ok == 1 ? 0 : -1;
}

int x509_random_serial(X509 *x)
{
    unsigned char b[16];
    BIGNUM *bn = NULL;
    int ok = -1;
    if (RAND_bytes(b, sizeof(b)) != 1)
        return -1;
    b[0] = (b[0] & 0x7f) | 0x40; /* positive, and always 16 bytes long */
    if ((bn = BN_bin2bn(b, sizeof(b), NULL)) && BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(x)))
        ok = 0;
    BN_free(bn);
    return ok;
}

int x509_serial_hex(X509 *x, char *out, size_t len)
{
    const ASN1_INTEGER *sn = X509_get0_serialNumber(x);
    BIGNUM *bn = sn ? ASN1_INTEGER_to_BN(sn, NULL) : NULL;
    char *h = NULL;
    int rc = -1;
    /* RFC 5280 4.1.2.2: positive, at most 20 octets. */
    if (bn && !BN_is_negative(bn) && !BN_is_zero(bn) && BN_num_bytes(bn) <= 20 &&
        (h = BN_bn2hex(bn)) && strlen(h) < len) {
        size_t i;
        for (i = 0; h[i]; i++)
            out[i] = (char)(h[i] >= 'A' && h[i] <= 'F' ? h[i] - 'A' + 'a' : h[i]);
        out[i] = '\0';
        /* BN_bn2hex pads to whole bytes; the schema wants at least 2 digits. */
        rc = i >= 2 ? 0 : -1;
    }
    OPENSSL_free(h);
    BN_free(bn);
    return rc;
}

STACK_OF(X509) *x509_parse_chain(const char *pem, size_t len)
{
    BIO *b = len <= INT_MAX ? BIO_new_mem_buf(pem, (int)len) : NULL;
    STACK_OF(X509) *sk = sk_X509_new_null();
    X509 *x;
    if (!b || !sk)
        goto fail;
    while ((x = PEM_read_bio_X509(b, NULL, NULL, NULL)))
        if (!sk_X509_push(sk, x)) {
            X509_free(x);
            goto fail;
        }
    /* The loop ends at the end of the text (PEM_R_NO_START_LINE) or at a
     * block that does not parse: only the first will do. */
    if (ERR_GET_REASON(ERR_peek_last_error()) != PEM_R_NO_START_LINE || sk_X509_num(sk) == 0)
        goto fail;
    ERR_clear_error();
    BIO_free(b);
    return sk;
fail:
    ERR_clear_error();
    BIO_free(b);
    sk_X509_pop_free(sk, X509_free);
    return NULL;
}
