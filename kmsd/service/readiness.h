/*
 * readiness — whether this kmsd can serve a key request now: the answer of
 * /readyz, computed in the background so that the probe never waits.
 *
 * Contract:
 *  - A prober thread runs a round every readiness_interval_ms, and sooner
 *    when asked (rounds at most every 20 ms): a durable one-row write
 *    through the pool (can PostgreSQL commit?), the token and its master
 *    key, and the entropy sources.
 *  - readiness_report() asks for a round that starts after the call and
 *    waits for it at most 300 ms; then it reports the last results. So an
 *    answer is fresh when the dependencies answer, and bounded when not.
 *    With http_threading=pool it does not wait (the caller is a shared
 *    event-loop thread): the results are then up to one interval old.
 *  - The database is not ready while the write probe fails, and also for
 *    readiness_write_failure_s seconds after any statement failed for want
 *    of resources (SQLSTATE classes 53 and 58: disk full, I/O error), since
 *    a tiny probe may still fit where a delivery does not.
 *  - A check whose probe has not come back within 2 intervals + 2 s
 *    reports "timeout": a dependency that hangs (a stopped host) makes kmsd
 *    not ready instead of making /readyz hang.
 *  - Until the first round completes every check is "starting".
 *  - readiness_report() never blocks on a dependency; thread-safe.
 */
#ifndef QKMS_READINESS_H
#define QKMS_READINESS_H

#include <jansson.h>

#include "service/service.h"
typedef struct readiness readiness;

int readiness_start(readiness **out, qk_svc *k);
void readiness_stop(readiness *r);
/* Sets *checks to {"database":..,"token":..,"entropy":..} ("ok" or why not)
 * and *down to the names that are not ok (both new references). Returns the
 * number of checks down. */
int readiness_report(readiness *r, json_t **checks, json_t **down);
/* qkms_ready{check} and qkms_ready_changes_total{check} from the last
 * results, without asking for a round (a metrics_render_fn). */
void readiness_metrics_render(void *r, FILE *f);

#endif
