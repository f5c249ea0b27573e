"""Smoke test of the benchmark suite: ``python -m bench --quick --stacks ours``.

Runs every measurement once with small counts, for our stack only (no
download of the original, no pyzmq needed), and checks the JSON it writes.
Speeds are not asserted: the machine may be busy.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

EXPECTED = {
    "oneway_100B": ["msgs_per_s"],
    "oneway_1MiB": ["MB_per_s"],
    "oneway_16MiB": ["MB_per_s"],
    "reqrep_100B": ["median_us", "p99_us"],
    "pingpong_100B": ["median_us", "p99_us"],
    "flood": ["rss_peak_MB", "dropped"],
    "oneway_100B_ipc": ["msgs_per_s"],
    "oneway_1MiB_ipc": ["MB_per_s"],
    "pingpong_100B_ipc": ["median_us", "p99_us"],
    "inproc_oneway_100B": ["msgs_per_s"],
    "inproc_pingpong_100B": ["median_us", "p99_us"],
}
ONE_WAY = ("oneway_100B", "oneway_1MiB", "oneway_16MiB", "oneway_100B_ipc", "oneway_1MiB_ipc", "inproc_oneway_100B")


def test_quick_run_of_our_stack(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--stacks", "ours", "--profile", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    doc = json.loads(out.read_text())

    assert doc["meta"]["stacks"] == ["ours"]
    assert doc["problems"] == []
    assert set(EXPECTED) <= set(doc["results"])
    for mid, metrics in EXPECTED.items():
        ours = doc["results"][mid]["stacks"]["ours"]
        assert ours["errors"] == 0, (mid, ours)
        assert ours["ok"], (mid, ours)
        for key in metrics:
            assert isinstance(ours[key], (int, float)), (mid, key, ours)
        for run in ours["runs"]:
            assert run["client"]["module"].startswith(str(ROOT / "src")), run["client"]["module"]
    # ipc rows are shown against our TCP rows; the in-process ones get a table of their own
    assert "ipc/tcp" in doc["table"] and "In one process" in doc["table"]

    for mid in ONE_WAY:
        ours = doc["results"][mid]["stacks"]["ours"]
        assert ours["sent"] and ours["received"] == ours["sent"], (mid, ours["sent"], ours["received"])
        for run in ours["runs"]:
            assert run["sent"] > 0 and run["received"] == run["sent"] == run["end_count"]

    flood = doc["results"]["flood"]["stacks"]["ours"]
    for run in flood["runs"]:
        assert run["received"] + run["dropped"] == run["sent"]
        assert run["discarded"] == run["dropped"]  # every loss is a counted queue discard
        assert run["rss_peak_MB"] > 0

    for name in ("oneway_100B-receiver", "oneway_100B-sender", "reqrep_100B-requester"):
        prof = doc["profiles"][name]
        assert prof["tottime"] and prof["cumulative"]
        assert {"ncalls", "tottime", "cumtime", "function"} <= set(prof["tottime"][0])

    assert "ours" in doc["table"] and "one-way 100 B" in doc["table"]


def _quick_run(tmp_path, *args) -> tuple:
    """``python -m bench --quick --no-profile ARGS``: (stdout, the JSON it wrote)."""
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--no-profile", *args, "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc.stdout, json.loads(out.read_text())


def test_spin_option_reaches_our_contexts(tmp_path):
    stdout, doc = _quick_run(tmp_path, "--stacks", "ours", "--only", "pingpong_100B", "--spin", "0")
    assert "Context(spin=0)" in stdout
    ours = doc["results"]["pingpong_100B"]["stacks"]["ours"]
    assert ours["ok"] and ours["runs"]
    for run in ours["runs"]:
        assert run["client"]["spin"] == 0.0  # (the pong side never reports: it serves until killed)


def test_quick_run_with_the_original_and_a_spin(tmp_path):
    """The original yoton 2.2 runs beside ours (it has no spin to report)."""
    _, doc = _quick_run(tmp_path, "--stacks", "ours,orig", "--only", "oneway_100B", "--spin", "0.0001")
    assert doc["problems"] == []
    stacks = doc["results"]["oneway_100B"]["stacks"]
    assert stacks["orig"]["ok"] and stacks["ours"]["ok"]
    assert all("spin" not in run["client"] for run in stacks["orig"]["runs"])
    assert all(run["client"]["spin"] == 0.0001 for run in stacks["ours"]["runs"])


def test_quick_run_of_ours_through_asyncio(tmp_path):
    """The ours-asyncio stack (yoton.asyncio in both workers): one-way with
    received == sent, the ping-pong, and its ratio to the blocking API."""
    stdout, doc = _quick_run(tmp_path, "--stacks", "ours,aio", "--only", "oneway_100B,pingpong_100B,reqrep_100B")
    assert doc["problems"] == []
    oneway = doc["results"]["oneway_100B"]
    aio = oneway["stacks"]["aio"]
    assert aio["ok"] and aio["msgs_per_s"] > 0
    for run in aio["runs"]:
        assert run["sent"] > 0 and run["received"] == run["sent"] == run["end_count"]
        assert run["client"]["module"].startswith(str(ROOT / "src"))
    assert oneway["ratios"]["msgs_per_s:aio/ours"] > 0
    pingpong = doc["results"]["pingpong_100B"]
    assert pingpong["stacks"]["aio"]["median_us"] > 0 and pingpong["ratios"]["median_us:aio/ours"] > 0
    assert "aio" not in doc["results"]["reqrep_100B"]["stacks"]  # (measured through asyncio: one-way and ping-pong)
    assert "ours-asyncio" in stdout and "asyncio/ours" in stdout


def test_quick_run_through_nats(tmp_path):
    """The nats stack: ours through a nats-server the driver starts, beside ours over TCP."""
    sys.path.insert(0, str(ROOT / "tests"))
    from nats_helpers import why_no_nats

    why = why_no_nats()
    if why is not None:
        import pytest

        pytest.skip(f"the nats stack needs nats-py and nats-server: {why}")
    stdout, doc = _quick_run(tmp_path, "--stacks", "ours,nats", "--only", "oneway_100B,reqrep_100B,flood")
    assert doc["problems"] == []
    results = doc["results"]
    for mid in ("oneway_100B", "reqrep_100B"):
        via = results[mid]["stacks"]["nats"]
        assert via["ok"] and via["runs"], via
        assert all(run["client"]["module"].startswith(str(ROOT / "src")) for run in via["runs"])
    assert results["oneway_100B"]["stacks"]["nats"]["received"] == results["oneway_100B"]["stacks"]["nats"]["sent"]
    assert results["reqrep_100B"]["ratios"]["median_us:nats/ours"] > 0
    assert "nats" not in results["flood"]["stacks"]  # (the nats stack runs some rows only)
    assert "nats/tcp" in stdout


def test_quick_chain_of_relays(tmp_path):
    """``--hops 2``: ours direct, through one relay and through two; every
    one-way run loses nothing, every ping-pong comes back, and the table
    gives the latency a relay adds and the throughput left."""
    stdout, doc = _quick_run(tmp_path, "--stacks", "ours", "--hops", "2")
    assert doc["problems"] == []
    hops = doc["hops"]
    assert hops["counts"] == [0, 1, 2]
    for row in hops["rows"]:
        oneway, pingpong = row["oneway"], row["pingpong"]
        assert oneway["ok"] and oneway["msgs_per_s"] > 0, row
        for run in oneway["runs"]:
            assert run["sent"] > 0 and run["received"] == run["sent"] == run["end_count"]
            assert run["client"]["module"].startswith(str(ROOT / "src"))
        assert pingpong["ok"] and pingpong["median_us"] > 0 and all(n > 0 for n in pingpong["n"])
        if row["hops"]:
            assert row["added_us_per_hop"] is not None and row["of_1_hop"] > 0
    assert hops["rows"][1]["of_1_hop"] == 1.0
    assert "added per relay us" in stdout and "of 1 relay" in stdout
