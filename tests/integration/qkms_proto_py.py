"""An independent Python implementation of the qkms device protocol v1
(docs/protocol.md), for end-to-end tests: it shares no code with the C
implementations in device/ and kmsd/, so the two check each other.

    dev = Device.from_fill(fill_document_dict)
    req = dev.key_request("S-1", "PEER", index=0)       # -> Request
    r = requests.post(url + req.path, json=req.body)     # or data=req.raw
    key = dev.open_key_response(req, r.json())           # -> SessionKey
"""
import base64
import json
import os
import time
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import constant_time, hashes, hmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM


class ProtocolError(Exception):
    pass


# -- the suites (docs/protocol.md, "Suites") ------------------------------------

def _hmac_sm3(key: bytes, *parts: bytes) -> bytes:
    h = hmac.HMAC(key, hashes.SM3())
    for p in parts:
        h.update(p)
    return h.finalize()


def _sm4_keys(key: bytes):
    if len(key) != 16:
        raise ValueError("an SM4 key is 16 bytes")
    return _hmac_sm3(key, b"qkms/v1/sm4/enc")[:16], _hmac_sm3(key, b"qkms/v1/sm4/mac")


def _sm4_tag(km: bytes, nonce: bytes, aad: bytes, c: bytes) -> bytes:
    return _hmac_sm3(km, b"qkms/v1/sm4\n", len(aad).to_bytes(8, "big"), aad, nonce, c)[:16]


def _sm4_ctr(ke: bytes, nonce: bytes, data: bytes) -> bytes:
    e = Cipher(algorithms.SM4(ke), modes.CTR(nonce + bytes(4))).encryptor()
    return e.update(data) + e.finalize()


def seal(suite: str, key: bytes, nonce: bytes, aad: bytes, pt: bytes) -> bytes:
    """AEAD of the v1 envelope in the key's suite: "aes" (AES-GCM) or "sm4"
    (SM4-CTR, then HMAC-SM3 over the AAD, nonce and ciphertext)."""
    if suite == "aes":
        return AESGCM(key).encrypt(nonce, pt, aad)
    ke, km = _sm4_keys(key)
    c = _sm4_ctr(ke, nonce, pt)
    return c + _sm4_tag(km, nonce, aad, c)


def open_(suite: str, key: bytes, nonce: bytes, aad: bytes, ct: bytes) -> bytes:
    """seal's inverse; InvalidTag when it does not verify (as AESGCM)."""
    if suite == "aes":
        return AESGCM(key).decrypt(nonce, ct, aad)
    ke, km = _sm4_keys(key)
    if len(ct) < 16 or not constant_time.bytes_eq(_sm4_tag(km, nonce, aad, ct[:-16]), ct[-16:]):
        raise InvalidTag()
    return _sm4_ctr(ke, nonce, ct[:-16])


def suite_of(algorithm: str) -> str:
    return {"AES-128": "aes", "AES-256": "aes", "SM4-128": "sm4"}[algorithm]


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64u_decode(s: str) -> bytes:
    if not isinstance(s, str) or "=" in s or len(s) % 4 == 1:
        raise ProtocolError("bad base64url")
    raw = base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))
    if b64u(raw) != s:  # non-canonical (non-zero trailing bits)
        raise ProtocolError("non-canonical base64url")
    return raw


def request_aad(op: str, device_id: str, key_index: int) -> bytes:
    return f"qkms/v1/req\n{op}\n{device_id}\n{key_index}".encode()


def response_aad(session_id, device_id, key_index, key_id, expires_at, req_nonce_b64,
                 epoch=None, direction=None) -> bytes:
    """The response AAD; a request that named an epoch or a direction has
    both appended (docs/protocol.md, "Epochs and direction keys")."""
    aad = (f"qkms/v1/resp\n{session_id}\n{device_id}\n{key_index}\n{key_id}\n"
           f"{expires_at}\n{req_nonce_b64}")
    if epoch is not None:
        aad += f"\n{epoch}\n{direction or ''}"
    return aad.encode()


@dataclass
class Request:
    op: str
    path: str
    body: dict
    raw: bytes
    nonce_b64: str
    session_id: str
    key_index: int
    epoch: object = None      # an ext request: the epoch asked for (int)
    direction: object = None  # and the direction ("" for none)


def stream_aad(stream_id, device_id, key_index, seq, key_id, expires_at, req_nonce_b64) -> bytes:
    return (f"qkms/v1/stream\n{stream_id}\n{device_id}\n{key_index}\n{seq}\n{key_id}\n"
            f"{expires_at}\n{req_nonce_b64}").encode()


@dataclass
class StreamKey:
    stream_id: str
    seq: int
    key_id: str
    key: bytes
    expires_at: int
    low: int
    window: int


@dataclass
class SessionKey:
    session_id: str
    key_id: str
    key: bytes
    expires_at: int
    delivery: str
    epoch: object = None          # ext answers: the key's epoch,
    direction: object = None      # its direction,
    current_epoch: object = None  # and the session's current epoch


class Device:
    def __init__(self, device_id: str, keys: dict, suites: dict = None):
        self.device_id = device_id
        self.keys = keys  # index -> bytes
        self.suites = suites or {}  # index -> "aes" (the default) or "sm4"

    @classmethod
    def from_fill(cls, doc: dict) -> "Device":
        return cls(doc["device_id"], {k["index"]: bytes.fromhex(k["key"]) for k in doc["keys"]},
                   {k["index"]: suite_of(k.get("algorithm", "AES-128")) for k in doc["keys"]})

    def _request(self, op, inner: dict, index, nonce=None) -> Request:
        key = self.keys[index]
        nonce = nonce if nonce is not None else os.urandom(12)
        plaintext = json.dumps(inner, separators=(",", ":")).encode()
        ct = seal(self.suites.get(index, "aes"), key, nonce, request_aad(op, self.device_id, index),
                  plaintext)
        body = {"v": 1, "device_id": self.device_id, "key_index": index, "nonce": b64u(nonce),
                "ct": b64u(ct)}
        raw = json.dumps(body, separators=(",", ":")).encode()
        return Request(op, f"/v1/sessions/{op}", body, raw, body["nonce"],
                       inner.get("session_id"), index)

    def login_request(self, tid, password, index=0, ts=None, nonce=None) -> Request:
        """A gateway login (docs/gateways.md, "Login"): op "login" under the
        access key, to POST /v1/gateway/login."""
        req = self._gateway_request("login", {"tid": tid, "password": password,
                                              "ts": int(time.time()) if ts is None else ts},
                                    index, nonce)
        return req

    def logout_request(self, index=0, ts=None, nonce=None) -> Request:
        return self._gateway_request("logout", {"ts": int(time.time()) if ts is None else ts},
                                     index, nonce)

    def _gateway_request(self, op, inner, index, nonce):
        key = self.keys[index]
        nonce = nonce if nonce is not None else os.urandom(12)
        plaintext = json.dumps(inner, separators=(",", ":")).encode()
        ct = seal(self.suites.get(index, "aes"), key, nonce, request_aad(op, self.device_id, index),
                  plaintext)
        body = {"v": 1, "device_id": self.device_id, "key_index": index, "nonce": b64u(nonce),
                "ct": b64u(ct)}
        raw = json.dumps(body, separators=(",", ":")).encode()
        return Request(op, f"/v1/gateway/{op}", body, raw, body["nonce"], None, index)

    def open_login_response(self, req: Request, resp: dict) -> SessionKey:
        """The login key: sealed as a session key whose session ID is the
        login ID the platform chose (its delivery is "session")."""
        if set(resp) != {"v", "login_id", "key_id", "key_bits", "expires_at", "nonce", "ct"}:
            raise ProtocolError("not a login response")
        as_key = dict(resp, session_id=resp["login_id"], delivery="session")
        del as_key["login_id"]
        return self.open_key_response(Request(req.op, req.path, req.body, req.raw, req.nonce_b64,
                                              resp["login_id"], req.key_index), as_key)

    def key_request(self, session_id, peer_id, index=0, ts=None, delivered=False, nonce=None,
                    epoch=None, direction=None):
        """epoch (int) and/or direction ("a2b", "b2a") ask for one of the
        session's other keys; the inner request then carries them after
        ts, epoch first."""
        inner = {"session_id": session_id, "peer_id": peer_id,
                 "ts": int(time.time()) if ts is None else ts}
        if delivered:
            inner["delivery"] = "delivered"
        if epoch is not None:
            inner["epoch"] = epoch
        if direction is not None:
            inner["direction"] = direction
        req = self._request("key", inner, index, nonce)
        if epoch is not None or direction is not None:
            req.epoch = 0 if epoch is None else epoch
            req.direction = direction or ""
        return req

    def end_request(self, session_id, index=0, ts=None, nonce=None):
        return self._request("end", {"session_id": session_id,
                                     "ts": int(time.time()) if ts is None else ts}, index, nonce)

    # -- key streams (docs/protocol.md, "Key streams") ------------------------
    def _stream_request(self, op, path, inner, index, nonce):
        key = self.keys[index]
        nonce = nonce if nonce is not None else os.urandom(12)
        plaintext = json.dumps(inner, separators=(",", ":")).encode()
        ct = seal(self.suites.get(index, "aes"), key, nonce, request_aad(op, self.device_id, index),
                  plaintext)
        body = {"v": 1, "device_id": self.device_id, "key_index": index, "nonce": b64u(nonce),
                "ct": b64u(ct)}
        raw = json.dumps(body, separators=(",", ":")).encode()
        req = Request(op, path, body, raw, body["nonce"], inner.get("stream_id"), index)
        req.seq = inner.get("seq")
        return req

    def stream_request(self, peer_id, seq, stream_id=None, index=0, ts=None, nonce=None):
        """Key seq of the stream with peer_id: the one named stream_id, or
        without it the pair's live stream (opened if there is none)."""
        inner = {}
        if stream_id is not None:
            inner["stream_id"] = stream_id
        inner.update({"peer_id": peer_id, "seq": seq,
                      "ts": int(time.time()) if ts is None else ts})
        return self._stream_request("stream", "/v1/streams/key", inner, index, nonce)

    def stream_end_request(self, stream_id, index=0, ts=None, nonce=None):
        return self._stream_request("stream_end", "/v1/streams/end",
                                    {"stream_id": stream_id,
                                     "ts": int(time.time()) if ts is None else ts}, index, nonce)

    def open_stream_response(self, req: Request, resp: dict) -> StreamKey:
        def is_int(x):
            return type(x) is int
        want = {"v", "stream_id", "seq", "key_id", "key_bits", "expires_at", "low", "window",
                "nonce", "ct"}
        if set(resp) != want or resp["v"] != 1 or not all(
                is_int(resp[f]) for f in ("seq", "key_bits", "expires_at", "low", "window")):
            raise ProtocolError("not a stream key answer")
        if resp["seq"] != req.seq or (req.session_id is not None
                                      and resp["stream_id"] != req.session_id):
            raise ProtocolError("the answer is for another stream or seq")
        if resp["low"] < 0 or not 1 <= resp["window"] <= 1024 or \
                not resp["low"] <= resp["seq"] < resp["low"] + resp["window"]:
            raise ProtocolError("seq outside the answer's window")
        ct = b64u_decode(resp["ct"])
        if resp["key_bits"] not in (128, 256) or len(ct) != resp["key_bits"] // 8 + 16:
            raise ProtocolError("key_bits does not match the ciphertext")
        nonce = b64u_decode(resp["nonce"])
        if len(nonce) != 12 or nonce == b64u_decode(req.nonce_b64):
            raise ProtocolError("response nonce is not 12 bytes or reuses the request nonce")
        aad = stream_aad(resp["stream_id"], self.device_id, req.key_index, resp["seq"],
                         resp["key_id"], resp["expires_at"], req.nonce_b64)
        key = open_(self.suites.get(req.key_index, "aes"), self.keys[req.key_index], nonce, aad, ct)
        return StreamKey(resp["stream_id"], resp["seq"], resp["key_id"], key, resp["expires_at"],
                         resp["low"], resp["window"])

    def end_all_request(self, index=0, ts=None, nonce=None):
        """An end of every session of the device (a power-down)."""
        return self._request("end", {"all": True, "ts": int(time.time()) if ts is None else ts},
                             index, nonce)

    @staticmethod
    def open_end_all_response(resp: dict) -> int:
        """The number of sessions ended, from a 200 answer to end_all_request
        (like every end answer, it carries no AEAD); its streams_ended is
        checked and left in the answer."""
        n, m = resp.get("sessions_ended"), resp.get("streams_ended")
        if (set(resp) != {"v", "all", "ended", "sessions_ended", "streams_ended"}
                or type(resp["v"]) is not int or resp["v"] != 1 or resp["all"] is not True
                or resp["ended"] is not True or type(n) is not int or n < 0
                or type(m) is not int or m < 0):
            raise ProtocolError("not an answer to an end of all sessions")
        return n

    def open_key_response(self, req: Request, resp: dict) -> SessionKey:
        def is_int(x):  # JSON integers only: not true/false, not 1.0
            return type(x) is int
        if not is_int(resp.get("v")) or resp["v"] != 1 or resp.get("session_id") != req.session_id:
            raise ProtocolError("response is for another session or version")
        if resp.get("delivery") not in ("session", "delivered") or not is_int(resp.get("expires_at")):
            raise ProtocolError("bad delivery or expires_at")
        bits = resp["key_bits"]
        if not is_int(bits):
            raise ProtocolError("key_bits is not an integer")
        ct = b64u_decode(resp["ct"])
        if bits not in (128, 256) or len(ct) != bits // 8 + 16:
            raise ProtocolError("key_bits does not match the ciphertext")
        ext = req.epoch is not None
        if ext:
            if (resp.get("epoch") != req.epoch or type(resp.get("epoch")) is not int
                    or resp.get("direction") != req.direction
                    or not is_int(resp.get("current_epoch"))
                    or resp["current_epoch"] < req.epoch):
                raise ProtocolError("epoch, direction or current_epoch is not the request's")
        elif any(f in resp for f in ("epoch", "direction", "current_epoch")):
            raise ProtocolError("an epoch in the answer to a request without one")
        aad = response_aad(req.session_id, self.device_id, req.key_index, resp["key_id"],
                           resp["expires_at"], req.nonce_b64,
                           *((req.epoch, req.direction) if ext else ()))
        nonce = b64u_decode(resp["nonce"])
        # AES-GCM would take other nonce lengths; the protocol's are 12 bytes.
        # A response sealed with the request's nonce means the server reused
        # a nonce under the device key.
        if len(nonce) != 12 or nonce == b64u_decode(req.nonce_b64):
            raise ProtocolError("response nonce is not 12 bytes or reuses the request nonce")
        key = open_(self.suites.get(req.key_index, "aes"), self.keys[req.key_index], nonce, aad, ct)
        return SessionKey(resp["session_id"], resp["key_id"], key, resp["expires_at"],
                          resp["delivery"], resp.get("epoch"), resp.get("direction"),
                          resp.get("current_epoch"))
