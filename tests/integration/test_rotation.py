"""Master key rotation under concurrent session-key load: zero failed
requests, every key readable afterwards, the old version destroyed in the
token only once nothing references it."""
import os
import re
import subprocess
import threading
import time
import uuid

from conftest import SOFTHSM
from helpers import ask_key, make_device


def token_labels(st):
    env = dict(os.environ, SOFTHSM2_CONF=st.env["SOFTHSM2_CONF"])
    out = subprocess.run(["pkcs11-tool", "--module", SOFTHSM, "--token-label", "qkms", "--login",
                          "--pin", st.token_pin, "--list-objects", "--type", "secrkey"],
                         env=env, capture_output=True, text=True, check=True).stdout
    return sorted(re.findall(r"label:\s+(\S+)", out))


def ask(st, dev, sid, peer):
    req, r = ask_key(st, dev, sid, peer)
    return r.status_code, (dev.open_key_response(req, r.json()) if r.status_code == 200 else r.text)


def test_rotation_under_load(fresh_stack):
    st = fresh_stack
    st.start(extra_env={"QKMS_MAINTENANCE_INTERVAL": "1", "QKMS_RATE_LIMIT_DEVICE": "0",
                        "QKMS_RATE_LIMIT_CLIENT": "0"})
    assert st.admin("POST", "/v1/admin/policies",
                    json={"name": "all", "type_a": "*", "type_b": "*"}).status_code == 201
    pairs = [(make_device(st, "vehicle", keys=2), make_device(st, "encryptor", keys=2))
             for _ in range(4)]
    # Sessions that exist before the rotation and must survive it.
    before = {}
    for i, (veh, enc) in enumerate(pairs):
        sid = f"B-{i}-{uuid.uuid4().hex[:8]}"
        st_, k = ask(st, veh, sid, enc)
        assert st_ == 200
        before[sid] = (veh, enc, k.key)
    # 100 more devices so the rewrap takes a few batches' worth of work.
    rows = [{"device_id": f"R-{uuid.uuid4().hex[:10]}", "type": "meter"} for _ in range(100)]
    assert st.admin("POST", "/v1/admin/devices/import", json={"devices": rows}).json()["failed"] == 0

    failures, done = [], []
    stop = threading.Event()

    def load(i):
        veh, enc = pairs[i % len(pairs)]
        n = 0
        while not stop.is_set():
            sid = f"L-{i}-{n}-{uuid.uuid4().hex[:6]}"
            n += 1
            a, ka = ask(st, veh, sid, enc)
            b, kb = ask(st, enc, sid, veh)
            if a != 200 or b != 200 or ka.key != kb.key:
                failures.append((sid, a, b))
            else:
                done.append(sid)

    threads = [threading.Thread(target=load, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    time.sleep(1)
    p = st.kmsctl("master", "rotate", token=st.admin_token)
    assert p.returncode == 0, p.stderr
    deadline = time.time() + 60
    status = None
    while time.time() < deadline:
        status = st.admin("GET", "/v1/admin/master").json()
        states = {v["version"]: v["state"] for v in status["versions"]}
        if status["active"] == 2 and states.get(1) == "destroyed":
            break
        time.sleep(0.5)
    time.sleep(1)
    stop.set()
    for t in threads:
        t.join(timeout=60)

    assert failures == [], (failures[:5], [l for l in st.logs().splitlines()
                                           if '"level":"error"' in l or "ckr" in l][:8])
    assert len(done) > 20
    assert status["active"] == 2 and {v["version"]: v["state"] for v in status["versions"]} == {
        1: "destroyed", 2: "active"}, status
    assert status["pending_rewrap"] == 0
    assert st.psql("SELECT count(*) FROM device_keys WHERE master_version = 1").strip() == "0"
    assert token_labels(st) == ["qkms-master-2"]
    # Every device key is readable (check values need an unwrap) ...
    for did in [r["device_id"] for r in rows[:10]]:
        keys = st.admin("GET", f"/v1/admin/devices/{did}/keys?kcv=true").json()["keys"]
        assert all(len(k["kcv"]) == 10 for k in keys)
    # ... the sessions from before still deliver the same key ...
    for sid, (veh, enc, key) in before.items():
        st_, k = ask(st, enc, sid, veh)
        assert st_ == 200 and k.key == key
    # ... and a restart finds only the new version.
    st.restart()
    st_, k = ask(st, pairs[0][0], f"A-{uuid.uuid4().hex}", pairs[0][1])
    assert st_ == 200
    m = st.kmsctl("master", "status", token=st.admin_token)
    assert m.returncode == 0 and re.search(r"^2\s+qkms-master-2\s+active", m.stdout, re.M), m.stdout
    audit = st.psql("SELECT event FROM audit_log WHERE event LIKE 'master.%' ORDER BY id").split()
    assert audit == ["master.rotated", "master.destroyed"]


def test_rotation_requires_admin(stack):
    op = stack.admin("POST", "/v1/admin/tokens", json={"name": "op-" + uuid.uuid4().hex[:6],
                                                       "role": "operator"}).json()["token"]
    assert stack.api("POST", "/v1/admin/master/rotate", token=op).status_code == 403
    assert stack.api("GET", "/v1/admin/master", token=op).status_code == 200
