-- 002_devices: devices, their pre-filled device keys, and the audit log.
-- Device keys are stored only wrapped under a token master key
-- (pkcs11/keywrap.h); "destroyed" keys keep their metadata, not their bytes.

CREATE TABLE device_types (
    name        text PRIMARY KEY CHECK (name ~ '^[a-z][a-z0-9_-]{0,31}$'),
    created_at  timestamptz NOT NULL DEFAULT now()
);
INSERT INTO device_types (name) VALUES
    ('vehicle'), ('encryptor'), ('meter'), ('gateway'), ('subdevice'), ('generic');

CREATE TABLE devices (
    id            bigserial PRIMARY KEY,
    device_id     text NOT NULL UNIQUE
                  CHECK (device_id ~ '^[!-~]{1,128}$' AND device_id !~ '[/\\%?#]'),
    type          text NOT NULL REFERENCES device_types (name),
    parent_id     bigint REFERENCES devices (id),
    group_label   text NOT NULL CHECK (group_label ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$'),
    state         text NOT NULL DEFAULT 'active'
                  CHECK (state IN ('active', 'suspended', 'revoked')),
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    revoked_at    timestamptz,
    expiry_warned_at timestamptz,
    CHECK (parent_id IS NULL OR parent_id <> id),
    CHECK ((state = 'revoked') = (revoked_at IS NOT NULL))
);
CREATE INDEX devices_type ON devices (type);
CREATE INDEX devices_group ON devices (group_label);
CREATE INDEX devices_parent ON devices (parent_id) WHERE parent_id IS NOT NULL;

CREATE TABLE device_keys (
    device_pk      bigint NOT NULL REFERENCES devices (id),
    key_index      integer NOT NULL CHECK (key_index BETWEEN 0 AND 255),
    algorithm      text NOT NULL CHECK (algorithm IN ('AES-128', 'AES-256')),
    wrapped        bytea,
    master_version integer REFERENCES master_keys (version),
    provenance     text NOT NULL,
    state          text NOT NULL DEFAULT 'active'
                   CHECK (state IN ('active', 'retired', 'destroyed')),
    not_before     timestamptz NOT NULL,
    not_after      timestamptz NOT NULL,
    retire_at      timestamptz,
    created_at     timestamptz NOT NULL DEFAULT now(),
    retired_at     timestamptz,
    destroyed_at   timestamptz,
    exported_at    timestamptz,
    export_count   integer NOT NULL DEFAULT 0,
    PRIMARY KEY (device_pk, key_index),
    CHECK (not_after > not_before),
    -- Key bytes exist exactly while the key is not destroyed.
    CHECK ((state = 'destroyed') = (wrapped IS NULL)),
    CHECK ((wrapped IS NULL) = (master_version IS NULL))
);
CREATE INDEX device_keys_not_after ON device_keys (not_after) WHERE state <> 'destroyed';
CREATE INDEX device_keys_retire_at ON device_keys (retire_at) WHERE retire_at IS NOT NULL AND state = 'active';
CREATE INDEX device_keys_master ON device_keys (master_version);

-- Security events, appended in the same transaction as the change they
-- record. No key material or secrets, ever.
CREATE TABLE audit_log (
    id          bigserial PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT now(),
    actor       text NOT NULL,
    event       text NOT NULL,
    device_id   text,
    detail      jsonb NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX audit_log_at ON audit_log (at);
CREATE INDEX audit_log_device ON audit_log (device_id) WHERE device_id IS NOT NULL;
