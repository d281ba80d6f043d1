-- 022_events: the events pushed to owners (issue 18, seed 004,
-- docs/gateways.md "Events"): a key or the service about to expire, a
-- gateway bound, reset or revoked, a login locked. An outbox: each event is
-- written in the transaction of the change itself (by a trigger on the
-- audit row that change writes), then delivered by kmsd's worker to the
-- configured webhooks, and readable by the owner's app.

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

-- Where each webhook's delivery stands: every event up to last_event was
-- answered 2xx. A failure retries the next one after a back-off.
CREATE TABLE webhook_cursors (
    url          text PRIMARY KEY,
    last_event   bigint NOT NULL DEFAULT 0,
    attempts     integer NOT NULL DEFAULT 0,
    next_at      timestamptz NOT NULL DEFAULT now(),
    last_error   text,
    delivered    bigint NOT NULL DEFAULT 0,
    updated_at   timestamptz NOT NULL DEFAULT now()
);

-- The audit events that are events too. Their audit detail is the event's
-- (audit rows hold no secret). The owner: named by the row (a reset, whose
-- binding is gone by then), else the device's or its gateway's.
CREATE FUNCTION qkms_event_from_audit() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    owner bigint;
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
    VALUES (NEW.event, NEW.device_id, owner, NEW.detail - 'owner_app', NEW.at);
    RETURN NULL;
END $$;

CREATE TRIGGER audit_log_events AFTER INSERT ON audit_log FOR EACH ROW
    WHEN (NEW.event IN ('device.key_expiring', 'device.service_expiring', 'device.bound',
                        'gateway.reset', 'device.revoked', 'gateway.login_locked'))
    EXECUTE FUNCTION qkms_event_from_audit();
