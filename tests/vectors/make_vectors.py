#!/usr/bin/python3
"""Writes tests/vectors/protocol-v1.json: test vectors for the qkms device
protocol v1 (docs/protocol.md).

    /usr/bin/python3 tests/vectors/make_vectors.py [OUT.json]

This is a third, deliberately minimal derivation of the protocol, written
from docs/protocol.md alone: it shares no code with the C library
(device/qkms_proto.c, device/qkms_device.c), kmsd (kmsd/sessions.c) or the
Python client (tests/integration/qkms_proto_py.py), and uses only the
standard library and `cryptography` (AESGCM). It is deterministic: every
key, nonce and session key below is a fixed function of a label (SHA-256),
so running it again gives the same file byte for byte.

The file is a JSON list of cases. Every case has:

  name, description
  op                  "key", "end", or "stream" (a key stream's key, below)
  device_id, key_index, device_key (hex), device_key_algorithm
                      ("AES-128" for 16 bytes, "AES-256" for 32; "SM4-128" for
                      the SM4 suite, docs/protocol.md "Suites": every AES-GCM
                      below is then SM4-CTR + HMAC-SM3)
  session_id, ts      inner request fields (an "end" case with "all": true
                      has no session_id: it ends every session of the
                      device, and its plaintext is {"all":true,"ts":N})
  peer_id, delivered  (op "key" only) delivered=true adds "delivery":"delivered"
  epoch, direction    (op "key", optional) present when the request asks for
                      one of the session's other keys ("Epochs and direction
                      keys"): the inner request then ends with ,"epoch":N
                      and/or ,"direction":"a2b"|"b2a" after ts, and the
                      response has "epoch", "direction" and "current_epoch"
                      and its AAD ends with "\n" epoch "\n" direction (epoch
                      0 and direction "" when the request named only the
                      other)
  request_nonce       hex (12 bytes); request_nonce_b64u the same in b64u
  request_path        "/v1/sessions/key" or "/v1/sessions/end"
  request_aad         the associated data, as a string ("\n" is 0x0A)
  request_plaintext   the canonical inner request (ASCII), as the C client
                      builds it: {"session_id":S,"peer_id":P,"ts":N} plus
                      ,"delivery":"delivered" before the "}" when delivered;
                      {"session_id":S,"ts":N} for "end"; IDs escaped as
                      JSON strings (only '"' can need escaping in an ID)
  request_ct          b64u of AES-GCM(device_key, request_nonce,
                      request_aad, request_plaintext): ciphertext || tag
  request_body        the exact request body:
                      {"v":1,"device_id":D,"key_index":N,"nonce":..,"ct":..}
  expect              "accept" or "reject" (the response; "end" cases have
                      no response and expect "accept")

An op "stream" case (docs/protocol.md, "Key streams") has no session_id;
it has peer_id, seq and, when the request names one, stream_id; its inner
request is {"stream_id":S,"peer_id":P,"seq":N,"ts":T} (without stream_id to
open or join); request_path "/v1/streams/key"; its response object, as for
"key" below, has stream_id, seq, low and window instead of session_id and
delivery, and aad is "qkms/v1/stream\n" stream_id "\n" device_id "\n"
key_index "\n" seq "\n" key_id "\n" expires_at "\n" request_nonce_b64u.

and op "key" cases a "response" object:

  session_key         hex: the key the server sealed
  key_id, expires_at, key_bits, delivery
                      the values the server sealed for (key_id: a version 4
                      UUID in lower-case text form, as kmsd sends)
  nonce               hex: the response nonce the server used
  aad                 the response associated data the server sealed with
                      (for "accept" cases exactly what the client computes:
                      "qkms/v1/resp\n" session_id "\n" device_id "\n"
                      key_index "\n" key_id "\n" expires_at "\n"
                      request_nonce_b64u)
  ct                  b64u: AES-GCM(device_key, nonce, aad, session_key)
  body                the response JSON object as the client receives it

Every "reject" case also carries

  valid_body          the response a correct server sends to the same
                      request (same session key, key_id, expires_at,
                      key_bits; the case's own response nonce): a correct
                      client accepts it
  differs_in          the fields of response.body that differ from
                      valid_body: exactly the one thing the case is about
                      (["nonce","ct"] where the case is about the nonce,
                      since ct is sealed under it); the generator checks
                      that nothing else differs, so a case cannot be
                      refused for another reason than the one it names

and must_fail: which check of the client must refuse the
body (a client that skipped that check would otherwise accept it):

  aead          the ciphertext does not open under the AAD the client
                computes (tampered ct; another request nonce, key_id or
                expires_at than the body and request say)
  key_bits      key_bits does not match the length of ct
  session_id    the body names another session than the request
  version       v is not 1
  nonce_reuse   the response nonce equals the request nonce (the server
                would have reused a nonce under the device key); everything
                else verifies
  nonce_length  the response nonce is not 12 bytes (AES-GCM would accept
                it; the protocol does not)
  b64u          ct is not strict base64url (padding, or non-zero unused
                trailing bits that a lax decoder would ignore)
  epoch         the body names another epoch than the request asked for
                (sealed for the asked one, so the AEAD would open)

For every "reject" case other than "aead" the generator checks that the
AEAD itself would open, so the case isolates the check it names; for "aead"
cases it checks that the AEAD refuses.
"""
import base64
import hashlib
import json
import os
import re
import struct
import sys

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

LABEL = "qkms protocol v1 test vector: "
TS = 1795430000  # 2026-11-24T08:33:20Z
EXPIRES = 1795433600  # one hour later


def derive(label, n):
    """n fixed bytes for label (n <= 32): never random, never reused."""
    assert n <= 32
    return hashlib.sha256((LABEL + label).encode()).digest()[:n]


def b64u(data):
    """RFC 4648 section 5, no padding."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unb64u(s):
    """Strict enough for the generator's own output: no padding expected."""
    assert "=" not in s
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def id_ok(s):
    """docs/protocol.md: 1-128 printable ASCII (0x21-0x7E) except / \\ % ? #"""
    return 1 <= len(s) <= 128 and all(0x21 <= ord(c) <= 0x7E and c not in "/\\%?#" for c in s)


def json_id(s):
    """An ID as a JSON string literal. IDs hold no backslash and no control
    characters, so '"' is the only character to escape."""
    assert id_ok(s), s
    return '"' + s.replace('"', '\\"') + '"'


def request_aad(op, device_id, key_index):
    return "qkms/v1/req\n" + op + "\n" + device_id + "\n" + str(key_index)


def response_aad(session_id, device_id, key_index, key_id, expires_at, req_nonce_b64u,
                 ext=None):
    """ext: (epoch, direction) of a request that named either."""
    aad = ("qkms/v1/resp\n" + session_id + "\n" + device_id + "\n" + str(key_index) + "\n" +
           key_id + "\n" + str(expires_at) + "\n" + req_nonce_b64u)
    if ext is not None:
        aad += "\n" + str(ext[0]) + "\n" + ext[1]
    return aad


def case_ext(case):
    """(epoch, direction) a key case's request asks for, or None."""
    if "epoch" not in case and "direction" not in case:
        return None
    return (case.get("epoch", 0), case.get("direction", ""))


def inner_plaintext(op, session_id, ts, peer_id=None, delivered=False, epoch=None,
                    direction=None):
    if op == "end" and session_id is None:  # every session of the device
        return '{"all":true,"ts":' + str(ts) + "}"
    s = '{"session_id":' + json_id(session_id)
    if op == "key":
        s += ',"peer_id":' + json_id(peer_id)
    s += ',"ts":' + str(ts)
    if op == "key" and delivered:
        s += ',"delivery":"delivered"'
    if epoch is not None:
        s += ',"epoch":' + str(epoch)
    if direction is not None:
        s += ',"direction":"' + direction + '"'
    return s + "}"


def request_body(device_id, key_index, nonce, ct):
    return ('{"v":1,"device_id":' + json_id(device_id) + ',"key_index":' + str(key_index) +
            ',"nonce":"' + b64u(nonce) + '","ct":"' + b64u(ct) + '"}')


# The SM4 suite (docs/protocol.md, "Suites"), from its definition there:
# encrypt-then-MAC with SM4-CTR and HMAC-SM3 under keys derived from K.
SM4_KEYS = set()  # the device keys of SM4-128 cases (derived per case name)


def _hmac_sm3(key, data):
    h = hmac.HMAC(key, hashes.SM3())
    h.update(data)
    return h.finalize()


def sm4_seal(key, nonce, aad, pt):
    ke = _hmac_sm3(key, b"qkms/v1/sm4/enc")[:16]
    km = _hmac_sm3(key, b"qkms/v1/sm4/mac")
    enc = Cipher(algorithms.SM4(ke), modes.CTR(nonce + b"\x00" * 4)).encryptor()
    c = enc.update(pt) + enc.finalize()
    t = _hmac_sm3(km, b"qkms/v1/sm4\n" + struct.pack(">Q", len(aad)) + aad + nonce + c)[:16]
    return c + t


def sm4_opens(key, nonce, aad, ct):
    """The tag verifies (resealing the plaintext gives the same C || T)."""
    return len(ct) >= 16 and sm4_seal(key, nonce, aad, sm4_plain(key, nonce, ct[:-16])) == ct


def sm4_plain(key, nonce, c):
    ke = _hmac_sm3(key, b"qkms/v1/sm4/enc")[:16]
    dec = Cipher(algorithms.SM4(ke), modes.CTR(nonce + b"\x00" * 4)).decryptor()
    return dec.update(c) + dec.finalize()


def seal(key, nonce, aad, pt):
    assert len(key) in (16, 32)
    if key in SM4_KEYS:
        return sm4_seal(key, nonce, aad.encode("ascii"), pt)
    return AESGCM(key).encrypt(nonce, pt, aad.encode("ascii"))


def opens(key, nonce, aad, ct):
    if key in SM4_KEYS:
        return sm4_opens(key, nonce, aad.encode("ascii"), ct)
    try:
        AESGCM(key).decrypt(nonce, ct, aad.encode("ascii"))
        return True
    except InvalidTag:
        return False


def request_case(name, description, op, device_id, key_index, key_len, session_id, ts,
                 peer_id=None, delivered=False, epoch=None, direction=None, sm4=False):
    assert id_ok(device_id) and 0 <= key_index <= 255
    assert (op == "end" and session_id is None) or id_ok(session_id)
    key = derive(name + "/device-key", key_len)
    if sm4:
        assert key_len == 16
        SM4_KEYS.add(key)
    nonce = derive(name + "/request-nonce", 12)
    aad = request_aad(op, device_id, key_index)
    assert (epoch is None and direction is None) or (op == "key" and not delivered)
    pt = inner_plaintext(op, session_id, ts, peer_id, delivered, epoch, direction)
    ct = seal(key, nonce, aad, pt.encode("ascii"))
    body = request_body(device_id, key_index, nonce, ct)

    # Self-checks against the spec's prose, independent of the code above.
    inner = json.loads(pt)
    want = {"session_id": session_id, "ts": ts} if session_id is not None else \
        {"all": True, "ts": ts}
    if op == "key":
        want["peer_id"] = peer_id
        if delivered:
            want["delivery"] = "delivered"
        if epoch is not None:
            want["epoch"] = epoch
        if direction is not None:
            want["direction"] = direction
    assert inner == want, (inner, want)
    env = json.loads(body)
    assert list(env) == ["v", "device_id", "key_index", "nonce", "ct"]
    assert env["device_id"] == device_id and env["key_index"] == key_index
    assert 16 + 1 <= len(ct) <= 16 + 2048 and len(body) <= 8192
    if sm4:
        assert sm4_plain(key, nonce, ct[:-16]) == pt.encode() and opens(key, nonce, aad, ct)
    else:
        assert AESGCM(key).decrypt(nonce, ct, aad.encode()) == pt.encode()

    case = {
        "name": name,
        "description": description,
        "op": op,
        "device_id": device_id,
        "key_index": key_index,
        "device_key": key.hex(),
        "device_key_algorithm": "SM4-128" if sm4 else "AES-128" if key_len == 16 else "AES-256",
    }
    if session_id is None:
        case["all"] = True
    else:
        case["session_id"] = session_id
    if op == "key":
        case["peer_id"] = peer_id
        case["delivered"] = delivered
        if epoch is not None:
            case["epoch"] = epoch
        if direction is not None:
            case["direction"] = direction
    case.update({
        "ts": ts,
        "request_nonce": nonce.hex(),
        "request_nonce_b64u": b64u(nonce),
        "request_path": "/v1/sessions/" + op,
        "request_aad": aad,
        "request_plaintext": pt,
        "request_ct": b64u(ct),
        "request_body": body,
        "expect": "accept",
    })
    return case, key, nonce


def key_id_for(name):
    """A fixed key ID for a case: a version 4 UUID in lower-case text form,
    as kmsd makes them (random bits from derive instead of a RNG)."""
    b = bytearray(derive(name + "/key-id", 16))
    b[6] = (b[6] & 0x0F) | 0x40
    b[8] = (b[8] & 0x3F) | 0x80
    h = b.hex()
    return "-".join((h[:8], h[8:12], h[12:16], h[16:20], h[20:32]))


UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


def response(case, key, req_nonce, key_bits=128, delivery="session", key_id=None,
             expires_at=EXPIRES, resp_nonce=None, sealed_aad=None, current_epoch=None):
    """The server's answer to case's request, sealed correctly unless
    sealed_aad says otherwise. Returns (response dict, raw ct)."""
    name = case["name"]
    key_id = key_id or key_id_for(name)
    assert UUID_RE.fullmatch(key_id), key_id
    skey = derive(name + "/session-key", key_bits // 8)
    if resp_nonce is None:
        resp_nonce = derive(name + "/response-nonce", 12)
    assert resp_nonce != req_nonce or name.endswith("nonce-reuse")
    ext = case_ext(case)
    aad = sealed_aad or response_aad(case["session_id"], case["device_id"], case["key_index"],
                                     key_id, expires_at, b64u(req_nonce), ext)
    ct = seal(key, resp_nonce, aad, skey)
    assert len(ct) == key_bits // 8 + 16
    body = {"v": 1, "session_id": case["session_id"], "key_id": key_id, "key_bits": key_bits,
            "expires_at": expires_at, "delivery": delivery}
    if ext is not None:
        body.update({"epoch": ext[0], "direction": ext[1],
                     "current_epoch": ext[0] if current_epoch is None else current_epoch})
    body.update({"nonce": b64u(resp_nonce), "ct": b64u(ct)})
    return {"session_key": skey.hex(), "key_id": key_id, "expires_at": expires_at,
            "key_bits": key_bits, "delivery": delivery, "nonce": resp_nonce.hex(), "aad": aad,
            "ct": b64u(ct), "body": body}, ct


def stream_aad(stream_id, device_id, key_index, seq, key_id, expires_at, req_nonce_b64u):
    return ("qkms/v1/stream\n" + stream_id + "\n" + device_id + "\n" + str(key_index) + "\n" +
            str(seq) + "\n" + key_id + "\n" + str(expires_at) + "\n" + req_nonce_b64u)


def stream_case(name, description, device_id, key_index, key_len, stream_id, peer_id, seq,
                served_stream=None, low=0, window=16, key_bits=128):
    """A stream key request (stream_id None: open or join) and its answer
    (served_stream: the stream ID the answer names)."""
    assert id_ok(device_id) and id_ok(peer_id) and seq >= 0
    key = derive(name + "/device-key", key_len)
    nonce = derive(name + "/request-nonce", 12)
    aad = request_aad("stream", device_id, key_index)
    pt = "{"
    if stream_id is not None:
        pt += '"stream_id":' + json_id(stream_id) + ","
    pt += '"peer_id":' + json_id(peer_id) + ',"seq":' + str(seq) + ',"ts":' + str(TS) + "}"
    want = {"peer_id": peer_id, "seq": seq, "ts": TS}
    if stream_id is not None:
        want["stream_id"] = stream_id
    assert json.loads(pt) == want
    ct = seal(key, nonce, aad, pt.encode("ascii"))
    body = request_body(device_id, key_index, nonce, ct)
    case = {"name": name, "description": description, "op": "stream", "device_id": device_id,
            "key_index": key_index, "device_key": key.hex(),
            "device_key_algorithm": "AES-128" if key_len == 16 else "AES-256"}
    if stream_id is not None:
        case["stream_id"] = stream_id
    case.update({"peer_id": peer_id, "seq": seq, "ts": TS, "request_nonce": nonce.hex(),
                 "request_nonce_b64u": b64u(nonce), "request_path": "/v1/streams/key",
                 "request_aad": aad, "request_plaintext": pt, "request_ct": b64u(ct),
                 "request_body": body, "expect": "accept"})
    served = served_stream or stream_id
    key_id = key_id_for(name)
    skey = derive(name + "/session-key", key_bits // 8)
    resp_nonce = derive(name + "/response-nonce", 12)
    raad = stream_aad(served, device_id, key_index, seq, key_id, EXPIRES, b64u(nonce))
    rct = seal(key, resp_nonce, raad, skey)
    assert low <= seq < low + window
    case["response"] = {
        "session_key": skey.hex(), "key_id": key_id, "expires_at": EXPIRES, "key_bits": key_bits,
        "stream_id": served, "seq": seq, "low": low, "window": window,
        "nonce": resp_nonce.hex(), "aad": raad, "ct": b64u(rct),
        "body": {"v": 1, "stream_id": served, "seq": seq, "key_id": key_id,
                 "key_bits": key_bits, "expires_at": EXPIRES, "low": low, "window": window,
                 "nonce": b64u(resp_nonce), "ct": b64u(rct)}}
    return case


def good_cases():
    out = []

    def key_case(name, desc, device_id, key_index, key_len, session_id, peer_id,
                 delivered=False, key_bits=128, epoch=None, direction=None, current_epoch=None,
                 sm4=False):
        case, key, nonce = request_case(name, desc, "key", device_id, key_index, key_len,
                                        session_id, TS, peer_id, delivered, epoch, direction, sm4)
        case["response"], _ = response(case, key, nonce, key_bits=key_bits,
                                       delivery="delivered" if delivered else "session",
                                       current_epoch=current_epoch)
        out.append(case)

    key_case("key-aes128", "key request under an AES-128 device key, index 0; 128-bit session key",
             "VIN-0001", 0, 16, "S-1", "ENC-0001")
    key_case("key-aes256-session256",
             "AES-256 device key, index 1; 256-bit session key (a key_bits 256 policy)",
             "METER-42", 1, 32, "S-2", "GW-7", key_bits=256)
    key_case("key-quote-index255",
             "a session ID with double quotes (escaped as \\\" in the inner JSON, raw in the AADs); "
             "key index 255",
             "VIN-0001", 255, 16, 'S"quoted"-3', "ENC-0001")
    key_case("key-delivered",
             "single-transfer mode: \"delivery\":\"delivered\" at the end of the inner request; "
             "AES-256 device key, 128-bit session key",
             "ENC-0001", 2, 32, "S-4", "VIN-0001", delivered=True)
    key_case("key-quotes-everywhere-maxlen",
             "double quotes in the device ID (escaped in the body) and peer ID; a 128-character "
             "session ID; 256-bit session key under an AES-128 device key",
             'dev"ice"-5', 7, 16,
             "L" + "".join(chr(0x21 + (i * 7) % 94) for i in range(127)).replace("/", "a")
             .replace("\\", "b").replace("%", "c").replace("?", "d").replace("#", "e"),
             'p"eer', key_bits=256)

    key_case("key-epoch1-a2b", "the a2b key of epoch 1 (\"epoch\" then \"direction\" after ts; "
             "both at the end of the response AAD)", "VIN-0001", 0, 16, "S-5", "ENC-0001",
             epoch=1, direction="a2b")
    key_case("key-epoch2-older", "epoch 2's shared key while the session is at epoch 3 "
             "(direction \"\" in the answer and the AAD); 256-bit key, AES-256 device key",
             "ENC-0001", 3, 32, "S-6", "VIN-0001", epoch=2, key_bits=256, current_epoch=3)
    key_case("key-direction-only", "only a direction: epoch 0's b2a key (epoch 0 in the answer "
             "and the AAD)", "METER-42", 1, 16, "S-7", "GW-7", direction="b2a")

    def end_case(name, desc, device_id, key_index, key_len, session_id, sm4=False):
        case, _, _ = request_case(name, desc, "end", device_id, key_index, key_len, session_id, TS,
                                  sm4=sm4)
        out.append(case)

    key_case("key-sm4", "the SM4 suite (docs/protocol.md, \"Suites\"): request and answer "
             "sealed with SM4-CTR and HMAC-SM3 under an SM4-128 device key; 128-bit session key",
             "METER-SM4", 0, 16, "S-sm4", "GW-7", sm4=True)
    key_case("key-sm4-epoch-256", "the SM4 suite with an epoch and a direction (their AAD tail) "
             "and a 256-bit session key", "METER-SM4", 3, 16, "S-sm4-2", "GW-7", epoch=2,
             direction="b2a", key_bits=256, sm4=True)

    end_case("end-aes128", "end request under an AES-128 device key", "VIN-0001", 0, 16, "S-1")
    end_case("end-sm4", "end request under an SM4-128 device key (the SM4 suite)", "METER-SM4", 1,
             16, "S-sm4", sm4=True)
    end_case("end-aes256-quote", "end request under an AES-256 device key, index 255, for a "
             "session ID with double quotes", "ENC-0001", 255, 32, 'S"quoted"-3')
    end_case("end-all", "end of every session of the device (\"all\":true, no session_id), "
             "under an AES-128 device key", "VIN-0001", 1, 16, None)
    out.append(stream_case("stream-open", "a key stream's key 0, opening (or joining) the pair's "
                           "stream: no stream_id in the request; the answer names the stream",
                           "VIN-0001", 0, 16, None, "ENC-0001", 0,
                           served_stream="0b7e4c1a-5d2f-4e8a-9c3b-7f6a1d2e3c4b"))
    out.append(stream_case("stream-named-seq9", "key 9 of a named stream whose low is 4 (window "
                           "16); 256-bit key under an AES-256 device key",
                           "ENC-0001", 2, 32, "0b7e4c1a-5d2f-4e8a-9c3b-7f6a1d2e3c4b", "VIN-0001", 9,
                           low=4, key_bits=256))
    return out


def reject_cases():
    out = []

    def base(name, desc, must_fail, key_len=16, key_index=0, sm4=False):
        case, key, nonce = request_case(name, desc, "key", "VIN-0001", key_index, key_len,
                                        "R-" + name, TS, "ENC-0001", sm4=sm4)
        case["expect"] = "reject"
        case["must_fail"] = must_fail
        return case, key, nonce

    def client_aad(case, body):
        return response_aad(case["session_id"], case["device_id"], case["key_index"],
                            body["key_id"], body["expires_at"], case["request_nonce_b64u"],
                            case_ext(case))

    def add(case, key, nonce, resp, differs):
        """Adds a reject case whose body differs from the valid response to
        the same request (same session key, key ID, expiry and key length)
        in exactly the fields differs names, and in nothing else."""
        valid, _ = response(case, key, nonce, key_bits=resp["key_bits"])
        vb, rb = valid["body"], resp["body"]
        missing = object()
        diff = sorted(k for k in set(vb) | set(rb) if vb.get(k, missing) != rb.get(k, missing))
        assert diff == sorted(differs), (case["name"], diff, differs)
        vnonce, vct, vaad = unb64u(vb["nonce"]), unb64u(vb["ct"]), client_aad(case, vb)
        if key in SM4_KEYS:
            assert opens(key, vnonce, vaad, vct)
            assert sm4_plain(key, vnonce, vct[:-16]) == bytes.fromhex(resp["session_key"])
        else:
            assert AESGCM(key).decrypt(vnonce, vct, vaad.encode()) == \
                bytes.fromhex(resp["session_key"])
        case["response"] = resp
        case["valid_body"] = vb
        case["differs_in"] = sorted(differs)
        out.append(case)

    # aead: a flipped bit in the ciphertext.
    case, key, nonce = base("reject-tampered-ct", "one bit of the response ct flipped", "aead")
    resp, ct = response(case, key, nonce)
    bad = bytes([ct[0] ^ 0x01]) + ct[1:]
    resp["body"]["ct"] = b64u(bad)
    assert not opens(key, bytes.fromhex(resp["nonce"]), client_aad(case, resp["body"]), bad)
    add(case, key, nonce, resp, ["ct"])

    # aead, the SM4 suite: a flipped bit in the tag (HMAC-SM3 refuses it
    # before anything is decrypted).
    case, key, nonce = base("reject-sm4-tampered-tag", "the SM4 suite: one bit of the response "
                            "tag flipped", "aead", sm4=True)
    resp, ct = response(case, key, nonce)
    bad = ct[:-1] + bytes([ct[-1] ^ 0x01])
    resp["body"]["ct"] = b64u(bad)
    assert not opens(key, bytes.fromhex(resp["nonce"]), client_aad(case, resp["body"]), bad)
    add(case, key, nonce, resp, ["ct"])

    # aead: sealed for another request (a response replayed to this one).
    case, key, nonce = base("reject-aad-other-request-nonce",
                            "the response AAD names another request's nonce (an old response "
                            "replayed to this request)", "aead")
    other = b64u(derive("reject-aad-other-request-nonce/other-request", 12))
    key_id = key_id_for(case["name"])
    resp, ct = response(case, key, nonce, key_id=key_id, sealed_aad=response_aad(
        case["session_id"], case["device_id"], case["key_index"], key_id, EXPIRES, other))
    assert not opens(key, bytes.fromhex(resp["nonce"]), client_aad(case, resp["body"]), ct)
    add(case, key, nonce, resp, ["ct"])

    # aead: key_id or expires_at in the body differ from what was sealed.
    for name, field, value in (("reject-key-id-changed", "key_id",
                                "00000000-0000-4000-8000-000000000000"),
                               ("reject-expires-changed", "expires_at", EXPIRES + 86400)):
        case, key, nonce = base(name, f"the body's {field} is not the one the AAD was sealed with",
                                "aead")
        resp, ct = response(case, key, nonce)
        assert resp["body"][field] != value
        resp["body"][field] = value
        assert not opens(key, bytes.fromhex(resp["nonce"]), client_aad(case, resp["body"]), ct)
        add(case, key, nonce, resp, [field])

    # key_bits: claims 256 for a 128-bit ct, and 128 for a 256-bit ct.
    for name, sealed_bits, claimed in (("reject-key-bits-256-for-128", 128, 256),
                                       ("reject-key-bits-128-for-256", 256, 128)):
        case, key, nonce = base(name, f"key_bits says {claimed} but ct holds a {sealed_bits}-bit "
                                "key (key_bits is not in the AAD: only this check catches it)",
                                "key_bits")
        resp, ct = response(case, key, nonce, key_bits=sealed_bits)
        resp["body"]["key_bits"] = claimed
        assert opens(key, bytes.fromhex(resp["nonce"]), client_aad(case, resp["body"]), ct)
        add(case, key, nonce, resp, ["key_bits"])

    # session_id: the body names another session; sealed for this request,
    # so the AEAD (which uses the request's session ID) would open.
    case, key, nonce = base("reject-other-session", "the body names another session ID",
                            "session_id")
    resp, ct = response(case, key, nonce)
    resp["body"]["session_id"] = "R-some-other-session"
    assert opens(key, bytes.fromhex(resp["nonce"]), client_aad(case, resp["body"]), ct)
    add(case, key, nonce, resp, ["session_id"])

    # version
    case, key, nonce = base("reject-version-2", "v is 2", "version")
    resp, ct = response(case, key, nonce)
    resp["body"]["v"] = 2
    assert opens(key, bytes.fromhex(resp["nonce"]), client_aad(case, resp["body"]), ct)
    add(case, key, nonce, resp, ["v"])

    # nonce_reuse: correctly sealed, but with the request's own nonce.
    case, key, nonce = base("reject-nonce-reuse", "the response is sealed with the request's nonce "
                            "(nonce reuse under the device key); it otherwise verifies",
                            "nonce_reuse")
    resp, ct = response(case, key, nonce, resp_nonce=nonce)
    assert resp["body"]["nonce"] == case["request_nonce_b64u"]
    assert opens(key, nonce, client_aad(case, resp["body"]), ct)
    add(case, key, nonce, resp, ["nonce", "ct"])

    # nonce_length: a 16-byte response nonce; AES-GCM accepts it, the
    # protocol (12 bytes) does not.
    case, key, nonce = base("reject-nonce-16-bytes", "a 16-byte response nonce (correctly sealed "
                            "with it: AES-GCM allows other lengths, the protocol does not)",
                            "nonce_length")
    n16 = derive(case["name"] + "/response-nonce-16", 16)
    resp, ct = response(case, key, nonce, resp_nonce=n16)
    assert opens(key, n16, client_aad(case, resp["body"]), ct)
    add(case, key, nonce, resp, ["nonce", "ct"])

    # epoch: the body names another epoch than asked; sealed for the asked
    # one (the client's AAD uses its request's), so the AEAD would open.
    case, key, nonce = request_case("reject-other-epoch", "the body names epoch 2 for a request "
                                    "for epoch 1 (the AAD was sealed for epoch 1)", "key",
                                    "VIN-0001", 0, 16, "S-epoch", TS, "ENC-0001", epoch=1)
    case["expect"] = "reject"
    case["must_fail"] = "epoch"
    resp, ct = response(case, key, nonce, current_epoch=2)
    resp["body"]["epoch"] = 2
    assert opens(key, bytes.fromhex(resp["nonce"]), client_aad(case, resp["body"]), ct)
    valid, _ = response(case, key, nonce, current_epoch=2)
    assert {k for k in valid["body"] if valid["body"][k] != resp["body"][k]} == {"epoch"}
    case["response"] = resp
    case["valid_body"] = valid["body"]
    case["differs_in"] = ["epoch"]
    out.append(case)

    # b64u: padding; non-zero unused trailing bits (a 32-byte ct is 43
    # characters whose last one carries 2 unused bits).
    case, key, nonce = base("reject-ct-padded", "ct carries '=' padding", "b64u")
    resp, ct = response(case, key, nonce)
    assert len(resp["body"]["ct"]) == 43
    resp["body"]["ct"] += "="
    add(case, key, nonce, resp, ["ct"])

    case, key, nonce = base("reject-ct-trailing-bits", "the unused low bits of ct's last character "
                            "are not zero (a lax decoder gets the right bytes)", "b64u")
    resp, ct = response(case, key, nonce)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    s = resp["body"]["ct"]
    assert len(ct) % 3 == 2 and alphabet.index(s[-1]) & 3 == 0
    lax = s[:-1] + alphabet[alphabet.index(s[-1]) | 1]
    assert base64.urlsafe_b64decode(lax + "=") == ct  # the same bytes for a lax decoder
    resp["body"]["ct"] = lax
    assert opens(key, bytes.fromhex(resp["nonce"]), client_aad(case, resp["body"]), ct)
    add(case, key, nonce, resp, ["ct"])
    return out


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(here, "protocol-v1.json")
    cases = good_cases() + reject_cases()
    names = [c["name"] for c in cases]
    assert len(set(names)) == len(names)
    # No nonce is used twice under one device key, except where a case is
    # about exactly that.
    seen = set()
    for c in cases:
        uses = [c["request_nonce"]]
        if "response" in c and c.get("must_fail") != "nonce_reuse":
            uses.append(c["response"]["nonce"])
        for n in uses:
            assert (c["device_key"], n) not in seen, c["name"]
            seen.add((c["device_key"], n))
    text = json.dumps(cases, indent=1, ensure_ascii=True) + "\n"
    with open(out, "w", encoding="ascii", newline="\n") as f:
        f.write(text)
    print(f"{out}: {len(cases)} cases")


if __name__ == "__main__":
    main()
