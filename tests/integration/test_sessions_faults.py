"""Session keys under faults and with several kmsd over one PostgreSQL:
PostgreSQL restarting under load, the token going away, a second instance
whose device-key cache is stale."""
import concurrent.futures
import glob
import os
import shutil
import threading
import time
import uuid

import pytest

from conftest import Stack, _finish
from helpers import SecondKmsd, make_device, try_key


@pytest.fixture
def fs(fresh_stack):
    st = fresh_stack
    st.start()
    r = st.admin("POST", "/v1/admin/policies", json={"name": "all", "type_a": "*", "type_b": "*"})
    assert r.status_code == 201
    return st


ask = try_key


def test_two_instances_one_key_per_session(fs):
    """Each party talks to a different kmsd, both at once: still one key."""
    other = SecondKmsd(fs)
    try:
        pairs = [(make_device(fs, "vehicle"), make_device(fs, "encryptor")) for _ in range(3)]
        with concurrent.futures.ThreadPoolExecutor(max_workers=12) as ex:
            jobs = []
            for i in range(45):
                veh, enc = pairs[i % 3]
                sid = f"MI-{uuid.uuid4().hex}"
                jobs.append((ex.submit(ask, fs, veh, sid, enc), ex.submit(ask, other, enc, sid, veh)))
            for fa, fb in jobs:
                (sa, ka), (sb, kb) = fa.result(), fb.result()
                assert sa == sb == 200, (sa, ka, sb, kb)
                assert ka.key == kb.key and ka.key_id == kb.key_id
    finally:
        assert other.stop() == 0


def test_stale_cache_on_another_instance_cannot_bypass_revocation(fs):
    other = SecondKmsd(fs)
    try:
        veh, enc = make_device(fs, "vehicle"), make_device(fs, "encryptor")
        # Warm the other instance's device-key cache.
        assert ask(other, veh, f"W-{uuid.uuid4().hex}", enc)[0] == 200
        # Suspend and revoke through the first instance: the second one's
        # cached row is stale, but the request's own transaction re-checks.
        fs.admin("POST", f"/v1/admin/devices/{veh.device_id}/suspend")
        assert ask(other, veh, f"W-{uuid.uuid4().hex}", enc) == (403, "device_inactive")
        fs.admin("POST", f"/v1/admin/devices/{veh.device_id}/resume")
        assert ask(other, veh, f"W-{uuid.uuid4().hex}", enc)[0] == 200
        fs.admin("POST", f"/v1/admin/devices/{veh.device_id}/revoke")
        assert ask(other, veh, f"W-{uuid.uuid4().hex}", enc) == (401, "unauthenticated")
        # A retired key (rotation with no grace, retired by SQL as the
        # maintenance pass would) is refused the same way.
        fs.admin("POST", f"/v1/admin/devices/{enc.device_id}/rotate", json={"grace_days": 0})
        fs.psql(f"UPDATE device_keys k SET state = 'retired' FROM devices d WHERE d.id = k.device_pk "
                f"AND d.device_id = '{enc.device_id}' AND k.key_index = 0")
        veh2 = make_device(fs, "vehicle")
        assert ask(other, enc, f"W-{uuid.uuid4().hex}", veh2) == (401, "unauthenticated")
    finally:
        assert other.stop() == 0


def test_postgresql_restart_under_load(fs):
    """Requests get 503 during the outage and succeed after; no session ever
    has two keys, and no party holds a key the platform lost."""
    pairs = [(make_device(fs, "vehicle"), make_device(fs, "encryptor")) for _ in range(4)]
    results = []  # (sid, party, status, key_id or code)
    stop = threading.Event()

    def worker(i):
        veh, enc = pairs[i % 4]
        n = 0
        while not stop.is_set():
            sid = f"PG-{i}-{n}-{uuid.uuid4().hex[:6]}"
            n += 1
            for party, (a, b) in (("veh", (veh, enc)), ("enc", (enc, veh))):
                st, out = ask(fs, a, sid, b)
                results.append((sid, party, st, out.key_id if st == 200 else out,
                                out.key if st == 200 else None))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    time.sleep(2)
    fs.stop_db()
    time.sleep(3)
    fs.start_db()
    time.sleep(5)
    stop.set()
    for t in threads:
        t.join(timeout=60)

    statuses = {r[2] for r in results}
    assert statuses <= {200, 503}, statuses
    assert 503 in statuses  # the outage was seen...
    assert [r for r in results[-20:] if r[2] == 200]  # ...and service came back
    # Both parties of a session that got keys got the same one.
    by_sid = {}
    for sid, party, st, kid, key in results:
        if st == 200:
            by_sid.setdefault(sid, []).append((kid, key))
    for sid, got in by_sid.items():
        assert len({k for k, _ in got}) == 1 and len({k for _, k in got}) == 1, sid
    # Every key any party holds is still known to the platform.
    held = {kid for got in by_sid.values() for kid, _ in got}
    known = set(fs.psql("SELECT key_id FROM sessions UNION SELECT key_id FROM session_tombstones").split())
    assert held <= known
    assert fs.psql("SELECT count(*) FROM (SELECT session_hash FROM sessions GROUP BY 1 "
                   "HAVING count(*) > 1) d").strip() == "0"


def test_token_outage_gives_503_then_recovers(fs):
    veh, enc = make_device(fs, "vehicle"), make_device(fs, "encryptor")
    sid = f"TK-{uuid.uuid4().hex}"
    assert ask(fs, veh, sid, enc)[0] == 200
    tokdir = glob.glob(os.path.join(fs.state, "softhsm", "tokens", "*"))[0]
    away = os.path.join(fs.state, "token-away")
    shutil.move(tokdir, away)
    try:
        st, code = ask(fs, enc, sid, veh)
        assert (st, code) in ((503, "token_unavailable"),)
        st, code = ask(fs, veh, f"TK-{uuid.uuid4().hex}", enc)
        assert st == 503
    finally:
        shutil.move(away, tokdir)
    deadline = time.time() + 15
    while time.time() < deadline:
        st, out = ask(fs, enc, sid, veh)
        if st == 200:
            break
        time.sleep(0.5)
    assert st == 200, [l for l in fs.logs().splitlines() if "token" in l or "ckr" in l][-12:]
    assert out.key == ask(fs, veh, sid, enc)[1].key
