/*
 * audit — appending security events to audit_log inside the caller's
 * transaction, so the record and the change it describes commit together.
 * detail must hold no key material or secret.
 */
#ifndef QKMS_AUDIT_H
#define QKMS_AUDIT_H

#include <jansson.h>

#include "store/db.h"

/* Steals detail (may be NULL). */
db_status audit_append(db_conn *c, const char *actor, const char *event, const char *device_id,
                       json_t *detail);

/* A row of its own, on a pooled connection of db (a refusal at the gate:
 * nothing else is written with it). Steals detail. DB_OK or the failure
 * (the caller answers as it would have: a refusal stays a refusal). */
db_status audit_append_alone(db_pool *db, const char *actor, const char *event,
                             json_t *detail);

#endif
