-- 017_families: a gateway and its sub-devices as a family (issue 18, seed
-- 004, docs/gateways.md): a policy may pair a sub-device with its own
-- gateway only, and suspending, resuming or revoking a gateway does the
-- same to its sub-devices in the same transaction.

-- A family policy (scope "parent") pairs two devices only when one is the
-- other's parent; groups do not enter into it.
ALTER TABLE pairing_policies
    ADD COLUMN family boolean NOT NULL DEFAULT false,
    ADD CONSTRAINT pairing_policies_family_has_no_groups CHECK (NOT family OR group_a IS NULL);

-- Sub-devices suspended because their gateway was: resuming the gateway
-- resumes these, and only these (one suspended by an operator stays so).
ALTER TABLE devices ADD COLUMN suspended_with_parent boolean NOT NULL DEFAULT false;

-- The pairing policy that lets device a pair with device b (most specific
-- first: a family policy before the others), or none: default deny, never
-- across groups unless a policy names both groups. A family policy matches
-- only a sub-device and its own gateway, and it restricts its two types:
-- once one covers them, no other policy pairs two devices of those types
-- that are not a family (a sub-device pairs only with its own gateway).
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
