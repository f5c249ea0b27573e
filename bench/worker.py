"""One side of one benchmark measurement, run as a subprocess by the driver.

    python bench/worker.py STACK ROLE 'JSON-PARAMS'

STACK is ``ours`` or ``orig`` (both ``import yoton``; the driver sets
PYTHONPATH so that it resolves to the right one), ``aio`` (ours through
``yoton.asyncio``: the same roles as coroutines on an asyncio loop; recv,
send, pong and ping), ``nats`` (ours, both sides attached to the
nats-server the driver started, ``params["nats"]``) or ``zmq`` (pyzmq); for
the ``inproc`` role also ``queue`` (queue.Queue) or ``pipe``
(multiprocessing.Pipe), the in-process baselines. ROLE is one of:

=========  ==========================================================  =========
role       what it does                                                binds?
=========  ==========================================================  =========
recv       one-way receiver (yoton SubChannel / zmq PULL)              binds
send       one-way sender (yoton PubChannel / zmq PUSH)                connects
rep        request/reply server (yoton RepChannel thread mode / REP)   binds
req        requester, times round trips (ReqChannel / REQ)             connects
pong       pub/sub echo: sub 'ping' -> pub 'pong' (zmq: REP)           binds
ping       pub/sub round trips: pub 'ping', sub 'pong' (zmq: REQ)      connects
relay      a context with no channels between two others (--hops): it  binds and
           binds at ``port`` and connects to ``upstream_port``;        connects
           what comes on one link is forwarded to the other (ours)
inproc     both sides in this process, in two threads: one-way or      -
           ping-pong (``what``), over itc:// (ours), inproc:// (zmq),
           a queue.Queue or a multiprocessing.Pipe
=========  ==========================================================  =========

Params ``transport`` ("tcp", the default, or "ipc" with ``ipc_path``) choose
how the two processes of the other roles talk: 127.0.0.1:``port`` or a Unix
socket (yoton ``ipc://PATH``, pyzmq ``ipc://PATH``).

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

    Before Python 3.12 cProfile only sees the thread that enabled it; yoton
    does its I/O in a thread of its own, so each new thread gets its own
    profiler (installed from its first profile event) and all are merged at
    the end. From 3.12 on one profiler sees every thread (sys.monitoring),
    and a second one cannot be enabled.
    """

    _EVERY_THREAD = sys.version_info >= (3, 12)

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
        if not self._EVERY_THREAD:
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
    if stack in ("queue", "pipe"):
        return {"module": "(standard library)", "version": f"Python {sys.version.split()[0]}"}
    if stack == "zmq":
        zmq = _zmq()
        return {"module": zmq.__file__, "version": f"pyzmq {zmq.__version__} / libzmq {zmq.zmq_version()}"}
    yoton = _yoton()
    return {"module": yoton.__file__, "version": f"yoton {getattr(yoton, '__version__', '?')}"}


def yoton_context(p: dict, factory=None):
    yoton = _yoton()
    queue_params = p.get("queue")
    kwargs = {"max_queue_bytes": p["max_queue_bytes"]} if p.get("max_queue_bytes") else {}
    if p.get("spin") is not None:
        kwargs["spin"] = p["spin"]
    global _spin_used
    ctx = (factory or yoton.Context)(queue_params=tuple(queue_params) if queue_params else None, **kwargs)
    _spin_used = getattr(ctx, "spin", None)  # (the original yoton has no such thing)
    return ctx


def yoton_attach(ctx, p: dict, binding: bool) -> None:
    """Link a yoton context to the other side: a bind (``binding``) or
    connect at :func:`yoton_address`; for the ``nats`` stack, a connect to the NATS
    server on the run's own network (both sides alike)."""
    nats = p.get("nats")
    timeout = p.get("connect_timeout", 10.0)
    if nats:
        ctx.connect(nats["url"], timeout=timeout, network=nats["network"])
    elif binding:
        ctx.bind(yoton_address(p))
    else:
        ctx.connect(yoton_address(p), timeout=timeout)


def zmq_socket(kind: str, p: dict):
    zmq = _zmq()
    ctx = zmq.Context.instance()
    sock = ctx.socket(getattr(zmq, kind))
    hwm = p.get("hwm")
    if hwm:
        sock.setsockopt(zmq.SNDHWM, int(hwm))
        sock.setsockopt(zmq.RCVHWM, int(hwm))
    return sock


def yoton_address(p: dict) -> str:
    """The address our/2.2's yoton binds and connects to for these params."""
    if p.get("transport") == "ipc":
        return "ipc://" + p["ipc_path"]
    return f"localhost:{p['port']}"


def zmq_address(p: dict) -> str:
    if p.get("transport") == "ipc":
        return "ipc://" + p["ipc_path"]
    return f"tcp://127.0.0.1:{p['port']}"


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
    if stack == "zmq":
        zmq = _zmq()
        sock = zmq_socket("PULL", p)
        sock.setsockopt(zmq.RCVTIMEO, int(idle * 1000))
        sock.bind(zmq_address(p))

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
    result = _received(count, nbytes, size, end_count, t_first, t_end, rss_before, slept=waited)
    if stack in ("ours", "nats"):
        stats = getattr(sub, "statistics", None)
        if stats is not None:
            result["discarded"] = stats().get("discarded")
    return result


def _received(count: int, nbytes: int, size: int, end_count, t_first, t_end, rss_before, **extra) -> dict:
    """A one-way receiver's result: what came, how fast (timed from the first
    message to the END marker), and memory."""
    elapsed = t_end - t_first if t_first is not None else 0.0
    result = {
        "received": count,
        "bytes": nbytes,
        "end_seen": end_count is not None,
        "end_count": end_count,
        "elapsed": elapsed,
        "rss_before_kib": rss_before,
        "rss_peak_kib": rss_peak_kib(),
        **extra,
    }
    if count > 1 and elapsed > 0:
        result["msgs_per_s"] = (count - 1) / elapsed
        result["MB_per_s"] = (count - 1) * size / elapsed / 1e6
    return result


# -- one-way: sender ------------------------------------------------------------------


def role_send(stack: str, p: dict) -> dict:
    size, count, duration = p["size"], p["count"], p.get("duration", 1e9)
    payload = b"x" * size
    check_every = max(1, min(1000, count // 100))
    if stack == "zmq":
        sock = zmq_socket("PUSH", p)
        sock.connect(zmq_address(p))
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
    if stack == "zmq":
        sock = zmq_socket("REP", p)
        sock.bind(zmq_address(p))
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
    sock.connect(zmq_address(p))
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


# -- a relay in a chain (--hops) -----------------------------------------------------------


def role_relay(stack: str, p: dict) -> dict:
    """A context with two links and no channel: yoton forwards what comes on
    one to the other. It binds for the next context down the chain, then
    connects to the one up the chain (towards the binding side of the pair)."""
    ctx = yoton_context(p)
    ctx.bind(yoton_address(p))
    ctx.connect(yoton_address(dict(p, port=p["upstream_port"])), timeout=p.get("connect_timeout", 10.0))
    emit("ready")
    while True:  # the I/O thread forwards; we wait for the driver to close stdin
        time.sleep(3600)


# -- both sides in one process ------------------------------------------------------------


def _inproc_ends(stack: str, p: dict):
    """``(send_a, recv_a, send_b, recv_b, close)`` for two ends in this process:
    a sends to b and b to a; a ``recv`` waits up to ``timeout`` s (None at the deadline)."""
    timeout = p.get("timeout", 10.0)
    if stack == "queue":
        import queue as queue_module

        to_a, to_b = queue_module.Queue(), queue_module.Queue()

        def getter(q):
            def recv():
                try:
                    return q.get(timeout=timeout)
                except queue_module.Empty:
                    return None

            return recv

        return to_b.put, getter(to_a), to_a.put, getter(to_b), lambda: None
    if stack == "pipe":
        import multiprocessing

        end_a, end_b = multiprocessing.Pipe()

        def getter(conn):
            def recv():
                return conn.recv_bytes() if conn.poll(timeout) else None

            return recv

        def close():
            end_a.close()
            end_b.close()

        return end_a.send_bytes, getter(end_a), end_b.send_bytes, getter(end_b), close
    if stack == "zmq":
        zmq = _zmq()
        ctx = zmq.Context()
        socks = {}
        for name, kind in (("a_out", "PUSH"), ("b_in", "PULL"), ("b_out", "PUSH"), ("a_in", "PULL")):
            socks[name] = ctx.socket(getattr(zmq, kind))
            socks[name].setsockopt(zmq.RCVTIMEO, int(timeout * 1000))
        socks["b_in"].bind("inproc://bench-ab")
        socks["a_out"].connect("inproc://bench-ab")
        socks["a_in"].bind("inproc://bench-ba")
        socks["b_out"].connect("inproc://bench-ba")

        def getter(sock):
            def recv():
                try:
                    return sock.recv()
                except zmq.Again:
                    return None

            return recv

        def close():
            for sock in socks.values():
                sock.close(0)
            ctx.term()

        return socks["a_out"].send, getter(socks["a_in"]), socks["b_out"].send, getter(socks["b_in"]), close
    yoton = _yoton()
    ctx_a, ctx_b = yoton_context(p), yoton_context(p)
    ctx_b.bind("itc://bench")
    ctx_a.connect("itc://bench", timeout=5.0)
    pub_ab, sub_ab = yoton.PubChannel(ctx_a, "ab", yoton.BINARY), yoton.SubChannel(ctx_b, "ab", yoton.BINARY)
    pub_ba, sub_ba = yoton.PubChannel(ctx_b, "ba", yoton.BINARY), yoton.SubChannel(ctx_a, "ba", yoton.BINARY)
    sub_ab.set_sync_mode(True)  # (lossless: the sender is held back rather than a message dropped)
    time.sleep(0.05)  # (the NEW_CONNECTION message)

    def getter(sub):
        def recv():
            return sub.recv(timeout) or None

        return recv

    def close():
        ctx_a.close()
        ctx_b.close()

    return pub_ab.send, getter(sub_ba), pub_ba.send, getter(sub_ab), close


def role_inproc(stack: str, p: dict) -> dict:
    """Both ends in this process, each in a thread of its own: ``what`` is
    "oneway" (a sends ``count`` messages then END; b counts) or "pingpong"
    (a sends, b echoes, a times the round trips)."""
    size, what = p["size"], p["what"]
    send_a, recv_a, send_b, recv_b, close = _inproc_ends(stack, p)
    payload = b"x" * size
    try:
        if what == "pingpong":

            def echo():
                while True:
                    message = recv_b()
                    if message is None or message == b"STOP":
                        return
                    send_b(message)

            thread = threading.Thread(target=echo, daemon=True)
            thread.start()

            def round_trip():
                send_a(payload)
                if recv_a() is None:
                    raise RuntimeError("no echo within the timeout")

            result = _time_round_trips(p, round_trip)
            send_a(b"STOP")
            thread.join(5.0)
            return result
        count, duration = p["count"], p.get("duration", 1e9)
        out: dict = {}

        def sender():
            t0 = time.perf_counter()
            deadline, sent = t0 + duration, 0
            check_every = max(1, min(1000, count // 100))
            while sent < count:
                send_a(payload)
                sent += 1
                if sent % check_every == 0 and time.perf_counter() >= deadline:
                    break
            send_a(_end_message(sent))
            out["sent"] = sent
            out["send_elapsed"] = time.perf_counter() - t0

        thread = threading.Thread(target=sender, daemon=True)
        measurement_starts()
        thread.start()
        received = 0
        end_count = t_first = t_end = None
        while True:
            message = recv_b()
            if message is None:
                break
            t_end = time.perf_counter()
            if t_first is None:
                t_first = t_end
            if len(message) != size:
                end_count = _parse_end(message)
                break
            received += 1
        thread.join(10.0)
        elapsed = (t_end - t_first) if t_first is not None else 0.0
        result = dict(out, received=received, end_count=end_count, elapsed=elapsed)
        if received > 1 and elapsed > 0:
            result["msgs_per_s"] = (received - 1) / elapsed
        return result
    finally:
        close()


# -- ours through yoton.asyncio ------------------------------------------------------------
# The same measurements with coroutines: the receiver takes what is pending
# (recv_all) and otherwise awaits recv(); the sender awaits send(); the
# ping-pong awaits both. Everything runs on one asyncio loop per process.


def _aio():
    import yoton.asyncio as ya

    return ya


def role_recv_aio(p: dict) -> dict:
    import asyncio

    yoton, ya = _yoton(), _aio()
    size, idle, port = p["size"], p.get("idle", 10.0), p["port"]

    async def main():
        ctx = yoton_context(p, ya.Context)
        ctx.bind(f"localhost:{port}")
        sub = ya.SubChannel(ctx, "bench", yoton.BINARY)

        async def recv_first():
            try:
                return [await sub.recv(timeout=idle)]
            except TimeoutError:
                return []

        rss_before = rss_now_kib()
        measurement_starts()
        emit("ready")
        count = nbytes = 0
        end_count = t_first = t_end = None
        batch = await recv_first()
        if batch:
            t_first = time.perf_counter()
        while batch:
            t_end = time.perf_counter()
            last = batch[-1]
            if len(last) != size:
                end_count = _parse_end(last)
                batch = batch[:-1]
            count += len(batch)
            nbytes += sum(map(len, batch))
            if end_count is not None:
                break
            batch = sub.recv_all() or await recv_first()
        return count, nbytes, end_count, t_first, t_end, rss_before, sub.statistics()["discarded"]

    count, nbytes, end_count, t_first, t_end, rss_before, discarded = asyncio.run(main())
    return _received(count, nbytes, size, end_count, t_first, t_end, rss_before, discarded=discarded)


def role_send_aio(p: dict) -> dict:
    import asyncio

    yoton, ya = _yoton(), _aio()
    size, count, duration = p["size"], p["count"], p.get("duration", 1e9)
    payload = b"x" * size
    check_every = max(1, min(1000, count // 100))

    async def main():
        ctx = yoton_context(p, ya.Context)
        await ctx.connect(f"localhost:{p['port']}", timeout=p.get("connect_timeout", 10.0))
        pub = ya.PubChannel(ctx, "bench", yoton.BINARY)
        send = pub.send
        measurement_starts()
        t0 = time.perf_counter()
        deadline = t0 + duration
        sent = 0
        min_count = p.get("min_count", 0)
        while sent < count:
            await send(payload)
            sent += 1
            if sent % check_every == 0 and sent >= min_count and time.perf_counter() >= deadline:
                break
        await send(_end_message(sent))
        t_sent = time.perf_counter()
        await ctx.flush(p.get("flush_timeout", 120.0))
        return sent, t0, t_sent, time.perf_counter()

    sent, t0, t_sent, t_flushed = asyncio.run(main())
    return {
        "sent": sent,
        "send_elapsed": t_sent - t0,
        "flush_elapsed": t_flushed - t_sent,
        "send_msgs_per_s": sent / (t_sent - t0) if t_sent > t0 else None,
    }


def role_pong_aio(p: dict) -> dict:
    import asyncio

    yoton, ya = _yoton(), _aio()

    async def main():
        ctx = yoton_context(p, ya.Context)
        ctx.bind(f"localhost:{p['port']}")
        sub = ya.SubChannel(ctx, "ping", yoton.BINARY)
        pub = ya.PubChannel(ctx, "pong", yoton.BINARY)
        emit("ready")
        while True:
            await pub.send(await sub.recv())

    asyncio.run(main())
    return {}


def role_ping_aio(p: dict) -> dict:
    import asyncio

    yoton, ya = _yoton(), _aio()
    timeout = p.get("timeout", 10.0)
    payload = b"x" * p["size"]

    async def main():
        ctx = yoton_context(p, ya.Context)
        await ctx.connect(f"localhost:{p['port']}", timeout=p.get("connect_timeout", 10.0))
        pub = ya.PubChannel(ctx, "ping", yoton.BINARY)
        sub = ya.SubChannel(ctx, "pong", yoton.BINARY)
        count, duration, warmup = p["count"], p.get("duration", 1e9), p.get("warmup", 3)

        async def round_trip():
            await pub.send(payload)
            if await sub.recv(timeout=timeout) != payload:
                raise RuntimeError("the pong was something else")

        for _ in range(warmup):
            await round_trip()
        measurement_starts()
        samples = []
        t0 = time.perf_counter()
        deadline = t0 + duration
        while len(samples) < count:
            t = time.perf_counter()
            await round_trip()
            now = time.perf_counter()
            samples.append(now - t)
            if now >= deadline and len(samples) >= p.get("min_count", 5):
                break
        return samples, time.perf_counter() - t0

    samples, total = asyncio.run(main())
    samples.sort()
    return {
        "n": len(samples),
        "elapsed": total,
        "median_us": percentile(samples, 50) * 1e6,
        "p99_us": percentile(samples, 99) * 1e6,
        "min_us": samples[0] * 1e6,
        "max_us": samples[-1] * 1e6,
    }


AIO_ROLES = {"recv": role_recv_aio, "send": role_send_aio, "pong": role_pong_aio, "ping": role_ping_aio}

ROLES = {
    "inproc": role_inproc,
    "recv": role_recv,
    "send": role_send,
    "rep": role_rep,
    "req": role_req,
    "pong": role_pong,
    "ping": role_ping,
    "relay": role_relay,
}


def main(argv: list) -> int:
    if argv[1:2] == ["inproc"]:
        stacks, roles = ("ours", "orig", "zmq", "queue", "pipe"), ROLES
    else:
        stacks, roles = ("ours", "aio", "orig", "zmq", "nats"), (AIO_ROLES if argv[0:1] == ["aio"] else ROLES)
    if len(argv) != 3 or argv[0] not in stacks or argv[1] not in roles:
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
        result = AIO_ROLES[role](params) if stack == "aio" else ROLES[role](stack, params)
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
