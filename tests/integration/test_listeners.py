"""kmsd's two listeners (issue 13, seed 000's two zones): the device
listener (listen_addr:listen_port) serves the device protocol, the admin
listener (admin_listen_addr:admin_listen_port, or the unix socket
admin_listen_unix) the admin API and /metrics; both serve /healthz and
/readyz. A route the other listener serves is 404 not_found, in the one
error shape, as if it did not exist. Without an admin listener one listener
serves everything (the contract of `make run`, kmsctl and the README).

One state directory for the module; each class restarts kmsd with its own
listener settings (class-scoped fixtures, so they never overlap).
"""
import http.client
import json
import os
import socket
import stat
import subprocess
import uuid

import pytest
import requests

from conftest import KMSCTL, KMSD, OPENAPI, Stack, _finish, free_port, wait_for
from helpers import CONNECT, OK, REFUSED, get_key, post, uid
from qkms_proto_py import Device

NOT_FOUND = {"error": {"code": "not_found", "message": "no such route"}}


class Resp:
    """The parts of an answer the tests read, from requests or http.client."""

    def __init__(self, status, headers, body):
        self.status_code = status
        self.headers = {k.lower(): v for k, v in headers.items()}
        self.content = body
        self.text = body.decode("utf-8", "replace")

    def json(self):
        return json.loads(self.content)


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path, timeout=30):
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self.unix_path)
        self.sock = s


class Door:
    """One listener: a TCP base URL or a unix socket path."""

    def __init__(self, url=None, unix=None):
        self.url, self.unix = url, unix

    @property
    def kms_addr(self):
        return self.url if self.url else "unix:" + self.unix

    def call(self, method, path, token=None, body=None, raw=None):
        headers = {}
        if token:
            headers["Authorization"] = "Bearer " + token
        data = raw
        if body is not None:
            data = json.dumps(body).encode()
        if data is not None:
            headers["Content-Type"] = "application/json"
        if self.url:
            r = requests.request(method, self.url + path, headers=headers, data=data, timeout=30)
            return Resp(r.status_code, r.headers, r.content)
        c = UnixHTTPConnection(self.unix)
        try:
            try:
                c.request(method, path, body=data, headers=headers)
            except (BrokenPipeError, ConnectionResetError):
                # A refusal (404 on a listener without the route) may be
                # answered and the socket closed before the body was read;
                # the answer is there to read all the same.
                pass
            r = c.getresponse()
            return Resp(r.status, dict(r.getheaders()), r.read())
        finally:
            c.close()


class Doors:
    def __init__(self, st, device, admin):
        self.st, self.device, self.admin = st, device, admin

    def admin_call(self, method, path, body=None):
        return self.admin.call(method, path, token=self.st.admin_token, body=body)

    def kmsctl(self, door, *args):
        env = dict(self.st.env, KMS_ADDR=door.kms_addr, KMS_TOKEN=self.st.admin_token)
        return subprocess.run([KMSCTL, *args], env=env, capture_output=True, text=True,
                              timeout=60)


@pytest.fixture(scope="module")
def st():
    s = Stack("listen")
    yield s
    _finish(s)


def restart(st, env):
    if st.proc:
        rc = st.stop()
        assert rc == 0, f"kmsd exited with {rc}:\n{st.logs()[-4000:]}"
    st.start(extra_env=env)


def ready_line(st):
    return [r for r in st.log_records() if r.get("msg") == "kmsd ready"][-1]


def assert_not_found(r):
    assert r.status_code == 404, r.text
    assert r.json() == NOT_FOUND
    assert r.headers["content-type"] == "application/json"
    assert r.headers.get("x-request-id")


def device_pair(doors, group):
    """A vehicle and an encryptor of group, registered and filled through the
    admin listener (plaintext fill: loopback or unix socket)."""
    out = []
    for type_ in ("vehicle", "encryptor"):
        did = uid(type_[:3].upper())
        r = doors.admin_call("POST", "/v1/admin/devices",
                             {"device_id": did, "type": type_, "group": group})
        assert r.status_code == 201, r.text
        r = doors.admin_call("POST", f"/v1/admin/devices/{did}/fill", {"plaintext": True})
        assert r.status_code == 200, r.text
        out.append(Device.from_fill(r.json()["plaintext"]))
    return out


def policy(doors):
    name = "p-" + uuid.uuid4().hex[:8]
    r = doors.admin_call("POST", "/v1/admin/policies",
                         {"name": name, "type_a": "vehicle", "type_b": "encryptor"})
    assert r.status_code == 201, r.text


def check_apart(doors):
    """Everything the two listeners must and must not serve."""
    dev, adm, tok = doors.device, doors.admin, doors.st.admin_token
    # Probes on both.
    for d in (dev, adm):
        assert d.call("GET", "/healthz").json() == {"status": "ok"}
        r = d.call("GET", "/readyz")
        assert r.status_code == 200 and r.json()["status"] == "ready", r.text
    # The admin API and /metrics: admin listener only.
    assert adm.call("GET", "/v1/admin/status", token=tok).status_code == 200
    assert_not_found(dev.call("GET", "/v1/admin/status", token=tok))
    assert_not_found(dev.call("GET", "/v1/admin/status"))  # 404 before 401
    assert_not_found(dev.call("POST", "/v1/admin/tokens", token=tok,
                              body={"name": "x" + uuid.uuid4().hex[:8], "role": "auditor"}))
    assert_not_found(dev.call("PUT", "/v1/admin/tokens", token=tok))  # not 405
    assert_not_found(dev.call("DELETE", "/v1/admin/tokens/nobody", token=tok))
    assert_not_found(dev.call("GET", "/metrics"))
    r = adm.call("GET", "/metrics")
    assert r.status_code == 200 and "qkms_http_requests_total" in r.text
    # The device protocol: device listener only (even a well-formed request).
    assert dev.call("POST", "/v1/sessions/key", body={}).status_code == 400
    for path in ("/v1/sessions/key", "/v1/sessions/end", "/v1/gateway/login",
                 "/v1/gateway/logout"):
        assert_not_found(adm.call("POST", path, body={}))
        assert_not_found(adm.call("GET", path))  # not 405


def check_sessions(doors):
    """A real paired session on the device listener; the same request on an
    admin listener apart is 404 and delivers nothing."""
    policy(doors)
    veh, enc = device_pair(doors, "g-" + uuid.uuid4().hex[:6])
    sid = uid()
    if doors.admin is not doors.device:
        req = veh.key_request(sid, enc.device_id)
        assert_not_found(doors.admin.call("POST", req.path, raw=req.raw))
    k1 = get_key(doors.device, veh, sid, enc)
    k2 = get_key(doors.device, enc, sid, veh)
    assert k1.key == k2.key and k1.key_id == k2.key_id
    # The admin view of the session, on the admin listener.
    r = doors.admin_call("GET", "/v1/admin/sessions/" + sid)
    assert r.status_code == 200, r.text


def check_metrics(doors):
    """Route metrics count requests on both listeners; the other listener's
    routes count as unmatched."""
    r = doors.admin.call("GET", "/metrics")
    assert 'qkms_http_requests_total{route="session_key",status="200"}' in r.text
    assert 'qkms_http_requests_total{route="healthz",status="200"}' in r.text
    assert 'qkms_http_requests_total{route="unmatched",status="404"}' in r.text


def check_kmsctl(doors):
    p = doors.kmsctl(doors.admin, "status", "--json")
    assert p.returncode == OK, p.stderr
    assert json.loads(p.stdout)["master_key"]["version"] >= 1
    p = doors.kmsctl(doors.admin, "token", "list", "--json")
    assert p.returncode == OK, p.stderr
    # The device listener has no admin API.
    p = doors.kmsctl(doors.device, "status", "--json")
    assert p.returncode == REFUSED, p.stderr
    assert json.loads(p.stdout)["error"]["code"] == "not_found"


# ---------------------------------------------------------------------------
# admin listener on its own TCP port


def openapi_apart(device_port=None, admin_port=None, metrics_port=None):
    """Tell the OpenAPI check (conftest.OPENAPI) which listener answers on
    which port, so an admin route answered 404 on the device listener is
    checked as the unrouted answer it is; no device_port: together again."""
    if OPENAPI and device_port is None:
        OPENAPI.together()
    elif OPENAPI:
        OPENAPI.apart(device_port, admin_port, metrics_port)


@pytest.fixture(scope="class")
def tcp(st):
    port = free_port()
    restart(st, {"QKMS_ADMIN_LISTEN_ADDR": "127.0.0.1", "QKMS_ADMIN_LISTEN_PORT": str(port)})
    openapi_apart(st.port, port)
    yield Doors(st, Door(url=st.url), Door(url=f"http://127.0.0.1:{port}"))
    openapi_apart()


class TestTcpApart:
    def test_routes(self, tcp):
        check_apart(tcp)

    def test_sessions(self, tcp):
        check_sessions(tcp)

    def test_metrics(self, tcp):
        check_metrics(tcp)

    def test_kmsctl(self, tcp):
        check_kmsctl(tcp)

    def test_ready_line(self, tcp):
        rec = ready_line(tcp.st)
        assert rec["addr"] == "127.0.0.1" and rec["port"] == tcp.st.port
        assert rec["admin_addr"] == "127.0.0.1"
        assert f"http://127.0.0.1:{rec['admin_port']}" == tcp.admin.url
        assert rec["tls"] is False and rec["admin_tls"] is False
        assert "admin_unix" not in rec

    def test_request_log(self, tcp):
        """A request for the other listener's route is logged as unmatched."""
        rid = "listen-" + uuid.uuid4().hex[:8]
        requests.get(tcp.device.url + "/v1/admin/devices", headers={"X-Request-Id": rid},
                     timeout=10)
        assert wait_for(lambda: any(r.get("req_id") == rid for r in tcp.st.log_records()), 10)
        rec = [r for r in tcp.st.log_records() if r.get("req_id") == rid][0]
        assert rec["route"] == "unmatched" and rec["status"] == 404
        assert rec["error"] == "not_found"


# ---------------------------------------------------------------------------
# admin listener on a unix socket


@pytest.fixture(scope="class")
def unix(st):
    path = os.path.join(st.state, "run", "admin.sock")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    restart(st, {"QKMS_ADMIN_LISTEN_UNIX": path})
    openapi_apart(st.port)  # the admin listener is the socket
    yield Doors(st, Door(url=st.url), Door(unix=path))
    openapi_apart()


class TestUnixApart:
    def test_socket_mode(self, unix):
        m = os.lstat(unix.admin.unix).st_mode
        assert stat.S_ISSOCK(m) and stat.S_IMODE(m) == 0o660

    def test_routes(self, unix):
        check_apart(unix)

    def test_sessions(self, unix):
        # device_pair's plaintext fills cross the unix socket: confidential.
        check_sessions(unix)

    def test_metrics(self, unix):
        check_metrics(unix)

    def test_kmsctl(self, unix):
        check_kmsctl(unix)
        p = unix.kmsctl(unix.admin, "-v", "status")
        assert p.returncode == OK, p.stderr
        assert "over unix:" + unix.admin.unix in p.stderr

    def test_kmsctl_errors(self, unix):
        gone = os.path.join(unix.st.state, "no-such.sock")
        p = unix.kmsctl(Door(unix=gone), "status")
        assert p.returncode == CONNECT
        assert "cannot reach unix:" + gone in p.stderr, p.stderr
        p = unix.kmsctl(Door(unix=""), "status")
        assert p.returncode == 2 and "unix:" in p.stderr, p.stderr

    def test_ready_line(self, unix):
        rec = ready_line(unix.st)
        assert rec["admin_unix"] == unix.admin.unix and rec["admin_tls"] is False
        assert "admin_addr" not in rec and "admin_port" not in rec

    def test_client_is_unix_in_log(self, unix):
        rid = "listen-" + uuid.uuid4().hex[:8]
        c = UnixHTTPConnection(unix.admin.unix)
        c.request("GET", "/v1/admin/devices", headers={"X-Request-Id": rid})
        assert c.getresponse().status == 401
        c.close()
        assert wait_for(lambda: any(r.get("req_id") == rid for r in unix.st.log_records()), 10)
        rec = [r for r in unix.st.log_records() if r.get("req_id") == rid][0]
        assert rec["client"] == "unix" and rec["route"] == "admin_devices_list"

    def test_socket_lifecycle(self, unix):
        """Removed at a clean stop; a stale one (kmsd killed) is replaced; any
        other file at the path is refused and left alone."""
        st, path = unix.st, unix.admin.unix
        assert st.stop() == 0
        assert not os.path.exists(path)
        st.start(extra_env={"QKMS_ADMIN_LISTEN_UNIX": path})
        st.stop(sig=9)
        assert stat.S_ISSOCK(os.lstat(path).st_mode)  # left behind
        st.start(extra_env={"QKMS_ADMIN_LISTEN_UNIX": path})
        assert unix.admin_call("GET", "/v1/admin/status").status_code == 200
        assert st.stop() == 0
        with open(path, "w") as f:
            f.write("not a socket\n")
        st.start(extra_env={"QKMS_ADMIN_LISTEN_UNIX": path}, wait=False)
        assert st.proc.wait(timeout=60) != 0
        st.proc = None
        st.log.close()
        assert "is not a socket; not replaced" in st.logs()
        assert "Sanitizer" not in st.logs()
        with open(path) as f:
            assert f.read() == "not a socket\n"
        os.unlink(path)


# ---------------------------------------------------------------------------
# the metrics listener, beside an admin listener on a unix socket (the
# compose stack's shape: Prometheus speaks TCP only)


@pytest.fixture(scope="class")
def metrics(st):
    path = os.path.join(st.state, "run", "admin.sock")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    port = free_port()
    restart(st, {"QKMS_ADMIN_LISTEN_UNIX": path, "QKMS_METRICS_LISTEN_ADDR": "127.0.0.1",
                 "QKMS_METRICS_LISTEN_PORT": str(port)})
    openapi_apart(st.port, None, port)
    yield Doors(st, Door(url=st.url), Door(unix=path)), Door(url=f"http://127.0.0.1:{port}")
    openapi_apart()


class TestMetricsListener:
    def test_serves_metrics_and_probes_only(self, metrics):
        doors, met = metrics
        tok = doors.st.admin_token
        r = met.call("GET", "/metrics")
        assert r.status_code == 200 and "qkms_http_requests_total" in r.text
        assert r.headers["content-type"].startswith("text/plain")
        assert met.call("GET", "/healthz").json() == {"status": "ok"}
        r = met.call("GET", "/readyz")
        assert r.status_code == 200 and r.json()["status"] == "ready", r.text
        # Nothing else: not the admin API (with a valid token), not the
        # device protocol, not the CA, not ETSI's routes.
        assert_not_found(met.call("GET", "/v1/admin/status", token=tok))
        assert_not_found(met.call("POST", "/v1/admin/tokens", token=tok,
                                  body={"name": "x" + uuid.uuid4().hex[:8], "role": "admin"}))
        assert_not_found(met.call("POST", "/v1/sessions/key", body={}))
        assert_not_found(met.call("GET", "/v1/ca"))
        r = met.call("POST", "/metrics")  # its own route, another method
        assert r.status_code == 405 and r.headers["allow"] == "GET", r.text
        assert_not_found(met.call("GET", "/api/v1/keys/x/status"))
        # The other listeners are as they were.
        check_apart(doors)

    def test_counts_requests_like_the_others(self, metrics):
        doors, met = metrics
        for _ in range(3):
            assert met.call("GET", "/healthz").status_code == 200
        assert_not_found(met.call("GET", "/v1/admin/devices"))
        text = met.call("GET", "/metrics").text
        adm = doors.admin.call("GET", "/metrics").text
        for t in (text, adm):
            assert 'qkms_http_requests_total{route="metrics",status="200"}' in t
            assert 'qkms_http_requests_total{route="unmatched",status="404"}' in t

    def test_ready_lines(self, metrics):
        doors, met = metrics
        rec = ready_line(doors.st)
        assert rec["admin_unix"] == doors.admin.unix
        rec = [r for r in doors.st.log_records() if r.get("msg") == "metrics listener ready"][-1]
        assert f"http://{rec['metrics_addr']}:{rec['metrics_port']}" == met.url



# ---------------------------------------------------------------------------
# the default: one listener for everything


@pytest.fixture(scope="class")
def shared(st):
    restart(st, {})
    d = Door(url=st.url)
    return Doors(st, d, d)


class TestOneListener:
    def test_everything_on_one_port(self, shared):
        d, tok = shared.device, shared.st.admin_token
        for path in ("/healthz", "/readyz", "/metrics"):
            assert d.call("GET", path).status_code == 200
        assert d.call("GET", "/v1/admin/status", token=tok).status_code == 200
        assert d.call("POST", "/v1/sessions/key", body={}).status_code == 400
        assert d.call("GET", "/v1/sessions/key").status_code == 405
        check_sessions(shared)
        p = shared.kmsctl(d, "status", "--json")
        assert p.returncode == OK, p.stderr

    def test_ready_line(self, shared):
        rec = ready_line(shared.st)
        assert rec["port"] == shared.st.port
        assert not any(k.startswith("admin_") for k in rec), rec


# ---------------------------------------------------------------------------
# TLS on the admin listener only


@pytest.fixture(scope="class")
def tls(st, tmp_path_factory):
    import datetime
    import ipaddress
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    d = tmp_path_factory.mktemp("admintls")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .sign(key, hashes.SHA256()))
    crt, kf = d / "admin.crt", d / "admin.key"
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    kf.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                     serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption()))
    port = free_port()
    restart(st, {"QKMS_ADMIN_LISTEN_ADDR": "127.0.0.1", "QKMS_ADMIN_LISTEN_PORT": str(port),
                 "QKMS_ADMIN_TLS_CERT_FILE": str(crt), "QKMS_ADMIN_TLS_KEY_FILE": str(kf)})
    return st, port, str(crt)


class TestAdminTls:
    def test_admin_https_device_http(self, tls):
        st, port, crt = tls
        url = f"https://127.0.0.1:{port}"
        r = requests.get(url + "/v1/admin/status", verify=crt, timeout=10,
                         headers={"Authorization": "Bearer " + st.admin_token})
        assert r.status_code == 200
        with pytest.raises(requests.exceptions.ConnectionError):
            requests.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
        assert requests.get(st.url + "/healthz", timeout=5).status_code == 200
        env = dict(st.env, KMS_ADDR=url, KMS_TOKEN=st.admin_token)
        p = subprocess.run([KMSCTL, "--cacert", crt, "status", "--json"], env=env,
                           capture_output=True, text=True, timeout=60)
        assert p.returncode == OK, p.stderr
        rec = ready_line(st)
        assert rec["tls"] is False and rec["admin_tls"] is True


# ---------------------------------------------------------------------------
# configuration the listeners refuse


@pytest.mark.parametrize("env,message", [
    ({"QKMS_ADMIN_LISTEN_ADDR": "127.0.0.1", "QKMS_ADMIN_LISTEN_UNIX": "/tmp/x.sock"},
     "admin_listen_addr and admin_listen_unix exclude each other"),
    ({"QKMS_ADMIN_TLS_CERT_FILE": "/x.crt", "QKMS_ADMIN_TLS_KEY_FILE": "/x.key"},
     "admin_tls_cert_file needs an admin listener"),
    ({"QKMS_ADMIN_LISTEN_ADDR": "127.0.0.1", "QKMS_ADMIN_TLS_CERT_FILE": "/x.crt"},
     "admin_tls_cert_file and admin_tls_key_file go together"),
    ({"QKMS_ADMIN_LISTEN_UNIX": "run/admin.sock"}, "admin_listen_unix must be an absolute path"),
    ({"QKMS_ADMIN_LISTEN_UNIX": "/" + "x" * 91}, "admin_listen_unix must be an absolute path"),
    ({"QKMS_LISTEN_ADDR": "127.0.0.1", "QKMS_LISTEN_PORT": "9000",
      "QKMS_ADMIN_LISTEN_ADDR": "127.0.0.1", "QKMS_ADMIN_LISTEN_PORT": "9000"},
     "the admin listener needs its own port"),
    ({"QKMS_LISTEN_ADDR": "127.0.0.1", "QKMS_LISTEN_PORT": "9000",
      "QKMS_METRICS_LISTEN_ADDR": "127.0.0.1", "QKMS_METRICS_LISTEN_PORT": "9000"},
     "the metrics listener needs its own port"),
    ({"QKMS_ADMIN_LISTEN_ADDR": "127.0.0.1", "QKMS_ADMIN_LISTEN_PORT": "9001",
      "QKMS_METRICS_LISTEN_ADDR": "127.0.0.1", "QKMS_METRICS_LISTEN_PORT": "9001"},
     "the metrics listener needs its own port"),
    ({"QKMS_LISTEN_ADDR": "0.0.0.0", "QKMS_LISTEN_PORT": "9002",
      "QKMS_METRICS_LISTEN_ADDR": "127.0.0.1", "QKMS_METRICS_LISTEN_PORT": "9002"},
     "the metrics listener needs its own port"),
    ({"QKMS_LISTEN_ADDR": "::1", "QKMS_LISTEN_PORT": "9003",
      "QKMS_ADMIN_LISTEN_ADDR": "0:0:0:0:0:0:0:1", "QKMS_ADMIN_LISTEN_PORT": "9003"},
     "the admin listener needs its own port"),
    ({"QKMS_METRICS_LISTEN_ADDR": "kmsd-metrics"},
     "metrics_listen_addr 'kmsd-metrics' is not an IPv4 or IPv6 address"),
    ({"QKMS_LISTEN_ADDR": "localhost"}, "listen_addr 'localhost' is not an IPv4 or IPv6 address"),
], ids=["addr-and-unix", "tls-without-listener", "tls-half", "relative-unix", "long-unix",
        "same-port", "metrics-same-port", "metrics-admin-port", "metrics-wildcard",
        "ipv6-spellings", "metrics-name", "device-name"])
def test_bad_listener_config(st, env, message):
    e = dict(st.env, **env)
    p = subprocess.run([KMSD, "-c", st.conf, "--check-config"], env=e, capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 2 and message in p.stderr, p.stderr


def test_admin_addr_not_an_address(st):
    """Like listen_addr: a host name is refused at start, kmsd exits."""
    if st.proc:
        assert st.stop() == 0
    st.start(extra_env={"QKMS_ADMIN_LISTEN_ADDR": "localhost"}, wait=False)
    rc = st.proc.wait(timeout=60)
    st.proc = None
    st.log.close()
    assert rc != 0
    assert "admin_listen_addr 'localhost' is not an IPv4 or IPv6 address" in st.logs()
    assert "Sanitizer" not in st.logs()
