/*
 * fuzz_sessions — kmsd/sessions.c compiled into a fuzz target, for the
 * targets that reach its static parsers (fuzz_envelope, fuzz_inner).
 *
 * Contract: include once, after fuzz_common.h, in place of linking
 * sessions.o (every symbol it defines is then defined by the target).
 * time() inside sessions.c is pinned to FUZZ_NOW, the test vectors' ts, so
 * a run is reproducible (the clock window itself is judged by the database
 * and is not reached here).
 */
#ifndef QKMS_FUZZ_SESSIONS_H
#define QKMS_FUZZ_SESSIONS_H

#include <time.h>

#define FUZZ_NOW 1795430000
static time_t fuzz_time(time_t *t)
{
    if (t)
        *t = FUZZ_NOW;
    return FUZZ_NOW;
}
#define time(t) fuzz_time(t)
#include "../kmsd/service/sessions.c"
#undef time

#endif
