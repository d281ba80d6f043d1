"""docs/openapi.yaml cannot drift from kmsd:

 - its paths and methods are exactly the route table (`kmsd --print-routes`,
   printed from the real http_route array), with the same operation IDs
   (route names), roles, body caps and probes;
 - its error codes are exactly those of the error tables of docs/api.md and
   docs/protocol.md, each under the same status;
 - it is a structurally sound OpenAPI 3.1 document whose schemas are valid
   JSON Schema 2020-12 (Debian 12 has no OpenAPI validator; the one from PyPI
   is used too where it is installed);
 - the answer checker (openapi_check.py, which conftest.py runs on every
   answer of the whole suite) accepts what kmsd answers and refuses what it
   must refuse.
"""
import json
import re
import subprocess

import jsonschema
import pytest
import requests

import openapi_check
from conftest import KMSD, ROOT

DOC = openapi_check.load()
SPEC = openapi_check.Spec(DOC)


def operations():
    for path, item in DOC["paths"].items():
        for method, op in item.items():
            if method in openapi_check.METHODS:
                yield path, method.upper(), op


def route_table():
    p = subprocess.run([KMSD, "--print-routes"], capture_output=True, text=True, check=True)
    return json.loads(p.stdout)


# ---------------------------------------------------------------------------
# the route table


def test_every_route_and_nothing_else():
    routes = {(r["method"], r["path"]) for r in route_table()}
    documented = {(m, p) for p, m, _ in operations()}
    assert routes - documented == set(), "routes missing from docs/openapi.yaml"
    assert documented - routes == set(), "docs/openapi.yaml has operations kmsd does not serve"


def test_operations_carry_the_route_table_rows():
    ops = {(m, p): op for p, m, op in operations()}
    for r in route_table():
        op = ops[(r["method"], r["path"])]
        where = f'{r["method"]} {r["path"]}'
        assert op["operationId"] == r["name"], where
        assert sorted(op["x-qkms-roles"]) == sorted(r["roles"]), where
        # A bearer token exactly where the route has roles.
        assert op["security"] == ([{"bearer": []}] if r["roles"] else []), where
        assert op.get("x-qkms-max-body", 0) == r["max_body"], where
        assert op.get("x-qkms-probe", False) == r["probe"], where
        assert op.get("x-qkms-client-certificate", False) == r["client_cert"], where
        assert op["x-qkms-listeners"] == r["listeners"], where
        assert op["x-qkms-rate-limit"] == (r["rate_limit"] or "none"), where


def test_gate_answers_are_documented_per_route():
    """What the gate answers before the handler runs (server.c gate()) is
    listed on every route it can reach."""
    for r in route_table():
        op = DOC["paths"][r["path"]][r["method"].lower()]
        codes = set(op["responses"])
        where = f'{r["method"]} {r["path"]}'
        assert {"413", "414", "431", "500"} <= codes, where
        if not r["probe"]:
            assert "429" in codes, where
        if r["roles"]:
            assert {"401", "503"} <= codes, where
            if len(r["roles"]) < 3:
                assert "403" in codes, where
        if r["path"].startswith(("/v1/sessions/", "/v2/sessions/")):
            assert {"400", "401", "415", "422"} <= codes, where


# ---------------------------------------------------------------------------
# error codes


def docs_error_pairs(name):
    """(status, code) of the rows of every "## Errors" section's tables of
    docs/NAME (each up to the next heading; protocol.md has one per
    protocol version)."""
    with open(f"{ROOT}/docs/{name}") as f:
        text = f.read()
    pairs = set()
    starts = [m.start() for m in re.finditer(r"\n## Errors\n", text)]
    assert starts, name
    for start in starts:
        nxt = re.compile(r"^#", re.M).search(text, start + 11)
        for line in text[start:nxt.start() if nxt else len(text)].splitlines():
            m = re.match(r"^\| (\d{3}) \| ([^|]*)\|", line)
            if m:
                for code in re.findall(r"`([a-z][a-z0-9_]*)`", m.group(2)):
                    pairs.add((int(m.group(1)), code))
    return pairs


def yaml_error_pairs():
    """(status, code) of every error answer in the document: the code enums
    of the error schemas of every response, wherever it is written."""
    pairs = set()

    def codes_of(schema):
        # {"$ref": Error, "properties": {"error": {"properties": {"code": X}}}},
        # the ETSI GS QKD 014 door's {"$ref": EtsiError, "properties":
        # {"details": {"items": {"properties": {"qkms_code": X}}}}}, and
        # oneOf/anyOf alternatives of them (a route answered by the gate in
        # the one shape and by its handler in the other).
        out = set()
        for alt in schema.get("oneOf", []) + schema.get("anyOf", []):
            out |= codes_of(alt)
        props = schema.get("properties", {})
        for code in (props.get("error", {}).get("properties", {}).get("code"),
                     props.get("details", {}).get("items", {}).get("properties", {}).get("qkms_code")):
            if code is None:
                continue
            code = SPEC.resolve(code)
            out |= {code["const"]} if "const" in code else set(code["enum"])
        return out

    def walk_responses(responses):
        for status, resp in responses.items():
            resp = SPEC.resolve(resp)
            for media in (resp.get("content") or {}).values():
                for c in codes_of(media.get("schema", {})):
                    pairs.add((int(status), c))

    for _, _, op in operations():
        walk_responses(op["responses"])
    walk_responses(DOC["x-qkms-unrouted-responses"])
    return pairs


def test_error_codes_are_those_of_the_docs():
    docs = docs_error_pairs("api.md") | docs_error_pairs("protocol.md")
    assert len(docs) > 30, docs
    yaml = yaml_error_pairs()
    assert {c for _, c in docs} - {c for _, c in yaml} == set(), \
        "codes the docs list that docs/openapi.yaml does not"
    assert {c for _, c in yaml} - {c for _, c in docs} == set(), \
        "codes in docs/openapi.yaml that the error tables of docs/api.md and docs/protocol.md lack"
    assert yaml - docs == set(), "a code under another status than in the docs"
    assert docs - yaml == set(), "a code under another status than in the docs"
    assert set(DOC["components"]["schemas"]["ErrorCode"]["enum"]) == {c for _, c in docs}


def test_error_codes_in_the_code_are_documented():
    """Every literal error code the C code of the doors and services
    answers with is in the document."""
    src = subprocess.run(["grep", "-rhoE", r'(http_error|err_set|qk_fail|row_fail|fail|unavailable)\([^"]*"[a-z][a-z0-9_]*"',
                          f"{ROOT}/kmsd"], capture_output=True, text=True).stdout
    found = set(re.findall(r'"([a-z][a-z0-9_]*)"$', src, re.M))
    # Outcome tables ({"ended", 409, "session_ended", ...}) and `code = "x"`.
    src2 = subprocess.run(["grep", "-rhoE", r'[0-9]{3}, "[a-z][a-z0-9_]*"|code = "[a-z][a-z0-9_]*"', f"{ROOT}/kmsd"],
                          capture_output=True, text=True).stdout
    found |= set(re.findall(r'"([a-z][a-z0-9_]*)"', src2))
    found.discard("ok")  # qk_clear's code: QK_OK, never an answer
    assert len(found) > 30, found
    assert found - set(DOC["components"]["schemas"]["ErrorCode"]["enum"]) == set()


# ---------------------------------------------------------------------------
# structure


def all_schemas():
    """Every schema object of the document, with where it is."""
    def media(where, content):
        for mt, m in (content or {}).items():
            if "schema" in m:
                yield f"{where} {mt}", m["schema"]

    def response(where, resp):
        resp = SPEC.resolve(resp)
        for name, h in (resp.get("headers") or {}).items():
            h = SPEC.resolve(h)
            yield f"{where} header {name}", h["schema"]
        yield from media(where, resp.get("content"))

    for path, method, op in operations():
        w = f"{method} {path}"
        for prm in op.get("parameters", []):
            yield f"{w} parameter", SPEC.resolve(prm)["schema"]
        if "requestBody" in op:
            yield from media(f"{w} request", SPEC.resolve(op["requestBody"])["content"])
        for status, resp in op["responses"].items():
            yield from response(f"{w} {status}", resp)
    for name, s in DOC["components"]["schemas"].items():
        yield f"schema {name}", s


def test_schemas_are_json_schema_2020_12():
    n = 0
    for where, schema in all_schemas():
        try:
            jsonschema.Draft202012Validator.check_schema(schema)
        except jsonschema.SchemaError as e:
            pytest.fail(f"{where}: {e.message}")
        n += 1
    assert n > 100


def test_document_structure():
    assert re.fullmatch(r"3\.1\.\d+", DOC["openapi"])
    assert DOC["info"]["title"] and DOC["info"]["version"]
    assert set(DOC["components"]["securitySchemes"]) == {"bearer"}
    ids = [op["operationId"] for _, _, op in operations()]
    assert len(ids) == len(set(ids)), "operationIds must be unique"
    for path, method, op in operations():
        where = f"{method} {path}"
        params = {(p["name"], p["in"]) for p in map(SPEC.resolve, op.get("parameters", []))}
        for name in re.findall(r"\{([^}]+)\}", path):
            assert (name, "path") in params, f"{where}: path parameter {name} not declared"
        for p in map(SPEC.resolve, op.get("parameters", [])):
            if p["in"] == "path":
                assert p["required"] is True and "{" + p["name"] + "}" in path, where
        assert op["responses"], where
        for status, resp in op["responses"].items():
            assert re.fullmatch(r"[1-5]\d\d", status), f"{where}: {status}"
            resp = SPEC.resolve(resp)
            assert resp.get("description"), f"{where} {status}: no description"
            for h in (resp.get("headers") or {}).values():
                assert "schema" in SPEC.resolve(h)
        for sec in op.get("security", []):
            assert set(sec) <= set(DOC["components"]["securitySchemes"]), where


def test_every_reference_resolves():
    def walk(o, where):
        if isinstance(o, dict):
            if isinstance(o.get("$ref"), str):
                try:
                    SPEC.pointer(o["$ref"])
                except (KeyError, AssertionError):
                    pytest.fail(f"{where}: unresolved {o['$ref']}")
            for k, v in o.items():
                walk(v, f"{where}/{k}")
        elif isinstance(o, list):
            for i, v in enumerate(o):
                walk(v, f"{where}/{i}")

    walk(DOC, "#")


def test_openapi_spec_validator_where_installed():
    """Debian 12 packages no OpenAPI validator; where the PyPI one is
    installed it checks the whole document against the OpenAPI 3.1 schema."""
    validator = pytest.importorskip("openapi_spec_validator")
    validator.validate(DOC)


# ---------------------------------------------------------------------------
# the answer checker


class Headers(dict):
    """The headers of an answer, looked up case-insensitively."""

    def get(self, k, d=None):
        for key, v in self.items():
            if key.lower() == k.lower():
                return v
        return d


STD = {"X-Request-Id": "abc", "Cache-Control": "no-store", "X-Content-Type-Options": "nosniff",
       "Content-Type": "application/json"}


def check(method, path, status, body, **headers):
    h = Headers(STD, **headers)
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return SPEC.check(method, "http://127.0.0.1:1" + path, status, h, raw, h.get("Content-Type"))


def err(code):
    return {"error": {"code": code, "message": "m"}}


def test_checker_accepts_documented_answers():
    assert check("GET", "/healthz", 200, {"status": "ok"}) == []
    assert check("GET", "/nope", 404, err("not_found")) == []
    assert check("PUT", "/v1/admin/tokens", 405, err("method_not_allowed"), Allow="POST, GET") == []
    assert check("GET", "/v1/admin/devices/D%201", 404, err("not_found")) == []
    assert check("POST", "/v1/sessions/key", 429, err("rate_limited"), **{"Retry-After": "3"}) == []
    assert check("GET", "/metrics", 200, b"# HELP qkms_x y\n",
                 **{"Content-Type": "text/plain; version=0.0.4; charset=utf-8"}) == []


@pytest.mark.parametrize("answer, why", [
    (("GET", "/healthz", 201, {"status": "ok"}), "status 201 is not documented"),
    (("GET", "/healthz", 200, {"status": "ok", "extra": 1}), "Additional properties"),
    (("GET", "/v1/admin/status", 401, err("forbidden")), "is not one of"),
    (("GET", "/v1/admin/status", 401, {"error": "unauthenticated"}), "is not of type"),
    (("POST", "/v1/sessions/key", 429, err("rate_limited")), "header Retry-After missing"),
    (("PUT", "/v1/admin/tokens", 405, err("method_not_allowed")), "Allow"),
    (("GET", "/nope", 405, err("method_not_allowed")), "404 expected"),
    (("GET", "/nope", 400, err("malformed_json")), "not documented"),
    (("GET", "/healthz", 200, b"not json"), "not JSON"),
])
def test_checker_refuses_undocumented_answers(answer, why):
    problems = check(*answer)
    assert problems and why in " ".join(problems), problems


def test_checker_wants_kmsds_headers():
    h = Headers(STD)
    del h["X-Request-Id"]
    problems = SPEC.check("GET", "http://x/healthz", 200, h, b'{"status":"ok"}', "application/json")
    assert problems == ["GET /healthz -> 200: header X-Request-Id missing"]


def test_checker_knows_the_listeners():
    """With the listeners apart, an admin route is unrouted on the device
    listener (404 not_found, never 405) and a device route on the admin one."""
    nf = b'{"error":{"code":"not_found","message":"no such route"}}'
    h = Headers(STD)
    assert SPEC.check("GET", "http://x/v1/admin/status", 404, h, nf, "application/json",
                      listener="device") == []
    assert SPEC.check("POST", "http://x/v1/sessions/key", 404, h, nf, "application/json",
                      listener="admin") == []
    assert SPEC.check("GET", "http://x/healthz", 200, h, b'{"status":"ok"}', "application/json",
                      listener="device") == []
    # A 200 for an admin route on the device listener is a leak the check reports.
    problems = SPEC.check("GET", "http://x/metrics", 200, h, b"", "text/plain",
                          listener="device")
    assert problems and "not documented" in problems[0], problems
    # And so is a 405 for it (the device listener has no such path at all).
    problems = SPEC.check("PUT", "http://x/v1/admin/tokens", 405, h, nf, "application/json",
                          listener="device")
    assert problems, problems
    # Together (no listener), the admin route is routed: 404 is not its answer.
    assert SPEC.check("GET", "http://x/v1/admin/status", 404, h, nf, "application/json")


def test_live_answers_to_malformed_requests(stack):
    """Answers of the gate, which no other test needs all of, checked here
    directly (the suite-wide hook checks them too)."""
    s = requests.Session()
    answers = [
        s.get(stack.url + "/nope"),
        s.get(stack.url + "/v1/sessions/other"),
        s.put(stack.url + "/v1/admin/tokens"),
        s.get(stack.url + "/v1/sessions/key"),
        s.get(stack.url + "/v1/admin/" + "x" * 1100),
        s.get(stack.url + "/healthz", headers={"X-Pad": "y" * 9000}),
        s.get(stack.url + "/v1/admin/status"),
        s.get(stack.url + "/v1/admin/status", headers={"Authorization": "Bearer qkms_" + "0" * 64}),
        s.post(stack.url + "/v1/sessions/key", data=b"{", headers={"Content-Type": "application/json"}),
        s.post(stack.url + "/v1/sessions/key", data=b"{}", headers={"Content-Type": "text/plain"}),
        s.post(stack.url + "/v1/sessions/key", json={"v": 2}),
        s.post(stack.url + "/v1/sessions/key", data=b"x" * 9000,
               headers={"Content-Type": "application/json"}),
        stack.admin("POST", "/v1/admin/tokens", json={"name": "", "role": "admin"}),
        stack.admin("GET", "/v1/admin/devices?limit=0"),
    ]
    statuses = [r.status_code for r in answers]
    assert statuses == [404, 404, 405, 405, 414, 431, 401, 401, 400, 415, 400, 413, 422, 400], statuses
    for r in answers:
        assert SPEC.check(r.request.method, r.url, r.status_code, r.headers, r.content,
                          r.headers.get("Content-Type")) == [], (r.url, r.text)
