"""Rate limits: per authenticated device and per client address on the device
API, per token on the admin API; 429 rate_limited with Retry-After, recovery,
SIGHUP reload and metrics. Limits are small (1/s, burst 5) so every test trips
them in a handful of requests and recovers in a second or two."""
import re
import signal
import time
import uuid

import pytest
import requests

from conftest import _finish, wait_for
from helpers import make_device, post, uid, veh_enc_stack
from qkms_proto_py import Device

RATE_KEYS = ("QKMS_RATE_LIMIT_DEVICE", "QKMS_RATE_LIMIT_CLIENT", "QKMS_RATE_LIMIT_ADMIN")


def device(st, type_):
    """A device with one key in the stack's group."""
    return make_device(st, type_, st.group, keys=1)


def assert_limited(r, whose):
    """The one error shape, a whole number of seconds in Retry-After."""
    assert r.status_code == 429, r.text
    assert set(r.json()) == {"error"} and set(r.json()["error"]) == {"code", "message"}
    assert r.json()["error"]["code"] == "rate_limited"
    assert whose in r.json()["error"]["message"]
    assert re.fullmatch(r"[1-9][0-9]*", r.headers["Retry-After"]), r.headers
    assert int(r.headers["Retry-After"]) <= 2  # 1/s: at most a second to the next token
    assert r.headers["Content-Type"] == "application/json" and r.headers.get("X-Request-Id")


def until_limited(send, limit=80):
    """Call send() until it answers 429; returns (answers before, the 429)."""
    before = []
    for _ in range(limit):
        r = send()
        if r.status_code == 429:
            return before, r
        before.append(r)
    raise AssertionError(f"no 429 in {limit} requests: {[x.status_code for x in before][-5:]}")


def metric(st, scope):
    text = requests.get(st.url + "/metrics", timeout=10).text
    m = re.search(r'^qkms_rate_limited_total\{scope="%s"\} (\d+)$' % scope, text, re.M)
    assert m, text[-2000:]
    return int(m.group(1))


# ---- per device (authenticated requests only) ------------------------------------

@pytest.fixture(scope="module")
def dev_stack():
    st = veh_enc_stack("qkms-rl", {"QKMS_RATE_LIMIT_DEVICE": "1",
                                   "QKMS_RATE_LIMIT_DEVICE_BURST": "5"})
    yield st
    _finish(st)


def test_device_limit_trips_and_recovers(dev_stack):
    st = dev_stack
    veh, enc = device(st, "vehicle"), device(st, "encryptor")
    sid = uid()
    before, r = until_limited(lambda: post(st, veh.key_request(sid, enc.device_id)))
    assert len(before) >= 5 and all(x.status_code == 200 for x in before)
    assert_limited(r, "this device")
    # The other device of the same session has its own bucket.
    assert post(st, enc.key_request(sid, veh.device_id)).status_code == 200
    # Ending a session is a device request too (here: unknown sessions, 404).
    before, r = until_limited(lambda: post(st, veh.end_request(uid())), limit=5)
    assert all(x.status_code == 404 for x in before)
    assert_limited(r, "this device")
    # After Retry-After the device is served again.
    time.sleep(int(r.headers["Retry-After"]) + 0.05)
    assert post(st, veh.key_request(sid, enc.device_id)).status_code == 200
    recs = [x for x in st.log_records() if x.get("msg") == "device rate limited"]
    assert recs and all(x["device_id"] == veh.device_id for x in recs)


def test_one_device_does_not_limit_another(dev_stack):
    st = dev_stack
    a, b, c = device(st, "vehicle"), device(st, "encryptor"), device(st, "encryptor")
    until_limited(lambda: post(st, a.key_request(uid(), b.device_id)))
    # b and c each get their full burst while a is limited.
    for dev, peer in ((b, a), (c, a)):
        for _ in range(5):
            r = post(st, dev.key_request(uid(), peer.device_id))
            assert r.status_code == 200, r.text


def test_unauthenticated_requests_do_not_spend_a_device_bucket(dev_stack):
    """Forged requests naming a device (wrong key), and replays of a captured
    request, are refused with 401 and cost the named device nothing."""
    st = dev_stack
    veh, enc = device(st, "vehicle"), device(st, "encryptor")
    forger = Device(veh.device_id, {0: b"\x00" * 16})
    for _ in range(20):
        r = post(st, forger.key_request(uid(), enc.device_id))
        assert r.status_code == 401, r.text
    captured = veh.key_request(uid(), enc.device_id)
    assert post(st, captured).status_code == 200
    for _ in range(20):
        r = post(st, captured)
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthenticated", r.text
    # The victim still has (nearly) its whole burst.
    for _ in range(4):
        r = post(st, veh.key_request(uid(), enc.device_id))
        assert r.status_code == 200, r.text


def test_device_limit_metrics(dev_stack):
    st = dev_stack
    veh, enc = device(st, "vehicle"), device(st, "encryptor")
    n0 = metric(st, "device")
    until_limited(lambda: post(st, veh.key_request(uid(), enc.device_id)))
    refused = 1
    for _ in range(3):
        if post(st, veh.key_request(uid(), enc.device_id)).status_code == 429:
            refused += 1
    assert metric(st, "device") == n0 + refused
    assert metric(st, "client") == 0 and metric(st, "admin") == 0
    text = requests.get(st.url + "/metrics").text
    assert re.search(r'^qkms_rate_limit_buckets\{scope="device"\} [1-9]', text, re.M)
    assert re.search(r'^qkms_http_requests_total\{route="session_key",status="429"\} [1-9]',
                     text, re.M)


# ---- per admin token ---------------------------------------------------------------

def test_admin_limit_is_per_token(fresh_stack):
    st = fresh_stack
    st.start(extra_env={"QKMS_RATE_LIMIT_ADMIN": "1", "QKMS_RATE_LIMIT_ADMIN_BURST": "5"})
    r = st.admin("POST", "/v1/admin/tokens", json={"name": "ops-" + uuid.uuid4().hex[:6],
                                                    "role": "operator"})
    assert r.status_code == 201, r.text
    other = r.json()["token"]
    before, r = until_limited(lambda: st.admin("GET", "/v1/admin/status"))
    assert all(x.status_code == 200 for x in before)
    assert_limited(r, "this token")
    refused = 1
    # Another token is not affected; neither are unauthenticated routes, and
    # a wrong token is still 401 (it has no bucket).
    for _ in range(5):
        assert st.api("GET", "/v1/admin/devices", token=other).status_code == 200
    assert st.api("GET", "/v1/admin/status", token="qkms_" + "0" * 64).status_code == 401
    assert requests.get(st.url + "/healthz").status_code == 200
    # The limited token recovers after Retry-After.
    r = st.admin("GET", "/v1/admin/status")
    if r.status_code == 429:
        refused += 1
        time.sleep(int(r.headers["Retry-After"]) + 0.05)
    else:
        time.sleep(1.05)
    assert st.admin("GET", "/v1/admin/status").status_code == 200
    # Each 429 was counted once; requests are logged with the code.
    assert metric(st, "admin") == refused
    assert metric(st, "device") == 0 and metric(st, "client") == 0
    recs = [x for x in st.log_records() if x.get("error") == "rate_limited"]
    assert recs and recs[0]["status"] == 429 and recs[0]["principal"] == "bootstrap"


# ---- per client address, and SIGHUP ---------------------------------------------------

def set_conf(st, key, value):
    """Replace key's line in kmsd.conf, or append it (the file refuses repeats)."""
    with open(st.conf) as f:
        lines = [l for l in f.read().splitlines() if not re.match(rf"\s*{key}\s*=", l)]
    lines.append(f"{key} = {value}")
    with open(st.conf, "w") as f:
        f.write("\n".join(lines) + "\n")


def reload(st):
    n = st.logs().count("configuration reloaded")
    st.proc.send_signal(signal.SIGHUP)
    if not wait_for(lambda: st.logs().count("configuration reloaded") > n, 5, 0.05):
        raise AssertionError("no reload:\n" + st.logs()[-3000:])


def garbage(st):
    """A device API request that fails to parse: the client limit still counts it."""
    return requests.post(st.url + "/v1/sessions/key", data=b"{}", timeout=30,
                         headers={"Content-Type": "application/json"})


def test_client_limit_and_sighup_reload(fresh_stack):
    st = fresh_stack
    # Limits from the file (the environment would win over it on reload).
    for k in list(st.env):
        if k.startswith("QKMS_RATE_LIMIT_"):
            del st.env[k]
    set_conf(st, "rate_limit_client", "1")
    set_conf(st, "rate_limit_client_burst", "5")
    st.start()
    before, r = until_limited(lambda: garbage(st))
    assert len(before) >= 5 and all(x.status_code == 400 for x in before)
    assert_limited(r, "this client address")
    refused = 1
    # The address's limit covers the admin API too, before the token is
    # looked up (issue 12); the probes are never limited.
    r = st.admin("GET", "/v1/admin/status")
    assert_limited(r, "this client address")
    refused += 1
    assert requests.get(st.url + "/readyz").status_code == 200

    # Unlimited after a reload...
    set_conf(st, "rate_limit_client", "0")
    reload(st)
    for _ in range(30):
        assert garbage(st).status_code == 400
    # ...and limited again, with a smaller burst, after another.
    set_conf(st, "rate_limit_client", "1")
    set_conf(st, "rate_limit_client_burst", "2")
    reload(st)
    before, r = until_limited(lambda: garbage(st))
    assert len(before) <= 4  # burst 2 (plus what refills meanwhile)
    assert_limited(r, "this client address")
    refused += 1
    # A broken file is refused and the running limits kept.
    with open(st.conf, "a") as f:
        f.write("rate_limit_client_burst = 3\n")  # set twice
    st.proc.send_signal(signal.SIGHUP)
    assert wait_for(lambda: "set twice" in st.logs(), 5, 0.05)
    assert "set twice" in st.logs()
    r = garbage(st)
    if r.status_code == 429:
        refused += 1
    time.sleep(1.05)
    assert garbage(st).status_code == 400
    assert metric(st, "client") == refused
    assert metric(st, "device") == 0
