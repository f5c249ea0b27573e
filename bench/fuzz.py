"""``python -m bench.fuzz``: the wire-layer fuzz targets, run long.

The targets (frame decoder, handshake, OBJECT codec) and their properties live
in ``tests/wire/test_fuzz.py``, where CI runs each with a few hundred
examples. This runs the same ones with many more, in batches of fresh random
examples, until each target has had ``--examples`` inputs or its share of
``--seconds`` is spent, then prints per target how many inputs were tried,
how long it took and the result. A failure shows Hypothesis' shrunk
falsifying example; the exit status is 1 if any target failed.

Run from the repository root::

    python -m bench.fuzz                          # 20,000 inputs per target (~14 targets)
    python -m bench.fuzz --seconds 300            # or a time budget, shared by the targets
    python -m bench.fuzz --only codec_hostile,frames_hostile --examples 100000
    python -m bench.fuzz --list
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
import traceback
from pathlib import Path

from hypothesis import HealthCheck, given, settings

ROOT = Path(__file__).resolve().parent.parent
TARGETS_FILE = ROOT / "tests" / "wire" / "test_fuzz.py"


def load_targets() -> dict:
    """Import tests/wire/test_fuzz.py and return its ``TARGETS`` (name -> Target)."""
    if str(ROOT / "src") not in sys.path:
        sys.path.insert(0, str(ROOT / "src"))  # works without the editable install too
    if str(ROOT / "tests") not in sys.path:
        sys.path.append(str(ROOT / "tests"))  # (its helpers, as under pytest)
    spec = importlib.util.spec_from_file_location("yoton_fuzz_targets", TARGETS_FILE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module.TARGETS


def fuzz(target, examples: int, seconds: float | None, batch: int) -> tuple[int, float, str]:
    """Run one target; return (inputs tried, seconds taken, result text)."""
    tried = 0

    def run(case):
        nonlocal tried
        tried += 1
        target.check(case)

    start = time.monotonic()
    while tried < examples:
        want = min(batch, examples - tried)
        if seconds is not None:
            spent = time.monotonic() - start
            if spent >= seconds:
                break
            if tried:  # size the batch to end near the budget
                want = min(want, max(20, int(tried / spent * (seconds - spent))))
            else:
                want = min(want, 100)
        test = settings(
            max_examples=want, deadline=None, database=None, derandomize=False, suppress_health_check=list(HealthCheck)
        )(given(target.strategy)(run))
        before = tried
        try:
            test()
        except Exception as exc:  # a property failed (Hypothesis has printed the example)
            traceback.print_exc()
            return tried, time.monotonic() - start, f"FAILED: {type(exc).__name__}: {exc}"[:200]
        if tried - before < want // 2:
            return tried, time.monotonic() - start, "ok (search space exhausted)"
    return tried, time.monotonic() - start, "ok"


def main(argv=None) -> int:
    """Command line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m bench.fuzz", description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=20_000, help="inputs per target (default 20000)")
    parser.add_argument(
        "--seconds", type=float, default=None, help="time budget for the whole run, split evenly between the targets"
    )
    parser.add_argument("--only", default="", help="comma-separated target names")
    parser.add_argument(
        "--batch", type=int, default=2_000, help="examples per Hypothesis run (each run draws fresh random inputs)"
    )
    parser.add_argument("--list", action="store_true", help="list the targets and exit")
    args = parser.parse_args(argv)

    targets = load_targets()
    if args.list:
        for name, t in targets.items():
            print(f"{name:24} {(t.check.__doc__ or '').strip().splitlines()[0]}")
        return 0
    names = [n for n in args.only.split(",") if n] or list(targets)
    unknown = [n for n in names if n not in targets]
    if unknown:
        parser.error(f"unknown target(s): {', '.join(unknown)}; see --list")
    share = args.seconds / len(names) if args.seconds else None

    rows, failed = [], False
    total_start = time.monotonic()
    for name in names:
        print(f"fuzzing {name} ...", file=sys.stderr, flush=True)
        tried, took, result = fuzz(targets[name], args.examples, share, args.batch)
        failed |= result.startswith("FAILED")
        rows.append((name, tried, took, result))
        print(f"  {tried} inputs in {took:.1f} s: {result}", file=sys.stderr, flush=True)

    print(f"\n{'target':24} {'inputs':>9} {'seconds':>8} {'inputs/s':>9}  result")
    for name, tried, took, result in rows:
        print(f"{name:24} {tried:>9} {took:>8.1f} {tried / max(took, 1e-9):>9.0f}  {result}")
    total = sum(r[1] for r in rows)
    print(f"{'total':24} {total:>9} {time.monotonic() - total_start:>8.1f}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
