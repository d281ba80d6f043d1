"""The tamper-evident audit log: sealing, verification against tampering done
directly in PostgreSQL (as the qkms role, i.e. someone with the database
password but not the token), list filters, export, roles, gaps and late
rows, and two kmsd instances sealing one database.

Most tests share one stack and undo their tampering afterwards, so each
also shows that the restored chain verifies again.
"""
import hashlib
import json
import os
import re
import signal
import struct
import subprocess
import time

import pytest

from conftest import KMSD, _finish, free_port, running_stack, wait_for, wait_readyz

FAST = {"QKMS_MAINTENANCE_INTERVAL": "1"}


# -- the canonical encoding, independently (docs/operations.md) ----------------
def canonical(row):
    def s(text):
        b = text.encode("utf-8")
        return struct.pack(">I", len(b)) + b

    out = b"qkms-audit-v1" + struct.pack(">qq", row["id"], row["at_us"])
    out += s(row["actor"]) + s(row["event"])
    out += b"\x00" if row["device_id"] is None else b"\x01" + s(row["device_id"])
    return out + s(row["detail"])


def row_hash(prev_hex, row):
    return hashlib.sha256(bytes.fromhex(prev_hex) + canonical(row)).hexdigest()


# -- helpers ---------------------------------------------------------------------
ROWS_SQL = """SELECT coalesce(json_agg(json_build_object(
    'id', id, 'at_us', (extract(epoch FROM at) * 1000000)::bigint, 'actor', actor,
    'event', event, 'device_id', device_id, 'detail', detail::text,
    'prev', encode(prev_hash, 'hex'), 'hash', encode(hash, 'hex')) ORDER BY id), '[]')
    FROM audit_log"""


def rows(st):
    return json.loads(st.psql(ROWS_SQL))


def wait_sealed(st, timeout=30):
    """Until every visible audit row is sealed and covered by a checkpoint."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        out = st.psql("SELECT (SELECT count(*) FROM audit_log WHERE hash IS NULL),"
                      " (SELECT coalesce(max(chain_length), 0) FROM audit_checkpoints),"
                      " (SELECT chain_length FROM audit_chain_state)").strip()
        unsealed, cp_len, chain_len = (int(x) for x in out.split("|"))
        if unsealed == 0 and cp_len == chain_len:
            return
        time.sleep(0.2)
    raise AssertionError("audit rows not sealed in time:\n" + st.logs()[-3000:])


def verify(st, token=None):
    r = st.api("POST", "/v1/admin/audit/verify", token=token or st.admin_token)
    assert r.status_code == 200, r.text
    return r.json()


def register(st, device_id):
    r = st.admin("POST", "/v1/admin/devices", json={"device_id": device_id, "type": "vehicle"})
    assert r.status_code == 201, r.text


def new_token(st, name, role):
    r = st.admin("POST", "/v1/admin/tokens", json={"name": name, "role": role})
    assert r.status_code == 201, r.text
    return r.json()["token"]


def sealed_row(st, event="device.registered", offset=0):
    """id of an older sealed row of this event (not the chain head), nor the
    head of a checkpoint: a checkpoint sealed between two of the fixture's
    registrations (the sealer runs every second) would name that row, and
    the verifier then reports the checkpoint before the row itself."""
    heads = {int(x) for x in st.psql("SELECT last_audit_id FROM audit_checkpoints").split()}
    ids = [r["id"] for r in rows(st) if r["event"] == event and r["hash"] and r["id"] not in heads]
    assert len(ids) > offset + 1
    return ids[offset]


@pytest.fixture(scope="module")
def st():
    s = running_stack("qkms-audit", extra_env=FAST)
    try:
        # Six: a sealer pass between two of them may leave a checkpoint on
        # one (sealed_row skips those), and tests need three others.
        for i in range(6):
            register(s, f"AUD-{i}")
        assert s.admin("POST", "/v1/admin/devices/AUD-1/suspend").status_code == 200
        assert s.admin("POST", "/v1/admin/devices/AUD-1/resume").status_code == 200
        wait_sealed(s)
    except BaseException:
        _finish(s)
        raise
    yield s
    _finish(s)


@pytest.fixture
def intact(st):
    """The shared chain verifies before and after the test."""
    wait_sealed(st)
    assert verify(st)["ok"]
    yield st
    wait_sealed(st)
    res = verify(st)
    assert res["ok"], res


# -- sealing and clean verification ----------------------------------------------
def test_sealed_chain_verifies_and_matches_documented_encoding(intact):
    st = intact
    p = st.kmsctl("audit", "verify")
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("audit log OK:")
    wait_sealed(st)  # verify itself appended an audit.verified row
    all_rows = rows(st)
    assert [r["event"] for r in all_rows[:8]] == ["device.registered"] * 6 + [
        "device.suspended", "device.resumed"]
    # Every hash recomputed here from the byte-exact definition.
    prev = "00" * 32
    for r in all_rows:
        if r["hash"] is None:
            continue
        assert r["prev"] == prev, r
        assert r["hash"] == row_hash(prev, r), r
        prev = r["hash"]
    state = st.psql("SELECT head_id, encode(head_hash, 'hex') FROM audit_chain_state").strip()
    assert state.split("|")[1] == prev
    cp = st.psql("SELECT last_audit_id, encode(head_hash, 'hex'), master_version, length(iv),"
                 " length(mac) FROM audit_checkpoints ORDER BY id DESC LIMIT 1").strip().split("|")
    assert cp[1] == prev and cp[2] == "1" and cp[3] == "12" and cp[4] == "16"
    # No secret ever lands in an audit row: no key bytes, no admin token.
    text = json.dumps(all_rows)
    assert st.admin_token not in text and "qkms_" not in text
    res = verify(st)
    assert res["rows_checked"] >= 6 and res["checkpoints_checked"] >= 1
    assert res["first_bad"] is None and res["head"]["hash"]


def test_verify_json_output(intact):
    p = intact.kmsctl("--json", "audit", "verify")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["ok"] is True and out["first_bad"] is None


# -- tampering ---------------------------------------------------------------------
def expect_bad(st, problem, row_id):
    p = st.kmsctl("audit", "verify")
    assert p.returncode == 6, (p.returncode, p.stdout, p.stderr)
    assert f"row {row_id} {problem}" in p.stderr, p.stderr
    p = st.kmsctl("--json", "audit", "verify")
    assert p.returncode == 6
    res = json.loads(p.stdout)
    assert res["ok"] is False
    assert res["first_bad"]["problem"] == problem, res
    assert res["first_bad"]["id"] == row_id, res
    return res


def audit_metric(st, name):
    text = st.admin("GET", "/metrics").text
    m = re.search(rf"^{re.escape(name)} (-?\d+)$", text, re.M)
    assert m, name
    return int(m.group(1))


def test_modified_detail_is_named(intact):
    st = intact
    broken = 'qkms_audit_verifications_total{result="broken"}'
    before = audit_metric(st, broken)
    rid = sealed_row(st, offset=1)
    orig = st.psql(f"SELECT detail::text FROM audit_log WHERE id = {rid}").strip()
    st.psql(f"UPDATE audit_log SET detail = detail || '{{\"keys\": 0}}' WHERE id = {rid}")
    expect_bad(st, "modified", rid)
    # For the alert rules (docs/operations.md): this process's count, and
    # the newest verdict from the database (the maintenance pass).
    assert audit_metric(st, broken) == before + 2  # expect_bad verifies twice
    assert wait_for(lambda: audit_metric(st, "qkms_audit_chain_broken") == 1, timeout=20)
    assert 0 <= audit_metric(st, "qkms_audit_last_verification_seconds") < 60
    st.psql(f"UPDATE audit_log SET detail = $${orig}$$::jsonb WHERE id = {rid}")
    assert verify(st)["ok"] is True
    assert wait_for(lambda: audit_metric(st, "qkms_audit_chain_broken") == 0, timeout=20)


def test_modified_actor_with_recomputed_hash_is_named(intact):
    """The attacker recomputes the row's own hash: the next row stops linking."""
    st = intact
    rid = sealed_row(st, offset=1)
    r = next(x for x in rows(st) if x["id"] == rid)
    forged = dict(r, actor="nobody")
    st.psql(f"UPDATE audit_log SET actor = 'nobody', hash = '\\x{row_hash(r['prev'], forged)}'"
            f" WHERE id = {rid}")
    expect_bad(st, "modified", rid)
    st.psql(f"UPDATE audit_log SET actor = '{r['actor']}', hash = '\\x{r['hash']}' WHERE id = {rid}")


def test_deleted_row_is_named(intact):
    st = intact
    rid = sealed_row(st, offset=1)
    saved = "audit_saved_" + str(rid)
    st.psql(f"CREATE TABLE {saved} AS SELECT * FROM audit_log WHERE id = {rid};"
            f" DELETE FROM audit_log WHERE id = {rid}")
    expect_bad(st, "deleted", rid)
    st.psql(f"INSERT INTO audit_log SELECT * FROM {saved}; DROP TABLE {saved}")


def test_swapped_ids_are_reordered(intact):
    st = intact
    a = sealed_row(st, offset=0)
    b = sealed_row(st, offset=2)
    swap = (f"UPDATE audit_log SET id = -1 WHERE id = {a};"
            f" UPDATE audit_log SET id = {a} WHERE id = {b};"
            f" UPDATE audit_log SET id = {b} WHERE id = -1")
    st.psql(swap)
    expect_bad(st, "reordered", a)
    st.psql(swap)


def test_swapped_contents_are_modified(intact):
    st = intact
    a = sealed_row(st, offset=0)
    b = sealed_row(st, offset=2)
    swap = ("UPDATE audit_log x SET device_id = y.device_id, detail = y.detail"
            f" FROM audit_log y WHERE (x.id, y.id) IN (({a}, {b}), ({b}, {a}))")
    st.psql(swap)
    expect_bad(st, "modified", a)
    st.psql(swap)


def test_forged_unsealed_row_is_inserted(intact):
    st = intact
    rid = sealed_row(st, offset=1)
    saved = "audit_saved_" + str(rid)
    st.psql(f"CREATE TABLE {saved} AS SELECT * FROM audit_log WHERE id = {rid};"
            f" UPDATE audit_log SET hash = NULL WHERE id = {rid}")
    expect_bad(st, "modified", rid)  # a sealed row that lost its hash
    st.psql(f"DELETE FROM audit_log WHERE id = {rid};"
            f" INSERT INTO audit_log (id, at, actor, event, detail)"
            f"  VALUES ({rid}, now(), 'admin', 'device.revoked', '{{}}')")
    res = expect_bad(st, "inserted", rid)
    assert "not sealed" in res["first_bad"]["detail"]
    st.psql(f"DELETE FROM audit_log WHERE id = {rid};"
            f" INSERT INTO audit_log SELECT * FROM {saved}; DROP TABLE {saved}")


def test_checkpoint_head_or_mac_tampering(intact):
    st = intact
    cp_id, head, mac = st.psql("SELECT id, encode(head_hash, 'hex'), encode(mac, 'hex')"
                               " FROM audit_checkpoints ORDER BY id LIMIT 1").strip().split("|")
    last = int(st.psql(f"SELECT last_audit_id FROM audit_checkpoints WHERE id = {cp_id}"))
    bad_head = ("ff" if head[:2] != "ff" else "00") + head[2:]
    st.psql(f"UPDATE audit_checkpoints SET head_hash = '\\x{bad_head}' WHERE id = {cp_id}")
    res = expect_bad(st, "checkpoint_mac", last)
    assert res["first_bad"]["checkpoint"] == int(cp_id)
    st.psql(f"UPDATE audit_checkpoints SET head_hash = '\\x{head}' WHERE id = {cp_id}")
    bad_mac = mac[:-2] + ("00" if mac[-2:] != "00" else "01")
    st.psql(f"UPDATE audit_checkpoints SET mac = '\\x{bad_mac}' WHERE id = {cp_id}")
    expect_bad(st, "checkpoint_mac", last)
    st.psql(f"UPDATE audit_checkpoints SET mac = '\\x{mac}' WHERE id = {cp_id}")


def test_rewritten_chain_fails_against_token_checkpoints(intact):
    """Without the token an attacker can recompute every hash, but not the
    checkpoints' MACs: the chain no longer matches them."""
    st = intact
    all_rows = [r for r in rows(st) if r["hash"]]
    target = all_rows[1]["id"]
    updates, prev = [], "00" * 32
    for r in all_rows:
        if r["id"] == target:
            r = dict(r, detail='{"forged": true}')
        h = row_hash(prev, r)
        updates.append((r["id"], prev, h))
        prev = h
    # The forger also rewrites the stored hashed value (hashed_detail), or
    # the row would already fail as modified.
    sql = ["UPDATE audit_log SET detail = '{\"forged\": true}', hashed_detail = '{\"forged\": true}'"
           " WHERE id = %d" % target]
    sql += ["UPDATE audit_log SET prev_hash = '\\x%s', hash = '\\x%s' WHERE id = %d" % (p, h, i)
            for i, p, h in updates]
    saved = "audit_saved_chain"
    st.psql(f"CREATE TABLE {saved} AS SELECT * FROM audit_log; " + "; ".join(sql))
    res = verify(st)
    assert not res["ok"]
    assert res["first_bad"]["problem"] == "checkpoint_head", res
    st.psql(f"DELETE FROM audit_log a USING {saved} s WHERE a.id = s.id;"
            f" INSERT INTO audit_log SELECT * FROM {saved}; DROP TABLE {saved}")


def test_truncated_tail_is_caught_by_checkpoint(intact):
    st = intact
    register(st, "AUD-TAIL")
    wait_sealed(st)
    head = int(st.psql("SELECT head_id FROM audit_chain_state"))
    saved = "audit_saved_tail"
    st.psql(f"CREATE TABLE {saved} AS SELECT * FROM audit_log WHERE id = {head};"
            f" DELETE FROM audit_log WHERE id = {head}")
    res = verify(st)
    assert not res["ok"]
    assert res["first_bad"]["problem"] == "deleted" and res["first_bad"]["id"] == head, res
    st.psql(f"INSERT INTO audit_log SELECT * FROM {saved}; DROP TABLE {saved}")


# -- list, export, roles ----------------------------------------------------------------
def test_list_filters(intact):
    st = intact
    r = st.admin("GET", "/v1/admin/audit", params={"device": "AUD-1"})
    assert r.status_code == 200, r.text
    evs = r.json()["events"]
    assert [e["event"] for e in evs] == ["device.registered", "device.suspended", "device.resumed"]
    assert all(e["device_id"] == "AUD-1" and e["sealed"] for e in evs)
    assert evs[0]["at"].endswith("Z") and len(evs[0]["at"]) == 27
    assert isinstance(evs[0]["detail"], dict) and evs[0]["actor"] == "bootstrap"

    r = st.admin("GET", "/v1/admin/audit", params={"type": "device.suspended"})
    assert [e["device_id"] for e in r.json()["events"]] == ["AUD-1"]
    r = st.admin("GET", "/v1/admin/audit", params={"type": "device.*"})
    assert {e["event"] for e in r.json()["events"]} >= {"device.registered", "device.suspended"}
    assert all(e["event"].startswith("device.") for e in r.json()["events"])
    # '_' is not a wildcard in a prefix.
    r = st.admin("GET", "/v1/admin/audit", params={"type": "device_*"})
    assert all(e["event"].startswith("device_") for e in r.json()["events"])

    r = st.admin("GET", "/v1/admin/audit", params={"since": "2999-01-01T00:00:00Z"})
    assert r.json() == {"events": [], "next": None}
    r = st.admin("GET", "/v1/admin/audit", params={"since": "2000-01-01"})
    assert len(r.json()["events"]) >= 6

    r = st.admin("GET", "/v1/admin/audit", params={"limit": 2})
    page = r.json()
    assert len(page["events"]) == 2 and page["next"] == page["events"][1]["id"]
    r = st.admin("GET", "/v1/admin/audit", params={"limit": 2, "after": page["next"]})
    assert r.json()["events"][0]["id"] > page["next"]

    for bad in ({"limit": 0}, {"limit": 1001}, {"since": "yesterday"}, {"type": "Device!"},
                {"device": "a/b"}, {"after": "-1"}, {"since": "2026-02-30"}):
        r = st.admin("GET", "/v1/admin/audit", params=bad)
        assert r.status_code == 400, (bad, r.text)
        assert r.json()["error"]["code"] == "invalid_query"

    p = st.kmsctl("audit", "list", "--device", "AUD-1", "--type", "device.*")
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0].split()[:4] == ["ID", "AT", "ACTOR", "EVENT"]
    assert len(lines) == 4 and "device.suspended" in p.stdout
    p = st.kmsctl("--json", "audit", "list", "--since", "1h", "--limit", "3")
    assert p.returncode == 0, p.stderr
    assert len(json.loads(p.stdout)["events"]) == 3
    p = st.kmsctl("audit", "list", "--limit", "1")
    assert p.returncode == 0 and "--after" in p.stderr
    assert st.kmsctl("audit", "list", "--since", "soon").returncode == 2
    assert st.kmsctl("audit", "list", "--limit", "0").returncode == 2


def test_export_json_lines(intact, tmp_path):
    st = intact
    out = tmp_path / "audit.jsonl"
    p = st.kmsctl("audit", "export", "--out", str(out))
    assert p.returncode == 0, p.stderr
    assert oct(os.stat(out).st_mode & 0o777) == "0o600"
    lines = out.read_text().splitlines()
    recs = [json.loads(line) for line in lines]
    db_ids = [r["id"] for r in rows(st)]
    assert [r["id"] for r in recs] == db_ids[:len(recs)] and len(recs) >= len(db_ids) - 1
    for r in recs:
        assert set(r) >= {"id", "at", "actor", "event", "device_id", "detail", "prev_hash",
                          "hash", "sealed", "sealed_at"}
    # A SIEM can check the links without kmsd.
    sealed = [r for r in recs if r["hash"]]
    for a, b in zip(sealed, sealed[1:]):
        assert b["prev_hash"] == a["hash"]
    # Never overwrites; --since narrows; - writes to stdout.
    p = st.kmsctl("audit", "export", "--out", str(out))
    assert p.returncode == 2 and "exists" in p.stderr
    p = st.kmsctl("audit", "export", "--since", "2999-01-01", "--out", "-")
    assert p.returncode == 0 and p.stdout == ""
    assert st.kmsctl("audit", "export").returncode == 2
    # The API pages.
    r = st.admin("GET", "/v1/admin/audit/export", params={"limit": 3})
    body = r.json()
    assert len(body["rows"]) == 3 and body["next"] == body["rows"][-1]["id"]


def test_roles(intact):
    st = intact
    op = new_token(st, "audit-op", "operator")
    aud = new_token(st, "audit-aud", "auditor")
    assert st.api("GET", "/v1/admin/audit", token=op).status_code == 200
    r = st.api("POST", "/v1/admin/audit/verify", token=op)
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
    assert st.api("GET", "/v1/admin/audit/export", token=op).status_code == 403
    assert st.api("GET", "/v1/admin/audit", token=aud).status_code == 200
    assert st.api("GET", "/v1/admin/audit/export", token=aud).status_code == 200
    assert verify(st, token=aud)["ok"]
    assert st.kmsctl("audit", "verify", token=op).returncode == 4
    assert st.kmsctl("audit", "verify", token=aud).returncode == 0
    assert st.api("POST", "/v1/admin/audit/verify").status_code == 401
    # Who verified is itself recorded.
    evs = st.admin("GET", "/v1/admin/audit", params={"type": "audit.verified"}).json()["events"]
    assert any(e["actor"] == "audit-aud" and e["detail"]["ok"] for e in evs)


# -- gaps and late rows ---------------------------------------------------------------------
def test_gap_and_late_commit(intact):
    """A transaction holding an audit id blocks sealing only for a few
    seconds; when it commits later its row is sealed at the head."""
    st = intact
    before = int(st.psql("SELECT count(*) FROM audit_gaps"))
    slow = subprocess.Popen(
        ["psql", "-X", "-q", "-At", "-d", st.pg_dsn, "-c",
         "BEGIN; INSERT INTO audit_log (actor, event, detail) VALUES ('test', 'test.late', '{}');"
         " SELECT pg_sleep(12); COMMIT;"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(0.5)
        # A rolled-back insert leaves a gap for good.
        st.psql("BEGIN; INSERT INTO audit_log (actor, event) VALUES ('test', 'test.rolled_back');"
                " ROLLBACK;")
        register(st, "AUD-GAP-1")
        register(st, "AUD-GAP-2")
        # Sealing waits for the missing ids, then links over them (grace 5 s).
        time.sleep(2)
        assert int(st.psql("SELECT count(*) FROM audit_log WHERE hash IS NULL"
                           " AND device_id = 'AUD-GAP-2'")) == 1
        wait_sealed(st, timeout=20)
        assert slow.poll() is None, "the slow transaction should still be open"
        assert int(st.psql("SELECT count(*) FROM audit_gaps")) > before
        assert verify(st)["ok"]
    finally:
        slow.wait(timeout=30)
    assert slow.returncode == 0, slow.stderr.read()
    wait_sealed(st)
    late = st.psql("SELECT l.id, l.chain_prev FROM audit_late l JOIN audit_log a ON a.id = l.id"
                   " WHERE a.event = 'test.late'").strip()
    assert late, st.psql("SELECT * FROM audit_gaps")
    res = verify(st)
    assert res["ok"], res
    r = st.admin("GET", "/v1/admin/audit", params={"type": "test.late"}).json()["events"]
    assert len(r) == 1 and r[0]["sealed"]
    assert int(st.psql("SELECT count(*) FROM audit_log WHERE event = 'test.rolled_back'")) == 0


def test_concurrent_writers_with_rollbacks(intact):
    """Many concurrent transactions, one in ten rolled back: every gap is
    skipped within a few seconds and the chain verifies."""
    st = intact
    gaps_before = int(st.psql("SELECT count(*) FROM audit_gaps"))
    procs = []
    for w in range(8):
        script = "".join(
            "BEGIN; INSERT INTO audit_log (actor, event, detail) VALUES"
            f" ('load', 'load.event', '{{\"w\": {w}, \"i\": {i}}}'); "
            + ("ROLLBACK;\n" if i % 10 == 3 else "COMMIT;\n")
            for i in range(300))
        p = subprocess.Popen(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", st.pg_dsn],
                             stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
        procs.append((p, script))
    for p, script in procs:
        p.stdin.write(script)
        p.stdin.close()
    for i in range(10):  # kmsd's own inserts meanwhile
        register(st, f"AUD-LOAD-{i}")
    for p, _ in procs:
        assert p.wait(timeout=120) == 0, p.stderr.read()
    t0 = time.time()
    wait_sealed(st, timeout=60)
    assert time.time() - t0 < 30
    assert int(st.psql("SELECT count(*) FROM audit_log WHERE event = 'load.event'")) == 8 * 270
    assert int(st.psql("SELECT count(*) FROM audit_gaps")) > gaps_before
    res = verify(st)
    assert res["ok"], res


# -- two instances -----------------------------------------------------------------------------
def test_two_instances_seal_one_chain(fresh_stack):
    st = fresh_stack
    st.start(extra_env=FAST)
    port2 = free_port()
    env = dict(st.env, QKMS_LISTEN_PORT=str(port2), **FAST)
    log2 = open(os.path.join(st.state, "kmsd2.log"), "ab")
    second = subprocess.Popen([KMSD, "-c", st.conf], env=env, stdout=log2, stderr=log2)
    try:
        import requests

        def alive():
            assert second.poll() is None

        assert wait_readyz(f"http://127.0.0.1:{port2}", 60, alive), "second kmsd not ready"
        for i in range(20):
            url = st.url if i % 2 else f"http://127.0.0.1:{port2}"
            r = requests.post(url + "/v1/admin/devices", timeout=30,
                              headers={"Authorization": f"Bearer {st.admin_token}"},
                              json={"device_id": f"TWO-{i}", "type": "vehicle"})
            assert r.status_code == 201, r.text
        wait_sealed(st)
        res = verify(st)
        assert res["ok"] and res["rows_checked"] >= 20, res
    finally:
        second.send_signal(signal.SIGTERM)
        rc = second.wait(timeout=30)
        log2.close()
    assert rc == 0, open(os.path.join(st.state, "kmsd2.log")).read()[-4000:]


# -- rows deleted before they were sealed -------------------------------------------------------
SEALER_LOCK = 7164803902  # kmsd/store/queries.h QKMS_MASTER_LOCK_KEY (QT_AUDIT_SEAL_TRY_LOCK)


def test_row_deleted_before_sealing_is_reported_as_gap(fresh_stack):
    """Someone with database write access deletes a row in the window before
    the sealer chains it (here the window is held open by taking the
    sealer's advisory lock). The chain then links over the id as a gap:
    verify must name it (API, kmsctl human and --json), and --strict fails."""
    st = fresh_stack
    st.start(extra_env=FAST)
    register(st, "GAP-BEFORE")
    wait_sealed(st)
    p = st.kmsctl("audit", "verify", "--strict")
    assert p.returncode == 0 and "gap" not in p.stdout, (p.stdout, p.stderr)
    res = verify(st)
    assert res["ok"] and res["gap_count"] == 0 and res["gaps"] == [], res

    holder = subprocess.Popen(
        ["psql", "-X", "-q", "-At", "-d", st.pg_dsn, "-c",
         f"BEGIN; SELECT pg_advisory_xact_lock({SEALER_LOCK}); SELECT pg_sleep(4); COMMIT;"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(0.5)
        register(st, "GAP-VICTIM")
        register(st, "GAP-AFTER")
        victim = int(st.psql("SELECT id FROM audit_log WHERE device_id = 'GAP-VICTIM'"))
        assert st.psql(f"SELECT hash IS NULL FROM audit_log WHERE id = {victim}").strip() == "t"
        st.psql(f"DELETE FROM audit_log WHERE id = {victim}")
    finally:
        assert holder.wait(timeout=30) == 0, holder.stderr.read()
    wait_sealed(st)
    assert int(st.psql(f"SELECT count(*) FROM audit_gaps WHERE {victim} BETWEEN lo AND hi")) == 1

    res = verify(st)
    assert res["ok"] is True, res  # a gap is not tampering the chain can prove ...
    assert res["gap_count"] == 1 and res["gap_ids"] == 1, res  # ... but it is reported
    (gap,) = res["gaps"]
    assert gap["lo"] == gap["hi"] == victim and gap["missing"] == 1, gap
    assert gap["skipped_at"].endswith("Z"), gap

    p = st.kmsctl("audit", "verify")
    assert p.returncode == 0, p.stderr
    assert "1 gap: 1 id never sealed" in p.stdout, p.stdout
    assert f"  id {victim}, skipped at " in p.stdout, p.stdout
    p = st.kmsctl("--json", "audit", "verify")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["gaps"][0]["lo"] == victim and out["gap_count"] == 1, out
    p = st.kmsctl("audit", "verify", "--strict")
    assert p.returncode == 6, (p.returncode, p.stdout, p.stderr)
    assert "--strict fails on gaps" in p.stderr, p.stderr
    p = st.kmsctl("--json", "audit", "verify", "--strict")
    assert p.returncode == 6 and json.loads(p.stdout)["gap_count"] == 1, (p.stdout, p.stderr)
    # Each verification records what it found, gaps included.
    wait_sealed(st)
    evs = st.admin("GET", "/v1/admin/audit", params={"type": "audit.verified"}).json()["events"]
    assert evs[-1]["detail"]["gaps"] == 1, evs[-1]
    assert "audit log has gaps" in st.logs()
    # Removing the gap record as well does not hide the deletion.
    st.psql(f"DELETE FROM audit_gaps WHERE {victim} BETWEEN lo AND hi")
    res = expect_bad(st, "deleted", victim)
    assert "no gap is recorded" in res["first_bad"]["detail"], res


# -- hashes over stored values, not over PostgreSQL's rendering ---------------------------------
def test_verification_does_not_depend_on_rendering(fresh_stack):
    """The sealer stores the exact time and detail text it hashed; verify
    hashes those and compares them with the row by value. So a detail that
    PostgreSQL renders differently (here: numeric 1.50 rewritten as the equal
    1.5, as a dump/restore or an upgrade may do) and session settings of
    the verifying connection (TimeZone, DateStyle) do not change the result,
    while a change of value is still found."""
    st = fresh_stack
    st.start(extra_env=FAST)
    register(st, "RENDER-1")
    st.psql("INSERT INTO audit_log (actor, event, detail) VALUES"
            " ('test', 'test.render', '{\"amount\": 1.50, \"n\": 2}')")
    register(st, "RENDER-2")
    wait_sealed(st)
    rid = int(st.psql("SELECT id FROM audit_log WHERE event = 'test.render'"))
    assert st.psql("SELECT bool_and(hashed_detail = detail::text AND hashed_at_us ="
                   " (extract(epoch FROM at) * 1000000)::bigint) FROM audit_log"
                   " WHERE hash IS NOT NULL").strip() == "t"
    # The exported hashed values let anyone recompute every hash.
    exported = st.admin("GET", "/v1/admin/audit/export").json()["rows"]
    prev = "00" * 32
    for r in exported:
        if not r["sealed"]:
            continue
        mine = {"id": r["id"], "at_us": r["hashed_at_us"], "actor": r["actor"],
                "event": r["event"], "device_id": r["device_id"], "detail": r["hashed_detail"]}
        assert r["prev_hash"] == prev and r["hash"] == row_hash(prev, mine), r
        prev = r["hash"]

    # Rows sealed before migration 007 have no stored values: they verify
    # over the current rendering, and again after the migration's backfill.
    st.psql("UPDATE audit_log SET hashed_at_us = NULL, hashed_detail = NULL")
    res = verify(st)
    assert res["ok"], res
    backfill = open(os.path.join(os.path.dirname(__file__), "..", "..", "schema",
                                 "007_hardening_audit.sql")).read()
    backfill = backfill[backfill.index("UPDATE audit_log"):]
    st.psql(backfill[:backfill.index(";") + 1])
    assert st.psql("SELECT count(*) FROM audit_log WHERE hash IS NOT NULL"
                   " AND hashed_detail IS NULL").strip() == "0"
    wait_sealed(st)
    assert verify(st)["ok"]
    # Same value, another rendering.
    st.psql(f"UPDATE audit_log SET detail = '{{\"amount\": 1.5, \"n\": 2}}' WHERE id = {rid}")
    assert st.psql(f"SELECT detail::text FROM audit_log WHERE id = {rid}").strip() == \
        '{"n": 2, "amount": 1.5}'
    res = verify(st)
    assert res["ok"], res
    # Other session defaults for kmsd's role: verification is unchanged.
    st.psql("ALTER ROLE qkms SET TimeZone = 'Pacific/Chatham';"
            " ALTER ROLE qkms SET DateStyle = 'SQL, DMY'; ALTER ROLE qkms SET IntervalStyle = 'iso_8601'")
    try:
        st.restart(extra_env=FAST)
        res = verify(st)
        assert res["ok"], res
        p = st.kmsctl("audit", "verify")
        assert p.returncode == 0, p.stderr
        # A different value is still a modification.
        st.psql(f"UPDATE audit_log SET detail = '{{\"amount\": 1.51, \"n\": 2}}' WHERE id = {rid}")
        expect_bad(st, "modified", rid)
        st.psql(f"UPDATE audit_log SET detail = '{{\"amount\": 1.5, \"n\": 2}}' WHERE id = {rid}")
        # So is a changed time, and a tampered stored value.
        st.psql(f"UPDATE audit_log SET at = at + interval '1 second' WHERE id = {rid}")
        expect_bad(st, "modified", rid)
        st.psql(f"UPDATE audit_log SET at = at - interval '1 second' WHERE id = {rid}")
        st.psql(f"UPDATE audit_log SET hashed_detail = 'not json' WHERE id = {rid}")
        expect_bad(st, "modified", rid)
        st.psql(f"UPDATE audit_log SET hashed_detail = '{{\"n\": 2, \"amount\": 1.50}}'"
                f" WHERE id = {rid}")
        assert verify(st)["ok"]
    finally:
        st.psql("ALTER ROLE qkms RESET ALL")


def test_verify_progress_while_it_runs(fresh_stack):
    """A long verification's progress (issue 21): GET
    /v1/admin/audit/verify/{request_id} answers while the POST sent with
    that X-Request-Id runs and 404 once it is done; kmsctl audit verify
    draws it on a terminal's stderr, never in a pipe or with --json."""
    import threading
    import uuid

    from conftest import KMSCTL
    from helpers import run_on_tty

    st = fresh_stack
    st.start(extra_env=FAST)
    st.psql("INSERT INTO audit_log (actor, event, detail) SELECT 'test', 'test.bulk',"
            " jsonb_build_object('n', g) FROM generate_series(1, 200000) g")
    assert wait_for(lambda: st.psql("SELECT count(*) FROM audit_log WHERE hash IS NULL")
                    .strip() == "0", timeout=300)
    rid = "progress-" + uuid.uuid4().hex[:8]
    seen, other, done = [], [], threading.Event()

    def poll():  # 20 a second: under the admin rate limit (50/s)
        while not done.is_set():
            r = st.admin("GET", f"/v1/admin/audit/verify/{rid}")
            if r.status_code == 200:
                seen.append(r.json())
            else:
                other.append((r.status_code, r.json()["error"]["code"]))
            time.sleep(0.05)

    th = threading.Thread(target=poll)
    th.start()
    try:
        r = st.admin("POST", "/v1/admin/audit/verify", json={}, headers={"X-Request-Id": rid})
    finally:
        done.set()
        th.join()
    assert r.status_code == 200 and r.json()["ok"] is True, r.text
    # Before it started and after it ended: 404, nothing else.
    assert set(other) <= {(404, "not_found")}, other
    assert seen, "no progress answered while the verification ran"
    assert {s["request_id"] for s in seen} == {rid}
    rows = [s["rows_checked"] for s in seen]
    assert rows == sorted(rows) and rows[-1] <= r.json()["rows_checked"], rows
    fractions = [s["fraction"] for s in seen]
    assert fractions == sorted(fractions) and 0 <= fractions[0] and fractions[-1] <= 1
    assert any(0 < f < 1 for f in fractions), fractions  # seen mid-walk
    assert st.admin("GET", f"/v1/admin/audit/verify/{rid}").status_code == 404
    r = st.admin("GET", "/v1/admin/audit/verify/" + "x" * 65)
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request", r.text

    env = dict(st.env, KMS_ADDR=st.url, KMS_TOKEN=st.admin_token)
    rc, out, tty = run_on_tty([KMSCTL, "audit", "verify"], env)
    assert rc == 0 and out.startswith("audit log OK: "), (out, tty)
    assert re.search(r"\r\x1b\[Kverify: \d+ rows, \d+ rows/s, \d+%", tty), repr(tty)
    assert not re.search(r"verify: \d+ rows[^\r]*$", tty), repr(tty)  # the line was cleared
    rc, out, tty = run_on_tty([KMSCTL, "--json", "audit", "verify"], env)
    assert rc == 0 and json.loads(out)["ok"] is True and "verify:" not in tty, repr(tty)
    p = st.kmsctl("audit", "verify", token=st.admin_token)
    assert p.returncode == 0 and "\x1b[K" not in p.stderr and "verify:" not in p.stderr
