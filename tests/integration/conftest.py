"""Fixtures that run the real stack: a fresh PostgreSQL 15 cluster and a
SoftHSMv2 token in a temporary state directory (made by the same
scripts/qkms-local.sh that `make run` uses), and kmsd on a free loopback port.

Later issues reuse `stack` (shared by a test module) and `fresh_stack`
(one per test, for tests that break things).
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import pytest
import requests

# helpers.py holds the helpers the test modules share; its asserts should
# explain themselves like a test module's.
pytest.register_assert_rewrite("helpers")

import openapi_check  # noqa: E402  (after the rewrite registration)

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
KMSD = os.environ.get("QKMS_KMSD", os.path.join(ROOT, "build/asan/bin/kmsd"))
KMSCTL = os.environ.get("QKMS_KMSCTL", os.path.join(ROOT, "build/asan/bin/kmsctl"))
LOCAL = os.path.join(ROOT, "scripts", "qkms-local.sh")
SOFTHSM = "/usr/lib/softhsm/libsofthsm2.so"


# Every answer kmsd gives a test through requests (Stack.api, helpers.post,
# requests.get...) is checked against docs/openapi.yaml (openapi_check.py);
# the session fails at its end if one did not match. QKMS_OPENAPI_CHECK=0
# turns it off; QKMS_OPENAPI_REPORT=FILE writes the findings there as JSON.
OPENAPI = (None if os.environ.get("QKMS_OPENAPI_CHECK") == "0"
           else openapi_check.Recorder(openapi_check.Spec(openapi_check.load())))

if OPENAPI:
    _send = requests.Session.send

    def _checked_send(self, request, **kw):
        r = _send(self, request, **kw)
        try:
            OPENAPI.observe(r, streamed=kw.get("stream", False))
        except Exception as e:  # a bug of the checker must not change the test
            OPENAPI.violations.append({"problem": f"checker error: {e!r}", "test": "?",
                                       "status": r.status_code, "body": ""})
        return r

    requests.Session.send = _checked_send


def pytest_sessionfinish(session, exitstatus):
    if not OPENAPI:
        return
    if os.environ.get("QKMS_OPENAPI_REPORT"):
        documented, seen = OPENAPI.coverage()
        with open(os.environ["QKMS_OPENAPI_REPORT"], "w") as f:
            json.dump({"checked": OPENAPI.checked, "violations": OPENAPI.violations,
                       "unseen": sorted(documented - seen)}, f, indent=1)
    if OPENAPI.violations and session.exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter):
    if not OPENAPI or not OPENAPI.checked:
        return
    if OPENAPI.violations:
        terminalreporter.section("docs/openapi.yaml", red=True)
        terminalreporter.write_line(OPENAPI.report())
    else:
        documented, seen = OPENAPI.coverage()
        terminalreporter.write_line(
            f"docs/openapi.yaml: {OPENAPI.checked} answers of kmsd checked, all as documented "
            f"({len(seen)} of {len(documented)} documented route/status pairs seen)")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(pred, timeout=20, interval=0.2):
    """Calls pred() every interval seconds until it is true (True) or
    timeout seconds pass (False)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if pred():
            return True
        time.sleep(interval)
    return False


def wait_readyz(url, timeout, alive=lambda: None):
    """Polls url + /readyz until it answers 200 (True) or timeout seconds
    pass (False). alive() runs before each try: it raises if the server is
    known to be gone, so that a dead kmsd fails at once."""
    def ready():
        alive()
        try:
            return requests.get(url + "/readyz", timeout=2).status_code == 200
        except requests.ConnectionError:
            return False

    return wait_for(ready, timeout, 0.1)


class Stack:
    """One state directory: PostgreSQL cluster + SoftHSM token + kmsd."""

    def __init__(self, name="qkms", init=True):
        self.state = tempfile.mkdtemp(prefix=f"{name}-", dir="/tmp")
        self.pg_port = free_port()
        self.port = free_port()
        self.proc = None
        self.log_path = os.path.join(self.state, "kmsd.log")
        self.env = dict(os.environ)
        self.env.update(
            QKMS_STATE=self.state,
            QKMS_PG_PORT=str(self.pg_port),
            QKMS_PORT=str(self.port),
            SOFTHSM2_CONF=os.path.join(self.state, "softhsm", "softhsm2.conf"),
            # Tests that hammer kmsd test other things: no rate limits unless
            # a test sets them (test_ratelimit.py).
            QKMS_RATE_LIMIT_DEVICE="0", QKMS_RATE_LIMIT_CLIENT="0", QKMS_RATE_LIMIT_ADMIN="0",
        )
        if init:  # init=False: an empty state dir (e.g. to restore a backup into)
            self.local("init")

    # -- infrastructure -------------------------------------------------
    def local(self, cmd):
        subprocess.run(["sh", LOCAL, cmd], env=self.env, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=120)

    def stop_db(self):
        self.local("stop-db")

    def start_db(self):
        self.local("start-db")

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    @property
    def conf(self):
        return os.path.join(self.state, "kmsd.conf")

    @property
    def admin_token(self):
        with open(os.path.join(self.state, "admin.token")) as f:
            return f.read().strip()

    @property
    def token_pin(self):
        with open(os.path.join(self.state, "secrets", "token.pin")) as f:
            return f.read().strip()

    @property
    def pg_dsn(self):
        return (f"host={self.state}/pg/run port={self.pg_port} dbname=qkms user=qkms "
                f"passfile={self.state}/secrets/pgpass")

    # -- kmsd -------------------------------------------------------------
    def start(self, extra_env=None, wait=True, args=(), wrap=()):
        """wrap: a command line that runs kmsd (prlimit, setpriv ...)."""
        env = dict(self.env)
        env.update(extra_env or {})
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([*wrap, KMSD, "-c", self.conf, *args], env=env,
                                     stdout=self.log, stderr=self.log)
        if OPENAPI:
            OPENAPI.ports.add(self.port)
        if wait:
            self.wait_ready()
        return self.proc

    def wait_ready(self, timeout=60):
        def alive():
            if self.proc.poll() is not None:
                raise RuntimeError(f"kmsd exited with {self.proc.returncode}:\n{self.logs()[-4000:]}")

        if not wait_readyz(self.url, timeout, alive):
            raise RuntimeError("kmsd not ready in time:\n" + self.logs()[-4000:])

    def stop(self, sig=signal.SIGTERM, timeout=30):
        """Stop kmsd; returns its exit code (sanitizer reports make it non-zero)."""
        if OPENAPI:
            # Also when a test already reaped kmsd itself: the port may next
            # belong to some other server (a QRNG simulator) that the
            # checker must not take for kmsd.
            OPENAPI.ports.discard(self.port)
        if not self.proc:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        rc = self.proc.returncode
        self.proc = None
        self.log.close()
        return rc

    def restart(self, **kw):
        rc = self.stop()
        assert rc == 0, f"kmsd exited with {rc} on SIGTERM:\n{self.logs()[-4000:]}"
        return self.start(**kw)

    def logs(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def log_records(self):
        out = []
        for line in self.logs().splitlines():
            if line.startswith("{"):
                out.append(json.loads(line))
        return out

    # -- clients ------------------------------------------------------------
    def api(self, method, path, token=None, **kw):
        headers = kw.pop("headers", {})
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        return requests.request(method, self.url + path, headers=headers, timeout=30, **kw)

    def admin(self, method, path, **kw):
        return self.api(method, path, token=self.admin_token, **kw)

    def kmsctl(self, *args, token=None, check=False):
        env = dict(self.env)
        env["KMS_ADDR"] = self.url
        if token is not None:
            env["KMS_TOKEN"] = token
        p = subprocess.run([KMSCTL, *args], env=env, capture_output=True, text=True, timeout=60)
        if check and p.returncode != 0:
            raise AssertionError(f"kmsctl {args} -> {p.returncode}: {p.stderr}")
        return p

    def psql(self, sql):
        """Run SQL as the qkms role (for tests that inspect or tamper with rows)."""
        p = subprocess.run(["psql", "-X", "-q", "-At", "-d", self.pg_dsn, "-c", sql],
                           capture_output=True, text=True, timeout=60)
        if p.returncode != 0:
            raise AssertionError(p.stderr)
        return p.stdout

    def destroy(self):
        try:
            self.stop()
        finally:
            try:
                self.stop_db()
            finally:
                shutil.rmtree(self.state, ignore_errors=True)


def _finish(st):
    rc = st.stop()
    logs = st.logs()
    st.destroy()
    # Every kmsd a test started must stop cleanly on SIGTERM, sanitizers
    # included (ASan/LSan/UBSan reports make the exit code non-zero).
    if rc not in (None, 0):
        start = logs.find("ERROR: ")  # a sanitizer report starts here
        report = logs[start:start + 8000] if start >= 0 else logs[-6000:]
        raise AssertionError(f"kmsd exited with {rc}:\n{report}")
    # Every log line's fields are those its format names (kmsd/log.c): a
    # format the logger cannot read marks the line instead.
    bad = [line for line in logs.splitlines() if '"log_format_error"' in line]
    if bad:
        raise AssertionError("log lines with a format kmsd/log.c cannot read:\n" + "\n".join(bad[:5]))


def running_stack(name="qkms", extra_env=None):
    """A started Stack; if kmsd fails to start, nothing is left behind."""
    st = Stack(name)
    try:
        st.start(extra_env=extra_env)
    except BaseException:
        st.destroy()
        raise
    return st


@pytest.fixture(scope="module")
def stack():
    st = running_stack()
    yield st
    _finish(st)


@pytest.fixture
def fresh_stack():
    st = Stack()
    yield st
    _finish(st)
