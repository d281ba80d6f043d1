-- 038_firmware_approvals: two distinct approvers before a release is
-- signed (issue 19; docs/api.md "Release approvals"), for the products
-- that ask for it. A product's rule lives in firmware_products (no row: one
-- approver, the release token that signs). Under a two-approver rule a
-- release token asks for approval of exactly what will be signed (version,
-- image size and SHA-256, targets, counter and not_before when fixed), a
-- second and distinct release token approves it, and signing must name the
-- approval, match it and uses it up, in the signature's transaction. The
-- image is never stored: it is checked against its SHA-256 when signed.
CREATE TABLE firmware_products (
    product     text PRIMARY KEY CHECK (product ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$'),
    approvals   integer NOT NULL CHECK (approvals IN (1, 2)),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    updated_by  text NOT NULL
);

CREATE TABLE firmware_approvals (
    id            uuid PRIMARY KEY,
    product       text NOT NULL,
    version       text NOT NULL,
    image_size    bigint NOT NULL CHECK (image_size > 0),
    image_sha256  bytea NOT NULL CHECK (length(image_sha256) = 32),
    targets       jsonb NOT NULL,            -- {"groups":[sorted],"devices":[sorted]}
    counter       bigint,                    -- NULL: the sign decides
    not_before    bigint,                    -- Unix seconds; NULL: now at signing
    requested_by  text NOT NULL,
    requested_at  timestamptz NOT NULL DEFAULT now(),
    approved_by   text,
    approved_at   timestamptz,
    used_at       timestamptz,
    package_id    uuid,                      -- the package it was used for
    expires_at    timestamptz NOT NULL,
    CHECK (approved_by IS NULL OR approved_by <> requested_by),
    CHECK ((approved_by IS NULL) = (approved_at IS NULL)),
    CHECK (used_at IS NULL OR approved_at IS NOT NULL)
);
CREATE INDEX firmware_approvals_product ON firmware_approvals (product, requested_at DESC);
