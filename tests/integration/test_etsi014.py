"""ETSI GS QKD 014 (issue 17, docs/etsi014.md) end to end against real kmsd,
PostgreSQL and SoftHSM, with python3-requests and real client certificates
as the SAEs: Get status, Get key and Get key with key IDs in their GET and
POST forms, multicast keys, a third SAE refused, single delivery, expiry,
all-or-nothing refusals, and every answer checked against a JSON Schema
written from the standard's data formats."""
import base64
import json
import time
import uuid

import pytest
import requests

from conftest import Stack, _finish, wait_for
from test_mtls import Mtls

STATUS_FIELDS = {"source_KME_ID", "target_KME_ID", "master_SAE_ID", "slave_SAE_ID", "key_size",
                 "stored_key_count", "max_key_count", "max_key_per_request", "max_key_size",
                 "min_key_size", "max_SAE_ID_count"}


@pytest.fixture(scope="module")
def mt(tmp_path_factory):
    st = Stack("etsi")
    try:
        m = Mtls(st, str(tmp_path_factory.mktemp("etsi")), "require")
        r = st.admin("POST", "/v1/admin/policies", json={
            "name": "sae-sae", "type_a": "encryptor", "type_b": "encryptor"})
        assert r.status_code == 201, r.text
    except BaseException:
        _finish(st)
        raise
    LAST["st"] = st
    yield m
    _finish(st)


class Sae:
    def __init__(self, mt, sae_id=None, type_="encryptor"):
        self.mt = mt
        dev, self.crt, self.key, _ = mt.device(type_)
        self.device_id = dev.device_id
        self.sae_id = sae_id or "SAE-" + uuid.uuid4().hex[:8]
        r = mt.st.admin("POST", f"/v1/admin/devices/{self.device_id}/sae",
                        json={"sae_id": self.sae_id})
        assert r.status_code == 200, r.text
        assert r.json()["sae_id"] == self.sae_id

    def call(self, method, sae, op, body=None, params=None, raw=None):
        url = f"{self.mt.url}/api/v1/keys/{sae}/{op}"
        kw = {"cert": (self.crt, self.key), "verify": self.mt.crt, "timeout": 30,
              "params": params}
        if method == "POST":
            kw["headers"] = {"Content-Type": "application/json"}
            kw["data"] = raw if raw is not None else json.dumps(body or {})
        r = requests.request(method, url, **kw)
        check_any(r, op)
        return r


LAST = {}


def keys_of(r):
    assert r.status_code == 200, r.text + LAST.get("st").logs()[-3000:] if LAST.get("st") else r.text
    body = r.json()
    check_container(body)
    return {k["key_ID"]: base64.b64decode(k["key"], validate=True) for k in body["keys"]}


# ---- the standard's data formats, as a JSON Schema ---------------------------------
# Written from ETSI GS QKD 014 V1.1.1's data formats (Status, Key container,
# Error); every answer of these tests is validated against it.
import jsonschema

UUID_RE = "^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$"
B64_RE = "^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"
INT = {"type": "integer", "minimum": 0}
SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$defs": {
        "status": {
            "type": "object",
            "required": sorted(STATUS_FIELDS),
            "additionalProperties": False,
            "properties": {
                "source_KME_ID": {"type": "string"}, "target_KME_ID": {"type": "string"},
                "master_SAE_ID": {"type": "string"}, "slave_SAE_ID": {"type": "string"},
                "key_size": INT, "stored_key_count": INT, "max_key_count": INT,
                "max_key_per_request": INT, "max_key_size": INT, "min_key_size": INT,
                "max_SAE_ID_count": INT, "status_extension": {"type": "object"},
            },
        },
        "container": {
            "type": "object",
            "required": ["keys"],
            "additionalProperties": False,
            "properties": {
                "keys": {
                    "type": "array", "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["key_ID", "key"],
                        "additionalProperties": False,
                        "properties": {
                            "key_ID": {"type": "string", "pattern": UUID_RE},
                            "key_ID_extension": {"type": "object"},
                            "key": {"type": "string", "pattern": B64_RE, "minLength": 4},
                            "key_extension": {"type": "object"},
                        },
                    },
                },
                "key_container_extension": {"type": "object"},
            },
        },
        "error": {
            "type": "object",
            "required": ["message"],
            "additionalProperties": False,
            "properties": {
                "message": {"type": "string"},
                "details": {"type": "array", "items": {"type": "object"}},
            },
        },
    },
}


def validate(body, what):
    jsonschema.validate(body, {**SCHEMA, "$ref": f"#/$defs/{what}"})


def check_container(body):
    validate(body, "container")


# qkms's use of the Error object's details: one object with a stable code.
QKMS_DETAILS = {"type": "array", "minItems": 1, "maxItems": 1,
                "items": {"type": "object", "required": ["qkms_code"], "additionalProperties": False,
                          "properties": {"qkms_code": {"type": "string",
                                                       "pattern": "^[a-z][a-z0-9_]*$"}}}}


def check_any(r, op):
    """Every answer of the door, by its status: the Status object, the Key
    container, or the Error object (qkms's details in it). Answers the gate
    gives before the door (the project's own shape) are not the standard's."""
    if r.status_code == 200:
        validate(r.json(), "status" if op == "status" else "container")
        return
    body = r.json()
    if "error" in body and "message" not in body:
        return
    validate(body, "error")
    jsonschema.validate(body["details"], QKMS_DETAILS)
    if r.status_code == 503:
        assert int(r.headers["Retry-After"]) >= 1


def check_error(r, status):
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    validate(body, "error")
    jsonschema.validate(body["details"], QKMS_DETAILS)
    return body["details"][0]["qkms_code"]


def check_status(body):
    validate(body, "status")


# ---- the three methods ------------------------------------------------------------

def test_status_enc_and_dec_give_identical_keys(mt):
    a, b = Sae(mt), Sae(mt)
    r = a.call("GET", b.sae_id, "status")
    assert r.status_code == 200, r.text
    st = r.json()
    check_status(st)
    assert st["master_SAE_ID"] == a.sae_id and st["slave_SAE_ID"] == b.sae_id
    assert st["stored_key_count"] == 0 and st["key_size"] == 256
    ka = keys_of(a.call("POST", b.sae_id, "enc_keys", {"number": 3, "size": 256}))
    assert len(ka) == 3 and all(len(k) == 32 for k in ka.values())
    assert a.call("GET", b.sae_id, "status").json()["stored_key_count"] == 3
    kb = keys_of(b.call("POST", a.sae_id, "dec_keys",
                        {"key_IDs": [{"key_ID": i} for i in ka]}))
    assert kb == ka
    # Delivered to its one slave: gone.
    assert a.call("GET", b.sae_id, "status").json()["stored_key_count"] == 0
    # Asked again: this slave had it (the tombstone says so), whoever asks
    # for a made-up key ID learns nothing.
    r = b.call("POST", a.sae_id, "dec_keys", {"key_IDs": [{"key_ID": next(iter(ka))}]})
    assert check_error(r, 400) == "already_fetched"
    r = b.call("POST", a.sae_id, "dec_keys", {"key_IDs": [{"key_ID": str(uuid.uuid4())}]})
    assert check_error(r, 401) == "not_yours"
    n = mt.st.psql("SELECT count(*) FROM qkd_key_tombstones WHERE reason = 'delivered'"
                   f" AND master_sae = '{a.sae_id}'").strip()
    assert n == "3"


def test_an_sae_is_heard_from(mt):
    """A successful ETSI request is the SAE's contact (docs/devices.md,
    "First contact"): status and enc_keys for the master, dec_keys for the
    slave; a refused one is not."""
    a, b, c = Sae(mt), Sae(mt), Sae(mt)

    def first_seen(sae):
        return mt.st.admin("GET", f"/v1/admin/devices/{sae.device_id}").json()["first_seen_at"]

    assert a.call("GET", b.sae_id, "status").status_code == 200
    assert wait_for(lambda: first_seen(a) is not None, timeout=30)
    ka = keys_of(a.call("POST", b.sae_id, "enc_keys", {"number": 1, "size": 256}))
    # c asks for a key that is not its own: refused, no contact.
    r = c.call("POST", a.sae_id, "dec_keys", {"key_IDs": [{"key_ID": next(iter(ka))}]})
    assert r.status_code == 401
    assert keys_of(b.call("POST", a.sae_id, "dec_keys",
                          {"key_IDs": [{"key_ID": i} for i in ka]})) == ka
    assert wait_for(lambda: first_seen(b) is not None, timeout=30)
    n = mt.st.psql("SELECT count(*) FROM audit_log WHERE event = 'device.first_contact'"
                   f" AND device_id IN ('{a.device_id}', '{b.device_id}')").strip()
    assert n == "2"
    assert first_seen(c) is None


def test_get_forms(mt):
    a, b = Sae(mt), Sae(mt)
    ka = keys_of(a.call("GET", b.sae_id, "enc_keys", params={"number": "2", "size": "128"}))
    assert len(ka) == 2 and all(len(k) == 16 for k in ka.values())
    kid = next(iter(ka))
    kb = keys_of(b.call("GET", a.sae_id, "dec_keys", params={"key_ID": kid}))
    assert kb == {kid: ka[kid]}
    # Defaults: one key of key_size bits.
    one = keys_of(a.call("GET", b.sae_id, "enc_keys"))
    assert len(one) == 1 and len(next(iter(one.values()))) == 32


def test_multicast_and_a_third_sae(mt):
    a, b, c, d = Sae(mt), Sae(mt), Sae(mt), Sae(mt)
    ka = keys_of(a.call("POST", b.sae_id, "enc_keys",
                        {"number": 1, "additional_slave_SAE_IDs": [c.sae_id]}))
    kid = next(iter(ka))
    body = {"key_IDs": [{"key_ID": kid}]}
    r = d.call("POST", a.sae_id, "dec_keys", body)
    assert check_error(r, 401) == "not_yours"
    assert keys_of(b.call("POST", a.sae_id, "dec_keys", body)) == ka
    r = b.call("POST", a.sae_id, "dec_keys", body)
    assert check_error(r, 400) == "already_fetched"
    assert keys_of(c.call("POST", a.sae_id, "dec_keys", body)) == ka
    # Both slaves have it: destroyed. Each slave is told it had it; the
    # third SAE gets what it would for a made-up key ID.
    assert mt.st.psql(f"SELECT count(*) FROM qkd_keys WHERE key_id = '{kid}'").strip() == "0"
    r = c.call("POST", a.sae_id, "dec_keys", body)
    assert check_error(r, 400) == "already_fetched"
    r = d.call("POST", a.sae_id, "dec_keys", body)
    assert check_error(r, 401) == "not_yours"
    # The key named with another master: not this pair's.
    ka2 = keys_of(a.call("POST", b.sae_id, "enc_keys", {"number": 1}))
    r = b.call("POST", c.sae_id, "dec_keys", {"key_IDs": [{"key_ID": next(iter(ka2))}]})
    assert check_error(r, 401) == "not_yours"


def test_all_or_nothing(mt):
    a, b = Sae(mt), Sae(mt)
    ka = keys_of(a.call("POST", b.sae_id, "enc_keys", {"number": 2}))
    ids = list(ka)
    bad = [{"key_ID": ids[0]}, {"key_ID": str(uuid.uuid4())}]
    assert check_error(b.call("POST", a.sae_id, "dec_keys", {"key_IDs": bad}), 401) == "not_yours"
    dup = [{"key_ID": ids[0]}, {"key_ID": ids[0]}]
    assert check_error(b.call("POST", a.sae_id, "dec_keys", {"key_IDs": dup}), 400)
    # Another pair's key beside this slave's own.
    c = Sae(mt)
    kc = keys_of(a.call("POST", c.sae_id, "enc_keys", {"number": 1}))
    mixed = [{"key_ID": ids[0]}, {"key_ID": next(iter(kc))}]
    assert check_error(b.call("POST", a.sae_id, "dec_keys", {"key_IDs": mixed}), 401) == "not_yours"
    # Nothing was consumed.
    assert keys_of(b.call("POST", a.sae_id, "dec_keys",
                          {"key_IDs": [{"key_ID": i} for i in ids]})) == ka
    # A key fetched already beside a new one: the new one stays.
    kn = keys_of(a.call("POST", b.sae_id, "enc_keys", {"number": 1}))
    again = [{"key_ID": next(iter(kn))}, {"key_ID": ids[1]}]
    assert check_error(b.call("POST", a.sae_id, "dec_keys", {"key_IDs": again}),
                       400) == "already_fetched"
    assert keys_of(b.call("GET", a.sae_id, "dec_keys", params={"key_ID": next(iter(kn))})) == kn
    assert keys_of(c.call("POST", a.sae_id, "dec_keys",
                          {"key_IDs": [{"key_ID": next(iter(kc))}]})) == kc


def test_bad_requests_are_400_and_make_nothing(mt):
    a, b = Sae(mt), Sae(mt)
    before = mt.st.psql("SELECT count(*) FROM qkd_keys").strip()
    for body in ({"number": 0}, {"number": -1}, {"number": 129}, {"number": "2"},
                 {"number": 1.5}, {"number": 10 ** 30}, {"size": 100}, {"size": 1024},
                 {"size": 0}, {"extension_mandatory": [{"x": 1}]},
                 {"additional_slave_SAE_IDs": ["NOPE-" + uuid.uuid4().hex]},
                 {"additional_slave_SAE_IDs": [f"X{i}" for i in range(9)]},
                 {"additional_slave_SAE_IDs": [b.sae_id]}, {"unknown": 1}):
        r = a.call("POST", b.sae_id, "enc_keys", body)
        assert check_error(r, 400), body
    for raw in (b"not json", b"[1]", b"{\"number\":1,\"number\":2}"):
        check_error(a.call("POST", b.sae_id, "enc_keys", raw=raw), 400)
    for params in ({"number": "x"}, {"number": "-1"}, {"size": "12"}):
        check_error(a.call("GET", b.sae_id, "enc_keys", params=params), 400)
    check_error(a.call("POST", "NOPE-" + uuid.uuid4().hex, "enc_keys", {}), 400)
    check_error(a.call("GET", b.sae_id, "dec_keys", params={"key_ID": "not-a-uuid"}), 400)
    ka = keys_of(a.call("POST", b.sae_id, "enc_keys", {"number": 1}))
    # The GET form takes one key_ID.
    r = b.call("GET", a.sae_id, "dec_keys", params=[("key_ID", next(iter(ka))),
                                                   ("key_ID", str(uuid.uuid4()))])
    assert check_error(r, 400) == "invalid_request"
    # dec_keys by the master itself: the standard's 401 (not named).
    r = a.call("POST", a.sae_id, "dec_keys", {"key_IDs": [{"key_ID": next(iter(ka))}]})
    assert check_error(r, 401) == "not_yours"
    assert int(mt.st.psql("SELECT count(*) FROM qkd_keys").strip()) == int(before) + 1


def test_no_policy_or_no_sae_is_401(mt):
    a = Sae(mt)
    v = Sae(mt, type_="vehicle")
    # vehicle and encryptor pair under veh-enc; a meter has no policy.
    m = Sae(mt, type_="meter")
    check_error(a.call("POST", m.sae_id, "enc_keys", {}), 401)
    assert keys_of(a.call("POST", v.sae_id, "enc_keys", {}))
    dev, crt, key, _ = mt.device("encryptor")
    r = requests.get(f"{mt.url}/api/v1/keys/{a.sae_id}/status", cert=(crt, key),
                     verify=mt.crt, timeout=30)
    assert check_error(r, 401) == "not_an_sae"


def test_an_sae_out_of_service_is_refused(mt):
    """docs/gateways.md, "Service validity": the caller 401 service_expired
    (the standard has no 403), a slave 400 slave_inactive; renewed, served."""
    a, b = Sae(mt), Sae(mt)
    ka = keys_of(a.call("POST", b.sae_id, "enc_keys", {}))

    def service(sae, **body):
        r = mt.st.admin("POST", f"/v1/admin/devices/{sae.device_id}/service", json=body)
        assert r.status_code == 200, r.text

    service(b, until="2020-01-01T00:00:00Z")
    # What Get key refuses, Get status refuses too.
    assert check_error(a.call("GET", b.sae_id, "status"), 400) == "slave_inactive"
    r = b.call("POST", a.sae_id, "dec_keys", {"key_IDs": [{"key_ID": k} for k in ka]})
    assert check_error(r, 401) == "service_expired"
    assert check_error(b.call("GET", a.sae_id, "status"), 401) == "service_expired"
    assert check_error(a.call("POST", b.sae_id, "enc_keys", {}), 400) == "slave_inactive"
    service(b, days=1)
    r = b.call("POST", a.sae_id, "dec_keys", {"key_IDs": [{"key_ID": k} for k in ka]})
    assert keys_of(r) == ka
    service(a, until="2020-01-01T00:00:00Z")
    assert check_error(a.call("POST", b.sae_id, "enc_keys", {}), 401) == "service_expired"
    service(a, until=None)
    assert keys_of(a.call("POST", b.sae_id, "enc_keys", {}))


def test_keys_no_slave_fetches_expire(mt):
    grp_policy = "short-" + uuid.uuid4().hex[:6]
    r = mt.st.admin("POST", "/v1/admin/policies", json={
        "name": grp_policy, "type_a": "gateway", "type_b": "gateway", "max_lifetime_s": 1})
    assert r.status_code == 201, r.text
    a, b = Sae(mt, type_="gateway"), Sae(mt, type_="gateway")
    ka = keys_of(a.call("POST", b.sae_id, "enc_keys", {"number": 1}))
    kid = next(iter(ka))
    time.sleep(1.5)
    r = b.call("POST", a.sae_id, "dec_keys", {"key_IDs": [{"key_ID": kid}]})
    assert check_error(r, 400) == "unknown_key"
    assert wait_for(lambda: mt.st.psql(
        f"SELECT reason FROM qkd_key_tombstones WHERE key_id = '{kid}'").strip() == "expired",
        timeout=30)
    assert mt.st.psql(f"SELECT count(*) FROM qkd_keys WHERE key_id = '{kid}'").strip() == "0"


def test_keys_exist_only_wrapped(mt):
    a, b = Sae(mt), Sae(mt)
    ka = keys_of(a.call("POST", b.sae_id, "enc_keys", {"number": 1}))
    kid, key = next(iter(ka.items()))
    stored = mt.st.psql(f"SELECT encode(wrapped_key, 'hex') FROM qkd_keys WHERE key_id = '{kid}'")
    assert key.hex() not in stored and len(stored.strip()) > 2 * len(key)
    assert keys_of(b.call("POST", a.sae_id, "dec_keys", {"key_IDs": [{"key_ID": kid}]})) == ka
    # Nowhere else either: the audit rows, the tombstone, kmsd's log.
    forms = (key.hex(), key.hex().upper(), base64.b64encode(key).decode())
    audit = mt.st.psql(f"SELECT detail::text FROM audit_log WHERE detail::text LIKE '%{kid}%'")
    tomb = mt.st.psql(f"SELECT row_to_json(t)::text FROM qkd_key_tombstones t WHERE key_id = '{kid}'")
    assert kid in audit and kid in tomb
    logs = mt.st.logs()
    for f in forms:
        assert f not in audit and f not in tomb and f not in logs


# ---- concurrency, several instances, faults -----------------------------------------

def test_racing_slaves_get_each_key_once(mt):
    import concurrent.futures
    a, b, c = Sae(mt), Sae(mt), Sae(mt)
    ka = keys_of(a.call("POST", b.sae_id, "enc_keys",
                        {"number": 8, "additional_slave_SAE_IDs": [c.sae_id]}))
    body = {"key_IDs": [{"key_ID": i} for i in ka]}
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as ex:
        futs = [ex.submit(s.call, "POST", a.sae_id, "dec_keys", body) for s in (b, c) * 4]
        answers = [f.result() for f in futs]
    ok = [r for r in answers if r.status_code == 200]
    # Each slave exactly once; the same keys for both.
    assert len(ok) == 2, [r.status_code for r in answers]
    assert all(keys_of(r) == ka for r in ok)
    assert all(check_error(r, 400) in ("already_fetched", "unknown_key")
               for r in answers if r.status_code != 200)
    n = mt.st.psql("SELECT count(*) FROM audit_log WHERE event = 'qkd.keys_fetched'"
                   f" AND detail->>'master_sae' = '{a.sae_id}'").strip()
    assert n == "2"


def test_two_instances_share_the_keys(mt):
    from helpers import SecondKmsd
    from conftest import free_port
    a, b = Sae(mt), Sae(mt)
    aport = free_port()
    env = dict(mt.env("require"), QKMS_ADMIN_LISTEN_PORT=str(aport))
    env.pop("QKMS_LISTEN_PORT")
    second = SecondKmsd(mt.st, env, ready_url=f"http://127.0.0.1:{aport}")
    try:
        url2 = f"https://127.0.0.1:{second.port}"
        ka = keys_of(a.call("POST", b.sae_id, "enc_keys", {"number": 4}))
        r = requests.post(f"{url2}/api/v1/keys/{a.sae_id}/dec_keys",
                          json={"key_IDs": [{"key_ID": i} for i in ka]}, cert=(b.crt, b.key),
                          verify=mt.crt, timeout=30)
        assert keys_of(r) == ka
        r = b.call("POST", a.sae_id, "dec_keys", {"key_IDs": [{"key_ID": next(iter(ka))}]})
        assert check_error(r, 400) == "already_fetched"
        # Two slaves of one multicast key, each asking both instances at once:
        # each slave gets the keys exactly once, on one instance or the other.
        import concurrent.futures
        c = Sae(mt)
        km = keys_of(a.call("POST", b.sae_id, "enc_keys",
                            {"number": 6, "additional_slave_SAE_IDs": [c.sae_id]}))
        body = {"key_IDs": [{"key_ID": i} for i in km]}

        def fetch(s, base):
            r = requests.post(f"{base}/api/v1/keys/{a.sae_id}/dec_keys", json=body,
                              cert=(s.crt, s.key), verify=mt.crt, timeout=30)
            check_any(r, "dec_keys")
            return s, r
        with concurrent.futures.ThreadPoolExecutor(max_workers=8) as ex:
            futs = [ex.submit(fetch, s, base) for s in (b, c) for base in (mt.url, url2) * 2]
            answers = [f.result() for f in futs]
        for s in (b, c):
            mine = [r for who, r in answers if who is s]
            ok = [r for r in mine if r.status_code == 200]
            assert len(ok) == 1, [r.status_code for r in mine]
            assert keys_of(ok[0]) == km
            assert all(check_error(r, 400) == "already_fetched" for r in mine if r.status_code != 200)
        assert mt.st.psql("SELECT count(*) FROM qkd_keys WHERE key_id IN ("
                          + ",".join(f"'{k}'" for k in km) + ")").strip() == "0"
    finally:
        second.stop()


def test_metrics_and_kmsctl(mt):
    a, b = Sae(mt), Sae(mt)
    ka = keys_of(a.call("POST", b.sae_id, "enc_keys", {"number": 2}))
    r = mt.st.kmsctl("--json", "qkd", "status")
    assert r.returncode == 0, r.stderr
    pairs = json.loads(r.stdout)["pairs"]
    assert {"master_sae": a.sae_id, "slave_sae": b.sae_id} in [
        {k: p[k] for k in ("master_sae", "slave_sae")} for p in pairs]
    r = mt.st.kmsctl("--json", "qkd", "keys", "list", "--master", a.sae_id)
    assert r.returncode == 0, r.stderr
    listed = json.loads(r.stdout)["keys"]
    assert {k["key_id"] for k in listed} == set(ka)
    assert all("key" not in k for k in listed)
    assert all(k["slaves"] == [{"sae_id": b.sae_id, "fetched_at": None}] for k in listed)
    r = mt.st.kmsctl("qkd", "keys", "list", "--slave", b.sae_id)
    assert r.stdout.split("\n")[0].split() == ["KEY-ID", "MASTER-SAE", "SLAVES", "SIZE", "EXPIRES"]
    # SAE IDs with kmsctl: set, taken by another device, cleared.
    dev, _, _, _ = mt.device("encryptor")
    r = mt.st.kmsctl("device", "sae", dev.device_id, "SAE-KMSCTL-" + uuid.uuid4().hex[:6])
    assert r.returncode == 0, r.stderr
    r = mt.st.kmsctl("device", "sae", dev.device_id, a.sae_id)
    assert r.returncode != 0 and "another device" in r.stderr
    r = mt.st.kmsctl("--json", "device", "sae", dev.device_id, "--clear")
    assert r.returncode == 0 and json.loads(r.stdout)["sae_id"] is None
    m = requests.get(mt.st.url + "/metrics", headers={"Authorization": "Bearer " + mt.st.admin_token},
                     timeout=10).text
    import re
    assert re.search(r'qkms_qkd_keys_total\{event="issued"\} [1-9]', m)
    assert re.search(r'qkms_qkd_keys_total\{event="fetched"\} [1-9]', m)
    assert re.search(r'qkms_qkd_refusals_total\{reason="bad_request"\} [1-9]', m)
    assert re.search(r'qkms_qkd_refusals_total\{reason="unauthorized"\} [1-9]', m)


def test_entropy_down_is_503(tmp_path):
    from test_entropy import Qrng, entropy_env
    q = Qrng()
    st = Stack("etsi-ent")
    try:
        class EntMtls(Mtls):
            def env(self, mode):
                # And a low per-SAE rate limit, reached only at the end.
                return dict(super().env(mode), **entropy_env(q, "require"),
                            QKMS_RATE_LIMIT_DEVICE="1", QKMS_RATE_LIMIT_DEVICE_BURST="60")
        m = EntMtls(st, str(tmp_path), "require")
        assert st.admin("POST", "/v1/admin/policies", json={
            "name": "sae-sae", "type_a": "encryptor", "type_b": "encryptor"}).status_code == 201
        a, b = Sae(m), Sae(m)
        assert keys_of(a.call("POST", b.sae_id, "enc_keys", {"number": 1}))
        q.mode("down")
        assert wait_for(lambda: a.call("POST", b.sae_id, "enc_keys", {"number": 1}).status_code == 503,
                 timeout=30)
        before = st.psql("SELECT count(*) FROM qkd_keys").strip()
        r = a.call("POST", b.sae_id, "enc_keys", {"number": 3})
        assert check_error(r, 503) == "entropy_unavailable" and r.headers.get("Retry-After")
        # Nothing was made of a refused request.
        assert st.psql("SELECT count(*) FROM qkd_keys").strip() == before
        q.mode("ok")
        # The SAE's rate limit: the standard has no 429; its "try again
        # later" is a 503 in its Error object, with Retry-After.
        codes = [a.call("GET", b.sae_id, "status") for _ in range(120)]
        limited = [r for r in codes if r.status_code == 503]
        assert limited and all(check_error(r, 503) == "rate_limited" for r in limited)
        assert all(r.status_code in (200, 503) for r in codes)
    finally:
        _finish(st)
        q.stop()


def test_the_schema_refuses_what_the_standard_does_not_allow():
    good = {"keys": [{"key_ID": str(uuid.uuid4()), "key": base64.b64encode(b"k" * 32).decode()}]}
    check_container(good)
    for bad in ({"keys": []}, {"keys": [{"key_ID": "x", "key": "AAAA"}]},
                {"keys": [{"key_ID": str(uuid.uuid4()), "key": "not base64!"}]},
                {"keys": good["keys"], "extra": 1}):
        with pytest.raises(jsonschema.ValidationError):
            check_container(bad)
    with pytest.raises(jsonschema.ValidationError):
        check_status({"source_KME_ID": "x"})


def test_revoking_an_sae_destroys_its_keys(mt):
    a, b, c = Sae(mt), Sae(mt), Sae(mt)
    ka = keys_of(a.call("POST", b.sae_id, "enc_keys", {"number": 2}))
    kc = keys_of(c.call("POST", b.sae_id, "enc_keys", {"number": 1}))
    assert mt.st.admin("POST", f"/v1/admin/devices/{a.device_id}/revoke").status_code == 200
    # The revoked master's keys are gone at once; another master's stay.
    for kid in ka:
        assert mt.st.psql(f"SELECT reason FROM qkd_key_tombstones WHERE key_id = '{kid}'").strip() \
            == "revoked"
    r = b.call("POST", a.sae_id, "dec_keys", {"key_IDs": [{"key_ID": k} for k in ka]})
    assert check_error(r, 400) == "unknown_key"
    assert keys_of(b.call("POST", c.sae_id, "dec_keys",
                          {"key_IDs": [{"key_ID": k} for k in kc]})) == kc


def test_a_large_body_is_the_standards_400(mt):
    a, b = Sae(mt), Sae(mt)
    raw = json.dumps({"number": 1, "extension_optional": [{"pad": "x" * 70000}]})
    r = a.call("POST", b.sae_id, "enc_keys", raw=raw)
    assert check_error(r, 400) == "payload_too_large"


def test_policy_terms_status_and_sae_changes(mt):
    # A pair whose policy does not allow key source c gets no keys.
    nc = "no-c-" + uuid.uuid4().hex[:6]
    assert mt.st.admin("POST", "/v1/admin/policies", json={
        "name": nc, "type_a": "meter", "type_b": "meter", "key_sources": ["a"]}).status_code == 201
    m1, m2 = Sae(mt, type_="meter"), Sae(mt, type_="meter")
    assert check_error(m1.call("POST", m2.sae_id, "enc_keys", {}), 401) == "key_source_denied"
    assert check_error(m1.call("GET", m2.sae_id, "status"), 401) == "key_source_denied"
    # Get status refuses what Get key would: no pairing, itself.
    a, b = Sae(mt), Sae(mt)
    assert check_error(a.call("GET", m1.sae_id, "status"), 401) == "policy_denied"
    assert check_error(a.call("GET", a.sae_id, "status"), 400) == "invalid_request"
    # A suspended master's keys wait, but are not handed out.
    ka = keys_of(a.call("POST", b.sae_id, "enc_keys", {"number": 1}))
    kid = next(iter(ka))
    assert mt.st.admin("POST", f"/v1/admin/devices/{a.device_id}/suspend").status_code == 200
    r = b.call("POST", a.sae_id, "dec_keys", {"key_IDs": [{"key_ID": kid}]})
    assert check_error(r, 400) == "master_inactive"
    assert mt.st.admin("POST", f"/v1/admin/devices/{a.device_id}/resume").status_code == 200
    # A new SAE ID ends the keys waiting under the old one.
    r = mt.st.admin("POST", f"/v1/admin/devices/{b.device_id}/sae",
                    json={"sae_id": b.sae_id + "-NEW"})
    assert r.status_code == 200, r.text
    assert mt.st.psql(f"SELECT reason FROM qkd_key_tombstones WHERE key_id = '{kid}'").strip() \
        == "sae_changed"


def test_master_rotation_rewraps_waiting_keys(mt):
    # More keys than one rewrap batch (500), and no session waiting: every
    # batch must reach them, not only the first.
    a, b = Sae(mt), Sae(mt)
    ka = {}
    for _ in range(4):
        ka.update(keys_of(a.call("POST", b.sae_id, "enc_keys", {"number": 128})))
    assert len(ka) == 512
    r = mt.st.admin("POST", "/v1/admin/master/rotate", json={})
    assert r.status_code in (200, 202), r.text
    active = mt.st.admin("GET", "/v1/admin/master").json()["active"]
    assert wait_for(lambda: mt.st.psql(f"SELECT count(*) FROM qkd_keys WHERE master_sae = '{a.sae_id}'"
                                f" AND master_version = {active}").strip() == "512", timeout=90)
    ids = list(ka)
    for i in range(0, len(ids), 128):
        part = ids[i:i + 128]
        got = keys_of(b.call("POST", a.sae_id, "dec_keys", {"key_IDs": [{"key_ID": k} for k in part]}))
        assert got == {k: ka[k] for k in part}
