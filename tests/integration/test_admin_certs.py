"""Client certificates of admin principals (issue 15): on an admin listener
with admin_tls_client_auth, a certificate bound to a live admin token is
that token (its name and role) without a bearer token; kmsctl --cert/--key
uses one. Against real kmsd, PostgreSQL and SoftHSM; python3-cryptography
plays the operators' own CA (tls_client_ca_file)."""
import datetime
import hashlib
import json
import os
import subprocess

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from conftest import KMSCTL, Stack, _finish, free_port
from helpers import PEM, OtherCA, key_pem, self_signed_server, uid

DER = serialization.Encoding.DER


class AdminTls:
    """Device listener plain HTTP on st.port; the admin API over TLS on its
    own port, asking for client certificates (mode)."""

    def __init__(self, st, tmp, mode):
        self.st, self.tmp = st, tmp
        self.aport = free_port()
        self.crt, self.key, _ = self_signed_server(tmp)
        self.ca = OtherCA(tmp)
        self.start(mode)

    def start(self, mode):
        self.st.start(extra_env={
            "QKMS_ADMIN_LISTEN_ADDR": "127.0.0.1", "QKMS_ADMIN_LISTEN_PORT": str(self.aport),
            "QKMS_ADMIN_TLS_CERT_FILE": self.crt, "QKMS_ADMIN_TLS_KEY_FILE": self.key,
            "QKMS_ADMIN_TLS_CLIENT_AUTH": mode, "QKMS_TLS_CLIENT_CA_FILE": self.ca.ca_file})

    def restart(self, mode):
        assert self.st.stop() == 0, self.st.logs()[-3000:]
        self.start(mode)

    @property
    def url(self):
        return f"https://127.0.0.1:{self.aport}"

    def call(self, method, path, token=None, cert=None, **kw):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return requests.request(method, self.url + path, headers=headers, cert=cert,
                                verify=self.crt, timeout=30, **kw)

    def admin(self, method, path, **kw):
        return self.call(method, path, token=self.st.admin_token, **kw)

    def token(self, role):
        name = uid("T")
        r = self.admin("POST", "/v1/admin/tokens", json={"name": name, "role": role})
        assert r.status_code == 201, r.text
        return name, r.json()["token"]

    def client_cert(self, cn):
        cert, key = self.ca.issue(cn)
        crt = os.path.join(self.tmp, cn + ".crt")
        kf = os.path.join(self.tmp, cn + ".key")
        with open(crt, "wb") as f:
            f.write(cert.public_bytes(PEM))
        with open(kf, "wb") as f:
            f.write(key_pem(key))
        return cert, crt, kf

    def bind(self, name, cert):
        return self.admin("POST", f"/v1/admin/tokens/{name}/certificates",
                          json={"certificate": cert.public_bytes(PEM).decode()})

    def kmsctl(self, *args, cert=None, key=None, token=None):
        env = {k: v for k, v in self.st.env.items()
               if k not in ("KMS_TOKEN", "KMS_TOKEN_FILE")}
        env["KMS_ADDR"] = self.url
        if token:
            env["KMS_TOKEN"] = token
        tls = ["--cacert", self.crt] + (["--cert", cert] if cert else []) + \
            (["--key", key] if key else [])
        return subprocess.run([KMSCTL, *tls, *args], env=env, capture_output=True, text=True,
                              timeout=60)


@pytest.fixture(scope="module")
def at(tmp_path_factory):
    st = Stack("admtls")
    try:
        a = AdminTls(st, str(tmp_path_factory.mktemp("admtls")), "optional")
    except BaseException:
        _finish(st)
        raise
    yield a
    _finish(st)


def sha(cert):
    return hashlib.sha256(cert.public_bytes(DER)).hexdigest()


def test_bound_certificate_is_its_token_without_a_bearer(at):
    name, _ = at.token("operator")
    cert, crt, kf = at.client_cert("ops-" + name)
    r = at.bind(name, cert)
    assert r.status_code == 201, r.text
    rec = r.json()
    assert rec["token"] == name and rec["sha256"] == sha(cert)
    assert rec["subject"].endswith("ops-" + name) or ("ops-" + name) in rec["subject"]
    # The certificate alone: the operator's role, not more.
    r = at.call("GET", "/v1/admin/devices", cert=(crt, kf))
    assert r.status_code == 200, r.text
    r = at.call("GET", "/v1/admin/tokens", cert=(crt, kf))
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden", r.text
    # The request log names the token.
    lines = [x for x in at.st.log_records() if x.get("msg") == "request"
             and x.get("route") == "admin_devices_list" and x.get("principal") == name]
    assert lines
    # Listed; the audit log has the binding.
    r = at.admin("GET", f"/v1/admin/tokens/{name}/certificates")
    assert r.status_code == 200 and [c["sha256"] for c in r.json()["certificates"]] == [sha(cert)]
    ev = at.admin("GET", "/v1/admin/audit?type=token.certificate_bound").json()["events"]
    assert any(e["detail"]["token"] == name and e["detail"]["sha256"] == sha(cert) for e in ev)


def test_kmsctl_with_a_client_certificate(at):
    name, tok = at.token("admin")
    cert, crt, kf = at.client_cert("adm-" + name)
    assert at.bind(name, cert).status_code == 201
    p = at.kmsctl("token", "list", "--json", cert=crt, key=kf)
    assert p.returncode == 0, p.stderr
    assert name in [t["name"] for t in json.loads(p.stdout)["tokens"]]
    # Its own token as well: the same principal.
    p = at.kmsctl("status", "--json", cert=crt, key=kf, token=tok)
    assert p.returncode == 0, p.stderr
    # Another token with it: refused.
    other, otok = at.token("admin")
    p = at.kmsctl("status", "--json", cert=crt, key=kf, token=otok)
    assert p.returncode == 4, (p.returncode, p.stderr)
    assert "certificate_mismatch" in p.stderr
    # --key without --cert, --cert over plain HTTP: usage errors.
    env = dict(at.st.env, KMS_ADDR=at.url)
    p = subprocess.run([KMSCTL, "--key", kf, "status"], env=env, capture_output=True, text=True)
    assert p.returncode == 2 and "--key goes with --cert" in p.stderr
    env["KMS_ADDR"] = at.st.url
    p = subprocess.run([KMSCTL, "--cert", crt, "status"], env=env, capture_output=True, text=True)
    assert p.returncode == 2 and "https://" in p.stderr


def test_token_cert_commands(at):
    name, _ = at.token("auditor")
    cert, crt, kf = at.client_cert("aud-" + name)
    env_tok = at.st.admin_token
    p = at.kmsctl("token", "cert", "bind", name, "--cert", crt, "--json", token=env_tok)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["sha256"] == sha(cert)
    p = at.kmsctl("token", "cert", "list", name, token=env_tok)
    assert p.returncode == 0 and sha(cert) in p.stdout, p.stderr
    r = at.call("GET", "/v1/admin/audit", cert=(crt, kf))
    assert r.status_code == 200, r.text
    p = at.kmsctl("token", "cert", "unbind", name, sha(cert), "--json", token=env_tok)
    assert p.returncode == 0 and json.loads(p.stdout)["unbound"] is True, p.stderr
    r = at.call("GET", "/v1/admin/audit", cert=(crt, kf))
    assert r.status_code == 401 and r.json()["error"]["code"] == "client_certificate_refused"
    p = at.kmsctl("token", "cert", "unbind", name, sha(cert), token=env_tok)
    assert p.returncode != 0 and "not_found" in p.stderr
    p = at.kmsctl("token", "cert", "unbind", name, "xyz", token=env_tok)
    assert p.returncode == 2


def test_refusals(at):
    name, _ = at.token("operator")
    cert, crt, kf = at.client_cert("r-" + name)
    # Not bound: refused, even though it verifies.
    r = at.call("GET", "/v1/admin/devices", cert=(crt, kf))
    assert r.status_code == 401 and r.json()["error"]["code"] == "client_certificate_refused"
    assert "not bound" in r.json()["error"]["message"]
    # Bad input to bind: nothing stored.
    for body, code in (({"certificate": "junk"}, "invalid_certificate"),
                       ({"certificate": at.ca.cert.public_bytes(PEM).decode()},
                        "not_client_certificate"),
                       ({"cert": "x"}, "invalid_request")):
        r = at.admin("POST", f"/v1/admin/tokens/{name}/certificates", json=body)
        assert r.status_code == 422 and r.json()["error"]["code"] == code, r.text
    r = at.admin("POST", "/v1/admin/tokens/no-such-token/certificates",
                 json={"certificate": cert.public_bytes(PEM).decode()})
    assert r.status_code == 404
    assert at.bind(name, cert).status_code == 201
    r = at.bind(name, cert)
    assert r.status_code == 422 and r.json()["error"]["code"] == "certificate_in_use"
    other, _ = at.token("operator")
    r = at.bind(other, cert)
    assert r.status_code == 422 and r.json()["error"]["code"] == "certificate_in_use"
    assert name in r.json()["error"]["message"]
    # A revoked token's certificate authenticates no more; its binding went
    # with it, so the certificate may be bound to another token.
    assert at.call("GET", "/v1/admin/devices", cert=(crt, kf)).status_code == 200
    assert at.admin("DELETE", f"/v1/admin/tokens/{name}").status_code == 200
    r = at.call("GET", "/v1/admin/devices", cert=(crt, kf))
    assert r.status_code == 401 and r.json()["error"]["code"] == "client_certificate_refused"
    assert int(at.st.psql(f"SELECT count(*) FROM token_certificates WHERE sha256 = "
                          f"decode('{sha(cert)}', 'hex')").strip()) == 0
    assert at.bind(other, cert).status_code == 201
    r = at.call("GET", "/v1/admin/devices", cert=(crt, kf))
    assert r.status_code == 200, r.text
    assert at.admin("DELETE", f"/v1/admin/tokens/{other}").status_code == 200
    # A certificate of an issuer nobody trusts.
    key = ec.generate_private_key(ec.SECP256R1())
    n = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "stranger")])
    now = datetime.datetime.now(datetime.timezone.utc)
    self_signed = (x509.CertificateBuilder().subject_name(n).issuer_name(n)
                   .public_key(key.public_key()).serial_number(7)
                   .not_valid_before(now - datetime.timedelta(minutes=1))
                   .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))
    sc, sk = os.path.join(at.tmp, "stranger.crt"), os.path.join(at.tmp, "stranger.key")
    with open(sc, "wb") as f:
        f.write(self_signed.public_bytes(PEM))
    with open(sk, "wb") as f:
        f.write(key_pem(key))
    r = at.call("GET", "/v1/admin/devices", cert=(sc, sk), token=at.st.admin_token)
    assert r.status_code == 401 and r.json()["error"]["code"] == "client_certificate_refused"
    # Optional mode: no certificate, the bearer token decides.
    assert at.admin("GET", "/v1/admin/devices").status_code == 200
    assert at.call("GET", "/v1/admin/devices").status_code == 401


def test_a_device_certificate_key_is_not_an_admin_key(at):
    """One key, one principal, across devices and tokens."""
    did = uid("D")
    r = at.admin("POST", "/v1/admin/devices", json={"device_id": did, "type": "vehicle"})
    assert r.status_code == 201, r.text
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, did)]))
           .sign(key, hashes.SHA256()))
    r = at.admin("POST", f"/v1/admin/devices/{did}/certificates",
                 json={"csr": csr.public_bytes(PEM).decode()})
    assert r.status_code == 201, r.text
    rec = r.json()
    name, _ = at.token("operator")
    r = at.admin("POST", f"/v1/admin/tokens/{name}/certificates",
                 json={"certificate": rec["certificate"]})
    assert r.status_code == 422 and r.json()["error"]["code"] == "certificate_in_use", r.text
    assert did in r.json()["error"]["message"]
    # Revoked, the device's certificate (it still verifies against the
    # platform CA) never becomes an operator's either.
    r = at.admin("POST", f"/v1/admin/devices/{did}/certificates/{rec['serial']}/revoke",
                 json={"reason": "keyCompromise"})
    assert r.status_code == 200, r.text
    r = at.admin("POST", f"/v1/admin/tokens/{name}/certificates",
                 json={"certificate": rec["certificate"]})
    assert r.status_code == 422 and r.json()["error"]["code"] == "certificate_in_use", r.text


def test_require_mode(at):
    name, _ = at.token("operator")
    cert, crt, kf = at.client_cert("q-" + name)
    assert at.bind(name, cert).status_code == 201
    at.restart("require")
    try:
        r = at.admin("GET", "/v1/admin/devices")
        assert r.status_code == 401 and r.json()["error"]["code"] == "client_certificate_required"
        assert at.call("GET", "/v1/admin/devices", cert=(crt, kf)).status_code == 200
        # The probes need none.
        assert requests.get(at.url + "/healthz", verify=at.crt, timeout=10).status_code == 200
    finally:
        at.restart("optional")


def test_admin_client_auth_needs_tls(tmp_path):
    st = Stack("admtls-conf")
    try:
        st.start(extra_env={"QKMS_ADMIN_TLS_CLIENT_AUTH": "optional"}, wait=False)
        assert st.proc.wait(timeout=60) != 0
        assert "admin_tls_client_auth optional needs TLS" in st.logs()
        st.proc = None
    finally:
        _finish(st)
