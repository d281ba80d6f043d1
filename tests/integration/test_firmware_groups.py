"""Group targets of firmware packages (issue 19; docs/firmware.md "Group
targets", docs/api.md "Group firmware keys") against real kmsd, PostgreSQL
and SoftHSM: a group's firmware key is made and kept wrapped under the
master key, delivered to each device of the group in its fill document, and
a package signed for the group opens on every device of it (C library and
Python) and on no other; rotation keeps devices filled earlier working
until the previous key is destroyed; a master key rotation rewraps the
group keys and the old master version is destroyed."""
import json
import os
import subprocess
import time
import uuid

import pytest

import qkms_fw_py as fw
from conftest import wait_for
from helpers import error_code as code
from test_firmware_sign import QKMS_DEVICE, Release, cert_der


def group_of(fill):
    g = fill["firmware_group_key"]
    return fw.Group(name=g["group"], key_id=bytes.fromhex(g["key_id"]),
                    key=bytes.fromhex(g["key"]))


def policy(rel, fill, with_group=True, with_device=True, **kw):
    return fw.Policy(product=rel.product, certs=[cert_der(rel)], device_id=fill["device_id"],
                     device_keys={k["index"]: bytes.fromhex(k["key"]) for k in fill["keys"]}
                     if with_device else {},
                     groups=[group_of(fill)] if with_group and "firmware_group_key" in fill
                     else [], **kw)


def recipients(pkg):
    n = int.from_bytes(pkg[10:12], "big")
    return [(pkg[40 + 80 * i], pkg[44 + 80 * i:60 + 80 * i].hex()) for i in range(n)]


def sign_groups(rel, image, groups, devices=(), token=None, **params):
    q = [("product", rel.product), ("version", params.pop("version", "1.0.0"))]
    q += [("device", d) for d in devices] + [("group", g) for g in groups]
    q += [(k, str(v)) for k, v in params.items()]
    return rel.st.api("POST", "/v1/admin/firmware/packages", token=token or rel.token, params=q,
                      data=image, headers={"Content-Type": "application/octet-stream"})


def c_open(rel, tmp_path, pkg, fill, name, extra=()):
    (tmp_path / "fw.pem").write_text(rel.key["certificate"])
    (tmp_path / f"{name}.pkg").write_bytes(pkg)
    (tmp_path / f"{name}.fill").write_text(json.dumps(fill))
    out = tmp_path / f"{name}.img"
    return subprocess.run([QKMS_DEVICE, "firmware", "open", "--in", str(tmp_path / f"{name}.pkg"),
                           "--out", str(out), "--product", rel.product, "--certs",
                           str(tmp_path / "fw.pem"), "--fill", str(tmp_path / f"{name}.fill"),
                           "--no-clock", "--json", *extra],
                          capture_output=True, text=True, timeout=120), out


@pytest.fixture
def rel(stack):
    return Release(stack)


def test_a_group_package_opens_on_the_group_and_nowhere_else(rel, stack, tmp_path):
    r = stack.admin("POST", "/v1/admin/firmware/groups", json={"group": rel.group})
    assert r.status_code == 201, r.text
    key = r.json()
    assert (key["group"], key["state"], len(key["key_id"])) == (rel.group, "active", 32)
    (d1, f1), (d2, f2) = rel.device(), rel.device(keys=1)
    for f in (f1, f2):
        g = f["firmware_group_key"]
        assert (g["group"], g["key_id"], len(g["key"])) == (rel.group, key["key_id"], 64)
    assert f1["firmware_group_key"]["key"] == f2["firmware_group_key"]["key"]
    # Another group's device, with its own group key.
    other = Release(stack)
    assert stack.admin("POST", "/v1/admin/firmware/groups",
                       json={"group": other.group}).status_code == 201
    d3, f3 = other.device()
    assert f3["firmware_group_key"]["key_id"] != key["key_id"]

    image = os.urandom(3 << 20)
    r = sign_groups(rel, image, [rel.group], version="5.0")
    assert r.status_code == 201, r.text[:300]
    pkg = r.content
    # One recipient entry for the whole group: its key, by key ID.
    assert recipients(pkg) == [(1, key["key_id"])]
    for f in (f1, f2):
        img, m = fw.open_package(pkg, policy(rel, f, with_device=False))
        assert img == image and m["targets"] == {"groups": [rel.group], "devices": []}
    # The C library finds the group key in the fill document.
    p, out = c_open(rel, tmp_path, pkg, f1, "d1")
    assert p.returncode == 0, p.stderr
    info = json.loads(p.stdout)
    assert (info["target"], info["group"], info["version"]) == ("group", rel.group, "5.0")
    assert out.read_bytes() == image
    # Nobody else: the other group's device (its own group key, its keys).
    with pytest.raises(fw.FwError) as ex:
        fw.open_package(pkg, policy(rel, f3))
    assert ex.value.code == "not_a_target"
    p, out = c_open(rel, tmp_path, pkg, f3, "d3")
    assert p.returncode != 0 and "not_a_target" in p.stderr and not out.exists()
    # A key carrying the right key ID under another group name opens the
    # content key but the manifest does not name that group.
    forged = dict(f3, firmware_group_key=dict(f1["firmware_group_key"], group=other.group))
    with pytest.raises(fw.FwError) as ex:
        fw.open_package(pkg, policy(rel, forged, with_device=False))
    assert ex.value.code == "not_a_target"

    # Devices and groups together: one entry each.
    r = sign_groups(rel, b"both", [rel.group, other.group], devices=[d1])
    assert r.status_code == 201, r.text
    kinds = [k for k, _ in recipients(r.content)]
    assert sorted(kinds) == [1, 1, 2]
    _, m = fw.open_package(r.content, policy(rel, f3))
    assert m["targets"] == {"groups": [rel.group, other.group], "devices": [d1]}

    # At rest only wrapped; audited, the fill naming the key it carried.
    hexkey = f1["firmware_group_key"]["key"]
    assert stack.psql("SELECT count(*) FROM firmware_group_keys WHERE"
                      f" position(decode('{hexkey}', 'hex') in wrapped) > 0"
                      f" OR encode(wrapped, 'hex') LIKE '%{hexkey}%'").strip() == "0"
    a = stack.psql("SELECT detail->>'firmware_group_key_id' FROM audit_log WHERE"
                   f" event = 'device.fill_exported' AND device_id = '{d1}'").strip()
    assert a == key["key_id"]
    a = json.loads(stack.psql("SELECT detail::text FROM audit_log WHERE event = 'firmware.signed'"
                              f" AND detail->>'product' = '{rel.product}'"
                              " ORDER BY id DESC LIMIT 1"))
    assert a["targets"] == {"groups": [rel.group, other.group], "devices": [d1]}
    assert a["recipients"] == 3
    assert stack.psql("SELECT count(*) FROM audit_log WHERE event = 'firmware.group_key_created'"
                      f" AND detail->>'group' = '{rel.group}'").strip() == "1"


def test_rotation_keeps_earlier_devices_until_the_previous_key_is_destroyed(rel, stack):
    g = rel.group
    k1 = stack.admin("POST", "/v1/admin/firmware/groups", json={"group": g}).json()["key_id"]
    d_old, f_old = rel.device()
    r = stack.admin("POST", f"/v1/admin/firmware/groups/{g}/rotate")
    assert r.status_code == 200, r.text
    k2 = r.json()["key_id"]
    assert k2 != k1 and r.json()["state"] == "active"
    keys = stack.admin("GET", f"/v1/admin/firmware/groups?group={g}").json()["keys"]
    assert [(k["key_id"], k["state"]) for k in keys] == [(k2, "active"), (k1, "previous")]
    assert keys[1]["superseded_at"] and keys[0]["superseded_at"] is None
    d_new, f_new = rel.device()
    assert f_new["firmware_group_key"]["key_id"] == k2
    # Wrapped for both keys: devices filled before and after open it.
    r = sign_groups(rel, b"overlap", [g])
    assert sorted(recipients(r.content)) == sorted([(1, k2), (1, k1)])
    for f in (f_old, f_new):
        assert fw.open_package(r.content, policy(rel, f, with_device=False))[0] == b"overlap"
    # The active key is not destroyed; a previous one is, and then only
    # the refilled devices open the group's packages.
    r = stack.admin("DELETE", f"/v1/admin/firmware/groups/{g}/keys/{k2}")
    assert (r.status_code, code(r)) == (409, "key_active")
    r = stack.admin("DELETE", f"/v1/admin/firmware/groups/{g}/keys/{k1.upper()}")
    assert r.status_code == 200 and r.json() == {"group": g, "key_id": k1.upper(),
                                                 "state": "destroyed"}, r.text
    r = stack.admin("DELETE", f"/v1/admin/firmware/groups/{g}/keys/{k1}")
    assert (r.status_code, code(r)) == (404, "not_found")
    r = sign_groups(rel, b"after", [g])
    assert recipients(r.content) == [(1, k2)]
    assert fw.open_package(r.content, policy(rel, f_new, with_device=False))[0] == b"after"
    with pytest.raises(fw.FwError) as ex:
        fw.open_package(r.content, policy(rel, f_old, with_device=False))
    assert ex.value.code == "not_a_target"
    # A refill (forced: its keys were exported) gives the old device the new key.
    r = stack.admin("POST", f"/v1/admin/devices/{d_old}/fill",
                    json={"plaintext": True, "force": True})
    assert r.json()["plaintext"]["firmware_group_key"]["key_id"] == k2
    # At most four keys a package is wrapped for.
    for _ in range(3):
        assert stack.admin("POST", f"/v1/admin/firmware/groups/{g}/rotate").status_code == 200
    r = stack.admin("POST", f"/v1/admin/firmware/groups/{g}/rotate")
    assert (r.status_code, code(r)) == (409, "too_many_keys")
    assert len(recipients(sign_groups(rel, b"four", [g]).content)) == 4
    events = stack.psql("SELECT event FROM audit_log WHERE detail->>'group' = "
                        f"'{g}' AND event LIKE 'firmware.group_key_%' ORDER BY id").split()
    assert events == ["firmware.group_key_created", "firmware.group_key_rotated",
                      "firmware.group_key_destroyed"] + ["firmware.group_key_rotated"] * 3


def test_refusals(rel, stack):
    g = rel.group
    d, f = rel.device()
    assert "firmware_group_key" not in f   # the group has no key yet
    r = sign_groups(rel, b"x", [g])
    assert (r.status_code, code(r)) == (409, "no_group_key")
    assert stack.admin("POST", "/v1/admin/firmware/groups", json={"group": g}).status_code == 201
    cases = [
        (dict(groups=[g, g]), 422, "invalid_targets"),
        (dict(groups=["-bad"]), 422, "invalid_targets"),
        (dict(groups=["x" * 65]), 422, "invalid_targets"),
        (dict(groups=[g], devices=["D%d" % i for i in range(100)]), 422, "invalid_targets"),
        (dict(groups=[g + "-none"]), 409, "no_group_key"),
    ]
    for kw, status, c in cases:
        r = sign_groups(rel, b"firmware", kw["groups"], devices=kw.get("devices", ()))
        assert (r.status_code, code(r)) == (status, c), (kw, r.text)
    assert stack.psql("SELECT count(*) FROM firmware_releases"
                      f" WHERE product = '{rel.product}'").strip() == "0"
    for body, status, c in (({"group": g}, 409, "conflict"), ({"group": "-x"}, 422, "invalid_group"),
                            ({"group": 5}, 422, "invalid_request"),
                            ({"group": g, "x": 1}, 422, "invalid_request")):
        r = stack.admin("POST", "/v1/admin/firmware/groups", json=body)
        assert (r.status_code, code(r)) == (status, c), (body, r.text)
    for method, path, status, c in (
            ("POST", f"/v1/admin/firmware/groups/{g}-none/rotate", 404, "not_found"),
            ("POST", "/v1/admin/firmware/groups/-x/rotate", 422, "invalid_group"),
            ("DELETE", f"/v1/admin/firmware/groups/{g}/keys/abc", 422, "invalid_key_id"),
            ("DELETE", f"/v1/admin/firmware/groups/{g}/keys/{'0' * 32}", 404, "not_found"),
            ("GET", "/v1/admin/firmware/groups?group=-x", 422, "invalid_group")):
        r = stack.admin(method, path)
        assert (r.status_code, code(r)) == (status, c), (path, r.text)
    # Release tokens read the groups' key IDs, never change them.
    assert stack.api("GET", "/v1/admin/firmware/groups", token=rel.token).status_code == 200
    r = stack.api("POST", f"/v1/admin/firmware/groups/{g}/rotate", token=rel.token)
    assert (r.status_code, code(r)) == (403, "forbidden")
    # No key bytes in any answer but the fill.
    listing = stack.admin("GET", f"/v1/admin/firmware/groups?group={g}").json()
    assert set(listing["keys"][0]) == {"group", "key_id", "state", "master_version", "created_at",
                                       "created_by", "superseded_at"}
    # A family-only refill carries the gateway's keys alone, not the group's.
    gw = "GW-" + uuid.uuid4().hex[:8]
    r = stack.admin("POST", "/v1/admin/devices", json={"device_id": gw, "type": "gateway",
                                                       "group": g})
    assert r.status_code == 201, r.text
    sub = "SUB-" + uuid.uuid4().hex[:8]
    r = stack.admin("POST", "/v1/admin/devices", json={"device_id": sub, "type": "subdevice",
                                                       "group": g, "parent": gw, "keys": 1})
    assert r.status_code == 201, r.text
    r = stack.admin("POST", f"/v1/admin/devices/{sub}/fill", json={"plaintext": True})
    assert "firmware_group_key" in r.json()["plaintext"] and "family" in r.json()["plaintext"]
    r = stack.admin("POST", f"/v1/admin/devices/{sub}/fill",
                    json={"plaintext": True, "family_only": True})
    assert r.status_code == 200, r.text
    assert "firmware_group_key" not in r.json()["plaintext"]


def test_kmsctl_groups_and_group_signing(rel, stack, tmp_path):
    g = rel.group
    r = stack.kmsctl("firmware", "groups", "create", g, "--json", token=stack.admin_token)
    assert r.returncode == 0, r.stderr
    k1 = json.loads(r.stdout)["key_id"]
    r = stack.kmsctl("firmware", "groups", "list", g, token=stack.admin_token)
    assert r.returncode == 0 and k1 in r.stdout and "GROUP" in r.stdout, r.stdout
    d, f = rel.device()
    (tmp_path / "app.bin").write_bytes(b"app" * 1000)
    r = rel.st.kmsctl("firmware", "sign", str(tmp_path / "app.bin"), "--product", rel.product,
                      "--version", "1", "--group", g, "--out", str(tmp_path / "app.pkg"),
                      "--json", token=rel.token)
    assert r.returncode == 0, r.stderr
    img, m = fw.open_package((tmp_path / "app.pkg").read_bytes(),
                             policy(rel, f, with_device=False))
    assert img == b"app" * 1000 and m["targets"]["groups"] == [g]
    r = stack.kmsctl("firmware", "groups", "rotate", g, "--json", token=stack.admin_token)
    assert r.returncode == 0 and json.loads(r.stdout)["key_id"] != k1
    r = stack.kmsctl("firmware", "groups", "destroy", g, k1, token=stack.admin_token)
    assert r.returncode == 0 and f"Destroyed key {k1}" in r.stdout, r.stdout + r.stderr
    for args in (("firmware", "groups", "destroy", g), ("firmware", "groups", "create"),
                 ("firmware", "groups", "drop", g), ("firmware", "groups", "create", "a/b")):
        r = stack.kmsctl(*args, token=stack.admin_token)
        assert r.returncode == 2, (args, r.stderr)
    r = stack.kmsctl("firmware", "groups", "rotate", g + "-none", token=stack.admin_token)
    assert r.returncode != 0 and "not_found" in r.stderr + r.stdout


def test_master_rotation_rewraps_group_keys(fresh_stack):
    st = fresh_stack
    st.start(extra_env={"QKMS_MAINTENANCE_INTERVAL": "1", "QKMS_DEVICE_KEY_CACHE_TTL": "1"})
    rel = Release(st)
    assert st.admin("POST", "/v1/admin/firmware/groups", json={"group": rel.group}).status_code == 201
    _, before = rel.device()
    assert st.psql("SELECT master_version FROM firmware_group_keys").strip() == "1"
    assert st.admin("POST", "/v1/admin/master/rotate").status_code == 200

    def destroyed():
        v = {x["version"]: x["state"] for x in st.admin("GET", "/v1/admin/master").json()["versions"]}
        return v.get(1) == "destroyed"
    assert wait_for(destroyed, timeout=60)
    assert st.psql("SELECT master_version FROM firmware_group_keys").strip() == "2"
    assert st.admin("GET", "/v1/admin/master").json()["pending_rewrap"] == 0
    # The same key, now under version 2: a later fill carries it unchanged.
    _, after = rel.device()
    assert after["firmware_group_key"] == before["firmware_group_key"]
    r = sign_groups(rel, b"fw", [rel.group])
    assert fw.open_package(r.content, policy(rel, before, with_device=False))[0] == b"fw"
