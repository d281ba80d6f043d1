"""Least privilege on every admin route: the role matrix of kmsd/routes.c,
checked route by route with real tokens (403 for a role that may not use
the route; anything but 401/403 for one that may)."""
import re
import os

import pytest

from conftest import ROOT

ANY, OPS, ADMIN, AUDIT = {"admin", "operator", "auditor"}, {"admin", "operator"}, {"admin"}, {"admin", "auditor"}
MASKS = {"ROLE_ANY": ANY, "OPS": OPS, "ROLE_ADMIN": ADMIN, "ROLE_ADMIN | ROLE_AUDITOR": AUDIT}


def admin_routes():
    src = open(os.path.join(ROOT, "kmsd", "routes.c")).read()
    rows = re.findall(r'X\("([A-Z]+)", "(/v1/admin[^"]*)", "[a-z_]+", ([A-Z_| ]+),', src)
    assert len(rows) >= 25
    return [(m, p.replace("{id}", "NO-SUCH").replace("{name}", "no-such"), MASKS[r.strip()])
            for m, p, r in rows]


@pytest.fixture(scope="module")
def tokens(stack):
    out = {"admin": stack.admin_token}
    for role in ("operator", "auditor"):
        r = stack.admin("POST", "/v1/admin/tokens", json={"name": f"matrix-{role}", "role": role})
        out[role] = r.json()["token"]
    return out


@pytest.mark.parametrize("method,path,allowed", admin_routes(), ids=lambda v: str(v)[:40])
def test_route_roles(stack, tokens, method, path, allowed):
    for role, tok in tokens.items():
        if method != "GET" and role in allowed and path.endswith(("/rotate", "/enable", "/verify")):
            continue  # state-changing admin actions are exercised in their own tests
        r = stack.api(method, path, token=tok, json={} if method == "POST" else None)
        if role in allowed:
            assert r.status_code not in (401, 403), (role, method, path, r.text)
        else:
            assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden", (role, method, path)
    assert stack.api(method, path).status_code == 401
