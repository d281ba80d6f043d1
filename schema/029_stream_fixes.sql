-- 029_stream_fixes: the review of 028's key streams (issue 20).
--
--  - A stream ID is never used twice: a candidate made for a stream that has
--    ended between kmsd's two calls is asked again (need_key, a new ID),
--    and a trigger refuses any live stream under an ID that has a
--    tombstone.
--  - Opening a stream holds both devices (FOR SHARE, lower pk first) and
--    reads their standing again: a revocation is either seen or waits, and
--    then ends what was opened.
--  - Stream keys are audited as session keys are: stream.key_created (key
--    ID, seq, provenance) when made, stream.keys_destroyed when consumed
--    (and the keys left unconsumed are named in stream.ended).
--  - master_inactive names the stream, so that the next candidate is made
--    for it; a stream's tombstone counts every consumed key, not only those
--    below low.

CREATE FUNCTION qkms_stream_id_unused() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM stream_tombstones WHERE stream_id = NEW.stream_id) THEN
        RAISE EXCEPTION 'stream % has ended; a stream ID is used once', NEW.stream_id
              USING ERRCODE = 'unique_violation';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER streams_id_unused BEFORE INSERT ON streams
    FOR EACH ROW EXECUTE FUNCTION qkms_stream_id_unused();

CREATE OR REPLACE FUNCTION qkms_stream_destroy(p_id bigint, p_reason text, p_actor text)
RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    s streams;
    live integer;
    live_ids uuid[];
    consumed_above integer;
BEGIN
    -- The stream row first, then its keys (the order of every request).
    PERFORM 1 FROM streams WHERE id = p_id FOR UPDATE;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    WITH gone AS (DELETE FROM stream_keys WHERE stream_pk = p_id
                  RETURNING key_id, wrapped_key IS NOT NULL AS unconsumed)
    SELECT count(*) FILTER (WHERE g.unconsumed), count(*) FILTER (WHERE NOT g.unconsumed),
           array_agg(g.key_id ORDER BY g.key_id) FILTER (WHERE g.unconsumed)
      INTO live, consumed_above, live_ids FROM gone g;
    DELETE FROM streams WHERE id = p_id RETURNING * INTO s;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    INSERT INTO stream_tombstones (stream_id, lo_id, hi_id, created_at, keys_consumed, reason)
    VALUES (s.stream_id, s.lo_id, s.hi_id, s.created_at, s.low + consumed_above, p_reason);
    INSERT INTO audit_log (actor, event, device_id, detail)
    VALUES (p_actor, 'stream.ended', s.lo_id,
            jsonb_build_object('stream_id', s.stream_id, 'parties', jsonb_build_array(s.lo_id, s.hi_id),
                               'reason', p_reason, 'keys_consumed', s.low + consumed_above,
                               'keys_destroyed_unconsumed', live,
                               'key_ids', coalesce(to_jsonb(live_ids), '[]'::jsonb)));
    RETURN true;
END $$;

CREATE OR REPLACE FUNCTION qkms_stream_key(
    p_device bigint, p_key_index integer, p_nonce bytea, p_ts bigint, p_skew integer,
    p_stream uuid, p_peer text, p_seq bigint,
    c_key_id uuid, c_wrapped bytea, c_master integer, c_provenance text, c_bits integer,
    c_stream uuid)
RETURNS TABLE (outcome text, out_stream uuid, out_key_id uuid, out_key_bits integer,
               out_wrapped bytea, out_expires bigint, out_low bigint, out_window integer,
               out_created boolean, out_detail text)
LANGUAGE plpgsql AS $$
DECLARE
    me devices;
    peer devices;
    s streams;
    k stream_keys;
    pol pairing_policies;
    refusal text;
    standing text;
    early text;
    mstate text;
    lo bigint;
    hi bigint;
    created boolean := false;
    new_low bigint;
BEGIN
    SELECT * INTO me FROM devices WHERE id = p_device;
    refusal := qkms_auth_refusal(me, p_key_index);
    IF refusal IS NOT NULL THEN
        RETURN QUERY SELECT 'unauthenticated', NULL::uuid, NULL::uuid, NULL::int, NULL::bytea,
                            NULL::bigint, NULL::bigint, NULL::int, false, refusal;
        RETURN;
    END IF;
    IF NOT qkms_ts_ok(p_ts, p_skew) THEN
        RETURN QUERY SELECT 'stale', NULL::uuid, NULL::uuid, NULL::int, NULL::bytea, NULL::bigint,
                            NULL::bigint, NULL::int, false, NULL::text;
        RETURN;
    END IF;
    standing := qkms_device_standing(me);
    IF standing IS NOT NULL THEN
        RETURN QUERY SELECT CASE WHEN qkms_nonce_take(p_device, p_nonce, p_ts, p_skew)
                                 THEN standing ELSE 'replay' END,
                            NULL::uuid, NULL::uuid, NULL::int, NULL::bytea, NULL::bigint,
                            NULL::bigint, NULL::int, false,
                            CASE standing WHEN 'service_expired' THEN qkms_rfc3339(me.service_until)
                                          ELSE me.state END;
        RETURN;
    END IF;

    SELECT * INTO peer FROM devices WHERE device_id = p_peer;
    IF p_stream IS NOT NULL THEN
        SELECT * INTO s FROM streams WHERE stream_id = p_stream FOR UPDATE;
        IF s.id IS NULL THEN
            early := CASE WHEN EXISTS (SELECT 1 FROM stream_tombstones WHERE stream_id = p_stream)
                          THEN 'ended' ELSE 'unknown_stream' END;
        ELSIF p_device <> s.party_lo AND p_device <> s.party_hi THEN
            early := 'not_a_party';
        ELSIF peer.id IS NULL OR peer.id NOT IN (s.party_lo, s.party_hi) OR peer.id = p_device THEN
            early := 'peer_mismatch';
        END IF;
    ELSIF peer.id IS NULL OR peer.id = p_device THEN
        early := 'unknown_peer';
    ELSE
        lo := least(p_device, peer.id);
        hi := greatest(p_device, peer.id);
        -- Openings of one pair wait for each other: the stream one of them
        -- opens is the one the other finds (and its candidate, wrapped for
        -- another stream ID, is asked again before anything is written).
        PERFORM pg_advisory_xact_lock(716480390, hashtext(lo::text || ':' || hi::text));
        -- Both parties as they are now, held (lower pk first) so that a
        -- revocation either went before (and is seen here) or waits for
        -- this request (and then ends what it opened): never a stream
        -- opened for a device revoked in between.
        PERFORM 1 FROM devices WHERE id IN (lo, hi) ORDER BY id FOR SHARE;
        SELECT * INTO me FROM devices WHERE id = p_device;
        SELECT * INTO peer FROM devices WHERE id = CASE WHEN lo = p_device THEN hi ELSE lo END;
        standing := qkms_device_standing(me);
        IF standing IS NOT NULL THEN
            RETURN QUERY SELECT CASE WHEN qkms_nonce_take(p_device, p_nonce, p_ts, p_skew)
                                     THEN standing ELSE 'replay' END,
                                NULL::uuid, NULL::uuid, NULL::int, NULL::bytea, NULL::bigint,
                                NULL::bigint, NULL::int, false,
                                CASE standing WHEN 'service_expired'
                                     THEN qkms_rfc3339(me.service_until) ELSE me.state END;
            RETURN;
        END IF;
        SELECT * INTO s FROM streams WHERE party_lo = lo AND party_hi = hi FOR UPDATE;
        IF s.id IS NULL THEN
            -- Opening: the pair's policy, as a session's first request.
            IF qkms_device_standing(peer) IS NOT NULL THEN
                early := 'peer_inactive';
            ELSE
                pol := qkms_policy_for(me, peer);
                IF pol.id IS NULL THEN
                    early := 'policy_denied';
                ELSIF NOT 'c' = ANY (pol.key_sources) THEN
                    early := 'source_denied';
                ELSIF p_seq >= pol.stream_window THEN
                    early := 'seq_out_of_window';
                ELSIF c_stream IS NULL OR c_wrapped IS NULL OR c_bits <> pol.key_bits
                      OR EXISTS (SELECT 1 FROM stream_tombstones WHERE stream_id = c_stream) THEN
                    -- (A candidate made for a stream that has ended since
                    -- is asked again: a new stream takes a new ID.)
                    RETURN QUERY SELECT 'need_key', NULL::uuid, NULL::uuid, pol.key_bits,
                                        NULL::bytea, NULL::bigint, NULL::bigint, NULL::int, false,
                                        pol.name;
                    RETURN;
                END IF;
            END IF;
        END IF;
    END IF;
    IF early IS NULL AND s.id IS NOT NULL
       AND (s.expires_at <= now()
            OR s.last_used_at + make_interval(secs => s.idle_timeout_s) <= now()) THEN
        early := 'expired';
    END IF;
    IF early IS NULL AND s.id IS NOT NULL THEN
        IF p_seq < s.low THEN
            early := 'key_consumed';
        ELSIF p_seq >= s.low + s.stream_window THEN
            early := 'seq_out_of_window';
        ELSE
            SELECT * INTO k FROM stream_keys WHERE stream_pk = s.id AND seq = p_seq FOR UPDATE;
            IF k.key_id IS NOT NULL AND k.consumed_at IS NOT NULL THEN
                early := 'key_consumed';
            ELSIF k.key_id IS NULL AND (c_wrapped IS NULL OR c_bits <> s.key_bits
                                        OR c_stream IS DISTINCT FROM s.stream_id) THEN
                -- The candidate is wrapped for this stream's ID (the wrap
                -- context names it): kmsd makes one for out_stream.
                RETURN QUERY SELECT 'need_key', s.stream_id, NULL::uuid, s.key_bits, NULL::bytea,
                                    NULL::bigint, NULL::bigint, NULL::int, false, s.policy;
                RETURN;
            END IF;
        END IF;
    END IF;
    IF early IS NULL AND k.key_id IS NULL THEN
        SELECT state INTO mstate FROM master_keys WHERE version = c_master FOR SHARE;
        IF mstate IS DISTINCT FROM 'active' THEN
            RETURN QUERY SELECT 'master_inactive', s.stream_id, NULL::uuid,
                                coalesce(s.key_bits, pol.key_bits), NULL::bytea, NULL::bigint,
                                NULL::bigint, NULL::int, false, mstate;
            RETURN;
        END IF;
    END IF;

    IF NOT qkms_nonce_take(p_device, p_nonce, p_ts, p_skew) THEN
        RETURN QUERY SELECT 'replay', NULL::uuid, NULL::uuid, NULL::int, NULL::bytea, NULL::bigint,
                            NULL::bigint, NULL::int, false, NULL::text;
        RETURN;
    END IF;
    IF early IS NOT NULL THEN
        IF early = 'expired' THEN
            PERFORM qkms_stream_destroy(s.id,
                CASE WHEN s.expires_at <= now() THEN 'max_lifetime' ELSE 'idle_timeout' END,
                'kmsd');
            early := 'ended';
        ELSIF early NOT IN ('ended', 'unknown_stream', 'unknown_peer') THEN
            INSERT INTO audit_log (actor, event, device_id, detail)
            VALUES (me.device_id, 'stream.refused', me.device_id,
                    jsonb_build_object('reason', CASE early WHEN 'source_denied'
                                                 THEN 'key_source_denied' ELSE early END,
                                       'stream_id', s.stream_id, 'peer', p_peer, 'seq', p_seq,
                                       'low', s.low));
        END IF;
        RETURN QUERY SELECT early, s.stream_id, NULL::uuid, NULL::int, NULL::bytea, NULL::bigint,
                            s.low, s.stream_window, false, NULL::text;
        RETURN;
    END IF;

    IF s.id IS NULL THEN
        -- Open it. A concurrent opening by the other party may win the
        -- insert: then this request joins that stream.
        INSERT INTO streams (stream_id, party_lo, party_hi, lo_id, hi_id, opened_by, policy,
                             key_bits, stream_window, idle_timeout_s, expires_at, reap_at)
        VALUES (c_stream, lo, hi,
                CASE WHEN lo = me.id THEN me.device_id ELSE peer.device_id END,
                CASE WHEN hi = me.id THEN me.device_id ELSE peer.device_id END,
                me.id, pol.name, pol.key_bits, pol.stream_window, pol.idle_timeout_s,
                now() + make_interval(secs => pol.max_lifetime_s),
                now() + make_interval(secs => least(pol.idle_timeout_s, pol.max_lifetime_s)))
        ON CONFLICT (party_lo, party_hi) DO NOTHING
        RETURNING * INTO s;
        IF NOT FOUND THEN
            -- Cannot happen under the pair's lock; should it, nothing of
            -- this stream is written and the device asks again (503).
            RETURN QUERY SELECT 'retry', NULL::uuid, NULL::uuid, NULL::int, NULL::bytea,
                                NULL::bigint, NULL::bigint, NULL::int, false, NULL::text;
            RETURN;
        END IF;
        INSERT INTO audit_log (actor, event, device_id, detail)
        VALUES (me.device_id, 'stream.opened', me.device_id,
                jsonb_build_object('stream_id', s.stream_id, 'peer', peer.device_id,
                                   'policy', pol.name, 'key_bits', pol.key_bits,
                                   'window', pol.stream_window));
    END IF;

    IF k.key_id IS NULL THEN
        INSERT INTO stream_keys (stream_pk, seq, key_id, key_bits, wrapped_key, master_version,
                                 provenance)
        VALUES (s.id, p_seq, c_key_id, c_bits, c_wrapped, c_master, c_provenance)
        RETURNING * INTO k;
        created := true;
        INSERT INTO audit_log (actor, event, device_id, detail)
        VALUES (me.device_id, 'stream.key_created', me.device_id,
                jsonb_build_object('stream_id', s.stream_id, 'seq', p_seq, 'key_id', c_key_id,
                                   'key_bits', c_bits, 'provenance', c_provenance));
    END IF;
    IF p_device = s.party_lo THEN
        UPDATE stream_keys SET lo_delivered_at = coalesce(lo_delivered_at, now())
         WHERE stream_pk = s.id AND seq = p_seq RETURNING * INTO k;
    ELSE
        UPDATE stream_keys SET hi_delivered_at = coalesce(hi_delivered_at, now())
         WHERE stream_pk = s.id AND seq = p_seq RETURNING * INTO k;
    END IF;
    UPDATE streams SET last_used_at = now() WHERE id = s.id RETURNING * INTO s;
    RETURN QUERY SELECT 'ok', s.stream_id, k.key_id, k.key_bits, k.wrapped_key,
                        extract(epoch FROM s.expires_at)::bigint, s.low, s.stream_window, created,
                        NULL::text;
    -- Both parties hold it: the key is destroyed (the row remembers that
    -- seq was consumed), and low moves over every consumed seq.
    IF k.lo_delivered_at IS NOT NULL AND k.hi_delivered_at IS NOT NULL THEN
        UPDATE stream_keys SET wrapped_key = NULL, master_version = NULL, consumed_at = now()
         WHERE stream_pk = s.id AND seq = p_seq;
        INSERT INTO audit_log (actor, event, device_id, detail)
        VALUES ('kmsd', 'stream.keys_destroyed', s.lo_id,
                jsonb_build_object('stream_id', s.stream_id, 'key_ids', jsonb_build_array(k.key_id),
                                   'seq', p_seq, 'reason', 'consumed'));
        SELECT min(g) INTO new_low FROM generate_series(s.low, s.low + s.stream_window) g
         WHERE NOT EXISTS (SELECT 1 FROM stream_keys x WHERE x.stream_pk = s.id AND x.seq = g
                                                          AND x.consumed_at IS NOT NULL);
        IF new_low > s.low THEN
            DELETE FROM stream_keys WHERE stream_pk = s.id AND seq < new_low;
            UPDATE streams SET low = new_low WHERE id = s.id;
        END IF;
    END IF;
END $$;
