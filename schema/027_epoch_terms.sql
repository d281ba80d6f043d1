-- 027_epoch_terms: the review's fixes to 026's epochs, and re-keying by age
-- or by deliveries (issue 20). docs/sessions.md, "Epochs and direction keys".
--
--  - A session keeps its policy's epoch terms from its creation (as it keeps
--    its key sources): max_epochs, directions, epoch_grace_s, and the new
--    rekey_after_s and rekey_after_deliveries. A policy removed or re-added
--    under the same name no longer changes live sessions.
--  - Re-keying: when the session's current epoch is older than
--    rekey_after_s, or its keys have been delivered rekey_after_deliveries
--    times, the next request that names an epoch moves the session to the
--    next epoch (as if a party had asked for it) once it is answered; its
--    answer's current_epoch tells the party, and the other party learns it
--    from its next answer. Requests without an epoch never move a session.
--  - A single-transfer session has one key: every request with an epoch or
--    a direction is refused (it had a way around the destruction on the
--    second delivery). Epochs respect the session's key sources (a v1 key is
--    source c). An older epoch's key past its grace is never served, even
--    before the reaper gets to it.
--  - Moving epoch 0's key out of the row keeps the row's master version,
--    which may be retired (not yet destroyed: the destroyer waits for the
--    row lock and finds the key) while a rotation's rewrap is under way.
--  - Keys destroyed with their session are named in its audit row.
--  - A device's end of all its sessions, and a revocation's, lock them in
--    the order of their hashes, as the group commit does.

-- ---- the terms -------------------------------------------------------------------
ALTER TABLE pairing_policies
    ADD COLUMN rekey_after_s integer CHECK (rekey_after_s BETWEEN 1 AND 604800),
    ADD COLUMN rekey_after_deliveries integer
        CHECK (rekey_after_deliveries BETWEEN 2 AND 1000000000);

ALTER TABLE sessions
    ADD COLUMN max_epochs integer NOT NULL DEFAULT 1,
    ADD COLUMN directions boolean NOT NULL DEFAULT false,
    ADD COLUMN epoch_grace_s integer NOT NULL DEFAULT 60,
    ADD COLUMN rekey_after_s integer,
    ADD COLUMN rekey_after_deliveries integer,
    -- The current epoch's start and how many times its keys were delivered.
    ADD COLUMN epoch_started_at timestamptz NOT NULL DEFAULT now(),
    ADD COLUMN epoch_deliveries integer NOT NULL DEFAULT 1;
-- Live sessions take their policy's terms as of now.
UPDATE sessions s SET max_epochs = p.max_epochs, directions = p.directions,
       epoch_grace_s = p.epoch_grace_s
  FROM pairing_policies p WHERE p.name = s.policy
   AND (p.max_epochs, p.directions, p.epoch_grace_s)
       IS DISTINCT FROM (s.max_epochs, s.directions, s.epoch_grace_s);

-- ---- a key moved with its master version -------------------------------------------
-- 006's trigger function, which also lets one insert name a retired version:
-- the move of epoch 0's key into session_keys (qkms_session_key_ext sets
-- qkms.key_move for it), which carries the wrap as it is. The version's row
-- is still taken FOR SHARE, so its destruction (FOR UPDATE, then a search
-- for rows naming it) waits and finds the moved key; the rewrap reaches it
-- like any other.
CREATE OR REPLACE FUNCTION qkms_master_must_be_active() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    st text;
BEGIN
    IF NEW.master_version IS NULL
       OR (TG_OP = 'UPDATE' AND NEW.master_version IS NOT DISTINCT FROM OLD.master_version) THEN
        RETURN NEW;
    END IF;
    SELECT state INTO st FROM master_keys WHERE version = NEW.master_version FOR SHARE;
    IF st IS DISTINCT FROM 'active'
       AND NOT (st = 'retired' AND TG_OP = 'INSERT' AND TG_TABLE_NAME = 'session_keys'
                AND current_setting('qkms.key_move', true) = 'on') THEN
        RAISE EXCEPTION 'master key version % is %, not active', NEW.master_version,
              coalesce(st, 'unknown')
              USING ERRCODE = 'serialization_failure', HINT = 'qkms_master_inactive';
    END IF;
    RETURN NEW;
END $$;

-- ---- destruction names every key -----------------------------------------------------
-- 003's function: the session's other keys (026) are deleted first and
-- named in the audit row (key_ids), not left to the cascade.
CREATE OR REPLACE FUNCTION qkms_session_destroy(p_id bigint, p_reason text, p_actor text)
RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    s record;
    ids uuid[];
BEGIN
    WITH gone AS (DELETE FROM session_keys WHERE session_pk = p_id RETURNING key_id)
    SELECT array_agg(key_id ORDER BY key_id) INTO ids FROM gone;
    DELETE FROM sessions WHERE id = p_id RETURNING * INTO s;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    INSERT INTO session_tombstones (session_hash, key_id, initiator, responder, created_at, reason)
    VALUES (s.session_hash, s.key_id, s.initiator_id, s.responder_id, s.created_at, p_reason);
    INSERT INTO audit_log (actor, event, device_id, detail)
    VALUES (p_actor, 'session.destroyed', s.initiator_id,
            jsonb_build_object('session_hash', encode(s.session_hash, 'hex'), 'key_id', s.key_id,
                               'initiator', s.initiator_id, 'responder', s.responder_id,
                               'reason', p_reason)
            || CASE WHEN ids IS NULL THEN '{}'::jsonb
                    ELSE jsonb_build_object('key_ids', to_jsonb(ids), 'epoch', s.epoch) END);
    RETURN true;
END $$;

-- 010's reaper pass, with the same: the other keys of the sessions it
-- destroys are deleted in the pass and named in their audit rows.
CREATE OR REPLACE FUNCTION qkms_session_reap(p_nonce_window_s integer, p_tombstone_days integer,
                                             p_limit integer, OUT destroyed integer,
                                             OUT examined integer)
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
    ), keys AS (
        DELETE FROM session_keys k USING due WHERE k.session_pk = due.id AND due.over
        RETURNING k.session_pk, k.key_id
    ), gone AS (
        DELETE FROM sessions s USING due WHERE s.id = due.id AND due.over
        RETURNING s.id, s.session_hash, s.key_id, s.initiator_id, s.responder_id, s.created_at,
                  s.epoch, CASE WHEN due.lifetime THEN 'max_lifetime' ELSE 'idle_timeout' END AS reason
    ), tombs AS (
        INSERT INTO session_tombstones (session_hash, key_id, initiator, responder, created_at, reason)
        SELECT session_hash, key_id, initiator_id, responder_id, created_at, reason FROM gone
    ), logged AS (
        INSERT INTO audit_log (actor, event, device_id, detail)
        SELECT 'kmsd', 'session.destroyed', g.initiator_id,
               jsonb_build_object('session_hash', encode(g.session_hash, 'hex'), 'key_id', g.key_id,
                                  'initiator', g.initiator_id, 'responder', g.responder_id,
                                  'reason', g.reason)
               || coalesce((SELECT jsonb_build_object('key_ids', jsonb_agg(k.key_id ORDER BY k.key_id),
                                                      'epoch', g.epoch)
                              FROM keys k WHERE k.session_pk = g.id HAVING count(*) > 0),
                           '{}'::jsonb)
          FROM gone g ORDER BY g.id
    )
    SELECT (SELECT count(*) FROM gone), (SELECT count(*) FROM due) INTO destroyed, examined;
    DELETE FROM request_nonces WHERE expires_at <= now();
    IF p_tombstone_days > 0 THEN
        DELETE FROM session_tombstones WHERE ended_at < now() - make_interval(days => p_tombstone_days);
    END IF;
END $$;

-- 025's end of all a device's sessions, locking them in hash order.
CREATE OR REPLACE FUNCTION qkms_session_end_all(p_device bigint, p_key_index integer,
                                                p_nonce bytea, p_ts bigint, p_skew integer,
                                                p_cert bytea)
RETURNS TABLE (outcome text, n integer) LANGUAGE plpgsql AS $$
DECLARE
    d devices;
    sid bigint;
    refusal text;
    ended integer := 0;
BEGIN
    SELECT * INTO d FROM devices WHERE id = p_device;
    refusal := CASE WHEN p_cert IS NULL THEN qkms_auth_refusal(d, p_key_index)
                    ELSE qkms_cert_refusal(d, p_cert) END;
    IF refusal IS NOT NULL THEN
        RETURN QUERY SELECT 'unauthenticated: ' || refusal, 0;
        RETURN;
    END IF;
    IF NOT qkms_ts_ok(p_ts, p_skew) THEN
        RETURN QUERY SELECT 'stale'::text, 0;
        RETURN;
    END IF;
    IF NOT qkms_nonce_take(p_device, p_nonce, p_ts, p_skew) THEN
        RETURN QUERY SELECT 'replay'::text, 0;
        RETURN;
    END IF;
    FOR sid IN SELECT id FROM sessions WHERE initiator = p_device OR responder = p_device
               ORDER BY session_hash FOR UPDATE LOOP
        IF qkms_session_destroy(sid, 'device_ended', d.device_id) THEN
            ended := ended + 1;
        END IF;
    END LOOP;
    UPDATE gateway_credentials SET login_hash = NULL, updated_at = now()
     WHERE device_pk = p_device AND login_hash IS NOT NULL;
    INSERT INTO audit_log (actor, event, device_id, detail)
    VALUES (d.device_id, 'device.sessions_ended', d.device_id,
            jsonb_build_object('sessions_ended', ended));
    RETURN QUERY SELECT 'ok'::text, ended;
END $$;

-- ---- the v1 request ---------------------------------------------------------------
-- 026's qkms_session_key: a new session takes its policy's epoch terms, and
-- every delivery of epoch 0's key counts towards re-keying by deliveries
-- (the same row update as before, one more column). A v1 request itself
-- never moves a session to another epoch.
CREATE OR REPLACE FUNCTION qkms_session_key(
    p_device bigint, p_key_index integer, p_nonce bytea, p_ts bigint, p_skew integer,
    p_hash bytea, p_legacy bytea, p_session_id text, p_peer text, p_want_delivered boolean,
    c_key_id uuid, c_wrapped bytea, c_master integer, c_provenance text, c_bits integer,
    p_cert bytea, p_source text)
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
    standing text;
BEGIN
    SELECT * INTO me FROM devices WHERE id = p_device;
    refusal := CASE WHEN p_cert IS NULL THEN qkms_auth_refusal(me, p_key_index)
                    ELSE qkms_cert_refusal(me, p_cert) END;
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
    standing := qkms_device_standing(me);
    IF standing IS NOT NULL THEN
        RETURN QUERY SELECT CASE WHEN qkms_nonce_take(p_device, p_nonce, p_ts, p_skew)
                                 THEN standing ELSE 'replay' END,
                            NULL::uuid, NULL::int, NULL::bytea, NULL::bigint,
                            CASE standing WHEN 'service_expired' THEN qkms_rfc3339(me.service_until)
                                          ELSE me.state END,
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
            IF p_peer IS NULL THEN
                -- The platform itself is the peer (a device-platform channel).
                pol := qkms_policy_for_platform(me);
            ELSE
                SELECT * INTO peer FROM devices WHERE device_id = p_peer;
                IF NOT FOUND OR peer.id = me.id THEN
                    early := 'unknown_peer';
                ELSIF qkms_device_standing(peer) IS NOT NULL THEN
                    early := 'peer_inactive';
                ELSE
                    pol := qkms_policy_for(me, peer);
                END IF;
            END IF;
            IF early IS NOT NULL THEN
                NULL;
            ELSIF pol.id IS NULL THEN
                early := 'policy_denied';
            ELSIF NOT coalesce(p_source, 'c') = ANY (pol.key_sources) THEN
                early := 'source_denied';
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
        ELSIF early = 'source_denied' THEN
            INSERT INTO audit_log (actor, event, device_id, detail)
            VALUES (me.device_id, 'session.refused', me.device_id,
                    jsonb_build_object('reason', 'key_source_denied', 'peer', peer.device_id,
                                       'key_source', coalesce(p_source, 'c'), 'policy', pol.name,
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
                              reap_at, key_source, key_sources, responder_delivered_at,
                              max_epochs, directions, epoch_grace_s, rekey_after_s,
                              rekey_after_deliveries)
        VALUES (p_hash, p_session_id, c_key_id, c_bits, c_wrapped, c_master, c_provenance, me.id,
                peer.id, me.device_id, coalesce(peer.device_id, '@platform'), pol.name,
                -- A channel with the platform: the platform holds the key from
                -- the start, and keeps it until the session ends.
                CASE WHEN p_peer IS NULL THEN 'session'
                     WHEN p_want_delivered OR pol.delivery = 'delivered' THEN 'delivered'
                     ELSE 'session' END,
                pol.idle_timeout_s, now() + make_interval(secs => pol.max_lifetime_s), now(),
                now() + make_interval(secs => least(pol.idle_timeout_s, pol.max_lifetime_s)),
                coalesce(p_source, 'c'), pol.key_sources,
                CASE WHEN p_peer IS NULL THEN now() END,
                pol.max_epochs, pol.directions, pol.epoch_grace_s, pol.rekey_after_s,
                pol.rekey_after_deliveries)
        ON CONFLICT (session_hash) DO NOTHING
        RETURNING * INTO s;
        IF FOUND THEN
            created := true;
            INSERT INTO audit_log (actor, event, device_id, detail)
            VALUES (me.device_id, 'session.created', me.device_id,
                    jsonb_build_object('session_hash', encode(p_hash, 'hex'), 'key_id', c_key_id,
                                       'initiator', me.device_id,
                                       'responder', coalesce(peer.device_id, '@platform'),
                                       'policy', pol.name, 'key_bits', c_bits,
                                       'provenance', c_provenance,
                                       'key_source', coalesce(p_source, 'c')));
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

    -- (responder is NULL when the platform is the peer: compared as such.)
    IF p_device IS DISTINCT FROM s.initiator AND p_device IS DISTINCT FROM s.responder THEN
        INSERT INTO audit_log (actor, event, device_id, detail)
        VALUES (me.device_id, 'session.refused', me.device_id,
                jsonb_build_object('reason', 'not_a_party', 'session_hash', encode(s.session_hash, 'hex'),
                                   'initiator', s.initiator_id, 'responder', s.responder_id));
        RETURN QUERY SELECT 'not_a_party', NULL::uuid, NULL::int, NULL::bytea, NULL::bigint,
                            NULL::text, NULL::text, false, NULL::bytea;
        RETURN;
    END IF;
    IF (p_device = s.initiator AND ((s.responder IS NULL) <> (p_peer IS NULL)
                                    OR (s.responder IS NOT NULL AND p_peer <> s.responder_id)))
       OR (p_device = s.responder AND (p_peer IS NULL OR p_peer <> s.initiator_id)) THEN
        INSERT INTO audit_log (actor, event, device_id, detail)
        VALUES (me.device_id, 'session.refused', me.device_id,
                jsonb_build_object('reason', 'peer_mismatch', 'session_hash', encode(s.session_hash, 'hex'),
                                   'named_peer', p_peer));
        RETURN QUERY SELECT 'peer_mismatch', NULL::uuid, NULL::int, NULL::bytea, NULL::bigint,
                            NULL::text, NULL::text, false, NULL::bytea;
        RETURN;
    END IF;
    -- The asked source against the sources the session's policy allowed
    -- when it was created (kept in the row), for every request: also the
    -- second party's, whatever it asks.
    IF NOT coalesce(p_source, 'c') = ANY (s.key_sources) THEN
        INSERT INTO audit_log (actor, event, device_id, detail)
        VALUES (me.device_id, 'session.refused', me.device_id,
                jsonb_build_object('reason', 'key_source_denied', 'key_source',
                                   coalesce(p_source, 'c'), 'policy', s.policy,
                                   'session_hash', encode(s.session_hash, 'hex')));
        RETURN QUERY SELECT 'source_denied', NULL::uuid, NULL::int, NULL::bytea, NULL::bigint,
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

    IF s.wrapped_key IS NULL THEN
        -- Its first key moved on with the session's epochs (schema 026):
        -- nothing more is written.
        RETURN QUERY SELECT 'epoch_ended', NULL::uuid, NULL::int, NULL::bytea, NULL::bigint,
                            NULL::text, NULL::text, false, NULL::bytea;
        RETURN;
    END IF;
    IF created THEN
        -- The row just inserted already says so: delivered to its initiator
        -- now, last used now (its default). Not updating it saves a second
        -- row version, and the foreign-key re-checks an update of a row
        -- inserted by the same transaction would run.
        NULL;
    ELSIF p_device = s.initiator THEN
        UPDATE sessions SET last_used_at = now(), epoch_deliveries = epoch_deliveries + 1,
               initiator_delivered_at = coalesce(initiator_delivered_at, now())
         WHERE id = s.id RETURNING * INTO s;
    ELSE
        UPDATE sessions SET last_used_at = now(), epoch_deliveries = epoch_deliveries + 1,
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

-- ---- epochs ---------------------------------------------------------------------------
-- Moves the locked session p_sid to epoch p_epoch (its current one plus
-- one): epoch 0's key leaves the row for session_keys, every key of an
-- older epoch gets its latest destruction time (now + the session's grace),
-- the epoch's start and delivery count restart, and the move is audited
-- (why: 'asked' by a party, or 'age' / 'deliveries' when re-keyed). The
-- caller holds the row FOR UPDATE. Returns the row as it is now.
CREATE FUNCTION qkms_session_advance(p_sid bigint, p_epoch integer, p_actor text, p_why text)
RETURNS sessions LANGUAGE plpgsql AS $$
DECLARE
    s sessions;
BEGIN
    SELECT * INTO s FROM sessions WHERE id = p_sid;
    IF s.wrapped_key IS NOT NULL THEN
        PERFORM set_config('qkms.key_move', 'on', true);
        INSERT INTO session_keys (session_pk, epoch, direction, key_id, key_bits, wrapped_key,
                                  master_version, provenance, created_at,
                                  initiator_delivered_at, responder_delivered_at)
        VALUES (s.id, 0, '', s.key_id, s.key_bits, s.wrapped_key, s.master_version,
                s.provenance, s.created_at, s.initiator_delivered_at, s.responder_delivered_at);
        PERFORM set_config('qkms.key_move', 'off', true);
    END IF;
    UPDATE session_keys SET destroy_at = now() + make_interval(secs => s.epoch_grace_s)
     WHERE session_pk = s.id AND epoch < p_epoch AND destroy_at IS NULL;
    UPDATE sessions SET epoch = p_epoch, wrapped_key = NULL, master_version = NULL,
                        epoch_started_at = now(), epoch_deliveries = 0
     WHERE id = s.id RETURNING * INTO s;
    INSERT INTO audit_log (actor, event, device_id, detail)
    VALUES (p_actor, 'session.rekeyed', s.initiator_id,
            jsonb_build_object('session_hash', encode(s.session_hash, 'hex'),
                               'epoch', p_epoch, 'grace_s', s.epoch_grace_s, 'why', p_why));
    RETURN s;
END $$;

-- 026's function, with the review's fixes and re-keying (the header above).
-- Outcomes as 026's, and 'source_denied'; 'epoch_denied' now for every
-- request with an epoch or a direction in a single-transfer session.
CREATE OR REPLACE FUNCTION qkms_session_key_ext(
    p_device bigint, p_key_index integer, p_nonce bytea, p_ts bigint, p_skew integer,
    p_hash bytea, p_peer text, p_epoch integer, p_dir text,
    c_key_id uuid, c_wrapped bytea, c_master integer, c_provenance text, c_bits integer,
    p_cert bytea)
RETURNS TABLE (outcome text, out_key_id uuid, out_key_bits integer, out_wrapped bytea,
               out_expires bigint, out_policy text, out_delivery text, out_created boolean,
               out_hash bytea, out_epoch integer, out_current integer)
LANGUAGE plpgsql AS $$
DECLARE
    me devices;
    s sessions;
    k session_keys;
    refusal text;
    standing text;
    early text;
    mstate text;
    head boolean;
    created boolean := false;
    ended_ids uuid[];
    r_key_id uuid;
    r_bits integer;
    r_wrapped bytea;
    r_epoch integer;
BEGIN
    SELECT * INTO me FROM devices WHERE id = p_device;
    refusal := CASE WHEN p_cert IS NULL THEN qkms_auth_refusal(me, p_key_index)
                    ELSE qkms_cert_refusal(me, p_cert) END;
    IF refusal IS NOT NULL THEN
        RETURN QUERY SELECT 'unauthenticated', NULL::uuid, NULL::int, NULL::bytea, NULL::bigint,
                            refusal, NULL::text, false, NULL::bytea, NULL::int, NULL::int;
        RETURN;
    END IF;
    IF NOT qkms_ts_ok(p_ts, p_skew) THEN
        RETURN QUERY SELECT 'stale', NULL::uuid, NULL::int, NULL::bytea, NULL::bigint, NULL::text,
                            NULL::text, false, NULL::bytea, NULL::int, NULL::int;
        RETURN;
    END IF;
    standing := qkms_device_standing(me);
    IF standing IS NOT NULL THEN
        RETURN QUERY SELECT CASE WHEN qkms_nonce_take(p_device, p_nonce, p_ts, p_skew)
                                 THEN standing ELSE 'replay' END,
                            NULL::uuid, NULL::int, NULL::bytea, NULL::bigint,
                            CASE standing WHEN 'service_expired' THEN qkms_rfc3339(me.service_until)
                                          ELSE me.state END,
                            NULL::text, false, NULL::bytea, NULL::int, NULL::int;
        RETURN;
    END IF;

    SELECT * INTO s FROM sessions WHERE session_hash = p_hash FOR UPDATE;
    IF s.id IS NULL THEN
        early := CASE WHEN EXISTS (SELECT 1 FROM session_tombstones WHERE session_hash = p_hash)
                      THEN 'ended' ELSE 'unknown_session' END;
    ELSIF p_device IS DISTINCT FROM s.initiator AND p_device IS DISTINCT FROM s.responder THEN
        early := 'not_a_party';
    ELSIF s.responder IS NULL OR p_peer IS NULL
          OR (p_device = s.initiator AND p_peer <> s.responder_id)
          OR (p_device = s.responder AND p_peer <> s.initiator_id) THEN
        early := 'peer_mismatch';
    ELSIF s.expires_at <= now()
          OR s.last_used_at + make_interval(secs => s.idle_timeout_s) <= now() THEN
        early := 'expired';
    ELSIF s.delivery = 'delivered' THEN
        early := 'epoch_denied';
    ELSIF NOT 'c' = ANY (s.key_sources) THEN
        early := 'source_denied';
    ELSIF p_dir <> '' AND NOT s.directions THEN
        early := 'direction_denied';
    ELSIF p_epoch > s.epoch + 1 THEN
        early := 'epoch_skip';
    ELSIF p_epoch = s.epoch + 1 AND p_epoch >= s.max_epochs THEN
        early := 'epoch_limit';
    ELSE
        head := p_epoch = 0 AND p_dir = '' AND s.epoch = 0;
        IF NOT head THEN
            SELECT * INTO k FROM session_keys
             WHERE session_pk = s.id AND epoch = p_epoch AND direction = p_dir FOR UPDATE;
            IF k.key_id IS NOT NULL AND k.destroy_at <= now() THEN
                early := 'grace_over';
            ELSIF k.key_id IS NULL THEN
                IF p_epoch < s.epoch THEN
                    early := 'epoch_ended';
                ELSIF c_wrapped IS NULL OR c_bits <> s.key_bits THEN
                    RETURN QUERY SELECT 'need_key', NULL::uuid, s.key_bits, NULL::bytea,
                                        NULL::bigint, s.policy, NULL::text, false, NULL::bytea,
                                        NULL::int, NULL::int;
                    RETURN;
                ELSE
                    SELECT state INTO mstate FROM master_keys WHERE version = c_master FOR SHARE;
                    IF mstate IS DISTINCT FROM 'active' THEN
                        RETURN QUERY SELECT 'master_inactive', NULL::uuid, s.key_bits,
                                            NULL::bytea, NULL::bigint, mstate, NULL::text, false,
                                            NULL::bytea, NULL::int, NULL::int;
                        RETURN;
                    END IF;
                END IF;
            END IF;
        END IF;
    END IF;

    IF NOT qkms_nonce_take(p_device, p_nonce, p_ts, p_skew) THEN
        RETURN QUERY SELECT 'replay', NULL::uuid, NULL::int, NULL::bytea, NULL::bigint, NULL::text,
                            NULL::text, false, NULL::bytea, NULL::int, NULL::int;
        RETURN;
    END IF;
    IF early IS NOT NULL THEN
        IF early = 'expired' THEN
            PERFORM qkms_session_destroy(s.id,
                CASE WHEN s.expires_at <= now() THEN 'max_lifetime' ELSE 'idle_timeout' END,
                'kmsd');
            early := 'ended';
        ELSIF early = 'grace_over' THEN
            -- Its grace is over: destroyed now rather than at the reaper's
            -- next pass, and never served.
            DELETE FROM session_keys
             WHERE session_pk = s.id AND epoch = k.epoch AND direction = k.direction;
            INSERT INTO audit_log (actor, event, device_id, detail)
            VALUES ('kmsd', 'session.keys_destroyed', s.initiator_id,
                    jsonb_build_object('session_hash', encode(s.session_hash, 'hex'),
                                       'key_ids', jsonb_build_array(k.key_id), 'reason', 'grace',
                                       'epoch', s.epoch));
            early := 'epoch_ended';
        ELSIF early NOT IN ('ended', 'unknown_session') THEN
            INSERT INTO audit_log (actor, event, device_id, detail)
            VALUES (me.device_id, 'session.refused', me.device_id,
                    jsonb_build_object('reason', CASE early WHEN 'source_denied'
                                                 THEN 'key_source_denied' ELSE early END,
                                       'session_hash', encode(p_hash, 'hex'),
                                       'epoch', p_epoch, 'direction', p_dir,
                                       'current_epoch', s.epoch));
        END IF;
        RETURN QUERY SELECT early, NULL::uuid, NULL::int, NULL::bytea, NULL::bigint, NULL::text,
                            NULL::text, false, NULL::bytea, NULL::int, s.epoch;
        RETURN;
    END IF;

    IF p_epoch = s.epoch + 1 THEN
        s := qkms_session_advance(s.id, p_epoch, me.device_id, 'asked');
    END IF;

    IF head THEN
        -- Epoch 0's own key, asked for with an explicit epoch: as the v1
        -- request does.
        IF p_device = s.initiator THEN
            UPDATE sessions SET last_used_at = now(), epoch_deliveries = epoch_deliveries + 1,
                   initiator_delivered_at = coalesce(initiator_delivered_at, now())
             WHERE id = s.id RETURNING * INTO s;
        ELSE
            UPDATE sessions SET last_used_at = now(), epoch_deliveries = epoch_deliveries + 1,
                   responder_delivered_at = coalesce(responder_delivered_at, now())
             WHERE id = s.id RETURNING * INTO s;
        END IF;
        r_key_id := s.key_id;
        r_bits := s.key_bits;
        r_wrapped := s.wrapped_key;
        r_epoch := 0;
    ELSE
        IF k.key_id IS NULL THEN
            INSERT INTO session_keys (session_pk, epoch, direction, key_id, key_bits, wrapped_key,
                                      master_version, provenance)
            VALUES (s.id, p_epoch, p_dir, c_key_id, c_bits, c_wrapped, c_master, c_provenance)
            RETURNING * INTO k;
            created := true;
            INSERT INTO audit_log (actor, event, device_id, detail)
            VALUES (me.device_id, 'session.key_created', me.device_id,
                    jsonb_build_object('session_hash', encode(s.session_hash, 'hex'),
                                       'key_id', c_key_id, 'epoch', p_epoch, 'direction', p_dir,
                                       'key_bits', c_bits, 'provenance', c_provenance));
        END IF;
        IF p_device = s.initiator THEN
            UPDATE session_keys SET initiator_delivered_at = coalesce(initiator_delivered_at, now())
             WHERE session_pk = s.id AND epoch = k.epoch AND direction = k.direction
            RETURNING * INTO k;
        ELSE
            UPDATE session_keys SET responder_delivered_at = coalesce(responder_delivered_at, now())
             WHERE session_pk = s.id AND epoch = k.epoch AND direction = k.direction
            RETURNING * INTO k;
        END IF;
        UPDATE sessions SET last_used_at = now(),
               epoch_deliveries = epoch_deliveries + CASE WHEN k.epoch = epoch THEN 1 ELSE 0 END
         WHERE id = s.id RETURNING * INTO s;
        r_key_id := k.key_id;
        r_bits := k.key_bits;
        r_wrapped := k.wrapped_key;
        r_epoch := k.epoch;
        -- Both parties hold a key of the current epoch: the older epochs'
        -- keys are of no more use to either.
        IF k.epoch = s.epoch AND k.initiator_delivered_at IS NOT NULL
           AND k.responder_delivered_at IS NOT NULL THEN
            WITH gone AS (
                DELETE FROM session_keys WHERE session_pk = s.id AND epoch < s.epoch
                RETURNING key_id
            )
            SELECT array_agg(key_id ORDER BY key_id) INTO ended_ids FROM gone;
            IF ended_ids IS NOT NULL THEN
                INSERT INTO audit_log (actor, event, device_id, detail)
                VALUES ('kmsd', 'session.keys_destroyed', s.initiator_id,
                        jsonb_build_object('session_hash', encode(s.session_hash, 'hex'),
                                           'key_ids', to_jsonb(ended_ids), 'reason', 'superseded',
                                           'epoch', s.epoch));
            END IF;
        END IF;
    END IF;

    -- Re-keying: the current epoch is due by age or by deliveries. The
    -- answer is the key asked for; its current_epoch says to move on.
    IF s.epoch + 1 < s.max_epochs
       AND ((s.rekey_after_s IS NOT NULL
             AND s.epoch_started_at + make_interval(secs => s.rekey_after_s) <= now())
            OR (s.rekey_after_deliveries IS NOT NULL
                AND s.epoch_deliveries >= s.rekey_after_deliveries)) THEN
        s := qkms_session_advance(s.id, s.epoch + 1, 'kmsd',
                                  CASE WHEN s.rekey_after_deliveries IS NOT NULL
                                            AND s.epoch_deliveries >= s.rekey_after_deliveries
                                       THEN 'deliveries' ELSE 'age' END);
    END IF;
    RETURN QUERY SELECT 'ok', r_key_id, r_bits, r_wrapped,
                        extract(epoch FROM s.expires_at)::bigint, s.policy, s.delivery, created,
                        s.session_hash, r_epoch, s.epoch;
END $$;

