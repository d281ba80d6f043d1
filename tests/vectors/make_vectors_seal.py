#!/usr/bin/python3
"""Writes tests/vectors/seal-v1.json: test vectors for the sealed frame
(docs/sealing.md), data under a session key.

    /usr/bin/python3 tests/vectors/make_vectors_seal.py [OUT.json]

A third, deliberately minimal derivation of the frame, written from
docs/sealing.md alone: it shares no code with the C library
(device/qkms_seal.c) or the Python implementation
(tests/integration/qkms_seal_py.py), and uses only the standard library and
`cryptography` (AESGCM). Deterministic: every key and payload is a fixed
function of a label (SHA-256), so running it again gives the same file.

The file is a JSON object:

  "seal": cases a sender must produce byte for byte, and a receiver open:
      name, key (hex, 16 or 32 bytes), key_id (UUID text), session_id,
      direction ("a2b" or "b2a"), seq (decimal string: it may not fit a
      signed 64-bit JSON integer), plaintext (hex),
      nonce (hex), aad (hex), frame (hex)
  "reject": frames a receiver must refuse, with the error it names:
      name, key, key_id, session_id, direction (what the receiver
      expects), frame (hex), error ("format", "key", "direction", "auth")
  "window": one receiver's replay window fed a sequence of frames:
      name, key, key_id, session_id, direction, steps: [{seq (string), frame,
      accept (true/false)}]; a refused step names "error" ("replay")
"""
import hashlib
import json
import struct
import sys

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

LABEL = b"qkms/seal/v1"
DIR = {"a2b": 1, "b2a": 2}


def det(label, n):
    out = b""
    i = 0
    while len(out) < n:
        out += hashlib.sha256(f"{label}/{i}".encode()).digest()
        i += 1
    return out[:n]


def uuid_bytes(text):
    return bytes.fromhex(text.replace("-", ""))


def header(direction, key_id, seq, version=1, alg=1, reserved=0):
    return bytes([version, alg, DIR[direction], reserved]) + uuid_bytes(key_id) + struct.pack(">Q", seq)


def seal(key, key_id, sid, direction, seq, pt, **hdr):
    h = header(direction, key_id, seq, **hdr)
    nonce = struct.pack(">I", DIR[direction]) + struct.pack(">Q", seq)
    aad = LABEL + b"\x00" + sid.encode() + b"\x00" + h
    return h + AESGCM(key).encrypt(nonce, pt, aad), nonce, aad


def case(name, key_bits, direction, seq, pt_len, sid="trip-2026-12-05-0001"):
    key = det(f"seal/{name}/key", key_bits // 8)
    key_id = str(__import__("uuid").UUID(bytes=det(f"seal/{name}/key_id", 16), version=4))
    pt = det(f"seal/{name}/pt", pt_len)
    frame, nonce, aad = seal(key, key_id, sid, direction, seq, pt)
    return {"name": name, "key": key.hex(), "key_id": key_id, "session_id": sid,
            "direction": direction, "seq": str(seq), "plaintext": pt.hex(), "nonce": nonce.hex(),
            "aad": aad.hex(), "frame": frame.hex()}


def main():
    seal_cases = [
        case("a2b-aes128-first", 128, "a2b", 0, 32),
        case("b2a-aes256", 256, "b2a", 1, 100),
        case("empty-payload", 256, "a2b", 7, 0),
        case("last-seq", 128, "b2a", 2**64 - 2, 16),
        case("meter-reading", 256, "a2b", 4242, 1500, sid="METER-0042/2026-12-05T10:00Z"),
        case("one-byte-session-id", 128, "a2b", 3, 5, sid="s"),
    ]
    base = seal_cases[1]
    key = bytes.fromhex(base["key"])
    pt = bytes.fromhex(base["plaintext"])
    good = bytes.fromhex(base["frame"])

    def reject(name, frame, error, **over):
        r = {"name": name, "key": base["key"], "key_id": base["key_id"],
             "session_id": base["session_id"], "direction": base["direction"],
             "frame": frame.hex(), "error": error}
        r.update(over)
        return r

    def flip(b, i, bit=1):
        b = bytearray(b)
        b[i] ^= bit
        return bytes(b)

    other_id = "00000000-0000-4000-8000-000000000001"
    rejects = [
        reject("tag-bit-flipped", flip(good, len(good) - 1), "auth"),
        reject("ciphertext-bit-flipped", flip(good, 28 + 5, 0x80), "auth"),
        reject("seq-changed", flip(good, 27), "auth"),
        reject("other-session", good, "auth", session_id="trip-2026-12-05-0002"),
        reject("other-key-same-id", good, "auth", key=det("seal/other", 32).hex()),
        reject("key-id-changed", flip(good, 4), "key"),
        reject("other-key-id-expected", good, "key", key_id=other_id),
        reject("direction-expected-a2b", good, "direction", direction="a2b"),
        # The direction byte altered to what the receiver expects: the header
        # is in the AAD and the direction in the nonce.
        reject("direction-byte-altered", flip(good, 2, 0x03), "auth", direction="a2b"),
        reject("version-2", seal(key, base["key_id"], base["session_id"], "b2a", 1, pt, version=2)[0],
               "format"),
        reject("algorithm-2", seal(key, base["key_id"], base["session_id"], "b2a", 1, pt, alg=2)[0],
               "format"),
        reject("reserved-set", seal(key, base["key_id"], base["session_id"], "b2a", 1, pt, reserved=1)[0],
               "format"),
        reject("direction-3", flip(good, 2, 0x01), "format"),
        reject("seq-all-ones", seal(key, base["key_id"], base["session_id"], "b2a", 2**64 - 1, pt)[0],
               "format"),
        reject("truncated-below-overhead", good[:43], "format"),
        reject("empty", b"", "format"),
    ]

    wkey = det("seal/window/key", 16)
    wid = "6d1f0a52-3c1e-4b7a-9a44-0c2b1f3e5d77"
    wsid = "window-session"
    steps = []
    for seq, accept in [(5, True), (3, True), (5, False), (4, True), (3, False), (70, True),
                        (6, False), (7, True), (7, False), (69, True), (200, True), (136, False),
                        (137, True), (199, True), (200, False)]:
        frame = seal(wkey, wid, wsid, "a2b", seq, det(f"seal/window/{seq}", 8))[0]
        s = {"seq": str(seq), "frame": frame.hex(), "accept": accept}
        if not accept:
            s["error"] = "replay"
        steps.append(s)
    windows = [{"name": "out-of-order-and-replays", "key": wkey.hex(), "key_id": wid,
                "session_id": wsid, "direction": "a2b", "steps": steps}]

    doc = {"format": "qkms-seal-vectors/1", "seal": seal_cases, "reject": rejects, "window": windows}
    out = sys.argv[1] if len(sys.argv) > 1 else "tests/vectors/seal-v1.json"
    with open(out, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
