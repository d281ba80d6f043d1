/*
 * audit_query — the audit log's operations for administrators: list the
 * events, export them with their chain columns (for verification outside
 * kmsd), and verify the chain (docs/operations.md, "Audit log").
 *
 * Contract:
 *  - List and export take the filters as the caller received them (text,
 *    NULL when absent) and judge them here, so every door accepts the same:
 *    since (RFC 3339 time or YYYY-MM-DD), device (a device ID), type (an
 *    event name, or a prefix ending in '*'), limit (1..AUDIT_LIST_MAX, or
 *    AUDIT_EXPORT_MAX for export), after (a row id: the page starts after
 *    it). A bad filter is QK_MALFORMED "invalid_query".
 *  - Rows come in id order as JSON objects in the documented export format
 *    (id, at, actor, event, device_id, detail, sealed; export adds
 *    prev_hash, hash, sealed_at, hashed_at_us, hashed_detail). A full page
 *    names the cursor of the next one.
 *  - Verify reads the chain in one snapshot (audit_verify.h), logs what it
 *    found (by whom), and records an "audit.verified" event. QK_OK means
 *    verification ran, whatever it found: a broken chain is a result, not
 *    an error.
 *  - Read-only apart from the audit.verified row; thread-safe.
 */
#ifndef QKMS_AUDIT_QUERY_H
#define QKMS_AUDIT_QUERY_H

#include <stdint.h>

#include <jansson.h>

#include "err.h"
#include "service/audit_verify.h"
#include "service/service.h"

#define AUDIT_LIST_MAX 1000
#define AUDIT_LIST_DEFAULT 100
#define AUDIT_EXPORT_MAX 5000
#define AUDIT_EXPORT_DEFAULT 1000

typedef struct {
    const char *since, *device, *type, *limit, *after; /* as received; NULL: absent */
} audit_list_args;

typedef struct {
    json_t *rows; /* array of row objects; the caller owns (decrefs) it */
    int64_t next; /* cursor of the next page (its "after"); 0: this page is the last */
} audit_page;

/* The events matching a. QK_OK with *out filled, or the failure. */
qk_kind audit_query_list(qk_svc *s, const audit_list_args *a, audit_page *out, qk_err *e);
/* The same rows with their chain columns. */
qk_kind audit_query_export(qk_svc *s, const audit_list_args *a, audit_page *out, qk_err *e);
/* Verify the chain for who. QK_OK with *out filled (free out->gaps), or why
 * verification could not run. While it runs, its progress is readable by
 * who's request ID (audit_verify_progress). */
qk_kind audit_query_verify(qk_svc *s, const qk_principal *who, audit_verify_result *out,
                           qk_err *e);

#endif
