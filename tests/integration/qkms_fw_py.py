"""Firmware packages (docs/firmware.md) in Python: the second implementation
beside device/qkms_fw.c, written from the doc. It builds packages (the tests'
stand-in for the platform's signing service, and the vectors' generator)
and opens them with the device's checks in the doc's order.

    pkg = build(image, signer_key, signer_cert_der, product="meter-g4", version="2.7.1",
                counter=42, targets={"groups": ["plant-7"], "devices": []},
                recipients=[Group("plant-7", key_id, key)], not_before=0)
    image, manifest = open_package(pkg, Policy(product="meter-g4", counter=41,
                                                certs=[signer_cert_der], groups=[...]))

Errors raise FwError whose .code is the doc's name.
"""
import dataclasses
import datetime
import hashlib
import hmac
import json
import os
import re
import struct
import uuid

from cryptography import x509
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

MAGIC = b"QKMSFW01"
VERSION = 1
SUITE = 1
FIXED_LEN = 40
RECIPIENT_LEN = 80
KIND_GROUP, KIND_DEVICE = 1, 2
TAG_LEN = 16
CHUNK_MIN, CHUNK_MAX = 1024, 1 << 20
MANIFEST_MAX = 65536
SIG_MAX = 72
BODY_MAX = 1 << 40
COUNTER_MAX = (1 << 53) - 1
AAD_LABEL = b"qkms/fw/v1\x00"
KEK_INFO = b"qkms/fw/kek/v1\x00"
RECIPIENT_LABEL = b"qkms/fw/recipient/v1\x00"
FIELDS = ["format", "product", "version", "counter", "image_size", "image_sha256", "targets",
          "not_before", "package_id", "signer"]


class FwError(Exception):
    def __init__(self, code, message):
        super().__init__(f"{code}: {message}")
        self.code = code


@dataclasses.dataclass
class Group:
    name: str
    key_id: bytes   # 16
    key: bytes      # 32


@dataclasses.dataclass
class DeviceKey:
    device_id: str
    index: int
    key: bytes      # 16 or 32


@dataclasses.dataclass
class Policy:
    product: str
    counter: int = 0
    now: int = -1                   # < 0: no clock
    certs: list = dataclasses.field(default_factory=list)   # DER
    device_id: str = None
    device_keys: dict = dataclasses.field(default_factory=dict)  # index -> key
    groups: list = dataclasses.field(default_factory=list)      # Group


def device_kek_id(key, package_id):
    return hmac.new(key, RECIPIENT_LABEL + package_id, hashlib.sha256).digest()[:16]


def device_kek(key, package_id, device_id):
    return HKDF(hashes.SHA256(), 32, package_id, KEK_INFO + device_id.encode()).derive(key)


def manifest_bytes(m):
    """The manifest's bytes: the doc's key order, no spaces."""
    return json.dumps({k: m[k] for k in FIELDS}, separators=(",", ":"),
                      ensure_ascii=False).encode()


def _nonce(i, last):
    return bytes([1 if last else 0, 0, 0, 0]) + struct.pack(">Q", i)


def build(image, signer_key, signer_cert_der, *, product, version, counter, targets, recipients,
          not_before=0, chunk_size=65536, package_id=None, content_key=None, rng=os.urandom,
          manifest_override=None, signature_override=None):
    """A package for recipients (Group or DeviceKey entries). The *_override
    arguments let the tests build packages a correct signer never would."""
    package_id = package_id or rng(16)
    k = content_key or rng(32)
    m = {"format": "qkms-fw-manifest/1", "product": product, "version": version,
         "counter": counter, "image_size": len(image),
         "image_sha256": hashlib.sha256(image).hexdigest(), "targets": targets,
         "not_before": not_before, "package_id": str(uuid.UUID(bytes=package_id)),
         "signer": hashlib.sha256(signer_cert_der).hexdigest()}
    mb = manifest_override if manifest_override is not None else manifest_bytes(m)
    sig = signature_override if signature_override is not None else \
        signer_key.sign(mb, ec.ECDSA(hashes.SHA256()))
    body = struct.pack(">I", len(mb)) + mb + struct.pack(">H", len(sig)) + sig + image
    fixed = MAGIC + bytes([VERSION, SUITE]) + struct.pack(">HI", len(recipients), chunk_size) + \
        package_id + struct.pack(">Q", len(body))
    entries = b""
    for r in recipients:
        if isinstance(r, Group):
            kind, kek_id, kek = KIND_GROUP, r.key_id, r.key
        else:
            kind, kek_id = KIND_DEVICE, device_kek_id(r.key, package_id)
            kek = device_kek(r.key, package_id, r.device_id)
        nonce = rng(12)
        entries += bytes([kind, 0, 0, 0]) + kek_id + nonce + \
            AESGCM(kek).encrypt(nonce, k, fixed + bytes([kind]) + kek_id)
    header = fixed + entries
    aad = AAD_LABEL + hashlib.sha256(header).digest()
    chunks = [body[i:i + chunk_size] for i in range(0, len(body), chunk_size)]
    g = AESGCM(k)
    out = [header]
    for i, c in enumerate(chunks):
        out.append(g.encrypt(_nonce(i, i == len(chunks) - 1), c, aad))
    return b"".join(out)


def open_package(pkg, policy, parts=False):
    """(image, manifest dict), or with parts=True also (manifest bytes,
    signature); checks in the doc's order."""
    pkg = bytes(pkg)
    if len(pkg) < FIXED_LEN:
        raise FwError("format", "shorter than a header")
    fixed = pkg[:FIXED_LEN]
    if fixed[:8] != MAGIC or fixed[8] != VERSION or fixed[9] != SUITE:
        raise FwError("format", "magic, version or suite")
    n, chunk_size = struct.unpack(">HI", fixed[10:16])
    package_id = fixed[16:32]
    (body_len,) = struct.unpack(">Q", fixed[32:40])
    if not (n >= 1 and CHUNK_MIN <= chunk_size <= CHUNK_MAX and 1 <= body_len <= BODY_MAX):
        raise FwError("format", "recipients, chunk size or body length")
    hlen = FIXED_LEN + RECIPIENT_LEN * n
    nchunks = -(-body_len // chunk_size)
    expect = hlen + body_len + TAG_LEN * nchunks
    if len(pkg) > expect:   # the whole package is at hand: known at once
        raise FwError("format", "bytes after the last chunk")
    if len(pkg) < hlen:
        raise FwError("format", "the package ends in its header")
    k, kind, group = None, None, None
    for e in range(n):
        ent = pkg[FIXED_LEN + RECIPIENT_LEN * e:FIXED_LEN + RECIPIENT_LEN * (e + 1)]
        if ent[1:4] != b"\0\0\0":
            raise FwError("format", "a recipient's reserved bytes")
        if k is not None or ent[0] not in (KIND_GROUP, KIND_DEVICE):
            continue
        kek_id, nonce, ct = ent[4:20], ent[20:32], ent[32:80]
        aad = fixed + ent[0:1] + kek_id
        cands = []
        if ent[0] == KIND_GROUP:
            cands = [(g.key, g.name) for g in policy.groups if g.key_id == kek_id]
        elif policy.device_id:
            cands = [(device_kek(key, package_id, policy.device_id), None)
                     for idx, key in sorted(policy.device_keys.items())
                     if hmac.compare_digest(device_kek_id(key, package_id), kek_id)]
        for kek, gname in cands[:1]:
            try:
                k = AESGCM(kek).decrypt(nonce, ct, aad)
            except InvalidTag:
                raise FwError("not_a_target", "this device's recipient entry does not open") from None
            kind, group = ent[0], gname
    if k is None:
        raise FwError("not_a_target", "no recipient entry for this device or its groups")
    aad = AAD_LABEL + hashlib.sha256(pkg[:hlen]).digest()
    g = AESGCM(k)
    body = bytearray()
    pos = hlen
    for i in range(nchunks):
        clen = min(chunk_size, body_len - i * chunk_size) + TAG_LEN
        if pos + clen > len(pkg):
            raise FwError("auth", "the package ends before its last chunk")
        try:
            body += g.decrypt(_nonce(i, i == nchunks - 1), pkg[pos:pos + clen], aad)
        except InvalidTag:
            raise FwError("auth", f"chunk {i} does not authenticate") from None
        pos += clen
    if len(pkg) != expect:
        raise FwError("format", "bytes after the last chunk")
    body = bytes(body)
    if len(body) < 4:
        raise FwError("manifest", "length out of range")
    (ml,) = struct.unpack(">I", body[:4])
    if not 2 <= ml <= MANIFEST_MAX or len(body) < 4 + ml + 2:
        raise FwError("manifest", "length out of range")
    mb = body[4:4 + ml]
    (sl,) = struct.unpack(">H", body[4 + ml:6 + ml])
    if not 8 <= sl <= SIG_MAX:
        raise FwError("manifest", "signature length out of range")
    sig = body[6 + ml:6 + ml + sl]
    image = body[6 + ml + sl:]
    try:
        m = json.loads(mb.decode("utf-8"), object_pairs_hook=_no_dups)  # strict UTF-8, no BOM
        _utf8_strings(m)   # no lone surrogate escapes
        ok = (isinstance(m, dict) and sorted(m) == sorted(FIELDS)
              and m["format"] == "qkms-fw-manifest/1"
              and isinstance(m["product"], str) and 1 <= len(m["product"].encode()) <= 64
              and isinstance(m["version"], str) and 1 <= len(m["version"].encode()) <= 64
              and type(m["counter"]) is int and 1 <= m["counter"] <= COUNTER_MAX
              and type(m["image_size"]) is int and m["image_size"] >= 0
              and type(m["not_before"]) is int
              and isinstance(m["targets"], dict) and sorted(m["targets"]) == ["devices", "groups"]
              and all(isinstance(m["targets"][x], list) for x in ("devices", "groups"))
              and len(m["targets"]["devices"]) + len(m["targets"]["groups"]) > 0
              and all(isinstance(m[x], str) and re.fullmatch("[0-9a-f]{64}", m[x])
                      for x in ("image_sha256", "signer")))
    except (ValueError, KeyError, TypeError, UnicodeError):
        ok = False
    if not ok:
        raise FwError("manifest", "not a manifest of format qkms-fw-manifest/1")
    if m["package_id"] != str(uuid.UUID(bytes=package_id)) or \
            body_len != 4 + ml + 2 + sl + m["image_size"]:
        raise FwError("manifest", "its package_id or image_size does not match the package")
    der = next((c for c in policy.certs if hashlib.sha256(c).hexdigest() == m["signer"]), None)
    if der is None:
        raise FwError("signature", "the signer is not a pinned certificate")
    cert = x509.load_der_x509_certificate(der)
    nb = m["not_before"]
    utc = datetime.timezone.utc
    if not isinstance(cert.public_key(), ec.EllipticCurvePublicKey) or not (
            cert.not_valid_before.replace(tzinfo=utc).timestamp() <= nb
            <= cert.not_valid_after.replace(tzinfo=utc).timestamp()):
        raise FwError("signature", "the signer's certificate is unusable or not valid at not_before")
    try:
        cert.public_key().verify(sig, mb, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise FwError("signature", "the manifest's signature does not verify") from None
    if m["product"] != policy.product:
        raise FwError("product", "another product's")
    # the device by its ID, or the group whose key unwrapped K
    if not ((policy.device_id is not None and policy.device_id in m["targets"]["devices"])
            or (kind == KIND_GROUP and group in m["targets"]["groups"])):
        raise FwError("not_a_target", "the manifest names neither this device nor its group")
    if m["counter"] <= policy.counter:
        raise FwError("rollback", "counter not above the installed one")
    if policy.now >= 0 and nb > policy.now:
        raise FwError("not_yet", "not before")
    if len(image) != m["image_size"] or \
            hashlib.sha256(image).hexdigest() != m["image_sha256"]:
        raise FwError("image", "its length or SHA-256 is not the manifest's")
    return (image, m, mb, sig) if parts else (image, m)


def _utf8_strings(v):
    """Raises UnicodeError for a string UTF-8 cannot carry (a lone surrogate)."""
    if isinstance(v, str):
        v.encode("utf-8")
    elif isinstance(v, dict):
        for k, x in v.items():
            _utf8_strings(k)
            _utf8_strings(x)
    elif isinstance(v, list):
        for x in v:
            _utf8_strings(x)


def _no_dups(pairs):
    d = {}
    for k, v in pairs:
        if k in d:
            raise ValueError("duplicate key")
        d[k] = v
    return d
