"""Owners of gateways (issue 18, seed 004, docs/gateways.md "Owners, binding,
reset"), end to end against real kmsd, PostgreSQL and SoftHSM: apps and
their tokens, a gateway and three sub-devices registered by an app (keys
sealed to each device's own key), binding with a verification code and a
platform random (one-time, expiring; one owner, a race between two apps),
rotation asked by the owner, and the gateway's own reset."""
import base64
import concurrent.futures
import hashlib
import hmac
import json
import time
import uuid

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import x25519

import fillpkg_py
from conftest import _finish, running_stack
from helpers import error_code, get_key, make_device, post, uid
from qkms_proto_py import Device


@pytest.fixture(scope="module")
def st():
    s = running_stack("apps", {"QKMS_GATEWAY_PASSWORD_SCRYPT_LOG2N": "12",
                               "QKMS_APP_SELF_REGISTRATION": "true"})
    try:
        for name, a, b in (("apps-gw-veh", "gateway", "vehicle"),
                           ("apps-login", "gateway", "@platform")):
            r = s.admin("POST", "/v1/admin/policies", json={"name": name, "type_a": a,
                                                             "type_b": b})
            assert r.status_code == 201, r.text
    except BaseException:
        _finish(s)
        raise
    yield s
    _finish(s)


def new_app(st, scope=True):
    name = "app-" + uuid.uuid4().hex[:8]
    body = {"name": name}
    if scope:
        body.update(enroll_types=["gateway", "subdevice"], enroll_group="homes-" + name[-4:])
    r = st.admin("POST", "/v1/admin/apps", json=body)
    assert r.status_code == 201, r.text
    assert r.json()["token"].startswith("qkms_")
    return name, r.json()["token"], body.get("enroll_group")


def call(st, tok, method, path, **kw):
    return st.api(method, path, token=tok, **kw)


def station():
    priv = x25519.X25519PrivateKey.generate()
    pem = priv.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    return priv, pem


def register(st, tok, **body):
    priv, pem = station()
    did = body.pop("device_id", None) or uid("GW")
    body.setdefault("keys", 2)
    r = call(st, tok, "POST", "/v1/app/devices",
             json={"device_id": did, "recipient_pub": pem, **body})
    return did, priv, r


def opened(priv, answer):
    return json.loads(fillpkg_py.open_package(priv, base64.b64decode(answer["package"])))


def vcode(access_key, did, epoch=0):
    mac = hmac.new(access_key, f"qkms/v1/verification-code\n{did}\n{epoch}".encode(),
                   hashlib.sha256).digest()
    return base64.b32encode(mac).decode()[:10]


def proof(code, random_b64u):
    d = hashlib.sha256(b"qkms/v1/bind\n" + code.encode() + b"\n" + random_b64u.encode()).digest()
    return base64.urlsafe_b64encode(d).decode().rstrip("=")


def bind(st, tok, did, code):
    r = call(st, tok, "POST", "/v1/app/bind/challenges", json={"device_id": did})
    assert r.status_code == 201, r.text
    ch = r.json()
    return ch, call(st, tok, "POST", "/v1/app/bind",
                    json={"challenge_id": ch["challenge_id"], "proof": proof(code, ch["random"])})


def operator_gateway(st):
    did = uid("GW")
    r = st.admin("POST", "/v1/admin/devices", json={"device_id": did, "type": "gateway"})
    assert r.status_code == 201, r.text
    r = st.admin("POST", f"/v1/admin/devices/{did}/fill", json={"plaintext": True})
    assert r.status_code == 200, r.text
    return did, r.json()["plaintext"]


def test_an_app_registers_a_gateway_and_its_sub_devices(st):
    name, tok, group = new_app(st)
    gid, gpriv, r = register(st, tok)
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["device"]["group"] == group and body["device"]["type"] == "gateway"
    assert "plaintext" not in body and all("key" not in k for k in body["device"]["keys"])
    doc = opened(gpriv, body)
    assert doc["device_id"] == gid
    assert [k["purpose"] for k in doc["keys"]] == ["access", "local"]
    local = next(k["key"] for k in doc["keys"] if k["purpose"] == "local")
    subs = []
    for _ in range(3):
        sid, spriv, r = register(st, tok, type="subdevice", parent=gid, keys=1)
        assert r.status_code == 201, r.text
        sdoc = opened(spriv, r.json())
        assert [k["key"] for k in sdoc["family"]["keys"]] == [local], sdoc.keys()
        subs.append(sid)
    r = call(st, tok, "GET", "/v1/app/devices")
    assert r.status_code == 200, r.text
    owned = {d["device_id"]: d["owned"] for d in r.json()["devices"]}
    assert owned == {gid: "registered", **{s: "registered" for s in subs}}
    r = call(st, tok, "GET", f"/v1/app/devices/{subs[0]}")
    assert r.status_code == 200 and r.json()["parent"] == gid
    # The audit rows name the app.
    assert st.psql(f"SELECT actor FROM audit_log WHERE event = 'device.registered'"
                   f" AND device_id = '{gid}'").strip() == "app/" + name
    # Outside its scope.
    r = register(st, tok, type="vehicle")[2]
    assert r.status_code == 403 and error_code(r) == "out_of_scope", r.text
    r = register(st, tok, group="elsewhere")[2]
    assert r.status_code == 403 and error_code(r) == "out_of_scope", r.text
    other_name, other_tok, _ = new_app(st)
    r = register(st, other_tok, type="subdevice", parent=gid)[2]
    assert r.status_code == 404 and error_code(r) == "not_found", r.text
    r = register(st, new_app(st, scope=False)[1])[2]
    assert r.status_code == 403 and error_code(r) == "out_of_scope", r.text
    # Bad input: nothing registered.
    did = uid("GW")
    for body, code in (({"device_id": did}, "invalid_recipient_key"),
                       ({"device_id": did, "recipient_pub": "not a key"}, "invalid_recipient_key"),
                       ({"device_id": did, "recipient_pub": station()[1], "color": 1},
                        "invalid_request"),
                       ({"device_id": "bad/id", "recipient_pub": station()[1]},
                        "invalid_device_id")):
        r = call(st, tok, "POST", "/v1/app/devices", json=body)
        assert r.status_code == 422 and error_code(r) == code, (body, r.text)
    assert st.admin("GET", f"/v1/admin/devices/{did}").status_code == 404
    # Another app sees none of them; an app token opens no admin route.
    assert call(st, other_tok, "GET", "/v1/app/devices").json()["devices"] == []
    assert call(st, other_tok, "GET", f"/v1/app/devices/{gid}").status_code == 404
    r = call(st, tok, "GET", "/v1/admin/devices")
    assert r.status_code == 403 and error_code(r) == "forbidden"
    r = call(st, None, "GET", "/v1/app/devices")
    assert r.status_code == 401


def test_binding_proves_local_access_and_has_one_owner(st):
    gid, doc = operator_gateway(st)
    access = bytes.fromhex(next(k["key"] for k in doc["keys"] if k["purpose"] == "access"))
    code = vcode(access, gid)
    r = st.admin("GET", f"/v1/admin/devices/{gid}/verification-code")
    assert r.status_code == 200 and r.json() == {"device_id": gid, "verification_code": code}
    a_name, a_tok, _ = new_app(st, scope=False)
    b_name, b_tok, _ = new_app(st, scope=False)
    # A wrong proof uses the challenge up.
    r = call(st, a_tok, "POST", "/v1/app/bind/challenges", json={"device_id": gid})
    ch = r.json()
    assert r.status_code == 201 and len(base64.urlsafe_b64decode(ch["random"] + "=")) == 32
    assert ch["expires_at"] > time.time() + 200
    r = call(st, a_tok, "POST", "/v1/app/bind",
             json={"challenge_id": ch["challenge_id"], "proof": proof("WRONGCODE0", ch["random"])})
    assert r.status_code == 401 and error_code(r) == "bind_failed", r.text
    r = call(st, a_tok, "POST", "/v1/app/bind",
             json={"challenge_id": ch["challenge_id"], "proof": proof(code, ch["random"])})
    assert r.status_code == 401 and error_code(r) == "bind_failed"
    # The right proof binds; the same challenge again is refused; binding again is fine.
    ch, r = bind(st, a_tok, gid, code)
    assert r.status_code == 200 and r.json() == {"device_id": gid, "bound": True}, r.text
    r = call(st, a_tok, "POST", "/v1/app/bind",
             json={"challenge_id": ch["challenge_id"], "proof": proof(code, ch["random"])})
    assert r.status_code == 401 and error_code(r) == "bind_failed"
    assert bind(st, a_tok, gid, code)[1].status_code == 200
    assert [d["owned"] for d in call(st, a_tok, "GET", "/v1/app/devices").json()["devices"]] \
        == ["bound"]
    # Someone else learns only that it is bound.
    r = bind(st, b_tok, gid, code)[1]
    assert r.status_code == 409 and error_code(r) == "already_bound", r.text
    assert a_name not in r.text
    # Another app's challenge, an expired one.
    ch = call(st, b_tok, "POST", "/v1/app/bind/challenges", json={"device_id": gid}).json()
    r = call(st, a_tok, "POST", "/v1/app/bind",
             json={"challenge_id": ch["challenge_id"], "proof": proof(code, ch["random"])})
    assert r.status_code == 401 and error_code(r) == "bind_failed"
    ch = call(st, a_tok, "POST", "/v1/app/bind/challenges", json={"device_id": gid}).json()
    st.psql(f"UPDATE bind_challenges SET expires_at = now() - interval '1 second'"
            f" WHERE id = '{ch['challenge_id']}'")
    r = call(st, a_tok, "POST", "/v1/app/bind",
             json={"challenge_id": ch["challenge_id"], "proof": proof(code, ch["random"])})
    assert r.status_code == 401 and error_code(r) == "bind_failed"
    # Bad input.
    # A device that does not exist (or cannot be bound) gets a challenge all
    # the same: whether it exists is not said; the bind fails.
    nope = uid("NOPE")
    ch, r = bind(st, a_tok, nope, code)
    assert r.status_code == 401 and error_code(r) == "bind_failed", r.text
    for body in ({"challenge_id": "x", "proof": "y"}, {"proof": "y"},
                 {"challenge_id": "-" * 36, "proof": "y"},
                 {"challenge_id": ch["challenge_id"], "proof": "p" * 65},
                 {"challenge_id": ch["challenge_id"], "proof": "p", "extra": 1}):
        r = call(st, a_tok, "POST", "/v1/app/bind", json=body)
        assert r.status_code == 422 and error_code(r) == "invalid_request", (body, r.text)
    assert int(st.psql(f"SELECT count(*) FROM audit_log WHERE event = 'app.bind_failed'"
                       f" AND actor IN ('app/{a_name}', 'app/{b_name}')").strip()) == 6
    assert int(st.psql("SELECT count(*) FROM audit_log WHERE event ="
                       f" 'device.verification_code_read' AND device_id = '{gid}'").strip()) == 1


def test_two_apps_race_to_bind_one_gateway(st):
    gid, doc = operator_gateway(st)
    access = bytes.fromhex(next(k["key"] for k in doc["keys"] if k["purpose"] == "access"))
    code = vcode(access, gid)
    apps = [new_app(st, scope=False) for _ in range(2)]
    chs = [call(st, tok, "POST", "/v1/app/bind/challenges", json={"device_id": gid}).json()
           for _, tok, _ in apps]

    def go(i):
        return call(st, apps[i][1], "POST", "/v1/app/bind",
                    json={"challenge_id": chs[i]["challenge_id"],
                          "proof": proof(code, chs[i]["random"])})
    with concurrent.futures.ThreadPoolExecutor(2) as ex:
        answers = list(ex.map(go, range(2)))
    assert sorted(r.status_code for r in answers) == [200, 409], [r.text for r in answers]
    assert st.psql("SELECT count(*) FROM device_owners o JOIN devices d ON d.id = o.device_pk"
                   f" WHERE d.device_id = '{gid}'").strip() == "1"


def test_the_owner_asks_for_new_keys(st):
    name, tok, _ = new_app(st)
    gid, gpriv, r = register(st, tok)
    first = {k["index"] for k in opened(gpriv, r.json())["keys"]}
    priv, pem = station()
    r = call(st, tok, "POST", f"/v1/app/devices/{gid}/rotate", json={"recipient_pub": pem})
    assert r.status_code == 200, r.text
    doc = opened(priv, r.json())
    assert [k["purpose"] for k in doc["keys"]] == ["access", "local"]
    assert not first & {k["index"] for k in doc["keys"]}
    other = new_app(st)[1]
    r = call(st, other, "POST", f"/v1/app/devices/{gid}/rotate", json={"recipient_pub": pem})
    assert r.status_code == 404 and error_code(r) == "not_found"
    r = call(st, tok, "POST", f"/v1/app/devices/{gid}/rotate", json={})
    assert r.status_code == 422 and error_code(r) == "invalid_recipient_key"
    # A gateway the app only bound gets no keys through it: they would be
    # sealed to a key the app names. Nor does a sub-device under it.
    bid, doc = operator_gateway(st)
    access = bytes.fromhex(next(k["key"] for k in doc["keys"] if k["purpose"] == "access"))
    assert bind(st, tok, bid, vcode(access, bid))[1].status_code == 200
    r = call(st, tok, "POST", f"/v1/app/devices/{bid}/rotate", json={"recipient_pub": pem})
    assert r.status_code == 403 and error_code(r) == "out_of_scope", r.text
    r = register(st, tok, type="subdevice", parent=bid)[2]
    assert r.status_code == 403 and error_code(r) == "out_of_scope", r.text


def test_a_gateway_resets_itself(st):
    gid, doc = operator_gateway(st)
    gw = Device.from_fill(doc)
    access = bytes.fromhex(next(k["key"] for k in doc["keys"] if k["purpose"] == "access"))
    name, tok, _ = new_app(st, scope=False)
    assert bind(st, tok, gid, vcode(access, gid))[1].status_code == 200
    # A session with a vehicle and a login.
    veh = make_device(st, "vehicle")
    sid = uid()
    key = get_key(st, gw, sid, veh, index=0)
    # And a key stream with the vehicle: the reset ends it too.
    sreq = gw.stream_request(veh.device_id, 0, index=0)
    r = post(st, sreq)
    assert r.status_code == 200, r.text
    stream_id = r.json()["stream_id"]
    tid = "tid-" + uuid.uuid4().hex[:8]
    assert st.admin("POST", f"/v1/admin/devices/{gid}/credential",
                    json={"tid": tid, "password": "gateway-pass"}).status_code == 200
    r = post(st, gw.login_request(tid, "gateway-pass"))
    assert r.status_code == 200, r.text
    # Under the local key: refused, nothing changes.
    req = gw._gateway_request("reset", {"ts": int(time.time())}, 1, None)
    r = post(st, req)
    assert r.status_code == 401 and error_code(r) == "unauthenticated"
    req = gw._gateway_request("reset", {"ts": int(time.time())}, 0, None)
    r = post(st, req)
    assert r.status_code == 200, r.text
    assert r.json() == {"v": 1, "reset": True, "unbound": 1, "sessions_ended": 2, "bind_epoch": 1}
    assert call(st, tok, "GET", "/v1/app/devices").json()["devices"] == []
    assert st.psql("SELECT reason FROM session_tombstones WHERE key_id = "
                   f"'{key.key_id}'").strip() == "reset"
    assert st.psql("SELECT reason FROM stream_tombstones WHERE stream_id = "
                   f"'{stream_id}'").strip() == "reset"
    r = post(st, req)  # a replay
    assert r.status_code == 401
    r = post(st, gw.logout_request())
    assert r.status_code == 404 and error_code(r) == "no_login"
    assert st.psql("SELECT detail->>'unbound' FROM audit_log WHERE event = 'gateway.reset'"
                   f" AND device_id = '{gid}'").strip() == "1"
    # The owner it had hears of it (docs/gateways.md "Events").
    evs = call(st, tok, "GET", "/v1/app/events").json()["events"]
    assert [(e["type"], e["device_id"], e["app"]) for e in evs] == [
        ("device.bound", gid, name), ("gateway.reset", gid, name)], evs
    assert "owner_app" not in evs[1]["detail"] and evs[1]["detail"]["unbound"] == 1
    # Free again, under a new code: the old one binds nothing.
    other = new_app(st, scope=False)[1]
    r = bind(st, other, gid, vcode(access, gid))[1]
    assert r.status_code == 401 and error_code(r) == "bind_failed"
    assert bind(st, other, gid, vcode(access, gid, 1))[1].status_code == 200


def test_operators_manage_apps(st):
    name, tok, group = new_app(st)
    gid = register(st, tok)[0]
    apps = {a["name"]: a for a in st.admin("GET", "/v1/admin/apps").json()["apps"]}
    assert apps[name]["devices"] == 1 and apps[name]["enroll_group"] == group
    assert apps[name]["enroll_types"] == ["gateway", "subdevice"]
    assert apps[name]["revoked_at"] is None and apps[name]["self_registered"] is False
    r = st.admin("POST", f"/v1/admin/apps/{name}/tokens")
    assert r.status_code == 201, r.text
    tok2 = r.json()["token"]
    assert call(st, tok2, "GET", "/v1/app/devices").status_code == 200
    # An app's tokens are made here, not with /v1/admin/tokens.
    r = st.admin("POST", "/v1/admin/tokens", json={"name": "x" + uuid.uuid4().hex[:6],
                                                   "role": "app"})
    assert r.status_code == 422 and error_code(r) == "invalid_role", r.text
    r = st.admin("POST", "/v1/admin/tokens", json={"name": f"app.{name}.abcdef",
                                                   "role": "operator"})
    assert r.status_code == 422 and error_code(r) == "invalid_name", r.text
    for body, code in (({"name": "bad name"}, "invalid_name"),
                       ({"name": "ok-" + uuid.uuid4().hex[:6], "enroll_types": ["nope"],
                         "enroll_group": "g"}, "invalid_scope"),
                       ({"name": "ok-" + uuid.uuid4().hex[:6], "enroll_types": ["gateway"]},
                        "invalid_scope"),
                       ({"name": "ok", "colour": 1}, "invalid_request")):
        r = st.admin("POST", "/v1/admin/apps", json=body)
        assert r.status_code == 422 and error_code(r) == code, (body, r.text)
    r = st.admin("POST", "/v1/admin/apps", json={"name": name})
    assert r.status_code == 409 and error_code(r) == "conflict"
    r = st.admin("DELETE", f"/v1/admin/apps/{name}")
    assert r.status_code == 200 and r.json() == {"name": name, "revoked": True}, r.text
    for t in (tok, tok2):
        assert call(st, t, "GET", "/v1/app/devices").status_code == 401
    assert st.admin("GET", f"/v1/admin/devices/{gid}").status_code == 200  # still registered
    assert st.admin("DELETE", f"/v1/admin/apps/{name}").status_code == 404
    assert st.admin("POST", f"/v1/admin/apps/{name}/tokens").status_code == 404
    # kmsctl.
    n2 = "ctl-" + uuid.uuid4().hex[:6]
    p = st.kmsctl("--json", "app", "create", n2, "--enroll-types", "gateway", "--enroll-group",
                  "homes")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["token"].startswith("qkms_")
    p = st.kmsctl("app", "list")
    assert p.returncode == 0 and n2 in p.stdout
    p = st.kmsctl("--json", "app", "token", n2)
    assert p.returncode == 0 and json.loads(p.stdout)["token"].startswith("qkms_")
    p = st.kmsctl("app", "revoke", n2)
    assert p.returncode == 0, p.stderr
    p = st.kmsctl("app", "create", "x" + uuid.uuid4().hex[:6], "--enroll-types", "gateway")
    assert p.returncode == 2
    gid2, doc = operator_gateway(st)
    p = st.kmsctl("--json", "device", "verification-code", gid2)
    access = bytes.fromhex(next(k["key"] for k in doc["keys"] if k["purpose"] == "access"))
    assert p.returncode == 0 and json.loads(p.stdout)["verification_code"] == vcode(access, gid2)
    veh = make_device(st, "vehicle")
    r = st.admin("GET", f"/v1/admin/devices/{veh.device_id}/verification-code")
    assert r.status_code == 409 and error_code(r) == "invalid_state"


def test_self_registration(st):
    name = "self-" + uuid.uuid4().hex[:6]
    r = st.api("POST", "/v1/app/register", json={"name": name})
    assert r.status_code == 201, r.text
    tok = r.json()["token"]
    assert r.json()["self_registered"] is True and r.json()["enroll_types"] == []
    r = register(st, tok)[2]
    assert r.status_code == 403 and error_code(r) == "out_of_scope"
    gid, doc = operator_gateway(st)
    access = bytes.fromhex(next(k["key"] for k in doc["keys"] if k["purpose"] == "access"))
    assert bind(st, tok, gid, vcode(access, gid))[1].status_code == 200
    r = st.api("POST", "/v1/app/register", json={"name": name})
    assert r.status_code == 409 and error_code(r) == "conflict"
    r = st.api("POST", "/v1/app/register", json={"name": "has space"})
    assert r.status_code == 422 and error_code(r) == "invalid_name"
