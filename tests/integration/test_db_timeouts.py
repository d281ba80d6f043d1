"""kmsd against a PostgreSQL that stops answering (issue 12, item 8).

Every process of the test cluster (postmaster and backends) is stopped with
SIGSTOP: the kernel still accepts and acknowledges on the socket, so nothing
fails at the network level and only kmsd's own deadline (db_io_timeout_ms)
can end a wait. Requests must answer 503 within that deadline, never hang,
and the service must recover after SIGCONT without a restart.

Also: a db_conninfo whose options set statement_timeout cannot switch kmsd's
statement_timeout off.
"""
import os
import re
import signal
import subprocess
import threading
import time

import pytest
import requests

from conftest import wait_for

IO_MS = 1500
ACQUIRE_MS = 500


def cluster_pids(st):
    """The postmaster of st's cluster and all its children."""
    with open(os.path.join(st.state, "pg", "data", "postmaster.pid")) as f:
        master = int(f.readline())
    kids = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        if ppid == master:
            kids.append(int(d))
    return master, kids


def signal_cluster(st, sig):
    master, kids = cluster_pids(st)
    os.kill(master, sig)  # first, so it forks no new backend meanwhile
    for pid in kids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
    return [master] + kids


def devices_list(st, timeout=30):
    t0 = time.monotonic()
    r = requests.get(st.url + "/v1/admin/devices", timeout=timeout,
                     headers={"Authorization": f"Bearer {st.admin_token}"})
    return r, time.monotonic() - t0


def conninfo(st):
    return re.search(r'^db_conninfo = "(.*)"$', open(st.conf).read(), re.M).group(1)


@pytest.mark.parametrize("via", ["unix", "tcp"])
def test_stopped_database_answers_503_within_deadline(fresh_stack, via):
    """Over the unix socket and over loopback TCP: in neither does the
    kernel report anything (a stopped process's socket is still ACKed), so
    keepalives and tcp_user_timeout cannot help; the deadline must."""
    st = fresh_stack
    env = {"QKMS_DB_IO_TIMEOUT_MS": str(IO_MS), "QKMS_DB_ACQUIRE_TIMEOUT_MS": str(ACQUIRE_MS),
           "QKMS_DB_STATEMENT_TIMEOUT_MS": "1000"}
    if via == "tcp":
        env["QKMS_DB_CONNINFO"] = re.sub(r"host=\S+", "host=127.0.0.1", conninfo(st))
    st.start(extra_env=env)
    if via == "tcp":
        assert int(st.psql("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'kmsd'"
                           " AND client_addr = '127.0.0.1'")) > 0
    token = st.admin_token
    for _ in range(20):  # warm the pool: connections to backends that will stop
        r, _ = devices_list(st)
        assert r.status_code == 200, r.text
    # Worst case: wait for a pooled connection, then one statement's deadline.
    bound = (IO_MS + ACQUIRE_MS) / 1000 + 1.5
    results, errors = [], []
    stop = threading.Event()

    def client():
        s = requests.Session()
        while not stop.is_set():
            t0 = time.monotonic()
            try:
                r = s.get(st.url + "/v1/admin/devices", timeout=25,
                          headers={"Authorization": f"Bearer {token}"})
                results.append((r.status_code, time.monotonic() - t0, r.text[:200]))
            except requests.RequestException as e:  # a hang ends here
                errors.append((repr(e), time.monotonic() - t0))

    stopped = signal_cluster(st, signal.SIGSTOP)
    try:
        threads = [threading.Thread(target=client) for _ in range(4)]
        for t in threads:
            t.start()
        time.sleep(30)
        stop.set()
        for t in threads:
            t.join(timeout=60)
    finally:
        for pid in stopped:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        signal_cluster(st, signal.SIGCONT)
    assert not errors, errors[:5]
    assert len(results) >= 20, results
    assert all(code == 503 for code, _, _ in results), [x for x in results if x[0] != 503][:5]
    assert all('"unavailable"' in body for _, _, body in results), results[:3]
    slowest = max(t for _, t, _ in results)
    assert slowest < bound, (slowest, sorted(t for _, t, _ in results)[-5:])
    assert "database did not answer in time" in st.logs()
    # kmsd is still alive and serves again once PostgreSQL runs: no restart.
    assert wait_for(lambda: devices_list(st, timeout=10)[0].status_code == 200, timeout=30), \
        st.logs()[-3000:]
    assert st.proc.poll() is None
    m = re.search(r"^qkms_db_timeouts_total (\d+)$", st.admin("GET", "/metrics").text, re.M)
    assert m and int(m.group(1)) > 0, st.admin("GET", "/metrics").text[-3000:]
    r = st.admin("POST", "/v1/admin/devices", json={"device_id": "AFTER-STOP", "type": "vehicle"})
    assert r.status_code == 201, r.text


def test_conninfo_options_cannot_disable_statement_timeout(fresh_stack):
    """db_conninfo's options= is applied by the server at connect; kmsd's own
    statement_timeout is set afterwards and must win."""
    st = fresh_stack
    st.start(extra_env={
        "QKMS_DB_CONNINFO": conninfo(st) + " options='-c statement_timeout=0 -c TimeZone=Asia/Tokyo'",
        "QKMS_DB_STATEMENT_TIMEOUT_MS": "300",
        "QKMS_DB_IO_TIMEOUT_MS": "30000"})
    r, _ = devices_list(st)
    assert r.status_code == 200, r.text
    locker = subprocess.Popen(
        ["psql", "-X", "-q", "-d", st.pg_dsn, "-c",
         "BEGIN; LOCK TABLE devices IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(10); COMMIT;"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        assert wait_for(lambda: st.psql(
            "SELECT count(*) FROM pg_locks WHERE relation = 'devices'::regclass"
            " AND mode = 'AccessExclusiveLock' AND granted").strip() == "1", timeout=10)
        r, took = devices_list(st, timeout=30)
        # The statement waits for the lock until statement_timeout (300 ms) ends it.
        assert r.status_code == 503, (r.status_code, r.text, took)
        assert took < 3, took
    finally:
        locker.wait(timeout=30)
    r, _ = devices_list(st)
    assert r.status_code == 200, r.text


def test_tls_large_results_within_deadline(fresh_stack):
    """With TLS to PostgreSQL, large results under a short deadline: the
    non-blocking reads and polls must get every byte without ever waiting for
    the deadline. (Part of a result can sit decrypted in the TLS layer, where
    poll() does not see it; kmsd reads again before waiting. This test passes
    with and without that guard here: it guards the TLS path as a whole.)"""
    st = fresh_stack
    pgdata = os.path.join(st.state, "pg", "data")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-keyout", os.path.join(pgdata, "server.key"),
                    "-out", os.path.join(pgdata, "server.crt")],
                   check=True, capture_output=True)
    owner = os.stat(pgdata)
    for f in ("server.key", "server.crt"):
        os.chown(os.path.join(pgdata, f), owner.st_uid, owner.st_gid)
        os.chmod(os.path.join(pgdata, f), 0o600)
    with open(os.path.join(pgdata, "postgresql.conf"), "a") as f:
        f.write("ssl = on\n")
    st.stop_db()
    st.start_db()
    st.start(extra_env={
        "QKMS_DB_CONNINFO": re.sub(r"host=\S+", "host=127.0.0.1", conninfo(st)) + " sslmode=require",
        "QKMS_DB_IO_TIMEOUT_MS": "1000"})
    assert int(st.psql("SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)"
                       " WHERE a.application_name = 'kmsd' AND s.ssl")) > 0
    rows = [{"device_id": f"TLS-{i:05d}-" + "x" * 40, "type": "meter"} for i in range(1500)]
    for i in range(0, len(rows), 750):
        r = st.admin("POST", "/v1/admin/devices/import", json={"devices": rows[i:i + 750]})
        assert r.status_code == 200 and r.json()["failed"] == 0, r.text[:500]
    for _ in range(5):
        t0 = time.monotonic()
        r = st.admin("GET", "/v1/admin/audit/export", params={"limit": "5000"})
        took = time.monotonic() - t0
        assert r.status_code == 200, r.text[:500]
        assert len(r.json()["rows"]) >= 1500 and len(r.content) > 500_000
        assert took < 5, took
    assert "database did not answer in time" not in st.logs()


def test_multi_host_conninfo_with_one_port(fresh_stack):
    """A db_conninfo naming several hosts with one port for all (libpq's
    short form): kmsd tries them in turn (docs/ha.md), passing over one that
    refuses (127.0.0.3: nothing listens there) to the server behind it on
    the same port."""
    st = fresh_stack
    st.start(extra_env={
        "QKMS_DB_CONNINFO": re.sub(r"host=\S+", "host=127.0.0.3,127.0.0.1", conninfo(st))})
    for _ in range(5):
        r, _ = devices_list(st)
        assert r.status_code == 200, r.text
    rows = st.psql("SELECT DISTINCT client_addr FROM pg_stat_activity WHERE application_name = 'kmsd'")
    assert rows.split() == ["127.0.0.1"], rows
