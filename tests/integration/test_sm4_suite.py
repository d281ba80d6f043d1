"""The SM4 suite (issue 20, seed 000: SM2, SM3, SM4 beside AES and SHA-256;
docs/protocol.md "Suites") end to end against real kmsd, PostgreSQL and
SoftHSM: a device type of the sm4 suite, its devices' SM4-128 keys (wrapped
under the AES master key in the token, SM4-CMAC check values), protocol v1
requests and answers in SM4-CTR + HMAC-SM3 from the Python implementation
and from the C library (qkms-device), paired with AES devices."""
import json
import os
import subprocess
import time
import uuid

import pytest
import requests

import helpers
from conftest import _finish
from helpers import error_code as code, get_key, post, uid, veh_enc_stack
from qkms_proto_py import Device, open_, seal

QKMSDEV = os.environ.get("QKMS_DEVICE", os.path.join(os.path.dirname(__file__), "..", "..",
                                                      "build/asan/bin/qkms-device"))


@pytest.fixture(scope="module")
def st():
    s = veh_enc_stack("qkms-sm4", {"QKMS_PROTOCOL_CLOCK_SKEW": "60"})
    r = s.admin("POST", "/v1/admin/device-types", json={"name": "meter-sm4", "suite": "sm4"})
    assert r.status_code == 201 and r.json()["suite"] == "sm4", r.text
    r = s.admin("POST", "/v1/admin/policies", json={
        "name": "sm4-enc", "type_a": "meter-sm4", "type_b": "encryptor", "max_epochs": 3})
    assert r.status_code == 201, r.text
    yield s
    _finish(s)


def sm4_fill(st, keys=2):
    did = uid("SM4")
    r = st.admin("POST", "/v1/admin/devices", json={"device_id": did, "type": "meter-sm4",
                                                    "group": st.group, "keys": keys})
    assert r.status_code == 201, r.text
    r = st.admin("POST", f"/v1/admin/devices/{did}/fill", json={"plaintext": True})
    assert r.status_code == 200, r.text
    return r.json()["plaintext"]


def test_an_sm4_type_and_its_keys(st):
    types = st.admin("GET", "/v1/admin/device-types").json()
    assert types["suites"]["meter-sm4"] == "sm4" and types["suites"]["vehicle"] == "aes"
    doc = sm4_fill(st)
    assert {k["algorithm"] for k in doc["keys"]} == {"SM4-128"}
    assert all(len(bytes.fromhex(k["key"])) == 16 for k in doc["keys"])
    # The check value is SM4-CMAC, checked by the C reader (kmsctl) too.
    from cryptography.hazmat.primitives.cmac import CMAC
    from cryptography.hazmat.primitives.ciphers import algorithms
    for k in doc["keys"]:
        c = CMAC(algorithms.SM4(bytes.fromhex(k["key"])))
        c.update(bytes(16))
        assert c.finalize()[:5].hex() == k["kcv"]
    listed = st.admin("GET", f"/v1/admin/devices/{doc['device_id']}/keys").json()
    assert {k["algorithm"] for k in listed["keys"]} == {"SM4-128"}
    # 256-bit keys do not exist in SM4: refused, nothing registered.
    r = st.admin("POST", "/v1/admin/devices", json={"device_id": uid("SM4"), "type": "meter-sm4",
                                                    "group": st.group, "key_bits": 256})
    assert r.status_code == 422 and code(r) == "invalid_key_bits", r.text
    # A rotation keeps the suite.
    r = st.admin("POST", f"/v1/admin/devices/{doc['device_id']}/rotate", json={})
    assert r.status_code == 200, r.text
    keys = st.admin("GET", f"/v1/admin/devices/{doc['device_id']}/keys").json()["keys"]
    assert {k["algorithm"] for k in keys} == {"SM4-128"} and len(keys) == 3
    r = st.admin("POST", f"/v1/admin/devices/{doc['device_id']}/rotate", json={"key_bits": 256})
    assert r.status_code == 422 and code(r) == "invalid_key_bits"
    for body in ({"name": "bad-suite", "suite": "des"}, {"name": "bad-suite", "suite": 1}):
        r = st.admin("POST", "/v1/admin/device-types", json=body)
        assert r.status_code == 422 and code(r) == "invalid_type"


def test_sm4_and_aes_devices_share_a_session_key(st):
    meter = Device.from_fill(sm4_fill(st))
    assert meter.suites == {0: "sm4", 1: "sm4"}
    enc = helpers.make_device(st, "encryptor", st.group)
    sid = uid()
    km = get_key(st, meter, sid, enc)
    ke = get_key(st, enc, sid, meter)
    assert km.key == ke.key and km.key_id == ke.key_id and len(km.key) == 16
    # The request really is SM4: the same inner request sealed with AES-GCM
    # under the same key is refused, and the answer does not open as AES-GCM.
    req = meter.key_request(sid, enc.device_id)
    aes = Device(meter.device_id, meter.keys)  # the same keys, taken for AES
    r = post(st, aes.key_request(sid, enc.device_id))
    assert r.status_code == 401 and code(r) == "unauthenticated"
    r = post(st, req)
    assert r.status_code == 200
    with pytest.raises(Exception):
        aes.open_key_response(req, r.json())
    assert meter.open_key_response(req, r.json()).key == km.key
    # A flipped bit anywhere in the request's ct: 401.
    raw = json.loads(meter.key_request(sid, enc.device_id).raw)
    ct = bytearray(__import__("base64").urlsafe_b64decode(raw["ct"] + "=="))
    ct[-1] ^= 1
    raw["ct"] = __import__("base64").urlsafe_b64encode(bytes(ct)).rstrip(b"=").decode()
    r = requests.post(st.url + "/v1/sessions/key", json=raw, timeout=10)
    assert r.status_code == 401
    # Epochs, the end: the same suite.
    k1 = get_key(st, meter, sid, enc, epoch=1)
    assert get_key(st, enc, sid, meter, epoch=1).key == k1.key
    r = post(st, meter.end_request(sid))
    assert r.status_code == 200, r.text


def test_qkms_device_speaks_sm4(st, tmp_path):
    doc = sm4_fill(st)
    fill = tmp_path / "fill.json"
    fill.write_text(json.dumps(doc))
    enc = helpers.make_device(st, "encryptor", st.group)
    sid = uid()
    p = subprocess.run([QKMSDEV, "key", "--url", st.url, "--fill", str(fill), "--session", sid,
                        "--peer", enc.device_id, "--json"], capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)

    class Peer:
        device_id = doc["device_id"]
    k = get_key(st, enc, sid, Peer())
    assert k.key.hex() == out["key"] and k.key_id == out["key_id"]
    # Protocol v2 is AES whatever the device: the C library refuses an SM4
    # key for mode 3, and so does kmsd.
    srv = tmp_path / "platform.pem"
    p = st.kmsctl("platform", "show", "--pem")
    assert p.returncode == 0, p.stderr
    srv.write_text(p.stdout)
    p = subprocess.run([QKMSDEV, "key", "--v2", "--server-cert", str(srv), "--fill", str(fill),
                        "--url", st.url, "--session", uid(), "--peer", enc.device_id],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode != 0 and "SM4" in p.stderr, p.stderr
    from qkms_proto2_py import Device2, Platform
    plat = Platform.from_certificates(
        requests.get(st.url + "/v1/platform/certificates", timeout=10).json())
    v2 = Device2.from_fill(doc, 3)
    r = post(st, v2.key_request(plat, uid(), enc.device_id, key_source="c"))
    assert r.status_code == 401 and code(r) == "unauthenticated", r.text
