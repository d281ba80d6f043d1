"""Master key rotation under concurrent session-key load: zero failed
requests, every key readable afterwards, the old version destroyed in the
token only once nothing references it."""
import json
import os
import re
import subprocess
import threading
import time
import uuid

import pytest
import requests

from conftest import KMSCTL, KMSD, SOFTHSM, free_port, wait_readyz
from helpers import ask_key, make_device, run_on_tty


def token_labels(st):
    env = dict(os.environ, SOFTHSM2_CONF=st.env["SOFTHSM2_CONF"])
    out = subprocess.run(["pkcs11-tool", "--module", SOFTHSM, "--token-label", "qkms", "--login",
                          "--pin", st.token_pin, "--list-objects", "--type", "secrkey"],
                         env=env, capture_output=True, text=True, check=True).stdout
    return sorted(re.findall(r"label:\s+(\S+)", out))


def ask(st, dev, sid, peer):
    req, r = ask_key(st, dev, sid, peer)
    return r.status_code, (dev.open_key_response(req, r.json()) if r.status_code == 200 else r.text)


def test_rotation_under_load(fresh_stack):
    st = fresh_stack
    st.start(extra_env={"QKMS_MAINTENANCE_INTERVAL": "1", "QKMS_RATE_LIMIT_DEVICE": "0",
                        "QKMS_RATE_LIMIT_CLIENT": "0"})
    assert st.admin("POST", "/v1/admin/policies",
                    json={"name": "all", "type_a": "*", "type_b": "*"}).status_code == 201
    pairs = [(make_device(st, "vehicle", keys=2), make_device(st, "encryptor", keys=2))
             for _ in range(4)]
    # Sessions that exist before the rotation and must survive it.
    before = {}
    for i, (veh, enc) in enumerate(pairs):
        sid = f"B-{i}-{uuid.uuid4().hex[:8]}"
        st_, k = ask(st, veh, sid, enc)
        assert st_ == 200
        before[sid] = (veh, enc, k.key)
    # 100 more devices so the rewrap takes a few batches' worth of work.
    rows = [{"device_id": f"R-{uuid.uuid4().hex[:10]}", "type": "meter"} for _ in range(100)]
    assert st.admin("POST", "/v1/admin/devices/import", json={"devices": rows}).json()["failed"] == 0

    failures, done = [], []
    stop = threading.Event()

    def load(i):
        veh, enc = pairs[i % len(pairs)]
        n = 0
        while not stop.is_set():
            sid = f"L-{i}-{n}-{uuid.uuid4().hex[:6]}"
            n += 1
            a, ka = ask(st, veh, sid, enc)
            b, kb = ask(st, enc, sid, veh)
            if a != 200 or b != 200 or ka.key != kb.key:
                failures.append((sid, a, b))
            else:
                done.append(sid)

    threads = [threading.Thread(target=load, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    time.sleep(1)
    p = st.kmsctl("master", "rotate", token=st.admin_token)
    assert p.returncode == 0, p.stderr
    deadline = time.time() + 60
    status = None
    while time.time() < deadline:
        status = st.admin("GET", "/v1/admin/master").json()
        states = {v["version"]: v["state"] for v in status["versions"]}
        if status["active"] == 2 and states.get(1) == "destroyed":
            break
        time.sleep(0.5)
    time.sleep(1)
    stop.set()
    for t in threads:
        t.join(timeout=60)

    assert failures == [], (failures[:5], [l for l in st.logs().splitlines()
                                           if '"level":"error"' in l or "ckr" in l][:8])
    assert len(done) > 20
    assert status["active"] == 2 and {v["version"]: v["state"] for v in status["versions"]} == {
        1: "destroyed", 2: "active"}, status
    assert status["pending_rewrap"] == 0
    assert st.psql("SELECT count(*) FROM device_keys WHERE master_version = 1").strip() == "0"
    assert token_labels(st) == ["qkms-master-2"]
    # Every device key is readable (check values need an unwrap) ...
    for did in [r["device_id"] for r in rows[:10]]:
        keys = st.admin("GET", f"/v1/admin/devices/{did}/keys?kcv=true").json()["keys"]
        assert all(len(k["kcv"]) == 10 for k in keys)
    # ... the sessions from before still deliver the same key ...
    for sid, (veh, enc, key) in before.items():
        st_, k = ask(st, enc, sid, veh)
        assert st_ == 200 and k.key == key
    # ... and a restart finds only the new version.
    st.restart()
    st_, k = ask(st, pairs[0][0], f"A-{uuid.uuid4().hex}", pairs[0][1])
    assert st_ == 200
    m = st.kmsctl("master", "status", token=st.admin_token)
    assert m.returncode == 0 and re.search(r"^2\s+qkms-master-2\s+active", m.stdout, re.M), m.stdout
    audit = st.psql("SELECT event FROM audit_log WHERE event LIKE 'master.%' ORDER BY id").split()
    assert audit == ["master.rotated", "master.destroyed"]


def test_rotation_requires_admin(stack):
    op = stack.admin("POST", "/v1/admin/tokens", json={"name": "op-" + uuid.uuid4().hex[:6],
                                                       "role": "operator"}).json()["token"]
    assert stack.api("POST", "/v1/admin/master/rotate", token=op).status_code == 403
    assert stack.api("GET", "/v1/admin/master", token=op).status_code == 200


class LaggingKmsd:
    """Another kmsd over the same PostgreSQL and token whose maintenance
    thread (which refreshes the active master version every
    session_reap_interval and runs the heavier pass every
    maintenance_interval) runs once at start and then not for an hour: it
    keeps wrapping under the version it saw."""

    def __init__(self, st, **env):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        e = dict(st.env, QKMS_LISTEN_PORT=str(self.port), QKMS_MAINTENANCE_INTERVAL="3600",
                 QKMS_SESSION_REAP_INTERVAL="60", QKMS_DEVICE_KEY_CACHE_TTL="3600", **env)
        self.log_path = os.path.join(st.state, f"kmsd-{self.port}.log")
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([KMSD, "-c", st.conf], env=e, stdout=self.log, stderr=self.log)
        if not wait_readyz(self.url, 60):
            raise RuntimeError("lagging kmsd not ready")

    def logs(self):
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def stop(self):
        self.proc.terminate()
        rc = self.proc.wait(timeout=30)
        self.log.close()
        return rc


def versions_in_use(st):
    """Master versions named by stored keys, and the destroyed versions."""
    sql = ("SELECT master_version FROM device_keys WHERE master_version IS NOT NULL "
           "UNION SELECT master_version FROM sessions")
    if st.psql("SELECT to_regclass('session_hash_key') IS NOT NULL").strip() == "t":
        sql += " UNION SELECT master_version FROM session_hash_key"
    used = set(st.psql(sql).split())
    gone = set(st.psql("SELECT version FROM master_keys WHERE state = 'destroyed'").split())
    return used, gone


def test_lagging_instance_never_wraps_under_a_retired_or_destroyed_version(fresh_stack):
    """Two kmsd over one database, rotation and destruction on the first while
    the second still believes the old version active: the database refuses
    the second's wraps, it refreshes and retries, every request succeeds, and
    no row is ever wrapped under a destroyed version."""
    st = fresh_stack
    st.start(extra_env={"QKMS_MAINTENANCE_INTERVAL": "1", "QKMS_DEVICE_KEY_CACHE_TTL": "1"})
    assert st.admin("POST", "/v1/admin/policies",
                    json={"name": "all", "type_a": "*", "type_b": "*"}).status_code == 201
    busy = LaggingKmsd(st)   # under load throughout the rotation
    idle = LaggingKmsd(st)   # silent until the old version is destroyed
    try:
        veh, enc = make_device(st, "vehicle"), make_device(st, "encryptor")
        # Both lagging instances cache the device keys (wrapped under v1).
        for inst in (busy, idle):
            assert ask(inst, veh, f"W-{uuid.uuid4().hex}", enc)[0] == 200
            assert ask(inst, enc, f"W-{uuid.uuid4().hex}", veh)[0] == 200

        failures, done, seen_gone_in_use = [], [], []
        stop = threading.Event()

        def load(i):
            n = 0
            while not stop.is_set():
                sid = f"L-{i}-{n}-{uuid.uuid4().hex[:6]}"
                n += 1
                a, ka = ask(busy, veh, sid, enc)
                b, kb = ask(st, enc, sid, veh)
                if a != 200 or b != 200 or ka.key != kb.key:
                    failures.append((sid, a, b, ka if a != 200 else "", kb if b != 200 else ""))
                else:
                    done.append(sid)

        def watch():
            while not stop.is_set():
                used, gone = versions_in_use(st)
                if used & gone:
                    seen_gone_in_use.append((used, gone))
                time.sleep(0.2)

        threads = [threading.Thread(target=load, args=(i,)) for i in range(3)]
        threads.append(threading.Thread(target=watch))
        for t in threads:
            t.start()
        time.sleep(1)
        # Forced: with the lagging instances registered, a rotation would be
        # staged until their next step (a minute); this test is about an
        # instance that wraps under a version no longer active.
        assert st.admin("POST", "/v1/admin/master/rotate", json={"force": True}).status_code == 200
        deadline = time.time() + 60
        states = {}
        while time.time() < deadline:
            states = {v["version"]: v["state"]
                      for v in st.admin("GET", "/v1/admin/master").json()["versions"]}
            if states.get(1) == "destroyed":
                break
            time.sleep(0.5)
        time.sleep(1)
        stop.set()
        for t in threads:
            t.join(timeout=60)
        assert states == {1: "destroyed", 2: "active"}, (states, failures[:3])
        assert failures == [], (failures[:3], [l for l in busy.logs().splitlines()
                                               if '"level":"error"' in l][:6])
        assert len(done) > 10
        assert seen_gone_in_use == [], seen_gone_in_use[:3]
        assert "active master key version switched" in busy.logs()

        # The silent instance still holds v1 as active (and cached rows
        # wrapped under it): its first requests succeed after a refresh.
        sid = f"A-{uuid.uuid4().hex}"
        a, ka = ask(idle, veh, sid, enc)
        assert a == 200, (a, ka, [l for l in idle.logs().splitlines()
                                  if '"level":"error"' in l or "master" in l][-6:])
        b, kb = ask(idle, enc, sid, veh)
        assert b == 200 and kb.key == ka.key
        assert st.psql(f"SELECT master_version FROM sessions WHERE session_id = '{sid}'").strip() == "2"
        used, gone = versions_in_use(st)
        assert used == {"2"} and gone == {"1"}
        assert token_labels(st) == ["qkms-master-2"]
    finally:
        rcs = (busy.stop(), idle.stop())
    assert rcs == (0, 0)


def test_database_refuses_rows_under_a_version_not_active(fresh_stack):
    """Whatever the writer: a stored key may only name the active version."""
    st = fresh_stack
    st.start(extra_env={"QKMS_MAINTENANCE_INTERVAL": "1"})
    veh = make_device(st, "vehicle")
    assert st.admin("POST", "/v1/admin/master/rotate").status_code == 200
    deadline = time.time() + 30
    while time.time() < deadline and versions_in_use(st)[0] != {"2"}:
        time.sleep(0.3)
    assert versions_in_use(st)[0] == {"2"}
    for sql in (
        f"UPDATE device_keys k SET master_version = 1 FROM devices d WHERE d.id = k.device_pk "
        f"AND d.device_id = '{veh.device_id}'",
        "UPDATE session_hash_key SET master_version = 1 WHERE master_version = 2",
        "UPDATE session_hash_key SET master_version = 3",
    ):
        with pytest.raises(AssertionError, match="not active|is unknown"):
            st.psql(sql)


def test_lagging_instance_is_refused_by_the_database_and_retries(fresh_stack):
    """Right after a rotation (old version retired, still in the token), an
    instance that has not refreshed wraps under the old version: the
    database refuses every such row, the instance refreshes and retries,
    and the rows name the new version. No maintenance pass runs meanwhile
    on either instance, so nothing else could have switched or rewrapped."""
    st = fresh_stack
    st.start(extra_env={"QKMS_MAINTENANCE_INTERVAL": "3600", "QKMS_SESSION_REAP_INTERVAL": "60"})
    assert st.admin("POST", "/v1/admin/policies",
                    json={"name": "all", "type_a": "*", "type_b": "*"}).status_code == 201
    lag = LaggingKmsd(st)
    try:
        veh, enc = make_device(st, "vehicle"), make_device(st, "encryptor")
        # Forced, as above: not staged until the lagging instance's next step.
        assert st.admin("POST", "/v1/admin/master/rotate", json={"force": True}).status_code == 200
        assert st.psql("SELECT state FROM master_keys ORDER BY version").split() == [
            "retired", "active"]
        # A session key wrapped by the lagging instance.
        sid = f"A-{uuid.uuid4().hex}"
        a, ka = ask(lag, veh, sid, enc)
        assert a == 200, (ka, lag.logs()[-2000:])
        assert st.psql(f"SELECT master_version FROM sessions WHERE session_id = '{sid}'").strip() == "2"
        b, kb = ask(st, enc, sid, veh)
        assert b == 200 and kb.key == ka.key
        assert "active master key version switched" in lag.logs()
    finally:
        assert lag.stop() == 0
    # Device keys: registration and key rotation through a fresh lagging
    # instance (started before a second rotation).
    lag = LaggingKmsd(st)
    try:
        assert st.admin("POST", "/v1/admin/master/rotate", json={"force": True}).status_code == 200
        did = f"L-{uuid.uuid4().hex[:10]}"
        r = requests.post(lag.url + "/v1/admin/devices", json={"device_id": did, "type": "meter"},
                          headers={"Authorization": f"Bearer {st.admin_token}"}, timeout=30)
        assert r.status_code == 201, r.text
        r = requests.post(lag.url + f"/v1/admin/devices/{veh.device_id}/rotate", json={},
                          headers={"Authorization": f"Bearer {st.admin_token}"}, timeout=30)
        assert r.status_code == 200, r.text
        # The new device's keys and veh's newest key (the rotated one).
        rows = st.psql(f"SELECT DISTINCT k.master_version FROM device_keys k JOIN devices d "
                       f"ON d.id = k.device_pk WHERE d.device_id = '{did}' "
                       f"OR (d.device_id = '{veh.device_id}' AND k.key_index = "
                       f"(SELECT max(key_index) FROM device_keys WHERE device_pk = d.id))").split()
        assert rows == ["3"], rows
    finally:
        assert lag.stop() == 0


def test_rotate_wait_shows_the_rewrap(fresh_stack):
    """kmsctl master rotate --wait returns once nothing is left to rewrap,
    with the progress on a terminal's stderr (issue 21), none in a pipe."""
    st = fresh_stack
    st.start(extra_env={"QKMS_MAINTENANCE_INTERVAL": "1"})
    rows = [{"device_id": f"W-{uuid.uuid4().hex[:10]}", "type": "meter"} for _ in range(50)]
    assert st.admin("POST", "/v1/admin/devices/import", json={"devices": rows}).json()["failed"] == 0
    env = dict(st.env, KMS_ADDR=st.url, KMS_TOKEN=st.admin_token)
    rc, out, tty = run_on_tty([KMSCTL, "master", "rotate", "--wait"], env)
    assert rc == 0, (out, tty)
    assert re.search(r"active version: 2\s+keys still to rewrap: 0", out), out
    assert "\r\x1b[Krewrap: " in tty and "new master key version 2" in tty, repr(tty)
    assert st.psql("SELECT count(*) FROM device_keys WHERE master_version = 1").strip() == "0"
    p = st.kmsctl("master", "rotate", "--wait", "--json", token=st.admin_token)
    assert p.returncode == 0 and json.loads(p.stdout)["pending_rewrap"] == 0, p.stderr
    assert p.stderr == ""
    p = st.kmsctl("master", "rotate", "--wait-timeout", "5", token=st.admin_token)
    assert p.returncode == 2 and "--wait" in p.stderr
