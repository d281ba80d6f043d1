"""Events (issue 18, seed 004, docs/gateways.md "Events"), end to end with
real kmsd and PostgreSQL and a webhook receiver on loopback: each event is
written in the transaction of its change, POSTed signed (HMAC-SHA-256 over
the timestamp and the body), retried after a failure, delivered across a
kill -9 of kmsd in the middle of a delivery (at least once; the receiver
deduplicates by event_id), replayed on request, and readable by the
owner's app."""
import hashlib
import hmac
import http.server
import json
import os
import re
import signal
import subprocess
import threading
import time
import uuid

import pytest

from conftest import KMSD, Stack, _finish, wait_for
from helpers import SecondKmsd, error_code, uid

SECRET = b"s" * 24 + os.urandom(16).hex().encode()


class Receiver:
    """Records every signed POST; can hold answers, or fail some."""

    def __init__(self, delay=0.0):
        self.got = []          # (event_id, body dict)
        self.delay = delay     # seconds before each answer
        self.bad_sigs = 0
        self.fail_next = 0
        self.hold = threading.Event()
        self.hold.set()
        self.in_flight = threading.Event()
        rec = self

        class H(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                ts = self.headers["X-Qkms-Timestamp"]
                want = "v1=" + hmac.new(SECRET, ts.encode() + b"." + body,
                                        hashlib.sha256).hexdigest()
                if self.headers["X-Qkms-Signature"] != want:
                    rec.bad_sigs += 1
                rec.in_flight.set()
                rec.hold.wait(30)
                time.sleep(rec.delay)
                if rec.fail_next > 0:
                    rec.fail_next -= 1
                    self.send_response(500)
                    self.end_headers()
                    return
                doc = json.loads(body)
                assert doc["event_id"] == self.headers["X-Qkms-Event-Id"]
                rec.got.append((doc["event_id"], doc))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *a):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def ids(self):
        return [i for i, _ in self.got]


@pytest.fixture(scope="module")
def ev(tmp_path_factory):
    rec = Receiver()
    secret = tmp_path_factory.mktemp("ev") / "webhook.secret"
    secret.write_bytes(SECRET + b"\n")
    os.chmod(secret, 0o600)
    env = {"QKMS_WEBHOOK_URLS": rec.url, "QKMS_WEBHOOK_SECRET_FILE": str(secret),
           "QKMS_MAINTENANCE_INTERVAL": "1", "QKMS_WEBHOOK_MAX_ATTEMPTS": "3"}
    st = Stack("events")
    try:
        st.start(extra_env=env)
    except BaseException:
        st.destroy()
        raise
    st.env_extra = env
    yield st, rec
    rec.hold.set()
    _finish(st)
    rec.server.shutdown()


def hook_id(url):
    """A webhook's id: keyed by the secret (docs/gateways.md "Events")."""
    return hmac.new(SECRET, b"qkms/webhook-id\n" + url.encode(), hashlib.sha256).hexdigest()


def pending(st, url):
    hooks = st.admin("GET", "/v1/admin/events").json()["webhooks"]
    return next(h for h in hooks if h["id"] == hook_id(url))["pending"]


def metric(st, name):
    m = re.search(rf"^{name} (\d+)", st.admin("GET", "/metrics").text, re.M)
    return int(m.group(1))


def revoked(st, n):
    ids = []
    for _ in range(n):
        did = uid("EV")
        assert st.admin("POST", "/v1/admin/devices", json={"device_id": did,
                                                           "type": "vehicle"}).status_code == 201
        assert st.admin("POST", f"/v1/admin/devices/{did}/revoke").status_code == 200
        ids.append(did)
    return ids


def event_ids(st, dids):
    q = ",".join(f"'{d}'" for d in dids)
    return set(st.psql(f"SELECT event_id FROM events WHERE device_id IN ({q})").split())


def test_events_are_signed_and_delivered(ev):
    st, rec = ev
    dids = revoked(st, 3)
    want = event_ids(st, dids)
    assert len(want) == 3
    assert wait_for(lambda: want <= set(rec.ids()), timeout=20)
    assert rec.bad_sigs == 0
    doc = dict(rec.got)[next(iter(want))]
    assert doc["type"] == "device.revoked" and doc["device_id"] in dids
    assert set(doc) == {"id", "event_id", "type", "device_id", "app", "created_at", "detail"}
    assert doc["app"] is None  # an operator's device: no owner
    # The admin view, with how the webhook's deliveries stand (once kmsd
    # has read the 2xx answers and marked them); its URL's path is not
    # shown (it may be the credential), a keyed hash names it.
    assert wait_for(lambda: pending(st, rec.url) == 0, timeout=20)
    r = st.admin("GET", "/v1/admin/events?limit=1000")
    assert r.status_code == 200, r.text
    assert want <= {e["event_id"] for e in r.json()["events"]}
    hook = r.json()["webhooks"][0]
    assert hook["url"] == rec.url.rsplit("/", 1)[0] + "/..." and "hook" not in hook["url"]
    assert hook["id"] == hook_id(rec.url)
    assert hook["last_delivered_at"] and hook["pending"] == 0 and hook["failed"] == 0
    assert "/hook" not in st.logs() and "/hook" not in st.psql("SELECT shown FROM webhooks")
    for q in ("after=-1", "limit=0", "limit=1001", "after=x"):
        r = st.admin("GET", f"/v1/admin/events?{q}")
        assert r.status_code == 400 and error_code(r) == "invalid_query", q


def test_a_failure_is_retried(ev):
    st, rec = ev
    failures = metric(st, "qkms_event_delivery_failures_total")
    rec.fail_next = 1
    did = revoked(st, 1)
    want = event_ids(st, did)
    assert wait_for(lambda: want <= set(rec.ids()), timeout=30)
    assert wait_for(lambda: pending(st, rec.url) == 0, timeout=20)
    assert metric(st, "qkms_event_delivery_failures_total") == failures + 1
    assert st.psql("SELECT attempts, last_error IS NULL FROM event_deliveries d JOIN events e"
                   f" ON e.id = d.event_pk WHERE e.device_id = '{did[0]}'").split() == ["1|t"]


def test_a_delivery_is_given_up_then_replayed(ev):
    """After webhook_max_attempts (3 here) failures a delivery stops being
    tried, shows as failed, and a replay tries it again."""
    st, rec = ev
    before = metric(st, "qkms_event_deliveries_given_up_total")
    rec.fail_next = 3
    did = revoked(st, 1)
    want = event_ids(st, did)
    mine = hook_id(rec.url)
    hook = lambda: next(h for h in st.admin("GET", "/v1/admin/events").json()["webhooks"]
                        if h["id"] == mine)
    assert wait_for(lambda: hook()["failed"] == 1, timeout=30)  # after 1 + 2 s of back-off
    h = hook()
    assert h["attempts"] == 3 and h["last_error"] == "HTTP 500", h
    assert wait_for(lambda: metric(st, "qkms_event_deliveries_given_up_total") == before + 1)
    assert not want & set(rec.ids())
    assert wait_for(lambda: any(r.get("msg", "").startswith("event delivery given up")
                                for r in st.log_records()))
    pk = int(st.psql(f"SELECT id FROM events WHERE device_id = '{did[0]}'").strip())
    r = st.admin("POST", "/v1/admin/events/replay", json={"after": pk - 1})
    assert r.status_code == 200 and r.json()["deliveries"] >= 1, r.text
    assert wait_for(lambda: want <= set(rec.ids()), timeout=20)
    assert hook()["failed"] == 0


def test_a_replay_leaves_a_leased_delivery_to_its_holder(ev):
    st, rec = ev
    did = revoked(st, 1)
    want = event_ids(st, did)
    assert wait_for(lambda: want <= set(rec.ids()), timeout=20)
    pk = int(st.psql(f"SELECT id FROM events WHERE device_id = '{did[0]}'").strip())
    # As if another kmsd held it right now: a replay does not take it over,
    # and a mark under another lease ID would not count (the holder's does).
    st.psql("UPDATE event_deliveries SET delivered_at = NULL, lease_id = gen_random_uuid(),"
            f" next_at = now() + interval '1 hour' WHERE event_pk = {pk}")
    r = st.admin("POST", "/v1/admin/events/replay", json={"after": pk - 1})
    assert r.status_code == 200, r.text
    assert st.psql("SELECT next_at > now() + interval '50 minutes' FROM event_deliveries"
                   f" WHERE event_pk = {pk}").strip() == "t"
    st.psql(f"UPDATE event_deliveries SET next_at = now() WHERE event_pk = {pk}")
    n = rec.ids().count(next(iter(want)))
    assert wait_for(lambda: rec.ids().count(next(iter(want))) == n + 1, timeout=20)
    assert wait_for(lambda: pending(st, rec.url) == 0, timeout=20)


def test_only_the_lease_holder_marks_a_delivery(ev):
    """A kmsd whose lease was taken over (it ran out and another kmsd leased
    the row: here the lease ID is changed under it) does not record the
    delivery; the new holder does."""
    st, rec = ev
    rec.hold.clear()
    rec.in_flight.clear()
    did = revoked(st, 1)
    assert rec.in_flight.wait(20)
    pk = int(st.psql(f"SELECT id FROM events WHERE device_id = '{did[0]}'").strip())
    other = st.psql("UPDATE event_deliveries SET lease_id = gen_random_uuid()"
                    f" WHERE event_pk = {pk} RETURNING lease_id").split()[0]
    rec.hold.set()
    eid = next(iter(event_ids(st, did)))
    assert wait_for(lambda: eid in rec.ids(), timeout=20)
    time.sleep(1)  # the first kmsd's mark, refused, has had its time
    assert st.psql("SELECT lease_id, delivered_at IS NULL FROM event_deliveries"
                   f" WHERE event_pk = {pk}").split() == [f"{other}|t"]
    st.psql(f"UPDATE event_deliveries SET next_at = now() WHERE event_pk = {pk}")  # it runs out
    assert wait_for(lambda: rec.ids().count(eid) == 2, timeout=20)
    assert wait_for(lambda: st.psql("SELECT delivered_at IS NOT NULL, lease_id IS NULL FROM"
                                    f" event_deliveries WHERE event_pk = {pk}").split()
                    == ["t|t"], timeout=20)


def test_a_webhook_is_removed(ev):
    """A webhook no kmsd is configured with any more (here one planted in
    the table) keeps its undelivered rows until an operator removes it;
    maintenance then deletes them, and it."""
    st, rec = ev
    gid = os.urandom(32).hex()
    st.psql(f"INSERT INTO webhooks (webhook_id, shown) VALUES (decode('{gid}', 'hex'),"
            " 'http://127.0.0.1:9/...')")
    revoked(st, 2)
    hooks = {h["id"]: h for h in st.admin("GET", "/v1/admin/events").json()["webhooks"]}
    assert hooks[gid]["pending"] == 2 and hooks[gid]["url"] == "http://127.0.0.1:9/..."
    assert hooks[gid]["last_delivered_at"] is None
    for bad in ("x" * 64, gid.upper(), gid[:63]):
        r = st.admin("DELETE", f"/v1/admin/events/webhooks/{bad}")
        assert r.status_code == 404 and error_code(r) == "not_found", bad
    p = st.kmsctl("--json", "events", "remove-webhook", gid)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout) == {"id": gid, "url": "http://127.0.0.1:9/...", "removed": True}
    assert gid not in {h["id"] for h in st.admin("GET", "/v1/admin/events").json()["webhooks"]}
    assert st.psql("SELECT detail->>'pending_dropped' FROM audit_log WHERE event ="
                   f" 'webhook.removed' AND detail->>'webhook' = '{gid}'").strip() == "2"
    # Retired: an event written now gets no row for it (counted inside the
    # event's own transaction, before maintenance could delete anything).
    out = st.psql("BEGIN; INSERT INTO audit_log (actor, event, device_id, detail) VALUES"
                  f" ('test', 'device.revoked', '{uid('RET')}', '{{}}');"
                  " SELECT count(*) FROM event_deliveries d JOIN events e ON e.id = d.event_pk"
                  f" WHERE d.webhook_id = decode('{gid}', 'hex')"
                  " AND e.id = currval('events_id_seq'); COMMIT;")
    assert out.split() == ["0"], out
    # Then maintenance deletes its rows, and its row.
    assert wait_for(lambda: st.psql("SELECT count(*) FROM webhooks WHERE webhook_id ="
                                    f" decode('{gid}', 'hex')").strip() == "0", timeout=20)
    assert st.psql("SELECT count(*) FROM event_deliveries WHERE webhook_id ="
                   f" decode('{gid}', 'hex')").strip() == "0"
    r = st.admin("DELETE", f"/v1/admin/events/webhooks/{gid}")
    assert r.status_code == 404
    assert st.kmsctl("events", "remove-webhook", "nothex").returncode == 2


def test_old_events_are_purged(ev):
    st, rec = ev
    did = revoked(st, 2)
    want = event_ids(st, did)
    assert wait_for(lambda: want <= set(rec.ids()), timeout=20)
    q = ",".join(f"'{d}'" for d in did)
    st.psql("UPDATE events SET created_at = now() - interval '31 days'"
            f" WHERE device_id IN ({q})")  # event_retention_days is 30
    assert wait_for(lambda: st.psql("SELECT count(*) FROM events"
                                    f" WHERE device_id IN ({q})").strip() == "0", timeout=20)
    assert st.psql("SELECT count(*) FROM event_deliveries d WHERE NOT EXISTS"
                   " (SELECT 1 FROM events e WHERE e.id = d.event_pk)").strip() == "0"


def test_sigterm_releases_a_lease_untried(ev):
    st, rec = ev
    rec.hold.clear()
    rec.in_flight.clear()
    did = revoked(st, 1)
    assert rec.in_flight.wait(20)  # its POST waits on the receiver
    assert st.stop() == 0          # kmsd abandons the transfer and stops
    row = st.psql("SELECT d.attempts, d.lease_id IS NULL, d.delivered_at IS NULL,"
                  " d.next_at <= now() FROM event_deliveries d JOIN events e"
                  f" ON e.id = d.event_pk WHERE e.device_id = '{did[0]}'").split()
    assert row == ["0|t|t|t"], row  # not an attempt, due at once
    rec.hold.set()
    st.start(extra_env=st.env_extra)
    eid = next(iter(event_ids(st, did)))
    # The receiver recorded the abandoned POST too once released: the
    # restarted kmsd's delivery comes after it.
    assert wait_for(lambda: rec.ids().count(eid) >= 2, timeout=20)
    assert wait_for(lambda: pending(st, rec.url) == 0, timeout=20)


def test_two_instances_share_the_work(ev):
    """Two kmsd over one database: every event delivered, none twice (no
    kmsd is killed, so no lease runs out)."""
    st, rec = ev
    second = SecondKmsd(st, extra_env=st.env_extra)
    try:
        before = len(rec.got)
        rows = ",".join(f"('test','device.revoked','{uid('TWO')}','{{}}')" for _ in range(40))
        st.psql(f"INSERT INTO audit_log (actor, event, device_id, detail) VALUES {rows}")
        want = set(st.psql("SELECT event_id FROM events WHERE device_id LIKE 'TWO%'").split())
        assert len(want) == 40
        assert wait_for(lambda: want <= set(rec.ids()), timeout=60)
        got = [i for i in rec.ids()[before:] if i in want]
        assert len(got) == 40, len(got)
    finally:
        assert second.stop() == 0


def test_delivery_survives_kill_9(ev):
    st, rec = ev
    rec.hold.clear()
    rec.in_flight.clear()
    dids = revoked(st, 5)
    want = event_ids(st, dids)
    assert rec.in_flight.wait(20)  # a POST is waiting on the receiver
    st.stop(sig=signal.SIGKILL)
    rec.hold.set()
    st.start(extra_env=st.env_extra)
    # The batch the killed kmsd had leased comes again once its lease (4 x 5 s
    # + 10 s) runs out.
    assert wait_for(lambda: want <= set(rec.ids()), timeout=90)
    got = [(i, doc) for i, doc in rec.got if i in want]
    # Every event arrived; at most the killed kmsd's leased batch (4) came
    # twice, each repeat the same event with the same event_id, so the
    # receiver, deduplicating by event_id, has every event exactly once.
    assert {i for i, _ in got} == want and len(got) <= len(want) + 4, got
    first = {}
    for i, doc in got:
        assert first.setdefault(i, doc) == doc, (i, first[i], doc)
    assert len(first) == len(want)


def test_replay_and_the_apps_view(ev):
    st, rec = ev
    # An app binds a gateway: the event is the app's too.
    app = "ev-" + uuid.uuid4().hex[:6]
    r = st.admin("POST", "/v1/admin/apps", json={"name": app})
    tok = r.json()["token"]
    gid = uid("GW")
    assert st.admin("POST", "/v1/admin/devices", json={"device_id": gid, "type": "gateway"}) \
        .status_code == 201
    code = st.admin("GET", f"/v1/admin/devices/{gid}/verification-code").json()[
        "verification_code"]
    ch = st.api("POST", "/v1/app/bind/challenges", token=tok, json={"device_id": gid}).json()
    import base64
    proof = base64.urlsafe_b64encode(hashlib.sha256(
        b"qkms/v1/bind\n" + code.encode() + b"\n" + ch["random"].encode()).digest()) \
        .decode().rstrip("=")
    r = st.api("POST", "/v1/app/bind", token=tok,
               json={"challenge_id": ch["challenge_id"], "proof": proof})
    assert r.status_code == 200, r.text
    r = st.api("GET", "/v1/app/events", token=tok)
    assert r.status_code == 200, r.text
    assert [(e["type"], e["device_id"], e["app"]) for e in r.json()["events"]] == [
        ("device.bound", gid, app)]
    assert r.json()["next"] is None
    # Replay: everything after an id comes again.
    first = st.admin("GET", "/v1/admin/events?limit=1").json()["events"][0]["id"]
    # Nothing in flight (a replay leaves a leased delivery to its holder).
    assert wait_for(lambda: pending(st, rec.url) == 0, timeout=20)
    n = len(rec.got)
    last = int(st.psql("SELECT max(id) FROM events").strip())
    r = st.admin("POST", "/v1/admin/events/replay", json={"after": first - 1})
    total = int(st.psql(f"SELECT count(*) FROM events WHERE id >= {first}").strip())
    assert r.status_code == 200 and r.json() == {"after": first - 1, "until": last,
                                                 "deliveries": total, "next": None}, r.text
    assert wait_for(lambda: len(rec.got) >= n + total, timeout=30)
    for body in ({}, {"after": -1}, {"after": "1"}, {"after": 1, "x": 2},
                 {"after": 5, "until": 5}, {"after": 5, "until": "9"}):
        r = st.admin("POST", "/v1/admin/events/replay", json=body)
        assert r.status_code == 422 and error_code(r) in ("invalid_request",), (body, r.text)
    # kmsctl.
    p = st.kmsctl("--json", "events", "list", "--limit", "5")
    assert p.returncode == 0 and len(json.loads(p.stdout)["events"]) == 5, p.stderr
    p = st.kmsctl("events", "replay", "--after", str(first))
    assert p.returncode == 0, p.stderr
    assert st.kmsctl("events", "replay").returncode == 2


def test_webhook_urls_must_be_http(tmp_path):
    st = Stack("events-bad")
    try:
        secret = tmp_path / "s"
        secret.write_bytes(SECRET)
        for urls in ("ftp://127.0.0.1/x", "file:///etc/passwd", "http://a b", "http://u:p@h/x",
                 "http://h/x,http://h/x", "http:///x"):
            with pytest.raises(RuntimeError) as exc:
                st.start(extra_env={"QKMS_WEBHOOK_URLS": urls,
                                    "QKMS_WEBHOOK_SECRET_FILE": str(secret)})
            assert "webhook_urls" in str(exc.value)
            st.proc = None
        with pytest.raises(RuntimeError) as exc:
            st.start(extra_env={"QKMS_WEBHOOK_URLS": "http://127.0.0.1:9/x"})
        assert "webhook_secret_file" in str(exc.value)
        st.proc = None
        # A secret others may read is refused, at start and by --check-config.
        for mode, ok in ((0o644, False), (0o640, False), (0o600, True)):
            os.chmod(secret, mode)
            env = dict(st.env, QKMS_WEBHOOK_URLS="http://127.0.0.1:9/x",
                       QKMS_WEBHOOK_SECRET_FILE=str(secret))
            p = subprocess.run([KMSD, "-c", st.conf, "--check-config"], env=env,
                               capture_output=True, text=True, timeout=60)
            assert (p.returncode == 0) == ok, (mode, p.stderr)
            if not ok:
                assert "webhook_secret_file" in p.stderr and "0600" in p.stderr
                with pytest.raises(RuntimeError) as exc:
                    st.start(extra_env={"QKMS_WEBHOOK_URLS": "http://127.0.0.1:9/x",
                                        "QKMS_WEBHOOK_SECRET_FILE": str(secret)})
                assert "webhook_secret_file" in str(exc.value)
                st.proc = None
    finally:
        st.destroy()


def test_webhooks_take_turns(tmp_path):
    """A webhook with a backlog (a slow receiver) does not hold back the
    others: each gets a batch in turn."""
    slow, fast = Receiver(delay=0.25), Receiver()
    secret = tmp_path / "s"
    secret.write_bytes(SECRET)
    os.chmod(secret, 0o600)
    st = Stack("events-rr")
    try:
        st.start(extra_env={"QKMS_WEBHOOK_URLS": f"{slow.url},{fast.url}",
                            "QKMS_WEBHOOK_SECRET_FILE": str(secret)})
        # 30 events in one transaction: all due at the worker's next pass.
        rows = ",".join(f"('test','device.revoked','{uid('RR')}','{{}}')" for _ in range(30))
        st.psql(f"INSERT INTO audit_log (actor, event, device_id, detail) VALUES {rows}")
        slow_when_fast_began = []
        def fast_began():
            if fast.got and not slow_when_fast_began:
                slow_when_fast_began.append(len(slow.got))
            return bool(fast.got)
        assert wait_for(fast_began, timeout=30, interval=0.02)
        # One batch (4) of the slow one at most went first, not its 30.
        assert slow_when_fast_began[0] <= 8, slow_when_fast_began
        assert wait_for(lambda: len(fast.got) == 30 and len(slow.got) == 30, timeout=60)
        assert st.stop() == 0
    finally:
        st.destroy()
        slow.server.shutdown()
        fast.server.shutdown()


def test_an_event_committed_late_is_delivered(ev):
    """Delivery rows are chosen by state, not by id: an event whose
    transaction commits after a later event's is delivered all the same."""
    st, rec = ev
    early, late = uid("EV"), uid("EV")
    for d in (early, late):
        assert st.admin("POST", "/v1/admin/devices", json={"device_id": d,
                                                           "type": "vehicle"}).status_code == 201
    psql = ["psql", "-X", "-q", "-d", st.pg_dsn, "-c"]
    # A holder keeps an advisory lock ...
    holder = subprocess.Popen(psql + ["SELECT pg_advisory_lock(715); SELECT pg_sleep(120);"])
    try:
        assert wait_for(lambda: st.psql("SELECT count(*) FROM pg_locks WHERE locktype ="
                                        " 'advisory' AND objid = 715 AND granted").strip() == "1")
        # ... that a transaction which wrote an event waits for before its
        # commit: the event has its id, not committed.
        p = subprocess.Popen(psql + ["BEGIN; INSERT INTO audit_log (actor, event, device_id,"
                                     f" detail) VALUES ('test', 'device.revoked', '{early}',"
                                     " '{}'); SELECT pg_advisory_xact_lock(715); COMMIT;"])
        assert wait_for(lambda: st.psql(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
            " AND query LIKE '%pg_advisory_xact_lock(715)%'").strip() == "1")
        # A later event commits and is delivered while the early one is open.
        assert st.admin("POST", f"/v1/admin/devices/{late}/revoke").status_code == 200
        assert wait_for(lambda: event_ids(st, [late]) <= set(rec.ids()), timeout=20)
        assert p.poll() is None
    finally:
        st.psql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE query LIKE '%pg_sleep(120)%' AND pid <> pg_backend_pid()")
        holder.wait(20)
    assert p.wait(20) == 0
    assert wait_for(lambda: event_ids(st, [early]) <= set(rec.ids()), timeout=20)
    ids = st.psql(f"SELECT device_id FROM events WHERE device_id IN ('{early}', '{late}')"
                  " ORDER BY id").split()
    assert ids == [early, late], ids  # the early one has the lower id


def test_a_long_replay_takes_several_requests(tmp_path):
    """10,001 kept events: kmsctl replays them in two requests of at most
    10,000 each, the range fixed by the first. The webhook is a closed port,
    so the deliveries made due only back off."""
    secret = tmp_path / "s"
    secret.write_bytes(SECRET)
    os.chmod(secret, 0o600)
    st = Stack("events-replay")
    try:
        st.start(extra_env={"QKMS_WEBHOOK_URLS": "http://127.0.0.1:9/x",
                            "QKMS_WEBHOOK_SECRET_FILE": str(secret)})
        assert wait_for(lambda: st.psql("SELECT count(*) FROM webhooks").strip() == "1")
        st.psql("INSERT INTO events (type, device_id) SELECT 'device.revoked', 'R' || g"
                " FROM generate_series(1, 10001) g")
        p = st.kmsctl("--json", "events", "replay", "--after", "0")
        assert p.returncode == 0, p.stderr
        last = int(st.psql("SELECT max(id) FROM events").strip())
        assert json.loads(p.stdout) == {"after": 0, "until": last, "deliveries": 10001}
        assert st.psql("SELECT count(*) FROM event_deliveries").strip() == "10001"
        assert st.psql("SELECT count(*) FROM audit_log WHERE event = 'events.replayed'"
                       ).strip() == "2"
        # One request does 10,000 and says where the next starts. The rows
        # the delivery thread holds leased at that moment (one batch, at
        # most 4) are left to it, so up to 4 may not be re-armed.
        r = st.admin("POST", "/v1/admin/events/replay", json={"after": 0})
        tenth = int(st.psql("SELECT id FROM events ORDER BY id OFFSET 9999 LIMIT 1").strip())
        assert r.status_code == 200, r.text
        got = r.json()
        assert 10000 - 4 <= got.pop("deliveries") <= 10000, r.text
        assert got == {"after": 0, "until": last, "next": tenth}, r.text
        r = st.admin("POST", "/v1/admin/events/replay", json={"after": tenth, "until": last})
        got = r.json()
        assert got.pop("deliveries") in (0, 1), r.text  # 0 if that row is leased
        assert got == {"after": tenth, "until": last, "next": None}, r.text
        assert st.stop() == 0
    finally:
        st.destroy()
