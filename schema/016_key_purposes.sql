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
-- rotation: the purpose of the keys it replaces). Keys made before this
-- migration stay generic: relabelling one that already served the wide area
-- as local would lock its gateway out and hand it to every sub-device. A
-- gateway registered before gets its access and local keys by a rotation
-- (docs/gateways.md, "Upgrading").
ALTER TABLE device_keys
    ADD COLUMN purpose text NOT NULL DEFAULT 'generic'
        CHECK (purpose IN ('access', 'local', 'generic'));

-- The database's own re-check of a device key (the stored functions call it
-- in the request's transaction): a local key never authenticates a request
-- to the platform, whatever kmsd checked before.
CREATE OR REPLACE FUNCTION qkms_auth_refusal(d devices, p_key_index integer)
RETURNS text LANGUAGE sql STABLE AS $$
    SELECT CASE
        WHEN d.id IS NULL THEN 'unknown device'
        WHEN d.state = 'revoked' THEN 'device revoked'
        WHEN k.state IS NULL THEN 'unknown key index'
        WHEN k.state <> 'active' THEN 'key ' || k.state
        WHEN NOT (k.not_before <= now() AND k.not_after > now()) THEN 'key outside its validity'
        WHEN k.purpose = 'local' THEN 'a local key'
    END
    FROM (SELECT 1) one
    LEFT JOIN device_keys k ON k.device_pk = d.id AND k.key_index = p_key_index
$$;
