"""Least privilege on every admin route, checked route by route with real
tokens (403 for a role that may not use the route; anything but 401/403 for
one that may).

The expected matrix is written out here, from docs/api.md, and NOT derived
from kmsd/api/routes.c: a test that read the code it checks would change
with a wrong role in the code and pass. A route added to routes.c without a
row here fails test_matrix_covers_every_route."""
import json
import subprocess

import pytest

from conftest import KMSD

A, O, U, R = "admin", "operator", "auditor", "release"
ANY, OPS, ADMIN, AUDIT = {A, O, U}, {A, O}, {A}, {A, U}

# method, path, roles that may use it (docs/api.md).
MATRIX = [
    ("GET", "/v1/admin/status", ANY),
    ("POST", "/v1/admin/tokens", ADMIN),
    ("GET", "/v1/admin/tokens", ADMIN),
    ("DELETE", "/v1/admin/tokens/{name}", ADMIN),
    ("POST", "/v1/admin/ca/rotate", ADMIN),
    ("POST", "/v1/admin/platform/rotate", ADMIN),
    ("POST", "/v1/admin/ca/csr", ADMIN),
    ("POST", "/v1/admin/ca/import", ADMIN),
    ("POST", "/v1/admin/tokens/{name}/certificates", ADMIN),
    ("GET", "/v1/admin/tokens/{name}/certificates", ADMIN),
    ("DELETE", "/v1/admin/tokens/{name}/certificates/{sha256}", ADMIN),
    ("POST", "/v1/admin/devices", OPS),
    ("GET", "/v1/admin/devices", ANY),
    ("POST", "/v1/admin/devices/import", OPS),
    ("GET", "/v1/admin/devices/{id}", ANY),
    ("GET", "/v1/admin/devices/{id}/keys", ANY),
    ("POST", "/v1/admin/devices/{id}/suspend", OPS),
    ("POST", "/v1/admin/devices/{id}/resume", OPS),
    ("POST", "/v1/admin/devices/{id}/revoke", OPS),
    ("POST", "/v1/admin/devices/{id}/rotate", OPS),
    ("POST", "/v1/admin/devices/{id}/sae", OPS),
    ("POST", "/v1/admin/devices/{id}/attributes", OPS),
    ("POST", "/v1/admin/devices/{id}/service", OPS),
    ("POST", "/v1/admin/devices/{id}/credential", OPS),
    ("GET", "/v1/admin/devices/{id}/verification-code", OPS),
    ("POST", "/v1/admin/apps", ADMIN),
    ("GET", "/v1/admin/apps", ANY),
    ("DELETE", "/v1/admin/apps/{name}", ADMIN),
    ("POST", "/v1/admin/apps/{name}/tokens", ADMIN),
    ("GET", "/v1/admin/events", ANY),
    ("POST", "/v1/admin/events/replay", ADMIN),
    ("DELETE", "/v1/admin/events/webhooks/{id}", ADMIN),
    ("POST", "/v1/admin/devices/{id}/fill", OPS),
    ("GET", "/v1/admin/devices/{id}/certificates", ANY),
    ("POST", "/v1/admin/devices/{id}/certificates", OPS),
    ("GET", "/v1/admin/devices/{id}/certificates/{serial}", ANY),
    ("POST", "/v1/admin/devices/{id}/certificates/{serial}/revoke", OPS),
    ("GET", "/v1/admin/ca", ANY),
    ("GET", "/v1/admin/device-types", ANY),
    ("POST", "/v1/admin/device-types", ADMIN),
    ("GET", "/v1/admin/sessions", ANY),
    ("GET", "/v1/admin/sessions/{id}", ANY),
    ("POST", "/v1/admin/sessions/{id}/end", OPS),
    ("GET", "/v1/admin/streams", ANY),
    ("GET", "/v1/admin/streams/{id}", ANY),
    ("POST", "/v1/admin/streams/{id}/end", OPS),
    ("GET", "/v1/admin/policies", ANY),
    ("POST", "/v1/admin/policies", OPS),
    ("DELETE", "/v1/admin/policies/{name}", OPS),
    ("GET", "/v1/admin/master", ANY),
    ("POST", "/v1/admin/master/rotate", ADMIN),
    ("GET", "/v1/admin/master/instances", ANY),
    ("GET", "/v1/admin/audit", ANY),
    ("POST", "/v1/admin/audit/verify", AUDIT),
    ("GET", "/v1/admin/audit/verify/{request_id}", AUDIT),
    ("GET", "/v1/admin/audit/export", AUDIT),
    ("GET", "/v1/admin/entropy", ANY),
    ("POST", "/v1/admin/entropy/sources/{name}/enable", ADMIN),
    ("GET", "/v1/admin/qkd", ANY),
    ("GET", "/v1/admin/qkd/keys", ANY),
    ("GET", "/v1/admin/firmware/keys", ANY | {R}),
    ("POST", "/v1/admin/firmware/keys", ADMIN),
    ("POST", "/v1/admin/firmware/keys/{product}/rotate", ADMIN),
    ("POST", "/v1/admin/firmware/keys/{product}/versions/{version}/revoke", ADMIN),
    ("POST", "/v1/admin/signing-keys/{name}/versions/{version}/revoke", ADMIN),
    ("POST", "/v1/admin/firmware/packages", {R}),
    ("POST", "/v1/admin/firmware/packages/verify", ANY | {R}),
    ("GET", "/v1/admin/signing-keys", ANY),
    ("GET", "/v1/admin/firmware/products", ANY | {R}),
    ("POST", "/v1/admin/firmware/products/{product}/rule", ADMIN),
    ("GET", "/v1/admin/firmware/approvals", ANY | {R}),
    ("POST", "/v1/admin/firmware/approvals", {R}),
    ("POST", "/v1/admin/firmware/approvals/{id}/approve", {R}),
    ("POST", "/v1/admin/signing-keys", ADMIN),
    ("POST", "/v1/admin/signing-keys/{name}/rotate", ADMIN),
    ("GET", "/v1/admin/firmware/groups", ANY | {R}),
    ("POST", "/v1/admin/firmware/groups", ADMIN),
    ("POST", "/v1/admin/firmware/groups/{group}/rotate", ADMIN),
    ("DELETE", "/v1/admin/firmware/groups/{group}/keys/{key_id}", ADMIN),
]


def concrete(path):
    return (path.replace("{id}", "NO-SUCH").replace("{name}", "no-such").replace("{serial}", "00ff")
            .replace("{product}", "no-such").replace("{group}", "no-such")
            .replace("{key_id}", "0" * 32).replace("{version}", "1")
            .replace("{sha256}", "0" * 64).replace("{request_id}", "no-such-request"))


def test_matrix_covers_every_route():
    """Only the route list is read from the route table (`kmsd
    --print-routes`), never the roles."""
    table = json.loads(subprocess.run([KMSD, "--print-routes"], capture_output=True, text=True,
                                      check=True).stdout)
    routes = {(r["method"], r["path"]) for r in table if r["path"].startswith("/v1/admin")}
    assert len(routes) >= 25
    assert routes == {(m, p) for m, p, _ in MATRIX}


@pytest.fixture(scope="module")
def tokens(stack):
    out = {"admin": stack.admin_token}
    for role in ("operator", "auditor", "release"):
        r = stack.admin("POST", "/v1/admin/tokens", json={"name": f"matrix-{role}", "role": role})
        out[role] = r.json()["token"]
    # A back end's crypto token (docs/api.md, "Crypto services") opens no
    # admin route.
    r = stack.admin("POST", "/v1/admin/tokens", json={"name": "matrix-crypto", "role": "crypto",
                                                      "acts_for": "@platform"})
    assert r.status_code == 201, r.text
    out["crypto"] = r.json()["token"]
    # An app's token (docs/gateways.md) opens no admin route.
    r = stack.admin("POST", "/v1/admin/apps", json={"name": "matrix-app"})
    assert r.status_code == 201, r.text
    out["app"] = r.json()["token"]
    return out


@pytest.mark.parametrize("method,path,allowed", MATRIX, ids=lambda v: str(v)[:40])
def test_route_roles(stack, tokens, method, path, allowed):
    path = concrete(path)
    for role, tok in tokens.items():
        if method != "GET" and role in allowed and path.endswith(("/rotate", "/enable", "/verify")):
            continue  # state-changing admin actions are exercised in their own tests
        r = stack.api(method, path, token=tok, json={} if method == "POST" else None)
        if role in allowed:
            assert r.status_code not in (401, 403), (role, method, path, r.text)
        else:
            assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden", (role, method, path)
    assert stack.api(method, path).status_code == 401


@pytest.mark.parametrize("role", ["operator", "auditor"])
def test_non_admin_cannot_create_an_admin_token(stack, tokens, role):
    """Escalation: an operator (or auditor) token asking for an admin token
    gets 403 and no token row is created, with a body that would otherwise
    succeed."""
    name = f"escalate-{role}"
    before = stack.psql("SELECT count(*) FROM admin_tokens").strip()
    r = stack.api("POST", "/v1/admin/tokens", token=tokens[role], json={"name": name, "role": "admin"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden", r.text
    assert "qkms_" not in r.text
    assert stack.psql(f"SELECT count(*) FROM admin_tokens WHERE name = '{name}'").strip() == "0"
    assert stack.psql("SELECT count(*) FROM admin_tokens").strip() == before
    # The same body from the admin succeeds: the refusal is the role's.
    r = stack.admin("POST", "/v1/admin/tokens", json={"name": name, "role": "admin"})
    assert r.status_code == 201, r.text
    stack.admin("DELETE", f"/v1/admin/tokens/{name}")
