"""Helpers shared by the integration test modules (conftest.py has the Stack
and its fixtures):

 - ids and kmsctl's timestamps;
 - running the real kmsctl binary and checking what it prints: no sanitizer
   report and no admin token in its output, whatever the outcome; the exit
   code and the error shape of a usage error or a refusal;
 - a second kmsd over a Stack's PostgreSQL and token (SecondKmsd);
 - playing devices over HTTP with the independent Python protocol client
   (qkms_proto_py): registering one and opening its plaintext fill, sending
   its requests, pairing vehicles with encryptors.

conftest.py registers this module for pytest's assertion rewriting, so a
failing assert here says as much as one in a test module.
"""
import datetime
import ipaddress
import json
import os
import re
import subprocess
import uuid

import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from conftest import KMSCTL, KMSD, free_port, running_stack, wait_readyz
from qkms_proto_py import Device

TS_FMT = "%Y-%m-%dT%H:%M:%SZ"
NOWHERE = "http://127.0.0.1:1"  # nothing listens: any connection attempt exits 3

# Exit codes (cli/exitcodes.h).
OK, USAGE, CONNECT, AUTH, SERVER, REFUSED = 0, 2, 3, 4, 5, 6

# Every token-lookup source kmsctl knows; removed so that a caller's shell
# cannot change what a test exercises.
TOKEN_ENV = ("KMS_TOKEN", "KMS_TOKEN_FILE")


# ---------------------------------------------------------------------------
# ids and times


def uid(prefix="S"):
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def ts(s):
    return datetime.datetime.strptime(s, TS_FMT).replace(tzinfo=datetime.timezone.utc)


def utcnow():
    return datetime.datetime.now(datetime.timezone.utc)


def near(t, expected, slack=datetime.timedelta(minutes=5)):
    return abs(t - expected) < slack


# ---------------------------------------------------------------------------
# kmsctl


def run_raw(stack, *args, env=None, unset=(), cwd=None, umask=None):
    """Runs kmsctl with the stack's environment minus any token variables
    (the admin token then comes from $QKMS_STATE/admin.token), plus `env`,
    minus `unset`. `umask` (for file-writing commands) is set in the child."""
    e = dict(stack.env)
    for k in TOKEN_ENV:
        e.pop(k, None)
    e["KMS_ADDR"] = stack.url
    e.update(env or {})
    for k in unset:
        e.pop(k, None)
    pre = (lambda: os.umask(umask)) if umask is not None else None
    # 120 s: fills and imports of many devices are slow under the sanitizers.
    p = subprocess.run([KMSCTL, *args], env=e, cwd=cwd, capture_output=True, text=True,
                       timeout=120, preexec_fn=pre)
    # A sanitizer report would make the output meaningless; say so plainly.
    assert "Sanitizer" not in p.stderr and "runtime error" not in p.stderr, p.stderr
    return p


def run_on_tty(cmd, env, timeout=120):
    """Runs cmd with stderr on a pseudo-terminal and stdout on a pipe (what
    a person at a terminal sees on stderr, a script on stdout): (returncode,
    stdout text, the terminal's text)."""
    import pty
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=slave)
        os.close(slave)
        out = proc.communicate(timeout=timeout)[0]
        tty = b""
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO once the child's side is closed
                break
            if not chunk:
                break
            tty += chunk
    finally:
        os.close(master)
    return proc.returncode, out.decode(), tty.decode()


def run(stack, *args, **kw):
    """run_raw, checking that the admin token shows neither on stderr nor
    on stdout, whatever the outcome."""
    p = run_raw(stack, *args, **kw)
    assert stack.admin_token not in p.stderr, f"admin token leaked on stderr of kmsctl {args}"
    assert stack.admin_token not in p.stdout, f"admin token leaked on stdout of kmsctl {args}"
    return p


def ok(stack, *args, **kw):
    p = run(stack, *args, **kw)
    assert p.returncode == OK, f"kmsctl {args} -> {p.returncode}\nstdout: {p.stdout}\nstderr: {p.stderr}"
    return p


def api_error_code(p):
    """The error code of a --json failure, which kmsctl prints on stdout."""
    body = json.loads(p.stdout)
    assert set(body["error"]) >= {"code", "message"}, body
    return body["error"]["code"]


def refused(stack, code, *args, status=None, **kw):
    """Runs args with --json; expects exit 6 with the API error `code` as
    the JSON on stdout, and the same code (and HTTP status) on stderr; then
    the same without --json: nothing on stdout, "(code, HTTP status)" on
    stderr."""
    p = run(stack, *args, "--json", **kw)
    assert p.returncode == REFUSED, f"kmsctl {args} -> {p.returncode}\nstdout: {p.stdout}\nstderr: {p.stderr}"
    assert api_error_code(p) == code, p.stdout
    assert p.stderr.startswith("kmsctl: ") and code in p.stderr, p.stderr
    if status is not None:
        assert f"HTTP {status}" in p.stderr, p.stderr
    h = run(stack, *args, **kw)
    assert h.returncode == REFUSED and h.stdout == "", (h.stdout, h.stderr)
    assert f"({code}, HTTP {status})" in h.stderr if status else code in h.stderr, h.stderr
    return p


def usage(stack, *args, **kw):
    """A local usage error: exit 2 before any connection (NOWHERE would
    give exit 3), nothing on stdout."""
    p = run(stack, "--addr", NOWHERE, *args, **kw)
    assert p.returncode == USAGE, f"kmsctl {args} -> {p.returncode}: {p.stderr}"
    assert p.stdout == "", p.stdout
    assert "cannot reach" not in p.stderr, p.stderr
    assert p.stderr.startswith("kmsctl: "), p.stderr
    return p


def _lines(text_or_lines):
    return text_or_lines.splitlines() if isinstance(text_or_lines, str) else text_or_lines


def kv_block(lines):
    """'key: value' lines (a kmsctl record block: a list of lines, or the
    text) into a dict."""
    out = {}
    for line in _lines(lines):
        m = re.fullmatch(r"(\S+):\s+(.*)", line)
        assert m, f"not a 'key: value' line: {line!r}"
        assert m.group(1) not in out, f"repeated key {m.group(1)}"
        out[m.group(1)] = m.group(2)
    return out


def table(lines):
    """A kmsctl table (header + rows; cells hold no spaces; a list of lines,
    or the text) into rows of cells."""
    return [line.split() for line in _lines(lines)]


def human(v):
    """A JSON value as kmsctl prints it in a table or record."""
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, dict)):
        return json.dumps(v, separators=(",", ":"))
    return str(v)


# ---------------------------------------------------------------------------
# devices over HTTP, played by the Python protocol client


def make_device(st, type_, group=None, **body):
    """Registers a device of type_ (in group, with the other registration
    fields in body) and returns it as a Device from its plaintext fill."""
    did = uid(type_[:3].upper())
    reg = {"device_id": did, "type": type_, **body}
    if group is not None:
        reg["group"] = group
    r = st.admin("POST", "/v1/admin/devices", json=reg)
    assert r.status_code == 201, r.text
    r = st.admin("POST", f"/v1/admin/devices/{did}/fill", json={"plaintext": True})
    assert r.status_code == 200, r.text
    return Device.from_fill(r.json()["plaintext"])


def post(server, req, raw=None):
    """Sends a device request (or `raw` bytes in its place) to server (a
    Stack, or anything else with a .url)."""
    return requests.post(server.url + req.path, data=raw if raw is not None else req.raw,
                         headers={"Content-Type": "application/json"}, timeout=30)


def ask_key(server, dev, sid, peer, **kw):
    """dev's key request for session sid with peer, and the raw answer."""
    req = dev.key_request(sid, peer.device_id, **kw)
    return req, post(server, req)


def get_key(server, dev, sid, peer, **kw):
    """The session key dev is given (the request must succeed)."""
    req, r = ask_key(server, dev, sid, peer, **kw)
    assert r.status_code == 200, r.text
    return dev.open_key_response(req, r.json())


def error_code(r):
    return r.json()["error"]["code"]


def try_key(server, dev, sid, peer):
    """(200, key), (status, error code), or ("conn", None) when server is
    not reachable: for tests that expect failures among the answers."""
    try:
        req, r = ask_key(server, dev, sid, peer)
    except requests.ConnectionError:
        return "conn", None
    if r.status_code != 200:
        return r.status_code, error_code(r)
    return 200, dev.open_key_response(req, r.json())


def veh_enc_stack(name, extra_env):
    """A started Stack with a device group of its own (st.group) and the
    policy "veh-enc" pairing vehicles with encryptors."""
    st = running_stack(name, extra_env)
    try:
        st.group = "g-" + uuid.uuid4().hex[:6]
        r = st.admin("POST", "/v1/admin/policies", json={
            "name": "veh-enc", "type_a": "vehicle", "type_b": "encryptor"})
        assert r.status_code == 201, r.text
    except BaseException:
        st.destroy()
        raise
    return st


class SecondKmsd:
    """Another kmsd over the same PostgreSQL and token."""

    def __init__(self, st, extra_env=None, ready_url=None):
        """ready_url: where /readyz answers plain HTTP when the device
        listener speaks TLS (the admin listener's base URL)."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = dict(st.env, QKMS_LISTEN_PORT=str(self.port), **(extra_env or {}))
        self.log = open(os.path.join(st.state, f"kmsd-{self.port}.log"), "wb")
        self.proc = subprocess.Popen([KMSD, "-c", st.conf], env=env, stdout=self.log, stderr=self.log)
        if not wait_readyz(ready_url or self.url, 30):
            raise RuntimeError("second kmsd not ready")

    def stop(self):
        self.proc.terminate()
        rc = self.proc.wait(timeout=30)
        self.log.close()
        return rc


# ---------------------------------------------------------------------------
# certificates for the TLS tests (test_mtls.py, test_admin_certs.py)

PEM = serialization.Encoding.PEM


def _now():
    return datetime.datetime.now(datetime.timezone.utc)


def key_pem(key):
    return key.private_bytes(PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def self_signed_server(tmp):
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(_now() - datetime.timedelta(minutes=1))
            .not_valid_after(_now() + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .sign(key, hashes.SHA256()))
    crt, kf = os.path.join(tmp, "server.crt"), os.path.join(tmp, "server.key")
    with open(crt, "wb") as f:
        f.write(cert.public_bytes(PEM))
    with open(kf, "wb") as f:
        f.write(key_pem(key))
    return crt, kf, cert


class OtherCA:
    """A CA outside qkms whose certificates are bound to devices."""

    def __init__(self, tmp):
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Fleet CA " + uid())])
        self.cert = (x509.CertificateBuilder().subject_name(self.name).issuer_name(self.name)
                     .public_key(self.key.public_key())
                     .serial_number(x509.random_serial_number())
                     .not_valid_before(_now() - datetime.timedelta(minutes=5))
                     .not_valid_after(_now() + datetime.timedelta(days=30))
                     .add_extension(x509.BasicConstraints(ca=True, path_length=0), True)
                     .add_extension(x509.KeyUsage(False, False, False, False, False, True, True,
                                                  False, False), True)
                     .sign(self.key, hashes.SHA256()))
        self.ca_file = os.path.join(tmp, "fleet-ca.pem")
        self.crl_file = os.path.join(tmp, "fleet-crl.pem")
        with open(self.ca_file, "wb") as f:
            f.write(self.cert.public_bytes(PEM))
        self.revoked = []
        self.write_crl()

    def issue(self, cn, not_after=None):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
                .issuer_name(self.name).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(_now() - datetime.timedelta(minutes=1))
                .not_valid_after(not_after or _now() + datetime.timedelta(days=10))
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False)
                .add_extension(x509.KeyUsage(True, False, False, False, False, False, False,
                                             False, False), True)
                .sign(self.key, hashes.SHA256()))
        return cert, key

    def write_crl(self):
        now = datetime.datetime.now(datetime.timezone.utc)
        b = (x509.CertificateRevocationListBuilder().issuer_name(self.name)
             .last_update(now - datetime.timedelta(minutes=1))
             .next_update(now + datetime.timedelta(days=1)))
        for serial in self.revoked:
            b = b.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(serial)
                .revocation_date(now - datetime.timedelta(seconds=30)).build())
        crl = b.sign(self.key, hashes.SHA256())
        tmp = self.crl_file + ".new"
        with open(tmp, "wb") as f:
            f.write(crl.public_bytes(PEM))
        os.replace(tmp, self.crl_file)
