"""Checking a package on the platform (issue 19: `kmsctl firmware verify`;
docs/api.md "Checking a package") against real kmsd, PostgreSQL and
SoftHSM: kmsd finds the release it signed under the package's ID and
opens the package as its targets would (their keys, the product's
certificates), so a release engineer learns before distribution whether
the package is the one signed, whole; a failed check is named."""
import datetime
import json
import uuid

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

import qkms_fw_py as fw
from helpers import error_code as code
from test_firmware_groups import sign_groups
from test_firmware_sign import Release


def verify(st, pkg, token=None):
    return st.api("POST", "/v1/admin/firmware/packages/verify", token=token or st.admin_token,
                  data=pkg, headers={"Content-Type": "application/octet-stream"})


def flip(pkg, at):
    b = bytearray(pkg)
    b[at] ^= 0x10
    return bytes(b)


@pytest.fixture
def rel(stack):
    return Release(stack)


def test_packages_for_devices_and_groups_check_out(rel, stack):
    assert stack.admin("POST", "/v1/admin/firmware/groups", json={"group": rel.group}).status_code == 201
    d1, _ = rel.device()
    image = b"\x7fELF" + bytes(range(256)) * 1000
    r = sign_groups(rel, image, [], devices=[d1], version="4.2")
    assert r.status_code == 201, r.text
    pkg = r.content
    v = verify(stack, pkg)
    assert v.status_code == 200, v.text
    got = v.json()
    assert got["valid"] is True
    assert (got["product"], got["version"], got["counter"], got["package_id"]) == (
        rel.product, "4.2", 1, r.headers["Qkms-Package-Id"])
    assert got["image_size"] == len(image) and got["signer"] == rel.key["sha256"]
    assert got["opened_with"] == {"kind": "device", "device_id": d1}
    assert got["targets"] == {"groups": [], "devices": [d1]}
    assert got["signed_by"].startswith("rel-") and got["signed_at"]
    # The device's key rotated since: its keys still open what it was sent.
    assert stack.admin("POST", f"/v1/admin/devices/{d1}/rotate", json={}).status_code == 200
    assert verify(stack, pkg).json()["valid"] is True
    # A group package opens under the group's key; release tokens check too.
    r = sign_groups(rel, b"group image", [rel.group])
    got = verify(stack, r.content, token=rel.token).json()
    assert got["valid"] is True and got["opened_with"] == {"kind": "group", "group": rel.group}
    assert got["counter"] == 2


def test_each_failure_is_named(rel, stack):
    d1, f1 = rel.device()
    r = sign_groups(rel, b"A" * 200000, [], devices=[d1])
    pkg = r.content
    n = int.from_bytes(pkg[10:12], "big")
    hlen = 40 + 80 * n
    cases = [
        (b"", "format"),
        (b"not a package at all, not at all, not at all", "format"),
        (flip(pkg, 20), "unknown_package"),            # the package ID
        (flip(pkg, 44 + 3), "not_a_target"),            # the recipient's kek_id
        (flip(pkg, 80 + 30), "not_a_target"),           # the wrapped content key: does not open
        (flip(pkg, hlen + 5), "auth"),                  # the first chunk
        (flip(pkg, len(pkg) - 1), "auth"),              # the last tag
        (pkg[:hlen + 65536 + 16], "auth"),              # cut at a chunk boundary
        (pkg + b"\0", "format"),                        # a byte after the last chunk
    ]
    for bad, check in cases:
        v = verify(stack, bad)
        assert v.status_code == 200, v.text
        got = v.json()
        assert (got["valid"], got["check"]) == (False, check), (check, got)
        assert got["message"].startswith(check)
    checked = stack.psql("SELECT count(*) FROM audit_log WHERE event = 'firmware.checked'"
                         " AND detail->>'check' = 'auth'").strip()
    assert int(checked) >= 3
    # Signed by another key under a recorded package ID, for the device's
    # own keys: it opens, and the signature is refused.
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "forger")]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "forger")]))
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=9)).sign(key, hashes.SHA256()))
    idx = max(k["index"] for k in f1["keys"])
    forged = fw.build(b"evil", key, cert.public_bytes(Encoding.DER), product=rel.product,
                      version="9", counter=99, targets={"groups": [], "devices": [d1]},
                      recipients=[fw.DeviceKey(d1, idx, bytes.fromhex(
                          [k for k in f1["keys"] if k["index"] == idx][0]["key"]))],
                      package_id=pkg[16:32], not_before=int(now.timestamp()))
    got = verify(stack, forged).json()
    assert (got["valid"], got["check"]) == (False, "signature"), got
    # A package that opens but is not the recorded release (the row edited).
    stack.psql(f"UPDATE firmware_releases SET version = 'other'"
               f" WHERE package_id = '{r.headers['Qkms-Package-Id']}'")
    got = verify(stack, pkg).json()
    assert (got["valid"], got["check"]) == (False, "record"), got


def test_refusals(rel, stack):
    d1, _ = rel.device()
    pkg = sign_groups(rel, b"x", [], devices=[d1]).content
    r = stack.api("POST", "/v1/admin/firmware/packages/verify", token=stack.admin_token,
                  data=pkg, headers={"Content-Type": "application/json"})
    assert (r.status_code, code(r)) == (415, "unsupported_media_type")
    crypto = stack.admin("POST", "/v1/admin/tokens", json={
        "name": "c-" + uuid.uuid4().hex[:8], "role": "crypto", "acts_for": "@platform"})
    assert crypto.status_code == 201, crypto.text
    r = verify(stack, pkg, token=crypto.json()["token"])
    assert (r.status_code, code(r)) == (403, "forbidden")


def test_kmsctl_firmware_verify(rel, stack, tmp_path):
    d1, _ = rel.device()
    r = sign_groups(rel, b"kmsctl" * 5000, [], devices=[d1], version="7")
    (tmp_path / "ok.pkg").write_bytes(r.content)
    (tmp_path / "bad.pkg").write_bytes(flip(r.content, len(r.content) - 3))
    p = stack.kmsctl("firmware", "verify", str(tmp_path / "ok.pkg"), token=rel.token)
    assert p.returncode == 0 and p.stdout.startswith(f"Valid: {rel.product} 7 (counter 1"), \
        p.stdout + p.stderr
    p = stack.kmsctl("firmware", "verify", str(tmp_path / "ok.pkg"), "--json", token=rel.token)
    assert p.returncode == 0 and json.loads(p.stdout)["opened_with"]["device_id"] == d1
    p = stack.kmsctl("firmware", "verify", str(tmp_path / "bad.pkg"), token=rel.token)
    assert p.returncode == 6 and p.stdout.startswith("Invalid (auth): auth"), p.stdout + p.stderr
    p = stack.kmsctl("firmware", "verify", str(tmp_path / "none.pkg"), token=rel.token)
    assert p.returncode == 2


def test_a_revoked_firmware_key(rel, stack, tmp_path):
    """A lost firmware key is revoked: it signs nothing more, is no longer
    among the certificates to pin, a package it signed fails the platform's
    check, its certificate is in the CA's CRL, and create makes the next
    version."""
    d1, f1 = rel.device()
    old_pkg = sign_groups(rel, b"signed by v1", [], devices=[d1]).content
    r = stack.admin("POST", f"/v1/admin/firmware/keys/{rel.product}/rotate")
    assert r.status_code == 200 and r.json()["version"] == 2
    r = stack.admin("POST", f"/v1/admin/firmware/keys/{rel.product}/versions/1/revoke",
                    json={"reason": "keyCompromise"})
    assert r.status_code == 200, r.text
    got = r.json()
    assert (got["state"], got["revoke_reason"]) == ("revoked", "keyCompromise") and got["revoked_at"]
    got = verify(stack, old_pkg).json()
    assert (got["valid"], got["check"]) == (False, "signature"), got
    # In the CRL, by the certificate's serial.
    from cryptography import x509 as cx
    serial = cx.load_pem_x509_certificate(rel.key["certificate"].encode()).serial_number
    crl = cx.load_der_x509_crl(stack.api("GET", "/v1/ca/crl").content)
    entry = crl.get_revoked_certificate_by_serial_number(serial)
    assert entry is not None
    # Not among the certificates to pin.
    p = stack.kmsctl("firmware", "keys", "list", rel.product, "--pem", token=stack.admin_token)
    assert p.returncode == 0 and rel.key["certificate"].strip() not in p.stdout
    # The active one revoked: nothing signs until create makes version 3.
    p = stack.kmsctl("firmware", "keys", "revoke", rel.product, "2", "--reason", "superseded",
                     "--json", token=stack.admin_token)
    assert p.returncode == 0 and json.loads(p.stdout)["state"] == "revoked", p.stderr
    r = sign_groups(rel, b"x", [], devices=[d1])
    assert (r.status_code, code(r)) == (409, "no_firmware_key")
    r = stack.admin("POST", "/v1/admin/firmware/keys", json={"product": rel.product})
    assert r.status_code == 201 and r.json()["version"] == 3
    assert sign_groups(rel, b"x", [], devices=[d1]).status_code == 201
    for path, body, status, c in (
            (f"/v1/admin/firmware/keys/{rel.product}/versions/1/revoke", {}, 409, "conflict"),
            (f"/v1/admin/firmware/keys/{rel.product}/versions/9/revoke", {}, 404, "not_found"),
            (f"/v1/admin/firmware/keys/{rel.product}/versions/x/revoke", {}, 404, "not_found"),
            (f"/v1/admin/firmware/keys/{rel.product}/versions/3/revoke", {"reason": "lost"},
             422, "invalid_reason"),
            (f"/v1/admin/firmware/keys/{rel.product}/versions/3/revoke", {"why": "x"},
             422, "invalid_request")):
        r = stack.admin("POST", path, json=body)
        assert (r.status_code, code(r)) == (status, c), (path, r.text)
    # The revoked versions' private keys are gone from the token.
    import os
    import re
    import subprocess
    from conftest import SOFTHSM
    env = dict(os.environ, SOFTHSM2_CONF=stack.env["SOFTHSM2_CONF"])
    out = subprocess.run(["pkcs11-tool", "--module", SOFTHSM, "--token-label", "qkms", "--login",
                          "--pin", stack.token_pin, "--list-objects", "--type", "privkey"],
                         env=env, capture_output=True, text=True, check=True).stdout
    labels = set(re.findall(r"label:\s+(\S+)", out))
    assert f"qkms-fw-{rel.product}-3" in labels
    assert not {f"qkms-fw-{rel.product}-1", f"qkms-fw-{rel.product}-2"} & labels
    events = [json.loads(x) for x in stack.psql(
        "SELECT detail::text FROM audit_log WHERE event = 'firmware.key_revoked'"
        f" AND detail->>'product' = '{rel.product}' ORDER BY id").splitlines()]
    assert [(x["version"], x["reason"]) for x in events] == [(1, "keyCompromise"),
                                                             (2, "superseded")]
