"""Several keys per session (issue 20, seed 003: keys for control
instructions, a key per direction, re-keying a long session): epochs and
direction keys end to end against real kmsd, PostgreSQL and SoftHSM, with the
Python implementation of protocol v1 as the devices. One key per (epoch,
direction) whatever the parties race; older epochs destroyed once both hold
the new one, or after the policy's grace; refusals create nothing."""
import concurrent.futures
import time
import uuid

import pytest

import helpers
from conftest import _finish, wait_for
from helpers import error_code as code, post, uid, veh_enc_stack


@pytest.fixture(scope="module")
def st():
    s = veh_enc_stack("qkms-epochs", {"QKMS_SESSION_REAP_INTERVAL": "1",
                                      "QKMS_PROTOCOL_CLOCK_SKEW": "60",
                                      "QKMS_MAINTENANCE_INTERVAL": "1"})
    # A cross-group policy with epochs and directions: more specific than
    # the stack's same-group veh-enc, which allows neither.
    s.ga, s.gb = "ga-" + uuid.uuid4().hex[:6], "gb-" + uuid.uuid4().hex[:6]
    r = s.admin("POST", "/v1/admin/policies", json={
        "name": "veh-enc-epochs", "type_a": "vehicle", "type_b": "encryptor",
        "group_a": s.ga, "group_b": s.gb, "max_epochs": 3, "directions": True,
        "epoch_grace_s": 2})
    assert r.status_code == 201, r.text
    pol = [p for p in r.json()["policies"] if p["name"] == "veh-enc-epochs"][0]
    assert (pol["max_epochs"], pol["directions"], pol["epoch_grace_s"]) == (3, True, 2)
    yield s
    _finish(s)


@pytest.fixture
def pair(st):
    return (helpers.make_device(st, "vehicle", st.ga), helpers.make_device(st, "encryptor", st.gb))


def key(st, dev, sid, peer, **kw):
    req = dev.key_request(sid, peer.device_id, **kw)
    r = post(st, req)
    assert r.status_code == 200, r.text
    return dev.open_key_response(req, r.json())


def refused(st, dev, sid, peer, **kw):
    r = post(st, dev.key_request(sid, peer.device_id, **kw))
    assert r.status_code != 200, r.text
    return r.status_code, code(r)


def keys_of(st, sid):
    """(epoch, direction) of the session's rows in session_keys."""
    out = st.psql("SELECT k.epoch || ':' || k.direction FROM session_keys k JOIN sessions s"
                  f" ON s.id = k.session_pk WHERE s.session_id = '{sid}' ORDER BY 1").split()
    return out


def head(st, sid):
    return st.psql("SELECT epoch || ' ' || CASE WHEN wrapped_key IS NULL THEN 't' ELSE 'f' END"
                   " FROM sessions"
                   f" WHERE session_id = '{sid}'").strip()


def test_the_next_epoch_is_one_key_and_the_old_one_goes_once_both_hold_it(st, pair):
    a, b = pair
    sid = uid()
    k0 = key(st, a, sid, b)
    assert key(st, b, sid, a).key == k0.key
    # An explicit epoch 0 is the same key, now with its epoch in the answer.
    e0 = key(st, b, sid, a, epoch=0)
    assert (e0.key, e0.key_id, e0.epoch, e0.direction, e0.current_epoch) == (
        k0.key, k0.key_id, 0, "", 0)
    k1 = key(st, a, sid, b, epoch=1)
    assert k1.key != k0.key and k1.key_id != k0.key_id and len(k1.key) == 16
    assert (k1.epoch, k1.current_epoch) == (1, 1)
    # Until b holds epoch 1, epoch 0's key lasts (its grace at most).
    assert head(st, sid) == "1 t" and keys_of(st, sid) == ["0:", "1:"]
    assert key(st, b, sid, a, epoch=0).key == k0.key
    assert key(st, b, sid, a, epoch=1).key == k1.key
    # Both hold epoch 1: epoch 0's key is destroyed, in the same transaction.
    assert keys_of(st, sid) == ["1:"]
    assert st.psql("SELECT count(*) FROM audit_log WHERE event = 'session.keys_destroyed'"
                   f" AND detail->>'reason' = 'superseded' AND detail->'key_ids' ? '{k0.key_id}'"
                   ).strip() == "1"
    assert refused(st, a, sid, b, epoch=0) == (409, "epoch_ended")
    # A v1 request without an epoch names epoch 0's key: gone too.
    assert refused(st, a, sid, b) == (409, "epoch_ended")
    # A repeat of epoch 1 (a lost answer) is the same key.
    assert key(st, a, sid, b, epoch=1).key == k1.key
    assert st.psql("SELECT count(*) FROM audit_log WHERE event = 'session.rekeyed'"
                   f" AND detail->>'epoch' = '1' AND device_id = '{a.device_id}'").strip() == "1"


def test_both_parties_racing_for_the_next_epoch_get_one_key(st, pair):
    a, b = pair
    for _ in range(5):
        sid = uid()
        key(st, a, sid, b)
        key(st, b, sid, a)
        with concurrent.futures.ThreadPoolExecutor(4) as ex:
            futs = [ex.submit(key, st, d, sid, p, epoch=1)
                    for d, p in ((a, b), (b, a), (a, b), (b, a))]
            got = [f.result() for f in futs]
        assert len({k.key for k in got}) == 1 and len({k.key_id for k in got}) == 1
        assert keys_of(st, sid) == ["1:"]


def test_epoch_skip_and_limit_create_nothing(st, pair):
    a, b = pair
    sid = uid()
    key(st, a, sid, b)
    key(st, b, sid, a)
    assert refused(st, a, sid, b, epoch=2) == (409, "epoch_skip")
    assert head(st, sid) == "0 f" and keys_of(st, sid) == []
    key(st, a, sid, b, epoch=1)
    key(st, a, sid, b, epoch=2)
    # max_epochs 3: epochs 0, 1 and 2.
    assert refused(st, b, sid, a, epoch=3) == (409, "epoch_limit")
    assert refused(st, b, sid, a, epoch=4) == (409, "epoch_skip")
    assert head(st, sid) == "2 t"
    assert st.psql("SELECT count(*) FROM audit_log WHERE event = 'session.refused'"
                   f" AND detail->>'reason' IN ('epoch_skip', 'epoch_limit')"
                   f" AND device_id IN ('{a.device_id}', '{b.device_id}')").strip() == "3"


def test_an_older_epoch_lasts_its_grace_then_the_reaper_destroys_it(st, pair):
    a, b = pair
    sid = uid()
    k0 = key(st, a, sid, b)
    key(st, a, sid, b, epoch=1)          # b never takes epoch 1
    assert keys_of(st, sid) == ["0:", "1:"]
    assert key(st, b, sid, a, epoch=0).key == k0.key
    assert wait_for(lambda: keys_of(st, sid) == ["1:"], timeout=20)
    assert refused(st, b, sid, a, epoch=0) == (409, "epoch_ended")
    assert st.psql("SELECT count(*) FROM audit_log WHERE event = 'session.keys_destroyed'"
                   f" AND detail->>'reason' = 'grace' AND detail->'key_ids' ? '{k0.key_id}'"
                   ).strip() == "1"


def test_direction_keys(st, pair):
    a, b = pair
    sid = uid()
    k0 = key(st, a, sid, b)
    ab = key(st, a, sid, b, direction="a2b")
    ba = key(st, a, sid, b, direction="b2a")
    assert len({k0.key, ab.key, ba.key}) == 3 and len({k0.key_id, ab.key_id, ba.key_id}) == 3
    assert (ab.epoch, ab.direction, ba.direction) == (0, "a2b", "b2a")
    assert key(st, b, sid, a, direction="a2b").key == ab.key
    assert key(st, b, sid, a, epoch=0, direction="b2a").key == ba.key
    # The next epoch has its own direction keys; the old ones go once both
    # parties hold a key of it.
    n1 = key(st, b, sid, a, epoch=1, direction="a2b")
    assert n1.key not in (ab.key, ba.key, k0.key)
    assert keys_of(st, sid) == ["0:", "0:a2b", "0:b2a", "1:a2b"]
    assert key(st, a, sid, b, epoch=1, direction="a2b").key == n1.key
    assert keys_of(st, sid) == ["1:a2b"]
    # Ending the session destroys every key it has, each named in its audit row.
    pk = st.psql(f"SELECT id FROM sessions WHERE session_id = '{sid}'").strip()
    r = post(st, a.end_request(sid))
    assert r.status_code == 200, r.text
    assert st.psql(f"SELECT count(*) FROM session_keys WHERE session_pk = {pk}").strip() == "0"
    assert st.psql("SELECT detail->'key_ids' ? '" + n1.key_id + "' FROM audit_log WHERE event ="
                   " 'session.destroyed' AND detail->>'reason' = 'ended_by_party'"
                   f" AND detail->>'key_id' = '{k0.key_id}'").strip() == "t"
    assert refused(st, b, sid, a, epoch=1, direction="a2b") == (409, "session_ended")


def test_refusals(st, pair):
    a, b = pair
    # The stack's own policy (same group) allows neither epochs nor directions.
    v, e = helpers.make_device(st, "vehicle", st.group), helpers.make_device(st, "encryptor", st.group)
    sid = uid()
    key(st, v, sid, e)
    assert refused(st, v, sid, e, direction="a2b") == (403, "direction_denied")
    assert refused(st, v, sid, e, epoch=1) == (409, "epoch_limit")
    assert key(st, v, sid, e, epoch=0).epoch == 0
    # Epochs need the session to exist; an ended one is ended.
    assert refused(st, a, uid(), b, epoch=1) == (404, "unknown_session")
    assert refused(st, a, uid(), b, direction="a2b") == (404, "unknown_session")
    sid = uid()
    key(st, a, sid, b)
    c = helpers.make_device(st, "vehicle", st.ga)
    assert refused(st, c, sid, b, epoch=1) == (403, "not_a_party")
    assert refused(st, a, sid, c, epoch=1) == (403, "peer_mismatch")
    assert head(st, sid) == "0 f" and keys_of(st, sid) == []
    # Malformed: 422 and nothing recorded.
    for kw in ({"epoch": -1}, {"epoch": "1"}, {"epoch": 1.5}, {"epoch": True},
               {"epoch": 1000000}, {"direction": "x"}, {"direction": ""},
               {"direction": None}):
        req = a._request("key", {"session_id": sid, "peer_id": b.device_id,
                                 "ts": int(time.time()), **kw}, 0)
        r = post(st, req)
        assert r.status_code == 422 and code(r) == "invalid_request", (kw, r.text)
    req = a._request("key", {"session_id": sid, "peer_id": b.device_id, "ts": int(time.time()),
                             "delivery": "delivered", "epoch": 1}, 0)
    assert code(post(st, req)) == "invalid_request"
    assert head(st, sid) == "0 f" and keys_of(st, sid) == []
    # A single-transfer session has one key: no epoch, not even 0 (its
    # destruction on the second delivery is the v1 request's), no direction.
    sid = uid()
    key(st, a, sid, b, delivered=True)
    assert refused(st, a, sid, b, epoch=1) == (403, "epoch_denied")
    assert refused(st, a, sid, b, epoch=0) == (403, "epoch_denied")
    assert refused(st, b, sid, a, epoch=0) == (403, "epoch_denied")
    assert refused(st, a, sid, b, direction="b2a") == (403, "epoch_denied")
    key(st, b, sid, a, delivered=True)
    assert refused(st, a, sid, b) == (409, "session_ended")


def test_a_policy_refuses_epochs_where_they_cannot_be(st):
    for body, why in (({"delivery": "delivered", "max_epochs": 2}, "session"),
                      ({"delivery": "delivered", "directions": True}, "session"),
                      ({"max_epochs": 0}, "max_epochs"), ({"max_epochs": 1000001}, "max_epochs"),
                      ({"epoch_grace_s": -1}, "epoch_grace_s"),
                      ({"epoch_grace_s": 86401}, "epoch_grace_s"),
                      ({"directions": "yes"}, "directions")):
        r = st.admin("POST", "/v1/admin/policies", json={
            "name": "bad-" + uuid.uuid4().hex[:6], "type_a": "vehicle", "type_b": "encryptor",
            "group_a": "x1", "group_b": "x2", **body})
        assert r.status_code == 422 and code(r) == "invalid_policy", (body, r.text)
        assert why in r.json()["error"]["message"], r.text
    r = st.admin("POST", "/v1/admin/policies", json={
        "name": "bad-" + uuid.uuid4().hex[:6], "type_a": "gateway", "type_b": "@platform",
        "max_epochs": 2})
    assert r.status_code == 422 and "@platform" in r.json()["error"]["message"]
    p = st.kmsctl("policy", "add", "kc-" + uuid.uuid4().hex[:6], "--types", "vehicle:encryptor",
                  "--groups", "y1:y2", "--max-epochs", "5", "--directions", "--epoch-grace", "30",
                  "--json", token=st.admin_token)
    assert p.returncode == 0, p.stderr
    assert p.returncode == 0
    for bad in (["--max-epochs", "0"], ["--epoch-grace", "86401"], ["--max-epochs", "x"]):
        p = st.kmsctl("policy", "add", "kc-" + uuid.uuid4().hex[:6], "--types",
                      "vehicle:encryptor", *bad, token=st.admin_token)
        assert p.returncode == 2, (bad, p.stderr)


def test_a_master_rotation_rewraps_every_key_of_a_session(st, pair):
    a, b = pair
    sid = uid()
    key(st, a, sid, b)
    k1 = key(st, a, sid, b, epoch=1)
    ab = key(st, a, sid, b, epoch=1, direction="a2b")
    before = st.psql("SELECT max(version) FROM master_keys WHERE state = 'active'").strip()
    assert st.admin("POST", "/v1/admin/master/rotate").status_code == 200
    assert wait_for(lambda: st.psql(
        "SELECT count(*) FROM session_keys WHERE master_version <= " + before).strip() == "0",
        timeout=40)
    assert key(st, b, sid, a, epoch=1).key == k1.key
    assert key(st, b, sid, a, epoch=1, direction="a2b").key == ab.key


def test_qkms_device_asks_for_epochs_and_directions(st, tmp_path):
    import json
    import os
    import subprocess
    qkmsdev = os.environ.get("QKMS_DEVICE", os.path.join(os.path.dirname(__file__), "..", "..",
                                                         "build/asan/bin/qkms-device"))
    did = uid("VEH")
    r = st.admin("POST", "/v1/admin/devices", json={"device_id": did, "type": "vehicle",
                                                    "group": st.ga})
    assert r.status_code == 201, r.text
    doc = st.admin("POST", f"/v1/admin/devices/{did}/fill", json={"plaintext": True}).json()
    fill = tmp_path / "fill.json"
    fill.write_text(json.dumps(doc["plaintext"]))
    enc = helpers.make_device(st, "encryptor", st.gb)
    sid = uid()

    def run(*args):
        p = subprocess.run([qkmsdev, "key", "--url", st.url, "--fill", str(fill), "--session", sid,
                            "--peer", enc.device_id, *args], capture_output=True, text=True,
                           timeout=60)
        assert "Sanitizer" not in p.stderr and "runtime error" not in p.stderr, p.stderr
        return p

    first = json.loads(run("--json").stdout)
    assert "epoch" not in first
    p = run("--json", "--epoch", "1", "--direction", "b2a")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert (out["epoch"], out["direction"], out["current_epoch"]) == (1, "b2a", 1)
    class Peer:
        device_id = did
    k = key(st, enc, sid, Peer(), epoch=1, direction="b2a")
    assert k.key.hex() == out["key"] and k.key_id == out["key_id"]
    p = run("--epoch", "1")
    assert p.returncode == 0 and "epoch: 1\ndirection: -\ncurrent_epoch: 1\n" in p.stdout
    p = run("--json", "--epoch", "3")
    assert p.returncode == 6 and json.loads(p.stdout)["error"]["code"] == "epoch_skip"
    for bad in (["--epoch", "-1"], ["--epoch", "x"], ["--direction", "up"],
                ["--epoch", "1", "--delivered"]):
        assert run(*bad).returncode == 2, bad


def test_a_device_wide_end_destroys_every_key(st, pair):
    a, b = pair
    sid = uid()
    key(st, a, sid, b)
    k1 = key(st, b, sid, a, epoch=1, direction="b2a")
    r = post(st, a.end_all_request())
    assert r.status_code == 200 and r.json()["sessions_ended"] == 1, r.text
    assert keys_of(st, sid) == []
    assert st.psql("SELECT count(*) FROM audit_log WHERE event = 'session.destroyed' AND"
                   f" detail->>'reason' = 'device_ended' AND detail->'key_ids' ? '{k1.key_id}'"
                   ).strip() == "1"


def test_rekeying_by_deliveries_and_by_age(st):
    ga, gb = "rk-" + uuid.uuid4().hex[:6], "rk-" + uuid.uuid4().hex[:6]
    for name, extra in (("rk-count-", {"rekey_after_deliveries": 4}),
                        ("rk-age-", {"rekey_after_s": 1})):
        r = st.admin("POST", "/v1/admin/policies", json={
            "name": name + ga, "type_a": "vehicle", "type_b": "encryptor", "group_a": ga + name,
            "group_b": gb + name, "max_epochs": 3, **extra})
        assert r.status_code == 201, r.text
        pol = [p for p in r.json()["policies"] if p["name"] == name + ga][0]
        assert (pol["rekey_after_deliveries"], pol["rekey_after_s"]) == (
            extra.get("rekey_after_deliveries"), extra.get("rekey_after_s"))
    # By deliveries: epoch 0's two first keys count, then two more answers
    # with an epoch reach 4: that answer says the session is at epoch 1.
    a = helpers.make_device(st, "vehicle", ga + "rk-count-")
    b = helpers.make_device(st, "encryptor", gb + "rk-count-")
    sid = uid()
    k0 = key(st, a, sid, b)
    key(st, b, sid, a)
    assert key(st, a, sid, b, epoch=0).current_epoch == 0
    last = key(st, b, sid, a, epoch=0)
    assert (last.key, last.epoch, last.current_epoch) == (k0.key, 0, 1)
    assert st.psql("SELECT detail->>'why' FROM audit_log WHERE event = 'session.rekeyed' AND"
                   f" detail->>'session_hash' = (SELECT encode(session_hash, 'hex') FROM sessions"
                   f" WHERE session_id = '{sid}')").strip() == "deliveries"
    # A v1 request without an epoch neither counts towards it nor moves it:
    # its key is epoch 0's, which is now an older epoch's (in its grace).
    assert refused(st, a, sid, b) == (409, "epoch_ended")
    n1 = key(st, a, sid, b, epoch=1)
    assert key(st, b, sid, a, epoch=1).key == n1.key
    # The last epoch (max_epochs 3: 2) is never left.
    for _ in range(3):
        key(st, a, sid, b, epoch=1)
    assert key(st, a, sid, b, epoch=2).current_epoch == 2
    for _ in range(6):
        assert key(st, b, sid, a, epoch=2).current_epoch == 2
    # By age: the current epoch older than 1 s moves on at the next answer.
    a = helpers.make_device(st, "vehicle", ga + "rk-age-")
    b = helpers.make_device(st, "encryptor", gb + "rk-age-")
    sid = uid()
    key(st, a, sid, b)
    assert key(st, b, sid, a, epoch=0).current_epoch in (0, 1)
    time.sleep(1.2)
    assert key(st, a, sid, b, epoch=0).current_epoch == 1
    # kmsctl and the checks.
    r = st.admin("POST", "/v1/admin/policies", json={
        "name": "rk-bad-" + ga, "type_a": "vehicle", "type_b": "encryptor",
        "group_a": "z1", "group_b": "z2", "rekey_after_s": 60})
    assert r.status_code == 422 and "max_epochs" in r.json()["error"]["message"]
    p = st.kmsctl("policy", "add", "rk-cli-" + ga, "--types", "vehicle:encryptor", "--groups",
                  "q1:q2", "--max-epochs", "4", "--rekey-after", "3600", "--rekey-deliveries",
                  "1000", "--json", token=st.admin_token)
    assert p.returncode == 0, p.stderr
    pol = [x for x in __import__("json").loads(p.stdout)["policies"] if x["name"] == "rk-cli-" + ga][0]
    assert (pol["rekey_after_s"], pol["rekey_after_deliveries"]) == (3600, 1000)
    p = st.kmsctl("policy", "add", "rk-cli2-" + ga, "--types", "vehicle:encryptor",
                  "--rekey-after", "60", token=st.admin_token)
    assert p.returncode == 2, p.stderr


def test_a_session_keeps_its_policys_terms(st):
    ga, gb = "kt-" + uuid.uuid4().hex[:6], "kt-" + uuid.uuid4().hex[:6]
    body = {"name": "kt-" + ga, "type_a": "vehicle", "type_b": "encryptor", "group_a": ga,
            "group_b": gb, "max_epochs": 2, "directions": True}
    assert st.admin("POST", "/v1/admin/policies", json=body).status_code == 201
    a, b = helpers.make_device(st, "vehicle", ga), helpers.make_device(st, "encryptor", gb)
    sid = uid()
    key(st, a, sid, b)
    # Re-added under the same name without epochs: the live session keeps them.
    assert st.admin("DELETE", f"/v1/admin/policies/kt-{ga}").status_code == 200
    assert st.admin("POST", "/v1/admin/policies",
                    json=dict(body, max_epochs=1, directions=False)).status_code == 201
    assert key(st, a, sid, b, epoch=1, direction="a2b").epoch == 1
    assert st.admin("GET", f"/v1/admin/sessions/{sid}").json()["epoch"] == 1


def test_epochs_keep_the_sessions_key_sources(st):
    """A v2 session made from the parties' randoms (key source a, the
    policy excluding c): a v1 request for another epoch's key, which the
    platform would make (source c), is refused."""
    import requests
    from qkms_proto2_py import Device2, Platform
    ga, gb = "ks-" + uuid.uuid4().hex[:6], "ks-" + uuid.uuid4().hex[:6]
    r = st.admin("POST", "/v1/admin/policies", json={
        "name": "ks-" + ga, "type_a": "vehicle", "type_b": "encryptor", "group_a": ga,
        "group_b": gb, "max_epochs": 3, "key_sources": ["a", "b"]})
    assert r.status_code == 201, r.text
    plat = Platform.from_certificates(
        requests.get(st.url + "/v1/platform/certificates", timeout=10).json())
    did = uid("VEH")
    assert st.admin("POST", "/v1/admin/devices", json={"device_id": did, "type": "vehicle",
                                                        "group": ga}).status_code == 201
    doc = st.admin("POST", f"/v1/admin/devices/{did}/fill", json={"plaintext": True}).json()
    v1, v2 = helpers.Device.from_fill(doc["plaintext"]), Device2.from_fill(doc["plaintext"], 3)
    enc = helpers.make_device(st, "encryptor", gb)
    sid = uid()
    req = v2.key_request(plat, sid, enc.device_id, key_source="a")
    r = post(st, req)
    assert r.status_code == 200, r.text
    assert refused(st, v1, sid, enc, epoch=1) == (403, "key_source_denied")
    assert refused(st, enc, sid, v1, epoch=0) == (403, "key_source_denied")
    assert head(st, sid) == "0 f" and keys_of(st, sid) == []


@pytest.fixture(scope="module")
def slow():
    """A stack whose reaper waits a minute and maintenance (the master
    rewrap) an hour: what happens between their passes."""
    s = veh_enc_stack("qkms-epochs-slow", {"QKMS_SESSION_REAP_INTERVAL": "60",
                                           "QKMS_MAINTENANCE_INTERVAL": "3600",
                                           "QKMS_PROTOCOL_CLOCK_SKEW": "60"})
    s.ga, s.gb = "sa-" + uuid.uuid4().hex[:6], "sb-" + uuid.uuid4().hex[:6]
    r = s.admin("POST", "/v1/admin/policies", json={
        "name": "slow-epochs", "type_a": "vehicle", "type_b": "encryptor", "group_a": s.ga,
        "group_b": s.gb, "max_epochs": 5, "directions": True, "epoch_grace_s": 60})
    assert r.status_code == 201, r.text
    yield s
    _finish(s)


def test_a_key_past_its_grace_is_not_served_before_the_reaper_comes(slow):
    a, b = (helpers.make_device(slow, "vehicle", slow.ga),
            helpers.make_device(slow, "encryptor", slow.gb))
    sid = uid()
    k0 = key(slow, a, sid, b)
    key(slow, a, sid, b, epoch=1)
    assert key(slow, b, sid, a, epoch=0).key == k0.key
    slow.psql("UPDATE session_keys SET destroy_at = now() - interval '1 second' WHERE epoch = 0"
              f" AND key_id = '{k0.key_id}'")
    assert refused(slow, b, sid, a, epoch=0) == (409, "epoch_ended")
    assert keys_of(slow, sid) == ["1:"]
    assert slow.psql("SELECT count(*) FROM audit_log WHERE event = 'session.keys_destroyed' AND"
                     f" detail->>'reason' = 'grace' AND detail->'key_ids' ? '{k0.key_id}'"
                     ).strip() == "1"


def test_re_keying_while_a_rotation_has_not_rewrapped_yet(slow):
    a, b = (helpers.make_device(slow, "vehicle", slow.ga),
            helpers.make_device(slow, "encryptor", slow.gb))
    sid = uid()
    k0 = key(slow, a, sid, b)
    old = slow.psql(f"SELECT master_version FROM sessions WHERE session_id = '{sid}'").strip()
    assert slow.admin("POST", "/v1/admin/master/rotate").status_code == 200
    assert slow.psql(f"SELECT state FROM master_keys WHERE version = {old}").strip() == "retired"
    # The move of epoch 0's key keeps its wrap under the retired version.
    k1 = key(slow, a, sid, b, epoch=1)
    assert slow.psql("SELECT master_version FROM session_keys WHERE key_id ="
                     f" '{k0.key_id}'").strip() == old
    assert key(slow, b, sid, a, epoch=0).key == k0.key
    new = slow.psql("SELECT version FROM master_keys WHERE state = 'active'").strip()
    assert slow.psql(f"SELECT master_version FROM session_keys WHERE key_id = '{k1.key_id}'"
                     ).strip() == new
    # Nothing else may name the retired version.
    with pytest.raises(AssertionError, match="not active"):
        slow.psql(f"UPDATE session_keys SET master_version = {old} WHERE key_id = '{k1.key_id}'")
