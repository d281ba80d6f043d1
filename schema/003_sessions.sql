-- 003_sessions: paired session keys by session ID, pairing policies,
-- replay protection, and tombstones of ended sessions.

CREATE TABLE pairing_policies (
    id              bigserial PRIMARY KEY,
    name            text NOT NULL UNIQUE CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$'),
    type_a          text NOT NULL,   -- a device type, or '*'
    type_b          text NOT NULL,
    group_a         text,            -- NULL: same group as the peer (scope = same-group)
    group_b         text,
    key_bits        integer NOT NULL DEFAULT 128 CHECK (key_bits IN (128, 256)),
    idle_timeout_s  integer NOT NULL DEFAULT 300 CHECK (idle_timeout_s BETWEEN 1 AND 86400),
    max_lifetime_s  integer NOT NULL DEFAULT 3600 CHECK (max_lifetime_s BETWEEN 1 AND 604800),
    delivery        text NOT NULL DEFAULT 'session' CHECK (delivery IN ('session', 'delivered')),
    created_at      timestamptz NOT NULL DEFAULT now(),
    created_by      text,
    CHECK ((group_a IS NULL) = (group_b IS NULL))
);

-- A live session: the session key exists only here, wrapped under the
-- master key, until the session ends.
CREATE TABLE sessions (
    id              bigserial PRIMARY KEY,
    session_hash    bytea NOT NULL UNIQUE CHECK (length(session_hash) = 32),
    session_id      text NOT NULL,
    key_id          uuid NOT NULL,
    key_bits        integer NOT NULL CHECK (key_bits IN (128, 256)),
    wrapped_key     bytea NOT NULL,
    master_version  integer NOT NULL REFERENCES master_keys (version),
    provenance      text NOT NULL,
    initiator       bigint NOT NULL REFERENCES devices (id),
    responder       bigint NOT NULL REFERENCES devices (id),
    initiator_id    text NOT NULL,   -- device IDs, denormalized: read on every request
    responder_id    text NOT NULL,
    policy          text NOT NULL,
    delivery        text NOT NULL CHECK (delivery IN ('session', 'delivered')),
    created_at      timestamptz NOT NULL DEFAULT now(),
    last_used_at    timestamptz NOT NULL DEFAULT now(),
    idle_timeout_s  integer NOT NULL,
    expires_at      timestamptz NOT NULL,
    initiator_delivered_at timestamptz,
    responder_delivered_at timestamptz,
    CHECK (initiator <> responder)
);
-- Deliberately no other indexes: every index costs each session's insert,
-- updates and delete on the hot path, while the queries that would use them
-- (revocation, the reaper, the admin list) are rare and scan only live
-- sessions. Measured in docs/performance.md.

-- What remains of an ended session: never the key, never the raw ID.
CREATE TABLE session_tombstones (
    session_hash    bytea PRIMARY KEY,
    key_id          uuid NOT NULL,
    initiator       text NOT NULL,
    responder       text NOT NULL,
    created_at      timestamptz NOT NULL,
    ended_at        timestamptz NOT NULL DEFAULT now(),
    reason          text NOT NULL CHECK (reason IN ('ended_by_party', 'ended_by_operator',
                        'delivered', 'idle_timeout', 'max_lifetime', 'revoked'))
);
CREATE INDEX session_tombstones_ended ON session_tombstones (ended_at);

-- Request nonces seen inside the clock window (replay protection).
CREATE TABLE request_nonces (
    device_pk       bigint NOT NULL REFERENCES devices (id),
    nonce           bytea NOT NULL,
    seen_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (device_pk, nonce)
);
CREATE INDEX request_nonces_seen ON request_nonces (seen_at);

-- Destroy one live session: the wrapped key goes in the same transaction
-- that writes the tombstone and the audit row.
CREATE FUNCTION qkms_session_destroy(p_id bigint, p_reason text, p_actor text)
RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    s record;
BEGIN
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
                               'reason', p_reason));
    RETURN true;
END $$;

-- The pairing policy that lets device a pair with device b (most specific
-- first), or none: default deny, and never across groups unless a policy
-- names both groups.
CREATE FUNCTION qkms_policy_for(a devices, b devices)
RETURNS pairing_policies LANGUAGE sql STABLE AS $$
    SELECT p.* FROM pairing_policies p
    WHERE (p.type_a IN ('*', a.type) AND p.type_b IN ('*', b.type)
           AND ((p.group_a IS NULL AND a.group_label = b.group_label)
                OR (p.group_a = a.group_label AND p.group_b = b.group_label)))
       OR (p.type_a IN ('*', b.type) AND p.type_b IN ('*', a.type)
           AND ((p.group_a IS NULL AND a.group_label = b.group_label)
                OR (p.group_a = b.group_label AND p.group_b = a.group_label)))
    ORDER BY (p.type_a <> '*')::int + (p.type_b <> '*')::int + (p.group_a IS NOT NULL)::int DESC, p.id
    LIMIT 1
$$;

-- Whether a device and one of its keys may authenticate a request now:
-- NULL if so, else the reason. kmsd may have authenticated the request with
-- a cached copy of the wrapped key; this check, in the request's own
-- transaction, is the authoritative one (revocation, rotation, expiry).
CREATE FUNCTION qkms_auth_refusal(d devices, p_key_index integer)
RETURNS text LANGUAGE sql STABLE AS $$
    SELECT CASE
        WHEN d.id IS NULL THEN 'unknown device'
        WHEN d.state = 'revoked' THEN 'device revoked'
        WHEN k.state IS NULL THEN 'unknown key index'
        WHEN k.state <> 'active' THEN 'key ' || k.state
        WHEN NOT (k.not_before <= now() AND k.not_after > now()) THEN 'key outside its validity'
    END
    FROM (SELECT 1) one
    LEFT JOIN device_keys k ON k.device_pk = d.id AND k.key_index = p_key_index
$$;

-- One authenticated key request, in one round trip and one transaction.
-- Outcomes: ok, need_key (no session yet: call again with a candidate key of
-- out_key_bits), unauthenticated (reason in out_policy), device_inactive,
-- replay, ended, not_a_party, peer_mismatch, unknown_peer, peer_inactive,
-- policy_denied.
CREATE FUNCTION qkms_session_key(
    p_device bigint, p_key_index integer, p_nonce bytea, p_hash bytea, p_session_id text,
    p_peer text, p_want_delivered boolean,
    c_key_id uuid, c_wrapped bytea, c_master integer, c_provenance text, c_bits integer)
RETURNS TABLE (outcome text, out_key_id uuid, out_key_bits integer, out_wrapped bytea,
               out_expires bigint, out_policy text, out_delivery text, out_created boolean)
LANGUAGE plpgsql AS $$
DECLARE
    me devices;
    peer devices;
    s sessions;
    pol pairing_policies;
    created boolean := false;
    refusal text;
    me_device_id text;
    me_state text;
BEGIN
    -- Device, key state and the authoritative check in one statement.
    SELECT d.device_id, d.state, CASE
            WHEN d.state = 'revoked' THEN 'device revoked'
            WHEN k.state IS NULL THEN 'unknown key index'
            WHEN k.state <> 'active' THEN 'key ' || k.state
            WHEN NOT (k.not_before <= now() AND k.not_after > now()) THEN 'key outside its validity'
        END
      INTO me_device_id, me_state, refusal
      FROM devices d LEFT JOIN device_keys k ON k.device_pk = d.id AND k.key_index = p_key_index
     WHERE d.id = p_device;
    IF NOT FOUND OR refusal IS NOT NULL THEN
        RETURN QUERY SELECT 'unauthenticated', NULL::uuid, NULL::int, NULL::bytea, NULL::bigint,
                            coalesce(refusal, 'unknown device'), NULL::text, false;
        RETURN;
    END IF;
    IF me_state <> 'active' THEN
        RETURN QUERY SELECT 'device_inactive', NULL::uuid, NULL::int, NULL::bytea, NULL::bigint, me_state, NULL::text, false;
        RETURN;
    END IF;
    SELECT * INTO s FROM sessions WHERE session_hash = p_hash FOR UPDATE;
    IF NOT FOUND THEN
        IF EXISTS (SELECT 1 FROM session_tombstones WHERE session_hash = p_hash) THEN
            RETURN QUERY SELECT 'ended', NULL::uuid, NULL::int, NULL::bytea, NULL::bigint, NULL::text, NULL::text, false;
            RETURN;
        END IF;
        SELECT * INTO me FROM devices WHERE id = p_device;  -- the whole row, for the policy
        SELECT * INTO peer FROM devices WHERE device_id = p_peer;
        IF NOT FOUND OR peer.id = me.id THEN
            RETURN QUERY SELECT 'unknown_peer', NULL::uuid, NULL::int, NULL::bytea, NULL::bigint, NULL::text, NULL::text, false;
            RETURN;
        END IF;
        IF peer.state <> 'active' THEN
            RETURN QUERY SELECT 'peer_inactive', NULL::uuid, NULL::int, NULL::bytea, NULL::bigint, NULL::text, NULL::text, false;
            RETURN;
        END IF;
        pol := qkms_policy_for(me, peer);
        IF pol.id IS NULL THEN
            INSERT INTO audit_log (actor, event, device_id, detail)
            VALUES (me.device_id, 'session.refused', me.device_id,
                    jsonb_build_object('reason', 'policy_denied', 'peer', peer.device_id,
                                       'session_hash', encode(p_hash, 'hex')));
            RETURN QUERY SELECT 'policy_denied', NULL::uuid, NULL::int, NULL::bytea, NULL::bigint, NULL::text, NULL::text, false;
            RETURN;
        END IF;
        IF c_wrapped IS NULL OR c_bits <> pol.key_bits THEN
            RETURN QUERY SELECT 'need_key', NULL::uuid, pol.key_bits, NULL::bytea, NULL::bigint, pol.name, NULL::text, false;
            RETURN;
        END IF;
    END IF;

    -- Replay protection: each nonce once per device inside the window.
    -- Nothing has been written before this point.
    INSERT INTO request_nonces (device_pk, nonce) VALUES (p_device, p_nonce) ON CONFLICT DO NOTHING;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'replay', NULL::uuid, NULL::int, NULL::bytea, NULL::bigint, NULL::text, NULL::text, false;
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
            RETURN QUERY SELECT 'ended', NULL::uuid, NULL::int, NULL::bytea, NULL::bigint, NULL::text, NULL::text, false;
            RETURN;
        END IF;
    END IF;

    IF p_device <> s.initiator AND p_device <> s.responder THEN
        INSERT INTO audit_log (actor, event, device_id, detail)
        VALUES (me_device_id, 'session.refused', me_device_id,
                jsonb_build_object('reason', 'not_a_party', 'session_hash', encode(p_hash, 'hex'),
                                   'initiator', s.initiator_id, 'responder', s.responder_id));
        RETURN QUERY SELECT 'not_a_party', NULL::uuid, NULL::int, NULL::bytea, NULL::bigint, NULL::text, NULL::text, false;
        RETURN;
    END IF;
    IF (p_device = s.initiator AND p_peer <> s.responder_id)
       OR (p_device = s.responder AND p_peer <> s.initiator_id) THEN
        INSERT INTO audit_log (actor, event, device_id, detail)
        VALUES (me_device_id, 'session.refused', me_device_id,
                jsonb_build_object('reason', 'peer_mismatch', 'session_hash', encode(p_hash, 'hex'),
                                   'named_peer', p_peer));
        RETURN QUERY SELECT 'peer_mismatch', NULL::uuid, NULL::int, NULL::bytea, NULL::bigint, NULL::text, NULL::text, false;
        RETURN;
    END IF;
    IF s.expires_at <= now() OR s.last_used_at + make_interval(secs => s.idle_timeout_s) <= now() THEN
        PERFORM qkms_session_destroy(s.id,
            CASE WHEN s.expires_at <= now() THEN 'max_lifetime' ELSE 'idle_timeout' END, 'kmsd');
        RETURN QUERY SELECT 'ended', NULL::uuid, NULL::int, NULL::bytea, NULL::bigint, NULL::text, NULL::text, false;
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
                        extract(epoch FROM s.expires_at)::bigint, s.policy, s.delivery, created;
END $$;

-- An authenticated end request from a party.
-- Returns ok, replay, ended, unknown, not_a_party, or 'unauthenticated: <why>'.
-- A suspended device may still end its sessions: ending only destroys.
CREATE FUNCTION qkms_session_end(p_device bigint, p_key_index integer, p_nonce bytea, p_hash bytea)
RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    s sessions;
    d devices;
    me text;
    refusal text;
BEGIN
    SELECT * INTO d FROM devices WHERE id = p_device;
    refusal := qkms_auth_refusal(d, p_key_index);
    IF refusal IS NOT NULL THEN
        RETURN 'unauthenticated: ' || refusal;
    END IF;
    INSERT INTO request_nonces (device_pk, nonce) VALUES (p_device, p_nonce) ON CONFLICT DO NOTHING;
    IF NOT FOUND THEN
        RETURN 'replay';
    END IF;
    SELECT * INTO s FROM sessions WHERE session_hash = p_hash FOR UPDATE;
    IF NOT FOUND THEN
        RETURN CASE WHEN EXISTS (SELECT 1 FROM session_tombstones WHERE session_hash = p_hash)
                    THEN 'ended' ELSE 'unknown' END;
    END IF;
    me := d.device_id;
    IF p_device <> s.initiator AND p_device <> s.responder THEN
        INSERT INTO audit_log (actor, event, device_id, detail)
        VALUES (me, 'session.refused', me,
                jsonb_build_object('reason', 'not_a_party', 'op', 'end',
                                   'session_hash', encode(p_hash, 'hex')));
        RETURN 'not_a_party';
    END IF;
    PERFORM qkms_session_destroy(s.id, 'ended_by_party', me);
    RETURN 'ok';
END $$;

-- Destroy sessions past their idle timeout or lifetime; forget old nonces
-- and tombstones. Returns the number of sessions destroyed.
CREATE FUNCTION qkms_session_reap(p_nonce_window_s integer, p_tombstone_days integer, p_limit integer)
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
    DELETE FROM request_nonces WHERE seen_at < now() - make_interval(secs => p_nonce_window_s);
    IF p_tombstone_days > 0 THEN
        DELETE FROM session_tombstones WHERE ended_at < now() - make_interval(days => p_tombstone_days);
    END IF;
    RETURN n;
END $$;
