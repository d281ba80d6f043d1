"""Group commit of key requests (store/dbbatch.h, schema/008): requests that
wait for each other run as one statement and one durable commit.

What must hold, on top of every session test (which all run through it):
batches really form under load; one request that makes the server refuse
the statement fails alone, its neighbours get their keys; PostgreSQL killed
in the middle of batches loses and duplicates nothing: every request that
got a key finds it in the database, both parties of a session hold the same
key, and a request that got an error either left nothing behind or (the
window between a commit and its answer, as for any single commit) left the
session its retry gets, with the same key its peer holds."""
import json
import os
import re
import subprocess
import threading
import time
import uuid

import pytest

from conftest import Stack, _finish
from helpers import make_device, try_key

THREADS = 24
PG_BIN = os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin")  # as scripts/qkms-local.sh


def ask(st, dev, sid, peer):
    """(200, key_id), (status, error code), or ("conn", None)."""
    status, out = try_key(st, dev, sid, peer)
    return status, out.key_id if status == 200 else out


def metric(st, name):
    m = re.search(rf"^{name} (\d+)$", st.admin("GET", "/metrics").text, re.M)
    return int(m.group(1)) if m else 0


@pytest.fixture(scope="module")
def gc():
    st = Stack("gc")
    try:
        # A pool larger than the batches in flight, as in production.
        st.start(extra_env={"QKMS_DB_GROUP_COMMIT_MAX": "16", "QKMS_DB_GROUP_COMMIT_INFLIGHT": "2"})
        r = st.admin("POST", "/v1/admin/policies", json={"name": "all", "type_a": "*", "type_b": "*"})
        assert r.status_code == 201, r.text
        st.pairs = [(make_device(st, "vehicle"), make_device(st, "encryptor"))
                    for _ in range(THREADS)]
    except BaseException:
        st.destroy()
        raise
    yield st
    _finish(st)


def load(st, seconds, prefix="GC", during=None):
    """THREADS clients, each running sessions of its own pair (both parties)
    for `seconds`; during(), if given, runs in the middle. Returns the list
    of (sid, party, status, key_id or code)."""
    results, stop = [], threading.Event()

    def worker(i):
        veh, enc = st.pairs[i]
        n = 0
        while not stop.is_set():
            sid = f"{prefix}-{i}-{n}-{uuid.uuid4().hex[:8]}"
            n += 1
            for party, (a, b) in (("veh", (veh, enc)), ("enc", (enc, veh))):
                status, out = ask(st, a, sid, b)
                results.append((sid, party, status, out))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(THREADS)]
    for t in threads:
        t.start()
    try:
        if during:
            time.sleep(seconds / 2)
            during()
            time.sleep(seconds / 2)
        else:
            time.sleep(seconds)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=120)
    return results


def keys_by_session(results):
    by = {}
    for sid, party, status, out in results:
        if status == 200:
            by.setdefault(sid, {})[party] = out
    return by


def test_batches_form_under_load(gc):
    """How many requests meet in a batch depends on how fast the database
    is against the clients (the faster it is, the fewer wait), so the test
    makes them wait whatever the machine: three times during the load, the
    active master key's row is held FOR UPDATE for half a second (under the
    batches' 1 s lock timeout). Every request that makes a session waits on
    it, with the batch it is in; the requests that queue meanwhile, one per
    client, meet in the next batches."""
    b0, r0 = metric(gc, "qkms_db_group_commits_total"), metric(gc, "qkms_db_group_commit_requests_total")

    def hold():
        for _ in range(3):
            gc.psql("BEGIN; SELECT 1 FROM master_keys WHERE state = 'active' FOR UPDATE; "
                    "SELECT pg_sleep(0.5); COMMIT")
            time.sleep(0.3)

    results = load(gc, 4, during=hold)
    b1, r1 = metric(gc, "qkms_db_group_commits_total"), metric(gc, "qkms_db_group_commit_requests_total")
    assert {s for _, _, s, _ in results} == {200}, [r for r in results if r[2] != 200][:5]
    for sid, keys in keys_by_session(results).items():
        assert len(set(keys.values())) == 1, (sid, keys)
    # Batches of two or more formed (a request alone is not counted), and
    # the queue behind the held row went out in batches: with 2 batches in
    # flight and 24 clients, at least one batch a hold took the others'
    # requests.
    assert b1 > b0 and r1 - r0 >= 2 * (b1 - b0), (r1 - r0, b1 - b0)
    assert r1 - r0 >= THREADS, (r1 - r0, b1 - b0, len(results))
    assert metric(gc, "qkms_db_group_commit_fallbacks_total") == 0


def test_one_failing_request_fails_alone(gc):
    """A trigger makes the server raise for sessions named POISON-*: the
    batch holding one rolls back entirely, then its requests run alone;
    only the poisoned ones fail (500 internal), nothing else does."""
    gc.psql("""
        CREATE FUNCTION test_poison() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.session_id LIKE 'POISON-%' THEN
                RAISE EXCEPTION 'poisoned session %', NEW.session_id;
            END IF;
            RETURN NEW;
        END $$;
        CREATE TRIGGER test_poison BEFORE INSERT ON sessions
            FOR EACH ROW EXECUTE FUNCTION test_poison();""")
    f0 = metric(gc, "qkms_db_group_commit_fallbacks_total")
    poisoned = []

    def poison():
        veh, enc = gc.pairs[0]
        for _ in range(30):
            poisoned.append(ask(gc, veh, f"POISON-{uuid.uuid4().hex}", enc))

    try:
        results = load(gc, 4, during=poison)
    finally:
        gc.psql("DROP TRIGGER test_poison ON sessions; DROP FUNCTION test_poison();")
    assert poisoned and all(p == (500, "internal") for p in poisoned), poisoned[:5]
    others = [r for r in results if r[2] != 200]
    assert not others, others[:5]
    for sid, keys in keys_by_session(results).items():
        assert len(set(keys.values())) == 1, (sid, keys)
    assert metric(gc, "qkms_db_group_commit_fallbacks_total") > f0
    assert "poisoned session" in gc.logs()


def recent_problems(st, n=25):
    """kmsd's last warnings and errors, whole, one per line: why a request
    failed, in the failure's message (CI keeps nothing else of a failed run)."""
    recs = [r for r in st.log_records() if r.get("level") in ("warn", "error")
            and r.get("msg") != "request"]
    return "\n".join(json.dumps(r, sort_keys=True) for r in recs[-n:])


def test_postgres_killed_mid_batch_loses_and_duplicates_nothing(gc):
    def crash():
        # Immediate shutdown: every backend quits at once, mid-statement or
        # mid-commit, no checkpoint; the restart runs crash recovery.
        subprocess.run(["runuser", "-u", "postgres", "--", f"{PG_BIN}/pg_ctl", "-D",
                        f"{gc.state}/pg/data", "-m", "immediate", "-w", "stop"],
                       check=True, capture_output=True, timeout=60)
        gc.start_db()

    results = load(gc, 8, prefix="KILL", during=crash)
    statuses = {s for _, _, s, _ in results}
    assert 200 in statuses and statuses <= {200, 503}, statuses
    assert any(s == 503 for _, _, s, _ in results)  # the crash was seen

    # The key ID the database holds for each session of this run.
    held = dict(line.split("|") for line in gc.psql(
        "SELECT session_id, key_id FROM sessions WHERE session_id LIKE 'KILL-%'").split())
    got = keys_by_session(results)
    # Every key handed out is the session's key in the database, and both
    # parties hold the same one.
    for sid, keys in got.items():
        assert len(set(keys.values())) == 1, (sid, keys)
        assert held.get(sid) == next(iter(keys.values())), sid
    # An error left nothing, or the session a retry gets, with the key its
    # peer holds. In doubt: a session nobody got a key for, yet committed.
    in_doubt, retried = 0, 0
    for sid, party, status, _ in results:
        if status == 200 or sid not in held:
            continue
        peer_key = got.get(sid, {}).get("enc" if party == "veh" else "veh")
        assert peer_key in (None, held[sid]), (sid, peer_key, held[sid])
        in_doubt += peer_key is None and party not in got.get(sid, {})
        if retried < 20:  # a sample: each retry is a full request
            retried += 1
            veh, enc = next(p for i, p in enumerate(gc.pairs) if sid.startswith(f"KILL-{i}-"))
            a, b = (veh, enc) if party == "veh" else (enc, veh)
            got_now = ask(gc, a, sid, b)
            if got_now != (200, held[sid]):
                pytest.fail(f"retry of {sid} ({party}) got {got_now}, not the held key; "
                            f"kmsd's last warnings:\n{recent_problems(gc)}", pytrace=False)
    print(f"{len(results)} requests, {sum(s == 503 for _, _, s, _ in results)} answered 503, "
          f"{in_doubt} of them in doubt (committed, no answer)")


def held_session(st, veh, enc):
    """A session of veh and enc whose row a psql of the test holds FOR
    UPDATE for 6 s (as a long revoke or rewrap would); returns (sid, psql)."""
    sid = f"HELD-{uuid.uuid4().hex}"
    assert ask(st, veh, sid, enc)[0] == 200
    p = subprocess.Popen(["psql", "-X", "-q", "-d", st.pg_dsn, "-c",
                          f"BEGIN; SELECT 1 FROM sessions WHERE session_id = '{sid}' FOR UPDATE;"
                          " SELECT pg_sleep(6); COMMIT;"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)  # the lock is taken
    return sid, p


def timed(fn, *args):
    t = time.time()
    out = fn(*args)
    return out, time.time() - t


@pytest.mark.parametrize("inflight", [2, 1])
def test_a_long_lock_fails_one_request_and_queues_stay_bounded(inflight):
    """One request waits on a session row held elsewhere; only it fails (503,
    after the statement timeout). Run alone it is the single statement; in
    a batch, the batch gives up the lock wait after 1 s (lock_timeout) and
    runs its requests alone. With two
    batches in flight the others keep getting keys through the other one;
    with one, the others wait at most db_acquire_timeout_ms for a batch to
    take them and answer 503, never queueing for the whole stall."""
    st = Stack("gclock")
    try:
        st.start(extra_env={"QKMS_DB_GROUP_COMMIT_INFLIGHT": str(inflight),
                            "QKMS_DB_ACQUIRE_TIMEOUT_MS": "500",
                            "QKMS_DB_STATEMENT_TIMEOUT_MS": "3000"})
        r = st.admin("POST", "/v1/admin/policies", json={"name": "all", "type_a": "*", "type_b": "*"})
        assert r.status_code == 201, r.text
        pairs = [(make_device(st, "vehicle"), make_device(st, "encryptor")) for _ in range(6)]
        sid, psql = held_session(st, *pairs[0])
        blocked = []
        t = threading.Thread(target=lambda: blocked.append(timed(ask, st, pairs[0][1], sid,
                                                                 pairs[0][0])))
        t.start()
        others, stop = [], threading.Event()

        def worker(veh, enc):
            while not stop.is_set():
                s2 = f"OTHER-{uuid.uuid4().hex}"
                for a, b in ((veh, enc), (enc, veh)):
                    others.append(timed(ask, st, a, s2, b))

        ws = [threading.Thread(target=worker, args=p) for p in pairs[1:]]
        for w in ws:
            w.start()
        t.join(timeout=30)
        stop.set()
        for w in ws:
            w.join(timeout=30)
        psql.wait(timeout=30)
        (status, code), took = blocked[0]
        assert (status, code) == (503, "unavailable"), blocked
        assert took < 8, took
        # A request batched with the blocked one waits for the batch's lock
        # timeout (1 s) and its turn in the fallback (up to the 3 s statement
        # timeout), not for the 6 s the row is held.
        assert others and max(t for _, t in others) < 5.5, max(t for _, t in others)
        if inflight == 2:
            assert all(o[0] == 200 for o, _ in others), [o for o, _ in others if o[0] != 200][:5]
        else:
            assert {o[0] for o, _ in others} <= {200, 503}
            assert metric(st, "qkms_db_group_commit_queue_timeouts_total") >= 1
        # The row free again, the session is served again.
        assert ask(st, pairs[0][1], sid, pairs[0][0])[0] == 200
    finally:
        _finish(st)
