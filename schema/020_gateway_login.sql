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

-- The first step of a login, in one transaction before kmsd computes a
-- password hash: the request's authentication re-checked, its ts, its
-- nonce recorded (so a replayed or stale request never costs a hash), the
-- key's purpose (p_access: an access key; not_access otherwise), the
-- device's standing, the account and its lock. An attempt that may go on
-- is counted at once (failures + 1): the attempts in flight together count,
-- so at most p_max passwords are ever checked per lock. The one that would
-- be the (p_max + 1)-th locks the account instead. Outcomes: unauthenticated,
-- stale, replay, not_access, device_inactive / service_expired (detail: the
-- state / the end), no_credential, locked (retry_s: the seconds left),
-- check (the credential to check the password against).
CREATE FUNCTION qkms_gateway_login_begin(p_device bigint, p_key_index integer, p_nonce bytea,
                                         p_ts bigint, p_skew integer, p_access boolean,
                                         p_max_failures integer, p_lock_s integer)
RETURNS TABLE (outcome text, detail text, retry_s integer, tid text, kdf_n bigint,
               kdf_r integer, kdf_p integer, salt bytea, hash bytea)
LANGUAGE plpgsql AS $$
DECLARE
    d devices;
    c gateway_credentials;
    refusal text;
BEGIN
    SELECT * INTO d FROM devices WHERE id = p_device;
    refusal := qkms_auth_refusal(d, p_key_index);
    IF refusal IS NOT NULL THEN
        RETURN QUERY SELECT 'unauthenticated', refusal, NULL::int, NULL::text, NULL::bigint,
                            NULL::int, NULL::int, NULL::bytea, NULL::bytea;
        RETURN;
    END IF;
    IF NOT qkms_ts_ok(p_ts, p_skew) THEN
        RETURN QUERY SELECT 'stale', NULL::text, NULL::int, NULL::text, NULL::bigint, NULL::int,
                            NULL::int, NULL::bytea, NULL::bytea;
        RETURN;
    END IF;
    IF NOT qkms_nonce_take(p_device, p_nonce, p_ts, p_skew) THEN
        RETURN QUERY SELECT 'replay', NULL::text, NULL::int, NULL::text, NULL::bigint, NULL::int,
                            NULL::int, NULL::bytea, NULL::bytea;
        RETURN;
    END IF;
    IF NOT p_access THEN
        RETURN QUERY SELECT 'not_access', NULL::text, NULL::int, NULL::text, NULL::bigint,
                            NULL::int, NULL::int, NULL::bytea, NULL::bytea;
        RETURN;
    END IF;
    refusal := qkms_device_standing(d);
    IF refusal IS NOT NULL THEN
        RETURN QUERY SELECT refusal, CASE refusal WHEN 'service_expired'
                                     THEN qkms_rfc3339(d.service_until) ELSE d.state END,
                            NULL::int, NULL::text, NULL::bigint, NULL::int, NULL::int,
                            NULL::bytea, NULL::bytea;
        RETURN;
    END IF;
    SELECT * INTO c FROM gateway_credentials WHERE device_pk = p_device FOR UPDATE;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'no_credential', NULL::text, NULL::int, NULL::text, NULL::bigint,
                            NULL::int, NULL::int, NULL::bytea, NULL::bytea;
        RETURN;
    END IF;
    IF c.locked_until > now() THEN
        RETURN QUERY SELECT 'locked', NULL::text,
                            greatest(1, ceil(extract(epoch FROM c.locked_until - now())))::int,
                            NULL::text, NULL::bigint, NULL::int, NULL::int, NULL::bytea,
                            NULL::bytea;
        RETURN;
    END IF;
    IF c.failures >= p_max_failures THEN
        UPDATE gateway_credentials
           SET failures = 0, locked_until = now() + make_interval(secs => p_lock_s),
               updated_at = now()
         WHERE device_pk = p_device;
        INSERT INTO audit_log (actor, event, device_id, detail)
        VALUES (d.device_id, 'gateway.login_locked', d.device_id,
                jsonb_build_object('failures', c.failures, 'lock_s', p_lock_s));
        RETURN QUERY SELECT 'locked', NULL::text, p_lock_s, NULL::text, NULL::bigint, NULL::int,
                            NULL::int, NULL::bytea, NULL::bytea;
        RETURN;
    END IF;
    UPDATE gateway_credentials SET failures = c.failures + 1 WHERE device_pk = p_device;
    RETURN QUERY SELECT 'check', NULL::text, NULL::int, c.tid, c.kdf_n, c.kdf_r, c.kdf_p, c.salt,
                        c.hash;
END $$;

-- A password begin handed out did not match (p_hash: the credential's hash
-- it was checked against). Audited gateway.login_failed; the attempt was
-- counted by begin. The failure that reaches p_max locks the account
-- (audited gateway.login_locked). A credential replaced meanwhile counts
-- nothing more. Outcomes: failed, locked (retry_s).
CREATE FUNCTION qkms_gateway_login_failed(p_device bigint, p_hash bytea, p_max_failures integer,
                                          p_lock_s integer)
RETURNS TABLE (outcome text, retry_s integer)
LANGUAGE plpgsql AS $$
DECLARE
    c gateway_credentials;
    dev text;
BEGIN
    SELECT * INTO c FROM gateway_credentials WHERE device_pk = p_device FOR UPDATE;
    SELECT device_id INTO dev FROM devices WHERE id = p_device;
    IF c.device_pk IS NULL OR c.hash <> p_hash THEN
        RETURN QUERY SELECT 'failed', NULL::int;
        RETURN;
    END IF;
    INSERT INTO audit_log (actor, event, device_id, detail)
    VALUES (dev, 'gateway.login_failed', dev, jsonb_build_object('failures', c.failures));
    IF c.locked_until > now() THEN
        -- Another attempt in flight locked it first.
        RETURN QUERY SELECT 'locked',
                            greatest(1, ceil(extract(epoch FROM c.locked_until - now())))::int;
        RETURN;
    END IF;
    IF c.failures >= p_max_failures THEN
        UPDATE gateway_credentials
           SET failures = 0, locked_until = now() + make_interval(secs => p_lock_s),
               updated_at = now()
         WHERE device_pk = p_device;
        INSERT INTO audit_log (actor, event, device_id, detail)
        VALUES (dev, 'gateway.login_locked', dev,
                jsonb_build_object('failures', c.failures, 'lock_s', p_lock_s));
        RETURN QUERY SELECT 'locked', p_lock_s;
        RETURN;
    END IF;
    RETURN QUERY SELECT 'failed', NULL::int;
END $$;

-- A login whose session (p_hash) qkms_session_key has just made, after its
-- password matched the credential whose hash is p_cred: it becomes the
-- gateway's one login, the one before ends (tombstone 'superseded'), the
-- failure count and any lock start again. Returns false when the
-- credential was replaced meanwhile (the password checked is no longer
-- the account's; kmsd then ends the new session).
CREATE FUNCTION qkms_gateway_login_done(p_device bigint, p_hash bytea, p_login_id text,
                                        p_cred bytea)
RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    c gateway_credentials;
    dev text;
    prev bigint;
BEGIN
    SELECT * INTO c FROM gateway_credentials WHERE device_pk = p_device FOR UPDATE;
    IF c.device_pk IS NULL OR c.hash <> p_cred THEN
        RETURN false;
    END IF;
    SELECT device_id INTO dev FROM devices WHERE id = p_device;
    IF c.login_hash IS NOT NULL AND c.login_hash <> p_hash THEN
        SELECT id INTO prev FROM sessions WHERE session_hash = c.login_hash FOR UPDATE;
        IF prev IS NOT NULL THEN
            PERFORM qkms_session_destroy(prev, 'superseded', dev);
        END IF;
    END IF;
    UPDATE gateway_credentials
       SET login_hash = p_hash, failures = 0, locked_until = NULL, updated_at = now()
     WHERE device_pk = p_device;
    INSERT INTO audit_log (actor, event, device_id, detail)
    VALUES (dev, 'gateway.login', dev,
            jsonb_build_object('login_id', p_login_id, 'session_hash', encode(p_hash, 'hex')));
    RETURN true;
END $$;

-- Logout: the gateway's current login ends (tombstone 'logout'), in the
-- request's transaction, its nonce recorded first. Outcomes:
-- unauthenticated, stale, replay, not_access, ok, no_login.
CREATE FUNCTION qkms_gateway_logout(p_device bigint, p_key_index integer, p_nonce bytea,
                                    p_ts bigint, p_skew integer, p_access boolean)
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
    IF NOT p_access THEN
        RETURN 'not_access';
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
