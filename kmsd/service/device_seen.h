/*
 * device_seen — when each device was first and last heard from
 * (devices.first_seen_at, last_seen_at; docs/devices.md, "First contact"),
 * written at most once a minute per device and never on the request's
 * path, with a device.first_contact audit row the first time.
 *
 * Contract:
 *  - device_seen_note is what a device door's successful request calls
 *    (the session service does, after the stored function said yes, so a
 *    refused or replayed request is no contact). It costs one atomic load
 *    in a direct-mapped table of the minute each device was last noted;
 *    the first note of a device in a minute also queues its row.
 *  - A flusher thread writes the queue every DEVICE_SEEN_FLUSH_S seconds
 *    in one statement per DEVICE_SEEN_BATCH rows: last_seen_at (never
 *    backwards), first_seen_at set once, and the first contact audited
 *    exactly once across instances (the row lock makes a second flush see
 *    the first's write). A row another transaction holds (a revoke, a
 *    fill, another kmsd's flush) is skipped, so a flush never waits or
 *    deadlocks: that device is written at its next minute.
 *  - Best effort, never wrong: a full queue, a failed flush or a crash
 *    loses at most that minute's update (the next request in a later
 *    minute notes the device again); a first contact is then recorded
 *    late, never twice. last_seen_at is accurate to about a minute.
 *  - device_seen_close stops the thread, then flushes what is queued; call
 *    it before the database pool is closed.
 */
#ifndef QKMS_DEVICE_SEEN_H
#define QKMS_DEVICE_SEEN_H

#include "store/db.h"

#define DEVICE_SEEN_FLUSH_S 5
#define DEVICE_SEEN_BATCH 1000
#define DEVICE_SEEN_QUEUE 65536 /* 4 flush periods of 3,000 new devices a second */

typedef struct device_seen device_seen;

/* slots: the table's size (a power of two is not needed); NULL on out of
 * memory or when the thread cannot start. */
device_seen *device_seen_open(db_pool *db, size_t slots);
void device_seen_note(device_seen *ds, long long device_pk);
/* Write what is queued now (the flusher's work; tests call it to avoid
 * waiting). 0, or -1 when the database refused (logged). */
int device_seen_flush(device_seen *ds);
void device_seen_close(device_seen *ds);

#endif
