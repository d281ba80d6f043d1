-- 006_hardening_sessions: wraps only under the active master key version,
-- request time judged by the database clock, nonces recorded before every
-- outcome and kept until their own timestamp leaves the window, session IDs
-- hashed with a server key (HMAC) instead of a bare SHA-256.

-- ---- wraps only under the active master key version --------------------
-- Every row that stores a wrapped key names its master version. The version
-- must be the active one when the row is written, checked with the
-- master_keys row taken FOR SHARE in the writing transaction: a rotation
-- (UPDATE ... SET state = 'retired') waits for the writers in flight and
-- writers after it see the new state, so once a version is retired no new
-- row can name it, and destruction (which takes the row FOR UPDATE and
-- finds no row naming it) can never strand a key. 40001 tells kmsd to
-- refresh its view of the active version and try again.
CREATE FUNCTION qkms_master_must_be_active() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    st text;
BEGIN
    IF NEW.master_version IS NULL
       OR (TG_OP = 'UPDATE' AND NEW.master_version IS NOT DISTINCT FROM OLD.master_version) THEN
        RETURN NEW;
    END IF;
    SELECT state INTO st FROM master_keys WHERE version = NEW.master_version FOR SHARE;
    IF st IS DISTINCT FROM 'active' THEN
        RAISE EXCEPTION 'master key version % is %, not active', NEW.master_version,
              coalesce(st, 'unknown')
              USING ERRCODE = 'serialization_failure', HINT = 'qkms_master_inactive';
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER device_keys_master_active BEFORE INSERT OR UPDATE OF master_version ON device_keys
    FOR EACH ROW EXECUTE FUNCTION qkms_master_must_be_active();
CREATE TRIGGER sessions_master_active BEFORE INSERT OR UPDATE OF master_version ON sessions
    FOR EACH ROW EXECUTE FUNCTION qkms_master_must_be_active();
-- Audit chain heads are MACs, not wraps, but a head authenticated under a
-- version about to be destroyed could never be verified again: same rule.
CREATE TRIGGER audit_checkpoints_master_active BEFORE INSERT OR UPDATE OF master_version
    ON audit_checkpoints FOR EACH ROW EXECUTE FUNCTION qkms_master_must_be_active();

-- ---- nonces expire by their own timestamp --------------------------------
-- A nonce must be remembered while a request carrying it could still pass
-- the clock check: until its ts + skew. Rows from before this migration
-- keep the longest such time the old window allowed (skew at most 3600 s).
ALTER TABLE request_nonces ADD COLUMN expires_at timestamptz;
UPDATE request_nonces SET expires_at = seen_at + interval '2 hours';
ALTER TABLE request_nonces ALTER COLUMN expires_at SET NOT NULL;
DROP INDEX request_nonces_seen;
CREATE INDEX request_nonces_expires ON request_nonces (expires_at);

-- Record one request nonce: false when the device already used it (replay).
-- p_ts has passed the clock check: the nonce is kept until a request with
-- this ts would be refused for its time anyway (db_now > ts + skew).
CREATE FUNCTION qkms_nonce_take(p_device bigint, p_nonce bytea, p_ts bigint, p_skew integer)
RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO request_nonces (device_pk, nonce, expires_at)
    VALUES (p_device, p_nonce, to_timestamp(p_ts + p_skew + 1))
    ON CONFLICT DO NOTHING;
    RETURN FOUND;
END $$;

-- The request's ts against the database clock (one clock for every kmsd),
-- whole seconds, both bounds inclusive: accepted iff
-- now - skew <= ts <= now + skew.
CREATE FUNCTION qkms_ts_ok(p_ts bigint, p_skew integer)
RETURNS boolean LANGUAGE sql STABLE AS $$
    SELECT p_ts BETWEEN floor(extract(epoch FROM now()))::bigint - p_skew
                    AND floor(extract(epoch FROM now()))::bigint + p_skew
$$;

-- ---- one authenticated key request ----------------------------------------
-- Replaces 003's version (new parameters: ts and skew, the legacy SHA-256
-- of the session ID; new column out_hash: the hash the row is keyed by,
-- which is part of the session key's wrap context).
-- Outcomes: ok, need_key / master_inactive (kmsd-internal, nothing written:
-- call again with a candidate of out_key_bits, wrapped under the active
-- version), unauthenticated (reason in out_policy), stale (ts outside the
-- window), replay, device_inactive, ended, not_a_party, peer_mismatch,
-- unknown_peer, peer_inactive, policy_denied. From device_inactive on, every
-- outcome records the nonce first, so a replay of any of them is a replay.
DROP FUNCTION qkms_session_key(bigint, integer, bytea, bytea, text, text, boolean, uuid, bytea,
                               integer, text, integer);

CREATE FUNCTION qkms_session_key(
    p_device bigint, p_key_index integer, p_nonce bytea, p_ts bigint, p_skew integer,
    p_hash bytea, p_legacy bytea, p_session_id text, p_peer text, p_want_delivered boolean,
    c_key_id uuid, c_wrapped bytea, c_master integer, c_provenance text, c_bits integer)
RETURNS TABLE (outcome text, out_key_id uuid, out_key_bits integer, out_wrapped bytea,
               out_expires bigint, out_policy text, out_delivery text, out_created boolean,
               out_hash bytea)
LANGUAGE plpgsql AS $$
DECLARE
    me devices;
    peer devices;
    s sessions;
    pol pairing_policies;
    created boolean := false;
    refusal text;
    early text;
    mstate text;
BEGIN
    SELECT * INTO me FROM devices WHERE id = p_device;
    refusal := qkms_auth_refusal(me, p_key_index);
    IF refusal IS NOT NULL THEN
        RETURN QUERY SELECT 'unauthenticated', NULL::uuid, NULL::int, NULL::bytea, NULL::bigint,
                            refusal, NULL::text, false, NULL::bytea;
        RETURN;
    END IF;
    IF NOT qkms_ts_ok(p_ts, p_skew) THEN
        RETURN QUERY SELECT 'stale', NULL::uuid, NULL::int, NULL::bytea, NULL::bigint, NULL::text,
                            NULL::text, false, NULL::bytea;
        RETURN;
    END IF;
    IF me.state <> 'active' THEN
        RETURN QUERY SELECT CASE WHEN qkms_nonce_take(p_device, p_nonce, p_ts, p_skew)
                                 THEN 'device_inactive' ELSE 'replay' END,
                            NULL::uuid, NULL::int, NULL::bytea, NULL::bigint, me.state,
                            NULL::text, false, NULL::bytea;
        RETURN;
    END IF;
    SELECT * INTO s FROM sessions WHERE session_hash = p_hash FOR UPDATE;
    IF NOT FOUND AND p_legacy IS NOT NULL THEN
        SELECT * INTO s FROM sessions WHERE session_hash = p_legacy FOR UPDATE;
    END IF;
    IF s.id IS NULL THEN
        -- Decide without writing; need_key and master_inactive leave no trace
        -- (kmsd calls again with the same nonce).
        IF EXISTS (SELECT 1 FROM session_tombstones
                   WHERE session_hash = p_hash OR session_hash = p_legacy) THEN
            early := 'ended';
        ELSE
            SELECT * INTO peer FROM devices WHERE device_id = p_peer;
            IF NOT FOUND OR peer.id = me.id THEN
                early := 'unknown_peer';
            ELSIF peer.state <> 'active' THEN
                early := 'peer_inactive';
            ELSE
                pol := qkms_policy_for(me, peer);
                IF pol.id IS NULL THEN
                    early := 'policy_denied';
                ELSIF c_wrapped IS NULL OR c_bits <> pol.key_bits THEN
                    RETURN QUERY SELECT 'need_key', NULL::uuid, pol.key_bits, NULL::bytea,
                                        NULL::bigint, pol.name, NULL::text, false, NULL::bytea;
                    RETURN;
                ELSE
                    SELECT state INTO mstate FROM master_keys WHERE version = c_master FOR SHARE;
                    IF mstate IS DISTINCT FROM 'active' THEN
                        RETURN QUERY SELECT 'master_inactive', NULL::uuid, pol.key_bits,
                                            NULL::bytea, NULL::bigint, mstate, NULL::text, false,
                                            NULL::bytea;
                        RETURN;
                    END IF;
                END IF;
            END IF;
        END IF;
    END IF;

    -- Replay protection: each nonce once per device while its ts is valid,
    -- recorded before any outcome a device sees.
    IF NOT qkms_nonce_take(p_device, p_nonce, p_ts, p_skew) THEN
        RETURN QUERY SELECT 'replay', NULL::uuid, NULL::int, NULL::bytea, NULL::bigint, NULL::text,
                            NULL::text, false, NULL::bytea;
        RETURN;
    END IF;
    IF early IS NOT NULL THEN
        IF early = 'policy_denied' THEN
            INSERT INTO audit_log (actor, event, device_id, detail)
            VALUES (me.device_id, 'session.refused', me.device_id,
                    jsonb_build_object('reason', 'policy_denied', 'peer', peer.device_id,
                                       'session_hash', encode(p_hash, 'hex')));
        END IF;
        RETURN QUERY SELECT early, NULL::uuid, NULL::int, NULL::bytea, NULL::bigint, NULL::text,
                            NULL::text, false, NULL::bytea;
        RETURN;
    END IF;

    IF s.id IS NULL THEN
        -- A concurrent first request may win the insert; then we use its key.
        INSERT INTO sessions (session_hash, session_id, key_id, key_bits, wrapped_key, master_version,
                              provenance, initiator, responder, initiator_id, responder_id, policy,
                              delivery, idle_timeout_s, expires_at)
        VALUES (p_hash, p_session_id, c_key_id, c_bits, c_wrapped, c_master, c_provenance, me.id,
                peer.id, me.device_id, peer.device_id, pol.name,
                CASE WHEN p_want_delivered OR pol.delivery = 'delivered' THEN 'delivered' ELSE 'session' END,
                pol.idle_timeout_s, now() + make_interval(secs => pol.max_lifetime_s))
        ON CONFLICT (session_hash) DO NOTHING
        RETURNING * INTO s;
        IF FOUND THEN
            created := true;
            INSERT INTO audit_log (actor, event, device_id, detail)
            VALUES (me.device_id, 'session.created', me.device_id,
                    jsonb_build_object('session_hash', encode(p_hash, 'hex'), 'key_id', c_key_id,
                                       'initiator', me.device_id, 'responder', peer.device_id,
                                       'policy', pol.name, 'key_bits', c_bits,
                                       'provenance', c_provenance));
        ELSE
            SELECT * INTO s FROM sessions WHERE session_hash = p_hash FOR UPDATE;
        END IF;
        IF s.id IS NULL THEN
            -- The winner already finished and destroyed it (delivered mode).
            RETURN QUERY SELECT 'ended', NULL::uuid, NULL::int, NULL::bytea, NULL::bigint,
                                NULL::text, NULL::text, false, NULL::bytea;
            RETURN;
        END IF;
    END IF;

    IF p_device <> s.initiator AND p_device <> s.responder THEN
        INSERT INTO audit_log (actor, event, device_id, detail)
        VALUES (me.device_id, 'session.refused', me.device_id,
                jsonb_build_object('reason', 'not_a_party', 'session_hash', encode(s.session_hash, 'hex'),
                                   'initiator', s.initiator_id, 'responder', s.responder_id));
        RETURN QUERY SELECT 'not_a_party', NULL::uuid, NULL::int, NULL::bytea, NULL::bigint,
                            NULL::text, NULL::text, false, NULL::bytea;
        RETURN;
    END IF;
    IF (p_device = s.initiator AND p_peer <> s.responder_id)
       OR (p_device = s.responder AND p_peer <> s.initiator_id) THEN
        INSERT INTO audit_log (actor, event, device_id, detail)
        VALUES (me.device_id, 'session.refused', me.device_id,
                jsonb_build_object('reason', 'peer_mismatch', 'session_hash', encode(s.session_hash, 'hex'),
                                   'named_peer', p_peer));
        RETURN QUERY SELECT 'peer_mismatch', NULL::uuid, NULL::int, NULL::bytea, NULL::bigint,
                            NULL::text, NULL::text, false, NULL::bytea;
        RETURN;
    END IF;
    IF s.expires_at <= now() OR s.last_used_at + make_interval(secs => s.idle_timeout_s) <= now() THEN
        PERFORM qkms_session_destroy(s.id,
            CASE WHEN s.expires_at <= now() THEN 'max_lifetime' ELSE 'idle_timeout' END, 'kmsd');
        RETURN QUERY SELECT 'ended', NULL::uuid, NULL::int, NULL::bytea, NULL::bigint, NULL::text,
                            NULL::text, false, NULL::bytea;
        RETURN;
    END IF;

    IF p_device = s.initiator THEN
        UPDATE sessions SET last_used_at = now(),
               initiator_delivered_at = coalesce(initiator_delivered_at, now())
         WHERE id = s.id RETURNING * INTO s;
    ELSE
        UPDATE sessions SET last_used_at = now(),
               responder_delivered_at = coalesce(responder_delivered_at, now())
         WHERE id = s.id RETURNING * INTO s;
    END IF;
    -- Single transfer: once both parties hold the key, the platform forgets it.
    IF s.delivery = 'delivered' AND s.initiator_delivered_at IS NOT NULL
       AND s.responder_delivered_at IS NOT NULL THEN
        PERFORM qkms_session_destroy(s.id, 'delivered', 'kmsd');
    END IF;
    RETURN QUERY SELECT 'ok', s.key_id, s.key_bits, s.wrapped_key,
                        extract(epoch FROM s.expires_at)::bigint, s.policy, s.delivery, created,
                        s.session_hash;
END $$;

-- An authenticated end request from a party (replaces 003's version: ts
-- checked by the database clock, the legacy hash looked up too).
-- Returns ok, stale, replay, ended, unknown, not_a_party, or
-- 'unauthenticated: <why>'. The nonce is recorded before every outcome but
-- unauthenticated and stale. A suspended device may still end its sessions.
DROP FUNCTION qkms_session_end(bigint, integer, bytea, bytea);

CREATE FUNCTION qkms_session_end(p_device bigint, p_key_index integer, p_nonce bytea,
                                 p_ts bigint, p_skew integer, p_hash bytea, p_legacy bytea)
RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    s sessions;
    d devices;
    refusal text;
BEGIN
    SELECT * INTO d FROM devices WHERE id = p_device;
    refusal := qkms_auth_refusal(d, p_key_index);
    IF refusal IS NOT NULL THEN
        RETURN 'unauthenticated: ' || refusal;
    END IF;
    IF NOT qkms_ts_ok(p_ts, p_skew) THEN
        RETURN 'stale';
    END IF;
    IF NOT qkms_nonce_take(p_device, p_nonce, p_ts, p_skew) THEN
        RETURN 'replay';
    END IF;
    SELECT * INTO s FROM sessions WHERE session_hash = p_hash FOR UPDATE;
    IF NOT FOUND AND p_legacy IS NOT NULL THEN
        SELECT * INTO s FROM sessions WHERE session_hash = p_legacy FOR UPDATE;
    END IF;
    IF s.id IS NULL THEN
        RETURN CASE WHEN EXISTS (SELECT 1 FROM session_tombstones
                                 WHERE session_hash = p_hash OR session_hash = p_legacy)
                    THEN 'ended' ELSE 'unknown' END;
    END IF;
    IF p_device <> s.initiator AND p_device <> s.responder THEN
        INSERT INTO audit_log (actor, event, device_id, detail)
        VALUES (d.device_id, 'session.refused', d.device_id,
                jsonb_build_object('reason', 'not_a_party', 'op', 'end',
                                   'session_hash', encode(s.session_hash, 'hex')));
        RETURN 'not_a_party';
    END IF;
    PERFORM qkms_session_destroy(s.id, 'ended_by_party', d.device_id);
    RETURN 'ok';
END $$;

-- Same signature as 003's; nonces now go when their own expiry has passed
-- (p_nonce_window_s is no longer used).
CREATE OR REPLACE FUNCTION qkms_session_reap(p_nonce_window_s integer, p_tombstone_days integer,
                                             p_limit integer)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    n integer := 0;
    r record;
BEGIN
    FOR r IN SELECT id, expires_at <= now() AS lifetime FROM sessions
             WHERE expires_at <= now() OR last_used_at + make_interval(secs => idle_timeout_s) <= now()
             ORDER BY id LIMIT p_limit FOR UPDATE SKIP LOCKED
    LOOP
        PERFORM qkms_session_destroy(r.id, CASE WHEN r.lifetime THEN 'max_lifetime' ELSE 'idle_timeout' END, 'kmsd');
        n := n + 1;
    END LOOP;
    DELETE FROM request_nonces WHERE expires_at <= now();
    IF p_tombstone_days > 0 THEN
        DELETE FROM session_tombstones WHERE ended_at < now() - make_interval(days => p_tombstone_days);
    END IF;
    RETURN n;
END $$;

-- ---- the session ID hash key -------------------------------------------
-- Session IDs are hashed with HMAC-SHA-256 under one server key, made once
-- by the first kmsd that finds this table empty, and stored only wrapped
-- under the master key like every other key (docs/sessions.md). Master key
-- rotation rewraps it and never changes it, so live sessions and tombstones
-- keep matching; destruction waits until it is rewrapped.
CREATE TABLE session_hash_key (
    one             boolean PRIMARY KEY DEFAULT true CHECK (one),
    wrapped         bytea NOT NULL,
    master_version  integer NOT NULL REFERENCES master_keys (version),
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE TRIGGER session_hash_key_master_active BEFORE INSERT OR UPDATE OF master_version
    ON session_hash_key FOR EACH ROW EXECUTE FUNCTION qkms_master_must_be_active();
