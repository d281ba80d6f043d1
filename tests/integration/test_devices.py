"""Devices and their pre-filled keys through the HTTP API, against real
kmsd, PostgreSQL and SoftHSM: registration, bad input, lifecycle, rotation,
expiry, fill export (opened by an independent Python implementation)."""
import base64
import re
import subprocess
import time
import uuid

import pytest
import requests
from cryptography.hazmat.primitives import cmac, serialization
from cryptography.hazmat.primitives.ciphers.algorithms import AES
from cryptography.hazmat.primitives.asymmetric import ec, rsa, x25519

from conftest import Stack, _finish, running_stack, wait_for


@pytest.fixture(scope="module")
def dev():
    st = running_stack("qkms-dev", {"QKMS_MAINTENANCE_INTERVAL": "1"})
    yield st
    _finish(st)


def uid(prefix="D"):
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def register(st, **body):
    body.setdefault("device_id", uid())
    body.setdefault("type", "vehicle")
    return st.admin("POST", "/v1/admin/devices", json=body)


def device_count(st):
    return int(st.psql("SELECT count(*) FROM devices").strip())


def kcv_of(key: bytes) -> str:
    c = cmac.CMAC(AES(key))
    c.update(bytes(16))
    return c.finalize()[:5].hex()


def token_for(st, role):
    r = st.admin("POST", "/v1/admin/tokens", json={"name": uid(role), "role": role})
    assert r.status_code == 201
    return r.json()


# ---- registration -----------------------------------------------------------

def test_register_defaults(dev):
    did = uid("VIN")
    r = register(dev, device_id=did, group="fleet-a")
    assert r.status_code == 201, r.text
    d = r.json()
    assert d["device_id"] == did and d["type"] == "vehicle" and d["group"] == "fleet-a"
    assert d["state"] == "active" and d["parent"] is None
    assert [k["index"] for k in d["keys"]] == [0, 1, 2, 3]
    for k in d["keys"]:
        assert k["algorithm"] == "AES-128" and k["state"] == "active" and not k["expired"]
        assert k["master_version"] == 1 and k["provenance"] in ("pkcs11+ctr-drbg", "os (fallback)")
        assert k["not_after"][:4] == str(int(k["not_before"][:4]) + 1)  # one year (seed 004)
    # Stored wrapped, with the master version, one indexed row per key.
    rows = dev.psql(f"SELECT key_index, length(wrapped), master_version FROM device_keys k "
                    f"JOIN devices d ON d.id = k.device_pk WHERE d.device_id = '{did}' ORDER BY 1")
    assert rows.split() == [f"{i}|49|1" for i in range(4)]  # 5 hdr + 12 IV + 16 key + 16 tag


def test_register_options(dev):
    r = register(dev, keys=2, key_bits=256, validity_days=30, type="encryptor")
    assert r.status_code == 201, r.text
    keys = r.json()["keys"]
    assert len(keys) == 2 and all(k["algorithm"] == "AES-256" for k in keys)


def test_gateway_and_subdevice(dev):
    gw, sub = uid("GW"), uid("SUB")
    assert register(dev, device_id=gw, type="gateway").status_code == 201
    r = register(dev, device_id=sub, type="subdevice", parent=gw)
    assert r.status_code == 201 and r.json()["parent"] == gw
    veh = uid()
    assert register(dev, device_id=veh).status_code == 201
    r = register(dev, type="subdevice", parent=veh)
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_parent"
    r = register(dev, type="subdevice")
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_parent"
    r = register(dev, type="subdevice", parent="NO-SUCH-GW")
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_parent"
    r = register(dev, type="vehicle", parent=gw)
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_parent"


BAD = [
    ({"device_id": ""}, "invalid_device_id"),
    ({"device_id": "x" * 129}, "invalid_device_id"),
    ({"device_id": "caf\u00e9"}, "invalid_device_id"),
    ({"device_id": "a\u0001b"}, "invalid_device_id"),
    ({"device_id": "a b"}, "invalid_device_id"),
    ({"device_id": "a/b"}, "invalid_device_id"),
    ({"device_id": 42}, "invalid_device_id"),
    ({"type": "spaceship"}, "invalid_type"),
    ({"type": "Vehicle!"}, "invalid_type"),
    ({"validity_days": 0}, "invalid_validity"),
    ({"validity_days": 3651}, "invalid_validity"),
    ({"validity_days": "365"}, "invalid_validity"),
    ({"keys": 0}, "invalid_keys"),
    ({"keys": 17}, "invalid_keys"),
    ({"key_bits": 192}, "invalid_key_bits"),
    ({"group": "bad group"}, "invalid_group"),
    ({"colour": "red"}, "invalid_request"),
]


@pytest.mark.parametrize("body,code", BAD, ids=[c + str(i) for i, (_, c) in enumerate(BAD)])
def test_register_bad_input(dev, body, code):
    before = device_count(dev)
    r = register(dev, **body)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == code
    assert device_count(dev) == before


def test_register_duplicate_and_unknown(dev):
    did = uid()
    assert register(dev, device_id=did).status_code == 201
    before = int(dev.psql("SELECT count(*) FROM device_keys").strip())
    r = register(dev, device_id=did)
    assert r.status_code == 409 and r.json()["error"]["code"] == "conflict"
    assert int(dev.psql("SELECT count(*) FROM device_keys").strip()) == before
    r = dev.admin("GET", "/v1/admin/devices/NOPE-" + did)
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = dev.admin("POST", "/v1/admin/devices/NOPE-" + did + "/suspend")
    assert r.status_code == 404


def test_device_types(dev):
    r = dev.admin("GET", "/v1/admin/device-types")
    assert set(r.json()["types"]) >= {"vehicle", "encryptor", "meter", "gateway", "subdevice", "generic"}
    name = "rsu" + uuid.uuid4().hex[:6]
    assert dev.admin("POST", "/v1/admin/device-types", json={"name": name}).status_code == 201
    assert dev.admin("POST", "/v1/admin/device-types", json={"name": name}).status_code == 409
    assert register(dev, type=name).status_code == 201
    assert dev.admin("POST", "/v1/admin/device-types", json={"name": "Bad Name"}).status_code == 422


def test_roles(dev):
    op = token_for(dev, "operator")["token"]
    aud = token_for(dev, "auditor")["token"]
    did = uid()
    r = dev.api("POST", "/v1/admin/devices", token=op, json={"device_id": did, "type": "meter"})
    assert r.status_code == 201
    assert dev.api("GET", f"/v1/admin/devices/{did}", token=aud).status_code == 200
    r = dev.api("POST", "/v1/admin/devices", token=aud, json={"device_id": uid(), "type": "meter"})
    assert r.status_code == 403
    assert dev.api("POST", f"/v1/admin/devices/{did}/revoke", token=aud).status_code == 403
    assert dev.api("POST", "/v1/admin/device-types", token=op, json={"name": "zz"}).status_code == 403
    # Registration is audited with the token's name.
    actor = dev.psql(f"SELECT actor FROM audit_log WHERE event = 'device.registered' "
                     f"AND device_id = '{did}'").strip()
    assert actor.startswith("operator-")


# ---- listing ------------------------------------------------------------------

def test_list_filters_and_pages(dev):
    grp = "g" + uuid.uuid4().hex[:8]
    ids = sorted(uid("L") for _ in range(5))
    for i, d in enumerate(ids):
        assert register(dev, device_id=d, group=grp, type="meter" if i % 2 else "vehicle",
                        validity_days=10 if i == 0 else 365).status_code == 201
    r = dev.admin("GET", f"/v1/admin/devices?group={grp}")
    assert [d["device_id"] for d in r.json()["devices"]] == ids
    assert all(d["active_keys"] == 4 for d in r.json()["devices"])
    r = dev.admin("GET", f"/v1/admin/devices?group={grp}&type=meter")
    assert [d["device_id"] for d in r.json()["devices"]] == ids[1::2]
    r = dev.admin("GET", f"/v1/admin/devices?group={grp}&expiring_within=15")
    assert [d["device_id"] for d in r.json()["devices"]] == ids[:1]
    # Pagination with a cursor.
    seen, after = [], None
    while True:
        q = f"/v1/admin/devices?group={grp}&limit=2" + (f"&after={after}" if after else "")
        page = dev.admin("GET", q).json()
        seen += [d["device_id"] for d in page["devices"]]
        after = page["next"]
        if not after:
            break
    assert seen == ids
    for bad in ("limit=0", "limit=1001", "state=gone", "expiring_within=-1", "type=Bad!"):
        r = dev.admin("GET", "/v1/admin/devices?" + bad)
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_query", bad


# ---- lifecycle ----------------------------------------------------------------

def test_suspend_resume_revoke(dev):
    did = uid()
    register(dev, device_id=did)
    assert dev.admin("POST", f"/v1/admin/devices/{did}/resume").status_code == 409
    r = dev.admin("POST", f"/v1/admin/devices/{did}/suspend")
    assert r.status_code == 200 and r.json()["state"] == "suspended"
    assert dev.admin("POST", f"/v1/admin/devices/{did}/suspend").status_code == 409
    r = dev.admin("POST", f"/v1/admin/devices/{did}/resume")
    assert r.json()["state"] == "active"
    r = dev.admin("POST", f"/v1/admin/devices/{did}/revoke")
    assert r.status_code == 200 and r.json()["state"] == "revoked"
    assert all(k["state"] == "destroyed" for k in r.json()["keys"])
    # The key bytes are gone from the database, not just flagged.
    assert dev.psql(f"SELECT count(*) FROM device_keys k JOIN devices d ON d.id = k.device_pk "
                    f"WHERE d.device_id = '{did}' AND wrapped IS NOT NULL").strip() == "0"
    r = dev.admin("POST", f"/v1/admin/devices/{did}/resume")
    assert r.status_code == 409 and r.json()["error"]["code"] == "invalid_state"
    assert dev.admin("POST", f"/v1/admin/devices/{did}/revoke").status_code == 409
    r = dev.admin("POST", f"/v1/admin/devices/{did}/suspend", json={"why": "x"})
    assert r.status_code == 422
    events = dev.psql(f"SELECT event FROM audit_log WHERE device_id = '{did}' ORDER BY id").split()
    assert events == ["device.registered", "device.suspended", "device.resumed", "device.revoked"]


def test_rotate_and_retire_after_grace(dev):
    did = uid()
    register(dev, device_id=did, keys=2)
    r = dev.admin("POST", f"/v1/admin/devices/{did}/rotate", json={"grace_days": 0})
    assert r.status_code == 200, r.text
    keys = r.json()["keys"]
    assert [k["index"] for k in keys] == [0, 1, 2]
    assert keys[2]["state"] == "active" and keys[2]["retire_at"] is None
    # grace 0: the maintenance pass (every second here) retires the old keys.
    deadline = time.time() + 15
    while time.time() < deadline:
        keys = dev.admin("GET", f"/v1/admin/devices/{did}/keys").json()["keys"]
        if keys[0]["state"] == "retired":
            break
        time.sleep(0.3)
    assert [k["state"] for k in keys] == ["retired", "retired", "active"]
    assert dev.psql(f"SELECT count(*) FROM audit_log WHERE device_id = '{did}' "
                    f"AND event = 'device_key.retired'").strip() == "2"
    # With a grace period the old key stays active, with a retire date.
    r = dev.admin("POST", f"/v1/admin/devices/{did}/rotate", json={"grace_days": 30, "key_bits": 256})
    keys = r.json()["keys"]
    assert keys[2]["state"] == "active" and keys[2]["retire_at"] is not None
    assert keys[3]["algorithm"] == "AES-256"
    assert dev.admin("POST", f"/v1/admin/devices/{did}/rotate",
                     json={"grace_days": 366}).status_code == 422
    dev.admin("POST", f"/v1/admin/devices/{did}/revoke")
    r = dev.admin("POST", f"/v1/admin/devices/{did}/rotate")
    assert r.status_code == 409


def test_expired_keys_are_not_exported_and_warned_once(dev):
    did = uid("EXP")
    register(dev, device_id=did, keys=2, validity_days=5)
    # Expiry warning: logged once, not again on the next passes.
    assert wait_for(lambda: f'"device_id":"{did}"' in dev.logs(), 10, 0.3)
    time.sleep(2.5)
    warned = [r for r in dev.log_records()
              if r.get("msg") == "device key expiring soon" and r.get("device_id") == did]
    assert len(warned) == 1
    # The warning is an event too (docs/gateways.md "Events"), once.
    assert dev.psql("SELECT detail->>'not_after' IS NOT NULL FROM events"
                    f" WHERE type = 'device.key_expiring' AND device_id = '{did}'").split() == ["t"]
    m = requests.get(dev.url + "/metrics").text
    assert int(re.search(r"^qkms_device_keys_expiring (\d+)", m, re.M).group(1)) >= 2
    # Make key 0 expire (as time would), then it is neither live nor exportable.
    dev.psql(f"UPDATE device_keys SET not_before = now() - interval '2 days', "
             f"not_after = now() - interval '1 day' FROM devices d "
             f"WHERE d.id = device_pk AND d.device_id = '{did}' AND key_index = 0")
    keys = dev.admin("GET", f"/v1/admin/devices/{did}/keys").json()["keys"]
    assert keys[0]["expired"] and not keys[1]["expired"]
    r = dev.admin("POST", f"/v1/admin/devices/{did}/fill", json={"plaintext": True, "indices": [0]})
    assert r.status_code == 422 and r.json()["error"]["code"] == "no_exportable_keys"
    r = dev.admin("POST", f"/v1/admin/devices/{did}/fill", json={"plaintext": True})
    assert r.status_code == 200 and r.json()["indices"] == [1]


# ---- fill export ------------------------------------------------------------

def _pem(pub):
    return pub.public_bytes(serialization.Encoding.PEM,
                            serialization.PublicFormat.SubjectPublicKeyInfo).decode()


@pytest.mark.parametrize("curve", ["x25519", "p256"])
def test_fill_package_round_trip(dev, curve):
    priv = x25519.X25519PrivateKey.generate() if curve == "x25519" else ec.generate_private_key(ec.SECP256R1())
    did = uid("FILL")
    register(dev, device_id=did, keys=3, group="fleet-f")
    op = token_for(dev, "operator")
    r = dev.api("POST", f"/v1/admin/devices/{did}/fill", token=op["token"],
                json={"recipient_pub": _pem(priv.public_key())})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["indices"] == [0, 1, 2] and out["format"] == "qkms-fill/1"
    import fillpkg_py
    pkg = base64.b64decode(out["package"], validate=True)
    assert pkg[:4] == b"QKFP" and pkg[4] == 1 and pkg[5] == (1 if curve == "x25519" else 2)
    doc = fillpkg_py.open_package(priv, pkg)
    import json
    doc = json.loads(doc)
    assert doc["format"] == "qkms-fill/1" and doc["device_id"] == did and doc["group"] == "fleet-f"
    assert [k["index"] for k in doc["keys"]] == [0, 1, 2]
    # The platform's check values (computed after unwrapping through the
    # token) match the keys in the package, without the API revealing keys.
    platform = {k["index"]: k["kcv"] for k in
                dev.admin("GET", f"/v1/admin/devices/{did}/keys?kcv=true").json()["keys"]}
    for k in doc["keys"]:
        key = bytes.fromhex(k["key"])
        assert len(key) == 16 and k["algorithm"] == "AES-128"
        assert kcv_of(key) == k["kcv"] == platform[k["index"]]
    # Wrong private key or a flipped byte: the package does not open.
    other = x25519.X25519PrivateKey.generate() if curve == "x25519" else ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(Exception):
        fillpkg_py.open_package(other, pkg)
    bad = bytearray(pkg)
    bad[-20] ^= 1
    with pytest.raises(Exception):
        fillpkg_py.open_package(priv, bytes(bad))
    # A second export is refused unless forced; every export is audited.
    r = dev.api("POST", f"/v1/admin/devices/{did}/fill", token=op["token"],
                json={"recipient_pub": _pem(priv.public_key())})
    assert r.status_code == 409 and r.json()["error"]["code"] == "already_exported"
    r = dev.api("POST", f"/v1/admin/devices/{did}/fill", token=op["token"],
                json={"recipient_pub": _pem(priv.public_key()), "force": True, "indices": [1]})
    assert r.status_code == 200 and r.json()["indices"] == [1]
    audit = dev.psql(f"SELECT actor, detail->>'mode', detail->>'forced', detail->>'recipient_fingerprint' "
                     f"FROM audit_log WHERE device_id = '{did}' AND event = 'device.fill_exported' "
                     f"ORDER BY id").split()
    assert len(audit) == 2
    assert all(a.startswith(op["name"] + "|sealed|") for a in audit)
    assert audit[0].split("|")[2] == "false" and audit[1].split("|")[2] == "true"
    assert audit[0].split("|")[3] == out["recipient_fingerprint"]
    # Stored key bytes never appear in the database dump or the log.
    dump = subprocess.run(["pg_dump", "-d", dev.pg_dsn], capture_output=True, text=True).stdout
    for k in doc["keys"]:
        assert k["key"] not in dump and k["key"] not in dev.logs()
        assert k["key"].upper() not in dump


def test_fill_rotated_key_only_exports_the_new_one(dev):
    priv = x25519.X25519PrivateKey.generate()
    did = uid("FILLR")
    register(dev, device_id=did, keys=1)
    pem = _pem(priv.public_key())
    assert dev.admin("POST", f"/v1/admin/devices/{did}/fill", json={"recipient_pub": pem}).status_code == 200
    dev.admin("POST", f"/v1/admin/devices/{did}/rotate", json={"grace_days": 10})
    r = dev.admin("POST", f"/v1/admin/devices/{did}/fill", json={"recipient_pub": pem})
    assert r.status_code == 200 and r.json()["indices"] == [1]


def test_fill_bad_recipient_and_roles(dev):
    did = uid("FILLB")
    register(dev, device_id=did)
    rsa_pub = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    p384 = ec.generate_private_key(ec.SECP384R1()).public_key()
    x_priv = x25519.X25519PrivateKey.generate()
    priv_pem = x_priv.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()).decode()
    for pem in (_pem(rsa_pub), _pem(p384), "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
                priv_pem, "hello"):
        r = dev.admin("POST", f"/v1/admin/devices/{did}/fill", json={"recipient_pub": pem})
        assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_recipient_key", pem[:30]
    for body in ({}, {"recipient_pub": _pem(x_priv.public_key()), "plaintext": True},
                 {"plaintext": "yes"}, {"plaintext": True, "indices": [0, 0]},
                 {"plaintext": True, "indices": [256]}, {"plaintext": True, "extra": 1}):
        r = dev.admin("POST", f"/v1/admin/devices/{did}/fill", json=body)
        assert r.status_code == 422, body
    r = dev.admin("POST", f"/v1/admin/devices/{did}/fill", json={"plaintext": True, "indices": [9]})
    assert r.status_code == 422 and r.json()["error"]["code"] == "no_exportable_keys"
    # Nothing above counted as an export.
    assert dev.psql(f"SELECT sum(export_count) FROM device_keys k JOIN devices d ON d.id = k.device_pk "
                    f"WHERE d.device_id = '{did}'").strip() == "0"
    op = token_for(dev, "operator")["token"]
    r = dev.api("POST", f"/v1/admin/devices/{did}/fill", token=op, json={"plaintext": True})
    assert r.status_code == 403
    r = dev.admin("POST", f"/v1/admin/devices/{did}/fill", json={"plaintext": True})
    assert r.status_code == 200
    keys = r.json()["plaintext"]["keys"]
    assert len(keys) == 4 and all(kcv_of(bytes.fromhex(k["key"])) == k["kcv"] for k in keys)
    dev.admin("POST", f"/v1/admin/devices/{did}/suspend")
    r = dev.admin("POST", f"/v1/admin/devices/{did}/fill", json={"plaintext": True, "force": True})
    assert r.status_code == 409 and r.json()["error"]["code"] == "invalid_state"


# ---- import ---------------------------------------------------------------------

def test_import_mixed_batch(dev):
    gw, sub, ok2 = uid("GW"), uid("SUB"), uid("OK")
    existing = uid("EX")
    register(dev, device_id=existing)
    rows = [
        {"device_id": gw, "type": "gateway", "line": 2},
        {"device_id": sub, "type": "subdevice", "parent": gw, "line": 3},
        {"device_id": "bad id", "type": "meter", "line": 4},
        {"device_id": existing, "type": "meter", "line": 5},
        {"device_id": ok2, "type": "meter", "keys": 1, "line": 6},
        {"device_id": ok2, "type": "meter", "line": 7},
        {"device_id": uid(), "type": "nope", "line": 8},
        {"device_id": uid(), "type": "subdevice", "parent": "missing-gw", "line": 9},
    ]
    before_keys = int(dev.psql("SELECT count(*) FROM device_keys").strip())
    r = dev.admin("POST", "/v1/admin/devices/import", json={"devices": rows})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["created"] == 3 and out["failed"] == 5
    res = {x["line"]: x for x in out["results"]}
    assert [res[i]["status"] for i in range(2, 10)] == [
        "created", "created", "error", "error", "created", "error", "error", "error"]
    assert res[4]["error"]["code"] == "invalid_device_id" and res[4]["device_id"] == "bad id"
    assert res[5]["error"]["code"] == "conflict"
    assert res[7]["error"]["code"] == "conflict"
    assert res[8]["error"]["code"] == "invalid_type"
    assert res[9]["error"]["code"] == "invalid_parent"
    # Exactly the created rows' keys were written: 4 + 4 + 1.
    assert int(dev.psql("SELECT count(*) FROM device_keys").strip()) == before_keys + 9
    assert dev.admin("GET", f"/v1/admin/devices/{sub}").json()["parent"] == gw
    r = dev.admin("POST", "/v1/admin/devices/import", json={"devices": []})
    assert r.status_code == 422
    r = dev.admin("POST", "/v1/admin/devices/import", json={"rows": rows})
    assert r.status_code == 422


def test_metrics_count_devices(dev):
    time.sleep(1.5)
    m = requests.get(dev.url + "/metrics").text
    assert int(re.search(r'^qkms_devices\{state="active"\} (\d+)', m, re.M).group(1)) > 5
    assert re.search(r'^qkms_devices\{state="revoked"\} [1-9]', m, re.M)
