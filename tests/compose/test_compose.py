"""End-to-end test of the compose stack (docker/compose.yaml), from outside
the containers, as an operator and as devices see it.

tests/compose/run.sh (`make compose-test`) builds the images, brings the
stack up under its own project name, runs this module, and tears the stack
down with its volumes. The module needs the running stack: it is skipped
without QKMS_COMPOSE_URL (so a plain `pytest tests/` does not fail here).

The devices are the host's: qkms-device from the release build
($QKMS_DEVICE) and the independent Python device client
(tests/integration/qkms_proto_py.py), on the published device port. The
operator is inside: kmsctl in the kmsd container, on the admin listener's
unix socket (the admin API is on no network); the host's kmsctl
($QKMS_KMSCTL) only opens fill packages, which needs no server. The zones
are checked from throwaway containers on each network. The tests run in
file order; each bounds its own waits.
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
# The platform CA (run.sh: kmsctl ca show --pem); requests verifies against
# it through REQUESTS_CA_BUNDLE, qkms-device through --cacert.
CA = os.environ.get("QKMS_COMPOSE_CA")
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


def wait_ready(timeout=90, stable=0.0):
    """Until /readyz answers 200 (without a break for `stable` seconds, as a
    load balancer's rise count would: right after a dependency restarts, the
    prober's check may still be on its way to `timeout`); returns the statuses
    seen on the way."""
    seen, since = [], None
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            r = requests.get(URL + "/readyz", timeout=2)
            seen.append(r.status_code)
            ok = r.status_code == 200
        except requests.RequestException:
            seen.append(None)
            ok = False
        if not ok:
            since = None
        elif since is None:
            since = time.time()
        if since is not None and time.time() - since >= stable:
            return seen
        time.sleep(0.25)
    raise AssertionError(f"/readyz not 200 within {timeout}s (seen {seen[-10:]})")


class Ops:
    """The operator: kmsctl in the kmsd container (docker/compose.sh kmsctl),
    on the admin socket, with the bootstrap admin token it finds there. Files
    cross into the container's /tmp and back through exec."""

    def __init__(self, workdir):
        self.dir = workdir
        # The token can still be copied out (e.g. for another admin host).
        self.token_file = str(workdir / "admin.token")
        compose("admin-token", self.token_file)
        assert oct(os.stat(self.token_file).st_mode & 0o777) == "0o600"

    def kmsctl(self, *args, check=True):
        p = compose("kmsctl", *args, timeout=60, check=False)
        if check and p.returncode != 0:
            raise AssertionError(f"kmsctl {args} -> {p.returncode}: {p.stderr}")
        return p

    def local_kmsctl(self, *args):
        """The host's kmsctl, for what needs no server (fill open)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("KMS_")}
        p = subprocess.run([KMSCTL, *args], env=env, capture_output=True, text=True, timeout=60)
        if p.returncode != 0:
            raise AssertionError(f"kmsctl {args} -> {p.returncode}: {p.stderr}")
        return p

    def json(self, *args):
        return json.loads(self.kmsctl(*args, "--json").stdout)

    def push(self, path):
        """A host file into the kmsd container's /tmp; its path there."""
        inside = "/tmp/" + os.path.basename(str(path))
        with open(path, "rb") as f:
            p = subprocess.run(["bash", COMPOSE_SH, "exec", "-i", "kmsd", "sh", "-c",
                                'umask 077; cat > "$1"', "sh", inside], stdin=f,
                               capture_output=True, timeout=60)
        assert p.returncode == 0, p.stderr.decode()[-2000:]
        return inside

    def pull(self, inside, path):
        p = subprocess.run(["bash", COMPOSE_SH, "exec", "kmsd", "cat", inside],
                           capture_output=True, timeout=60)
        assert p.returncode == 0, p.stderr.decode()[-2000:]
        with open(path, "wb") as f:
            f.write(p.stdout)

    def fill_package(self, device_id, pub, pkg):
        """kmsctl device fill, sealed to the station key pub; the package at pkg."""
        inside = f"/tmp/{device_id}.qkfp"
        self.kmsctl("device", "fill", device_id, "--recipient-pub", self.push(pub), "--out", inside)
        self.pull(inside, pkg)

    def client_cert(self, device_id):
        """A key pair made here (as the device makes its own) and the
        certificate the platform CA issues from its CSR: (cert, key) files."""
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
        key = ec.generate_private_key(ec.SECP256R1())
        csr = (x509.CertificateSigningRequestBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)]))
               .sign(key, hashes.SHA256()))
        path = self.dir / (device_id + ".csr")
        path.write_bytes(csr.public_bytes(serialization.Encoding.PEM))
        rec = self.json("device", "cert", "issue", device_id, "--csr", self.push(path))
        crt = self.write_secret(device_id + ".crt", rec["certificate"])
        kf = self.write_secret(device_id + ".tls.key", key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()).decode())
        return crt, kf

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
        ops.fill_package(self.device_id, pub, pkg)
        doc = json.loads(ops.local_kmsctl("fill", "open", "--key", key, pkg, "--json").stdout)
        assert doc["device_id"] == self.device_id
        self.fill = ops.write_secret(self.device_id + ".json", json.dumps(doc))
        self.cert = ops.client_cert(self.device_id)

    def key(self, sid, peer):
        p = subprocess.run([QKMS_DEVICE, "key", "--url", URL, "--fill", self.fill, "--session", sid,
                            "--peer", peer.device_id, "--json", "--timeout", "20",
                            "--cacert", CA, "--cert", self.cert[0], "--key", self.cert[1]],
                           capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, f"qkms-device exit {p.returncode}: {p.stderr}"
        return json.loads(p.stdout)


def py_device(ops, group, type_):
    """The Python client with a fill document from kmsctl, sealed to a
    station key (as a provisioning station gets it)."""
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
    ops.fill_package(did, pub, pkg)
    dev = Device.from_fill(json.loads(ops.local_kmsctl("fill", "open", "--key", str(key),
                                                       str(pkg), "--json").stdout))
    dev.cert = ops.client_cert(did)
    return dev


def py_post(dev, sid, peer_id):
    req = dev.key_request(sid, peer_id)
    r = requests.post(URL + req.path, data=req.raw, headers={"Content-Type": "application/json"},
                      cert=dev.cert, timeout=10)
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


def test_device_listener_mutual_tls(ops, pair):
    """The device port speaks TLS with a server certificate kmsd made from
    its platform CA, for the names of tls_server_names; a device request
    needs its device's client certificate."""
    import ssl
    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID
    port = int(URL.rsplit(":", 1)[1])
    pem = ssl.get_server_certificate(("127.0.0.1", port))
    cert = x509.load_pem_x509_certificate(pem.encode())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == {"kmsd", "localhost"}
    assert [str(a) for a in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == \
        [ExtendedKeyUsageOID.SERVER_AUTH]
    with open(CA, "rb") as f:
        ca = x509.load_pem_x509_certificate(f.read())  # the first: the active CA
    assert cert.issuer == ca.subject
    # GET /v1/ca on the device port gives the same CA, without a certificate.
    r = requests.get(URL + "/v1/ca", timeout=10)
    assert r.status_code == 200 and x509.load_pem_x509_certificate(r.content) == ca
    veh, enc = pair
    req = enc.key_request(uid(), veh.device_id)
    r = requests.post(URL + req.path, data=req.raw, headers={"Content-Type": "application/json"},
                      timeout=10)
    assert r.status_code == 401 and r.json()["error"]["code"] == "client_certificate_required"
    # Another device's certificate with this device's envelope.
    r = requests.post(URL + req.path, data=req.raw, headers={"Content-Type": "application/json"},
                      cert=veh.cert, timeout=10)
    assert r.status_code == 401 and r.json()["error"]["code"] == "certificate_mismatch"
    ev = ops.json("audit", "list", "--type", "certificate.mismatch", "--device", veh.device_id)
    assert ev["events"] and ev["events"][-1]["detail"]["claimed_device"] == enc.device_id


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


# ---- zones: devices outside, administration inside ---------------------------------

PROBE = r"""
ca=$1; shift  # the platform CA (PEM): kmsd's device listener speaks TLS
for t in "$@"; do
    h=${t%:*} port=${t##*:}
    if ! [[ $h =~ ^[0-9.]+$ ]] && ! getent hosts "$h" >/dev/null 2>&1; then
        echo "$t noname"; continue
    fi
    timeout 3 bash -c "exec 3<>/dev/tcp/$h/$port" 2>/dev/null
    case $? in 0) echo "$t open" ;; 124) echo "$t timeout" ;; *) echo "$t refused" ;; esac
done
for path in /healthz /readyz /metrics /v1/admin/status; do
    echo "http $path $(curl -s -o /dev/null -w '%{http_code}' --max-time 5 --cacert <(printf '%s\n' "$ca") https://kmsd:8470$path)"
done
"""


def engine():
    return re.search(r"\((\w+)\)\s*$", compose("engine").stdout).group(1)


def backend_ip(service):
    """The service's address on the project's backend network."""
    cid = compose("cid", service).stdout.strip()
    p = subprocess.run([engine(), "inspect", "-f", "{{json .NetworkSettings.Networks}}", cid],
                       capture_output=True, text=True, timeout=60, check=True)
    nets = json.loads(p.stdout)
    ips = [v["IPAddress"] for k, v in nets.items() if k.endswith("_backend") and v.get("IPAddress")]
    assert len(ips) == 1, nets
    return ips[0]


def probe(network, *targets):
    """{target: open|refused|timeout|noname, "http PATH": status} as seen from
    a throwaway container on network alone."""
    with open(CA) as f:
        ca = f.read()
    p = compose("probe", network, "bash", "-c", PROBE, "probe", ca, *targets, timeout=180)
    out = {}
    for line in p.stdout.splitlines():
        key, _, state = line.rpartition(" ")
        out[key] = state
    return out


def test_zones_from_the_devices_network():
    """From the frontend network (the devices'): the device port answers and
    serves no admin route; the admin API is on no TCP port; PostgreSQL and
    the QRNG are neither named nor reachable, not even by address, and
    neither is any of kmsd's inside addresses."""
    pg, qrng, kmsd = backend_ip("postgres"), backend_ip("qrng-sim"), backend_ip("kmsd")
    prom = backend_ip("prometheus")
    inside = [f"{pg}:5432", f"{qrng}:8090", f"{kmsd}:8470", f"{kmsd}:8471", f"{kmsd}:8472",
              f"{prom}:9090"]
    seen = probe("frontend", "kmsd:8470", "kmsd:8471", "kmsd:8472", "postgres:5432",
                 "qrng-sim:8090", "prometheus:9090", *inside)
    assert seen["kmsd:8470"] == "open", seen
    # No admin port, and the metrics listener is not on this network's address.
    assert seen["kmsd:8471"] == "refused" and seen["kmsd:8472"] == "refused", seen
    assert seen["postgres:5432"] == "noname" and seen["qrng-sim:8090"] == "noname", seen
    assert seen["prometheus:9090"] == "noname", seen
    for t in inside:
        assert seen[t] in ("refused", "timeout"), (t, seen)
    assert (seen["http /healthz"], seen["http /readyz"]) == ("200", "200"), seen
    assert (seen["http /metrics"], seen["http /v1/admin/status"]) == ("404", "404"), seen
    # The same addresses from the inside answer: the probe is not vacuous.
    seen = probe("backend", f"{pg}:5432", f"{qrng}:8090", f"{kmsd}:8470", "kmsd:8471",
                 f"{kmsd}:8472", f"{prom}:9090")
    assert [seen[t] for t in (f"{pg}:5432", f"{qrng}:8090", f"{kmsd}:8470", f"{kmsd}:8472",
                              f"{prom}:9090")] == ["open"] * 5, seen
    assert seen["kmsd:8471"] == "refused", seen  # the admin API is no TCP port at all


def test_admin_listener_inside(ops):
    """The admin listener is the unix socket in the admin volume: kmsctl and
    the probes work there; the published device port has no admin route."""
    p = compose("exec", "kmsd", "sh", "-c",
                "stat -c '%a %U %F' /var/lib/qkms/admin/kmsd.sock; "
                "for path in /healthz /readyz /metrics /v1/sessions/key; do "
                "curl -s -o /dev/null -w '%{http_code}\\n' --max-time 5 "
                "--unix-socket /var/lib/qkms/admin/kmsd.sock http://localhost$path; done")
    lines = p.stdout.split("\n")
    assert lines[0] == "660 qkms socket", lines
    assert lines[1:5] == ["200", "200", "200", "404"], lines
    tok = open(ops.token_file).read().strip()
    r = requests.get(URL + "/v1/admin/status", headers={"Authorization": "Bearer " + tok},
                     timeout=10)
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found", r.text
    assert requests.get(URL + "/metrics", timeout=10).status_code == 404
    assert requests.get(URL + "/healthz", timeout=10).status_code == 200
    logs = compose("logs", "kmsd")  # kmsd logs on stderr; engines keep the streams apart
    ready = [json.loads(ln) for ln in (logs.stdout + logs.stderr).splitlines()
             if ln.startswith("{") and '"kmsd ready"' in ln]
    assert ready and ready[-1]["admin_unix"] == "/var/lib/qkms/admin/kmsd.sock", ready[-1:]
    assert ready[-1]["addr"] == "0.0.0.0" and ready[-1]["port"] == 8470


# ---- monitoring: Prometheus on the backend network ----------------------------------

def promql(expr):
    """An instant query in the prometheus container: [{metric, value}]."""
    p = compose("exec", "prometheus", "promtool", "query", "instant", "-o", "json",
                "http://127.0.0.1:9090", expr, timeout=60)
    return json.loads(p.stdout)


def test_prometheus_scrapes_kmsd():
    """Prometheus scrapes kmsd's metrics listener (target up, kmsd's own
    series stored) and has loaded the shipped alert rules; the metrics
    listener serves nothing but /metrics and the probes."""
    deadline = time.time() + 90  # a scrape every 15 s
    up = []
    while time.time() < deadline:
        up = promql('up{job="qkms"}')
        if up and up[0]["value"][1] == "1":
            break
        time.sleep(2)
    assert len(up) == 1 and up[0]["value"][1] == "1", up
    assert up[0]["metric"]["instance"] == "kmsd:8472", up
    ready = promql('qkms_ready{job="qkms"}')
    assert {r["metric"]["check"] for r in ready} >= {"database", "token", "entropy"}, ready
    assert all(r["value"][1] == "1" for r in ready), ready
    rules = []
    while time.time() < deadline:
        rules = promql('prometheus_rule_group_rules{job="prometheus"}')
        if rules:
            break
        time.sleep(2)
    with open(os.path.join(ROOT, "docker", "prometheus", "rules.yml")) as f:
        shipped = f.read().count("- alert: ")
    assert [r["value"][1] for r in rules] == [str(shipped)], rules
    # Nothing fires on the healthy stack.
    assert promql('ALERTS{alertstate="firing"}') == []
    # The metrics listener, from the backend network: /metrics and the
    # probes, 404 for the rest.
    p = compose("probe", "backend", "bash", "-c",
                "for path in /metrics /healthz /readyz /v1/admin/status /v1/ca; do "
                "curl -s -o /dev/null -w '%{http_code}\\n' --max-time 5 http://kmsd:8472$path; "
                "done", timeout=180)
    assert p.stdout.split() == ["200", "200", "200", "404", "404"], p.stdout
    logs = compose("logs", "kmsd")
    lines = [json.loads(ln) for ln in (logs.stdout + logs.stderr).splitlines()
             if ln.startswith("{") and '"metrics listener ready"' in ln]
    assert lines and lines[-1]["metrics_addr"] == backend_ip("kmsd"), lines[-1:]
    assert lines[-1]["metrics_port"] == 8472


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
        seen = wait_ready(timeout=90, stable=2.5)
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
    wait_ready(timeout=90, stable=2.5)
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
