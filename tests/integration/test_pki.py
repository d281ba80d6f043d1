"""The platform CA (issue 15) against real kmsd, PostgreSQL and SoftHSM, with
OpenSSL's command line and python3-cryptography as the independent party:
the CA key pair in the token (sensitive, never extractable), the
self-signed root, certificates issued from CSRs and verified by `openssl
verify`, the certificate profile, bad CSRs refused with nothing stored,
restarts and a second instance issuing from the same CA."""
import datetime
import json
import os
import re
import subprocess
import time
import uuid

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from conftest import KMSCTL, SOFTHSM, _finish, running_stack, wait_for
from helpers import SecondKmsd


@pytest.fixture(scope="module")
def pki():
    st = running_stack("qkms-pki")
    yield st
    _finish(st)


def uid(prefix="PKI"):
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def device(st, state="active"):
    did = uid()
    r = st.admin("POST", "/v1/admin/devices", json={"device_id": did, "type": "vehicle"})
    assert r.status_code == 201, r.text
    if state != "active":
        r = st.admin("POST", f"/v1/admin/devices/{did}/{'suspend' if state == 'suspended' else 'revoke'}")
        assert r.status_code == 200, r.text
    return did


def csr_pem(cn, key=None, extra_cn=None):
    key = key or ec.generate_private_key(ec.SECP256R1())
    names = [x509.NameAttribute(NameOID.COMMON_NAME, cn)] if cn else []
    if extra_cn:
        names.append(x509.NameAttribute(NameOID.COMMON_NAME, extra_cn))
    algo = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    req = x509.CertificateSigningRequestBuilder().subject_name(x509.Name(names)).sign(key, algo)
    return req.public_bytes(serialization.Encoding.PEM).decode(), key


def issue(st, did, pem, **extra):
    return st.admin("POST", f"/v1/admin/devices/{did}/certificates", json={"csr": pem, **extra})


def cert_count(st):
    return int(st.psql("SELECT count(*) FROM certificates").strip())


def openssl(*args, input=None):
    return subprocess.run(["openssl", *args], input=input, capture_output=True, text=True,
                          timeout=30)


def verify(tmp_path, chain, cert):
    ca = tmp_path / "ca.pem"
    leaf = tmp_path / "leaf.pem"
    ca.write_text(chain)
    leaf.write_text(cert)
    return openssl("verify", "-CAfile", str(ca), "-purpose", "sslclient", str(leaf))


# ---- the CA ----------------------------------------------------------------

def test_ca_key_pair_lives_in_the_token_sensitive_and_never_extractable(pki):
    env = dict(os.environ, SOFTHSM2_CONF=pki.env["SOFTHSM2_CONF"])
    out = subprocess.run(["pkcs11-tool", "--module", SOFTHSM, "--token-label", "qkms", "--login",
                          "--pin", pki.token_pin, "--list-objects", "--type", "privkey"],
                         env=env, capture_output=True, text=True, timeout=60, check=True).stdout
    blocks = {re.search(r"label:\s+(\S+)", b).group(1): b
              for b in out.split("Private Key Object")[1:]}
    # (Beside it: protocol v2's platform keys, test_protocol_v2.py.)
    assert [l for l in blocks if l.startswith("qkms-ca")] == ["qkms-ca-1"], out
    b = blocks["qkms-ca-1"]
    assert "EC" in b.splitlines()[0]
    access = [a.strip() for a in re.search(r"Access:\s+(.*)", b).group(1).split(",")]
    assert "sensitive" in access and "never extractable" in access and "extractable" not in access
    assert [u.strip() for u in re.search(r"Usage:\s+(.*)", b).group(1).split(",")] == ["sign"]
    # And nothing of it in the database: ca_keys holds certificates (and a
    # pending version's CSR, and an operator's issuers) only.
    cols = pki.psql("SELECT string_agg(column_name, ',' ORDER BY column_name) FROM "
                    "information_schema.columns WHERE table_name = 'ca_keys'").strip()
    assert cols == "certificate,created_at,csr,issuers,label,not_after,retired_at,state,version"


def test_ca_chain_is_a_self_signed_root_the_token_key_signed(pki, tmp_path):
    r = pki.api("GET", "/v1/ca")  # no token: devices fetch it
    assert r.status_code == 200
    assert r.headers["Content-Type"] == "application/pem-certificate-chain"
    root = x509.load_pem_x509_certificate(r.content)
    assert root.issuer == root.subject
    bc = root.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length == 0
    ku = root.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.key_cert_sign and ku.crl_sign and not ku.digital_signature
    assert isinstance(root.public_key(), ec.EllipticCurvePublicKey)
    assert root.signature_hash_algorithm.name == "sha256"
    # The signature verifies under its own key (made in the token).
    root.public_key().verify(root.signature, root.tbs_certificate_bytes,
                             ec.ECDSA(hashes.SHA256()))
    assert root.not_valid_after - root.not_valid_before > datetime.timedelta(days=3649)
    p = tmp_path / "root.pem"
    p.write_bytes(r.content)
    v = openssl("verify", "-CAfile", str(p), str(p))
    assert v.returncode == 0, v.stderr
    # The admin view names the same certificate.
    a = pki.admin("GET", "/v1/admin/ca")
    assert a.status_code == 200
    j = a.json()
    assert j["active_version"] == 1 and len(j["certificates"]) == 1
    c = j["certificates"][0]
    assert c["state"] == "active" and c["label"] == "qkms-ca-1"
    assert c["sha256"] == root.fingerprint(hashes.SHA256()).hex()
    assert c["pem"].encode() == r.content


# ---- issuing -----------------------------------------------------------------

def test_issue_from_a_csr_and_openssl_verifies_it(pki, tmp_path):
    did = device(pki)
    pem, key = csr_pem(did)
    r = issue(pki, did, pem)
    assert r.status_code == 201, r.text
    j = r.json()
    v = verify(tmp_path, j["chain"], j["certificate"])
    assert v.returncode == 0, v.stdout + v.stderr
    cert = x509.load_pem_x509_certificate(j["certificate"].encode())
    # The profile (docs/pki.md).
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == did
    assert cert.issuer == x509.load_pem_x509_certificate(j["chain"].encode()).subject
    assert cert.public_key().public_numbers() == key.public_key().public_numbers()
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and not bc.value.ca
    assert list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == \
        [ExtendedKeyUsageOID.CLIENT_AUTH]
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [f"urn:qkms:device:{did}"]
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.digital_signature and not ku.value.key_cert_sign
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ca = x509.load_pem_x509_certificate(j["chain"].encode())
    assert aki.key_identifier == ca.extensions.get_extension_for_class(
        x509.SubjectKeyIdentifier).value.digest
    life = cert.not_valid_after - cert.not_valid_before
    assert datetime.timedelta(days=365) <= life <= datetime.timedelta(days=365, minutes=2)
    assert cert.serial_number.bit_length() >= 120
    # The record.
    assert j["serial"] == format(cert.serial_number, "x")
    assert j["sha256"] == cert.fingerprint(hashes.SHA256()).hex()
    spki = cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)
    h = hashes.Hash(hashes.SHA256())
    h.update(spki)
    assert j["spki_sha256"] == h.finalize().hex()
    assert j["kind"] == "issued" and j["state"] == "active" and j["ca_version"] == 1
    assert j["device_id"] == did and j["subject"] == f"CN={did}" and j["created_by"] == "bootstrap"
    # Listed, and audited.
    lst = pki.admin("GET", f"/v1/admin/devices/{did}/certificates")
    assert lst.status_code == 200
    certs = lst.json()["certificates"]
    assert [c["serial"] for c in certs] == [j["serial"]]
    assert certs[0]["certificate"] == j["certificate"] and certs[0]["created_at"] == j["created_at"]
    ev = pki.admin("GET", "/v1/admin/audit", params={"device": did, "type": "certificate.issued"})
    assert ev.status_code == 200
    rows = ev.json()["events"]
    assert len(rows) == 1 and rows[0]["detail"]["serial"] == j["serial"]
    assert rows[0]["detail"]["sha256"] == j["sha256"]


@pytest.mark.parametrize("make", [
    lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048),
    lambda: ec.generate_private_key(ec.SECP384R1()),
    lambda: ed25519.Ed25519PrivateKey.generate(),
], ids=["rsa2048", "p384", "ed25519"])
def test_other_accepted_keys(pki, tmp_path, make):
    did = device(pki)
    pem, key = csr_pem(did, make())
    r = issue(pki, did, pem, validity_days=30)
    assert r.status_code == 201, r.text
    v = verify(tmp_path, r.json()["chain"], r.json()["certificate"])
    assert v.returncode == 0, v.stdout + v.stderr
    cert = x509.load_pem_x509_certificate(r.json()["certificate"].encode())
    life = cert.not_valid_after - cert.not_valid_before
    assert datetime.timedelta(days=30) <= life <= datetime.timedelta(days=30, minutes=2)


def test_a_csr_without_subject_gets_the_device_id(pki):
    did = device(pki)
    pem, _ = csr_pem(None)
    r = issue(pki, did, pem)
    assert r.status_code == 201, r.text
    assert r.json()["subject"] == f"CN={did}"


def tampered(pem_text):
    """The CSR with one letter of its subject changed: its signature no
    longer covers it."""
    req = x509.load_pem_x509_csr(pem_text.encode())
    der = bytearray(req.public_bytes(serialization.Encoding.DER))
    cn = req.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value.encode()
    at = bytes(der).index(cn) + len(cn) - 1
    der[at] ^= 0x01
    return x509.load_der_x509_csr(bytes(der)).public_bytes(serialization.Encoding.PEM).decode()


@pytest.mark.parametrize("case,code", [
    ("garbage", "invalid_csr"),
    ("certificate", "invalid_csr"),
    ("bad_signature", "invalid_csr"),
    ("other_device", "csr_subject_mismatch"),
    ("second_cn", "csr_subject_mismatch"),
    ("rsa1024", "unsupported_key"),
    ("secp256k1", "unsupported_key"),
    ("not_a_string", "invalid_csr"),
    ("unknown_field", "invalid_request"),
    ("validity_0", "invalid_validity"),
    ("validity_3651", "invalid_validity"),
    ("validity_string", "invalid_validity"),
])
def test_bad_requests_are_refused_and_nothing_is_stored(pki, case, code):
    did = device(pki)
    good, key = csr_pem(did)
    body = {"csr": good}
    if case == "garbage":
        body["csr"] = "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"
    elif case == "certificate":
        body["csr"] = pki.api("GET", "/v1/ca").text
    elif case == "bad_signature":
        body["csr"] = tampered(good)
    elif case == "other_device":
        body["csr"] = csr_pem(uid())[0]
    elif case == "second_cn":
        body["csr"] = csr_pem(did, extra_cn="someone-else")[0]
    elif case == "rsa1024":
        body["csr"] = csr_pem(did, rsa.generate_private_key(public_exponent=65537, key_size=1024))[0]
    elif case == "secp256k1":
        body["csr"] = csr_pem(did, ec.generate_private_key(ec.SECP256K1()))[0]
    elif case == "not_a_string":
        body["csr"] = 42
    elif case == "unknown_field":
        body["subject"] = "CN=x"
    elif case == "validity_0":
        body["validity_days"] = 0
    elif case == "validity_3651":
        body["validity_days"] = 3651
    elif case == "validity_string":
        body["validity_days"] = "30"
    before = cert_count(pki)
    r = pki.admin("POST", f"/v1/admin/devices/{did}/certificates", json=body)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == code
    assert cert_count(pki) == before


def test_unknown_and_inactive_devices(pki):
    pem, _ = csr_pem("NOPE-1")
    r = issue(pki, "NOPE-1", pem)
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    assert pki.admin("GET", "/v1/admin/devices/NOPE-1/certificates").status_code == 404
    for state in ("suspended", "revoked"):
        did = device(pki, state)
        before = cert_count(pki)
        r = issue(pki, did, csr_pem(did)[0])
        assert r.status_code == 409 and r.json()["error"]["code"] == "invalid_state", r.text
        assert cert_count(pki) == before


def test_roles(pki):
    did = device(pki)
    tokens = {}
    for role in ("operator", "auditor"):
        r = pki.admin("POST", "/v1/admin/tokens", json={"name": uid(role), "role": role})
        tokens[role] = r.json()["token"]
    pem, _ = csr_pem(did)
    r = pki.api("POST", f"/v1/admin/devices/{did}/certificates", token=tokens["auditor"],
                json={"csr": pem})
    assert r.status_code == 403
    r = pki.api("POST", f"/v1/admin/devices/{did}/certificates", token=tokens["operator"],
                json={"csr": pem})
    assert r.status_code == 201, r.text
    r = pki.api("GET", f"/v1/admin/devices/{did}/certificates", token=tokens["auditor"])
    assert r.status_code == 200 and len(r.json()["certificates"]) == 1
    assert pki.api("POST", f"/v1/admin/devices/{did}/certificates", json={"csr": pem}).status_code == 401


# ---- restarts, instances, a missing key --------------------------------------

def test_restart_and_a_second_instance_issue_from_the_same_ca(fresh_stack, tmp_path):
    st = fresh_stack
    st.start()
    root = st.api("GET", "/v1/ca").text
    st.restart()
    assert st.api("GET", "/v1/ca").text == root
    did = device(st)
    r = issue(st, did, csr_pem(did)[0])
    assert r.status_code == 201 and r.json()["chain"] == root
    assert verify(tmp_path, root, r.json()["certificate"]).returncode == 0
    other = SecondKmsd(st)
    try:
        r2 = requests.post(f"{other.url}/v1/admin/devices/{did}/certificates",
                           headers={"Authorization": f"Bearer {st.admin_token}"},
                           json={"csr": csr_pem(did)[0]}, timeout=30)
        assert r2.status_code == 201, r2.text
        assert r2.json()["chain"] == root
        assert verify(tmp_path, root, r2.json()["certificate"]).returncode == 0
    finally:
        assert other.stop() == 0
    assert st.psql("SELECT count(*) FROM ca_keys").strip() == "1"
    assert len(st.admin("GET", f"/v1/admin/devices/{did}/certificates").json()["certificates"]) == 2


def test_kmsd_refuses_to_start_without_the_ca_key(fresh_stack):
    """ca_keys names a CA whose private key the token does not hold (another
    token, or the key deleted): kmsd must not start and sign with nothing."""
    st = fresh_stack
    st.start()
    st.stop()
    env = dict(os.environ, SOFTHSM2_CONF=st.env["SOFTHSM2_CONF"])
    subprocess.run(["pkcs11-tool", "--module", SOFTHSM, "--token-label", "qkms", "--login",
                    "--pin", st.token_pin, "--delete-object", "--type", "privkey", "--label",
                    "qkms-ca-1"], env=env, capture_output=True, check=True, timeout=60)
    st.start(wait=False)
    st.proc.wait(timeout=60)
    assert st.stop() not in (0, None)
    assert "the CA key qkms-ca-1 is not in the token" in st.logs()


# ---- kmsctl --------------------------------------------------------------------

def test_kmsctl_issue_list_and_ca_show(pki, tmp_path):
    did = device(pki)
    pem, _ = csr_pem(did)
    csr = tmp_path / "dev.csr"
    csr.write_text(pem)
    out = tmp_path / "dev.pem"
    p = pki.kmsctl("device", "cert", "issue", did, "--csr", str(csr), "--validity", "20",
                   "--out", str(out))
    assert p.returncode == 0, p.stderr
    assert oct(out.stat().st_mode & 0o777) == "0o600"
    cert = x509.load_pem_x509_certificate(out.read_bytes())
    assert cert.not_valid_after - cert.not_valid_before <= datetime.timedelta(days=20, minutes=2)
    # Never over an existing file, and nothing is issued then.
    before = cert_count(pki)
    p = pki.kmsctl("device", "cert", "issue", did, "--csr", str(csr), "--out", str(out))
    assert p.returncode == 2 and "exists" in p.stderr
    assert cert_count(pki) == before
    # Without --out: the record and the PEM on stdout.
    p = pki.kmsctl("device", "cert", "issue", did, "--csr", str(csr))
    assert p.returncode == 0, p.stderr
    assert f"subject: CN={did}" in p.stdout
    x509.load_pem_x509_certificate(p.stdout[p.stdout.index("-----BEGIN"):].encode())
    # A refusal is exit 6 with the server's code.
    bad = tmp_path / "bad.csr"
    bad.write_text(csr_pem(uid())[0])
    p = pki.kmsctl("device", "cert", "issue", did, "--csr", str(bad), "--out", str(tmp_path / "x.pem"))
    assert p.returncode == 6 and "csr_subject_mismatch" in p.stderr
    assert not (tmp_path / "x.pem").exists()
    p = pki.kmsctl("--json", "device", "cert", "list", did, check=True)
    listed = json.loads(p.stdout)["certificates"]
    assert len(listed) == 2 and listed[0]["sha256"] == cert.fingerprint(hashes.SHA256()).hex()
    p = pki.kmsctl("device", "cert", "list", did, check=True)
    assert p.stdout.splitlines()[0].split() == ["SERIAL", "KIND", "STATE", "CA", "NOT-AFTER", "SHA256"]
    assert len(p.stdout.splitlines()) == 3
    # ca show: the table, --json, --pem (what GET /v1/ca serves).
    p = pki.kmsctl("ca", "show", check=True)
    assert "qkms-ca-1" in p.stdout and "active version: 1" in p.stdout
    p = pki.kmsctl("--json", "ca", "show", check=True)
    assert json.loads(p.stdout)["active_version"] == 1
    p = pki.kmsctl("ca", "show", "--pem", check=True)
    assert p.stdout == pki.api("GET", "/v1/ca").text
    # Usage errors send nothing.
    for args in (["device", "cert", "issue", did], ["device", "cert", "frob", did],
                 ["device", "cert", "list", did, "--csr", str(csr)],
                 ["device", "cert", "issue", did, "--csr", str(csr), "--validity", "0"]):
        p = pki.kmsctl(*args)
        assert p.returncode == 2, (args, p.stderr)


# ---- revocation and the CRL ----------------------------------------------------

def crl_of(st, fmt=None):
    r = st.api("GET", "/v1/ca/crl", params={"format": fmt} if fmt else None)
    assert r.status_code == 200, r.text
    return r


def load_crl(st):
    r = crl_of(st)
    assert r.headers["Content-Type"] == "application/pkix-crl"
    return x509.load_der_x509_crl(r.content)


def issued(st, did=None):
    did = did or device(st)
    r = issue(st, did, csr_pem(did)[0])
    assert r.status_code == 201, r.text
    return did, r.json()


def test_crl_is_signed_by_the_ca_and_verifies_with_openssl(pki, tmp_path):
    crl = load_crl(pki)
    root = x509.load_pem_x509_certificate(pki.api("GET", "/v1/ca").content)
    assert crl.issuer == root.subject
    assert crl.is_signature_valid(root.public_key())
    number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    assert number >= 1
    # nextUpdate: twice ca_crl_interval (default 3600 s) after thisUpdate.
    assert crl.next_update - crl.last_update == datetime.timedelta(seconds=7200)
    pem = crl_of(pki, "pem")
    assert pem.headers["Content-Type"] == "application/x-pem-file"
    (tmp_path / "crl.pem").write_text(pem.text)
    (tmp_path / "ca.pem").write_text(pki.api("GET", "/v1/ca").text)
    v = openssl("crl", "-in", str(tmp_path / "crl.pem"), "-CAfile", str(tmp_path / "ca.pem"),
                "-noout")
    assert v.returncode == 0 and "verify OK" in v.stderr + v.stdout, v.stderr
    r = pki.api("GET", "/v1/ca/crl", params={"format": "xml"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_query"


def test_revoke_puts_the_certificate_in_a_new_crl(pki, tmp_path):
    did, cert = issued(pki)
    before = load_crl(pki).extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    # openssl accepts it with the CRL before the revocation...
    chain = pki.api("GET", "/v1/ca").text
    (tmp_path / "ca.pem").write_text(chain)
    (tmp_path / "leaf.pem").write_text(cert["certificate"])
    (tmp_path / "crl.pem").write_text(crl_of(pki, "pem").text)
    ok = openssl("verify", "-crl_check", "-CAfile", str(tmp_path / "ca.pem"), "-CRLfile",
                 str(tmp_path / "crl.pem"), str(tmp_path / "leaf.pem"))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    r = pki.admin("POST", f"/v1/admin/devices/{did}/certificates/{cert['serial']}/revoke",
                  json={"reason": "keyCompromise"})
    assert r.status_code == 200, r.text
    j = r.json()
    assert j["state"] == "revoked" and j["revoke_reason"] == "keyCompromise" and j["revoked_at"]
    crl = load_crl(pki)
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == before + 1
    entry = crl.get_revoked_certificate_by_serial_number(int(cert["serial"], 16))
    assert entry is not None
    assert entry.extensions.get_extension_for_class(x509.CRLReason).value.reason == \
        x509.ReasonFlags.key_compromise
    # ... and refuses it with the new one.
    (tmp_path / "crl.pem").write_text(crl_of(pki, "pem").text)
    bad = openssl("verify", "-crl_check", "-CAfile", str(tmp_path / "ca.pem"), "-CRLfile",
                  str(tmp_path / "crl.pem"), str(tmp_path / "leaf.pem"))
    assert bad.returncode != 0 and "revoked" in bad.stdout + bad.stderr
    # Shown, audited, and not twice.
    g = pki.admin("GET", f"/v1/admin/devices/{did}/certificates/{cert['serial']}")
    assert g.status_code == 200 and g.json()["state"] == "revoked"
    again = pki.admin("POST", f"/v1/admin/devices/{did}/certificates/{cert['serial']}/revoke")
    assert again.status_code == 409 and again.json()["error"]["code"] == "invalid_state"
    ev = pki.admin("GET", "/v1/admin/audit", params={"device": did, "type": "certificate.revoked"})
    assert [e["detail"] for e in ev.json()["events"]] == \
        [{"serial": cert["serial"], "reason": "keyCompromise"}]


def test_revoke_without_a_reason_and_bad_requests(pki):
    did, cert = issued(pki)
    path = f"/v1/admin/devices/{did}/certificates/{cert['serial']}/revoke"
    for body, code in (({"reason": "certificateHold"}, "invalid_reason"),
                       ({"reason": 3}, "invalid_reason"),
                       ({"why": "x"}, "invalid_request")):
        r = pki.admin("POST", path, json=body)
        assert r.status_code == 422 and r.json()["error"]["code"] == code, r.text
    assert pki.admin("GET", f"/v1/admin/devices/{did}/certificates/{cert['serial']}").json()["state"] == "active"
    for p in (f"/v1/admin/devices/{did}/certificates/00ff/revoke",
              f"/v1/admin/devices/{did}/certificates/NOTHEX/revoke",
              f"/v1/admin/devices/{device(pki)}/certificates/{cert['serial']}/revoke"):
        r = pki.admin("POST", p)
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found", (p, r.text)
    r = pki.admin("POST", path)  # no body: unspecified
    assert r.status_code == 200 and r.json()["revoke_reason"] == "unspecified"
    entry = load_crl(pki).get_revoked_certificate_by_serial_number(int(cert["serial"], 16))
    assert entry is not None
    # RFC 5280 5.3.1: no reasonCode extension for unspecified.
    assert len(entry.extensions) == 0


def test_revoking_a_device_revokes_its_certificates(pki):
    did, c1 = issued(pki)
    _, c2 = issued(pki, did)
    r = pki.admin("POST", f"/v1/admin/devices/{did}/revoke")
    assert r.status_code == 200, r.text
    certs = pki.admin("GET", f"/v1/admin/devices/{did}/certificates").json()["certificates"]
    assert {c["state"] for c in certs} == {"revoked"}
    assert {c["revoke_reason"] for c in certs} == {"cessationOfOperation"}
    crl = load_crl(pki)
    for c in (c1, c2):
        e = crl.get_revoked_certificate_by_serial_number(int(c["serial"], 16))
        assert e is not None
        assert e.extensions.get_extension_for_class(x509.CRLReason).value.reason == \
            x509.ReasonFlags.cessation_of_operation
    ev = pki.admin("GET", "/v1/admin/audit", params={"device": did, "type": "device.revoked"})
    assert sorted(ev.json()["events"][0]["detail"]["revoked_certificates"]) == \
        sorted([c1["serial"], c2["serial"]])


def test_crl_is_remade_when_it_ages(fresh_stack):
    """With nothing revoked, the maintenance pass makes a new CRL once the
    newest is ca_crl_interval old (60 s here: the smallest allowed)."""
    st = fresh_stack
    st.start(extra_env={"QKMS_CA_CRL_INTERVAL": "60", "QKMS_MAINTENANCE_INTERVAL": "1"})
    first = load_crl(st)
    n1 = first.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    assert first.next_update - first.last_update == datetime.timedelta(seconds=120)
    # Age it in the database rather than waiting a minute.
    st.psql("UPDATE ca_crls SET this_update = this_update - interval '61 seconds'")
    assert wait_for(lambda: load_crl(st).extensions.get_extension_for_class(
        x509.CRLNumber).value.crl_number == n1 + 1, timeout=20)
    assert int(st.psql("SELECT count(*) FROM ca_crls").strip()) == 2


def test_kmsctl_revoke_show_and_crl(pki, tmp_path):
    did, cert = issued(pki)
    p = pki.kmsctl("device", "cert", "show", did, cert["serial"], check=True)
    assert f"serial: {cert['serial']}" in p.stdout and "state: active" in p.stdout
    p = pki.kmsctl("device", "cert", "revoke", did, cert["serial"], "--reason", "superseded",
                   check=True)
    assert "state: revoked" in p.stdout and "revoke_reason: superseded" in p.stdout
    p = pki.kmsctl("device", "cert", "revoke", did, cert["serial"])
    assert p.returncode == 6 and "invalid_state" in p.stderr
    p = pki.kmsctl("ca", "crl", check=True)
    crl = x509.load_pem_x509_crl(p.stdout.encode())
    assert crl.get_revoked_certificate_by_serial_number(int(cert["serial"], 16)) is not None
    out = tmp_path / "crl.der"
    pki.kmsctl("ca", "crl", "--out", str(out), "--der", check=True)
    assert x509.load_der_x509_crl(out.read_bytes()).issuer == crl.issuer
    for args in (["device", "cert", "revoke", did], ["device", "cert", "show", did, "XYZ"],
                 ["device", "cert", "revoke", did, cert["serial"], "--csr", "x"],
                 ["device", "cert", "list", did, cert["serial"]], ["ca", "crl", "--der"]):
        p = pki.kmsctl(*args)
        assert p.returncode == 2, (args, p.stderr)


# ---- certificates issued elsewhere: binding --------------------------------------

def other_ca():
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "maker root")])
    now = datetime.datetime.utcnow()
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(key, hashes.SHA256()))
    return key, cert


def external_cert(ca, cn="maker-device", key=None, eku=(ExtendedKeyUsageOID.CLIENT_AUTH,),
                  is_ca=False, days=365, start_days=-1, serial=None):
    ca_key, ca_cert = ca
    key = key or ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.utcnow()
    b = (x509.CertificateBuilder()
         .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
         .issuer_name(ca_cert.subject).public_key(key.public_key())
         .serial_number(serial or x509.random_serial_number())
         .not_valid_before(now + datetime.timedelta(days=start_days))
         .not_valid_after(now + datetime.timedelta(days=days))
         .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True))
    if eku:
        b = b.add_extension(x509.ExtendedKeyUsage(list(eku)), critical=False)
    cert = b.sign(ca_key, hashes.SHA256())
    return cert.public_bytes(serialization.Encoding.PEM).decode(), key


def bind(st, did, pem):
    return st.admin("POST", f"/v1/admin/devices/{did}/certificates", json={"certificate": pem})


def test_bind_a_certificate_issued_elsewhere(pki):
    ca = other_ca()
    did = device(pki)
    pem, key = external_cert(ca)
    r = bind(pki, did, pem)
    assert r.status_code == 201, r.text
    j = r.json()
    cert = x509.load_pem_x509_certificate(pem.encode())
    assert j["kind"] == "bound" and j["ca_version"] is None and "chain" not in j
    assert int(j["serial"], 16) == cert.serial_number
    assert j["sha256"] == cert.fingerprint(hashes.SHA256()).hex()
    assert j["certificate"] == pem and j["subject"] == "CN=maker-device"
    listed = pki.admin("GET", f"/v1/admin/devices/{did}/certificates").json()["certificates"]
    assert [c["kind"] for c in listed] == ["bound"]
    ev = pki.admin("GET", "/v1/admin/audit", params={"device": did, "type": "certificate.bound"})
    assert ev.json()["events"][0]["detail"]["sha256"] == j["sha256"]
    # One certificate, one device; one key, one device.
    other = device(pki)
    before = cert_count(pki)
    r = bind(pki, other, pem)
    assert r.status_code == 422 and r.json()["error"]["code"] == "certificate_in_use"
    same_key, _ = external_cert(ca, cn="again", key=key)  # another certificate, same key
    r = bind(pki, other, same_key)
    assert r.status_code == 422 and r.json()["error"]["code"] == "certificate_in_use", r.text
    assert cert_count(pki) == before
    # Revoking a bound certificate: on record; not in the platform's CRL.
    r = pki.admin("POST", f"/v1/admin/devices/{did}/certificates/{j['serial']}/revoke",
                  json={"reason": "superseded"})
    assert r.status_code == 200 and r.json()["state"] == "revoked"
    assert load_crl(pki).get_revoked_certificate_by_serial_number(cert.serial_number) is None


@pytest.mark.parametrize("case,code", [
    ("garbage", "invalid_certificate"),
    ("csr_as_cert", "invalid_certificate"),
    ("expired", "certificate_expired"),
    ("not_yet", "invalid_certificate"),
    ("server_only", "not_client_certificate"),
    ("a_ca", "not_client_certificate"),
    ("rsa1024", "unsupported_key"),
    ("both", "invalid_request"),
    ("validity_too", "invalid_request"),
    ("not_a_string", "invalid_certificate"),
])
def test_bind_refusals_store_nothing(pki, case, code):
    ca = other_ca()
    did = device(pki)
    body = {}
    if case == "garbage":
        body["certificate"] = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
    elif case == "csr_as_cert":
        body["certificate"] = csr_pem(did)[0]
    elif case == "expired":
        body["certificate"] = external_cert(ca, days=-1, start_days=-10)[0]
    elif case == "not_yet":
        body["certificate"] = external_cert(ca, start_days=2)[0]
    elif case == "server_only":
        body["certificate"] = external_cert(ca, eku=(ExtendedKeyUsageOID.SERVER_AUTH,))[0]
    elif case == "a_ca":
        body["certificate"] = external_cert(ca, is_ca=True)[0]
    elif case == "rsa1024":
        body["certificate"] = external_cert(
            ca, key=rsa.generate_private_key(public_exponent=65537, key_size=1024))[0]
    elif case == "both":
        body = {"certificate": external_cert(ca)[0], "csr": csr_pem(did)[0]}
    elif case == "validity_too":
        body = {"certificate": external_cert(ca)[0], "validity_days": 10}
    elif case == "not_a_string":
        body["certificate"] = ["x"]
    before = cert_count(pki)
    r = pki.admin("POST", f"/v1/admin/devices/{did}/certificates", json=body)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == code
    assert cert_count(pki) == before


def test_kmsctl_bind(pki, tmp_path):
    did = device(pki)
    pem, _ = external_cert(other_ca())
    f = tmp_path / "c.pem"
    f.write_text(pem)
    p = pki.kmsctl("device", "cert", "bind", did, "--cert", str(f), check=True)
    assert "kind: bound" in p.stdout
    p = pki.kmsctl("device", "cert", "bind", did, "--cert", str(f))
    assert p.returncode == 6 and "certificate_in_use" in p.stderr
    assert pki.kmsctl("device", "cert", "bind", did).returncode == 2
    assert pki.kmsctl("device", "cert", "bind", did, "--cert", str(f), "--reason", "x").returncode == 2


# ---- expiry warnings ----------------------------------------------------------------

def test_certificates_expiring_soon_are_warned_about(fresh_stack):
    """certificate_warn_days: a log line per certificate at most once a day,
    and the qkms_certificates_expiring gauge."""
    st = fresh_stack
    st.start(extra_env={"QKMS_MAINTENANCE_INTERVAL": "1", "QKMS_CERTIFICATE_WARN_DAYS": "10"})
    soon, later = device(st), device(st)
    s = issue(st, soon, csr_pem(soon)[0], validity_days=5).json()
    issue(st, later, csr_pem(later)[0], validity_days=30)

    def warned():
        return [r for r in st.log_records() if r.get("msg") == "certificate expiring soon"]

    assert wait_for(lambda: warned(), timeout=20)
    w = warned()
    assert [(r["device_id"], r["serial"], r["warn_days"]) for r in w] == [(soon, s["serial"], 10)]
    assert w[0]["not_after"] == s["not_after"]

    def gauge():
        m = re.search(r"^qkms_certificates_expiring (\d+)$", st.api("GET", "/metrics").text, re.M)
        return int(m.group(1)) if m else None

    assert wait_for(lambda: gauge() == 1, timeout=20)
    time.sleep(2.5)  # more passes: still one warning (once a day)
    assert len(warned()) == 1
    # A revoked certificate is no longer counted.
    r = st.admin("POST", f"/v1/admin/devices/{soon}/certificates/{s['serial']}/revoke")
    assert r.status_code == 200
    assert wait_for(lambda: gauge() == 0, timeout=20)


# ---- after review: names, keys, the CRL's schedule ---------------------------------

def test_a_device_id_cannot_add_names_to_its_certificate(pki):
    """Device IDs may hold ',' and ':': the SAN is built as a value, never
    through OpenSSL's configuration syntax, where they would start more
    names (another device's URI, a DNS name)."""
    did = f"a,URI:urn:qkms:device:victim,DNS:x.example-{uuid.uuid4().hex[:6]}"
    r = pki.admin("POST", "/v1/admin/devices", json={"device_id": did, "type": "vehicle"})
    assert r.status_code == 201, r.text
    r = issue(pki, did, csr_pem(did)[0])
    assert r.status_code == 201, r.text
    cert = x509.load_pem_x509_certificate(r.json()["certificate"].encode())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert len(list(san)) == 1
    (uri,) = san.get_values_for_type(x509.UniformResourceIdentifier)
    assert uri.startswith("urn:qkms:device:a%2CURI:urn:qkms:device:victim%2CDNS:x.example-")
    assert san.get_values_for_type(x509.DNSName) == []


def test_one_key_one_device_when_issuing(pki):
    """A CSR is public: another device's, replayed, must not put that
    device's key under a second device ID."""
    a, b = device(pki), device(pki)
    key = ec.generate_private_key(ec.SECP256R1())
    assert issue(pki, a, csr_pem(None, key)[0]).status_code == 201
    before = cert_count(pki)
    r = issue(pki, b, csr_pem(None, key)[0])
    assert r.status_code == 422 and r.json()["error"]["code"] == "certificate_in_use", r.text
    assert a in r.json()["error"]["message"]
    assert cert_count(pki) == before
    # The same device may renew with its key.
    assert issue(pki, a, csr_pem(a, key)[0]).status_code == 201


def test_a_revocation_the_crl_missed_is_caught_up(fresh_stack):
    """A revocation whose CRL could not be made at once (here: written
    behind kmsd's back, as if the forced refresh had failed) is in the CRL
    the maintenance thread makes next, though the newest CRL is recent."""
    st = fresh_stack
    st.start(extra_env={"QKMS_CA_CRL_INTERVAL": "60"})
    did, cert = issued(st)
    n1 = load_crl(st).extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    st.psql(f"UPDATE certificates SET state = 'revoked', revoked_at = now(), "
            f"revoke_reason = 'keyCompromise' WHERE serial = '{cert['serial']}'")
    # Checked every min(60 s, ca_crl_interval / 4) = 15 s.
    assert wait_for(lambda: load_crl(st).get_revoked_certificate_by_serial_number(
        int(cert["serial"], 16)) is not None, timeout=25)
    assert load_crl(st).extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == n1 + 1


def test_kmsctl_ca_crl_needs_no_token(pki, tmp_path):
    env = {k: v for k, v in pki.env.items() if k not in ("QKMS_STATE", "KMS_TOKEN", "KMS_TOKEN_FILE")}
    env["KMS_ADDR"] = pki.url
    p = subprocess.run([KMSCTL, "ca", "crl"], env=env, cwd=tmp_path, capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    x509.load_pem_x509_crl(p.stdout.encode())
    p = subprocess.run([KMSCTL, "ca", "show"], env=env, cwd=tmp_path, capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 2  # the admin view still needs one


def test_certificate_never_outlives_the_device(pki):
    """Validity: never beyond the device's own (its active keys' latest
    notAfter); a device with no live key gets no certificate."""
    did = uid()
    r = pki.admin("POST", "/v1/admin/devices",
                  json={"device_id": did, "type": "vehicle", "keys": 1, "validity_days": 10})
    assert r.status_code == 201, r.text
    r = issue(pki, did, csr_pem(did)[0])
    assert r.status_code == 201, r.text
    cert = x509.load_pem_x509_certificate(r.json()["certificate"].encode())
    assert cert.not_valid_after - cert.not_valid_before <= datetime.timedelta(days=10, minutes=2)
    # Its only key destroyed (as the reaper would once it expired): refused.
    pki.psql(f"UPDATE device_keys SET state = 'destroyed', wrapped = NULL, master_version = NULL "
             f"WHERE device_pk = (SELECT id FROM devices WHERE device_id = '{did}')")
    r = issue(pki, did, csr_pem(did)[0])
    assert r.status_code == 409 and r.json()["error"]["code"] == "invalid_state", r.text
    assert "no live key" in r.json()["error"]["message"]
