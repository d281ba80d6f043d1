"""bench/plot.py (issue 21): the picture `make bench` draws of its session
runs (deliveries/s and p99 against concurrency), here from lines of the
shape bench/run.sh writes, so a change of either is caught without a
minutes-long benchmark."""
import os
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

from conftest import ROOT

PLOT = os.path.join(ROOT, "bench", "plot.py")
RUNS = """# kmsd benchmark: 2 cores, 5s per run
name=deliveries conc=1 sessions=3150 deliveries=6300 requests=6300 errors=0 key_mismatches=0 sessions_per_s=630 deliveries_per_s=1261 requests_per_s=1261 p50_ms=0.750 p99_ms=1.200
cpu conc=1 kmsd_us_per_delivery=240 postgres_us_per_delivery=520 cores_busy_kmsd=0.30 cores_busy_postgres=0.66
name=deliveries conc=16 sessions=5642 deliveries=11285 requests=11285 errors=0 key_mismatches=0 sessions_per_s=1128 deliveries_per_s=2257 requests_per_s=2257 p50_ms=6.200 p99_ms=18.982
name=deliveries conc=64 sessions=5560 deliveries=11120 requests=11120 errors=0 key_mismatches=0 sessions_per_s=1112 deliveries_per_s=2224 requests_per_s=2224 p50_ms=27.000 p99_ms=69.100
name=sessions conc=16 sessions=4505 deliveries=9010 requests=13515 errors=0 key_mismatches=0 sessions_per_s=901 deliveries_per_s=1802 requests_per_s=2703 p50_ms=6.000 p99_ms=16.900
stages_us: parse=12 db=400
name=pg_floor conc=16 tps=21333
"""

try:
    import matplotlib  # noqa: F401
    HAVE_MPL = True
except ImportError:
    HAVE_MPL = False


def plot(tmp_path, text, *extra):
    src = tmp_path / "sessions.txt"
    src.write_text(text)
    out = tmp_path / "sessions.svg"
    p = subprocess.run([sys.executable, PLOT, str(src), str(out), *extra], capture_output=True,
                       text=True, timeout=120)
    return p, out


@pytest.mark.skipif(not HAVE_MPL, reason="python3-matplotlib is not installed")
def test_the_plot_shows_the_runs(tmp_path):
    p, out = plot(tmp_path, RUNS, "kmsd session keys: test")
    assert p.returncode == 0 and p.stderr == "", p.stderr
    svg = out.read_text()
    root = ET.fromstring(svg)
    assert root.tag.endswith("svg")
    texts = {t.text for t in root.iter() if t.tag.endswith("text") and t.text}
    # Each run's point carries its value; the axes say what they are.
    for v in ("1,261", "2,257", "2,224", "901", "1.2", "19.0", "69.1", "16.9"):
        assert v in texts, (v, sorted(texts))
    for label in ("concurrent clients", "p99 latency (ms)", "throughput"):
        assert label in texts, label
    assert any("21,333/s at 16" in t for t in texts), texts
    assert any(t == "kmsd session keys: test" for t in texts)
    # The same runs and title give the same file (no date in the metadata,
    # stable ids): the picture in docs/ changes only with another run.
    first = svg
    p, out = plot(tmp_path, RUNS, "kmsd session keys: test")
    assert out.read_text() == first


def test_no_runs_no_picture(tmp_path):
    p, out = plot(tmp_path, "# nothing here\nname=pg_floor conc=16 tps=1\n")
    assert p.returncode == 1 and "no session runs" in p.stderr and not out.exists()
    p = subprocess.run([sys.executable, PLOT], capture_output=True, text=True, timeout=60)
    assert p.returncode == 2


def test_the_picture_in_the_docs_is_a_real_run():
    """docs/performance.md shows a plot that make bench drew on this project's
    machine (its title names the run), and the headline of that run, which
    the page quotes, is in the picture: the best deliveries/s as a point."""
    import re

    doc = open(os.path.join(ROOT, "docs", "performance.md")).read()
    assert "](img/bench-sessions.svg)" in doc
    section = doc.split("## The picture", 1)[1].split("\n## ", 1)[0]
    dps = int(re.search(r"deliveries_per_s=(\d+) p99_ms=", section).group(1))
    svg = open(os.path.join(ROOT, "docs", "img", "bench-sessions.svg")).read()
    root = ET.fromstring(svg)
    texts = [t.text for t in root.iter() if t.tag.endswith("text") and t.text]
    assert any(t.startswith("kmsd session keys: 2 cores, 5 s per run, ") for t in texts), texts
    assert f"{dps:,}" in texts, (dps, texts)
