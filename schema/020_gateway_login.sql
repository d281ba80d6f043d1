-- 020_gateway_login: a gateway logs in (issue 18, seed 004, docs/gateways.md
-- "Login"). It sends its account (tid and password) sealed under its access
-- key; the platform checks the password and answers a session key, wrapped
-- under the access key, that differs at every login: a channel with the
-- platform (014's platform peer) whose session ID the platform chose. One
-- live login per gateway: a new login ends the one before; logout, the
-- policy's timeouts and revocation end it, with tombstones, as sessions
-- end.

-- A gateway's account. The password is kept only as an scrypt hash (RFC
-- 7914, OpenSSL's EVP_KDF) with its own salt and cost; kmsd verifies it.
-- failures counts wrong passwords since the last login or lock; at the
-- configured number the account is locked until locked_until. login_hash
-- names the current login's session (sessions.session_hash).
CREATE TABLE gateway_credentials (
    device_pk    bigint PRIMARY KEY REFERENCES devices (id) ON DELETE CASCADE,
    tid          text NOT NULL UNIQUE CHECK (tid ~ '^[!-~]{1,64}$'),
    kdf          text NOT NULL CHECK (kdf = 'scrypt'),
    kdf_n        bigint NOT NULL CHECK (kdf_n >= 1024),
    kdf_r        integer NOT NULL CHECK (kdf_r BETWEEN 1 AND 32),
    kdf_p        integer NOT NULL CHECK (kdf_p BETWEEN 1 AND 16),
    salt         bytea NOT NULL CHECK (length(salt) = 16),
    hash         bytea NOT NULL CHECK (length(hash) = 32),
    failures     integer NOT NULL DEFAULT 0,
    locked_until timestamptz,
    login_hash   bytea,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);

-- Two more ways a session ends: its gateway logged out, or logged in again.
ALTER TABLE session_tombstones DROP CONSTRAINT session_tombstones_reason_check;
ALTER TABLE session_tombstones ADD CONSTRAINT session_tombstones_reason_check
    CHECK (reason IN ('ended_by_party', 'ended_by_operator', 'delivered', 'idle_timeout',
                      'max_lifetime', 'revoked', 'logout', 'superseded'));

-- A login kmsd refused after the request authenticated (p_why: 'locked',
-- the account is locked, kmsd did not look at the password; 'no_credential';
-- 'wrong' tid or password). The request's nonce is recorded first, so a
-- captured request replayed cannot spend the gateway's attempts. Outcomes:
-- unauthenticated, stale, replay, device_inactive, service_expired,
-- no_credential, locked (with the seconds left), failed, locked_now (this
-- failure locked the account).
CREATE FUNCTION qkms_gateway_login_refused(p_device bigint, p_key_index integer,
                                           p_nonce bytea, p_ts bigint, p_skew integer,
                                           p_why text, p_max_failures integer,
                                           p_lock_s integer)
RETURNS TABLE (outcome text, retry_s integer)
LANGUAGE plpgsql AS $$
DECLARE
    d devices;
    c gateway_credentials;
    refusal text;
BEGIN
    SELECT * INTO d FROM devices WHERE id = p_device;
    refusal := qkms_auth_refusal(d, p_key_index);
    IF refusal IS NOT NULL THEN
        RETURN QUERY SELECT 'unauthenticated', NULL::int;
        RETURN;
    END IF;
    IF NOT qkms_ts_ok(p_ts, p_skew) THEN
        RETURN QUERY SELECT 'stale', NULL::int;
        RETURN;
    END IF;
    IF NOT qkms_nonce_take(p_device, p_nonce, p_ts, p_skew) THEN
        RETURN QUERY SELECT 'replay', NULL::int;
        RETURN;
    END IF;
    refusal := qkms_device_standing(d);
    IF refusal IS NOT NULL THEN
        RETURN QUERY SELECT refusal, NULL::int;
        RETURN;
    END IF;
    SELECT * INTO c FROM gateway_credentials WHERE device_pk = p_device FOR UPDATE;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'no_credential', NULL::int;
        RETURN;
    END IF;
    IF c.locked_until > now() THEN
        RETURN QUERY SELECT 'locked',
                            ceil(extract(epoch FROM c.locked_until - now()))::int;
        RETURN;
    END IF;
    IF c.failures + 1 >= p_max_failures THEN
        UPDATE gateway_credentials
           SET failures = 0, locked_until = now() + make_interval(secs => p_lock_s),
               updated_at = now()
         WHERE device_pk = p_device;
        INSERT INTO audit_log (actor, event, device_id, detail)
        VALUES (d.device_id, 'gateway.login_locked', d.device_id,
                jsonb_build_object('failures', c.failures + 1, 'lock_s', p_lock_s));
        RETURN QUERY SELECT 'locked_now', p_lock_s;
        RETURN;
    END IF;
    UPDATE gateway_credentials SET failures = c.failures + 1, updated_at = now()
     WHERE device_pk = p_device;
    INSERT INTO audit_log (actor, event, device_id, detail)
    VALUES (d.device_id, 'gateway.login_failed', d.device_id,
            jsonb_build_object('failures', c.failures + 1, 'reason', p_why));
    RETURN QUERY SELECT 'failed', NULL::int;
END $$;

-- A login whose session (p_hash) qkms_session_key has just made: it becomes
-- the gateway's one login, the one before ends (tombstone 'superseded'),
-- the failure count starts again. Returns false when the credential went
-- away or was locked meanwhile (kmsd then ends the new session).
CREATE FUNCTION qkms_gateway_login_done(p_device bigint, p_hash bytea, p_login_id text)
RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    c gateway_credentials;
    d devices;
    prev bigint;
BEGIN
    SELECT * INTO c FROM gateway_credentials WHERE device_pk = p_device FOR UPDATE;
    SELECT * INTO d FROM devices WHERE id = p_device;
    IF NOT FOUND OR c.device_pk IS NULL OR c.locked_until > now() THEN
        RETURN false;
    END IF;
    IF c.login_hash IS NOT NULL AND c.login_hash <> p_hash THEN
        SELECT id INTO prev FROM sessions WHERE session_hash = c.login_hash FOR UPDATE;
        IF prev IS NOT NULL THEN
            PERFORM qkms_session_destroy(prev, 'superseded', d.device_id);
        END IF;
    END IF;
    UPDATE gateway_credentials SET login_hash = p_hash, failures = 0, updated_at = now()
     WHERE device_pk = p_device;
    INSERT INTO audit_log (actor, event, device_id, detail)
    VALUES (d.device_id, 'gateway.login', d.device_id,
            jsonb_build_object('login_id', p_login_id, 'session_hash', encode(p_hash, 'hex')));
    RETURN true;
END $$;

-- Logout: the gateway's current login ends (tombstone 'logout'), in the
-- request's transaction, its nonce recorded first. Outcomes:
-- unauthenticated, stale, replay, ok, no_login.
CREATE FUNCTION qkms_gateway_logout(p_device bigint, p_key_index integer, p_nonce bytea,
                                    p_ts bigint, p_skew integer)
RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    d devices;
    c gateway_credentials;
    sid bigint;
    refusal text;
BEGIN
    SELECT * INTO d FROM devices WHERE id = p_device;
    refusal := qkms_auth_refusal(d, p_key_index);
    IF refusal IS NOT NULL THEN
        RETURN 'unauthenticated';
    END IF;
    IF NOT qkms_ts_ok(p_ts, p_skew) THEN
        RETURN 'stale';
    END IF;
    IF NOT qkms_nonce_take(p_device, p_nonce, p_ts, p_skew) THEN
        RETURN 'replay';
    END IF;
    SELECT * INTO c FROM gateway_credentials WHERE device_pk = p_device FOR UPDATE;
    IF c.login_hash IS NOT NULL THEN
        SELECT id INTO sid FROM sessions WHERE session_hash = c.login_hash FOR UPDATE;
        UPDATE gateway_credentials SET login_hash = NULL, updated_at = now()
         WHERE device_pk = p_device;
    END IF;
    IF sid IS NULL THEN
        RETURN 'no_login';
    END IF;
    PERFORM qkms_session_destroy(sid, 'logout', d.device_id);
    INSERT INTO audit_log (actor, event, device_id, detail)
    VALUES (d.device_id, 'gateway.logout', d.device_id,
            jsonb_build_object('session_hash', encode(c.login_hash, 'hex')));
    RETURN 'ok';
END $$;
