"""Stress check (not run in CI): an orderly close after a great many messages loses nothing.

    python -m bench.stress --count 1000000             # both modes, 1M messages each
    python -m bench.stress --count 1000000 --mode queued --size 100

A sender process (this module with ``--send``, importing yoton from ``src/``)
connects to this process, sends ``count`` TEXT messages ``"0"``, ``"1"``, ...
(padded with spaces to ``size`` characters) and at once closes its context,
then exits. This process checks, as the messages arrive, that every number
comes exactly once and in order, that the connection ends with the peer's
close signal ("Closed from other end.") and that the sender exits with status
0. Modes:

* ``connected``: the sender sends while connected, then closes;
* ``queued``: the sender sends *before* connecting, so every message waits in
  its startup queue, and closes right after connecting -- the close has to
  flush all of them.

Prints one line per run and exits with status 1 if any run failed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"
SLOT = "stress"
REASON_PEER_CLOSED = "Closed from other end."


def _message(i: int, size: int) -> str:
    return str(i).ljust(size)


def run_sender(port: int, count: int, size: int, mode: str) -> int:
    import yoton

    ctx = yoton.Context()
    pub = yoton.PubChannel(ctx, SLOT)
    t0 = time.monotonic()
    if mode == "queued":
        for i in range(count):
            pub.send(_message(i, size))
        t_sent = time.monotonic()
        ctx.connect(f"127.0.0.1:{port}", timeout=10.0)
    else:
        ctx.connect(f"127.0.0.1:{port}", timeout=10.0)
        t0 = time.monotonic()
        for i in range(count):
            pub.send(_message(i, size))
        t_sent = time.monotonic()
    ctx.close()
    t_closed = time.monotonic()
    print(json.dumps({"send_s": t_sent - t0, "close_s": t_closed - t_sent}), flush=True)
    return 0


def run_check(count: int, size: int, mode: str, timeout: float) -> dict:
    sys.path.insert(0, str(SRC))
    import yoton

    ctx = yoton.Context(queue_params=(count + 100, "old"))
    conn = ctx.bind("127.0.0.1:0")
    closed: list = []
    conn.closed.bind(lambda c, reason: closed.append((time.monotonic(), reason)))
    sub = yoton.SubChannel(ctx, SLOT)
    env = dict(os.environ, PYTHONPATH=str(SRC))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench.stress",
            "--send",
            str(conn.port1),
            "--count",
            str(count),
            "--size",
            str(size),
            "--mode",
            mode,
        ],
        cwd=str(ROOT),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    result = {"mode": mode, "count": count, "size": size}
    expected, problems, t_first = 0, [], None
    t_start = time.monotonic()
    deadline = t_start + timeout
    try:
        while True:
            batch = sub.recv_all()
            if batch:
                if t_first is None:
                    t_first = time.monotonic()
                for message in batch:
                    if message != _message(expected, size):
                        if len(problems) < 5:
                            problems.append(f"message {expected}: got {message[:40]!r}")
                        try:
                            expected = int(message) + 1
                        except ValueError:
                            expected += 1
                        continue
                    expected += 1
                continue
            if closed and not sub.pending:
                break
            if time.monotonic() > deadline:
                problems.append(f"timed out after {timeout} s")
                break
            yoton.process_events(0.01)
        t_end = time.monotonic()
        try:
            out, err = proc.communicate(timeout=10.0)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            problems.append("sender did not exit")
        try:
            sender = json.loads(out.strip().splitlines()[-1])
        except (ValueError, IndexError):
            sender = {}
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        ctx.close()
    return dict(
        result,
        received=expected,
        reason=closed[0][1] if closed else None,
        returncode=proc.returncode,
        stderr=err.strip()[-2000:],
        problems=problems,
        receive_s=(t_end - t_first) if t_first else None,
        total_s=t_end - t_start,
        sender=sender,
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.stress", description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=1_000_000, help="messages per run (default 1,000,000)")
    parser.add_argument("--size", type=int, default=0, help="pad each message to this many characters")
    parser.add_argument("--mode", choices=["connected", "queued", "both"], default="both")
    parser.add_argument("--repeat", type=int, default=1, help="runs per mode")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds a run may take")
    parser.add_argument("--send", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.send is not None:
        return run_sender(args.send, args.count, args.size, args.mode)
    modes = ["connected", "queued"] if args.mode == "both" else [args.mode]
    failed = 0
    for _ in range(args.repeat):
        for mode in modes:
            r = run_check(args.count, args.size, mode, args.timeout)
            ok = (
                r["received"] == r["count"]
                and not r["problems"]
                and r["reason"] == REASON_PEER_CLOSED
                and r["returncode"] == 0
            )
            failed += not ok
            rate = r["count"] / r["receive_s"] if r["receive_s"] else 0.0
            print(
                f"{'OK  ' if ok else 'FAIL'} {mode:9s} {r['received']:,}/{r['count']:,} in order, "
                f"closed: {r['reason']!r}, sender exit {r['returncode']}, "
                f"{r['total_s']:.2f} s total, receiving {rate:,.0f} msgs/s; sender: sending "
                f"{r['sender'].get('send_s', float('nan')):.2f} s, "
                f"close() {r['sender'].get('close_s', float('nan')):.2f} s"
            )
            for problem in r["problems"]:
                print(f"     {problem}")
            if not ok and r["stderr"]:
                print("     sender stderr:\n" + r["stderr"])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
