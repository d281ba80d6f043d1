"""Tests for tools/qrng-sim.py, the QRNG simulator used as a stand-in for a
network QRNG in kmsd tests and the docker compose demo.

The simulator runs as a subprocess on free loopback ports; the first two
lines on its stdout name the data and admin ports.  Needs no PostgreSQL,
SoftHSM or kmsd.
"""
import base64
import binascii
import http.client
import math
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pytest
import requests

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
SIM = os.path.join(ROOT, "tools", "qrng-sim.py")
PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
MAX = 1048576
TIMEOUT = 10


class Sim:
    def __init__(self, *args):
        # stderr goes to a file so that a chatty simulator can never block
        self.err = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [PYTHON, SIM, "--port", "0", "--admin-port", "0", *args],
            stdout=subprocess.PIPE, stderr=self.err)
        self._buf = b""
        l1 = self._line()
        l2 = self._line()
        assert l1.startswith("listening on 127.0.0.1:"), l1
        assert l2.startswith("admin on 127.0.0.1:"), l2
        self.port = int(l1.rsplit(":", 1)[1])
        self.admin_port = int(l2.rsplit(":", 1)[1])
        assert self.port != self.admin_port

    def _line(self, timeout=10):
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            r = select.select([fd], [], [], max(left, 0))[0] if left > 0 else []
            chunk = os.read(fd, 4096) if r else b""
            if not chunk:
                self.proc.kill()
                self.proc.wait()
                self.err.seek(0)
                raise AssertionError("qrng-sim did not start: %r" % self.err.read())
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line.decode().strip()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin(self):
        return f"http://127.0.0.1:{self.admin_port}"

    def set_mode(self, mode, **extra):
        r = requests.post(self.admin + "/mode", json={"mode": mode, **extra}, timeout=TIMEOUT)
        assert r.status_code == 200, r.text
        assert r.json()["mode"] == mode
        return r.json()

    def get_mode(self):
        return requests.get(self.admin + "/mode", timeout=TIMEOUT).json()

    def stats(self):
        return requests.get(self.admin + "/stats", timeout=TIMEOUT).json()

    def stop(self, sig=signal.SIGTERM):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc.stdout.close()
        self.err.close()
        return self.proc.returncode


@pytest.fixture(scope="module")
def sim():
    s = Sim()
    yield s
    assert s.stop() == 0


@pytest.fixture
def qrng(sim):
    """The shared simulator, put back into mode ok after each test."""
    sim.set_mode("ok", delay=5.0)
    yield sim
    sim.set_mode("ok", delay=5.0)


# -- helpers ---------------------------------------------------------------

ENDPOINTS = [
    ("/random", None),
    ("/random/hex", None),
    ("/random/json", "hex"),
    ("/random/json", "base64"),
    ("/random/json-nested", "hex"),
    ("/random/json-nested", "base64"),
]


def decode(path, enc, r):
    """The random bytes in response r of endpoint path."""
    assert r.status_code == 200, r.text
    if path == "/random":
        assert r.headers["Content-Type"] == "application/octet-stream"
        return r.content
    if path == "/random/hex":
        assert r.headers["Content-Type"].startswith("text/plain")
        return binascii.unhexlify(r.text)
    assert r.headers["Content-Type"] == "application/json"
    doc = r.json()
    if path == "/random/json-nested":
        doc = doc["result"]["random"]
    enc = enc or "hex"
    assert doc["encoding"] == enc
    data = bytes.fromhex(doc["data"]) if enc == "hex" else base64.b64decode(doc["data"], validate=True)
    assert doc["length"] == len(data)
    return data


def fetch(sim, path, enc, n, method="GET", how="query", **kw):
    params = {}
    if n is not None:
        params["bytes"] = n
    if enc:
        params["encoding"] = enc
    if method == "GET":
        return requests.get(sim.url + path, params=params, timeout=TIMEOUT, **kw)
    if how == "query":
        return requests.post(sim.url + path, params=params, timeout=TIMEOUT, **kw)
    return requests.post(sim.url + path, json=params, timeout=TIMEOUT, **kw)


def critbinom(n, p, target):
    """Smallest k with P(Binomial(n, p) <= k) >= target."""
    cdf = 0.0
    for k in range(n + 1):
        cdf += math.comb(n, k) * p ** k * (1 - p) ** (n - k)
        if cdf >= target:
            return k
    return n


def rct_fails(data, h):
    """NIST SP 800-90B 4.4.1 repetition count test, alpha = 2^-20."""
    cutoff = 1 + math.ceil(20 / h)
    run = 1
    for a, b in zip(data, data[1:]):
        run = run + 1 if a == b else 1
        if run >= cutoff:
            return True
    return False


def apt_fails(data, h, w=512):
    """NIST SP 800-90B 4.4.2 adaptive proportion test (non-binary), alpha = 2^-20."""
    cutoff = 1 + critbinom(w, 2.0 ** -h, 1 - 2.0 ** -20)
    for start in range(0, len(data) - w + 1, w):
        window = data[start:start + w]
        if window.count(window[0]) >= cutoff:
            return True
    return False


# -- startup and formats ---------------------------------------------------

def test_startup_lines_and_default_mode(qrng):
    doc = qrng.get_mode()
    assert doc["mode"] == "ok"
    assert doc["delay"] == 5.0


@pytest.mark.parametrize("path,enc", ENDPOINTS)
@pytest.mark.parametrize("n", [1, 3, 1000, MAX])
def test_get_decodes_to_requested_length(qrng, path, enc, n):
    data = decode(path, enc, fetch(qrng, path, enc, n))
    assert len(data) == n
    if n >= 1000:
        assert len(set(data)) > 200


@pytest.mark.parametrize("path,enc", ENDPOINTS)
@pytest.mark.parametrize("how", ["query", "json"])
def test_post_query_and_json_body(qrng, path, enc, how):
    data = decode(path, enc, fetch(qrng, path, enc, 77, method="POST", how=how))
    assert len(data) == 77


@pytest.mark.parametrize("path", ["/random", "/random/hex", "/random/json", "/random/json-nested"])
@pytest.mark.parametrize("method", ["GET", "POST"])
def test_defaults_are_1024_bytes_hex(qrng, path, method):
    """No parameters: 1024 bytes, and hex in the JSON endpoints."""
    assert len(decode(path, None, fetch(qrng, path, None, None, method=method))) == 1024


def test_json_shapes(qrng):
    r = requests.get(qrng.url + "/random/json?bytes=4&encoding=hex", timeout=TIMEOUT)
    doc = r.json()
    assert set(doc) == {"data", "length", "encoding"}
    assert len(doc["data"]) == 8 and doc["length"] == 4
    r = requests.get(qrng.url + "/random/json-nested?bytes=6&encoding=base64", timeout=TIMEOUT)
    doc = r.json()
    assert list(doc) == ["result"] and list(doc["result"]) == ["random"]
    assert len(base64.b64decode(doc["result"]["random"]["data"])) == 6


def test_keep_alive_connection_serves_several_requests(qrng):
    c = http.client.HTTPConnection("127.0.0.1", qrng.port, timeout=TIMEOUT)
    try:
        for n in (5, 10, 15):
            c.request("GET", f"/random?bytes={n}")
            r = c.getresponse()
            assert r.status == 200 and len(r.read()) == n
    finally:
        c.close()


# -- bad parameters --------------------------------------------------------

@pytest.mark.parametrize("query", [
    "bytes=0", "bytes=-1", f"bytes={MAX + 1}", "bytes=abc", "bytes=1.5", "bytes=",
    "bytes=0x10", "bytes=10&encoding=base32",
])
@pytest.mark.parametrize("path", ["/random", "/random/hex", "/random/json", "/random/json-nested"])
def test_bad_query_gives_400(qrng, path, query):
    for method in ("GET", "POST"):
        r = requests.request(method, f"{qrng.url}{path}?{query}", timeout=TIMEOUT)
        assert r.status_code == 400, (method, r.text)
        assert r.headers["Content-Type"] == "application/json"
        assert "error" in r.json()


@pytest.mark.parametrize("body", [
    b"{not json", b"[1, 2]", b'{"bytes": "x"}', b'{"bytes": true}', b'{"bytes": 2.5}',
    b'{"bytes": 0}', b'{"bytes": 1048577}', b'{"bytes": 8, "encoding": "hex2"}',
])
def test_bad_json_body_gives_400(qrng, body):
    r = requests.post(qrng.url + "/random/json", data=body,
                      headers={"Content-Type": "application/json"}, timeout=TIMEOUT)
    assert r.status_code == 400, r.text
    assert "error" in r.json()


def test_unknown_path_gives_404(qrng):
    r = requests.get(qrng.url + "/nope", timeout=TIMEOUT)
    assert r.status_code == 404 and "error" in r.json()


# -- failure modes ---------------------------------------------------------

@pytest.mark.parametrize("path,enc", ENDPOINTS)
def test_stuck_gives_all_equal_bytes(qrng, path, enc):
    qrng.set_mode("stuck")
    data = decode(path, enc, fetch(qrng, path, enc, 4096))
    assert len(data) == 4096
    assert set(data) == {0x5A}
    assert rct_fails(data, 7)


def test_stuck_value_is_settable(qrng):
    qrng.set_mode("stuck", value=0xC3)
    assert qrng.get_mode()["stuck_value"] == 0xC3
    data = requests.get(qrng.url + "/random?bytes=64", timeout=TIMEOUT).content
    assert data == b"\xc3" * 64
    qrng.set_mode("stuck", value=0x5A)


@pytest.mark.parametrize("path,enc", ENDPOINTS)
def test_biased_trips_apt_but_not_rct(qrng, path, enc):
    qrng.set_mode("biased")
    data = decode(path, enc, fetch(qrng, path, enc, 65536))
    assert len(data) == 65536
    freq = data.count(0) / len(data)
    assert 0.28 <= freq <= 0.32, freq
    # no run of identical bytes at all, so the RCT never fires
    assert all(a != b for a, b in zip(data, data[1:]))
    assert not rct_fails(data, 7)
    assert apt_fails(data, 7)
    # the other values are roughly uniform
    others = [data.count(v) for v in range(1, 256)]
    mean = sum(others) / 255
    assert min(others) > 0.5 * mean and max(others) < 1.5 * mean


def test_ok_data_passes_health_tests(qrng):
    data = requests.get(qrng.url + "/random?bytes=65536", timeout=TIMEOUT).content
    assert not rct_fails(data, 7)
    assert not apt_fails(data, 7)
    assert 0.002 < data.count(0) / len(data) < 0.006


def test_slow_takes_at_least_the_delay(qrng):
    doc = qrng.set_mode("slow", delay=0.6)
    assert doc["delay"] == 0.6
    for path, enc in [("/random", None), ("/random/json-nested", "base64")]:
        t0 = time.monotonic()
        data = decode(path, enc, fetch(qrng, path, enc, 100))
        assert time.monotonic() - t0 >= 0.6
        assert len(data) == 100
    # a client with a shorter timeout gives up
    with pytest.raises(requests.exceptions.ReadTimeout):
        requests.get(qrng.url + "/random?bytes=10", timeout=0.2)


def test_slow_does_not_block_other_requests_or_admin(qrng):
    qrng.set_mode("slow", delay=1.0)
    c = http.client.HTTPConnection("127.0.0.1", qrng.port, timeout=TIMEOUT)
    c.request("GET", "/random?bytes=10")
    t0 = time.monotonic()
    assert qrng.get_mode()["mode"] == "slow"
    qrng.set_mode("ok")
    assert len(requests.get(qrng.url + "/random?bytes=10", timeout=TIMEOUT).content) == 10
    assert time.monotonic() - t0 < 0.9
    r = c.getresponse()
    assert r.status == 200 and len(r.read()) == 10
    c.close()


@pytest.mark.parametrize("path,enc", ENDPOINTS)
def test_truncated_http_client_incomplete_read(qrng, path, enc):
    qrng.set_mode("truncated")
    c = http.client.HTTPConnection("127.0.0.1", qrng.port, timeout=TIMEOUT)
    try:
        c.request("GET", f"{path}?bytes=1000" + (f"&encoding={enc}" if enc else ""))
        r = c.getresponse()
        assert r.status == 200
        length = int(r.getheader("Content-Length"))
        with pytest.raises(http.client.IncompleteRead) as ei:
            r.read()
        assert len(ei.value.partial) == length // 2
        assert ei.value.expected == length - length // 2
    finally:
        c.close()


def test_truncated_on_the_wire(qrng):
    """Content-Length N, N/2 body bytes, then EOF."""
    qrng.set_mode("truncated")
    with socket.create_connection(("127.0.0.1", qrng.port), timeout=TIMEOUT) as s:
        s.sendall(b"GET /random?bytes=4096 HTTP/1.1\r\nHost: x\r\n\r\n")
        buf = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    assert b"Content-Length: 4096" in head
    assert len(body) == 2048


def test_truncated_with_requests(qrng):
    """What a requests client sees.  With requests 2.28 / urllib3 1.26
    (Debian 12) response.content silently returns the short body, so a
    client must compare it with Content-Length itself; urllib3 2.x raises
    ChunkedEncodingError (ProtocolError: IncompleteRead) instead.  Reading
    the raw stream in one go raises ProtocolError with either version."""
    qrng.set_mode("truncated")
    try:
        r = requests.get(qrng.url + "/random?bytes=1000", timeout=TIMEOUT)
        assert int(r.headers["Content-Length"]) == 1000
        assert len(r.content) == 500
    except requests.exceptions.ChunkedEncodingError:
        pass
    r = requests.get(qrng.url + "/random?bytes=1000", timeout=TIMEOUT, stream=True)
    import urllib3
    with pytest.raises(urllib3.exceptions.ProtocolError):
        r.raw.read()
    r.close()


@pytest.mark.parametrize("path,enc", ENDPOINTS)
def test_error500(qrng, path, enc):
    qrng.set_mode("error500")
    for method in ("GET", "POST"):
        r = fetch(qrng, path, enc, 16, method=method)
        assert r.status_code == 500
        assert r.headers["Content-Type"] == "application/json"
        assert "error" in r.json()


def test_bad_parameters_win_over_failure_mode(qrng):
    qrng.set_mode("error500")
    r = requests.get(qrng.url + "/random?bytes=0", timeout=TIMEOUT)
    assert r.status_code == 400


def refused(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def test_down_refuses_and_ok_reopens_same_port(qrng):
    port = qrng.port
    # a kept-alive connection from before the switch is dropped as well
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    c.request("GET", "/random?bytes=8")
    assert len(c.getresponse().read()) == 8

    qrng.set_mode("down")
    assert refused(port)
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(qrng.url + "/random?bytes=8", timeout=TIMEOUT)
    with pytest.raises((ConnectionError, http.client.RemoteDisconnected, OSError)):
        c.request("GET", "/random?bytes=8")
        c.getresponse().read()
    c.close()
    # admin stays reachable; switching to down again is harmless
    assert qrng.get_mode()["mode"] == "down"
    qrng.set_mode("down")
    assert refused(port)

    qrng.set_mode("ok")
    r = requests.get(f"http://127.0.0.1:{port}/random?bytes=32", timeout=TIMEOUT)
    assert r.status_code == 200 and len(r.content) == 32

    # down -> a failure mode also reopens the port, in that mode
    qrng.set_mode("down")
    assert refused(port)
    qrng.set_mode("stuck")
    r = requests.get(f"http://127.0.0.1:{port}/random?bytes=32", timeout=TIMEOUT)
    assert r.content == b"\x5a" * 32


# -- admin -----------------------------------------------------------------

@pytest.mark.parametrize("body", [
    {"mode": "broken"}, {"mode": None}, {}, {"mode": "slow", "delay": -1},
    {"mode": "slow", "delay": "2"}, {"mode": "stuck", "value": 256}, [1],
])
def test_admin_rejects_invalid_mode(qrng, body):
    r = requests.post(qrng.admin + "/mode", json=body, timeout=TIMEOUT)
    assert r.status_code == 400, r.text
    assert "error" in r.json()
    assert qrng.get_mode()["mode"] == "ok"


def test_admin_rejects_bad_json_and_unknown_path(qrng):
    r = requests.post(qrng.admin + "/mode", data=b"{nope", timeout=TIMEOUT)
    assert r.status_code == 400
    assert requests.get(qrng.admin + "/nope", timeout=TIMEOUT).status_code == 404


def test_stats_count_requests_and_bytes_per_mode(qrng):
    requests.post(qrng.admin + "/stats/reset", timeout=TIMEOUT).raise_for_status()
    s = qrng.stats()
    assert s["total"] == {"requests": 0, "bytes": 0}
    requests.get(qrng.url + "/random?bytes=100", timeout=TIMEOUT)
    requests.get(qrng.url + "/random/hex?bytes=50", timeout=TIMEOUT)
    qrng.set_mode("stuck")
    requests.get(qrng.url + "/random/json?bytes=10", timeout=TIMEOUT)
    qrng.set_mode("error500")
    requests.get(qrng.url + "/random?bytes=10", timeout=TIMEOUT)
    requests.get(qrng.url + "/random?bytes=0", timeout=TIMEOUT)  # rejected
    s = qrng.stats()
    assert s["mode"] == "error500"
    assert s["modes"]["ok"] == {"requests": 2, "bytes": 150}
    assert s["modes"]["stuck"] == {"requests": 1, "bytes": 10}
    assert s["modes"]["error500"] == {"requests": 1, "bytes": 0}
    assert s["total"] == {"requests": 4, "bytes": 160}
    assert s["rejected"] == 1
    assert set(s["modes"]) == {"ok", "stuck", "biased", "slow", "truncated", "error500", "down"}


# -- separate simulator processes -----------------------------------------

def test_bearer_auth(tmp_path):
    tok = tmp_path / "token"
    tok.write_text("s3cret-token\n")
    s = Sim("--token-file", str(tok))
    try:
        for path, enc in ENDPOINTS:
            assert fetch(s, path, enc, 8).status_code == 401
            r = fetch(s, path, enc, 8, headers={"Authorization": "Bearer wrong"})
            assert r.status_code == 401
            assert r.headers["WWW-Authenticate"].startswith("Bearer")
            assert "error" in r.json()
            r = fetch(s, path, enc, 8, headers={"Authorization": "Basic czNjcmV0LXRva2Vu"})
            assert r.status_code == 401
            good = {"Authorization": "Bearer s3cret-token"}
            assert len(decode(path, enc, fetch(s, path, enc, 8, headers=good))) == 8
            r = fetch(s, path, enc, 9, method="POST", how="json", headers=good)
            assert len(decode(path, enc, r)) == 9
        # the admin port needs no token
        assert s.get_mode()["mode"] == "ok"
        s.set_mode("stuck")
        r = requests.get(s.url + "/random?bytes=4", timeout=TIMEOUT,
                         headers={"Authorization": "Bearer s3cret-token"})
        assert r.content == b"\x5a" * 4
    finally:
        assert s.stop() == 0


def test_seed_is_reproducible():
    a, b, c = Sim("--seed", "42"), Sim("--seed", "42"), Sim("--seed", "43")
    try:
        def get(s):
            return [requests.get(s.url + "/random?bytes=64", timeout=TIMEOUT).content,
                    decode("/random/hex", None,
                           requests.get(s.url + "/random/hex?bytes=64", timeout=TIMEOUT))]
        ra, rb, rc = get(a), get(b), get(c)
        assert ra == rb
        assert ra != rc
        assert ra[0] != ra[1]
        for s in (a, b):
            s.set_mode("biased")
        assert get(a) == get(b)
    finally:
        for s in (a, b, c):
            assert s.stop() == 0


def test_initial_mode_and_slow_seconds_options():
    s = Sim("--mode", "stuck", "--slow-seconds", "0.3")
    try:
        assert s.get_mode() == {"mode": "stuck", "delay": 0.3, "stuck_value": 0x5A}
        assert requests.get(s.url + "/random?bytes=5", timeout=TIMEOUT).content == b"Z" * 5
        s.set_mode("slow")
        t0 = time.monotonic()
        requests.get(s.url + "/random?bytes=5", timeout=TIMEOUT).raise_for_status()
        assert time.monotonic() - t0 >= 0.3
    finally:
        assert s.stop() == 0


def test_initial_mode_down():
    s = Sim("--mode", "down")
    try:
        assert refused(s.port)
        s.set_mode("ok")
        assert len(requests.get(s.url + "/random?bytes=5", timeout=TIMEOUT).content) == 5
    finally:
        assert s.stop() == 0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_clean_exit_on_signal(sig):
    s = Sim()
    # even with a slow request in flight
    s.set_mode("slow", delay=30)
    c = http.client.HTTPConnection("127.0.0.1", s.port, timeout=TIMEOUT)
    c.request("GET", "/random?bytes=1")
    time.sleep(0.1)
    t0 = time.monotonic()
    assert s.stop(sig) == 0
    assert time.monotonic() - t0 < 3
    c.close()


def test_sigusr1_cycles_modes():
    s = Sim()
    try:
        seen = []
        for _ in range(3):
            s.proc.send_signal(signal.SIGUSR1)
            deadline = time.monotonic() + 5
            prev = seen[-1] if seen else "ok"
            while s.get_mode()["mode"] == prev and time.monotonic() < deadline:
                time.sleep(0.05)
            seen.append(s.get_mode()["mode"])
        assert seen == ["stuck", "biased", "ok"]
    finally:
        assert s.stop() == 0
