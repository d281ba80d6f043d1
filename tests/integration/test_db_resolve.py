"""kmsd reaches PostgreSQL by a host name that a DNS server of this test
answers for (store/pgresolve.h). kmsd runs in a private mount namespace
(unshare -m) whose /etc/resolv.conf names that server and nothing else, so
the test decides what the resolver does: answer, stay silent (a container
engine's DNS while a container restarts), or say the name does not exist.

What must hold: the lookup never holds a connect past its deadline (glibc
alone would wait timeout x attempts = 10 s here); while the resolver is
silent kmsd keeps using the addresses the name last had; a name that is
gone is a quick 503 and /readyz names the database; all of it heals when
the resolver answers again, without restarting kmsd."""
import os
import shutil
import socket
import struct
import subprocess
import threading
import time
import uuid

import pytest
import requests

from conftest import KMSD, Stack, _finish, wait_for
from helpers import ask_key, make_device

DNS_ADDR = "127.0.0.153"
NAME = "pg.qkms-test"

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("unshare"),
    reason="needs root and unshare for a private mount namespace")


class FakeDNS:
    """A UDP DNS server for one name: A -> 127.0.0.1, AAAA -> no data.
    mode: "answer", "silent" (reads and drops) or "nxdomain"."""

    def __init__(self):
        self.mode = "answer"
        self.queries = []
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((DNS_ADDR, 53))
        self.sock.settimeout(0.2)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        while not self.stop.is_set():
            try:
                q, peer = self.sock.recvfrom(512)
            except socket.timeout:
                continue
            if len(q) < 12:
                continue
            qid, flags = struct.unpack("!HH", q[:4])
            # The question: labels, then type and class.
            i, labels = 12, []
            while i < len(q) and q[i] != 0:
                labels.append(q[i + 1:i + 1 + q[i]].decode("ascii", "replace"))
                i += 1 + q[i]
            qname, question = ".".join(labels).lower(), q[12:i + 5]
            qtype = struct.unpack("!H", q[i + 1:i + 3])[0] if i + 3 <= len(q) else 0
            self.queries.append((time.time(), qname, qtype, self.mode))
            if self.mode == "silent":
                continue
            known = qname == NAME and self.mode == "answer"
            rcode = 0 if known else 3
            answers = b""
            if known and qtype == 1:
                answers = (b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 5, 4)
                           + socket.inet_aton("127.0.0.1"))
            head = struct.pack("!HHHHHH", qid, 0x8180 | rcode | (flags & 0x0100), 1,
                               1 if answers else 0, 0, 0)
            self.sock.sendto(head + question + answers, peer)

    def close(self):
        self.stop.set()
        self.thread.join(timeout=5)
        self.sock.close()


@pytest.fixture(scope="module")
def dns():
    d = FakeDNS()
    yield d
    d.close()


@pytest.fixture(scope="module")
def named(dns):
    """kmsd with db_conninfo host=pg.qkms-test, in a mount namespace whose
    resolver is the FakeDNS (glibc's defaults: 5 s timeout, 2 attempts)."""
    st = Stack("resolve")
    try:
        resolv = os.path.join(st.state, "resolv.conf")
        with open(resolv, "w") as f:
            f.write(f"nameserver {DNS_ADDR}\noptions timeout:5 attempts:2\n")
        env = dict(st.env, QKMS_DB_CONNINFO=(
            f"host={NAME} port={st.pg_port} dbname=qkms user=qkms "
            f"passfile={st.state}/secrets/pgpass connect_timeout=2"))
        st.log = open(st.log_path, "ab")
        setup = 'mount --bind "$2" /etc/resolv.conf && exec "$0" -c "$1"'
        st.proc = subprocess.Popen(["unshare", "-m", "sh", "-c", setup, KMSD, st.conf, resolv],
                                   env=env, stdout=st.log, stderr=st.log)
        st.wait_ready()
        r = st.admin("POST", "/v1/admin/policies", json={
            "name": "veh-enc", "type_a": "vehicle", "type_b": "encryptor"})
        assert r.status_code == 201, r.text
        st.veh, st.enc = make_device(st, "vehicle"), make_device(st, "encryptor")
    except BaseException:
        st.destroy()
        raise
    yield st
    _finish(st)


def session(st):
    """One paired session: the two answers' statuses and how long the
    slower request took."""
    sid, out, slowest = f"R-{uuid.uuid4().hex}", [], 0.0
    for a, b in ((st.veh, st.enc), (st.enc, st.veh)):
        t = time.time()
        _, r = ask_key(st, a, sid, b)
        slowest = max(slowest, time.time() - t)
        out.append(r.status_code)
    return out, slowest


def restart_db(st):
    """Every pooled connection dies: the next requests must connect anew."""
    st.stop_db()
    st.start_db()


def readyz(st):
    r = requests.get(st.url + "/readyz", timeout=10)
    return r.status_code, r.json()["checks"]


def test_kmsd_resolves_the_name_itself(named, dns):
    assert session(named)[0] == [200, 200]
    asked = {(q[1], q[2]) for q in dns.queries}
    assert (NAME, 1) in asked, asked  # A, looked up through this resolver


def test_silent_resolver_keeps_the_last_address(named, dns):
    dns.mode = "silent"
    try:
        restart_db(named)
        # Right after the restart the pool may still be backing off from the
        # refusals while PostgreSQL was down (503s); then sessions work
        # again with the resolver still silent. No request waits for glibc's
        # 10 s: the lookup ends at half the connect deadline (1 s).
        tries = []
        assert wait_for(lambda: tries.append(session(named)) or tries[-1][0] == [200, 200], 20,
                        0.2), (tries[-5:], named.logs()[-3000:])
        assert max(t for _, t in tries) < 4, tries
        assert "using its last addresses" in named.logs()
        assert wait_for(lambda: readyz(named)[0] == 200, 10)
    finally:
        dns.mode = "answer"
    restart_db(named)
    assert wait_for(lambda: session(named)[0] == [200, 200], 20, 0.2)
    assert wait_for(lambda: "database host name resolves again" in named.logs(), 10)


def test_name_gone_is_a_quick_503_and_heals(named, dns):
    dns.mode = "nxdomain"
    try:
        restart_db(named)
        time.sleep(6)  # past the pool's reconnect backoff (5 s at most)
        t = time.time()
        _, r = ask_key(named, named.veh, f"R-{uuid.uuid4().hex}", named.enc)
        assert r.status_code == 503 and r.json()["error"]["code"] == "unavailable", r.text
        assert time.time() - t < 3
        assert wait_for(lambda: readyz(named)[1]["database"] != "ok", 10)
        # Gone means forgotten: a silent resolver now has nothing to fall back on,
        # and the answer still comes within the connect deadline.
        dns.mode = "silent"
        time.sleep(6)  # past the pool's reconnect backoff (5 s at most)
        t = time.time()
        _, r = ask_key(named, named.veh, f"R-{uuid.uuid4().hex}", named.enc)
        took = time.time() - t
        assert r.status_code == 503, r.text
        assert took < 4.5, took
        code, checks = readyz(named)
        assert code == 503 and checks["database"] in ("timeout", "unavailable"), checks
        assert "no answer from the resolver in time" in named.logs()
    finally:
        dns.mode = "answer"
    assert wait_for(lambda: readyz(named)[0] == 200, 30)
    assert session(named)[0] == [200, 200]
