#!/usr/bin/python3
"""Writes tests/vectors/firmware-v1.json: firmware packages
(docs/firmware.md) and what a device must make of them.

    /usr/bin/python3 tests/vectors/make_vectors_fw.py [OUT.json]

Packages are built by the Python implementation
(tests/integration/qkms_fw_py.py) with keys, nonces and package IDs that are
fixed functions of a label; ECDSA signatures are random, so a new run
writes other (equally valid) bytes. The C library (tests/unit/test_fw.c)
and the Python implementation (tests/integration/test_firmware.py) open
every package and must reach the expected outcome.

The file is a JSON object:

  "ca", "signer": {"cert": DER hex} — the platform CA stand-in and the
      firmware signing certificate it issued (pin the signer)
  "other_signer": {"cert": DER hex} — a certificate of another key
  "device": a fill document (docs/devices.md) of the device the device
      cases run as
  "groups": [{"group", "key_id" (hex), "key" (hex)}]
  "cases": [{"name", "package" (hex), "policy": {"product", "counter",
      "now" (-1: no clock), "certs": ["signer"|"other_signer"],
      "device": true|false, "groups": [indexes into "groups"]},
      "expect": {"image": hex, "counter", "version", "kind"} or
      {"error": name}, "expect_stream" (when a stream, which learns the
      package's length only at its end, reaches another outcome)}]
"""
import datetime
import hashlib
import json
import os
import struct
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "integration"))

from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID  # noqa: E402

import qkms_fw_py as fw  # noqa: E402


def det(label, n):
    out = b""
    i = 0
    while len(out) < n:
        out += hashlib.sha256(f"{label}/{i}".encode()).digest()
        i += 1
    return out[:n]


class Rng:
    def __init__(self, label):
        self.label, self.i = label, 0

    def __call__(self, n):
        self.i += 1
        return det(f"{self.label}/{self.i}", n)


def ec_key(label):
    return ec.derive_private_key(int.from_bytes(det(label, 32), "big") % (2**255) + 1,
                                 ec.SECP256R1())


def cert(subject, key, issuer, issuer_key, ca=False):
    t0 = datetime.datetime(2026, 1, 1)
    b = (x509.CertificateBuilder()
         .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
         .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
         .public_key(key.public_key()).serial_number(int.from_bytes(det(subject, 8), "big"))
         .not_valid_before(t0).not_valid_after(t0 + datetime.timedelta(days=3650))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if not ca:
        b = b.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]),
                            critical=False)
    return b.sign(issuer_key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def main(out):
    ca_key, sign_key, other_key = ec_key("ca"), ec_key("signer"), ec_key("other")
    ca = cert("qkms test platform CA", ca_key, "qkms test platform CA", ca_key, ca=True)
    signer = cert("qkms firmware meter-g4 v1", sign_key, "qkms test platform CA", ca_key)
    other = cert("qkms firmware other v1", other_key, "qkms test platform CA", ca_key)
    dev_id = "METER-0042"
    k0, k1 = det("devkey0", 16), det("devkey1", 32)
    device = {"format": "qkms-fill/1", "device_id": dev_id, "keys": [
        {"index": 0, "algorithm": "AES-128", "key": k0.hex()},
        {"index": 1, "algorithm": "AES-256", "key": k1.hex()}]}
    groups = [fw.Group("plant-7", det("gkid7", 16), det("gkey7", 32)),
              fw.Group("plant-8", det("gkid8", 16), det("gkey8", 32))]
    nb = 1790000000  # 2026-09-21
    image = det("image", 3000)
    base = dict(product="meter-g4", version="2.7.1", counter=42, not_before=nb, chunk_size=1024)
    cases = []

    def case(name, pkg, expect, product="meter-g4", counter=41, now=nb + 60,
             certs=("signer",), device=False, gs=(0,), expect_stream=None):
        cases.append({"name": name, "package": pkg.hex(), "policy": {
            "product": product, "counter": counter, "now": now, "certs": list(certs),
            "device": device, "groups": list(gs)}, "expect": expect})
        if expect_stream:
            cases[-1]["expect_stream"] = expect_stream

    def ok(img, kind, version="2.7.1", counter=42):
        return {"image": img.hex(), "counter": counter, "version": version, "kind": kind}

    def build(label, img=image, **kw):
        args = dict(base)
        args.update(kw)
        return fw.build(img, sign_key, signer, rng=Rng(label), **args)

    g7 = {"groups": ["plant-7"], "devices": []}
    pg = build("group", targets=g7, recipients=[groups[1], groups[0]])
    case("group target, 3 chunks", pg, ok(image, 1))
    case("group target, the device's own keys unused", pg, ok(image, 1), device=True)
    pd = build("device", targets={"groups": [], "devices": [dev_id]},
               recipients=[fw.DeviceKey("METER-0099", 1, det("other", 32)),
                           fw.DeviceKey(dev_id, 1, k1)])
    case("device target, AES-256 device key", pd, ok(image, 2), device=True, gs=())
    p16 = build("dev16", img=b"", version="2.7.2", counter=43,
                targets={"groups": [], "devices": [dev_id]},
                recipients=[fw.DeviceKey(dev_id, 0, k0)])
    case("device target, AES-128 device key, empty image", p16,
         ok(b"", 2, "2.7.2", 43), device=True, gs=())
    big = det("big", 70000)
    pb = build("big", img=big, chunk_size=65536, targets=g7, recipients=[groups[0]])
    case("two chunks of 64 KiB", pb, ok(big, 1))

    # -- refusals: the package
    def flip(pkg, i, bit=1):
        b = bytearray(pkg)
        b[i] ^= bit
        return bytes(b)

    hlen = fw.FIXED_LEN + 2 * fw.RECIPIENT_LEN
    case("magic", flip(pg, 0), {"error": "format"})
    case("suite", flip(pg, 9), {"error": "format"})
    case("chunk size below 1024", pg[:12] + struct.pack(">I", 512) + pg[16:], {"error": "format"})
    case("a recipient's reserved byte", flip(pg, fw.FIXED_LEN + 2), {"error": "format"})
    case("the group's kek_id", flip(pg, fw.FIXED_LEN + fw.RECIPIENT_LEN + 4),
         {"error": "not_a_target"})
    case("the group's wrapped key", flip(pg, fw.FIXED_LEN + fw.RECIPIENT_LEN + 40),
         {"error": "not_a_target"})
    case("the package ID (header hash)", flip(pg, 20), {"error": "not_a_target"})
    case("the other recipient's entry (header hash)", flip(pg, fw.FIXED_LEN + 50),
         {"error": "auth"})
    def body_len(pkg, delta):
        (bl,) = struct.unpack(">Q", pkg[32:40])
        return pkg[:32] + struct.pack(">Q", bl + delta) + pkg[40:]

    # body_len one less: the package is a byte too long (whole: format at
    # once; streamed: the wrap's associated data changed, not_a_target)
    case("body_len one less (a byte too many)", body_len(pg, -1), {"error": "format"},
         expect_stream={"error": "not_a_target"})
    case("body_len one more (the wrap's associated data)", body_len(pg, 1),
         {"error": "not_a_target"})
    case("chunk 0", flip(pg, hlen + 5), {"error": "auth"})
    case("the last chunk's tag", flip(pg, len(pg) - 1), {"error": "auth"})
    case("the last chunk missing", pg[:hlen + 2 * (1024 + 16)], {"error": "auth"})
    case("a byte after the last chunk", pg + b"\0", {"error": "format"})
    case("the header cut short", pg[:hlen - 1], {"error": "format"})
    case("no key of this device or its groups", pg, {"error": "not_a_target"}, gs=())
    case("a key of another group it holds", pg, {"error": "not_a_target"}, gs=(1,))
    # -- refusals: the manifest and the policy
    case("another product", pg, {"error": "product"}, product="meter-g5")
    case("the installed counter", pg, {"error": "rollback"}, counter=42)
    case("before not_before", pg, {"error": "not_yet"}, now=nb - 1)
    case("no clock: not_before not checked", pg, ok(image, 1), now=-1)
    case("the signer not pinned", pg, {"error": "signature"}, certs=("other_signer",))
    case("signed by another key", build(
        "forged", targets=g7, recipients=[groups[0]],
        signature_override=other_key.sign(b"x", ec.ECDSA(hashes.SHA256()))),
        {"error": "signature"})
    case("not valid at not_before", build("old", targets=g7, recipients=[groups[0]],
                                          not_before=1700000000), {"error": "signature"},
         now=-1)
    case("wrapped for the group, not named in the manifest",
         build("unnamed", targets={"groups": ["plant-8"], "devices": []},
               recipients=[groups[0]]), {"error": "not_a_target"})
    case("wrapped for the device, not named in the manifest",
         build("unnamed-dev", targets={"groups": ["plant-7"], "devices": []},
               recipients=[fw.DeviceKey(dev_id, 1, k1)]), {"error": "not_a_target"},
         device=True, gs=())

    def manifest_of(label, **over):
        """A package whose manifest (signed all the same) says what over says."""
        pid = Rng(label)(16)
        m = {"format": "qkms-fw-manifest/1", "product": "meter-g4", "version": "2.7.1",
             "counter": 42, "image_size": len(image),
             "image_sha256": hashlib.sha256(image).hexdigest(), "targets": g7,
             "not_before": nb, "package_id": str(__import__("uuid").UUID(bytes=pid)),
             "signer": hashlib.sha256(signer).hexdigest()}
        m.update(over)
        return build(label, targets=g7, recipients=[groups[0]],
                     manifest_override=fw.manifest_bytes(m))

    case("the group's key unwraps and the manifest names the device",
         build("dev-named", targets={"groups": [], "devices": [dev_id]}, recipients=[groups[0]]),
         ok(image, 1), device=True)
    case("upper-case hex in the manifest", manifest_of(
        "upper", image_sha256=hashlib.sha256(image).hexdigest().upper()), {"error": "manifest"})
    case("a manifest with a byte order mark", build(
        "bom", targets=g7, recipients=[groups[0]],
        manifest_override=b"\xef\xbb\xbf" + fw.manifest_bytes({
            "format": "qkms-fw-manifest/1", "product": "meter-g4", "version": "2.7.1",
            "counter": 42, "image_size": len(image),
            "image_sha256": hashlib.sha256(image).hexdigest(), "targets": g7,
            "not_before": nb, "package_id": str(__import__("uuid").UUID(bytes=Rng("bom")(16))),
            "signer": hashlib.sha256(signer).hexdigest()})), {"error": "manifest"})
    case("trailing bytes after a refused manifest: format first",
         manifest_of("pid2", package_id="00000000-0000-4000-8000-000000000000") + b"\0",
         {"error": "format"}, expect_stream={"error": "manifest"})
    case("the manifest's package_id is another package's",
         manifest_of("pid", package_id="00000000-0000-4000-8000-000000000000"),
         {"error": "manifest"})
    case("the manifest's image_sha256 is wrong", manifest_of("sha", image_sha256="00" * 32),
         {"error": "image"})
    case("the manifest's counter is 0", manifest_of("c0", counter=0), {"error": "manifest"})
    case("an unknown manifest format", manifest_of("fmt", format="qkms-fw-manifest/2"),
         {"error": "manifest"})

    doc = {"ca": {"cert": ca.hex()}, "signer": {"cert": signer.hex()},
           "other_signer": {"cert": other.hex()}, "device": device,
           "groups": [{"group": g.name, "key_id": g.key_id.hex(), "key": g.key.hex()}
                      for g in groups],
           "cases": cases}
    with open(out, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else
         os.path.join(os.path.dirname(__file__), "firmware-v1.json"))
