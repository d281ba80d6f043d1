-- 030_sm4_suite: a second algorithm suite for devices (issue 20, seed 000
-- lists SM2, SM3 and SM4 beside AES and SHA-256). A device type may be of
-- the "sm4" suite: its devices' keys are SM4-128, and their protocol v1
-- envelope (requests and answers) is SM4-CTR with HMAC-SM3 instead of
-- AES-GCM (docs/protocol.md, "Suites"). The token side stays AES: device
-- keys of either suite are wrapped under the AES master key, session keys
-- are random bytes either way.
ALTER TABLE device_types
    ADD COLUMN suite text NOT NULL DEFAULT 'aes' CHECK (suite IN ('aes', 'sm4'));

ALTER TABLE device_keys DROP CONSTRAINT device_keys_algorithm_check;
ALTER TABLE device_keys ADD CONSTRAINT device_keys_algorithm_check
    CHECK (algorithm IN ('AES-128', 'AES-256', 'SM4-128'));
