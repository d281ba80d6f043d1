-- 025_device_end: a device ends all its sessions at once (issue 20, seed
-- 003: a vehicle that powers down ends every session it is a party of).
--
-- Finding a device's sessions needs an index on each party column: without
-- one, every end-all (one per power-down: frequent in a fleet, and any
-- authenticated device may send it) would read every live session. The
-- revocation of a device and a gateway's reset use the same two indexes.
-- Neither column is ever updated, so the request path's updates stay HOT;
-- what each index costs is one entry per session created (measured in
-- docs/performance.md, "Device-wide end").
CREATE INDEX sessions_initiator ON sessions (initiator);
CREATE INDEX sessions_responder ON sessions (responder) WHERE responder IS NOT NULL;

-- One more way a session ends: its party ended all its sessions.
ALTER TABLE session_tombstones DROP CONSTRAINT session_tombstones_reason_check;
ALTER TABLE session_tombstones ADD CONSTRAINT session_tombstones_reason_check
    CHECK (reason IN ('ended_by_party', 'ended_by_operator', 'delivered', 'idle_timeout',
                      'max_lifetime', 'revoked', 'logout', 'superseded', 'reset',
                      'device_ended'));

-- End every live session of one device, at its authenticated request, in
-- the request's transaction: authentication re-checked as qkms_session_end
-- does (a suspended device may still end its sessions: ending only
-- destroys), the clock window, the nonce recorded, then each session
-- destroyed with its tombstone ('device_ended') and audit row, rows locked
-- in id order (as a gateway's reset does) so that two such transactions
-- cannot deadlock. A gateway's login session is one of its sessions: its
-- login ends with it. One audit row device.sessions_ended counts them.
-- Outcomes: 'unauthenticated: <why>', 'stale', 'replay', 'ok' (n: how many).
CREATE FUNCTION qkms_session_end_all(p_device bigint, p_key_index integer, p_nonce bytea,
                                     p_ts bigint, p_skew integer, p_cert bytea)
RETURNS TABLE (outcome text, n integer) LANGUAGE plpgsql AS $$
DECLARE
    d devices;
    sid bigint;
    refusal text;
    ended integer := 0;
BEGIN
    SELECT * INTO d FROM devices WHERE id = p_device;
    refusal := CASE WHEN p_cert IS NULL THEN qkms_auth_refusal(d, p_key_index)
                    ELSE qkms_cert_refusal(d, p_cert) END;
    IF refusal IS NOT NULL THEN
        RETURN QUERY SELECT 'unauthenticated: ' || refusal, 0;
        RETURN;
    END IF;
    IF NOT qkms_ts_ok(p_ts, p_skew) THEN
        RETURN QUERY SELECT 'stale'::text, 0;
        RETURN;
    END IF;
    IF NOT qkms_nonce_take(p_device, p_nonce, p_ts, p_skew) THEN
        RETURN QUERY SELECT 'replay'::text, 0;
        RETURN;
    END IF;
    FOR sid IN SELECT id FROM sessions WHERE initiator = p_device OR responder = p_device
               ORDER BY id FOR UPDATE LOOP
        IF qkms_session_destroy(sid, 'device_ended', d.device_id) THEN
            ended := ended + 1;
        END IF;
    END LOOP;
    UPDATE gateway_credentials SET login_hash = NULL, updated_at = now()
     WHERE device_pk = p_device AND login_hash IS NOT NULL;
    INSERT INTO audit_log (actor, event, device_id, detail)
    VALUES (d.device_id, 'device.sessions_ended', d.device_id,
            jsonb_build_object('sessions_ended', ended));
    RETURN QUERY SELECT 'ok'::text, ended;
END $$;
