"""``yoton bench``: a quick benchmark of this machine, between this process
and a child process it starts (the hidden command ``_bench-peer``)."""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from typing import IO, Any, Literal

import yoton

from .common import CommandError, Commands, Deadline, Output, Say, dumps, seconds

DATA, COUNT, RPC = "yoton-bench.data", "yoton-bench.count", "yoton-bench.rpc"
PAYLOAD = b"x" * 100
END = b"END"
BATCH = 1000  # messages sent between two looks at the clock
START_TIMEOUT = 10.0

EPILOG = """\
Measures, over 127.0.0.1 between this process and a child process:
  one-way   100-byte messages published as fast as they are taken (the
            subscriber is in sync mode: nothing is dropped), for --duration
            seconds; messages per second, counted until the child confirms
            it received them all
  req/rep   request/reply round trips (echo of 100 characters), one after
            another, for --duration seconds; median and 99th percentile

Progress goes to stderr (a live bar with 'rich' installed: pip install
'yoton[cli]'), the results to stdout (one line each, or one JSON object).
Figures vary with the machine's load: compare runs made close together.
"""


def _duration(text: str) -> float:
    value = seconds(text)
    if value is None:
        raise argparse.ArgumentTypeError("a measurement needs an end: give a number of seconds")
    return value


def add_parser(commands: Commands) -> None:
    """Register ``bench`` (and the hidden ``_bench-peer`` it starts)."""
    p = commands.add_parser(
        "bench",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EPILOG,
        help="a quick benchmark: one-way throughput and request/reply round trips",
        description="Measure one-way throughput and request/reply round trips with a child process.",
    )
    p.add_argument("--duration", metavar="S", type=_duration, default=1.5, help="seconds per measurement (default 1.5)")
    p.add_argument("--json", action="store_true", help="the results as one JSON object")
    p.add_argument("--plain", action="store_true", help="plain-text progress even when rich is installed")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(run=run_bench, parser=p)
    peer = commands.add_parser("_bench-peer")  # (no help: not listed)
    peer.add_argument("address")
    peer.set_defaults(run=lambda args: bench_peer(args.address), parser=peer)


# -- progress display -----------------------------------------------------------------


class PlainProgress:
    """Progress as text on stderr: a bar redrawn in place on a terminal, else
    one line per measurement."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.label, self.total, self.drawn = "", 1.0, 0.0

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc: object) -> Literal[False]:
        return False

    def start(self, label: str, total: float) -> None:
        """A measurement of ``total`` seconds begins."""
        self.label, self.total, self.drawn = label, total, 0.0
        if not self.tty:
            self._write(f"yoton bench: {label} ({total:g} s)...\n")
        else:
            self.update(0.0)

    def update(self, done: float) -> None:
        """``done`` seconds of it have passed."""
        now = time.monotonic()
        if self.tty and (now - self.drawn >= 0.1 or done >= self.total):
            self.drawn = now
            filled = int(30 * min(1.0, done / self.total))
            self._write(
                f"\r{self.label:<24} [{'#' * filled}{'.' * (30 - filled)}] "
                f"{min(done, self.total):4.1f}/{self.total:g} s"
            )

    def finish(self, summary: str) -> None:
        """The measurement is over; ``summary`` says what it found."""
        if self.tty:
            self._write(f"\r{self.label:<24} {summary}\033[K\n")

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()


class RichProgress:
    """Progress bars drawn by rich on stderr.

    Redrawn from :meth:`update`, at most four times a second: rich's own
    refresh thread would compete with the measurement for the GIL.
    """

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(
            TextColumn("{task.description:<26}"),
            BarColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[summary]}"),
            console=Console(stderr=True),
            auto_refresh=False,
        )
        self.task: Any = None  # (rich's TaskID, once started)
        self.total = 1.0
        self.drawn = 0.0

    def __enter__(self) -> RichProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> Literal[False]:
        self.progress.stop()
        return False

    def start(self, label: str, total: float) -> None:
        """A measurement of ``total`` seconds begins."""
        self.total = total
        self.task = self.progress.add_task(label, total=total, summary="")
        self.progress.refresh()

    def update(self, done: float) -> None:
        """``done`` seconds of it have passed."""
        now = time.monotonic()
        if now - self.drawn >= 0.25:
            self.drawn = now
            self.progress.update(self.task, completed=min(done, self.total), refresh=True)

    def finish(self, summary: str) -> None:
        """The measurement is over; ``summary`` says what it found."""
        self.progress.update(self.task, completed=self.total, summary=summary, refresh=True)


class _Silent(PlainProgress):
    def _write(self, text: str) -> None:
        pass


def make_progress(plain: bool = False, quiet: bool = False) -> PlainProgress | RichProgress:
    """A rich progress display if rich is installed (and not ``plain``), else plain text."""
    if quiet:
        return _Silent()
    if not plain:
        try:
            return RichProgress()
        except ImportError:
            pass
    return PlainProgress()


# -- the measurements -------------------------------------------------------------------


def _oneway(pub: yoton.PubChannel, counts: Any, duration: float, progress: Any) -> dict:
    progress.start("one-way pub/sub, 100 B", duration)
    send = pub.send
    sent = 0
    t0 = time.monotonic()
    end = t0 + duration
    while True:
        for _ in range(BATCH):
            send(PAYLOAD)
        sent += BATCH
        now = time.monotonic()
        progress.update(now - t0)
        if now >= end:
            break
    send(END)
    received = counts.recv(START_TIMEOUT + duration)
    elapsed = time.monotonic() - t0
    if received is None:
        raise CommandError("the child process did not confirm what it received")
    if received != sent:
        raise CommandError(f"MISMATCH: sent {sent} messages, the child received {received}")
    result = {"msgs_per_s": round(received / elapsed), "messages": received, "seconds": round(elapsed, 3)}
    progress.finish(f"{result['msgs_per_s']:,} msgs/s")
    return result


def _roundtrip(req: yoton.ReqChannel, duration: float, progress: Any) -> dict:
    progress.start("req/rep round trip, 100 B", duration)
    text = PAYLOAD.decode()
    for _ in range(20):  # warm-up
        req.echo(text).result(START_TIMEOUT)
    times = []
    clock = time.perf_counter
    t0 = time.monotonic()
    end = t0 + duration
    while True:
        start = clock()
        req.echo(text).result(START_TIMEOUT)
        times.append(clock() - start)
        now = time.monotonic()
        progress.update(now - t0)
        if now >= end:
            break
    times.sort()
    result = {
        "median_us": round(times[len(times) // 2] * 1e6),
        "p99_us": round(times[len(times) * 99 // 100] * 1e6),
        "requests": len(times),
    }
    progress.finish(f"median {result['median_us']:,} µs")
    return result


def run_bench(args: argparse.Namespace) -> int:
    """``yoton bench``."""
    say = Say(args.parser.prog, args.quiet)
    out = Output()
    duration = args.duration
    # (a small send queue: the sender is held back instead of running far ahead)
    ctx = yoton.Context(max_queue_bytes=4 << 20)
    child = None
    try:
        conn = ctx.bind("127.0.0.1:0")
        pub = yoton.PubChannel(ctx, DATA, yoton.BINARY)
        counts = yoton.SubChannel(ctx, COUNT, yoton.OBJECT)
        req = yoton.ReqChannel(ctx, RPC)
        child = subprocess.Popen(
            [sys.executable, "-m", "yoton", "_bench-peer", f"127.0.0.1:{conn.port1}"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
        )
        deadline = Deadline(START_TIMEOUT)
        while not conn.is_connected:
            if child.poll() is not None:
                raise CommandError(f"the child process ended at start (exit code {child.returncode})")
            if deadline.passed():
                raise CommandError("the child process did not connect within 10 s")
            time.sleep(0.01)
        say(f"child process {child.pid} connected; {duration:g} s per measurement")
        with make_progress(args.plain, args.quiet) as progress:
            oneway = _oneway(pub, counts, duration, progress)
            roundtrip = _roundtrip(req, duration, progress)
        if args.json:
            out.line(dumps({"oneway_100B": oneway, "reqrep_100B": roundtrip}))
        else:
            out.line(
                f"one-way pub/sub, 100 B messages: {oneway['msgs_per_s']:,} msgs/s "
                f"({oneway['messages']:,} messages in {oneway['seconds']:.2f} s)"
            )
            out.line(
                f"req/rep round trip, 100 B: median {roundtrip['median_us']:,} µs, "
                f"p99 {roundtrip['p99_us']:,} µs ({roundtrip['requests']:,} requests)"
            )
        return 0
    finally:
        ctx.close()
        if child is not None:
            try:
                child.wait(5)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()


def bench_peer(address: str) -> int:
    """The child process of ``yoton bench``: counts messages, echoes requests."""
    ctx = yoton.Context()
    sub = yoton.SubChannel(ctx, DATA, yoton.BINARY)
    sub.set_sync_mode(True)  # (lossless: the sender is held back instead)
    counts = yoton.PubChannel(ctx, COUNT, yoton.OBJECT)
    rep = yoton.RepChannel(ctx, RPC)  # (its echo method is all we need)
    rep.set_mode("thread")
    conn = ctx.connect(address, timeout=START_TIMEOUT)
    n = 0
    try:
        while conn.is_connected:
            messages = sub.recv_all()
            if not messages:
                message = sub.recv(0.5)
                if not message:
                    continue
                messages = [message]
            if messages[-1] == END:
                counts.send(n + len(messages) - 1)
                n = 0
            else:
                n += len(messages)
    finally:
        ctx.close()
    return 0
