-- 001_init: master key registry and admin API tokens.
-- Key bytes never live here: master keys stay in the token, and this table
-- only records which versions exist and a check value to recognise them.

CREATE TABLE master_keys (
    version     integer PRIMARY KEY CHECK (version > 0),
    label       text NOT NULL UNIQUE,
    kcv         bytea NOT NULL CHECK (length(kcv) = 16),
    state       text NOT NULL CHECK (state IN ('active', 'retired', 'destroyed')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    retired_at  timestamptz
);
-- At most one version wraps new keys.
CREATE UNIQUE INDEX master_keys_one_active ON master_keys ((true)) WHERE state = 'active';

-- Admin API tokens: only the SHA-256 of the token is stored.
CREATE TABLE admin_tokens (
    id           bigserial PRIMARY KEY,
    name         text NOT NULL CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$'),
    role         text NOT NULL CHECK (role IN ('admin', 'operator', 'auditor')),
    token_hash   bytea NOT NULL UNIQUE CHECK (length(token_hash) = 32),
    created_at   timestamptz NOT NULL DEFAULT now(),
    created_by   text,
    expires_at   timestamptz,
    last_used_at timestamptz,
    revoked_at   timestamptz,
    CHECK (expires_at IS NULL OR expires_at > created_at)
);
-- A name is unique among live tokens; a revoked name may be reused.
CREATE UNIQUE INDEX admin_tokens_live_name ON admin_tokens (name) WHERE revoked_at IS NULL;
