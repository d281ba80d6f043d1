-- 024_device_contact: when each device was first and last heard from (issue 20,
-- seed 003: the platform records a device's first contact). kmsd writes both
-- at most once a minute per device, in batches, off the request's path
-- (kmsd/service/device_seen.c); the first write of first_seen_at is audited
-- device.first_contact, once, whichever instance writes it.
ALTER TABLE devices
    ADD COLUMN first_seen_at timestamptz,
    ADD COLUMN last_seen_at  timestamptz;
-- No index on either: the minute-by-minute updates then touch no index
-- and can be HOT updates, given room in the page. Pages written from now
-- on keep a tenth free for that (a VACUUM FULL or pg_repack applies it to
-- the pages written before). The admin listing's filters on them scan the
-- devices in ID order, as its other filters do.
ALTER TABLE devices SET (fillfactor = 90);
