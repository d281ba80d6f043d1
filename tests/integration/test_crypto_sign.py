"""Signatures with the platform's data-signing keys (issue 19: POST
/v1/crypto/sign and /verify; docs/api.md "Data-signing keys",
"Signatures"; seed 000: the cipher machine signs for the business
platform) against real kmsd, PostgreSQL and SoftHSM: named ECDSA P-256
keys in the token with certificates from the platform CA, never the v2
answer key nor a firmware key; signatures checked by `cryptography` and
`openssl`, rotation with overlap, refusals audited."""
import base64
import hashlib
import json
import os
import subprocess
import uuid

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from helpers import error_code as code, uid
from test_crypto_services import b64, crypto_token


def pub(cert_pem):
    return x509.load_pem_x509_certificate(cert_pem.encode())


def sign(st, tok, **body):
    return st.api("POST", "/v1/crypto/sign", token=tok, json=body)


def verify(st, tok, **body):
    return st.api("POST", "/v1/crypto/verify", token=tok, json=body)


@pytest.fixture
def key(stack):
    name = "billing-" + uuid.uuid4().hex[:8]
    r = stack.admin("POST", "/v1/admin/signing-keys", json={"name": name})
    assert r.status_code == 201, r.text
    return r.json()


@pytest.fixture
def plat(stack):
    return crypto_token(stack, "@platform")


def test_the_platform_signs_and_anyone_checks(stack, key, plat):
    name = key["name"]
    assert (key["version"], key["state"]) == (1, "active")
    cert = pub(key["certificate"])
    assert cert.subject.rfc4514_string() .startswith(f"CN=qkms signing {name} 1")
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert [o.dotted_string for o in eku] == ["1.3.6.1.5.5.7.3.36"]
    data = os.urandom(5000)
    r = sign(stack, plat, key=name, data=b64(data))
    assert r.status_code == 200, r.text
    got = r.json()
    assert (got["key"], got["version"], got["algorithm"]) == (name, 1, "ecdsa-p256-sha256")
    assert got["certificate_sha256"] == key["sha256"]
    sig = base64.b64decode(got["signature"])
    cert.public_key().verify(sig, data, ec.ECDSA(hashes.SHA256()))
    # A digest signs the same way (large data stays with the caller).
    r = sign(stack, plat, key=name, digest=hashlib.sha256(data).hexdigest())
    cert.public_key().verify(base64.b64decode(r.json()["signature"]), data,
                             ec.ECDSA(hashes.SHA256()))
    # Verification: any crypto token; a tampered message is an answer.
    dev = stack.admin("POST", "/v1/admin/devices", json={"device_id": uid("BE"), "type": "meter"})
    other = crypto_token(stack, dev.json()["device_id"])
    for tok in (plat, other):
        r = verify(stack, tok, key=name, data=b64(data), signature=got["signature"])
        assert r.status_code == 200 and r.json() == {"valid": True, "key": name, "version": 1}
    r = verify(stack, other, key=name, data=b64(data + b"!"), signature=got["signature"])
    assert r.json() == {"valid": False, "key": name, "version": None}
    r = verify(stack, other, key=name, digest=hashlib.sha256(data).hexdigest(),
               signature=b64(b"not DER"))
    assert r.json()["valid"] is False
    # Only @platform signs.
    r = sign(stack, other, key=name, data=b64(b"x"))
    assert (r.status_code, code(r)) == (403, "not_a_party")
    # Audited with sizes, never the data nor its digest.
    rows = stack.psql("SELECT event || ' ' || detail::text FROM audit_log WHERE"
                      f" detail->>'key' = '{name}' ORDER BY id").splitlines()
    events = [r.split(" ", 1)[0] for r in rows]
    assert events == ["crypto.sign", "crypto.sign", "crypto.verify", "crypto.verify",
                      "crypto.verify", "crypto.verify", "crypto.refused"], events
    assert json.loads(rows[0].split(" ", 1)[1])["bytes"] == 5000
    assert json.loads(rows[1].split(" ", 1)[1])["bytes"] == -1
    assert hashlib.sha256(data).hexdigest() not in "\n".join(rows)


def test_rotation_keeps_old_signatures_checkable(stack, key, plat):
    name = key["name"]
    old = sign(stack, plat, key=name, data=b64(b"ledger 1")).json()
    r = stack.admin("POST", f"/v1/admin/signing-keys/{name}/rotate", json={"overlap_days": 7})
    assert r.status_code == 200 and r.json()["version"] == 2, r.text
    new = sign(stack, plat, key=name, data=b64(b"ledger 2")).json()
    assert new["version"] == 2 and new["certificate_sha256"] == r.json()["sha256"]
    r = verify(stack, plat, key=name, data=b64(b"ledger 1"), signature=old["signature"])
    assert r.json() == {"valid": True, "key": name, "version": 1}
    r = verify(stack, plat, key=name, data=b64(b"ledger 1"), signature=old["signature"], version=2)
    assert r.json() == {"valid": False, "key": name, "version": None}
    r = verify(stack, plat, key=name, data=b64(b"x"), signature=old["signature"], version=9)
    assert (r.status_code, code(r)) == (404, "unknown_key")
    keys = stack.admin("GET", f"/v1/admin/signing-keys?name={name}").json()["keys"]
    assert [(k["name"], k["version"], k["state"]) for k in keys] == [
        (name, 1, "retired"), (name, 2, "active")]
    assert stack.psql("SELECT event FROM audit_log WHERE detail->>'name' = "
                      f"'{name}' ORDER BY id").split() == ["signing.key_created",
                                                           "signing.key_rotated"]


def test_refusals(stack, key, plat):
    name = key["name"]
    # A product's firmware key is no data key, and the other way round.
    product = "prod-" + uuid.uuid4().hex[:8]
    assert stack.admin("POST", "/v1/admin/firmware/keys",
                       json={"product": product}).status_code == 201
    r = sign(stack, plat, key=product, data=b64(b"x"))
    assert (r.status_code, code(r)) == (404, "unknown_key")
    assert name not in json.dumps(stack.admin("GET", "/v1/admin/firmware/keys").json())
    # The same name may exist in both families, as separate keys.
    r = stack.admin("POST", "/v1/admin/signing-keys", json={"name": product})
    assert r.status_code == 201 and r.json()["sha256"] != stack.admin(
        "GET", f"/v1/admin/firmware/keys?product={product}").json()["keys"][0]["sha256"]
    cases = [
        (dict(key="nope-" + uuid.uuid4().hex[:6], data=b64(b"x")), 404, "unknown_key"),
        (dict(key="-bad", data=b64(b"x")), 422, "invalid_name"),
        (dict(key=name), 422, "invalid_request"),
        (dict(key=name, data=b64(b"x"), digest="00" * 32), 422, "invalid_request"),
        (dict(key=name, digest="zz" * 32), 422, "invalid_digest"),
        (dict(key=name, digest="00" * 31), 422, "invalid_digest"),
        (dict(key=name, data="***"), 422, "invalid_base64"),
        (dict(key=name, data=b64(b"x"), extra=1), 422, "invalid_request"),
        (dict(key=5, data=b64(b"x")), 422, "invalid_request"),
    ]
    for body, status, c in cases:
        r = sign(stack, plat, **body)
        assert (r.status_code, code(r)) == (status, c), (body, r.text)
    r = verify(stack, plat, key=name, data=b64(b"x"))
    assert (r.status_code, code(r)) == (422, "invalid_request")
    r = verify(stack, plat, key=name, data=b64(b"x"), signature=b64(b"s"), version=0)
    assert (r.status_code, code(r)) == (422, "invalid_request")
    # Admin tokens do not sign (a crypto token is made for it).
    r = sign(stack, stack.admin_token, key=name, data=b64(b"x"))
    assert (r.status_code, code(r)) == (403, "forbidden")
    for body, status, c in (({"name": name}, 409, "conflict"), ({"name": "-x"}, 422, "invalid_name"),
                            ({"product": name}, 422, "invalid_request")):
        r = stack.admin("POST", "/v1/admin/signing-keys", json=body)
        assert (r.status_code, code(r)) == (status, c), (body, r.text)
    r = stack.admin("POST", "/v1/admin/signing-keys/nope-x/rotate")
    assert (r.status_code, code(r)) == (404, "not_found")


def test_kmsctl_signing(stack, key, plat, tmp_path):
    name = key["name"]
    (tmp_path / "invoice.xml").write_bytes(b"<invoice>42</invoice>")
    r = stack.kmsctl("signing", "sign", str(tmp_path / "invoice.xml"), "--key", name, "--out",
                     str(tmp_path / "invoice.sig"), token=plat)
    assert r.returncode == 0 and "version 1" in r.stdout, r.stdout + r.stderr
    (tmp_path / "cert.pem").write_text(key["certificate"])
    pubpem = subprocess.run(["openssl", "x509", "-in", str(tmp_path / "cert.pem"), "-pubkey",
                             "-noout"], capture_output=True, text=True, check=True).stdout
    (tmp_path / "pub.pem").write_text(pubpem)
    v = subprocess.run(["openssl", "dgst", "-sha256", "-verify", str(tmp_path / "pub.pem"),
                        "-signature", str(tmp_path / "invoice.sig"), str(tmp_path / "invoice.xml")],
                       capture_output=True, text=True)
    assert v.returncode == 0 and "Verified OK" in v.stdout, v.stdout + v.stderr
    r = stack.kmsctl("signing", "verify", str(tmp_path / "invoice.xml"), "--key", name,
                     "--signature", str(tmp_path / "invoice.sig"), token=plat)
    assert r.returncode == 0 and r.stdout.strip() == "Valid.", r.stdout + r.stderr
    (tmp_path / "other.xml").write_bytes(b"<invoice>43</invoice>")
    r = stack.kmsctl("signing", "verify", str(tmp_path / "other.xml"), "--key", name,
                     "--signature", str(tmp_path / "invoice.sig"), token=plat)
    assert r.returncode == 6 and r.stdout.strip() == "Invalid.", r.stdout + r.stderr
    r = stack.kmsctl("signing", "sign", str(tmp_path / "invoice.xml"), "--key", name, "--json",
                     token=plat)
    assert r.returncode == 0 and json.loads(r.stdout)["version"] == 1
    r = stack.kmsctl("signing", "keys", "list", name, token=stack.admin_token)
    assert r.returncode == 0 and "NAME" in r.stdout and name in r.stdout, r.stdout
    r = stack.kmsctl("signing", "keys", "rotate", name, "--json", token=stack.admin_token)
    assert r.returncode == 0 and json.loads(r.stdout)["version"] == 2
    # A refused signature leaves no file.
    r = stack.kmsctl("signing", "sign", str(tmp_path / "invoice.xml"), "--key", "nope-key",
                     "--out", str(tmp_path / "none.sig"), token=plat)
    assert r.returncode == 6 and not (tmp_path / "none.sig").exists(), r.stderr


def test_a_data_certificate_never_passes_for_the_platforms(stack, key, tmp_path):
    """A data-signing key signs digests back ends choose: its certificate
    (extended key usage "qkms data signing") is refused as the platform's
    v2 signing certificate by the C library and the Python implementation,
    as firmware certificates (codeSigning) are."""
    import qkms_proto2_py as p2
    from test_protocol_v2 import device_cli
    certs = stack.api("GET", "/v1/platform/certificates").json()["certificates"]
    agree = [c["pem"] for c in certs if c["purpose"] == "agree" and c["state"] == "active"][0]
    ca = stack.api("GET", "/v1/ca").text
    product = "prod-" + uuid.uuid4().hex[:8]
    fwcert = stack.admin("POST", "/v1/admin/firmware/keys",
                         json={"product": product}).json()["certificate"]
    did = uid("V2")
    assert stack.admin("POST", "/v1/admin/devices", json={"device_id": did,
                                                           "type": "encryptor"}).status_code == 201
    fill = stack.admin("POST", f"/v1/admin/devices/{did}/fill", json={"plaintext": True}).json()
    (tmp_path / "fill.json").write_text(json.dumps(fill["plaintext"]))
    for pem in (key["certificate"], fwcert):
        (tmp_path / "srv.pem").write_text(pem + agree)
        r = device_cli("key", "--v2", "--server-cert", str(tmp_path / "srv.pem"), "--fill",
                       str(tmp_path / "fill.json"), "--url", stack.url, "--session", uid("S"),
                       "--peer", "NOBODY", check=False)
        assert r.returncode == 2 and "extended key usage" in r.stderr, r.stderr
        plat = p2.Platform.from_pem(pem, agree)
        with pytest.raises(p2.ProtocolError, match="extended key usage"):
            plat.verify(ca)


def test_a_revoked_data_key_signs_and_verifies_nothing(stack, key, plat):
    name = key["name"]
    sig = sign(stack, plat, key=name, data=b64(b"before")).json()["signature"]
    r = stack.admin("POST", f"/v1/admin/signing-keys/{name}/versions/1/revoke",
                    json={"reason": "keyCompromise"})
    assert r.status_code == 200 and r.json()["state"] == "revoked", r.text
    r = sign(stack, plat, key=name, data=b64(b"after"))
    assert (r.status_code, code(r)) == (404, "unknown_key")
    r = verify(stack, plat, key=name, data=b64(b"before"), signature=sig)
    assert (r.status_code, code(r)) == (404, "unknown_key")
    r = stack.kmsctl("signing", "keys", "create", name, "--json", token=stack.admin_token)
    assert r.returncode == 0 and json.loads(r.stdout)["version"] == 2, r.stderr
    r = verify(stack, plat, key=name, data=b64(b"before"), signature=sig)
    assert r.json() == {"valid": False, "key": name, "version": None}
    assert stack.psql("SELECT count(*) FROM audit_log WHERE event = 'signing.key_revoked'"
                      f" AND detail->>'name' = '{name}'").strip() == "1"
