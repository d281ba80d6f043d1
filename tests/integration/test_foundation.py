"""The foundation against the real stack: health, readiness through a
PostgreSQL outage, metrics, error shapes, request ids, logs."""
import json
import re
import time

import requests


def error_of(resp):
    body = resp.json()
    assert set(body) >= {"error"}, body
    assert set(body["error"]) >= {"code", "message"}, body
    assert resp.headers["Content-Type"].startswith("application/json")
    return body["error"]["code"]


def test_healthz(stack):
    r = requests.get(stack.url + "/healthz")
    assert r.status_code == 200
    assert r.json() == {"status": "ok"}
    assert r.headers["Cache-Control"] == "no-store"


def test_readyz_names_every_dependency(stack):
    r = requests.get(stack.url + "/readyz")
    assert r.status_code == 200
    assert r.json()["checks"] == {"database": "ok", "token": "ok", "entropy": "ok"}


def test_request_id_generated_and_echoed(stack):
    r = requests.get(stack.url + "/healthz")
    assert re.fullmatch(r"[0-9a-f]{32}", r.headers["X-Request-Id"])
    r = requests.get(stack.url + "/healthz", headers={"X-Request-Id": "trace-42"})
    assert r.headers["X-Request-Id"] == "trace-42"
    # A hostile id is replaced, not echoed.
    r = requests.get(stack.url + "/healthz", headers={"X-Request-Id": "a\"b{}"})
    assert re.fullmatch(r"[0-9a-f]{32}", r.headers["X-Request-Id"])


def test_unknown_route_and_wrong_method(stack):
    r = requests.get(stack.url + "/nope")
    assert r.status_code == 404 and error_of(r) == "not_found"
    r = requests.put(stack.url + "/v1/admin/tokens")
    assert r.status_code == 405 and error_of(r) == "method_not_allowed"
    assert sorted(r.headers["Allow"].split(", ")) == ["GET", "POST"]


def test_admin_auth_401_and_403(stack):
    r = stack.api("GET", "/v1/admin/status")
    assert r.status_code == 401 and error_of(r) == "unauthenticated"
    r = stack.api("GET", "/v1/admin/status", token="qkms_" + "0" * 64)
    assert r.status_code == 401 and error_of(r) == "unauthenticated"
    r = stack.api("GET", "/v1/admin/status", headers={"Authorization": "Basic Zm9vOmJhcg=="})
    assert r.status_code == 401
    r = stack.admin("POST", "/v1/admin/tokens", json={"name": "aud-1", "role": "auditor"})
    assert r.status_code == 201, r.text
    auditor = r.json()["token"]
    assert stack.api("GET", "/v1/admin/status", token=auditor).status_code == 200
    r = stack.api("GET", "/v1/admin/tokens", token=auditor)
    assert r.status_code == 403 and error_of(r) == "forbidden"
    r = stack.api("POST", "/v1/admin/tokens", token=auditor, json={"name": "x", "role": "admin"})
    assert r.status_code == 403


def test_malformed_oversized_and_wrong_type(stack):
    r = stack.admin("POST", "/v1/admin/tokens", data=b'{"name": "x", ',
                    headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and error_of(r) == "malformed_json"
    r = stack.admin("POST", "/v1/admin/tokens", data=b'["x"]',
                    headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and error_of(r) == "malformed_json"
    r = stack.admin("POST", "/v1/admin/tokens", data=b'{"name":"a","name":"b","role":"admin"}',
                    headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and error_of(r) == "malformed_json"
    r = stack.admin("POST", "/v1/admin/tokens", data=b'{"name":"\xff","role":"admin"}',
                    headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and error_of(r) == "malformed_json"
    r = stack.admin("POST", "/v1/admin/tokens", data=b'name=x',
                    headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 415 and error_of(r) == "unsupported_media_type"
    r = stack.admin("POST", "/v1/admin/tokens", data=b'{}')  # no content type
    assert r.status_code == 415
    big = b'{"name":"' + b"a" * 70000 + b'","role":"admin"}'
    r = stack.admin("POST", "/v1/admin/tokens", data=big,
                    headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and error_of(r) == "payload_too_large"

    # Chunked upload without Content-Length, growing past the cap.
    def chunks():
        for _ in range(40):
            yield b"x" * 4096
    r = stack.admin("POST", "/v1/admin/tokens", data=chunks(),
                    headers={"Content-Type": "application/json"})
    assert r.status_code == 413
    # The server still serves after all that.
    assert requests.get(stack.url + "/healthz").status_code == 200


def test_metrics_exposition(stack):
    requests.get(stack.url + "/healthz")
    stack.admin("GET", "/v1/admin/status")
    r = requests.get(stack.url + "/metrics")
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    text = r.text
    assert re.search(r'^qkms_http_requests_total\{route="healthz",status="200"\} [1-9]', text, re.M)
    assert re.search(r'^qkms_http_requests_total\{route="admin_status",status="200"\} [1-9]',
                     text, re.M)
    assert 'qkms_http_request_duration_seconds_bucket{route="healthz",le="+Inf"}' in text
    for name in ("qkms_db_pool_size", "qkms_db_pool_in_use", "qkms_pkcs11_sessions",
                 "qkms_pkcs11_operations_total", "qkms_pkcs11_errors_total",
                 "qkms_entropy_bytes_total{source=\"pkcs11\"}"):
        assert re.search("^" + re.escape(name) + r" \d", text, re.M), name
    # Every sample line parses as name{labels} value.
    for line in text.splitlines():
        if line and not line.startswith("#"):
            assert re.fullmatch(r'[a-z0-9_]+(\{[^}]*\})? [0-9.e+-]+', line), line


def test_status(stack):
    r = stack.admin("GET", "/v1/admin/status")
    assert r.status_code == 200
    s = r.json()
    assert s["master_key"] == {"label": "qkms-master-1", "version": 1}
    assert s["schema_version"] >= 1
    assert s["token"]["label"] == "qkms"
    assert re.fullmatch(r"[0-9a-f]{64}", s["config_hash"])


def test_logs_are_json_lines_without_secrets(stack):
    requests.get(stack.url + "/nope", headers={"X-Request-Id": "log-check-1"})
    time.sleep(0.2)
    logs = stack.logs()
    records = []
    for line in logs.splitlines():
        records.append(json.loads(line))  # every line is one JSON object
    assert all({"ts", "level", "msg"} <= set(r) for r in records)
    req = [r for r in records if r.get("req_id") == "log-check-1"]
    assert req and req[0]["status"] == 404 and req[0]["route"] == "unmatched"
    assert stack.admin_token not in logs
    assert stack.token_pin not in logs


def test_tokens_created_through_the_api_are_not_logged(stack):
    """Not only the bootstrap token: every token the API hands out, for
    every role and by every role that may create one, stays out of the log
    (the log line names the token, it does not show it)."""
    import hashlib
    made = []
    for role in ("admin", "operator", "auditor"):
        r = stack.admin("POST", "/v1/admin/tokens", json={"name": f"log-{role}", "role": role})
        assert r.status_code == 201, r.text
        made.append(r.json()["token"])
    r = stack.api("POST", "/v1/admin/tokens", token=made[0],
                  json={"name": "log-by-admin2", "role": "auditor", "expires_in_days": 1})
    assert r.status_code == 201, r.text
    made.append(r.json()["token"])
    time.sleep(0.2)
    logs = stack.logs()
    recs = [x for x in stack.log_records() if x.get("msg") == "admin token created"]
    assert {x["name"] for x in recs} >= {"log-admin", "log-operator", "log-auditor", "log-by-admin2"}
    assert [t for t in made if t in logs] == []
    # No token kmsd knows, by any name, is anywhere in its log.
    hashes = set(stack.psql("SELECT encode(token_hash, 'hex') FROM admin_tokens").split())
    leaked = [t for t in re.findall(r"qkms_[0-9a-f]{64}", logs)
              if hashlib.sha256(t.encode()).hexdigest() in hashes]
    assert leaked == []


def test_readyz_follows_postgresql_outage(stack):
    stack.stop_db()
    try:
        deadline = time.time() + 20
        while time.time() < deadline:
            r = requests.get(stack.url + "/readyz", timeout=10)
            if r.status_code == 503:
                break
            time.sleep(0.2)
        assert r.status_code == 503
        assert "database" in r.json()["error"]["down"]
        assert r.json()["checks"]["token"] == "ok"
        # Admin calls fail with 503, not a crash or 500.
        r = stack.admin("GET", "/v1/admin/status")
        assert r.status_code == 503 and error_of(r) == "unavailable"
        assert r.headers.get("Retry-After") == "1"
        assert requests.get(stack.url + "/healthz").status_code == 200
    finally:
        stack.start_db()
    deadline = time.time() + 30
    while time.time() < deadline:
        r = requests.get(stack.url + "/readyz", timeout=10)
        if r.status_code == 200:
            break
        time.sleep(0.3)
    assert r.status_code == 200, r.text
    assert stack.admin("GET", "/v1/admin/status").status_code == 200


def test_tls_listener(fresh_stack, tmp_path):
    """With tls_cert_file/tls_key_file the API speaks HTTPS only."""
    import datetime
    import subprocess
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    import ipaddress

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .sign(key, hashes.SHA256()))
    crt, kf = tmp_path / "kmsd.crt", tmp_path / "kmsd.key"
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    kf.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption()))
    st = fresh_stack
    st.start(extra_env={"QKMS_TLS_CERT_FILE": str(crt), "QKMS_TLS_KEY_FILE": str(kf)}, wait=False)
    url = f"https://127.0.0.1:{st.port}"
    deadline = time.time() + 60
    while True:
        try:
            r = requests.get(url + "/readyz", verify=str(crt), timeout=2)
            if r.status_code == 200:
                break
        except requests.exceptions.ConnectionError:
            pass
        assert time.time() < deadline and st.proc.poll() is None, st.logs()[-3000:]
        time.sleep(0.2)
    r = requests.get(url + "/v1/admin/status", verify=str(crt),
                     headers={"Authorization": "Bearer " + st.admin_token})
    assert r.status_code == 200
    # Plain HTTP is not served on the TLS port.
    try:
        r = requests.get(f"http://127.0.0.1:{st.port}/healthz", timeout=3)
        assert r.status_code >= 400
    except requests.exceptions.ConnectionError:
        pass
    # kmsctl verifies against --cacert.
    p = st.kmsctl("--addr", url, "--cacert", str(crt), "status", "--json", token=st.admin_token)
    assert p.returncode == 0, p.stderr
    p = st.kmsctl("--addr", url, "status", token=st.admin_token)
    assert p.returncode == 3  # untrusted certificate


def _new_token():
    import secrets
    return "qkms_" + secrets.token_hex(32)


def _write_token_file(path, tok, mode=0o600):
    import os
    tmp = path + ".new"
    with open(tmp, "w") as f:
        f.write(tok + "\n")
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def test_revoked_bootstrap_token_is_not_granted_again(fresh_stack):
    """Once the bootstrap token was revoked, neither a planted token file nor
    a deleted one gives admin again at the next start."""
    import os
    st = fresh_stack
    st.start()
    path = os.path.join(st.state, "admin.token")
    boot = st.admin_token
    r = st.admin("POST", "/v1/admin/tokens", json={"name": "admin2", "role": "admin"})
    assert r.status_code == 201, r.text
    admin2 = r.json()["token"]
    assert st.api("DELETE", "/v1/admin/tokens/bootstrap", token=admin2).status_code == 200
    # A planted file with a token kmsd never saw.
    planted = _new_token()
    _write_token_file(path, planted)
    st.restart()
    assert st.api("GET", "/v1/admin/status", token=planted).status_code == 401
    assert st.api("GET", "/v1/admin/status", token=boot).status_code == 401
    assert any("bootstrap token existed before" in rec["msg"] for rec in st.log_records())
    # No file at all: no new token is minted either.
    os.unlink(path)
    st.restart()
    assert not os.path.exists(path)
    rows = st.psql("SELECT name, revoked_at IS NOT NULL FROM admin_tokens ORDER BY id")
    assert rows.split() == ["bootstrap|t", "admin2|f"], rows
    assert st.api("GET", "/v1/admin/status", token=admin2).status_code == 200


def test_bootstrap_token_file_registered_until_a_bootstrap_token_exists(fresh_stack):
    """The first start registers the token an operator put in the file (the
    documented way to choose it); a later different file is not registered."""
    import os
    st = fresh_stack
    path = os.path.join(st.state, "admin.token")
    chosen = _new_token()
    _write_token_file(path, chosen)
    st.start()
    assert st.api("GET", "/v1/admin/status", token=chosen).status_code == 200
    other = _new_token()
    _write_token_file(path, other)
    st.restart()
    assert st.api("GET", "/v1/admin/status", token=other).status_code == 401
    assert st.api("GET", "/v1/admin/status", token=chosen).status_code == 200


def test_bootstrap_token_file_must_be_private_and_ours(fresh_stack):
    """kmsd refuses to start with a token file others could have written."""
    import os
    import pwd
    st = fresh_stack
    path = os.path.join(st.state, "admin.token")
    tok = _new_token()
    cases = [("must have mode 0600", lambda: os.chmod(path, 0o644)),
             ("must have mode 0600", lambda: os.chmod(path, 0o660))]
    if os.geteuid() == 0:
        nobody = pwd.getpwnam("nobody").pw_uid
        cases.append(("is not owned by kmsd's user", lambda: os.chown(path, nobody, -1)))
    for why, spoil in cases:
        _write_token_file(path, tok)
        spoil()
        proc = st.start(wait=False)
        assert proc.wait(timeout=60) != 0
        st.stop()
        assert f"admin.token {why}" in st.logs(), st.logs()[-2000:]
    # The same file, made private again, is accepted.
    _write_token_file(path, tok)
    st.start()
    assert st.api("GET", "/v1/admin/status", token=tok).status_code == 200
