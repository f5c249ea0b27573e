"""Smoke test of ``python -m bench.isolate``: both ends run alone and report a rate."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_short_run_reports_both_ends():
    proc = subprocess.run(
        [sys.executable, "-m", "bench.isolate", "--count", "3000", "--reps", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    rates = dict(re.findall(r"^(\w+)\s+alone, 100 B: median ([\d,]+) msgs/s", proc.stdout, re.M))
    assert set(rates) == {"receiver", "sender"}, proc.stdout
    assert all(int(rate.replace(",", "")) > 0 for rate in rates.values())
