/*
 * fuzz_cert_pem — the PEM that the certificate routes take from an
 * operator (docs/pki.md): a device's CSR as certs_issue reads it
 * (parse_csr: PEM, the key the profile accepts, the signature, the
 * subject), and a certificate to bind, to a device or an admin token
 * (certs_parse_client: PEM, validity, client-certificate profile, key).
 * The first input byte picks which; the rest is the PEM text.
 *
 * parse_csr is static: this file compiles kmsd/service/certs.c into itself
 * (as fuzz_envelope does device_v1.c), so certs.o is never pulled from the
 * fuzz library. Nothing here reaches the database or the token.
 * Properties: an accepted CSR has a key and names the device or nobody;
 * an accepted certificate is handed back, and nothing leaks either way.
 */
#include "fuzz_common.h"

#include "../kmsd/service/certs.c"

#define FUZZ_DEVICE "FUZZ-DEV-1"

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fuzz_quiet();
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    qk_err e;
    if (size < 1)
        return 0;
    if (data[0] & 1) {
        X509 *x = NULL;
        qk_kind k = certs_parse_client((const char *)data + 1, size - 1, &x, &e);
        FUZZ_CHECK((k == QK_OK) == (x != NULL));
        FUZZ_CHECK(k == QK_OK || k == QK_INVALID || k == QK_INTERNAL);
        X509_free(x);
    } else {
        cert_request rq = {FUZZ_DEVICE, (const char *)data + 1, size - 1, 0};
        X509_REQ *req = NULL;
        EVP_PKEY *key = NULL;
        qk_kind k = parse_csr(&rq, &req, &key, &e);
        FUZZ_CHECK((k == QK_OK) == (req != NULL));
        if (k == QK_OK) {
            FUZZ_CHECK(key != NULL && key == X509_REQ_get0_pubkey(req));
            FUZZ_CHECK(subject_ok(req, FUZZ_DEVICE, &e) == QK_OK);
        }
        X509_REQ_free(req);
    }
    return 0;
}
