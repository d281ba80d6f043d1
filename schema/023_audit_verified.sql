-- 023_audit_verified: the last audit chain verification, found at once.
-- Every verification writes an audit.verified row (kmsd/service/audit_query.c);
-- the maintenance pass publishes the newest one's age and verdict as
-- metrics (docs/operations.md, "Alerts"), whichever instance ran it and
-- across restarts. A partial index: only those rows are in it.
CREATE INDEX audit_log_verified ON audit_log (id) WHERE event = 'audit.verified';
