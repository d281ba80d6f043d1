/*
 * fuzz_fillpkg — opening a fill package (common/fillpkg.c, docs/devices.md):
 * the bytes `kmsctl fill open` reads from a file that came from elsewhere.
 * The package is opened with a fixed station key on the curve its header
 * names (X25519 or P-256), so mutations of a sealed seed get past the header
 * checks into ECDH, HKDF and AES-GCM. A package that opens must give exactly
 * its ciphertext length less the tag, and its plaintext then goes on to the
 * device library's fill document reader (qkd_device_load), as on a device.
 *
 * The keys below are test keys (fuzz/make_corpus.py seals the seeds to
 * them); they protect nothing.
 */
#include "fuzz_common.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/pem.h>

#include "fillpkg.h"
#include "qkms_device.h"

/* FUZZ-KEY x25519 */
static const char x25519_hex[] = "e6514784c27bc8cdae8bb869ab04088c7597a255e50194ef320b593d0c2fae20";
/* FUZZ-KEY p256 */
static const char p256_pem[] = "-----BEGIN PRIVATE KEY-----\n"
                               "MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgpcIRnPVjUvRbbPqY\n"
                               "wzZIJBdSJNese8ViHjlZwPOdWRKhRANCAASO168p1eLGKDrztZESRyQDxanclGdM\n"
                               "tod4dof1jLkAGtsuuxkCf2t3Y01J2dZbMn+aXbjaMigXEMhzSGjzzt6w\n"
                               "-----END PRIVATE KEY-----\n";

static EVP_PKEY *x25519, *p256;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    uint8_t raw[32];
    BIO *b;
    (void)argc;
    (void)argv;
    fuzz_quiet();
    for (size_t i = 0; i < sizeof(raw); i++) {
        unsigned v;
        FUZZ_CHECK(sscanf(x25519_hex + 2 * i, "%2x", &v) == 1);
        raw[i] = (uint8_t)v;
    }
    x25519 = EVP_PKEY_new_raw_private_key(EVP_PKEY_X25519, NULL, raw, sizeof(raw));
    b = BIO_new_mem_buf(p256_pem, -1);
    p256 = b ? PEM_read_bio_PrivateKey(b, NULL, NULL, NULL) : NULL;
    BIO_free(b);
    FUZZ_CHECK(x25519 && p256);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    EVP_PKEY *priv = size > 5 && data[5] == FILLPKG_CURVE_P256 ? p256 : x25519;
    uint8_t *pt = NULL;
    size_t pt_len = 0;
    char err[256];

    if (fillpkg_open(priv, data, size, &pt, &pt_len, err, sizeof(err)) != 0) {
        FUZZ_CHECK(pt == NULL && err[0] != 0);
        return 0;
    }
    {
        size_t eplen = data[5] == FILLPKG_CURVE_P256 ? 65 : 32;
        FUZZ_CHECK(pt != NULL && pt_len == size - (8 + eplen + 32 + 12 + 4) - 16);
    }
    {
        qkd_device *d = NULL;
        if (qkd_device_load(&d, (const char *)pt, pt_len, err, sizeof(err)) == QKD_OK)
            FUZZ_CHECK(d && d->nkeys > 0);
        qkd_device_free(d);
    }
    OPENSSL_secure_clear_free(pt, pt_len);
    return 0;
}
