"""A device's first and latest contact (issue 20, seed 003: the platform
records a device's first contact): first_seen_at / last_seen_at on the
device record, written off the request's path (kmsd/service/device_seen.c)
at most once a minute per device, a device.first_contact audit row exactly
once, whichever of two kmsd records it, and `kmsctl device list
--never-seen | --seen-since`."""
import json

import pytest

from conftest import _finish, wait_for
from helpers import SecondKmsd, get_key, make_device, post, ts, uid, utcnow, veh_enc_stack


@pytest.fixture(scope="module")
def st():
    s = veh_enc_stack("contact", {})
    yield s
    _finish(s)


def record(st, did):
    r = st.admin("GET", f"/v1/admin/devices/{did}")
    assert r.status_code == 200, r.text
    return r.json()


def first_contacts(st, did):
    return int(st.psql("SELECT count(*) FROM audit_log WHERE event = 'device.first_contact'"
                       f" AND device_id = '{did}'").strip())


def flushed(st, server=None):
    """Waits until the notes made so far on server (a kmsd) are written: a
    fresh device's contact, noted after them on the same kmsd, is written
    in the same flush or a later one (the queue is written in order)."""
    veh = make_device(st, "vehicle", st.group)
    enc = make_device(st, "encryptor", st.group)
    get_key(server or st, veh, uid(), enc)
    assert wait_for(lambda: record(st, veh.device_id)["first_seen_at"] is not None, timeout=30)


def listed(st, **query):
    r = st.admin("GET", "/v1/admin/devices", params={"group": st.group, "limit": 1000, **query})
    assert r.status_code == 200, r.text
    return {d["device_id"]: d for d in r.json()["devices"]}


def test_first_contact_once_and_last_seen(st):
    veh = make_device(st, "vehicle", st.group)
    enc = make_device(st, "encryptor", st.group)
    idle = make_device(st, "vehicle", st.group)
    for d in (veh, enc, idle):
        rec = record(st, d.device_id)
        assert rec["first_seen_at"] is None and rec["last_seen_at"] is None
    t0 = utcnow()
    sid = uid()
    k1 = get_key(st, veh, sid, enc)
    assert wait_for(lambda: record(st, veh.device_id)["first_seen_at"] is not None, timeout=30)
    rec = record(st, veh.device_id)
    assert rec["last_seen_at"] == rec["first_seen_at"]
    assert abs((ts(rec["first_seen_at"]) - t0).total_seconds()) < 30
    assert first_contacts(st, veh.device_id) == 1
    # The responder has not asked yet: not heard from.
    assert record(st, enc.device_id)["first_seen_at"] is None
    k2 = get_key(st, enc, sid, veh)
    assert k1.key == k2.key
    assert wait_for(lambda: first_contacts(st, enc.device_id) == 1, timeout=30)
    ev = st.admin("GET", "/v1/admin/audit", params={"type": "device.first_contact",
                                                    "device": enc.device_id}).json()["events"]
    assert len(ev) == 1 and ev[0]["actor"] == "kmsd" and ev[0]["detail"] == {}
    # More requests in the same minute: noted, not written again, and never
    # a second first contact.
    first = record(st, veh.device_id)
    for _ in range(3):
        sid = uid()
        get_key(st, veh, sid, enc)
        get_key(st, enc, sid, veh)
    r = post(st, veh.end_request(sid))
    assert r.status_code == 200, r.text
    flushed(st)
    assert first_contacts(st, veh.device_id) == 1 and first_contacts(st, enc.device_id) == 1
    assert record(st, veh.device_id)["first_seen_at"] == first["first_seen_at"]
    # The idle device shows as never seen, the others as seen.
    never = listed(st, never_seen="true")
    assert idle.device_id in never and veh.device_id not in never and enc.device_id not in never
    seen = listed(st, never_seen="false")
    assert {veh.device_id, enc.device_id} <= set(seen) and idle.device_id not in seen
    since = listed(st, seen_since=(t0.replace(microsecond=0)).isoformat().replace("+00:00", "Z"))
    assert {veh.device_id, enc.device_id} <= set(since) and idle.device_id not in since
    assert veh.device_id not in listed(st, seen_since="2999-01-01")
    # The listing carries both times.
    assert seen[veh.device_id]["first_seen_at"] == first["first_seen_at"]
    assert seen[veh.device_id]["last_seen_at"] is not None


def test_a_refused_request_is_no_contact(st):
    """A device whose requests are all refused (a forged ciphertext, a
    replay of another device's request, a session it is no party of) is
    never heard from."""
    veh = make_device(st, "vehicle", st.group)
    enc = make_device(st, "encryptor", st.group)
    other = make_device(st, "encryptor", st.group)
    req = veh.key_request(uid(), enc.device_id)
    bad = json.loads(req.raw)
    bad["ct"] = bad["ct"][:-4] + ("AAAA" if not bad["ct"].endswith("AAAA") else "BBBB")
    r = post(st, req, raw=json.dumps(bad).encode())
    assert r.status_code == 401, r.text
    # enc's request succeeds once; its replay is refused; the replayed
    # request is enc's own, so enc is heard from once, veh never.
    sid = uid()
    req = enc.key_request(sid, veh.device_id)
    assert post(st, req).status_code == 200
    assert post(st, req).status_code == 401
    # other asks for a session of veh and enc: not a party (403).
    r = post(st, other.key_request(sid, veh.device_id))
    assert r.status_code in (403, 409), r.text
    flushed(st)
    assert record(st, veh.device_id)["first_seen_at"] is None
    assert first_contacts(st, veh.device_id) == 0
    assert first_contacts(st, enc.device_id) == 1
    assert record(st, other.device_id)["first_seen_at"] is None


def test_two_instances_record_a_first_contact_once(st):
    """Both kmsd hear from the same devices in the same seconds and both
    write them: each first contact is audited once (the row lock makes the
    later flush see the earlier one's write; a row the other holds at that
    moment is skipped, not waited for)."""
    other = SecondKmsd(st)
    try:
        pairs = [(make_device(st, "vehicle", st.group), make_device(st, "encryptor", st.group))
                 for _ in range(10)]
        for veh, enc in pairs:
            sid = uid()
            get_key(st, veh, sid, enc)        # this kmsd
            get_key(other, enc, sid, veh)     # the other
            sid = uid()
            get_key(other, veh, sid, enc)
            get_key(st, enc, sid, veh)
        for veh, enc in pairs:
            for d in (veh, enc):
                assert wait_for(lambda d=d: record(st, d.device_id)["first_seen_at"], timeout=30)
        flushed(st)
        flushed(st, other)
        for veh, enc in pairs:
            assert first_contacts(st, veh.device_id) == 1
            assert first_contacts(st, enc.device_id) == 1
    finally:
        assert other.stop() == 0


def test_stop_flushes_what_was_noted():
    """A clean stop writes the devices noted since the last flush."""
    st = veh_enc_stack("contact-stop", {})
    try:
        veh = make_device(st, "vehicle", st.group)
        enc = make_device(st, "encryptor", st.group)
        sid = uid()
        get_key(st, veh, sid, enc)
        assert st.stop() == 0  # at once: before the 5-second flush
        assert st.psql(f"SELECT first_seen_at IS NOT NULL FROM devices"
                       f" WHERE device_id = '{veh.device_id}'").strip() == "t"
    finally:
        st.destroy()


@pytest.mark.parametrize("query,fragment", [
    ({"never_seen": "maybe"}, "never_seen must be true or false"),
    ({"seen_since": "yesterday"}, "seen_since must be an RFC 3339 time or a date"),
    ({"seen_since": "2026-02-30"}, "seen_since is not a valid time"),
    ({"never_seen": "true", "seen_since": "2026-01-01"}, "exclude each other"),
])
def test_bad_filters(st, query, fragment):
    r = st.admin("GET", "/v1/admin/devices", params=query)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_query", r.text
    assert fragment in r.json()["error"]["message"]


def test_kmsctl_never_seen_and_seen_since(st):
    veh = make_device(st, "vehicle", st.group)
    enc = make_device(st, "encryptor", st.group)
    get_key(st, veh, uid(), enc)
    assert wait_for(lambda: record(st, veh.device_id)["last_seen_at"], timeout=30)
    p = st.kmsctl("--json", "device", "list", "--group", st.group, "--never-seen", "--all",
                  token=st.admin_token)
    assert p.returncode == 0, p.stderr
    never = {d["device_id"] for d in json.loads(p.stdout)["devices"]}
    assert enc.device_id in never and veh.device_id not in never
    p = st.kmsctl("--json", "device", "list", "--group", st.group, "--seen-since", "10m",
                  "--all", token=st.admin_token)
    assert p.returncode == 0, p.stderr
    seen = {d["device_id"] for d in json.loads(p.stdout)["devices"]}
    assert veh.device_id in seen and enc.device_id not in seen
    p = st.kmsctl("device", "list", "--group", st.group, "--seen-since", "10m",
                  token=st.admin_token)
    assert p.returncode == 0 and p.stdout.splitlines()[0].split()[-1] == "LAST-SEEN", p.stdout
    p = st.kmsctl("device", "list", "--never-seen", "--seen-since", "1h", token=st.admin_token)
    assert p.returncode == 2 and "exclude each other" in p.stderr
    p = st.kmsctl("device", "list", "--seen-since", "soon", token=st.admin_token)
    assert p.returncode == 2 and "--seen-since must be a time" in p.stderr
    p = st.kmsctl("device", "show", veh.device_id, token=st.admin_token)
    assert "first_seen_at: " in p.stdout and "last_seen_at: " in p.stdout, p.stdout




def test_every_door_is_contact(st):
    """A v2 request, an end, an end of all sessions and a key stream's key
    are contact too, as a v1 key request is."""
    import requests
    from qkms_proto2_py import Device2, Platform
    plat = Platform.from_certificates(
        requests.get(st.url + "/v1/platform/certificates", timeout=10).json())
    did = uid("VEH")
    assert st.admin("POST", "/v1/admin/devices", json={"device_id": did, "type": "vehicle",
                                                        "group": st.group}).status_code == 201
    doc = st.admin("POST", f"/v1/admin/devices/{did}/fill", json={"plaintext": True}).json()
    v2 = Device2.from_fill(doc["plaintext"], 3)
    enc = make_device(st, "encryptor", st.group)
    req = v2.key_request(plat, uid(), enc.device_id, key_source="c")
    r = post(st, req)
    assert r.status_code == 200, r.text
    assert wait_for(lambda: record(st, did)["first_seen_at"] is not None, timeout=30)
    assert first_contacts(st, did) == 1
    # An end of all sessions, from a device never seen before.
    other = make_device(st, "encryptor", st.group)
    assert post(st, other.end_all_request()).status_code == 200
    assert wait_for(lambda: record(st, other.device_id)["first_seen_at"] is not None, timeout=30)
    # A key stream's key (the stack's same-group policy allows the pair).
    veh = make_device(st, "vehicle", st.group)
    sreq = veh.stream_request(enc.device_id, 0)
    r = post(st, sreq)
    assert r.status_code == 200, r.text
    assert wait_for(lambda: record(st, veh.device_id)["first_seen_at"] is not None, timeout=30)
    assert first_contacts(st, veh.device_id) == 1
