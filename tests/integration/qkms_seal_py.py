"""The sealed frame (docs/sealing.md) in Python: the second implementation
beside device/qkms_seal.c, for the end-to-end tests. Written from the doc;
python3-cryptography's AESGCM does the AEAD.

    frame = seal(key, key_id, session_id, direction, seq, plaintext)
    w = Window()
    plaintext, seq = open_frame(key, key_id, session_id, direction, frame, w)

Errors raise SealError whose .code is the doc's name: "input", "format",
"key", "direction", "auth", "replay".
"""
import struct
import uuid

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

VERSION = 1
ALG_AES_GCM = 1
A2B, B2A = 1, 2
DIRECTIONS = {"a2b": A2B, "b2a": B2A}
HEADER_LEN = 28
TAG_LEN = 16
OVERHEAD = HEADER_LEN + TAG_LEN
MAX_SEQ = 2**64 - 2
MAX_PLAINTEXT = 64 << 20
WINDOW = 64
_LABEL = b"qkms/seal/v1\x00"


class SealError(Exception):
    def __init__(self, code, message):
        super().__init__(f"{code}: {message}")
        self.code = code


def direction_of(from_id, to_id):
    """"a2b" when from_id sorts first in byte order, "b2a" when after."""
    a, b = from_id.encode(), to_id.encode()
    if a == b:
        raise SealError("input", "a party does not seal for itself")
    return "a2b" if a < b else "b2a"


def _dir(direction):
    if direction not in DIRECTIONS:
        raise SealError("input", f"direction {direction!r}")
    return DIRECTIONS[direction]


def _key(key):
    if len(key) not in (16, 32):
        raise SealError("input", "a session key is 16 or 32 bytes")
    return AESGCM(key)


def _sid(session_id):
    b = session_id.encode()
    if not 1 <= len(b) <= 128 or b"\x00" in b:
        raise SealError("input", "session ID")
    return b


def _header(d, key_id, seq):
    return bytes([VERSION, ALG_AES_GCM, d, 0]) + uuid.UUID(key_id).bytes + struct.pack(">Q", seq)


def seal(key, key_id, session_id, direction, seq, plaintext):
    d = _dir(direction)
    if not 0 <= seq <= MAX_SEQ:
        raise SealError("input", "seq out of range")
    if len(plaintext) > MAX_PLAINTEXT:
        raise SealError("input", "plaintext too long")
    h = _header(d, key_id, seq)
    nonce = struct.pack(">IQ", d, seq)
    return h + _key(key).encrypt(nonce, bytes(plaintext), _LABEL + _sid(session_id) + b"\x00" + h)


def peek(frame):
    """(direction, key_id text, seq) of a frame, authenticating nothing."""
    if len(frame) < OVERHEAD:
        raise SealError("format", "shorter than a frame")
    version, alg, d, reserved = frame[0], frame[1], frame[2], frame[3]
    if version != VERSION or alg != ALG_AES_GCM or d not in (A2B, B2A) or reserved != 0:
        raise SealError("format", "version, algorithm, direction or reserved byte")
    (seq,) = struct.unpack(">Q", frame[20:28])
    if seq > MAX_SEQ:
        raise SealError("format", "seq out of range")
    return ("a2b" if d == A2B else "b2a"), str(uuid.UUID(bytes=bytes(frame[4:20]))), seq


class Window:
    """A receiver's replay window: each seq once, none more than WINDOW - 1
    behind the highest accepted."""

    def __init__(self):
        self.top = None
        self.seen = set()

    def check(self, seq):
        if self.top is None or seq > self.top:
            return
        if self.top - seq >= WINDOW or seq in self.seen:
            raise SealError("replay", f"seq {seq} already accepted or too old")

    def accept(self, seq):
        if self.top is None or seq > self.top:
            self.top = seq
        self.seen = {s for s in self.seen | {seq} if self.top - s < WINDOW}


def open_frame(key, key_id, session_id, direction, frame, window=None):
    """(plaintext, seq); checks in the doc's order: format, key, direction,
    window, tag."""
    frame = bytes(frame)
    d, kid, seq = peek(frame)
    if len(frame) - OVERHEAD > MAX_PLAINTEXT:
        raise SealError("format", "longer than a frame")
    if uuid.UUID(kid) != uuid.UUID(key_id):
        raise SealError("key", "sealed under another key")
    if d != direction:
        _dir(direction)
        raise SealError("direction", "sealed for the other direction")
    if window is not None:
        window.check(seq)
    h = frame[:HEADER_LEN]
    try:
        pt = _key(key).decrypt(struct.pack(">IQ", _dir(d), seq), frame[HEADER_LEN:],
                               _LABEL + _sid(session_id) + b"\x00" + h)
    except InvalidTag:
        raise SealError("auth", "the tag does not verify") from None
    if window is not None:
        window.accept(seq)
    return pt, seq


# ---------------------------------------------------------------------------
# data under a device key (docs/sealing.md, "Data under a device key")

PLATFORM_ID = "@platform"


def device_data_key(device_key, device_id):
    """(frame key, key ID text) of a device key: HKDF-SHA-256 without salt,
    info "qkms/seal/device-data/v1" 0x00 device_id; the key ID the first 16
    bytes of HMAC-SHA-256(frame key, "qkms/seal/device-key-id/v1")."""
    import hashlib
    import hmac
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF
    if len(device_key) not in (16, 32):
        raise SealError("input", "a device key is 16 or 32 bytes")
    k = HKDF(hashes.SHA256(), 32, None,
             b"qkms/seal/device-data/v1\x00" + device_id.encode()).derive(device_key)
    kid = hmac.new(k, b"qkms/seal/device-key-id/v1", hashlib.sha256).digest()[:16]
    return k, str(uuid.UUID(bytes=kid))


def device_seal(device_key, device_id, seq, plaintext):
    """A frame from the device to the platform under its device key."""
    k, kid = device_data_key(device_key, device_id)
    return seal(k, kid, device_id, direction_of(device_id, PLATFORM_ID), seq, plaintext)


def device_open(device_key, device_id, frame, window=None):
    """(plaintext, seq) of a frame the platform sealed to the device."""
    k, kid = device_data_key(device_key, device_id)
    return open_frame(k, kid, device_id, direction_of(PLATFORM_ID, device_id), frame, window)
