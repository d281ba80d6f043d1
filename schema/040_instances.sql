-- 040_instances: the kmsd instances sharing this database, and master key
-- versions staged until every one of them holds them (docs/ha.md, "Master
-- key rotation with several instances").
--
-- A rotation with other live instances creates the new version in its own
-- token and records it 'staged': no key is wrapped under it yet (the
-- qkms_master_must_be_active triggers refuse it), so an instance whose
-- token lacks it loses nothing. Each instance's maintenance pass reports in
-- kmsd_instances the versions its token holds (each checked against its
-- recorded check value); a pass that finds every live instance holding the
-- staged version activates it (the active one retires, as in a one-step
-- rotation). An operator may activate it at once (force), and an instance
-- without it then reports not ready until its token gets it.

ALTER TABLE master_keys DROP CONSTRAINT master_keys_state_check;
ALTER TABLE master_keys ADD CONSTRAINT master_keys_state_check
    CHECK (state IN ('staged', 'active', 'retired', 'destroyed'));
ALTER TABLE master_keys ADD COLUMN activated_at timestamptz;
-- At most one version waits for the instances.
CREATE UNIQUE INDEX master_keys_one_staged ON master_keys ((true)) WHERE state = 'staged';

CREATE TABLE kmsd_instances (
    -- instance_name, or host name and process ID (docs/configuration.md)
    name        text PRIMARY KEY CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9._:/@-]{0,127}$'),
    -- the master key versions this instance's token holds with the recorded
    -- check value (staged, active and retired ones)
    versions    integer[] NOT NULL DEFAULT '{}',
    software    text NOT NULL,
    started_at  timestamptz NOT NULL,
    seen_at     timestamptz NOT NULL DEFAULT now(),
    -- seen_at plus three maintenance steps: past it the instance counts as
    -- gone and no longer holds back an activation; its row is deleted a day later
    expires_at  timestamptz NOT NULL
);
