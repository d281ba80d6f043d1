"""qkms-device (the C device client, device/qkms-device.c) end to end
against the real kmsd, PostgreSQL and SoftHSM.

The vehicle of each session runs qkms-device with a fill document obtained
the way a provisioning station gets one: `kmsctl device fill
--recipient-pub` seals the keys to a station X25519 key, `kmsctl fill open
--json` opens the package. The encryptor is the independent Python client
(qkms_proto_py.py) with a plaintext fill from the admin API. The two
implementations must end up with the same session key.

The binary comes from $QKMS_DEVICE (set by `make integration`).
"""
import base64
import datetime
import json
import os
import re
import subprocess
import uuid

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import x25519

from conftest import ROOT
from helpers import get_key, post, uid
from qkms_proto_py import Device

QKMS_DEVICE = os.environ.get("QKMS_DEVICE", os.path.join(ROOT, "build/asan/bin/qkms-device"))

# qkms-device exit statuses (device/qkms-device.c)
OK, USAGE, CONNECT, AUTH, SERVER, REFUSED = 0, 2, 3, 4, 5, 6

JSON_FIELDS = {"session_id", "key_id", "key", "key_bits", "expires_at", "delivery", "device_id",
               "key_index"}

# Every session and device key this module saw, for the log check at the end.
SECRETS = set()


# ---- setup --------------------------------------------------------------------

@pytest.fixture(scope="module")
def env(stack, tmp_path_factory):
    """The module's group and policies, and a directory for station keys and
    fill files."""
    group = "qd-" + uuid.uuid4().hex[:6]
    for body in ({"name": "qd-veh-enc-" + group, "type_a": "vehicle", "type_b": "encryptor"},
                 {"name": "qd-meter-gw-" + group, "type_a": "meter", "type_b": "gateway",
                  "key_bits": 256}):
        r = stack.admin("POST", "/v1/admin/policies", json=body)
        assert r.status_code == 201, r.text
    d = tmp_path_factory.mktemp("qkms-device")
    priv = x25519.X25519PrivateKey.generate()
    pub_path, priv_path = d / "station.pub.pem", d / "station.key.pem"
    pub_path.write_bytes(priv.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    priv_path.write_bytes(priv.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    os.chmod(priv_path, 0o600)
    return {"stack": stack, "group": group, "dir": d, "pub": str(pub_path),
            "priv": str(priv_path)}


def register(env, type_, key_bits=128, keys=2):
    did = uid(type_[:3].upper())
    r = env["stack"].admin("POST", "/v1/admin/devices", json={
        "device_id": did, "type": type_, "group": env["group"], "keys": keys,
        "key_bits": key_bits, "validity_days": 30})
    assert r.status_code == 201, r.text
    return did


def write_doc(env, doc, name):
    path = env["dir"] / f"{name}.json"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(doc, f)
    for k in doc["keys"]:
        SECRETS.add(k["key"])
    return str(path)


def sealed_fill(env, did):
    """The station's path: a sealed package, opened with kmsctl fill open.
    Returns (fill file for qkms-device, the document)."""
    st = env["stack"]
    pkg = str(env["dir"] / f"{did}.qkfp")
    p = st.kmsctl("device", "fill", did, "--recipient-pub", env["pub"], "--out", pkg)
    assert p.returncode == 0, p.stderr
    p = st.kmsctl("fill", "open", "--key", env["priv"], pkg, "--json")
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert doc["device_id"] == did
    return write_doc(env, doc, did), doc


def plaintext_fill(env, did):
    r = env["stack"].admin("POST", f"/v1/admin/devices/{did}/fill", json={"plaintext": True})
    assert r.status_code == 200, r.text
    doc = r.json()["plaintext"]
    for k in doc["keys"]:
        SECRETS.add(k["key"])
    return doc


class CDevice:
    """A device that runs qkms-device with its fill file."""

    def __init__(self, env, did, fill):
        self.env, self.device_id, self.fill = env, did, fill

    def run(self, cmd, sid, *args, peer=None, fill=None):
        argv = [QKMS_DEVICE, cmd, "--url", self.env["stack"].url, "--fill", fill or self.fill,
                "--session", sid]
        if peer is not None:
            argv += ["--peer", peer.device_id]
        p = subprocess.run(argv + list(args), capture_output=True, text=True, timeout=60)
        assert "Sanitizer" not in p.stderr and "runtime error" not in p.stderr, p.stderr
        return p

    def key(self, sid, peer, *args, **kw):
        """key --json that must succeed: the parsed output."""
        p = self.run("key", sid, "--json", *args, peer=peer, **kw)
        assert p.returncode == OK, f"exit {p.returncode}: {p.stderr}"
        assert p.stderr == ""
        out = json.loads(p.stdout)
        SECRETS.add(out["key"])
        return out


def vehicle(env):
    did = register(env, "vehicle")
    fill, _ = sealed_fill(env, did)
    return CDevice(env, did, fill)


def encryptor(env):
    return Device.from_fill(plaintext_fill(env, register(env, "encryptor")))


def py_key(env, dev, sid, peer, **kw):
    k = get_key(env["stack"], dev, sid, peer, **kw)
    SECRETS.add(k.key.hex())
    return k


def py_status(env, dev, req):
    r = post(env["stack"], req)
    return r.status_code, r.json()


def error_json(p, code, status):
    """A refusal with --json: the server's error object on stdout, the code
    and HTTP status on stderr, no key anywhere."""
    body = json.loads(p.stdout)
    assert set(body) == {"error"} and body["error"]["code"] == code, body
    assert code in p.stderr and f"HTTP {status}" in p.stderr, p.stderr
    assert p.stderr.startswith("qkms-device: ")
    return body


@pytest.fixture
def pair(env):
    return vehicle(env), encryptor(env)


# ---- one key for both implementations --------------------------------------------

@pytest.mark.parametrize("first", ["c", "python"])
def test_c_and_python_share_the_key(env, pair, first):
    veh, enc = pair
    sid = uid()
    if first == "c":
        c = veh.key(sid, enc)
        py = py_key(env, enc, sid, veh)
    else:
        py = py_key(env, enc, sid, veh)
        c = veh.key(sid, enc)
    assert c["key"] == py.key.hex() and len(py.key) == 16
    assert c["key_id"] == py.key_id and c["expires_at"] == py.expires_at
    assert c["delivery"] == py.delivery == "session"
    s = env["stack"].admin("GET", f"/v1/admin/sessions/{sid}").json()
    initiator = veh.device_id if first == "c" else enc.device_id
    assert s["initiator"] == initiator and s["key_id"] == c["key_id"] and s["state"] == "active"


def test_json_output(env, pair):
    veh, enc = pair
    sid = uid()
    p = veh.run("key", sid, "--json", peer=enc)
    assert p.returncode == OK and p.stderr == "", p.stderr
    assert p.stdout.endswith("}\n") and p.stdout.count("\n") == 1
    out = json.loads(p.stdout)
    assert set(out) == JSON_FIELDS
    SECRETS.add(out["key"])
    assert out["session_id"] == sid and out["device_id"] == veh.device_id
    assert out["key_index"] == 1  # the default: the highest index valid now
    assert out["key_bits"] == 128 and re.fullmatch(r"[0-9a-f]{32}", out["key"])
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
                        out["key_id"]), out["key_id"]
    assert isinstance(out["expires_at"], int) and out["delivery"] == "session"
    # --index chooses the device key; the session key is the same.
    again = veh.key(sid, enc, "--index", "0")
    assert again["key_index"] == 0
    assert {k: again[k] for k in JSON_FIELDS - {"key_index"}} == \
           {k: out[k] for k in JSON_FIELDS - {"key_index"}}
    assert py_key(env, enc, sid, veh).key.hex() == out["key"]


def test_repeat_gets_the_same_key(env, pair):
    veh, enc = pair
    sid = uid()
    a = veh.key(sid, enc)
    b = veh.key(sid, enc)
    assert (a["key"], a["key_id"]) == (b["key"], b["key_id"])
    # Also after the peer got it, and after the peer repeated.
    assert py_key(env, enc, sid, veh).key.hex() == a["key"]
    assert py_key(env, enc, sid, veh).key.hex() == a["key"]
    assert veh.key(sid, enc)["key"] == a["key"]
    # Another session: another key and key ID.
    c = veh.key(uid(), enc)
    assert c["key"] != a["key"] and c["key_id"] != a["key_id"]


def test_session_id_with_quote(env, pair):
    veh, enc = pair
    sid = uid('Q"')
    out = veh.key(sid, enc)
    assert out["session_id"] == sid
    assert py_key(env, enc, sid, veh).key.hex() == out["key"]


def test_256_bit_device_and_session_keys(env):
    """A meter with AES-256 device keys (plaintext fill file) runs
    qkms-device; the policy gives a 256-bit session key."""
    did = register(env, "meter", key_bits=256)
    doc = plaintext_fill(env, did)
    assert {k["algorithm"] for k in doc["keys"]} == {"AES-256"}
    meter = CDevice(env, did, write_doc(env, doc, did))
    gw = Device.from_fill(plaintext_fill(env, register(env, "gateway")))
    sid = uid()
    out = meter.key(sid, gw)
    assert out["key_bits"] == 256 and re.fullmatch(r"[0-9a-f]{64}", out["key"])
    k = py_key(env, gw, sid, meter)
    assert k.key.hex() == out["key"] and k.key_id == out["key_id"]


# ---- ending ---------------------------------------------------------------------

def test_end_then_both_refused(env, pair):
    veh, enc = pair
    sid = uid()
    c = veh.key(sid, enc)
    assert py_key(env, enc, sid, veh).key.hex() == c["key"]
    p = veh.run("end", sid, "--json")
    assert p.returncode == OK and p.stderr == "", p.stderr
    assert json.loads(p.stdout) == {"session_id": sid, "ended": True,
                                    "device_id": veh.device_id, "key_index": 1}
    # The C client: 409 is exit 6, with the server's error.
    p = veh.run("key", sid, "--json", peer=enc)
    assert p.returncode == REFUSED, p.stderr
    error_json(p, "session_ended", 409)
    assert c["key"] not in p.stdout + p.stderr
    # The Python client: 409 too.
    status, body = py_status(env, enc, enc.key_request(sid, veh.device_id))
    assert status == 409 and body["error"]["code"] == "session_ended"
    # Ending again: 409; ending a session that never existed: 404. Both exit 6.
    p = veh.run("end", sid, "--json")
    assert p.returncode == REFUSED
    error_json(p, "session_ended", 409)
    p = veh.run("end", uid(), "--json")
    assert p.returncode == REFUSED
    error_json(p, "unknown_session", 404)
    t = env["stack"].admin("GET", f"/v1/admin/sessions/{sid}").json()
    assert t["state"] == "ended" and t["reason"] == "ended_by_party"


def test_end_human_output(env, pair):
    veh, enc = pair
    sid = uid()
    py_key(env, enc, sid, veh)
    p = veh.run("end", sid)
    assert p.returncode == OK and p.stderr == "", p.stderr
    assert p.stdout == f"session_id: {sid}\nended: true\n"
    p = veh.run("key", sid, peer=enc)
    assert p.returncode == REFUSED and p.stdout == ""
    assert "session_ended" in p.stderr and "HTTP 409" in p.stderr


# ---- refusals -------------------------------------------------------------------

def test_third_device_refused(env, pair):
    veh, enc = pair
    third = vehicle(env)
    sid = uid()
    c = veh.key(sid, enc)
    for peer in (enc, veh):
        p = third.run("key", sid, "--json", peer=peer)
        assert p.returncode == AUTH, p.stderr
        error_json(p, "not_a_party", 403)
        assert c["key"] not in p.stdout + p.stderr
    # Without --json: the same exit, nothing on stdout.
    p = third.run("key", sid, peer=enc)
    assert p.returncode == AUTH and p.stdout == ""
    assert "not_a_party" in p.stderr and "HTTP 403" in p.stderr
    # The parties are unaffected.
    assert py_key(env, enc, sid, veh).key.hex() == c["key"]


def test_wrong_fill_file(env, pair):
    """Another device's keys under this device's ID: the server cannot
    authenticate the request (401, exit 4), and no session is created."""
    veh, enc = pair
    _, other = sealed_fill(env, register(env, "vehicle"))
    forged = dict(other, device_id=veh.device_id)
    path = write_doc(env, forged, veh.device_id + "-forged")
    sid = uid()
    p = veh.run("key", sid, "--json", peer=enc, fill=path)
    assert p.returncode == AUTH, p.stderr
    body = error_json(p, "unauthenticated", 401)
    assert body["error"]["message"] == "request could not be authenticated"
    assert env["stack"].admin("GET", f"/v1/admin/sessions/{sid}").status_code == 404
    p = veh.run("end", sid, "--json", fill=path)
    assert p.returncode == AUTH
    error_json(p, "unauthenticated", 401)
    # The right file works for the same session ID.
    assert veh.key(sid, enc)["session_id"] == sid


# ---- modes and formats ------------------------------------------------------------

def test_delivered_mode(env, pair):
    veh, enc = pair
    sid = uid()
    c = veh.key(sid, enc, "--delivered")
    assert c["delivery"] == "delivered"
    k = py_key(env, enc, sid, veh)
    assert k.key.hex() == c["key"] and k.key_id == c["key_id"] and k.delivery == "delivered"
    # Both parties hold it: the key is gone, the session ended.
    p = veh.run("key", sid, "--json", "--delivered", peer=enc)
    assert p.returncode == REFUSED
    error_json(p, "session_ended", 409)
    t = env["stack"].admin("GET", f"/v1/admin/sessions/{sid}").json()
    assert t["state"] == "ended" and t["reason"] == "delivered"


def test_human_output(env, pair):
    veh, enc = pair
    sid = uid()
    p = veh.run("key", sid, peer=enc)
    assert p.returncode == OK and p.stderr == "", p.stderr
    m = re.fullmatch(r"key_id: (\S+)\nkey: ([0-9a-f]{32})\n"
                     r"expires_at: (\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ)\ndelivery: session\n", p.stdout)
    assert m, p.stdout
    SECRETS.add(m.group(2))
    k = py_key(env, enc, sid, veh)
    assert m.group(1) == k.key_id and m.group(2) == k.key.hex()
    when = datetime.datetime.fromtimestamp(k.expires_at, datetime.timezone.utc)
    assert m.group(3) == when.strftime("%Y-%m-%dT%H:%M:%SZ")


def test_session_keys_not_in_kmsd_log(env, pair):
    """No session key or device key this module saw, in hex or base64, is
    in kmsd's log. Runs last in the module, so it covers every test above;
    it makes a session of its own so that it also stands alone."""
    veh, enc = pair
    sid = uid()
    veh.key(sid, enc)
    py_key(env, enc, sid, veh)
    assert veh.run("end", sid).returncode == OK
    st = env["stack"]
    logs = st.logs()
    # The log is the one that saw this module's requests.
    served = [r for r in st.log_records()
              if r.get("path") == "/v1/sessions/key" and r.get("status") == 200]
    assert len(served) >= 2 and len(SECRETS) >= 3, (len(served), len(SECRETS))
    for h in SECRETS:
        raw = bytes.fromhex(h)
        for form in (h, h.upper(), base64.b64encode(raw).decode(),
                     base64.urlsafe_b64encode(raw).decode().rstrip("=")):
            if form in logs:
                # Not an assert: pytest would print the key.
                pytest.fail("a key appears in kmsd's log")
