"""The quantum RNG feed end to end: kmsd reading the QRNG simulator over
HTTP while it issues keys; the simulator switched to stuck, biased and down
output; quarantine, the require/fallback policies, recovery, and proof that
no key came from data that failed a test."""
import hashlib
import os
import re
import signal
import subprocess
import threading
import time
import uuid

import pytest
import requests

from conftest import ROOT, Stack, _finish, running_stack, wait_for
from qkms_proto_py import Device

SIM = os.path.join(ROOT, "tools", "qrng-sim.py")


class Qrng:
    def __init__(self):
        self.proc = subprocess.Popen(["/usr/bin/python3", SIM, "--port", "0", "--admin-port", "0"],
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        # Both lines arrive at once; a timer guards against a hung start.
        guard = threading.Timer(10, self.proc.kill)
        guard.start()
        lines = [self.proc.stdout.readline().decode(), self.proc.stdout.readline().decode()]
        guard.cancel()
        assert lines[1].startswith("admin on"), lines
        self.port = int(lines[0].rsplit(":", 1)[1])
        self.admin = "http://127.0.0.1:" + lines[1].rsplit(":", 1)[1].strip()

    def mode(self, m, **kw):
        r = requests.post(self.admin + "/mode", json=dict(mode=m, **kw), timeout=5)
        assert r.status_code == 200, r.text

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=10)


@pytest.fixture
def qrng():
    q = Qrng()
    yield q
    q.stop()


def entropy_env(q, policy, mode="drbg", **extra):
    env = {
        "QKMS_ENTROPY_SOURCES": "http,pkcs11,os",
        "QKMS_ENTROPY_HTTP_URL": f"http://127.0.0.1:{q.port}/random/json?bytes={{bytes}}&encoding=base64",
        "QKMS_ENTROPY_HTTP_FORMAT": "base64",
        "QKMS_ENTROPY_HTTP_JSON_PATH": "data",
        "QKMS_ENTROPY_HTTP_TIMEOUT_MS": "1000",
        "QKMS_ENTROPY_HTTP_REQUEST_BYTES": "2048",
        "QKMS_ENTROPY_POOL_LOW": "1024",
        "QKMS_ENTROPY_POOL_HIGH": "4096",
        "QKMS_ENTROPY_PROBE_INTERVAL": "1",
        "QKMS_ENTROPY_RETRY_MAX": "1",
        "QKMS_ENTROPY_WAIT_MS": "100",
        "QKMS_ENTROPY_FAILURE_LIMIT": "100000",
        "QKMS_ENTROPY_POLICY": policy,
        "QKMS_ENTROPY_MODE": mode,
    }
    env.update(extra)
    return env


def status(st):
    return st.admin("GET", "/v1/admin/entropy").json()


def primary(st):
    return status(st)["sources"][0]


def register(st):
    did = "E-" + uuid.uuid4().hex[:10]
    return st.admin("POST", "/v1/admin/devices", json={"device_id": did, "type": "vehicle", "keys": 1})


def test_qrng_primary_and_fallback_policy(qrng, fresh_stack):
    st = fresh_stack
    st.start(extra_env=entropy_env(qrng, "fallback"))
    assert wait_for(lambda: primary(st)["state"] == "ok")
    s = status(st)
    assert s["sources"][0]["name"] == "http" and s["sources"][0]["role"] == "primary"
    assert s["health_tests"]["rct_cutoff"] == 6 and s["health_tests"]["apt_cutoff"] == 22
    r = register(st)
    assert r.status_code == 201 and r.json()["keys"][0]["provenance"] == "http+ctr-drbg"

    for bad, test in (("stuck", "health_failures_rct"), ("biased", "health_failures_apt")):
        qrng.mode(bad)
        assert wait_for(lambda: primary(st)["state"] == "quarantined"), primary(st)
        assert primary(st)[test] >= 1
        # Fallback policy: keys keep coming, from the fallback, and say so.
        r = register(st)
        assert r.status_code == 201 and r.json()["keys"][0]["provenance"] == "pkcs11 (fallback)"
        assert requests.get(st.url + "/readyz").status_code == 200
        qrng.mode("ok")
        assert wait_for(lambda: primary(st)["state"] == "ok"), primary(st)
        r = register(st)
        assert r.json()["keys"][0]["provenance"] == "http+ctr-drbg"

    qrng.mode("down")
    assert wait_for(lambda: primary(st)["state"] == "quarantined")
    assert primary(st)["errors"] >= 1 and primary(st)["last_error"]
    assert register(st).json()["keys"][0]["provenance"] == "pkcs11 (fallback)"
    qrng.mode("ok")
    assert wait_for(lambda: primary(st)["state"] == "ok")

    m = requests.get(st.url + "/metrics").text
    assert re.search(r'qkms_entropy_health_failures_total\{source="http",test="repetition_count"\} [1-9]', m)
    assert re.search(r'qkms_entropy_health_failures_total\{source="http",test="adaptive_proportion"\} [1-9]', m)
    assert re.search(r"^qkms_entropy_fallback_served_total [1-9]", m, re.M)
    assert 'qkms_entropy_source_state{source="http",role="primary",state="ok"} 1' in m
    logs = st.logs()
    assert '"to":"quarantined"' in logs and "entropy served by a fallback source" in logs


def test_require_policy_fails_closed(qrng, fresh_stack):
    st = fresh_stack
    st.start(extra_env=entropy_env(qrng, "require"))
    assert wait_for(lambda: primary(st)["state"] == "ok")
    assert st.admin("POST", "/v1/admin/policies", json={"name": "p", "type_a": "*", "type_b": "*"}).status_code == 201
    veh, enc = (Device.from_fill(st.admin("POST", f"/v1/admin/devices/{r.json()['device_id']}/fill",
                                          json={"plaintext": True}).json()["plaintext"])
                for r in (register(st), register(st)))
    for bad in ("stuck", "down", "slow"):
        kw = {"delay": 3} if bad == "slow" else {}
        qrng.mode(bad, **kw)
        assert wait_for(lambda: primary(st)["state"] == "quarantined"), (bad, primary(st))
        r = register(st)
        assert r.status_code == 503 and r.json()["error"]["code"] == "entropy_unavailable", bad
        assert r.headers.get("Retry-After")
        req = veh.key_request("S-" + uuid.uuid4().hex, enc.device_id)
        r = requests.post(st.url + req.path, data=req.raw, headers={"Content-Type": "application/json"})
        assert r.status_code == 503 and r.json()["error"]["code"] == "entropy_unavailable"
        ready = requests.get(st.url + "/readyz")
        assert ready.status_code == 503 and "entropy" in ready.json()["error"]["down"]
        qrng.mode("ok")
        assert wait_for(lambda: primary(st)["state"] == "ok"), primary(st)
        assert wait_for(lambda: requests.get(st.url + "/readyz").status_code == 200)
        assert register(st).status_code == 201
    # Session keys record where they came from.
    sid = "S-" + uuid.uuid4().hex
    req = veh.key_request(sid, enc.device_id)
    assert requests.post(st.url + req.path, data=req.raw,
                         headers={"Content-Type": "application/json"}).status_code == 200
    assert st.psql(f"SELECT provenance FROM sessions WHERE session_id = '{sid}'").strip() == "http+ctr-drbg"


def test_direct_mode_never_uses_failed_data(qrng, fresh_stack):
    """In direct mode a key is SHA-256 of raw QRNG bytes; with the simulator
    stuck at 0x5a, a key made from that data would be the hash of 0x5a*46.
    None is: the data failed the health tests and was discarded."""
    st = fresh_stack
    st.start(extra_env=entropy_env(qrng, "require", mode="direct"))
    assert wait_for(lambda: primary(st)["state"] == "ok")
    r = register(st)
    assert r.status_code == 201 and r.json()["keys"][0]["provenance"] == "http (direct)"
    qrng.mode("stuck")
    made = []
    deadline = time.time() + 10
    while time.time() < deadline and primary(st)["state"] != "quarantined":
        r = register(st)
        assert r.status_code in (201, 503)
        if r.status_code == 201:
            made.append(r.json()["device_id"])
    assert primary(st)["state"] == "quarantined"
    assert register(st).status_code == 503
    stuck_key = hashlib.sha256(b"\x5a" * 46).digest()[:16].hex()
    for did in made:
        doc = st.admin("POST", f"/v1/admin/devices/{did}/fill", json={"plaintext": True}).json()
        for k in doc["plaintext"]["keys"]:
            assert k["key"] != stuck_key
    qrng.mode("ok")
    assert wait_for(lambda: primary(st)["state"] == "ok")
    assert register(st).status_code == 201


def test_disabled_after_repeated_failures_and_enable(qrng, fresh_stack):
    st = fresh_stack
    st.start(extra_env=entropy_env(qrng, "fallback", QKMS_ENTROPY_FAILURE_LIMIT="3"))
    assert wait_for(lambda: primary(st)["state"] == "ok")
    qrng.mode("error500")
    assert wait_for(lambda: primary(st)["state"] == "disabled", timeout=30), primary(st)
    qrng.mode("ok")
    time.sleep(2.5)
    assert primary(st)["state"] == "disabled"  # stays off until an operator acts
    aud = st.admin("POST", "/v1/admin/tokens", json={"name": "aud", "role": "auditor"}).json()["token"]
    assert st.api("POST", "/v1/admin/entropy/sources/http/enable", token=aud).status_code == 403
    p = st.kmsctl("entropy", "enable", "http", token=st.admin_token)
    assert p.returncode == 0, p.stderr
    assert wait_for(lambda: primary(st)["state"] == "ok")
    p = st.kmsctl("entropy", "status", token=st.admin_token)
    assert p.returncode == 0 and re.search(r"^http\s+primary\s+ok", p.stdout, re.M), p.stdout
    p = st.kmsctl("--json", "entropy", "status", token=st.admin_token)
    assert p.returncode == 0 and '"name": "http"' in p.stdout or '"name":"http"' in p.stdout
    assert st.kmsctl("entropy", "enable", "nosuch", token=st.admin_token).returncode == 6


def test_default_local_sources(stack):
    s = stack.admin("GET", "/v1/admin/entropy").json()
    assert [x["name"] for x in s["sources"]] == ["pkcs11", "os"]
    assert s["policy"] == "fallback" and s["mode"] == "drbg"
    assert s["sources"][0]["state"] == "ok" and s["drbg"]["instantiated"] in (True, False)


@pytest.mark.parametrize("kind,extra,prov", [
    ("device", {"QKMS_ENTROPY_DEVICE_PATH": "/dev/urandom"}, "device+ctr-drbg"),
    ("exec", {"QKMS_ENTROPY_EXEC_COMMAND": "cat /dev/urandom"}, "exec+ctr-drbg"),
])
def test_device_and_exec_sources(fresh_stack, kind, extra, prov):
    st = fresh_stack
    env = {"QKMS_ENTROPY_SOURCES": f"{kind},os", "QKMS_ENTROPY_POLICY": "require"}
    env.update(extra)
    st.start(extra_env=env)
    assert wait_for(lambda: primary(st)["state"] == "ok")
    r = register(st)
    assert r.status_code == 201 and r.json()["keys"][0]["provenance"] == prov


def test_exec_source_with_bad_output_is_quarantined(fresh_stack):
    """`yes` writes "y\\n" forever: no long runs (the repetition test passes)
    but one value fills half of every window (the adaptive proportion test
    fails): never a usable source."""
    st = fresh_stack
    st.start(extra_env={"QKMS_ENTROPY_SOURCES": "exec,os", "QKMS_ENTROPY_POLICY": "require",
                        "QKMS_ENTROPY_EXEC_COMMAND": "yes", "QKMS_ENTROPY_RETRY_MAX": "1"},
             wait=False)
    # kmsd starts (operators can get in and see why) but is not ready.
    assert wait_for(lambda: _up(st)), st.logs()[-2000:]
    assert wait_for(lambda: primary(st)["health_failures_apt"] >= 1)
    assert primary(st)["state"] in ("quarantined", "disabled") and primary(st)["bytes"] == 0
    r = requests.get(st.url + "/readyz")
    assert r.status_code == 503 and "entropy" in r.json()["error"]["down"]


def _up(st):
    try:
        requests.get(st.url + "/healthz", timeout=1)
        return True
    except requests.ConnectionError:
        return False
