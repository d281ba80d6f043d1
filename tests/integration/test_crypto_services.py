"""The platform's crypto services (issue 19; seed 003 claim 13, seed 000's
cipher machine) against real kmsd, PostgreSQL and SoftHSM: random bytes with
their provenance, and frames (docs/sealing.md) sealed and opened under a
session's key for a back end that is a party of the session, with the
Python implementations of protocol v1 and of the frame as the devices.
Every refusal has its documented status and code, opens or seals nothing,
and is audited; no third identity gets anything from a session's key."""
import base64
import json
import os
import subprocess
import uuid

import pytest
import requests

import helpers
import qkms_seal_py as qs
from conftest import ROOT, _finish, wait_for
from helpers import error_code as code, get_key, uid, veh_enc_stack
from test_entropy import Qrng, entropy_env, primary


@pytest.fixture(scope="module")
def st():
    # A cheap scrypt cost for the gateway login below (production's is 2^17).
    s = veh_enc_stack("qkms-crypto", {"QKMS_RATE_LIMIT_ADMIN": "0",
                                      "QKMS_GATEWAY_PASSWORD_SCRYPT_LOG2N": "12"})
    yield s
    _finish(s)


def b64(b):
    return base64.b64encode(b).decode()


def crypto_token(st, acts_for, name=None):
    name = name or "be-" + uuid.uuid4().hex[:8]
    r = st.admin("POST", "/v1/admin/tokens", json={"name": name, "role": "crypto",
                                                   "acts_for": acts_for})
    assert r.status_code == 201, r.text
    assert r.json()["acts_for"] == acts_for and r.json()["role"] == "crypto"
    return r.json()["token"]


def call(st, tok, sid, op, body):
    return st.api("POST", f"/v1/crypto/sessions/{sid}/{op}", token=tok, json=body)


class Pair:
    """A vehicle (the device) and an encryptor (the back end, through the
    crypto services), with a live session both hold the key of."""

    def __init__(self, st):
        self.dev = helpers.make_device(st, "vehicle", st.group)
        self.be = helpers.make_device(st, "encryptor", st.group)
        self.sid = uid()
        self.k = get_key(st, self.dev, self.sid, self.be)
        assert get_key(st, self.be, self.sid, self.dev).key == self.k.key
        self.tok = crypto_token(st, self.be.device_id)
        self.up = qs.direction_of(self.dev.device_id, self.be.device_id)   # device -> back end
        self.down = qs.direction_of(self.be.device_id, self.dev.device_id)

    def frame(self, seq, pt=b"reading 42", **kw):
        return qs.seal(self.k.key, self.k.key_id, self.sid, kw.get("direction", self.up), seq, pt)


@pytest.fixture
def pair(st):
    return Pair(st)


def audit_rows(st, event, party):
    out = st.psql("SELECT detail::text FROM audit_log WHERE event = '%s' AND device_id = '%s'"
                  " ORDER BY id" % (event, party))
    return [json.loads(x) for x in out.splitlines() if x.strip()]


# ---------------------------------------------------------------------------
# crypto tokens


def test_a_crypto_token_acts_for_one_live_party(st):
    dev = helpers.make_device(st, "encryptor", st.group)
    bad = [({"role": "crypto"}, 422, "invalid_acts_for"),
           ({"role": "operator", "acts_for": dev.device_id}, 422, "invalid_acts_for"),
           ({"role": "crypto", "acts_for": "no-such-" + uid()}, 422, "unknown_device"),
           ({"role": "crypto", "acts_for": "a/b"}, 422, "invalid_acts_for"),
           ({"role": "crypto", "acts_for": 7}, 422, "invalid_request")]
    for body, status, c in bad:
        r = st.admin("POST", "/v1/admin/tokens", json={"name": "t-" + uuid.uuid4().hex[:8], **body})
        assert (r.status_code, code(r)) == (status, c), (body, r.text)
    name = "be-" + uuid.uuid4().hex[:8]
    crypto_token(st, dev.device_id, name)
    crypto_token(st, "@platform")
    row = [t for t in st.admin("GET", "/v1/admin/tokens").json()["tokens"] if t["name"] == name][0]
    assert (row["role"], row["acts_for"]) == ("crypto", dev.device_id)
    assert all(t["acts_for"] is None for t in st.admin("GET", "/v1/admin/tokens").json()["tokens"]
               if t["role"] != "crypto")
    # A revoked device gets no new crypto token.
    assert st.admin("POST", f"/v1/admin/devices/{dev.device_id}/revoke", json={}).status_code == 200
    r = st.admin("POST", "/v1/admin/tokens", json={"name": "t-" + uuid.uuid4().hex[:8],
                                                   "role": "crypto", "acts_for": dev.device_id})
    assert (r.status_code, code(r)) == (422, "unknown_device")


def test_a_crypto_token_reaches_nothing_else(st, pair):
    for method, path in (("GET", "/v1/admin/devices"), ("GET", "/v1/admin/status"),
                         ("GET", "/v1/admin/sessions")):
        r = st.api(method, path, token=pair.tok)
        assert (r.status_code, code(r)) == (403, "forbidden"), path
    # Nor do the other roles reach the session services.
    op = st.admin("POST", "/v1/admin/tokens", json={"name": "op-" + uuid.uuid4().hex[:8],
                                                    "role": "operator"}).json()["token"]
    for tok in (op, st.admin_token):
        r = call(st, tok, pair.sid, "decrypt", {"frame": b64(pair.frame(0))})
        assert (r.status_code, code(r)) == (403, "forbidden")


# ---------------------------------------------------------------------------
# random


def test_random_bytes_with_their_provenance(st):
    tok = crypto_token(st, "@platform")
    seen = set()
    for n in (1, 32, 4096):
        r = st.api("GET", f"/v1/random?bytes={n}", token=tok)
        assert r.status_code == 200, r.text
        body = r.json()
        data = base64.b64decode(body["random"], validate=True)
        assert len(data) == n == body["bytes"]
        assert body["provenance"] == r.headers["Qkms-Provenance"] == "pkcs11+ctr-drbg"
        seen.add(data)
    assert len(seen) == 3
    # An admin may ask too; an operator may not.
    assert st.admin("GET", "/v1/random?bytes=16").status_code == 200
    op = st.admin("POST", "/v1/admin/tokens", json={"name": "op-" + uuid.uuid4().hex[:8],
                                                    "role": "operator"}).json()["token"]
    assert st.api("GET", "/v1/random?bytes=16", token=op).status_code == 403
    for q in ("bytes=0", "bytes=4097", "bytes=-1", "bytes=abc", "bytes=16x", "", "bytes=",
              "bytes=99999999999999999999", "bytes=8&bytes=8", "bytes=+8"):
        r = st.api("GET", "/v1/random?" + q, token=tok)
        assert (r.status_code, code(r)) == (422, "invalid_bytes"), q
        assert "Qkms-Provenance" not in r.headers
    rows = st.psql("SELECT detail->>'bytes' || ' ' || (detail->>'provenance') FROM audit_log"
                   " WHERE event = 'crypto.random' ORDER BY id").splitlines()
    assert rows[-4:] == ["1 pkcs11+ctr-drbg", "32 pkcs11+ctr-drbg", "4096 pkcs11+ctr-drbg",
                         "16 pkcs11+ctr-drbg"]


def test_random_provenance_follows_the_qrng(fresh_stack):
    q = Qrng()
    try:
        st = fresh_stack
        st.start(extra_env=entropy_env(q, "fallback"))
        assert wait_for(lambda: primary(st)["state"] == "ok")

        def prov():
            r = st.admin("GET", "/v1/random?bytes=32")
            assert r.status_code == 200, r.text
            assert r.headers["Qkms-Provenance"] == r.json()["provenance"]
            return r.json()["provenance"]

        assert prov() == "http+ctr-drbg"
        q.mode("stuck")
        assert wait_for(lambda: primary(st)["state"] == "quarantined")
        assert prov() == "pkcs11 (fallback)"
        q.mode("ok")
        assert wait_for(lambda: primary(st)["state"] == "ok")
        assert prov() == "http+ctr-drbg"
    finally:
        q.stop()


def test_random_under_require_fails_closed(fresh_stack):
    q = Qrng()
    try:
        st = fresh_stack
        st.start(extra_env=entropy_env(q, "require"))
        assert wait_for(lambda: primary(st)["state"] == "ok")
        q.mode("down")
        assert wait_for(lambda: primary(st)["state"] == "quarantined")
        r = st.admin("GET", "/v1/random?bytes=32")
        assert (r.status_code, code(r)) == (503, "entropy_unavailable")
        assert r.headers["Retry-After"] == "1" and "Qkms-Provenance" not in r.headers
        q.mode("ok")
        assert wait_for(lambda: st.admin("GET", "/v1/random?bytes=32").status_code == 200)
    finally:
        q.stop()


# ---------------------------------------------------------------------------
# decrypt: the device's frames opened for the back end


def test_a_devices_frame_opens_for_the_back_end(st, pair):
    for seq, pt in ((0, b"reading 1"), (1, b""), (5, bytes(range(256)) * 40)):
        r = call(st, pair.tok, pair.sid, "decrypt", {"frame": b64(pair.frame(seq, pt))})
        assert r.status_code == 200, r.text
        a = r.json()
        assert base64.b64decode(a["plaintext"]) == pt
        assert (a["key_id"], a["seq"], a["direction"], a["party"], a["peer"]) == (
            pair.k.key_id, str(seq), pair.up, pair.be.device_id, pair.dev.device_id)
    rows = audit_rows(st, "crypto.decrypt", pair.be.device_id)
    assert [(x["seq"], x["bytes"], x["key_id"]) for x in rows] == [
        ("0", 9, pair.k.key_id), ("1", 0, pair.k.key_id), ("5", 10240, pair.k.key_id)]
    assert "reading" not in json.dumps(rows)


def test_replayed_and_too_old_frames_are_refused(st, pair):
    def dec(seq, **kw):
        return call(st, pair.tok, pair.sid, "decrypt", {"frame": b64(pair.frame(seq, **kw))})

    assert dec(100).status_code == 200
    r = dec(100)
    assert (r.status_code, code(r)) == (409, "seal_replay")
    # Out of order within the window: once each.
    assert dec(40).status_code == 200 and dec(99).status_code == 200
    assert code(dec(40)) == "seal_replay"
    # 64 or more behind the newest: too old to tell.
    r = dec(36)
    assert (r.status_code, code(r)) == (409, "seal_replay")
    # A forged frame far ahead does not move the window.
    forged = bytearray(pair.frame(10**6))
    forged[-1] ^= 1
    r = call(st, pair.tok, pair.sid, "decrypt", {"frame": b64(bytes(forged))})
    assert (r.status_code, code(r)) == (400, "seal_auth")
    assert dec(101).status_code == 200
    refused = [x for x in audit_rows(st, "crypto.refused", pair.be.device_id)]
    assert [(x["code"], x["seq"]) for x in refused] == [
        ("seal_replay", "100"), ("seal_replay", "40"), ("seal_replay", "36"),
        ("seal_auth", str(10**6))]


def test_the_window_holds_across_kmsd_restarts(fresh_stack):
    st = fresh_stack
    st.start(extra_env={"QKMS_RATE_LIMIT_ADMIN": "0"})
    st.group = "g-" + uuid.uuid4().hex[:6]
    assert st.admin("POST", "/v1/admin/policies", json={
        "name": "veh-enc", "type_a": "vehicle", "type_b": "encryptor"}).status_code == 201
    p = Pair(st)
    assert call(st, p.tok, p.sid, "decrypt", {"frame": b64(p.frame(7))}).status_code == 200
    st.restart()
    r = call(st, p.tok, p.sid, "decrypt", {"frame": b64(p.frame(7))})
    assert (r.status_code, code(r)) == (409, "seal_replay")
    assert call(st, p.tok, p.sid, "decrypt", {"frame": b64(p.frame(8))}).status_code == 200


def test_frames_that_are_not_the_peers_are_refused(st, pair):
    def dec(frame):
        return call(st, pair.tok, pair.sid, "decrypt", {"frame": b64(frame)})

    good = pair.frame(3)
    cases = [
        (good[:43], 400, "seal_format"),
        (bytes([2]) + good[1:], 400, "seal_format"),
        (good[:3] + b"\x01" + good[4:], 400, "seal_format"),
        # Sealed by the back end's own side: not what it receives.
        (pair.frame(3, direction=pair.down), 422, "seal_direction"),
        # Another key ID: no key of this session.
        (good[:4] + uuid.uuid4().bytes + good[20:], 409, "seal_key"),
        # Another session's frame under this key's ID (the AAD differs).
        (qs.seal(pair.k.key, pair.k.key_id, "other-" + pair.sid, pair.up, 3, b"x"), 400,
         "seal_auth"),
    ]
    for i in range(0, len(good), 7):   # a flipped bit anywhere
        bad = bytearray(good)
        bad[i] ^= 0x10
        if 4 <= i < 20:
            cases.append((bytes(bad), 409, "seal_key"))
        elif i < 4:
            cases.append((bytes(bad), 400, "seal_format"))
        else:
            cases.append((bytes(bad), 400, "seal_auth"))
    for frame, status, c in cases:
        r = dec(frame)
        assert (r.status_code, code(r)) == (status, c), (frame.hex(), r.text)
    # Nothing of them moved the window: seq 3 still opens.
    assert dec(good).status_code == 200
    for body, status, c in (({"frame": "not base64!"}, 422, "invalid_base64"),
                            ({"frame": 5}, 422, "invalid_request"),
                            ({}, 422, "invalid_request"),
                            ({"frame": b64(good), "extra": 1}, 422, "invalid_request")):
        r = call(st, pair.tok, pair.sid, "decrypt", body)
        assert (r.status_code, code(r)) == (status, c), body


def test_no_third_identity(st, pair):
    other = helpers.make_device(st, "encryptor", st.group)
    tok = crypto_token(st, other.device_id)
    for op, body in (("decrypt", {"frame": b64(pair.frame(0))}),
                     ("encrypt", {"plaintext": b64(b"x")})):
        r = call(st, tok, pair.sid, op, body)
        assert (r.status_code, code(r)) == (403, "not_a_party"), op
    # Nor the platform's side: the session's peer is a device.
    r = call(st, crypto_token(st, "@platform"), pair.sid, "decrypt", {"frame": b64(pair.frame(0))})
    assert (r.status_code, code(r)) == (403, "not_a_party")
    # The refusals opened nothing: seq 0 still opens for the back end.
    assert call(st, pair.tok, pair.sid, "decrypt", {"frame": b64(pair.frame(0))}).status_code == 200
    assert [x["code"] for x in audit_rows(st, "crypto.refused", other.device_id)] == [
        "not_a_party", "not_a_party"]


def test_unknown_ended_and_suspended(st, pair):
    r = call(st, pair.tok, "no-such-" + uid(), "decrypt", {"frame": b64(pair.frame(0))})
    assert (r.status_code, code(r)) == (404, "unknown_session")
    assert call(st, pair.tok, pair.sid, "decrypt", {"frame": b64(pair.frame(0))}).status_code == 200
    assert call(st, pair.tok, pair.sid, "encrypt", {"plaintext": b64(b"x")}).status_code == 200
    assert st.psql("SELECT count(*) FROM seal_state s JOIN sessions x ON x.id = s.session_pk"
                   f" WHERE x.session_id = '{pair.sid}'").strip() == "2"
    before = st.psql("SELECT count(*) FROM seal_state").strip()
    # Suspending the back end's device stops its token.
    be = pair.be.device_id
    assert st.admin("POST", f"/v1/admin/devices/{be}/suspend", json={}).status_code == 200
    r = call(st, pair.tok, pair.sid, "decrypt", {"frame": b64(pair.frame(1))})
    assert (r.status_code, code(r)) == (403, "party_inactive")
    assert st.admin("POST", f"/v1/admin/devices/{be}/resume", json={}).status_code == 200
    assert call(st, pair.tok, pair.sid, "decrypt", {"frame": b64(pair.frame(1))}).status_code == 200
    assert st.admin("POST", f"/v1/admin/sessions/{pair.sid}/end", json={}).status_code == 200
    for op, body in (("decrypt", {"frame": b64(pair.frame(2))}),
                     ("encrypt", {"plaintext": b64(b"x")})):
        r = call(st, pair.tok, pair.sid, op, body)
        assert (r.status_code, code(r)) == (409, "session_ended"), op
    # The session's frame state went with it.
    assert int(st.psql("SELECT count(*) FROM seal_state").strip()) == int(before) - 2
    # A revoked token is refused at the gate.
    name = [t["name"] for t in st.admin("GET", "/v1/admin/tokens").json()["tokens"]
            if t.get("acts_for") == be][0]
    assert st.admin("DELETE", f"/v1/admin/tokens/{name}").status_code == 200
    r = call(st, pair.tok, pair.sid, "decrypt", {"frame": b64(pair.frame(3))})
    assert r.status_code == 401


def test_the_platforms_side_of_a_platform_peer_session(st):
    """A gateway's login key is a session with the platform as its peer
    (docs/gateways.md): a crypto token acting for @platform opens what the
    gateway seals to the platform and seals the platform's answers; no
    device's token passes for the platform's side (the session's responder
    is NULL: a membership test must not fall through on it)."""
    r = st.admin("POST", "/v1/admin/policies", json={
        "name": "gw-login-" + uuid.uuid4().hex[:6], "type_a": "gateway", "type_b": "@platform"})
    assert r.status_code == 201, r.text
    gw = helpers.make_device(st, "gateway", st.group)
    tid = "tid-" + uuid.uuid4().hex[:8]
    assert st.admin("POST", f"/v1/admin/devices/{gw.device_id}/credential",
                    json={"tid": tid, "password": "correct horse battery"}).status_code == 200
    req = gw.login_request(tid, "correct horse battery")
    r = helpers.post(st, req)
    assert r.status_code == 200, r.text
    k = gw.open_login_response(req, r.json())
    sid = r.json()["login_id"]
    tok = crypto_token(st, "@platform")
    up = qs.direction_of(gw.device_id, "@platform")
    r = call(st, tok, sid, "decrypt",
             {"frame": b64(qs.seal(k.key, k.key_id, sid, up, 0, b"gateway hello"))})
    assert r.status_code == 200, r.text
    assert base64.b64decode(r.json()["plaintext"]) == b"gateway hello"
    assert (r.json()["party"], r.json()["peer"], r.json()["direction"]) == (
        "@platform", gw.device_id, up)
    r = call(st, tok, sid, "encrypt", {"plaintext": b64(b"platform hello")})
    assert r.status_code == 200, r.text
    pt, seq = qs.open_frame(k.key, k.key_id, sid, qs.direction_of("@platform", gw.device_id),
                            base64.b64decode(r.json()["frame"]))
    assert pt == b"platform hello" and seq == 2**63
    # A device's crypto token is not the platform's side of someone else's
    # login.
    other = crypto_token(st, helpers.make_device(st, "encryptor", st.group).device_id)
    for op, body in (("decrypt", {"frame": b64(qs.seal(k.key, k.key_id, sid, up, 1, b"x"))}),
                     ("encrypt", {"plaintext": b64(b"x")})):
        r = call(st, other, sid, op, body)
        assert (r.status_code, code(r)) == (403, "not_a_party"), op
    # Those refusals opened nothing: seq 1 still opens for the platform.
    r = call(st, tok, sid, "decrypt",
             {"frame": b64(qs.seal(k.key, k.key_id, sid, up, 1, b"x"))})
    assert r.status_code == 200, r.text


# ---------------------------------------------------------------------------
# encrypt: the back end's frames, opened on the device


def test_the_back_ends_frames_open_on_the_device(st, pair):
    w = qs.Window()
    seqs = []
    for pt in (b"set tariff 7", b"", b"x" * 70000):
        r = call(st, pair.tok, pair.sid, "encrypt", {"plaintext": b64(pt)})
        assert r.status_code == 200, r.text
        a = r.json()
        assert (a["key_id"], a["direction"], a["party"], a["peer"]) == (
            pair.k.key_id, pair.down, pair.be.device_id, pair.dev.device_id)
        frame = base64.b64decode(a["frame"])
        got, seq = qs.open_frame(pair.k.key, pair.k.key_id, pair.sid, pair.down, frame, w)
        assert got == pt and str(seq) == a["seq"]
        seqs.append(seq)
    # The service's counter: the upper half of the sequence space, one by one.
    assert seqs == [2**63, 2**63 + 1, 2**63 + 2]
    # The key named explicitly (any case) is the same key.
    r = call(st, pair.tok, pair.sid, "encrypt", {"plaintext": b64(b"y"),
                                                  "key_id": pair.k.key_id.upper()})
    assert r.status_code == 200 and r.json()["seq"] == str(2**63 + 3)
    for body, status, c in (({"plaintext": b64(b"y"), "key_id": str(uuid.uuid4())}, 409, "no_key"),
                            ({"plaintext": b64(b"y"), "key_id": "nope"}, 422, "invalid_key_id"),
                            ({"plaintext": b64(b"y"), "key_id": None}, 422, "invalid_request"),
                            ({"plaintext": "%%%"}, 422, "invalid_base64"),
                            ({"plaintext": b64(b"y"), "seq": 1}, 422, "invalid_request")):
        r = call(st, pair.tok, pair.sid, "encrypt", body)
        assert (r.status_code, code(r)) == (status, c), body
    rows = audit_rows(st, "crypto.encrypt", pair.be.device_id)
    assert [(x["seq"], x["bytes"]) for x in rows] == [
        (str(2**63), 12), (str(2**63 + 1), 0), (str(2**63 + 2), 70000), (str(2**63 + 3), 1)]


def test_a_round_trip_through_the_platform(st, pair):
    """The device seals, the back end opens through the platform, answers
    through the platform, the device opens: both implementations agree."""
    w = qs.Window()
    for i in range(5):
        up = call(st, pair.tok, pair.sid, "decrypt",
                  {"frame": b64(pair.frame(i, b"ping %d" % i))}).json()
        assert base64.b64decode(up["plaintext"]) == b"ping %d" % i
        down = call(st, pair.tok, pair.sid, "encrypt",
                    {"plaintext": b64(b"pong %d" % i)}).json()
        pt, _ = qs.open_frame(pair.k.key, pair.k.key_id, pair.sid, pair.down,
                              base64.b64decode(down["frame"]), w)
        assert pt == b"pong %d" % i


def test_the_size_limits(st, pair):
    big = b"\0" * ((4 << 20) + 1)
    r = call(st, pair.tok, pair.sid, "encrypt", {"plaintext": b64(big)})
    assert (r.status_code, code(r)) == (413, "payload_too_large")
    r = call(st, pair.tok, pair.sid, "encrypt", {"plaintext": b64(big[:-1])})
    assert r.status_code == 200, r.text[:200]
    frame = base64.b64decode(r.json()["frame"])
    assert len(frame) == (4 << 20) + qs.OVERHEAD
    r = requests.post(st.url + f"/v1/crypto/sessions/{pair.sid}/decrypt",
                      headers={"Authorization": "Bearer " + pair.tok},
                      data=b'{"frame":"' + b"A" * (7 << 20) + b'"}', timeout=60)
    assert r.status_code == 413


# ---------------------------------------------------------------------------
# the C device library (qkms-device key --seal / --open) through the platform

QKMS_DEVICE = os.environ.get("QKMS_DEVICE", os.path.join(ROOT, "build/asan/bin/qkms-device"))


def c_device(st, tmp_path, type_):
    did = uid(type_[:3].upper())
    r = st.admin("POST", "/v1/admin/devices", json={"device_id": did, "type": type_,
                                                    "group": st.group})
    assert r.status_code == 201, r.text
    r = st.admin("POST", f"/v1/admin/devices/{did}/fill", json={"plaintext": True})
    assert r.status_code == 200, r.text
    path = tmp_path / f"{did}.fill.json"
    path.write_text(json.dumps(r.json()["plaintext"]))
    path.chmod(0o600)
    return did, str(path)


def qkms_device(st, fill, sid, peer, *args):
    p = subprocess.run([QKMS_DEVICE, "key", "--url", st.url, "--fill", fill,
                        "--session", sid, "--peer", peer, "--json", *args],
                       capture_output=True, text=True, timeout=60)
    return p


def test_the_c_library_and_the_platform_agree(st, tmp_path):
    """A meter's uplink sealed by libqkms-device opens on the platform for
    the back end; the back end's downlink sealed by the platform opens in
    libqkms-device; a replay of the device's frame is refused."""
    did, fill = c_device(st, tmp_path, "vehicle")
    be = helpers.make_device(st, "encryptor", st.group)
    sid = uid()
    tok = crypto_token(st, be.device_id)
    pt = tmp_path / "uplink.bin"
    pt.write_bytes(b"meter 17: 12.5 m3\n" * 100)
    frame = tmp_path / "uplink.frame"
    p = qkms_device(st, fill, sid, be.device_id, "--seal", str(pt), "--seq", "41",
                    "--out", str(frame))
    assert p.returncode == 0, p.stderr
    info = json.loads(p.stdout)
    assert (info["op"], info["seq"], info["bytes"]) == ("seal", "41", 1800)
    assert info["direction"] == qs.direction_of(did, be.device_id)
    assert "key" not in info   # the key itself is never printed
    assert oct(os.stat(frame).st_mode & 0o777) == "0o600"
    # The back end is the session's second party once it asked for the key.
    get_key(st, be, sid, _peer(did))
    r = call(st, tok, sid, "decrypt", {"frame": b64(frame.read_bytes())})
    assert r.status_code == 200, r.text
    assert base64.b64decode(r.json()["plaintext"]) == pt.read_bytes()
    assert (r.json()["seq"], r.json()["key_id"]) == ("41", info["key_id"])
    r = call(st, tok, sid, "decrypt", {"frame": b64(frame.read_bytes())})
    assert (r.status_code, code(r)) == (409, "seal_replay")
    # Downlink: sealed by the platform, opened by the C library.
    r = call(st, tok, sid, "encrypt", {"plaintext": b64(b"valve: close")})
    assert r.status_code == 200, r.text
    down = tmp_path / "downlink.frame"
    down.write_bytes(base64.b64decode(r.json()["frame"]))
    out = tmp_path / "downlink.bin"
    p = qkms_device(st, fill, sid, be.device_id, "--open", str(down), "--out", str(out))
    assert p.returncode == 0, p.stderr
    assert out.read_bytes() == b"valve: close"
    assert json.loads(p.stdout)["seq"] == str(2**63)
    # A flipped bit: the C library refuses it (exit 5), writes nothing.
    bad = bytearray(down.read_bytes())
    bad[-3] ^= 4
    down.write_bytes(bytes(bad))
    out2 = tmp_path / "never.bin"
    p = qkms_device(st, fill, sid, be.device_id, "--open", str(down), "--out", str(out2))
    assert p.returncode == 5 and "auth" in p.stderr and not out2.exists()


class _peer:
    def __init__(self, did):
        self.device_id = did


def test_keys_of_older_epochs(st):
    """Frames under an older epoch's key open while its grace lasts, never
    after (even before the reaper destroyed the row); the default key to
    seal with follows the session's current epoch."""
    ga, gb = "ga-" + uuid.uuid4().hex[:6], "gb-" + uuid.uuid4().hex[:6]
    r = st.admin("POST", "/v1/admin/policies", json={
        "name": "veh-enc-ep-" + uuid.uuid4().hex[:6], "type_a": "vehicle",
        "type_b": "encryptor", "group_a": ga, "group_b": gb, "max_epochs": 3,
        "epoch_grace_s": 600})
    assert r.status_code == 201, r.text
    dev = helpers.make_device(st, "vehicle", ga)
    be = helpers.make_device(st, "encryptor", gb)
    sid = uid()
    k0 = get_key(st, dev, sid, be)
    assert get_key(st, be, sid, dev).key == k0.key
    tok = crypto_token(st, be.device_id)
    up = qs.direction_of(dev.device_id, be.device_id)
    k1 = get_key(st, dev, sid, be, epoch=1)
    # The default key is now epoch 1's; epoch 0's still opens (its grace).
    r = call(st, tok, sid, "encrypt", {"plaintext": b64(b"x")})
    assert r.status_code == 200 and r.json()["key_id"] == k1.key_id, r.text
    r = call(st, tok, sid, "decrypt", {"frame": b64(qs.seal(k0.key, k0.key_id, sid, up, 0, b"a"))})
    assert r.status_code == 200, r.text
    # Its grace over: refused at once, whether or not the reaper came by.
    st.psql("UPDATE session_keys SET destroy_at = now() - interval '1 second'"
            f" WHERE key_id = '{k0.key_id}'")
    for op, body in (("decrypt", {"frame": b64(qs.seal(k0.key, k0.key_id, sid, up, 1, b"a"))}),
                     ("encrypt", {"plaintext": b64(b"x"), "key_id": k0.key_id})):
        r = call(st, tok, sid, op, body)
        assert (r.status_code, code(r)) == (409, "seal_key" if op == "decrypt" else "no_key"), op
    r = call(st, tok, sid, "decrypt", {"frame": b64(qs.seal(k1.key, k1.key_id, sid, up, 0, b"b"))})
    assert r.status_code == 200, r.text


# ---------------------------------------------------------------------------
# data under a device key, without a session (seed 000's cipher machine)

def test_a_meters_data_under_its_device_key(st):
    """A meter seals its reading under its own device key for the platform;
    a crypto token acting for @platform opens it, seals the downlink the
    meter opens; replay, the wrong direction, tampering, other tokens,
    unknown and suspended devices refused."""
    meter = helpers.make_device(st, "meter", st.group, keys=2)
    tok = crypto_token(st, "@platform")
    newest = max(meter.keys)
    path = f"/v1/crypto/devices/{meter.device_id}"
    frame = qs.device_seal(meter.keys[newest], meter.device_id, 7, b"m3=12.5")
    r = st.api("POST", path + "/decrypt", token=tok, json={"frame": b64(frame)})
    assert r.status_code == 200, r.text
    a = r.json()
    assert base64.b64decode(a["plaintext"]) == b"m3=12.5"
    assert (a["key_index"], a["seq"], a["party"], a["peer"]) == (newest, "7", "@platform",
                                                                 meter.device_id)
    assert a["key_id"] == qs.device_data_key(meter.keys[newest], meter.device_id)[1]
    r = st.api("POST", path + "/decrypt", token=tok, json={"frame": b64(frame)})
    assert (r.status_code, code(r)) == (409, "seal_replay")
    # Under its older key too (both are live).
    old = qs.device_seal(meter.keys[min(meter.keys)], meter.device_id, 1, b"old key")
    r = st.api("POST", path + "/decrypt", token=tok, json={"frame": b64(old)})
    assert r.status_code == 200 and r.json()["key_index"] == min(meter.keys), r.text
    # The downlink, opened by the meter.
    w = qs.Window()
    for i in range(2):
        r = st.api("POST", path + "/encrypt", token=tok, json={"plaintext": b64(b"valve %d" % i)})
        assert r.status_code == 200, r.text
        assert r.json()["key_index"] == newest and r.json()["seq"] == str(2**63 + i)
        pt, _ = qs.device_open(meter.keys[newest], meter.device_id,
                               base64.b64decode(r.json()["frame"]), w)
        assert pt == b"valve %d" % i
    r = st.api("POST", path + "/encrypt", token=tok,
               json={"plaintext": b64(b"x"), "key_index": min(meter.keys)})
    assert r.status_code == 200 and r.json()["key_index"] == min(meter.keys)
    # Refusals.
    down = base64.b64decode(r.json()["frame"])
    bad = bytearray(qs.device_seal(meter.keys[newest], meter.device_id, 8, b"x"))
    bad[-1] ^= 1
    for body, status, c in (({"frame": b64(down)}, 422, "seal_direction"),
                            ({"frame": b64(bytes(bad))}, 400, "seal_auth"),
                            ({"frame": b64(qs.device_seal(os.urandom(16), meter.device_id, 9,
                                                          b"x"))}, 409, "seal_key"),
                            ({"frame": "AAAA"}, 400, "seal_format")):
        r = st.api("POST", path + "/decrypt", token=tok, json=body)
        assert (r.status_code, code(r)) == (status, c), body
    for body, status, c in (({"plaintext": b64(b"x"), "key_index": 9}, 409, "no_key"),
                            ({"plaintext": b64(b"x"), "key_index": 300}, 422,
                             "invalid_key_index"),
                            ({"plaintext": b64(b"x"), "key_index": "1"}, 422, "invalid_request")):
        r = st.api("POST", path + "/encrypt", token=tok, json=body)
        assert (r.status_code, code(r)) == (status, c), body
    other = crypto_token(st, helpers.make_device(st, "encryptor", st.group).device_id)
    r = st.api("POST", path + "/decrypt", token=other, json={"frame": b64(frame)})
    assert (r.status_code, code(r)) == (403, "not_a_party")
    r = st.api("POST", "/v1/crypto/devices/NO-SUCH-" + uid() + "/decrypt", token=tok,
               json={"frame": b64(frame)})
    assert (r.status_code, code(r)) == (404, "unknown_device")
    assert st.admin("POST", f"/v1/admin/devices/{meter.device_id}/suspend",
                    json={}).status_code == 200
    r = st.api("POST", path + "/encrypt", token=tok, json={"plaintext": b64(b"x")})
    assert (r.status_code, code(r)) == (403, "device_inactive")
    refused = audit_rows(st, "crypto.refused", meter.device_id)
    assert [x["code"] for x in refused][-1] == "device_inactive"
    assert "m3=12.5" not in json.dumps(audit_rows(st, "crypto.decrypt", meter.device_id))


def test_the_c_library_seals_device_data_for_the_platform(st, tmp_path):
    """libqkms-device's qkd_device_seal, through a test program built from
    the library, and the platform agree both ways."""
    meter = helpers.make_device(st, "meter", st.group)
    tok = crypto_token(st, "@platform")
    fill = tmp_path / "m.fill.json"
    fill.write_text(json.dumps({"format": "qkms-fill/1", "device_id": meter.device_id, "keys": [
        {"index": i, "algorithm": "AES-256" if len(k) == 32 else "AES-128", "key": k.hex()}
        for i, k in meter.keys.items()]}))
    r = st.api("POST", f"/v1/crypto/devices/{meter.device_id}/encrypt", token=tok,
               json={"plaintext": b64(b"from the platform")})
    assert r.status_code == 200, r.text
    (tmp_path / "down.frame").write_bytes(base64.b64decode(r.json()["frame"]))
    p = subprocess.run([QKMS_DEVICE, "data", "--fill", str(fill), "--open",
                        str(tmp_path / "down.frame"), "--out", str(tmp_path / "down.txt")],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "down.txt").read_bytes() == b"from the platform"
    (tmp_path / "up.txt").write_bytes(b"meter reading 42")
    p = subprocess.run([QKMS_DEVICE, "data", "--fill", str(fill), "--seal",
                        str(tmp_path / "up.txt"), "--seq", "3", "--out",
                        str(tmp_path / "up.frame")], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    r = st.api("POST", f"/v1/crypto/devices/{meter.device_id}/decrypt", token=tok,
               json={"frame": b64((tmp_path / "up.frame").read_bytes())})
    assert r.status_code == 200, r.text
    assert base64.b64decode(r.json()["plaintext"]) == b"meter reading 42"
