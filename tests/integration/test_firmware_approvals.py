"""Two-approver releases (issue 19: "optionally two distinct approvers
before a signature is made"; docs/api.md "Release approvals") against real
kmsd, PostgreSQL and SoftHSM: a product's rule asks for two approvals; a
release token requests approval of exactly what will be signed, a second
and distinct one approves it, and the signature must name the approval,
match it, and uses it up. Nothing is signed otherwise, and every step is
audited."""
import hashlib
import json
import uuid

import pytest

import qkms_fw_py as fw
from helpers import error_code as code
from test_firmware_groups import sign_groups
from test_firmware_sign import Release, py_policy


def release_token(st):
    r = st.admin("POST", "/v1/admin/tokens", json={"name": "rel-" + uuid.uuid4().hex[:8],
                                                   "role": "release"})
    assert r.status_code == 201, r.text
    return r.json()["token"], r.json()["name"]


def request(st, tok, rel, image, **kw):
    body = {"product": rel.product, "version": kw.pop("version", "1.0"),
            "image_size": len(image), "image_sha256": hashlib.sha256(image).hexdigest()}
    body.update(kw)
    return st.api("POST", "/v1/admin/firmware/approvals", token=tok, json=body)


def approve(st, tok, aid):
    return st.api("POST", f"/v1/admin/firmware/approvals/{aid}/approve", token=tok)


@pytest.fixture
def rel(stack):
    r = Release(stack)
    got = stack.admin("POST", f"/v1/admin/firmware/products/{r.product}/rule",
                      json={"approvals": 2})
    assert got.status_code == 200, got.text
    assert (got.json()["product"], got.json()["approvals"]) == (r.product, 2)
    assert set(got.json()) == {"product", "approvals", "updated_at", "updated_by"}
    return r


def test_two_distinct_approvers_then_one_signature(rel, stack):
    (d1, f1), (d2, f2) = rel.device(), rel.device()
    image = b"meter app v2" * 1000
    r = sign_groups(rel, image, [], devices=[d1, d2])
    assert (r.status_code, code(r)) == (409, "approval_required")
    b_tok, b_name = release_token(stack)
    r = request(stack, rel.token, rel, image, version="2.0", devices=[d2, d1])
    assert r.status_code == 201, r.text
    a = r.json()
    assert (a["state"], a["targets"], a["counter"], a["not_before"]) == (
        "pending", {"groups": [], "devices": sorted([d1, d2])}, None, None)
    aid = a["id"]
    r = approve(stack, rel.token, aid)
    assert (r.status_code, code(r)) == (409, "same_approver")
    r = sign_groups(rel, image, [], devices=[d1, d2], version="2.0", approval=aid)
    assert (r.status_code, code(r)) == (409, "approval_pending")
    r = approve(stack, b_tok, aid)
    assert r.status_code == 200 and r.json()["state"] == "approved", r.text
    assert r.json()["approved_by"] == b_name
    assert (approve(stack, b_tok, aid).status_code, code(approve(stack, b_tok, aid))) == (
        409, "approval_approved")
    # What was approved, and nothing else, is signed.
    for kw, why in ((dict(version="2.1"), "version"), (dict(image=image + b"!"), "image"),
                    (dict(devices=[d1]), "targets"), (dict(counter=5), "counter"),
                    (dict(not_before=1800000000), "not_before")):
        img = kw.pop("image", image)
        devs = kw.pop("devices", [d1, d2])
        ver = kw.pop("version", "2.0")
        r = sign_groups(rel, img, [], devices=devs, version=ver, approval=aid, **kw)
        assert (r.status_code, code(r)) == (409, "approval_mismatch"), (why, r.text)
        assert why in r.json()["error"]["message"]
    r = sign_groups(rel, image, [], devices=[d2, d1], version="2.0", approval=aid)
    assert r.status_code == 201, r.text
    img, m = fw.open_package(r.content, py_policy(rel, f1))
    assert img == image and m["version"] == "2.0"
    # Once.
    r2 = sign_groups(rel, image, [], devices=[d1, d2], version="2.0", approval=aid)
    assert (r2.status_code, code(r2)) == (409, "approval_used")
    got = stack.admin("GET", f"/v1/admin/firmware/approvals?product={rel.product}").json()
    assert [(x["id"], x["state"], x["package_id"]) for x in got["approvals"]] == [
        (aid, "used", r.headers["Qkms-Package-Id"])]
    used = json.loads(stack.psql("SELECT detail::text FROM audit_log WHERE"
                                 f" event = 'firmware.approval_used' AND detail->>'approval' = '{aid}'"))
    assert used["approved_by"] == b_name and used["package_id"] == r.headers["Qkms-Package-Id"]
    events = stack.psql("SELECT event FROM audit_log WHERE detail->>'approval' = "
                        f"'{aid}' AND event <> 'firmware.refused' ORDER BY id").split()
    assert events == ["firmware.approval_requested", "firmware.approved",
                      "firmware.approval_used"]
    refused = stack.psql("SELECT detail->>'code' FROM audit_log WHERE detail->>'approval' = "
                         f"'{aid}' AND event = 'firmware.refused' ORDER BY id").split()
    assert refused == ["approval_pending"] + ["approval_mismatch"] * 5 + ["approval_used"]
    assert stack.psql("SELECT count(*) FROM firmware_releases"
                      f" WHERE product = '{rel.product}'").strip() == "1"


def test_fixed_counter_expiry_and_foreign_approvals(rel, stack):
    d1, _ = rel.device()
    b_tok, _ = release_token(stack)
    aid = request(stack, rel.token, rel, b"img", devices=[d1], counter=7).json()["id"]
    assert approve(stack, b_tok, aid).status_code == 200
    r = sign_groups(rel, b"img", [], devices=[d1], version="1.0", approval=aid)
    assert (r.status_code, code(r)) == (409, "approval_mismatch")
    r = sign_groups(rel, b"img", [], devices=[d1], version="1.0", approval=aid, counter=7)
    assert r.status_code == 201 and r.headers["Qkms-Counter"] == "7", r.text
    # Expired: neither approved nor used any more.
    a2 = request(stack, rel.token, rel, b"img2", devices=[d1]).json()["id"]
    a3 = request(stack, rel.token, rel, b"img3", devices=[d1]).json()["id"]
    assert approve(stack, b_tok, a3).status_code == 200
    stack.psql("UPDATE firmware_approvals SET expires_at = now() - interval '1 second'"
               f" WHERE id IN ('{a2}', '{a3}')")
    r = approve(stack, b_tok, a2)
    assert (r.status_code, code(r)) == (409, "approval_expired")
    r = sign_groups(rel, b"img3", [], devices=[d1], version="1.0", approval=a3)
    assert (r.status_code, code(r)) == (409, "approval_expired")
    # An approver whose token is revoked since approved nothing any more.
    c_tok, c_name = release_token(stack)
    a5 = request(stack, rel.token, rel, b"img5", devices=[d1]).json()["id"]
    assert approve(stack, c_tok, a5).status_code == 200
    assert stack.admin("DELETE", f"/v1/admin/tokens/{c_name}").status_code == 200
    r = sign_groups(rel, b"img5", [], devices=[d1], version="1.0", approval=a5)
    assert (r.status_code, code(r)) == (409, "approval_revoked"), r.text
    # Nor is a request of a token revoked since approvable.
    d_tok, d_name = release_token(stack)
    a6 = request(stack, d_tok, rel, b"img6", devices=[d1]).json()["id"]
    assert stack.admin("DELETE", f"/v1/admin/tokens/{d_name}").status_code == 200
    r = approve(stack, b_tok, a6)
    assert (r.status_code, code(r)) == (409, "approval_revoked"), r.text
    # Another product's approval, or no approval at all.
    other = Release(stack)
    d9, _ = other.device()
    a4 = request(stack, other.token, other, b"x", devices=[d9]).json()["id"]
    for aid_ in (a4, str(uuid.uuid4()), "not-a-uuid"):
        r = sign_groups(rel, b"x", [], devices=[d1], approval=aid_)
        assert (r.status_code, code(r)) == (422, "unknown_approval"), (aid_, r.text)
    assert (approve(stack, b_tok, str(uuid.uuid4())).status_code) == 404
    # Back to one approver: signing needs no approval again.
    r = stack.admin("POST", f"/v1/admin/firmware/products/{rel.product}/rule",
                    json={"approvals": 1})
    assert r.status_code == 200 and r.json()["approvals"] == 1
    assert sign_groups(rel, b"y", [], devices=[d1]).status_code == 201
    rule = [json.loads(x) for x in stack.psql(
        "SELECT detail::text FROM audit_log WHERE event = 'firmware.approval_rule'"
        f" AND detail->>'product' = '{rel.product}' ORDER BY id").splitlines()]
    assert [(x["approvals"], x["was"]) for x in rule] == [(2, 1), (1, 2)]


def test_refusals(rel, stack):
    d1, _ = rel.device()
    cases = [
        (dict(version=""), 422, "invalid_version"),
        (dict(devices=[]), 422, "invalid_targets"),
        (dict(devices=[d1, d1]), 422, "invalid_targets"),
        (dict(image_size=0), 422, "invalid_image"),
        (dict(image_sha256="zz"), 422, "invalid_image"),
        (dict(counter=0), 422, "invalid_request"),
        (dict(devices="x"), 422, "invalid_request"),
        (dict(extra=1), 422, "invalid_request"),
    ]
    for kw, status, c in cases:
        kw.setdefault("devices", [d1])
        r = request(stack, rel.token, rel, b"img", **kw)
        assert (r.status_code, code(r)) == (status, c), (kw, r.text)
    assert stack.psql("SELECT count(*) FROM firmware_approvals"
                      f" WHERE product = '{rel.product}'").strip() == "0"
    # Admins set rules; release tokens request and approve; others list.
    r = request(stack, stack.admin_token, rel, b"img", devices=[d1])
    assert (r.status_code, code(r)) == (403, "forbidden")
    r = stack.api("POST", f"/v1/admin/firmware/products/{rel.product}/rule", token=rel.token,
                  json={"approvals": 1})
    assert (r.status_code, code(r)) == (403, "forbidden")
    for body, c in (({"approvals": 3}, "invalid_approvals"), ({"approvals": "2"}, "invalid_request"),
                    ({}, "invalid_request")):
        r = stack.admin("POST", f"/v1/admin/firmware/products/{rel.product}/rule", json=body)
        assert (r.status_code, code(r)) == (422, c), (body, r.text)
    r = stack.admin("POST", "/v1/admin/firmware/products/-x/rule", json={"approvals": 2})
    assert (r.status_code, code(r)) == (422, "invalid_product")
    rules = stack.admin("GET", "/v1/admin/firmware/products").json()["products"]
    assert {"product": rel.product, "approvals": 2} in [
        {k: x[k] for k in ("product", "approvals")} for x in rules]


def test_kmsctl_two_approver_release(rel, stack, tmp_path):
    d1, f1 = rel.device()
    b_tok, _ = release_token(stack)
    (tmp_path / "app.bin").write_bytes(b"kmsctl app" * 3000)
    r = stack.kmsctl("firmware", "rule", "list", token=rel.token)
    assert r.returncode == 0 and rel.product in r.stdout, r.stdout + r.stderr
    r = stack.kmsctl("firmware", "approvals", "request", str(tmp_path / "app.bin"), "--product",
                     rel.product, "--version", "3.0", "--device", d1, "--json", token=rel.token)
    assert r.returncode == 0, r.stderr
    aid = json.loads(r.stdout)["id"]
    r = stack.kmsctl("firmware", "approvals", "approve", aid, token=rel.token)
    assert r.returncode == 6 and "same_approver" in r.stderr + r.stdout
    r = stack.kmsctl("firmware", "approvals", "approve", aid, token=b_tok)
    assert r.returncode == 0 and "state: approved" in r.stdout, r.stdout + r.stderr
    r = stack.kmsctl("firmware", "approvals", "list", "--product", rel.product, token=rel.token)
    assert r.returncode == 0 and aid in r.stdout and "approved" in r.stdout
    out = tmp_path / "app.pkg"
    r = stack.kmsctl("firmware", "sign", str(tmp_path / "app.bin"), "--product", rel.product,
                     "--version", "3.0", "--device", d1, "--approval", aid, "--out", str(out),
                     token=rel.token)
    assert r.returncode == 0, r.stderr
    assert fw.open_package(out.read_bytes(), py_policy(rel, f1))[0] == b"kmsctl app" * 3000
    r = stack.kmsctl("firmware", "rule", "set", rel.product, "--approvals", "1",
                     token=stack.admin_token)
    assert r.returncode == 0 and "1 approver" in r.stdout, r.stdout + r.stderr
    for args in (("firmware", "rule", "set", rel.product), ("firmware", "approvals", "approve"),
                 ("firmware", "approvals", "request", str(tmp_path / "app.bin")),
                 ("firmware", "rule", "set", rel.product, "--approvals", "3")):
        r = stack.kmsctl(*args, token=stack.admin_token)
        assert r.returncode == 2, (args, r.stderr)
