-- 024_device_contact: when each device was first and last heard from (issue 20,
-- seed 003: the platform records a device's first contact). kmsd writes both
-- at most once a minute per device, in batches, off the request's path
-- (kmsd/service/device_seen.c); the first write of first_seen_at is audited
-- device.first_contact, once, whichever instance writes it.
ALTER TABLE devices
    ADD COLUMN first_seen_at timestamptz,
    ADD COLUMN last_seen_at  timestamptz;
-- `kmsctl device list --never-seen` finds the devices provisioned but never
-- heard from; a device leaves this index at its first contact, and the
-- minute-by-minute updates of last_seen_at touch no index, so they stay HOT.
CREATE INDEX devices_never_seen ON devices (device_id) WHERE first_seen_at IS NULL;
