-- 026_session_epochs: several keys per session (issue 20, seed 003: the
-- keys for control instructions, a fresh key for the reply direction,
-- re-keying a long session). docs/sessions.md, "Epochs and direction keys".
--
-- A session's keys are named by (epoch, direction): epoch 0, no direction,
-- is the session key of protocol v1, kept in the sessions row as before (a
-- request without epoch or direction is served exactly as before, by
-- qkms_session_key). Every other key of a session is a row of
-- session_keys: the keys of later epochs, and direction keys ('a2b',
-- 'b2a') of any epoch. When a session moves to its epoch 1, its epoch 0 key
-- moves to session_keys too, so that every key of an older epoch is a row
-- there with the time it is destroyed at the latest (destroy_at: the
-- policy's grace), and is destroyed sooner once both parties hold a key of
-- a newer epoch.

-- The policy's terms for them. Defaults: no epoch but the first, no
-- direction keys (what every session was until now).
ALTER TABLE pairing_policies
    ADD COLUMN max_epochs integer NOT NULL DEFAULT 1 CHECK (max_epochs BETWEEN 1 AND 1000000),
    ADD COLUMN directions boolean NOT NULL DEFAULT false,
    ADD COLUMN epoch_grace_s integer NOT NULL DEFAULT 60 CHECK (epoch_grace_s BETWEEN 0 AND 86400);

-- The session's current epoch. Once past 0, the row's own key (epoch 0's)
-- has moved to session_keys: wrapped_key and master_version are NULL.
ALTER TABLE sessions
    ADD COLUMN epoch integer NOT NULL DEFAULT 0 CHECK (epoch >= 0),
    ALTER COLUMN wrapped_key DROP NOT NULL,
    ALTER COLUMN master_version DROP NOT NULL,
    ADD CONSTRAINT sessions_key_whole CHECK ((wrapped_key IS NULL) = (master_version IS NULL));

CREATE TABLE session_keys (
    session_pk      bigint NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    epoch           integer NOT NULL CHECK (epoch >= 0),
    direction       text NOT NULL CHECK (direction IN ('', 'a2b', 'b2a')),
    key_id          uuid NOT NULL UNIQUE,
    key_bits        integer NOT NULL CHECK (key_bits IN (128, 256)),
    -- Wrapped under the master key with the context of the session's hash
    -- and this key's ID (as the session key), so a row's blob cannot pass
    -- for another key's.
    wrapped_key     bytea NOT NULL,
    master_version  integer NOT NULL REFERENCES master_keys (version),
    provenance      text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    initiator_delivered_at timestamptz,
    responder_delivered_at timestamptz,
    -- An older epoch's key: destroyed then at the latest.
    destroy_at      timestamptz,
    PRIMARY KEY (session_pk, epoch, direction)
);
CREATE INDEX session_keys_destroy_at ON session_keys (destroy_at) WHERE destroy_at IS NOT NULL;
CREATE TRIGGER session_keys_master_active BEFORE INSERT OR UPDATE OF master_version ON session_keys
    FOR EACH ROW EXECUTE FUNCTION qkms_master_must_be_active();

-- ---- the request path ---------------------------------------------------------

-- A key of a session that exists, by epoch and direction (p_dir '' for
-- none), for one of its two parties. Authentication, the clock window, the
-- device's standing and the nonce as qkms_session_key; the session is found
-- by its keyed hash only (sessions from before schema 014's keyed hash have
-- no epochs). Checked in this order, nothing written before the nonce:
--   no session (a tombstone: 'ended', else 'unknown_session'); not a party
--   ('not_a_party'), another peer named ('peer_mismatch'); past its
--   lifetime or idle ('ended', destroyed); a direction the policy forbids,
--   or any key but the first in a single-transfer or platform session
--   ('direction_denied' / 'epoch_denied'); an epoch beyond the next
--   ('epoch_skip'); the next epoch beyond the policy's max_epochs
--   ('epoch_limit'); an older epoch's key that is gone ('epoch_ended').
-- A key that does not exist yet is made from the candidate (c_*), which
-- must have the session's key length ('need_key', nothing written) and a
-- master version still active ('master_inactive'). Asking for the next
-- epoch moves the session to it (one key for both parties however they
-- race: the session row is locked); every key of older epochs is then
-- destroyed at the latest after the policy's epoch_grace_s, and at once
-- when both parties hold a key of the new epoch.
CREATE FUNCTION qkms_session_key_ext(
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
    pol pairing_policies;
    refusal text;
    standing text;
    early text;
    mstate text;
    head boolean;
    created boolean := false;
    ended_ids uuid[];
    maxe integer;
    grace integer;
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
    ELSE
        SELECT * INTO pol FROM pairing_policies WHERE name = s.policy;
        -- A policy removed since keeps its sessions' first keys only.
        maxe := CASE WHEN s.delivery = 'delivered' THEN 1 ELSE coalesce(pol.max_epochs, 1) END;
        grace := coalesce(pol.epoch_grace_s, 60);
        head := p_epoch = 0 AND p_dir = '' AND s.epoch = 0;
        IF p_dir <> '' AND (s.delivery = 'delivered' OR NOT coalesce(pol.directions, false)) THEN
            early := 'direction_denied';
        ELSIF p_epoch > s.epoch + 1 THEN
            early := 'epoch_skip';
        ELSIF p_epoch = s.epoch + 1 AND p_epoch >= maxe THEN
            early := CASE WHEN s.delivery = 'delivered' THEN 'epoch_denied' ELSE 'epoch_limit' END;
        ELSIF NOT head THEN
            SELECT * INTO k FROM session_keys
             WHERE session_pk = s.id AND epoch = p_epoch AND direction = p_dir FOR UPDATE;
            IF k.key_id IS NULL THEN
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
        ELSIF early NOT IN ('ended', 'unknown_session') THEN
            INSERT INTO audit_log (actor, event, device_id, detail)
            VALUES (me.device_id, 'session.refused', me.device_id,
                    jsonb_build_object('reason', early, 'session_hash', encode(p_hash, 'hex'),
                                       'epoch', p_epoch, 'direction', p_dir,
                                       'current_epoch', s.epoch));
        END IF;
        RETURN QUERY SELECT early, NULL::uuid, NULL::int, NULL::bytea, NULL::bigint, NULL::text,
                            NULL::text, false, NULL::bytea, NULL::int, s.epoch;
        RETURN;
    END IF;

    IF p_epoch = s.epoch + 1 THEN
        -- The next epoch. The first key moves out of the row (it is now an
        -- older epoch's key, like the others), and every older key gets its
        -- latest destruction time.
        IF s.wrapped_key IS NOT NULL THEN
            INSERT INTO session_keys (session_pk, epoch, direction, key_id, key_bits, wrapped_key,
                                      master_version, provenance, created_at,
                                      initiator_delivered_at, responder_delivered_at)
            VALUES (s.id, 0, '', s.key_id, s.key_bits, s.wrapped_key, s.master_version,
                    s.provenance, s.created_at, s.initiator_delivered_at,
                    s.responder_delivered_at);
        END IF;
        UPDATE session_keys SET destroy_at = now() + make_interval(secs => grace)
         WHERE session_pk = s.id AND epoch < p_epoch AND destroy_at IS NULL;
        UPDATE sessions SET epoch = p_epoch, wrapped_key = NULL, master_version = NULL
         WHERE id = s.id RETURNING * INTO s;
        INSERT INTO audit_log (actor, event, device_id, detail)
        VALUES (me.device_id, 'session.rekeyed', me.device_id,
                jsonb_build_object('session_hash', encode(s.session_hash, 'hex'),
                                   'epoch', p_epoch, 'grace_s', grace));
    END IF;

    IF head THEN
        -- Epoch 0's own key, asked for with an explicit epoch: as the v1
        -- request does.
        IF p_device = s.initiator THEN
            UPDATE sessions SET last_used_at = now(),
                   initiator_delivered_at = coalesce(initiator_delivered_at, now())
             WHERE id = s.id RETURNING * INTO s;
        ELSE
            UPDATE sessions SET last_used_at = now(),
                   responder_delivered_at = coalesce(responder_delivered_at, now())
             WHERE id = s.id RETURNING * INTO s;
        END IF;
        RETURN QUERY SELECT 'ok', s.key_id, s.key_bits, s.wrapped_key,
                            extract(epoch FROM s.expires_at)::bigint, s.policy, s.delivery, false,
                            s.session_hash, 0, s.epoch;
        RETURN;
    END IF;

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
    UPDATE sessions SET last_used_at = now() WHERE id = s.id;
    -- Both parties hold a key of the current epoch: the older epochs' keys
    -- are of no more use to either.
    IF k.epoch = s.epoch AND k.initiator_delivered_at IS NOT NULL
       AND k.responder_delivered_at IS NOT NULL THEN
        WITH gone AS (
            DELETE FROM session_keys WHERE session_pk = s.id AND epoch < s.epoch
            RETURNING key_id
        )
        SELECT array_agg(key_id) INTO ended_ids FROM gone;
        IF ended_ids IS NOT NULL THEN
            INSERT INTO audit_log (actor, event, device_id, detail)
            VALUES ('kmsd', 'session.keys_destroyed', s.initiator_id,
                    jsonb_build_object('session_hash', encode(s.session_hash, 'hex'),
                                       'key_ids', to_jsonb(ended_ids), 'reason', 'superseded',
                                       'epoch', s.epoch));
        END IF;
    END IF;
    RETURN QUERY SELECT 'ok', k.key_id, k.key_bits, k.wrapped_key,
                        extract(epoch FROM s.expires_at)::bigint, s.policy, s.delivery, created,
                        s.session_hash, k.epoch, s.epoch;
END $$;

-- ---- the v1 request on a session past its first epoch ---------------------------
-- 019's qkms_session_key with one more outcome: a session whose own key has
-- moved on (its epoch is past 0) answers 'epoch_ended' to a request without
-- an epoch (the nonce recorded, nothing else written); such a device asks
-- for "epoch": 0 while that key lasts, or for the current epoch. The check
-- costs the hot path one comparison.
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

-- ---- older epochs' keys past their grace ------------------------------------------
-- Destroyed by the reaper's pass, up to p_limit keys, rows a request holds
-- skipped (the next pass takes them); one audit row per session.
CREATE FUNCTION qkms_session_keys_reap(p_limit integer) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    n integer;
BEGIN
    WITH due AS (
        SELECT session_pk, epoch, direction FROM session_keys
         WHERE destroy_at <= now() ORDER BY destroy_at LIMIT p_limit FOR UPDATE SKIP LOCKED
    ), gone AS (
        DELETE FROM session_keys k USING due
         WHERE k.session_pk = due.session_pk AND k.epoch = due.epoch
           AND k.direction = due.direction
        RETURNING k.session_pk, k.key_id
    ), logged AS (
        INSERT INTO audit_log (actor, event, device_id, detail)
        SELECT 'kmsd', 'session.keys_destroyed', s.initiator_id,
               jsonb_build_object('session_hash', encode(s.session_hash, 'hex'),
                                  'key_ids', jsonb_agg(g.key_id ORDER BY g.key_id),
                                  'reason', 'grace', 'epoch', s.epoch)
          FROM gone g JOIN sessions s ON s.id = g.session_pk
         GROUP BY s.id, s.session_hash, s.initiator_id, s.epoch ORDER BY s.id
    )
    SELECT count(*) INTO n FROM gone;
    RETURN n;
END $$;
