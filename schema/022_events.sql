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
-- start). A URL's path or query may be its credential, so neither is
-- stored: a webhook is known by webhook_id, HMAC-SHA-256 of the URL under
-- the webhook secret (every kmsd of a platform has the same), and shown as
-- scheme://host[:port]. Removing one (kmsctl events remove-webhook) retires
-- it at once; maintenance then deletes its deliveries in batches, and the
-- row when none is left. A kmsd still configured with it registers it
-- again when it starts.
CREATE TABLE webhooks (
    webhook_id        bytea PRIMARY KEY CHECK (length(webhook_id) = 32),
    shown             text NOT NULL,
    created_at        timestamptz NOT NULL DEFAULT now(),
    registered_at     timestamptz NOT NULL DEFAULT now(),  -- the last kmsd start that named it
    last_delivered_at timestamptz,
    retired_at        timestamptz
);

-- One row per event and webhook, written with the event: what is delivered
-- is chosen by its state, never by an id range, so an event whose
-- transaction commits after a later one is delivered all the same. A row
-- is due when next_at has come. A worker leases a few due rows in a short
-- statement (lease_id, next_at moved to the lease's end), POSTs with no
-- transaction open, then marks each (only under its lease_id); a lease
-- that runs out (kmsd killed mid-delivery) makes its rows due again: at
-- least once. A failure moves next_at by the back-off; after
-- webhook_max_attempts failures next_at is infinity (given up) until a
-- replay.
CREATE TABLE event_deliveries (
    event_pk     bigint NOT NULL REFERENCES events (id) ON DELETE CASCADE,
    webhook_id   bytea NOT NULL REFERENCES webhooks (webhook_id) ON DELETE CASCADE,
    attempts     integer NOT NULL DEFAULT 0,
    next_at      timestamptz NOT NULL DEFAULT now(),
    lease_id     uuid,
    delivered_at timestamptz,
    last_error   text,
    PRIMARY KEY (webhook_id, event_pk)
);
-- The lease reads a webhook's due rows only: undelivered ones by next_at,
-- so rows backing off or given up (infinity) are past the range it scans.
-- attempts included: the listing's counts and maximum read the index only.
CREATE INDEX event_deliveries_due ON event_deliveries (webhook_id, next_at) INCLUDE (attempts)
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
    -- FOR KEY SHARE: a webhook whose row is being deleted (its removal's
    -- last step) is waited for and skipped, not a foreign key error that
    -- would fail the change itself.
    INSERT INTO event_deliveries (event_pk, webhook_id)
    SELECT ev, webhook_id FROM webhooks WHERE retired_at IS NULL FOR KEY SHARE;
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
