#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets into fuzz/corpus/<target>/.

Seeds come from tests/vectors/protocol-v1.json where the target reads
protocol bytes, from docs/kmsd.conf.example for the config parser, and from
small hand-made examples (including the regression inputs of bugs the
fuzzers found). Fill packages are sealed here with Python's cryptography
(an implementation independent of common/fillpkg.c) to the test keys
compiled into fuzz/fuzz_fillpkg.c. Run from the repository root:
    python3 fuzz/make_corpus.py        (make fuzz-corpus)
The output is deterministic except for the fill packages' ephemeral keys,
salts and nonces; the corpus is committed so CI needs no Python step.
"""
import hashlib
import json
import os
import re
import shutil
import struct

from cryptography.hazmat.primitives import cmac, serialization
from cryptography.hazmat.primitives.asymmetric import ec, x25519
from cryptography.hazmat.primitives.ciphers import algorithms
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "fuzz", "corpus")
VECTORS = json.load(open(os.path.join(ROOT, "tests", "vectors", "protocol-v1.json")))


def put(target, name, data):
    d = os.path.join(OUT, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def compact(obj):
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def kcv(key):
    c = cmac.CMAC(algorithms.AES(key))
    c.update(bytes(16))
    return c.finalize()[:5].hex()


def fill_doc(v, extra=None):
    key = bytes.fromhex(v["device_key"])
    k = {"index": v["key_index"], "algorithm": v["device_key_algorithm"], "key": key.hex(),
         "kcv": kcv(key), "not_before": "2026-11-23T08:00:00Z", "not_after": "2027-11-23T08:00:00Z"}
    if extra:
        k.update(extra)
    return {"format": "qkms-fill/1", "issuer": "qkms", "device_id": v["device_id"],
            "type": "vehicle", "group": "fleet-a", "created_at": "2026-11-23T08:00:00Z", "keys": [k]}


# ---- fill packages (docs/devices.md), sealed to fuzz_fillpkg.c's keys ----

def fuzz_keys():
    src = open(os.path.join(ROOT, "fuzz", "fuzz_fillpkg.c")).read()
    xhex = re.search(r'x25519_hex\[\] = "([0-9a-f]{64})"', src).group(1)
    pem = "".join(re.findall(r'^\s*(?:static const char p256_pem\[\] = )?"([^"]*)\\n"', src, re.M))
    pem = pem.replace("-----BEGIN PRIVATE KEY-----", "-----BEGIN PRIVATE KEY-----\n")
    pem = pem.replace("-----END PRIVATE KEY-----", "\n-----END PRIVATE KEY-----\n")
    body = pem.split("\n")
    pem = "\n".join([body[0]] + re.findall(".{1,64}", "".join(body[1:-2])) + body[-2:])
    xk = x25519.X25519PrivateKey.from_private_bytes(bytes.fromhex(xhex))
    pk = serialization.load_pem_private_key(pem.encode(), None)
    return xk, pk


def seal(recipient_priv, plaintext):
    if isinstance(recipient_priv, x25519.X25519PrivateKey):
        curve, eph = 1, x25519.X25519PrivateKey.generate()
        ephpub = eph.public_key().public_bytes(serialization.Encoding.Raw,
                                               serialization.PublicFormat.Raw)
        shared = eph.exchange(recipient_priv.public_key())
    else:
        curve, eph = 2, ec.generate_private_key(ec.SECP256R1())
        ephpub = eph.public_key().public_bytes(serialization.Encoding.X962,
                                               serialization.PublicFormat.UncompressedPoint)
        shared = eph.exchange(ec.ECDH(), recipient_priv.public_key())
    salt, nonce = os.urandom(32), os.urandom(12)
    hdr = b"QKFP" + bytes([1, curve]) + struct.pack(">H", len(ephpub)) + ephpub + salt + nonce
    hdr += struct.pack(">I", len(plaintext) + 16)
    key = HKDF(SHA256(), 32, salt, b"qkms fill package v1" + hdr).derive(shared)
    return hdr + AESGCM(key).encrypt(nonce, plaintext, hdr)


def main():
    shutil.rmtree(OUT, ignore_errors=True)
    by_name = {v["name"]: v for v in VECTORS}

    # envelope: every request body of the vectors, and some refusals
    for v in VECTORS:
        put("envelope", v["name"], v["request_body"])
    ok = json.loads(by_name["key-aes128"]["request_body"])
    put("envelope", "hand-unknown-field", compact(dict(ok, extra=1)))
    put("envelope", "hand-v-string", compact(dict(ok, v="1")))
    put("envelope", "hand-index-256", compact(dict(ok, key_index=256)))
    put("envelope", "hand-duplicate-key", '{"v":1,"v":1}')
    put("envelope", "hand-not-object", "[1,2,3]")
    put("envelope", "hand-empty", "")

    # inner: the plaintexts, and variants of each field
    for v in VECTORS:
        put("inner", v["name"], v["request_plaintext"])
    base = {"session_id": "S-1", "peer_id": "ENC-0001", "ts": 1795430000}
    put("inner", "hand-delivered", compact(dict(base, delivery="delivered")))
    put("inner", "hand-delivery-bad", compact(dict(base, delivery="session")))
    put("inner", "hand-ts-string", compact(dict(base, ts="1795430000")))
    put("inner", "hand-ts-edge", compact(dict(base, ts=1795430300)))
    put("inner", "hand-peer-self", compact(dict(base, peer_id="VIN-0001")))
    put("inner", "hand-unknown", compact(dict(base, x=[{}])))
    put("inner", "hand-end", compact({"session_id": "S-1", "ts": 1795429700}))

    # fill documents and sealed packages
    xk, pk = fuzz_keys()
    seen = set()
    for v in VECTORS:
        if (v["device_id"], v["key_index"]) in seen:
            continue
        seen.add((v["device_id"], v["key_index"]))
        doc = compact(fill_doc(v)).encode()
        put("fill_doc", v["name"], doc)
        put("fillpkg", v["name"] + "-x25519", seal(xk, doc))
        put("fillpkg", v["name"] + "-p256", seal(pk, doc))
    v0 = by_name["key-aes128"]
    put("fill_doc", "hand-unix-times", compact(fill_doc(v0, {"not_before": 0, "not_after": 2000000000})))
    put("fill_doc", "hand-offset-times", compact(fill_doc(v0, {"not_before": "2026-02-29T08:00:00.5+01:00",
                                                               "not_after": "2028-02-29T23:59:60-00:30"})))
    put("fill_doc", "hand-no-kcv", compact(fill_doc(v0, {"kcv": None})))
    two = fill_doc(v0)
    two["keys"].append(dict(two["keys"][0], index=1))
    put("fill_doc", "hand-two-keys", compact(two))
    put("fillpkg", "hand-truncated", seal(xk, b"{}")[:60])

    # device responses: byte 0 is the vector's index in protocol-v1.json
    for i, v in enumerate(VECTORS):
        if v["op"] == "key" and "response" in v:
            put("device_response", v["name"], bytes([i]) + compact(v["response"]["body"]).encode())
        elif v["op"] == "end" and "session_id" in v:  # an end of all has its own answer
            put("device_response", v["name"],
                bytes([i]) + compact({"v": 1, "session_id": v["session_id"], "ended": True}).encode())
    put("device_response", "hand-error",
        b"\x00" + compact({"error": {"code": "policy_denied", "message": "no policy"}}).encode())

    # config: the example file and hand-made lines
    put("config", "kmsd.conf.example", open(os.path.join(ROOT, "docs", "kmsd.conf.example")).read())
    put("config", "hand-quotes", 'db_conninfo = "host=/tmp # not a comment"  # comment\n'
                                 'pkcs11_pin = "1234"\nlisten_port=1\n')
    put("config", "hand-bad", "listen_port = 0x10\n")
    put("config", "hand-twice", "log_level = debug\nlog_level = info\n")
    put("config", "hand-double", "entropy_min_entropy = 7.5e0\nrate_limit_device = 0\n")

    # server import body (and the one-device body)
    dev = {"device_id": "VIN-0001", "type": "vehicle", "group": "fleet-a", "keys": 2,
           "key_bits": 256, "validity_days": 30, "line": 2}
    put("import_json", "hand-import", compact({"devices": [dev, {"device_id": "GW-1", "type": "gateway"},
                                                           {"device_id": "SUB-1", "type": "subdevice",
                                                            "parent": "GW-1"}]}))
    put("import_json", "hand-import-bad-rows", compact({"devices": [{"device_id": "a/b", "type": "x"},
                                                                    {"device_id": "X", "type": "Vehicle"},
                                                                    {"device_id": "é" * 40, "type": "x"}, 5]}))
    put("import_json", "hand-single", compact(dev))

    # kmsctl: CSV records and import files (byte 0: 0 detect, 1 csv, 2 jsonl)
    put("csv", "hand-plain", "VIN-0001,vehicle,fleet-a,,2,256,365")
    put("csv", "hand-quoted", '"VIN,1","say ""hi""",,"multi\nline"')
    put("csv", "hand-bad", 'a"b,c')
    csv_file = ("\ufeffdevice_id, type,group,parent,keys,key_bits,validity_days\r\n"
                "VIN-0001,vehicle,fleet-a,,2,256,365\r\n\r\n"
                'GW-1,gateway,"fleet,b",,,,\n'
                'SUB-1,subdevice,fleet-a,GW-1,x,,\n'
                '"open,field\nnext line",vehicle,,,,,\n')
    put("import_file", "hand-csv", b"\x01" + csv_file.encode())
    put("import_file", "hand-detect-csv", b"\x00" + csv_file.encode())
    jsonl = compact(dev) + "\n" + '{"device_id":"X","keys":"2"}\n' + "not json\n" + "[1]\n"
    put("import_file", "hand-jsonl", b"\x02" + jsonl.encode())
    put("import_file", "hand-detect-jsonl", b"\x00" + jsonl.encode())
    put("import_file", "hand-array", b"\x00" + b'[{"device_id":"X"}]\n')

    # audit rows: id, at_us (8 bytes each, big-endian), flags, then NUL-separated text
    def row(i, at, dev_flag, actor, event, device, detail):
        return (struct.pack(">qq", i, at) + bytes([dev_flag]) +
                b"\0".join(s.encode() for s in (actor, event, device, detail)))
    put("audit_canon", "hand-device", row(1, 1795430000123456, 1, "admin:bootstrap", "device.register",
                                          "VIN-0001", '{"type": "vehicle", "keys": 4}'))
    put("audit_canon", "hand-null-device", row(2, -1, 0, "system", "master.rotate", "", '{"version": 2}'))
    put("audit_canon", "hand-utf8", row(3, 0, 1, "ops:é", "x", "\u00fc", "{}"))

    # QRNG bodies: byte 0 format (0 raw, 1 hex, 2 base64), byte 1 path
    # (0 none, 1 data, 2 result.random.data), byte 2 capacity - 1
    put("qrng_decode", "hand-raw", b"\x00\x00\x1f" + hashlib.sha384(b"qrng").digest())
    put("qrng_decode", "hand-hex", b"\x01\x00\x0f" + b"00ff10aa" * 4 + b"\r\n")
    put("qrng_decode", "hand-base64", b"\x02\x00\x3f" + b"AP8Q/+8=\n")
    put("qrng_decode", "hand-json-hex", b"\x01\x01\xff" + b'{"data":"0a0b0c"}')
    put("qrng_decode", "hand-json-base64", b"\x02\x02\xff" + b'{"result":{"random":{"data":"AP8QAP8Q"}}}')
    # regressions (fixed in kmsd/entropy_source.c): '=' inside, white space around
    put("qrng_decode", "regress-base64-equals-inside", b"\x08\x90\x68" + b"7777777=77777777")
    put("qrng_decode", "regress-base64-trailing-space", b"\x02\x00\xff" + b"AA==    ")

    # routes: byte 0 method (0 GET, 1 POST, 2 PUT, 3 DELETE, 4 PATCH), byte 1 buffer size
    for i, (m, p) in enumerate([(0, "/healthz"), (0, "/v1/admin/devices/VIN-0001/keys"),
                                (1, "/v1/sessions/key"), (1, "/v1/admin/tokens/ops1/revoke"),
                                (3, "/v1/admin/devices"), (0, "/v1/admin/policies//x")]):
        put("http_route", "hand-%d" % i, bytes([m, 0]) + p.encode())
    put("http_route", "hand-short-buffer", b"\x00\x04/v1/admin/devices/VIN-0001")
    put("http_route", "hand-request-id", b"\x00\x00" + b"a" * 64)
    # the same text is also taken as Authorization and Content-Type values
    put("http_route", "hand-bearer", b"\x00\x00Bearer  qkms_" + b"0123456789abcdef" * 4 + b"  ")
    put("http_route", "hand-content-type", b"\x00\x00application/json ; charset=utf-8")

    # hex and base64url: byte 0 capacity
    put("hex", "hand-hex", b"\x10" + b"00112233445566778899aabbccddeeFF")
    put("hex", "hand-b64u", b"\x20" + by_name["key-aes128"]["request_nonce_b64u"].encode())
    put("hex", "hand-b64u-ct", b"\xff" + json.loads(by_name["key-aes128"]["request_body"])["ct"].encode())

    # cert_pem: byte 0 even a CSR for device FUZZ-DEV-1, odd a certificate to bind
    cert_pem_seeds()
    v2_seeds()
    etsi014_seeds()
    seal_seeds()
    fw_seeds()


def seal_seeds():
    """seal: byte 0 the window (0 fresh, else shared with the previous
    input), then a frame: the first seal vector's frames (those that open
    under the key fuzz_seal.c uses) and every reject case's."""
    doc = json.load(open(os.path.join(ROOT, "tests", "vectors", "seal-v1.json")))
    first = doc["seal"][0]
    put("seal", "vec-first", b"\x00" + bytes.fromhex(first["frame"]))
    for c in doc["seal"][1:]:
        put("seal", f"vec-{c['name']}", b"\x00" + bytes.fromhex(c["frame"]))
    for c in doc["reject"]:
        put("seal", f"reject-{c['name']}", b"\x00" + bytes.fromhex(c["frame"]))
    key = bytes.fromhex(first["key"])
    hdr = bytes.fromhex(first["frame"])[:28]
    for seq in (1, 70, 2):  # a sequence sharing one window (byte 0 = 1)
        h = hdr[:20] + struct.pack(">Q", seq)
        aad = b"qkms/seal/v1\x00" + first["session_id"].encode() + b"\x00" + h
        nonce = struct.pack(">IQ", h[2], seq)
        put("seal", f"seq-{seq}", b"\x01" + h + AESGCM(key).encrypt(nonce, b"reading", aad))


def fw_seeds():
    """fw: byte 0 the mode and slicing (bit 7 clear: a package; set: a
    body the harness encrypts for the group key), then the bytes: every
    vector package small enough (mode 0, several slicings), and the first
    package's body (mode 0x80) so the manifest parser starts from a real
    one."""
    doc = json.load(open(os.path.join(ROOT, "tests", "vectors", "firmware-v1.json")))
    for i, c in enumerate(doc["cases"]):
        pkg = bytes.fromhex(c["package"])
        if len(pkg) <= 16000:
            put("fw", f"pkg-{i:02d}", bytes([(i * 13) % 128]) + pkg)
    import sys as _sys
    _sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
    import qkms_fw_py as fw
    g = doc["groups"][0]
    grp = fw.Group(g["group"], bytes.fromhex(g["key_id"]), bytes.fromhex(g["key"]))
    first = doc["cases"][0]
    _, _, mb, sig = fw.open_package(bytes.fromhex(first["package"]), fw.Policy(
        product=first["policy"]["product"], certs=[bytes.fromhex(doc["signer"]["cert"])],
        groups=[grp]), parts=True)
    image = bytes.fromhex(first["expect"]["image"])
    body = struct.pack(">I", len(mb)) + mb + struct.pack(">H", len(sig)) + sig + image
    put("fw", "body-first", b"\x80" + body)


def etsi014_seeds():
    """etsi014: byte 0 even a Key request (POST enc_keys), odd Key IDs
    (POST dec_keys), then the JSON body."""
    ids = ["2c9b0c4e-52b4-4c8e-9b8a-0d1e2f3a4b5c", "F1A0C4E5-52B4-4C8E-9B8A-0D1E2F3A4B5C"]
    for name, body in (
            ("key-request", {"number": 2, "size": 256}),
            ("key-request-multicast", {"number": 1, "additional_slave_SAE_IDs": ["SAE-B", "SAE-C"]}),
            ("key-request-extensions", {"extension_mandatory": [{"x": 1}], "extension_optional": []}),
            ("key-request-empty", {})):
        put("etsi014", name, b"\x00" + compact(body).encode())
    for name, body in (
            ("key-ids", {"key_IDs": [{"key_ID": i} for i in ids]}),
            ("key-ids-extension", {"key_IDs": [{"key_ID": ids[0], "key_ID_extension": {}}],
                                   "key_IDs_extension": {}})):
        put("etsi014", name, b"\x01" + compact(body).encode())


def v2_seeds():
    """v2_request: every request body of tests/vectors/protocol-v2.json and
    some refusals; v2_response: byte 0 the index of an accept case among the
    accept cases (as fuzz_v2_response.c counts them), then an answer body."""
    v2 = json.load(open(os.path.join(ROOT, "tests", "vectors", "protocol-v2.json")))
    for c in v2["cases"]:
        put("v2_request", c["name"], c["request_body"])
    ok = json.loads(v2["cases"][0]["request_body"])
    put("v2_request", "hand-suite", compact(dict(ok, suite="X25519")))
    put("v2_request", "hand-mode-4", compact(dict(ok, mode=4)))
    put("v2_request", "hand-req-not-object", compact(dict(ok, req="WzFd")))
    accepts = [c for c in v2["cases"] if c["expect"] == "accept"]
    for i, c in enumerate(accepts):
        put("v2_response", c["name"], bytes([i]) + c["response"]["body"].encode())
    for c in v2["cases"]:
        if c["expect"] == "reject":
            i = next(j for j, a in enumerate(accepts) if a["request_body"] == c["request_body"]) \
                if any(a["request_body"] == c["request_body"] for a in accepts) else 0
            put("v2_response", c["name"], bytes([i]) + c["response"]["body"].encode())


def cert_pem_seeds():
    import datetime
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
    pem = serialization.Encoding.PEM
    keys = [("p256", ec.generate_private_key(ec.SECP256R1()), hashes.SHA256()),
            ("ed25519", ed25519.Ed25519PrivateKey.generate(), None),
            ("rsa2048", rsa.generate_private_key(65537, 2048), hashes.SHA256()),
            ("p521", ec.generate_private_key(ec.SECP521R1()), hashes.SHA512())]
    for kname, k, algo in keys:
        for cn in ("FUZZ-DEV-1", "another"):
            csr = (x509.CertificateSigningRequestBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
                   .sign(k, algo))
            put("cert_pem", "csr-%s-%s" % (kname, cn), b"\x00" + csr.public_bytes(pem))
    k = keys[0][1]
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "seed")])
    start = datetime.datetime(2026, 1, 1)
    base = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(k.public_key()).not_valid_before(start)
            .not_valid_after(start + datetime.timedelta(days=36500)))
    client = (base.serial_number(1)
              .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False)
              .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False,
                                           False), True).sign(k, hashes.SHA256()))
    put("cert_pem", "cert-client", b"\x01" + client.public_bytes(pem))
    ca = (base.serial_number(2).add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
          .sign(k, hashes.SHA256()))
    put("cert_pem", "cert-ca", b"\x01" + ca.public_bytes(pem))


if __name__ == "__main__":
    main()
