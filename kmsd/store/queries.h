/*
 * queries — every SQL statement kmsd runs on the request path, prepared on
 * each pooled connection. Parameters only; no SQL is ever built from input.
 * Q_* is the statement's index (and, as "s<index>", its prepared name).
 */
#ifndef QKMS_QUERIES_H
#define QKMS_QUERIES_H

#include "store/db.h"

/* Q_SESSION_KEY_BATCH: one text array per argument of qkms_session_key. */
#define Q_SESSION_KEY_BATCH_PARAMS 17

#define QKMS_QUERIES(X)                                                                         \
    X(Q_SCHEMA_VERSION, "SELECT coalesce(max(version), 0) FROM qkms_schema_migrations")        \
    X(Q_READINESS_PROBE, "UPDATE readiness_probe SET probed_at = now() WHERE one")             \
    X(Q_MASTER_LIST,                                                                           \
      "SELECT version, label, kcv, state FROM master_keys WHERE state <> 'destroyed' "         \
      "ORDER BY version")                                                                      \
    X(Q_MASTER_INSERT,                                                                         \
      "INSERT INTO master_keys (version, label, kcv, state, activated_at)"                     \
      " VALUES ($1::int, $2, $3, 'active', now())")                                            \
    X(Q_TOKEN_AUTH,                                                                            \
      "WITH t AS (SELECT id, name, role, token_hash FROM admin_tokens"                         \
      "  WHERE token_hash = $1 AND revoked_at IS NULL"                                         \
      "  AND (expires_at IS NULL OR expires_at > now())),"                                     \
      " u AS (UPDATE admin_tokens a SET last_used_at = now() FROM t WHERE a.id = t.id"         \
      "  AND (a.last_used_at IS NULL OR a.last_used_at < now() - interval '60 seconds'))"      \
      " SELECT id, name, role, token_hash FROM t")                                             \
    X(Q_TOKEN_INSERT, /* $6: a crypto token's party; no row when it names no live device */  \
      "INSERT INTO admin_tokens (name, role, token_hash, created_by, expires_at, acts_for,"    \
      "  device_pk)"                                                                           \
      " SELECT $1, $2, $3, $4, CASE WHEN $5::int IS NULL THEN NULL"                            \
      "  ELSE now() + make_interval(days => $5::int) END, $6::text, d.id"                      \
      " FROM (SELECT 1) one LEFT JOIN devices d ON d.device_id = $6::text"                     \
      "  AND $6::text <> '@platform' AND d.state <> 'revoked'"                                 \
      " WHERE $6::text IS NULL OR $6::text = '@platform' OR d.id IS NOT NULL"                  \
      " RETURNING created_at, expires_at")                                                     \
    X(Q_TOKEN_LIST,                                                                            \
      "SELECT name, role,"                                                                     \
      " CASE WHEN revoked_at IS NOT NULL THEN 'revoked'"                                       \
      "  WHEN expires_at IS NOT NULL AND expires_at <= now() THEN 'expired' ELSE 'active' END," \
      " created_at,"              \
      " expires_at,"              \
      " last_used_at,"            \
      " revoked_at, created_by, acts_for" \
      " FROM admin_tokens ORDER BY created_at, id")                                            \
    X(Q_TOKEN_REVOKE, /* its client certificates' bindings go with it (token_certs.h) */       \
      "WITH r AS (UPDATE admin_tokens SET revoked_at = now() WHERE name = $1"                  \
      "  AND revoked_at IS NULL RETURNING id, revoked_at),"                                    \
      " d AS (DELETE FROM token_certificates WHERE token_id IN (SELECT id FROM r))"            \
      " SELECT revoked_at FROM r")                                                             \
    X(Q_TOKEN_BY_HASH, "SELECT name, revoked_at IS NOT NULL FROM admin_tokens WHERE token_hash = $1") \
    X(Q_TOKEN_LIVE_NAME, "SELECT 1 FROM admin_tokens WHERE name = $1 AND revoked_at IS NULL")  \
    X(Q_TOKEN_NAME_EVER, "SELECT 1 FROM admin_tokens WHERE name = $1 LIMIT 1")                 \
    X(Q_TOKEN_COUNT, "SELECT count(*) FROM admin_tokens WHERE revoked_at IS NULL")             \
    /* data under a device key (crypto.h, schema/034): the crypto token's party, the device, \
     * its keys that are not local (newest first): usable to seal (active, valid now), to    \
     * open (active or retired) */                                                            \
    X(Q_CRYPTO_DEVICE,                                                                         \
      "SELECT t.acts_for, d.id, d.state, k.key_index, k.algorithm, encode(k.wrapped, 'hex'),"  \
      " k.state = 'active' AND k.not_before <= now() AND now() < k.not_after,"                 \
      " k.state IN ('active', 'retired')"                                                      \
      " FROM admin_tokens t LEFT JOIN devices d ON d.device_id = $2"                           \
      " LEFT JOIN device_keys k ON k.device_pk = d.id AND k.wrapped IS NOT NULL"               \
      "  AND k.purpose <> 'local'"                                                              \
      " WHERE t.id = $1::bigint AND t.revoked_at IS NULL AND t.role = 'crypto'"                \
      "  AND (t.expires_at IS NULL OR t.expires_at > now())"                                    \
      " ORDER BY k.key_index DESC")                                                            \
    X(Q_DSEAL_SEND_NEXT, /* $1 device_pk, $2 key_index, $3 direction: as Q_SEAL_SEND_NEXT */   \
      "INSERT INTO device_seal_state AS x (device_pk, key_index, direction, send_next)"        \
      " VALUES ($1::bigint, $2::int, $3::smallint, (-9223372036854775807)::bigint)"            \
      " ON CONFLICT (device_pk, key_index, direction) DO UPDATE"                                \
      " SET send_next = coalesce(x.send_next, (-9223372036854775807)::bigint - 1) + 1"          \
      " WHERE coalesce(x.send_next, 0) <> -1"                                                   \
      " RETURNING send_next - 1")                                                               \
    X(Q_DSEAL_RECV_LOCK,                                                                       \
      "INSERT INTO device_seal_state AS x (device_pk, key_index, direction)"                   \
      " VALUES ($1::bigint, $2::int, $3::smallint)"                                             \
      " ON CONFLICT (device_pk, key_index, direction) DO UPDATE SET device_pk = x.device_pk"   \
      " RETURNING recv_top, recv_bitmap")                                                      \
    X(Q_DSEAL_RECV_SET,                                                                        \
      "UPDATE device_seal_state SET recv_top = $4::bigint, recv_bitmap = $5::bigint"           \
      " WHERE device_pk = $1::bigint AND key_index = $2::int AND direction = $3::smallint")    \
    /* firmware and data-signing keys (firmware_keys.h, schema/033, 037): $N purpose */       \
    X(Q_FW_KEY_LOCK, /* $1 a product, or "data/<name>" (no product has a '/') */              \
      "SELECT pg_advisory_xact_lock(hashtextextended('qkms-fw:' || $1, 0))")                    \
    X(Q_FW_KEY_CURRENT, /* (the highest version, the active one or NULL) */                    \
      "SELECT coalesce(max(version), 0), max(version) FILTER (WHERE state = 'active')"         \
      " FROM firmware_keys WHERE product = $1 AND purpose = $2")                               \
    X(Q_FW_KEY_RETIRE, /* $2 overlap days */                                                    \
      "UPDATE firmware_keys SET state = 'retired', retired_at = now(),"                         \
      " overlap_until = now() + make_interval(days => $2::int)"                                 \
      " WHERE product = $1 AND state = 'active' AND purpose = $3")                             \
    X(Q_FW_KEY_INSERT,                                                                          \
      "INSERT INTO firmware_keys (product, version, label, state, cert_der, sha256, not_after,"  \
      " created_by, purpose) VALUES ($1, $2::int, $3, 'active', $4, decode($5, 'hex'),"         \
      " to_timestamp($6::bigint), $7, $8)")                                                     \
    X(Q_FW_KEY_REVOKE, /* $1 name, $2 version, $3 purpose, $4 reason, $5 serial, $6 CA version */ \
      "UPDATE firmware_keys SET state = 'revoked', revoked_at = now(), revoke_reason = $4,"   \
      " serial = $5, ca_version = $6::int, overlap_until = NULL"                               \
      " WHERE product = $1 AND version = $2::int AND purpose = $3 AND state <> 'revoked'")     \
    X(Q_FW_KEY_ONE, /* $1 name, $2 version, $3 purpose: its state and certificate */           \
      "SELECT state, cert_der, label FROM firmware_keys WHERE product = $1 AND version = $2::int" \
      " AND purpose = $3 FOR UPDATE")                                                          \
    X(Q_FW_KEYS_LIST, /* $1 product or NULL */                                                  \
      "SELECT product, version, state, encode(sha256, 'hex'), not_after, overlap_until,"        \
      " created_at, created_by, retired_at, cert_der, revoked_at, revoke_reason FROM firmware_keys" \
      " WHERE ($1::text IS NULL OR product = $1) AND purpose = $2 ORDER BY product, version")  \
    /* signing releases (firmware_sign.h, schema/035): the active key's label and certificate \
     * SHA-256 (NULL without one), the last counter signed (0: none) */                       \
    X(Q_FW_SIGN_STATE,                                                                         \
      "SELECT k.label, encode(k.sha256, 'hex'),"                                               \
      " (SELECT coalesce(max(counter), 0) FROM firmware_releases WHERE product = $1),"         \
      " extract(epoch FROM k.created_at)::bigint - 60, extract(epoch FROM k.not_after)::bigint" \
      " FROM (SELECT 1) one LEFT JOIN firmware_keys k ON k.product = $1 AND k.state = 'active'" \
      " AND k.purpose = 'firmware'")                                                           \
    X(Q_FW_TARGET_KEY, /* a target device's newest usable key (active, valid, not local) */   \
      "SELECT k.key_index, k.algorithm, encode(k.wrapped, 'hex') FROM devices d"               \
      " JOIN device_keys k ON k.device_pk = d.id WHERE d.device_id = $1 AND d.state = 'active'" \
      " AND k.state = 'active' AND k.wrapped IS NOT NULL AND k.purpose <> 'local'"            \
      " AND k.not_before <= now() AND now() < k.not_after ORDER BY k.key_index DESC LIMIT 1")  \
    X(Q_FW_RELEASE_INSERT,                                                                     \
      "INSERT INTO firmware_releases (product, counter, version, package_id, image_size,"      \
      " image_sha256, manifest_sha256, signer_sha256, targets, not_before, signed_by)"         \
      " VALUES ($1, $2::bigint, $3, $4::uuid, $5::bigint, decode($6, 'hex'), decode($7, 'hex')," \
      " decode($8, 'hex'), $9::jsonb, to_timestamp($10::bigint), $11)")                        \
    /* checking a package (firmware_verify.h): its release, the product's certificates, a \
     * target device's keys (any state: the one it was signed for may have retired) */        \
    X(Q_FW_RELEASE_BY_PACKAGE,                                                                 \
      "SELECT product, counter, version, image_size, encode(image_sha256, 'hex'),"             \
      " encode(signer_sha256, 'hex'), targets::text, extract(epoch FROM not_before)::bigint,"  \
      " signed_by, created_at FROM firmware_releases WHERE package_id = $1::uuid")             \
    X(Q_FW_PRODUCT_CERTS,                                                                      \
      "SELECT encode(cert_der, 'hex') FROM firmware_keys WHERE product = $1"                   \
      " AND purpose = 'firmware' AND state <> 'revoked' ORDER BY version")                     \
    X(Q_FW_DEVICE_KEYS_ALL,                                                                    \
      "SELECT k.key_index, k.algorithm, encode(k.wrapped, 'hex') FROM devices d"               \
      " JOIN device_keys k ON k.device_pk = d.id WHERE d.device_id = $1"                       \
      " AND k.wrapped IS NOT NULL AND k.purpose <> 'local' ORDER BY k.key_index DESC")         \
    /* signatures (crypto_sign.h): the token's party, and the data key of $2 (the active    \
     * one: label, version, certificate SHA-256; NULL when none) */                          \
    X(Q_SIGN_KEY_LOCK, /* shared: signers run together, a revocation or rotation waits */   \
      "SELECT pg_advisory_xact_lock_shared(hashtextextended('qkms-fw:data/' || $1, 0))")       \
    X(Q_SIGN_KEY,                                                                              \
      "SELECT t.acts_for, k.label, k.version, encode(k.sha256, 'hex')"                         \
      " FROM admin_tokens t LEFT JOIN firmware_keys k ON k.purpose = 'data'"                    \
      "  AND k.product = $2 AND k.state = 'active'"                                             \
      " WHERE t.id = $1::bigint AND t.revoked_at IS NULL AND t.role = 'crypto'"                \
      "  AND (t.expires_at IS NULL OR t.expires_at > now())")                                   \
    X(Q_SIGN_KEY_CERTS, /* every version of data key $1, newest first */                       \
      "SELECT version, encode(cert_der, 'hex'), encode(sha256, 'hex') FROM firmware_keys"      \
      " WHERE purpose = 'data' AND product = $1 AND state <> 'revoked' ORDER BY version DESC") \
    /* release approvals (firmware_approvals.h, schema/038) */                               \
    X(Q_FW_RULE, "SELECT approvals FROM firmware_products WHERE product = $1")                 \
    X(Q_FW_RULE_LOCK,                                                                          \
      "SELECT approvals FROM firmware_products WHERE product = $1 FOR UPDATE")                 \
    X(Q_FW_RULE_SET,                                                                           \
      "INSERT INTO firmware_products (product, approvals, updated_by) VALUES ($1, $2::int, $3)" \
      " ON CONFLICT (product) DO UPDATE SET approvals = EXCLUDED.approvals,"                    \
      " updated_at = now(), updated_by = EXCLUDED.updated_by"                                   \
      " RETURNING product, approvals, updated_at, updated_by")                                 \
    X(Q_FW_RULES_LIST,                                                                         \
      "SELECT product, approvals, updated_at, updated_by FROM firmware_products"               \
      " ORDER BY product")                                                                     \
    X(Q_FW_APPROVAL_INSERT,                                                                    \
      "INSERT INTO firmware_approvals (id, product, version, image_size, image_sha256,"        \
      " targets, counter, not_before, requested_by, expires_at) VALUES ($1::uuid, $2, $3,"     \
      " $4::bigint, decode($5, 'hex'), $6::jsonb, $7::bigint, $8::bigint, $9,"                 \
      " now() + make_interval(hours => $10::int))")                                             \
    X(Q_FW_APPROVAL_LOCK, /* $2 the targets to compare with (jsonb equality) */              \
      "SELECT product, version, image_size, encode(image_sha256, 'hex'), targets = $2::jsonb," \
      " counter, not_before, requested_by, approved_by, used_at IS NOT NULL,"                  \
      " expires_at < now(),"                                                                   \
      /* 11, 12: the requester's and the approver's tokens still live (a name can be reused   \
       * after a revocation: the token must be older than the act) */                         \
      " EXISTS (SELECT 1 FROM admin_tokens t WHERE t.name = a.requested_by"                   \
      "  AND t.role = 'release' AND t.revoked_at IS NULL"                                     \
      "  AND (t.expires_at IS NULL OR t.expires_at > now()) AND t.created_at <= a.requested_at)," \
      " EXISTS (SELECT 1 FROM admin_tokens t WHERE t.name = a.approved_by"                    \
      "  AND t.role = 'release' AND t.revoked_at IS NULL"                                     \
      "  AND (t.expires_at IS NULL OR t.expires_at > now()) AND t.created_at <= a.approved_at)" \
      " FROM firmware_approvals a WHERE id = $1::uuid FOR UPDATE")                             \
    X(Q_FW_APPROVAL_APPROVE,                                                                   \
      "UPDATE firmware_approvals SET approved_by = $2, approved_at = now()"                     \
      " WHERE id = $1::uuid")                                                                  \
    X(Q_FW_APPROVAL_USE,                                                                       \
      "UPDATE firmware_approvals SET used_at = now(), package_id = $2::uuid"                    \
      " WHERE id = $1::uuid AND used_at IS NULL AND approved_at IS NOT NULL")                  \
    X(Q_FW_APPROVALS_LIST, /* $1 product or NULL, $2 id or NULL */                             \
      "SELECT id, product, version, image_size, encode(image_sha256, 'hex'), targets::text,"   \
      " counter, not_before, CASE WHEN used_at IS NOT NULL THEN 'used'"                        \
      " WHEN expires_at < now() THEN 'expired' WHEN approved_at IS NOT NULL THEN 'approved'"   \
      " ELSE 'pending' END, requested_by, requested_at, approved_by, approved_at, used_at,"    \
      " package_id, expires_at FROM firmware_approvals"                                        \
      " WHERE ($1::text IS NULL OR product = $1) AND ($2::uuid IS NULL OR id = $2::uuid)"      \
      " ORDER BY requested_at DESC, id LIMIT 100")                                             \
    /* groups' firmware keys (firmware_groups.h, schema/036) */                              \
    X(Q_FWG_LOCK, "SELECT pg_advisory_xact_lock(hashtextextended('qkms-fwg:' || $1, 0))")      \
    X(Q_FWG_KEYS, /* a group's keys, the active one first */                                  \
      "SELECT encode(key_id, 'hex'), encode(wrapped, 'hex'), state FROM firmware_group_keys"   \
      " WHERE group_label = $1 ORDER BY state = 'active' DESC, id DESC")                       \
    X(Q_FWG_SUPERSEDE,                                                                         \
      "UPDATE firmware_group_keys SET state = 'previous', superseded_at = now()"               \
      " WHERE group_label = $1 AND state = 'active' RETURNING encode(key_id, 'hex')")          \
    X(Q_FWG_INSERT,                                                                            \
      "INSERT INTO firmware_group_keys (group_label, key_id, state, wrapped, master_version,"  \
      " created_by) VALUES ($1, decode($2, 'hex'), 'active', decode($3, 'hex'), $4::int, $5)") \
    X(Q_FWG_DELETE, /* a previous key; the active one is refused by the service */             \
      "DELETE FROM firmware_group_keys WHERE group_label = $1 AND key_id = decode($2, 'hex')"  \
      " AND state = 'previous' RETURNING created_at")                                          \
    X(Q_FWG_LIST, /* $1 group or NULL */                                                       \
      "SELECT g.group_label, encode(g.key_id, 'hex'), g.state, g.master_version, g.created_at," \
      " g.created_by, g.superseded_at FROM firmware_group_keys g"                              \
      " WHERE $1::text IS NULL OR g.group_label = $1"                                          \
      " ORDER BY g.group_label, g.state = 'active' DESC, g.id DESC")                          \
    X(Q_REWRAP_FW_GROUPS,                                                                      \
      "SELECT id, group_label, encode(key_id, 'hex'), encode(wrapped, 'hex'), master_version"  \
      " FROM firmware_group_keys WHERE master_version < $1::int LIMIT $2::int")               \
    X(Q_REWRAP_FW_GROUP_SET,                                                                   \
      "UPDATE firmware_group_keys SET wrapped = decode($3, 'hex'), master_version = $4::int"   \
      " WHERE id = $1::bigint AND master_version = $2::int")                                   \
    /* the crypto services (crypto.h, schema/032): a session's key for a crypto token */      \
    X(Q_CRYPTO_KEY, "SELECT * FROM qkms_crypto_key($1::bigint, $2, $3, $4::uuid)")             \
    /* $1 key_id, $2 direction, $3 session_pk: the seq to seal with (the next one, from 2^63  \
     * as a bit pattern, i.e. bigint's minimum); no row once 2^64 - 2 was used */            \
    X(Q_SEAL_SEND_NEXT,                                                                        \
      "INSERT INTO seal_state AS x (key_id, direction, session_pk, send_next)"                \
      " VALUES ($1::uuid, $2::smallint, $3::bigint, (-9223372036854775807)::bigint)"           \
      " ON CONFLICT (key_id, direction) DO UPDATE"                                              \
      " SET send_next = coalesce(x.send_next, (-9223372036854775807)::bigint - 1) + 1"          \
      " WHERE coalesce(x.send_next, 0) <> -1"                                                   \
      " RETURNING send_next - 1")                                                               \
    /* the receiver's window of a key and direction, locked until the transaction ends */      \
    X(Q_SEAL_RECV_LOCK,                                                                        \
      "INSERT INTO seal_state AS x (key_id, direction, session_pk)"                            \
      " VALUES ($1::uuid, $2::smallint, $3::bigint)"                                            \
      " ON CONFLICT (key_id, direction) DO UPDATE SET session_pk = x.session_pk"                \
      " RETURNING recv_top, recv_bitmap")                                                      \
    X(Q_SEAL_RECV_SET,                                                                         \
      "UPDATE seal_state SET recv_top = $3::bigint, recv_bitmap = $4::bigint"                   \
      " WHERE key_id = $1::uuid AND direction = $2::smallint")                                  \
    /* a TLS client certificate (certs_authenticate): $1 SHA-256 of its DER, hex */           \
    X(Q_TCERT_AUTH, /* $1 sha256 hex: the live token a client certificate is bound to */      \
      "SELECT t.id, t.name, t.role FROM token_certificates c JOIN admin_tokens t"              \
      " ON t.id = c.token_id WHERE c.sha256 = decode($1, 'hex') AND t.revoked_at IS NULL"       \
      " AND (t.expires_at IS NULL OR t.expires_at > now())")                                   \
    X(Q_CERT_BY_SHA256,                                                                        \
      "SELECT c.device_id, c.serial, c.state, d.state FROM certificates c"                     \
      " JOIN devices d ON d.id = c.device_pk WHERE c.sha256 = decode($1, 'hex')")             \
    X(Q_AUDIT_APPEND,                                                                          \
      "INSERT INTO audit_log (actor, event, device_id, detail) VALUES ($1, $2, $3, $4::jsonb)") \
    X(Q_AUDIT_LOCAL_KEY, /* at most one row a minute per device: a replayed request */        \
                         /* cannot flood the audit log (each refusal is logged) */            \
      "INSERT INTO audit_log (actor, event, device_id, detail)"                                \
      " SELECT 'kmsd', 'device.local_key_refused', $1, $2::jsonb WHERE NOT EXISTS"             \
      " (SELECT 1 FROM audit_log WHERE device_id = $1 AND event = 'device.local_key_refused'"  \
      "  AND at > now() - interval '1 minute')")                                               \
    X(Q_AUDIT_APPEND_MANY,                                                                     \
      "INSERT INTO audit_log (actor, event, device_id, detail)"                                \
      " SELECT $1, $2, u.d, u.j::jsonb FROM unnest($3::text[], $4::text[]) AS u(d, j)")        \
    X(Q_DEVTYPE_LIST,                                                                          \
      "SELECT name, key_purposes, service_days, suite FROM device_types ORDER BY name")        \
    X(Q_DEVTYPE_TEMPLATE, "SELECT key_purposes FROM device_types WHERE name = $1")             \
    X(Q_DEVTYPE_INSERT, "INSERT INTO device_types (name, key_purposes, service_days, suite)"   \
      " VALUES ($1, $2::text[], $3::int, coalesce($4, 'aes'))")                               \
    X(Q_DEVICE_ATTRS_TAKEN, /* rows ($1) whose (type, mac) or (type, sn) another device has */ \
      "SELECT u.i FROM unnest($1::int[], $2::text[], $3::text[], $4::text[]) AS u(i, type, mac, sn)" \
      " WHERE (u.mac IS NOT NULL AND EXISTS (SELECT 1 FROM devices d WHERE d.type = u.type"    \
      "         AND d.attributes ? 'mac' AND d.attributes->>'mac' = u.mac))"                   \
      "    OR (u.sn IS NOT NULL AND EXISTS (SELECT 1 FROM devices d WHERE d.type = u.type"     \
      "         AND d.attributes ? 'sn' AND d.attributes->>'sn' = u.sn))")                     \
    X(Q_DEVICE_PARENTS,                                                                        \
      "SELECT device_id, type, state FROM devices WHERE device_id = ANY($1::text[])"          \
      " ORDER BY id FOR SHARE")                                                                \
    X(Q_DEVICE_INSERT_MANY, /* service days: -1 the type's, 0 no end (device_model.h) */     \
      "INSERT INTO devices (device_id, type, group_label, parent_id, attributes, service_until)" \
      " SELECT u.device_id, u.type, u.grp, p.id, u.attrs::jsonb,"                              \
      " now() + make_interval(days => CASE u.svc WHEN -1 THEN t.service_days"                  \
      "                                          WHEN 0 THEN NULL ELSE u.svc END)"              \
      " FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::int[])"    \
      "  AS u(device_id, type, grp, parent, attrs, svc)"                                       \
      " LEFT JOIN devices p ON p.device_id = u.parent"                                         \
      " LEFT JOIN device_types t ON t.name = u.type"                                           \
      " ON CONFLICT (device_id) DO NOTHING RETURNING device_id, qkms_rfc3339(service_until)")  \
    X(Q_DEVKEY_INSERT_MANY,                                                                    \
      "INSERT INTO device_keys (device_pk, key_index, algorithm, wrapped, master_version,"     \
      " provenance, not_before, not_after, purpose)"                                           \
      " SELECT d.id, u.idx, u.alg, decode(u.wrapped, 'hex'), u.mv, u.prov, now(),"             \
      " now() + make_interval(days => u.days), coalesce(t.key_purposes[u.idx + 1], 'generic')" \
      " FROM unnest($1::text[], $2::int[], $3::text[], $4::text[], $5::int[], $6::text[], $7::int[])" \
      "  AS u(device_id, idx, alg, wrapped, mv, prov, days)"                                   \
      " JOIN devices d ON d.device_id = u.device_id JOIN device_types t ON t.name = d.type")    \
    X(Q_DEVICE_GET,                                                                            \
      "SELECT d.device_id, d.type, d.group_label, p.device_id, d.state, d.created_at,"         \
      " d.updated_at, d.revoked_at, d.sae_id, d.attributes::text, d.service_until,"            \
      " d.first_seen_at, d.last_seen_at"                                                       \
      " FROM devices d LEFT JOIN devices p ON p.id = d.parent_id"                              \
      " WHERE d.device_id = $1")                                                               \
    X(Q_DEVICE_SEEN, /* $1 bigint[] of device rows heard from: how many were first contacts; \
                        rows another transaction holds are skipped (written at their next  \
                        minute): no flush waits on, or deadlocks with, a device's change */  \
      "WITH o AS (SELECT id, device_id, first_seen_at IS NULL AS first FROM devices"           \
      "  WHERE id = ANY($1::bigint[]) ORDER BY id FOR NO KEY UPDATE SKIP LOCKED),"              \
      " u AS (UPDATE devices d SET last_seen_at = greatest(d.last_seen_at, now()),"             \
      "  first_seen_at = coalesce(d.first_seen_at, now()) FROM o WHERE d.id = o.id),"           \
      " a AS (INSERT INTO audit_log (actor, event, device_id, detail)"                          \
      "  SELECT 'kmsd', 'device.first_contact', o.device_id, '{}'::jsonb FROM o WHERE o.first"  \
      "  ORDER BY o.id RETURNING 1)"                                                            \
      " SELECT count(*) FROM a")                                                                \
    X(Q_DEVICE_LOCK, "SELECT id, state, type, group_label, suspended_with_parent FROM devices"  \
      " WHERE device_id = $1 FOR UPDATE")                                                      \
    X(Q_DEVICE_KEYS,                                                                           \
      "SELECT k.key_index, k.algorithm, k.state, k.not_after <= now(), k.not_before,"          \
      " k.not_after, k.retire_at, k.exported_at, k.export_count, k.master_version,"            \
      " k.provenance, encode(k.wrapped, 'hex'), k.created_at, k.purpose"                       \
      " FROM device_keys k JOIN devices d ON d.id = k.device_pk"                               \
      " WHERE d.device_id = $1 ORDER BY k.key_index")                                          \
    X(Q_FAMILY_LOCAL_KEYS, /* a sub-device's gateway's live local keys, as Q_DEVICE_KEYS */   \
                           /* and then the gateway's device ID (column 14) */                   \
      "SELECT k.key_index, k.algorithm, k.state, k.not_after <= now(), k.not_before,"          \
      " k.not_after, k.retire_at, k.exported_at, k.export_count, k.master_version,"            \
      " k.provenance, encode(k.wrapped, 'hex'), k.created_at, k.purpose, p.device_id"          \
      " FROM devices d JOIN devices p ON p.id = d.parent_id"                                   \
      " JOIN device_keys k ON k.device_pk = p.id"                                              \
      " WHERE d.id = $1::bigint AND p.state = 'active' AND k.purpose = 'local'"                \
      " AND k.state = 'active' AND k.not_after > now() ORDER BY k.key_index FOR SHARE OF p")   \
    X(Q_DEVICE_CHILDREN_LOCK, /* a gateway's sub-devices, locked in one order */              \
      "SELECT id, device_id, state, suspended_with_parent FROM devices"                        \
      " WHERE parent_id = $1::bigint ORDER BY id FOR UPDATE")                                  \
    X(Q_DEVICE_PARENT_STATE,                                                                   \
      "SELECT p.device_id, p.state FROM devices d JOIN devices p ON p.id = d.parent_id"        \
      " WHERE d.id = $1::bigint")                                                               \
    X(Q_DEVICE_ATTRS_SET, /* $1 pk: (attributes - $3 names) || $2; the new attributes */    \
      "UPDATE devices SET attributes = (attributes - $3::text[]) || $2::jsonb,"                \
      " updated_at = now() WHERE id = $1::bigint RETURNING attributes::text")                  \
    X(Q_DEVICE_ATTRS_CLASH, /* another device of its type with its new mac or sn */          \
      "SELECT o.device_id FROM devices d JOIN devices o ON o.type = d.type AND o.id <> d.id"   \
      " WHERE d.id = $1::bigint AND ((d.attributes ? 'mac' AND o.attributes ? 'mac'"           \
      "  AND o.attributes->>'mac' = d.attributes->>'mac') OR (d.attributes ? 'sn'"             \
      "  AND o.attributes ? 'sn' AND o.attributes->>'sn' = d.attributes->>'sn')) LIMIT 1")     \
    X(Q_DEVICE_SET_WITH_PARENT,                                                                \
      "UPDATE devices SET suspended_with_parent = $2::boolean WHERE id = $1::bigint")          \
    X(Q_DEVICE_SET_STATE,                                                                      \
      "UPDATE devices SET state = $2, updated_at = now(),"                                     \
      " revoked_at = CASE WHEN $2 = 'revoked' THEN now() ELSE revoked_at END WHERE id = $1")   \
    X(Q_DEVKEY_DESTROY_ALL,                                                                    \
      "UPDATE device_keys SET state = 'destroyed', wrapped = NULL, master_version = NULL,"      \
      " destroyed_at = now(), retire_at = NULL WHERE device_pk = $1 AND state <> 'destroyed'"  \
      " RETURNING key_index")                                                                  \
    X(Q_DEVKEY_MAX_INDEX,                                                                      \
      "SELECT coalesce(max(k.key_index), -1) FROM device_keys k JOIN devices d"                \
      " ON d.id = k.device_pk WHERE d.device_id = $1")                                         \
    X(Q_DEVKEY_SCHEDULE_RETIRE,                                                                \
      "UPDATE device_keys SET retire_at = now() + make_interval(days => $2::int)"              \
      " WHERE device_pk = $1 AND state = 'active' AND retire_at IS NULL"                       \
      " AND purpose = ANY ($3::text[]) RETURNING key_index")                                   \
    X(Q_DEVKEY_INSERT_ONE,                                                                     \
      "INSERT INTO device_keys (device_pk, key_index, algorithm, wrapped, master_version,"     \
      " provenance, not_before, not_after, purpose) VALUES ($1, $2, $3, decode($4, 'hex'), $5," \
      " $6, now(), now() + make_interval(days => $7::int), $8)")                              \
    X(Q_DEVKEY_MARK_EXPORTED,                                                                  \
      "UPDATE device_keys SET exported_at = now(), export_count = export_count + 1"            \
      " WHERE device_pk = $1 AND key_index = ANY($2::int[])")                                  \
    X(Q_DEVICE_LIST,                                                                           \
      "SELECT d.device_id, d.type, d.group_label, p.device_id, d.state, d.created_at,"         \
      " d.updated_at, d.revoked_at,"                                                           \
      " (SELECT count(*) FROM device_keys k WHERE k.device_pk = d.id AND k.state = 'active'"   \
      "   AND k.not_after > now()),"                                                           \
      " (SELECT min(k.not_after) FROM device_keys k WHERE k.device_pk = d.id"                  \
      "   AND k.state = 'active' AND k.not_after > now()), d.sae_id, d.attributes::text,"      \
      " d.service_until, d.first_seen_at, d.last_seen_at"                                      \
      " FROM devices d LEFT JOIN devices p ON p.id = d.parent_id"                              \
      " WHERE ($1::text IS NULL OR d.type = $1) AND ($2::text IS NULL OR d.group_label = $2)"  \
      " AND ($3::text IS NULL OR d.state = $3)"                                                \
      " AND ($4::int IS NULL OR EXISTS (SELECT 1 FROM device_keys k WHERE k.device_pk = d.id"  \
      "   AND k.state = 'active' AND k.not_after > now()"                                      \
      "   AND k.not_after <= now() + make_interval(days => $4::int)))"                         \
      " AND ($5::text IS NULL OR d.device_id > $5)"                                            \
      " AND ($7::text IS NULL OR p.device_id = $7)"                                            \
      " AND ($8::jsonb IS NULL OR d.attributes @> $8::jsonb)"                                  \
      " AND ($9::boolean IS NULL OR (d.first_seen_at IS NULL) = $9)"                           \
      " AND ($10::timestamptz IS NULL OR d.last_seen_at >= $10)"                               \
      " ORDER BY d.device_id LIMIT $6::int")                                                   \
    X(Q_KEYS_RETIRE_DUE,                                                                       \
      "UPDATE device_keys k SET state = 'retired', retired_at = now(), retire_at = NULL"       \
      " FROM devices d WHERE d.id = k.device_pk AND k.state = 'active' AND k.retire_at <= now()" \
      " RETURNING d.device_id, k.key_index")                                                   \
    X(Q_EXPIRY_WARN,                                                                           \
      "WITH due AS (SELECT d.id, d.device_id, min(k.not_after) AS first"                       \
      "  FROM devices d JOIN device_keys k ON k.device_pk = d.id"                              \
      "  WHERE d.state <> 'revoked' AND k.state = 'active' AND k.not_after > now()"            \
      "  AND k.not_after <= now() + make_interval(days => $1::int)"                            \
      "  AND (d.expiry_warned_at IS NULL OR d.expiry_warned_at < now() - interval '1 day')"    \
      "  GROUP BY d.id, d.device_id LIMIT 1000)"                                               \
      " , upd AS (UPDATE devices d SET expiry_warned_at = now() FROM due WHERE d.id = due.id"  \
      "  AND (d.expiry_warned_at IS NULL OR d.expiry_warned_at < now() - interval '1 day')"    \
      "  RETURNING due.device_id, due.first)"                                                  \
      " , ev AS (INSERT INTO audit_log (actor, event, device_id, detail)"  /* an event too */ \
      "  SELECT 'kmsd', 'device.key_expiring', device_id,"                                     \
      "   jsonb_build_object('not_after', qkms_rfc3339(first)) FROM upd)"                      \
      " SELECT device_id, first FROM upd")                                                     \
    X(Q_SERVICE_GET, "SELECT service_until FROM devices WHERE id = $1::bigint")               \
    X(Q_SERVICE_SET, /* $1 pk, $2 extend|until|none, $3 days, $4 until: from, to */          \
      "UPDATE devices d SET service_until = CASE $2"                                           \
      "   WHEN 'extend' THEN greatest(now(), coalesce(o.service_until, now()))"                 \
      "                      + make_interval(days => $3::int)"                                 \
      "   WHEN 'until' THEN $4::timestamptz END,"                                              \
      " service_warned_at = NULL, updated_at = now() FROM devices o"                           \
      " WHERE d.id = $1::bigint AND o.id = d.id"                                               \
      " RETURNING qkms_rfc3339(o.service_until), qkms_rfc3339(d.service_until)")               \
    X(Q_SERVICE_WARN, /* ends within $1 days, each device at most once a day */               \
      "WITH due AS (SELECT id FROM devices WHERE state <> 'revoked'"                          \
      "  AND service_until > now() AND service_until <= now() + make_interval(days => $1::int)" \
      "  AND (service_warned_at IS NULL OR service_warned_at < now() - interval '1 day')"      \
      "  LIMIT 1000)"                                                                          \
      " , upd AS (UPDATE devices d SET service_warned_at = now() FROM due WHERE d.id = due.id" \
      "  AND (d.service_warned_at IS NULL OR d.service_warned_at < now() - interval '1 day')"  \
      "  RETURNING d.device_id, qkms_rfc3339(d.service_until) AS until)"                       \
      " , ev AS (INSERT INTO audit_log (actor, event, device_id, detail)"  /* an event too */ \
      "  SELECT 'kmsd', 'device.service_expiring', device_id,"                                 \
      "   jsonb_build_object('service_until', until) FROM upd)"                                \
      " SELECT device_id, until FROM upd")                                                     \
    X(Q_SERVICE_COUNTS, /* ending within $1 days; ended */                                   \
      "SELECT count(*) FILTER (WHERE service_until > now()),"                                  \
      " count(*) FILTER (WHERE service_until <= now()) FROM devices"                           \
      " WHERE state <> 'revoked' AND service_until IS NOT NULL"                                \
      " AND service_until <= now() + make_interval(days => $1::int)")                          \
    X(Q_KEYS_EXPIRING_COUNT,                                                                   \
      "SELECT count(*) FROM device_keys WHERE state = 'active' AND not_after > now()"          \
      " AND not_after <= now() + make_interval(days => $1::int)")                              \
    X(Q_DEVICE_COUNTS, "SELECT state, count(*) FROM devices GROUP BY state")                 \
    X(Q_DEVKEY_FOR_AUTH,                                                                       \
      "SELECT d.id, d.state, k.algorithm, encode(k.wrapped, 'hex'), k.state,"                 \
      " floor(extract(epoch FROM k.not_before))::bigint,"                                      \
      " floor(extract(epoch FROM k.not_after))::bigint, k.purpose"                             \
      " FROM devices d JOIN device_keys k ON k.device_pk = d.id"                               \
      " WHERE d.device_id = $1 AND k.key_index = $2::int")                                     \
    X(Q_SESSION_KEY,                                                                           \
      "SELECT outcome, out_key_id, out_key_bits, encode(out_wrapped, 'hex'), out_expires,"     \
      " out_policy, out_delivery, out_created, encode(out_hash, 'hex')"                        \
      " FROM qkms_session_key($1::bigint, $2::int, $3::bytea, $13::bigint, $14::int,"          \
      " $4::bytea, $15::bytea, $5, $6, $7::boolean, $8::uuid, decode($9, 'hex'), $10::int,"    \
      " $11, $12::int, $16::bytea, $17)")                                                      \
    X(Q_SESSION_KEY_BATCH,                                                                     \
      "SELECT i, outcome, out_key_id, out_key_bits, encode(out_wrapped, 'hex'), out_expires,"  \
      " out_policy, out_delivery, out_created, encode(out_hash, 'hex')"                        \
      " FROM qkms_session_key_batch($1::bigint[], $2::int[], $3::text[], $4::bigint[],"        \
      " $5::int[], $6::text[], $7::text[], $8::text[], $9::text[], $10::boolean[],"            \
      " $11::uuid[], $12::text[], $13::int[], $14::text[], $15::int[], $16::text[],"         \
      " $17::text[])")                                                                         \
    X(Q_SESSION_END, "SELECT qkms_session_end($1::bigint, $2::int, $3::bytea, $5::bigint,"    \
      " $6::int, $4::bytea, $7::bytea, $8::bytea)")                                            \
    X(Q_SESSION_END_ALL, /* a device ends all its sessions and streams (schema/025, 028) */  \
      "SELECT outcome, n, n_streams FROM qkms_session_end_all($1::bigint, $2::int, $3::bytea,"  \
      " $4::bigint, $5::int, $6::bytea)")                                                      \
    X(Q_GW_LOGIN_BEGIN,                                                                        \
      "SELECT outcome, detail, retry_s, tid, kdf_n, kdf_r, kdf_p, encode(salt, 'hex'),"        \
      " encode(hash, 'hex') FROM qkms_gateway_login_begin($1::bigint, $2::int, $3::bytea,"      \
      " $4::bigint, $5::int, $6::boolean, $7::int, $8::int)")                                 \
    X(Q_GW_LOGIN_FAILED,                                                                       \
      "SELECT outcome, retry_s FROM qkms_gateway_login_failed($1::bigint, decode($2, 'hex'),"  \
      " $3::int, $4::int)")                                                                    \
    X(Q_GW_LOGIN_RIGHT, /* a right password whose login failed for another reason */       \
      "UPDATE gateway_credentials SET failures = 0"                                            \
      " WHERE device_pk = $1::bigint AND hash = decode($2, 'hex')")                            \
    X(Q_GW_LOGIN_DONE,                                                                         \
      "SELECT qkms_gateway_login_done($1::bigint, $2::bytea, $3, decode($4, 'hex'))")          \
    X(Q_GW_LOGOUT,                                                                             \
      "SELECT qkms_gateway_logout($1::bigint, $2::int, $3::bytea, $4::bigint, $5::int,"         \
      " $6::boolean)")                                                                         \
    X(Q_DEVKEY_HAS_ACCESS,                                                                     \
      "SELECT 1 FROM device_keys WHERE device_pk = $1::bigint AND purpose = 'access'"          \
      " AND state = 'active' AND not_after > now() LIMIT 1")                                   \
    X(Q_GW_CRED_LOGIN, /* the login a new credential replaces (session hash, hex) */       \
      "SELECT encode(login_hash, 'hex') FROM gateway_credentials WHERE device_pk = $1::bigint" \
      " FOR UPDATE")                                                                           \
    X(Q_GW_CRED_SET,                                                                           \
      "INSERT INTO gateway_credentials (device_pk, tid, kdf, kdf_n, kdf_r, kdf_p, salt, hash)" \
      " VALUES ($1::bigint, $2, 'scrypt', $3::bigint, $4::int, $5::int, decode($6, 'hex'),"    \
      "  decode($7, 'hex'))"                                                                   \
      " ON CONFLICT (device_pk) DO UPDATE SET tid = excluded.tid, kdf = excluded.kdf,"         \
      "  kdf_n = excluded.kdf_n, kdf_r = excluded.kdf_r, kdf_p = excluded.kdf_p,"              \
      "  salt = excluded.salt, hash = excluded.hash, failures = 0, locked_until = NULL,"       \
      "  login_hash = NULL, updated_at = now()")                                               \
    X(Q_SESSION_DESTROY_BY_HASH, /* $1 session hash (hex), $2 reason, $3 actor */            \
      "SELECT qkms_session_destroy(id, $2, $3) FROM sessions"                                  \
      " WHERE session_hash = decode($1, 'hex') FOR UPDATE")                                    \
    X(Q_DEVICE_OWNER_SET,                                                                      \
      "INSERT INTO device_owners (device_pk, app_id, how)"                                     \
      " SELECT id, $2::bigint, 'registered' FROM devices WHERE device_id = $1")                \
    X(Q_APP_OF_TOKEN, /* the live app of a live token */                                     \
      "SELECT a.id, a.name, array_to_json(a.enroll_types)::text, a.enroll_group"              \
      " FROM admin_tokens t"                                                                   \
      " JOIN apps a ON a.id = t.app_id WHERE t.id = $1::bigint AND t.revoked_at IS NULL"       \
      " AND a.revoked_at IS NULL")                                                             \
    X(Q_APP_INSERT,                                                                            \
      "INSERT INTO apps (name, enroll_types, enroll_group, self_registered, created_by)"       \
      " VALUES ($1, $2::text[], $3, $4::boolean, $5) RETURNING id")                            \
    X(Q_APP_TOKEN_INSERT,                                                                      \
      "INSERT INTO admin_tokens (name, role, token_hash, created_by, app_id)"                   \
      " SELECT $1, 'app', $2, $3, id FROM apps WHERE name = $4 AND revoked_at IS NULL"         \
      " RETURNING created_at")                                                                 \
    X(Q_APP_LIST,                                                                              \
      "SELECT a.name, array_to_json(a.enroll_types)::text, a.enroll_group, a.self_registered," \
      " a.created_at,"                                                                         \
      " a.created_by, a.revoked_at,"                                                           \
      " (SELECT count(*) FROM device_owners o WHERE o.app_id = a.id)"                          \
      " FROM apps a ORDER BY a.name")                                                          \
    X(Q_APP_REVOKE, /* its tokens and its bindings go with it: the names of its devices */   \
      "WITH a AS (UPDATE apps SET revoked_at = now() WHERE name = $1 AND revoked_at IS NULL"   \
      "  RETURNING id),"                                                                       \
      " t AS (UPDATE admin_tokens SET revoked_at = now() WHERE app_id IN (SELECT id FROM a)"   \
      "  AND revoked_at IS NULL),"                                                             \
      " o AS (DELETE FROM device_owners WHERE app_id IN (SELECT id FROM a) RETURNING device_pk)" \
      " SELECT (SELECT count(*) FROM a), (SELECT count(*) FROM o)")                            \
    X(Q_APP_OWNS, /* the device, owned by app $2 itself or through its gateway */            \
      "SELECT 1 FROM devices d LEFT JOIN device_owners o ON o.device_pk = d.id"                \
      " LEFT JOIN device_owners po ON po.device_pk = d.parent_id"                              \
      " WHERE d.device_id = $1 AND (o.app_id = $2::bigint OR po.app_id = $2::bigint)")         \
    X(Q_APP_OWNS_REGISTERED, /* registered by app $2 (its enroller scope) */                 \
      "SELECT 1 FROM devices d JOIN device_owners o ON o.device_pk = d.id"                     \
      " WHERE d.device_id = $1 AND o.app_id = $2::bigint AND o.how = 'registered'")            \
    X(Q_APP_REG_CHECK, /* in the registration's transaction: the app live, the parent its own */ \
      "SELECT EXISTS (SELECT 1 FROM apps WHERE id = $1::bigint AND revoked_at IS NULL"        \
      "  FOR SHARE),"                                                                          \
      " $2::text IS NULL OR EXISTS (SELECT 1 FROM device_owners o JOIN devices p"              \
      "  ON p.id = o.device_pk WHERE p.device_id = $2 AND o.app_id = $1::bigint"               \
      "  AND o.how = 'registered' FOR SHARE OF o)")                                            \
    X(Q_APP_DEVICES, /* an app's devices: owned, and the sub-devices of owned ones */        \
      "SELECT d.device_id, d.type, d.group_label, p.device_id, d.state, d.created_at,"         \
      " d.updated_at, d.revoked_at, d.sae_id, d.attributes::text, d.service_until,"            \
      " coalesce(o.how, 'via_parent')"                                                         \
      " FROM devices d LEFT JOIN devices p ON p.id = d.parent_id"                              \
      " LEFT JOIN device_owners o ON o.device_pk = d.id AND o.app_id = $1::bigint"             \
      " LEFT JOIN device_owners po ON po.device_pk = d.parent_id AND po.app_id = $1::bigint"   \
      " WHERE o.device_pk IS NOT NULL OR po.device_pk IS NOT NULL"                             \
      " ORDER BY d.device_id LIMIT 10000")                                                     \
    X(Q_DEVICE_ACCESS_KEY, /* the device; its newest live access key (or NULLs): */         \
                           /* index, algorithm, wrapped hex */                                 \
      "SELECT k.key_index, k.algorithm, encode(k.wrapped, 'hex'), d.bind_epoch FROM devices d" \
      " LEFT JOIN LATERAL (SELECT * FROM device_keys x WHERE x.device_pk = d.id"               \
      "  AND x.purpose = 'access' AND x.state = 'active' AND x.not_before <= now()"            \
      "  AND x.not_after > now() ORDER BY x.key_index DESC LIMIT 1) k ON true"                 \
      " WHERE d.device_id = $1")                                                               \
    X(Q_BIND_CHALLENGE, /* no device when none can be bound by that ID: not said */          \
      "INSERT INTO bind_challenges (id, app_id, device_pk, random, expires_at)"                \
      " VALUES ($1::uuid, $2::bigint, (SELECT d.id FROM devices d WHERE d.device_id = $4"      \
      "  AND d.state <> 'revoked' AND d.parent_id IS NULL), decode($3, 'hex'),"                \
      "  now() + make_interval(secs => $5::int))"                                              \
      " RETURNING floor(extract(epoch FROM expires_at))::bigint")                              \
    X(Q_BIND_CHALLENGE_GET, /* an app's live challenge: device, random (hex) */              \
      "SELECT d.device_id, encode(c.random, 'hex') FROM bind_challenges c"                     \
      " LEFT JOIN devices d ON d.id = c.device_pk"                                             \
      " WHERE c.id = $1::uuid AND c.app_id = $2::bigint"                                       \
      " AND c.used_at IS NULL AND c.expires_at > now()")                                       \
    X(Q_BIND_CHALLENGES_PURGE, /* used or expired, kept a day for the audit's sake */        \
      "DELETE FROM bind_challenges WHERE expires_at < now() - interval '1 day'")               \
    X(Q_APP_BIND, "SELECT outcome, device_id FROM qkms_app_bind($1::bigint, $2::uuid, $3::boolean)") \
    X(Q_GW_RESET,                                                                              \
      "SELECT outcome, unbound, ended, epoch FROM qkms_gateway_reset($1::bigint, $2::int,"     \
      " $3::bytea,"                                                                            \
      " $4::bigint, $5::int, $6::boolean)")                                                    \
    X(Q_EVENTS_LIST, /* after $1, $2 rows */                                                 \
      "SELECT e.id, e.event_id, e.type, e.device_id, e.created_at, e.detail::text, a.name"     \
      " FROM events e LEFT JOIN apps a ON a.id = e.app_id"                                     \
      " WHERE e.id > $1::bigint ORDER BY e.id LIMIT $2::int")                                  \
    X(Q_EVENTS_LIST_APP, /* app $3's, after $1, $2 rows */                                   \
      "SELECT e.id, e.event_id, e.type, e.device_id, e.created_at, e.detail::text, a.name"     \
      " FROM events e JOIN apps a ON a.id = e.app_id"                                          \
      " WHERE e.app_id = $3::bigint AND e.id > $1::bigint ORDER BY e.id LIMIT $2::int")        \
    X(Q_EVENTS_PURGE, /* older than $1 days, at most $2 of them (a batch) */                 \
      "DELETE FROM events WHERE id IN (SELECT id FROM events"                                  \
      " WHERE created_at < now() - make_interval(days => $1::int) ORDER BY id LIMIT $2::int)") \
    X(Q_WEBHOOK_REGISTER, /* $1 webhook ID (hex), $2 scheme://host[:port] */               \
      "INSERT INTO webhooks (webhook_id, shown) VALUES (decode($1, 'hex'), $2)"                \
      " ON CONFLICT (webhook_id) DO UPDATE SET shown = excluded.shown, registered_at = now(),"  \
      " retired_at = NULL")                                                                    \
    X(Q_WEBHOOK_LIVE, "SELECT 1 FROM webhooks WHERE webhook_id = decode($1, 'hex')"            \
      " AND retired_at IS NULL")                                                               \
    X(Q_DELIVERY_LEASE, /* due rows of live webhook $1, at most $2, leased $3 s: the events */ \
      "WITH due AS (SELECT d.event_pk FROM event_deliveries d"                                 \
      "  WHERE d.webhook_id = decode($1, 'hex') AND d.delivered_at IS NULL"                    \
      "  AND d.next_at <= now() AND EXISTS (SELECT 1 FROM webhooks w"                          \
      "   WHERE w.webhook_id = decode($1, 'hex') AND w.retired_at IS NULL)"                    \
      "  ORDER BY d.next_at LIMIT $2::int FOR UPDATE SKIP LOCKED),"                            \
      " lease AS (SELECT gen_random_uuid() AS id),"                                            \
      " l AS (UPDATE event_deliveries d SET next_at = now() + make_interval(secs => $3::int)," \
      "  lease_id = lease.id FROM due, lease"                                                  \
      "  WHERE d.webhook_id = decode($1, 'hex') AND d.event_pk = due.event_pk"                 \
      "  RETURNING d.event_pk, d.lease_id)"                                                    \
      " SELECT e.id, e.event_id, e.type, e.device_id, e.created_at, e.detail::text, a.name,"   \
      " l.lease_id FROM events e JOIN l ON l.event_pk = e.id"                                  \
      " LEFT JOIN apps a ON a.id = e.app_id ORDER BY e.id")                                    \
    X(Q_DELIVERY_DONE, /* webhook $1, event $2, lease $3 */                                  \
      "WITH m AS (UPDATE event_deliveries SET delivered_at = now(), lease_id = NULL,"          \
      "  last_error = NULL WHERE webhook_id = decode($1, 'hex') AND event_pk = $2::bigint"     \
      "  AND lease_id = $3::uuid RETURNING 1)"                                                 \
      " UPDATE webhooks SET last_delivered_at = now() WHERE webhook_id = decode($1, 'hex')"    \
      " AND EXISTS (SELECT 1 FROM m)")                                                         \
    X(Q_DELIVERY_FAILED, /* $4 why, or NULL: not tried (released, due now); else due after \
                            1, 2, 4 ... 300 s, or given up (infinity) at $5 attempts */      \
      "UPDATE event_deliveries SET lease_id = NULL,"                                           \
      " attempts = attempts + CASE WHEN $4::text IS NULL THEN 0 ELSE 1 END,"                   \
      " last_error = coalesce($4, last_error),"                                                \
      " next_at = CASE WHEN $4::text IS NULL THEN now()"                                       \
      "  WHEN attempts + 1 >= $5::int THEN 'infinity'::timestamptz"                            \
      "  ELSE now() + make_interval(secs => least(300, power(2, least(attempts, 9)))::int) END" \
      " WHERE webhook_id = decode($1, 'hex') AND event_pk = $2::bigint AND lease_id = $3::uuid" \
      " RETURNING next_at = 'infinity'::timestamptz")                                          \
    X(Q_WEBHOOK_STATUS, /* counts through event_deliveries_due: undelivered rows only */     \
      "SELECT encode(w.webhook_id, 'hex'), w.shown,"                                           \
      " (SELECT count(*) FROM event_deliveries d WHERE d.webhook_id = w.webhook_id"            \
      "   AND d.delivered_at IS NULL AND d.next_at < 'infinity'),"                             \
      " (SELECT count(*) FROM event_deliveries d WHERE d.webhook_id = w.webhook_id"            \
      "   AND d.delivered_at IS NULL AND d.next_at = 'infinity'),"                             \
      " coalesce((SELECT max(d.attempts) FROM event_deliveries d"                              \
      "   WHERE d.webhook_id = w.webhook_id AND d.delivered_at IS NULL), 0),"                  \
      " (SELECT d.last_error FROM event_deliveries d WHERE d.webhook_id = w.webhook_id"        \
      "   AND d.delivered_at IS NULL AND d.last_error IS NOT NULL" /* latest, given up last */ \
      "   ORDER BY d.next_at = 'infinity', d.next_at DESC LIMIT 1),"                           \
      " w.last_delivered_at, w.registered_at"                                                  \
      " FROM webhooks w WHERE w.retired_at IS NULL ORDER BY w.shown, w.webhook_id")            \
    X(Q_EVENTS_LAST, "SELECT coalesce(max(id), 0) FROM events")                               \
    X(Q_WEBHOOK_REPLAY, /* the kept events after $1 up to $3, at most $2, to every live      \
                           webhook, again (leased rows left to their holder): deliveries,   \
                           webhooks, events, the last event's id */                         \
      "WITH ev AS (SELECT id FROM events WHERE id > $1::bigint AND id <= $3::bigint"           \
      "  ORDER BY id LIMIT $2::int FOR KEY SHARE),"                                            \
      " w AS (SELECT webhook_id FROM webhooks WHERE retired_at IS NULL FOR KEY SHARE),"        \
      " r AS (INSERT INTO event_deliveries (event_pk, webhook_id)"                             \
      "  SELECT ev.id, w.webhook_id FROM ev CROSS JOIN w"                                      \
      "  ON CONFLICT (webhook_id, event_pk) DO UPDATE SET delivered_at = NULL, attempts = 0,"  \
      "  next_at = now(), lease_id = NULL, last_error = NULL"                                  \
      "  WHERE event_deliveries.lease_id IS NULL OR event_deliveries.next_at <= now()"         \
      "  RETURNING 1)"                                                                         \
      " SELECT (SELECT count(*) FROM r), (SELECT count(*) FROM w), (SELECT count(*) FROM ev),"  \
      " (SELECT coalesce(max(id), $1::bigint) FROM ev)")                                       \
    X(Q_WEBHOOK_RETIRE, /* $1 webhook ID (hex): what it showed, its undelivered rows */      \
      "UPDATE webhooks w SET retired_at = now() WHERE webhook_id = decode($1, 'hex')"          \
      " AND retired_at IS NULL RETURNING w.shown,"                                             \
      " (SELECT count(*) FROM event_deliveries d WHERE d.webhook_id = w.webhook_id"            \
      "  AND d.delivered_at IS NULL)")                                                         \
    X(Q_WEBHOOKS_RETIRED_PURGE, /* at most $1 deliveries of each retired webhook, found     \
                                   through the primary key */                                \
      "DELETE FROM event_deliveries d WHERE (d.webhook_id, d.event_pk) IN"                     \
      " (SELECT w.webhook_id, x.event_pk FROM webhooks w, LATERAL (SELECT event_pk"            \
      "   FROM event_deliveries d2 WHERE d2.webhook_id = w.webhook_id ORDER BY event_pk"       \
      "   LIMIT $1::int) x WHERE w.retired_at IS NOT NULL)")                                   \
    X(Q_WEBHOOKS_RETIRED_DROP,                                                                 \
      "DELETE FROM webhooks w WHERE retired_at IS NOT NULL AND NOT EXISTS"                     \
      " (SELECT 1 FROM event_deliveries d WHERE d.webhook_id = w.webhook_id)")                 \
    X(Q_QKD_SAE, "SELECT id, sae_id, state, service_until <= now(), qkms_rfc3339(service_until)" \
      " FROM devices WHERE device_id = $1")                                                    \
    X(Q_QKD_SET_SAE, /* $1 device, $2 SAE ID or NULL: the old one */                          \
      "UPDATE devices d SET sae_id = $2, updated_at = now() FROM devices o"                     \
      " WHERE d.device_id = $1 AND o.id = d.id RETURNING o.sae_id, d.state, d.id")              \
    X(Q_QKD_ENC,                                                                               \
      "SELECT outcome, detail, expires FROM qkms_qkd_enc($1::bigint, $2::text[], $3::uuid[],"  \
      " $4::bytea[], $5::int, $6::text[], $7::int, $8::int)")                                   \
    X(Q_QKD_DEC,                                                                               \
      "SELECT outcome, detail, out_key_id, out_wrapped, out_size, out_master_version"          \
      " FROM qkms_qkd_dec($1::bigint, $2, $3::uuid[])")                                        \
    X(Q_QKD_STATUS, /* the slave (no row: unknown), paired?, the keys waiting for it, */      \
                    /* does the pair's policy allow key source c? */                              \
      "SELECT sl.id, CASE WHEN qkms_device_standing(sl) IS NULL THEN 'active' ELSE 'inactive' END," \
      " p.id IS NOT NULL,"                                                                      \
      " (SELECT count(*) FROM qkd_key_slaves ks JOIN qkd_keys k ON k.id = ks.key_pk"            \
      "  WHERE k.master_pk = m.id AND ks.slave_pk = sl.id AND ks.fetched_at IS NULL"             \
      "  AND k.expires_at > now()),"                                                            \
      " coalesce('c' = ANY (p.key_sources), false)"                                              \
      " FROM devices sl CROSS JOIN devices m CROSS JOIN LATERAL qkms_policy_for(m, sl) p"        \
      " WHERE sl.sae_id = $2 AND m.id = $1::bigint")                                            \
    X(Q_QKD_REAP, "SELECT qkms_qkd_reap($1::int)")                                             \
    X(Q_QKD_DESTROY_FOR_DEVICE, /* $1 device pk, $2 actor, $3 reason: its keys, either side */ \
      "SELECT count(*) FROM (SELECT qkms_qkd_destroy(k.id, $3, $2)"                             \
      " FROM qkd_keys k"                                                                         \
      " WHERE k.master_pk = $1::bigint OR EXISTS (SELECT 1 FROM qkd_key_slaves ks"              \
      "  WHERE ks.key_pk = k.id AND ks.slave_pk = $1::bigint)) AS gone")                        \
    X(Q_QKD_PAIRS, /* keys waiting, by master and slave */                                    \
      "SELECT k.master_sae, ks.slave_sae, count(*), min(k.expires_at)"                          \
      " FROM qkd_keys k JOIN qkd_key_slaves ks ON ks.key_pk = k.id"                              \
      " WHERE ks.fetched_at IS NULL AND k.expires_at > now()"                                    \
      " GROUP BY 1, 2 ORDER BY 1, 2 LIMIT 10000")                                                \
    X(Q_QKD_KEYS_LIST,                                                                          \
      "SELECT k.key_id, k.master_sae, k.size_bits, k.policy, k.created_at, k.expires_at,"       \
      " (SELECT json_agg(json_build_object('sae_id', ks.slave_sae, 'fetched_at',"               \
      "   to_char(ks.fetched_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'))"          \
      "   ORDER BY ks.slave_sae) FROM qkd_key_slaves ks WHERE ks.key_pk = k.id)"                \
      " FROM qkd_keys k WHERE k.expires_at > now()"                                              \
      " AND ($1::text IS NULL OR k.master_sae = $1)"                                             \
      " AND ($2::text IS NULL OR EXISTS (SELECT 1 FROM qkd_key_slaves ks"                        \
      "   WHERE ks.key_pk = k.id AND ks.slave_sae = $2))"                                        \
      " ORDER BY k.id DESC LIMIT $3::int")                                                       \
    X(Q_V2_DEVICE_CERTS, /* a device, its active certificates (newest first) and the one */   \
      /* of SHA-256 $2 whatever its state (protocol v2) */                                     \
      "SELECT d.id, d.state, encode(c.sha256, 'hex'), encode(c.der, 'hex'), c.state,"           \
      " c.not_before <= now() AND c.not_after > now(), c.kind"                                  \
      " FROM devices d LEFT JOIN certificates c ON c.device_pk = d.id"                          \
      "  AND (c.state = 'active' OR c.sha256 = $2::bytea)"                                     \
      " WHERE d.device_id = $1 ORDER BY c.created_at DESC NULLS LAST LIMIT 16")                 \
    X(Q_V2_REFUSED,                                                                            \
      "SELECT qkms_v2_refused($1, $2::bytea, $3::bigint, $4::int, $5, $6::jsonb, $7::boolean)") \
    X(Q_STREAM_KEY, /* a stream's key by seq (schema/028) */                                  \
      "SELECT outcome, out_stream, out_key_id, out_key_bits, encode(out_wrapped, 'hex'),"      \
      " out_expires, out_low, out_window, out_created, out_detail"                             \
      " FROM qkms_stream_key($1::bigint, $2::int, $3::bytea, $4::bigint, $5::int, $6::uuid,"   \
      " $7, $8::bigint, $9::uuid, decode($10, 'hex'), $11::int, $12, $13::int, $14::uuid)")    \
    X(Q_STREAM_END,                                                                            \
      "SELECT qkms_stream_end($1::bigint, $2::int, $3::bytea, $4::bigint, $5::int, $6::uuid)") \
    X(Q_STREAM_REAP, "SELECT qkms_stream_reap($1::int, $2::int)")                             \
    X(Q_STREAMS_LIST, /* the operator's view: live streams, newest first */                   \
      "SELECT s.stream_id, s.lo_id, s.hi_id, o.device_id, s.policy, s.key_bits,"               \
      " s.stream_window, s.low,"                                                               \
      " (SELECT count(*) FROM stream_keys k WHERE k.stream_pk = s.id AND k.consumed_at IS NULL)," \
      " s.created_at, s.last_used_at, s.expires_at, s.idle_timeout_s"                         \
      " FROM streams s LEFT JOIN devices o ON o.id = s.opened_by"                              \
      " WHERE ($1::text IS NULL OR s.lo_id = $1 OR s.hi_id = $1)"                              \
      " AND ($2::uuid IS NULL OR s.stream_id = $2::uuid)"                                      \
      " ORDER BY s.id DESC LIMIT $3::int")                                                     \
    X(Q_STREAM_TOMBSTONE,                                                                      \
      "SELECT stream_id, lo_id, hi_id, created_at, ended_at, keys_consumed, reason"            \
      " FROM stream_tombstones WHERE stream_id = $1::uuid")                                    \
    X(Q_STREAM_END_OPERATOR,                                                                   \
      "SELECT qkms_stream_destroy(id, 'ended_by_operator', $2) FROM streams"                   \
      " WHERE stream_id = $1::uuid")                                                           \
    X(Q_STREAMS_END_FOR_DEVICE, /* a revocation's: in stream ID order */                      \
      "SELECT count(*) FROM (SELECT qkms_stream_destroy(o.id, 'revoked', $2) FROM"              \
      " (SELECT id FROM streams WHERE party_lo = $1::bigint OR party_hi = $1::bigint"          \
      "  ORDER BY stream_id FOR UPDATE) o) AS ended")                                          \
    X(Q_REWRAP_STREAM_KEYS,                                                                    \
      "SELECT k.key_id, s.stream_id, k.key_id, encode(k.wrapped_key, 'hex'), k.master_version" \
      " FROM stream_keys k JOIN streams s ON s.id = k.stream_pk"                               \
      " WHERE k.master_version < $1::int LIMIT $2::int")                                       \
    X(Q_REWRAP_STREAM_KEY_SET,                                                                 \
      "UPDATE stream_keys SET wrapped_key = decode($3, 'hex'), master_version = $4::int"       \
      " WHERE key_id = $1::uuid AND master_version = $2::int")                                 \
    X(Q_SESSION_KEYS_REAP, /* older epochs' keys past their grace (schema/026) */            \
      "SELECT qkms_session_keys_reap($1::int)")                                                \
    X(Q_SESSION_KEY_EXT, /* a key by epoch and direction (schema/026) */                      \
      "SELECT outcome, out_key_id, out_key_bits, encode(out_wrapped, 'hex'), out_expires,"     \
      " out_policy, out_delivery, out_created, encode(out_hash, 'hex'), out_epoch, out_current" \
      " FROM qkms_session_key_ext($1::bigint, $2::int, $3::bytea, $4::bigint, $5::int,"        \
      " $6::bytea, $7, $8::int, $9, $10::uuid, decode($11, 'hex'), $12::int, $13, $14::int,"   \
      " $15::bytea)")                                                                          \
    X(Q_SESSION_REAP,                                                                          \
      "SELECT destroyed, examined FROM qkms_session_reap($1::int, $2::int, $3::int)")           \
    X(Q_SESSIONS_LIST,                                                                         \
      "SELECT s.session_id, s.key_id, s.initiator_id, s.responder_id, s.policy, s.delivery,"   \
      " s.key_bits, s.created_at, s.last_used_at, s.expires_at, s.idle_timeout_s,"             \
      " s.initiator_delivered_at, s.responder_delivered_at, s.provenance,"                     \
      " CASE WHEN s.initiator_delivered_at IS NOT NULL AND s.responder_delivered_at IS NOT NULL" \
      "  THEN 'active' ELSE 'pending' END, s.key_source, s.epoch"                              \
      " FROM sessions s"                                                                       \
      " WHERE ($1::text IS NULL OR s.initiator_id = $1 OR s.responder_id = $1)"                \
      " AND ($2::text IS NULL OR s.session_id = $2)"                                           \
      " AND ($4::text IS NULL OR ($4 = 'active') = (s.initiator_delivered_at IS NOT NULL"      \
      "  AND s.responder_delivered_at IS NOT NULL))"                                           \
      " ORDER BY s.id DESC LIMIT $3::int")                                                     \
    X(Q_TOMBSTONES_LIST,                                                                       \
      "SELECT encode(session_hash, 'hex'), key_id, initiator, responder, created_at, ended_at, reason" \
      " FROM session_tombstones WHERE ($1::text IS NULL OR initiator = $1 OR responder = $1)"  \
      " AND ($2::bytea IS NULL OR session_hash = $2 OR session_hash = $4::bytea)"              \
      " ORDER BY ended_at DESC LIMIT $3::int")                                                 \
    X(Q_SESSION_END_OPERATOR,                                                                  \
      "SELECT qkms_session_destroy(id, 'ended_by_operator', $2) FROM sessions"                 \
      " WHERE session_hash = $1::bytea OR session_hash = $3::bytea")                           \
    X(Q_SESSIONS_END_FOR_DEVICE,                                                               \
      "SELECT count(*) FROM (SELECT qkms_session_destroy(o.id, 'revoked', $2) FROM"             \
      " (SELECT id FROM sessions WHERE initiator = $1::bigint OR responder = $1::bigint"       \
      "  ORDER BY session_hash FOR UPDATE) o) AS ended") /* locked in hash order */            \
    X(Q_SESSIONS_OPEN_COUNT, "SELECT count(*) FROM sessions")                                  \
    X(Q_POLICY_LIST,                                                                           \
      "SELECT name, type_a, type_b, group_a, group_b, key_bits, idle_timeout_s, max_lifetime_s," \
      " delivery, created_at, created_by, array_to_json(key_sources), family, max_epochs,"     \
      " directions, epoch_grace_s, rekey_after_s, rekey_after_deliveries, stream_window"       \
      " FROM pairing_policies ORDER BY name")                                                  \
    X(Q_POLICY_INSERT,                                                                         \
      "INSERT INTO pairing_policies (name, type_a, type_b, group_a, group_b, key_bits,"        \
      " idle_timeout_s, max_lifetime_s, delivery, created_by, key_sources, family,"            \
      " max_epochs, directions, epoch_grace_s, rekey_after_s, rekey_after_deliveries,"         \
      " stream_window)"                                                                        \
      " VALUES ($1, $2, $3, $4, $5, $6::int, $7::int, $8::int, $9, $10, $11::text[],"          \
      " $12::boolean, $13::int, $14::boolean, $15::int, $16::int, $17::int, $18::int)")       \
    X(Q_POLICY_DELETE, "DELETE FROM pairing_policies WHERE name = $1 RETURNING name")          \
    X(Q_MASTER_MAX, "SELECT coalesce(max(version), 0) FROM master_keys")                       \
    X(Q_MASTER_RETIRE_ACTIVE,                                                                  \
      "UPDATE master_keys SET state = 'retired', retired_at = now() WHERE state = 'active'"    \
      " RETURNING version")                                                                    \
    X(Q_MASTER_STATUS,                                                                         \
      "SELECT m.version, m.label, m.state, m.created_at, m.retired_at,"                        \
      " (SELECT count(*) FROM device_keys k WHERE k.master_version = m.version),"              \
      " (SELECT count(*) FROM sessions s WHERE s.master_version = m.version)"                  \
      "  + (SELECT count(*) FROM session_keys k WHERE k.master_version = m.version)"           \
      "  + (SELECT count(*) FROM stream_keys k WHERE k.master_version = m.version),"           \
      " (SELECT count(*) FROM qkd_keys q WHERE q.master_version = m.version)"                  \
      "  + (SELECT count(*) FROM firmware_group_keys g WHERE g.master_version = m.version)"    \
      " FROM master_keys m ORDER BY m.version")                                                \
    X(Q_REWRAP_QKD,                                                                            \
      "SELECT id, key_id, encode(wrapped_key, 'hex'), master_version FROM qkd_keys"             \
      " WHERE master_version < $1::int LIMIT $2::int")                                          \
    X(Q_REWRAP_QKD_SET,                                                                        \
      "UPDATE qkd_keys SET wrapped_key = decode($3, 'hex'), master_version = $4::int"           \
      " WHERE id = $1::bigint AND master_version = $2::int")                                   \
    X(Q_REWRAP_DEVKEYS,                                                                        \
      "SELECT d.device_id, k.device_pk, k.key_index, k.algorithm, encode(k.wrapped, 'hex'),"   \
      " k.master_version FROM device_keys k JOIN devices d ON d.id = k.device_pk"              \
      " WHERE k.master_version < $1::int AND k.wrapped IS NOT NULL LIMIT $2::int")             \
    X(Q_REWRAP_DEVKEY_SET,                                                                     \
      "UPDATE device_keys SET wrapped = decode($4, 'hex'), master_version = $5::int"           \
      " WHERE device_pk = $1::bigint AND key_index = $2::int AND master_version = $3::int")    \
    X(Q_REWRAP_SESSIONS,                                                                       \
      "SELECT id, encode(session_hash, 'hex'), key_id, encode(wrapped_key, 'hex'),"            \
      " master_version FROM sessions WHERE master_version < $1::int LIMIT $2::int")            \
    X(Q_REWRAP_SESSION_KEYS, /* a session's other keys (schema/026), as its own */           \
      "SELECT k.key_id, encode(s.session_hash, 'hex'), k.key_id, encode(k.wrapped_key, 'hex')," \
      " k.master_version FROM session_keys k JOIN sessions s ON s.id = k.session_pk"           \
      " WHERE k.master_version < $1::int LIMIT $2::int")                                       \
    X(Q_REWRAP_SESSION_KEY_SET,                                                                \
      "UPDATE session_keys SET wrapped_key = decode($3, 'hex'), master_version = $4::int"      \
      " WHERE key_id = $1::uuid AND master_version = $2::int")                                 \
    X(Q_REWRAP_SESSION_SET,                                                                    \
      "UPDATE sessions SET wrapped_key = decode($3, 'hex'), master_version = $4::int"          \
      " WHERE id = $1::bigint AND master_version = $2::int")                                   \
    X(Q_MASTER_DESTROYABLE,                                                                    \
      "SELECT version, label FROM master_keys m WHERE state = 'retired'"                       \
      " AND retired_at < now() - make_interval(secs => $1::int)"                               \
      " AND NOT EXISTS (SELECT 1 FROM device_keys k WHERE k.master_version = m.version)"       \
      " AND NOT EXISTS (SELECT 1 FROM sessions s WHERE s.master_version = m.version)"          \
      " AND NOT EXISTS (SELECT 1 FROM session_keys k WHERE k.master_version = m.version)"      \
      " AND NOT EXISTS (SELECT 1 FROM stream_keys k WHERE k.master_version = m.version)"       \
      " AND NOT EXISTS (SELECT 1 FROM qkd_keys q WHERE q.master_version = m.version)"          \
      " AND NOT EXISTS (SELECT 1 FROM firmware_group_keys g WHERE g.master_version = m.version)" \
      " AND NOT EXISTS (SELECT 1 FROM session_hash_key h WHERE h.master_version = m.version)"  \
      " ORDER BY version LIMIT 1 FOR UPDATE OF m")                                             \
    X(Q_SIDKEY_GET, "SELECT encode(wrapped, 'hex'), master_version FROM session_hash_key")    \
    X(Q_SIDKEY_INSERT,                                                                         \
      "INSERT INTO session_hash_key (wrapped, master_version) VALUES (decode($1, 'hex'),"       \
      " $2::int) ON CONFLICT DO NOTHING")                                                      \
    X(Q_SIDKEY_REWRAP_SET,                                                                     \
      "UPDATE session_hash_key SET wrapped = decode($1, 'hex'), master_version = $2::int"      \
      " WHERE master_version = $3::int")                                                       \
    X(Q_MASTER_MARK_DESTROYED,                                                                 \
      "UPDATE master_keys SET state = 'destroyed' WHERE version = $1::int AND state = 'retired'" \
      " RETURNING version")

#define QKMS_Q_ENUM(id, sql) id,
typedef enum { QKMS_QUERIES(QKMS_Q_ENUM) Q__COUNT } query_id;
#undef QKMS_Q_ENUM

extern const db_stmt_def queries[Q__COUNT];

/*
 * Statements of the background and admin paths (the audit chain's sealer
 * and verifier, the audit listing, master key locks and wrap counts), run
 * unprepared with qt_exec: each runs seldom, and an unnamed statement is
 * planned for its actual parameters, so it is not worth preparing on every
 * pooled connection. Same rules: parameters only, never SQL from input.
 * Policy numbers (windows, page sizes) are parameters: the service owns
 * them. QT_* indexes text_queries.
 */
/* The master key lock (session level), taken by start-up, rotation and
 * destruction; the audit sealer's transaction-level lock has the same key,
 * so a sealing pass and a master key change never overlap. */
#define QKMS_MASTER_LOCK_KEY "7164803902"
/* kmsd instances starting together must not both mint a bootstrap token. */
#define QKMS_BOOTSTRAP_LOCK_KEY "7164803903"
/* kmsd instances starting together must not both create the platform CA. */
#define QKMS_CA_LOCK_KEY "7164803905"
#define QKMS_PK_LOCK_KEY "7164803906"

/* An audit row (service/audit_rows.h decodes these): id, at_us, actor,
 * event, device_id, detail. */
#define QKMS_AUDIT_ROW_COLS                                                                      \
    "a.id, (extract(epoch FROM a.at) * 1000000)::bigint, a.actor, a.event, a.device_id,"        \
    " a.detail::text"
/* Then (verification) prev_hash hex, hash hex, sealed_at IS NOT NULL, and
 * in cols 9-11 the values the hash covers as stored when sealed, and
 * whether they still equal the row's columns, compared by value (epoch,
 * jsonb equality), not by rendering. Rows sealed by a kmsd before
 * migration 007 have NULLs there and are hashed over the columns' current
 * rendering. */
#define QKMS_AUDIT_CHAIN_COLS                                                                    \
    ", encode(a.prev_hash, 'hex'), encode(a.hash, 'hex'), a.sealed_at IS NOT NULL"              \
    ", a.hashed_at_us, a.hashed_detail,"                                                         \
    " CASE WHEN a.hashed_at_us IS NULL AND a.hashed_detail IS NULL THEN true"                    \
    " WHEN a.hashed_at_us IS NULL OR a.hashed_detail IS NULL THEN false"                         \
    " WHEN a.hashed_at_us <> (extract(epoch FROM a.at) * 1000000)::bigint THEN false"            \
    " WHEN a.hashed_detail = a.detail::text THEN true"                                           \
    " ELSE coalesce(qkms_audit_detail_same(a.hashed_detail, a.detail), false) END"

#define QKMS_TEXT_QUERIES(X)                                                                     \
    X(QT_UTF8_LOCAL, "SET LOCAL client_encoding = 'UTF8'")                                      \
    X(QT_BOOTSTRAP_LOCK, "SELECT pg_advisory_lock(" QKMS_BOOTSTRAP_LOCK_KEY ")")                 \
    X(QT_BOOTSTRAP_UNLOCK, "SELECT pg_advisory_unlock(" QKMS_BOOTSTRAP_LOCK_KEY ")")             \
    X(QT_MASTER_LOCK, "SELECT pg_advisory_lock(" QKMS_MASTER_LOCK_KEY ")")                       \
    X(QT_MASTER_UNLOCK, "SELECT pg_advisory_unlock(" QKMS_MASTER_LOCK_KEY ")")                   \
    X(QT_MASTER_WRAPS_ADD,                                                                      \
      "UPDATE master_keys SET wrap_count = wrap_count + $2::bigint WHERE version = $1::int")    \
    X(QT_MASTER_WRAP_CLAIM,                                                                     \
      "UPDATE master_keys SET wrap_rotation_claimed_at = now()"                                 \
      " WHERE version = $1::int AND state = 'active' AND wrap_count >= $2::bigint"              \
      " AND (wrap_rotation_claimed_at IS NULL OR wrap_rotation_claimed_at"                      \
      " < now() - make_interval(secs => $3::int))"                                              \
      " RETURNING version")                                                                     \
    X(QT_MASTER_ACTIVE_WRAPS, "SELECT version, wrap_count FROM master_keys WHERE state = 'active'") \
    /* the sealer ($1 interval_s, $2 gap grace) */                                              \
    /* ids above the sealer's position and the age of the first of them: two   \
       index probes whatever the backlog; no row without a chain state */        \
    X(QT_AUDIT_SEAL_LAG,                                                                        \
      "SELECT greatest(coalesce((SELECT max(id) FROM audit_log), 0) - s.main_id, 0),"           \
      " coalesce(extract(epoch FROM now() - (SELECT a.at FROM audit_log a"                      \
      "  WHERE a.id > s.main_id ORDER BY a.id LIMIT 1)), 0)::bigint FROM audit_chain_state s")  \
    /* the newest verification (any instance's): its age and verdict */       \
    X(QT_AUDIT_LAST_VERIFIED,                                                                   \
      "SELECT extract(epoch FROM now() - at)::bigint, coalesce((detail->>'ok')::boolean, false)" \
      " FROM audit_log WHERE event = 'audit.verified' ORDER BY id DESC LIMIT 1")                \
    X(QT_AUDIT_SEAL_TRY_LOCK, "SELECT pg_try_advisory_xact_lock(" QKMS_MASTER_LOCK_KEY ")")      \
    X(QT_AUDIT_SEAL_STATE,                                                                      \
      "SELECT main_id, head_id, encode(head_hash, 'hex'), chain_length, gap_seen_upto,"         \
      " gap_seen_at <= now() - make_interval(secs => $2::int),"                                 \
      " checkpoint_version,"                                                                    \
      " checkpoint_at IS NULL OR checkpoint_at <= now() - make_interval(secs => $1::int)"       \
      " FROM audit_chain_state FOR UPDATE")                                                     \
    X(QT_AUDIT_LATE_ROWS, /* $1 main_id, $2 late window, $3 limit */                            \
      "SELECT " QKMS_AUDIT_ROW_COLS " FROM audit_gaps g JOIN audit_log a"                       \
      " ON a.id BETWEEN g.lo AND g.hi"                                                          \
      " WHERE g.skipped_at > now() - make_interval(secs => $2::int)"                            \
      " AND a.hash IS NULL AND a.id <= $1 ORDER BY a.id LIMIT $3::int")                         \
    X(QT_AUDIT_ROWS_AFTER, /* $1 main_id, $2 limit */                                           \
      "SELECT " QKMS_AUDIT_ROW_COLS ", a.hash IS NOT NULL FROM audit_log a WHERE a.id > $1"     \
      " ORDER BY a.id LIMIT $2::int")                                                           \
    X(QT_AUDIT_SEAL_ROWS,                                                                       \
      "UPDATE audit_log a SET prev_hash = decode(u.p, 'hex'), hash = decode(u.h, 'hex'),"       \
      " hashed_at_us = u.t, hashed_detail = u.d, sealed_at = now()"                             \
      " FROM unnest($1::bigint[], $2::text[], $3::text[], $4::bigint[], $5::text[])"            \
      " AS u(id, p, h, t, d) WHERE a.id = u.id")                                                \
    X(QT_AUDIT_LATE_INSERT,                                                                     \
      "INSERT INTO audit_late (id, chain_prev)"                                                 \
      " SELECT * FROM unnest($1::bigint[], $2::bigint[])")                                      \
    X(QT_AUDIT_GAPS_INSERT,                                                                     \
      "INSERT INTO audit_gaps (lo, hi) SELECT * FROM unnest($1::bigint[], $2::bigint[])")       \
    /* clock_timestamp(), not now(): read after this statement's snapshot */                    \
    X(QT_AUDIT_WATERMARK, "SELECT coalesce(max(id), 0), clock_timestamp() FROM audit_log")      \
    X(QT_AUDIT_CHECKPOINT_NEXT,                                                                 \
      "SELECT nextval(pg_get_serial_sequence('audit_checkpoints', 'id')), now(),"               \
      " (extract(epoch FROM now()) * 1000000)::bigint")                                         \
    X(QT_AUDIT_CHECKPOINT_INSERT,                                                               \
      "INSERT INTO audit_checkpoints (id, last_audit_id, chain_length, head_hash,"              \
      " master_version, iv, mac, at) VALUES ($1, $2, $3, decode($4, 'hex'), $5,"                \
      " decode($6, 'hex'), decode($7, 'hex'), $8::timestamptz)")                                \
    X(QT_AUDIT_STATE_UPDATE,                                                                    \
      "UPDATE audit_chain_state SET main_id = $1, head_id = $2, head_hash = decode($3, 'hex'),"  \
      " chain_length = $4, gap_seen_upto = $5,"                                                 \
      " gap_seen_at = coalesce($6::timestamptz, gap_seen_at),"                                  \
      " checkpoint_version = $7, updated_at = now(),"                                           \
      " checkpoint_at = CASE WHEN $8::boolean THEN now() ELSE checkpoint_at END")               \
    /* the verifier: one snapshot for the whole walk */                                         \
    X(QT_AUDIT_VERIFY_BEGIN, "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")                 \
    X(QT_AUDIT_MAIN_ID, "SELECT main_id FROM audit_chain_state")                                \
    X(QT_AUDIT_MAX_ID, /* how far the walk goes, for its progress */                            \
      "SELECT coalesce(max(id), 0) FROM audit_log")                                             \
    X(QT_AUDIT_LATE_LIST, "SELECT id, chain_prev FROM audit_late ORDER BY id")                  \
    X(QT_AUDIT_VERIFY_ROWS, /* $1 after, $2 limit */                                            \
      "SELECT " QKMS_AUDIT_ROW_COLS QKMS_AUDIT_CHAIN_COLS " FROM audit_log a WHERE a.id > $1"   \
      " ORDER BY a.id LIMIT $2::int")                                                           \
    X(QT_AUDIT_HASH_ELSEWHERE,                                                                  \
      "SELECT id FROM audit_log WHERE hash = decode($1, 'hex') AND id <> $2 LIMIT 1")           \
    X(QT_AUDIT_GAPS_BETWEEN,                                                                    \
      "SELECT lo, hi FROM audit_gaps WHERE hi >= $1 AND lo <= $2 ORDER BY lo")                  \
    X(QT_AUDIT_IN_RECENT_GAP, /* $1 id, $2 late window */                                       \
      "SELECT 1 FROM (SELECT hi, skipped_at FROM audit_gaps WHERE lo <= $1 ORDER BY lo DESC"    \
      " LIMIT 1) g WHERE g.hi >= $1"                                                            \
      " AND g.skipped_at > now() - make_interval(secs => $2::int)")                             \
    X(QT_AUDIT_CHECKPOINTS_AFTER, /* $1 after, $2 limit */                                      \
      "SELECT id, last_audit_id, chain_length, encode(head_hash, 'hex'), master_version,"       \
      " encode(iv, 'hex'), encode(mac, 'hex'), (extract(epoch FROM at) * 1000000)::bigint"      \
      " FROM audit_checkpoints WHERE id > $1 ORDER BY id LIMIT $2::int")                        \
    X(QT_AUDIT_GAPS_MISSING, /* $1 how many to list */                                          \
      "WITH g AS (SELECT lo, hi, (extract(epoch FROM skipped_at) * 1000000)::bigint"            \
      " AS at_us, (hi - lo + 1) - (SELECT count(*) FROM audit_log a"                            \
      " WHERE a.id BETWEEN audit_gaps.lo AND audit_gaps.hi) AS missing"                         \
      " FROM audit_gaps)"                                                                       \
      " SELECT lo, hi, missing, at_us, count(*) OVER (), sum(missing) OVER ()"                  \
      " FROM g WHERE missing > 0 ORDER BY lo DESC LIMIT $1::int")                               \
    /* the admin listing and export ($1 after, $2 since, $3 device, $4 event,                   \
     * $5 event is a prefix, $6 limit) */                                                       \
    X(QT_AUDIT_LIST,                                                                            \
      "SELECT a.id, (extract(epoch FROM a.at) * 1000000)::bigint, a.actor, a.event,"            \
      " a.device_id, a.detail::text, encode(a.prev_hash, 'hex'), encode(a.hash, 'hex'),"        \
      " (extract(epoch FROM a.sealed_at) * 1000000)::bigint, a.hashed_at_us, a.hashed_detail"   \
      " FROM audit_log a WHERE a.id > $1::bigint"                                               \
      " AND ($2::timestamptz IS NULL OR a.at >= $2::timestamptz)"                               \
      " AND ($3::text IS NULL OR a.device_id = $3::text)"                                       \
      " AND ($4::text IS NULL OR a.event = $4::text"                                            \
      "      OR ($5::boolean AND left(a.event, length($4::text)) = $4::text))"                  \
      " ORDER BY a.id LIMIT $6::int")                                                           \
    /* the platform CA and device certificates (service/ca.c) */                                \
    X(QT_PK_LOCK, "SELECT pg_advisory_lock(" QKMS_PK_LOCK_KEY ")")                               \
    X(QT_PK_UNLOCK, "SELECT pg_advisory_unlock(" QKMS_PK_LOCK_KEY ")")                           \
    X(QT_PK_LIST, /* ordered by version, 'agree' before 'sign' */                              \
      "SELECT version, purpose, label, state, encode(certificate, 'hex'),"                      \
      " floor(extract(epoch FROM overlap_until))::bigint FROM platform_keys"                    \
      " ORDER BY version, purpose")                                                             \
    X(QT_PK_INSERT, /* $1 version $2 purpose $3 label $4 cert hex $5 sha256 hex $6 not_after */ \
      "INSERT INTO platform_keys (version, purpose, label, certificate, sha256, not_after)"      \
      " VALUES ($1::int, $2, $3, decode($4, 'hex'), decode($5, 'hex'), to_timestamp($6::bigint))") \
    X(QT_PK_RETIRE, /* $1 overlap days */                                                       \
      "UPDATE platform_keys SET state = 'retired', retired_at = now(),"                         \
      " overlap_until = now() + make_interval(days => $1::int) WHERE state = 'active'")        \
    X(QT_PK_DESTROYED, /* one row per key, a version's two together */                        \
      "SELECT version, label FROM platform_keys WHERE state = 'destroyed'"                      \
      " ORDER BY version, purpose")                                                             \
    X(QT_PK_DUE, /* versions whose overlap ended: one row per key */                          \
      "UPDATE platform_keys SET state = 'destroyed'"                                            \
      " WHERE state = 'retired' AND overlap_until <= now() RETURNING version, purpose")        \
    X(QT_CA_LOCK, "SELECT pg_advisory_lock(" QKMS_CA_LOCK_KEY ")")                               \
    X(QT_CA_UNLOCK, "SELECT pg_advisory_unlock(" QKMS_CA_LOCK_KEY ")")                           \
    X(QT_CA_LIST, /* the versions that have a certificate (not a pending one) */               \
      "SELECT version, label, state, encode(certificate, 'hex'), issuers FROM ca_keys"          \
      " WHERE state <> 'pending' ORDER BY (state = 'active') DESC, version DESC")               \
    X(QT_CA_PENDING, "SELECT version, label, csr FROM ca_keys WHERE state = 'pending'")         \
    X(QT_CA_MAX_VERSION, "SELECT coalesce(max(version), 0) FROM ca_keys")                       \
    X(QT_CA_INSERT_PENDING, /* $1 version, $2 label, $3 csr PEM */                              \
      "INSERT INTO ca_keys (version, label, state, csr) VALUES ($1::int, $2, 'pending', $3)")   \
    X(QT_CA_ACTIVATE, /* $1 version, $2 certificate hex, $3 not_after, $4 issuers PEM */      \
      "UPDATE ca_keys SET state = 'active', certificate = decode($2, 'hex'),"                   \
      " not_after = to_timestamp($3::bigint), issuers = $4, csr = NULL"                         \
      " WHERE version = $1::int AND state = 'pending'")                                         \
    X(QT_CA_INSERT,                                                                             \
      "INSERT INTO ca_keys (version, label, certificate, not_after)"                            \
      " VALUES ($1::int, $2, decode($3, 'hex'), to_timestamp($4::bigint))")                     \
    X(QT_CA_ROW_LOCK, "SELECT version FROM ca_keys WHERE version = $1::int FOR UPDATE")         \
    X(QT_CA_RETIRE,                                                                             \
      "UPDATE ca_keys SET state = 'retired', retired_at = now() WHERE state = 'active'")        \
    X(QT_BEGIN, "BEGIN")                                                                        \
    X(QT_COMMIT, "COMMIT")                                                                      \
    X(QT_ROLLBACK, "ROLLBACK")                                                                  \
    X(QT_CRL_NEWEST, /* $1 version, $2 interval_s: number, and whether it is current: */       \
      /* recent enough, and no revocation since it was made */                                   \
      "SELECT crl_number, this_update > now() - make_interval(secs => $2::int)"                 \
      " AND NOT EXISTS (SELECT 1 FROM certificates c WHERE c.ca_version = $1::int"              \
      " AND c.state = 'revoked' AND c.revoked_at >= l.this_update)"                             \
      " AND NOT EXISTS (SELECT 1 FROM firmware_keys k WHERE k.ca_version = $1::int"             \
      " AND k.state = 'revoked' AND k.revoked_at >= l.this_update)"                             \
      " FROM ca_crls l WHERE ca_version = $1::int ORDER BY crl_number DESC LIMIT 1")            \
    X(QT_CRL_REVOKED,                                                                           \
      "SELECT serial, extract(epoch FROM revoked_at)::bigint, revoke_reason FROM certificates"  \
      " WHERE ca_version = $1::int AND state = 'revoked' AND not_after > now()"                 \
      " UNION ALL SELECT serial, extract(epoch FROM revoked_at)::bigint, revoke_reason"         \
      " FROM firmware_keys WHERE ca_version = $1::int AND state = 'revoked'"                    \
      " AND not_after > now() ORDER BY 1") /* the platform's signing keys too (schema/039) */  \
    X(QT_CRL_INSERT,                                                                            \
      "INSERT INTO ca_crls (ca_version, crl_number, this_update, next_update, der)"            \
      " VALUES ($1::int, $2::bigint, to_timestamp($3::bigint), to_timestamp($4::bigint),"       \
      " decode($5, 'hex'))")                                                                    \
    X(QT_CRL_PRUNE, "DELETE FROM ca_crls WHERE ca_version = $1::int AND crl_number <= $2::bigint") \
    X(QT_CRL_GET,                                                                               \
      "SELECT encode(der, 'hex') FROM ca_crls WHERE ca_version = $1::int"                       \
      " ORDER BY crl_number DESC LIMIT 1")                                                      \
    X(QT_CERT_DEVICE, /* $1 device_id: the device, locked against a concurrent revoke */        \
      "SELECT id, state FROM devices WHERE device_id = $1 FOR SHARE")                           \
    X(QT_CERT_DEVICE_UNTIL, /* $1 device_id: its state, and its active keys' latest notAfter */ \
      "SELECT d.state, extract(epoch FROM max(k.not_after) FILTER (WHERE k.state = 'active'"    \
      " AND k.not_after > now()))::bigint FROM devices d LEFT JOIN device_keys k"               \
      " ON k.device_pk = d.id WHERE d.device_id = $1 GROUP BY d.state")                         \
    X(QT_CERT_SPKI_LOCK, /* $1 spki hex: writers of one key take turns */                      \
      "SELECT pg_advisory_xact_lock(hashtextextended($1, " QKMS_CA_LOCK_KEY "))")              \
    X(QT_CERT_SPKI_ELSEWHERE, /* $1 spki hex, $2 device_id: who else holds the key */           \
      "(SELECT 'device ''' || device_id || '''' FROM certificates"                              \
      " WHERE spki_sha256 = decode($1, 'hex') AND device_id <> $2 AND state = 'active')"       \
      " UNION ALL (SELECT 'admin token ''' || t.name || '''' FROM token_certificates c"         \
      " JOIN admin_tokens t ON t.id = c.token_id"                                               \
      " WHERE c.spki_sha256 = decode($1, 'hex') AND t.revoked_at IS NULL) LIMIT 1")            \
    X(QT_TCERT_TOKEN, /* $1 token name: the live token, locked against a revoke */              \
      "SELECT id FROM admin_tokens WHERE name = $1 AND revoked_at IS NULL"                      \
      " AND (expires_at IS NULL OR expires_at > now()) FOR SHARE")                              \
    X(QT_TCERT_ELSEWHERE, /* $1 spki hex, $2 token id: who else holds (or held) it */         \
      "(SELECT 'device ''' || device_id || '''' FROM certificates"                              \
      " WHERE spki_sha256 = decode($1, 'hex'))"                                                 \
      " UNION ALL (SELECT 'admin token ''' || t.name || '''' FROM token_certificates c"         \
      " JOIN admin_tokens t ON t.id = c.token_id WHERE c.spki_sha256 = decode($1, 'hex')"      \
      " AND c.token_id <> $2::bigint AND t.revoked_at IS NULL) LIMIT 1")                       \
    X(QT_TCERT_INSERT,                                                                          \
      "INSERT INTO token_certificates (token_id, sha256, spki_sha256, subject, issuer,"         \
      " not_before, not_after, der, created_by) VALUES ($1::bigint, decode($2, 'hex'),"         \
      " decode($3, 'hex'), $4, $5, to_timestamp($6::bigint), to_timestamp($7::bigint),"         \
      " decode($8, 'hex'), $9) ON CONFLICT (sha256) DO NOTHING RETURNING created_at")          \
    X(QT_TCERT_LIST, /* $1 token name: the live token's certificates */                         \
      "SELECT encode(c.sha256, 'hex'), encode(c.spki_sha256, 'hex'), c.subject, c.issuer,"      \
      " c.not_before, c.not_after, c.created_at, c.created_by, encode(c.der, 'hex')"            \
      " FROM token_certificates c JOIN admin_tokens t ON t.id = c.token_id"                     \
      " WHERE t.name = $1 AND t.revoked_at IS NULL ORDER BY c.created_at, c.id")               \
    X(QT_TCERT_DELETE, /* $1 token name, $2 sha256 hex */                                       \
      "DELETE FROM token_certificates c USING admin_tokens t WHERE t.id = c.token_id"           \
      " AND t.name = $1 AND t.revoked_at IS NULL AND c.sha256 = decode($2, 'hex')"              \
      " RETURNING c.subject")                                                                   \
    X(QT_CERT_INSERT,                                                                           \
      "INSERT INTO certificates (serial, device_pk, device_id, kind, ca_version, subject,"      \
      " not_before, not_after, sha256, spki_sha256, der, created_by)"                           \
      " VALUES ($1, $2::bigint, $3, $4, $5::int, $6, to_timestamp($7::bigint),"                 \
      " to_timestamp($8::bigint), decode($9, 'hex'), decode($10, 'hex'), decode($11, 'hex'),"   \
      " $12) RETURNING created_at")                                                             \
    X(QT_CERT_LIST, /* $1 device_id */                                                          \
      "SELECT serial, kind, ca_version, subject, not_before, not_after,"                        \
      " encode(sha256, 'hex'), encode(spki_sha256, 'hex'), state, revoked_at,"                 \
      " revoke_reason, created_at, created_by,"                                                 \
      " encode(der, 'hex') FROM certificates WHERE device_id = $1 ORDER BY created_at, serial") \
    X(QT_CERT_GET, /* $1 device_id, $2 serial: the columns of QT_CERT_LIST */                   \
      "SELECT serial, kind, ca_version, subject, not_before, not_after,"                        \
      " encode(sha256, 'hex'), encode(spki_sha256, 'hex'), state, revoked_at,"                 \
      " revoke_reason, created_at, created_by,"                                                 \
      " encode(der, 'hex') FROM certificates WHERE device_id = $1 AND serial = $2")             \
    X(QT_CERT_LOCK, /* $1 device_id, $2 serial */                                               \
      "SELECT state, ca_version IS NOT NULL FROM certificates"                                  \
      " WHERE device_id = $1 AND serial = $2 FOR UPDATE")                                       \
    X(QT_CERT_REVOKE, /* $1 device_id, $2 serial, $3 reason */                                  \
      "UPDATE certificates SET state = 'revoked', revoked_at = now(), revoke_reason = $3"      \
      " WHERE device_id = $1 AND serial = $2 AND state = 'active'")                             \
    X(QT_CERT_EXPIRY_WARN, /* $1 warn days: at most once a day per certificate */              \
      "UPDATE certificates SET expiry_warned_at = now() WHERE id IN (SELECT id FROM certificates" \
      " WHERE state = 'active' AND not_after > now()"                                           \
      " AND not_after <= now() + make_interval(days => $1::int)"                                \
      " AND (expiry_warned_at IS NULL OR expiry_warned_at < now() - interval '1 day')"          \
      " LIMIT 1000) RETURNING device_id, serial, not_after")                                    \
    X(QT_CERTS_EXPIRING_COUNT,                                                                  \
      "SELECT count(*) FROM certificates WHERE state = 'active' AND not_after > now()"          \
      " AND not_after <= now() + make_interval(days => $1::int)")                               \
    X(QT_CERTS_REVOKE_DEVICE, /* $1 device_pk: the device is revoked */                         \
      "UPDATE certificates SET state = 'revoked', revoked_at = now(),"                          \
      " revoke_reason = 'cessationOfOperation' WHERE device_pk = $1::bigint AND state = 'active'" \
      " RETURNING serial")                                                                     \
    /* the instance registry and staged master key versions (schema/040) */                      \
    /* $1 name, $2 versions, $3 software, $4 started (epoch s, microseconds), $5 ttl. A live  \
       row of another start (same name, other started_at) is left alone: no row returned. */   \
    X(QT_INSTANCE_REPORT,                                                                       \
      "INSERT INTO kmsd_instances (name, versions, software, started_at, seen_at, expires_at)"  \
      " VALUES ($1, $2::int[], $3, to_timestamp($4::double precision), now(),"                  \
      " now() + make_interval(secs => $5::int)) ON CONFLICT (name) DO UPDATE SET"               \
      " versions = EXCLUDED.versions, software = EXCLUDED.software,"                            \
      " started_at = EXCLUDED.started_at, seen_at = now(), expires_at = EXCLUDED.expires_at"    \
      " WHERE kmsd_instances.started_at = EXCLUDED.started_at"                                  \
      " OR kmsd_instances.expires_at <= now() RETURNING name")                                  \
    X(QT_INSTANCE_PURGE, "DELETE FROM kmsd_instances WHERE expires_at < now() - interval '1 day'") \
    X(QT_INSTANCE_LEAVE, /* only this start's row */                                            \
      "DELETE FROM kmsd_instances WHERE name = $1"                                              \
      " AND started_at = to_timestamp($2::double precision)")                                   \
    X(QT_INSTANCE_LIST, /* lacking: staged, active or retired versions it does not hold */     \
      "SELECT i.name, array_to_json(i.versions)::text, i.software, i.started_at, i.seen_at,"    \
      " i.expires_at, i.expires_at > now(), array_to_json(ARRAY(SELECT m.version"               \
      " FROM master_keys m WHERE m.state IN ('staged', 'active', 'retired')"                    \
      " AND NOT m.version = ANY(i.versions) ORDER BY m.version))::text"                         \
      " FROM kmsd_instances i ORDER BY i.name")                                                 \
    X(QT_INSTANCE_OTHERS_LIVE, "SELECT count(*) FROM kmsd_instances"                            \
      " WHERE expires_at > now() AND name <> $1")                                               \
    X(QT_MASTER_STAGED, /* and how long it has waited, in seconds */                           \
      "SELECT version, label, extract(epoch FROM now() - created_at)::bigint FROM master_keys"  \
      " WHERE state = 'staged'")                                                                \
    X(QT_INSTANCES_LIVE, "SELECT count(*) FROM kmsd_instances WHERE expires_at > now()")        \
    X(QT_MASTER_WAITING, /* live instances that do not hold staged version $1 */               \
      "SELECT name FROM kmsd_instances WHERE expires_at > now()"                                \
      " AND NOT $1::int = ANY(versions) ORDER BY name")                                         \
    X(QT_MASTER_INSERT_STAGED,                                                                  \
      "INSERT INTO master_keys (version, label, kcv, state)"                                     \
      " VALUES ($1::int, $2, decode($3, 'hex'), 'staged')") \
    X(QT_MASTER_ACTIVATE, /* staged $1 becomes the active version */                          \
      "UPDATE master_keys SET state = 'active', activated_at = now()"                           \
      " WHERE version = $1::int AND state = 'staged' RETURNING version")                        \
    X(QT_MASTER_DESTROYED,                                                                      \
      "SELECT version FROM master_keys WHERE state = 'destroyed' ORDER BY version")

#define QKMS_QT_ENUM(id, sql) id,
typedef enum { QKMS_TEXT_QUERIES(QKMS_QT_ENUM) QT__COUNT } text_query_id;
#undef QKMS_QT_ENUM

extern const char *const text_queries[QT__COUNT];

/* Run text statement id, unprepared, with text parameters (NULL = SQL
 * NULL), under the pool's deadline and error classification (db_exec_params).
 * Returns the result (PQclear it) or NULL with *st set. */
PGresult *qt_exec(db_conn *c, text_query_id id, int nparams, const char *const *values,
                  db_status *st);
/* qt_exec without parameters, for a statement whose rows are not needed
 * (locks, SET, BEGIN): its status. */
db_status qt_command(db_conn *c, text_query_id id);

#endif
