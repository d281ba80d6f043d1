"""A device ends all its sessions at once (issue 20, seed 003: a vehicle that
powers down): `end` with "all": true, in protocol v1 and v2, from the Python
implementations and from qkms-device, against real kmsd, PostgreSQL and
SoftHSM. Every session the device is a party of ends in one transaction,
with tombstones that say why; its peers get 409 session_ended; other devices'
sessions are untouched; bad requests end nothing."""
import json
import os
import re
import subprocess
import time

import pytest
import requests

import helpers
from conftest import _finish
from helpers import error_code as code, get_key, post, uid, veh_enc_stack
from qkms_proto_py import Device
from qkms_proto2_py import ALL, Device2, Platform

QKMSDEV = os.environ.get("QKMS_DEVICE", os.path.join(os.path.dirname(__file__), "..", "..",
                                                      "build/asan/bin/qkms-device"))


@pytest.fixture(scope="module")
def st():
    s = veh_enc_stack("qkms-endall", {"QKMS_PROTOCOL_CLOCK_SKEW": "60"})
    yield s
    _finish(s)


def fill_doc(st, type_):
    did = uid(type_[:3].upper())
    r = st.admin("POST", "/v1/admin/devices", json={"device_id": did, "type": type_,
                                                    "group": st.group})
    assert r.status_code == 201, r.text
    r = st.admin("POST", f"/v1/admin/devices/{did}/fill", json={"plaintext": True})
    assert r.status_code == 200, r.text
    return r.json()["plaintext"]


def device(st, type_):
    return Device.from_fill(fill_doc(st, type_))


def ended_metric(st):
    m = re.search(r'^qkms_sessions_ended_total\{reason="device_ended"\} (\d+)$',
                  st.admin("GET", "/metrics").text, re.M)
    assert m, "no device_ended counter in /metrics"
    return int(m.group(1))


def now():
    return int(time.time())


def live(st, sid):
    return st.admin("GET", f"/v1/admin/sessions/{sid}").json()


def end_all(st, dev, **kw):
    r = post(st, dev.end_all_request(**kw))
    assert r.status_code == 200, r.text
    return Device.open_end_all_response(r.json())


def test_end_all_ends_every_session_of_the_device_and_no_other(st):
    veh, veh2 = device(st, "vehicle"), device(st, "vehicle")
    enc1, enc2 = device(st, "encryptor"), device(st, "encryptor")
    s_init, s_resp, s_pending, s_other = uid(), uid(), uid(), uid()
    k = get_key(st, veh, s_init, enc1)            # veh the initiator, active
    get_key(st, enc1, s_init, veh)
    get_key(st, enc2, s_resp, veh)                 # veh the responder
    get_key(st, veh, s_resp, enc2)
    get_key(st, veh, s_pending, enc2)              # pending: only veh holds it
    other = get_key(st, veh2, s_other, enc1)       # not veh's
    before = ended_metric(st)

    assert end_all(st, veh) == 3

    for sid in (s_init, s_resp, s_pending):
        s = live(st, sid)
        assert s["state"] == "ended" and s["reason"] == "device_ended", s
    assert live(st, s_other)["state"] == "pending"
    assert get_key(st, veh2, s_other, enc1).key == other.key
    # The peers learn it on their next request; the device too.
    for dev, sid, peer in ((enc1, s_init, veh), (enc2, s_resp, veh), (enc2, s_pending, veh),
                           (veh, s_init, enc1)):
        _, r = helpers.ask_key(st, dev, sid, peer)
        assert r.status_code == 409 and code(r) == "session_ended", r.text
    # Nothing of the keys is left: no row, tombstones with the key IDs.
    n = st.psql("SELECT count(*) FROM sessions WHERE initiator = (SELECT id FROM devices"
                f" WHERE device_id = '{veh.device_id}') OR responder = (SELECT id FROM devices"
                f" WHERE device_id = '{veh.device_id}')").strip()
    assert n == "0"
    assert st.psql("SELECT count(*) FROM session_tombstones WHERE reason = 'device_ended'"
                   f" AND key_id = '{k.key_id}'").strip() == "1"
    # Audited: one row per session, one for the request.
    assert st.psql("SELECT count(*) FROM audit_log WHERE event = 'session.destroyed'"
                   f" AND actor = '{veh.device_id}' AND detail->>'reason' = 'device_ended'"
                   ).strip() == "3"
    assert st.psql("SELECT detail->>'sessions_ended' FROM audit_log WHERE event ="
                   f" 'device.sessions_ended' AND device_id = '{veh.device_id}'").strip() == "3"
    assert ended_metric(st) == before + 3
    # A new session ID is a new session, as ever; and again end-all ends it.
    get_key(st, veh, uid(), enc1)
    assert end_all(st, veh) == 1
    assert end_all(st, veh) == 0


def test_end_all_refusals_end_nothing(st):
    veh, enc = device(st, "vehicle"), device(st, "encryptor")
    sid = uid()
    get_key(st, veh, sid, enc)
    # "all" with a session ID, "all" false, "all" not a boolean: 422, and
    # nothing recorded: the same request is refused the same way again.
    for inner in ({"all": True, "session_id": sid}, {"all": False}, {"all": 1},
                  {"all": "true"}):
        req = veh._request("end", dict(inner, ts=now()), 0)
        for _ in range(2):
            r = post(st, req)
            assert r.status_code == 422 and code(r) == "invalid_request", (inner, r.text)
    # "all" in a key request is an unknown field.
    req = veh._request("key", {"session_id": uid(), "peer_id": enc.device_id,
                               "ts": now(), "all": True}, 0)
    r = post(st, req)
    assert r.status_code == 422 and code(r) == "invalid_request"
    assert live(st, sid)["state"] == "pending"
    # A replay is refused (401) and ends nothing more; a stale ts too.
    req = veh.end_all_request()
    assert post(st, req).status_code == 200
    get_key(st, veh, sid2 := uid(), enc)
    r = post(st, req)
    assert r.status_code == 401 and code(r) == "unauthenticated"
    r = post(st, veh.end_all_request(ts=now() - 600))
    assert r.status_code == 401 and code(r) == "unauthenticated"
    assert live(st, sid2)["state"] == "pending"
    # Another device's key cannot end them: the AEAD does not open.
    forged = Device(veh.device_id, {0: os.urandom(16)})
    r = post(st, forged.end_all_request())
    assert r.status_code == 401
    assert live(st, sid2)["state"] == "pending"


def test_a_suspended_device_may_still_end_all(st):
    veh, enc = device(st, "vehicle"), device(st, "encryptor")
    sid = uid()
    get_key(st, veh, sid, enc)
    r = st.admin("POST", f"/v1/admin/devices/{veh.device_id}/suspend", json={})
    assert r.status_code == 200, r.text
    assert end_all(st, veh) == 1
    assert live(st, sid)["reason"] == "device_ended"


def test_end_all_v2_python_and_qkms_device(st, tmp_path):
    plat = Platform.from_certificates(
        requests.get(st.url + "/v1/platform/certificates", timeout=10).json())
    doc = fill_doc(st, "vehicle")
    veh1, veh2 = Device.from_fill(doc), Device2.from_fill(doc, 3)
    enc = device(st, "encryptor")
    sids = [uid(), uid()]
    for sid in sids:
        get_key(st, veh1, sid, enc)
    # v2, mode 3: a signed answer naming no session.
    req = veh2.end_request(plat, ALL)
    assert json.loads(req.inner)["all"] is True and "session_id" not in json.loads(req.inner)
    r = post(st, req)
    assert r.status_code == 200, r.text
    assert veh2.open_end_response(req, r.content) == 2
    assert all(live(st, s)["reason"] == "device_ended" for s in sids)
    # qkms-device, v1 and v2.
    fill = tmp_path / "fill.json"
    fill.write_text(json.dumps(doc))
    srv = tmp_path / "platform.pem"
    p = st.kmsctl("platform", "show", "--pem")
    assert p.returncode == 0, p.stderr
    srv.write_text(p.stdout)
    for extra, n in (([], 1), (["--v2", "--server-cert", str(srv)], 2)):
        for _ in range(n):
            get_key(st, enc, uid(), veh1)
        p = subprocess.run([QKMSDEV, "end", "--all", "--url", st.url, "--fill", str(fill),
                            "--json", *extra], capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stderr
        out = json.loads(p.stdout)
        assert out["all"] is True and out["ended"] is True and out["sessions_ended"] == n
        assert out["streams_ended"] == 0
        assert out["device_id"] == veh1.device_id and ("protocol" in out) == bool(extra)
        p = subprocess.run([QKMSDEV, "end", "--all", "--url", st.url, "--fill", str(fill),
                            *extra], capture_output=True, text=True, timeout=60)
        assert p.returncode == 0 and p.stdout == ("all: true\nended: true\nsessions_ended: 0\n"
                                                  "streams_ended: 0\n")
    # --all and --session together, or neither, or --all for key: usage (2).
    for args in (["end", "--all", "--session", "S"], ["end"], ["key", "--all", "--session", "S",
                                                               "--peer", "P"]):
        p = subprocess.run([QKMSDEV, *args, "--url", st.url, "--fill", str(fill)],
                           capture_output=True, text=True, timeout=60)
        assert p.returncode == 2, (args, p.stderr)
