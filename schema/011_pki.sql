-- 011_pki: the platform CA and device certificates (issue 15, docs/pki.md).
--
-- The CA's private key lives in the token (label ca_keys.label, sensitive,
-- never extractable); this table holds its certificate and state. Exactly
-- one version is active (issues); retired ones still verify what they
-- issued until that expires.
CREATE TABLE ca_keys (
    version      integer PRIMARY KEY CHECK (version > 0),
    label        text NOT NULL UNIQUE,
    state        text NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'retired')),
    certificate  bytea NOT NULL,            -- DER, self-signed or from the operator's root
    not_after    timestamptz NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    retired_at   timestamptz
);
CREATE UNIQUE INDEX ca_keys_one_active ON ca_keys ((true)) WHERE state = 'active';

-- Certificates of devices: issued by the platform CA (kind 'issued') or
-- issued elsewhere and bound to the device (kind 'bound'). Public data: the
-- certificate itself is stored, never a private key. A certificate is named
-- by its device and serial (lower-case hex): serials of other issuers may
-- repeat across devices, the platform CA's never do.
CREATE TABLE certificates (
    id             bigserial PRIMARY KEY,
    serial         text NOT NULL CHECK (serial ~ '^[0-9a-f]{2,40}$'),
    device_pk      bigint NOT NULL,
    device_id      text NOT NULL,
    kind           text NOT NULL CHECK (kind IN ('issued', 'bound')),
    ca_version     integer REFERENCES ca_keys (version),
    subject        text NOT NULL,
    not_before     timestamptz NOT NULL,
    not_after      timestamptz NOT NULL,
    sha256         bytea NOT NULL UNIQUE CHECK (length(sha256) = 32),   -- of the DER
    spki_sha256    bytea NOT NULL CHECK (length(spki_sha256) = 32),
    der            bytea NOT NULL,
    state          text NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'revoked')),
    revoked_at     timestamptz,
    revoke_reason  text CHECK (revoke_reason IN ('unspecified', 'keyCompromise',
                              'affiliationChanged', 'superseded', 'cessationOfOperation',
                              'privilegeWithdrawn')),
    created_at     timestamptz NOT NULL DEFAULT now(),
    created_by     text NOT NULL,
    expiry_warned_at timestamptz,        -- certificate_warn_days: warned at most once a day
    CHECK ((kind = 'issued') = (ca_version IS NOT NULL)),
    CHECK ((state = 'revoked') = (revoked_at IS NOT NULL))
);
CREATE UNIQUE INDEX certificates_device_serial ON certificates (device_id, serial);
CREATE INDEX certificates_device_pk ON certificates (device_pk);
CREATE INDEX certificates_spki ON certificates (spki_sha256);
CREATE INDEX certificates_active_expiry ON certificates (not_after) WHERE state = 'active';
CREATE UNIQUE INDEX certificates_issued_serial ON certificates (serial) WHERE kind = 'issued';
CREATE INDEX certificates_revoked ON certificates (ca_version) WHERE state = 'revoked';

-- The CA's revocation lists, newest by crl_number (service/crl.c): made at
-- each revocation and every ca_crl_interval, served by GET /v1/ca/crl. A
-- few recent ones are kept.
CREATE TABLE ca_crls (
    ca_version   integer NOT NULL REFERENCES ca_keys (version),
    crl_number   bigint NOT NULL CHECK (crl_number > 0),
    this_update  timestamptz NOT NULL,
    next_update  timestamptz NOT NULL,
    der          bytea NOT NULL,
    PRIMARY KEY (ca_version, crl_number)
);
