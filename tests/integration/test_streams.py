"""Sequential key streams (issue 20, seed 003's sequential distribution) end
to end against real kmsd, PostgreSQL and SoftHSM, with the Python
implementation of protocol v1 as the devices: a pair of devices opens one
stream without naming it, fetches keys by seq, each made once and the same
for both, destroyed as soon as both hold it; the window; ends of every kind;
two kmsd instances on one database."""
import concurrent.futures
import re
import time
import uuid

import pytest

import helpers
from conftest import _finish, wait_for
from helpers import error_code as code, post, uid, veh_enc_stack


@pytest.fixture(scope="module")
def st():
    s = veh_enc_stack("qkms-streams", {"QKMS_SESSION_REAP_INTERVAL": "1",
                                       "QKMS_PROTOCOL_CLOCK_SKEW": "60"})
    s.ga, s.gb = "sa-" + uuid.uuid4().hex[:6], "sb-" + uuid.uuid4().hex[:6]
    r = s.admin("POST", "/v1/admin/policies", json={
        "name": "veh-enc-stream", "type_a": "vehicle", "type_b": "encryptor",
        "group_a": s.ga, "group_b": s.gb, "stream_window": 4, "idle_timeout_s": 3})
    assert r.status_code == 201, r.text
    yield s
    _finish(s)


@pytest.fixture
def pair(st):
    return (helpers.make_device(st, "vehicle", st.ga), helpers.make_device(st, "encryptor", st.gb))


def skey(st, dev, peer, seq, stream_id=None, server=None):
    req = dev.stream_request(peer.device_id, seq, stream_id)
    r = post(server or st, req)
    assert r.status_code == 200, r.text
    return dev.open_stream_response(req, r.json())


def srefused(st, dev, peer, seq, stream_id=None):
    r = post(st, dev.stream_request(peer.device_id, seq, stream_id))
    assert r.status_code != 200, r.text
    return r.status_code, code(r)


def rows(st, stream_id):
    """seq:state of the stream's key rows (live or consumed)."""
    return st.psql("SELECT k.seq || ':' || CASE WHEN k.consumed_at IS NULL THEN 'live'"
                   " ELSE 'consumed' END FROM stream_keys k JOIN streams s ON s.id = k.stream_pk"
                   f" WHERE s.stream_id = '{stream_id}' ORDER BY k.seq").split()


def low(st, stream_id):
    return int(st.psql(f"SELECT low FROM streams WHERE stream_id = '{stream_id}'").strip())


def test_a_pair_opens_one_stream_and_shares_each_key(st, pair):
    a, b = pair
    k0 = skey(st, a, b, 0)
    assert re.fullmatch(r"[0-9a-f-]{36}", k0.stream_id) and (k0.low, k0.window) == (0, 4)
    # b joins without naming it: the same stream, the same key 0.
    j0 = skey(st, b, a, 0)
    assert (j0.stream_id, j0.key, j0.key_id) == (k0.stream_id, k0.key, k0.key_id)
    # Both hold key 0: destroyed, low moves past it.
    assert rows(st, k0.stream_id) == [] and low(st, k0.stream_id) == 1
    assert srefused(st, a, b, 0, k0.stream_id) == (409, "key_consumed")
    # Keys 1..4 (window 4 from low 1), named or not; different keys.
    keys = [skey(st, a, b, n, k0.stream_id) for n in range(1, 5)]
    assert len({k.key for k in keys} | {k0.key}) == 5 and all(len(k.key) == 16 for k in keys)
    assert srefused(st, a, b, 5, k0.stream_id) == (409, "seq_out_of_window")
    # At rest only wrapped; a repeat (a lost answer) is the same key.
    for k in keys:
        assert k.key.hex() not in st.psql("SELECT string_agg(encode(wrapped_key, 'hex'), '')"
                                          " FROM stream_keys")
    assert skey(st, a, b, 2, k0.stream_id).key == keys[1].key
    # b takes them out of order: 3 consumed first, low stays until 1 and 2 are.
    assert skey(st, b, a, 3, k0.stream_id).key == keys[2].key
    assert rows(st, k0.stream_id) == ["1:live", "2:live", "3:consumed", "4:live"]
    assert srefused(st, a, b, 3, k0.stream_id) == (409, "key_consumed")
    assert skey(st, b, a, 1).key == keys[0].key
    assert skey(st, b, a, 2).key == keys[1].key
    assert rows(st, k0.stream_id) == ["4:live"] and low(st, k0.stream_id) == 4
    assert skey(st, b, a, 7).window == 4
    assert srefused(st, b, a, 8) == (409, "seq_out_of_window")
    # Audited: opened once; no plaintext anywhere in the database's rows.
    assert st.psql("SELECT count(*) FROM audit_log WHERE event = 'stream.opened' AND"
                   f" detail->>'stream_id' = '{k0.stream_id}'").strip() == "1"


def test_racing_parties_get_one_stream_and_one_key_per_seq(st):
    for _ in range(4):
        a, b = (helpers.make_device(st, "vehicle", st.ga),
                helpers.make_device(st, "encryptor", st.gb))
        # Each party once (a third request for key 0 would find it consumed).
        with concurrent.futures.ThreadPoolExecutor(2) as ex:
            futs = [ex.submit(skey, st, d, p, 0) for d, p in ((a, b), (b, a))]
            got = [f.result() for f in futs]
        assert len({k.stream_id for k in got}) == 1 and len({k.key for k in got}) == 1
        sid = got[0].stream_id
        with concurrent.futures.ThreadPoolExecutor(6) as ex:
            futs = [ex.submit(skey, st, d, p, n, sid) for n in (1, 2, 3)
                    for d, p in ((a, b), (b, a))]
            got = [f.result() for f in futs]
        for n in (1, 2, 3):
            assert len({k.key for k in got if k.seq == n}) == 1
        assert rows(st, sid) == [] and low(st, sid) == 4


def test_ending_a_stream(st, pair):
    a, b = pair
    k0 = skey(st, a, b, 0)
    skey(st, a, b, 1, k0.stream_id)
    r = post(st, b.stream_end_request(k0.stream_id))
    assert r.status_code == 200 and r.json() == {"v": 1, "stream_id": k0.stream_id,
                                                 "ended": True}, r.text
    assert st.psql(f"SELECT count(*) FROM streams WHERE stream_id = '{k0.stream_id}'"
                   ).strip() == "0"
    assert st.psql("SELECT reason || ' ' || keys_consumed FROM stream_tombstones WHERE"
                   f" stream_id = '{k0.stream_id}'").strip() == "ended_by_party 0"
    assert srefused(st, a, b, 1, k0.stream_id) == (409, "stream_ended")
    r = post(st, a.stream_end_request(k0.stream_id))
    assert r.status_code == 409 and code(r) == "stream_ended"
    # A new stream for the pair: a new ID, keys from 0 again.
    n0 = skey(st, a, b, 0)
    assert n0.stream_id != k0.stream_id and n0.key != k0.key
    # Not a party, unknown, malformed.
    c = helpers.make_device(st, "vehicle", st.ga)
    assert srefused(st, c, b, 0, n0.stream_id) == (403, "not_a_party")
    assert srefused(st, a, c, 0, n0.stream_id) == (403, "peer_mismatch")
    r = post(st, c.stream_end_request(n0.stream_id))
    assert r.status_code == 403 and code(r) == "not_a_party"
    assert srefused(st, a, b, 0, str(uuid.uuid4())) == (404, "unknown_stream")
    r = post(st, a.stream_end_request(str(uuid.uuid4())))
    assert r.status_code == 404 and code(r) == "unknown_stream"
    for inner in ({"peer_id": b.device_id, "seq": -1}, {"peer_id": b.device_id, "seq": "1"},
                  {"peer_id": a.device_id, "seq": 1}, {"peer_id": b.device_id},
                  {"peer_id": b.device_id, "seq": 1, "stream_id": "nope"},
                  {"peer_id": b.device_id, "seq": 1, "stream_id": 7},
                  {"peer_id": b.device_id, "seq": 1, "epoch": 1}):
        req = a._stream_request("stream", "/v1/streams/key", dict(inner, ts=int(time.time())),
                                0, None)
        r = post(st, req)
        assert r.status_code == 422 and code(r) == "invalid_request", (inner, r.text)
    # The stream op is bound into the AAD: a key request's envelope is not a stream's.
    req = a._stream_request("key", "/v1/streams/key", {"peer_id": b.device_id, "seq": 1,
                                                       "ts": int(time.time())}, 0, None)
    assert post(st, req).status_code == 401


def test_policy_and_standing(st):
    v = helpers.make_device(st, "vehicle", st.ga)
    other = helpers.make_device(st, "vehicle", st.gb)  # no vehicle:vehicle policy
    assert srefused(st, v, other, 0) == (403, "policy_denied")
    assert srefused(st, v, type("P", (), {"device_id": uid("NOPE")})(), 0) == (422,
                                                                              "unknown_peer")
    e = helpers.make_device(st, "encryptor", st.gb)
    assert st.admin("POST", f"/v1/admin/devices/{e.device_id}/suspend",
                    json={}).status_code == 200
    assert srefused(st, v, e, 0) == (422, "peer_inactive")
    assert srefused(st, e, v, 0) == (403, "device_inactive")
    # Opening outside the window from 0.
    e2 = helpers.make_device(st, "encryptor", st.gb)
    assert srefused(st, v, e2, 4) == (409, "seq_out_of_window")
    assert st.psql("SELECT count(*) FROM streams s JOIN devices d ON d.id IN (s.party_lo,"
                   f" s.party_hi) WHERE d.device_id = '{e2.device_id}'").strip() == "0"


def test_streams_end_with_their_devices_and_by_time(st, pair):
    a, b = pair
    k0 = skey(st, a, b, 0)
    skey(st, a, b, 1, k0.stream_id)
    # End-all (a power-down) ends the device's streams too, counted apart.
    r = post(st, b.end_all_request())
    assert r.status_code == 200, r.text
    assert (r.json()["sessions_ended"], r.json()["streams_ended"]) == (0, 1)
    assert srefused(st, a, b, 1, k0.stream_id) == (409, "stream_ended")
    assert st.psql(f"SELECT reason FROM stream_tombstones WHERE stream_id = '{k0.stream_id}'"
                   ).strip() == "device_ended"
    # Idle (the policy's 3 s): the reaper destroys it.
    n0 = skey(st, a, b, 0)
    assert wait_for(lambda: st.psql("SELECT reason FROM stream_tombstones WHERE stream_id ="
                                    f" '{n0.stream_id}'").strip() == "idle_timeout", timeout=20)
    # Revocation.
    m0 = skey(st, a, b, 0)
    assert st.admin("POST", f"/v1/admin/devices/{a.device_id}/revoke",
                    json={}).status_code == 200
    assert st.psql(f"SELECT reason FROM stream_tombstones WHERE stream_id = '{m0.stream_id}'"
                   ).strip() == "revoked"


def test_two_instances_share_streams(st):
    second = helpers.SecondKmsd(st)
    try:
        a, b = (helpers.make_device(st, "vehicle", st.ga),
                helpers.make_device(st, "encryptor", st.gb))
        k0 = skey(st, a, b, 0)
        j0 = skey(st, b, a, 0, server=second)
        assert (j0.stream_id, j0.key) == (k0.stream_id, k0.key)
        with concurrent.futures.ThreadPoolExecutor(4) as ex:
            futs = [ex.submit(skey, st, d, p, n, k0.stream_id, srv) for n in (1, 2, 3)
                    for d, p, srv in ((a, b, st), (b, a, second))]
            got = [f.result() for f in futs]
        for n in (1, 2, 3):
            assert len({k.key for k in got if k.seq == n}) == 1
        assert low(st, k0.stream_id) == 4
    finally:
        assert second.stop() == 0


def test_a_master_rotation_rewraps_stream_keys(st, pair):
    a, b = pair
    k0 = skey(st, a, b, 0)
    k1 = skey(st, a, b, 1, k0.stream_id)
    before = st.psql("SELECT version FROM master_keys WHERE state = 'active'").strip()
    assert st.admin("POST", "/v1/admin/master/rotate").status_code == 200
    assert wait_for(lambda: st.psql("SELECT count(*) FROM stream_keys WHERE master_version <= "
                                    + before).strip() == "0", timeout=60)
    assert skey(st, b, a, 1, k0.stream_id).key == k1.key


def test_qkms_device_stream(st, tmp_path):
    """The C library and qkms-device against the Python device: one stream,
    the same keys, then its end."""
    import json
    import os
    import subprocess
    qkmsdev = os.environ.get("QKMS_DEVICE", os.path.join(os.path.dirname(__file__), "..", "..",
                                                         "build/asan/bin/qkms-device"))
    did = uid("VEH")
    assert st.admin("POST", "/v1/admin/devices", json={"device_id": did, "type": "vehicle",
                                                        "group": st.ga}).status_code == 201
    doc = st.admin("POST", f"/v1/admin/devices/{did}/fill", json={"plaintext": True}).json()
    fill = tmp_path / "fill.json"
    fill.write_text(json.dumps(doc["plaintext"]))
    enc = helpers.make_device(st, "encryptor", st.gb)

    def run(*args):
        p = subprocess.run([qkmsdev, "stream", "--url", st.url, "--fill", str(fill), *args],
                           capture_output=True, text=True, timeout=60)
        assert "Sanitizer" not in p.stderr and "runtime error" not in p.stderr, p.stderr
        return p

    p = run("--peer", enc.device_id, "--seq", "0", "--json")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["seq"] == 0 and out["low"] == 0 and out["device_id"] == did

    class Peer:
        device_id = did
    k = skey(st, enc, Peer(), 0)
    assert k.stream_id == out["stream_id"] and k.key.hex() == out["key"]
    p = run("--peer", enc.device_id, "--seq", "1", "--stream", out["stream_id"])
    assert p.returncode == 0 and f"stream_id: {out['stream_id']}\nseq: 1\n" in p.stdout, p.stderr
    p = run("--peer", enc.device_id, "--seq", "0", "--stream", out["stream_id"], "--json")
    assert p.returncode == 6 and json.loads(p.stdout)["error"]["code"] == "key_consumed"
    p = run("--end", "--stream", out["stream_id"], "--json")
    assert p.returncode == 0 and json.loads(p.stdout) == {
        "stream_id": out["stream_id"], "ended": True, "key_index": out["key_index"]}
    for bad in (["--seq", "0"], ["--peer", enc.device_id], ["--end"],
                ["--end", "--stream", out["stream_id"], "--peer", enc.device_id],
                ["--peer", enc.device_id, "--seq", "-1"],
                ["--peer", enc.device_id, "--seq", "0", "--session", "S"]):
        assert run(*bad).returncode == 2, bad


def test_a_stream_id_is_used_once(st, pair):
    """A candidate made for a stream that has ended since is asked again
    (kmsd makes a new ID), and nothing can make a live stream of an ended
    stream's ID."""
    a, b = pair
    k0 = skey(st, a, b, 0)
    assert post(st, a.stream_end_request(k0.stream_id)).status_code == 200
    apk = st.psql(f"SELECT id FROM devices WHERE device_id = '{a.device_id}'").strip()
    active = st.psql("SELECT version FROM master_keys WHERE state = 'active'").strip()
    # The stored function as kmsd's second call would make it, with a
    # candidate for the ended stream: need_key, a new stream wanted.
    row = st.psql("SELECT outcome || ' ' || coalesce(out_stream::text, '-') FROM qkms_stream_key("
                  f"{apk}, 0, '\\x000102030405060708090a0b'::bytea,"
                  " extract(epoch FROM now())::bigint, 60, NULL,"
                  f" '{b.device_id}', 0, gen_random_uuid(), '\\x00'::bytea, {active}, 'test', 128,"
                  f" '{k0.stream_id}'::uuid)").strip()
    assert row == "need_key -"
    with pytest.raises(AssertionError, match="used once"):
        st.psql("INSERT INTO streams (stream_id, party_lo, party_hi, lo_id, hi_id, opened_by,"
                " policy, key_bits, stream_window, idle_timeout_s, expires_at, reap_at)"
                f" SELECT '{k0.stream_id}', min(id), max(id), 'x', 'y', min(id), 'p', 128, 4, 60,"
                " now(), now() FROM devices"
                f" WHERE device_id IN ('{a.device_id}', '{b.device_id}')")
    n0 = skey(st, b, a, 0)
    assert n0.stream_id != k0.stream_id


def test_stream_keys_are_audited(st, pair):
    a, b = pair
    k0 = skey(st, a, b, 0)
    skey(st, b, a, 0, k0.stream_id)
    k1 = skey(st, a, b, 1, k0.stream_id)
    made = st.psql("SELECT string_agg(detail->>'key_id', ' ' ORDER BY detail->>'seq')"
                   " FROM audit_log WHERE event = 'stream.key_created' AND"
                   f" detail->>'stream_id' = '{k0.stream_id}'").strip().split()
    assert made == [k0.key_id, k1.key_id]
    assert st.psql("SELECT count(*) FROM audit_log WHERE event = 'stream.keys_destroyed' AND"
                   f" detail->>'reason' = 'consumed' AND detail->'key_ids' ? '{k0.key_id}'"
                   ).strip() == "1"
    # A refusal of the window records the nonce (the same request again is
    # a replay) and an audit row; nothing is made.
    req = a.stream_request(b.device_id, 99, k0.stream_id)
    assert code(post(st, req)) == "seq_out_of_window"
    r = post(st, req)
    assert r.status_code == 401
    assert st.psql("SELECT count(*) FROM audit_log WHERE event = 'stream.refused' AND"
                   f" detail->>'reason' = 'seq_out_of_window' AND detail->>'stream_id' ="
                   f" '{k0.stream_id}'").strip() == "1"
    assert rows(st, k0.stream_id) == ["1:live"]
    # The end names the key left unconsumed; the tombstone counts the consumed.
    assert post(st, b.stream_end_request(k0.stream_id)).status_code == 200
    assert st.psql("SELECT detail->'key_ids' ? '" + k1.key_id + "' FROM audit_log WHERE event ="
                   f" 'stream.ended' AND detail->>'stream_id' = '{k0.stream_id}'").strip() == "t"
    assert st.psql("SELECT keys_consumed FROM stream_tombstones WHERE stream_id ="
                   f" '{k0.stream_id}'").strip() == "1"


def test_two_instances_open_one_stream(st):
    second = helpers.SecondKmsd(st)
    try:
        for _ in range(4):
            a, b = (helpers.make_device(st, "vehicle", st.ga),
                    helpers.make_device(st, "encryptor", st.gb))
            with concurrent.futures.ThreadPoolExecutor(2) as ex:
                fa = ex.submit(skey, st, a, b, 0, None, st)
                fb = ex.submit(skey, st, b, a, 0, None, second)
                ka, kb = fa.result(), fb.result()
            assert (ka.stream_id, ka.key) == (kb.stream_id, kb.key)
    finally:
        assert second.stop() == 0


def test_the_operators_view(st, pair):
    a, b = pair
    k0 = skey(st, a, b, 0)
    skey(st, a, b, 1, k0.stream_id)
    body = st.admin("GET", "/v1/admin/streams", params={"device": a.device_id}).json()
    assert [x["stream_id"] for x in body["streams"]] == [k0.stream_id]
    rec = body["streams"][0]
    assert sorted(rec["parties"]) == sorted([a.device_id, b.device_id])
    assert (rec["opened_by"], rec["low"], rec["keys_live"], rec["window"], rec["state"]) == (
        a.device_id, 0, 2, 4, "live")
    assert st.admin("GET", f"/v1/admin/streams/{k0.stream_id}").json() == rec
    for q in ({"limit": 0}, {"limit": "x"}, {"device": "a/b"}):
        r = st.admin("GET", "/v1/admin/streams", params=q)
        assert r.status_code == 400 and code(r) == "invalid_query", q
    assert st.admin("GET", "/v1/admin/streams/nope").status_code == 404
    assert st.admin("GET", f"/v1/admin/streams/{uuid.uuid4()}").status_code == 404
    # kmsctl, then the operator's end.
    p = st.kmsctl("stream", "list", "--device", a.device_id, token=st.admin_token)
    assert p.returncode == 0 and k0.stream_id in p.stdout and "LIVE-KEYS" in p.stdout, p.stderr
    p = st.kmsctl("stream", "show", k0.stream_id, "--json", token=st.admin_token)
    assert p.returncode == 0 and __import__("json").loads(p.stdout)["low"] == 0
    assert st.kmsctl("stream", "show", "NOT-A-UUID", token=st.admin_token).returncode == 2
    p = st.kmsctl("stream", "end", k0.stream_id, token=st.admin_token)
    assert p.returncode == 0 and "ended" in p.stdout, p.stderr
    stone = st.admin("GET", f"/v1/admin/streams/{k0.stream_id}").json()
    assert (stone["state"], stone["reason"], stone["keys_consumed"]) == (
        "ended", "ended_by_operator", 0)
    assert srefused(st, b, a, 0, k0.stream_id) == (409, "stream_ended")
    assert st.admin("POST", f"/v1/admin/streams/{k0.stream_id}/end").status_code == 404
