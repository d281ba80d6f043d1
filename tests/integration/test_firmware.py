"""Firmware packages (docs/firmware.md; issue 19, seed 001: signed first,
then encrypted) end to end on the device side: the vectors
(tests/vectors/firmware-v1.json) against the Python implementation; a
50 MiB image built by the Python implementation opened by the C library
through `qkms-device firmware open` (streamed, through a staging file) and
its manifest verified by the `openssl` command line; tampering anywhere,
anti-rollback, group and device targeting and a signing key rotation's
overlap refused or accepted as documented, with nothing left behind by a
refused package. The platform's signing service is the next piece of the
issue; here the Python implementation signs."""
import datetime
import hashlib
import json
import os
import subprocess

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

import qkms_fw_py as fw
from conftest import ROOT

QKMS_DEVICE = os.environ.get("QKMS_DEVICE", os.path.join(ROOT, "build/asan/bin/qkms-device"))
VECTORS = os.path.join(ROOT, "tests", "vectors", "firmware-v1.json")
NB = 1790000000


@pytest.fixture(scope="module")
def vec():
    with open(VECTORS) as f:
        return json.load(f)


def policy_of(v, p):
    dev = v["device"]
    groups = [fw.Group(g["group"], bytes.fromhex(g["key_id"]), bytes.fromhex(g["key"]))
              for g in v["groups"]]
    return fw.Policy(product=p["product"], counter=p["counter"], now=p["now"],
                     certs=[bytes.fromhex(v[c]["cert"]) for c in p["certs"]],
                     device_id=dev["device_id"] if p["device"] else None,
                     device_keys={k["index"]: bytes.fromhex(k["key"]) for k in dev["keys"]}
                     if p["device"] else {},
                     groups=[groups[i] for i in p["groups"]])


def test_vectors_in_python(vec):
    assert len(vec["cases"]) >= 30
    for c in vec["cases"]:
        pkg, want = bytes.fromhex(c["package"]), c["expect"]
        try:
            img, m = fw.open_package(pkg, policy_of(vec, c["policy"]))
        except fw.FwError as e:
            assert want.get("error") == e.code, (c["name"], e)
            continue
        assert "error" not in want, c["name"]
        assert (img.hex(), m["counter"], m["version"]) == (want["image"], want["counter"],
                                                           want["version"]), c["name"]


# ---------------------------------------------------------------------------
# keys and certificates of the tests' signer (the platform's role here)

def _cert(subject, key, ca_key, days=3650, start=datetime.datetime(2026, 1, 1)):
    return (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")]))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(start + datetime.timedelta(days=days))
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), False)
            .sign(ca_key, hashes.SHA256()))


class Signer:
    def __init__(self, name, ca_key):
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.cert = _cert(name, self.key, ca_key)
        self.der = self.cert.public_bytes(serialization.Encoding.DER)

    def pem_file(self, d):
        p = d / (hashlib.sha256(self.der).hexdigest()[:12] + ".pem")
        p.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        return str(p)

    def pub_file(self, d):
        p = d / "signer-pub.pem"
        p.write_bytes(self.key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
        return str(p)


@pytest.fixture(scope="module")
def ca_key():
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def signer(ca_key):
    return Signer("qkms firmware meter-g4 v1", ca_key)


GROUP = fw.Group("plant-7", bytes(range(16)), hashlib.sha256(b"plant-7 firmware key").digest())
DEV_ID = "METER-0042"
DEV_KEY = hashlib.sha256(b"METER-0042 key 3").digest()


def group_key_file(d, g=GROUP):
    p = d / f"{g.name}.key.json"
    p.write_text(json.dumps({"group": g.name, "key_id": g.key_id.hex(), "key": g.key.hex()}))
    p.chmod(0o600)
    return str(p)


def fill_file(d):
    p = d / "device.fill.json"
    p.write_text(json.dumps({"format": "qkms-fill/1", "device_id": DEV_ID, "keys": [
        {"index": 3, "algorithm": "AES-256", "key": DEV_KEY.hex()}]}))
    p.chmod(0o600)
    return str(p)


def package(signer, image, **kw):
    args = dict(product="meter-g4", version="2.7.1", counter=42, not_before=NB,
                targets={"groups": ["plant-7"], "devices": [DEV_ID]},
                recipients=[GROUP, fw.DeviceKey(DEV_ID, 3, DEV_KEY)], chunk_size=1 << 20)
    args.update(kw)
    return fw.build(image, signer.key, signer.der, **args)


def c_open(d, pkg, certs, *args, name="pkg"):
    pp, out = d / f"{name}.bin", d / f"{name}.img"
    pp.write_bytes(pkg)
    p = subprocess.run([QKMS_DEVICE, "firmware", "open", "--in", str(pp), "--out", str(out),
                        "--product", "meter-g4", "--certs", ",".join(certs), "--json", *args],
                       capture_output=True, text=True, timeout=300)
    return p, out


# ---------------------------------------------------------------------------

def test_fifty_mib_image_in_c_and_openssl(signer, tmp_path):
    image = os.urandom(50 << 20)
    pkg = package(signer, image)
    body_len = int.from_bytes(pkg[32:40], "big")
    assert len(image) < body_len < len(image) + 1000
    assert len(pkg) == fw.FIXED_LEN + 2 * fw.RECIPIENT_LEN + body_len + \
        16 * -(-body_len // (1 << 20))
    cert = signer.pem_file(tmp_path)
    # As a group member, and as the device itself (its device key).
    for how in (["--group-key", group_key_file(tmp_path)], ["--fill", fill_file(tmp_path)]):
        p, out = c_open(tmp_path, pkg, [cert], "--counter", "41", "--now", str(NB + 1), *how)
        assert p.returncode == 0, p.stderr
        m = json.loads(p.stdout)
        assert (m["product"], m["version"], m["counter"], m["image_size"]) == (
            "meter-g4", "2.7.1", 42, 50 << 20)
        assert m["image_sha256"] == hashlib.sha256(image).hexdigest()
        assert m["target"] == ("group" if how[0] == "--group-key" else "device")
        assert out.read_bytes() == image
        assert not (tmp_path / "pkg.img.part").exists()
        out.unlink()
    # The manifest and its signature, checked by openssl alone.
    _, man, mb, sig = fw.open_package(pkg, fw.Policy(product="meter-g4", certs=[signer.der],
                                                     groups=[GROUP]), parts=True)
    (tmp_path / "manifest.json").write_bytes(mb)
    (tmp_path / "manifest.sig").write_bytes(sig)
    v = subprocess.run(["openssl", "dgst", "-sha256", "-verify", signer.pub_file(tmp_path),
                        "-signature", str(tmp_path / "manifest.sig"),
                        str(tmp_path / "manifest.json")], capture_output=True, text=True)
    assert v.returncode == 0 and "Verified OK" in v.stdout, v.stdout + v.stderr
    (tmp_path / "manifest.json").write_bytes(mb.replace(b'"counter":42', b'"counter":43'))
    v = subprocess.run(["openssl", "dgst", "-sha256", "-verify", signer.pub_file(tmp_path),
                        "-signature", str(tmp_path / "manifest.sig"),
                        str(tmp_path / "manifest.json")], capture_output=True, text=True)
    assert v.returncode != 0 and "Verification failure" in v.stdout
    assert man["image_sha256"] == hashlib.sha256(image).hexdigest()


def test_tampering_anywhere_leaves_nothing(signer, tmp_path):
    image = os.urandom(5000)
    pkg = package(signer, image, chunk_size=1024)
    cert, gk = signer.pem_file(tmp_path), group_key_file(tmp_path)
    hlen = fw.FIXED_LEN + 2 * fw.RECIPIENT_LEN
    # Every header field, each recipient's parts, the first, a middle and the
    # last chunk, and a tag.
    for i in (0, 8, 9, 11, 15, 20, 39, 40, 44, 60, 100, 120, 140, 160, hlen, hlen + 1500,
              len(pkg) - 17, len(pkg) - 1):
        bad = bytearray(pkg)
        bad[i] ^= 0x01
        p, out = c_open(tmp_path, bytes(bad), [cert], "--group-key", gk, name=f"t{i}")
        assert p.returncode == 5, (i, p.stderr)
        assert p.stderr.split(": ")[1] in ("format", "not_a_target", "auth"), (i, p.stderr)
        assert not out.exists() and not (tmp_path / f"t{i}.img.part").exists()
        with pytest.raises(fw.FwError):
            fw.open_package(bytes(bad), fw.Policy(product="meter-g4", certs=[signer.der],
                                                  groups=[GROUP]))
    p, out = c_open(tmp_path, pkg, [cert], "--group-key", gk)
    assert p.returncode == 0 and out.read_bytes() == image, p.stderr


def test_rollback_targets_and_dates(signer, ca_key, tmp_path):
    pkg = package(signer, b"image v42")
    cert, gk = signer.pem_file(tmp_path), group_key_file(tmp_path)

    def refused(code, *args, certs=(cert,), pkg=pkg):
        p, out = c_open(tmp_path, pkg, list(certs), *args, name="r")
        assert p.returncode == 5 and f": {code}:" in p.stderr, p.stderr
        assert not out.exists()

    refused("rollback", "--group-key", gk, "--counter", "42")
    refused("not_yet", "--group-key", gk, "--now", str(NB - 1))
    p, _ = c_open(tmp_path, pkg, [cert], "--group-key", gk, "--counter", "41", "--no-clock")
    assert p.returncode == 0, p.stderr
    other = fw.Group("plant-8", bytes(16), bytes(32))
    refused("not_a_target", "--group-key", group_key_file(tmp_path, other))
    # Wrapped for the group but naming only the device: not for the group.
    only_dev = package(signer, b"x", targets={"groups": [], "devices": [DEV_ID]})
    refused("not_a_target", "--group-key", gk, pkg=only_dev)
    p, _ = c_open(tmp_path, only_dev, [cert], "--fill", fill_file(tmp_path), name="od")
    assert p.returncode == 0, p.stderr
    # Another product's package.
    p = package(signer, b"x", product="meter-g5")
    refused("product", "--group-key", gk, pkg=p)


def test_signing_key_rotation_overlap(signer, ca_key, tmp_path):
    """During a rotation devices pin the old and the new certificate: both
    signers' packages open; a device that pinned only the old one refuses
    the new signer's."""
    new = Signer("qkms firmware meter-g4 v2", ca_key)
    old_pem, new_pem, gk = signer.pem_file(tmp_path), new.pem_file(tmp_path), \
        group_key_file(tmp_path)
    for s in (signer, new):
        p, out = c_open(tmp_path, package(s, b"img"), [old_pem, new_pem], "--group-key", gk)
        assert p.returncode == 0, p.stderr
        assert json.loads(p.stdout)["signer"] == hashlib.sha256(s.der).hexdigest()
    p, out = c_open(tmp_path, package(new, b"img"), [old_pem], "--group-key", gk, name="n")
    assert p.returncode == 5 and ": signature:" in p.stderr
    # A certificate that had expired at the manifest's not_before.
    expired = Signer("qkms firmware meter-g4 v0", ca_key)
    expired.cert = _cert("qkms firmware meter-g4 v0", expired.key, ca_key, days=30)
    expired.der = expired.cert.public_bytes(serialization.Encoding.DER)
    p, out = c_open(tmp_path, package(expired, b"img"), [expired.pem_file(tmp_path)],
                    "--group-key", gk, name="e")
    assert p.returncode == 5 and ": signature:" in p.stderr


def test_usage_errors(tmp_path):
    for args in (["firmware"], ["firmware", "verify"], ["firmware", "open", "--in", "x"],
                 ["firmware", "open", "--in", "x", "--out", "y", "--product", "p", "--certs",
                  "c", "--fill", "f", "--now", "1", "--no-clock"]):
        p = subprocess.run([QKMS_DEVICE, *args], capture_output=True, text=True)
        assert p.returncode == 2, (args, p.stderr)


def test_the_staging_file_is_never_someone_elses(signer, tmp_path):
    """The image is staged in OUT.part, made by the open itself: a symlink
    or a file already there is refused and left alone; a staging file that
    cannot be written is exit 1 (ours), not a refused package."""
    import resource
    import signal
    pkg = package(signer, os.urandom(300000), chunk_size=65536)
    cert, gk = signer.pem_file(tmp_path), group_key_file(tmp_path)
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep me")
    (tmp_path / "pkg.img.part").symlink_to(victim)
    p, out = c_open(tmp_path, pkg, [cert], "--group-key", gk)
    assert p.returncode != 0 and "pkg.img.part" in p.stderr
    assert victim.read_bytes() == b"keep me" and not out.exists()
    assert (tmp_path / "pkg.img.part").is_symlink()   # not ours to delete
    (tmp_path / "pkg.img.part").unlink()
    (tmp_path / "pkg.img.part").write_bytes(b"another open's")
    p, out = c_open(tmp_path, pkg, [cert], "--group-key", gk)
    assert p.returncode != 0 and "remove it" in p.stderr
    assert (tmp_path / "pkg.img.part").read_bytes() == b"another open's"
    (tmp_path / "pkg.img.part").unlink()

    def small_files():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (100000, 100000))

    pp = tmp_path / "big.bin"
    pp.write_bytes(pkg)
    p = subprocess.run([QKMS_DEVICE, "firmware", "open", "--in", str(pp), "--out",
                        str(tmp_path / "big.img"), "--product", "meter-g4", "--certs", cert,
                        "--group-key", gk], capture_output=True, text=True, timeout=60,
                       preexec_fn=small_files)
    assert p.returncode == 1 and "sink" in p.stderr, (p.returncode, p.stderr)
    assert not (tmp_path / "big.img").exists() and not (tmp_path / "big.img.part").exists()
