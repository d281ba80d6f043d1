"""Issue 12 hardening of the session protocol, end to end against real kmsd,
PostgreSQL and SoftHSM: replays of every refusal are replays (and audit
once), the clock check uses the database's clock, nonces expire by their
own ts, the database itself refuses a suspended device whatever kmsd has
cached, and pairing policies are checked in both directions."""
import datetime
import json
import os
import subprocess
import textwrap
import time
import uuid

import pytest

from conftest import _finish, running_stack
from helpers import error_code as code, get_key, post, uid, veh_enc_stack
import helpers

SKEW = 60


@pytest.fixture(scope="module")
def hs():
    st = veh_enc_stack("qkms-hard", {"QKMS_PROTOCOL_CLOCK_SKEW": str(SKEW),
                                     "QKMS_DEVICE_KEY_CACHE_TTL": "3600"})
    yield st
    _finish(st)


def dev(st, type_, group=None):
    return helpers.make_device(st, type_, group or st.group, keys=1)


def refused_audits(st, device_id):
    return int(st.psql(f"SELECT count(*) FROM audit_log WHERE event = 'session.refused' "
                       f"AND device_id = '{device_id}'").strip())


def is_replay(r):
    return r.status_code == 401 and code(r) == "unauthenticated"


# ---- replays of refusals -----------------------------------------------------

def test_replayed_policy_denied_is_a_replay_and_audited_once(hs):
    veh, veh2 = dev(hs, "vehicle"), dev(hs, "vehicle")  # no vehicle-vehicle policy
    req = veh.key_request(uid(), veh2.device_id)
    r = post(hs, req)
    assert r.status_code == 403 and code(r) == "policy_denied"
    assert refused_audits(hs, veh.device_id) == 1
    for _ in range(3):
        assert is_replay(post(hs, req))
    assert refused_audits(hs, veh.device_id) == 1


def test_replayed_unknown_peer_and_peer_inactive_are_replays(hs):
    veh, enc = dev(hs, "vehicle"), dev(hs, "encryptor")
    req = veh.key_request(uid(), "NO-SUCH-" + uuid.uuid4().hex[:8])
    r = post(hs, req)
    assert r.status_code == 422 and code(r) == "unknown_peer"
    assert is_replay(post(hs, req))
    hs.admin("POST", f"/v1/admin/devices/{enc.device_id}/suspend")
    req = veh.key_request(uid(), enc.device_id)
    r = post(hs, req)
    assert r.status_code == 422 and code(r) == "peer_inactive"
    assert is_replay(post(hs, req))


def test_replayed_ended_is_a_replay(hs):
    veh, enc = dev(hs, "vehicle"), dev(hs, "encryptor")
    sid = uid()
    get_key(hs, veh, sid, enc)
    assert post(hs, veh.end_request(sid)).status_code == 200
    req = enc.key_request(sid, veh.device_id)
    r = post(hs, req)
    assert r.status_code == 409 and code(r) == "session_ended"
    assert is_replay(post(hs, req))


def test_replayed_device_inactive_is_a_replay(hs):
    veh, enc = dev(hs, "vehicle"), dev(hs, "encryptor")
    hs.admin("POST", f"/v1/admin/devices/{veh.device_id}/suspend")
    req = veh.key_request(uid(), enc.device_id)
    r = post(hs, req)
    assert r.status_code == 403 and code(r) == "device_inactive"
    assert is_replay(post(hs, req))


def test_end_request_replayed_is_refused(hs):
    """The same end request twice: the second is a replay, not "ended"."""
    veh, enc = dev(hs, "vehicle"), dev(hs, "encryptor")
    sid = uid()
    get_key(hs, veh, sid, enc)
    req = veh.end_request(sid)
    assert post(hs, req).status_code == 200
    r = post(hs, req)
    assert is_replay(r), r.text
    # A fresh end request for the ended session is told so (not a replay).
    r = post(hs, veh.end_request(sid))
    assert r.status_code == 409 and code(r) == "session_ended"
    # An end request for an unknown session, replayed.
    req = veh.end_request(uid())
    assert post(hs, req).status_code == 404
    assert is_replay(post(hs, req))


# ---- the clock check uses the database's clock ----------------------------------

def db_now(st):
    return int(st.psql("SELECT floor(extract(epoch FROM now()))::bigint").strip())


def test_ts_bounds_are_inclusive_and_nonce_expiry_follows_ts(hs):
    veh, enc = dev(hs, "vehicle"), dev(hs, "encryptor")
    # Upper bound: now + skew passes (time only moves towards it), one
    # second beyond plus margin for the request's own time does not.
    ts = db_now(hs) + SKEW
    req = veh.key_request(uid(), enc.device_id, ts=ts)
    assert post(hs, req).status_code == 200
    exp = hs.psql(f"SELECT floor(extract(epoch FROM n.expires_at))::bigint FROM request_nonces n "
                  f"JOIN devices d ON d.id = n.device_pk WHERE d.device_id = '{veh.device_id}'")
    assert [int(x) for x in exp.split()] == [ts + SKEW + 1], exp
    r = post(hs, veh.key_request(uid(), enc.device_id, ts=db_now(hs) + SKEW + 3))
    assert r.status_code == 401
    r = post(hs, veh.key_request(uid(), enc.device_id, ts=db_now(hs) - SKEW - 1))
    assert r.status_code == 401
    r = post(hs, veh.end_request(uid(), ts=db_now(hs) - SKEW - 1))
    assert r.status_code == 401
    assert "timestamp outside the clock window" in hs.logs()


SHIFT_C = textwrap.dedent("""
    #define _GNU_SOURCE
    #include <dlfcn.h>
    #include <stdlib.h>
    #include <time.h>
    /* kmsd's wall clock, QKMS_TEST_CLOCK_SHIFT seconds off the real one. */
    static long shift(void) { const char *s = getenv("QKMS_TEST_CLOCK_SHIFT"); return s ? atol(s) : 0; }
    time_t time(time_t *t) {
        struct timespec ts; clock_gettime(CLOCK_REALTIME, &ts);
        if (t) *t = ts.tv_sec;
        return ts.tv_sec;
    }
    int clock_gettime(clockid_t id, struct timespec *ts) {
        static int (*real)(clockid_t, struct timespec *);
        if (!real) real = (int (*)(clockid_t, struct timespec *))dlsym(RTLD_NEXT, "clock_gettime");
        int rc = real(id, ts);
        if (rc == 0 && (id == CLOCK_REALTIME || id == CLOCK_REALTIME_COARSE)) ts->tv_sec += shift();
        return rc;
    }
""")


@pytest.fixture
def shifted(tmp_path):
    """A kmsd whose own clock is 10 minutes ahead of the database's."""
    src, lib = tmp_path / "shift.c", tmp_path / "libshift.so"
    src.write_text(SHIFT_C)
    subprocess.run(["cc", "-shared", "-fPIC", "-o", str(lib), str(src), "-ldl"], check=True)
    asan = os.environ.get("ASAN_OPTIONS", "")
    st = veh_enc_stack("qkms-clock", {
        "LD_PRELOAD": str(lib), "QKMS_TEST_CLOCK_SHIFT": "600",
        "QKMS_PROTOCOL_CLOCK_SKEW": str(SKEW),
        "ASAN_OPTIONS": (asan + ":" if asan else "") + "verify_asan_link_order=0"})
    yield st
    _finish(st)


def test_ts_judged_by_the_database_clock(shifted):
    st = shifted
    veh, enc = dev(st, "vehicle"), dev(st, "encryptor")
    # kmsd runs with its clock shifted (its log lines are stamped by it).
    last = json.loads(st.logs().strip().splitlines()[-1])["ts"]
    stamped = datetime.datetime.strptime(last, "%Y-%m-%dT%H:%M:%S.%fZ").replace(
        tzinfo=datetime.timezone.utc).timestamp()
    assert abs(stamped - (time.time() + 600)) < 30, last
    now = db_now(st)
    # A device in step with the database is accepted, one in step with this
    # kmsd's (wrong) clock is not: one clock for all instances.
    assert post(st, veh.key_request(uid(), enc.device_id, ts=now)).status_code == 200
    r = post(st, veh.key_request(uid(), enc.device_id, ts=now + 600))
    assert r.status_code == 401
    assert post(st, veh.end_request(uid(), ts=now)).status_code == 404
    assert post(st, veh.end_request(uid(), ts=now + 600)).status_code == 401


# ---- revocation: the database's own check, whatever kmsd has cached ----------------

def test_suspended_in_the_database_is_refused_despite_the_cache(hs):
    veh, enc = dev(hs, "vehicle"), dev(hs, "encryptor")
    # Warm this instance's device-key cache (TTL an hour here).
    assert post(hs, veh.key_request(uid(), enc.device_id)).status_code == 200
    # Suspend behind kmsd's back: no cache invalidation, the cached row
    # still says active. The request's own transaction must refuse.
    hs.psql(f"UPDATE devices SET state = 'suspended' WHERE device_id = '{veh.device_id}'")
    r = post(hs, veh.key_request(uid(), enc.device_id))
    assert r.status_code == 403 and code(r) == "device_inactive", r.text
    # Revoked the same way: refused as unauthenticated, by the database.
    hs.psql(f"UPDATE devices SET state = 'revoked', revoked_at = now() "
            f"WHERE device_id = '{veh.device_id}'")
    assert post(hs, veh.key_request(uid(), enc.device_id)).status_code == 401


# ---- pairing policies in both directions -------------------------------------------

@pytest.mark.parametrize("first", ["vehicle", "encryptor"])
def test_same_group_policy_both_directions(hs, first):
    """The module's veh-enc policy is same-group: whoever asks first, a
    vehicle and an encryptor of different groups are refused."""
    g_other = "o-" + uuid.uuid4().hex[:6]
    veh, enc = dev(hs, "vehicle"), dev(hs, "encryptor")
    veh_far, enc_far = dev(hs, "vehicle", g_other), dev(hs, "encryptor", g_other)
    pairs_ok = [(veh, enc), (veh_far, enc_far)]
    pairs_denied = [(veh, enc_far), (veh_far, enc)]
    for v, e in pairs_ok:
        a, b = (v, e) if first == "vehicle" else (e, v)
        sid = uid()
        assert get_key(hs, a, sid, b).key == get_key(hs, b, sid, a).key
    for v, e in pairs_denied:
        a, b = (v, e) if first == "vehicle" else (e, v)
        r = post(hs, a.key_request(uid(), b.device_id))
        assert r.status_code == 403 and code(r) == "policy_denied", (first, r.text)


@pytest.mark.parametrize("first", ["vehicle", "encryptor"])
def test_cross_group_policy_both_directions(hs, first):
    """A policy for vehicles of group A with encryptors of group B: the pair
    in those groups pairs whoever asks first; the groups swapped do not."""
    ga, gb = "ga-" + uuid.uuid4().hex[:6], "gb-" + uuid.uuid4().hex[:6]
    name = "x-" + ga
    r = hs.admin("POST", "/v1/admin/policies", json={
        "name": name, "type_a": "vehicle", "type_b": "encryptor", "group_a": ga, "group_b": gb})
    assert r.status_code == 201, r.text
    try:
        veh_a, enc_b = dev(hs, "vehicle", ga), dev(hs, "encryptor", gb)
        veh_b, enc_a = dev(hs, "vehicle", gb), dev(hs, "encryptor", ga)
        a, b = (veh_a, enc_b) if first == "vehicle" else (enc_b, veh_a)
        sid = uid()
        assert get_key(hs, a, sid, b).key == get_key(hs, b, sid, a).key
        # The groups swapped: a vehicle of B with an encryptor of A.
        a, b = (veh_b, enc_a) if first == "vehicle" else (enc_a, veh_b)
        r = post(hs, a.key_request(uid(), b.device_id))
        assert r.status_code == 403 and code(r) == "policy_denied", (first, r.text)
        # Across the named groups with types the policy does not name.
        veh_b2 = dev(hs, "vehicle", gb)
        a, b = (veh_a, veh_b2) if first == "vehicle" else (veh_b2, veh_a)
        r = post(hs, a.key_request(uid(), b.device_id))
        assert r.status_code == 403 and code(r) == "policy_denied", (first, r.text)
    finally:
        hs.admin("DELETE", f"/v1/admin/policies/{name}")
