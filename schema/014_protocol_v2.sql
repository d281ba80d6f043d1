-- 014_protocol_v2: device protocol v2 (issue 16, docs/protocol.md "qkms
-- device protocol v2"): the platform's signing and key-agreement keys,
-- requests authenticated by a device certificate instead of a device key,
-- the key source a session's key was made from, and the sources a pairing
-- policy allows.

-- ---- the platform's protocol v2 keys ------------------------------------------
-- One version = a signing key and a key-agreement key, both P-256 pairs in
-- the token (labels in label), each with a certificate from the platform CA.
-- Public data only. A retired version keeps answering devices that still pin
-- it until overlap_until; then its token objects are destroyed (state
-- 'destroyed', the certificates kept for the record).
CREATE TABLE platform_keys (
    version        integer NOT NULL CHECK (version > 0),
    purpose        text NOT NULL CHECK (purpose IN ('sign', 'agree')),
    label          text NOT NULL UNIQUE,
    state          text NOT NULL DEFAULT 'active'
                   CHECK (state IN ('active', 'retired', 'destroyed')),
    certificate    bytea NOT NULL,               -- DER, issued by the platform CA
    sha256         bytea NOT NULL UNIQUE CHECK (length(sha256) = 32),
    not_after      timestamptz NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    retired_at     timestamptz,
    overlap_until  timestamptz,
    PRIMARY KEY (version, purpose),
    CHECK ((state = 'active') = (retired_at IS NULL))
);
CREATE UNIQUE INDEX platform_keys_one_active ON platform_keys (purpose) WHERE state = 'active';

-- ---- key sources -----------------------------------------------------------
-- a: the initiator's and the platform's randoms; b: the initiator's random;
-- c: the platform's entropy sources (every v1 session).
ALTER TABLE pairing_policies
    ADD COLUMN key_sources text[] NOT NULL DEFAULT '{a,b,c}'
    CHECK (cardinality(key_sources) BETWEEN 1 AND 3 AND key_sources <@ '{a,b,c}');
-- A session keeps the sources its policy allowed when it was created, as it
-- keeps the policy's other terms: changing policies later does not change
-- live sessions (docs/sessions.md).
ALTER TABLE sessions
    ADD COLUMN key_source text NOT NULL DEFAULT 'c' CHECK (key_source IN ('a', 'b', 'c')),
    ADD COLUMN key_sources text[] NOT NULL DEFAULT '{a,b,c}';

-- ---- the platform as a peer ---------------------------------------------------
-- A v2 request may name the platform itself as its session's peer: a key
-- shared by one device and the platform (seed 004's gateway login keys are
-- such). Its session row has no responder (NULL) and responder_id
-- '@platform'; it is created delivered to the platform (the platform holds
-- it), always in delivery mode 'session', and is otherwise a session like
-- any other: ended by its device, by timeout, by revocation, reaped,
-- rewrapped, tombstoned. The policy that allows it names the pseudo type
-- '@platform' on one side ('@' is in no device type's name).
ALTER TABLE sessions ALTER COLUMN responder DROP NOT NULL;

CREATE FUNCTION qkms_policy_for_platform(d devices)
RETURNS pairing_policies LANGUAGE sql STABLE AS $$
    SELECT p.* FROM pairing_policies p
    WHERE (p.type_a IN ('*', d.type) AND p.type_b = '@platform')
       OR (p.type_b IN ('*', d.type) AND p.type_a = '@platform')
    ORDER BY (p.type_a = d.type OR p.type_b = d.type)::int DESC, p.id
    LIMIT 1
$$;

-- ---- certificate authentication ----------------------------------------------
-- The authoritative re-check of a request signed under a device certificate
-- (modes 1 and 2), in the request's transaction: NULL if the device and the
-- certificate (by the SHA-256 of its DER) may authenticate now, else why.
CREATE FUNCTION qkms_cert_refusal(d devices, p_cert bytea)
RETURNS text LANGUAGE sql STABLE AS $$
    SELECT CASE
        WHEN d.id IS NULL THEN 'unknown device'
        WHEN d.state = 'revoked' THEN 'device revoked'
        WHEN c.id IS NULL THEN 'certificate not on record for this device'
        WHEN c.state <> 'active' THEN 'certificate ' || c.state
        WHEN NOT (c.not_before <= now() AND c.not_after > now()) THEN 'certificate outside its validity'
    END
    FROM (SELECT 1) one
    LEFT JOIN certificates c ON c.sha256 = p_cert AND c.device_pk = d.id
$$;

-- A v2 request refused before the session functions saw it (a signature
-- or certificate that does not authenticate, an unknown suite or platform
-- key, a client random that does not decrypt): when it names a registered
-- device, its nonce is recorded (if its ts is in the window) so that the
-- same request cannot be tried again for another answer, and the refusal
-- is audited (p_authenticated: whether the request proved its device; if
-- not, the audit row's actor is 'unauthenticated'). Returns 'replay' when
-- the nonce was already used, 'stale'
-- when the ts is outside the window (nothing recorded but the audit row),
-- 'unknown_device', else 'recorded'.
CREATE FUNCTION qkms_v2_refused(p_device_id text, p_nonce bytea, p_ts bigint, p_skew integer,
                                p_reason text, p_detail jsonb, p_authenticated boolean)
RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    d devices;
    r text := 'recorded';
BEGIN
    SELECT * INTO d FROM devices WHERE device_id = p_device_id;
    IF NOT FOUND THEN
        RETURN 'unknown_device';
    END IF;
    IF p_nonce IS NULL OR p_ts IS NULL OR NOT qkms_ts_ok(p_ts, p_skew) THEN
        r := 'stale';
    ELSIF NOT qkms_nonce_take(d.id, p_nonce, p_ts, p_skew) THEN
        RETURN 'replay';
    END IF;
    -- An authentication failure names a device that proved nothing: the
    -- row is filed under the device, but its actor is nobody's.
    INSERT INTO audit_log (actor, event, device_id, detail)
    VALUES (CASE WHEN p_authenticated THEN d.device_id ELSE 'unauthenticated' END,
            'session.refused', d.device_id,
            jsonb_build_object('reason', p_reason, 'protocol', 2,
                               'authenticated', p_authenticated) || coalesce(p_detail, '{}'));
    RETURN r;
END $$;

-- ---- one key request ---------------------------------------------------------
-- 010's function with two new parameters: p_cert, the SHA-256 of the
-- device certificate a v2 request was signed under (NULL: authenticated by
-- the device key of p_key_index, as v1), and p_source, the key source the
-- request asks for (NULL: 'c', v1). New outcome: source_denied (the nonce
-- recorded, audited). The session row records its key source.
DROP FUNCTION qkms_session_key_batch(bigint[], integer[], text[], bigint[], integer[], text[],
                                     text[], text[], text[], boolean[], uuid[], text[],
                                     integer[], text[], integer[]);
DROP FUNCTION qkms_session_key(bigint, integer, bytea, bigint, integer, bytea, bytea, text, text,
                               boolean, uuid, bytea, integer, text, integer);
CREATE FUNCTION qkms_session_key(
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
            IF p_peer IS NULL THEN
                -- The platform itself is the peer (a device-platform channel).
                pol := qkms_policy_for_platform(me);
            ELSE
                SELECT * INTO peer FROM devices WHERE device_id = p_peer;
                IF NOT FOUND OR peer.id = me.id THEN
                    early := 'unknown_peer';
                ELSIF peer.state <> 'active' THEN
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
                              reap_at, key_source, key_sources, responder_delivered_at)
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
                CASE WHEN p_peer IS NULL THEN now() END)
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

-- 008's batch, with the two new arguments (p_cert hex-encoded like the others).
CREATE FUNCTION qkms_session_key_batch(
    p_device bigint[], p_key_index integer[], p_nonce text[], p_ts bigint[], p_skew integer[],
    p_hash text[], p_legacy text[], p_session_id text[], p_peer text[],
    p_want_delivered boolean[], c_key_id uuid[], c_wrapped text[], c_master integer[],
    c_provenance text[], c_bits integer[], p_cert text[], p_source text[])
RETURNS TABLE (i integer, outcome text, out_key_id uuid, out_key_bits integer,
               out_wrapped bytea, out_expires bigint, out_policy text, out_delivery text,
               out_created boolean, out_hash bytea)
LANGUAGE plpgsql AS $$
DECLARE
    e record;
BEGIN
    PERFORM set_config('lock_timeout', '1000', true);
    FOR e IN
        SELECT *
          FROM unnest(p_device, p_key_index, p_nonce, p_ts, p_skew, p_hash, p_legacy,
                      p_session_id, p_peer, p_want_delivered, c_key_id, c_wrapped, c_master,
                      c_provenance, c_bits, p_cert, p_source) WITH ORDINALITY
               AS u(device, key_index, nonce, ts, skew, hash, legacy, session_id, peer,
                    want_delivered, key_id, wrapped, master, provenance, bits, cert, source, ord)
         ORDER BY u.hash, u.ord
    LOOP
        RETURN QUERY
            SELECT e.ord::integer, k.*
              FROM qkms_session_key(e.device, e.key_index, decode(e.nonce, 'hex'), e.ts, e.skew,
                                    decode(e.hash, 'hex'), decode(e.legacy, 'hex'), e.session_id,
                                    e.peer, e.want_delivered, e.key_id, decode(e.wrapped, 'hex'),
                                    e.master, e.provenance, e.bits, decode(e.cert, 'hex'),
                                    e.source) k;
    END LOOP;
END $$;

-- ---- ending --------------------------------------------------------------------
-- 006's function with p_cert as in qkms_session_key.
DROP FUNCTION qkms_session_end(bigint, integer, bytea, bigint, integer, bytea, bytea);
CREATE FUNCTION qkms_session_end(p_device bigint, p_key_index integer, p_nonce bytea,
                                 p_ts bigint, p_skew integer, p_hash bytea, p_legacy bytea,
                                 p_cert bytea)
RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    s sessions;
    d devices;
    refusal text;
BEGIN
    SELECT * INTO d FROM devices WHERE id = p_device;
    refusal := CASE WHEN p_cert IS NULL THEN qkms_auth_refusal(d, p_key_index)
                    ELSE qkms_cert_refusal(d, p_cert) END;
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
    IF p_device IS DISTINCT FROM s.initiator AND p_device IS DISTINCT FROM s.responder THEN
        INSERT INTO audit_log (actor, event, device_id, detail)
        VALUES (d.device_id, 'session.refused', d.device_id,
                jsonb_build_object('reason', 'not_a_party', 'op', 'end',
                                   'session_hash', encode(s.session_hash, 'hex')));
        RETURN 'not_a_party';
    END IF;
    PERFORM qkms_session_destroy(s.id, 'ended_by_party', d.device_id);
    RETURN 'ok';
END $$;

