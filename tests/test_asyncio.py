"""yoton.asyncio: the blocking API's names, awaitable, on real sockets.

Every test runs a real asyncio loop (pytest-asyncio) with real contexts on
127.0.0.1. What the I/O side does, it does in its own thread; these tests
check what a coroutine sees: messages, timeouts, cancellation that takes
nothing, backpressure that keeps the loop free, repliers and signals on the
loop, threads and coroutines sharing a context, and loops other than the
default one (one that refuses add_reader, like Windows' Proactor loop).
"""

from __future__ import annotations

import asyncio
import os
import selectors
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from helpers import wait_until
from interop_helpers import SRC

import yoton
import yoton.asyncio as ya
from yoton import events

pytestmark = pytest.mark.timeout(30)

KiB = 1 << 10


async def until(cond, timeout: float = 5.0, what: str = "condition") -> None:
    """Yield to the loop until ``cond()`` (the loop keeps running meanwhile)."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.002)


@pytest.fixture(autouse=True)
def events_handed_back():
    """Every test leaves yoton's event queue to no loop: closing the last
    context hands it back (a test that leaks fails; the next starts clean)."""
    yield
    leaked = events.embedding
    yoton.embed_event_loop(None)
    assert not leaked, "yoton's events were still embedded in an asyncio loop after the test"


@pytest.fixture
async def pair():
    """``(a, b)``: two yoton.asyncio contexts, ``a`` bound on 127.0.0.1, ``b`` connected to it."""
    a, b = ya.Context(), ya.Context()
    conn = a.bind("127.0.0.1:0")
    await b.connect(f"127.0.0.1:{conn.port1}", timeout=5.0)
    await until(lambda: conn.is_connected, what="the bind to see its peer")
    yield a, b
    await b.close()
    await a.close()


# -- pub/sub ------------------------------------------------------------------------------


async def test_send_and_recv_and_async_for(pair):
    a, b = pair
    pub, sub = ya.PubChannel(a, "news"), ya.SubChannel(b, "news")
    await pub.send("hello")
    assert await sub.recv() == "hello"
    for i in range(5):
        await pub.send(f"m{i}")
    got = []
    async for message in sub:
        got.append(message)
        if len(got) == 5:
            break
    assert got == [f"m{i}" for i in range(5)]


async def test_recv_timeout_raises_yotons_timeout_error_which_is_the_builtin_one(pair):
    a, b = pair
    sub = ya.SubChannel(b, "quiet")
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    with pytest.raises(yoton.TimeoutError, match="within 0.1 s") as info:
        await sub.recv(timeout=0.1)
    assert 0.09 <= loop.time() - t0 < 2.0
    assert isinstance(info.value, TimeoutError) and isinstance(info.value, yoton.YotonError)
    with pytest.raises(TimeoutError):
        await sub.recv(timeout=0)  # only what is pending: nothing
    pub = ya.PubChannel(a, "quiet")
    await pub.send("now")
    await until(lambda: sub.pending)
    assert await sub.recv(timeout=0) == "now"
    with pytest.raises(ValueError, match="timeout"):
        await sub.recv(timeout=-1)


async def test_a_cancelled_recv_takes_no_message(pair):
    a, b = pair
    pub, sub = ya.PubChannel(a, "c"), ya.SubChannel(b, "c")
    waiting = asyncio.ensure_future(sub.recv())
    await asyncio.sleep(0.05)  # (parked)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(sub.recv(), 0.05)
    await pub.send("kept")
    assert await sub.recv(timeout=5) == "kept"  # neither took it


async def test_a_recv_cancelled_after_its_message_arrived_leaves_it_queued(pair):
    """The hard case: the message is there and the parked recv has been woken,
    but the task is cancelled before it runs again. It must not take it."""
    a, b = pair
    pub, sub = ya.PubChannel(a, "race"), ya.SubChannel(b, "race")
    waiting = asyncio.ensure_future(sub.recv())
    await asyncio.sleep(0.05)  # (parked)
    await pub.send("mine")
    # Block the loop (a plain wait) until the I/O thread has queued it: the
    # wake-up of the parked recv is then scheduled but has not run.
    wait_until(lambda: sub.pending == 1, 5.0, "the message to arrive")
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert sub.pending == 1
    assert sub.recv_all() == ["mine"]


@pytest.mark.skipif(sys.version_info < (3, 11), reason="asyncio.timeout() needs Python 3.11")
async def test_asyncio_timeout_around_recv(pair):
    a, b = pair
    pub, sub = ya.PubChannel(a, "t"), ya.SubChannel(b, "t")
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await sub.recv()
    await pub.send("after")
    assert await sub.recv(timeout=5) == "after"


async def test_each_message_goes_to_one_of_several_waiting_coroutines(pair):
    a, b = pair
    pub, sub = ya.PubChannel(a, "many"), ya.SubChannel(b, "many")
    readers = [asyncio.ensure_future(sub.recv()) for _ in range(4)]
    await asyncio.sleep(0.02)
    for i in range(4):
        await pub.send(str(i))
    assert sorted(await asyncio.gather(*readers)) == ["0", "1", "2", "3"]


async def test_a_closed_channel_ends_recv_and_async_for(pair):
    a, b = pair
    pub, sub = ya.PubChannel(a, "end"), ya.SubChannel(b, "end")
    got = []

    async def read_all():
        async for message in sub:
            got.append(message)

    reader = asyncio.ensure_future(read_all())
    await pub.send("last")
    await until(lambda: got == ["last"])
    threading.Thread(target=sub.close).start()  # (closed from another thread: the loop is woken)
    await asyncio.wait_for(reader, 5.0)
    with pytest.raises(yoton.ChannelClosedError):
        await sub.recv()
    # Plain iteration over what is pending stays a plain call.
    sub2 = ya.SubChannel(b, "end2")
    pub2 = ya.PubChannel(a, "end2")
    await pub2.send("x")
    await pub2.send("y")
    await until(lambda: sub2.pending == 2)
    assert list(sub2) == ["x", "y"]


async def test_closing_the_context_wakes_a_waiting_recv(pair):
    a, b = pair
    sub = ya.SubChannel(b, "bye")
    waiting = asyncio.ensure_future(sub.recv())
    await asyncio.sleep(0.02)
    await b.close()
    with pytest.raises(yoton.ChannelClosedError):
        await asyncio.wait_for(waiting, 5.0)


# -- backpressure ---------------------------------------------------------------------------


class SilentPeer:
    """A raw TCP peer that does the yoton handshake and then reads nothing
    (until :meth:`drain`): the bound context's send queue fills up."""

    def __init__(self, port: int):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # (a small window)
        self.sock.connect(("127.0.0.1", port))
        self.sock.settimeout(5.0)
        self.sock.sendall(b"YOTON!%016x.%d\r\n" % (0x5EED5EED5EED5EED, os.getpid()))
        answer = b""
        while not answer.endswith(b"\r\n"):
            answer += self.sock.recv(1)
        assert answer.startswith(b"YOTON!"), answer
        self.received = 0
        self._stop = threading.Event()
        self._reader = None

    def drain(self) -> None:
        """Read everything from now on (in a thread)."""

        def run():
            self.sock.settimeout(0.05)
            while not self._stop.is_set():
                try:
                    data = self.sock.recv(1 << 16)
                except socket.timeout:
                    continue
                except OSError:
                    return
                if not data:
                    return
                self.received += len(data)

        self._reader = threading.Thread(target=run, daemon=True)
        self._reader.start()

    def close(self) -> None:
        self._stop.set()
        if self._reader is not None:
            self._reader.join(5)
        self.sock.close()


@pytest.fixture
async def blocked():
    """``(ctx, pub, peer)``: a bound yoton.asyncio context whose only peer reads
    nothing, with a BINARY PubChannel whose send queue (32 KiB) is full."""
    ctx = ya.Context(max_queue_bytes=32 * KiB)
    conn = ctx.bind("127.0.0.1:0")
    peer = SilentPeer(conn.port1)
    await until(lambda: conn.is_connected, what="the silent peer")
    conn.timeout = 60.0  # (never stalled: it is alive, only slow)
    pub = ya.PubChannel(ctx, "flow", yoton.BINARY)
    message = b"x" * 1000
    for _ in range(100_000):  # far more than the socket buffers and the cap hold
        try:  # (the writer moves the queue into the socket's buffers until they are full too)
            yoton.PubChannel.send(pub, message, block=0.2)
        except yoton.WouldBlock:
            break
    else:
        raise AssertionError("the send queue never filled up")
    yield ctx, pub, peer
    peer.close()
    await ctx.close()


async def test_send_waits_for_room_and_the_loop_stays_free(blocked):
    ctx, pub, peer = blocked
    ticks = 0

    async def ticker():
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.005)

    clock = asyncio.ensure_future(ticker())
    sending = asyncio.ensure_future(pub.send(b"y" * 1000))
    await asyncio.sleep(0.3)
    assert not sending.done()  # it waits...
    assert ticks >= 10  # ... and the loop runs other tasks meanwhile
    peer.drain()
    await asyncio.wait_for(sending, 10.0)  # room came: it went out
    clock.cancel()
    assert ctx.statistics()["discarded_outgoing"] == 0


async def test_a_cancelled_or_timed_out_send_sends_nothing(blocked):
    ctx, pub, peer = blocked
    queued = ctx.statistics()["queued_bytes"]
    sending = asyncio.ensure_future(pub.send(b"z" * 1000))
    await asyncio.sleep(0.05)
    sending.cancel()
    with pytest.raises(asyncio.CancelledError):
        await sending
    with pytest.raises(yoton.WouldBlock, match="no room within 0.1 s"):
        await pub.send(b"z" * 1000, timeout=0.1)
    assert ctx.statistics()["queued_bytes"] == queued  # neither was queued
    sent_before = pub.statistics()["sent"]
    peer.drain()
    await pub.send(b"w" * 1000, timeout=10)
    assert pub.statistics()["sent"] == sent_before + 1


async def test_a_state_channel_waits_for_room_too(blocked):
    ctx, pub, peer = blocked
    state = ya.StateChannel(ctx, "st")
    setting = asyncio.ensure_future(state.send("on"))
    await asyncio.sleep(0.1)
    assert not setting.done() and state.recv() == ""  # not set until it could be sent
    peer.drain()
    await asyncio.wait_for(setting, 10.0)
    assert state.recv() == "on"


async def test_a_sync_mode_subscriber_holds_an_async_publisher(pair):
    a, b = pair
    pub, sub = ya.PubChannel(a, "sync"), yoton.SubChannel(b, "sync")
    sub.set_sync_mode(True)
    sent = 0

    n = 5000

    async def publish():
        nonlocal sent
        for i in range(n):
            await pub.send(str(i))
            sent += 1
            await asyncio.sleep(0)  # (a burst would be out before the subscriber's 'full' is back)

    publishing = asyncio.ensure_future(publish())
    await until(lambda: sub.pending > 32, what="the subscriber to fill up")
    await asyncio.sleep(0.3)
    assert not publishing.done() and sent < n  # held by the subscriber's 'full'
    held_at = sent
    await asyncio.sleep(0.1)
    assert sent == held_at
    got = []
    while len(got) < n:  # reading it down says 'ok': the publisher goes on
        got.extend(sub.recv_all())
        await asyncio.sleep(0.002)
    await asyncio.wait_for(publishing, 10.0)
    assert got == [str(i) for i in range(n)]


# -- request/reply --------------------------------------------------------------------------


class Calc(ya.RepChannel):
    def add(self, a, b):
        return a + b

    async def slow_double(self, x, delay=0.05):
        await asyncio.sleep(delay)
        return 2 * x

    async def fail(self):
        await asyncio.sleep(0)
        raise ValueError("no way")

    def where(self):
        return threading.get_ident()


async def test_await_a_request_served_on_the_loop_with_async_methods(pair):
    a, b = pair
    Calc(a, "calc").set_mode("event")
    req = ya.ReqChannel(b, "calc")
    assert await req.add(20, 22) == 42
    assert await req.slow_double(21) == 42
    assert await req.where() == threading.get_ident()  # served on this loop
    with pytest.raises(yoton.RemoteError, match="no way"):
        await req.fail()
    with pytest.raises(yoton.RemoteError, match="not implemented"):
        await req.nothing_here()
    # Several at once: the replier takes them one after the other.
    assert await asyncio.gather(*(req.slow_double(i, 0.01) for i in range(5))) == [0, 2, 4, 6, 8]


async def test_a_cancelled_await_cancels_the_request(pair):
    a, b = pair
    rep = Calc(a, "calc2")  # off for now: nobody takes requests
    req = ya.ReqChannel(b, "calc2")
    future = req.add(1, 2)
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(future, 0.1)
    assert future.cancelled()  # cancelled on our side, and withdrawn
    assert req.statistics()["pending_requests"] == 0
    rep.set_mode("event")
    assert await req.add(3, 4) == 7  # the replier took the next one, not the withdrawn
    assert rep.statistics()["served"] == 1


async def test_a_request_cancelled_by_its_auto_cancel_timeout_raises(pair):
    a, b = pair
    req = ya.ReqChannel(b, "nobody", default_future_timeout=0.2)
    with pytest.raises(yoton.CancelledError):
        await req.add(1, 2)


async def test_thread_mode_replier_awaits_async_methods_on_the_loop(pair):
    a, b = pair
    Calc(a, "calc3").set_mode("thread")
    req = ya.ReqChannel(b, "calc3")
    assert await req.slow_double(5) == 10
    assert await req.where() != threading.get_ident()  # plain methods: in the worker thread


def test_thread_mode_replier_answers_with_an_error_when_its_loop_has_stopped():
    """A worker that hands an async method to a loop that no longer runs must
    not wait for ever: the requester gets an error reply."""
    loop = asyncio.new_event_loop()
    runner = threading.Thread(target=loop.run_forever, daemon=True)
    runner.start()

    async def make():
        ctx = ya.Context()  # (made in the loop: it serves there)
        conn = ctx.bind("127.0.0.1:0")
        Calc(ctx, "calc-stopped").set_mode("thread")
        return ctx, conn.port1

    ctx, port = asyncio.run_coroutine_threadsafe(make(), loop).result(5.0)
    client = yoton.Context()
    try:
        client.connect(f"127.0.0.1:{port}", timeout=5.0)
        req = yoton.ReqChannel(client, "calc-stopped")
        assert req.add(1, 2).result(5.0) == 3  # (plain methods: the worker alone)
        loop.call_soon_threadsafe(loop.stop)
        runner.join(5.0)
        assert not loop.is_running()
        with pytest.raises(yoton.RemoteError, match="asyncio loop stopped"):
            req.slow_double(4).result(5.0)
    finally:
        client.close()
        if not loop.is_running():
            loop.run_until_complete(ctx.close())  # (the stopped loop, run once more here to close)
        loop.close()


async def test_a_blocking_future_is_awaitable_only_from_yoton_asyncio():
    # (yoton.Future stays as it was; ya.ReqChannel's futures are ya.Future)
    assert not hasattr(yoton.Future, "__await__") and issubclass(ya.Future, yoton.Future)


# -- signals on the loop ----------------------------------------------------------------------


async def test_signals_run_on_the_loop(pair):
    a, b = pair
    me = threading.get_ident()
    seen = []
    pub, sub = ya.PubChannel(a, "sig"), ya.SubChannel(b, "sig")
    sub.received.bind(lambda channel: seen.append(("received", threading.get_ident(), channel.recv_all())))
    conn = b.connections[0]
    conn.closed.bind(lambda c, reason: seen.append(("closed", threading.get_ident(), reason)))
    timer = yoton.Timer(0.01)
    timer.bind(lambda: seen.append(("timer", threading.get_ident(), None)))
    timer.start()
    await pub.send("ping")
    await until(lambda: any(s[0] == "received" for s in seen), what="the received signal")
    await until(lambda: any(s[0] == "timer" for s in seen), what="the timer")
    a.connections[0].close()
    await until(lambda: any(s[0] == "closed" for s in seen), what="the closed signal")
    assert {s[1] for s in seen} == {me}  # every handler ran in the loop's thread
    assert ("received", me, ["ping"]) in seen


async def test_events_are_handed_back_when_the_last_context_closes():
    ctx = ya.Context()
    assert events.embedding  # yoton's events now run on this loop
    other = ya.Context()
    await ctx.close()
    assert events.embedding  # (the other still uses the loop)
    await other.close()
    assert not events.embedding


async def test_an_embedding_set_by_someone_else_is_left_alone():
    calls = []
    yoton.embed_event_loop(lambda: calls.append(1))
    try:
        ctx = ya.Context()
        yoton.call_later(lambda: None)
        assert calls  # still theirs
        await ctx.close()
        assert events.embedding
    finally:
        yoton.embed_event_loop(None)
        yoton.process_events()


async def test_an_embedding_set_after_ours_is_left_alone_when_the_context_closes():
    ctx = ya.Context()
    yoton.call_later(lambda: None)  # (our embedding is in place)
    calls = []
    theirs = lambda: calls.append(1)  # noqa: E731  (a GUI embeds after the context took the events)
    yoton.embed_event_loop(theirs)
    try:
        await ctx.close()
        assert events.embedding  # still theirs
        yoton.call_later(lambda: None)
        assert calls
    finally:
        yoton.embed_event_loop(None)
        yoton.process_events()


# -- threads and coroutines on one context --------------------------------------------------


async def test_threads_and_coroutines_share_a_context(pair):
    a, b = pair
    # A thread reads a blocking SubChannel of the asyncio context b ...
    blocking_sub = yoton.SubChannel(b, "mixed")
    got = []
    reader = threading.Thread(target=lambda: got.extend(blocking_sub.recv(5.0) for _ in range(3)))
    reader.start()
    # ... while a coroutine publishes to it from a, and a thread calls a replier served on this loop.
    pub = ya.PubChannel(a, "mixed")
    Calc(b, "mixed-calc").set_mode("event")
    blocking_req = yoton.ReqChannel(a, "mixed-calc")
    answers = []
    caller = threading.Thread(target=lambda: answers.append(blocking_req.add(1, 1).result(5.0)))
    caller.start()
    for word in ("one", "two", "three"):
        await pub.send(word)
    await until(lambda: not reader.is_alive() and not caller.is_alive(), what="the threads")
    assert got == ["one", "two", "three"] and answers == [2]
    # And a thread publishes while a coroutine awaits.
    sub = ya.SubChannel(a, "back")
    blocking_pub = yoton.PubChannel(b, "back")
    threading.Thread(target=lambda: [blocking_pub.send(str(i)) for i in range(3)]).start()
    assert [await sub.recv(timeout=5) for _ in range(3)] == ["0", "1", "2"]


# -- serving the sockets before parking ----------------------------------------------------


class RecordingSub(ya.SubChannel):
    """Records which threads delivered packages to it."""

    def __init__(self, *args):
        super().__init__(*args)
        self.delivered_in: list = []

    def _receive_many(self, pkgs, link=None):
        self.delivered_in.append(threading.get_ident())
        super()._receive_many(pkgs, link)


async def _echo_round_trips(spin: float, n: int = 20) -> list:
    """``n`` round trips to a blocking echo thread; the threads that delivered the answers."""
    a, c = ya.Context(spin=spin), yoton.Context()
    try:
        conn = a.bind("127.0.0.1:0")
        yoton.Context.connect(c, f"127.0.0.1:{conn.port1}", timeout=5.0)
        echo_sub, echo_pub = yoton.SubChannel(c, "ping"), yoton.PubChannel(c, "pong")

        def echo():
            for _ in range(n):
                echo_pub.send(echo_sub.recv(5.0))

        pub, sub = ya.PubChannel(a, "ping"), RecordingSub(a, "pong")
        await until(lambda: conn.is_connected)
        echoing = threading.Thread(target=echo)
        echoing.start()
        for i in range(n):
            await pub.send(str(i))
            assert await sub.recv(timeout=5.0) == str(i)
        echoing.join(5)
        return sub.delivered_in
    finally:
        c.close()
        await a.close()


async def test_a_waiting_coroutine_serves_the_sockets_itself_for_up_to_spin_seconds():
    """As a blocking recv does: an answer that comes within the context's
    spin is read by the waiting thread (here the loop's), no hand-off."""
    loop_thread = threading.get_ident()
    assert loop_thread in await _echo_round_trips(spin=0.01)
    assert loop_thread not in await _echo_round_trips(spin=0)  # (spin=0: the I/O thread reads)


async def test_serving_in_vain_is_budgeted_and_the_loop_keeps_running():
    """Nothing comes: the waits serve the sockets for at most a few percent of
    the time (not the context's whole spin each), so other tasks run on."""
    async with ya.Context(spin=0.5) as a:
        a.bind("127.0.0.1:0")
        sub = ya.SubChannel(a, "nothing")
        gaps, last = [], time.monotonic()

        async def ticker():
            nonlocal last
            while True:
                await asyncio.sleep(0.001)
                now = time.monotonic()
                gaps.append(now - last)
                last = now

        ticking = asyncio.ensure_future(ticker())
        t0 = time.monotonic()
        for _ in range(20):
            with pytest.raises(TimeoutError):
                await sub.recv(timeout=0.02)
        elapsed = time.monotonic() - t0
        ticking.cancel()
        assert elapsed < 2.0  # (20 x 0.5 s of spinning would be 10 s)
        assert max(gaps) < 0.25  # no wait blocked the loop for its whole spin


async def test_a_coroutine_whose_answers_come_while_it_serves_still_lets_others_run():
    """Waits that end while serving the sockets never suspend; such a coroutine
    yields to the loop at least every YIELD_EVERY all the same."""
    async with ya.Context(spin=0.01) as a, ya.Context(spin=0.01) as b:
        conn = a.bind("127.0.0.1:0")
        await b.connect(f"127.0.0.1:{conn.port1}", timeout=5.0)
        pa, sa = ya.PubChannel(a, "x"), ya.SubChannel(a, "y")
        pb, sb = ya.PubChannel(b, "y"), ya.SubChannel(b, "x")
        await until(lambda: conn.is_connected)
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        ticking = asyncio.ensure_future(ticker())
        await asyncio.sleep(0)
        rounds, t0 = 0, time.monotonic()
        while time.monotonic() - t0 < 0.3:  # a ping-pong within one loop: answers come while serving
            await pa.send("ping")
            await pb.send(await sb.recv(timeout=5.0))
            await sa.recv(timeout=5.0)
            rounds += 1
        ticking.cancel()
        assert rounds > 10 and ticks >= 30, (rounds, ticks)  # (about one per YIELD_EVERY at least)


def test_ctrl_c_under_asyncio_run_cancels_the_main_task_as_usual():
    """In the main thread, asyncio.run (Python 3.11+) has its own SIGINT
    handler; yoton's stands in only while a coroutine serves the sockets, and
    a Ctrl-C it held back goes to asyncio's, which cancels the main task."""
    code = textwrap.dedent("""
        import asyncio, signal, sys
        signal.signal(signal.SIGINT, signal.default_int_handler)  # (a parent may hand it down ignored)
        import yoton, yoton.asyncio as ya
        from yoton.transport.sigint import sigint_handler

        async def main():
            async with ya.Context(spin=0.01) as a, ya.Context(spin=0.01) as b:
                conn = a.bind("127.0.0.1:0")
                await b.connect("127.0.0.1:%d" % conn.port1, timeout=5.0)
                pa, sa = ya.PubChannel(a, "x"), ya.SubChannel(a, "y")
                pb, sb = ya.PubChannel(b, "y"), ya.SubChannel(b, "x")
                n = 0
                try:
                    while True:
                        await pa.send("ping")
                        await pb.send(await sb.recv())
                        await sa.recv()
                        n += 1
                        # (before 3.11 asyncio.run has no handler: yoton's stays, as without asyncio)
                        if signal.getsignal(signal.SIGINT) is sigint_handler and sys.version_info >= (3, 11):
                            print("yoton's handler left in place", flush=True)
                        if n == 200:
                            print("ready", flush=True)
                except asyncio.CancelledError:
                    print("cancelled after", n, flush=True)
                    raise

        try:
            asyncio.run(main())
        except KeyboardInterrupt:
            print("KeyboardInterrupt", flush=True)
            sys.exit(3)
    """)
    env = dict(os.environ, PYTHONPATH=str(SRC), PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline().strip() == "ready"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=15)
    finally:
        proc.kill()
    assert proc.returncode == 3, (out, err)
    lines = out.splitlines()
    if sys.version_info < (3, 11):
        # asyncio.run has no SIGINT handler of its own: yoton's stays in place
        # (as without asyncio) and the KeyboardInterrupt ends asyncio.run.
        assert lines[-1] == "KeyboardInterrupt", (out, err)
        return
    assert lines[0].startswith("cancelled after") and lines[-1] == "KeyboardInterrupt", (out, err)
    assert "left in place" not in out


# -- the context ------------------------------------------------------------------------------


async def test_connect_errors_flush_and_async_with():
    with pytest.raises(yoton.ConnectError):
        async with ya.Context() as ctx:
            await ctx.connect("127.0.0.1:1", timeout=0.2)
    async with ya.Context() as a, ya.Context() as b:
        conn = a.bind("127.0.0.1:0")
        pub = ya.PubChannel(b, "f", yoton.BINARY)
        await pub.send(b"queued before connecting")
        peer = await b.connect(f"127.0.0.1:{conn.port1}", timeout=5.0)
        await b.flush(5.0)
        assert b.statistics()["queued_bytes"] == 0
    assert not peer.is_alive and not conn.is_alive  # closed on leaving the block


async def test_a_cancelled_connect_closes_the_connection_it_made():
    async with ya.Context() as a, ya.Context() as b:
        conn = a.bind("127.0.0.1:0")
        connecting = asyncio.ensure_future(b.connect(f"127.0.0.1:{conn.port1}", timeout=5.0))
        await asyncio.sleep(0)  # (started in its executor thread)
        connecting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await connecting
        # The handshake goes on in its thread; the connection it makes is closed.
        await until(lambda: not conn.is_alive, what="the bind to see its peer come and go")
        assert conn.close_reason == "Closed from other end."
        await until(lambda: not b.connections_all, what="b to forget the connection")


# -- other event loops ------------------------------------------------------------------------


class NoReaderLoop(asyncio.SelectorEventLoop):
    """A selector loop on poll(2) whose add_reader/add_writer refuse, as the
    Proactor loop's do: yoton.asyncio must not need them."""

    def __init__(self):
        super().__init__(selectors.PollSelector() if hasattr(selectors, "PollSelector") else None)

    def add_reader(self, *args):
        raise NotImplementedError("no add_reader on this loop")

    def add_writer(self, *args):
        raise NotImplementedError("no add_writer on this loop")


async def _scenario() -> list:
    async with ya.Context() as a, ya.Context() as b:
        conn = a.bind("127.0.0.1:0")
        await b.connect(f"127.0.0.1:{conn.port1}", timeout=5.0)
        Calc(a, "calc").set_mode("event")
        pub, sub = ya.PubChannel(a, "news"), ya.SubChannel(b, "news")
        req = ya.ReqChannel(b, "calc")
        await pub.send("hello")
        out = [await sub.recv(timeout=5.0), await req.add(2, 3), await req.slow_double(4)]
        with pytest.raises(TimeoutError):
            await sub.recv(timeout=0.05)
        return out


def test_a_loop_without_add_reader():
    loop = NoReaderLoop()
    try:
        assert loop.run_until_complete(_scenario()) == ["hello", 5, 8]
    finally:
        loop.close()
    assert not events.embedding


def test_uvloop():
    uvloop = pytest.importorskip("uvloop", reason="uvloop is not installed (optional)")
    loop = uvloop.new_event_loop()
    try:
        assert loop.run_until_complete(_scenario()) == ["hello", 5, 8]
    finally:
        loop.close()


def test_a_context_left_open_is_closed_at_exit_and_its_messages_go_out(ctx):
    """The atexit hook closes yoton.asyncio's contexts too (their close is a
    coroutine): what was queued reaches the peer, and the close is a clean one."""
    receiver = ctx()
    conn = receiver.bind("127.0.0.1:0")
    sub = yoton.SubChannel(receiver, "exit")
    code = textwrap.dedent(f"""
        import asyncio
        import yoton, yoton.asyncio as ya

        async def main():
            global ctx
            ctx = ya.Context()
            await ctx.connect("127.0.0.1:{conn.port1}", timeout=5.0)
            pub = ya.PubChannel(ctx, "exit")
            for i in range(5000):
                await pub.send(str(i))   # no flush, no close: left to the exit

        asyncio.run(main())
    """)
    env = dict(os.environ, PYTHONPATH=str(SRC))
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=20)
    assert proc.returncode == 0, proc.stderr
    got = []
    wait_until(lambda: got.extend(sub.recv_all()) or len(got) == 5000 or not conn.is_alive, 10.0, "the messages")
    got.extend(sub.recv_all())
    assert len(got) == 5000 and got[-1] == "4999"
    wait_until(lambda: not conn.is_alive, 5.0, "the close")
    assert conn.close_reason == "Closed from other end.", conn.close_reason
