-- 010_reaper: the periodic passes cost what is due, not what is live
-- (issue 14, docs/performance.md "The reaper and the rotation scan").
--
-- With 100,000 live sessions, the reaper's search for sessions past their
-- idle timeout or lifetime read every live row once a second (85 ms a pass
-- on the benchmark machine), because neither condition had an index: an
-- index on last_used_at would end the HOT updates every delivery makes. And
-- destroying a session went through a function call and three statements
-- per session.

-- ---- when the reaper next looks at a session --------------------------------
-- reap_at is a time before which the session cannot be due: at most its
-- idle deadline (last_used_at + idle_timeout_s) and its lifetime's end.
-- Requests never write it (last_used_at only moves forward, so the deadline
-- only moves later), so their updates stay HOT; the reaper, finding a
-- session at reap_at that was used since, moves reap_at to the new
-- deadline. A session is checked once per idle period it is in use, and
-- destroyed at the first pass after it is due, as before. Rows written
-- other than by qkms_session_key get the default: look at them at once.
ALTER TABLE sessions ADD COLUMN reap_at timestamptz;
UPDATE sessions SET reap_at = least(expires_at, last_used_at + make_interval(secs => idle_timeout_s));
ALTER TABLE sessions ALTER COLUMN reap_at SET DEFAULT now(),
                     ALTER COLUMN reap_at SET NOT NULL;
CREATE INDEX sessions_reap_at ON sessions (reap_at);

-- ---- the reaper -------------------------------------------------------------
-- The same arguments as 006's version, and the same rows written: for
-- each session due, the row is deleted, a tombstone and a
-- 'session.destroyed' audit row are written in the pass's transaction. It
-- takes up to p_limit sessions whose reap_at has come, in reap_at order
-- (rows a request holds are skipped, as before: the next pass takes them),
-- destroys those due and moves the others' reap_at. The three writes of a
-- destruction are one statement each over the whole pass instead of a call
-- of qkms_session_destroy per session. It returns how many it destroyed and
-- how many it took: a full batch tells kmsd to run another pass at once.
DROP FUNCTION qkms_session_reap(integer, integer, integer);
CREATE FUNCTION qkms_session_reap(p_nonce_window_s integer, p_tombstone_days integer,
                                  p_limit integer, OUT destroyed integer, OUT examined integer)
LANGUAGE plpgsql AS $$
BEGIN
    WITH due AS (
        SELECT id, expires_at <= now() AS lifetime,
               expires_at <= now() OR last_used_at + make_interval(secs => idle_timeout_s) <= now()
                   AS over,
               least(expires_at, last_used_at + make_interval(secs => idle_timeout_s)) AS next_at
          FROM sessions WHERE reap_at <= now()
         ORDER BY reap_at LIMIT p_limit FOR UPDATE SKIP LOCKED
    ), later AS (
        UPDATE sessions s SET reap_at = due.next_at FROM due WHERE s.id = due.id AND NOT due.over
    ), gone AS (
        DELETE FROM sessions s USING due WHERE s.id = due.id AND due.over
        RETURNING s.id, s.session_hash, s.key_id, s.initiator_id, s.responder_id, s.created_at,
                  CASE WHEN due.lifetime THEN 'max_lifetime' ELSE 'idle_timeout' END AS reason
    ), tombs AS (
        INSERT INTO session_tombstones (session_hash, key_id, initiator, responder, created_at, reason)
        SELECT session_hash, key_id, initiator_id, responder_id, created_at, reason FROM gone
    ), logged AS (
        INSERT INTO audit_log (actor, event, device_id, detail)
        SELECT 'kmsd', 'session.destroyed', initiator_id,
               jsonb_build_object('session_hash', encode(session_hash, 'hex'), 'key_id', key_id,
                                  'initiator', initiator_id, 'responder', responder_id,
                                  'reason', reason)
          FROM gone ORDER BY id
    )
    SELECT (SELECT count(*) FROM gone), (SELECT count(*) FROM due) INTO destroyed, examined;
    DELETE FROM request_nonces WHERE expires_at <= now();
    IF p_tombstone_days > 0 THEN
        DELETE FROM session_tombstones WHERE ended_at < now() - make_interval(days => p_tombstone_days);
    END IF;
END $$;

-- ---- the creating request writes reap_at -------------------------------------
-- 009's function with one change: the session row is inserted with its
-- reap_at (last used now, so the idle deadline or the lifetime's end,
-- whichever comes first).
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
                              delivery, idle_timeout_s, expires_at, initiator_delivered_at,
                              reap_at)
        VALUES (p_hash, p_session_id, c_key_id, c_bits, c_wrapped, c_master, c_provenance, me.id,
                peer.id, me.device_id, peer.device_id, pol.name,
                CASE WHEN p_want_delivered OR pol.delivery = 'delivered' THEN 'delivered' ELSE 'session' END,
                pol.idle_timeout_s, now() + make_interval(secs => pol.max_lifetime_s), now(),
                now() + make_interval(secs => least(pol.idle_timeout_s, pol.max_lifetime_s)))
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
