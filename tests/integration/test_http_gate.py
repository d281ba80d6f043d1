"""The HTTP gate (issue 12): what kmsd decides before it reads a body, the
client-address limit before authentication, client bytes that are not
UTF-8 in errors and logs, and the requests libmicrohttpd answers itself.

Each test here failed against the server before the fix it covers.
"""
import json
import os
import re
import socket
import threading
import time

import pytest
import requests

from conftest import running_stack, _finish
from helpers import make_device, post, uid

# 31 ASCII bytes then é (2 bytes): a %.32s cut falls inside the é.
CUT_KEY = "a" * 31 + "é"


@pytest.fixture(scope="module")
def st():
    s = running_stack("gate")
    yield s
    _finish(s)


def raw_http(port, data, timeout=10):
    """Sends data (bytes) as is and returns everything the server answers
    until it closes the connection or timeout passes."""
    out = b""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        # The server may answer (414, 431) and close before it read all we
        # send: its close then resets the connection, and sending or
        # shutting down fails. What it answered first is still queued here.
        try:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError, OSError):
            pass
        try:
            while True:
                b = s.recv(65536)
                if not b:
                    break
                out += b
        except (socket.timeout, ConnectionResetError):
            pass
    return out


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def post_big(port, path, size, token=None):
    """POSTs size bytes with Content-Length, sending as long as the server
    reads; returns the status line's code (0 when none came)."""
    head = (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {size}\r\n")
    if token:
        head += f"Authorization: Bearer {token}\r\n"
    head += "\r\n"
    chunk = b"[" * 65536
    answer = b""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(head.encode())
        sent = 0
        try:
            while sent < size:
                n = min(len(chunk), size - sent)
                s.sendall(chunk[:n])
                sent += n
        except (BrokenPipeError, ConnectionResetError):
            pass
        try:
            while True:
                b = s.recv(65536)
                if not b:
                    break
                answer += b
                if b"\r\n\r\n" in answer:
                    break
        except (ConnectionResetError, socket.timeout):
            pass
    m = re.match(rb"HTTP/1\.[01] (\d{3}) ", answer)
    return int(m.group(1)) if m else 0


# -- item 1: no large bodies without credentials ------------------------------

def test_unauthenticated_import_bodies_stay_bounded(st):
    """64 connections each sending 4 MiB to the import route without a token:
    every answer is 401 or 413 and kmsd's resident memory does not grow by
    the bodies (it buffered 256 MiB before the gate authenticated first)."""
    pid = st.proc.pid
    before = rss_kib(pid)
    codes = []
    peak = [before]
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            peak[0] = max(peak[0], rss_kib(pid))
            time.sleep(0.02)

    def one():
        codes.append(post_big(st.port, "/v1/admin/devices/import", 4 << 20))

    w = threading.Thread(target=watch)
    w.start()
    ts = [threading.Thread(target=one) for _ in range(64)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(120)
    stop.set()
    w.join()
    assert len(codes) == 64
    # 0: the server answered and closed while we were still sending, and
    # the reset swallowed the answer; never a 200.
    assert set(codes) <= {401, 413, 0}, codes
    assert codes.count(401) + codes.count(413) >= 32, codes
    grown_mib = (peak[0] - before) / 1024
    print(f"kmsd RSS before {before} KiB, peak {peak[0]} KiB (+{grown_mib:.1f} MiB)")
    assert grown_mib < 64, f"kmsd grew by {grown_mib:.0f} MiB for unauthenticated bodies"


def test_wrong_role_gets_no_large_cap(st):
    """An auditor may not import: 403 at once, the body is not read."""
    r = st.admin("POST", "/v1/admin/tokens", json={"name": uid("aud"), "role": "auditor"})
    assert r.status_code == 201, r.text
    code = post_big(st.port, "/v1/admin/devices/import", 4 << 20, token=r.json()["token"])
    assert code in (403, 0)
    assert code == 403 or st.proc.poll() is None


def test_authenticated_import_keeps_its_cap(st):
    """The import route still takes more than http_max_body (64 KiB) from an
    operator: 600 rows."""
    rows = [{"device_id": uid("IMP") + "-" + "x" * 100, "type": "vehicle", "group": "imp"}
            for _ in range(600)]
    body = json.dumps({"devices": rows})
    assert len(body) > 65536
    r = st.admin("POST", "/v1/admin/devices/import", data=body,
                 headers={"Content-Type": "application/json"})
    assert r.status_code == 200, r.text[:300]
    assert r.json()["created"] == 600


def test_content_length_beyond_64_bits(st):
    """A Content-Length that does not fit in 64 bits never reaches a handler:
    libmicrohttpd 0.9.75 answers 413 itself and closes the connection. It
    writes its header block twice (a library defect, docs/api.md "Answers
    from the HTTP library"); the status is still 413, the connection is
    closed (no second request can be smuggled behind it) and kmsd serves on."""
    out = raw_http(st.port, b"POST /v1/admin/tokens HTTP/1.1\r\nHost: x\r\n"
                            b"Content-Length: 99999999999999999999\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 413 "), out[:200]
    assert b"Connection: close" in out
    assert requests.get(st.url + "/healthz", timeout=5).status_code == 200


# -- item 12: the client limit comes before authentication -------------------

def test_guessed_tokens_are_rate_limited_before_lookup():
    s = running_stack("gate-rl", {"QKMS_RATE_LIMIT_CLIENT": "1", "QKMS_RATE_LIMIT_CLIENT_BURST": "3"})
    try:
        codes = [s.api("GET", "/v1/admin/status", token="qkms_" + "0" * 64).status_code
                 for _ in range(5)]
        assert codes[:3] == [401, 401, 401], codes
        assert 429 in codes[3:], codes
        r = s.api("GET", "/v1/admin/status", token="qkms_" + "0" * 64)
        assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limited"
        assert int(r.headers["Retry-After"]) >= 1
    finally:
        _finish(s)


# -- item 14: bytes that are not UTF-8 ----------------------------------------

def cut_key_body():
    return ('{"' + CUT_KEY + '":1}').encode()


@pytest.mark.parametrize("path", ["/v1/sessions/key", "/v1/sessions/end"])
def test_device_routes_quote_cut_keys(st, path):
    r = requests.post(st.url + path, data=cut_key_body(),
                      headers={"Content-Type": "application/json"}, timeout=10)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["code"] != "internal"
    assert "aaaa" in err["message"]


@pytest.mark.parametrize("path", ["/v1/admin/devices", "/v1/admin/policies"])
def test_admin_creates_quote_cut_keys(st, path):
    r = st.admin("POST", path, data=cut_key_body(), headers={"Content-Type": "application/json"})
    assert 400 <= r.status_code < 500, r.text
    assert r.json()["error"]["code"] != "internal"


def test_inner_request_key_cut(st):
    """A key of the encrypted inner request, quoted in the refusal."""
    pol = {"name": uid("p"), "type_a": "vehicle", "type_b": "encryptor"}
    assert st.admin("POST", "/v1/admin/policies", json=pol).status_code == 201
    veh = make_device(st, "vehicle")
    enc = make_device(st, "encryptor")
    req = veh._request("key", {"session_id": uid(), "peer_id": enc.device_id,
                               "ts": int(time.time()), CUT_KEY: 1}, 0)
    r = post(st, req)
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["code"] == "invalid_request"
    assert err["message"] == "unknown field '" + "a" * 31 + "\ufffd'"


def test_entropy_source_name_not_utf8(st):
    r = st.admin("POST", "/v1/admin/entropy/sources/%ff/enable")
    assert r.status_code == 404, r.text
    assert r.json()["error"]["code"] == "not_found"


def test_import_row_with_cut_id_is_in_results(st):
    bad = "b" * 127 + "é"  # longer than a device ID may be, cut inside é
    r = st.admin("POST", "/v1/admin/devices/import",
                 json={"devices": [{"device_id": bad, "type": "vehicle"}]})
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["created"] == 0 and doc["failed"] == 1
    assert len(doc["results"]) == 1
    row = doc["results"][0]
    assert row["status"] == "error" and row["error"]["code"]
    assert row["device_id"].startswith("b" * 100)


def test_log_line_survives_invalid_utf8_path(st):
    """The request line for a path with a 0xff byte keeps its fields, the
    path with U+FFFD in place of the byte, and says which field changed."""
    rid = uid("rid")
    out = raw_http(st.port, f"GET /v1/\xff{rid} HTTP/1.1\r\nHost: x\r\nX-Request-Id: {rid}\r\n"
                            f"Connection: close\r\n\r\n".encode("latin-1"))
    assert out.startswith(b"HTTP/1.1 404"), out[:200]
    deadline = time.time() + 5
    rec = None
    while time.time() < deadline and rec is None:
        rec = next((r for r in st.log_records() if r.get("req_id") == rid), None)
        time.sleep(0.05)
    assert rec is not None, "request line lost"
    assert rec["status"] == 404 and rec["method"] == "GET" and rec["route"] == "unmatched"
    assert rec["path"] == f"/v1/\ufffd{rid}"
    assert rec["invalid_utf8"] == ["path"]


def test_log_latency_has_fixed_precision(st):
    assert st.api("GET", "/v1/admin/status", token=st.admin_token).status_code == 200
    lines = [l for l in st.logs().splitlines() if '"msg":"request"' in l]
    assert lines
    for l in lines:
        m = re.search(r'"ms":([0-9.eE+-]+)', l)
        assert m, l
        assert len(m.group(1).split(".")[-1]) <= 3 or "." not in m.group(1), l


# -- item 15: limits kmsd checks itself, and what the library answers ---------

def test_long_path_is_json_414(st):
    r = requests.get(st.url + "/v1/admin/" + "x" * 2000, timeout=10)
    assert r.status_code == 414
    assert r.json()["error"]["code"] == "uri_too_long"


def test_large_headers_are_json_431(st):
    r = requests.get(st.url + "/healthz", headers={"X-Pad": "y" * 9000}, timeout=10)
    assert r.status_code == 431
    assert r.json()["error"]["code"] == "headers_too_large"


@pytest.mark.parametrize("request_bytes,status", [
    (b"GET /" + b"x" * 70000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", (414, 431)),
    (b"GET /healthz HTTP/9.9\r\nHost: x\r\n\r\n", (505,)),
    (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", (505, 400)),
    (b"POST /v1/sessions/key HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", (400,)),
])
def test_library_answers_documented(st, request_bytes, status):
    """What libmicrohttpd answers itself (docs/api.md lists these): one
    well-formed status line from the documented set, and kmsd keeps serving."""
    out = raw_http(st.port, request_bytes)
    m = re.match(rb"HTTP/1\.[01] (\d{3}) ", out)
    assert m, out[:200]
    assert int(m.group(1)) in status, out[:200]
    assert out.count(b"HTTP/1.") == 1, out[:400]
    assert requests.get(st.url + "/healthz", timeout=5).status_code == 200
