"""kmsctl end to end: the real CLI binary against the real kmsd (PostgreSQL +
SoftHSM), checking output, exit codes, token lookup and that the admin
token never leaks into error output."""
import datetime
import json
import re
import uuid

import pytest

from conftest import free_port
from helpers import (AUTH, CONNECT, NOWHERE, OK, REFUSED, USAGE, api_error_code, ok, run, run_raw,
                     ts, usage, utcnow)

TOKEN_RE = re.compile(r"qkms_[0-9a-f]{64}")


def uname(prefix="t"):
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def list_tokens(stack, name=None):
    toks = json.loads(ok(stack, "token", "list", "--json").stdout)["tokens"]
    return [t for t in toks if t["name"] == name] if name else toks


def create_json(stack, name, role="operator", *extra):
    p = ok(stack, "token", "create", name, "--role", role, "--json", *extra)
    return json.loads(p.stdout)


def write(path, text):
    with open(path, "w") as f:
        f.write(text)
    return path


# ---------------------------------------------------------------------------
# status


def test_status_human(stack):
    p = ok(stack, "status")
    assert p.stderr == ""
    kv = {}
    for line in p.stdout.splitlines():
        m = re.fullmatch(r"(\S+):\s+(.*)", line)
        assert m, f"not a 'key: value' line: {line!r}"
        kv[m.group(1)] = m.group(2)
    assert kv["master_key.label"] == "qkms-master-1"
    assert kv["master_key.version"] == "1"
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", kv["version"]), kv["version"]
    assert int(kv["schema_version"]) >= 1
    assert kv["token.label"] == "qkms"
    assert re.fullmatch(r"[0-9a-f]{64}", kv["config_hash"])
    # The same values the server reports over HTTP.
    s = stack.admin("GET", "/v1/admin/status").json()
    assert kv["version"] == s["version"]
    assert kv["config_hash"] == s["config_hash"]


def test_status_json(stack):
    p = ok(stack, "status", "--json")
    s = json.loads(p.stdout)
    assert s["master_key"]["label"] == "qkms-master-1"
    assert s["master_key"]["version"] == 1
    assert isinstance(s["schema_version"], int) and s["schema_version"] >= 1
    assert isinstance(s["version"], str) and s["version"]
    assert s["version"] == stack.admin("GET", "/v1/admin/status").json()["version"]
    # --json is a global option: accepted before the command word too.
    s2 = json.loads(ok(stack, "--json", "status").stdout)
    assert s2["master_key"] == s["master_key"]


# ---------------------------------------------------------------------------
# token lookup


def test_token_from_qkms_state(stack, tmp_path):
    # Run from an empty directory so the ./var/admin.token fallback cannot help.
    cwd = str(tmp_path)
    p = ok(stack, "status", "--json", cwd=cwd)
    assert json.loads(p.stdout)["master_key"]["label"] == "qkms-master-1"
    # Control: without QKMS_STATE there is no token at all, and nothing is sent.
    p = run(stack, "status", unset=("QKMS_STATE",), cwd=cwd)
    assert p.returncode == USAGE, p.stderr
    assert "no admin token" in p.stderr
    # And the file really is read: a state dir with a wrong token is refused.
    other = tmp_path / "state"
    other.mkdir()
    write(other / "admin.token", "qkms_" + "1" * 64 + "\n")
    p = run(stack, "status", env={"QKMS_STATE": str(other)}, cwd=cwd)
    assert p.returncode == AUTH, p.stderr


def test_token_file_option(stack, tmp_path):
    f = write(tmp_path / "tok", stack.admin_token + "\r\n  \n")  # trailing whitespace trimmed
    p = ok(stack, "--token-file", str(f), "status", "--json", unset=("QKMS_STATE",),
           cwd=str(tmp_path))
    assert json.loads(p.stdout)["master_key"]["label"] == "qkms-master-1"
    # --token-file comes before KMS_TOKEN and $QKMS_STATE/admin.token ...
    p = ok(stack, "status", "--token-file", str(f), env={"KMS_TOKEN": "qkms_" + "2" * 64})
    # ... and a bad --token-file is not silently replaced by them.
    bad = write(tmp_path / "bad", "qkms_" + "3" * 64)
    p = run(stack, "status", "--token-file", str(bad))
    assert p.returncode == AUTH, p.stderr
    # A missing file is a usage error naming the file; nothing is sent.
    missing = str(tmp_path / "missing")
    p = run(stack, "--addr", NOWHERE, "status", "--token-file", missing)
    assert p.returncode == USAGE, p.stderr
    assert missing in p.stderr


def test_token_env_precedence(stack, tmp_path):
    good = write(tmp_path / "good", stack.admin_token)
    bad = write(tmp_path / "bad", "qkms_" + "4" * 64)
    # KMS_TOKEN_FILE beats $QKMS_STATE/admin.token.
    assert run(stack, "status", env={"KMS_TOKEN_FILE": str(bad)}).returncode == AUTH
    assert run(stack, "status", env={"KMS_TOKEN_FILE": str(good)}, unset=("QKMS_STATE",),
               cwd=str(tmp_path)).returncode == OK
    # KMS_TOKEN beats KMS_TOKEN_FILE.
    assert run(stack, "status", env={"KMS_TOKEN": stack.admin_token,
                                     "KMS_TOKEN_FILE": str(bad)}).returncode == OK
    # --token beats KMS_TOKEN.
    assert run(stack, "status", "--token", "qkms_" + "5" * 64,
               env={"KMS_TOKEN": stack.admin_token}).returncode == AUTH
    # --token and --token-file together: usage error.
    p = run(stack, "--addr", NOWHERE, "status", "--token", stack.admin_token,
            "--token-file", str(good))
    assert p.returncode == USAGE, p.stderr


def test_wrong_token_exit_4(stack):
    p = run(stack, "status", env={"KMS_TOKEN": "qkms_" + "0" * 64})
    assert p.returncode == AUTH, p.stderr
    assert p.stdout == ""
    assert "unauthenticated" in p.stderr and "HTTP 401" in p.stderr
    p = run(stack, "status", "--json", "--token", "not-a-real-token")
    assert p.returncode == AUTH, p.stderr
    assert api_error_code(p) == "unauthenticated"


# ---------------------------------------------------------------------------
# token create / list / revoke


def test_create_operator_json_token_works_and_is_limited(stack):
    name = uname("op")
    c = create_json(stack, name, "operator")
    assert c["name"] == name and c["role"] == "operator"
    assert TOKEN_RE.fullmatch(c["token"]), c["token"]
    assert c["expires_at"] is None
    assert abs((ts(c["created_at"]) - utcnow()).total_seconds()) < 300
    tok = c["token"]
    r = stack.api("GET", "/v1/admin/status", token=tok)
    assert r.status_code == 200 and r.json()["master_key"]["label"] == "qkms-master-1"
    r = stack.api("GET", "/v1/admin/tokens", token=tok)
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
    # The same through kmsctl: status works, listing is refused with exit 4.
    ok(stack, "status", "--token", tok)
    p = run(stack, "token", "list", "--token", tok)
    assert p.returncode == AUTH and "forbidden" in p.stderr and "HTTP 403" in p.stderr
    assert p.stdout == ""
    # The secret is never listed, but its use is.
    (t,) = list_tokens(stack, name)
    assert tok not in json.dumps(t)
    assert t["last_used_at"] is not None


def test_create_human_prints_only_token_on_stdout(stack):
    name = uname("hu")
    p = ok(stack, "token", "create", name, "--role", "auditor")
    assert TOKEN_RE.fullmatch(p.stdout.rstrip("\n")), repr(p.stdout)
    assert p.stdout.count("\n") == 1
    tok = p.stdout.strip()
    assert tok not in p.stderr
    assert f"'{name}'" in p.stderr and "auditor" in p.stderr and "never" in p.stderr
    assert stack.api("GET", "/v1/admin/status", token=tok).status_code == 200
    (t,) = list_tokens(stack, name)
    assert t["role"] == "auditor" and t["state"] == "active"


def test_list_json_and_human(stack):
    name = uname("ls")
    create_json(stack, name, "operator")
    (t,) = list_tokens(stack, name)
    assert t["state"] == "active" and t["role"] == "operator"
    assert t["revoked_at"] is None and t["expires_at"] is None
    assert t["created_by"] == "bootstrap"
    assert set(t) >= {"name", "role", "state", "created_at", "expires_at", "last_used_at",
                      "revoked_at", "created_by"}
    p = ok(stack, "token", "list")
    lines = p.stdout.splitlines()
    assert lines[0].split() == ["NAME", "ROLE", "STATE", "CREATED", "EXPIRES", "LAST-USED",
                                "ACTS-FOR"]
    rows = [l.split() for l in lines[1:] if l.split()[0] == name]
    assert len(rows) == 1, p.stdout
    assert rows[0][:3] == [name, "operator", "active"]
    assert rows[0][3] == t["created_at"] and rows[0][4] == "-"
    # The bootstrap admin token is listed too, and no secret anywhere.
    assert any(l.split()[:3] == ["bootstrap", "admin", "active"] for l in lines[1:])
    assert not TOKEN_RE.search(p.stdout)


def test_revoke(stack):
    name = uname("rv")
    tok = create_json(stack, name)["token"]
    assert stack.api("GET", "/v1/admin/status", token=tok).status_code == 200
    p = ok(stack, "token", "revoke", name)
    assert re.fullmatch(rf"Revoked token '{re.escape(name)}' at \d{{4}}-\d\d-\d\dT\d\d:\d\d:\d\dZ\.\n",
                        p.stdout), p.stdout
    r = stack.api("GET", "/v1/admin/status", token=tok)
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthenticated"
    assert run(stack, "status", "--token", tok).returncode == AUTH
    (t,) = list_tokens(stack, name)
    assert t["state"] == "revoked" and t["revoked_at"] is not None
    p = ok(stack, "token", "list")
    rows = [l.split() for l in p.stdout.splitlines() if l.split()[0] == name]
    assert len(rows) == 1 and rows[0][2] == "revoked", p.stdout


def test_revoke_twice_exit_6(stack):
    name = uname("rv2")
    create_json(stack, name)
    ok(stack, "token", "revoke", name)
    p = run(stack, "token", "revoke", name)
    assert p.returncode == REFUSED, p.stderr
    assert "not_found" in p.stderr and "HTTP 404" in p.stderr
    p = run(stack, "token", "revoke", name, "--json")
    assert p.returncode == REFUSED
    assert api_error_code(p) == "not_found"
    # A name that never existed: same answer.
    p = run(stack, "token", "revoke", uname("never"), "--json")
    assert p.returncode == REFUSED and api_error_code(p) == "not_found"


def test_revoke_json(stack):
    name = uname("rvj")
    create_json(stack, name)
    body = json.loads(ok(stack, "token", "revoke", name, "--json").stdout)
    assert body["name"] == name
    assert abs((ts(body["revoked_at"]) - utcnow()).total_seconds()) < 300
    (t,) = list_tokens(stack, name)
    assert t["revoked_at"] == body["revoked_at"]


def test_name_reusable_after_revoke(stack):
    name = uname("re")
    old = create_json(stack, name)["token"]
    ok(stack, "token", "revoke", name)
    new = create_json(stack, name, "auditor")
    assert new["name"] == name and new["role"] == "auditor"
    assert new["token"] != old
    assert stack.api("GET", "/v1/admin/status", token=new["token"]).status_code == 200
    assert stack.api("GET", "/v1/admin/status", token=old).status_code == 401
    states = sorted(t["state"] for t in list_tokens(stack, name))
    assert states == ["active", "revoked"]
    # And revoking now hits the new live one.
    ok(stack, "token", "revoke", name)
    assert stack.api("GET", "/v1/admin/status", token=new["token"]).status_code == 401


def test_duplicate_live_name_conflict(stack):
    name = uname("dup")
    first = create_json(stack, name)["token"]
    p = run(stack, "token", "create", name, "--role", "operator")
    assert p.returncode == REFUSED, p.stderr
    assert p.stdout == ""  # no token printed on failure
    assert "conflict" in p.stderr and "HTTP 409" in p.stderr
    p = run(stack, "token", "create", name, "--role", "admin", "--json")
    assert p.returncode == REFUSED, p.stderr
    assert api_error_code(p) == "conflict"
    # The existing token is untouched and still the only one of that name.
    assert stack.api("GET", "/v1/admin/status", token=first).status_code == 200
    (t,) = list_tokens(stack, name)
    assert t["role"] == "operator" and t["state"] == "active"


def test_expires_in_days(stack):
    name = uname("exp")
    before = utcnow()
    c = create_json(stack, name, "auditor", "--expires-in-days", "30")
    assert c["expires_at"] is not None
    exp, created = ts(c["expires_at"]), ts(c["created_at"])
    assert abs((exp - created) - datetime.timedelta(days=30)) < datetime.timedelta(minutes=2)
    assert abs((exp - before) - datetime.timedelta(days=30)) < datetime.timedelta(minutes=5)
    (t,) = list_tokens(stack, name)
    assert t["expires_at"] == c["expires_at"] and t["state"] == "active"
    assert stack.api("GET", "/v1/admin/status", token=c["token"]).status_code == 200
    # Human output names the expiry on stderr and shows it in the table.
    name2 = uname("exph")
    p = ok(stack, "token", "create", name2, "--role", "auditor", "--expires-in-days=30")
    (t2,) = list_tokens(stack, name2)
    assert t2["expires_at"] in p.stderr
    row = [l.split() for l in ok(stack, "token", "list").stdout.splitlines()
           if l.split()[0] == name2]
    assert row[0][4] == t2["expires_at"]


# ---------------------------------------------------------------------------
# usage errors: exit 2 before any connection (NOWHERE would give exit 3)


def test_usage_unknown_command(stack):
    p = usage(stack, "frobnicate")
    assert "unknown command 'frobnicate'" in p.stderr
    p = usage(stack, "token", "frobnicate")
    assert "unknown token subcommand 'frobnicate'" in p.stderr


def test_usage_bad_role(stack):
    name = uname("role")
    for bad in ("root", "Admin", ""):
        p = usage(stack, "token", "create", name, "--role", bad)
        assert "--role must be admin, operator, auditor, crypto or release" in p.stderr, p.stderr
    p = usage(stack, "token", "create", name)  # --role is required
    assert "--role is required" in p.stderr
    # Nothing was created on the real server either.
    assert list_tokens(stack, name) == []


def test_usage_missing_name(stack):
    p = usage(stack, "token", "create", "--role", "operator")
    assert "missing argument" in p.stderr
    p = usage(stack, "token", "revoke")
    assert "missing argument" in p.stderr


def test_usage_other(stack):
    name = uname("use")
    for days in ("0", "3651", "30d", "-1", " 30"):
        p = usage(stack, "token", "create", name, "--role", "operator", "--expires-in-days", days)
        assert "--expires-in-days" in p.stderr
    usage(stack)  # no command
    usage(stack, "token")  # no subcommand
    usage(stack, "status", "extra")  # too many arguments
    usage(stack, "token", "create", name, "--role", "operator", "--bogus")
    usage(stack, "token", "create", "-bad", "--role", "operator")  # looks like an option
    usage(stack, "token", "revoke", "..")
    usage(stack, "status", "--timeout", "0")
    p = run(stack, "status", "--addr", "ftp://127.0.0.1:1")
    assert p.returncode == USAGE
    assert list_tokens(stack, name) == []


# ---------------------------------------------------------------------------
# transport


def test_connection_refused_exit_3(stack):
    addr = f"http://127.0.0.1:{free_port()}"  # bound then released: nothing listens
    p = run(stack, "--addr", addr, "status")
    assert p.returncode == CONNECT, p.stderr
    assert p.stdout == ""
    assert "cannot reach" in p.stderr and addr in p.stderr
    # KMS_ADDR is honoured the same way.
    p = run(stack, "token", "list", "--json", env={"KMS_ADDR": addr})
    assert p.returncode == CONNECT and p.stdout == ""


# ---------------------------------------------------------------------------
# names the server refuses


@pytest.mark.parametrize("bad", ["-bad", "a b", "a" * 65, ".hidden", "a/b/../c", "caf\u00e9"],
                         ids=["leading-dash", "space", "65-chars", "leading-dot", "slashes",
                              "non-ascii"])
def test_invalid_name_exit_6(stack, bad):
    # "--" so that "-bad" is taken as the NAME, not an option.
    p = run(stack, "token", "create", "--role", "operator", "--json", "--", bad)
    assert p.returncode == REFUSED, p.stderr
    assert api_error_code(p) == "invalid_name"
    assert "invalid_name" in p.stderr and "HTTP 422" in p.stderr
    assert not TOKEN_RE.search(p.stdout)
    assert list_tokens(stack, bad) == []


def test_name_64_chars_is_valid(stack):
    name = ("n" + uuid.uuid4().hex).ljust(64, "x")
    assert len(name) == 64
    c = create_json(stack, name)
    assert c["name"] == name
    ok(stack, "token", "revoke", name)


def test_revoke_invalid_name_exit_6(stack):
    for bad in ("a b", "-bad", "a" * 65):
        p = run(stack, "token", "revoke", "--json", "--", bad)
        assert p.returncode == REFUSED, p.stderr
        assert api_error_code(p) == "invalid_name"


# ---------------------------------------------------------------------------
# the admin token stays secret


def test_admin_token_not_in_stderr_on_failures(stack, tmp_path):
    """run() checks every invocation; this one exercises the failures most
    likely to echo a secret: the token mistyped into an option value, a
    positional argument, an unusable file, verbose mode, and every failing
    exit code with the token supplied each way kmsctl accepts it."""
    adm = stack.admin_token
    f = write(tmp_path / "admin", adm)
    junk = write(tmp_path / "junk", adm + " trailing words\n")
    refused = f"http://127.0.0.1:{free_port()}"
    name = uname("sec")
    create_json(stack, name)
    cases = [
        # usage errors
        (USAGE, ["status", f"--tokne={adm}"], {}),
        (USAGE, ["status", "--tokne", adm], {}),
        (USAGE, ["status", adm], {}),
        (USAGE, ["token", "create", name, "--role", adm], {}),
        (USAGE, ["token", "create", name, "--role", "admin", "--expires-in-days", adm], {}),
        (USAGE, ["status", "--timeout", adm], {}),
        (USAGE, ["status", "--addr", adm], {}),
        (USAGE, ["status", "--token", adm + " x"], {}),
        (USAGE, ["status", "--token-file", str(junk)], {}),
        (USAGE, ["status"], {"KMS_TOKEN": adm + "\n"}),
        (USAGE, ["status", "--token", adm, "--token-file", str(f)], {}),
        # transport
        (CONNECT, ["-v", "--addr", refused, "status", "--token", adm], {}),
        (CONNECT, ["--addr", refused, "token", "list", "--token-file", str(f)], {}),
        (CONNECT, ["--addr", refused, "status"], {"KMS_TOKEN": adm}),
        # server refusals, with verbose logging on
        (REFUSED, ["-v", "token", "create", name, "--role", "operator", "--token", adm], {}),
        (REFUSED, ["-v", "token", "revoke", uname("none"), "--token-file", str(f)], {}),
        (REFUSED, ["-v", "token", "create", adm, "--role", "admin"], {}),
        (USAGE, ["token", "revoke", adm, "--json"], {}),  # never put in a URL
        (REFUSED, ["-v", "token", "create", "--role", "admin", "--", "x" + adm], {}),
        # a wrong token, with the real one nearby
        (AUTH, ["-v", "status", "--token", adm[:-1] + ("0" if adm[-1] != "0" else "1")], {}),
    ]
    for code, args, env in cases:
        p = run(stack, *args, env=env)  # run() asserts the token is not on stderr
        assert p.returncode == code, f"kmsctl {args} -> {p.returncode}: {p.stderr}"
        assert adm not in p.stdout, p.stdout
        assert p.stderr.strip(), f"kmsctl {args} failed silently"


# Failure cases where a token typed in the wrong place would be echoed by a
# naive error message; kmsctl hides any word that looks like a token.
LEAKS = [
    pytest.param(["{adm}"], {}, USAGE, id="token-as-command-word"),
    pytest.param(["token", "{adm}"], {}, USAGE, id="token-as-subcommand"),
    pytest.param(["status", "--token-file", "{adm}"], {}, USAGE, id="token-as-token-file"),
    pytest.param(["status"], {"KMS_TOKEN_FILE": "{adm}"}, USAGE, id="token-in-KMS_TOKEN_FILE"),
    pytest.param(["status", "--cacert", "{adm}"], {}, USAGE, id="token-as-cacert"),
    pytest.param(["-v", "token", "revoke", "{adm}"], {}, USAGE, id="verbose-revoke-url"),
]


@pytest.mark.parametrize("args,env,code", LEAKS)
def test_admin_token_not_echoed_when_mistyped(stack, args, env, code):
    adm = stack.admin_token
    args = [a.format(adm=adm) for a in args]
    env = {k: v.format(adm=adm) for k, v in env.items()}
    p = run_raw(stack, *args, env=env)
    if p.returncode != code:
        raise RuntimeError(f"kmsctl exited {p.returncode}, expected {code}: {p.stderr}")
    assert adm not in p.stderr, "admin token echoed on stderr"


# ---------------------------------------------------------------------------
# created tokens never reach a log


def known_tokens_in(stack, text):
    """The tokens kmsd knows (their SHA-256 is in admin_tokens, live or
    revoked) that appear in text."""
    import hashlib
    found = set(TOKEN_RE.findall(text))
    if not found:
        return set()
    hashes = set(stack.psql("SELECT encode(token_hash, 'hex') FROM admin_tokens").split())
    return {t for t in found if hashlib.sha256(t.encode()).hexdigest() in hashes}


@pytest.fixture(scope="module", autouse=True)
def no_known_token_in_kmsd_log(stack):
    """After every test of this module: no token created in it (through the
    API or kmsctl), nor the bootstrap token, is in kmsd's log."""
    yield
    assert known_tokens_in(stack, stack.logs()) == set()


def test_created_tokens_only_on_stdout(stack):
    """Every way kmsctl creates a token prints it on stdout only, once; not
    on stderr (verbose included) and not in kmsd's log."""
    made = []
    for role in ("admin", "operator", "auditor"):
        for pre, post in (([], []), ([], ["--json"]), (["-v"], []), (["-v"], ["--json"])):
            args = (pre, post)
            p = ok(stack, *pre, "token", "create", uname("lg"), "--role", role, *post)
            toks = TOKEN_RE.findall(p.stdout)
            assert len(toks) == 1, (args, p.stdout)
            assert toks[0] not in p.stderr and not TOKEN_RE.search(p.stderr), (args, p.stderr)
            made.append(toks[0])
    # And through the API.
    for role in ("admin", "operator", "auditor"):
        r = stack.admin("POST", "/v1/admin/tokens", json={"name": uname("la"), "role": role})
        assert r.status_code == 201
        made.append(r.json()["token"])
    # Each works (so each is a real token) and none is in kmsd's log.
    for tok in made:
        assert stack.api("GET", "/v1/admin/status", token=tok).status_code == 200
    logs = stack.logs()
    assert [t for t in made if t in logs] == []
    assert known_tokens_in(stack, logs) == set()
    # The listing never shows one either.
    p = ok(stack, "token", "list", "--json")
    assert not TOKEN_RE.search(p.stdout) and not TOKEN_RE.search(p.stderr)


# -- shell completion (issue 21) -------------------------------------------------------------

def complete(script, *words):
    """What bash offers for the last of words (the word being completed)."""
    import subprocess
    line = " ".join("'%s'" % w for w in words)
    p = subprocess.run(["bash", "--norc", "-c", script + '\nCOMP_WORDS=(' + line + ')\n'
                        'COMP_CWORD=$((${#COMP_WORDS[@]} - 1))\n_kmsctl\n'
                        'printf "%s\\n" "${COMPREPLY[@]}"'],
                       capture_output=True, text=True, timeout=30, cwd="/")
    assert p.returncode == 0, p.stderr
    return p.stdout.split()


def test_completion_scripts(stack):
    p = run(stack, "completion", "bash", unset=("KMS_ADDR",))
    assert p.returncode == OK and p.stderr == "", p.stderr
    bash = p.stdout
    assert "complete -F _kmsctl kmsctl" in bash
    assert complete(bash, "kmsctl", "dev") == ["device", "device-type"]
    assert complete(bash, "kmsctl", "--addr", "http://x", "dev") == ["device", "device-type"]
    assert complete(bash, "kmsctl", "device", "reg") == ["register"]
    assert complete(bash, "kmsctl", "device", "register", "--ty") == ["--type"]
    assert complete(bash, "kmsctl", "events", "") == ["list", "replay", "remove-webhook"]
    assert "--json" in complete(bash, "kmsctl", "status", "--")
    assert complete(bash, "kmsctl", "--token-file", "/et") == ["/etc"]  # a file option
    # Every command of `kmsctl --help` is offered.
    words = complete(bash, "kmsctl", "")
    listed = re.findall(r"^  ([a-z][a-z-]+) ", run(stack, "--help").stdout, re.M)
    assert listed and set(listed) <= set(words), (listed, words)
    p = run(stack, "completion", "zsh")
    assert p.returncode == OK and p.stdout.startswith("#compdef kmsctl\n") and "_kmsctl" in p.stdout
    p = run(stack, "completion", "fish")
    assert p.returncode == USAGE and "bash or zsh" in p.stderr
