-- 031_plan_cache: the request path's helper functions keep their plans
-- (issue 14, docs/performance.md "Parsed on every call").
--
-- A LANGUAGE sql function that the planner cannot inline (any body with a
-- FROM clause) is parsed, analysed and planned again each time the
-- expression calling it is set up: in a plpgsql caller that is once per
-- call site per transaction, i.e. for every batch of key requests and
-- every request that runs alone. perf on a loaded
-- kmsd put 30 % of PostgreSQL's CPU under fmgr_sql, most of it in the
-- parser and the planner. The same queries in plpgsql are planned once per
-- connection and kept (SPI's plan cache), and kmsd's connections are
-- pooled and long-lived.
--
-- Same signatures, same queries, same answers: NULL when a policy is
-- missing (as the SQL versions' empty result), the same refusal texts.
-- qkms_ts_ok, qkms_device_standing and qkms_rfc3339 stay SQL: a single
-- SELECT of an expression with no FROM, which the planner inlines into the
-- caller's plan (no call at all).

CREATE OR REPLACE FUNCTION qkms_auth_refusal(d devices, p_key_index integer)
RETURNS text LANGUAGE plpgsql STABLE AS $$
DECLARE
    k record;
BEGIN
    IF d.id IS NULL THEN
        RETURN 'unknown device';
    ELSIF d.state = 'revoked' THEN
        RETURN 'device revoked';
    END IF;
    SELECT dk.state, dk.not_before, dk.not_after, dk.purpose INTO k
      FROM device_keys dk WHERE dk.device_pk = d.id AND dk.key_index = p_key_index;
    RETURN CASE
        WHEN k.state IS NULL THEN 'unknown key index'
        WHEN k.state <> 'active' THEN 'key ' || k.state
        WHEN NOT (k.not_before <= now() AND k.not_after > now()) THEN 'key outside its validity'
        WHEN k.purpose = 'local' THEN 'a local key'
    END;
END $$;

CREATE OR REPLACE FUNCTION qkms_cert_refusal(d devices, p_cert bytea)
RETURNS text LANGUAGE plpgsql STABLE AS $$
DECLARE
    c record;
BEGIN
    IF d.id IS NULL THEN
        RETURN 'unknown device';
    ELSIF d.state = 'revoked' THEN
        RETURN 'device revoked';
    END IF;
    SELECT ce.id, ce.state, ce.not_before, ce.not_after INTO c
      FROM certificates ce WHERE ce.sha256 = p_cert AND ce.device_pk = d.id;
    RETURN CASE
        WHEN c.id IS NULL THEN 'certificate not on record for this device'
        WHEN c.state <> 'active' THEN 'certificate ' || c.state
        WHEN NOT (c.not_before <= now() AND c.not_after > now()) THEN 'certificate outside its validity'
    END;
END $$;

-- 017's query (most specific first: a family policy before the others).
CREATE OR REPLACE FUNCTION qkms_policy_for(a devices, b devices)
RETURNS pairing_policies LANGUAGE plpgsql STABLE AS $$
DECLARE
    pol pairing_policies;
BEGIN
    SELECT p.* INTO pol FROM pairing_policies p
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
    LIMIT 1;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    RETURN pol;
END $$;

-- 014's query.
CREATE OR REPLACE FUNCTION qkms_policy_for_platform(d devices)
RETURNS pairing_policies LANGUAGE plpgsql STABLE AS $$
DECLARE
    pol pairing_policies;
BEGIN
    SELECT p.* INTO pol FROM pairing_policies p
    WHERE (p.type_a IN ('*', d.type) AND p.type_b = '@platform')
       OR (p.type_b IN ('*', d.type) AND p.type_a = '@platform')
    ORDER BY (p.type_a = d.type OR p.type_b = d.type)::int DESC, p.id
    LIMIT 1;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    RETURN pol;
END $$;
