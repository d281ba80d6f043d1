"""The key request's token operations (issue 14, docs/performance.md):
device keys kept unwrapped in the secure heap, no candidate session key for
a session this kmsd has seen exist, and the creating request delivered its
own candidate without unwrapping it again. Each saves a token operation;
none may change an answer: both parties still hold the same key, a key row
changed or a device suspended behind kmsd's back is still refused (see also
test_sessions_hardening), and a wrong hint costs a round trip, not a
request."""
import re
import time

import pytest

from conftest import Stack, _finish
from helpers import error_code, get_key, make_device, post, uid


def metric(st, name, labels):
    m = re.search(rf'^{name}{{{labels}}} (\d+)$', st.admin("GET", "/metrics").text, re.M)
    assert m, f"{name}{{{labels}}} not in /metrics"
    return int(m.group(1))


def unwrapped_hits(st):
    return metric(st, "qkms_device_key_unwrapped_cache_total", 'result="hit"')


def candidates(st):
    return (metric(st, "qkms_session_candidate_keys_total", 'result="made"'),
            metric(st, "qkms_session_candidate_keys_total", 'result="skipped"'))


def key_sources(st):
    return (metric(st, "qkms_session_key_sources_total", 'source="candidate"'),
            metric(st, "qkms_session_key_sources_total", 'source="token"'))


def pair_stack(name, extra_env=None, wrap=()):
    st = Stack(name)
    try:
        st.start(extra_env=extra_env, wrap=wrap)
        r = st.admin("POST", "/v1/admin/policies", json={"name": "all", "type_a": "*", "type_b": "*"})
        assert r.status_code == 201, r.text
    except BaseException:
        st.destroy()
        raise
    return st


@pytest.fixture(scope="module")
def hp():
    st = pair_stack("hot")
    yield st
    _finish(st)


def test_device_key_unwrapped_once(hp):
    veh, enc = make_device(hp, "vehicle"), make_device(hp, "encryptor")
    h0 = unwrapped_hits(hp)
    for _ in range(3):
        sid = uid()
        assert get_key(hp, veh, sid, enc).key == get_key(hp, enc, sid, veh).key
    # Each device's first request unwraps (a miss); its next two do not.
    assert unwrapped_hits(hp) - h0 >= 4


def test_key_retired_behind_kmsds_back_is_refused(hp):
    """The key's row changes in the database without this kmsd knowing (a
    maintenance pass, another instance): the unwrapped key still opens the
    request, and the request's own transaction refuses it; kmsd then drops
    what it cached for the device."""
    veh, enc = make_device(hp, "vehicle"), make_device(hp, "encryptor")
    get_key(hp, veh, uid(), enc)
    get_key(hp, veh, uid(), enc)  # the unwrapped key is cached now
    hp.psql(f"UPDATE device_keys SET state = 'retired', retired_at = now() "
            f"WHERE device_pk = (SELECT id FROM devices WHERE device_id = '{veh.device_id}')")
    for _ in range(2):
        r = post(hp, veh.key_request(uid(), enc.device_id))
        assert r.status_code == 401 and error_code(r) == "unauthenticated", r.text


def test_second_party_goes_without_a_candidate(hp):
    veh, enc = make_device(hp, "vehicle"), make_device(hp, "encryptor")
    sid = uid()
    made0, skipped0 = candidates(hp)
    src0 = key_sources(hp)
    k1 = get_key(hp, veh, sid, enc)
    assert candidates(hp) == (made0 + 1, skipped0)
    # The creator got its own candidate, no unwrap of the row it wrote.
    assert key_sources(hp) == (src0[0] + 1, src0[1])
    k2 = get_key(hp, enc, sid, veh)
    assert candidates(hp) == (made0 + 1, skipped0 + 1)
    assert key_sources(hp) == (src0[0] + 1, src0[1] + 1)
    assert k1.key == k2.key and k1.key_id == k2.key_id
    # Again, either party: still the same key, still no candidate.
    assert get_key(hp, veh, sid, enc).key == k1.key
    assert candidates(hp) == (made0 + 1, skipped0 + 2)


def test_wrong_hint_costs_a_round_trip_not_the_request(hp):
    """The session vanishes behind kmsd's back (no tombstone: as if the
    tombstone had been purged): the hint says it exists, the database says
    need_key, and kmsd asks again with a candidate. A new session, a new
    key, both parties agree."""
    veh, enc = make_device(hp, "vehicle"), make_device(hp, "encryptor")
    sid = uid()
    old = get_key(hp, veh, sid, enc)
    assert get_key(hp, enc, sid, veh).key == old.key
    hp.psql(f"DELETE FROM sessions WHERE initiator_id = '{veh.device_id}'")
    made0, skipped0 = candidates(hp)
    new = get_key(hp, veh, sid, enc)
    assert candidates(hp) == (made0 + 1, skipped0 + 1)
    assert new.key_id != old.key_id and new.key != old.key
    assert get_key(hp, enc, sid, veh).key == new.key


def test_ended_session_with_a_hint_is_ended(hp):
    veh, enc = make_device(hp, "vehicle"), make_device(hp, "encryptor")
    sid = uid()
    get_key(hp, veh, sid, enc)
    r = post(hp, veh.end_request(sid))
    assert r.status_code == 200, r.text
    r = post(hp, enc.key_request(sid, veh.device_id))
    assert r.status_code == 409 and error_code(r) == "session_ended", r.text


def test_delivered_mode_creator_and_peer_agree(hp):
    veh, enc = make_device(hp, "vehicle"), make_device(hp, "encryptor")
    sid = uid()
    a = get_key(hp, veh, sid, enc, delivered=True)
    b = get_key(hp, enc, sid, veh, delivered=True)
    assert a.key == b.key
    r = post(hp, veh.key_request(sid, enc.device_id, delivered=True))
    assert r.status_code == 409 and error_code(r) == "session_ended", r.text


def test_unwrapped_cache_off(request):
    st = pair_stack("hot-off", {"QKMS_DEVICE_KEY_CACHE_UNWRAPPED": "0"})
    request.addfinalizer(lambda: _finish(st))
    veh, enc = make_device(st, "vehicle"), make_device(st, "encryptor")
    for _ in range(3):
        sid = uid()
        assert get_key(st, veh, sid, enc).key == get_key(st, enc, sid, veh).key
    assert unwrapped_hits(st) == 0


def test_no_unwrapped_keys_without_a_locked_heap(request):
    """RLIMIT_MEMLOCK 0 and no CAP_IPC_LOCK (as in a container that drops
    every capability): the secure heap cannot be locked, so plaintext keys
    are not kept (kmsd says so), and requests still work."""
    st = pair_stack("hot-nolock", wrap=("prlimit", "--memlock=0:0", "setpriv", "--bounding-set",
                                        "-ipc_lock", "--inh-caps", "-ipc_lock"))
    request.addfinalizer(lambda: _finish(st))
    msgs = [r.get("msg") for r in st.log_records()]
    assert "secure heap unavailable (RLIMIT_MEMLOCK?); key buffers not locked" in msgs
    assert "unwrapped device keys are not cached: the secure heap is not locked" in msgs
    veh, enc = make_device(st, "vehicle"), make_device(st, "encryptor")
    for _ in range(2):
        sid = uid()
        assert get_key(st, veh, sid, enc).key == get_key(st, enc, sid, veh).key
    assert unwrapped_hits(st) == 0


# ---- schema/009: the stored function's writes --------------------------------

@pytest.mark.parametrize("sql", [
    "DELETE FROM devices WHERE device_id = '{did}'",
    "TRUNCATE devices CASCADE",
    "UPDATE devices SET id = id + 1000000 WHERE device_id = '{did}'",
    "DELETE FROM master_keys",
    "TRUNCATE master_keys CASCADE",
    "UPDATE master_keys SET version = version + 1000",
])
def test_devices_and_master_versions_are_never_removed(hp, sql):
    """Sessions and nonces reference devices and master versions without
    foreign keys (no row lock per request): what keeps those references
    true is that the rows they name can never go or change their key."""
    veh, enc = make_device(hp, "vehicle"), make_device(hp, "encryptor")
    sid = uid()
    k = get_key(hp, veh, sid, enc)
    with pytest.raises(AssertionError, match="never deleted"):
        hp.psql(sql.format(did=veh.device_id))
    assert get_key(hp, enc, sid, veh).key == k.key


def test_created_row_is_written_once(hp):
    """The creating request writes the session already delivered to its
    initiator, with no update of the row: an update of this device's
    sessions raises here, and the creating request still succeeds. The
    responder's request stamps its own delivery (an update)."""
    veh, enc = make_device(hp, "vehicle"), make_device(hp, "encryptor")
    fn, trg = f"no_upd_{uid().lower().replace('-', '_')}", f"t_{uid().lower().replace('-', '_')}"
    hp.psql(f"CREATE FUNCTION {fn}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            f"RAISE EXCEPTION 'session row updated'; END $$; "
            f"CREATE TRIGGER {trg} BEFORE UPDATE ON sessions FOR EACH ROW "
            f"WHEN (OLD.initiator_id = '{veh.device_id}') EXECUTE FUNCTION {fn}()")
    try:
        sid = uid()
        k = get_key(hp, veh, sid, enc)
        row = hp.psql("SELECT initiator_delivered_at IS NOT NULL, responder_delivered_at IS NULL, "
                      "last_used_at = created_at FROM sessions "
                      f"WHERE initiator_id = '{veh.device_id}'").strip()
        assert row == "t|t|t"
        r = post(hp, enc.key_request(sid, veh.device_id))
        assert r.status_code >= 500, r.text  # the responder's update hit the trigger
    finally:
        hp.psql(f"DROP TRIGGER {trg} ON sessions; DROP FUNCTION {fn}()")
    assert get_key(hp, enc, sid, veh).key == k.key
    row = hp.psql("SELECT initiator_delivered_at IS NOT NULL, responder_delivered_at IS NOT NULL "
                  f"FROM sessions WHERE initiator_id = '{veh.device_id}'").strip()
    assert row == "t|t"


# ---- schema/031: no function parsed on every call ---------------------------

def test_no_sql_function_is_planned_per_call(hp):
    """A LANGUAGE sql function with a FROM clause is not inlined: PostgreSQL
    parses and plans it again in each transaction that calls it (perf put
    30 % of its CPU there before schema/031). The request path's helpers are
    plpgsql (plans kept per connection) or SQL that the planner inlines (a
    single SELECT of an expression, no FROM): EXPLAIN VERBOSE of a call to
    each SQL function of the schema must show its body, not the call."""
    funcs = hp.psql("SELECT p.proname, array_to_string(p.proargtypes::regtype[], ',') "
                    "FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang "
                    "WHERE l.lanname = 'sql' AND p.pronamespace = current_schema()::regnamespace "
                    "ORDER BY 1").splitlines()
    names = set()
    for f in funcs:
        name, types = f.split("|")
        names.add(name)
        args = ", ".join(f"NULL::{t}" for t in types.split(",") if t)
        plan = hp.psql(f"EXPLAIN (VERBOSE, COSTS OFF) SELECT {name}({args})")
        assert f"{name}(" not in plan, f"{name} is not inlined:\n{plan}"
    assert {"qkms_ts_ok", "qkms_device_standing"} <= names
    # The check itself: a SQL function with a FROM shows as a call.
    hp.psql("CREATE FUNCTION test_not_inlined(d devices) RETURNS text LANGUAGE sql STABLE AS "
            "$$ SELECT k.state FROM device_keys k WHERE k.device_pk = d.id LIMIT 1 $$")
    try:
        assert "test_not_inlined(" in hp.psql("EXPLAIN (VERBOSE, COSTS OFF) "
                                              "SELECT test_not_inlined(NULL::devices)")
    finally:
        hp.psql("DROP FUNCTION test_not_inlined(devices)")
    # The plpgsql versions answer as the SQL ones did (docs/sessions.md).
    veh, enc = make_device(hp, "vehicle"), make_device(hp, "encryptor")
    did = veh.device_id
    assert hp.psql(f"SELECT qkms_auth_refusal(d, (SELECT min(key_index) FROM device_keys "
                   f"WHERE device_pk = d.id)) FROM devices d WHERE device_id = '{did}'").strip() == ""
    assert hp.psql(f"SELECT qkms_auth_refusal(d, 77) FROM devices d "
                   f"WHERE device_id = '{did}'").strip() == "unknown key index"
    assert hp.psql("SELECT qkms_auth_refusal(NULL::devices, 0)").strip() == "unknown device"
    assert hp.psql(f"SELECT qkms_cert_refusal(d, '\\x00'::bytea) FROM devices d "
                   f"WHERE device_id = '{did}'").strip() == "certificate not on record for this device"
    assert hp.psql(f"SELECT p.name FROM devices a, devices b, LATERAL qkms_policy_for(a, b) p "
                   f"WHERE a.device_id = '{did}' AND b.device_id = '{enc.device_id}'").strip() == "all"
    assert hp.psql(f"SELECT p.id IS NULL FROM devices a, LATERAL qkms_policy_for_platform(a) p "
                   f"WHERE a.device_id = '{did}'").strip() == "t"


# ---- schema/010: the periodic passes read what is due ------------------------

def test_reaper_looks_at_a_session_in_use_once_per_idle_period(hp):
    """reap_at is the first time a session can be due. A session used since
    is not destroyed there: the reaper moves reap_at to the new idle deadline;
    once the session stays idle it is destroyed at its deadline, with its
    tombstone and audit row, as before."""
    grp = "reap-" + uid().lower()[:8]
    r = hp.admin("POST", "/v1/admin/policies", json={
        "name": grp, "type_a": "vehicle", "type_b": "encryptor", "group_a": grp, "group_b": grp,
        "idle_timeout_s": 3, "max_lifetime_s": 600})
    assert r.status_code == 201, r.text
    veh, enc = make_device(hp, "vehicle", group=grp), make_device(hp, "encryptor", group=grp)
    sid = uid()
    k = get_key(hp, veh, sid, enc)
    row = f"FROM sessions WHERE initiator_id = '{veh.device_id}'"
    first = hp.psql(f"SELECT extract(epoch FROM reap_at - created_at)::int {row}").strip()
    assert first == "3"  # the idle deadline comes before the lifetime's end
    # In use for twice the idle timeout: the reaper passes its first reap_at
    # and must move it, not destroy the session.
    t_end = time.time() + 6.5
    while time.time() < t_end:
        assert get_key(hp, enc, sid, veh).key == k.key
        time.sleep(1)
    moved = hp.psql(f"SELECT reap_at > created_at + interval '3 seconds', "
                    f"reap_at = last_used_at + interval '3 seconds' {row}").strip()
    assert moved in ("t|t", "t|f"), moved  # f: a request since the reaper's move
    # Idle now: destroyed at its deadline, tombstone and audit row included.
    deadline = time.time() + 10
    while time.time() < deadline and hp.psql(f"SELECT count(*) {row}").strip() != "0":
        time.sleep(0.3)
    assert hp.psql(f"SELECT count(*) {row}").strip() == "0"
    assert hp.psql(f"SELECT reason FROM session_tombstones "
                   f"WHERE initiator = '{veh.device_id}'").strip() == "idle_timeout"
    assert hp.psql(f"SELECT detail->>'reason' FROM audit_log WHERE event = 'session.destroyed' "
                   f"AND device_id = '{veh.device_id}'").strip() == "idle_timeout"
    r = post(hp, enc.key_request(sid, veh.device_id))
    assert r.status_code == 409, r.text


def sessions_rows_read(st):
    return int(st.psql("SELECT coalesce(seq_tup_read, 0) + coalesce(idx_tup_fetch, 0) "
                       "FROM pg_stat_user_tables WHERE relname = 'sessions'").strip())


def test_periodic_passes_do_not_read_every_live_session(request):
    """20,000 live sessions that are not due: the reaper (looking for
    sessions past their deadline) and the rotation (looking for sessions
    under an older master key version) run every second, and must not read
    them all each time (before schema/010 each pass read every live row).
    The gauges' pass (maintenance_interval), which counts the live
    sessions, is set apart to once an hour."""
    hp = pair_stack("hot-passes", {"QKMS_MAINTENANCE_INTERVAL": "3600"})
    request.addfinalizer(lambda: _finish(hp))
    veh, enc = make_device(hp, "vehicle"), make_device(hp, "encryptor")
    get_key(hp, veh, uid(), enc)
    tag = uid().lower()[:8]
    hp.psql(f"""INSERT INTO sessions (session_hash, session_id, key_id, key_bits, wrapped_key,
                    master_version, provenance, initiator, responder, initiator_id, responder_id,
                    policy, delivery, idle_timeout_s, expires_at, reap_at)
                SELECT sha256(convert_to('{tag}' || g, 'UTF8')), '{tag}' || g, gen_random_uuid(),
                       128, s.wrapped_key, s.master_version, 'filler', s.initiator, s.responder,
                       s.initiator_id, s.responder_id, s.policy, 'session', 3600,
                       now() + interval '1 hour', now() + interval '1 hour'
                  FROM sessions s, generate_series(1, 20000) g
                 WHERE s.initiator_id = '{veh.device_id}'""")
    try:
        time.sleep(2)  # a pass with the rows in place; statistics flushed
        before = sessions_rows_read(hp)
        time.sleep(4)  # four passes of each
        read = sessions_rows_read(hp) - before
        assert read < 5000, f"{read} session rows read by four passes over 20,000 live sessions"
    finally:
        hp.psql(f"DELETE FROM sessions WHERE session_id LIKE '{tag}%'")
