-- bench/ab/sql-helpers.sql: the request path's helper functions as they were
-- before schema/031 (LANGUAGE sql: parsed and planned again on each call).
-- For BENCH_PARTS=ab BENCH_AB="bench/ab/sql-helpers.sql schema/031_plan_cache.sql"
-- (docs/performance.md, "Parsed on every call"). Bodies from schema/016,
-- 014 and 017.
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

CREATE OR REPLACE FUNCTION qkms_cert_refusal(d devices, p_cert bytea)
RETURNS text LANGUAGE sql STABLE AS $$
    SELECT CASE
        WHEN d.id IS NULL THEN 'unknown device'
        WHEN d.state = 'revoked' THEN 'device revoked'
        WHEN c.id IS NULL THEN 'certificate not on record for this device'
        WHEN c.state <> 'active' THEN 'certificate ' || c.state
        WHEN NOT (c.not_before <= now() AND c.not_after > now()) THEN 'certificate outside its validity'
    END
    FROM (SELECT 1) one
    LEFT JOIN certificates c ON c.sha256 = p_cert AND c.device_pk = d.id
$$;

CREATE OR REPLACE FUNCTION qkms_policy_for(a devices, b devices)
RETURNS pairing_policies LANGUAGE sql STABLE AS $$
    SELECT p.* FROM pairing_policies p
    WHERE (p.family
           AND (a.parent_id = b.id OR b.parent_id = a.id)
           AND ((p.type_a IN ('*', a.type) AND p.type_b IN ('*', b.type))
                OR (p.type_a IN ('*', b.type) AND p.type_b IN ('*', a.type))))
       OR (NOT p.family
           AND NOT EXISTS (SELECT 1 FROM pairing_policies f
                            WHERE f.family
                              AND ((f.type_a IN ('*', a.type) AND f.type_b IN ('*', b.type))
                                   OR (f.type_a IN ('*', b.type) AND f.type_b IN ('*', a.type))))
           AND ((p.type_a IN ('*', a.type) AND p.type_b IN ('*', b.type)
                 AND ((p.group_a IS NULL AND a.group_label = b.group_label)
                      OR (p.group_a = a.group_label AND p.group_b = b.group_label)))
                OR (p.type_a IN ('*', b.type) AND p.type_b IN ('*', a.type)
                    AND ((p.group_a IS NULL AND a.group_label = b.group_label)
                         OR (p.group_a = b.group_label AND p.group_b = a.group_label)))))
    ORDER BY p.family::int DESC,
             (p.type_a <> '*')::int + (p.type_b <> '*')::int + (p.group_a IS NOT NULL)::int DESC,
             p.id
    LIMIT 1
$$;

CREATE OR REPLACE FUNCTION qkms_policy_for_platform(d devices)
RETURNS pairing_policies LANGUAGE sql STABLE AS $$
    SELECT p.* FROM pairing_policies p
    WHERE (p.type_a IN ('*', d.type) AND p.type_b = '@platform')
       OR (p.type_b IN ('*', d.type) AND p.type_a = '@platform')
    ORDER BY (p.type_a = d.type OR p.type_b = d.type)::int DESC, p.id
    LIMIT 1
$$;
