-- 013_ca_import: a CA version certified by an operator's own root (issue 15,
-- docs/pki.md, "Your own root"). `kmsctl ca import --csr-out` makes the key
-- pair in the token and a CSR: the version is 'pending', with no
-- certificate, until `kmsctl ca import --chain` brings the certificate the
-- operator's CA issued for it and the certificates above it up to the
-- root (`issuers`, PEM), which kmsd trusts and serves with it. At most one
-- version is pending.
ALTER TABLE ca_keys DROP CONSTRAINT ca_keys_state_check;
ALTER TABLE ca_keys ADD CONSTRAINT ca_keys_state_check
    CHECK (state IN ('pending', 'active', 'retired'));
ALTER TABLE ca_keys ALTER COLUMN certificate DROP NOT NULL,
                    ALTER COLUMN not_after DROP NOT NULL;
ALTER TABLE ca_keys ADD COLUMN issuers text,   -- PEM, the chain above it; NULL: self-signed
                    ADD COLUMN csr text;       -- PEM, while pending
ALTER TABLE ca_keys ADD CONSTRAINT ca_keys_pending_has_no_certificate
    CHECK ((state = 'pending') = (certificate IS NULL) AND (certificate IS NULL) = (not_after IS NULL));
CREATE UNIQUE INDEX ca_keys_one_pending ON ca_keys ((true)) WHERE state = 'pending';
