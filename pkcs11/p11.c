/* p11 — PKCS#11 token access: module loading, session pool, key operations. */
#include "p11.h"

#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/crypto.h>

/* How long an operation waits for a free session before answering
 * "unavailable"; a token that is this slow is as good as down. */
#define P11_ACQUIRE_TIMEOUT_S 5

struct p11_token {
    void *dl;
    CK_FUNCTION_LIST_PTR f;
    CK_SLOT_ID slot;
    char *module_path;
    char *label;
    char *pin;           /* secure heap; kept for re-login */
    size_t pin_len;

    pthread_mutex_t mu;
    pthread_cond_t cv;
    CK_SESSION_HANDLE *sessions;
    bool *busy;
    int nsessions;
    int in_use;

    _Atomic uint64_t ops, errors, reopened, relogins, reinits;

    /* Operations hold it for reading; module re-initialization for writing. */
    pthread_rwlock_t life;
    bool initialized; /* C_Initialize done and not finalized */
    bool broken;      /* last re-initialization failed */
    int64_t last_reinit_ms;
    _Atomic uint64_t generation;
    void (*reinit_log)(CK_RV rv, const char *err);
};

/* Re-initialize the module at most this often while the token is failing. */
#define P11_REINIT_INTERVAL_MS 2000

static void errf(char *buf, size_t len, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void errf(char *buf, size_t len, const char *fmt, ...)
{
    va_list ap;
    if (!buf || !len)
        return;
    va_start(ap, fmt);
    vsnprintf(buf, len, fmt, ap);
    va_end(ap);
}

const char *p11_rv_name(CK_RV rv)
{
    switch (rv) {
#define N(x) case x: return #x;
    N(CKR_OK) N(CKR_CANCEL) N(CKR_HOST_MEMORY) N(CKR_SLOT_ID_INVALID) N(CKR_GENERAL_ERROR)
    N(CKR_FUNCTION_FAILED) N(CKR_ARGUMENTS_BAD) N(CKR_NO_EVENT) N(CKR_NEED_TO_CREATE_THREADS)
    N(CKR_CANT_LOCK) N(CKR_ATTRIBUTE_READ_ONLY) N(CKR_ATTRIBUTE_SENSITIVE)
    N(CKR_ATTRIBUTE_TYPE_INVALID) N(CKR_ATTRIBUTE_VALUE_INVALID) N(CKR_DATA_INVALID)
    N(CKR_DATA_LEN_RANGE) N(CKR_DEVICE_ERROR) N(CKR_DEVICE_MEMORY) N(CKR_DEVICE_REMOVED)
    N(CKR_ENCRYPTED_DATA_INVALID) N(CKR_ENCRYPTED_DATA_LEN_RANGE) N(CKR_FUNCTION_CANCELED)
    N(CKR_FUNCTION_NOT_PARALLEL) N(CKR_FUNCTION_NOT_SUPPORTED) N(CKR_KEY_HANDLE_INVALID)
    N(CKR_KEY_SIZE_RANGE) N(CKR_KEY_TYPE_INCONSISTENT) N(CKR_KEY_NOT_NEEDED)
    N(CKR_KEY_CHANGED) N(CKR_KEY_NEEDED) N(CKR_KEY_INDIGESTIBLE)
    N(CKR_KEY_FUNCTION_NOT_PERMITTED) N(CKR_KEY_NOT_WRAPPABLE) N(CKR_KEY_UNEXTRACTABLE)
    N(CKR_MECHANISM_INVALID) N(CKR_MECHANISM_PARAM_INVALID) N(CKR_OBJECT_HANDLE_INVALID)
    N(CKR_OPERATION_ACTIVE) N(CKR_OPERATION_NOT_INITIALIZED) N(CKR_PIN_INCORRECT)
    N(CKR_PIN_INVALID) N(CKR_PIN_LEN_RANGE) N(CKR_PIN_EXPIRED) N(CKR_PIN_LOCKED)
    N(CKR_SESSION_CLOSED) N(CKR_SESSION_COUNT) N(CKR_SESSION_HANDLE_INVALID)
    N(CKR_SESSION_PARALLEL_NOT_SUPPORTED) N(CKR_SESSION_READ_ONLY) N(CKR_SESSION_EXISTS)
    N(CKR_SESSION_READ_ONLY_EXISTS) N(CKR_SESSION_READ_WRITE_SO_EXISTS)
    N(CKR_SIGNATURE_INVALID) N(CKR_SIGNATURE_LEN_RANGE) N(CKR_TEMPLATE_INCOMPLETE)
    N(CKR_TEMPLATE_INCONSISTENT) N(CKR_TOKEN_NOT_PRESENT) N(CKR_TOKEN_NOT_RECOGNIZED)
    N(CKR_TOKEN_WRITE_PROTECTED) N(CKR_UNWRAPPING_KEY_HANDLE_INVALID)
    N(CKR_USER_ALREADY_LOGGED_IN) N(CKR_USER_NOT_LOGGED_IN) N(CKR_USER_PIN_NOT_INITIALIZED)
    N(CKR_USER_TYPE_INVALID) N(CKR_WRAPPED_KEY_INVALID) N(CKR_WRAPPED_KEY_LEN_RANGE)
    N(CKR_WRAPPING_KEY_HANDLE_INVALID) N(CKR_RANDOM_SEED_NOT_SUPPORTED) N(CKR_RANDOM_NO_RNG)
    N(CKR_BUFFER_TOO_SMALL) N(CKR_CRYPTOKI_NOT_INITIALIZED)
    N(CKR_CRYPTOKI_ALREADY_INITIALIZED) N(CKR_MUTEX_BAD) N(CKR_MUTEX_NOT_LOCKED)
#undef N
    case P11_RV_NO_MODULE: return "QKMS_P11_NO_MODULE";
    case P11_RV_NO_TOKEN: return "QKMS_P11_NO_TOKEN";
    case P11_RV_TIMEOUT: return "QKMS_P11_POOL_TIMEOUT";
    default: return "CKR_VENDOR_OR_UNKNOWN";
    }
}

p11_kind p11_rv_kind(CK_RV rv)
{
    switch (rv) {
    case CKR_OK:
        return P11_KIND_OK;
    case CKR_DEVICE_ERROR: case CKR_DEVICE_MEMORY: case CKR_DEVICE_REMOVED:
    case CKR_TOKEN_NOT_PRESENT: case CKR_TOKEN_NOT_RECOGNIZED: case CKR_SESSION_CLOSED:
    case CKR_SESSION_HANDLE_INVALID: case CKR_SESSION_COUNT: case CKR_USER_NOT_LOGGED_IN:
    case CKR_CRYPTOKI_NOT_INITIALIZED: case CKR_FUNCTION_FAILED: case CKR_GENERAL_ERROR:
    case CKR_HOST_MEMORY: case CKR_RANDOM_NO_RNG: case CKR_CANT_LOCK:
    case P11_RV_NO_TOKEN: case P11_RV_TIMEOUT:
        return P11_KIND_UNAVAILABLE;
    case CKR_PIN_INCORRECT: case CKR_PIN_INVALID: case CKR_PIN_LEN_RANGE: case CKR_PIN_EXPIRED:
    case CKR_PIN_LOCKED: case CKR_USER_PIN_NOT_INITIALIZED:
        return P11_KIND_AUTH;
    case CKR_KEY_HANDLE_INVALID: case CKR_OBJECT_HANDLE_INVALID:
        return P11_KIND_NOT_FOUND;
    case CKR_ENCRYPTED_DATA_INVALID: case CKR_ENCRYPTED_DATA_LEN_RANGE: case CKR_DATA_LEN_RANGE:
    case CKR_DATA_INVALID:
        return P11_KIND_DATA;
    case CKR_MECHANISM_INVALID: case CKR_MECHANISM_PARAM_INVALID:
    case CKR_KEY_FUNCTION_NOT_PERMITTED: case CKR_KEY_TYPE_INCONSISTENT:
    case CKR_ATTRIBUTE_VALUE_INVALID: case CKR_ATTRIBUTE_TYPE_INVALID:
    case CKR_TEMPLATE_INCONSISTENT: case CKR_TEMPLATE_INCOMPLETE: case CKR_FUNCTION_NOT_SUPPORTED:
    case CKR_TOKEN_WRITE_PROTECTED: case P11_RV_NO_MODULE:
        return P11_KIND_CONFIG;
    default:
        return P11_KIND_INTERNAL;
    }
}

static CK_RV login(p11_token *t, CK_SESSION_HANDLE s)
{
    CK_RV rv = t->f->C_Login(s, CKU_USER, (CK_UTF8CHAR_PTR)t->pin, (CK_ULONG)t->pin_len);
    return rv == CKR_USER_ALREADY_LOGGED_IN ? CKR_OK : rv;
}

static CK_RV open_session(p11_token *t, CK_SESSION_HANDLE *s)
{
    return t->f->C_OpenSession(t->slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, s);
}

static int label_eq(const CK_UTF8CHAR *padded, size_t padlen, const char *want)
{
    size_t n = strlen(want);
    if (n > padlen)
        return 0;
    if (memcmp(padded, want, n) != 0)
        return 0;
    for (size_t i = n; i < padlen; i++)
        if (padded[i] != ' ')
            return 0;
    return 1;
}

/* Initialize the module, find the token, open the session pool and log in.
 * Used at open and by re-initialization (with the life lock held). */
static CK_RV attach(p11_token *t, char *eb, size_t el)
{
    CK_C_INITIALIZE_ARGS ia;
    CK_SLOT_ID *slots = NULL;
    CK_ULONG nslots = 0;
    bool found = false;
    CK_RV rv;

    memset(&ia, 0, sizeof(ia));
    ia.flags = CKF_OS_LOCKING_OK;
    rv = t->f->C_Initialize(&ia);
    if (rv != CKR_OK && rv != CKR_CRYPTOKI_ALREADY_INITIALIZED) {
        errf(eb, el, "p11: C_Initialize failed: %s", p11_rv_name(rv));
        return rv;
    }
    t->initialized = true;
    rv = t->f->C_GetSlotList(CK_TRUE, NULL, &nslots);
    if (rv == CKR_OK) {
        slots = calloc(nslots ? nslots : 1, sizeof(*slots));
        rv = slots ? t->f->C_GetSlotList(CK_TRUE, slots, &nslots) : CKR_HOST_MEMORY;
    }
    if (rv != CKR_OK) {
        errf(eb, el, "p11: C_GetSlotList failed: %s", p11_rv_name(rv));
        free(slots);
        return rv;
    }
    for (CK_ULONG i = 0; i < nslots; i++) {
        CK_TOKEN_INFO ti;
        if (t->f->C_GetTokenInfo(slots[i], &ti) != CKR_OK)
            continue;
        if (label_eq(ti.label, sizeof(ti.label), t->label) && (ti.flags & CKF_TOKEN_INITIALIZED)) {
            if (found) {
                /* Two tokens with one label: guessing could pick the wrong
                 * master keys; refuse and say so. */
                errf(eb, el, "p11: several tokens are labelled '%s' in module %s", t->label,
                     t->module_path);
                free(slots);
                return CKR_TEMPLATE_INCONSISTENT;
            }
            t->slot = slots[i];
            found = true;
        }
    }
    free(slots);
    if (!found) {
        errf(eb, el, "p11: no initialized token labelled '%s' in module %s", t->label,
             t->module_path);
        return P11_RV_NO_TOKEN;
    }
    for (int i = 0; i < t->nsessions; i++) {
        rv = open_session(t, &t->sessions[i]);
        if (rv != CKR_OK) {
            errf(eb, el, "p11: C_OpenSession failed: %s", p11_rv_name(rv));
            return rv;
        }
    }
    /* One login covers every session of this application on the token. */
    rv = login(t, t->sessions[0]);
    if (rv != CKR_OK)
        errf(eb, el, "p11: C_Login to token '%s' failed: %s", t->label, p11_rv_name(rv));
    return rv;
}

static void detach(p11_token *t)
{
    if (!t->initialized)
        return;
    t->f->C_CloseAllSessions(t->slot);
    t->f->C_Finalize(NULL);
    t->initialized = false;
}

static void token_free(p11_token *t)
{
    /* Modules may keep atexit handlers or threads; unloading them is a
     * common source of crashes at exit, so the module stays mapped. */
    if (t->pin)
        OPENSSL_secure_clear_free(t->pin, t->pin_len + 1);
    free(t->sessions);
    free(t->busy);
    free(t->module_path);
    free(t->label);
    pthread_mutex_destroy(&t->mu);
    pthread_cond_destroy(&t->cv);
    pthread_rwlock_destroy(&t->life);
    free(t);
}

/* The pool's condition waits against CLOCK_MONOTONIC, so a wall-clock step
 * neither ends a wait early nor stretches it (acquire()). */
static void cond_init_monotonic(pthread_cond_t *cv)
{
    pthread_condattr_t a;
    pthread_condattr_init(&a);
    pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
    pthread_cond_init(cv, &a);
    pthread_condattr_destroy(&a);
}

CK_RV p11_open(p11_token **out, const p11_opts *o, char *eb, size_t el)
{
    CK_RV rv = CKR_OK;
    p11_token *t = NULL;
    CK_C_GetFunctionList gfl;

    *out = NULL;
    if (!o->module_path || !o->token_label || !o->pin || o->nsessions < 1) {
        errf(eb, el, "p11: missing module path, token label or PIN");
        return CKR_ARGUMENTS_BAD;
    }
    t = calloc(1, sizeof(*t));
    if (!t)
        return CKR_HOST_MEMORY;
    pthread_mutex_init(&t->mu, NULL);
    cond_init_monotonic(&t->cv);
    pthread_rwlock_init(&t->life, NULL);
    t->module_path = strdup(o->module_path);
    t->label = strdup(o->token_label);
    t->pin = OPENSSL_secure_malloc(o->pin_len + 1);
    t->nsessions = o->nsessions;
    t->sessions = calloc((size_t)t->nsessions, sizeof(*t->sessions));
    t->busy = calloc((size_t)t->nsessions, sizeof(*t->busy));
    if (!t->module_path || !t->label || !t->pin || !t->sessions || !t->busy) {
        rv = CKR_HOST_MEMORY;
        goto fail;
    }
    memcpy(t->pin, o->pin, o->pin_len);
    t->pin[o->pin_len] = 0;
    t->pin_len = o->pin_len;

    t->dl = dlopen(o->module_path, RTLD_NOW | RTLD_LOCAL);
    if (!t->dl) {
        errf(eb, el, "p11: cannot load module %s: %s", o->module_path, dlerror());
        rv = P11_RV_NO_MODULE;
        goto fail;
    }
    *(void **)(&gfl) = dlsym(t->dl, "C_GetFunctionList");
    if (!gfl || gfl(&t->f) != CKR_OK || !t->f) {
        errf(eb, el, "p11: %s has no usable C_GetFunctionList", o->module_path);
        rv = P11_RV_NO_MODULE;
        goto fail;
    }
    rv = attach(t, eb, el);
    if (rv != CKR_OK)
        goto fail;
    *out = t;
    return CKR_OK;
fail:
    if (t->f)
        detach(t);
    token_free(t);
    return rv;
}

void p11_close(p11_token *t)
{
    if (!t)
        return;
    if (t->initialized)
        t->f->C_Logout(t->sessions[0]);
    detach(t);
    token_free(t);
}

uint64_t p11_generation(p11_token *t) { return atomic_load(&t->generation); }

/* Tear the module down and bring it up again: the recovery for a token that
 * went away (HSM restart, network appliance reconnect, SoftHSM losing its
 * store) and for which reopening a session is not enough. Rate-limited; runs
 * with no operation in flight (write side of the life lock). Object handles
 * from before are void afterwards: the generation counter tells callers. */
static void maybe_reinit(p11_token *t)
{
    struct timespec now;
    int64_t ms;
    char err[256] = "";
    CK_RV rv;

    clock_gettime(CLOCK_MONOTONIC, &now);
    ms = (int64_t)now.tv_sec * 1000 + now.tv_nsec / 1000000;
    pthread_mutex_lock(&t->mu);
    if (ms - t->last_reinit_ms < P11_REINIT_INTERVAL_MS) {
        pthread_mutex_unlock(&t->mu);
        return;
    }
    t->last_reinit_ms = ms;
    pthread_mutex_unlock(&t->mu);

    pthread_rwlock_wrlock(&t->life);
    detach(t);
    rv = attach(t, err, sizeof(err));
    atomic_fetch_add(&t->generation, 1);
    atomic_fetch_add(&t->reinits, 1);
    t->broken = rv != CKR_OK;
    if (t->broken)
        detach(t);
    pthread_rwlock_unlock(&t->life);
    if (t->reinit_log)
        t->reinit_log(rv, err);
}

void p11_recover(p11_token *t)
{
    maybe_reinit(t);
}

void p11_set_reinit_logger(p11_token *t, void (*fn)(CK_RV rv, const char *err))
{
    t->reinit_log = fn;
}

const char *p11_module_path(const p11_token *t) { return t->module_path; }
const char *p11_token_label(const p11_token *t) { return t->label; }
int p11_pool_size(const p11_token *t) { return t->nsessions; }

int p11_pool_in_use(p11_token *t)
{
    pthread_mutex_lock(&t->mu);
    int n = t->in_use;
    pthread_mutex_unlock(&t->mu);
    return n;
}

void p11_stats_get(p11_token *t, p11_stats *s)
{
    s->ops = atomic_load(&t->ops);
    s->errors = atomic_load(&t->errors);
    s->reopened_sessions = atomic_load(&t->reopened);
    s->relogins = atomic_load(&t->relogins);
    s->reinits = atomic_load(&t->reinits);
}

static int acquire(p11_token *t)
{
    struct timespec dl;
    int idx = -1;
    clock_gettime(CLOCK_MONOTONIC, &dl); /* t->cv runs on CLOCK_MONOTONIC */
    dl.tv_sec += P11_ACQUIRE_TIMEOUT_S;
    pthread_mutex_lock(&t->mu);
    while (t->in_use == t->nsessions) {
        if (pthread_cond_timedwait(&t->cv, &t->mu, &dl) == ETIMEDOUT)
            break;
    }
    for (int i = 0; i < t->nsessions; i++) {
        if (!t->busy[i]) {
            t->busy[i] = true;
            t->in_use++;
            idx = i;
            break;
        }
    }
    pthread_mutex_unlock(&t->mu);
    return idx;
}

static void release(p11_token *t, int idx)
{
    pthread_mutex_lock(&t->mu);
    t->busy[idx] = false;
    t->in_use--;
    pthread_cond_signal(&t->cv);
    pthread_mutex_unlock(&t->mu);
}

typedef CK_RV (*p11_fn)(p11_token *t, CK_SESSION_HANDLE s, void *arg);

static bool needs_reinit(CK_RV rv)
{
    return rv == CKR_GENERAL_ERROR || rv == CKR_DEVICE_ERROR || rv == CKR_DEVICE_REMOVED ||
           rv == CKR_TOKEN_NOT_PRESENT || rv == CKR_CRYPTOKI_NOT_INITIALIZED ||
           rv == CKR_SESSION_HANDLE_INVALID || rv == CKR_SESSION_CLOSED;
}

static void maybe_reinit(p11_token *t);

/* Run fn on a pooled session, repairing a closed session or a lost login
 * once. Every token operation goes through here.
 *
 * The repair runs the operation a second time, and a failure report does
 * not prove the token did nothing (a network HSM can create an object and
 * lose the answer). So each operation says how it is retried: an idempotent
 * one (find, read attributes, encrypt, decrypt, random, ping; destroy, whose
 * second try can only add CKR_OBJECT_HANDLE_INVALID, which its caller takes
 * as done) passes itself as `again`; one that creates state passes a retry
 * that first checks whether the first try took effect (do_gen_again). */
static CK_RV run_op(p11_token *t, p11_fn fn, p11_fn again, void *arg)
{
    int idx;
    CK_RV rv;

    pthread_rwlock_rdlock(&t->life);
    if (t->broken) {
        pthread_rwlock_unlock(&t->life);
        atomic_fetch_add(&t->errors, 1);
        maybe_reinit(t);
        return CKR_DEVICE_REMOVED;
    }
    idx = acquire(t);
    if (idx < 0) {
        pthread_rwlock_unlock(&t->life);
        atomic_fetch_add(&t->errors, 1);
        return P11_RV_TIMEOUT;
    }
    atomic_fetch_add(&t->ops, 1);
    rv = fn(t, t->sessions[idx], arg);
    if (rv == CKR_SESSION_HANDLE_INVALID || rv == CKR_SESSION_CLOSED ||
        rv == CKR_DEVICE_REMOVED) {
        CK_SESSION_HANDLE ns;
        t->f->C_CloseSession(t->sessions[idx]);
        if (open_session(t, &ns) == CKR_OK) {
            t->sessions[idx] = ns;
            atomic_fetch_add(&t->reopened, 1);
            if (login(t, ns) == CKR_OK)
                rv = again(t, ns, arg);
        }
    } else if (rv == CKR_USER_NOT_LOGGED_IN) {
        atomic_fetch_add(&t->relogins, 1);
        if (login(t, t->sessions[idx]) == CKR_OK)
            rv = again(t, t->sessions[idx], arg);
    }
    if (rv != CKR_OK)
        atomic_fetch_add(&t->errors, 1);
    release(t, idx);
    pthread_rwlock_unlock(&t->life);
    /* Not retried here: the caller's object handles predate the new module
     * state. The caller answers 503 and its next call finds keys again. */
    if (needs_reinit(rv))
        maybe_reinit(t);
    return rv;
}

/* An idempotent operation: retried as it is. */
static CK_RV run(p11_token *t, p11_fn fn, void *arg)
{
    return run_op(t, fn, fn, arg);
}

/* ---- find ---- */
struct find_arg {
    const char *label;
    CK_OBJECT_HANDLE h;
    bool found;
};

/* The object of class cls labelled label; *found false when absent. Two
 * objects with one label is an operator mistake we must not guess at:
 * CKR_TEMPLATE_INCONSISTENT. */
static CK_RV find_class(p11_token *t, CK_SESSION_HANDLE s, CK_OBJECT_CLASS cls, const char *label,
                        CK_OBJECT_HANDLE *h, bool *found)
{
    CK_ATTRIBUTE tmpl[] = {
        {CKA_CLASS, &cls, sizeof(cls)},
        {CKA_LABEL, (void *)label, strlen(label)},
    };
    CK_OBJECT_HANDLE hs[2];
    CK_ULONG n = 0;
    CK_RV rv = t->f->C_FindObjectsInit(s, tmpl, 2);
    if (rv != CKR_OK)
        return rv;
    rv = t->f->C_FindObjects(s, hs, 2, &n);
    t->f->C_FindObjectsFinal(s);
    if (rv != CKR_OK)
        return rv;
    *found = n > 0;
    if (n > 0)
        *h = hs[0];
    return n > 1 ? CKR_TEMPLATE_INCONSISTENT : CKR_OK;
}

static CK_RV do_find(p11_token *t, CK_SESSION_HANDLE s, void *a)
{
    struct find_arg *fa = a;
    return find_class(t, s, CKO_SECRET_KEY, fa->label, &fa->h, &fa->found);
}

CK_RV p11_find_secret_key(p11_token *t, const char *label, CK_OBJECT_HANDLE *h, bool *found)
{
    struct find_arg fa = {.label = label};
    CK_RV rv = run(t, do_find, &fa);
    *found = fa.found;
    if (fa.found)
        *h = fa.h;
    return rv;
}

/* ---- generate ---- */
struct gen_arg {
    const char *label;
    CK_OBJECT_HANDLE h;
};

static CK_RV do_gen(p11_token *t, CK_SESSION_HANDLE s, void *a)
{
    struct gen_arg *ga = a;
    CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
    CK_ULONG len = 32;
    CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
    CK_KEY_TYPE kt = CKK_AES;
    CK_MECHANISM mech = {CKM_AES_KEY_GEN, NULL, 0};
    CK_ATTRIBUTE tmpl[] = {
        {CKA_CLASS, &cls, sizeof(cls)},
        {CKA_KEY_TYPE, &kt, sizeof(kt)},
        {CKA_VALUE_LEN, &len, sizeof(len)},
        {CKA_LABEL, (void *)ga->label, strlen(ga->label)},
        {CKA_ID, (void *)ga->label, strlen(ga->label)},
        {CKA_TOKEN, &yes, sizeof(yes)},
        {CKA_PRIVATE, &yes, sizeof(yes)},
        {CKA_SENSITIVE, &yes, sizeof(yes)},
        {CKA_EXTRACTABLE, &no, sizeof(no)},
        {CKA_MODIFIABLE, &no, sizeof(no)},
        {CKA_ENCRYPT, &yes, sizeof(yes)},
        {CKA_DECRYPT, &yes, sizeof(yes)},
        {CKA_WRAP, &yes, sizeof(yes)},
        {CKA_UNWRAP, &yes, sizeof(yes)},
        {CKA_SIGN, &no, sizeof(no)},
        {CKA_VERIFY, &no, sizeof(no)},
        {CKA_DERIVE, &no, sizeof(no)},
    };
    return t->f->C_GenerateKey(s, &mech, tmpl, sizeof(tmpl) / sizeof(tmpl[0]), &ga->h);
}

struct info_arg {
    CK_OBJECT_HANDLE h;
    p11_key_info *info;
};

static CK_RV do_info(p11_token *t, CK_SESSION_HANDLE s, void *a)
{
    struct info_arg *ia = a;
    CK_BBOOL tok = 0, sen = 0, ext = 1, asen = 0, nex = 0;
    CK_ULONG vl = 0;
    CK_ATTRIBUTE tmpl[] = {
        {CKA_TOKEN, &tok, sizeof(tok)},
        {CKA_SENSITIVE, &sen, sizeof(sen)},
        {CKA_EXTRACTABLE, &ext, sizeof(ext)},
        {CKA_ALWAYS_SENSITIVE, &asen, sizeof(asen)},
        {CKA_NEVER_EXTRACTABLE, &nex, sizeof(nex)},
        {CKA_VALUE_LEN, &vl, sizeof(vl)},
    };
    CK_RV rv = t->f->C_GetAttributeValue(s, ia->h, tmpl, sizeof(tmpl) / sizeof(tmpl[0]));
    /* A private key has no CKA_VALUE_LEN: the module says so for that one
     * attribute and still fills the others. */
    if (rv == CKR_ATTRIBUTE_TYPE_INVALID && tmpl[5].ulValueLen == CK_UNAVAILABLE_INFORMATION) {
        vl = 0;
        rv = CKR_OK;
        for (int i = 0; i < 5; i++)
            if (tmpl[i].ulValueLen == CK_UNAVAILABLE_INFORMATION)
                rv = CKR_ATTRIBUTE_TYPE_INVALID;
    }
    if (rv != CKR_OK)
        return rv;
    ia->info->token = tok;
    ia->info->sensitive = sen;
    ia->info->extractable = ext;
    ia->info->always_sensitive = asen;
    ia->info->never_extractable = nex;
    ia->info->value_len = vl;
    return CKR_OK;
}

/* Whether a key found under one of kmsd's labels is one kmsd could have
 * made: on the token, sensitive, never extractable (and, for a secret key,
 * value_len bytes long; 0 for a private key). Anything else under the
 * label was planted: CKR_TEMPLATE_INCONSISTENT. */
static CK_RV adoptable(p11_token *t, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE h, CK_ULONG value_len)
{
    p11_key_info info;
    struct info_arg ia = {.h = h, .info = &info};
    CK_RV rv = do_info(t, s, &ia);
    if (rv != CKR_OK)
        return rv;
    if (!info.token || !info.sensitive || info.extractable || info.value_len != value_len)
        return CKR_TEMPLATE_INCONSISTENT;
    return CKR_OK;
}

/* The retry of a generation: the failed first try may have created the key
 * (the answer, not the work, was lost). Creating it again would leave two
 * keys with one label, which p11_find_secret_key refuses for good; so look
 * for the label first and take the key that is there. */
static CK_RV do_gen_again(p11_token *t, CK_SESSION_HANDLE s, void *a)
{
    struct gen_arg *ga = a;
    struct find_arg fa = {.label = ga->label};
    CK_RV rv = do_find(t, s, &fa);
    if (rv != CKR_OK)
        return rv;
    if (fa.found) {
        /* Adopt only a key kmsd could have made: AES-256 (adoptable). */
        if ((rv = adoptable(t, s, fa.h, 32)) != CKR_OK)
            return rv;
        ga->h = fa.h;
        return CKR_OK;
    }
    return do_gen(t, s, ga);
}

CK_RV p11_generate_master_key(p11_token *t, const char *label, CK_OBJECT_HANDLE *h)
{
    struct gen_arg ga = {.label = label};
    /* The first try looks for the label too: an earlier call may have
     * created the key and then failed (its caller got an error and may
     * have kept the key, see rotation.c), and a second key with the same
     * label would stop kmsd at start. */
    CK_RV rv = run_op(t, do_gen_again, do_gen_again, &ga);
    if (rv == CKR_OK)
        *h = ga.h;
    return rv;
}

/* ---- attributes ---- */
CK_RV p11_key_info_get(p11_token *t, CK_OBJECT_HANDLE h, p11_key_info *info)
{
    struct info_arg ia = {.h = h, .info = info};
    return run(t, do_info, &ia);
}

/* ---- AES-GCM ---- */
struct gcm_arg {
    bool enc;
    CK_OBJECT_HANDLE key;
    const uint8_t *iv, *aad, *in;
    size_t aad_len, in_len;
    uint8_t *out;
    size_t *out_len;
};

static CK_RV do_gcm(p11_token *t, CK_SESSION_HANDLE s, void *a)
{
    struct gcm_arg *g = a;
    CK_GCM_PARAMS p;
    CK_MECHANISM m = {CKM_AES_GCM, &p, sizeof(p)};
    CK_ULONG ol = (CK_ULONG)*g->out_len;
    CK_RV rv;

    memset(&p, 0, sizeof(p));
    p.pIv = (CK_BYTE_PTR)g->iv;
    p.ulIvLen = 12;
    p.ulIvBits = 96;
    p.pAAD = (CK_BYTE_PTR)g->aad;
    p.ulAADLen = (CK_ULONG)g->aad_len;
    p.ulTagBits = 128;
    if (g->enc) {
        rv = t->f->C_EncryptInit(s, &m, g->key);
        if (rv == CKR_OK)
            rv = t->f->C_Encrypt(s, (CK_BYTE_PTR)g->in, (CK_ULONG)g->in_len, g->out, &ol);
    } else {
        rv = t->f->C_DecryptInit(s, &m, g->key);
        if (rv == CKR_OK)
            rv = t->f->C_Decrypt(s, (CK_BYTE_PTR)g->in, (CK_ULONG)g->in_len, g->out, &ol);
    }
    if (rv == CKR_OK)
        *g->out_len = ol;
    return rv;
}

CK_RV p11_gcm_encrypt(p11_token *t, CK_OBJECT_HANDLE key, const uint8_t iv[12], const uint8_t *aad,
                      size_t aad_len, const uint8_t *in, size_t in_len, uint8_t *out,
                      size_t *out_len)
{
    struct gcm_arg g = {true, key, iv, aad, in, aad_len, in_len, out, out_len};
    if (*out_len < in_len + 16)
        return CKR_BUFFER_TOO_SMALL;
    return run(t, do_gcm, &g);
}

CK_RV p11_gcm_decrypt(p11_token *t, CK_OBJECT_HANDLE key, const uint8_t iv[12], const uint8_t *aad,
                      size_t aad_len, const uint8_t *in, size_t in_len, uint8_t *out,
                      size_t *out_len)
{
    struct gcm_arg g = {false, key, iv, aad, in, aad_len, in_len, out, out_len};
    if (in_len < 16)
        return CKR_ENCRYPTED_DATA_LEN_RANGE;
    /* SoftHSM and some HSMs want room for the tag too while decrypting. */
    if (*out_len < in_len)
        return CKR_BUFFER_TOO_SMALL;
    return run(t, do_gcm, &g);
}

/* ---- EC key pairs: the platform CA (issue 15) ---- */
/* DER of the named curve P-256 (OID 1.2.840.10045.3.1.7), CKA_EC_PARAMS. */
static const CK_BYTE p256_params[] = {0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07};

struct ec_arg {
    const char *label;
    p11_ec_usage usage;
    CK_OBJECT_HANDLE priv;
    bool found;
};

static CK_RV do_find_priv(p11_token *t, CK_SESSION_HANDLE s, void *a)
{
    struct ec_arg *ea = a;
    return find_class(t, s, CKO_PRIVATE_KEY, ea->label, &ea->priv, &ea->found);
}

CK_RV p11_find_private_key(p11_token *t, const char *label, CK_OBJECT_HANDLE *h, bool *found)
{
    struct ec_arg ea = {.label = label};
    CK_RV rv = run(t, do_find_priv, &ea);
    *found = ea.found;
    if (ea.found)
        *h = ea.priv;
    return rv;
}

static CK_RV do_gen_ec(p11_token *t, CK_SESSION_HANDLE s, void *a)
{
    struct ec_arg *ea = a;
    CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
    CK_BBOOL sign = ea->usage == P11_EC_SIGN ? CK_TRUE : CK_FALSE;
    CK_BBOOL derive = ea->usage == P11_EC_DERIVE ? CK_TRUE : CK_FALSE;
    CK_OBJECT_HANDLE pub;
    CK_MECHANISM mech = {CKM_EC_KEY_PAIR_GEN, NULL, 0};
    CK_ATTRIBUTE pubt[] = {
        {CKA_EC_PARAMS, (void *)p256_params, sizeof(p256_params)},
        {CKA_LABEL, (void *)ea->label, strlen(ea->label)},
        {CKA_ID, (void *)ea->label, strlen(ea->label)},
        {CKA_TOKEN, &yes, sizeof(yes)},
        {CKA_VERIFY, &sign, sizeof(sign)},
        {CKA_ENCRYPT, &no, sizeof(no)},
        {CKA_WRAP, &no, sizeof(no)},
        {CKA_DERIVE, &no, sizeof(no)},
    };
    CK_ATTRIBUTE privt[] = {
        {CKA_LABEL, (void *)ea->label, strlen(ea->label)},
        {CKA_ID, (void *)ea->label, strlen(ea->label)},
        {CKA_TOKEN, &yes, sizeof(yes)},
        {CKA_PRIVATE, &yes, sizeof(yes)},
        {CKA_SENSITIVE, &yes, sizeof(yes)},
        {CKA_EXTRACTABLE, &no, sizeof(no)},
        {CKA_MODIFIABLE, &no, sizeof(no)},
        {CKA_SIGN, &sign, sizeof(sign)},
        {CKA_DECRYPT, &no, sizeof(no)},
        {CKA_UNWRAP, &no, sizeof(no)},
        {CKA_DERIVE, &derive, sizeof(derive)},
    };
    ea->found = true;
    return t->f->C_GenerateKeyPair(s, &mech, pubt, sizeof(pubt) / sizeof(pubt[0]), privt,
                                   sizeof(privt) / sizeof(privt[0]), &pub, &ea->priv);
}

/* As do_gen_again: a first try whose answer was lost may have made the
 * pair; take a private key found under the label, or generate. */
static CK_RV do_gen_ec_again(p11_token *t, CK_SESSION_HANDLE s, void *a)
{
    struct ec_arg *ea = a;
    CK_RV rv = find_class(t, s, CKO_PRIVATE_KEY, ea->label, &ea->priv, &ea->found);
    if (rv != CKR_OK)
        return rv;
    if (ea->found) {
        /* As for master keys (do_gen_again), and the usage must be the one
         * asked for: a sign key is not adopted as a derive key. */
        CK_BBOOL sign = CK_FALSE, derive = CK_FALSE;
        CK_ATTRIBUTE at[] = {{CKA_SIGN, &sign, sizeof(sign)}, {CKA_DERIVE, &derive, sizeof(derive)}};
        if ((rv = adoptable(t, s, ea->priv, 0)) != CKR_OK ||
            (rv = t->f->C_GetAttributeValue(s, ea->priv, at, 2)) != CKR_OK)
            return rv;
        if ((sign == CK_TRUE) != (ea->usage == P11_EC_SIGN) ||
            (derive == CK_TRUE) != (ea->usage == P11_EC_DERIVE))
            return CKR_TEMPLATE_INCONSISTENT;
        return CKR_OK;
    }
    return do_gen_ec(t, s, ea);
}

CK_RV p11_generate_ec_key_pair(p11_token *t, const char *label, p11_ec_usage usage,
                               CK_OBJECT_HANDLE *priv)
{
    struct ec_arg ea = {.label = label, .usage = usage};
    CK_RV rv = run_op(t, do_gen_ec_again, do_gen_ec_again, &ea);
    if (rv == CKR_OK)
        *priv = ea.priv;
    return rv;
}

struct point_arg {
    const char *label;
    uint8_t *out;
    size_t *len;
};

static CK_RV do_point(p11_token *t, CK_SESSION_HANDLE s, void *a)
{
    struct point_arg *pa = a;
    CK_OBJECT_HANDLE h;
    bool found = false;
    uint8_t buf[160];
    CK_ATTRIBUTE at = {CKA_EC_POINT, buf, sizeof(buf)};
    CK_RV rv = find_class(t, s, CKO_PUBLIC_KEY, pa->label, &h, &found);
    if (rv != CKR_OK)
        return rv;
    if (!found)
        return CKR_KEY_HANDLE_INVALID;
    if ((rv = t->f->C_GetAttributeValue(s, h, &at, 1)) != CKR_OK)
        return rv;
    /* PKCS#11 2.40 says a DER OCTET STRING around the point; some modules
     * give the bare point. Unwrap the first form. */
    const uint8_t *p = buf;
    size_t n = at.ulValueLen;
    if (n == 67 && p[0] == 0x04 && p[1] == 65) { /* OCTET STRING of a P-256 point */
        p += 2;
        n -= 2;
    }
    if (n > *pa->len)
        return CKR_BUFFER_TOO_SMALL;
    memcpy(pa->out, p, n);
    *pa->len = n;
    return CKR_OK;
}

CK_RV p11_ec_public_point(p11_token *t, const char *label, uint8_t *out, size_t *len)
{
    struct point_arg pa = {label, out, len};
    return run(t, do_point, &pa);
}

struct sign_arg {
    CK_OBJECT_HANDLE priv;
    const uint8_t *digest;
    size_t dlen;
    uint8_t *sig;
    size_t *sig_len;
};

static CK_RV do_sign(p11_token *t, CK_SESSION_HANDLE s, void *a)
{
    struct sign_arg *sa = a;
    CK_MECHANISM m = {CKM_ECDSA, NULL, 0};
    CK_ULONG n = (CK_ULONG)*sa->sig_len;
    CK_RV rv = t->f->C_SignInit(s, &m, sa->priv);
    if (rv != CKR_OK)
        return rv;
    rv = t->f->C_Sign(s, (CK_BYTE_PTR)sa->digest, (CK_ULONG)sa->dlen, sa->sig, &n);
    if (rv == CKR_OK)
        *sa->sig_len = n;
    return rv;
}

CK_RV p11_ecdsa_sign(p11_token *t, CK_OBJECT_HANDLE priv, const uint8_t *digest, size_t dlen,
                     uint8_t *sig, size_t *sig_len)
{
    struct sign_arg sa = {priv, digest, dlen, sig, sig_len};
    return run(t, do_sign, &sa);
}

struct ecdh_arg {
    CK_OBJECT_HANDLE priv;
    const uint8_t *point;
    size_t point_len;
    uint8_t *z;
};

/* The shared secret is made a session object that only this call sees, read
 * out and destroyed at once: PKCS#11 has no way to hand back a derived
 * secret without an object. Its value is the x-coordinate (CKD_NULL). */
static CK_RV do_ecdh(p11_token *t, CK_SESSION_HANDLE s, void *a)
{
    struct ecdh_arg *ea = a;
    CK_ECDH1_DERIVE_PARAMS prm = {CKD_NULL, 0, NULL, (CK_ULONG)ea->point_len,
                                  (CK_BYTE_PTR)ea->point};
    CK_MECHANISM m = {CKM_ECDH1_DERIVE, &prm, sizeof(prm)};
    CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
    CK_KEY_TYPE kt = CKK_GENERIC_SECRET;
    CK_ULONG len = P11_ECDH_LEN;
    CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
    CK_ATTRIBUTE tmpl[] = {
        {CKA_CLASS, &cls, sizeof(cls)},       {CKA_KEY_TYPE, &kt, sizeof(kt)},
        {CKA_VALUE_LEN, &len, sizeof(len)},   {CKA_TOKEN, &no, sizeof(no)},
        {CKA_PRIVATE, &yes, sizeof(yes)},     {CKA_SENSITIVE, &no, sizeof(no)},
        {CKA_EXTRACTABLE, &yes, sizeof(yes)},
    };
    CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;
    CK_ATTRIBUTE val = {CKA_VALUE, ea->z, P11_ECDH_LEN};
    CK_RV rv = t->f->C_DeriveKey(s, &m, ea->priv, tmpl, sizeof(tmpl) / sizeof(tmpl[0]), &h);
    if (rv != CKR_OK)
        return rv;
    rv = t->f->C_GetAttributeValue(s, h, &val, 1);
    if (rv == CKR_OK && val.ulValueLen != P11_ECDH_LEN)
        rv = CKR_GENERAL_ERROR;
    /* The secret must not outlive the call in the session: a failed
     * destroy fails the operation (the caller does not use z), and the
     * session's objects go with it when it is closed. */
    CK_RV drv = t->f->C_DestroyObject(s, h);
    if (rv == CKR_OK && drv != CKR_OK)
        rv = drv;
    return rv;
}

CK_RV p11_ecdh_derive(p11_token *t, CK_OBJECT_HANDLE priv, const uint8_t *point, size_t point_len,
                      uint8_t z[P11_ECDH_LEN])
{
    struct ecdh_arg ea = {priv, point, point_len, z};
    CK_RV rv = run(t, do_ecdh, &ea);
    if (rv != CKR_OK)
        explicit_bzero(z, P11_ECDH_LEN);
    return rv;
}

/* ---- destroy, random, ping ---- */
static CK_RV do_destroy(p11_token *t, CK_SESSION_HANDLE s, void *a)
{
    return t->f->C_DestroyObject(s, *(CK_OBJECT_HANDLE *)a);
}

CK_RV p11_destroy_object(p11_token *t, CK_OBJECT_HANDLE h)
{
    return run(t, do_destroy, &h);
}

struct rnd_arg {
    uint8_t *buf;
    size_t len;
};

static CK_RV do_random(p11_token *t, CK_SESSION_HANDLE s, void *a)
{
    struct rnd_arg *r = a;
    return t->f->C_GenerateRandom(s, r->buf, (CK_ULONG)r->len);
}

CK_RV p11_random(p11_token *t, uint8_t *buf, size_t len)
{
    struct rnd_arg r = {buf, len};
    return run(t, do_random, &r);
}

static CK_RV do_ping(p11_token *t, CK_SESSION_HANDLE s, void *a)
{
    CK_SESSION_INFO si;
    CK_TOKEN_INFO ti;
    CK_RV rv;
    (void)a;
    rv = t->f->C_GetSessionInfo(s, &si);
    if (rv != CKR_OK)
        return rv;
    if (si.state != CKS_RW_USER_FUNCTIONS && si.state != CKS_RO_USER_FUNCTIONS)
        return CKR_USER_NOT_LOGGED_IN;
    return t->f->C_GetTokenInfo(t->slot, &ti);
}

CK_RV p11_ping(p11_token *t)
{
    return run(t, do_ping, NULL);
}

void p11_metrics_render(void *token, FILE *f)
{
    p11_token *t = token;
    p11_stats ps;
    p11_stats_get(t, &ps);
    fprintf(f,
            "# HELP qkms_pkcs11_sessions PKCS#11 sessions in the pool.\n"
            "# TYPE qkms_pkcs11_sessions gauge\nqkms_pkcs11_sessions %d\n"
            "# HELP qkms_pkcs11_sessions_in_use PKCS#11 sessions lent out now.\n"
            "# TYPE qkms_pkcs11_sessions_in_use gauge\nqkms_pkcs11_sessions_in_use %d\n"
            "# HELP qkms_pkcs11_operations_total Token operations.\n"
            "# TYPE qkms_pkcs11_operations_total counter\nqkms_pkcs11_operations_total %llu\n"
            "# HELP qkms_pkcs11_errors_total Token operations that failed.\n"
            "# TYPE qkms_pkcs11_errors_total counter\nqkms_pkcs11_errors_total %llu\n"
            "# HELP qkms_pkcs11_session_reopens_total Sessions reopened after loss.\n"
            "# TYPE qkms_pkcs11_session_reopens_total counter\n"
            "qkms_pkcs11_session_reopens_total %llu\n"
            "# HELP qkms_pkcs11_relogins_total Logins re-established.\n"
            "# TYPE qkms_pkcs11_relogins_total counter\nqkms_pkcs11_relogins_total %llu\n"
            "# HELP qkms_pkcs11_reinits_total Module re-initializations after token failures.\n"
            "# TYPE qkms_pkcs11_reinits_total counter\nqkms_pkcs11_reinits_total %llu\n",
            p11_pool_size(t), p11_pool_in_use(t), (unsigned long long)ps.ops,
            (unsigned long long)ps.errors, (unsigned long long)ps.reopened_sessions,
            (unsigned long long)ps.relogins, (unsigned long long)ps.reinits);

}
