"""The protocol v1 test vectors (tests/vectors/protocol-v1.json, written by
tests/vectors/make_vectors.py) against the independent Python client
tests/integration/qkms_proto_py.py. No server: plain pytest.

The C client checks the same file in tests/unit/test_vectors.c.
"""
import base64
import json
import os
import re
import subprocess
import sys

import pytest
from cryptography.exceptions import InvalidTag

import qkms_proto_py as qp

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
VECTORS = os.environ.get("QKMS_VECTORS", os.path.join(ROOT, "tests", "vectors", "protocol-v1.json"))

with open(VECTORS, encoding="ascii") as _f:
    CASES = json.load(_f)

ACCEPT = [c for c in CASES if c["expect"] == "accept"]
KEY_ACCEPT = [c for c in ACCEPT if c["op"] == "key"]
REJECT = [c for c in CASES if c["expect"] == "reject"]
MUST_FAIL = {"aead", "key_bits", "session_id", "version", "nonce_reuse", "nonce_length", "b64u",
             "epoch"}
# What qkms_proto_py's ProtocolError says for each client-side check (regex).
REASON = {"key_bits": "key_bits", "session_id": "session", "version": "version",
          "nonce_reuse": "reuses the request nonce", "nonce_length": "12 bytes",
          "b64u": "base64url", "epoch": "epoch"}


# What a reject case may change relative to a valid response to the same
# request: the one thing its must_fail names (ct is sealed under the nonce, so
# a case about the nonce changes both).
ALLOWED_DIFF = {"aead": [{"ct"}, {"key_id"}, {"expires_at"}], "key_bits": [{"key_bits"}],
                "session_id": [{"session_id"}], "version": [{"v"}],
                "nonce_reuse": [{"nonce", "ct"}], "nonce_length": [{"nonce", "ct"}],
                "b64u": [{"ct"}], "epoch": [{"epoch"}]}
# docs/protocol.md: key_id is a UUID in lower-case text form (kmsd: version 4).
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
MISSING = object()


def ext(c):
    """The (epoch, direction) an ext request asks for, () for the others."""
    if "epoch" not in c and "direction" not in c:
        return ()
    return (c.get("epoch", 0), c.get("direction", ""))


def ids(cases):
    return [c["name"] for c in cases]


def device(c):
    return qp.Device(c["device_id"], {c["key_index"]: bytes.fromhex(c["device_key"])},
                     {c["key_index"]: qp.suite_of(c["device_key_algorithm"])})


def suite(c):
    return qp.suite_of(c["device_key_algorithm"])


def build(c):
    """c's request, through the client under test."""
    dev = device(c)
    nonce = bytes.fromhex(c["request_nonce"])
    if c["op"] == "key":
        return dev, dev.key_request(c["session_id"], c["peer_id"], index=c["key_index"],
                                    ts=c["ts"], delivered=c["delivered"], nonce=nonce,
                                    epoch=c.get("epoch"), direction=c.get("direction"))
    if c["op"] == "stream":
        return dev, dev.stream_request(c["peer_id"], c["seq"], c.get("stream_id"),
                                       index=c["key_index"], ts=c["ts"], nonce=nonce)
    if c.get("all"):
        assert "session_id" not in c
        return dev, dev.end_all_request(index=c["key_index"], ts=c["ts"], nonce=nonce)
    return dev, dev.end_request(c["session_id"], index=c["key_index"], ts=c["ts"], nonce=nonce)


def test_the_file_covers_what_it_must():
    """The vectors hold the edge cases they are for; a regenerated file
    that lost them fails here."""
    names = ids(CASES)
    assert len(set(names)) == len(names)
    assert {c["op"] for c in ACCEPT} == {"key", "end", "stream"}
    assert {("stream_id" in c) for c in ACCEPT if c["op"] == "stream"} == {True, False}
    assert {c["device_key_algorithm"] for c in CASES} == {"AES-128", "AES-256", "SM4-128"}
    assert {c["op"] for c in ACCEPT if c["device_key_algorithm"] == "SM4-128"} == {"key", "end"}
    assert {c["response"]["key_bits"] for c in KEY_ACCEPT} == {128, 256}
    assert any(c["key_index"] == 255 for c in ACCEPT)
    assert any('"' in c["session_id"] for c in KEY_ACCEPT)
    assert any('"' in c.get("session_id", "") for c in ACCEPT if c["op"] == "end")
    assert any(c.get("all") is True for c in ACCEPT if c["op"] == "end")
    assert any('"' in c["device_id"] for c in KEY_ACCEPT)
    assert any(len(c.get("session_id", "")) == 128 for c in ACCEPT)
    assert any(c["delivered"] for c in KEY_ACCEPT)
    assert {ext(c) for c in KEY_ACCEPT} >= {(), (1, "a2b"), (2, ""), (0, "b2a")}
    assert {c["must_fail"] for c in REJECT} == MUST_FAIL
    for c in CASES:
        assert len(bytes.fromhex(c["device_key"])) == (32 if c["device_key_algorithm"] == "AES-256" else 16)
        assert ("response" in c) == (c["op"] in ("key", "stream"))


def test_file_is_what_the_generator_writes(tmp_path):
    """The committed file is the generator's output, byte for byte (the
    generator is deterministic)."""
    gen = os.path.join(ROOT, "tests", "vectors", "make_vectors.py")
    out = tmp_path / "protocol-v1.json"
    subprocess.run([sys.executable, gen, str(out)], check=True, capture_output=True, timeout=60)
    with open(VECTORS, "rb") as f:
        assert out.read_bytes() == f.read(), "regenerate: /usr/bin/python3 tests/vectors/make_vectors.py"


@pytest.mark.parametrize("c", CASES, ids=ids(CASES))
def test_request(c):
    dev, req = build(c)
    assert qp.request_aad(c["op"], c["device_id"], c["key_index"]) == c["request_aad"].encode()
    assert req.path == c["request_path"]
    assert req.nonce_b64 == c["request_nonce_b64u"] == qp.b64u(bytes.fromhex(c["request_nonce"]))
    assert req.body["ct"] == c["request_ct"]
    assert req.raw == c["request_body"].encode("ascii")
    # The ciphertext opens to the canonical inner request.
    pt = qp.open_(suite(c), dev.keys[c["key_index"]], bytes.fromhex(c["request_nonce"]),
                  c["request_aad"].encode(), qp.b64u_decode(c["request_ct"]))
    assert pt == c["request_plaintext"].encode("ascii")


@pytest.mark.parametrize("c", KEY_ACCEPT, ids=ids(KEY_ACCEPT))
def test_key_response_accepted(c):
    dev, req = build(c)
    r = c["response"]
    aad = qp.response_aad(c["session_id"], c["device_id"], c["key_index"], r["key_id"],
                          r["expires_at"], c["request_nonce_b64u"], *ext(c))
    assert aad == r["aad"].encode()
    # The server's side: sealing the session key gives the expected ct.
    ct = qp.seal(suite(c), dev.keys[c["key_index"]], bytes.fromhex(r["nonce"]), aad,
                 bytes.fromhex(r["session_key"]))
    assert qp.b64u(ct) == r["ct"] == r["body"]["ct"]
    # The client's side.
    sk = dev.open_key_response(req, r["body"])
    assert sk.key == bytes.fromhex(r["session_key"]) and len(sk.key) * 8 == r["key_bits"]
    assert (sk.session_id, sk.key_id, sk.expires_at, sk.delivery) == (
        c["session_id"], r["key_id"], r["expires_at"], r["delivery"])
    # Round trip through the wire format too.
    assert dev.open_key_response(req, json.loads(json.dumps(r["body"]))).key == sk.key


STREAM = [c for c in ACCEPT if c["op"] == "stream"]


@pytest.mark.parametrize("c", STREAM, ids=ids(STREAM))
def test_stream_response_accepted(c):
    dev, req = build(c)
    r = c["response"]
    aad = qp.stream_aad(r["stream_id"], c["device_id"], c["key_index"], c["seq"], r["key_id"],
                        r["expires_at"], c["request_nonce_b64u"])
    assert aad == r["aad"].encode()
    ct = qp.seal(suite(c), dev.keys[c["key_index"]], bytes.fromhex(r["nonce"]), aad,
                 bytes.fromhex(r["session_key"]))
    assert qp.b64u(ct) == r["ct"] == r["body"]["ct"]
    sk = dev.open_stream_response(req, r["body"])
    assert sk.key == bytes.fromhex(r["session_key"]) and (sk.stream_id, sk.seq) == (
        r["stream_id"], c["seq"])
    # The body's seq or stream is checked against the request, not trusted.
    with pytest.raises(qp.ProtocolError):
        dev.open_stream_response(req, dict(r["body"], seq=c["seq"] + 1))
    if "stream_id" in c:
        with pytest.raises(qp.ProtocolError):
            dev.open_stream_response(req, dict(r["body"], stream_id="1" + r["stream_id"][1:]))


@pytest.mark.parametrize("c", REJECT, ids=ids(REJECT))
def test_key_response_refused(c):
    dev, req = build(c)
    # An AEAD failure surfaces as InvalidTag; every other check is the
    # client's own and raises ProtocolError (so the refusal has the reason
    # the vector names, not an accident such as a KeyError).
    if c["must_fail"] == "aead":
        with pytest.raises(InvalidTag):
            dev.open_key_response(req, c["response"]["body"])
    else:
        with pytest.raises(qp.ProtocolError, match=REASON[c["must_fail"]]):
            dev.open_key_response(req, c["response"]["body"])


def test_refusal_tests_can_fail():
    """The refusals above are not vacuous: the same request accepts the
    untampered answer built from each reject case's sealed values."""
    c = next(x for x in REJECT if x["must_fail"] == "key_bits")
    dev, req = build(c)
    body = dict(c["response"]["body"], key_bits=c["response"]["key_bits"])
    assert dev.open_key_response(req, body).key == bytes.fromhex(c["response"]["session_key"])


def assert_well_formed_response(c, body):
    """body is a 200 answer to c's key request as docs/protocol.md describes
    it, field by field (what a server may send, beyond what opens)."""
    extra = {"epoch", "direction", "current_epoch"} if ext(c) else set()
    assert set(body) == {"v", "session_id", "key_id", "key_bits", "expires_at", "delivery",
                         "nonce", "ct"} | extra, body
    if extra:
        assert (body["epoch"], body["direction"]) == ext(c) or c.get("must_fail") == "epoch"
        assert type(body["current_epoch"]) is int and body["current_epoch"] >= body["epoch"]
    assert body["v"] == 1 and body["session_id"] == c["session_id"]
    assert UUID.fullmatch(body["key_id"]), body["key_id"]
    assert type(body["expires_at"]) is int and body["expires_at"] > c["ts"]
    assert body["key_bits"] in (128, 256) and body["delivery"] in ("session", "delivered")
    nonce = qp.b64u_decode(body["nonce"])
    assert len(nonce) == 12 and nonce != bytes.fromhex(c["request_nonce"])
    assert len(qp.b64u_decode(body["ct"])) == body["key_bits"] // 8 + 16


@pytest.mark.parametrize("c", KEY_ACCEPT, ids=ids(KEY_ACCEPT))
def test_accepted_responses_are_well_formed(c):
    assert_well_formed_response(c, c["response"]["body"])


@pytest.mark.parametrize("c", REJECT, ids=ids(REJECT))
def test_reject_differs_from_a_valid_response_in_one_named_thing(c):
    """Each reject vector is a valid response with exactly the one thing
    its must_fail names changed: undone, the body is well formed and
    accepted, with the sealed key; so a refusal cannot come from another
    defect of the vector (such as a malformed key_id)."""
    r, valid, body = c["response"], c["valid_body"], c["response"]["body"]
    diff = {k for k in set(valid) | set(body) if valid.get(k, MISSING) != body.get(k, MISSING)}
    assert diff == set(c["differs_in"]), (diff, c["differs_in"])
    assert diff in ALLOWED_DIFF[c["must_fail"]], (c["must_fail"], diff)
    assert (r["key_id"], r["expires_at"]) == (valid["key_id"], valid["expires_at"])
    assert r["key_bits"] == valid["key_bits"]
    assert_well_formed_response(c, valid)
    dev, req = build(c)
    undone = dict(body, **{k: valid[k] for k in diff})
    sk = dev.open_key_response(req, undone)
    assert sk.key == bytes.fromhex(r["session_key"])
    assert (sk.key_id, sk.expires_at) == (valid["key_id"], valid["expires_at"])
    # The change is the named one and no bigger.
    key = dev.keys[c["key_index"]]
    aad = qp.response_aad(c["session_id"], c["device_id"], c["key_index"], valid["key_id"],
                          valid["expires_at"], c["request_nonce_b64u"], *ext(c))
    if c["must_fail"] in ("nonce_reuse", "nonce_length"):
        # ct is the same key correctly sealed under the other nonce.
        nonce = base64.urlsafe_b64decode(body["nonce"] + "=" * (-len(body["nonce"]) % 4))
        assert qp.open_(suite(c), key, nonce, aad, qp.b64u_decode(body["ct"])) == sk.key
    elif c["must_fail"] == "b64u":
        # The same bytes for a lax decoder: only the encoding is wrong.
        lax = base64.urlsafe_b64decode(body["ct"].rstrip("=") + "=" * (-len(body["ct"].rstrip("=")) % 4))
        assert lax == qp.b64u_decode(valid["ct"])
    elif diff == {"ct"}:
        # An AEAD case about the ciphertext: it does not open under the
        # AAD the client computes.
        with pytest.raises(InvalidTag):
            qp.open_(suite(c), key, bytes.fromhex(r["nonce"]), aad, qp.b64u_decode(body["ct"]))
