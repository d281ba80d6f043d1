"""End-to-end test of the compose stack (docker/compose.yaml), from outside
the containers, as an operator and as devices see it.

tests/compose/run.sh (`make compose-test`) builds the images, brings the
stack up under its own project name, runs this module, and tears the stack
down with its volumes. The module needs the running stack: it is skipped
without QKMS_COMPOSE_URL (so a plain `pytest tests/` does not fail here).

The clients are the host's: kmsctl and qkms-device from the release build
($QKMS_KMSCTL, $QKMS_DEVICE), and the independent Python device client
(tests/integration/qkms_proto_py.py). The tests run in file order; each
bounds its own waits.
"""
import json
import os
import re
import subprocess
import sys
import threading
import time
import uuid

import pytest
import requests

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
from qkms_proto_py import Device  # noqa: E402

URL = os.environ.get("QKMS_COMPOSE_URL")
KMSCTL = os.environ.get("QKMS_KMSCTL", os.path.join(ROOT, "build/release/bin/kmsctl"))
QKMS_DEVICE = os.environ.get("QKMS_DEVICE", os.path.join(ROOT, "build/release/bin/qkms-device"))
COMPOSE_SH = os.path.join(ROOT, "docker", "compose.sh")

pytestmark = pytest.mark.skipif(not URL, reason="needs the compose stack (make compose-test)")


def uid(p="S"):
    return f"{p}-{uuid.uuid4().hex[:12]}"


def compose(*args, timeout=180, check=True):
    p = subprocess.run(["bash", COMPOSE_SH, *args], capture_output=True, text=True,
                       timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"compose.sh {args} -> {p.returncode}:\n{p.stderr[-4000:]}")
    return p


def wait_ready(timeout=90):
    """Until /readyz answers 200; returns the statuses seen on the way."""
    seen = []
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            r = requests.get(URL + "/readyz", timeout=2)
            seen.append(r.status_code)
            if r.status_code == 200:
                return seen
        except requests.RequestException:
            seen.append(None)
        time.sleep(0.25)
    raise AssertionError(f"/readyz not 200 within {timeout}s (seen {seen[-10:]})")


class Ops:
    """kmsctl against the stack, with the admin token copied out of its volume."""

    def __init__(self, workdir):
        self.dir = workdir
        self.token_file = str(workdir / "admin.token")
        compose("admin-token", self.token_file)
        assert oct(os.stat(self.token_file).st_mode & 0o777) == "0o600"

    def kmsctl(self, *args, check=True):
        env = dict(os.environ, KMS_ADDR=URL, KMS_TOKEN_FILE=self.token_file)
        env.pop("KMS_TOKEN", None)
        p = subprocess.run([KMSCTL, *args], env=env, capture_output=True, text=True, timeout=60)
        if check and p.returncode != 0:
            raise AssertionError(f"kmsctl {args} -> {p.returncode}: {p.stderr}")
        return p

    def json(self, *args):
        return json.loads(self.kmsctl(*args, "--json").stdout)

    def write_secret(self, name, data):
        path = self.dir / name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(data)
        return str(path)


@pytest.fixture(scope="module")
def ops(tmp_path_factory):
    wait_ready()
    return Ops(tmp_path_factory.mktemp("compose"))


@pytest.fixture(scope="module")
def group(ops):
    """A group and a vehicle:encryptor policy of this run."""
    g = "ct-" + uuid.uuid4().hex[:6]
    ops.kmsctl("policy", "add", "ct-veh-enc-" + g[3:], "--types", "vehicle:encryptor")
    return g


# ---- devices ------------------------------------------------------------------

def register(ops, group, type_):
    did = uid(type_[:3].upper())
    ops.kmsctl("device", "register", did, "--type", type_, "--group", group, "--keys", "2")
    return did


class CVehicle:
    """qkms-device on the host, with a fill document obtained the way a
    provisioning station gets one: a sealed package opened with its key."""

    def __init__(self, ops, group):
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import x25519
        self.ops = ops
        self.device_id = register(ops, group, "vehicle")
        priv = x25519.X25519PrivateKey.generate()
        pub = ops.write_secret(self.device_id + ".pub.pem", priv.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode())
        key = ops.write_secret(self.device_id + ".key.pem", priv.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()).decode())
        pkg = str(ops.dir / (self.device_id + ".qkfp"))
        ops.kmsctl("device", "fill", self.device_id, "--recipient-pub", pub, "--out", pkg)
        doc = json.loads(ops.kmsctl("fill", "open", "--key", key, pkg, "--json").stdout)
        assert doc["device_id"] == self.device_id
        self.fill = ops.write_secret(self.device_id + ".json", json.dumps(doc))

    def key(self, sid, peer):
        p = subprocess.run([QKMS_DEVICE, "key", "--url", URL, "--fill", self.fill, "--session", sid,
                            "--peer", peer.device_id, "--json", "--timeout", "20"],
                           capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, f"qkms-device exit {p.returncode}: {p.stderr}"
        return json.loads(p.stdout)


def py_device(ops, group, type_):
    """The Python client with a fill document from kmsctl, sealed to a
    station key (plaintext export is refused off loopback without TLS, and
    the published port is not loopback to kmsd)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import x25519
    did = register(ops, group, type_)
    priv = x25519.X25519PrivateKey.generate()
    key, pub = ops.dir / (did + ".station.pem"), ops.dir / (did + ".station.pub")
    key.write_bytes(priv.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    pub.write_bytes(priv.public_key().public_bytes(serialization.Encoding.PEM,
                                                    serialization.PublicFormat.SubjectPublicKeyInfo))
    pkg = ops.dir / (did + ".qkfp")
    ops.kmsctl("device", "fill", did, "--recipient-pub", str(pub), "--out", str(pkg))
    return Device.from_fill(json.loads(ops.kmsctl("fill", "open", "--key", str(key), str(pkg),
                                                  "--json").stdout))


def py_post(dev, sid, peer_id):
    req = dev.key_request(sid, peer_id)
    r = requests.post(URL + req.path, data=req.raw, headers={"Content-Type": "application/json"},
                      timeout=10)
    return req, r


def py_key(dev, sid, peer):
    req, r = py_post(dev, sid, peer.device_id)
    assert r.status_code == 200, r.text
    return dev.open_key_response(req, r.json())


def paired(veh, enc, sid=None):
    """One session: qkms-device and the Python client must get the same key."""
    sid = sid or uid()
    c = veh.key(sid, enc)
    k = py_key(enc, sid, veh)
    assert c["key"] == k.key.hex() and c["key_id"] == k.key_id, (c["key_id"], k.key_id)
    return sid, c["key_id"], c["key"]


@pytest.fixture(scope="module")
def pair(ops, group):
    return CVehicle(ops, group), py_device(ops, group, "encryptor")


# ---- the stack ------------------------------------------------------------------

def test_stack_ready(ops):
    r = requests.get(URL + "/readyz", timeout=5)
    assert r.status_code == 200
    assert r.json()["checks"] == {"database": "ok", "token": "ok", "entropy": "ok"}
    st = ops.json("status")
    assert st["master_key"]["version"] == 1 and st["token"]["label"] == "qkms"
    ent = ops.json("entropy", "status")
    assert ent["policy"] == "require"
    primary = [s for s in ent["sources"] if s["role"] == "primary"]
    assert [(s["name"], s["state"]) for s in primary] == [("http", "ok")]
    assert "qrng-sim" in primary[0]["describe"]


def test_containers_hardened():
    """kmsd runs as qkms on a read-only root; the token's PINs are files
    only the right user reads, never environment variables."""
    p = compose("exec", "kmsd", "sh", "-c",
                "id -u; touch /usr/x 2>/dev/null && echo writable || echo read-only; "
                "stat -c '%a %U' /run/qkms/pin/token.pin /run/qkms/pin/token.so-pin "
                "/run/qkms/db/pgpass /var/lib/qkms/admin/admin.token; "
                "cat /run/qkms/pin/token.so-pin >/dev/null 2>&1 && echo so-pin-readable || true; env")
    lines = p.stdout.splitlines()
    assert lines[0] == "10001" and lines[1] == "read-only"
    assert lines[2:6] == ["400 qkms", "400 root", "400 qkms", "600 qkms"], lines[2:6]
    assert "so-pin-readable" not in lines
    assert not any(re.match(r"QKMS_PKCS11_PIN=|PGPASSWORD=", line) for line in lines)


# ---- devices from the host ------------------------------------------------------------

def test_paired_session_from_host(pair):
    veh, enc = pair
    sid, key_id, key = paired(veh, enc)
    assert re.fullmatch(r"[0-9a-f]{32}", key)
    # Asking again gives the same key, in either order.
    assert py_key(enc, sid, veh).key_id == key_id
    assert veh.key(sid, enc)["key"] == key


def test_session_visible_to_kmsctl(ops, pair):
    veh, enc = pair
    sid, key_id, _ = paired(veh, enc)
    s = ops.json("session", "show", sid)
    assert s["key_id"] == key_id and s["state"] == "active"
    assert (s["initiator"], s["responder"]) == (veh.device_id, enc.device_id)
    # The key material came from the QRNG (qrng-sim), through the DRBG.
    assert s["provenance"] == "http+ctr-drbg"


# ---- PostgreSQL restarted under load ------------------------------------------------

def test_postgres_restart_mid_run(ops, group, pair):
    """Sessions run continuously while the postgres container restarts:
    every answer is 200 or 503 (never a 500 or a hang), /readyz comes back
    to 200, and sessions work again without restarting kmsd."""
    a, b = py_device(ops, group, "encryptor"), py_device(ops, group, "vehicle")
    statuses, errors, stop, slowest = [], [], threading.Event(), [0.0]

    def load():
        while not stop.is_set():
            sid = uid()
            try:
                for dev, peer in ((a, b), (b, a)):
                    t = time.time()
                    req, r = py_post(dev, sid, peer.device_id)
                    statuses.append((time.time(), r.status_code))
                    slowest[0] = max(slowest[0], time.time() - t)
                    if r.status_code == 200:
                        dev.open_key_response(req, r.json())
                    else:
                        break
            except Exception as e:  # noqa: BLE001 - recorded, asserted below
                errors.append(f"{time.strftime('%H:%M:%S')} {e!r}")
            time.sleep(0.1)  # ~10 requests/s per device: under the rate limit

    t = threading.Thread(target=load, daemon=True)
    t.start()
    try:
        time.sleep(2)
        before = len(statuses)
        t0 = time.time()
        compose("restart", "postgres", timeout=120)
        seen = wait_ready(timeout=90)
        restarted = time.time()
        time.sleep(3)  # keep going after recovery
    finally:
        stop.set()
        t.join(timeout=30)
    print(f"slowest request during the postgres restart: {slowest[0]:.2f}s")
    assert not errors, errors[:5]
    codes = {c for _, c in statuses}
    assert codes <= {200, 503}, sorted(codes)
    assert before > 0 and any(c == 200 for _, c in statuses[:before])
    after = [c for ts, c in statuses if ts > restarted + 1]
    assert after and all(c == 200 for c in after), after[-20:]
    print(f"postgres restart: {restarted - t0:.1f}s until /readyz 200 (seen {seen}), "
          f"{len(statuses)} requests, {sum(c == 503 for _, c in statuses)} answered 503")
    # And the host's clients.
    paired(*pair)
    assert ops.json("status")["db"]["pool_size"] >= 1


# ---- kmsd restarted: keys survive -------------------------------------------------------

def test_kmsd_restart_keeps_keys(ops, pair):
    """The master key lives in the token volume, wrapped keys and sessions in
    PostgreSQL: after a restart of the kmsd container the same master key
    version is in use, device keys have the same check values, and an open
    session gives both parties the same key as before."""
    veh, enc = pair
    sid, key_id, key = paired(veh, enc)

    def snapshot():
        keys = {}
        for did in (veh.device_id, enc.device_id):
            keys[did] = [(k["index"], k["kcv"], k["master_version"])
                         for k in ops.json("device", "keys", did, "--kcv")["keys"]]
        st = ops.json("status")
        return keys, st["master_key"], ops.json("master", "status")["versions"]

    before = snapshot()
    assert all(kcv for ks in before[0].values() for _, kcv, _ in ks)
    t0 = time.time()
    compose("restart", "kmsd", timeout=120)
    wait_ready(timeout=90)
    # A new kmsd process answers.
    assert ops.json("status")["uptime_s"] <= time.time() - t0 + 1
    after = snapshot()
    assert after[0] == before[0]
    assert after[1] == before[1]
    assert [(v["version"], v["label"], v["state"]) for v in after[2]] == \
           [(v["version"], v["label"], v["state"]) for v in before[2]]
    # The open session's key, unwrapped by the restarted kmsd.
    assert veh.key(sid, enc)["key"] == key
    k = py_key(enc, sid, veh)
    assert k.key.hex() == key and k.key_id == key_id
    # The bootstrap admin token is the same one (not re-created).
    assert ops.json("status")["counts"]["admin_tokens"] >= 1
    paired(veh, enc)


# ---- the QRNG down: fail closed -------------------------------------------------------

def qrng_mode(mode):
    """Switch qrng-sim through its admin port (inside its container only)."""
    compose("exec", "qrng-sim", "python3", "-c",
            "import json, sys, urllib.request as u; "
            "r = u.Request('http://127.0.0.1:8091/mode', method='POST', "
            "data=json.dumps({'mode': sys.argv[1]}).encode(), "
            "headers={'Content-Type': 'application/json'}); u.urlopen(r, timeout=5).read()",
            mode, timeout=60)


def test_qrng_down_fails_closed(ops, pair):
    """entropy_policy = require (the compose default): with the QRNG down,
    kmsd reports not ready naming entropy and generates no session key; when
    the QRNG is back, so is kmsd."""
    veh, enc = pair
    qrng_mode("down")
    try:
        deadline, r = time.time() + 60, None
        while time.time() < deadline:
            r = requests.get(URL + "/readyz", timeout=5)
            if r.status_code == 503:
                break
            time.sleep(0.5)
        assert r is not None and r.status_code == 503, "kmsd still ready with the QRNG down"
        assert r.json()["checks"]["entropy"] != "ok"
        req, resp = py_post(enc, uid(), veh.device_id)
        assert resp.status_code == 503, resp.text
        assert resp.json()["error"]["code"] == "entropy_unavailable"
    finally:
        qrng_mode("ok")
    wait_ready(timeout=90)
    paired(veh, enc)


# ---- the demo profile ----------------------------------------------------------------------

def test_demo_profile(ops):
    p = compose("demo", timeout=300)
    lines = [ln for ln in p.stdout.splitlines() if ": session " in ln]
    assert len(lines) == 2, p.stdout + p.stderr[-3000:]
    got = {}
    for ln in lines:
        m = re.fullmatch(r"(\S+): session (\S+) with (\S+): key_id (\S+) \(expires \S+\)", ln)
        assert m, ln
        got[m.group(1)] = (m.group(2), m.group(3), m.group(4))
    assert set(got) == {"DEMO-VIN-0001", "DEMO-ENC-01"}
    (s1, p1, k1), (s2, p2, k2) = got["DEMO-VIN-0001"], got["DEMO-ENC-01"]
    assert s1 == s2 and k1 == k2 and p1 == "DEMO-ENC-01" and p2 == "DEMO-VIN-0001"
    # No key bytes in the demo's output.
    assert not re.search(r"\b[0-9a-f]{32}\b", p.stdout)
    s = ops.json("session", "show", s1)
    assert s["key_id"] == k1 and s["state"] == "active"
