"""Gateways and their sub-devices (issue 18, seed 004, docs/gateways.md),
end to end against real kmsd, PostgreSQL and SoftHSM: key purposes from a
device type's template, a local key refused on the device doors (and
audited), the family's local key in a sub-device's fill, and rotation by
purpose."""
import base64
import concurrent.futures
import datetime
import hashlib
import re
import subprocess
import time
import uuid

import pytest
import requests

from conftest import KMSCTL, _finish, running_stack, wait_for
from helpers import ask_key, error_code, get_key, make_device, near, post, ts, uid, utcnow
from qkms_proto_py import Device
from qkms_proto2_py import Device2, Platform


@pytest.fixture(scope="module")
def st():
    # A cheap scrypt cost keeps the tests quick; production's is 2^17.
    s = running_stack("gw", {"QKMS_MAINTENANCE_INTERVAL": "1",
                             "QKMS_GATEWAY_PASSWORD_SCRYPT_LOG2N": "12",
                             "QKMS_GATEWAY_LOGIN_MAX_FAILURES": "3",
                             "QKMS_GATEWAY_LOGIN_LOCKOUT": "3"})
    try:
        r = s.admin("POST", "/v1/admin/policies", json={
            "name": "gw-veh", "type_a": "gateway", "type_b": "vehicle"})
        assert r.status_code == 201, r.text
        r = s.admin("POST", "/v1/admin/policies", json={
            "name": "gw-login", "type_a": "gateway", "type_b": "@platform", "key_bits": 256,
            "idle_timeout_s": 600, "max_lifetime_s": 3600})
        assert r.status_code == 201, r.text
    except BaseException:
        _finish(s)
        raise
    yield s
    _finish(s)


def fill(st, did):
    r = st.admin("POST", f"/v1/admin/devices/{did}/fill", json={"plaintext": True, "force": True})
    assert r.status_code == 200, r.text
    return r.json()["plaintext"]


def keys_of(st, did):
    r = st.admin("GET", f"/v1/admin/devices/{did}")
    assert r.status_code == 200, r.text
    return {k["index"]: k for k in r.json()["keys"]}


def gateway(st, **body):
    gid = uid("GW")
    r = st.admin("POST", "/v1/admin/devices", json={"device_id": gid, "type": "gateway", **body})
    assert r.status_code == 201, r.text
    return gid


def test_types_carry_key_templates(st):
    r = st.admin("GET", "/v1/admin/device-types")
    assert r.status_code == 200
    body = r.json()
    assert "gateway" in body["types"]
    assert body["key_purposes"]["gateway"] == ["access", "local"]
    assert body["key_purposes"]["vehicle"] == []
    name = "hub-" + uuid.uuid4().hex[:6]
    r = st.admin("POST", "/v1/admin/device-types", json={"name": name,
                                                          "key_purposes": ["local", "access"]})
    assert r.status_code == 201, r.text
    assert r.json() == {"name": name, "key_purposes": ["local", "access"], "service_days": None,
                        "suite": "aes"}
    for bad in (["wan"], "access", [1], ["access"] * 17):
        r = st.admin("POST", "/v1/admin/device-types", json={"name": name + "x", "key_purposes": bad})
        assert r.status_code == 422 and error_code(r) == "invalid_key_purposes", (bad, r.text)
    assert name + "x" not in st.admin("GET", "/v1/admin/device-types").json()["types"]
    # A device of the new type: its keys follow the template.
    did = uid("HUB")
    assert st.admin("POST", "/v1/admin/devices", json={"device_id": did, "type": name,
                                                        "keys": 3}).status_code == 201
    assert [k["purpose"] for k in keys_of(st, did).values()] == ["local", "access", "generic"]


def test_a_gateway_has_access_and_local_keys(st):
    gid = gateway(st, keys=3)
    ks = keys_of(st, gid)
    assert [ks[i]["purpose"] for i in range(3)] == ["access", "local", "generic"]
    doc = fill(st, gid)
    assert [k["purpose"] for k in doc["keys"]] == ["access", "local", "generic"]
    assert "family" not in doc
    # Fewer keys than the template: refused, nothing registered.
    did = uid("GW")
    r = st.admin("POST", "/v1/admin/devices", json={"device_id": did, "type": "gateway", "keys": 1})
    assert r.status_code == 422 and error_code(r) == "invalid_keys", r.text
    assert st.admin("GET", f"/v1/admin/devices/{did}").status_code == 404


def test_a_local_key_is_refused_on_the_device_doors(st):
    gid = gateway(st, keys=2)
    gw = Device.from_fill(fill(st, gid))
    veh = make_device(st, "vehicle")
    sid = uid()
    # Under the access key: a session as any device.
    k1 = get_key(st, gw, sid, veh, index=0)
    assert get_key(st, veh, sid, gw).key == k1.key
    # Under the local key: refused like any failed authentication, audited.
    before = st.psql("SELECT count(*) FROM audit_log WHERE event = 'device.local_key_refused'"
                     f" AND device_id = '{gid}'").strip()
    req, r = ask_key(st, gw, uid(), veh, index=1)
    assert r.status_code == 401 and error_code(r) == "unauthenticated", r.text
    req, r = ask_key(st, gw, uid(), veh, index=1)
    assert r.status_code == 401
    # The end door too; one audit row a minute per device (each is logged).
    req = gw.end_request(sid, index=1)
    r = post(st, req)
    assert r.status_code == 401 and error_code(r) == "unauthenticated", r.text
    after = st.psql("SELECT count(*) FROM audit_log WHERE event = 'device.local_key_refused'"
                    f" AND device_id = '{gid}'").strip()
    assert int(after) == int(before) + 1
    assert st.logs().count("a local key (its gateway") >= 3
    detail = st.psql("SELECT detail::text FROM audit_log WHERE event = 'device.local_key_refused'"
                     f" AND device_id = '{gid}' ORDER BY id DESC LIMIT 1")
    assert '"key_index": 1' in detail and '"op": "key"' in detail
    # A wrong key under the local index is an ordinary failure: no audit row.
    forged = Device(gid, {1: bytes(16)})
    req, r = ask_key(st, forged, uid(), veh, index=1)
    assert r.status_code == 401
    assert st.psql("SELECT count(*) FROM audit_log WHERE event = 'device.local_key_refused'"
                   f" AND device_id = '{gid}'").strip() == after
    assert "a local key" in st.logs()


def test_sub_devices_get_the_family_local_key(st):
    gid = gateway(st, keys=2)
    subs = []
    for _ in range(3):
        did = uid("SUB")
        r = st.admin("POST", "/v1/admin/devices", json={"device_id": did, "type": "subdevice",
                                                         "parent": gid, "keys": 1})
        assert r.status_code == 201, r.text
        subs.append(did)
    local = {k["index"]: k for k in fill(st, gid)["keys"] if k["purpose"] == "local"}
    assert list(local) == [1]
    for did in subs:
        doc = fill(st, did)
        assert [k["purpose"] for k in doc["keys"]] == ["generic"]
        fam = doc["family"]
        assert fam["gateway_id"] == gid
        assert [(k["index"], k["key"], k["kcv"], k["purpose"]) for k in fam["keys"]] == \
            [(1, local[1]["key"], local[1]["kcv"], "local")]
    detail = st.psql("SELECT detail::text FROM audit_log WHERE event = 'device.fill_exported'"
                     f" AND device_id = '{subs[0]}' ORDER BY id DESC LIMIT 1")
    assert gid in detail and '"family"' in detail
    n = st.psql("SELECT count(*) FROM audit_log WHERE event = 'device.family_key_exported'"
                f" AND device_id = '{gid}'").strip()
    assert n == "3"
    # Rotating the local key: the access key stays; the family gets the new
    # local key beside the one retiring.
    r = st.admin("POST", f"/v1/admin/devices/{gid}/rotate", json={"purpose": "local",
                                                                   "grace_days": 3})
    assert r.status_code == 200, r.text
    ks = {k["index"]: k for k in r.json()["keys"]}
    assert ks[2]["purpose"] == "local" and ks[2]["state"] == "active"
    assert ks[1]["retire_at"] is not None and ks[0]["retire_at"] is None
    fam = fill(st, subs[1])["family"]
    assert [k["index"] for k in fam["keys"]] == [1, 2]
    new_local = [k for k in fill(st, gid)["keys"] if k["index"] == 2][0]
    assert fam["keys"][1]["key"] == new_local["key"]
    # A suspended gateway's family is suspended with it: no fill at all.
    assert st.admin("POST", f"/v1/admin/devices/{gid}/suspend").status_code == 200
    r = st.admin("POST", f"/v1/admin/devices/{subs[2]}/fill", json={"plaintext": True, "force": True})
    assert r.status_code == 409 and error_code(r) == "invalid_state"
    assert st.admin("POST", f"/v1/admin/devices/{gid}/resume").status_code == 200
    assert fill(st, subs[2])["family"]["gateway_id"] == gid


def test_rotation_by_purpose(st):
    gid = gateway(st, keys=3)
    r = st.admin("POST", f"/v1/admin/devices/{gid}/rotate", json={"grace_days": 0})
    assert r.status_code == 200, r.text
    ks = {k["index"]: k for k in r.json()["keys"]}
    # One new key per purpose, each retiring only its own purpose's keys.
    assert [ks[i]["purpose"] for i in (3, 4, 5)] == ["access", "local", "generic"]
    assert all(ks[i]["retire_at"] is not None for i in (0, 1, 2))
    audit = st.psql("SELECT detail::text FROM audit_log WHERE event = 'device.rotated'"
                    f" AND device_id = '{gid}' ORDER BY id DESC LIMIT 1")
    assert '"purposes": ["access", "local", "generic"]' in audit
    assert '"new_indices": [3, 4, 5]' in audit
    r = st.admin("POST", f"/v1/admin/devices/{gid}/rotate", json={"purpose": "wan"})
    assert r.status_code == 422 and error_code(r) == "invalid_key_purposes"
    r = st.admin("POST", f"/v1/admin/devices/{gid}/rotate", json={"purpose": "access"})
    assert r.status_code == 200
    ks = {k["index"]: k for k in r.json()["keys"]}
    assert ks[6]["purpose"] == "access" and ks[4]["retire_at"] is None
    # A device without purposes rotates as before: one generic key.
    veh = uid("VEH")
    assert st.admin("POST", "/v1/admin/devices", json={"device_id": veh, "type": "vehicle",
                                                        "keys": 2}).status_code == 201
    r = st.admin("POST", f"/v1/admin/devices/{veh}/rotate", json={})
    ks = {k["index"]: k for k in r.json()["keys"]}
    assert sorted(ks) == [0, 1, 2] and ks[2]["purpose"] == "generic"


def test_kmsctl_purposes(st):
    import json
    name = "kp-" + uuid.uuid4().hex[:6]
    r = st.kmsctl("device-type", "add", name, "--key-purposes", "access,local,generic")
    assert r.returncode == 0, r.stderr
    r = st.kmsctl("device-type", "add", name + "x", "--key-purposes", "access,wan")
    assert r.returncode != 0 and "--key-purposes" in r.stderr
    r = st.kmsctl("device-type", "list")
    assert r.returncode == 0 and name in r.stdout.split()
    r = st.kmsctl("--json", "device-type", "list")
    assert json.loads(r.stdout)["key_purposes"][name] == ["access", "local", "generic"]
    assert json.loads(r.stdout)["key_purposes"]["gateway"] == ["access", "local"]
    gid = gateway(st, keys=2)
    r = st.kmsctl("--json", "device", "keys", gid)
    assert r.returncode == 0
    assert [k["purpose"] for k in json.loads(r.stdout)["keys"]] == ["access", "local"]
    r = st.kmsctl("--json", "device", "rotate", gid, "--purpose", "local", "--grace-days", "1")
    assert r.returncode == 0, r.stderr
    assert [k["purpose"] for k in json.loads(r.stdout)["keys"]] == ["access", "local", "local"]
    r = st.kmsctl("device", "rotate", gid, "--purpose", "wan")
    assert r.returncode != 0 and "--purpose" in r.stderr


def family(st, n, **gw_body):
    gid = gateway(st, keys=2, **gw_body)
    subs = []
    for i in range(n):
        did = uid("SUB")
        r = st.admin("POST", "/v1/admin/devices", json={"device_id": did, "type": "subdevice",
                                                         "parent": gid, "keys": 1,
                                                         "group": "fam-other" if i == 0 else "default"})
        assert r.status_code == 201, r.text
        subs.append(did)
    return gid, subs


def state_of(st, did):
    return st.admin("GET", f"/v1/admin/devices/{did}").json()["state"]


def test_families_list_and_follow_their_gateway(st):
    gid, subs = family(st, 3)
    other, _ = family(st, 1)
    r = st.admin("GET", "/v1/admin/devices", params={"parent": gid})
    assert r.status_code == 200
    assert sorted(d["device_id"] for d in r.json()["devices"]) == sorted(subs)
    assert st.admin("GET", "/v1/admin/devices", params={"parent": "bad id"}).status_code == 400
    r = st.kmsctl("--json", "device", "list", "--parent", gid)
    assert r.returncode == 0, r.stderr
    import json
    assert sorted(d["device_id"] for d in json.loads(r.stdout)["devices"]) == sorted(subs)
    # An operator suspends one sub-device; then the gateway is suspended.
    assert st.admin("POST", f"/v1/admin/devices/{subs[0]}/suspend").status_code == 200
    assert st.admin("POST", f"/v1/admin/devices/{gid}/suspend").status_code == 200
    assert [state_of(st, d) for d in subs] == ["suspended"] * 3
    cascade = st.psql("SELECT device_id FROM audit_log WHERE event = 'device.suspended'"
                      f" AND detail->>'cascade_from' = '{gid}' ORDER BY device_id").split()
    assert cascade == sorted(subs[1:])
    # A sub-device is not resumed under a suspended gateway.
    r = st.admin("POST", f"/v1/admin/devices/{subs[1]}/resume")
    assert r.status_code == 409 and error_code(r) == "invalid_state" and gid in r.text
    # Resuming the gateway resumes those suspended with it, and only those.
    assert st.admin("POST", f"/v1/admin/devices/{gid}/resume").status_code == 200
    assert [state_of(st, d) for d in subs] == ["suspended", "active", "active"]
    assert state_of(st, other) == "active"
    # Revoking the gateway revokes the family, its keys destroyed, at once.
    assert st.admin("POST", f"/v1/admin/devices/{gid}/revoke").status_code == 200
    assert [state_of(st, d) for d in subs] == ["revoked"] * 3
    for d in subs:
        ks = keys_of(st, d)
        assert all(k["state"] == "destroyed" for k in ks.values())
    n = st.psql("SELECT count(*) FROM audit_log WHERE event = 'device.revoked'"
                f" AND detail->>'cascade_from' = '{gid}'").strip()
    assert n == "3"


def test_a_family_policy_pairs_a_sub_device_with_its_own_gateway(st):
    r = st.admin("POST", "/v1/admin/policies", json={
        "name": "fam-" + uuid.uuid4().hex[:6], "type_a": "subdevice", "type_b": "gateway",
        "scope": "parent"})
    assert r.status_code == 201, r.text
    assert any(p["scope"] == "parent" for p in r.json()["policies"])
    for bad in ({"scope": "parents"}, {"scope": "parent", "group_a": "a", "group_b": "b"},
                {"scope": "parent", "type_b": "@platform"}):
        body = {"name": "x-" + uuid.uuid4().hex[:6], "type_a": "subdevice", "type_b": "gateway",
                **bad}
        r = st.admin("POST", "/v1/admin/policies", json=body)
        assert r.status_code == 422 and error_code(r) == "invalid_policy", (bad, r.text)
    gid, subs = family(st, 2)
    gid2, _ = family(st, 0)
    gw = Device.from_fill(fill(st, gid))
    gw2 = Device.from_fill(fill(st, gid2))
    # subs[0] is in another group than its gateway: the family policy
    # pairs them all the same.
    for did in subs:
        sub = Device.from_fill(fill(st, did))
        sid = uid()
        k = get_key(st, sub, sid, gw)
        assert get_key(st, gw, sid, sub, index=0).key == k.key
        # Another gateway in the same group is no family.
        req, r = ask_key(st, sub, uid(), gw2)
        assert r.status_code == 403 and error_code(r) == "policy_denied", r.text


def test_kmsctl_family_policy(st):
    name = "famk-" + uuid.uuid4().hex[:6]
    r = st.kmsctl("policy", "add", name, "--types", "subdevice:gateway", "--scope", "parent")
    assert r.returncode == 0, r.stderr
    r = st.kmsctl("policy", "list")
    line = [ln for ln in r.stdout.splitlines() if ln.startswith(name)][0]
    assert "(parent)" in line
    r = st.kmsctl("policy", "add", name + "x", "--types", "subdevice:gateway", "--scope", "kin")
    assert r.returncode != 0 and "--scope" in r.stderr


def test_family_only_refill_and_registration_under_a_suspended_gateway(st):
    gid, subs = family(st, 1)
    sub = subs[0]
    first = st.admin("POST", f"/v1/admin/devices/{sub}/fill", json={"plaintext": True})
    assert first.status_code == 200, first.text
    r = st.admin("POST", f"/v1/admin/devices/{gid}/rotate", json={"purpose": "local"})
    assert r.status_code == 200
    # The sub-device's own key was exported: only family_only goes without force.
    r = st.admin("POST", f"/v1/admin/devices/{sub}/fill", json={"plaintext": True})
    assert r.status_code == 409 and error_code(r) == "already_exported"
    r = st.admin("POST", f"/v1/admin/devices/{sub}/fill", json={"plaintext": True,
                                                               "family_only": True})
    assert r.status_code == 200, r.text
    doc = r.json()["plaintext"]
    assert doc["keys"] == [] and [k["index"] for k in doc["family"]["keys"]] == [1, 2]
    r = st.admin("POST", f"/v1/admin/devices/{sub}/fill", json={"plaintext": True,
                                                               "family_only": True, "indices": [0]})
    assert r.status_code == 422 and error_code(r) == "invalid_request"
    lone = uid("VEH")
    assert st.admin("POST", "/v1/admin/devices", json={"device_id": lone, "type": "vehicle"}).status_code == 201
    r = st.admin("POST", f"/v1/admin/devices/{lone}/fill", json={"plaintext": True, "family_only": True})
    assert r.status_code == 422 and error_code(r) == "no_exportable_keys"
    # No sub-device is registered active under a gateway that is not.
    assert st.admin("POST", f"/v1/admin/devices/{gid}/suspend").status_code == 200
    did = uid("SUB")
    r = st.admin("POST", "/v1/admin/devices", json={"device_id": did, "type": "subdevice",
                                                     "parent": gid})
    assert r.status_code == 422 and error_code(r) == "invalid_parent" and "suspended" in r.text
    # An operator may suspend a sub-device suspended with its gateway: it then
    # stays suspended when the gateway resumes.
    assert st.admin("POST", f"/v1/admin/devices/{sub}/suspend").status_code == 200
    assert st.admin("POST", f"/v1/admin/devices/{gid}/resume").status_code == 200
    assert state_of(st, sub) == "suspended"


def test_a_cascade_stops_the_family_at_once(st):
    gid, subs = family(st, 1)
    veh_pol = st.admin("POST", "/v1/admin/policies", json={
        "name": "sub-veh-" + uuid.uuid4().hex[:6], "type_a": "subdevice", "type_b": "vehicle"})
    assert veh_pol.status_code == 201
    sub = Device.from_fill(fill(st, subs[0]))
    veh = make_device(st, "vehicle", group="fam-other")
    assert get_key(st, sub, uid(), veh)  # warms the key cache
    assert st.admin("POST", f"/v1/admin/devices/{gid}/suspend").status_code == 200
    req, r = ask_key(st, sub, uid(), veh)
    assert r.status_code in (401, 403), r.text


def test_a_family_policy_restricts_its_types(st):
    # A policy for any two devices of a group does not let a sub-device pair
    # with a gateway not its own once a family policy covers the two types.
    r = st.admin("POST", "/v1/admin/policies", json={
        "name": "any-" + uuid.uuid4().hex[:6], "type_a": "*", "type_b": "*"})
    assert r.status_code == 201
    gid, subs = family(st, 2)
    gid2, _ = family(st, 0)
    gw2 = Device.from_fill(fill(st, gid2))
    sub = Device.from_fill(fill(st, subs[1]))  # subs[1] is in the default group, as gid2
    req, r = ask_key(st, sub, uid(), gw2)
    assert r.status_code == 403 and error_code(r) == "policy_denied", r.text
    # Its own gateway: the family policy (test above) applies.
    gw = Device.from_fill(fill(st, gid))
    assert get_key(st, sub, uid(), gw)


def test_attributes(st):
    import json
    gid = uid("GW")
    body = {"device_id": gid, "type": "gateway", "attributes": {
        "mac": "02-1A-2B-3C-4D-" + uuid.uuid4().hex[:2].upper(), "sn": "SN-" + uuid.uuid4().hex[:8],
        "uuid": str(uuid.uuid4()).upper(), "ip": "192.0.2.10", "port": 8443, "joined": False,
        "room": "hall"}}
    r = st.admin("POST", "/v1/admin/devices", json=body)
    assert r.status_code == 201, r.text
    a = r.json()["attributes"]
    mac = a["mac"]
    assert mac == body["attributes"]["mac"].lower().replace("-", ":")
    assert a["uuid"] == body["attributes"]["uuid"].lower() and a["port"] == 8443
    assert a["joined"] is False and a["room"] == "hall"
    # MAC and SN are unique per type: another gateway cannot have them.
    for clash in ({"mac": mac.upper()}, {"sn": a["sn"]}):
        r = st.admin("POST", "/v1/admin/devices", json={"device_id": uid("GW"), "type": "gateway",
                                                         "attributes": clash})
        assert r.status_code == 409 and error_code(r) == "conflict", r.text
    # ... a vehicle may.
    r = st.admin("POST", "/v1/admin/devices", json={"device_id": uid("VEH"), "type": "vehicle",
                                                     "attributes": {"mac": mac}})
    assert r.status_code == 201
    # Two in one import: the second is refused, the first goes in.
    m2 = "02:00:00:00:00:" + uuid.uuid4().hex[:2]
    r = st.admin("POST", "/v1/admin/devices/import", json={"devices": [
        {"device_id": uid("GW"), "type": "gateway", "attributes": {"mac": m2}},
        {"device_id": uid("GW"), "type": "gateway", "attributes": {"mac": m2}}]})
    assert r.status_code == 200 and r.json()["created"] == 1, r.text
    for bad in ({"mac": "nope"}, {"port": 0}, {"ip": "300.1.1.1"}, {"Bad": 1}, {"x": [1]},
                {f"a{i}": i for i in range(33)}, "mac"):
        r = st.admin("POST", "/v1/admin/devices", json={"device_id": uid("GW"), "type": "gateway",
                                                         "attributes": bad})
        assert r.status_code == 422 and error_code(r) == "invalid_attributes", (bad, r.text)
    # Search, by the normal form whatever the spelling.
    r = st.admin("GET", "/v1/admin/devices", params={"attr": "mac=" + mac.replace(":", "").upper(),
                                                     "type": "gateway"})
    assert [d["device_id"] for d in r.json()["devices"]] == [gid]
    r = st.admin("GET", "/v1/admin/devices", params=[("attr", "port=8443"), ("attr", "room=hall"),
                                                     ("type", "gateway")])
    assert gid in [d["device_id"] for d in r.json()["devices"]]
    r = st.admin("GET", "/v1/admin/devices", params={"attr": "port=x"})
    assert r.status_code == 400 and error_code(r) == "invalid_query"
    # Change: set and unset, audited; the unique check holds.
    r = st.admin("POST", f"/v1/admin/devices/{gid}/attributes",
                 json={"set": {"joined": True, "ip": "2001:db8::0:1"}, "unset": ["room"]})
    assert r.status_code == 200, r.text
    a = r.json()["attributes"]
    assert a["joined"] is True and a["ip"] == "2001:db8::1" and "room" not in a
    r = st.admin("POST", f"/v1/admin/devices/{gid}/attributes", json={"set": {"mac": m2}})
    assert r.status_code == 409 and error_code(r) == "conflict"
    assert st.admin("GET", f"/v1/admin/devices/{gid}").json()["attributes"]["mac"] == mac
    r = st.admin("POST", f"/v1/admin/devices/{gid}/attributes", json={"set": {"port": "80"}})
    assert r.status_code == 422 and error_code(r) == "invalid_attributes"
    n = st.psql("SELECT count(*) FROM audit_log WHERE event = 'device.attributes_set'"
                f" AND device_id = '{gid}'").strip()
    assert n == "1"
    # kmsctl
    did = uid("GW")
    r = st.kmsctl("--json", "device", "register", did, "--type", "gateway", "--attr", "port=7000",
                  "--attr", "joined=true", "--attr", "sn=K-" + uuid.uuid4().hex[:6])
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["attributes"]["port"] == 7000
    r = st.kmsctl("--json", "device", "attributes", did, "--set", "room=attic", "--unset", "joined")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["attributes"] == {"port": 7000, "room": "attic",
                                                  "sn": json.loads(r.stdout)["attributes"]["sn"]}
    r = st.kmsctl("--json", "device", "list", "--attr", "room=attic", "--type", "gateway")
    assert [d["device_id"] for d in json.loads(r.stdout)["devices"]] == [did]


# ---- service validity ---------------------------------------------------------

def record(st, did):
    r = st.admin("GET", f"/v1/admin/devices/{did}")
    assert r.status_code == 200, r.text
    return r.json()


def service(st, did, **body):
    return st.admin("POST", f"/v1/admin/devices/{did}/service", json=body)


def rfc3339(t):
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def gauge(st, name):
    m = re.search(rf"^{name} (-?\d+)$", st.admin("GET", "/metrics").text, re.M)
    assert m, name
    return int(m.group(1))


def test_service_validity_from_the_type_and_its_renewal(st):
    types = st.admin("GET", "/v1/admin/device-types").json()
    assert types["service_days"]["gateway"] == 730 and types["service_days"]["vehicle"] is None
    gid = gateway(st)
    assert near(ts(record(st, gid)["service_until"]), utcnow() + datetime.timedelta(days=730))
    assert record(st, make_device(st, "vehicle").device_id)["service_until"] is None
    # The registration's own length, or none.
    gid2 = gateway(st, service_days=30)
    assert near(ts(record(st, gid2)["service_until"]), utcnow() + datetime.timedelta(days=30))
    assert record(st, gateway(st, service_days=None))["service_until"] is None
    for bad in (0, 36501, "30", 1.5):
        r = st.admin("POST", "/v1/admin/devices", json={"device_id": uid("GW"), "type": "gateway",
                                                        "service_days": bad})
        assert r.status_code == 422 and error_code(r) == "invalid_service", (bad, r.text)
    # A type with a default.
    name = "meter-" + uuid.uuid4().hex[:6]
    r = st.admin("POST", "/v1/admin/device-types", json={"name": name, "service_days": 2})
    assert r.status_code == 201 and r.json()["service_days"] == 2, r.text
    did = uid("MTR")
    assert st.admin("POST", "/v1/admin/devices",
                    json={"device_id": did, "type": name}).status_code == 201
    assert near(ts(record(st, did)["service_until"]), utcnow() + datetime.timedelta(days=2))
    r = st.admin("POST", "/v1/admin/device-types", json={"name": name + "x", "service_days": 0})
    assert r.status_code == 422 and error_code(r) == "invalid_service"

    # Renewal: days past the later of now and the current end.
    end = ts(record(st, gid2)["service_until"])
    r = service(st, gid2, days=10)
    assert r.status_code == 200, r.text
    assert abs((ts(r.json()["service_until"]) - end).total_seconds() - 10 * 86400) < 2
    until = utcnow() + datetime.timedelta(days=3)
    r = service(st, gid2, until=rfc3339(until))
    assert r.status_code == 200 and r.json()["service_until"] == rfc3339(until), r.text
    r = service(st, gid2, until=None)
    assert r.status_code == 200 and r.json()["service_until"] is None
    # No end: nothing to renew.
    r = service(st, gid2, days=5)
    assert r.status_code == 409 and error_code(r) == "invalid_state", r.text
    assert record(st, gid2)["service_until"] is None
    # From an end in the past, days count from now.
    service(st, gid2, until="2020-01-01T00:00:00Z")
    r = service(st, gid2, days=1)
    assert near(ts(r.json()["service_until"]), utcnow() + datetime.timedelta(days=1))
    rows = st.psql("SELECT detail->>'from', detail->>'to' FROM audit_log"
                   f" WHERE event = 'device.service_set' AND device_id = '{gid2}' ORDER BY id")
    assert len(rows.strip().splitlines()) == 5
    assert rows.splitlines()[1].split("|")[1] == rfc3339(until)

    before = record(st, gid2)["service_until"]
    for body in ({}, {"days": 1, "until": None}, {"days": 0}, {"days": "1"},
                 {"until": "tomorrow"}, {"until": "2026-02-30T00:00:00Z"}, {"until": 5},
                 {"until": "2026-01-01"}):
        r = service(st, gid2, **body)
        assert r.status_code == 422 and error_code(r) == "invalid_service", (body, r.text)
    r = service(st, gid2, days=1, color="red")
    assert r.status_code == 422 and error_code(r) == "invalid_request"
    assert record(st, gid2)["service_until"] == before
    assert service(st, uid("NOPE"), days=1).status_code == 404
    st.admin("POST", f"/v1/admin/devices/{gid}/revoke")
    r = service(st, gid, days=1)
    assert r.status_code == 409 and error_code(r) == "invalid_state", r.text


def test_past_its_service_a_device_gets_no_key(st):
    gid = gateway(st, keys=2)
    gw = Device.from_fill(fill(st, gid))
    veh = make_device(st, "vehicle")
    sid = uid()
    # A short validity: served before its end, refused after.
    until = utcnow() + datetime.timedelta(seconds=3)
    assert service(st, gid, until=rfc3339(until)).status_code == 200
    k = get_key(st, gw, sid, veh, index=0)
    assert wait_for(lambda: utcnow() > until + datetime.timedelta(seconds=1), timeout=10)
    req, r = ask_key(st, gw, sid, veh, index=0)
    assert r.status_code == 403 and error_code(r) == "service_expired", r.text
    assert rfc3339(until) in r.json()["error"]["message"]
    # The nonce was recorded: the same request again is a replay.
    r = post(st, req)
    assert r.status_code == 401, r.text
    # Its peer still gets the key of the session it opened before ...
    assert get_key(st, veh, sid, gw).key == k.key
    # ... but cannot open a new one with it.
    req, r = ask_key(st, veh, uid(), gw)
    assert r.status_code == 422 and error_code(r) == "peer_inactive", r.text
    # Ending a session only destroys a key: allowed, as for a suspended device.
    r = post(st, gw.end_request(sid, index=0))
    assert r.status_code == 200, r.text
    assert "service_expired" in st.admin("GET", "/metrics").text
    # Renewed, it is served again.
    assert service(st, gid, days=365).status_code == 200
    get_key(st, gw, uid(), veh, index=0)


def test_service_ending_soon_is_warned_about(st):
    gid = gateway(st)
    assert service(st, gid, until=rfc3339(utcnow() + datetime.timedelta(days=3))).status_code == 200
    assert wait_for(lambda: f'"device_id":"{gid}"' in "".join(
        l for l in st.logs().splitlines() if "device service ending soon" in l))
    assert wait_for(lambda: gauge(st, "qkms_devices_service_ending") >= 1)
    ended = gauge(st, "qkms_devices_service_ended")
    assert service(st, gid, until="2020-01-01T00:00:00Z").status_code == 200
    assert wait_for(lambda: gauge(st, "qkms_devices_service_ended") == ended + 1)
    # Once a day per device: one warning line for this end.
    assert service(st, gid, until=rfc3339(utcnow() + datetime.timedelta(days=2))).status_code == 200
    time.sleep(3)
    lines = [l for l in st.logs().splitlines()
             if "device service ending soon" in l and f'"device_id":"{gid}"' in l]
    assert len(lines) == 2, lines
    # Each warning is an event (docs/gateways.md "Events").
    assert st.psql("SELECT count(*) FROM events WHERE type = 'device.service_expiring'"
                   f" AND device_id = '{gid}' AND detail ? 'service_until'").strip() == "2"


def test_kmsctl_service(st):
    gid = gateway(st)
    r = st.kmsctl("--json", "device", "service", gid, "--days", "5")
    assert r.returncode == 0, r.stderr
    import json
    assert json.loads(r.stdout)["service_until"]
    r = st.kmsctl("device", "service", gid, "--no-end")
    assert r.returncode == 0, r.stderr
    assert record(st, gid)["service_until"] is None
    r = st.kmsctl("device", "service", gid, "--until", "2030-01-01T00:00:00Z")
    assert r.returncode == 0 and "2030-01-01T00:00:00Z" in r.stdout, r.stdout
    r = st.kmsctl("device", "service", gid)
    assert r.returncode == 2
    r = st.kmsctl("device", "service", gid, "--days", "5", "--no-end")
    assert r.returncode == 2
    did = uid("GW")
    r = st.kmsctl("device", "register", did, "--type", "gateway", "--no-service-end")
    assert r.returncode == 0, r.stderr
    assert record(st, did)["service_until"] is None
    name = "mt-" + uuid.uuid4().hex[:6]
    r = st.kmsctl("device-type", "add", name, "--service-days", "9")
    assert r.returncode == 0, r.stderr
    assert st.admin("GET", "/v1/admin/device-types").json()["service_days"][name] == 9


# ---- login ----------------------------------------------------------------------

def credential(st, did, tid, password):
    return st.admin("POST", f"/v1/admin/devices/{did}/credential",
                    json={"tid": tid, "password": password})


def login(st, gw, tid, password, index=0):
    req = gw.login_request(tid, password, index=index)
    return req, post(st, req)


def audit_count(st, event, did):
    return int(st.psql(f"SELECT count(*) FROM audit_log WHERE event = '{event}'"
                       f" AND device_id = '{did}'").strip())


def test_a_gateway_logs_in_and_out(st):
    gid = gateway(st)
    gw = Device.from_fill(fill(st, gid))
    tid = "tid-" + uuid.uuid4().hex[:8]
    r = credential(st, gid, tid, "correct horse battery")
    assert r.status_code == 200 and r.json() == {"device_id": gid, "tid": tid}, r.text
    assert "correct horse" not in st.psql("SELECT row_to_json(c)::text FROM gateway_credentials c")
    # The stored hash is RFC 7914 scrypt: Python's hashlib computes the same.
    row = st.psql("SELECT kdf, kdf_n, kdf_r, kdf_p, encode(salt, 'hex'), encode(hash, 'hex')"
                  " FROM gateway_credentials c JOIN devices d ON d.id = c.device_pk"
                  f" WHERE d.device_id = '{gid}'").strip().split("|")
    assert row[0] == "scrypt" and row[1:4] == ["4096", "8", "1"], row
    assert hashlib.scrypt(b"correct horse battery", salt=bytes.fromhex(row[4]), n=4096, r=8, p=1,
                          dklen=32).hex() == row[5]
    req, r = login(st, gw, tid, "correct horse battery")
    assert r.status_code == 200, r.text
    k1 = gw.open_login_response(req, r.json())
    assert len(k1.key) == 32
    login1 = r.json()["login_id"]
    # The platform holds it: a live session with the platform as its peer.
    r = st.admin("GET", f"/v1/admin/sessions?device={gid}")
    assert [s["responder"] for s in r.json()["sessions"]] == ["@platform"], r.text
    # A second login: another key; the first login ends (tombstone superseded).
    req, r = login(st, gw, tid, "correct horse battery")
    assert r.status_code == 200, r.text
    k2 = gw.open_login_response(req, r.json())
    assert k2.key != k1.key and r.json()["login_id"] != login1
    assert len(st.admin("GET", f"/v1/admin/sessions?device={gid}").json()["sessions"]) == 1
    assert st.psql("SELECT reason FROM session_tombstones WHERE key_id = "
                   f"'{k1.key_id}'").strip() == "superseded"
    # A replayed login request is refused and changes nothing.
    r = post(st, req)
    assert r.status_code == 401 and error_code(r) == "unauthenticated", r.text
    # Logout: the key is destroyed, tombstone logout; a second logout has nothing to end.
    r = post(st, gw.logout_request())
    assert r.status_code == 200 and r.json() == {"v": 1, "logged_out": True}, r.text
    assert st.psql("SELECT reason FROM session_tombstones WHERE key_id = "
                   f"'{k2.key_id}'").strip() == "logout"
    assert st.admin("GET", f"/v1/admin/sessions?device={gid}").json()["sessions"] == []
    r = post(st, gw.logout_request())
    assert r.status_code == 404 and error_code(r) == "no_login", r.text
    assert audit_count(st, "gateway.login", gid) == 2
    assert audit_count(st, "gateway.logout", gid) == 1
    assert "correct horse" not in st.logs()


def test_wrong_logins_lock_the_account(st):
    gid = gateway(st)
    gw = Device.from_fill(fill(st, gid))
    tid = "tid-" + uuid.uuid4().hex[:8]
    assert credential(st, gid, tid, "s3cret-pass").status_code == 200
    for bad in ((tid, "wrong-pass"), ("other-" + tid, "s3cret-pass")):
        req, r = login(st, gw, *bad)
        assert r.status_code == 401 and error_code(r) == "login_failed", r.text
        # Its nonce was recorded: replaying it is a replay, not another attempt.
        r = post(st, req)
        assert r.status_code == 401 and error_code(r) == "unauthenticated"
    assert audit_count(st, "gateway.login_failed", gid) == 2
    # The third wrong password in a row locks the account (max 3, 3 s here).
    req, r = login(st, gw, tid, "wrong-again")
    assert r.status_code == 403 and error_code(r) == "login_locked", r.text
    assert int(r.headers["Retry-After"]) >= 1
    assert audit_count(st, "gateway.login_locked", gid) == 1
    assert audit_count(st, "gateway.login_failed", gid) == 3
    assert st.psql("SELECT detail->>'failures' FROM events WHERE type = 'gateway.login_locked'"
                   f" AND device_id = '{gid}'").split() == ["3"]
    # Locked: even the right password is refused, and not counted.
    req, r = login(st, gw, tid, "s3cret-pass")
    assert r.status_code == 403 and error_code(r) == "login_locked", r.text
    assert audit_count(st, "gateway.login_failed", gid) == 3
    assert wait_for(lambda: login(st, gw, tid, "s3cret-pass")[1].status_code == 200, timeout=10)
    # A local key never logs in; a generic one neither (only the access key).
    r = post(st, gw.login_request(tid, "s3cret-pass", index=1))
    assert r.status_code == 401 and error_code(r) == "unauthenticated"
    # No account: 403 no_credential.
    other = Device.from_fill(fill(st, gateway(st)))
    r = post(st, other.login_request(tid, "s3cret-pass"))
    assert r.status_code == 403 and error_code(r) == "no_credential", r.text
    # Bad inner requests.
    for inner in ({"tid": tid, "ts": int(time.time())},
                  {"tid": "", "password": "x", "ts": int(time.time())},
                  {"tid": tid, "password": "x", "ts": "now"},
                  {"tid": tid, "password": "x", "ts": int(time.time()), "extra": 1}):
        r = post(st, gw._gateway_request("login", inner, 0, None))
        assert r.status_code == 422 and error_code(r) == "invalid_request", (inner, r.text)


def test_credentials_are_checked_and_replacing_one_ends_the_login(st):
    gid = gateway(st)
    gw = Device.from_fill(fill(st, gid))
    tid = "tid-" + uuid.uuid4().hex[:8]
    for body in ({"tid": tid, "password": "short"}, {"tid": "has space", "password": "long-enough"},
                 {"tid": tid, "password": 12345678}, {"tid": tid}, {"password": "long-enough"}):
        r = st.admin("POST", f"/v1/admin/devices/{gid}/credential", json=body)
        assert r.status_code == 422 and error_code(r) == "invalid_credential", (body, r.text)
    r = st.admin("POST", f"/v1/admin/devices/{gid}/credential",
                 json={"tid": tid, "password": "long-enough", "color": 1})
    assert r.status_code == 422 and error_code(r) == "invalid_request"
    assert credential(st, gid, tid, "long-enough").status_code == 200
    # A tid is one gateway's.
    r = credential(st, gateway(st), tid, "long-enough")
    assert r.status_code == 409 and error_code(r) == "conflict", r.text
    req, r = login(st, gw, tid, "long-enough")
    key = gw.open_login_response(req, r.json())
    assert credential(st, gid, tid, "another-one").status_code == 200
    assert st.psql("SELECT reason FROM session_tombstones WHERE key_id = "
                   f"'{key.key_id}'").strip() == "ended_by_operator"
    assert login(st, gw, tid, "long-enough")[1].status_code == 401
    assert login(st, gw, tid, "another-one")[1].status_code == 200
    assert credential(st, uid("NOPE"), tid + "x", "long-enough").status_code == 404
    # Revoking the gateway ends its login.
    st.admin("POST", f"/v1/admin/devices/{gid}/revoke")
    assert st.admin("GET", f"/v1/admin/sessions?device={gid}").json()["sessions"] == []
    r = credential(st, gid, tid, "long-enough")
    assert r.status_code == 409 and error_code(r) == "invalid_state"


def test_kmsctl_credential(st):
    import json
    gid = gateway(st)
    gw = Device.from_fill(fill(st, gid))
    tid = "tid-" + uuid.uuid4().hex[:8]
    r = st.kmsctl("--json", "device", "credential", gid, "--tid", tid)
    assert r.returncode == 0, r.stderr
    made = json.loads(r.stdout)["password"]
    assert len(made) == 24
    assert login(st, gw, tid, made)[1].status_code == 200
    p = subprocess.run([KMSCTL, "device", "credential", gid, "--tid", tid, "--password-stdin"],
                       input="from-stdin-pass\n", env=dict(st.env, KMS_ADDR=st.url),
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and "from-stdin-pass" not in p.stdout, p.stderr
    assert login(st, gw, tid, "from-stdin-pass")[1].status_code == 200
    assert st.kmsctl("device", "credential", gid).returncode == 2
    # The login's policy names the platform as a type.
    name = "gwl-" + uuid.uuid4().hex[:6]
    r = st.kmsctl("policy", "add", name, "--types", "gateway:@platform", "--key-bits", "256")
    assert r.returncode == 0, r.stderr
    assert st.kmsctl("policy", "remove", name).returncode == 0


def test_a_gateway_out_of_service_cannot_try_passwords(st):
    """Standing is judged before any password: the same answer for a right
    and a wrong one, and nothing counted (docs/gateways.md, "Login")."""
    gid = gateway(st)
    gw = Device.from_fill(fill(st, gid))
    tid = "tid-" + uuid.uuid4().hex[:8]
    assert credential(st, gid, tid, "right-password").status_code == 200
    st.admin("POST", f"/v1/admin/devices/{gid}/suspend")
    for pw in ("right-password", "wrong-password", "wrong-again", "and-again"):
        req, r = login(st, gw, tid, pw)
        assert r.status_code == 403 and error_code(r) == "device_inactive", r.text
    st.admin("POST", f"/v1/admin/devices/{gid}/resume")
    assert service(st, gid, until="2020-01-01T00:00:00Z").status_code == 200
    for pw in ("right-password", "wrong-password", "wrong-again", "and-again"):
        req, r = login(st, gw, tid, pw)
        assert r.status_code == 403 and error_code(r) == "service_expired", r.text
    assert audit_count(st, "gateway.login_failed", gid) == 0
    assert audit_count(st, "gateway.login_locked", gid) == 0
    assert service(st, gid, days=30).status_code == 200
    assert login(st, gw, tid, "right-password")[1].status_code == 200


def test_a_login_resets_the_count_and_parallel_guesses_are_bounded(st):
    gid = gateway(st)
    gw = Device.from_fill(fill(st, gid))
    tid = "tid-" + uuid.uuid4().hex[:8]
    assert credential(st, gid, tid, "right-password").status_code == 200
    for _ in range(2):  # max 3 here
        assert login(st, gw, tid, "wrong-password")[1].status_code == 401
    assert login(st, gw, tid, "right-password")[1].status_code == 200
    for _ in range(2):
        r = login(st, gw, tid, "wrong-password")[1]
        assert r.status_code == 401 and error_code(r) == "login_failed", r.text
    assert login(st, gw, tid, "right-password")[1].status_code == 200
    # Wrong guesses eight at a time: at most three passwords are checked
    # before the lock, however many are in flight.
    before = audit_count(st, "gateway.login_failed", gid)
    codes = []
    with concurrent.futures.ThreadPoolExecutor(8) as ex:
        for _ in range(5):
            answers = list(ex.map(lambda i: login(st, gw, tid, f"guess-{i}")[1], range(8)))
            codes += [error_code(r) for r in answers]
            if "login_locked" in codes:
                break
    assert set(codes) <= {"login_failed", "login_locked", "unavailable", "rate_limited"}, codes
    assert "login_locked" in codes, codes
    assert codes.count("login_failed") <= 2, codes  # the third failure answers login_locked
    assert audit_count(st, "gateway.login_failed", gid) - before <= 3
    assert audit_count(st, "gateway.login_locked", gid) == 1


def test_logins_need_a_policy_and_end_by_timeout(st):
    name = "hub-" + uuid.uuid4().hex[:6]
    r = st.admin("POST", "/v1/admin/device-types", json={"name": name,
                                                          "key_purposes": ["access", "local"]})
    assert r.status_code == 201, r.text
    did = uid("HUB")
    assert st.admin("POST", "/v1/admin/devices", json={"device_id": did, "type": name,
                                                        "keys": 3}).status_code == 201
    hub = Device.from_fill(fill(st, did))
    tid = "tid-" + uuid.uuid4().hex[:8]
    assert credential(st, did, tid, "hub-password").status_code == 200
    for _ in range(4):  # a right password refused for want of a policy never locks
        r = login(st, hub, tid, "hub-password")[1]
        assert r.status_code == 403 and error_code(r) == "policy_denied", r.text
    r = st.admin("POST", "/v1/admin/policies", json={
        "name": name, "type_a": name, "type_b": "@platform", "idle_timeout_s": 1,
        "max_lifetime_s": 60})
    assert r.status_code == 201, r.text
    req, r = login(st, hub, tid, "hub-password")
    assert r.status_code == 200, r.text
    key = hub.open_login_response(req, r.json())
    assert len(key.key) == 16  # the policy's 128 bits
    assert wait_for(lambda: st.psql("SELECT reason FROM session_tombstones WHERE key_id = "
                             f"'{key.key_id}'").strip() == "idle_timeout", timeout=15)
    r = post(st, hub.logout_request())
    assert r.status_code == 404 and error_code(r) == "no_login", r.text
    # Only the access key logs in or out; the refusal records the nonce.
    r = post(st, hub.login_request(tid, "hub-password", index=2))
    assert r.status_code == 401 and error_code(r) == "unauthenticated", r.text
    req = hub.logout_request(index=2)
    r = post(st, req)
    assert r.status_code == 401 and error_code(r) == "unauthenticated"
    assert st.psql(f"SELECT count(*) FROM request_nonces n JOIN devices d ON d.id = n.device_pk"
                   f" WHERE d.device_id = '{did}' AND n.nonce = decode('"
                   f"{base64.urlsafe_b64decode(req.nonce_b64 + '==').hex()}', 'hex')"
                   ).strip() == "1"
    # A replayed logout, a stale one.
    req = hub.logout_request()
    assert post(st, req).status_code == 404
    r = post(st, req)
    assert r.status_code == 401 and error_code(r) == "unauthenticated"
    r = post(st, hub.logout_request(ts=int(time.time()) - 3600))
    assert r.status_code == 401 and error_code(r) == "unauthenticated"
    # No password in any audit row.
    assert st.psql("SELECT count(*) FROM audit_log WHERE detail::text LIKE '%password%'"
                   " OR detail::text LIKE '%hub-password%'").strip() == "0"


def test_v2_refuses_a_device_out_of_service(st):
    gid = gateway(st, keys=2)
    doc = fill(st, gid)
    dev2 = Device2.from_fill(doc, 3)
    plat = Platform.from_certificates(
        requests.get(st.url + "/v1/platform/certificates", timeout=10).json())
    veh = make_device(st, "vehicle")
    assert service(st, gid, until="2020-01-01T00:00:00Z").status_code == 200
    req = dev2.key_request(plat, uid(), veh.device_id, key_source="c")
    r = post(st, req)
    assert r.status_code == 403 and error_code(r) == "service_expired", r.text
    assert service(st, gid, days=1).status_code == 200
    req = dev2.key_request(plat, uid(), veh.device_id, key_source="c")
    r = post(st, req)
    assert r.status_code == 200, r.text


def test_v2_mode_3_refuses_a_local_key(st):
    """Protocol v2 mode 3 under the gateway's local key: the same 401 as
    v1, audited once (docs/gateways.md, "A local key on a device-facing
    door"); under its access key the same request is served."""
    gid = gateway(st, keys=2)
    doc = fill(st, gid)
    dev2 = Device2.from_fill(doc, 3)
    plat = Platform.from_certificates(
        requests.get(st.url + "/v1/platform/certificates", timeout=10).json())
    veh = make_device(st, "vehicle")
    count = lambda: st.psql("SELECT count(*) FROM audit_log WHERE event ="
                            f" 'device.local_key_refused' AND device_id = '{gid}'").strip()
    before = count()
    for _ in range(2):
        r = post(st, dev2.key_request(plat, uid(), veh.device_id, key_source="c", key_index=1))
        assert r.status_code == 401 and error_code(r) == "unauthenticated", r.text
    assert int(count()) == int(before) + 1
    detail = st.psql("SELECT detail::text FROM audit_log WHERE event = 'device.local_key_refused'"
                     f" AND device_id = '{gid}' ORDER BY id DESC LIMIT 1")
    assert '"key_index": 1' in detail and '"protocol": 2' in detail, detail
    r = post(st, dev2.key_request(plat, uid(), veh.device_id, key_source="c", key_index=0))
    assert r.status_code == 200, r.text
