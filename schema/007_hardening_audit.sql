-- 007_hardening_audit: the random-IV budget of each master key version, and
-- audit rows that keep the exact bytes their hash covers (docs/operations.md).

-- SP 800-38D 8.3: at most 2^32 AES-GCM invocations with random IVs per key.
-- kmsd counts every wrap and checkpoint MAC per version (pkcs11/keywrap.c),
-- adds the counts here every maintenance loop iteration, and rotates the
-- active version once wrap_count reaches master_key_wrap_limit.
ALTER TABLE master_keys
    ADD COLUMN wrap_count bigint NOT NULL DEFAULT 0 CHECK (wrap_count >= 0),
    -- when an instance claimed the automatic rotation of this version
    ADD COLUMN wrap_rotation_claimed_at timestamptz;

-- Versions in use before this migration: their past wraps were not counted.
-- Start from what is still stored under each (a lower bound: ended sessions
-- and rewrapped keys are gone); docs/operations.md says to rotate after the
-- upgrade if a version has been active for long under heavy load.
UPDATE master_keys m SET wrap_count =
      (SELECT count(*) FROM device_keys d WHERE d.master_version = m.version)
    + (SELECT count(*) FROM sessions s WHERE s.master_version = m.version)
    + (SELECT count(*) FROM audit_checkpoints c WHERE c.master_version = m.version);

-- Audit rows keep the exact values their hash covers where PostgreSQL
-- renders them: the time in microseconds and the detail's jsonb text.
-- Verification hashes these stored values (so a change in how a server
-- renders jsonb cannot break the chain) and checks, rendering-independently,
-- that they still equal the row's columns.
ALTER TABLE audit_log
    ADD COLUMN hashed_at_us  bigint,
    ADD COLUMN hashed_detail text;

-- Rows sealed before this migration were hashed over these very renderings.
UPDATE audit_log
   SET hashed_at_us = (extract(epoch FROM at) * 1000000)::bigint,
       hashed_detail = detail::text
 WHERE hash IS NOT NULL;

-- Semantic equality of a stored detail text and the detail column; false
-- (not an error that would stop verification) when the text is not JSON.
-- Called only for rows whose texts differ.
CREATE FUNCTION qkms_audit_detail_same(hashed text, detail jsonb) RETURNS boolean
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    RETURN hashed::jsonb = detail;
EXCEPTION WHEN others THEN
    RETURN false;
END
$$;
