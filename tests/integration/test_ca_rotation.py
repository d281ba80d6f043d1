"""Rotating the platform CA (issue 15): a new key pair in the token and a new
root become the issuing CA; the retired one keeps verifying what it issued
and keeps its own CRL, signed with its own key; another instance takes the
new version in; a restart keeps it. OpenSSL's command line is the
independent verifier."""
import json
import re
import subprocess
import time
import uuid

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from conftest import _finish, running_stack, wait_for
from helpers import SecondKmsd

PEM = serialization.Encoding.PEM


@pytest.fixture(scope="module")
def rot():
    st = running_stack("qkms-carot")
    yield st
    _finish(st)


def device(st):
    did = "ROT-" + uuid.uuid4().hex[:10]
    r = st.admin("POST", "/v1/admin/devices", json={"device_id": did, "type": "vehicle"})
    assert r.status_code == 201, r.text
    return did


def issue(url, token, did):
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, did)]))
           .sign(key, hashes.SHA256()))
    r = requests.post(url + f"/v1/admin/devices/{did}/certificates",
                      headers={"Authorization": "Bearer " + token},
                      json={"csr": csr.public_bytes(PEM).decode()}, timeout=30)
    assert r.status_code == 201, r.text
    return r.json()


def openssl(*args):
    return subprocess.run(["openssl", *args], capture_output=True, text=True, timeout=30)


def pem_blocks(text):
    return re.findall(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----\n?", text, re.S)


def test_rotation(rot, tmp_path):
    st = rot
    d1 = device(st)
    c1 = issue(st.url, st.admin_token, d1)
    assert c1["ca_version"] == 1
    # An operator may not rotate.
    r = st.admin("POST", "/v1/admin/tokens", json={"name": "rot-ops", "role": "operator"})
    ops = r.json()["token"]
    r = st.api("POST", "/v1/admin/ca/rotate", token=ops)
    assert r.status_code == 403, r.text

    p = st.kmsctl("ca", "rotate", "--json", token=st.admin_token)
    assert p.returncode == 0, p.stderr
    ca = json.loads(p.stdout)
    assert ca["active_version"] == 2
    states = {c["version"]: c["state"] for c in ca["certificates"]}
    assert states == {1: "retired", 2: "active"}
    labels = {c["version"]: c["label"] for c in ca["certificates"]}
    assert labels == {1: "qkms-ca-1", 2: "qkms-ca-2"}
    ev = st.admin("GET", "/v1/admin/audit?type=ca.rotated").json()["events"]
    assert len(ev) == 1 and ev[0]["detail"]["from_version"] == 1 and ev[0]["detail"]["version"] == 2

    # GET /v1/ca: the new CA first, then the retired one (still valid).
    chain = requests.get(st.url + "/v1/ca", timeout=10).text
    blocks = pem_blocks(chain)
    assert len(blocks) == 2
    subjects = [x509.load_pem_x509_certificate(b.encode()).subject.rfc4514_string() for b in blocks]
    assert "qkms platform CA 2" in subjects[0] and "qkms platform CA 1" in subjects[1]
    cafile = tmp_path / "ca.pem"
    cafile.write_text(chain)

    # New certificates come from version 2; the old one still verifies.
    d2 = device(st)
    c2 = issue(st.url, st.admin_token, d2)
    assert c2["ca_version"] == 2
    for i, c in enumerate((c1, c2)):
        leaf = tmp_path / f"leaf{i}.pem"
        leaf.write_text(c["certificate"])
        v = openssl("verify", "-CAfile", str(cafile), "-purpose", "sslclient", str(leaf))
        assert v.returncode == 0, v.stdout + v.stderr
    assert "CA 2" in x509.load_pem_x509_certificate(c2["certificate"].encode()).issuer.rfc4514_string()

    # Revoking the version-1 certificate: it is in version 1's CRL, signed by
    # version 1's key, and not in version 2's.
    r = st.admin("POST", f"/v1/admin/devices/{d1}/certificates/{c1['serial']}/revoke",
                 json={"reason": "superseded"})
    assert r.status_code == 200, r.text
    v1 = tmp_path / "v1.pem"
    v1.write_text(blocks[1])
    v2 = tmp_path / "v2.pem"
    v2.write_text(blocks[0])
    for version, cert, present in ((1, v1, True), (2, v2, False)):
        crl = tmp_path / f"crl{version}.pem"
        r = requests.get(st.url + f"/v1/ca/crl?format=pem&version={version}", timeout=10)
        assert r.status_code == 200, r.text
        crl.write_text(r.text)
        p = openssl("crl", "-in", str(crl), "-CAfile", str(cert), "-noout", "-text")
        assert p.returncode == 0 and "verify OK" in p.stderr + p.stdout, p.stdout + p.stderr
        listed = c1["serial"].upper() in p.stdout.replace(":", "").upper()
        assert listed == present, (version, p.stdout)
    # The default is the active version's.
    r = requests.get(st.url + "/v1/ca/crl?format=pem", timeout=10)
    assert r.text == (tmp_path / "crl2.pem").read_text()
    for bad, status in (("0", 400), ("x", 400), ("9", 404)):
        r = requests.get(st.url + f"/v1/ca/crl?version={bad}", timeout=10)
        assert r.status_code == status, (bad, r.text)


def test_other_instance_and_restart_keep_the_new_version(rot):
    st = rot
    # Its maintenance pass, which takes in a version another instance made,
    # runs every 15 s with ca_crl_interval 60 (a quarter of it).
    second = SecondKmsd(st, {"QKMS_CA_CRL_INTERVAL": "60"})
    try:
        p = st.kmsctl("ca", "rotate", "--json", token=st.admin_token)
        assert p.returncode == 0, p.stderr
        new = json.loads(p.stdout)["active_version"]
        # The second instance takes it in at its next maintenance pass.

        def adopted():
            r = requests.get(second.url + "/v1/admin/ca",
                             headers={"Authorization": "Bearer " + st.admin_token}, timeout=10)
            return r.json()["active_version"] == new

        assert wait_for(adopted, timeout=30), "the second instance kept the old CA version"
        c = issue(second.url, st.admin_token, device(st))
        assert c["ca_version"] == new
    finally:
        assert second.stop() == 0
    st.restart()
    r = st.admin("GET", "/v1/admin/ca")
    assert r.json()["active_version"] == new
    assert issue(st.url, st.admin_token, device(st))["ca_version"] == new
