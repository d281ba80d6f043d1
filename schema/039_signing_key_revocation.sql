-- 039_signing_key_revocation: revoking a firmware or data-signing key
-- (issue 19: "an expired or revoked firmware certificate"; docs/api.md
-- "Firmware signing keys", "Data-signing keys"). A revoked key signs
-- nothing, is pinned by nobody the platform tells (kmsctl ... --pem), fails
-- the platform's package check and signature verification, and its
-- certificate goes into the issuing CA version's CRL (serial and version
-- recorded when it is revoked; 0 for a CA version that expired, whose
-- certificates are past their validity and in no CRL). Its private key is
-- destroyed in the token once the revocation committed.
ALTER TABLE firmware_keys DROP CONSTRAINT firmware_keys_state_check;
ALTER TABLE firmware_keys ADD CONSTRAINT firmware_keys_state_check
    CHECK (state IN ('active', 'retired', 'revoked'));
ALTER TABLE firmware_keys DROP CONSTRAINT firmware_keys_check;
ALTER TABLE firmware_keys
    ADD COLUMN revoked_at    timestamptz,
    ADD COLUMN revoke_reason text CHECK (revoke_reason IN ('unspecified', 'keyCompromise',
        'affiliationChanged', 'superseded', 'cessationOfOperation', 'privilegeWithdrawn')),
    ADD COLUMN serial        text,        -- the certificate's, hex, for the CRL
    ADD COLUMN ca_version    integer,     -- the CA version that issued it
    ADD CONSTRAINT firmware_keys_revoked_check
        CHECK ((state = 'revoked') = (revoked_at IS NOT NULL)
               AND (state <> 'revoked' OR (serial IS NOT NULL AND ca_version IS NOT NULL))),
    ADD CONSTRAINT firmware_keys_retired_check
        CHECK ((state <> 'retired' OR retired_at IS NOT NULL)
               AND (state <> 'active' OR retired_at IS NULL));
