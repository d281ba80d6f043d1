-- 037_data_signing_keys: the platform's data-signing keys (issue 19; seed
-- 000: the cipher machine signs for the business platform; docs/api.md
-- "Data-signing keys", "Signatures"). They are firmware_keys' twins — an
-- ECDSA P-256 pair in the token with a certificate from the platform CA,
-- versions, rotation with an overlap — so they share the table: purpose
-- 'firmware' rows are product lines' code-signing keys (product = the
-- product line), purpose 'data' rows are named data-signing keys (product =
-- the key's name), used by POST /v1/crypto/sign and /verify and never for
-- firmware (nor the other way round).
ALTER TABLE firmware_keys
    ADD COLUMN purpose text NOT NULL DEFAULT 'firmware' CHECK (purpose IN ('firmware', 'data'));
ALTER TABLE firmware_keys DROP CONSTRAINT firmware_keys_product_version_key;
ALTER TABLE firmware_keys ADD CONSTRAINT firmware_keys_purpose_product_version_key
    UNIQUE (purpose, product, version);
DROP INDEX firmware_keys_one_active;
CREATE UNIQUE INDEX firmware_keys_one_active ON firmware_keys (purpose, product)
    WHERE state = 'active';
