/*
 * fuzz_sessions — kmsd/api/device_v1.c (the device protocol v1 door)
 * compiled into a fuzz target, for the targets that reach its static
 * parsers, parse_envelope and inner_fields (fuzz_envelope, fuzz_inner).
 *
 * Contract: include once, after fuzz_common.h, in place of linking
 * device_v1.o (every symbol it defines is then defined by the target; the
 * session service, kmsd/service/, comes from the fuzz library).
 * fuzz_sessions_init sets up the kms_ctx both targets pass the door.
 * time() inside device_v1.c is pinned to FUZZ_NOW, the test vectors' ts, so
 * a run is reproducible (the door reads no clock today; the key validity
 * check is device_auth.c's and the clock window the database's, neither
 * reached here).
 */
#ifndef QKMS_FUZZ_SESSIONS_H
#define QKMS_FUZZ_SESSIONS_H

#include <time.h>

#define FUZZ_NOW 1795430000
__attribute__((unused)) static time_t fuzz_time(time_t *t)
{
    if (t)
        *t = FUZZ_NOW;
    return FUZZ_NOW;
}
#define time(t) fuzz_time(t)
#include "../kmsd/api/device_v1.c"
#undef time

/* The daemon context both targets hand the door: quiet logs (unless
 * QKMS_FUZZ_VERBOSE), kmsd's default clock skew, session counters. */
static void fuzz_sessions_init(kms_ctx *k)
{
    fuzz_quiet();
    if (!fuzz_env_on("QKMS_FUZZ_VERBOSE"))
        log_set_level((log_level)(LOG_ERROR + 1));
    k->svc.cfg = &k->cfg;
    k->cfg.protocol_clock_skew = 300;
    k->svc.smetrics = session_metrics_new();
    FUZZ_CHECK(k->svc.smetrics != NULL);
}

#endif
