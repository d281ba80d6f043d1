/*
 * Service tests of the platform CA (ca.h) and device certificates
 * (certs.h) without HTTP: the chain, signing in the token (checked with
 * OpenSSL against the CA's public key), issue and list, refusals that
 * store nothing.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <openssl/bio.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "fixture.h"
#include "service/ca.h"
#include "service/certs.h"
#include "service/devices.h"

static qk_principal admin;

static int setup(void **state)
{
    (void)state;
    admin = fixture_admin("svc-certs");
    return fixture_open(&fx);
}

static void make_device(char *id, size_t len)
{
    device_reg row;
    qk_err e;
    memset(&row, 0, sizeof(row));
    fixture_unique(id, len, "svc-cert");
    snprintf(row.spec.device_id, sizeof(row.spec.device_id), "%s", id);
    snprintf(row.spec.type, sizeof(row.spec.type), "vehicle");
    snprintf(row.spec.group, sizeof(row.spec.group), "default");
    row.spec.nkeys = 1;
    row.spec.key_bits = 128;
    row.spec.validity_days = 365;
    assert_int_equal(devices_register(&fx.svc, &admin, &row, 1, &e), QK_OK);
    assert_true(row.created);
}

/* A PEM CSR for cn (NULL: empty subject) with a new key of the curve. */
static char *make_csr(const char *cn, const char *curve)
{
    EVP_PKEY *k = EVP_EC_gen(curve);
    X509_REQ *req = X509_REQ_new();
    X509_NAME *n = X509_NAME_new();
    BIO *b = BIO_new(BIO_s_mem());
    char *p, *out;
    long len;
    assert_non_null(k);
    if (cn)
        assert_int_equal(X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_ASC, (const unsigned char *)cn,
                                                    -1, -1, 0), 1);
    assert_int_equal(X509_REQ_set_subject_name(req, n), 1);
    assert_int_equal(X509_REQ_set_pubkey(req, k), 1);
    assert_true(X509_REQ_sign(req, k, EVP_sha256()) > 0);
    assert_int_equal(PEM_write_bio_X509_REQ(b, req), 1);
    len = BIO_get_mem_data(b, &p);
    out = malloc((size_t)len + 1);
    assert_non_null(out);
    memcpy(out, p, (size_t)len);
    out[len] = '\0';
    BIO_free(b);
    X509_NAME_free(n);
    X509_REQ_free(req);
    EVP_PKEY_free(k);
    return out;
}

static X509 *pem_cert(const char *pem)
{
    BIO *b = BIO_new_mem_buf(pem, -1);
    X509 *x = PEM_read_bio_X509(b, NULL, NULL, NULL);
    BIO_free(b);
    assert_non_null(x);
    return x;
}

static int count_certs(const char *id)
{
    const char *v[] = {id};
    char *n = fixture_sql1("SELECT count(*) FROM certificates WHERE device_id = $1", 1, v);
    int c = atoi(n);
    free(n);
    return c;
}

static void chain_is_the_active_root(void **state)
{
    char *pem;
    size_t len;
    int version;
    qk_err e;
    X509 *root, *active = ca_active_cert(fx.svc.ca, &version);
    EVP_PKEY *pub;
    (void)state;
    assert_int_equal(ca_chain_pem(fx.svc.ca, &pem, &len, &e), QK_OK);
    assert_int_equal(strlen(pem), len);
    root = pem_cert(pem);
    assert_int_equal(X509_cmp(root, active), 0);
    assert_true(version >= 1);
    pub = X509_get_pubkey(root);
    assert_int_equal(X509_verify(root, pub), 1); /* self-signed, in the token */
    EVP_PKEY_free(pub);
    X509_free(root);
    free(pem);
}

static void issue_and_list(void **state)
{
    char id[64], *csr;
    json_t *out = NULL, *lst = NULL;
    qk_err e;
    X509 *x;
    EVP_PKEY *ca_pub = X509_get_pubkey(ca_active_cert(fx.svc.ca, NULL));
    cert_request rq = {0};
    (void)state;
    make_device(id, sizeof(id));
    csr = make_csr(id, "P-256");
    rq = (cert_request){id, csr, strlen(csr), 7};
    assert_int_equal(certs_issue(&fx.svc, &admin, &rq, &out, &e), QK_OK);
    x = pem_cert(json_string_value(json_object_get(out, "certificate")));
    assert_int_equal(X509_verify(x, ca_pub), 1);
    assert_int_equal(X509_check_purpose(x, X509_PURPOSE_SSL_CLIENT, 0), 1);
    assert_true(X509_get0_notAfter(x) != NULL);
    {
        int days = 0, secs = 0;
        assert_int_equal(ASN1_TIME_diff(&days, &secs, X509_get0_notBefore(x), X509_get0_notAfter(x)), 1);
        assert_int_equal(days, 7);
    }
    assert_int_equal(certs_list(&fx.svc, id, &lst, &e), QK_OK);
    assert_int_equal(json_array_size(json_object_get(lst, "certificates")), 1);
    assert_string_equal(json_string_value(json_object_get(
                            json_array_get(json_object_get(lst, "certificates"), 0), "serial")),
                        json_string_value(json_object_get(out, "serial")));
    X509_free(x);
    EVP_PKEY_free(ca_pub);
    json_decref(out);
    json_decref(lst);
    free(csr);
}

static void refusals_store_nothing(void **state)
{
    char id[64], *other, *k1, *empty;
    json_t *out = NULL;
    qk_err e;
    cert_request rq;
    (void)state;
    make_device(id, sizeof(id));
    other = make_csr("someone-else", "P-256");
    k1 = make_csr(id, "secp256k1");
    empty = make_csr(NULL, "P-256");
    rq = (cert_request){id, other, strlen(other), 0};
    assert_int_equal(certs_issue(&fx.svc, &admin, &rq, &out, &e), QK_INVALID);
    assert_string_equal(e.code, "csr_subject_mismatch");
    rq = (cert_request){id, k1, strlen(k1), 0};
    assert_int_equal(certs_issue(&fx.svc, &admin, &rq, &out, &e), QK_INVALID);
    assert_string_equal(e.code, "unsupported_key");
    rq = (cert_request){id, "not a csr", 9, 0};
    assert_int_equal(certs_issue(&fx.svc, &admin, &rq, &out, &e), QK_INVALID);
    assert_string_equal(e.code, "invalid_csr");
    rq = (cert_request){id, empty, strlen(empty), 3651};
    assert_int_equal(certs_issue(&fx.svc, &admin, &rq, &out, &e), QK_INVALID);
    assert_string_equal(e.code, "invalid_validity");
    assert_null(out);
    assert_int_equal(count_certs(id), 0);
    rq = (cert_request){"no-such-device-xyz", empty, strlen(empty), 0};
    assert_int_equal(certs_issue(&fx.svc, &admin, &rq, &out, &e), QK_NOT_FOUND);
    assert_int_equal(certs_list(&fx.svc, "no-such-device-xyz", &out, &e), QK_NOT_FOUND);
    /* An empty subject gets the device ID. */
    rq = (cert_request){id, empty, strlen(empty), 0};
    assert_int_equal(certs_issue(&fx.svc, &admin, &rq, &out, &e), QK_OK);
    {
        char want[80];
        snprintf(want, sizeof(want), "CN=%s", id);
        assert_string_equal(json_string_value(json_object_get(out, "subject")), want);
    }
    json_decref(out);
    free(other);
    free(k1);
    free(empty);
}

/* Issue a certificate for a new device; its DER into der (OPENSSL_free). */
static char *issue_for(char *id, size_t idlen, unsigned char **der, int *derlen)
{
    char *csr;
    json_t *out = NULL;
    qk_err e;
    cert_request rq;
    X509 *x;
    char *serial;
    make_device(id, idlen);
    csr = make_csr(id, "P-256");
    rq = (cert_request){id, csr, strlen(csr), 0};
    assert_int_equal(certs_issue(&fx.svc, &admin, &rq, &out, &e), QK_OK);
    x = pem_cert(json_string_value(json_object_get(out, "certificate")));
    *der = NULL;
    *derlen = i2d_X509(x, der);
    assert_true(*derlen > 0);
    serial = strdup(json_string_value(json_object_get(out, "serial")));
    X509_free(x);
    json_decref(out);
    free(csr);
    return serial;
}

static qk_kind auth(unsigned char *der, int len, cert_principal *who, qk_err *e)
{
    const unsigned char *ders[1] = {der};
    size_t lens[1] = {(size_t)len};
    return certs_authenticate(&fx.svc, ders, lens, 1, who, e);
}

static void authenticate_by_certificate(void **state)
{
    char id[64], *serial;
    unsigned char *der = NULL;
    int len;
    cert_principal who;
    json_t *out = NULL;
    qk_err e;
    (void)state;
    serial = issue_for(id, sizeof(id), &der, &len);
    assert_int_equal(auth(der, len, &who, &e), QK_OK);
    assert_string_equal(who.device_id, id);
    assert_string_equal(who.serial, serial);
    /* Revoked: refused, and says why (for the log). */
    assert_int_equal(certs_revoke(&fx.svc, &admin, id, serial, "keyCompromise", &out, &e), QK_OK);
    json_decref(out);
    assert_int_equal(auth(der, len, &who, &e), QK_UNAUTHENTICATED);
    assert_string_equal(e.code, "unauthenticated");
    assert_non_null(strstr(e.detail, "revoked"));
    OPENSSL_free(der);
    free(serial);
}

static void authenticate_refusals(void **state)
{
    char id[64], *serial;
    unsigned char *der = NULL, *self = NULL, junk[8] = {0x30, 0x03, 1, 2, 3};
    int len, selflen;
    cert_principal who;
    qk_err e;
    EVP_PKEY *k = EVP_EC_gen("P-256");
    X509 *x = X509_new();
    (void)state;
    /* A device that is not active. */
    serial = issue_for(id, sizeof(id), &der, &len);
    assert_int_equal(devices_set_state(&fx.svc, &admin, id, DEVICE_SUSPEND, &e), QK_OK);
    assert_int_equal(auth(der, len, &who, &e), QK_UNAUTHENTICATED);
    assert_non_null(strstr(e.detail, "not active"));
    /* A certificate the platform CA did not issue (self-signed, same CN). */
    assert_non_null(k);
    X509_set_version(x, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(x), 7);
    X509_NAME_add_entry_by_txt(X509_get_subject_name(x), "CN", MBSTRING_ASC,
                               (const unsigned char *)id, -1, -1, 0);
    X509_set_issuer_name(x, X509_get_subject_name(x));
    X509_gmtime_adj(X509_getm_notBefore(x), -60);
    X509_gmtime_adj(X509_getm_notAfter(x), 86400);
    X509_set_pubkey(x, k);
    assert_true(X509_sign(x, k, EVP_sha256()) > 0);
    selflen = i2d_X509(x, &self);
    assert_int_equal(auth(self, selflen, &who, &e), QK_UNAUTHENTICATED);
    /* Nothing, and bytes that are no certificate. */
    assert_int_equal(certs_authenticate(&fx.svc, NULL, NULL, 0, &who, &e), QK_UNAUTHENTICATED);
    assert_int_equal(auth(junk, 5, &who, &e), QK_UNAUTHENTICATED);
    OPENSSL_free(self);
    OPENSSL_free(der);
    X509_free(x);
    EVP_PKEY_free(k);
    free(serial);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(chain_is_the_active_root),
        cmocka_unit_test(issue_and_list),
        cmocka_unit_test(refusals_store_nothing),
        cmocka_unit_test(authenticate_by_certificate),
        cmocka_unit_test(authenticate_refusals),
    };
    return cmocka_run_group_tests(tests, setup, fixture_teardown);
}
