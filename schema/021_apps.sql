-- 021_apps: owners (issue 18, seed 004, docs/gateways.md "Owners, binding,
-- reset"). An app is the account of a gateway's owner (a phone app's back
-- end): it holds tokens of role 'app', registers gateways on their behalf
-- within its enroller scope, binds gateways it can prove local access to,
-- and sees only the gateways it owns and their sub-devices. A gateway has
-- at most one owner; the gateway itself can reset (unbind) it.

CREATE TABLE apps (
    id              bigserial PRIMARY KEY,
    name            text NOT NULL UNIQUE CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,47}$'),
    -- The enroller scope: the device types it may register, into this group
    -- (no group: it registers nothing).
    enroll_types    text[] NOT NULL DEFAULT '{}' CHECK (cardinality(enroll_types) <= 16),
    enroll_group    text,
    self_registered boolean NOT NULL DEFAULT false,
    created_at      timestamptz NOT NULL DEFAULT now(),
    created_by      text,
    revoked_at      timestamptz
);

ALTER TABLE admin_tokens DROP CONSTRAINT admin_tokens_role_check;
ALTER TABLE admin_tokens
    ADD CONSTRAINT admin_tokens_role_check
        CHECK (role IN ('admin', 'operator', 'auditor', 'app')),
    ADD COLUMN app_id bigint REFERENCES apps (id),
    ADD CONSTRAINT admin_tokens_app_has_app CHECK ((role = 'app') = (app_id IS NOT NULL));

-- Who owns a device: registered by the app, or bound by it.
CREATE TABLE device_owners (
    device_pk bigint PRIMARY KEY REFERENCES devices (id) ON DELETE CASCADE,
    app_id    bigint NOT NULL REFERENCES apps (id),
    how       text NOT NULL CHECK (how IN ('registered', 'bound')),
    since     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX device_owners_app ON device_owners (app_id);

-- A gateway's verification code changes at each reset (the epoch is in its
-- HMAC), so a code seen before the reset binds nothing after it.
ALTER TABLE devices ADD COLUMN bind_epoch integer NOT NULL DEFAULT 0;

-- A bind challenge: a platform random for one app and one gateway, used at
-- most once, until expires_at. A challenge asked for a device that cannot
-- be bound (none, revoked, a sub-device) has no device: the answer does not
-- say whether one exists, and the bind fails.
CREATE TABLE bind_challenges (
    id         uuid PRIMARY KEY,
    app_id     bigint NOT NULL REFERENCES apps (id),
    device_pk  bigint REFERENCES devices (id) ON DELETE CASCADE,
    random     bytea NOT NULL CHECK (length(random) = 32),
    expires_at timestamptz NOT NULL,
    used_at    timestamptz
);
CREATE INDEX bind_challenges_expiry ON bind_challenges (expires_at);

-- One more way a session ends: its gateway was reset.
ALTER TABLE session_tombstones DROP CONSTRAINT session_tombstones_reason_check;
ALTER TABLE session_tombstones ADD CONSTRAINT session_tombstones_reason_check
    CHECK (reason IN ('ended_by_party', 'ended_by_operator', 'delivered', 'idle_timeout',
                      'max_lifetime', 'revoked', 'logout', 'superseded', 'reset'));

-- A bind: the challenge is used up whatever happens (p_ok: kmsd found the
-- proof right); a right proof binds the gateway to the app unless another
-- app owns it. Outcomes: bound (now or before, by this app), already_bound,
-- bind_failed (wrong proof, or a challenge unknown, another app's, used or
-- expired). Each is audited.
CREATE FUNCTION qkms_app_bind(p_app bigint, p_challenge uuid, p_ok boolean)
RETURNS TABLE (outcome text, device_id text)
LANGUAGE plpgsql AS $$
DECLARE
    ch bind_challenges;
    d devices;
    owner bigint;
    app text;
BEGIN
    -- A revoked app binds nothing (its revocation waits for this, or wins).
    SELECT 'app/' || name INTO app FROM apps WHERE id = p_app AND revoked_at IS NULL FOR SHARE;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'bind_failed', NULL::text;
        RETURN;
    END IF;
    UPDATE bind_challenges SET used_at = now()
     WHERE id = p_challenge AND app_id = p_app AND used_at IS NULL AND expires_at > now()
    RETURNING * INTO ch;
    IF ch.id IS NULL OR ch.device_pk IS NULL OR NOT p_ok THEN
        INSERT INTO audit_log (actor, event, device_id, detail)
        SELECT app, 'app.bind_failed', dd.device_id,
               jsonb_build_object('challenge', p_challenge,
                                  'reason', CASE WHEN ch.id IS NULL OR ch.device_pk IS NULL
                                                 THEN 'challenge' ELSE 'proof' END)
          FROM (SELECT NULL) one
          LEFT JOIN bind_challenges c ON c.id = p_challenge
          LEFT JOIN devices dd ON dd.id = c.device_pk;
        RETURN QUERY SELECT 'bind_failed', NULL::text;
        RETURN;
    END IF;
    SELECT * INTO d FROM devices WHERE id = ch.device_pk FOR UPDATE;
    INSERT INTO device_owners (device_pk, app_id, how) VALUES (d.id, p_app, 'bound')
    ON CONFLICT (device_pk) DO NOTHING;
    SELECT o.app_id INTO owner FROM device_owners o WHERE o.device_pk = d.id;
    IF owner <> p_app THEN
        INSERT INTO audit_log (actor, event, device_id, detail)
        VALUES (app, 'app.bind_refused', d.device_id,
                jsonb_build_object('reason', 'already_bound'));
        RETURN QUERY SELECT 'already_bound', d.device_id;
        RETURN;
    END IF;
    INSERT INTO audit_log (actor, event, device_id, detail)
    VALUES (app, 'device.bound', d.device_id, jsonb_build_object('app', substr(app, 5)));
    RETURN QUERY SELECT 'bound', d.device_id;
END $$;

-- A gateway's reset, at its own request (under its access key): every
-- binding of it and of its sub-devices goes, every session of it ends
-- (tombstone 'reset'), its login with them, its pending challenges are used
-- up, and its bind epoch moves on (a new verification code). The request's
-- nonce is recorded first. Outcomes: unauthenticated, stale, replay,
-- not_access, ok (the bindings and sessions ended, the new epoch). The
-- sub-devices' own sessions go on.
CREATE FUNCTION qkms_gateway_reset(p_device bigint, p_key_index integer, p_nonce bytea,
                                   p_ts bigint, p_skew integer, p_access boolean)
RETURNS TABLE (outcome text, unbound integer, ended integer, epoch integer)
LANGUAGE plpgsql AS $$
DECLARE
    d devices;
    refusal text;
    n_owner integer;
    n_sess integer := 0;
    sid bigint;
    new_epoch integer;
BEGIN
    SELECT * INTO d FROM devices WHERE id = p_device;
    refusal := qkms_auth_refusal(d, p_key_index);
    IF refusal IS NOT NULL THEN
        RETURN QUERY SELECT 'unauthenticated', NULL::int, NULL::int, NULL::int;
        RETURN;
    END IF;
    IF NOT qkms_ts_ok(p_ts, p_skew) THEN
        RETURN QUERY SELECT 'stale', NULL::int, NULL::int, NULL::int;
        RETURN;
    END IF;
    IF NOT qkms_nonce_take(p_device, p_nonce, p_ts, p_skew) THEN
        RETURN QUERY SELECT 'replay', NULL::int, NULL::int, NULL::int;
        RETURN;
    END IF;
    IF NOT p_access THEN
        RETURN QUERY SELECT 'not_access', NULL::int, NULL::int, NULL::int;
        RETURN;
    END IF;
    UPDATE devices SET bind_epoch = bind_epoch + 1 WHERE id = p_device
    RETURNING bind_epoch INTO new_epoch;
    -- Its sub-devices go with it (a reset gateway changes hands with them).
    DELETE FROM device_owners
     WHERE device_pk = p_device OR device_pk IN (SELECT id FROM devices WHERE parent_id = p_device);
    GET DIAGNOSTICS n_owner = ROW_COUNT;
    UPDATE bind_challenges SET used_at = now() WHERE device_pk = p_device AND used_at IS NULL;
    FOR sid IN SELECT id FROM sessions WHERE initiator = p_device OR responder = p_device
               ORDER BY id FOR UPDATE LOOP
        PERFORM qkms_session_destroy(sid, 'reset', d.device_id);
        n_sess := n_sess + 1;
    END LOOP;
    UPDATE gateway_credentials SET login_hash = NULL, updated_at = now()
     WHERE device_pk = p_device;
    INSERT INTO audit_log (actor, event, device_id, detail)
    VALUES (d.device_id, 'gateway.reset', d.device_id,
            jsonb_build_object('unbound', n_owner, 'sessions_ended', n_sess,
                               'bind_epoch', new_epoch));
    RETURN QUERY SELECT 'ok', n_owner, n_sess, new_epoch;
END $$;
