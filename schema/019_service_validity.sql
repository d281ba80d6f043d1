-- 019_service_validity: a device's service has an end (issue 18, seed 004,
-- docs/gateways.md "Service validity"). A gateway's service runs two years
-- from registration unless an operator renews it; past its end the device
-- is refused on every door that hands out keys (403 service_expired; the
-- ETSI door's 401), as a suspended device is. Ending a session stays
-- allowed, as for a suspended device: it only destroys a key.

-- A type's default service length; NULL: no end (every type but gateway,
-- as before).
ALTER TABLE device_types
    ADD COLUMN service_days integer CHECK (service_days BETWEEN 1 AND 36500);
UPDATE device_types SET service_days = 730 WHERE name = 'gateway';

-- A device's end of service (NULL: none) and when the maintenance pass last
-- warned about it. Devices registered before this migration keep no end:
-- giving them one would cut them off on a date nobody chose.
ALTER TABLE devices
    ADD COLUMN service_until timestamptz,
    ADD COLUMN service_warned_at timestamptz;
-- The warning pass and its gauge read the ends to come.
CREATE INDEX devices_service_until ON devices (service_until)
    WHERE service_until IS NOT NULL AND state <> 'revoked';

-- Whether a device may be served: NULL, or why not (device_inactive: it is
-- suspended or revoked, or no device at all; service_expired: its service
-- ended).
CREATE FUNCTION qkms_device_standing(d devices)
RETURNS text LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN d.state IS DISTINCT FROM 'active' THEN 'device_inactive'
                WHEN d.service_until <= now() THEN 'service_expired' END
$$;

CREATE FUNCTION qkms_rfc3339(t timestamptz)
RETURNS text LANGUAGE sql STABLE AS $$
    SELECT to_char(t AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"')
$$;

-- 014's function, with the device's standing instead of its state: new
-- outcome service_expired (the nonce recorded, out_policy its end as RFC
-- 3339); a peer out of service is peer_inactive.
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

-- 015's function: neither the master nor a slave may be out of service
-- (the master is refused as unauthenticated, the door having checked it
-- first; a slave out of service is slave_inactive).
CREATE OR REPLACE FUNCTION qkms_qkd_enc(p_master bigint, p_slaves text[], p_key_ids uuid[],
                             p_wrapped bytea[], p_master_version integer, p_provenance text[],
                             p_bits integer, p_max_waiting integer)
RETURNS TABLE (outcome text, detail text, expires bigint)
LANGUAGE plpgsql AS $$
DECLARE
    me devices;
    sl devices;
    pol pairing_policies;
    pks bigint[] := '{}';
    spk bigint;
    saes text[] := '{}';
    ttl integer;
    polname text;
    waiting bigint;
    until timestamptz;
BEGIN
    SELECT * INTO me FROM devices WHERE id = p_master FOR SHARE;
    IF me.id IS NULL OR qkms_device_standing(me) IS NOT NULL OR me.sae_id IS NULL THEN
        RETURN QUERY SELECT 'unauthenticated', 'the master SAE is not an active registered SAE', NULL::bigint;
        RETURN;
    END IF;
    IF cardinality(p_slaves) IS NULL OR cardinality(p_key_ids) IS NULL
       OR cardinality(p_key_ids) <> cardinality(p_wrapped)
       OR cardinality(p_key_ids) <> cardinality(p_provenance) THEN
        RETURN QUERY SELECT 'invalid', 'no slave SAE or no key', NULL::bigint;
        RETURN;
    END IF;
    IF (SELECT count(DISTINCT x) FROM unnest(p_slaves) x) <> cardinality(p_slaves) THEN
        RETURN QUERY SELECT 'invalid', 'a slave SAE ID is named twice', NULL::bigint;
        RETURN;
    END IF;
    FOR i IN 1 .. cardinality(p_slaves) LOOP
        SELECT * INTO sl FROM devices WHERE sae_id = p_slaves[i] FOR SHARE;
        IF NOT FOUND THEN
            RETURN QUERY SELECT 'unknown_slave', p_slaves[i], NULL::bigint;
            RETURN;
        ELSIF sl.id = me.id THEN
            RETURN QUERY SELECT 'invalid', 'the master SAE cannot be its own slave', NULL::bigint;
            RETURN;
        ELSIF qkms_device_standing(sl) IS NOT NULL THEN
            RETURN QUERY SELECT 'slave_inactive', p_slaves[i], NULL::bigint;
            RETURN;
        END IF;
        pol := qkms_policy_for(me, sl);
        IF pol.id IS NULL THEN
            INSERT INTO audit_log (actor, event, device_id, detail)
            VALUES (me.device_id, 'qkd.refused', me.device_id,
                    jsonb_build_object('reason', 'policy_denied', 'master_sae', me.sae_id,
                                       'slave_sae', p_slaves[i]));
            RETURN QUERY SELECT 'policy_denied', p_slaves[i], NULL::bigint;
            RETURN;
        END IF;
        IF NOT 'c' = ANY (pol.key_sources) THEN
            RETURN QUERY SELECT 'source_denied', p_slaves[i], NULL::bigint;
            RETURN;
        END IF;
        ttl := least(coalesce(ttl, pol.max_lifetime_s), pol.max_lifetime_s);
        polname := coalesce(polname, pol.name);
        pks := pks || sl.id;
        saes := saes || sl.sae_id;
    END LOOP;
    -- Room for the keys with every slave, counted under a lock per pair so
    -- that requests side by side (on any instance) cannot both pass.
    -- The locks are taken in one order (the slaves' row IDs), so two
    -- multicast requests naming the same slaves in other orders never
    -- deadlock.
    FOR spk IN SELECT x FROM unnest(pks) x ORDER BY x LOOP
        PERFORM pg_advisory_xact_lock(hashtextextended('qkd:' || me.id || ':' || spk, 0));
        SELECT count(*) INTO waiting FROM qkd_key_slaves ks JOIN qkd_keys k ON k.id = ks.key_pk
         WHERE k.master_pk = me.id AND ks.slave_pk = spk AND ks.fetched_at IS NULL
           AND k.expires_at > now();
        IF waiting + cardinality(p_key_ids) > p_max_waiting THEN
            RETURN QUERY SELECT 'stock_full', waiting::text, NULL::bigint;
            RETURN;
        END IF;
    END LOOP;
    until := now() + make_interval(secs => ttl);
    WITH k AS (
        INSERT INTO qkd_keys (key_id, master_pk, master_sae, size_bits, wrapped_key,
                              master_version, provenance, policy, expires_at)
        SELECT u.kid, me.id, me.sae_id, p_bits, u.w, p_master_version, u.prov, polname, until
          FROM unnest(p_key_ids, p_wrapped, p_provenance) AS u(kid, w, prov)
        RETURNING id
    )
    INSERT INTO qkd_key_slaves (key_pk, slave_pk, slave_sae)
    SELECT k.id, s.pk, s.sae FROM k CROSS JOIN unnest(pks, saes) AS s(pk, sae);
    INSERT INTO audit_log (actor, event, device_id, detail)
    VALUES (me.device_id, 'qkd.keys_issued', me.device_id,
            jsonb_build_object('master_sae', me.sae_id, 'slaves', to_jsonb(saes),
                               'key_ids', to_jsonb(p_key_ids), 'size', p_bits,
                               'policy', polname,
                               'provenance', (SELECT to_jsonb(array_agg(DISTINCT x))
                                                FROM unnest(p_provenance) x)));
    RETURN QUERY SELECT 'ok', NULL::text, extract(epoch FROM until)::bigint;
END $$;
