-- 035_firmware_releases: what the platform signed (issue 19; seed 001:
-- signed first, then encrypted; docs/firmware.md, docs/api.md "Signing
-- releases"). One row per package, in the transaction that decides its
-- counter: a product's counters only grow (anti-rollback: a device installs
-- only a counter above the one it stored), so a package for an older counter
-- can never be signed again. Nothing secret: the content key of a package
-- exists only while it is answered.
CREATE TABLE firmware_releases (
    id            bigserial PRIMARY KEY,
    product       text NOT NULL,
    counter       bigint NOT NULL CHECK (counter BETWEEN 1 AND 9007199254740991),
    version       text NOT NULL,
    package_id    uuid NOT NULL UNIQUE,
    image_size    bigint NOT NULL CHECK (image_size >= 0),
    image_sha256  bytea NOT NULL CHECK (length(image_sha256) = 32),
    manifest_sha256 bytea NOT NULL CHECK (length(manifest_sha256) = 32),
    signer_sha256 bytea NOT NULL REFERENCES firmware_keys (sha256),
    targets       jsonb NOT NULL,
    not_before    timestamptz NOT NULL,
    signed_by     text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    UNIQUE (product, counter)
);
