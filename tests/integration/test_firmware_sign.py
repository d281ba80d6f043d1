"""Signing releases on the platform (issue 19; docs/api.md "Signing
releases", docs/firmware.md) against real kmsd, PostgreSQL and SoftHSM: a
release token uploads an image, kmsd signs its manifest in the token with
the product's firmware key, decides the anti-rollback counter, wraps the
content key for each target device and answers the package as it goes;
the devices open it with the C library (`qkms-device firmware open`) and
the Python implementation, and `openssl` verifies the manifest."""
import hashlib
import json
import os
import subprocess
import time
import uuid

import pytest
import requests

import helpers
import qkms_fw_py as fw
from conftest import ROOT, wait_for
from helpers import error_code as code

QKMS_DEVICE = os.environ.get("QKMS_DEVICE", os.path.join(ROOT, "build/asan/bin/qkms-device"))


class Release:
    def __init__(self, st):
        self.st = st
        self.product = "meter-" + uuid.uuid4().hex[:8]
        r = st.admin("POST", "/v1/admin/firmware/keys", json={"product": self.product})
        assert r.status_code == 201, r.text
        self.key = r.json()
        r = st.admin("POST", "/v1/admin/tokens", json={"name": "rel-" + uuid.uuid4().hex[:8],
                                                       "role": "release"})
        assert r.status_code == 201, r.text
        self.token = r.json()["token"]
        self.group = "g-" + uuid.uuid4().hex[:6]

    def device(self, keys=2):
        did = helpers.uid("MTR")
        r = self.st.admin("POST", "/v1/admin/devices", json={"device_id": did, "type": "meter",
                                                             "group": self.group, "keys": keys})
        assert r.status_code == 201, r.text
        r = self.st.admin("POST", f"/v1/admin/devices/{did}/fill", json={"plaintext": True})
        assert r.status_code == 200, r.text
        return did, r.json()["plaintext"]

    def sign(self, image, devices, token=None, **params):
        q = [("product", self.product), ("version", params.pop("version", "1.0.0"))]
        q += [("device", d) for d in devices] + [(k, str(v)) for k, v in params.items()]
        return self.st.api("POST", "/v1/admin/firmware/packages", token=token or self.token,
                           params=q, data=image,
                           headers={"Content-Type": "application/octet-stream"})


def py_policy(rel, fill, **kw):
    return fw.Policy(product=rel.product, certs=[cert_der(rel)], device_id=fill["device_id"],
                     device_keys={k["index"]: bytes.fromhex(k["key"]) for k in fill["keys"]},
                     **kw)


def cert_der(rel):
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    return x509.load_pem_x509_certificate(rel.key["certificate"].encode()).public_bytes(
        serialization.Encoding.DER)


@pytest.fixture
def rel(stack):
    return Release(stack)


def test_a_release_signed_and_opened_by_its_devices(rel, tmp_path):
    (d1, f1), (d2, f2) = rel.device(), rel.device(keys=1)
    image = os.urandom(50 << 20)
    nb = int(time.time()) + 60   # within the firmware certificate's validity
    r = rel.sign(image, [d1, d2], version="2.7.1", not_before=nb)
    assert r.status_code == 201, r.text[:300]
    assert r.headers["Content-Type"] == "application/octet-stream"
    pkg = r.content
    assert int(r.headers["Content-Length"]) == len(pkg)
    assert r.headers["Qkms-Counter"] == "1"
    # The package as the doc says: both devices open it (Python) ...
    for fill in (f1, f2):
        img, m = fw.open_package(pkg, py_policy(rel, fill))
        assert img == image
        assert (m["product"], m["version"], m["counter"], m["not_before"]) == (
            rel.product, "2.7.1", 1, nb)
        assert m["targets"] == {"groups": [], "devices": [d1, d2]}
        assert m["package_id"] == r.headers["Qkms-Package-Id"]
        assert m["signer"] == rel.key["sha256"]
    # ... and the C library, streaming, with the certificate it pins.
    (tmp_path / "fw.pem").write_text(rel.key["certificate"])
    (tmp_path / "pkg").write_bytes(pkg)
    (tmp_path / "d1.fill").write_text(json.dumps(f1))
    p = subprocess.run([QKMS_DEVICE, "firmware", "open", "--in", str(tmp_path / "pkg"),
                        "--out", str(tmp_path / "img"), "--product", rel.product, "--certs",
                        str(tmp_path / "fw.pem"), "--fill", str(tmp_path / "d1.fill"),
                        "--now", str(nb), "--json"], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "img").read_bytes() == image
    assert json.loads(p.stdout)["counter"] == 1
    # openssl verifies the manifest under the firmware certificate's key.
    _, _, mb, sig = fw.open_package(pkg, py_policy(rel, f1), parts=True)
    (tmp_path / "manifest.json").write_bytes(mb)
    (tmp_path / "manifest.sig").write_bytes(sig)
    pub = subprocess.run(["openssl", "x509", "-in", str(tmp_path / "fw.pem"), "-pubkey",
                          "-noout"], capture_output=True, text=True, check=True).stdout
    (tmp_path / "pub.pem").write_text(pub)
    v = subprocess.run(["openssl", "dgst", "-sha256", "-verify", str(tmp_path / "pub.pem"),
                        "-signature", str(tmp_path / "manifest.sig"),
                        str(tmp_path / "manifest.json")], capture_output=True, text=True)
    assert v.returncode == 0 and "Verified OK" in v.stdout, v.stdout + v.stderr
    # Recorded and audited, without the image.
    row = rel.st.psql("SELECT counter || ' ' || version || ' ' || image_size || ' ' ||"
                      " encode(image_sha256, 'hex') FROM firmware_releases"
                      f" WHERE product = '{rel.product}'").strip()
    assert row == f"1 2.7.1 {50 << 20} {hashlib.sha256(image).hexdigest()}"
    a = rel.st.psql("SELECT detail::text FROM audit_log WHERE event = 'firmware.signed'"
                    f" AND detail->>'product' = '{rel.product}'").strip()
    assert json.loads(a)["targets"] == {"groups": [], "devices": [d1, d2]}
    assert json.loads(a)["recipients"] == 2


def test_counters_only_grow(rel):
    d, f = rel.device()
    assert rel.sign(b"v1", [d]).headers["Qkms-Counter"] == "1"
    r = rel.sign(b"v7", [d], counter=7)
    assert r.status_code == 201 and r.headers["Qkms-Counter"] == "7"
    for c in (7, 3):
        r = rel.sign(b"old", [d], counter=c)
        assert (r.status_code, code(r)) == (409, "counter_rollback"), c
    r = rel.sign(b"v8", [d])
    assert r.headers["Qkms-Counter"] == "8"
    _, m = fw.open_package(r.content, py_policy(rel, f, counter=7))
    assert m["counter"] == 8
    with pytest.raises(fw.FwError) as ex:
        fw.open_package(r.content, py_policy(rel, f, counter=8))
    assert ex.value.code == "rollback"
    assert rel.st.psql("SELECT count(*) FROM firmware_releases"
                       f" WHERE product = '{rel.product}'").strip() == "3"


def test_refusals_sign_nothing(rel, stack):
    d, f = rel.device()
    other = Release(stack)   # a product without ... its own key, for the role check
    op = stack.admin("POST", "/v1/admin/tokens", json={"name": "op-" + uuid.uuid4().hex[:8],
                                                       "role": "operator"}).json()["token"]
    cases = [
        (dict(token=op), 403, "forbidden"),
        (dict(token=stack.admin_token), 403, "forbidden"),
        (dict(devices=[]), 422, "invalid_targets"),
        (dict(devices=[d, d]), 422, "invalid_targets"),
        (dict(devices=["NO-SUCH-" + uuid.uuid4().hex]), 422, "unknown_device"),
        (dict(version=""), 422, "invalid_version"),
        (dict(version="x" * 65), 422, "invalid_version"),
        (dict(image=b""), 422, "invalid_image"),
        (dict(counter="abc"), 400, "invalid_query"),
        (dict(counter=0), 400, "invalid_query"),
        (dict(not_before="-5"), 400, "invalid_query"),
        # Before the firmware certificate was made: every device would refuse it.
        (dict(not_before=1700000000), 422, "invalid_not_before"),
        (dict(devices=[d] + ["D%d" % i for i in range(100)]), 422, "invalid_targets"),
        (dict(devices=[d] + ["D%d" % i for i in range(150)]), 422, "invalid_targets"),
    ]
    for kw, status, c in cases:
        image = kw.pop("image", b"firmware")
        devices = kw.pop("devices", [d])
        r = rel.sign(image, devices, **kw)
        assert (r.status_code, code(r)) == (status, c), (kw, r.text)
    r = requests.post(stack.url + "/v1/admin/firmware/packages", params={
        "product": "no-key-" + uuid.uuid4().hex[:6], "version": "1", "device": d},
        data=b"x", headers={"Authorization": "Bearer " + rel.token,
                            "Content-Type": "application/octet-stream"}, timeout=30)
    assert (r.status_code, code(r)) == (409, "no_firmware_key")
    r = requests.post(stack.url + "/v1/admin/firmware/packages", params={
        "product": rel.product, "version": "1", "device": d}, data=b"{}",
        headers={"Authorization": "Bearer " + rel.token,
                 "Content-Type": "application/json"}, timeout=30)
    assert (r.status_code, code(r)) == (415, "unsupported_media_type")

    def chunked():
        yield b"firm"
        yield b"ware"
    r = requests.post(stack.url + "/v1/admin/firmware/packages", params={
        "product": rel.product, "version": "1", "device": d}, data=chunked(),
        headers={"Authorization": "Bearer " + rel.token,
                 "Content-Type": "application/octet-stream"}, timeout=30)
    assert (r.status_code, code(r)) == (411, "length_required")
    # A suspended target is no target.
    assert stack.admin("POST", f"/v1/admin/devices/{d}/suspend", json={}).status_code == 200
    r = rel.sign(b"x", [d])
    assert (r.status_code, code(r)) == (422, "unknown_device")
    assert stack.psql("SELECT count(*) FROM firmware_releases"
                      f" WHERE product = '{rel.product}'").strip() == "0"
    assert other.product != rel.product
    # Refusals decided in the transaction are audited, with what was asked.
    codes = stack.psql("SELECT detail->>'code' FROM audit_log WHERE event = 'firmware.refused'"
                       f" AND detail->>'product' = '{rel.product}' ORDER BY id").split()
    assert codes == ["unknown_device", "invalid_not_before", "unknown_device"], codes
    # And a token whose role may not sign, at the gate.
    rows = stack.psql("SELECT actor || ' ' || (detail->>'role') FROM audit_log WHERE"
                      " event = 'auth.forbidden' AND detail->>'route' ="
                      " '/v1/admin/firmware/packages' ORDER BY id DESC LIMIT 2").split("\n")
    assert sorted(r.split(" ")[1] for r in rows if r) == ["admin", "operator"], rows


def test_the_upload_limit(fresh_stack):
    st = fresh_stack
    st.start(extra_env={"QKMS_HTTP_MAX_UPLOAD_MB": "1"})
    rel = Release(st)
    d, _ = rel.device()
    r = rel.sign(os.urandom((1 << 20) + 1), [d])
    assert (r.status_code, code(r)) == (413, "payload_too_large")
    r = rel.sign(os.urandom(1 << 20), [d])
    assert r.status_code == 201, r.text[:200]
    # kmsctl waits for 100-continue: the refusal comes back as JSON, the
    # image is not sent, no package is left.
    big = os.path.join(st.state, "big.bin")
    with open(big, "wb") as f:
        f.write(os.urandom(8 << 20))
    out = os.path.join(st.state, "big.pkg")
    p = st.kmsctl("firmware", "sign", big, "--product", rel.product, "--version", "1",
                  "--device", d, "--out", out, token=rel.token)
    assert p.returncode != 0 and "payload_too_large" in p.stderr + p.stdout, p.stderr
    assert not os.path.exists(out) and not os.path.exists(out + ".part")


def test_kmsctl_firmware_sign(rel, tmp_path):
    d, f = rel.device()
    image = os.urandom(3 << 20)
    (tmp_path / "app.bin").write_bytes(image)
    out = tmp_path / "app.pkg"
    r = rel.st.kmsctl("firmware", "sign", str(tmp_path / "app.bin"), "--product", rel.product,
                      "--version", "3.1", "--device", d, "--out", str(out), "--json",
                      token=rel.token)
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert (info["counter"], info["out"]) == ("1", str(out))
    img, m = fw.open_package(out.read_bytes(), py_policy(rel, f))
    assert img == image and m["package_id"] == info["package_id"] and m["version"] == "3.1"
    assert not (tmp_path / "app.pkg.part").exists()
    # A refusal leaves no package and no staging file.
    r = rel.st.kmsctl("firmware", "sign", str(tmp_path / "app.bin"), "--product", rel.product,
                      "--version", "3.0", "--device", d, "--counter", "1", "--out",
                      str(tmp_path / "old.pkg"), token=rel.token)
    assert r.returncode != 0 and "counter_rollback" in r.stderr + r.stdout
    assert not (tmp_path / "old.pkg").exists() and not (tmp_path / "old.pkg.part").exists()
    for args in (("firmware", "sign", str(tmp_path / "app.bin"), "--product", rel.product),
                 ("firmware", "sign", str(tmp_path / "nope.bin"), "--product", rel.product,
                  "--version", "1", "--device", d, "--out", str(tmp_path / "x.pkg")),
                 ("firmware", "sign", str(tmp_path / "app.bin"), "--product", rel.product,
                  "--version", "1", "--device", d, "--counter", "0", "--out", "x")):
        r = rel.st.kmsctl(*args, token=rel.token)
        assert r.returncode == 2, (args, r.stderr)


def test_uploads_held_at_once_are_capped(fresh_stack):
    """Uploads held at once take at most twice http_max_upload_mb: one held
    (its body still arriving) leaves room for one more of the same size,
    not two; a refused one is answered 503 with Retry-After before its body
    is read, and the room comes back when the held upload ends."""
    import socket
    st = fresh_stack
    st.start(extra_env={"QKMS_HTTP_MAX_UPLOAD_MB": "1"})
    rel = Release(st)
    d, _ = rel.device()
    size = (1 << 20) - 1000

    def hold():
        """An upload whose body stops half way: kmsd holds its buffer."""
        s = socket.create_connection(("127.0.0.1", st.port))
        s.sendall((f"POST /v1/admin/firmware/packages?product={rel.product}&version=1"
                   f"&device={d} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                   f"Authorization: Bearer {rel.token}\r\n"
                   "Content-Type: application/octet-stream\r\n"
                   f"Content-Length: {size}\r\n\r\n").encode() + b"\0" * 1000)
        return s

    a, b = hold(), hold()
    time.sleep(0.5)   # both past the gate
    try:
        r = rel.sign(os.urandom(size), [d])
        assert (r.status_code, code(r)) == (503, "unavailable"), r.text[:200]
        assert r.headers["Retry-After"] == "5"
    finally:
        a.close()
        b.close()
    # The room comes back once the held uploads are gone.
    assert wait_for(lambda: rel.sign(os.urandom(size), [d]).status_code == 201)
