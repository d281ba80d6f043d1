-- 018_attributes: what is known of a device beside its ID (issue 18, seed
-- 004, docs/gateways.md "Attributes"): a gateway's MAC, serial number,
-- uuid, IP address, port, whether it joined its network, and free-form
-- ones. kmsd checks them and writes the known ones in one normal form
-- (kmsd/service/device_attrs.h), so that uniqueness and search compare
-- equal values.
ALTER TABLE devices
    ADD COLUMN attributes jsonb NOT NULL DEFAULT '{}'
        CHECK (jsonb_typeof(attributes) = 'object' AND length(attributes::text) <= 8192);
-- One device of a type per MAC, and per serial number.
CREATE UNIQUE INDEX devices_mac_per_type ON devices (type, (attributes->>'mac'))
    WHERE attributes ? 'mac';
CREATE UNIQUE INDEX devices_sn_per_type ON devices (type, (attributes->>'sn'))
    WHERE attributes ? 'sn';
-- The device list's attribute search (attributes @> term).
CREATE INDEX devices_attributes ON devices USING gin (attributes jsonb_path_ops);
