/*
 * v2ops_bench — where a protocol v2 delivery's time goes in kmsd
 * (docs/protocol.md, docs/performance.md "Protocol v2"): each cryptographic
 * step of one answer, timed alone on one thread for S seconds:
 *   verify      the device's ECDSA P-256 signature over R (host, OpenSSL)
 *   token_ecdh  ECDH with the platform's key-agreement key (the token:
 *               CKM_ECDH1_DERIVE, a session object made, read, destroyed)
 *   seal        the answer's payload: an ephemeral pair, two ECDHs, HKDF,
 *               AES-256-GCM (host)
 *   token_sign  the answer's signature with the platform's signing key (the
 *               token: CKM_ECDSA)
 *   cert_parse  a mode 1 certificate's DER (host)
 *
 * usage: v2ops_bench MODULE TOKEN_LABEL PIN_FILE SECONDS
 * Uses the platform keys qkms-v2-sign-1 and qkms-v2-agree-1 kmsd made.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/rand.h>
#include <openssl/x509.h>

#include "p11.h"
#include "qkms_proto2.h"

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

typedef int (*op_fn)(void *);

/* Microseconds per call of fn over secs seconds; -1 on a failure. */
static double time_op(op_fn fn, void *arg, double secs)
{
    double t0 = now(), end = t0 + secs;
    long n = 0;
    while (now() < end) {
        if (fn(arg) != 0)
            return -1;
        n++;
    }
    return n ? 1e6 * (now() - t0) / (double)n : -1;
}

static p11_token *tok;
static CK_OBJECT_HANDLE sign_h, agree_h;
static EVP_PKEY *dev_key, *eph_pub;
static uint8_t r_msg[700], sig[64], eph_pt[65], dev_pt[65], h[32];
static unsigned char *cert_der;
static int cert_len;

static int op_verify(void *a)
{
    (void)a;
    return qkp2_verify(dev_key, QKP2_REQ_PREFIX, r_msg, sizeof(r_msg), sig);
}

static int op_token_ecdh(void *a)
{
    uint8_t z[32];
    (void)a;
    return p11_ecdh_derive(tok, agree_h, eph_pt, sizeof(eph_pt), z) == CKR_OK ? 0 : -1;
}

static int op_seal(void *a)
{
    EVP_PKEY *es = qkp2_keygen();
    uint8_t epk_s[65], z2[32], z3[32], k2[32], key[32] = {1}, ct[48];
    int rc = -1;
    (void)a;
    if (es && qkp2_key_point(es, epk_s) == 0 && qkp2_ecdh(es, eph_pub, z2) == 0 &&
        qkp2_ecdh(es, dev_key, z3) == 0 && qkp2_resp_key(z2, z3, 32, h, epk_s, k2) == 0 &&
        qkp2_payload_seal(k2, "00000000-0000-4000-8000-000000000000", key, 32, ct) == 0)
        rc = 0;
    EVP_PKEY_free(es);
    return rc;
}

static int op_token_sign(void *a)
{
    uint8_t dg[32], s[64];
    size_t sl = sizeof(s);
    (void)a;
    if (qkp2_digest(QKP2_RESP_PREFIX, r_msg, 400, dg) != 0)
        return -1;
    return p11_ecdsa_sign(tok, sign_h, dg, 32, s, &sl) == CKR_OK ? 0 : -1;
}

static int op_cert_parse(void *a)
{
    const unsigned char *p = cert_der;
    X509 *x = d2i_X509(NULL, &p, cert_len);
    (void)a;
    X509_free(x);
    return x ? 0 : -1;
}

int main(int argc, char **argv)
{
    char pin[256] = "", err[256];
    FILE *f;
    bool found = false;
    double secs;
    EVP_PKEY *eph;
    X509 *x;
    X509_NAME *n;

    if (argc != 5) {
        fprintf(stderr, "usage: v2ops_bench MODULE LABEL PIN_FILE SECONDS\n");
        return 2;
    }
    if (!(f = fopen(argv[3], "r")) || !fgets(pin, sizeof(pin), f))
        return 1;
    fclose(f);
    pin[strcspn(pin, "\r\n")] = 0;
    secs = atof(argv[4]);
    if (secs <= 0 || secs > 60)
        return 2;
    p11_opts o = {argv[1], argv[2], pin, strlen(pin), 2};
    if (p11_open(&tok, &o, err, sizeof(err)) != CKR_OK) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    if (p11_find_private_key(tok, "qkms-v2-sign-1", &sign_h, &found) != CKR_OK || !found ||
        p11_find_private_key(tok, "qkms-v2-agree-1", &agree_h, &found) != CKR_OK || !found) {
        fprintf(stderr, "no platform keys qkms-v2-sign-1/agree-1 in the token\n");
        return 1;
    }
    RAND_bytes(r_msg, sizeof(r_msg));
    RAND_bytes(h, sizeof(h));
    dev_key = qkp2_keygen();
    eph = qkp2_keygen();
    if (!dev_key || !eph || qkp2_key_point(eph, eph_pt) != 0 ||
        qkp2_key_point(dev_key, dev_pt) != 0 || !(eph_pub = qkp2_point_key(eph_pt, 65)) ||
        qkp2_sign(dev_key, QKP2_REQ_PREFIX, r_msg, sizeof(r_msg), sig) != 0)
        return 1;
    /* A device certificate's size and shape: P-256, self-signed. */
    x = X509_new();
    n = X509_NAME_new();
    X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_ASC, (const unsigned char *)"BENCH-DEVICE-0001",
                               -1, -1, 0);
    X509_set_version(x, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
    X509_set_subject_name(x, n);
    X509_set_issuer_name(x, n);
    X509_gmtime_adj(X509_getm_notBefore(x), 0);
    X509_gmtime_adj(X509_getm_notAfter(x), 86400);
    X509_set_pubkey(x, dev_key);
    X509_sign(x, dev_key, EVP_sha256());
    cert_len = i2d_X509(x, &cert_der);
    printf("name=v2_ops verify_us=%.1f token_ecdh_us=%.1f seal_us=%.1f token_sign_us=%.1f "
           "cert_parse_us=%.1f\n",
           time_op(op_verify, NULL, secs), time_op(op_token_ecdh, NULL, secs),
           time_op(op_seal, NULL, secs), time_op(op_token_sign, NULL, secs),
           time_op(op_cert_parse, NULL, secs));
    X509_free(x);
    X509_NAME_free(n);
    OPENSSL_free(cert_der);
    EVP_PKEY_free(dev_key);
    EVP_PKEY_free(eph);
    EVP_PKEY_free(eph_pub);
    p11_close(tok);
    return 0;
}
