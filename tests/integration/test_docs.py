"""Docs that are generated from code stay in step with it."""
import os
import subprocess

from conftest import KMSD, ROOT


def test_configuration_doc_matches_option_table():
    table = subprocess.run([KMSD, "--print-config-doc"], capture_output=True, text=True,
                           check=True).stdout
    with open(os.path.join(ROOT, "docs", "configuration.md")) as f:
        doc = f.read()
    assert table in doc, "docs/configuration.md is stale: regenerate with kmsd --print-config-doc"


def test_example_config_is_valid(tmp_path):
    pin = tmp_path / "pin"
    pin.write_text("1234\n")
    env = dict(os.environ, QKMS_PKCS11_PIN_FILE=str(pin))
    p = subprocess.run([KMSD, "-c", os.path.join(ROOT, "docs", "kmsd.conf.example"),
                        "--check-config"], env=env, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
