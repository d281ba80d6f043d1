#!/usr/bin/python3
"""Writes tests/vectors/protocol-v2.json: test vectors for the qkms device
protocol v2 (docs/protocol.md, "qkms device protocol v2").

    /usr/bin/python3 tests/vectors/make_vectors_v2.py [OUT.json]

A third, deliberately minimal derivation of the protocol, written from
docs/protocol.md alone: it shares no code with the C library (device/),
kmsd, or the Python device (tests/integration/qkms_proto2_py.py). It does
its own P-256 arithmetic, RFC 6979 deterministic ECDSA, HKDF (RFC 5869 over
hmac) and X.509 DER, and uses `cryptography` only for AES-GCM and to check
its own results (every point, ECDH secret, HKDF output, signature and
certificate is cross-checked with cryptography).

Deterministic: every private key, scalar and random is a fixed function of
a label (SHA-256 of the label; scalars reduced into [1, n-1]), signatures
are RFC 6979, certificates are built by hand. Running it twice gives the
same file byte for byte.

The file is one JSON object:

  suite          "P256-HKDF-SHA256-AES256GCM"
  description    text
  ts, expires_at the ts of every request, the expires_at of every answer
  platform       ca_cert_b64u, ca_priv_hex       the test platform CA (self-signed,
                                                 O=qkms, CN=qkms platform CA 1)
                 sign_cert_b64u, sign_priv_hex, sign_pub_b64u
                                                 the platform signing certificate
                                                 (keyUsage digitalSignature)
                 ka_cert_b64u, ka_priv_hex, ka_pub_b64u
                                                 the key-agreement certificate
                                                 (keyUsage keyAgreement)
                 pin, ka                         hex SHA-256 of the two DERs
                 other_sign_priv_hex, other_sign_pub_b64u
                                                 a key that is NOT the platform's
                                                 (the reject case "reject-sig-other-key")
                 (certificates: DER in b64u; private keys: the 32-byte scalar in
                 hex; public keys: the 65-byte uncompressed point in b64u)
  cases          a list; each case has (fields that do not apply are absent):

  name, description
  op                  "key" or "end"
  mode                1, 2 or 3
  device_id
  key_index           mode 3: which pre-filled key
  device_key_hex      mode 3: that key (16 or 32 bytes)
  device_priv_hex     modes 1, 2: the device's private scalar
  device_pub_b64u     modes 1, 2: its public point
  device_cert_b64u    modes 1, 2: its certificate from the platform CA (CN = the
                      device ID). Mode 1 sends it in R ("cert"); mode 2 does not
                      (it is the certificate kmsd has on record)
  session_id, ts      (an "end" with "all": true has no session_id: it ends
                      every session of the device; its answer has "all",
                      "sessions_ended" and "streams_ended" instead)
  peer_id, key_source, delivered        op "key"
  nonce_hex           N: the inner "nonce" (modes 1, 2) or the outer one (mode 3)
  e_c_priv_hex, epk_b64u                op "key": the device's ephemeral key
  cr_plain_hex, z1_hex, k1_hex, cr_b64u op "key", sources a and b: CR, Z1 =
                      ECDH(e_c, KA), K1 = HKDF(Z1, epk || KA, "qkms/v2/cr" || N, 32)
                      (KA = the 65-byte point), cr = AES-256-GCM(K1, 0, device_id, CR)
  request_path        "/v2/sessions/key" or "/v2/sessions/end"
  request_inner       R exactly (canonical: the table's fields in its order, compact)
  request_hash_hex    H = SHA-256(N || R): the 12 raw bytes of N, then R
  request_sig_b64u    modes 1, 2: RFC 6979 ECDSA(device key, "qkms/v2/req\\n" || R), r||s
  request_aad         mode 3: AAD_req as a string ("\\n" is 0x0A)
  request_ct_b64u     mode 3: AES-GCM(device key, N, AAD_req, R)
  request_body        the exact outer request body
  response            op "key":
                        e_s_priv_hex, epk_s_b64u      the platform's ephemeral key
                        z2_hex                        ECDH(e_s, epk)
                        z3_hex                        ECDH(e_s, device cert key) (modes
                                                      1, 2); the device key (mode 3)
                        k2_hex                        HKDF(Z2 || Z3, H, "qkms/v2/resp" ||
                                                      epk_s, 32)
                        key_id, key_bits, expires_at, delivery, key_source
                                                      as the inner response says
                        sr_hex                        source a: SR (= payload)
                        payload_hex                   the AEAD plaintext
                        ct_b64u                       AES-256-GCM(K2, 0, key_id, payload)
                        inner                         P exactly
                        sig_b64u                      RFC 6979 ECDSA(platform signing key,
                                                      "qkms/v2/resp\\n" || P), r||s
                        body                          the exact response body
                        (P may carry members the protocol does not name, after
                        the named ones: the device ignores them; "key-m2-a-unknown-
                        members")
                        session_key_hex               accept cases: the key the device
                                                      ends up with (the payload for "c";
                                                      HKDF(CR [|| SR], H, "qkms/v2/key\\n"
                                                      || key_id, key_bits/8) for a, b)
                      op "end": inner, sig_b64u, body
                      In reject cases these are the values of the refused answer:
                      for a re-signed tampering, ct_b64u/inner/sig_b64u/body are the
                      tampered ones, z2/z3/k2/payload those the platform computed.
  expect              "accept" or "reject"
  reason              reject cases: the one check of docs/protocol.md's "The device
                      accepts an answer only if" (and of the answer's form) that
                      refuses it:
                        v               the outer "v" is not 2
                        duplicate       P repeats a member name
                        signature       sig does not verify under the pinned certificate
                        signer          signer is not the pin
                        op, device_id, session_id
                                        not the request's
                        request         not b64u(H) of this request
                        key_bits        not 128 or 256
                        key_source      neither the one asked for nor "c"
                        point           epk is not a point on P-256
                        aead            ct does not open
                        payload_length  the payload's length is not the source's
                        ended           (end) "ended" is not true
                      The generator checks that every other check passes, so a
                      device that skipped the named check would accept the answer
                      (for "duplicate": whether it took the first or the last of
                      the repeated members).
  valid_body          reject cases: the answer a correct platform gives to the same
                      request (same e_s, key_id, payload...): a correct device
                      accepts it
  valid_session_key_hex
                      reject "key" cases: the key valid_body yields
  differs_in          reject cases: the inner-response fields in which the refused P
                      differs from valid_body's, or ["sig"] where P is the same and
                      only the signature differs, or ["v"] where only the outer "v"
                      differs; for "duplicate", the repeated member (P is
                      valid_body's P with one more member of that name inserted
                      before it)
"""
import base64
import hashlib
import hmac
import json
import os
import sys

from cryptography import x509
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

LABEL = "qkms protocol v2 test vector: "
SUITE = "P256-HKDF-SHA256-AES256GCM"
TS = 1795430000  # 2026-11-24T08:33:20Z
EXPIRES = 1795433600  # one hour later
ZERO12 = bytes(12)

# -- P-256 (FIPS 186-4 D.1.2.3): plain arithmetic, only for vectors ------------

P = 0xFFFFFFFF00000001000000000000000000000000FFFFFFFFFFFFFFFFFFFFFFFF
A = P - 3
B = 0x5AC635D8AA3A93E7B3EBBD55769886BC651D06B0CC53B0F63BCE3C3E27D2604B
N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
G = (0x6B17D1F2E12C4247F8BCE6E563A440F277037D812DEB33A0F4A13945D898C296,
     0x4FE342E2FE1A7F9B8EE7EB4A7C0F9E162BCE33576B315ECECBB6406837BF51F5)


def on_curve(pt):
    x, y = pt
    return 0 <= x < P and 0 <= y < P and (y * y - (x * x * x + A * x + B)) % P == 0


def _jdouble(j):
    """Doubling in Jacobian coordinates (a = -3); None is the point at infinity."""
    if j is None or j[1] == 0:
        return None
    x, y, z = j
    delta, gamma = z * z % P, y * y % P
    beta = x * gamma % P
    alpha = 3 * (x - delta) * (x + delta) % P
    x3 = (alpha * alpha - 8 * beta) % P
    z3 = ((y + z) * (y + z) - gamma - delta) % P
    return x3, (alpha * (4 * beta - x3) - 8 * gamma * gamma) % P, z3


def _jadd_affine(j, pt):
    """Jacobian j + affine pt."""
    if j is None:
        return pt[0], pt[1], 1
    x1, y1, z1 = j
    zz = z1 * z1 % P
    h = (pt[0] * zz - x1) % P
    r = (pt[1] * zz * z1 - y1) % P
    if h == 0:
        return _jdouble(j) if r == 0 else None
    hh = h * h % P
    hhh, v = h * hh % P, x1 * hh % P
    x3 = (r * r - hhh - 2 * v) % P
    return x3, (r * (v - x3) - y1 * hhh) % P, z1 * h % P


def mul(k, pt):
    """k * pt (double and add, Jacobian; one inversion at the end)."""
    acc = None
    for bit in bin(k)[2:]:
        acc = _jdouble(acc)
        if bit == "1":
            acc = _jadd_affine(acc, pt)
    if acc is None:
        return None
    zi = pow(acc[2], -1, P)
    res = acc[0] * zi * zi % P, acc[1] * zi * zi * zi % P
    assert on_curve(res)
    return res


def enc_point(pt):
    return b"\x04" + pt[0].to_bytes(32, "big") + pt[1].to_bytes(32, "big")


def i2b(i):
    return i.to_bytes(32, "big")


assert on_curve(G) and mul(N, G) is None


# -- labels -----------------------------------------------------------------

def derive(label, n):
    """n fixed bytes for label (n <= 32)."""
    assert n <= 32
    return hashlib.sha256((LABEL + label).encode()).digest()[:n]


def scalar(label):
    """A fixed private scalar in [1, n-1]."""
    return int.from_bytes(derive(label, 32), "big") % (N - 1) + 1


def b64u(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unb64u(s):
    assert "=" not in s
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def sha256(b):
    return hashlib.sha256(b).digest()


# -- cross-checks with cryptography -------------------------------------------

def crypto_priv(d):
    return ec.derive_private_key(d, ec.SECP256R1())


def pub_point(d):
    pt = mul(d, G)
    from cryptography.hazmat.primitives import serialization
    assert crypto_priv(d).public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint) == enc_point(pt)
    return pt


def ecdh(d, pt):
    """Z: the x-coordinate of d * pt, checked against cryptography's ECDH."""
    z = i2b(mul(d, pt)[0])
    other = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), enc_point(pt))
    assert crypto_priv(d).exchange(ec.ECDH(), other) == z
    return z


def hkdf(ikm, salt, info, length):
    """RFC 5869 with HMAC-SHA-256, checked against cryptography's HKDF."""
    prk = hmac.new(salt, ikm, hashlib.sha256).digest()
    okm, t, i = b"", b"", 1
    while len(okm) < length:
        t = hmac.new(prk, t + info + bytes([i]), hashlib.sha256).digest()
        okm += t
        i += 1
    okm = okm[:length]
    if length:
        assert HKDF(hashes.SHA256(), length, salt, info).derive(ikm) == okm
    return okm


def gcm(key, nonce, aad, pt):
    return AESGCM(key).encrypt(nonce, pt, aad)


def gcm_opens(key, nonce, aad, ct):
    try:
        return AESGCM(key).decrypt(nonce, ct, aad)
    except InvalidTag:
        return None


# -- RFC 6979 deterministic ECDSA, P-256 / SHA-256 -------------------------------

def hm(k, v):
    return hmac.new(k, v, hashlib.sha256).digest()


def rfc6979_k(d, h1):
    """The nonces of RFC 6979 section 3.2 (qlen = hlen = 256), in order."""
    x = i2b(d)
    h = i2b(int.from_bytes(h1, "big") % N)  # bits2octets
    v, k = b"\x01" * 32, b"\x00" * 32
    k = hm(k, v + b"\x00" + x + h)
    v = hm(k, v)
    k = hm(k, v + b"\x01" + x + h)
    v = hm(k, v)
    while True:
        v = hm(k, v)
        cand = int.from_bytes(v, "big")
        if 1 <= cand < N:
            yield cand
        k = hm(k, v + b"\x00")
        v = hm(k, v)


def ecdsa_sign(d, msg):
    """r || s, 64 bytes (no low-s normalisation: RFC 6979 as is)."""
    h1 = sha256(msg)
    e = int.from_bytes(h1, "big") % N
    for k in rfc6979_k(d, h1):
        r = mul(k, G)[0] % N
        s = pow(k, -1, N) * (e + r * d) % N
        if r and s:
            return i2b(r) + i2b(s)


def ecdsa_verify(pt, sig, msg):
    """Verified with cryptography (not with the arithmetic above)."""
    if len(sig) != 64:
        return False
    r, s = int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big")
    if not (0 < r < N and 0 < s < N):
        return False
    pub = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), enc_point(pt))
    try:
        pub.verify(encode_dss_signature(r, s), msg, ec.ECDSA(hashes.SHA256()))
        return True
    except InvalidSignature:
        return False


def sign(d, msg):
    sig = ecdsa_sign(d, msg)
    assert ecdsa_verify(pub_point(d), sig, msg)
    return sig


# RFC 6979 A.2.5, P-256 with SHA-256.
_x = 0xC9AFA9D845BA75166B5C215767B1D6934E50C3DB36E89B127B8A622B120F6721
assert ecdsa_sign(_x, b"sample").hex() == (
    "efd48b2aacb6a8fd1140dd9cd45e81d69d2c877b56aaf991c34d0ea84eaf3716"
    "f7cb1c942d657c41d436c7a1b6e29f65f3e900dbb9aff4064dc4ab2f843acda8")
assert ecdsa_sign(_x, b"test").hex() == (
    "f1abb023518351cd71d881567b1ea663ed3efcf6c5132b354f28d3b0b7d38367"
    "019f4113742a2b14bd25926b49c649155f267e60d3814b4c0cc84250e46f0083")


# -- DER and X.509 -----------------------------------------------------------------

def tlv(tag, body):
    n = len(body)
    if n < 0x80:
        ln = bytes([n])
    else:
        nb = n.to_bytes((n.bit_length() + 7) // 8, "big")
        ln = bytes([0x80 | len(nb)]) + nb
    return bytes([tag]) + ln + body


def seq(*items):
    return tlv(0x30, b"".join(items))


def der_int(i):
    assert i >= 0
    b = i.to_bytes(i.bit_length() // 8 + 1, "big")  # a leading zero where the top bit is set
    return tlv(0x02, b)


def oid(dotted):
    parts = [int(p) for p in dotted.split(".")]
    out = bytes([40 * parts[0] + parts[1]])
    for p in parts[2:]:
        chunk = [p & 0x7F]
        p >>= 7
        while p:
            chunk.append(0x80 | (p & 0x7F))
            p >>= 7
        out += bytes(reversed(chunk))
    return tlv(0x06, out)


def name(*rdns):
    """A Name: one RDN per (oid, UTF8String value)."""
    return seq(*(tlv(0x31, seq(oid(o), tlv(0x0C, v.encode()))) for o, v in rdns))


def ext(oid_s, critical, value):
    return seq(oid(oid_s), *([tlv(0x01, b"\xff")] if critical else []), tlv(0x04, value))


ECDSA_SHA256 = seq(oid("1.2.840.10045.4.3.2"))
CN, O = "2.5.4.3", "2.5.4.10"
NOT_BEFORE, NOT_AFTER = b"260101000000Z", b"360101000000Z"  # 2026-01-01, 2036-01-01
# keyUsage bits (DER BIT STRING, trailing zero bits dropped)
KU_DIGITAL_SIGNATURE = b"\x07\x80"
KU_KEY_AGREEMENT = b"\x03\x08"
KU_DS_KA = b"\x03\x88"
KU_CERT_CRL = b"\x01\x06"


def spki(pt):
    return seq(seq(oid("1.2.840.10045.2.1"), oid("1.2.840.10045.3.1.7")),
               tlv(0x03, b"\x00" + enc_point(pt)))


def certificate(label, subject, pt, issuer, issuer_d, issuer_pt, exts):
    serial = bytearray(derive(label + "/serial", 16))
    serial[0] = (serial[0] & 0x7F) | 0x40  # positive, 16 bytes
    ski = hashlib.sha1(enc_point(pt)).digest()
    aki = hashlib.sha1(enc_point(issuer_pt)).digest()
    exts = exts + [ext("2.5.29.14", False, tlv(0x04, ski))]
    if issuer_pt != pt:
        exts.append(ext("2.5.29.35", False, seq(tlv(0x80, aki))))
    tbs = seq(tlv(0xA0, der_int(2)), der_int(int.from_bytes(serial, "big")), ECDSA_SHA256,
              issuer, seq(tlv(0x17, NOT_BEFORE), tlv(0x17, NOT_AFTER)), subject, spki(pt),
              tlv(0xA3, seq(*exts)))
    sig = sign(issuer_d, tbs)
    sig_der = seq(der_int(int.from_bytes(sig[:32], "big")), der_int(int.from_bytes(sig[32:], "big")))
    der = seq(tbs, ECDSA_SHA256, tlv(0x03, b"\x00" + sig_der))
    # cryptography parses it, and the signature verifies under the issuer's key.
    cert = x509.load_der_x509_certificate(der)
    ipub = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), enc_point(issuer_pt))
    ipub.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(hashes.SHA256()))
    assert cert.tbs_certificate_bytes == tbs and cert.version == x509.Version.v3
    assert cert.extensions.get_extension_for_class(x509.KeyUsage).critical
    return der


# -- the platform -----------------------------------------------------------------

CA_D = scalar("platform CA key")
CA_PT = pub_point(CA_D)
CA_NAME = name((O, "qkms"), (CN, "qkms platform CA 1"))
CA_CERT = certificate("platform CA", CA_NAME, CA_PT, CA_NAME, CA_D, CA_PT, [
    ext("2.5.29.19", True, seq(tlv(0x01, b"\xff"), der_int(0))),
    ext("2.5.29.15", True, tlv(0x03, KU_CERT_CRL))])


def ee_cert(label, subject, d, ku, extra=()):
    """An end-entity certificate from the CA: basicConstraints CA:FALSE,
    keyUsage ku (critical), subject and authority key identifiers, extra."""
    return certificate(label, subject, pub_point(d), CA_NAME, CA_D, CA_PT,
                       [ext("2.5.29.19", True, seq()), ext("2.5.29.15", True, tlv(0x03, ku)),
                        *extra])


SIGN_D = scalar("platform signing key 1")
SIGN_PT = pub_point(SIGN_D)
SIGN_CERT = ee_cert("platform signing certificate 1",
                    name((O, "qkms"), (CN, "qkms platform signing 1")), SIGN_D,
                    KU_DIGITAL_SIGNATURE)
KA_D = scalar("platform key-agreement key 1")
KA_PT = pub_point(KA_D)
KA_CERT = ee_cert("platform key-agreement certificate 1",
                  name((O, "qkms"), (CN, "qkms platform key agreement 1")), KA_D,
                  KU_KEY_AGREEMENT)
PIN = hashlib.sha256(SIGN_CERT).hexdigest()
KA_HEX = hashlib.sha256(KA_CERT).hexdigest()
OTHER_D = scalar("a signing key that is not the platform's")
OTHER_PT = pub_point(OTHER_D)

assert x509.load_der_x509_certificate(SIGN_CERT).extensions.get_extension_for_class(
    x509.KeyUsage).value.digital_signature
assert x509.load_der_x509_certificate(KA_CERT).extensions.get_extension_for_class(
    x509.KeyUsage).value.key_agreement


# -- devices -----------------------------------------------------------------------

def cert_device(device_id):
    """A device with a key pair and a certificate from the platform CA:
    CN = the device ID, subjectAltName urn:qkms:device:ID, keyUsage
    digitalSignature + keyAgreement, extendedKeyUsage clientAuth (docs/pki.md)."""
    d = scalar("device key " + device_id)
    der = ee_cert("device certificate " + device_id, name((CN, device_id)), d, KU_DS_KA, extra=(
        ext("2.5.29.37", False, seq(oid("1.3.6.1.5.5.7.3.2"))),
        ext("2.5.29.17", False, seq(tlv(0x86, ("urn:qkms:device:" + device_id).encode())))))
    c = x509.load_der_x509_certificate(der)
    assert c.subject.get_attributes_for_oid(x509.oid.NameOID.COMMON_NAME)[0].value == device_id
    return {"device_id": device_id, "d": d, "pt": pub_point(d), "cert": der}


def key_device(device_id, key_index, key_len):
    return {"device_id": device_id, "key_index": key_index,
            "key": derive(f"device key {device_id}/{key_index}", key_len)}


DEV1 = cert_device("VIN-0001")       # mode 1
DEV2 = cert_device("METER-42")       # mode 2
DEV3_128 = key_device("ENC-0001", 0, 16)     # mode 3
DEV3_256 = key_device("ENC-0001", 255, 32)   # mode 3
DEV3_256B = key_device("GW-7", 3, 32)        # mode 3


# -- requests ----------------------------------------------------------------------

def id_ok(s):
    return 1 <= len(s) <= 128 and all(0x21 <= ord(c) <= 0x7E and c not in "/\\%?#" for c in s)


def js(s):
    """An ID or other ASCII string as a JSON string literal ('"' is the only
    character of an ID that needs escaping; the others here need none)."""
    assert all(0x20 <= ord(c) <= 0x7E and c != "\\" for c in s), s
    return '"' + s.replace('"', '\\"') + '"'


def request(name, op, mode, dev, session_id, peer_id=None, key_source=None, delivered=False):
    """One request: returns the case's request fields and a context for the answer."""
    assert id_ok(dev["device_id"]) and ((op == "end" and session_id is None) or id_ok(session_id))
    device_id = dev["device_id"]
    n = derive(name + "/nonce", 12)
    c = {"name": name, "description": None, "op": op, "mode": mode, "device_id": device_id}
    if mode == 3:
        c["key_index"] = dev["key_index"]
        c["device_key_hex"] = dev["key"].hex()
    else:
        c["device_priv_hex"] = i2b(dev["d"]).hex()
        c["device_pub_b64u"] = b64u(enc_point(dev["pt"]))
        c["device_cert_b64u"] = b64u(dev["cert"])
    if session_id is None:  # an end of every session of the device
        c["all"] = True
    else:
        c["session_id"] = session_id
    if op == "key":
        # peer_id None: the platform itself is the peer ("peer_platform": true).
        assert (peer_id is None and not delivered) or (id_ok(peer_id) and peer_id != device_id)
        assert key_source in "abc"
        if peer_id is None:
            c["peer_platform"] = True
        else:
            c["peer_id"] = peer_id
        c.update({"key_source": key_source, "delivered": delivered})
    c["ts"] = TS
    c["nonce_hex"] = n.hex()
    ctx = {"dev": dev, "mode": mode, "op": op, "key_source": key_source, "n": n}
    epk = cr = None
    if op == "key":
        e_c = scalar(name + "/e_c")
        epk = enc_point(pub_point(e_c))
        c["e_c_priv_hex"] = i2b(e_c).hex()
        c["epk_b64u"] = b64u(epk)
        ctx.update(e_c=e_c, epk=epk)
        if key_source in "ab":
            crp = derive(name + "/CR", 32)
            z1 = ecdh(e_c, KA_PT)
            k1 = hkdf(z1, epk + enc_point(KA_PT), b"qkms/v2/cr" + n, 32)
            cr = gcm(k1, ZERO12, device_id.encode(), crp)
            assert len(cr) == 48
            # The platform's side: the KA private key and epk give the same Z1.
            assert ecdh(KA_D, pub_point(e_c)) == z1
            c.update({"cr_plain_hex": crp.hex(), "z1_hex": z1.hex(), "k1_hex": k1.hex(),
                      "cr_b64u": b64u(cr)})
            ctx["cr_plain"] = crp
    # R: the table's fields, in its order, those that apply, compact.
    r = '{"op":"' + op + '","device_id":' + js(device_id) + ',"mode":' + str(mode)
    r += ',"suite":"' + SUITE + '",' + ('"all":true' if session_id is None
                                         else '"session_id":' + js(session_id))
    if op == "key":
        r += (',"peer_platform":true' if peer_id is None else ',"peer_id":' + js(peer_id))
        r += ',"key_source":"' + key_source + '"'
        if delivered:
            r += ',"delivery":"delivered"'
    r += ',"ts":' + str(TS)
    if mode in (1, 2):
        r += ',"nonce":"' + b64u(n) + '"'
    r += ',"pin":"' + PIN + '"'
    if op == "key":
        r += ',"epk":"' + b64u(epk) + '"'
        if key_source in "ab":
            r += ',"ka":"' + KA_HEX + '","cr":"' + b64u(cr) + '"'
    if mode == 1:
        r += ',"cert":"' + b64u(dev["cert"]) + '"'
    r += "}"
    rb = r.encode("ascii")
    h = sha256(n + rb)  # H = SHA-256(N || R)
    # Self-check against the table, independently of the string building above.
    want = {"op": op, "device_id": device_id, "mode": mode, "suite": SUITE, "ts": TS, "pin": PIN}
    if session_id is None:
        want["all"] = True
    else:
        want["session_id"] = session_id
    if op == "key":
        want.update({"key_source": key_source, "epk": b64u(epk)})
        if peer_id is None:
            want["peer_platform"] = True
        else:
            want["peer_id"] = peer_id
        if delivered:
            want["delivery"] = "delivered"
        if key_source in "ab":
            want.update({"ka": KA_HEX, "cr": b64u(cr)})
    if mode in (1, 2):
        want["nonce"] = b64u(n)
    if mode == 1:
        want["cert"] = b64u(dev["cert"])
    order = ["op", "device_id", "mode", "suite", "session_id", "all", "peer_id", "peer_platform",
             "key_source",
             "delivery", "ts", "nonce", "pin", "epk", "ka", "cr", "cert"]
    parsed = json.loads(r)
    assert parsed == want and list(parsed) == [k for k in order if k in want], (parsed, want)
    c["request_path"] = "/v2/sessions/" + op
    c["request_inner"] = r
    c["request_hash_hex"] = h.hex()
    head = ('{"v":2,"suite":"' + SUITE + '","mode":' + str(mode) + ',"device_id":' +
            js(device_id))
    if mode in (1, 2):
        sig = sign(dev["d"], b"qkms/v2/req\n" + rb)
        c["request_sig_b64u"] = b64u(sig)
        body = head + ',"req":"' + b64u(rb) + '","sig":"' + b64u(sig) + '"}'
        keys = ["v", "suite", "mode", "device_id", "req", "sig"]
    else:
        aad = "qkms/v2/req\n" + op + "\n" + device_id + "\n" + str(dev["key_index"])
        ct = gcm(dev["key"], n, aad.encode(), rb)
        assert AESGCM(dev["key"]).decrypt(n, ct, aad.encode()) == rb
        c["request_aad"] = aad
        c["request_ct_b64u"] = b64u(ct)
        body = (head + ',"key_index":' + str(dev["key_index"]) + ',"nonce":"' + b64u(n) +
                '","ct":"' + b64u(ct) + '"}')
        keys = ["v", "suite", "mode", "device_id", "key_index", "nonce", "ct"]
    assert list(json.loads(body)) == keys and len(body) <= 8192
    c["request_body"] = body
    ctx.update(r=rb, h=h, session_id=session_id)
    return c, ctx


# -- answers ------------------------------------------------------------------------

def key_id_for(label):
    b = bytearray(derive(label + "/key-id", 16))
    b[6] = (b[6] & 0x0F) | 0x40
    b[8] = (b[8] & 0x3F) | 0x80
    h = b.hex()
    return "-".join((h[:8], h[8:12], h[12:16], h[16:20], h[20:32]))


def inner_key(f):
    return ('{"op":' + js(f["op"]) + ',"device_id":' + js(f["device_id"]) + ',"session_id":' +
            js(f["session_id"]) + ',"request":"' + f["request"] + '","signer":"' + f["signer"] +
            '","key_id":"' + f["key_id"] + '","key_bits":' + str(f["key_bits"]) +
            ',"expires_at":' + str(f["expires_at"]) + ',"delivery":"' + f["delivery"] +
            '","key_source":"' + f["key_source"] + '","epk":"' + f["epk"] + '","ct":"' +
            f["ct"] + '"}')


def inner_end(f):
    if "all" in f:  # an end of every session: counts, no session_id
        return ('{"op":' + js(f["op"]) + ',"device_id":' + js(f["device_id"]) + ',"all":true' +
                ',"request":"' + f["request"] + '","signer":"' + f["signer"] + '","ended":' +
                ("true" if f["ended"] is True else "false") + ',"sessions_ended":' +
                str(f["sessions_ended"]) + ',"streams_ended":' + str(f["streams_ended"]) + "}")
    return ('{"op":' + js(f["op"]) + ',"device_id":' + js(f["device_id"]) + ',"session_id":' +
            js(f["session_id"]) + ',"request":"' + f["request"] + '","signer":"' + f["signer"] +
            '","ended":' + ("true" if f["ended"] is True else "false") + "}")


def outer(p, sig, v=2):
    return '{"v":' + str(v) + ',"resp":"' + b64u(p) + '","sig":"' + b64u(sig) + '"}'


def compact(v):
    return json.dumps(v, separators=(",", ":"), ensure_ascii=True)


def key_answer(name, ctx, key_bits=256, key_source=None, delivery="session", payload=None,
               z3_key=None, tamper=None, sign_d=SIGN_D, flip_sig=None, extra=None,
               edit_p=None, outer_v=2):
    """The platform's answer to ctx's key request. Untampered unless
    tamper(fields) changes the inner fields (before signing), z3_key seals
    under another Z3, sign_d signs with another key, flip_sig flips a
    byte of the signature, edit_p(P text) -> P text rewrites P before it is
    signed, or outer_v is not 2. extra: members the protocol does not name,
    appended to P (in order)."""
    dev, mode = ctx["dev"], ctx["mode"]
    key_source = key_source or ctx["key_source"]
    key_id = key_id_for(name)
    e_s = scalar(name + "/e_s")
    epk_s = enc_point(pub_point(e_s))
    epk_pt = (int.from_bytes(ctx["epk"][1:33], "big"), int.from_bytes(ctx["epk"][33:], "big"))
    z2 = ecdh(e_s, epk_pt)
    assert z2 == ecdh(ctx["e_c"], pub_point(e_s))  # the device's side
    if mode == 3:
        z3 = dev["key"]
    else:
        z3 = ecdh(e_s, dev["pt"])
        assert z3 == ecdh(dev["d"], pub_point(e_s))
    if z3_key is not None:
        z3 = z3_key
    k2 = hkdf(z2 + z3, ctx["h"], b"qkms/v2/resp" + epk_s, 32)
    if payload is None:
        payload = {"c": derive(name + "/session-key", key_bits // 8),
                   "a": derive(name + "/SR", 32), "b": b""}[key_source]
    ct = gcm(k2, ZERO12, key_id.encode(), payload)
    f = {"op": "key", "device_id": dev["device_id"], "session_id": ctx["session_id"],
         "request": b64u(ctx["h"]), "signer": PIN, "key_id": key_id, "key_bits": key_bits,
         "expires_at": EXPIRES, "delivery": delivery, "key_source": key_source,
         "epk": b64u(epk_s), "ct": b64u(ct)}
    if tamper:
        f = tamper(dict(f))
    p = inner_key(f)
    assert json.loads(p) == f and list(json.loads(p)) == list(f)
    if extra:
        assert not set(extra) & set(f)
        p = p[:-1] + "".join("," + compact(k) + ":" + compact(v) for k, v in extra.items()) + "}"
        assert json.loads(p) == dict(f, **extra)
    if edit_p:
        p = edit_p(p)
    pb = p.encode("ascii")
    sig = sign(sign_d, b"qkms/v2/resp\n" + pb)
    if flip_sig is not None:
        sig = sig[:flip_sig] + bytes([sig[flip_sig] ^ 0x01]) + sig[flip_sig + 1:]
    resp = {"e_s_priv_hex": i2b(e_s).hex(), "epk_s_b64u": f["epk"], "z2_hex": z2.hex(),
            "z3_hex": z3.hex(), "k2_hex": k2.hex(), "key_id": f["key_id"],
            "key_bits": f["key_bits"], "expires_at": f["expires_at"], "delivery": f["delivery"],
            "key_source": f["key_source"]}
    if key_source == "a":
        resp["sr_hex"] = payload.hex()
    resp.update({"payload_hex": payload.hex(), "ct_b64u": f["ct"], "inner": p,
                 "sig_b64u": b64u(sig), "body": outer(pb, sig, outer_v)})
    return resp


def end_answer(ctx, ended=True):
    if ctx["session_id"] is None:
        f = {"op": "end", "device_id": ctx["dev"]["device_id"], "all": True,
             "request": b64u(ctx["h"]), "signer": PIN, "ended": ended, "sessions_ended": 3,
             "streams_ended": 1}
    else:
        f = {"op": "end", "device_id": ctx["dev"]["device_id"], "session_id": ctx["session_id"],
             "request": b64u(ctx["h"]), "signer": PIN, "ended": ended}
    p = inner_end(f)
    assert json.loads(p) == f
    sig = sign(SIGN_D, b"qkms/v2/resp\n" + p.encode())
    return {"inner": p, "sig_b64u": b64u(sig), "body": outer(p.encode(), sig)}


# -- the device's checks (docs/protocol.md, "The device accepts an answer only if") --

def device_checks(ctx, body, first_wins=False):
    """Every check the device makes, each on its own: returns (the names of
    the checks that fail, the session key or None). A member of P named
    twice fails "duplicate"; the other checks then see the last of them
    (as json.loads keeps), or the first with first_wins."""
    fails = []
    o = json.loads(body)
    assert list(o) == ["v", "resp", "sig"]
    if o["v"] != 2:
        fails.append("v")
    pb = unb64u(o["resp"])
    pairs = json.loads(pb, object_pairs_hook=lambda kv: kv)
    names = [k for k, _ in pairs]
    if len(set(names)) != len(names):
        fails.append("duplicate")
    f = {}
    for k, v in pairs:
        if not (first_wins and k in f):
            f[k] = v
    if not ecdsa_verify(SIGN_PT, unb64u(o["sig"]), b"qkms/v2/resp\n" + pb):
        fails.append("signature")
    if f["signer"] != PIN:
        fails.append("signer")
    for k, want in (("op", ctx["op"]), ("device_id", ctx["dev"]["device_id"])):
        if f[k] != want:
            fails.append(k)
    if (ctx["session_id"] is None and ("session_id" in f or f.get("all") is not True)) or \
            (ctx["session_id"] is not None and ("all" in f or f.get("session_id") != ctx["session_id"])):
        fails.append("session_id")
    if f["request"] != b64u(ctx["h"]):
        fails.append("request")
    if ctx["op"] == "end":
        if f["ended"] is not True:
            fails.append("ended")
        return fails, None
    if f["key_bits"] not in (128, 256):
        fails.append("key_bits")
    if f["key_source"] not in (ctx["key_source"], "c"):
        fails.append("key_source")
    epk_s = unb64u(f["epk"])
    pt = (int.from_bytes(epk_s[1:33], "big"), int.from_bytes(epk_s[33:], "big"))
    if len(epk_s) != 65 or epk_s[0] != 4 or not on_curve(pt):
        fails.append("point")
        return fails, None
    z2 = ecdh(ctx["e_c"], pt)
    z3 = ctx["dev"]["key"] if ctx["mode"] == 3 else ecdh(ctx["dev"]["d"], pt)
    k2 = hkdf(z2 + z3, ctx["h"], b"qkms/v2/resp" + epk_s, 32)
    payload = gcm_opens(k2, ZERO12, f["key_id"].encode(), unb64u(f["ct"]))
    if payload is None:
        fails.append("aead")
        return fails, None
    if len(payload) != {"a": 32, "b": 0, "c": f["key_bits"] // 8}.get(f["key_source"], -1):
        fails.append("payload_length")
    if fails:
        return fails, None
    if f["key_source"] == "c":
        return fails, payload
    ikm = ctx["cr_plain"] + (payload if f["key_source"] == "a" else b"")
    return fails, hkdf(ikm, ctx["h"], b"qkms/v2/key\n" + f["key_id"].encode(), f["key_bits"] // 8)


# -- the cases -------------------------------------------------------------------------

def accept_cases():
    out = []

    def key(name, desc, mode, dev, session_id, peer_id, source, key_bits, delivered=False,
            answer_source=None, extra=None):
        c, ctx = request(name, "key", mode, dev, session_id, peer_id, source, delivered)
        c["description"] = desc
        r = key_answer(name, ctx, key_bits, answer_source,
                       "delivered" if delivered else "session", extra=extra)
        fails, skey = device_checks(ctx, r["body"])
        assert fails == [] and len(skey) * 8 == key_bits, (name, fails)
        if r["key_source"] == "c":
            assert skey.hex() == r["payload_hex"]
        r["session_key_hex"] = skey.hex()
        c["response"] = r
        c["expect"] = "accept"
        out.append(c)

    key("key-m1-a", "mode 1 (certificate in the request), source a, 256-bit key", 1, DEV1,
        "S-1", "ENC-0001", "a", 256)
    key("key-m1-b", "mode 1, source b (empty payload), 256-bit key", 1, DEV1, "S-2", "ENC-0001",
        "b", 256)
    key("key-m1-c", "mode 1, source c (the key encrypted), 128-bit key", 1, DEV1, "S-3",
        "ENC-0001", "c", 128)
    key("key-m2-a", "mode 2 (the certificate on record), source a, 128-bit key", 2, DEV2, "S-4",
        "GW-7", "a", 128)
    key("key-m2-b", "mode 2, source b, 256-bit key; a session ID with double quotes (escaped "
        "in R and P)", 2, DEV2, 'S"quoted"-5', "GW-7", "b", 256)
    key("key-m2-c", "mode 2, source c, 256-bit key", 2, DEV2, "S-6", "GW-7", "c", 256)
    key("key-m3-a", "mode 3 under an AES-128 device key (index 0; Z3 is the 16-byte key), "
        "source a, 256-bit key", 3, DEV3_128, "S-7", "VIN-0001", "a", 256)
    key("key-m3-b", "mode 3 under an AES-256 device key, index 255, source b, 128-bit key", 3,
        DEV3_256, "S-8", "VIN-0001", "b", 128)
    key("key-m3-c-delivered", "mode 3 under an AES-256 device key (index 3), source c, "
        "128-bit key, single transfer (\"delivery\":\"delivered\" in R and in the answer)", 3,
        DEV3_256B, "S-9", "METER-42", "c", 128, delivered=True)
    key("key-m1-a-answered-c", "mode 1 asks for source a but the session exists already: the "
        "answer says key_source c and carries the key (accepted)", 1, DEV1, "S-10", "ENC-0001",
        "a", 256, answer_source="c")
    key("key-m2-a-unknown-members", "mode 2, source a, 256-bit key; P ends with members the "
        "protocol does not name (a string, a number, an object holding an array), which the "
        "device ignores", 2, DEV2, "S-11", "GW-7", "a", 256,
        extra={"note": "members not named by the protocol are ignored", "retry_after": 30,
               "ext": {"level": [1, True, None, "x"]}})

    key("key-m1-a-platform", "mode 1, source a, 256-bit key, the platform itself as the peer "
        "(\"peer_platform\":true in R: a device-platform channel key)", 1, DEV1, "S-12", None,
        "a", 256)
    key("key-m3-c-platform", "mode 3 (AES-128 device key), source c, 128-bit key, the platform "
        "as the peer", 3, DEV3_128, "S-13", None, "c", 128)

    def end(name, desc, mode, dev, session_id):
        c, ctx = request(name, "end", mode, dev, session_id)
        c["description"] = desc
        c["response"] = end_answer(ctx)
        assert device_checks(ctx, c["response"]["body"]) == ([], None)
        c["expect"] = "accept"
        out.append(c)

    end("end-m1", "end in mode 1 (signed, certificate in R)", 1, DEV1, "S-1")
    end("end-m2", "end in mode 2 (signed)", 2, DEV2, 'S"quoted"-5')
    end("end-m3", "end in mode 3 (AEAD under device key 255)", 3, DEV3_256, "S-8")
    end("end-all-m3", "an end of every session of the device (\"all\":true in R, no session_id; "
        "the answer counts sessions_ended and streams_ended), mode 3", 3, DEV3_128, None)
    return out


def reject_cases():
    out = []

    def bad(name, desc, reason, differs, mode=1, dev=DEV1, source="a", key_bits=256,
            peer="ENC-0001", tamper_ctx=None, **answer):
        """tamper_ctx(ctx) -> the tamper function, for one that needs the request."""
        c, ctx = request(name, "key", mode, dev, "R-" + name, peer, source)
        c["description"] = desc
        if tamper_ctx:
            answer["tamper"] = tamper_ctx(ctx)
        valid = key_answer(name, ctx, key_bits)
        fails, vkey = device_checks(ctx, valid["body"])
        assert fails == [], (name, fails)
        r = key_answer(name, ctx, key_bits, **answer)
        fails, _ = device_checks(ctx, r["body"])
        assert fails == [reason], (name, fails, reason)
        if reason == "duplicate":
            # Whichever of the repeated members a lax parser keeps, every
            # other check passes.
            assert device_checks(ctx, r["body"], first_wins=True)[0] == [reason], name
            vpairs = json.loads(valid["inner"], object_pairs_hook=lambda kv: kv)
            rpairs = json.loads(r["inner"], object_pairs_hook=lambda kv: kv)
            names = [k for k, _ in rpairs]
            diff = sorted({k for k in names if names.count(k) > 1})
            assert len(diff) == 1 and len(rpairs) == len(vpairs) + 1, name
            first = names.index(diff[0])
            assert rpairs[:first] + rpairs[first + 1:] == vpairs, name
        elif reason == "v":
            assert (r["inner"], r["sig_b64u"]) == (valid["inner"], valid["sig_b64u"]), name
            diff = ["v"]
        else:
            vf, rf = json.loads(valid["inner"]), json.loads(r["inner"])
            diff = sorted(k for k in set(vf) | set(rf) if vf.get(k) != rf.get(k)) or ["sig"]
        assert diff == sorted(differs), (name, diff, differs)
        c["response"] = r
        c["expect"] = "reject"
        c["reason"] = reason
        c["valid_body"] = valid["body"]
        c["valid_session_key_hex"] = vkey.hex()
        c["differs_in"] = diff
        out.append(c)
        return ctx

    def setf(k, v):
        def t(f):
            f[k] = v
            return f
        return t

    bad("reject-sig-other-key", "the answer is signed by another key than the pinned "
        "certificate's (platform.other_sign_priv_hex); signer still names the pin", "signature",
        ["sig"], sign_d=OTHER_D)
    bad("reject-sig-flipped", "one byte of sig flipped (byte 10, in r)", "signature", ["sig"],
        flip_sig=10)
    bad("reject-v-1", "the outer \"v\" is 1 (P and sig are the valid answer's)", "v", ["v"],
        outer_v=1)
    bad("reject-duplicate-key-source", "P names key_source twice, \"c\" then \"a\" (re-signed; "
        "the payload is a 32-byte SR, so a device keeping either one would accept, with "
        "different keys)", "duplicate", ["key_source"],
        edit_p=lambda p: p.replace('"key_source":"a"', '"key_source":"c","key_source":"a"', 1))
    bad("reject-signer-not-pin", "signer names the key-agreement certificate instead of the "
        "pin; signed with the pinned key", "signer", ["signer"], tamper=setf("signer", KA_HEX))
    other, octx = request("reject-request-other/other", "key", 1, DEV1, "R-reject-request-other",
                          "ENC-0001", "a")
    bad("reject-request-other", "request is the hash of another request of the same device and "
        "session (re-signed; ct is this request's)", "request", ["request"],
        tamper=setf("request", b64u(octx["h"])))
    bad("reject-request-hash-without-nonce", "mode 3: request is SHA-256(R), the hash without "
        "N (re-signed; ct is sealed under the right H)", "request", ["request"], mode=3,
        dev=DEV3_128, peer="VIN-0001",
        tamper_ctx=lambda ctx: setf("request", b64u(sha256(ctx["r"]))))
    bad("reject-session-id", "session_id is another session's (re-signed)", "session_id",
        ["session_id"], tamper=setf("session_id", "R-another-session"))
    bad("reject-device-id", "device_id is another device's (re-signed)", "device_id",
        ["device_id"], tamper=setf("device_id", "VIN-0002"))
    bad("reject-op-end", "op says end for a key request (re-signed)", "op", ["op"],
        tamper=setf("op", "end"))
    bad("reject-source-b-for-a", "key_source b (an empty payload that opens) answers a request "
        "for a (re-signed)", "key_source", ["ct", "key_source"], key_source="b")
    bad("reject-ct-tag-flipped", "the last byte of ct (the tag) flipped (re-signed)", "aead",
        ["ct"], tamper=lambda f: dict(f, ct=b64u(unb64u(f["ct"])[:-1] +
                                                 bytes([unb64u(f["ct"])[-1] ^ 0x01]))))
    bad("reject-payload-length-c", "source c with key_bits 256 but a 16-byte key (re-signed)",
        "payload_length", ["ct"], source="c", payload=derive("reject-payload-length-c/short", 16))
    bad("reject-payload-b-nonempty", "source b with a 32-byte payload (re-signed)",
        "payload_length", ["ct"], source="b", payload=derive("reject-payload-b-nonempty/p", 32))
    bad("reject-payload-length-a", "source a with a 16-byte SR (re-signed)", "payload_length",
        ["ct"], source="a", payload=derive("reject-payload-length-a/sr16", 16))
    bad("reject-key-bits-192", "key_bits 192 with a 24-byte key, source c (re-signed)",
        "key_bits", ["ct", "key_bits"], source="c",
        payload=derive("reject-key-bits-192/key", 24), tamper=setf("key_bits", 192))

    def off_curve(f):
        e = unb64u(f["epk"])
        y = (int.from_bytes(e[33:], "big") + 1) % P
        f["epk"] = b64u(e[:33] + i2b(y))
        return f

    bad("reject-epk-not-on-curve", "epk is not a point on P-256 (y + 1; re-signed)", "point",
        ["epk"], tamper=off_curve)
    bad("reject-m3-ct-other-key", "mode 3: ct sealed with a K2 made from another device key "
        "as Z3 (re-signed)", "aead", ["ct"], mode=3, dev=DEV3_256, peer="VIN-0001", source="c",
        z3_key=derive("reject-m3-ct-other-key/another device key", 32))

    # end: "ended" false.
    name = "reject-end-not-ended"
    c, ctx = request(name, "end", 1, DEV1, "R-" + name)
    c["description"] = "an end answer with \"ended\":false (signed)"
    valid = end_answer(ctx)
    c["response"] = end_answer(ctx, ended=False)
    assert device_checks(ctx, valid["body"]) == ([], None)
    assert device_checks(ctx, c["response"]["body"])[0] == ["ended"]
    c.update({"expect": "reject", "reason": "ended", "valid_body": valid["body"],
              "differs_in": ["ended"]})
    out.append(c)
    return out


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(here, "protocol-v2.json")
    cases = accept_cases() + reject_cases()
    names = [c["name"] for c in cases]
    assert len(set(names)) == len(names)
    # Every request has its own nonce, ephemeral keys and so its own K1 and
    # K2: no AEAD key is used twice under the zero nonce.
    for field in ("nonce_hex", "e_c_priv_hex", "k1_hex"):
        vals = [c[field] for c in cases if field in c]
        assert len(set(vals)) == len(vals), field
    k2s = [c["response"]["k2_hex"] for c in cases if "k2_hex" in c.get("response", {})]
    assert len(set(k2s)) == len(k2s)
    doc = {
        "suite": SUITE,
        "description": "Test vectors for the qkms device protocol v2 (docs/protocol.md), "
                       "written by tests/vectors/make_vectors_v2.py (its docstring describes "
                       "every field). Fixed keys and randoms; signatures are RFC 6979 "
                       "deterministic ECDSA.",
        "ts": TS,
        "expires_at": EXPIRES,
        "platform": {
            "ca_cert_b64u": b64u(CA_CERT), "ca_priv_hex": i2b(CA_D).hex(),
            "sign_cert_b64u": b64u(SIGN_CERT), "sign_priv_hex": i2b(SIGN_D).hex(),
            "sign_pub_b64u": b64u(enc_point(SIGN_PT)),
            "ka_cert_b64u": b64u(KA_CERT), "ka_priv_hex": i2b(KA_D).hex(),
            "ka_pub_b64u": b64u(enc_point(KA_PT)),
            "pin": PIN, "ka": KA_HEX,
            "other_sign_priv_hex": i2b(OTHER_D).hex(),
            "other_sign_pub_b64u": b64u(enc_point(OTHER_PT)),
        },
        "cases": cases,
    }
    text = json.dumps(doc, indent=1, ensure_ascii=True) + "\n"
    with open(out, "w", encoding="ascii", newline="\n") as f:
        f.write(text)
    print(f"{out}: {len(cases)} cases")


if __name__ == "__main__":
    main()
