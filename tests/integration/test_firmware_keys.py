"""Firmware signing keys of product lines (issue 19; docs/firmware.md,
docs/api.md "Firmware signing keys") against real kmsd, PostgreSQL and
SoftHSM: made in the token (sensitive, never extractable), certified by
the platform CA for code signing, one active per product, rotation with an
overlap, the roles that may see and make them, audit rows, kmsctl."""
import datetime
import json
import subprocess
import uuid

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from conftest import SOFTHSM
from helpers import error_code as code


def product():
    return "meter-" + uuid.uuid4().hex[:8]


def token(st, role):
    r = st.admin("POST", "/v1/admin/tokens", json={"name": role[:3] + "-" + uuid.uuid4().hex[:8],
                                                   "role": role})
    assert r.status_code == 201, r.text
    return r.json()["token"]


def test_a_products_first_key(stack, tmp_path):
    st, p = stack, product()
    r = st.admin("POST", "/v1/admin/firmware/keys", json={"product": p})
    assert r.status_code == 201, r.text
    k = r.json()
    assert (k["product"], k["version"], k["state"], k["overlap_until"], k["retired_at"]) == (
        p, 1, "active", None, None)
    cert = x509.load_pem_x509_certificate(k["certificate"].encode())
    assert k["subject"] == f"CN=qkms firmware {p} 1,O=qkms"
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert cert.public_key().curve.name == "secp256r1"
    assert cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value == \
        x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING])
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.digital_signature and not ku.key_cert_sign
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert cert.not_valid_after - datetime.datetime.utcnow() > datetime.timedelta(days=1000)
    # Issued by the platform CA: openssl verifies the chain.
    ca = tmp_path / "ca.pem"
    ca.write_text(st.api("GET", "/v1/ca").text)
    leaf = tmp_path / "fw.pem"
    leaf.write_text(k["certificate"])
    v = subprocess.run(["openssl", "verify", "-CAfile", str(ca), "-purpose", "any", str(leaf)],
                       capture_output=True, text=True)
    assert v.returncode == 0 and ": OK" in v.stdout, v.stdout + v.stderr
    # The private key is in the token, sensitive and never extractable.
    out = subprocess.run(["pkcs11-tool", "--module", SOFTHSM, "--token-label", "qkms",
                          "--login", "--pin", st.token_pin, "--list-objects", "--type", "privkey"],
                         capture_output=True, text=True, env=st.env)
    block = out.stdout.split(f'label:      qkms-fw-{p}-1')
    assert len(block) == 2, out.stdout + out.stderr
    attrs = block[1].split("Private Key Object")[0]
    assert "sign" in attrs and "sensitive" in attrs and "never extractable" in attrs, attrs
    # One per product: a second create is a conflict.
    r = st.admin("POST", "/v1/admin/firmware/keys", json={"product": p})
    assert (r.status_code, code(r)) == (409, "conflict")
    rows = st.psql("SELECT detail->>'product' || ' ' || (detail->>'version') FROM audit_log"
                   " WHERE event = 'firmware.key_created'").split("\n")
    assert f"{p} 1" in rows


def test_rotation_keeps_the_old_key_in_its_overlap(stack):
    st, p = stack, product()
    assert st.admin("POST", "/v1/admin/firmware/keys", json={"product": p}).status_code == 201
    r = st.admin("POST", f"/v1/admin/firmware/keys/{p}/rotate", json={"overlap_days": 7})
    assert r.status_code == 200, r.text
    assert (r.json()["version"], r.json()["state"]) == (2, "active")
    r = st.admin("GET", f"/v1/admin/firmware/keys?product={p}")
    assert r.status_code == 200
    keys = r.json()["keys"]
    assert [(k["version"], k["state"]) for k in keys] == [(1, "retired"), (2, "active")]
    until = datetime.datetime.fromisoformat(keys[0]["overlap_until"].replace("Z", "+00:00"))
    now = datetime.datetime.now(datetime.timezone.utc)
    assert datetime.timedelta(days=6, hours=23) < until - now < datetime.timedelta(days=7, hours=1)
    assert keys[0]["sha256"] != keys[1]["sha256"]
    # An empty body takes the default overlap (30 days).
    r = st.admin("POST", f"/v1/admin/firmware/keys/{p}/rotate")
    assert r.status_code == 200 and r.json()["version"] == 3, r.text
    assert st.psql("SELECT count(*) FROM audit_log WHERE event = 'firmware.key_rotated'"
                   f" AND detail->>'product' = '{p}'").strip() == "2"


def test_refusals(stack):
    st = stack
    for body, status, c in (({"product": "-bad"}, 422, "invalid_product"),
                            ({"product": "a" * 65}, 422, "invalid_product"),
                            ({"product": 5}, 422, "invalid_request"),
                            ({}, 422, "invalid_request"),
                            ({"product": "x", "more": 1}, 422, "invalid_request")):
        r = st.admin("POST", "/v1/admin/firmware/keys", json=body)
        assert (r.status_code, code(r)) == (status, c), body
    r = st.admin("POST", f"/v1/admin/firmware/keys/{product()}/rotate", json={})
    assert (r.status_code, code(r)) == (404, "not_found")
    p = product()
    assert st.admin("POST", "/v1/admin/firmware/keys", json={"product": p}).status_code == 201
    for days in (0, 366, -1, 10**12):
        r = st.admin("POST", f"/v1/admin/firmware/keys/{p}/rotate", json={"overlap_days": days})
        assert (r.status_code, code(r)) == (422, "invalid_overlap"), days
    r = st.admin("POST", f"/v1/admin/firmware/keys/{p}/rotate", json={"overlap_days": "7"})
    assert (r.status_code, code(r)) == (422, "invalid_request")
    r = st.admin("GET", "/v1/admin/firmware/keys?product=no/such")
    assert (r.status_code, code(r)) == (422, "invalid_product")
    # Release and operator tokens see the keys; only admins make them.
    for role in ("release", "operator"):
        tok = token(st, role)
        assert st.api("GET", "/v1/admin/firmware/keys", token=tok).status_code == 200
        for method, path in (("POST", "/v1/admin/firmware/keys"),
                             ("POST", f"/v1/admin/firmware/keys/{p}/rotate")):
            r = st.api(method, path, token=tok, json={"product": product()})
            assert (r.status_code, code(r)) == (403, "forbidden"), (role, path)
    # A release token reaches nothing else of the admin API.
    r = st.api("GET", "/v1/admin/devices", token=token(st, "release"))
    assert (r.status_code, code(r)) == (403, "forbidden")


def test_kmsctl_firmware_keys(stack):
    st, p = stack, product()
    r = st.kmsctl("firmware", "keys", "create", p, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["version"] == 1
    r = st.kmsctl("firmware", "keys", "rotate", p, "--overlap-days", "3")
    assert r.returncode == 0, r.stderr
    assert "version: 2" in r.stdout and "BEGIN CERTIFICATE" in r.stdout
    r = st.kmsctl("firmware", "keys", "list", p)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["PRODUCT", "VERSION", "STATE", "NOT-AFTER", "OVERLAP-UNTIL",
                                "SHA256"]
    assert [ln.split()[:3] for ln in lines[1:]] == [[p, "1", "retired"], [p, "2", "active"]]
    r = st.kmsctl("firmware", "keys", "list", p, "--pem")
    assert r.returncode == 0 and r.stdout.count("BEGIN CERTIFICATE") == 2
    # Once the old key's overlap is over, devices pin only the active one.
    st.psql(f"UPDATE firmware_keys SET overlap_until = now() - interval '1 minute'"
            f" WHERE product = '{p}' AND state = 'retired'")
    r = st.kmsctl("firmware", "keys", "list", p, "--pem")
    assert r.returncode == 0 and r.stdout.count("BEGIN CERTIFICATE") == 1
    for args in (("firmware", "keys", "sign", p), ("firmware", "keys", "create"),
                 ("firmware", "keys", "create", p, "--overlap-days", "3"),
                 ("firmware", "keys", "rotate", p, "--overlap-days", "0"),
                 ("firmware", "keys", "rotate", "a/b")):
        r = st.kmsctl(*args)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
