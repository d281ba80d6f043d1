/*
 * device_service — a device's service validity (issue 18, seed 004;
 * docs/gateways.md "Service validity"): the end of the service an operator
 * sells or grants a device, beside the validity of its keys. Past its
 * service_until, the doors that hand out keys refuse the device (403
 * service_expired, the ETSI door 401): the stored functions judge it in the
 * request's own transaction (qkms_device_standing), and the ETSI door when
 * it looks up the calling SAE.
 *
 * A device gets its end at registration (its type's service_days, or the
 * registration's own; none for types without one). This module changes it
 * afterwards and warns before it.
 *
 * Contract:
 *  - device_service_set commits the new end with its audit row
 *    (device.service_set: from, to) in one transaction and clears the
 *    warning mark, so the next end is warned about in its turn.
 *    QK_NOT_FOUND "not_found"; QK_CONFLICT "invalid_state" for a revoked
 *    device, or SERVICE_EXTEND of a service without an end; QK_INVALID "invalid_service" for an until PostgreSQL does not
 *    read as a time (the caller checks the syntax: timetext.h).
 *  - device_service_warn writes one "device service ending soon" log line
 *    per device whose end falls within warn_days (at most once a day per
 *    device) and counts those ends and the ends already past (devices not
 *    revoked), for the gauges.
 */
#ifndef QKMS_DEVICE_SERVICE_H
#define QKMS_DEVICE_SERVICE_H

#include <stdint.h>

#include <jansson.h>

#include "err.h"
#include "service/service.h"
#include "store/db.h"

typedef enum {
    SERVICE_EXTEND, /* days past the later of now and the current end (there must be one) */
    SERVICE_UNTIL,  /* exactly until (a time past: the service has ended) */
    SERVICE_NO_END,
} service_change;

/* days: SERVICE_EXTEND's (1..DEVICE_SERVICE_DAYS_MAX); until: SERVICE_UNTIL's. */
qk_kind device_service_set(qk_svc *s, const qk_principal *who, const char *device_id,
                           service_change how, int days, const char *until, qk_err *e);

typedef struct {
    int64_t ending; /* ends within warn_days, not yet past */
    int64_t ended;  /* ends past, devices not revoked */
} device_service_counts;

/* 0, or -1 with *st set (c: a pooled connection). */
int device_service_warn(db_conn *c, int warn_days, device_service_counts *out, db_status *st);

#endif
