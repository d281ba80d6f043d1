"""docs/protocol.md's promises that an independent client relies on, each
checked against the real server: the envelope's error codes (malformed_json
vs malformed_request, 404/405/413/415), the inner request's form and `ts`
type, who decides the delivery mode (the responder's flag has no effect),
what "single transfer" allows, and what a party whose answer was lost does."""
import json
import os
import time
import uuid

import pytest
import requests
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

import qkms_proto_py as qp
from conftest import _finish
from helpers import ask_key, error_code, get_key, make_device, post, veh_enc_stack


@pytest.fixture(scope="module")
def st():
    s = veh_enc_stack("qkms-protodoc", {})
    yield s
    _finish(s)


@pytest.fixture
def pair(st):
    return make_device(st, "vehicle", st.group), make_device(st, "encryptor", st.group)


def sid():
    return "S-" + uuid.uuid4().hex[:12]


def raw_post(st, path, data, ctype="application/json"):
    return requests.post(st.url + path, data=data, headers={"Content-Type": ctype}, timeout=30)


def sealed(dev, plaintext: bytes, op="key", index=0):
    """An envelope around an arbitrary inner plaintext, correctly sealed."""
    nonce = os.urandom(12)
    ct = AESGCM(dev.keys[index]).encrypt(nonce, plaintext, qp.request_aad(op, dev.device_id, index))
    return json.dumps({"v": 1, "device_id": dev.device_id, "key_index": index,
                       "nonce": qp.b64u(nonce), "ct": qp.b64u(ct)}).encode()


def test_envelope_errors(st, pair):
    veh, enc = pair
    good = veh.key_request(sid(), enc.device_id).raw.decode()
    cases = [
        (b"not json", 400, "malformed_json"),
        (b"", 400, "malformed_json"),
        (b'["v"]', 400, "malformed_json"),
        (good.replace('{"v":1,', '{"v":1,"v":1,').encode(), 400, "malformed_json"),  # duplicate
        (good.replace('{"v":1,', '{"v":1,"x":0,').encode(), 400, "malformed_request"),
        (good.replace('"v":1', '"v":2').encode(), 400, "malformed_request"),
        (good.replace('"key_index":0', '"key_index":256').encode(), 400, "malformed_request"),
        (b'{"v":1}', 400, "malformed_request"),
        (b'{"pad":"' + b"a" * 9000 + b'"}', 413, "payload_too_large"),
    ]
    for body, status, code in cases:
        r = raw_post(st, "/v1/sessions/key", body)
        assert (r.status_code, error_code(r)) == (status, code), (body[:60], r.text)
    r = raw_post(st, "/v1/sessions/key", good.encode(), "text/plain")
    assert (r.status_code, error_code(r)) == (415, "unsupported_media_type")
    r = raw_post(st, "/v1/sessions/key", good.encode(), "application/json; charset=utf-8")
    assert r.status_code == 200, r.text
    r = requests.get(st.url + "/v1/sessions/key", timeout=30)
    assert (r.status_code, error_code(r)) == (405, "method_not_allowed")
    assert r.headers["Allow"] == "POST"
    r = raw_post(st, "/v1/sessions/other", good.encode())
    assert (r.status_code, error_code(r)) == (404, "not_found")


def test_inner_request_form(st, pair):
    """No canonical form: whitespace and member order are free; duplicate
    members, trailing bytes and a non-object are 422 invalid_request."""
    veh, enc = pair
    now = int(time.time())
    s = sid()
    loose = f'{{ "ts" : {now},\n "peer_id":"{enc.device_id}" , "session_id":"{s}" }}  '.encode()
    r = raw_post(st, "/v1/sessions/key", sealed(veh, loose))
    assert r.status_code == 200 and r.json()["session_id"] == s, r.text
    bad = [
        f'{{"session_id":"{s}","session_id":"{s}","peer_id":"{enc.device_id}","ts":{now}}}',
        f'{{"session_id":"{s}","peer_id":"{enc.device_id}","ts":{now}}} x',
        f'\ufeff{{"session_id":"{s}","peer_id":"{enc.device_id}","ts":{now}}}',
        f'["{s}"]',
    ]
    for pt in bad:
        r = raw_post(st, "/v1/sessions/key", sealed(veh, pt.encode()))
        assert (r.status_code, error_code(r)) == (422, "invalid_request"), (pt, r.text)


@pytest.mark.parametrize("ts", ["{now}.0", "{now}e0", '"{now}"', "null", "true",
                                "99999999999999999999"])
def test_ts_must_be_a_json_integer(st, pair, ts):
    veh, enc = pair
    pt = f'{{"session_id":"{sid()}","peer_id":"{enc.device_id}","ts":{ts.format(now=int(time.time()))}}}'
    r = raw_post(st, "/v1/sessions/key", sealed(veh, pt.encode()))
    assert (r.status_code, error_code(r)) == (422, "invalid_request"), r.text


def test_responder_flag_has_no_effect(st, pair):
    """The request that creates the session fixes its mode; the responder's
    "delivered" is accepted, not applied, and the answer says so."""
    veh, enc = pair
    s = sid()
    a = get_key(st, veh, s, enc)
    b = get_key(st, enc, s, veh, delivered=True)
    assert (a.delivery, b.delivery) == ("session", "session")
    assert a.key == b.key and a.key_id == b.key_id
    # Both hold the key and the session lives on (it would be gone in
    # delivered mode).
    again = get_key(st, veh, s, enc, delivered=True)
    assert again.key_id == a.key_id and again.delivery == "session"
    assert st.admin("GET", f"/v1/admin/sessions/{s}").json()["state"] != "ended"


def test_single_transfer_until_both_have_it(st, pair):
    """delivered: a party may receive the key more than once until the other
    party has it; then the key is gone (409) and the tombstone says why."""
    veh, enc = pair
    s = sid()
    a1 = get_key(st, veh, s, enc, delivered=True)
    a2 = get_key(st, veh, s, enc)  # received twice: the other party has not asked yet
    assert a1.delivery == a2.delivery == "delivered" and a1.key == a2.key
    b = get_key(st, enc, s, veh)  # no flag: the session's mode applies
    assert b.delivery == "delivered" and b.key == a1.key
    for dev, peer in ((enc, veh), (veh, enc)):  # e.g. the second party's answer was lost
        _, r = ask_key(st, dev, s, peer)
        assert (r.status_code, error_code(r)) == (409, "session_ended"), r.text
    t = st.admin("GET", f"/v1/admin/sessions/{s}").json()
    assert t["state"] == "ended" and t["reason"] == "delivered" and t["key_id"] == a1.key_id


def test_lost_answer_new_request_not_the_same_body(st, pair):
    veh, enc = pair
    s = sid()
    req, r = ask_key(st, veh, s, enc)
    assert r.status_code == 200
    # Resending the very same body is a replay, whatever happened to the answer.
    r2 = post(st, req)
    assert (r2.status_code, error_code(r2)) == (401, "unauthenticated")
    # A new request (fresh nonce and ts) gets the same key.
    k = get_key(st, veh, s, enc)
    assert k.key_id == r.json()["key_id"] and k.key == veh.open_key_response(req, r.json()).key


def test_policy_delivered_cannot_be_turned_off(st):
    group = "d-" + uuid.uuid4().hex[:6]
    r = st.admin("POST", "/v1/admin/policies", json={
        "name": "met-gw-" + group, "type_a": "meter", "type_b": "gateway", "delivery": "delivered"})
    assert r.status_code == 201, r.text
    met, gw = make_device(st, "meter", group), make_device(st, "gateway", group)
    s = sid()
    assert get_key(st, met, s, gw).delivery == "delivered"
    assert get_key(st, gw, s, met).delivery == "delivered"
    _, r = ask_key(st, met, s, gw)
    assert r.status_code == 409
