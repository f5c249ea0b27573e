"""One side of one benchmark measurement, run as a subprocess by the driver.

    python bench/worker.py STACK ROLE 'JSON-PARAMS'

STACK is ``ours`` or ``orig`` (both ``import yoton``; the driver sets
PYTHONPATH so that it resolves to the right one), ``nats`` (ours, both sides
attached to the nats-server the driver started, ``params["nats"]``) or
``zmq`` (pyzmq). ROLE is
one of:

=========  ==========================================================  =========
role       what it does                                                binds?
=========  ==========================================================  =========
recv       one-way receiver (yoton SubChannel / zmq PULL)              binds
send       one-way sender (yoton PubChannel / zmq PUSH)                connects
rep        request/reply server (yoton RepChannel thread mode / REP)   binds
req        requester, times round trips (ReqChannel / REQ)             connects
pong       pub/sub echo: sub 'ping' -> pub 'pong' (zmq: REP)           binds
ping       pub/sub round trips: pub 'ping', sub 'pong' (zmq: REQ)      connects
=========  ==========================================================  =========

Protocol with the driver: the worker prints lines ``@@BENCH {json}`` on
stdout -- ``{"event": "ready", ...}`` once it listens (binding roles) and
``{"event": "result", ...}`` when it is done (or ``{"event": "error", ...}``).
It reads commands on stdin (``go``: a flood receiver may start draining).
When its stdin closes (the driver is done with it, or died) the worker exits
at once; a hard deadline (``deadline`` seconds) kills it in any case.

One-way senders send ``count`` messages of ``size`` bytes (stopping early
after ``duration`` seconds), then one short ``END <n>`` message; receivers
count messages until END (or until ``idle`` seconds pass without one) and
time-stamp the first message and END, so the rate excludes start-up.

This file imports only the standard library and the stack under test, so it
runs unchanged against our yoton, the original yoton 2.2 and pyzmq.
"""

from __future__ import annotations

import json
import os
import queue
import sys
import threading
import time

MARK = "@@BENCH "
_commands: queue.Queue[str] = queue.Queue()


def emit(event: str, **data) -> None:
    data["event"] = event
    sys.stdout.write(MARK + json.dumps(data) + "\n")
    sys.stdout.flush()


def _watch_stdin() -> None:
    for line in sys.stdin:
        _commands.put(line.strip())
    os._exit(0)  # the driver closed our stdin: done (or it died) -- leave now


def wait_command(name: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        try:
            if _commands.get(timeout=left) == name:
                return True
        except queue.Empty:
            return False


def rss_now_kib() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024
    except (OSError, ValueError, IndexError):
        return None


def rss_peak_kib() -> int | None:
    """Peak RSS of this process: VmHWM on Linux. (getrusage's ru_maxrss survives
    exec, so a worker's would start at the driver's size when it was forked.)"""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    try:
        import resource
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak // 1024 if sys.platform == "darwin" else peak  # bytes on macOS, KiB on Linux


def percentile(sorted_values: list, q: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return float("nan")
    k = max(0, min(len(sorted_values) - 1, int(round(q / 100.0 * len(sorted_values) + 0.5)) - 1))
    return sorted_values[k]


# -- profiling every thread -----------------------------------------------------


class ThreadProfiles:
    """cProfile for the main thread and every thread started while running.

    cProfile only sees the thread that enabled it; yoton does its I/O in a
    thread of its own, so each new thread gets its own profiler (installed
    from its first profile event) and all are merged at the end.
    """

    def __init__(self):
        import cProfile

        self._cprofile = cProfile
        self._main = cProfile.Profile()
        self._others: list = []

    def _bootstrap(self, frame, event, arg):
        prof = self._cprofile.Profile()
        self._others.append(prof)
        prof.enable()  # replaces this hook for the calling thread

    def start(self) -> None:
        threading.setprofile(self._bootstrap)
        self._main.enable()

    def clear(self) -> None:
        """Forget what was recorded so far (set-up, imports): profile only the measurement."""
        for prof in [self._main] + list(self._others):
            prof.clear()

    def dump(self, path: str) -> None:
        self._main.disable()
        threading.setprofile(None)
        import pstats

        stats = pstats.Stats(self._main)
        for prof in list(self._others):
            try:
                stats.add(pstats.Stats(prof))
            except (TypeError, ValueError):  # a profiler that never saw a call
                pass
        stats.dump_stats(path)


_profiles: ThreadProfiles | None = None
_spin_used: float | None = None  # Context(spin=...) of our stack's context, once made


def measurement_starts() -> None:
    if _profiles is not None:
        _profiles.clear()


# -- the stacks -------------------------------------------------------------------


def _yoton():
    import yoton

    return yoton


def _zmq():
    import zmq

    return zmq


def describe_stack(stack: str) -> dict:
    if stack == "zmq":
        zmq = _zmq()
        return {"module": zmq.__file__, "version": f"pyzmq {zmq.__version__} / libzmq {zmq.zmq_version()}"}
    yoton = _yoton()
    return {"module": yoton.__file__, "version": f"yoton {getattr(yoton, '__version__', '?')}"}


def yoton_context(p: dict):
    yoton = _yoton()
    queue_params = p.get("queue")
    kwargs = {"max_queue_bytes": p["max_queue_bytes"]} if p.get("max_queue_bytes") else {}
    if p.get("spin") is not None:
        kwargs["spin"] = p["spin"]
    global _spin_used
    ctx = yoton.Context(queue_params=tuple(queue_params) if queue_params else None, **kwargs)
    _spin_used = getattr(ctx, "spin", None)  # (the original yoton has no such thing)
    return ctx


def yoton_attach(ctx, p: dict, binding: bool) -> None:
    """Link a yoton context to the other side: a TCP bind (``binding``) or
    connect on ``p["port"]``; for the ``nats`` stack, a connect to the NATS
    server on the run's own network (both sides alike)."""
    nats = p.get("nats")
    timeout = p.get("connect_timeout", 10.0)
    if nats:
        ctx.connect(nats["url"], timeout=timeout, network=nats["network"])
    elif binding:
        ctx.bind(f"localhost:{p['port']}")
    else:
        ctx.connect(f"localhost:{p['port']}", timeout=timeout)


def zmq_socket(kind: str, p: dict):
    zmq = _zmq()
    ctx = zmq.Context.instance()
    sock = ctx.socket(getattr(zmq, kind))
    hwm = p.get("hwm")
    if hwm:
        sock.setsockopt(zmq.SNDHWM, int(hwm))
        sock.setsockopt(zmq.RCVHWM, int(hwm))
    return sock


def _end_message(n: int) -> bytes:
    return b"END %d" % n


def _parse_end(message: bytes) -> int | None:
    if bytes(message[:4]) == b"END ":
        try:
            return int(bytes(message[4:]))
        except ValueError:
            return None
    return None


# -- one-way: receiver --------------------------------------------------------------


def role_recv(stack: str, p: dict) -> dict:
    size, idle, flood = p["size"], p.get("idle", 10.0), p.get("flood", False)
    port = p["port"]
    if stack == "zmq":
        zmq = _zmq()
        sock = zmq_socket("PULL", p)
        sock.setsockopt(zmq.RCVTIMEO, int(idle * 1000))
        sock.bind(f"tcp://127.0.0.1:{port}")

        def recv_first():
            try:
                return [sock.recv()]
            except zmq.Again:
                return []

        def recv_batch():  # like yoton's recv_all: take what is there, else wait
            out = []
            try:
                while len(out) < 1000:
                    out.append(sock.recv(zmq.NOBLOCK))
            except zmq.Again:
                pass
            return out or recv_first()
    else:
        yoton = _yoton()
        ctx = yoton_context(p)
        yoton_attach(ctx, p, True)
        sub = yoton.SubChannel(ctx, "bench", yoton.BINARY)
        if p.get("sync"):
            sub.set_sync_mode(True)  # lossless: the sender is held back instead

        def recv_first():
            message = sub.recv(idle)
            return [message] if message else []

        def recv_batch():
            messages = sub.recv_all()
            return messages if messages else recv_first()

    rss_before = rss_now_kib()
    measurement_starts()
    emit("ready")
    waited = None
    if flood:
        t0 = time.perf_counter()
        wait_command("go", p.get("sleep_max", 30.0) + 5.0)  # fall behind on purpose
        waited = time.perf_counter() - t0
    count = nbytes = 0
    end_count = None
    t_first = t_end = None
    batch = recv_first()
    if batch:
        t_first = time.perf_counter()
    while batch:
        t_end = time.perf_counter()  # of the last message seen (END, unless it never comes)
        last = batch[-1]
        if len(last) != size:  # the END marker is the last message sent
            end_count = _parse_end(last)
            batch = batch[:-1]
        count += len(batch)
        nbytes += sum(map(len, batch))
        if end_count is not None:
            break
        batch = recv_batch()
    elapsed = t_end - t_first if t_first is not None else 0.0
    result = {
        "received": count,
        "bytes": nbytes,
        "end_seen": end_count is not None,
        "end_count": end_count,
        "elapsed": elapsed,
        "rss_before_kib": rss_before,
        "rss_peak_kib": rss_peak_kib(),
        "slept": waited,
    }
    if count > 1 and elapsed > 0:
        result["msgs_per_s"] = (count - 1) / elapsed
        result["MB_per_s"] = (count - 1) * size / elapsed / 1e6
    if stack in ("ours", "nats"):
        stats = getattr(sub, "statistics", None)
        if stats is not None:
            result["discarded"] = stats().get("discarded")
    return result


# -- one-way: sender ------------------------------------------------------------------


def role_send(stack: str, p: dict) -> dict:
    size, count, duration = p["size"], p["count"], p.get("duration", 1e9)
    port = p["port"]
    payload = b"x" * size
    check_every = max(1, min(1000, count // 100))
    if stack == "zmq":
        sock = zmq_socket("PUSH", p)
        sock.connect(f"tcp://127.0.0.1:{port}")
        send = sock.send
    else:
        yoton = _yoton()
        ctx = yoton_context(p)
        yoton_attach(ctx, p, False)
        pub = yoton.PubChannel(ctx, "bench", yoton.BINARY)
        send = pub.send
    measurement_starts()
    t0 = time.perf_counter()
    deadline = t0 + duration
    sent = 0
    min_count = p.get("min_count", 0)  # sent even after the duration
    while sent < count:
        send(payload)
        sent += 1
        if sent % check_every == 0 and sent >= min_count and time.perf_counter() >= deadline:
            break
    send(_end_message(sent))
    t_sent = time.perf_counter()
    if stack != "zmq":
        ctx.flush(p.get("flush_timeout", 120.0))
    t_flushed = time.perf_counter()
    return {
        "sent": sent,
        "send_elapsed": t_sent - t0,
        "flush_elapsed": t_flushed - t_sent,
        "send_msgs_per_s": sent / (t_sent - t0) if t_sent > t0 else None,
    }


# -- request/reply --------------------------------------------------------------------


def role_rep(stack: str, p: dict) -> dict:
    port = p["port"]
    if stack == "zmq":
        sock = zmq_socket("REP", p)
        sock.bind(f"tcp://127.0.0.1:{port}")
        emit("ready")
        while True:
            sock.send(sock.recv())
    yoton = _yoton()

    class Echo(yoton.RepChannel):
        def echo(self, arg):
            return arg

    ctx = yoton_context(p)
    yoton_attach(ctx, p, True)
    rep = Echo(ctx, "bench")
    rep.set_mode("thread")
    emit("ready")
    while True:  # the thread-mode replier serves; we wait for the driver to close stdin
        time.sleep(3600)


def _time_round_trips(p: dict, round_trip) -> dict:
    count, duration, warmup = p["count"], p.get("duration", 1e9), p.get("warmup", 3)
    for _ in range(warmup):
        round_trip()
    measurement_starts()
    samples = []
    t0 = time.perf_counter()
    deadline = t0 + duration
    while len(samples) < count:
        t = time.perf_counter()
        round_trip()
        now = time.perf_counter()
        samples.append(now - t)
        if now >= deadline and len(samples) >= p.get("min_count", 5):
            break
    total = time.perf_counter() - t0
    samples.sort()
    return {
        "n": len(samples),
        "elapsed": total,
        "median_us": percentile(samples, 50) * 1e6,
        "p99_us": percentile(samples, 99) * 1e6,
        "min_us": samples[0] * 1e6,
        "max_us": samples[-1] * 1e6,
    }


def _zmq_requester(p: dict):
    sock = zmq_socket("REQ", p)
    sock.connect(f"tcp://127.0.0.1:{p['port']}")
    payload = b"x" * p["size"]

    def round_trip():
        sock.send(payload)
        if sock.recv() != payload:
            raise RuntimeError("pyzmq REP answered with something else")

    return round_trip


def role_req(stack: str, p: dict) -> dict:
    timeout = p.get("timeout", 10.0)
    if stack == "zmq":
        return _time_round_trips(p, _zmq_requester(p))
    yoton = _yoton()
    ctx = yoton_context(p)
    yoton_attach(ctx, p, False)
    req = yoton.ReqChannel(ctx, "bench")
    payload = "x" * p["size"]

    def round_trip():
        if req.echo(payload).result(timeout) != payload:
            raise RuntimeError("RepChannel answered with something else")

    return _time_round_trips(p, round_trip)


# -- pub/sub ping-pong --------------------------------------------------------------------


def role_pong(stack: str, p: dict) -> dict:
    if stack == "zmq":
        return role_rep(stack, p)
    yoton = _yoton()
    ctx = yoton_context(p)
    yoton_attach(ctx, p, True)
    sub = yoton.SubChannel(ctx, "ping", yoton.BINARY)
    pub = yoton.PubChannel(ctx, "pong", yoton.BINARY)
    emit("ready")
    while True:
        message = sub.recv(True)
        if message:
            pub.send(message)


def role_ping(stack: str, p: dict) -> dict:
    timeout = p.get("timeout", 10.0)
    if stack == "zmq":
        return _time_round_trips(p, _zmq_requester(p))
    yoton = _yoton()
    ctx = yoton_context(p)
    yoton_attach(ctx, p, False)
    pub = yoton.PubChannel(ctx, "ping", yoton.BINARY)
    sub = yoton.SubChannel(ctx, "pong", yoton.BINARY)
    payload = b"x" * p["size"]

    def round_trip():
        pub.send(payload)
        if sub.recv(timeout) != payload:
            raise RuntimeError(f"no pong within {timeout} s")

    return _time_round_trips(p, round_trip)


ROLES = {
    "recv": role_recv,
    "send": role_send,
    "rep": role_rep,
    "req": role_req,
    "pong": role_pong,
    "ping": role_ping,
}


def main(argv: list) -> int:
    if len(argv) != 3 or argv[0] not in ("ours", "orig", "zmq", "nats") or argv[1] not in ROLES:
        sys.stderr.write(__doc__)
        return 2
    stack, role, params = argv[0], argv[1], json.loads(argv[2])
    killer = threading.Timer(params.get("deadline", 300.0), os._exit, (3,))  # hard limit
    killer.daemon = True
    killer.start()
    threading.Thread(target=_watch_stdin, daemon=True).start()
    global _profiles
    profiles = None
    try:
        info = describe_stack(stack)
        if params.get("profile"):
            profiles = _profiles = ThreadProfiles()
            profiles.start()
        result = ROLES[role](stack, params)
        if profiles is not None:
            profiles.dump(params["profile"])
    except BaseException as exc:  # report, then let the driver decide
        import traceback

        emit("error", error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc())
        sys.stderr.flush()
        os._exit(1)
    result.update(info)
    if _spin_used is not None:
        result["spin"] = _spin_used  # (what our Context was made with)
    emit("result", **result)
    wait_command("__never__", 1e9)  # stay until the driver closes our stdin
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
