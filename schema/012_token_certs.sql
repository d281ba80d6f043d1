-- 012_token_certs: client certificates of admin principals (issue 15).
--
-- Client certificates bound to admin tokens (docs/pki.md, "Admin
-- principals"). On an admin listener with admin_tls_client_auth, a TLS
-- client whose certificate is on record here (by the SHA-256 of its DER)
-- and verifies is the token it is bound to, with its name and role, while
-- the token is live (not revoked, not expired). Only the certificate is
-- stored, never a key; unbinding deletes the row (the audit log keeps it).
CREATE TABLE token_certificates (
    id          bigserial PRIMARY KEY,
    token_id    bigint NOT NULL REFERENCES admin_tokens (id),
    sha256      bytea NOT NULL UNIQUE CHECK (length(sha256) = 32),   -- of the DER
    spki_sha256 bytea NOT NULL CHECK (length(spki_sha256) = 32),
    subject     text NOT NULL,
    issuer      text NOT NULL,
    not_before  timestamptz NOT NULL,
    not_after   timestamptz NOT NULL,
    der         bytea NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    created_by  text NOT NULL
);
CREATE INDEX token_certificates_token ON token_certificates (token_id);
CREATE INDEX token_certificates_spki ON token_certificates (spki_sha256);
