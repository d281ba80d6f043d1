"""The protocol v2 test vectors (tests/vectors/protocol-v2.json, written by
tests/vectors/make_vectors_v2.py) against the independent Python device
tests/integration/qkms_proto2_py.py. No server, no fixture of conftest.py:
plain pytest, a few seconds.

The vectors' signatures are RFC 6979 (deterministic); qkms_proto2_py signs
with cryptography's randomized ECDSA, so its signatures are checked by
verification and everything else byte for byte.
"""
import base64
import copy
import datetime
import hashlib
import json
import os
import subprocess
import sys

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

import qkms_proto2_py as qp

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
VECTORS = os.environ.get("QKMS_VECTORS_V2",
                         os.path.join(ROOT, "tests", "vectors", "protocol-v2.json"))
GENERATOR = os.path.join(ROOT, "tests", "vectors", "make_vectors_v2.py")

with open(VECTORS, encoding="ascii") as _f:
    DOC = json.load(_f)
PLAT = DOC["platform"]
CASES = DOC["cases"]
ACCEPT = [c for c in CASES if c["expect"] == "accept"]
KEY_ACCEPT = [c for c in ACCEPT if c["op"] == "key"]
END_ACCEPT = [c for c in ACCEPT if c["op"] == "end" and not c.get("all")]
# Ends of every session of a device ("all": true, no session_id).
END_ALL = [c for c in ACCEPT if c["op"] == "end" and c.get("all")]
REJECT = [c for c in CASES if c["expect"] == "reject"]
KEY_REJECT = [c for c in REJECT if c["op"] == "key"]
REASONS = {"v", "duplicate", "signature", "signer", "op", "device_id", "session_id", "request",
           "key_bits", "key_source", "point", "aead", "payload_length", "ended"}
# When the vectors' certificates are valid (2026-01-01 .. 2036-01-01).
IN_DATE = datetime.datetime(2026, 11, 24, 8, 33, 20)


def ids(cases):
    return [c["name"] for c in cases]


def unb64u(s):
    return qp.b64u_decode(s)


def platform():
    return qp.Platform(unb64u(PLAT["sign_cert_b64u"]), unb64u(PLAT["ka_cert_b64u"]))


def device(c):
    if c["mode"] == 3:
        return qp.Device2(c["device_id"], 3, keys={c["key_index"]: bytes.fromhex(c["device_key_hex"])},
                          key_index=c["key_index"])
    return qp.Device2(c["device_id"], c["mode"], private_key=int(c["device_priv_hex"], 16),
                      certificate=unb64u(c["device_cert_b64u"]))


def build(c):
    """c's request, through the device under test, with c's fixed inputs."""
    dev, plat = device(c), platform()
    nonce = bytes.fromhex(c["nonce_hex"])
    if c["op"] == "key":
        cr = bytes.fromhex(c["cr_plain_hex"]) if "cr_plain_hex" in c else None
        req = dev.key_request(plat, c["session_id"], c.get("peer_id"), key_source=c["key_source"],
                              delivered=c["delivered"], ts=c["ts"], nonce=nonce,
                              e_c=int(c["e_c_priv_hex"], 16), cr=cr)
    else:
        req = dev.end_request(plat, qp.ALL if c.get("all") else c["session_id"], ts=c["ts"],
                              nonce=nonce)
    return dev, req


def pub(b64):
    return qp.point_key(unb64u(b64))


def resp_parts(body):
    o = json.loads(body)
    return unb64u(o["resp"]), unb64u(o["sig"])


def pairs(p):
    """P's members as (name, value) pairs, repeated names kept."""
    return json.loads(p, object_pairs_hook=lambda kv: kv)


def unknown_members(p):
    """The members of P that docs/protocol.md does not name, in order."""
    return {k: v for k, v in json.loads(p).items() if k not in qp.KEY_RESPONSE_ORDER}


# -- the file ----------------------------------------------------------------------

def test_file_is_what_the_generator_writes(tmp_path):
    """The committed file is the generator's output, byte for byte (the
    generator is deterministic: run it twice, same bytes)."""
    out1, out2 = tmp_path / "a.json", tmp_path / "b.json"
    for out in (out1, out2):
        subprocess.run([sys.executable, GENERATOR, str(out)], check=True, capture_output=True,
                       timeout=120)
    assert out1.read_bytes() == out2.read_bytes()
    with open(VECTORS, "rb") as f:
        assert out1.read_bytes() == f.read(), \
            "regenerate: /usr/bin/python3 tests/vectors/make_vectors_v2.py"


def test_the_file_covers_what_it_must():
    names = ids(CASES)
    assert len(set(names)) == len(names)
    assert DOC["suite"] == qp.SUITE
    combos = {(c["mode"], c["key_source"]) for c in KEY_ACCEPT}
    assert combos >= {(m, s) for m in (1, 2, 3) for s in "abc"}
    assert {c["response"]["key_bits"] for c in KEY_ACCEPT} == {128, 256}
    assert {c["mode"] for c in END_ACCEPT} >= {1, 3}
    assert any(c["delivered"] and c["response"]["delivery"] == "delivered" for c in KEY_ACCEPT)
    assert any(c["key_source"] != "c" and c["response"]["key_source"] == "c" for c in KEY_ACCEPT)
    assert {len(bytes.fromhex(c["device_key_hex"])) for c in CASES if c["mode"] == 3} == {16, 32}
    assert any('"' in c.get("session_id", "") for c in ACCEPT)
    assert END_ALL and all("session_id" not in c for c in END_ALL)
    assert {c["reason"] for c in REJECT} <= REASONS
    assert {c["reason"] for c in REJECT} >= {"signature", "signer", "request", "session_id",
                                              "key_source", "aead", "payload_length", "key_bits",
                                              "v", "duplicate"}
    assert {"reject-sig-other-key", "reject-sig-flipped", "reject-key-bits-192",
            "reject-source-b-for-a", "reject-ct-tag-flipped", "reject-v-1",
            "reject-duplicate-key-source", "reject-request-hash-without-nonce"} <= set(names)
    # An accepted answer whose P carries members the protocol does not name.
    assert any(unknown_members(c["response"]["inner"]) for c in KEY_ACCEPT)
    for c in CASES:
        assert ("response" in c) and c["expect"] in ("accept", "reject")
        assert ("device_cert_b64u" in c) == (c["mode"] in (1, 2))
        assert ("request_sig_b64u" in c) == (c["mode"] in (1, 2))
        assert ("request_ct_b64u" in c) == (c["mode"] == 3)
        assert ("cr_b64u" in c) == (c["op"] == "key" and c["key_source"] in "ab")
        if c["expect"] == "accept" and c["op"] == "key":
            assert "session_key_hex" in c["response"]


def test_platform_certificates():
    ca = x509.load_der_x509_certificate(unb64u(PLAT["ca_cert_b64u"]))
    ca_pub = ca.public_key()
    ca.public_key().verify(ca.signature, ca.tbs_certificate_bytes, ec.ECDSA(hashes.SHA256()))
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    for field, usage in (("sign_cert_b64u", "digital_signature"), ("ka_cert_b64u", "key_agreement")):
        cert = x509.load_der_x509_certificate(unb64u(PLAT[field]))
        ca_pub.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(hashes.SHA256()))
        assert cert.issuer == ca.subject and cert.version == x509.Version.v3
        assert getattr(cert.extensions.get_extension_for_class(x509.KeyUsage).value, usage)
        assert cert.not_valid_before == datetime.datetime(2026, 1, 1)
        assert cert.not_valid_after == datetime.datetime(2036, 1, 1)
    plat = platform()
    assert plat.pin == PLAT["pin"] == hashlib.sha256(unb64u(PLAT["sign_cert_b64u"])).hexdigest()
    assert plat.ka == PLAT["ka"] == hashlib.sha256(unb64u(PLAT["ka_cert_b64u"])).hexdigest()
    assert qp.point_bytes(plat.sign_pub) == unb64u(PLAT["sign_pub_b64u"])
    assert plat.ka_point == unb64u(PLAT["ka_pub_b64u"])
    # The private keys are the certificates'.
    for priv, pt in (("ca_priv_hex", None), ("sign_priv_hex", "sign_pub_b64u"),
                     ("ka_priv_hex", "ka_pub_b64u"), ("other_sign_priv_hex", "other_sign_pub_b64u")):
        k = qp.to_private_key(int(PLAT[priv], 16))
        if pt:
            assert qp.point_bytes(k) == unb64u(PLAT[pt])
        else:
            assert qp.point_bytes(k) == qp.point_bytes(ca_pub)
    # A device checks them against the CA once: in date, out of date, another CA.
    ca_pem = ("-----BEGIN CERTIFICATE-----\n" +
              base64.encodebytes(unb64u(PLAT["ca_cert_b64u"])).decode() +
              "-----END CERTIFICATE-----\n")
    plat.verify(ca_pem, at=IN_DATE)
    plat.verify(unb64u(PLAT["ca_cert_b64u"]), at=IN_DATE)
    with pytest.raises(qp.ProtocolError, match="in date"):
        plat.verify(ca_pem, at=datetime.datetime(2037, 1, 1))
    with pytest.raises(qp.ProtocolError, match="not issued"):
        qp.Platform(unb64u(PLAT["sign_cert_b64u"]), unb64u(PLAT["ka_cert_b64u"])).verify(
            [unb64u(CASES[0]["device_cert_b64u"])], at=IN_DATE)


def test_platform_from_certificates_document():
    """Platform.from_certificates reads GET /v1/platform/certificates."""
    def entry(purpose, field, state, version=1):
        der = unb64u(PLAT[field])
        pem = ("-----BEGIN CERTIFICATE-----\n" + base64.encodebytes(der).decode() +
               "-----END CERTIFICATE-----\n")
        return {"purpose": purpose, "version": version, "state": state,
                "sha256": hashlib.sha256(der).hexdigest(), "subject": "", "not_before": "",
                "not_after": "", "pem": pem}
    # A retired version whose "certificates" are other ones (the CA's and a
    # device's, good enough for choosing by state and sha256).
    doc = {"certificates": [entry("sign", "ca_cert_b64u", "retired"),
                            entry("sign", "sign_cert_b64u", "active", 2),
                            entry("agree", "ka_cert_b64u", "active", 2)]}
    doc["certificates"].append(dict(entry("agree", "ca_cert_b64u", "retired"), pem=(
        "-----BEGIN CERTIFICATE-----\n" + base64.encodebytes(
            unb64u(CASES[0]["device_cert_b64u"])).decode() + "-----END CERTIFICATE-----\n"),
        sha256=hashlib.sha256(unb64u(CASES[0]["device_cert_b64u"])).hexdigest()))
    p = qp.Platform.from_certificates(doc)
    assert (p.pin, p.ka) == (PLAT["pin"], PLAT["ka"])
    p = qp.Platform.from_certificates(json.dumps(doc))
    assert (p.pin, p.ka) == (PLAT["pin"], PLAT["ka"])
    old = doc["certificates"][0]["sha256"]
    assert qp.Platform.from_certificates(doc, sign_sha256=old).pin == old
    with pytest.raises(qp.ProtocolError):
        qp.Platform.from_certificates(doc, sign_sha256="00" * 32)
    bad = copy.deepcopy(doc)
    bad["certificates"][1]["sha256"] = "00" * 32
    bad["certificates"][1]["state"] = "active"
    with pytest.raises(qp.ProtocolError):
        qp.Platform.from_certificates(bad)


def test_device_certificates():
    for c in CASES:
        if c["mode"] in (1, 2):
            cert = x509.load_der_x509_certificate(unb64u(c["device_cert_b64u"]))
            ca = x509.load_der_x509_certificate(unb64u(PLAT["ca_cert_b64u"]))
            ca.public_key().verify(cert.signature, cert.tbs_certificate_bytes,
                                   ec.ECDSA(hashes.SHA256()))
            cn = cert.subject.get_attributes_for_oid(x509.oid.NameOID.COMMON_NAME)[0].value
            assert cn == c["device_id"]
            assert qp.point_bytes(cert.public_key()) == unb64u(c["device_pub_b64u"])
            assert qp.point_bytes(qp.to_private_key(int(c["device_priv_hex"], 16))) == \
                unb64u(c["device_pub_b64u"])
            assert cert.extensions.get_extension_for_class(x509.KeyUsage).value.digital_signature


# -- requests -----------------------------------------------------------------------

@pytest.mark.parametrize("c", CASES, ids=ids(CASES))
def test_request(c):
    """Every byte of the request but the device's signature; that one verifies."""
    dev, req = build(c)
    assert req.path == c["request_path"]
    assert req.nonce == bytes.fromhex(c["nonce_hex"])
    if c["op"] == "key":
        assert qp.b64u(req.epk) == c["epk_b64u"]
        if "cr_b64u" in c:
            assert req.cr_plain.hex() == c["cr_plain_hex"]
            assert req.z1.hex() == c["z1_hex"]
            assert req.k1.hex() == c["k1_hex"]
            assert qp.b64u(req.cr) == c["cr_b64u"]
            assert len(req.cr) == 48
        else:
            assert req.cr is None and req.z1 is None
    assert req.inner == c["request_inner"].encode("ascii")
    assert req.hash.hex() == c["request_hash_hex"] == \
        hashlib.sha256(bytes.fromhex(c["nonce_hex"]) + req.inner).hexdigest()
    assert qp.request_hash(req.nonce, req.inner) == req.hash
    want = json.loads(c["request_body"])
    assert list(req.body) == list(want)
    if c["mode"] == 3:
        assert qp.request_aad(c["op"], c["device_id"], c["key_index"]) == c["request_aad"].encode()
        assert req.aad == c["request_aad"].encode()
        assert qp.b64u(req.ct) == c["request_ct_b64u"]
        assert req.raw == c["request_body"].encode("ascii")
    else:
        # Randomized ECDSA: our signature verifies, and with the vector's
        # signature in its place the body is the vector's byte for byte.
        dpub = pub(c["device_pub_b64u"])
        assert qp.verify(dpub, req.sig, b"qkms/v2/req\n" + req.inner)
        assert req.body["sig"] == qp.b64u(req.sig)
        assert {k: v for k, v in req.body.items() if k != "sig"} == \
            {k: v for k, v in want.items() if k != "sig"}
        ours = req.raw.decode("ascii")
        assert ours.count(req.body["sig"]) == 1
        assert ours.replace(req.body["sig"], c["request_sig_b64u"]) == c["request_body"]


@pytest.mark.parametrize("c", CASES, ids=ids(CASES))
def test_platform_opens_request(c):
    """The platform-side helper reads the vector's request: the signature
    or AEAD, R, N and (sources a, b) CR through the key-agreement key."""
    keys = {c["key_index"]: bytes.fromhex(c["device_key_hex"])} if c["mode"] == 3 else None
    dpub = pub(c["device_pub_b64u"]) if c["mode"] in (1, 2) else None
    o = qp.platform_open_request(c["request_body"].encode(),
                                 ka_priv=qp.to_private_key(int(PLAT["ka_priv_hex"], 16)),
                                 device_pub=dpub, device_keys=keys)
    assert (o.op, o.mode, o.device_id) == (c["op"], c["mode"], c["device_id"])
    assert o.r == c["request_inner"].encode() and o.h.hex() == c["request_hash_hex"]
    assert o.n.hex() == c["nonce_hex"]
    assert (o.cr_plain.hex() if o.cr_plain else None) == c.get("cr_plain_hex")
    if c["mode"] == 1:
        assert qp.b64u(o.cert) == c["device_cert_b64u"]


# -- answers ------------------------------------------------------------------------

@pytest.mark.parametrize("c", KEY_ACCEPT, ids=ids(KEY_ACCEPT))
def test_key_response_accepted(c):
    dev, req = build(c)
    r = c["response"]
    sk = dev.open_key_response(req, r["body"].encode("ascii"))
    assert sk.key.hex() == r["session_key_hex"] and len(sk.key) * 8 == r["key_bits"]
    assert (sk.session_id, sk.key_id, sk.key_bits, sk.expires_at, sk.delivery, sk.key_source) == (
        c["session_id"], r["key_id"], r["key_bits"], r["expires_at"], r["delivery"],
        r["key_source"])
    assert qp.b64u(sk.epk_s) == r["epk_s_b64u"]
    assert (sk.z2.hex(), sk.z3.hex(), sk.k2.hex(), sk.payload.hex()) == (
        r["z2_hex"], r["z3_hex"], r["k2_hex"], r["payload_hex"])
    if r["key_source"] == "a":
        assert r["sr_hex"] == r["payload_hex"] and len(sk.payload) == 32
    if r["key_source"] == "c":
        assert sk.key == sk.payload
    # The device forgot its secrets: the same request does not open twice.
    assert req.e_c is None and req.cr_plain is None and req.k1 is None
    with pytest.raises(qp.ProtocolError):
        dev.open_key_response(req, r["body"])
    # As a parsed dict too, on a fresh request.
    dev, req = build(c)
    assert dev.open_key_response(req, json.loads(r["body"])).key.hex() == r["session_key_hex"]


@pytest.mark.parametrize("c", KEY_ACCEPT, ids=ids(KEY_ACCEPT))
def test_platform_respond_reproduces_answer(c):
    """platform_respond, given the vector's e_s and payload, builds P and ct
    byte for byte; its (randomized) signature verifies."""
    r = c["response"]
    if c["mode"] == 3:
        z3 = {"device_key": bytes.fromhex(c["device_key_hex"])}
    else:
        z3 = {"device_pub": pub(c["device_pub_b64u"])}
    out = qp.platform_respond(
        int(PLAT["sign_priv_hex"], 16), PLAT["pin"], op="key", device_id=c["device_id"],
        session_id=c["session_id"], request_hash=bytes.fromhex(c["request_hash_hex"]),
        key_id=r["key_id"], key_bits=r["key_bits"], expires_at=r["expires_at"],
        delivery=r["delivery"], key_source=r["key_source"],
        payload=bytes.fromhex(r["payload_hex"]), epk=unb64u(c["epk_b64u"]),
        e_s=int(r["e_s_priv_hex"], 16), **z3,
        tamper=(lambda f: dict(f, **extra)) if (extra := unknown_members(r["inner"])) else None)
    assert qp.b64u(out.epk_s) == r["epk_s_b64u"]
    assert (out.z2.hex(), out.z3.hex(), out.k2.hex()) == (r["z2_hex"], r["z3_hex"], r["k2_hex"])
    assert qp.b64u(out.ct) == r["ct_b64u"]
    assert out.inner == r["inner"].encode("ascii")
    assert qp.verify(platform().sign_pub, out.sig, b"qkms/v2/resp\n" + out.inner)
    assert out.raw.decode().replace(qp.b64u(out.sig), r["sig_b64u"]) == r["body"]
    # And the device under test accepts the randomized-signature answer.
    dev, req = build(c)
    assert dev.open_key_response(req, out.raw).key.hex() == r["session_key_hex"]


@pytest.mark.parametrize("c", END_ACCEPT, ids=ids(END_ACCEPT))
def test_end_response_accepted(c):
    dev, req = build(c)
    assert dev.open_end_response(req, c["response"]["body"]) is True
    out = qp.platform_respond(int(PLAT["sign_priv_hex"], 16), PLAT["pin"], op="end",
                              device_id=c["device_id"], session_id=c["session_id"],
                              request_hash=bytes.fromhex(c["request_hash_hex"]))
    assert out.inner == c["response"]["inner"].encode()
    assert out.raw.decode().replace(qp.b64u(out.sig), c["response"]["sig_b64u"]) == \
        c["response"]["body"]
    assert dev.open_end_response(req, out.raw) is True


@pytest.mark.parametrize("c", END_ALL, ids=ids(END_ALL))
def test_end_all_response_accepted(c):
    dev, req = build(c)
    assert json.loads(req.inner)["all"] is True
    assert dev.open_end_response(req, c["response"]["body"]) == 3
    p, _ = resp_parts(c["response"]["body"])
    inner = json.loads(p)
    assert "session_id" not in inner and inner["streams_ended"] == 1
    out = qp.platform_respond(int(PLAT["sign_priv_hex"], 16), PLAT["pin"], op="end",
                              device_id=c["device_id"], session_id=qp.ALL,
                              request_hash=bytes.fromhex(c["request_hash_hex"]),
                              sessions_ended=3, streams_ended=1)
    assert out.inner == c["response"]["inner"].encode()
    assert dev.open_end_response(req, out.raw) == 3
    # An answer naming a session, or without the counts, does not answer it.
    sign_priv = qp.to_private_key(int(PLAT["sign_priv_hex"], 16))
    for bad in (dict(inner, session_id="S-1"), {k: v for k, v in inner.items() if k != "all"},
                {k: v for k, v in inner.items() if k != "streams_ended"}):
        pb = qp.inner_response(bad)
        body = qp.response_body(pb, qp.sign(sign_priv, b"qkms/v2/resp\n" + pb))
        dev, req = build(c)
        with pytest.raises(qp.ProtocolError):
            dev.open_end_response(req, body)


@pytest.mark.parametrize("c", REJECT, ids=ids(REJECT))
def test_response_refused(c):
    """Each reject answer is refused, by the check the vector names; the
    valid answer to the same request is accepted (so the refusal is not
    vacuous)."""
    dev, req = build(c)
    open_ = dev.open_key_response if c["op"] == "key" else dev.open_end_response
    with pytest.raises(qp.ProtocolError) as e:
        open_(req, c["response"]["body"])
    assert e.value.reason == c["reason"], str(e.value)
    valid = open_(req, c["valid_body"])
    if c["op"] == "key":
        assert valid.key.hex() == c["valid_session_key_hex"]
    else:
        assert valid is True


@pytest.mark.parametrize("c", REJECT, ids=ids(REJECT))
def test_reject_differs_from_valid_in_named_fields(c):
    p, sig = resp_parts(c["response"]["body"])
    vp, vsig = resp_parts(c["valid_body"])
    f, vf = json.loads(p), json.loads(vp)
    diff = sorted(k for k in set(f) | set(vf) if f.get(k) != vf.get(k))
    if c["reason"] == "v":
        assert c["differs_in"] == ["v"] and (p, sig) == (vp, vsig)
        assert json.loads(c["response"]["body"])["v"] != 2 == json.loads(c["valid_body"])["v"]
    elif c["reason"] == "duplicate":
        # P is the valid P with one more member of the repeated name before it.
        rp, vpp = pairs(p), pairs(vp)
        names = [k for k, _ in rp]
        assert sorted({k for k in names if names.count(k) > 1}) == c["differs_in"]
        i = names.index(c["differs_in"][0])
        assert rp[:i] + rp[i + 1:] == vpp and sig != vsig
    elif c["differs_in"] == ["sig"]:
        assert diff == [] and p == vp and sig != vsig
    else:
        assert diff == c["differs_in"]
    assert p == c["response"]["inner"].encode()


def test_request_hash_covers_the_nonce():
    """H = SHA-256(N || R) in every mode: in mode 3, where R holds no nonce,
    two requests alike but for N (same second) have different hashes, so an
    answer to one does not fit the other."""
    for c in CASES:
        r = c["request_inner"].encode()
        assert c["request_hash_hex"] != hashlib.sha256(r).hexdigest()
        p, _ = resp_parts(c["valid_body"] if c["expect"] == "reject" else c["response"]["body"])
        assert json.loads(p)["request"] == qp.b64u(bytes.fromhex(c["request_hash_hex"]))
    c = next(c for c in END_ACCEPT if c["mode"] == 3)
    dev, plat = device(c), platform()
    n1, n2 = bytes.fromhex(c["nonce_hex"]), bytes(12)
    e1 = dev.end_request(plat, c["session_id"], ts=c["ts"], nonce=n1)
    e2 = dev.end_request(plat, c["session_id"], ts=c["ts"], nonce=n2)
    assert e1.inner == e2.inner and "nonce" not in json.loads(e1.inner)
    assert e1.hash.hex() == c["request_hash_hex"] and e1.hash != e2.hash
    assert e2.hash == hashlib.sha256(n2 + e2.inner).digest()
    # The answer to the first does not open the second.
    with pytest.raises(qp.ProtocolError) as e:
        dev.open_end_response(e2, c["response"]["body"])
    assert e.value.reason == "request"
    assert dev.open_end_response(e1, c["response"]["body"]) is True
    with pytest.raises(ValueError):
        qp.request_hash(bytes(11), b"{}")


@pytest.mark.parametrize("c", KEY_ACCEPT[:1] + END_ACCEPT[:1], ids=ids(KEY_ACCEPT[:1] + END_ACCEPT[:1]))
def test_answer_form(c):
    """The outer "v" must be 2; a repeated member name is refused in P
    (re-signed) and in the outer object; unknown members of P are ignored."""
    sign_priv = int(PLAT["sign_priv_hex"], 16)
    p, _ = resp_parts(c["response"]["body"])
    open_ = ((lambda d, q, b: d.open_key_response(q, b)) if c["op"] == "key" else
             (lambda d, q, b: d.open_end_response(q, b)))

    def signed(p):
        return qp.response_body(p, qp.sign(qp.to_private_key(sign_priv), b"qkms/v2/resp\n" + p))

    def refused(body, reason):
        dev, req = build(c)
        with pytest.raises(qp.ProtocolError) as e:
            open_(dev, req, body)
        assert e.value.reason == reason, str(e.value)

    body = c["response"]["body"]
    for v in ("1", "3", '"2"', "2.0", "true", "null"):
        refused(body.replace('{"v":2,', '{"v":' + v + ",", 1), "v")
    o = json.loads(body)
    refused(body.replace('{"v":2,', '{"v":2,"v":2,', 1), "duplicate")
    refused('{"v":2,"resp":"' + o["resp"] + '","resp":"' + o["resp"] + '","sig":"' + o["sig"] +
            '"}', "duplicate")
    # P with a member repeated, same value or another, first or last: re-signed.
    sid = qp.canonical({"session_id": c["session_id"]})[1:-1]
    for dup in (sid + b"," + sid, b'"session_id":"other",' + sid, sid + b',"session_id":"other"'):
        refused(signed(p.replace(sid, dup, 1)), "duplicate")
    refused(signed(p[:-1] + b',"ext":{"a":1,"a":1}}'), "duplicate")
    # Unknown members, before, among and after the named ones: ignored.
    q = b'{"zz":[{"k":null}],' + p[1:-1].replace(b',"signer"', b',"x-mid":1.5,"signer"', 1) + \
        b',"x-end":"ignored"}'
    dev, req = build(c)
    got = open_(dev, req, signed(q))
    if c["op"] == "key":
        assert got.key.hex() == c["response"]["session_key_hex"]
    else:
        assert got is True


def test_signatures_in_the_file_verify():
    sign_pub = pub(PLAT["sign_pub_b64u"])
    for c in CASES:
        if c["mode"] in (1, 2):
            sig = unb64u(c["request_sig_b64u"])
            assert len(sig) == 64
            assert qp.verify(pub(c["device_pub_b64u"]), sig,
                             b"qkms/v2/req\n" + c["request_inner"].encode()), c["name"]
            assert json.loads(c["request_body"])["sig"] == c["request_sig_b64u"]
        bodies = [(c["response"]["body"], c.get("reason") != "signature")]
        if "valid_body" in c:
            bodies.append((c["valid_body"], True))
        for body, good in bodies:
            p, sig = resp_parts(body)
            assert len(sig) == 64
            assert qp.verify(sign_pub, sig, b"qkms/v2/resp\n" + p) is good, c["name"]
        assert c["response"]["sig_b64u"] == json.loads(c["response"]["body"])["sig"]
    other = next(c for c in REJECT if c["name"] == "reject-sig-other-key")
    p, sig = resp_parts(other["response"]["body"])
    assert qp.verify(pub(PLAT["other_sign_pub_b64u"]), sig, b"qkms/v2/resp\n" + p)


# -- the Python device against its own platform helpers, random keys -----------------

def _fresh_setup():
    """A throwaway CA, platform certificates and a device certificate."""
    def cert(subject, key, issuer, issuer_key, usage):
        now = datetime.datetime.utcnow()
        b = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(
            x509.oid.NameOID.COMMON_NAME, subject)])).issuer_name(x509.Name([
                x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, issuer)]))
             .public_key(key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(now - datetime.timedelta(days=1))
             .not_valid_after(now + datetime.timedelta(days=1))
             .add_extension(x509.KeyUsage(usage == "sign", False, False, False, usage == "agree",
                                          False, False, False, False), critical=True))
        from cryptography.hazmat.primitives import serialization
        return b.sign(issuer_key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)
    ca = ec.generate_private_key(ec.SECP256R1())
    sk, kk, dk = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    plat = qp.Platform(cert("sign", sk, "ca", ca, "sign"), cert("agree", kk, "ca", ca, "agree"))
    return ca, sk, kk, dk, cert("VIN-9", dk, "ca", ca, "sign"), plat


@pytest.mark.parametrize("mode", [1, 2, 3])
@pytest.mark.parametrize("source", ["a", "b", "c"])
def test_round_trip(mode, source):
    ca, sk, kk, dk, dcert, plat = _fresh_setup()
    keys = {7: os.urandom(16 if source == "b" else 32)}
    dev = (qp.Device2("VIN-9", 3, keys=keys) if mode == 3 else
           qp.Device2("VIN-9", mode, private_key=dk, certificate=dcert))
    req = dev.key_request(plat, "S-rt", "PEER-1", key_source=source, delivered=True)
    assert json.loads(req.raw) == req.body
    o = qp.platform_open_request(req.raw, ka_priv=kk, device_pub=dk.public_key(),
                                 device_keys=keys)
    assert o.h == req.hash and o.cr_plain == req.cr_plain
    key_id = "0b3c9a4e-7d55-4c1e-9d6f-2f1e4a7b8c90"
    sr, skey = os.urandom(32), os.urandom(16)
    payload = {"a": sr, "b": b"", "c": skey}[source]
    z3 = {"device_key": keys[7]} if mode == 3 else {"device_pub": dk.public_key()}

    def answer(**kw):
        args = dict(op="key", device_id="VIN-9", session_id="S-rt", request_hash=o.h,
                    key_id=key_id, key_bits=128, expires_at=1795433600, delivery="delivered",
                    key_source=source, payload=payload, epk=o.epk, **z3)
        args.update(kw)
        return qp.platform_respond(sk, plat.pin, **args)

    good = answer()
    # Tampered answers first (a refused answer does not spend the request).
    for kw, reason in ((dict(sig_key=kk), "signature"),
                       (dict(tamper=lambda f: dict(f, signer=plat.ka)), "signer"),
                       (dict(tamper=lambda f: dict(f, session_id="S-x")), "session_id"),
                       (dict(tamper=lambda f: dict(f, request=qp.b64u(bytes(32)))), "request"),
                       (dict(tamper=lambda f: dict(f, request=qp.b64u(qp.sha256(o.r)))),
                        "request"),
                       (dict(key_bits=192), "key_bits"),
                       (dict(payload=payload + b"x"), "payload_length")):
        with pytest.raises(qp.ProtocolError) as e:
            dev.open_key_response(req, answer(**kw).raw)
        assert e.value.reason == reason
    with pytest.raises(qp.ProtocolError) as e:
        dev.open_key_response(req, good.raw.replace(b'{"v":2,', b'{"v":1,', 1))
    assert e.value.reason == "v"
    dup = good.inner.replace(b'"key_bits":128', b'"key_bits":128,"key_bits":128', 1)
    with pytest.raises(qp.ProtocolError) as e:
        dev.open_key_response(req, qp.response_body(dup, qp.sign(sk, b"qkms/v2/resp\n" + dup)))
    assert e.value.reason == "duplicate"
    with pytest.raises(qp.ErrorAnswer) as e:
        dev.open_key_response(req, b'{"error":{"code":"policy_denied","message":"no"}}')
    assert e.value.code == "policy_denied"
    assert o.h == qp.sha256(o.n + o.r) == req.hash
    sk2 = dev.open_key_response(req, good.raw)
    if source == "c":
        assert sk2.key == skey
    else:
        ikm = o.cr_plain + (sr if source == "a" else b"")
        assert sk2.key == qp.hkdf(ikm, o.h, b"qkms/v2/key\n" + key_id.encode(), 16)
    assert sk2.delivery == "delivered"
    end = dev.end_request(plat, "S-rt")
    oe = qp.platform_open_request(end.raw, device_pub=dk.public_key(), device_keys=keys)
    assert oe.op == "end" and oe.epk is None
    done = qp.platform_respond(sk, plat.pin, op="end", device_id="VIN-9", session_id="S-rt",
                               request_hash=oe.h)
    assert dev.open_end_response(end, done.raw) is True


def test_strict_encodings():
    with pytest.raises(qp.ProtocolError):
        qp.b64u_decode("AAA=")
    with pytest.raises(qp.ProtocolError):
        qp.b64u_decode("AB")  # non-zero unused bits
    with pytest.raises(qp.ProtocolError):
        qp.parse_json(b'{"a":1,"a":2}')
    with pytest.raises(qp.ProtocolError) as e:
        qp.point_key(b"\x04" + bytes(64))
    assert e.value.reason == "point"
    assert qp.hkdf(bytes.fromhex("0b" * 22), bytes.fromhex("000102030405060708090a0b0c"),
                   bytes.fromhex("f0f1f2f3f4f5f6f7f8f9"), 42).hex() == (
        "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865")
    raw = bytes(range(1, 65))
    assert qp.sig_der_to_raw(qp.sig_raw_to_der(raw)) == raw
