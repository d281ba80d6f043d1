"""/readyz says whether kmsd can serve a key request now (issue 12, item 16):
it reflects whether PostgreSQL can commit (disk full), it answers at once
whatever its dependencies do (stopped, hung), and it comes back by itself.
"""
import os
import re
import signal
import subprocess
import tempfile
import time

import pytest
import requests

from conftest import running_stack, _finish, wait_for
from helpers import make_device, post

PG_BIN = "/usr/lib/postgresql/15/bin"


def readyz(st, budget=1.0):
    """GET /readyz; it must answer within budget seconds, whatever is down."""
    t0 = time.monotonic()
    r = requests.get(st.url + "/readyz", timeout=5)
    took = time.monotonic() - t0
    assert took < budget, f"/readyz took {took:.2f} s"
    return r


def superuser_sql(st, sql):
    """SQL as the cluster's superuser (peer auth for OS user postgres)."""
    cmd = ["psql", "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-h", f"{st.state}/pg/run",
           "-p", str(st.pg_port), "-U", "postgres", "-d", "qkms", "-c", sql]
    if os.getuid() == 0:
        cmd = ["runuser", "-u", "postgres", "--"] + cmd
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    if p.returncode != 0:
        raise AssertionError(p.stderr)
    return p.stdout


def postgres_pids(st):
    """The cluster's postmaster and every backend (whose command lines do
    not name the data directory, so they are found as its children)."""
    def pgrep(*args):
        out = subprocess.run(["pgrep", *args], capture_output=True, text=True).stdout
        return [int(x) for x in out.split()]
    masters = pgrep("-f", f"{st.state}/pg/data")
    return masters + [c for m in masters for c in pgrep("-P", str(m))]


@pytest.fixture
def veh_enc():
    st = running_stack("ready", {"QKMS_READINESS_WRITE_FAILURE_S": "4"})
    try:
        r = st.admin("POST", "/v1/admin/policies", json={
            "name": "veh-enc", "type_a": "vehicle", "type_b": "encryptor"})
        assert r.status_code == 201, r.text
        st.veh = make_device(st, "vehicle")
        st.enc = make_device(st, "encryptor")
        yield st
    finally:
        _finish(st)


def deliver(st, sid):
    return post(st, st.veh.key_request(sid, st.enc.device_id))


@pytest.mark.skipif(os.getuid() != 0, reason="mounting a small tmpfs needs root")
def test_disk_full_makes_kmsd_not_ready_and_it_recovers(veh_enc):
    """The tables a delivery writes move onto a 4 MiB tmpfs, which is then
    filled: deliveries fail with 503, /readyz turns 503 naming the database
    within a few seconds (the one-row probe alone would still succeed), and
    after space is freed both come back."""
    st = veh_enc
    mnt = tempfile.mkdtemp(prefix="qkms-full-", dir="/tmp")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", mnt], check=True)
    try:
        os.makedirs(f"{mnt}/ts")
        subprocess.run(["chown", "postgres:postgres", f"{mnt}/ts"], check=True)
        superuser_sql(st, f"CREATE TABLESPACE full_disk LOCATION '{mnt}/ts'")
        for t in ("sessions", "request_nonces", "audit_log"):
            superuser_sql(st, f"ALTER TABLE {t} SET TABLESPACE full_disk")
            # Its indexes only: the readiness row's (or any other table's)
            # on the full disk would fail the probe before any delivery.
            for ix in superuser_sql(st, f"SELECT indexrelid::regclass FROM pg_index "
                                        f"WHERE indrelid = '{t}'::regclass").split():
                superuser_sql(st, f"ALTER INDEX {ix} SET TABLESPACE full_disk")
        superuser_sql(st, "CREATE TABLE filler (b bytea) TABLESPACE full_disk")
        try:
            superuser_sql(st, "INSERT INTO filler SELECT decode(repeat('ab', 1500), 'hex') "
                              "FROM generate_series(1, 100000)")
        except AssertionError as e:
            assert "No space left on device" in str(e) or "could not extend" in str(e), e
        r = readyz(st)
        assert r.status_code == 200, r.text  # nothing has failed yet

        codes = []
        for i in range(400):
            r = deliver(st, f"FULL-{i}")
            codes.append(r.status_code)
            if r.status_code == 503:
                break
        assert codes[-1] == 503, f"deliveries never failed: {codes[-5:]}"
        assert post(st, st.veh.key_request("FULL-x", st.enc.device_id)).json()["error"]["code"] \
            == "unavailable"
        assert wait_for(lambda: readyz(st).status_code == 503, 5, 0.1), "still ready"
        doc = readyz(st).json()
        assert doc["error"]["down"] == ["database"]
        assert doc["checks"]["database"].startswith("write_failed (SQLSTATE 53100")
        assert doc["checks"]["token"] == "ok"

        # Space again: the failure ages out and the probe succeeds.
        subprocess.run(["mount", "-o", "remount,size=64m", mnt], check=True)
        assert wait_for(lambda: readyz(st).status_code == 200, 15, 0.2), readyz(st).text
        r = deliver(st, "FULL-after")
        assert r.status_code == 200, r.text
    finally:
        try:
            superuser_sql(st, "DROP TABLE IF EXISTS filler")
            for t in ("sessions", "request_nonces", "audit_log"):
                superuser_sql(st, f"ALTER TABLE {t} SET TABLESPACE pg_default")
            superuser_sql(st, "ALTER INDEX ALL IN TABLESPACE full_disk SET TABLESPACE pg_default")
            superuser_sql(st, "DROP TABLESPACE IF EXISTS full_disk")
        finally:
            st.stop()
            st.stop_db()
            subprocess.run(["umount", "-l", mnt])
            os.rmdir(mnt)


def test_readyz_answers_at_once_while_postgres_is_stopped(veh_enc):
    st = veh_enc
    assert readyz(st).status_code == 200
    st.stop_db()
    try:
        # Every answer is prompt; within a few seconds it is 503 naming the database.
        codes = []
        deadline = time.monotonic() + 6
        while time.monotonic() < deadline:
            codes.append(readyz(st, budget=0.5).status_code)
            time.sleep(0.1)
        assert codes[-1] == 503, codes
        doc = readyz(st).json()
        assert "database" in doc["error"]["down"]
        assert doc["checks"]["database"] != "ok"
        assert readyz(st).headers["Retry-After"] == "1"
        # The same in /metrics, for the alert rules (docs/operations.md).
        assert ready_metric(st, "database") == 0 and ready_metric(st, "token") == 1
        changes = ready_metric(st, "database", "qkms_ready_changes_total")
        assert changes >= 1
    finally:
        st.start_db()
    assert wait_for(lambda: readyz(st).status_code == 200, 20, 0.2)
    assert deliver(st, "AFTER-RESTART").status_code == 200
    assert ready_metric(st, "database") == 1
    assert ready_metric(st, "database", "qkms_ready_changes_total") == changes + 1


def ready_metric(st, check, name="qkms_ready"):
    text = requests.get(st.url + "/metrics", timeout=5).text
    m = re.search(rf'^{name}{{check="{check}"}} (\d+)$', text, re.M)
    assert m, text[-2000:]
    return int(m.group(1))


def test_readyz_reports_a_hung_database_as_timeout(veh_enc):
    """PostgreSQL stopped with SIGSTOP: the probe cannot return, /readyz
    still answers at once and names the check that hangs."""
    st = veh_enc
    pids = postgres_pids(st)
    assert pids
    for p in pids:
        os.kill(p, signal.SIGSTOP)
    try:
        assert wait_for(lambda: readyz(st, budget=0.5).status_code == 503, 10, 0.2)
        doc = readyz(st).json()
        assert doc["checks"]["database"] in ("timeout", "unavailable"), doc
        assert doc["checks"]["token"] == "ok" or doc["checks"]["token"] == "timeout"
    finally:
        for p in pids:
            os.kill(p, signal.SIGCONT)
    assert wait_for(lambda: readyz(st).status_code == 200, 30, 0.2)
