"""kmsctl device commands end to end: the real CLI binary against the real
kmsd (PostgreSQL + SoftHSM). test_devices.py covers the HTTP API itself;
these tests cover the CLI path: argument checking, the requests kmsctl
builds, what it prints (human and --json), its exit codes, the files it
writes (fill packages, plaintext fill documents) and `fill open`, checked
against an independent Python reader (fillpkg_py)."""
import base64
import datetime
import json
import os
import re
import stat
import subprocess
import time
import uuid

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, x25519

import fillpkg_py
from conftest import KMSCTL
from helpers import (AUTH, NOWHERE, OK, REFUSED, USAGE, human, kv_block, near, ok, refused, run,
                     run_on_tty,
                     table, ts, uid, usage, utcnow)

RECORD_FIELDS = ("device_id", "type", "group", "parent", "state", "created_at", "updated_at",
                 "revoked_at", "sae_id", "attributes", "service_until", "first_seen_at",
                 "last_seen_at")
KEY_HEADER = ["INDEX", "ALG", "STATE", "EXPIRED", "NOT-AFTER", "RETIRE-AT", "EXPORTED"]
LIST_HEADER = ["DEVICE", "TYPE", "GROUP", "STATE", "ACTIVE-KEYS", "NEXT-EXPIRY", "LAST-SEEN"]
BUILTIN_TYPES = {"vehicle", "encryptor", "meter", "gateway", "subdevice", "generic"}

# Every key a fill in this module put in clear (hex), for the leak check at
# the end of the module.
EXPORTED_KEYS = set()


# ---------------------------------------------------------------------------
# helpers


def ok_json(stack, *args, **kw):
    return json.loads(ok(stack, *args, "--json", **kw).stdout)


def human_record(stdout):
    """The human output of register/show/rotate: the record block, a blank
    line, the key table. Returns (record dict, key table rows incl. header)."""
    lines = stdout.rstrip("\n").split("\n")
    assert "" in lines, stdout
    blank = lines.index("")
    return kv_block(lines[:blank]), table(lines[blank + 1:])


def device_ids(stack, like):
    out = stack.psql(f"SELECT device_id FROM devices WHERE device_id LIKE '{like}%' ORDER BY 1")
    return sorted(out.split("\n")[:-1]) if out else []


def key_count(stack, like):
    return int(stack.psql(f"SELECT count(*) FROM device_keys k JOIN devices d ON d.id = k.device_pk "
                          f"WHERE d.device_id LIKE '{like}%'").strip())


def export_counts(stack, did):
    out = stack.psql(f"SELECT k.export_count FROM device_keys k JOIN devices d ON d.id = k.device_pk "
                     f"WHERE d.device_id = '{did}' ORDER BY k.key_index")
    return [int(x) for x in out.split()]


def fill_audits(stack, did):
    out = stack.psql(f"SELECT actor, detail->>'mode', detail->>'forced', "
                     f"detail->>'recipient_fingerprint' FROM audit_log "
                     f"WHERE device_id = '{did}' AND event = 'device.fill_exported' ORDER BY id")
    return [line.split("|") for line in out.split("\n") if line]


def route_count(stack, route):
    """kmsd's request log lines for one route (the log is kmsd's only)."""
    n = 0
    for line in stack.logs().splitlines():
        if not line.startswith("{"):
            continue
        try:
            r = json.loads(line)
        except ValueError:  # a line being written right now
            continue
        if r.get("msg") == "request" and r.get("route") == route:
            n += 1
    return n


def wait_route_count(stack, route, expected, timeout=5.0):
    """The route's request count once it reaches `expected` (or the
    timeout), after a short settle so that extra requests show too."""
    deadline = time.time() + timeout
    while route_count(stack, route) < expected and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)
    return route_count(stack, route)


def register(stack, did, *extra, type_="meter"):
    return ok_json(stack, "device", "register", did, "--type", type_, *extra)


def keys_kcv(stack, did):
    """{index: kcv} from `device keys --kcv --json`."""
    body = ok_json(stack, "device", "keys", did, "--kcv")
    assert body["device_id"] == did
    return {k["index"]: k.get("kcv") for k in body["keys"]}


def gen_station_key(curve):
    if curve == "x25519":
        return x25519.X25519PrivateKey.generate()
    return ec.generate_private_key(ec.SECP256R1())


def write_station_key(tmp_path, priv, name="station"):
    pub_path = tmp_path / f"{name}.pub.pem"
    priv_path = tmp_path / f"{name}.key.pem"
    pub_path.write_bytes(priv.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    priv_path.write_bytes(priv.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    os.chmod(priv_path, 0o600)
    return str(pub_path), str(priv_path)


def operator_token(stack):
    return ok_json(stack, "token", "create", uid("op"), "--role", "operator")["token"]


def remember(doc):
    for k in doc["keys"]:
        EXPORTED_KEYS.add(k["key"])


# ---------------------------------------------------------------------------
# register


def test_register_all_options_human(stack):
    grp = "g" + uuid.uuid4().hex[:8]
    gw, did = uid("GW"), uid("VIN")
    ok(stack, "device", "register", gw, "--type", "gateway", "--group", grp, "--keys", "2")
    before = utcnow()
    p = ok(stack, "device", "register", did, "--type", "subdevice", "--group", grp, "--parent", gw,
           "--keys", "3", "--key-bits", "256", "--validity", "30", "--service-days", "400")
    assert p.stderr == ""
    rec, keys = human_record(p.stdout)
    assert list(rec) == list(RECORD_FIELDS), rec
    assert near(ts(rec["service_until"]), before + datetime.timedelta(days=400))
    assert rec["device_id"] == did and rec["type"] == "subdevice" and rec["group"] == grp
    assert rec["parent"] == gw and rec["state"] == "active" and rec["revoked_at"] == "-"
    assert near(ts(rec["created_at"]), before)
    # The key table: the record's keys, never their bytes, no KCV column.
    assert keys[0] == KEY_HEADER
    assert [r[:4] for r in keys[1:]] == [[str(i), "AES-256", "active", "false"] for i in range(3)]
    for r in keys[1:]:
        assert near(ts(r[4]), before + datetime.timedelta(days=30)), r
        assert r[5:] == ["-", "-"], r
    # What the server stored is what was printed.
    srv = stack.admin("GET", f"/v1/admin/devices/{did}").json()
    for f in RECORD_FIELDS:
        assert rec[f] == human(srv[f]), f
    assert [k["not_after"] for k in srv["keys"]] == [r[4] for r in keys[1:]]
    assert all(k["algorithm"] == "AES-256" for k in srv["keys"])
    rows = stack.psql(f"SELECT key_index, algorithm, length(wrapped) FROM device_keys k JOIN devices d "
                      f"ON d.id = k.device_pk WHERE d.device_id = '{did}' ORDER BY 1").split()
    assert rows == [f"{i}|AES-256|65" for i in range(3)]  # 5 hdr + 12 IV + 32 key + 16 tag


def test_register_json(stack):
    did = uid("ENC")
    before = utcnow()
    # --json is a global option: before the command words as well as after.
    p = ok(stack, "--json", "device", "register", did, "--type", "encryptor", "--keys", "2",
           "--key-bits", "128", "--validity", "7")
    assert p.stderr == ""
    d = json.loads(p.stdout)
    assert set(d) >= set(RECORD_FIELDS) | {"keys"}
    assert d["device_id"] == did and d["type"] == "encryptor" and d["group"] == "default"
    assert d["parent"] is None and d["state"] == "active" and d["revoked_at"] is None
    assert near(ts(d["created_at"]), before)
    assert [k["index"] for k in d["keys"]] == [0, 1]
    for k in d["keys"]:
        assert k["algorithm"] == "AES-128" and k["state"] == "active" and k["expired"] is False
        assert ts(k["not_after"]) - ts(k["not_before"]) == datetime.timedelta(days=7)
        assert k["master_version"] == 1 and k["provenance"] in ("pkcs11+ctr-drbg", "os (fallback)")
        assert k["export_count"] == 0 and k["exported_at"] is None and k["retire_at"] is None
        assert "key" not in k and "wrapped" not in k
    # Defaults: 4 AES-128 keys valid for a year.
    d2 = register(stack, uid("DEF"))
    assert [(k["index"], k["algorithm"]) for k in d2["keys"]] == [(i, "AES-128") for i in range(4)]
    k0 = d2["keys"][0]
    assert ts(k0["not_after"]) - ts(k0["not_before"]) in (datetime.timedelta(days=365),
                                                          datetime.timedelta(days=366))
    assert stack.admin("GET", f"/v1/admin/devices/{did}").json() == d


def test_register_bad_id_refused_locally(stack):
    tag = uuid.uuid4().hex[:10]
    bad_ids = {
        "empty": "",
        "over-long": "X" + tag + "x" * (129 - 1 - len(tag)),
        "control-char": f"a\x01{tag}",
        "escape": f"a\x1b[2J{tag}",
        "space": f"a {tag}",
        "slash": f"a/{tag}",
        "percent": f"a%{tag}",
        "non-ascii": f"caf\u00e9{tag}",
    }
    assert len(bad_ids["over-long"]) == 129
    for what, bad in bad_ids.items():
        for extra in ([], ["--json"]):
            p = usage(stack, "device", "register", "--type", "meter", *extra, "--", bad)
            assert "bad device ID" in p.stderr, (what, p.stderr)
    assert stack.psql(f"SELECT count(*) FROM devices WHERE device_id LIKE '%{tag}%'").strip() == "0"
    # The boundary: 128 characters is a valid ID.
    longest = "X" + tag + "y" * (128 - 1 - len(tag))
    d = register(stack, longest, "--keys", "1")
    assert d["device_id"] == longest
    assert ok_json(stack, "device", "show", longest)["device_id"] == longest


def test_register_bad_options_refused_locally(stack):
    did = uid("OPT")
    cases = [
        (["--type", "meter", "--validity", "0"], "--validity"),
        (["--type", "meter", "--validity", "3651"], "--validity"),
        (["--type", "meter", "--validity", "30d"], "--validity"),
        (["--type", "meter", "--validity", "-1"], "--validity"),
        (["--type", "meter", "--key-bits", "192"], "--key-bits must be 128 or 256"),
        (["--type", "meter", "--key-bits", "128x"], "--key-bits must be 128 or 256"),
        (["--type", "meter", "--keys", "0"], "--keys"),
        (["--type", "meter", "--keys", "17"], "--keys"),
        (["--type", "meter", "--group", "bad group"], "--group"),
        (["--type", "meter", "--parent", "a b"], "--parent"),
        (["--type", "Meter"], "--type"),
        (["--type", ""], "--type"),
        ([], "--type is required"),
        (["--type", "subdevice"], "needs --parent"),
        (["--type", "meter", "--colour", "red"], ""),
    ]
    for args, msg in cases:
        p = usage(stack, "device", "register", did, *args)
        assert msg in p.stderr, (args, p.stderr)
    assert device_ids(stack, did) == []


def test_register_refused_by_server(stack):
    gw, veh = uid("GW"), uid("VEH")
    register(stack, gw, "--keys", "2", type_="gateway")
    register(stack, veh, "--keys", "1", type_="vehicle")
    tag = uid("BAD")
    cases = [
        (["--type", "spaceship"], "invalid_type"),
        (["--type", "subdevice", "--parent", uid("NOGW")], "invalid_parent"),
        (["--type", "subdevice", "--parent", veh], "invalid_parent"),  # not a gateway
        (["--type", "vehicle", "--parent", gw], "invalid_parent"),  # only subdevices have one
    ]
    for i, (args, code) in enumerate(cases):
        p = refused(stack, code, "device", "register", f"{tag}-{i}", *args, status=422)
        assert p.stderr.startswith("kmsctl: "), p.stderr
        # Human output: nothing on stdout, the message and code on stderr.
        p = run(stack, "device", "register", f"{tag}-{i}", *args)
        assert p.returncode == REFUSED and p.stdout == ""
        assert f"({code}, HTTP 422)" in p.stderr, p.stderr
    assert device_ids(stack, tag) == []


def test_register_duplicate_conflict(stack):
    did = uid("DUP")
    first = register(stack, did, "--keys", "2")
    p = refused(stack, "conflict", "device", "register", did, "--type", "vehicle", "--keys", "5",
                status=409)
    assert did in p.stderr
    p = run(stack, "device", "register", did, "--type", "meter")
    assert p.returncode == REFUSED and p.stdout == "" and "(conflict, HTTP 409)" in p.stderr
    # The first registration is untouched: same keys, no extra ones.
    assert ok_json(stack, "device", "show", did) == first
    assert key_count(stack, did) == 2


def test_device_usage_errors_exit_2_offline(stack, tmp_path):
    did = uid("USE")
    pub, _ = write_station_key(tmp_path, x25519.X25519PrivateKey.generate())
    csv = tmp_path / "rows.csv"
    csv.write_text(f"device_id,type\n{did},meter\n")
    out = str(tmp_path / "out.qkfp")
    cases = [
        ["device"],
        ["device", "frobnicate"],
        ["device", "show"],
        ["device", "show", did, "extra"],
        ["device", "show", "a b"],
        ["device", "keys", "a%b"],
        ["device", "keys", did, "--kcv=yes"],
        ["device", "suspend", ""],
        ["device", "resume", "a\\b"],
        ["device", "revoke", "a?b"],
        ["device", "revoke", did, "--force"],
        ["device", "list", "--state", "gone"],
        ["device", "list", "--limit", "0"],
        ["device", "list", "--limit", "1001"],
        ["device", "list", "--expiring-within", "-1"],
        ["device", "list", "--expiring-within", "3651"],
        ["device", "list", "--type", "Bad!"],
        ["device", "list", "--group", ".x"],
        ["device", "list", "--after", "a b"],
        ["device", "list", "extra"],
        ["device", "rotate", did, "--grace-days", "366"],
        ["device", "rotate", did, "--grace-days", "-1"],
        ["device", "rotate", did, "--key-bits", "192"],
        ["device", "rotate", did, "--validity", "0"],
        ["device", "fill", did, "--out", out],
        ["device", "fill", did, "--recipient-pub", pub],
        ["device", "fill", did, "--recipient-pub", pub, "--plaintext", "--out", out],
        ["device", "fill", did, "--recipient-pub", pub, "--out", out, "--index", "256"],
        ["device", "fill", did, "--recipient-pub", pub, "--out", out, "--index", "x"],
        ["device", "fill", did, "--recipient-pub", str(tmp_path / "missing.pem"), "--out", out],
        ["device", "fill", did, "--recipient-pub", str(csv), "--out", out],
        ["device", "import"],
        ["device", "import", str(tmp_path / "missing.csv")],
        ["device", "import", str(csv), "--batch", "0"],
        ["device", "import", str(csv), "--batch", "1001"],
        ["device", "import", str(csv), "--format", "xml"],
        ["device-type"],
        ["device-type", "add"],
        ["device-type", "add", "Bad Name"],
        ["device-type", "list", "extra"],
        ["fill", "open", str(csv)],
    ]
    for args in cases:
        usage(stack, *args)
    assert not os.path.exists(out)
    assert device_ids(stack, did) == []


# ---------------------------------------------------------------------------
# list


def test_list_filters(stack):
    grp = "lf" + uuid.uuid4().hex[:8]
    ids = sorted(uid("L") for _ in range(5))
    for i, d in enumerate(ids):
        ok(stack, "device", "register", d, "--type", "meter" if i % 2 else "vehicle", "--group", grp,
           "--keys", "2", "--validity", "10" if i == 0 else "365")
    ok(stack, "device", "suspend", ids[3])
    ok(stack, "device", "revoke", ids[4])

    def listed(*args):
        body = ok_json(stack, "device", "list", "--group", grp, *args)
        assert body["next"] is None
        return [d["device_id"] for d in body["devices"]]

    assert listed() == ids
    assert listed("--type", "meter") == ids[1::2]
    assert listed("--type", "vehicle") == ids[0::2]
    assert listed("--state", "active") == ids[:3]
    assert listed("--state", "suspended") == [ids[3]]
    assert listed("--state", "revoked") == [ids[4]]
    assert listed("--expiring-within", "15") == [ids[0]]
    assert listed("--expiring-within", "0") == []
    assert listed("--type", "meter", "--state", "suspended") == [ids[3]]
    assert listed("--type", "generic") == []
    other = ok_json(stack, "device", "list", "--group", "lf" + uuid.uuid4().hex[:8])
    assert other == {"devices": [], "next": None}

    # The human table: a header and one row per device, in ID order.
    p = ok(stack, "device", "list", "--group", grp)
    assert p.stderr == ""
    rows = table(p.stdout.rstrip("\n").split("\n"))
    assert rows[0] == LIST_HEADER
    assert [r[0] for r in rows[1:]] == ids
    byid = {r[0]: r for r in rows[1:]}
    full = {d["device_id"]: d for d in ok_json(stack, "device", "list", "--group", grp)["devices"]}
    states = ["active"] * 3 + ["suspended", "revoked"]
    for i, d in enumerate(ids):
        assert byid[d][1:4] == ["meter" if i % 2 else "vehicle", grp, states[i]], byid[d]
        assert byid[d][4] == str(full[d]["active_keys"])
        assert byid[d][5] == human(full[d]["next_expiry"])
    assert byid[ids[0]][4] == "2" and byid[ids[4]][4] == "0" and byid[ids[4]][5] == "-"
    assert near(ts(byid[ids[0]][5]), utcnow() + datetime.timedelta(days=10))
    p = ok(stack, "device", "list", "--group", grp, "--expiring-within", "15", "--type", "vehicle")
    assert table(p.stdout.rstrip("\n").split("\n")) == [LIST_HEADER, byid[ids[0]]]
    p = ok(stack, "device", "list", "--group", grp, "--state", "suspended")
    assert table(p.stdout.rstrip("\n").split("\n")) == [LIST_HEADER, byid[ids[3]]]


def test_list_limit_and_all_pages(stack):
    grp = "lp" + uuid.uuid4().hex[:8]
    ids = sorted(uid("P") for _ in range(5))
    for d in ids:
        ok(stack, "device", "register", d, "--type", "meter", "--group", grp, "--keys", "1")
    route = "admin_devices_list"

    # One page: the first two, a cursor, and a note on stderr.
    body = ok_json(stack, "device", "list", "--group", grp, "--limit", "2")
    assert [d["device_id"] for d in body["devices"]] == ids[:2] and body["next"] == ids[1]
    p = ok(stack, "device", "list", "--group", grp, "--limit", "2")
    assert [r[0] for r in table(p.stdout.rstrip("\n").split("\n")[1:])] == ids[:2]
    assert "More devices follow" in p.stderr
    body = ok_json(stack, "device", "list", "--group", grp, "--limit", "2", "--after", ids[1])
    assert [d["device_id"] for d in body["devices"]] == ids[2:4] and body["next"] == ids[3]

    # --all follows the cursor: 5 devices at 2 a page are 3 requests.
    n = route_count(stack, route)
    p = ok(stack, "device", "list", "--group", grp, "--limit", "2", "--all")
    assert wait_route_count(stack, route, n + 3) == n + 3
    rows = table(p.stdout.rstrip("\n").split("\n"))
    assert rows[0] == LIST_HEADER and [r[0] for r in rows[1:]] == ids
    assert "More devices follow" not in p.stderr
    n = route_count(stack, route)
    body = ok_json(stack, "device", "list", "--group", grp, "--limit", "2", "--all")
    assert wait_route_count(stack, route, n + 3) == n + 3
    assert [d["device_id"] for d in body["devices"]] == ids  # combined, nothing twice
    assert body.get("next") is None
    assert all(d["active_keys"] == 1 and d["group"] == grp for d in body["devices"])
    # Exactly divisible: 4 devices after ids[0] at 2 a page.
    body = ok_json(stack, "device", "list", "--group", grp, "--limit", "2", "--all", "--after", ids[0])
    assert [d["device_id"] for d in body["devices"]] == ids[1:]
    # --all without --limit asks for big pages: one request here.
    n = route_count(stack, route)
    body = ok_json(stack, "device", "list", "--group", grp, "--all")
    assert wait_route_count(stack, route, n + 1) == n + 1
    assert [d["device_id"] for d in body["devices"]] == ids
    body = ok_json(stack, "device", "list", "--group", grp, "--limit", "1", "--all", "--state", "active")
    assert [d["device_id"] for d in body["devices"]] == ids


# ---------------------------------------------------------------------------
# show, keys


def test_show(stack):
    gw, did = uid("GW"), uid("SH")
    register(stack, gw, "--keys", "2", type_="gateway")
    d = register(stack, did, "--parent", gw, "--group", "shows", "--keys", "2", type_="subdevice")
    assert ok_json(stack, "device", "show", did) == d
    p = ok(stack, "device", "show", did)
    assert p.stderr == ""
    rec, keys = human_record(p.stdout)
    assert rec == {f: human(d[f]) for f in RECORD_FIELDS}
    assert keys == [KEY_HEADER] + [
        [str(k["index"]), k["algorithm"], k["state"], "false", k["not_after"], "-", "-"]
        for k in d["keys"]]
    # IDs with characters that need escaping in a URL path.
    for odd in (uid("a+b&c=d"), uid("x;y:z@w"), uid("q\"'`<>|^{}[]()*~!$")):
        register(stack, odd, "--keys", "1")
        assert ok_json(stack, "device", "show", odd)["device_id"] == odd
        assert ok_json(stack, "device", "keys", odd)["device_id"] == odd
    p = refused(stack, "not_found", "device", "show", uid("NOPE"), status=404)
    p = run(stack, "device", "show", uid("NOPE"))
    assert p.returncode == REFUSED and p.stdout == "" and "(not_found, HTTP 404)" in p.stderr


def test_keys_and_kcv_match_fill_package(stack, tmp_path):
    did = uid("KCV")
    d = register(stack, did, "--keys", "3")
    body = ok_json(stack, "device", "keys", did)
    assert body["device_id"] == did
    assert body["keys"] == d["keys"]
    assert all("kcv" not in k for k in body["keys"])
    # Human: the KCV column is there, empty without --kcv.
    p = ok(stack, "device", "keys", did)
    rows = table(p.stdout.rstrip("\n").split("\n"))
    assert rows[0] == KEY_HEADER + ["KCV"]
    assert [r[0] for r in rows[1:]] == ["0", "1", "2"] and all(r[7] == "-" for r in rows[1:])
    # --kcv: ten hex digits per live key, the same in both outputs.
    kcvs = keys_kcv(stack, did)
    assert sorted(kcvs) == [0, 1, 2]
    assert all(re.fullmatch(r"[0-9a-f]{10}", v) for v in kcvs.values()), kcvs
    assert len(set(kcvs.values())) == 3
    p = ok(stack, "device", "keys", did, "--kcv")
    rows = table(p.stdout.rstrip("\n").split("\n"))
    assert rows[0] == KEY_HEADER + ["KCV"]
    assert {int(r[0]): r[7] for r in rows[1:]} == kcvs
    # They are the check values of the real keys, as a station sees them.
    priv = x25519.X25519PrivateKey.generate()
    pub, _ = write_station_key(tmp_path, priv)
    out = tmp_path / "k.qkfp"
    ok(stack, "device", "fill", did, "--recipient-pub", pub, "--out", str(out))
    doc = json.loads(fillpkg_py.open_package(priv, out.read_bytes()))
    remember(doc)
    assert {k["index"]: fillpkg_py.kcv(bytes.fromhex(k["key"])) for k in doc["keys"]} == kcvs
    # Exported keys show their export time; the KCVs do not change.
    rows = table(ok(stack, "device", "keys", did, "--kcv").stdout.rstrip("\n").split("\n"))
    assert all(near(ts(r[6]), utcnow()) for r in rows[1:]), rows
    assert keys_kcv(stack, did) == kcvs
    refused(stack, "not_found", "device", "keys", uid("NOPE"), "--kcv", status=404)


# ---------------------------------------------------------------------------
# lifecycle


def wrapped_count(stack, did):
    return int(stack.psql(f"SELECT count(*) FROM device_keys k JOIN devices d ON d.id = k.device_pk "
                          f"WHERE d.device_id = '{did}' AND wrapped IS NOT NULL").strip())


def test_suspend_resume_revoke(stack):
    did = uid("LC")
    register(stack, did, "--keys", "3")
    assert wrapped_count(stack, did) == 3
    p = ok(stack, "device", "suspend", did)
    assert p.stdout == f"Device '{did}' is now suspended.\n" and p.stderr == ""
    assert ok_json(stack, "device", "show", did)["state"] == "suspended"
    assert wrapped_count(stack, did) == 3  # a suspended device keeps its keys
    p = ok(stack, "device", "resume", did)
    assert p.stdout == f"Device '{did}' is now active.\n"
    assert ok_json(stack, "device", "show", did)["state"] == "active"
    d = ok_json(stack, "device", "suspend", did)
    assert d["device_id"] == did and d["state"] == "suspended" and len(d["keys"]) == 3
    d = ok_json(stack, "device", "resume", did)
    assert d["state"] == "active"
    p = ok(stack, "device", "revoke", did)
    assert p.stdout == f"Device '{did}' is now revoked.\n"
    assert "destroyed" in p.stderr and did in p.stderr
    d = ok_json(stack, "device", "show", did)
    assert d["state"] == "revoked" and near(ts(d["revoked_at"]), utcnow())
    assert [k["state"] for k in d["keys"]] == ["destroyed"] * 3
    # Crypto-shredding: the rows stay, the wrapped bytes are gone.
    assert wrapped_count(stack, did) == 0
    assert key_count(stack, did) == 3
    assert all(v is None for v in keys_kcv(stack, did).values())
    events = stack.psql(f"SELECT event FROM audit_log WHERE device_id = '{did}' ORDER BY id").split()
    assert events == ["device.registered", "device.suspended", "device.resumed", "device.suspended",
                      "device.resumed", "device.revoked"]
    # Revoke works from suspended too, with --json.
    did2 = uid("LC2")
    register(stack, did2, "--keys", "1")
    ok(stack, "device", "suspend", did2)
    d = ok_json(stack, "device", "revoke", did2)
    assert d["state"] == "revoked" and d["keys"][0]["state"] == "destroyed"
    assert wrapped_count(stack, did2) == 0


def test_refused_transitions(stack):
    did = uid("TR")
    register(stack, did, "--keys", "1")
    p = refused(stack, "invalid_state", "device", "resume", did, status=409)  # active
    p = run(stack, "device", "resume", did)
    assert p.returncode == REFUSED and p.stdout == "" and "(invalid_state, HTTP 409)" in p.stderr
    ok(stack, "device", "suspend", did)
    refused(stack, "invalid_state", "device", "suspend", did, status=409)  # suspended
    assert ok_json(stack, "device", "show", did)["state"] == "suspended"
    ok(stack, "device", "revoke", did)
    for verb in ("suspend", "resume", "revoke"):
        refused(stack, "invalid_state", "device", verb, did, status=409)
        p = run(stack, "device", verb, did)
        assert p.returncode == REFUSED and p.stdout == "" and "invalid_state" in p.stderr
        assert "were destroyed" not in p.stderr  # the revoke note only on success
    assert ok_json(stack, "device", "show", did)["state"] == "revoked"
    events = stack.psql(f"SELECT event FROM audit_log WHERE device_id = '{did}' ORDER BY id").split()
    assert events == ["device.registered", "device.suspended", "device.revoked"]
    for verb in ("suspend", "resume", "revoke", "rotate"):
        refused(stack, "not_found", "device", verb, uid("NOPE"), status=404)


# ---------------------------------------------------------------------------
# rotate


def test_rotate(stack):
    did = uid("ROT")
    register(stack, did, "--keys", "2", "--key-bits", "128")
    before = utcnow()
    d = ok_json(stack, "device", "rotate", did, "--grace-days", "10", "--key-bits", "256")
    keys = d["keys"]
    assert [k["index"] for k in keys] == [0, 1, 2]
    assert keys[2]["algorithm"] == "AES-256" and keys[2]["state"] == "active"
    assert keys[2]["retire_at"] is None
    for k in keys[:2]:
        assert k["algorithm"] == "AES-128" and k["state"] == "active"
        assert near(ts(k["retire_at"]), before + datetime.timedelta(days=10))
    # Human output, --grace-days 0, the key size back to 128.
    p = ok(stack, "device", "rotate", did, "--grace-days", "0", "--key-bits", "128")
    rec, rows = human_record(p.stdout)
    assert rec["device_id"] == did and rec["state"] == "active"
    assert rows[0] == KEY_HEADER and [r[0] for r in rows[1:]] == ["0", "1", "2", "3"]
    assert rows[4][1:4] == ["AES-128", "active", "false"] and rows[4][5] == "-"
    assert near(ts(rows[3][5]), utcnow())  # key 2: retires now
    # --validity sets the new key's lifetime.
    d = ok_json(stack, "device", "rotate", did, "--validity", "20", "--key-bits", "128")
    k = d["keys"][4]
    assert k["index"] == 4 and ts(k["not_after"]) - ts(k["not_before"]) == datetime.timedelta(days=20)
    # Without --grace-days the config default (30 days) applies.
    d = ok_json(stack, "device", "rotate", did)
    assert near(ts(d["keys"][4]["retire_at"]), utcnow() + datetime.timedelta(days=30))
    assert wrapped_count(stack, did) == 6
    rows = stack.psql(f"SELECT key_index, algorithm FROM device_keys k JOIN devices d ON "
                      f"d.id = k.device_pk WHERE d.device_id = '{did}' ORDER BY 1").split()
    assert rows[:5] == ["0|AES-128", "1|AES-128", "2|AES-256", "3|AES-128", "4|AES-128"]
    n = stack.psql(f"SELECT count(*) FROM audit_log WHERE device_id = '{did}' "
                   f"AND event = 'device.rotated'").strip()
    assert n == "4"
    # The new key is a real key: its KCV is there and distinct.
    kcvs = keys_kcv(stack, did)
    assert re.fullmatch(r"[0-9a-f]{10}", kcvs[5] or ""), kcvs
    assert kcvs[5] not in [kcvs[i] for i in range(5)]
    ok(stack, "device", "revoke", did)
    refused(stack, "invalid_state", "device", "rotate", did, "--grace-days", "1", status=409)
    assert key_count(stack, did) == 6


# ---------------------------------------------------------------------------
# fill


def fill_human(stdout):
    return kv_block(stdout.rstrip("\n").split("\n"))


@pytest.mark.parametrize("curve,bits", [("x25519", "128"), ("p256", "256")])
def test_fill_sealed_round_trip(stack, tmp_path, curve, bits):
    did, grp = uid("FILL"), "fl" + uuid.uuid4().hex[:6]
    register(stack, did, "--keys", "3", "--key-bits", bits, "--group", grp, type_="vehicle")
    priv = gen_station_key(curve)
    pub, priv_pem = write_station_key(tmp_path, priv)
    fp = fillpkg_py.fingerprint(priv.public_key())
    out = tmp_path / f"{did}.qkfp"
    p = ok(stack, "device", "fill", did, "--recipient-pub", pub, "--out", str(out), umask=0)
    # The file: new, owner-only even with umask 0, holding a package for this curve.
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600
    pkg = out.read_bytes()
    assert pkg[:4] == fillpkg_py.MAGIC and pkg[4] == fillpkg_py.VERSION
    assert pkg[5] == (fillpkg_py.CURVE_X25519 if curve == "x25519" else fillpkg_py.CURVE_P256)
    info = fill_human(p.stdout)
    assert info == {"device": did, "indices": "[0,1,2]", "recipient_fingerprint": fp,
                    "out": str(out), "size": f"{len(pkg)} bytes"}
    # Two independent readers agree on the document.
    doc_py = json.loads(fillpkg_py.open_package(priv, pkg))
    remember(doc_py)
    po = ok(stack, "fill", "open", "--key", priv_pem, str(out), "--json",
            env={"KMS_ADDR": NOWHERE}, unset=("QKMS_STATE",), cwd=str(tmp_path))  # local only
    doc_c = json.loads(po.stdout)
    assert doc_c == doc_py
    assert doc_py["format"] == "qkms-fill/1" and doc_py["issuer"] == "qkms"
    assert doc_py["device_id"] == did and doc_py["type"] == "vehicle" and doc_py["group"] == grp
    assert [k["index"] for k in doc_py["keys"]] == [0, 1, 2]
    kcvs = keys_kcv(stack, did)
    for k in doc_py["keys"]:
        key = bytes.fromhex(k["key"])
        assert k["key"] == k["key"].lower() and len(key) == int(bits) // 8
        assert k["algorithm"] == f"AES-{bits}"
        assert fillpkg_py.kcv(key) == k["kcv"] == kcvs[k["index"]]
        # The key bytes never reach the operator's terminal at fill time.
        assert k["key"] not in p.stdout + p.stderr
    # fill open's human output: the device, then one row per key.
    ph = ok(stack, "fill", "open", "--key", priv_pem, str(out))
    head, _, rest = ph.stdout.partition("\n\n")
    assert kv_block(head.split("\n")) == {"device": did, "type": "vehicle", "group": grp}
    rows = table(rest.rstrip("\n").split("\n"))
    assert rows[0] == ["INDEX", "ALG", "KEY", "KCV", "NOT-AFTER"]
    assert rows[1:] == [[str(k["index"]), k["algorithm"], k["key"], k["kcv"], k["not_after"]]
                        for k in doc_py["keys"]]
    # Audited with the token's name and the station key's fingerprint.
    assert fill_audits(stack, did) == [["bootstrap", "sealed", "false", fp]]
    assert export_counts(stack, did) == [1, 1, 1]

    # A second export of the same keys is refused, and leaves no file.
    out2 = tmp_path / "again.qkfp"
    p = refused(stack, "already_exported", "device", "fill", did, "--recipient-pub", pub,
                "--out", str(out2), status=409)
    assert not out2.exists()
    assert export_counts(stack, did) == [1, 1, 1]
    # --json on success: the answer without the package, plus "out".
    j = ok_json(stack, "device", "fill", did, "--recipient-pub", pub, "--out", str(out2), "--force")
    assert j == {"device_id": did, "format": "qkms-fill/1", "indices": [0, 1, 2],
                 "recipient_fingerprint": fp, "out": str(out2)}
    doc2 = json.loads(fillpkg_py.open_package(priv, out2.read_bytes()))
    assert [k["key"] for k in doc2["keys"]] == [k["key"] for k in doc_py["keys"]]
    assert out2.read_bytes() != pkg  # a fresh ephemeral key, salt and nonce
    assert fill_audits(stack, did)[1] == ["bootstrap", "sealed", "true", fp]
    assert export_counts(stack, did) == [2, 2, 2]


def test_fill_force_and_index(stack, tmp_path):
    did = uid("FIDX")
    register(stack, did, "--keys", "4")
    priv = gen_station_key("x25519")
    pub, priv_pem = write_station_key(tmp_path, priv)

    def fill(name, *extra):
        out = tmp_path / name
        p = ok(stack, "device", "fill", did, "--recipient-pub", pub, "--out", str(out), *extra)
        doc = json.loads(fillpkg_py.open_package(priv, out.read_bytes()))
        remember(doc)
        return fill_human(p.stdout), doc

    # --index selects; repeated, it selects several.
    info, doc = fill("one", "--index", "2")
    assert info["indices"] == "[2]" and [k["index"] for k in doc["keys"]] == [2]
    info, doc = fill("two", "--index", "3", "--index=0")
    assert info["indices"] == "[0,3]" and [k["index"] for k in doc["keys"]] == [0, 3]
    assert export_counts(stack, did) == [1, 0, 1, 1]
    # Without --index: only the keys not exported yet.
    info, doc = fill("rest")
    assert info["indices"] == "[1]" and [k["index"] for k in doc["keys"]] == [1]
    # Now everything was exported: refused without --force, also per index.
    refused(stack, "already_exported", "device", "fill", did, "--recipient-pub", pub,
            "--out", str(tmp_path / "no1"))
    refused(stack, "already_exported", "device", "fill", did, "--recipient-pub", pub,
            "--out", str(tmp_path / "no2"), "--index", "2")
    assert not (tmp_path / "no1").exists() and not (tmp_path / "no2").exists()
    info, doc = fill("forced", "--force", "--index", "2")
    assert info["indices"] == "[2]" and [k["index"] for k in doc["keys"]] == [2]
    info, doc = fill("all", "--force")
    assert info["indices"] == "[0,1,2,3]"
    kcvs = keys_kcv(stack, did)
    assert {k["index"]: k["kcv"] for k in doc["keys"]} == kcvs
    assert export_counts(stack, did) == [2, 2, 3, 2]
    assert [a[2] for a in fill_audits(stack, did)] == ["false", "false", "false", "true", "true"]
    # An index the device does not have: refused, no file left behind.
    refused(stack, "no_exportable_keys", "device", "fill", did, "--recipient-pub", pub,
            "--out", str(tmp_path / "nine"), "--index", "9", "--force", status=422)
    assert not (tmp_path / "nine").exists()
    # A suspended device exports nothing.
    ok(stack, "device", "suspend", did)
    refused(stack, "invalid_state", "device", "fill", did, "--recipient-pub", pub,
            "--out", str(tmp_path / "susp"), "--force", status=409)
    assert not (tmp_path / "susp").exists()
    assert export_counts(stack, did) == [2, 2, 3, 2]


def test_fill_existing_out_refused(stack, tmp_path):
    did = uid("FOUT")
    register(stack, did, "--keys", "2")
    pub, _ = write_station_key(tmp_path, gen_station_key("p256"))
    route = "admin_device_fill"
    existing = tmp_path / "precious.qkfp"
    existing.write_bytes(b"do not touch\n")
    os.chmod(existing, 0o644)
    before = os.stat(existing)
    n = route_count(stack, route)
    for extra in ([], ["--force"], ["--json"]):
        p = run(stack, "device", "fill", did, "--recipient-pub", pub, "--out", str(existing), *extra)
        assert p.returncode == USAGE, p.stderr
        assert p.stdout == ""
        assert "exists" in p.stderr and str(existing) in p.stderr
    after = os.stat(existing)
    assert existing.read_bytes() == b"do not touch\n"
    assert (after.st_ino, after.st_size, after.st_mtime_ns, stat.S_IMODE(after.st_mode)) == \
        (before.st_ino, before.st_size, before.st_mtime_ns, 0o644)
    # The server was never asked: nothing exported, no fill request.
    assert export_counts(stack, did) == [0, 0]
    assert wait_route_count(stack, route, n, timeout=0) == n
    # The same after a real export: --force does not make kmsctl overwrite.
    ok(stack, "device", "fill", did, "--recipient-pub", pub, "--out", str(tmp_path / "first"))
    p = run(stack, "device", "fill", did, "--recipient-pub", pub, "--out", str(existing), "--force")
    assert p.returncode == USAGE
    assert existing.read_bytes() == b"do not touch\n"
    assert export_counts(stack, did) == [1, 1]
    # A dangling symlink is not followed: its target is not created.
    link, target = tmp_path / "link.qkfp", tmp_path / "target"
    os.symlink(target, link)
    p = run(stack, "device", "fill", did, "--recipient-pub", pub, "--out", str(link), "--force")
    assert p.returncode == USAGE and not target.exists()
    # The plaintext path refuses the same way.
    p = run(stack, "device", "fill", did, "--plaintext", "--out", str(existing), "--force")
    assert p.returncode == USAGE and existing.read_bytes() == b"do not touch\n"
    assert export_counts(stack, did) == [1, 1]


@pytest.mark.parametrize("curve", ["x25519", "p256"])
def test_fill_open_wrong_key(stack, tmp_path, curve):
    did = uid("FWK")
    register(stack, did, "--keys", "1")
    priv = gen_station_key(curve)
    pub, priv_pem = write_station_key(tmp_path, priv)
    out = tmp_path / "pkg.qkfp"
    ok(stack, "device", "fill", did, "--recipient-pub", pub, "--out", str(out))
    remember(json.loads(fillpkg_py.open_package(priv, out.read_bytes())))
    ok(stack, "fill", "open", "--key", priv_pem, str(out))  # control: the right key opens it
    _, same_curve = write_station_key(tmp_path, gen_station_key(curve), "other")
    _, other_curve = write_station_key(
        tmp_path, gen_station_key("p256" if curve == "x25519" else "x25519"), "othercurve")
    for key in (same_curve, other_curve):
        for extra in ([], ["--json"]):
            p = run(stack, "fill", "open", "--key", key, str(out), *extra)
            assert p.returncode == REFUSED, p.stderr
            assert p.stdout == ""
            assert str(out) in p.stderr
    # Tampered, truncated, or not a package at all: also exit 6.
    pkg = out.read_bytes()
    for name, data in (("flip", pkg[:-20] + bytes([pkg[-20] ^ 1]) + pkg[-19:]),
                       ("short", pkg[:-1]), ("json", b'{"format":"qkms-fill/1","keys":[]}')):
        bad = tmp_path / name
        bad.write_bytes(data)
        p = run(stack, "fill", "open", "--key", priv_pem, str(bad))
        assert p.returncode == REFUSED and p.stdout == "", (name, p.stderr)
    # A public key where the private key belongs is a usage error.
    p = run(stack, "fill", "open", "--key", pub, str(out))
    assert p.returncode == USAGE and p.stdout == ""


def test_fill_plaintext_admin(stack, tmp_path):
    did = uid("FPT")
    register(stack, did, "--keys", "2", "--group", "plain")
    out = tmp_path / "fill.json"
    p = ok(stack, "device", "fill", did, "--plaintext", "--out", str(out), umask=0)
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600
    doc = json.loads(out.read_text())
    remember(doc)
    assert doc["format"] == "qkms-fill/1" and doc["device_id"] == did and doc["group"] == "plain"
    assert doc["type"] == "meter" and [k["index"] for k in doc["keys"]] == [0, 1]
    kcvs = keys_kcv(stack, did)
    for k in doc["keys"]:
        assert len(bytes.fromhex(k["key"])) == 16 and k["algorithm"] == "AES-128"
        assert fillpkg_py.kcv(bytes.fromhex(k["key"])) == k["kcv"] == kcvs[k["index"]]
        assert k["key"] not in p.stdout and k["key"] not in p.stderr
    # Loudly warned about on stderr, naming the file and the device.
    assert "WARNING" in p.stderr and "IN CLEAR" in p.stderr
    assert str(out) in p.stderr and did in p.stderr
    info = fill_human(p.stdout)
    assert info["device"] == did and info["indices"] == "[0,1]"
    assert info["recipient_fingerprint"] == "none (keys in clear)"
    assert info["out"] == str(out) and info["size"] == f"{out.stat().st_size} bytes"
    assert fill_audits(stack, did) == [["bootstrap", "plaintext", "false", ""]]
    # --json: the answer without the keys, plus "out".
    out2 = tmp_path / "fill2.json"
    pj = run(stack, "device", "fill", did, "--plaintext", "--out", str(out2), "--force", "--index", "1",
             "--json")
    assert pj.returncode == OK, pj.stderr
    j = json.loads(pj.stdout)
    assert j.pop("format", "qkms-fill/1") == "qkms-fill/1"
    assert j == {"device_id": did, "indices": [1], "out": str(out2)}
    doc2 = json.loads(out2.read_text())
    assert [k["key"] for k in doc2["keys"]] == [doc["keys"][1]["key"]]
    assert "IN CLEAR" in pj.stderr
    # Not a package: fill open refuses it.
    _, priv_pem = write_station_key(tmp_path, gen_station_key("x25519"))
    assert run(stack, "fill", "open", "--key", priv_pem, str(out)).returncode == REFUSED


def test_fill_plaintext_operator_exit_4(stack, tmp_path):
    did = uid("FPO")
    register(stack, did, "--keys", "2")
    op = operator_token(stack)
    out = tmp_path / "fill.json"
    for extra in ([], ["--force"]):
        p = run(stack, "device", "fill", did, "--plaintext", "--out", str(out), *extra,
                env={"KMS_TOKEN": op})
        assert p.returncode == AUTH, p.stderr
        assert p.stdout == "" and "forbidden" in p.stderr and "HTTP 403" in p.stderr
        assert op not in p.stderr
        assert not out.exists()
    p = run(stack, "device", "fill", did, "--plaintext", "--out", str(out), "--json",
            env={"KMS_TOKEN": op})
    assert p.returncode == AUTH and json.loads(p.stdout)["error"]["code"] == "forbidden"
    assert not out.exists()
    assert export_counts(stack, did) == [0, 0] and fill_audits(stack, did) == []
    # The same operator may export sealed keys; the audit names its token.
    priv = gen_station_key("x25519")
    pub, _ = write_station_key(tmp_path, priv)
    sealed = tmp_path / "sealed.qkfp"
    ok(stack, "device", "fill", did, "--recipient-pub", pub, "--out", str(sealed),
       env={"KMS_TOKEN": op})
    remember(json.loads(fillpkg_py.open_package(priv, sealed.read_bytes())))
    (audit,) = fill_audits(stack, did)
    assert audit[0].startswith("op-") and audit[1] == "sealed"


# ---------------------------------------------------------------------------
# import


def mixed_csv(p):
    """A CSV of good and bad rows for prefix p: (text, created IDs, {line: code})."""
    grp = f"{p}g"
    lines = [
        "device_id,type,group,parent,keys",  # 1
        f'{p}-GW,gateway,"{grp}",,2',  # 2 created; quoted field
        f'"{p}-SUB",subdevice,{grp},{p}-GW,1',  # 3 created; its gateway is on line 2
        f'"{p}-Q""X",meter,{grp},,"3"',  # 4 created; doubled quote in a quoted ID
        f"{p} bad,meter,{grp},,",  # 5 invalid_device_id
        f"{p}-EXIST,meter,{grp},,",  # 6 conflict: registered before
        f"{p}-M,meter,{grp},,1",  # 7 created
        f"{p}-M,meter,{grp},,1",  # 8 conflict: the same ID again
        f'{p}-C,meter,"a,b",,1',  # 9 invalid_group: the comma is inside quotes
        f"{p}-K,meter,{grp},,abc",  # 10 parse_error: keys not a number
        f"{p}-T,nope,{grp},,",  # 11 invalid_type
        "",  # 12 blank: skipped
        f"{p}-F,meter,{grp}",  # 13 parse_error: too few fields
        f"{p}-LAST,meter,{grp},,1",  # 14 created
    ]
    created = [f"{p}-GW", f"{p}-SUB", f'{p}-Q"X', f"{p}-M", f"{p}-LAST"]
    failed = {5: "invalid_device_id", 6: "conflict", 8: "conflict", 9: "invalid_group",
              10: "parse_error", 11: "invalid_type", 13: "parse_error"}
    return "\r\n".join(lines) + "\r\n", created, failed


def check_import_db(stack, p, created):
    assert device_ids(stack, p) == sorted(created + [f"{p}-EXIST"])
    # 2 + 1 + 3 + 1 + 1 keys from the file, 1 from the earlier registration.
    assert key_count(stack, p) == 9
    assert ok_json(stack, "device", "show", f"{p}-SUB")["parent"] == f"{p}-GW"
    q = ok_json(stack, "device", "show", f'{p}-Q"X')
    assert q["group"] == f"{p}g" and len(q["keys"]) == 3


def test_import_csv_human(stack, tmp_path):
    p = uid("IMH")
    register(stack, f"{p}-EXIST", "--keys", "1")
    text, created, failed = mixed_csv(p)
    f = tmp_path / "devices.csv"
    f.write_text(text)
    r = run(stack, "device", "import", str(f))
    assert r.returncode == REFUSED, r.stderr
    lines = r.stdout.rstrip("\n").split("\n")
    assert lines[0] == f"created {len(created)}, failed {len(failed)}"
    got = {}
    for line in lines[1:]:
        m = re.fullmatch(r"line (\d+): (.+): (.+) \(([a-z_]+)\)", line)
        assert m, line
        got[int(m.group(1))] = (m.group(2), m.group(4))
    assert [int(re.match(r"line (\d+)", l).group(1)) for l in lines[1:]] == sorted(failed)
    assert {ln: code for ln, (_, code) in got.items()} == failed
    assert got[5][0] == f"{p} bad" and got[6][0] == f"{p}-EXIST" and got[8][0] == f"{p}-M"
    check_import_db(stack, p, created)


def test_import_csv_json(stack, tmp_path):
    p = uid("IMJ")
    register(stack, f"{p}-EXIST", "--keys", "1")
    text, created, failed = mixed_csv(p)
    f = tmp_path / "devices.csv"
    f.write_text(text)
    r = run(stack, "device", "import", str(f), "--json")
    assert r.returncode == REFUSED, r.stderr
    body = json.loads(r.stdout)
    assert body["created"] == len(created) and body["failed"] == len(failed)
    res = body["results"]
    assert [x["line"] for x in res] == [2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14]  # file order
    for x in res:
        if x["line"] in failed:
            assert x["status"] == "error" and x["error"]["code"] == failed[x["line"]], x
            assert x["error"]["message"]
        else:
            assert x["status"] == "created" and "error" not in x, x
    byline = {x["line"]: x for x in res}
    assert [byline[ln]["device_id"] for ln in (2, 3, 4, 7, 14)] == created
    assert byline[5]["device_id"] == f"{p} bad"
    check_import_db(stack, p, created)
    # Every row of a second import now conflicts or fails again: nothing new.
    r = run(stack, "device", "import", str(f), "--json")
    assert r.returncode == REFUSED
    assert json.loads(r.stdout)["created"] == 0
    check_import_db(stack, p, created)


def test_import_jsonl(stack, tmp_path):
    p = uid("IML")
    rows = [
        {"device_id": f"{p}-A", "type": "meter", "keys": 1},
        None,  # a blank line
        {"device_id": f"{p}-GW", "type": "gateway", "group": "jl", "keys": 2},
        {"device_id": f"{p}-S", "type": "subdevice", "parent": f"{p}-GW", "keys": 2,
         "key_bits": 256, "validity_days": 30},
    ]
    f = tmp_path / "devices.jsonl"
    f.write_text("\n".join("" if r is None else json.dumps(r) for r in rows) + "\n")
    r = run(stack, "device", "import", str(f))
    assert r.returncode == OK, r.stdout + r.stderr
    assert r.stdout == "created 3, failed 0\n"
    assert device_ids(stack, p) == sorted([f"{p}-A", f"{p}-GW", f"{p}-S"])
    s = ok_json(stack, "device", "show", f"{p}-S")
    assert s["parent"] == f"{p}-GW" and [k["algorithm"] for k in s["keys"]] == ["AES-256"] * 2
    k = s["keys"][0]
    assert ts(k["not_after"]) - ts(k["not_before"]) == datetime.timedelta(days=30)
    assert key_count(stack, p) == 5  # the gateway has two: access and local

    # No extension: the format follows the content; one good row, three bad.
    q = uid("IMK")
    g = tmp_path / "devices"
    g.write_text("\n".join([
        json.dumps({"device_id": f"{q}-OK", "type": "meter", "keys": 1}),  # 1 created
        json.dumps({"device_id": f"{q}-B", "type": "meter", "colour": "red"}),  # 2 invalid_request
        json.dumps({"device_id": f"{q}-C", "type": "meter", "keys": "2"}),  # 3 parse_error
        "not json",  # 4 parse_error
        "",
        json.dumps({"device_id": f"{q}-D", "type": "meter", "keys": 0}),  # 6 invalid_keys
    ]) + "\n")
    r = run(stack, "device", "import", str(g), "--json")
    assert r.returncode == REFUSED, r.stderr
    body = json.loads(r.stdout)
    assert (body["created"], body["failed"]) == (1, 4)
    assert [(x["line"], x["status"], x.get("error", {}).get("code")) for x in body["results"]] == [
        (1, "created", None), (2, "error", "invalid_request"), (3, "error", "parse_error"),
        (4, "error", "parse_error"), (6, "error", "invalid_keys")]
    assert device_ids(stack, q) == [f"{q}-OK"]
    assert key_count(stack, q) == 1
    # The same rows in human output.
    q2 = uid("IMK")
    g2 = tmp_path / "devices.txt"
    g2.write_text(g.read_text().replace(q, q2))
    r = run(stack, "device", "import", str(g2), "--format", "jsonl")
    assert r.returncode == REFUSED
    lines = r.stdout.rstrip("\n").split("\n")
    assert lines[0] == "created 1, failed 4"
    assert [l.split(":")[0] for l in lines[1:]] == ["line 2", "line 3", "line 4", "line 6"]
    assert lines[1].startswith(f"line 2: {q2}-B: ") and lines[1].endswith("(invalid_request)")
    assert lines[3].startswith("line 4: -: ") and lines[3].endswith("(parse_error)")
    assert device_ids(stack, q2) == [f"{q2}-OK"]


def test_import_csv_attributes_and_service(stack, tmp_path):
    """attr.NAME columns become attributes (port a number, joined a
    boolean), service_days a number of days or none (no end); an empty
    cell is left out. Bad values are the server's row errors."""
    p = uid("IMA")
    f = tmp_path / "gw.csv"
    f.write_text(
        "device_id,type,service_days,attr.mac,attr.port,attr.joined,attr.room\n"
        f"{p}-1,gateway,30,02-1A-2B-3C-4D-{p[-2:]},8443,true,hall\n"
        f"{p}-2,gateway,none,,,,\n"
        f"{p}-3,gateway,,02:1a:2b:3c:4d:{p[-2:].lower()},,,\n"     # the same MAC: conflict
        f"{p}-4,gateway,10,,99999,,\n")                            # port out of range
    r = run(stack, "device", "import", str(f), "--json")
    assert r.returncode == REFUSED, r.stdout + r.stderr
    res = {x["line"]: x for x in json.loads(r.stdout)["results"]}
    assert [res[n]["status"] for n in (2, 3, 4, 5)] == ["created", "created", "error", "error"]
    assert res[4]["error"]["code"] == "conflict", res[4]
    assert res[5]["error"]["code"] == "invalid_attributes", res[5]
    d1 = ok_json(stack, "device", "show", f"{p}-1")
    assert d1["attributes"] == {"mac": f"02:1a:2b:3c:4d:{p[-2:].lower()}", "port": 8443,
                                "joined": True, "room": "hall"}, d1["attributes"]
    until = ts(d1["service_until"]) - datetime.datetime.now(datetime.timezone.utc)
    assert datetime.timedelta(days=29) < until <= datetime.timedelta(days=30)
    d2 = ok_json(stack, "device", "show", f"{p}-2")
    assert d2["service_until"] is None and d2.get("attributes", {}) == {}
    for header in ("device_id,type,attr.", "device_id,type,attr.x,attr.x",
                   "device_id,type,attr." + "n" * 33):
        g = tmp_path / "bad.csv"
        g.write_text(header + "\n" + f"{p}-9,gateway" + ",v" * (header.count(",") - 1) + "\n")
        r = run(stack, "device", "import", str(g))
        assert r.returncode == USAGE and "attr." in r.stderr, (header, r.stderr)


def test_import_large_multi_batch(stack, tmp_path):
    p = uid("BIG")
    n = 1200
    lines = ["device_id,type,group,parent,keys", f"{p}-GW,gateway,big,,2"]
    lines += [f"{p}-{i:05d},meter,big,,1" for i in range(n - 2)]
    lines += [f"{p}-SUB,subdevice,big,{p}-GW,1"]  # in the third batch; its gateway in the first
    f = tmp_path / "big.csv"
    f.write_text("\n".join(lines) + "\n")
    route = "admin_devices_import"
    before = route_count(stack, route)
    r = run(stack, "device", "import", str(f))
    assert r.returncode == OK, r.stdout[-2000:] + r.stderr
    assert r.stdout == f"created {n}, failed 0\n"
    assert wait_route_count(stack, route, before + 3) == before + 3  # 500 + 500 + 200
    assert int(stack.psql(f"SELECT count(*) FROM devices WHERE device_id LIKE '{p}-%'").strip()) == n
    assert key_count(stack, p) == n + 1  # the gateway has two: access and local
    assert ok_json(stack, "device", "show", f"{p}-SUB")["parent"] == f"{p}-GW"
    # Bigger batches, one bad row in each: reported with their file lines.
    q = uid("BIG")
    lines = ["device_id,type,keys"] + [f"{q}-{i:05d},meter,1" for i in range(n)]
    bad = [2, 1001, 1002, 1201]  # the first row, the last of batch 1, the first of 2, the last
    for ln in bad:
        lines[ln - 1] = f"{q} bad {ln},meter,1"
    f = tmp_path / "big2.csv"
    f.write_text("\n".join(lines) + "\n")
    before = route_count(stack, route)
    r = run(stack, "device", "import", str(f), "--batch", "1000", "--json")
    assert r.returncode == REFUSED, r.stderr
    assert wait_route_count(stack, route, before + 2) == before + 2
    body = json.loads(r.stdout)
    assert (body["created"], body["failed"]) == (n - len(bad), len(bad))
    assert len(body["results"]) == n
    assert [x["line"] for x in body["results"]] == list(range(2, n + 2))
    errors = [x for x in body["results"] if x["status"] == "error"]
    assert [(x["line"], x["device_id"], x["error"]["code"]) for x in errors] == [
        (ln, f"{q} bad {ln}", "invalid_device_id") for ln in bad]
    assert int(stack.psql(f"SELECT count(*) FROM devices WHERE device_id LIKE '{q}%'").strip()) == \
        n - len(bad)


# ---------------------------------------------------------------------------
# device types


def test_device_type_list_add(stack):
    p = ok(stack, "device-type", "list")
    listed = p.stdout.rstrip("\n").split("\n")
    assert set(listed) >= BUILTIN_TYPES and listed == sorted(listed)
    assert ok_json(stack, "device-type", "list")["types"] == listed
    name = "rsu" + uuid.uuid4().hex[:8]
    assert name not in listed
    p = ok(stack, "device-type", "add", name)
    assert p.stdout == f"Added device type '{name}'.\n"
    assert name in ok(stack, "device-type", "list").stdout.split("\n")
    d = register(stack, uid("RSU"), "--keys", "1", type_=name)
    assert d["type"] == name
    refused(stack, "conflict", "device-type", "add", name, status=409)
    name2 = "rsu" + uuid.uuid4().hex[:8]
    assert ok_json(stack, "device-type", "add", name2) == {"name": name2, "key_purposes": [], "service_days": None,
                                                                "suite": "aes"}
    types = ok_json(stack, "device-type", "list")["types"]
    assert name in types and name2 in types
    assert stack.psql(f"SELECT count(*) FROM audit_log WHERE event = 'device_type.added' "
                      f"AND detail->>'name' = '{name}'").strip() == "1"
    # Adding is admin-only; listing is not.
    op = operator_token(stack)
    name3 = "rsu" + uuid.uuid4().hex[:8]
    r = run(stack, "device-type", "add", name3, env={"KMS_TOKEN": op})
    assert r.returncode == AUTH and "forbidden" in r.stderr and r.stdout == ""
    assert name3 not in ok_json(stack, "device-type", "list")["types"]
    assert set(ok_json(stack, "device-type", "list", env={"KMS_TOKEN": op})["types"]) == set(types)


# ---------------------------------------------------------------------------
# key bytes stay secret (keep this last: it also checks every key exported
# by the tests above)


def test_no_plaintext_key_in_log_or_pg_dump(stack, tmp_path):
    did = uid("LEAK")
    register(stack, did, "--keys", "2", "--key-bits", "256")
    mine = set()
    for curve in ("x25519", "p256"):
        priv = gen_station_key(curve)
        pub, priv_pem = write_station_key(tmp_path, priv, curve)
        out = tmp_path / f"{curve}.qkfp"
        ok(stack, "-v", "device", "fill", did, "--recipient-pub", pub, "--out", str(out), "--force")
        doc = json.loads(ok(stack, "fill", "open", "--key", priv_pem, str(out), "--json").stdout)
        mine |= {k["key"] for k in doc["keys"]}
    out = tmp_path / "plain.json"
    ok(stack, "-v", "device", "fill", did, "--plaintext", "--out", str(out), "--force")
    plain = {k["key"] for k in json.loads(out.read_text())["keys"]}
    assert plain == mine and len(mine) == 2
    keys = mine | EXPORTED_KEYS
    # Let kmsd finish writing its log lines for the requests above.
    time.sleep(0.3)
    log = stack.logs()
    assert "device keys exported" in log and did in log  # the log is the right one
    dump = subprocess.run(["pg_dump", "-d", stack.pg_dsn], capture_output=True, text=True,
                          timeout=120)
    assert dump.returncode == 0, dump.stderr
    assert "device_keys" in dump.stdout and did in dump.stdout
    for k in keys:
        raw = bytes.fromhex(k)
        forms = {k, k.upper(), base64.b64encode(raw).decode(), raw.hex(" ")}
        for form in forms:
            assert form not in log, "a device key is in the kmsd log"
            assert form not in dump.stdout, "a device key is in the database dump"


def test_import_progress_only_on_a_terminal(stack, tmp_path):
    """kmsctl device import draws its progress on stderr when stderr is a
    terminal (a pseudo-terminal here), never with --json or into a pipe."""
    p = uid("IMP")
    f = tmp_path / "many.csv"
    f.write_text("device_id,type,keys\n" + "".join(f"{p}-{i},meter,1\n" for i in range(300)))
    env = dict(stack.env, KMS_ADDR=stack.url)

    def import_with_tty(*extra, ids):
        g = tmp_path / f"{ids}.csv"
        g.write_text(f.read_text().replace(p, ids))
        return run_on_tty([KMSCTL, "device", "import", str(g), "--batch", "50", *extra], env)

    rc, out, tty = import_with_tty(ids=uid("IMP"))
    assert rc == OK and out == "created 300, failed 0\n", (rc, out, tty)
    assert "\r\x1b[Kimport: " in tty and " rows/s" in tty, repr(tty)
    assert tty.endswith("\r\x1b[K"), repr(tty[-40:])  # the line is cleared before the summary
    rc, out, tty = import_with_tty("--json", ids=uid("IMP"))
    assert rc == OK and json.loads(out)["created"] == 300 and tty == "", repr(tty)
    # Piped stderr: nothing drawn.
    r = run(stack, "device", "import", str(f), "--batch", "50")
    assert r.returncode == OK and r.stderr == "", r.stderr
