"""Running the real kmsctl binary in integration tests: one definition of
the helpers test_kmsctl*.py share (environment, exit codes, the admin-token
leak check, the --json error contract, local usage errors)."""
import datetime
import json
import re
import subprocess
import uuid

from conftest import KMSCTL

TS_FMT = "%Y-%m-%dT%H:%M:%SZ"
NOWHERE = "http://127.0.0.1:1"  # nothing listens: any connection attempt exits 3

# Exit codes (cli/exitcodes.h).
OK, USAGE, CONNECT, AUTH, SERVER, REFUSED = 0, 2, 3, 4, 5, 6

# Every token-lookup source kmsctl knows; removed so that a caller's shell
# cannot change what a test exercises.
TOKEN_ENV = ("KMS_TOKEN", "KMS_TOKEN_FILE")


def uid(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def run_raw(stack, *args, env=None, unset=(), cwd=None, umask=None, timeout=120):
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
    pre = None
    if umask is not None:
        def pre():
            import os
            os.umask(umask)
    p = subprocess.run([KMSCTL, *args], env=e, cwd=cwd, capture_output=True, text=True,
                       timeout=timeout, preexec_fn=pre)
    # A sanitizer report would make the output meaningless; say so plainly.
    assert "Sanitizer" not in p.stderr and "runtime error" not in p.stderr, p.stderr
    return p


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


def ok_json(stack, *args, **kw):
    # --json first: it must not follow a "--" in args.
    return json.loads(ok(stack, "--json", *args, **kw).stdout)


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


def ts(s):
    return datetime.datetime.strptime(s, TS_FMT).replace(tzinfo=datetime.timezone.utc)


def utcnow():
    return datetime.datetime.now(datetime.timezone.utc)


def near(t, expected, slack=datetime.timedelta(minutes=5)):
    return abs(t - expected) < slack


def kv_block(text_or_lines):
    """'key: value' lines (a kmsctl record block) into a dict."""
    lines = text_or_lines.splitlines() if isinstance(text_or_lines, str) else text_or_lines
    out = {}
    for line in lines:
        m = re.fullmatch(r"(\S+):\s+(.*)", line)
        assert m, f"not a 'key: value' line: {line!r}"
        assert m.group(1) not in out, f"repeated key {m.group(1)}"
        out[m.group(1)] = m.group(2)
    return out
