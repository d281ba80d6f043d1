/*
 * deadline — absolute deadlines for pthread_cond_timedwait(), which measures
 * a default condition variable's timeout against CLOCK_REALTIME.
 */
#ifndef QKMS_DEADLINE_H
#define QKMS_DEADLINE_H

#include <time.h>

/* CLOCK_REALTIME now plus ms milliseconds (ms >= 0), normalized. */
struct timespec deadline_in_ms(long ms);

#endif
