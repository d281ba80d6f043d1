"""Mutual TLS on the device listener (issue 15) against real kmsd, PostgreSQL
and SoftHSM, with curl, python3-requests and qkms-device as the clients and
OpenSSL's command line for the CRL: certificates issued by the platform CA
and bound ones from another CA (tls_client_ca_file with its CRLs) get keys;
no certificate, an unknown issuer, a revoked, expired or not-on-record
certificate, and another device's certificate with this device's envelope
are refused with 401 and a log line that says why; SPKI pinning refuses a
server key that is not the pinned one."""
import base64
import datetime
import hashlib
import json
import os
import subprocess
import time
import uuid

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from conftest import KMSCTL, ROOT, Stack, _finish, free_port, wait_for
from helpers import PEM, OtherCA, key_pem, self_signed_server, uid
from qkms_proto_py import Device

QKMSDEV = os.environ.get("QKMS_DEVICE", os.path.join(ROOT, "build/asan/bin/qkms-device"))
NOW = datetime.datetime.now(datetime.timezone.utc)


class Mtls:
    """A stack whose device listener speaks TLS and asks for client
    certificates (mode), its admin listener plain HTTP on st.port."""

    def __init__(self, st, tmp, mode):
        self.st, self.tmp = st, tmp
        self.dport = free_port()
        self.crt, self.key, self.server_cert = self_signed_server(tmp)
        self.fleet = OtherCA(tmp)
        self.group = "g-" + uuid.uuid4().hex[:6]
        self.start(mode)
        r = st.admin("POST", "/v1/admin/policies", json={
            "name": "veh-enc", "type_a": "vehicle", "type_b": "encryptor"})
        assert r.status_code == 201, r.text

    def env(self, mode):
        return {"QKMS_LISTEN_PORT": str(self.dport), "QKMS_ADMIN_LISTEN_ADDR": "127.0.0.1",
                "QKMS_ADMIN_LISTEN_PORT": str(self.st.port), "QKMS_TLS_CERT_FILE": self.crt,
                "QKMS_TLS_KEY_FILE": self.key, "QKMS_TLS_CLIENT_AUTH": mode,
                "QKMS_TLS_CLIENT_CA_FILE": self.fleet.ca_file,
                "QKMS_TLS_CLIENT_CRL_FILE": self.fleet.crl_file}

    def start(self, mode):
        self.mode = mode
        self.st.start(extra_env=self.env(mode))

    def restart(self, mode):
        rc = self.st.stop()
        assert rc == 0, self.st.logs()[-3000:]
        self.start(mode)

    @property
    def url(self):
        return f"https://127.0.0.1:{self.dport}"

    def device(self, type_="vehicle"):
        """A registered device (Device, from its plaintext fill) with a
        platform-issued certificate: (device, cert file, key file, serial)."""
        did = uid(type_[:3].upper())
        r = self.st.admin("POST", "/v1/admin/devices",
                          json={"device_id": did, "type": type_, "group": self.group})
        assert r.status_code == 201, r.text
        r = self.st.admin("POST", f"/v1/admin/devices/{did}/fill", json={"plaintext": True})
        assert r.status_code == 200, r.text
        dev = Device.from_fill(r.json()["plaintext"])
        dev.fill = r.json()["plaintext"]
        crt, kf, serial = self.issue(did)
        return dev, crt, kf, serial

    def issue(self, did, **extra):
        key = ec.generate_private_key(ec.SECP256R1())
        csr = (x509.CertificateSigningRequestBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, did)]))
               .sign(key, hashes.SHA256()))
        r = self.st.admin("POST", f"/v1/admin/devices/{did}/certificates",
                          json={"csr": csr.public_bytes(PEM).decode(), **extra})
        assert r.status_code == 201, r.text
        return self.files(did + "-" + r.json()["serial"], r.json()["certificate"].encode(),
                          key) + (r.json()["serial"],)

    def files(self, stem, cert_pem, key):
        crt = os.path.join(self.tmp, stem + ".crt")
        kf = os.path.join(self.tmp, stem + ".key")
        with open(crt, "wb") as f:
            f.write(cert_pem)
        with open(kf, "wb") as f:
            f.write(key_pem(key))
        return crt, kf

    def post(self, req, cert=None, session=None, raw=None):
        return (session or requests).post(
            self.url + req.path, data=raw if raw is not None else req.raw,
            headers={"Content-Type": "application/json"}, cert=cert, verify=self.crt,
            timeout=30)

    def refusals(self, code):
        return [r for r in self.st.log_records()
                if r.get("msg") == "client certificate refused" and r.get("code") == code]


@pytest.fixture(scope="module")
def mt(tmp_path_factory):
    st = Stack("mtls")
    try:
        m = Mtls(st, str(tmp_path_factory.mktemp("mtls")), "require")
    except BaseException:
        _finish(st)
        raise
    yield m
    _finish(st)


def pair(mt):
    return mt.device("vehicle"), mt.device("encryptor")


def sid():
    return "S-" + uuid.uuid4().hex


def error(r):
    return r.json()["error"]["code"]


# ---- keys over mutual TLS ----------------------------------------------------

def test_curl_and_requests_with_certificates_get_one_key(mt):
    (a, acrt, akey, _), (b, bcrt, bkey, _) = pair(mt)
    s = sid()
    req = a.key_request(s, b.device_id)
    p = subprocess.run(["curl", "-sS", "--cacert", mt.crt, "--cert", acrt, "--key", akey,
                        "-H", "Content-Type: application/json", "--data-binary", "@-",
                        "-w", "\n%{http_code}", mt.url + req.path],
                       input=req.raw, capture_output=True, timeout=30)
    body, _, status = p.stdout.decode().rpartition("\n")
    assert status == "200", (p.stderr, body)
    ka = a.open_key_response(req, json.loads(body))
    req = b.key_request(s, a.device_id)
    r = mt.post(req, cert=(bcrt, bkey))
    assert r.status_code == 200, r.text
    assert b.open_key_response(req, r.json()).key == ka.key


def test_session_end_over_mtls(mt):
    (a, acrt, akey, _), (b, bcrt, bkey, _) = pair(mt)
    s = sid()
    req = a.key_request(s, b.device_id)
    assert mt.post(req, cert=(acrt, akey)).status_code == 200
    req = a.end_request(s)
    r = mt.post(req, cert=(acrt, akey))
    assert r.status_code == 200, r.text
    assert r.json()["ended"] is True


def test_qkms_device_over_mtls_with_pinned_server_key(mt):
    (a, acrt, akey, _), (b, bcrt, bkey, _) = pair(mt)
    spki = mt.server_cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    pin = base64.b64encode(hashlib.sha256(spki).digest()).decode()
    s = sid()
    outs = []
    for dev, crt, kf, peer in ((a, acrt, akey, b), (b, bcrt, bkey, a)):
        fill = os.path.join(mt.tmp, dev.device_id + ".fill.json")
        with open(fill, "w") as f:
            json.dump(dev.fill, f)
        p = subprocess.run([QKMSDEV, "key", "--url", mt.url, "--fill", fill, "--session", s,
                            "--peer", peer.device_id, "--cacert", mt.crt, "--cert", crt,
                            "--key", kf, "--pin-sha256", pin, "--json"],
                           capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stderr
        outs.append(json.loads(p.stdout))
    assert outs[0]["key"] == outs[1]["key"]
    # A pin that is not the server's key: refused before anything is sent.
    other = base64.b64encode(hashlib.sha256(b"another key").digest()).decode()
    p = subprocess.run([QKMSDEV, "key", "--url", mt.url, "--fill", fill, "--session", sid(),
                        "--peer", a.device_id, "--cacert", mt.crt, "--cert", bcrt, "--key", bkey,
                        "--pin-sha256", other], capture_output=True, text=True, timeout=60)
    assert p.returncode == 3, (p.returncode, p.stderr)
    assert "pinned" in p.stderr.lower() or "public key" in p.stderr.lower(), p.stderr
    # Without a certificate on a require listener: refused (exit 4, 401).
    p = subprocess.run([QKMSDEV, "key", "--url", mt.url, "--fill", fill, "--session", sid(),
                        "--peer", a.device_id, "--cacert", mt.crt, "--json"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 4, (p.returncode, p.stdout, p.stderr)
    assert "client_certificate_required" in p.stdout + p.stderr


def test_qkms_device_tls_options_are_checked(mt):
    (a, _, _, _) = mt.device("vehicle")
    fill = os.path.join(mt.tmp, a.device_id + ".fill.json")
    with open(fill, "w") as f:
        json.dump(a.fill, f)
    base = [QKMSDEV, "key", "--fill", fill, "--session", sid(), "--peer", "X"]
    for extra, what in (
            (["--url", mt.url, "--key", "k.pem"], "--key goes with --cert"),
            (["--url", "http://127.0.0.1:1", "--cert", "c.pem"], "https://"),
            (["--url", mt.url, "--pin-sha256", "abc"], "--pin-sha256"),
            (["--url", mt.url, "--pin-sha256", "A" * 43 + "=;"], "--pin-sha256")):
        p = subprocess.run(base + extra, capture_output=True, text=True, timeout=30)
        assert p.returncode == 2 and what in p.stderr, (extra, p.returncode, p.stderr)


# ---- refusals ------------------------------------------------------------------

def test_no_certificate_on_a_require_listener_is_401(mt):
    (a, _, _, _), (b, _, _, _) = pair(mt)
    r = mt.post(a.key_request(sid(), b.device_id))
    assert r.status_code == 401 and error(r) == "client_certificate_required", r.text
    assert mt.refusals("client_certificate_required")
    # The probes and the CA's certificates need none.
    for path in ("/healthz", "/readyz", "/v1/ca", "/v1/ca/crl"):
        r = requests.get(mt.url + path, verify=mt.crt, timeout=10)
        assert r.status_code == 200, (path, r.text)


def test_another_devices_certificate_with_this_envelope_is_401_and_audited(mt):
    (a, acrt, akey, aserial), (b, _, _, _) = pair(mt)
    (c, _, _, _) = mt.device("vehicle")
    # c's envelope (valid under c's device key) over a's certificate.
    r = mt.post(c.key_request(sid(), b.device_id), cert=(acrt, akey))
    assert r.status_code == 401 and error(r) == "certificate_mismatch", r.text
    ev = mt.st.admin("GET", f"/v1/admin/audit?type=certificate.mismatch&device={a.device_id}")
    assert ev.status_code == 200, ev.text
    rows = ev.json()["events"]
    assert len(rows) == 1, rows
    assert rows[0]["actor"] == a.device_id
    assert rows[0]["detail"] == {"serial": aserial, "claimed_device": c.device_id}
    line = [x for x in mt.st.log_records() if x.get("certificate_device") == a.device_id
            and x.get("device_id") == c.device_id]
    assert line and line[-1]["auth_failure"] == "the client certificate names another device"
    # And a's own envelope over a's certificate still works.
    assert mt.post(a.key_request(sid(), b.device_id), cert=(acrt, akey)).status_code == 200


def test_revoked_certificate_is_401_at_once_and_in_the_crl(mt, tmp_path):
    (a, acrt, akey, aserial), (b, _, _, _) = pair(mt)
    with requests.Session() as ses:
        # One keep-alive connection: the revocation must reach it too.
        r = mt.post(a.key_request(sid(), b.device_id), cert=(acrt, akey), session=ses)
        assert r.status_code == 200, r.text
        r = mt.st.admin("POST", f"/v1/admin/devices/{a.device_id}/certificates/{aserial}/revoke",
                        json={"reason": "keyCompromise"})
        assert r.status_code == 200, r.text
        r = mt.post(a.key_request(sid(), b.device_id), cert=(acrt, akey), session=ses)
        assert r.status_code == 401 and error(r) == "client_certificate_refused", r.text
        assert "revoked" in r.json()["error"]["message"]
    crl = tmp_path / "crl.der"
    crl.write_bytes(requests.get(mt.url + "/v1/ca/crl", verify=mt.crt, timeout=10).content)
    p = subprocess.run(["openssl", "crl", "-inform", "DER", "-in", str(crl), "-noout", "-text"],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    assert aserial.upper() in p.stdout.replace(":", "").upper()
    assert "Key Compromise" in p.stdout


def test_revoked_device_certificate_is_401(mt):
    (a, acrt, akey, _), (b, _, _, _) = pair(mt)
    r = mt.st.admin("POST", f"/v1/admin/devices/{a.device_id}/suspend")
    assert r.status_code == 200, r.text
    r = mt.post(a.key_request(sid(), b.device_id), cert=(acrt, akey))
    assert r.status_code == 401 and error(r) == "client_certificate_refused", r.text
    assert "not active" in r.json()["error"]["message"]


def test_unknown_issuer_is_401_with_the_reason_logged(mt):
    (a, _, _, _), (b, _, _, _) = pair(mt)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, a.device_id)])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(NOW - datetime.timedelta(minutes=1))
            .not_valid_after(NOW + datetime.timedelta(days=1))
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False)
            .sign(key, hashes.SHA256()))
    crt, kf = mt.files("self-" + a.device_id, cert.public_bytes(PEM), key)
    r = mt.post(a.key_request(sid(), b.device_id), cert=(crt, kf))
    assert r.status_code == 401 and error(r) == "client_certificate_refused", r.text
    sha = hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()
    lines = [x for x in mt.refusals("client_certificate_refused")
             if x.get("certificate_sha256") == sha]
    assert lines and "self" in lines[-1]["reason"].lower(), lines


def test_platform_certificate_not_on_record_is_401(mt):
    """A certificate the platform CA signed but that is not in the
    database (a restored backup's, say) names nobody."""
    (a, acrt, akey, aserial), (b, _, _, _) = pair(mt)
    mt.st.psql(f"DELETE FROM certificates WHERE serial = '{aserial}'")
    r = mt.post(a.key_request(sid(), b.device_id), cert=(acrt, akey))
    assert r.status_code == 401 and error(r) == "client_certificate_refused", r.text
    assert "not on record" in r.json()["error"]["message"]


def bind(mt, did, cert):
    r = mt.st.admin("POST", f"/v1/admin/devices/{did}/certificates",
                    json={"certificate": cert.public_bytes(PEM).decode()})
    assert r.status_code == 201, r.text
    return r.json()["serial"]


def test_bound_certificate_of_a_trusted_issuer_gets_keys_until_its_crl_revokes_it(mt):
    (a, _, _, _), (b, bcrt, bkey, _) = pair(mt)
    cert, key = mt.fleet.issue(a.device_id)
    bind(mt, a.device_id, cert)
    crt, kf = mt.files("bound-" + a.device_id, cert.public_bytes(PEM), key)
    s = sid()
    req = a.key_request(s, b.device_id)
    r = mt.post(req, cert=(crt, kf))
    assert r.status_code == 200, r.text
    # The other CA revokes it in its CRL: kmsd reads the file again.
    mt.fleet.revoked.append(cert.serial_number)
    mt.fleet.write_crl()

    def refused():
        r = mt.post(a.key_request(sid(), b.device_id), cert=(crt, kf))
        return r.status_code == 401 and "revoked" in r.json()["error"]["message"]

    assert wait_for(refused, timeout=30, interval=1), mt.st.logs()[-2000:]
    assert any(x.get("msg") == "client CRL file reloaded" for x in mt.st.log_records())


def test_bound_certificate_refused_once_expired_on_a_live_connection(mt):
    (a, _, _, _), (b, _, _, _) = pair(mt)
    soon = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=4)
    cert, key = mt.fleet.issue(a.device_id, not_after=soon)
    bind(mt, a.device_id, cert)
    crt, kf = mt.files("short-" + a.device_id, cert.public_bytes(PEM), key)
    with requests.Session() as ses:
        r = mt.post(a.key_request(sid(), b.device_id), cert=(crt, kf), session=ses)
        assert r.status_code == 200, r.text
        time.sleep(max(0.0, (soon - datetime.datetime.now(datetime.timezone.utc))
                       .total_seconds()) + 1.5)
        r = mt.post(a.key_request(sid(), b.device_id), cert=(crt, kf), session=ses)
        assert r.status_code == 401 and error(r) == "client_certificate_refused", r.text
        assert "expired" in r.json()["error"]["message"]


# ---- optional mode -------------------------------------------------------------

def test_optional_mode_binds_when_a_certificate_comes(mt):
    (a, acrt, akey, _), (b, _, _, _) = pair(mt)
    (c, _, _, _) = mt.device("vehicle")
    mt.restart("optional")
    try:
        # Without a certificate: the envelope alone, as before.
        r = mt.post(a.key_request(sid(), b.device_id))
        assert r.status_code == 200, r.text
        # With one: it must authenticate, and name the envelope's device.
        assert mt.post(a.key_request(sid(), b.device_id), cert=(acrt, akey)).status_code == 200
        r = mt.post(c.key_request(sid(), b.device_id), cert=(acrt, akey))
        assert r.status_code == 401 and error(r) == "certificate_mismatch", r.text
        ghost = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ghost")])
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                .public_key(ghost.public_key()).serial_number(1)
                .not_valid_before(NOW - datetime.timedelta(minutes=1))
                .not_valid_after(NOW + datetime.timedelta(days=1)).sign(ghost, hashes.SHA256()))
        crt, kf = mt.files("ghost", cert.public_bytes(PEM), ghost)
        r = mt.post(a.key_request(sid(), b.device_id), cert=(crt, kf))
        assert r.status_code == 401 and error(r) == "client_certificate_refused", r.text
    finally:
        mt.restart("require")


def test_client_auth_needs_a_tls_listener(tmp_path):
    st = Stack("mtls-conf")
    try:
        st.start(extra_env={"QKMS_TLS_CLIENT_AUTH": "require"}, wait=False)
        assert st.proc.wait(timeout=60) != 0
        assert "tls_client_auth require needs a TLS device listener" in st.logs()
        st.proc = None
        bad = tmp_path / "bad.pem"
        bad.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
        crt, kf, _ = self_signed_server(str(tmp_path))
        st.start(extra_env={"QKMS_TLS_CERT_FILE": crt, "QKMS_TLS_KEY_FILE": kf,
                            "QKMS_TLS_CLIENT_AUTH": "optional",
                            "QKMS_TLS_CLIENT_CA_FILE": str(bad)}, wait=False)
        assert st.proc.wait(timeout=60) != 0
        assert "tls_client_ca_file" in st.logs()
        st.proc = None
    finally:
        _finish(st)


# ---- kmsd's own server certificate ---------------------------------------------

def test_kmsd_issues_its_server_certificate_from_the_platform_ca(tmp_path):
    st = Stack("mtls-srv")
    try:
        dport = free_port()
        crt, kf = str(tmp_path / "tls" / "kmsd.crt"), str(tmp_path / "tls" / "kmsd.key")
        os.makedirs(os.path.dirname(crt))
        env = {"QKMS_LISTEN_PORT": str(dport), "QKMS_ADMIN_LISTEN_ADDR": "127.0.0.1",
               "QKMS_ADMIN_LISTEN_PORT": str(st.port), "QKMS_TLS_CERT_FILE": crt,
               "QKMS_TLS_KEY_FILE": kf, "QKMS_TLS_SERVER_NAMES": "localhost, 127.0.0.1,::1"}
        st.start(extra_env=env)
        ca = tmp_path / "ca.pem"
        ca.write_text(requests.get(st.url + "/v1/ca", timeout=10).text)
        # A device trusts the CA it got from GET /v1/ca, and nothing else.
        r = requests.get(f"https://127.0.0.1:{dport}/healthz", verify=str(ca), timeout=10)
        assert r.status_code == 200
        r = requests.get(f"https://localhost:{dport}/healthz", verify=str(ca), timeout=10)
        assert r.status_code == 200
        p = subprocess.run(["openssl", "verify", "-CAfile", str(ca), "-purpose", "sslserver", crt],
                           capture_output=True, text=True, timeout=30)
        assert p.returncode == 0, p.stdout + p.stderr
        assert os.stat(kf).st_mode & 0o777 == 0o600
        with open(crt, "rb") as f:
            cert = x509.load_pem_x509_certificate(f.read())
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert sorted(san.get_values_for_type(x509.DNSName)) == ["localhost"]
        assert sorted(str(a) for a in san.get_values_for_type(x509.IPAddress)) == ["127.0.0.1", "::1"]
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
        days = (cert.not_valid_after - cert.not_valid_before).days
        assert 364 <= days <= 365
        serial = format(cert.serial_number, "x")
        ev = st.admin("GET", "/v1/admin/audit?type=ca.server_certificate_issued").json()["events"]
        assert len(ev) == 1 and ev[0]["actor"] == "kmsd"
        assert ev[0]["detail"]["names"] == ["localhost", "127.0.0.1", "::1"]
        assert int(ev[0]["detail"]["serial"], 16) == cert.serial_number
        # A restart keeps a certificate that is still good.
        rc = st.stop()
        assert rc == 0
        st.start(extra_env=env)
        with open(crt, "rb") as f:
            assert format(x509.load_pem_x509_certificate(f.read()).serial_number, "x") == serial
        assert any(x.get("msg") == "server certificate kept" for x in st.log_records())
        # Other names: a new one.
        assert st.stop() == 0
        st.start(extra_env=dict(env, QKMS_TLS_SERVER_NAMES="127.0.0.1"))
        with open(crt, "rb") as f:
            cert2 = x509.load_pem_x509_certificate(f.read())
        assert cert2.serial_number != cert.serial_number
        line = [x for x in st.log_records()
                if x.get("msg") == "server certificate issued by the platform CA"][-1]
        assert line["reason"] == "other names than tls_server_names"
        assert line["names"] == ["127.0.0.1"] and "log_format_error" not in line, line
        # A name that is neither: kmsd does not start.
        assert st.stop() == 0
        st.start(extra_env=dict(env, QKMS_TLS_SERVER_NAMES="bad name!"), wait=False)
        assert st.proc.wait(timeout=60) != 0
        assert "neither a DNS name nor an IP address" in st.logs()
        st.proc = None
    finally:
        _finish(st)


# ---- key pairs made by the platform, sealed to a station -------------------------

def test_generated_key_pair_comes_only_sealed_to_the_station(mt, tmp_path):
    from cryptography.hazmat.primitives.asymmetric import x25519
    import fillpkg_py
    (a, _, _, _), (b, _, _, _) = pair(mt)
    station = x25519.X25519PrivateKey.generate()
    pub, priv, pkg = tmp_path / "station.pub", tmp_path / "station.pem", tmp_path / "id.qkfp"
    pub.write_bytes(station.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    priv.write_bytes(key_pem(station))
    before = int(mt.st.psql(f"SELECT count(*) FROM certificates WHERE device_id = '{a.device_id}'"))
    env = dict(mt.st.env, KMS_ADDR=mt.st.url, KMS_TOKEN=mt.st.admin_token)
    p = subprocess.run([KMSCTL, "device", "cert", "issue", a.device_id, "--generate",
                        "--recipient-pub", str(pub), "--out", str(pkg), "--validity", "30",
                        "--json"], env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    rec = json.loads(p.stdout)
    assert rec["key_generated"] is True and rec["package_format"] == "qkms-tls-identity/1"
    assert "package" not in rec and rec["recipient_fingerprint"] == fillpkg_py.fingerprint(
        station.public_key())
    # The second implementation opens it; the key is the certificate's.
    doc = json.loads(fillpkg_py.open_package(station, pkg.read_bytes()))
    assert doc["format"] == "qkms-tls-identity/1" and doc["device_id"] == a.device_id
    assert doc["serial"] == rec["serial"] and doc["certificate"] == rec["certificate"]
    cert = x509.load_pem_x509_certificate(doc["certificate"].encode())
    key = serialization.load_pem_private_key(doc["private_key"].encode(), None)
    assert key.public_key().public_numbers() == cert.public_key().public_numbers()
    assert (cert.not_valid_after - cert.not_valid_before).days in (29, 30)
    assert "qkms platform CA" in doc["chain"] or "BEGIN CERTIFICATE" in doc["chain"]
    # kmsctl opens it the same way, and checks the pair.
    p = subprocess.run([KMSCTL, "fill", "open", "--key", str(priv), str(pkg), "--json"],
                       env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and json.loads(p.stdout) == doc, p.stderr
    # The identity authenticates over mutual TLS.
    crt, kf = mt.files("gen-" + a.device_id, doc["certificate"].encode(), key)
    assert mt.post(a.key_request(sid(), b.device_id), cert=(crt, kf)).status_code == 200
    # The key is nowhere but in the package: not in PostgreSQL, not in the log.
    body = "".join(doc["private_key"].splitlines()[1:-1])
    assert body[20:60] not in mt.st.logs()
    dump = mt.st.psql("SELECT string_agg(encode(der, 'base64'), '') FROM certificates")
    assert body[20:60] not in dump.replace("\n", "")
    assert int(mt.st.psql(f"SELECT count(*) FROM certificates WHERE device_id = '{a.device_id}'")) \
        == before + 1


def test_generate_refusals_store_nothing(mt, tmp_path):
    (a, _, _, _) = mt.device("vehicle")
    count = f"SELECT count(*) FROM certificates WHERE device_id = '{a.device_id}'"
    before = int(mt.st.psql(count))
    station = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    path = f"/v1/admin/devices/{a.device_id}/certificates"
    for body, code in (({"generate": True}, "invalid_recipient_key"),
                       ({"generate": True, "recipient_pub": "junk"}, "invalid_recipient_key"),
                       ({"generate": False, "recipient_pub": station}, "invalid_request"),
                       ({"recipient_pub": station, "csr": "x"}, "invalid_request"),
                       ({"generate": True, "recipient_pub": station, "csr": "x"}, "invalid_request"),
                       ({"generate": True, "recipient_pub": station, "validity_days": 0},
                        "invalid_validity")):
        r = mt.st.admin("POST", path, json=body)
        assert r.status_code == 422 and r.json()["error"]["code"] == code, (body, r.text)
    r = mt.st.admin("POST", "/v1/admin/devices/NO-SUCH/certificates",
                    json={"generate": True, "recipient_pub": station})
    assert r.status_code == 404, r.text
    assert int(mt.st.psql(count)) == before
    env = dict(mt.st.env, KMS_ADDR=mt.st.url, KMS_TOKEN=mt.st.admin_token)
    for extra, what in ((["--generate"], "--recipient-pub"),
                        (["--generate", "--csr", "x.csr"], "exclude"),
                        (["--recipient-pub", "x.pem"], "goes with --generate")):
        p = subprocess.run([KMSCTL, "device", "cert", "issue", a.device_id, *extra], env=env,
                           capture_output=True, text=True, timeout=60)
        assert p.returncode == 2 and what in p.stderr, (extra, p.stderr)


def test_fill_package_carries_the_tls_identity(mt, tmp_path):
    """device fill --with-certificate: one package, sealed to the station,
    with the device keys and the TLS identity the platform made."""
    from cryptography.hazmat.primitives.asymmetric import x25519
    import fillpkg_py
    (b, _, _, _) = mt.device("encryptor")
    did = uid("VEH")
    r = mt.st.admin("POST", "/v1/admin/devices",
                    json={"device_id": did, "type": "vehicle", "group": mt.group})
    assert r.status_code == 201, r.text
    station = x25519.X25519PrivateKey.generate()
    pub, priv, pkg = tmp_path / "st.pub", tmp_path / "st.pem", tmp_path / "fill.qkfp"
    pub.write_bytes(station.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    priv.write_bytes(key_pem(station))
    env = dict(mt.st.env, KMS_ADDR=mt.st.url, KMS_TOKEN=mt.st.admin_token)
    p = subprocess.run([KMSCTL, "device", "fill", did, "--recipient-pub", str(pub), "--out",
                        str(pkg), "--with-certificate", "--cert-validity", "20", "--json"],
                       env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    rec = json.loads(p.stdout)
    assert rec["certificate"]["key_generated"] is True and rec["certificate"]["device_id"] == did
    doc = json.loads(fillpkg_py.open_package(station, pkg.read_bytes()))
    assert doc["format"] == "qkms-fill/1" and doc["keys"]
    tls = doc["tls"]
    assert tls["format"] == "qkms-tls-identity/1" and tls["serial"] == rec["certificate"]["serial"]
    cert = x509.load_pem_x509_certificate(tls["certificate"].encode())
    key = serialization.load_pem_private_key(tls["private_key"].encode(), None)
    assert key.public_key().public_numbers() == cert.public_key().public_numbers()
    assert (cert.not_valid_after - cert.not_valid_before).days in (19, 20)
    p = subprocess.run([KMSCTL, "fill", "open", "--key", str(priv), str(pkg)], env=env,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and "TLS identity" in p.stdout, p.stderr
    # The device uses both: its keys in the envelope, its identity for TLS.
    dev = Device.from_fill(doc)
    crt, kf = mt.files("fill-" + did, tls["certificate"].encode(), key)
    assert mt.post(dev.key_request(sid(), b.device_id), cert=(crt, kf)).status_code == 200
    # A fill that fails (keys exported already, no --force) revokes the
    # certificate it had made: nobody holds that key.
    r = mt.st.admin("POST", f"/v1/admin/devices/{did}/fill",
                    json={"recipient_pub": pub.read_text(), "certificate": True})
    assert r.status_code == 409 and r.json()["error"]["code"] == "already_exported", r.text
    certs = mt.st.admin("GET", f"/v1/admin/devices/{did}/certificates").json()["certificates"]
    assert [(c["state"], c["revoke_reason"]) for c in certs] == \
        [("active", None), ("revoked", "superseded")]
    # Sealed only.
    r = mt.st.admin("POST", f"/v1/admin/devices/{did}/fill",
                    json={"plaintext": True, "certificate": True, "force": True})
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request", r.text
    r = mt.st.admin("POST", f"/v1/admin/devices/{did}/fill",
                    json={"recipient_pub": pub.read_text(), "certificate": {"days": 3}})
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request", r.text
