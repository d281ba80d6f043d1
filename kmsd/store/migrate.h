/*
 * migrate — applies the embedded schema/NNN_name.sql migrations in order.
 *
 * Contract: migrate_run() takes a PostgreSQL advisory lock so that several
 * kmsd starting at once apply each migration exactly once, records each in
 * qkms_schema_migrations (version, name, SHA-256 of its text, time) in the
 * same transaction as the migration, refuses a database whose recorded
 * migrations differ from ours or are newer than ours, and reports the
 * resulting schema version.
 */
#ifndef QKMS_MIGRATE_H
#define QKMS_MIGRATE_H

#include <stddef.h>
#include <libpq-fe.h>

typedef struct {
    int version;
    const char *name;
    const char *sql;
} migration;

extern const migration schema_migrations[];
extern const int schema_migrations_count;

/* apply=0 only checks and reports the version (and fails if behind). */
int migrate_run(PGconn *pg, int apply, int *version, char *err, size_t errlen);

#endif
