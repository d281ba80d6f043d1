"""An independent Python implementation of the qkms device protocol v2
(docs/protocol.md, "qkms device protocol v2: key negotiation in two
messages"), the DEVICE side, plus the few platform-side helpers that tests
need to answer or check a request. Written from docs/protocol.md alone: it
shares no code with the C library (device/), kmsd, or the vector generator
(tests/vectors/make_vectors_v2.py), so the three check each other.

Suite P256-HKDF-SHA256-AES256GCM: ECDSA P-256/SHA-256 signatures as r||s
(64 bytes), ECDH P-256 (Z = x-coordinate, 32 bytes), uncompressed points
(65 bytes), HKDF-SHA-256, AES-256-GCM with a zero 12-byte nonce.

Typical use:

    plat = Platform.from_certificates(requests.get(url + "/v1/platform/certificates").json())
    plat.verify(ca_pem)                               # once, at provisioning
    dev = Device2("VIN-0001", mode=1, private_key=key, certificate=cert_der)
    req = dev.key_request(plat, "S-1", "ENC-0001", key_source="a")   # -> Request2
    r = requests.post(url + req.path, data=req.raw,
                      headers={"Content-Type": "application/json"})
    sk = dev.open_key_response(req, r.content)        # -> SessionKey2 (or ProtocolError)
    end = dev.end_request(plat, "S-1")
    dev.open_end_response(end, requests.post(url + end.path, data=end.raw, ...).content)

API
---
class ProtocolError(Exception)            .reason: one word naming the failed check
                                          ("signature", "signer", "op", "device_id",
                                          "session_id", "request", "key_bits",
                                          "key_source", "point", "aead",
                                          "payload_length", "ended", "v" (the
                                          outer "v" is not 2), "duplicate" (a
                                          member name repeated), "malformed",
                                          "error" for an error answer)
class ErrorAnswer(ProtocolError)          .code, .message: an {"error":{...}} answer

class Platform(sign_cert, ka_cert)        certificates as DER or PEM (bytes or str)
    .sign_cert, .ka_cert                  DER bytes
    .pin, .ka                             hex SHA-256 of the DER (lower case)
    .sign_pub, .ka_pub                    EllipticCurvePublicKey
    .ka_point                             the KA key as a 65-byte point
    Platform.from_certificates(doc, sign_sha256=None, agree_sha256=None)
                                          from GET /v1/platform/certificates: the
                                          "active" "sign" and "agree" entries, or the
                                          ones with the given sha256 (any state)
    Platform.from_pem(sign, ka)           the same as the constructor
    .verify(ca_certs, at=None)            raises ProtocolError unless both certs are
                                          issued by one of ca_certs (PEM chain text,
                                          DER, or a list of those), P-256, in date at
                                          `at` (datetime, default now), and carry
                                          keyUsage digitalSignature / keyAgreement

class Device2(device_id, mode, private_key=None, certificate=None, keys=None, key_index=None)
    mode 1: private_key (EC P-256 private key, PEM/DER bytes or an int scalar)
            and certificate (DER or PEM; its key must be private_key's)
    mode 2: private_key (certificate optional: kmsd uses the one on record)
    mode 3: keys {index: 16- or 32-byte key}, key_index (default: the lowest)
    Device2.from_fill(doc, mode)          a fill document (docs/devices.md): "keys"
                                          for mode 3, "tls" (PEM) for modes 1 and 2
    .key_request(platform, session_id, peer_id, key_source="a", delivered=False,
                 ts=None, nonce=None, e_c=None, cr=None, key_index=None) -> Request2
    .end_request(platform, session_id, ts=None, nonce=None, key_index=None) -> Request2
            ts: int (default now); nonce: 12 bytes; e_c: EC private key, int
            scalar or 32-byte big-endian scalar; cr: 32 bytes (the client random
            CR). Defaults are fresh randoms.
    .open_key_response(req, resp) -> SessionKey2
            resp: the answer as bytes/str (JSON text, duplicate names refused)
            or an already parsed dict. Checks everything docs/protocol.md's "The
            device accepts an answer only if" lists, and that the outer "v" is 2
            and no member name of P (or of the outer object) is repeated; members
            of P the protocol does not name are ignored. On success it forgets
            req's secrets (e_c, CR, Z1, K1), so a request opens once.
    .open_end_response(req, resp) -> True, or for session_id ALL the
            number of sessions ended (an end of every session of the device)

Request2 (dataclass): op, path, mode, device_id, session_id, peer_id, key_source,
    delivered, ts, key_index, pin, ka, body (dict), raw (bytes: the exact outer
    JSON), inner (R), hash (H = SHA-256(N || R)), nonce (N), epk (65 bytes), e_c
    (private key), cr_plain (CR), z1, k1, cr (48 bytes), sig (64 bytes, modes 1
    and 2), ct (mode 3), aad (mode 3: AAD_req), platform
SessionKey2 (dataclass): session_id, key_id, key_bits, expires_at, delivery,
    key_source, key (bytes), payload (bytes), z2, z3, k2, epk_s

Building blocks: b64u(b), b64u_decode(s), sha256(b), hkdf(ikm, salt, info, length),
    ecdh(priv, pub) -> 32 bytes, point_bytes(key) -> 65 bytes, point_key(b) -> pub
    (refuses points off the curve), to_private_key(scalar|bytes|pem),
    scalar_bytes(priv) -> 32 bytes, sig_raw_to_der(raw), sig_der_to_raw(der),
    sign(priv, msg) -> r||s, verify(pub, sig, msg) -> bool, cert_sha256(der),
    cert_public_key(der), canonical(dict) -> compact JSON bytes,
    request_aad(op, device_id, key_index), inner_request(...) -> R,
    request_hash(n, r) -> H = SHA-256(N || R),
    cr_key(z1, epk, ka_point, n) -> K1, seal_cr(...), response_key(z2, z3, h, epk_s)
    -> K2, session_key(source, cr, sr, h, key_id, key_bits), parse_json(bytes)

Platform side (for fakes and tampering tests):
    platform_open_request(body, ka_priv=None, device_pub=None, device_keys=None)
        -> OpenedRequest (verifies the signature / opens the AEAD, decrypts cr)
    platform_respond(sign_priv, signer, *, op, device_id, session_id, request_hash,
                     key_id=None, key_bits=None, expires_at=None, delivery="session",
                     key_source=None, payload=b"", epk=None, device_pub=None,
                     device_key=None, e_s=None, tamper=None, sig_key=None) -> Response2
        builds the answer as the platform would; tamper(dict) may change the
        inner response after ct is computed and before it is signed; sig_key
        signs with another key than sign_priv.
    inner_response(fields: dict) -> P, response_body(P, sig) -> bytes
"""
import base64
import datetime
import hashlib
import hmac
import json
import os
import time
from dataclasses import dataclass, field
from typing import Optional

from cryptography import x509
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (decode_dss_signature,
                                                             encode_dss_signature)
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

SUITE = "P256-HKDF-SHA256-AES256GCM"
CURVE = ec.SECP256R1()
ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
ZERO_NONCE = bytes(12)
REQ_SIG_PREFIX = b"qkms/v2/req\n"
RESP_SIG_PREFIX = b"qkms/v2/resp\n"
CR_INFO = b"qkms/v2/cr"
RESP_INFO = b"qkms/v2/resp"
KEY_INFO = b"qkms/v2/key\n"
# The inner request's fields in the order of docs/protocol.md's table (the
# order the C library writes them in).
INNER_ORDER = ("op", "device_id", "mode", "suite", "session_id", "all", "peer_id", "peer_platform",
               "key_source", "delivery", "ts", "nonce", "pin", "epk", "ka", "cr", "cert")
# The platform as the peer (a device-platform channel key): key_request's
# peer_id PLATFORM sends "peer_platform": true instead of a peer_id.
PLATFORM = None
# end_request's session_id ALL ends every session of the device (a
# power-down): "all": true instead of a session_id.
ALL = object()
# The inner response's fields in the order of docs/protocol.md's example.
KEY_RESPONSE_ORDER = ("op", "device_id", "session_id", "request", "signer", "key_id",
                      "key_bits", "expires_at", "delivery", "key_source", "epk", "ct")
END_RESPONSE_ORDER = ("op", "device_id", "session_id", "all", "request", "signer", "ended",
                      "sessions_ended", "streams_ended")


class ProtocolError(Exception):
    """A refused answer (or a request that cannot be built). reason names the
    check that failed (see the module docstring)."""

    def __init__(self, message, reason="malformed"):
        super().__init__(f"{reason}: {message}")
        self.reason = reason


class ErrorAnswer(ProtocolError):
    """The platform answered with an error object (not signed)."""

    def __init__(self, code, message):
        super().__init__(f"{code}: {message}", "error")
        self.code = code
        self.message = message


# -- encodings -----------------------------------------------------------

def b64u(data: bytes) -> str:
    """RFC 4648 section 5, no padding."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


_B64U_ALPHABET = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def b64u_decode(s: str) -> bytes:
    """Strict: no padding, only the URL-safe alphabet, zero unused bits."""
    if not isinstance(s, str) or len(s) % 4 == 1 or not set(s) <= _B64U_ALPHABET:
        raise ProtocolError("bad base64url")
    raw = base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))
    if b64u(raw) != s:
        raise ProtocolError("non-canonical base64url (non-zero unused bits)")
    return raw


def _no_duplicates(pairs):
    out = {}
    for k, v in pairs:
        if k in out:
            raise ProtocolError(f"member {k!r} given twice", "duplicate")
        out[k] = v
    return out


def parse_json(data) -> dict:
    """One JSON object from bytes or str; a repeated member name (at any
    depth) is refused (reason "duplicate")."""
    if isinstance(data, (bytes, bytearray)):
        try:
            data = bytes(data).decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError("not UTF-8") from None
    try:
        obj = json.loads(data, object_pairs_hook=_no_duplicates)
    except ValueError as e:
        if isinstance(e, ProtocolError):
            raise
        raise ProtocolError(f"not JSON: {e}") from None
    if not isinstance(obj, dict):
        raise ProtocolError("not a JSON object")
    return obj


def canonical(obj: dict) -> bytes:
    """Compact JSON in the dict's order, no spaces (how the C library writes)."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def id_ok(s) -> bool:
    """docs/protocol.md: 1-128 printable ASCII (0x21-0x7E) except / \\ % ? #"""
    return (isinstance(s, str) and 1 <= len(s) <= 128
            and all(0x21 <= ord(c) <= 0x7E and c not in "/\\%?#" for c in s))


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


# -- primitives -------------------------------------------------------------

def hkdf(ikm: bytes, salt: bytes, info: bytes, length: int) -> bytes:
    """HKDF-SHA-256 (RFC 5869)."""
    prk = hmac.new(salt if salt else bytes(32), ikm, hashlib.sha256).digest()
    out, t, i = b"", b"", 1
    while len(out) < length:
        t = hmac.new(prk, t + info + bytes([i]), hashlib.sha256).digest()
        out += t
        i += 1
    return out[:length]


def to_private_key(k) -> ec.EllipticCurvePrivateKey:
    """A P-256 private key from a key object, an int scalar, 32 big-endian
    bytes, or PEM/DER (PKCS#8 or SEC1)."""
    if isinstance(k, ec.EllipticCurvePrivateKey):
        if not isinstance(k.curve, ec.SECP256R1):
            raise ValueError("not a P-256 key")
        return k
    if isinstance(k, int):
        return ec.derive_private_key(k, CURVE)
    if isinstance(k, str):
        k = k.encode()
    if isinstance(k, (bytes, bytearray)):
        k = bytes(k)
        if len(k) == 32:
            return ec.derive_private_key(int.from_bytes(k, "big"), CURVE)
        if k.lstrip().startswith(b"-----"):
            key = serialization.load_pem_private_key(k, None)
        else:
            key = serialization.load_der_private_key(k, None)
        return to_private_key(key)
    raise TypeError(f"cannot make a private key from {type(k).__name__}")


def scalar_bytes(priv: ec.EllipticCurvePrivateKey) -> bytes:
    return priv.private_numbers().private_value.to_bytes(32, "big")


def point_bytes(key) -> bytes:
    """The uncompressed point 0x04||X||Y (65 bytes) of a public or private key."""
    if isinstance(key, ec.EllipticCurvePrivateKey):
        key = key.public_key()
    return key.public_bytes(serialization.Encoding.X962,
                            serialization.PublicFormat.UncompressedPoint)


def point_key(data: bytes) -> ec.EllipticCurvePublicKey:
    """A public key from a 65-byte uncompressed point; a point that is not
    on P-256 (or another encoding) is refused."""
    if not isinstance(data, (bytes, bytearray)) or len(data) != 65 or data[0] != 4:
        raise ProtocolError("not an uncompressed P-256 point", "point")
    try:
        return ec.EllipticCurvePublicKey.from_encoded_point(CURVE, bytes(data))
    except ValueError:
        raise ProtocolError("not a point on P-256", "point") from None


def ecdh(priv: ec.EllipticCurvePrivateKey, pub) -> bytes:
    """ECDH over P-256: the x-coordinate of the shared point, 32 bytes."""
    if isinstance(pub, (bytes, bytearray)):
        pub = point_key(pub)
    return priv.exchange(ec.ECDH(), pub)


def sig_der_to_raw(der: bytes) -> bytes:
    r, s = decode_dss_signature(der)
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def sig_raw_to_der(raw: bytes) -> bytes:
    if len(raw) != 64:
        raise ProtocolError("signature is not 64 bytes", "signature")
    return encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))


def sign(priv: ec.EllipticCurvePrivateKey, msg: bytes) -> bytes:
    """ECDSA P-256 / SHA-256 over msg (randomized), as r||s."""
    return sig_der_to_raw(priv.sign(msg, ec.ECDSA(hashes.SHA256())))


def verify(pub: ec.EllipticCurvePublicKey, sig: bytes, msg: bytes) -> bool:
    if len(sig) != 64:
        return False
    r, s = int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big")
    if not (1 <= r < ORDER and 1 <= s < ORDER):
        return False
    try:
        pub.verify(encode_dss_signature(r, s), msg, ec.ECDSA(hashes.SHA256()))
        return True
    except InvalidSignature:
        return False


def aead_seal(key: bytes, nonce: bytes, aad: bytes, pt: bytes) -> bytes:
    return AESGCM(key).encrypt(nonce, pt, aad)


def aead_open(key: bytes, nonce: bytes, aad: bytes, ct: bytes) -> bytes:
    try:
        return AESGCM(key).decrypt(nonce, ct, aad)
    except InvalidTag:
        raise ProtocolError("the ciphertext does not open", "aead") from None


# -- certificates -------------------------------------------------------------

def _der(cert) -> bytes:
    """DER bytes of a certificate given as DER, PEM (bytes/str) or an x509 object."""
    if isinstance(cert, x509.Certificate):
        return cert.public_bytes(serialization.Encoding.DER)
    if isinstance(cert, str):
        cert = cert.encode()
    if bytes(cert).lstrip().startswith(b"-----"):
        return x509.load_pem_x509_certificate(bytes(cert)).public_bytes(serialization.Encoding.DER)
    x509.load_der_x509_certificate(bytes(cert))  # parses, or raises
    return bytes(cert)


def _pem_chain(text) -> list:
    """DER certificates from a PEM chain (cryptography 38 has no
    load_pem_x509_certificates), from DER bytes, or from a list of either."""
    if isinstance(text, (list, tuple)):
        out = []
        for t in text:
            out += _pem_chain(t)
        return out
    if isinstance(text, x509.Certificate):
        return [_der(text)]
    if isinstance(text, (bytes, bytearray)) and not bytes(text).lstrip().startswith(b"-----"):
        return [_der(bytes(text))]
    if isinstance(text, (bytes, bytearray)):
        text = bytes(text).decode("ascii")
    end = "-----END CERTIFICATE-----"
    out = []
    for part in text.split(end)[:-1]:
        i = part.find("-----BEGIN CERTIFICATE-----")
        if i >= 0:
            out.append(_der(part[i:] + end + "\n"))
    return out


def cert_sha256(der: bytes) -> str:
    return hashlib.sha256(der).hexdigest()


def cert_public_key(der: bytes) -> ec.EllipticCurvePublicKey:
    pub = x509.load_der_x509_certificate(der).public_key()
    if not isinstance(pub, ec.EllipticCurvePublicKey) or not isinstance(pub.curve, ec.SECP256R1):
        raise ProtocolError("the certificate's key is not EC P-256")
    return pub


class Platform:
    """The platform's two pinned certificates (docs/protocol.md, "The
    platform's keys"): signing (pin) and key agreement (ka)."""

    def __init__(self, sign_cert, ka_cert):
        self.sign_cert = _der(sign_cert)
        self.ka_cert = _der(ka_cert)
        self.pin = cert_sha256(self.sign_cert)
        self.ka = cert_sha256(self.ka_cert)
        self.sign_pub = cert_public_key(self.sign_cert)
        self.ka_pub = cert_public_key(self.ka_cert)
        self.ka_point = point_bytes(self.ka_pub)

    @classmethod
    def from_pem(cls, sign, ka) -> "Platform":
        return cls(sign, ka)

    @classmethod
    def from_certificates(cls, doc, sign_sha256=None, agree_sha256=None) -> "Platform":
        """From the JSON of GET /v1/platform/certificates (a dict, or its
        text): the active "sign" and "agree" certificates, or those whose
        sha256 is given."""
        if not isinstance(doc, dict):
            doc = parse_json(doc)

        def pick(purpose, want):
            found = [c for c in doc.get("certificates", []) if c.get("purpose") == purpose
                     and (c.get("sha256") == want if want else c.get("state") == "active")]
            if len(found) != 1:
                raise ProtocolError(f"{len(found)} {purpose!r} certificates match")
            der = _der(found[0]["pem"])
            if "sha256" in found[0] and cert_sha256(der) != found[0]["sha256"]:
                raise ProtocolError(f"the {purpose!r} certificate's sha256 is not its DER's")
            return der

        return cls(pick("sign", sign_sha256), pick("agree", agree_sha256))

    def verify(self, ca_certs, at=None):
        """Checks both certificates against the platform CA (as a device
        does once, at provisioning); raises ProtocolError."""
        cas = [x509.load_der_x509_certificate(d) for d in _pem_chain(ca_certs)]
        at = at or datetime.datetime.utcnow()
        for der, usage in ((self.sign_cert, "digital_signature"), (self.ka_cert, "key_agreement")):
            cert = x509.load_der_x509_certificate(der)
            ok = False
            for ca in cas:
                if ca.subject != cert.issuer:
                    continue
                try:
                    ca.public_key().verify(cert.signature, cert.tbs_certificate_bytes,
                                           ec.ECDSA(cert.signature_hash_algorithm))
                    ok = True
                except (InvalidSignature, TypeError, AttributeError):
                    pass
            if not ok:
                raise ProtocolError(f"{cert.subject.rfc4514_string()} is not issued by the CA")
            if not cert.not_valid_before <= at <= cert.not_valid_after:
                raise ProtocolError(f"{cert.subject.rfc4514_string()} is not in date")
            try:
                ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
            except x509.ExtensionNotFound:
                raise ProtocolError("no keyUsage") from None
            if not getattr(ku, usage):
                raise ProtocolError(f"{cert.subject.rfc4514_string()}: keyUsage lacks {usage}")
            # The platform's certificates carry no extended key usage; one
            # that does is a firmware or data-signing certificate, whose key
            # signs what others ask.
            try:
                cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage)
                raise ProtocolError(f"{cert.subject.rfc4514_string()}: an extended key usage "
                                    "(a firmware or data-signing certificate)")
            except x509.ExtensionNotFound:
                pass


# -- the protocol's computations -------------------------------------------------

def request_aad(op: str, device_id: str, key_index: int) -> bytes:
    """Mode 3: "qkms/v2/req\\n" op "\\n" device_id "\\n" key_index."""
    return f"qkms/v2/req\n{op}\n{device_id}\n{key_index}".encode("ascii")


def request_hash(n: bytes, r: bytes) -> bytes:
    """H = SHA-256(N || R): the request's 12 raw nonce bytes (the inner
    nonce in modes 1 and 2, the outer one in mode 3), then R. The salt of
    K2 and of the a/b session keys, and the answer's "request"."""
    if len(n) != 12:
        raise ValueError("the nonce is 12 bytes")
    return sha256(bytes(n) + bytes(r))


def cr_key(z1: bytes, epk: bytes, ka_point: bytes, n: bytes) -> bytes:
    """K1 = HKDF(Z1, salt = epk || KA, info = "qkms/v2/cr" || N, 32)."""
    return hkdf(z1, epk + ka_point, CR_INFO + n, 32)


def seal_cr(k1: bytes, device_id: str, cr_plain: bytes) -> bytes:
    """cr = AES-256-GCM(K1, nonce 0, aad = device_id, CR): 48 bytes."""
    return aead_seal(k1, ZERO_NONCE, device_id.encode("ascii"), cr_plain)


def response_key(z2: bytes, z3: bytes, h: bytes, epk_s: bytes) -> bytes:
    """K2 = HKDF(Z2 || Z3, salt = H, info = "qkms/v2/resp" || epk_s, 32)."""
    return hkdf(z2 + z3, h, RESP_INFO + epk_s, 32)


def session_key(key_source: str, cr_plain: bytes, sr: Optional[bytes], h: bytes, key_id: str,
                key_bits: int) -> bytes:
    """Sources a and b: HKDF(CR [|| SR], salt = H, info = "qkms/v2/key\\n" || key_id,
    key_bits/8)."""
    ikm = cr_plain + (sr if key_source == "a" else b"")
    return hkdf(ikm, h, KEY_INFO + key_id.encode("ascii"), key_bits // 8)


def payload_length(key_source: str, key_bits: int) -> int:
    return {"a": 32, "b": 0, "c": key_bits // 8}[key_source]


def inner_request(op, device_id, mode, session_id, ts, pin, peer_id=None, key_source=None,
                  delivered=False, nonce=None, epk=None, ka=None, cr=None, cert=None) -> bytes:
    """R, canonical: the table's fields in its order, those that apply,
    compact. nonce/epk/cr/cert are bytes (encoded b64u here)."""
    f = {"op": op, "device_id": device_id, "mode": mode, "suite": SUITE}
    if session_id is ALL:  # end: every session of the device
        f["all"] = True
    else:
        f["session_id"] = session_id
    if op == "key":
        if peer_id is PLATFORM:
            f["peer_platform"] = True
        else:
            f["peer_id"] = peer_id
        f["key_source"] = key_source
        if delivered:
            f["delivery"] = "delivered"
    f["ts"] = ts
    if mode in (1, 2):
        f["nonce"] = b64u(nonce)
    f["pin"] = pin
    if op == "key":
        f["epk"] = b64u(epk)
        if key_source in ("a", "b"):
            f["ka"] = ka
            f["cr"] = b64u(cr)
    if mode == 1:
        f["cert"] = b64u(cert)
    assert list(f) == [k for k in INNER_ORDER if k in f]
    return canonical(f)


def inner_response(fields: dict) -> bytes:
    """P in the example's order (fields not in it follow, in the dict's order)."""
    order = KEY_RESPONSE_ORDER if fields.get("op") == "key" else END_RESPONSE_ORDER
    out = {k: fields[k] for k in order if k in fields}
    out.update({k: v for k, v in fields.items() if k not in out})
    return canonical(out)


def response_body(p: bytes, sig: bytes) -> bytes:
    return canonical({"v": 2, "resp": b64u(p), "sig": b64u(sig)})


# -- the device -------------------------------------------------------------------

@dataclass
class Request2:
    op: str
    path: str
    mode: int
    device_id: str
    session_id: str
    ts: int
    pin: str
    body: dict
    raw: bytes
    inner: bytes          # R
    hash: bytes           # H = SHA-256(N || R)
    nonce: bytes          # N
    platform: "Platform"
    peer_id: Optional[str] = None
    key_source: Optional[str] = None
    delivered: bool = False
    key_index: Optional[int] = None
    ka: Optional[str] = None
    epk: Optional[bytes] = None
    e_c: Optional[ec.EllipticCurvePrivateKey] = None
    cr_plain: Optional[bytes] = None   # CR
    z1: Optional[bytes] = None
    k1: Optional[bytes] = None
    cr: Optional[bytes] = None         # the encrypted CR (48 bytes)
    sig: Optional[bytes] = None        # modes 1, 2
    ct: Optional[bytes] = None         # mode 3
    aad: Optional[bytes] = None        # mode 3
    opened: bool = False

    def forget(self):
        """docs/protocol.md: the device forgets e_c, CR, Z1, K1 (and Z2, K2,
        which open_key_response never stores) once it has its key."""
        self.e_c = self.cr_plain = self.z1 = self.k1 = None
        self.opened = True


@dataclass
class SessionKey2:
    session_id: str
    key_id: str
    key_bits: int
    expires_at: int
    delivery: str
    key_source: str
    key: bytes
    payload: bytes = field(repr=False, default=b"")
    epk_s: bytes = field(repr=False, default=b"")
    z2: bytes = field(repr=False, default=b"")
    z3: bytes = field(repr=False, default=b"")
    k2: bytes = field(repr=False, default=b"")


def _is_int(x):
    return type(x) is int


class Device2:
    def __init__(self, device_id, mode, private_key=None, certificate=None, keys=None,
                 key_index=None):
        if not id_ok(device_id):
            raise ValueError(f"bad device ID {device_id!r}")
        if mode not in (1, 2, 3):
            raise ValueError("mode is 1, 2 or 3")
        self.device_id = device_id
        self.mode = mode
        self.private_key = None
        self.certificate = None
        self.keys = {}
        self.key_index = None
        if mode in (1, 2):
            if private_key is None:
                raise ValueError("modes 1 and 2 need the device's private key")
            self.private_key = to_private_key(private_key)
            if certificate is not None:
                self.certificate = _der(certificate)
                if point_bytes(cert_public_key(self.certificate)) != point_bytes(self.private_key):
                    raise ValueError("the certificate is not for the private key")
            elif mode == 1:
                raise ValueError("mode 1 needs the device's certificate")
        else:
            if not keys:
                raise ValueError("mode 3 needs the device's pre-filled keys")
            self.keys = {int(i): bytes(k) for i, k in keys.items()}
            for i, k in self.keys.items():
                if not 0 <= i <= 255 or len(k) not in (16, 32):
                    raise ValueError(f"bad device key {i}")
            self.key_index = min(self.keys) if key_index is None else key_index
            if self.key_index not in self.keys:
                raise ValueError(f"no device key {self.key_index}")

    @classmethod
    def from_fill(cls, doc, mode) -> "Device2":
        """A fill document (docs/devices.md): its keys (mode 3) or its TLS
        identity's certificate and private key (modes 1, 2)."""
        if mode == 3:
            return cls(doc["device_id"], 3,
                       keys={k["index"]: bytes.fromhex(k["key"]) for k in doc["keys"]})
        tls = doc["tls"] if "tls" in doc else doc
        return cls(doc["device_id"], mode, private_key=tls["private_key"],
                   certificate=tls["certificate"])

    # -- requests ----------------------------------------------------------
    def _outer(self, op, r, nonce, key_index):
        body = {"v": 2, "suite": SUITE, "mode": self.mode, "device_id": self.device_id}
        sig = ct = aad = None
        if self.mode in (1, 2):
            sig = sign(self.private_key, REQ_SIG_PREFIX + r)
            body["req"] = b64u(r)
            body["sig"] = b64u(sig)
        else:
            aad = request_aad(op, self.device_id, key_index)
            ct = aead_seal(self.keys[key_index], nonce, aad, r)
            body["key_index"] = key_index
            body["nonce"] = b64u(nonce)
            body["ct"] = b64u(ct)
        return body, canonical(body), sig, ct, aad

    def _common(self, platform, session_id, ts, nonce, key_index):
        if session_id is not ALL and not id_ok(session_id):
            raise ValueError(f"bad session ID {session_id!r}")
        ts = int(time.time()) if ts is None else ts
        nonce = os.urandom(12) if nonce is None else bytes(nonce)
        if len(nonce) != 12:
            raise ValueError("the nonce is 12 bytes")
        if self.mode == 3:
            key_index = self.key_index if key_index is None else key_index
            if key_index not in self.keys:
                raise ValueError(f"no device key {key_index}")
        else:
            key_index = None
        return ts, nonce, key_index

    def key_request(self, platform: Platform, session_id, peer_id, key_source="a",
                    delivered=False, ts=None, nonce=None, e_c=None, cr=None,
                    key_index=None) -> Request2:
        if key_source not in ("a", "b", "c"):
            raise ValueError("key_source is a, b or c")
        if peer_id is not PLATFORM and (not id_ok(peer_id) or peer_id == self.device_id):
            raise ValueError(f"bad peer ID {peer_id!r}")
        ts, nonce, key_index = self._common(platform, session_id, ts, nonce, key_index)
        e_c = ec.generate_private_key(CURVE) if e_c is None else to_private_key(e_c)
        epk = point_bytes(e_c)
        cr_plain = z1 = k1 = cr_ct = ka = None
        if key_source in ("a", "b"):
            cr_plain = os.urandom(32) if cr is None else bytes(cr)
            if len(cr_plain) != 32:
                raise ValueError("CR is 32 bytes")
            ka = platform.ka
            z1 = ecdh(e_c, platform.ka_pub)
            k1 = cr_key(z1, epk, platform.ka_point, nonce)
            cr_ct = seal_cr(k1, self.device_id, cr_plain)
        r = inner_request("key", self.device_id, self.mode, session_id, ts, platform.pin,
                          peer_id=peer_id, key_source=key_source, delivered=delivered,
                          nonce=nonce, epk=epk, ka=ka, cr=cr_ct, cert=self.certificate)
        body, raw, sig, ct, aad = self._outer("key", r, nonce, key_index)
        return Request2("key", "/v2/sessions/key", self.mode, self.device_id, session_id, ts,
                        platform.pin, body, raw, r, request_hash(nonce, r), nonce, platform, peer_id=peer_id,
                        key_source=key_source, delivered=delivered, key_index=key_index, ka=ka,
                        epk=epk, e_c=e_c, cr_plain=cr_plain, z1=z1, k1=k1, cr=cr_ct, sig=sig,
                        ct=ct, aad=aad)

    def end_request(self, platform: Platform, session_id, ts=None, nonce=None,
                    key_index=None) -> Request2:
        ts, nonce, key_index = self._common(platform, session_id, ts, nonce, key_index)
        r = inner_request("end", self.device_id, self.mode, session_id, ts, platform.pin,
                          nonce=nonce, cert=self.certificate)
        body, raw, sig, ct, aad = self._outer("end", r, nonce, key_index)
        return Request2("end", "/v2/sessions/end", self.mode, self.device_id, session_id, ts,
                        platform.pin, body, raw, r, request_hash(nonce, r), nonce, platform,
                        key_index=key_index, sig=sig, ct=ct, aad=aad)

    # -- responses ----------------------------------------------------------
    def _verified_inner(self, req: Request2, resp) -> dict:
        """The outer answer checked and its signature verified; returns P
        parsed, after the checks common to both ops."""
        if not isinstance(resp, dict):
            resp = parse_json(resp)
        if "error" in resp and isinstance(resp["error"], dict):
            raise ErrorAnswer(resp["error"].get("code"), resp["error"].get("message"))
        if not _is_int(resp.get("v")) or resp["v"] != 2:
            raise ProtocolError("v is not 2", "v")
        if not isinstance(resp.get("resp"), str) or not isinstance(resp.get("sig"), str):
            raise ProtocolError("resp or sig missing")
        p = b64u_decode(resp["resp"])
        try:
            sig = b64u_decode(resp["sig"])
        except ProtocolError:
            raise ProtocolError("sig is not base64url", "signature") from None
        if not verify(req.platform.sign_pub, sig, RESP_SIG_PREFIX + p):
            raise ProtocolError("the signature does not verify under the pinned certificate",
                                "signature")
        # A repeated member name is refused ("duplicate"); members the
        # protocol does not name are ignored (only the named ones are read).
        inner = parse_json(p)
        if inner.get("signer") != req.pin:
            raise ProtocolError("signer is not the pinned signing certificate", "signer")
        if inner.get("op") != req.op:
            raise ProtocolError("op is not the request's", "op")
        if inner.get("device_id") != self.device_id:
            raise ProtocolError("device_id is not the request's", "device_id")
        if req.session_id is ALL:
            if "session_id" in inner or inner.get("all") is not True:
                raise ProtocolError("not an answer to an end of all sessions", "session_id")
        elif inner.get("session_id") != req.session_id or "all" in inner:
            raise ProtocolError("session_id is not the request's", "session_id")
        try:
            h = b64u_decode(inner.get("request"))
        except ProtocolError:
            h = None
        if h != req.hash:
            raise ProtocolError("request is not this request's hash", "request")
        return inner

    def open_key_response(self, req: Request2, resp) -> SessionKey2:
        if req.op != "key":
            raise ValueError("not a key request")
        if req.opened:
            raise ProtocolError("this request's secrets are forgotten: it was answered already")
        inner = self._verified_inner(req, resp)
        bits = inner.get("key_bits")
        if not _is_int(bits) or bits not in (128, 256):
            raise ProtocolError("key_bits is not 128 or 256", "key_bits")
        key_id, expires_at, delivery = (inner.get("key_id"), inner.get("expires_at"),
                                        inner.get("delivery"))
        if not isinstance(key_id, str) or not key_id or not key_id.isascii():
            raise ProtocolError("bad key_id")
        if not _is_int(expires_at) or delivery not in ("session", "delivered"):
            raise ProtocolError("bad expires_at or delivery")
        source = inner.get("key_source")
        if source not in (req.key_source, "c"):
            raise ProtocolError(f"key_source {source!r} answers a request for "
                                f"{req.key_source!r}", "key_source")
        try:
            epk_s = b64u_decode(inner.get("epk"))
        except ProtocolError:
            raise ProtocolError("epk is not base64url", "point") from None
        epk_s_key = point_key(epk_s)
        ct = b64u_decode(inner.get("ct"))
        z2 = ecdh(req.e_c, epk_s_key)
        z3 = ecdh(self.private_key, epk_s_key) if self.mode in (1, 2) else self.keys[req.key_index]
        k2 = response_key(z2, z3, req.hash, epk_s)
        payload = aead_open(k2, ZERO_NONCE, key_id.encode("ascii"), ct)
        if len(payload) != payload_length(source, bits):
            raise ProtocolError(f"a {len(payload)}-byte payload for key_source {source!r}",
                                "payload_length")
        if source == "c":
            key = payload
        else:
            key = session_key(source, req.cr_plain, payload, req.hash, key_id, bits)
        req.forget()
        return SessionKey2(inner["session_id"], key_id, bits, expires_at, delivery, source, key,
                           payload, epk_s, z2, z3, k2)

    def open_end_response(self, req: Request2, resp) -> bool:
        if req.op != "end":
            raise ValueError("not an end request")
        inner = self._verified_inner(req, resp)
        if inner.get("ended") is not True:
            raise ProtocolError("ended is not true", "ended")
        if req.session_id is ALL:
            n, m = inner.get("sessions_ended"), inner.get("streams_ended")
            if not _is_int(n) or n < 0 or not _is_int(m) or m < 0:
                raise ProtocolError("sessions_ended or streams_ended is not a count", "ended")
            return n
        return True


# -- the platform's side (fakes and tampering tests) -----------------------------

@dataclass
class OpenedRequest:
    mode: int
    device_id: str
    op: str
    inner: dict
    r: bytes
    h: bytes               # H = SHA-256(N || R)
    n: bytes
    key_index: Optional[int] = None
    epk: Optional[bytes] = None
    cr_plain: Optional[bytes] = None
    cert: Optional[bytes] = None


def platform_open_request(body, ka_priv=None, device_pub=None, device_keys=None) -> OpenedRequest:
    """What kmsd does to a request, minus the database: checks the envelope,
    verifies the signature (mode 1: under the key of the certificate inside
    R, not chain-checked here; mode 2: under device_pub) or opens the AEAD
    (mode 3: device_keys {index: key}), and decrypts cr with ka_priv."""
    env = body if isinstance(body, dict) else parse_json(body)
    mode = env.get("mode")
    want = (["v", "suite", "mode", "device_id", "req", "sig"] if mode in (1, 2) else
            ["v", "suite", "mode", "device_id", "key_index", "nonce", "ct"])
    if (mode not in (1, 2, 3) or sorted(env) != sorted(want) or env["v"] != 2
            or env["suite"] != SUITE):
        raise ProtocolError("malformed_request")
    if mode in (1, 2):
        r = b64u_decode(env["req"])
        inner = parse_json(r)
        cert = b64u_decode(inner["cert"]) if mode == 1 else None
        pub = cert_public_key(cert) if mode == 1 else device_pub
        if not verify(pub, b64u_decode(env["sig"]), REQ_SIG_PREFIX + r):
            raise ProtocolError("unauthenticated", "signature")
        n = b64u_decode(inner["nonce"])
        key_index = None
    else:
        n = b64u_decode(env["nonce"])
        key_index = env["key_index"]
        op = None
        for candidate in ("key", "end"):
            try:
                r = aead_open(device_keys[key_index], n,
                              request_aad(candidate, env["device_id"], key_index),
                              b64u_decode(env["ct"]))
                op = candidate
                break
            except ProtocolError:
                continue
        if op is None:
            raise ProtocolError("unauthenticated", "aead")
        inner = parse_json(r)
        cert = None
    if (inner.get("device_id"), inner.get("mode"), inner.get("suite")) != (
            env["device_id"], mode, SUITE):
        raise ProtocolError("malformed_request")
    epk = b64u_decode(inner["epk"]) if "epk" in inner else None
    if epk is not None:
        point_key(epk)
    cr_plain = None
    if "cr" in inner and ka_priv is not None:
        z1 = ecdh(ka_priv, epk)
        k1 = cr_key(z1, epk, point_bytes(ka_priv), n)
        cr_plain = aead_open(k1, ZERO_NONCE, env["device_id"].encode("ascii"),
                             b64u_decode(inner["cr"]))
    return OpenedRequest(mode, env["device_id"], inner["op"], inner, r, request_hash(n, r), n,
                         key_index, epk, cr_plain, cert)


@dataclass
class Response2:
    inner: bytes           # P
    fields: dict           # P parsed (what was signed)
    sig: bytes
    body: dict
    raw: bytes
    e_s: Optional[ec.EllipticCurvePrivateKey] = None
    epk_s: Optional[bytes] = None
    z2: Optional[bytes] = None
    z3: Optional[bytes] = None
    k2: Optional[bytes] = None
    ct: Optional[bytes] = None
    payload: Optional[bytes] = None


def platform_respond(sign_priv, signer, *, op, device_id, session_id, request_hash,
                     key_id=None, key_bits=None, expires_at=None, delivery="session",
                     key_source=None, payload=b"", epk=None, device_pub=None, device_key=None,
                     e_s=None, tamper=None, sig_key=None, sessions_ended=0,
                     streams_ended=0) -> Response2:
    """The platform's answer. For op "key": epk is the request's ephemeral
    point (65 bytes), device_pub the device certificate's key (modes 1, 2)
    or device_key the pre-filled key of key_index (mode 3), payload the
    session key (c), SR (a) or b"" (b). tamper(fields) -> fields changes the
    inner response after ct is computed, before signing; sig_key signs with
    another key."""
    fields = {"op": op, "device_id": device_id}
    if session_id is ALL:  # an end of every session: "all" and the counts
        fields["all"] = True
    else:
        fields["session_id"] = session_id
    fields.update({"request": b64u(request_hash), "signer": signer})
    epk_s = z2 = z3 = k2 = ct = None
    if op == "key":
        e_s = ec.generate_private_key(CURVE) if e_s is None else to_private_key(e_s)
        epk_s = point_bytes(e_s)
        z2 = ecdh(e_s, epk)
        if device_key is not None:
            z3 = bytes(device_key)
        else:
            z3 = ecdh(e_s, device_pub if not isinstance(device_pub, (bytes, bytearray))
                      else point_key(device_pub))
        k2 = response_key(z2, z3, request_hash, epk_s)
        ct = aead_seal(k2, ZERO_NONCE, key_id.encode("ascii"), payload)
        fields.update({"key_id": key_id, "key_bits": key_bits, "expires_at": expires_at,
                       "delivery": delivery, "key_source": key_source, "epk": b64u(epk_s),
                       "ct": b64u(ct)})
    else:
        fields["ended"] = True
        if session_id is ALL:
            fields.update({"sessions_ended": sessions_ended, "streams_ended": streams_ended})
    if tamper is not None:
        fields = tamper(dict(fields))
    p = inner_response(fields)
    sig = sign(to_private_key(sig_key if sig_key is not None else sign_priv), RESP_SIG_PREFIX + p)
    raw = response_body(p, sig)
    return Response2(p, fields, sig, json.loads(raw), raw, e_s, epk_s, z2, z3, k2, ct, payload)
