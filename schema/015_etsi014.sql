-- 015_etsi014: ETSI GS QKD 014 key delivery (issue 17, docs/etsi014.md).
-- SAEs are registered devices with an SAE ID; a master SAE's Get key makes
-- keys it receives at once and that each named slave SAE may fetch once
-- (Get key with key IDs); a key goes when every slave has it or when its
-- policy's lifetime has passed. Keys exist at rest only wrapped under the
-- master key, in their qkd_keys row.

-- ---- SAE IDs ----------------------------------------------------------------
ALTER TABLE devices
    ADD COLUMN sae_id text UNIQUE CHECK (sae_id ~ '^[!-~]{1,128}$' AND sae_id !~ '[/\\%?#]');

-- ---- keys waiting for their slaves -------------------------------------------------
CREATE TABLE qkd_keys (
    id              bigserial PRIMARY KEY,
    key_id          uuid NOT NULL UNIQUE,
    master_pk       bigint NOT NULL REFERENCES devices (id),
    master_sae      text NOT NULL,          -- denormalized: read on every dec_keys
    size_bits       integer NOT NULL CHECK (size_bits % 8 = 0 AND size_bits BETWEEN 8 AND 512),
    wrapped_key     bytea NOT NULL,
    master_version  integer NOT NULL REFERENCES master_keys (version),
    provenance      text NOT NULL,
    policy          text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    expires_at      timestamptz NOT NULL
);
CREATE INDEX qkd_keys_expires ON qkd_keys (expires_at);
CREATE INDEX qkd_keys_master ON qkd_keys (master_pk);
-- the rotation's rewrap finds keys under a retired master version
CREATE INDEX qkd_keys_master_version ON qkd_keys (master_version);
CREATE TRIGGER qkd_keys_master_active BEFORE INSERT OR UPDATE OF master_version ON qkd_keys
    FOR EACH ROW EXECUTE FUNCTION qkms_master_must_be_active();

-- The slaves of a key (one, or more for a multicast key), each delivered
-- at most once.
CREATE TABLE qkd_key_slaves (
    key_pk          bigint NOT NULL REFERENCES qkd_keys (id) ON DELETE CASCADE,
    slave_pk        bigint NOT NULL REFERENCES devices (id),
    slave_sae       text NOT NULL,
    fetched_at      timestamptz,
    PRIMARY KEY (key_pk, slave_pk)
);
CREATE INDEX qkd_key_slaves_waiting ON qkd_key_slaves (slave_pk) WHERE fetched_at IS NULL;

-- What remains of a key: never the key.
CREATE TABLE qkd_key_tombstones (
    key_id          uuid PRIMARY KEY,
    master_sae      text NOT NULL,
    slaves          text[] NOT NULL,
    created_at      timestamptz NOT NULL,
    ended_at        timestamptz NOT NULL DEFAULT now(),
    reason          text NOT NULL CHECK (reason IN ('delivered', 'expired', 'revoked',
                                                'sae_changed'))
);
CREATE INDEX qkd_key_tombstones_ended ON qkd_key_tombstones (ended_at);

-- ---- Get key (enc_keys) -----------------------------------------------------------
-- A master SAE's request for p_key_ids (made and wrapped by kmsd) for the
-- slaves p_slaves (SAE IDs, the URL's first), in one transaction: every
-- slave a registered active device other than the master, a pairing policy
-- for each pair, room among the keys waiting for the first slave
-- (p_max_waiting); then the keys, their slaves and one audit row. The
-- keys' lifetime is the shortest max_lifetime_s of the pairs' policies.
-- The master's and the slaves' rows are read FOR SHARE, so a revocation
-- running beside it either comes first (and is seen) or waits, then ends
-- these keys too. A pair's policy must allow key source c (the platform's
-- entropy: these keys are made there), as sessions' do.
-- Outcomes: ok (expires: Unix seconds), unauthenticated, invalid,
-- unknown_slave, slave_inactive, policy_denied, source_denied, stock_full
-- (detail says which slave or why). A master version no longer active
-- raises 40001.
CREATE FUNCTION qkms_qkd_enc(p_master bigint, p_slaves text[], p_key_ids uuid[],
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
    IF me.id IS NULL OR me.state <> 'active' OR me.sae_id IS NULL THEN
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
        ELSIF sl.state <> 'active' THEN
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

-- A key's end: the row (and its slaves) deleted, a tombstone and an audit
-- row written, in the caller's transaction.
CREATE FUNCTION qkms_qkd_destroy(p_id bigint, p_reason text, p_actor text)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    k qkd_keys;
    slaves text[];
BEGIN
    SELECT array_agg(slave_sae ORDER BY slave_sae) INTO slaves FROM qkd_key_slaves
     WHERE key_pk = p_id;
    DELETE FROM qkd_keys WHERE id = p_id RETURNING * INTO k;
    IF k.id IS NULL THEN
        RETURN;
    END IF;
    INSERT INTO qkd_key_tombstones (key_id, master_sae, slaves, created_at, reason)
    VALUES (k.key_id, k.master_sae, coalesce(slaves, '{}'), k.created_at, p_reason)
    ON CONFLICT DO NOTHING;
    INSERT INTO audit_log (actor, event, device_id, detail)
    SELECT p_actor, 'qkd.key_destroyed', d.device_id,
           jsonb_build_object('key_id', k.key_id, 'master_sae', k.master_sae,
                              'slaves', to_jsonb(coalesce(slaves, '{}')), 'reason', p_reason)
      FROM devices d WHERE d.id = k.master_pk;
END $$;

-- ---- Get key with key IDs (dec_keys) --------------------------------------------------
-- A slave SAE's request for p_key_ids, all of them master p_master_sae's
-- keys for this slave, not yet fetched by it and not expired: all or
-- nothing. On success every key's row for this slave is marked fetched and
-- its wrapped key returned, in the request's order; a key every slave now
-- holds is destroyed (tombstone 'delivered'). Outcomes: ok (one row per
-- key), unauthenticated, invalid (duplicate IDs), not_yours (never issued,
-- or another pair's), unknown_key (this slave's, but expired or ended
-- before it fetched it), already_fetched (also after every slave had it),
-- master_inactive (its master is suspended); the refusals
-- are one row with the key ID in detail and write nothing but, for
-- not_yours, an audit row.
CREATE FUNCTION qkms_qkd_dec(p_slave bigint, p_master_sae text, p_key_ids uuid[])
RETURNS TABLE (outcome text, detail text, out_key_id uuid, out_wrapped bytea,
               out_size integer, out_master_version integer)
LANGUAGE plpgsql AS $$
DECLARE
    me devices;
    kid uuid;
    kr qkd_keys;
    fetched timestamptz;
    present boolean;
    ended text;
BEGIN
    SELECT * INTO me FROM devices WHERE id = p_slave;
    IF me.id IS NULL OR me.state <> 'active' OR me.sae_id IS NULL THEN
        RETURN QUERY SELECT 'unauthenticated', 'the slave SAE is not an active registered SAE',
                            NULL::uuid, NULL::bytea, NULL::int, NULL::int;
        RETURN;
    END IF;
    IF cardinality(p_key_ids) IS NULL
       OR (SELECT count(DISTINCT x) FROM unnest(p_key_ids) x) <> cardinality(p_key_ids) THEN
        RETURN QUERY SELECT 'invalid', 'no key ID, or a key ID named twice', NULL::uuid,
                            NULL::bytea, NULL::int, NULL::int;
        RETURN;
    END IF;
    -- Lock every named key first, in one order (two slaves of one
    -- multicast key, or two instances, never deadlock on them).
    PERFORM 1 FROM qkd_keys WHERE key_id = ANY (p_key_ids) ORDER BY id FOR UPDATE;
    -- Whose the key is comes first: a key ID of another pair and one never
    -- issued get the same answer (not_yours), so an SAE learns nothing of
    -- keys it was not named for. A key gone since (every slave had it,
    -- expired, ended) is told from its tombstone, to the slaves it named.
    FOREACH kid IN ARRAY p_key_ids LOOP
        SELECT * INTO kr FROM qkd_keys WHERE key_id = kid;
        IF kr.id IS NULL THEN
            SELECT t.reason INTO ended FROM qkd_key_tombstones t
             WHERE t.key_id = kid AND t.master_sae = p_master_sae AND me.sae_id = ANY (t.slaves);
            IF ended IS NOT NULL THEN
                RETURN QUERY SELECT CASE WHEN ended = 'delivered' THEN 'already_fetched'
                                         ELSE 'unknown_key' END,
                                    kid::text, NULL::uuid, NULL::bytea, NULL::int, NULL::int;
                RETURN;
            END IF;
        ELSE
            SELECT true, ks.fetched_at INTO present, fetched FROM qkd_key_slaves ks
             WHERE ks.key_pk = kr.id AND ks.slave_pk = me.id;
        END IF;
        IF kr.id IS NULL OR kr.master_sae <> p_master_sae OR present IS NULL THEN
            INSERT INTO audit_log (actor, event, device_id, detail)
            VALUES (me.device_id, 'qkd.refused', me.device_id,
                    jsonb_build_object('reason', 'not_yours', 'slave_sae', me.sae_id,
                                       'named_master_sae', p_master_sae, 'key_id', kid));
            RETURN QUERY SELECT 'not_yours', kid::text, NULL::uuid, NULL::bytea, NULL::int,
                                NULL::int;
            RETURN;
        END IF;
        IF kr.expires_at <= now() THEN
            RETURN QUERY SELECT 'unknown_key', kid::text, NULL::uuid, NULL::bytea, NULL::int,
                                NULL::int;
            RETURN;
        END IF;
        IF fetched IS NOT NULL THEN
            RETURN QUERY SELECT 'already_fetched', kid::text, NULL::uuid, NULL::bytea, NULL::int,
                                NULL::int;
            RETURN;
        END IF;
        IF (SELECT state FROM devices WHERE id = kr.master_pk) <> 'active' THEN
            RETURN QUERY SELECT 'master_inactive', kid::text, NULL::uuid, NULL::bytea, NULL::int,
                                NULL::int;
            RETURN;
        END IF;
        present := NULL;
    END LOOP;
    UPDATE qkd_key_slaves ks SET fetched_at = now()
      FROM qkd_keys k WHERE k.id = ks.key_pk AND k.key_id = ANY (p_key_ids)
       AND ks.slave_pk = me.id;
    INSERT INTO audit_log (actor, event, device_id, detail)
    VALUES (me.device_id, 'qkd.keys_fetched', me.device_id,
            jsonb_build_object('slave_sae', me.sae_id, 'master_sae', p_master_sae,
                               'key_ids', to_jsonb(p_key_ids)));
    RETURN QUERY
        SELECT 'ok', NULL::text, k.key_id, k.wrapped_key, k.size_bits, k.master_version
          FROM unnest(p_key_ids) WITH ORDINALITY AS u(kid, ord)
          JOIN qkd_keys k ON k.key_id = u.kid ORDER BY u.ord;
    -- Single transfer: a key every slave holds is gone (after its rows
    -- above were read into the result).
    PERFORM qkms_qkd_destroy(k.id, 'delivered', 'kmsd') FROM qkd_keys k
      WHERE k.key_id = ANY (p_key_ids)
        AND NOT EXISTS (SELECT 1 FROM qkd_key_slaves ks WHERE ks.key_pk = k.id
                                                          AND ks.fetched_at IS NULL);
END $$;

-- ---- expiry ---------------------------------------------------------------------
-- Up to p_limit keys past their lifetime destroyed (tombstone 'expired').
-- Returns how many.
CREATE FUNCTION qkms_qkd_reap(p_limit integer) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    n integer := 0;
    r record;
BEGIN
    FOR r IN SELECT id FROM qkd_keys WHERE expires_at <= now() ORDER BY expires_at
             LIMIT p_limit FOR UPDATE SKIP LOCKED LOOP
        PERFORM qkms_qkd_destroy(r.id, 'expired', 'kmsd');
        n := n + 1;
    END LOOP;
    RETURN n;
END $$;
