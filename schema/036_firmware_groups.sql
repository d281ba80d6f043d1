-- 036_firmware_groups: groups' firmware keys (issue 19; seed 001;
-- docs/firmware.md "Group targets"). A package for a group wraps its
-- content key once under the group's firmware key instead of once per
-- device: a 32-byte AES key with a random 16-byte key ID, made from the
-- entropy interface, stored only wrapped under the master key (context
-- "qkms-fw-group:<group>:<key ID hex>", so a blob moved to another row does
-- not open), and delivered to each device of the group in its fill
-- document. One active key per group; a rotation makes a new active key
-- and keeps the old one as 'previous': packages are wrapped for both, so
-- devices not yet refilled still open them, until the operator destroys
-- the previous key (the row is deleted; the master key rotation's rewrap
-- and destruction count these rows like every wrapped key).
CREATE TABLE firmware_group_keys (
    id             bigserial PRIMARY KEY,
    group_label    text NOT NULL CHECK (group_label ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$'),
    key_id         bytea NOT NULL UNIQUE CHECK (length(key_id) = 16),
    state          text NOT NULL CHECK (state IN ('active', 'previous')),
    wrapped        bytea NOT NULL,
    master_version integer NOT NULL REFERENCES master_keys (version),
    created_at     timestamptz NOT NULL DEFAULT now(),
    created_by     text NOT NULL,
    superseded_at  timestamptz,
    CHECK ((state = 'previous') = (superseded_at IS NOT NULL))
);
CREATE UNIQUE INDEX firmware_group_keys_one_active ON firmware_group_keys (group_label)
    WHERE state = 'active';
CREATE INDEX firmware_group_keys_master_version ON firmware_group_keys (master_version);
CREATE TRIGGER firmware_group_keys_master_active
    BEFORE INSERT OR UPDATE OF master_version ON firmware_group_keys
    FOR EACH ROW EXECUTE FUNCTION qkms_master_must_be_active();
