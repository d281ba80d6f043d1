-- 033_firmware_keys: firmware signing keys per product line (issue 19; seed
-- 001: signed first, then encrypted; docs/firmware.md). Each is an ECDSA
-- P-256 pair generated in the token (private key sensitive, never
-- extractable, sign only) with a certificate from the platform CA (key
-- usage digitalSignature, extended key usage codeSigning), which devices of
-- the product pin. One active key per product; a rotation makes version
-- N+1 active and retires N with an overlap during which devices pin both.
-- And the role that signs releases: 'release'.

ALTER TABLE admin_tokens DROP CONSTRAINT admin_tokens_role_check;
ALTER TABLE admin_tokens
    ADD CONSTRAINT admin_tokens_role_check
        CHECK (role IN ('admin', 'operator', 'auditor', 'app', 'crypto', 'release'));

CREATE TABLE firmware_keys (
    id            bigserial PRIMARY KEY,
    product       text NOT NULL CHECK (product ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$'),
    version       integer NOT NULL CHECK (version >= 1),
    label         text NOT NULL UNIQUE,          -- the token objects' label
    state         text NOT NULL CHECK (state IN ('active', 'retired')),
    cert_der      bytea NOT NULL,
    sha256        bytea NOT NULL UNIQUE CHECK (length(sha256) = 32),  -- of cert_der
    not_after     timestamptz NOT NULL,
    overlap_until timestamptz,                   -- retired: devices pin it until then
    created_at    timestamptz NOT NULL DEFAULT now(),
    created_by    text NOT NULL,
    retired_at    timestamptz,
    UNIQUE (product, version),
    CHECK ((state = 'retired') = (retired_at IS NOT NULL))
);
CREATE UNIQUE INDEX firmware_keys_one_active ON firmware_keys (product) WHERE state = 'active';
