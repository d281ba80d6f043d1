-- 005_readiness: the row kmsd's readiness prober writes (kmsd/readiness.c).
--
-- /readyz must say whether kmsd can commit, not only whether PostgreSQL
-- answers a SELECT: every instance updates this one row about once a
-- second, a durable commit like a delivery's. It holds no secret.
CREATE TABLE readiness_probe (
    one       boolean PRIMARY KEY DEFAULT true CHECK (one),
    probed_at timestamptz NOT NULL
);
INSERT INTO readiness_probe (probed_at) VALUES (now());
