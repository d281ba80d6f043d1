/*
 * events — the events pushed to owners and operators (issue 18, seed 004;
 * docs/gateways.md "Events"): a key or a service about to expire, a gateway
 * bound, reset or revoked, a login locked. They are written in the
 * transaction of the change (schema/022_events.sql: a trigger on its audit
 * row), read here, and delivered by a worker thread to the webhooks of
 * webhook_urls.
 *
 * Delivery: each event has a delivery row per registered webhook, written
 * with it; one POST per event with the JSON body {"id", "event_id",
 * "type", "device_id", "app", "created_at", "detail"} and the headers
 * X-Qkms-Event-Id, X-Qkms-Timestamp (Unix seconds) and X-Qkms-Signature:
 * "v1=" hex(HMAC-SHA-256(secret, timestamp "." body)). The worker leases a
 * few due rows of one webhook in one short statement (under a lease ID
 * that its marks must match), POSTs with no transaction open and marks
 * each: a 2xx delivers it, anything else retries it after 1, 2, 4 ... 300
 * seconds, up to webhook_max_attempts; webhooks take turns, one batch
 * each. At least once: a kmsd that dies with rows leased sends them again
 * when the lease runs out, with the same event_id, which is the receiver's
 * to deduplicate. Several kmsd instances share the work (SKIP LOCKED). Rows
 * are chosen by state, not by id, so an event whose transaction commits
 * after a later one is delivered all the same; a retried event does not
 * hold later ones back (receivers order by id).
 *
 * A webhook is known by its ID, a keyed hash of its URL
 * (events_webhook_id); only scheme://host[:port] is stored or shown, since
 * a path or query may be the credential (chat services' hooks). Each
 * webhook has a delivery thread of its own, so a slow or dead receiver
 * holds up no other; after a failure the thread leaves its receiver alone
 * 1, 2, 4 ... 300 s.
 *
 * Contract: the listing and admin functions return QK_OK with their
 * outputs, or e. The worker logs its failures (registration included: it
 * retries) and counts deliveries for /metrics.
 */
#ifndef QKMS_EVENTS_H
#define QKMS_EVENTS_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <jansson.h>

#include "err.h"
#include "service/service.h"

#define EVENTS_LIST_MAX 1000
#define EVENTS_SECRET_MIN 32
#define EVENTS_MAX_URLS 8
#define EVENTS_URL_MAX 512
#define EVENTS_REPLAY_BATCH 1000
#define EVENTS_REPLAY_PER_CALL (10 * EVENTS_REPLAY_BATCH)

/* {"events": [...], "next": last id when the page is full, or null};
 * app_id > 0: only that app's. */
qk_kind events_list(qk_svc *s, long long app_id, long long after, int limit, json_t **out,
                    qk_err *e);
/* {"webhooks": [{"id", "url" (scheme://host[:port]), "pending", "failed"
 * (given up), "attempts" (of the most tried undelivered one), "last_error",
 * "last_delivered_at", "registered_at"}]}: every live webhook any kmsd
 * registered. */
qk_kind events_webhooks(qk_svc *s, json_t **out, qk_err *e);
/* What a replay call did: the deliveries it made due again (leased ones
 * are left to their holder), the range's end, and where the next call
 * starts (0: the range is done). */
typedef struct {
    long long until, deliveries, next;
} events_replay_result;
/* Deliver the kept events after `after` up to `until` (0: the last event
 * now) to every live webhook again, at most EVENTS_REPLAY_PER_CALL events
 * per call, audited events.replayed. QK_CONFLICT without webhooks. */
qk_kind events_replay(qk_svc *s, const qk_principal *who, long long after, long long until,
                      events_replay_result *out, qk_err *e);
/* Retire a webhook (its ID, 64 hex): no new deliveries, none tried, all
 * deleted by the next purges; audited webhook.removed; *shown: its
 * scheme://host[:port] (caller frees). QK_NOT_FOUND if none live. */
qk_kind events_webhook_remove(qk_svc *s, const qk_principal *who, const char *id, char **shown,
                              qk_err *e);
/* Purge the events older than days and the deliveries of retired
 * webhooks, in batches (a pass of maintenance); how many rows, or -1 with
 * *st. */
long long events_purge(db_conn *c, int days, db_status *st);
/* Read webhook_secret_file (a regular file, no access for group or others,
 * 32 to 4096 bytes, a trailing newline dropped) into the secure heap:
 * *out (OPENSSL_secure_clear_free(*out, *cap)), *len. 0, or -1 with err. */
int events_read_secret(const char *path, uint8_t **out, size_t *len, size_t *cap, char *err,
                       size_t errlen);
/* webhook_urls (comma-separated) into urls; how many (at most max). */
int events_split_urls(const char *list, char urls[][EVENTS_URL_MAX], int max);

/* The signature header's value for body at ts (pure): "v1=" and 64 hex. */
int events_sign(const uint8_t *secret, size_t secret_len, long long ts, const char *body,
                size_t body_len, char out[68]);
/* A webhook's ID (pure): hex HMAC-SHA-256(secret, "qkms/webhook-id\n" ||
 * url). Keyed, so the ID confirms no guess of a URL's credential. */
int events_webhook_id(const uint8_t *secret, size_t secret_len, const char *url, char out[65]);

typedef struct events_worker events_worker;
/* Start the worker (nothing to do without webhook_urls: *out NULL, 0).
 * The secret is read from webhook_secret_file. 0, or -1 with err. */
int events_worker_start(events_worker **out, qk_svc *s, char *err, size_t errlen);
void events_worker_stop(events_worker *w);
/* qkms_events_delivered_total, qkms_event_delivery_failures_total (a
 * metrics_render_fn; w may be NULL). */
void events_metrics_render(void *w, FILE *f);

#endif
