/*
 * deadline — absolute deadlines for pthread_cond_timedwait() on the
 * monotonic clock, so that a wall-clock step (NTP, an operator's `date`)
 * neither cuts a wait short nor stretches it.
 *
 * Contract: a condition variable waited on with deadline_in_ms() must have
 * been initialized with deadline_cond_init() (a default one measures its
 * timeout against CLOCK_REALTIME).
 */
#ifndef QKMS_DEADLINE_H
#define QKMS_DEADLINE_H

#include <pthread.h>
#include <stdint.h>
#include <time.h>

/* CLOCK_MONOTONIC now, in milliseconds (for deadlines kept as numbers). */
int64_t deadline_now_ms(void);
/* The same in microseconds (for short waits that are measured). */
int64_t deadline_now_us(void);

/* CLOCK_MONOTONIC now plus ms milliseconds (ms >= 0), normalized. */
struct timespec deadline_in_ms(long ms);

/* pthread_cond_init with the condition's clock set to CLOCK_MONOTONIC;
 * returns pthread_cond_init's result. */
int deadline_cond_init(pthread_cond_t *cv);

#endif
