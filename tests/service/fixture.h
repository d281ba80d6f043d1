/*
 * fixture — the key service for the service tests (tests/service/), built
 * exactly as kmsd builds it (service_migrate + service_open), from the
 * configuration file named by QKMS_TEST_CONF and the QKMS_* environment:
 * a real PostgreSQL and a real PKCS#11 token, no HTTP.
 *
 * The runner (tests/integration/test_service_units.py) provisions a state
 * directory (PostgreSQL cluster, SoftHSM token, schema, master key) and
 * runs every tests/service binary against it.
 *
 * Contract: fixture_open returns 0 with *s built and the secure heap
 * initialised, or fails the test (cmocka fail_msg). fixture_close tears it
 * down. fixture_admin / fixture_device are principals for the operations.
 * fixture_unique fills buf with a name no other test run uses.
 */
#ifndef QKMS_TEST_FIXTURE_H
#define QKMS_TEST_FIXTURE_H

#include <stddef.h>

#include "service/service.h"

typedef struct {
    kms_config cfg;
    qk_svc svc;
} fixture;

int fixture_open(fixture *f);
/* The one fixture of a test binary, for cmocka group setup/teardown:
 * fixture_setup opens fx, fixture_teardown closes it. */
extern fixture fx;
int fixture_setup(void **state);
int fixture_teardown(void **state);
void fixture_close(fixture *f);
qk_principal fixture_admin(const char *name);
qk_principal fixture_device(const char *device_id);
void fixture_unique(char *buf, size_t len, const char *prefix);
/* One statement (text, n text parameters) through the service's own pool:
 * the first value of the first row (the caller frees), or NULL for no row;
 * a failing statement fails the test. For setting up and inspecting rows. */
char *fixture_sql1(const char *text, int n, const char *const *vals);

#endif
