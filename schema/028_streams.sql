-- 028_streams: sequential key streams (issue 20, seed 003's "sequential
-- distribution": keys handed out in order to a pair of devices without a
-- session ID). docs/protocol.md, "Key streams"; docs/sessions.md, "Streams".
--
-- A stream belongs to a pair of devices, at most one live stream per pair;
-- either party opens it (or joins the one the other opened) without naming
-- it, and the platform's stream ID names it from then on. Its keys are
-- numbered (seq 0, 1, 2, ...); key n is made once, by the first request for
-- it, and delivered to both parties; once both hold it, it is destroyed
-- (the row keeps only that it was consumed, so that n can never be made
-- again), and the lowest seq not yet consumed by both ("low") moves up. A
-- party may ask for seq n only in [low, low + window). The pairing policy
-- that pairs the two devices allows the stream (its key length, timeouts,
-- and stream_window), as for a session; the stream keeps those terms.

ALTER TABLE pairing_policies
    ADD COLUMN stream_window integer NOT NULL DEFAULT 16 CHECK (stream_window BETWEEN 1 AND 1024);

CREATE TABLE streams (
    id              bigserial PRIMARY KEY,
    stream_id       uuid NOT NULL UNIQUE,
    -- The pair, lower device pk first: one live stream per pair.
    party_lo        bigint NOT NULL REFERENCES devices (id),
    party_hi        bigint NOT NULL REFERENCES devices (id),
    lo_id           text NOT NULL,
    hi_id           text NOT NULL,
    opened_by       bigint NOT NULL,
    policy          text NOT NULL,
    key_bits        integer NOT NULL CHECK (key_bits IN (128, 256)),
    stream_window   integer NOT NULL,
    low             bigint NOT NULL DEFAULT 0,   -- every seq below is consumed
    created_at      timestamptz NOT NULL DEFAULT now(),
    last_used_at    timestamptz NOT NULL DEFAULT now(),
    idle_timeout_s  integer NOT NULL,
    expires_at      timestamptz NOT NULL,
    reap_at         timestamptz NOT NULL,
    CHECK (party_lo < party_hi),
    UNIQUE (party_lo, party_hi)
);
CREATE INDEX streams_party_hi ON streams (party_hi);
CREATE INDEX streams_reap_at ON streams (reap_at);

CREATE TABLE stream_keys (
    stream_pk       bigint NOT NULL REFERENCES streams (id) ON DELETE CASCADE,
    seq             bigint NOT NULL CHECK (seq >= 0),
    key_id          uuid NOT NULL UNIQUE,
    key_bits        integer NOT NULL,
    -- Wrapped under the master key with the context of the stream ID and the
    -- key ID; NULL once consumed (both parties hold it): destroyed.
    wrapped_key     bytea,
    master_version  integer REFERENCES master_keys (version),
    provenance      text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    lo_delivered_at timestamptz,
    hi_delivered_at timestamptz,
    consumed_at     timestamptz,
    PRIMARY KEY (stream_pk, seq),
    CHECK ((wrapped_key IS NULL) = (master_version IS NULL)),
    CHECK ((consumed_at IS NULL) = (wrapped_key IS NOT NULL))
);
CREATE TRIGGER stream_keys_master_active BEFORE INSERT OR UPDATE OF master_version ON stream_keys
    FOR EACH ROW EXECUTE FUNCTION qkms_master_must_be_active();

-- What remains of an ended stream: never a key.
CREATE TABLE stream_tombstones (
    stream_id       uuid PRIMARY KEY,
    lo_id           text NOT NULL,
    hi_id           text NOT NULL,
    created_at      timestamptz NOT NULL,
    ended_at        timestamptz NOT NULL DEFAULT now(),
    keys_consumed   bigint NOT NULL,
    reason          text NOT NULL CHECK (reason IN ('ended_by_party', 'ended_by_operator',
                        'idle_timeout', 'max_lifetime', 'revoked', 'device_ended', 'reset'))
);
CREATE INDEX stream_tombstones_ended ON stream_tombstones (ended_at);

-- Destroy one live stream: its keys go with its row, in the transaction that
-- writes the tombstone and the audit row.
CREATE FUNCTION qkms_stream_destroy(p_id bigint, p_reason text, p_actor text)
RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    s streams;
    live integer;
BEGIN
    WITH gone AS (DELETE FROM stream_keys WHERE stream_pk = p_id RETURNING wrapped_key)
    SELECT count(*) FILTER (WHERE wrapped_key IS NOT NULL) INTO live FROM gone;
    DELETE FROM streams WHERE id = p_id RETURNING * INTO s;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    INSERT INTO stream_tombstones (stream_id, lo_id, hi_id, created_at, keys_consumed, reason)
    VALUES (s.stream_id, s.lo_id, s.hi_id, s.created_at, s.low, p_reason);
    INSERT INTO audit_log (actor, event, device_id, detail)
    VALUES (p_actor, 'stream.ended', s.lo_id,
            jsonb_build_object('stream_id', s.stream_id, 'parties', jsonb_build_array(s.lo_id, s.hi_id),
                               'reason', p_reason, 'keys_consumed', s.low,
                               'keys_destroyed_unconsumed', live));
    RETURN true;
END $$;

-- ---- the request path ---------------------------------------------------------------
-- Key seq of the stream between the device and p_peer: the one named
-- p_stream, or without a name the pair's live stream, opened if there is
-- none. Authentication, the clock window, the device's standing and the
-- nonce as qkms_session_key. Outcomes ('ok' answers the key):
--   unknown_peer, peer_inactive, policy_denied, source_denied (opening);
--   unknown_stream (a name that never was), ended (its tombstone),
--   not_a_party, peer_mismatch (the named stream is another pair's);
--   key_consumed (seq below low), seq_out_of_window (seq >= low + window);
--   need_key / master_inactive (nothing written, kmsd calls again with a
--   candidate of out_key_bits).
CREATE FUNCTION qkms_stream_key(
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
                ELSIF c_stream IS NULL OR c_wrapped IS NULL OR c_bits <> pol.key_bits THEN
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
            RETURN QUERY SELECT 'master_inactive', NULL::uuid, NULL::uuid,
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
        SELECT min(g) INTO new_low FROM generate_series(s.low, s.low + s.stream_window) g
         WHERE NOT EXISTS (SELECT 1 FROM stream_keys x WHERE x.stream_pk = s.id AND x.seq = g
                                                          AND x.consumed_at IS NOT NULL);
        IF new_low > s.low THEN
            DELETE FROM stream_keys WHERE stream_pk = s.id AND seq < new_low;
            UPDATE streams SET low = new_low WHERE id = s.id;
        END IF;
    END IF;
END $$;

-- End a stream at a party's request. Outcomes: 'unauthenticated: <why>',
-- 'stale', 'replay', 'unknown' (never was), 'ended' (tombstone),
-- 'not_a_party', 'ok'. A suspended device may still end its streams.
CREATE FUNCTION qkms_stream_end(p_device bigint, p_key_index integer, p_nonce bytea,
                                p_ts bigint, p_skew integer, p_stream uuid)
RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    d devices;
    s streams;
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
    SELECT * INTO s FROM streams WHERE stream_id = p_stream FOR UPDATE;
    IF s.id IS NULL THEN
        RETURN CASE WHEN EXISTS (SELECT 1 FROM stream_tombstones WHERE stream_id = p_stream)
                    THEN 'ended' ELSE 'unknown' END;
    END IF;
    IF p_device <> s.party_lo AND p_device <> s.party_hi THEN
        INSERT INTO audit_log (actor, event, device_id, detail)
        VALUES (d.device_id, 'stream.refused', d.device_id,
                jsonb_build_object('reason', 'not_a_party', 'op', 'end', 'stream_id', p_stream));
        RETURN 'not_a_party';
    END IF;
    PERFORM qkms_stream_destroy(s.id, 'ended_by_party', d.device_id);
    RETURN 'ok';
END $$;

-- The reaper's pass over streams: up to p_limit whose reap_at has come are
-- destroyed (idle or past their lifetime) or given a later reap_at; old
-- tombstones go with the sessions'. Returns how many it destroyed.
CREATE FUNCTION qkms_stream_reap(p_tombstone_days integer, p_limit integer) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    r record;
    n integer := 0;
BEGIN
    FOR r IN SELECT id, expires_at <= now() AS lifetime,
                    expires_at <= now()
                        OR last_used_at + make_interval(secs => idle_timeout_s) <= now() AS over,
                    least(expires_at, last_used_at + make_interval(secs => idle_timeout_s)) AS next_at
               FROM streams WHERE reap_at <= now()
              ORDER BY reap_at LIMIT p_limit FOR UPDATE SKIP LOCKED LOOP
        IF r.over THEN
            PERFORM qkms_stream_destroy(r.id, CASE WHEN r.lifetime THEN 'max_lifetime'
                                                   ELSE 'idle_timeout' END, 'kmsd');
            n := n + 1;
        ELSE
            UPDATE streams SET reap_at = r.next_at WHERE id = r.id;
        END IF;
    END LOOP;
    IF p_tombstone_days > 0 THEN
        DELETE FROM stream_tombstones WHERE ended_at < now() - make_interval(days => p_tombstone_days);
    END IF;
    RETURN n;
END $$;

-- ---- a device's end of everything --------------------------------------------------
-- 027's end of all a device's sessions ends its streams too (in stream ID
-- order, after the sessions), and counts each.
DROP FUNCTION qkms_session_end_all(bigint, integer, bytea, bigint, integer, bytea);
CREATE FUNCTION qkms_session_end_all(p_device bigint, p_key_index integer, p_nonce bytea,
                                     p_ts bigint, p_skew integer, p_cert bytea)
RETURNS TABLE (outcome text, n integer, n_streams integer) LANGUAGE plpgsql AS $$
DECLARE
    d devices;
    sid bigint;
    refusal text;
    ended integer := 0;
    streams_ended integer := 0;
BEGIN
    SELECT * INTO d FROM devices WHERE id = p_device;
    refusal := CASE WHEN p_cert IS NULL THEN qkms_auth_refusal(d, p_key_index)
                    ELSE qkms_cert_refusal(d, p_cert) END;
    IF refusal IS NOT NULL THEN
        RETURN QUERY SELECT 'unauthenticated: ' || refusal, 0, 0;
        RETURN;
    END IF;
    IF NOT qkms_ts_ok(p_ts, p_skew) THEN
        RETURN QUERY SELECT 'stale'::text, 0, 0;
        RETURN;
    END IF;
    IF NOT qkms_nonce_take(p_device, p_nonce, p_ts, p_skew) THEN
        RETURN QUERY SELECT 'replay'::text, 0, 0;
        RETURN;
    END IF;
    FOR sid IN SELECT id FROM sessions WHERE initiator = p_device OR responder = p_device
               ORDER BY session_hash FOR UPDATE LOOP
        IF qkms_session_destroy(sid, 'device_ended', d.device_id) THEN
            ended := ended + 1;
        END IF;
    END LOOP;
    FOR sid IN SELECT id FROM streams WHERE party_lo = p_device OR party_hi = p_device
               ORDER BY stream_id FOR UPDATE LOOP
        IF qkms_stream_destroy(sid, 'device_ended', d.device_id) THEN
            streams_ended := streams_ended + 1;
        END IF;
    END LOOP;
    UPDATE gateway_credentials SET login_hash = NULL, updated_at = now()
     WHERE device_pk = p_device AND login_hash IS NOT NULL;
    INSERT INTO audit_log (actor, event, device_id, detail)
    VALUES (d.device_id, 'device.sessions_ended', d.device_id,
            jsonb_build_object('sessions_ended', ended, 'streams_ended', streams_ended));
    RETURN QUERY SELECT 'ok'::text, ended, streams_ended;
END $$;


-- ---- the second review of 027 --------------------------------------------------------
-- - qkms_session_destroy locks the session row before its keys: the
--   operator's end (no lock before the call) could otherwise wait for the
--   row while holding the keys a request waits for.
-- - Re-keying by age or deliveries waits until both parties hold a key of
--   the current epoch: a party that fetches less often than the policy's
--   period is never left behind by moves it has not seen.
-- - A party's move to the next epoch is audited under that party.
-- - A gateway's reset locks its sessions in hash order, as end-all and
--   revocation do, and ends its key streams too.
-- - 027's comment on the move during a rotation gave the wrong reason: what
--   keeps a retired version from being destroyed under a moved key is that
--   the move commits together with the session row's own reference to it
--   (cleared in the same transaction), so any snapshot of the destroyer's
--   search sees the version named in one table or the other.
CREATE OR REPLACE FUNCTION qkms_session_destroy(p_id bigint, p_reason text, p_actor text)
RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    s record;
    ids uuid[];
BEGIN
    -- The session row first, then its keys: the order of every other path
    -- (a request, the reaper), whichever the caller locked before.
    PERFORM 1 FROM sessions WHERE id = p_id FOR UPDATE;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
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

CREATE OR REPLACE FUNCTION qkms_session_advance(p_sid bigint, p_epoch integer, p_actor text, p_why text)
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
    VALUES (p_actor, 'session.rekeyed', CASE WHEN p_why = 'asked' THEN p_actor
                                              ELSE s.initiator_id END,
            jsonb_build_object('session_hash', encode(s.session_hash, 'hex'),
                               'epoch', p_epoch, 'grace_s', s.epoch_grace_s, 'why', p_why));
    RETURN s;
END $$;

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
       AND (CASE WHEN s.epoch = 0 AND s.wrapped_key IS NOT NULL
                 THEN s.initiator_delivered_at IS NOT NULL AND s.responder_delivered_at IS NOT NULL
                 ELSE EXISTS (SELECT 1 FROM session_keys x WHERE x.session_pk = s.id
                                AND x.epoch = s.epoch AND x.initiator_delivered_at IS NOT NULL
                                AND x.responder_delivered_at IS NOT NULL) END)
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

CREATE OR REPLACE FUNCTION qkms_gateway_reset(p_device bigint, p_key_index integer, p_nonce bytea,
                                              p_ts bigint, p_skew integer, p_access boolean)
RETURNS TABLE (outcome text, unbound integer, ended integer, epoch integer)
LANGUAGE plpgsql AS $$
DECLARE
    d devices;
    refusal text;
    n_owner integer;
    n_sess integer := 0;
    sid bigint;
    new_epoch integer;
    prev_owner bigint;
BEGIN
    SELECT * INTO d FROM devices WHERE id = p_device;
    refusal := qkms_auth_refusal(d, p_key_index);
    IF refusal IS NOT NULL THEN
        RETURN QUERY SELECT 'unauthenticated', NULL::int, NULL::int, NULL::int;
        RETURN;
    END IF;
    IF NOT qkms_ts_ok(p_ts, p_skew) THEN
        RETURN QUERY SELECT 'stale', NULL::int, NULL::int, NULL::int;
        RETURN;
    END IF;
    IF NOT qkms_nonce_take(p_device, p_nonce, p_ts, p_skew) THEN
        RETURN QUERY SELECT 'replay', NULL::int, NULL::int, NULL::int;
        RETURN;
    END IF;
    IF NOT p_access THEN
        RETURN QUERY SELECT 'not_access', NULL::int, NULL::int, NULL::int;
        RETURN;
    END IF;
    UPDATE devices SET bind_epoch = bind_epoch + 1 WHERE id = p_device
    RETURNING bind_epoch INTO new_epoch;
    SELECT app_id INTO prev_owner FROM device_owners WHERE device_pk = p_device;
    -- Its sub-devices go with it (a reset gateway changes hands with them).
    DELETE FROM device_owners
     WHERE device_pk = p_device OR device_pk IN (SELECT id FROM devices WHERE parent_id = p_device);
    GET DIAGNOSTICS n_owner = ROW_COUNT;
    UPDATE bind_challenges SET used_at = now() WHERE device_pk = p_device AND used_at IS NULL;
    FOR sid IN SELECT id FROM sessions WHERE initiator = p_device OR responder = p_device
               ORDER BY session_hash FOR UPDATE LOOP
        PERFORM qkms_session_destroy(sid, 'reset', d.device_id);
        n_sess := n_sess + 1;
    END LOOP;
    -- And its key streams (schema/028), not counted among the sessions.
    FOR sid IN SELECT id FROM streams WHERE party_lo = p_device OR party_hi = p_device
               ORDER BY stream_id FOR UPDATE LOOP
        PERFORM qkms_stream_destroy(sid, 'reset', d.device_id);
    END LOOP;
    UPDATE gateway_credentials SET login_hash = NULL, updated_at = now()
     WHERE device_pk = p_device;
    INSERT INTO audit_log (actor, event, device_id, detail)
    VALUES (d.device_id, 'gateway.reset', d.device_id,
            jsonb_build_object('unbound', n_owner, 'sessions_ended', n_sess,
                               'bind_epoch', new_epoch, 'owner_app', prev_owner));
    RETURN QUERY SELECT 'ok', n_owner, n_sess, new_epoch;
END $$;
