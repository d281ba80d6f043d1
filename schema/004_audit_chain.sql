-- 004_audit_chain: tamper evidence for audit_log (docs/operations.md, "Audit log").
--
-- Rows are still inserted without any lock or trigger on the request path.
-- A sealer in kmsd (kmsd/audit_chain.c, under an advisory lock) later links
-- committed rows into a SHA-256 hash chain in id order and writes
-- checkpoints whose chain head is authenticated by a GMAC under the active
-- master key in the token.

-- hash = SHA-256(prev_hash || canonical row); NULL until sealed.
ALTER TABLE audit_log
    ADD COLUMN prev_hash bytea CHECK (length(prev_hash) = 32),
    ADD COLUMN hash      bytea CHECK (length(hash) = 32),
    ADD COLUMN sealed_at timestamptz;

-- The sealer's position. One row.
CREATE TABLE audit_chain_state (
    one            boolean PRIMARY KEY DEFAULT true CHECK (one),
    main_id        bigint NOT NULL DEFAULT 0,    -- every id <= main_id is sealed or a skipped gap
    head_id        bigint,                       -- newest chain element (NULL: empty chain)
    head_hash      bytea CHECK (length(head_hash) = 32),
    chain_length   bigint NOT NULL DEFAULT 0,
    gap_seen_upto  bigint,                       -- the highest visible id ...
    gap_seen_at    timestamptz,                  -- ... at this time (ids <= it were handed out before)
    checkpoint_version integer,                  -- master key version of the newest checkpoint
    checkpoint_at  timestamptz,                  -- when the newest checkpoint was written
    updated_at     timestamptz NOT NULL DEFAULT now()
);
INSERT INTO audit_chain_state DEFAULT VALUES;

-- Ids the sealer decided are permanently absent (a rolled-back transaction,
-- a sequence jump after a crash): the chain links over them.
CREATE TABLE audit_gaps (
    lo          bigint PRIMARY KEY,
    hi          bigint NOT NULL,
    skipped_at  timestamptz NOT NULL DEFAULT now(),
    CHECK (hi >= lo)
);
CREATE INDEX audit_gaps_skipped ON audit_gaps (skipped_at);

-- Rows that committed after their id had been skipped: sealed at the chain
-- head of that moment, i.e. right after row chain_prev in chain order.
CREATE TABLE audit_late (
    id          bigint PRIMARY KEY,
    chain_prev  bigint NOT NULL UNIQUE,
    sealed_at   timestamptz NOT NULL DEFAULT now()
);

-- Authenticated chain heads: mac = GMAC under master key master_version of
-- the checkpoint message (docs/operations.md), with a random 96-bit iv.
CREATE TABLE audit_checkpoints (
    id              bigserial PRIMARY KEY,
    last_audit_id   bigint NOT NULL,
    chain_length    bigint NOT NULL CHECK (chain_length > 0),
    head_hash       bytea NOT NULL CHECK (length(head_hash) = 32),
    master_version  integer NOT NULL,
    iv              bytea NOT NULL CHECK (length(iv) = 12),
    mac             bytea NOT NULL CHECK (length(mac) = 16),
    at              timestamptz NOT NULL DEFAULT now()
);
