/*
 * queries — every SQL statement kmsd runs on the request path, prepared on
 * each pooled connection. Parameters only; no SQL is ever built from input.
 * Q_* is the statement's index (and, as "s<index>", its prepared name).
 */
#ifndef QKMS_QUERIES_H
#define QKMS_QUERIES_H

#include "db.h"

#define QKMS_QUERIES(X)                                                                         \
    X(Q_SCHEMA_VERSION, "SELECT coalesce(max(version), 0) FROM qkms_schema_migrations")        \
    X(Q_MASTER_LIST,                                                                           \
      "SELECT version, label, kcv, state FROM master_keys WHERE state <> 'destroyed' "         \
      "ORDER BY version")                                                                      \
    X(Q_MASTER_INSERT,                                                                         \
      "INSERT INTO master_keys (version, label, kcv, state) VALUES ($1::int, $2, $3, 'active')") \
    X(Q_TOKEN_AUTH,                                                                            \
      "WITH t AS (SELECT id, name, role, token_hash FROM admin_tokens"                         \
      "  WHERE token_hash = $1 AND revoked_at IS NULL"                                         \
      "  AND (expires_at IS NULL OR expires_at > now())),"                                     \
      " u AS (UPDATE admin_tokens a SET last_used_at = now() FROM t WHERE a.id = t.id"         \
      "  AND (a.last_used_at IS NULL OR a.last_used_at < now() - interval '60 seconds'))"      \
      " SELECT id, name, role, token_hash FROM t")                                             \
    X(Q_TOKEN_INSERT,                                                                          \
      "INSERT INTO admin_tokens (name, role, token_hash, created_by, expires_at)"              \
      " VALUES ($1, $2, $3, $4, CASE WHEN $5::int IS NULL THEN NULL"                           \
      "  ELSE now() + make_interval(days => $5::int) END)"                                     \
      " RETURNING created_at,"    \
      "  expires_at")             \
    X(Q_TOKEN_LIST,                                                                            \
      "SELECT name, role,"                                                                     \
      " CASE WHEN revoked_at IS NOT NULL THEN 'revoked'"                                       \
      "  WHEN expires_at IS NOT NULL AND expires_at <= now() THEN 'expired' ELSE 'active' END," \
      " created_at,"              \
      " expires_at,"              \
      " last_used_at,"            \
      " revoked_at, created_by"   \
      " FROM admin_tokens ORDER BY created_at, id")                                            \
    X(Q_TOKEN_REVOKE,                                                                          \
      "UPDATE admin_tokens SET revoked_at = now() WHERE name = $1 AND revoked_at IS NULL"      \
      " RETURNING revoked_at")    \
    X(Q_TOKEN_BY_HASH, "SELECT name, revoked_at IS NOT NULL FROM admin_tokens WHERE token_hash = $1") \
    X(Q_TOKEN_LIVE_NAME, "SELECT 1 FROM admin_tokens WHERE name = $1 AND revoked_at IS NULL")  \
    X(Q_TOKEN_COUNT, "SELECT count(*) FROM admin_tokens WHERE revoked_at IS NULL")

#define QKMS_Q_ENUM(id, sql) id,
typedef enum { QKMS_QUERIES(QKMS_Q_ENUM) Q__COUNT } query_id;
#undef QKMS_Q_ENUM

extern const db_stmt_def queries[Q__COUNT];

#endif
