"""Paired session keys by session ID, end to end against real kmsd,
PostgreSQL and SoftHSM, with the independent Python protocol implementation
as the device."""
import concurrent.futures
import json
import os
import subprocess
import time
import uuid

import re

import pytest
import requests

import helpers
from conftest import Stack, _finish
from helpers import error_code as code, get_key, post, uid, veh_enc_stack
from qkms_proto_py import ProtocolError, b64u


@pytest.fixture(scope="module")
def ss():
    st = veh_enc_stack("qkms-sess", {"QKMS_SESSION_REAP_INTERVAL": "1",
                                     "QKMS_PROTOCOL_CLOCK_SKEW": "60"})
    yield st
    _finish(st)


def stone_reason(st, sid):
    """The reason of sid's tombstone, found the way kmsd finds it (by the
    keyed hash of the ID), or None."""
    r = st.admin("GET", f"/v1/admin/sessions/{sid}")
    if r.status_code == 404:
        return None
    body = r.json()
    return body["reason"] if body["state"] == "ended" else None


def make_device(st, type_, group=None, keys=2, key_bits=128, validity_days=365):
    return helpers.make_device(st, type_, group or st.group, keys=keys, key_bits=key_bits,
                               validity_days=validity_days)


@pytest.fixture
def pair(ss):
    return make_device(ss, "vehicle"), make_device(ss, "encryptor")


# ---- the core flow -------------------------------------------------------------

@pytest.mark.parametrize("first", ["vehicle", "encryptor"])
def test_both_orders_get_one_key(ss, pair, first):
    veh, enc = pair
    sid = uid()
    a, b = (veh, enc) if first == "vehicle" else (enc, veh)
    ka = get_key(ss, a, sid, b)
    kb = get_key(ss, b, sid, a)
    assert ka.key == kb.key and ka.key_id == kb.key_id and len(ka.key) == 16
    assert ka.delivery == "session"
    # A repeat (lost response) gets the same key; a new session ID a new key.
    assert get_key(ss, a, sid, b).key == ka.key
    assert get_key(ss, a, uid(), b).key != ka.key
    s = ss.admin("GET", f"/v1/admin/sessions/{sid}").json()
    assert s["initiator"] == a.device_id and s["responder"] == b.device_id
    assert s["state"] == "active" and s["key_id"] == ka.key_id
    # At rest the key exists only wrapped under the master key.
    stored = ss.psql(f"SELECT encode(wrapped_key, 'hex') FROM sessions WHERE session_id = '{sid}'").strip()
    assert ka.key.hex() not in stored and len(stored) == 2 * (16 + 33)


def test_other_key_index_and_256_bit_policy(ss):
    grp = "g256-" + uuid.uuid4().hex[:6]
    r = ss.admin("POST", "/v1/admin/policies", json={
        "name": "meters-" + grp, "type_a": "meter", "type_b": "gateway", "key_bits": 256})
    assert r.status_code == 201
    m = make_device(ss, "meter", group=grp, key_bits=256)
    g = make_device(ss, "gateway", group=grp)
    sid = uid()
    k1 = get_key(ss, m, sid, g, index=1)
    k2 = get_key(ss, g, sid, m, index=0)
    assert k1.key == k2.key and len(k1.key) == 32


def test_concurrent_parties_many_sessions(ss):
    """Both parties ask at the same moment, over many sessions: every pair
    holds identical keys with the same key ID, and the database has exactly
    one key per session."""
    pairs = [(make_device(ss, "vehicle"), make_device(ss, "encryptor")) for _ in range(4)]
    jobs = []
    for i in range(60):
        veh, enc = pairs[i % len(pairs)]
        sid = uid("C")
        jobs.append((sid, veh, enc))

    with concurrent.futures.ThreadPoolExecutor(max_workers=16) as ex:
        futs = [(sid, ex.submit(get_key, ss, veh, sid, enc), ex.submit(get_key, ss, enc, sid, veh))
                for sid, veh, enc in jobs]
        for sid, fa, fb in futs:
            ka, kb = fa.result(), fb.result()
            assert ka.key == kb.key and ka.key_id == kb.key_id, sid
    sids = ",".join(f"'{sid}'" for sid, _, _ in jobs)
    assert ss.psql(f"SELECT count(*) FROM sessions WHERE session_id IN ({sids})").strip() == "60"
    assert ss.psql(f"SELECT count(DISTINCT key_id) FROM sessions WHERE session_id IN ({sids})").strip() == "60"


def test_third_device_refused_and_audited(ss, pair):
    veh, enc = pair
    other = make_device(ss, "vehicle")
    sid = uid()
    get_key(ss, veh, sid, enc)
    r = post(ss, other.key_request(sid, enc.device_id))
    assert r.status_code == 403 and code(r) == "not_a_party"
    r = post(ss, other.key_request(sid, veh.device_id))
    assert r.status_code == 403 and code(r) == "not_a_party"
    # The responder must name the initiator.
    r = post(ss, enc.key_request(sid, other.device_id))
    assert r.status_code == 403 and code(r) == "peer_mismatch"
    r = post(ss, other.end_request(sid))
    assert r.status_code == 403
    refused = ss.psql(f"SELECT count(*) FROM audit_log WHERE event = 'session.refused' "
                      f"AND device_id = '{other.device_id}'").strip()
    assert refused == "3"
    # The third device never got the key; the parties still can.
    assert get_key(ss, enc, sid, veh).key == get_key(ss, veh, sid, enc).key


def test_policy_deny_and_groups(ss):
    veh = make_device(ss, "vehicle")
    veh2 = make_device(ss, "vehicle")
    r = post(ss, veh.key_request(uid(), veh2.device_id))
    assert r.status_code == 403 and code(r) == "policy_denied"
    # Across groups: denied by the same-group policy...
    g2 = "other-" + uuid.uuid4().hex[:6]
    enc_far = make_device(ss, "encryptor", group=g2)
    r = post(ss, veh.key_request(uid(), enc_far.device_id))
    assert r.status_code == 403 and code(r) == "policy_denied"
    # ...until a cross-group policy names both groups.
    r = ss.admin("POST", "/v1/admin/policies", json={
        "name": "x-" + g2, "type_a": "vehicle", "type_b": "encryptor",
        "group_a": ss.group, "group_b": g2})
    assert r.status_code == 201
    sid = uid()
    assert get_key(ss, veh, sid, enc_far).key == get_key(ss, enc_far, sid, veh).key
    assert ss.admin("DELETE", "/v1/admin/policies/x-" + g2).status_code == 200
    r = post(ss, veh.key_request(uid(), enc_far.device_id))
    assert r.status_code == 403


def test_unknown_and_inactive_peer(ss, pair):
    veh, enc = pair
    r = post(ss, veh.key_request(uid(), "NO-SUCH-DEVICE"))
    assert r.status_code == 422 and code(r) == "unknown_peer"
    r = post(ss, veh.key_request(uid(), veh.device_id))
    assert r.status_code == 422 and code(r) == "invalid_request"
    ss.admin("POST", f"/v1/admin/devices/{enc.device_id}/suspend")
    r = post(ss, veh.key_request(uid(), enc.device_id))
    assert r.status_code == 422 and code(r) == "peer_inactive"


# ---- authentication ------------------------------------------------------------

def test_replay_refused(ss, pair):
    veh, enc = pair
    req = veh.key_request(uid(), enc.device_id)
    assert post(ss, req).status_code == 200
    r = post(ss, req)
    assert r.status_code == 401 and code(r) == "unauthenticated"
    logs = ss.logs()
    assert "nonce already used (replay)" in logs


def test_stale_and_future_timestamps(ss, pair):
    veh, enc = pair
    for ts in (int(time.time()) - 120, int(time.time()) + 120):
        r = post(ss, veh.key_request(uid(), enc.device_id, ts=ts))
        assert r.status_code == 401 and code(r) == "unauthenticated"
    assert "timestamp outside the clock window" in ss.logs()


def test_wrong_key_index_and_wrong_key(ss, pair):
    veh, enc = pair
    req = veh.key_request(uid(), enc.device_id, index=1)
    body = dict(req.body, key_index=0)  # claims key 0, encrypted under key 1
    r = requests.post(ss.url + req.path, json=body)
    assert r.status_code == 401
    body = dict(req.body, key_index=7)  # no such key
    r = requests.post(ss.url + req.path, json=body)
    assert r.status_code == 401
    # Another device's key under this device's name.
    req = enc.key_request(uid(), veh.device_id)
    body = dict(req.body, device_id=veh.device_id)
    r = requests.post(ss.url + req.path, json=body)
    assert r.status_code == 401
    # A key request replayed to the end endpoint (op is bound in the AAD).
    req = veh.key_request(uid(), enc.device_id)
    r = requests.post(ss.url + "/v1/sessions/end", json=req.body)
    assert r.status_code == 401
    # Every refusal answers exactly the same thing.
    assert r.json() == {"error": {"code": "unauthenticated",
                                  "message": "request could not be authenticated"}}


def test_suspended_revoked_and_expired_devices(ss):
    veh, enc = make_device(ss, "vehicle"), make_device(ss, "encryptor")
    sid = uid()
    get_key(ss, veh, sid, enc)
    get_key(ss, enc, sid, veh)
    ss.admin("POST", f"/v1/admin/devices/{veh.device_id}/suspend")
    r = post(ss, veh.key_request(uid(), enc.device_id))
    assert r.status_code == 403 and code(r) == "device_inactive"
    ss.admin("POST", f"/v1/admin/devices/{veh.device_id}/resume")
    assert post(ss, veh.key_request(sid, enc.device_id)).status_code == 200
    # Revocation ends the device's open sessions and destroys their keys.
    ss.admin("POST", f"/v1/admin/devices/{enc.device_id}/revoke")
    assert ss.psql(f"SELECT count(*) FROM sessions WHERE session_id = '{sid}'").strip() == "0"
    assert stone_reason(ss, sid) == "revoked"
    r = post(ss, enc.key_request(uid(), veh.device_id))
    assert r.status_code == 401
    r = post(ss, veh.key_request(sid, enc.device_id))
    assert r.status_code == 409 and code(r) == "session_ended"
    # An expired device key is refused.
    v2, e2 = make_device(ss, "vehicle"), make_device(ss, "encryptor")
    ss.psql(f"UPDATE device_keys SET not_before = now() - interval '2 days', not_after = now() - "
            f"interval '1 day' FROM devices d WHERE d.id = device_pk AND d.device_id = '{v2.device_id}' "
            f"AND key_index = 0")
    r = post(ss, v2.key_request(uid(), e2.device_id, index=0))
    assert r.status_code == 401
    assert "key outside its validity" in ss.logs()
    assert post(ss, v2.key_request(uid(), e2.device_id, index=1)).status_code == 200


# ---- ending and destruction ------------------------------------------------------

@pytest.mark.parametrize("ender", ["initiator", "responder"])
def test_end_by_either_party(ss, pair, ender):
    veh, enc = pair
    sid = uid()
    get_key(ss, veh, sid, enc)
    get_key(ss, enc, sid, veh)
    who = veh if ender == "initiator" else enc
    r = post(ss, who.end_request(sid))
    assert r.status_code == 200 and r.json() == {"v": 1, "session_id": sid, "ended": True}
    for dev, peer in ((veh, enc), (enc, veh)):
        r = post(ss, dev.key_request(sid, peer.device_id))
        assert r.status_code == 409 and code(r) == "session_ended"
    r = post(ss, veh.end_request(sid))
    assert r.status_code == 409
    assert post(ss, veh.end_request(uid())).status_code == 404
    # Destruction in the database: no row, no wrapped key; a tombstone with
    # the hashed ID only.
    assert ss.psql(f"SELECT count(*) FROM sessions WHERE session_id = '{sid}'").strip() == "0"
    t = ss.admin("GET", f"/v1/admin/sessions/{sid}").json()
    row = ss.psql(f"SELECT initiator, responder, reason FROM session_tombstones "
                  f"WHERE session_hash = decode('{t['session_hash']}', 'hex')").strip()
    assert row == f"{veh.device_id}|{enc.device_id}|ended_by_party"
    # Keyed: not the bare SHA-256 of the ID, which anyone could compute.
    assert ss.psql(f"SELECT count(*) FROM session_tombstones WHERE session_hash = "
                   f"sha256('{sid}'::bytea)").strip() == "0"
    assert sid not in ss.psql("SELECT string_agg(encode(session_hash, 'escape'), ',') FROM session_tombstones")
    t = ss.admin("GET", f"/v1/admin/sessions/{sid}").json()
    assert t["state"] == "ended" and t["reason"] == "ended_by_party"


def test_operator_end(ss, pair):
    veh, enc = pair
    sid = uid()
    get_key(ss, veh, sid, enc)
    aud = ss.admin("POST", "/v1/admin/tokens", json={"name": uid("aud"), "role": "auditor"}).json()
    assert ss.api("POST", f"/v1/admin/sessions/{sid}/end", token=aud["token"]).status_code == 403
    r = ss.admin("POST", f"/v1/admin/sessions/{sid}/end")
    assert r.status_code == 200 and r.json()["reason"] == "ended_by_operator"
    assert ss.admin("POST", f"/v1/admin/sessions/{sid}/end").status_code == 404
    assert post(ss, enc.key_request(sid, veh.device_id)).status_code == 409


def test_delivered_mode(ss, pair):
    veh, enc = pair
    sid = uid()
    ka = get_key(ss, veh, sid, enc, delivered=True)
    assert ka.delivery == "delivered"
    assert ss.psql(f"SELECT count(*) FROM sessions WHERE session_id = '{sid}'").strip() == "1"
    kb = get_key(ss, enc, sid, veh)
    assert kb.key == ka.key
    # Both parties hold it: the platform has forgotten it.
    assert ss.psql(f"SELECT count(*) FROM sessions WHERE session_id = '{sid}'").strip() == "0"
    assert stone_reason(ss, sid) == "delivered"
    r = post(ss, veh.key_request(sid, enc.device_id))
    assert r.status_code == 409


def test_idle_timeout_and_max_lifetime(ss):
    grp = "gt-" + uuid.uuid4().hex[:6]
    ss.admin("POST", "/v1/admin/policies", json={
        "name": "short-" + grp, "type_a": "vehicle", "type_b": "encryptor",
        "group_a": grp, "group_b": grp, "idle_timeout_s": 2, "max_lifetime_s": 4})
    veh, enc = make_device(ss, "vehicle", group=grp), make_device(ss, "encryptor", group=grp)
    idle, life = uid("IDLE"), uid("LIFE")
    get_key(ss, veh, idle, enc)
    get_key(ss, veh, life, enc)
    # Keep "life" busy so only its lifetime can end it.
    deadline = time.time() + 15
    ended = set()
    while time.time() < deadline and len(ended) < 2:
        if life not in ended:
            r = post(ss, enc.key_request(life, veh.device_id))
            if r.status_code == 409:
                ended.add(life)
        if stone_reason(ss, idle):
            ended.add(idle)
        time.sleep(0.5)
    assert ended == {idle, life}
    reasons = [stone_reason(ss, idle), stone_reason(ss, life)]
    assert sorted(reasons) == ["idle_timeout", "max_lifetime"]


def test_destruction_survives_restart(fresh_stack):
    """A session that expires while kmsd is down is destroyed after restart."""
    st = fresh_stack
    st.start(extra_env={"QKMS_SESSION_REAP_INTERVAL": "1"})
    st.admin("POST", "/v1/admin/policies", json={"name": "p", "type_a": "*", "type_b": "*",
                                                 "idle_timeout_s": 2})
    st.group = "default"
    veh, enc = make_device(st, "vehicle"), make_device(st, "encryptor")
    sid = uid()
    get_key(st, veh, sid, enc)
    assert st.stop() == 0
    time.sleep(3)
    assert st.psql(f"SELECT count(*) FROM sessions WHERE session_id = '{sid}'").strip() == "1"
    st.start(extra_env={"QKMS_SESSION_REAP_INTERVAL": "1"})
    deadline = time.time() + 10
    while time.time() < deadline:
        if st.psql(f"SELECT count(*) FROM sessions WHERE session_id = '{sid}'").strip() == "0":
            break
        time.sleep(0.3)
    assert stone_reason(st, sid) == "idle_timeout"


# ---- malformed input ---------------------------------------------------------------

def test_malformed_requests(ss, pair):
    veh, enc = pair
    req = veh.key_request(uid(), enc.device_id)
    good = req.body
    cases = [
        b"not json", b"[]", b"{}",
        json.dumps(dict(good, v=2)).encode(),
        json.dumps(dict(good, key_index=256)).encode(),
        json.dumps(dict(good, key_index="0")).encode(),
        json.dumps(dict(good, device_id="a b")).encode(),
        json.dumps(dict(good, nonce="!!!")).encode(),
        json.dumps(dict(good, nonce=b64u(b"x" * 11))).encode(),
        json.dumps(dict(good, nonce=good["nonce"] + "=")).encode(),
        json.dumps(dict(good, ct="")).encode(),
        json.dumps(dict(good, ct=b64u(b"x" * 3000))).encode(),
        json.dumps(dict(good, extra=1)).encode(),
    ]
    for raw in cases:
        r = post(ss, req, raw=raw)
        assert r.status_code == 400, (raw[:60], r.text)
        assert code(r) in ("malformed_request", "malformed_json")
    # Truncated and tampered ciphertext: authentication fails.
    for ct in (good["ct"][:-4], good["ct"][:-1] + ("A" if good["ct"][-1] != "A" else "B")):
        r = requests.post(ss.url + req.path, json=dict(good, ct=ct))
        assert r.status_code in (400, 401), r.text
    r = requests.post(ss.url + req.path, data=b"x" * 20000,
                      headers={"Content-Type": "application/json"})
    assert r.status_code == 413
    # The untouched request still works afterwards.
    assert post(ss, req).status_code == 200


def test_invalid_inner_request(ss, pair):
    veh, enc = pair
    bad = veh._request("key", {"session_id": "a b", "peer_id": enc.device_id, "ts": int(time.time())}, 0)
    r = post(ss, bad)
    assert r.status_code == 422 and code(r) == "invalid_request"
    bad = veh._request("key", {"session_id": uid(), "peer_id": enc.device_id, "ts": int(time.time()),
                               "colour": "red"}, 0)
    assert post(ss, bad).status_code == 422
    bad = veh._request("key", {"session_id": uid(), "peer_id": enc.device_id, "ts": "now"}, 0)
    assert post(ss, bad).status_code == 422


def test_response_is_bound_to_its_request(ss, pair):
    veh, enc = pair
    sid = uid()
    req1 = veh.key_request(sid, enc.device_id)
    resp1 = post(ss, req1).json()
    req2 = veh.key_request(sid, enc.device_id)
    post(ss, req2)
    with pytest.raises(Exception):
        veh.open_key_response(req2, resp1)  # an old response replayed to a new request
    with pytest.raises(ProtocolError):
        veh.open_key_response(veh.key_request(uid(), enc.device_id), resp1)


def test_session_metrics_and_admin_list(ss, pair):
    veh, enc = pair
    sid = uid()
    get_key(ss, veh, sid, enc)
    r = ss.admin("GET", f"/v1/admin/sessions?device={veh.device_id}")
    assert [s["session_id"] for s in r.json()["sessions"]] == [sid]
    assert r.json()["sessions"][0]["state"] == "pending"
    r = ss.admin("GET", f"/v1/admin/sessions?device={veh.device_id}&state=active")
    assert r.json()["sessions"] == []
    assert ss.admin("GET", "/v1/admin/sessions?state=bogus").status_code == 400
    m = requests.get(ss.url + "/metrics").text
    assert re.search(r"^qkms_sessions_open \d+", m, re.M)
    for name in ("qkms_sessions_created_total", "qkms_session_deliveries_total",
                 'qkms_session_refusals_total{reason="unauthenticated"}',
                 'qkms_sessions_ended_total{reason="expired"}'):
        assert name in m, name


def test_tombstones_purged_after_retention(ss, pair):
    veh, enc = pair
    sid = uid()
    get_key(ss, veh, sid, enc)
    assert post(ss, veh.end_request(sid)).status_code == 200
    # Age the tombstone past the retention (90 days by default); the reaper
    # purges it, and only then could the ID be used again.
    h = ss.admin("GET", f"/v1/admin/sessions/{sid}").json()["session_hash"]
    ss.psql(f"UPDATE session_tombstones SET ended_at = now() - interval '91 days' "
            f"WHERE session_hash = decode('{h}', 'hex')")
    deadline = time.time() + 10
    while time.time() < deadline and stone_reason(ss, sid) is not None:
        time.sleep(0.3)
    assert stone_reason(ss, sid) is None
    # Request nonces are forgotten once their own expiry (ts + skew) passed.
    ss.psql("INSERT INTO request_nonces (device_pk, nonce, expires_at) SELECT id, 'old-nonce', "
            "now() - interval '1 second' FROM devices LIMIT 1")
    deadline = time.time() + 10
    while time.time() < deadline and ss.psql(
            "SELECT count(*) FROM request_nonces WHERE nonce = 'old-nonce'").strip() != "0":
        time.sleep(0.3)
    assert ss.psql("SELECT count(*) FROM request_nonces WHERE nonce = 'old-nonce'").strip() == "0"
