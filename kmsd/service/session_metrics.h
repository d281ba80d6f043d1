/*
 * session_metrics — the session service's counters and stage timings for
 * /metrics (docs/performance.md, docs/operations.md).
 *
 * Contract:
 *  - Lock-free: every update is an atomic add, safe from any thread; a
 *    NULL session_metrics makes every update a no-op (fuzz targets and
 *    tests that do not count).
 *  - session_metrics_render is a metrics_render_fn (metrics.h): main()
 *    registers it with the qk_svc's session_metrics; the metric names and
 *    labels are a documented interface and never change.
 *  - A key request's time is cut into stages by one clock (a uint64_t of
 *    CLOCK_MONOTONIC nanoseconds that each mark moves on), shared by the
 *    door and the service: session_metrics_stage closes the stage that ran
 *    since *t0 and starts the next one. t0 NULL records nothing.
 */
#ifndef QKMS_SESSION_METRICS_H
#define QKMS_SESSION_METRICS_H

#include <stdint.h>
#include <stdio.h>

typedef struct session_metrics session_metrics;

/* Why a device request was refused (the reason label). */
typedef enum {
    SESSION_REFUSE_AUTH,
    SESSION_REFUSE_INACTIVE,
    SESSION_REFUSE_NOT_PARTY,
    SESSION_REFUSE_PEER_MISMATCH,
    SESSION_REFUSE_POLICY,
    SESSION_REFUSE_ENDED,
    SESSION_REFUSE_PEER,
    SESSION_REFUSE_INVALID,
    SESSION_REFUSE_SERVICE,
    SESSION_REFUSE_EPOCH, /* an epoch skipped, beyond the limit or gone; no session yet */
    SESSION_REFUSE__N
} session_refusal;

/* Where a key request's time goes (the stage label). */
typedef enum {
    SESSION_STAGE_PARSE,
    SESSION_STAGE_KEY_LOOKUP,
    SESSION_STAGE_KEY_UNWRAP,
    SESSION_STAGE_OPEN,
    SESSION_STAGE_SESSION_TX,
    SESSION_STAGE_NEW_KEY,
    SESSION_STAGE_DELIVER,
    SESSION_STAGE__N
} session_stage;

/* Counted events. */
typedef enum {
    SESSION_EV_CREATED,           /* a session's first key request */
    SESSION_EV_DELIVERED,         /* a session key handed to a party */
    SESSION_EV_ENDED_BY_PARTY,
    SESSION_EV_ENDED_BY_OPERATOR,
    SESSION_EV_ENDED_BY_DEVICE,   /* ended by its party's end with "all" */
    SESSION_EV_REAPED,            /* expired sessions destroyed */
    SESSION_EV_CANDIDATE_MADE,    /* a candidate session key drawn and wrapped */
    SESSION_EV_CANDIDATE_SKIPPED, /* none: the session was seen to exist */
    SESSION_EV_KEY_FROM_CANDIDATE, /* delivered from the creating request's own candidate */
    SESSION_EV_KEY_FROM_TOKEN,     /* delivered after a token unwrap of the session row */
    SESSION_EV__N
} session_event;

session_metrics *session_metrics_new(void);
void session_metrics_free(session_metrics *m);
/* A metrics_render_fn; ctx is a session_metrics. */
void session_metrics_render(void *ctx, FILE *f);

void session_metrics_count(session_metrics *m, session_event ev, uint64_t n);
void session_metrics_refused(session_metrics *m, session_refusal why);
/* The stage clock's current reading (CLOCK_MONOTONIC, ns). */
uint64_t session_clock_ns(void);
/* Close stage which (begun at *t0), and start the next one now. */
void session_metrics_stage(session_metrics *m, session_stage which, uint64_t *t0);
/* A counter's value (for tests). */
uint64_t session_metrics_get(session_metrics *m, session_event ev);
uint64_t session_metrics_refusals(session_metrics *m, session_refusal why);

#endif
