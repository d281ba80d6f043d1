"""Failover drills (issue 22, docs/ha.md): under a steady paired-key load
from the device library (haload), kill each part of the HA topology
(hastack.py) in turn and check, after each, that no key a client received
was lost or doubled, and that the audit chain verifies.

The drills, in order:
  primary_stop     the PostgreSQL primary's node stopped (Patroni stops
                   PostgreSQL and hands over: a container stop), then
                   started again (it rejoins as a standby)
  kmsd_kill9       one kmsd killed with SIGKILL; HAProxy routes around it;
                   then started again
  kmsd_partition   one kmsd cut off the database for 20 s (a black hole)
  etcd_restart     etcd stopped for 5 s and started again
  master_rotate    the master key rotated: staged until both kmsd report
                   the new version (one token directory), then active; all
                   keys rewrapped under it
  first_host_lost  kmsd2 restarted while the first node of its list drops
                   its packets (a host gone without a reset)
  primary_kill9    the primary's Patroni and PostgreSQL killed with SIGKILL
                   (a host lost with commits in flight); it rejoins later

The figures go to build/ha/drills.txt as a table: drill, recovery seconds
(first failed request to the first success after the last one; 0 when no
request failed), failed requests, lost keys, duplicate keys.
"""
import os
import re
import signal
import subprocess
import time

import sys

import pytest
import requests

from hastack import HAStack, ROOT, wait_for
from drillcheck import (CONC, IDLE_S, NPAIRS, OVERDUE_SQL, REAPED_SQL, STORED_KEYS_SQL,
                        device_body, drill_policy, outcome, pair_devices, stop_load, table,
                        write_fill, write_table)

sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
from qkms_proto_py import Device  # noqa: E402  (the second implementation of the protocol)

HALOAD = os.environ.get("QKMS_HALOAD", os.path.join(ROOT, "build/ha/haload"))
OUT_DIR = os.path.join(ROOT, "build", "ha")


@pytest.fixture(scope="module")
def ha():
    st = HAStack()
    try:
        st.up()
        r = st.admin("POST", "/v1/admin/policies",
                     json={"name": "ha", "type_a": "vehicle", "type_b": "encryptor"})
        assert r.status_code == 201, r.text
        yield st
    finally:
        st.destroy()


def device(st, did, typ):
    r = st.admin("POST", "/v1/admin/devices", json={"device_id": did, "type": typ})
    assert r.status_code == 201, r.text
    r = st.admin("POST", f"/v1/admin/devices/{did}/fill", json={"plaintext": True})
    assert r.status_code == 200, r.text
    return r.json()["plaintext"]


def test_no_key_answered_without_the_standby(ha):
    """With every standby frozen (no confirmation can come), a key request
    gets no key: its commit waits for the standby, which no server-side
    timeout ends, until kmsd's db_io_timeout_ms, and kmsd answers 503. When
    an operator cancels such a wait (pg_cancel_backend), PostgreSQL reports
    the commit as done with a warning; kmsd answers 503 then too, not the
    key. Once the standbys answer again, each session gives its key, and
    both parties hold the same one."""
    st = ha
    veh = Device.from_fill(device(st, "SYNC-VEH", "vehicle"))
    enc = Device.from_fill(device(st, "SYNC-ENC", "encryptor"))
    # A second pair for the second request: sync-1's transaction, committed
    # on the primary, keeps its row locks while its backend waits for the
    # standby, and would hold sync-2 back on a lock rather than in the wait.
    veh2 = Device.from_fill(device(st, "SYNC-VEH-2", "vehicle"))
    enc2 = Device.from_fill(device(st, "SYNC-ENC-2", "encryptor"))
    url = f"http://127.0.0.1:{st.kmsd_port['kmsd1']}"
    primary = st.primary()
    standbys = [n for n in st.pg_nodes if n != primary]

    def ask(dev, peer, sid):
        req = dev.key_request(sid, peer.device_id)
        return req, requests.post(url + req.path, data=req.raw, timeout=30,
                                  headers={"Content-Type": "application/json"})

    def sync_waiters():
        """Backends whose key request's commit waits for the standby."""
        return set(st.psql("SELECT pid FROM pg_stat_activity WHERE wait_event = 'SyncRep' "
                           "AND query LIKE '%qkms_session_key%'", node=primary).split())

    cancelled = []

    def cancel_new_wait(before):
        # The operator's cancel, as soon as a key request's commit other
        # than sync-1's (whose connection kmsd dropped) waits for the standby.
        found = []

        def new_waiter():
            found[:] = sorted(sync_waiters() - before)
            return bool(found)
        if wait_for(new_waiter, 5, 0.02):
            st.psql(f"SELECT pg_cancel_backend({found[0]})", node=primary)
            cancelled.append(found[0])

    for n in standbys:
        st.freeze(n)
    try:
        t0 = time.time()
        _, r = ask(veh, enc, "sync-1")
        assert r.status_code == 503 and r.json()["error"]["code"] == "unavailable", r.text
        assert time.time() - t0 >= 5, "answered before db_io_timeout_ms"

        import threading
        # kmsd dropped sync-1's connection: its next connect waits out the
        # back-off (at most db_reconnect_max_ms).
        time.sleep(2)
        before = sync_waiters()
        canceller = threading.Thread(target=cancel_new_wait, args=(before,))
        canceller.start()
        t0 = time.time()
        _, r = ask(veh2, enc2, "sync-2")
        took = time.time() - t0
        canceller.join()
        assert r.status_code == 503 and r.json()["error"]["code"] == "unavailable", r.text
        assert cancelled, "sync-2's commit never waited for the standby"
        assert took < 5, "answered by the timeout, not on the cancelled wait's warning"
    finally:
        for n in standbys:
            st.freeze(n, signal.SIGCONT)
    with open(os.path.join(st.state, "kmsd1.log")) as f:
        log = f.read()
    assert "database did not answer in time" in log
    assert "commit not confirmed by the synchronous standby" in log
    metrics = requests.get(url + "/metrics", timeout=10).text
    assert re.search(r"^qkms_db_sync_unconfirmed_total [1-9]", metrics, re.M), metrics

    def key_of(dev, peer, sid):
        req, r = ask(dev, peer, sid)
        return dev.open_key_response(req, r.json()) if r.status_code == 200 else None

    for sid, x, y in (("sync-1", veh, enc), ("sync-2", veh2, enc2)):
        assert wait_for(lambda: key_of(x, y, sid) is not None, 60), "no key once the standbys are back"
        a, b = key_of(x, y, sid), key_of(y, x, sid)
        assert a.key_id == b.key_id and a.key == b.key


def master(st):
    r = st.admin("GET", "/v1/admin/master")
    assert r.status_code == 200, r.text
    return r.json()


def setup_pairs(st, fills):
    """The drill's pairs (drillcheck: a group whose sessions end after
    IDLE_S idle seconds) and their fill documents for haload."""
    r = st.admin("POST", "/v1/admin/policies", json=drill_policy())
    assert r.status_code == 201, r.text
    for kind, i, did, typ in pair_devices():
        r = st.admin("POST", "/v1/admin/devices", json=device_body(did, typ))
        assert r.status_code == 201, r.text
        r = st.admin("POST", f"/v1/admin/devices/{did}/fill", json={"plaintext": True})
        assert r.status_code == 200, r.text
        write_fill(fills, kind, i, r.json()["plaintext"])


def test_failover_drills(ha):
    st = ha
    fills = os.path.join(st.state, "fills")
    setup_pairs(st, fills)
    events_path = os.path.join(st.state, "haload.events")
    port = st.haproxy_kmsd
    # Every kmsd in service (the test before froze the database: HAProxy
    # took both out and brings them back within its checks).
    assert wait_for(lambda: all(v == "UP" for (b, _), v in st.haproxy_servers().items()
                                if b == "kmsd"), 30), st.haproxy_servers()
    load = subprocess.Popen([HALOAD, str(port), str(CONC), "600", fills, str(NPAIRS), events_path],
                            stdout=subprocess.PIPE, text=True)
    marks = []
    audits = {}

    def mark(name):
        if marks:
            # The drill before: the audit chain verifies once it is over.
            r = st.admin("POST", "/v1/admin/audit/verify")
            assert r.status_code == 200, r.text
            audits[marks[-1][0]] = r.json()["ok"]
        marks.append((name, time.time()))

    def steady(seconds=3):
        time.sleep(seconds)

    def lose_primary(drill, how):
        """The drill: the primary's node ended by how(node); a new primary
        must follow; then the node is started again and rejoins as a
        standby."""
        old = st.primary()
        mark(drill)
        how(old)
        assert wait_for(lambda: st.primary() not in (None, old), 60), f"{drill}: no new primary"
        steady(3)
        st.start_patroni(old)
        assert wait_for(lambda: st.role(old) == "replica", 120), f"{drill}: {old} did not rejoin"
        steady(3)

    try:
        steady(4)
        assert load.poll() is None, "haload stopped"

        # 1. The primary's node stopped: Patroni hands over to the sync standby.
        lose_primary("primary_stop", lambda n: st.stop(n, signal.SIGTERM))

        # 2. One kmsd killed: HAProxy takes it out; then it comes back.
        mark("kmsd_kill9")
        st.kill9("kmsd1")
        steady(6)
        st.start_kmsd("kmsd1")
        steady(3)

        # 3. One kmsd cut off the database for 20 s.
        mark("kmsd_partition")
        st.partition("kmsd2")
        try:
            time.sleep(20)
        finally:
            st.heal()
        assert wait_for(lambda: st.kmsd_ready("kmsd2"), 30), "kmsd2 not ready after the partition"
        steady(3)

        # 4. etcd restarted.
        mark("etcd_restart")
        st.stop("etcd", signal.SIGTERM)
        time.sleep(5)
        st.start_etcd()
        steady(6)

        # 5. Master key rotation under load (docs/ha.md): with two live
        # instances it is staged, and active once both report holding it.
        mark("master_rotate")
        before = master(st)["active"]
        t0 = time.time()
        r = st.admin("POST", "/v1/admin/master/rotate")
        assert r.status_code == 200, r.text
        assert r.json()["staged"] == before + 1, r.text
        assert wait_for(lambda: master(st)["active"] == before + 1, 60), master(st)
        rotate_active_s = time.time() - t0
        assert wait_for(lambda: master(st)["pending_rewrap"] == 0, 120), master(st)
        steady(2)

        # 6. The first node of kmsd2's list gone without a trace (its packets
        # dropped: no refusal, no reset), and kmsd2 restarted: it must pass
        # over that node to the primary behind it (each node has its own
        # connect budget), not wait on it forever.
        assert st.primary() != st.pg_nodes[0], "the drill needs a standby first in the list"
        mark("first_host_lost")
        st.partition("kmsd2", nodes=[st.pg_nodes[0]])
        try:
            st.stop("kmsd2")
            t0 = time.time()
            st.start_kmsd("kmsd2")  # raises unless ready within 60 s
            first_host_lost_ready_s = time.time() - t0
            steady(3)
        finally:
            st.heal()
        steady(2)

        # 7. The primary's host lost at once (Patroni and PostgreSQL killed
        # with SIGKILL, commits in flight): its leader key lapses after ttl,
        # the synchronous standby is promoted; what kmsd answered before is
        # on it. Then the node comes back and rejoins as a standby.
        lose_primary("primary_kill9", st.kill9_node)
        mark("after")
    finally:
        stop_load(load, events_path)

    events, sessions, rows = outcome(events_path, st.psql(STORED_KEYS_SQL).split(), marks, st.state)
    abandoned = sum(1 for e in events if e[3] == "abandoned")

    r = st.admin("POST", "/v1/admin/audit/verify")
    assert r.status_code == 200, r.text
    audit_ok = r.json()["ok"] and all(audits.values())

    # No work missed after an instance died: every drill session idle for
    # longer than its policy allows is destroyed (by whichever kmsd is up).
    def reaped():
        return st.psql(OVERDUE_SQL).strip() == "0"
    assert wait_for(reaped, IDLE_S + 60), "idle sessions left behind by the reaper"
    tombstones = int(st.psql(REAPED_SQL))
    assert tombstones > 0, "the reaper destroyed no drill session"

    text = table(rows, f"sessions={len(sessions)} requests_ok={sum(1 for e in events if e[3] == 'ok')} "
                       f"abandoned={abandoned} reaped_idle={tombstones} "
                       f"audit_chain_ok_after_each={audit_ok} "
                       f"kmsd2_ready_with_first_host_lost_s={first_host_lost_ready_s:.1f} "
                       f"master_rotate_active_s={rotate_active_s:.1f}")
    write_table(OUT_DIR, text)
    print("\n" + text)

    assert all(r[3] == 0 for r in rows), f"keys lost\n{text}"
    assert all(r[4] == 0 for r in rows), f"sessions with two keys\n{text}"
    assert abandoned == 0, text
    assert audit_ok, r.json()
    for n, rec, *_ in rows:
        assert rec < IDLE_S - 5, f"{n}: no recovery in {IDLE_S - 5} s\n{text}"
    # A clean stop of each kmsd (under the sanitizers: no error, no leak).
    for k in st.kmsd_names:
        assert st.stop(k) == 0, f"{k} did not exit cleanly; see {st.state}/{k}.log"
