/*
 * fixture — building the key service for a service test (fixture.h).
 */
#include "fixture.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <openssl/crypto.h>

#include "service/auth.h"

int fixture_open(fixture *f)
{
    const char *conf = getenv("QKMS_TEST_CONF");
    char err[1024];
    char *pin;
    size_t pin_len;
    int version = 0;

    memset(f, 0, sizeof(*f));
    if (!conf)
        fail_msg("QKMS_TEST_CONF is not set: run through tests/integration/test_service_units.py");
    if (!CRYPTO_secure_malloc_initialized() && CRYPTO_secure_malloc_init(1 << 20, 16) != 1)
        fail_msg("secure heap unavailable");
    config_defaults(&f->cfg);
    if (config_load_file(&f->cfg, conf, err, sizeof(err)) != 0 ||
        config_apply_env(&f->cfg, err, sizeof(err)) != 0 ||
        config_finish(&f->cfg, err, sizeof(err)) != 0)
        fail_msg("configuration: %s", err);
    if (service_migrate(&f->cfg, false, &version, err, sizeof(err)) != 0)
        fail_msg("schema: %s", err);
    pin_len = strlen(f->cfg.pkcs11_pin);
    pin = OPENSSL_secure_malloc(pin_len + 1);
    if (!pin)
        fail_msg("out of memory");
    memcpy(pin, f->cfg.pkcs11_pin, pin_len + 1);
    config_forget_pin(&f->cfg);
    if (service_open(&f->svc, &f->cfg, pin, pin_len, err, sizeof(err)) != 0)
        fail_msg("service_open: %s", err);
    return 0;
}

void fixture_close(fixture *f)
{
    /* As kmsd does at a clean stop: the next binary's rotations must not
     * wait for this one (service/instances.h). */
    instances_leave(&f->svc.self, f->svc.db);
    service_close(&f->svc);
    config_free(&f->cfg);
}

fixture fx;

int fixture_setup(void **state)
{
    (void)state;
    return fixture_open(&fx);
}

int fixture_teardown(void **state)
{
    (void)state;
    fixture_close(&fx);
    return 0;
}

qk_principal fixture_admin(const char *name)
{
    qk_principal p = {.kind = QK_PRINCIPAL_ADMIN, .name = name, .roles = ROLE_ADMIN};
    p.log.req_id = "service-test";
    p.log.principal = name;
    return p;
}

qk_principal fixture_device(const char *device_id)
{
    qk_principal p = {.kind = QK_PRINCIPAL_DEVICE, .name = device_id};
    p.log.req_id = "service-test";
    p.log.principal = device_id;
    return p;
}

void fixture_unique(char *buf, size_t len, const char *prefix)
{
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    snprintf(buf, len, "%s-%d-%lld%09ld", prefix, (int)getpid(), (long long)t.tv_sec, t.tv_nsec);
}

char *fixture_sql1(const char *text, int n, const char *const *vals)
{
    db_status st;
    db_conn *c = db_acquire(fx.svc.db, &st);
    PGresult *r;
    char *out = NULL;
    assert_non_null(c);
    r = db_exec_params(c, text, n, vals, &st);
    db_release(fx.svc.db, c);
    if (!r)
        fail_msg("%s: %s", text, db_status_name(st));
    if (PQntuples(r) > 0 && PQnfields(r) > 0)
        out = strdup(PQgetvalue(r, 0, 0));
    PQclear(r);
    return out;
}
