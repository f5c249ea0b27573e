"""Smoke test of the long fuzz run, ``python -m bench.fuzz``: it runs, counts, and reports failures."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench import fuzz  # noqa: E402


def test_short_run_prints_counts():
    proc = subprocess.run(
        [sys.executable, "-m", "bench.fuzz", "--only", "codec_depth,parse_hello", "--examples", "30"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    rows = {line.split()[0]: line.split() for line in proc.stdout.splitlines() if line.strip()}
    assert rows["codec_depth"][1] == "30" and rows["codec_depth"][-1] == "ok"
    assert rows["parse_hello"][1] == "30" and rows["total"][1] == "60"


def test_every_ci_target_is_fuzzed():
    assert set(fuzz.load_targets()) >= {
        "frames_round_trip",
        "frames_hostile",
        "protocol_handshake",
        "codec_round_trip",
        "codec_hostile",
    }


def test_a_failing_property_is_reported():
    def check(n):
        assert n < 50

    target = type("T", (), {"strategy": st.integers(0, 100), "check": staticmethod(check)})
    tried, _, result = fuzz.fuzz(target, examples=500, seconds=None, batch=100)
    assert result.startswith("FAILED: AssertionError")
    assert 0 < tried <= 500
