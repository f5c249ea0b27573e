"""``yoton demo``: a second Python process is started and the two talk over
localhost, printing what flows: publish/subscribe both ways, a shared state
that the late-joining process learns on arrival, request/reply with a result
and a remote error, and the connection signals.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Any, Callable

import yoton

if TYPE_CHECKING:
    from .common import Commands

DEMO_TIMEOUT = 10.0


def _say(who: str, text: str) -> None:
    print(f"[{who}] {text}", flush=True)


def _process_events_until(predicate: Callable[[], object], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        yoton.process_events(min(remaining, 0.05))
    return True


def demo() -> int:
    """Run the two-process demo; return the exit code."""
    ctx = yoton.Context()
    conn = ctx.bind("localhost:yoton-demo", max_tries=64, name="worker")
    _say("main", f"context {ctx.id:016x} bound to 127.0.0.1:{conn.port1}, waiting for the worker")

    events = []
    conn.closed.bind(lambda c, reason: events.append(("closed", reason)))
    pub = yoton.PubChannel(ctx, "demo.jobs", yoton.OBJECT)
    sub = yoton.SubChannel(ctx, "demo.results", yoton.OBJECT)
    state = yoton.StateChannel(ctx, "demo.status")
    state.send("main is ready")  # the worker joins later and still learns it

    worker = subprocess.Popen([sys.executable, "-m", "yoton", "_demo-worker", str(conn.port1)])
    try:
        if not _process_events_until(lambda: conn.is_connected, DEMO_TIMEOUT):
            _say("main", "the worker did not connect in time")
            return 1
        _say("main", f"connected to worker pid {conn.pid2} ({conn.hostname2}:{conn.port2})")
        for n in range(1, 4):
            job = {"job": n, "numbers": list(range(n + 1))}
            _say("main", f"publish {job}")
            pub.send(job)
        for _ in range(3):
            result = sub.recv(DEMO_TIMEOUT)
            _say("main", f"received {result}")
        if not _process_events_until(lambda: state.recv() == "worker is done", DEMO_TIMEOUT):
            _say("main", "no final state from the worker")
            return 1
        _say("main", f"state is now {state.recv()!r}")
        req = yoton.ReqChannel(ctx, "demo.calc")
        _say("main", f"request add(20, 22) -> {req.add(20, 22).result(DEMO_TIMEOUT)}")
        try:
            req.divide(1, 0).result(DEMO_TIMEOUT)
        except yoton.RemoteError as exc:
            _say("main", f"request divide(1, 0) -> remote error: {exc}")
        req.done().result(DEMO_TIMEOUT)
        _process_events_until(lambda: events, DEMO_TIMEOUT)
        for name, reason in events:
            _say("main", f"signal {name}: {reason}")
        return 0 if worker.wait(DEMO_TIMEOUT) == 0 else 1
    finally:
        ctx.close()
        if worker.poll() is None:
            worker.kill()
            worker.wait()


class _Calculator(yoton.RepChannel):
    """The demo worker's replier: requesters call these methods by name."""

    def __init__(self, context: yoton.Context, slot_base: str) -> None:
        super().__init__(context, slot_base)
        self.finished = False

    def add(self, a: Any, b: Any) -> Any:
        """Return a + b."""
        return a + b

    def divide(self, a: Any, b: Any) -> Any:
        """Return a / b (raises for b == 0, which the requester sees)."""
        return a / b

    def done(self) -> bool:
        """Tell the worker it may finish."""
        self.finished = True
        return True


def demo_worker(port: int) -> int:
    """The second process of the demo."""
    ctx = yoton.Context()
    calc = _Calculator(ctx, "demo.calc")
    calc.set_mode("thread")
    sub = yoton.SubChannel(ctx, "demo.jobs", yoton.OBJECT)
    pub = yoton.PubChannel(ctx, "demo.results", yoton.OBJECT)
    state = yoton.StateChannel(ctx, "demo.status")
    conn = ctx.connect(f"localhost:{port}", timeout=DEMO_TIMEOUT)
    _say("worker", f"pid {os.getpid()} connected to context {conn.id2:016x}")
    if not _process_events_until(lambda: state.recv(), DEMO_TIMEOUT):
        _say("worker", "never learned the state")
        return 1
    _say("worker", f"learned state {state.recv()!r} on arrival")
    for _ in range(3):
        job = sub.recv(DEMO_TIMEOUT)
        result = (job["job"], sum(job["numbers"]))
        _say("worker", f"got {job}, answering {result}")
        pub.send(result)
    state.send("worker is done")
    if not _process_events_until(lambda: calc.finished, DEMO_TIMEOUT):
        _say("worker", "no requests came")
        return 1
    _say("worker", f"served {calc.statistics()['served']} requests")
    ctx.flush()
    conn.close("the worker finished")
    return 0


def add_parser(commands: Commands) -> None:
    """Register ``demo`` (and the hidden ``_demo-worker`` it starts)."""
    p = commands.add_parser(
        "demo",
        help="run a two-process demo on localhost",
        description=__doc__.split("\n\n")[0].replace("``", "").replace("\n", " "),
    )
    p.set_defaults(run=lambda args: demo(), parser=p)
    worker = commands.add_parser("_demo-worker")  # (no help: not listed)
    worker.add_argument("port", type=int)
    worker.set_defaults(run=lambda args: demo_worker(args.port), parser=worker)
