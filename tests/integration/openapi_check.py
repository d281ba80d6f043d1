"""Every answer kmsd gives the integration suite, checked against
docs/openapi.yaml.

conftest.py wraps requests.Session.send (which every requests call goes
through: requests.get, Stack.api, sessions) and hands each answer to
observe(). An answer is kmsd's when it comes from a port a Stack started
kmsd on, or when it carries kmsd's headers (X-Request-Id and
X-Content-Type-Options), which catches the extra instances some tests start
by hand; answers of the QRNG simulator and other helpers are left alone, and
so are libmicrohttpd's own HTML answers (docs/api.md: outside the contract).

The check: the route kmsd picks for the method and path (the spec's path
templates, matched segment by segment as kmsd/api/server.c does), the status
documented for it (a request that matches no route: the spec's
x-qkms-unrouted-responses, with Allow naming the path's methods on a 405),
every required header present and well-formed, the media type, and the body
valid against the response schema (JSON Schema 2020-12). Problems are
collected, not raised, so that the test that caused them still runs as it
would; the session fails at its end if there were any (conftest.py).

Only python3-yaml and python3-jsonschema (Debian 12: 4.10) are needed:
validators are compiled once per schema and kept.
"""
import json
import os
import threading
import urllib.parse

import jsonschema
import yaml

SPEC_PATH = os.path.join(os.path.dirname(__file__), "..", "..", "docs", "openapi.yaml")
METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


def load(path=SPEC_PATH):
    with open(path) as f:
        return yaml.safe_load(f)


class Spec:
    """docs/openapi.yaml, ready to check answers against."""

    def __init__(self, doc):
        self.doc = doc
        self.routes = []  # (template, segments, {METHOD: operation}) in file order
        for template, item in doc["paths"].items():
            ops = {m.upper(): op for m, op in item.items() if m in METHODS}
            self.routes.append((template, template.split("/")[1:], ops))
        self._validators = {}
        self._lock = threading.Lock()

    def resolve(self, obj):
        """Follows $ref (a local JSON pointer) until obj is not a reference."""
        while isinstance(obj, dict) and "$ref" in obj and len(obj) == 1:
            obj = self.pointer(obj["$ref"])
        return obj

    def pointer(self, ref):
        assert ref.startswith("#/"), f"only local references: {ref}"
        o = self.doc
        for part in ref[2:].split("/"):
            o = o[part.replace("~1", "/").replace("~0", "~")]
        return o

    def match(self, method, path):
        """(template, operation) of the route kmsd picks for method and path
        (its decoded path, without the query): the first route in table
        order whose pattern matches and whose method is method. (template,
        None) when the path matches only under other methods (405); (None,
        None) when it matches no route (404)."""
        if not path.startswith("/"):
            return None, None
        segs = path.split("/")[1:]
        seen = None
        for template, tsegs, ops in self.routes:
            if len(tsegs) != len(segs):
                continue
            if all((t.startswith("{") and t.endswith("}") and s) or t == s
                   for t, s in zip(tsegs, segs)):
                if method in ops:
                    return template, ops[method]
                seen = seen or template
        return seen, None

    def allowed_methods(self, path):
        """Every method of every route whose pattern matches path."""
        segs = path.split("/")[1:]
        out = set()
        for _, tsegs, ops in self.routes:
            if len(tsegs) == len(segs) and all(
                    (t.startswith("{") and t.endswith("}") and s) or t == s
                    for t, s in zip(tsegs, segs)):
                out |= set(ops)
        return out

    def validator(self, schema):
        """A compiled validator for schema (a schema object inside the
        document), whose local references resolve against the document."""
        key = id(schema)
        v = self._validators.get(key)
        if v is None:
            # The schema as the root of a document that also holds the
            # components, so that "#/components/schemas/X" resolves.
            root = dict(schema)
            root.setdefault("components", self.doc.get("components", {}))
            v = jsonschema.Draft202012Validator(root)
            with self._lock:
                self._validators[key] = v
        return v

    def check(self, method, url, status, headers, body, content_type, body_read=True,
              listener=None):
        """The problems (strings) of one answer; [] when it is as documented.
        headers: a case-insensitive mapping; body: bytes. listener: "device",
        "admin" or "metrics" when the answer came from one of two listeners configured
        apart (None: one listener serves every route): a route the other
        listener serves (x-qkms-listeners) is then answered as unrouted."""
        path = urllib.parse.unquote(urllib.parse.urlsplit(url).path)
        template, op = self.match(method, path)
        where = f"{method} {template or path}"
        if listener and template is not None:
            served = [m for m, o in self.doc["paths"][template].items()
                      if isinstance(o, dict) and listener in o.get("x-qkms-listeners", [])]
            if op is not None and listener not in op.get("x-qkms-listeners", []):
                op = None
            if not served:
                template = None  # the path is not this listener's at all: 404
            where = f"{method} {template or path} on the {listener} listener"
        if op is not None:
            responses = op["responses"]
        else:
            responses = self.doc["x-qkms-unrouted-responses"]
            if status == 404 and template is not None:
                return [f"{where}: 404 for a path that exists under other methods (405 expected)"]
            if status == 405:
                if template is None:
                    return [f"{where}: 405 for a path no route has (404 expected)"]
                allow = {m.strip() for m in headers.get("Allow", "").split(",") if m.strip()}
                if allow != self.allowed_methods(path):
                    return [f"{where}: Allow {sorted(allow)} but the spec has "
                            f"{sorted(self.allowed_methods(path))}"]
        resp = responses.get(str(status))
        if resp is None:
            return [f"{where}: status {status} is not documented (documented: "
                    f"{', '.join(sorted(responses))})"]
        resp = self.resolve(resp)
        problems = []
        for name, h in (resp.get("headers") or {}).items():
            h = self.resolve(h)
            value = headers.get(name)
            if value is None:
                if h.get("required"):
                    problems.append(f"{where} -> {status}: header {name} missing")
                continue
            sch = h.get("schema", {})
            inst = int(value) if sch.get("type") == "integer" and value.isdigit() else value
            for e in self.validator(sch).iter_errors(inst):
                problems.append(f"{where} -> {status}: header {name}: {value!r}: {e.message}")
        content = resp.get("content") or {}
        media = (content_type or "").split(";")[0].strip().lower()
        if not content:
            if body_read and body:
                problems.append(f"{where} -> {status}: a body where none is documented")
            return problems
        if media not in content:
            problems.append(f"{where} -> {status}: Content-Type {content_type!r}, documented "
                            f"{', '.join(content)}")
            return problems
        schema = content[media].get("schema")
        if not body_read or method == "HEAD" or schema is None:
            return problems
        if schema.get("format") == "binary":
            return problems  # bytes (a DER CRL): the media type is what can be checked
        if media == "application/json":
            try:
                inst = json.loads(body)
            except ValueError as e:
                return problems + [f"{where} -> {status}: body is not JSON ({e})"]
        else:
            try:
                inst = body.decode("utf-8")
            except UnicodeDecodeError as e:
                return problems + [f"{where} -> {status}: body is not UTF-8 ({e})"]
        errors = sorted(self.validator(schema).iter_errors(inst), key=lambda e: list(e.path))
        for e in errors[:3]:
            at = "/".join(str(p) for p in e.absolute_path) or "(body)"
            problems.append(f"{where} -> {status}: at {at}: {e.message[:300]}")
        return problems


class Recorder:
    """The answers seen during a test session and what was wrong with them."""

    def __init__(self, spec):
        self.spec = spec
        self.ports = set()  # where Stacks run kmsd
        self.listeners = {}  # port -> "device" | "admin" while configured apart
        self.checked = 0
        self.seen = set()  # (template, method, status) of routed answers
        self.violations = []
        self._lock = threading.Lock()

    def is_kmsd(self, r):
        port = urllib.parse.urlsplit(r.url).port
        if "X-Request-Id" in r.headers and r.headers.get("X-Content-Type-Options") == "nosniff":
            return True
        if port in self.ports:
            # libmicrohttpd's own answers (HTML, no kmsd headers) are outside
            # the contract; anything else from kmsd's port is checked.
            return not (r.headers.get("Content-Type", "").startswith("text/html")
                        and "X-Request-Id" not in r.headers)
        return False

    def observe(self, r, streamed=False):
        """Checks one requests.Response if it is kmsd's."""
        if not self.is_kmsd(r):
            return
        method = r.request.method.upper()
        body = b"" if streamed else r.content
        listener = self.listeners.get(urllib.parse.urlsplit(r.url).port)
        problems = self.spec.check(method, r.url, r.status_code, r.headers, body,
                                   r.headers.get("Content-Type"), body_read=not streamed,
                                   listener=listener)
        path = urllib.parse.unquote(urllib.parse.urlsplit(r.url).path)
        template, op = self.spec.match(method, path)
        with self._lock:
            self.checked += 1
            if op is not None:
                self.seen.add((template, method, r.status_code))
            for p in problems:
                self.violations.append({
                    "problem": p,
                    "test": os.environ.get("PYTEST_CURRENT_TEST", "?").rsplit(" ", 1)[0],
                    "status": r.status_code,
                    "body": body[:300].decode("utf-8", "replace"),
                })

    def apart(self, device_port, admin_port, metrics_port=None):
        """From now on answers from device_port and admin_port come from
        listeners configured apart (admin_port None: a unix socket), and
        those from metrics_port from the metrics listener."""
        with self._lock:
            self.listeners[device_port] = "device"
            if admin_port is not None:
                self.listeners[admin_port] = "admin"
            if metrics_port is not None:
                self.listeners[metrics_port] = "metrics"

    def together(self):
        """One listener serves every route again."""
        with self._lock:
            self.listeners.clear()

    def report(self, limit=40):
        lines = [f"docs/openapi.yaml: {len(self.violations)} answer(s) of kmsd do not match "
                 f"(of {self.checked} checked):"]
        for v in self.violations[:limit]:
            lines.append(f"- {v['problem']}\n    test: {v['test']}\n    body: {v['body']}")
        if len(self.violations) > limit:
            lines.append(f"... and {len(self.violations) - limit} more")
        return "\n".join(lines)

    def coverage(self):
        """(documented, seen) operation+status pairs."""
        documented = {(t, m, int(s)) for t, _, ops in self.spec.routes for m, op in ops.items()
                      for s in op["responses"]}
        return documented, self.seen & documented
