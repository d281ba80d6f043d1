"""The sealed frame's test vectors (tests/vectors/seal-v1.json, written by
tests/vectors/make_vectors_seal.py from docs/sealing.md) against the Python
implementation tests/integration/qkms_seal_py.py, and the properties the
doc promises. No server: plain pytest. The C library checks the same file
in tests/unit/test_seal.c.
"""
import json
import os
import subprocess
import sys

import pytest

import qkms_seal_py as qs

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
VECTORS = os.path.join(ROOT, "tests", "vectors", "seal-v1.json")

with open(VECTORS, encoding="ascii") as _f:
    DOC = json.load(_f)


def test_vectors_are_what_the_generator_writes(tmp_path):
    out = tmp_path / "seal.json"
    subprocess.run([sys.executable, os.path.join(ROOT, "tests", "vectors", "make_vectors_seal.py"),
                    str(out)], check=True)
    assert out.read_text() == open(VECTORS, encoding="ascii").read()


@pytest.mark.parametrize("c", DOC["seal"], ids=[c["name"] for c in DOC["seal"]])
def test_seal_vector(c):
    key, pt = bytes.fromhex(c["key"]), bytes.fromhex(c["plaintext"])
    frame = qs.seal(key, c["key_id"], c["session_id"], c["direction"], int(c["seq"]), pt)
    assert frame.hex() == c["frame"]
    assert qs.peek(frame) == (c["direction"], c["key_id"], int(c["seq"]))
    got, seq = qs.open_frame(key, c["key_id"], c["session_id"], c["direction"], frame, qs.Window())
    assert got == pt and seq == int(c["seq"])


@pytest.mark.parametrize("c", DOC["reject"], ids=[c["name"] for c in DOC["reject"]])
def test_reject_vector(c):
    with pytest.raises(qs.SealError) as e:
        qs.open_frame(bytes.fromhex(c["key"]), c["key_id"], c["session_id"], c["direction"],
                      bytes.fromhex(c["frame"]), qs.Window())
    assert e.value.code == c["error"]


@pytest.mark.parametrize("w", DOC["window"], ids=[w["name"] for w in DOC["window"]])
def test_window_vector(w):
    win = qs.Window()
    for s in w["steps"]:
        frame = bytes.fromhex(s["frame"])
        if s["accept"]:
            _, seq = qs.open_frame(bytes.fromhex(w["key"]), w["key_id"], w["session_id"],
                                   w["direction"], frame, win)
            assert seq == int(s["seq"])
        else:
            with pytest.raises(qs.SealError) as e:
                qs.open_frame(bytes.fromhex(w["key"]), w["key_id"], w["session_id"],
                              w["direction"], frame, win)
            assert e.value.code == s["error"], s["seq"]


def test_a_refused_frame_does_not_move_the_window():
    key, kid, sid = os.urandom(32), "6d1f0a52-3c1e-4b7a-9a44-0c2b1f3e5d77", "S"
    win = qs.Window()
    qs.open_frame(key, kid, sid, "a2b", qs.seal(key, kid, sid, "a2b", 1, b"x"), win)
    forged = bytearray(qs.seal(key, kid, sid, "a2b", 500, b"y"))
    forged[-1] ^= 1
    with pytest.raises(qs.SealError, match="auth"):
        qs.open_frame(key, kid, sid, "a2b", bytes(forged), win)
    # seq 2 is still in the window: the forged 500 did not move it.
    assert qs.open_frame(key, kid, sid, "a2b", qs.seal(key, kid, sid, "a2b", 2, b"z"), win)[0] == b"z"


def test_directions_keep_the_nonces_apart():
    """Both parties seal under one session key; the same seq in the two
    directions gives two nonces, and a frame does not open as the other
    direction's."""
    key, kid, sid = os.urandom(16), "6d1f0a52-3c1e-4b7a-9a44-0c2b1f3e5d77", "S"
    a = qs.seal(key, kid, sid, qs.direction_of("METER-1", "PLATFORM-9"), 0, b"same")
    b = qs.seal(key, kid, sid, qs.direction_of("PLATFORM-9", "METER-1"), 0, b"same")
    assert a[2] == qs.A2B and b[2] == qs.B2A and a[HDR:] != b[HDR:]
    with pytest.raises(qs.SealError, match="direction"):
        qs.open_frame(key, kid, sid, "b2a", a)


HDR = qs.HEADER_LEN
