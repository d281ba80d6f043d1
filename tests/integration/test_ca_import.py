"""An operator's own root over the platform CA (issue 15): `kmsctl ca import
--csr-out` makes a pending CA version (key pair in the token, CSR signed
there), the operator's CA (python3-cryptography here) certifies it, and
`kmsctl ca import --chain` makes it the issuing CA; relying parties that
trust only the operator's root then verify device certificates (OpenSSL's
command line as the independent verifier)."""
import datetime
import json
import subprocess
import uuid

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from conftest import _finish, running_stack

PEM = serialization.Encoding.PEM


def now():
    return datetime.datetime.now(datetime.timezone.utc)


def name(cn):
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Operator"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def ca_cert(subject, public_key, issuer, issuer_key, pathlen, days=3650):
    b = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
         .public_key(public_key).serial_number(x509.random_serial_number())
         .not_valid_before(now() - datetime.timedelta(minutes=5))
         .not_valid_after(now() + datetime.timedelta(days=days))
         .add_extension(x509.BasicConstraints(ca=True, path_length=pathlen), True)
         .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                        True)
         .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), False))
    return b.sign(issuer_key, hashes.SHA256())


class OperatorPki:
    """A root and an intermediate of the operator's own."""

    def __init__(self):
        self.root_key = ec.generate_private_key(ec.SECP384R1())
        self.root = ca_cert(name("Operator Root"), self.root_key.public_key(), name("Operator Root"),
                            self.root_key, None)
        self.inter_key = ec.generate_private_key(ec.SECP256R1())
        self.inter = ca_cert(name("Operator Issuing CA"), self.inter_key.public_key(),
                             self.root.subject, self.root_key, 1)

    def certify(self, csr):
        return ca_cert(csr.subject, csr.public_key(), self.inter.subject, self.inter_key, 0,
                       days=1000)

    def chain(self, qkms_ca):
        return b"".join(c.public_bytes(PEM) for c in (qkms_ca, self.inter, self.root)).decode()


@pytest.fixture(scope="module")
def imp():
    st = running_stack("qkms-caimp")
    yield st
    _finish(st)


def issue(st, did):
    r = st.admin("POST", "/v1/admin/devices", json={"device_id": did, "type": "vehicle"})
    assert r.status_code == 201, r.text
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, did)]))
           .sign(key, hashes.SHA256()))
    r = st.admin("POST", f"/v1/admin/devices/{did}/certificates",
                 json={"csr": csr.public_bytes(PEM).decode()})
    assert r.status_code == 201, r.text
    return r.json()


def active(st):
    return st.admin("GET", "/v1/admin/ca").json()["active_version"]


def test_import_under_an_operators_root(imp, tmp_path):
    st = imp
    op = OperatorPki()
    # Nothing is pending yet.
    r = st.admin("POST", "/v1/admin/ca/import", json={"chain": op.chain(op.inter)})
    assert r.status_code == 409 and r.json()["error"]["code"] == "invalid_state", r.text

    csr_file = tmp_path / "ca.csr"
    p = st.kmsctl("ca", "import", "--csr-out", str(csr_file), token=st.admin_token)
    assert p.returncode == 0, p.stderr
    csr = x509.load_pem_x509_csr(csr_file.read_bytes())
    assert csr.is_signature_valid
    assert csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "qkms platform CA 2"
    assert isinstance(csr.public_key(), ec.EllipticCurvePublicKey)
    bc = csr.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert bc.ca and bc.path_length == 0
    # Asked again: the same pending version and CSR; the active one is unchanged.
    r = st.admin("POST", "/v1/admin/ca/csr")
    assert r.status_code == 200 and r.json()["version"] == 2 and r.json()["pending_before"]
    assert r.json()["csr"].encode() == csr_file.read_bytes()
    assert active(st) == 1

    ours = op.certify(csr)
    # Refusals change nothing.
    stranger = ca_cert(csr.subject, ec.generate_private_key(ec.SECP256R1()).public_key(),
                       op.inter.subject, op.inter_key, 0)
    leaf_like = (x509.CertificateBuilder().subject_name(csr.subject).issuer_name(op.inter.subject)
                 .public_key(csr.public_key()).serial_number(9)
                 .not_valid_before(now() - datetime.timedelta(minutes=1))
                 .not_valid_after(now() + datetime.timedelta(days=30))
                 .sign(op.inter_key, hashes.SHA256()))
    bad = [
        ("junk", "invalid_certificate"),
        (op.chain(stranger), "invalid_certificate"),             # another key
        (leaf_like.public_bytes(PEM).decode() + op.inter.public_bytes(PEM).decode()
         + op.root.public_bytes(PEM).decode(), "invalid_certificate"),   # not a CA
        (ours.public_bytes(PEM).decode() + op.inter.public_bytes(PEM).decode(),
         "invalid_certificate"),                                  # no root
        (ours.public_bytes(PEM).decode() + op.root.public_bytes(PEM).decode(),
         "invalid_certificate"),                                  # a link missing
    ]
    for chain, code in bad:
        r = st.admin("POST", "/v1/admin/ca/import", json={"chain": chain})
        assert r.status_code == 422 and r.json()["error"]["code"] == code, r.text
    assert active(st) == 1

    chain_file = tmp_path / "chain.pem"
    chain_file.write_text(op.chain(ours))
    p = st.kmsctl("ca", "import", "--chain", str(chain_file), "--json", token=st.admin_token)
    assert p.returncode == 0, p.stderr
    ca = json.loads(p.stdout)
    assert ca["active_version"] == 2
    assert {c["version"]: c["state"] for c in ca["certificates"]} == {1: "retired", 2: "active"}
    ev = st.admin("GET", "/v1/admin/audit?type=ca.imported").json()["events"]
    assert len(ev) == 1 and ev[0]["detail"]["version"] == 2 and ev[0]["detail"]["chain_length"] == 3

    # GET /v1/ca: our CA, the operator's intermediate and root, then version 1.
    served = requests.get(st.url + "/v1/ca", timeout=10).text
    for c in (ours, op.inter, op.root):
        assert c.public_bytes(PEM).decode() in served
    # A relying party that trusts only the operator's root verifies a device
    # certificate issued now.
    dev = issue(st, "IMP-" + uuid.uuid4().hex[:8])
    assert dev["ca_version"] == 2
    (tmp_path / "root.pem").write_bytes(op.root.public_bytes(PEM))
    (tmp_path / "untrusted.pem").write_bytes(ours.public_bytes(PEM) + op.inter.public_bytes(PEM))
    (tmp_path / "dev.pem").write_text(dev["certificate"])
    v = subprocess.run(["openssl", "verify", "-CAfile", str(tmp_path / "root.pem"), "-untrusted",
                        str(tmp_path / "untrusted.pem"), "-purpose", "sslclient",
                        str(tmp_path / "dev.pem")], capture_output=True, text=True, timeout=30)
    assert v.returncode == 0, v.stdout + v.stderr
    # Its CRL is signed by the imported CA's key (in the token).
    r = requests.get(st.url + "/v1/ca/crl?format=pem&version=2", timeout=10)
    assert r.status_code == 200
    (tmp_path / "crl.pem").write_text(r.text)
    (tmp_path / "ours.pem").write_bytes(ours.public_bytes(PEM))
    p = subprocess.run(["openssl", "crl", "-in", str(tmp_path / "crl.pem"), "-CAfile",
                        str(tmp_path / "ours.pem"), "-noout"], capture_output=True, text=True,
                       timeout=30)
    assert p.returncode == 0 and "verify OK" in p.stdout + p.stderr, p.stdout + p.stderr
    # Nothing pending any more.
    r = st.admin("POST", "/v1/admin/ca/import", json={"chain": chain_file.read_text()})
    assert r.status_code == 409 and r.json()["error"]["code"] == "invalid_state"

    # A restart keeps the imported CA, its issuers and issuing.
    st.restart()
    assert active(st) == 2
    assert op.root.public_bytes(PEM).decode() in requests.get(st.url + "/v1/ca", timeout=10).text
    assert issue(st, "IMP-" + uuid.uuid4().hex[:8])["ca_version"] == 2


def test_kmsctl_import_usage(imp, tmp_path):
    st = imp
    for args in ([], ["--csr-out", str(tmp_path / "a"), "--chain", str(tmp_path / "b")]):
        p = st.kmsctl("ca", "import", *args, token=st.admin_token)
        assert p.returncode == 2, p.stderr
    r = st.admin("POST", "/v1/admin/tokens", json={"name": "imp-ops", "role": "operator"})
    ops = r.json()["token"]
    assert st.api("POST", "/v1/admin/ca/csr", token=ops).status_code == 403
    assert st.api("POST", "/v1/admin/ca/import", token=ops, json={"chain": "x"}).status_code == 403
