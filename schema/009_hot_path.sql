-- 009_hot_path: fewer writes and checks per key request (issue 14,
-- docs/performance.md "The stored function's writes").
--
-- ---- references to devices and master key versions ------------------------
-- Every request wrote a row lock on its device's row (the foreign key check
-- of request_nonces, SELECT ... FOR KEY SHARE: a WAL record, a dirtied page,
-- and a MultiXact when two transactions hold it), and every new session
-- four more (initiator, responder, master version, re-checked by the
-- update of the row in the same transaction): four checks per delivery,
-- 1.5 WAL records. Devices and master key versions are never deleted (a
-- device is revoked, a version destroyed: the rows stay, the audit log
-- names them) and their keys never change, so these references are kept
-- by refusing exactly that instead: a delete, a truncate or a key change of
-- either table is an error. The rows that reference them are written only
-- by the stored functions, from rows they have just read (the device, its
-- peer, a master version checked active under FOR SHARE by the trigger of
-- 006). device_keys and session_hash_key keep their foreign keys: they are
-- not on the request path.
CREATE FUNCTION qkms_refuse_removal() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% rows are never deleted and their keys never change (revoke a device, destroy a master key version)',
          TG_TABLE_NAME USING ERRCODE = 'restrict_violation';
END $$;

CREATE TRIGGER devices_never_deleted BEFORE DELETE OR TRUNCATE ON devices
    FOR EACH STATEMENT EXECUTE FUNCTION qkms_refuse_removal();
CREATE TRIGGER devices_id_fixed BEFORE UPDATE OF id ON devices
    FOR EACH ROW WHEN (NEW.id IS DISTINCT FROM OLD.id) EXECUTE FUNCTION qkms_refuse_removal();
CREATE TRIGGER master_keys_never_deleted BEFORE DELETE OR TRUNCATE ON master_keys
    FOR EACH STATEMENT EXECUTE FUNCTION qkms_refuse_removal();
CREATE TRIGGER master_keys_version_fixed BEFORE UPDATE OF version ON master_keys
    FOR EACH ROW WHEN (NEW.version IS DISTINCT FROM OLD.version)
    EXECUTE FUNCTION qkms_refuse_removal();

ALTER TABLE request_nonces DROP CONSTRAINT request_nonces_device_pk_fkey;
ALTER TABLE sessions DROP CONSTRAINT sessions_initiator_fkey,
                     DROP CONSTRAINT sessions_responder_fkey,
                     DROP CONSTRAINT sessions_master_version_fkey;

-- ---- one request, one write of the session row ----------------------------
-- 006's function with one change: the request that creates a session writes
-- the row already delivered to its initiator, instead of inserting it and
-- then updating it in the same transaction.
CREATE OR REPLACE FUNCTION qkms_session_key(
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
                              delivery, idle_timeout_s, expires_at, initiator_delivered_at)
        VALUES (p_hash, p_session_id, c_key_id, c_bits, c_wrapped, c_master, c_provenance, me.id,
                peer.id, me.device_id, peer.device_id, pol.name,
                CASE WHEN p_want_delivered OR pol.delivery = 'delivered' THEN 'delivered' ELSE 'session' END,
                pol.idle_timeout_s, now() + make_interval(secs => pol.max_lifetime_s), now())
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

    IF created THEN
        -- The row just inserted already says so: delivered to its initiator
        -- now, last used now (its default). Not updating it saves a second
        -- row version, and the foreign-key re-checks an update of a row
        -- inserted by the same transaction would run.
        NULL;
    ELSIF p_device = s.initiator THEN
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
