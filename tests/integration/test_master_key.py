"""The master key in the real SoftHSM token: attributes, persistence, and
refusing to start when the database's keys can no longer be opened."""
import json
import os
import re
import subprocess
import threading
import time

import pytest
import requests

from conftest import KMSD, ROOT, SOFTHSM, Stack, free_port, wait_for, wait_readyz


def pkcs11_tool(st, *args, env=None):
    env = env or dict(os.environ, SOFTHSM2_CONF=st.env["SOFTHSM2_CONF"])
    p = subprocess.run(["pkcs11-tool", "--module", SOFTHSM, "--token-label", "qkms", "--login",
                        "--pin", st.token_pin, *args], env=env, capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 0, p.stderr
    return p.stdout


def secret_keys(st):
    """Parse pkcs11-tool's object list into {label: {usage, access}}."""
    out = pkcs11_tool(st, "--list-objects", "--type", "secrkey")
    keys = {}
    for block in out.split("Secret Key Object")[1:]:
        label = re.search(r"label:\s+(\S+)", block).group(1)
        keys[label] = {
            "header": block.splitlines()[0],
            "usage": re.search(r"Usage:\s+(.*)", block).group(1),
            "access": re.search(r"Access:\s+(.*)", block).group(1),
        }
    return keys


def test_master_key_is_sensitive_and_never_extractable(stack):
    keys = secret_keys(stack)
    assert list(keys) == ["qkms-master-1"]
    k = keys["qkms-master-1"]
    assert "AES length 32" in k["header"]
    access = [a.strip() for a in k["access"].split(",")]
    assert "sensitive" in access and "never extractable" in access
    assert "extractable" not in access  # only the "never extractable" form
    usage = [u.strip() for u in k["usage"].split(",")]
    assert set(usage) == {"encrypt", "decrypt", "wrap", "unwrap"}


def test_restart_finds_the_same_master_key(fresh_stack):
    st = fresh_stack
    st.start()
    kcv1 = st.psql("SELECT encode(kcv, 'hex') FROM master_keys WHERE version = 1").strip()
    st.restart()
    assert st.admin("GET", "/v1/admin/status").json()["master_key"]["label"] == "qkms-master-1"
    assert list(secret_keys(st)) == ["qkms-master-1"]  # no second key was made
    assert st.psql("SELECT count(*) FROM master_keys").strip() == "1"
    assert st.psql("SELECT encode(kcv, 'hex') FROM master_keys WHERE version = 1").strip() == kcv1
    assert "master key created" not in st.logs().split("kmsd starting")[-1]


def test_refuses_to_start_without_its_master_key(fresh_stack):
    st = fresh_stack
    st.start()
    assert st.stop() == 0
    pkcs11_tool(st, "--delete-object", "--type", "secrkey", "--label", "qkms-master-1")
    proc = st.start(wait=False)
    rc = proc.wait(timeout=60)
    st.proc = None
    st.log.close()
    assert rc != 0
    assert re.search(r"holds keys wrapped under master key qkms-master-1, but token 'qkms' has "
                     r"no such key; refusing to start", st.logs())
    # It did not quietly make a new key either.
    assert secret_keys(st) == {}


def test_refuses_a_different_key_under_the_same_label(fresh_stack):
    st = fresh_stack
    st.start()
    assert st.stop() == 0
    pkcs11_tool(st, "--delete-object", "--type", "secrkey", "--label", "qkms-master-1")
    pkcs11_tool(st, "--keygen", "--key-type", "AES:32", "--label", "qkms-master-1",
                "--sensitive", "--extractable")
    proc = st.start(wait=False)
    rc = proc.wait(timeout=60)
    st.proc = None
    st.log.close()
    assert rc != 0
    assert "check value mismatch" in st.logs()


def test_two_kmsd_starting_together_agree(fresh_stack):
    """Migrations and master key creation run under advisory locks."""
    st = fresh_stack
    second_port = free_port()
    procs = []
    logs = []

    def launch(port):
        env = dict(st.env, QKMS_LISTEN_PORT=str(port))
        log = open(os.path.join(st.state, f"kmsd-{port}.log"), "wb")
        logs.append(log)
        procs.append(subprocess.Popen([KMSD, "-c", st.conf], env=env, stdout=log, stderr=log))

    threads = [threading.Thread(target=launch, args=(p,)) for p in (st.port, second_port)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    def alive():
        assert all(p.poll() is None for p in procs), [open(l.name).read()[-3000:] for l in logs]

    try:
        for port in (st.port, second_port):
            assert wait_readyz(f"http://127.0.0.1:{port}", 30, alive), \
                [open(l.name).read()[-3000:] for l in logs]
        assert list(secret_keys(st)) == ["qkms-master-1"]
        assert st.psql("SELECT count(*) FROM master_keys").strip() == "1"
        assert st.psql("SELECT count(*) FROM qkms_schema_migrations WHERE version = 1").strip() == "1"
    finally:
        for p in procs:
            p.terminate()
        for l in logs:
            l.close()
        for p, l in zip(procs, logs):
            assert p.wait(timeout=30) == 0, open(l.name).read()[-5000:]


def test_check_config_names_the_bad_line(fresh_stack):
    st = fresh_stack
    bad = os.path.join(st.state, "bad.conf")
    with open(st.conf) as f:
        text = f.read()
    with open(bad, "w") as f:
        f.write(text + "listen_port = 8471\n")
    p = subprocess.run([KMSD, "-c", bad, "--check-config"], env=st.env, capture_output=True,
                       text=True)
    n = len(text.splitlines()) + 1
    assert p.returncode == 2
    assert f"bad.conf:{n}: option 'listen_port' set twice" in p.stderr
    with open(bad, "w") as f:
        f.write(text + "frobnicate = 1\n")
    p = subprocess.run([KMSD, "-c", bad, "--check-config"], env=st.env, capture_output=True,
                       text=True)
    assert p.returncode == 2 and f"bad.conf:{n}: unknown option 'frobnicate'" in p.stderr
    p = subprocess.run([KMSD, "-c", st.conf, "--check-config"], env=st.env, capture_output=True,
                       text=True)
    assert p.returncode == 0, p.stderr
    env = dict(st.env, QKMS_DB_POOL_SIZE="lots")
    p = subprocess.run([KMSD, "-c", st.conf, "--check-config"], env=env, capture_output=True,
                       text=True)
    assert p.returncode == 2 and "QKMS_DB_POOL_SIZE" in p.stderr


def test_sighup_reloads_log_level(fresh_stack):
    st = fresh_stack
    st.start()
    requests.get(st.url + "/healthz", headers={"X-Request-Id": "before-hup"})
    import signal
    import time
    with open(st.conf) as f:
        good = f.read()
    # A broken file is refused and the running configuration kept.
    with open(st.conf, "a") as f:
        f.write("log_level = debug\n")  # set twice
    st.proc.send_signal(signal.SIGHUP)
    assert wait_for(lambda: "reload failed" in st.logs(), 5, 0.1)
    assert "set twice" in st.logs()
    assert requests.get(st.url + "/readyz").status_code == 200
    with open(st.conf, "w") as f:
        f.write(good.replace("log_level = info", "log_level = debug"))
    st.proc.send_signal(signal.SIGHUP)
    assert wait_for(lambda: "configuration reloaded" in st.logs(), 5, 0.1)
    requests.get(st.url + "/healthz", headers={"X-Request-Id": "after-hup"})
    time.sleep(0.2)
    ids = [r.get("req_id") for r in st.log_records()]
    # Probes are logged only at debug level.
    assert "before-hup" not in ids and "after-hup" in ids


def test_no_core_dumps(stack):
    pid = stack.proc.pid
    with open(f"/proc/{pid}/limits") as f:
        line = [l for l in f if l.startswith("Max core file size")][0]
    assert line.split()[4:6] == ["0", "0"], line


def test_admin_token_file_is_private(stack):
    mode = os.stat(os.path.join(stack.state, "admin.token")).st_mode & 0o777
    assert mode == 0o600
    for name in ("token.pin", "token.so-pin", "db.password", "pgpass"):
        assert os.stat(os.path.join(stack.state, "secrets", name)).st_mode & 0o077 == 0


def test_no_secret_in_database(stack):
    dump = subprocess.run(["pg_dump", "-d", stack.pg_dsn], capture_output=True, text=True,
                          timeout=120)
    assert dump.returncode == 0, dump.stderr
    assert stack.admin_token not in dump.stdout
    assert stack.token_pin not in dump.stdout


def test_token_outage_gives_503_and_recovers(fresh_stack):
    """The token's store disappears under kmsd (an HSM going away): readiness
    and token-backed calls answer 503 naming the token, and once it is back
    kmsd re-initializes the module and recovers without a restart."""
    import glob
    import shutil
    import time
    st = fresh_stack
    st.start()
    tokdir = glob.glob(os.path.join(st.state, "softhsm", "tokens", "*"))[0]
    away = os.path.join(st.state, "token-away")
    shutil.move(tokdir, away)
    try:
        r = requests.get(st.url + "/readyz")
        assert r.status_code == 503
        assert r.json()["error"]["down"] == ["token"]
        assert r.json()["checks"]["token"].startswith("CKR_")
        assert r.headers["Retry-After"] == "1"
        time.sleep(2.5)  # past the re-initialization interval: still down
        assert requests.get(st.url + "/readyz").status_code == 503
    finally:
        shutil.move(away, tokdir)
    deadline = time.time() + 15
    while time.time() < deadline:
        r = requests.get(st.url + "/readyz")
        if r.status_code == 200:
            break
        time.sleep(0.3)
    assert r.status_code == 200, r.text
    logs = st.logs()
    assert "token module re-initialized after a failure" in logs
    m = requests.get(st.url + "/metrics").text
    assert re.search(r"^qkms_pkcs11_reinits_total [1-9]", m, re.M)
    # Same master key as before, still usable.
    assert st.admin("GET", "/v1/admin/status").json()["master_key"]["label"] == "qkms-master-1"


def test_rotation_refuses_a_planted_key_under_the_next_label(fresh_stack):
    """Key generation looks for its label before creating (issue 12 item 10,
    and the first try too): a key already under the next version's label is
    adopted only if kmsd could have made it. An extractable one planted there
    is refused, no second key with that label appears, and kmsd still starts."""
    st = fresh_stack
    st.start()
    assert st.stop() == 0
    pkcs11_tool(st, "--keygen", "--key-type", "AES:32", "--label", "qkms-master-2",
                "--sensitive", "--extractable")
    st.start()
    r = st.admin("POST", "/v1/admin/master/rotate")
    assert r.status_code == 503, r.text
    assert st.admin("GET", "/v1/admin/master").json()["active"] == 1
    listing = pkcs11_tool(st, "--list-objects", "--type", "secrkey")
    assert len(re.findall(r"label:\s+qkms-master-2\s", listing)) == 1, listing
    # The refusal leaves kmsd working and able to restart.
    st.restart()
    assert st.admin("GET", "/v1/admin/master").json()["active"] == 1


def copy_token(src, dst):
    """tools/softhsm-token-sync.sh, as docs/ha.md says: each file to a
    temporary name and renamed into place, so the running SoftHSM never
    reads a half-written object."""
    p = subprocess.run(["sh", os.path.join(ROOT, "tools", "softhsm-token-sync.sh"), src, dst],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    return p.stderr


def test_rotation_reaches_every_instance_token(fresh_stack):
    """docs/ha.md, "The same master key in every token", with SoftHSM: a
    second kmsd whose token is a copy of the first's directory (made at
    provisioning) opens what the first wrapped. A rotation with two live
    instances is staged: nothing is wrapped under the new version while
    the second's token lacks it, so both keep serving (and a second
    rotation is refused); once the directory is copied again the second
    reports the version and it turns active by itself. A forced rotation
    does not wait: the instance lacking the version then says so on its
    /readyz (a balancer routes around it) until its token gets it. A
    version destroyed by one instance is destroyed in the other's token."""
    import uuid

    from helpers import SecondKmsd, get_key, make_device

    st = fresh_stack
    st.start(extra_env={"QKMS_INSTANCE_NAME": "first", "QKMS_MAINTENANCE_INTERVAL": "1",
                        "QKMS_DEVICE_KEY_CACHE_TTL": "1"})
    r = st.admin("POST", "/v1/admin/policies", json={"name": "all", "type_a": "*", "type_b": "*"})
    assert r.status_code == 201, r.text
    src = os.path.join(st.state, "softhsm", "tokens")
    copy = os.path.join(st.state, "softhsm-copy")
    os.makedirs(os.path.join(copy, "tokens"))
    assert "file(s) copied" in copy_token(src, os.path.join(copy, "tokens"))
    conf = os.path.join(copy, "softhsm2.conf")
    with open(conf, "w") as f:
        f.write(f"directories.tokendir = {copy}/tokens\nobjectstore.backend = file\n"
                "log.level = ERROR\nslots.removable = false\n")
    other = SecondKmsd(st, extra_env={"SOFTHSM2_CONF": conf, "QKMS_INSTANCE_NAME": "second",
                                      "QKMS_MAINTENANCE_INTERVAL": "1",
                                      "QKMS_DEVICE_KEY_CACHE_TTL": "1"})

    def instances():
        r = st.admin("GET", "/v1/admin/master/instances")
        assert r.status_code == 200, r.text
        return {i["name"]: i for i in r.json()["instances"] if i["live"]}

    def master():
        r = st.admin("GET", "/v1/admin/master")
        assert r.status_code == 200, r.text
        return r.json()

    def readyz():
        return requests.get(other.url + "/readyz", timeout=5)

    def pair_under(version):
        sid = f"TC-{uuid.uuid4().hex}"
        a, b = get_key(st, veh, sid, enc), get_key(other, enc, sid, veh)
        assert a.key_id == b.key_id and a.key == b.key
        got = st.psql(f"SELECT master_version FROM sessions WHERE key_id = '{a.key_id}'").strip()
        assert got == str(version)

    try:
        veh, enc = make_device(st, "vehicle"), make_device(st, "encryptor")
        pair_under(1)
        assert wait_for(lambda: set(instances()) == {"first", "second"}, 30), instances()
        inst = instances()
        assert inst["first"]["versions"] == [1] and inst["second"]["versions"] == [1], inst
        assert inst["second"]["lacking"] == [] and inst["second"]["software"]
        r = requests.get(other.url + "/v1/admin/master/instances", timeout=10,
                         headers={"Authorization": f"Bearer {st.admin_token}"})
        assert r.status_code == 200 and r.json()["self"] == "second", r.text

        # Staged: the second's token lacks version 2.
        r = st.admin("POST", "/v1/admin/master/rotate")
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["active"] == 1 and body["staged"] == 2, body
        assert body["waiting_for"] == ["second"], body
        assert {v["version"]: v["state"] for v in body["versions"]} == {1: "active", 2: "staged"}
        r = st.admin("POST", "/v1/admin/master/rotate")
        assert r.status_code == 409 and r.json()["error"]["code"] == "rotation_pending", r.text
        r = st.admin("POST", "/v1/admin/master/rotate", json={"force": "yes"})
        assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request", r.text
        assert wait_for(lambda: instances()["first"]["versions"] == [1, 2], 10), instances()
        inst = instances()
        assert inst["second"]["versions"] == [1] and inst["second"]["lacking"] == [2], inst
        # The same through kmsctl, as an operator sees it.
        p = st.kmsctl("master", "status", token=st.admin_token, check=True)
        assert "staged version: 2   waiting for: [\"second\"]" in p.stdout, p.stdout
        p = st.kmsctl("master", "instances", "--json", token=st.admin_token, check=True)
        assert json.loads(p.stdout)["self"] == "first", p.stdout
        p = st.kmsctl("master", "instances", token=st.admin_token, check=True)
        line = next(x for x in p.stdout.splitlines() if x.startswith("second"))
        assert line.split()[1:4] == ["true", "[1]", "[2]"], p.stdout
        p = st.kmsctl("master", "rotate", token=st.admin_token)
        assert p.returncode != 0 and "rotation_pending" in p.stderr, (p.returncode, p.stderr)
        # Force from the instance that lacks it: refused (no token here holds it).
        r = requests.post(other.url + "/v1/admin/master/rotate", json={"force": True}, timeout=30,
                          headers={"Authorization": f"Bearer {st.admin_token}"})
        assert r.status_code == 409 and r.json()["error"]["code"] == "staged_not_held", r.text
        time.sleep(3)  # several maintenance steps: still staged, both serve
        assert master()["staged"] == 2
        m = st.admin("GET", "/metrics").text
        assert "qkms_instances_live 2\n" in m and "qkms_master_key_staged_waiting 1\n" in m, m
        assert int(re.search(r"^qkms_master_key_staged_seconds (\d+)$", m, re.M).group(1)) >= 2
        assert readyz().status_code == 200, readyz().text
        pair_under(1)

        copy_token(src, os.path.join(copy, "tokens"))
        assert wait_for(lambda: master()["active"] == 2, 30), master()
        m = master()
        assert m["staged"] is None and m["waiting_for"] == [], m
        assert wait_for(lambda: "qkms_master_key_staged_seconds 0\n"
                        in st.admin("GET", "/metrics").text, 10)
        assert readyz().status_code == 200, readyz().text
        assert instances()["second"]["versions"][-1] == 2
        pair_under(2)
        assert st.psql("SELECT count(*) FROM audit_log WHERE event = 'master.staged'"
                       " AND (detail->>'version')::int = 2").strip() == "1"
        assert st.psql("SELECT actor || ' ' || (detail->>'forced') FROM audit_log"
                       " WHERE event = 'master.rotated' AND (detail->>'to')::int = 2").strip() \
            == "kmsd false"

        # Version 1, retired and rewrapped away from, is destroyed by one
        # instance and then by the other in its own token.
        assert wait_for(lambda: {v["version"]: v["state"] for v in master()["versions"]}[1]
                        == "destroyed", 60), master()
        env = dict(os.environ, SOFTHSM2_CONF=conf)

        def second_labels():
            return pkcs11_tool(st, "--list-objects", "--type", "secrkey", env=env)
        assert wait_for(lambda: "qkms-master-1" not in second_labels(), 30), second_labels()
        assert "qkms-master-2" in second_labels()

        # Forced: active at once; the second lacks it and is not ready.
        r = st.admin("POST", "/v1/admin/master/rotate", json={"force": True})
        assert r.status_code == 200, r.text
        assert r.json()["active"] == 3 and r.json()["staged"] is None, r.text
        assert wait_for(lambda: readyz().status_code == 503, 30), readyz().text
        body = readyz().json()
        assert body["checks"]["token"] == "master key version 3 not in the token", body
        assert body["checks"]["database"] == "ok"
        copy_token(src, os.path.join(copy, "tokens"))
        assert wait_for(lambda: readyz().status_code == 200, 30), readyz().text
        pair_under(3)
    finally:
        assert other.stop() == 0
    # A clean stop leaves the registry.
    assert "second" not in instances()
