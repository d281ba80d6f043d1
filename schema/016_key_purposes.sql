-- 016_key_purposes: what each device key is for (issue 18, seed 004,
-- docs/gateways.md). A gateway holds an access key for its wide-area
-- traffic with the platform and a local key for its local network with its
-- sub-devices; the platform keeps the two apart: a local key is refused on
-- every device-facing door. Every other key is generic, as before.

-- A device type's template: the purpose of key index i is key_purposes[i+1];
-- indices past its end are generic. A type without one makes generic keys.
ALTER TABLE device_types
    ADD COLUMN key_purposes text[] NOT NULL DEFAULT '{}'
        CHECK (key_purposes <@ ARRAY['access', 'local', 'generic']
               AND cardinality(key_purposes) <= 16
               AND array_position(key_purposes, NULL) IS NULL);
UPDATE device_types SET key_purposes = '{access,local}' WHERE name = 'gateway';

-- A key's purpose is fixed when it is made (registration: the template;
-- rotation: the purpose of the keys it replaces).
ALTER TABLE device_keys
    ADD COLUMN purpose text NOT NULL DEFAULT 'generic'
        CHECK (purpose IN ('access', 'local', 'generic'));
UPDATE device_keys k SET purpose = coalesce(t.key_purposes[k.key_index + 1], 'generic')
  FROM devices d JOIN device_types t ON t.name = d.type
 WHERE d.id = k.device_pk AND cardinality(t.key_purposes) > 0;
