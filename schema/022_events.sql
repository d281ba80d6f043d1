-- 022_events: the events pushed to owners (issue 18, seed 004,
-- docs/gateways.md "Events"): a key or the service about to expire, a
-- gateway bound, reset or revoked, a login locked. An outbox: each event is
-- written in the transaction of the change itself (by a trigger on the
-- audit row that change writes), with a delivery row for each registered
-- webhook, then delivered by kmsd's worker, and readable by the owner's app.

CREATE TABLE events (
    id         bigserial PRIMARY KEY,
    event_id   uuid NOT NULL UNIQUE DEFAULT gen_random_uuid(),
    type       text NOT NULL,
    device_id  text,
    app_id     bigint REFERENCES apps (id),  -- the owner then, if any
    detail     jsonb NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX events_app ON events (app_id, id) WHERE app_id IS NOT NULL;
CREATE INDEX events_created ON events (created_at);

-- The webhooks kmsd delivers to (webhook_urls, registered by each kmsd at
-- start under the SHA-256 of the URL: its path or query may carry a
-- credential, so what is stored and shown is scheme://host[:port] only).
-- Removing one (kmsctl events webhooks remove) deletes its pending
-- deliveries; a kmsd still configured with it registers it again when it
-- starts.
CREATE TABLE webhooks (
    url_hash      bytea PRIMARY KEY CHECK (length(url_hash) = 32),
    shown         text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    registered_at timestamptz NOT NULL DEFAULT now()  -- the last kmsd start that named it
);

-- One row per event and webhook, written with the event: what is delivered
-- is chosen by its state, never by an id range, so an event whose
-- transaction commits after a later one is delivered all the same. A
-- worker leases a few rows in a short statement (lease_id: only the holder
-- marks them), POSTs with no transaction open, then marks each; a lease
-- that runs out (kmsd killed mid-delivery) makes its rows due again: at
-- least once. After webhook_max_attempts failures a row is given up
-- (next_at infinity) until a replay.
CREATE TABLE event_deliveries (
    event_pk     bigint NOT NULL REFERENCES events (id) ON DELETE CASCADE,
    url_hash     bytea NOT NULL REFERENCES webhooks (url_hash) ON DELETE CASCADE,
    attempts     integer NOT NULL DEFAULT 0,
    next_at      timestamptz NOT NULL DEFAULT now(),
    lease_id     uuid,
    lease_until  timestamptz,
    delivered_at timestamptz,
    last_error   text,
    PRIMARY KEY (url_hash, event_pk)
);
-- The lease walks a webhook's undelivered rows in event order only.
CREATE INDEX event_deliveries_pending ON event_deliveries (url_hash, event_pk)
    WHERE delivered_at IS NULL;
-- The purge's cascade from events finds their rows by event.
CREATE INDEX event_deliveries_event ON event_deliveries (event_pk);

-- The audit events that are events too. Their audit detail is the event's
-- (audit rows hold no secret). The owner: named by the row (a reset, whose
-- binding is gone by then), else the device's or its gateway's.
CREATE FUNCTION qkms_event_from_audit() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    owner bigint;
    ev bigint;
BEGIN
    owner := (NEW.detail->>'owner_app')::bigint;
    IF owner IS NULL AND NEW.device_id IS NOT NULL THEN
        SELECT coalesce(o.app_id, po.app_id) INTO owner
          FROM devices d
          LEFT JOIN device_owners o ON o.device_pk = d.id
          LEFT JOIN device_owners po ON po.device_pk = d.parent_id
         WHERE d.device_id = NEW.device_id;
    END IF;
    INSERT INTO events (type, device_id, app_id, detail, created_at)
    VALUES (NEW.event, NEW.device_id, owner, NEW.detail - 'owner_app', NEW.at)
    RETURNING id INTO ev;
    INSERT INTO event_deliveries (event_pk, url_hash) SELECT ev, url_hash FROM webhooks;
    RETURN NULL;
END $$;

CREATE TRIGGER audit_log_events AFTER INSERT ON audit_log FOR EACH ROW
    WHEN (NEW.event IN ('device.key_expiring', 'device.service_expiring', 'device.bound',
                        'gateway.reset', 'device.revoked', 'gateway.login_locked'))
    EXECUTE FUNCTION qkms_event_from_audit();

-- A reset's event belongs to the owner the gateway had: 021's function,
-- with that owner named in its audit row (read by the trigger above, not
-- kept in the event's detail).
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
               ORDER BY id FOR UPDATE LOOP
        PERFORM qkms_session_destroy(sid, 'reset', d.device_id);
        n_sess := n_sess + 1;
    END LOOP;
    UPDATE gateway_credentials SET login_hash = NULL, updated_at = now()
     WHERE device_pk = p_device;
    INSERT INTO audit_log (actor, event, device_id, detail)
    VALUES (d.device_id, 'gateway.reset', d.device_id,
            jsonb_build_object('unbound', n_owner, 'sessions_ended', n_sess,
                               'bind_epoch', new_epoch, 'owner_app', prev_owner));
    RETURN QUERY SELECT 'ok', n_owner, n_sess, new_epoch;
END $$;
