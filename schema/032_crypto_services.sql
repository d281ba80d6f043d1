-- 032_crypto_services: the platform's data services under session keys
-- (issue 19; seed 003, claim 13: the platform decrypts data for a party
-- under the session key). docs/api.md "Crypto services", docs/sealing.md.
--
-- A back end calls them with a token of role 'crypto', which acts for one
-- party: a registered device (a cloud encryptor, a head end), or
-- '@platform', the platform's own side of the sessions a device made with
-- the platform as its peer (docs/protocol.md, "The platform as the peer").
-- The token opens and seals frames (docs/sealing.md) only for sessions its
-- party is in, as that party: no third identity gets anything from a
-- session's key.

ALTER TABLE admin_tokens DROP CONSTRAINT admin_tokens_role_check;
ALTER TABLE admin_tokens
    ADD CONSTRAINT admin_tokens_role_check
        CHECK (role IN ('admin', 'operator', 'auditor', 'app', 'crypto')),
    -- The party a crypto token acts for: a device ID (device_pk its row)
    -- or '@platform' (no row).
    ADD COLUMN acts_for text,
    ADD COLUMN device_pk bigint REFERENCES devices (id),
    ADD CONSTRAINT admin_tokens_crypto_acts CHECK ((role = 'crypto') = (acts_for IS NOT NULL)),
    ADD CONSTRAINT admin_tokens_acts_device
        CHECK ((acts_for IS NULL OR acts_for = '@platform') = (device_pk IS NULL));

-- What the service keeps per key and direction of the frames it handles:
-- the receiver's replay window for the frames it opened (recv_top, the
-- highest seq accepted, NULL until one was; recv_bitmap, which of the 64
-- below were), and the sender's next seq for the frames it sealed
-- (send_next, NULL until one was). Sequence numbers are unsigned 64-bit;
-- they are stored as their bit pattern in a bigint (only kmsd reads them).
-- No secret here. The rows go with their session (ON DELETE CASCADE), so
-- nothing is left of a session's frames once it ended but its audit rows.
CREATE TABLE seal_state (
    key_id      uuid NOT NULL,
    direction   smallint NOT NULL CHECK (direction IN (1, 2)), -- 1 a2b, 2 b2a
    session_pk  bigint NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    recv_top    bigint,
    recv_bitmap bigint NOT NULL DEFAULT 0,
    send_next   bigint,
    PRIMARY KEY (key_id, direction)
);
-- The cascade's lookup when a session row is deleted.
CREATE INDEX seal_state_session ON seal_state (session_pk);

-- A key of a session for a crypto token's party (p_token: the token's row,
-- as the gate authenticated it). p_key_id NULL: the key the
-- party seals with by default, the shared key of the session's current
-- epoch. Outcomes, checked in this order:
--   'no_party'        the token is not a live crypto token (revoked since
--                     the request was authenticated)
--   'party_inactive'  its device is suspended or revoked
--   'unknown_session' no such session; 'ended' a tombstone, or a session
--                     past its lifetime or idle timeout (destroyed now, as
--                     the key request path does)
--   'not_a_party'     the token's party is not one of the session's two
--   'no_key'          no live key of the session has that ID (destroyed
--                     with an older epoch, or never made); or, with no
--                     p_key_id, the current epoch has no shared key yet
--   'ok'              party and peer IDs, the session's row ID and hash,
--                     the key's ID, length, wrapped bytes and direction
--                     ('', 'a2b', 'b2a')
-- The session row is locked FOR KEY SHARE (as seal_state's foreign key
-- would lock it anyway): it cannot be destroyed before the caller's
-- transaction ends. The request path locks it FOR UPDATE, so a key request
-- for the same session waits for a crypto call that holds it (one token
-- unwrap and one AES-GCM pass: milliseconds for megabytes). A session's
-- use here is not a key request: it does not move its idle deadline.
CREATE FUNCTION qkms_crypto_key(p_token bigint, p_hash bytea, p_legacy bytea, p_key_id uuid)
RETURNS TABLE (outcome text, party text, peer text, session_pk bigint, hash_hex text,
               out_key_id uuid, key_bits integer, wrapped bytea, key_dir text)
LANGUAGE plpgsql AS $$
DECLARE
    t record;
    s record;
    kid uuid;
    kbits integer;
    kwrapped bytea;
    kdir text;
    party_state text;
BEGIN
    SELECT a.acts_for, a.device_pk INTO t FROM admin_tokens a
    WHERE a.id = p_token AND a.revoked_at IS NULL AND a.role = 'crypto'
      AND (a.expires_at IS NULL OR a.expires_at > now());
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'no_party', NULL::text, NULL::text, NULL::bigint, NULL::text,
                            NULL::uuid, NULL::int, NULL::bytea, NULL::text;
        RETURN;
    END IF;
    IF t.device_pk IS NOT NULL THEN
        SELECT d.state INTO party_state FROM devices d WHERE d.id = t.device_pk;
        IF party_state <> 'active' THEN
            RETURN QUERY SELECT 'party_inactive', t.acts_for, NULL::text, NULL::bigint,
                                NULL::text, NULL::uuid, NULL::int, NULL::bytea, NULL::text;
            RETURN;
        END IF;
    END IF;

    SELECT * INTO s FROM sessions x
    WHERE x.session_hash = p_hash OR x.session_hash = p_legacy
    LIMIT 1 FOR KEY SHARE;
    IF NOT FOUND THEN
        RETURN QUERY SELECT CASE WHEN EXISTS (SELECT 1 FROM session_tombstones z
                                             WHERE z.session_hash = p_hash
                                                OR z.session_hash = p_legacy)
                            THEN 'ended' ELSE 'unknown_session' END,
                            t.acts_for, NULL::text, NULL::bigint, NULL::text, NULL::uuid,
                            NULL::int, NULL::bytea, NULL::text;
        RETURN;
    END IF;
    -- IS TRUE: a platform-peer session's responder is NULL, and a NULL
    -- here must refuse, not fall through.
    IF NOT ((t.device_pk = s.initiator OR t.device_pk = s.responder) IS TRUE
            OR (t.acts_for = '@platform' AND s.responder IS NULL) IS TRUE) THEN
        RETURN QUERY SELECT 'not_a_party', t.acts_for, NULL::text, NULL::bigint, NULL::text,
                            NULL::uuid, NULL::int, NULL::bytea, NULL::text;
        RETURN;
    END IF;
    IF s.expires_at <= now() OR s.last_used_at + make_interval(secs => s.idle_timeout_s) <= now() THEN
        PERFORM qkms_session_destroy(s.id,
            CASE WHEN s.expires_at <= now() THEN 'max_lifetime' ELSE 'idle_timeout' END, 'kmsd');
        RETURN QUERY SELECT 'ended', t.acts_for, NULL::text, NULL::bigint, NULL::text,
                            NULL::uuid, NULL::int, NULL::bytea, NULL::text;
        RETURN;
    END IF;

    IF s.wrapped_key IS NOT NULL AND (p_key_id = s.key_id OR p_key_id IS NULL AND s.epoch = 0) THEN
        kid := s.key_id;
        kbits := s.key_bits;
        kwrapped := s.wrapped_key;
        kdir := '';
    ELSE
        SELECT sk.key_id, sk.key_bits, sk.wrapped_key, sk.direction
        INTO kid, kbits, kwrapped, kdir FROM session_keys sk
        WHERE sk.session_pk = s.id
          -- an older epoch's key past its grace is never used, even before
          -- the reaper destroys it (as on the request path, 027)
          AND (sk.destroy_at IS NULL OR sk.destroy_at > now())
          AND CASE WHEN p_key_id IS NULL THEN sk.epoch = s.epoch AND sk.direction = ''
                   ELSE sk.key_id = p_key_id END;
        IF NOT FOUND THEN
            RETURN QUERY SELECT 'no_key', t.acts_for, NULL::text, NULL::bigint, NULL::text,
                                NULL::uuid, NULL::int, NULL::bytea, NULL::text;
            RETURN;
        END IF;
    END IF;
    RETURN QUERY SELECT 'ok', t.acts_for,
                        CASE WHEN t.device_pk IS NOT DISTINCT FROM s.initiator
                                  AND t.acts_for <> '@platform'
                             THEN s.responder_id ELSE s.initiator_id END,
                        s.id, encode(s.session_hash, 'hex'), kid, kbits, kwrapped, kdir;
END $$;
