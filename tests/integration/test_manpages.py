"""The manual pages (issue 21): kmsctl(1), kmsd(8) and qkms-device(1) are
made by the binaries themselves (`kmsctl --man`, `kmsd --print-man`,
`qkms-device --man`) from the tables and texts their --help prints, and
`make install` installs them. Here: each renders with `man -l` without a
single warning, and says everything --help and the option table say."""
import os
import re
import shutil
import subprocess

import pytest

from conftest import KMSCTL, KMSD, ROOT

QKMS_DEVICE = os.environ.get("QKMS_DEVICE", os.path.join(ROOT, "build/asan/bin/qkms-device"))
MAN = shutil.which("man")
needs_man = pytest.mark.skipif(MAN is None, reason="man (Debian: man-db) is not installed")


def page(cmd):
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and p.stderr == "", p.stderr
    assert p.stdout.startswith('.nr HY 0\n.TH "'), p.stdout[:200]
    return p.stdout


def render(tmp_path, name, roff):
    """What `man -l` shows on an 80-column terminal; no warning allowed."""
    f = tmp_path / name
    f.write_text(roff)
    env = dict(os.environ, MANWIDTH="80", MAN_KEEP_FORMATTING="0", LANG="C.UTF-8")
    p = subprocess.run([MAN, "--warnings=all", "-l", str(f)], capture_output=True, text=True,
                       timeout=60, env=env)
    assert p.returncode == 0 and p.stderr == "", p.stderr
    # man pipes through col -b when not on a terminal; strip any overstrike left.
    text = re.sub(r".\x08", "", p.stdout)
    # The pages ask for no hyphenation (.nh): a word is never split, so
    # what is compared is the text on single spaces.
    assert "\u2010" not in text
    return re.sub(r"\s+", " ", text)


def flat(s):
    return re.sub(r"\s+", " ", s).strip()


@needs_man
def test_kmsctl_manual(tmp_path):
    text = render(tmp_path, "kmsctl.1", page([KMSCTL, "--man"]))
    assert text.startswith("KMSCTL(1) qkms manual KMSCTL(1) NAME kmsctl - admin CLI"), text[:200]
    help_text = subprocess.run([KMSCTL, "--help"], capture_output=True, text=True).stdout
    # Every command's every action, with its summary and its options.
    for cmd in re.findall(r"^  ([a-z][a-z-]+) ", help_text, re.M):
        out = subprocess.run([KMSCTL, cmd, "--help"], capture_output=True, text=True).stdout
        subs = re.findall(r"^  ([a-z][a-z-]+)(?: |$)", out.split("Subcommands:")[-1], re.M) \
            if "Subcommands:" in out else [None]
        for sub in subs:
            words = [KMSCTL, cmd] + ([sub] if sub else []) + ["--help"]
            act = subprocess.run(words, capture_output=True, text=True).stdout
            usage = act.splitlines()[0].removeprefix("Usage: ")
            assert flat(usage) in text, usage
            summary = act.split("\n\n")[1]
            assert flat(summary) in text, summary
            for opt in re.findall(r"^  (?:-\w, )?(--[a-z-]+)", act.split("Options:")[-1], re.M) \
                    if "Options:" in act else []:
                assert opt in text, (usage, opt)
    for line in ("3 cannot connect, timeout, or TLS failure", "--token-file FILE",
                 "./var/admin.token", "--man print this manual"):
        assert line in text, line


@needs_man
def test_kmsd_manual(tmp_path):
    text = render(tmp_path, "kmsd.8", page([KMSD, "--print-man"]))
    assert text.startswith("KMSD(8) qkms manual KMSD(8) NAME kmsd - the qkms"), text[:200]
    table = subprocess.run([KMSD, "--print-config-doc"], capture_output=True, text=True).stdout
    names = re.findall(r"^\| `([a-z0-9_]+)` \| (\w+) \| ([^|]*) \|", table, re.M)
    assert len(names) > 80
    for name, typ, default in names:
        default = "unset" if default.strip() == "(unset)" else default.strip()
        assert f"{name} ({typ}; default {default}" in text, name
    usage = subprocess.run([KMSD, "--help"], capture_output=True, text=True).stdout
    for opt in re.findall(r"(--[a-z-]+)", usage):
        assert opt in text, opt
    assert "SIGHUP" in text and "QKMS_<OPTION>" in text
    # Identifiers copy as written (no hyphen breaks inside them).
    assert "admin_listen_addr (string; default unset; restart)" in text


@needs_man
def test_qkms_device_manual(tmp_path):
    text = render(tmp_path, "qkms-device.1", page([QKMS_DEVICE, "--man"]))
    assert text.startswith("QKMS-DEVICE(1) qkms manual QKMS-DEVICE(1) NAME qkms-device"), \
        text[:200]
    usage = subprocess.run([QKMS_DEVICE, "--help"], capture_output=True, text=True).stdout
    # The option block of --help, line by line, as it is, and the exit
    # status in a section of its own.
    options, exits = usage.split("\n\n", 1)[1].split("\nExit status: ")
    for line in options.splitlines():
        if line.strip():
            assert flat(line) in text, line
    assert "EXIT STATUS " + flat(exits) in text


def test_make_install_installs_the_manual(tmp_path):
    """`make install` puts the three pages where man finds them."""
    dest = tmp_path / "root"
    build = os.path.dirname(os.path.dirname(KMSCTL))  # build/asan
    # Not the make that runs these tests: its jobserver and variables stay out.
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    p = subprocess.run(["make", "-s", "install", f"DESTDIR={dest}", "PREFIX=/usr/local",
                        f"SANITIZE={'address,undefined' if build.endswith('asan') else ''}"],
                       cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert p.returncode == 0, p.stdout + p.stderr
    man = dest / "usr/local/share/man"
    for f, cmd in (("man1/kmsctl.1", [KMSCTL, "--man"]), ("man1/qkms-device.1",
                   [QKMS_DEVICE, "--man"]), ("man8/kmsd.8", [KMSD, "--print-man"])):
        assert (man / f).read_text() == page(cmd), f
        assert oct((man / f).stat().st_mode & 0o777) == "0o644"
