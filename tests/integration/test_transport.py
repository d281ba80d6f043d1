"""Plaintext key export only over a confidential connection (TLS or a
loopback client): a real non-loopback client is made in a private network
namespace (unshare -n), where kmsd listens on every address of that
namespace and the client connects from 10.213.0.1, an address of the
namespace's own interface. Nothing outside the namespace can reach it."""
import json
import os
import shutil
import subprocess
import sys

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import x25519

from conftest import KMSD, wait_for

NS_ADDR = "10.213.0.1"

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("nsenter"),
    reason="needs root, unshare and nsenter for a private network namespace")

# Runs inside the namespace: one HTTP request from a JSON spec on stdin.
CLIENT = r"""
import json, sys, requests
q = json.load(sys.stdin)
try:
    r = requests.request(q["method"], q["url"], json=q.get("json"), timeout=30,
                         headers={"Authorization": "Bearer " + q["token"]} if q.get("token") else {})
    print(json.dumps({"status": r.status_code, "body": r.text}))
except requests.ConnectionError as e:
    print(json.dumps({"status": 0, "body": str(e)}))
"""


def call(pid, method, host, port, path, token=None, body=None):
    spec = {"method": method, "url": f"http://{host}:{port}{path}", "token": token, "json": body}
    p = subprocess.run(["nsenter", f"--net=/proc/{pid}/ns/net", sys.executable, "-c", CLIENT],
                       input=json.dumps(spec), capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    try:
        out["json"] = json.loads(out["body"])
    except ValueError:
        out["json"] = None
    return out


@pytest.fixture
def ns_stack(fresh_stack):
    st = fresh_stack
    env = dict(st.env, QKMS_LISTEN_ADDR="0.0.0.0")
    st.log = open(st.log_path, "ab")
    setup = (f"ip link set lo up && ip addr add {NS_ADDR}/32 dev lo && "
             'exec "$0" -c "$1"')
    st.proc = subprocess.Popen(["unshare", "-n", "sh", "-c", setup, KMSD, st.conf], env=env,
                               stdout=st.log, stderr=st.log)

    def ready():
        assert st.proc.poll() is None, st.logs()[-3000:]
        return call(st.proc.pid, "GET", "127.0.0.1", st.port, "/readyz")["status"] == 200

    assert wait_for(ready, 60, 0.3), st.logs()[-3000:]
    return st


def test_plaintext_export_refused_off_loopback(ns_stack):
    st, pid, tok = ns_stack, ns_stack.proc.pid, ns_stack.admin_token
    r = call(pid, "POST", "127.0.0.1", st.port, "/v1/admin/devices", tok,
             {"device_id": "NS-VIN-1", "type": "vehicle", "keys": 1})
    assert r["status"] == 201, r
    # From a non-loopback address of the namespace: refused, nothing exported.
    r = call(pid, "POST", NS_ADDR, st.port, "/v1/admin/devices/NS-VIN-1/fill", tok,
             {"plaintext": True})
    assert r["status"] == 403 and r["json"]["error"]["code"] == "insecure_transport", r
    assert "key" not in r["body"]
    assert st.psql("SELECT count(*) FROM device_keys k JOIN devices d ON d.id = k.device_pk "
                   "WHERE d.device_id = 'NS-VIN-1' AND k.exported_at IS NOT NULL").strip() == "0"
    recs = [x for x in st.log_records() if x.get("route") == "admin_device_fill"]
    assert recs and recs[-1]["client"] == NS_ADDR and recs[-1]["error"] == "insecure_transport"
    # Sealed to a station key, the same client may export.
    pub = x25519.X25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    r = call(pid, "POST", NS_ADDR, st.port, "/v1/admin/devices/NS-VIN-1/fill", tok,
             {"recipient_pub": pub})
    assert r["status"] == 200 and r["json"]["format"] == "qkms-fill/1", r
    # A loopback client may have the plaintext (force: exported once already).
    r = call(pid, "POST", "127.0.0.1", st.port, "/v1/admin/devices/NS-VIN-1/fill", tok,
             {"plaintext": True, "force": True})
    assert r["status"] == 200 and r["json"]["plaintext"]["device_id"] == "NS-VIN-1", r
