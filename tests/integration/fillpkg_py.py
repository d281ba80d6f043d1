"""Independent Python implementation of the qkms fill package (common/fillpkg.h).

Used by tests to seal packages that kmsctl must open, and to open packages
kmsd produced, without going through the C code under test.

Layout (all integers big-endian):
  offset  size  field
  0       4     magic b"QKFP"
  4       1     format version, 0x01
  5       1     curve: 0x01 X25519, 0x02 P-256
  6       2     E = length of the ephemeral public key
  8       E     ephemeral public key (X25519: 32 raw bytes; P-256: 65-byte
                uncompressed point 0x04||X||Y)
  8+E     32    HKDF salt (random)
  40+E    12    AES-GCM nonce (random)
  52+E    4     C = ciphertext length (plaintext length + 16)
  56+E    C     AES-256-GCM ciphertext || 16-byte tag

  shared = ECDH(ephemeral private, recipient public)
  key    = HKDF-SHA256(ikm=shared, salt=salt, info=b"qkms fill package v1" + header)
  AAD    = header (bytes 0 .. 55+E)

Keys are `cryptography` key objects: X25519PublicKey / X25519PrivateKey, or
EllipticCurvePublicKey / EllipticCurvePrivateKey on SECP256R1.
"""
import hashlib
import os
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, x25519
from cryptography.hazmat.primitives.ciphers import algorithms
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.cmac import CMAC
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

MAGIC = b"QKFP"
VERSION = 0x01
CURVE_X25519 = 0x01
CURVE_P256 = 0x02
INFO_PREFIX = b"qkms fill package v1"
SALT_LEN = 32
NONCE_LEN = 12
TAG_LEN = 16
MAX_PLAINTEXT = 1 << 20
EPH_LEN = {CURVE_X25519: 32, CURVE_P256: 65}


class FillPackageError(ValueError):
    """The data is not a fill package, or it does not open with this key."""


def _curve_of(key):
    if isinstance(key, (x25519.X25519PublicKey, x25519.X25519PrivateKey)):
        return CURVE_X25519
    if isinstance(key, (ec.EllipticCurvePublicKey, ec.EllipticCurvePrivateKey)) and isinstance(
        key.curve, ec.SECP256R1
    ):
        return CURVE_P256
    raise TypeError("need an X25519 or P-256 key")


def _ephemeral(curve):
    if curve == CURVE_X25519:
        priv = x25519.X25519PrivateKey.generate()
        pub = priv.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    else:
        priv = ec.generate_private_key(ec.SECP256R1())
        pub = priv.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
    return priv, pub


def _ecdh(private_key, peer_public_key):
    if isinstance(private_key, x25519.X25519PrivateKey):
        return private_key.exchange(peer_public_key)
    return private_key.exchange(ec.ECDH(), peer_public_key)


def _peer_from_bytes(curve, data):
    if curve == CURVE_X25519:
        return x25519.X25519PublicKey.from_public_bytes(data)
    if len(data) != 65 or data[0] != 0x04:
        raise FillPackageError("ephemeral P-256 key is not an uncompressed point")
    return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), data)


def _derive(shared, salt, header):
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=INFO_PREFIX + header).derive(shared)


def seal(recipient_public_key, plaintext: bytes) -> bytes:
    """Seals plaintext to the recipient's X25519 or P-256 public key."""
    curve = _curve_of(recipient_public_key)
    if not 0 < len(plaintext) <= MAX_PLAINTEXT:
        raise ValueError("plaintext must be 1 .. 2**20 bytes")
    eph_priv, eph_pub = _ephemeral(curve)
    salt = os.urandom(SALT_LEN)
    nonce = os.urandom(NONCE_LEN)
    header = (
        MAGIC
        + struct.pack(">BBH", VERSION, curve, len(eph_pub))
        + eph_pub
        + salt
        + nonce
        + struct.pack(">I", len(plaintext) + TAG_LEN)
    )
    key = _derive(_ecdh(eph_priv, recipient_public_key), salt, header)
    return header + AESGCM(key).encrypt(nonce, plaintext, header)


def parse_header(data: bytes):
    """Checks the header; returns (curve, ephemeral public bytes, salt,
    nonce, header bytes, ciphertext-with-tag). Raises FillPackageError."""
    if len(data) < 8 or data[:4] != MAGIC:
        raise FillPackageError("not a qkms fill package (bad magic)")
    version, curve, eplen = struct.unpack(">BBH", data[4:8])
    if version != VERSION:
        raise FillPackageError(f"unsupported fill package version {version}")
    if EPH_LEN.get(curve) != eplen:
        raise FillPackageError("unsupported curve or key length in fill package")
    hdr_len = 8 + eplen + SALT_LEN + NONCE_LEN + 4
    if len(data) < hdr_len + TAG_LEN + 1:
        raise FillPackageError("fill package truncated")
    (clen,) = struct.unpack(">I", data[hdr_len - 4 : hdr_len])
    if clen != len(data) - hdr_len or clen - TAG_LEN > MAX_PLAINTEXT:
        raise FillPackageError("fill package length field does not match its size")
    eph = data[8 : 8 + eplen]
    salt = data[8 + eplen : 8 + eplen + SALT_LEN]
    nonce = data[8 + eplen + SALT_LEN : 8 + eplen + SALT_LEN + NONCE_LEN]
    return curve, eph, salt, nonce, data[:hdr_len], data[hdr_len:]


def open_package(private_key, data: bytes) -> bytes:
    """Opens a package with the recipient's private key; returns the
    plaintext. Raises FillPackageError for anything that does not open."""
    curve, eph, salt, nonce, header, ciphertext = parse_header(bytes(data))
    if _curve_of(private_key) != curve:
        raise FillPackageError("private key is not on the package's curve")
    try:
        peer = _peer_from_bytes(curve, eph)
        key = _derive(_ecdh(private_key, peer), salt, header)
        return AESGCM(key).decrypt(nonce, ciphertext, header)
    except (InvalidTag, ValueError) as e:
        raise FillPackageError("fill package does not open with this key (wrong key or tampered)") from e


def fingerprint(public_key) -> str:
    """SHA-256 over the key's SubjectPublicKeyInfo DER, lowercase hex (the
    API's recipient_fingerprint)."""
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def kcv(key: bytes) -> str:
    """Key check value: first 5 bytes of AES-CMAC(key, 16 zero bytes), hex."""
    c = CMAC(algorithms.AES(key))
    c.update(bytes(16))
    return c.finalize()[:5].hex()


__all__ = [
    "FillPackageError",
    "seal",
    "open_package",
    "parse_header",
    "fingerprint",
    "kcv",
    "MAGIC",
    "VERSION",
    "CURVE_X25519",
    "CURVE_P256",
]
