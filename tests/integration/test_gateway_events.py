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
import signal
import threading
import time
import uuid

import pytest

from conftest import Stack, _finish, wait_for
from helpers import error_code, uid

SECRET = b"s" * 24 + os.urandom(16).hex().encode()


class Receiver:
    """Records every signed POST; can hold answers, or fail some."""

    def __init__(self):
        self.got = []          # (event_id, body dict)
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
           "QKMS_MAINTENANCE_INTERVAL": "1"}
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
    wait_for(lambda: want <= set(rec.ids()), timeout=20)
    assert rec.bad_sigs == 0
    doc = dict(rec.got)[next(iter(want))]
    assert doc["type"] == "device.revoked" and doc["device_id"] in dids
    assert set(doc) == {"id", "event_id", "type", "device_id", "created_at", "detail"}
    # The admin view, with the webhook's cursor.
    r = st.admin("GET", "/v1/admin/events?limit=1000")
    assert r.status_code == 200, r.text
    assert want <= {e["event_id"] for e in r.json()["events"]}
    hook = r.json()["webhooks"][0]
    assert hook["url"] == rec.url and hook["delivered"] >= 3 and hook["pending"] == 0
    for q in ("after=-1", "limit=0", "limit=1001", "after=x"):
        r = st.admin("GET", f"/v1/admin/events?{q}")
        assert r.status_code == 400 and error_code(r) == "invalid_query", q


def test_a_failure_is_retried(ev):
    st, rec = ev
    rec.fail_next = 1
    did = revoked(st, 1)
    want = event_ids(st, did)
    wait_for(lambda: want <= set(rec.ids()), timeout=30)
    assert "qkms_event_delivery_failures_total" in st.admin("GET", "/metrics").text


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
    wait_for(lambda: want <= set(rec.ids()), timeout=90)
    got = [i for i in rec.ids() if i in want]
    # Every event arrived; a repeat carries the same event_id.
    assert set(got) == want and len(got) <= len(want) + 4, got


def test_replay_and_the_apps_view(ev):
    st, rec = ev
    # An app binds a gateway: the event is the app's too.
    r = st.admin("POST", "/v1/admin/apps", json={"name": "ev-" + uuid.uuid4().hex[:6]})
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
    assert [(e["type"], e["device_id"]) for e in r.json()["events"]] == [("device.bound", gid)]
    assert r.json()["next"] is None
    # Replay: everything after an id comes again.
    first = st.admin("GET", "/v1/admin/events?limit=1").json()["events"][0]["id"]
    n = len(rec.got)
    r = st.admin("POST", "/v1/admin/events/replay", json={"after": first - 1})
    total = int(st.psql(f"SELECT count(*) FROM events WHERE id >= {first}").strip())
    assert r.status_code == 200 and r.json() == {"after": first - 1, "deliveries": total}, r.text
    wait_for(lambda: len(rec.got) >= n + total, timeout=30)
    for body in ({}, {"after": -1}, {"after": "1"}, {"after": 1, "x": 2}):
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
    finally:
        st.destroy()


def test_an_event_committed_late_is_delivered(ev):
    """Delivery rows are chosen by state, not by id: an event whose
    transaction commits after a later event's is delivered all the same."""
    st, rec = ev
    import subprocess
    early, late = uid("EV"), uid("EV")
    for d in (early, late):
        assert st.admin("POST", "/v1/admin/devices", json={"device_id": d,
                                                           "type": "vehicle"}).status_code == 201
    # A transaction that writes an event and holds it open...
    p = subprocess.Popen(["psql", "-X", "-q", "-d", st.pg_dsn, "-c",
                          "BEGIN; INSERT INTO audit_log (actor, event, device_id, detail)"
                          f" VALUES ('test', 'device.revoked', '{early}', '{{}}');"
                          " SELECT pg_sleep(4); COMMIT;"])
    time.sleep(1)
    # ... while a later one commits and is delivered.
    assert st.admin("POST", f"/v1/admin/devices/{late}/revoke").status_code == 200
    wait_for(lambda: event_ids(st, [late]) <= set(rec.ids()), timeout=20)
    assert p.wait(20) == 0
    wait_for(lambda: event_ids(st, [early]) <= set(rec.ids()), timeout=20)

