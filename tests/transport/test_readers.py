"""Threads that wait for a package read the sockets themselves (IOLoop.run_until).

A thread blocked in ``recv``, ``Future.result`` or a replier's worker waits in
the context's epoll set; the kernel wakes it rather than the I/O thread, and
it serves the socket, polling for ``spin`` seconds before it sleeps. These
tests check that it really does, that the I/O thread serves again once it
leaves (also after sleeping through a long wait), that other waiters, closes, cancels,
heartbeats and Ctrl-C still work meanwhile, and the fallback without epoll.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter

import pytest
from helpers import link, wait_until

import yoton
from yoton.errors import CancelledError
from yoton.transport import ioloop

needs_epoll = pytest.mark.skipif(
    ioloop.default_poller() != "epoll",
    reason="readers share the loop only with the epoll poller (Linux, and YOTON_POLLER not set to select)",
)


def _count_readers(conn) -> Counter:
    """Count, by thread name, who serves ``conn``'s socket from now on."""
    served: Counter = Counter()
    link = conn._link
    original = link._on_readable

    def counting():
        served[threading.current_thread().name] += 1
        original()

    link._on_readable = counting
    return served


def _echo(ctx, stop: threading.Event) -> threading.Thread:
    """Echo BINARY 'ping' -> 'pong' in a thread of ``ctx`` until ``stop``."""
    sub = yoton.SubChannel(ctx, "ping", yoton.BINARY)
    pub = yoton.PubChannel(ctx, "pong", yoton.BINARY)

    def run():
        while not stop.is_set():
            message = sub.recv(0.2)
            if message:
                pub.send(message)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


@needs_epoll
def test_a_waiting_thread_serves_the_socket_and_the_io_thread_takes_over_after(make_ctx):
    a, b = make_ctx(), make_ctx()
    conn_b = link(a, b)
    other = b.connections[0]
    stop = threading.Event()
    echo = _echo(a, stop)
    pub = yoton.PubChannel(b, "ping", yoton.BINARY)
    sub = yoton.SubChannel(b, "pong", yoton.BINARY)
    late = yoton.SubChannel(b, "late")
    late_pub = yoton.PubChannel(a, "late")
    try:
        served = _count_readers(other)
        me = threading.current_thread().name
        for i in range(300):
            payload = b"%d" % i
            pub.send(payload)
            assert sub.recv(5.0) == payload
        assert served[me] > 150, f"the waiting thread served only {served[me]} of {sum(served.values())} reads"
        # Nobody waits now: the I/O thread must serve again.
        served.clear()
        late_pub.send("while nobody waits")
        wait_until(lambda: late.pending == 1, what="a package while no thread waits")
        assert served[me] == 0 and sum(served.values()) >= 1
        assert late.recv(False) == "while nobody waits"
    finally:
        stop.set()
        echo.join(2.0)
    assert conn_b.is_connected


def _count_waits(loop) -> Counter:
    """Count, from now on, the reader's waits on ``loop``'s set: 'poll' (no
    timeout) or 'sleep', and 'poll found' when a poll returned events."""
    waits: Counter = Counter()
    original = loop._set.wait

    def counting(timeout):
        events = original(timeout)
        if threading.current_thread() is not loop._thread:
            waits["poll" if timeout == 0 else "sleep"] += 1
            if timeout == 0 and events:
                waits["poll found"] += 1
        return events

    loop._set.wait = counting
    return waits


@needs_epoll
@pytest.mark.parametrize("spin", [0, 0.005])
def test_a_reader_polls_for_spin_seconds_before_it_sleeps(make_ctx, spin):
    a, b = make_ctx(), make_ctx(spin=spin)
    link(a, b)
    stop = threading.Event()
    echo = _echo(a, stop)
    pub = yoton.PubChannel(b, "ping", yoton.BINARY)
    sub = yoton.SubChannel(b, "pong", yoton.BINARY)
    try:
        pub.send(b"warm-up")
        assert sub.recv(5.0) == b"warm-up"
        waits = _count_waits(b.router.loop)
        for i in range(100):
            pub.send(b"%d" % i)
            assert sub.recv(5.0) == b"%d" % i
        quiet = yoton.SubChannel(b, "quiet")
        t0 = time.monotonic()
        assert quiet.recv(0.3) == ""  # nothing comes: polls for `spin`, then sleeps
        assert time.monotonic() - t0 >= 0.3
    finally:
        stop.set()
        echo.join(2.0)
    if spin:
        # A 5 ms window catches nearly every pong; each wait polls at least once.
        assert waits["poll"] >= 100 and waits["poll found"] >= 50, waits
        assert waits["sleep"] >= 1, "the reader never went to sleep after its spin"
    else:
        # (A zero timeout happens only when a timer is due right then: a few per 0.1 s tick.)
        assert waits["poll"] < 30, f"spin=0 still polled: {waits}"
        assert waits["sleep"] >= 100


@needs_epoll
def test_after_a_long_wait_the_io_thread_sleeps_until_told_and_serves_again(make_ctx):
    a, b = make_ctx(), make_ctx()
    link(a, b)
    loop = b.router.loop
    quiet = yoton.SubChannel(b, "quiet")
    got = []
    reader = threading.Thread(target=lambda: got.append(quiet.recv(30.0)), daemon=True)
    reader.start()
    # While one reader stays in, the I/O thread stops looking every LINGER s
    # and sleeps until the reader tells it that it left.
    wait_until(lambda: loop._seat.out is ioloop._Out.DEEP, 15.0, "the I/O thread to sleep until told")
    assert loop._seat.reader is reader
    yoton.PubChannel(a, "quiet").send("for the reader")  # (it serves its socket itself, then leaves)
    reader.join(10.0)
    assert got == ["for the reader"]
    served = _count_readers(b.connections[0])
    late = yoton.SubChannel(b, "late")
    yoton.PubChannel(a, "late").send("while nobody waits")
    wait_until(lambda: late.pending == 1, what="the I/O thread to serve again")
    assert served[loop._thread.name] >= 1


@needs_epoll
def test_an_io_thread_asleep_with_nothing_timed_steps_out_for_a_reader_that_came(make_ctx):
    # A bind waiting for its peer, no timer: the I/O thread waits in the set with
    # nothing due. A reader that comes takes every event from then on (the kernel
    # wakes the thread that began to wait last); the I/O thread must still step out.
    b = make_ctx()
    b.bind("127.0.0.1:0")
    quiet = yoton.SubChannel(b, "quiet")
    loop = b.router.loop
    assert not loop.housekeepers and not loop._timers  # (white box: nothing timed)
    reader = threading.Thread(target=lambda: quiet.recv(ioloop.IDLE_LOOK + 10.0), daemon=True)
    reader.start()
    wait_until(lambda: loop._seat.reader is reader, 5.0, "the reader")
    wait_until(lambda: loop._seat.out is not ioloop._Out.IN, ioloop.IDLE_LOOK + 5.0, "the I/O thread to step out")
    quiet.close()
    reader.join(5.0)


def test_a_second_waiter_is_woken_while_another_thread_is_the_reader(make_ctx):
    a, b = make_ctx(), make_ctx()
    link(a, b)
    sub_x, sub_y = yoton.SubChannel(b, "x"), yoton.SubChannel(b, "y")
    pub_x, pub_y = yoton.PubChannel(a, "x"), yoton.PubChannel(a, "y")
    got_x = []
    reader = threading.Thread(target=lambda: got_x.append(sub_x.recv(10.0)), daemon=True)
    reader.start()
    wait_until(lambda: b.router.loop._seat.reader is not None or b.router.loop.poller != "epoll", what="the reader")
    pub_y.send("for the second waiter")
    t0 = time.monotonic()
    assert sub_y.recv(5.0) == "for the second waiter"
    assert time.monotonic() - t0 < 2.0
    pub_x.send("for the reader")
    reader.join(5.0)
    assert got_x == ["for the reader"]


def test_closing_a_channel_wakes_its_reader(make_ctx):
    a, b = make_ctx(), make_ctx()
    link(a, b)
    sub = yoton.SubChannel(b, "quiet")
    got = []
    reader = threading.Thread(target=lambda: got.append(sub.recv(10.0)), daemon=True)
    reader.start()
    wait_until(lambda: b.router.loop._seat.reader is not None or b.router.loop.poller != "epoll", what="the reader")
    t0 = time.monotonic()
    sub.close()
    reader.join(5.0)
    assert got == [""] and time.monotonic() - t0 < 2.0


def test_cancelling_a_future_wakes_the_thread_waiting_for_its_result(make_ctx):
    a, b = make_ctx(), make_ctx()
    link(a, b)
    req = yoton.ReqChannel(b, "nobody-serves")
    future = req.echo("x")
    t0 = time.monotonic()  # (before the timer: a busy machine may delay this thread after start())
    threading.Timer(0.3, future.cancel).start()
    with pytest.raises(CancelledError):
        future.result(10.0)
    assert 0.25 < time.monotonic() - t0 < 2.0


def test_heartbeats_and_timers_keep_going_while_a_reader_waits(make_ctx):
    a, b = make_ctx(), make_ctx()
    conn_a = link(a, b)
    conn_b = b.connections[0]
    timeouts = []
    for conn in (conn_a, conn_b):
        conn.timedout.bind(lambda c, value: timeouts.append(value))
    fired = []
    b.router.loop.call_later(lambda: fired.append(time.monotonic()), 0.3)
    sub = yoton.SubChannel(b, "silence")
    t0 = time.monotonic()
    assert sub.recv(1.5) == ""  # the main thread is the reader all along
    yoton.process_events(False)
    assert timeouts == [], "heartbeats stopped while a thread waited in recv"
    assert fired and fired[0] - t0 < 1.0, "a timer waited for the reader to leave"
    assert conn_a.is_connected and conn_b.is_connected


def test_replier_worker_thread_serves_requests(make_ctx):
    class Server(yoton.RepChannel):
        def add(self, x, y):
            return x + y

    a, b = make_ctx(), make_ctx()
    link(a, b)
    server = Server(a, "calc")
    server.set_mode("thread")
    req = yoton.ReqChannel(b, "calc")
    assert [req.add(i, 1).result(5.0) for i in range(200)] == list(range(1, 201))
    server.close()  # the worker, maybe the reader now, must leave
    wait_until(lambda: server._worker is None and a.router.loop._seat.reader is None, what="the worker to leave")


def test_closing_the_context_ends_a_reader_and_the_io_thread(make_ctx):
    a, b = make_ctx(), make_ctx()
    link(a, b)
    sub = yoton.SubChannel(b, "quiet")
    loop = b.router.loop
    got = []
    reader = threading.Thread(target=lambda: got.append(sub.recv(10.0)), daemon=True)
    reader.start()
    wait_until(lambda: loop._seat.reader is not None or loop.poller != "epoll", what="the reader")
    t0 = time.monotonic()
    b.close()
    reader.join(5.0)
    assert got == [""] and time.monotonic() - t0 < 3.0
    wait_until(lambda: not loop._thread.is_alive(), what="the I/O thread to end")


def test_with_a_sigint_handler_of_its_own_the_main_thread_does_not_serve(make_ctx):
    a, b = make_ctx(), make_ctx()
    link(a, b)
    stop = threading.Event()
    echo = _echo(a, stop)
    pub = yoton.PubChannel(b, "ping", yoton.BINARY)
    sub = yoton.SubChannel(b, "pong", yoton.BINARY)
    old = signal.signal(signal.SIGINT, lambda signum, frame: None)
    try:
        served = _count_readers(b.connections[0])
        for i in range(50):
            pub.send(b"%d" % i)
            assert sub.recv(5.0) == b"%d" % i
        assert served[threading.current_thread().name] == 0
    finally:
        signal.signal(signal.SIGINT, old)
        stop.set()
        echo.join(2.0)


_CTRL_C_CHILD = textwrap.dedent("""
    import json, os, signal, sys, threading, time
    import yoton
    N = 20000
    a, b = yoton.Context(), yoton.Context()
    conn = a.bind("127.0.0.1:0")
    b.connect("127.0.0.1:%d" % conn.port1, timeout=5)
    pub, sub = yoton.PubChannel(a, "numbers"), yoton.SubChannel(b, "numbers")
    sub.set_sync_mode(True)  # (a reader slowed down by a loaded machine must not drop: queue_params)
    state = {"got": [], "interrupts": 0}
    def send():
        for i in range(N):
            pub.send(str(i))
            if i % 200 == 0:
                time.sleep(0.002)
    go = threading.Event()
    def interrupt():
        # The first Ctrl-C once the main thread is inside the try; each waits
        # until the main thread caught it: none is left pending when this
        # thread ends (it would hit code outside the try).
        go.wait()
        for _ in range(60):
            time.sleep(0.003)
            caught = state["interrupts"]
            os.kill(os.getpid(), signal.SIGINT)
            t = time.monotonic()
            while state["interrupts"] == caught and time.monotonic() - t < 5:
                time.sleep(0.0005)
    threading.Thread(target=send).start()
    interrupter = threading.Thread(target=interrupt)
    interrupter.start()
    deadline = time.monotonic() + 30
    def receive():
        go.set()
        got = state["got"]
        while (len(got) < N or interrupter.is_alive()) and time.monotonic() < deadline:
            message = sub.recv(1.0 if len(got) < N else 0.01)
            if message:
                got.append(message)  # (first: Python raises a Ctrl-C only after a call returns)
    # Python may raise a Ctrl-C at any call or loop jump: the loop runs inside
    # the try, and starts again after each one.
    while True:
        try:
            receive()
            break
        except KeyboardInterrupt:
            state["interrupts"] += 1
    got = [int(m) for m in state["got"]]
    print(json.dumps({"ok": got == list(range(N)), "count": len(got), "interrupts": state["interrupts"],
                      "discarded": sub.statistics()["discarded"],
                      "handler": signal.getsignal(signal.SIGINT).__name__}))
    a.close(); b.close()
""")


def test_ctrl_c_in_a_main_thread_reading_loses_nothing():
    """Ctrl-C raises KeyboardInterrupt in recv(); no package is lost or repeated."""
    proc = subprocess.run([sys.executable, "-c", _CTRL_C_CHILD], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["interrupts"] > 10, result
    assert result["ok"], result
    if ioloop._HAVE_EPOLL:
        assert result["handler"] == "sigint_handler"


_CTRL_C_WHILE_TAKEN_CHILD = textwrap.dedent("""
    import signal
    import yoton
    a, b = yoton.Context(), yoton.Context()
    conn = a.bind("127.0.0.1:0")
    b.connect("127.0.0.1:%d" % conn.port1, timeout=5)
    pub, sub = yoton.PubChannel(a, "words"), yoton.SubChannel(b, "words")
    for word in ("one", "two", "three", "four"):
        pub.send(word)
    sub.recv(5.0)  # (yoton's SIGINT handler is in place once the main thread waited)
    assert yoton.events  # (and "two", "three", "four" arrive meanwhile)
    import time
    t = time.monotonic()
    while sub.pending < 3 and time.monotonic() - t < 5:
        time.sleep(0.01)
    def with_ctrl_c(real):
        def decode(arg):
            signal.raise_signal(signal.SIGINT)  # (a Ctrl-C once the message was taken)
            return real(arg)
        return decode
    got = []
    for call, decoder in (("recv", "_decode"), ("recv_all", "_decode_all")):
        setattr(sub, decoder, with_ctrl_c(getattr(sub, decoder)))
        try:
            got.append(sub.recv(5.0) if call == "recv" else sub.recv_all())
        except KeyboardInterrupt:
            got.append("KeyboardInterrupt")
        delattr(sub, decoder)
    got.append(sub.recv(5.0))
    got.append(sub.recv_all())
    print(got)
    a.close(); b.close()
""")


def test_ctrl_c_after_recv_took_a_message_puts_it_back():
    """The interrupt is raised, and the message (or all of recv_all's) comes next time."""
    proc = subprocess.run([sys.executable, "-c", _CTRL_C_WHILE_TAKEN_CHILD], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "['KeyboardInterrupt', 'KeyboardInterrupt', 'two', ['three', 'four']]", proc.stdout


_CTRL_C_IN_THE_EXIT_CHILD = textwrap.dedent("""
    import faulthandler, signal, threading, time, types
    import yoton
    from yoton.transport import ioloop
    faulthandler.dump_traceback_later(10, exit=True)  # (a deadlock prints the stacks and fails)
    a, b = yoton.Context(), yoton.Context()
    conn = a.bind("127.0.0.1:0")
    b.connect("127.0.0.1:%d" % conn.port1, timeout=5)
    loop, sub = b.router.loop, yoton.SubChannel(b, "quiet")
    armed, real = [True], time
    def monotonic():
        # Ctrl-C while the main thread, leaving run_until(), holds the lock
        # guarding the reader role (the I/O thread sleeping until told).
        if (armed[0] and threading.current_thread() is threading.main_thread()
                and loop._seat.reader is None and loop._seat.lock.locked()):
            armed[0] = False
            signal.raise_signal(signal.SIGINT)
        return real.monotonic()
    ioloop.time = types.SimpleNamespace(monotonic=monotonic, perf_counter=real.perf_counter)
    try:
        sub.recv(ioloop.DEEP_AFTER * 4)
        print("no KeyboardInterrupt", not armed[0])
    except KeyboardInterrupt:
        print("KeyboardInterrupt", not armed[0])
    ioloop.time = real
    faulthandler.cancel_dump_traceback_later()
    a.close(); b.close()
""")


@needs_epoll
def test_ctrl_c_while_a_reader_leaves_is_raised_not_deadlocked():
    """yoton's SIGINT handler may interrupt the main thread while it holds a
    lock of the loop: it must take no lock itself."""
    proc = subprocess.run([sys.executable, "-c", _CTRL_C_IN_THE_EXIT_CHILD], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["KeyboardInterrupt", "True"], proc.stdout


_CTRL_C_IN_A_SEND_CHILD = textwrap.dedent("""
    import json, signal, sys, time
    import yoton
    a, b = yoton.Context(), yoton.Context()
    conn = a.bind("127.0.0.1:0")
    b.connect("127.0.0.1:%d" % conn.port1, timeout=5)
    sub = yoton.SubChannel(b, "words")
    pub = yoton.PubChannel(a, "words")
    pub.send("first")
    assert sub.recv(5.0) == "first"
    link = conn._link
    real = link._wlock

    class Interrupting:
        # The connection's write lock, but Ctrl-C comes right after a send takes it.
        armed = False
        def acquire(self, *args):
            got = real.acquire(*args)
            if got and Interrupting.armed and sys._getframe(1).f_code.co_name in ("kick_writer", "enqueue"):
                Interrupting.armed = False
                signal.raise_signal(signal.SIGINT)
            return got
        def release(self):
            real.release()
        def _is_owned(self):
            return real._is_owned()
        def __enter__(self):
            return real.__enter__()
        def __exit__(self, *exc):
            return real.__exit__(*exc)

    link._wlock = Interrupting()
    interrupted, fired, sent = False, False, []
    for attempt in range(50):  # (until a send writes by itself: not while the I/O thread writes)
        time.sleep(0.01)
        a.router._pump_after = link._direct_after = 0.0
        Interrupting.armed = True
        sent.append("second %d" % attempt)
        try:
            pub.send(sent[-1])
        except KeyboardInterrupt:
            interrupted = True
        if not Interrupting.armed:
            fired = True
            break
    Interrupting.armed = False
    held = real._is_owned()
    if held:
        real.release()
    got = [sub.recv(5.0) for _ in sent]
    pub.send("third")
    got.append(sub.recv(5.0))
    print(json.dumps({"fired": fired, "interrupted": interrupted, "held": held,
                      "ok": got == sent + ["third"], "got": got[-3:]}))
    a.close(); b.close()
""")


def test_ctrl_c_while_the_main_thread_writes_is_raised_after_the_write():
    """Ctrl-C landing while the main thread holds a connection's write lock
    (taken without ``with``) must not leave it held nor cut the write: yoton's
    SIGINT handler raises KeyboardInterrupt at the end of the send."""
    proc = subprocess.run([sys.executable, "-c", _CTRL_C_IN_A_SEND_CHILD], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["fired"] and result["interrupted"], result
    assert not result["held"] and result["ok"], result


def test_without_epoll_the_io_thread_alone_serves(make_ctx):
    a, b = make_ctx(poller="select"), make_ctx(poller="select")
    link(a, b)
    assert isinstance(b.router.loop._set, ioloop._SelectorSet)

    class Server(yoton.RepChannel):
        def double(self, x):
            return 2 * x

    server = Server(a, "calc")
    server.set_mode("thread")
    req = yoton.ReqChannel(b, "calc")
    assert req.double(21).result(5.0) == 42
    pub, sub = yoton.PubChannel(a, "news"), yoton.SubChannel(b, "news")
    pub.send("hello")
    assert sub.recv(5.0) == "hello"
    assert b.router.loop._seat.reader is None
