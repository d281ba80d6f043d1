"""The operator's view (issue 21): every metric kmsd serves is documented
in docs/operations.md ("Metrics reference") with its type and labels,
labels take bounded values, promtool accepts /metrics, and the alert rules
in docker/prometheus/rules.yml pass their own tests (rules_test.yml)."""
import os
import re
import shutil
import subprocess

import pytest

from helpers import uid

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RULES = os.path.join(ROOT, "docker", "prometheus")
PROMTOOL = shutil.which("promtool")
# Label names whose values come from closed sets (route and check names,
# HTTP statuses, sources, states, reasons, master key versions). A device,
# session or key ID as a label would grow without bound.
BOUNDED = {"route", "status", "source", "test", "role", "state", "reason", "result", "stage",
           "event", "scope", "version", "check"}
needs_promtool = pytest.mark.skipif(PROMTOOL is None,
                                    reason="promtool (Debian: prometheus) is not installed")


def families(text):
    """{name: (type, {label names})} of a Prometheus text exposition."""
    out = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            name, typ = line[7:].split(" ", 1)
            out[name] = (typ, set())
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? ", line)
        assert m, line
        name = m.group(1)
        for suffix in ("_bucket", "_sum", "_count"):
            if name.endswith(suffix) and name[:-len(suffix)] in out:
                name = name[:-len(suffix)]
        assert name in out, f"{name} has no # TYPE line"
        out[name][1].update(k for k in re.findall(r'([a-zA-Z_]+)="', m.group(3) or "")
                            if k not in ("le", "quantile"))
    return out


def documented():
    """{name: (type, {label names})} of docs/operations.md's reference table."""
    text = open(os.path.join(ROOT, "docs", "operations.md")).read()
    section = text.split("## Metrics reference", 1)[1].split("\n## ", 1)[0]
    out = {}
    for m in re.finditer(r"^\| `(qkms_[a-z0-9_]+)` \| (\w+) \| ([^|]*) \|", section, re.M):
        out[m.group(1)] = (m.group(2), set(re.findall(r"`([a-z_]+)`", m.group(3))))
    return out


def test_every_metric_is_documented_with_bounded_labels(stack):
    # Some traffic first, so that labelled series exist.
    stack.admin("GET", "/v1/admin/devices?limit=1")
    stack.admin("GET", "/v1/admin/devices/" + uid("NOPE"))
    served = families(stack.admin("GET", "/metrics").text)
    docs = documented()
    assert len(served) > 50
    for name, (typ, labels) in served.items():
        assert name in docs, f"{name} is not in docs/operations.md, Metrics reference"
        assert docs[name] == (typ, labels), (name, docs[name], (typ, labels))
        assert labels <= BOUNDED, (name, labels - BOUNDED)
    assert not set(docs) - set(served), "documented but not served: %s" % (set(docs) - set(served))


@needs_promtool
def test_promtool_accepts_the_metrics(stack):
    text = stack.admin("GET", "/metrics").text
    p = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 0 and not p.stdout.strip() and not p.stderr.strip(), \
        p.stdout + p.stderr


@needs_promtool
def test_the_alert_rules_pass_their_tests():
    for args in (["check", "rules", "rules.yml"], ["test", "rules", "rules_test.yml"]):
        p = subprocess.run([PROMTOOL, *args], cwd=RULES, capture_output=True, text=True,
                           timeout=120)
        assert p.returncode == 0, p.stdout + p.stderr


@needs_promtool
def test_the_scrape_configuration_is_valid():
    """The compose stack's Prometheus configuration (its rule file included)
    as promtool reads it; the image build runs the same check."""
    p = subprocess.run([PROMTOOL, "check", "config", "prometheus.yml"], cwd=RULES,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "SUCCESS: 1 rule files found" in p.stdout, p.stdout
    conf = open(os.path.join(RULES, "prometheus.yml")).read()
    # The job the rules select on (up{job="qkms"}), on the metrics listener.
    assert re.search(r"job_name: qkms\n", conf) and '"kmsd:8472"' in conf, conf


def test_every_rule_is_tested_and_uses_served_metrics(stack):
    rules = open(os.path.join(RULES, "rules.yml")).read()
    tests = open(os.path.join(RULES, "rules_test.yml")).read()
    alerts = re.findall(r"^\s+- alert: (\w+)", rules, re.M)
    assert len(alerts) >= 20
    for a in alerts:
        assert re.search(rf"alertname: {a}\n\s+exp_alerts:\n\s+- exp_labels", tests), \
            f"{a} has no firing case in rules_test.yml"
    served = families(stack.admin("GET", "/metrics").text)
    used = set(re.findall(r"\b(qkms_[a-z0-9_]+)", rules))
    assert used <= set(served), used - set(served)
