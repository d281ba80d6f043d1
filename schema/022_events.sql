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
-- start under the SHA-256 of the URL: a URL may carry a credential).
CREATE TABLE webhooks (
    url_hash   bytea PRIMARY KEY CHECK (length(url_hash) = 32),
    shown      text NOT NULL,           -- scheme://host[:port]/... without userinfo or query
    created_at timestamptz NOT NULL DEFAULT now()
);

-- One row per event and webhook, written with the event: what is delivered
-- is chosen by its state, never by an id range, so an event whose
-- transaction commits after a later one is delivered all the same. A
-- worker leases a few rows in a short transaction, POSTs with no
-- transaction open, then marks each; a lease that runs out (kmsd killed
-- mid-delivery) makes its rows due again: at least once.
CREATE TABLE event_deliveries (
    event_pk     bigint NOT NULL REFERENCES events (id) ON DELETE CASCADE,
    url_hash     bytea NOT NULL REFERENCES webhooks (url_hash) ON DELETE CASCADE,
    attempts     integer NOT NULL DEFAULT 0,
    next_at      timestamptz NOT NULL DEFAULT now(),
    lease_until  timestamptz,
    delivered_at timestamptz,
    last_error   text,
    PRIMARY KEY (url_hash, event_pk)
);
CREATE INDEX event_deliveries_due ON event_deliveries (url_hash, next_at, event_pk)
    WHERE delivered_at IS NULL;

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
