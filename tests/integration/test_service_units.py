"""The service tests (tests/service/*.c): each binary is the key service as
kmsd builds it, linked without libmicrohttpd, run against a real PostgreSQL
and SoftHSM token provisioned here (kmsd started once so the schema and the
master key exist, then stopped: the service tests are the only client).

Also checked: the binaries really do not link libmicrohttpd, so the service
layer cannot have grown an HTTP dependency.
"""
import os
import subprocess

import pytest

from conftest import running_stack, _finish

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")


def _binaries():
    env = os.environ.get("QKMS_SVC_TESTS", "").split()
    if env:
        return env
    d = os.path.join(ROOT, "build", "asan", "tests", "service")
    if not os.path.isdir(d):
        return []
    return sorted(os.path.join(d, f) for f in os.listdir(d)
                  if f.startswith("test_") and "." not in f)


BINS = _binaries()


@pytest.fixture(scope="module")
def provisioned():
    st = running_stack("svc")
    rc = st.stop()
    assert rc == 0, st.logs()[-4000:]
    yield st
    _finish(st)


def test_service_tests_exist():
    assert BINS, "no service test binaries (make service-tests)"


@pytest.mark.parametrize("binary", BINS, ids=[os.path.basename(b) for b in BINS])
def test_service_binary(provisioned, binary):
    env = dict(provisioned.env)
    env["QKMS_TEST_CONF"] = provisioned.conf
    p = subprocess.run([binary], env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, f"{binary} exited {p.returncode}:\n{p.stdout[-6000:]}\n{p.stderr[-6000:]}"


@pytest.mark.parametrize("binary", BINS, ids=[os.path.basename(b) for b in BINS])
def test_service_binary_has_no_http(binary):
    p = subprocess.run(["ldd", binary], capture_output=True, text=True, check=True)
    assert "libmicrohttpd" not in p.stdout
    syms = subprocess.run(["nm", "-u", binary], capture_output=True, text=True, check=True).stdout
    assert "MHD_" not in syms
