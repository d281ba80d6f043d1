"""The README's quick start works when pasted: its "In another terminal"
block is taken from README.md as written and run with sh against a test
stack. Only what the README itself says may vary is set: the state
directory (QKMS_STATE), kmsd's address (KMS_ADDR, from QKMS_PORT), and the
binaries, which the block calls as build/release/bin/...: the test runs it
in a directory whose build/release/bin holds the binaries under test."""
import os
import re
import subprocess

import pytest

from conftest import KMSCTL, ROOT

QKMSDEV = os.environ.get("QKMS_DEVICE", os.path.join(ROOT, "build/asan/bin/qkms-device"))


def quick_start_block():
    with open(os.path.join(ROOT, "README.md")) as f:
        text = f.read()
    start = text.index("## Quick start")
    after = text.index("In another terminal", start)
    m = re.compile(r"```sh\n(.*?)```", re.S).search(text, after)
    assert m, "no sh block after 'In another terminal' in README.md"
    return m.group(1)


def test_quick_start_block_is_what_the_readme_shows():
    block = quick_start_block()
    cmds = [l for l in block.splitlines() if l.strip() and not l.lstrip().startswith("#")]
    assert len(cmds) >= 10
    # The block must only call binaries where the README says they are, and
    # reach kmsd only through KMS_ADDR (so a reader on another port can use it).
    for c in cmds:
        word = c.split()[0]
        assert word in ("export", "umask", "curl", "openssl") or word.startswith("build/release/bin/"), c
    assert "8470" not in "\n".join(cmds[1:]), "address hard-coded after the KMS_ADDR line"


def test_readme_quick_start_runs(stack, tmp_path):
    block = quick_start_block()
    bindir = tmp_path / "build" / "release" / "bin"
    bindir.mkdir(parents=True)
    os.symlink(KMSCTL, bindir / "kmsctl")
    os.symlink(QKMSDEV, bindir / "qkms-device")
    env = dict(stack.env, KMS_ADDR=stack.url)
    env.pop("KMS_TOKEN", None)
    env.pop("KMS_TOKEN_FILE", None)
    p = subprocess.run(["sh", "-e", "-c", block], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, f"exit {p.returncode}\nstdout:\n{p.stdout[-3000:]}\nstderr:\n{p.stderr[-3000:]}"
    out = p.stdout
    assert '"status":"ready"' in out.replace(" ", "")
    # The two parties printed the same key ID and key (the last two commands).
    keys = re.findall(r"(?m)^key_id: (\S+)\nkey: ([0-9a-f]+)$", out)
    assert len(keys) == 2, out[-2000:]
    assert keys[0] == keys[1] and len(keys[0][1]) == 32
    # What the README says the session is.
    r = stack.admin("GET", "/v1/admin/sessions/S-42").json()
    assert (r["initiator"], r["responder"], r["policy"], r["key_id"]) == (
        "VIN-0001", "ENC-01", "veh-enc", keys[0][0])
    # The fill documents it wrote are private (umask 077 in the block).
    for name in ("vin-0001.json", "enc-01.json", "station-key.pem"):
        assert os.stat(tmp_path / name).st_mode & 0o077 == 0
