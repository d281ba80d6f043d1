"""Device protocol v2 (issue 16, docs/protocol.md "qkms device protocol v2")
end to end against real kmsd, PostgreSQL and SoftHSM, with the independent
Python implementation (qkms_proto2_py) as the device: the three modes and
three key sources, v1<->v2 pairing, the platform's keys and their rotation,
and the refusals (each audited, with the nonce recorded)."""
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
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

import helpers
from conftest import SOFTHSM, _finish, wait_for
from helpers import error_code as code, uid, veh_enc_stack
from qkms_proto_py import Device
from qkms_proto2_py import Device2, Platform, ProtocolError, b64u, b64u_decode, sign


QKMSDEV = os.environ.get("QKMS_DEVICE", os.path.join(os.path.dirname(__file__), "..", "..",
                                                      "build/asan/bin/qkms-device"))


@pytest.fixture(scope="module")
def st():
    s = veh_enc_stack("qkms-v2", {"QKMS_PROTOCOL_CLOCK_SKEW": "60",
                                  "QKMS_CA_CRL_INTERVAL": "60"})
    yield s
    _finish(s)


def platform(st):
    r = requests.get(st.url + "/v1/platform/certificates", timeout=10)
    assert r.status_code == 200, r.text
    return Platform.from_certificates(r.json())


def register(st, type_="encryptor"):
    did = uid(type_[:3].upper())
    r = st.admin("POST", "/v1/admin/devices",
                 json={"device_id": did, "type": type_, "group": st.group})
    assert r.status_code == 201, r.text
    return did


def cert_device(st, mode, type_="encryptor", did=None):
    """A device with a key pair and a certificate from the platform CA,
    speaking v2 in mode 1 or 2."""
    did = did or register(st, type_)
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, did)]))
           .sign(key, hashes.SHA256()))
    r = st.admin("POST", f"/v1/admin/devices/{did}/certificates",
                 json={"csr": csr.public_bytes(serialization.Encoding.PEM).decode()})
    assert r.status_code == 201, r.text
    cert = x509.load_pem_x509_certificate(r.json()["certificate"].encode())
    dev = Device2(did, mode, private_key=key,
                  certificate=cert.public_bytes(serialization.Encoding.DER))
    dev.serial = r.json()["serial"]
    return dev


def key_device(st, type_="vehicle"):
    """A v1 device (pre-filled keys) and the same device as a v2 mode 3 one."""
    did = register(st, type_)
    r = st.admin("POST", f"/v1/admin/devices/{did}/fill", json={"plaintext": True})
    assert r.status_code == 200, r.text
    doc = r.json()["plaintext"]
    return Device.from_fill(doc), Device2.from_fill(doc, 3)


class Peer:
    def __init__(self, device_id):
        self.device_id = device_id


def post(st, req, raw=None, url=None):
    return requests.post((url or st.url) + req.path, data=raw if raw is not None else req.raw,
                         headers={"Content-Type": "application/json"}, timeout=30)


def v2_key(st, dev, plat, sid, peer, source="a", **kw):
    req = dev.key_request(plat, sid, peer, key_source=source, **kw)
    r = post(st, req)
    assert r.status_code == 200, r.text
    return req, dev.open_key_response(req, r.content)


def refusals(st, reason):
    return int(st.psql("SELECT count(*) FROM audit_log WHERE event = 'session.refused'"
                       f" AND detail->>'reason' = '{reason}'").strip())


# ---- the platform's keys ----------------------------------------------------

def test_platform_certificates_chain_to_the_ca_and_live_in_the_token(st, tmp_path):
    doc = requests.get(st.url + "/v1/platform/certificates", timeout=10).json()
    certs = doc["certificates"]
    assert sorted(c["purpose"] for c in certs) == ["agree", "sign"]
    assert all(c["state"] == "active" and c["overlap_until"] is None for c in certs)
    ca = requests.get(st.url + "/v1/ca", timeout=10).text
    (tmp_path / "ca.pem").write_text(ca)
    for c in certs:
        (tmp_path / "c.pem").write_text(c["pem"])
        v = subprocess.run(["openssl", "verify", "-CAfile", str(tmp_path / "ca.pem"),
                            str(tmp_path / "c.pem")], capture_output=True, text=True)
        assert v.returncode == 0, v.stdout + v.stderr
        x = x509.load_pem_x509_certificate(c["pem"].encode())
        ku = x.extensions.get_extension_for_class(x509.KeyUsage).value
        assert ku.digital_signature == (c["purpose"] == "sign")
        assert ku.key_agreement == (c["purpose"] == "agree")
        assert c["sha256"] == x.fingerprint(hashes.SHA256()).hex()
    p = platform(st)
    p.verify([x509.load_pem_x509_certificate(b"-----BEGIN" + part)
              for part in ca.encode().split(b"-----BEGIN")[1:]])
    # The private keys: in the token, sensitive, never extractable, one
    # signing and one deriving.
    env = dict(os.environ, SOFTHSM2_CONF=st.env["SOFTHSM2_CONF"])
    out = subprocess.run(["pkcs11-tool", "--module", SOFTHSM, "--token-label", "qkms", "--login",
                          "--pin", st.token_pin, "--list-objects", "--type", "privkey"],
                         env=env, capture_output=True, text=True, timeout=60, check=True).stdout
    blocks = {re.search(r"label:\s+(\S+)", b).group(1): b
              for b in out.split("Private Key Object")[1:]}
    for label, usage in (("qkms-v2-sign-1", ["sign"]), ("qkms-v2-agree-1", ["derive"])):
        b = blocks[label]
        access = [a.strip() for a in re.search(r"Access:\s+(.*)", b).group(1).split(",")]
        assert "sensitive" in access and "never extractable" in access
        assert "extractable" not in access
        assert [u.strip() for u in re.search(r"Usage:\s+(.*)", b).group(1).split(",")] == usage
    assert st.psql("SELECT count(*) FROM platform_keys").strip() == "2"


# ---- the three modes and three sources ---------------------------------------

@pytest.mark.parametrize("mode", [1, 2, 3])
@pytest.mark.parametrize("source", ["a", "b", "c"])
def test_modes_and_sources_pair_with_a_v1_device(st, mode, source):
    plat = platform(st)
    veh_v1, _ = key_device(st, "vehicle")
    if mode == 3:
        _, dev = key_device(st, "encryptor")
    else:
        dev = cert_device(st, mode)
    sid = uid("V2")
    req, k2 = v2_key(st, dev, plat, sid, veh_v1.device_id, source)
    assert k2.key_source == source and len(k2.key) == 16
    k1 = helpers.get_key(st, veh_v1, sid, Peer(dev.device_id))
    assert k1.key == k2.key and k1.key_id == k2.key_id
    s = st.admin("GET", f"/v1/admin/sessions/{sid}").json()
    assert s["key_source"] == source
    prov = st.psql(f"SELECT provenance FROM sessions WHERE session_id = '{sid}'").strip()
    # Where the key came from: the device's random, and for a the
    # platform's entropy source beside it.
    assert {"a": prov.startswith("device+") and len(prov) > 7, "b": prov == "device",
            "c": not prov.startswith("device")}[source], prov
    # The second party's answer carries the key itself, whatever it asks.
    req, again = v2_key(st, dev, plat, sid, veh_v1.device_id, source)
    assert again.key == k2.key and again.key_source == "c"


def test_v1_initiator_and_v2_responder_share_the_key(st):
    plat = platform(st)
    veh_v1, _ = key_device(st, "vehicle")
    enc = cert_device(st, 2)
    sid = uid("V12")
    k1 = helpers.get_key(st, veh_v1, sid, Peer(enc.device_id))
    req, k2 = v2_key(st, enc, plat, sid, veh_v1.device_id, "a")
    assert k2.key == k1.key and k2.key_source == "c"
    assert st.admin("GET", f"/v1/admin/sessions/{sid}").json()["key_source"] == "c"


def test_two_v2_devices_and_signed_end(st):
    plat = platform(st)
    _, veh = key_device(st, "vehicle")
    enc = cert_device(st, 1)
    sid = uid("V22")
    _, ka = v2_key(st, veh, plat, sid, enc.device_id, "a", delivered=False)
    _, kb = v2_key(st, enc, plat, sid, veh.device_id, "b")
    assert ka.key == kb.key and kb.key_source == "c"
    end = enc.end_request(plat, sid)
    r = post(st, end)
    assert r.status_code == 200, r.text
    assert enc.open_end_response(end, r.content) is True
    r = post(st, veh.key_request(plat, sid, enc.device_id, key_source="c"))
    assert r.status_code == 409 and code(r) == "session_ended"


def test_a_new_session_id_gets_a_new_key(st):
    plat = platform(st)
    veh_v1, _ = key_device(st, "vehicle")
    enc = cert_device(st, 1)
    keys = {v2_key(st, enc, plat, uid("N"), veh_v1.device_id, s)[1].key for s in "abcabc"}
    assert len(keys) == 6


# ---- refusals ------------------------------------------------------------------

def test_bad_signature_is_401_and_audited(st):
    plat = platform(st)
    veh_v1, _ = key_device(st, "vehicle")
    enc = cert_device(st, 2)
    req = enc.key_request(plat, uid(), veh_v1.device_id, key_source="a")
    body = json.loads(req.raw)
    sig = bytearray(b64u_decode(body["sig"]))
    sig[5] ^= 1
    body["sig"] = b64u(bytes(sig))
    before = refusals(st, "unauthenticated")
    r = post(st, req, raw=json.dumps(body).encode())
    assert r.status_code == 401 and code(r) == "unauthenticated"
    assert r.json()["error"]["message"] == "request could not be authenticated"
    assert refusals(st, "unauthenticated") == before + 1
    # Filed under the device it named, but nobody's act: it proved nothing.
    actor = st.psql("SELECT actor FROM audit_log WHERE event = 'session.refused' AND device_id = "
                    f"'{enc.device_id}' ORDER BY id DESC LIMIT 1").strip()
    assert actor == "unauthenticated"
    # The genuine request still works: its nonce was recorded for the
    # forged one... so it is a replay now. A fresh request works.
    r = post(st, req)
    assert r.status_code == 401
    assert post(st, enc.key_request(plat, uid(), veh_v1.device_id)).status_code == 200


@pytest.mark.parametrize("field", ["session_id", "peer_id", "key_source", "ts", "pin", "epk",
                                   "cr", "device_id", "mode"])
def test_tampering_with_any_signed_field_is_refused(st, field):
    plat = platform(st)
    veh_v1, _ = key_device(st, "vehicle")
    enc = cert_device(st, 2)
    req = enc.key_request(plat, uid(), veh_v1.device_id, key_source="a")
    inner = json.loads(req.inner)
    other = enc.key_request(plat, uid(), veh_v1.device_id, key_source="b")
    changed = {"ts": inner["ts"] + 1, "mode": 1, "device_id": "SOMEONE-ELSE",
               "peer_id": "SOMEONE-ELSE", "pin": "00" * 32, "key_source": "b"}
    inner[field] = changed.get(field, json.loads(other.inner)[field])
    assert inner[field] != json.loads(req.inner)[field]
    body = json.loads(req.raw)
    body["req"] = b64u(json.dumps(inner, separators=(",", ":")).encode())
    r = post(st, req, raw=json.dumps(body).encode())
    assert r.status_code in (400, 401), r.text
    assert code(r) in ("unauthenticated", "malformed_request")


def test_certificate_not_chaining_or_revoked_is_refused(st):
    plat = platform(st)
    veh_v1, _ = key_device(st, "vehicle")
    enc = cert_device(st, 1)
    # A self-signed certificate for the same key and name: not the CA's.
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, enc.device_id)])
    now = time.time()
    import datetime
    selfc = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
             .public_key(enc.private_key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(datetime.datetime.utcfromtimestamp(now - 60))
             .not_valid_after(datetime.datetime.utcfromtimestamp(now + 3600))
             .sign(enc.private_key, hashes.SHA256()))
    forged = Device2(enc.device_id, 1, private_key=enc.private_key,
                     certificate=selfc.public_bytes(serialization.Encoding.DER))
    r = post(st, forged.key_request(plat, uid(), veh_v1.device_id))
    assert r.status_code == 401 and code(r) == "certificate_refused", r.text
    # The real one works, then is revoked: refused on the next request.
    sid = uid()
    v2_key(st, enc, plat, sid, veh_v1.device_id, "a")
    r = st.admin("POST", f"/v1/admin/devices/{enc.device_id}/certificates/{enc.serial}/revoke",
                 json={})
    assert r.status_code == 200, r.text
    r = post(st, enc.key_request(plat, sid, veh_v1.device_id))
    assert r.status_code == 401 and code(r) == "certificate_refused"
    assert "revoked" in r.json()["error"]["message"]
    # Mode 2 with the only certificate revoked: nothing bound.
    m2 = Device2(enc.device_id, 2, private_key=enc.private_key)
    r = post(st, m2.key_request(plat, sid, veh_v1.device_id))
    assert r.status_code == 401 and code(r) == "no_bound_certificate"


def test_mode_2_without_a_certificate_is_401(st):
    plat = platform(st)
    veh_v1, _ = key_device(st, "vehicle")
    did = register(st)
    dev = Device2(did, 2, private_key=ec.generate_private_key(ec.SECP256R1()))
    before = refusals(st, "no_bound_certificate")
    r = post(st, dev.key_request(plat, uid(), veh_v1.device_id))
    assert r.status_code == 401 and code(r) == "no_bound_certificate"
    assert refusals(st, "no_bound_certificate") == before + 1


def test_unknown_suite_is_400_and_the_nonce_is_spent(st):
    plat = platform(st)
    veh_v1, _ = key_device(st, "vehicle")
    enc = cert_device(st, 2)
    req = enc.key_request(plat, uid(), veh_v1.device_id)
    body = json.loads(req.raw)
    body["suite"] = "X25519-HKDF-SHA256-CHACHA20"
    r = post(st, req, raw=json.dumps(body).encode())
    assert r.status_code == 400 and code(r) == "unsupported_suite"
    r = post(st, req)
    assert r.status_code == 401 and code(r) == "unauthenticated"


def test_client_random_that_does_not_decrypt_is_422_then_a_replay(st):
    plat = platform(st)
    veh_v1, _ = key_device(st, "vehicle")
    enc = cert_device(st, 2)
    sid = uid()
    req = enc.key_request(plat, sid, veh_v1.device_id, key_source="a")
    inner = json.loads(req.inner)
    cr = bytearray(b64u_decode(inner["cr"]))
    cr[0] ^= 1
    inner["cr"] = b64u(bytes(cr))
    raw_inner = json.dumps(inner, separators=(",", ":")).encode()
    body = json.loads(req.raw)
    body["req"] = b64u(raw_inner)
    body["sig"] = b64u(sign(enc.private_key, b"qkms/v2/req\n" + raw_inner))
    r = post(st, req, raw=json.dumps(body).encode())
    assert r.status_code == 422 and code(r) == "invalid_client_random", r.text
    r = post(st, req, raw=json.dumps(body).encode())
    assert r.status_code == 401
    assert st.psql(f"SELECT count(*) FROM sessions WHERE session_id = '{sid}'").strip() == "0"


def test_policy_key_sources_refuse_other_sources(st):
    grp = "ks-" + uuid.uuid4().hex[:6]
    r = st.admin("POST", "/v1/admin/policies", json={
        "name": "only-a-" + grp, "type_a": "meter", "type_b": "gateway", "key_sources": ["a"]})
    assert r.status_code == 201, r.text
    assert [p["key_sources"] for p in r.json()["policies"] if p["name"] == "only-a-" + grp] == [["a"]]
    plat = platform(st)
    did = uid("MET")
    assert st.admin("POST", "/v1/admin/devices",
                    json={"device_id": did, "type": "meter", "group": grp}).status_code == 201
    meter = cert_device(st, 2, did=did)
    gw = helpers.make_device(st, "gateway", grp)
    sid = uid()
    req = meter.key_request(plat, sid, gw.device_id, key_source="c")
    r = post(st, req)
    assert r.status_code == 403 and code(r) == "key_source_denied"
    assert st.psql(f"SELECT count(*) FROM sessions WHERE session_id = '{sid}'").strip() == "0"
    assert post(st, req).status_code == 401  # the nonce was recorded
    _, k = v2_key(st, meter, plat, sid, gw.device_id, "a")
    # v1 counts as c: the gateway cannot use v1 under this policy.
    r = helpers.post(st, gw.key_request(sid, meter.device_id))
    assert r.status_code == 403 and code(r) == "key_source_denied"
    # The session keeps the sources of its policy: a policy replaced by one
    # that allows everything does not change it.
    assert st.admin("DELETE", f"/v1/admin/policies/only-a-{grp}").status_code == 200
    assert st.admin("POST", "/v1/admin/policies", json={
        "name": "only-a-" + grp, "type_a": "meter", "type_b": "gateway"}).status_code == 201
    r = helpers.post(st, gw.key_request(sid, meter.device_id))
    assert r.status_code == 403 and code(r) == "key_source_denied"
    assert helpers.get_key(st, gw, uid(), Peer(meter.device_id)).key


def test_unknown_platform_key_is_422(st):
    plat = platform(st)
    veh_v1, _ = key_device(st, "vehicle")
    enc = cert_device(st, 2)
    fake = Platform(plat.sign_cert, plat.ka_cert)
    fake.pin = "00" * 32
    r = post(st, enc.key_request(fake, uid(), veh_v1.device_id, key_source="c"))
    assert r.status_code == 422 and code(r) == "unknown_platform_key"


def test_the_answer_is_bound_to_the_request(st):
    plat = platform(st)
    veh_v1, _ = key_device(st, "vehicle")
    enc = cert_device(st, 2)
    req1 = enc.key_request(plat, uid(), veh_v1.device_id)
    req2 = enc.key_request(plat, uid(), veh_v1.device_id)
    r1 = post(st, req1)
    assert r1.status_code == 200
    with pytest.raises(ProtocolError):
        enc.open_key_response(req2, r1.content)
    body = r1.json()
    p = json.loads(b64u_decode(body["resp"]))
    p["key_bits"] = 256
    body["resp"] = b64u(json.dumps(p, separators=(",", ":")).encode())
    with pytest.raises(ProtocolError):
        enc.open_key_response(req1, json.dumps(body))


# ---- rotation of the platform's keys -------------------------------------------

def test_rotation_keeps_old_pins_working_during_the_overlap(st, tmp_path):
    old = platform(st)
    veh_v1, _ = key_device(st, "vehicle")
    enc = cert_device(st, 2)
    r = st.admin("POST", "/v1/admin/platform/rotate", json={})
    assert r.status_code == 200, r.text
    doc = r.json()
    new = Platform.from_certificates(doc)
    assert new.pin != old.pin and new.ka != old.ka
    states = {(c["purpose"], c["state"]) for c in doc["certificates"]}
    assert states == {("sign", "active"), ("agree", "active"), ("sign", "retired"),
                      ("agree", "retired")}
    # A device still pinned to the old certificates is answered with the old key.
    req, k_old = v2_key(st, enc, old, uid(), veh_v1.device_id, "a")
    assert json.loads(b64u_decode(json.loads(post(st, enc.key_request(
        old, uid(), veh_v1.device_id)).content)["resp"]))["signer"] == old.pin
    req, k_new = v2_key(st, enc, new, uid(), veh_v1.device_id, "a")
    # The C library takes the published list as it is during the overlap
    # (four certificates, the active pair first).
    (tmp_path / "all.pem").write_text("".join(c["pem"] for c in doc["certificates"]))
    (tmp_path / "d.crt").write_text(x509.load_der_x509_certificate(enc.certificate)
                                    .public_bytes(serialization.Encoding.PEM).decode())
    (tmp_path / "d.key").write_text(enc.private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()).decode())
    out = json.loads(device_cli("key", "--v2", "--mode", "2", "--server-cert",
                                str(tmp_path / "all.pem"), "--cert", str(tmp_path / "d.crt"),
                                "--key", str(tmp_path / "d.key"), "--url", st.url, "--session",
                                uid(), "--peer", veh_v1.device_id, "--json").stdout)
    assert out["protocol"] == 2
    assert st.psql("SELECT count(*) FROM audit_log WHERE event = 'platform.rotated'").strip() == "1"
    # The overlap ends: the old version is destroyed and refused.
    st.psql("UPDATE platform_keys SET overlap_until = now() - interval '1 second'"
            " WHERE state = 'retired'")
    assert wait_for(lambda: post(st, enc.key_request(old, uid(), veh_v1.device_id)).status_code == 422,
             timeout=40)
    r = post(st, enc.key_request(old, uid(), veh_v1.device_id))
    assert code(r) == "unknown_platform_key"
    assert st.psql("SELECT count(*) FROM platform_keys WHERE state = 'destroyed'").strip() == "2"
    v2_key(st, enc, new, uid(), veh_v1.device_id, "b")
    # And gone from the token (each instance clears its own).
    env = dict(os.environ, SOFTHSM2_CONF=st.env["SOFTHSM2_CONF"])
    def labels():
        out = subprocess.run(["pkcs11-tool", "--module", SOFTHSM, "--token-label", "qkms",
                              "--login", "--pin", st.token_pin, "--list-objects", "--type",
                              "privkey"], env=env, capture_output=True, text=True, timeout=60,
                             check=True).stdout
        return set(re.findall(r"label:\s+(\S+)", out))
    assert wait_for(lambda: not {"qkms-v2-sign-1", "qkms-v2-agree-1"} & labels(), timeout=40)
    assert {"qkms-v2-sign-2", "qkms-v2-agree-2"} <= labels()


# ---- the C device library and qkms-device ------------------------------------

def device_cli(*args, check=True):
    r = subprocess.run([QKMSDEV, *args], capture_output=True, text=True, timeout=60)
    if check:
        assert r.returncode == 0, r.stdout + r.stderr
    return r


def test_qkms_device_v2_modes_1_2_3_and_end(st, tmp_path):
    r = st.kmsctl("platform", "show", "--pem")
    assert r.returncode == 0, r.stderr
    srv = tmp_path / "platform.pem"
    srv.write_text(r.stdout)
    veh_v1, _ = key_device(st, "vehicle")
    enc = cert_device(st, 1)
    (tmp_path / "enc.crt").write_text(x509.load_der_x509_certificate(enc.certificate)
                                      .public_bytes(serialization.Encoding.PEM).decode())
    (tmp_path / "enc.key").write_text(enc.private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()).decode())
    for mode, source in (("1", "a"), ("2", "b"), ("1", "c")):
        sid = uid("QD")
        out = json.loads(device_cli("key", "--v2", "--mode", mode, "--source", source,
                                    "--server-cert", str(srv), "--cert", str(tmp_path / "enc.crt"),
                                    "--key", str(tmp_path / "enc.key"), "--url", st.url,
                                    "--session", sid, "--peer", veh_v1.device_id, "--json").stdout)
        assert out["protocol"] == 2 and out["mode"] == int(mode) and out["key_source"] == source
        assert out["device_id"] == enc.device_id and "key_index" not in out
        k1 = helpers.get_key(st, veh_v1, sid, Peer(enc.device_id))
        assert bytes.fromhex(out["key"]) == k1.key and out["key_id"] == k1.key_id
    # Mode 3 from a fill document, then a signed end.
    did = register(st, "encryptor")
    fill = st.admin("POST", f"/v1/admin/devices/{did}/fill", json={"plaintext": True}).json()
    (tmp_path / "fill.json").write_text(json.dumps(fill["plaintext"]))
    sid = uid("QD3")
    out = json.loads(device_cli("key", "--v2", "--server-cert", str(srv), "--fill",
                                str(tmp_path / "fill.json"), "--url", st.url, "--session", sid,
                                "--peer", veh_v1.device_id, "--json").stdout)
    assert out["mode"] == 3 and out["key_source"] == "a" and out["key_index"] >= 0
    k1 = helpers.get_key(st, veh_v1, sid, Peer(did))
    assert bytes.fromhex(out["key"]) == k1.key
    out = json.loads(device_cli("end", "--v2", "--server-cert", str(srv), "--fill",
                                str(tmp_path / "fill.json"), "--url", st.url, "--session", sid,
                                "--json").stdout)
    assert out == {"session_id": sid, "ended": True, "device_id": did,
                   "key_index": out["key_index"], "protocol": 2}
    # Pinned to someone else's signing key: the answer is refused (exit 5).
    other = tmp_path / "other.pem"
    ca_pem = requests.get(st.url + "/v1/ca", timeout=10).text
    other.write_text(r.stdout.replace(r.stdout.split("-----END CERTIFICATE-----")[0] +
                                      "-----END CERTIFICATE-----", "").strip() + "\n" + ca_pem)
    bad = device_cli("key", "--v2", "--server-cert", str(other), "--fill",
                     str(tmp_path / "fill.json"), "--url", st.url, "--session", uid(),
                     "--peer", veh_v1.device_id, check=False)
    assert bad.returncode in (2, 4, 5), bad.stderr
    # Usage errors.
    for args in (["--v2", "--fill", str(tmp_path / "fill.json")],
                 ["--v2", "--server-cert", str(srv)],
                 ["--v2", "--server-cert", str(srv), "--fill", str(tmp_path / "fill.json"),
                  "--mode", "1"],
                 ["--server-cert", str(srv), "--fill", str(tmp_path / "fill.json")],
                 ["--v2", "--server-cert", str(srv), "--fill", str(tmp_path / "fill.json"),
                  "--source", "d"]):
        r2 = device_cli("key", *args, "--url", st.url, "--session", "S", "--peer", "P",
                        check=False)
        assert r2.returncode == 2, (args, r2.stderr)


def test_kmsctl_platform_and_policy_key_sources(st):
    r = st.kmsctl("--json", "platform", "show")
    assert r.returncode == 0, r.stderr
    assert {c["purpose"] for c in json.loads(r.stdout)["certificates"]} >= {"sign", "agree"}
    r = st.kmsctl("platform", "show")
    assert r.stdout.split("\n")[0].split() == ["PURPOSE", "VERSION", "STATE", "NOT-AFTER",
                                               "OVERLAP-UNTIL", "SHA256"]
    name = "ks-" + uuid.uuid4().hex[:6]
    r = st.kmsctl("policy", "add", name, "--types", "meter:vehicle", "--key-sources", "a,c")
    assert r.returncode == 0, r.stderr
    pol = [p for p in st.admin("GET", "/v1/admin/policies").json()["policies"]
           if p["name"] == name][0]
    assert pol["key_sources"] == ["a", "c"]
    for bad in ("a,d", "a,a", "", "ab"):
        r = st.kmsctl("policy", "add", name + "x", "--types", "meter:vehicle", "--key-sources", bad)
        assert r.returncode != 0, bad
    r = st.admin("POST", "/v1/admin/policies", json={"name": name + "y", "type_a": "meter",
                                                    "type_b": "vehicle", "key_sources": []})
    assert r.status_code == 422 and code(r) == "invalid_policy"


# ---- the platform as the peer ---------------------------------------------------

def test_device_platform_channel_keys(st, tmp_path):
    from qkms_proto2_py import PLATFORM
    plat = platform(st)
    enc = cert_device(st, 1, type_="gateway")
    sid = uid("CH")
    # No policy names the platform for gateways yet: default deny.
    r = post(st, enc.key_request(plat, sid, PLATFORM, key_source="a"))
    assert r.status_code == 403 and code(r) == "policy_denied", r.text
    name = "gw-platform-" + uuid.uuid4().hex[:6]
    r = st.admin("POST", "/v1/admin/policies", json={
        "name": name, "type_a": "gateway", "type_b": "@platform", "key_bits": 256,
        "key_sources": ["a", "c"]})
    assert r.status_code == 201, r.text
    assert [p["scope"] for p in r.json()["policies"] if p["name"] == name] == ["platform"]
    for bad in ({"type_a": "@platform", "type_b": "@platform"},
                {"type_a": "gateway", "type_b": "@platform", "group_a": "g1", "group_b": "g2"}):
        r = st.admin("POST", "/v1/admin/policies", json={"name": name + "x", **bad})
        assert r.status_code == 422 and code(r) == "invalid_policy", bad
    req, k = v2_key(st, enc, plat, sid, PLATFORM, "a")
    assert len(k.key) == 32 and k.key_source == "a"
    s = st.admin("GET", f"/v1/admin/sessions/{sid}").json()
    assert s["responder"] == "@platform" and s["initiator"] == enc.device_id
    assert s["state"] == "active" and s["delivery"] == "session" and s["key_source"] == "a"
    # The same channel again: the same key, now enclosed; b is not allowed.
    _, again = v2_key(st, enc, plat, sid, PLATFORM, "c")
    assert again.key == k.key and again.key_source == "c"
    r = post(st, enc.key_request(plat, sid, PLATFORM, key_source="b"))
    assert r.status_code == 403 and code(r) == "key_source_denied"
    # Nobody else gets it: another device naming the platform or the gateway.
    other = cert_device(st, 1, type_="gateway")
    r = post(st, other.key_request(plat, sid, PLATFORM, key_source="c"))
    assert r.status_code == 403 and code(r) == "not_a_party"
    r = post(st, other.key_request(plat, sid, enc.device_id, key_source="c"))
    assert r.status_code == 403 and code(r) == "not_a_party"
    # Its own device naming a device peer for the channel's ID: mismatch.
    r = post(st, enc.key_request(plat, sid, other.device_id, key_source="c"))
    assert r.status_code == 403 and code(r) == "peer_mismatch"
    # The wire form: "peer_platform": true in place of a peer_id.
    body = json.loads(enc.key_request(plat, uid(), PLATFORM, key_source="a").inner)
    assert body["peer_platform"] is True and "peer_id" not in body
    # The device ends it: the key is destroyed, a tombstone names the platform.
    end = enc.end_request(plat, sid)
    r = post(st, end)
    assert r.status_code == 200, r.text
    s = st.admin("GET", f"/v1/admin/sessions/{sid}").json()
    assert s["state"] == "ended" and s["responder"] == "@platform"
    assert st.psql(f"SELECT count(*) FROM sessions WHERE session_id = '{sid}'").strip() == "0"
    # qkms-device speaks it too.
    pem = st.kmsctl("platform", "show", "--pem").stdout
    (tmp_path / "p.pem").write_text(pem)
    (tmp_path / "g.crt").write_text(x509.load_der_x509_certificate(enc.certificate)
                                    .public_bytes(serialization.Encoding.PEM).decode())
    (tmp_path / "g.key").write_text(enc.private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()).decode())
    sid3 = uid("CH3")
    out = json.loads(device_cli("key", "--v2", "--server-cert", str(tmp_path / "p.pem"),
                                "--cert", str(tmp_path / "g.crt"), "--key", str(tmp_path / "g.key"),
                                "--url", st.url, "--session", sid3, "--peer-platform",
                                "--json").stdout)
    assert out["key_bits"] == 256 and out["key_source"] == "a"
    _, k3 = v2_key(st, enc, plat, sid3, PLATFORM, "c")
    assert k3.key.hex() == out["key"]
    bad = device_cli("key", "--v2", "--server-cert", str(tmp_path / "p.pem"), "--cert",
                     str(tmp_path / "g.crt"), "--key", str(tmp_path / "g.key"), "--url", st.url,
                     "--session", uid(), "--peer-platform", "--delivered", check=False)
    assert bad.returncode == 2


def test_a_device_session_is_not_a_platform_channel(st):
    from qkms_proto2_py import PLATFORM
    plat = platform(st)
    veh_v1, _ = key_device(st, "vehicle")
    enc = cert_device(st, 2)
    sid = uid("DS")
    v2_key(st, enc, plat, sid, veh_v1.device_id, "a")
    r = post(st, enc.key_request(plat, sid, PLATFORM, key_source="c"))
    assert r.status_code == 403 and code(r) in ("peer_mismatch", "policy_denied"), r.text
    # The platform channel's ID is not a device session for the vehicle.
    r = helpers.post(st, veh_v1.key_request(sid, enc.device_id))
    assert r.status_code == 200
