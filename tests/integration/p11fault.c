/*
 * p11fault — a PKCS#11 module for tests only: it forwards every call to a
 * real module (SoftHSMv2 unless P11FAULT_MODULE names another) and loses the
 * answer of the first P11FAULT_GENERATE_KEY_LOSSES C_GenerateKey calls: the
 * key IS created in the token, but the caller is told CKR_SESSION_CLOSED, as
 * when a network HSM's connection drops after it has done the work.
 *
 * Built by tests/integration/test_hardening_entropy.py, never by the
 * Makefile and never linked into kmsd: kmsd loads it only where a test sets
 * pkcs11_module to it. Each injected loss is appended as a line to the file
 * named by P11FAULT_LOG (if set).
 */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>

#include <p11-kit/pkcs11.h>

static CK_FUNCTION_LIST shim;
static CK_FUNCTION_LIST_PTR real;
static int losses = -1;

static void note(const char *what)
{
    const char *path = getenv("P11FAULT_LOG");
    FILE *f = path ? fopen(path, "a") : NULL;
    if (f) {
        fprintf(f, "%s\n", what);
        fclose(f);
    }
}

static CK_RV gen_key(CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_ATTRIBUTE_PTR t, CK_ULONG n,
                     CK_OBJECT_HANDLE_PTR h)
{
    CK_RV rv = real->C_GenerateKey(s, m, t, n, h);
    if (losses < 0) {
        const char *v = getenv("P11FAULT_GENERATE_KEY_LOSSES");
        losses = v ? atoi(v) : 0;
    }
    if (rv == CKR_OK && losses > 0) {
        losses--;
        note("C_GenerateKey: key created, answer replaced by CKR_SESSION_CLOSED");
        return CKR_SESSION_CLOSED;
    }
    return rv;
}

CK_RV C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR out)
{
    const char *path = getenv("P11FAULT_MODULE");
    CK_RV (*gfl)(CK_FUNCTION_LIST_PTR_PTR);
    void *dl = dlopen(path ? path : "/usr/lib/softhsm/libsofthsm2.so", RTLD_NOW | RTLD_LOCAL);
    if (!dl)
        return CKR_GENERAL_ERROR;
    *(void **)(&gfl) = dlsym(dl, "C_GetFunctionList");
    if (!gfl || gfl(&real) != CKR_OK)
        return CKR_GENERAL_ERROR;
    shim = *real;
    shim.C_GenerateKey = gen_key;
    *out = &shim;
    return CKR_OK;
}
