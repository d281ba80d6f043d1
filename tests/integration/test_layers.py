"""kmsd's layout tells its architecture (docs/architecture.md): the layers'
include arrows run one way with no import circle (tools/check-layers.py),
the service layer links without libmicrohttpd (test_service_units.py checks
the binaries), and every module is named in docs/architecture.md."""
import os
import re
import subprocess
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
CHECK = os.path.join(ROOT, "tools", "check-layers.py")


def run_check(*args):
    return subprocess.run([sys.executable, CHECK, *args], capture_output=True, text=True)


def test_layers_hold():
    p = run_check()
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout == ""


def write(tree, path, text):
    full = os.path.join(tree, path)
    os.makedirs(os.path.dirname(full), exist_ok=True)
    with open(full, "w") as f:
        f.write(text)


def test_check_finds_what_it_forbids(tmp_path):
    tree = str(tmp_path)
    write(tree, "kmsd/log.h", "")
    write(tree, "kmsd/api/door.c", '#include "service/svc.h"\n#include <microhttpd.h>\n')
    write(tree, "kmsd/service/svc.h", "")
    write(tree, "kmsd/service/svc.c", '#include "service/svc.h"\n#include "log.h"\n')
    assert run_check("--root", tree).returncode == 0
    # upward include, HTTP in the service layer, a circle
    write(tree, "kmsd/service/up.c", '#include "api/door.h"\n#include <microhttpd.h>\n')
    write(tree, "kmsd/api/door.h", "")
    write(tree, "kmsd/store/a.h", '#include "store/b.h"\n')
    write(tree, "kmsd/store/b.h", '#include "store/a.h"\n')
    write(tree, "kmsd/store/c.c", '#include "entropy/e.h"\n')
    write(tree, "kmsd/entropy/e.h", "")
    p = run_check("--root", tree)
    assert p.returncode == 1
    out = p.stdout
    assert "service includes api (api/door.h)" in out
    assert "kmsd/service/up.c: includes <microhttpd.h> outside kmsd/api/" in out
    assert "import circle among: store/a store/b" in out
    assert "store includes entropy" in out


def test_architecture_names_every_module():
    with open(os.path.join(ROOT, "docs", "architecture.md")) as f:
        doc = f.read()
    missing = []
    for d, _, files in os.walk(os.path.join(ROOT, "kmsd")):
        for f in files:
            if not f.endswith((".c", ".h")):
                continue
            rel = os.path.relpath(os.path.join(d, f), ROOT)
            mod = rel[:-2]
            # named as kmsd/x/mod.c, kmsd/x/mod.[ch] or kmsd/x/mod.h
            if not re.search(re.escape(mod) + r"\.(\[ch\]|c|h)(?!\w)", doc):
                missing.append(rel)
    assert not missing, f"docs/architecture.md does not name: {sorted(set(missing))}"
