"""kmsctl session and policy commands end to end: the real CLI binary against
the real kmsd (PostgreSQL + SoftHSM). Pairing policies are made with kmsctl;
sessions are made by real devices, played by the independent Python protocol
implementation (qkms_proto_py) over HTTP. test_sessions.py covers the
protocol and the admin API themselves; these tests cover the CLI path:
argument checking, the requests kmsctl builds, what it prints (human and
--json) and its exit codes."""
import datetime
import hashlib
import json
import re

import pytest
import requests

import helpers
from helpers import (AUTH, NOWHERE, OK, REFUSED, ask_key, get_key, human, kv_block, make_device,
                     near, ok, run, table, ts, uid, usage, utcnow)
from qkms_proto_py import Device

SESSION_HEADER = ["SESSION", "KEY-ID", "INITIATOR", "RESPONDER", "STATE", "EXPIRES"]
ENDED_HEADER = ["SESSION-HASH", "KEY-ID", "INITIATOR", "RESPONDER", "REASON", "ENDED"]
POLICY_HEADER = ["NAME", "TYPES", "GROUPS", "KEY-BITS", "IDLE-TIMEOUT", "MAX-LIFETIME", "DELIVERY",
                 "KEY-SOURCES"]
POLICY_FIELDS = {"name", "type_a", "type_b", "group_a", "group_b", "key_bits", "idle_timeout_s",
                 "max_lifetime_s", "delivery", "created_at", "created_by", "scope", "key_sources",
                 "max_epochs", "directions", "epoch_grace_s", "rekey_after_s",
                 "rekey_after_deliveries", "stream_window"}
LIVE_FIELDS = {"session_id", "key_id", "initiator", "responder", "policy", "delivery", "key_bits",
               "created_at", "last_used_at", "expires_at", "idle_timeout_s",
               "initiator_delivered_at", "responder_delivered_at", "provenance", "state",
               "key_source", "epoch"}
TOMBSTONE_FIELDS = {"session_hash", "key_id", "initiator", "responder", "created_at", "ended_at",
                    "reason", "state"}


# ---------------------------------------------------------------------------
# helpers


def ok_json(stack, *args, **kw):
    # --json first: it must not follow a "--" in args.
    return json.loads(ok(stack, "--json", *args, **kw).stdout)


def refused(stack, code, *args, status=None, **kw):
    """helpers.refused (exit 6, the API error `code` as JSON on stdout and on
    stderr), and stderr in kmsctl's shape; then the same without --json:
    nothing on stdout, "(code, HTTP status)" on stderr."""
    p = helpers.refused(stack, code, *args, status=status, **kw)
    assert p.stderr.startswith("kmsctl: "), p.stderr
    h = run(stack, *args, **kw)
    assert h.returncode == REFUSED and h.stdout == "", (h.stdout, h.stderr)
    assert f"({code}, HTTP {status})" in h.stderr if status else code in h.stderr, h.stderr
    return p


def sha256_hex(s):
    return hashlib.sha256(s.encode()).hexdigest()


def stone_hash(stack, key_id, sid):
    """The hash a tombstone is keyed by, read from the database by key ID:
    HMAC-SHA-256 under the server's session ID key (docs/sessions.md), so
    never the plain SHA-256 of the ID."""
    h = stack.psql(f"SELECT encode(session_hash, 'hex') FROM session_tombstones "
                   f"WHERE key_id = '{key_id}'").strip()
    assert len(h) == 64 and h != sha256_hex(sid)
    return h


# -- devices and sessions, driven over HTTP with the Python protocol client --

def assert_session_ended(stack, dev, sid, peer):
    _, r = ask_key(stack, dev, sid, peer)
    assert r.status_code == 409 and r.json()["error"]["code"] == "session_ended", r.text


def server_session(stack, sid):
    r = stack.admin("GET", f"/v1/admin/sessions/{sid}")
    assert r.status_code == 200, r.text
    return r.json()


def server_policies(stack):
    r = stack.admin("GET", "/v1/admin/policies")
    assert r.status_code == 200, r.text
    return {p["name"]: p for p in r.json()["policies"]}


def auditor_env(stack):
    tok = ok_json(stack, "token", "create", uid("aud"), "--role", "auditor")["token"]
    return tok, {"KMS_TOKEN": tok}


class Pair:
    """A vehicle and an encryptor in a group of their own, allowed to pair by
    a policy (made with kmsctl) that matches that group only, so that the
    policies other tests add cannot change how these two pair."""

    def __init__(self, stack, *policy_args):
        self.group = uid("g")
        self.policy = uid("pol")
        ok(stack, "policy", "add", self.policy, "--types", "vehicle:encryptor",
           "--groups", f"{self.group}:{self.group}", *policy_args)
        self.veh = make_device(stack, "vehicle", self.group, keys=1)
        self.enc = make_device(stack, "encryptor", self.group, keys=1)


@pytest.fixture
def pair(stack):
    return Pair(stack)


# ---------------------------------------------------------------------------
# help


def test_help_offline(stack):
    p = ok(stack, "--addr", NOWHERE, "--help")
    assert re.search(r"^  session +Inspect and end device sessions$", p.stdout, re.M), p.stdout
    assert re.search(r"^  policy +Manage pairing policies", p.stdout, re.M), p.stdout
    p = ok(stack, "--addr", NOWHERE, "session", "--help")
    for sub in ("list [--device ID] [--state pending|active|ended] [--limit N]", "show ID", "end ID"):
        assert f"\n  {sub}\n" in p.stdout, (sub, p.stdout)
    p = ok(stack, "--addr", NOWHERE, "policy", "--help")
    for sub in ("list", "add NAME --types A:B", "remove NAME"):
        assert f"\n  {sub}" in p.stdout, (sub, p.stdout)
    p = ok(stack, "--addr", NOWHERE, "policy", "add", "--help")
    for opt in ("--types A:B", "--groups GA:GB", "--key-bits BITS", "--idle-timeout SECONDS",
                "--max-lifetime SECONDS", "--delivered", "Request: POST /v1/admin/policies"):
        assert opt in p.stdout, (opt, p.stdout)
    p = ok(stack, "--addr", NOWHERE, "session", "list", "--help")
    assert " ".join(SESSION_HEADER) in p.stdout and "SESSION-HASH" in p.stdout, p.stdout
    assert ok(stack, "--addr", NOWHERE, "session", "end", "--help").stdout.startswith(
        "Usage: kmsctl session end ID\n")


# ---------------------------------------------------------------------------
# policy


def test_policy_add_list_remove_human(stack):
    g = uid("g")
    full, plain = uid("full"), uid("plain")
    p = ok(stack, "policy", "add", full, "--types", "vehicle:encryptor",
           "--groups", f"{g}-a:{g}-b", "--key-bits", "256", "--idle-timeout", "60",
           "--max-lifetime", "7200", "--delivered")
    assert p.stderr == ""
    first, rest = p.stdout.split("\n", 1)
    assert first == f"Added pairing policy '{full}'."
    rec = kv_block(rest)
    srv = server_policies(stack)[full]
    assert srv["type_a"] == "vehicle" and srv["type_b"] == "encryptor"
    assert (srv["group_a"], srv["group_b"]) == (f"{g}-a", f"{g}-b")
    assert (srv["key_bits"], srv["idle_timeout_s"], srv["max_lifetime_s"]) == (256, 60, 7200)
    assert srv["delivery"] == "delivered" and srv["scope"] == "cross-group"
    assert rec == {k: human(v) for k, v in srv.items()}
    assert near(ts(srv["created_at"]), utcnow())

    # Only the required options: the server's defaults, same-group scope.
    p = ok(stack, "policy", "add", plain, "--types", "meter:*")
    assert p.stdout.startswith(f"Added pairing policy '{plain}'.\n")
    srv = server_policies(stack)[plain]
    assert (srv["type_a"], srv["type_b"], srv["group_a"], srv["group_b"]) == ("meter", "*", None, None)
    assert (srv["key_bits"], srv["idle_timeout_s"], srv["max_lifetime_s"]) == (128, 300, 3600)
    assert srv["delivery"] == "session" and srv["scope"] == "same-group"

    p = ok(stack, "policy", "list")
    assert p.stderr == ""
    rows = table(p.stdout)
    assert rows[0] == POLICY_HEADER
    by_name = {r[0]: r for r in rows[1:]}
    assert len(by_name) == len(rows) - 1 == len(server_policies(stack))
    assert by_name[full] == [full, "vehicle:encryptor", f"{g}-a:{g}-b", "256", "60", "7200",
                             "delivered", "a,b,c"]
    assert by_name[plain] == [plain, "meter:*", "(same)", "128", "300", "3600", "session",
                              "a,b,c"]
    # In the server's order (by name).
    assert [r[0] for r in rows[1:]] == sorted(by_name)

    for name in (full, plain):
        p = ok(stack, "policy", "remove", name)
        assert p.stdout == f"Removed pairing policy '{name}'.\n" and p.stderr == ""
        assert name not in server_policies(stack)
    assert full not in ok(stack, "policy", "list").stdout


def test_policy_json(stack):
    g = uid("g")
    name = uid("pj")
    body = ok_json(stack, "policy", "add", name, "--types", "*:*", "--groups", f"{g}:{g}x",
                   "--key-bits", "128", "--idle-timeout", "1", "--max-lifetime", "604800")
    # The server's answer: every policy, the new one included.
    assert set(body) == {"policies"}
    mine = [p for p in body["policies"] if p["name"] == name]
    assert len(mine) == 1 and set(mine[0]) == POLICY_FIELDS
    assert mine[0]["type_a"] == mine[0]["type_b"] == "*"
    assert (mine[0]["group_a"], mine[0]["group_b"]) == (g, f"{g}x")
    assert (mine[0]["idle_timeout_s"], mine[0]["max_lifetime_s"]) == (1, 604800)
    assert mine[0]["delivery"] == "session"
    assert ok_json(stack, "policy", "list") == stack.admin("GET", "/v1/admin/policies").json()
    assert ok_json(stack, "policy", "remove", name) == {"name": name, "removed": True}
    assert name not in server_policies(stack)


def test_policy_usage_errors_offline(stack):
    name = uid("bad")
    long_name = "P" + "x" * 63
    cases = [
        (["add", name], "--types is required"),
        (["add", name, "--types", "vehicle"], "--types takes two values joined by one ':'"),
        (["add", name, "--types", "vehicle:encryptor:meter"], "joined by one ':'"),
        (["add", name, "--types", "vehicle:"], "bad --types"),
        (["add", name, "--types", ":vehicle"], "bad --types"),
        (["add", name, "--types", "Vehicle:encryptor"], "bad --types"),
        (["add", name, "--types", "vehicle:**"], "bad --types"),
        (["add", name, "--types", "vehicle:enc ryptor"], "bad --types"),
        (["add", name, "--types", "*:*", "--groups", "depot"], "--groups takes two values"),
        (["add", name, "--types", "*:*", "--groups", "depot:-x"], "bad --groups"),
        (["add", name, "--types", "*:*", "--groups", "a b:c"], "bad --groups"),
        (["add", name, "--types", "*:*", "--groups", "*:*"], "bad --groups"),
        (["add", name, "--types", "*:*", "--key-bits", "192"], "--key-bits must be 128 or 256"),
        (["add", name, "--types", "*:*", "--idle-timeout", "0"], "--idle-timeout"),
        (["add", name, "--types", "*:*", "--idle-timeout", "86401"], "--idle-timeout"),
        (["add", name, "--types", "*:*", "--idle-timeout", "5m"], "--idle-timeout"),
        (["add", name, "--types", "*:*", "--max-lifetime", "0"], "--max-lifetime"),
        (["add", name, "--types", "*:*", "--max-lifetime", "604801"], "--max-lifetime"),
        (["add", name, "--types", "*:*", "--max-lifetime", "-5"], "--max-lifetime"),
        (["add", name, "--types", "*:*", "--delivery", "delivered"], "unknown option"),
        (["add", "--types", "*:*"], "missing argument"),
        (["add", name, name + "2", "--types", "*:*"], "too many arguments"),
        (["add", "--types", "*:*", "--", "-" + name], "bad policy name"),
        (["add", "." + name, "--types", "*:*"], "bad policy name"),
        (["add", "a/b", "--types", "*:*"], "bad policy name"),
        (["add", "a b", "--types", "*:*"], "bad policy name"),
        (["add", "", "--types", "*:*"], "bad policy name"),
        (["add", long_name + "y", "--types", "*:*"], "bad policy name"),
        (["remove", "a/b"], "bad policy name"),
        (["remove", ".."], "bad policy name"),
        (["remove"], "missing argument"),
        (["list", "extra"], "too many arguments"),
    ]
    for args, msg in cases:
        p = usage(stack, "policy", *args)
        assert msg in p.stderr, (args, p.stderr)
    assert not [n for n in server_policies(stack) if name in n]
    # A token pasted as the name is not echoed.
    tok = "qkms_" + "ab" * 32
    p = usage(stack, "policy", "add", tok, "--types", "*:*")
    assert tok not in p.stderr and "hidden" in p.stderr, p.stderr
    p = usage(stack, "policy", "add", name, "--types", f"{tok}:*")
    assert tok not in p.stderr and "hidden" in p.stderr, p.stderr
    # The boundary: a 64-character name is valid.
    assert ok_json(stack, "policy", "add", long_name, "--types", "generic:generic")
    assert ok_json(stack, "policy", "remove", long_name)["removed"] is True


def test_policy_refused_by_server(stack):
    name = uid("dup")
    ok(stack, "policy", "add", name, "--types", "gateway:subdevice")
    before = server_policies(stack)[name]
    refused(stack, "conflict", "policy", "add", name, "--types", "vehicle:vehicle", status=409)
    assert server_policies(stack)[name] == before  # unchanged
    ok(stack, "policy", "remove", name)
    refused(stack, "not_found", "policy", "remove", name, status=404)
    refused(stack, "not_found", "policy", "remove", uid("never"), status=404)


def test_policy_auditor_exit_4(stack):
    tok, env = auditor_env(stack)
    name = uid("aud")
    for args in (["policy", "add", name, "--types", "*:*"], ["policy", "remove", name]):
        p = run(stack, *args, env=env)
        assert p.returncode == AUTH and p.stdout == "", (args, p.stdout, p.stderr)
        assert "HTTP 403" in p.stderr and tok not in p.stderr, p.stderr
    assert name not in server_policies(stack)
    # Reading is allowed to every role.
    assert ok_json(stack, "policy", "list", env=env) == stack.admin("GET", "/v1/admin/policies").json()


def test_policy_decides_pairing(stack):
    """A policy added with kmsctl lets two devices pair; once removed with
    kmsctl, new sessions are refused."""
    g = uid("g")
    veh, enc = make_device(stack, "vehicle", g, keys=1), make_device(stack, "encryptor", g, keys=1)
    _, r = ask_key(stack, veh, uid(), enc)
    assert r.status_code == 403 and r.json()["error"]["code"] == "policy_denied", r.text
    name = uid("pd")
    ok(stack, "policy", "add", name, "--types", "encryptor:vehicle", "--groups", f"{g}:{g}",
       "--key-bits", "256", "--max-lifetime", "120")
    sid = uid()
    k = get_key(stack, veh, sid, enc)
    assert len(k.key) == 32 and get_key(stack, enc, sid, veh).key == k.key
    s = ok_json(stack, "session", "show", sid)
    assert s["policy"] == name and s["key_bits"] == 256
    assert near(ts(s["expires_at"]), ts(s["created_at"]) + datetime.timedelta(seconds=120),
                datetime.timedelta(seconds=2))
    ok(stack, "policy", "remove", name)
    _, r = ask_key(stack, veh, uid(), enc)
    assert r.status_code == 403 and r.json()["error"]["code"] == "policy_denied", r.text


# ---------------------------------------------------------------------------
# session list


def test_session_list_pending_and_active(stack, pair):
    veh, enc = pair.veh, pair.enc
    pending, active = uid("PEND"), uid("ACT")
    kp = get_key(stack, veh, pending, enc)
    ka = get_key(stack, enc, active, veh)  # the encryptor starts this one
    assert get_key(stack, veh, active, enc).key == ka.key
    sp, sa = server_session(stack, pending), server_session(stack, active)
    assert (sp["state"], sa["state"]) == ("pending", "active")
    row_p = [pending, kp.key_id, veh.device_id, enc.device_id, "pending", sp["expires_at"]]
    row_a = [active, ka.key_id, enc.device_id, veh.device_id, "active", sa["expires_at"]]
    assert near(ts(sp["expires_at"]), utcnow() + datetime.timedelta(seconds=3600))

    # Either party finds both, newest first.
    for dev in (veh, enc):
        p = ok(stack, "session", "list", "--device", dev.device_id)
        assert p.stderr == ""
        assert table(p.stdout) == [SESSION_HEADER, row_a, row_p]
    p = ok(stack, "session", "list", "--device", veh.device_id, "--state", "pending")
    assert table(p.stdout) == [SESSION_HEADER, row_p]
    p = ok(stack, "session", "list", "--device", enc.device_id, "--state", "active")
    assert table(p.stdout) == [SESSION_HEADER, row_a]
    # Without --device: every live session, these two among them.
    rows = table(ok(stack, "session", "list").stdout)
    assert rows[0] == SESSION_HEADER and row_a in rows and row_p in rows
    # A device without sessions: just the header.
    lonely = make_device(stack, "meter", pair.group, keys=1)
    p = ok(stack, "session", "list", "--device", lonely.device_id)
    assert table(p.stdout) == [SESSION_HEADER] and p.stderr == ""
    p = ok(stack, "session", "list", "--device", lonely.device_id, "--state", "ended")
    assert table(p.stdout) == [ENDED_HEADER]
    # --limit: the newest only, and a note that more may exist.
    p = ok(stack, "session", "list", "--device", veh.device_id, "--limit", "1")
    assert table(p.stdout) == [SESSION_HEADER, row_a]
    assert "Only the newest 1 are shown" in p.stderr, p.stderr

    # --json: the server's answer, for the same query.
    for q, args in (
            (f"device={veh.device_id}", ["--device", veh.device_id]),
            (f"device={veh.device_id}&state=pending", ["--device", veh.device_id, "--state", "pending"]),
            (f"device={enc.device_id}&state=active", ["--device", enc.device_id, "--state", "active"]),
            (f"device={veh.device_id}&limit=1", ["--device", veh.device_id, "--limit", "1"])):
        body = ok_json(stack, "session", "list", *args)
        assert body == stack.admin("GET", f"/v1/admin/sessions?{q}").json(), args
    body = ok_json(stack, "session", "list", "--device", veh.device_id)
    assert [s["session_id"] for s in body["sessions"]] == [active, pending]
    assert all(set(s) == LIVE_FIELDS for s in body["sessions"])


def test_session_list_device_filter_escaped(stack):
    """Device IDs with characters that need escaping in a query string."""
    pair = Pair(stack)
    odd = uid("v+x&state=ended;y=z")
    r = stack.admin("POST", "/v1/admin/devices",
                    json={"device_id": odd, "type": "vehicle", "group": pair.group, "keys": 1})
    assert r.status_code == 201, r.text
    doc = stack.admin("POST", f"/v1/admin/devices/{requests.utils.quote(odd, safe='')}/fill",
                      json={"plaintext": True}).json()
    veh = Device.from_fill(doc["plaintext"])
    sid = uid()
    get_key(stack, veh, sid, pair.enc)
    body = ok_json(stack, "session", "list", "--device", odd)
    assert [s["session_id"] for s in body["sessions"]] == [sid]
    assert body["sessions"][0]["initiator"] == odd
    assert table(ok(stack, "session", "list", "--device", odd, "--state", "pending").stdout)[1][0] == sid


# ---------------------------------------------------------------------------
# session show


def test_session_show_live(stack, pair):
    veh, enc = pair.veh, pair.enc
    sid = uid()
    k = get_key(stack, veh, sid, enc)
    p = ok(stack, "session", "show", sid)
    assert p.stderr == ""
    rec = kv_block(p.stdout)
    srv = server_session(stack, sid)
    assert set(srv) == LIVE_FIELDS
    assert rec == {f: human(srv[f]) for f in srv}
    assert rec["session_id"] == sid and rec["key_id"] == k.key_id
    assert (rec["initiator"], rec["responder"]) == (veh.device_id, enc.device_id)
    assert (rec["state"], rec["policy"], rec["delivery"], rec["key_bits"]) == (
        "pending", pair.policy, "session", "128")
    assert rec["responder_delivered_at"] == "-" and rec["initiator_delivered_at"] != "-"
    assert ok_json(stack, "session", "show", sid) == srv

    get_key(stack, enc, sid, veh)
    rec = kv_block(ok(stack, "session", "show", sid).stdout)
    assert rec["state"] == "active" and rec["responder_delivered_at"] != "-"
    # The key never appears.
    assert k.key.hex() not in ok(stack, "session", "show", sid, "--json").stdout


def test_session_show_odd_ids(stack, pair):
    """Session IDs that need escaping in a URL path, "." and "..", and one
    that starts with '-' (after "--")."""
    veh, enc = pair.veh, pair.enc
    for sid in (uid("a+b&c=d"), uid("x;y:z@w~!$'()*,"), uid("q\"`<>|^{}[]"), ".", "..",
                "-" + uid()):
        k = get_key(stack, veh, sid, enc)
        s = ok_json(stack, "session", "show", "--", sid)
        assert s["session_id"] == sid and s["key_id"] == k.key_id, (sid, s)
        assert kv_block(ok(stack, "session", "show", "--", sid).stdout)["session_id"] == sid


def test_session_show_unknown(stack):
    refused(stack, "not_found", "session", "show", uid("NOPE"), status=404)
    refused(stack, "not_found", "session", "end", uid("NOPE"), status=404)


# ---------------------------------------------------------------------------
# session end


def test_session_end(stack, pair):
    veh, enc = pair.veh, pair.enc
    sid = uid()
    k = get_key(stack, veh, sid, enc)
    get_key(stack, enc, sid, veh)
    p = ok(stack, "session", "end", sid)
    assert p.stdout == f"Session '{sid}' ended (ended_by_operator); its key is destroyed.\n"
    assert p.stderr == ""

    # Both parties are refused from now on.
    assert_session_ended(stack, veh, sid, enc)
    assert_session_ended(stack, enc, sid, veh)

    # show: the tombstone, found by the hash of the ID.
    stone = ok_json(stack, "session", "show", sid)
    assert set(stone) == TOMBSTONE_FIELDS
    assert stone["state"] == "ended" and stone["reason"] == "ended_by_operator"
    assert stone["session_hash"] == stone_hash(stack, k.key_id, sid) and stone["key_id"] == k.key_id
    assert (stone["initiator"], stone["responder"]) == (veh.device_id, enc.device_id)
    assert near(ts(stone["ended_at"]), utcnow())
    assert stone == server_session(stack, sid)
    rec = kv_block(ok(stack, "session", "show", sid).stdout)
    assert rec == {f: human(v) for f, v in stone.items()}

    # list: gone from the live sessions, listed among the ended ones.
    assert table(ok(stack, "session", "list", "--device", veh.device_id).stdout) == [SESSION_HEADER]
    p = ok(stack, "session", "list", "--device", veh.device_id, "--state", "ended")
    assert table(p.stdout) == [ENDED_HEADER, [
        stone_hash(stack, k.key_id, sid)[:16], k.key_id, veh.device_id, enc.device_id, "ended_by_operator",
        stone["ended_at"]]]
    body = ok_json(stack, "session", "list", "--device", enc.device_id, "--state", "ended")
    assert body == {"sessions": [stone]}

    # Ending it again: there is no live session of that ID.
    refused(stack, "not_found", "session", "end", sid, status=404)

    # --json: the tombstone; a pending session can be ended too.
    sid2 = uid()
    get_key(stack, veh, sid2, enc)
    stone2 = ok_json(stack, "session", "end", sid2)
    assert set(stone2) == TOMBSTONE_FIELDS
    assert stone2["reason"] == "ended_by_operator"
    assert stone2["session_hash"] == stone_hash(stack, stone2["key_id"], sid2)
    assert_session_ended(stack, enc, sid2, veh)


def test_session_end_auditor_exit_4(stack, pair):
    veh, enc = pair.veh, pair.enc
    sid = uid()
    get_key(stack, veh, sid, enc)
    tok, env = auditor_env(stack)
    for extra in ([], ["--json"]):
        p = run(stack, "session", "end", sid, *extra, env=env)
        assert p.returncode == AUTH, (p.returncode, p.stderr)
        assert "HTTP 403" in p.stderr and tok not in p.stderr, p.stderr
    # Still live and usable; the auditor may look.
    assert ok_json(stack, "session", "show", sid, env=env)["state"] == "pending"
    assert ok_json(stack, "session", "list", "--device", veh.device_id, env=env)["sessions"]
    get_key(stack, enc, sid, veh)
    # An operator may end it.
    op = ok_json(stack, "token", "create", uid("op"), "--role", "operator")["token"]
    p = run(stack, "session", "end", sid, env={"KMS_TOKEN": op})
    assert p.returncode == OK and op not in p.stderr + p.stdout, p.stderr
    assert_session_ended(stack, veh, sid, enc)


def test_delivered_policy(stack):
    """A policy added with --delivered: the session is destroyed as soon as
    both parties received the key, and kmsctl shows it ended (delivered)."""
    pair = Pair(stack, "--delivered")
    veh, enc = pair.veh, pair.enc
    sid = uid()
    k = get_key(stack, veh, sid, enc)
    assert k.delivery == "delivered"
    rec = kv_block(ok(stack, "session", "show", sid).stdout)
    assert (rec["state"], rec["delivery"], rec["policy"]) == ("pending", "delivered", pair.policy)
    # A repeat by the same party does not finish the transfer.
    assert get_key(stack, veh, sid, enc).key == k.key
    assert ok_json(stack, "session", "show", sid)["state"] == "pending"

    assert get_key(stack, enc, sid, veh).key == k.key
    rec = kv_block(ok(stack, "session", "show", sid).stdout)
    assert rec["state"] == "ended" and rec["reason"] == "delivered", rec
    assert rec["session_hash"] == stone_hash(stack, k.key_id, sid) and "session_id" not in rec
    assert table(ok(stack, "session", "list", "--device", veh.device_id).stdout) == [SESSION_HEADER]
    rows = table(ok(stack, "session", "list", "--device", enc.device_id, "--state", "ended").stdout)
    assert rows[1:] == [[stone_hash(stack, k.key_id, sid)[:16], k.key_id, veh.device_id, enc.device_id,
                         "delivered", rec["ended_at"]]]
    assert_session_ended(stack, veh, sid, enc)
    # Nothing left to end.
    refused(stack, "not_found", "session", "end", sid, status=404)

    # Under a session-mode policy the same exchange leaves the session active.
    plain = Pair(stack)
    sid2 = uid()
    get_key(stack, plain.veh, sid2, plain.enc)
    get_key(stack, plain.enc, sid2, plain.veh)
    assert ok_json(stack, "session", "show", sid2)["state"] == "active"


# ---------------------------------------------------------------------------
# usage errors


def test_session_usage_errors_offline(stack):
    tok = "qkms_" + "cd" * 32
    cases = [
        (["list", "--state", "bogus"], "--state must be pending, active or ended"),
        (["list", "--state", "Ended"], "--state must be"),
        (["list", "--state", ""], "--state must be"),
        (["list", "--limit", "0"], "--limit must be a whole number from 1 to 1000"),
        (["list", "--limit", "1001"], "--limit"),
        (["list", "--limit", "ten"], "--limit"),
        (["list", "--limit", "-1"], "--limit"),
        (["list", "--device", "a b"], "bad --device"),
        (["list", "--device", "a/b"], "bad --device"),
        (["list", "--device", ""], "bad --device"),
        (["list", "--device", "x" * 129], "bad --device"),
        (["list", "extra"], "too many arguments"),
        (["list", "--after", "x"], "unknown option"),
        (["show"], "missing argument"),
        (["show", "a", "b"], "too many arguments"),
        (["show", "a/b"], "bad session ID"),
        (["show", "a b"], "bad session ID"),
        (["show", "a%2Fb"], "bad session ID"),
        (["show", "a?b"], "bad session ID"),
        (["show", ""], "bad session ID"),
        (["show", "s" * 129], "bad session ID"),
        (["show", "caf\u00e9"], "bad session ID"),
        (["end"], "missing argument"),
        (["end", "a#b"], "bad session ID"),
        (["end", "a\\b"], "bad session ID"),
        (["end", "a\x1b[2Jb"], "bad session ID"),
        (["frobnicate"], "unknown session subcommand"),
    ]
    for args, msg in cases:
        p = usage(stack, "session", *args)
        assert msg in p.stderr, (args, p.stderr)
    # A token pasted as an ID or device is not echoed.
    for args in (["show", tok + " "], ["end", tok + "/"], ["list", "--device", tok + "%"]):
        p = usage(stack, "session", *args)
        assert tok not in p.stderr and "hidden" in p.stderr, p.stderr
