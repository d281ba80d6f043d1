"""The random-IV budget of a master key (issue 12, item 4; SP 800-38D 8.3).

kmsd counts every AES-GCM invocation with a new random IV under a master
key version (key wraps, audit checkpoint MACs) in master_keys.wrap_count and
rotates the active version automatically at master_key_wrap_limit. Here the
limit is tiny: the count must match what is stored under the version, and
session keys (wrapped, then destroyed when the session ends) must drive it
to the limit and trigger one rotation, not a cascade.
"""
import re
import time
import uuid

from conftest import wait_for
from helpers import get_key, make_device, post

LIMIT = 150


def wrap_counts(st):
    out = st.psql("SELECT version, wrap_count, state FROM master_keys ORDER BY version")
    return {int(v): (int(n), s) for v, n, s in (l.split("|") for l in out.split())}


def stored_under(st, version):
    """Wraps under version that are still in the database."""
    return int(st.psql(
        f"SELECT (SELECT count(*) FROM device_keys WHERE master_version = {version})"
        f" + (SELECT count(*) FROM sessions WHERE master_version = {version})"
        f" + (SELECT count(*) FROM audit_checkpoints WHERE master_version = {version})"
        f" + (SELECT count(*) FROM session_hash_key WHERE master_version = {version})"))


def test_wrap_budget_counts_and_rotates(fresh_stack):
    st = fresh_stack
    st.start(extra_env={"QKMS_MASTER_KEY_WRAP_LIMIT": str(LIMIT),
                        "QKMS_MAINTENANCE_INTERVAL": "1"})
    assert st.admin("POST", "/v1/admin/policies",
                    json={"name": "all", "type_a": "*", "type_b": "*"}).status_code == 201
    veh, enc = make_device(st, "vehicle", keys=2), make_device(st, "encryptor", keys=2)
    # The database count is exactly the wraps made: 4 device keys, the
    # session-ID hash key (docs/sessions.md) and the audit checkpoints' MACs,
    # recorded by the maintenance loop within ~1 s.
    assert wait_for(lambda: wrap_counts(st)[1][0] == stored_under(st, 1), timeout=15), (
        wrap_counts(st), stored_under(st, 1))
    assert wrap_counts(st)[1][0] >= 4
    m = st.admin("GET", "/metrics").text
    assert re.search(r'^qkms_master_key_wraps\{version="1"\} \d+$', m, re.M), m[-2000:]
    assert f"qkms_master_key_wrap_limit {LIMIT}" in m

    # Session keys: wrapped under the active version, gone when the session
    # ends, so the stored count stays small while the wrap count grows.
    sessions = 0
    deadline = time.time() + 120
    while time.time() < deadline and st.admin("GET", "/v1/admin/master").json()["active"] == 1:
        sid = f"WB-{uuid.uuid4().hex[:12]}"
        get_key(st, veh, sid, enc)
        r = post(st, veh.end_request(sid))
        assert r.status_code == 200, r.text
        sessions += 1
    status = st.admin("GET", "/v1/admin/master").json()
    assert status["active"] == 2, (status, sessions, wrap_counts(st))
    counts = wrap_counts(st)
    cps_v1 = int(st.psql("SELECT count(*) FROM audit_checkpoints WHERE master_version = 1"))
    # Version 1 reached the limit, and its count is no more than the wraps
    # that can have been made under it: 4 device keys and the hash key, at
    # most one per session, one per checkpoint. (Rotation came at the limit,
    # not earlier.)
    assert LIMIT <= counts[1][0] <= 5 + sessions + cps_v1, (counts, sessions, cps_v1)
    assert sessions <= LIMIT + 100, (sessions, counts)  # nor much later
    assert counts[1][1] in ("retired", "destroyed"), counts
    assert "master key wrap budget reached; rotating" in st.logs()
    rec = [x for x in st.log_records() if x.get("msg") == "master key wrap budget reached; rotating"]
    assert len(rec) == 1 and rec[0]["version"] == 1 and rec[0]["limit"] == LIMIT, rec
    actors = st.psql("SELECT actor FROM audit_log WHERE event = 'master.rotated'").split()
    assert actors == ["kmsd"], actors

    # The rewrap moves the 4 device keys and the hash key to version 2: far
    # below the limit,
    # so no further rotation follows; version 1 is destroyed in time.
    assert wait_for(lambda: wrap_counts(st)[1][1] == "destroyed", timeout=60), wrap_counts(st)
    time.sleep(3)
    counts = wrap_counts(st)
    assert sorted(counts) == [1, 2] and counts[2][1] == "active", counts
    assert 5 <= counts[2][0] < LIMIT, counts
    m = st.admin("GET", "/metrics").text
    assert "qkms_master_key_budget_rotations_total 1" in m, m[-2000:]
    # Keys still flow under the new version.
    sid = f"WB-after-{uuid.uuid4().hex[:8]}"
    assert get_key(st, veh, sid, enc).key == get_key(st, enc, sid, veh).key
